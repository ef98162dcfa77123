//! grpcurl-style access: a client with no proto file lists `lift.v1.LiftService` through
//! server reflection and calls SubmitJob and GetJob with messages built from the discovered
//! descriptors (Python grpcio-reflection, installed by scripts/test-env.sh).

// Test harness variables (scripts/test-env.sh), not process configuration.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

use lift_tests::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn a_reflection_client_lists_the_service_and_submits_a_job() {
    let mut cluster = Cluster::with_generator(String::new());
    cluster.start_coordinator().await;
    let python = std::env::var("LIFT_TEST_GRPC_PYTHON")
        .expect("LIFT_TEST_GRPC_PYTHON is not set: run the tests through scripts/test.sh");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/reflection_client.py");
    let addr = format!("127.0.0.1:{}", cluster.grpc_port);
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).arg(addr).output())
            .await
            .unwrap()
            .expect("run the reflection client");
    assert!(
        output.status.success(),
        "reflection client failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let services: Vec<&str> = result["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(services.contains(&"lift.v1.LiftService"), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    let methods = result["methods"].to_string();
    for method in ["SubmitJob", "GetJob", "WatchJob", "ListJobs", "CancelJob"] {
        assert!(methods.contains(method), "{methods}");
    }
    assert_eq!(result["sentences_total"], 2);
    assert!(
        result["state"].as_str().unwrap().starts_with("JOB_STATE_"),
        "{result}"
    );
    let status = cluster
        .status(result["job_id"].as_str().unwrap())
        .await
        .expect("the job exists");
    assert_eq!(status.sentences_total, 2);
}
