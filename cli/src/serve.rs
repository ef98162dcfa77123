//! `lift serve`: its options, and the process around the server of `lift-serve`
//! (`serve/src/lib.rs`): configuration, store, engine and the shutdown signal.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use lift_engine::BatcherOptions;
use lift_serve::{load_lora_modules, serve, AdapterSource, LoraModule, ServeOptions};
use lift_shared::auth::ServerSecurity;
use lift_shared::config::Config;

use lift_runtime::infra;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: LIFT_SERVE_ADDR, else 127.0.0.1:8000).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Base model (default: LIFT_MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// Job adapters kept in memory at once.
    #[arg(long, default_value_t = 4)]
    pub adapter_cache: usize,
    /// Most requests generated together in one engine call.
    #[arg(long, default_value_t = ServeOptions::default().batching.max_rows)]
    pub max_batch: usize,
    /// How long an idle engine waits for more requests to join a batch, in milliseconds.
    #[arg(long, default_value_t = ServeOptions::default().batching.window.as_millis() as u64)]
    pub batch_window_ms: u64,
    /// Completions admitted at once, waiting or generating; past it a request gets 429.
    #[arg(long, default_value_t = ServeOptions::default().max_admitted as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_admitted: u32,
    /// PEFT adapter directories to serve, as name=DIR (vLLM's option): a request whose model
    /// is NAME answers with DIR's adapter. Loaded at start; repeat the option or list several.
    #[arg(long, num_args = 1.., value_name = "NAME=DIR")]
    pub lora_modules: Vec<LoraModule>,
}

pub async fn run(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let security = ServerSecurity::from_config(&config)?;
    let store = infra::open_store(&config)?;
    let engine =
        infra::load_engine(&config, args.model.as_deref().unwrap_or(&config.model)).await?;
    let named = load_lora_modules(&engine, &args.lora_modules)?;
    let adapters = AdapterSource::new(store, args.adapter_cache).with_named(named);
    let options = ServeOptions {
        batching: BatcherOptions {
            max_rows: args.max_batch.max(1),
            window: Duration::from_millis(args.batch_window_ms),
        },
        max_admitted: args.max_admitted as usize,
    };
    let shutdown = infra::shutdown_signal();
    serve(
        args.addr.unwrap_or(config.serve_addr),
        engine,
        adapters,
        options,
        security,
        async move { shutdown.cancelled().await },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
