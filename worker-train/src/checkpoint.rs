//! Checkpoints: adapter + optimizer state + cursor under `checkpoints/<step>-<generation>/`,
//! the small manifest written last (create-only), so a manifest always points at complete
//! files, and two runs that both believe they own the job never write one checkpoint.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use lift_engine::PeftFiles;
use lift_shared::ids::JobId;
use lift_store::{layout, Store};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Where training stands, enough to continue without repeating or skipping a task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// 1-based epoch in progress.
    pub epoch: u32,
    /// Epoch 1: tasks already trained from each chunk (a prefix of its task file).
    pub epoch1_trained: BTreeMap<u32, u32>,
    /// Epochs 2+: examples of the shuffled cache already trained in this epoch.
    pub position: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: u64,
    pub cursor: Cursor,
    pub last_loss: f32,
    pub trainer: String,
    pub at_ms: i64,
    pub adapter_config: String,
    /// Claim generation of the run that wrote it (part of its keys).
    #[serde(default)]
    pub generation: u32,
}

impl Checkpoint {
    /// Writes the adapter and optimizer (multipart: they can be large) and then the manifest.
    /// Returns the bytes written.
    pub async fn save(
        &self,
        store: &Store,
        job: &JobId,
        adapter: &PeftFiles,
        optimizer: Vec<u8>,
    ) -> Result<u64, TrainError> {
        let bytes = (adapter.safetensors.len() + optimizer.len()) as u64;
        store
            .put_multipart(
                &layout::checkpoint_adapter(job, self.step, self.generation),
                Bytes::from(adapter.safetensors.clone()),
            )
            .await?;
        store
            .put_multipart(
                &layout::checkpoint_optimizer(job, self.step, self.generation),
                Bytes::from(optimizer),
            )
            .await?;
        let manifest = serde_json::to_vec(self).map_err(|e| TrainError::Checkpoint {
            key: layout::checkpoint_manifest(job, self.step, self.generation),
            reason: e.to_string(),
        })?;
        // A second save of the same step by the same run (after a retry) keeps the first.
        store
            .put_create(
                &layout::checkpoint_manifest(job, self.step, self.generation),
                manifest,
            )
            .await?;
        Ok(bytes)
    }

    /// The newest checkpoint whose manifest exists, with its adapter and optimizer bytes.
    pub async fn load_latest(
        store: &Store,
        job: &JobId,
    ) -> Result<Option<(Checkpoint, PeftFiles, Bytes)>, TrainError> {
        let keys = store.list(&layout::checkpoints_prefix(job)).await?;
        let mut manifests: Vec<&String> = keys
            .iter()
            .filter(|k| k.ends_with("manifest.json"))
            .collect();
        manifests.sort();
        let Some(key) = manifests.last() else {
            return Ok(None);
        };
        let unreadable = |reason: String| TrainError::Checkpoint {
            key: key.to_string(),
            reason,
        };
        let checkpoint: Checkpoint = store
            .get_json(key)
            .await?
            .ok_or_else(|| unreadable("manifest vanished".into()))?;
        let adapter = store
            .get(&layout::checkpoint_adapter(
                job,
                checkpoint.step,
                checkpoint.generation,
            ))
            .await?
            .ok_or_else(|| unreadable("adapter file is missing".into()))?;
        let optimizer = store
            .get(&layout::checkpoint_optimizer(
                job,
                checkpoint.step,
                checkpoint.generation,
            ))
            .await?
            .ok_or_else(|| unreadable("optimizer file is missing".into()))?;
        let files = PeftFiles {
            safetensors: adapter.to_vec(),
            config_json: checkpoint.adapter_config.clone().into_bytes(),
        };
        Ok(Some((checkpoint, files, optimizer)))
    }
}

/// Deletes every checkpoint older than the newest `keep` complete ones (a manifest marks a
/// complete one). Newer directories without a manifest are being written and stay. Returns
/// the files deleted.
pub async fn prune_checkpoints(
    store: &Store,
    job: &JobId,
    keep: usize,
) -> Result<usize, TrainError> {
    let keys = store.list(&layout::checkpoints_prefix(job)).await?;
    let directory = |key: &str| {
        key.rsplit_once('/')
            .map_or(String::new(), |(dir, _)| dir.to_string())
    };
    let complete: BTreeSet<String> = keys
        .iter()
        .filter(|k| k.ends_with("manifest.json"))
        .map(|k| directory(k))
        .collect();
    let Some(oldest_kept) = complete.iter().rev().nth(keep.max(1) - 1) else {
        return Ok(0);
    };
    let mut deleted = 0;
    for key in keys.iter().filter(|k| directory(k) < *oldest_kept) {
        store.delete(key).await?;
        deleted += 1;
    }
    Ok(deleted)
}
