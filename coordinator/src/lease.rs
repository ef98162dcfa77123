//! Trainer watchdog. A trainer acks its assignment once it has claimed the job, so if it dies
//! the broker has nothing to redeliver; the coordinator notices and hands the job to the next
//! claim generation, whose trainer resumes from the checkpoint.
//!
//! Liveness is judged on this process's clock alone: a claim whose heartbeat record has not
//! changed for a lease is lost, whatever the times written in it say (a trainer's clock may
//! be off by more than a lease). A claim is watched from the moment it exists, so a trainer
//! that dies between claiming and reporting its start is noticed too. A lost run whose
//! adapter is committed is not reassigned: the job succeeded, and its report may simply never
//! have arrived.
//!
//! The same pass publishes jobs that were accepted while the broker was unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lift_broker::queues;
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, Headers, ProgressEvent};
use lift_shared::state::JobStatus;
use lift_store::{layout, AdapterCommit, Heartbeat, StoreError};
use tokio::sync::watch;

use crate::jobs::{apply_adapter_commit, persist, stopped, Context, JobEntry};
use crate::{fanout, recovery};

/// What the watchdog last saw of a job's trainer, and since when (on this clock).
struct Observed {
    claim: u32,
    heartbeat: Option<(i64, u64)>,
    since: Instant,
}

pub(crate) async fn run_lease_watchdog(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let mut stop = std::pin::pin!(stopped(shutdown));
    let lease = ctx.trainer_lease;
    let mut observed: HashMap<JobId, Observed> = HashMap::new();
    // Checking three times per lease bounds how late a lost trainer is noticed.
    let mut timer = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = timer.tick() => {}
        }
        ctx.jobs.evict_finished();
        for entry in ctx.jobs.all() {
            let status = entry.watchers.borrow().clone();
            if status.state.is_terminal() || !status.chunks_published {
                observed.remove(&status.job_id);
                if !status.state.is_terminal() {
                    publish_later(&ctx, &entry);
                }
                continue;
            }
            if !trainer_lost(&ctx, &status, &mut observed).await {
                continue;
            }
            match ctx.store.adapter_commit(&status.job_id).await {
                Ok(Some(commit)) => finish_committed(&ctx, &entry, &commit).await,
                Ok(None) => reassign(&ctx, &entry).await,
                Err(error @ StoreError::Json { .. }) => {
                    fail_unreadable_commit(&ctx, &status, &error).await
                }
                Err(error) => {
                    tracing::warn!(job_id = %status.job_id, %error, "failed to read the adapter commit");
                }
            }
            // The next generation gets a whole lease from now.
            observed.remove(&status.job_id);
        }
        observed.retain(|job, _| ctx.jobs.cached(job).is_some());
    }
}

/// A job accepted but not published (the broker was down at submit): publishes it in a task
/// of its own, since an attempt can retry for a minute; the job's publishing lock keeps
/// attempts from overlapping each other or the submit.
fn publish_later(ctx: &Arc<Context>, entry: &Arc<JobEntry>) {
    let Ok(publishing) = entry.publishing.clone().try_lock_owned() else {
        return; // the submit or an earlier attempt is publishing it
    };
    let (ctx, entry) = (ctx.clone(), entry.clone());
    tokio::spawn(async move {
        if let Err(error) = recovery::publish_accepted(&ctx, &entry, publishing).await {
            let job = entry.watchers.borrow().job_id.clone();
            tracing::warn!(job_id = %job, %error, "failed to publish an accepted job; retrying");
        }
    });
}

/// Whether the newest claim's trainer stopped heartbeating for a lease. A job with no claim,
/// or whose newest assignment is not claimed yet, waits in the queue: the broker keeps it.
async fn trainer_lost(
    ctx: &Context,
    status: &JobStatus,
    observed: &mut HashMap<JobId, Observed>,
) -> bool {
    let job = &status.job_id;
    // An unreadable store says nothing about the trainer; do not reassign on it.
    let newest = match ctx.store.newest_claim(job).await {
        Ok(newest) => newest,
        Err(error) => {
            tracing::warn!(job_id = %job, %error, "failed to list claims");
            return false;
        }
    };
    let Some(claim) = newest.filter(|claim| *claim >= status.trainer_generation) else {
        observed.remove(job);
        return false;
    };
    let heartbeat = match ctx
        .store
        .get_json::<Heartbeat>(&layout::heartbeat(job))
        .await
    {
        // A heartbeat of another generation says nothing about this claim's trainer.
        Ok(beat) => beat
            .filter(|beat| beat.generation == claim)
            .map(|beat| (beat.at_ms, beat.step)),
        Err(error) => {
            tracing::warn!(job_id = %job, %error, "failed to read trainer heartbeat");
            return false;
        }
    };
    match observed.get(job) {
        Some(seen) if seen.claim == claim && seen.heartbeat == heartbeat => {
            seen.since.elapsed() > ctx.trainer_lease
        }
        _ => {
            observed.insert(
                job.clone(),
                Observed {
                    claim,
                    heartbeat,
                    since: Instant::now(),
                },
            );
            false
        }
    }
}

/// The run that committed the adapter ended without its report reaching us.
async fn finish_committed(ctx: &Context, entry: &JobEntry, commit: &AdapterCommit) {
    let mut record = entry.record.lock().await;
    if let Err(error) = apply_adapter_commit(&ctx.store, entry, &mut record, commit).await {
        tracing::warn!(job_id = %record.job_id, %error, "failed to record the adapter commit");
    }
}

/// A commit that exists but does not parse will not parse later either (the store is fine: it
/// returned the bytes), and the run that wrote it is gone: the job fails with the reason,
/// through the events queue as a trainer's report would, rather than waiting forever.
async fn fail_unreadable_commit(ctx: &Context, status: &JobStatus, error: &StoreError) {
    let event = ProgressEvent::TrainingFailed {
        job_id: status.job_id.clone(),
        generation: status.trainer_generation,
        reason: format!("the adapter commit is unreadable: {}", error.with_causes()),
        at_ms: now_ms(),
    };
    let payload = serde_json::to_vec(&event).expect("events serialize");
    if let Err(error) = ctx
        .broker
        .publish(queues::EVENTS, &payload, Headers::default())
        .await
    {
        // The next pass, a lease from now, tries again.
        tracing::warn!(job_id = %status.job_id, %error, "failed to report an unreadable adapter commit");
    }
}

async fn reassign(ctx: &Context, entry: &JobEntry) {
    let mut record = entry.record.lock().await;
    let job = record.job_id.clone();
    let mut next = record.clone();
    if let Err(error) =
        fanout::reassign_train(&ctx.store, ctx.broker.as_ref(), &job, &mut next).await
    {
        tracing::warn!(job_id = %job, %error, "failed to reassign job");
        return;
    }
    tracing::warn!(job_id = %job, trainer = ?record.trainer, generation = next.trainer_generation, "trainer lease expired; job reassigned");
    *record = next;
    if let Err(error) = persist(&ctx.store, &mut record).await {
        tracing::warn!(job_id = %job, %error, "failed to store job record");
    }
    entry.publish(&record);
}
