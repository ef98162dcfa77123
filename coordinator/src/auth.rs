//! The gRPC side of authentication: every `LiftService` call passes this interceptor, which
//! turns the `authorization` metadata into the caller's [`Tenant`] (or refuses the call with
//! `UNAUTHENTICATED`); handlers read the tenant from the request's extensions.

use std::sync::Arc;

use lift_shared::auth::{authenticate, Tenant, TokenTable};
use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct Authenticate {
    tokens: Option<Arc<TokenTable>>,
}

impl Authenticate {
    pub fn new(tokens: Option<Arc<TokenTable>>) -> Self {
        Self { tokens }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let tenant = authenticate(self.tokens.as_deref(), header)?;
        request.extensions_mut().insert(tenant);
        Ok(request)
    }
}

/// The caller of a request that passed [`Authenticate`]; open when none ran (in-process
/// callers such as tests).
pub fn tenant_of<T>(request: &Request<T>) -> Tenant {
    request
        .extensions()
        .get::<Tenant>()
        .cloned()
        .unwrap_or(Tenant::Open)
}
