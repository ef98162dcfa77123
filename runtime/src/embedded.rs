//! Embedded mode: coordinator, synthesis worker and trainer in one process over the
//! in-process broker, with the coordinator's gRPC API on loopback for the caller (`lift run`,
//! `lift eval`) to drive like any other client.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lift_broker::memory::InProcessBroker;
use lift_broker::Broker;
use lift_coordinator::{serve_grpc_on, Coordinator, CoordinatorOptions};
use lift_engine::Engine;
use lift_shared::auth::ServerSecurity;
use lift_shared::config::Config;
use lift_store::Store;
use lift_worker_train::{run_train_worker, RunOptions, TrainWorkerConfig};
use tokio::net::TcpListener;

use crate::infra;
use crate::roles::{build_generator, local_model_catalog, spawn_synth_worker};

/// Runs `work` against lift in this process (coordinator, synthesis worker and trainer over
/// the in-process broker, gRPC on `listen` or a free loopback port), then stops it all.
pub async fn with_embedded<T, Work>(
    config: &Config,
    engine: Arc<Engine>,
    store: Store,
    listen: Option<SocketAddr>,
    work: impl FnOnce(SocketAddr) -> Work,
) -> anyhow::Result<T>
where
    Work: Future<Output = anyhow::Result<T>>,
{
    let broker: Arc<dyn Broker> = Arc::new(InProcessBroker::new(config.delivery_limit));
    let coordinator = Coordinator::start(
        CoordinatorOptions::from_config(config),
        store.clone(),
        broker.clone(),
        local_model_catalog(),
    )
    .await?;
    let shutdown = infra::shutdown_signal();
    let generator = build_generator(config, Some(engine.clone()))?;
    let synth = spawn_synth_worker(
        config,
        broker.clone(),
        store.clone(),
        generator,
        shutdown.clone(),
    );
    let trainer = tokio::spawn(run_train_worker(
        broker.clone(),
        store.clone(),
        engine,
        TrainWorkerConfig {
            trainer_id: infra::process_id("trainer"),
            lease: std::time::Duration::from_secs(config.trainer_lease_secs),
            unserved_model_timeout: std::time::Duration::from_secs(
                config.unserved_model_timeout_secs,
            ),
            run: RunOptions::default(),
            exit_when_idle: None,
        },
        shutdown.clone(),
    ));
    let listener =
        TcpListener::bind(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
    let addr = listener.local_addr()?;
    let server_stop = shutdown.clone();
    // The client is this process, on loopback: no tokens, no TLS.
    let security = ServerSecurity::open();
    let server = serve_grpc_on(listener, &coordinator, &security, async move {
        server_stop.cancelled().await
    });
    let client_side = async {
        let result = work(addr).await;
        shutdown.cancel();
        result
    };
    let (served, outcome) = tokio::join!(server, client_side);
    served?;
    let _ = synth.await;
    let _ = trainer.await;
    coordinator.shutdown().await;
    outcome
}
