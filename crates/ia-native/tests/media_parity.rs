//! Vision and audio families against transformers: tiny random-weight CLIP, Whisper and
//! Wav2Vec2 fixtures (scripts/make_media_fixtures.py), each within 1e-4 max abs in f32, fed
//! by our own preprocessing of the committed media; and the real whisper-tiny.en checkpoint
//! (scripts/fetch_checkpoints.sh) transcribing an espeak-ng recording.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{
    fixture, generator, ids, load, max_abs, max_abs_diff, reference, source, BF16_TOLERANCE,
    TOLERANCE,
};
use ia_engine::generation::expand_image_tokens;
use ia_engine::{
    Engine, ImageBatch, Inputs, Placement, Precision, SpeechRecognizer, TextGenerator,
    TranscribeOptions,
};
use ia_hardware::Platform;
use ia_native::models::{whisper, Products};
use ia_native::NativeEngine;
use ia_preprocess::audio::{Waveform, WhisperFrontEnd};
use ia_preprocess::image::{ImageProcessor, RgbImage};

fn speech() -> Waveform {
    Waveform::open(&fixture("media/speech-16k.wav")).unwrap()
}

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn recognizer(src: &ia_models::Model) -> Box<dyn SpeechRecognizer> {
    NativeEngine::new()
        .load_speech_recognizer(src, Placement::new(Platform::Cpu, Precision::F32))
        .unwrap()
}

fn unit_rows(v: &[f32], dim: usize) -> Vec<f32> {
    v.chunks(dim)
        .flat_map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter().map(move |x| x / n)
        })
        .collect()
}

/// Zero-shot scores as CLIP/CLAP compute them: for each media row, the cosine similarity with
/// each text row times exp(logit_scale).
fn zero_shot_logits(media: &[f32], text: &[f32], dim: usize, scale: f32) -> Vec<f32> {
    let (media, text) = (unit_rows(media, dim), unit_rows(text, dim));
    media
        .chunks(dim)
        .flat_map(|m| {
            text.chunks(dim)
                .map(|t| scale * t.iter().zip(m).map(|(a, b)| a * b).sum::<f32>())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The reference's tokenised texts (no token types: CLIP and CLAP have a single segment).
fn reference_text(r: &std::collections::HashMap<String, Tensor>) -> Inputs {
    let (batch, seq_len) = r["input_ids"].dims2().unwrap();
    Inputs::Text {
        batch,
        seq_len,
        input_ids: ids(&r["input_ids"]),
        attention_mask: ids(&r["attention_mask"]),
        token_type_ids: vec![0; batch * seq_len],
    }
}

#[test]
fn clip_tiny_matches_transformers_from_image_files() {
    check_clip(load("clip-tiny").as_mut(), TOLERANCE, TOLERANCE);
}

/// `--precision bf16` on the CPU: CLIP's two towers with bf16 products (AMX, or AVX512-BF16
/// without it; attention's products too, the rest f32) stay within bf16's tolerance of
/// transformers' f32 embeddings and zero-shot logits, and report bf16; without a bf16
/// backend the load is refused naming why.
#[test]
fn clip_tiny_stays_close_in_bf16_or_is_refused() {
    // The zero-shot logits are cosines times the temperature (14.3 in this fixture), so their
    // bf16 error is that much larger than the embeddings': 0.1, as OpenVINO's bf16 test.
    common::check_session_in_bf16("clip-tiny", |s| check_clip(s, BF16_TOLERANCE, 0.1));
}

/// The two towers' normalised embeddings and the zero-shot logits of the committed images and
/// texts within `tolerance` and `logits_tolerance` of transformers'; the largest difference.
fn check_clip(session: &mut dyn ia_engine::Session, tolerance: f32, logits_tolerance: f32) -> f32 {
    let r = reference("clip-tiny");
    let pre = json(fixture("clip-tiny/preprocessor_config.json"));
    let images: Vec<RgbImage> = ["photo.png", "gray.png"]
        .iter()
        .map(|f| RgbImage::open(&fixture(&format!("media/{f}"))).unwrap())
        .collect();
    let pixels = ImageProcessor::from_config(&pre)
        .unwrap()
        .process(&images)
        .unwrap();
    let d = max_abs_diff(&pixels.pixel_values, &r["pixel_values"]);
    eprintln!("pixel_values max abs diff {d:e}");
    assert!(d <= 1e-5, "pixel_values max abs diff {d}");

    let out = session
        .run(&Inputs::Image {
            shape: pixels.shape,
            pixel_values: pixels.pixel_values,
        })
        .unwrap();
    let image = out.get("image_embeds").unwrap().to_f32_vec().unwrap();
    let scale = out.get("logit_scale").unwrap().to_f32_vec().unwrap()[0];
    // CLIPModel's forward returns L2-normalised embeddings; ours are the raw projections
    // (get_image_features), so compare them normalised.
    let dim = r["image_embeds"].dims()[1];
    let image_d = max_abs_diff(&unit_rows(&image, dim), &r["image_embeds"]);
    eprintln!("image_embeds max abs diff {image_d:e}");
    assert!(image_d <= tolerance, "image_embeds max abs diff {image_d}");

    let out = session.run(&reference_text(&r)).unwrap();
    let text = out.get("text_embeds").unwrap().to_f32_vec().unwrap();
    let text_d = max_abs_diff(&unit_rows(&text, dim), &r["text_embeds"]);
    eprintln!("text_embeds max abs diff {text_d:e}");
    assert!(text_d <= tolerance, "text_embeds max abs diff {text_d}");

    let logits = zero_shot_logits(&image, &text, dim, scale);
    let logits_d = max_abs_diff(&logits, &r["logits_per_image"]);
    eprintln!("logits_per_image max abs diff {logits_d:e}");
    assert!(
        logits_d <= logits_tolerance,
        "logits_per_image max abs diff {logits_d}"
    );
    image_d.max(text_d).max(logits_d)
}

#[test]
fn whisper_tiny_matches_transformers() {
    let r = reference("whisper-tiny");
    let pre = json(fixture("whisper-tiny/preprocessor_config.json"));
    let fe = WhisperFrontEnd::from_config(&pre).unwrap();
    let mel = fe.log_mel(&speech().samples);
    let d = max_abs_diff(&mel, &r["input_features"]);
    eprintln!("input_features max abs diff {d:e}");
    assert!(d <= TOLERANCE, "input_features max abs diff {d}");

    let src = source("whisper-tiny");
    check_whisper_logits(Products::AsLoaded, TOLERANCE);

    let mut asr = recognizer(&src);
    // The reference decodes the extractor's window (this tiny model hears 1 s); longer audio
    // would be transcribed window by window.
    let window = &speech().samples[..fe.n_samples];
    for (beams, key) in [(1, "greedy"), (3, "beam3")] {
        let opts = TranscribeOptions {
            num_beams: beams,
            max_new_tokens: Some(20),
            ..Default::default()
        };
        let t = asr.transcribe(window, &opts).unwrap();
        assert_eq!(t.tokens, ids(&r[key]), "{key}");
    }
}

#[test]
fn wav2vec2_tiny_matches_transformers() {
    for name in ["wav2vec2-tiny", "wav2vec2-tiny-stable"] {
        let r = reference(name);
        let meta = json(fixture(&format!("{name}/reference_meta.json")));
        let wav = speech();
        let clip = &wav.samples[..8000];
        let mut session = load(name);
        let out = session
            .run(&Inputs::Audio {
                batch: 1,
                sample_rate: 16_000,
                samples: clip.to_vec(),
            })
            .unwrap();
        let logits = out.get("logits").unwrap();
        assert_eq!(logits.shape(), r["logits"].dims());
        let d = max_abs_diff(&logits.to_f32_vec().unwrap(), &r["logits"]);
        eprintln!("{name}: logits max abs diff {d:e}");
        assert!(d <= TOLERANCE, "{name}: logits max abs diff {d}");
        let t = recognizer(&source(name))
            .transcribe(clip, &TranscribeOptions::default())
            .unwrap();
        assert_eq!(t.text, meta["transcript"].as_str().unwrap(), "{name}");
    }
}

/// `--precision bf16` on the CPU: Wav2Vec2's transformer layers with bf16 products (the
/// convolutions f32) keep the CTC logits within bf16's tolerance of transformers' f32 and
/// report bf16; without a bf16 backend the load is refused naming why.
#[test]
fn wav2vec2_tiny_stays_close_in_bf16_or_is_refused() {
    for name in ["wav2vec2-tiny", "wav2vec2-tiny-stable"] {
        let Some(mut session) = common::bf16_session(name) else {
            continue;
        };
        let out = session
            .run(&Inputs::Audio {
                batch: 1,
                sample_rate: 16_000,
                samples: speech().samples[..8000].to_vec(),
            })
            .unwrap();
        let r = reference(name);
        let d = max_abs_diff(
            &out.get("logits").unwrap().to_f32_vec().unwrap(),
            &r["logits"],
        );
        println!("bf16 {name} logits max abs diff {d}");
        assert!(d > 0.0, "{name}: bf16 equals f32 exactly: not run in bf16");
        assert!(d <= BF16_TOLERANCE, "{name}: bf16 logits max abs diff {d}");
    }
}

/// The tiny fixture's encoder output and teacher-forced logits at every decoder position
/// within `tolerance` of transformers'; the largest difference.
fn check_whisper_logits(products: Products, tolerance: f32) -> f32 {
    let r = reference("whisper-tiny");
    let pre = json(fixture("whisper-tiny/preprocessor_config.json"));
    let fe = WhisperFrontEnd::from_config(&pre).unwrap();
    let mel = fe.log_mel(&speech().samples);
    let src = source("whisper-tiny");
    let cfg: whisper::Config = serde_json::from_value(src.config().clone()).unwrap();
    let (vb, _) = ia_native::load_var_builder(&src.source, DType::F32, &Device::Cpu).unwrap();
    let mut model = whisper::Model::load_with(vb, &cfg, products).unwrap();
    let features = Tensor::from_vec(mel, (1, 80, fe.frames()), &Device::Cpu).unwrap();
    let tokens = r["decoder_input_ids"].to_dtype(DType::U32).unwrap();
    let (enc, logits) = whisper::teacher_forced_logits(&mut model, &features, &tokens).unwrap();
    let enc_d = max_abs_diff(
        &enc.flatten_all().unwrap().to_vec1().unwrap(),
        &r["encoder_last_hidden_state"],
    );
    eprintln!("encoder max abs diff {enc_d:e}");
    assert!(enc_d <= tolerance, "encoder max abs diff {enc_d}");
    let logits_d = max_abs_diff(
        &logits.flatten_all().unwrap().to_vec1().unwrap(),
        &r["logits"],
    );
    eprintln!("logits max abs diff {logits_d:e}");
    assert!(logits_d <= tolerance, "logits max abs diff {logits_d}");
    enc_d.max(logits_d)
}

/// `--precision bf16` on the CPU: Whisper's linear layers, convolutions, tied head (a bf16
/// copy of the token table) and encoder attention with bf16 products (AMX, or AVX512-BF16
/// without it; the decoder's attention f32) keep the tiny fixture's encoder output and logits within bf16's tolerance
/// of transformers' f32, and the real whisper-tiny.en transcribes the clip with the f32
/// (transformers') greedy tokens, as OpenVINO's bf16 test asks; without a bf16 backend the
/// recogniser is refused naming why.
#[test]
fn whisper_stays_close_in_bf16_or_is_refused() {
    let ckpt = ia_models::checkpoint::resolve("openai/whisper-tiny.en").unwrap_or_else(|e| {
        panic!("{e}\nThe real-weights test needs the checkpoint: run scripts/fetch_checkpoints.sh")
    });
    let real =
        ia_models::Model::resolve("whisper-tiny.en", ia_models::ModelSource::Checkpoint(ckpt))
            .unwrap();
    let loaded = NativeEngine::new()
        .load_speech_recognizer(&real, Placement::new(Platform::Cpu, Precision::Bf16));
    let Some(mut asr) = common::bf16_loaded("Whisper", loaded) else {
        return;
    };
    let worst = check_whisper_logits(Products::Bf16, BF16_TOLERANCE);
    assert!(worst > 0.0, "bf16 equals f32 exactly: not run in bf16");
    println!("bf16 whisper-tiny max abs diff {worst}");
    let r = json(fixture("whisper-tiny-en/reference.json"));
    let t = asr
        .transcribe(&speech().samples, &TranscribeOptions::default())
        .unwrap();
    let want = json_tokens(&r["beams1"]["tokens"]);
    assert_eq!(t.tokens, want, "bf16 greedy: {:?}", t.text);
    println!("bf16 whisper-tiny.en: {:?}", t.text);
}

/// Token ids from a reference JSON array.
fn json_tokens(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Word error rate: word-level edit distance / reference words.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let norm = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (r, h) = (norm(reference), norm(hypothesis));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

#[test]
fn whisper_tiny_en_real_weights_transcribe_like_transformers() {
    let ckpt = ia_models::checkpoint::resolve("openai/whisper-tiny.en").unwrap_or_else(|e| {
        panic!("{e}\nThe real-weights test needs the checkpoint: run scripts/fetch_checkpoints.sh")
    });
    let r = json(fixture("whisper-tiny-en/reference.json"));
    let mut asr = recognizer(
        &ia_models::Model::resolve("whisper-tiny.en", ia_models::ModelSource::Checkpoint(ckpt))
            .unwrap(),
    );
    let spoken = r["spoken"].as_str().unwrap();
    for beams in [1, 3] {
        let expected = &r[format!("beams{beams}")];
        let opts = TranscribeOptions {
            num_beams: beams,
            ..Default::default()
        };
        let t = asr.transcribe(&speech().samples, &opts).unwrap();
        let want = json_tokens(&expected["tokens"]);
        assert_eq!(t.tokens, want, "beams {beams}: {:?}", t.text);
        assert_eq!(t.text, expected["text"].as_str().unwrap());
        eprintln!(
            "beams {beams}: {:?} WER {:.3}",
            t.text,
            wer(spoken, &t.text)
        );
    }
}

#[test]
fn word_error_rate_counts_edits() {
    assert_eq!(wer("the quick brown fox", "the quick brown fox"), 0.0);
    assert_eq!(wer("the quick brown fox", "the quick roundfire fox"), 0.25);
    assert_eq!(wer("a b", "a x b"), 0.5);
}

#[test]
fn detr_tiny_matches_transformers_from_an_image_file() {
    let r = reference("detr-tiny");
    let pre = json(fixture("detr-tiny/preprocessor_config.json"));
    let image = RgbImage::open(&fixture("media/photo.png")).unwrap();
    let pixels = ImageProcessor::from_config(&pre)
        .unwrap()
        .process(&[image])
        .unwrap();
    let d = max_abs_diff(&pixels.pixel_values, &r["pixel_values"]);
    eprintln!("pixel_values max abs diff {d:e}");
    assert!(d <= 1e-5, "pixel_values max abs diff {d}");
    check_detr(load("detr-tiny").as_mut(), TOLERANCE);
}

/// DETR in bf16 (the backbone's convolutions and every linear layer; attention, norms and
/// pooling f32): logits and boxes within bf16's tolerance, or refused naming why.
#[test]
fn detr_tiny_stays_close_in_bf16_or_is_refused() {
    common::check_session_in_bf16("detr-tiny", |s| check_detr(s, BF16_TOLERANCE));
}

/// DETR's logits and boxes for the reference's pixels against transformers within
/// `tolerance`; returns the largest difference.
fn check_detr(session: &mut dyn ia_engine::Session, tolerance: f32) -> f32 {
    let r = reference("detr-tiny");
    let dims = r["pixel_values"].dims4().unwrap();
    let out = session
        .run(&Inputs::Image {
            shape: [dims.0, dims.1, dims.2, dims.3],
            pixel_values: r["pixel_values"].flatten_all().unwrap().to_vec1().unwrap(),
        })
        .unwrap();
    let mut worst = 0f32;
    for name in ["logits", "pred_boxes"] {
        let t = out.get(name).unwrap();
        assert_eq!(t.shape(), r[name].dims(), "{name}");
        let d = max_abs_diff(&t.to_f32_vec().unwrap(), &r[name]);
        eprintln!("{name} max abs diff {d:e}");
        assert!(d <= tolerance, "{name} max abs diff {d}");
        worst = worst.max(d);
    }
    worst
}

/// The same weights under timm's backbone names (how facebook/detr-resnet-50 is published)
/// give the same outputs.
#[test]
fn detr_reads_the_timm_backbone_layout() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("detr-tiny");
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let prefix = "model.backbone.conv_encoder.model.";
    let renamed: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            let Some(rest) = k.strip_prefix(prefix) else {
                return (k, v);
            };
            let p: Vec<&str> = rest.split('.').collect();
            let timm = match p.as_slice() {
                ["embedder", "embedder", "convolution", w] => format!("conv1.{w}"),
                ["embedder", "embedder", "normalization", w] => format!("bn1.{w}"),
                ["encoder", "stages", s, "layers", l, "layer", i, kind, w] => {
                    let (s, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
                    let m = if *kind == "convolution" { "conv" } else { "bn" };
                    format!("layer{}.{l}.{m}{}.{w}", s + 1, i + 1)
                }
                ["encoder", "stages", s, "layers", l, "shortcut", kind, w] => {
                    let s: usize = s.parse().unwrap();
                    let i = if *kind == "convolution" { 0 } else { 1 };
                    format!("layer{}.{l}.downsample.{i}.{w}", s + 1)
                }
                other => panic!("unexpected backbone tensor {other:?}"),
            };
            (format!("{prefix}{timm}"), v)
        })
        .collect();
    candle_core::safetensors::save(&renamed, dir.path().join("model.safetensors")).unwrap();
    let mut config = json(src.join("config.json"));
    config["use_timm_backbone"] = serde_json::Value::Bool(true);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let r = reference("detr-tiny");
    let (_, _, h, w) = r["pixel_values"].dims4().unwrap();
    let inputs = Inputs::Image {
        shape: [1, 3, h, w],
        pixel_values: r["pixel_values"].flatten_all().unwrap().to_vec1().unwrap(),
    };
    let ckpt = ia_models::Checkpoint::open(dir.path()).unwrap();
    let out = NativeEngine::new()
        .load(
            &ia_models::Model::resolve("detr", ia_models::ModelSource::Checkpoint(ckpt)).unwrap(),
            Placement::new(Platform::Cpu, Precision::F32),
        )
        .unwrap()
        .run(&inputs)
        .unwrap();
    let d = max_abs_diff(
        &out.get("logits").unwrap().to_f32_vec().unwrap(),
        &r["logits"],
    );
    eprintln!("logits max abs diff {d:e}");
    assert!(d <= TOLERANCE, "logits max abs diff {d}");
}

#[test]
fn clap_tiny_matches_transformers_from_a_wav_file() {
    let r = reference("clap-tiny");
    let pre = json(fixture("clap-tiny/preprocessor_config.json"));
    let fe = ia_preprocess::audio::ClapFrontEnd::from_config(&pre).unwrap();
    let wav = Waveform::open(&fixture("media/chord-48k.wav")).unwrap();
    let (features, longer) = fe.features(&wav.samples);
    assert!(!longer, "a 1 s clip is not longer than the 2 s window");
    let d = max_abs_diff(&features, &r["input_features"]);
    eprintln!("input_features (dB) max abs diff {d:e}");
    assert!(d <= 1e-3, "input_features (dB) max abs diff {d}");
    check_clap(load("clap-tiny").as_mut(), TOLERANCE);
}

/// CLAP in bf16 (every linear layer of both towers; the convolutions, the Swin windows'
/// attention and the norms f32): embeddings and logits within bf16's tolerance, or refused
/// naming why.
#[test]
fn clap_tiny_stays_close_in_bf16_or_is_refused() {
    common::check_session_in_bf16("clap-tiny", |s| check_clap(s, BF16_TOLERANCE));
}

/// CLAP's audio and text embeddings of the fixture's wav file and texts, and the zero-shot
/// logits from them, against transformers within `tolerance`; returns the largest difference.
fn check_clap(session: &mut dyn ia_engine::Session, tolerance: f32) -> f32 {
    let r = reference("clap-tiny");
    let wav = Waveform::open(&fixture("media/chord-48k.wav")).unwrap();
    let out = session
        .run(&Inputs::Audio {
            batch: 1,
            sample_rate: 48_000,
            samples: wav.samples.clone(),
        })
        .unwrap();
    let audio = out.get("audio_embeds").unwrap().to_f32_vec().unwrap();
    let scale = out.get("logit_scale").unwrap().to_f32_vec().unwrap()[0];
    let out = session.run(&reference_text(&r)).unwrap();
    let text = out.get("text_embeds").unwrap().to_f32_vec().unwrap();
    let logits = zero_shot_logits(&audio, &text, audio.len(), scale);
    let mut worst = 0f32;
    for (name, ours) in [
        ("audio_embeds", &audio),
        ("text_embeds", &text),
        ("logits_per_audio", &logits),
    ] {
        let d = max_abs_diff(ours, &r[name]);
        eprintln!("{name} max abs diff {d:e}");
        assert!(d <= tolerance, "{name} max abs diff {d}");
        worst = worst.max(d);
    }
    worst
}

/// A text longer than the text tower's positions (RoBERTa's start after the padding id) is
/// an error naming them; the longest that fits runs.
#[test]
fn clap_texts_longer_than_its_positions_are_refused() {
    let table = json(fixture("clap-tiny/config.json"))["text_config"]["max_position_embeddings"]
        .as_u64()
        .unwrap() as usize;
    let mut session = load("clap-tiny");
    let mut text = |seq_len: usize| {
        session.run(&Inputs::Text {
            batch: 1,
            seq_len,
            input_ids: vec![5; seq_len],
            attention_mask: vec![1; seq_len],
            token_type_ids: vec![0; seq_len],
        })
    };
    let fits = table - 2;
    assert!(text(fits).is_ok());
    let err = text(fits + 1).err().expect("a text past the positions");
    assert!(
        err.to_string()
            .contains(&format!("longer than the model's {fits} positions")),
        "{err}"
    );
}

/// Zero-shot labels of different lengths are one batch, the shorter ones padded on the right
/// (as CLAP's processor pads them): each text's embedding in the batch is the one it has alone.
#[test]
fn clap_texts_padded_in_a_batch_embed_as_alone() {
    let r = reference("clap-tiny");
    let Inputs::Text {
        seq_len, input_ids, ..
    } = reference_text(&r)
    else {
        unreachable!()
    };
    let pad = json(fixture("clap-tiny/config.json"))["text_config"]["pad_token_id"]
        .as_u64()
        .unwrap() as u32;
    let long = input_ids[..seq_len].to_vec();
    let short = input_ids[seq_len..seq_len + seq_len - 4].to_vec();
    let mut session = load("clap-tiny");
    let mut embed = |ids: Vec<u32>, mask: Vec<u32>, batch: usize| {
        let seq_len = ids.len() / batch;
        let out = session
            .run(&Inputs::Text {
                batch,
                seq_len,
                input_ids: ids,
                attention_mask: mask,
                token_type_ids: vec![0; batch * seq_len],
            })
            .unwrap();
        out.get("text_embeds").unwrap().to_f32_vec().unwrap()
    };
    let alone = [
        embed(long.clone(), vec![1; seq_len], 1),
        embed(short.clone(), vec![1; short.len()], 1),
    ]
    .concat();
    let batch = embed(
        [long, short, vec![pad; 4]].concat(),
        [vec![1; 2 * seq_len - 4], vec![0; 4]].concat(),
        2,
    );
    let d = common::max_abs(&batch, &alone);
    assert!(
        d <= 1e-5,
        "padding in a batch moved a text embedding by {d}"
    );
}

/// LLaVA 1.5 (tiny: 3-layer CLIP tower, LLaMA text model) against transformers' processor and
/// model, per case of the fixture: the processed pixels; the prompt's ids with each image token
/// expanded to its features; the logits at every text position (those before the image from a
/// text-only prefill of the prefix, the last image position and every later one through the
/// image prefill and then the KV cache, token by token); 32 greedy tokens.
#[test]
fn llava_tiny_matches_transformers() {
    check_image_text_generation("llava-tiny");
}

/// LLaVA-NeXT (tiny, llava-tiny's shapes with anyres tiling over 32-pixel tiles and the image
/// newline) against transformers, as LLaVA above: each picture becomes 5 tiles, and its image
/// tokens depend on its size (a wide and a tall picture).
#[test]
fn qwen2_vl_tiny_matches_transformers() {
    check_image_text_generation("qwen2-vl-tiny");
    check_two_images("qwen2-vl-tiny");
}

#[test]
fn qwen2_5_vl_tiny_matches_transformers() {
    check_image_text_generation("qwen2.5-vl-tiny");
    check_two_images("qwen2.5-vl-tiny");
}

#[test]
fn qwen3_vl_tiny_matches_transformers() {
    check_image_text_generation("qwen3-vl-tiny");
    check_two_images("qwen3-vl-tiny");
}

/// Qwen-VL: one prompt with two pictures that the processor resizes to different patch grids,
/// each image token run at its own grid; logits from the first image on and 32 greedy
/// tokens against transformers.
fn check_two_images(name: &str) {
    let r = reference(name);
    let model = source(name);
    let meta = json(fixture(&format!("{name}/reference_meta.json")));
    let case = &meta["two_images"];
    let tokenizer = ia_engine::tokenizer::of(&model.source).unwrap().unwrap();
    let processor = ia_engine::inputs::image_processor(&model).unwrap();
    let pictures: Vec<RgbImage> = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| RgbImage::open(&fixture(&format!("media/{}", f.as_str().unwrap()))).unwrap())
        .collect();
    let images = ia_engine::inputs::image_batch(&processor, &pictures).unwrap();
    assert!(
        images.each.is_some(),
        "the two pictures come out at different sizes"
    );
    let mut gen = generator(name);
    let image_token = gen.image_token().unwrap();
    let text = tokenizer
        .encode(case["prompt"].as_str().unwrap(), true)
        .unwrap()
        .get_ids()
        .to_vec();
    let tokens = gen.attach_images(&images).unwrap();
    let prompt = expand_image_tokens(&text, image_token, &tokens).unwrap();
    assert_eq!(prompt, ids(&r["two_images_input_ids"]), "input ids");
    let last_image = prompt.iter().rposition(|&t| t == image_token).unwrap();
    let logits = r["two_images_logits"].squeeze(0).unwrap();
    check_logits_from(
        gen.as_mut(),
        &prompt,
        last_image,
        &logits,
        &format!("{name} two images"),
        TOLERANCE,
    );
    gen.attach_images(&images).unwrap();
    assert_eq!(
        greedy_32(gen.as_mut(), &prompt),
        ids(&r["two_images_greedy"]),
        "{name}: two images, greedy tokens"
    );
}

/// Prefills `prompt` through position `last`, then steps through the rest; the logits at
/// every position from `last` on against the rows of `logits`.
fn check_logits_from(
    gen: &mut dyn TextGenerator,
    prompt: &[u32],
    last: usize,
    logits: &Tensor,
    what: &str,
    tolerance: f32,
) -> f32 {
    let mut worst = 0f32;
    let mut got = gen.prefill(&prompt[..=last]).unwrap();
    for (pos, &token) in prompt.iter().enumerate().skip(last) {
        if pos > last {
            got = gen.step(token).unwrap();
        }
        let want = logits.get(pos).unwrap().to_vec1::<f32>().unwrap();
        let d = max_abs(&got, &want);
        assert!(d <= tolerance, "{what} position {pos}: max abs diff {d}");
        worst = worst.max(d);
    }
    worst
}

/// 32 greedy tokens after `prompt`, EOS ignored (the fixtures' generate() references).
fn greedy_32(gen: &mut dyn TextGenerator, prompt: &[u32]) -> Vec<u32> {
    let opts = ia_engine::GenerateOptions {
        max_new_tokens: 32,
        sampling: ia_engine::Sampling::greedy(),
        stop_tokens: vec![],
        ignore_eos: true,
    };
    ia_engine::generation::generate(gen, prompt, &opts, |_| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .0
}

/// The image-text generators' fixtures.
const IMAGE_TEXT_MODELS: [&str; 5] = [
    "llava-tiny",
    "llava-next-tiny",
    "qwen2-vl-tiny",
    "qwen2.5-vl-tiny",
    "qwen3-vl-tiny",
];

/// The image work bench and predict compute before loading (for the memory check and the cost
/// model) is what each image-text generator then counts for the test picture.
#[test]
fn image_work_before_loading_matches_the_generators_count() {
    for name in IMAGE_TEXT_MODELS {
        let model = source(name);
        let work = ia_engine::inputs::test_image_work(&model)
            .unwrap()
            .expect("an image-text generator");
        let mut gen = generator(name);
        let images = ia_engine::inputs::test_images(&model, 1).unwrap();
        assert_eq!(images.shape[0], work.tiles, "{name}: tiles");
        assert_eq!(
            gen.attach_images(&images).unwrap(),
            [work.tokens],
            "{name}: image tokens"
        );
    }
}

#[test]
fn llava_next_tiny_matches_transformers() {
    check_image_text_generation("llava-next-tiny");
}

fn check_image_text_generation(name: &str) {
    let gen = NativeEngine::new()
        .load_generator(&source(name), Placement::new(Platform::Cpu, Precision::F32))
        .unwrap();
    check_image_text_generation_on(name, gen, TOLERANCE);
}

/// [`check_image_text_generation`] on `gen` with the logits' `tolerance`: the greedy tokens
/// are compared in f32 only (the top logits of these random tiny models are too close for
/// bf16's rounding). The largest logit difference seen.
fn check_image_text_generation_on(
    name: &str,
    mut gen: Box<dyn TextGenerator>,
    tolerance: f32,
) -> f32 {
    let r = reference(name);
    let model = source(name);
    let meta = json(fixture(&format!("{name}/reference_meta.json")));
    let tokenizer = ia_engine::tokenizer::of(&model.source).unwrap().unwrap();
    let processor = ia_engine::inputs::image_processor(&model).unwrap();
    let exact = tolerance <= TOLERANCE;
    let mut worst = 0f32;
    let image_token = gen.image_token().expect("LLaVA takes images");
    for (i, case) in meta["cases"].as_array().unwrap().iter().enumerate() {
        let image = RgbImage::open(&fixture(&format!(
            "media/{}",
            case["image"].as_str().unwrap()
        )))
        .unwrap();
        let pixels = processor.process(std::slice::from_ref(&image)).unwrap();
        let images = ImageBatch {
            shape: pixels.shape,
            pixel_values: pixels.pixel_values.clone(),
            sizes: vec![(image.height, image.width)],
            each: None,
        };
        // Qwen2-VL's processor hands the model patches; LLaVA's, the image.
        let processed = match processor.patches {
            Some(grid) => grid.patchify(&pixels.pixel_values, pixels.shape[2], pixels.shape[3]),
            None => pixels.pixel_values.clone(),
        };
        let d = max_abs_diff(&processed, &r[&format!("case{i}_pixel_values")]);
        assert!(d <= 1e-5, "case {i}: pixel_values max abs diff {d}");

        let text = tokenizer
            .encode(case["prompt"].as_str().unwrap(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        // Text before the image: a text-only prefill of each prefix.
        let logits = r[&format!("case{i}_logits")].squeeze(0).unwrap();
        let row = |pos: usize| logits.get(pos).unwrap().to_vec1::<f32>().unwrap();
        let first = text.iter().position(|&t| t == image_token).unwrap();
        for pos in 0..first {
            let got = gen.prefill(&text[..=pos]).unwrap();
            let d = max_abs(&got, &row(pos));
            assert!(d <= tolerance, "case {i} position {pos}: max abs diff {d}");
            worst = worst.max(d);
        }
        let tokens = gen.attach_images(&images).unwrap();
        let prompt = expand_image_tokens(&text, image_token, &tokens).unwrap();
        assert_eq!(
            prompt,
            ids(&r[&format!("case{i}_input_ids")]),
            "case {i}: input ids"
        );
        let last = first + tokens[0] - 1;
        let d = check_logits_from(
            gen.as_mut(),
            &prompt,
            last,
            &logits,
            &format!("case {i}"),
            tolerance,
        );
        worst = worst.max(d);

        if exact {
            gen.attach_images(&images).unwrap();
            assert_eq!(
                greedy_32(gen.as_mut(), &prompt),
                ids(&r[&format!("case{i}_greedy")]),
                "case {i}: greedy tokens"
            );
        }
    }
    // Image tokens without an attached image are refused, not run on stale features.
    let text = ids(&r["case0_input_ids"]);
    let err = gen.prefill(&text).unwrap_err().to_string();
    assert!(
        err.contains("image features and image tokens do not match"),
        "{err}"
    );
    worst
}

/// LLaVA, LLaVA-NeXT and Qwen-VL in bf16 (the vision tower's and the decoder's linear layers;
/// LLaVA's projector, the patch embeddings and the vision towers' attention f32): every
/// checked position's logits, text before the image and after it, within bf16's tolerance of
/// transformers' f32, reported as bf16; refused naming why where no bf16 backend runs.
#[test]
fn image_text_models_stay_close_in_bf16_or_are_refused() {
    for name in IMAGE_TEXT_MODELS {
        let Some(gen) = common::bf16_generator(name) else {
            continue;
        };
        let worst = check_image_text_generation_on(name, gen, BF16_TOLERANCE);
        assert!(worst > 0.0, "{name}: bf16 logits equal f32 exactly");
        println!("bf16 {name} logits max abs diff {worst}");
    }
}

#[test]
fn xclip_tiny_matches_transformers_from_a_folder_of_frames() {
    let r = reference("xclip-tiny");
    let pixel_values = xclip_pixels();
    let d = max_abs_diff(&pixel_values, &r["pixel_values"]);
    eprintln!("pixel_values max abs diff {d:e}");
    assert!(d <= 1e-5, "pixel_values max abs diff {d}");

    check_xclip(
        load("xclip-tiny").as_mut(),
        pixel_values,
        TOLERANCE,
        TOLERANCE,
    );
}

/// The pixels of two clips for xclip-tiny: the committed folder's frames as transformers
/// samples them, and the same frames reversed.
fn xclip_pixels() -> Vec<f32> {
    let pre = json(fixture("xclip-tiny/preprocessor_config.json"));
    let clip = ia_preprocess::video::open(&fixture("media/clip-frames"), 4).unwrap();
    assert_eq!(clip.sampled, [0, 2, 5, 7], "transformers' frame sampling");
    let reversed: Vec<RgbImage> = clip.frames.iter().rev().cloned().collect();
    let processor = ImageProcessor::from_config(&pre).unwrap();
    let mut pixel_values = processor.process(&clip.frames).unwrap().pixel_values;
    pixel_values.extend(processor.process(&reversed).unwrap().pixel_values);
    pixel_values
}

/// X-CLIP's video and text embeddings and logits for `pixel_values` (the two committed
/// clips) within `tolerance` (the logits within `logits_tolerance`) of transformers'; the
/// largest difference.
fn check_xclip(
    session: &mut dyn ia_engine::Session,
    pixel_values: Vec<f32>,
    tolerance: f32,
    logits_tolerance: f32,
) -> f32 {
    let r = reference("xclip-tiny");
    let out = session
        .run(&Inputs::Video {
            shape: [2, 4, 3, 32, 32],
            pixel_values,
            texts: Some(Box::new(reference_text(&r))),
        })
        .unwrap();
    let mut worst = 0f32;
    for name in ["video_embeds", "text_embeds", "logits_per_video"] {
        let ours = out.get(name).unwrap().to_f32_vec().unwrap();
        let d = max_abs_diff(&ours, &r[name]);
        eprintln!("{name} max abs diff {d:e}");
        let bound = if name == "logits_per_video" {
            logits_tolerance
        } else {
            tolerance
        };
        assert!(d <= bound, "{name} max abs diff {d}");
        worst = worst.max(d);
    }
    worst
}

/// X-CLIP in bf16 (both towers' linear layers and attention; the frames' message projection,
/// the multi-frame integration and the prompt generator f32): embeddings and logits within
/// bf16's tolerance (the logits, cosines times the temperature, within 0.1 as CLIP's), or
/// refused naming why.
#[test]
fn xclip_tiny_stays_close_in_bf16_or_is_refused() {
    common::check_session_in_bf16("xclip-tiny", |s| {
        check_xclip(s, xclip_pixels(), BF16_TOLERANCE, 0.1)
    });
}

/// The same frames as a lossless video file (media/clip.mkv, FFV1 RGB): ffmpeg decodes and
/// samples them to exactly the pixels of the folder of frames.
#[test]
fn a_video_file_gives_the_frames_of_its_folder() {
    let folder = ia_preprocess::video::open(&fixture("media/clip-frames"), 4).unwrap();
    let file = match ia_preprocess::video::open(&fixture("media/clip.mkv"), 4) {
        Ok(clip) => clip,
        Err(e) if e.to_string().contains("needs ffprobe and ffmpeg") => {
            eprintln!("NOT EXERCISED: decoding a video file ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(file.total_frames, 10);
    assert_eq!(file.sampled, folder.sampled);
    assert_eq!(file.frames, folder.frames);
}
