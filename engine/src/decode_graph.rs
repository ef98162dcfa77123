//! Decoding steps replayed as CUDA graphs. A decoding step of a small model is a few
//! thousand small kernels, and the GPU waits on the CPU launching them (about 13 ms a step
//! for SmolLM2 whatever the batch); a captured step is one launch.
//!
//! A generation call gets one graph for its batch: the KV cache is moved into buffers of a
//! fixed capacity (`KvCache::fix_capacity`), the step reads its ids, positions, mask and the
//! cache column it writes from buffers of fixed shape, and writes its logits into another.
//! As in `graph.rs`, the first step runs eagerly with candle's upload cache on, the second
//! is captured and launched, later ones copy their inputs into the buffers and relaunch it.
//! Finished rows stay in the batch (their tokens are ignored), so the shapes never change.

use std::sync::RwLockReadGuard;

use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::{CudaDevice, DType, Result, Tensor, Var};
use tracing::{debug, warn};

use crate::generate::DecodeInputs;
use crate::graph::record_graph;
use crate::lora::LoraAdapter;
use crate::model::{ForwardInput, KvCache, LogitsFor};
use crate::Engine;

enum State {
    /// No step has run yet.
    Cold,
    /// One step ran eagerly with the upload cache on; the next is captured.
    Warm,
    Captured(CudaGraph),
    /// The capture failed; steps run eagerly.
    Eager,
}

pub(crate) struct DecodeGraph {
    device: CudaDevice,
    rows: usize,
    capacity: usize,
    ids: Var,
    positions: Var,
    mask: Var,
    /// `[rows, 1, vocab]` f32, the step's output.
    logits: Var,
    state: State,
}

impl DecodeGraph {
    pub fn new(engine: &Engine, device: &CudaDevice, rows: usize, capacity: usize) -> Result<Self> {
        let model = &engine.model;
        let on = model.device();
        Ok(Self {
            device: device.clone(),
            rows,
            capacity,
            ids: Var::zeros((rows, 1), DType::U32, on)?,
            positions: Var::zeros((rows, 1), DType::U32, on)?,
            mask: Var::zeros((rows, 1, 1, capacity), model.dtype(), on)?,
            logits: Var::zeros((rows, 1, model.config.vocab_size), DType::F32, on)?,
            state: State::Cold,
        })
    }

    /// Runs one decoding step over `cache` (of this graph's capacity) and returns its logits
    /// `[rows, 1, vocab]`. They live in the graph's output buffer: read them before the next
    /// step. `turn` is the caller's shared turn on the stream; a capture trades it for the
    /// stream alone and takes it back.
    pub fn step<'e>(
        &mut self,
        engine: &'e Engine,
        turn: &mut Option<RwLockReadGuard<'e, ()>>,
        adapter: Option<&LoraAdapter>,
        cache: &mut KvCache,
        inputs: DecodeInputs,
    ) -> Result<Tensor> {
        let on = engine.model.device();
        let (rows, capacity) = (self.rows, self.capacity);
        self.ids
            .set(&Tensor::from_vec(inputs.ids, (rows, 1), on)?)?;
        self.positions
            .set(&Tensor::from_vec(inputs.positions, (rows, 1), on)?)?;
        let mask = Tensor::from_vec(inputs.mask, (rows, 1, 1, capacity), on)?;
        self.mask.set(&mask.to_dtype(engine.model.dtype())?)?;
        cache.set_write_column(inputs.column)?;
        match &self.state {
            State::Captured(graph) => graph.launch().map_err(candle_core::Error::wrap)?,
            State::Eager => self.run(engine, adapter, cache)?,
            State::Cold => {
                let _upload_cache = self.device.enable_cuda_graph_htod_cache();
                self.run(engine, adapter, cache)?;
                self.state = State::Warm;
            }
            // A trainer that started since this generation did makes a capture unsafe.
            State::Warm if !engine.may_capture_decoding() => {
                self.state = State::Eager;
                self.run(engine, adapter, cache)?;
            }
            State::Warm => {
                turn.take();
                let exclusive = engine.exclusive_stream_turn();
                let captured = record_graph(&self.device, || self.run(engine, adapter, cache));
                drop(exclusive);
                *turn = Some(engine.shared_stream_turn());
                match captured {
                    Ok(graph) => {
                        debug!(rows, capacity, "captured the decoding step as a CUDA graph");
                        graph.launch().map_err(candle_core::Error::wrap)?;
                        self.state = State::Captured(graph);
                    }
                    Err(error) => {
                        warn!(%error, rows, capacity, "capturing the decoding step as a CUDA graph failed; this generation decodes eagerly");
                        self.state = State::Eager;
                        let _upload_cache = self.device.enable_cuda_graph_htod_cache();
                        self.run(engine, adapter, cache)?;
                    }
                }
            }
        }
        Ok(self.logits.as_tensor().clone())
    }

    /// The step itself: reads the input buffers, writes the cache and the output buffer,
    /// and frees everything else it allocates before it returns.
    fn run(
        &self,
        engine: &Engine,
        adapter: Option<&LoraAdapter>,
        cache: &mut KvCache,
    ) -> Result<()> {
        let logits = engine.model.forward(
            &ForwardInput {
                input_ids: self.ids.as_tensor(),
                positions: self.positions.as_tensor(),
                mask: Some(self.mask.as_tensor()),
                adapter,
                logits: LogitsFor::LastPosition,
                decoding: true,
            },
            Some(cache),
        )?;
        self.logits.set(&logits)
    }
}
