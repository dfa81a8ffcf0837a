//! Which models ipfs-accelerate knows, what they are, and where their files are.
//!
//! * [`catalog`]: the 13 model classes with canonical Hugging Face ids and a small variant each.
//! * [`classify`]: maps any Hugging Face `config.json` to a class, family and task.
//! * [`checkpoint`]: finds a checkpoint in a local folder, the project cache or the Hugging Face
//!   hub cache (never downloading), and describes its files.
//! * [`graph_weights`]: parameter counts of ONNX and OpenVINO IR exports.

pub mod catalog;
pub mod checkpoint;
pub mod classify;
pub mod graph_weights;

pub use catalog::{CatalogEntry, Modality, ModelClass, CATALOG};
pub use checkpoint::{Checkpoint, CheckpointError, ModelSource, WeightsKind};
pub use classify::{classify_config, Classification, ClassifyError};
