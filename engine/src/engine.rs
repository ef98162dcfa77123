//! The loaded base model with its tokenizer: what generation and training run on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use candle_core::{DType, Device};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::fetch;
use crate::json_constraint::JsonVocab;
use crate::loader;
use crate::lora::{LoraAdapter, LoraConfig, PeftFiles};
use crate::model::Model;
use crate::tokenizer::ChatTokenizer;

/// Model id of the default model, as the Hugging Face hub and vLLM name it.
pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// SmolLM2-135M-Instruct from the model cache (`lift model fetch`).
    Default,
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSource {
    /// Whether `reference` names the default model: empty, `default` or its hub id.
    pub fn names_default(reference: &str) -> bool {
        let reference = reference.trim();
        reference.is_empty() || reference == "default" || reference == DEFAULT_MODEL_ID
    }

    /// `default`, a `.gguf` file, or a directory with `config.json`.
    pub fn parse(reference: &str) -> Result<Self> {
        let reference = reference.trim();
        if Self::names_default(reference) {
            return Ok(Self::Default);
        }
        let path = Path::new(reference);
        if reference.ends_with(".gguf") {
            if !path.is_file() {
                return Err(EngineError::ModelMissing {
                    path: path.to_path_buf(),
                });
            }
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if path.join("config.json").is_file() {
            return Ok(Self::HfDir(path.to_path_buf()));
        }
        Err(EngineError::InvalidModel(format!(
            "unknown model `{reference}`: expected `default`, a .gguf file or a Hugging Face model directory with config.json"
        )))
    }

    /// The id adapters record as their base model (`base_model_name_or_path`), which vLLM
    /// matches against the model it serves: for a Hugging Face directory its hub id where one
    /// is known (see `hub_id`), else the path.
    pub fn model_id(&self) -> String {
        match self {
            Self::Default => DEFAULT_MODEL_ID.to_string(),
            Self::HfDir(path) => hub_id(path).unwrap_or_else(|| path.display().to_string()),
            Self::Gguf(path) => path.display().to_string(),
        }
    }
}

/// The hub id of a model directory: `_name_or_path` in its config.json when that is an id
/// and not a local path, else `org/name` from a hub cache path
/// (`.../models--org--name/snapshots/<revision>`).
fn hub_id(dir: &Path) -> Option<String> {
    let named = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|config| config.get("_name_or_path")?.as_str().map(str::to_string))
        .filter(|name| looks_like_hub_id(name));
    named.or_else(|| {
        dir.ancestors()
            .filter_map(|a| a.file_name()?.to_str()?.strip_prefix("models--"))
            .map(|cached| cached.replacen("--", "/", 1))
            .find(|name| looks_like_hub_id(name))
    })
}

/// `org/name` or `name` of hub characters, not a path.
fn looks_like_hub_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Where the engine may run; the process configuration fills it (`LIFT_DEVICE`, `LIFT_TF32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceChoice {
    /// Stay on the CPU even in a CUDA build with a GPU present.
    pub cpu_only: bool,
    /// TF32 for the GPU's f32 matmuls (see `gpu.rs`).
    pub tf32: bool,
}

impl Default for DeviceChoice {
    fn default() -> Self {
        Self {
            cpu_only: false,
            tf32: true,
        }
    }
}

/// The threads candle's CPU backend uses when `RAYON_NUM_THREADS` does not say: the physical
/// cores (or, on Linux, the cores that a `CANDLE_CPU_MASK` or a big/little layout prefers).
pub fn cpu_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// CPU unless the `cuda` feature is on, a GPU is present and `choice` allows it.
pub fn pick_device(choice: DeviceChoice) -> Device {
    if choice.cpu_only || !candle_core::utils::cuda_is_available() {
        return Device::Cpu;
    }
    gpu_device(choice.tf32).unwrap_or(Device::Cpu)
}

#[cfg(feature = "cuda")]
fn gpu_device(tf32: bool) -> candle_core::Result<Device> {
    crate::gpu::device(tf32)
}

#[cfg(not(feature = "cuda"))]
fn gpu_device(_tf32: bool) -> candle_core::Result<Device> {
    Ok(Device::Cpu)
}

/// Base weights are bf16 on a GPU and f32 on CPU (where bf16 matmuls are slow).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: ChatTokenizer,
    model_id: String,
    json_vocab: OnceLock<JsonVocab>,
    /// Turns on the device's one stream (`gpu.rs`). While a training step is captured into a
    /// CUDA graph, every kernel any thread launches on that stream is recorded into the graph
    /// (and replayed at each later step, reading buffers long freed), and a copy back to the
    /// host breaks the capture. Generation and training hold a shared turn; a capture holds
    /// the stream alone.
    stream_turns: RwLock<()>,
    /// On a GPU, a generation's decoding steps replay one CUDA graph (`decode_graph.rs`).
    decode_graphs: AtomicBool,
    /// Trainers alive on this engine (`TrainerPresence`).
    trainers: AtomicUsize,
}

/// Counts a trainer for as long as it lives. Decoding is captured into graphs only while no
/// trainer lives: a capture records whatever any thread queues on the device's one stream,
/// and a trainer queues batch uploads, loss reads and frees outside the stream turns, which
/// broke captures (`CUDA_ERROR_INVALID_VALUE`) when generation and training overlapped.
pub(crate) struct TrainerPresence(Arc<Engine>);

impl TrainerPresence {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        engine.trainers.fetch_add(1, Ordering::SeqCst);
        Self(engine)
    }
}

impl Drop for TrainerPresence {
    fn drop(&mut self) {
        self.0.trainers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Engine {
    /// Loads `source`; the default model comes from the model cache `model_dir`. On the CPU
    /// generation then decodes from 8-bit copies of the weights (`Model::quantize_for_decoding`).
    pub fn load(source: &ModelSource, model_dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_decoding(source, model_dir, device, true)
    }

    /// `load`, with the 8-bit decoding copies only when `eight_bit_decoding` (the process
    /// configuration's `LIFT_CPU_DECODE`).
    pub fn load_with_decoding(
        source: &ModelSource,
        model_dir: &Path,
        device: &Device,
        eight_bit_decoding: bool,
    ) -> Result<Self> {
        let dtype = default_dtype(device);
        let (mut model, tokenizer) = match source {
            ModelSource::Default => {
                let path = fetch::default_model_path(model_dir);
                fetch::verify_default_model(&path)?;
                loader::load_gguf(&path, dtype, device)?
            }
            ModelSource::Gguf(path) => loader::load_gguf(path, dtype, device)?,
            ModelSource::HfDir(dir) => loader::load_hf_dir(dir, dtype, device)?,
        };
        if eight_bit_decoding {
            model.quantize_for_decoding()?;
        }
        Ok(Self::from_parts(model, tokenizer, source.model_id()))
    }

    pub fn from_parts(model: Model, tokenizer: ChatTokenizer, model_id: String) -> Self {
        Self {
            model,
            tokenizer,
            model_id,
            json_vocab: OnceLock::new(),
            stream_turns: RwLock::new(()),
            decode_graphs: AtomicBool::new(true),
            trainers: AtomicUsize::new(0),
        }
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    pub fn device(&self) -> &Device {
        self.model.device()
    }

    pub fn new_adapter(&self, config: LoraConfig, seed: u64) -> Result<LoraAdapter> {
        let _turn = self.shared_stream_turn();
        LoraAdapter::new(self.config(), config, &self.model_id, seed, self.device())
    }

    pub fn load_adapter(&self, files: &PeftFiles) -> Result<LoraAdapter> {
        let _turn = self.shared_stream_turn();
        LoraAdapter::from_peft_files(files, self.config(), self.device())
    }

    /// Held while launching work on the device's stream that may overlap another thread's.
    pub(crate) fn shared_stream_turn(&self) -> RwLockReadGuard<'_, ()> {
        self.stream_turns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Held while capturing a CUDA graph: no other thread launches work meanwhile.
    #[cfg(feature = "cuda")]
    pub(crate) fn exclusive_stream_turn(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.stream_turns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// GPU only: whether decoding steps are replayed as CUDA graphs (the default); off,
    /// every kernel is launched on its own, which `lift bench generate --cuda-graphs false`
    /// measures.
    pub fn set_decode_graphs(&self, on: bool) {
        self.decode_graphs.store(on, Ordering::Relaxed);
    }

    pub fn decode_graphs(&self) -> bool {
        self.decode_graphs.load(Ordering::Relaxed)
    }

    /// Whether a generation may capture its decoding steps now (see `TrainerPresence`).
    #[cfg(feature = "cuda")]
    pub(crate) fn may_capture_decoding(&self) -> bool {
        self.decode_graphs() && self.trainers.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn json_vocab(&self) -> Result<&JsonVocab> {
        if let Some(vocab) = self.json_vocab.get() {
            return Ok(vocab);
        }
        let vocab = JsonVocab::build(&self.tokenizer, self.model.config.vocab_size)?;
        Ok(self.json_vocab.get_or_init(|| vocab))
    }
}

#[cfg(test)]
mod tests {
    use super::ModelSource;

    fn dir_with_config(dir: &std::path::Path, config: serde_json::Value) -> ModelSource {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        ModelSource::parse(dir.to_str().unwrap()).unwrap()
    }

    #[test]
    fn a_model_directory_is_named_by_its_hub_id_where_one_is_known() {
        let root = tempfile::tempdir().unwrap();
        let named = dir_with_config(
            &root.path().join("local"),
            serde_json::json!({"_name_or_path": "meta-llama/Llama-3.2-1B-Instruct"}),
        );
        assert_eq!(named.model_id(), "meta-llama/Llama-3.2-1B-Instruct");
        let cached = root
            .path()
            .join("hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/7ae557604adf67be");
        let cached = dir_with_config(&cached, serde_json::json!({"_name_or_path": "/tmp/x"}));
        assert_eq!(cached.model_id(), "Qwen/Qwen2.5-0.5B-Instruct");
        let plain = root.path().join("plain");
        let source = dir_with_config(&plain, serde_json::json!({}));
        assert_eq!(source.model_id(), plain.display().to_string());
    }
}
