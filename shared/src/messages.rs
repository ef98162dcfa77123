//! Messages that cross the broker, defined once and used by both ends: the queues, the headers
//! that travel with a payload, and the payloads (JSON). The broker itself is `lift-broker`.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;
use crate::spec::{SynthesisOptions, TrainingOptions};

/// Queue names, one per flow in ARCHITECTURE.md.
pub mod queues {
    /// Chunks of sentences waiting for question/answer synthesis.
    pub const SYNTH: &str = "lift.synth";
    /// Jobs waiting for a trainer (one message per job and training attempt).
    pub const TRAIN: &str = "lift.train";
    /// Progress events from workers to the coordinator.
    pub const EVENTS: &str = "lift.events";
    /// Where a queue's messages go after the delivery limit; the dead-letter queue of `q`
    /// is `dead_letter_queue(q)`.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dead")
    }
}

/// Header naming the queue a dead-lettered message came from (RabbitMQ sets it too).
pub const DEATH_QUEUE_HEADER: &str = "x-first-death-queue";
/// Header saying why a message was dead-lettered: `rejected` or `delivery_limit` (RabbitMQ's
/// values; it also uses `expired`).
pub const DEATH_REASON_HEADER: &str = "x-first-death-reason";

/// Message headers that travel with a payload (W3C trace context, message kind).
pub type Headers = std::collections::BTreeMap<String, String>;

/// One generation target: a sentence plus the text before it that the generator may read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentenceUnit {
    /// Index of the sentence within the job (across all documents).
    pub index: u32,
    /// Index of the document the sentence comes from.
    pub document: u32,
    pub text: String,
    /// Up to `left_context_chars` characters that precede the sentence in its document.
    pub left_context: String,
}

/// `lift.synth`: a chunk of consecutive sentences to turn into training tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SynthChunk {
    pub job_id: JobId,
    pub chunk_index: u32,
    pub title: String,
    pub sentences: Vec<SentenceUnit>,
    pub options: SynthesisOptions,
}

/// `lift.train`: a job for a trainer; sent at submit time and again on failover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainAssignment {
    pub job_id: JobId,
    pub base_model: String,
    pub options: TrainingOptions,
    pub chunk_count: u32,
    /// The claim generation this assignment lets a trainer create: 0 at first, one past the
    /// newest claim when the coordinator reassigns the job. A trainer that finds a claim of
    /// this generation or a newer one drops the assignment, so a duplicate or stale copy
    /// never takes the job from a live owner.
    #[serde(default)]
    pub generation: u32,
    /// When the coordinator published this assignment (ms since the Unix epoch). A trainer
    /// that holds another base model passes the assignment on to the others until it is
    /// `LIFT_UNSERVED_MODEL_TIMEOUT_SECS` old, then fails the job with that reason. 0 in an
    /// assignment from before the field: the first trainer to pass it on stamps it.
    #[serde(default)]
    pub published_at_ms: i64,
}

/// `lift.events`: what workers report to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProgressEvent {
    ChunkSynthesized {
        job_id: JobId,
        chunk_index: u32,
        sentences: u32,
        sentences_failed: u32,
        tasks: u32,
        /// Invalid or ungrounded pairs the worker dropped.
        pairs_dropped: u32,
        /// Fact spans found in the chunk's sentences, and those some task answers.
        #[serde(default)]
        facts_found: u32,
        #[serde(default)]
        facts_covered: u32,
        at_ms: i64,
    },
    ChunkFailed {
        job_id: JobId,
        chunk_index: u32,
        reason: String,
        at_ms: i64,
    },
    TrainingStarted {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        trainer: String,
        resumed_from_step: u64,
        at_ms: i64,
    },
    TrainingStep {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        epoch: u32,
        step: u64,
        loss: f32,
        tokens: u64,
        /// The step's learning rate (0 from a trainer older than this field).
        #[serde(default)]
        learning_rate: f64,
        at_ms: i64,
    },
    Checkpointed {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        epoch: u32,
        step: u64,
        bytes: u64,
        at_ms: i64,
    },
    TrainingFinished {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        adapter_uri: String,
        steps: u64,
        final_loss: f32,
        at_ms: i64,
    },
    TrainingFailed {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        reason: String,
        at_ms: i64,
    },
    /// The trainer stopped on shutdown after a checkpoint; the job goes back to the queue.
    TrainingReleased {
        job_id: JobId,
        /// Claim generation of the run that reports it (see `TrainAssignment::generation`).
        #[serde(default)]
        generation: u32,
        step: u64,
        at_ms: i64,
    },
}

impl ProgressEvent {
    /// The claim generation of a trainer's event; `None` for synthesis events.
    pub fn trainer_generation(&self) -> Option<u32> {
        match self {
            Self::ChunkSynthesized { .. } | Self::ChunkFailed { .. } => None,
            Self::TrainingStarted { generation, .. }
            | Self::TrainingStep { generation, .. }
            | Self::Checkpointed { generation, .. }
            | Self::TrainingFinished { generation, .. }
            | Self::TrainingFailed { generation, .. }
            | Self::TrainingReleased { generation, .. } => Some(*generation),
        }
    }

    pub fn job_id(&self) -> &JobId {
        match self {
            Self::ChunkSynthesized { job_id, .. }
            | Self::ChunkFailed { job_id, .. }
            | Self::TrainingStarted { job_id, .. }
            | Self::TrainingStep { job_id, .. }
            | Self::Checkpointed { job_id, .. }
            | Self::TrainingFinished { job_id, .. }
            | Self::TrainingFailed { job_id, .. }
            | Self::TrainingReleased { job_id, .. } => job_id,
        }
    }
}

/// One line of a task file `jobs/<id>/tasks/<chunk>.jsonl`: a training example.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    pub sentence_index: u32,
    /// Title of the sentence's document; the training prompt names it, as LIFT's does.
    pub title: String,
    pub question: String,
    pub answer: String,
    /// `qa` for generated pairs, `cloze` for rule-based ones.
    #[serde(default = "default_task_kind")]
    pub kind: String,
    /// W3C `traceparent` of the synthesis that wrote the task: the trainer links the span
    /// that trains on it to that synthesis. Empty when tracing was off.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}

impl Task {
    /// Tasks in a task file (one JSON object per non-empty line), without parsing them.
    pub fn count_in_file(task_file: &[u8]) -> usize {
        task_file
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .count()
    }
}

fn default_task_kind() -> String {
    "qa".to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
