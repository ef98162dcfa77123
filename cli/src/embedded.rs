//! `lift run`: its options, the job driven through the embedded runtime
//! (`lift_runtime::embedded`) like any client, and the answers printed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use lift_runtime::embedded::with_embedded;
use lift_runtime::infra;
use lift_shared::config::Config;

use crate::client_commands::job_exit_code;
use crate::job_args::JobArgs;
use crate::{ask, client};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Questions to ask the adapted model when the job is done (repeatable).
    #[arg(long = "ask")]
    pub questions: Vec<String>,
    /// Also answer the questions with the base model alone, for comparison.
    #[arg(long)]
    pub compare_base: bool,
    /// Serve the gRPC API here while running, so other clients can watch.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Print status updates as JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let request = args.job.to_request()?;
    let model = if request.base_model.is_empty() {
        config.model.clone()
    } else {
        request.base_model.clone()
    };
    let engine = infra::load_engine(&config, &model).await?;
    let store = infra::open_store(&config)?;
    let json = args.json;
    let status = with_embedded(
        &config,
        engine.clone(),
        store.clone(),
        args.listen,
        |addr| drive_job(addr, request, json),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    client::print_status(&status, args.json);
    if !args.json {
        println!("wall time  {elapsed:.1} s");
    }
    if status.state == lift_shared::proto::JobState::Succeeded as i32 && !args.questions.is_empty()
    {
        let job = ask::load_job_adapter(&store, &status.job_id).await?;
        let adapter = Arc::new(engine.load_adapter(&job.files)?);
        let title = job.title();
        let lifted =
            ask::answer(engine.clone(), Some(adapter), &title, &args.questions, 64).await?;
        let base = if args.compare_base {
            Some(ask::answer(engine.clone(), None, &title, &args.questions, 64).await?)
        } else {
            None
        };
        for (i, question) in args.questions.iter().enumerate() {
            println!("Q: {question}");
            println!("A (lift): {}", lifted[i]);
            if let Some(base) = &base {
                println!("A (base): {}", base[i]);
            }
        }
    }
    Ok(job_exit_code(&status))
}

async fn drive_job(
    addr: SocketAddr,
    request: lift_shared::proto::SubmitJobRequest,
    json: bool,
) -> anyhow::Result<lift_shared::proto::JobStatus> {
    let mut client =
        client::connect(&addr.to_string(), &client::ClientSettings::loopback()).await?;
    let response = client
        .submit_job(request)
        .await
        .map_err(client::explain)?
        .into_inner();
    if !json {
        println!("job {} submitted", response.job_id);
    }
    client::watch(&mut client, &response.job_id, json).await
}
