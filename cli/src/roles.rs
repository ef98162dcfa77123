//! Options of the distributed roles' commands. Each overrides a setting of the configuration
//! (`lift_shared::config::Config`); the roles themselves are `lift_runtime::roles`.

use clap::Args;
use lift_shared::config::Config;

#[derive(Debug, Args)]
pub struct SynthWorkerArgs {
    /// Chunks processed at once (default: LIFT_SYNTH_CONCURRENCY).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,
}

impl SynthWorkerArgs {
    pub fn apply(self, config: &mut Config) {
        if let Some(concurrency) = self.concurrency {
            config.synth_concurrency = concurrency;
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainWorkerArgs {
    /// Checkpoint every this many steps, and at every epoch end (default:
    /// LIFT_CHECKPOINT_EVERY_STEPS, else 25).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every_steps: Option<u64>,
    /// Exit after this many seconds without a training job, for KEDA ScaledJob pods, which
    /// should complete and free their GPU (default: LIFT_TRAINER_EXIT_WHEN_IDLE_SECS; unset:
    /// wait for jobs until SIGTERM).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub exit_when_idle: Option<u64>,
}

impl TrainWorkerArgs {
    pub fn apply(self, config: &mut Config) {
        if let Some(steps) = self.checkpoint_every_steps {
            config.checkpoint_every_steps = steps;
        }
        if let Some(secs) = self.exit_when_idle {
            config.trainer_exit_when_idle_secs = Some(secs);
        }
    }
}
