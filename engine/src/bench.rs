//! Speed measurements on random weights of real model shapes (speed does not depend on the
//! weight values): LoRA SFT steps as `shared/bench/torch_peft_lora.py` runs them, and
//! generation throughput. Results are plain structs the CLI prints as JSON.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::engine::{default_dtype, Engine};
use crate::error::{EngineError, Result};
use crate::generate::{GenerationRequest, SamplingParams};
use crate::loader::random_model;
use crate::lora::LoraConfig;
use crate::testing::byte_tokenizer;
use crate::tokenizer::ChatMessage;
use crate::train::{SftBatch, SftTrainer, TrainerOptions};
use crate::ModelConfig;

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub bench: &'static str,
    pub shape: String,
    pub device: String,
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    pub steps: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub first_step_s: f64,
    pub load_s: f64,
    /// Where a step's time goes: forward + loss, backward, optimizer (clip + AdamW).
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub trainable_params: usize,
    pub peak_memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateBench {
    pub bench: &'static str,
    pub model: String,
    pub device: String,
    pub batch: usize,
    pub new_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

fn device_name(device: &Device) -> String {
    if device.is_cuda() {
        "cuda".into()
    } else {
        "cpu".into()
    }
}

/// Peak resident memory of this process (CPU runs), from /proc.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A random engine of a named shape (`smollm2-135m`, `qwen2.5-0.5b`, `llama3-8b`).
pub fn random_engine(shape: &str, device: &Device) -> Result<Engine> {
    let config = ModelConfig::named_shape(shape).ok_or_else(|| {
        EngineError::InvalidModel(format!(
            "unknown shape {shape} (smollm2-135m, qwen2.5-0.5b, llama3-8b)"
        ))
    })?;
    let tokenizer = byte_tokenizer(config.vocab_size);
    let model = random_model(config, 0, default_dtype(device), device)?;
    Ok(Engine::from_parts(
        model,
        tokenizer,
        format!("random-{shape}"),
    ))
}

/// Times `steps` LoRA SFT steps after `warmup` untimed ones; the second half of each
/// sequence carries loss, as in the PyTorch peer.
#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    shape: &str,
    batch: usize,
    seq: usize,
    rank: usize,
    alpha: f64,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<TrainBench> {
    let started = Instant::now();
    let engine = Arc::new(random_engine(shape, device)?);
    let adapter = engine.new_adapter(LoraConfig::new(rank, alpha, &[])?, 0)?;
    let trainable_params = adapter.vars().iter().map(|v| v.elem_count()).sum();
    let mut trainer = SftTrainer::new(
        engine.clone(),
        adapter,
        TrainerOptions {
            learning_rate: 5e-5,
            ..TrainerOptions::default()
        },
    )?;
    let vocab = engine.config().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    // The second half of every sequence is answer, as in the peer.
    let rows: Vec<u32> = (0..batch * seq)
        .filter(|i| i % seq >= seq / 2)
        .map(|i| i as u32)
        .collect();
    let targets: Vec<u32> = rows.iter().map(|_| rng.random_range(0..vocab)).collect();
    let answer_tokens = rows.len();
    let sft = SftBatch {
        inputs: Tensor::from_vec(ids, (batch, seq), device)?,
        answer_rows: Tensor::from_vec(rows, answer_tokens, device)?,
        answer_targets: Tensor::from_vec(targets, answer_tokens, device)?,
        answer_tokens,
    };
    device.synchronize()?;
    let load_s = started.elapsed().as_secs_f64();
    let first = Instant::now();
    trainer.step_batch(&sft)?;
    device.synchronize()?;
    let first_step_s = first.elapsed().as_secs_f64();
    for _ in 1..warmup {
        trainer.step_batch(&sft)?;
    }
    device.synchronize()?;
    let timed = Instant::now();
    for _ in 0..steps {
        trainer.step_batch(&sft)?;
    }
    device.synchronize()?;
    let seconds = timed.elapsed().as_secs_f64();
    let ms_per_step = seconds * 1000.0 / steps.max(1) as f64;
    let repeats = steps.clamp(1, 5);
    let time_ms = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        for _ in 0..repeats {
            f()?;
        }
        device.synchronize()?;
        Ok(started.elapsed().as_secs_f64() * 1000.0 / repeats as f64)
    };
    let forward_ms = time_ms(&|| trainer.loss(&sft).map(drop))?;
    let forward_backward_ms = time_ms(&|| {
        trainer.loss(&sft)?.backward()?;
        Ok(())
    })?;
    Ok(TrainBench {
        bench: "train",
        shape: shape.to_string(),
        device: device_name(device),
        batch,
        seq,
        rank,
        steps,
        ms_per_step,
        tokens_per_s: (batch * seq) as f64 / (ms_per_step / 1000.0),
        first_step_s,
        load_s,
        forward_ms,
        backward_ms: forward_backward_ms - forward_ms,
        optimizer_ms: ms_per_step - forward_backward_ms,
        trainable_params,
        peak_memory_bytes: if device.is_cpu() {
            peak_rss_bytes()
        } else {
            None
        },
    })
}

/// Generates `new_tokens` tokens for each of `batch` identical prompts, greedy, and reports
/// generated tokens per second (stopping early only on the model's own end token).
pub fn bench_generate(engine: &Engine, batch: usize, new_tokens: usize) -> Result<GenerateBench> {
    let request = GenerationRequest {
        messages: vec![ChatMessage::new(
            "user",
            "Write a long story about a lighthouse keeper and the sea.",
        )],
        prefill: String::new(),
        params: SamplingParams {
            max_tokens: new_tokens,
            ..SamplingParams::default()
        },
    };
    let requests = vec![request; batch];
    engine.generate(None, &requests[..1])?;
    let started = Instant::now();
    let outputs = engine.generate(None, &requests)?;
    engine.device().synchronize()?;
    let seconds = started.elapsed().as_secs_f64();
    let generated: usize = outputs.iter().map(|o| o.completion_tokens).sum();
    Ok(GenerateBench {
        bench: "generate",
        model: engine.model_id().to_string(),
        device: device_name(engine.device()),
        batch,
        new_tokens: generated,
        seconds,
        tokens_per_s: generated as f64 / seconds,
    })
}
