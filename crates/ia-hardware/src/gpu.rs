//! GPU probes: NVIDIA through NVML loaded at run time, AMD through the KFD sysfs topology,
//! Apple through the Metal framework. None of them links a vendor library at build time.

use crate::{Platform, PlatformStatus};
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuDevice {
    pub vendor: String,
    pub name: String,
    pub memory_bytes: u64,
    pub driver_version: Option<String>,
    /// CUDA compute capability ("9.0") or the AMD gfx target ("gfx90a").
    pub compute_capability: Option<String>,
}

impl GpuDevice {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ({:.1} GiB",
            self.name,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        );
        if let Some(cc) = &self.compute_capability {
            s.push_str(&format!(", {cc}"));
        }
        if let Some(d) = &self.driver_version {
            s.push_str(&format!(", driver {d}"));
        }
        s.push(')');
        s
    }
}

#[repr(C)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

type NvmlRet = c_int;

/// Lists NVIDIA GPUs through NVML. The error string says exactly which step failed.
pub fn probe_nvml() -> Result<Vec<GpuDevice>, String> {
    let candidates: &[&str] = if cfg!(windows) {
        &["nvml.dll"]
    } else {
        &["libnvidia-ml.so.1", "libnvidia-ml.so"]
    };
    // The first candidate's error is the informative one (the driver's soname).
    let mut first_err: Option<String> = None;
    let lib = candidates
        .iter()
        .find_map(|name| match unsafe { libloading::Library::new(name) } {
            Ok(l) => Some(l),
            Err(e) => {
                first_err.get_or_insert_with(|| e.to_string());
                None
            }
        })
        .ok_or_else(|| {
            format!(
                "NVML library not found ({})",
                first_err.unwrap_or_else(|| "no candidate".into())
            )
        })?;
    unsafe {
        let sym = |name: &[u8]| {
            lib.get::<*const c_void>(name)
                .map(|s| *s)
                .map_err(|e| format!("NVML symbol missing: {e}"))
        };
        let init: extern "C" fn() -> NvmlRet = std::mem::transmute(sym(b"nvmlInit_v2\0")?);
        let shutdown: extern "C" fn() -> NvmlRet = std::mem::transmute(sym(b"nvmlShutdown\0")?);
        let count: extern "C" fn(*mut c_uint) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlDeviceGetCount_v2\0")?);
        let handle: extern "C" fn(c_uint, *mut *mut c_void) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlDeviceGetHandleByIndex_v2\0")?);
        let name: extern "C" fn(*mut c_void, *mut c_char, c_uint) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlDeviceGetName\0")?);
        let mem: extern "C" fn(*mut c_void, *mut NvmlMemory) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlDeviceGetMemoryInfo\0")?);
        let driver: extern "C" fn(*mut c_char, c_uint) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlSystemGetDriverVersion\0")?);
        let cc: extern "C" fn(*mut c_void, *mut c_int, *mut c_int) -> NvmlRet =
            std::mem::transmute(sym(b"nvmlDeviceGetCudaComputeCapability\0")?);

        let rc = init();
        if rc != 0 {
            return Err(format!("nvmlInit failed with NVML error code {rc}"));
        }
        let mut buf = [0 as c_char; 96];
        let driver_version = (driver(buf.as_mut_ptr(), buf.len() as c_uint) == 0)
            .then(|| CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
        let mut n: c_uint = 0;
        let rc = count(&mut n);
        if rc != 0 {
            shutdown();
            return Err(format!(
                "nvmlDeviceGetCount failed with NVML error code {rc}"
            ));
        }
        let mut devices = Vec::new();
        for i in 0..n {
            let mut h: *mut c_void = std::ptr::null_mut();
            if handle(i, &mut h) != 0 {
                continue;
            }
            let mut nb = [0 as c_char; 96];
            let dev_name = if name(h, nb.as_mut_ptr(), nb.len() as c_uint) == 0 {
                CStr::from_ptr(nb.as_ptr()).to_string_lossy().into_owned()
            } else {
                format!("NVIDIA GPU {i}")
            };
            let mut m = NvmlMemory {
                total: 0,
                free: 0,
                used: 0,
            };
            let memory_bytes = if mem(h, &mut m) == 0 { m.total } else { 0 };
            let (mut major, mut minor) = (0, 0);
            let compute_capability =
                (cc(h, &mut major, &mut minor) == 0).then(|| format!("{major}.{minor}"));
            devices.push(GpuDevice {
                vendor: "nvidia".into(),
                name: dev_name,
                memory_bytes,
                driver_version: driver_version.clone(),
                compute_capability,
            });
        }
        shutdown();
        Ok(devices)
    }
}

/// Lists AMD GPUs from the KFD topology that ROCm itself enumerates.
pub fn probe_rocm() -> Result<Vec<GpuDevice>, String> {
    let nodes = std::path::Path::new("/sys/class/kfd/kfd/topology/nodes");
    let entries = std::fs::read_dir(nodes)
        .map_err(|e| format!("no AMD KFD driver: {} ({e})", nodes.display()))?;
    let driver_version = std::fs::read_to_string("/sys/module/amdgpu/version")
        .ok()
        .map(|s| s.trim().to_string());
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let props = std::fs::read_to_string(entry.path().join("properties")).unwrap_or_default();
        let prop = |key: &str| -> Option<u64> {
            props.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
        };
        // CPU nodes have no SIMD units; only GPU agents are devices here.
        if prop("simd_count").unwrap_or(0) == 0 {
            continue;
        }
        let gfx = prop("gfx_target_version").unwrap_or(0);
        let gfx_name = format!("gfx{}{:x}{:x}", gfx / 10000, (gfx / 100) % 100, gfx % 100);
        let name = std::fs::read_to_string(entry.path().join("name"))
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("AMD {gfx_name}"));
        let memory_bytes = std::fs::read_dir(entry.path().join("mem_banks"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|b| std::fs::read_to_string(b.path().join("properties")).ok())
            .filter_map(|p| {
                p.lines()
                    .find_map(|l| l.strip_prefix("size_in_bytes ")?.trim().parse::<u64>().ok())
            })
            .sum();
        devices.push(GpuDevice {
            vendor: "amd".into(),
            name,
            memory_bytes,
            driver_version: driver_version.clone(),
            compute_capability: Some(gfx_name),
        });
    }
    Ok(devices)
}

/// Apple GPUs through Metal: only on macOS, where the framework is part of the OS.
pub fn probe_metal() -> PlatformStatus {
    let unavailable = |detail: String| PlatformStatus {
        platform: Platform::Mps,
        available: false,
        detail,
        devices: vec![],
    };
    if !cfg!(target_os = "macos") {
        return unavailable(format!(
            "Metal/MPS exists only on macOS (this is {})",
            std::env::consts::OS
        ));
    }
    let path = "/System/Library/Frameworks/Metal.framework/Metal";
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            let has_device = unsafe {
                lib.get::<extern "C" fn() -> *mut c_void>(b"MTLCreateSystemDefaultDevice\0")
                    .map(|f| !f().is_null())
                    .unwrap_or(false)
            };
            if has_device {
                PlatformStatus {
                    platform: Platform::Mps,
                    available: true,
                    detail: format!(
                        "Metal system default device present ({})",
                        std::env::consts::ARCH
                    ),
                    devices: vec![format!("Apple GPU ({})", std::env::consts::ARCH)],
                }
            } else {
                unavailable(
                    "Metal loaded but MTLCreateSystemDefaultDevice returned no device".into(),
                )
            }
        }
        Err(e) => unavailable(format!("Metal framework not loadable: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_answer_without_panicking() {
        // On machines without the hardware these must be errors with a reason, not panics.
        if let Err(reason) = probe_nvml() {
            assert!(reason.contains("NVML"));
        }
        if let Err(reason) = probe_rocm() {
            assert!(reason.contains("KFD"));
        }
        let metal = probe_metal();
        assert!(cfg!(target_os = "macos") || !metal.available);
    }
}
