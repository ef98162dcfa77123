//! lift's model engine: Llama/Qwen2 models written from differentiable candle ops, LoRA
//! adapters in the PEFT format, supervised fine-tuning and batched generation.

pub mod batcher;
pub mod bench;
pub mod config;
#[cfg(feature = "cuda")]
mod decode_graph;
pub mod decode_weight;
pub mod engine;
pub mod error;
pub mod fetch;
mod frozen;
mod fused;
mod fused_adamw;
pub mod generate;
#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
mod graph;
mod json_constraint;
pub mod loader;
pub mod lora;
pub mod model;
mod ops;
pub mod rerank;
mod sample;
pub mod score;
mod sft_batch;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenizer;
pub mod train;

pub use batcher::{Batcher, BatcherOptions};
pub use candle_core::{DType, Device};
pub use config::{Architecture, ModelConfig};
pub use engine::{
    cpu_threads, default_dtype, pick_device, DeviceChoice, Engine, ModelSource, DEFAULT_MODEL_ID,
};
pub use error::{EngineError, Result};
pub use generate::{
    FinishReason, GenerationOutput, GenerationRequest, OutputConstraint, SamplingParams,
};
pub use lora::{LoraAdapter, LoraConfig, PeftConfig, PeftFiles, Projection};
pub use rerank::{Candidate, ContrastPrompt, RankedReplies, RerankOptions};
pub use score::{ReplyScore, ScoreRequest};
pub use tokenizer::{ChatMessage, ChatTokenizer};
pub use train::{LrSchedule, SftExample, SftTrainer, StepStats, TrainerOptions};
