//! `ipfs-accelerate runtimes`: install the optional runtimes (ONNX Runtime, OpenVINO) from PyPI
//! into the project's own virtual environment, where detection finds them with no variables,
//! and list what detection finds.

use anyhow::{bail, Context};
use ia_hardware::RuntimeLibrary;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Create <cache>/runtimes/venv and pip-install onnxruntime and openvino into it
    Install {
        /// Install onnxruntime-openvino (ONNX Runtime with the OpenVINO execution provider)
        /// instead of the plain CPU onnxruntime
        #[arg(long)]
        openvino_ep: bool,
        /// The Python interpreter that creates the environment
        #[arg(long, default_value = "python3")]
        python: String,
        #[arg(long)]
        json: bool,
    },
    /// Show the runtimes detection finds (library, version, devices) or why not
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Sub::Install {
            openvino_ep,
            python,
            json,
        } => {
            let venv = venv_dir()?;
            install(&venv, &python, openvino_ep)?;
            print(&detected(), json)
        }
        Sub::List { json } => print(&detected(), json),
    }
}

fn detected() -> Vec<RuntimeLibrary> {
    crate::hardware::with_execution_providers(ia_hardware::detect_runtimes())
}

fn venv_dir() -> anyhow::Result<PathBuf> {
    Ok(ia_hardware::cache_dir()
        .context("no cache folder: set IPFS_ACCELERATE_CACHE or HOME")?
        .join("runtimes")
        .join("venv"))
}

/// Runs a command, showing a spinner; its output goes to a log next to the venv, and a
/// failure is reported with the command's last line of output.
fn step(message: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    spinner.finish_and_clear();
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    std::fs::write(log, &text).ok();
    if !out.status.success() {
        let text = String::from_utf8_lossy(&text);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "{message} failed ({}): {last} (full log: {})",
            out.status,
            log.display()
        );
    }
    eprintln!("{message}: done");
    Ok(())
}

fn install(venv: &Path, python: &str, openvino_ep: bool) -> anyhow::Result<()> {
    let parent = venv.parent().context("venv path has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let log = parent.join("install.log");
    let py = venv.join("bin").join("python");
    if !py.exists() {
        step(
            &format!("creating {}", venv.display()),
            Command::new(python).args(["-m", "venv"]).arg(venv),
            &log,
        )?;
    }
    let ort = if openvino_ep {
        "onnxruntime-openvino"
    } else {
        "onnxruntime"
    };
    // The two ONNX Runtime wheels provide the same module; keep only the one asked for.
    let other = if openvino_ep {
        "onnxruntime"
    } else {
        "onnxruntime-openvino"
    };
    step(
        &format!("removing {other} if present"),
        Command::new(&py).args(["-m", "pip", "uninstall", "--yes", "--quiet", other]),
        &log,
    )?;
    step(
        &format!("pip install {ort} openvino"),
        Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            ort,
            "openvino",
        ]),
        &log,
    )
}

fn print(found: &[RuntimeLibrary], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(found)?);
        return Ok(());
    }
    for rt in found {
        match (&rt.version, &rt.error, &rt.path) {
            (Some(v), None, Some(p)) => {
                println!("{:<12} {v}", rt.name);
                println!("{:<12} {}", "", p.display());
                if !rt.devices.is_empty() {
                    let what = if rt.name == "onnxruntime" {
                        "execution providers"
                    } else {
                        "devices"
                    };
                    println!("{:<12} {what}: {}", "", rt.devices.join(", "));
                }
            }
            (_, Some(e), _) => println!("{:<12} not usable: {e}", rt.name),
            _ => println!("{:<12} not found", rt.name),
        }
    }
    Ok(())
}
