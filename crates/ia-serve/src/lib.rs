//! The inference server behind `ipfs-accelerate serve`: OpenAI-compatible routes
//! (`/v1/models`, `/v1/embeddings`, `/v1/completions`, `/v1/chat/completions` with SSE
//! streaming, `/v1/audio/transcriptions`), task routes for the other families
//! (`/v1/tasks/run`), token streaming over WebSocket (`/ws/generate`), `/health`, Prometheus
//! `/metrics`, and an OpenAPI document generated from the handler types
//! (`/api-doc/openapi.json`, browsable at `/docs`).
//!
//! Handlers are small: they validate, enqueue and answer. Each served model has one worker
//! thread behind a bounded queue ([`worker`]); a full queue or too many requests in flight
//! answer 429, errors map to status codes in one place ([`error::ApiError`]). The binary
//! loads the models (any in-process engine) and hands them over as [`ServedModel`]s, so this
//! crate depends on the engine API, not on any engine.

pub mod chat;
pub mod dashboard;
pub mod error;
pub mod metrics;
mod openai;
pub mod results;
mod tasks;
pub mod worker;
mod ws;

use crate::chat::ChatTemplate;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::{Batching, GenerationJob, PipelineJob};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ia_engine::generation::TextGenerator;
use ia_engine::SessionInfo;
use ia_tasks::Pipeline;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokenizers::Tokenizer;
use tokio::sync::{mpsc, Semaphore};
use utoipa::OpenApi;

/// A loaded model, ready to serve.
pub enum Backend {
    /// Embeddings (batched), transcription, classification, detection.
    Pipeline(Pipeline),
    /// Text generation with the checkpoint's tokenizer and chat template (None: chat
    /// completions answer 400 for this model).
    Generator {
        generator: Box<dyn TextGenerator>,
        tokenizer: Tokenizer,
        chat_template: Option<ChatTemplate>,
    },
}

pub struct ServedModel {
    /// The name clients use in `model`.
    pub id: String,
    pub backend: Backend,
}

/// How the server behaves under load.
#[derive(Debug, Clone)]
pub struct Options {
    /// With a key, every inference route requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Requests in flight at once over all inference routes; more answer 429.
    pub max_concurrent_requests: usize,
    /// Requests waiting per model; more answer 429.
    pub max_queue: usize,
    pub batching: Batching,
    /// Largest request body accepted; larger ones answer 413.
    pub max_body_bytes: usize,
}

/// What the handlers know of a served model.
pub(crate) struct Served {
    id: String,
    info: SessionInfo,
    created: u64,
    /// A generator's tokenizer (prompts to ids); pipelines tokenize inside.
    tokenizer: Option<Arc<Tokenizer>>,
    work: Work,
}

pub(crate) enum Work {
    Pipeline {
        task: String,
        jobs: mpsc::Sender<PipelineJob>,
    },
    Generator {
        jobs: mpsc::Sender<GenerationJob>,
        chat_template: Option<Arc<ChatTemplate>>,
        max_context: usize,
    },
}

/// The state every handler sees.
pub(crate) struct AppState {
    models: BTreeMap<String, Served>,
    options: Options,
    metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
    in_flight: Arc<Semaphore>,
    /// The benchmark store behind `/api/*`, when the server keeps one.
    results: Option<results::ResultsService>,
}

impl AppState {
    fn model(&self, id: &str) -> Result<&Served, ApiError> {
        self.models
            .get(id)
            .ok_or_else(|| ApiError::UnknownModel(id.to_string()))
    }

    /// Puts a job in a worker's queue, or answers 429 when the queue is full.
    fn enqueue<J>(&self, model: &str, jobs: &mpsc::Sender<J>, job: J) -> Result<(), ApiError> {
        jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::Overloaded(format!(
                "the queue of '{model}' is full ({} waiting); retry later",
                self.options.max_queue
            )),
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Engine(format!("the worker of '{model}' has stopped"))
            }
        })?;
        self.metrics.queued(model);
        Ok(())
    }
}

/// The server: models loaded, workers started.
pub struct Server {
    state: Arc<AppState>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Server {
    /// Starts one worker per model.
    pub fn new(models: Vec<ServedModel>, options: Options) -> std::io::Result<Self> {
        Self::with_results(models, options, None)
    }

    /// Starts one worker per model and, with a results service, the `/api/*` routes.
    pub fn with_results(
        models: Vec<ServedModel>,
        options: Options,
        results: Option<results::ResultsService>,
    ) -> std::io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let mut served = BTreeMap::new();
        for m in models {
            let queue = options.max_queue.max(1);
            let (info, work, tokenizer) = match m.backend {
                Backend::Pipeline(pipeline) => {
                    let (tx, rx) = mpsc::channel(queue);
                    let info = pipeline.info().clone();
                    let task = pipeline.task().to_string();
                    worker::spawn_pipeline_worker(
                        m.id.clone(),
                        pipeline,
                        rx,
                        options.batching,
                        metrics.clone(),
                    )?;
                    (info, Work::Pipeline { task, jobs: tx }, None)
                }
                Backend::Generator {
                    generator,
                    tokenizer,
                    chat_template,
                } => {
                    let (tx, rx) = mpsc::channel(queue);
                    let info = generator.info().clone();
                    let max_context = generator.max_context();
                    let tokenizer = Arc::new(tokenizer);
                    worker::spawn_generator_worker(
                        m.id.clone(),
                        generator,
                        tokenizer.clone(),
                        rx,
                        metrics.clone(),
                    )?;
                    let work = Work::Generator {
                        jobs: tx,
                        chat_template: chat_template.map(Arc::new),
                        max_context,
                    };
                    (info, work, Some(tokenizer))
                }
            };
            served.insert(
                m.id.clone(),
                Served {
                    id: m.id,
                    info,
                    created: now_s(),
                    tokenizer,
                    work,
                },
            );
        }
        Ok(Self {
            state: Arc::new(AppState {
                models: served,
                in_flight: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
                options,
                metrics,
                shutting_down: AtomicBool::new(false),
                results,
            }),
        })
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let inference = Router::new()
            .route("/v1/models", get(openai::models))
            .route("/v1/embeddings", post(openai::embeddings))
            .route("/v1/completions", post(openai::completions))
            .route("/v1/chat/completions", post(openai::chat_completions))
            .route("/v1/audio/transcriptions", post(tasks::transcriptions))
            .route("/v1/tasks/run", post(tasks::run))
            .route("/ws/generate", get(ws::generate))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                guard,
            ));
        let results = Router::new()
            .route("/api/results", get(results::results))
            .route("/api/results/{id}/samples", get(results::samples))
            .route("/api/runs", get(results::runs).post(results::submit))
            .route("/api/hardware", get(results::hardware))
            .route("/api/reports/{kind}", get(results::report))
            .route(
                "/api/reports/{kind}/sections",
                get(results::report_sections),
            )
            .route("/api/charts/{kind}", get(results::chart))
            .route("/api/compatibility", get(results::compatibility))
            .route("/api/analysis/{kind}", get(results::analysis))
            .route("/dashboard", get(dashboard::home))
            .route("/dashboard/{page}", get(dashboard::named))
            .route("/dashboard/assets/{file}", get(dashboard::asset));
        Router::new()
            .merge(inference)
            .merge(results)
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/api-doc/openapi.json", get(openapi))
            .route("/docs", get(docs))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                observe,
            ))
            .layer(DefaultBodyLimit::max(self.state.options.max_body_bytes))
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` resolves; then new requests get 503 while the
    /// ones in flight finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let state = self.state.clone();
        let app = self.router();
        // Streams write one small event per token: without TCP_NODELAY, Nagle's algorithm
        // holds each behind the client's delayed ACK (tens of ms per chunk).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY on a connection: {e}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                state.shutting_down.store(true, Ordering::SeqCst);
                tracing::info!("shutting down: finishing the requests in flight");
            })
            .await
    }
}

/// Refusals before an inference handler runs: shutting down (503), a missing or wrong key
/// (401), too many requests in flight (429).
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return refuse(ApiError::ShuttingDown);
    }
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return refuse(ApiError::Unauthorized);
        }
    }
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return refuse(ApiError::Overloaded(format!(
            "{} requests are in flight (serve --max-concurrent-requests); retry later",
            state.options.max_concurrent_requests
        )));
    };
    let response = next.run(request).await;
    // A stream holds its permit until its body ends.
    let (parts, body) = response.into_parts();
    let body = axum::body::Body::new(PermitBody {
        inner: body,
        _permit: permit,
    });
    Response::from_parts(parts, body)
}

/// A refusal sent before the request body is read. It closes the connection: hyper cannot
/// reuse a connection whose body it has not drained, and a client that pools it (as most do)
/// would otherwise meet a reset on its next request there.
fn refuse(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// A response body that releases its in-flight permit when it is dropped.
struct PermitBody {
    inner: axum::body::Body,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for PermitBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Keys compared without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by route and status (after the guard, so refusals count too).
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = next.run(request).await;
    state.metrics.request(
        &route,
        &method,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    status: &'static str,
    models: Vec<String>,
}

/// Liveness: 200 with the served models, 503 while shutting down.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.shutting_down.load(Ordering::SeqCst) {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        axum::http::StatusCode::OK
    };
    let body = Health {
        status: if status.is_success() {
            "ok"
        } else {
            "shutting_down"
        },
        models: state.models.keys().cloned().collect(),
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ipfs-accelerate",
        description = "OpenAI-compatible inference over the engines of this machine"
    ),
    paths(
        health,
        openai::models,
        openai::embeddings,
        openai::completions,
        openai::chat_completions,
        tasks::transcriptions,
        tasks::run,
        results::results,
        results::samples,
        results::runs,
        results::submit,
        results::hardware,
        results::report,
        results::report_sections,
        results::chart,
        results::compatibility,
        results::analysis,
    )
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Response {
    axum::Json(openapi_document()).into_response()
}

/// A page that lists the routes of the OpenAPI document with their request and response
/// schemas: the document is embedded in the page, and nothing comes from a CDN.
async fn docs() -> Html<String> {
    let document = serde_json::to_string(&openapi_document())
        .expect("the OpenAPI document serialises")
        // Inside <script>, "</" could close the element.
        .replace("</", "<\\/");
    Html(include_str!("docs.html").replace("/*OPENAPI*/null", &document))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_queue: usize) -> AppState {
        AppState {
            models: BTreeMap::new(),
            options: Options {
                api_key: None,
                max_concurrent_requests: 1,
                max_queue,
                batching: Batching {
                    max_batch_tokens: 1,
                    enabled: true,
                },
                max_body_bytes: 1,
            },
            metrics: Arc::new(Metrics::default()),
            shutting_down: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(1)),
            results: None,
        }
    }

    /// A full queue is a 429 with OpenAI's rate-limit error; a stopped worker is a 500.
    #[test]
    fn a_full_queue_is_429_and_a_stopped_worker_500() {
        let s = state(1);
        let (tx, rx) = mpsc::channel::<u32>(1);
        s.enqueue("m", &tx, 1).unwrap();
        assert_eq!(s.metrics.queue_size("m"), 1);
        let e = s.enqueue("m", &tx, 2).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.body().error.kind, "rate_limit_error");
        assert!(e.to_string().contains("queue of 'm' is full"), "{e}");
        drop(rx);
        let e = s.enqueue("m", &tx, 3).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// A refusal sent before the body is read closes the connection, so no client reuses it.
    #[test]
    fn refusals_close_the_connection() {
        let r = refuse(ApiError::Unauthorized);
        assert_eq!(r.status(), axum::http::StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    /// After the shutdown signal, inference routes answer 503 and /health says so.
    #[tokio::test]
    async fn shutting_down_answers_503() {
        use tower::ServiceExt;
        let server = Server::new(vec![], state(1).options).unwrap();
        let request = |path: &str| {
            axum::http::Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        let router = server.router();
        let ok = router.clone().oneshot(request("/v1/models")).await.unwrap();
        assert_eq!(ok.status(), axum::http::StatusCode::OK);
        server.state.shutting_down.store(true, Ordering::SeqCst);
        for path in ["/v1/models", "/health"] {
            let r = router.clone().oneshot(request(path)).await.unwrap();
            assert_eq!(
                r.status(),
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "{path}"
            );
        }
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
