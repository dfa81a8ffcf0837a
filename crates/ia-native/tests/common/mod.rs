//! Fixture access shared by the parity tests: committed checkpoints under fixtures/ and the
//! reference tensors transformers produced for them.
#![allow(dead_code)] // each test binary uses a different subset

use candle_core::{Device, Tensor};
use ia_engine::{Engine, Placement, Precision, Session, TextGenerator};
use ia_hardware::Platform;
use ia_models::{Checkpoint, Model, ModelSource};
use ia_native::NativeEngine;
use std::collections::HashMap;
use std::path::PathBuf;

/// Max abs difference allowed between our f32 outputs and transformers'.
pub const TOLERANCE: f32 = 1e-4;

/// The same in bf16 (AMX or AVX512-BF16 products, the rest f32): OpenVINO's bf16 policy
/// (crates/ia-openvino/tests/parity.rs).
pub const BF16_TOLERANCE: f32 = 5e-2;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name)
}

pub fn source(name: &str) -> Model {
    let source =
        ModelSource::Checkpoint(Checkpoint::open(&fixture(name)).expect("fixture checkpoint"));
    Model::resolve(name, source).expect("a known class")
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors")
}

pub fn load(name: &str) -> Box<dyn Session> {
    NativeEngine::new()
        .load(&source(name), Placement::new(Platform::Cpu, Precision::F32))
        .expect("load")
}

pub fn generator(name: &str) -> Box<dyn TextGenerator> {
    NativeEngine::new()
        .load_generator(&source(name), Placement::new(Platform::Cpu, Precision::F32))
        .expect("load_generator")
}

/// The fixture's session asked for in bf16 on the CPU.
pub fn load_bf16(name: &str) -> Result<Box<dyn Session>, ia_engine::EngineError> {
    NativeEngine::new().load(
        &source(name),
        Placement::new(Platform::Cpu, Precision::Bf16),
    )
}

/// The fixture's session in bf16 on the CPU where a bf16 backend runs (checked to report
/// bf16); None, with the refusal checked, where none does ([`bf16_loaded`]).
#[allow(dead_code)]
pub fn bf16_session(name: &str) -> Option<Box<dyn Session>> {
    let session = bf16_loaded(name, load_bf16(name))?;
    assert_eq!(session.info().precision, Precision::Bf16, "{name}");
    Some(session)
}

/// `check` (which returns its largest difference from transformers' f32) on the fixture's
/// session in bf16 where a bf16 backend runs ([`bf16_session`]); bf16 must have changed the
/// result (else it did not run in bf16).
#[allow(dead_code)]
pub fn check_session_in_bf16(name: &str, check: impl FnOnce(&mut dyn Session) -> f32) {
    let Some(mut session) = bf16_session(name) else {
        return;
    };
    let worst = check(session.as_mut());
    assert!(
        worst > 0.0,
        "{name}: bf16 equals f32 exactly: not run in bf16"
    );
    println!("bf16 {name} max abs diff {worst}");
}

/// [`bf16_session`] for a text generator.
#[allow(dead_code)]
pub fn bf16_generator(name: &str) -> Option<Box<dyn TextGenerator>> {
    let loaded = NativeEngine::new().load_generator(
        &source(name),
        Placement::new(Platform::Cpu, Precision::Bf16),
    );
    let generator = bf16_loaded(name, loaded)?;
    assert_eq!(generator.info().precision, Precision::Bf16, "{name}");
    Some(generator)
}

pub fn ids(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &Tensor) -> f32 {
    max_abs(a, &b.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "shape mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `loaded` is a `--precision bf16` load on the CPU. Where bf16 runs here, the loaded value;
/// elsewhere, after checking that the load was refused naming why (never run as f32 under a
/// bf16 label) and saying what was not exercised, None.
pub fn bf16_loaded<T>(what: &str, loaded: Result<T, ia_engine::EngineError>) -> Option<T> {
    if ia_native::kernels::bf16::available() {
        return Some(loaded.unwrap_or_else(|e| panic!("bf16 {what}: {e}")));
    }
    let reason = ia_native::kernels::bf16::unavailable_reason();
    println!("NOT EXERCISED: bf16 {what} on the native engine ({reason}); checked the refusal");
    match loaded {
        Ok(_) => panic!("bf16 {what} must not load without a bf16 backend"),
        Err(e) => assert!(e.to_string().contains(&reason), "{e}"),
    }
    None
}
