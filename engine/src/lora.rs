//! LoRA adapters: `y = W x + (alpha / r) * B (A x)`, A kaiming-uniform, B zero, so a fresh
//! adapter leaves the base model unchanged. Variables stay f32 whatever the base dtype
//! (AdamW moments live in the variable's dtype). Files follow the PEFT layout that HF PEFT
//! and vLLM load.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result as CandleResult, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{io_error, EngineError, Result};

pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    fn block_name(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.module_name() == name)
            .ok_or_else(|| {
                EngineError::InvalidAdapter(format!(
                    "unknown target module `{name}` (expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
                ))
            })
    }

    /// PEFT tensor name prefix, e.g. `base_model.model.model.layers.3.self_attn.q_proj`.
    pub fn peft_prefix(self, layer: usize) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}",
            self.block_name(),
            self.module_name()
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Projection>,
}

impl LoraConfig {
    pub fn new(rank: usize, alpha: f64, target_modules: &[String]) -> Result<Self> {
        if rank == 0 {
            return Err(EngineError::InvalidAdapter(
                "rank must be at least 1".into(),
            ));
        }
        let targets = if target_modules.is_empty() {
            Projection::ALL.to_vec()
        } else {
            target_modules
                .iter()
                .map(|m| Projection::parse(m))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Self {
            rank,
            alpha,
            targets,
        })
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`
    pub a: Var,
    /// `[out, r]`
    pub b: Var,
}

/// The `adapter_config.json` HF PEFT writes for a LoRA on a causal LM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeftConfig {
    pub peft_type: String,
    pub task_type: String,
    pub base_model_name_or_path: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    pub bias: String,
    pub lora_dropout: f64,
    pub fan_in_fan_out: bool,
    pub modules_to_save: Option<Vec<String>>,
    pub use_dora: bool,
    pub use_rslora: bool,
    #[serde(default)]
    pub inference_mode: bool,
}

/// An adapter as the two files of a PEFT directory, for the object store.
#[derive(Debug, Clone)]
pub struct PeftFiles {
    pub safetensors: Vec<u8>,
    pub config_json: Vec<u8>,
}

impl PeftFiles {
    /// The two files of a PEFT adapter directory (`save_pretrained`'s, or `lift adapter export`'s).
    pub fn read_dir(dir: &Path) -> Result<Self> {
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        let config = dir.join(ADAPTER_CONFIG_FILE);
        Ok(Self {
            safetensors: std::fs::read(&weights).map_err(io_error(&weights))?,
            config_json: std::fs::read(&config).map_err(io_error(&config))?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// The base model id written into `adapter_config.json`.
    pub base_model: String,
    layers: Vec<HashMap<Projection, LoraPair>>,
}

impl LoraAdapter {
    /// A fresh adapter: A kaiming-uniform (as PEFT: bound 1/sqrt(in)), B zero.
    pub fn new(
        model: &ModelConfig,
        config: LoraConfig,
        base_model: &str,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_layers);
        for _ in 0..model.num_layers {
            let mut pairs = HashMap::new();
            for &projection in &config.targets {
                let (fan_in, fan_out) = projection_shape(model, projection);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * fan_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, fan_in), device)?)?;
                let b = Var::zeros((fan_out, config.rank), DType::F32, device)?;
                pairs.insert(projection, LoraPair { a, b });
            }
            layers.push(pairs);
        }
        Ok(Self {
            config,
            base_model: base_model.to_string(),
            layers,
        })
    }

    /// The pair trained on `projection` of `layer`, if the adapter has one there.
    pub fn pair(&self, layer: usize, projection: Projection) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|l| l.get(&projection))
    }

    /// The LoRA term for `x` `[.., in]` in f32, or None when the projection carries no
    /// adapter. The scale applies to the rank-sized intermediate, the smallest tensor.
    pub fn delta(
        &self,
        layer: usize,
        projection: Projection,
        x: &Tensor,
    ) -> CandleResult<Option<Tensor>> {
        let Some(pair) = self.pair(layer, projection) else {
            return Ok(None);
        };
        let mut dims = x.dims().to_vec();
        let width = dims.pop().unwrap_or(0);
        let rows = dims.iter().product::<usize>();
        let low_rank = (x.reshape((rows, width))?.matmul(&pair.a.t()?)? * self.config.scale())?;
        let out = low_rank.matmul(&pair.b.t()?)?;
        dims.push(out.dim(1)?);
        Ok(Some(out.reshape(dims)?))
    }

    /// Every variable with its PEFT name, in a stable order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (layer, pairs) in self.layers.iter().enumerate() {
            for projection in Projection::ALL {
                if let Some(pair) = pairs.get(&projection) {
                    let prefix = projection.peft_prefix(layer);
                    out.push((format!("{prefix}.lora_A.weight"), pair.a.clone()));
                    out.push((format!("{prefix}.lora_B.weight"), pair.b.clone()));
                }
            }
        }
        out
    }

    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    pub fn peft_config(&self) -> PeftConfig {
        PeftConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            base_model_name_or_path: self.base_model.clone(),
            r: self.config.rank,
            lora_alpha: self.config.alpha,
            target_modules: self
                .config
                .targets
                .iter()
                .map(|p| p.module_name().to_string())
                .collect(),
            bias: "none".into(),
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            modules_to_save: None,
            use_dora: false,
            use_rslora: false,
            inference_mode: true,
        }
    }

    pub fn to_peft_files(&self) -> Result<PeftFiles> {
        let tensors: Vec<(String, Tensor)> = self
            .named_vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_detached_tensor()))
            .collect();
        let safetensors = safetensors::serialize(tensors, None)
            .map_err(|e| EngineError::InvalidAdapter(format!("serialize adapter: {e}")))?;
        let config_json = serde_json::to_vec_pretty(&self.peft_config())
            .map_err(|e| EngineError::InvalidAdapter(format!("serialize adapter config: {e}")))?;
        Ok(PeftFiles {
            safetensors,
            config_json,
        })
    }

    /// Loads PEFT files for a base model of shape `model`, checking every name and shape.
    pub fn from_peft_files(
        files: &PeftFiles,
        model: &ModelConfig,
        device: &Device,
    ) -> Result<Self> {
        let peft: PeftConfig = serde_json::from_slice(&files.config_json)
            .map_err(|e| EngineError::InvalidAdapter(format!("adapter_config.json: {e}")))?;
        if peft.peft_type != "LORA" {
            return Err(EngineError::InvalidAdapter(format!(
                "peft_type is {}, expected LORA",
                peft.peft_type
            )));
        }
        if peft.use_dora || peft.use_rslora || peft.fan_in_fan_out {
            return Err(EngineError::InvalidAdapter(
                "DoRA, rsLoRA and fan_in_fan_out adapters are not supported".into(),
            ));
        }
        let config = LoraConfig::new(peft.r, peft.lora_alpha, &peft.target_modules)?;
        let mut tensors = candle_core::safetensors::load_buffer(&files.safetensors, device)?;
        let mut layers = Vec::with_capacity(model.num_layers);
        for layer in 0..model.num_layers {
            let mut pairs = HashMap::new();
            for &projection in &config.targets {
                let (fan_in, fan_out) = projection_shape(model, projection);
                let prefix = projection.peft_prefix(layer);
                let mut take = |suffix: &str, shape: (usize, usize)| -> Result<Var> {
                    let name = format!("{prefix}.{suffix}.weight");
                    let tensor = tensors.remove(&name).ok_or_else(|| {
                        EngineError::InvalidAdapter(format!("tensor {name} is missing"))
                    })?;
                    if tensor.dims2().ok() != Some(shape) {
                        return Err(EngineError::InvalidAdapter(format!(
                            "tensor {name} has shape {:?}, expected {shape:?}",
                            tensor.dims()
                        )));
                    }
                    Ok(Var::from_tensor(&tensor.to_dtype(DType::F32)?)?)
                };
                let a = take("lora_A", (config.rank, fan_in))?;
                let b = take("lora_B", (fan_out, config.rank))?;
                pairs.insert(projection, LoraPair { a, b });
            }
            layers.push(pairs);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(EngineError::InvalidAdapter(format!(
                "unexpected tensor {extra} for this base model"
            )));
        }
        Ok(Self {
            config,
            base_model: peft.base_model_name_or_path,
            layers,
        })
    }

    pub fn save_peft(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let files = self.to_peft_files()?;
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        std::fs::write(&weights, &files.safetensors).map_err(io_error(&weights))?;
        let config = dir.join(ADAPTER_CONFIG_FILE);
        std::fs::write(&config, &files.config_json).map_err(io_error(&config))?;
        Ok(())
    }

    pub fn load_peft(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Self> {
        Self::from_peft_files(&PeftFiles::read_dir(dir)?, model, device)
    }
}

fn projection_shape(model: &ModelConfig, projection: Projection) -> (usize, usize) {
    model
        .projection_shape(projection.module_name())
        .expect("every Projection has a shape")
}
