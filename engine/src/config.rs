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
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// How rotary frequencies are stretched past the context a model was pre-trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.1/3.2 (`rope_type: llama3`): wavelengths longer than
    /// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those
    /// shorter than `... / high_freq_factor` kept, and those between blended smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl ModelConfig {
    /// The rotary inverse frequency of each of the `head_dim / 2` dimension pairs.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let inv_freq = 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64);
                self.rope_scaling.scale(inv_freq)
            })
            .collect()
    }
}

impl RopeScaling {
    fn scale(&self, inv_freq: f64) -> f64 {
        match *self {
            Self::None => inv_freq,
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: context,
            } => {
                let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
                if wavelen < context / high_freq_factor {
                    inv_freq
                } else if wavelen > context / low_freq_factor {
                    inv_freq / factor
                } else {
                    let smooth = (context / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
                }
            }
        }
    }
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

    /// Shapes of the models the benchmarks use, with the same numbers as the PyTorch + PEFT peer
    /// (`bench/torch_peft_lora.py` of the shared folder beside the checkout).
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
            rope_scaling: RopeScaling::None,
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
    /// Top-level in transformers 4 configs; inside `rope_parameters` in transformers 5.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    /// Plain RoPE and `llama3` are implemented; any other scaling (`linear`, `dynamic`,
    /// `yarn`, ...) is refused rather than loaded with wrong positions.
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5's form of both: `rope_theta` plus `rope_type` (`default` is plain RoPE)
    /// and that type's parameters.
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
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
        let parameters = self.rope_parameters.as_ref().filter(|p| !p.is_null());
        let rope_theta = self
            .rope_theta
            .or_else(|| parameters?.get("rope_theta")?.as_f64())
            .unwrap_or_else(default_rope_theta);
        let scaling = self
            .rope_scaling
            .as_ref()
            .filter(|s| !s.is_null())
            .or(parameters.filter(|p| {
                p.get("rope_type")
                    .and_then(|kind| kind.as_str())
                    .is_some_and(|kind| kind != "default")
            }));
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(scaling) => rope_scaling(scaling, self.max_position_embeddings)?,
        };
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
            rope_theta,
            rope_scaling,
            rms_norm_eps: self.rms_norm_eps,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }
}

/// A `config.json` `rope_scaling` object: `llama3`, or a refusal naming its kind.
fn rope_scaling(scaling: &serde_json::Value, max_positions: usize) -> Result<RopeScaling> {
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|kind| kind.as_str())
        .unwrap_or("unnamed");
    if kind != "llama3" {
        return Err(unsupported_rope_scaling(kind));
    }
    let number = |key: &str| {
        scaling.get(key).and_then(|v| v.as_f64()).ok_or_else(|| {
            EngineError::InvalidModel(format!(
                "rope_scaling `llama3` needs a number `{key}` in config.json"
            ))
        })
    };
    let (factor, low, high) = (
        number("factor")?,
        number("low_freq_factor")?,
        number("high_freq_factor")?,
    );
    let context = match scaling.get("original_max_position_embeddings") {
        Some(_) => number("original_max_position_embeddings")?,
        None => max_positions as f64,
    };
    if !(factor > 0.0 && low > 0.0 && high > low && context > 0.0) {
        return Err(EngineError::InvalidModel(format!(
            "rope_scaling `llama3` needs factor > 0 and 0 < low_freq_factor < high_freq_factor (got {factor}, {low}, {high}) and a positive original context (got {context})"
        )));
    }
    Ok(RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: context,
    })
}

/// The refusal for a model whose positions need a RoPE scaling lift does not implement.
pub(crate) fn unsupported_rope_scaling(kind: &str) -> EngineError {
    EngineError::InvalidModel(format!(
        "the model asks for RoPE scaling `{kind}`, which lift does not implement (plain RoPE and llama3 only); loading it anyway would give every position past the original context wrong angles"
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
    fn unknown_rope_scaling_is_refused_with_its_kind_and_absent_or_null_scaling_loads() {
        let error = load(config(serde_json::json!({"type": "linear", "factor": 2.0}))).unwrap_err();
        assert!(error.contains("RoPE scaling `linear`"), "{error}");
        let error = load(config(serde_json::json!({"rope_type": "yarn"}))).unwrap_err();
        assert!(error.contains("`yarn`"), "{error}");
        let error = load(config(serde_json::json!({"rope_type": "llama3"}))).unwrap_err();
        assert!(error.contains("needs a number `factor`"), "{error}");
        assert!(load(config(serde_json::Value::Null)).is_ok());
        let mut plain = config(serde_json::Value::Null);
        plain.as_object_mut().unwrap().remove("rope_scaling");
        let plain = load(plain).unwrap();
        assert_eq!(plain.num_layers, 2);
        assert_eq!(plain.rope_scaling, super::RopeScaling::None);
    }

    /// transformers 5 writes `rope_parameters` instead of `rope_theta` and `rope_scaling`.
    #[test]
    fn transformers_5_rope_parameters_give_theta_and_scaling() {
        let mut json = config(serde_json::Value::Null);
        let object = json.as_object_mut().unwrap();
        object.remove("rope_scaling");
        object.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"}),
        );
        let plain = load(json.clone()).unwrap();
        assert_eq!(plain.rope_theta, 500000.0);
        assert_eq!(plain.rope_scaling, super::RopeScaling::None);
        json["rope_parameters"] = serde_json::json!({
            "rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        });
        let scaled = load(json.clone()).unwrap();
        assert!(matches!(
            scaled.rope_scaling,
            super::RopeScaling::Llama3 { factor, .. } if factor == 32.0
        ));
        json["rope_parameters"] = serde_json::json!({"rope_theta": 1e6, "rope_type": "yarn"});
        assert!(load(json).unwrap_err().contains("`yarn`"));
    }

    /// Llama 3.1 8B's numbers (theta 500000, head_dim 128): frequencies with wavelengths under
    /// 2048 positions stay, those over 8192 are divided by 8, the ones between are blended.
    /// The expected values are the formula of transformers' `_compute_llama3_parameters`,
    /// worked in Python for that config.
    #[test]
    fn llama3_scaling_divides_long_wavelengths_and_blends_the_middle() {
        let mut json = config(serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        }));
        let object = json.as_object_mut().unwrap();
        object.insert("hidden_size".into(), 4096.into());
        object.insert("num_attention_heads".into(), 32.into());
        object.insert("rope_theta".into(), 500000.0.into());
        let scaled = load(json.clone()).unwrap();
        json.as_object_mut().unwrap().remove("rope_scaling");
        let plain = load(json).unwrap();
        let (scaled, plain) = (scaled.rope_inv_freq(), plain.rope_inv_freq());
        assert_eq!(scaled.len(), 64);
        let wavelen = |f: f64| 2.0 * std::f64::consts::PI / f;
        for (s, p) in scaled.iter().zip(&plain) {
            if wavelen(*p) < 2048.0 {
                assert_eq!(s, p);
            } else if wavelen(*p) > 8192.0 {
                assert!((s - p / 8.0).abs() < 1e-15);
            } else {
                assert!(*s < *p && *s > p / 8.0, "{s} between {p} and {}", p / 8.0);
            }
        }
        // Dimension pair 31: a wavelength of 3,619 positions, in the blended band.
        assert!(
            (plain[31] - 1.736_046_702e-3).abs() < 1e-12,
            "{}",
            plain[31]
        );
        assert!(
            (scaled[31] - 8.567_514_129e-4).abs() < 1e-12,
            "{}",
            scaled[31]
        );
    }
}
