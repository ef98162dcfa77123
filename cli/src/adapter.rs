//! `lift adapter export`: a job's adapter as a PEFT directory on local disk, from any store,
//! for `PeftModel.from_pretrained(model, DIR)` and `vllm serve --lora-modules name=DIR`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lift_engine::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use lift_shared::config::Config;

use crate::ask::load_job_adapter;
use crate::infra;

#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Write a job's adapter (adapter_model.safetensors, adapter_config.json) into a
    /// directory, from the store `LIFT_STORE_URL` names.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The job whose adapter to export; it must have succeeded.
    pub job_id: String,
    /// Created if missing; files already in it are never overwritten.
    pub dir: PathBuf,
}

pub async fn run(config: Config, command: AdapterCommand) -> anyhow::Result<ExitCode> {
    let AdapterCommand::Export(args) = command;
    let store = infra::open_store(&config)?;
    let adapter = load_job_adapter(&store, &args.job_id).await?;
    let files = [
        (
            args.dir.join(ADAPTER_WEIGHTS_FILE),
            &adapter.files.safetensors,
        ),
        (
            args.dir.join(ADAPTER_CONFIG_FILE),
            &adapter.files.config_json,
        ),
    ];
    // Checked for both before either is written, so a refusal leaves the directory as it was.
    if let Some((existing, _)) = files.iter().find(|(path, _)| path.exists()) {
        anyhow::bail!(
            "{} exists (an adapter already there is not overwritten; choose an empty directory)",
            existing.display()
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create the directory {}", args.dir.display()))?;
    for (path, bytes) in files {
        // create_new: a file that appeared since the check is not overwritten either.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {} (it is not overwritten)", path.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}
