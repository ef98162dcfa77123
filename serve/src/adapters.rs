//! The adapters the server answers with: named adapter directories given at start
//! (`--lora-modules name=DIR`, as vLLM takes them) and jobs' adapters from the store
//! (`jobs/<id>/adapter/`), the most recently used few of those kept loaded.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use lift_engine::{Engine, EngineError, LoraAdapter, PeftFiles};
use lift_shared::auth::Tenant;
use lift_shared::ids::JobId;
use lift_store::{layout, Store};
use tokio::sync::OnceCell;

use super::error::ServeError;

/// `--lora-modules name=DIR`: a PEFT adapter directory served under `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub dir: PathBuf,
}

impl std::str::FromStr for LoraModule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((name, dir)) = text.split_once('=') else {
            return Err(format!("{text:?} is not name=DIR"));
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{name:?} is not a model name (non-empty, no spaces)"
            ));
        }
        if dir.is_empty() {
            return Err(format!("{text:?} names no directory"));
        }
        Ok(Self {
            name: name.to_string(),
            dir: PathBuf::from(dir),
        })
    }
}

/// Loads every `--lora-modules` adapter, so that a wrong directory fails the start, not a
/// request: each must be a PEFT directory that fits the served model, under a name of its own.
pub fn load_lora_modules(
    engine: &Engine,
    modules: &[LoraModule],
) -> anyhow::Result<HashMap<String, Arc<LoraAdapter>>> {
    let mut loaded = HashMap::new();
    for module in modules {
        if module.name == engine.model_id() {
            anyhow::bail!(
                "--lora-modules {}: the name is the served model's own; choose another",
                module.name
            );
        }
        let files = PeftFiles::read_dir(&module.dir).with_context(|| {
            format!(
                "--lora-modules {}: cannot read a PEFT adapter from {}",
                module.name,
                module.dir.display()
            )
        })?;
        let adapter = engine.load_adapter(&files).with_context(|| {
            format!(
                "--lora-modules {}: the adapter in {} does not fit the served model",
                module.name,
                module.dir.display()
            )
        })?;
        if loaded
            .insert(module.name.clone(), Arc::new(adapter))
            .is_some()
        {
            anyhow::bail!("--lora-modules names {} twice", module.name);
        }
        tracing::info!(name = %module.name, dir = %module.dir.display(), "adapter loaded");
    }
    Ok(loaded)
}

type AdapterCell = Arc<OnceCell<Arc<LoraAdapter>>>;

/// Where a request's adapter comes from.
pub struct AdapterSource {
    store: Store,
    /// `--lora-modules`: open to every caller, as the operator chose to serve them.
    named: HashMap<String, Arc<LoraAdapter>>,
    capacity: usize,
    /// Least recently used first. A cell per job, so concurrent first requests load it once.
    cache: Mutex<VecDeque<(JobId, AdapterCell)>>,
}

impl AdapterSource {
    pub fn new(store: Store, capacity: usize) -> Self {
        Self {
            store,
            named: HashMap::new(),
            capacity: capacity.max(1),
            cache: Mutex::new(VecDeque::new()),
        }
    }

    pub fn with_named(mut self, named: HashMap<String, Arc<LoraAdapter>>) -> Self {
        self.named = named;
        self
    }

    /// The names of the `--lora-modules` adapters, sorted.
    pub(super) fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.named.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The adapter a request's `model` names: a `--lora-modules` name, else a job id.
    pub(super) async fn resolve(
        &self,
        engine: &Arc<Engine>,
        tenant: &Tenant,
        model: &str,
    ) -> Result<Arc<LoraAdapter>, ServeError> {
        if let Some(adapter) = self.named.get(model) {
            return Ok(adapter.clone());
        }
        let job = JobId::parse(model).map_err(|_| ServeError::ModelNotFound(model.to_string()))?;
        if !self.may_use(tenant, &job).await? {
            return Err(ServeError::PermissionDenied(format!(
                "job {job} belongs to another tenant"
            )));
        }
        self.adapter(engine, &job).await
    }

    /// The caller's jobs whose final adapter is in the store.
    pub(super) async fn jobs_with_adapters(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<JobId>, ServeError> {
        let mut jobs = Vec::new();
        for job in self.store.list_job_ids().await.map_err(ServeError::store)? {
            let key = layout::adapter_config(&job);
            if self.store.exists(&key).await.map_err(ServeError::store)?
                && self.may_use(tenant, &job).await?
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Whether `tenant` may use the job's adapter: its own jobs only, once tokens are on.
    async fn may_use(&self, tenant: &Tenant, job: &JobId) -> Result<bool, ServeError> {
        if *tenant == Tenant::Open {
            return Ok(true);
        }
        let status = self
            .store
            .read_latest_status(job)
            .await
            .map_err(ServeError::store)?
            .ok_or_else(|| ServeError::ModelNotFound(job.to_string()))?;
        Ok(tenant.owns(&status.tenant))
    }

    async fn adapter(
        &self,
        engine: &Arc<Engine>,
        job: &JobId,
    ) -> Result<Arc<LoraAdapter>, ServeError> {
        let cell = self.cell(job);
        let loaded = cell
            .get_or_try_init(|| self.load(engine.clone(), job.clone()))
            .await
            .cloned();
        if loaded.is_err() {
            // Not cached: the job may finish (or the store come back) before the next request.
            self.forget(job, &cell);
        }
        loaded
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VecDeque<(JobId, AdapterCell)>> {
        // Each critical section is a lookup and a push or remove; a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cell(&self, job: &JobId) -> AdapterCell {
        let mut cache = self.lock_cache();
        let cell = match cache.iter().position(|(cached, _)| cached == job) {
            Some(position) => cache.remove(position).map(|(_, cell)| cell),
            None => None,
        }
        .unwrap_or_default();
        cache.push_back((job.clone(), cell.clone()));
        while cache.len() > self.capacity {
            cache.pop_front();
        }
        cell
    }

    fn forget(&self, job: &JobId, cell: &AdapterCell) {
        self.lock_cache()
            .retain(|(cached, cached_cell)| !(cached == job && Arc::ptr_eq(cached_cell, cell)));
    }

    async fn load(&self, engine: Arc<Engine>, job: JobId) -> Result<Arc<LoraAdapter>, ServeError> {
        let Some(adapter) = self
            .store
            .published_adapter(&job)
            .await
            .map_err(ServeError::store)?
        else {
            return Err(ServeError::ModelNotFound(job.to_string()));
        };
        let files = PeftFiles {
            safetensors: adapter.weights.to_vec(),
            config_json: adapter.config.to_vec(),
        };
        tracing::info!(job_id = %job, bytes = files.safetensors.len(), "loading adapter");
        // Building the adapter's tensors is CPU work (and a device upload).
        let adapter = tokio::task::spawn_blocking(move || engine.load_adapter(&files))
            .await
            .map_err(|error| ServeError::Internal(format!("adapter loading task failed: {error}")))?
            .map_err(|error| match error {
                EngineError::InvalidAdapter(reason) => ServeError::BadRequest(format!(
                    "the adapter of job {job} does not fit the served model: {reason}"
                )),
                other => ServeError::Internal(format!(
                    "failed to load the adapter of job {job}: {other}"
                )),
            })?;
        Ok(Arc::new(adapter))
    }
}
