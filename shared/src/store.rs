//! The object store: the source of truth for inputs, job records, task files, checkpoints and
//! adapters. Writes that can race (records, task files, markers) are create-only, so at-least-
//! once deliveries never overwrite each other's results.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::LiftError;
use crate::ids::JobId;
use crate::state::JobStatus;

/// Every key lift writes, in one place (see docs/interfaces.md).
pub mod layout {
    use crate::ids::JobId;

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
    pub fn checkpoint_dir(job: &JobId, step: u64) -> String {
        format!("jobs/{job}/checkpoints/{step:010}/")
    }
    pub fn checkpoint_adapter(job: &JobId, step: u64) -> String {
        format!("jobs/{job}/checkpoints/{step:010}/adapter_model.safetensors")
    }
    pub fn checkpoint_optimizer(job: &JobId, step: u64) -> String {
        format!("jobs/{job}/checkpoints/{step:010}/optimizer.safetensors")
    }
    pub fn checkpoint_manifest(job: &JobId, step: u64) -> String {
        format!("jobs/{job}/checkpoints/{step:010}/manifest.json")
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
}

/// `jobs/<id>/heartbeat.json`, overwritten by the trainer that holds the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub trainer: String,
    pub at_ms: i64,
    pub step: u64,
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

/// How many old status records a write leaves behind; older ones are deleted so reading the
/// latest record stays one short listing, however long a job runs.
const KEPT_STATUS_RECORDS: u64 = 16;

/// Part size of multipart uploads (S3 needs at least 5 MiB per part but the last).
const MULTIPART_PART_BYTES: usize = 16 * 1024 * 1024;
const MULTIPART_CONCURRENCY: usize = 4;

#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

fn unavailable(action: &str, key: &str, error: impl std::fmt::Display) -> LiftError {
    LiftError::Unavailable(format!("failed to {action} {key}: {error}"))
}

fn store_path(key: &str) -> Result<Path, LiftError> {
    Path::parse(key).map_err(|e| LiftError::Internal(format!("invalid store key {key}: {e}")))
}

fn is_loopback_endpoint(endpoint: &str) -> bool {
    let host_and_port = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("");
    let host = host_and_port
        .rsplit_once(':')
        .map_or(host_and_port, |(host, _)| host);
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

impl Store {
    /// Opens a store by URL: a plain path or `file://path` (a local directory, created if
    /// missing), `memory://` (in-process, for tests and dry runs) or `s3://bucket/prefix`
    /// (credentials and region from the standard `AWS_*` variables; the endpoint from
    /// `LIFT_S3_ENDPOINT` or `AWS_ENDPOINT_URL`; plain http is allowed for loopback endpoints
    /// and wherever `AWS_ALLOW_HTTP=true`).
    pub fn open(url: &str) -> Result<Self, LiftError> {
        let inner: Arc<dyn ObjectStore> = if url.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            Self::open_s3(rest)?
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if dir.is_empty() {
                return Err(LiftError::InvalidArgument("store url is empty".to_string()));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable("create store directory", dir, e))?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| unavailable("open store directory", dir, e))?;
            Arc::new(local)
        };
        Ok(Self {
            inner,
            url: url.to_string(),
        })
    }

    fn open_s3(bucket_and_prefix: &str) -> Result<Arc<dyn ObjectStore>, LiftError> {
        let (bucket, prefix) = bucket_and_prefix
            .split_once('/')
            .unwrap_or((bucket_and_prefix, ""));
        if bucket.is_empty() {
            return Err(LiftError::InvalidArgument(
                "store url s3:// names no bucket".to_string(),
            ));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("LIFT_S3_ENDPOINT")
            .ok()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        if let Some(endpoint) = endpoint {
            if is_loopback_endpoint(&endpoint) {
                builder = builder.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder
            .build()
            .map_err(|e| unavailable("open s3 bucket", bucket, e))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(Arc::new(s3));
        }
        Ok(Arc::new(PrefixStore::new(s3, prefix)))
    }

    /// A store over any object_store implementation (tests wrap stores to inject faults).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: impl Into<String>) -> Self {
        Self {
            inner,
            url: url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Writes `key` only if it does not exist yet; returns whether this call created it.
    pub async fn put_create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, LiftError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from_bytes(bytes.into());
        match self
            .inner
            .put_opts(&store_path(key)?, payload, options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(unavailable("write", key, e)),
        }
    }

    pub async fn put_overwrite(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), LiftError> {
        let payload = PutPayload::from_bytes(bytes.into());
        self.inner
            .put(&store_path(key)?, payload)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("write", key, e))
    }

    /// Uploads a large object in parts (checkpoints, adapters) so no single request carries
    /// hundreds of megabytes; the object appears atomically when the upload completes.
    pub async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), LiftError> {
        let upload = self
            .inner
            .put_multipart(&store_path(key)?)
            .await
            .map_err(|e| unavailable("start upload of", key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_BYTES);
        let mut remaining = bytes;
        while !remaining.is_empty() {
            writer
                .wait_for_capacity(MULTIPART_CONCURRENCY)
                .await
                .map_err(|e| unavailable("upload part of", key, e))?;
            let part = remaining.split_to(remaining.len().min(MULTIPART_PART_BYTES));
            writer.put(part);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("complete upload of", key, e))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, LiftError> {
        match self.inner.get(&store_path(key)?).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|e| unavailable("read", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable("read", key, e)),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LiftError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LiftError::Internal(format!("failed to parse {key}: {e}")))
    }

    pub async fn put_json_create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, LiftError> {
        self.put_create(key, to_json(key, value)?).await
    }

    pub async fn put_json_overwrite<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), LiftError> {
        self.put_overwrite(key, to_json(key, value)?).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, LiftError> {
        match self.inner.head(&store_path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable("check", key, e)),
        }
    }

    /// Every key under `prefix` (recursively), relative to the store root, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, LiftError> {
        let path = store_path(prefix.trim_end_matches('/'))?;
        let mut keys: Vec<String> = self
            .inner
            .list(Some(&path))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| unavailable("list", prefix, e))?;
        keys.sort();
        Ok(keys)
    }

    pub async fn delete(&self, key: &str) -> Result<(), LiftError> {
        match self.inner.delete(&store_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable("delete", key, e)),
        }
    }

    /// Ids of every job in the store, sorted (UUIDv7 ids sort oldest first).
    pub async fn list_job_ids(&self) -> Result<Vec<JobId>, LiftError> {
        let listing = self
            .inner
            .list_with_delimiter(Some(&Path::from("jobs")))
            .await
            .map_err(|e| unavailable("list", layout::JOBS_PREFIX, e))?;
        let mut ids: Vec<JobId> = listing
            .common_prefixes
            .iter()
            .filter_map(|prefix| prefix.filename())
            .filter_map(|name| JobId::parse(name).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Stores a job record at `status.seq`, or at the next free sequence number if another
    /// writer took that one; returns the sequence number written (also inside the record).
    pub async fn write_status(&self, status: &JobStatus) -> Result<u64, LiftError> {
        let mut record = status.clone();
        loop {
            let key = layout::state(&record.job_id, record.seq);
            if self.put_json_create(&key, &record).await? {
                break;
            }
            record.seq += 1;
        }
        if let Some(old_seq) = record.seq.checked_sub(KEPT_STATUS_RECORDS) {
            // Best effort: a leftover record only costs a longer listing.
            if let Err(error) = self.delete(&layout::state(&record.job_id, old_seq)).await {
                tracing::debug!(job_id = %record.job_id, %error, "failed to prune old status record");
            }
        }
        Ok(record.seq)
    }

    /// The newest job record, or `None` for an unknown job.
    pub async fn read_latest_status(&self, job: &JobId) -> Result<Option<JobStatus>, LiftError> {
        let keys = self.list(&layout::state_prefix(job)).await?;
        // Keys are zero-padded, so the last one sorts highest.
        let Some(latest) = keys.last() else {
            return Ok(None);
        };
        self.get_json(latest).await
    }
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, LiftError> {
    serde_json::to_vec(value)
        .map_err(|e| LiftError::Internal(format!("failed to encode {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::JobState;

    fn job() -> JobId {
        JobId::parse("job-1").unwrap()
    }

    fn status(seq: u64) -> JobStatus {
        let mut status = JobStatus::new(job(), "default".into(), 8, 2, 1, 0.5, 10);
        status.seq = seq;
        status
    }

    #[test]
    fn layout_matches_the_documented_keys() {
        let id = job();
        assert_eq!(layout::spec(&id), "jobs/job-1/spec.json");
        assert_eq!(
            layout::state(&id, 7),
            "jobs/job-1/state/00000000000000000007.json"
        );
        assert_eq!(layout::tasks(&id, 3), "jobs/job-1/tasks/000003.jsonl");
        assert_eq!(layout::failed(&id, 3), "jobs/job-1/failed/000003.json");
        assert_eq!(layout::cancel(&id), "jobs/job-1/cancel.json");
        assert_eq!(layout::claim(&id, 2), "jobs/job-1/claims/000002.json");
        assert_eq!(layout::heartbeat(&id), "jobs/job-1/heartbeat.json");
        assert_eq!(
            layout::checkpoint_manifest(&id, 40),
            "jobs/job-1/checkpoints/0000000040/manifest.json"
        );
        assert_eq!(
            layout::adapter_config(&id),
            "jobs/job-1/adapter/adapter_config.json"
        );
        assert_eq!(
            layout::chunk_index_of("jobs/job-1/tasks/000042.jsonl"),
            Some(42)
        );
        assert_eq!(layout::chunk_index_of("jobs/job-1/tasks/x.jsonl"), None);
    }

    #[test]
    fn loopback_endpoints_are_recognised() {
        assert!(is_loopback_endpoint("http://127.0.0.1:5000"));
        assert!(is_loopback_endpoint("http://localhost:9000/"));
        assert!(is_loopback_endpoint("http://[::1]:9000"));
        assert!(!is_loopback_endpoint("https://s3.eu-west-1.amazonaws.com"));
    }

    async fn exercise(store: Store) {
        assert!(store.put_create("a/b.json", "one").await.unwrap());
        assert!(!store.put_create("a/b.json", "two").await.unwrap());
        assert_eq!(store.get("a/b.json").await.unwrap().unwrap(), "one");
        store.put_overwrite("a/b.json", "three").await.unwrap();
        assert_eq!(store.get("a/b.json").await.unwrap().unwrap(), "three");
        assert_eq!(store.get("a/missing").await.unwrap(), None);
        assert!(store.exists("a/b.json").await.unwrap());
        assert!(!store.exists("a/c.json").await.unwrap());
        store.put_create("a/c/d.json", "x").await.unwrap();
        assert_eq!(
            store.list("a/").await.unwrap(),
            vec!["a/b.json".to_string(), "a/c/d.json".to_string()]
        );
        assert!(store.list("nothing/").await.unwrap().is_empty());
        store.delete("a/b.json").await.unwrap();
        store.delete("a/b.json").await.unwrap();
        assert!(!store.exists("a/b.json").await.unwrap());

        let big = Bytes::from(vec![7u8; MULTIPART_PART_BYTES + 1234]);
        store.put_multipart("big/blob", big.clone()).await.unwrap();
        assert_eq!(store.get("big/blob").await.unwrap().unwrap(), big);
    }

    #[tokio::test]
    async fn memory_store_supports_every_operation() {
        exercise(Store::open("memory://").unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_supports_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        exercise(Store::open(&url).unwrap()).await;
        let plain = Store::open(dir.path().join("plain").to_str().unwrap()).unwrap();
        exercise(plain).await;
    }

    #[tokio::test]
    async fn status_records_are_versioned_and_latest_wins() {
        let store = Store::open("memory://").unwrap();
        assert_eq!(store.read_latest_status(&job()).await.unwrap(), None);
        assert_eq!(store.write_status(&status(0)).await.unwrap(), 0);
        let mut newer = status(1);
        newer.state = JobState::Running;
        assert_eq!(store.write_status(&newer).await.unwrap(), 1);
        // A stale writer reusing seq 1 lands on seq 2 instead of overwriting.
        let mut stale = status(1);
        stale.state = JobState::Cancelled;
        assert_eq!(store.write_status(&stale).await.unwrap(), 2);
        let latest = store.read_latest_status(&job()).await.unwrap().unwrap();
        assert_eq!(latest.seq, 2);
        assert_eq!(latest.state, JobState::Cancelled);
    }

    #[tokio::test]
    async fn old_status_records_are_pruned() {
        let store = Store::open("memory://").unwrap();
        for seq in 0..40 {
            store.write_status(&status(seq)).await.unwrap();
        }
        let keys = store.list(&layout::state_prefix(&job())).await.unwrap();
        assert_eq!(keys.len() as u64, KEPT_STATUS_RECORDS);
        let latest = store.read_latest_status(&job()).await.unwrap().unwrap();
        assert_eq!(latest.seq, 39);
    }

    #[tokio::test]
    async fn job_ids_are_listed_from_the_jobs_prefix() {
        let store = Store::open("memory://").unwrap();
        for id in ["b-job", "a-job"] {
            let id = JobId::parse(id).unwrap();
            store.put_create(&layout::spec(&id), "{}").await.unwrap();
            store
                .put_create(&layout::tasks(&id, 0), "{}")
                .await
                .unwrap();
        }
        let ids = store.list_job_ids().await.unwrap();
        let names: Vec<&str> = ids.iter().map(JobId::as_str).collect();
        assert_eq!(names, vec!["a-job", "b-job"]);
    }
}
