//! The `run` pipelines over HTTP: OpenAI's transcription route (multipart, Whisper and
//! Wav2Vec2) and `/v1/tasks/run` for the other families (image classification, zero-shot
//! image / audio classification, object detection, embeddings of images or audio), with
//! media as multipart files or base64 in JSON.

use crate::error::{ApiError, ErrorBody, Json};
use crate::worker::PipelineJob;
use crate::{AppState, Served, Work};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ia_tasks::{Input, TaskOptions, TaskOutput, TaskResult};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::Arc;
use tokio::sync::oneshot;
use utoipa::ToSchema;

/// Writes uploaded bytes to a temporary file and tells image from audio by content (as `run`
/// does for paths).
fn media_input(bytes: &[u8]) -> Result<(Input, tempfile::TempPath), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the uploaded file is empty".into()));
    }
    let mut file = tempfile::NamedTempFile::new()
        .map_err(|e| ApiError::Engine(format!("a temporary file for the upload: {e}")))?;
    file.write_all(bytes)
        .map_err(|e| ApiError::Engine(format!("writing the upload: {e}")))?;
    let path = file.into_temp_path();
    let input = Input::detect(&path.to_string_lossy()).map_err(|_| {
        ApiError::BadRequest("the file is neither a PNG/JPEG image nor a WAV file".into())
    })?;
    Ok((input, path))
}

/// A multipart field that could not be read: too large (413), or malformed (400).
fn field_error(name: &str, e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge
    } else {
        ApiError::BadRequest(format!("multipart field '{name}': {e}"))
    }
}

/// Runs one input through a pipeline model's worker.
async fn run_task(
    state: &AppState,
    model: &Served,
    input: Input,
    file: Option<tempfile::TempPath>,
    opts: TaskOptions,
) -> Result<TaskResult, ApiError> {
    let Work::Pipeline { jobs, .. } = &model.work else {
        return Err(ApiError::WrongTask {
            model: model.id.clone(),
            what: "tasks over images, audio or text (use /v1/completions)",
        });
    };
    let (reply, answer) = oneshot::channel();
    let job = PipelineJob::Run {
        input,
        opts,
        reply,
        _file: file,
    };
    state.enqueue(&model.id, jobs, job)?;
    answer
        .await
        .map_err(|_| ApiError::Engine("the worker stopped".into()))?
}

#[derive(Serialize, ToSchema)]
pub struct Transcription {
    text: String,
}

/// OpenAI's transcription route: multipart with `file` (WAV) and `model`; `response_format`
/// json (default), text or verbose_json.
#[utoipa::path(post, path = "/v1/audio/transcriptions",
    request_body(content_type = "multipart/form-data", description = "file (WAV), model, response_format"),
    responses((status = 200, body = Transcription), (status = 400, body = ErrorBody)))]
pub async fn transcriptions(
    State(state): State<Arc<AppState>>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let (mut file, mut model, mut format) = (None, None, "json".to_string());
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let read = |e| field_error(&name, e);
        match name.as_str() {
            "file" => file = Some(field.bytes().await.map_err(read)?),
            "model" => model = Some(field.text().await.map_err(read)?),
            "response_format" => format = field.text().await.map_err(read)?,
            _ => {} // language, prompt, temperature: not used by these decoders
        }
    }
    let model = model.ok_or_else(|| ApiError::BadRequest("the form has no 'model'".into()))?;
    let file = file.ok_or_else(|| ApiError::BadRequest("the form has no 'file'".into()))?;
    let served = state.model(&model)?;
    let (input, path) = media_input(&file)?;
    if !matches!(input, Input::Audio(_)) {
        return Err(ApiError::BadRequest("the file is not a WAV file".into()));
    }
    if !matches!(&served.work, Work::Pipeline { task, .. } if task == "automatic-speech-recognition")
    {
        return Err(ApiError::WrongTask {
            model,
            what: "speech recognition",
        });
    }
    let result = run_task(&state, served, input, Some(path), TaskOptions::default()).await?;
    let TaskOutput::Transcript {
        text,
        audio_seconds,
        ..
    } = result.output
    else {
        return Err(ApiError::Engine("the model returned no transcript".into()));
    };
    Ok(match format.as_str() {
        "json" => axum::Json(Transcription { text }).into_response(),
        "text" => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response(),
        "verbose_json" => axum::Json(serde_json::json!({
            "task": "transcribe", "duration": audio_seconds, "text": text,
        }))
        .into_response(),
        other => {
            return Err(ApiError::BadRequest(format!(
                "response_format '{other}' is not one of json, text, verbose_json"
            )))
        }
    })
}

/// A task request in JSON; exactly one of `text`, `image` and `audio` (base64 of a PNG/JPEG
/// or WAV file).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    model: String,
    text: Option<String>,
    image: Option<String>,
    audio: Option<String>,
    /// Candidate labels for zero-shot classification.
    #[serde(default)]
    labels: Vec<String>,
    hypothesis_template: Option<String>,
    top_k: Option<usize>,
    /// Minimum score of a reported detection.
    threshold: Option<f32>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskResponse {
    model: String,
    #[schema(value_type = Object)]
    result: TaskResult,
}

/// Runs a model's pipeline on one input: JSON (`text`, or `image` / `audio` as base64) or
/// multipart (a `file` part and the other fields as text parts; `labels` comma-separated).
#[utoipa::path(post, path = "/v1/tasks/run", request_body = TaskRequest,
    responses((status = 200, body = TaskResponse), (status = 400, body = ErrorBody)))]
pub async fn run(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (req, upload) = if multipart {
        from_multipart(
            Multipart::from_request(request, &())
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?,
        )
        .await?
    } else {
        let Json(req) = Json::<TaskRequest>::from_request(request, &()).await?;
        (req, None)
    };
    let served = state.model(&req.model)?;
    let decode = |b64: &str, what: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| ApiError::BadRequest(format!("{what} is not valid base64: {e}")))
    };
    let given = [
        req.text.is_some(),
        req.image.is_some(),
        req.audio.is_some(),
        upload.is_some(),
    ]
    .iter()
    .filter(|&&g| g)
    .count();
    if given != 1 {
        return Err(ApiError::BadRequest(
            "give exactly one of text, image, audio (or one uploaded file)".into(),
        ));
    }
    let (input, file) = if let Some(text) = &req.text {
        if text.is_empty() {
            return Err(ApiError::BadRequest("text is empty".into()));
        }
        (Input::Text(text.clone()), None)
    } else {
        let bytes = match (&req.image, &req.audio, upload) {
            (Some(b), _, _) => decode(b, "image")?,
            (_, Some(b), _) => decode(b, "audio")?,
            (_, _, Some(bytes)) => bytes,
            _ => unreachable!("one input was counted"),
        };
        let (input, path) = media_input(&bytes)?;
        (input, Some(path))
    };
    let defaults = TaskOptions::default();
    let opts = TaskOptions {
        labels: req.labels,
        hypothesis_template: req.hypothesis_template,
        top_k: req.top_k.unwrap_or(defaults.top_k).clamp(1, 1000),
        threshold: req.threshold.unwrap_or(defaults.threshold),
        transcribe: defaults.transcribe,
    };
    let result = run_task(&state, served, input, file, opts).await?;
    Ok(axum::Json(TaskResponse {
        model: served.id.clone(),
        result,
    })
    .into_response())
}

async fn from_multipart(mut form: Multipart) -> Result<(TaskRequest, Option<Vec<u8>>), ApiError> {
    let mut req = TaskRequest::default();
    let mut upload = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let bad = |e| field_error(&name, e);
        if name == "file" {
            upload = Some(field.bytes().await.map_err(bad)?.to_vec());
            continue;
        }
        let value = field.text().await.map_err(bad)?;
        let number = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| ApiError::Unprocessable(format!("field '{name}' is not a number")))
        };
        match name.as_str() {
            "model" => req.model = value,
            "text" => req.text = Some(value),
            "labels" => {
                req.labels = value
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            "hypothesis_template" => req.hypothesis_template = Some(value),
            "top_k" => req.top_k = Some(number(&value)?.max(1.0) as usize),
            "threshold" => req.threshold = Some(number(&value)? as f32),
            other => {
                return Err(ApiError::Unprocessable(format!(
                    "unknown field '{other}' in the form"
                )))
            }
        }
    }
    if req.model.is_empty() {
        return Err(ApiError::BadRequest("the form has no 'model'".into()));
    }
    Ok((req, upload))
}
