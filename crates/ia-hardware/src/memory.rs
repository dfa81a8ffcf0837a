//! How much memory this process can still allocate: the smallest of what the kernel says is
//! available (MemAvailable), what the cgroup allows (memory.max - memory.current) and what
//! the process's own limits allow (RLIMIT_AS over the mapped size, RLIMIT_DATA over the data
//! size). Checked before loading a model, so a model that cannot fit fails with its estimate
//! instead of being killed by the OS or aborting on a failed allocation.

use serde::Serialize;

/// The limit that binds, and how much room it leaves.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// Which limit gave `bytes` (e.g. "MemAvailable", "cgroup memory.max", "RLIMIT_AS").
    pub limited_by: String,
}

/// Bytes this process can still allocate, or None where the OS reports none of the limits.
pub fn available() -> Option<Available> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut candidates: Vec<(u64, &str)> = Vec::new();
    if let Some(kb) = kb_field(&meminfo, "MemAvailable") {
        candidates.push((kb * 1024, "MemAvailable"));
    }
    if let Some(room) = cgroup_room() {
        candidates.push((room, "cgroup memory.max"));
    }
    for (limit, used, name) in [
        ("Max address space", "VmSize", "RLIMIT_AS"),
        ("Max data size", "VmData", "RLIMIT_DATA"),
    ] {
        if let (Some(max), Some(kb)) = (soft_limit(&limits, limit), kb_field(&status, used)) {
            candidates.push((max.saturating_sub(kb * 1024), name));
        }
    }
    candidates
        .into_iter()
        .min_by_key(|(b, _)| *b)
        .map(|(bytes, name)| Available {
            bytes,
            limited_by: name.to_string(),
        })
}

/// A `Key:   1234 kB` field of a /proc file (status, meminfo), in bytes.
pub fn proc_bytes(text: &str, key: &str) -> Option<u64> {
    kb_field(text, key).map(|kb| kb * 1024)
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The soft limit of a /proc/self/limits row, in bytes; None when unlimited.
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let row = limits.lines().find(|l| l.starts_with(name))?;
    row[name.len()..].split_whitespace().next()?.parse().ok()
}

/// memory.max - memory.current of this process's cgroup (v2), when it has a limit.
fn cgroup_room() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?;
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// "12.3 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_rows() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max data size             unlimited            unlimited            bytes\n\
                      Max address space         4294967296           4294967296           bytes\n";
        assert_eq!(soft_limit(limits, "Max address space"), Some(4 << 30));
        assert_eq!(soft_limit(limits, "Max data size"), None);
        assert_eq!(kb_field("VmSize:\t  1024 kB\n", "VmSize"), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_room() {
        let a = available().unwrap();
        assert!(a.bytes > 0, "{a:?}");
    }
}
