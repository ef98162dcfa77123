//! The object store: the source of truth for inputs, job records, task files, checkpoints and
//! adapters. Writes that can race (records, task files, markers) are create-only, so at-least-
//! once deliveries never overwrite each other's results.
//!
//! Over 600 lines: the store is the one owner of every key (`layout.rs` names them), so the
//! create-only writes, the claims and the adapter commit stay together; about 320 of the lines
//! are its tests.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::de::DeserializeOwned;
use serde::Serialize;

use lift_shared::error::{ErrorCode, LiftError, ServiceError};
use lift_shared::ids::JobId;
use lift_shared::state::JobStatus;

// The objects the store holds are part of the shared contract (`lift_shared::records`);
// re-exported so that a store user names them through one import.
pub use lift_shared::records::{
    AdapterCommit, CancelMarker, Claim, FailedChunkMarker, Heartbeat, SubmitRequestRecord,
};

pub mod layout;

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

/// A failed store operation, with the object store's own error as its cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed or could not be reached; retrying later may succeed.
    #[error("failed to {action} {key}")]
    Backend {
        action: &'static str,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A key lift built is not a valid store path: a bug.
    #[error("invalid store key {key}")]
    InvalidKey {
        key: String,
        #[source]
        source: object_store::path::Error,
    },
    /// A record that does not encode, or that lift wrote and cannot read back.
    #[error("failed to {action} {key}")]
    Json {
        action: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// Files that must come together do not (a published adapter without its weights).
    #[error("{0}")]
    Inconsistent(String),
}

impl ServiceError for StoreError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::Backend { .. } => ErrorCode::Unavailable,
            Self::InvalidKey { .. } | Self::Json { .. } | Self::Inconsistent(_) => {
                ErrorCode::Internal
            }
        }
    }
}

impl StoreError {
    /// The error and its causes, outermost first: what a log line or a gRPC message says.
    pub fn with_causes(&self) -> String {
        lift_shared::error::with_causes(self)
    }
}

impl From<StoreError> for LiftError {
    fn from(error: StoreError) -> Self {
        let message = error.with_causes();
        match error.error_code() {
            ErrorCode::Unavailable => LiftError::Unavailable(message),
            _ => LiftError::Internal(message),
        }
    }
}

fn unavailable(
    action: &'static str,
    key: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::Backend {
        action,
        key: key.to_string(),
        source: Box::new(error),
    }
}

fn store_path(key: &str) -> Result<Path, StoreError> {
    Path::parse(key).map_err(|source| StoreError::InvalidKey {
        key: key.to_string(),
        source,
    })
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

/// What opening a local store does when its directory is missing.
#[derive(Clone, Copy)]
enum LocalDir {
    Create,
    MustExist,
}

impl Store {
    /// Opens a store by URL: a plain path or `file://path` (a local directory, created if
    /// missing), `memory://` (in-process, for tests and dry runs) or `s3://bucket/prefix`
    /// (credentials and region from the standard `AWS_*` variables, read by object_store;
    /// `s3_endpoint` for a server other than AWS, `Config::s3_endpoint`; plain http is allowed
    /// for loopback endpoints and wherever `AWS_ALLOW_HTTP=true`).
    pub fn open(url: &str, s3_endpoint: Option<&str>) -> Result<Self, LiftError> {
        Self::open_with(url, s3_endpoint, LocalDir::Create)
    }

    /// Opens a store only to read what is in it (`lift ask`, `lift status` without a
    /// coordinator, `lift adapter export`): a local directory that does not exist is "not
    /// found", not created, so a command run from the wrong place leaves nothing behind.
    pub fn open_existing(url: &str, s3_endpoint: Option<&str>) -> Result<Self, LiftError> {
        Self::open_with(url, s3_endpoint, LocalDir::MustExist)
    }

    fn open_with(
        url: &str,
        s3_endpoint: Option<&str>,
        local_dir: LocalDir,
    ) -> Result<Self, LiftError> {
        let inner: Arc<dyn ObjectStore> = if url.starts_with("memory://") {
            Arc::new(InMemory::new())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            Self::open_s3(rest, s3_endpoint)?
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if dir.is_empty() {
                return Err(LiftError::InvalidArgument("store url is empty".to_string()));
            }
            match local_dir {
                LocalDir::Create => std::fs::create_dir_all(dir)
                    .map_err(|e| unavailable("create store directory", dir, e))?,
                LocalDir::MustExist if !std::path::Path::new(dir).is_dir() => {
                    return Err(LiftError::NotFound(format!(
                        "no store at {dir}: no job has been run with it (LIFT_STORE_URL names \
                         the store)"
                    )))
                }
                LocalDir::MustExist => {}
            }
            let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| unavailable("open store directory", dir, e))?;
            Arc::new(local)
        };
        Ok(Self {
            inner,
            url: url.to_string(),
        })
    }

    fn open_s3(
        bucket_and_prefix: &str,
        endpoint: Option<&str>,
    ) -> Result<Arc<dyn ObjectStore>, LiftError> {
        let (bucket, prefix) = bucket_and_prefix
            .split_once('/')
            .unwrap_or((bucket_and_prefix, ""));
        if bucket.is_empty() {
            return Err(LiftError::InvalidArgument(
                "store url s3:// names no bucket".to_string(),
            ));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) {
            if is_loopback_endpoint(endpoint) {
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

    /// Checks that the store refuses a second create-only write of one key. Claims, task
    /// files, commits and request ids all rest on it, and an S3-compatible server that ignores
    /// `If-None-Match: *` overwrites silently; such a store is refused at start.
    pub async fn verify_create_only(&self) -> Result<(), LiftError> {
        let key = format!("probes/create-only-{}.json", uuid::Uuid::now_v7());
        let first = self.put_create(&key, "first").await?;
        let second = self.put_create(&key, "second").await?;
        let kept = self.get(&key).await?;
        if let Err(error) = self.delete(&key).await {
            tracing::debug!(%key, error = %error.with_causes(), "failed to delete the create-only probe");
        }
        if first && !second && kept.as_deref() == Some(b"first".as_slice()) {
            return Ok(());
        }
        Err(LiftError::FailedPrecondition(format!(
            "the object store at {} does not honour create-only writes (a second write of {key} \
             was accepted): lift needs conditional puts (S3 If-None-Match); use a store that \
             supports them",
            self.url
        )))
    }

    /// Writes `key` only if it does not exist yet; returns whether this call created it.
    pub async fn put_create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool, StoreError> {
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

    pub async fn put_overwrite(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<(), StoreError> {
        let payload = PutPayload::from_bytes(bytes.into());
        self.inner
            .put(&store_path(key)?, payload)
            .await
            .map(|_| ())
            .map_err(|e| unavailable("write", key, e))
    }

    /// Uploads a large object in parts (checkpoints, adapters) so no single request carries
    /// hundreds of megabytes; the object appears atomically when the upload completes.
    pub async fn put_multipart(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
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

    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
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

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Json {
                action: "parse",
                key: key.to_string(),
                source,
            })
    }

    pub async fn put_json_create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        self.put_create(key, to_json(key, value)?).await
    }

    pub async fn put_json_overwrite<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.put_overwrite(key, to_json(key, value)?).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.inner.head(&store_path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable("check", key, e)),
        }
    }

    /// Every key under `prefix` (recursively), relative to the store root, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
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

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&store_path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable("delete", key, e)),
        }
    }

    /// Ids of every job in the store, sorted (UUIDv7 ids sort oldest first).
    pub async fn list_job_ids(&self) -> Result<Vec<JobId>, StoreError> {
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
    pub async fn write_status(&self, status: &JobStatus) -> Result<u64, StoreError> {
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
                tracing::debug!(job_id = %record.job_id, error = %error.with_causes(), "failed to prune old status record");
            }
        }
        Ok(record.seq)
    }

    /// The newest job record, or `None` for an unknown job.
    pub async fn read_latest_status(&self, job: &JobId) -> Result<Option<JobStatus>, StoreError> {
        let keys = self.list(&layout::state_prefix(job)).await?;
        // Keys are zero-padded, so the last one sorts highest.
        let Some(latest) = keys.last() else {
            return Ok(None);
        };
        self.get_json(latest).await
    }

    /// Stages a training run's final adapter under its claim generation and commits it as the
    /// job's adapter unless another run committed first; then publishes whichever commit
    /// holds under `adapter/`. Returns that commit: a caller whose generation differs lost.
    pub async fn commit_adapter(
        &self,
        job: &JobId,
        commit: &AdapterCommit,
        weights: Bytes,
        config: Bytes,
    ) -> Result<AdapterCommit, StoreError> {
        let generation = commit.generation;
        self.put_multipart(&layout::staged_adapter_weights(job, generation), weights)
            .await?;
        self.put_overwrite(&layout::staged_adapter_config(job, generation), config)
            .await?;
        let holding = if self
            .put_json_create(&layout::adapter_commit(job), commit)
            .await?
        {
            commit.clone()
        } else {
            self.adapter_commit(job).await?.ok_or_else(|| {
                StoreError::Inconsistent(format!("job {job}: the adapter commit vanished"))
            })?
        };
        self.publish_committed_adapter(job, &holding).await?;
        Ok(holding)
    }

    /// The newest claim generation of a job's training, `None` before the first claim. The
    /// newest one owns the job.
    pub async fn newest_claim(&self, job: &JobId) -> Result<Option<u32>, StoreError> {
        let claims = self.list(&layout::claims_prefix(job)).await?;
        Ok(claims
            .iter()
            .filter_map(|key| layout::chunk_index_of(key))
            .max())
    }

    /// Where the job's published adapter lives, as users address it.
    pub fn adapter_uri(&self, job: &JobId) -> String {
        format!(
            "{}/{}",
            self.url().trim_end_matches('/'),
            layout::adapter_dir(job)
        )
    }

    /// The job's published adapter, `None` until it is whole: the configuration is written
    /// last (`publish_committed_adapter`), so it is read first. The one reader of `adapter/`
    /// (`lift ask`, `lift adapter export`, `lift serve`).
    pub async fn published_adapter(
        &self,
        job: &JobId,
    ) -> Result<Option<PublishedAdapter>, StoreError> {
        let Some(config) = self.get(&layout::adapter_config(job)).await? else {
            return Ok(None);
        };
        let weights = self
            .get(&layout::adapter_weights(job))
            .await?
            .ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "job {job}: the published adapter has a configuration but no weights"
                ))
            })?;
        Ok(Some(PublishedAdapter { weights, config }))
    }

    pub async fn adapter_commit(&self, job: &JobId) -> Result<Option<AdapterCommit>, StoreError> {
        self.get_json(&layout::adapter_commit(job)).await
    }

    /// Copies the committed run's staged adapter to `adapter/`, configuration last (readers
    /// take its presence to mean the adapter is whole). Whoever finds a commit whose adapter
    /// is not published yet (its trainer died in between) may call this: every copy is of
    /// the same bytes.
    pub async fn publish_committed_adapter(
        &self,
        job: &JobId,
        commit: &AdapterCommit,
    ) -> Result<(), StoreError> {
        if self.exists(&layout::adapter_config(job)).await? {
            return Ok(());
        }
        let staged = |key: String| async move {
            self.get(&key).await?.ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "job {job}: committed adapter file {key} is missing"
                ))
            })
        };
        let weights = staged(layout::staged_adapter_weights(job, commit.generation)).await?;
        let config = staged(layout::staged_adapter_config(job, commit.generation)).await?;
        self.put_multipart(&layout::adapter_weights(job), weights)
            .await?;
        self.put_overwrite(&layout::adapter_config(job), config)
            .await
    }
}

/// A job's finished adapter in PEFT's files: `adapter_model.safetensors` and
/// `adapter_config.json`.
#[derive(Debug, Clone)]
pub struct PublishedAdapter {
    pub weights: Bytes,
    pub config: Bytes,
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Json {
        action: "encode",
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lift_shared::state::JobState;

    fn job() -> JobId {
        JobId::parse("job-1").unwrap()
    }

    fn status(seq: u64) -> JobStatus {
        let mut status = JobStatus::new(job(), "default".into(), 8, 2, 1, 0.5, 10);
        status.seq = seq;
        status
    }

    #[test]
    fn a_store_opened_to_read_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let url = missing.display().to_string();
        let error = Store::open_existing(&url, None).expect_err("not found");
        assert!(matches!(error, LiftError::NotFound(_)), "{error}");
        assert!(!missing.exists(), "reading created the store");
        Store::open(&url, None).unwrap();
        assert!(missing.is_dir());
        Store::open_existing(&url, None).unwrap();
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
            layout::checkpoint_manifest(&id, 40, 2),
            "jobs/job-1/checkpoints/0000000040-000002/manifest.json"
        );
        assert_eq!(
            layout::staged_adapter_config(&id, 2),
            "jobs/job-1/staged/000002/adapter_config.json"
        );
        assert_eq!(
            layout::adapter_commit(&id),
            "jobs/job-1/adapter-commit.json"
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
        exercise(Store::open("memory://", None).unwrap()).await;
    }

    #[tokio::test]
    async fn local_store_supports_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        exercise(Store::open(&url, None).unwrap()).await;
        let plain = Store::open(dir.path().join("plain").to_str().unwrap(), None).unwrap();
        exercise(plain).await;
    }

    #[tokio::test]
    async fn status_records_are_versioned_and_latest_wins() {
        let store = Store::open("memory://", None).unwrap();
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
        let store = Store::open("memory://", None).unwrap();
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
        let store = Store::open("memory://", None).unwrap();
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

    /// An S3-compatible server that ignores `If-None-Match: *`: every write overwrites.
    #[derive(Debug, Default)]
    struct IgnoresCreateOnly(InMemory);

    impl std::fmt::Display for IgnoresCreateOnly {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresCreateOnly")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresCreateOnly {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            mut opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            opts.mode = PutMode::Overwrite;
            self.0.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.0.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.0.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.0.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.0.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_failed_operation_keeps_its_cause() {
        let store = Store::open("memory://", None).unwrap();
        store.put_create("jobs/x/spec.json", "{oops").await.unwrap();
        let error = store
            .get_json::<serde_json::Value>("jobs/x/spec.json")
            .await
            .unwrap_err();
        assert_eq!(error.error_code(), ErrorCode::Internal);
        let cause = std::error::Error::source(&error).expect("a cause");
        assert!(cause.downcast_ref::<serde_json::Error>().is_some());
        assert!(matches!(
            LiftError::from(error),
            LiftError::Internal(message) if message.starts_with("failed to parse jobs/x/spec.json: ")
        ));

        // A local store whose directory became a file: the backend's error, retryable.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let local = Store::open(root.to_str().unwrap(), None).unwrap();
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, "not a directory").unwrap();
        let error = local
            .put_overwrite("jobs/x/spec.json", "{}")
            .await
            .unwrap_err();
        assert_eq!(error.error_code(), ErrorCode::Unavailable);
        let cause = std::error::Error::source(&error).expect("a cause");
        assert!(
            cause.downcast_ref::<object_store::Error>().is_some(),
            "{cause:?}"
        );
        let message = error.with_causes();
        assert!(
            message.starts_with("failed to write jobs/x/spec.json: "),
            "{message}"
        );
        assert!(matches!(LiftError::from(error), LiftError::Unavailable(_)));
    }

    #[tokio::test]
    async fn a_store_that_ignores_create_only_writes_is_refused() {
        let honest = Store::open("memory://", None).unwrap();
        honest.verify_create_only().await.unwrap();
        assert!(honest.list("probes/").await.unwrap().is_empty());
        let lax = Store::from_object_store(Arc::new(IgnoresCreateOnly::default()), "s3://lax");
        match lax.verify_create_only().await {
            Err(LiftError::FailedPrecondition(message)) => {
                assert!(message.contains("create-only"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_first_commit_holds_and_is_published() {
        let store = Store::open("memory://", None).unwrap();
        let id = job();
        let commit = |generation| AdapterCommit {
            generation,
            trainer: format!("t{generation}"),
            steps: 10,
            final_loss: 0.5,
            at_ms: 1,
        };
        assert!(store.published_adapter(&id).await.unwrap().is_none());
        let won = store
            .commit_adapter(&id, &commit(1), "w1".into(), "c1".into())
            .await
            .unwrap();
        assert_eq!(won.generation, 1);
        let lost = store
            .commit_adapter(&id, &commit(0), "w0".into(), "c0".into())
            .await
            .unwrap();
        assert_eq!(lost.generation, 1, "a later commit loses");
        assert_eq!(
            store
                .get(&layout::adapter_weights(&id))
                .await
                .unwrap()
                .unwrap(),
            "w1".as_bytes()
        );
        assert_eq!(
            store
                .get(&layout::adapter_config(&id))
                .await
                .unwrap()
                .unwrap(),
            "c1".as_bytes()
        );
        let published = store.published_adapter(&id).await.unwrap().unwrap();
        assert_eq!(
            (&published.weights[..], &published.config[..]),
            (&b"w1"[..], &b"c1"[..])
        );
    }
}
