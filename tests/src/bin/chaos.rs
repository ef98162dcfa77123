//! Chaos run: many jobs through a distributed cluster while a seeded schedule kill -9s,
//! SIGSTOPs/SIGCONTs and restarts synthesis workers, trainers and the coordinator, and stops
//! the broker, at random. When the faults end every process is brought back, and each job is
//! checked: it reached a terminal state on its own, its task files hold what its status
//! counts (no chunk applied twice), a succeeded job has exactly one adapter commit and its
//! adapter's digest did not change after it first showed Succeeded, and the coordinator knows
//! exactly the jobs submitted (a retried submit made no second job). Prints one JSON report.
//!
//! A command, not a test (it runs for many minutes): `scripts/chaos.sh` starts the services of
//! `scripts/test-env.sh` and runs it. Synthesis uses the `instant:` generator (no model), so
//! the faults, not the model, set the pace; trainers train the real model on tiny documents.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use lift_shared::ids::JobId;
use lift_shared::proto::{self, JobState};
use lift_store::{layout, Store};
use lift_tests::{job_status, made_up_document, rabbitmqctl, wait_for_port, Cluster, LiftProcess};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(about = "Jobs under random process and broker faults; prints a JSON report")]
struct Args {
    /// Seed of the fault schedule and of the documents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    jobs: usize,
    #[arg(long, default_value_t = 2)]
    synth_workers: usize,
    #[arg(long, default_value_t = 2)]
    trainers: usize,
    /// Faults are injected for this long (at least until every job is submitted).
    #[arg(long, default_value_t = 300)]
    fault_seconds: u64,
    /// After the faults, how long every job has to reach a terminal state.
    #[arg(long, default_value_t = 900)]
    settle_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Coordinator,
    Synth,
    Trainer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Synth => "synth",
            Self::Trainer => "trainer",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Coordinator => &["coordinator"],
            Self::Synth => &["synth-worker"],
            Self::Trainer => &["train-worker"],
        }
    }
}

/// The cluster's processes by role and slot; a killed slot is `None` until restarted.
struct Fleet {
    cluster: Cluster,
    slots: Vec<(Role, Option<LiftProcess>)>,
    stopped: Vec<usize>,
}

impl Fleet {
    async fn start(&mut self, slot: usize) {
        let role = self.slots[slot].0;
        let process = self.cluster.spawn(role.name(), role.args());
        self.slots[slot].1 = Some(process);
        if role == Role::Coordinator {
            wait_for_port(self.cluster.grpc_port, Duration::from_secs(60)).await;
        }
    }

    fn kill(&mut self, slot: usize) {
        if let Some(mut process) = self.slots[slot].1.take() {
            if self.stopped.contains(&slot) {
                process.signal("CONT");
                self.stopped.retain(|&s| s != slot);
            }
            process.kill_hard();
        }
    }

    fn pause(&mut self, slot: usize) {
        if let Some(process) = &self.slots[slot].1 {
            if !self.stopped.contains(&slot) {
                process.signal("STOP");
                self.stopped.push(slot);
            }
        }
    }

    fn resume_all(&mut self) {
        for slot in std::mem::take(&mut self.stopped) {
            if let Some(process) = &self.slots[slot].1 {
                process.signal("CONT");
            }
        }
    }

    /// Every slot running again, every paused process continued, the broker up.
    async fn restore(&mut self) {
        self.resume_all();
        broker_up();
        for slot in 0..self.slots.len() {
            if self.slots[slot].1.is_none() {
                self.start(slot).await;
            }
        }
    }

    /// kill -9, and a new process in the slot `seconds` later.
    async fn kill_for(&mut self, slot: usize, seconds: u64) {
        self.kill(slot);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        self.start(slot).await;
    }

    /// SIGSTOP for `pause`, then SIGCONT.
    async fn pause_for(&mut self, slot: usize, pause: Duration) {
        self.pause(slot);
        tokio::time::sleep(pause).await;
        self.resume_all();
    }

    fn slots_of(&self, role: Role) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].0 == role)
            .collect()
    }
}

fn broker_up() {
    rabbitmqctl(&["start_app"]);
}

/// One fault, chosen and timed by the seeded schedule; returns what was done.
async fn inject(fleet: &mut Fleet, rng: &mut StdRng, lease: Duration) -> String {
    let pick = |rng: &mut StdRng, slots: Vec<usize>| slots[rng.random_range(0..slots.len())];
    let pause_secs = rng.random_range(1..=6);
    match rng.random_range(0..7) {
        0 | 1 => {
            let slot = pick(rng, fleet.slots_of(Role::Trainer));
            fleet.kill_for(slot, pause_secs).await;
            format!("kill -9 trainer slot {slot}, restarted after {pause_secs} s")
        }
        2 => {
            let slot = pick(rng, fleet.slots_of(Role::Trainer));
            // Past its lease, so another trainer may take the job over meanwhile.
            let stop = lease * 2 + Duration::from_secs(pause_secs);
            fleet.pause_for(slot, stop).await;
            format!("SIGSTOP trainer slot {slot} for {} s", stop.as_secs())
        }
        3 => {
            let slot = pick(rng, fleet.slots_of(Role::Synth));
            fleet.kill_for(slot, pause_secs).await;
            format!("kill -9 synthesis worker slot {slot}, restarted after {pause_secs} s")
        }
        4 => {
            let slot = pick(rng, fleet.slots_of(Role::Synth));
            fleet.pause_for(slot, Duration::from_secs(pause_secs)).await;
            format!("SIGSTOP synthesis worker slot {slot} for {pause_secs} s")
        }
        5 => {
            let slot = fleet.slots_of(Role::Coordinator)[0];
            fleet.kill_for(slot, pause_secs).await;
            format!("kill -9 coordinator, restarted after {pause_secs} s")
        }
        _ => {
            let outage = rng.random_range(3..=15);
            rabbitmqctl(&["stop_app"]);
            tokio::time::sleep(Duration::from_secs(outage)).await;
            broker_up();
            format!("broker stopped for {outage} s")
        }
    }
}

/// How long one submit is retried before the run reports it as refused.
const SUBMIT_GIVE_UP: Duration = Duration::from_secs(240);

/// Submits one job until the coordinator accepts it (the request id makes retries safe), or
/// gives up after `SUBMIT_GIVE_UP` with the last error.
async fn submit(
    grpc_port: u16,
    index: usize,
    seed: u64,
    sentences: usize,
) -> Result<String, String> {
    let mut request = Cluster::job_request(
        &format!("Chaos document {index}"),
        &made_up_document(sentences),
        1,
    );
    request.request_id = format!("chaos-{seed}-{index}");
    let started = Instant::now();
    let mut last_error = String::new();
    while started.elapsed() < SUBMIT_GIVE_UP {
        match lift_shared::proto::lift_service_client::LiftServiceClient::connect(format!(
            "http://127.0.0.1:{grpc_port}"
        ))
        .await
        {
            // An error, "accepted but not yet queued" included, is retried as is: the same
            // request id returns the job the first attempt created.
            Ok(mut client) => match client.submit_job(request.clone()).await {
                Ok(response) => return Ok(response.into_inner().job_id),
                Err(status) => last_error = format!("{:?}: {}", status.code(), status.message()),
            },
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("{}: {last_error}", request.request_id))
}

fn is_terminal(status: &proto::JobStatus) -> bool {
    matches!(
        JobState::try_from(status.state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

async fn adapter_digest(store: &Store, job: &JobId) -> Option<String> {
    let weights = store.get(&layout::adapter_weights(job)).await.ok()??;
    Some(format!("{:x}", Sha256::digest(&weights)))
}

/// Every job the coordinator lists, over all pages.
async fn listed_jobs(grpc_port: u16) -> Option<usize> {
    let mut client = lift_shared::proto::lift_service_client::LiftServiceClient::connect(format!(
        "http://127.0.0.1:{grpc_port}"
    ))
    .await
    .ok()?;
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_jobs(proto::ListJobsRequest {
                page_size: 500,
                page_token: page_token.clone(),
            })
            .await
            .ok()?
            .into_inner();
        count += page.jobs.len();
        if page.next_page_token.is_empty() {
            return Some(count);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let lease = Duration::from_secs(4);
    // `instant:` selects the synthesis workers' benchmark generator (no model).
    let cluster = Cluster::with_generator("instant:".to_string());
    let mut fleet = Fleet {
        cluster,
        slots: std::iter::once(Role::Coordinator)
            .chain(std::iter::repeat_n(Role::Synth, args.synth_workers))
            .chain(std::iter::repeat_n(Role::Trainer, args.trainers))
            .map(|role| (role, None))
            .collect(),
        stopped: Vec::new(),
    };
    fleet.restore().await;
    let grpc_port = fleet.cluster.grpc_port;
    let store = fleet.cluster.store();
    let started = Instant::now();

    let sentences: Vec<usize> = (0..args.jobs).map(|_| rng.random_range(2..=5)).collect();
    let seed = args.seed;
    let submitter = tokio::spawn(async move {
        let mut ids = Vec::new();
        let mut refused = Vec::new();
        for (index, count) in sentences.into_iter().enumerate() {
            match submit(grpc_port, index, seed, count).await {
                Ok(id) => ids.push(id),
                Err(error) => refused.push(error),
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        (ids, refused)
    });

    // Watches for each job's first Succeeded, to compare its adapter's digest at the end.
    let (ids_tx, ids_rx) = tokio::sync::watch::channel(Vec::<String>::new());
    let watcher_store = store.clone();
    let watcher = tokio::spawn(async move {
        let mut first_digest: BTreeMap<String, Option<String>> = BTreeMap::new();
        loop {
            let ids = ids_rx.borrow().clone();
            for id in &ids {
                if first_digest.contains_key(id) {
                    continue;
                }
                if let Some(status) = job_status(grpc_port, id).await {
                    if status.state == JobState::Succeeded as i32 {
                        let job: JobId = id.parse().expect("job ids parse");
                        first_digest.insert(id.clone(), adapter_digest(&watcher_store, &job).await);
                    }
                }
            }
            if ids_rx.has_changed().is_err() {
                return first_digest;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut faults = Vec::new();
    let fault_window = Duration::from_secs(args.fault_seconds);
    while started.elapsed() < fault_window || !submitter.is_finished() {
        tokio::time::sleep(Duration::from_secs(rng.random_range(2..=6))).await;
        let at_s = started.elapsed().as_secs_f64();
        let what = inject(&mut fleet, &mut rng, lease).await;
        eprintln!("[{at_s:7.1} s] {what}");
        faults.push(json!({"at_s": (at_s * 10.0).round() / 10.0, "fault": what}));
    }
    fleet.restore().await;
    let (ids, refused) = submitter.await.expect("the submitter does not panic");
    ids_tx.send(ids.clone()).expect("the watcher listens");
    let faults_ended_s = started.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
    let mut statuses: BTreeMap<String, Option<proto::JobStatus>> = BTreeMap::new();
    loop {
        for id in &ids {
            statuses.insert(id.clone(), job_status(grpc_port, id).await);
        }
        let open = statuses
            .values()
            .filter(|status| !status.as_ref().is_some_and(is_terminal))
            .count();
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(ids_tx);
    let first_digest = watcher.await.expect("the watcher does not panic");

    let mut per_job = Vec::new();
    let mut summary = BTreeMap::from([
        ("succeeded", 0),
        ("failed", 0),
        ("stranded", 0),
        ("lost", 0),
        ("tasks_mismatch", 0),
        ("commit_mismatch", 0),
        ("adapter_changed", 0),
    ]);
    for id in &ids {
        let job: JobId = id.parse().expect("job ids parse");
        let status = statuses.get(id).cloned().flatten();
        let task_keys = store
            .list(&layout::tasks_prefix(&job))
            .await
            .unwrap_or_default();
        let mut task_lines = 0u64;
        for key in &task_keys {
            if let Ok(Some(bytes)) = store.get(key).await {
                task_lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        let commit = store.adapter_commit(&job).await.ok().flatten();
        let digest = adapter_digest(&store, &job).await;
        let state = status.as_ref().map_or("lost".to_string(), |status| {
            format!(
                "{:?}",
                JobState::try_from(status.state).unwrap_or(JobState::Unspecified)
            )
        });
        let succeeded = status
            .as_ref()
            .is_some_and(|status| status.state == JobState::Succeeded as i32);
        let bump = |summary: &mut BTreeMap<&str, i32>, key| *summary.get_mut(key).unwrap() += 1;
        match &status {
            None => bump(&mut summary, "lost"),
            Some(status) if !is_terminal(status) => bump(&mut summary, "stranded"),
            Some(_) if succeeded => bump(&mut summary, "succeeded"),
            Some(_) => bump(&mut summary, "failed"),
        }
        let tasks_match = status.as_ref().is_some_and(|status| {
            status.tasks_total == task_lines
                && u64::from(status.chunks_synthesized) == task_keys.len() as u64
        });
        if !tasks_match {
            bump(&mut summary, "tasks_mismatch");
        }
        if succeeded != commit.is_some() {
            bump(&mut summary, "commit_mismatch");
        }
        let first = first_digest.get(id).cloned().flatten();
        let adapter_changed = succeeded && first.is_some() && first != digest;
        if adapter_changed {
            bump(&mut summary, "adapter_changed");
        }
        per_job.push(json!({
            "job_id": id,
            "state": state,
            "error": status.as_ref().map(|s| s.error.clone()).unwrap_or_default(),
            "chunks_total": status.as_ref().map(|s| s.chunks_total),
            "chunks_synthesized": status.as_ref().map(|s| s.chunks_synthesized),
            "task_files": task_keys.len(),
            "tasks_total": status.as_ref().map(|s| s.tasks_total),
            "task_lines": task_lines,
            "commit_generation": commit.as_ref().map(|c| c.generation),
            "adapter_sha256": digest,
            "adapter_changed_after_succeeded": adapter_changed,
        }));
    }
    let listed = listed_jobs(grpc_port).await;
    let report = json!({
        "seed": args.seed,
        "jobs": args.jobs,
        "synth_workers": args.synth_workers,
        "trainers": args.trainers,
        "faults": faults,
        "faults_ended_s": faults_ended_s.round(),
        "finished_s": started.elapsed().as_secs_f64().round(),
        "submits_refused": refused,
        "jobs_listed_by_coordinator": listed,
        "duplicated_jobs": listed.map(|listed| listed.saturating_sub(ids.len())),
        "summary": summary,
        "per_job": per_job,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
}
