//! OpenAI's routes: models, embeddings, completions and chat completions (streamed as
//! server-sent events in OpenAI's chunk format, ending with `data: [DONE]`).

use crate::chat::Message;
use crate::error::{ApiError, ErrorBody, Json};
use crate::worker::{FinishReason, GenerationEvent, GenerationJob, GenerationSummary, PipelineJob};
use crate::{now_s, AppState, Served, Work};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ia_engine::generation::{GenerateOptions, Sampling};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelCard>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// What the model does here: `text-generation`, `feature-extraction`,
    /// `automatic-speech-recognition`, ...
    task: String,
    engine: String,
    engine_version: String,
    device: String,
    precision: String,
    /// `trained` or `random`.
    weights: String,
}

/// The served models.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn models(State(state): State<Arc<AppState>>) -> axum::Json<ModelList> {
    axum::Json(ModelList {
        object: "list",
        data: state.models.values().map(card).collect(),
    })
}

fn card(m: &Served) -> ModelCard {
    ModelCard {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "ipfs-accelerate",
        task: match &m.work {
            Work::Pipeline { task, .. } => task.clone(),
            Work::Generator { .. } => "text-generation".into(),
        },
        engine: m.info.engine.clone(),
        engine_version: m.info.engine_version.clone(),
        device: m.info.device.clone(),
        precision: m.info.precision.to_string(),
        weights: m.info.weights.as_str().into(),
    }
}

/// A string or a list of strings.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(s) => vec![s],
            Texts::Many(v) => v,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    model: String,
    input: Texts,
    /// `float` (default) or `base64` (little-endian f32, as OpenAI's clients ask by default).
    encoding_format: Option<String>,
    /// Only the model's own size is served.
    dimensions: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    object: &'static str,
    data: Vec<EmbeddingData>,
    model: String,
    usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

/// Numbers, or a base64 string of little-endian f32.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    prompt_tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<usize>,
    total_tokens: usize,
}

/// Most texts one embedding request may carry (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

/// Sentence embeddings; concurrent requests are batched.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingList), (status = 400, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Json(req): Json<EmbeddingRequest>,
) -> Result<axum::Json<EmbeddingList>, ApiError> {
    let model = state.model(&req.model)?;
    let Work::Pipeline { task, jobs } = &model.work else {
        return Err(ApiError::WrongTask {
            model: req.model,
            what: "embeddings",
        });
    };
    if task != "feature-extraction" {
        return Err(ApiError::WrongTask {
            model: req.model,
            what: "embeddings",
        });
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "encoding_format '{other}' is not one of float, base64"
            )))
        }
    };
    let texts = req.input.into_vec();
    if texts.is_empty() || texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::BadRequest(format!(
            "input must hold 1 to {MAX_EMBEDDING_INPUTS} texts, not {}",
            texts.len()
        )));
    }
    if texts.iter().any(String::is_empty) {
        return Err(ApiError::BadRequest("input holds an empty string".into()));
    }
    // WordPiece and BPE tokens take at least a character each, plus the special tokens.
    let longest = texts
        .iter()
        .map(|t| t.chars().count() + 2)
        .max()
        .unwrap_or(0);
    let (reply, answer) = oneshot::channel();
    let job = PipelineJob::Embed {
        texts,
        tokens: longest,
        reply,
    };
    state.enqueue(&model.id, jobs, job)?;
    let rows = answer
        .await
        .map_err(|_| ApiError::Engine("the worker stopped".into()))??;
    if let Some(d) = req.dimensions {
        if rows.first().is_some_and(|r| r.values.len() != d) {
            return Err(ApiError::BadRequest(format!(
                "dimensions {d}: this model's embeddings have {} (no truncation is served)",
                rows[0].values.len()
            )));
        }
    }
    let prompt_tokens = rows.iter().map(|r| r.tokens).sum();
    Ok(axum::Json(EmbeddingList {
        object: "list",
        data: rows
            .into_iter()
            .enumerate()
            .map(|(index, row)| EmbeddingData {
                object: "embedding",
                index,
                embedding: if base64 {
                    Embedding::Base64(base64_f32(&row.values))
                } else {
                    Embedding::Float(row.values)
                },
            })
            .collect(),
        model: model.id.clone(),
        usage: Usage {
            prompt_tokens,
            completion_tokens: None,
            total_tokens: prompt_tokens,
        },
    }))
}

/// Standard base64 of the little-endian bytes of `values`.
fn base64_f32(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `stop`: a string, a list of strings (at most 4, as OpenAI).
#[derive(Deserialize, ToSchema, Default)]
#[serde(untagged)]
pub enum Stop {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, ToSchema, Default)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields completions and chat completions share.
#[derive(Deserialize, ToSchema)]
pub struct SamplingFields {
    max_tokens: Option<usize>,
    /// OpenAI's newer name for max_tokens in chat.
    max_completion_tokens: Option<usize>,
    /// 0 to 2; 0 is greedy. OpenAI's default is 1.
    temperature: Option<f32>,
    /// (0, 1].
    top_p: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Stop,
    /// Token ids that end generation (vLLM's extension).
    #[serde(default)]
    stop_token_ids: Vec<u32>,
    n: Option<usize>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize, ToSchema)]
pub struct CompletionRequest {
    model: String,
    /// A string, or a list of one string.
    prompt: Texts,
    #[serde(flatten)]
    sampling: SamplingFields,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatMessage {
    role: String,
    /// A string, or OpenAI's list of parts of which the `text` ones are used.
    #[schema(value_type = Object)]
    content: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct Completion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<CompletionChoice>,
    usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct CompletionChoice {
    index: usize,
    text: String,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    index: usize,
    message: AssistantMessage,
    logprobs: Option<()>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize, ToSchema)]
pub struct AssistantMessage {
    role: &'static str,
    content: String,
}

/// A generation ready to enqueue: the prompt's tokens and the options, validated.
pub(crate) struct Prepared {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Upper bound of max_tokens when a request leaves it out (chat) and the context allows more.
const DEFAULT_CHAT_MAX_TOKENS: usize = 1024;
/// OpenAI's default for completions.
const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

fn seed_from_clock() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

/// Tokenizes `prompt` for a generator and checks the sampling fields.
pub(crate) fn prepare(
    model: &Served,
    prompt: &str,
    add_special_tokens: bool,
    fields: SamplingFields,
    default_max_tokens: usize,
) -> Result<Prepared, ApiError> {
    let Work::Generator { max_context, .. } = &model.work else {
        return Err(ApiError::WrongTask {
            model: model.id.clone(),
            what: "text generation",
        });
    };
    if fields.n.unwrap_or(1) != 1 {
        return Err(ApiError::BadRequest("only n=1 is served".into()));
    }
    let temperature = fields.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::BadRequest(format!(
            "temperature {temperature} is not within 0 to 2"
        )));
    }
    let top_p = fields.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::BadRequest(format!(
            "top_p {top_p} is not within (0, 1]"
        )));
    }
    let stop = match fields.stop {
        Stop::None => vec![],
        Stop::One(s) => vec![s],
        Stop::Many(v) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::BadRequest(format!(
            "stop holds {} strings; at most 4",
            stop.len()
        )));
    }
    let tokenizer = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| ApiError::Engine("the model has no tokenizer".into()))?;
    let ids = tokenizer
        .encode(prompt, add_special_tokens)
        .map_err(|e| ApiError::BadRequest(format!("tokenizing the prompt: {e}")))?
        .get_ids()
        .to_vec();
    if ids.is_empty() {
        return Err(ApiError::BadRequest("the prompt has no tokens".into()));
    }
    if ids.len() >= *max_context {
        return Err(ApiError::BadRequest(format!(
            "the prompt has {} tokens; the model's context is {max_context}",
            ids.len()
        )));
    }
    let room = max_context - ids.len();
    let max_tokens = match fields.max_tokens.or(fields.max_completion_tokens) {
        Some(0) => return Err(ApiError::BadRequest("max_tokens must be at least 1".into())),
        Some(n) if n > room => {
            return Err(ApiError::BadRequest(format!(
                "{} prompt tokens + max_tokens {n} exceed the model's context of {max_context}",
                ids.len()
            )))
        }
        Some(n) => n,
        None => default_max_tokens.min(room),
    };
    Ok(Prepared {
        prompt: ids,
        options: GenerateOptions {
            max_new_tokens: max_tokens,
            sampling: Sampling {
                temperature,
                top_k: None,
                top_p: (top_p < 1.0).then_some(top_p),
                repetition_penalty: 1.0,
                seed: fields.seed.unwrap_or_else(seed_from_clock),
            },
            stop_tokens: fields.stop_token_ids,
            ignore_eos: false,
        },
        stop,
        stream: fields.stream,
        include_usage: fields.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// Enqueues a prepared generation; events come back on the returned channel.
pub(crate) fn start(
    state: &AppState,
    model: &Served,
    p: &Prepared,
) -> Result<mpsc::Receiver<GenerationEvent>, ApiError> {
    let Work::Generator { jobs, .. } = &model.work else {
        unreachable!("prepare checked the model generates");
    };
    let (events, receiver) = mpsc::channel(256);
    let job = GenerationJob {
        prompt: p.prompt.clone(),
        options: p.options.clone(),
        stop: p.stop.clone(),
        events,
    };
    state.enqueue(&model.id, jobs, job)?;
    Ok(receiver)
}

/// Collects a whole generation.
async fn collect(
    mut events: mpsc::Receiver<GenerationEvent>,
) -> Result<(String, GenerationSummary), ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Token { text: piece, .. } => text.push_str(&piece),
            GenerationEvent::Done(summary) => return Ok((text, summary)),
            GenerationEvent::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::Engine("the worker stopped".into()))
}

fn usage(s: &GenerationSummary) -> Usage {
    Usage {
        prompt_tokens: s.prompt_tokens,
        completion_tokens: Some(s.completion_tokens),
        total_tokens: s.prompt_tokens + s.completion_tokens,
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn request_id(prefix: &str) -> String {
    format!(
        "{prefix}-{:x}{:06x}",
        now_s(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Text completion of a prompt.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, body = Completion, description = "or, with stream, server-sent events of chunks ending with [DONE]"),
              (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.model(&req.model)?;
    let prompt = match req.prompt {
        Texts::One(p) => p,
        Texts::Many(mut v) if v.len() == 1 => v.remove(0),
        Texts::Many(v) => {
            return Err(ApiError::BadRequest(format!(
                "prompt holds {} strings; one is served per request",
                v.len()
            )))
        }
    };
    let p = prepare(
        model,
        &prompt,
        true,
        req.sampling,
        DEFAULT_COMPLETION_MAX_TOKENS,
    )?;
    let events = start(&state, model, &p)?;
    let id = request_id("cmpl");
    let created = now_s();
    let name = model.id.clone();
    if p.stream {
        let chunk = move |text: String, finish: Option<FinishReason>| {
            serde_json::json!({
                "id": id, "object": "text_completion", "created": created, "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            })
        };
        return Ok(sse(events, p.include_usage, None, chunk));
    }
    let (text, summary) = collect(events).await?;
    Ok(axum::Json(Completion {
        id,
        object: "text_completion",
        created,
        model: name,
        choices: vec![CompletionChoice {
            index: 0,
            text,
            logprobs: None,
            finish_reason: Some(summary.finish_reason),
        }],
        usage: usage(&summary),
    })
    .into_response())
}

/// The chat prompt of `messages` with the model's template.
pub(crate) fn chat_prompt(model: &Served, messages: Vec<ChatMessage>) -> Result<String, ApiError> {
    let Work::Generator { chat_template, .. } = &model.work else {
        return Err(ApiError::WrongTask {
            model: model.id.clone(),
            what: "chat completions",
        });
    };
    let template = chat_template.as_ref().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the checkpoint of '{}' has no chat template (tokenizer_config.json chat_template or \
             chat_template.jinja); use /v1/completions",
            model.id
        ))
    })?;
    if messages.is_empty() {
        return Err(ApiError::BadRequest("messages is empty".into()));
    }
    let messages = messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(parts) => parts
                    .iter()
                    .map(
                        |p| match (p.get("type").and_then(|t| t.as_str()), p.get("text")) {
                            (Some("text"), Some(serde_json::Value::String(t))) => Ok(t.clone()),
                            _ => Err(ApiError::BadRequest(
                                "only text parts of a message's content are served".into(),
                            )),
                        },
                    )
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                serde_json::Value::Null => String::new(),
                _ => {
                    return Err(ApiError::Unprocessable(
                        "a message's content must be a string or a list of parts".into(),
                    ))
                }
            };
            Ok(Message {
                role: m.role,
                content,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    template.render(&messages).map_err(ApiError::BadRequest)
}

/// Chat completion with the checkpoint's chat template.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses((status = 200, body = ChatCompletion, description = "or, with stream, server-sent events of chunks ending with [DONE]"),
              (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let model = state.model(&req.model)?;
    let prompt = chat_prompt(model, req.messages)?;
    // The template writes the special tokens itself (transformers' apply_chat_template
    // tokenizes with add_special_tokens=False).
    let p = prepare(model, &prompt, false, req.sampling, DEFAULT_CHAT_MAX_TOKENS)?;
    let events = start(&state, model, &p)?;
    let id = request_id("chatcmpl");
    let created = now_s();
    let name = model.id.clone();
    if p.stream {
        let chunk = {
            let (id, name) = (id.clone(), name.clone());
            move |text: String, finish: Option<FinishReason>| {
                let delta = if finish.is_some() {
                    serde_json::json!({})
                } else {
                    serde_json::json!({"content": text})
                };
                serde_json::json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        };
        let first = serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": name,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": null, "finish_reason": null}],
        });
        return Ok(sse(events, p.include_usage, Some(first), chunk));
    }
    let (text, summary) = collect(events).await?;
    Ok(axum::Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: name,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: text,
            },
            logprobs: None,
            finish_reason: Some(summary.finish_reason),
        }],
        usage: usage(&summary),
    })
    .into_response())
}

/// Server-sent events of a generation: `first` (if any), one chunk per piece of text, a
/// chunk with the finish reason, the usage chunk when asked for, then `[DONE]`. A failure
/// mid-stream is sent as an error object before `[DONE]`. Dropping the stream (the client
/// went away) closes the channel, which stops the generation.
fn sse<F>(
    events: mpsc::Receiver<GenerationEvent>,
    include_usage: bool,
    first: Option<serde_json::Value>,
    chunk: F,
) -> Response
where
    F: Fn(String, Option<FinishReason>) -> serde_json::Value + Send + 'static,
{
    use futures_util::StreamExt;
    fn data(v: &serde_json::Value) -> Result<Event, Infallible> {
        Ok(Event::default().data(v.to_string()))
    }
    fn done() -> Result<Event, Infallible> {
        Ok(Event::default().data("[DONE]"))
    }
    let head = futures_util::stream::iter(first.map(|v| data(&v)));
    let body = futures_util::stream::unfold(Some((events, chunk)), move |running| async move {
        let (mut events, chunk) = running?;
        loop {
            match events.recv().await? {
                GenerationEvent::Token { text, .. } if text.is_empty() => continue,
                GenerationEvent::Token { text, .. } => {
                    return Some((vec![data(&chunk(text, None))], Some((events, chunk))))
                }
                GenerationEvent::Done(summary) => {
                    let mut out = vec![data(&chunk(String::new(), Some(summary.finish_reason)))];
                    if include_usage {
                        let mut u = chunk(String::new(), None);
                        u["choices"] = serde_json::json!([]);
                        u["usage"] = serde_json::json!(usage(&summary));
                        out.push(data(&u));
                    }
                    out.push(done());
                    return Some((out, None));
                }
                GenerationEvent::Failed(e) => {
                    return Some((vec![data(&serde_json::json!(e.body())), done()], None))
                }
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    Sse::new(head.chain(body))
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard_alphabet() {
        // 1.0f32 = 00 00 80 3F.
        assert_eq!(super::base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(super::base64_f32(&[1.0, 2.0]), "AACAPwAAAEA=");
    }
}
