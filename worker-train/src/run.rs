//! One training run of one job, on a blocking thread (model math must not sit on the async
//! runtime); store and broker calls go through the runtime handle.

use lift_shared::metrics;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lift_broker::{queues, Broker, Headers};
use lift_engine::{Engine, LoraConfig, LrSchedule, SftExample, SftTrainer, TrainerOptions};
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, ProgressEvent, Task, TrainAssignment};
use lift_shared::spec::Schedule;
use lift_store::{layout, AdapterCommit, Store};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::{prune_checkpoints, Checkpoint, Cursor};
use crate::error::TrainError;
use lift_shared::protocol::qa_prompt;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Checkpoint after this many steps (and at every epoch end, and on shutdown).
    pub checkpoint_every_steps: u64,
    /// How often epoch 1 looks for new task files while generation runs.
    pub poll_interval: Duration,
    /// How often the run checks that it still holds the job (claim, cancel marker).
    pub ownership_check_interval: Duration,
    pub max_seq_len: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            checkpoint_every_steps: 25,
            poll_interval: Duration::from_millis(200),
            ownership_check_interval: Duration::from_secs(2),
            max_seq_len: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Finished {
        adapter_uri: String,
        steps: u64,
        final_loss: f32,
    },
    /// The job was cancelled (or failed by the coordinator) while training.
    Cancelled,
    /// Shutdown: a checkpoint was written and the job handed back.
    Released { step: u64 },
    /// Another trainer claimed the job (this one was presumed dead).
    LostClaim,
}

enum Interrupt {
    Cancelled,
    Shutdown,
    LostClaim,
}

pub struct JobRun {
    pub engine: Arc<Engine>,
    pub store: Store,
    pub broker: Arc<dyn Broker>,
    pub assignment: TrainAssignment,
    pub trainer_id: String,
    pub claim_generation: u32,
    pub options: RunOptions,
    pub shutdown: CancellationToken,
    /// Shared with the heartbeat task.
    pub current_step: Arc<AtomicU64>,
}

struct State {
    trainer: SftTrainer,
    cursor: Cursor,
    last_loss: f32,
    last_ownership_check: Instant,
    steps_since_checkpoint: u64,
    /// Epochs this run trains: the job's, or more once the task cache is known to be small
    /// (`TrainingOptions::epochs_for`).
    epochs: u32,
}

type Pending = Vec<(u32, SftExample)>;

impl JobRun {
    fn job(&self) -> &JobId {
        &self.assignment.job_id
    }

    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        Handle::current().block_on(future)
    }

    /// Reports progress to the coordinator. A report the broker does not take (it was down
    /// for longer than a publish retries) is logged and the run goes on: the store holds the
    /// truth (claim, heartbeat, checkpoints, the adapter commit), and the coordinator's lease
    /// watchdog acts on it when reports stop.
    fn report(&self, event: ProgressEvent) {
        let payload = serde_json::to_vec(&event).expect("events serialize");
        let published = self.block(
            self.broker
                .publish(queues::EVENTS, &payload, Headers::new()),
        );
        if let Err(error) = published {
            warn!(job_id = %self.job(), %error, "could not report progress; training goes on");
        }
    }

    /// Runs the job to its end or to an interruption. Blocking.
    pub fn run(self) -> Result<RunOutcome, TrainError> {
        match self.run_owned() {
            Err(TrainError::ClaimLost(generation)) => {
                info!(job_id = %self.job(), generation, "a newer claim owns the job; this run stops");
                Ok(RunOutcome::LostClaim)
            }
            other => other,
        }
    }

    fn run_owned(&self) -> Result<RunOutcome, TrainError> {
        let mut state = self.start()?;
        self.report(ProgressEvent::TrainingStarted {
            job_id: self.job().clone(),
            generation: self.claim_generation,
            trainer: self.trainer_id.clone(),
            resumed_from_step: state.trainer.steps_done(),
            at_ms: now_ms(),
        });
        let outcome = (|| -> Result<Option<Interrupt>, TrainError> {
            if self.assignment.options.train_after_synthesis {
                // Every epoch, the first one included, is a shuffled pass over the whole cache.
                state.cursor.epoch = state.cursor.epoch.max(1);
                if let Some(interrupt) = self.await_synthesis(&mut state)? {
                    return Ok(Some(interrupt));
                }
                self.plan_epochs(&mut state)?;
            } else if state.cursor.epoch <= 1 {
                state.cursor.epoch = 1;
                let _epoch = tracing::info_span!("epoch", epoch = 1, streaming = true).entered();
                if let Some(interrupt) = self.train_first_epoch(&mut state)? {
                    return Ok(Some(interrupt));
                }
                self.plan_epochs(&mut state)?;
                self.end_epoch(&mut state)?;
            } else {
                self.plan_epochs(&mut state)?;
            }
            while state.cursor.epoch <= state.epochs {
                let _epoch =
                    tracing::info_span!("epoch", epoch = state.cursor.epoch, streaming = false)
                        .entered();
                if let Some(interrupt) = self.train_cached_epoch(&mut state)? {
                    return Ok(Some(interrupt));
                }
                self.end_epoch(&mut state)?;
            }
            Ok(None)
        })()?;
        match outcome {
            None => self.finish(&state),
            Some(Interrupt::Cancelled) => Ok(RunOutcome::Cancelled),
            Some(Interrupt::LostClaim) => Ok(RunOutcome::LostClaim),
            Some(Interrupt::Shutdown) => {
                self.checkpoint(&mut state)?;
                let step = state.trainer.steps_done();
                // The coordinator puts the job back on the train queue when it sees this (or a
                // lease after the heartbeat stops, if the report is lost).
                self.report(ProgressEvent::TrainingReleased {
                    job_id: self.job().clone(),
                    generation: self.claim_generation,
                    step,
                    at_ms: now_ms(),
                });
                Ok(RunOutcome::Released { step })
            }
        }
    }

    fn start(&self) -> Result<State, TrainError> {
        let options = &self.assignment.options;
        let trainer_options = TrainerOptions {
            learning_rate: options.learning_rate,
            // The decay is planned once the task cache is complete (`plan_epochs`).
            schedule: self.schedule(u64::MAX, u64::MAX),
            max_grad_norm: options.max_grad_norm,
            max_seq_len: self.options.max_seq_len,
            ..TrainerOptions::default()
        };
        let latest = self.block(Checkpoint::load_latest(&self.store, self.job()))?;
        let (trainer, cursor, last_loss) = match latest {
            Some((checkpoint, files, optimizer)) => {
                let adapter = self.engine.load_adapter(&files)?;
                let mut trainer = SftTrainer::new(self.engine.clone(), adapter, trainer_options)?;
                trainer.restore_optimizer_state(&optimizer, checkpoint.step)?;
                info!(job_id = %self.job(), step = checkpoint.step, epoch = checkpoint.cursor.epoch, "resuming from checkpoint");
                (trainer, checkpoint.cursor, checkpoint.last_loss)
            }
            None => {
                let lora = LoraConfig::new(
                    options.rank as usize,
                    options.alpha as f64,
                    &options.target_modules,
                )?;
                let adapter = self.engine.new_adapter(lora, options.seed)?;
                let trainer = SftTrainer::new(self.engine.clone(), adapter, trainer_options)?;
                (trainer, Cursor::default(), f32::NAN)
            }
        };
        self.current_step
            .store(trainer.steps_done(), Ordering::Relaxed);
        Ok(State {
            trainer,
            cursor,
            last_loss,
            last_ownership_check: Instant::now(),
            steps_since_checkpoint: 0,
            epochs: self.assignment.options.epochs.max(1),
        })
    }

    fn interrupted(&self, state: &mut State) -> Result<Option<Interrupt>, TrainError> {
        if self.shutdown.is_cancelled() {
            return Ok(Some(Interrupt::Shutdown));
        }
        if state.last_ownership_check.elapsed() < self.options.ownership_check_interval {
            return Ok(None);
        }
        state.last_ownership_check = Instant::now();
        if self.block(self.store.exists(&layout::cancel(self.job())))? {
            return Ok(Some(Interrupt::Cancelled));
        }
        if !self.still_owner()? {
            return Ok(Some(Interrupt::LostClaim));
        }
        Ok(None)
    }

    /// Whether this run's claim is still the newest. Checked before every write a
    /// superseded run could spoil, and every `ownership_check_interval` while training.
    fn ensure_owner(&self) -> Result<(), TrainError> {
        if self.still_owner()? {
            Ok(())
        } else {
            Err(TrainError::ClaimLost(self.claim_generation))
        }
    }

    fn still_owner(&self) -> Result<bool, TrainError> {
        let newest = self.block(self.store.newest_claim(self.job()))?;
        Ok(newest == Some(self.claim_generation))
    }

    fn read_tasks(&self, chunk: u32) -> Result<Vec<Task>, TrainError> {
        let key = layout::tasks(self.job(), chunk);
        let bytes = self.block(self.store.get(&key))?.unwrap_or_default();
        let mut tasks = Vec::new();
        for (line_number, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Task>(line) {
                Ok(task) => tasks.push(task),
                Err(error) => {
                    warn!(job_id = %self.job(), chunk, line_number, %error, "skipping malformed task line")
                }
            }
        }
        Ok(tasks)
    }

    fn example(task: &Task) -> SftExample {
        SftExample {
            prompt: qa_prompt(&task.title, &task.question),
            answer: task.answer.clone(),
        }
    }

    fn train_step(&self, state: &mut State, batch: &[SftExample]) -> Result<(), TrainError> {
        let timer = metrics::TRAINING_STEP_SECONDS.start_timer();
        let stats = state.trainer.step(batch)?;
        timer.observe_duration();
        let step = state.trainer.steps_done();
        if !stats.loss.is_finite() {
            return Err(TrainError::Diverged {
                step,
                loss: stats.loss,
            });
        }
        metrics::TRAINING_TOKENS.inc_by(stats.tokens as u64);
        metrics::TRAINING_LOSS.set(f64::from(stats.loss));
        state.last_loss = stats.loss;
        state.steps_since_checkpoint += 1;
        self.current_step.store(step, Ordering::Relaxed);
        self.report(ProgressEvent::TrainingStep {
            job_id: self.job().clone(),
            generation: self.claim_generation,
            epoch: state.cursor.epoch,
            step,
            loss: stats.loss,
            tokens: stats.tokens as u64,
            learning_rate: stats.learning_rate,
            at_ms: now_ms(),
        });
        Ok(())
    }

    fn maybe_checkpoint(&self, state: &mut State) -> Result<(), TrainError> {
        if state.steps_since_checkpoint >= self.options.checkpoint_every_steps {
            self.checkpoint(state)?;
        }
        Ok(())
    }

    /// Epoch 1: trains each task file as soon as it exists, until every chunk has a task file
    /// or a failure marker.
    fn train_first_epoch(&self, state: &mut State) -> Result<Option<Interrupt>, TrainError> {
        let batch_size = self.assignment.options.batch_size.max(1) as usize;
        let mut loaded: BTreeSet<u32> = BTreeSet::new();
        let mut pending: Pending = Vec::new();
        loop {
            if let Some(interrupt) = self.interrupted(state)? {
                return Ok(Some(interrupt));
            }
            let with_tasks = self.chunks_under(&layout::tasks_prefix(self.job()))?;
            let failed = self.chunks_under(&layout::failed_prefix(self.job()))?;
            let mut found_new = false;
            for &chunk in with_tasks.difference(&loaded.clone()) {
                let done = state
                    .cursor
                    .epoch1_trained
                    .get(&chunk)
                    .copied()
                    .unwrap_or(0) as usize;
                let tasks = self.read_tasks(chunk)?;
                if let Some(task) = tasks.first() {
                    lift_shared::telemetry::link_current_span_to(&task.traceparent);
                }
                pending.extend(tasks.iter().skip(done).map(|t| (chunk, Self::example(t))));
                loaded.insert(chunk);
                found_new = true;
            }
            let all_resolved = self.every_chunk_in(&with_tasks, &failed);
            while pending.len() >= batch_size || (all_resolved && !pending.is_empty()) {
                let take = pending.len().min(batch_size);
                let batch: Pending = pending.drain(..take).collect();
                let examples: Vec<SftExample> = batch.iter().map(|(_, e)| e.clone()).collect();
                self.train_step(state, &examples)?;
                for (chunk, _) in &batch {
                    *state.cursor.epoch1_trained.entry(*chunk).or_insert(0) += 1;
                }
                self.maybe_checkpoint(state)?;
                if let Some(interrupt) = self.interrupted(state)? {
                    return Ok(Some(interrupt));
                }
            }
            if all_resolved {
                let trained: u32 = state.cursor.epoch1_trained.values().sum();
                if trained == 0 && state.trainer.steps_done() == 0 {
                    return Err(TrainError::NoTasks);
                }
                return Ok(None);
            }
            if !found_new {
                std::thread::sleep(self.options.poll_interval);
            }
        }
    }

    /// Waits until every chunk has a task file or a failure marker, for a job that trains
    /// only after synthesis.
    fn await_synthesis(&self, state: &mut State) -> Result<Option<Interrupt>, TrainError> {
        loop {
            if let Some(interrupt) = self.interrupted(state)? {
                return Ok(Some(interrupt));
            }
            if self.synthesis_resolved()? {
                return Ok(None);
            }
            std::thread::sleep(self.options.poll_interval);
        }
    }

    /// Whether every chunk has a task file or a failure marker.
    fn synthesis_resolved(&self) -> Result<bool, TrainError> {
        let with_tasks = self.chunks_under(&layout::tasks_prefix(self.job()))?;
        let failed = self.chunks_under(&layout::failed_prefix(self.job()))?;
        Ok(self.every_chunk_in(&with_tasks, &failed))
    }

    /// The chunk indices of the objects under `prefix` (task files or failure markers).
    fn chunks_under(&self, prefix: &str) -> Result<BTreeSet<u32>, TrainError> {
        Ok(self
            .block(self.store.list(prefix))?
            .iter()
            .filter_map(|k| layout::chunk_index_of(k))
            .collect())
    }

    /// Whether each of the job's chunks is in one of the two sets.
    fn every_chunk_in(&self, with_tasks: &BTreeSet<u32>, failed: &BTreeSet<u32>) -> bool {
        (0..self.assignment.chunk_count).all(|c| with_tasks.contains(&c) || failed.contains(&c))
    }

    /// Epochs trained from the complete task cache (2+, or all with `train_after_synthesis`),
    /// shuffled with a seed per epoch.
    fn train_cached_epoch(&self, state: &mut State) -> Result<Option<Interrupt>, TrainError> {
        let batch_size = self.assignment.options.batch_size.max(1) as usize;
        let chunks = self.chunks_under(&layout::tasks_prefix(self.job()))?;
        let mut examples = Vec::new();
        for &chunk in &chunks {
            examples.extend(self.read_tasks(chunk)?.iter().map(Self::example));
        }
        if examples.is_empty() {
            return Err(TrainError::NoTasks);
        }
        let seed = self.assignment.options.seed ^ (u64::from(state.cursor.epoch) << 32);
        examples.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let mut position = state.cursor.position as usize;
        while position < examples.len() {
            if let Some(interrupt) = self.interrupted(state)? {
                return Ok(Some(interrupt));
            }
            let end = (position + batch_size).min(examples.len());
            self.train_step(state, &examples[position..end])?;
            position = end;
            state.cursor.position = position as u64;
            self.maybe_checkpoint(state)?;
        }
        Ok(None)
    }

    /// The epochs to train, from the size of the whole task cache (known after epoch 1), and
    /// the learning-rate decay over the steps left.
    fn plan_epochs(&self, state: &mut State) -> Result<(), TrainError> {
        let options = &self.assignment.options;
        let mut tasks = 0u64;
        for key in self.block(self.store.list(&layout::tasks_prefix(self.job())))? {
            if let Some(bytes) = self.block(self.store.get(&key))? {
                tasks += Task::count_in_file(&bytes) as u64;
            }
        }
        let batch_size = u64::from(options.batch_size.max(1));
        let steps_per_epoch = tasks.div_ceil(batch_size);
        let epochs = options.epochs_for(steps_per_epoch);
        if epochs > options.epochs {
            info!(job_id = %self.job(), tasks, steps_per_epoch, epochs, min_steps = options.min_steps, "small task cache: training extra epochs");
        }
        state.epochs = epochs;
        // Called at the end of a streamed epoch 1 (the cursor still on it), or before (or on
        // resuming) an epoch trained from the cache, at `position`.
        let cursor = &state.cursor;
        let streamed_first_epoch = !options.train_after_synthesis;
        let steps_left = if cursor.epoch <= 1 && streamed_first_epoch {
            u64::from(epochs.saturating_sub(1)) * steps_per_epoch
        } else {
            let left_in_epoch =
                steps_per_epoch.saturating_sub(cursor.position.div_ceil(batch_size));
            u64::from(epochs.saturating_sub(cursor.epoch)) * steps_per_epoch + left_in_epoch
        };
        let total_steps = state.trainer.steps_done() + steps_left;
        let cached_epochs = epochs.saturating_sub(u32::from(streamed_first_epoch));
        let decay_from = total_steps.saturating_sub(u64::from(cached_epochs) * steps_per_epoch);
        state
            .trainer
            .set_schedule(self.schedule(decay_from, total_steps));
        Ok(())
    }

    /// The job's learning-rate schedule; a cosine decays over the epochs trained from the
    /// task cache, from `decay_from` to zero at `total_steps`.
    fn schedule(&self, decay_from: u64, total_steps: u64) -> LrSchedule {
        let options = &self.assignment.options;
        match options.schedule {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::Cosine => LrSchedule::Cosine {
                warmup_steps: u64::from(options.warmup_steps),
                decay_from,
                total_steps,
            },
        }
    }

    fn end_epoch(&self, state: &mut State) -> Result<(), TrainError> {
        state.cursor.epoch += 1;
        state.cursor.position = 0;
        self.checkpoint(state)
    }

    fn checkpoint(&self, state: &mut State) -> Result<(), TrainError> {
        self.ensure_owner()?;
        let started = Instant::now();
        let adapter = state.trainer.adapter().to_peft_files()?;
        let checkpoint = Checkpoint {
            step: state.trainer.steps_done(),
            cursor: state.cursor.clone(),
            last_loss: state.last_loss,
            trainer: self.trainer_id.clone(),
            at_ms: now_ms(),
            adapter_config: String::from_utf8_lossy(&adapter.config_json).into_owned(),
            generation: self.claim_generation,
        };
        let optimizer = state.trainer.optimizer_state()?;
        let serialized_ms = started.elapsed().as_millis() as u64;
        let bytes = self.block(checkpoint.save(&self.store, self.job(), &adapter, optimizer))?;
        state.steps_since_checkpoint = 0;
        // Only the newest checkpoint is ever resumed from; one more is kept in case it is
        // being read by a trainer that is taking over.
        if let Err(error) = self.block(prune_checkpoints(&self.store, self.job(), 2)) {
            warn!(job_id = %self.job(), %error, "failed to prune old checkpoints");
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::CHECKPOINT_BYTES.inc_by(bytes);
        metrics::CHECKPOINT_SECONDS.observe(seconds);
        info!(job_id = %self.job(), step = checkpoint.step, bytes, seconds, serialized_ms, "checkpoint written");
        // After the last epoch the cursor points one past it; report the epoch trained.
        self.report(ProgressEvent::Checkpointed {
            job_id: self.job().clone(),
            generation: self.claim_generation,
            epoch: state.cursor.epoch.min(state.epochs),
            step: checkpoint.step,
            bytes,
            at_ms: now_ms(),
        });
        Ok(())
    }

    /// Commits the adapter (see `Store::commit_adapter`) and reports it. A run whose claim
    /// was superseded, or that loses the commit to another run, reports nothing.
    fn finish(&self, state: &State) -> Result<RunOutcome, TrainError> {
        self.ensure_owner()?;
        let files = state.trainer.adapter().to_peft_files()?;
        let job = self.job();
        let steps = state.trainer.steps_done();
        let commit = AdapterCommit {
            generation: self.claim_generation,
            trainer: self.trainer_id.clone(),
            steps,
            final_loss: state.last_loss,
            at_ms: now_ms(),
        };
        let holding = self.block(self.store.commit_adapter(
            job,
            &commit,
            files.safetensors.into(),
            files.config_json.into(),
        ))?;
        if holding.generation != self.claim_generation {
            return Err(TrainError::ClaimLost(self.claim_generation));
        }
        let adapter_uri = self.store.adapter_uri(job);
        let finished = ProgressEvent::TrainingFinished {
            job_id: job.clone(),
            generation: self.claim_generation,
            adapter_uri: adapter_uri.clone(),
            steps,
            final_loss: state.last_loss,
            at_ms: now_ms(),
        };
        // The commit is the truth: the coordinator finds it when this run's heartbeat stops,
        // so a broker that is down now costs a lease, not the job.
        self.report(finished);
        Ok(RunOutcome::Finished {
            adapter_uri,
            steps,
            final_loss: state.last_loss,
        })
    }
}
