//! Prometheus metrics of the server, rendered in the text exposition format at `/metrics`:
//! requests per route and status, request durations, queue sizes, batch sizes, generated
//! tokens, decode rate and time to first token.

use crate::worker::GenerationSummary;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct State {
    /// (route, method, status) -> count
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<String, Histogram>,
    queued: BTreeMap<String, i64>,
    batches: BTreeMap<String, Histogram>,
    generated_tokens: BTreeMap<String, u64>,
    ttft: BTreeMap<String, Histogram>,
    decode_rate: BTreeMap<String, f64>,
}

/// The server's counters, shared by the handlers and the workers.
#[derive(Default)]
pub struct Metrics(Mutex<State>);

/// Label values escaped as the exposition format wants them.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.with(|s| {
            *s.requests
                .entry((route.into(), method.into(), status))
                .or_default() += 1;
            s.durations
                .entry(route.into())
                .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                .observe(seconds);
        })
    }

    /// A request entered `model`'s queue.
    pub fn queued(&self, model: &str) {
        self.with(|s| *s.queued.entry(model.into()).or_default() += 1)
    }

    /// A worker took a request off `model`'s queue.
    pub fn queue_left(&self, model: &str) {
        self.with(|s| {
            let q = s.queued.entry(model.into()).or_default();
            *q = (*q - 1).max(0);
        })
    }

    pub fn queue_size(&self, model: &str) -> i64 {
        self.with(|s| s.queued.get(model).copied().unwrap_or(0))
    }

    /// A batch of `size` inputs went through `model`.
    pub fn batch(&self, model: &str, size: usize) {
        self.with(|s| {
            s.batches
                .entry(model.into())
                .or_insert_with(|| Histogram::new(BATCH_BUCKETS))
                .observe(size as f64)
        })
    }

    pub fn generation(&self, model: &str, g: &GenerationSummary) {
        self.with(|s| {
            *s.generated_tokens.entry(model.into()).or_default() += g.completion_tokens as u64;
            s.ttft
                .entry(model.into())
                .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                .observe(g.time_to_first_token_ms / 1e3);
            if let Some(r) = g.decode_tokens_per_s {
                s.decode_rate.insert(model.into(), r);
            }
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            out.push_str("# HELP ia_requests_total HTTP requests by route, method and status.\n# TYPE ia_requests_total counter\n");
            for ((route, method, status), n) in &s.requests {
                let _ = writeln!(
                    out,
                    "ia_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    label(route)
                );
            }
            out.push_str("# HELP ia_request_duration_seconds Time from request to response headers (streams: to the first byte).\n# TYPE ia_request_duration_seconds histogram\n");
            for (route, h) in &s.durations {
                h.render(
                    &mut out,
                    "ia_request_duration_seconds",
                    &format!("route=\"{}\"", label(route)),
                );
            }
            out.push_str("# HELP ia_queue_size Requests waiting for a model's worker.\n# TYPE ia_queue_size gauge\n");
            for (model, n) in &s.queued {
                let _ = writeln!(out, "ia_queue_size{{model=\"{}\"}} {n}", label(model));
            }
            out.push_str("# HELP ia_batch_size Inputs per forward pass of a model's worker.\n# TYPE ia_batch_size histogram\n");
            for (model, h) in &s.batches {
                h.render(&mut out, "ia_batch_size", &format!("model=\"{}\"", label(model)));
            }
            out.push_str("# HELP ia_generated_tokens_total Tokens generated.\n# TYPE ia_generated_tokens_total counter\n");
            for (model, n) in &s.generated_tokens {
                let _ = writeln!(out, "ia_generated_tokens_total{{model=\"{}\"}} {n}", label(model));
            }
            out.push_str("# HELP ia_decode_tokens_per_second Decode rate of the latest generation.\n# TYPE ia_decode_tokens_per_second gauge\n");
            for (model, r) in &s.decode_rate {
                let _ = writeln!(out, "ia_decode_tokens_per_second{{model=\"{}\"}} {r}", label(model));
            }
            out.push_str("# HELP ia_time_to_first_token_seconds Prefill plus the first token, in the worker.\n# TYPE ia_time_to_first_token_seconds histogram\n");
            for (model, h) in &s.ttft {
                h.render(
                    &mut out,
                    "ia_time_to_first_token_seconds",
                    &format!("model=\"{}\"", label(model)),
                );
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::default();
        m.request("/v1/embeddings", "POST", 200, 0.004);
        m.request("/v1/embeddings", "POST", 200, 0.2);
        m.batch("bert", 3);
        m.queued("bert");
        let text = m.render();
        assert!(text.contains(
            "ia_requests_total{route=\"/v1/embeddings\",method=\"POST\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "ia_request_duration_seconds_bucket{route=\"/v1/embeddings\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("ia_batch_size_bucket{model=\"bert\",le=\"4\"} 1"));
        assert!(text.contains("ia_queue_size{model=\"bert\"} 1"));
    }
}
