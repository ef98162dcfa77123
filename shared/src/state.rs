//! The job state machine and the job status record the coordinator stores and streams.
//!
//! Events arrive at least once and in any order across workers, so [`JobStatus::apply`] is
//! idempotent: a chunk is counted once (a bitmap inside the record remembers which), training
//! steps only move forward, and terminal jobs ignore further events but one: the trainer reads
//! task files from the store, not the events, so a job can succeed before its last
//! `ChunkSynthesized` is read, and that chunk's counts still belong in its status.
//!
//! Over 600 lines: 260 of them are tests of the state machine.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::messages::ProgressEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Stored and queued; no worker has reported yet.
    Queued,
    /// Synthesizing and/or training (the two overlap in epoch 1).
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Whether a job may move from `self` to `next`. Staying in the same state is not a
    /// transition; terminal states are final.
    pub fn can_transition_to(self, next: JobState) -> bool {
        match self {
            Self::Queued => next != Self::Queued,
            Self::Running => next.is_terminal(),
            Self::Succeeded | Self::Failed | Self::Cancelled => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkFailure {
    pub chunk: u32,
    pub reason: String,
}

/// Which chunks were already counted (synthesized or failed), one bit per chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkSet(Vec<u64>);

impl ChunkSet {
    pub fn contains(&self, chunk: u32) -> bool {
        let (word, bit) = (chunk as usize / 64, chunk % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Returns false when the chunk was already in the set.
    pub fn insert(&mut self, chunk: u32) -> bool {
        let (word, bit) = (chunk as usize / 64, chunk % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let was_set = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !was_set
    }

    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// The job record: `jobs/<id>/state/<seq:020>.json`, highest `seq` wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job_id: JobId,
    /// The tenant whose token submitted the job; empty when authentication was off.
    #[serde(default)]
    pub tenant: String,
    /// W3C trace context of the job's `SubmitJob` span: every message published for the job
    /// (also by recovery, after a restart) carries it, so the job stays one trace.
    #[serde(default, skip_serializing_if = "crate::messages::Headers::is_empty")]
    pub trace: crate::messages::Headers,
    pub state: JobState,
    pub base_model: String,
    pub sentences_total: u32,
    pub sentences_synthesized: u32,
    pub sentences_failed: u32,
    pub chunks_total: u32,
    pub chunks_synthesized: u32,
    pub chunks_failed: u32,
    /// Every chunk and the train assignment were published (publisher-confirmed). Recovery
    /// republishes what is missing for jobs where this is false.
    pub chunks_published: bool,
    pub tasks_total: u64,
    pub pairs_dropped: u64,
    #[serde(default)]
    pub facts_found: u64,
    #[serde(default)]
    pub facts_covered: u64,
    pub epoch: u32,
    pub epochs_total: u32,
    pub step: u64,
    pub last_loss: Option<f32>,
    pub last_checkpoint_step: Option<u64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub first_step_at_ms: Option<i64>,
    /// When the last chunk was synthesized; earlier than `finished_at_ms` by the training that
    /// overlapped synthesis, which is how tests prove the pipeline.
    pub last_chunk_at_ms: Option<i64>,
    /// The claim generation the job listens to: the newest one assigned or started. Events
    /// of older generations change nothing, so a trainer that lost its claim without
    /// noticing (paused past its lease) cannot move the job.
    #[serde(default)]
    pub trainer_generation: u32,
    pub adapter_uri: Option<String>,
    pub error: Option<String>,
    pub trainer: Option<String>,
    pub chunk_failures: Vec<ChunkFailure>,
    /// The job fails once more than this share of its chunks failed.
    pub failed_share_threshold: f64,
    pub seq: u64,
    /// Chunks already counted, so redelivered events change nothing.
    pub counted_chunks: ChunkSet,
}

/// What [`JobStatus::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOutcome {
    /// Some field changed (watchers should see it).
    pub changed: bool,
    /// The state changed to this one (the record should be stored at once).
    pub transition: Option<JobState>,
}

impl JobStatus {
    pub fn new(
        job_id: JobId,
        base_model: String,
        sentences_total: u32,
        chunks_total: u32,
        epochs_total: u32,
        failed_share_threshold: f64,
        now_ms: i64,
    ) -> Self {
        Self {
            job_id,
            tenant: String::new(),
            trace: crate::messages::Headers::new(),
            state: JobState::Queued,
            base_model,
            sentences_total,
            sentences_synthesized: 0,
            sentences_failed: 0,
            chunks_total,
            chunks_synthesized: 0,
            chunks_failed: 0,
            chunks_published: false,
            tasks_total: 0,
            pairs_dropped: 0,
            facts_found: 0,
            facts_covered: 0,
            epoch: 0,
            epochs_total,
            step: 0,
            last_loss: None,
            last_checkpoint_step: None,
            created_at_ms: now_ms,
            started_at_ms: None,
            updated_at_ms: now_ms,
            finished_at_ms: None,
            first_step_at_ms: None,
            last_chunk_at_ms: None,
            trainer_generation: 0,
            adapter_uri: None,
            error: None,
            trainer: None,
            chunk_failures: Vec::new(),
            failed_share_threshold,
            seq: 0,
            counted_chunks: ChunkSet::default(),
        }
    }

    /// The job was handed to claim generation `generation` (its trainer was lost or released
    /// it): from now on only that generation's events count.
    pub fn reassign_trainer(&mut self, generation: u32, at_ms: i64) {
        self.trainer_generation = self.trainer_generation.max(generation);
        self.trainer = None;
        self.touch(at_ms);
    }

    /// The adapter commit exists: the job succeeded, whichever run committed it and whether
    /// or not its `TrainingFinished` arrived. Returns whether the state changed.
    pub fn apply_adapter_commit(
        &mut self,
        commit: &crate::records::AdapterCommit,
        adapter_uri: String,
        now_ms: i64,
    ) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        self.adapter_uri = Some(adapter_uri);
        self.step = self.step.max(commit.steps);
        self.epoch = self.epoch.max(self.epochs_total);
        self.last_loss = Some(commit.final_loss);
        self.transition(JobState::Succeeded, now_ms)
    }

    pub fn chunks_resolved(&self) -> u32 {
        self.chunks_synthesized + self.chunks_failed
    }

    /// Moves to `next` if the state machine allows it; returns whether it did.
    pub fn transition(&mut self, next: JobState, at_ms: i64) -> bool {
        if !self.state.can_transition_to(next) {
            return false;
        }
        if self.started_at_ms.is_none() && next == JobState::Running {
            self.started_at_ms = Some(at_ms);
        }
        if next.is_terminal() {
            self.finished_at_ms = Some(at_ms);
            self.trainer = None;
        }
        self.state = next;
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
        true
    }

    /// Folds one progress event into the record. Pure and idempotent; see the module docs.
    pub fn apply(&mut self, event: &ProgressEvent, failed_share_threshold: f64) -> ApplyOutcome {
        // What a succeeded job trained on is in its status even when its event came late.
        let late_chunk = self.state == JobState::Succeeded
            && matches!(event, ProgressEvent::ChunkSynthesized { .. });
        if (self.state.is_terminal() && !late_chunk) || event.job_id() != &self.job_id {
            return ApplyOutcome::default();
        }
        if event
            .trainer_generation()
            .is_some_and(|generation| generation < self.trainer_generation)
        {
            return ApplyOutcome::default();
        }
        let before = self.state;
        let changed = match event {
            ProgressEvent::ChunkSynthesized {
                chunk_index,
                sentences,
                sentences_failed,
                tasks,
                pairs_dropped,
                facts_found,
                facts_covered,
                at_ms,
                ..
            } => {
                if !self.count_chunk(*chunk_index) {
                    return ApplyOutcome::default();
                }
                self.chunks_synthesized += 1;
                self.sentences_synthesized += sentences.saturating_sub(*sentences_failed);
                self.sentences_failed += sentences_failed;
                self.tasks_total += u64::from(*tasks);
                self.pairs_dropped += u64::from(*pairs_dropped);
                self.facts_found += u64::from(*facts_found);
                self.facts_covered += u64::from(*facts_covered);
                self.last_chunk_at_ms = Some(self.last_chunk_at_ms.unwrap_or(0).max(*at_ms));
                self.transition(JobState::Running, *at_ms);
                self.touch(*at_ms);
                true
            }
            ProgressEvent::ChunkFailed {
                chunk_index,
                reason,
                at_ms,
                ..
            } => {
                if !self.count_chunk(*chunk_index) {
                    return ApplyOutcome::default();
                }
                self.chunks_failed += 1;
                self.chunk_failures.push(ChunkFailure {
                    chunk: *chunk_index,
                    reason: reason.clone(),
                });
                self.touch(*at_ms);
                true
            }
            ProgressEvent::TrainingStarted {
                trainer,
                generation,
                at_ms,
                ..
            } => {
                self.trainer_generation = *generation;
                self.trainer = Some(trainer.clone());
                self.transition(JobState::Running, *at_ms);
                self.touch(*at_ms);
                true
            }
            ProgressEvent::TrainingStep {
                epoch,
                step,
                loss,
                at_ms,
                ..
            } => {
                if *step <= self.step && self.first_step_at_ms.is_some() {
                    return ApplyOutcome::default();
                }
                self.step = *step;
                self.epoch = self.epoch.max(*epoch);
                // A small task cache trains extra epochs (`TrainingOptions::min_steps`).
                self.epochs_total = self.epochs_total.max(*epoch);
                self.last_loss = Some(*loss);
                self.first_step_at_ms.get_or_insert(*at_ms);
                self.transition(JobState::Running, *at_ms);
                self.touch(*at_ms);
                true
            }
            ProgressEvent::Checkpointed {
                epoch, step, at_ms, ..
            } => {
                if self.last_checkpoint_step.is_some_and(|s| s >= *step) {
                    return ApplyOutcome::default();
                }
                self.last_checkpoint_step = Some(*step);
                self.epoch = self.epoch.max(*epoch);
                self.step = self.step.max(*step);
                self.touch(*at_ms);
                true
            }
            ProgressEvent::TrainingFinished {
                adapter_uri,
                steps,
                final_loss,
                at_ms,
                ..
            } => {
                self.adapter_uri = Some(adapter_uri.clone());
                self.step = self.step.max(*steps);
                self.epoch = self.epoch.max(self.epochs_total);
                self.last_loss = Some(*final_loss);
                self.transition(JobState::Succeeded, *at_ms);
                true
            }
            ProgressEvent::TrainingFailed { reason, at_ms, .. } => {
                self.error = Some(format!("training failed: {reason}"));
                self.transition(JobState::Failed, *at_ms);
                true
            }
            ProgressEvent::TrainingReleased { at_ms, .. } => {
                self.trainer = None;
                self.touch(*at_ms);
                true
            }
        };
        self.fail_if_too_many_chunks_failed(failed_share_threshold);
        ApplyOutcome {
            changed,
            transition: (self.state != before).then_some(self.state),
        }
    }

    fn count_chunk(&mut self, chunk_index: u32) -> bool {
        // An index outside the job is a bug in a worker; counting it would skew the shares.
        chunk_index < self.chunks_total && self.counted_chunks.insert(chunk_index)
    }

    fn touch(&mut self, at_ms: i64) {
        self.updated_at_ms = self.updated_at_ms.max(at_ms);
    }

    /// The failed share only grows (its denominator is fixed), so the job can fail as soon as
    /// it passes the threshold instead of waiting for the remaining chunks.
    fn fail_if_too_many_chunks_failed(&mut self, threshold: f64) {
        if self.state.is_terminal() || self.chunks_total == 0 {
            return;
        }
        let failed_share = f64::from(self.chunks_failed) / f64::from(self.chunks_total);
        let at_ms = self.updated_at_ms;
        if failed_share > threshold {
            self.error = Some(format!(
                "{} of {} chunks failed ({:.0}%, threshold {:.0}%); first failure: chunk {}: {}",
                self.chunks_failed,
                self.chunks_total,
                failed_share * 100.0,
                threshold * 100.0,
                self.chunk_failures.first().map_or(0, |f| f.chunk),
                self.chunk_failures
                    .first()
                    .map_or("", |f| f.reason.as_str()),
            ));
            self.transition(JobState::Failed, at_ms);
            return;
        }
        if self.chunks_resolved() == self.chunks_total && self.tasks_total == 0 {
            self.error = Some("synthesis produced no training tasks".to_string());
            self.transition(JobState::Failed, at_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::parse("job-1").unwrap()
    }

    fn status(chunks: u32) -> JobStatus {
        JobStatus::new(job(), "default".into(), chunks * 4, chunks, 3, 0.5, 1_000)
    }

    fn synthesized(chunk: u32, at_ms: i64) -> ProgressEvent {
        ProgressEvent::ChunkSynthesized {
            job_id: job(),
            chunk_index: chunk,
            sentences: 4,
            sentences_failed: 1,
            tasks: 6,
            pairs_dropped: 2,
            facts_found: 0,
            facts_covered: 0,
            at_ms,
        }
    }

    fn failed(chunk: u32) -> ProgressEvent {
        ProgressEvent::ChunkFailed {
            job_id: job(),
            chunk_index: chunk,
            reason: "generator refused".into(),
            at_ms: 2_000,
        }
    }

    fn step(step: u64, loss: f32) -> ProgressEvent {
        ProgressEvent::TrainingStep {
            job_id: job(),
            generation: 0,
            epoch: 1,
            step,
            loss,
            tokens: 100,
            learning_rate: 1e-3,
            at_ms: 3_000 + step as i64,
        }
    }

    #[test]
    fn transitions_follow_the_state_machine() {
        use JobState::*;
        assert!(Queued.can_transition_to(Running));
        assert!(Queued.can_transition_to(Cancelled));
        assert!(!Queued.can_transition_to(Queued));
        assert!(Running.can_transition_to(Succeeded));
        assert!(!Running.can_transition_to(Queued));
        for terminal in [Succeeded, Failed, Cancelled] {
            assert!(terminal.is_terminal());
            for next in [Queued, Running, Succeeded, Failed, Cancelled] {
                assert!(!terminal.can_transition_to(next));
            }
        }
    }

    #[test]
    fn redelivered_chunk_event_counts_once() {
        let mut record = status(4);
        let first = record.apply(&synthesized(2, 1_500), 0.5);
        assert_eq!(first.transition, Some(JobState::Running));
        let again = record.apply(&synthesized(2, 1_600), 0.5);
        assert!(!again.changed);
        assert_eq!(record.chunks_synthesized, 1);
        assert_eq!(record.sentences_synthesized, 3);
        assert_eq!(record.sentences_failed, 1);
        assert_eq!(record.tasks_total, 6);
        assert_eq!(record.pairs_dropped, 2);
        assert_eq!(record.started_at_ms, Some(1_500));
        assert_eq!(record.last_chunk_at_ms, Some(1_500));
    }

    #[test]
    fn a_chunk_read_after_the_job_succeeded_still_counts_and_changes_no_state() {
        let mut record = status(2);
        record.apply(&synthesized(0, 1_500), 0.5);
        let commit = crate::records::AdapterCommit {
            generation: 0,
            trainer: "trainer-a".into(),
            steps: 4,
            final_loss: 0.5,
            at_ms: 2_000,
        };
        assert!(record.apply_adapter_commit(&commit, "s3://b/a".into(), 2_000));
        let late = record.apply(&synthesized(1, 1_800), 0.5);
        assert!(late.changed);
        assert_eq!(late.transition, None);
        assert_eq!(record.state, JobState::Succeeded);
        assert_eq!(record.chunks_synthesized, 2);
        assert_eq!(record.tasks_total, 12);
        assert_eq!(record.finished_at_ms, Some(2_000));
        // A failure read after the end is not counted (no marker was written for the trainer),
        // and a job that did not succeed keeps the counts it ended with.
        assert!(!record.apply(&failed(1), 0.5).changed);
        let mut cancelled = status(2);
        cancelled.transition(JobState::Cancelled, 1_000);
        assert!(!cancelled.apply(&synthesized(0, 1_500), 0.5).changed);
        assert_eq!(cancelled.chunks_synthesized, 0);
    }

    #[test]
    fn failure_after_success_of_the_same_chunk_is_ignored() {
        let mut record = status(4);
        record.apply(&synthesized(0, 1_500), 0.5);
        assert!(!record.apply(&failed(0), 0.5).changed);
        assert_eq!(record.chunks_failed, 0);
    }

    #[test]
    fn out_of_range_chunk_is_ignored() {
        let mut record = status(2);
        assert!(!record.apply(&synthesized(7, 1_500), 0.5).changed);
        assert_eq!(record.chunks_synthesized, 0);
    }

    #[test]
    fn steps_only_move_forward() {
        let mut record = status(1);
        record.apply(&step(5, 1.5), 0.5);
        assert!(!record.apply(&step(3, 9.0), 0.5).changed);
        assert_eq!(record.step, 5);
        assert_eq!(record.last_loss, Some(1.5));
        assert_eq!(record.first_step_at_ms, Some(3_005));
        record.apply(&step(6, 1.2), 0.5);
        assert_eq!(record.step, 6);
        assert_eq!(record.first_step_at_ms, Some(3_005));
    }

    #[test]
    fn failed_share_above_threshold_fails_the_job() {
        let mut record = status(4);
        record.apply(&synthesized(0, 1_500), 0.5);
        record.apply(&failed(1), 0.5);
        record.apply(&failed(2), 0.5);
        assert_eq!(record.state, JobState::Running, "2 of 4 is not above 50%");
        let outcome = record.apply(&failed(3), 0.5);
        assert_eq!(outcome.transition, Some(JobState::Failed));
        let error = record.error.clone().unwrap();
        assert!(error.starts_with("3 of 4 chunks failed"), "{error}");
        assert!(error.contains("generator refused"), "{error}");
        assert!(record.finished_at_ms.is_some());
    }

    #[test]
    fn all_chunks_resolved_without_tasks_fails_the_job() {
        let mut record = status(2);
        record.apply(&failed(0), 1.0);
        let outcome = record.apply(&failed(1), 1.0);
        assert_eq!(outcome.transition, Some(JobState::Failed));
        assert_eq!(
            record.error.as_deref(),
            Some("synthesis produced no training tasks")
        );
    }

    #[test]
    fn training_finished_succeeds_and_terminal_ignores_events() {
        let mut record = status(1);
        record.apply(
            &ProgressEvent::TrainingStarted {
                job_id: job(),
                generation: 0,
                trainer: "gpu-0".into(),
                resumed_from_step: 0,
                at_ms: 1_100,
            },
            0.5,
        );
        assert_eq!(record.trainer.as_deref(), Some("gpu-0"));
        let outcome = record.apply(
            &ProgressEvent::TrainingFinished {
                job_id: job(),
                generation: 0,
                adapter_uri: "jobs/job-1/adapter".into(),
                steps: 12,
                final_loss: 0.3,
                at_ms: 9_000,
            },
            0.5,
        );
        assert_eq!(outcome.transition, Some(JobState::Succeeded));
        assert_eq!(record.finished_at_ms, Some(9_000));
        assert_eq!(record.trainer, None);
        assert!(!record.apply(&step(13, 0.2), 0.5).changed);
        assert_eq!(record.step, 12);
    }

    #[test]
    fn training_failed_fails_with_reason() {
        let mut record = status(1);
        let outcome = record.apply(
            &ProgressEvent::TrainingFailed {
                job_id: job(),
                generation: 0,
                reason: "out of memory".into(),
                at_ms: 5_000,
            },
            0.5,
        );
        assert_eq!(outcome.transition, Some(JobState::Failed));
        assert_eq!(
            record.error.as_deref(),
            Some("training failed: out of memory")
        );
    }

    #[test]
    fn a_superseded_generation_changes_nothing() {
        let mut record = status(1);
        let failed = |generation| ProgressEvent::TrainingFailed {
            job_id: job(),
            generation,
            reason: "late".into(),
            at_ms: 5_000,
        };
        record.reassign_trainer(1, 4_000);
        assert_eq!(record.trainer_generation, 1);
        assert!(!record.apply(&failed(0), 0.5).changed);
        assert_eq!(record.state, JobState::Queued);
        let started = ProgressEvent::TrainingStarted {
            job_id: job(),
            generation: 2,
            trainer: "gpu-2".into(),
            resumed_from_step: 0,
            at_ms: 4_500,
        };
        assert!(record.apply(&started, 0.5).changed);
        assert_eq!(record.trainer_generation, 2);
        assert!(!record.apply(&failed(1), 0.5).changed);
        assert_eq!(
            record.apply(&failed(2), 0.5).transition,
            Some(JobState::Failed)
        );
    }

    #[test]
    fn a_commit_succeeds_the_job_whoever_made_it() {
        let mut record = status(1);
        record.reassign_trainer(3, 4_000);
        let commit = crate::records::AdapterCommit {
            generation: 2,
            trainer: "gpu-2".into(),
            steps: 40,
            final_loss: 0.2,
            at_ms: 5_000,
        };
        assert!(record.apply_adapter_commit(
            &commit,
            "file:///s/jobs/job-1/adapter/".into(),
            6_000
        ));
        assert_eq!(record.state, JobState::Succeeded);
        assert_eq!(record.step, 40);
        assert!(!record.apply_adapter_commit(&commit, String::new(), 7_000));
    }

    #[test]
    fn events_of_other_jobs_are_ignored() {
        let mut record = status(1);
        let other = ProgressEvent::ChunkFailed {
            job_id: JobId::parse("other").unwrap(),
            chunk_index: 0,
            reason: "x".into(),
            at_ms: 1,
        };
        assert!(!record.apply(&other, 0.5).changed);
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut record = status(100);
        record.apply(&synthesized(70, 1_500), 0.5);
        let json = serde_json::to_string(&record).unwrap();
        let back: JobStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        assert!(back.counted_chunks.contains(70));
        assert!(!back.counted_chunks.contains(69));
        assert_eq!(back.counted_chunks.len(), 1);
    }
}
