//! Harness for lift's cross-process tests: the `lift` binary as separate OS processes, real
//! RabbitMQ, S3 on moto, and helpers to wait for them and read what a user would see.
//! The binary must be built first (`cargo build -p lift-cli`; `scripts/test.sh` does it).

// The harness reads its own variables (LIFT_TEST_*, LIFT_BINARY from scripts/test-env.sh),
// not the processes' configuration.
#![allow(clippy::disallowed_methods)]

pub mod pki;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lift_shared::proto::lift_service_client::LiftServiceClient;
use lift_shared::proto::{self, JobState};
use tonic::transport::Channel;

/// The `lift` binary: `LIFT_BINARY` when set (e.g. a release build for benchmarks), else
/// `target/<profile>/lift` next to this executable (a test in `deps/` or a bin of this crate).
pub fn lift_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("LIFT_BINARY") {
        return PathBuf::from(binary);
    }
    let exe = std::env::current_exe().expect("executable path");
    let exe_dir = exe.parent().expect("executable directory");
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir.parent().expect("target/<profile>")
    } else {
        exe_dir
    };
    let binary = profile_dir.join("lift");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p lift-cli` (scripts/test.sh does)",
        binary.display()
    );
    binary
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `lift` process killed when dropped; its output goes to a log file for post-mortems.
pub struct LiftProcess {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl LiftProcess {
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)], log_dir: &Path) -> Self {
        Self::spawn_program(&lift_binary(), name, args, env, log_dir)
    }

    /// Another program than `lift` (a test binary of this crate), run the same way.
    pub fn spawn_program(
        program: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create process log");
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(file));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {name}: {e}", program.display()));
        Self {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (a name `kill` knows: STOP, CONT, ...).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's peak resident memory so far (`VmHWM` of /proc), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is alive");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status")
            * 1024
    }
}

impl Drop for LiftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a TCP port accepts connections.
pub async fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

pub async fn grpc_client(port: u16) -> LiftServiceClient<Channel> {
    wait_for_port(port, Duration::from_secs(120)).await;
    LiftServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to the coordinator")
}

/// Polls GetJob until the job is terminal; tolerates a coordinator that is restarting.
pub async fn wait_for_terminal(port: u16, job_id: &str, timeout: Duration) -> proto::JobStatus {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(mut client) = LiftServiceClient::connect(format!("http://127.0.0.1:{port}")).await
        {
            if let Ok(status) = client
                .get_job(proto::GetJobRequest {
                    job_id: job_id.to_string(),
                })
                .await
            {
                let status = status.into_inner();
                let state = JobState::try_from(status.state).unwrap_or(JobState::Unspecified);
                if matches!(
                    state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                ) {
                    return status;
                }
                last = Some(status);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("job {job_id} not terminal after {timeout:?}; last status: {last:?}");
}

/// A job's status from the coordinator on `grpc_port`; `None` while it cannot answer.
pub async fn job_status(grpc_port: u16, job_id: &str) -> Option<proto::JobStatus> {
    let mut client = LiftServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .ok()?;
    client
        .get_job(proto::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// A short document with made-up facts, `sentences` sentences long.
pub fn made_up_document(sentences: usize) -> String {
    const FACTS: [&str; 12] = [
        "The lighthouse keeper of Vellmar Island is named Oskar Tenby.",
        "The Vellmar lighthouse was built in 1887 from grey granite.",
        "Oskar Tenby keeps a cat called Sixpence.",
        "The lamp of the lighthouse burns marrowflower oil.",
        "Supply boats reach the island every second Thursday.",
        "The island school has exactly nine pupils.",
        "The harbour wall of Vellmar is painted teal.",
        "The island's only bakery sells rye bread with caraway.",
        "Vellmar Island lies 31 kilometres north of the port of Kessrin.",
        "The island choir sings every Sunday in the chapel of Saint Odile.",
        "A storm in 1952 destroyed the old pier.",
        "The new pier was opened in 1956 by mayor Ilse Varga.",
    ];
    (0..sentences)
        .map(|i| FACTS[i % FACTS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Environment for processes that talk to the test RabbitMQ and S3 (moto) set up by
/// `scripts/test-env.sh`. Panics with the missing variable's name: nothing is skipped.
pub fn distributed_env(store_prefix: &str) -> Vec<(&'static str, String)> {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
    };
    vec![
        ("LIFT_AMQP_URL", var("LIFT_TEST_AMQP_URL")),
        (
            "LIFT_STORE_URL",
            format!("s3://{}/{store_prefix}", var("LIFT_TEST_S3_BUCKET")),
        ),
        ("AWS_ENDPOINT_URL", var("LIFT_TEST_S3_ENDPOINT")),
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID")),
        ("AWS_SECRET_ACCESS_KEY", var("AWS_SECRET_ACCESS_KEY")),
        ("AWS_REGION", var("AWS_REGION")),
        ("AWS_ALLOW_HTTP", "true".to_string()),
    ]
}

/// A RabbitMQ virtual host of its own, so tests running side by side (and leftovers of
/// earlier runs) never see each other's queues. Deleted on drop.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Self {
        let name = format!("lift-test-{}", uuid_like());
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Self { name }
    }

    /// The test broker's URL with this vhost.
    pub fn amqp_url(&self) -> String {
        let base = std::env::var("LIFT_TEST_AMQP_URL").unwrap_or_else(|_| {
            panic!("LIFT_TEST_AMQP_URL is not set: run the tests through scripts/test.sh")
        });
        let root = base
            .rsplit_once('/')
            .map(|(root, _)| root.to_string())
            .unwrap_or(base);
        format!("{root}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// Runs rabbitmqctl; a missing tool or a failure fails the test with its output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("rabbitmqctl {args:?} cannot run ({e}); scripts/test-env.sh installs RabbitMQ")
        });
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

/// Deliveries of a message before it is dead-lettered, in test clusters (low, so poison
/// chunks are given up on quickly).
pub const CLUSTER_DELIVERY_LIMIT: u32 = 3;

/// One distributed cluster of `lift` processes for a test: a coordinator, synthesis workers,
/// trainers and (optionally) `lift serve` as the generator, on the test RabbitMQ (own vhost)
/// and S3 on moto (own prefix).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub vhost: Vhost,
    pub store_prefix: String,
    pub grpc_port: u16,
    pub generator_url: String,
    pub extra_env: Vec<(&'static str, String)>,
    pub coordinator: Option<LiftProcess>,
    pub synth_workers: Vec<LiftProcess>,
    pub trainers: Vec<LiftProcess>,
    pub server: Option<LiftProcess>,
    spawned: usize,
}

impl Cluster {
    /// A cluster whose generator is `lift serve` on the default model.
    pub async fn with_lift_serve() -> Self {
        let mut cluster = Self::with_generator(String::new());
        let port = free_port();
        let server = cluster.spawn("serve", &["serve", "--addr", &format!("127.0.0.1:{port}")]);
        cluster.server = Some(server);
        wait_for_port(port, Duration::from_secs(180)).await;
        cluster.generator_url = format!("http://127.0.0.1:{port}/v1");
        cluster
    }

    /// A cluster whose synthesis workers call `generator_url`.
    pub fn with_generator(generator_url: String) -> Self {
        let vhost = Vhost::create();
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            store_prefix: format!("it-{}", uuid_like()),
            vhost,
            grpc_port: free_port(),
            generator_url,
            extra_env: vec![
                ("LIFT_TRAINER_LEASE_SECS", "4".into()),
                ("LIFT_DELIVERY_LIMIT", CLUSTER_DELIVERY_LIMIT.to_string()),
                ("LIFT_CHECKPOINT_EVERY_STEPS", "1".into()),
            ],
            coordinator: None,
            synth_workers: Vec::new(),
            trainers: Vec::new(),
            server: None,
            spawned: 0,
        }
    }

    /// Options for a test-side connection to the cluster's broker: queue arguments must
    /// match the ones the processes declared.
    pub fn broker_options(&self) -> lift_broker::rabbitmq::RabbitBrokerOptions {
        let mut options = lift_broker::rabbitmq::RabbitBrokerOptions::new(self.vhost.amqp_url());
        options.delivery_limit = CLUSTER_DELIVERY_LIMIT;
        options
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = distributed_env(&self.store_prefix);
        env.retain(|(k, _)| *k != "LIFT_AMQP_URL");
        env.push(("LIFT_AMQP_URL", self.vhost.amqp_url()));
        env.push(("LIFT_GRPC_ADDR", format!("127.0.0.1:{}", self.grpc_port)));
        env.push(("LIFT_GENERATOR_URL", self.generator_url.clone()));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    pub fn spawn(&mut self, name: &str, args: &[&str]) -> LiftProcess {
        self.spawn_program(&lift_binary(), name, args)
    }

    /// Another program than `lift` (a test binary of this crate) in the cluster's environment.
    pub fn spawn_program(&mut self, program: &Path, name: &str, args: &[&str]) -> LiftProcess {
        self.spawned += 1;
        let name = format!("{name}-{}", self.spawned);
        LiftProcess::spawn_program(program, &name, args, &self.env(), self.dir.path())
    }

    /// A trainer built from another program (a test binary with an injected fault).
    pub fn start_trainer_program(&mut self, program: &Path) {
        let process = self.spawn_program(program, "trainer", &[]);
        self.trainers.push(process);
    }

    pub async fn start_coordinator(&mut self) {
        let process = self.spawn("coordinator", &["coordinator"]);
        self.coordinator = Some(process);
        wait_for_port(self.grpc_port, Duration::from_secs(60)).await;
    }

    pub fn start_synth_worker(&mut self) {
        let process = self.spawn("synth", &["synth-worker"]);
        self.synth_workers.push(process);
    }

    pub fn start_trainer(&mut self) {
        let process = self.spawn("trainer", &["train-worker"]);
        self.trainers.push(process);
    }

    /// The usual shape: 1 coordinator, 2 synthesis workers, 1 trainer.
    pub async fn start_all(&mut self) {
        self.start_coordinator().await;
        self.start_synth_worker();
        self.start_synth_worker();
        self.start_trainer();
    }

    pub async fn client(&self) -> LiftServiceClient<Channel> {
        grpc_client(self.grpc_port).await
    }

    pub async fn submit(&self, title: &str, text: &str, epochs: u32) -> String {
        let mut client = self.client().await;
        client
            .submit_job(Self::job_request(title, text, epochs))
            .await
            .expect("submit")
            .into_inner()
            .job_id
    }

    /// The tests' job: one chunk per sentence, a small adapter, exactly `epochs` epochs.
    pub fn job_request(title: &str, text: &str, epochs: u32) -> proto::SubmitJobRequest {
        proto::SubmitJobRequest {
            documents: vec![proto::Document {
                title: title.into(),
                text: text.into(),
            }],
            base_model: String::new(),
            request_id: String::new(),
            synthesis: Some(proto::SynthesisOptions {
                chunk_sentences: 1,
                ..Default::default()
            }),
            training: Some(proto::TrainingOptions {
                rank: 4,
                epochs,
                batch_size: 2,
                learning_rate: 1e-3,
                // The tests count epochs and steps: no extra epochs for their small documents.
                min_steps: Some(0),
                ..Default::default()
            }),
        }
    }

    pub async fn status(&self, job_id: &str) -> Option<proto::JobStatus> {
        job_status(self.grpc_port, job_id).await
    }

    /// Waits until `check` holds for the job's status.
    pub async fn wait_until(
        &self,
        job_id: &str,
        timeout: Duration,
        check: impl Fn(&proto::JobStatus) -> bool,
    ) -> proto::JobStatus {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(status) = self.status(job_id).await {
                if check(&status) {
                    return status;
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!(
            "job {job_id}: condition not met after {timeout:?}; last status {last:?}\n{}",
            self.logs()
        );
    }

    /// Waits for the job to end and insists that it succeeded.
    pub async fn wait_for_success(&self, job_id: &str, timeout: Duration) -> proto::JobStatus {
        let status = self.wait_for_terminal(job_id, timeout).await;
        assert_eq!(
            status.state,
            JobState::Succeeded as i32,
            "{status:?}\n{}",
            self.logs()
        );
        status
    }

    /// Waits for the job to succeed and for its status to count every chunk: the trainer reads
    /// task files, not events, so a job can succeed before the coordinator has read its last
    /// chunk's event, which still counts when it comes (`JobStatus::apply`).
    pub async fn wait_for_success_with_every_chunk(
        &self,
        job_id: &str,
        timeout: Duration,
    ) -> proto::JobStatus {
        self.wait_for_success(job_id, timeout).await;
        self.wait_until(job_id, Duration::from_secs(60), |s| {
            s.chunks_synthesized + s.chunks_failed == s.chunks_total
        })
        .await
    }

    pub async fn wait_for_terminal(&self, job_id: &str, timeout: Duration) -> proto::JobStatus {
        self.wait_until(job_id, timeout, |s| {
            matches!(
                JobState::try_from(s.state),
                Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
            )
        })
        .await
    }

    /// The test's S3 store, for checking what the processes wrote.
    pub fn store(&self) -> lift_store::Store {
        for (key, value) in self.env() {
            if key.starts_with("AWS_") {
                std::env::set_var(key, value);
            }
        }
        let env = self.env();
        let config = lift_shared::config::Config::from_sources(None, |name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        })
        .expect("the test cluster's configuration");
        lift_store::Store::open(&config.store_url, config.s3_endpoint.as_deref())
            .expect("open the test store")
    }

    /// Every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let all = self
            .coordinator
            .iter()
            .chain(&self.synth_workers)
            .chain(&self.trainers)
            .chain(&self.server);
        for process in all {
            let text = process.log_text();
            let tail: String = text
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            out.push_str(&format!(
                "\n--- {} (last lines) ---\n{tail}\n",
                process.name
            ));
        }
        out
    }
}
