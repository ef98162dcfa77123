//! Supervised fine-tuning of a LoRA adapter: chat-formatted (prompt, answer) pairs, loss on
//! the answer tokens only, AdamW with global-norm clipping and a learning-rate schedule.
//! candle-nn's AdamW has no clipping, schedules or state export, hence our own.
//!
//! Over 600 lines: example encoding, the step and the optimizer whose state checkpoints
//! save; 245 of the lines are tests.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::lora::LoraAdapter;
use crate::model::{ForwardInput, LogitsFor};
pub use crate::sft_batch::SftBatch;
use crate::sft_batch::{graph_bucket, AttentionInputs};
use crate::tokenizer::ChatMessage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// The user turn.
    pub prompt: String,
    /// The assistant turn the model learns to write.
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    Constant,
    /// Linear warm-up, the base rate until `decay_from`, then cosine decay to zero at
    /// `total_steps`. A job's total is known only once synthesis ends, so it decays over the
    /// epochs trained from the task cache (`decay_from` is `u64::MAX` until then).
    Cosine {
        warmup_steps: u64,
        decay_from: u64,
        total_steps: u64,
    },
}

impl LrSchedule {
    pub fn learning_rate(&self, base: f64, step: u64) -> f64 {
        match *self {
            Self::Constant => base,
            Self::Cosine {
                warmup_steps,
                decay_from,
                total_steps,
            } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let decay_from = decay_from.max(warmup_steps);
                if step < decay_from {
                    return base;
                }
                let span = total_steps.saturating_sub(decay_from).max(1) as f64;
                let progress = ((step - decay_from) as f64 / span).min(1.0);
                base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainerOptions {
    pub learning_rate: f64,
    pub schedule: LrSchedule,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// Longer examples lose the start of their prompt.
    pub max_seq_len: usize,
    /// On a GPU, replay each batch shape's step as one CUDA graph from its second occurrence
    /// on (the step is launch-bound at LIFT's batch sizes). Ignored on CPU.
    pub cuda_graphs: bool,
    /// On a CPU, a step's examples go through forward and backward at most this many at a
    /// time, in one packed row (`packed_row`) of at most `cpu_row_tokens` tokens, and their
    /// gradients are summed before the one update: the same step, with the activation memory
    /// of a smaller batch (a laptop's RAM is the limit there). Ignored on a GPU, where a step
    /// is one captured graph. With the projection and its LoRA term fused (`frozen.rs`), the
    /// quick start's job at 4 a row took 235 to 335 s over three runs and peaked at 2.3 GB,
    /// at 2 a row 336 s and 1.8 GB (docs/benchmarks.md, "One op for a projection and its
    /// LoRA term").
    pub cpu_micro_batch: usize,
    /// The most tokens of one packed row, unless a single example is longer: activation
    /// memory grows with a row's tokens and attention's with their square, and LIFT's rows
    /// of 4 short exchanges stay well under it.
    pub cpu_row_tokens: usize,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            schedule: LrSchedule::Constant,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_grad_norm: 1.0,
            max_seq_len: 512,
            cuda_graphs: true,
            cpu_micro_batch: 4,
            cpu_row_tokens: 512,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub loss: f32,
    /// Tokens that carried loss.
    pub answer_tokens: usize,
    /// Tokens processed, padding included.
    pub tokens: usize,
    pub learning_rate: f64,
    pub grad_norm: f32,
}

/// Token ids of one example with the mask of positions that carry loss.
pub struct EncodedExample {
    pub ids: Vec<u32>,
    pub is_answer: Vec<bool>,
}

pub struct SftTrainer {
    engine: Arc<Engine>,
    _presence: crate::engine::TrainerPresence,
    adapter: LoraAdapter,
    options: TrainerOptions,
    optimizer: FlatAdamW,
    /// Causal mask and rope positions by batch shape `(b, t)`, made once (and so never
    /// inside a graph capture, which cannot upload host data).
    attention_inputs: HashMap<(usize, usize), AttentionInputs>,
    #[cfg(feature = "cuda")]
    graphs: Option<crate::graph::StepGraphs>,
    step: u64,
}

impl SftTrainer {
    pub fn new(engine: Arc<Engine>, adapter: LoraAdapter, options: TrainerOptions) -> Result<Self> {
        // Counted before its first device work (the optimizer's buffers).
        let presence = crate::engine::TrainerPresence::new(engine.clone());
        let optimizer = FlatAdamW::new(adapter.named_vars(), engine.device())?;
        #[cfg(feature = "cuda")]
        let graphs = match engine.device() {
            candle_core::Device::Cuda(device) if options.cuda_graphs => {
                Some(crate::graph::StepGraphs::new(device.clone()))
            }
            _ => None,
        };
        Ok(Self {
            _presence: presence,
            engine,
            adapter,
            options,
            optimizer,
            attention_inputs: HashMap::new(),
            #[cfg(feature = "cuda")]
            graphs,
            step: 0,
        })
    }

    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Replaces the learning-rate schedule from the next step on (a job plans its decay once
    /// it knows how many steps it trains).
    pub fn set_schedule(&mut self, schedule: LrSchedule) {
        self.options.schedule = schedule;
    }

    pub fn encode(&self, example: &SftExample) -> Result<EncodedExample> {
        encode_exchange(
            &self.engine,
            &example.prompt,
            &example.answer,
            self.options.max_seq_len,
        )
    }

    pub fn batch(&self, examples: &[SftExample]) -> Result<SftBatch> {
        let encoded = examples
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<Vec<_>>>()?;
        self.batch_of(encoded)
    }

    fn batch_of(&self, encoded: Vec<EncodedExample>) -> Result<SftBatch> {
        if encoded.is_empty() {
            return Err(EngineError::InvalidRequest("empty training batch".into()));
        }
        let device = self.engine.device();
        // A CPU step costs time per token, and LIFT's examples share their prompt's start;
        // a GPU step replays a graph captured per batch shape, which a mask made per batch
        // would break.
        let (inputs, (b, t), rows, targets, packed) = if device.is_cpu() {
            let row = packed_row(&encoded);
            let t = row.inputs.len();
            let attention = AttentionInputs {
                mask: Tensor::from_vec(row.mask(), (1, 1, t, t), device)?
                    .to_dtype(self.engine.model.dtype())?,
                positions: Tensor::from_vec(row.positions, (1, t), device)?,
            };
            (row.inputs, (1, t), row.flat, row.targets, Some(attention))
        } else {
            let natural = padded_width(&encoded);
            // Positions past the model's window have no rotary angles.
            let width = graph_bucket(natural).min(self.sequence_limit().max(natural));
            let padded = answer_positions(&encoded, self.engine.tokenizer.pad_id(), width);
            let shape = (encoded.len(), padded.t);
            (padded.inputs, shape, padded.flat, padded.targets, None)
        };
        if rows.is_empty() {
            return Err(EngineError::InvalidRequest(
                "no answer tokens in the batch".into(),
            ));
        }
        let slots = if packed.is_some() {
            rows.len()
        } else {
            graph_bucket(rows.len())
        };
        SftBatch::with_answer_slots(inputs, (b, t), rows, targets, slots, packed, device)
    }

    /// The longest sequence a step feeds the model.
    fn sequence_limit(&self) -> usize {
        self.options
            .max_seq_len
            .min(self.engine.config().max_position_embeddings)
    }

    /// Mean cross-entropy over answer tokens.
    pub fn loss(&mut self, batch: &SftBatch) -> Result<Tensor> {
        self.prepare_attention_inputs(batch)?;
        let inputs = attention_inputs(&self.attention_inputs, batch)?;
        Ok(batch_loss(&self.engine, &self.adapter, inputs, batch)?)
    }

    /// Makes the mask and positions of a right-padded batch's shape, once per shape.
    fn prepare_attention_inputs(&mut self, batch: &SftBatch) -> Result<()> {
        let (b, t) = batch.inputs.dims2()?;
        if batch.packed.is_none() && !self.attention_inputs.contains_key(&(b, t)) {
            let inputs =
                AttentionInputs::new(b, t, self.engine.model.dtype(), self.engine.device())?;
            self.attention_inputs.insert((b, t), inputs);
        }
        Ok(())
    }

    /// One optimizer step on `examples`.
    pub fn step(&mut self, examples: &[SftExample]) -> Result<StepStats> {
        if !self.engine.device().is_cpu() {
            let batch = self.batch(examples)?;
            return self.step_batch(&batch);
        }
        let encoded = examples
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<Vec<_>>>()?;
        let rows = cpu_rows(
            encoded,
            self.options.cpu_micro_batch.max(1),
            self.options.cpu_row_tokens,
        );
        let mut batches = rows
            .into_iter()
            .map(|row| self.batch_of(row))
            .collect::<Result<Vec<_>>>()?;
        match batches.len() {
            1 => self.step_batch(&batches.remove(0)),
            _ => self.step_micro_batches(&batches),
        }
    }

    /// One optimizer step over several batches: the gradient of the mean loss over all their
    /// answer tokens, each batch's loss weighted by its share of those tokens.
    fn step_micro_batches(&mut self, batches: &[SftBatch]) -> Result<StepStats> {
        let lr = self.begin_step()?;
        let answer_tokens: usize = batches.iter().map(|b| b.answer_tokens).sum();
        let add = |sum: Option<Tensor>, term: Tensor| match sum {
            Some(sum) => sum + term,
            None => Ok(term),
        };
        let (mut loss_sum, mut grad_sum) = (None, None);
        for batch in batches {
            let weight = batch.answer_tokens as f64 / answer_tokens as f64;
            let loss = (self.loss(batch)? * weight)?;
            let grad = self.optimizer.gradient(&loss)?;
            loss_sum = Some(add(loss_sum, loss.detach())?);
            grad_sum = Some(add(grad_sum, grad)?);
        }
        let (loss, grad) = loss_sum
            .zip(grad_sum)
            .ok_or_else(|| EngineError::InvalidRequest("empty training batch".into()))?;
        self.optimizer.update(&loss, grad, &self.options)?;
        let tokens = batches.iter().map(|b| b.inputs.elem_count()).sum();
        self.end_step(lr, answer_tokens, tokens)
    }

    /// The learning rate of the coming step, uploaded with its bias corrections.
    fn begin_step(&mut self) -> Result<f64> {
        let lr = self
            .options
            .schedule
            .learning_rate(self.options.learning_rate, self.step);
        self.optimizer
            .prepare_step(lr, self.step + 1, &self.options)?;
        Ok(lr)
    }

    /// Counts the step taken and reads its loss and gradient norm back.
    fn end_step(&mut self, lr: f64, answer_tokens: usize, tokens: usize) -> Result<StepStats> {
        self.step += 1;
        let (loss, grad_norm) = self.optimizer.last_loss_and_grad_norm()?;
        Ok(StepStats {
            loss,
            answer_tokens,
            tokens,
            learning_rate: lr,
            grad_norm,
        })
    }

    /// One optimizer step on an already encoded batch.
    pub fn step_batch(&mut self, batch: &SftBatch) -> Result<StepStats> {
        let lr = self.begin_step()?;
        self.prepare_attention_inputs(batch)?;
        // Borrows the one field, so that the graphs below can be borrowed mutably.
        let inputs = attention_inputs(&self.attention_inputs, batch)?;
        let step = |batch: &SftBatch| -> candle_core::Result<()> {
            let loss = batch_loss(&self.engine, &self.adapter, inputs, batch)?;
            self.optimizer.apply(&loss, &self.options)
        };
        #[cfg(feature = "cuda")]
        match self.graphs.as_mut() {
            // A graph replays the mask it was captured with: only for shape-made masks.
            Some(graphs) if batch.packed.is_none() => graphs.run(&self.engine, batch, &step)?,
            _ => step(batch)?,
        }
        #[cfg(not(feature = "cuda"))]
        step(batch)?;
        self.end_step(lr, batch.answer_tokens, batch.inputs.elem_count())
    }

    /// AdamW moments as safetensors (`<var>.exp_avg`, `<var>.exp_avg_sq`) for checkpoints.
    pub fn optimizer_state(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(self.optimizer.vars.len() * 2);
        for (index, (name, _)) in self.optimizer.vars.iter().enumerate() {
            let (m, v) = self.optimizer.moments_of(index)?;
            tensors.push((format!("{name}.exp_avg"), m));
            tensors.push((format!("{name}.exp_avg_sq"), v));
        }
        safetensors::serialize(tensors, None)
            .map_err(|e| EngineError::InvalidAdapter(format!("serialize optimizer state: {e}")))
    }

    /// Restores moments and the step counter saved by a checkpoint.
    pub fn restore_optimizer_state(&mut self, bytes: &[u8], steps_done: u64) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(bytes, self.engine.device())?;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for (name, var) in &self.optimizer.vars {
            let mut take = |suffix: &str| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let t = tensors.remove(&key).ok_or_else(|| {
                    EngineError::InvalidAdapter(format!("optimizer state lacks {key}"))
                })?;
                if t.dims() != var.dims() {
                    return Err(EngineError::InvalidAdapter(format!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?.flatten_all()?)
            };
            first.push(take("exp_avg")?);
            second.push(take("exp_avg_sq")?);
        }
        self.optimizer.m.set(&Tensor::cat(&first, 0)?)?;
        self.optimizer.v.set(&Tensor::cat(&second, 0)?)?;
        self.step = steps_done;
        Ok(())
    }
}

/// A packed batch's own mask and positions, or those prepared for its shape.
fn attention_inputs<'a>(
    by_shape: &'a HashMap<(usize, usize), AttentionInputs>,
    batch: &'a SftBatch,
) -> Result<&'a AttentionInputs> {
    match &batch.packed {
        Some(packed) => Ok(packed),
        None => by_shape
            .get(&batch.inputs.dims2()?)
            .ok_or_else(|| EngineError::InvalidRequest("attention inputs not prepared".into())),
    }
}

/// Encoded exchanges in one row: the tokens they all start with once (for LIFT, the chat
/// template's system turn and the prompt naming the document), then each exchange's own
/// tokens at the positions they have alone, attending to the shared tokens and to their own
/// only (`mask`). The logits at answer positions, so the loss and its gradient, are those of
/// the right-padded batch; the shared tokens are computed once and no padding is.
pub(crate) struct PackedRow {
    pub inputs: Vec<u32>,
    pub positions: Vec<u32>,
    /// Which exchange each input belongs to; `None` for the shared start.
    owners: Vec<Option<usize>>,
    pub flat: Vec<u32>,
    pub targets: Vec<u32>,
}

impl PackedRow {
    /// Additive `[t, t]` mask: causal, and an exchange's tokens see only the shared start and
    /// their own exchange.
    pub fn mask(&self) -> Vec<f32> {
        let owners = &self.owners;
        (0..owners.len())
            .flat_map(|query| {
                (0..owners.len()).map(move |key| {
                    let visible =
                        key <= query && (owners[key].is_none() || owners[key] == owners[query]);
                    if visible {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect()
    }
}

/// Examples in order, grouped into packed rows of at most `per_row` examples and
/// `row_tokens` tokens each (an example longer than that alone in its row).
fn cpu_rows(
    encoded: Vec<EncodedExample>,
    per_row: usize,
    row_tokens: usize,
) -> Vec<Vec<EncodedExample>> {
    let mut rows: Vec<Vec<EncodedExample>> = Vec::new();
    for example in encoded {
        let fits = rows.last().is_some_and(|row| {
            let with: Vec<&EncodedExample> = row.iter().chain([&example]).collect();
            with.len() <= per_row && packed_len(&with) <= row_tokens
        });
        match rows.last_mut() {
            Some(row) if fits => row.push(example),
            _ => rows.push(vec![example]),
        }
    }
    rows
}

/// How many of the exchanges' first tokens a packed row computes once. Shared inputs only:
/// no answer token (its loss belongs to one exchange) and not an exchange's last token
/// (only ever a target).
fn shared_len(encoded: &[&EncodedExample]) -> usize {
    let first = &encoded[0].ids;
    (0..first.len())
        .take_while(|&j| {
            encoded
                .iter()
                .all(|e| j + 1 < e.ids.len() && e.ids[j] == first[j] && !e.is_answer[j])
        })
        .count()
}

/// The inputs of `packed_row(encoded)`: the shared start once, each exchange's own tokens
/// but its last.
fn packed_len(encoded: &[&EncodedExample]) -> usize {
    let shared = shared_len(encoded);
    shared
        + encoded
            .iter()
            .map(|e| e.ids.len() - 1 - shared)
            .sum::<usize>()
}

pub(crate) fn packed_row(encoded: &[EncodedExample]) -> PackedRow {
    let first = &encoded[0].ids;
    let shared = shared_len(&encoded.iter().collect::<Vec<_>>());
    let mut row = PackedRow {
        inputs: first[..shared].to_vec(),
        positions: (0..shared as u32).collect(),
        owners: vec![None; shared],
        flat: Vec::new(),
        targets: Vec::new(),
    };
    for (owner, e) in encoded.iter().enumerate() {
        if shared > 0 && e.is_answer[shared] {
            row.flat.push(shared as u32 - 1);
            row.targets.push(e.ids[shared]);
        }
        for j in shared..e.ids.len() - 1 {
            if e.is_answer[j + 1] {
                row.flat.push(row.inputs.len() as u32);
                row.targets.push(e.ids[j + 1]);
            }
            row.inputs.push(e.ids[j]);
            row.positions.push(j as u32);
            row.owners.push(Some(owner));
        }
    }
    row
}

/// One less than the longest exchange: its last token is only ever a target.
fn padded_width(encoded: &[EncodedExample]) -> usize {
    encoded
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(1)
        .max(2)
        - 1
}

/// Encoded exchanges right-padded into one `[b, t]` batch of inputs (`t` is one less than the
/// longest exchange: the last token is only ever a target), and every position whose next
/// token is an answer token: its index into the flattened batch, that token, and its row.
pub(crate) struct AnswerPositions {
    pub inputs: Vec<u32>,
    pub t: usize,
    pub flat: Vec<u32>,
    pub targets: Vec<u32>,
    pub owners: Vec<usize>,
}

/// At least `min_t` wide: the extra positions are padding.
pub(crate) fn answer_positions(
    encoded: &[EncodedExample],
    pad: u32,
    min_t: usize,
) -> AnswerPositions {
    let t = padded_width(encoded).max(min_t);
    let mut positions = AnswerPositions {
        inputs: Vec::with_capacity(encoded.len() * t),
        t,
        flat: Vec::new(),
        targets: Vec::new(),
        owners: Vec::new(),
    };
    for (i, e) in encoded.iter().enumerate() {
        for j in 0..t {
            positions.inputs.push(e.ids.get(j).copied().unwrap_or(pad));
            if e.is_answer.get(j + 1).copied().unwrap_or(false) {
                positions.flat.push((i * t + j) as u32);
                positions.targets.push(e.ids[j + 1]);
                positions.owners.push(i);
            }
        }
    }
    positions
}

/// A user prompt and the assistant's reply in the model's chat template, as training sees
/// them: the reply's tokens (its end-of-turn included) carry the loss. At most `max_seq_len`
/// tokens: a long reply is cut at its end, then the prompt loses its start.
pub(crate) fn encode_exchange(
    engine: &Engine,
    prompt: &str,
    reply: &str,
    max_seq_len: usize,
) -> Result<EncodedExample> {
    let tokenizer = &engine.tokenizer;
    let user = [ChatMessage::new("user", prompt)];
    let prompt_text = tokenizer.render(&user, true)?;
    let full_text = tokenizer.render(
        &[user[0].clone(), ChatMessage::new("assistant", reply)],
        false,
    )?;
    let answer_text = full_text.strip_prefix(&prompt_text).ok_or_else(|| {
        EngineError::Template("the chat template does not extend the prompt with the reply".into())
    })?;
    let mut prompt_ids = tokenizer.encode(&prompt_text)?;
    let mut answer_ids = tokenizer.encode(answer_text)?;
    let limit = max_seq_len.min(engine.config().max_position_embeddings);
    answer_ids.truncate(limit.saturating_sub(1).max(1));
    let room = limit.saturating_sub(answer_ids.len());
    if prompt_ids.len() > room {
        prompt_ids.drain(..prompt_ids.len() - room);
    }
    let is_answer = std::iter::repeat_n(false, prompt_ids.len())
        .chain(std::iter::repeat_n(true, answer_ids.len()))
        .collect();
    prompt_ids.extend(answer_ids);
    Ok(EncodedExample {
        ids: prompt_ids,
        is_answer,
    })
}

/// The log-probability of each target token under its row of `logits` (`[n, vocab]`), as
/// `[n, 1]`; the max is detached because it only keeps the exponent small.
pub(crate) fn target_log_probs(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if crate::fused::applies(logits) {
        return crate::fused::target_log_probs(logits, targets);
    }
    composed_target_log_probs(logits, targets)
}

/// `target_log_probs` from candle's basic ops, for the devices and dtypes the fused op
/// does not serve.
pub(crate) fn composed_target_log_probs(
    logits: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum_exp = shifted.exp()?.sum_keepdim(1)?.log()?;
    let target_logit = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    target_logit - log_sum_exp
}

/// Mean cross-entropy over the answer tokens of `batch` (its padding slots weigh nothing).
fn batch_loss(
    engine: &Engine,
    adapter: &LoraAdapter,
    attention: &AttentionInputs,
    batch: &SftBatch,
) -> candle_core::Result<Tensor> {
    let logits = engine.model.forward(
        &ForwardInput {
            input_ids: &batch.inputs,
            positions: &attention.positions,
            mask: Some(&attention.mask),
            adapter: Some(adapter),
            logits: LogitsFor::FlatPositions(&batch.answer_rows),
            decoding: false,
        },
        None,
    )?;
    let log_probs = target_log_probs(&logits, &batch.answer_targets)?.squeeze(1)?;
    let weights = batch.answer_weights.to_dtype(log_probs.dtype())?;
    (log_probs * weights)?.sum_all()?.neg()
}

/// AdamW with global-norm clipping over all LoRA variables at once. Gradients and values
/// are gathered into one flat f32 buffer, so a step is a few dozen kernels plus a copy per
/// variable instead of ~17 kernels per variable (over 7,000 for SmolLM2 at rank 128). The
/// per-step scalars (learning rate, bias corrections) live on the device, and every result
/// is written in place, so a step captured as a CUDA graph replays correctly.
struct FlatAdamW {
    vars: Vec<(String, Var)>,
    /// Offset of each variable in the flat buffers.
    offsets: Vec<usize>,
    m: Var,
    v: Var,
    /// `[learning rate, 1 / (1 - beta1^t), 1 / (1 - beta2^t)]` of the coming step.
    schedule: Var,
    /// The last step's mean loss and gradient norm (before clipping).
    loss: Var,
    grad_norm: Var,
}

impl FlatAdamW {
    fn new(vars: Vec<(String, Var)>, device: &candle_core::Device) -> Result<Self> {
        let mut offsets = Vec::with_capacity(vars.len());
        let mut total = 0;
        for (_, var) in &vars {
            offsets.push(total);
            total += var.elem_count();
        }
        let zeros = |n: usize| Var::zeros(n, DType::F32, device);
        Ok(Self {
            vars,
            offsets,
            m: zeros(total)?,
            v: zeros(total)?,
            schedule: zeros(3)?,
            loss: Var::zeros((), DType::F32, device)?,
            grad_norm: Var::zeros((), DType::F32, device)?,
        })
    }

    /// Uploads the scalars of step number `step` (1-based), outside any graph.
    fn prepare_step(&self, lr: f64, step: u64, o: &TrainerOptions) -> Result<()> {
        let bias1 = 1.0 - o.beta1.powi(step as i32);
        let bias2 = 1.0 - o.beta2.powi(step as i32);
        let values = [lr as f32, (1.0 / bias1) as f32, (1.0 / bias2) as f32];
        self.schedule
            .set(&Tensor::new(&values, self.schedule.device())?)?;
        Ok(())
    }

    /// Backward from `loss`, then the update; device work only.
    fn apply(&self, loss: &Tensor, o: &TrainerOptions) -> candle_core::Result<()> {
        let grad = self.gradient(loss)?;
        self.update(loss, grad, o)
    }

    /// The variables' gradients of `loss`, as one flat buffer.
    fn gradient(&self, loss: &Tensor) -> candle_core::Result<Tensor> {
        let grads = loss.backward()?;
        self.flat(&|var| match grads.get(var.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => var.zeros_like(),
        })
    }

    /// All variables, each picked by `pick`, flattened into one buffer.
    fn flat(
        &self,
        pick: &dyn Fn(&Var) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let parts = self
            .vars
            .iter()
            .map(|(_, var)| pick(var)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// Clipping and the AdamW update from the flat gradient of `loss`, which is recorded.
    fn update(&self, loss: &Tensor, grad: Tensor, o: &TrainerOptions) -> candle_core::Result<()> {
        self.loss.set(&loss.detach().to_dtype(DType::F32)?)?;
        if crate::fused::applies(&grad) {
            self.update_in_place(grad, o)
        } else {
            self.update_composed(grad, o)
        }
    }

    /// `update` on the CPU: every buffer written in place (fused_adamw.rs).
    fn update_in_place(&self, grad: Tensor, o: &TrainerOptions) -> candle_core::Result<()> {
        use crate::fused_adamw::{norm, Moment, ParameterStep};
        let norm = norm(&grad)?;
        self.grad_norm.set(&norm)?;
        let norm = f64::from(norm.to_scalar::<f32>()?);
        let scale = if o.max_grad_norm > 0.0 {
            (o.max_grad_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        } as f32;
        let moment = |beta: f64, squared| Moment {
            beta: beta as f32,
            keep: (1.0 - beta) as f32,
            scale,
            squared,
        };
        self.m.inplace_op2(&grad, &moment(o.beta1, false))?;
        self.v.inplace_op2(&grad, &moment(o.beta2, true))?;
        drop(grad);
        let schedule = self.schedule.to_vec1::<f32>()?;
        for ((_, var), &offset) in self.vars.iter().zip(&self.offsets) {
            let step = ParameterStep {
                offset,
                learning_rate: schedule[0],
                first_correction: schedule[1],
                second_correction: schedule[2],
                eps: o.eps as f32,
                weight_decay: o.weight_decay as f32,
            };
            var.inplace_op3(&self.m, &self.v, &step)?;
        }
        Ok(())
    }

    /// `update` from candle's ops, which a CUDA graph replays.
    fn update_composed(&self, grad: Tensor, o: &TrainerOptions) -> candle_core::Result<()> {
        let norm = grad.sqr()?.sum_all()?.sqrt()?;
        self.grad_norm.set(&norm)?;
        let grad = if o.max_grad_norm > 0.0 {
            // min(1, max / (norm + 1e-6)) from device ops alone: r - relu(r - 1).
            let ratio = ((&norm + 1e-6)?.recip()? * o.max_grad_norm)?;
            let clip = (&ratio - (&ratio - 1.0)?.relu()?)?;
            grad.broadcast_mul(&clip)?
        } else {
            grad
        };
        let m = ((self.m.as_tensor() * o.beta1)? + (&grad * (1.0 - o.beta1))?)?;
        let v = ((self.v.as_tensor() * o.beta2)? + (grad.sqr()? * (1.0 - o.beta2))?)?;
        self.m.set(&m)?;
        self.v.set(&v)?;
        let scalar = |i: usize| self.schedule.narrow(0, i, 1);
        let m_hat = m.broadcast_mul(&scalar(1)?)?;
        let v_hat = v.broadcast_mul(&scalar(2)?)?;
        let mut update = (m_hat / (v_hat.sqrt()? + o.eps)?)?;
        let theta = self.flat(&|var| Ok(var.as_tensor().clone()))?;
        if o.weight_decay > 0.0 {
            update = (update + (&theta * o.weight_decay)?)?;
        }
        let theta = (theta - update.broadcast_mul(&scalar(0)?)?)?;
        for ((_, var), &offset) in self.vars.iter().zip(&self.offsets) {
            var.set(
                &theta
                    .narrow(0, offset, var.elem_count())?
                    .reshape(var.shape())?,
            )?;
        }
        Ok(())
    }

    fn last_loss_and_grad_norm(&self) -> Result<(f32, f32)> {
        Ok((
            self.loss.to_scalar::<f32>()?,
            self.grad_norm.to_scalar::<f32>()?,
        ))
    }

    /// The first and second moment of variable `index`, shaped like it.
    fn moments_of(&self, index: usize) -> Result<(Tensor, Tensor)> {
        let var = self.vars[index].1.as_tensor();
        // A fresh tensor of this variable's elements only: `copy()` would clone the whole flat
        // storage under the view, once per variable (16 GB of copying per checkpoint on
        // SmolLM2, 50 s on a CPU).
        let pick = |flat: &Var| {
            flat.narrow(0, self.offsets[index], var.elem_count())?
                .reshape(var.shape())?
                .affine(1.0, 0.0)
        };
        Ok((pick(&self.m)?, pick(&self.v)?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Tensor, Var};

    use super::{
        answer_positions, cpu_rows, graph_bucket, packed_len, packed_row, AnswerPositions,
        EncodedExample, SftBatch, SftExample, SftTrainer, TrainerOptions,
    };
    use crate::lora::LoraConfig;
    use crate::testing::{max_abs_diff, tiny_engine};

    /// The CPU's in-place AdamW writes what the composed one (the GPU's) computes, with
    /// clipping and weight decay on, over three steps.
    #[test]
    fn the_in_place_update_is_the_composed_update() {
        let device = candle_core::Device::Cpu;
        let start = [
            Tensor::randn(0f32, 1.0, (3, 70_000), &device).unwrap(),
            Tensor::randn(0f32, 1.0, (5, 4), &device).unwrap(),
        ];
        let optimizer = || {
            let vars = start
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("v{i}"), Var::from_tensor(t).unwrap()))
                .collect();
            super::FlatAdamW::new(vars, &device).unwrap()
        };
        let (in_place, composed) = (optimizer(), optimizer());
        let options = TrainerOptions {
            weight_decay: 0.01,
            max_grad_norm: 0.5,
            ..TrainerOptions::default()
        };
        for step in 1..=3 {
            let grad = Tensor::randn(0f32, 1.0, 210_020, &device).unwrap();
            for optimizer in [&in_place, &composed] {
                optimizer.prepare_step(1e-2, step, &options).unwrap();
            }
            in_place.update_in_place(grad.clone(), &options).unwrap();
            composed.update_composed(grad, &options).unwrap();
            let norms = [&in_place, &composed].map(|o| o.last_loss_and_grad_norm().unwrap().1);
            assert!((norms[0] - norms[1]).abs() < 1e-3 * norms[1], "{norms:?}");
            for index in 0..start.len() {
                let diff = max_abs_diff(&in_place.vars[index].1, &composed.vars[index].1);
                assert!(
                    diff < 1e-6,
                    "step {step}, variable {index} differs by {diff}"
                );
                let (m, v) = in_place.moments_of(index).unwrap();
                let (m_ref, v_ref) = composed.moments_of(index).unwrap();
                assert!(max_abs_diff(&m, &m_ref) < 1e-6 && max_abs_diff(&v, &v_ref) < 1e-6);
            }
        }
    }

    /// A step taken one example at a time (gradients summed, each weighted by its answer
    /// tokens) is the step of the whole batch: same loss, gradient norm and variables.
    #[test]
    fn a_step_in_micro_batches_is_the_step_of_the_whole_batch() {
        let engine = Arc::new(tiny_engine(5));
        let config = LoraConfig::new(4, 8.0, &[]).unwrap();
        let trainer_with = |micro: usize, row_tokens: usize| {
            let options = TrainerOptions {
                learning_rate: 1e-2,
                cpu_micro_batch: micro,
                cpu_row_tokens: row_tokens,
                ..TrainerOptions::default()
            };
            let adapter = engine.new_adapter(config.clone(), 7).unwrap();
            SftTrainer::new(engine.clone(), adapter, options).unwrap()
        };
        let (mut whole, mut micro) = (trainer_with(8, 4096), trainer_with(1, 4096));
        // Rows cut by their token count rather than their number of examples.
        let mut short_rows = trainer_with(8, 8);
        let examples = [
            SftExample {
                prompt: "Where is the lamp?".into(),
                answer: "On the shelf by the door.".into(),
            },
            SftExample {
                prompt: "Who lit it?".into(),
                answer: "Odalys.".into(),
            },
            SftExample {
                prompt: "When was the record lantern made, and by whom?".into(),
                answer: "In 1934.".into(),
            },
        ];
        for _ in 0..2 {
            let a = whole.step(&examples).unwrap();
            let b = micro.step(&examples).unwrap();
            let c = short_rows.step(&examples).unwrap();
            assert_same_step(&a, &b);
            assert_same_step(&a, &c);
            // One packed row computes the chat template's shared start once.
            assert!(a.tokens < b.tokens);
            assert_eq!(b.tokens, c.tokens);
        }
        assert_same_adapter(&whole, &micro);
        assert_same_adapter(&whole, &short_rows);
    }

    /// Rows keep the examples' order, hold at most `per_row` of them and `row_tokens`
    /// packed tokens, and an example longer than that alone.
    #[test]
    fn cpu_rows_are_capped_by_examples_and_by_packed_tokens() {
        // Four shared tokens, then `own` tokens no other example has; the last is answer.
        let example = |index: u32, own: u32| EncodedExample {
            ids: (0..4)
                .chain((0..own).map(|j| 1000 * (index + 1) + j))
                .collect(),
            is_answer: (0..4 + own as usize)
                .map(|j| j == 3 + own as usize)
                .collect(),
        };
        let lengths = |rows: &[Vec<EncodedExample>]| -> Vec<Vec<usize>> {
            rows.iter()
                .map(|row| row.iter().map(|e| e.ids.len() - 4).collect())
                .collect()
        };
        let make = |owns: &[u32]| {
            (0..)
                .zip(owns)
                .map(|(index, &own)| example(index, own))
                .collect::<Vec<_>>()
        };
        // By count: 4 shared + 3 x 2 own tokens (each without its last) = 10 <= 100.
        let rows = cpu_rows(make(&[3, 3, 3, 3, 3]), 3, 100);
        assert_eq!(lengths(&rows), vec![vec![3, 3, 3], vec![3, 3]]);
        // By tokens: a row of the 5 and the 10 would pack 4 + 4 + 9 = 17 > 16.
        let rows = cpu_rows(make(&[5, 10, 2, 40, 1]), 8, 16);
        assert_eq!(
            lengths(&rows),
            vec![vec![5], vec![10, 2], vec![40], vec![1]]
        );
        let refs: Vec<&EncodedExample> = rows[1].iter().collect();
        assert_eq!(packed_len(&refs), packed_row(&rows[1]).inputs.len());
    }

    /// Same loss, gradient norm and answer tokens.
    fn assert_same_step(a: &super::StepStats, b: &super::StepStats) {
        assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm.max(1.0));
        assert_eq!(a.answer_tokens, b.answer_tokens);
    }

    fn assert_same_adapter(a: &SftTrainer, b: &SftTrainer) {
        for ((name, a), (_, b)) in a
            .adapter()
            .named_vars()
            .iter()
            .zip(b.adapter().named_vars().iter())
        {
            let diff = max_abs_diff(a.as_tensor(), b.as_tensor());
            assert!(diff < 1e-5, "{name} differs by {diff}");
        }
    }

    /// Exchanges packed into one row behind their shared start give the loss and the step
    /// of the same exchanges right-padded into rows of their own, on fewer tokens; so do
    /// those rows padded further to the shape of a captured GPU step (more positions, and
    /// weightless answer slots).
    #[test]
    fn a_packed_row_and_a_batch_padded_to_a_graph_shape_train_as_the_padded_batch() {
        let engine = Arc::new(tiny_engine(5));
        let config = LoraConfig::new(4, 8.0, &[]).unwrap();
        let trainer = || {
            let options = TrainerOptions {
                learning_rate: 1e-2,
                ..TrainerOptions::default()
            };
            let adapter = engine.new_adapter(config.clone(), 7).unwrap();
            SftTrainer::new(engine.clone(), adapter, options).unwrap()
        };
        let (mut packed, mut padded, mut bucketed) = (trainer(), trainer(), trainer());
        let examples = [
            (
                "Please answer about \"Lamps\". Where is the lamp?",
                "On the shelf.",
            ),
            (
                "Please answer about \"Lamps\". Who lit it?",
                "Odalys, at dusk, every day.",
            ),
            (
                "Please answer about \"Lamps\". When was it made?",
                "In 1934.",
            ),
        ]
        .map(|(prompt, answer)| SftExample {
            prompt: prompt.into(),
            answer: answer.into(),
        });
        let encoded: Vec<EncodedExample> =
            examples.iter().map(|e| padded.encode(e).unwrap()).collect();
        let row = packed_row(&encoded);
        let shared = row.owners.iter().take_while(|o| o.is_none()).count();
        assert!(shared > 10, "the prompts' start is shared: {shared}");
        let batch_of = |p: AnswerPositions, slots: usize| {
            let shape = (encoded.len(), p.t);
            SftBatch::with_answer_slots(
                p.inputs,
                shape,
                p.flat,
                p.targets,
                slots,
                None,
                engine.device(),
            )
            .unwrap()
        };
        let padded_positions = answer_positions(&encoded, engine.tokenizer.pad_id(), 0);
        assert_eq!(row.targets.len(), padded_positions.targets.len());
        let (natural_t, answer_tokens) = (padded_positions.t, padded_positions.flat.len());
        let padded_batch = batch_of(padded_positions, answer_tokens);
        let width = graph_bucket(natural_t + 1);
        let wide = answer_positions(&encoded, engine.tokenizer.pad_id(), width);
        assert_eq!(wide.t, width);
        let slots = graph_bucket(answer_tokens + 1);
        let bucketed_batch = batch_of(wide, slots);
        assert_eq!(bucketed_batch.answer_rows.dims1().unwrap(), slots);
        let packed_batch = packed.batch(&examples).unwrap();
        assert!(packed_batch.packed.is_some());
        for _ in 0..2 {
            let a = packed.step_batch(&packed_batch).unwrap();
            let b = padded.step_batch(&padded_batch).unwrap();
            let c = bucketed.step_batch(&bucketed_batch).unwrap();
            assert_same_step(&a, &b);
            assert_same_step(&c, &b);
            assert!(a.tokens < b.tokens, "{} vs {}", a.tokens, b.tokens);
        }
        assert_same_adapter(&packed, &padded);
        assert_same_adapter(&bucketed, &padded);
    }

    #[test]
    fn graph_buckets_are_powers_of_two_of_at_least_16() {
        let sizes: Vec<usize> = [1, 16, 17, 33, 64, 65, 200].map(graph_bucket).to_vec();
        assert_eq!(sizes, [16, 16, 32, 64, 64, 128, 256]);
        for n in 1..2000 {
            let bucket = graph_bucket(n);
            assert!(
                bucket >= n && (bucket == 16 || bucket < 2 * n),
                "{n} -> {bucket}"
            );
        }
    }

    /// The flat, device-scalar AdamW against AdamW written per variable the textbook way,
    /// with clipping and weight decay both active.
    #[test]
    fn flat_adamw_matches_per_variable_adamw() {
        let engine = Arc::new(tiny_engine(5));
        let config = LoraConfig::new(4, 8.0, &[]).unwrap();
        let o = TrainerOptions {
            learning_rate: 1e-2,
            weight_decay: 0.1,
            max_grad_norm: 0.05,
            ..TrainerOptions::default()
        };
        let adapter = engine.new_adapter(config.clone(), 7).unwrap();
        let mut trainer = SftTrainer::new(engine.clone(), adapter, o.clone()).unwrap();
        let reference_adapter = engine.new_adapter(config, 7).unwrap();
        let mut reference =
            SftTrainer::new(engine.clone(), reference_adapter.clone(), o.clone()).unwrap();
        let vars: Vec<Var> = reference_adapter.vars();
        let mut moments: Vec<(Tensor, Tensor)> = vars
            .iter()
            .map(|v| (v.zeros_like().unwrap(), v.zeros_like().unwrap()))
            .collect();
        let examples = [
            SftExample {
                prompt: "Where is the lamp?".into(),
                answer: "On the shelf.".into(),
            },
            SftExample {
                prompt: "Who lit it?".into(),
                answer: "Odalys.".into(),
            },
        ];
        let mut clipped = false;
        for step in 1..=3 {
            let batch = trainer.batch(&examples).unwrap();
            let stats = trainer.step_batch(&batch).unwrap();

            let loss = reference.loss(&batch).unwrap();
            assert!((stats.loss - loss.to_scalar::<f32>().unwrap()).abs() < 1e-5);
            let grads = loss.backward().unwrap();
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            let norm = grads
                .iter()
                .map(|g| {
                    g.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .sum::<f32>()
                .sqrt();
            assert!((stats.grad_norm - norm).abs() <= 1e-4 * norm.max(1.0));
            let clip = (o.max_grad_norm / (norm as f64 + 1e-6)).min(1.0);
            clipped |= clip < 1.0;
            let bias1 = 1.0 - o.beta1.powi(step);
            let bias2 = 1.0 - o.beta2.powi(step);
            for ((var, (m, v)), g) in vars.iter().zip(moments.iter_mut()).zip(&grads) {
                let g = (g * clip).unwrap();
                *m = ((&*m * o.beta1).unwrap() + (&g * (1.0 - o.beta1)).unwrap()).unwrap();
                *v = ((&*v * o.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - o.beta2)).unwrap())
                    .unwrap();
                let update = ((&*m / bias1).unwrap()
                    / ((&*v / bias2).unwrap().sqrt().unwrap() + o.eps).unwrap())
                .unwrap();
                let decayed = (var.as_tensor() * (1.0 - o.learning_rate * o.weight_decay)).unwrap();
                var.set(&(decayed - (update * o.learning_rate).unwrap()).unwrap())
                    .unwrap();
            }
        }
        assert!(clipped, "the test must exercise clipping");
        for ((name, ours), reference) in trainer.adapter().named_vars().iter().zip(&vars) {
            let diff = max_abs_diff(ours.as_tensor(), reference.as_tensor());
            assert!(diff < 1e-5, "{name} differs by {diff}");
        }
        let (m, v) = trainer.optimizer.moments_of(3).unwrap();
        assert!(max_abs_diff(&m, &moments[3].0) < 1e-6);
        assert!(max_abs_diff(&v, &moments[3].1) < 1e-6);
    }
}
