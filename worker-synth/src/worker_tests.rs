//! The synth worker against the in-process broker, an in-memory store and a scripted
//! generator: what lands in the store and on `lift.events` for each kind of delivery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lift_broker::memory::InProcessBroker;
use lift_broker::{queues, Broker, DeliveryStream, Headers};
use lift_shared::ids::JobId;
use lift_shared::messages::{ProgressEvent, SentenceUnit, SynthChunk, Task};
use lift_shared::spec::SynthesisOptions;
use lift_store::{layout, CancelMarker, FailedChunkMarker, Store};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::generator::{GeneratorError, QaGenerator, QaRequest, RawReply, RestateRequest};
use crate::worker::{run_synth_worker, SynthWorkerConfig, SynthWorkerError};

type Script = Box<dyn Fn(&QaRequest, usize) -> Result<Vec<RawReply>, GeneratorError> + Send + Sync>;

/// Answers by script; `call` counts every call across sentences and deliveries.
struct ScriptedGenerator {
    calls: AtomicUsize,
    delay: Duration,
    script: Script,
}

#[async_trait]
impl QaGenerator for ScriptedGenerator {
    async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        (self.script)(request, call)
    }

    async fn restate(&self, _: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
        Ok(Vec::new())
    }
}

fn scripted(
    script: impl Fn(&QaRequest, usize) -> Result<Vec<RawReply>, GeneratorError> + Send + Sync + 'static,
) -> Arc<ScriptedGenerator> {
    Arc::new(ScriptedGenerator {
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
        script: Box::new(script),
    })
}

/// A grounded pair about the sentence: the answer is the sentence itself, the question names
/// its longest word.
fn good_reply(request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
    let topic = request
        .sentence
        .split_whitespace()
        .max_by_key(|word| word.len())
        .unwrap_or_default()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    let pairs = serde_json::json!({"pairs": [
        {"question": format!("What does the text say about the {topic}?"), "answer": request.sentence},
    ]});
    Ok(vec![RawReply {
        text: pairs.to_string(),
    }])
}

fn unreachable_error() -> GeneratorError {
    GeneratorError::Unreachable {
        url: "http://generator".to_string(),
        reason: "connection refused".to_string(),
    }
}

const DELIVERY_LIMIT: u32 = 3;

struct Fixture {
    broker: InProcessBroker,
    store: Store,
    events: DeliveryStream,
    job_id: JobId,
}

impl Fixture {
    async fn new() -> Self {
        let broker = InProcessBroker::new(DELIVERY_LIMIT);
        let events = broker.consume(queues::EVENTS, 100).await.unwrap();
        Self {
            broker,
            store: Store::open("memory://", None).unwrap(),
            events,
            job_id: JobId::new(),
        }
    }

    fn chunk(&self, chunk_index: u32, sentences: &[&str]) -> SynthChunk {
        SynthChunk {
            job_id: self.job_id.clone(),
            chunk_index,
            title: "Tower notes".to_string(),
            sentences: sentences
                .iter()
                .enumerate()
                .map(|(index, text)| SentenceUnit {
                    index: chunk_index * 10 + index as u32,
                    document: 0,
                    text: text.to_string(),
                    left_context: String::new(),
                })
                .collect(),
            options: SynthesisOptions::default(),
        }
    }

    /// A task file with one task, as an earlier delivery of `chunk` would have left it.
    async fn put_existing_task_file(&self, chunk: u32) {
        let existing = "{\"sentence_index\":0,\"title\":\"t\",\"question\":\"When?\",\"answer\":\"1889\",\"kind\":\"qa\"}\n";
        self.store
            .put_create(
                &layout::tasks(&self.job_id, chunk),
                existing.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// The worker announces the one task of the existing file, then is stopped.
    async fn expect_existing_file_announced(
        &mut self,
        shutdown: CancellationToken,
        worker: JoinHandle<Result<(), SynthWorkerError>>,
    ) {
        let (event, _) = self.next_event().await;
        assert!(
            matches!(event, ProgressEvent::ChunkSynthesized { tasks: 1, .. }),
            "{event:?}"
        );
        stop(shutdown, worker).await;
    }

    async fn publish(&self, chunk: &SynthChunk) {
        let payload = serde_json::to_vec(chunk).unwrap();
        let mut headers = Headers::new();
        headers.insert("traceparent".to_string(), "00-abc-def-01".to_string());
        self.broker
            .publish(queues::SYNTH, &payload, headers)
            .await
            .unwrap();
    }

    fn start(
        &self,
        generator: Arc<dyn QaGenerator>,
        config: SynthWorkerConfig,
    ) -> (CancellationToken, JoinHandle<Result<(), SynthWorkerError>>) {
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(run_synth_worker(
            Arc::new(self.broker.clone()),
            self.store.clone(),
            generator,
            config,
            shutdown.clone(),
        ));
        (shutdown, worker)
    }

    async fn next_event(&mut self) -> (ProgressEvent, Headers) {
        let delivery = tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .expect("an event within 10 s")
            .expect("event stream open")
            .expect("event delivery");
        let event = serde_json::from_slice(delivery.payload()).unwrap();
        let headers = delivery.headers().clone();
        delivery.ack().await.unwrap();
        (event, headers)
    }

    async fn tasks(&self, chunk_index: u32) -> Option<Vec<Task>> {
        let bytes = self
            .store
            .get(&layout::tasks(&self.job_id, chunk_index))
            .await
            .unwrap()?;
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Some(
            text.lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
        )
    }

    async fn depth(&self, queue: &str) -> u64 {
        self.broker.queue_depth(queue).await.unwrap()
    }
}

fn fast_config() -> SynthWorkerConfig {
    SynthWorkerConfig {
        prefetch: 4,
        concurrency: 2,
        delivery_limit: DELIVERY_LIMIT,
        requeue_backoff: Duration::from_millis(10),
        shutdown_grace: Duration::from_secs(5),
        ..SynthWorkerConfig::default()
    }
}

async fn stop(shutdown: CancellationToken, worker: JoinHandle<Result<(), SynthWorkerError>>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker stops within 10 s")
        .unwrap()
        .unwrap();
}

/// Waits until `check` holds, polling; the worker settles deliveries after it publishes.
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn chunk_becomes_a_task_file_and_an_event() {
    let mut f = Fixture::new().await;
    let chunk = f.chunk(
        4,
        &["The tower was completed in 1889.", "It is 330 metres tall."],
    );
    f.publish(&chunk).await;
    let (shutdown, worker) = f.start(scripted(|request, _| good_reply(request)), fast_config());

    let (event, headers) = f.next_event().await;
    let ProgressEvent::ChunkSynthesized {
        chunk_index,
        sentences,
        sentences_failed,
        tasks,
        pairs_dropped,
        ..
    } = event
    else {
        panic!("unexpected event {event:?}");
    };
    assert_eq!(
        (
            chunk_index,
            sentences,
            sentences_failed,
            tasks,
            pairs_dropped
        ),
        (4, 2, 0, 2, 0)
    );
    assert_eq!(
        headers.get("traceparent").map(String::as_str),
        Some("00-abc-def-01")
    );

    let tasks = f.tasks(4).await.unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].sentence_index, 40);
    assert_eq!(tasks[0].title, "Tower notes");
    assert_eq!(tasks[0].answer, "The tower was completed in 1889.");
    assert_eq!(tasks[0].kind, "qa");
    assert_eq!(tasks[1].sentence_index, 41);
    stop(shutdown, worker).await;
    assert_eq!(f.depth(queues::SYNTH).await, 0);
    assert_eq!(f.depth(&queues::dead_letter_queue(queues::SYNTH)).await, 0);
}

#[tokio::test]
async fn redelivered_chunk_with_a_task_file_is_announced_again_without_generating() {
    let mut f = Fixture::new().await;
    let chunk = f.chunk(0, &["The tower was completed in 1889."]);
    f.put_existing_task_file(0).await;
    f.publish(&chunk).await;
    // The first delivery went to a worker that died: it comes back as a redelivery.
    {
        let mut earlier = f.broker.consume(queues::SYNTH, 1).await.unwrap();
        let delivery = earlier.next().await.unwrap().unwrap();
        delivery.nack_requeue().await.unwrap();
    }
    let generator = scripted(|request, _| good_reply(request));
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    f.expect_existing_file_announced(shutdown, worker).await;
    assert_eq!(generator.calls.load(Ordering::SeqCst), 0);
    assert_eq!(f.depth(queues::SYNTH).await, 0);
}

#[tokio::test]
async fn first_delivery_that_finds_a_task_file_announces_the_file() {
    let mut f = Fixture::new().await;
    let chunk = f.chunk(0, &["The tower was completed in 1889.", "It is tall."]);
    f.put_existing_task_file(0).await;
    // A republished duplicate: not marked redelivered, so it synthesizes, loses the
    // create-only write, and announces what the file holds (the writer may have died before
    // announcing it).
    f.publish(&chunk).await;
    let generator = scripted(|request, _| good_reply(request));
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    f.expect_existing_file_announced(shutdown, worker).await;
    assert_eq!(f.tasks(0).await.unwrap().len(), 1, "the file is unchanged");
    assert_eq!(f.depth(queues::SYNTH).await, 0);
}

#[tokio::test]
async fn chunk_of_a_cancelled_job_is_acked_without_work() {
    let f = Fixture::new().await;
    let marker = CancelMarker {
        reason: "user".to_string(),
        at_ms: 0,
    };
    f.store
        .put_json_create(&layout::cancel(&f.job_id), &marker)
        .await
        .unwrap();
    f.publish(&f.chunk(0, &["The tower was completed in 1889."]))
        .await;
    let generator = scripted(|request, _| good_reply(request));
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    eventually(|| async { f.depth(queues::SYNTH).await == 0 }).await;
    stop(shutdown, worker).await;
    assert_eq!(f.depth(queues::SYNTH).await, 0);
    assert_eq!(generator.calls.load(Ordering::SeqCst), 0);
    assert!(f.tasks(0).await.is_none());
    assert_eq!(f.depth(queues::EVENTS).await, 0);
}

#[tokio::test]
async fn malformed_payload_is_dead_lettered_at_once() {
    let f = Fixture::new().await;
    f.broker
        .publish(queues::SYNTH, b"{\"not\": \"a chunk\"}", Headers::new())
        .await
        .unwrap();
    let generator = scripted(|request, _| good_reply(request));
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    let dead = queues::dead_letter_queue(queues::SYNTH);
    eventually(|| async { f.depth(&dead).await == 1 }).await;
    stop(shutdown, worker).await;
    assert_eq!(generator.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn generator_down_is_retried_then_the_chunk_is_given_up() {
    let mut f = Fixture::new().await;
    f.publish(&f.chunk(2, &["The tower was completed in 1889."]))
        .await;
    let generator = scripted(|_, _| Err(unreachable_error()));
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    let (event, _) = f.next_event().await;
    let ProgressEvent::ChunkFailed {
        chunk_index,
        reason,
        ..
    } = event
    else {
        panic!("unexpected event {event:?}");
    };
    assert_eq!(chunk_index, 2);
    assert!(reason.contains("connection refused"), "{reason}");
    let dead = queues::dead_letter_queue(queues::SYNTH);
    eventually(|| async { f.depth(&dead).await == 1 }).await;
    stop(shutdown, worker).await;

    assert_eq!(
        generator.calls.load(Ordering::SeqCst),
        DELIVERY_LIMIT as usize
    );
    let marker: FailedChunkMarker = f
        .store
        .get_json(&layout::failed(&f.job_id, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(marker.chunk, 2);
    assert!(f.tasks(2).await.is_none());
}

#[tokio::test]
async fn generator_back_within_the_delivery_limit_gives_the_task_file() {
    let mut f = Fixture::new().await;
    f.publish(&f.chunk(0, &["The tower was completed in 1889."]))
        .await;
    let generator = scripted(|request, call| match call {
        0 => Err(unreachable_error()),
        _ => good_reply(request),
    });
    let (shutdown, worker) = f.start(generator.clone(), fast_config());

    let (event, _) = f.next_event().await;
    assert!(
        matches!(
            event,
            ProgressEvent::ChunkSynthesized {
                tasks: 1,
                sentences_failed: 0,
                ..
            }
        ),
        "{event:?}"
    );
    stop(shutdown, worker).await;
    assert_eq!(generator.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn sentence_failing_for_good_counts_as_failed_and_the_chunk_succeeds() {
    let mut f = Fixture::new().await;
    let mut chunk = f.chunk(
        0,
        &["The tower was completed in 1889.", "BROKEN sentence here."],
    );
    // The paper's recipe alone: the default would give the sentence templated questions.
    chunk.options.recipe = lift_shared::spec::QuestionRecipe::FreeQa;
    f.publish(&chunk).await;
    let generator = scripted(|request, _| {
        if request.sentence.starts_with("BROKEN") {
            Err(GeneratorError::BadStatus {
                code: 400,
                body: "prompt too long".to_string(),
            })
        } else {
            good_reply(request)
        }
    });
    let (shutdown, worker) = f.start(generator, fast_config());

    let (event, _) = f.next_event().await;
    assert!(
        matches!(
            event,
            ProgressEvent::ChunkSynthesized {
                sentences: 2,
                sentences_failed: 1,
                tasks: 1,
                ..
            }
        ),
        "{event:?}"
    );
    stop(shutdown, worker).await;
    assert_eq!(f.tasks(0).await.unwrap()[0].sentence_index, 0);
}

#[tokio::test]
async fn invalid_and_ungrounded_pairs_are_dropped_and_counted() {
    let mut f = Fixture::new().await;
    f.publish(&f.chunk(0, &["The tower was completed in 1889 by Gustave Eiffel."]))
        .await;
    let generator = scripted(|_, _| {
        let text = r#"[{"question": "Who built the tower?", "answer": "Gustave Eiffel"},
                       {"question": "When was it painted red?", "answer": "In 1902"},
                       {"question": "Tell me a story.", "answer": "Once upon a time"}]"#;
        Ok(vec![RawReply {
            text: text.to_string(),
        }])
    });
    let (shutdown, worker) = f.start(generator, fast_config());

    let (event, _) = f.next_event().await;
    assert!(
        matches!(
            event,
            ProgressEvent::ChunkSynthesized {
                tasks: 1,
                pairs_dropped: 2,
                ..
            }
        ),
        "{event:?}"
    );
    stop(shutdown, worker).await;
    assert_eq!(f.tasks(0).await.unwrap()[0].answer, "Gustave Eiffel");
}

#[tokio::test]
async fn cloze_tasks_are_added_when_the_job_asks() {
    let mut f = Fixture::new().await;
    let mut chunk = f.chunk(0, &["The tower was completed in 1889 by Gustave Eiffel."]);
    chunk.options.cloze_tasks = true;
    f.publish(&chunk).await;
    let (shutdown, worker) = f.start(scripted(|request, _| good_reply(request)), fast_config());

    let (event, _) = f.next_event().await;
    assert!(
        matches!(event, ProgressEvent::ChunkSynthesized { tasks: 2, .. }),
        "{event:?}"
    );
    stop(shutdown, worker).await;
    let tasks = f.tasks(0).await.unwrap();
    assert_eq!(tasks[1].kind, "cloze");
    assert_eq!(tasks[1].answer, "1889");
    assert_eq!(
        tasks[1].question,
        "Fill in the blank: The tower was completed in ____ by Gustave Eiffel."
    );
}

#[tokio::test]
async fn shutdown_lets_the_chunk_in_flight_finish() {
    let mut f = Fixture::new().await;
    f.publish(&f.chunk(0, &["The tower was completed in 1889."]))
        .await;
    let generator = Arc::new(ScriptedGenerator {
        calls: AtomicUsize::new(0),
        delay: Duration::from_millis(300),
        script: Box::new(|request, _| good_reply(request)),
    });
    let (shutdown, worker) = f.start(generator.clone(), fast_config());
    eventually(|| async { generator.calls.load(Ordering::SeqCst) == 1 }).await;
    stop(shutdown, worker).await;

    assert_eq!(f.tasks(0).await.unwrap().len(), 1);
    assert!(matches!(
        f.next_event().await.0,
        ProgressEvent::ChunkSynthesized { .. }
    ));
    assert_eq!(f.depth(queues::SYNTH).await, 0);
}

#[tokio::test]
async fn shutdown_past_the_grace_period_puts_the_chunk_back() {
    let f = Fixture::new().await;
    f.publish(&f.chunk(0, &["The tower was completed in 1889."]))
        .await;
    let generator = Arc::new(ScriptedGenerator {
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(60),
        script: Box::new(|request, _| good_reply(request)),
    });
    let config = SynthWorkerConfig {
        shutdown_grace: Duration::from_millis(50),
        ..fast_config()
    };
    let (shutdown, worker) = f.start(generator.clone(), config);
    eventually(|| async { generator.calls.load(Ordering::SeqCst) == 1 }).await;
    stop(shutdown, worker).await;

    assert!(f.tasks(0).await.is_none());
    assert_eq!(f.depth(queues::SYNTH).await, 1);
}

#[tokio::test]
async fn last_attempt_keeps_the_sentences_that_worked() {
    let mut f = Fixture::new().await;
    f.publish(&f.chunk(
        0,
        &["The tower was completed in 1889.", "DOWN for this one."],
    ))
    .await;
    let generator = scripted(|request, _| {
        if request.sentence.starts_with("DOWN") {
            Err(unreachable_error())
        } else {
            good_reply(request)
        }
    });
    let (shutdown, worker) = f.start(generator, fast_config());

    let (event, _) = f.next_event().await;
    assert!(
        matches!(
            event,
            ProgressEvent::ChunkSynthesized {
                sentences: 2,
                sentences_failed: 1,
                tasks: 1,
                ..
            }
        ),
        "{event:?}"
    );
    stop(shutdown, worker).await;
    assert_eq!(f.tasks(0).await.unwrap().len(), 1);
    assert_eq!(f.depth(&queues::dead_letter_queue(queues::SYNTH)).await, 0);
}
