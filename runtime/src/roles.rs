//! The distributed roles as processes: `lift coordinator`, `lift synth-worker`,
//! `lift train-worker`. Each runs until SIGTERM or Ctrl-C and then stops gracefully.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lift_broker::Broker;
use lift_coordinator::{serve_grpc, Coordinator, CoordinatorOptions};
use lift_engine::{Engine, ModelSource};
use lift_shared::auth::ServerSecurity;
use lift_shared::config::Config;
use lift_shared::spec::ModelCatalog;
use lift_store::Store;
use lift_worker_synth::{
    BuiltinGenerator, InstantGenerator, OpenAiGenerator, OpenAiOptions, QaGenerator,
    SynthWorkerConfig, INSTANT_GENERATOR_URL,
};
use lift_worker_train::{run_train_worker, RunOptions, TrainWorkerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{infra, ops};

/// Embedded mode, where the trainer runs in this process: a base model must load here
/// (`default`, a .gguf file, a Hugging Face directory).
pub fn local_model_catalog() -> Arc<dyn ModelCatalog> {
    Arc::new(|reference: &str| -> Result<(), String> {
        ModelSource::parse(reference)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// A distributed coordinator holds no model: it checks a reference's form only. Whether the
/// file exists is for the trainers; one that holds the model takes the job, the others pass
/// it on, and it fails after `LIFT_UNSERVED_MODEL_TIMEOUT_SECS` when none does.
pub fn fleet_model_catalog() -> Arc<dyn ModelCatalog> {
    Arc::new(|reference: &str| -> Result<(), String> {
        let reference = reference.trim();
        if ModelSource::names_default(reference) || reference.starts_with('/') {
            return Ok(());
        }
        Err(format!(
            "unknown model `{reference}`: expected `default`, or the absolute path of a .gguf file or a Hugging Face model directory on the trainers"
        ))
    })
}

/// The HTTP generator when `LIFT_GENERATOR_URL` is set (`instant:` for benchmarks of the
/// message layer), else the built-in engine.
pub fn build_generator(
    config: &Config,
    engine: Option<Arc<Engine>>,
) -> anyhow::Result<Arc<dyn QaGenerator>> {
    if config.generator_url == INSTANT_GENERATOR_URL {
        tracing::warn!(
            "generator is `instant:`: tasks are placeholders for benchmarking the message layer"
        );
        return Ok(Arc::new(InstantGenerator));
    }
    if !config.generator_url.is_empty() {
        let mut options =
            OpenAiOptions::new(config.generator_url.clone(), config.generator_model.clone());
        options.api_key = config.generator_api_key.expose().map(str::to_owned);
        options.max_in_flight = config.generator_requests_in_flight();
        return Ok(Arc::new(OpenAiGenerator::new(options)?));
    }
    let engine = engine.context("the built-in generator needs a model; set LIFT_GENERATOR_URL to use an HTTP generator instead")?;
    Ok(Arc::new(BuiltinGenerator::new(engine)))
}

pub fn spawn_synth_worker(
    config: &Config,
    broker: Arc<dyn Broker>,
    store: Store,
    generator: Arc<dyn QaGenerator>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let worker_config = SynthWorkerConfig {
        concurrency: config.synth_concurrency.max(1) as usize,
        delivery_limit: config.delivery_limit,
        ..SynthWorkerConfig::default()
    };
    tokio::spawn(async move {
        if let Err(error) =
            lift_worker_synth::run_synth_worker(broker, store, generator, worker_config, shutdown)
                .await
        {
            tracing::error!(%error, "synth worker stopped with an error");
        }
    })
}

pub async fn coordinator(config: Config) -> anyhow::Result<()> {
    infra::require_amqp(&config, "coordinator")?;
    // Bad token or certificate files stop the process before it takes any work.
    let security = ServerSecurity::from_config(&config)?;
    let store = infra::open_store(&config)?;
    let broker = infra::connect_broker(&config, &infra::process_id("coordinator")).await?;
    let shutdown = infra::shutdown_signal();
    ops::spawn(&config, broker.clone(), store.clone(), shutdown.clone())
        .await?
        .set();
    let coordinator = Coordinator::start(
        CoordinatorOptions::from_config(&config),
        store,
        broker,
        fleet_model_catalog(),
    )
    .await?;
    let addr = config
        .grpc_addr
        .parse()
        .with_context(|| format!("LIFT_GRPC_ADDR {} is not host:port", config.grpc_addr))?;
    tracing::info!(%addr, "coordinator serving gRPC");
    serve_grpc(addr, &coordinator, &security, async move {
        shutdown.cancelled().await
    })
    .await?;
    coordinator.shutdown().await;
    Ok(())
}

pub async fn synth_worker(config: Config) -> anyhow::Result<()> {
    infra::require_amqp(&config, "synth-worker")?;
    let store = infra::open_store(&config)?;
    let broker = infra::connect_broker(&config, &infra::process_id("synth")).await?;
    let shutdown = infra::shutdown_signal();
    let model_loaded = ops::spawn(&config, broker.clone(), store.clone(), shutdown.clone()).await?;
    let engine = if config.generator_url.is_empty() {
        Some(infra::load_engine(&config, &config.model).await?)
    } else {
        None
    };
    model_loaded.set();
    let generator = build_generator(&config, engine)?;
    spawn_synth_worker(&config, broker, store, generator, shutdown).await?;
    Ok(())
}

pub async fn train_worker(config: Config) -> anyhow::Result<()> {
    infra::require_amqp(&config, "train-worker")?;
    let store = infra::open_store(&config)?;
    let broker = infra::connect_broker(&config, &infra::process_id("trainer")).await?;
    let shutdown = infra::shutdown_signal();
    let model_loaded = ops::spawn(&config, broker.clone(), store.clone(), shutdown.clone()).await?;
    let engine = infra::load_engine(&config, &config.model).await?;
    model_loaded.set();
    run_train_worker(
        broker,
        store,
        engine,
        TrainWorkerConfig {
            trainer_id: infra::process_id("trainer"),
            lease: Duration::from_secs(config.trainer_lease_secs),
            unserved_model_timeout: Duration::from_secs(config.unserved_model_timeout_secs),
            run: RunOptions {
                checkpoint_every_steps: config.checkpoint_every_steps.max(1),
                ..RunOptions::default()
            },
            exit_when_idle: config.trainer_exit_when_idle_secs.map(Duration::from_secs),
        },
        shutdown,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_coordinator_checks_a_models_form_not_its_own_disk() {
        let fleet = fleet_model_catalog();
        for reference in [
            "default",
            lift_engine::DEFAULT_MODEL_ID,
            "/models/llama-3.2-1b",
            "/models/not-on-this-machine.gguf",
        ] {
            assert_eq!(fleet.check(reference), Ok(()), "{reference}");
        }
        let refused = fleet.check("models/relative.gguf").unwrap_err();
        assert!(refused.contains("absolute path"), "{refused}");
        assert!(fleet.check("defualt").is_err());
        // Embedded mode loads the model itself, so it looks on this disk.
        assert!(local_model_catalog()
            .check("/models/not-on-this-machine.gguf")
            .is_err());
    }
}
