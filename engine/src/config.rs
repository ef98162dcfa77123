//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    /// Like Llama, plus biases on the q/k/v projections.
    Qwen2,
}

impl Architecture {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" | "mistral" | "mistralforcausallm" => Ok(Self::Llama),
            "qwen2" | "qwen2forcausallm" => Ok(Self::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Input and output width of each LoRA-targetable projection.
    pub fn projection_shape(&self, module: &str) -> Option<(usize, usize)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        Some(match module {
            "q_proj" => (h, q),
            "k_proj" | "v_proj" => (h, kv),
            "o_proj" => (q, h),
            "gate_proj" | "up_proj" => (h, i),
            "down_proj" => (i, h),
            _ => return None,
        })
    }

    /// Shapes of the models the benchmarks use, with the same numbers as
    /// `shared/bench/torch_peft_lora.py`.
    pub fn named_shape(name: &str) -> Option<Self> {
        let base = |architecture, vocab, hidden, inter, layers, heads, kv, theta, tie, ctx| Self {
            architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hidden / heads,
            rope_theta: theta,
            rms_norm_eps: if architecture == Architecture::Qwen2 {
                1e-6
            } else {
                1e-5
            },
            max_position_embeddings: ctx,
            tie_word_embeddings: tie,
        };
        Some(match name {
            "smollm2-135m" => base(
                Architecture::Llama,
                49152,
                576,
                1536,
                30,
                9,
                3,
                100_000.0,
                true,
                8192,
            ),
            "qwen2.5-0.5b" => base(
                Architecture::Qwen2,
                151_936,
                896,
                4864,
                24,
                14,
                2,
                1_000_000.0,
                true,
                32768,
            ),
            "llama3-8b" => base(
                Architecture::Llama,
                128_256,
                4096,
                14336,
                32,
                32,
                8,
                500_000.0,
                false,
                8192,
            ),
            "tiny" => base(
                Architecture::Llama,
                300,
                64,
                128,
                2,
                4,
                2,
                10_000.0,
                true,
                512,
            ),
            _ => return None,
        })
    }
}

/// The subset of a Hugging Face `config.json` we need.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    /// Only plain RoPE is implemented; any scaling (`llama3`, `linear`, `dynamic`, `yarn`, ...)
    /// is refused rather than loaded with wrong positions.
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    4096
}

impl HfConfig {
    pub(crate) fn into_model_config(self) -> Result<ModelConfig> {
        let arch_name = self
            .model_type
            .clone()
            .or_else(|| self.architectures.first().cloned())
            .ok_or_else(|| EngineError::InvalidModel("config.json names no model_type".into()))?;
        let architecture = Architecture::parse(&arch_name)?;
        if let Some(scaling) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|kind| kind.as_str())
                .unwrap_or("unnamed");
            return Err(unsupported_rope_scaling(kind));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(EngineError::InvalidModel(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads),
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }
}

/// The refusal for a model whose positions need a RoPE scaling lift does not implement.
pub(crate) fn unsupported_rope_scaling(kind: &str) -> EngineError {
    EngineError::InvalidModel(format!(
        "the model asks for RoPE scaling `{kind}`, which lift does not implement (plain RoPE only); loading it anyway would give every position past the original context wrong angles"
    ))
}

#[cfg(test)]
mod tests {
    use super::HfConfig;

    fn config(rope_scaling: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "model_type": "llama",
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "rope_scaling": rope_scaling,
        })
    }

    fn load(json: serde_json::Value) -> Result<super::ModelConfig, String> {
        let hf: HfConfig = serde_json::from_value(json).unwrap();
        hf.into_model_config().map_err(|e| e.to_string())
    }

    #[test]
    fn rope_scaling_is_refused_with_its_kind_and_absent_or_null_scaling_loads() {
        let llama3 = serde_json::json!({
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        });
        let error = load(config(llama3)).unwrap_err();
        assert!(error.contains("RoPE scaling `llama3`"), "{error}");
        let error = load(config(serde_json::json!({"type": "linear", "factor": 2.0}))).unwrap_err();
        assert!(error.contains("`linear`"), "{error}");
        assert!(load(config(serde_json::Value::Null)).is_ok());
        let mut plain = config(serde_json::Value::Null);
        plain.as_object_mut().unwrap().remove("rope_scaling");
        assert_eq!(load(plain).unwrap().num_layers, 2);
    }
}
