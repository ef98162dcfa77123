//! Llama / Qwen2 decoder written from differentiable candle ops, with LoRA on the linear
//! projections. candle-transformers' models use fused ops without backward, return only the
//! last position's logits and hold concrete `Linear`s, so they cannot be fine-tuned.

use candle_core::{DType, Device, Result, Tensor, Var, D};

use crate::config::ModelConfig;
use crate::decode_weight::DecodeWeight;
use crate::frozen::{frozen_matmul, lora_matmul};
use crate::fused;
use crate::lora::{LoraAdapter, LoraPair, Projection};
use crate::ops::swap_halves;

/// A frozen base-model projection, `y = x W^T (+ b)`, W stored `[out, in]` as in HF.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// What decoding reads instead of `weight`, when set (`Model::quantize_for_decoding`).
    pub decode: Option<DecodeWeight>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            decode: None,
        }
    }

    fn forward(&self, x: &Tensor, decoding: bool) -> Result<Tensor> {
        self.add_bias(base_product(
            x,
            &self.weight,
            self.decode.as_ref(),
            decoding,
        )?)
    }

    /// The projection and the LoRA term of `pair` as one op, where `lora_matmul` applies:
    /// on the CPU in f32, from the f32 weight (not a decoding copy).
    fn forward_fused_lora(
        &self,
        x: &Tensor,
        decoding: bool,
        pair: &LoraPair,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        if !fused::applies(x) || (decoding && self.decode.is_some()) {
            return Ok(None);
        }
        self.add_bias(lora_matmul(x, &self.weight, pair, scale)?)
            .map(Some)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x weight^T`, from the decoding copy in a decoding step when there is one.
fn base_product(
    x: &Tensor,
    weight: &Tensor,
    decode: Option<&DecodeWeight>,
    decoding: bool,
) -> Result<Tensor> {
    match decode.filter(|_| decoding) {
        Some(decode) => decode.forward(x),
        None => frozen_matmul(x, weight),
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    /// Normalises in f32 whatever the model dtype, like the HF reference. `one_kernel`
    /// (`one_kernel_ops`) takes candle-nn's kernel, which has no backward.
    fn forward(&self, x: &Tensor, one_kernel: bool) -> Result<Tensor> {
        if one_kernel {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32);
        }
        if fused::applies(x) {
            return fused::rms_norm(x, &self.weight, self.eps);
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let mean_square = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// Whether a forward call takes single-kernel ops without a backward (candle-nn's RMSNorm
/// and softmax) where the differentiable ones launch several kernels: in the steps that pick
/// tokens on a GPU, whose time is kernel launches and latencies, not arithmetic (a
/// decoding step of SmolLM2 is about 50 kernels a layer). Prompts, scoring and training keep
/// the differentiable ops.
fn one_kernel_ops(input: &ForwardInput, x: &Tensor) -> bool {
    input.decoding && x.device().is_cuda()
}

/// Rotary embedding tables, HF layout (rotate the two halves of each head).
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor, // [max_positions, head_dim / 2]
    sin: Tensor,
}

/// The rope factors of one forward call, gathered once for all layers: `[b, 1, t, d]`.
/// `sin` carries the sign of the rotation (`-sin` on the first half), so applying rope is
/// `x * cos + swap_halves(x) * sin`. The query tables also carry the attention scale.
struct RopeTables {
    query_cos: Tensor,
    query_sin: Tensor,
    key_cos: Tensor,
    key_sin: Tensor,
}

impl RopeTables {
    fn rotate_query(&self, q: &Tensor) -> Result<Tensor> {
        if fused::applies(q) {
            return fused::rope(q, &self.query_cos, &self.query_sin);
        }
        q.broadcast_mul(&self.query_cos)? + swap_halves(q)?.broadcast_mul(&self.query_sin)?
    }

    fn rotate_key(&self, k: &Tensor) -> Result<Tensor> {
        if fused::applies(k) {
            return fused::rope(k, &self.key_cos, &self.key_sin);
        }
        k.broadcast_mul(&self.key_cos)? + swap_halves(k)?.broadcast_mul(&self.key_sin)?
    }
}

impl Rope {
    fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = cfg.rope_inv_freq().into_iter().map(|f| f as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let angles = positions.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// `positions`: `[b, t]` u32. Computed in f32, rounded once to the model dtype.
    fn tables(&self, positions: &Tensor, query_scale: f64, dtype: DType) -> Result<RopeTables> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&flat, 0)?;
        let sin = self.sin.index_select(&flat, 0)?;
        let cos = Tensor::cat(&[&cos, &cos], 1)?.reshape((b, 1, t, 2 * half))?;
        let sin = Tensor::cat(&[&sin.neg()?, &sin], 1)?.reshape((b, 1, t, 2 * half))?;
        Ok(RopeTables {
            query_cos: (&cos * query_scale)?.to_dtype(dtype)?,
            query_sin: (&sin * query_scale)?.to_dtype(dtype)?,
            key_cos: cos.to_dtype(dtype)?,
            key_sin: sin.to_dtype(dtype)?,
        })
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

impl DecoderLayer {
    fn projections_mut(&mut self) -> [&mut Linear; 7] {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut attn.q_proj,
            &mut attn.k_proj,
            &mut attn.v_proj,
            &mut attn.o_proj,
            &mut mlp.gate_proj,
            &mut mlp.up_proj,
            &mut mlp.down_proj,
        ]
    }
}

/// Keys and values of past positions, per layer: `[b, kv_heads, s, d]`.
///
/// A cache grows by one column per decoding step, unless it was given a fixed capacity
/// (`fix_capacity`): then each layer's keys and values sit in buffers of `capacity` columns
/// and a step writes its own in place, at a column it reads from the device
/// (`set_write_column`). The step's shapes and buffers are then the same from step to step,
/// which is what lets a GPU replay it as a CUDA graph (`decode_graph.rs`).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[1, 1, 1, 1]` u32, once the capacity is fixed.
    write_column: Option<Var>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            write_column: None,
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

    /// Moves every layer's keys and values into zeroed buffers of `capacity` columns (the
    /// columns past the cached ones stay zero, so a masked score over them is finite).
    /// Every layer must hold at least one column.
    pub fn fix_capacity(&mut self, capacity: usize) -> Result<()> {
        let device = match self.layers.first() {
            Some(Some((k, _))) => k.device().clone(),
            _ => candle_core::bail!("only a cache that holds a prompt can be given a capacity"),
        };
        for slot in &mut self.layers {
            let Some((k, v)) = slot.as_ref() else {
                candle_core::bail!("only a cache that holds a prompt can be given a capacity");
            };
            let (b, heads, columns, d) = k.dims4()?;
            if columns > capacity {
                candle_core::bail!("{columns} cached columns do not fit a capacity of {capacity}");
            }
            let [k, v] = [k, v].map(|x| -> Result<Tensor> {
                let buffer = Tensor::zeros((b, heads, capacity, d), x.dtype(), x.device())?;
                buffer.slice_set(x, 2, 0)?;
                Ok(buffer)
            });
            *slot = Some((k?, v?));
        }
        self.write_column = Some(Var::zeros((1, 1, 1, 1), DType::U32, &device)?);
        Ok(())
    }

    /// Where the next decoding step writes its keys and values, in a cache of fixed capacity.
    pub fn set_write_column(&self, column: usize) -> Result<()> {
        let Some(write_column) = &self.write_column else {
            candle_core::bail!("the cache has no fixed capacity");
        };
        let column = Tensor::new(&[[[[column as u32]]]], write_column.device())?;
        write_column.set(&column)
    }
}

/// One layer's cache, as a forward call sees it.
struct LayerCache<'a> {
    slot: &'a mut Option<(Tensor, Tensor)>,
    write_column: Option<&'a Tensor>,
}

impl LayerCache<'_> {
    /// The keys and values of every cached column and of these new ones (`[b, kv_heads, t,
    /// d]`), which the cache keeps.
    fn append(self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if let (Some((keys, values)), Some(column)) = (self.slot.as_ref(), self.write_column) {
            if k.dim(2)? != 1 {
                candle_core::bail!("a cache of fixed capacity takes one token per row and step");
            }
            let at = column.broadcast_as(k.shape())?.contiguous()?;
            keys.scatter_set(&at, &k, 2)?;
            values.scatter_set(&at, &v, 2)?;
            return Ok((keys.clone(), values.clone()));
        }
        let (k, v) = match self.slot.take() {
            Some((past_k, past_v)) => (
                Tensor::cat(&[&past_k, &k], 2)?,
                Tensor::cat(&[&past_v, &v], 2)?,
            ),
            None => (k, v),
        };
        *self.slot = Some((k.clone(), v.clone()));
        Ok((k, v))
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
    /// A step of decoding: with up to `decode_weight::MAX_ROWS` rows the projections read
    /// their decoding copies where the model has them (`Model::quantize_for_decoding`).
    /// Generation sets it for every forward call whose logits pick a token, so a sequence
    /// decodes alike alone and in a batch of up to that many rows.
    pub decoding: bool,
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
    lm_head_decode: Option<DecodeWeight>,
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
        let rope = Rope::new(&config, &device)?;
        Ok(Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_decode: None,
            rope,
            dtype,
            device,
        })
    }

    /// Adds an 8-bit copy (`DecodeWeight`) of every frozen projection and of the vocabulary
    /// projection, which decoding steps (`ForwardInput::decoding`) then read; prompts,
    /// training and scoring keep the exact weights. Only f32 weights on the
    /// CPU get one: a GPU decodes from its bf16 weights. 1.125 bytes per weight more memory
    /// (152 MB for SmolLM2-135M).
    pub fn quantize_for_decoding(&mut self) -> Result<()> {
        for linear in self
            .layers
            .iter_mut()
            .flat_map(DecoderLayer::projections_mut)
        {
            linear.decode = DecodeWeight::quantize(&linear.weight)?;
        }
        self.lm_head_decode = DecodeWeight::quantize(&self.lm_head)?;
        Ok(())
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
        let decoding = input.decoding && b * t <= crate::decode_weight::MAX_ROWS;
        let hidden = self.config.hidden_size;
        let query_scale = 1.0 / (self.config.head_dim as f64).sqrt();
        let rope = self.rope.tables(input.positions, query_scale, self.dtype)?;
        let mut x = self
            .embed_tokens
            .index_select(&input.input_ids.flatten_all()?, 0)?
            .reshape((b, t, hidden))?;
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| LayerCache {
                slot: &mut c.layers[index],
                write_column: c.write_column.as_ref().map(Var::as_tensor),
            });
            let at = (index, decoding);
            x = self.layer_forward(at, layer, &x, &rope, input, layer_cache)?;
        }
        let x = match input.logits {
            LogitsFor::AllPositions => x,
            LogitsFor::LastPosition => x.narrow(1, t - 1, 1)?,
            LogitsFor::FlatPositions(rows) => x.reshape((b * t, hidden))?.index_select(rows, 0)?,
        };
        let x = self.norm.forward(&x, one_kernel_ops(input, &x))?;
        let logits = base_product(&x, &self.lm_head, self.lm_head_decode.as_ref(), decoding)?;
        logits.to_dtype(DType::F32)
    }

    /// The base projection plus the LoRA term. `lora_input` is `x` in f32, converted once
    /// by the caller for all projections that read the same `x`; `(layer, decoding)` says
    /// which layer, and whether to read the decoding copy of the base weight.
    fn project(
        &self,
        linear: &Linear,
        x: &Tensor,
        lora_input: Option<(&LoraAdapter, &Tensor)>,
        (layer, decoding): (usize, bool),
        projection: Projection,
    ) -> Result<Tensor> {
        if let Some((adapter, _)) = lora_input {
            if let Some(pair) = adapter.pair(layer, projection) {
                let scale = adapter.config.scale();
                if let Some(y) = linear.forward_fused_lora(x, decoding, pair, scale)? {
                    return Ok(y);
                }
            }
        }
        let base = linear.forward(x, decoding)?;
        let delta = match lora_input {
            Some((adapter, x32)) => adapter.delta(layer, projection, x32)?,
            None => None,
        };
        match delta {
            Some(delta) => base + delta.to_dtype(self.dtype)?,
            None => Ok(base),
        }
    }

    fn layer_forward(
        &self,
        at: (usize, bool),
        layer: &DecoderLayer,
        x: &Tensor,
        rope: &RopeTables,
        input: &ForwardInput,
        cache: Option<LayerCache>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, head_dim) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let attn = &layer.self_attn;
        let with_f32 = |h: &Tensor| -> Result<Option<Tensor>> {
            input.adapter.map(|_| h.to_dtype(DType::F32)).transpose()
        };

        let one_kernel = one_kernel_ops(input, x);
        let h = layer.input_layernorm.forward(x, one_kernel)?;
        let h32 = with_f32(&h)?;
        let lora = input.adapter.zip(h32.as_ref());
        let q = self.project(&attn.q_proj, &h, lora, at, Projection::Q)?;
        let k = self.project(&attn.k_proj, &h, lora, at, Projection::K)?;
        let v = self.project(&attn.v_proj, &h, lora, at, Projection::V)?;
        let heads_first = |y: Tensor, n: usize| -> Result<Tensor> {
            y.reshape((b, t, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.rotate_query(&heads_first(q, heads)?)?;
        let k = rope.rotate_key(&heads_first(k, kv_heads)?)?;
        let v = heads_first(v, kv_heads)?;

        let (k, v) = match cache {
            Some(cache) => cache.append(k, v)?,
            None => (k, v),
        };
        let s = k.dim(2)?;

        // Grouped-query attention without copying keys and values per head: the query heads
        // that share a key head are consecutive, so they fold into its row dimension.
        let groups = heads / kv_heads;
        let q = q.reshape((b, kv_heads, groups * t, head_dim))?;
        let scores = q.matmul(&k.t()?)?.reshape((b, heads, t, s))?;
        let scores = match input.mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        // In f32: candle-nn's kernel would take the exponentials in the model dtype.
        let scores = scores.to_dtype(DType::F32)?;
        let probs = if one_kernel {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else if fused::applies(&scores) {
            fused::softmax_last_dim(&scores)?
        } else {
            softmax_last_dim(&scores)?
        };
        let probs = probs.to_dtype(self.dtype)?;
        let attended = probs
            .reshape((b, kv_heads, groups * t, s))?
            .matmul(&v)?
            .reshape((b, heads, t, head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, heads * head_dim))?;
        let attended32 = with_f32(&attended)?;
        let lora = input.adapter.zip(attended32.as_ref());
        let attn_out = self.project(&attn.o_proj, &attended, lora, at, Projection::O)?;
        let x = (x + attn_out)?;

        let h = layer.post_attention_layernorm.forward(&x, one_kernel)?;
        let h32 = with_f32(&h)?;
        let lora = input.adapter.zip(h32.as_ref());
        let gate = self.project(&layer.mlp.gate_proj, &h, lora, at, Projection::Gate)?;
        let up = self.project(&layer.mlp.up_proj, &h, lora, at, Projection::Up)?;
        let act = if fused::applies(&gate) {
            fused::silu_mul(&gate, &up)?
        } else {
            (gate.silu()? * up)?
        };
        let act32 = with_f32(&act)?;
        let lora = input.adapter.zip(act32.as_ref());
        let down = self.project(&layer.mlp.down_proj, &act, lora, at, Projection::Down)?;
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

/// Causal mask `[1, 1, t, past + t]` for right-padded batches (padding sits after the
/// real tokens, so causality alone keeps real tokens from seeing it).
pub fn causal_mask(t: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + t;
    let values: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (1, 1, t, total), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Tensor};

    use super::{causal_mask, ForwardInput, KvCache, LogitsFor};
    use crate::testing::{max_abs_diff, tiny_engine};

    /// What a GPU's decoding graph runs (`decode_graph.rs`): keys and values written in place
    /// at a column read from the device, attention over the whole capacity with the unused
    /// columns masked. It must give the logits of a cache that grows by concatenation.
    #[test]
    fn a_cache_of_fixed_capacity_decodes_as_a_growing_one() {
        let engine = tiny_engine(3);
        let model = &engine.model;
        let device = model.device();
        let (rows, prompt, capacity) = (2, 5, 12);
        let ids: Vec<u32> = (0..(rows * prompt) as u32)
            .map(|i| 40 + i * 7 % 50)
            .collect();
        let input_ids = Tensor::from_vec(ids, (rows, prompt), device).unwrap();
        let positions = Tensor::arange(0u32, prompt as u32, device)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .repeat((rows, 1))
            .unwrap();
        let mask = causal_mask(prompt, 0, DType::F32, device).unwrap();
        let mut growing = KvCache::new(model.config.num_layers);
        let prefill = ForwardInput {
            input_ids: &input_ids,
            positions: &positions,
            mask: Some(&mask),
            adapter: None,
            logits: LogitsFor::LastPosition,
            decoding: false,
        };
        model.forward(&prefill, Some(&mut growing)).unwrap();
        let mut fixed = growing.clone();
        fixed.fix_capacity(capacity).unwrap();

        for step in 0..4 {
            let column = prompt + step;
            let ids = Tensor::new(&[[60 + step as u32], [90 - step as u32]], device).unwrap();
            let positions = Tensor::new(&[[column as u32], [column as u32]], device).unwrap();
            let decode = |mask: &Tensor, cache: &mut KvCache| {
                let input = ForwardInput {
                    input_ids: &ids,
                    positions: &positions,
                    mask: Some(mask),
                    adapter: None,
                    logits: LogitsFor::LastPosition,
                    decoding: false,
                };
                model.forward(&input, Some(cache)).unwrap()
            };
            let all_columns = Tensor::zeros((rows, 1, 1, column + 1), DType::F32, device).unwrap();
            let expected = decode(&all_columns, &mut growing);
            let used: Vec<f32> = (0..capacity)
                .map(|c| if c <= column { 0.0 } else { f32::NEG_INFINITY })
                .collect();
            let used = Tensor::new(used.as_slice(), device)
                .unwrap()
                .reshape((1, 1, 1, capacity))
                .unwrap()
                .repeat((rows, 1, 1, 1))
                .unwrap();
            fixed.set_write_column(column).unwrap();
            let got = decode(&used, &mut fixed);
            assert!(max_abs_diff(&got, &expected) < 1e-4, "step {step}");
        }
    }
}
