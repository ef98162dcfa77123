//! Every key lift writes, in one place. Under `jobs/<id>/`: `spec.json` and `state/<seq>.json`
//! (the job and its state records), `tasks/<chunk>.jsonl` and `failed/<chunk>.json` (what
//! synthesis made of each chunk), `cancel.json`, `claims/<generation>.json` and
//! `heartbeat.json` (which trainer holds the job), `checkpoints/<step>-<generation>/`
//! (adapter, optimizer state, manifest), `staged/<generation>/` (a run's final adapter),
//! `adapter-commit.json` (create-only: the generation whose staged adapter is the job's) and
//! `adapter/` (the committed adapter, published after the commit, its configuration last).
//! `requests/<sha256 of request id>.json`: the job a `SubmitJob` idempotency key reserved,
//! written before the job. Chunks are not stored: splitting the stored spec is deterministic,
//! and recovery plans them again.

use lift_shared::ids::JobId;

pub const JOBS_PREFIX: &str = "jobs/";

pub fn job_prefix(job: &JobId) -> String {
    format!("jobs/{job}/")
}
pub fn spec(job: &JobId) -> String {
    format!("jobs/{job}/spec.json")
}
pub fn state_prefix(job: &JobId) -> String {
    format!("jobs/{job}/state/")
}
pub fn state(job: &JobId, seq: u64) -> String {
    format!("jobs/{job}/state/{seq:020}.json")
}
pub fn tasks_prefix(job: &JobId) -> String {
    format!("jobs/{job}/tasks/")
}
pub fn tasks(job: &JobId, chunk: u32) -> String {
    format!("jobs/{job}/tasks/{chunk:06}.jsonl")
}
pub fn failed_prefix(job: &JobId) -> String {
    format!("jobs/{job}/failed/")
}
pub fn failed(job: &JobId, chunk: u32) -> String {
    format!("jobs/{job}/failed/{chunk:06}.json")
}
/// The job a `SubmitJob` idempotency key created; keyed by the key's SHA-256 (hex),
/// since keys may hold characters that are not safe in every store's paths.
pub fn submit_request(key_sha256_hex: &str) -> String {
    format!("requests/{key_sha256_hex}.json")
}
pub fn cancel(job: &JobId) -> String {
    format!("jobs/{job}/cancel.json")
}
pub fn claims_prefix(job: &JobId) -> String {
    format!("jobs/{job}/claims/")
}
pub fn claim(job: &JobId, generation: u32) -> String {
    format!("jobs/{job}/claims/{generation:06}.json")
}
pub fn heartbeat(job: &JobId) -> String {
    format!("jobs/{job}/heartbeat.json")
}
pub fn checkpoints_prefix(job: &JobId) -> String {
    format!("jobs/{job}/checkpoints/")
}
/// A checkpoint lives under its step and the claim generation that wrote it, so two
/// trainers that both believe they own the job never mix their files.
pub fn checkpoint_dir(job: &JobId, step: u64, generation: u32) -> String {
    format!("jobs/{job}/checkpoints/{step:010}-{generation:06}/")
}
pub fn checkpoint_adapter(job: &JobId, step: u64, generation: u32) -> String {
    format!(
        "{}adapter_model.safetensors",
        checkpoint_dir(job, step, generation)
    )
}
pub fn checkpoint_optimizer(job: &JobId, step: u64, generation: u32) -> String {
    format!(
        "{}optimizer.safetensors",
        checkpoint_dir(job, step, generation)
    )
}
pub fn checkpoint_manifest(job: &JobId, step: u64, generation: u32) -> String {
    format!("{}manifest.json", checkpoint_dir(job, step, generation))
}
/// The final adapter as one claim generation wrote it, before (and whether or not) it won
/// the commit.
pub fn staged_adapter_weights(job: &JobId, generation: u32) -> String {
    format!("jobs/{job}/staged/{generation:06}/adapter_model.safetensors")
}
pub fn staged_adapter_config(job: &JobId, generation: u32) -> String {
    format!("jobs/{job}/staged/{generation:06}/adapter_config.json")
}
/// Create-only: names the generation whose staged adapter is the job's adapter.
pub fn adapter_commit(job: &JobId) -> String {
    format!("jobs/{job}/adapter-commit.json")
}
pub fn adapter_dir(job: &JobId) -> String {
    format!("jobs/{job}/adapter/")
}
pub fn adapter_weights(job: &JobId) -> String {
    format!("jobs/{job}/adapter/adapter_model.safetensors")
}
pub fn adapter_config(job: &JobId) -> String {
    format!("jobs/{job}/adapter/adapter_config.json")
}

/// The chunk index of a `tasks/` or `failed/` key (`.../000042.jsonl` -> 42).
pub fn chunk_index_of(key: &str) -> Option<u32> {
    let file = key.rsplit('/').next()?;
    let stem = file.split('.').next()?;
    stem.parse().ok()
}
