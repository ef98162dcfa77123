//! Subcommands that talk to a coordinator over gRPC, and `lift ask`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use lift_runtime::infra;
use lift_shared::config::Config;
use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::proto;
use lift_store::Store;

use crate::ask;
use crate::client::{self, explain};
use crate::exit::{exit_for, Exit};
use crate::job_args::JobArgs;

#[derive(Debug, Args)]
pub struct Connection {
    /// Coordinator address (default: LIFT_GRPC_ADDR or 127.0.0.1:50051).
    #[arg(long)]
    pub addr: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bearer token for a coordinator that wants one (default: LIFT_TOKEN).
    #[arg(long)]
    pub token: Option<String>,
}

impl Connection {
    pub fn settings(&self, config: &Config) -> anyhow::Result<client::ClientSettings> {
        Ok(client::ClientSettings {
            token: self
                .token
                .clone()
                .or_else(|| config.client_token.expose().map(str::to_owned)),
            tls: lift_shared::tls::ClientTls::from_config(config)?,
        })
    }

    pub async fn client(&self, config: &Config) -> anyhow::Result<client::Client> {
        let addr = self.addr.as_deref().unwrap_or(&config.grpc_addr);
        client::connect(addr, &self.settings(config)?).await
    }

    /// The coordinator, or, when none answers at the configured address (`lift run` jobs on
    /// a laptop have none once they end) and no `--addr` was given, the store it would read.
    async fn client_or_store(&self, config: &Config) -> anyhow::Result<Source> {
        match self.client(config).await {
            Ok(client) => Ok(Source::Coordinator(client)),
            Err(error) if self.addr.is_none() && exit_for(&error) == Exit::Unavailable => {
                let store = infra::open_existing_store(config)?;
                eprintln!(
                    "lift: no coordinator at {}; reading the store {}",
                    config.grpc_addr,
                    store.url()
                );
                Ok(Source::Store(store))
            }
            Err(error) => Err(error),
        }
    }
}

/// Where `lift status` and `lift jobs` read jobs from.
enum Source {
    Coordinator(client::Client),
    Store(Store),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub connection: Connection,
    /// Follow the job until it ends.
    #[arg(long)]
    pub watch: bool,
    /// Idempotency key: submitting again with the same key returns the first job instead of
    /// creating another (safe retries from scripts and Kubernetes Jobs).
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobRef {
    /// The job's id, as `lift submit` or `lift run` printed it.
    pub job_id: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Most jobs listed.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job's id.
    pub job_id: String,
    /// Why, kept in the job's status.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The job whose adapter answers; it must have succeeded.
    pub job_id: String,
    /// Asked with no document in the prompt.
    pub question: String,
    /// Answer with the base model alone (for comparison).
    #[arg(long)]
    pub without_adapter: bool,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Print `{"job_id", "question", "answer", "adapter"}` as JSON instead of the answer alone.
    #[arg(long)]
    pub json: bool,
}

/// Exit status for a finished job: success, or `JobFailed` for failed and cancelled.
pub fn job_exit_code(status: &proto::JobStatus) -> ExitCode {
    if status.state == proto::JobState::Succeeded as i32 {
        Exit::Success.into()
    } else {
        Exit::JobFailed.into()
    }
}

pub async fn submit(config: Config, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut request = args.job.to_request()?;
    request.request_id = args.request_id.clone().unwrap_or_default();
    let mut client = args.connection.client(&config).await?;
    let response = client
        .submit_job(request)
        .await
        .map_err(explain)?
        .into_inner();
    if args.connection.json {
        println!("{}", serde_json::json!({"job_id": response.job_id}));
    } else {
        println!("{}", response.job_id);
    }
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    let status = client::watch(&mut client, &response.job_id, args.connection.json).await?;
    if !args.connection.json {
        client::print_status(&status, false);
    }
    Ok(job_exit_code(&status))
}

pub async fn watch(config: Config, args: JobRef) -> anyhow::Result<ExitCode> {
    let mut client = args.connection.client(&config).await?;
    let status = client::watch(&mut client, &args.job_id, args.connection.json).await?;
    if !args.connection.json {
        client::print_status(&status, false);
    }
    Ok(job_exit_code(&status))
}

pub async fn status(config: Config, args: JobRef) -> anyhow::Result<ExitCode> {
    let status = match args.connection.client_or_store(&config).await? {
        Source::Coordinator(mut client) => client
            .get_job(proto::GetJobRequest {
                job_id: args.job_id,
            })
            .await
            .map_err(explain)?
            .into_inner(),
        Source::Store(store) => {
            let job = parse_job_id(&args.job_id)?;
            let status = store
                .read_latest_status(&job)
                .await?
                .ok_or_else(|| not_in_store(&job, &store))?;
            proto::JobStatus::from(&status)
        }
    };
    client::print_status(&status, args.connection.json);
    Ok(ExitCode::SUCCESS)
}

pub fn parse_job_id(job: &str) -> Result<JobId, LiftError> {
    JobId::parse(job)
        .map_err(|e| LiftError::InvalidArgument(format!("invalid job id {job:?}: {e}")))
}

/// The error for a job the store does not know.
pub fn not_in_store(job: &JobId, store: &Store) -> LiftError {
    LiftError::NotFound(format!("job {job} not found in the store {}", store.url()))
}

/// The newest `limit` jobs of a store (job ids are time-ordered UUIDv7s).
async fn jobs_in_store(store: &Store, limit: u32) -> anyhow::Result<Vec<proto::JobStatus>> {
    let mut ids = store.list_job_ids().await?;
    ids.sort();
    let mut jobs = Vec::new();
    for job in ids.iter().rev().take(limit as usize) {
        if let Some(status) = store.read_latest_status(job).await? {
            jobs.push(proto::JobStatus::from(&status));
        }
    }
    Ok(jobs)
}

pub async fn jobs(config: Config, args: JobsArgs) -> anyhow::Result<ExitCode> {
    let jobs = match args.connection.client_or_store(&config).await? {
        Source::Coordinator(mut client) => {
            client
                .list_jobs(proto::ListJobsRequest {
                    page_size: args.limit,
                    page_token: String::new(),
                })
                .await
                .map_err(explain)?
                .into_inner()
                .jobs
        }
        Source::Store(store) => jobs_in_store(&store, args.limit).await?,
    };
    for job in &jobs {
        if args.connection.json {
            println!("{}", client::status_json(job));
        } else {
            let loss = job
                .last_loss
                .map(|l| format!("{l:.3}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{}  {:<9}  chunks {}/{}  epoch {}/{}  loss {loss}",
                job.job_id,
                client::state_name(job.state),
                job.chunks_synthesized,
                job.chunks_total,
                job.epoch,
                job.epochs_total
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(config: Config, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.connection.client(&config).await?;
    let response = client
        .cancel_job(proto::CancelJobRequest {
            job_id: args.job_id,
            reason: args.reason,
        })
        .await
        .map_err(explain)?
        .into_inner();
    if let Some(status) = response.status {
        client::print_status(&status, args.connection.json);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ask(config: Config, args: AskArgs) -> anyhow::Result<ExitCode> {
    let store = infra::open_existing_store(&config)?;
    let job = ask::load_job_adapter(&store, &args.job_id).await?;
    let engine = infra::load_engine(&config, &job.spec.base_model).await?;
    let adapter = if args.without_adapter {
        None
    } else {
        Some(Arc::new(engine.load_adapter(&job.files)?))
    };
    let title = job.title();
    let with_adapter = adapter.is_some();
    let answers = ask::answer(
        engine,
        adapter,
        &title,
        std::slice::from_ref(&args.question),
        args.max_tokens,
    )
    .await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "job_id": args.job_id,
                "question": args.question,
                "answer": answers[0],
                "adapter": with_adapter,
            })
        );
    } else {
        println!("{}", answers[0]);
    }
    Ok(ExitCode::SUCCESS)
}
