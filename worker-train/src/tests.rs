//! Trainer behaviour on the tiny engine, an in-memory store and the in-process broker.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lift_broker::memory::InProcessBroker;
use lift_broker::{queues, Broker};
use lift_engine::testing::tiny_engine;
use lift_shared::ids::JobId;
use lift_shared::messages::{ProgressEvent, Task, TrainAssignment};
use lift_shared::spec::TrainingOptions;
use lift_store::{layout, Store};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoint;
use crate::error::TrainError;
use crate::run::{JobRun, RunOptions, RunOutcome};

fn tasks(chunk: u32, n: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..n {
        let task = Task {
            sentence_index: chunk * 10 + i,
            title: "Vellmar".into(),
            question: format!("What is fact {chunk}-{i}?"),
            answer: format!("Fact {chunk}-{i} is teal."),
            kind: "qa".into(),
            traceparent: String::new(),
        };
        serde_json::to_writer(&mut body, &task).unwrap();
        body.push(b'\n');
    }
    body
}

struct Fixture {
    store: Store,
    broker: Arc<dyn Broker>,
    job: JobId,
    engine: Arc<lift_engine::Engine>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            store: Store::open("memory://", None).unwrap(),
            broker: Arc::new(InProcessBroker::new(5)),
            job: JobId::new(),
            engine: Arc::new(tiny_engine(9)),
        }
    }

    fn run(
        &self,
        chunk_count: u32,
        epochs: u32,
        checkpoint_every_steps: u64,
        shutdown: CancellationToken,
    ) -> JobRun {
        JobRun {
            engine: self.engine.clone(),
            store: self.store.clone(),
            broker: self.broker.clone(),
            assignment: TrainAssignment {
                job_id: self.job.clone(),
                base_model: "tiny-random".into(),
                options: TrainingOptions {
                    rank: 4,
                    alpha: 8.0,
                    epochs,
                    batch_size: 2,
                    min_steps: 0,
                    ..TrainingOptions::default()
                },
                chunk_count,
                generation: 0,
                published_at_ms: 0,
            },
            trainer_id: "test-trainer".into(),
            claim_generation: 0,
            options: RunOptions {
                checkpoint_every_steps,
                poll_interval: Duration::from_millis(20),
                ownership_check_interval: Duration::from_millis(0),
                ..RunOptions::default()
            },
            shutdown,
            current_step: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Claims `generation` for `trainer`, as the consume loop does before a run.
    async fn claim(&self, generation: u32, trainer: &str) {
        let claim = lift_store::Claim {
            trainer: trainer.into(),
            at_ms: 0,
        };
        assert!(self
            .store
            .put_json_create(&layout::claim(&self.job, generation), &claim)
            .await
            .unwrap());
    }

    async fn put_tasks(&self, chunk: u32, n: u32) {
        assert!(self
            .store
            .put_create(&layout::tasks(&self.job, chunk), tasks(chunk, n))
            .await
            .unwrap());
    }

    async fn events(&self) -> Vec<ProgressEvent> {
        let mut stream = self.broker.consume(queues::EVENTS, 1000).await.unwrap();
        let mut events = Vec::new();
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(200), stream.next()).await
        {
            events.push(serde_json::from_slice(delivery.payload()).unwrap());
            delivery.ack().await.unwrap();
        }
        events
    }
}

fn steps(events: &[ProgressEvent], epoch_wanted: u32) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::TrainingStep { epoch, step, .. } if *epoch == epoch_wanted => {
                Some(*step)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn first_epoch_trains_chunks_as_they_arrive_then_replays_the_cache() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 4).await;
    let run = f.run(3, 2, 100, CancellationToken::new());
    let handle = tokio::task::spawn_blocking(move || run.run());
    // Chunk 0 trains while chunks 1 and 2 do not exist yet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !handle.is_finished(),
        "the trainer waits for the remaining chunks"
    );
    let early = Checkpoint::load_latest(&f.store, &f.job).await.unwrap();
    assert!(early.is_none(), "no epoch ended yet");
    f.put_tasks(1, 3).await;
    let failed =
        serde_json::to_vec(&serde_json::json!({"chunk": 2, "reason": "poison", "at_ms": 0}))
            .unwrap();
    f.store
        .put_create(&layout::failed(&f.job, 2), failed)
        .await
        .unwrap();
    let outcome = handle.await.unwrap().unwrap();
    let RunOutcome::Finished { steps: total, .. } = outcome else {
        panic!("{outcome:?}")
    };
    // 7 tasks, batch 2: 4 steps per epoch (the last one partial).
    assert_eq!(total, 8);
    let events = f.events().await;
    assert_eq!(steps(&events, 1), vec![1, 2, 3, 4]);
    assert_eq!(steps(&events, 2), vec![5, 6, 7, 8]);
    assert!(f
        .store
        .exists(&layout::adapter_config(&f.job))
        .await
        .unwrap());
    let (checkpoint, _, _) = Checkpoint::load_latest(&f.store, &f.job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.cursor.epoch1_trained.get(&0), Some(&4));
    assert_eq!(checkpoint.cursor.epoch1_trained.get(&1), Some(&3));
}

/// Trains 8 tasks in two chunks, batch 2, 3 epochs, on a cosine schedule from 1e-3; returns
/// the run's events and the learning rate of each of its 12 steps.
async fn cosine_run(train_after_synthesis: bool) -> (Vec<ProgressEvent>, Vec<f64>) {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 4).await;
    f.put_tasks(1, 4).await;
    let mut run = f.run(2, 3, 100, CancellationToken::new());
    run.assignment.options.schedule = lift_shared::spec::Schedule::Cosine;
    run.assignment.options.learning_rate = 1e-3;
    run.assignment.options.train_after_synthesis = train_after_synthesis;
    let RunOutcome::Finished { steps: total, .. } = tokio::task::spawn_blocking(move || run.run())
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("expected the run to finish")
    };
    assert_eq!(total, 12);
    let events = f.events().await;
    let rates: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::TrainingStep { learning_rate, .. } => Some(*learning_rate),
            _ => None,
        })
        .collect();
    assert_eq!(rates.len(), 12);
    (events, rates)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cosine_schedule_holds_through_synthesis_and_decays_over_the_cached_epochs() {
    // 4 steps per epoch; epoch 1 at the base rate, then a cosine over the 8 steps of epochs
    // 2 and 3, ending near zero.
    let (_, rates) = cosine_run(false).await;
    assert!(
        rates[..5].iter().all(|&lr| (lr - 1e-3).abs() < 1e-12),
        "{rates:?}"
    );
    assert!(rates[5..].windows(2).all(|w| w[1] < w[0]), "{rates:?}");
    assert!(rates[11] < 0.05e-3, "{rates:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn train_after_synthesis_waits_for_every_chunk_before_the_first_step() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 4).await;
    let mut run = f.run(2, 1, 100, CancellationToken::new());
    run.assignment.options.train_after_synthesis = true;
    let handle = tokio::task::spawn_blocking(move || run.run());
    // Two full batches of chunk 0 are ready, but chunk 1 is not synthesized yet.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!handle.is_finished());
    assert_eq!(steps(&f.events().await, 1), Vec::<u64>::new());
    f.put_tasks(1, 3).await;
    let RunOutcome::Finished { steps: total, .. } = handle.await.unwrap().unwrap() else {
        panic!("expected the run to finish")
    };
    assert_eq!(total, 4);
    assert_eq!(steps(&f.events().await, 1), vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_synthesis_a_cosine_schedule_decays_over_every_epoch() {
    let (events, rates) = cosine_run(true).await;
    assert_eq!(steps(&events, 1), vec![1, 2, 3, 4]);
    assert_eq!(steps(&events, 3), vec![9, 10, 11, 12]);
    // Every epoch is trained from the complete cache, so the decay spans all 12 steps.
    assert!((rates[0] - 1e-3).abs() < 1e-12, "{rates:?}");
    assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
    assert!(rates[11] < 0.05e-3, "{rates:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_released_job_resumes_from_its_checkpoint_without_repeating_steps() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    for chunk in 0..4 {
        f.put_tasks(chunk, 4).await;
    }
    let shutdown = CancellationToken::new();
    let run = f.run(4, 1, 1, shutdown.clone());
    let handle = tokio::task::spawn_blocking(move || run.run());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some((c, _, _)) = Checkpoint::load_latest(&f.store, &f.job).await.unwrap() {
            if c.step >= 3 {
                break;
            }
        }
    }
    shutdown.cancel();
    let RunOutcome::Released { step: released_at } = handle.await.unwrap().unwrap() else {
        panic!("expected a release")
    };
    assert!(released_at >= 3);

    // The coordinator hands a released job to the next generation.
    f.claim(1, "next-trainer").await;
    let mut resumed = f.run(4, 1, 1, CancellationToken::new());
    resumed.claim_generation = 1;
    let RunOutcome::Finished { steps: total, .. } =
        tokio::task::spawn_blocking(move || resumed.run())
            .await
            .unwrap()
            .unwrap()
    else {
        panic!("expected the resumed run to finish")
    };
    assert_eq!(
        total, 8,
        "16 tasks in batches of 2, none repeated or skipped"
    );
    let epoch_one = steps(&f.events().await, 1);
    let mut unique = epoch_one.clone();
    unique.dedup();
    assert_eq!(
        unique,
        (1..=8).collect::<Vec<_>>(),
        "step numbers continue after the resume: {epoch_one:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_stops_when_a_newer_claim_takes_its_job() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 2).await;
    let run = f.run(2, 1, 100, CancellationToken::new());
    f.claim(1, "other").await;
    let outcome = tokio::task::spawn_blocking(move || run.run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RunOutcome::LostClaim);
    assert!(
        f.store
            .list(&layout::checkpoints_prefix(&f.job))
            .await
            .unwrap()
            .is_empty()
            && f.store.adapter_commit(&f.job).await.unwrap().is_none(),
        "a superseded run writes nothing"
    );
    let reported: Vec<_> = f.events().await;
    assert!(
        reported.iter().all(|e| e.trainer_generation() == Some(0)),
        "every event names the run's generation: {reported:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_loses_the_commit_leaves_the_committed_adapter_as_it_is() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 2).await;
    let first = f.run(1, 1, 100, CancellationToken::new());
    let outcome = tokio::task::spawn_blocking(move || first.run())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, RunOutcome::Finished { .. }),
        "{outcome:?}"
    );
    let committed = f.store.get(&layout::adapter_weights(&f.job)).await.unwrap();
    // A run of a later generation (its assignment raced the first one's finish) trains
    // other weights from scratch and tries to commit them.
    for key in f
        .store
        .list(&layout::checkpoints_prefix(&f.job))
        .await
        .unwrap()
    {
        f.store.delete(&key).await.unwrap();
    }
    f.claim(1, "late-trainer").await;
    let mut late = f.run(1, 1, 100, CancellationToken::new());
    late.claim_generation = 1;
    late.assignment.options.seed = 7;
    let outcome = tokio::task::spawn_blocking(move || late.run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, RunOutcome::LostClaim);
    assert_eq!(
        f.store.get(&layout::adapter_weights(&f.job)).await.unwrap(),
        committed,
        "the published adapter never changes after the commit"
    );
    assert_eq!(
        f.store
            .adapter_commit(&f.job)
            .await
            .unwrap()
            .unwrap()
            .generation,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_newest_checkpoints_are_kept() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 8).await;
    let run = f.run(1, 1, 1, CancellationToken::new());
    tokio::task::spawn_blocking(move || run.run())
        .await
        .unwrap()
        .unwrap();
    let keys = f
        .store
        .list(&layout::checkpoints_prefix(&f.job))
        .await
        .unwrap();
    let manifests: Vec<_> = keys
        .iter()
        .filter(|k| k.ends_with("manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 2, "{keys:?}");
    assert_eq!(keys.len(), 6, "three files per kept checkpoint: {keys:?}");
    let (latest, _, _) = Checkpoint::load_latest(&f.store, &f.job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.step, 4);
}

#[tokio::test]
async fn a_claim_is_taken_once_and_never_behind_a_newer_one() {
    let f = Fixture::new();
    let claim = |generation| crate::worker::claim(&f.store, &f.job, "t", generation);
    assert_eq!(claim(0).await.unwrap(), Some(0));
    assert_eq!(claim(0).await.unwrap(), None, "a duplicate assignment");
    assert_eq!(claim(2).await.unwrap(), Some(2), "a reassignment");
    assert_eq!(claim(1).await.unwrap(), None, "a stale assignment");
}

#[tokio::test]
async fn an_idle_trainer_exits_after_its_idle_limit() {
    let f = Fixture::new();
    let config = crate::TrainWorkerConfig {
        trainer_id: "idle-trainer".into(),
        lease: Duration::from_secs(3),
        run: RunOptions::default(),
        exit_when_idle: Some(Duration::from_millis(200)),
        unserved_model_timeout: Duration::from_secs(600),
    };
    let worker = crate::run_train_worker(
        f.broker.clone(),
        f.store.clone(),
        f.engine.clone(),
        config,
        CancellationToken::new(),
    );
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .expect("the trainer exits when idle")
        .unwrap();
}

/// Runs a trainer on `f` until `for_how_long` has passed, then shuts it down.
async fn run_trainer_for(f: &Fixture, unserved_model_timeout: Duration, for_how_long: Duration) {
    let config = crate::TrainWorkerConfig {
        trainer_id: "tiny-trainer".into(),
        lease: Duration::from_secs(3),
        run: RunOptions::default(),
        exit_when_idle: None,
        unserved_model_timeout,
    };
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(crate::run_train_worker(
        f.broker.clone(),
        f.store.clone(),
        f.engine.clone(),
        config,
        shutdown.clone(),
    ));
    tokio::time::sleep(for_how_long).await;
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

async fn publish_assignment_for_another_model(f: &Fixture, published_at_ms: i64) {
    let assignment = TrainAssignment {
        job_id: f.job.clone(),
        base_model: "some-other-model".into(),
        options: TrainingOptions::default(),
        chunk_count: 1,
        generation: 0,
        published_at_ms,
    };
    f.broker
        .publish(
            queues::TRAIN,
            &serde_json::to_vec(&assignment).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_for_another_base_model_is_passed_on_to_other_trainers() {
    let f = Fixture::new();
    publish_assignment_for_another_model(&f, lift_shared::messages::now_ms()).await;
    // Past one pass-on pause: taken, put back, taken again, then shut down mid-pause.
    run_trainer_for(&f, Duration::from_secs(600), Duration::from_millis(2500)).await;
    assert_eq!(
        f.broker.queue_depth(queues::TRAIN).await.unwrap(),
        1,
        "the assignment is back in the queue for a trainer that holds its model"
    );
    let failed = f
        .events()
        .await
        .into_iter()
        .any(|event| matches!(event, ProgressEvent::TrainingFailed { .. }));
    assert!(
        !failed,
        "the job is not failed while another trainer may take it"
    );
    assert!(f
        .store
        .get(&layout::claim(&f.job, 0))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_no_trainer_took_in_time_fails_with_the_reason() {
    let f = Fixture::new();
    let an_hour_ago = lift_shared::messages::now_ms() - 3_600_000;
    publish_assignment_for_another_model(&f, an_hour_ago).await;
    run_trainer_for(&f, Duration::from_secs(600), Duration::from_millis(500)).await;
    assert_eq!(f.broker.queue_depth(queues::TRAIN).await.unwrap(), 0);
    let reasons: Vec<String> = f
        .events()
        .await
        .into_iter()
        .filter_map(|event| match event {
            ProgressEvent::TrainingFailed { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("\"some-other-model\" took the job within 600 s")
            && reasons[0].contains("serves tiny-random"),
        "{}",
        reasons[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_loss_stops_being_a_number_fails_and_commits_nothing() {
    let f = Fixture::new();
    f.claim(0, "test-trainer").await;
    f.put_tasks(0, 4).await;
    let mut run = f.run(1, 2, 100, CancellationToken::new());
    // Scales the adapter's output by 5e29: the first update overflows it.
    run.assignment.options.alpha = 2e30;
    let result = tokio::task::spawn_blocking(move || run.run())
        .await
        .unwrap();
    let Err(TrainError::Diverged { step, loss }) = result else {
        panic!("{result:?}");
    };
    assert!(step >= 1 && !loss.is_finite(), "step {step}, loss {loss}");
    assert_eq!(f.store.adapter_commit(&f.job).await.unwrap(), None);
    // Every event reads back (a NaN would be written as null), and none reports that step.
    let reported = steps(&f.events().await, 1);
    assert!(
        reported.iter().all(|&reported| reported < step),
        "{reported:?}"
    );
}
