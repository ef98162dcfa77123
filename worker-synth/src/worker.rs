//! The synth worker: consumes `lift.synth`, turns each chunk into a task file in the store and
//! announces it on `lift.events`. Deliveries are at-least-once, so every step is idempotent:
//! the task file is written create-only, and a redelivered chunk whose file exists is only
//! announced again.

use lift_shared::metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lift_broker::{queues, Broker, BrokerError, Delivery, Headers};
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, ProgressEvent, SynthChunk, Task};
use lift_store::{layout, FailedChunkMarker, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::generator::QaGenerator;
use crate::synthesize::{synthesize_chunk, FactCoverage, SynthesisTuning};

#[derive(Debug, Clone, PartialEq)]
pub struct SynthWorkerConfig {
    /// Unacked deliveries the broker may push ahead (`basic_qos`); at least `concurrency`.
    pub prefetch: u16,
    /// Chunks processed at once.
    pub concurrency: usize,
    /// Deliveries of a chunk before it is given up (the queue's `x-delivery-limit`).
    pub delivery_limit: u32,
    /// Pause before a failed chunk goes back to the queue, so a generator that is down is not
    /// hammered by the same chunks in a tight loop.
    pub requeue_backoff: Duration,
    /// On shutdown, how long in-flight chunks may run before they are put back in the queue.
    pub shutdown_grace: Duration,
    pub tuning: SynthesisTuning,
}

impl Default for SynthWorkerConfig {
    fn default() -> Self {
        Self {
            prefetch: 16,
            concurrency: 16,
            delivery_limit: 5,
            requeue_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            tuning: SynthesisTuning::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthWorkerError {
    #[error("failed to consume {queue}: {source}")]
    Consume {
        queue: &'static str,
        source: BrokerError,
    },
}

/// Runs until `shutdown` is cancelled (or the broker closes): then takes no new chunks, lets those
/// in flight finish for up to `shutdown_grace`, puts the rest back in the queue, and returns.
pub async fn run_synth_worker(
    broker: Arc<dyn Broker>,
    store: Store,
    generator: Arc<dyn QaGenerator>,
    config: SynthWorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), SynthWorkerError> {
    let concurrency = config.concurrency.max(1);
    let prefetch = config
        .prefetch
        .max(u16::try_from(concurrency).unwrap_or(u16::MAX));
    let mut deliveries = broker
        .consume(queues::SYNTH, prefetch)
        .await
        .map_err(|source| SynthWorkerError::Consume {
            queue: queues::SYNTH,
            source,
        })?;
    tracing::info!(
        concurrency,
        prefetch,
        "synth worker consuming {}",
        queues::SYNTH
    );

    let context = Arc::new(ChunkContext {
        broker,
        store,
        generator,
        config,
        cancelled: CancelCache::default(),
    });
    let (stop_in_flight, in_flight_stopped) = watch::channel(false);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => log_join(joined),
            next = deliveries.next(), if in_flight.len() < concurrency => match next {
                Some(Ok(delivery)) => {
                    let context = context.clone();
                    let stopped = in_flight_stopped.clone();
                    in_flight.spawn(async move { context.handle(delivery, stopped).await });
                }
                Some(Err(error)) => {
                    // The stream re-consumes by itself after a reconnect; do not spin meanwhile.
                    tracing::warn!(%error, "synth delivery stream error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => {
                    tracing::info!("synth delivery stream ended");
                    break;
                }
            },
        }
    }

    tracing::info!(in_flight = in_flight.len(), "synth worker stopping");
    let drained = tokio::time::timeout(context.config.shutdown_grace, async {
        while let Some(joined) = in_flight.join_next().await {
            log_join(joined);
        }
    })
    .await;
    if drained.is_err() {
        stop_in_flight.send_replace(true);
        while let Some(joined) = in_flight.join_next().await {
            log_join(joined);
        }
    }
    // Dropped only now: on RabbitMQ closing the consumer returns what it prefetched, and the
    // in-process broker fails later settlements of a dropped stream's deliveries.
    drop(deliveries);
    Ok(())
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(%error, "synth chunk task failed");
    }
}

struct ChunkContext {
    broker: Arc<dyn Broker>,
    store: Store,
    generator: Arc<dyn QaGenerator>,
    config: SynthWorkerConfig,
    cancelled: CancelCache,
}

/// How long "this job is not cancelled" is believed before the store is asked again. A chunk
/// of a job cancelled within this window is still synthesized; its task file is ignored.
const CANCEL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Whether jobs are cancelled, read from their cancel markers at most once per
/// [`CANCEL_CHECK_INTERVAL`]: chunks of one job arrive by the hundred, and a store read per
/// chunk would cost more than the rest of the chunk's handling with a fast generator.
#[derive(Default)]
struct CancelCache {
    checked: Mutex<HashMap<JobId, (bool, Instant)>>,
}

impl CancelCache {
    async fn is_cancelled(&self, store: &Store, job: &JobId) -> Result<bool, StoreError> {
        if let Some((cancelled, at)) = self.lock().get(job) {
            if *cancelled || at.elapsed() < CANCEL_CHECK_INTERVAL {
                return Ok(*cancelled);
            }
        }
        let cancelled = store.exists(&layout::cancel(job)).await?;
        let mut checked = self.lock();
        // Finished jobs stop sending chunks; forget entries nobody asked about for a while.
        checked.retain(|_, (_, at)| at.elapsed() < CANCEL_CHECK_INTERVAL * 60);
        checked.insert(job.clone(), (cancelled, Instant::now()));
        Ok(cancelled)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, (bool, Instant)>> {
        self.checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What happens to a delivery once its chunk is handled.
enum Settlement {
    Ack,
    /// Back in the queue for another attempt, after `requeue_backoff`.
    Retry,
    /// Back in the queue at once: the worker is shutting down.
    Release,
    /// To the dead-letter queue.
    Reject,
}

/// A failure of the store or the broker while handling a chunk: the chunk may succeed later.
#[derive(Debug, thiserror::Error)]
enum InfraError {
    #[error("{}", .0.with_causes())]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("failed to encode task file: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ChunkContext {
    async fn handle(&self, delivery: Box<dyn Delivery>, mut stopped: watch::Receiver<bool>) {
        let attempt = delivery.redelivery_count() + 1;
        let span = tracing::info_span!(
            "synthesize_chunk",
            attempt,
            job_id = tracing::field::Empty,
            chunk = tracing::field::Empty
        );
        lift_shared::telemetry::continue_trace(&span, delivery.headers());
        let work = self
            .process(delivery.payload(), delivery.headers(), attempt)
            .instrument(span);
        let settlement = tokio::select! {
            settlement = work => settlement,
            _ = stopped.wait_for(|stopped| *stopped) => Settlement::Release,
        };
        let result = match settlement {
            Settlement::Ack => delivery.ack().await,
            Settlement::Retry => {
                tokio::select! {
                    () = tokio::time::sleep(self.config.requeue_backoff) => {}
                    _ = stopped.wait_for(|stopped| *stopped) => {}
                }
                delivery.nack_requeue().await
            }
            Settlement::Release => delivery.nack_requeue().await,
            Settlement::Reject => delivery.reject().await,
        };
        if let Err(error) = result {
            // The broker redelivers it; the task file makes the second run cheap.
            tracing::warn!(%error, "failed to settle synth delivery");
        }
    }

    async fn process(&self, payload: &[u8], headers: &Headers, attempt: u32) -> Settlement {
        let chunk: SynthChunk = match serde_json::from_slice(payload) {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::error!(%error, bytes = payload.len(), "synth payload is not a chunk, rejecting");
                return Settlement::Reject;
            }
        };
        let span = tracing::Span::current();
        span.record("job_id", tracing::field::display(&chunk.job_id));
        span.record("chunk", chunk.chunk_index);
        let last_attempt = attempt >= self.config.delivery_limit;
        match self
            .process_chunk(&chunk, headers, attempt, last_attempt)
            .await
        {
            Ok(settlement) => settlement,
            Err(error) if last_attempt => {
                self.give_up(&chunk, headers, &error.to_string()).await;
                Settlement::Reject
            }
            Err(error) => {
                tracing::warn!(
                    job_id = %chunk.job_id,
                    chunk = chunk.chunk_index,
                    attempt,
                    %error,
                    "synth chunk failed, will retry"
                );
                Settlement::Retry
            }
        }
    }

    async fn process_chunk(
        &self,
        chunk: &SynthChunk,
        headers: &Headers,
        attempt: u32,
        last_attempt: bool,
    ) -> Result<Settlement, InfraError> {
        let (job_id, chunk_index) = (&chunk.job_id, chunk.chunk_index);
        if self.cancelled.is_cancelled(&self.store, job_id).await? {
            tracing::info!(job_id = %job_id, chunk = chunk_index, "job cancelled, skipping chunk");
            return Ok(Settlement::Ack);
        }
        let tasks_key = layout::tasks(job_id, chunk_index);
        // A redelivery may find the task file of an earlier delivery that died before
        // announcing it. A first delivery skips this read (one store round trip per chunk);
        // should the file exist anyway, the create-only write below finds it.
        if attempt > 1 {
            if let Some(existing) = self.store.get(&tasks_key).await? {
                self.announce_existing(chunk, &existing, headers).await?;
                return Ok(Settlement::Ack);
            }
        }

        let started = std::time::Instant::now();
        let synthesis = synthesize_chunk(self.generator.as_ref(), chunk, &self.config.tuning).await;
        // Retried while attempts remain if the generator may come back; on the last attempt
        // the sentences that did work are kept, unless none did.
        let chunk_failed =
            synthesis.all_failed() || (synthesis.has_transient_failure() && !last_attempt);
        if let Some((sentence, error)) = synthesis.failures.first().filter(|_| chunk_failed) {
            if last_attempt {
                self.give_up(chunk, headers, &format!("generator failed: {error}"))
                    .await;
                return Ok(Settlement::Reject);
            }
            tracing::warn!(
                job_id = %job_id,
                chunk = chunk_index,
                sentence,
                failed = synthesis.sentences_failed(),
                %error,
                "generator failed, chunk will be retried"
            );
            return Ok(Settlement::Retry);
        }
        for (sentence, error) in &synthesis.failures {
            tracing::warn!(job_id = %job_id, chunk = chunk_index, sentence, %error, "sentence failed");
        }

        if !self
            .store
            .put_create(&tasks_key, synthesis.task_file()?)
            .await?
        {
            // Announced again because the writer may have died before announcing; the
            // coordinator counts a chunk once however often it is announced.
            tracing::info!(job_id = %job_id, chunk = chunk_index, "another delivery wrote the task file first");
            if let Some(existing) = self.store.get(&tasks_key).await? {
                self.announce_existing(chunk, &existing, headers).await?;
            }
            return Ok(Settlement::Ack);
        }
        let dropped = synthesis.pairs_dropped;
        tracing::info!(
            job_id = %job_id,
            chunk = chunk_index,
            tasks = synthesis.tasks.len(),
            sentences_failed = synthesis.sentences_failed(),
            dropped_malformed = dropped.malformed,
            dropped_invalid = dropped.empty_field + dropped.not_a_question + dropped.answer_too_long,
            dropped_duplicate = dropped.duplicate,
            dropped_ungrounded = dropped.ungrounded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "chunk synthesized"
        );
        metrics::CHUNKS.with_label_values(&["synthesized"]).inc();
        let failed = u64::from(synthesis.sentences_failed());
        metrics::SENTENCES
            .with_label_values(&["synthesized"])
            .inc_by(u64::from(synthesis.sentences).saturating_sub(failed));
        metrics::SENTENCES
            .with_label_values(&["failed"])
            .inc_by(failed);
        let event = ProgressEvent::ChunkSynthesized {
            job_id: job_id.clone(),
            chunk_index,
            sentences: synthesis.sentences,
            sentences_failed: synthesis.sentences_failed(),
            tasks: synthesis.tasks.len() as u32,
            pairs_dropped: dropped.total(),
            facts_found: synthesis.facts.found,
            facts_covered: synthesis.facts.covered,
            at_ms: now_ms(),
        };
        // If this fails the delivery is retried, finds the task file and announces it then.
        self.publish_event(&event, headers).await?;
        Ok(Settlement::Ack)
    }

    /// Announces a task file an earlier delivery wrote. Its drop statistics are gone; the task
    /// count is in the file.
    async fn announce_existing(
        &self,
        chunk: &SynthChunk,
        task_file: &[u8],
        headers: &Headers,
    ) -> Result<(), InfraError> {
        let tasks = Task::count_in_file(task_file);
        let written: Vec<Task> = task_file
            .split(|byte| *byte == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect();
        let facts = FactCoverage::of_tasks(chunk, &written);
        tracing::info!(job_id = %chunk.job_id, chunk = chunk.chunk_index, tasks, "task file exists, announcing it");
        let event = ProgressEvent::ChunkSynthesized {
            job_id: chunk.job_id.clone(),
            chunk_index: chunk.chunk_index,
            sentences: chunk.sentences.len() as u32,
            sentences_failed: 0,
            tasks: tasks as u32,
            pairs_dropped: 0,
            facts_found: facts.found,
            facts_covered: facts.covered,
            at_ms: now_ms(),
        };
        self.publish_event(&event, headers).await
    }

    /// Marks the chunk failed for good, so trainers skip it and the coordinator counts it.
    /// Best effort: the delivery is dead-lettered either way, and an operator can replay it.
    async fn give_up(&self, chunk: &SynthChunk, headers: &Headers, reason: &str) {
        let (job_id, chunk_index) = (&chunk.job_id, chunk.chunk_index);
        tracing::error!(job_id = %job_id, chunk = chunk_index, reason, "giving up on chunk");
        metrics::CHUNKS.with_label_values(&["failed"]).inc();
        metrics::SENTENCES
            .with_label_values(&["failed"])
            .inc_by(chunk.sentences.len() as u64);
        let marker = FailedChunkMarker {
            chunk: chunk_index,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        let key = layout::failed(job_id, chunk_index);
        if let Err(error) = self.store.put_json_create(&key, &marker).await {
            tracing::error!(key, error = %error.with_causes(), "failed to write failed-chunk marker");
        }
        let event = ProgressEvent::ChunkFailed {
            job_id: job_id.clone(),
            chunk_index,
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        if let Err(error) = self.publish_event(&event, headers).await {
            tracing::error!(job_id = %job_id, chunk = chunk_index, %error, "failed to announce failed chunk");
        }
    }

    /// Publishes to `lift.events`, carrying the chunk's trace context along.
    async fn publish_event(
        &self,
        event: &ProgressEvent,
        headers: &Headers,
    ) -> Result<(), InfraError> {
        let payload = serde_json::to_vec(event)?;
        self.broker
            .publish(
                queues::EVENTS,
                &payload,
                lift_shared::telemetry::trace_context_of(headers),
            )
            .await?;
        Ok(())
    }
}
