//! The only place that runs the engine: one call at a time (a batch fills the device), with
//! every queued completion for the same adapter in that call, since synthesis throughput
//! depends on batching.

use std::collections::VecDeque;
use std::sync::Arc;

use lift_engine::{Engine, FinishReason, GenerationOutput, GenerationRequest, LoraAdapter};
use lift_shared::metrics;
use tokio::sync::{mpsc, oneshot};

use super::error::ServeError;
use super::ServeOptions;

pub(super) enum EngineJob {
    Complete {
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        reply: oneshot::Sender<Result<GenerationOutput, ServeError>>,
    },
    Stream {
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        pieces: mpsc::UnboundedSender<StreamPiece>,
    },
}

pub(super) enum StreamPiece {
    Text(String),
    Finished(FinishReason),
    Failed(ServeError),
}

fn same_adapter(left: &Option<Arc<LoraAdapter>>, right: &Option<Arc<LoraAdapter>>) -> bool {
    match (left, right) {
        (None, None) => true,
        (Some(left), Some(right)) => Arc::ptr_eq(left, right),
        _ => false,
    }
}

pub(super) async fn run_engine_loop(
    engine: Arc<Engine>,
    mut queue: mpsc::UnboundedReceiver<EngineJob>,
    options: ServeOptions,
) {
    let mut pending: VecDeque<EngineJob> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Some(job) = queue.recv().await else {
                return;
            };
            pending.push_back(job);
            if !options.batch_window.is_zero() {
                tokio::time::sleep(options.batch_window).await;
            }
        }
        while let Ok(job) = queue.try_recv() {
            pending.push_back(job);
        }
        let Some(first) = pending.pop_front() else {
            continue;
        };
        match first {
            EngineJob::Stream {
                adapter,
                request,
                pieces,
            } => run_stream(&engine, adapter, request, pieces).await,
            EngineJob::Complete {
                adapter,
                request,
                reply,
            } => {
                let mut requests = vec![request];
                let mut replies = vec![reply];
                let mut others = VecDeque::with_capacity(pending.len());
                for job in pending.drain(..) {
                    match job {
                        EngineJob::Complete {
                            adapter: other,
                            request,
                            reply,
                        } if requests.len() < options.max_batch
                            && same_adapter(&adapter, &other) =>
                        {
                            requests.push(request);
                            replies.push(reply);
                        }
                        job => others.push_back(job),
                    }
                }
                pending = others;
                run_batch(&engine, adapter, requests, replies).await;
            }
        }
    }
}

async fn run_batch(
    engine: &Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    requests: Vec<GenerationRequest>,
    replies: Vec<oneshot::Sender<Result<GenerationOutput, ServeError>>>,
) {
    let engine = engine.clone();
    let results = tokio::task::spawn_blocking(move || {
        match engine.generate(adapter.as_deref(), &requests) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            // One bad request (a prompt too long) must not fail the others: retry one by one.
            Err(error) if requests.len() > 1 => {
                tracing::warn!(%error, batch = requests.len(), "batch failed, generating one by one");
                requests
                    .iter()
                    .map(|request| {
                        engine
                            .generate(adapter.as_deref(), std::slice::from_ref(request))
                            .map_err(ServeError::engine)
                            .and_then(|mut outputs| {
                                outputs.pop().ok_or_else(|| ServeError::Internal("engine returned no output".to_string()))
                            })
                    })
                    .collect()
            }
            Err(error) => vec![Err(ServeError::engine(error))],
        }
    })
    .await;
    match results {
        Ok(results) => {
            for output in results.iter().flatten() {
                count_tokens(output);
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // The client may have gone away; nothing to do then.
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(ServeError::Internal(format!(
                    "generation task failed: {error}"
                ))));
            }
        }
    }
}

async fn run_stream(
    engine: &Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    request: GenerationRequest,
    pieces: mpsc::UnboundedSender<StreamPiece>,
) {
    let engine = engine.clone();
    let sender = pieces.clone();
    let result = tokio::task::spawn_blocking(move || {
        // A failed send means the client hung up: stop generating for it.
        engine.generate_stream(adapter.as_deref(), &request, &mut |text| {
            sender.send(StreamPiece::Text(text.to_string())).is_ok()
        })
    })
    .await;
    let last = match result {
        Ok(Ok(output)) => {
            count_tokens(&output);
            StreamPiece::Finished(output.finish_reason)
        }
        Ok(Err(error)) => StreamPiece::Failed(ServeError::engine(error)),
        Err(error) => StreamPiece::Failed(ServeError::Internal(format!(
            "generation task failed: {error}"
        ))),
    };
    let _ = pieces.send(last);
}

fn count_tokens(output: &GenerationOutput) {
    metrics::SERVE_PROMPT_TOKENS.inc_by(output.prompt_tokens as u64);
    metrics::SERVE_GENERATION_TOKENS.inc_by(output.completion_tokens as u64);
}
