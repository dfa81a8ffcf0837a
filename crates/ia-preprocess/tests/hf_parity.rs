//! Our processors against transformers' (PIL backend) on the committed test media.
//! References: fixtures/media/*, written by scripts/make_media_fixtures.py.

use ia_preprocess::audio::{zero_mean_unit_var, Waveform, WhisperFrontEnd};
use ia_preprocess::image::{ImageProcessor, RgbImage};
use std::path::PathBuf;

fn media() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/media")
}

fn reference() -> (Vec<u8>, serde_json::Value) {
    let st = std::fs::read(media().join("preprocess_reference.safetensors")).unwrap();
    let cases = std::fs::read_to_string(media().join("preprocess_cases.json")).unwrap();
    (st, serde_json::from_str(&cases).unwrap())
}

fn tensor(st: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = safetensors::SafeTensors::deserialize(st).unwrap();
    let v = t.tensor(name).unwrap();
    let data = match v.dtype() {
        safetensors::Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => v
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{name}: {other:?}"),
    };
    (v.shape().to_vec(), data)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn image_processors_match_transformers() {
    let (st, cases) = reference();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = ImageProcessor::from_config(&case["config"]).unwrap();
        let images: Vec<RgbImage> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| RgbImage::open(&media().join(f.as_str().unwrap())).unwrap())
            .collect();
        let out = p.process(&images).unwrap();
        let (shape, expected) = tensor(&st, name);
        assert_eq!(out.shape.to_vec(), shape, "{name}");
        let err = max_abs(&out.pixel_values, &expected);
        // PNG: Pillow's integer resampling reproduced exactly, so only float rounding remains.
        // JPEG: zune-jpeg and libjpeg-turbo may decode a pixel one level apart.
        let tol = if name.contains("jpeg") { 0.1 } else { 1e-5 };
        eprintln!("{name}: max abs {err:e}");
        assert!(err <= tol, "{name}: max abs {err} > {tol}");
        if let Some(mask) = out.pixel_mask {
            let (_, expected) = tensor(&st, &format!("{name}_mask"));
            let mask: Vec<f32> = mask.iter().map(|&m| f32::from(m)).collect();
            assert_eq!(mask, expected, "{name} mask");
        }
    }
}

/// LLaVA-NeXT's anyres tiles against LlavaNextImageProcessor (fixtures/media/anyres_*): the
/// tiles' pixels (the 336-pixel ones every 7th row and column), and the image tokens
/// LlavaNextProcessor puts in the prompt.
#[test]
fn llava_next_tiles_match_transformers() {
    let st = std::fs::read(media().join("anyres_reference.safetensors")).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(media().join("anyres_cases.json")).unwrap())
            .unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p = ImageProcessor::from_config(&case["config"]).unwrap();
        let file = case["images"][0].as_str().unwrap();
        let image = RgbImage::open(&media().join(file)).unwrap();
        let out = p.process(std::slice::from_ref(&image)).unwrap();
        let (_, shape) = tensor(&st, &format!("{name}_shape"));
        let shape: Vec<usize> = shape.iter().map(|&v| v as usize).collect();
        assert_eq!(out.shape.to_vec(), shape, "{name}");
        let anyres = p.anyres.as_ref().unwrap();
        let (rows, cols) = anyres.grid(image.height, image.width);
        assert_eq!(1 + rows * cols, shape[0], "{name}: tiles");
        let (_, expected) = tensor(&st, name);
        let [n, c, h, w] = out.shape;
        let step = if h == 32 { 1 } else { 7 };
        let got: Vec<f32> = (0..n * c)
            .flat_map(|plane| {
                let values = &out.pixel_values;
                (0..h).step_by(step).flat_map(move |y| {
                    (0..w)
                        .step_by(step)
                        .map(move |x| values[(plane * h + y) * w + x])
                })
            })
            .collect();
        let err = max_abs(&got, &expected);
        let tol = if file.ends_with(".jpg") { 0.1 } else { 1e-5 };
        eprintln!("{name}: max abs {err:e}");
        assert!(err <= tol, "{name}: max abs {err} > {tol}");
        let patch = case["patch_size"].as_u64().unwrap() as usize;
        assert_eq!(
            anyres.image_tokens(image.height, image.width, patch, false),
            case["image_tokens"].as_u64().unwrap() as usize,
            "{name}: image tokens"
        );
    }
}

#[test]
fn whisper_log_mel_matches_the_feature_extractor() {
    let (st, _) = reference();
    let wav = Waveform::open(&media().join("speech-16k.wav")).unwrap();
    assert_eq!(wav.sample_rate, 16_000);
    let fe = WhisperFrontEnd::default();
    let mel = fe.log_mel(&wav.samples);
    let frames = fe.frames();
    assert_eq!(mel.len(), 80 * frames);
    let (shape, first) = tensor(&st, "whisper_log_mel_first_400");
    assert_eq!(shape, vec![80, 400]);
    let ours: Vec<f32> = (0..80)
        .flat_map(|m| mel[m * frames..m * frames + 400].to_vec())
        .collect();
    let err = max_abs(&ours, &first);
    eprintln!("log-mel max abs {err:e}");
    assert!(err <= 1e-4, "log-mel max abs {err}");
    let (_, last) = tensor(&st, "whisper_log_mel_last_frame");
    let ours_last: Vec<f32> = (0..80).map(|m| mel[m * frames + frames - 1]).collect();
    assert!(max_abs(&ours_last, &last) <= 1e-4);
}

#[test]
fn wav2vec2_normalisation_matches_the_feature_extractor() {
    let (st, _) = reference();
    let wav = Waveform::open(&media().join("speech-16k.wav")).unwrap();
    let (_, expected) = tensor(&st, "wav2vec2_normalized_first_4000");
    let ours = zero_mean_unit_var(&wav.samples);
    let err = max_abs(&ours[..4000], &expected);
    eprintln!("max abs {err:e}");
    assert!(err <= 1e-4, "max abs {err}");
}

#[test]
fn resampling_matches_torchaudio() {
    let (st, _) = reference();
    let a = Waveform::open(&media().join("speech-22k.wav")).unwrap();
    let b = a.resampled(16_000).unwrap();
    assert_eq!(b.sample_rate, 16_000);
    let (_, len) = tensor(&st, "resampled_22k_to_16k_len");
    assert_eq!(b.samples.len(), len[0] as usize);
    let (_, window) = tensor(&st, "resampled_22k_to_16k_20000_24000");
    let err = max_abs(&b.samples[20000..24000], &window);
    eprintln!("resampling max abs {err:e}");
    assert!(err <= 1e-5, "resampling max abs {err}");
    let rms = |x: &[f32]| (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    assert!((rms(&a.samples) / rms(&b.samples) - 1.0).abs() < 0.02);
}

#[test]
fn wrong_or_corrupt_files_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bad = dir.join("not-audio.wav");
    std::fs::write(&bad, b"RIFF....garbage").unwrap();
    let e = Waveform::open(&bad).unwrap_err().to_string();
    assert!(e.contains("not-audio.wav") && e.contains("WAV"), "{e}");
    let e = RgbImage::open(&media().join("speech-16k.wav"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("speech-16k.wav") && e.contains("image"), "{e}");
    let e = Waveform::open(&dir.join("missing.wav"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.wav"), "{e}");
}
