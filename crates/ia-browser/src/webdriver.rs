//! A headless Chromium driven over W3C WebDriver (chromedriver on 127.0.0.1). Every request
//! has a timeout; a step that runs past it is an error, never a hang.

use crate::BrowserError;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long chromedriver and the browser get to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The flags known to work headless on a machine without a GPU or internet access
/// (../shared/RECIPES.md): without the background-networking ones Chromium floods a closed
/// network with connection attempts. `--enable-unsafe-webgpu` exposes WebGPU on Linux.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--enable-unsafe-webgpu",
    "--enable-features=WebMachineLearningNeuralNetwork",
];

/// chromedriver: `CHROMEDRIVER_PATH`, then Debian's `chromium-driver` location.
pub fn find_chromedriver() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("CHROMEDRIVER_PATH")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(
        ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .iter()
            .map(PathBuf::from),
    );
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "no chromedriver found (looked in CHROMEDRIVER_PATH, /usr/bin, /usr/lib/chromium; \
         Debian: apt-get install chromium-driver)"
            .to_string()
    })
}

pub struct Driver {
    child: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    /// The browser's profile, removed with the driver.
    _profile: tempfile::TempDir,
    pub browser_version: String,
}

impl Driver {
    /// chromedriver's process id: the browser's processes are its descendants.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(chromium: &Path, chromedriver: &Path) -> Result<Self, BrowserError> {
        let port = free_port()?;
        let profile = tempfile::Builder::new()
            .prefix("ia-browser-profile-")
            .tempdir()
            .map_err(|e| BrowserError::Start(format!("browser profile folder: {e}")))?;
        // chromedriver's own output goes to a file (a pipe nobody reads would fill and block
        // it); it is read back only when chromedriver exits early.
        let log = std::fs::File::create(profile.path().join("chromedriver.log"))
            .map_err(|e| BrowserError::Start(format!("chromedriver log: {e}")))?;
        // The browser's own temporary folders go inside the profile: a browser killed on a
        // timeout or a cancelled run does not remove its `org.chromium.Chromium.scoped_dir.*`
        // (the test suite left 10-13 in /tmp per run); the profile goes with the driver.
        let scratch = profile.path().join("tmp");
        std::fs::create_dir(&scratch)
            .map_err(|e| BrowserError::Start(format!("browser temporary folder: {e}")))?;
        let mut command = Command::new(chromedriver);
        command
            .env("TMPDIR", &scratch)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group, which the browser it starts joins: one kill(-pgid) stops
        // the driver and every browser process, on every exit path (crate::processes).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        // SAFETY: prctl is async-signal-safe and touches only the new process.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                // If ipfs-accelerate dies without cleaning up (SIGKILL), the driver goes too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            BrowserError::Start(format!("{} does not start: {e}", chromedriver.display()))
        })?;
        crate::processes::register_group(child.id(), profile.path());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
            _profile: profile,
            browser_version: String::new(),
        };
        driver.wait_ready(chromedriver)?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            driver._profile.path().display()
        ));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            // The console, for pages checked to log no errors.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let value = driver
            .request("POST", "/session", Some(caps), START_TIMEOUT)
            .map_err(|e| {
                BrowserError::Start(format!("{} does not start: {e}", chromium.display()))
            })?;
        driver.session = value["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Start(format!("chromedriver gave no session: {value}")))?
            .to_string();
        driver.browser_version = value["capabilities"]["browserVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Ok(driver)
    }

    fn wait_ready(&mut self, chromedriver: &Path) -> Result<(), BrowserError> {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = std::fs::read_to_string(self._profile.path().join("chromedriver.log"))
                    .unwrap_or_default();
                return Err(BrowserError::Start(format!(
                    "{} exited with {status}: {}",
                    chromedriver.display(),
                    crate::one_line(&stderr)
                )));
            }
            if let Ok(v) = self.request("GET", "/status", None, Duration::from_secs(2)) {
                if v["ready"].as_bool() == Some(true) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(BrowserError::Start(format!(
            "{} did not answer within {} s",
            chromedriver.display(),
            START_TIMEOUT.as_secs()
        )))
    }

    fn session_path(&self, tail: &str) -> String {
        format!("/session/{}{tail}", self.session)
    }

    /// One WebDriver command; the W3C error object becomes `BrowserError::WebDriver`.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let url = format!("{}{path}", self.base);
        let limit = Some(timeout);
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .config()
                .timeout_global(limit)
                .build()
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .config()
                .timeout_global(limit)
                .build()
                .call(),
            (_, body) => self
                .agent
                .post(&url)
                .config()
                .timeout_global(limit)
                .build()
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = result.map_err(|e| match e {
            ureq::Error::Timeout(_) => BrowserError::Timeout(format!(
                "{method} {path}: no answer within {:.0} s",
                timeout.as_secs_f64()
            )),
            e => BrowserError::WebDriver(format!("{method} {path}: {e}")),
        })?;
        let text = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| BrowserError::WebDriver(format!("{method} {path}: {e}")))?;
        let mut parsed: Value = serde_json::from_str(&text).map_err(|e| {
            BrowserError::WebDriver(format!("{method} {path}: answer is not JSON ({e})"))
        })?;
        let value = parsed["value"].take();
        if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
            let message = crate::one_line(value["message"].as_str().unwrap_or(""));
            return Err(if error == "script timeout" || error == "timeout" {
                BrowserError::Timeout(message)
            } else {
                BrowserError::WebDriver(format!("{error}: {message}"))
            });
        }
        Ok(value)
    }

    /// Opens `url` and waits for its load event, at most `timeout`.
    pub fn navigate(&self, url: &str, timeout: Duration) -> Result<(), BrowserError> {
        self.set_timeouts(json!({"pageLoad": timeout.as_millis() as u64}))?;
        self.request(
            "POST",
            &self.session_path("/url"),
            Some(json!({ "url": url })),
            timeout + Duration::from_secs(5),
        )?;
        Ok(())
    }

    fn set_timeouts(&self, timeouts: Value) -> Result<(), BrowserError> {
        self.request(
            "POST",
            &self.session_path("/timeouts"),
            Some(timeouts),
            Duration::from_secs(10),
        )?;
        Ok(())
    }

    /// Sets the browser window's size in CSS pixels.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        self.request(
            "POST",
            &self.session_path("/window/rect"),
            Some(json!({"width": width, "height": height})),
            Duration::from_secs(10),
        )?;
        Ok(())
    }

    /// Runs a synchronous script in the page and returns what it returns.
    pub fn execute(&self, script: &str) -> Result<Value, BrowserError> {
        self.request(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
            Duration::from_secs(30),
        )
    }

    /// Runs an asynchronous script: it gets `done` as its last argument and answers by calling
    /// it, within `timeout`.
    pub fn execute_async(&self, script: &str, timeout: Duration) -> Result<Value, BrowserError> {
        self.set_timeouts(json!({"script": timeout.as_millis() as u64}))?;
        self.request(
            "POST",
            &self.session_path("/execute/async"),
            Some(json!({"script": script, "args": []})),
            timeout + Duration::from_secs(10),
        )
    }

    /// The console entries logged since the last call: (level, message).
    pub fn console(&self) -> Result<Vec<(String, String)>, BrowserError> {
        let entries = self.request(
            "POST",
            &self.session_path("/se/log"),
            Some(json!({"type": "browser"})),
            Duration::from_secs(10),
        )?;
        Ok(entries
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or("").to_string(),
                            e["message"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A PNG of the current viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        use base64::Engine as _;
        let value = self.request(
            "GET",
            &self.session_path("/screenshot"),
            None,
            Duration::from_secs(30),
        )?;
        let encoded = value.as_str().ok_or_else(|| {
            BrowserError::WebDriver("the screenshot answer is not a string".into())
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| BrowserError::WebDriver(format!("the screenshot is not base64: {e}")))
    }

    /// Calls `window.ia.<function>(arg)` in the page and waits for its promise, at most
    /// `timeout`. A rejected promise is `BrowserError::Page` with the page's error text.
    pub fn call(
        &self,
        function: &str,
        arg: Value,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        self.set_timeouts(json!({"script": timeout.as_millis() as u64}))?;
        // The page's answer uses its own keys: a W3C error object has "error" too.
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const call = () => window.ia.{function}(arguments[0]).then(
               (value) => done({{pageValue: value === undefined ? null : value}}),
               (e) => done({{pageError: e && e.name && e.message ? e.name + ': ' + e.message : String(e)}}));
             // The page's module may still be evaluating right after navigation.
             const wait = (tries) => window.ia ? call() : tries > 0
               ? setTimeout(() => wait(tries - 1), 50)
               : done({{pageError: 'the benchmark page did not load (window.ia is undefined after 10 s)'}});
             wait(200);"
        );
        let answer = self
            .request(
                "POST",
                &self.session_path("/execute/async"),
                Some(json!({"script": script, "args": [arg]})),
                timeout + Duration::from_secs(10),
            )
            .map_err(|e| match e {
                BrowserError::Timeout(_) => BrowserError::Timeout(format!(
                    "{function} did not finish within {:.0} s",
                    timeout.as_secs_f64()
                )),
                e => e,
            })?;
        match answer.get("pageError").and_then(|e| e.as_str()) {
            Some(error) => Err(BrowserError::Page(crate::one_line(error))),
            None => Ok(answer.get("pageValue").cloned().unwrap_or(Value::Null)),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request(
                "DELETE",
                &self.session_path(""),
                None,
                Duration::from_secs(10),
            );
        }
        crate::processes::kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BrowserError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BrowserError::Start(format!("no free port on 127.0.0.1: {e}")))
}
