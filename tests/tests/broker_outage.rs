//! RabbitMQ stopped (`rabbitmqctl stop_app`) under a running cluster: during a submit and
//! again during the job's final epoch. A test binary of its own: it stops the one broker every
//! test uses, and cargo runs test binaries one after another, so no other test sees it down.

use std::process::Command;
use std::time::Duration;

use lift_shared::proto::{self, JobState};
use lift_tests::{made_up_document, rabbitmqctl, Cluster};

const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// RabbitMQ's application stopped; started again when dropped, also when the test fails.
struct BrokerStopped;

impl BrokerStopped {
    fn now() -> Self {
        rabbitmqctl(&["stop_app"]);
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let started = Command::new("rabbitmqctl").arg("start_app").output();
        if !started.is_ok_and(|output| output.status.success()) {
            eprintln!("rabbitmqctl start_app failed: start RabbitMQ by hand");
        }
    }
}

fn request(request_id: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        request_id: request_id.into(),
        ..Cluster::job_request("Vellmar Island", &made_up_document(10), 3)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_submitted_while_the_broker_is_down_and_cut_off_in_its_final_epoch_completes_once() {
    let mut cluster = Cluster::with_lift_serve().await;
    // Broker operations give up quickly, so the submit below fails while RabbitMQ is down
    // instead of waiting for it.
    cluster
        .extra_env
        .push(("LIFT_BROKER_RETRY_SECS", "3".into()));
    cluster.start_all().await;
    let mut client = cluster.client().await;

    let outage = BrokerStopped::now();
    let refused = client
        .submit_job(request("outage-submit"))
        .await
        .expect_err("a submit with the broker down cannot queue the job");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("accepted"),
        "the client is told the job is kept: {}",
        refused.message()
    );
    drop(outage);

    // The client retries with the same request id: the same job, which the coordinator queues
    // on its own once the broker is back.
    let job = client
        .submit_job(request("outage-submit"))
        .await
        .expect("the retry is answered")
        .into_inner()
        .job_id;
    cluster
        .wait_until(&job, JOB_TIMEOUT, |s| {
            s.epoch == s.epochs_total && s.epochs_total > 0 && s.step > 0
        })
        .await;

    let outage = BrokerStopped::now();
    let during = cluster
        .status(&job)
        .await
        .expect("status while the broker is down");
    assert_ne!(
        during.state,
        JobState::Succeeded as i32,
        "the outage began before the job ended"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(outage);

    let status = cluster.wait_for_terminal(&job, JOB_TIMEOUT).await;
    assert_eq!(
        status.state,
        JobState::Succeeded as i32,
        "{status:?}\n{}",
        cluster.logs()
    );
    let jobs = client
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "one job for one request id: {jobs:?}");
    let job_id = lift_shared::ids::JobId::parse(&job).unwrap();
    let store = cluster.store();
    let task_files = store
        .list(&lift_store::layout::tasks_prefix(&job_id))
        .await
        .unwrap();
    assert_eq!(task_files.len() as u32, status.chunks_synthesized);
    assert_eq!(
        status.chunks_synthesized + status.chunks_failed,
        status.chunks_total
    );
    let commit = store.adapter_commit(&job_id).await.unwrap();
    assert!(commit.is_some(), "the adapter is committed once");
}
