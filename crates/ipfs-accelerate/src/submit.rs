//! `bench --submit URL --token T`: sends the finished run to a results service
//! (`serve --db-path` on another machine). A submission the server cannot take now (down,
//! overloaded, a token it refuses) goes to a local spool and is sent again, before the new
//! run, by the next `bench --submit` to the same URL. Each submission's idempotency key is
//! the SHA-256 of its content, so a re-sent run whose first answer was lost is stored once.

use anyhow::{bail, Context};
use ia_db::submissions::Submission;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

/// Attempts per submission before it is spooled.
const ATTEMPTS: u32 = 3;

/// Where unsent submissions wait: `IPFS_ACCELERATE_SPOOL`, else the user's cache directory.
pub fn spool_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IPFS_ACCELERATE_SPOOL") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("ipfs-accelerate").join("spool")
}

/// A spooled submission: where it was going and what.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    url: String,
    submission: Submission,
}

enum Sent {
    Stored(serde_json::Value),
    /// Worth sending again later (server down, overloaded, token refused).
    Later(String),
}

fn endpoint(url: &str) -> String {
    format!("{}/api/runs", url.trim_end_matches('/'))
}

/// One submission, with retries; an error only for a run the server will never take.
fn send(url: &str, token: &str, body: &[u8], key: &str) -> anyhow::Result<Sent> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << attempt));
        }
        let response = agent
            .post(endpoint(url))
            .header("Content-Type", "application/json")
            .header("Authorization", &format!("Bearer {token}"))
            .header("Idempotency-Key", key)
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                last = format!("{url} did not answer: {e}");
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        match status {
            200 | 201 => {
                return Ok(Sent::Stored(
                    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                ))
            }
            // The token may be renewed, the server may come back: keep the run.
            401 | 403 => return Ok(Sent::Later(format!("{url} refused the token: {message}"))),
            408 | 429 | 500..=599 => last = format!("{url} answered {status}: {message}"),
            _ => bail!("{url} rejected the run ({status}): {message}"),
        }
    }
    Ok(Sent::Later(last))
}

fn key_of(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Sends what the spool holds for `url`, oldest first, until one cannot be sent now.
fn resend_spooled(url: &str, token: &str) -> anyhow::Result<()> {
    let dir = spool_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    for path in files {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the spooled run {}", path.display()))?;
        let spooled: Spooled = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a spooled run", path.display()))?;
        if spooled.url != url {
            continue;
        }
        let body = serde_json::to_vec(&spooled.submission)?;
        match send(url, token, &body, &key_of(&body))? {
            Sent::Stored(receipt) => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the sent run {}", path.display()))?;
                eprintln!(
                    "sent the spooled run {} (server run {})",
                    path.display(),
                    receipt["run_id"]
                );
            }
            Sent::Later(why) => {
                eprintln!("the spooled runs stay in {}: {why}", dir.display());
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sends the spooled runs for `url`, then `submission`; a run that cannot be sent now is
/// spooled. Errors only when the server rejects a run as invalid.
pub fn submit(url: &str, token: &str, submission: Submission) -> anyhow::Result<()> {
    resend_spooled(url, token)?;
    let body = serde_json::to_vec(&submission)?;
    let key = key_of(&body);
    match send(url, token, &body, &key)? {
        Sent::Stored(receipt) => {
            let duplicate = receipt["duplicate"].as_bool().unwrap_or(false);
            eprintln!(
                "submitted {} result(s) to {url}: server run {}{}",
                submission.results.len(),
                receipt["run_id"],
                if duplicate { " (already stored)" } else { "" }
            );
        }
        Sent::Later(why) => {
            let dir = spool_dir();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the spool {}", dir.display()))?;
            let path = dir.join(format!("{key}.json"));
            let spooled = Spooled {
                url: url.to_string(),
                submission,
            };
            // Written aside and renamed: a kill never leaves half a run in the spool.
            let partial = path.with_extension("partial");
            std::fs::write(&partial, serde_json::to_vec(&spooled)?)
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{why}; the run is spooled in {} and goes with the next `bench --submit {url}`",
                path.display()
            );
        }
    }
    Ok(())
}
