//! Turning `--models` into benchmarkable models: catalog keys, hub ids found in the caches, or
//! checkpoint folders; random weights only where asked for.

use anyhow::{bail, Context};
use ia_models::checkpoint::{self, Checkpoint, CheckpointError};
use ia_models::Model;
use ia_models::{catalog, ModelSource};
use std::path::Path;

pub struct PlanOptions {
    pub small: bool,
    pub random_weights: bool,
    pub seed: u64,
}

pub fn resolve_model(name: &str, opts: &PlanOptions) -> anyhow::Result<Model> {
    let name = name.trim();
    let (display_name, source) = if Path::new(name).exists() {
        let ckpt = Checkpoint::open(Path::new(name))?;
        (name.to_string(), checkpoint_or_random(ckpt, opts))
    } else if let Some(entry) = catalog::lookup(name) {
        let small = opts.small || entry.names_small_variant(name);
        let id = entry.id(small);
        match checkpoint::resolve(id) {
            Ok(ckpt) => (id.to_string(), checkpoint_or_random(ckpt, opts)),
            Err(CheckpointError::NotFound { .. }) if opts.random_weights => {
                let config = entry.builtin_config(small).with_context(|| {
                    format!(
                        "{id}: no checkpoint found and no built-in config to build it from; pass a checkpoint folder"
                    )
                })?;
                (
                    id.to_string(),
                    ModelSource::RandomInit {
                        config: serde_json::from_str(config).expect("built-in configs are valid"),
                        seed: opts.seed,
                    },
                )
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        match checkpoint::resolve(name) {
            Ok(ckpt) => (name.to_string(), checkpoint_or_random(ckpt, opts)),
            Err(CheckpointError::NotFound { searched, .. }) => bail!(
                "unknown model '{name}': not a catalog key (see `ipfs-accelerate models`), not a folder, and not in the caches ({searched})"
            ),
            Err(e) => return Err(e.into()),
        }
    };
    Model::resolve(display_name.clone(), source).with_context(|| display_name)
}

/// A checkpoint folder without weight files can still be benchmarked on random weights, but
/// only when the user asked for that.
fn checkpoint_or_random(ckpt: Checkpoint, opts: &PlanOptions) -> ModelSource {
    if ckpt.safetensors.is_empty() && opts.random_weights {
        ModelSource::RandomInit {
            config: ckpt.config,
            seed: opts.seed,
        }
    } else {
        ModelSource::Checkpoint(ckpt)
    }
}
