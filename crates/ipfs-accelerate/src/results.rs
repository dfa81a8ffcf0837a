//! Harness outcomes as stored records: the one mapping from a combination and its outcome
//! (measured, failed or unavailable; native, browser or imported) to the rows of the results
//! store. `bench`, `bench --submit` and `db import` all go through [`combination_records`].

use ia_bench::{Combination, Measurement, Outcome};
use ia_db::{
    CombinationRecords, CompatibilityRecord, HardwareRecord, ModelRecord, PerformanceRecord,
    ResultMode, RunRecord, WebRecord,
};
use ia_hardware::HardwareReport;

/// The sequence length of a combination with text inputs (other inputs have none).
pub(crate) fn text_seq_len(c: &Combination) -> Option<usize> {
    c.model.has_text_length().then_some(c.seq_len)
}

/// The scenario a result is stored and shown under. Training steps have their own (with and
/// without checkpointing), so that reports, trends and regression alerts, which compare
/// results of one scenario, never set a training step against a forward pass.
pub(crate) fn scenario_name(c: &Combination) -> &'static str {
    match c.mode {
        ia_bench::Mode::Inference => c.scenario.as_str(),
        ia_bench::Mode::Training {
            gradient_checkpointing: false,
        } => "training",
        ia_bench::Mode::Training {
            gradient_checkpointing: true,
        } => "training+ckpt",
    }
}

pub(crate) fn run_record() -> RunRecord {
    RunRecord {
        git_commit: git_commit(),
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        host: host_name(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// This machine's name, as results record it.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The hardware row of one platform of this machine, as every stored figure refers to it.
pub(crate) fn hardware_record(
    hw: &HardwareReport,
    platform: ia_hardware::Platform,
    device: String,
    host: &str,
) -> anyhow::Result<HardwareRecord> {
    Ok(HardwareRecord {
        fingerprint: hw.fingerprint.clone(),
        platform: platform.as_str().into(),
        device,
        host: host.to_string(),
        cpu_model: hw.cpu.model_name.clone(),
        details_json: serde_json::to_string(&serde_json::json!({
            "platform": hw.status(platform),
            "cpu": hw.cpu,
            "gpus": hw.gpus,
            "os": hw.os,
            "arch": hw.arch,
        }))?,
    })
}

/// The commit of the source tree this binary was built from, "+dirty" when it had changes.
fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        commit.push_str("+dirty");
    }
    Some(commit)
}

/// The rows of one combination's outcome, as the store writes them and as a submission to a
/// results service carries them. `engine` is (name, version) of the runtime that was asked
/// to run it (a measured outcome carries its own session info, which wins); `web` is how a
/// browser result was obtained.
pub(crate) fn combination_records(
    host: &str,
    hw: &HardwareReport,
    engine: (&str, String),
    combo: &Combination,
    outcome: &Outcome,
    web: Option<&ia_browser::WebDetails>,
) -> anyhow::Result<CombinationRecords> {
    let m = &combo.model;
    let measured = match outcome {
        Outcome::Measured(meas) => Some(meas.as_ref()),
        _ => None,
    };
    let model = ModelRecord {
        model_name: m.name.clone(),
        class: m.class.as_str().into(),
        family: m.family.to_string(),
        task: m.task.to_string(),
        modality: m.modality.as_str().into(),
        parameter_count: measured
            .map(|x| i64::try_from(x.session.parameter_count))
            .transpose()
            .map_err(|_| anyhow::anyhow!("parameter count does not fit the results store"))?
            .unwrap_or(0),
        source: m.source.describe(),
        weights: m.source.weights_kind().as_str().into(),
    };
    let status = hw.status(combo.platform);
    let device = measured
        .map(|x| x.session.device.clone())
        .unwrap_or_else(|| {
            status
                .devices
                .first()
                .cloned()
                .unwrap_or_else(|| "none".into())
        });
    let hardware = hardware_record(hw, combo.platform, device.clone(), host)?;
    let error = match outcome {
        Outcome::Measured(_) => None,
        Outcome::Unavailable { reason } => Some(reason.clone()),
        Outcome::Failed { stage, error } => Some(format!("{stage}: {error}")),
    };
    let engine_name = measured.map_or(engine.0.to_string(), |m| m.session.engine.clone());
    let perf = performance_record(
        &engine,
        combo,
        outcome.status(),
        error.clone(),
        device,
        measured,
    )?;
    let compat = CompatibilityRecord {
        platform: combo.platform.as_str().into(),
        engine: engine_name,
        precision: combo.precision.as_str().into(),
        status: outcome.status().into(),
        error,
    };
    let samples = measured.map(|x| x.samples_ms.clone()).unwrap_or_default();
    let web = web.map(web_record).transpose()?;
    Ok(CombinationRecords {
        model,
        hardware,
        performance: perf,
        samples_ms: samples,
        compatibility: compat,
        web,
    })
}

fn web_record(w: &ia_browser::WebDetails) -> anyhow::Result<WebRecord> {
    let a = w.adapter.as_ref();
    Ok(WebRecord {
        browser: w.browser.clone(),
        browser_version: w.browser_version.clone(),
        user_agent: w.user_agent.clone(),
        requested_ep: w.requested_ep.clone(),
        executed_ep: w.executed_ep.clone(),
        fell_back: w.fell_back,
        node_placement: serde_json::to_string(&w.node_placement)?,
        adapter_vendor: a.map(|a| a.vendor.clone()),
        adapter_architecture: a.map(|a| a.architecture.clone()),
        adapter_description: a.map(|a| a.description.clone()),
        adapter_is_fallback: a.and_then(|a| a.is_fallback_adapter),
        adapter_features: a.map(|a| a.features.join(" ")),
        webnn_device: w.webnn_device.clone(),
        wasm_threads: i32::try_from(w.wasm_threads)
            .map_err(|_| anyhow::anyhow!("wasm threads {} out of range", w.wasm_threads))?,
        cross_origin_isolated: w.cross_origin_isolated,
        precompiled: w.precompiled,
        precompile_ms: w.precompile_ms,
        parallel_load: w.parallel_load,
        concurrent_sessions: w.concurrent_sessions,
        renderer_peak_rss_bytes: w
            .memory
            .renderer_peak_bytes
            .and_then(|b| i64::try_from(b).ok()),
        gpu_process_peak_rss_bytes: w
            .memory
            .gpu_process_peak_bytes
            .and_then(|b| i64::try_from(b).ok()),
        part_load_ms: serde_json::to_string(&w.part_load_ms)?,
    })
}

fn performance_record(
    engine: &(&str, String),
    combo: &Combination,
    status: &str,
    error: Option<String>,
    device: String,
    m: Option<&Measurement>,
) -> anyhow::Result<PerformanceRecord> {
    let base = PerformanceRecord {
        engine: engine.0.into(),
        engine_version: engine.1.clone(),
        device,
        precision: combo.precision.as_str().into(),
        scenario: scenario_name(combo).into(),
        batch_size: column(combo.batch_size, "batch_size")?,
        seq_len: text_seq_len(combo)
            .map(|s| column(s, "seq_len"))
            .transpose()?,
        status: status.into(),
        error,
        mode: match combo.mode {
            ia_bench::Mode::Inference => ResultMode::Inference,
            ia_bench::Mode::Training { .. } => ResultMode::Training,
        },
        gradient_checkpointing: match combo.mode {
            ia_bench::Mode::Inference => None,
            ia_bench::Mode::Training {
                gradient_checkpointing,
            } => Some(gradient_checkpointing),
        },
        ..Default::default()
    };
    let Some(m) = m else { return Ok(base) };
    let l = &m.latency;
    let g = m.generation.as_ref();
    let t = m.training.as_ref();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(PerformanceRecord {
        gradients_mb: t.map(|t| mb(t.memory.gradients)),
        optimizer_state_mb: t.map(|t| mb(t.memory.optimizer_state)),
        activations_mb: t.and_then(|t| t.activations_bytes).map(mb),
        loss_first: t.map(|t| f64::from(t.loss_first)),
        loss_last: t.map(|t| f64::from(t.loss_last)),
        prompt_tokens: g
            .map(|g| column(g.prompt_tokens, "prompt_tokens"))
            .transpose()?,
        new_tokens: g.map(|g| column(g.new_tokens, "new_tokens")).transpose()?,
        ttft_mean_ms: g.map(|g| g.ttft.mean_ms),
        ttft_p50_ms: g.map(|g| g.ttft.p50_ms),
        tpot_p50_ms: g.map(|g| g.tpot.p50_ms),
        tpot_p90_ms: g.map(|g| g.tpot.p90_ms),
        tpot_p90_is_estimate: g.map(|g| g.tpot.p90_is_estimate),
        prefill_tokens_per_s: g.map(|g| g.prefill_tokens_per_s),
        decode_tokens_per_s: g.map(|g| g.decode_tokens_per_s),
        weight_mb: g
            .and_then(|g| g.weight_bytes)
            .or(t.map(|t| t.memory.weights))
            .map(mb),
        greedy_agreement_vs_f32: g.and_then(|g| g.greedy_agreement_vs_f32),
        audio_seconds: m.audio_seconds,
        real_time_factor: m.real_time_factor,
        image_tokens: g
            .and_then(|g| g.image_tokens)
            .map(|t| column(t, "image_tokens"))
            .transpose()?,
        image_encode_ms: g.and_then(|g| g.image_encode_mean_ms),
        engine: m.session.engine.clone(),
        engine_version: m.session.engine_version.clone(),
        // Training in bf16 is autocast over f32 weights: recorded as bf16-mixed.
        precision: t
            .map_or(m.session.precision.as_str(), |t| t.precision.as_str())
            .into(),
        load_time_ms: Some(m.load_time_ms),
        first_inference_ms: Some(m.first_inference_ms),
        warmup_iterations: Some(column(m.warmup_iterations, "warmup_iterations")?),
        iterations: Some(column(l.count, "iterations")?),
        timed_duration_s: Some(m.timed_duration_s),
        latency_mean_ms: Some(l.mean_ms),
        latency_stdev_ms: Some(l.stdev_ms),
        latency_min_ms: Some(l.min_ms),
        latency_max_ms: Some(l.max_ms),
        latency_p50_ms: Some(l.p50_ms),
        latency_p90_ms: Some(l.p90_ms),
        latency_p95_ms: Some(l.p95_ms),
        latency_p99_ms: Some(l.p99_ms),
        p90_is_estimate: Some(l.p90_is_estimate),
        p95_is_estimate: Some(l.p95_is_estimate),
        p99_is_estimate: Some(l.p99_is_estimate),
        throughput_items_per_s: Some(m.throughput_items_per_s),
        throughput_tokens_per_s: m.throughput_tokens_per_s,
        peak_rss_mb: m.peak_rss_bytes.map(|b| b as f64 / (1 << 20) as f64),
        peak_rss_per_combination: Some(m.peak_rss_per_combination),
        harness_overhead_ns: Some(m.harness_overhead_ns).filter(|o| o.is_finite()),
        window_spread: m.window_spread,
        ..base
    })
}

/// A count for an INTEGER column, refused rather than wrapped when it does not fit.
fn column(v: usize, name: &str) -> anyhow::Result<i32> {
    i32::try_from(v).map_err(|_| {
        anyhow::anyhow!(
            "{name} {v} does not fit the results store (at most {})",
            i32::MAX
        )
    })
}
