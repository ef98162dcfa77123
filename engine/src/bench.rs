//! Speed measurements on random weights of real model shapes (speed does not depend on the weight
//! values): LoRA SFT steps as the PyTorch + PEFT peer (`bench/torch_peft_lora.py` of the shared
//! folder beside the checkout) runs them, and generation throughput. Results are plain structs the
//! CLI prints as JSON.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::engine::{default_dtype, Engine};
use crate::error::{EngineError, Result};
use crate::generate::{GenerationRequest, SamplingParams};
use crate::loader::random_model;
use crate::lora::LoraConfig;
use crate::tokenizer::{ChatMessage, ChatTokenizer};
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
    pub cuda_graphs: bool,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub first_step_s: f64,
    /// Wall clock when the first step had finished, for measuring from process start.
    pub first_step_done_unix_s: f64,
    pub load_s: f64,
    /// Where a step's time goes: forward + loss, backward, optimizer (clip + AdamW).
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub trainable_params: usize,
    /// Loss of the last timed step: eager and graph runs of one shape must agree.
    pub last_loss: f32,
    /// CPU: peak resident set. GPU: peak bytes allocated from the device's memory pool plus
    /// the peak of CUDA graph allocations (like `torch.cuda.max_memory_allocated`, it leaves
    /// out the CUDA context and library workspaces).
    pub peak_memory_bytes: Option<u64>,
}

/// What `bench_train` measures.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    pub shape: String,
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    pub alpha: f64,
    pub steps: usize,
    pub warmup: usize,
    pub cuda_graphs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateBench {
    pub bench: &'static str,
    pub model: String,
    pub device: String,
    pub batch: usize,
    pub temperature: f64,
    /// GPU: decoding steps replayed as CUDA graphs.
    pub cuda_graphs: bool,
    pub new_tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// The first row's reply, to hold runs of one model to the same text (greedy).
    pub first_reply: String,
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
    let tokenizer = ChatTokenizer::byte_level(config.vocab_size);
    let model = random_model(config, 0, default_dtype(device), device)?;
    Ok(Engine::from_parts(
        model,
        tokenizer,
        format!("random-{shape}"),
    ))
}

/// Times `steps` LoRA SFT steps after `warmup` untimed ones; the second half of each
/// sequence carries loss, as in the PyTorch peer.
pub fn bench_train(options: &TrainBenchOptions, device: &Device) -> Result<TrainBench> {
    let TrainBenchOptions {
        batch,
        seq,
        rank,
        steps,
        warmup,
        ..
    } = *options;
    let started = Instant::now();
    let engine = Arc::new(random_engine(&options.shape, device)?);
    let adapter = engine.new_adapter(LoraConfig::new(rank, options.alpha, &[])?, 0)?;
    let trainable_params = adapter.vars().iter().map(|v| v.elem_count()).sum();
    let mut trainer = SftTrainer::new(
        engine.clone(),
        adapter,
        TrainerOptions {
            learning_rate: 5e-5,
            cuda_graphs: options.cuda_graphs,
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
    let sft = SftBatch::new(ids, (batch, seq), rows, targets, None, device)?;
    device.synchronize()?;
    let load_s = started.elapsed().as_secs_f64();
    let first = Instant::now();
    trainer.step_batch(&sft)?;
    device.synchronize()?;
    let first_step_s = first.elapsed().as_secs_f64();
    let first_step_done_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for _ in 1..warmup {
        trainer.step_batch(&sft)?;
    }
    device.synchronize()?;
    // Like the peer, the peak is that of the timed steps (weights included).
    reset_peak_memory(device);
    let timed = Instant::now();
    let mut last_loss = f32::NAN;
    for _ in 0..steps {
        last_loss = trainer.step_batch(&sft)?.loss;
    }
    device.synchronize()?;
    let seconds = timed.elapsed().as_secs_f64();
    let ms_per_step = seconds * 1000.0 / steps.max(1) as f64;
    let peak_memory_bytes = peak_memory_bytes(device);
    let repeats = steps.clamp(1, 5);
    let time_ms = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let started = Instant::now();
        for _ in 0..repeats {
            f()?;
        }
        device.synchronize()?;
        Ok(started.elapsed().as_secs_f64() * 1000.0 / repeats as f64)
    };
    let forward_ms = time_ms(&mut || trainer.loss(&sft).map(drop))?;
    let forward_backward_ms = time_ms(&mut || {
        trainer.loss(&sft)?.backward()?;
        Ok(())
    })?;
    Ok(TrainBench {
        bench: "train",
        shape: options.shape.clone(),
        device: device_name(device),
        batch,
        seq,
        rank,
        steps,
        cuda_graphs: options.cuda_graphs && device.is_cuda(),
        ms_per_step,
        tokens_per_s: (batch * seq) as f64 / (ms_per_step / 1000.0),
        first_step_s,
        first_step_done_unix_s,
        load_s,
        forward_ms,
        backward_ms: forward_backward_ms - forward_ms,
        optimizer_ms: ms_per_step - forward_backward_ms,
        trainable_params,
        last_loss,
        peak_memory_bytes,
    })
}

fn peak_memory_bytes(device: &Device) -> Option<u64> {
    match device {
        Device::Cpu => peak_rss_bytes(),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => gpu_memory::peak_allocated_bytes(cuda),
        _ => None,
    }
}

fn reset_peak_memory(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        gpu_memory::reset_peak(cuda);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// The high-water marks of the device's default memory pool (where candle allocates) and
/// of CUDA graph memory.
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod gpu_memory {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::CudaDevice;

    const POOL_PEAK: sys::CUmemPool_attribute =
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    const GRAPH_PEAK: sys::CUgraphMem_attribute =
        sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH;

    fn pool(device: &CudaDevice) -> Option<(sys::CUdevice, sys::CUmemoryPool)> {
        let cu_device = device.cuda_stream().context().cu_device();
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: a query into an out-parameter of the right type.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device) }
            .result()
            .ok()?;
        Some((cu_device, pool))
    }

    pub fn peak_allocated_bytes(device: &CudaDevice) -> Option<u64> {
        let (cu_device, pool) = pool(device)?;
        let (mut pool_peak, mut graph_peak) = (0u64, 0u64);
        // SAFETY: both attributes are documented as cuuint64_t, written into u64s.
        unsafe {
            sys::cuMemPoolGetAttribute(pool, POOL_PEAK, (&mut pool_peak as *mut u64).cast())
                .result()
                .ok()?;
            sys::cuDeviceGetGraphMemAttribute(
                cu_device,
                GRAPH_PEAK,
                (&mut graph_peak as *mut u64).cast(),
            )
            .result()
            .ok()?;
        }
        Some(pool_peak + graph_peak)
    }

    /// Setting a high-water mark to zero restarts it from the current use.
    pub fn reset_peak(device: &CudaDevice) {
        let Some((cu_device, pool)) = pool(device) else {
            return;
        };
        let mut zero = 0u64;
        // SAFETY: as above; the driver only reads the value.
        unsafe {
            let _ = sys::cuMemPoolSetAttribute(pool, POOL_PEAK, (&mut zero as *mut u64).cast());
            let _ = sys::cuDeviceSetGraphMemAttribute(
                cu_device,
                GRAPH_PEAK,
                (&mut zero as *mut u64).cast(),
            );
        }
    }
}

/// Generates `new_tokens` tokens for each of `batch` identical prompts, greedy (temperature
/// 0) or sampled with a seed per row, and reports generated tokens per second (stopping early
/// only on the model's own end token).
pub fn bench_generate(
    engine: &Engine,
    batch: usize,
    new_tokens: usize,
    temperature: f64,
) -> Result<GenerateBench> {
    let request = GenerationRequest {
        messages: vec![ChatMessage::new(
            "user",
            "Write a long story about a lighthouse keeper and the sea.",
        )],
        prefill: String::new(),
        params: SamplingParams {
            max_tokens: new_tokens,
            temperature,
            ..SamplingParams::default()
        },
    };
    let requests: Vec<GenerationRequest> = (0..batch as u64)
        .map(|seed| {
            let mut request = request.clone();
            request.params.seed = seed;
            request
        })
        .collect();
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
        temperature,
        cuda_graphs: engine.device().is_cuda() && engine.decode_graphs(),
        new_tokens: generated,
        seconds,
        tokens_per_s: generated as f64 / seconds,
        first_reply: outputs.first().map(|o| o.text.clone()).unwrap_or_default(),
    })
}
