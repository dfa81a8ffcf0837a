//! Finding a checkpoint on disk and describing its files. Nothing here downloads: a model is
//! found in a local folder, in the project's cache (filled by the fetch scripts), or in the
//! Hugging Face hub cache, or it is reported missing with every place that was searched.

use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How the weights a result was measured with came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsKind {
    /// Loaded from a checkpoint's weight files.
    Trained,
    /// Built from the config with seeded random values (`--random-weights`).
    Random,
}

impl WeightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsKind::Trained => "trained",
            WeightsKind::Random => "random",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("no checkpoint for '{model}' found (searched: {searched}); run the fetch script for it, pass a local folder, or use --random-weights")]
    NotFound { model: String, searched: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A checkpoint folder: config.json plus weights and (optionally) tokenizer/preprocessor files.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    /// safetensors files, in shard order.
    pub safetensors: Vec<PathBuf>,
    pub tokenizer_json: Option<PathBuf>,
    /// preprocessor_config.json, read once here (a malformed one is an error at open).
    pub preprocessor_config: Option<Value>,
    /// generation_config.json, read once here (null when the folder has none).
    pub generation_config: Value,
    /// The ONNX export: `onnx/model.onnx` (the layout of onnx-community / Xenova repositories)
    /// or `model.onnx` beside config.json; external data (`.onnx.data`) sits next to it.
    pub onnx: Option<PathBuf>,
    /// The folder's `weights_provenance.json` says its weights are randomly initialised
    /// (fixtures and benchmark checkpoints made by our scripts write it).
    pub random_init: bool,
}

/// File our generator scripts put beside randomly initialised weights:
/// `{"weights": "random", ...}`.
pub const PROVENANCE_FILE: &str = "weights_provenance.json";

/// Where a model to run comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A checkpoint folder with weights.
    Checkpoint(Checkpoint),
    /// Only a config: the engine builds the architecture with seeded random weights.
    RandomInit { config: Value, seed: u64 },
}

impl ModelSource {
    pub fn config(&self) -> &Value {
        match self {
            ModelSource::Checkpoint(c) => &c.config,
            ModelSource::RandomInit { config, .. } => config,
        }
    }

    pub(crate) fn config_mut(&mut self) -> &mut Value {
        match self {
            ModelSource::Checkpoint(c) => &mut c.config,
            ModelSource::RandomInit { config, .. } => config,
        }
    }

    pub fn weights_kind(&self) -> WeightsKind {
        match self {
            ModelSource::Checkpoint(c) if !c.safetensors.is_empty() && !c.random_init => {
                WeightsKind::Trained
            }
            _ => WeightsKind::Random,
        }
    }

    pub fn tokenizer_json(&self) -> Option<&Path> {
        match self {
            ModelSource::Checkpoint(c) => c.tokenizer_json.as_deref(),
            ModelSource::RandomInit { .. } => None,
        }
    }

    /// generation_config.json of a checkpoint (null when it has none: generation defaults
    /// then come from config.json alone).
    pub fn generation_config(&self) -> &Value {
        match self {
            ModelSource::Checkpoint(c) => &c.generation_config,
            ModelSource::RandomInit { .. } => &Value::Null,
        }
    }

    /// preprocessor_config.json of a checkpoint, if it has one.
    pub fn preprocessor_config(&self) -> Option<&Value> {
        match self {
            ModelSource::Checkpoint(c) => c.preprocessor_config.as_ref(),
            ModelSource::RandomInit { .. } => None,
        }
    }

    /// End-of-sequence ids: config.json's `eos_token_id` (a number or a list), plus
    /// generation_config.json's where the checkpoint has one.
    pub fn eos_tokens(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut add = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => out.extend(n.as_u64().map(|x| x as u32)),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
            }
            _ => {}
        };
        add(self.config().get("eos_token_id"));
        add(self.generation_config().get("eos_token_id"));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A short description for results: the folder, or "random(seed=N)".
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Checkpoint(c) => c.dir.display().to_string(),
            ModelSource::RandomInit { seed, .. } => format!("random-init(seed={seed})"),
        }
    }
}

/// The largest JSON file of a checkpoint read (configs, indexes and module lists are
/// kilobytes; a sharded index of a huge model is a few megabytes).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

pub(crate) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_JSON_BYTES {
        return Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: format!("{size} bytes of JSON (at most {MAX_JSON_BYTES} are read)"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

impl Checkpoint {
    /// Opens a checkpoint folder, or the folder of a `config.json` path.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let dir = if path.is_file() {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(CheckpointError::Invalid {
                path: dir,
                message: "no config.json in this folder".into(),
            });
        }
        let config = read_json(&config_path)?;
        if !config.is_object() {
            return Err(CheckpointError::Invalid {
                path: config_path,
                message: "config.json is not a JSON object".into(),
            });
        }
        let index = dir.join("model.safetensors.index.json");
        let safetensors = if index.is_file() {
            let idx = read_json(&index)?;
            let map = idx
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| CheckpointError::Invalid {
                    path: index.clone(),
                    message: "no \"weight_map\" object".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            files
                .iter()
                .map(|f| {
                    inside(&dir, f).map_err(|message| CheckpointError::Invalid {
                        path: index.clone(),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            vec![]
        };
        for f in &safetensors {
            if !f.is_file() {
                return Err(CheckpointError::Invalid {
                    path: f.clone(),
                    message: "weight shard listed in the index is missing".into(),
                });
            }
        }
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let random_init = match opt(PROVENANCE_FILE) {
            Some(p) => read_json(&p)?.get("weights").and_then(Value::as_str) == Some("random"),
            None => false,
        };
        let object = |name: &str| -> Result<Option<Value>, CheckpointError> {
            let Some(path) = opt(name) else {
                return Ok(None);
            };
            let v = read_json(&path)?;
            if !v.is_object() {
                return Err(CheckpointError::Invalid {
                    path,
                    message: format!("{name} is not a JSON object"),
                });
            }
            Ok(Some(v))
        };
        Ok(Checkpoint {
            random_init,
            tokenizer_json: opt("tokenizer.json"),
            preprocessor_config: object("preprocessor_config.json")?,
            generation_config: object("generation_config.json")?.unwrap_or(Value::Null),
            onnx: opt("onnx/model.onnx").or_else(|| opt("model.onnx")),
            config,
            safetensors,
            dir,
        })
    }
}

impl Checkpoint {
    /// tokenizer_config.json (null when the folder has none).
    pub fn tokenizer_config(&self) -> Result<Value, CheckpointError> {
        let p = self.dir.join("tokenizer_config.json");
        if p.is_file() {
            read_json(&p)
        } else {
            Ok(Value::Null)
        }
    }

    /// The sentence-embedding pipeline sentence-transformers would build from this folder
    /// (its modules.json, or the defaults for a plain transformers model).
    pub fn sentence_embedding(
        &self,
    ) -> Result<crate::sentence_transformers::SentenceEmbedding, CheckpointError> {
        use crate::sentence_transformers::SentenceEmbedding;
        if let Some(s) = SentenceEmbedding::read(&self.dir)? {
            return Ok(s);
        }
        Ok(SentenceEmbedding::plain(self.text_max_length()?))
    }

    /// The most tokens the text side takes as transformers and sentence-transformers size
    /// it: min(max_position_embeddings of the (text) config, tokenizer_config.json's
    /// model_max_length), whichever are known; at most 2^20.
    pub fn text_max_length(&self) -> Result<Option<usize>, CheckpointError> {
        let positions = self
            .config
            .get("text_config")
            .unwrap_or(&self.config)
            .get("max_position_embeddings")
            .and_then(Value::as_u64);
        let model_max = self
            .tokenizer_config()?
            .get("model_max_length")
            .and_then(Value::as_u64);
        let max = match (positions, model_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(max.filter(|&m| m >= 1).map(|m| m.min(1 << 20) as usize))
    }
}

/// `name` as a path inside `dir`: relative, made only of plain components (no `..`, no root,
/// no drive), as the names a checkpoint's index, modules.json or refs/main hold must be.
/// The error says why a name is refused.
pub fn inside(dir: &Path, name: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let rel = Path::new(name);
    let plain = !name.is_empty()
        && !name.contains('\\')
        && !name.contains('\0')
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "'{name}' is not a plain file name inside the checkpoint folder"
        ));
    }
    Ok(dir.join(rel))
}

/// Folders searched for a hub id, in order.
pub fn search_locations(model_id: &str) -> Vec<PathBuf> {
    let flat = model_id.replace('/', "--");
    let mut out = Vec::new();
    if let Some(cache) = project_cache_dir() {
        out.push(cache.join("models").join(&flat));
    }
    out.push(hf_hub_cache().join(format!("models--{flat}")));
    out
}

pub use ia_hardware::cache_dir as project_cache_dir;

/// The hub cache as huggingface_hub computes it: HF_HUB_CACHE, else HF_HOME/hub, else
/// ~/.cache/huggingface/hub.
pub fn hf_hub_cache() -> PathBuf {
    if let Ok(d) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home)
        .join(".cache")
        .join("huggingface")
        .join("hub")
}

/// In a hub-cache repo folder: the snapshot `refs/main` points at, else the newest snapshot
/// holding a config.json.
fn hub_snapshot(repo: &Path) -> Option<PathBuf> {
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        // refs/main holds a commit hash: a single plain name under snapshots/, never a path.
        let rev = rev.trim();
        if !rev.contains('/') {
            if let Ok(p) = inside(&snapshots, rev) {
                if p.join("config.json").is_file() {
                    return Some(p);
                }
            }
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// Resolves a model reference: a path to a folder or config.json, or a hub id looked up in
/// the caches. Never touches the network (we run with HF_HUB_OFFLINE semantics always).
pub fn resolve(model: &str) -> Result<Checkpoint, CheckpointError> {
    let as_path = Path::new(model);
    if as_path.exists() {
        return Checkpoint::open(as_path);
    }
    let locations = search_locations(model);
    for loc in &locations {
        let dir = if loc.join("snapshots").is_dir() {
            hub_snapshot(loc)
        } else {
            Some(loc.clone()).filter(|p| p.join("config.json").is_file())
        };
        if let Some(dir) = dir {
            return Checkpoint::open(&dir);
        }
    }
    Err(CheckpointError::NotFound {
        model: model.to_string(),
        searched: locations
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_a_folder_and_finds_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        std::fs::write(d.path().join("model.safetensors"), b"x").unwrap();
        std::fs::write(d.path().join("tokenizer.json"), b"{}").unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        assert_eq!(c.safetensors.len(), 1);
        assert!(c.tokenizer_json.is_some());
        let c = Checkpoint::open(&d.path().join("config.json")).unwrap();
        assert_eq!(c.dir, d.path());
    }

    #[test]
    fn provenance_file_marks_random_weights() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        std::fs::write(d.path().join("model.safetensors"), b"x").unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        assert_eq!(
            ModelSource::Checkpoint(c).weights_kind(),
            WeightsKind::Trained
        );
        std::fs::write(
            d.path().join(PROVENANCE_FILE),
            r#"{"weights":"random","seed":1}"#,
        )
        .unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        assert_eq!(
            ModelSource::Checkpoint(c).weights_kind(),
            WeightsKind::Random
        );
    }

    #[test]
    fn malformed_config_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), "{not json").unwrap();
        let err = Checkpoint::open(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("invalid JSON"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = Checkpoint::open(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
    }

    /// The side files are read once, at open, with one policy: absent is fine, malformed
    /// names the file.
    #[test]
    fn preprocessor_and_generation_configs_are_read_at_open() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"model_type":"vit"}"#).unwrap();
        let c = Checkpoint::open(d.path()).unwrap();
        assert!(c.preprocessor_config.is_none() && c.generation_config.is_null());
        std::fs::write(
            d.path().join("preprocessor_config.json"),
            r#"{"size": 224}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("generation_config.json"),
            r#"{"eos_token_id": 7}"#,
        )
        .unwrap();
        let src = ModelSource::Checkpoint(Checkpoint::open(d.path()).unwrap());
        assert_eq!(src.preprocessor_config().unwrap()["size"], 224);
        assert_eq!(src.eos_tokens(), vec![7]);
        for (file, text, needle) in [
            ("preprocessor_config.json", "{oops", "invalid JSON"),
            ("preprocessor_config.json", "[1]", "not a JSON object"),
            ("generation_config.json", "{oops", "invalid JSON"),
        ] {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("config.json"), r#"{"model_type":"vit"}"#).unwrap();
            std::fs::write(d.path().join(file), text).unwrap();
            let err = Checkpoint::open(d.path()).unwrap_err().to_string();
            assert!(err.contains(file) && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn missing_shard_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
        std::fs::write(
            d.path().join("model.safetensors.index.json"),
            r#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let err = Checkpoint::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn shard_names_stay_inside_the_folder() {
        for evil in [
            "../outside.safetensors",
            "/etc/passwd",
            "a/../../b.safetensors",
            "",
        ] {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(d.path().join("config.json"), r#"{"model_type":"bert"}"#).unwrap();
            std::fs::write(
                d.path().join("model.safetensors.index.json"),
                serde_json::json!({"weight_map": {"a": evil}}).to_string(),
            )
            .unwrap();
            let err = Checkpoint::open(d.path()).unwrap_err().to_string();
            assert!(
                err.contains("not a plain file name") && err.contains("index.json"),
                "{evil}: {err}"
            );
        }
        assert!(inside(Path::new("/m"), "shards/model-1.safetensors").is_ok());
    }

    #[test]
    fn refs_main_cannot_point_outside_the_snapshots() {
        let home = tempfile::tempdir().unwrap();
        let repo = home.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots")).unwrap();
        // A folder with a config.json outside the snapshots, which refs/main names by path.
        let outside = home.path().join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("config.json"), r#"{"model_type":"vit"}"#).unwrap();
        std::fs::write(repo.join("refs").join("main"), "../../elsewhere").unwrap();
        assert_eq!(hub_snapshot(&repo), None);
    }

    #[test]
    fn finds_hub_cache_snapshot_via_refs_main() {
        let home = tempfile::tempdir().unwrap();
        let repo = home.path().join("hub").join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), r#"{"model_type":"vit"}"#).unwrap();
        assert_eq!(hub_snapshot(&repo).unwrap(), snap);
    }
}
