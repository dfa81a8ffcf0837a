//! Hardware detection for ipfs-accelerate.
//!
//! Every platform the framework targets (cpu, cuda, rocm, mps, openvino, webgpu, webnn, wasm)
//! is reported as available only after a positive probe: a library that loads and answers, a
//! driver interface that lists a device. Anything else is reported unavailable with the reason
//! the probe gave, so a report never claims hardware that was not actually seen.

pub mod bandwidth;
mod cpu;
mod gpu;
pub mod memory;
mod runtimes;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

pub use cpu::{physical_core_count, CpuInfo};
pub use gpu::GpuDevice;
pub use runtimes::{
    cache_dir, find_chromium, find_python_site_packages, library_file_problem, Browser,
    RuntimeLibrary,
};

/// The runtime libraries (ONNX Runtime, OpenVINO) detection finds, without the platform probes.
pub fn detect_runtimes() -> Vec<RuntimeLibrary> {
    runtimes::detect()
}

/// The platforms a model can be asked to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Cpu,
    Cuda,
    Rocm,
    Mps,
    Openvino,
    Webgpu,
    Webnn,
    /// WebAssembly on the CPU, inside a browser.
    Wasm,
}

impl Platform {
    pub const ALL: [Platform; 8] = [
        Platform::Cpu,
        Platform::Cuda,
        Platform::Rocm,
        Platform::Mps,
        Platform::Openvino,
        Platform::Webgpu,
        Platform::Webnn,
        Platform::Wasm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Cpu => "cpu",
            Platform::Cuda => "cuda",
            Platform::Rocm => "rocm",
            Platform::Mps => "mps",
            Platform::Openvino => "openvino",
            Platform::Webgpu => "webgpu",
            Platform::Webnn => "webnn",
            Platform::Wasm => "wasm",
        }
    }

    /// Whether the platform's device streams memory at a rate of its own, which the host's
    /// STREAM triad does not measure: a GPU's own memory, or Apple's unified memory as its
    /// GPU reads it. The CPU, OpenVINO's CPU device and WebAssembly run in the host's memory;
    /// WebNN's device is the browser's choice.
    pub fn has_own_memory(self) -> bool {
        matches!(
            self,
            Platform::Cuda | Platform::Rocm | Platform::Mps | Platform::Webgpu
        )
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown platform '{0}' (expected one of cpu, cuda, rocm, mps, openvino, webgpu, webnn, wasm)"
)]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == lower)
            .ok_or_else(|| UnknownPlatform(s.to_string()))
    }
}

/// What the probe of one platform found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformStatus {
    pub platform: Platform,
    pub available: bool,
    /// Why the platform is unavailable, or a one-line summary of what was found.
    pub detail: String,
    /// Devices the probe listed (empty when unavailable).
    pub devices: Vec<String>,
}

/// Everything `ipfs-accelerate hardware` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HardwareReport {
    pub fingerprint: String,
    pub os: String,
    pub arch: String,
    pub cpu: CpuInfo,
    pub gpus: Vec<GpuDevice>,
    pub platforms: Vec<PlatformStatus>,
    pub runtimes: Vec<RuntimeLibrary>,
}

impl HardwareReport {
    pub fn status(&self, platform: Platform) -> &PlatformStatus {
        self.platforms
            .iter()
            .find(|s| s.platform == platform)
            .expect("every platform is probed")
    }

    /// Replaces a platform's status with what a later, deeper probe found (the browser
    /// platforms are probed inside a running browser by `ia-browser`).
    pub fn set_status(&mut self, status: PlatformStatus) {
        match self
            .platforms
            .iter_mut()
            .find(|s| s.platform == status.platform)
        {
            Some(s) => *s = status,
            None => self.platforms.push(status),
        }
    }
}

/// Probes every platform. Takes a fraction of a second: it reads sysfs/procfs and loads
/// vendor libraries, it does not start any device work.
pub fn detect() -> HardwareReport {
    let cpu = cpu::detect();
    let nvml = gpu::probe_nvml();
    let rocm = gpu::probe_rocm();
    let runtimes = runtimes::detect();

    let mut platforms = Vec::with_capacity(Platform::ALL.len());
    platforms.push(PlatformStatus {
        platform: Platform::Cpu,
        available: true,
        detail: format!(
            "{} ({} physical / {} logical cores, {:.1} GiB)",
            cpu.model_name,
            cpu.physical_cores,
            cpu.logical_cores,
            cpu.memory_bytes as f64 / (1u64 << 30) as f64
        ),
        devices: vec![cpu.model_name.clone()],
    });
    platforms.push(gpu_status(Platform::Cuda, &nvml));
    platforms.push(gpu_status(Platform::Rocm, &rocm));
    platforms.push(gpu::probe_metal());
    platforms.push(runtimes::openvino_status(&runtimes));
    let browser = runtimes::find_chromium();
    platforms.push(runtimes::browser_platform_status(
        Platform::Webgpu,
        &browser,
    ));
    platforms.push(runtimes::browser_platform_status(Platform::Webnn, &browser));
    platforms.push(runtimes::browser_platform_status(Platform::Wasm, &browser));

    let mut gpus = Vec::new();
    if let Ok(devs) = &nvml {
        gpus.extend(devs.iter().cloned());
    }
    if let Ok(devs) = &rocm {
        gpus.extend(devs.iter().cloned());
    }

    let os = std::env::consts::OS.to_string();
    let arch = std::env::consts::ARCH.to_string();
    let fingerprint = fingerprint(&os, &arch, &cpu, &gpus);
    HardwareReport {
        fingerprint,
        os,
        arch,
        cpu,
        gpus,
        platforms,
        runtimes,
    }
}

fn gpu_status(platform: Platform, probe: &Result<Vec<GpuDevice>, String>) -> PlatformStatus {
    match probe {
        Ok(devs) if !devs.is_empty() => PlatformStatus {
            platform,
            available: true,
            detail: devs
                .iter()
                .map(|d| d.summary())
                .collect::<Vec<_>>()
                .join("; "),
            devices: devs.iter().map(|d| d.name.clone()).collect(),
        },
        Ok(_) => PlatformStatus {
            platform,
            available: false,
            detail: "driver answered but reported no devices".into(),
            devices: vec![],
        },
        Err(reason) => PlatformStatus {
            platform,
            available: false,
            detail: reason.clone(),
            devices: vec![],
        },
    }
}

/// A stable identifier of this machine's compute hardware: the same on every run on the same
/// machine, different when the CPU, core count, memory size or GPUs change. Memory is rounded
/// to whole GiB so that kernel reservations do not change it.
///
/// The CPU part is its name, vendor, family/model/stepping, core counts and ISA extensions:
/// two machines sold under one name but with different vector units (AVX2-only vs AVX-512)
/// never share a fingerprint, so never a series in reports and trends.
pub fn fingerprint(os: &str, arch: &str, cpu: &CpuInfo, gpus: &[GpuDevice]) -> String {
    let mut h = Sha256::new();
    h.update(os.as_bytes());
    h.update(b"|");
    h.update(arch.as_bytes());
    h.update(b"|");
    h.update(cpu.model_name.as_bytes());
    h.update(format!("|{}|{}|", cpu.vendor, cpu.family_model_stepping).as_bytes());
    h.update(format!("|{}|{}|", cpu.physical_cores, cpu.logical_cores).as_bytes());
    h.update(cpu.isa_extensions.join(",").as_bytes());
    h.update(format!("|{}|", cpu.memory_bytes.div_ceil(1 << 30)).as_bytes());
    for g in gpus {
        h.update(format!("{}:{}:{};", g.vendor, g.name, g.memory_bytes).as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_is_reported_once() {
        let report = detect();
        assert_eq!(report.platforms.len(), Platform::ALL.len());
        for p in Platform::ALL {
            let s = report.status(p);
            if !s.available {
                assert!(!s.detail.is_empty(), "{p} unavailable without a reason");
            }
        }
        assert!(report.status(Platform::Cpu).available);
    }

    #[test]
    fn same_name_different_isa_is_a_different_machine() {
        let cpu = |isa: &[&str]| CpuInfo {
            model_name: "AMD EPYC".into(),
            vendor: "AuthenticAMD".into(),
            family_model_stepping: "25/1/1".into(),
            physical_cores: 2,
            logical_cores: 2,
            isa_extensions: isa.iter().map(|s| s.to_string()).collect(),
            memory_bytes: 24 << 30,
        };
        let avx2 = fingerprint("linux", "x86_64", &cpu(&["avx2", "fma"]), &[]);
        let avx512 = fingerprint(
            "linux",
            "x86_64",
            &cpu(&["avx2", "fma", "avx512f", "avx512bf16"]),
            &[],
        );
        assert_ne!(avx2, avx512);
        let mut other_gen = cpu(&["avx2", "fma"]);
        other_gen.family_model_stepping = "23/49/0".into();
        assert_ne!(avx2, fingerprint("linux", "x86_64", &other_gen, &[]));
    }

    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(detect().fingerprint, detect().fingerprint);
        assert_eq!(detect().fingerprint.len(), 16);
    }

    #[test]
    fn platform_names_round_trip() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>().unwrap(), p);
        }
        let err = "tpu".parse::<Platform>().unwrap_err().to_string();
        assert!(err.contains("tpu"));
    }
}
