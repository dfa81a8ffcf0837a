//! Finding and loading the ONNX Runtime library, and the execution providers it offers.

use ia_engine::EngineError;
use ia_hardware::Platform;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The loaded library: its environment, file and version; or why it could not be loaded.
pub(crate) struct Runtime {
    pub env: ort::environment::Environment,
    pub path: PathBuf,
    pub version: String,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

pub(crate) fn runtime() -> Result<&'static Runtime, EngineError> {
    RUNTIME
        .get_or_init(load_runtime)
        .as_ref()
        .map_err(|e| EngineError::Unsupported(e.clone()))
}

fn load_runtime() -> Result<Runtime, String> {
    let found = ia_hardware::detect_runtimes()
        .into_iter()
        .find(|r| r.name == "onnxruntime");
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty());
    let (path, detected_version) = match from_env {
        // Detection probes ORT_DYLIB_PATH first; its version is this library's if it loaded.
        Some(p) => {
            let path = PathBuf::from(p);
            let version = found
                .filter(|r| r.path.as_ref() == Some(&path))
                .and_then(|r| r.version);
            (path, version)
        }
        None => match found {
            Some(r) if r.usable() => (r.path.unwrap_or_default(), r.version),
            Some(r) => {
                return Err(format!(
                    "ONNX Runtime is not usable: {}",
                    r.error.unwrap_or_else(|| "not found".into())
                ))
            }
            None => return Err("ONNX Runtime not found".into()),
        },
    };
    // ort checks the library's own version string: one older than the C API this build uses
    // (api-24, ONNX Runtime 1.24) is refused with both versions named, before any call into it.
    let env = ort::init_from(&path)
        .map_err(|e| {
            let why = ia_hardware::library_file_problem(&path).unwrap_or_else(|| e.to_string());
            format!("cannot load ONNX Runtime from {}: {why}", path.display())
        })?
        .with_name("ipfs-accelerate")
        .build()
        .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
    let version = detected_version.unwrap_or_else(|| "unknown".into());
    Ok(Runtime { env, path, version })
}

/// The execution providers the loaded library offers (`CPUExecutionProvider`, ...).
pub fn available_providers() -> Result<Vec<String>, EngineError> {
    runtime()?;
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // Safety: the library is loaded (runtime() succeeded); ONNX Runtime allocates the list,
    // which is released with the matching call below.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(EngineError::Runtime("GetAvailableProviders failed".into()));
        }
        let names = (0..n as isize)
            .map(|i| {
                std::ffi::CStr::from_ptr(*list.offset(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let _ = (api.ReleaseAvailableProviders)(list, n);
        Ok(names)
    }
}

/// Where the library was loaded from and its version, once loaded.
pub fn library() -> Result<(PathBuf, String), EngineError> {
    runtime().map(|r| (r.path.clone(), r.version.clone()))
}

/// The execution providers that drive each platform, in order of preference.
pub fn providers_for(platform: Platform) -> &'static [&'static str] {
    match platform {
        Platform::Cpu => &["CPUExecutionProvider"],
        Platform::Cuda => &["CUDAExecutionProvider"],
        Platform::Rocm => &["MIGraphXExecutionProvider", "ROCMExecutionProvider"],
        Platform::Mps => &["CoreMLExecutionProvider"],
        Platform::Openvino => &["OpenVINOExecutionProvider"],
        Platform::Webgpu | Platform::Webnn | Platform::Wasm => &[],
    }
}

/// The platform an execution provider drives, for `ipfs-accelerate hardware`.
pub fn platform_of(provider: &str) -> Option<Platform> {
    Platform::ALL
        .into_iter()
        .find(|&p| providers_for(p).contains(&provider))
}

/// The provider that will run `platform` here: the first of [`providers_for`] that the loaded
/// library offers. Otherwise the error names what the library does offer.
pub(crate) fn provider_for(platform: Platform) -> Result<&'static str, EngineError> {
    let wanted = providers_for(platform);
    if wanted.is_empty() {
        return Err(EngineError::Unsupported(format!(
            "ONNX Runtime has no execution provider for {platform} outside a browser"
        )));
    }
    let offered = available_providers()?;
    wanted
        .iter()
        .find(|w| offered.iter().any(|o| o == *w))
        .copied()
        .ok_or_else(|| {
            let (path, version) = library().unwrap_or_default();
            EngineError::Unsupported(format!(
                "ONNX Runtime {version} ({}) has no {} (it offers {})",
                path.display(),
                wanted.join(" or "),
                offered.join(", ")
            ))
        })
}

/// Registers `provider` on a session builder; failing to register is an error rather than
/// ort's silent fallback to the CPU, so a result never claims a device it did not use.
pub(crate) fn register(
    builder: ort::session::builder::SessionBuilder,
    provider: &str,
) -> Result<ort::session::builder::SessionBuilder, String> {
    use ort::ep;
    let dispatch = match provider {
        "CPUExecutionProvider" => return Ok(builder),
        "CUDAExecutionProvider" => ep::CUDA::default().build(),
        "MIGraphXExecutionProvider" => ep::MIGraphX::default().build(),
        "ROCMExecutionProvider" => ep::ROCm::default().build(),
        "CoreMLExecutionProvider" => ep::CoreML::default().build(),
        "OpenVINOExecutionProvider" => ep::OpenVINO::default().build(),
        other => return Err(format!("no registration for {other}")),
    };
    builder
        .with_execution_providers([dispatch.error_on_failure()])
        .map_err(|e| format!("{provider}: {e}"))
}
