//! Fixture access for the ONNX engines' tests (ia-ort, and ia-openvino through `#[path]`):
//! the committed ONNX exports, transformers' reference tensors, and the generation check
//! both engines' decoders must pass.
#![allow(dead_code)]

use ia_engine::generation::{generate, generate_batch_greedy, GenerateOptions, Sampling};
use ia_engine::{Inputs, TextGenerator};
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

/// `name`'s fixture laid out as onnx-community ships encoder-decoders: its own files, with
/// `onnx/encoder_model.onnx` and the merged decoder of scripts/merge_seq2seq_decoders.py only.
pub fn merged_layout(name: &str) -> (tempfile::TempDir, ia_models::Model) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let onnx = dir.path().join("onnx");
    std::fs::create_dir(&onnx).unwrap();
    for file in [
        "onnx/encoder_model.onnx",
        "onnx-merged/decoder_model_merged.onnx",
    ] {
        let from = fixture(name).join(file);
        std::fs::copy(&from, onnx.join(from.file_name().unwrap())).unwrap();
    }
    let source =
        ia_models::ModelSource::Checkpoint(ia_models::Checkpoint::open(dir.path()).unwrap());
    let model = ia_models::Model::resolve(name, source).unwrap();
    (dir, model)
}

/// A reference tensor as f32 (int64 ids converted).
pub fn reference(name: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    let data = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{key}: {other:?}"),
    };
    (t.shape().to_vec(), data)
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's reference inputs: token ids for bert-tiny, the raw clip (before the feature
/// extractor, which the engines run) for the Wav2Vec2 fixtures, pixels for the image models.
pub fn reference_inputs(name: &str) -> Inputs {
    if name.starts_with("wav2vec2") {
        let wav = ia_preprocess::audio::Waveform::open(&fixture("media/speech-16k.wav")).unwrap();
        let len = reference(name, "input_values").0[1];
        Inputs::Audio {
            batch: 1,
            sample_rate: wav.sample_rate,
            samples: wav.samples[..len].to_vec(),
        }
    } else if name == "bert-tiny" {
        let (shape, ids) = reference(name, "input_ids");
        let as_u32 = |v: Vec<f32>| v.into_iter().map(|x| x as u32).collect::<Vec<_>>();
        Inputs::Text {
            batch: shape[0],
            seq_len: shape[1],
            input_ids: as_u32(ids),
            attention_mask: as_u32(reference(name, "attention_mask").1),
            token_type_ids: as_u32(reference(name, "token_type_ids").1),
        }
    } else {
        let (shape, pixels) = reference(name, "pixel_values");
        Inputs::Image {
            shape: [shape[0], shape[1], shape[2], shape[3]],
            pixel_values: pixels,
        }
    }
}

pub fn ids(name: &str, key: &str) -> Vec<u32> {
    reference(name, key).1.iter().map(|&x| x as u32).collect()
}

/// A decoder fixture's generation against transformers' reference, for both prompts: the
/// logits at every prompt position fed one token at a time through the cache, and after the
/// whole prompt at once; then (when `greedy`) 32 greedy tokens, alone and in a batch of 3,
/// identical to `generate(do_sample=False)`. Returns the largest logits difference.
pub fn check_generation(name: &str, gen: &mut dyn TextGenerator, greedy: bool) -> f32 {
    let mut worst = 0f32;
    for p in 0..2 {
        let prompt = ids(name, &format!("prompt{p}_input_ids"));
        let (shape, logits) = reference(name, &format!("prompt{p}_logits"));
        let vocab = shape[2];
        let row = |pos: usize| &logits[pos * vocab..(pos + 1) * vocab];
        let mut got = gen.prefill(&prompt[..1]).unwrap();
        for (pos, &token) in prompt.iter().enumerate() {
            if pos > 0 {
                got = gen.step(token).unwrap();
            }
            worst = worst.max(max_abs(&got, row(pos)));
        }
        let whole = gen.prefill(&prompt).unwrap();
        worst = worst.max(max_abs(&whole, row(prompt.len() - 1)));
        if !greedy {
            continue;
        }
        let expected = ids(name, &format!("prompt{p}_greedy"));
        let tokens = greedy_tokens(gen, &prompt, expected.len());
        assert_eq!(
            tokens, expected,
            "{name}: greedy tokens differ from transformers"
        );
        let batch = vec![prompt.clone(); 3];
        let (rows, stats) = generate_batch_greedy(gen, &batch, expected.len()).unwrap();
        assert_eq!(stats.batch_size, 3);
        assert!(
            rows.iter().all(|r| r == &expected),
            "{name}: batched greedy differs"
        );
    }
    worst
}

/// wav2vec2-tiny transcribes its reference clip on `engine` with transformers' words
/// (`reference_meta.json`) and greedy ids (`greedy_ids`, collapsed).
pub fn check_ctc_transcript(engine: &dyn ia_engine::Engine, platform: ia_hardware::Platform) {
    let name = "wav2vec2-tiny";
    let model = ia_models::Model::resolve(
        name,
        ia_models::ModelSource::Checkpoint(ia_models::Checkpoint::open(&fixture(name)).unwrap()),
    )
    .unwrap();
    let mut asr = engine
        .load_speech_recognizer(
            &model,
            ia_engine::Placement::new(platform, ia_engine::Precision::F32),
        )
        .unwrap();
    let Inputs::Audio { samples, .. } = reference_inputs(name) else {
        unreachable!()
    };
    let t = asr
        .transcribe(&samples, &ia_engine::TranscribeOptions::default())
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference_meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        t.text,
        meta["transcript"].as_str().unwrap(),
        "{name} on {platform}"
    );
    let mut collapsed = ids(name, "greedy_ids");
    collapsed.dedup();
    collapsed.retain(|&id| id != 0);
    assert_eq!(t.tokens, collapsed, "{name} on {platform}");
}

/// The whisper-tiny fixture's decoder logits (the first graph for three tokens, then the
/// cached one) against transformers': the largest absolute difference.
pub fn whisper_logits_diff(model: &mut dyn ia_engine::whisper::WhisperModel) -> f32 {
    let name = "whisper-tiny";
    let (fshape, features) = reference(name, "input_features");
    model.start(&features, fshape[0], 1).unwrap();
    let tokens = ids(name, "decoder_input_ids");
    let (lshape, logits) = reference(name, "logits");
    let vocab = lshape[2];
    let mut worst = 0f32;
    // The first three tokens in one call (the first graph), then one at a time (the cached one).
    let got = model.decode(&tokens[..3], 1).unwrap();
    worst = worst.max(max_abs(&got[0], &logits[2 * vocab..3 * vocab]));
    for pos in 3..tokens.len() {
        let got = model.decode(&tokens[pos..=pos], 1).unwrap();
        worst = worst.max(max_abs(&got[0], &logits[pos * vocab..(pos + 1) * vocab]));
    }
    worst
}

/// The whisper-tiny fixture on a graph engine, against transformers: the encoder's output
/// through the first decoder graph and the cached one (teacher-forced logits at every
/// position within `tolerance`; `model` is the export loaded as a WhisperModel), then greedy
/// and 3-beam tokens through `asr` identical to `generate()`.
pub fn check_whisper(
    model: &mut dyn ia_engine::whisper::WhisperModel,
    asr: &mut dyn ia_engine::SpeechRecognizer,
    tolerance: f32,
) -> f32 {
    let name = "whisper-tiny";
    let worst = whisper_logits_diff(model);
    assert!(worst <= tolerance, "{name}: logits max abs diff {worst}");
    let wav = ia_preprocess::audio::Waveform::open(&fixture("media/speech-16k.wav")).unwrap();
    // The reference decodes the extractor's window (this tiny model hears 1 s).
    let window = &wav.samples[..2 * 160 * model.max_source_positions()];
    for (beams, key) in [(1, "greedy"), (3, "beam3")] {
        let opts = ia_engine::TranscribeOptions {
            num_beams: beams,
            max_new_tokens: Some(20),
            ..Default::default()
        };
        let t = asr.transcribe(window, &opts).unwrap();
        assert_eq!(t.tokens, ids(name, key), "{name} {key}");
    }
    worst
}

/// The real whisper-tiny.en (scripts/fetch_checkpoints.sh, with its ONNX export) transcribes
/// the committed espeak-ng clip on `engine` with transformers' tokens and text, greedy and
/// with 3 beams (fixtures/whisper-tiny-en/reference.json; the native engine's test checks the
/// same). Says what it did not run where the export is missing (no reference environment to
/// write it).
pub fn check_real_whisper(
    engine: &dyn ia_engine::Engine,
    at: ia_engine::Placement,
    beams: &[usize],
) {
    let ckpt = ia_models::checkpoint::resolve("openai/whisper-tiny.en").unwrap_or_else(|e| {
        panic!("{e}\nThe real-weights test needs the checkpoint: run scripts/fetch_checkpoints.sh")
    });
    if !ckpt.dir.join("onnx/decoder_with_past_model.onnx").is_file() {
        println!(
            "NOT EXERCISED: whisper-tiny.en on {} ({}): {} has no ONNX export; \
             scripts/fetch_checkpoints.sh writes it where scripts/setup_pyref.sh has run",
            engine.name(),
            at.platform,
            ckpt.dir.display()
        );
        return;
    }
    let model =
        ia_models::Model::resolve("whisper-tiny.en", ia_models::ModelSource::Checkpoint(ckpt))
            .unwrap();
    let mut asr = engine.load_speech_recognizer(&model, at).unwrap();
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("whisper-tiny-en/reference.json")).unwrap(),
    )
    .unwrap();
    let wav = ia_preprocess::audio::Waveform::open(&fixture("media/speech-16k.wav")).unwrap();
    for &beams in beams {
        let expected = &r[format!("beams{beams}")];
        let opts = ia_engine::TranscribeOptions {
            num_beams: beams,
            ..Default::default()
        };
        let t = asr.transcribe(&wav.samples, &opts).unwrap();
        let want: Vec<u32> = expected["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            t.tokens,
            want,
            "beams {beams} on {}: {:?}",
            engine.name(),
            t.text
        );
        assert_eq!(t.text, expected["text"].as_str().unwrap());
    }
}

/// `n` greedy tokens after `prompt`, EOS not stopping them (as the references were made).
pub fn greedy_tokens(gen: &mut dyn TextGenerator, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    generate(gen, prompt, &opts, |_| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .0
}

/// The t5-tiny fixture's three-graph export generating like transformers: the logits at every
/// decoder position (the first graph, then the cached one) within `tolerance`, and 32 greedy
/// tokens identical to `generate(do_sample=False)`, for both prompts.
pub fn check_t5(gen: &mut dyn TextGenerator, tolerance: f32) -> f32 {
    let name = "t5-tiny";
    let worst = t5_logits_diff(gen);
    for p in 0..2 {
        let prompt = ids(name, &format!("prompt{p}_input_ids"));
        let expected = ids(name, &format!("prompt{p}_greedy"));
        let tokens = greedy_tokens(gen, &prompt, expected.len());
        assert_eq!(tokens, expected, "{name} prompt {p}: greedy tokens differ");
    }
    assert!(worst <= tolerance, "{name}: logits max abs diff {worst}");
    worst
}

/// The t5-tiny fixture's logits at every decoder position of both prompts against
/// transformers': the largest absolute difference.
pub fn t5_logits_diff(gen: &mut dyn TextGenerator) -> f32 {
    let name = "t5-tiny";
    let mut worst = 0f32;
    for p in 0..2 {
        let prompt = ids(name, &format!("prompt{p}_input_ids"));
        let decoder_ids = ids(name, &format!("prompt{p}_decoder_input_ids"));
        let (shape, logits) = reference(name, &format!("prompt{p}_logits"));
        let vocab = shape[2];
        // prefill encodes the prompt and runs the decoder start token (decoder_ids[0]).
        let mut got = gen.prefill(&prompt).unwrap();
        for (pos, &token) in decoder_ids.iter().enumerate() {
            if pos > 0 {
                got = gen.step(token).unwrap();
            }
            worst = worst.max(max_abs(&got, &logits[pos * vocab..(pos + 1) * vocab]));
        }
    }
    worst
}

/// A two-tower fixture's text batch from its reference (token ids and mask; no token types).
pub fn reference_text(name: &str) -> Inputs {
    let (shape, _) = reference(name, "input_ids");
    let input_ids = ids(name, "input_ids");
    Inputs::Text {
        batch: shape[0],
        seq_len: shape[1],
        token_type_ids: vec![0; input_ids.len()],
        attention_mask: ids(name, "attention_mask"),
        input_ids,
    }
}

/// Zero-shot logits: `scale` times the cosine of each row of the first unit-length
/// embeddings (`[(rows, width), ...]`) with each row of the second.
pub fn zero_shot(unit: &[(Vec<f32>, usize)], scale: f32) -> Vec<f32> {
    let ((first, width), (second, _)) = (&unit[0], &unit[1]);
    first
        .chunks(*width)
        .flat_map(|a| {
            second
                .chunks(*width)
                .map(move |b| scale * a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        })
        .collect()
}

/// Rows of `v` (each `width` wide) scaled to unit length, as CLIPModel normalises embeddings.
pub fn unit_rows(v: &[f32], width: usize) -> Vec<f32> {
    v.chunks(width)
        .flat_map(|r| {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(move |x| x / norm)
        })
        .collect()
}

/// clip-tiny's towers through one session: the image and text embeddings (normalised as
/// CLIPModel does) and the zero-shot logits (the trained temperature the session returns
/// times the cosine similarities) against transformers'; the largest difference.
pub fn check_clip(session: &mut dyn ia_engine::Session) -> f32 {
    let name = "clip-tiny";
    let image = session.run(&reference_inputs(name)).unwrap();
    let text = session.run(&reference_text(name)).unwrap();
    let mut worst = 0f32;
    let mut unit = Vec::new();
    for (out, key) in [(&image, "image_embeds"), (&text, "text_embeds")] {
        let (shape, expected) = reference(name, key);
        let got = out.get(key).unwrap();
        assert_eq!(got.shape(), shape, "{key}");
        let rows = unit_rows(&got.to_f32_vec().unwrap(), shape[1]);
        worst = worst.max(max_abs(&rows, &expected));
        unit.push((rows, shape[1]));
    }
    let scale = image.get("logit_scale").unwrap().to_f32_vec().unwrap()[0];
    let (_, expected) = reference(name, "logits_per_image");
    worst.max(max_abs(&zero_shot(&unit, scale), &expected))
}

/// clap-tiny's towers through one session: the audio embeddings from the raw clip (CLAP's
/// feature extractor run in Rust, as on the native engine), the text embeddings, and the
/// zero-shot logits (the trained temperature times the cosine similarities) against
/// transformers'; the largest difference.
pub fn check_clap(session: &mut dyn ia_engine::Session) -> f32 {
    let name = "clap-tiny";
    let wav = ia_preprocess::audio::Waveform::open(&fixture("media/chord-48k.wav")).unwrap();
    let audio = session
        .run(&Inputs::Audio {
            batch: 1,
            sample_rate: wav.sample_rate,
            samples: wav.samples.clone(),
        })
        .unwrap();
    let text = session.run(&reference_text(name)).unwrap();
    let mut worst = 0f32;
    let mut unit = Vec::new();
    for (out, key) in [(&audio, "audio_embeds"), (&text, "text_embeds")] {
        let (shape, expected) = reference(name, key);
        let got = out.get(key).unwrap();
        assert_eq!(got.shape(), shape, "{key}");
        let got = got.to_f32_vec().unwrap();
        worst = worst.max(max_abs(&got, &expected));
        unit.push((unit_rows(&got, shape[1]), shape[1]));
    }
    let scale = audio.get("logit_scale").unwrap().to_f32_vec().unwrap()[0];
    let (_, expected) = reference(name, "logits_per_audio");
    worst.max(max_abs(&zero_shot(&unit, scale), &expected))
}
