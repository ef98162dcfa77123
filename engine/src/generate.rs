//! Batched generation with a KV cache: greedy or sampled decoding, stop tokens and strings,
//! a prefilled reply start, and an optional constraint that keeps the output a JSON list of
//! question/answer pairs whatever the model would rather write (`json_constraint.rs`); tokens are
//! drawn by `sample.rs`.
//!
//! Over 600 lines: the decode loop is one piece (prefill, steps, per-row stopping and
//! streaming).

use std::collections::VecDeque;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

#[cfg(feature = "cuda")]
use crate::decode_graph::DecodeGraph;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::json_constraint::{
    close_json_string, JsonField, JsonProgress, JsonVocab, MAX_STRING_TOKENS,
};
use crate::lora::LoraAdapter;
use crate::model::{ForwardInput, KvCache, LogitsFor};
use crate::sample::sample;
use crate::tokenizer::ChatMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputConstraint {
    /// `{"pairs": [{"question": "...", "answer": "..."}, ...]}` with exactly `pairs` entries.
    QaJsonList { pairs: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 1.0 disables it; > 1 discourages tokens already generated.
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
    pub seed: u64,
    pub constraint: Option<OutputConstraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            stop: Vec::new(),
            seed: 0,
            constraint: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// The conversation, rendered with the model's chat template. Empty for a plain text
    /// prompt: then `prefill` is the whole prompt, tokenized as it is.
    pub messages: Vec<ChatMessage>,
    /// Text that starts the assistant's reply (not repeated in the output).
    pub prefill: String,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

/// One decoding step's inputs for a graph (`decode_graph.rs`), row-major over every row of
/// the batch, finished ones included.
pub(crate) struct DecodeInputs {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Additive mask over the cache's fixed capacity, `rows x capacity`.
    pub mask: Vec<f32>,
    /// The cache column this step's keys and values go to.
    #[cfg_attr(
        not(feature = "cuda"),
        expect(dead_code, reason = "read by the GPU's decoding graph only")
    )]
    pub column: usize,
}

/// Stands in for the GPU's decoding graph in builds without CUDA, where there is none.
#[cfg(not(feature = "cuda"))]
enum DecodeGraph {}

#[cfg(not(feature = "cuda"))]
impl DecodeGraph {
    fn step<'e>(
        &mut self,
        _: &'e Engine,
        _: &mut Option<std::sync::RwLockReadGuard<'e, ()>>,
        _: Option<&LoraAdapter>,
        _: &mut KvCache,
        _: DecodeInputs,
    ) -> candle_core::Result<Tensor> {
        match *self {}
    }
}

/// What a row picks its next token from.
enum RowScores {
    Logits(Vec<f32>),
    /// The device's greedy pick (`Engine::step_scores`).
    Picked(u32),
}

/// Below this many scores per step (rows x vocabulary) sampling stays on the calling thread.
const PARALLEL_SAMPLING_MIN_SCORES: usize = 1 << 20;

/// Flattened inputs of one forward call: `rows x tokens` ids and positions, and the
/// additive mask `rows x tokens x columns` over the cache plus these tokens.
struct Step {
    ids: Vec<u32>,
    positions: Vec<u32>,
    mask: Vec<f32>,
    rows: usize,
    tokens: usize,
    columns: usize,
    /// Its logits pick tokens (`ForwardInput::decoding`).
    decoding: bool,
}

impl Step {
    /// The step without each row's last token, and that token alone as a decoding step:
    /// its logits pick the first new token, and it is then computed as every later token
    /// is, which keeps a prompt's answer the same alone and in a batch. `None` first when
    /// one token is all there is.
    fn split_last_token(self) -> (Option<Step>, Step) {
        let (rows, tokens, columns) = (self.rows, self.tokens, self.columns);
        if tokens <= 1 {
            return (
                None,
                Step {
                    decoding: true,
                    ..self
                },
            );
        }
        let mut head = Step {
            ids: Vec::with_capacity(rows * (tokens - 1)),
            positions: Vec::with_capacity(rows * (tokens - 1)),
            mask: Vec::with_capacity(rows * (tokens - 1) * (columns - 1)),
            rows,
            tokens: tokens - 1,
            columns: columns - 1,
            decoding: false,
        };
        let mut last = Step {
            ids: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
            mask: Vec::with_capacity(rows * columns),
            rows,
            tokens: 1,
            columns,
            decoding: true,
        };
        for row in 0..rows {
            let ids = &self.ids[row * tokens..(row + 1) * tokens];
            let positions = &self.positions[row * tokens..(row + 1) * tokens];
            head.ids.extend_from_slice(&ids[..tokens - 1]);
            head.positions.extend_from_slice(&positions[..tokens - 1]);
            last.ids.push(ids[tokens - 1]);
            last.positions.push(positions[tokens - 1]);
            let mask = &self.mask[row * tokens * columns..(row + 1) * tokens * columns];
            // The last column is the last token's own key, which no earlier query sees.
            for query in mask.chunks_exact(columns).take(tokens - 1) {
                head.mask.extend_from_slice(&query[..columns - 1]);
            }
            last.mask
                .extend_from_slice(&mask[(tokens - 1) * columns..tokens * columns]);
        }
        (Some(head), last)
    }
}

struct Row {
    request: usize,
    prompt_tokens: usize,
    generated: Vec<u32>,
    text: String,
    streamed_len: usize,
    forced: VecDeque<u32>,
    rng: rand::rngs::StdRng,
    json: Option<JsonProgress>,
    next_position: u32,
    /// Additive mask over cache columns (0 real, -inf padding).
    column_mask: Vec<f32>,
    finish: Option<FinishReason>,
}

impl Engine {
    /// Generates a reply for every request, as one batch.
    pub fn generate(
        &self,
        adapter: Option<&LoraAdapter>,
        requests: &[GenerationRequest],
    ) -> Result<Vec<GenerationOutput>> {
        self.generate_with(adapter, requests, &mut |_, _| true)
    }

    /// Generates one reply, handing each new piece of text to `on_text`; returning false
    /// from it stops generation.
    pub fn generate_stream(
        &self,
        adapter: Option<&LoraAdapter>,
        request: &GenerationRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GenerationOutput> {
        let mut outputs =
            self.generate_with(adapter, std::slice::from_ref(request), &mut |_, t| {
                on_text(t)
            })?;
        Ok(outputs.remove(0))
    }

    fn encode_prompt(&self, request: &GenerationRequest) -> Result<Vec<u32>> {
        let ids = if request.messages.is_empty() {
            self.tokenizer.encode(&request.prefill)?
        } else {
            let rendered = self.tokenizer.render(&request.messages, true)?;
            self.tokenizer
                .encode(&format!("{rendered}{}", request.prefill))?
        };
        let context = self.model.config.max_position_embeddings;
        if ids.len() >= context {
            return Err(EngineError::PromptTooLong {
                tokens: ids.len(),
                context,
            });
        }
        if ids.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        Ok(ids)
    }

    fn generate_with(
        &self,
        adapter: Option<&LoraAdapter>,
        requests: &[GenerationRequest],
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<Vec<GenerationOutput>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut turn = Some(self.shared_stream_turn());
        let prompts = requests
            .iter()
            .map(|r| self.encode_prompt(r))
            .collect::<Result<Vec<_>>>()?;
        let device = self.model.device();
        let (mut logits, mut cache, column_masks) = self.prefill(adapter, &prompts)?;
        let mut rows = Vec::with_capacity(requests.len());
        for (index, ((request, prompt), column_mask)) in
            requests.iter().zip(&prompts).zip(column_masks).enumerate()
        {
            let mut forced = VecDeque::new();
            let json = match request.params.constraint {
                Some(OutputConstraint::QaJsonList { pairs }) => {
                    forced.extend(self.tokenizer.encode("{\"pairs\": [{\"question\": \"")?);
                    Some(JsonProgress {
                        pairs_total: pairs.max(1),
                        pairs_done: 0,
                        field: JsonField::Question,
                        string_tokens: 0,
                        closed: false,
                    })
                }
                None => None,
            };
            rows.push(Row {
                request: index,
                prompt_tokens: prompt.len(),
                generated: Vec::new(),
                text: String::new(),
                streamed_len: 0,
                forced,
                rng: rand::rngs::StdRng::seed_from_u64(request.params.seed),
                json,
                next_position: prompt.len() as u32,
                column_mask,
                finish: None,
            });
        }
        let b = requests.len();
        let mut active: Vec<usize> = (0..b).collect();
        let longest_reply = requests
            .iter()
            .map(|r| self.token_budget(&r.params))
            .max()
            .unwrap_or(1);
        let capacity = rows[0].column_mask.len() + longest_reply;
        let mut graph = self.decode_graph(&mut cache, b, capacity)?;
        let json_vocab = if requests.iter().any(|r| r.params.constraint.is_some()) {
            Some(self.json_vocab()?)
        } else {
            None
        };
        loop {
            let mut step_scores = self.step_scores(&logits, &rows, &active, requests)?;
            if graph.is_some() {
                // A graph's batch keeps every row, in request order.
                step_scores = active
                    .iter()
                    .map(|&r| std::mem::replace(&mut step_scores[r], RowScores::Picked(0)))
                    .collect();
            }
            let mut next_tokens =
                self.next_tokens(&mut rows, &active, requests, step_scores, json_vocab)?;
            for (slot, &row_index) in active.iter().enumerate() {
                let row = &mut rows[row_index];
                let request = &requests[row.request];
                if let Some(token) = next_tokens[slot] {
                    row.generated.push(token);
                    self.after_token(row, &request.params, on_text)?;
                }
                if row.finish.is_none()
                    && (row.generated.len() >= self.token_budget(&request.params)
                        || row.prompt_tokens + row.generated.len()
                            >= self.model.config.max_position_embeddings)
                {
                    row.finish = Some(FinishReason::Length);
                }
            }
            let still: Vec<usize> = (0..active.len())
                .filter(|&slot| rows[active[slot]].finish.is_none())
                .collect();
            if still.is_empty() {
                break;
            }
            if still.len() != active.len() {
                if graph.is_none() {
                    let keep = Tensor::from_vec(
                        still.iter().map(|&s| s as u32).collect::<Vec<_>>(),
                        still.len(),
                        device,
                    )?;
                    cache.select_rows(&keep)?;
                }
                next_tokens = still.iter().map(|&s| next_tokens[s]).collect();
                active = still.iter().map(|&s| active[s]).collect();
            }
            if let Some(graph) = graph.as_mut() {
                let inputs = self.graph_step_inputs(&mut rows, &active, &next_tokens, capacity);
                logits = graph.step(self, &mut turn, adapter, &mut cache, inputs)?;
                continue;
            }
            let n = active.len();
            let mut step_ids = Vec::with_capacity(n);
            let mut step_positions = Vec::with_capacity(n);
            let mut step_mask = Vec::new();
            for (&row_index, token) in active.iter().zip(&next_tokens) {
                let row = &mut rows[row_index];
                step_ids.push(token.unwrap_or(self.tokenizer.pad_id()));
                step_positions.push(row.next_position);
                row.next_position += 1;
                row.column_mask.push(0.0);
                step_mask.extend_from_slice(&row.column_mask);
            }
            let columns = rows[active[0]].column_mask.len();
            let step = Step {
                ids: step_ids,
                positions: step_positions,
                mask: step_mask,
                rows: n,
                tokens: 1,
                columns,
                decoding: true,
            };
            logits = self.forward_step(adapter, step, &mut cache)?;
        }
        Ok(rows
            .into_iter()
            .map(|row| GenerationOutput {
                text: row.text,
                prompt_tokens: row.prompt_tokens,
                completion_tokens: row.generated.len(),
                finish_reason: row.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }

    /// The batch's decoding steps as one CUDA graph over a cache of `capacity` columns, on a
    /// GPU with decoding graphs on and a capacity the model's positions cover.
    #[cfg(feature = "cuda")]
    fn decode_graph(
        &self,
        cache: &mut KvCache,
        rows: usize,
        capacity: usize,
    ) -> Result<Option<DecodeGraph>> {
        let candle_core::Device::Cuda(device) = self.model.device() else {
            return Ok(None);
        };
        if !self.may_capture_decoding() || capacity > self.model.config.max_position_embeddings {
            return Ok(None);
        }
        cache.fix_capacity(capacity)?;
        Ok(Some(DecodeGraph::new(self, device, rows, capacity)?))
    }

    #[cfg(not(feature = "cuda"))]
    fn decode_graph(&self, _: &mut KvCache, _: usize, _: usize) -> Result<Option<DecodeGraph>> {
        Ok(None)
    }

    /// The next step's inputs for every row of a graph's batch: a finished row decodes a pad
    /// token, whose logits nobody reads.
    fn graph_step_inputs(
        &self,
        rows: &mut [Row],
        active: &[usize],
        next_tokens: &[Option<u32>],
        capacity: usize,
    ) -> DecodeInputs {
        let mut tokens = vec![None; rows.len()];
        for (&row, &token) in active.iter().zip(next_tokens) {
            tokens[row] = token;
        }
        let mut inputs = DecodeInputs {
            ids: Vec::with_capacity(rows.len()),
            positions: Vec::with_capacity(rows.len()),
            mask: Vec::with_capacity(rows.len() * capacity),
            column: rows[0].column_mask.len(),
        };
        for (row, token) in rows.iter_mut().zip(tokens) {
            inputs.ids.push(token.unwrap_or(self.tokenizer.pad_id()));
            inputs.positions.push(row.next_position);
            row.next_position += 1;
            row.column_mask.push(0.0);
            inputs.mask.extend_from_slice(&row.column_mask);
            let unused = capacity.saturating_sub(row.column_mask.len());
            inputs
                .mask
                .extend(std::iter::repeat_n(f32::NEG_INFINITY, unused));
        }
        inputs
    }

    /// Runs the prompts through the model and returns the last-position logits `[rows, 1,
    /// vocab]`, the KV cache and each row's additive mask over the cache columns. Work is
    /// shared: the prefix common to all prompts (the chat template and few-shot examples of
    /// a synthesis batch) is computed once, and identical prompts (several samples of one
    /// question) once each.
    fn prefill(
        &self,
        adapter: Option<&LoraAdapter>,
        prompts: &[Vec<u32>],
    ) -> Result<(Tensor, KvCache, Vec<Vec<f32>>)> {
        let device = self.model.device();
        let dtype = self.model.dtype();
        let mut unique: Vec<&Vec<u32>> = Vec::new();
        let row_to_unique: Vec<u32> = prompts
            .iter()
            .map(|p| match unique.iter().position(|u| *u == p) {
                Some(i) => i as u32,
                None => {
                    unique.push(p);
                    (unique.len() - 1) as u32
                }
            })
            .collect();
        // Every prompt keeps at least one token of its own, whose logits start generation.
        let shortest = unique.iter().map(|p| p.len()).min().unwrap_or(1);
        let shared = (0..shortest - 1)
            .take_while(|&i| unique.iter().all(|p| p[i] == unique[0][i]))
            .count();
        let mut cache = KvCache::new(self.model.config.num_layers);
        if shared > 0 {
            let ids = Tensor::new(&unique[0][..shared], device)?.unsqueeze(0)?;
            let positions = Tensor::arange(0u32, shared as u32, device)?.unsqueeze(0)?;
            let mask = crate::model::causal_mask(shared, 0, dtype, device)?;
            self.model.forward(
                &ForwardInput {
                    input_ids: &ids,
                    positions: &positions,
                    mask: Some(&mask),
                    adapter,
                    logits: LogitsFor::LastPosition,
                    decoding: false,
                },
                Some(&mut cache),
            )?;
            let copies = Tensor::zeros(unique.len(), DType::U32, device)?;
            cache.select_rows(&copies)?;
        }
        let longest = unique.iter().map(|p| p.len() - shared).max().unwrap_or(1);
        let columns = shared + longest;
        let (mut ids, mut positions, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        let mut unique_masks = Vec::with_capacity(unique.len());
        for prompt in &unique {
            let own = &prompt[shared..];
            let pad = longest - own.len();
            ids.extend(std::iter::repeat_n(self.tokenizer.pad_id(), pad));
            ids.extend_from_slice(own);
            positions.extend((0..longest).map(|j| (shared + j.saturating_sub(pad)) as u32));
            for i in 0..longest {
                // A padding query attends to itself only, so it stays finite (an all -inf
                // row would be NaN and spread through the next layer's keys).
                mask.extend((0..columns).map(|c| {
                    let visible = if i < pad {
                        c == shared + i
                    } else {
                        c < shared || (c >= shared + pad && c <= shared + i)
                    };
                    if visible {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
            unique_masks.push(
                (0..columns)
                    .map(|c| {
                        if c < shared || c >= shared + pad {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect::<Vec<f32>>(),
            );
        }
        let step = Step {
            ids,
            positions,
            mask,
            rows: unique.len(),
            tokens: longest,
            columns,
            decoding: false,
        };
        let (head, last) = step.split_last_token();
        if let Some(head) = head {
            self.forward_step(adapter, head, &mut cache)?;
        }
        let logits = self.forward_step(adapter, last, &mut cache)?;
        let rows = Tensor::from_vec(row_to_unique.clone(), prompts.len(), device)?;
        cache.select_rows(&rows)?;
        let logits = logits.index_select(&rows, 0)?;
        let masks = row_to_unique
            .iter()
            .map(|&i| unique_masks[i as usize].clone())
            .collect();
        Ok((logits, cache, masks))
    }

    /// Runs one step's tokens through the model, extending `cache`; last-position logits.
    fn forward_step(
        &self,
        adapter: Option<&LoraAdapter>,
        step: Step,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let device = self.model.device();
        let input_ids = Tensor::from_vec(step.ids, (step.rows, step.tokens), device)?;
        let positions = Tensor::from_vec(step.positions, (step.rows, step.tokens), device)?;
        let mask = Tensor::from_vec(step.mask, (step.rows, 1, step.tokens, step.columns), device)?
            .to_dtype(self.model.dtype())?;
        Ok(self.model.forward(
            &ForwardInput {
                input_ids: &input_ids,
                positions: &positions,
                mask: Some(&mask),
                adapter,
                logits: LogitsFor::LastPosition,
                decoding: step.decoding,
            },
            Some(cache),
        )?)
    }

    fn token_budget(&self, params: &SamplingParams) -> usize {
        match params.constraint {
            // Room for every string at its longest plus the JSON punctuation.
            Some(OutputConstraint::QaJsonList { pairs }) => params
                .max_tokens
                .max(pairs.max(1) * (2 * MAX_STRING_TOKENS + 24) + 16),
            None => params.max_tokens.max(1),
        }
    }

    /// What each row of the step's logits `[rows, 1, vocab]` picks its next token from. On a
    /// GPU, when every active row decodes greedily with nothing to constrain or penalise, the
    /// device takes the argmax and only the tokens cross to the host (at batch 64, 12 MB of
    /// logits a step otherwise, and a pass over them per row).
    fn step_scores(
        &self,
        logits: &Tensor,
        rows: &[Row],
        active: &[usize],
        requests: &[GenerationRequest],
    ) -> Result<Vec<RowScores>> {
        let logits = logits.squeeze(1)?;
        let plain_greedy = |row: &Row| {
            let params = &requests[row.request].params;
            row.forced.is_empty()
                && row.json.is_none()
                && params.temperature <= 0.0
                && params.repetition_penalty == 1.0
        };
        if logits.device().is_cuda() && active.iter().all(|&r| plain_greedy(&rows[r])) {
            let picked = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
            return Ok(picked.into_iter().map(RowScores::Picked).collect());
        }
        let logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        Ok(logits.into_iter().map(RowScores::Logits).collect())
    }

    /// The next token of every active row (`active` ascending, `scores` in its order). Rows
    /// are independent, so a large batch spreads its sampling (a pass over the vocabulary per
    /// row) over the CPU's cores.
    fn next_tokens(
        &self,
        rows: &mut [Row],
        active: &[usize],
        requests: &[GenerationRequest],
        scores: Vec<RowScores>,
        json_vocab: Option<&JsonVocab>,
    ) -> Result<Vec<Option<u32>>> {
        let mut is_active = vec![false; rows.len()];
        active.iter().for_each(|&i| is_active[i] = true);
        let vocab = match scores.first() {
            Some(RowScores::Logits(logits)) => logits.len(),
            _ => 0,
        };
        let mut work: Vec<(&mut Row, RowScores)> = rows
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| is_active[*i])
            .map(|(_, row)| row)
            .zip(scores)
            .collect();
        let pick = |(row, scores): &mut (&mut Row, RowScores)| {
            let params = &requests[row.request].params;
            self.next_token(row, params, scores, json_vocab)
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || work.len() * vocab < PARALLEL_SAMPLING_MIN_SCORES {
            return work.iter_mut().map(pick).collect();
        }
        let per_thread = work.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks_mut(per_thread)
                .map(|part| scope.spawn(move || part.iter_mut().map(pick).collect::<Vec<_>>()))
                .collect();
            let mut tokens = Vec::with_capacity(active.len());
            for handle in handles {
                tokens.extend(handle.join().expect("a sampling thread panicked"));
            }
            tokens.into_iter().collect()
        })
    }

    /// Picks the row's next token: a forced one if the constraint has any queued, else a
    /// sampled one. None when the row just finished without a new token.
    fn next_token(
        &self,
        row: &mut Row,
        params: &SamplingParams,
        scores: &mut RowScores,
        json_vocab: Option<&JsonVocab>,
    ) -> Result<Option<u32>> {
        if let Some(token) = row.forced.pop_front() {
            return Ok(Some(token));
        }
        if let Some(json) = &row.json {
            if json.closed {
                row.finish = Some(FinishReason::Stop);
                return Ok(None);
            }
        }
        let mut scores = match scores {
            RowScores::Logits(logits) => std::mem::take(logits),
            RowScores::Picked(token) => return Ok(self.unless_stop(row, *token)),
        };
        if params.repetition_penalty != 1.0 {
            for &id in &row.generated {
                let s = &mut scores[id as usize];
                *s = if *s > 0.0 {
                    *s / params.repetition_penalty
                } else {
                    *s * params.repetition_penalty
                };
            }
        }
        if let (Some(json), Some(vocab)) = (&row.json, json_vocab) {
            let must_close = json.string_tokens >= MAX_STRING_TOKENS;
            for (id, score) in scores.iter_mut().enumerate() {
                let allowed = vocab.closes_string[id] || (!must_close && vocab.string_ok[id]);
                if !allowed {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
        let token = sample(&scores, params, &mut row.rng);
        if let (Some(json), Some(vocab)) = (row.json.as_mut(), json_vocab) {
            if vocab.closes_string[token as usize] {
                // Questions end with a question mark: part of the shape, like the quotes.
                if json.field == JsonField::Question && !row.text.trim_end().ends_with('?') {
                    row.forced.extend(self.tokenizer.encode("?")?);
                }
                let literal = close_json_string(json);
                row.forced.extend(self.tokenizer.encode(literal)?);
                return Ok(row.forced.pop_front());
            }
            json.string_tokens += 1;
            return Ok(Some(token));
        }
        Ok(self.unless_stop(row, token))
    }

    /// `token`, or None with the row finished when it is a stop token.
    fn unless_stop(&self, row: &mut Row, token: u32) -> Option<u32> {
        if self.tokenizer.stop_ids().contains(&token) {
            row.finish = Some(FinishReason::Stop);
            return None;
        }
        Some(token)
    }

    /// Updates the row's text, applies stop strings, streams what is safe to show.
    fn after_token(
        &self,
        row: &mut Row,
        params: &SamplingParams,
        on_text: &mut dyn FnMut(usize, &str) -> bool,
    ) -> Result<()> {
        row.text = self.tokenizer.decode(&row.generated)?;
        let mut safe_len = row.text.len();
        if row.json.is_none() {
            for stop in params.stop.iter().filter(|s| !s.is_empty()) {
                if let Some(at) = row.text.find(stop.as_str()) {
                    row.text.truncate(at);
                    row.finish = Some(FinishReason::Stop);
                    safe_len = at;
                    break;
                }
                // Hold back a tail that could still become a stop string.
                for keep in (1..stop.len()).rev() {
                    if stop.is_char_boundary(keep) && row.text.ends_with(&stop[..keep]) {
                        safe_len = safe_len.min(row.text.len() - keep);
                        break;
                    }
                }
            }
        }
        if row.finish.is_none() && row.text.ends_with('\u{FFFD}') {
            // An incomplete multi-byte character; wait for its remaining bytes.
            safe_len = safe_len.min(row.text.len() - '\u{FFFD}'.len_utf8());
        }
        let safe_len = safe_len.min(row.text.len());
        if safe_len > row.streamed_len && row.text.is_char_boundary(safe_len) {
            let delta = row.text[row.streamed_len..safe_len].to_string();
            row.streamed_len = safe_len;
            if !on_text(row.request, &delta) {
                row.finish = Some(FinishReason::Stop);
            }
        }
        Ok(())
    }
}
