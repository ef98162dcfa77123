//! The training worker: takes jobs from `lift.train`, trains a LoRA adapter on the job's
//! task files as they appear (epoch 1 overlaps generation), replays the task cache for later
//! epochs, checkpoints to the store and resumes from the latest checkpoint after a failover.

mod checkpoint;
mod error;
mod run;
mod worker;

#[cfg(test)]
mod tests;

pub use checkpoint::{Checkpoint, Cursor};
pub use error::TrainError;
pub use run::{JobRun, RunOptions, RunOutcome};
pub use worker::{run_train_worker, TrainWorkerConfig};
