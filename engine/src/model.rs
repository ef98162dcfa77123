//! Llama / Qwen2 decoder written from differentiable candle ops, with LoRA on the linear
//! projections. candle-transformers' models use fused ops without backward, return only the
//! last position's logits and hold concrete `Linear`s, so they cannot be fine-tuned.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use crate::config::ModelConfig;
use crate::frozen::frozen_matmul;
use crate::lora::{LoraAdapter, Projection};

/// A frozen base-model projection, `y = x W^T (+ b)`, W stored `[out, in]` as in HF.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = frozen_matmul(x, &self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises in f32 whatever the model dtype, like the HF reference.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let mean_square = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// Rotary embedding tables, HF layout (rotate the two halves of each head).
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor, // [max_positions, head_dim / 2]
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// `x`: [b, heads, t, d]; `positions`: [b, t] u32.
    fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, _, t, d) = x.dims4()?;
        let flat = positions.flatten_all()?;
        let gather = |table: &Tensor| -> Result<Tensor> {
            let half = table.index_select(&flat, 0)?.reshape((b, 1, t, d / 2))?;
            Tensor::cat(&[&half, &half], D::Minus1)
        };
        let (cos, sin) = (gather(&self.cos)?, gather(&self.sin)?);
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// Keys and values of past positions, per layer: `[b, kv_heads, s, d]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    pub fn seq_len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    /// Keeps only the given batch rows (used when sequences finish during generation).
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(rows, 0)?;
            *v = v.index_select(rows, 0)?;
        }
        Ok(())
    }
}

/// What one forward call sees besides the token ids.
pub struct ForwardInput<'a> {
    /// `[b, t]` u32 ids.
    pub input_ids: &'a Tensor,
    /// `[b, t]` u32 rope positions.
    pub positions: &'a Tensor,
    /// Additive mask broadcastable to `[b, heads, t, past + t]` (0 or -inf), in the model dtype.
    pub mask: Option<&'a Tensor>,
    pub adapter: Option<&'a LoraAdapter>,
    pub logits: LogitsFor<'a>,
}

/// Which positions get logits: the vocabulary projection is the largest activation, so
/// generation asks for the last position and training for the answer tokens only.
#[derive(Clone, Copy)]
pub enum LogitsFor<'a> {
    /// `[b, t, vocab]`
    AllPositions,
    /// `[b, 1, vocab]`
    LastPosition,
    /// `[n, vocab]` for these u32 indices into the flattened `b * t` positions.
    FlatPositions(&'a Tensor),
}

#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Tensor, // [vocab, hidden]
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Tensor, // [vocab, hidden]; the embedding itself when tied
    rope: Rope,
    dtype: DType,
    device: Device,
}

impl Model {
    pub fn new(
        config: ModelConfig,
        embed_tokens: Tensor,
        layers: Vec<DecoderLayer>,
        norm: RmsNorm,
        lm_head: Tensor,
    ) -> Result<Self> {
        let dtype = embed_tokens.dtype();
        let device = embed_tokens.device().clone();
        let rope = Rope::new(&config, dtype, &device)?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            dtype,
            device,
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits in f32, shaped as `input.logits` says.
    pub fn forward(&self, input: &ForwardInput, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = input.input_ids.dims2()?;
        let hidden = self.config.hidden_size;
        let mut x = self
            .embed_tokens
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((b, t, hidden))?;
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[index]);
            x = self.layer_forward(index, layer, &x, input, layer_cache)?;
        }
        let x = match input.logits {
            LogitsFor::AllPositions => x,
            LogitsFor::LastPosition => x.narrow(1, t - 1, 1)?,
            LogitsFor::FlatPositions(rows) => x.reshape((b * t, hidden))?.index_select(rows, 0)?,
        };
        let x = self.norm.forward(&x)?;
        let logits = frozen_matmul(&x, &self.lm_head)?;
        logits.to_dtype(DType::F32)
    }

    fn project(
        &self,
        linear: &Linear,
        x: &Tensor,
        adapter: Option<&LoraAdapter>,
        layer: usize,
        projection: Projection,
    ) -> Result<Tensor> {
        let base = linear.forward(x)?;
        let delta = match adapter {
            Some(adapter) => adapter.delta(layer, projection, x)?,
            None => None,
        };
        match delta {
            Some(delta) => base + delta.to_dtype(self.dtype)?,
            None => Ok(base),
        }
    }

    fn layer_forward(
        &self,
        index: usize,
        layer: &DecoderLayer,
        x: &Tensor,
        input: &ForwardInput,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, head_dim) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let adapter = input.adapter;
        let attn = &layer.self_attn;

        let h = layer.input_layernorm.forward(x)?;
        let q = self.project(&attn.q_proj, &h, adapter, index, Projection::Q)?;
        let k = self.project(&attn.k_proj, &h, adapter, index, Projection::K)?;
        let v = self.project(&attn.v_proj, &h, adapter, index, Projection::V)?;
        let q = q
            .reshape((b, t, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = k
            .reshape((b, t, kv_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = v
            .reshape((b, t, kv_heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.rope.apply(&q, input.positions)?;
        let k = self.rope.apply(&k, input.positions)?;

        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((past_k, past_v)) => (
                        Tensor::cat(&[&past_k, &k], 2)?,
                        Tensor::cat(&[&past_v, &v], 2)?,
                    ),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let k = repeat_kv(&k, heads / kv_heads)?;
        let v = repeat_kv(&v, heads / kv_heads)?;

        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match input.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(self.dtype)?;
        let attended = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, heads * head_dim))?;
        let attn_out = self.project(&attn.o_proj, &attended, adapter, index, Projection::O)?;
        let x = (x + attn_out)?;

        let h = layer.post_attention_layernorm.forward(&x)?;
        let gate = self.project(&layer.mlp.gate_proj, &h, adapter, index, Projection::Gate)?;
        let up = self.project(&layer.mlp.up_proj, &h, adapter, index, Projection::Up)?;
        let act = (candle_nn::Activation::Silu.forward(&gate)? * up)?;
        let down = self.project(&layer.mlp.down_proj, &act, adapter, index, Projection::Down)?;
        x + down
    }
}

/// Softmax from basic ops so it has a backward; the max is detached because it only
/// shifts the exponent for stability and does not change the result.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let exp = x.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

fn repeat_kv(x: &Tensor, times: usize) -> Result<Tensor> {
    if times == 1 {
        return Ok(x.clone());
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, times, s, d))?
        .reshape((b, kv * times, s, d))
}

/// Causal mask `[1, 1, t, past + t]` for right-padded batches (padding sits after the
/// real tokens, so causality alone keeps real tokens from seeing it).
pub fn causal_mask(t: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, t, total), device)?.to_dtype(dtype)
}
