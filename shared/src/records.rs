//! The objects the store holds (JSON, one per key of `lift-store`'s layout): claims,
//! heartbeats, the adapter commit and markers. Written and read by `lift-store`; defined here
//! because the job state machine reads them too.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// `jobs/<id>/heartbeat.json`, overwritten by the trainer that holds the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub trainer: String,
    /// The claim generation of the trainer that wrote it.
    #[serde(default)]
    pub generation: u32,
    pub at_ms: i64,
    pub step: u64,
}

/// `jobs/<id>/claims/<generation>.json`, create-only: the trainer holding that generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub trainer: String,
    pub at_ms: i64,
}

/// `jobs/<id>/adapter-commit.json`, create-only: the one training run whose adapter is the
/// job's. Written after that run staged its adapter and before the adapter is published
/// under `adapter/`, so the published adapter can never change once it exists, and a run
/// that lost its claim unnoticed cannot replace it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterCommit {
    pub generation: u32,
    pub trainer: String,
    pub steps: u64,
    pub final_loss: f32,
    pub at_ms: i64,
}

/// `jobs/<id>/cancel.json`: workers stop working on a job once it exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelMarker {
    pub reason: String,
    pub at_ms: i64,
}

/// `requests/<sha256 of key>.json`: the job a `SubmitJob` idempotency key reserved. Written
/// (create-only) before the job, so a retry after a crash creates the same job id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequestRecord {
    pub request_id: String,
    pub job_id: JobId,
    pub at_ms: i64,
}

/// `jobs/<id>/failed/<k>.json`: the chunk will never get a task file; trainers skip it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedChunkMarker {
    pub chunk: u32,
    pub reason: String,
    pub at_ms: i64,
}
