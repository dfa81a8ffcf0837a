//! A bounded load test of a running `ipfs-accelerate serve` (loopback): N clients for a fixed
//! time, each sending embedding requests or streamed completions back to back; prints counts
//! per status, zero-5xx check, p50/p99 latency, throughput and (streams) time to the first
//! chunk, as JSON. It stops by itself.
//!
//! usage: load --url http://127.0.0.1:8000 [--embed-model M] [--gen-model G] [--clients 32]
//!        [--seconds 60] [--max-tokens 16] [--key K] [--read PATH,PATH...]
//! With both models, even clients embed and odd ones generate; with one, all do that. With
//! `--read`, every client GETs the given paths in turn instead (the results service's read
//! routes, e.g. `/api/results?limit=100,/api/runs`), with `--key` as the token.

mod common;

use common::{flag, percentile};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    first_chunk_ms: Vec<f64>,
    statuses: BTreeMap<u16, usize>,
    transport_errors: usize,
}

fn main() {
    let url = flag("--url").unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let embed = flag("--embed-model");
    let generate = flag("--gen-model");
    let clients: usize = flag("--clients").map_or(32, |v| v.parse().expect("--clients"));
    let seconds: f64 = flag("--seconds").map_or(60.0, |v| v.parse().expect("--seconds"));
    let max_tokens: usize = flag("--max-tokens").map_or(16, |v| v.parse().expect("--max-tokens"));
    let key = flag("--key");
    let reads: Vec<String> = flag("--read")
        .map(|r| r.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    assert!(
        embed.is_some() || generate.is_some() || !reads.is_empty(),
        "give --embed-model and/or --gen-model, or --read"
    );
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let kind = match (&embed, &generate) {
                _ if !reads.is_empty() => ("read", String::new()),
                (Some(e), Some(g)) => {
                    if i % 2 == 0 {
                        ("embed", e.clone())
                    } else {
                        ("generate", g.clone())
                    }
                }
                (Some(e), None) => ("embed", e.clone()),
                (None, Some(g)) => ("generate", g.clone()),
                (None, None) => unreachable!(),
            };
            let (url, key, reads) = (url.clone(), key.clone(), reads.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into();
                let mut tally = Tally::default();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let (path, body) = match kind.0 {
                        "embed" => (
                            "/v1/embeddings",
                            json!({"model": kind.1,
                                   "input": format!("client {i} sentence {n}: the quick brown fox jumps over the lazy dog")}),
                        ),
                        _ => (
                            "/v1/completions",
                            json!({"model": kind.1, "prompt": format!("Client {i} says"),
                                   "max_tokens": max_tokens, "temperature": 0, "stream": true,
                                   "stop_token_ids": []}),
                        ),
                    };
                    let auth = key.as_ref().map(|k| format!("Bearer {k}"));
                    let t = Instant::now();
                    let sent = if kind.0 == "read" {
                        let mut req = agent.get(format!("{url}{}", reads[n as usize % reads.len()]));
                        if let Some(a) = &auth {
                            req = req.header("Authorization", a);
                        }
                        req.call()
                    } else {
                        let mut req = agent
                            .post(format!("{url}{path}"))
                            .header("Content-Type", "application/json");
                        if let Some(a) = &auth {
                            req = req.header("Authorization", a);
                        }
                        req.send(body.to_string())
                    };
                    match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            *tally.statuses.entry(status).or_default() += 1;
                            let reader = BufReader::new(r.into_body().into_reader());
                            let mut first = None;
                            for line in reader.lines() {
                                let Ok(line) = line else { break };
                                if first.is_none() && line.starts_with("data: ") {
                                    first = Some(t.elapsed().as_secs_f64() * 1e3);
                                }
                            }
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            if status == 200 {
                                tally.latencies_ms.push(ms);
                                tally.first_chunk_ms.extend(first);
                            }
                        }
                        Err(_) => tally.transport_errors += 1,
                    }
                }
                (kind.0, tally)
            })
        })
        .collect();
    let mut by_kind: BTreeMap<&str, Tally> = BTreeMap::new();
    for h in handles {
        let (kind, t) = h.join().expect("client thread");
        let all = by_kind.entry(kind).or_default();
        all.latencies_ms.extend(t.latencies_ms);
        all.first_chunk_ms.extend(t.first_chunk_ms);
        all.transport_errors += t.transport_errors;
        for (s, c) in t.statuses {
            *all.statuses.entry(s).or_default() += c;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let mut report = serde_json::Map::new();
    let mut server_errors = 0;
    for (kind, mut t) in by_kind {
        server_errors += t
            .statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, c)| c)
            .sum::<usize>();
        let ok = t.latencies_ms.len();
        report.insert(
            kind.into(),
            json!({
                "requests": t.statuses.values().sum::<usize>(),
                "statuses": t.statuses.iter().map(|(s, c)| (s.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
                "transport_errors": t.transport_errors,
                "p50_ms": percentile(&mut t.latencies_ms, 0.5),
                "p99_ms": percentile(&mut t.latencies_ms, 0.99),
                "first_chunk_p50_ms": percentile(&mut t.first_chunk_ms, 0.5),
                "throughput_per_s": ok as f64 / wall,
            }),
        );
    }
    report.insert("clients".into(), json!(clients));
    report.insert("seconds".into(), json!(wall));
    report.insert("server_errors_5xx".into(), json!(server_errors));
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).unwrap()
    );
    if server_errors > 0 {
        std::process::exit(1);
    }
}
