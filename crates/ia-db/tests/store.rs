//! The store's guarantees, tested directly.

use ia_db::{
    CombinationRecords, CompatibilityRecord, HardwareRecord, ModelRecord, PerformanceRecord,
    RunRecord, Store,
};

fn records() -> (
    ModelRecord,
    HardwareRecord,
    PerformanceRecord,
    CompatibilityRecord,
) {
    (
        ModelRecord {
            model_name: "m".into(),
            class: "bert".into(),
            family: "embedding".into(),
            task: "feature-extraction".into(),
            modality: "text".into(),
            parameter_count: 10,
            source: "/x".into(),
            weights: "trained".into(),
        },
        HardwareRecord {
            fingerprint: "f".into(),
            platform: "cpu".into(),
            device: "cpu".into(),
            host: "h".into(),
            cpu_model: "c".into(),
            details_json: "{}".into(),
        },
        PerformanceRecord {
            engine: "native".into(),
            engine_version: "v".into(),
            device: "cpu".into(),
            precision: "f32".into(),
            scenario: "single-stream".into(),
            batch_size: 1,
            status: "pass".into(),
            iterations: Some(3),
            ..Default::default()
        },
        CompatibilityRecord {
            platform: "cpu".into(),
            engine: "native".into(),
            precision: "f32".into(),
            status: "pass".into(),
            error: None,
        },
    )
}

/// A new store in a temporary folder (kept alive by the caller) with one run begun.
fn store_with_run() -> (tempfile::TempDir, Store, i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_or_create(&dir.path().join("s.duckdb")).unwrap();
    let run = store
        .begin_run(&RunRecord {
            git_commit: None,
            command_line: "test".into(),
            host: "h".into(),
            tool_version: "0".into(),
        })
        .unwrap();
    (dir, store, run)
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .connection()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn whole(
    m: &ModelRecord,
    h: &HardwareRecord,
    p: &PerformanceRecord,
    samples: &[f64],
    c: &CompatibilityRecord,
) -> CombinationRecords {
    CombinationRecords {
        model: m.clone(),
        hardware: h.clone(),
        performance: p.clone(),
        samples_ms: samples.to_vec(),
        compatibility: c.clone(),
        web: None,
    }
}

#[test]
fn a_combination_is_stored_whole_or_not_at_all() {
    let (_dir, mut store, run) = store_with_run();
    let (m, h, p, c) = records();
    store
        .record_combination(run, &whole(&m, &h, &p, &[1.0, 2.0, 3.0], &c))
        .unwrap();
    assert_eq!(count(&store, "performance_results"), 1);
    assert_eq!(count(&store, "raw_samples"), 3);

    // A run id that does not exist is refused inside the transaction: nothing of the
    // combination, not even its new model, is stored.
    let (mut m2, h2, p2, c2) = records();
    m2.model_name = "other".into();
    assert!(store
        .record_combination(run + 100, &whole(&m2, &h2, &p2, &[4.0], &c2))
        .is_err());
    assert_eq!(count(&store, "models"), 1);
    assert_eq!(count(&store, "performance_results"), 1);
    assert_eq!(count(&store, "raw_samples"), 3);
    assert_eq!(count(&store, "compatibility_results"), 1);

    // The same model and hardware are reused, not duplicated.
    store
        .record_combination(run, &whole(&m, &h, &p, &[1.0], &c))
        .unwrap();
    assert_eq!(count(&store, "models"), 1);
    assert_eq!(count(&store, "hardware_platforms"), 1);
}

#[test]
fn combinations_written_together_keep_their_order_and_share_new_models() {
    let (_dir, mut store, run) = store_with_run();
    let (m, h, p, c) = records();
    // Three results of one new model (it is looked up once, not inserted three times), each
    // with a different batch size and number of samples.
    let batch: Vec<CombinationRecords> = (1..=3)
        .map(|b| {
            let mut p = p.clone();
            p.batch_size = b;
            whole(&m, &h, &p, &vec![b as f64; b as usize], &c)
        })
        .collect();
    let ids = store.record_combinations(run, &batch).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(count(&store, "models"), 1);
    assert_eq!(count(&store, "compatibility_results"), 3);
    for (b, id) in (1..=3).zip(&ids) {
        let r = store
            .query(&format!(
                "SELECT p.batch_size, count(*) AS n, min(s.latency_ms) AS v, \
                 bool_and(p.created_at = c.created_at) AS same_time \
                 FROM performance_results p JOIN raw_samples s USING (result_id) \
                 JOIN compatibility_results c ON c.run_id = p.run_id \
                 WHERE p.result_id = {id} GROUP BY p.batch_size"
            ))
            .unwrap();
        let n = b as usize;
        assert_eq!(
            r.csv(),
            format!("batch_size,n,v,same_time\n{b},{},{b},true\n", 3 * n)
        );
    }

    // A batch for a missing run stores nothing, not even its new model.
    let mut m2 = m.clone();
    m2.model_name = "other".into();
    let other = whole(&m2, &h, &p, &[1.0], &c);
    assert!(store
        .record_combinations(run + 100, &[other.clone(), other])
        .is_err());
    assert_eq!(count(&store, "models"), 1);
    assert_eq!(count(&store, "performance_results"), 3);
    assert_eq!(count(&store, "raw_samples"), 6);
}

#[test]
fn reopening_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.duckdb");
    {
        let mut s = Store::open_or_create(&path).unwrap();
        s.begin_run(&RunRecord {
            git_commit: Some("abc".into()),
            command_line: "x".into(),
            host: "h".into(),
            tool_version: "0".into(),
        })
        .unwrap();
    }
    let s = Store::open_existing(&path).unwrap();
    assert_eq!(count(&s, "runs"), 1);
    // One row per applied migration.
    assert_eq!(count(&s, "schema_version"), ia_db::schema::CURRENT_VERSION);
    let r = s
        .query("SELECT max(version) AS v FROM schema_version")
        .unwrap();
    assert_eq!(r.csv(), format!("v\n{}\n", ia_db::schema::CURRENT_VERSION));
}

#[test]
fn an_older_store_is_migrated_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.duckdb");
    {
        let conn = duckdb::Connection::open(&path).unwrap();
        ia_db::schema::migrate_to(&conn, &path, 1).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (started_at, command_line, host, tool_version, status)
             VALUES (now(), 'old', 'h', '0', 'completed')",
        )
        .unwrap();
    }
    // Reading never migrates: an older store is an error that says how to migrate it.
    let e = Store::open_existing(&path).err().unwrap().to_string();
    assert!(
        e.contains("schema version 1") && e.contains("db migrate"),
        "{e}"
    );
    assert_eq!(
        Store::migrate(&path).unwrap(),
        (1, ia_db::schema::CURRENT_VERSION)
    );
    let s = Store::open_existing(&path).unwrap();
    let r = s
        .query("SELECT (SELECT max(version) FROM schema_version) AS v, (SELECT count(*) FROM runs) AS runs")
        .unwrap();
    assert_eq!(
        r.csv(),
        format!("v,runs\n{},1\n", ia_db::schema::CURRENT_VERSION)
    );
    // The new columns exist.
    s.query("SELECT decode_tokens_per_s, ttft_p50_ms FROM performance_results")
        .unwrap();
}
