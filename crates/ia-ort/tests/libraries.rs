//! ONNX Runtime builds other than the installed one, loaded on purpose
//! (scripts/fetch_test_libraries.sh puts them in <cache>/test-libraries):
//! * the OpenVINO execution-provider build runs the fixtures on the `openvino` platform,
//!   within 1e-4 of transformers, with the provider recorded;
//! * a library too old for the engine's C API, or built for another architecture, is a
//!   one-line error naming the file and the problem, not a crash.
//!
//! Each test sets ORT_DYLIB_PATH before the library is loaded, so each needs a process of its
//! own: nextest gives it one; under `cargo test` these tests say so and do nothing.

mod common;

use common::{check_generation, fixture, max_abs, reference, reference_inputs};
use ia_engine::{Engine, Placement, Precision};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_ort::OrtEngine;
use std::path::PathBuf;

/// Points this process at a fetched library; false where the process is shared.
fn use_library(folder: &str, file: &str) -> bool {
    if std::env::var_os("NEXTEST").is_none() {
        eprintln!("skipped: needs a process of its own (run with cargo nextest)");
        return false;
    }
    let path: PathBuf = ia_hardware::cache_dir()
        .expect("a cache folder (HOME or XDG_CACHE_HOME)")
        .join("test-libraries")
        .join(folder)
        .join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch_test_libraries.sh",
        path.display()
    );
    // Safety: set before any thread of this test process reads the environment.
    unsafe { std::env::set_var("ORT_DYLIB_PATH", &path) };
    true
}

fn checkpoint(name: &str) -> Model {
    let source = ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).unwrap());
    Model::resolve(name, source).unwrap()
}

#[test]
fn the_openvino_provider_runs_the_encoders_like_transformers() {
    if !use_library("onnxruntime-openvino-1.24.1", "libonnxruntime.so.1.24.1") {
        return;
    }
    assert!(ia_ort::available_providers()
        .unwrap()
        .contains(&"OpenVINOExecutionProvider".to_string()));
    for (name, output) in [("bert-tiny", "last_hidden_state"), ("vit-tiny", "logits")] {
        let mut session = OrtEngine::new()
            .load(
                &checkpoint(name),
                Placement::new(Platform::Openvino, Precision::F32),
            )
            .unwrap();
        assert_eq!(
            session.info().device,
            "openvino (OpenVINOExecutionProvider)"
        );
        assert_eq!(session.info().engine_version, "onnxruntime 1.24.1");
        let out = session.run(&reference_inputs(name)).unwrap();
        let d = max_abs(
            &out.get(output).unwrap().to_f32_vec().unwrap(),
            &reference(name, output).1,
        );
        eprintln!("{name} onnxruntime OpenVINO EP {output} max abs diff {d:e}");
        assert!(d <= 1e-4, "{name}: max abs diff {d}");
    }
}

#[test]
fn the_openvino_provider_generates_like_transformers() {
    if !use_library("onnxruntime-openvino-1.24.1", "libonnxruntime.so.1.24.1") {
        return;
    }
    let mut gen = OrtEngine::new()
        .load_generator(
            &checkpoint("llama-tiny"),
            Placement::new(Platform::Openvino, Precision::F32),
        )
        .unwrap();
    assert_eq!(gen.info().device, "openvino (OpenVINOExecutionProvider)");
    let worst = check_generation("llama-tiny", gen.as_mut(), true);
    eprintln!("llama-tiny onnxruntime OpenVINO EP logits max abs {worst:e}");
    assert!(worst <= 1e-4, "max abs diff {worst}");
}

#[test]
fn a_library_older_than_the_api_is_refused_with_both_versions() {
    if !use_library("onnxruntime-1.20.1", "libonnxruntime.so.1.20.1") {
        return;
    }
    let e = ia_ort::available_providers().unwrap_err().to_string();
    eprintln!("{e}");
    assert!(
        e.contains("libonnxruntime.so.1.20.1") && e.contains("1.24") && e.contains("'1.20.1'"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_library_of_another_architecture_is_refused() {
    if !use_library("onnxruntime-1.32.0-aarch64", "libonnxruntime.so.1.32.0") {
        return;
    }
    let e = OrtEngine::new()
        .load(
            &checkpoint("bert-tiny"),
            Placement::new(Platform::Cpu, Precision::F32),
        )
        .err()
        .unwrap()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("cannot load ONNX Runtime from")
            && e.contains("is built for aarch64; this machine is linux x86_64"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
}
