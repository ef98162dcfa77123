//! The one error type of lift's services, and the one table of error codes that gRPC and
//! HTTP answer with (as quickwit's `ServiceErrorCode`): a service error says what kind of
//! failure it is, and each transport maps that kind once.

/// The kinds of failure a caller can act on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or asks for something impossible: do not retry it as is.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The target is in a state that does not allow the request (a finished job cancelled).
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    /// Too much in flight at once: retry shortly.
    Overloaded,
    /// A dependency (broker, store, engine thread) is down or restarting: retry later.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::Overloaded => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status code, as Google's API design guide pairs it with the gRPC code.
    pub fn http(self) -> u16 {
        match self {
            Self::InvalidArgument | Self::FailedPrecondition => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::Overloaded => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// An error and its causes, outermost first ("failed to write k: Generic S3 error: ..."): for
/// messages and log lines, where a library's top-level message alone hides what failed.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

/// An error that knows its code; each transport turns the code into its own status.
pub trait ServiceError: std::fmt::Display {
    fn error_code(&self) -> ErrorCode;
}

/// Messages are lower case and name what failed; they reach gRPC clients unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LiftError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError for LiftError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<LiftError> for tonic::Status {
    fn from(error: LiftError) -> Self {
        tonic::Status::new(error.error_code().grpc(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_variant_maps_to_its_grpc_code() {
        let cases = [
            (
                LiftError::InvalidArgument("a".into()),
                Code::InvalidArgument,
            ),
            (LiftError::NotFound("a".into()), Code::NotFound),
            (LiftError::AlreadyExists("a".into()), Code::AlreadyExists),
            (
                LiftError::FailedPrecondition("a".into()),
                Code::FailedPrecondition,
            ),
            (
                LiftError::PermissionDenied("a".into()),
                Code::PermissionDenied,
            ),
            (
                LiftError::Unauthenticated("a".into()),
                Code::Unauthenticated,
            ),
            (LiftError::Unavailable("a".into()), Code::Unavailable),
            (LiftError::Internal("a".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), "a");
        }
    }

    #[test]
    fn each_code_has_the_http_status_of_its_grpc_code() {
        let pairs = [
            (ErrorCode::InvalidArgument, Code::InvalidArgument, 400),
            (ErrorCode::NotFound, Code::NotFound, 404),
            (ErrorCode::AlreadyExists, Code::AlreadyExists, 409),
            (ErrorCode::FailedPrecondition, Code::FailedPrecondition, 400),
            (ErrorCode::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorCode::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorCode::Overloaded, Code::ResourceExhausted, 429),
            (ErrorCode::Unavailable, Code::Unavailable, 503),
            (ErrorCode::Internal, Code::Internal, 500),
        ];
        for (code, grpc, http) in pairs {
            assert_eq!((code.grpc(), code.http()), (grpc, http), "{code:?}");
        }
    }
}
