//! Supervised fine-tuning of a LoRA adapter: chat-formatted (prompt, answer) pairs, loss on
//! the answer tokens only, AdamW with global-norm clipping and a learning-rate schedule.
//! candle-nn's AdamW has no clipping, schedules or state export, hence our own.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::lora::LoraAdapter;
use crate::model::{causal_mask, ForwardInput, LogitsFor};
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
    /// Linear warm-up then cosine decay to zero at `total_steps`.
    Cosine {
        warmup_steps: u64,
        total_steps: u64,
    },
}

impl LrSchedule {
    pub fn learning_rate(&self, base: f64, step: u64) -> f64 {
        match *self {
            Self::Constant => base,
            Self::Cosine {
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    return base * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
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

/// A right-padded batch: inputs `[b, t]`, and for the positions whose next token is an
/// answer token, their flat index into `b * t` (`answer_rows`, u32) and that next token
/// (`answer_targets`, u32). Only those positions get logits and loss.
pub struct SftBatch {
    pub inputs: Tensor,
    pub answer_rows: Tensor,
    pub answer_targets: Tensor,
    pub answer_tokens: usize,
}

pub struct SftTrainer {
    engine: Arc<Engine>,
    adapter: LoraAdapter,
    options: TrainerOptions,
    vars: Vec<(String, Var)>,
    moments: Vec<(Tensor, Tensor)>,
    step: u64,
}

impl SftTrainer {
    pub fn new(engine: Arc<Engine>, adapter: LoraAdapter, options: TrainerOptions) -> Result<Self> {
        let vars = adapter.named_vars();
        let moments = vars
            .iter()
            .map(|(_, v)| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            engine,
            adapter,
            options,
            vars,
            moments,
            step: 0,
        })
    }

    pub fn adapter(&self) -> &LoraAdapter {
        &self.adapter
    }

    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn encode(&self, example: &SftExample) -> Result<EncodedExample> {
        let tokenizer = &self.engine.tokenizer;
        let user = [ChatMessage::new("user", example.prompt.clone())];
        let prompt_text = tokenizer.render(&user, true)?;
        let full_text = tokenizer.render(
            &[
                user[0].clone(),
                ChatMessage::new("assistant", example.answer.clone()),
            ],
            false,
        )?;
        let answer_text = full_text.strip_prefix(&prompt_text).ok_or_else(|| {
            EngineError::Template(
                "the chat template does not extend the prompt with the reply".into(),
            )
        })?;
        let mut prompt_ids = tokenizer.encode(&prompt_text)?;
        let mut answer_ids = tokenizer.encode(answer_text)?;
        let limit = self
            .options
            .max_seq_len
            .min(self.engine.config().max_position_embeddings);
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

    pub fn batch(&self, examples: &[SftExample]) -> Result<SftBatch> {
        if examples.is_empty() {
            return Err(EngineError::InvalidRequest("empty training batch".into()));
        }
        let encoded = examples
            .iter()
            .map(|e| self.encode(e))
            .collect::<Result<Vec<_>>>()?;
        let t = encoded
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(1)
            .max(2)
            - 1;
        let pad = self.engine.tokenizer.pad_id();
        let (mut inputs, mut rows, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e) in encoded.iter().enumerate() {
            for j in 0..t {
                inputs.push(e.ids.get(j).copied().unwrap_or(pad));
                if e.is_answer.get(j + 1).copied().unwrap_or(false) {
                    rows.push((i * t + j) as u32);
                    targets.push(e.ids[j + 1]);
                }
            }
        }
        if rows.is_empty() {
            return Err(EngineError::InvalidRequest(
                "no answer tokens in the batch".into(),
            ));
        }
        let b = encoded.len();
        let device = self.engine.device();
        let answer_tokens = rows.len();
        Ok(SftBatch {
            inputs: Tensor::from_vec(inputs, (b, t), device)?,
            answer_rows: Tensor::from_vec(rows, answer_tokens, device)?,
            answer_targets: Tensor::from_vec(targets, answer_tokens, device)?,
            answer_tokens,
        })
    }

    /// Mean cross-entropy over answer tokens.
    pub fn loss(&self, batch: &SftBatch) -> Result<Tensor> {
        let (b, t) = batch.inputs.dims2()?;
        let device = self.engine.device();
        let positions = Tensor::arange(0u32, t as u32, device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let mask = causal_mask(t, 0, self.engine.model.dtype(), device)?;
        let logits = self.engine.model.forward(
            &ForwardInput {
                input_ids: &batch.inputs,
                positions: &positions,
                mask: Some(&mask),
                adapter: Some(&self.adapter),
                logits: LogitsFor::FlatPositions(&batch.answer_rows),
            },
            None,
        )?;
        let max = logits.max_keepdim(1)?.detach();
        let shifted = logits.broadcast_sub(&max)?;
        let log_sum_exp = shifted.exp()?.sum_keepdim(1)?.log()?;
        let target_logit = shifted.gather(&batch.answer_targets.unsqueeze(1)?, 1)?;
        Ok((log_sum_exp - target_logit)?.mean_all()?)
    }

    /// One optimizer step on `examples`.
    pub fn step(&mut self, examples: &[SftExample]) -> Result<StepStats> {
        let batch = self.batch(examples)?;
        self.step_batch(&batch)
    }

    /// One optimizer step on an already encoded batch.
    pub fn step_batch(&mut self, batch: &SftBatch) -> Result<StepStats> {
        let loss = self.loss(batch)?;
        let grads = loss.backward()?;
        let gradients = self
            .vars
            .iter()
            .map(|(_, var)| match grads.get(var.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(var.zeros_like()?),
            })
            .collect::<Result<Vec<_>>>()?;
        let squares = gradients
            .iter()
            .map(|g| g.sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let grad_norm = Tensor::stack(&squares, 0)?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        let clip =
            if self.options.max_grad_norm > 0.0 && grad_norm as f64 > self.options.max_grad_norm {
                self.options.max_grad_norm / (grad_norm as f64 + 1e-6)
            } else {
                1.0
            };
        let lr = self
            .options
            .schedule
            .learning_rate(self.options.learning_rate, self.step);
        self.step += 1;
        let o = &self.options;
        let bias1 = 1.0 - o.beta1.powi(self.step as i32);
        let bias2 = 1.0 - o.beta2.powi(self.step as i32);
        for (((_, var), (m, v)), g) in self
            .vars
            .iter()
            .zip(self.moments.iter_mut())
            .zip(&gradients)
        {
            let g = (g * clip)?;
            *m = ((&*m * o.beta1)? + (&g * (1.0 - o.beta1))?)?;
            *v = ((&*v * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
            let m_hat = (&*m / bias1)?;
            let v_hat = (&*v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + o.eps)?)?;
            let theta = var.as_tensor();
            let decayed = (theta * (1.0 - lr * o.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(StepStats {
            loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
            answer_tokens: batch.answer_tokens,
            tokens: batch.inputs.elem_count(),
            learning_rate: lr,
            grad_norm,
        })
    }

    /// AdamW moments as safetensors (`<var>.exp_avg`, `<var>.exp_avg_sq`) for checkpoints.
    pub fn optimizer_state(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::with_capacity(self.vars.len() * 2);
        for ((name, _), (m, v)) in self.vars.iter().zip(&self.moments) {
            tensors.push((format!("{name}.exp_avg"), m.clone()));
            tensors.push((format!("{name}.exp_avg_sq"), v.clone()));
        }
        safetensors::serialize(tensors, None)
            .map_err(|e| EngineError::InvalidAdapter(format!("serialize optimizer state: {e}")))
    }

    /// Restores moments and the step counter saved by a checkpoint.
    pub fn restore_optimizer_state(&mut self, bytes: &[u8], steps_done: u64) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(bytes, self.engine.device())?;
        for ((name, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
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
                Ok(t)
            };
            *moments = (take("exp_avg")?, take("exp_avg_sq")?);
        }
        self.step = steps_done;
        Ok(())
    }
}
