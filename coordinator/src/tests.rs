//! Coordinator behaviour end to end over the in-process broker and a `memory://` store.
//!
//! Over 600 lines: one test per coordinator behaviour, sharing one harness.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lift_broker::memory::InProcessBroker;
use lift_broker::{queues, Broker, Headers};
use lift_shared::ids::JobId;
use lift_shared::messages::{now_ms, ProgressEvent, SynthChunk, TrainAssignment};
use lift_shared::proto;
use lift_shared::proto::lift_service_server::LiftService;
use lift_shared::spec::{AcceptAnyModel, ModelCatalog};
use lift_shared::state::{JobState, JobStatus};
use lift_store::{layout, Store};
use tonic::{Code, Request};

use crate::{Coordinator, CoordinatorOptions, LiftServiceImpl};

const ESSAY: &str = "Dolores Park is sunny. Mr. Smith eats a sandwich there. \
    The best thing to do in San Francisco is to sit in the park. It costs 3.50 dollars. \
    Nobody knows why. The end.";

struct Harness {
    store: Store,
    broker: InProcessBroker,
    coordinator: Coordinator,
    service: LiftServiceImpl,
}

fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        trainer_lease: Duration::from_millis(300),
        ..CoordinatorOptions::from_config(&lift_shared::config::Config::default())
    }
}

async fn start_with(
    store: Store,
    broker: InProcessBroker,
    catalog: Arc<dyn ModelCatalog>,
) -> Harness {
    let coordinator =
        Coordinator::start(options(), store.clone(), Arc::new(broker.clone()), catalog)
            .await
            .unwrap();
    let service = LiftServiceImpl::new(coordinator.ctx.clone());
    Harness {
        store,
        broker,
        coordinator,
        service,
    }
}

async fn start() -> Harness {
    start_with(
        Store::open("memory://", None).unwrap(),
        InProcessBroker::default(),
        Arc::new(AcceptAnyModel),
    )
    .await
}

fn submit_request(chunk_sentences: u32) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        documents: vec![proto::Document {
            title: "Essay".into(),
            text: ESSAY.into(),
        }],
        synthesis: Some(proto::SynthesisOptions {
            chunk_sentences,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn submit(h: &Harness, chunk_sentences: u32) -> (JobId, proto::JobStatus) {
    let response = h
        .service
        .submit_job(Request::new(submit_request(chunk_sentences)))
        .await
        .unwrap()
        .into_inner();
    (
        JobId::parse(&response.job_id).unwrap(),
        response.status.unwrap(),
    )
}

async fn get(h: &Harness, job: &JobId) -> proto::JobStatus {
    h.service
        .get_job(Request::new(proto::GetJobRequest {
            job_id: job.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn send_event(h: &Harness, event: &ProgressEvent) {
    h.broker
        .publish(
            queues::EVENTS,
            &serde_json::to_vec(event).unwrap(),
            Headers::new(),
        )
        .await
        .unwrap();
}

/// Polls until `check` holds for the job's status (events are processed asynchronously).
async fn wait_for(
    h: &Harness,
    job: &JobId,
    check: impl Fn(&proto::JobStatus) -> bool,
) -> proto::JobStatus {
    for _ in 0..100 {
        let status = get(h, job).await;
        if check(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached; last status {:?}", get(h, job).await);
}

async fn wait_for_stored(
    h: &Harness,
    job: &JobId,
    check: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    for _ in 0..100 {
        if let Some(status) = h.store.read_latest_status(job).await.unwrap() {
            if check(&status) {
                return status;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stored record never matched");
}

fn synthesized(job: &JobId, chunk: u32) -> ProgressEvent {
    ProgressEvent::ChunkSynthesized {
        job_id: job.clone(),
        chunk_index: chunk,
        sentences: 2,
        sentences_failed: 0,
        tasks: 4,
        pairs_dropped: 1,
        facts_found: 0,
        facts_covered: 0,
        at_ms: now_ms(),
    }
}

async fn drain(broker: &InProcessBroker, queue: &str) -> Vec<Vec<u8>> {
    let mut stream = broker.consume(queue, 0).await.unwrap();
    let mut payloads = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(100), stream.next()).await
    {
        payloads.push(delivery.payload().to_vec());
        delivery.ack().await.unwrap();
    }
    payloads
}

#[tokio::test]
async fn submit_publishes_every_chunk_and_the_train_assignment() {
    let h = start().await;
    let (job, status) = submit(&h, 2).await;
    assert_eq!(status.state(), proto::JobState::Queued);
    assert_eq!(status.sentences_total, 6);
    assert_eq!(status.chunks_total, 3);

    let chunks: Vec<SynthChunk> = drain(&h.broker, queues::SYNTH)
        .await
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let mut indices: Vec<u32> = chunks.iter().map(|c| c.chunk_index).collect();
    indices.sort_unstable();
    assert_eq!(indices, vec![0, 1, 2]);
    assert!(chunks.iter().all(|c| c.job_id == job && c.title == "Essay"));

    let assignments = drain(&h.broker, queues::TRAIN).await;
    assert_eq!(assignments.len(), 1);
    let assignment: TrainAssignment = serde_json::from_slice(&assignments[0]).unwrap();
    assert_eq!(assignment.chunk_count, 3);
    assert_eq!(assignment.base_model, "default");

    assert!(h.store.exists(&layout::spec(&job)).await.unwrap());
    let stored = h.store.read_latest_status(&job).await.unwrap().unwrap();
    assert!(stored.chunks_published);
    assert_eq!(stored.state, JobState::Queued);
}

#[tokio::test]
async fn events_update_counts_once_and_are_stored() {
    let h = start().await;
    let (job, _) = submit(&h, 2).await;
    send_event(&h, &synthesized(&job, 0)).await;
    send_event(&h, &synthesized(&job, 0)).await;
    send_event(&h, &synthesized(&job, 1)).await;
    let status = wait_for(&h, &job, |s| s.chunks_synthesized == 2).await;
    assert_eq!(status.state(), proto::JobState::Running);
    assert_eq!(status.tasks_total, 8);
    assert_eq!(status.pairs_dropped, 2);
    assert_eq!(status.sentences_synthesized, 4);
    let stored = wait_for_stored(&h, &job, |s| s.chunks_synthesized == 2).await;
    assert_eq!(stored.tasks_total, 8);
    // Every event was acknowledged once its record was stored.
    assert_eq!(h.broker.queue_depth(queues::EVENTS).await.unwrap(), 0);
}

#[tokio::test]
async fn training_finished_succeeds_and_ends_the_watch_stream() {
    let h = start().await;
    let (job, _) = submit(&h, 6).await;
    let mut stream = h
        .service
        .watch_job(Request::new(proto::WatchJobRequest {
            job_id: job.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.state(), proto::JobState::Queued);

    send_event(&h, &synthesized(&job, 0)).await;
    send_event(
        &h,
        &ProgressEvent::TrainingStep {
            job_id: job.clone(),
            generation: 0,
            epoch: 1,
            step: 3,
            loss: 1.25,
            tokens: 512,
            learning_rate: 1e-3,
            at_ms: now_ms(),
        },
    )
    .await;
    send_event(
        &h,
        &ProgressEvent::TrainingFinished {
            job_id: job.clone(),
            generation: 0,
            adapter_uri: layout::adapter_dir(&job),
            steps: 9,
            final_loss: 0.5,
            at_ms: now_ms(),
        },
    )
    .await;
    let mut last = first;
    while let Some(status) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        last = status.unwrap();
    }
    assert_eq!(last.state(), proto::JobState::Succeeded);
    assert_eq!(last.adapter_uri, layout::adapter_dir(&job));
    assert_eq!(last.step, 9);
    let stored = h.store.read_latest_status(&job).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Succeeded);
    assert!(stored.last_chunk_at_ms.unwrap() <= stored.finished_at_ms.unwrap());
}

#[tokio::test]
async fn cancel_stops_the_job_and_refuses_a_second_cancel() {
    let h = start().await;
    let (job, _) = submit(&h, 2).await;
    let response = h
        .service
        .cancel_job(Request::new(proto::CancelJobRequest {
            job_id: job.to_string(),
            reason: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let status = response.status.unwrap();
    assert_eq!(status.state(), proto::JobState::Cancelled);
    assert_eq!(status.error, "cancelled by user");
    assert!(h.store.exists(&layout::cancel(&job)).await.unwrap());
    let stored = h.store.read_latest_status(&job).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Cancelled);

    let again = h
        .service
        .cancel_job(Request::new(proto::CancelJobRequest {
            job_id: job.to_string(),
            reason: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("already cancelled"),
        "{}",
        again.message()
    );

    // Late events change nothing on a terminal job.
    send_event(&h, &synthesized(&job, 0)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&h, &job).await.chunks_synthesized, 0);
}

#[tokio::test]
async fn dead_lettered_chunks_fail_the_job_past_the_threshold() {
    let h = start().await;
    let (job, _) = submit(&h, 2).await;
    // A synth worker gives up on every chunk.
    let mut synth = h.broker.consume(queues::SYNTH, 0).await.unwrap();
    for _ in 0..3 {
        let delivery = synth.next().await.unwrap().unwrap();
        delivery.reject().await.unwrap();
    }
    let status = wait_for(&h, &job, |s| s.state() == proto::JobState::Failed).await;
    assert_eq!(status.chunks_failed, 2, "2 of 3 already passes 50%");
    assert!(
        status.error.starts_with("2 of 3 chunks failed"),
        "{}",
        status.error
    );
    assert!(status.chunk_failures[0].reason.contains("rejected"));
    assert!(h
        .store
        .exists(&layout::failed(&job, status.chunk_failures[0].chunk))
        .await
        .unwrap());
    assert!(h.store.exists(&layout::cancel(&job)).await.unwrap());
    wait_for_stored(&h, &job, |s| s.state == JobState::Failed).await;
}

#[tokio::test]
async fn restart_rebuilds_jobs_and_republishes_lost_work() {
    let store = Store::open("memory://", None).unwrap();
    let first = start_with(
        store.clone(),
        InProcessBroker::default(),
        Arc::new(AcceptAnyModel),
    )
    .await;
    let (job, _) = submit(&first, 2).await;
    // Chunk 0 is done (task file written) but its event dies with the process.
    store
        .put_create(&layout::tasks(&job, 0), "{\"sentence_index\":0,\"question\":\"q\",\"answer\":\"a\"}\n{\"sentence_index\":1,\"question\":\"q\",\"answer\":\"a\"}\n")
        .await
        .unwrap();
    first.coordinator.shutdown().await;

    // A new process: the in-process queues are empty again.
    let second = start_with(store, InProcessBroker::default(), Arc::new(AcceptAnyModel)).await;
    let status = get(&second, &job).await;
    assert_eq!(
        status.chunks_synthesized, 1,
        "task file in the store counts"
    );
    assert_eq!(status.tasks_total, 2);
    assert_eq!(status.state(), proto::JobState::Running);
    let chunks: Vec<SynthChunk> = drain(&second.broker, queues::SYNTH)
        .await
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let mut indices: Vec<u32> = chunks.iter().map(|c| c.chunk_index).collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        vec![1, 2],
        "only unfinished chunks are republished"
    );
    assert_eq!(drain(&second.broker, queues::TRAIN).await.len(), 1);
}

#[tokio::test]
async fn invalid_requests_name_what_is_wrong() {
    let catalog = |name: &str| {
        if name == "default" {
            Ok(())
        } else {
            Err("not in the model cache".to_string())
        }
    };
    let h = start_with(
        Store::open("memory://", None).unwrap(),
        InProcessBroker::default(),
        Arc::new(catalog),
    )
    .await;

    let mut empty = submit_request(2);
    empty.documents[0].text = "   ".into();
    let error = h.service.submit_job(Request::new(empty)).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(error.message(), "document 0 is empty");

    let mut bad_model = submit_request(2);
    bad_model.base_model = "nope.gguf".into();
    let error = h
        .service
        .submit_job(Request::new(bad_model))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "base_model \"nope.gguf\": not in the model cache"
    );

    let mut bad_rank = submit_request(2);
    bad_rank.training = Some(proto::TrainingOptions {
        rank: 1000,
        ..Default::default()
    });
    let error = h
        .service
        .submit_job(Request::new(bad_rank))
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "training.rank is 1000; it must be in 1..=512"
    );

    let error = h
        .service
        .get_job(Request::new(proto::GetJobRequest {
            job_id: "../etc".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let error = h
        .service
        .get_job(Request::new(proto::GetJobRequest {
            job_id: "no-such-job".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), "job no-such-job not found");
    assert!(
        h.store.list_job_ids().await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn list_jobs_pages_newest_first() {
    let h = start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&h, 4).await.0);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first_page = h
        .service
        .list_jobs(Request::new(proto::ListJobsRequest {
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<&str> = first_page.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(first_page.next_page_token, ids[1].as_str());
    let second_page = h
        .service
        .list_jobs(Request::new(proto::ListJobsRequest {
            page_size: 2,
            page_token: first_page.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<&str> = second_page.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(listed, vec![ids[0].as_str()]);
    assert!(second_page.next_page_token.is_empty());
}

async fn claim(h: &Harness, job: &JobId, generation: u32, trainer: &str) {
    let claim = lift_store::Claim {
        trainer: trainer.into(),
        at_ms: now_ms(),
    };
    assert!(h
        .store
        .put_json_create(&layout::claim(job, generation), &claim)
        .await
        .unwrap());
}

async fn next_assignment(h: &Harness) -> Option<TrainAssignment> {
    let mut train = h.broker.consume(queues::TRAIN, 1).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), train.next())
        .await
        .ok()??
        .unwrap();
    let assignment = serde_json::from_slice(delivery.payload()).unwrap();
    delivery.ack().await.unwrap();
    Some(assignment)
}

#[tokio::test]
async fn a_claim_without_heartbeat_goes_to_the_next_generation_and_the_old_one_is_ignored() {
    let h = start().await;
    let (job, _) = submit(&h, 6).await;
    assert_eq!(drain(&h.broker, queues::TRAIN).await.len(), 1);
    // The trainer claimed the job and died before it reported starting.
    claim(&h, &job, 0, "gpu-0").await;
    let assignment = next_assignment(&h).await.expect("reassignment within 5 s");
    assert_eq!(
        (assignment.job_id.clone(), assignment.generation),
        (job.clone(), 1)
    );
    // Nothing the superseded run says changes the job.
    send_event(
        &h,
        &ProgressEvent::TrainingFailed {
            job_id: job.clone(),
            generation: 0,
            reason: "woke up late".into(),
            at_ms: now_ms(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = h.store.read_latest_status(&job).await.unwrap().unwrap();
    assert_eq!(stored.trainer_generation, 1);
    assert!(!stored.state.is_terminal(), "{:?}", stored.state);
}

#[tokio::test]
async fn a_healthy_trainer_keeps_its_job_whatever_its_clock_says() {
    let h = start().await;
    let (job, _) = submit(&h, 6).await;
    drain(&h.broker, queues::TRAIN).await;
    claim(&h, &job, 0, "gpu-0").await;
    for step in 0..10 {
        // An hour behind: only the heartbeat changing matters.
        let beat = lift_store::Heartbeat {
            trainer: "gpu-0".into(),
            generation: 0,
            at_ms: now_ms() - 3_600_000,
            step,
        };
        h.store
            .put_json_overwrite(&layout::heartbeat(&job), &beat)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.broker.queue_depth(queues::TRAIN).await.unwrap(), 0);
}

#[tokio::test]
async fn a_silent_trainer_whose_adapter_is_committed_succeeds_the_job() {
    let h = start().await;
    let (job, _) = submit(&h, 6).await;
    drain(&h.broker, queues::TRAIN).await;
    claim(&h, &job, 0, "gpu-0").await;
    // The run committed its adapter and then lost its broker connection for good.
    let commit = lift_store::AdapterCommit {
        generation: 0,
        trainer: "gpu-0".into(),
        steps: 9,
        final_loss: 0.25,
        at_ms: now_ms(),
    };
    for (key, bytes) in [
        (layout::staged_adapter_weights(&job, 0), "weights"),
        (layout::staged_adapter_config(&job, 0), "{}"),
    ] {
        h.store.put_overwrite(&key, bytes).await.unwrap();
    }
    assert!(h
        .store
        .put_json_create(&layout::adapter_commit(&job), &commit)
        .await
        .unwrap());
    wait_for_stored(&h, &job, |s| s.state == JobState::Succeeded).await;
    assert_eq!(
        h.store
            .get(&layout::adapter_config(&job))
            .await
            .unwrap()
            .unwrap(),
        "{}".as_bytes(),
        "the committed adapter was published"
    );
    assert_eq!(h.broker.queue_depth(queues::TRAIN).await.unwrap(), 0);
}

#[tokio::test]
async fn a_silent_trainer_whose_adapter_commit_is_unreadable_fails_the_job() {
    let h = start().await;
    let (job, _) = submit(&h, 6).await;
    drain(&h.broker, queues::TRAIN).await;
    claim(&h, &job, 0, "gpu-0").await;
    // As an older trainer wrote it after its loss became NaN: serde writes NaN as null.
    let commit = r#"{"generation":0,"trainer":"gpu-0","steps":60,"final_loss":null,"at_ms":1}"#;
    h.store
        .put_overwrite(&layout::adapter_commit(&job), commit)
        .await
        .unwrap();
    let status = wait_for_stored(&h, &job, |s| s.state == JobState::Failed).await;
    let error = status.error.unwrap_or_default();
    assert!(error.contains("adapter commit is unreadable"), "{error}");
    assert_eq!(h.broker.queue_depth(queues::TRAIN).await.unwrap(), 0);
}

#[tokio::test]
async fn grpc_server_answers_health_and_service_calls() {
    let h = start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let coordinator = Arc::new(h.coordinator);
    let server = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            let security = lift_shared::auth::ServerSecurity::open();
            crate::serve_grpc_on(listener, &coordinator, &security, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let endpoint = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lift.v1.LiftService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let mut client = proto::lift_service_client::LiftServiceClient::new(channel);
    let submitted = client
        .submit_job(submit_request(3))
        .await
        .unwrap()
        .into_inner();
    let fetched = client
        .get_job(proto::GetJobRequest {
            job_id: submitted.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.chunks_total, 2);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_job() {
    let h = start().await;
    let keyed = |id: &str| proto::SubmitJobRequest {
        request_id: id.to_string(),
        ..submit_request(2)
    };
    let first = h
        .service
        .submit_job(Request::new(keyed("corpus/doc-1.md")))
        .await
        .unwrap()
        .into_inner();
    let again = h
        .service
        .submit_job(Request::new(keyed("corpus/doc-1.md")))
        .await
        .unwrap()
        .into_inner();
    let other = h
        .service
        .submit_job(Request::new(keyed("corpus/doc-2.md")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.job_id, again.job_id);
    assert_ne!(first.job_id, other.job_id);
    // One job's chunks and assignment per distinct id: the retry published nothing.
    assert_eq!(drain(&h.broker, queues::SYNTH).await.len(), 6);
    assert_eq!(drain(&h.broker, queues::TRAIN).await.len(), 2);

    let error = h
        .service
        .submit_job(Request::new(keyed("no spaces allowed")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("request_id"),
        "{}",
        error.message()
    );
}

/// The reservation a submit with `request_id` writes first (open tenant), for a new job id.
async fn reserve(h: &Harness, request_id: &str) -> JobId {
    use sha2::Digest;
    let job = JobId::new();
    let key = layout::submit_request(&hex::encode(sha2::Sha256::digest(request_id)));
    let record = lift_store::SubmitRequestRecord {
        request_id: request_id.into(),
        job_id: job.clone(),
        at_ms: now_ms(),
    };
    h.store.put_json_create(&key, &record).await.unwrap();
    job
}

#[tokio::test]
async fn a_request_id_reserved_by_a_crashed_submit_creates_the_reserved_job() {
    let h = start().await;
    // What a coordinator that died between reserving the id and creating the job leaves.
    let reserved = reserve(&h, "retry-me").await;

    let response = h
        .service
        .submit_job(Request::new(proto::SubmitJobRequest {
            request_id: "retry-me".into(),
            ..submit_request(2)
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.job_id, reserved.to_string());
    assert_eq!(get(&h, &reserved).await.chunks_total, 3);
}

#[tokio::test]
async fn a_submit_that_crashed_after_writing_the_spec_is_finished_by_its_retry() {
    let h = start().await;
    // What a coordinator that died between the job's spec and its first record leaves
    // (found by scripts/chaos.sh: every retry answered INTERNAL "exists but has no status").
    let reserved = reserve(&h, "crashed").await;
    let request = proto::SubmitJobRequest {
        request_id: "crashed".into(),
        ..submit_request(2)
    };
    let spec = lift_shared::proto_convert::spec_from_submit(
        request.clone(),
        &h.coordinator.ctx.default_base_model,
    )
    .unwrap();
    h.store
        .put_json_create(&layout::spec(&reserved), &spec)
        .await
        .unwrap();

    let response = h
        .service
        .submit_job(Request::new(request.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.job_id, reserved.to_string());
    assert_eq!(get(&h, &reserved).await.chunks_total, 3);
    assert_eq!(drain(&h.broker, queues::SYNTH).await.len(), 3);

    // A spec of other options under a reserved id is another job's: refused, not mixed in.
    let other = reserve(&h, "other").await;
    h.store
        .put_json_create(&layout::spec(&other), &spec)
        .await
        .unwrap();
    let error = h
        .service
        .submit_job(Request::new(proto::SubmitJobRequest {
            request_id: "other".into(),
            ..submit_request(3)
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("new request id"), "{error:?}");
}

#[tokio::test]
async fn a_submit_whose_client_hangs_up_still_creates_and_publishes_the_job() {
    let h = start().await;
    let request = proto::SubmitJobRequest {
        request_id: "hung-up".into(),
        ..submit_request(2)
    };
    // tonic drops the handler's future when the client goes away; here after its first poll.
    {
        let mut handler = std::pin::pin!(h.service.submit_job(Request::new(request.clone())));
        assert!(futures::poll!(handler.as_mut()).is_pending());
    }
    let mut published = Vec::new();
    for _ in 0..50 {
        published.extend(drain(&h.broker, queues::SYNTH).await);
        if published.len() == 3 {
            break;
        }
    }
    assert_eq!(
        published.len(),
        3,
        "the job's chunks were not all published"
    );
    assert_eq!(drain(&h.broker, queues::TRAIN).await.len(), 1);

    // The client's retry finds that job, complete, and publishes nothing again.
    let retry = h
        .service
        .submit_job(Request::new(request))
        .await
        .unwrap()
        .into_inner();
    let job = JobId::parse(&retry.job_id).unwrap();
    let stored = wait_for_stored(&h, &job, |s| s.chunks_published).await;
    assert_eq!(stored.chunks_total, 3);
    assert!(drain(&h.broker, queues::SYNTH).await.is_empty());
}

/// The in-process broker, except that publishing fails while `down` is set: an outage longer
/// than a publish retries.
#[derive(Clone, Default)]
struct OutageBroker {
    inner: InProcessBroker,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl Broker for OutageBroker {
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), lift_broker::BrokerError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(lift_broker::BrokerError::Unavailable(
                "broker down (test)".into(),
            ));
        }
        self.inner.publish(queue, payload, headers).await
    }

    async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<lift_broker::DeliveryStream, lift_broker::BrokerError> {
        self.inner.consume(queue, prefetch).await
    }

    async fn fetch(
        &self,
        queue: &str,
    ) -> Result<Option<Box<dyn lift_broker::Delivery>>, lift_broker::BrokerError> {
        self.inner.fetch(queue).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, lift_broker::BrokerError> {
        self.inner.queue_depth(queue).await
    }
}

#[tokio::test]
async fn a_job_accepted_while_the_broker_is_down_is_queued_once_it_is_back() {
    let broker = OutageBroker::default();
    broker.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let store = Store::open("memory://", None).unwrap();
    let coordinator = Coordinator::start(
        options(),
        store.clone(),
        Arc::new(broker.clone()),
        Arc::new(AcceptAnyModel),
    )
    .await
    .unwrap();
    let service = LiftServiceImpl::new(coordinator.ctx.clone());
    let request = proto::SubmitJobRequest {
        request_id: "outage".into(),
        ..submit_request(2)
    };
    let refused = service
        .submit_job(Request::new(request.clone()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("accepted"), "{refused:?}");
    assert!(drain(&broker.inner, queues::SYNTH).await.is_empty());

    broker
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = service
        .submit_job(Request::new(request))
        .await
        .unwrap()
        .into_inner();
    let job = JobId::parse(&retried.job_id).unwrap();
    let mut published = false;
    for _ in 0..100 {
        let stored = store.read_latest_status(&job).await.unwrap().unwrap();
        if stored.chunks_published {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "the watchdog queued the accepted job");
    assert_eq!(drain(&broker.inner, queues::SYNTH).await.len(), 3);
    assert_eq!(drain(&broker.inner, queues::TRAIN).await.len(), 1);
    assert_eq!(store.list_job_ids().await.unwrap().len(), 1);
}
