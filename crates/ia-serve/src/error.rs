//! Every error a route answers, mapped to its status code in one place, with OpenAI's body:
//! `{"error": {"message": ..., "type": ..., "code": ...}}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or asks for something this server does not do.
    #[error("{0}")]
    BadRequest(String),
    /// Valid JSON whose fields have the wrong types or values.
    #[error("{0}")]
    Unprocessable(String),
    #[error("model '{0}' is not served here (GET /v1/models lists the served ones)")]
    UnknownModel(String),
    #[error("the model '{model}' does not do {what}")]
    WrongTask { model: String, what: &'static str },
    #[error("missing or invalid API key (send Authorization: Bearer <key>)")]
    Unauthorized,
    /// A results-service token that is missing, unknown, revoked or expired.
    #[error("{0}")]
    TokenRefused(String),
    /// A valid token without the right to do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than the server accepts (serve --max-body-mb)")]
    TooLarge,
    #[error("{0}")]
    Overloaded(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine failed on a valid request.
    #[error("{0}")]
    Engine(String),
}

/// OpenAI's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`,
    /// `service_unavailable`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            // OpenAI answers 404 for an unknown model; 400 keeps "the request is wrong" in one
            // family with the other request errors, as text-generation-inference does.
            ApiError::BadRequest(_) | ApiError::WrongTask { .. } | ApiError::UnknownModel(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized | ApiError::TokenRefused(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, code) = match self {
            ApiError::BadRequest(_) | ApiError::Unprocessable(_) | ApiError::WrongTask { .. } => {
                ("invalid_request_error", None)
            }
            ApiError::TooLarge => ("invalid_request_error", Some("request_too_large")),
            ApiError::UnknownModel(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::Unauthorized => ("authentication_error", Some("invalid_api_key")),
            ApiError::TokenRefused(_) => ("authentication_error", Some("invalid_token")),
            ApiError::Forbidden(_) => ("permission_error", None),
            ApiError::NotFound(_) => ("invalid_request_error", Some("not_found")),
            ApiError::Overloaded(_) => ("rate_limit_error", Some("overloaded")),
            ApiError::ShuttingDown => ("service_unavailable", None),
            ApiError::Engine(_) => ("server_error", None),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let text = r.body_text();
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
            StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(text),
            _ => ApiError::BadRequest(text),
        }
    }
}

impl From<ia_engine::EngineError> for ApiError {
    fn from(e: ia_engine::EngineError) -> Self {
        match e {
            ia_engine::EngineError::InvalidInput(m) => ApiError::BadRequest(m),
            other => ApiError::Engine(other.to_string()),
        }
    }
}

impl From<ia_tasks::TaskError> for ApiError {
    fn from(e: ia_tasks::TaskError) -> Self {
        match e {
            ia_tasks::TaskError::Engine(e) => e.into(),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

/// `axum::Json` whose rejections (malformed JSON 400, wrong field types 422, too large 413,
/// wrong content type 400) answer with the error body above.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
