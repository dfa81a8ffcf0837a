//! Video clips as the frames a model sees: a folder of frame images (PNG or JPEG, in name
//! order) or a video file decoded by ffmpeg, sampled as transformers' video processors sample
//! them ([`sample_indices`]). Only the sampled frames are decoded.

use crate::image::{RgbImage, MAX_INPUT_PIXELS};
use crate::PreprocessError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The frames of a clip that a model reads, and where they came from.
#[derive(Debug, Clone)]
pub struct Clip {
    pub frames: Vec<RgbImage>,
    /// Frames in the folder or the video stream.
    pub total_frames: usize,
    /// Indices of `frames` among them.
    pub sampled: Vec<usize>,
}

/// transformers' `BaseVideoProcessor.sample_frames`: `wanted` indices evenly spaced over
/// `total` frames (`torch.arange(0, total, total / wanted).int()`).
pub fn sample_indices(total: usize, wanted: usize) -> Result<Vec<usize>, PreprocessError> {
    if wanted == 0 || wanted > total {
        return Err(PreprocessError::Input(format!(
            "the clip has {total} frames; the model reads {wanted}"
        )));
    }
    let step = total as f64 / wanted as f64;
    Ok((0..wanted).map(|i| (i as f64 * step) as usize).collect())
}

/// Extensions read as frames when a clip is a folder.
const FRAME_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` names a clip: a folder, or a file with a video container's extension.
pub fn is_video(path: &Path) -> bool {
    path.is_dir()
        || path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "mp4" | "webm" | "mkv" | "avi" | "mov" | "m4v" | "mpg" | "mpeg" | "gif"
            )
        })
}

/// Opens the clip at `path` (a folder of frames or a video file) and decodes the `wanted`
/// frames [`sample_indices`] picks.
pub fn open(path: &Path, wanted: usize) -> Result<Clip, PreprocessError> {
    if path.is_dir() {
        open_folder(path, wanted)
    } else {
        open_file(path, wanted)
    }
}

fn open_folder(dir: &Path, wanted: usize) -> Result<Clip, PreprocessError> {
    let read_error = |e: std::io::Error| PreprocessError::Read {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| FRAME_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PreprocessError::WrongKind {
            path: dir.display().to_string(),
            expected: "folder of video frames",
            reason: "it holds no .png or .jpg files".into(),
        });
    }
    let sampled = sample_indices(files.len(), wanted)?;
    let frames = sampled
        .iter()
        .map(|&i| RgbImage::open(&files[i]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Clip {
        frames,
        total_frames: files.len(),
        sampled,
    })
}

/// ffmpeg (Debian's package, `scripts/install_ffmpeg.sh`), found on PATH or at `$IA_FFMPEG`;
/// ffprobe beside it.
fn tool(name: &str) -> PathBuf {
    match std::env::var_os("IA_FFMPEG") {
        Some(ffmpeg) => Path::new(&ffmpeg).with_file_name(name),
        None => PathBuf::from(name),
    }
}

fn open_file(path: &Path, wanted: usize) -> Result<Clip, PreprocessError> {
    let shown = path.display().to_string();
    let wrong = |reason: String| PreprocessError::WrongKind {
        path: shown.clone(),
        expected: "video",
        reason,
    };
    if !path.is_file() {
        return Err(PreprocessError::Read {
            path: shown.clone(),
            reason: "no such file or folder".into(),
        });
    }
    let probe = Command::new(tool("ffprobe"))
        .args(["-v", "error", "-select_streams", "v:0", "-count_packets"])
        .args(["-show_entries", "stream=width,height,nb_read_packets"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .map_err(|e| PreprocessError::Read {
            path: shown.clone(),
            reason: format!(
                "decoding video files needs ffprobe and ffmpeg ({e}); scripts/install_ffmpeg.sh installs them, or pass a folder of frames"
            ),
        })?;
    if !probe.status.success() {
        return Err(wrong(first_line(&probe.stderr)));
    }
    let text = String::from_utf8_lossy(&probe.stdout);
    let fields: Vec<usize> = text
        .trim()
        .split(',')
        .map(|f| f.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| wrong(format!("ffprobe found no video stream ({})", text.trim())))?;
    let [width, height, total] = fields[..] else {
        return Err(wrong(format!(
            "ffprobe found no video stream ({})",
            text.trim()
        )));
    };
    if width == 0 || height == 0 || (width as u64) * (height as u64) > MAX_INPUT_PIXELS {
        return Err(wrong(format!(
            "frames of {width}x{height} pixels; at most {MAX_INPUT_PIXELS} pixels are decoded"
        )));
    }
    let sampled = sample_indices(total, wanted)?;
    let select: Vec<String> = sampled.iter().map(|i| format!("eq(n\\,{i})")).collect();
    let decoded = Command::new(tool("ffmpeg"))
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-vf"])
        .arg(format!("select='{}'", select.join("+")))
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PreprocessError::Read {
            path: shown.clone(),
            reason: format!("cannot run ffmpeg: {e}"),
        })?;
    if !decoded.status.success() {
        return Err(wrong(first_line(&decoded.stderr)));
    }
    let frame_bytes = width * height * 3;
    if decoded.stdout.len() != frame_bytes * wanted {
        return Err(wrong(format!(
            "ffmpeg gave {} bytes for {wanted} frames of {width}x{height}",
            decoded.stdout.len()
        )));
    }
    let frames = decoded
        .stdout
        .chunks(frame_bytes)
        .map(|f| RgbImage::new(width, height, f.to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Clip {
        frames,
        total_frames: total,
        sampled,
    })
}

fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("ffmpeg failed")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_like_transformers_video_processors() {
        // torch.arange(0, total, total / wanted).int()
        assert_eq!(sample_indices(10, 4).unwrap(), [0, 2, 5, 7]);
        assert_eq!(sample_indices(8, 8).unwrap(), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(sample_indices(300, 8).unwrap()[7], 262);
        let e = sample_indices(3, 8).unwrap_err().to_string();
        assert!(e.contains("3 frames") && e.contains("reads 8"), "{e}");
    }

    #[test]
    fn a_folder_without_frames_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let e = open(dir.path(), 4).unwrap_err().to_string();
        assert!(e.contains("no .png or .jpg"), "{e}");
    }

    #[test]
    fn video_paths_are_folders_or_containers() {
        assert!(is_video(Path::new("clip.MP4")));
        assert!(is_video(&std::env::temp_dir()));
        assert!(!is_video(Path::new("photo.png")));
    }
}
