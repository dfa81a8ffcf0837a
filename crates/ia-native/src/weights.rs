//! Where a model's tensors come from: a checkpoint's safetensors files, or seeded random values
//! built from the config alone. Both paths count the parameters the model actually loads.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use candle_nn::Init;
use ia_engine::inputs::SplitMix64;
use ia_engine::EngineError;
use ia_models::ModelSource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Returns a VarBuilder for `source` and a counter that, once the model is built, holds the
/// number of parameters it loaded.
pub fn load_var_builder(
    source: &ModelSource,
    dtype: DType,
    device: &Device,
) -> Result<(VarBuilder<'static>, Arc<AtomicU64>), EngineError> {
    let counter = Arc::new(AtomicU64::new(0));
    let backend = CountingBackend {
        inner: source_backend(source)?,
        count: counter.clone(),
    };
    Ok((
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        counter,
    ))
}

/// Where `source`'s tensors come from: its safetensors files, or the seeded random values.
pub(crate) fn source_backend(source: &ModelSource) -> Result<Box<dyn SimpleBackend>, EngineError> {
    Ok(match source {
        ModelSource::Checkpoint(c) => {
            if c.safetensors.is_empty() {
                return Err(EngineError::InvalidModel(format!(
                    "{}: no model.safetensors (or sharded index) in the checkpoint",
                    c.dir.display()
                )));
            }
            let st = open_safetensors(c)?;
            Box::new(st)
        }
        ModelSource::RandomInit { config, seed } => Box::new(random_backend(config, *seed)),
    })
}

/// Seeded random values for any tensor, with the config's `initializer_range`.
pub(crate) fn random_backend(config: &serde_json::Value, seed: u64) -> impl SimpleBackend {
    let std = config
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02) as f32;
    RandomBackend { seed, std }
}

/// Memory-maps a checkpoint's safetensors files (all shards).
pub(crate) fn open_safetensors(
    c: &ia_models::Checkpoint,
) -> Result<candle_core::safetensors::MmapedSafetensors, EngineError> {
    // Safety: the files are memory-mapped read-only; they must not be modified while the
    // model is loaded, as with every mmap-based loader.
    unsafe { candle_core::safetensors::MmapedSafetensors::multi(&c.safetensors) }.map_err(|e| {
        EngineError::InvalidModel(format!(
            "{}: cannot read safetensors: {}",
            c.dir.display(),
            crate::candle_message(&e)
        ))
    })
}

struct CountingBackend {
    inner: Box<dyn SimpleBackend>,
    count: Arc<AtomicU64>,
}

impl SimpleBackend for CountingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.count
            .fetch_add(t.elem_count() as u64, Ordering::Relaxed);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.count
            .fetch_add(t.elem_count() as u64, Ordering::Relaxed);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Seeded random weights following transformers' `_init_weights`: normal(0, initializer_range)
/// for matrices and embeddings, ones for norm scales, zeros for biases. Each tensor's values
/// depend only on the seed and the tensor's name, so a model is the same on every machine.
struct RandomBackend {
    seed: u64,
    std: f32,
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let is_norm = {
            let lower = name.to_ascii_lowercase();
            lower.contains("norm") || lower.contains("ln_")
        };
        let n = s.elem_count();
        // Batch-norm statistics as a fresh BatchNorm has them (a random variance could be < 0).
        let values: Vec<f32> = if leaf == "bias" || leaf == "beta" || leaf == "running_mean" {
            vec![0.0; n]
        } else if leaf == "running_var"
            || (is_norm && (leaf == "weight" || leaf == "gamma") && s.rank() == 1)
        {
            vec![1.0; n]
        } else {
            // One stream per tensor, cut into pieces drawn in parallel (each normal takes two
            // draws): the values of one pass, in a fraction of its time (a 0.5B model's took
            // 25 s on one thread).
            use rayon::prelude::*;
            const PIECE: usize = 1 << 16;
            let seed = self.seed ^ name_hash(name);
            let mut values = vec![0f32; n];
            values
                .par_chunks_mut(PIECE)
                .enumerate()
                .for_each(|(piece, values)| {
                    let mut rng = SplitMix64::new(seed);
                    rng.skip(2 * (piece * PIECE) as u64);
                    for v in values {
                        *v = rng.next_normal() * self.std;
                    }
                });
            values
        };
        Tensor::from_vec(values, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for '{name}'")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Random init can build any tensor the architecture asks for; prefixes such as "bert."
        // are therefore never assumed to be present.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_seeded_by_name() {
        let b = RandomBackend { seed: 1, std: 0.02 };
        let get = |name: &str| {
            b.get(
                (4, 4).into(),
                name,
                Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap()
        };
        let (a1, a2, c) = (get("x.weight"), get("x.weight"), get("y.weight"));
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a1), v(&a2));
        assert_ne!(v(&a1), v(&c));
        // Drawn in pieces, a large tensor is the one stream of its name.
        let big = b
            .get(
                (3, 70_000).into(),
                "x.weight",
                Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let mut rng = SplitMix64::new(1 ^ name_hash("x.weight"));
        let one_pass: Vec<f32> = (0..210_000).map(|_| rng.next_normal() * 0.02).collect();
        assert_eq!(v(&big), one_pass);
        let ln = b
            .get(
                (4,).into(),
                "encoder.LayerNorm.weight",
                Init::Const(0.),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        assert_eq!(v(&ln), vec![1.0; 4]);
    }
}
