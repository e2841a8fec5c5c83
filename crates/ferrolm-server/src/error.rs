//! Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) with their
//! HTTP status, including axum's own rejections, unknown paths, wrong methods and panics.

use crate::wire::{ErrorBody, ErrorDetail};
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferrolm_engine::serve::SubmitError;
use serde::de::DeserializeOwned;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 for a value that is out of range or otherwise wrong, naming the field.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::bad_request(message)
        }
    }

    /// 400 with no particular field to blame.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 for a documented feature not implemented yet.
    pub fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("unsupported_parameter"),
            ..ApiError::invalid(param, message)
        }
    }

    pub fn model_not_found(model: &str, available: &[String]) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model '{model}' does not exist; this server has: {}",
                    available.join(", ")
                ),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn shutting_down() -> ApiError {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )
        }
    }

    /// A refused submission; `prompt_param` names the request's prompt field.
    pub fn from_submit(e: SubmitError, prompt_param: &str) -> ApiError {
        let message = e.to_string();
        match e {
            SubmitError::QueueFull { .. } => ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            SubmitError::TooLong { .. } => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(prompt_param, message)
            },
            SubmitError::EmptyPrompt => ApiError::invalid(prompt_param, message),
            SubmitError::ShuttingDown => ApiError::shutting_down(),
            SubmitError::NotGenerative => ApiError::invalid("model", message),
            SubmitError::Unsupported { param, .. } => ApiError::invalid(param, message),
        }
    }

    /// The JSON body alone (for an error inside an event stream).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// The request body, or the error axum's extractor met (too large: 413).
pub fn body_bytes(body: Result<axum::body::Bytes, BytesRejection>) -> ApiResult<axum::body::Bytes> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                "the request body is larger than this server takes (--max-body-mb)",
            )
        } else {
            ApiError::new(
                status,
                "invalid_request_error",
                format!("could not read the request body: {}", e.body_text()),
            )
        }
    })
}

/// Parses a JSON object into `T`; errors name the offending field in `param`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON: {e} (send a JSON object with Content-Type: application/json)"
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field is reported at its parent; name the field itself.
        let param = match inner
            .strip_prefix("missing field `")
            .and_then(|s| s.split('`').next())
        {
            Some(field) if path == "." => field.to_string(),
            Some(field) => format!("{path}.{field}"),
            None => path,
        };
        let message = if inner.starts_with("missing field") {
            format!("'{param}' is required")
        } else {
            format!("'{param}': {}", describe_type_error(&inner))
        };
        ApiError::invalid(&param, message)
    })
}

/// serde's messages, with untagged enums said in words.
fn describe_type_error(inner: &str) -> String {
    if inner.starts_with("data did not match any variant of untagged enum") {
        let which = inner.rsplit(' ').next().unwrap_or("");
        let expected = match which {
            "Stop" => "a string or a list of strings",
            "Content" => "a string or a list of content parts",
            "Prompt" | "EmbedInput" => {
                "a string, a list of strings, a list of token ids or a list of lists of token ids"
            }
            _ => "a value of another type",
        };
        format!("expected {expected}")
    } else {
        inner.to_string()
    }
}

/// `404` for paths we do not serve.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError {
        code: Some("not_found"),
        ..ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "no such endpoint: {}; this server has GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST /v1/embeddings, GET /health, GET /metrics",
                uri.path()
            ),
        )
    }
}

/// `405` for a known path with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        code: Some("method_not_allowed"),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{} does not accept {method}", uri.path()),
        )
    }
}

/// A panicking handler answers 500 in the same shape; the process keeps serving.
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    ApiError::internal(format!(
        "internal error: {detail} (this is a bug in ferrolm; please report it with the request)"
    ))
    .into_response()
}
