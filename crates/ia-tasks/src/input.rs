//! What a user hands `run`: a text, or a path to an image or audio file, told apart by the
//! file's first bytes rather than its extension.

use crate::TaskError;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Image(PathBuf),
    Audio(PathBuf),
    /// A folder of frames or a video file.
    Video(PathBuf),
}

const MEDIA_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "wav", "flac", "mp3", "ogg", "gif", "bmp", "webp", "mp4", "webm", "mkv",
    "avi", "mov",
];

impl Input {
    /// A folder is a video's frames; a path that exists is a file (image, audio or video by
    /// content); anything else is text, except a string that names a missing media file,
    /// which is an error rather than a prompt.
    pub fn detect(arg: &str) -> Result<Self, TaskError> {
        let path = Path::new(arg);
        if path.is_dir() {
            return Ok(Input::Video(path.to_path_buf()));
        }
        if path.is_file() {
            let mut head = [0u8; 12];
            let n = std::fs::File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|e| TaskError::Input(format!("cannot read {arg}: {e}")))?;
            let head = &head[..n];
            return if head.starts_with(b"\x89PNG") || head.starts_with(&[0xFF, 0xD8, 0xFF]) {
                Ok(Input::Image(path.to_path_buf()))
            } else if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE") {
                Ok(Input::Audio(path.to_path_buf()))
            } else if is_video_container(head) {
                Ok(Input::Video(path.to_path_buf()))
            } else {
                Err(TaskError::Input(format!(
                    "{arg} is neither a PNG/JPEG image, a WAV file, a video (MP4, MOV, WebM, MKV, AVI, GIF) nor a folder of frames"
                )))
            };
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !arg.contains(char::is_whitespace)
            && ext.is_some_and(|e| MEDIA_EXTENSIONS.contains(&e.as_str()))
        {
            return Err(TaskError::Input(format!("no such file: {arg}")));
        }
        Ok(Input::Text(arg.to_string()))
    }

    pub fn describe(&self) -> String {
        match self {
            Input::Text(_) => "text".into(),
            Input::Image(p) => format!("the image {}", p.display()),
            Input::Audio(p) => format!("the audio file {}", p.display()),
            Input::Video(p) => format!("the video {}", p.display()),
        }
    }
}

/// The signatures of the containers ffmpeg is asked to decode: ISO media (MP4, MOV), Matroska
/// (MKV, WebM), AVI and GIF.
fn is_video_container(head: &[u8]) -> bool {
    head.get(4..8) == Some(b"ftyp")
        || head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3])
        || (head.starts_with(b"RIFF") && head.get(8..12) == Some(b"AVI "))
        || head.starts_with(b"GIF8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_told_apart_by_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let png = dir.join("x.wav"); // a PNG whatever its name says
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n....").unwrap();
        assert_eq!(
            Input::detect(png.to_str().unwrap()).unwrap(),
            Input::Image(png.clone())
        );
        let wav = dir.join("a.bin");
        std::fs::write(&wav, b"RIFF\0\0\0\0WAVEfmt ").unwrap();
        assert!(matches!(
            Input::detect(wav.to_str().unwrap()).unwrap(),
            Input::Audio(_)
        ));
        let mp4 = dir.join("clip.bin");
        std::fs::write(&mp4, b"\0\0\0\x20ftypisom").unwrap();
        assert_eq!(
            Input::detect(mp4.to_str().unwrap()).unwrap(),
            Input::Video(mp4.clone())
        );
        assert_eq!(
            Input::detect(dir.to_str().unwrap()).unwrap(),
            Input::Video(dir.clone())
        );
        let junk = dir.join("j.txt");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(Input::detect(junk.to_str().unwrap()).is_err());
        assert!(Input::detect("missing.png")
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        assert_eq!(
            Input::detect("a photo.png of a cat").unwrap(),
            Input::Text("a photo.png of a cat".into())
        );
    }
}
