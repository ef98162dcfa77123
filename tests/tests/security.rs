//! Authentication and TLS as a user meets them: `lift coordinator` and `lift serve` with bearer
//! tokens for two tenants and certificates from a CA made for the test, driven with the `lift`
//! client commands and an HTTPS client. Separate OS processes, real RabbitMQ and S3 on moto.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lift_tests::pki::TestPki;
use lift_tests::{free_port, lift_binary, wait_for_port, Cluster, LiftProcess};
use serde_json::{json, Value};

const ALPHA: &str = "alpha-token-6b1d0c9e4f";
const BETA: &str = "beta-token-3a7e5d2c81";

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a `lift` client command with the cluster's environment plus `env`.
fn lift(cluster: &Cluster, env: &[(&str, &str)], args: &[&str]) -> Outcome {
    let mut command = Command::new(lift_binary());
    command.args(args).env("RUST_LOG", "warn");
    for (key, value) in cluster.env() {
        command.env(key, value);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run lift");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn refused(cluster: &Cluster, outcome: &Outcome, code_name: &str, sentence: &str) {
    assert!(
        // 7: not authenticated or not allowed (`lift --help` lists the statuses).
        outcome.code == Some(7)
            && outcome.stderr.contains(code_name)
            && outcome.stderr.contains(sentence),
        "expected {code_name} ({sentence}), got: {}\n{}",
        outcome.stderr,
        cluster.logs()
    );
}

/// A coordinator with the two tenants' tokens and a certificate from a CA made for the test
/// (its files in the cluster's directory); `client_certificates` also requires client
/// certificates of that CA. Returns the cluster, the CA's files and the `https://` address.
async fn secured_coordinator(client_certificates: bool) -> (Cluster, TestPki, String) {
    let mut cluster = Cluster::with_generator("instant:".into());
    let pki = TestPki::create(cluster.dir.path());
    let path = |p: &Path| p.display().to_string();
    cluster.extra_env.extend([
        ("LIFT_AUTH_TOKENS", format!("alpha:{ALPHA},beta:{BETA}")),
        ("LIFT_TLS_CERT", path(&pki.server_cert)),
        ("LIFT_TLS_KEY", path(&pki.server_key)),
        // What clients trust; the servers ignore it.
        ("LIFT_TLS_CA", path(&pki.ca)),
    ]);
    if client_certificates {
        cluster
            .extra_env
            .push(("LIFT_TLS_CLIENT_CA", path(&pki.ca)));
    }
    cluster.start_coordinator().await;
    let addr = format!("https://localhost:{}", cluster.grpc_port);
    (cluster, pki, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_api_wants_a_token_over_tls_and_keeps_tenants_apart() {
    let (mut cluster, pki, addr) = secured_coordinator(false).await;
    let document = cluster.dir.path().join("guild.md");
    std::fs::write(
        &document,
        "# Guild\n\nThe guild was founded in 1687. Its hall is yellow.",
    )
    .unwrap();
    let document = document.display().to_string();
    let submit = ["submit", document.as_str(), "--addr", addr.as_str()];

    refused(
        &cluster,
        &lift(&cluster, &[], &submit),
        "Unauthenticated",
        "missing bearer token",
    );
    refused(
        &cluster,
        &lift(
            &cluster,
            &[("LIFT_TOKEN", "not-a-token-of-anyone")],
            &submit,
        ),
        "Unauthenticated",
        "invalid bearer token",
    );

    let submitted = lift(&cluster, &[("LIFT_TOKEN", ALPHA)], &submit);
    assert_eq!(submitted.code, Some(0), "{}", submitted.stderr);
    let job = submitted.stdout.trim().to_string();

    for command in ["status", "watch", "cancel"] {
        refused(
            &cluster,
            &lift(
                &cluster,
                &[("LIFT_TOKEN", BETA)],
                &[command, job.as_str(), "--addr", addr.as_str()],
            ),
            "PermissionDenied",
            "belongs to another tenant",
        );
    }
    let listed = |token: &str| {
        let outcome = lift(
            &cluster,
            &[("LIFT_TOKEN", token)],
            &["jobs", "--json", "--addr", addr.as_str()],
        );
        assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
        outcome.stdout
    };
    assert!(listed(ALPHA).contains(&job));
    assert!(!listed(BETA).contains(&job));
    let own = lift(
        &cluster,
        &[("LIFT_TOKEN", ALPHA)],
        &["status", job.as_str(), "--json", "--addr", addr.as_str()],
    );
    assert_eq!(own.code, Some(0), "{}", own.stderr);

    // TLS only: a plain-text client gets nowhere, nor one that trusts another CA.
    let plain = format!("http://127.0.0.1:{}", cluster.grpc_port);
    let outcome = lift(
        &cluster,
        &[("LIFT_TOKEN", ALPHA)],
        &["jobs", "--addr", plain.as_str()],
    );
    // 1: a TLS mismatch is no kind the exit statuses name (tonic reports it as Cancelled).
    assert_eq!(
        outcome.code,
        Some(1),
        "plain text was answered: {}",
        outcome.stderr
    );
    let stranger = pki.stranger_ca.display().to_string();
    let outcome = lift(
        &cluster,
        &[("LIFT_TOKEN", ALPHA), ("LIFT_TLS_CA", stranger.as_str())],
        &["jobs", "--addr", addr.as_str()],
    );
    assert_eq!(
        outcome.code,
        // 7: the server's certificate is not trusted, which a retry does not change.
        Some(7),
        "an untrusted certificate was accepted: {}",
        outcome.stderr
    );

    // `lift serve` with the same tokens and certificate: the job's adapter is alpha's alone.
    let serve_port = free_port();
    let serve_addr = format!("127.0.0.1:{serve_port}");
    let serve = cluster.spawn("serve", &["serve", "--addr", serve_addr.as_str()]);
    wait_for_port(serve_port, Duration::from_secs(180)).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://localhost:{serve_port}");
    let health = https.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "probes need no token");
    let ask = |token: Option<&str>| {
        let mut request = https
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({
                "model": job,
                "messages": [{"role": "user", "content": "When was the guild founded?"}],
                "max_tokens": 4,
            }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = ask(None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        ask(Some("not-a-token-of-anyone")).await.unwrap().status(),
        401
    );
    let other_tenant = ask(Some(BETA)).await.unwrap();
    assert_eq!(other_tenant.status(), 403);
    let body: Value = other_tenant.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another tenant"),
        "{body}"
    );
    // The owner passes the check; the job has no adapter yet.
    assert_eq!(ask(Some(ALPHA)).await.unwrap().status(), 404);
    let plain_http = reqwest::get(format!("http://127.0.0.1:{serve_port}/health")).await;
    assert!(plain_http.is_err(), "plain HTTP was answered");

    // Nothing a user presented shows in any log.
    drop(serve);
    let mut logs = String::new();
    for process in std::fs::read_dir(cluster.dir.path()).unwrap() {
        let path = process.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
    }
    for secret in [ALPHA, BETA] {
        assert!(!logs.contains(secret), "a token is in the logs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_lets_in_only_clients_with_a_certificate_of_the_ca() {
    let (mut cluster, pki, addr) = secured_coordinator(true).await;
    let jobs = ["jobs", "--addr", addr.as_str()];

    let without = lift(&cluster, &[("LIFT_TOKEN", ALPHA)], &jobs);
    assert_eq!(
        without.code,
        Some(1),
        "a client without a certificate got in: {}",
        without.stderr
    );

    let (cert, key) = (
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let with = lift(
        &cluster,
        &[
            ("LIFT_TOKEN", ALPHA),
            ("LIFT_TLS_CLIENT_CERT", cert.as_str()),
            ("LIFT_TLS_CLIENT_KEY", key.as_str()),
        ],
        &jobs,
    );
    assert_eq!(with.code, Some(0), "{}\n{}", with.stderr, cluster.logs());

    // A certificate still needs a token: TLS says who connects, the token whose jobs.
    let no_token = lift(
        &cluster,
        &[
            ("LIFT_TLS_CLIENT_CERT", cert.as_str()),
            ("LIFT_TLS_CLIENT_KEY", key.as_str()),
        ],
        &jobs,
    );
    refused(
        &cluster,
        &no_token,
        "Unauthenticated",
        "missing bearer token",
    );

    // `lift serve` with the same settings wants a client certificate too.
    let serve_port = free_port();
    let serve_addr = format!("127.0.0.1:{serve_port}");
    let mut serve = cluster.spawn("serve", &["serve", "--addr", serve_addr.as_str()]);
    wait_for_port(serve_port, Duration::from_secs(180)).await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let models = format!("https://localhost:{serve_port}/v1/models");
    let anonymous = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    assert!(
        anonymous
            .get(&models)
            .bearer_auth(ALPHA)
            .send()
            .await
            .is_err(),
        "lift serve answered a client without a certificate"
    );
    let mut identity = std::fs::read(&pki.client_cert).unwrap();
    identity.extend(std::fs::read(&pki.client_key).unwrap());
    let identified = reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let response = identified
        .get(&models)
        .bearer_auth(ALPHA)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A socket that never starts its handshake does not keep `lift serve` from exiting.
    exits_promptly_with_a_silent_socket(&mut serve, &serve_addr);

    // The coordinator's gRPC server closes a socket that never starts its handshake, and one
    // does not keep it from exiting either.
    let grpc_addr = format!("127.0.0.1:{}", cluster.grpc_port);
    let mut silent = std::net::TcpStream::connect(&grpc_addr).unwrap();
    silent
        .set_read_timeout(Some(lift_shared::tls::HANDSHAKE_TIMEOUT * 2))
        .unwrap();
    let opened = std::time::Instant::now();
    let read = std::io::Read::read(&mut silent, &mut [0u8; 64]);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the silent socket was not closed: {read:?}"
    );
    assert!(opened.elapsed() < lift_shared::tls::HANDSHAKE_TIMEOUT * 2);
    exits_promptly_with_a_silent_socket(cluster.coordinator.as_mut().unwrap(), &grpc_addr);
}

/// SIGTERM ends `process` within 5 s although a socket that never sent its TLS hello is open.
fn exits_promptly_with_a_silent_socket(process: &mut LiftProcess, addr: &str) {
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let exit = process.terminate(Duration::from_secs(5));
    assert!(
        exit.is_some(),
        "{} did not exit within 5 s of SIGTERM with a silent TLS socket open\n{}",
        process.name,
        process.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}
