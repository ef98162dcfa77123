//! `lift run`: coordinator, synthesis worker and trainer in one process, over the in-process
//! broker and a local store; the client side watches over gRPC like any other client.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use lift_coordinator::{serve_grpc_on, Coordinator, CoordinatorOptions};
use lift_engine::Engine;
use lift_shared::auth::ServerSecurity;
use lift_shared::broker::memory::InProcessBroker;
use lift_shared::broker::Broker;
use lift_shared::config::Config;
use lift_shared::store::Store;
use lift_worker_train::{run_train_worker, RunOptions, TrainWorkerConfig};
use tokio::net::TcpListener;

use crate::client_commands::job_exit_code;
use crate::job_args::JobArgs;
use crate::roles::{build_generator, local_model_catalog, spawn_synth_worker};
use crate::{ask, client, infra};

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

/// Runs `work` against lift in this process (coordinator, synthesis worker and trainer over
/// the in-process broker, gRPC on `listen` or a free loopback port), then stops it all.
pub async fn with_embedded<T, Work>(
    config: &Config,
    engine: Arc<Engine>,
    store: Store,
    listen: Option<SocketAddr>,
    work: impl FnOnce(SocketAddr) -> Work,
) -> anyhow::Result<T>
where
    Work: Future<Output = anyhow::Result<T>>,
{
    let broker: Arc<dyn Broker> = Arc::new(InProcessBroker::new(config.delivery_limit));
    let coordinator = Coordinator::start(
        CoordinatorOptions::from_config(config),
        store.clone(),
        broker.clone(),
        local_model_catalog(),
    )
    .await?;
    let shutdown = infra::shutdown_signal();
    let generator = build_generator(config, Some(engine.clone()))?;
    let synth = spawn_synth_worker(
        config,
        broker.clone(),
        store.clone(),
        generator,
        shutdown.clone(),
    );
    let trainer = tokio::spawn(run_train_worker(
        broker.clone(),
        store.clone(),
        engine,
        TrainWorkerConfig {
            trainer_id: infra::process_id("trainer"),
            lease: std::time::Duration::from_secs(config.trainer_lease_secs),
            unserved_model_timeout: std::time::Duration::from_secs(
                config.unserved_model_timeout_secs,
            ),
            run: RunOptions::default(),
            exit_when_idle: None,
        },
        shutdown.clone(),
    ));
    let listener =
        TcpListener::bind(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
    let addr = listener.local_addr()?;
    let server_stop = shutdown.clone();
    // The client is this process, on loopback: no tokens, no TLS.
    let security = ServerSecurity::open();
    let server = serve_grpc_on(listener, &coordinator, &security, async move {
        server_stop.cancelled().await
    });
    let client_side = async {
        let result = work(addr).await;
        shutdown.cancel();
        result
    };
    let (served, outcome) = tokio::join!(server, client_side);
    served?;
    let _ = synth.await;
    let _ = trainer.await;
    coordinator.shutdown().await;
    outcome
}

pub async fn drive_job(
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
