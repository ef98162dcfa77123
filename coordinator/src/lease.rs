//! Trainer watchdog. A trainer acks its assignment once it has claimed the job, so if it dies
//! the broker has nothing to redeliver; the coordinator notices the silent heartbeat and puts
//! the assignment back on `lift.train`, where another trainer resumes from the checkpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lift_shared::ids::JobId;
use lift_shared::messages::now_ms;
use lift_shared::state::JobStatus;
use lift_shared::store::{layout, Heartbeat};
use tokio::sync::watch;

use crate::fanout;
use crate::jobs::{stopped, Context};

pub(crate) async fn run_lease_watchdog(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let mut stop = std::pin::pin!(stopped(shutdown));
    let lease = ctx.trainer_lease;
    let mut last_republished: HashMap<JobId, Instant> = HashMap::new();
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
                last_republished.remove(&status.job_id);
                continue;
            }
            if last_republished
                .get(&status.job_id)
                .is_some_and(|at| at.elapsed() < lease)
            {
                continue;
            }
            if !trainer_lost(&ctx, &status, now_ms()).await {
                continue;
            }
            tracing::warn!(job_id = %status.job_id, trainer = ?status.trainer, "trainer lease expired; reassigning job");
            match fanout::republish_train_assignment(
                &ctx.store,
                ctx.broker.as_ref(),
                &status.job_id,
                &status,
            )
            .await
            {
                Ok(()) => {
                    last_republished.insert(status.job_id.clone(), Instant::now());
                }
                Err(error) => {
                    tracing::warn!(job_id = %status.job_id, %error, "failed to reassign job");
                }
            }
        }
        last_republished.retain(|job, _| ctx.jobs.cached(job).is_some());
    }
}

/// Whether the trainer holding the job stopped heartbeating. Only jobs a trainer reported
/// starting are checked: an assignment still waiting in the queue is the broker's to keep.
async fn trainer_lost(ctx: &Context, status: &JobStatus, now_ms: i64) -> bool {
    let Some(started_at_ms) = status.trainer_started_at_ms else {
        return false;
    };
    let lease_ms = ctx.trainer_lease.as_millis() as i64;
    let heartbeat: Option<Heartbeat> =
        match ctx.store.get_json(&layout::heartbeat(&status.job_id)).await {
            Ok(heartbeat) => heartbeat,
            Err(error) => {
                // An unreadable store says nothing about the trainer; do not reassign on it.
                tracing::warn!(job_id = %status.job_id, %error, "failed to read trainer heartbeat");
                return false;
            }
        };
    match heartbeat {
        // A heartbeat older than the current trainer's start belongs to an earlier one.
        Some(beat) if beat.at_ms >= started_at_ms => now_ms - beat.at_ms > lease_ms,
        _ => now_ms - started_at_ms > 2 * lease_ms,
    }
}
