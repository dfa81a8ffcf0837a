//! Which models ipfs-accelerate knows, what they are, and where their files are.
//!
//! * [`catalog`]: the 13 model classes with canonical Hugging Face ids and a small variant each.
//! * [`classify`]: maps any Hugging Face `config.json` to a class, family and task.
//! * [`model`]: a model resolved once (name, files, classification): what every engine,
//!   the harness and the task pipelines receive.
//! * [`checkpoint`]: finds a checkpoint in a local folder, the project cache or the Hugging Face
//!   hub cache (never downloading), and describes its files.
//! * [`cost`]: parameters, FLOPs, bytes moved and cache per call, from the config (the
//!   predictor's roofline prior).
//! * [`graph_weights`]: parameter counts of ONNX and OpenVINO IR exports, and the operations
//!   an ONNX graph dispatches.
//! * [`validate`]: range checks on config.json numbers; [`footprint`]: the memory a model
//!   and a workload need, checked before anything is allocated.
//! * [`gguf`]: GGUF headers checked before a loader trusts them.
//! * [`sentence_transformers`]: the embedding pipeline a checkpoint's sentence-transformers
//!   files describe (pooling, normalisation, max_seq_length).

pub mod catalog;
pub mod checkpoint;
pub mod classify;
pub mod cost;
pub mod defaults;
pub mod footprint;
pub mod gguf;
pub mod graph_weights;
pub mod model;
pub mod sentence_transformers;
pub mod validate;

pub use catalog::{CatalogEntry, Modality, ModelClass, CATALOG};
pub use checkpoint::{Checkpoint, CheckpointError, ModelSource, WeightsKind};
pub use classify::{classify_config, Classification, ClassifyError};
pub use model::Model;
