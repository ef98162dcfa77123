//! Refreshes the coordinator's gauges: jobs by state and the depth of each queue.

use std::sync::Arc;
use std::time::Duration;

use lift_broker::queues;
use lift_shared::metrics::{JOBS, QUEUE_DEPTH};
use lift_shared::state::JobState;
use tokio::sync::watch;

use crate::jobs::{stopped, Context};

const REFRESH: Duration = Duration::from_secs(5);

const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

pub(crate) async fn run_gauges(ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let mut stop = std::pin::pin!(stopped(shutdown));
    let mut timer = tokio::time::interval(REFRESH);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = timer.tick() => {}
        }
        let held: Vec<JobState> = ctx
            .jobs
            .all()
            .iter()
            .map(|entry| entry.watchers.borrow().state)
            .collect();
        for state in STATES {
            let count = held.iter().filter(|s| **s == state).count();
            JOBS.with_label_values(&[state.as_str()]).set(count as i64);
        }
        for queue in [queues::SYNTH, queues::TRAIN, queues::EVENTS] {
            match ctx.broker.queue_depth(queue).await {
                Ok(depth) => QUEUE_DEPTH
                    .with_label_values(&[queue])
                    .set(depth.min(i64::MAX as u64) as i64),
                Err(error) => tracing::debug!(queue, %error, "queue depth not available"),
            }
        }
    }
}
