//! Discovery of the optional runtimes (ONNX Runtime, OpenVINO) and of a browser.
//!
//! A runtime counts as found only when its shared library loads and answers a version call;
//! a file that merely exists but cannot be loaded is reported with the loader's error.

use crate::{Platform, PlatformStatus};
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeLibrary {
    /// "onnxruntime" or "openvino".
    pub name: String,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    /// Devices the runtime itself lists (OpenVINO's CPU/GPU/NPU; ONNX Runtime's execution
    /// providers, filled in by the program once the library is loaded).
    pub devices: Vec<String>,
    /// Why it is not usable, when it is not.
    pub error: Option<String>,
}

impl RuntimeLibrary {
    pub fn usable(&self) -> bool {
        self.error.is_none() && self.version.is_some()
    }
}

pub fn detect() -> Vec<RuntimeLibrary> {
    let site = find_python_site_packages();
    vec![probe_onnxruntime(&site), probe_openvino(&site)]
}

/// site-packages folders of the Python environments a user is likely to have installed
/// runtimes into: the active venv, the project's own runtime venv, and the default python3.
pub fn find_python_site_packages() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v));
    }
    if let Some(cache) = cache_dir() {
        roots.push(cache.join("runtimes").join("venv"));
    }
    let mut dirs: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| glob_site_packages(&r.join("lib")))
        .collect();
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import site;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
    {
        dirs.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from)
                .filter(|p| p.is_dir()),
        );
    }
    dirs.dedup();
    dirs
}

/// `$IPFS_ACCELERATE_CACHE`, else `$XDG_CACHE_HOME/ipfs-accelerate`, else `~/.cache/ipfs-accelerate`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("IPFS_ACCELERATE_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("ipfs-accelerate"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".cache").join("ipfs-accelerate"))
}

fn glob_site_packages(lib: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect()
}

fn system_lib_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    for d in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/homebrew/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// Library files in `dir` whose name starts with `stem` and continues with `.so` or `.dylib`.
fn libs_in(dir: &Path, stem: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(stem))
                .is_some_and(|rest| rest.starts_with(".so") || rest.starts_with(".dylib"))
        })
        .collect();
    found.sort();
    found
}

/// Candidate files for a runtime: an explicit variable first, then system folders, then the
/// runtime's Python wheel.
fn candidates(env_var: &str, stem: &str, wheel_dir: &[&str], site: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var(env_var) {
        let p = PathBuf::from(p);
        if p.is_dir() {
            out.extend(libs_in(&p, stem));
        } else {
            out.push(p);
        }
    }
    for d in system_lib_dirs() {
        out.extend(libs_in(&d, stem));
    }
    for s in site {
        let mut d = s.clone();
        for part in wheel_dir {
            d = d.join(part);
        }
        out.extend(libs_in(&d, stem));
    }
    out
}

fn first_loadable<T>(
    name: &str,
    paths: Vec<PathBuf>,
    probe: impl Fn(&libloading::Library) -> Result<T, String>,
) -> (Option<PathBuf>, Result<T, String>) {
    if paths.is_empty() {
        return (None, Err(format!("{name} library not found")));
    }
    let mut last = None;
    for p in paths {
        match unsafe { libloading::Library::new(&p) } {
            Ok(lib) => {
                let r = probe(&lib);
                // Runtimes register global state and spawn threads; unloading them again is
                // what crashes processes, so a library that loaded stays loaded.
                std::mem::forget(lib);
                return (Some(p), r);
            }
            Err(e) => {
                let e = library_file_problem(&p).unwrap_or_else(|| e.to_string());
                last = Some((p, e));
            }
        }
    }
    let (p, e) = last.expect("at least one candidate");
    (Some(p), Err(format!("cannot load: {e}")))
}

/// Why a shared library file cannot be loaded on this machine, where its header says so: glibc
/// reports a library built for another architecture as "No such file or directory", which
/// sends users looking in the wrong place. None where the header looks loadable.
pub fn library_file_problem(path: &Path) -> Option<String> {
    let mut head = [0u8; 20];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut head)
    });
    let n = match read {
        Ok(n) => n,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    let head = &head[..n];
    let what = match head {
        [0x7f, b'E', b'L', b'F', class, data, ..] if head.len() >= 20 => {
            let machine = if *data == 1 {
                u16::from_le_bytes([head[18], head[19]])
            } else {
                u16::from_be_bytes([head[18], head[19]])
            };
            let arch = match (machine, class) {
                (0x3e, 2) => "x86_64",
                (0xb7, 2) => "aarch64",
                (0x03, 1) => "x86",
                (0x28, 1) => "arm",
                (0xf3, _) => "riscv64",
                (0x15, 2) => "powerpc64",
                (0x16, 2) => "s390x",
                _ => "an unknown architecture",
            };
            if arch == std::env::consts::ARCH {
                return None;
            }
            format!("built for {arch}")
        }
        [b'M', b'Z', ..] => "a Windows DLL".to_string(),
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xca, 0xfe, 0xba, 0xbe, ..] => {
            "a macOS library".to_string()
        }
        _ => "not a shared library".to_string(),
    };
    Some(format!(
        "{} is {what}; this machine is {} {}",
        path.display(),
        std::env::consts::OS,
        std::env::consts::ARCH
    ))
}

fn probe_onnxruntime(site: &[PathBuf]) -> RuntimeLibrary {
    let paths = candidates(
        "ORT_DYLIB_PATH",
        "libonnxruntime",
        &["onnxruntime", "capi"],
        site,
    );
    let (path, result) = first_loadable("ONNX Runtime", paths, |lib| unsafe {
        #[repr(C)]
        struct OrtApiBase {
            get_api: *const c_void,
            get_version_string: extern "C" fn() -> *const c_char,
        }
        let f = lib
            .get::<extern "C" fn() -> *const OrtApiBase>(b"OrtGetApiBase\0")
            .map_err(|e| format!("not an ONNX Runtime library: {e}"))?;
        let base = f();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let v = ((*base).get_version_string)();
        Ok(CStr::from_ptr(v).to_string_lossy().into_owned())
    });
    let (version, error) = split(result);
    RuntimeLibrary {
        name: "onnxruntime".into(),
        path,
        version,
        devices: vec![],
        error,
    }
}

fn probe_openvino(site: &[PathBuf]) -> RuntimeLibrary {
    let paths = candidates(
        "OPENVINO_LIB_PATH",
        "libopenvino_c",
        &["openvino", "libs"],
        site,
    );
    let (path, result) = first_loadable("OpenVINO", paths, |lib| unsafe {
        #[repr(C)]
        struct OvVersion {
            build_number: *const c_char,
            description: *const c_char,
        }
        #[repr(C)]
        struct OvDevices {
            devices: *mut *mut c_char,
            size: usize,
        }
        let get_version = lib
            .get::<extern "C" fn(*mut OvVersion) -> i32>(b"ov_get_openvino_version\0")
            .map_err(|e| format!("not an OpenVINO C library: {e}"))?;
        let mut v = OvVersion {
            build_number: std::ptr::null(),
            description: std::ptr::null(),
        };
        if get_version(&mut v) != 0 || v.build_number.is_null() {
            return Err("ov_get_openvino_version failed".into());
        }
        let version = CStr::from_ptr(v.build_number)
            .to_string_lossy()
            .into_owned();
        if let Ok(free) = lib.get::<extern "C" fn(*mut OvVersion)>(b"ov_version_free\0") {
            free(&mut v);
        }
        let core_create = lib
            .get::<extern "C" fn(*mut *mut c_void) -> i32>(b"ov_core_create\0")
            .map_err(|e| e.to_string())?;
        let get_devices = lib
            .get::<extern "C" fn(*mut c_void, *mut OvDevices) -> i32>(
                b"ov_core_get_available_devices\0",
            )
            .map_err(|e| e.to_string())?;
        let mut core = std::ptr::null_mut();
        let rc = core_create(&mut core);
        if rc != 0 || core.is_null() {
            return Err(format!(
                "OpenVINO {version}: ov_core_create failed (status {rc})"
            ));
        }
        let mut devs = OvDevices {
            devices: std::ptr::null_mut(),
            size: 0,
        };
        let mut devices = Vec::new();
        if get_devices(core, &mut devs) == 0 {
            for i in 0..devs.size {
                let d = *devs.devices.add(i);
                devices.push(CStr::from_ptr(d).to_string_lossy().into_owned());
            }
            if let Ok(free) =
                lib.get::<extern "C" fn(*mut OvDevices)>(b"ov_available_devices_free\0")
            {
                free(&mut devs);
            }
        }
        if let Ok(free) = lib.get::<extern "C" fn(*mut c_void)>(b"ov_core_free\0") {
            free(core);
        }
        Ok((version, devices))
    });
    let (ok, error) = split(result);
    let (version, devices) = ok.map(|(v, d)| (Some(v), d)).unwrap_or((None, vec![]));
    RuntimeLibrary {
        name: "openvino".into(),
        path,
        version,
        devices,
        error,
    }
}

fn split<T>(r: Result<T, String>) -> (Option<T>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    }
}

pub(crate) fn openvino_status(runtimes: &[RuntimeLibrary]) -> PlatformStatus {
    let ov = runtimes.iter().find(|r| r.name == "openvino");
    match ov {
        Some(r) if r.usable() && !r.devices.is_empty() => PlatformStatus {
            platform: Platform::Openvino,
            available: true,
            detail: format!(
                "OpenVINO {} at {} (devices: {})",
                r.version.as_deref().unwrap_or("?"),
                r.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                r.devices.join(", ")
            ),
            devices: r.devices.clone(),
        },
        Some(r) => PlatformStatus {
            platform: Platform::Openvino,
            available: false,
            detail: r
                .error
                .clone()
                .unwrap_or_else(|| "OpenVINO loaded but lists no devices".into()),
            devices: vec![],
        },
        None => unreachable!("detect() always probes openvino"),
    }
}

/// A Chromium-family browser executable and the version it reports.
#[derive(Debug, Clone)]
pub struct Browser {
    pub path: PathBuf,
    pub version: String,
}

/// The browser the web platforms run in: `CHROMIUM_PATH`/`CHROME_PATH`, then the usual
/// install locations (Debian's `chromium` package puts the real binary in /usr/lib/chromium).
pub fn find_chromium() -> Result<Browser, String> {
    let mut paths: Vec<PathBuf> = ["CHROMIUM_PATH", "CHROME_PATH"]
        .iter()
        .filter_map(|v| std::env::var(v).ok().map(PathBuf::from))
        .collect();
    paths.extend(
        [
            "/usr/lib/chromium/chromium",
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
            "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
        ]
        .iter()
        .map(PathBuf::from),
    );
    let path = paths
        .into_iter()
        .find(|p| p.is_file())
        .ok_or("no Chromium or Chrome executable found (looked in CHROMIUM_PATH, CHROME_PATH, /usr/lib/chromium, /usr/bin)")?;
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} does not start: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Browser {
        path,
        version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

pub(crate) fn browser_platform_status(
    platform: Platform,
    browser: &Result<Browser, String>,
) -> PlatformStatus {
    let detail = match browser {
        Err(e) => e.clone(),
        // Finding the browser is not a probe of its WebGPU adapter or WebNN context; the
        // platform is claimed only by the in-browser probe (`ia-browser`), which replaces this.
        Ok(b) => format!(
            "{} found at {}; {platform} is confirmed only inside the browser (not probed)",
            b.version,
            b.path.display(),
        ),
    };
    PlatformStatus {
        platform,
        available: false,
        detail,
        devices: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_runtime_library_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        assert!(libs_in(dir.path(), "libonnxruntime").is_empty());
        let (path, r) = first_loadable("X", vec![], |_| Ok(()));
        assert!(path.is_none());
        assert!(r.unwrap_err().contains("not found"));
    }

    #[test]
    fn garbage_library_file_gives_loader_error() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let bogus = dir.join("libonnxruntime.so.1.99.0");
        std::fs::write(&bogus, b"not an ELF file").unwrap();
        let (path, r) = first_loadable("ONNX Runtime", vec![bogus.clone()], |_| Ok(()));
        assert_eq!(path.as_deref(), Some(bogus.as_path()));
        assert!(r.unwrap_err().starts_with("cannot load"));
    }

    #[test]
    fn library_headers_name_the_architecture_they_were_built_for() {
        assert_eq!(library_file_problem(Path::new("/proc/self/exe")), None);
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let elf = |machine: u16| {
            let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1];
            h.resize(18, 0);
            h.extend_from_slice(&machine.to_le_bytes());
            h
        };
        let other = if std::env::consts::ARCH == "aarch64" {
            (0x3e, "x86_64")
        } else {
            (0xb7, "aarch64")
        };
        let lib = dir.join("libother.so");
        std::fs::write(&lib, elf(other.0)).unwrap();
        let e = library_file_problem(&lib).unwrap();
        assert!(
            e.contains(&format!("is built for {}; this machine is", other.1)),
            "{e}"
        );
        std::fs::write(&lib, b"MZ\x90\x00").unwrap();
        assert!(library_file_problem(&lib)
            .unwrap()
            .contains("a Windows DLL"));
        let e = library_file_problem(&dir.join("absent.so")).unwrap();
        assert!(e.contains("absent.so"), "{e}");
    }
}
