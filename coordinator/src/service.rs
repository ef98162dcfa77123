//! The gRPC `LiftService`: where jobs enter the system and where clients watch them.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lift_shared::auth::Tenant;
use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::messages::now_ms;
use lift_shared::proto;
use lift_shared::proto::lift_service_server::LiftService;
use lift_shared::proto_convert::spec_from_submit;
use lift_shared::spec::JobSpec;
use lift_shared::state::{JobState, JobStatus};
use lift_store::{layout, SubmitRequestRecord};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::tenant_of;
use crate::chunk::plan_chunks;
use crate::fanout;
use crate::jobs::{persist, Context, JobEntry};

const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_REQUEST_ID_CHARS: usize = 200;

enum Reserved {
    New(JobId),
    Existing(JobId),
}

/// `None` for an empty id (no deduplication asked for).
fn validate_request_id(request_id: &str) -> Result<Option<&str>, LiftError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@-".contains(c);
    if request_id.chars().count() > MAX_REQUEST_ID_CHARS || !request_id.chars().all(allowed) {
        return Err(LiftError::InvalidArgument(format!(
            "request_id must be 1 to {MAX_REQUEST_ID_CHARS} characters of A-Z a-z 0-9 . _ : / @ -"
        )));
    }
    Ok(Some(request_id))
}
const MAX_PAGE_SIZE: usize = 500;

pub struct LiftServiceImpl {
    ctx: Arc<Context>,
}

impl LiftServiceImpl {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    /// Runs a request that writes several records on a task of its own: tonic drops a
    /// handler whose client hangs up, and a submit cut off between storing the job and
    /// publishing its chunks would leave a job nobody works on.
    async fn detached<F, Fut, T>(&self, work: F) -> Result<T, LiftError>
    where
        F: FnOnce(LiftServiceImpl) -> Fut,
        Fut: std::future::Future<Output = Result<T, LiftError>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(work(LiftServiceImpl::new(self.ctx.clone())))
            .await
            .map_err(|e| LiftError::Internal(format!("request handler panicked: {e}")))?
    }

    /// The job, if `tenant` may see it.
    async fn entry(&self, tenant: &Tenant, job_id: &str) -> Result<Arc<JobEntry>, LiftError> {
        let job = JobId::parse(job_id)?;
        let entry = self
            .ctx
            .jobs
            .get_or_load(&self.ctx.store, &job)
            .await?
            .ok_or_else(|| LiftError::NotFound(format!("job {job} not found")))?;
        tenant.check_owns(&job, &entry.watchers.borrow().tenant)?;
        Ok(entry)
    }

    async fn submit(
        self,
        tenant: Tenant,
        mut request: proto::SubmitJobRequest,
    ) -> Result<JobStatus, LiftError> {
        let request_id = std::mem::take(&mut request.request_id);
        let request_id = validate_request_id(&request_id)?;
        let spec = spec_from_submit(request, &self.ctx.default_base_model)?;
        spec.validate(&self.ctx.limits)?;
        self.ctx.catalog.check(&spec.base_model).map_err(|reason| {
            LiftError::InvalidArgument(format!("base_model {:?}: {reason}", spec.base_model))
        })?;
        let job = match request_id {
            None => JobId::new(),
            Some(request_id) => match self.reserve_job_id(&tenant, request_id).await? {
                Reserved::New(job) => job,
                Reserved::Existing(job) => {
                    if let Some(status) = self.existing_job(&job).await? {
                        return Ok(status);
                    }
                    // The first request reserved the id but did not create the job (it crashed
                    // or is still at it): create it under the reserved id; the create-only spec
                    // write lets only one of them succeed.
                    job
                }
            },
        };
        match self.create_job(job.clone(), &tenant, spec).await {
            Err(LiftError::AlreadyExists(_)) => self.existing_job(&job).await?.ok_or_else(|| {
                LiftError::FailedPrecondition(format!(
                    "this request id was first used for job {job} with other options, which \
                         was never created; submit with a new request id"
                ))
            }),
            created => created,
        }
    }

    /// The job a request id reserved earlier, or a new id reserved for it now. Ids are per
    /// tenant: two tenants using the same id get two jobs.
    async fn reserve_job_id(
        &self,
        tenant: &Tenant,
        request_id: &str,
    ) -> Result<Reserved, LiftError> {
        use sha2::Digest;
        let scoped = match tenant {
            Tenant::Open => request_id.to_string(),
            Tenant::Named(name) => format!("{name}\0{request_id}"),
        };
        let key = layout::submit_request(&hex::encode(sha2::Sha256::digest(scoped)));
        let record = SubmitRequestRecord {
            request_id: request_id.to_string(),
            job_id: JobId::new(),
            at_ms: now_ms(),
        };
        if self.ctx.store.put_json_create(&key, &record).await? {
            return Ok(Reserved::New(record.job_id));
        }
        let existing: SubmitRequestRecord = self
            .ctx
            .store
            .get_json(&key)
            .await?
            .ok_or_else(|| LiftError::Unavailable(format!("{key} vanished; retry")))?;
        Ok(Reserved::Existing(existing.job_id))
    }

    async fn existing_job(&self, job: &JobId) -> Result<Option<JobStatus>, LiftError> {
        let Some(entry) = self.ctx.jobs.get_or_load(&self.ctx.store, job).await? else {
            return Ok(None);
        };
        let status = entry.record.lock().await.clone();
        Ok(Some(status))
    }

    async fn create_job(
        &self,
        job: JobId,
        tenant: &Tenant,
        spec: JobSpec,
    ) -> Result<JobStatus, LiftError> {
        let split = self.ctx.split.clone();
        let limits = self.ctx.limits.clone();
        // Splitting megabytes of text is CPU work; keep it off the async workers.
        let (spec, plan) = tokio::task::spawn_blocking(move || {
            let plan = plan_chunks(&spec, &split, &limits);
            (spec, plan)
        })
        .await
        .map_err(|e| LiftError::Internal(format!("sentence splitting panicked: {e}")))?;
        let plan = plan?;
        if plan.chunk_count == 0 {
            return Err(LiftError::InvalidArgument(
                "documents contain no sentences".to_string(),
            ));
        }
        let sentences = plan.sentence_count;
        let mut status = JobStatus::new(
            job.clone(),
            spec.base_model.clone(),
            sentences,
            plan.chunk_count,
            spec.training.epochs,
            self.ctx.failed_share_threshold,
            now_ms(),
        );
        status.tenant = tenant.name().to_string();
        status.trace = lift_shared::telemetry::trace_headers();
        self.store_new_job(&job, &spec, &status).await?;
        // Accepted from here on: if publishing fails, the lease watchdog publishes it later.
        let (entry, _publishing) = self.ctx.jobs.insert_new(status.clone());
        tracing::info!(job_id = %job, sentences, chunks = plan.chunk_count, planned_bytes = plan.planned_bytes, "job submitted");

        // The trainer goes first: it loads the base model while the first chunks synthesize.
        let assignment = fanout::train_assignment(&job, &spec, &status);
        let published = async {
            fanout::publish_train_assignment(self.ctx.broker.as_ref(), &assignment, &status.trace)
                .await?;
            fanout::publish_chunks(
                self.ctx.broker.as_ref(),
                plan.chunks(&job, &spec),
                &status.trace,
            )
            .await
        };
        published.await.map_err(|error| {
            LiftError::Unavailable(format!(
                "job {job} is accepted but not yet queued ({error}); it is queued once the broker is back (a retry with the same request id returns it)"
            ))
        })?;

        let mut record = entry.record.lock().await;
        record.chunks_published = true;
        persist(&self.ctx.store, &mut record).await?;
        entry.publish(&record);
        status.clone_from(&record);
        Ok(status)
    }

    async fn store_new_job(
        &self,
        job: &JobId,
        spec: &JobSpec,
        status: &JobStatus,
    ) -> Result<(), LiftError> {
        let store = &self.ctx.store;
        let already_exists = || LiftError::AlreadyExists(format!("job {job} already exists"));
        if !store.put_json_create(&layout::spec(job), spec).await? {
            // An earlier attempt with this request id wrote the spec and stopped before the
            // first record (a crash): the same job is finished here. Another spec under this
            // id is another job's.
            let stored: Option<JobSpec> = store.get_json(&layout::spec(job)).await?;
            if stored.as_ref() != Some(spec) {
                return Err(already_exists());
            }
        }
        // Create-only, so of two attempts racing to finish one job exactly one goes on to
        // queue it; the other answers with the winner's status.
        if !store
            .put_json_create(&layout::state(job, status.seq), status)
            .await?
        {
            return Err(already_exists());
        }
        Ok(())
    }

    /// The caller's jobs, newest first. A page holds `page_size` of them; other tenants'
    /// jobs are skipped, not counted.
    async fn list(
        &self,
        tenant: &Tenant,
        request: proto::ListJobsRequest,
    ) -> Result<proto::ListJobsResponse, LiftError> {
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(JobId::parse(&request.page_token).map_err(|_| {
                LiftError::InvalidArgument(format!(
                    "page_token {:?} is invalid",
                    request.page_token
                ))
            })?)
        };
        let mut ids = self.ctx.store.list_job_ids().await?;
        // UUIDv7 ids sort by creation time, so newest first is reverse id order.
        ids.reverse();
        let start = after.map_or(0, |token| ids.partition_point(|id| *id >= token));
        let mut jobs = Vec::new();
        let mut last_id = None;
        let mut scanned = start;
        for id in ids.iter().skip(start) {
            if jobs.len() == page_size {
                break;
            }
            scanned += 1;
            last_id = Some(id.clone());
            // A job whose first record is not written yet is mid-submit; skip it.
            if let Some(entry) = self.ctx.jobs.get_or_load(&self.ctx.store, id).await? {
                let status = entry.watchers.borrow();
                if tenant.owns(&status.tenant) {
                    jobs.push(proto::JobStatus::from(&*status));
                }
            }
        }
        let more = ids.len() > scanned;
        Ok(proto::ListJobsResponse {
            jobs,
            next_page_token: match (more, last_id) {
                (true, Some(id)) => id.to_string(),
                _ => String::new(),
            },
        })
    }

    async fn cancel(
        self,
        tenant: Tenant,
        request: proto::CancelJobRequest,
    ) -> Result<JobStatus, LiftError> {
        let entry = self.entry(&tenant, &request.job_id).await?;
        let mut record = entry.record.lock().await;
        if record.state.is_terminal() {
            return Err(LiftError::FailedPrecondition(format!(
                "job {} is already {}",
                record.job_id, record.state
            )));
        }
        let reason = if request.reason.trim().is_empty() {
            "cancelled by user".to_string()
        } else {
            request.reason
        };
        fanout::write_cancel_marker(&self.ctx.store, &record.job_id, &reason).await?;
        let mut cancelled = record.clone();
        cancelled.transition(JobState::Cancelled, now_ms());
        cancelled.error = Some(reason);
        persist(&self.ctx.store, &mut cancelled).await?;
        *record = cancelled;
        entry.publish(&record);
        tracing::info!(job_id = %record.job_id, "job cancelled");
        Ok(record.clone())
    }
}

/// The caller's trace context, when its gRPC metadata carries one.
fn trace_context_of_metadata(metadata: &tonic::metadata::MetadataMap) -> lift_broker::Headers {
    lift_shared::telemetry::TRACE_CONTEXT_HEADERS
        .into_iter()
        .filter_map(|name| {
            let value = metadata.get(name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl LiftService for LiftServiceImpl {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let span = tracing::info_span!("SubmitJob", tenant = tenant.name());
        lift_shared::telemetry::continue_trace(
            &span,
            &trace_context_of_metadata(request.metadata()),
        );
        let status = self
            .detached(|service| {
                service
                    .submit(tenant, request.into_inner())
                    .instrument(span)
            })
            .await?;
        Ok(Response::new(proto::SubmitJobResponse {
            job_id: status.job_id.to_string(),
            status: Some(proto::JobStatus::from(&status)),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::JobStatus>, Status> {
        let entry = self
            .entry(&tenant_of(&request), &request.get_ref().job_id)
            .await?;
        let status = proto::JobStatus::from(&*entry.watchers.borrow());
        Ok(Response::new(status))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let entry = self
            .entry(&tenant_of(&request), &request.get_ref().job_id)
            .await?;
        let receiver = entry.watchers.subscribe();
        let draining = self.ctx.draining.subscribe();
        // State: the receivers, and whether the last status sent was terminal. The first poll
        // sends the current status; later ones wait for a change or for the server to drain.
        let stream = futures::stream::unfold(
            (receiver, draining, true, false),
            |(mut receiver, draining, first, finished)| async move {
                if finished {
                    return None;
                }
                if !first {
                    tokio::select! {
                        changed = receiver.changed() => changed.ok()?,
                        () = crate::jobs::stopped(draining.clone()) => {
                            let status = Status::unavailable(
                                "the coordinator is shutting down; watch the job again",
                            );
                            return Some((Err(status), (receiver, draining, false, true)));
                        }
                    }
                }
                let status = receiver.borrow_and_update().clone();
                let terminal = status.state.is_terminal();
                Some((
                    Ok(proto::JobStatus::from(&status)),
                    (receiver, draining, false, terminal),
                ))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let tenant = tenant_of(&request);
        Ok(Response::new(
            self.list(&tenant, request.into_inner()).await?,
        ))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let tenant = tenant_of(&request);
        let status = self
            .detached(|service| service.cancel(tenant, request.into_inner()))
            .await?;
        Ok(Response::new(proto::CancelJobResponse {
            status: Some(proto::JobStatus::from(&status)),
        }))
    }
}
