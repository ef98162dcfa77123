//! The trainer's consume loop: one job at a time from `lift.train`. The delivery is acked as
//! soon as the job is claimed in the store, because a training run outlasts the broker's
//! consumer timeout; from then on the claim, the heartbeat and the checkpoints are the truth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lift_engine::Engine;
use lift_shared::broker::{queues, Broker, Delivery, Headers};
use lift_shared::messages::{now_ms, ProgressEvent, TrainAssignment};
use lift_shared::store::{layout, Heartbeat, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::error::TrainError;
use crate::run::{JobRun, RunOptions};

#[derive(Debug, Clone)]
pub struct TrainWorkerConfig {
    /// Names this trainer in claims, heartbeats and logs.
    pub trainer_id: String,
    /// Heartbeats are written every third of this.
    pub lease: Duration,
    pub run: RunOptions,
    /// Return after this long without a job (a KEDA ScaledJob pod then completes and frees its
    /// GPU); `None` waits for jobs until shut down.
    pub exit_when_idle: Option<Duration>,
}

/// `jobs/<id>/claims/<generation>.json`: the newest generation owns the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    trainer: String,
    at_ms: i64,
}

/// Consumes `lift.train` until `shutdown`; a job in progress at shutdown is checkpointed and
/// handed back to the queue.
pub async fn run_train_worker(
    broker: Arc<dyn Broker>,
    store: Store,
    engine: Arc<Engine>,
    config: TrainWorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), TrainError> {
    let mut deliveries = broker.consume(queues::TRAIN, 1).await?;
    info!(trainer = %config.trainer_id, "train worker consuming {}", queues::TRAIN);
    loop {
        let idle_limit = async {
            match config.exit_when_idle {
                Some(idle) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = idle_limit => {
                info!(trainer = %config.trainer_id, "no training job for {:?}; exiting", config.exit_when_idle.unwrap_or_default());
                return Ok(());
            }
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    warn!(%error, "train queue delivery error");
                    continue;
                }
                None => return Ok(()),
            },
        };
        let assignment = match serde_json::from_slice::<TrainAssignment>(delivery.payload()) {
            Ok(assignment) => assignment,
            Err(error) => {
                warn!(%error, "malformed train assignment, dead-lettering it");
                if let Err(error) = delivery.reject().await {
                    warn!(%error, "reject failed");
                }
                continue;
            }
        };
        if let Err(error) = handle_assignment(
            &broker, &store, &engine, &config, &shutdown, assignment, delivery,
        )
        .await
        {
            error!(%error, "training run failed");
        }
    }
}

async fn handle_assignment(
    broker: &Arc<dyn Broker>,
    store: &Store,
    engine: &Arc<Engine>,
    config: &TrainWorkerConfig,
    shutdown: &CancellationToken,
    assignment: TrainAssignment,
    delivery: Box<dyn Delivery>,
) -> Result<(), TrainError> {
    let job = assignment.job_id.clone();
    let finished = store.exists(&layout::adapter_config(&job)).await?;
    let cancelled = store.exists(&layout::cancel(&job)).await?;
    if finished || cancelled {
        info!(job_id = %job, finished, cancelled, "skipping assignment of a job that is over");
        delivery.ack().await?;
        return Ok(());
    }
    if !serves_model(engine, &assignment.base_model) {
        // A trainer holds one base model in memory; a job for another one cannot run here.
        warn!(job_id = %job, wanted = %assignment.base_model, serving = %engine.model_id(), "job needs another base model");
        publish_event(
            broker,
            ProgressEvent::TrainingFailed {
                job_id: job.clone(),
                reason: format!(
                    "no trainer serves base model {:?} (this trainer serves {})",
                    assignment.base_model,
                    engine.model_id()
                ),
                at_ms: now_ms(),
            },
        )
        .await?;
        delivery.ack().await?;
        return Ok(());
    }
    let Some(generation) = claim(store, &job, &config.trainer_id).await? else {
        info!(job_id = %job, "another trainer claimed the job first");
        delivery.ack().await?;
        return Ok(());
    };
    let trace = lift_shared::telemetry::trace_context_of(delivery.headers());
    delivery.ack().await?;
    info!(job_id = %job, generation, trainer = %config.trainer_id, "claimed job");

    let current_step = Arc::new(AtomicU64::new(0));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        store.clone(),
        job.clone(),
        config.trainer_id.clone(),
        config.lease / 3,
        current_step.clone(),
        heartbeat_stop.clone(),
    ));
    let run = JobRun {
        engine: engine.clone(),
        store: store.clone(),
        broker: broker.clone(),
        assignment,
        trainer_id: config.trainer_id.clone(),
        claim_generation: generation,
        options: config.run.clone(),
        shutdown: shutdown.clone(),
        current_step,
    };
    // The whole run is one span of the job's trace; epochs are its children.
    let span = tracing::info_span!("train_job", job_id = %job, generation);
    lift_shared::telemetry::continue_trace(&span, &trace);
    let result = tokio::task::spawn_blocking(move || span.in_scope(|| run.run()))
        .await
        .map_err(|e| TrainError::Thread(e.to_string()))?;
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    match result {
        Ok(outcome) => {
            info!(job_id = %job, ?outcome, "training run ended");
            Ok(())
        }
        Err(error) => {
            publish_event(
                broker,
                ProgressEvent::TrainingFailed {
                    job_id: job.clone(),
                    reason: error.to_string(),
                    at_ms: now_ms(),
                },
            )
            .await?;
            Err(error)
        }
    }
}

async fn publish_event(broker: &Arc<dyn Broker>, event: ProgressEvent) -> Result<(), TrainError> {
    let payload = serde_json::to_vec(&event).expect("events serialize");
    broker
        .publish(queues::EVENTS, &payload, Headers::new())
        .await?;
    Ok(())
}

/// Whether `reference` (as a job names it) is the model this trainer holds.
fn serves_model(engine: &Engine, reference: &str) -> bool {
    reference == engine.model_id()
        || lift_engine::ModelSource::parse(reference)
            .is_ok_and(|m| m.model_id() == engine.model_id())
}

/// Creates the next claim generation; None when another trainer created it first.
async fn claim(
    store: &Store,
    job: &lift_shared::ids::JobId,
    trainer: &str,
) -> Result<Option<u32>, TrainError> {
    let claims = store.list(&layout::claims_prefix(job)).await?;
    let next = claims
        .iter()
        .filter_map(|k| layout::chunk_index_of(k))
        .max()
        .map_or(0, |g| g + 1);
    let record = serde_json::to_vec(&Claim {
        trainer: trainer.to_string(),
        at_ms: now_ms(),
    })
    .expect("claims serialize");
    Ok(store
        .put_create(&layout::claim(job, next), record)
        .await?
        .then_some(next))
}

async fn heartbeat_loop(
    store: Store,
    job: lift_shared::ids::JobId,
    trainer: String,
    every: Duration,
    step: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let beat = Heartbeat {
            trainer: trainer.clone(),
            at_ms: now_ms(),
            step: step.load(Ordering::Relaxed),
        };
        if let Err(error) = store
            .put_json_overwrite(&layout::heartbeat(&job), &beat)
            .await
        {
            warn!(job_id = %job, %error, "heartbeat write failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every.max(Duration::from_millis(100))) => {}
        }
    }
}
