//! `ipfs-accelerate hardware`

use ia_hardware::{HardwareReport, RuntimeLibrary};

#[derive(clap::Args)]
pub struct Args {
    /// Print the full report as JSON
    #[arg(long)]
    json: bool,
    /// Skip the in-browser probe of webgpu, webnn and wasm (it starts headless Chromium)
    #[arg(long)]
    no_browser: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut report = ia_hardware::detect();
    report.runtimes = with_execution_providers(report.runtimes);
    if !args.no_browser {
        // The web platforms are what the browser itself reports: its WebGPU adapter and
        // WebNN contexts, or its own error text.
        let _ = ia_browser::probe(&mut report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// ONNX Runtime's "devices" are the execution providers the loaded library offers; listing
/// them needs the library loaded, which only the engine does.
pub fn with_execution_providers(mut found: Vec<RuntimeLibrary>) -> Vec<RuntimeLibrary> {
    for rt in found
        .iter_mut()
        .filter(|r| r.name == "onnxruntime" && r.usable())
    {
        match ia_ort::available_providers() {
            Ok(eps) => rt.devices = eps,
            Err(e) => rt.error = Some(e.to_string()),
        }
    }
    found
}

pub fn render(r: &HardwareReport) -> String {
    let mut out = format!(
        "Hardware fingerprint: {}  ({} / {})\nCPU: {} | {} physical / {} logical cores | {:.1} GiB | {}\n\n",
        r.fingerprint,
        r.os,
        r.arch,
        r.cpu.model_name,
        r.cpu.physical_cores,
        r.cpu.logical_cores,
        r.cpu.memory_bytes as f64 / (1u64 << 30) as f64,
        if r.cpu.isa_extensions.is_empty() {
            "no notable ISA extensions".to_string()
        } else {
            r.cpu.isa_extensions.join(" ")
        }
    );
    out.push_str(&format!(
        "{:<10} {:<12} {}\n",
        "PLATFORM", "STATUS", "DETAIL"
    ));
    for s in &r.platforms {
        out.push_str(&format!(
            "{:<10} {:<12} {}\n",
            s.platform.as_str(),
            if s.available {
                "available"
            } else {
                "unavailable"
            },
            s.detail
        ));
    }
    out.push_str("\nRUNTIMES\n");
    for rt in &r.runtimes {
        let status = match (&rt.version, &rt.error) {
            (Some(v), None) => format!(
                "{v} at {}{}",
                rt.path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                if rt.devices.is_empty() {
                    String::new()
                } else if rt.name == "onnxruntime" {
                    // Each provider with the platform it drives (`bench --hardware
                    // onnxruntime:<platform>`).
                    let eps: Vec<String> = rt
                        .devices
                        .iter()
                        .map(|ep| match ia_ort::platform_of(ep) {
                            Some(p) => format!("{ep} -> {p}"),
                            None => ep.clone(),
                        })
                        .collect();
                    format!(" (execution providers: {})", eps.join(", "))
                } else {
                    format!(" (devices: {})", rt.devices.join(", "))
                }
            ),
            (_, Some(e)) => format!("not usable: {e}"),
            _ => "not found".into(),
        };
        out.push_str(&format!("{:<12} {}\n", rt.name, status));
    }
    let web = match (ia_browser::ort_web_version(), ia_browser::find_ort_web()) {
        (Some(v), Ok(dist)) => format!("{v} at {}", dist.display()),
        (_, Err(e)) => format!("not found: {e}"),
        (None, Ok(dist)) => format!("found at {} (no version in package.json)", dist.display()),
    };
    out.push_str(&format!("{:<12} {web}\n", "ort-web"));
    out
}
