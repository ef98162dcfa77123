//! Errors of the server, in the shape OpenAI clients parse (`{"error": {...}}`); the HTTP
//! status comes from the error code table shared with gRPC (`lift_shared::error::ErrorCode`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lift_engine::EngineError;
use lift_shared::error::{ErrorCode, ServiceError};
use lift_store::StoreError;
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

    pub(super) fn store(error: StoreError) -> Self {
        match error.error_code() {
            ErrorCode::Unavailable => Self::Unavailable(error.with_causes()),
            _ => Self::Internal(error.with_causes()),
        }
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
        StatusCode::from_u16(self.error_code().http())
            .expect("every error code has a valid HTTP status")
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

impl ServiceError for ServeError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::InvalidArgument,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::ModelNotFound(_) => ErrorCode::NotFound,
            Self::Overloaded(_) => ErrorCode::Overloaded,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
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
