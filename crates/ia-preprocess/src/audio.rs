//! Audio front ends: WAV decoding to a mono waveform, resampling to the extractor's rate,
//! Whisper's log-mel spectrogram and Wav2Vec2's normalisation.

use crate::PreprocessError;
use rustfft::{num_complex::Complex, FftPlanner};
use std::path::Path;

/// Sample rates a file or a preprocessor config may have: below 1 kHz nothing is speech or
/// music, above 1 MHz nothing is a recording.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=1_000_000;

/// The longest recording read, seconds: every front end here works on windows of seconds to
/// minutes, and an hour of audio at the highest rate is already 14 GB of samples.
pub const MAX_AUDIO_SECONDS: f64 = 3600.0;

/// Checks a sample rate, naming where it came from.
pub fn check_sample_rate(rate: u64, what: &str) -> Result<u32, PreprocessError> {
    u32::try_from(rate)
        .ok()
        .filter(|r| SAMPLE_RATES.contains(r))
        .ok_or_else(|| {
            PreprocessError::Input(format!(
                "{what}: sample rate {rate} Hz is outside {}..={} Hz",
                SAMPLE_RATES.start(),
                SAMPLE_RATES.end()
            ))
        })
}

/// The most samples (all channels together) a WAV file may hold: 512 MiB as f32, 46 minutes
/// of 48 kHz mono, 140 minutes at 16 kHz. Whisper transcribes longer audio window by window
/// but computes the features of the whole recording first (about 14 bytes per sample).
pub const MAX_SAMPLES: u64 = 1 << 27;

/// The most channels a WAV file may have (they are averaged to mono).
pub const MAX_CHANNELS: u16 = 64;

/// A mono waveform in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Waveform {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl Waveform {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }

    /// Reads a PCM or float WAV file; channels are averaged to mono (as librosa and the HF
    /// pipelines do) and integers scaled to [-1, 1) by 2^(bits-1), as soundfile does.
    pub fn open(path: &Path) -> Result<Self, PreprocessError> {
        let file = std::fs::File::open(path).map_err(|e| PreprocessError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::read(std::io::BufReader::new(file), &path.display().to_string())
    }

    /// [`Waveform::open`] over any reader; `name` is what errors call it.
    pub fn read(input: impl std::io::Read, name: &str) -> Result<Self, PreprocessError> {
        let wrong = |reason: String| PreprocessError::WrongKind {
            path: name.to_string(),
            expected: "WAV audio",
            reason,
        };
        let reader = hound::WavReader::new(input).map_err(|e| wrong(e.to_string()))?;
        let spec = reader.spec();
        check_sample_rate(u64::from(spec.sample_rate), name)?;
        if !(1..=MAX_CHANNELS).contains(&spec.channels) {
            return Err(wrong(format!(
                "its header declares {} channels (1..={MAX_CHANNELS} are read)",
                spec.channels
            )));
        }
        let bits_ok = match spec.sample_format {
            hound::SampleFormat::Float => spec.bits_per_sample == 32,
            hound::SampleFormat::Int => (1..=32).contains(&spec.bits_per_sample),
        };
        if !bits_ok {
            return Err(wrong(format!(
                "{} bits per {:?} sample is not a WAV sample format",
                spec.bits_per_sample, spec.sample_format
            )));
        }
        let seconds = f64::from(reader.duration()) / f64::from(spec.sample_rate);
        if u64::from(reader.len()) > MAX_SAMPLES {
            return Err(wrong(format!(
                "it declares {} samples; at most {MAX_SAMPLES} are read",
                reader.len()
            )));
        }
        if seconds > MAX_AUDIO_SECONDS {
            return Err(wrong(format!(
                "it declares {seconds:.0} s of audio; at most {MAX_AUDIO_SECONDS:.0} s are read"
            )));
        }
        let channels = usize::from(spec.channels);
        // The header's sample count is a claim: capacity grows with the samples really read.
        let mut interleaved: Vec<f32> = Vec::with_capacity((reader.len() as usize).min(1 << 22));
        match spec.sample_format {
            hound::SampleFormat::Float => {
                for s in reader.into_samples::<f32>() {
                    interleaved.push(s.map_err(|e| wrong(e.to_string()))?);
                }
            }
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
                for s in reader.into_samples::<i32>() {
                    interleaved.push(s.map_err(|e| wrong(e.to_string()))? as f32 * scale);
                }
            }
        }
        if interleaved.is_empty() {
            return Err(wrong("it holds no samples".into()));
        }
        let samples = interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f32>() / frame.len() as f32)
            .collect();
        Ok(Self {
            sample_rate: spec.sample_rate,
            samples,
        })
    }

    /// This waveform at `rate` Hz (unchanged when it already is).
    pub fn resampled(&self, rate: u32) -> Result<Self, PreprocessError> {
        if rate == self.sample_rate {
            return Ok(self.clone());
        }
        Ok(Self {
            sample_rate: rate,
            samples: resample(&self.samples, self.sample_rate, rate)?,
        })
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Band-limited resampling with torchaudio's default kernel (`sinc_interp_hann`,
/// lowpass_filter_width 6, rolloff 0.99): what the transformers ASR pipeline applies when a
/// file's rate differs from the feature extractor's. Both rates must be in [`SAMPLE_RATES`].
///
/// torchaudio tabulates one kernel row per output phase: `to / gcd` rows of about
/// `from / gcd` taps, which for coprime rates (44101 -> 16000 Hz) is hundreds of millions of
/// weights. Up to [`KERNEL_TABLE_LIMIT`] weights the table is built; past it each output
/// sample's weights are computed from the same formula over the taps where the window is
/// non-zero, so memory stays bounded whatever the rates.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>, PreprocessError> {
    resample_with_table_limit(x, from, to, KERNEL_TABLE_LIMIT)
}

fn resample_with_table_limit(
    x: &[f32],
    from: u32,
    to: u32,
    table_limit: usize,
) -> Result<Vec<f32>, PreprocessError> {
    const WIDTH: f64 = 6.0;
    const ROLLOFF: f64 = 0.99;
    check_sample_rate(u64::from(from), "resampling input")?;
    check_sample_rate(u64::from(to), "resampling output")?;
    let g = gcd(from, to);
    let (orig, new) = ((from / g) as usize, (to / g) as usize);
    let base = orig.min(new) as f64 * ROLLOFF;
    let width = (WIDTH * orig as f64 / base).ceil() as usize;
    let taps = 2 * width + orig;
    // Weight of padded input (k*orig + i) for output phase j.
    let weight = |j: usize, i: usize| -> f64 {
        let idx = (i as f64 - width as f64) / orig as f64;
        let t = ((-(j as f64) / new as f64 + idx) * base).clamp(-WIDTH, WIDTH);
        let window = (t * std::f64::consts::PI / WIDTH / 2.0).cos().powi(2);
        let t = t * std::f64::consts::PI;
        let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
        sinc * window * base / orig as f64
    };
    let table = (new.saturating_mul(taps) <= table_limit).then(|| {
        let mut kernel = vec![0f64; new * taps];
        for j in 0..new {
            for i in 0..taps {
                kernel[j * taps + i] = weight(j, i);
            }
        }
        kernel
    });
    let target = (new as f64 * x.len() as f64 / orig as f64).ceil() as usize;
    let mut out = Vec::with_capacity(target);
    let at = |p: usize| -> f64 {
        // The input, zero-padded by `width` on the left.
        p.checked_sub(width)
            .and_then(|q| x.get(q))
            .map_or(0.0, |&v| f64::from(v))
    };
    for n in 0..target {
        let (k, j) = (n / new, n % new);
        let k0 = k * orig;
        let s: f64 = match &table {
            Some(kernel) => (0..taps).map(|i| at(k0 + i) * kernel[j * taps + i]).sum(),
            None => {
                // |t| < WIDTH only for i within orig * (j/new +- WIDTH/base) of `width`.
                let centre = width as f64 + orig as f64 * j as f64 / new as f64;
                let reach = orig as f64 * WIDTH / base;
                let lo = (centre - reach).floor().max(0.0) as usize;
                let hi = ((centre + reach).ceil() as usize + 1).min(taps);
                (lo..hi).map(|i| at(k0 + i) * weight(j, i)).sum()
            }
        };
        out.push(s as f32);
    }
    Ok(out)
}

/// Kernel weights [`resample`] tabulates at most (8 MB of f64).
pub const KERNEL_TABLE_LIMIT: usize = 1 << 20;

const SAMPLE_RATES_U64: std::ops::RangeInclusive<u64> =
    *SAMPLE_RATES.start() as u64..=*SAMPLE_RATES.end() as u64;

/// An unsigned integer field of a preprocessor config: `default` when absent, an error naming
/// the field, the value and the allowed range when it is not an integer in `range`.
pub fn config_uint(
    config: &serde_json::Value,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, PreprocessError> {
    config_number(
        config,
        key,
        default,
        range,
        serde_json::Value::as_u64,
        "an integer",
    )
}

/// A number field of a preprocessor config, as [`config_uint`] for integers.
pub fn config_f64(
    config: &serde_json::Value,
    key: &str,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, PreprocessError> {
    config_number(
        config,
        key,
        default,
        range,
        serde_json::Value::as_f64,
        "a number",
    )
}

fn config_number<T: PartialOrd + std::fmt::Display + Copy>(
    config: &serde_json::Value,
    key: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
    read: impl Fn(&serde_json::Value) -> Option<T>,
    kind: &str,
) -> Result<T, PreprocessError> {
    let v = match config.get(key) {
        None | Some(serde_json::Value::Null) => default,
        Some(v) => read(v).ok_or_else(|| {
            PreprocessError::Config(format!(
                "{key} {v} is not {kind} in {}..={}",
                range.start(),
                range.end()
            ))
        })?,
    };
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(PreprocessError::Config(format!(
            "{key} {v} is outside {}..={}",
            range.start(),
            range.end()
        )))
    }
}

/// Whisper's feature extractor settings (preprocessor_config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperFrontEnd {
    pub sampling_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    pub feature_size: usize,
    /// Samples every input is padded or truncated to (30 s).
    pub n_samples: usize,
}

impl Default for WhisperFrontEnd {
    fn default() -> Self {
        Self {
            sampling_rate: 16_000,
            n_fft: 400,
            hop_length: 160,
            feature_size: 80,
            n_samples: 480_000,
        }
    }
}

impl WhisperFrontEnd {
    /// The settings of a preprocessor_config.json, each checked against the range a
    /// spectrogram can be computed with (the error names the field, value and range).
    pub fn from_config(config: &serde_json::Value) -> Result<Self, PreprocessError> {
        let d = Self::default();
        let sampling_rate = check_sample_rate(
            config_uint(
                config,
                "sampling_rate",
                u64::from(d.sampling_rate),
                SAMPLE_RATES_U64,
            )?,
            "preprocessor config sampling_rate",
        )?;
        let n_fft = config_uint(config, "n_fft", d.n_fft as u64, 2..=65_536)? as usize;
        let hop_length =
            config_uint(config, "hop_length", d.hop_length as u64, 1..=65_536)? as usize;
        let feature_size =
            config_uint(config, "feature_size", d.feature_size as u64, 1..=4_096)? as usize;
        let max_samples = (MAX_AUDIO_SECONDS * f64::from(sampling_rate)) as u64;
        let n_samples =
            config_uint(config, "n_samples", d.n_samples as u64, 1..=max_samples)? as usize;
        if n_samples < hop_length {
            return Err(PreprocessError::Config(format!(
                "n_samples {n_samples} is shorter than one hop ({hop_length}): no frames"
            )));
        }
        Ok(Self {
            sampling_rate,
            n_fft,
            hop_length,
            feature_size,
            n_samples,
        })
    }

    pub fn frames(&self) -> usize {
        self.n_samples / self.hop_length
    }

    /// Log-mel features `[feature_size, frames]` of one waveform at `sampling_rate`, as
    /// WhisperFeatureExtractor computes them: pad/truncate to 30 s, centred reflect-padded STFT
    /// with a periodic Hann window, power spectrum, Slaney mel filters, log10 clamped at 1e-10,
    /// floor at max - 8, then (x + 4) / 4. Computed in f64, returned as f32.
    pub fn log_mel(&self, waveform: &[f32]) -> Vec<f32> {
        self.log_mel_of_length(waveform, self.n_samples)
    }

    /// Log-mel features of the whole waveform, as the extractor computes them with
    /// `truncation=False, padding="longest"` (what transformers' ASR pipeline gives Whisper for
    /// audio past the window): padded to `n_samples` only when shorter, never cut, normalised
    /// against the maximum of the whole recording. Returns the features `[feature_size,
    /// frames]` and `frames`.
    pub fn log_mel_whole(&self, waveform: &[f32]) -> (Vec<f32>, usize) {
        let samples = waveform.len().max(self.n_samples);
        (
            self.log_mel_of_length(waveform, samples),
            samples / self.hop_length,
        )
    }

    fn log_mel_of_length(&self, waveform: &[f32], samples: usize) -> Vec<f32> {
        let mut x = vec![0f64; samples];
        for (d, s) in x.iter_mut().zip(waveform) {
            *d = f64::from(*s);
        }
        let bins = self.n_fft / 2 + 1;
        let nyquist = f64::from(self.sampling_rate / 2);
        let filters = mel_filter_bank(
            bins,
            self.feature_size,
            (0.0, nyquist),
            self.sampling_rate,
            MelScale::Slaney,
            true,
        );
        let bank = SparseBank::new(&filters, bins, self.feature_size);
        // The STFT has frames + 1 frames; Whisper drops the last.
        let frames = samples / self.hop_length;
        let mut mel = vec![0f64; self.feature_size * frames];
        power_spectrogram(&x, self.n_fft, self.hop_length, |f, power| {
            if f < frames {
                for m in 0..self.feature_size {
                    mel[m * frames + f] = bank.energy(m, power).max(1e-10).log10();
                }
            }
        });
        let max = mel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        mel.iter()
            .map(|&v| ((v.max(max - 8.0) + 4.0) / 4.0) as f32)
            .collect()
    }
}

/// Centred (reflect-padded) STFT with a periodic Hann window, as transformers' `spectrogram`
/// and torch.stft(center=True) compute it: calls `frame(index, power spectrum)` for each of the
/// `1 + len / hop` frames.
fn power_spectrogram(x: &[f64], n_fft: usize, hop: usize, mut frame: impl FnMut(usize, &[f64])) {
    let pad = n_fft / 2;
    let n = x.len() as isize;
    let reflect = |i: isize| -> f64 {
        let j = if i < 0 {
            -i
        } else if i >= n {
            2 * (n - 1) - i
        } else {
            i
        };
        x[j.clamp(0, n - 1) as usize]
    };
    let window: Vec<f64> = (0..n_fft)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos())
        .collect();
    let fft = FftPlanner::new().plan_fft_forward(n_fft);
    let mut buf = vec![Complex::new(0.0, 0.0); n_fft];
    let mut power = vec![0f64; n_fft / 2 + 1];
    for f in 0..1 + x.len() / hop {
        let start = (f * hop) as isize - pad as isize;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Complex::new(reflect(start + i as isize) * window[i], 0.0);
        }
        fft.process(&mut buf);
        for (p, b) in power.iter_mut().zip(&buf) {
            *p = b.norm_sqr();
        }
        frame(f, &power);
    }
}

/// A mel filter bank kept as each filter's non-zero span: a triangle covers a few bins, so the
/// per-frame product costs that span, not every bin (the sums are the same, zeros add nothing).
struct SparseBank {
    spans: Vec<(usize, Vec<f64>)>,
}

impl SparseBank {
    fn new(dense: &[f64], bins: usize, n_mels: usize) -> Self {
        let spans = (0..n_mels)
            .map(|m| {
                let col: Vec<f64> = (0..bins).map(|k| dense[k * n_mels + m]).collect();
                let lo = col.iter().position(|&w| w != 0.0).unwrap_or(0);
                let hi = col.iter().rposition(|&w| w != 0.0).map_or(lo, |h| h + 1);
                (lo, col[lo..hi].to_vec())
            })
            .collect();
        Self { spans }
    }

    fn energy(&self, m: usize, power: &[f64]) -> f64 {
        let (lo, w) = &self.spans[m];
        w.iter().zip(&power[*lo..]).map(|(a, b)| a * b).sum()
    }
}

/// Mel scales of transformers' `mel_filter_bank`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MelScale {
    Htk,
    Slaney,
}

fn hz_to_mel(f: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + f / 700.0).log10(),
        MelScale::Slaney => hz_to_mel_slaney(f),
    }
}

fn mel_to_hz(m: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(m / 2595.0) - 1.0),
        MelScale::Slaney => mel_to_hz_slaney(m),
    }
}

fn hz_to_mel_slaney(f: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * logstep
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz_slaney(m: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if m >= 15.0 {
        1000.0 * (logstep * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// transformers' `mel_filter_bank` (triangles in Hz between mel-spaced edges), optionally
/// Slaney-normalised, as `[bins][n_mels]` row-major.
pub fn mel_filter_bank(
    bins: usize,
    n_mels: usize,
    (fmin, fmax): (f64, f64),
    sampling_rate: u32,
    scale: MelScale,
    slaney_norm: bool,
) -> Vec<f64> {
    let nyquist = f64::from(sampling_rate / 2);
    let (lo, hi) = (hz_to_mel(fmin, scale), hz_to_mel(fmax, scale));
    let freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64, scale))
        .collect();
    let mut out = vec![0f64; bins * n_mels];
    for k in 0..bins {
        let ff = nyquist * k as f64 / (bins - 1) as f64;
        for m in 0..n_mels {
            let down = -(freqs[m] - ff) / (freqs[m + 1] - freqs[m]);
            let up = (freqs[m + 2] - ff) / (freqs[m + 2] - freqs[m + 1]);
            let enorm = if slaney_norm {
                2.0 / (freqs[m + 2] - freqs[m])
            } else {
                1.0
            };
            out[k * n_mels + m] = down.min(up).max(0.0) * enorm;
        }
    }
    out
}

/// ClapFeatureExtractor: 10 s windows at 48 kHz, 64 mel bins, STFT 1024 / hop 480, in dB.
/// `fusion` truncation (the fused HTSAT checkpoints) gives 4 channels: for clips up to 10 s
/// the repeat-padded mel four times (HTK filters); for longer clips a shrunk whole plus front,
/// middle and back chunks. transformers draws those chunks (and, with fusion, marks a random
/// batch row as "longer" when none is) at random; here the chunks are the middle of each third
/// and the first row is marked, so results are reproducible.
#[derive(Debug, Clone, PartialEq)]
pub struct ClapFrontEnd {
    pub sampling_rate: u32,
    pub feature_size: usize,
    pub fft_window_size: usize,
    pub hop_length: usize,
    pub max_samples: usize,
    pub frequency_range: (f64, f64),
    pub fusion: bool,
    /// "repeatpad" (default), "repeat" or "pad".
    pub padding: String,
}

impl ClapFrontEnd {
    /// The settings of a preprocessor_config.json, each range-checked.
    pub fn from_config(c: &serde_json::Value) -> Result<Self, PreprocessError> {
        let rate = check_sample_rate(
            config_uint(c, "sampling_rate", 48_000, SAMPLE_RATES_U64)?,
            "preprocessor config sampling_rate",
        )?;
        let f = |k: &str, d: f64, range| config_f64(c, k, d, range);
        let nyquist = f64::from(rate) / 2.0;
        let max_length_s = f("max_length_s", 10.0, 0.01..=600.0)?;
        let hop_length = config_uint(c, "hop_length", 480, 1..=65_536)? as usize;
        let max_samples = (max_length_s * f64::from(rate)) as usize;
        if max_samples < hop_length {
            return Err(PreprocessError::Config(format!(
                "max_length_s {max_length_s} is shorter than one hop ({hop_length} samples)"
            )));
        }
        let frequency_min = f("frequency_min", 0.0, 0.0..=nyquist)?;
        let frequency_max = f(
            "frequency_max",
            14_000.0,
            frequency_min..=nyquist.max(frequency_min),
        )?;
        Ok(Self {
            sampling_rate: rate,
            feature_size: config_uint(c, "feature_size", 64, 1..=4_096)? as usize,
            fft_window_size: config_uint(c, "fft_window_size", 1024, 2..=65_536)? as usize,
            hop_length,
            max_samples,
            frequency_range: (frequency_min, frequency_max),
            fusion: c
                .get("truncation")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("fusion")
                == "fusion",
            padding: c
                .get("padding")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("repeatpad")
                .to_string(),
        })
    }

    /// Frames of a full window: 1 + max_samples / hop.
    pub fn frames(&self) -> usize {
        1 + self.max_samples / self.hop_length
    }

    pub fn channels(&self) -> usize {
        if self.fusion {
            4
        } else {
            1
        }
    }

    /// dB mel spectrogram `[frames][feature_size]` of `x`.
    fn mel_db(&self, x: &[f64], scale: MelScale, slaney_norm: bool) -> Vec<Vec<f64>> {
        let bins = self.fft_window_size / 2 + 1;
        let filters = mel_filter_bank(
            bins,
            self.feature_size,
            self.frequency_range,
            self.sampling_rate,
            scale,
            slaney_norm,
        );
        let bank = SparseBank::new(&filters, bins, self.feature_size);
        let mut out = Vec::new();
        power_spectrogram(x, self.fft_window_size, self.hop_length, |_, power| {
            out.push(
                (0..self.feature_size)
                    .map(|m| 10.0 * bank.energy(m, power).max(1e-10).log10())
                    .collect(),
            );
        });
        out
    }

    /// Features `[batch, channels, frames, feature_size]` of equal-length waveforms and each
    /// row's `is_longer`; with fusion, the first row is marked when none is (transformers
    /// marks a random one, see the type's doc).
    pub fn batch_features(&self, rows: &[&[f32]]) -> (Vec<f32>, Vec<bool>) {
        let mut data = Vec::new();
        let mut longer = Vec::new();
        for r in rows {
            let (f, l) = self.features(r);
            data.extend(f);
            longer.push(l);
        }
        if self.fusion && !longer.iter().any(|&l| l) {
            if let Some(first) = longer.first_mut() {
                *first = true;
            }
        }
        (data, longer)
    }

    /// Features `[channels, frames, feature_size]` of one waveform, and whether it was longer
    /// than the window.
    pub fn features(&self, waveform: &[f32]) -> (Vec<f32>, bool) {
        let x: Vec<f64> = waveform.iter().map(|&v| f64::from(v)).collect();
        let chunk = self.frames();
        let (scale, norm) = if self.fusion {
            (MelScale::Htk, false)
        } else {
            (MelScale::Slaney, true)
        };
        let flat = |rows: &[Vec<f64>]| {
            rows.iter()
                .flatten()
                .map(|&v| v as f32)
                .collect::<Vec<f32>>()
        };
        if x.len() > self.max_samples {
            if !self.fusion {
                let start = (x.len() - self.max_samples) / 2;
                let mel = self.mel_db(&x[start..start + self.max_samples], scale, norm);
                return (flat(&mel), true);
            }
            let mel = self.mel_db(&x, scale, norm);
            let total = mel.len();
            if total == chunk {
                return (
                    flat(&[mel.clone(), mel.clone(), mel.clone(), mel].concat()),
                    false,
                );
            }
            // Thirds of the possible chunk starts; the middle start of each.
            let starts = total - chunk + 1;
            let third = |i: usize| {
                let (lo, hi) = (starts * i / 3, starts * (i + 1) / 3);
                if hi > lo {
                    (lo + hi - 1) / 2
                } else {
                    0
                }
            };
            let mut out = shrink_rows(&mel, chunk);
            for i in 0..3 {
                let s = third(i);
                out.extend_from_slice(&mel[s..s + chunk]);
            }
            return (flat(&out), true);
        }
        let mut padded = x.clone();
        if !x.is_empty() && x.len() < self.max_samples {
            let n = self.max_samples / x.len();
            match self.padding.as_str() {
                "repeat" => padded = x.iter().copied().cycle().take(self.max_samples).collect(),
                "repeatpad" => padded = x.iter().copied().cycle().take(x.len() * n).collect(),
                _ => {}
            }
        }
        padded.resize(self.max_samples, 0.0);
        let mel = self.mel_db(&padded, scale, norm);
        let channels: Vec<Vec<f64>> = (0..self.channels()).flat_map(|_| mel.clone()).collect();
        (flat(&channels), false)
    }
}

/// torch's bilinear resize (align_corners=False) of a `[frames][bins]` spectrogram to `frames`
/// rows (bins unchanged).
fn shrink_rows(mel: &[Vec<f64>], rows: usize) -> Vec<Vec<f64>> {
    let scale = mel.len() as f64 / rows as f64;
    (0..rows)
        .map(|r| {
            let src = ((r as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(mel.len() - 1);
            let i1 = (i0 + 1).min(mel.len() - 1);
            let t = src - i0 as f64;
            mel[i0]
                .iter()
                .zip(&mel[i1])
                .map(|(a, b)| a * (1.0 - t) + b * t)
                .collect()
        })
        .collect()
}

/// Wav2Vec2FeatureExtractor with `do_normalize`: zero mean, unit variance (eps 1e-7).
pub fn zero_mean_unit_var(x: &[f32]) -> Vec<f32> {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let denom = (var + 1e-7).sqrt();
    x.iter()
        .map(|&v| ((f64::from(v) - mean) / denom) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn resampling_keeps_a_tone_and_its_level() {
        let x = sine(440.0, 44_100, 0.5);
        let y = resample(&x, 44_100, 16_000).unwrap();
        assert_eq!(y.len(), 8000);
        let expected = sine(440.0, 16_000, 0.5);
        // Away from the edges the resampled tone is the tone sampled at 16 kHz.
        let err = y[200..7800]
            .iter()
            .zip(&expected[200..7800])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-2, "max error {err}");
    }

    /// Coprime rates would need a kernel table of 16000 x 44137 weights; the bounded path
    /// computes the same samples as the table does.
    #[test]
    fn coprime_rates_resample_in_bounded_memory_like_the_table() {
        let x = sine(440.0, 44_101, 0.05);
        let y = resample(&x, 44_101, 16_000).unwrap();
        assert_eq!(
            y.len(),
            (16_000f64 * x.len() as f64 / 44_101.0).ceil() as usize
        );
        let expected = sine(440.0, 16_000, 0.05);
        let err = y[100..700]
            .iter()
            .zip(&expected[100..700])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-2, "max error {err}");
        // Both paths on rates small enough for the table.
        let x = sine(300.0, 8_000, 0.05);
        let table = resample_with_table_limit(&x, 8_000, 11_025, usize::MAX).unwrap();
        let computed = resample_with_table_limit(&x, 8_000, 11_025, 0).unwrap();
        assert_eq!(table.len(), computed.len());
        let d = table
            .iter()
            .zip(&computed)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-6, "table vs computed weights: {d}");
    }

    #[test]
    fn rates_and_configs_out_of_range_are_named() {
        for rate in [0, 999, 1_000_001] {
            let e = resample(&[0.0; 10], rate, 16_000).unwrap_err().to_string();
            assert!(e.contains(&format!("{rate} Hz")), "{e}");
        }
        let e = WhisperFrontEnd::from_config(&serde_json::json!({"hop_length": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hop_length 0") && e.contains("1..=65536"), "{e}");
        let e = WhisperFrontEnd::from_config(&serde_json::json!({"n_samples": 1e12}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_samples"), "{e}");
        let e = ClapFrontEnd::from_config(&serde_json::json!({"max_length_s": 1e9}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_length_s"), "{e}");
        let e = ClapFrontEnd::from_config(&serde_json::json!({"sampling_rate": 0}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sampling_rate 0"), "{e}");
    }

    #[test]
    fn log_mel_has_whisper_shape_and_range() {
        let fe = WhisperFrontEnd {
            n_samples: 16_000,
            ..Default::default()
        };
        let m = fe.log_mel(&sine(1000.0, 16_000, 0.5));
        assert_eq!(m.len(), 80 * 100);
        let max = m.iter().copied().fold(f32::MIN, f32::max);
        let min = m.iter().copied().fold(f32::MAX, f32::min);
        assert!(max - min <= 2.0 + 1e-6, "floored at max - 8 in log10, /4");
    }

    #[test]
    fn whole_recording_keeps_every_frame_and_short_ones_are_padded() {
        let fe = WhisperFrontEnd {
            n_samples: 16_000,
            ..Default::default()
        };
        let long = sine(1000.0, 16_000, 2.5);
        let (m, frames) = fe.log_mel_whole(&long);
        assert_eq!((frames, m.len()), (250, 80 * 250));
        let short = sine(1000.0, 16_000, 0.5);
        assert_eq!(fe.log_mel_whole(&short), (fe.log_mel(&short), 100));
    }

    #[test]
    fn normalisation_is_zero_mean_unit_variance() {
        let y = zero_mean_unit_var(&sine(300.0, 16_000, 0.1));
        let mean: f32 = y.iter().sum::<f32>() / y.len() as f32;
        let var: f32 = y.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / y.len() as f32;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3);
    }
}

#[cfg(test)]
mod clap_tests {
    use super::*;

    fn front_end(fusion: bool) -> ClapFrontEnd {
        ClapFrontEnd::from_config(&serde_json::json!({
            "max_length_s": 1, "truncation": if fusion { "fusion" } else { "rand_trunc" }
        }))
        .unwrap()
    }

    #[test]
    fn long_clips_fuse_four_views_deterministically() {
        let fe = front_end(true);
        let x: Vec<f32> = (0..48_000 * 3)
            .map(|i| ((i as f32) * 0.01).sin() * 0.1)
            .collect();
        let (a, longer) = fe.features(&x);
        assert!(longer);
        assert_eq!(a.len(), 4 * fe.frames() * 64);
        assert_eq!(fe.features(&x).0, a, "same input, same features");
        let (b, longer) = front_end(false).features(&x);
        assert!(longer);
        assert_eq!(b.len(), fe.frames() * 64);
    }

    #[test]
    fn short_clips_are_repeated_then_padded() {
        let fe = front_end(true);
        let x = vec![0.25f32; 20_000];
        let (f, longer) = fe.features(&x);
        assert!(!longer);
        let frame = fe.frames() * 64;
        assert_eq!(
            &f[..frame],
            &f[3 * frame..],
            "the four channels are one mel"
        );
    }
}
