//! `lift run` (embedded mode) as a user runs it, as a separate process.

use std::path::Path;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use lift_engine::{Device, Engine, LoraAdapter, ModelSource};
use lift_tests::{free_port, made_up_document, wait_for_port, LiftProcess};
use serde_json::{json, Value};

// `lift`'s documented exit statuses (`cli/src/exit.rs`).
/// clap's, for an option out of its range.
const USAGE: i32 = 2;
const INVALID_INPUT: i32 = 4;
const UNAVAILABLE: i32 = 5;
const NOT_FOUND: i32 = 6;

fn write_doc(dir: &Path, name: &str, title: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("# {title}\n\n{body}\n")).unwrap();
    path.display().to_string()
}

/// The last JSON status line `lift run --json` printed.
fn final_status(log: &str) -> Value {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("job_id").is_some())
        .unwrap_or_else(|| panic!("no status line in output:\n{log}"))
}

fn run_lift<S: AsRef<str>>(
    dir: &Path,
    name: &str,
    args: &[S],
    env: &[(&str, String)],
    timeout: Duration,
) -> (bool, String) {
    let (status, log) = run_lift_status(dir, name, args, env, timeout);
    (status.success(), log)
}

/// `lift` with `args`, to its end: its exit status and what it printed.
fn run_lift_status<S: AsRef<str>>(
    dir: &Path,
    name: &str,
    args: &[S],
    env: &[(&str, String)],
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut process = LiftProcess::spawn(name, &args, env, dir);
    let status = process.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "lift {name} did not finish in {timeout:?}:\n{}",
            process.log_text()
        )
    });
    (status, process.log_text())
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_job_through_lift_serve_pipelines_and_writes_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = LiftProcess::spawn(
        "serve",
        &["serve", "--addr", &format!("127.0.0.1:{port}")],
        &[],
        dir.path(),
    );
    wait_for_port(port, Duration::from_secs(120)).await;
    let doc = write_doc(
        dir.path(),
        "vellmar.md",
        "Vellmar Island",
        &made_up_document(12),
    );
    let store = dir.path().join("store");
    let env = [
        ("LIFT_STORE_URL", store.display().to_string()),
        ("LIFT_GENERATOR_URL", format!("http://127.0.0.1:{port}/v1")),
    ];
    let args: Vec<String> = [
        "run",
        doc.as_str(),
        "--json",
        "--epochs",
        "2",
        "--min-steps",
        "0",
        "--chunk-sentences",
        "2",
        "--batch-size",
        "2",
        "--rank",
        "8",
    ]
    .map(String::from)
    .to_vec();
    let (ok, log) = tokio::task::spawn_blocking({
        let (dir, env) = (dir.path().to_path_buf(), env.clone());
        move || run_lift(&dir, "run", &args, &env, Duration::from_secs(900))
    })
    .await
    .unwrap();
    assert!(ok, "lift run failed:\n{log}");
    let status = final_status(&log);
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["chunks_total"], 6);
    assert!(status["tasks_total"].as_u64().unwrap() > 0);

    // Pipelining: training started before generation finished.
    let first_step = status["first_step_at_ms"].as_i64().unwrap();
    let last_chunk = status["last_chunk_at_ms"].as_i64().unwrap();
    assert!(
        first_step > 0 && first_step < last_chunk,
        "first step at {first_step}, last chunk at {last_chunk}"
    );

    // The adapter is a PEFT directory our loader accepts for the base model.
    let job = status["job_id"].as_str().unwrap();
    let adapter_dir = store.join("jobs").join(job).join("adapter");
    let config: Value =
        serde_json::from_slice(&std::fs::read(adapter_dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(
        config["base_model_name_or_path"],
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    );
    assert_eq!(config["r"], 8);
    let model_dir = lift_shared::config::Config::load(None).unwrap().model_dir;
    let engine = Engine::load(&ModelSource::Default, &model_dir, &Device::Cpu).unwrap();
    let adapter = LoraAdapter::load_peft(&adapter_dir, engine.config(), engine.device()).unwrap();
    let names: Vec<String> = adapter.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names
        .contains(&"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()));
    assert!(
        names.contains(&"base_model.model.model.layers.29.mlp.down_proj.lora_B.weight".to_string())
    );

    // `lift adapter export` writes the same two files into a directory of their own, and
    // never over an adapter already there.
    let exported = dir.path().join("exported");
    let export = ["adapter", "export", job, exported.to_str().unwrap()];
    let (ok, log) = run_lift(dir.path(), "export", &export, &env, Duration::from_secs(60));
    assert!(ok, "lift adapter export failed:\n{log}");
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        assert_eq!(
            std::fs::read(exported.join(file)).unwrap(),
            std::fs::read(adapter_dir.join(file)).unwrap(),
            "{file}"
        );
    }
    let (ok, log) = run_lift(
        dir.path(),
        "export-again",
        &export,
        &env,
        Duration::from_secs(60),
    );
    assert!(!ok && log.contains("is not overwritten"), "{log}");

    let no_coordinator = [
        env[0].clone(),
        ("LIFT_GRPC_ADDR", format!("127.0.0.1:{}", free_port())),
    ];
    reads_the_store_without_a_coordinator(dir.path(), job, &no_coordinator);
}

/// With no coordinator, `lift status` and `lift jobs` read the finished job from the store,
/// `lift ask --json` answers from its adapter, and each failure has its exit status.
fn reads_the_store_without_a_coordinator(dir: &Path, job: &str, env: &[(&str, String)]) {
    let minute = Duration::from_secs(60);
    let (ok, log) = run_lift(dir, "status", &["status", job, "--json"], env, minute);
    assert!(ok, "lift status from the store failed:\n{log}");
    assert_eq!(final_status(&log)["state"], "succeeded", "{log}");
    let (ok, log) = run_lift(dir, "jobs", &["jobs", "--json"], env, minute);
    assert!(ok && log.contains(job), "lift jobs from the store:\n{log}");

    let question = "Who keeps the lighthouse of Vellmar Island?";
    let (ok, log) = run_lift(dir, "ask", &["ask", job, question, "--json"], env, minute);
    assert!(ok, "lift ask --json failed:\n{log}");
    let answer: Value = log
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{log}"));
    assert_eq!(answer["job_id"], job);
    assert_eq!(answer["question"], question);
    assert_eq!(answer["adapter"], true);
    assert!(answer["answer"]
        .as_str()
        .is_some_and(|a| !a.trim().is_empty()));

    let unknown = "01a24191-79ef-761b-aee8-286f3c68ee05";
    let (status, log) = run_lift_status(dir, "unknown", &["status", unknown], env, minute);
    assert_eq!(status.code(), Some(NOT_FOUND), "{log}");
    let dead = format!("127.0.0.1:{}", free_port());
    let (status, log) =
        run_lift_status(dir, "dead", &["status", job, "--addr", &dead], env, minute);
    assert_eq!(
        status.code(),
        Some(UNAVAILABLE),
        "an explicit --addr is not the store:\n{log}"
    );

    // A store that does not exist is not found, and reading it does not create it.
    let nowhere = dir.join("no-store-here");
    let elsewhere = [
        ("LIFT_STORE_URL", nowhere.display().to_string()),
        env[1].clone(),
    ];
    let (status, log) =
        run_lift_status(dir, "no-store", &["ask", job, question], &elsewhere, minute);
    assert_eq!(status.code(), Some(NOT_FOUND), "{log}");
    assert!(log.contains("no store at"), "{log}");
    assert!(!nowhere.exists(), "lift ask created the store it read");
}

/// An OpenAI-compatible server that always answers with `content`.
async fn fake_generator(content: &'static str) -> u16 {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(_): Json<Value>| async move {
            Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

async fn run_expecting_failure(generator_url: String, expected_reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_doc(dir.path(), "doc.md", "Vellmar", &made_up_document(4));
    let env = [
        (
            "LIFT_STORE_URL",
            dir.path().join("store").display().to_string(),
        ),
        ("LIFT_GENERATOR_URL", generator_url),
        ("LIFT_DELIVERY_LIMIT", "2".to_string()),
    ];
    let (ok, log) = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            run_lift(
                &dir,
                "run",
                &[
                    "run",
                    &doc,
                    "--json",
                    "--chunk-sentences",
                    "2",
                    // Auto would fall back to templated questions for the facts.
                    "--recipe",
                    "free-qa",
                ],
                &env,
                Duration::from_secs(300),
            )
        }
    })
    .await
    .unwrap();
    assert!(!ok, "the job should fail:\n{log}");
    let status = final_status(&log);
    assert_eq!(status["state"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains(expected_reason),
        "error {error:?} should mention {expected_reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn generator_returning_garbage_fails_the_job_with_the_reason() {
    let port = fake_generator("I am not JSON and have no questions").await;
    run_expecting_failure(
        format!("http://127.0.0.1:{port}/v1"),
        "no usable question/answer pair",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generator_with_missing_fields_fails_the_job_with_the_reason() {
    let port = fake_generator(r#"{"pairs": [{"question": "Who keeps the lighthouse?"}]}"#).await;
    run_expecting_failure(
        format!("http://127.0.0.1:{port}/v1"),
        "no usable question/answer pair (malformed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_generator_fails_the_job_with_the_reason() {
    let port = free_port();
    run_expecting_failure(format!("http://127.0.0.1:{port}/v1"), "unreachable").await;
}

#[test]
fn invalid_input_is_refused_with_a_sentence_and_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let env = [
        ("LIFT_STORE_URL", store.display().to_string()),
        ("LIFT_MAX_DOCUMENT_BYTES", "2000".to_string()),
    ];
    let empty = write_doc(dir.path(), "empty.md", "Empty", "   \n\n  ");
    let big = write_doc(dir.path(), "big.md", "Big", &made_up_document(60));
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x6f]).unwrap();
    let ok_doc = write_doc(dir.path(), "ok.md", "Ok", &made_up_document(3));
    let cases: Vec<(Vec<String>, &str, i32)> = vec![
        (vec!["run".into(), empty], "empty", INVALID_INPUT),
        (
            vec!["run".into(), big],
            "at most 2000 are allowed",
            INVALID_INPUT,
        ),
        (
            vec!["run".into(), binary.display().to_string()],
            "not valid UTF-8",
            INVALID_INPUT,
        ),
        (
            vec![
                "run".into(),
                ok_doc.clone(),
                "--model".into(),
                "no-such-model".into(),
            ],
            "unknown model",
            INVALID_INPUT,
        ),
        (
            vec!["run".into(), ok_doc.clone(), "--epochs".into(), "0".into()],
            "epochs",
            USAGE,
        ),
        (
            vec!["run".into(), ok_doc, "--rank".into(), "0".into()],
            "rank",
            USAGE,
        ),
    ];
    for (args, expected, code) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, log) =
            run_lift_status(dir.path(), "invalid", &args, &env, Duration::from_secs(120));
        assert_eq!(status.code(), Some(code), "{args:?} exit status:\n{log}");
        assert!(
            log.to_lowercase().contains(&expected.to_lowercase()),
            "{args:?}: output should mention {expected:?}:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
    let jobs = store.join("jobs");
    let stored = std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "refused submissions leave no job behind");
}
