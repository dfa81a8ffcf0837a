//! sentence-transformers' description of a checkpoint's embedding pipeline: `modules.json`
//! (the module chain), `sentence_bert_config.json` (max_seq_length, lower-casing) and the
//! Pooling module's `config.json`. A folder without `modules.json` gets what
//! `SentenceTransformer(folder)` builds for a plain transformers model: mean pooling, no
//! normalisation, max_seq_length = min(max_position_embeddings, model_max_length).

use crate::checkpoint::{inside, read_json, CheckpointError};
use serde_json::Value;
use std::path::Path;

/// One pooling strategy of sentence-transformers' `Pooling` module. When several are enabled
/// their vectors are concatenated in this order (the order of `Pooling.forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    Cls,
    Max,
    Mean,
    MeanSqrtLen,
    WeightedMean,
    LastToken,
}

impl PoolingMode {
    /// (config key, mode) in concatenation order.
    const KEYS: [(&'static str, PoolingMode); 6] = [
        ("pooling_mode_cls_token", PoolingMode::Cls),
        ("pooling_mode_max_tokens", PoolingMode::Max),
        ("pooling_mode_mean_tokens", PoolingMode::Mean),
        (
            "pooling_mode_mean_sqrt_len_tokens",
            PoolingMode::MeanSqrtLen,
        ),
        (
            "pooling_mode_weightedmean_tokens",
            PoolingMode::WeightedMean,
        ),
        ("pooling_mode_lasttoken", PoolingMode::LastToken),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::Mean => "mean",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len",
            PoolingMode::WeightedMean => "weightedmean",
            PoolingMode::LastToken => "lasttoken",
        }
    }
}

/// The embedding pipeline of a checkpoint, as sentence-transformers would run it.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceEmbedding {
    /// Whether the folder describes it (modules.json) or these are the defaults.
    pub from_modules_json: bool,
    /// Tokens kept per text, special tokens included; None when the folder does not say
    /// (the caller bounds it by the model's positions).
    pub max_seq_length: Option<usize>,
    pub do_lower_case: bool,
    pub pooling: Vec<PoolingMode>,
    /// A Normalize module follows pooling: unit-length embeddings.
    pub normalize: bool,
}

impl SentenceEmbedding {
    /// What `SentenceTransformer(folder)` builds for a folder without modules.json.
    pub fn plain(max_seq_length: Option<usize>) -> Self {
        Self {
            from_modules_json: false,
            max_seq_length,
            do_lower_case: false,
            pooling: vec![PoolingMode::Mean],
            normalize: false,
        }
    }

    /// Reads the folder's sentence-transformers files; `Ok(None)` when it has no modules.json.
    pub fn read(dir: &Path) -> Result<Option<Self>, CheckpointError> {
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            return Ok(None);
        }
        let invalid = |path: &Path, message: String| CheckpointError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let modules = read_json(&modules_path)?;
        let list = modules
            .as_array()
            .ok_or_else(|| invalid(&modules_path, "is not a JSON list of modules".into()))?;
        let mut out = Self {
            from_modules_json: true,
            max_seq_length: None,
            do_lower_case: false,
            pooling: Vec::new(),
            normalize: false,
        };
        let mut saw_transformer = false;
        for (i, m) in list.iter().enumerate() {
            let kind = m.get("type").and_then(Value::as_str).ok_or_else(|| {
                invalid(&modules_path, format!("module {i} has no \"type\" string"))
            })?;
            let rel = m.get("path").and_then(Value::as_str).unwrap_or("");
            // A module folder is a plain name inside the checkpoint ("" is the folder itself).
            let folder = if rel.is_empty() {
                dir.to_path_buf()
            } else {
                inside(dir, rel).map_err(|e| invalid(&modules_path, e))?
            };
            match kind.rsplit('.').next().unwrap_or(kind) {
                "Transformer" if !saw_transformer && i == 0 => {
                    saw_transformer = true;
                    let cfg = folder.join("sentence_bert_config.json");
                    if cfg.is_file() {
                        let c = read_json(&cfg)?;
                        out.max_seq_length = match c.get("max_seq_length") {
                            None | Some(Value::Null) => None,
                            Some(v) => Some(
                                v.as_u64()
                                    .filter(|n| (1..=1 << 20).contains(n))
                                    .ok_or_else(|| {
                                        invalid(
                                            &cfg,
                                            format!(
                                                "max_seq_length {v} is not an integer in 1..=1048576"
                                            ),
                                        )
                                    })? as usize,
                            ),
                        };
                        out.do_lower_case = c
                            .get("do_lower_case")
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                    }
                }
                "Pooling" if saw_transformer && out.pooling.is_empty() => {
                    let cfg_path = folder.join("config.json");
                    let cfg = read_json(&cfg_path)?;
                    out.pooling =
                        pooling_modes(&cfg).map_err(|message| invalid(&cfg_path, message))?;
                }
                "Normalize" if !out.pooling.is_empty() && !out.normalize => out.normalize = true,
                _ => {
                    return Err(invalid(
                        &modules_path,
                        format!(
                            "module {i} ({kind}) is not supported here: `run` reproduces \
                             Transformer -> Pooling [-> Normalize] pipelines"
                        ),
                    ))
                }
            }
        }
        if !saw_transformer || out.pooling.is_empty() {
            return Err(invalid(
                &modules_path,
                "lists no Transformer module followed by a Pooling module".into(),
            ));
        }
        Ok(Some(out))
    }
}

/// The Pooling module's enabled modes; `pooling_mode` (a string, newer files) or the
/// `pooling_mode_*` flags.
fn pooling_modes(cfg: &Value) -> Result<Vec<PoolingMode>, String> {
    if let Some(mode) = cfg.get("pooling_mode").and_then(Value::as_str) {
        let m = match mode {
            "cls" => PoolingMode::Cls,
            "max" => PoolingMode::Max,
            "mean" => PoolingMode::Mean,
            "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
            "weightedmean" => PoolingMode::WeightedMean,
            "lasttoken" => PoolingMode::LastToken,
            other => return Err(format!("unknown pooling_mode '{other}'")),
        };
        return Ok(vec![m]);
    }
    let modes: Vec<PoolingMode> = PoolingMode::KEYS
        .iter()
        .filter(|(k, _)| cfg.get(*k).and_then(Value::as_bool) == Some(true))
        .map(|(_, m)| *m)
        .collect();
    if modes.is_empty() {
        return Err("enables no pooling mode".into());
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const MODULES: &str = r#"[
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn reads_minilm_layout() {
        let d = folder(&[
            ("modules.json", MODULES),
            (
                "sentence_bert_config.json",
                r#"{"max_seq_length": 256, "do_lower_case": false}"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
                    "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false}"#,
            ),
        ]);
        let s = SentenceEmbedding::read(d.path()).unwrap().unwrap();
        assert_eq!(s.max_seq_length, Some(256));
        assert_eq!(s.pooling, vec![PoolingMode::Mean]);
        assert!(s.normalize && s.from_modules_json && !s.do_lower_case);
    }

    #[test]
    fn no_modules_json_is_none() {
        let d = folder(&[]);
        assert!(SentenceEmbedding::read(d.path()).unwrap().is_none());
    }

    #[test]
    fn module_paths_stay_inside_the_folder() {
        let m = MODULES.replace("1_Pooling", "../../etc");
        let d = folder(&[("modules.json", &m)]);
        let e = SentenceEmbedding::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("modules.json") && e.contains("../../etc"), "{e}");
        let m = MODULES.replace("1_Pooling", "/etc");
        let d = folder(&[("modules.json", &m)]);
        assert!(SentenceEmbedding::read(d.path()).is_err());
    }

    #[test]
    fn unsupported_modules_and_modes_are_named() {
        let m = MODULES.replace("models.Normalize", "models.Dense");
        let d = folder(&[
            ("modules.json", &m),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true}"#,
            ),
        ]);
        let e = SentenceEmbedding::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("Dense"), "{e}");
        let d = folder(&[
            ("modules.json", MODULES),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": false}"#,
            ),
        ]);
        let e = SentenceEmbedding::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("no pooling mode"), "{e}");
        let d = folder(&[
            ("modules.json", MODULES),
            ("sentence_bert_config.json", r#"{"max_seq_length": 0}"#),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_mean_tokens": true}"#,
            ),
        ]);
        let e = SentenceEmbedding::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("max_seq_length 0"), "{e}");
    }

    #[test]
    fn several_modes_concatenate_in_pooling_order() {
        let cfg =
            serde_json::json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true});
        assert_eq!(
            pooling_modes(&cfg).unwrap(),
            vec![PoolingMode::Cls, PoolingMode::Mean]
        );
        let cfg = serde_json::json!({"pooling_mode": "lasttoken"});
        assert_eq!(pooling_modes(&cfg).unwrap(), vec![PoolingMode::LastToken]);
    }
}
