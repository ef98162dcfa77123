//! The one place that runs an engine for many callers: a thread of its own takes one call at a
//! time (a batch fills the device, and calls side by side would only compete for it) and puts
//! every waiting submission for the same adapter into that call, up to a number of rows, since
//! generation throughput comes from batching. `lift serve` and the built-in question writer
//! both submit here.
//!
//! A combined call that fails (one prompt too long) is retried one submission at a time, so one
//! caller's bad request does not fail the others. A streamed request runs alone, in its turn.
//!
//! A submission whose caller went away before its turn (an HTTP client that timed out and will
//! retry) is dropped unrun: otherwise every retry would add work behind dead work, and a loaded
//! server would never catch up.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;

use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::generate::{GenerationOutput, GenerationRequest};
use crate::lora::LoraAdapter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherOptions {
    /// Most requests in one engine call; a submission larger than this runs alone.
    pub max_rows: usize,
    /// How long an idle batcher waits, after the first submission arrives, for more to join.
    pub window: Duration,
}

/// Receives the text of a streamed request as it is decoded; false stops the decoding (the
/// client went away).
pub type OnText = Box<dyn FnMut(&str) -> bool + Send>;

enum Submission {
    Batch {
        adapter: Option<Arc<LoraAdapter>>,
        requests: Vec<GenerationRequest>,
        reply: oneshot::Sender<Result<Vec<GenerationOutput>>>,
    },
    Stream {
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        on_text: OnText,
        reply: oneshot::Sender<Result<GenerationOutput>>,
    },
}

impl Submission {
    /// The caller dropped its future, so nobody waits for the output.
    fn abandoned(&self) -> bool {
        match self {
            Self::Batch { reply, .. } => reply.is_canceled(),
            Self::Stream { reply, .. } => reply.is_canceled(),
        }
    }
}

/// A handle to the engine's thread; clones share it. The thread ends when the last handle is
/// dropped, after the submissions already queued.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Submission>,
}

impl Batcher {
    pub fn spawn(engine: Arc<Engine>, options: BatcherOptions) -> Self {
        let (queue, waiting) = mpsc::channel();
        std::thread::Builder::new()
            .name("engine-batcher".into())
            .spawn(move || run(&engine, &waiting, options))
            .expect("spawning the engine's thread");
        Self { queue }
    }

    /// Outputs for `requests`, in their order, decoded with `adapter` (None: the base model).
    pub async fn generate(
        &self,
        adapter: Option<Arc<LoraAdapter>>,
        requests: Vec<GenerationRequest>,
    ) -> Result<Vec<GenerationOutput>> {
        let (reply, output) = oneshot::channel();
        self.submit(Submission::Batch {
            adapter,
            requests,
            reply,
        })?;
        output.await.map_err(|_| EngineError::Stopped)?
    }

    /// One request whose text goes to `on_text` as it is decoded.
    pub async fn generate_stream(
        &self,
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        on_text: OnText,
    ) -> Result<GenerationOutput> {
        let (reply, output) = oneshot::channel();
        self.submit(Submission::Stream {
            adapter,
            request,
            on_text,
            reply,
        })?;
        output.await.map_err(|_| EngineError::Stopped)?
    }

    fn submit(&self, submission: Submission) -> Result<()> {
        self.queue
            .send(submission)
            .map_err(|_| EngineError::Stopped)
    }
}

fn run(engine: &Engine, waiting: &mpsc::Receiver<Submission>, options: BatcherOptions) {
    let mut pending: VecDeque<Submission> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Ok(first) = waiting.recv() else {
                return;
            };
            pending.push_back(first);
            if !options.window.is_zero() {
                std::thread::sleep(options.window);
            }
        }
        pending.extend(waiting.try_iter());
        let queued = pending.len();
        pending.retain(|submission| !submission.abandoned());
        if pending.len() < queued {
            tracing::debug!(
                dropped = queued - pending.len(),
                "submissions whose callers went away dropped unrun"
            );
        }
        match pending.pop_front() {
            Some(Submission::Stream {
                adapter,
                request,
                mut on_text,
                reply,
            }) => {
                let _ =
                    reply.send(engine.generate_stream(adapter.as_deref(), &request, &mut on_text));
            }
            Some(Submission::Batch {
                adapter,
                requests,
                reply,
            }) => {
                let mut batch = vec![(requests, reply)];
                let mut rows = batch[0].0.len();
                let mut others = VecDeque::with_capacity(pending.len());
                for submission in pending.drain(..) {
                    match submission {
                        Submission::Batch {
                            adapter: other,
                            requests,
                            reply,
                        } if rows + requests.len() <= options.max_rows.max(1)
                            && same_adapter(&adapter, &other) =>
                        {
                            rows += requests.len();
                            batch.push((requests, reply));
                        }
                        submission => others.push_back(submission),
                    }
                }
                pending = others;
                run_batch(engine, adapter.as_deref(), batch);
            }
            None => {}
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<GenerationOutput>>>;

fn run_batch(
    engine: &Engine,
    adapter: Option<&LoraAdapter>,
    batch: Vec<(Vec<GenerationRequest>, Reply)>,
) {
    let sizes: Vec<usize> = batch.iter().map(|(requests, _)| requests.len()).collect();
    let (all, replies): (Vec<Vec<GenerationRequest>>, Vec<Reply>) = batch.into_iter().unzip();
    let all: Vec<GenerationRequest> = all.into_iter().flatten().collect();
    match engine.generate(adapter, &all) {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                // A caller that went away gets nothing; the others still do.
                let _ = reply.send(Ok(outputs.by_ref().take(size).collect()));
            }
        }
        Err(error) if replies.len() > 1 => {
            tracing::warn!(%error, submissions = replies.len(), "batch failed, generating one submission at a time");
            let mut requests = all.as_slice();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let (mine, rest) = requests.split_at(size);
                requests = rest;
                let _ = reply.send(engine.generate(adapter, mine));
            }
        }
        Err(error) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
    }
}

fn same_adapter(left: &Option<Arc<LoraAdapter>>, right: &Option<Arc<LoraAdapter>>) -> bool {
    match (left, right) {
        (None, None) => true,
        (Some(left), Some(right)) => Arc::ptr_eq(left, right),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::SamplingParams;
    use crate::testing::tiny_engine;
    use crate::ChatMessage;

    fn request(text: &str, max_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            messages: vec![ChatMessage::new("user", text)],
            prefill: String::new(),
            params: SamplingParams {
                max_tokens,
                ..SamplingParams::default()
            },
        }
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(future)
    }

    #[test]
    fn submissions_get_what_the_engine_gives_each_alone() {
        let engine = Arc::new(tiny_engine(3));
        let batcher = Batcher::spawn(
            engine.clone(),
            BatcherOptions {
                max_rows: 8,
                window: Duration::from_millis(20),
            },
        );
        let first = vec![request("one", 4), request("two", 5)];
        let second = vec![request("three", 3)];
        let (a, b) = block_on(futures::future::join(
            batcher.generate(None, first.clone()),
            batcher.generate(None, second.clone()),
        ));
        // Greedy decoding: batched or not, each request decodes the same text.
        let alone = |requests: &[GenerationRequest]| engine.generate(None, requests).unwrap();
        let texts = |outputs: Vec<GenerationOutput>| -> Vec<String> {
            outputs.into_iter().map(|output| output.text).collect()
        };
        assert_eq!(texts(a.unwrap()), texts(alone(&first)));
        assert_eq!(texts(b.unwrap()), texts(alone(&second)));
    }

    #[test]
    fn a_bad_submission_fails_alone() {
        let engine = Arc::new(tiny_engine(3));
        let batcher = Batcher::spawn(
            engine,
            BatcherOptions {
                max_rows: 8,
                window: Duration::from_millis(20),
            },
        );
        let too_long = request(&"word ".repeat(5_000), 2);
        let (bad, good) = block_on(futures::future::join(
            batcher.generate(None, vec![too_long]),
            batcher.generate(None, vec![request("fine", 2)]),
        ));
        assert!(bad.is_err());
        assert_eq!(good.unwrap().len(), 1);
    }

    #[test]
    fn a_stream_sends_its_text_as_it_is_decoded() {
        let engine = Arc::new(tiny_engine(3));
        let batcher = Batcher::spawn(
            engine.clone(),
            BatcherOptions {
                max_rows: 8,
                window: Duration::ZERO,
            },
        );
        let (pieces, received) = mpsc::channel();
        let output = block_on(batcher.generate_stream(
            None,
            request("stream", 5),
            Box::new(move |text| pieces.send(text.to_string()).is_ok()),
        ))
        .unwrap();
        let streamed: String = received.try_iter().collect();
        assert_eq!(streamed, output.text);
        let alone = engine.generate(None, &[request("stream", 5)]).unwrap();
        assert_eq!(output.text, alone[0].text);
    }

    #[test]
    fn a_submission_whose_caller_went_away_is_not_run() {
        let engine = Arc::new(tiny_engine(3));
        let batcher = Batcher::spawn(
            engine,
            BatcherOptions {
                max_rows: 8,
                // Long enough that the caller leaves while the submission still waits.
                window: Duration::from_millis(300),
            },
        );
        let (pieces, received) = mpsc::channel();
        let mut left = Box::pin(batcher.generate_stream(
            None,
            request("nobody waits", 5),
            Box::new(move |text| pieces.send(text.to_string()).is_ok()),
        ));
        // One poll submits it; dropping the future is the caller going away.
        assert!(futures::FutureExt::now_or_never(&mut left).is_none());
        drop(left);
        // Submissions run in order, so once this one is answered the first had its turn.
        let after = block_on(batcher.generate(None, vec![request("still here", 2)]));
        assert_eq!(after.unwrap().len(), 1);
        assert_eq!(
            received.try_iter().count(),
            0,
            "the abandoned stream decoded"
        );
    }

    #[test]
    fn a_batcher_whose_thread_is_gone_answers_stopped() {
        let (queue, waiting) = mpsc::channel::<Submission>();
        drop(waiting);
        let stopped = Batcher { queue };
        assert!(matches!(
            block_on(stopped.generate(None, vec![request("x", 1)])),
            Err(EngineError::Stopped)
        ));
    }
}
