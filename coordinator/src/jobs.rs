//! The coordinator's view of its jobs: a cache of the latest status records, one watch
//! channel per job for WatchJob streams, and the one way to persist a record. The store holds
//! the truth; everything here can be rebuilt from it (see `recovery`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lift_broker::Broker;
use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::spec::{Limits, ModelCatalog};
use lift_shared::state::JobStatus;
use lift_store::Store;
use tokio::sync::watch;

use crate::split::SplitOptions;

/// Everything the coordinator's tasks and handlers share.
pub(crate) struct Context {
    pub store: Store,
    pub broker: Arc<dyn Broker>,
    pub catalog: Arc<dyn ModelCatalog>,
    pub jobs: JobRegistry,
    pub limits: Limits,
    pub split: SplitOptions,
    pub default_base_model: String,
    pub failed_share_threshold: f64,
    pub trainer_lease: std::time::Duration,
    /// Set when the gRPC server starts its graceful shutdown: open `WatchJob` streams end
    /// then, or the server would wait for them forever.
    pub draining: watch::Sender<bool>,
}

/// One cached job. `record` is the authoritative in-memory status (changes are serialized by
/// its lock); `watchers` carries every change to WatchJob streams.
pub(crate) struct JobEntry {
    pub record: tokio::sync::Mutex<JobStatus>,
    pub watchers: watch::Sender<JobStatus>,
    /// Held while the job's work is being published (at submit, or again by the lease
    /// watchdog for a job accepted while the broker was unreachable), so two publishers never
    /// race on one job.
    pub publishing: Arc<tokio::sync::Mutex<()>>,
}

impl JobEntry {
    fn new(status: JobStatus) -> Self {
        Self {
            watchers: watch::channel(status.clone()).0,
            record: tokio::sync::Mutex::new(status),
            publishing: Arc::default(),
        }
    }

    /// Shows the record to watchers (before it is durable: watchers want it live).
    pub fn publish(&self, status: &JobStatus) {
        self.watchers.send_replace(status.clone());
    }
}

#[derive(Default)]
pub(crate) struct JobRegistry {
    entries: Mutex<HashMap<JobId, Arc<JobEntry>>>,
}

impl JobRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<JobEntry>>> {
        // Critical sections are single map operations; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Caches `status` unless the job is cached already; returns the cached entry.
    pub fn insert(&self, status: JobStatus) -> Arc<JobEntry> {
        self.lock()
            .entry(status.job_id.clone())
            .or_insert_with(|| Arc::new(JobEntry::new(status)))
            .clone()
    }

    /// Caches a new job with its publishing lock already held by the caller, so nothing else
    /// publishes its work in between.
    pub fn insert_new(
        &self,
        status: JobStatus,
    ) -> (Arc<JobEntry>, tokio::sync::OwnedMutexGuard<()>) {
        let entry = Arc::new(JobEntry::new(status));
        let publishing = entry
            .publishing
            .clone()
            .try_lock_owned()
            .expect("a new entry's lock is free");
        self.lock()
            .insert(entry.watchers.borrow().job_id.clone(), entry.clone());
        (entry, publishing)
    }

    pub fn cached(&self, job: &JobId) -> Option<Arc<JobEntry>> {
        self.lock().get(job).cloned()
    }

    /// The cached entry, or the latest record from the store (then cached); `None` for a job
    /// the store does not know.
    pub async fn get_or_load(
        &self,
        store: &Store,
        job: &JobId,
    ) -> Result<Option<Arc<JobEntry>>, LiftError> {
        if let Some(entry) = self.cached(job) {
            return Ok(Some(entry));
        }
        let Some(status) = store.read_latest_status(job).await? else {
            return Ok(None);
        };
        Ok(Some(self.insert(status)))
    }

    pub fn all(&self) -> Vec<Arc<JobEntry>> {
        self.lock().values().cloned().collect()
    }

    /// Drops finished jobs nobody watches, so the cache holds the live jobs only; a later
    /// request reloads them from the store.
    pub fn evict_finished(&self) {
        self.lock().retain(|_, entry| {
            let finished = entry.watchers.borrow().state.is_terminal();
            !(finished && entry.watchers.receiver_count() == 0)
        });
    }
}

/// Stores `status` as the next record version and remembers the version written.
pub(crate) async fn persist(store: &Store, status: &mut JobStatus) -> Result<(), LiftError> {
    let mut next = status.clone();
    next.seq += 1;
    status.seq = store.write_status(&next).await?;
    Ok(())
}

/// The job's adapter is committed: publishes it if its trainer did not get to, records the
/// job as succeeded and stores the record. Used where a commit's report may have been lost
/// (the lease watchdog, recovery).
pub(crate) async fn apply_adapter_commit(
    store: &Store,
    entry: &JobEntry,
    record: &mut JobStatus,
    commit: &lift_store::AdapterCommit,
) -> Result<(), LiftError> {
    let job = record.job_id.clone();
    store.publish_committed_adapter(&job, commit).await?;
    let adapter_uri = store.adapter_uri(&job);
    if record.apply_adapter_commit(commit, adapter_uri, lift_shared::messages::now_ms()) {
        tracing::info!(job_id = %job, generation = commit.generation, "the adapter is committed; job succeeded");
        persist(store, record).await?;
    }
    entry.publish(record);
    Ok(())
}

/// Resolves once the coordinator is told to stop (or its handle is gone).
pub(crate) async fn stopped(mut shutdown: watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, inside this future.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
