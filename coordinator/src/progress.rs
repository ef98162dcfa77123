//! Progress aggregation: consumes `lift.events` and the dead-letter queue of `lift.synth`,
//! folds each event into its job's status record and streams the result to watchers.
//!
//! Records are stored on every state transition and otherwise at most about once a second;
//! an event is acknowledged only after a record that includes it is stored, so a crash loses
//! no progress (redelivered events are idempotent, see `JobStatus::apply`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lift_broker::{queues, Delivery, DeliveryStream, DEATH_REASON_HEADER};
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, ProgressEvent, SynthChunk};
use lift_shared::state::JobState;
use tokio::sync::watch;

use crate::fanout;
use crate::jobs::{persist, stopped, Context};

const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Unacked events the coordinator holds between flushes; also the batch size that forces an
/// early flush, so the prefetch window never runs dry.
const EVENTS_PREFETCH: u16 = 512;
const FLUSH_AT_PENDING: usize = EVENTS_PREFETCH as usize / 2;
const DEAD_CHUNKS_PREFETCH: u16 = 64;
const RECONSUME_DELAY: Duration = Duration::from_secs(1);

/// Deliveries waiting for their job's record to be stored.
struct Pending {
    deliveries: Vec<(JobId, Box<dyn Delivery>)>,
    dirty: HashSet<JobId>,
}

pub(crate) async fn run_progress(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let mut stop = std::pin::pin!(stopped(shutdown));
    let Some((mut events, mut dead_chunks)) = consume_both(&ctx, stop.as_mut()).await else {
        return;
    };
    let mut pending = Pending {
        deliveries: Vec::new(),
        dirty: HashSet::new(),
    };
    let mut flush_timer = tokio::time::interval(FLUSH_INTERVAL);
    flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = flush_timer.tick() => flush(&ctx, &mut pending).await,
            delivery = events.next() => match delivery {
                Some(Ok(delivery)) => handle_event(&ctx, delivery, &mut pending).await,
                Some(Err(error)) => tracing::warn!(%error, "event consumer error"),
                None => break,
            },
            delivery = dead_chunks.next() => match delivery {
                Some(Ok(delivery)) => handle_dead_chunk(&ctx, delivery, &mut pending).await,
                Some(Err(error)) => tracing::warn!(%error, "dead-letter consumer error"),
                None => break,
            },
        }
        if pending.deliveries.len() >= FLUSH_AT_PENDING {
            flush(&ctx, &mut pending).await;
        }
    }
    // Whatever is still unacked is redelivered to the next coordinator.
    flush(&ctx, &mut pending).await;
}

async fn consume_both(
    ctx: &Context,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<(DeliveryStream, DeliveryStream)> {
    let dead_letter_queue = queues::dead_letter_queue(queues::SYNTH);
    loop {
        let consumed = async {
            let events = ctx.broker.consume(queues::EVENTS, EVENTS_PREFETCH).await?;
            let dead = ctx
                .broker
                .consume(&dead_letter_queue, DEAD_CHUNKS_PREFETCH)
                .await?;
            Ok::<_, lift_broker::BrokerError>((events, dead))
        };
        match consumed.await {
            Ok(streams) => return Some(streams),
            Err(error) => tracing::warn!(%error, "failed to consume progress queues; retrying"),
        }
        tokio::select! {
            _ = stop.as_mut() => return None,
            _ = tokio::time::sleep(RECONSUME_DELAY) => {}
        }
    }
}

async fn settle(delivery: Box<dyn Delivery>, ack: bool) {
    let result = if ack {
        delivery.ack().await
    } else {
        delivery.nack_requeue().await
    };
    if let Err(error) = result {
        tracing::warn!(%error, ack, "failed to settle delivery");
    }
}

async fn handle_event(ctx: &Context, delivery: Box<dyn Delivery>, pending: &mut Pending) {
    let event: ProgressEvent = match serde_json::from_slice(delivery.payload()) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(%error, "malformed progress event; dead-lettering it");
            if let Err(error) = delivery.reject().await {
                tracing::warn!(%error, "failed to reject malformed event");
            }
            return;
        }
    };
    apply_event(ctx, event, delivery, pending).await;
}

async fn handle_dead_chunk(ctx: &Context, delivery: Box<dyn Delivery>, pending: &mut Pending) {
    let chunk: SynthChunk = match serde_json::from_slice(delivery.payload()) {
        Ok(chunk) => chunk,
        Err(error) => {
            // Nowhere better to put it: this is already the dead-letter queue.
            tracing::error!(%error, "malformed dead-lettered chunk; dropping it");
            settle(delivery, true).await;
            return;
        }
    };
    // A worker that gives up writes the failure marker with its reason before rejecting;
    // that reason says more than the broker's death header.
    let marker_key = lift_store::layout::failed(&chunk.job_id, chunk.chunk_index);
    let marker = ctx
        .store
        .get_json::<lift_store::FailedChunkMarker>(&marker_key)
        .await
        .ok()
        .flatten();
    let from_header = match delivery
        .headers()
        .get(DEATH_REASON_HEADER)
        .map(String::as_str)
    {
        Some("rejected") => "rejected by a synth worker".to_string(),
        Some("delivery_limit") => "synth workers failed on it until the delivery limit".to_string(),
        Some(other) => format!("dead-lettered ({other})"),
        None => "dead-lettered".to_string(),
    };
    let reason = marker.map_or(from_header, |marker| marker.reason);
    let event = ProgressEvent::ChunkFailed {
        job_id: chunk.job_id,
        chunk_index: chunk.chunk_index,
        reason,
        at_ms: now_ms(),
    };
    apply_event(ctx, event, delivery, pending).await;
}

async fn apply_event(
    ctx: &Context,
    event: ProgressEvent,
    delivery: Box<dyn Delivery>,
    pending: &mut Pending,
) {
    let job = event.job_id().clone();
    let entry = match ctx.jobs.get_or_load(&ctx.store, &job).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            tracing::warn!(job_id = %job, "event for an unknown job; dropping it");
            settle(delivery, true).await;
            return;
        }
        Err(error) => {
            tracing::warn!(job_id = %job, %error, "failed to load job for event; requeueing");
            settle(delivery, false).await;
            return;
        }
    };
    let mut record = entry.record.lock().await;
    if let ProgressEvent::ChunkFailed {
        chunk_index,
        reason,
        at_ms,
        ..
    } = &event
    {
        let new_failure = !record.state.is_terminal()
            && *chunk_index < record.chunks_total
            && !record.counted_chunks.contains(*chunk_index);
        // The marker goes first: once the failure is counted, the trainer must be able to see
        // that the chunk will never arrive.
        if new_failure {
            if let Err(error) =
                fanout::write_failed_marker(&ctx.store, &job, *chunk_index, reason, *at_ms).await
            {
                tracing::warn!(job_id = %job, chunk = chunk_index, %error, "failed to write failed-chunk marker; requeueing");
                settle(delivery, false).await;
                return;
            }
        }
    }
    let threshold = record.failed_share_threshold;
    let outcome = record.apply(&event, threshold);
    if !outcome.changed {
        drop(record);
        settle(delivery, true).await;
        return;
    }
    if let ProgressEvent::TrainingReleased { .. } = event {
        // The trainer stopped after a checkpoint; the next one resumes from it. The record
        // takes the new generation only once the assignment is out: a requeued event of the
        // old generation would be ignored.
        let mut reassigned = record.clone();
        if let Err(error) =
            fanout::reassign_train(&ctx.store, ctx.broker.as_ref(), &job, &mut reassigned).await
        {
            tracing::warn!(job_id = %job, %error, "failed to republish released job; requeueing");
            drop(record);
            settle(delivery, false).await;
            return;
        }
        *record = reassigned;
    }
    entry.publish(&record);
    let Some(new_state) = outcome.transition else {
        pending.dirty.insert(job.clone());
        pending.deliveries.push((job, delivery));
        return;
    };
    tracing::info!(job_id = %job, state = %new_state, "job state changed");
    if new_state == JobState::Failed {
        let reason = record
            .error
            .clone()
            .unwrap_or_else(|| "job failed".to_string());
        if let Err(error) = fanout::write_cancel_marker(&ctx.store, &job, &reason).await {
            tracing::warn!(job_id = %job, %error, "failed to write cancel marker for failed job");
        }
    }
    match persist(&ctx.store, &mut record).await {
        Ok(()) => {
            entry.publish(&record);
            pending.dirty.remove(&job);
            drop(record);
            settle(delivery, true).await;
            // Deliveries of this job waiting for the flush are covered by the record just
            // stored.
            ack_clean(pending).await;
        }
        Err(error) => {
            tracing::warn!(job_id = %job, %error, "failed to store job record; retrying at the next flush");
            pending.dirty.insert(job.clone());
            pending.deliveries.push((job, delivery));
        }
    }
}

/// Stores every job with unstored changes, then acks the deliveries those records cover.
async fn flush(ctx: &Context, pending: &mut Pending) {
    let dirty: Vec<JobId> = pending.dirty.iter().cloned().collect();
    for job in dirty {
        let Some(entry) = ctx.jobs.cached(&job) else {
            pending.dirty.remove(&job);
            continue;
        };
        let mut record = entry.record.lock().await;
        match persist(&ctx.store, &mut record).await {
            Ok(()) => {
                entry.publish(&record);
                pending.dirty.remove(&job);
            }
            Err(error) => {
                tracing::warn!(job_id = %job, %error, "failed to store job record; will retry");
            }
        }
    }
    ack_clean(pending).await;
}

async fn ack_clean(pending: &mut Pending) {
    let (clean, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut pending.deliveries)
        .into_iter()
        .partition(|(job, _)| !pending.dirty.contains(job));
    pending.deliveries = waiting;
    for (_, delivery) in clean {
        settle(delivery, true).await;
    }
}
