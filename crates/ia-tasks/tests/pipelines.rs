//! Pipelines end to end on the committed fixtures: files in, task results out, compared with
//! what transformers' own pipeline steps produced (scripts/make_media_fixtures.py).

use ia_engine::{Placement, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_native::NativeEngine;
use ia_tasks::{Input, Pipeline, TaskOptions, TaskOutput};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

fn pipeline(name: &str) -> Pipeline {
    let src = Model::resolve(
        "test",
        ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap()),
    )
    .unwrap();
    Pipeline::load(
        &NativeEngine::new(),
        src,
        Placement::new(Platform::Cpu, Precision::F32),
    )
    .unwrap()
}

#[test]
fn detr_detections_match_transformers_post_processing() {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("detr-tiny/reference_meta.json")).unwrap(),
    )
    .unwrap();
    let opts = TaskOptions {
        threshold: meta["threshold"].as_f64().unwrap() as f32,
        ..Default::default()
    };
    let input = Input::detect(fixture("media/photo.png").to_str().unwrap()).unwrap();
    let r = pipeline("detr-tiny").run(&input, &opts).unwrap();
    let TaskOutput::Detections { detections } = r.output else {
        panic!("expected detections")
    };
    let expected = meta["detections"].as_array().unwrap();
    assert_eq!(detections.len(), expected.len());
    for (d, e) in detections.iter().zip(expected) {
        assert_eq!(d.label, e["label"].as_str().unwrap());
        assert!((d.score - e["score"].as_f64().unwrap() as f32).abs() < 1e-4);
        for (a, b) in d.bbox.iter().zip(e["box"].as_array().unwrap()) {
            // pixels: 1e-4 relative to a 160-pixel image
            assert!((a - b.as_f64().unwrap() as f32).abs() < 2e-2, "{a} vs {b}");
        }
    }
}

#[test]
fn wrong_input_kinds_are_named() {
    let mut p = pipeline("vit-tiny");
    let e = p
        .run(&Input::Text("hello".into()), &TaskOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("takes an image file") && e.contains("text"),
        "{e}"
    );
    let mut p = pipeline("whisper-tiny");
    let img = Input::detect(fixture("media/gray.png").to_str().unwrap()).unwrap();
    let e = p
        .run(&img, &TaskOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("WAV") && e.contains("gray.png"), "{e}");
}

#[test]
fn clip_zero_shot_scores_sum_to_one() {
    let mut p = pipeline("clip-tiny");
    let img = Input::detect(fixture("media/photo.png").to_str().unwrap()).unwrap();
    let opts = TaskOptions {
        labels: vec!["cat".into(), "dog".into(), "diagram".into()],
        ..Default::default()
    };
    let TaskOutput::Labels { labels } = p.run(&img, &opts).unwrap().output else {
        panic!("expected labels")
    };
    assert_eq!(labels.len(), 3);
    let total: f32 = labels.iter().map(|l| l.score).sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert!(labels.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn clap_zero_shot_audio_and_embeddings() {
    let mut p = pipeline("clap-tiny");
    let wav = Input::detect(fixture("media/chord-48k.wav").to_str().unwrap()).unwrap();
    let opts = TaskOptions {
        labels: vec!["a piano chord".into(), "a dog barking".into()],
        ..Default::default()
    };
    let TaskOutput::Labels { labels } = p.run(&wav, &opts).unwrap().output else {
        panic!("expected labels")
    };
    assert_eq!(labels.len(), 2);
    assert!((labels.iter().map(|l| l.score).sum::<f32>() - 1.0).abs() < 1e-5);
    // A 16 kHz file is resampled to the extractor's 48 kHz.
    let speech = Input::detect(fixture("media/speech-16k.wav").to_str().unwrap()).unwrap();
    let TaskOutput::Embedding { of, dim, .. } =
        p.run(&speech, &TaskOptions::default()).unwrap().output
    else {
        panic!("expected an embedding")
    };
    assert_eq!((of.as_str(), dim), ("audio", 16));
}
