//! Starting and stopping the coordinator, and serving it over gRPC with reflection and health.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lift_broker::Broker;
use lift_shared::auth::ServerSecurity;
use lift_shared::config::Config;
use lift_shared::error::LiftError;
use lift_shared::proto;
use lift_shared::proto::lift_service_server::LiftServiceServer;
use lift_shared::spec::ModelCatalog;
use lift_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::auth::Authenticate;
use crate::jobs::{Context, JobRegistry};
use crate::service::LiftServiceImpl;
use crate::split::SplitOptions;
use crate::{gauges, lease, progress, recovery};

/// Settings of a coordinator, taken from [`Config`] by [`CoordinatorOptions::from_config`].
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub limits: lift_shared::spec::Limits,
    pub split: SplitOptions,
    /// Used for jobs that name no base model.
    pub default_base_model: String,
    pub failed_share_threshold: f64,
    pub trainer_lease: Duration,
}

impl CoordinatorOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            limits: config.limits(),
            split: SplitOptions::default(),
            default_base_model: config.model.clone(),
            failed_share_threshold: config.failed_share_threshold,
            trainer_lease: Duration::from_secs(config.trainer_lease_secs),
        }
    }
}

/// A running coordinator: its background tasks plus the state the gRPC service reads.
pub struct Coordinator {
    pub(crate) ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    /// Recovers unfinished jobs from the store (before returning, so the first request sees
    /// them), then starts progress aggregation and the trainer watchdog.
    pub async fn start(
        options: CoordinatorOptions,
        store: Store,
        broker: Arc<dyn Broker>,
        catalog: Arc<dyn ModelCatalog>,
    ) -> Result<Self, LiftError> {
        let ctx = Arc::new(Context {
            store,
            broker,
            catalog,
            jobs: JobRegistry::default(),
            limits: options.limits,
            split: options.split,
            default_base_model: options.default_base_model,
            failed_share_threshold: options.failed_share_threshold,
            trainer_lease: options.trainer_lease,
            draining: watch::channel(false).0,
        });
        ctx.store.verify_create_only().await?;
        let recovered = recovery::recover_jobs(&ctx).await?;
        tracing::info!(recovered, store = ctx.store.url(), "coordinator started");
        let (shutdown, _) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(progress::run_progress(ctx.clone(), shutdown.subscribe())),
            tokio::spawn(lease::run_lease_watchdog(ctx.clone(), shutdown.subscribe())),
            tokio::spawn(gauges::run_gauges(ctx.clone(), shutdown.subscribe())),
        ];
        Ok(Self {
            ctx,
            shutdown,
            tasks,
        })
    }

    /// The tonic service, sized to accept the largest valid request, behind the bearer-token
    /// check (which lets everyone in when `security` has no tokens).
    pub fn service(
        &self,
        security: &ServerSecurity,
    ) -> InterceptedService<LiftServiceServer<LiftServiceImpl>, Authenticate> {
        // Headroom over the documents for titles, options and protobuf framing.
        let max_message = self.ctx.limits.max_request_bytes + 1024 * 1024;
        let server = LiftServiceServer::new(LiftServiceImpl::new(self.ctx.clone()))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        InterceptedService::new(server, Authenticate::new(security.tokens.clone()))
    }

    /// Stops the background tasks after they stored what they hold, and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "coordinator task failed");
            }
        }
    }
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve_grpc(
    addr: SocketAddr,
    coordinator: &Coordinator,
    security: &ServerSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), LiftError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| LiftError::Unavailable(format!("failed to bind grpc address {addr}: {e}")))?;
    serve_grpc_on(listener, coordinator, security, shutdown).await
}

/// Serves `LiftService`, gRPC reflection (v1 and v1alpha, for grpcurl) and gRPC health (for
/// Kubernetes probes) on an already bound listener (tests bind port 0) until `shutdown`, over
/// TLS when `security` has a certificate. Reflection and health need no token: they describe
/// the API and the process, never a job.
pub async fn serve_grpc_on(
    listener: TcpListener,
    coordinator: &Coordinator,
    security: &ServerSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), LiftError> {
    let reflection_error = |e: tonic_reflection::server::Error| {
        LiftError::Internal(format!("failed to build grpc reflection: {e}"))
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection_error)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection_error)?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LiftServiceServer<LiftServiceImpl>>()
        .await;
    let local_addr = listener.local_addr().ok();
    tracing::info!(
        addr = ?local_addr,
        tls = security.tls.is_some(),
        client_certificates = security.tls.as_ref().is_some_and(|t| t.requires_client_certificates()),
        bearer_tokens = security.tokens.is_some(),
        "serving grpc"
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder
            .tls_config(tls.tonic())
            .map_err(|e| LiftError::InvalidArgument(format!("invalid TLS settings: {e}")))?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(coordinator.service(security))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                shutdown.await;
                coordinator.ctx.draining.send_replace(true);
            },
        )
        .await
        .map_err(|e| LiftError::Unavailable(format!("grpc server failed: {e}")))
}
