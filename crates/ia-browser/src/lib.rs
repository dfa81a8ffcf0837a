//! The web platforms: onnxruntime-web in a headless Chromium, on `wasm`, `webgpu` and `webnn`.
//!
//! Nothing here is simulated. A [`BrowserHost`] starts Chromium under chromedriver (W3C
//! WebDriver on 127.0.0.1) and serves the benchmark page, onnxruntime-web's files (installed
//! from npm by `scripts/fetch_web_assets.sh`) and the model's ONNX files from 127.0.0.1.
//! The page (`page/bench.js`) runs N iterations when asked and times each with
//! `performance.now()`; a loaded model is a [`WebTarget`], an `ia_engine::TimedWorkload` that
//! the harness in `ia-bench` drives like every other runtime (it decides how many iterations
//! and computes the statistics).
//!
//! * [`probe`]: the browser platforms as `ipfs-accelerate hardware` reports them: the
//!   browser's version, its WebGPU adapter (vendor, architecture, fallback, features), and
//!   WebNN's `createContext` for cpu/gpu/npu, or the browser's own error text.
//! * The execution provider that ran the nodes is read from onnxruntime-web's own verbose
//!   log (its node placement), so a silent fallback from WebGPU/WebNN to wasm is recorded.
//! * Decoder exports generate in the page (greedy, the KV cache fed back each step, kept in
//!   GPU buffers on WebGPU), timed as the native harness times generation.
//! * Each combination gets a fresh browser; its renderer's and GPU process's peak memory is
//!   read from /proc.
//! * Every browser step has a timeout; a browser that does not start, a page error or a
//!   missing file is a one-line error and a failed combination, never a hang.

mod engine;
pub mod page;
mod processes;
mod seq2seq;
mod server;
mod target;
mod webdriver;

use ia_hardware::{HardwareReport, Platform, PlatformStatus};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use engine::WebEngine;
pub use page::{Adapter, Environment};
pub use processes::{kill_all, BrowserMemory};
pub use target::{
    model_parts, Outputs, WebBench, WebDetails, WebOptions, WebRequest, WebTarget, WebWork,
};
pub use webdriver::find_chromedriver;

/// The engine name results are stored under.
pub const ENGINE_NAME: &str = "onnxruntime-web";

/// The browsers `--browser` accepts. Firefox and Safari have no driver here yet.
pub const BROWSERS: &[&str] = &["chromium"];

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// No browser or driver on this machine: the platforms are unavailable, not failed.
    #[error("{0}")]
    NotInstalled(String),
    #[error("the browser did not start: {0}")]
    Start(String),
    #[error("page server: {0}")]
    Server(String),
    #[error("WebDriver: {0}")]
    WebDriver(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Page(String),
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// onnxruntime-web's `dist/` folder: `IA_ORT_WEB_DIST`, else what
/// `scripts/fetch_web_assets.sh` installed under the project cache.
pub fn find_ort_web() -> Result<PathBuf, String> {
    let dist = match std::env::var_os("IA_ORT_WEB_DIST") {
        Some(d) => PathBuf::from(d),
        None => ia_hardware::cache_dir()
            .ok_or("no cache folder (set HOME or XDG_CACHE_HOME)")?
            .join("web/node_modules/onnxruntime-web/dist"),
    };
    if dist.join("ort.all.min.mjs").is_file() {
        Ok(dist)
    } else {
        Err(format!(
            "onnxruntime-web is not installed ({} has no ort.all.min.mjs; run scripts/fetch_web_assets.sh)",
            dist.display()
        ))
    }
}

/// The installed onnxruntime-web's version (its package.json), for results that did not run.
pub fn ort_web_version() -> Option<String> {
    let dist = find_ort_web().ok()?;
    let text = std::fs::read_to_string(dist.parent()?.join("package.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_string)
}

/// How long the page and the environment probe may take.
pub(crate) const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a page looks like in headless Chromium: the value `script` returned (layout facts the
/// caller asks for) and a PNG screenshot of the viewport. For checking HTML reports as people
/// see them; the page is a local file, opened with the same flags as the benchmark browser.
pub fn render_page(
    page: &Path,
    width: u32,
    height: u32,
    script: &str,
) -> Result<(serde_json::Value, Vec<u8>), BrowserError> {
    let path = page
        .canonicalize()
        .map_err(|e| BrowserError::Page(format!("{}: {e}", page.display())))?;
    render_url(&format!("file://{}", path.display()), width, height, script)
}

/// [`render_page`] for a page at `url` (a local server's, such as `serve`'s `/docs`).
pub fn render_url(
    url: &str,
    width: u32,
    height: u32,
    script: &str,
) -> Result<(serde_json::Value, Vec<u8>), BrowserError> {
    let chromium = ia_hardware::find_chromium().map_err(BrowserError::NotInstalled)?;
    let chromedriver = find_chromedriver().map_err(BrowserError::NotInstalled)?;
    let driver = webdriver::Driver::start(&chromium.path, &chromedriver)?;
    driver.set_window_size(width, height)?;
    driver.navigate(url, PAGE_TIMEOUT)?;
    let facts = driver.execute(script)?;
    let png = driver.screenshot()?;
    Ok((facts, png))
}

/// A headless Chromium for looking at a local server's pages one after another, as a person
/// would: open a page, wait for what it promises, read facts, take a screenshot, and read the
/// console (the dashboard's tests).
pub struct Viewer {
    driver: webdriver::Driver,
}

impl Viewer {
    pub fn start(width: u32, height: u32) -> Result<Self, BrowserError> {
        let chromium = ia_hardware::find_chromium().map_err(BrowserError::NotInstalled)?;
        let chromedriver = find_chromedriver().map_err(BrowserError::NotInstalled)?;
        let driver = webdriver::Driver::start(&chromium.path, &chromedriver)?;
        driver.set_window_size(width, height)?;
        Ok(Self { driver })
    }

    /// Opens `url` and waits for its load event.
    pub fn open(&self, url: &str) -> Result<(), BrowserError> {
        self.driver.navigate(url, PAGE_TIMEOUT)
    }

    /// Runs `script` in the page as the body of an async function and returns what it
    /// returns (JSON), within `timeout`; a thrown error is `BrowserError::Page`.
    pub fn eval(&self, script: &str, timeout: Duration) -> Result<serde_json::Value, BrowserError> {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {script} }})().then(
               (value) => done({{pageValue: value === undefined ? null : value}}),
               (e) => done({{pageError: String(e && e.stack || e)}}));"
        );
        let answer = self.driver.execute_async(&wrapped, timeout)?;
        match answer.get("pageError").and_then(|e| e.as_str()) {
            Some(error) => Err(BrowserError::Page(one_line(error))),
            None => Ok(answer.get("pageValue").cloned().unwrap_or_default()),
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        self.driver.screenshot()
    }

    /// Console entries at level SEVERE (errors, failed loads) since the last call.
    pub fn console_errors(&self) -> Result<Vec<String>, BrowserError> {
        Ok(self
            .driver
            .console()?
            .into_iter()
            .filter(|(level, _)| level == "SEVERE")
            .map(|(_, message)| message)
            .collect())
    }
}

/// A running headless Chromium with the benchmark page open.
pub struct BrowserHost {
    // Field order is drop order: the browser goes before the server it reads from.
    driver: webdriver::Driver,
    server: server::PageServer,
    /// onnxruntime-web's files, when installed (the platform probe does not need them).
    ort_dist: Option<PathBuf>,
    pub environment: Environment,
}

impl BrowserHost {
    pub fn start(ort_dist: Option<PathBuf>) -> Result<Self, BrowserError> {
        let chromium = ia_hardware::find_chromium().map_err(BrowserError::NotInstalled)?;
        let chromedriver = find_chromedriver().map_err(BrowserError::NotInstalled)?;
        let server = server::PageServer::start(ort_dist.as_deref())?;
        let driver = webdriver::Driver::start(&chromium.path, &chromedriver)?;
        driver.navigate(&server.url("/"), PAGE_TIMEOUT)?;
        let env = driver.call("describeEnvironment", serde_json::Value::Null, PAGE_TIMEOUT)?;
        let environment = serde_json::from_value(env).map_err(|e| {
            BrowserError::Page(format!("the page described its environment wrongly: {e}"))
        })?;
        Ok(Self {
            driver,
            server,
            ort_dist,
            environment,
        })
    }

    /// "Chromium 148.0.7778.167".
    pub fn browser(&self) -> String {
        format!("Chromium {}", self.driver.browser_version)
    }

    pub fn browser_version(&self) -> &str {
        &self.driver.browser_version
    }

    /// What this browser offers for one web platform.
    pub fn platform_status(&self, platform: Platform) -> PlatformStatus {
        let env = &self.environment;
        let browser = self.browser();
        let (available, detail, devices) = match platform {
            Platform::Wasm => (
                true,
                format!(
                    "{browser}, WebAssembly with {} threads{}",
                    env.hardware_concurrency,
                    if env.cross_origin_isolated {
                        " (cross-origin isolated)"
                    } else {
                        " (not cross-origin isolated: single-threaded)"
                    }
                ),
                vec![browser.clone()],
            ),
            Platform::Webgpu => match &env.webgpu.adapter {
                Some(a) => (
                    true,
                    format!(
                        "{browser}, adapter {}; features: {}",
                        a.summary(),
                        a.features.join(" ")
                    ),
                    vec![a.summary()],
                ),
                None => (
                    false,
                    format!(
                        "{browser}: {}",
                        env.webgpu.error.as_deref().unwrap_or("no WebGPU adapter")
                    ),
                    vec![],
                ),
            },
            Platform::Webnn => match env.webnn.usable_device() {
                Some(device) => (
                    true,
                    format!("{browser}, WebNN context on {device}"),
                    vec![format!("webnn {device}")],
                ),
                None => (
                    false,
                    format!("{browser}: {}", env.webnn.unavailable_reason()),
                    vec![],
                ),
            },
            other => (false, format!("{other} is not a browser platform"), vec![]),
        };
        PlatformStatus {
            platform,
            available,
            detail,
            devices,
        }
    }
}

/// The browser platforms, in the order `hardware` prints them.
pub const WEB_PLATFORMS: [Platform; 3] = [Platform::Webgpu, Platform::Webnn, Platform::Wasm];

pub fn is_web_platform(p: Platform) -> bool {
    WEB_PLATFORMS.contains(&p)
}

/// Starts the browser and replaces the report's web-platform entries with what it found
/// inside the browser. When the browser does not start, every web platform is unavailable
/// with that reason. The host (or why there is none) is returned for reuse.
pub fn probe(report: &mut HardwareReport) -> Result<BrowserHost, BrowserError> {
    match BrowserHost::start(find_ort_web().ok()) {
        Ok(host) => {
            for p in WEB_PLATFORMS {
                report.set_status(host.platform_status(p));
            }
            Ok(host)
        }
        Err(e) => {
            for p in WEB_PLATFORMS {
                report.set_status(PlatformStatus {
                    platform: p,
                    available: false,
                    detail: e.to_string(),
                    devices: vec![],
                });
            }
            Err(e)
        }
    }
}
