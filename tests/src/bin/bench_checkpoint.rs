//! Checkpoint write speed against what the store itself allows. A checkpoint of the default
//! job's size (a rank-16 adapter on the seven projections of SmolLM2-135M's 30 layers, 4.88 M
//! f32 parameters, and its two AdamW moments: 58.6 MB) is written through `Checkpoint::save`
//! (adapter and optimizer as multipart uploads, then the create-only manifest), next to one
//! plain put of the same bytes to the same store and, for a directory, `std::fs::write` with
//! and without fsync. Prints one JSON line per store; recorded in docs/benchmarks.md
//! ("Checkpoint writes").
//!
//! `bench_checkpoint --store /tmp/dir --store s3://bucket/prefix`; S3 settings come from the
//! environment (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, keys and region).

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use lift_engine::PeftFiles;
use lift_shared::ids::JobId;
use lift_store::Store;
use lift_worker_train::{Checkpoint, Cursor};
use serde_json::json;

/// Parameters of the default adapter: rank 16 x (in + out) of each projection, 30 layers.
const ADAPTER_PARAMETERS: usize = 30 * 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3);

#[derive(Parser)]
#[command(about = "Checkpoint write speed against plain writes to the same store (JSON lines)")]
struct Args {
    /// Stores to write to: a directory or an object-store URL (`s3://bucket/prefix`).
    #[arg(long, required = true)]
    store: Vec<String>,
    /// Writes of each kind per store; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn median(mut seconds: Vec<f64>) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

/// Times `write` `repeats` times (each call gets its index) and returns the median seconds.
async fn timed<F, Fut>(repeats: usize, mut write: F) -> anyhow::Result<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut seconds = Vec::with_capacity(repeats);
    for index in 0..repeats {
        let started = Instant::now();
        write(index).await?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    Ok(median(seconds))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = lift_shared::config::Config::load(None)?;
    let adapter_bytes = ADAPTER_PARAMETERS * 4;
    // Not zeros: a store or file system that compresses would flatter them.
    let pattern = |len: usize| -> Vec<u8> { (0..len).map(|i| (i * 7919 % 251) as u8).collect() };
    let adapter = PeftFiles {
        safetensors: pattern(adapter_bytes),
        config_json: b"{}".to_vec(),
    };
    let optimizer = pattern(2 * adapter_bytes);
    let total = (adapter_bytes * 3) as f64;
    let whole = Bytes::from(pattern(adapter_bytes * 3));
    let job = JobId::parse("bench-checkpoint")?;

    for url in &args.store {
        let store = Store::open(url, config.s3_endpoint.as_deref())?;
        let save = timed(args.repeats, |step| {
            let (store, job, adapter, optimizer) = (
                store.clone(),
                job.clone(),
                adapter.clone(),
                optimizer.clone(),
            );
            async move {
                let checkpoint = Checkpoint {
                    step: step as u64 + 1,
                    cursor: Cursor::default(),
                    last_loss: 0.0,
                    trainer: "bench".into(),
                    at_ms: 0,
                    adapter_config: "{}".into(),
                    generation: 0,
                };
                checkpoint.save(&store, &job, &adapter, optimizer).await?;
                Ok(())
            }
        })
        .await?;
        let plain_put = timed(args.repeats, |index| {
            let (store, whole) = (store.clone(), whole.clone());
            async move {
                store
                    .put_overwrite(&format!("bench-checkpoint/plain-{index}"), whole)
                    .await?;
                Ok(())
            }
        })
        .await?;
        let mut line = json!({
            "store": url,
            "checkpoint_bytes": total,
            "checkpoint_save_s": save,
            "checkpoint_save_mb_s": total / save / 1e6,
            "plain_put_s": plain_put,
            "plain_put_mb_s": total / plain_put / 1e6,
        });
        if !url.contains("://") {
            let file = std::path::Path::new(url).join("bench-checkpoint-file");
            let fs_write = timed(args.repeats, |_| {
                let (file, whole) = (file.clone(), whole.clone());
                async move { Ok(std::fs::write(&file, &whole)?) }
            })
            .await?;
            let fs_fsync = timed(args.repeats, |_| {
                let (file, whole) = (file.clone(), whole.clone());
                async move {
                    let mut handle = std::fs::File::create(&file)?;
                    handle.write_all(&whole)?;
                    Ok(handle.sync_all()?)
                }
            })
            .await?;
            line["fs_write_s"] = json!(fs_write);
            line["fs_write_fsync_s"] = json!(fs_fsync);
        }
        println!("{line}");
    }
    Ok(())
}
