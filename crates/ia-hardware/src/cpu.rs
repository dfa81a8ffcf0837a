//! CPU facts from the kernel (procfs) and the instruction-set probes of `std::arch`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model_name: String,
    /// The vendor and the family / model / stepping numbers: two CPUs sold under one marketing
    /// name ("AMD EPYC") can be different generations with different vector units.
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub family_model_stepping: String,
    pub physical_cores: usize,
    pub logical_cores: usize,
    /// Extensions that change which kernels an engine can use (AVX2, AVX-512, AMX, NEON...).
    pub isa_extensions: Vec<String>,
    pub memory_bytes: u64,
}

pub fn detect() -> CpuInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let logical_cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .max(count_processors(&cpuinfo));
    CpuInfo {
        model_name: model_name(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        vendor: first_field(&cpuinfo, "vendor_id")
            .or_else(|| first_field(&cpuinfo, "CPU implementer"))
            .unwrap_or_default(),
        family_model_stepping: ["cpu family", "model", "stepping"]
            .iter()
            .map(|k| first_field(&cpuinfo, k).unwrap_or_else(|| "?".into()))
            .collect::<Vec<_>>()
            .join("/"),
        physical_cores: physical_cores(&cpuinfo).unwrap_or(logical_cores),
        logical_cores,
        isa_extensions: isa_extensions(&cpuinfo),
        memory_bytes: memory_bytes().unwrap_or(0),
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (k, v) = line.split_once(':')?;
    (k.trim() == key).then(|| v.trim())
}

fn first_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| field(l, key))
        .map(str::to_string)
}

impl CpuInfo {
    /// Whether the CPU has bf16 arithmetic (AVX512-BF16, AMX-BF16 or AVX-NE-CONVERT): where it
    /// does not, runtimes compute a bf16 request in f32.
    pub fn has_bf16(&self) -> bool {
        self.isa_extensions
            .iter()
            .any(|f| matches!(f.as_str(), "avx512bf16" | "amx_bf16" | "avxneconvert"))
    }

    pub fn has(&self, extension: &str) -> bool {
        self.isa_extensions.iter().any(|f| f == extension)
    }
}

fn model_name(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find_map(|l| field(l, "model name").or_else(|| field(l, "Model")))
        .map(str::to_string)
}

fn count_processors(cpuinfo: &str) -> usize {
    cpuinfo
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count()
}

/// The machine's physical cores, from /proc/cpuinfo (None where it does not say).
pub fn physical_core_count() -> Option<usize> {
    physical_cores(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// Distinct (physical id, core id) pairs; hyper-threads share a pair.
fn physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = BTreeSet::new();
    let mut physical_id = "0".to_string();
    for line in cpuinfo.lines() {
        if let Some(v) = field(line, "physical id") {
            physical_id = v.to_string();
        } else if let Some(v) = field(line, "core id") {
            cores.insert((physical_id.clone(), v.to_string()));
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

fn isa_extensions(cpuinfo: &str) -> Vec<String> {
    let flags: BTreeSet<&str> = cpuinfo
        .lines()
        .find_map(|l| field(l, "flags").or_else(|| field(l, "Features")))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let runtime = [
            ("sse4.2", std::arch::is_x86_feature_detected!("sse4.2")),
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                "avx512bf16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
            (
                "avx512fp16",
                std::arch::is_x86_feature_detected!("avx512fp16"),
            ),
            // The AVX-512 subsets kernels are compiled for, and the VEX VNNI / bf16
            // conversions of newer client cores.
            ("avx512vl", std::arch::is_x86_feature_detected!("avx512vl")),
            ("avx512dq", std::arch::is_x86_feature_detected!("avx512dq")),
            ("avx512cd", std::arch::is_x86_feature_detected!("avx512cd")),
            (
                "avx512ifma",
                std::arch::is_x86_feature_detected!("avx512ifma"),
            ),
            (
                "avx512vbmi",
                std::arch::is_x86_feature_detected!("avx512vbmi"),
            ),
            (
                "avx512vbmi2",
                std::arch::is_x86_feature_detected!("avx512vbmi2"),
            ),
            ("avxvnni", std::arch::is_x86_feature_detected!("avxvnni")),
            (
                "avxvnniint8",
                std::arch::is_x86_feature_detected!("avxvnniint8"),
            ),
            (
                "avxneconvert",
                std::arch::is_x86_feature_detected!("avxneconvert"),
            ),
        ];
        found.extend(
            runtime
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| n.to_string()),
        );
        // AMX is not exposed by `is_x86_feature_detected!` on stable; the kernel's flags are
        // authoritative anyway because it must enable the AMX state for user space.
        for amx in ["amx_tile", "amx_bf16", "amx_int8", "amx_fp16"] {
            if flags.contains(amx) {
                found.push(amx.to_string());
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        found.push("neon".to_string());
        for f in ["asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm", "sme"] {
            if flags.contains(f) {
                found.push(f.to_string());
            }
        }
    }
    let _ = &flags;
    found
}

fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    crate::memory::proc_bytes(&meminfo, "MemTotal")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\nflags\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\nprocessor\t: 2\nphysical id\t: 0\ncore id\t: 1\n";

    #[test]
    fn parses_cpuinfo() {
        assert_eq!(model_name(SAMPLE).as_deref(), Some("Test CPU"));
        assert_eq!(count_processors(SAMPLE), 3);
        assert_eq!(physical_cores(SAMPLE), Some(2));
    }

    #[test]
    fn reads_vendor_and_generation() {
        let info = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n";
        assert_eq!(
            first_field(info, "vendor_id").as_deref(),
            Some("AuthenticAMD")
        );
        let fms: Vec<String> = ["cpu family", "model", "stepping"]
            .iter()
            .map(|k| first_field(info, k).unwrap())
            .collect();
        assert_eq!(fms, ["25", "17", "1"]);
    }

    #[test]
    fn detects_this_cpu() {
        let cpu = detect();
        assert!(cpu.logical_cores >= 1);
        assert!(cpu.physical_cores >= 1 && cpu.physical_cores <= cpu.logical_cores);
        #[cfg(target_os = "linux")]
        assert!(cpu.memory_bytes > 0);
    }
}
