//! What every subcommand sets up: configuration, store, broker, engine, shutdown signal.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use lift_broker::memory::InProcessBroker;
use lift_broker::rabbitmq::{RabbitBroker, RabbitBrokerOptions};
use lift_broker::Broker;
use lift_engine::{pick_device, DeviceChoice, Engine, ModelSource};
use lift_shared::config::Config;
use lift_store::Store;
use tokio_util::sync::CancellationToken;

pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.store_url, config.s3_endpoint.as_deref())
        .with_context(|| format!("cannot open the store at {}", config.store_url))
}

/// The store, for commands that only read it: a local store that does not exist is not
/// created.
pub fn open_existing_store(config: &Config) -> anyhow::Result<Store> {
    Store::open_existing(&config.store_url, config.s3_endpoint.as_deref())
        .with_context(|| format!("cannot open the store at {}", config.store_url))
}

/// RabbitMQ when `LIFT_AMQP_URL` is set, else the in-process broker (embedded mode only).
pub async fn connect_broker(config: &Config, name: &str) -> anyhow::Result<Arc<dyn Broker>> {
    if config.amqp_url.is_empty() {
        return Ok(Arc::new(InProcessBroker::new(config.delivery_limit)));
    }
    let broker = RabbitBroker::connect(RabbitBrokerOptions::from_config(config, name))
        .await
        .context("cannot connect to RabbitMQ (LIFT_AMQP_URL)")?;
    Ok(Arc::new(broker))
}

/// Distributed processes need a real broker; the in-process one cannot reach other processes.
pub fn require_amqp(config: &Config, command: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.amqp_url.is_empty(),
        "`lift {command}` talks to other processes through RabbitMQ: set LIFT_AMQP_URL (or use `lift run` for one process)"
    );
    Ok(())
}

/// The engine's device as the configuration allows it.
pub fn device(config: &Config) -> lift_engine::Device {
    pick_device(DeviceChoice {
        cpu_only: config.cpu_only,
        tf32: config.tf32,
    })
}

/// Loads a model off the async runtime (it reads and dequantizes hundreds of MB).
pub async fn load_engine(config: &Config, reference: &str) -> anyhow::Result<Arc<Engine>> {
    let source = ModelSource::parse(reference)?;
    let device = device(config);
    let model_dir = config.model_dir.clone();
    let eight_bit_decoding = !config.cpu_decode_exact;
    let engine = tokio::task::spawn_blocking(move || {
        Engine::load_with_decoding(&source, &model_dir, &device, eight_bit_decoding)
    })
    .await
    .context("model loading thread failed")??;
    Ok(Arc::new(engine))
}

/// Cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}

/// A trainer id that is unique per process: host name plus process id.
pub fn process_id(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".to_string());
    format!("{role}-{host}-{}", std::process::id())
}
