//! The trainer's consume loop: one job at a time from `lift.train`. The delivery is acked as
//! soon as the job is claimed in the store, because a training run outlasts the broker's
//! consumer timeout; from then on the claim, the heartbeat and the checkpoints are the truth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lift_broker::{queues, Broker, Delivery, Headers};
use lift_engine::Engine;
use lift_shared::messages::{now_ms, ProgressEvent, TrainAssignment};
use lift_store::{layout, Claim, Heartbeat, Store};
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
    /// An assignment for a base model this trainer does not hold is passed on to the other
    /// trainers until it is this old; then its job fails, since no trainer took it.
    pub unserved_model_timeout: Duration,
}

/// How long an idle trainer waits before asking `lift.train` again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// How long a trainer holds an assignment for another base model before passing it on, so a
/// trainer alone with it does not spin on it.
const PASS_ON_PAUSE: Duration = Duration::from_secs(2);

/// What a trainer does with an assignment before any training.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    /// Claimed this generation of the job: train it.
    Claimed(u32),
    /// Nothing to do (the job is over, or another trainer holds it).
    Dropped,
    /// For a base model another trainer may hold: back into the queue.
    PassOn,
}

/// Takes assignments from `lift.train` one at a time until `shutdown`; a job in progress at
/// shutdown is checkpointed and handed back to the queue. It asks for the next assignment
/// only when idle (no subscription): a subscribed trainer would keep the next assignment in
/// its buffer for a whole training run, away from idle trainers.
pub async fn run_train_worker(
    broker: Arc<dyn Broker>,
    store: Store,
    engine: Arc<Engine>,
    config: TrainWorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), TrainError> {
    info!(trainer = %config.trainer_id, "train worker taking assignments from {}", queues::TRAIN);
    let mut idle_since = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if let Some(idle) = config.exit_when_idle {
            if idle_since.elapsed() >= idle {
                info!(trainer = %config.trainer_id, "no training job for {idle:?}; exiting");
                return Ok(());
            }
        }
        let fetched = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            fetched = broker.fetch(queues::TRAIN) => fetched,
        };
        let delivery = match fetched {
            Ok(Some(delivery)) => delivery,
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            Err(lift_broker::BrokerError::Closed) => return Ok(()),
            Err(error) => {
                warn!(%error, "could not take from the train queue");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
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
        idle_since = Instant::now();
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
    // Until the claim, a failure puts the assignment back (an unsettled delivery would hold
    // this trainer's only prefetch slot until the broker's consumer timeout).
    let generation = match take_assignment(broker, store, engine, config, &assignment).await {
        Ok(Taken::Claimed(generation)) => generation,
        Ok(Taken::Dropped) => {
            delivery.ack().await?;
            return Ok(());
        }
        Ok(Taken::PassOn) => return pass_on(broker, shutdown, assignment, delivery).await,
        Err(error) => {
            warn!(job_id = %job, %error, "could not take the assignment; requeueing it");
            delivery.nack_requeue().await?;
            return Err(error);
        }
    };
    let trace = lift_shared::telemetry::trace_context_of(delivery.headers());
    delivery.ack().await?;
    info!(job_id = %job, generation, trainer = %config.trainer_id, "claimed job");

    let current_step = Arc::new(AtomicU64::new(0));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        store.clone(),
        job.clone(),
        Heartbeat {
            trainer: config.trainer_id.clone(),
            generation,
            at_ms: now_ms(),
            step: 0,
        },
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
        .unwrap_or_else(|panic| Err(TrainError::Thread(panic.to_string())));
    // Whatever happened, this trainer no longer works on the job: a beating heart would keep
    // the lease alive for nobody.
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
                    generation,
                    reason: error.to_string(),
                    at_ms: now_ms(),
                },
            )
            .await?;
            Err(error)
        }
    }
}

/// Puts an assignment for another base model back into `lift.train` for the other trainers,
/// as a new message: a requeue would count toward the queue's delivery limit and end in the
/// dead-letter queue. Published before the ack, so it is never lost.
async fn pass_on(
    broker: &Arc<dyn Broker>,
    shutdown: &CancellationToken,
    mut assignment: TrainAssignment,
    delivery: Box<dyn Delivery>,
) -> Result<(), TrainError> {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(PASS_ON_PAUSE) => {}
    }
    if assignment.published_at_ms == 0 {
        assignment.published_at_ms = now_ms();
    }
    let payload = serde_json::to_vec(&assignment).expect("assignments serialize");
    if let Err(error) = broker
        .publish(queues::TRAIN, &payload, delivery.headers().clone())
        .await
    {
        delivery.nack_requeue().await?;
        return Err(error.into());
    }
    delivery.ack().await?;
    Ok(())
}

/// Everything before training starts: skip a job that is over, pass on or fail a job for a
/// model this trainer does not hold, claim the assignment's generation.
async fn take_assignment(
    broker: &Arc<dyn Broker>,
    store: &Store,
    engine: &Arc<Engine>,
    config: &TrainWorkerConfig,
    assignment: &TrainAssignment,
) -> Result<Taken, TrainError> {
    let job = &assignment.job_id;
    if let Some(commit) = store.adapter_commit(job).await? {
        // Its trainer may have died between the commit and publishing the adapter, or its
        // report may have been ignored (it was reassigned while finishing): this assignment's
        // generation is the one the coordinator listens to, so it reports the job done.
        store.publish_committed_adapter(job, &commit).await?;
        info!(job_id = %job, committed_by = commit.generation, "the job's adapter is committed; reporting it");
        publish_event(
            broker,
            ProgressEvent::TrainingFinished {
                job_id: job.clone(),
                generation: assignment.generation,
                adapter_uri: store.adapter_uri(job),
                steps: commit.steps,
                final_loss: commit.final_loss,
                at_ms: now_ms(),
            },
        )
        .await?;
        return Ok(Taken::Dropped);
    }
    if store.exists(&layout::cancel(job)).await? {
        info!(job_id = %job, "skipping assignment of a cancelled job");
        return Ok(Taken::Dropped);
    }
    if !serves_model(engine, &assignment.base_model) {
        // A trainer holds one base model in memory; another trainer may hold this one.
        let waited_ms = now_ms().saturating_sub(assignment.published_at_ms).max(0);
        let waited = Duration::from_millis(waited_ms as u64);
        if assignment.published_at_ms == 0 || waited < config.unserved_model_timeout {
            info!(job_id = %job, wanted = %assignment.base_model, serving = %engine.model_id(), "job needs another base model; passing it on");
            return Ok(Taken::PassOn);
        }
        warn!(job_id = %job, wanted = %assignment.base_model, serving = %engine.model_id(), "no trainer took the job's base model in time; failing it");
        publish_event(
            broker,
            ProgressEvent::TrainingFailed {
                job_id: job.clone(),
                generation: assignment.generation,
                reason: format!(
                    "no trainer that serves base model {:?} took the job within {} s \
                     (LIFT_UNSERVED_MODEL_TIMEOUT_SECS); trainer {} serves {}",
                    assignment.base_model,
                    config.unserved_model_timeout.as_secs(),
                    config.trainer_id,
                    engine.model_id()
                ),
                at_ms: now_ms(),
            },
        )
        .await?;
        return Ok(Taken::Dropped);
    }
    let claimed = claim(store, job, &config.trainer_id, assignment.generation).await?;
    match claimed {
        Some(generation) => Ok(Taken::Claimed(generation)),
        None => {
            info!(job_id = %job, generation = assignment.generation, "the assignment's generation is claimed already (a duplicate or stale assignment); dropping it");
            Ok(Taken::Dropped)
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

/// Creates claim `generation` unless it or a newer one exists (then `None`): only the
/// assignment the coordinator made last can take the job, and only once.
pub(crate) async fn claim(
    store: &Store,
    job: &lift_shared::ids::JobId,
    trainer: &str,
    generation: u32,
) -> Result<Option<u32>, TrainError> {
    let newest = store.newest_claim(job).await?;
    if newest.is_some_and(|newest| newest >= generation) {
        return Ok(None);
    }
    let record = Claim {
        trainer: trainer.to_string(),
        at_ms: now_ms(),
    };
    Ok(store
        .put_json_create(&layout::claim(job, generation), &record)
        .await?
        .then_some(generation))
}

async fn heartbeat_loop(
    store: Store,
    job: lift_shared::ids::JobId,
    mut beat: Heartbeat,
    every: Duration,
    step: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        beat.at_ms = now_ms();
        beat.step = step.load(Ordering::Relaxed);
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
