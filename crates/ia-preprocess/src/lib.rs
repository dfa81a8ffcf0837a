//! Input preprocessing that reproduces Hugging Face's processors number for number, so a model
//! fed by this crate sees the tensor transformers would have given it.
//!
//! - [`image`]: decoding (PNG, JPEG), RGB conversion, Pillow's resampling filters in Pillow's own
//!   fixed-point arithmetic, center crop, rescale, normalise and pad, driven by the checkpoint's
//!   `preprocessor_config.json` (CLIP, ViT, DETR processors).
//! - [`audio`]: WAV decoding to mono, torchaudio's sinc resampling, Whisper's log-mel features
//!   and Wav2Vec2's zero-mean unit-variance normalisation.
//! - [`video`]: clips from a folder of frames or a video file (ffmpeg), with the frame
//!   sampling of transformers' video processors.

pub mod audio;
pub mod image;
mod resample;
pub mod video;

/// What went wrong turning a file into model input; one line, naming the file or field.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a {expected} file: {reason}")]
    WrongKind {
        path: String,
        expected: &'static str,
        reason: String,
    },
    #[error("preprocessor config: {0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
}
