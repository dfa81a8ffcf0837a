//! Speech recognition with a CTC head (Wav2Vec2), over any engine's session: the session
//! returns `logits` [1, frames, vocab] for a waveform; the best token per frame is collapsed
//! and spelled as transformers' `Wav2Vec2CTCTokenizer.decode` does. The native engine and the
//! graph runtimes share this, so a transcript differs between engines only where their logits
//! do.

use crate::features::Wav2Vec2Features;
use crate::speech::{SpeechRecognizer, TranscribeOptions, Transcription};
use crate::{Capability, Engine, EngineError, Inputs, Placement, Session, SessionInfo};
use ia_models::{Model, ModelClass, ModelSource};
use std::collections::HashMap;
use std::path::Path;

/// transformers' `Wav2Vec2CTCTokenizer.decode`: collapse repeats, drop the blank (pad) token,
/// the word delimiter becomes a space.
#[derive(Debug, Clone)]
pub struct CtcVocabulary {
    tokens: HashMap<u32, String>,
    pad: u32,
    delimiter: String,
    lower_case: bool,
}

impl CtcVocabulary {
    /// `vocab.json` and `tokenizer_config.json` of a checkpoint folder; `None` without a
    /// vocabulary.
    pub fn load(dir: &Path) -> Result<Option<Self>, EngineError> {
        let Ok(text) = std::fs::read_to_string(dir.join("vocab.json")) else {
            return Ok(None);
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&text).map_err(|e| {
            EngineError::InvalidModel(format!("{}: vocab.json: {e}", dir.display()))
        })?;
        let tc: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let s = |k: &str, d: &str| tc.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_string();
        let pad = vocab.get(&s("pad_token", "<pad>")).copied().unwrap_or(0);
        Ok(Some(Self {
            tokens: vocab.into_iter().map(|(t, i)| (i, t)).collect(),
            pad,
            delimiter: s("word_delimiter_token", "|"),
            lower_case: tc
                .get("do_lower_case")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        }))
    }

    /// Collapsed token ids (repeats merged, blanks removed).
    pub fn collapse(&self, frame_ids: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev = None;
        for &id in frame_ids {
            if Some(id) != prev && id != self.pad {
                out.push(id);
            }
            prev = Some(id);
        }
        out
    }

    pub fn decode(&self, frame_ids: &[u32]) -> String {
        let text: String = self
            .collapse(frame_ids)
            .iter()
            .map(|id| match self.tokens.get(id) {
                Some(t) if *t == self.delimiter => " ".to_string(),
                Some(t) => t.clone(),
                None => String::new(),
            })
            .collect();
        let text = text.trim().to_string();
        if self.lower_case {
            text.to_lowercase()
        } else {
            text
        }
    }
}

/// `model` on `engine` as a CTC recognizer (the default of [`Engine::load_speech_recognizer`]):
/// its forward pass under the one CTC decoding; other classes are refused by name.
pub fn load_recognizer<E: Engine + ?Sized>(
    engine: &E,
    model: &Model,
    at: Placement,
) -> Result<Box<dyn SpeechRecognizer>, EngineError> {
    engine.supports(model.class, at.platform, Capability::Transcribe)?;
    if model.class != ModelClass::Wav2vec2 {
        return Err(EngineError::Unsupported(format!(
            "the {} engine cannot transcribe with {} models",
            engine.name(),
            model.class.as_str()
        )));
    }
    Ok(Box::new(CtcRecognizer::new(
        engine.load(model, at)?,
        model,
    )?))
}

/// Greedy CTC transcription over a session that returns `logits`.
pub struct CtcRecognizer {
    session: Box<dyn Session>,
    features: Wav2Vec2Features,
    vocabulary: Option<CtcVocabulary>,
}

impl CtcRecognizer {
    /// `session` is `model` loaded by any engine.
    pub fn new(session: Box<dyn Session>, model: &Model) -> Result<Self, EngineError> {
        let vocabulary = match &model.source {
            ModelSource::Checkpoint(c) => CtcVocabulary::load(&c.dir)?,
            ModelSource::RandomInit { .. } => None,
        };
        Ok(Self {
            session,
            features: Wav2Vec2Features::from_source(&model.source)?,
            vocabulary,
        })
    }
}

/// The index of the largest value of each `width`-wide row (the first on ties, as argmax).
fn argmax_rows(values: &[f32], width: usize) -> Vec<u32> {
    values
        .chunks(width.max(1))
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

impl SpeechRecognizer for CtcRecognizer {
    fn info(&self) -> &SessionInfo {
        self.session.info()
    }

    fn sample_rate(&self) -> u32 {
        self.features.sampling_rate
    }

    fn transcribe(
        &mut self,
        waveform: &[f32],
        _options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError> {
        let vocabulary = self.vocabulary.as_ref().ok_or_else(|| {
            EngineError::InvalidModel("the checkpoint has no vocab.json to spell CTC tokens".into())
        })?;
        let outputs = self.session.run(&Inputs::Audio {
            batch: 1,
            sample_rate: self.features.sampling_rate,
            samples: waveform.to_vec(),
        })?;
        let logits = outputs.get("logits").ok_or_else(|| {
            EngineError::Unsupported("this Wav2Vec2 checkpoint has no CTC head (lm_head)".into())
        })?;
        let shape = logits.shape();
        let width = *shape.last().unwrap_or(&0);
        if shape.len() != 3 || shape[0] != 1 || width == 0 {
            return Err(EngineError::Runtime(format!(
                "CTC logits of shape {shape:?}; expected [1, frames, vocab]"
            )));
        }
        let frame_ids = argmax_rows(&logits.to_f32_vec()?, width);
        Ok(Transcription {
            tokens: vocabulary.collapse(&frame_ids),
            text: vocabulary.decode(&frame_ids),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_collapse_and_spell_like_transformers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vocab.json"),
            r#"{"<pad>": 0, "|": 1, "A": 2, "B": 3}"#,
        )
        .unwrap();
        let v = CtcVocabulary::load(dir.path()).unwrap().unwrap();
        let frames = [0, 2, 2, 0, 2, 1, 3, 3, 0];
        assert_eq!(v.collapse(&frames), vec![2, 2, 1, 3]);
        assert_eq!(v.decode(&frames), "AA B");
        assert!(CtcVocabulary::load(&dir.path().join("none"))
            .unwrap()
            .is_none());
        assert_eq!(argmax_rows(&[0.1, 0.5, 0.5, 2.0, 1.0, 0.0], 3), vec![1, 0]);
    }
}
