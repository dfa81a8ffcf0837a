//! The one reader of a checkpoint's tokenizer.json, with one error policy: a checkpoint
//! without one has none; a present file that does not load is an error naming it.

use crate::EngineError;
use ia_models::ModelSource;
use std::path::Path;
use tokenizers::Tokenizer;

/// Loads the tokenizer.json at `path`.
pub fn open(path: &Path) -> Result<Tokenizer, EngineError> {
    Tokenizer::from_file(path)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))
}

/// The checkpoint's tokenizer, if it has a tokenizer.json.
pub fn of(source: &ModelSource) -> Result<Option<Tokenizer>, EngineError> {
    source.tokenizer_json().map(open).transpose()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broken_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        std::fs::write(&p, "{").unwrap();
        let e = super::open(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
