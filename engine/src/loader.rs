//! Building a `Model` and its tokenizer from a GGUF file or a Hugging Face model directory.
//!
//! Over 600 lines: 150 of them are tests.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::config::{Architecture, HfConfig, ModelConfig};
use crate::error::{io_error, EngineError, Result};
use crate::model::{Attention, DecoderLayer, Linear, Mlp, Model, RmsNorm};
use crate::tokenizer::{ChatTokenizer, GgufVocab};

/// Where tensors come from, under HF names (`model.layers.0.self_attn.q_proj.weight`).
trait TensorSource {
    fn take(&mut self, name: &str) -> Result<Tensor>;
    fn take_optional(&mut self, name: &str) -> Result<Option<Tensor>>;
}

fn build_model(
    config: ModelConfig,
    source: &mut dyn TensorSource,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    let mut load = |name: &str| -> Result<Tensor> {
        Ok(source.take(name)?.to_dtype(dtype)?.to_device(device)?)
    };
    let expect_shape = |tensor: Tensor, name: &str, shape: &[usize]| -> Result<Tensor> {
        if tensor.dims() != shape {
            return Err(EngineError::InvalidModel(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor)
    };
    let embed_tokens = expect_shape(
        load("model.embed_tokens.weight")?,
        "model.embed_tokens.weight",
        &[config.vocab_size, config.hidden_size],
    )?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let mut linear = |module: &str, with_bias: bool| -> Result<Linear> {
            let name = format!("{p}.{module}.weight");
            let short = module.rsplit('.').next().unwrap_or(module);
            let (fan_in, fan_out) = config
                .projection_shape(short)
                .ok_or_else(|| EngineError::InvalidModel(format!("unknown projection {module}")))?;
            let weight = expect_shape(load(&name)?, &name, &[fan_out, fan_in])?;
            let bias = if with_bias {
                let bias_name = format!("{p}.{module}.bias");
                Some(expect_shape(load(&bias_name)?, &bias_name, &[fan_out])?)
            } else {
                None
            };
            Ok(Linear::new(weight, bias))
        };
        let qkv_bias = config.architecture == Architecture::Qwen2;
        let self_attn = Attention {
            q_proj: linear("self_attn.q_proj", qkv_bias)?,
            k_proj: linear("self_attn.k_proj", qkv_bias)?,
            v_proj: linear("self_attn.v_proj", qkv_bias)?,
            o_proj: linear("self_attn.o_proj", false)?,
        };
        let mlp = Mlp {
            gate_proj: linear("mlp.gate_proj", false)?,
            up_proj: linear("mlp.up_proj", false)?,
            down_proj: linear("mlp.down_proj", false)?,
        };
        let norm = |tensor: Tensor| RmsNorm {
            weight: tensor,
            eps: config.rms_norm_eps,
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(load(&format!("{p}.input_layernorm.weight"))?),
            self_attn,
            post_attention_layernorm: norm(load(&format!("{p}.post_attention_layernorm.weight"))?),
            mlp,
        });
    }
    let norm = RmsNorm {
        weight: load("model.norm.weight")?,
        eps: config.rms_norm_eps,
    };
    let lm_head = match source.take_optional("lm_head.weight")? {
        Some(t) if !config.tie_word_embeddings => t.to_dtype(dtype)?.to_device(device)?,
        _ => embed_tokens.clone(),
    };
    Ok(Model::new(config, embed_tokens, layers, norm, lm_head)?)
}

// ---- GGUF ----

struct GgufSource {
    content: gguf_file::Content,
    reader: BufReader<File>,
    path: std::path::PathBuf,
    config: ModelConfig,
    /// llama.cpp permutes q/k rows for interleaved rope in llama-family files.
    permuted_qk: bool,
}

impl GgufSource {
    fn gguf_name(hf: &str) -> Option<String> {
        let map = |rest: &str| -> Option<&'static str> {
            Some(match rest {
                "input_layernorm.weight" => "attn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.q_proj.bias" => "attn_q.bias",
                "self_attn.k_proj.bias" => "attn_k.bias",
                "self_attn.v_proj.bias" => "attn_v.bias",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            })
        };
        match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight".into()),
            "model.norm.weight" => Some("output_norm.weight".into()),
            "lm_head.weight" => Some("output.weight".into()),
            _ => {
                let rest = hf.strip_prefix("model.layers.")?;
                let (layer, rest) = rest.split_once('.')?;
                Some(format!("blk.{layer}.{}", map(rest)?))
            }
        }
    }

    fn read(&mut self, gguf: &str) -> Result<Tensor> {
        let corrupt = |reason: String| EngineError::ModelCorrupt {
            path: self.path.clone(),
            reason,
        };
        let qtensor = self
            .content
            .tensor(&mut self.reader, gguf, &Device::Cpu)
            .map_err(|e| corrupt(format!("tensor {gguf}: {e}")))?;
        qtensor
            .dequantize(&Device::Cpu)
            .map_err(|e| corrupt(format!("tensor {gguf}: {e}")))
    }
}

/// Undoes llama.cpp's `permute(w, n_head)` on q/k rows: the GGUF keeps the two rope halves
/// of each head interleaved, HF keeps them as two blocks.
fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, fan_in) = w.dims2()?;
    let head_dim = out / heads;
    Ok(w.reshape((heads, head_dim / 2, 2, fan_in))?
        .transpose(1, 2)?
        .reshape((out, fan_in))?)
}

impl TensorSource for GgufSource {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.take_optional(name)?
            .ok_or_else(|| EngineError::ModelCorrupt {
                path: self.path.clone(),
                reason: format!("tensor for {name} is missing"),
            })
    }

    fn take_optional(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(gguf) = Self::gguf_name(name) else {
            return Ok(None);
        };
        if !self.content.tensor_infos.contains_key(&gguf) {
            return Ok(None);
        }
        let tensor = self.read(&gguf)?;
        let heads = if name.ends_with("q_proj.weight") {
            Some(self.config.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(self.config.num_kv_heads)
        } else {
            None
        };
        match heads {
            Some(heads) if self.permuted_qk => Ok(Some(unpermute_qk(&tensor, heads)?)),
            _ => Ok(Some(tensor)),
        }
    }
}

pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<(Model, ChatTokenizer)> {
    if !path.exists() {
        return Err(EngineError::ModelMissing {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file);
    let header = read_gguf_header(&mut reader, path)?;
    let architecture = header.config.architecture;
    let mut source = GgufSource {
        content: header.content,
        reader,
        path: path.to_path_buf(),
        config: header.config.clone(),
        permuted_qk: architecture == Architecture::Llama,
    };
    let model = build_model(header.config, &mut source, dtype, device)?;
    Ok((model, header.tokenizer))
}

/// What a GGUF file's header says: its tensor directory, the model's shape, its tokenizer.
pub struct GgufHeader {
    pub content: gguf_file::Content,
    pub config: ModelConfig,
    pub tokenizer: ChatTokenizer,
}

/// Reads and checks the header of a GGUF file (untrusted input: models come from users);
/// `path` only names the file in errors. No tensor data is read.
pub fn read_gguf_header<R: std::io::Read + std::io::Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<GgufHeader> {
    let corrupt = |reason: String| EngineError::ModelCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let content = gguf_file::Content::read(reader).map_err(|e| corrupt(e.to_string()))?;
    let md = &content.metadata;
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| corrupt(format!("metadata {key} is missing")))
    };
    let arch_name = get("general.architecture")?
        .to_string()
        .map_err(|e| corrupt(e.to_string()))?
        .clone();
    let architecture = Architecture::parse(&arch_name)?;
    let num = |key: &str| -> Result<usize> {
        let value = get(&format!("{arch_name}.{key}"))?;
        value
            .to_u32()
            .map(|v| v as usize)
            .or_else(|_| value.to_u64().map(|v| v as usize))
            .map_err(|e| corrupt(format!("{key}: {e}")))
    };
    let float = |key: &str, default: f64| -> f64 {
        md.get(&format!("{arch_name}.{key}"))
            .and_then(|v| v.to_f32().ok())
            .map(f64::from)
            .unwrap_or(default)
    };
    let string_array = |key: &str| -> Result<Vec<String>> {
        get(key)?
            .to_vec()
            .map_err(|e| corrupt(e.to_string()))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| corrupt(e.to_string())))
            .collect()
    };
    let tokens = string_array("tokenizer.ggml.tokens")?;
    let merges = string_array("tokenizer.ggml.merges")?;
    let token_types = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| corrupt(e.to_string()))?
            .iter()
            .map(|t| t.to_i32().map_err(|e| corrupt(e.to_string())))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    // llama.cpp writes `<arch>.rope.scaling.type` (none, linear, yarn, ...) and, for Llama 3.1's
    // scaling, a `rope_freqs.weight` tensor.
    let scaling = md
        .get(&format!("{arch_name}.rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .filter(|kind| kind.as_str() != "none");
    if let Some(kind) = scaling {
        return Err(crate::config::unsupported_rope_scaling(kind));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(crate::config::unsupported_rope_scaling(
            "llama3 (rope_freqs)",
        ));
    }
    let hidden = num("embedding_length")?;
    let heads = num("attention.head_count")?;
    let config = ModelConfig {
        architecture,
        vocab_size: tokens.len(),
        hidden_size: hidden,
        intermediate_size: num("feed_forward_length")?,
        num_layers: num("block_count")?,
        num_heads: heads,
        num_kv_heads: num("attention.head_count_kv").unwrap_or(heads),
        head_dim: hidden / heads.max(1),
        rope_theta: float("rope.freq_base", 10_000.0),
        rope_scaling: crate::config::RopeScaling::None,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
        max_position_embeddings: num("context_length")?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
    };
    let vocab = GgufVocab {
        tokens,
        merges,
        token_types,
        bos_id: md
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok()),
        eos_id: md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok()),
        chat_template: md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned()),
    };
    let tokenizer = ChatTokenizer::from_gguf_vocab(vocab)?;
    Ok(GgufHeader {
        content,
        config,
        tokenizer,
    })
}

// ---- Hugging Face directories ----

struct SafetensorsSource {
    tensors: HashMap<String, Tensor>,
    dir: std::path::PathBuf,
}

impl TensorSource for SafetensorsSource {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| {
            EngineError::InvalidModel(format!(
                "tensor {name} is missing from the safetensors files in {}",
                self.dir.display()
            ))
        })
    }

    fn take_optional(&mut self, name: &str) -> Result<Option<Tensor>> {
        Ok(self.tensors.remove(name))
    }
}

#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
}

/// Special tokens appear either as strings or as `{"content": "..."}` objects.
fn token_text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of named templates of which `default` is used.
fn template_text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Array(items) => items.iter().find_map(|item| {
            (item.get("name")?.as_str()? == "default")
                .then(|| item.get("template")?.as_str().map(str::to_string))?
        }),
        _ => None,
    }
}

pub fn load_hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<(Model, ChatTokenizer)> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(io_error(&path))
    };
    let hf: HfConfig = serde_json::from_slice(&read("config.json")?)
        .map_err(|e| EngineError::InvalidModel(format!("config.json: {e}")))?;
    let config = hf.into_model_config()?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
    let tokenizer_config: TokenizerConfig = match read("tokenizer_config.json") {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::InvalidModel(format!("tokenizer_config.json: {e}")))?,
        Err(_) => TokenizerConfig::default(),
    };
    let tokenizer = ChatTokenizer::new(
        tokenizer,
        template_text(tokenizer_config.chat_template),
        token_text(tokenizer_config.bos_token),
        token_text(tokenizer_config.eos_token),
    )?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::InvalidModel(format!(
            "no .safetensors files in {}",
            dir.display()
        )));
    }
    let mut tensors = HashMap::new();
    for file in &files {
        let loaded = candle_core::safetensors::load(file, &Device::Cpu)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", file.display())))?;
        tensors.extend(loaded);
    }
    let mut source = SafetensorsSource {
        tensors,
        dir: dir.to_path_buf(),
    };
    let model = build_model(config, &mut source, dtype, device)?;
    Ok((model, tokenizer))
}

/// A model of a named shape with random weights (benchmarks and fast tests): speed does not
/// depend on weight values.
pub fn random_model(
    config: ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    struct Random<'a> {
        config: &'a ModelConfig,
        device: &'a Device,
        /// The CPU device cannot be seeded, so CPU weights come from our own generator.
        cpu_rng: rand::rngs::StdRng,
    }
    impl TensorSource for Random<'_> {
        fn take(&mut self, name: &str) -> Result<Tensor> {
            let c = self.config;
            if name.ends_with("norm.weight") {
                return Ok(Tensor::ones(c.hidden_size, DType::F32, self.device)?);
            }
            let shape: Vec<usize> =
                if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                    vec![c.vocab_size, c.hidden_size]
                } else {
                    let module = name.rsplit('.').nth(1).unwrap_or_default();
                    let (fan_in, fan_out) = c.projection_shape(module).ok_or_else(|| {
                        EngineError::InvalidModel(format!("unknown tensor {name}"))
                    })?;
                    if name.ends_with(".bias") {
                        vec![fan_out]
                    } else {
                        vec![fan_out, fan_in]
                    }
                };
            if self.device.is_cpu() {
                use rand::Rng;
                let count = shape.iter().product();
                let values: Vec<f32> = (0..count)
                    .map(|_| self.cpu_rng.random_range(-0.02f32..0.02))
                    .collect();
                return Ok(Tensor::from_vec(values, shape, self.device)?);
            }
            Ok(Tensor::rand(-0.02f32, 0.02f32, shape, self.device)?)
        }
        fn take_optional(&mut self, name: &str) -> Result<Option<Tensor>> {
            if name == "lm_head.weight" && self.config.tie_word_embeddings {
                return Ok(None);
            }
            self.take(name).map(Some)
        }
    }
    use rand::SeedableRng;
    if !device.is_cpu() {
        device.set_seed(seed)?;
    }
    let mut source = Random {
        config: &config,
        device,
        cpu_rng: rand::rngs::StdRng::seed_from_u64(seed),
    };
    build_model(config.clone(), &mut source, dtype, device)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::{load_hf_dir, random_model};
    use crate::config::{Architecture, ModelConfig};
    use crate::model::{LogitsFor, Model};
    use crate::testing::sequence_logits;
    use crate::tokenizer::ChatTokenizer;

    /// Writes `model` as a Hugging Face directory (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json) the way transformers lays one out.
    fn write_hf_dir(model: &Model, dir: &std::path::Path, model_type: &str) {
        let c = &model.config;
        let config = serde_json::json!({
            "architectures": [if model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": model_type,
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_norm_eps,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        tensors.insert(
            "model.embed_tokens.weight".into(),
            model.embed_tokens.clone(),
        );
        tensors.insert("model.norm.weight".into(), model.norm.weight.clone());
        if !c.tie_word_embeddings {
            tensors.insert("lm_head.weight".into(), model.lm_head.clone());
        }
        for (i, layer) in model.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for (name, linear) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                tensors.insert(format!("{p}.{name}.weight"), linear.weight.clone());
                if let Some(bias) = &linear.bias {
                    tensors.insert(format!("{p}.{name}.bias"), bias.clone());
                }
            }
            tensors.insert(
                format!("{p}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            );
            tensors.insert(
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            );
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let tokenizer = ChatTokenizer::byte_level(c.vocab_size);
        tokenizer
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
        let tokenizer_config =
            serde_json::json!({"eos_token": "<|im_end|>", "chat_template": null});
        std::fs::write(
            dir.join("tokenizer_config.json"),
            tokenizer_config.to_string(),
        )
        .unwrap();
    }

    fn logits(model: &Model) -> Vec<f32> {
        sequence_logits(model, &[3, 50, 120, 7], None, LogitsFor::AllPositions)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn llama_and_qwen2_directories_load_with_identical_logits() {
        for (architecture, model_type, tied) in [
            (Architecture::Llama, "llama", true),
            (Architecture::Qwen2, "qwen2", false),
        ] {
            let mut config = ModelConfig::named_shape("tiny").unwrap();
            config.architecture = architecture;
            config.tie_word_embeddings = tied;
            let model = random_model(config.clone(), 5, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(
                model.layers[0].self_attn.q_proj.bias.is_some(),
                architecture == Architecture::Qwen2
            );
            let dir = tempfile::tempdir().unwrap();
            write_hf_dir(&model, dir.path(), model_type);
            let (loaded, tokenizer) = load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(loaded.config, config);
            assert_eq!(logits(&model), logits(&loaded), "{model_type}");
            let rendered = tokenizer
                .render(&[crate::ChatMessage::new("user", "hi")], true)
                .unwrap();
            assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
        }
    }

    #[test]
    fn a_directory_missing_a_tensor_or_with_an_unknown_architecture_is_a_clear_error() {
        let config = ModelConfig::named_shape("tiny").unwrap();
        let model = random_model(config, 5, DType::F32, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_hf_dir(&model, dir.path(), "llama");
        let mut tensors =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        tensors.remove("model.layers.1.mlp.up_proj.weight");
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let error = load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("model.layers.1.mlp.up_proj.weight is missing"),
            "{error}"
        );

        let config_path = dir.path().join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .unwrap()
            .replace("\"llama\"", "\"mamba\"");
        std::fs::write(&config_path, text).unwrap();
        let error = load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("unsupported model architecture `mamba`"),
            "{error}"
        );
    }
}
