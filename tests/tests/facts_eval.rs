//! The CI slice of the key-fact evaluation: `lift eval facts` on one document of the dev set
//! (`eval/facts/dev`), as a separate process with the real model. The whole set is a command
//! (`scripts/eval-small.sh docs/results facts`, docs/results.md); this proves the command
//! runs end to end and reports what it promises.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use lift_tests::LiftProcess;
use serde_json::Value;

/// `lift eval facts` on the dev set's changelog for one epoch, with `options` besides: the
/// process (for its log), how it exited and the report's directory.
fn eval_changelog(
    dir: &Path,
    name: &str,
    options: &[&str],
    timeout: Duration,
) -> (LiftProcess, ExitStatus, PathBuf) {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("../eval/facts/dev");
    let out = dir.join("report");
    let (set, out_arg) = (set.display().to_string(), out.display().to_string());
    let mut args = vec![
        "eval",
        "facts",
        "--set",
        &set,
        "--only",
        "changelog",
        "--epochs",
        "1",
        "--min-steps",
        "0",
        "--out",
        &out_arg,
    ];
    args.extend_from_slice(options);
    let mut process = LiftProcess::spawn(name, &args, &[], dir);
    let status = process
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("lift eval facts did not finish:\n{}", process.log_text()));
    (process, status, out)
}

#[test]
fn eval_facts_reports_the_three_settings_and_fact_coverage_for_a_dev_document() {
    let dir = tempfile::tempdir().unwrap();
    // One epoch keeps the slice short; the fact-first synthesis is the default's.
    let (process, status, out) =
        eval_changelog(dir.path(), "eval-facts", &[], Duration::from_secs(1500));
    assert!(
        status.success(),
        "lift eval facts failed:\n{}",
        process.log_text()
    );

    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(out.join("facts.png").exists(), "the plot is written");
    let settings: Vec<&str> = report["overall"]
        .as_array()
        .unwrap()
        .iter()
        .map(|score| score["setting"].as_str().unwrap())
        .collect();
    assert_eq!(settings, ["base", "base+context", "lift"]);
    let documents = report["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 1);
    let document = &documents[0];
    assert_eq!(document["job"]["state"], "succeeded", "{}", document["job"]);
    assert_eq!(document["questions"].as_array().unwrap().len(), 6);
    // Fact-first synthesis gives every fact span of the document a task.
    let found = report["facts_found"].as_u64().unwrap();
    assert!(found >= 20, "{found} facts found in the changelog");
    assert_eq!(report["facts_covered"], found);
    for key in ["tasks", "steps", "final_loss", "seconds"] {
        assert!(
            document["job"][key].is_number(),
            "job lacks {key}: {}",
            document["job"]
        );
    }
    // The base model has never seen this fictional document.
    let lift = &report["overall"][2];
    let base = &report["overall"][0];
    assert!(
        lift["answered"].as_u64() >= base["answered"].as_u64(),
        "LIFT {lift} below the base model {base}"
    );
}

#[test]
fn eval_facts_whose_job_fails_writes_its_report_and_exits_with_the_job_failed_status() {
    let dir = tempfile::tempdir().unwrap();
    // An absurd LoRA alpha overflows the adapter at its first update: the job fails as
    // diverged within a few steps. Templated questions only, so no generator call is waited on.
    let (process, status, out) = eval_changelog(
        dir.path(),
        "eval-facts-failed-job",
        &["--recipe", "templates", "--alpha", "1e30"],
        Duration::from_secs(900),
    );
    let log = process.log_text();
    assert_eq!(status.code(), Some(3), "exit status 3 (job failed):\n{log}");
    assert!(
        log.contains("1 LIFT job(s) did not succeed"),
        "says why it failed:\n{log}"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["jobs_failed"], 1, "{}", report["jobs_failed"]);
    let job = &report["documents"][0]["job"];
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("diverged"),
        "the job's reason is kept: {job}"
    );
}
