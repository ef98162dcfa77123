//! Distributed mode as separate OS processes: 1 coordinator, 2 synthesis workers, 1-2
//! trainers, `lift serve` as the generator over HTTP, real RabbitMQ (a vhost per test) and S3
//! on moto (a prefix per test). Faults are injected the way they happen: kill -9, restarts,
//! force-closed broker connections, a poison chunk, malformed messages.
//!
//! Over 600 lines: one test per fault, sharing the cluster harness of `tests/src/lib.rs`.

// Test harness variables (scripts/test-env.sh), not process configuration.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use lift_broker::rabbitmq::RabbitBroker;
use lift_broker::{queues, Broker, Headers};
use lift_shared::proto::{self, JobState};
use lift_store::layout;
use lift_tests::{made_up_document, rabbitmqctl, Cluster};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

fn succeeded(status: &proto::JobStatus) -> bool {
    status.state == JobState::Succeeded as i32
}

/// The store keys of `job` under the prefix `layout` gives.
async fn keys(
    cluster: &Cluster,
    job: &str,
    prefix: fn(&lift_shared::ids::JobId) -> String,
) -> Vec<String> {
    let job = lift_shared::ids::JobId::parse(job).unwrap();
    cluster.store().list(&prefix(&job)).await.unwrap()
}

async fn task_files(cluster: &Cluster, job: &str) -> Vec<String> {
    keys(cluster, job, layout::tasks_prefix).await
}

/// Steps an uninterrupted run takes: every task trained once per epoch.
fn expected_steps(status: &proto::JobStatus, batch: u64) -> u64 {
    status.tasks_total.div_ceil(batch) * u64::from(status.epochs_total)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_completes_with_one_task_file_per_chunk_and_a_loadable_adapter() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(4), 2)
        .await;
    let status = cluster
        .wait_for_success_with_every_chunk(&job, JOB_TIMEOUT)
        .await;
    assert_eq!(
        task_files(&cluster, &job).await.len() as u32,
        status.chunks_synthesized
    );
    assert_eq!(status.step, expected_steps(&status, 2));
    assert!(
        status.adapter_uri.starts_with("s3://"),
        "{}",
        status.adapter_uri
    );

    // The adapter in S3 loads onto the base model and answers with no document in the prompt.
    let mut ask = cluster.spawn(
        "ask",
        &[
            "ask",
            &job,
            "Who is the lighthouse keeper of Vellmar Island?",
        ],
    );
    let exit = ask
        .wait_exit(Duration::from_secs(120))
        .expect("lift ask finishes");
    let answer = ask.log_text();
    assert!(exit.success(), "lift ask failed: {answer}");
    assert!(!answer.trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_synth_worker_mid_job_loses_no_chunk_and_trains_none_twice() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(8), 1)
        .await;
    cluster
        .wait_until(&job, JOB_TIMEOUT, |s| s.chunks_synthesized >= 1)
        .await;
    cluster.synth_workers[0].kill_hard();
    let status = cluster
        .wait_for_success_with_every_chunk(&job, JOB_TIMEOUT)
        .await;
    // No chunk lost: each one ended synthesized (the small generator may fail on one).
    assert_eq!(
        status.chunks_synthesized + status.chunks_failed,
        status.chunks_total
    );
    assert_eq!(
        task_files(&cluster, &job).await.len() as u32,
        status.chunks_synthesized
    );
    assert_eq!(
        status.step,
        expected_steps(&status, 2),
        "a chunk trained twice adds steps"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_trainer_is_replaced_by_one_that_resumes_from_the_checkpoint() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(8), 2)
        .await;
    let before = cluster.wait_until(&job, JOB_TIMEOUT, |s| s.step >= 2).await;
    cluster.trainers[0].kill_hard();
    cluster.start_trainer();
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    let second = cluster.trainers[1].log_text();
    assert!(
        second.contains("resuming from checkpoint"),
        "the second trainer resumed:\n{second}"
    );
    assert_eq!(
        status.step,
        expected_steps(&status, 2),
        "steps continue, they do not restart (killed at {})",
        before.step
    );
}

async fn claims(cluster: &Cluster, job: &str) -> Vec<String> {
    keys(cluster, job, layout::claims_prefix).await
}

async fn adapter_digest(cluster: &Cluster, job: &str) -> String {
    use sha2::Digest;
    let job = lift_shared::ids::JobId::parse(job).unwrap();
    let weights = cluster
        .store()
        .get(&layout::adapter_weights(&job))
        .await
        .unwrap()
        .expect("the adapter is published");
    format!("{:x}", sha2::Sha256::digest(&weights))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_paused_past_its_lease_cannot_change_the_job_once_another_took_it() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(8), 3)
        .await;
    cluster.wait_until(&job, JOB_TIMEOUT, |s| s.step >= 2).await;
    cluster.trainers[0].signal("STOP");
    cluster.start_trainer();
    // The watchdog hands the job to generation 1 a lease later; the new trainer claims it.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while claims(&cluster, &job).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no second claim\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.trainers[0].signal("CONT");
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    let digest = adapter_digest(&cluster, &job).await;
    let commit = cluster
        .store()
        .adapter_commit(&lift_shared::ids::JobId::parse(&job).unwrap())
        .await
        .unwrap()
        .expect("committed");
    // A newer generation committed. Usually the one that took over (1); on a loaded machine
    // its lease can lapse too and a later one (possibly the woken trainer, on a new claim)
    // finishes the job, which is the lease working, not the paused run changing the job.
    assert!(
        commit.generation >= 1,
        "the paused run (generation 0) committed\n{}",
        cluster.logs()
    );
    // Whatever the woken trainer still does, the job and its adapter stay as they are.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(adapter_digest(&cluster, &job).await, digest);
    let after = cluster.status(&job).await.expect("status");
    assert_eq!((after.state, after.step), (status.state, status.step));
    let first = cluster.trainers[0].log_text();
    assert!(
        first.contains("newer claim owns the job") || first.contains("LostClaim"),
        "the paused trainer stopped on its lost claim:\n{first}"
    );
    assert_eq!(
        claims(&cluster, &job).await.len(),
        commit.generation as usize + 1,
        "no claim after the committing one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_killed_right_after_claiming_does_not_strand_the_job() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(4), 1)
        .await;
    // Killed as soon as the claim exists: before it reports starting, often before its first
    // heartbeat.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while claims(&cluster, &job).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no claim\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.trainers[0].kill_hard();
    cluster.start_trainer();
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    assert_eq!(claims(&cluster, &job).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trainer_whose_training_thread_panics_fails_the_job_with_the_reason() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_coordinator().await;
    cluster.start_synth_worker();
    cluster.start_trainer_program(std::path::Path::new(env!(
        "CARGO_BIN_EXE_panicking_trainer"
    )));
    let job = cluster
        .submit("Vellmar Island", &made_up_document(4), 1)
        .await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert_eq!(
        status.state,
        JobState::Failed as i32,
        "{status:?}\n{}",
        cluster.logs()
    );
    assert!(
        status.error.contains("injected fault"),
        "the reason names the panic: {status:?}"
    );
    // The trainer stopped beating for the job (the lease is 4 s, a beat every third of it)
    // and lives on for the next one.
    let heartbeat = layout::heartbeat(&lift_shared::ids::JobId::parse(&job).unwrap());
    let beat = cluster.store().get(&heartbeat).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cluster.store().get(&heartbeat).await.unwrap(), beat);
    assert!(
        cluster.trainers[0]
            .wait_exit(Duration::from_secs(1))
            .is_none(),
        "the trainer exited\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_job_record_is_quarantined_and_the_coordinator_serves_the_rest() {
    let mut cluster = Cluster::with_generator("instant:".into());
    let damaged = lift_shared::ids::JobId::parse("damaged-job").unwrap();
    cluster
        .store()
        .put_overwrite(&layout::state(&damaged, 0), b"{\"state\": tru".to_vec())
        .await
        .unwrap();
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(3), 1)
        .await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    let coordinator_log = cluster.coordinator.as_ref().unwrap().log_text();
    assert!(
        coordinator_log.contains("damaged-job") && coordinator_log.contains("quarantined"),
        "{coordinator_log}"
    );
}

/// An S3 endpoint that forwards every request to moto without its `If-None-Match` header: a
/// server that speaks S3 but ignores create-only writes, as some S3-compatible stores do.
async fn s3_ignoring_create_only() -> String {
    let upstream = std::env::var("LIFT_TEST_S3_ENDPOINT").expect("LIFT_TEST_S3_ENDPOINT");
    let client = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let mut headers = parts.headers;
            for dropped in ["if-none-match", "host"] {
                headers.remove(dropped);
            }
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let response = client
                .request(parts.method, format!("{upstream}{path}"))
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let mut headers = response.headers().clone();
            for dropped in ["transfer-encoding", "connection"] {
                headers.remove(dropped);
            }
            let mut reply = axum::response::Response::new(axum::body::Body::from(
                response.bytes().await.unwrap(),
            ));
            *reply.status_mut() = status;
            *reply.headers_mut() = headers;
            reply
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().fallback(forward))
            .await
            .unwrap()
    });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_ignores_create_only_writes_is_refused_at_start() {
    let mut cluster = Cluster::with_generator("instant:".into());
    cluster
        .extra_env
        .push(("AWS_ENDPOINT_URL", s3_ignoring_create_only().await));
    let mut coordinator = cluster.spawn("coordinator", &["coordinator"]);
    let exit = coordinator.wait_exit(Duration::from_secs(60));
    let log = coordinator.log_text();
    assert!(
        exit.is_some_and(|status| !status.success()),
        "the coordinator ran on a store without create-only writes\n{log}"
    );
    // The probe's writes went through the proxy: it is the second write that was accepted.
    assert!(log.contains("does not honour create-only writes"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_rebuilds_state_and_the_job_completes() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(6), 1)
        .await;
    cluster
        .wait_until(&job, JOB_TIMEOUT, |s| s.chunks_synthesized >= 1)
        .await;
    cluster.coordinator.as_mut().unwrap().kill_hard();
    cluster.start_coordinator().await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    // No chunk lost: each one ended synthesized (the small generator may fail on one).
    assert_eq!(
        status.chunks_synthesized + status.chunks_failed,
        status.chunks_total
    );
    assert_eq!(status.step, expected_steps(&status, 2));
    assert!(!status.adapter_uri.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_reconnects_after_the_broker_closes_all_connections() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let job = cluster
        .submit("Vellmar Island", &made_up_document(6), 1)
        .await;
    cluster
        .wait_until(&job, JOB_TIMEOUT, |s| s.chunks_synthesized >= 1)
        .await;
    rabbitmqctl(&["close_all_connections", "lift test: forced close"]);
    let status = cluster
        .wait_for_success_with_every_chunk(&job, JOB_TIMEOUT)
        .await;
    assert_eq!(
        task_files(&cluster, &job).await.len() as u32,
        status.chunks_synthesized
    );
}

/// A generator that answers well, except for sentences containing `POISON`.
async fn poisoned_generator() -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(|Json(body): Json<Value>| async move {
            let prompt = body["messages"].to_string();
            let content = if prompt.contains("POISON") {
                "%%% garbage %%%".to_string()
            } else {
                json!({"pairs": [{"question": "Who is the lighthouse keeper of Vellmar Island?", "answer": "Oskar Tenby."}]}).to_string()
            };
            Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}/v1")
}

/// Free QA only: the default recipe would ask for a poison sentence's facts by template.
async fn submit_free_qa(cluster: &Cluster, title: &str, text: &str) -> String {
    let mut request = Cluster::job_request(title, text, 1);
    if let Some(synthesis) = request.synthesis.as_mut() {
        synthesis.recipe = proto::QuestionRecipe::FreeQa as i32;
    }
    let mut client = cluster.client().await;
    client
        .submit_job(request)
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_chunk_is_dead_lettered_and_the_job_completes_without_it() {
    let mut cluster = Cluster::with_generator(poisoned_generator().await);
    cluster.start_all().await;
    // The poison sentence comes last: later sentences would see it in their left context.
    let text = "Oskar Tenby keeps the lighthouse of Vellmar Island. Oskar Tenby keeps a cat \
                named Sixpence. Oskar Tenby was born in 1950. POISON sentence number one.";
    let job = submit_free_qa(&cluster, "Vellmar Island", text).await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());
    assert_eq!(status.chunks_failed, 1);
    assert_eq!(status.chunk_failures.len(), 1);
    assert!(!status.chunk_failures[0].reason.is_empty());
    let broker = RabbitBroker::connect(cluster.broker_options())
        .await
        .unwrap();
    let dead = broker
        .queue_depth(&queues::dead_letter_queue(queues::SYNTH))
        .await
        .unwrap();
    let failed_marker = task_files(&cluster, &job).await.len() as u32;
    assert_eq!(
        failed_marker,
        status.chunks_total - 1,
        "every other chunk has its task file"
    );
    // The coordinator consumes the dead-letter queue to mark the chunk; none is left behind unread.
    assert!(dead <= 1, "dead-letter queue depth {dead}");

    // Past the threshold the job fails, with the reason.
    let all_poison =
        "POISON one is here. POISON two is here. POISON three is here. Oskar Tenby keeps a cat.";
    let job = submit_free_qa(&cluster, "Poison", all_poison).await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert_eq!(status.state, JobState::Failed as i32, "{status:?}");
    assert!(status.error.contains("chunk"), "{}", status.error);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_jobs_from_four_clients_all_complete() {
    let mut cluster = Cluster::with_lift_serve().await;
    cluster.start_all().await;
    let cluster = std::sync::Arc::new(cluster);
    let mut clients = Vec::new();
    for client in 0..4 {
        let cluster = cluster.clone();
        clients.push(tokio::spawn(async move {
            let mut jobs = Vec::new();
            for job in 0..5 {
                let text = format!(
                    "Client {client} wrote note {job}. The note says the harbour wall is teal."
                );
                jobs.push(
                    cluster
                        .submit(&format!("Note {client}-{job}"), &text, 1)
                        .await,
                );
            }
            jobs
        }));
    }
    let mut jobs = Vec::new();
    for client in clients {
        jobs.extend(client.await.unwrap());
    }
    assert_eq!(jobs.len(), 20);
    for job in &jobs {
        let status = cluster
            .wait_for_terminal(job, Duration::from_secs(900))
            .await;
        assert!(succeeded(&status), "{job}: {status:?}\n{}", cluster.logs());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_at_the_edge_is_refused_and_loses_nothing() {
    let mut cluster = Cluster::with_generator(poisoned_generator().await);
    cluster.start_all().await;
    let mut client = cluster.client().await;

    let huge = "Oskar Tenby keeps the light. ".repeat(400_000);
    let error = client
        .submit_job(proto::SubmitJobRequest {
            documents: vec![proto::Document {
                title: "Huge".into(),
                text: huge,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{error:?}"
    );
    let error = client
        .get_job(proto::GetJobRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
    let error = client
        .get_job(proto::GetJobRequest {
            job_id: "../../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");

    // Malformed messages straight into every queue: dead-lettered, nobody crashes.
    let broker = RabbitBroker::connect(cluster.broker_options())
        .await
        .unwrap();
    for queue in [queues::SYNTH, queues::TRAIN, queues::EVENTS] {
        broker
            .publish(queue, b"{not json", Headers::new())
            .await
            .unwrap();
        broker
            .publish(
                queue,
                br#"{"job_id": "x", "unexpected": true}"#,
                Headers::new(),
            )
            .await
            .unwrap();
    }
    let job = cluster
        .submit(
            "Vellmar Island",
            "Oskar Tenby keeps the light on Vellmar Island.",
            1,
        )
        .await;
    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert!(succeeded(&status), "{status:?}\n{}", cluster.logs());

    let error = client
        .cancel_job(proto::CancelJobRequest {
            job_id: job.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    for process in cluster
        .synth_workers
        .iter_mut()
        .chain(cluster.trainers.iter_mut())
        .chain(cluster.coordinator.iter_mut())
    {
        assert!(
            process.wait_exit(Duration::from_millis(10)).is_none(),
            "{} crashed:\n{}",
            process.name,
            process.log_text()
        );
    }
    for queue in [queues::SYNTH, queues::TRAIN] {
        let dead = broker
            .queue_depth(&queues::dead_letter_queue(queue))
            .await
            .unwrap();
        assert!(
            dead >= 1 || queue == queues::SYNTH,
            "{queue}: malformed messages went to its dead-letter queue ({dead})"
        );
    }
}

/// A document of short lines with the splitting options that decide what it expands to.
fn lines_request(
    text: String,
    left_context_chars: u32,
    chunk_sentences: u32,
) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        documents: vec![proto::Document {
            title: "Lines".into(),
            text,
        }],
        synthesis: Some(proto::SynthesisOptions {
            left_context_chars: Some(left_context_chars),
            chunk_sentences,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn amplifying_input_is_refused_and_an_open_watch_does_not_hold_the_coordinator() {
    let mut cluster = Cluster::with_generator("http://127.0.0.1:9/v1".into());
    cluster.start_coordinator().await;
    let mut client = cluster.client().await;
    // Within the document size limit, but millions of two-byte sentences, each of which
    // would carry 16 KB of the text before it.
    let error = client
        .submit_job(lines_request("A\n".repeat(3_000_000), 16_384, 256))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    assert!(error.message().starts_with("documents:"), "{error:?}");

    // No workers: the job waits, and a client watches it.
    let job = cluster
        .submit("Vellmar Island", &made_up_document(4), 1)
        .await;
    let mut watch = client
        .watch_job(proto::WatchJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let started = std::time::Instant::now();
    let exit = cluster
        .coordinator
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(5));
    assert!(
        exit.is_some(),
        "the coordinator did not exit within 5 s of SIGTERM with a WatchJob open\n{}",
        cluster.logs()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let ended = watch.message().await;
    assert!(
        matches!(&ended, Err(status) if status.code() == tonic::Code::Unavailable)
            || matches!(ended, Ok(None)),
        "{ended:?}"
    );
}

/// Peak memory the coordinator may reach while it plans and publishes the largest job the
/// limits allow (it holds sentence offsets, not chunks: `coordinator/src/chunk.rs`).
const COORDINATOR_PEAK_RSS_BOUND: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_maximal_job_is_published_in_bounded_memory_and_a_restart_with_it_comes_up() {
    let mut cluster = Cluster::with_generator("http://127.0.0.1:9/v1".into());
    cluster.start_coordinator().await;
    let mut client = cluster.client().await;
    // Just under the sentence limit (100,000), each sentence carrying 2 KB of left context:
    // about 200 MB of chunk messages planned, under the 256 MiB planned-bytes limit.
    let job = client
        .submit_job(lines_request("Ab\n".repeat(99_000), 2_048, 64))
        .await
        .expect("a job within the limits is accepted")
        .into_inner()
        .job_id;
    let coordinator = cluster.coordinator.as_mut().unwrap();
    let peak = coordinator.peak_rss_bytes();
    eprintln!("coordinator peak RSS after publishing a maximal job: {peak} bytes");
    assert!(
        peak < COORDINATOR_PEAK_RSS_BOUND,
        "coordinator peak RSS {peak} bytes"
    );

    // Killed with the job unfinished, it comes back, re-plans the job and serves it.
    coordinator.kill_hard();
    cluster.start_coordinator().await;
    let status = cluster.status(&job).await.expect("the job after a restart");
    assert_eq!(status.sentences_total, 99_000);
    assert_eq!(status.state, JobState::Queued as i32, "{status:?}");
    let peak = cluster.coordinator.as_ref().unwrap().peak_rss_bytes();
    eprintln!("coordinator peak RSS after recovering it: {peak} bytes");
    assert!(
        peak < COORDINATOR_PEAK_RSS_BOUND,
        "after restart: {peak} bytes"
    );
}
