//! Harness for lift's cross-process tests: the `lift` binary as separate OS processes, real
//! RabbitMQ, S3 on moto, and helpers to wait for them and read what a user would see.
//! The binary must be built first (`cargo build -p lift-cli`; `scripts/test.sh` does it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lift_shared::proto::lift_service_client::LiftServiceClient;
use lift_shared::proto::{self, JobState};
use tonic::transport::Channel;

/// `target/<profile>/lift`, next to the directory of this test executable.
pub fn lift_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
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
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create process log");
        let mut command = Command::new(lift_binary());
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
            .unwrap_or_else(|e| panic!("spawn lift {name}: {e}"));
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
