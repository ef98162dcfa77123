//! Start-up recovery: rebuilds the job cache from the store and finishes what a crashed
//! coordinator left undone (chunks never published, task files whose events were lost). At
//! run time, [`publish_accepted`] finishes the same for a job accepted while the broker was
//! unreachable.

use std::collections::HashSet;

use lift_shared::error::{ErrorCode, LiftError, ServiceError};
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, ProgressEvent, Task};
use lift_shared::spec::{JobSpec, Limits};
use lift_shared::state::{JobState, JobStatus};
use lift_store::{layout, FailedChunkMarker};

use crate::chunk::{plan_chunks, ChunkPlan};
use crate::fanout;
use crate::jobs::{apply_adapter_commit, persist, Context, JobEntry};

/// Loads every unfinished job and repairs it; returns how many jobs were recovered. A job
/// that cannot be repaired now is logged and left to the next start.
pub(crate) async fn recover_jobs(ctx: &Context) -> Result<usize, LiftError> {
    let mut recovered = 0;
    for job in ctx.store.list_job_ids().await? {
        let status = match ctx.store.read_latest_status(&job).await {
            Ok(Some(status)) => status,
            Ok(None) => continue,
            // One damaged job must not keep every other job from being served: it is left
            // as it is for an operator, and the coordinator starts.
            Err(error) if error.error_code() == ErrorCode::Internal => {
                let reason = error.with_causes();
                tracing::error!(job_id = %job, %reason, "job record unreadable; job quarantined (not recovered)");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if status.state.is_terminal() {
            continue;
        }
        match recover_job(ctx, status).await {
            Ok(()) => recovered += 1,
            Err(error) => tracing::error!(job_id = %job, %error, "failed to recover job"),
        }
    }
    Ok(recovered)
}

async fn recover_job(ctx: &Context, status: JobStatus) -> Result<(), LiftError> {
    let job = status.job_id.clone();
    let entry = ctx.jobs.insert(status);
    let mut record = entry.record.lock().await;
    if let Some(commit) = ctx.store.adapter_commit(&job).await? {
        // Its report was lost with the previous process.
        return apply_adapter_commit(&ctx.store, &entry, &mut record, &commit).await;
    }
    let resolved = resolved_chunks(ctx, &job).await?;
    let (spec, plan) = plan_job_chunks(ctx, &job).await?;
    let reconciled = reconcile_with_store(ctx, &mut record, &resolved, &plan).await?;
    if record.state == JobState::Failed {
        let reason = record.error.clone().unwrap_or_default();
        fanout::write_cancel_marker(&ctx.store, &job, &reason).await?;
    }

    // A durable broker still holds what was published; an in-process one lost everything
    // queued when the previous process ended.
    let republish = !record.chunks_published || !ctx.broker.is_durable();
    if republish && !record.state.is_terminal() {
        let missing = plan
            .chunks(&job, &spec)
            .filter(|chunk| !resolved.contains(&chunk.chunk_index));
        tracing::info!(job_id = %job, chunks = plan.chunk_count as usize - resolved.len(), "republishing unfinished chunks");
        if ctx.broker.is_durable() {
            // The assignment may be in the queue already; a duplicate of its generation is
            // dropped by the trainers.
            fanout::republish_train_assignment(&ctx.store, ctx.broker.as_ref(), &job, &record)
                .await?;
        } else {
            // The previous process's trainer went with it: hand the job to the next generation
            // at once instead of waiting a lease for its heartbeat to go stale.
            fanout::reassign_train(&ctx.store, ctx.broker.as_ref(), &job, &mut record).await?;
        }
        fanout::publish_chunks(ctx.broker.as_ref(), missing, &record.trace).await?;
    }
    if republish || reconciled {
        record.chunks_published = true;
        persist(&ctx.store, &mut record).await?;
    }
    entry.publish(&record);
    Ok(())
}

/// Publishes the work of a job that was stored but whose publishing failed (the broker was
/// down longer than a publish retries): its train assignment (a duplicate of its generation is
/// dropped by the trainers) and every chunk with no task file or failed marker yet. Called by
/// the lease watchdog until it succeeds, holding the job's publishing lock (`_publishing`);
/// each attempt retries for the broker's retry timeout, which spaces the attempts.
pub(crate) async fn publish_accepted(
    ctx: &Context,
    entry: &JobEntry,
    _publishing: tokio::sync::OwnedMutexGuard<()>,
) -> Result<(), LiftError> {
    let status = entry.record.lock().await.clone();
    if status.chunks_published || status.state.is_terminal() {
        return Ok(());
    }
    let job = status.job_id.clone();
    let resolved = resolved_chunks(ctx, &job).await?;
    let (spec, plan) = plan_job_chunks(ctx, &job).await?;
    fanout::republish_train_assignment(&ctx.store, ctx.broker.as_ref(), &job, &status).await?;
    let missing = plan
        .chunks(&job, &spec)
        .filter(|chunk| !resolved.contains(&chunk.chunk_index));
    fanout::publish_chunks(ctx.broker.as_ref(), missing, &status.trace).await?;
    let mut record = entry.record.lock().await;
    record.chunks_published = true;
    persist(&ctx.store, &mut record).await?;
    entry.publish(&record);
    tracing::info!(job_id = %job, "published a job accepted while the broker was unreachable");
    Ok(())
}

/// The job's chunks as submission planned them: splitting the stored spec is deterministic.
/// A job accepted under looser limits than today's is still planned (it was accepted).
async fn plan_job_chunks(ctx: &Context, job: &JobId) -> Result<(JobSpec, ChunkPlan), LiftError> {
    let spec = fanout::read_spec(&ctx.store, job).await?;
    let split = ctx.split.clone();
    let limits = Limits {
        max_sentences: usize::MAX,
        max_chunk_bytes: usize::MAX,
        max_planned_bytes: usize::MAX,
        ..ctx.limits.clone()
    };
    tokio::task::spawn_blocking(move || {
        let plan = plan_chunks(&spec, &split, &limits);
        plan.map(|plan| (spec, plan))
    })
    .await
    .map_err(|e| LiftError::Internal(format!("sentence splitting panicked: {e}")))?
}

/// Chunks that have a task file or a failed marker.
async fn resolved_chunks(ctx: &Context, job: &JobId) -> Result<HashSet<u32>, LiftError> {
    let mut resolved = HashSet::new();
    for prefix in [layout::tasks_prefix(job), layout::failed_prefix(job)] {
        for key in ctx.store.list(&prefix).await? {
            resolved.extend(layout::chunk_index_of(&key));
        }
    }
    Ok(resolved)
}

/// Counts chunks whose task file or failed marker is in the store but whose event never made
/// it into the record (events lost with an in-process broker). Returns whether it changed.
async fn reconcile_with_store(
    ctx: &Context,
    record: &mut JobStatus,
    resolved: &HashSet<u32>,
    plan: &ChunkPlan,
) -> Result<bool, LiftError> {
    let job = record.job_id.clone();
    let mut changed = false;
    let mut uncounted: Vec<u32> = resolved
        .iter()
        .copied()
        .filter(|chunk| !record.counted_chunks.contains(*chunk))
        .collect();
    uncounted.sort_unstable();
    for chunk in uncounted {
        let event = match ctx.store.get(&layout::tasks(&job, chunk)).await? {
            Some(tasks) => {
                let task_count = Task::count_in_file(&tasks);
                let sentences = plan.sentences_in(chunk);
                ProgressEvent::ChunkSynthesized {
                    job_id: job.clone(),
                    chunk_index: chunk,
                    sentences,
                    sentences_failed: 0,
                    tasks: task_count as u32,
                    pairs_dropped: 0,
                    facts_found: 0,
                    facts_covered: 0,
                    at_ms: now_ms(),
                }
            }
            None => {
                let marker: Option<FailedChunkMarker> =
                    ctx.store.get_json(&layout::failed(&job, chunk)).await?;
                ProgressEvent::ChunkFailed {
                    job_id: job.clone(),
                    chunk_index: chunk,
                    reason: marker.map_or_else(|| "failed".to_string(), |m| m.reason),
                    at_ms: now_ms(),
                }
            }
        };
        let threshold = record.failed_share_threshold;
        changed |= record.apply(&event, threshold).changed;
    }
    Ok(changed)
}
