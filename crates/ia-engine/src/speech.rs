//! Speech recognition: a waveform in, tokens and text out. Whisper (encoder-decoder with its
//! decoding rules) and Wav2Vec2 (CTC) implement it.

use crate::{EngineError, SessionInfo};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// 1 = greedy; more = beam search (Whisper).
    pub num_beams: usize,
    /// Upper bound on generated tokens; the model's own limit applies when smaller.
    pub max_new_tokens: Option<usize>,
    /// Language for multilingual Whisper checkpoints (e.g. "en"); English when unset.
    pub language: Option<String>,
}

/// The widest beam search (each beam keeps its own decoder cache).
pub const MAX_BEAMS: usize = 64;

impl TranscribeOptions {
    /// Checks the options against the ranges decoding supports.
    pub fn check(&self) -> Result<(), crate::EngineError> {
        if !(1..=MAX_BEAMS).contains(&self.num_beams) {
            return Err(crate::EngineError::InvalidInput(format!(
                "num_beams {} is outside 1..={MAX_BEAMS}",
                self.num_beams
            )));
        }
        Ok(())
    }
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            num_beams: 1,
            max_new_tokens: None,
            language: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Transcription {
    /// The tokens the model chose (after the decoder prompt, without end-of-text).
    pub tokens: Vec<u32>,
    pub text: String,
}

pub trait SpeechRecognizer: Send {
    fn info(&self) -> &SessionInfo;
    /// The rate the model's feature extractor expects; callers resample to it.
    fn sample_rate(&self) -> u32;
    fn transcribe(
        &mut self,
        waveform: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcription, EngineError>;
}
