//! Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}` with
//! the HTTP status a client expects, so the official clients raise their typed
//! exceptions (`BadRequestError` for 400, `AuthenticationError` for 401, …) and a person
//! reading the body learns which field to fix. Nothing the server answers is plain text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with. Each variant has one status and one `type`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A field is missing, of the wrong type or out of range; `param` names it.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the model '{0}' does not exist; GET /v1/models lists the one served")]
    ModelNotFound(String),
    #[error("no route {0}; see GET /v1/models, POST /v1/completions, POST /v1/chat/completions")]
    RouteNotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the request body is over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("the request queue is full ({0} waiting); retry in a moment")]
    QueueFull(usize),
    #[error("the request took longer than --timeout-s {0}")]
    Timeout(u64),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ServeError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::InvalidRequest { .. } | ServeError::MalformedJson(_) => {
                StatusCode::BAD_REQUEST
            }
            ServeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServeError::ModelNotFound(_) | ServeError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServeError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ServeError::InvalidRequest { .. } => ("invalid_request_error", None),
            ServeError::MalformedJson(_) => ("invalid_request_error", Some("invalid_json")),
            ServeError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            ServeError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ServeError::RouteNotFound(_) => ("invalid_request_error", Some("not_found")),
            ServeError::MethodNotAllowed(_) => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            ServeError::TooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            ServeError::QueueFull(_) => ("rate_limit_error", Some("queue_full")),
            ServeError::Timeout(_) => ("timeout_error", Some("timeout")),
            ServeError::ShuttingDown => ("server_error", Some("shutting_down")),
            ServeError::Internal(_) => ("server_error", None),
        }
    }

    /// The JSON body, `{"error": {...}}`; also what a stream sends as its last event
    /// when a request fails after the response began.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind();
        let param = match self {
            ServeError::InvalidRequest { param, .. } => param.clone(),
            _ => None,
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            ServeError::QueueFull(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ServeError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Retrying the same request cannot help; the official clients read this.
            ServeError::Timeout(_) | ServeError::ShuttingDown | ServeError::Internal(_) => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        response
    }
}
