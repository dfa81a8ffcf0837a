//! A GGUF file's header, read and checked before any engine trusts it: magic and version,
//! counts that fit the file, metadata values (strings, nested arrays to a bounded depth), an
//! alignment that is a power of two, and tensors whose types are known, whose shapes do not
//! overflow and whose bytes lie inside the file at aligned offsets. Also what the file really
//! holds: its architecture and the weight type most of its elements use.

use std::collections::HashMap;

/// What a checked header says.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    pub architecture: Option<String>,
    /// Elements per GGML type name ("q8_0", "q4_k", "f32", ...).
    pub elements_by_type: HashMap<&'static str, u64>,
}

impl GgufSummary {
    /// The type of most weight elements, where a quantised type exists: what the file "is".
    pub fn dominant_quantised_type(&self) -> Option<&'static str> {
        self.elements_by_type
            .iter()
            .filter(|(t, _)| !matches!(**t, "f32" | "f16" | "bf16"))
            .max_by_key(|(_, n)| **n)
            .map(|(t, _)| *t)
    }
}

/// (type id, name, elements per block, bytes per block): the types candle reads.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "f32", 1, 4),
    (1, "f16", 1, 2),
    (2, "q4_0", 32, 18),
    (3, "q4_1", 32, 20),
    (6, "q5_0", 32, 22),
    (7, "q5_1", 32, 24),
    (8, "q8_0", 32, 34),
    (9, "q8_1", 32, 36),
    (10, "q2_k", 256, 84),
    (11, "q3_k", 256, 110),
    (12, "q4_k", 256, 144),
    (13, "q5_k", 256, 176),
    (14, "q6_k", 256, 210),
    (15, "q8_k", 256, 292),
    (30, "bf16", 1, 2),
];

const MAX_COUNT: u64 = 1 << 24;
const MAX_STRING: u64 = 1 << 24;
const MAX_DEPTH: usize = 8;
const MAX_DIMS: u32 = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    long_lengths: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = (self.at as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| {
                format!(
                    "the header needs {n} more bytes at offset {} but the file has {}",
                    self.at,
                    self.bytes.len()
                )
            })? as usize;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn length(&mut self) -> Result<u64, String> {
        if self.long_lengths {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        if n > MAX_STRING {
            return Err(format!("a string of {n} bytes (at most {MAX_STRING})"));
        }
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// A metadata value: integers as u64/i64 where they are integers, strings, else skipped.
#[derive(Debug, Clone, PartialEq)]
enum Meta {
    Int(i128),
    Text(String),
    Other,
}

fn value(r: &mut Reader, kind: u32, depth: usize) -> Result<Meta, String> {
    if depth > MAX_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
    }
    Ok(match kind {
        0 => Meta::Int(r.take(1)?[0].into()),
        1 => Meta::Int((r.take(1)?[0] as i8).into()),
        2 => Meta::Int(u16::from_le_bytes(r.take(2)?.try_into().expect("2")).into()),
        3 => Meta::Int(i16::from_le_bytes(r.take(2)?.try_into().expect("2")).into()),
        4 => Meta::Int(r.u32()?.into()),
        5 => Meta::Int((r.u32()? as i32).into()),
        6 => {
            r.take(4)?;
            Meta::Other
        }
        7 => {
            r.take(1)?;
            Meta::Other
        }
        8 => Meta::Text(r.string()?),
        9 => {
            let inner = r.u32()?;
            let n = r.length()?;
            if n > MAX_COUNT {
                return Err(format!("an array of {n} elements (at most {MAX_COUNT})"));
            }
            for _ in 0..n {
                value(r, inner, depth + 1)?;
            }
            Meta::Other
        }
        10 => Meta::Int(r.u64()?.into()),
        11 => Meta::Int((r.u64()? as i64).into()),
        12 => {
            r.take(8)?;
            Meta::Other
        }
        other => return Err(format!("unknown metadata value type {other}")),
    })
}

/// Reads and checks the header of a whole GGUF file in memory.
pub fn check(bytes: &[u8]) -> Result<GgufSummary, String> {
    let mut r = Reader {
        bytes,
        at: 0,
        long_lengths: true,
    };
    if r.take(4).ok() != Some(b"GGUF".as_slice()) {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = r.u32()?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version {version} (1 to 3 are known)"));
    }
    r.long_lengths = version >= 2;
    let tensors = r.length()?;
    let kvs = r.length()?;
    for (what, n) in [("tensor", tensors), ("metadata", kvs)] {
        if n > MAX_COUNT {
            return Err(format!("{n} {what} entries (at most {MAX_COUNT})"));
        }
    }
    let mut meta = HashMap::new();
    for _ in 0..kvs {
        let key = r.string()?;
        let kind = r.u32()?;
        let v = value(&mut r, kind, 0).map_err(|e| format!("metadata '{key}': {e}"))?;
        meta.insert(key, v);
    }
    let alignment = match meta.get("general.alignment") {
        None => 32,
        Some(Meta::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() && *a <= 1 << 20 => *a as u64,
        Some(other) => {
            return Err(format!(
                "general.alignment {} is not a power of two in 1..=1048576",
                match other {
                    Meta::Int(a) => a.to_string(),
                    _ => "(not an integer)".into(),
                }
            ))
        }
    };
    let mut infos = Vec::with_capacity(tensors.min(1 << 16) as usize);
    for _ in 0..tensors {
        let name = r.string()?;
        let dims = r.u32()?;
        if dims > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut elements = 1u64;
        for _ in 0..dims {
            let d = r.length()?;
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| format!("tensor '{name}': its shape overflows"))?;
        }
        let type_id = r.u32()?;
        let &(_, type_name, block, block_bytes) =
            TYPES.iter().find(|t| t.0 == type_id).ok_or_else(|| {
                format!("tensor '{name}' has GGML type {type_id}, which is not read here")
            })?;
        if !elements.is_multiple_of(block) {
            return Err(format!(
                "tensor '{name}': {elements} elements are not whole {type_name} blocks of {block}"
            ));
        }
        let size = (elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| format!("tensor '{name}': its size overflows"))?;
        let offset = r.u64()?;
        if !offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor '{name}' starts at offset {offset}, not a multiple of the alignment {alignment}"
            ));
        }
        infos.push((name, type_name, elements, offset, size));
    }
    let data_start = (r.at as u64).div_ceil(alignment) * alignment;
    let mut elements_by_type: HashMap<&'static str, u64> = HashMap::new();
    for (name, type_name, elements, offset, size) in &infos {
        let end = data_start
            .checked_add(*offset)
            .and_then(|s| s.checked_add(*size))
            .filter(|&e| e <= bytes.len() as u64);
        if end.is_none() {
            return Err(format!(
                "tensor '{name}' ({size} bytes at offset {offset}) lies outside the file ({} bytes)",
                bytes.len()
            ));
        }
        *elements_by_type.entry(type_name).or_default() += elements;
    }
    let architecture = match meta.get("general.architecture") {
        Some(Meta::Text(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(GgufSummary {
        architecture,
        elements_by_type,
    })
}

/// A metadata value [`write`] can store.
#[derive(Debug, Clone, Copy)]
pub enum WriteValue<'a> {
    U32(u32),
    Str(&'a str),
}

/// Writes a GGUF v3 file: `metadata`, one tensor info per `(name, dims, GGML type id)` (each at
/// offset 0 of the data), padding to 32 bytes, then `data`. For tests and fuzz seeds: it writes
/// what it is given, valid or not.
pub fn write(
    metadata: &[(&str, WriteValue<'_>)],
    tensors: &[(&str, &[u64], u32)],
    data: &[u8],
) -> Vec<u8> {
    let s = |x: &str, out: &mut Vec<u8>| {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    };
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend((tensors.len() as u64).to_le_bytes());
    f.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        s(key, &mut f);
        match value {
            WriteValue::U32(v) => {
                f.extend(4u32.to_le_bytes());
                f.extend(v.to_le_bytes());
            }
            WriteValue::Str(v) => {
                f.extend(8u32.to_le_bytes());
                s(v, &mut f);
            }
        }
    }
    for (name, dims, type_id) in tensors {
        s(name, &mut f);
        f.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            f.extend(d.to_le_bytes());
        }
        f.extend(type_id.to_le_bytes());
        f.extend(0u64.to_le_bytes());
    }
    while !f.len().is_multiple_of(32) {
        f.push(0);
    }
    f.extend(data);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One q8_0 tensor of 32 elements after `metadata`.
    fn file(metadata: &[(&str, WriteValue<'_>)]) -> Vec<u8> {
        write(metadata, &[("w", &[32], 8)], &[0u8; 34])
    }

    #[test]
    fn a_small_file_is_summarised() {
        let f = file(&[("general.architecture", WriteValue::Str("llama"))]);
        let g = check(&f).unwrap();
        assert_eq!(g.architecture.as_deref(), Some("llama"));
        assert_eq!(g.dominant_quantised_type(), Some("q8_0"));
    }

    #[test]
    fn bad_alignments_are_refused() {
        for a in [0u32, 3, 48] {
            let f = file(&[("general.alignment", WriteValue::U32(a))]);
            let e = check(&f).unwrap_err();
            assert!(
                e.contains("general.alignment") && e.contains(&a.to_string()),
                "{e}"
            );
        }
    }

    #[test]
    fn truncation_counts_and_types_are_checked() {
        let f = file(&[]);
        assert!(check(&f[..f.len() - 1])
            .unwrap_err()
            .contains("outside the file"));
        assert!(check(b"GGUF").is_err());
        assert!(check(b"nope").unwrap_err().contains("magic"));
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        assert!(check(&huge).unwrap_err().contains("tensor entries"));
        let f = write(&[], &[("w", &[32], 99)], &[0u8; 34]);
        assert!(check(&f).unwrap_err().contains("type 99"));
    }
}
