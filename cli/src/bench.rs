//! `lift bench`: engine speed as JSON lines (see docs/benchmarks.md for recorded runs).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use std::sync::Arc;

use lift_engine::bench::{bench_generate, bench_train, random_engine, TrainBenchOptions};
use lift_shared::config::Config;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// LoRA SFT steps on random weights of a real model shape.
    Train(TrainArgs),
    /// Generation throughput of a model (one sequence and batches).
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// smollm2-135m, qwen2.5-0.5b or llama3-8b.
    #[arg(long, default_value = "smollm2-135m")]
    pub shape: String,
    /// Examples per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// LoRA rank, on all seven projections.
    #[arg(long, default_value_t = 128)]
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 256.0)]
    pub alpha: f64,
    /// Steps measured.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps run first and not measured.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Replay each step as a CUDA graph (GPU only; `false` measures eager launches).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cuda_graphs: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// `default`, a .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = "default", conflicts_with = "shape")]
    pub model: String,
    /// Random weights of this shape instead of a model (smollm2-135m, qwen2.5-0.5b,
    /// llama3-8b): speed does not depend on the weights, and nothing needs downloading.
    #[arg(long)]
    pub shape: Option<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Tokens generated per sequence.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// 0 is greedy; the built-in question writer samples at 0.2.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Replay each decoding step as a CUDA graph (GPU only; `false` measures eager launches).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cuda_graphs: bool,
}

pub async fn run(config: Config, command: BenchCommand) -> anyhow::Result<ExitCode> {
    let device = lift_runtime::infra::device(&config);
    match command {
        BenchCommand::Train(a) => {
            let result = tokio::task::spawn_blocking(move || {
                let options = TrainBenchOptions {
                    shape: a.shape,
                    batch: a.batch,
                    seq: a.seq,
                    rank: a.rank,
                    alpha: a.alpha,
                    steps: a.steps,
                    warmup: a.warmup,
                    cuda_graphs: a.cuda_graphs,
                };
                bench_train(&options, &device)
            })
            .await??;
            println!("{}", serde_json::to_string(&result)?);
        }
        BenchCommand::Generate(a) => {
            anyhow::ensure!(
                a.temperature.is_finite() && a.temperature >= 0.0,
                "--temperature must be a number of at least 0 (0 is greedy), not {}",
                a.temperature
            );
            let engine = match a.shape {
                Some(shape) => Arc::new(random_engine(&shape, &device)?),
                None => lift_runtime::infra::load_engine(&config, &a.model).await?,
            };
            engine.set_decode_graphs(a.cuda_graphs);
            for batch in a.batches {
                let engine = engine.clone();
                let (new_tokens, temperature) = (a.new_tokens, a.temperature);
                let result = tokio::task::spawn_blocking(move || {
                    bench_generate(&engine, batch, new_tokens, temperature)
                })
                .await??;
                println!("{}", serde_json::to_string(&result)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
