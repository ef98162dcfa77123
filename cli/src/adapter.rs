//! `lift adapter export`: a job's adapter as a PEFT directory on local disk, from any store,
//! for `PeftModel.from_pretrained(model, DIR)` and `vllm serve --lora-modules name=DIR`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lift_engine::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use lift_runtime::infra;
use lift_shared::config::Config;
use lift_shared::error::LiftError;

use crate::ask::load_job_adapter;

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
    /// The base model's id to record in adapter_config.json (`base_model_name_or_path`), for
    /// a server that names the model otherwise (vLLM matches it against the model it
    /// serves, `--served-model-name` included). Default: the id the trainer recorded, the
    /// hub id where one was known.
    #[arg(long)]
    pub base_model: Option<String>,
}

pub async fn run(config: Config, command: AdapterCommand) -> anyhow::Result<ExitCode> {
    let AdapterCommand::Export(args) = command;
    let store = infra::open_existing_store(&config)?;
    let adapter = load_job_adapter(&store, &args.job_id).await?;
    let config_json = match &args.base_model {
        Some(id) => with_base_model(&adapter.files.config_json, id)?,
        None => adapter.files.config_json.clone(),
    };
    let files = [
        (
            args.dir.join(ADAPTER_WEIGHTS_FILE),
            &adapter.files.safetensors,
        ),
        (args.dir.join(ADAPTER_CONFIG_FILE), &config_json),
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

/// `config_json` with `base_model_name_or_path` set to `id`.
fn with_base_model(config_json: &[u8], id: &str) -> anyhow::Result<Vec<u8>> {
    let id = id.trim();
    if id.is_empty() {
        return Err(LiftError::InvalidArgument("--base-model is empty".to_string()).into());
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(config_json).context("the stored adapter_config.json")?;
    let fields = config
        .as_object_mut()
        .context("the stored adapter_config.json is not a JSON object")?;
    fields.insert("base_model_name_or_path".to_string(), id.into());
    Ok(serde_json::to_vec_pretty(&config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_model_id_is_replaced_and_nothing_else() {
        let stored =
            br#"{"base_model_name_or_path": "/models/llama", "r": 16, "peft_type": "LORA"}"#;
        let written: serde_json::Value =
            serde_json::from_slice(&with_base_model(stored, " org/llama ").unwrap()).unwrap();
        assert_eq!(
            written,
            serde_json::json!({"base_model_name_or_path": "org/llama", "r": 16, "peft_type": "LORA"})
        );
        assert!(with_base_model(stored, "  ").is_err());
    }
}
