//! A trainer whose training thread panics: the real train worker, model, store and RabbitMQ,
//! behind a broker that panics when the run reports its first training step (the report is
//! made from the training thread). For the cross-process test of a trainer that dies this way
//! (`tests/tests/distributed.rs`); configured by the same `LIFT_*` variables as `lift`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lift_broker::rabbitmq::{RabbitBroker, RabbitBrokerOptions};
use lift_broker::{Broker, BrokerError, Delivery, DeliveryStream, Headers};
use lift_engine::{pick_device, DeviceChoice, Engine, ModelSource};
use lift_shared::config::Config;
use lift_shared::messages::ProgressEvent;
use lift_store::Store;
use lift_worker_train::{run_train_worker, RunOptions, TrainWorkerConfig};
use tokio_util::sync::CancellationToken;

/// Passes everything through to RabbitMQ, except the first training step's report.
struct PanicsAtFirstStep(RabbitBroker);

#[async_trait]
impl Broker for PanicsAtFirstStep {
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), BrokerError> {
        if let Ok(ProgressEvent::TrainingStep { step, .. }) = serde_json::from_slice(payload) {
            panic!("injected fault: the training thread panics at step {step}");
        }
        self.0.publish(queue, payload, headers).await
    }
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        self.0.consume(queue, prefetch).await
    }
    async fn fetch(&self, queue: &str) -> Result<Option<Box<dyn Delivery>>, BrokerError> {
        self.0.fetch(queue).await
    }
    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        self.0.queue_depth(queue).await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(None)?;
    let store = Store::open(&config.store_url, config.s3_endpoint.as_deref())?;
    let options = RabbitBrokerOptions::from_config(&config, "panicking-trainer");
    let broker = Arc::new(PanicsAtFirstStep(RabbitBroker::connect(options).await?));
    let source = ModelSource::parse(&config.model)?;
    let device = pick_device(DeviceChoice {
        cpu_only: config.cpu_only,
        tf32: config.tf32,
    });
    let model_dir = config.model_dir.clone();
    let engine = Arc::new(
        tokio::task::spawn_blocking(move || Engine::load(&source, &model_dir, &device)).await??,
    );
    let trainer_id = format!("panicking-trainer-{}", std::process::id());
    run_train_worker(
        broker,
        store,
        engine,
        TrainWorkerConfig {
            trainer_id,
            lease: Duration::from_secs(config.trainer_lease_secs),
            unserved_model_timeout: Duration::from_secs(config.unserved_model_timeout_secs),
            run: RunOptions::default(),
            exit_when_idle: None,
        },
        CancellationToken::new(),
    )
    .await?;
    Ok(())
}
