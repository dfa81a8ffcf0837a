//! Runs sent to the results service by other machines, and the tokens they are sent with.
//!
//! A submission carries exactly the rows the sending machine's own store would hold for the
//! run (its run record, and per combination the model, hardware, result, raw samples,
//! compatibility and browser rows), so a result looks the same whether it was written
//! locally or submitted. It is checked as a whole before anything is written, then stored in
//! one transaction with a row naming the token that sent it; the same idempotency key from
//! the same token stores nothing a second time. Tokens are kept only as their SHA-256.

use crate::records::{CombinationRecords, RunRecord};
use crate::{DbError, QueryResult, Result, Store};
use duckdb::{params, OptionalExt};
use serde::{Deserialize, Serialize};

/// Most combinations one submission may carry.
pub const MAX_RESULTS: usize = 10_000;

/// A whole run, as `bench --submit` sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub run: RunRecord,
    /// completed | failed (some combinations failed) | interrupted
    pub status: String,
    pub results: Vec<CombinationRecords>,
}

impl Submission {
    /// Every reason the submission cannot be stored, first one only: impossible values
    /// (negative or non-finite times, percentiles out of order, samples that disagree with
    /// the result), unknown statuses, fields that must not be empty.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.status.as_str(), "completed" | "failed" | "interrupted") {
            return Err(format!(
                "status '{}' is not completed, failed or interrupted",
                self.status
            ));
        }
        for (what, v) in [
            ("run.command_line", &self.run.command_line),
            ("run.host", &self.run.host),
            ("run.tool_version", &self.run.tool_version),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{what} is empty"));
            }
        }
        if self.results.is_empty() {
            return Err("the run has no results".into());
        }
        if self.results.len() > MAX_RESULTS {
            return Err(format!(
                "{} results in one run (at most {MAX_RESULTS})",
                self.results.len()
            ));
        }
        for (i, c) in self.results.iter().enumerate() {
            c.validate().map_err(|e| format!("results[{i}]: {e}"))?;
        }
        Ok(())
    }
}

impl CombinationRecords {
    fn validate(&self) -> std::result::Result<(), String> {
        let p = &self.performance;
        for (what, v) in [
            ("model.model_name", &self.model.model_name),
            ("hardware.fingerprint", &self.hardware.fingerprint),
            ("hardware.platform", &self.hardware.platform),
            ("performance.engine", &p.engine),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{what} is empty"));
            }
        }
        if !matches!(self.model.weights.as_str(), "trained" | "random") {
            return Err(format!(
                "model.weights '{}' is not trained or random",
                self.model.weights
            ));
        }
        if !matches!(p.status.as_str(), "pass" | "fail" | "unavailable") {
            return Err(format!(
                "performance.status '{}' is not pass, fail or unavailable",
                p.status
            ));
        }
        if p.status != self.compatibility.status {
            return Err(format!(
                "performance.status '{}' and compatibility.status '{}' differ",
                p.status, self.compatibility.status
            ));
        }
        if p.batch_size < 1 {
            return Err(format!(
                "performance.batch_size {} is below 1",
                p.batch_size
            ));
        }
        if self.model.parameter_count < 0 {
            return Err("model.parameter_count is negative".into());
        }
        serde_json::from_str::<serde_json::Value>(&self.hardware.details_json)
            .map_err(|e| format!("hardware.details_json is not JSON: {e}"))?;
        let times = [
            ("load_time_ms", p.load_time_ms),
            ("first_inference_ms", p.first_inference_ms),
            ("timed_duration_s", p.timed_duration_s),
            ("latency_mean_ms", p.latency_mean_ms),
            ("latency_stdev_ms", p.latency_stdev_ms),
            ("latency_min_ms", p.latency_min_ms),
            ("latency_max_ms", p.latency_max_ms),
            ("latency_p50_ms", p.latency_p50_ms),
            ("latency_p90_ms", p.latency_p90_ms),
            ("latency_p95_ms", p.latency_p95_ms),
            ("latency_p99_ms", p.latency_p99_ms),
            ("throughput_items_per_s", p.throughput_items_per_s),
            ("throughput_tokens_per_s", p.throughput_tokens_per_s),
            ("peak_rss_mb", p.peak_rss_mb),
            ("ttft_mean_ms", p.ttft_mean_ms),
            ("ttft_p50_ms", p.ttft_p50_ms),
            ("tpot_p50_ms", p.tpot_p50_ms),
            ("tpot_p90_ms", p.tpot_p90_ms),
            ("prefill_tokens_per_s", p.prefill_tokens_per_s),
            ("decode_tokens_per_s", p.decode_tokens_per_s),
            ("weight_mb", p.weight_mb),
            ("audio_seconds", p.audio_seconds),
            ("real_time_factor", p.real_time_factor),
            ("image_encode_ms", p.image_encode_ms),
            ("gradients_mb", p.gradients_mb),
            ("optimizer_state_mb", p.optimizer_state_mb),
            ("activations_mb", p.activations_mb),
            ("window_spread", p.window_spread),
        ];
        for (what, v) in times {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!("performance.{what} is {v}"));
                }
            }
        }
        let order = [
            ("latency_min_ms", p.latency_min_ms),
            ("latency_p50_ms", p.latency_p50_ms),
            ("latency_p90_ms", p.latency_p90_ms),
            ("latency_p95_ms", p.latency_p95_ms),
            ("latency_p99_ms", p.latency_p99_ms),
            ("latency_max_ms", p.latency_max_ms),
        ];
        let present: Vec<(&str, f64)> = order
            .iter()
            .filter_map(|(n, v)| v.map(|v| (*n, v)))
            .collect();
        for w in present.windows(2) {
            // Percentiles from the same samples are ordered; a rounding hair is tolerated.
            if w[0].1 > w[1].1 * (1.0 + 1e-9) + 1e-9 {
                return Err(format!(
                    "performance.{} ({}) is above performance.{} ({})",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ));
            }
        }
        if let Some(bad) = self.samples_ms.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(format!("samples_ms holds {bad}"));
        }
        if p.status == "pass" {
            if self.samples_ms.is_empty() {
                return Err("a passing result has no samples_ms".into());
            }
            if p.iterations
                .is_some_and(|n| n as usize != self.samples_ms.len())
            {
                return Err(format!(
                    "performance.iterations is {:?} but samples_ms holds {}",
                    p.iterations,
                    self.samples_ms.len()
                ));
            }
        } else if !self.samples_ms.is_empty() {
            return Err(format!("a {} result has samples_ms", p.status));
        }
        Ok(())
    }
}

/// What a stored submission became.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub run_id: i64,
    pub results: usize,
    /// The same token already submitted this idempotency key: nothing was stored again.
    pub duplicate: bool,
}

/// A token as the store knows it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub token_id: i64,
    pub name: String,
    /// read | submit
    pub scope: String,
    /// Why the token is not valid now (revoked, expired), None when it is.
    pub invalid: Option<String>,
}

impl Store {
    /// Stores a new token (given as its SHA-256 and first characters); returns its id.
    pub fn create_token(
        &mut self,
        name: &str,
        sha256: &str,
        prefix: &str,
        scope: &str,
        expires_days: Option<u32>,
    ) -> Result<i64> {
        let taken: i64 = self.connection().query_row(
            "SELECT count(*) FROM api_tokens WHERE name = ? AND revoked_at IS NULL",
            params![name],
            |r| r.get(0),
        )?;
        if taken > 0 {
            return Err(DbError::Request(format!(
                "a token named '{name}' exists and is not revoked (revoke it first, or choose another name)"
            )));
        }
        let expires = match expires_days {
            Some(_) => "now() + to_days(CAST(? AS INTEGER))",
            None => "CAST(? AS TIMESTAMP)",
        };
        Ok(self.connection().query_row(
            &format!(
                "INSERT INTO api_tokens (name, token_sha256, prefix, scope, created_at, expires_at)
                 VALUES (?, ?, ?, ?, now(), {expires}) RETURNING token_id"
            ),
            params![name, sha256, prefix, scope, expires_days],
            |r| r.get(0),
        )?)
    }

    /// Every token, without its secret.
    pub fn list_tokens(&self) -> Result<QueryResult> {
        crate::query::run(
            self.connection(),
            "SELECT t.token_id AS id, t.name, t.prefix || '…' AS token, t.scope,
                    strftime(t.created_at, '%Y-%m-%d %H:%M') AS created,
                    coalesce(strftime(t.expires_at, '%Y-%m-%d %H:%M'), 'never') AS expires,
                    CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
                         WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN 'expired'
                         ELSE 'valid' END AS state,
                    coalesce(strftime(t.last_used_at, '%Y-%m-%d %H:%M'), '') AS last_used,
                    (SELECT count(*) FROM submissions s WHERE s.token_id = t.token_id) AS submissions
             FROM api_tokens t ORDER BY t.token_id",
        )
    }

    /// Revokes the valid tokens named `name` (or with id `name`); returns how many.
    pub fn revoke_token(&mut self, name: &str) -> Result<usize> {
        let id: Option<i64> = name.parse().ok();
        Ok(self.connection().execute(
            "UPDATE api_tokens SET revoked_at = now()
             WHERE revoked_at IS NULL AND (name = ? OR token_id = ?)",
            params![name, id],
        )?)
    }

    /// The token whose SHA-256 is `sha256`, with why it is not valid (if so); records the use.
    pub fn token_by_hash(&mut self, sha256: &str) -> Result<Option<TokenRecord>> {
        let token = self
            .connection()
            .query_row(
                "SELECT token_id, name, scope,
                        CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                             WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
                        END
                 FROM api_tokens WHERE token_sha256 = ?",
                params![sha256],
                |r| {
                    Ok(TokenRecord {
                        token_id: r.get(0)?,
                        name: r.get(1)?,
                        scope: r.get(2)?,
                        invalid: r.get(3)?,
                    })
                },
            )
            .optional()?;
        if let Some(t) = token.as_ref().filter(|t| t.invalid.is_none()) {
            self.connection().execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE token_id = ?",
                params![t.token_id],
            )?;
        }
        Ok(token)
    }

    /// Stores a validated submission in one transaction: the run, every combination and the
    /// submission row, or nothing. A key the token already used returns the first receipt.
    pub fn record_submission(
        &mut self,
        submission: &Submission,
        token_id: i64,
        idempotency_key: Option<&str>,
        content_sha256: &str,
    ) -> Result<Receipt> {
        submission.validate().map_err(DbError::Request)?;
        let tx = self.conn.transaction()?;
        if let Some(key) = idempotency_key {
            let earlier: Option<(i64, i32)> = tx
                .query_row(
                    "SELECT run_id, results FROM submissions
                     WHERE token_id = ? AND idempotency_key = ?",
                    params![token_id, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((run_id, results)) = earlier {
                return Ok(Receipt {
                    run_id,
                    results: results as usize,
                    duplicate: true,
                });
            }
        }
        let r = &submission.run;
        let run_id: i64 = tx.query_row(
            "INSERT INTO runs (started_at, ended_at, git_commit, command_line, host, tool_version, status)
             VALUES (now(), now(), ?, ?, ?, ?, ?) RETURNING run_id",
            params![r.git_commit, r.command_line, r.host, r.tool_version, submission.status],
            |row| row.get(0),
        )?;
        let (_, learned) =
            crate::insert_combinations(&tx, &self.known_ids, run_id, &submission.results)?;
        tx.execute(
            "INSERT INTO submissions (token_id, idempotency_key, run_id, results, content_sha256, received_at)
             VALUES (?, ?, ?, ?, ?, now())",
            params![
                token_id,
                idempotency_key,
                run_id,
                submission.results.len() as i64,
                content_sha256
            ],
        )?;
        tx.commit()?;
        self.known_ids.extend(learned);
        Ok(Receipt {
            run_id,
            results: submission.results.len(),
            duplicate: false,
        })
    }
}
