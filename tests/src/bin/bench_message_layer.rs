//! Message-layer benchmark: sentences/s from `SubmitJob` through RabbitMQ to the synthesis
//! workers and task files in the store, with the `instant:` generator (no model), so the
//! numbers are what the system itself costs. Then the coordinator's CPU and memory with many
//! live jobs. Prints one JSON object per measurement; results and commands are recorded in
//! docs/benchmarks.md.
//!
//! Needs the services of `scripts/test-env.sh` (RabbitMQ, S3 on moto) and a built `lift`
//! (`LIFT_BINARY` picks another build, e.g. a release one).

use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use lift_shared::messages::now_ms;
use lift_shared::proto::{self, lift_service_client::LiftServiceClient};
use lift_tests::{Cluster, LiftProcess};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Message-layer throughput and coordinator overhead (JSON lines on stdout)")]
struct Args {
    /// Synthesis worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Stores to measure: `local` (a directory) and/or `s3` (moto).
    #[arg(long, value_delimiter = ',', default_value = "local,s3")]
    stores: Vec<String>,
    /// Jobs submitted at once per measurement.
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    #[arg(long, default_value_t = 5_000)]
    sentences_per_job: usize,
    /// Sentences per chunk (the job option; 4 is the server default).
    #[arg(long, default_value_t = 4)]
    chunk_sentences: u32,
    /// Chunks a synthesis worker processes at once.
    #[arg(long, default_value_t = 32)]
    synth_concurrency: u32,
    /// Live jobs for the coordinator overhead measurement; 0 skips it.
    #[arg(long, default_value_t = 1_000)]
    live_jobs: usize,
}

/// CPU seconds (user + system) a process has used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `VmRSS` / `VmHWM` line of /proc/<pid>/status, in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A server on this machine whose CPU counts too: RabbitMQ's Erlang VM, moto's S3 server.
fn server_pid(pattern: &str) -> Option<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .and_then(|pid| pid.trim().parse().ok())
}

/// `sentences` distinct sentences; every one is its own unit for the splitter.
fn document(job: usize, sentences: usize) -> String {
    (0..sentences)
        .map(|i| {
            format!(
                "In ledger {job} the entry numbered {i} records a shipment of {} crates of pears.",
                i % 97 + 3
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn submit_request(title: String, text: String, chunk_sentences: u32) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        documents: vec![proto::Document { title, text }],
        base_model: String::new(),
        request_id: String::new(),
        synthesis: Some(proto::SynthesisOptions {
            chunk_sentences,
            ..Default::default()
        }),
        training: Some(proto::TrainingOptions {
            rank: 4,
            epochs: 1,
            ..Default::default()
        }),
    }
}

async fn submit(
    client: &mut LiftServiceClient<Channel>,
    request: proto::SubmitJobRequest,
) -> anyhow::Result<proto::JobStatus> {
    let response = client.submit_job(request).await?.into_inner();
    response
        .status
        .ok_or_else(|| anyhow::anyhow!("SubmitJob returned no status"))
}

async fn get(
    client: &mut LiftServiceClient<Channel>,
    job_id: &str,
) -> anyhow::Result<proto::JobStatus> {
    Ok(client
        .get_job(proto::GetJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner())
}

fn synthesis_done(status: &proto::JobStatus) -> bool {
    status.chunks_total > 0
        && status.chunks_synthesized + status.chunks_failed >= status.chunks_total
}

/// Polls until every job's chunks are all accounted for; returns their final statuses.
async fn wait_synthesized(
    client: &mut LiftServiceClient<Channel>,
    job_ids: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<proto::JobStatus>> {
    let deadline = Instant::now() + timeout;
    let mut done: Vec<Option<proto::JobStatus>> = vec![None; job_ids.len()];
    while done.iter().any(Option::is_none) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "synthesis not finished after {timeout:?}"
        );
        for (slot, job_id) in done.iter_mut().zip(job_ids) {
            if slot.is_none() {
                let status = get(client, job_id).await?;
                if synthesis_done(&status) {
                    *slot = Some(status);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(done.into_iter().flatten().collect())
}

fn new_cluster(store: &str, synth_concurrency: u32) -> anyhow::Result<Cluster> {
    // `instant:` selects the synthesis workers' benchmark generator (no model).
    let mut cluster = Cluster::with_generator("instant:".to_string());
    cluster
        .extra_env
        .push(("LIFT_SYNTH_CONCURRENCY", synth_concurrency.to_string()));
    cluster.extra_env.push(("RUST_LOG", "warn".to_string()));
    match store {
        "s3" => {}
        "local" => {
            let dir = cluster.dir.path().join("store");
            cluster
                .extra_env
                .push(("LIFT_STORE_URL", dir.display().to_string()));
        }
        other => anyhow::bail!("unknown store {other:?}: use local or s3"),
    }
    Ok(cluster)
}

fn pids(processes: &[&LiftProcess]) -> Vec<u32> {
    processes.iter().map(|p| p.pid()).collect()
}

fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

async fn throughput(args: &Args, store: &str, workers: usize) -> anyhow::Result<serde_json::Value> {
    let mut cluster = new_cluster(store, args.synth_concurrency)?;
    cluster.start_coordinator().await;
    for _ in 0..workers {
        cluster.start_synth_worker();
    }
    let mut client = cluster.client().await;
    // Warm-up: every worker connected and consuming, queues declared, store reachable.
    let warm = submit(
        &mut client,
        submit_request("warm-up".into(), document(0, 64), args.chunk_sentences),
    )
    .await?;
    wait_synthesized(&mut client, &[warm.job_id], Duration::from_secs(120)).await?;

    let coordinator = pids(&[cluster.coordinator.as_ref().expect("coordinator")]);
    let synth = pids(&cluster.synth_workers.iter().collect::<Vec<_>>());
    let broker = server_pid("beam.smp.*rabbit");
    let s3_server = (store == "s3").then(|| server_pid("moto_server")).flatten();
    let cpu_of = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);
    let cpu_before = (
        total_cpu(&coordinator),
        total_cpu(&synth),
        cpu_of(broker),
        cpu_of(s3_server),
    );

    let started_ms = now_ms();
    let started = Instant::now();
    let submissions = (0..args.jobs).map(|job| {
        let mut client = client.clone();
        let request = submit_request(
            format!("ledger {job}"),
            document(job, args.sentences_per_job),
            args.chunk_sentences,
        );
        async move { submit(&mut client, request).await }
    });
    let submitted: Vec<proto::JobStatus> = join_all(submissions)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let submit_seconds = started.elapsed().as_secs_f64();
    let job_ids: Vec<String> = submitted.iter().map(|s| s.job_id.clone()).collect();
    let finished = wait_synthesized(&mut client, &job_ids, Duration::from_secs(1_800)).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = (
        total_cpu(&coordinator),
        total_cpu(&synth),
        cpu_of(broker),
        cpu_of(s3_server),
    );

    let last_chunk_ms = finished
        .iter()
        .map(|s| s.last_chunk_at_ms)
        .max()
        .unwrap_or(started_ms);
    let seconds = ((last_chunk_ms - started_ms) as f64 / 1_000.0).max(1e-3);
    let sentences: u64 = finished
        .iter()
        .map(|s| u64::from(s.sentences_synthesized))
        .sum();
    let sentences_total: u64 = finished.iter().map(|s| u64::from(s.sentences_total)).sum();
    let chunks_failed: u64 = finished.iter().map(|s| u64::from(s.chunks_failed)).sum();
    let tasks: u64 = finished.iter().map(|s| s.tasks_total).sum();
    anyhow::ensure!(
        sentences == sentences_total && chunks_failed == 0,
        "lost work: {sentences} of {sentences_total} sentences synthesized, {chunks_failed} chunks failed"
    );
    Ok(json!({
        "benchmark": "message_layer_throughput",
        "store": store,
        "synth_workers": workers,
        "synth_concurrency": args.synth_concurrency,
        "jobs": args.jobs,
        "sentences": sentences,
        "chunk_sentences": args.chunk_sentences,
        "tasks_written": tasks,
        "seconds_submit_to_last_task_file": seconds,
        "sentences_per_second": sentences as f64 / seconds,
        "submit_seconds": submit_seconds,
        "wall_seconds_with_polling": wall,
        "cpu_seconds": {
            "coordinator": cpu_after.0 - cpu_before.0,
            "synth_workers": cpu_after.1 - cpu_before.1,
            "rabbitmq": broker.map(|_| cpu_after.2 - cpu_before.2),
            "s3_server": s3_server.map(|_| cpu_after.3 - cpu_before.3),
        },
        "coordinator_peak_rss_mib": memory_mib(coordinator[0], "VmHWM:"),
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

async fn live_jobs(args: &Args) -> anyhow::Result<serde_json::Value> {
    let mut cluster = new_cluster("local", args.synth_concurrency)?;
    cluster.start_coordinator().await;
    cluster.start_synth_worker();
    cluster.start_synth_worker();
    let mut client = cluster.client().await;
    let coordinator = cluster.coordinator.as_ref().expect("coordinator").pid();
    let rss_idle = memory_mib(coordinator, "VmRSS:");
    let cpu_start = cpu_seconds(coordinator);

    // Submitted 16 at a time, as a batch client would; no trainer runs, so every job stays live
    // (synthesized, waiting for training).
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(args.live_jobs);
    let mut job_ids = Vec::with_capacity(args.live_jobs);
    let mut next = 0;
    while next < args.live_jobs {
        let batch = (next..(next + 16).min(args.live_jobs)).map(|job| {
            let mut client = client.clone();
            let request = submit_request(
                format!("live {job}"),
                document(job, 8),
                args.chunk_sentences,
            );
            async move {
                let t = Instant::now();
                let status = submit(&mut client, request).await?;
                Ok::<_, anyhow::Error>((status.job_id, t.elapsed().as_secs_f64() * 1_000.0))
            }
        });
        for result in join_all(batch).await {
            let (job_id, ms) = result?;
            job_ids.push(job_id);
            latencies.push(ms);
        }
        next += 16;
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    wait_synthesized(&mut client, &job_ids, Duration::from_secs(600)).await?;
    let busy_seconds = started.elapsed().as_secs_f64();
    let cpu_busy = cpu_seconds(coordinator) - cpu_start;

    // Idle with every job live: what the coordinator costs while jobs wait for trainers.
    let idle_window = Duration::from_secs(20);
    let cpu_idle_start = cpu_seconds(coordinator);
    tokio::time::sleep(idle_window).await;
    let cpu_idle = cpu_seconds(coordinator) - cpu_idle_start;

    let list_started = Instant::now();
    let listed = client
        .list_jobs(proto::ListJobsRequest {
            page_size: 1_000,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .jobs
        .len();
    let list_ms = list_started.elapsed().as_secs_f64() * 1_000.0;
    let get_started = Instant::now();
    for job_id in job_ids.iter().take(100) {
        get(&mut client, job_id).await?;
    }
    let get_ms = get_started.elapsed().as_secs_f64() * 1_000.0 / 100.0;
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "benchmark": "coordinator_live_jobs",
        "live_jobs": job_ids.len(),
        "sentences_per_job": 8,
        "submit_seconds": submit_seconds,
        "submit_latency_ms": { "p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99) },
        "seconds_until_all_synthesized": busy_seconds,
        "coordinator_cpu_seconds_submitting": cpu_busy,
        "coordinator_cpu_share_idle_with_live_jobs": cpu_idle / idle_window.as_secs_f64(),
        "coordinator_rss_mib": { "before": rss_idle, "after": memory_mib(coordinator, "VmRSS:"), "peak": memory_mib(coordinator, "VmHWM:") },
        "list_jobs_ms": list_ms,
        "list_jobs_returned": listed,
        "get_job_ms_mean": get_ms,
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for store in &args.stores {
        for &workers in &args.workers {
            let result = throughput(&args, store, workers).await?;
            println!("{result}");
        }
    }
    if args.live_jobs > 0 {
        println!("{}", live_jobs(&args).await?);
    }
    Ok(())
}
