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
use lift_shared::broker::{queues, Broker};
use lift_shared::config::Config;
use lift_shared::metrics;
use lift_shared::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
pub struct Readiness {
    pub broker: Arc<dyn Broker>,
    pub store: Store,
    /// Set once the role's model is loaded (already set for roles without one).
    pub model_loaded: Arc<AtomicBool>,
}

/// Serves the endpoint until `shutdown`, unless `LIFT_METRICS_ADDR` is empty.
pub async fn spawn(
    config: &Config,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.metrics_addr.is_empty() {
        return Ok(());
    }
    metrics::init();
    let listener = TcpListener::bind(&config.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on LIFT_METRICS_ADDR {}", config.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
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
    Ok(())
}

async fn render_metrics() -> impl axum::response::IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, String) {
    if !readiness.model_loaded.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "model loading\n".into());
    }
    if let Err(error) = readiness.broker.queue_depth(queues::SYNTH).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("broker: {error}\n"),
        );
    }
    if let Err(error) = readiness.store.exists("readyz-probe").await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {error}\n"));
    }
    (StatusCode::OK, "ready\n".into())
}
