//! The DuckDB store behind the results service's routes (`serve --db-path`): reads through
//! `ia_db::api` and the `db report` renderer, submissions through
//! `Store::record_submission`, tokens checked by their SHA-256.

use crate::analysis::{self, CompareArgs, SeriesArgs};
use ia_db::charts::ChartFilter;
use ia_db::report::{ReportKind, ReportOptions};
use ia_db::submissions::{Submission, TokenRecord};
use ia_db::{DbError, OutputFormat, Store};
use ia_serve::results::{Caller, Filters, ReadQuery, ResultsStore, StoreError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub struct DuckResults {
    store: Store,
    /// Tokens checked in the last minute, by hash. Tokens do not change while the server
    /// runs (it holds the file's lock: `tokens create|revoke` wait for it to stop), but they
    /// expire; re-checking each token once a minute catches that and records its last use,
    /// where checking on every read would make each read a write transaction.
    checked: std::collections::HashMap<String, (TokenRecord, std::time::Instant)>,
}

/// How long a token check holds.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl DuckResults {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            checked: Default::default(),
        }
    }

    fn token(&mut self, hash: &str) -> Result<Option<TokenRecord>, DbError> {
        if let Some((record, at)) = self.checked.get(hash) {
            if at.elapsed() < RECHECK_AFTER {
                return Ok(Some(record.clone()));
            }
        }
        let found = self.store.token_by_hash(hash)?;
        match &found {
            Some(record) => {
                self.checked.insert(
                    hash.to_string(),
                    (record.clone(), std::time::Instant::now()),
                );
            }
            None => {
                self.checked.remove(hash);
            }
        }
        Ok(found)
    }
}

/// The SHA-256 of a token, hex: what the store keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn filter(f: &Filters) -> ChartFilter {
    ChartFilter {
        model: f.model.clone(),
        platform: f.platform.clone(),
        precision: f.precision.clone(),
        run: f.run,
        class: f.class.clone(),
        engine: f.engine.clone(),
        batch_size: f.batch_size,
        since: f.since.clone(),
        until: f.until.clone(),
        fingerprint: f.fingerprint.clone(),
    }
}

fn store_error(e: DbError) -> StoreError {
    match e {
        DbError::NoMatchingRows(m) => StoreError::NotFound(format!("no stored results match: {m}")),
        DbError::Request(m) => StoreError::BadRequest(m),
        // A filter value DuckDB cannot read (a malformed date) is the request's fault.
        DbError::Sql(m) if m.contains("Conversion Error") => StoreError::BadRequest(m),
        other => StoreError::Failed(other.to_string()),
    }
}

fn rows(q: ia_db::QueryResult) -> Value {
    q.json_rows()
}

impl ResultsStore for DuckResults {
    fn authenticate(&mut self, token: &str) -> Result<Caller, String> {
        let found = self
            .token(&token_hash(token))
            .map_err(|e| format!("the token could not be checked: {e}"))?;
        match found {
            None => Err("unknown token".into()),
            Some(t) => match t.invalid {
                Some(why) => Err(format!("the token '{}' is {why}", t.name)),
                None => Ok(Caller {
                    token_id: t.token_id,
                    can_submit: t.scope == "submit",
                    name: t.name,
                }),
            },
        }
    }

    fn read(&mut self, query: &ReadQuery) -> Result<Value, StoreError> {
        let limit = |f: &Filters| f.limit.unwrap_or(ia_db::api::MAX_ROWS);
        match query {
            ReadQuery::Results(f) => ia_db::api::results(&self.store, &filter(f), limit(f))
                .map(rows)
                .map_err(store_error),
            ReadQuery::Samples(id) => match ia_db::api::samples(&self.store, *id) {
                Ok(Some(q)) => Ok(rows(q)),
                Ok(None) => Err(StoreError::NotFound(format!("no result {id}"))),
                Err(e) => Err(store_error(e)),
            },
            ReadQuery::Runs(f) => ia_db::api::runs(&self.store, limit(f))
                .map(rows)
                .map_err(store_error),
            ReadQuery::Hardware => ia_db::api::hardware(&self.store)
                .map(rows)
                .map_err(store_error),
            ReadQuery::Report(kind, f) => {
                let kind: ReportKind = kind.parse().map_err(StoreError::NotFound)?;
                let options = ReportOptions {
                    filter: filter(f),
                    include_simulated: false,
                };
                let text = ia_db::report::render(&self.store, kind, OutputFormat::Json, &options)
                    .map_err(store_error)?;
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Failed(format!("the report is not JSON: {e}")))
            }
            ReadQuery::ReportSections(kind, f) => {
                let kind: ReportKind = kind.parse().map_err(StoreError::NotFound)?;
                let options = ReportOptions {
                    filter: filter(f),
                    include_simulated: false,
                };
                let tables =
                    ia_db::report::tables(&self.store, kind, &options).map_err(store_error)?;
                Ok(tables
                    .into_iter()
                    .map(|(heading, rows)| {
                        json!({"heading": heading, "columns": rows.columns,
                               "rows": rows.json_rows()})
                    })
                    .collect())
            }
            ReadQuery::Chart(kind, f) => {
                let kind: ia_charts::Kind = kind.parse().map_err(StoreError::NotFound)?;
                let chart =
                    ia_db::charts::chart(&self.store, kind, &filter(f)).map_err(store_error)?;
                serde_json::to_value(&chart).map_err(|e| StoreError::Failed(e.to_string()))
            }
            ReadQuery::Compatibility(f) => {
                let cells = ia_db::api::compatibility(&self.store, &filter(f))
                    .map(rows)
                    .map_err(store_error)?;
                // Every class of the catalog, once, in its order: rows with no result show
                // as not tried.
                let mut classes: Vec<&str> = vec![];
                for entry in ia_models::catalog::CATALOG {
                    if !classes.contains(&entry.class.as_str()) {
                        classes.push(entry.class.as_str());
                    }
                }
                Ok(
                    json!({"classes": classes, "platforms": ia_db::report::PLATFORMS,
                          "cells": cells}),
                )
            }
            ReadQuery::Analysis(kind, q) => {
                let answer = match kind.as_str() {
                    "trend" => {
                        let args = SeriesArgs::from_query(q).map_err(StoreError::BadRequest)?;
                        analysis::trend_rows(&self.store, &args).map(Value::from)
                    }
                    "regressions" => {
                        let args = SeriesArgs::from_query(q).map_err(StoreError::BadRequest)?;
                        analysis::regression_report(&self.store, &args)
                    }
                    "compare" => {
                        let args = CompareArgs::from_query(q).map_err(StoreError::BadRequest)?;
                        analysis::comparison(&self.store, &args)
                    }
                    other => {
                        return Err(StoreError::NotFound(format!(
                            "unknown analysis '{other}' (trend, regressions, compare)"
                        )))
                    }
                };
                // The analyses fail only for what they were asked: nothing matches, runs
                // without samples in common.
                answer.map_err(|e| StoreError::NotFound(format!("{e:#}")))
            }
        }
    }

    fn submit(
        &mut self,
        caller: &Caller,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> Result<Value, StoreError> {
        let submission: Submission = serde_json::from_slice(body).map_err(|e| {
            StoreError::BadRequest(format!("the run is not a valid submission: {e}"))
        })?;
        let content = hex::encode(Sha256::digest(body));
        let receipt = self
            .store
            .record_submission(&submission, caller.token_id, idempotency_key, &content)
            .map_err(store_error)?;
        tracing::info!(
            token = %caller.name,
            run = receipt.run_id,
            results = receipt.results,
            duplicate = receipt.duplicate,
            "submission"
        );
        serde_json::to_value(&receipt).map_err(|e| StoreError::Failed(e.to_string()))
    }
}
