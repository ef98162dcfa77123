//! The one error type of lift's services, each variant mapped once to a gRPC status code.

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

impl From<LiftError> for tonic::Status {
    fn from(error: LiftError) -> Self {
        match error {
            LiftError::InvalidArgument(message) => tonic::Status::invalid_argument(message),
            LiftError::NotFound(message) => tonic::Status::not_found(message),
            LiftError::AlreadyExists(message) => tonic::Status::already_exists(message),
            LiftError::FailedPrecondition(message) => tonic::Status::failed_precondition(message),
            LiftError::PermissionDenied(message) => tonic::Status::permission_denied(message),
            LiftError::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            LiftError::Unavailable(message) => tonic::Status::unavailable(message),
            LiftError::Internal(message) => tonic::Status::internal(message),
        }
    }
}

impl From<crate::broker::BrokerError> for LiftError {
    fn from(error: crate::broker::BrokerError) -> Self {
        LiftError::Unavailable(error.to_string())
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
}
