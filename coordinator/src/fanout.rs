//! Where work leaves the coordinator: chunks are published to `lift.synth`, train assignments
//! to `lift.train`, markers that stop workers are written. Chunk definitions are not stored:
//! splitting the stored spec is deterministic, so recovery plans them again (one store write
//! per chunk would cost more than everything else the message layer does per chunk).

use futures::{StreamExt, TryStreamExt};
use lift_broker::{queues, Broker, Headers};
use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, SynthChunk, TrainAssignment};
use lift_shared::metrics;
use lift_shared::spec::JobSpec;
use lift_shared::state::JobStatus;
use lift_store::{layout, CancelMarker, FailedChunkMarker, Store};

/// Chunks in flight at once while storing and publishing; publisher confirms make each
/// publish a round trip, so a sequential loop would take minutes for a large document.
const PUBLISH_CONCURRENCY: usize = 32;

/// A message's headers: what it is, for whom, and the job's trace context.
fn headers(job: &JobId, kind: &str, trace: &Headers) -> Headers {
    let mut headers = trace.clone();
    headers.insert("job_id".to_string(), job.to_string());
    headers.insert("kind".to_string(), kind.to_string());
    headers
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>, LiftError> {
    serde_json::to_vec(value)
        .map_err(|e| LiftError::Internal(format!("failed to encode {what}: {e}")))
}

/// Publishes each chunk with a confirm, taking chunks from `chunks` only as publishing
/// proceeds (a few at a time). Safe to call again for the same chunks: duplicates cost a
/// repeated synthesis whose create-only task file write is a no-op.
pub(crate) async fn publish_chunks(
    broker: &dyn Broker,
    chunks: impl Iterator<Item = SynthChunk>,
    trace: &Headers,
) -> Result<(), LiftError> {
    futures::stream::iter(chunks)
        .map(|chunk| async move {
            let payload = encode("synth chunk", &chunk)?;
            publish_chunk_with_confirm(broker, &chunk, &payload, trace).await
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<()>()
        .await
}

async fn publish_chunk_with_confirm(
    broker: &dyn Broker,
    chunk: &SynthChunk,
    payload: &[u8],
    trace: &Headers,
) -> Result<(), LiftError> {
    broker
        .publish(
            queues::SYNTH,
            payload,
            headers(&chunk.job_id, "synth_chunk", trace),
        )
        .await
        .map_err(|e| {
            LiftError::Unavailable(format!(
                "failed to publish chunk {} of job {}: {e}",
                chunk.chunk_index, chunk.job_id
            ))
        })?;
    metrics::CHUNKS.with_label_values(&["queued"]).inc();
    metrics::SENTENCES
        .with_label_values(&["queued"])
        .inc_by(chunk.sentences.len() as u64);
    Ok(())
}

pub(crate) fn train_assignment(job: &JobId, spec: &JobSpec, status: &JobStatus) -> TrainAssignment {
    TrainAssignment {
        job_id: job.clone(),
        base_model: spec.base_model.clone(),
        options: spec.training.clone(),
        chunk_count: status.chunks_total,
        generation: status.trainer_generation,
        published_at_ms: now_ms(),
    }
}

/// Publishes a job's train assignment. Trainers claim jobs through `claims/` in the store,
/// so a duplicate assignment (failover, recovery) is dropped by whoever finds the job held.
pub(crate) async fn publish_train_assignment(
    broker: &dyn Broker,
    assignment: &TrainAssignment,
    trace: &Headers,
) -> Result<(), LiftError> {
    let payload = encode("train assignment", assignment)?;
    broker
        .publish(
            queues::TRAIN,
            &payload,
            headers(&assignment.job_id, "train_assignment", trace),
        )
        .await
        .map_err(|e| {
            LiftError::Unavailable(format!(
                "failed to publish train assignment of job {}: {e}",
                assignment.job_id
            ))
        })
}

/// Hands the job to the next claim generation: one past the newest claim (the lost or
/// released run's), noted in `status` so that run's late events change nothing; then
/// publishes the assignment. The caller persists `status`.
pub(crate) async fn reassign_train(
    store: &Store,
    broker: &dyn Broker,
    job: &JobId,
    status: &mut JobStatus,
) -> Result<(), LiftError> {
    let after_newest_claim = store
        .newest_claim(job)
        .await?
        .map_or(0, |newest| newest + 1);
    status.reassign_trainer(after_newest_claim, now_ms());
    republish_train_assignment(store, broker, job, status).await
}

/// Re-reads the spec to publish the train assignment again (failover, release, recovery).
pub(crate) async fn republish_train_assignment(
    store: &Store,
    broker: &dyn Broker,
    job: &JobId,
    status: &JobStatus,
) -> Result<(), LiftError> {
    let spec = read_spec(store, job).await?;
    publish_train_assignment(broker, &train_assignment(job, &spec, status), &status.trace).await
}

pub(crate) async fn read_spec(store: &Store, job: &JobId) -> Result<JobSpec, LiftError> {
    let key = layout::spec(job);
    store
        .get_json(&key)
        .await?
        .ok_or_else(|| LiftError::Internal(format!("job {job} has no {key}")))
}

/// Tells workers to stop on `job` (they check for the marker before and during work).
pub(crate) async fn write_cancel_marker(
    store: &Store,
    job: &JobId,
    reason: &str,
) -> Result<(), LiftError> {
    let marker = CancelMarker {
        reason: reason.to_string(),
        at_ms: now_ms(),
    };
    store.put_json_create(&layout::cancel(job), &marker).await?;
    Ok(())
}

/// Records that a chunk will never get a task file, so the trainer stops waiting for it.
pub(crate) async fn write_failed_marker(
    store: &Store,
    job: &JobId,
    chunk: u32,
    reason: &str,
    at_ms: i64,
) -> Result<(), LiftError> {
    let marker = FailedChunkMarker {
        chunk,
        reason: reason.to_string(),
        at_ms,
    };
    store
        .put_json_create(&layout::failed(job, chunk), &marker)
        .await?;
    Ok(())
}
