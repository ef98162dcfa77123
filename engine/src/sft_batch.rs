//! A training step's batch on the device, shared by the trainer (`train.rs`), which builds
//! one per step, and the CUDA graphs (`graph.rs`), which replay a step on a copy of one.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::model::causal_mask;

/// A batch: inputs `[b, t]`, and for the positions whose next token is an answer token,
/// their flat index into `b * t` (`answer_rows`, u32), that next token (`answer_targets`,
/// u32) and its weight in the loss (`answer_weights`, f32: 1 / `answer_tokens`, or 0 for a
/// slot that only pads the batch to the shape of a captured step). Only those positions get
/// logits and loss. Either right-padded rows, whose causal mask depends on the shape alone,
/// or one packed row (`packed_row`) with its own mask.
pub struct SftBatch {
    pub inputs: Tensor,
    pub answer_rows: Tensor,
    pub answer_targets: Tensor,
    pub answer_weights: Tensor,
    pub answer_tokens: usize,
    pub(crate) packed: Option<AttentionInputs>,
}

impl SftBatch {
    /// Host vectors into device tensors; `rows` and `targets` pair up.
    pub(crate) fn new(
        inputs: Vec<u32>,
        shape: (usize, usize),
        rows: Vec<u32>,
        targets: Vec<u32>,
        packed: Option<AttentionInputs>,
        device: &Device,
    ) -> Result<Self> {
        let slots = rows.len();
        Self::with_answer_slots(inputs, shape, rows, targets, slots, packed, device)
    }

    /// As `new`, with the answer positions padded to `slots` by weightless ones (position 0,
    /// target 0), which add nothing to the loss or its gradient.
    pub(crate) fn with_answer_slots(
        inputs: Vec<u32>,
        shape: (usize, usize),
        mut rows: Vec<u32>,
        mut targets: Vec<u32>,
        slots: usize,
        packed: Option<AttentionInputs>,
        device: &Device,
    ) -> Result<Self> {
        let answer_tokens = rows.len();
        let slots = slots.max(answer_tokens);
        let mut weights = vec![1.0 / answer_tokens.max(1) as f32; answer_tokens];
        weights.resize(slots, 0.0);
        rows.resize(slots, 0);
        targets.resize(slots, 0);
        Ok(Self {
            inputs: Tensor::from_vec(inputs, shape, device)?,
            answer_rows: Tensor::from_vec(rows, slots, device)?,
            answer_targets: Tensor::from_vec(targets, slots, device)?,
            answer_weights: Tensor::from_vec(weights, slots, device)?,
            answer_tokens,
            packed,
        })
    }
}

/// A GPU step's sequence length and answer positions are rounded up to a power of two (at
/// least 16). Each distinct batch shape is a CUDA graph of its own (`graph.rs`), which keeps
/// its activation memory, and a job's batches of varied tasks almost never repeat a shape
/// exactly: unrounded, its steps ran eagerly at about twice the time of a replayed one
/// (docs/benchmarks.md). Padding costs little at these sizes, where a step is bound by its
/// launches, not its arithmetic; fewer shapes mean fewer captures and less graph memory.
pub(crate) fn graph_bucket(n: usize) -> usize {
    n.max(16).next_power_of_two()
}

/// The causal mask and rope positions of a right-padded `[b, t]` batch that starts at
/// position 0 (training steps and scoring).
pub(crate) struct AttentionInputs {
    pub mask: Tensor,
    pub positions: Tensor,
}

impl AttentionInputs {
    pub fn new(b: usize, t: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            mask: causal_mask(t, 0, dtype, device)?,
            positions: Tensor::arange(0u32, t as u32, device)?
                .unsqueeze(0)?
                .repeat((b, 1))?,
        })
    }
}
