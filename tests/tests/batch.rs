//! `lift batch` against the distributed test cluster (separate processes, RabbitMQ, S3 on
//! moto): a corpus of 20 documents and one bad one, interrupted with kill -9 halfway, then run
//! again. The synthesis workers use the `instant:` generator; trainers train the real model.

use std::time::{Duration, Instant};

use lift_shared::proto;
use lift_tests::{made_up_document, Cluster};
use serde_json::Value;

const DOCUMENTS: usize = 20;

fn ledger_succeeded(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["state"] == "succeeded")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_interrupted_halfway_finishes_on_rerun_without_duplicates() {
    let mut cluster = Cluster::with_generator("instant:".to_string());
    cluster.start_coordinator().await;
    cluster.start_synth_worker();
    cluster.start_trainer();
    cluster.start_trainer();

    let corpus = cluster.dir.path().join("corpus");
    std::fs::create_dir_all(corpus.join("nested")).unwrap();
    for i in 0..DOCUMENTS {
        let dir = if i % 2 == 0 {
            corpus.clone()
        } else {
            corpus.join("nested")
        };
        let text = format!(
            "# Island {i}\n\nThis is island number {i}. {}",
            made_up_document(2)
        );
        std::fs::write(dir.join(format!("island-{i:02}.md")), text).unwrap();
    }
    std::fs::write(corpus.join("broken.md"), b"# Broken\n\n\xff\xfe not text").unwrap();
    std::fs::write(corpus.join("ignored.json"), b"{}").unwrap();

    let ledger = cluster.dir.path().join("ledger.jsonl");
    let summary = cluster.dir.path().join("summary.json");
    let (corpus_arg, ledger_arg, summary_arg) = (
        corpus.display().to_string(),
        ledger.display().to_string(),
        summary.display().to_string(),
    );
    let args = [
        "batch",
        corpus_arg.as_str(),
        "--max-in-flight",
        "4",
        "--ledger",
        ledger_arg.as_str(),
        "--summary",
        summary_arg.as_str(),
        "--epochs",
        "1",
        "--min-steps",
        "0",
        "--rank",
        "4",
        "--batch-size",
        "2",
        "--chunk-sentences",
        "1",
    ];

    let mut first = cluster.spawn("batch", &args);
    let deadline = Instant::now() + Duration::from_secs(600);
    while ledger_succeeded(&ledger) < DOCUMENTS / 2 {
        assert!(
            Instant::now() < deadline,
            "half the batch did not finish in time\n{}\n{}",
            first.log_text(),
            cluster.logs()
        );
        assert!(
            first.wait_exit(Duration::from_millis(10)).is_none(),
            "batch ended early: {}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    first.kill_hard();
    let finished_before = ledger_succeeded(&ledger);

    let mut second = cluster.spawn("batch", &args);
    let status = second
        .wait_exit(Duration::from_secs(600))
        .unwrap_or_else(|| {
            panic!(
                "rerun did not finish\n{}\nledger:\n{}\n{}",
                second.log_text(),
                std::fs::read_to_string(&ledger).unwrap_or_default(),
                cluster.logs()
            )
        });
    let log = second.log_text();
    // 3: a job failed (`lift --help` lists the statuses).
    assert_eq!(status.code(), Some(3), "one document fails: {log}");
    assert!(log.contains("1 of 21 documents failed"), "{log}");
    assert!(
        log.contains("lift batch: [21/21] "),
        "a progress line per job: {log}"
    );

    let summary: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(summary["documents"], 21, "{summary:#}");
    assert_eq!(summary["succeeded"], DOCUMENTS, "{summary:#}");
    assert_eq!(summary["failed"], 1, "{summary:#}");
    assert!(
        summary["already_finished_before_this_run"]
            .as_u64()
            .unwrap()
            >= finished_before as u64
    );
    let jobs = summary["jobs"].as_array().unwrap();
    let broken = jobs.iter().find(|j| j["document"] == "broken.md").unwrap();
    assert_eq!(broken["state"], "rejected", "{broken:#}");
    assert!(
        broken["error"].as_str().unwrap().contains("UTF-8"),
        "{broken:#}"
    );
    for job in jobs.iter().filter(|j| j["document"] != "broken.md") {
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert!(
            job["adapter_uri"].as_str().unwrap().starts_with("s3://"),
            "{job:#}"
        );
    }
    assert!(!jobs.iter().any(|j| j["document"] == "ignored.json"));

    // One job per good document: nothing was submitted twice.
    let mut client = cluster.client().await;
    let listed = client
        .list_jobs(proto::ListJobsRequest {
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), DOCUMENTS, "{listed:#?}");
    let mut ids: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .filter(|id| !id.is_empty())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), DOCUMENTS);
}
