//! The versioned schema. Migration N brings the store from version N-1 to N;
//! `schema_version` records what has been applied. All the migrations a store needs run in one
//! transaction, so a store is at its old version or the new one, never in between.

use crate::{DbError, Result};
use duckdb::Connection;
use std::path::Path;

pub const CURRENT_VERSION: i64 = 13;

/// Every table of the current schema.
pub const TABLES: [&str; 14] = [
    "schema_version",
    "runs",
    "hardware_platforms",
    "models",
    "performance_results",
    "raw_samples",
    "compatibility_results",
    "web_results",
    "calibrations",
    "legacy_files",
    "legacy_results",
    "legacy_samples",
    "api_tokens",
    "submissions",
];

/// MIGRATIONS[i] upgrades from version i to i + 1.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE seq_run_id START 1;
CREATE SEQUENCE seq_hardware_id START 1;
CREATE SEQUENCE seq_model_id START 1;
CREATE SEQUENCE seq_result_id START 1;
CREATE SEQUENCE seq_compat_id START 1;

CREATE TABLE runs (
    run_id        BIGINT PRIMARY KEY DEFAULT nextval('seq_run_id'),
    started_at    TIMESTAMP NOT NULL,
    ended_at      TIMESTAMP,
    git_commit    VARCHAR,
    command_line  VARCHAR NOT NULL,
    host          VARCHAR NOT NULL,
    tool_version  VARCHAR NOT NULL,
    -- running | completed | interrupted
    status        VARCHAR NOT NULL
);

CREATE TABLE hardware_platforms (
    hardware_id   BIGINT PRIMARY KEY DEFAULT nextval('seq_hardware_id'),
    fingerprint   VARCHAR NOT NULL,
    platform      VARCHAR NOT NULL,
    device        VARCHAR NOT NULL,
    host          VARCHAR NOT NULL,
    cpu_model     VARCHAR NOT NULL,
    details       JSON NOT NULL,
    UNIQUE (fingerprint, platform, device)
);

CREATE TABLE models (
    model_id        BIGINT PRIMARY KEY DEFAULT nextval('seq_model_id'),
    model_name      VARCHAR NOT NULL,
    class           VARCHAR NOT NULL,
    family          VARCHAR NOT NULL,
    task            VARCHAR NOT NULL,
    modality        VARCHAR NOT NULL,
    parameter_count BIGINT NOT NULL,
    -- checkpoint folder, or random-init(seed=N)
    source          VARCHAR NOT NULL,
    -- trained | random
    weights         VARCHAR NOT NULL
);

CREATE TABLE performance_results (
    result_id             BIGINT PRIMARY KEY DEFAULT nextval('seq_result_id'),
    run_id                BIGINT NOT NULL REFERENCES runs(run_id),
    model_id              BIGINT NOT NULL REFERENCES models(model_id),
    hardware_id           BIGINT NOT NULL REFERENCES hardware_platforms(hardware_id),
    engine                VARCHAR NOT NULL,
    engine_version        VARCHAR NOT NULL,
    device                VARCHAR NOT NULL,
    precision             VARCHAR NOT NULL,
    scenario              VARCHAR NOT NULL,
    batch_size            INTEGER NOT NULL,
    seq_len               INTEGER,
    -- pass | fail | unavailable
    status                VARCHAR NOT NULL,
    error                 VARCHAR,
    load_time_ms          DOUBLE,
    first_inference_ms    DOUBLE,
    warmup_iterations     INTEGER,
    iterations            INTEGER,
    timed_duration_s      DOUBLE,
    latency_mean_ms       DOUBLE,
    latency_stdev_ms      DOUBLE,
    latency_min_ms        DOUBLE,
    latency_max_ms        DOUBLE,
    latency_p50_ms        DOUBLE,
    latency_p90_ms        DOUBLE,
    latency_p95_ms        DOUBLE,
    latency_p99_ms        DOUBLE,
    p90_is_estimate       BOOLEAN,
    p95_is_estimate       BOOLEAN,
    p99_is_estimate       BOOLEAN,
    throughput_items_per_s  DOUBLE,
    throughput_tokens_per_s DOUBLE,
    peak_rss_mb           DOUBLE,
    peak_rss_per_combination BOOLEAN,
    harness_overhead_ns   DOUBLE,
    created_at            TIMESTAMP NOT NULL
);

CREATE TABLE raw_samples (
    result_id   BIGINT NOT NULL REFERENCES performance_results(result_id),
    iteration   INTEGER NOT NULL,
    latency_ms  DOUBLE NOT NULL
);

CREATE TABLE compatibility_results (
    compat_id   BIGINT PRIMARY KEY DEFAULT nextval('seq_compat_id'),
    run_id      BIGINT NOT NULL REFERENCES runs(run_id),
    model_id    BIGINT NOT NULL REFERENCES models(model_id),
    hardware_id BIGINT NOT NULL REFERENCES hardware_platforms(hardware_id),
    platform    VARCHAR NOT NULL,
    engine      VARCHAR NOT NULL,
    precision   VARCHAR NOT NULL,
    -- pass | fail | unavailable
    status      VARCHAR NOT NULL,
    error       VARCHAR,
    created_at  TIMESTAMP NOT NULL
);
"#,
    // 2: text-generation metrics (optimum-benchmark definitions).
    r#"
ALTER TABLE performance_results ADD COLUMN prompt_tokens INTEGER;
ALTER TABLE performance_results ADD COLUMN new_tokens INTEGER;
ALTER TABLE performance_results ADD COLUMN ttft_mean_ms DOUBLE;
ALTER TABLE performance_results ADD COLUMN ttft_p50_ms DOUBLE;
ALTER TABLE performance_results ADD COLUMN tpot_p50_ms DOUBLE;
ALTER TABLE performance_results ADD COLUMN tpot_p90_ms DOUBLE;
ALTER TABLE performance_results ADD COLUMN tpot_p90_is_estimate BOOLEAN;
ALTER TABLE performance_results ADD COLUMN prefill_tokens_per_s DOUBLE;
ALTER TABLE performance_results ADD COLUMN decode_tokens_per_s DOUBLE;
ALTER TABLE performance_results ADD COLUMN weight_mb DOUBLE;
ALTER TABLE performance_results ADD COLUMN greedy_agreement_vs_f32 DOUBLE;
"#,
    // 3: audio models: seconds of audio per input and real-time factor (compute / audio time).
    r#"
ALTER TABLE performance_results ADD COLUMN audio_seconds DOUBLE;
ALTER TABLE performance_results ADD COLUMN real_time_factor DOUBLE;
"#,
    // 4: how a browser result was obtained (one row per web result).
    r#"
CREATE TABLE web_results (
    result_id             BIGINT PRIMARY KEY REFERENCES performance_results(result_id),
    browser               VARCHAR NOT NULL,
    browser_version       VARCHAR NOT NULL,
    user_agent            VARCHAR NOT NULL,
    -- the execution provider asked for: wasm | webgpu | webnn
    requested_ep          VARCHAR NOT NULL,
    -- where onnxruntime-web placed the nodes (its log), e.g. webgpu+wasm
    executed_ep           VARCHAR NOT NULL,
    -- the requested EP ran no node: everything fell back to wasm
    fell_back             BOOLEAN NOT NULL,
    node_placement        JSON NOT NULL,
    adapter_vendor        VARCHAR,
    adapter_architecture  VARCHAR,
    adapter_description   VARCHAR,
    adapter_is_fallback   BOOLEAN,
    adapter_features      VARCHAR,
    webnn_device          VARCHAR,
    wasm_threads          INTEGER NOT NULL,
    cross_origin_isolated BOOLEAN NOT NULL,
    precompiled           BOOLEAN NOT NULL,
    precompile_ms         DOUBLE,
    parallel_load         BOOLEAN NOT NULL,
    -- each part's session creation time, ms: [["text_model", 12.3], ...]
    part_load_ms          JSON NOT NULL
);
"#,
    // 5: a parallel load fetches a model's parts together; whether their sessions were also
    // created at the same time (ONNX Runtime's WebGPU EP makes one at a time). The browser's
    // memory: peak resident set of its renderer and of its GPU process (Linux /proc), over a
    // browser started for the combination. NULL before v5.
    r#"
ALTER TABLE web_results ADD COLUMN concurrent_sessions BOOLEAN;
ALTER TABLE web_results ADD COLUMN renderer_peak_rss_bytes BIGINT;
ALTER TABLE web_results ADD COLUMN gpu_process_peak_rss_bytes BIGINT;
"#,
    // 6: the process that runs a run, so that a run whose process was killed outright
    // (SIGKILL, power loss) is marked interrupted by the next program that writes the store
    // on that host, instead of staying `running`. NULL before v6.
    r#"
ALTER TABLE runs ADD COLUMN pid BIGINT;
"#,
    // 7: hardware calibration (`hardware --calibrate`): what each engine sustains on a dense
    // matrix product per precision, and the memory bandwidth, per hardware platform row.
    r#"
CREATE SEQUENCE seq_calibration_id START 1;
CREATE TABLE calibrations (
    calibration_id BIGINT PRIMARY KEY DEFAULT nextval('seq_calibration_id'),
    hardware_id    BIGINT NOT NULL REFERENCES hardware_platforms(hardware_id),
    engine         VARCHAR NOT NULL,
    engine_version VARCHAR NOT NULL,
    -- matmul (FLOP/s) | memory-bandwidth (bytes/s)
    kind           VARCHAR NOT NULL,
    precision      VARCHAR,
    -- n of the n x n product, or bytes of each triad array
    size           BIGINT NOT NULL,
    value          DOUBLE NOT NULL,
    samples        INTEGER NOT NULL,
    created_at     TIMESTAMP NOT NULL
);
"#,
    // 8: no foreign keys. DuckDB cannot delete a referencing row and the row it references in
    // one transaction (its foreign-key indexes do not see deletes until commit), so runs could
    // not be purged whole; and each appended raw sample paid an index probe. The tables that
    // referenced others are rebuilt without REFERENCES (same columns, same order, same
    // keys); the writers keep the references right (a combination checks its run inside its
    // transaction) and `db maintain --check-integrity` counts orphans.
    r#"
CREATE TABLE raw_samples_v8 (
    result_id   BIGINT NOT NULL,
    iteration   INTEGER NOT NULL,
    latency_ms  DOUBLE NOT NULL
);
INSERT INTO raw_samples_v8 SELECT * FROM raw_samples;
DROP TABLE raw_samples;
CREATE TABLE web_results_v8 (
    result_id             BIGINT PRIMARY KEY,
    browser               VARCHAR NOT NULL,
    browser_version       VARCHAR NOT NULL,
    user_agent            VARCHAR NOT NULL,
    requested_ep          VARCHAR NOT NULL,
    executed_ep           VARCHAR NOT NULL,
    fell_back             BOOLEAN NOT NULL,
    node_placement        JSON NOT NULL,
    adapter_vendor        VARCHAR,
    adapter_architecture  VARCHAR,
    adapter_description   VARCHAR,
    adapter_is_fallback   BOOLEAN,
    adapter_features      VARCHAR,
    webnn_device          VARCHAR,
    wasm_threads          INTEGER NOT NULL,
    cross_origin_isolated BOOLEAN NOT NULL,
    precompiled           BOOLEAN NOT NULL,
    precompile_ms         DOUBLE,
    parallel_load         BOOLEAN NOT NULL,
    part_load_ms          JSON NOT NULL,
    concurrent_sessions   BOOLEAN,
    renderer_peak_rss_bytes BIGINT,
    gpu_process_peak_rss_bytes BIGINT
);
INSERT INTO web_results_v8 SELECT * FROM web_results;
DROP TABLE web_results;
CREATE TABLE performance_results_v8 (
    result_id             BIGINT PRIMARY KEY DEFAULT nextval('seq_result_id'),
    run_id                BIGINT NOT NULL,
    model_id              BIGINT NOT NULL,
    hardware_id           BIGINT NOT NULL,
    engine                VARCHAR NOT NULL,
    engine_version        VARCHAR NOT NULL,
    device                VARCHAR NOT NULL,
    precision             VARCHAR NOT NULL,
    scenario              VARCHAR NOT NULL,
    batch_size            INTEGER NOT NULL,
    seq_len               INTEGER,
    status                VARCHAR NOT NULL,
    error                 VARCHAR,
    load_time_ms          DOUBLE,
    first_inference_ms    DOUBLE,
    warmup_iterations     INTEGER,
    iterations            INTEGER,
    timed_duration_s      DOUBLE,
    latency_mean_ms       DOUBLE,
    latency_stdev_ms      DOUBLE,
    latency_min_ms        DOUBLE,
    latency_max_ms        DOUBLE,
    latency_p50_ms        DOUBLE,
    latency_p90_ms        DOUBLE,
    latency_p95_ms        DOUBLE,
    latency_p99_ms        DOUBLE,
    p90_is_estimate       BOOLEAN,
    p95_is_estimate       BOOLEAN,
    p99_is_estimate       BOOLEAN,
    throughput_items_per_s  DOUBLE,
    throughput_tokens_per_s DOUBLE,
    peak_rss_mb           DOUBLE,
    peak_rss_per_combination BOOLEAN,
    harness_overhead_ns   DOUBLE,
    created_at            TIMESTAMP NOT NULL,
    prompt_tokens         INTEGER,
    new_tokens            INTEGER,
    ttft_mean_ms          DOUBLE,
    ttft_p50_ms           DOUBLE,
    tpot_p50_ms           DOUBLE,
    tpot_p90_ms           DOUBLE,
    tpot_p90_is_estimate  BOOLEAN,
    prefill_tokens_per_s  DOUBLE,
    decode_tokens_per_s   DOUBLE,
    weight_mb             DOUBLE,
    greedy_agreement_vs_f32 DOUBLE,
    audio_seconds         DOUBLE,
    real_time_factor      DOUBLE
);
INSERT INTO performance_results_v8 SELECT * FROM performance_results;
DROP TABLE performance_results;
CREATE TABLE compatibility_results_v8 (
    compat_id   BIGINT PRIMARY KEY DEFAULT nextval('seq_compat_id'),
    run_id      BIGINT NOT NULL,
    model_id    BIGINT NOT NULL,
    hardware_id BIGINT NOT NULL,
    platform    VARCHAR NOT NULL,
    engine      VARCHAR NOT NULL,
    precision   VARCHAR NOT NULL,
    status      VARCHAR NOT NULL,
    error       VARCHAR,
    created_at  TIMESTAMP NOT NULL
);
INSERT INTO compatibility_results_v8 SELECT * FROM compatibility_results;
DROP TABLE compatibility_results;
CREATE TABLE calibrations_v8 (
    calibration_id BIGINT PRIMARY KEY DEFAULT nextval('seq_calibration_id'),
    hardware_id    BIGINT NOT NULL,
    engine         VARCHAR NOT NULL,
    engine_version VARCHAR NOT NULL,
    kind           VARCHAR NOT NULL,
    precision      VARCHAR,
    size           BIGINT NOT NULL,
    value          DOUBLE NOT NULL,
    samples        INTEGER NOT NULL,
    created_at     TIMESTAMP NOT NULL
);
INSERT INTO calibrations_v8 SELECT * FROM calibrations;
DROP TABLE calibrations;
ALTER TABLE raw_samples_v8 RENAME TO raw_samples;
ALTER TABLE web_results_v8 RENAME TO web_results;
ALTER TABLE performance_results_v8 RENAME TO performance_results;
ALTER TABLE compatibility_results_v8 RENAME TO compatibility_results;
ALTER TABLE calibrations_v8 RENAME TO calibrations;
"#,
    // 9: result files of the Python framework (`db migrate-json`), kept apart from our own
    // measurements: they carry no runtime version or device, often no raw samples, and some
    // are simulated. One row per file (its content hash makes imports idempotent), one per
    // entry, and the raw latencies where the file held them.
    r#"
CREATE SEQUENCE seq_legacy_file_id START 1;
CREATE SEQUENCE seq_legacy_id START 1;
CREATE TABLE legacy_files (
    file_id            BIGINT PRIMARY KEY DEFAULT nextval('seq_legacy_file_id'),
    source_path        VARCHAR NOT NULL,
    content_sha256     VARCHAR NOT NULL UNIQUE,
    format             VARCHAR NOT NULL,
    file_timestamp     TIMESTAMP,
    host               VARCHAR,
    -- comma-separated hardware types the file lists as simulated
    simulated_hardware VARCHAR,
    warning            VARCHAR,
    entries            INTEGER NOT NULL,
    imported_at        TIMESTAMP NOT NULL
);
CREATE TABLE legacy_results (
    legacy_id              BIGINT PRIMARY KEY DEFAULT nextval('seq_legacy_id'),
    file_id                BIGINT NOT NULL,
    -- JSON pointer of the entry inside its file
    entry_path             VARCHAR NOT NULL,
    -- measurement | compatibility | test | progress | comparison
    kind                   VARCHAR NOT NULL,
    model                  VARCHAR,
    family                 VARCHAR,
    hardware               VARCHAR,
    batch_size             INTEGER,
    seq_len                INTEGER,
    precision              VARCHAR,
    detail                 VARCHAR,
    -- ok | failed | skipped | compatible | incompatible | unknown
    status                 VARCHAR NOT NULL,
    error                  VARCHAR,
    implementation_type    VARCHAR,
    simulated              BOOLEAN NOT NULL,
    -- what in the file said so
    simulation_marker      VARCHAR,
    -- false for a verdict ("compatible") that no figure backs
    has_figures            BOOLEAN NOT NULL,
    measured_at            TIMESTAMP,
    samples                INTEGER NOT NULL,
    latency_mean_ms        DOUBLE,
    -- percentiles only from raw samples: NULL when the file held none
    latency_p50_ms         DOUBLE,
    latency_p90_ms         DOUBLE,
    latency_p99_ms         DOUBLE,
    latency_min_ms         DOUBLE,
    latency_max_ms         DOUBLE,
    throughput_items_per_s DOUBLE,
    memory_mb              DOUBLE,
    load_time_s            DOUBLE,
    execution_time_s       DOUBLE,
    iterations             INTEGER,
    -- speedup ratio or improvement percentage of a comparison entry
    relative_value         DOUBLE
);
CREATE TABLE legacy_samples (
    legacy_id  BIGINT NOT NULL,
    iteration  INTEGER NOT NULL,
    latency_ms DOUBLE NOT NULL
);
"#,
    // 10: the results service (`serve --results-only`): the tokens machines submit runs
    // with (only their SHA-256 is kept) and one row per accepted submission, which names the
    // token that sent it and makes a retried submission (same idempotency key) store nothing.
    r#"
CREATE SEQUENCE seq_token_id START 1;
CREATE SEQUENCE seq_submission_id START 1;
CREATE TABLE api_tokens (
    token_id      BIGINT PRIMARY KEY DEFAULT nextval('seq_token_id'),
    name          VARCHAR NOT NULL,
    token_sha256  VARCHAR NOT NULL UNIQUE,
    -- the token's first characters, for people to tell tokens apart
    prefix        VARCHAR NOT NULL,
    -- read | submit (submit also reads)
    scope         VARCHAR NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    expires_at    TIMESTAMP,
    revoked_at    TIMESTAMP,
    last_used_at  TIMESTAMP
);
CREATE TABLE submissions (
    submission_id    BIGINT PRIMARY KEY DEFAULT nextval('seq_submission_id'),
    token_id         BIGINT NOT NULL,
    idempotency_key  VARCHAR,
    run_id           BIGINT NOT NULL,
    results          INTEGER NOT NULL,
    content_sha256   VARCHAR NOT NULL,
    received_at      TIMESTAMP NOT NULL,
    UNIQUE (token_id, idempotency_key)
);
"#,
    // 11: image-text generation: the prompt's image tokens and the time to encode the images
    // (vision tower and projector; part of TTFT).
    r#"
ALTER TABLE performance_results ADD COLUMN image_tokens INTEGER;
ALTER TABLE performance_results ADD COLUMN image_encode_ms DOUBLE;
"#,
    // 12: training benchmarks (`bench --mode training`): one timed iteration is one optimiser
    // step. What the step held, by purpose (weights as weight_mb), whether layers were
    // recomputed in the backward, and the loss of the first and last step. Rows before v12
    // are inference.
    r#"
ALTER TABLE performance_results ADD COLUMN mode VARCHAR NOT NULL DEFAULT 'inference';
ALTER TABLE performance_results ADD COLUMN gradient_checkpointing BOOLEAN;
ALTER TABLE performance_results ADD COLUMN gradients_mb DOUBLE;
ALTER TABLE performance_results ADD COLUMN optimizer_state_mb DOUBLE;
ALTER TABLE performance_results ADD COLUMN activations_mb DOUBLE;
ALTER TABLE performance_results ADD COLUMN loss_first DOUBLE;
ALTER TABLE performance_results ADD COLUMN loss_last DOUBLE;
"#,
    // 13: how far the medians of a timed phase's windows of consecutive iterations differ
    // (whether the machine kept one speed while it ran).
    r#"
ALTER TABLE performance_results ADD COLUMN window_spread DOUBLE;
"#,
];

pub fn has_version_table(conn: &Connection) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

pub fn has_user_tables(conn: &Connection) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

pub fn current_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?)
}

pub fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    migrate_to(conn, path, CURRENT_VERSION)
}

/// Applies the migrations up to `target` (tests build older stores with it).
pub fn migrate_to(conn: &Connection, path: &Path, target: i64) -> Result<()> {
    conn.execute_batch("BEGIN TRANSACTION")?;
    let applied = apply_migrations(conn, path, target);
    match applied {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            DbError::Sql(format!(
                "schema migration failed at commit: {}",
                crate::one_line(&e.to_string())
            ))
        }),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn apply_migrations(conn: &Connection, path: &Path, target: i64) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
    )?;
    let found = current_version(conn)?;
    if found > CURRENT_VERSION {
        return Err(DbError::NewerSchema {
            path: path.into(),
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target as usize)
        .skip(found as usize)
    {
        let to = i as i64 + 1;
        conn.execute_batch(&format!(
            "{sql}; INSERT INTO schema_version (version) VALUES ({to});"
        ))
        .map_err(|e| {
            DbError::Sql(format!(
                "migration to schema version {to} failed: {}",
                crate::one_line(&e.to_string())
            ))
        })?;
    }
    Ok(())
}
