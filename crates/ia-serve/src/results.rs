//! The results service: read routes over the benchmark store and `POST /api/runs`, through
//! which other machines submit whole runs with a token (Bencher's and Conbench's shape: one
//! API with tokens in front of one store).
//!
//! The store itself comes from the binary as a [`ResultsStore`] (DuckDB there), so this crate
//! stays free of it. Every call to the store runs on a blocking thread. Submissions and token
//! checks go through one writing store, one at a time: the server is the single writer of
//! the file, and a submission is answered only once its transaction committed. Reads go to
//! reading connections in turn.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Who presented a token, as the store knows them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: i64,
    pub name: String,
    pub can_submit: bool,
}

/// Filters of the read routes (each optional; all given must hold).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filters {
    /// Part of the model name (case-insensitive).
    pub model: Option<String>,
    /// Model class: bert, llama, vit, ...
    pub class: Option<String>,
    /// A platform (cpu, cuda, wasm, ...) or an engine name.
    pub platform: Option<String>,
    pub engine: Option<String>,
    pub precision: Option<String>,
    pub batch_size: Option<i32>,
    pub run: Option<i64>,
    /// From this time on (`YYYY-MM-DD[ HH:MM[:SS]]`, UTC).
    pub since: Option<String>,
    /// Before this time.
    pub until: Option<String>,
    /// Hardware fingerprint, or its start.
    pub fingerprint: Option<String>,
    /// Most rows (default and ceiling 10000).
    pub limit: Option<usize>,
}

/// Parameters of the analysis routes, checked by the store as the CLI checks its flags.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalysisParams {
    /// trend, regressions: p50 (default), throughput, ttft, decode, memory
    pub metric: Option<String>,
    /// trend, regressions: part of the model name
    pub model: Option<String>,
    /// trend, regressions: platform
    pub platform: Option<String>,
    /// trend, regressions: points per window of the change-point search (default 64)
    pub window: Option<String>,
    /// trend, regressions: p-value threshold (default 0.001)
    pub p_value: Option<String>,
    /// trend, regressions: smallest change of the mean, 0.05 or 5% (default 0)
    pub min_magnitude: Option<String>,
    /// compare: the baseline run
    pub baseline: Option<String>,
    /// compare: the candidate run
    pub candidate: Option<String>,
    /// compare: a smaller change is no regression, 0.05 or 5% (default 5%)
    pub threshold: Option<String>,
}

/// What a read route asks the store for.
#[derive(Debug, Clone)]
pub enum ReadQuery {
    Results(Filters),
    Samples(i64),
    Runs(Filters),
    Hardware,
    /// A `db report` kind: performance, compatibility, web, hardware, summary, legacy.
    Report(String, Filters),
    /// Every table of a `db report` kind, with its heading.
    ReportSections(String, Filters),
    /// A `db plot` kind as its chart definition (ia_charts), for the dashboard to draw.
    Chart(String, Filters),
    /// Model class x platform: the best latest status, the models and the reasons.
    Compatibility(Filters),
    /// `db trend`, `db regressions` or `db compare` as JSON.
    Analysis(String, AnalysisParams),
}

/// Why the store could not answer.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The request cannot be answered as asked (bad filter, invalid submission): 400.
    BadRequest(String),
    /// Nothing matches (an unknown result id, a report with no rows): 404.
    NotFound(String),
    /// The store failed: 500.
    Failed(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadRequest(m) => ApiError::Unprocessable(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Failed(m) => ApiError::Engine(m),
        }
    }
}

/// The benchmark store behind the results routes.
pub trait ResultsStore: Send + 'static {
    /// The token's holder, or why it is refused (unknown, revoked, expired).
    fn authenticate(&mut self, token: &str) -> Result<Caller, String>;
    /// Rows as JSON.
    fn read(&mut self, query: &ReadQuery) -> Result<Value, StoreError>;
    /// Validates and stores a whole run sent by `caller`; answers after the commit. The same
    /// `idempotency_key` from the same token stores nothing twice.
    fn submit(
        &mut self,
        caller: &Caller,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> Result<Value, StoreError>;
}

type Shared = Arc<Mutex<Box<dyn ResultsStore>>>;

/// The store and who may read it.
pub struct ResultsService {
    /// Submissions and token checks: the single writer.
    store: Shared,
    /// Connections that only read, used in turn, so reads run side by side with each other
    /// and with a submission.
    readers: Vec<Shared>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// Reads need no token.
    public_read: bool,
    /// What `/dashboard` serves besides its compiled-in pages.
    pub(crate) dashboard: crate::dashboard::Assets,
}

impl ResultsService {
    /// `readers` (possibly none) answer the read routes; `store` everything else.
    pub fn new(
        store: Box<dyn ResultsStore>,
        readers: Vec<Box<dyn ResultsStore>>,
        public_read: bool,
    ) -> Self {
        Self {
            store: Arc::new(Mutex::new(store)),
            readers: readers
                .into_iter()
                .map(|r| Arc::new(Mutex::new(r)))
                .collect(),
            next_reader: Default::default(),
            public_read,
            dashboard: Default::default(),
        }
    }

    /// The dashboard's charting library and other files read at start.
    pub fn with_dashboard(mut self, assets: crate::dashboard::Assets) -> Self {
        self.dashboard = assets;
        self
    }

    /// Runs `f` on the writing store on a blocking thread.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn ResultsStore) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        Self::on(self.store.clone(), f).await
    }

    /// Runs `f` on the next reading connection (the writer when there is none).
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn ResultsStore) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let n = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = match self.readers.len() {
            0 => self.store.clone(),
            len => self.readers[n % len].clone(),
        };
        Self::on(store, f).await
    }

    async fn on<T: Send + 'static>(
        store: Shared,
        f: impl FnOnce(&mut dyn ResultsStore) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the store usable: its writes are
            // transactional, so the poisoned flag carries no meaning here.
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(guard.as_mut())
        })
        .await
        .map_err(|e| ApiError::Engine(format!("the store failed: {e}")))
    }

    /// The caller behind `Authorization: Bearer <token>`; reads pass without one when public.
    async fn caller(&self, headers: &HeaderMap, submit: bool) -> Result<Option<Caller>, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_string);
        let Some(token) = token else {
            return if !submit && self.public_read {
                Ok(None)
            } else {
                Err(ApiError::TokenRefused(
                    "this route needs a token (send Authorization: Bearer <token>; \
                     `ipfs-accelerate tokens create` makes one)"
                        .into(),
                ))
            };
        };
        let caller = self
            .with_store(move |s| s.authenticate(&token))
            .await?
            .map_err(ApiError::TokenRefused)?;
        if submit && !caller.can_submit {
            return Err(ApiError::Forbidden(format!(
                "the token '{}' may read but not submit",
                caller.name
            )));
        }
        Ok(Some(caller))
    }
}

fn service(state: &AppState) -> Result<&ResultsService, ApiError> {
    state
        .results
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("this server keeps no results (serve --db-path)".into()))
}

async fn read(state: Arc<AppState>, headers: HeaderMap, query: ReadQuery) -> Response {
    let answer = async move {
        let service = service(&state)?;
        service.caller(&headers, false).await?;
        service
            .with_reader(move |s| s.read(&query))
            .await?
            .map_err(ApiError::from)
    };
    match answer.await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Results, newest first, with their provenance (engine and version, device, precision,
/// weights, machine).
#[utoipa::path(get, path = "/api/results", params(Filters),
    responses((status = 200, description = "rows as JSON objects")))]
pub(crate) async fn results(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::Results(filters)).await
}

/// The raw latency samples of one result.
#[utoipa::path(get, path = "/api/results/{id}/samples",
    params(("id" = i64, Path, description = "result id")),
    responses((status = 200, description = "iteration and latency_ms per sample"),
              (status = 404, description = "no such result")))]
pub(crate) async fn samples(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    read(state, headers, ReadQuery::Samples(id)).await
}

/// Runs, newest first, with who submitted them.
#[utoipa::path(get, path = "/api/runs", params(Filters),
    responses((status = 200, description = "rows as JSON objects")))]
pub(crate) async fn runs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::Runs(filters)).await
}

/// Every machine and platform with results.
#[utoipa::path(get, path = "/api/hardware",
    responses((status = 200, description = "rows as JSON objects")))]
pub(crate) async fn hardware(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    read(state, headers, ReadQuery::Hardware).await
}

/// A `db report` kind as JSON rows: performance, compatibility, web, hardware, summary,
/// legacy.
#[utoipa::path(get, path = "/api/reports/{kind}",
    params(("kind" = String, Path, description = "report kind"), Filters),
    responses((status = 200, description = "the report's main table as JSON objects"),
              (status = 404, description = "the report has no rows")))]
pub(crate) async fn report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::Report(kind, filters)).await
}

/// Every table of a `db report` kind: `[{heading, rows}]` (the summary's three, the
/// compatibility report's matrix and details).
#[utoipa::path(get, path = "/api/reports/{kind}/sections",
    params(("kind" = String, Path, description = "report kind"), Filters),
    responses((status = 200, description = "the report's tables, each with its heading (possibly empty)"),
              (status = 404, description = "unknown report kind")))]
pub(crate) async fn report_sections(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::ReportSections(kind, filters)).await
}

/// A chart of `db plot --kind` as its definition (title, axes, series or bars or grid), drawn
/// by the dashboard in the browser and by `db plot` as SVG: one definition, two renderers.
#[utoipa::path(get, path = "/api/charts/{kind}",
    params(("kind" = String, Path, description = "latency-vs-batch, throughput-by-platform, trend, memory, compatibility or web-vs-native"), Filters),
    responses((status = 200, description = "the chart definition (empty series when nothing matches)"),
              (status = 404, description = "unknown chart kind")))]
pub(crate) async fn chart(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::Chart(kind, filters)).await
}

/// The compatibility matrix: every model class of the catalog x every platform, each cell
/// the best latest status of the class's models there, with the models and the reasons of
/// those that did not pass.
#[utoipa::path(get, path = "/api/compatibility", params(Filters),
    responses((status = 200, description = "{classes, platforms, cells: [{class, platform, status, models, reasons, ...}]}")))]
pub(crate) async fn compatibility(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    read(state, headers, ReadQuery::Compatibility(filters)).await
}

/// Trends with change points (`trend`), change points regressions first (`regressions`), or
/// two runs compared (`compare`: ratio of medians with a bootstrap CI, Mann-Whitney U with
/// Holm's correction): what `db trend|regressions|compare --json` print.
#[utoipa::path(get, path = "/api/analysis/{kind}",
    params(("kind" = String, Path, description = "trend, regressions or compare"), AnalysisParams),
    responses((status = 200, description = "the analysis as JSON"),
              (status = 404, description = "no stored results match"),
              (status = 422, description = "a parameter is out of range")))]
pub(crate) async fn analysis(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(params): Query<AnalysisParams>,
) -> Response {
    read(state, headers, ReadQuery::Analysis(kind, params)).await
}

/// Submits a whole run (a token with the submit scope). `Idempotency-Key` makes a retry
/// store nothing twice; 201 once stored, 200 for a retry of a stored submission.
#[utoipa::path(post, path = "/api/runs",
    request_body(content = Object, content_type = "application/json",
                 description = "the run: {run, status, results: [{model, hardware, performance, samples_ms, compatibility, web}]}"),
    params(("Idempotency-Key" = Option<String>, Header, description = "the client's key for this submission")),
    responses((status = 201, description = "stored: run id and result count"),
              (status = 200, description = "a retry: the earlier receipt"),
              (status = 401, description = "no, unknown, revoked or expired token"),
              (status = 422, description = "the run is invalid; nothing was stored")))]
pub(crate) async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let answer = async move {
        let body = body.map_err(|r| match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            _ => ApiError::BadRequest(r.body_text()),
        })?;
        let service = service(&state)?;
        let caller = service
            .caller(&headers, true)
            .await?
            .expect("submissions always carry a token");
        let key = headers
            .get("idempotency-key")
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| ApiError::BadRequest("Idempotency-Key is not text".into()))
            })
            .transpose()?;
        if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
            return Err(ApiError::BadRequest(
                "Idempotency-Key must hold 1 to 200 characters".into(),
            ));
        }
        let receipt = service
            .with_store(move |s| s.submit(&caller, key.as_deref(), &body))
            .await?
            .map_err(ApiError::from)?;
        Ok::<_, ApiError>(receipt)
    };
    match answer.await {
        Ok(receipt) => {
            let duplicate = receipt["duplicate"].as_bool().unwrap_or(false);
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(receipt)).into_response()
        }
        Err(e) => e.into_response(),
    }
}
