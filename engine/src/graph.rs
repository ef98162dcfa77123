//! Training steps replayed as CUDA graphs. At LIFT's batch sizes a step is thousands of
//! small kernels and the GPU waits on the CPU launching them; a captured step is one launch.
//!
//! Per batch shape: the first step runs eagerly with candle's upload cache on (every
//! layout it uploads is kept on the device, so a capture needs no host copies); the second
//! is captured into a graph and launched; later ones copy their batch into the graph's
//! input buffers and relaunch it. A shape whose capture fails stays eager.

use std::collections::HashMap;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::{CudaDevice, Result, Var};
use tracing::{debug, warn};

use crate::sft_batch::SftBatch;
use crate::Engine;

/// After this many failed captures of one shape, its steps stay eager.
const CAPTURE_ATTEMPTS: u32 = 2;

/// Each graph keeps its activation memory; beyond this many shapes the least recently used
/// graph is dropped (its shape is captured again if it comes back).
const MAX_GRAPHS: usize = 8;

/// `(batch, sequence length, answer slots)`: what a captured step's kernels are sized for.
/// The trainer rounds the last two up to a few sizes (`sft_batch::graph_bucket`), so a job's
/// steps replay a handful of graphs.
type ShapeKey = (usize, usize, usize);

enum ShapeState {
    /// Ran eagerly with the upload cache on; ready for a capture.
    Warm {
        failed_captures: u32,
    },
    Captured(CapturedStep),
    Abandoned,
}

struct CapturedStep {
    graph: CudaGraph,
    last_used: u64,
    /// The buffers the graph reads its batch from: inputs, answer rows, targets, weights.
    buffers: [Var; 4],
}

impl CapturedStep {
    fn replay(&self, batch: &SftBatch) -> Result<()> {
        let sources = batch_tensors(batch);
        for (buffer, source) in self.buffers.iter().zip(sources) {
            buffer.set(source)?;
        }
        self.graph.launch().map_err(candle_core::Error::wrap)
    }
}

pub struct StepGraphs {
    device: CudaDevice,
    shapes: HashMap<ShapeKey, ShapeState>,
    /// Counts runs, to find the least recently used graph.
    clock: u64,
}

// SAFETY: a CudaGraph holds raw driver handles. The trainer owns its StepGraphs and uses
// it through `&mut self` only, so a graph is never used from two threads at once, which is
// the only requirement CUDA places on graph objects.
#[allow(unsafe_code)]
unsafe impl Send for StepGraphs {}

impl StepGraphs {
    pub fn new(device: CudaDevice) -> Self {
        Self {
            device,
            shapes: HashMap::new(),
            clock: 0,
        }
    }

    /// Runs `step` on `batch` once, eagerly or as a graph. `step` must do device work only
    /// and free everything it allocates before it returns. A capture takes `engine`'s stream
    /// alone, so that no other thread's work (a generator's) is recorded into the graph.
    pub fn run(
        &mut self,
        engine: &Engine,
        batch: &SftBatch,
        step: &dyn Fn(&SftBatch) -> Result<()>,
    ) -> Result<()> {
        let (b, t) = batch.inputs.dims2()?;
        let key = (b, t, batch.answer_rows.dims1()?);
        self.clock += 1;
        let shared_turn = engine.shared_stream_turn();
        let failed_captures = match self.shapes.get_mut(&key) {
            Some(ShapeState::Captured(captured)) => {
                captured.last_used = self.clock;
                return captured.replay(batch);
            }
            Some(ShapeState::Abandoned) => return step(batch),
            Some(ShapeState::Warm { failed_captures }) => *failed_captures,
            None => {
                let _upload_cache = self.device.enable_cuda_graph_htod_cache();
                step(batch)?;
                self.shapes
                    .insert(key, ShapeState::Warm { failed_captures: 0 });
                return Ok(());
            }
        };
        self.evict_beyond(MAX_GRAPHS - 1);
        drop(shared_turn);
        let _exclusive_turn = engine.exclusive_stream_turn();
        match self.capture(batch, step) {
            Ok(captured) => {
                debug!(
                    batch = b,
                    seq = t,
                    answer_slots = key.2,
                    "captured the training step as a CUDA graph"
                );
                captured.graph.launch().map_err(candle_core::Error::wrap)?;
                self.shapes.insert(key, ShapeState::Captured(captured));
                Ok(())
            }
            Err(error) => {
                warn!(%error, batch = b, seq = t, "capturing the training step as a CUDA graph failed; this step runs eagerly");
                let failed_captures = failed_captures + 1;
                let state = if failed_captures >= CAPTURE_ATTEMPTS {
                    ShapeState::Abandoned
                } else {
                    ShapeState::Warm { failed_captures }
                };
                self.shapes.insert(key, state);
                let _upload_cache = self.device.enable_cuda_graph_htod_cache();
                step(batch)
            }
        }
    }

    /// Drops least recently used graphs until at most `keep` remain.
    fn evict_beyond(&mut self, keep: usize) {
        loop {
            let captured = self.shapes.iter().filter_map(|(key, state)| match state {
                ShapeState::Captured(c) => Some((c.last_used, *key)),
                _ => None,
            });
            let count = captured.clone().count();
            let Some((_, oldest)) = captured.min() else {
                return;
            };
            if count <= keep {
                return;
            }
            debug!(shape = ?oldest, "dropped the least recently used CUDA graph");
            self.shapes
                .insert(oldest, ShapeState::Warm { failed_captures: 0 });
        }
    }

    /// Records `step` on a copy of `batch` into a graph; nothing runs until it is launched.
    fn capture(
        &self,
        batch: &SftBatch,
        step: &dyn Fn(&SftBatch) -> Result<()>,
    ) -> Result<CapturedStep> {
        let [inputs, answer_rows, answer_targets, answer_weights] =
            batch_tensors(batch).map(Var::from_tensor);
        let buffers = [inputs?, answer_rows?, answer_targets?, answer_weights?];
        let static_batch = SftBatch {
            inputs: buffers[0].as_tensor().clone(),
            answer_rows: buffers[1].as_tensor().clone(),
            answer_targets: buffers[2].as_tensor().clone(),
            answer_weights: buffers[3].as_tensor().clone(),
            answer_tokens: batch.answer_tokens,
            packed: None,
        };
        let graph = record_graph(&self.device, move || {
            let recorded = step(&static_batch);
            drop(static_batch);
            recorded
        })?;
        Ok(CapturedStep {
            graph,
            last_used: self.clock,
            buffers,
        })
    }
}

/// Records what `record` queues on `device`'s stream into a graph, with candle's upload
/// cache on; nothing runs until the graph is launched. `record` must free everything it
/// allocates before it returns (the training step and the decoding step do).
pub(crate) fn record_graph(
    device: &CudaDevice,
    record: impl FnOnce() -> Result<()>,
) -> Result<CudaGraph> {
    let stream = device.cuda_stream();
    let _upload_cache = device.enable_cuda_graph_htod_cache();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(candle_core::Error::wrap)?;
    let recorded = record();
    // Memory a replay allocates and does not free (none, when `record` keeps its contract)
    // is released before the next replay rather than piling up.
    let graph = stream.end_capture(
        sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
    );
    match (recorded, graph) {
        (Ok(()), Ok(Some(graph))) => Ok(graph),
        (recorded, graph) => {
            // Errors of calls made while the capture was broken are parked in the context;
            // clear them so they do not surface in a later, unrelated call.
            let _ = stream.context().check_err();
            recorded?;
            graph.map_err(candle_core::Error::wrap)?;
            candle_core::bail!("the capture produced no graph")
        }
    }
}

/// What a captured step reads of its batch, in the order of `CapturedStep::buffers`.
fn batch_tensors(batch: &SftBatch) -> [&candle_core::Tensor; 4] {
    [
        &batch.inputs,
        &batch.answer_rows,
        &batch.answer_targets,
        &batch.answer_weights,
    ]
}
