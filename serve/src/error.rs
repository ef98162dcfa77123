//! Errors of the server, in the shape OpenAI clients parse (`{"error": {...}}`), with the
//! HTTP status each maps to.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lift_engine::EngineError;
use serde_json::{json, Value};

#[derive(Debug)]
pub(super) enum ServeError {
    BadRequest(String),
    Unauthenticated(String),
    PermissionDenied(String),
    ModelNotFound(String),
    /// Completions admitted at once, all taken.
    Overloaded(usize),
    Unavailable(String),
    Internal(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRequest(message)
            | Self::Unauthenticated(message)
            | Self::PermissionDenied(message)
            | Self::Unavailable(message)
            | Self::Internal(message) => f.write_str(message),
            // OpenAI's wording, which clients show as is.
            Self::ModelNotFound(model) => write!(f, "The model `{model}` does not exist"),
            Self::Overloaded(limit) => write!(
                f,
                "the server is busy ({limit} completions in progress); retry shortly"
            ),
        }
    }
}

impl ServeError {
    /// The engine thread has stopped taking work.
    pub(super) fn shutting_down() -> Self {
        Self::Unavailable("the server is shutting down".to_string())
    }

    pub(super) fn store(error: lift_shared::error::LiftError) -> Self {
        Self::Unavailable(error.to_string())
    }

    pub(super) fn engine(error: EngineError) -> Self {
        match error {
            EngineError::PromptTooLong { .. } | EngineError::InvalidRequest(_) => {
                Self::BadRequest(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error object OpenAI clients parse.
    pub(super) fn body(&self) -> Value {
        let (kind, code) = match self {
            Self::BadRequest(_) => ("invalid_request_error", Value::Null),
            Self::Unauthenticated(_) => ("authentication_error", json!("invalid_api_key")),
            Self::PermissionDenied(_) => ("permission_error", Value::Null),
            Self::ModelNotFound(_) => ("invalid_request_error", json!("model_not_found")),
            Self::Overloaded(_) => ("requests", json!("rate_limit_exceeded")),
            Self::Unavailable(_) | Self::Internal(_) => ("server_error", Value::Null),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}})
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_) | Self::Unavailable(_)) {
            tracing::error!(error = %self, "chat completion failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, Self::Overloaded(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
