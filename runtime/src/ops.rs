//! The operations endpoint of every long-running lift process, on `LIFT_METRICS_ADDR`:
//! Prometheus `/metrics`, liveness `/healthz` (the process answers) and readiness `/readyz`
//! (the broker and the store answer, and the model is loaded where the role needs one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use lift_broker::{queues, Broker};
use lift_shared::config::Config;
use lift_shared::metrics;
use lift_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
struct Readiness {
    broker: Arc<dyn Broker>,
    store: Store,
    model_loaded: ModelLoaded,
}

/// Tells `/readyz` that the role's model is loaded (roles without a model set it at once).
#[derive(Clone, Default)]
pub struct ModelLoaded(Arc<AtomicBool>);

impl ModelLoaded {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the endpoint until `shutdown`, unless `LIFT_METRICS_ADDR` is empty; `/readyz`
/// reports ready once the returned flag is set.
pub async fn spawn(
    config: &Config,
    broker: Arc<dyn Broker>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<ModelLoaded> {
    let model_loaded = ModelLoaded::default();
    if config.metrics_addr.is_empty() {
        return Ok(model_loaded);
    }
    metrics::init();
    let listener = TcpListener::bind(&config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on LIFT_METRICS_ADDR {}", config.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let readiness = Readiness {
        broker,
        store,
        model_loaded: model_loaded.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(readiness));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the operations endpoint stopped");
        }
    });
    Ok(model_loaded)
}

async fn render_metrics() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, String) {
    if !readiness.model_loaded.get() {
        return (StatusCode::SERVICE_UNAVAILABLE, "model loading\n".into());
    }
    if let Err(error) = readiness.broker.queue_depth(queues::SYNTH).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("broker: {error}\n"),
        );
    }
    if let Err(error) = readiness.store.exists("readyz-probe").await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store: {}\n", error.with_causes()),
        );
    }
    (StatusCode::OK, "ready\n".into())
}
