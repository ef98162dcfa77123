//! `lift`'s exit statuses: one per kind of outcome, so scripts and a Kubernetes
//! `podFailurePolicy` can retry what may pass later and give up on what will not.

use std::process::ExitCode;

use lift_engine::EngineError;
use lift_shared::error::{LiftError, ServiceError};

/// Every status `lift` exits with. `lift --help` and the README list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// Anything not named below.
    Error = 1,
    /// clap's status for arguments it cannot parse.
    Usage = 2,
    /// A job ended failed or cancelled (for `lift batch`: at least one of its jobs).
    JobFailed = 3,
    /// What was passed is refused (a document that cannot be read, an option out of range):
    /// the same command will fail again.
    InvalidInput = 4,
    /// The coordinator, broker or store could not be reached or is overloaded: try again.
    Unavailable = 5,
    /// No such job (or adapter).
    NotFound = 6,
    /// No token, one not allowed to do this, or a TLS certificate refused (either side's).
    Denied = 7,
}

/// The `--help` text that lists the statuses.
pub const EXIT_STATUS_HELP: &str = "Exit status: 0 success, 1 other error, 2 usage, \
3 job failed or cancelled, 4 invalid input, 5 coordinator/broker/store unavailable (retry), \
6 not found, 7 not authenticated or not allowed (a token or a TLS certificate refused).";

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// A gRPC error from the coordinator, its code kept for the exit status.
#[derive(Debug)]
pub struct RpcError(pub tonic::Status);

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.0.message(), self.0.code())
    }
}

impl std::error::Error for RpcError {}

/// The status for an error: the first cause in its chain that says what kind it is.
pub fn exit_for(error: &anyhow::Error) -> Exit {
    // A certificate refused either way will be refused again: not "try again", though it
    // comes wrapped in the transport error that otherwise means the server is away.
    if error.chain().any(is_tls_rejection) {
        return Exit::Denied;
    }
    error
        .chain()
        .find_map(|cause| {
            if let Some(RpcError(status)) = cause.downcast_ref::<RpcError>() {
                return Some(for_grpc_code(status.code()));
            }
            if let Some(status) = cause.downcast_ref::<tonic::Status>() {
                return Some(for_grpc_code(status.code()));
            }
            if cause.downcast_ref::<tonic::transport::Error>().is_some() {
                return Some(Exit::Unavailable);
            }
            if let Some(error) = cause.downcast_ref::<EngineError>() {
                return Some(for_engine_error(error));
            }
            // Through the services' own LiftError -> gRPC code table (shared/src/error.rs).
            cause
                .downcast_ref::<LiftError>()
                .map(|error| for_grpc_code(error.error_code().grpc()))
        })
        .unwrap_or(Exit::Error)
}

/// A TLS error (an untrusted or missing certificate), bare or inside the I/O error that
/// carries it (`io::Error::source` skips its own payload, so the chain alone misses it).
fn is_tls_rejection(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.downcast_ref::<rustls::Error>().is_some()
        || cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// A model, adapter or prompt the user named that the engine refuses will be refused again;
/// a model not fetched yet is not found.
fn for_engine_error(error: &EngineError) -> Exit {
    match error {
        EngineError::InvalidModel(_)
        | EngineError::UnsupportedArchitecture(_)
        | EngineError::InvalidAdapter(_)
        | EngineError::PromptTooLong { .. }
        | EngineError::InvalidRequest(_) => Exit::InvalidInput,
        EngineError::ModelMissing { .. } => Exit::NotFound,
        _ => Exit::Error,
    }
}

fn for_grpc_code(code: tonic::Code) -> Exit {
    use tonic::Code;
    match code {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists => Exit::InvalidInput,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            Exit::Unavailable
        }
        Code::NotFound => Exit::NotFound,
        Code::Unauthenticated | Code::PermissionDenied => Exit::Denied,
        _ => Exit::Error,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_own_status() {
        let rpc = |code| anyhow::Error::new(RpcError(tonic::Status::new(code, "refused")));
        assert_eq!(
            exit_for(&rpc(tonic::Code::InvalidArgument)),
            Exit::InvalidInput
        );
        assert_eq!(exit_for(&rpc(tonic::Code::Unavailable)), Exit::Unavailable);
        assert_eq!(exit_for(&rpc(tonic::Code::NotFound)), Exit::NotFound);
        assert_eq!(exit_for(&rpc(tonic::Code::PermissionDenied)), Exit::Denied);
        assert_eq!(exit_for(&rpc(tonic::Code::Internal)), Exit::Error);
        // The cause decides, under any context added on the way up.
        let store_down =
            anyhow::Error::new(LiftError::Unavailable("store".into())).context("cannot load job 1");
        assert_eq!(exit_for(&store_down), Exit::Unavailable);
        let unreadable: anyhow::Result<()> =
            Err(LiftError::InvalidArgument("cannot read doc.md".into())).context("lift run");
        assert_eq!(exit_for(&unreadable.unwrap_err()), Exit::InvalidInput);
        assert_eq!(exit_for(&anyhow::anyhow!("a bug")), Exit::Error);
        let unknown_model = anyhow::Error::new(EngineError::InvalidModel("no-such".into()))
            .context("cannot load the model");
        assert_eq!(exit_for(&unknown_model), Exit::InvalidInput);
        let not_fetched = EngineError::ModelMissing {
            path: "/cache/model.gguf".into(),
        };
        assert_eq!(exit_for(&anyhow::Error::new(not_fetched)), Exit::NotFound);
        let untrusted = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let untrusted = anyhow::Error::new(untrusted)
            .context("transport error")
            .context("cannot reach the coordinator");
        assert_eq!(exit_for(&untrusted), Exit::Denied);
    }

    #[test]
    fn an_rpc_error_reads_as_before() {
        let error = RpcError(tonic::Status::not_found("job 7 not found"));
        assert_eq!(error.to_string(), "job 7 not found (NotFound)");
    }
}
