//! Hostile input: malformed but plausible numbers, files, configs and checkpoints, thrown at
//! the binary the way `../shared/hostile/run.sh` does (each of its cases is here, with more of
//! the same kinds). Every case must end with exit 0, 1 or 2 and a clear message, never a
//! panic, an abort, a hang or a large allocation: each runs under a 4 GiB address-space cap
//! and a 120 s timeout, and the peak resident set of the child is checked.

mod common;

use common::{fixture, QUICK};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What one hostile case did.
struct Outcome {
    code: i32,
    text: String,
}

/// Runs the binary as run.sh does: RLIMIT_AS 4 GiB, 120 s, MALLOC_ARENA_MAX=2.
fn hostile(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"));
    cmd.args(args)
        .env_remove("BENCHMARK_DB_PATH")
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit only affects the child about to exec.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &cap);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("binary runs");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("{args:?} hung (killed after 120 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out: Output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = status
        .code()
        .unwrap_or_else(|| panic!("{args:?} killed by a signal: {text}"));
    // SAFETY: getrusage fills the struct.
    let peak_mb = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss / 1024
    };
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {text}"
    );
    assert!(
        matches!(code, 0..=2),
        "{args:?} ended with exit code {code}: {text}"
    );
    assert!(peak_mb < 2048, "{args:?} peaked at {peak_mb} MB");
    Outcome { code, text }
}

/// A refused case: exit 1 or 2 and the message names `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let o = hostile(args);
    assert!(o.code == 1 || o.code == 2, "{args:?} succeeded: {}", o.text);
    for n in needles {
        assert!(o.text.contains(n), "{args:?}: '{n}' not in: {}", o.text);
    }
}

/// `run --model <fixture> --input <file>` refused with `needles`.
fn refused_run(model: &str, input: &Path, needles: &[&str]) {
    refused(
        &[
            "run",
            "--model",
            &fixture(model),
            "--input",
            input.to_str().unwrap(),
        ],
        needles,
    );
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    dst
}

/// Sets `key` of a JSON file in a folder.
fn edit_json(dir: &Path, file: &str, key: &str, value: serde_json::Value) {
    let p = dir.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(&p, v.to_string()).unwrap();
}

/// A mono 16-bit PCM WAV with the given header fields.
fn wav(path: &Path, rate: u32, channels: u16, bits: u16, samples: usize) {
    let block = channels * bits.div_ceil(8);
    let data = vec![0x10u8; samples * block as usize];
    let mut f = Vec::new();
    f.extend(b"RIFF");
    f.extend((36 + data.len() as u32).to_le_bytes());
    f.extend(b"WAVEfmt ");
    f.extend(16u32.to_le_bytes());
    f.extend(1u16.to_le_bytes());
    f.extend(channels.to_le_bytes());
    f.extend(rate.to_le_bytes());
    f.extend((rate.wrapping_mul(u32::from(block))).to_le_bytes());
    f.extend(block.to_le_bytes());
    f.extend(bits.to_le_bytes());
    f.extend(b"data");
    f.extend((data.len() as u32).to_le_bytes());
    f.extend(data);
    std::fs::write(path, f).unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// A grey 8-bit PNG whose IHDR says `w` x `h` and whose data holds `rows` rows (stored
/// deflate blocks: no compressor needed).
fn png(path: &Path, w: u32, h: u32, rows: u32) {
    let mut raw = Vec::new();
    for _ in 0..rows {
        raw.push(0u8);
        raw.extend(std::iter::repeat_n(0x80u8, w as usize));
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = if raw.is_empty() {
        vec![&[]]
    } else {
        raw.chunks(65535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        z.extend((c.len() as u16).to_le_bytes());
        z.extend((!(c.len() as u16)).to_le_bytes());
        z.extend(*c);
    }
    z.extend(adler32(&raw).to_be_bytes());
    let chunk = |t: &[u8], d: &[u8]| {
        let mut c = (d.len() as u32).to_be_bytes().to_vec();
        let mut td = t.to_vec();
        td.extend(d);
        c.extend(&td);
        c.extend(crc32(&td).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut f = b"\x89PNG\r\n\x1a\n".to_vec();
    f.extend(chunk(b"IHDR", &ihdr));
    f.extend(chunk(b"IDAT", &z));
    f.extend(chunk(b"IEND", &[]));
    std::fs::write(path, f).unwrap();
}

/// A quick bench of `model` without a store; `extra` flags replace the quick defaults.
fn bench(model: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["bench", "--models", model, "--no-db"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let overridden = |flag: &str| {
        extra
            .iter()
            .any(|e| *e == flag || e.starts_with(&format!("{flag}=")))
    };
    for pair in QUICK.chunks(2) {
        if !overridden(pair[0]) {
            a.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

// ---- numbers on the command line -------------------------------------------------------

#[test]
fn protocol_numbers_are_range_checked() {
    let bert = fixture("bert-tiny");
    for (flag, value, range) in [
        ("--min-duration", "1e20", "0..=86400"),
        ("--min-duration", "NaN", "finite"),
        ("--min-duration", "-1", "0..=86400"),
        ("--min-iterations", "1000000000000", "1..=10000000"),
        ("--max-iterations", "0", "1..=10000000"),
        ("--warmup", "1000000000000", "0..=100000"),
        ("--batch-sizes", "0", "1..=65536"),
        ("--batch-sizes", "4294967297", "1..=65536"),
        ("--seq-len", "4294967297", "1..=1048576"),
        ("--seq-len", "0", "1..=1048576"),
        ("--new-tokens", "18446744073709551615", "1..=1048576"),
        ("--audio-seconds", "1e30", "3600"),
        ("--audio-seconds", "0", "3600"),
        ("--browser-timeout", "0", "1..=86400"),
    ] {
        let arg = format!("{flag}={value}");
        let args = bench(&bert, &[&arg]);
        refused(&strs(&args), &[flag, range]);
    }
}

#[test]
fn generation_and_task_numbers_are_range_checked() {
    let llama = fixture("llama-tiny");
    for (flag, value) in [
        ("--max-new-tokens", "18446744073709551615"),
        ("--max-new-tokens", "0"),
        ("--temperature", "-1"),
        ("--temperature", "inf"),
        ("--top-p", "2"),
        ("--top-k", "0"),
        ("--repetition-penalty", "0"),
    ] {
        let arg = format!("{flag}={value}");
        refused(
            &["generate", "--model", &llama, "--prompt", "hi", &arg],
            &[flag],
        );
    }
    let whisper = fixture("whisper-tiny");
    let speech = fixture("media/speech-16k.wav");
    for (flag, value) in [
        ("--beams", "100000000"),
        ("--beams", "0"),
        ("--threshold", "5"),
        ("--top-k", "0"),
    ] {
        let arg = format!("{flag}={value}");
        refused(
            &["run", "--model", &whisper, "--input", &speech, &arg],
            &[flag],
        );
    }
}

/// More new tokens than the context holds: generation stops when the context is full.
#[test]
fn generation_stops_at_the_context() {
    let o = hostile(&[
        "generate",
        "--model",
        &fixture("llama-tiny"),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "1048576",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("context_full"), "{}", o.text);
}

// ---- audio ---------------------------------------------------------------------------

#[test]
fn wav_headers_out_of_range_are_refused() {
    let d = tmp();
    let whisper = fixture("whisper-tiny");
    let cases: [(&str, u32, u16, u16, usize, &str); 6] = [
        ("rate0.wav", 0, 1, 16, 1600, "sample rate 0 Hz"),
        ("rate1.wav", 1, 1, 16, 1600, "sample rate 1 Hz"),
        ("rate4g.wav", 4_000_000_000, 1, 16, 16, "rate4g.wav"),
        ("empty.wav", 16_000, 1, 16, 0, "no samples"),
        ("bits0.wav", 16_000, 1, 0, 16, "WAV"),
        ("chan0.wav", 16_000, 0, 16, 16, "WAV"),
    ];
    for (name, rate, channels, bits, n, needle) in cases {
        let p = d.path().join(name);
        wav(&p, rate, channels, bits, n);
        refused(
            &["run", "--model", &whisper, "--input", p.to_str().unwrap()],
            &[needle],
        );
    }
    // A header cut short.
    let p = d.path().join("short.wav");
    wav(&p, 16_000, 1, 16, 16);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..30]).unwrap();
    refused(
        &["run", "--model", &whisper, "--input", p.to_str().unwrap()],
        &["short.wav"],
    );
}

/// Coprime rates would need a 16000 x 44000-weight kernel table; resampling stays bounded
/// and the file is transcribed.
#[test]
fn odd_sample_rates_resample_in_bounded_memory() {
    let d = tmp();
    let p = d.path().join("odd.wav");
    wav(&p, 44_101, 1, 16, 44_101);
    let o = hostile(&[
        "run",
        "--model",
        &fixture("whisper-tiny"),
        "--input",
        p.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("transcript"), "{}", o.text);
}

// ---- images --------------------------------------------------------------------------

#[test]
fn images_with_extreme_shapes_are_refused_or_processed() {
    let d = tmp();
    let thin = d.path().join("thin_1x200.png");
    png(&thin, 1, 200, 200);
    refused_run("detr-tiny", &thin, &["1x200", "pixels"]);
    let zero = d.path().join("zero.png");
    png(&zero, 0, 0, 0);
    refused_run("vit-tiny", &zero, &["zero.png"]);
    // IHDR claims 100000 x 100000 (40 GB of pixels) over a few bytes of data.
    let liar = d.path().join("liar.png");
    png(&liar, 100_000, 100_000, 1);
    refused_run("vit-tiny", &liar, &["liar.png"]);
    // A long strip: CLIP's shortest-edge resize would make it 224 x 4.5M pixels.
    let strip = d.path().join("strip.png");
    png(&strip, 20_000, 1, 1);
    refused_run("clip-tiny", &strip, &["pixels"]);
    // Tiny but valid: resized like any other.
    let one = d.path().join("one.png");
    png(&one, 1, 1, 1);
    let o = hostile(&[
        "run",
        "--model",
        &fixture("vit-tiny"),
        "--input",
        one.to_str().unwrap(),
    ]);
    assert_eq!(o.code, 0, "{}", o.text);
}

// ---- configs and preprocessors ---------------------------------------------------------

#[test]
fn config_values_out_of_range_are_named() {
    let d = tmp();
    for (fixture_name, key, value, needle) in [
        (
            "bert-tiny",
            "hidden_size",
            serde_json::json!(1_000_000_000u64),
            "hidden_size = 1000000000",
        ),
        (
            "bert-tiny",
            "num_attention_heads",
            serde_json::json!(0),
            "num_attention_heads = 0",
        ),
        (
            "bert-tiny",
            "num_attention_heads",
            serde_json::json!(5),
            "does not split",
        ),
        (
            "bert-tiny",
            "intermediate_size",
            serde_json::json!(-64),
            "intermediate_size",
        ),
        (
            "bert-tiny",
            "num_hidden_layers",
            serde_json::json!(2.5),
            "num_hidden_layers",
        ),
        (
            "bert-tiny",
            "max_position_embeddings",
            serde_json::json!(1e12),
            "max_position_embeddings",
        ),
        (
            "bert-tiny",
            "layer_norm_eps",
            serde_json::json!(-1.0),
            "layer_norm_eps",
        ),
        (
            "vit-tiny",
            "patch_size",
            serde_json::json!(0),
            "patch_size = 0",
        ),
        (
            "vit-tiny",
            "patch_size",
            serde_json::json!(64),
            "larger than image_size",
        ),
        (
            "vit-tiny",
            "num_channels",
            serde_json::json!(100000),
            "num_channels",
        ),
        (
            "whisper-tiny",
            "num_mel_bins",
            serde_json::json!(0),
            "num_mel_bins = 0",
        ),
        (
            "wav2vec2-tiny",
            "conv_stride",
            serde_json::json!([5, 0, 2]),
            "conv_stride",
        ),
        (
            "llama-tiny",
            "num_key_value_heads",
            serde_json::json!(3),
            "num_key_value_heads",
        ),
    ] {
        let dir = d
            .path()
            .join(format!("{fixture_name}-{key}-{}", value.to_string().len()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = copy_fixture(fixture_name, &dir);
        edit_json(&src, "config.json", key, value.clone());
        let model = src.to_str().unwrap();
        let args = bench(model, &["--seq-len", "8"]);
        refused(&strs(&args), &["config.json", needle]);
    }
}

#[test]
fn configs_that_cannot_fit_in_memory_fail_up_front() {
    let d = tmp();
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("bert-tiny/config.json")).unwrap())
            .unwrap();
    for (name, hidden, layers) in [("wide", 262_144, 2), ("deep", 65_536, 4096)] {
        c["hidden_size"] = hidden.into();
        c["num_attention_heads"] = 8.into();
        c["intermediate_size"] = hidden.into();
        c["num_hidden_layers"] = layers.into();
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let args = bench(
            dir.to_str().unwrap(),
            &["--random-weights", "--seq-len", "8"],
        );
        let o = hostile(&strs(&args));
        assert!(
            o.text.contains("not enough memory") && o.text.contains("weights"),
            "{}",
            o.text
        );
    }
    let dir = d.path().join("vocab0");
    std::fs::create_dir_all(&dir).unwrap();
    c["vocab_size"] = 0.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let args = bench(
        dir.to_str().unwrap(),
        &["--random-weights", "--seq-len", "8"],
    );
    refused(&strs(&args), &["vocab_size = 0"]);
}

#[test]
fn preprocessor_values_out_of_range_are_named() {
    let d = tmp();
    let speech = fixture("media/speech-16k.wav");
    for (key, value, needle) in [
        ("hop_length", serde_json::json!(0), "hop_length 0"),
        ("n_fft", serde_json::json!(0), "n_fft 0"),
        ("sampling_rate", serde_json::json!(0), "sampling_rate 0"),
        (
            "feature_size",
            serde_json::json!(1_000_000_000),
            "feature_size",
        ),
        ("n_samples", serde_json::json!(1e15), "n_samples"),
    ] {
        let dir = d.path().join(key);
        std::fs::create_dir_all(&dir).unwrap();
        let src = copy_fixture("whisper-tiny", &dir);
        edit_json(&src, "preprocessor_config.json", key, value);
        refused(
            &["run", "--model", src.to_str().unwrap(), "--input", &speech],
            &[needle],
        );
    }
    let dir = d.path().join("vit-size");
    std::fs::create_dir_all(&dir).unwrap();
    let src = copy_fixture("vit-tiny", &dir);
    std::fs::write(
        src.join("preprocessor_config.json"),
        r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 100000, "width": 100000}}"#,
    )
    .unwrap();
    refused(
        &[
            "run",
            "--model",
            src.to_str().unwrap(),
            "--input",
            &fixture("media/photo.png"),
        ],
        &["pixels"],
    );
}

// ---- tokenizers, sequence lengths ------------------------------------------------------

#[test]
fn tokenizers_that_yield_nothing_or_too_much_are_refused() {
    let d = tmp();
    let src = copy_fixture("bert-tiny", d.path());
    std::fs::write(
        src.join("tokenizer.json"),
        serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
            "post_processor": null, "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": {}, "merges": []}})
        .to_string(),
    )
    .unwrap();
    let args = bench(src.to_str().unwrap(), &["--seq-len", "8"]);
    refused(&strs(&args), &["no token ids"]);
    refused(
        &["run", "--model", src.to_str().unwrap(), "--input", "hello"],
        &["no tokens"],
    );
    // A tokenizer whose ids run past the model's embedding table (113 rows).
    let other = d.path().join("other-tokenizer");
    std::fs::create_dir_all(&other).unwrap();
    let src = copy_fixture("bert-tiny", &other);
    std::fs::write(
        src.join("tokenizer.json"),
        serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"hello": 5000, "[UNK]": 5001},
                      "unk_token": "[UNK]"}})
        .to_string(),
    )
    .unwrap();
    refused(
        &[
            "run",
            "--model",
            src.to_str().unwrap(),
            "--input",
            "hello world",
        ],
        &["token id 5000", "vocab_size 113"],
    );
    let args = bench(src.to_str().unwrap(), &["--seq-len", "8"]);
    refused(&strs(&args), &["outside the model's vocabulary"]);
}

#[test]
fn sequence_lengths_past_the_model_or_memory_are_refused() {
    // Relative positions: T5 has no max_position_embeddings; memory bounds the length.
    let args = bench(
        &fixture("t5-tiny"),
        &["--seq-len", "1000000", "--new-tokens", "2"],
    );
    let o = hostile(&strs(&args));
    assert!(o.text.contains("not enough memory"), "{}", o.text);
    let args = bench(&fixture("t5-tiny"), &["--seq-len", "100000000"]);
    refused(&strs(&args), &["--seq-len"]);
    let args = bench(&fixture("bert-tiny"), &["--seq-len", "65"]);
    refused(&strs(&args), &["max_position_embeddings 64"]);
}

// ---- weight files ----------------------------------------------------------------------

#[test]
fn gguf_headers_are_checked_before_loading() {
    use ia_models::gguf::{write, WriteValue};
    let d = tmp();
    let llama = [("general.architecture", WriteValue::Str("llama"))];
    let one = |metadata: &[(&str, WriteValue<'_>)], dims: &[u64], type_id: u32, data: usize| {
        write(
            metadata,
            &[("token_embd.weight", dims, type_id)],
            &vec![0u8; data],
        )
    };
    for (name, file, needle) in [
        (
            "align0",
            one(&[("general.alignment", WriteValue::U32(0))], &[32], 8, 34),
            "general.alignment 0",
        ),
        (
            "align3",
            one(&[("general.alignment", WriteValue::U32(3))], &[32], 8, 34),
            "general.alignment 3",
        ),
        ("truncated", one(&llama, &[32], 8, 10), "outside the file"),
        ("huge", one(&llama, &[1 << 62], 8, 34), "outside the file"),
        ("type", one(&llama, &[32], 77, 34), "GGML type 77"),
        (
            "q4k-file",
            one(&llama, &[256], 12, 144),
            "holds q4_k weights",
        ),
    ] {
        let dir = d.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let src = copy_fixture("llama-tiny", &dir);
        std::fs::write(src.join("model.gguf"), file).unwrap();
        refused(
            &[
                "generate",
                "--model",
                src.to_str().unwrap(),
                "--prompt",
                "hi",
                "--precision",
                "q8_0",
            ],
            &[needle],
        );
    }
}

#[test]
fn broken_safetensors_and_shard_indexes_are_refused() {
    let d = tmp();
    let src = copy_fixture("bert-tiny", d.path());
    let st = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(src.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    refused(
        &["run", "--model", src.to_str().unwrap(), "--input", "hello"],
        &["model.safetensors"],
    );
    // A header length larger than the file.
    let mut lying = (u64::MAX / 2).to_le_bytes().to_vec();
    lying.extend(&st[8..64]);
    std::fs::write(src.join("model.safetensors"), lying).unwrap();
    refused(
        &["run", "--model", src.to_str().unwrap(), "--input", "hello"],
        &["header length"],
    );
    // An index whose shard is outside the folder.
    let idx = d.path().join("indexed");
    std::fs::create_dir_all(&idx).unwrap();
    let src = copy_fixture("bert-tiny", &idx);
    std::fs::remove_file(src.join("model.safetensors")).unwrap();
    std::fs::write(
        src.join("model.safetensors.index.json"),
        r#"{"weight_map": {"embeddings.word_embeddings.weight": "../../../../etc/passwd"}}"#,
    )
    .unwrap();
    refused(
        &["run", "--model", src.to_str().unwrap(), "--input", "hello"],
        &["not a plain file name"],
    );
}

// ---- the store never wraps or truncates ------------------------------------------------

#[test]
fn imported_values_out_of_range_are_refused_and_nothing_is_stored() {
    let d = tmp();
    let db = d.path().join("w.duckdb");
    let row = |batch: serde_json::Value| {
        serde_json::json!([{"model": fixture("bert-tiny"), "engine": "x", "engine_version": "1",
            "platform": "cpu", "device": "cpu", "precision": "f32", "scenario": "single-stream",
            "batch_size": batch, "seq_len": 16, "parameter_count": 1, "load_time_ms": 1.0,
            "first_inference_ms": 1.0, "warmup_iterations": 0, "samples_ms": [1.0, 2.0],
            "peak_rss_bytes": null, "generation": null}])
    };
    for (name, batch, needle) in [
        (
            "wrap.json",
            serde_json::json!(4_294_967_297u64),
            "batch_size 4294967297",
        ),
        ("zero.json", serde_json::json!(0), "batch_size 0"),
    ] {
        let f = d.path().join(name);
        std::fs::write(&f, row(batch).to_string()).unwrap();
        refused(
            &[
                "db",
                "--db-path",
                db.to_str().unwrap(),
                "import",
                "--file",
                f.to_str().unwrap(),
            ],
            &[needle],
        );
    }
    assert!(!db.exists(), "a refused import must not create the store");
    let mut r = row(serde_json::json!(1));
    r[0]["samples_ms"] = serde_json::json!([1.0, -5.0]);
    let f = d.path().join("neg.json");
    std::fs::write(&f, r.to_string()).unwrap();
    refused(
        &[
            "db",
            "--db-path",
            db.to_str().unwrap(),
            "import",
            "--file",
            f.to_str().unwrap(),
        ],
        &["samples_ms"],
    );
}

// ---- panics stay inside one combination ------------------------------------------------

/// A panic inside one combination (injected through the test hook) is recorded as `fail`
/// with its message; the other model is still measured; the run ends `failed`, exit 1.
#[test]
fn a_panic_fails_one_combination_and_the_run_goes_on() {
    let d = tmp();
    let db = d.path().join("p.duckdb");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"));
    let out = cmd
        .env("IPFS_ACCELERATE_TEST_PANIC_IN", "vit-tiny")
        .args([
            "bench",
            "--models",
            &format!("{},{}", fixture("vit-tiny"), fixture("bert-tiny")),
            "--seq-len",
            "8",
            "--db-path",
            db.to_str().unwrap(),
            "--json",
        ])
        .args(QUICK)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["outcome"]["status"], "fail");
    assert_eq!(rows[0]["outcome"]["stage"], "panic");
    assert!(rows[0]["outcome"]["error"]
        .as_str()
        .unwrap()
        .contains("injected test panic"));
    assert_eq!(rows[1]["outcome"]["status"], "pass");
    let q = Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"))
        .args(["db", "--db-path", db.to_str().unwrap(), "query", "--format", "csv", "--sql",
               "SELECT (SELECT status FROM runs) AS run, (SELECT count(*) FROM performance_results) AS n"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&q.stdout), "run,n\nfailed,2\n");
}

/// Writing to stdout that is closed early (`| head`) is not a crash either.
#[test]
fn a_closed_stdout_is_not_a_crash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipfs-accelerate"))
        .args(["models", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    // Either it finished before noticing, or SIGPIPE ended it quietly.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}
