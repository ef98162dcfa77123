//! `lift batch`: one job per document of a corpus (a local directory or an S3 prefix), at
//! most `--max-in-flight` at once, resumable. Every document gets a request id derived from
//! its path and content, so a rerun (or a retry after a lost answer) never creates a second
//! job for it; a ledger (JSON lines) remembers what is finished so a rerun skips it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use lift_shared::config::Config;
use lift_shared::proto;
use lift_store::Store;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use crate::client;
use crate::client_commands::Connection;
use crate::exit::Exit;
use crate::job_args::{document_text, title_and_text, JobOptions};

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// A directory (its .md and .txt files, recursively) or `s3://bucket/prefix` (every object
    /// under it; credentials from the standard AWS_* variables).
    pub source: String,
    /// Jobs submitted and not yet finished, at most.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,
    /// Progress of this batch, one JSON line per event; a rerun reads it to resume.
    #[arg(long, default_value = "lift-batch.ledger.jsonl")]
    pub ledger: PathBuf,
    /// Where the summary (JSON) is written; it is also printed.
    #[arg(long, default_value = "lift-batch.summary.json")]
    pub summary: PathBuf,
    #[command(flatten)]
    pub options: JobOptions,
    #[command(flatten)]
    pub connection: Connection,
}

/// One document of the corpus: its name within the source and its bytes.
struct SourceDocument {
    name: String,
    bytes: Vec<u8>,
}

/// A line of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LedgerEntry {
    document: String,
    request_id: String,
    /// `submitted`, or the job's final state (`succeeded`, `failed`, `cancelled`), or
    /// `rejected` when the document never became a job.
    state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    job_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    adapter_uri: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
}

impl LedgerEntry {
    fn is_final(&self) -> bool {
        self.state != "submitted"
    }
}

pub async fn run(config: Config, args: BatchArgs) -> anyhow::Result<ExitCode> {
    let documents = list_documents(&args.source, config.s3_endpoint.as_deref()).await?;
    anyhow::ensure!(
        !documents.is_empty(),
        "{} holds no documents (.md or .txt files)",
        args.source
    );
    let previous = read_ledger(&args.ledger)?;
    let mut ledger = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.ledger)
        .await
        .with_context(|| format!("cannot open the ledger {}", args.ledger.display()))?;
    let grpc = args.connection.client(&config).await?;

    let mut finished: Vec<LedgerEntry> = Vec::new();
    let mut pending = Vec::new();
    for document in documents {
        match previous.get(&document.name) {
            Some(entry) if entry.is_final() => finished.push(entry.clone()),
            Some(entry) => pending.push((document, Some(entry.job_id.clone()))),
            None => pending.push((document, None)),
        }
    }
    let skipped = finished.len();
    let total = skipped + pending.len();
    eprintln!(
        "lift batch: {total} documents, {skipped} already finished, {} to do",
        pending.len()
    );

    let (events, mut event_rx) = tokio::sync::mpsc::unbounded_channel::<LedgerEntry>();
    let work = futures::stream::iter(pending)
        .map(|(document, job_id)| {
            let mut grpc = grpc.clone();
            let options = args.options.clone();
            let events = events.clone();
            async move { process(&mut grpc, &options, document, job_id, &events).await }
        })
        .buffer_unordered(args.max_in_flight as usize)
        .collect::<Vec<LedgerEntry>>();
    tokio::pin!(work);
    let mut ended = skipped;
    // Ledger lines are written as events happen, so an interruption loses nothing; each
    // event is also a progress line on stderr (stdout carries the summary alone).
    let mut record = |entry: LedgerEntry| {
        if entry.is_final() {
            ended += 1;
        }
        eprintln!("{}", progress_line(&entry, ended, total));
        entry
    };
    let results = loop {
        tokio::select! {
            Some(entry) = event_rx.recv() => append(&mut ledger, &record(entry)).await?,
            results = &mut work => break results,
        }
    };
    // Every event was sent before its future completed: what is queued now is all of them.
    while let Ok(entry) = event_rx.try_recv() {
        append(&mut ledger, &record(entry)).await?;
    }
    finished.extend(results);
    finished.sort_by(|a, b| a.document.cmp(&b.document));

    let failed: Vec<&LedgerEntry> = finished.iter().filter(|e| e.state != "succeeded").collect();
    let summary = serde_json::json!({
        "source": args.source,
        "documents": finished.len(),
        "succeeded": finished.len() - failed.len(),
        "failed": failed.len(),
        "already_finished_before_this_run": skipped,
        "jobs": finished,
    });
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&args.summary, &text)
        .with_context(|| format!("cannot write the summary {}", args.summary.display()))?;
    println!("{text}");
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "lift batch: {} of {} documents failed; see {}",
            failed.len(),
            finished.len(),
            args.summary.display()
        );
        Ok(Exit::JobFailed.into())
    }
}

/// `lift batch: [3/10] notes/a.md succeeded (job 0190...)`: ended jobs of all documents,
/// the document, what happened to it.
fn progress_line(entry: &LedgerEntry, ended: usize, total: usize) -> String {
    let mut line = format!(
        "lift batch: [{ended}/{total}] {} {}",
        entry.document, entry.state
    );
    if !entry.job_id.is_empty() {
        line.push_str(&format!(" (job {})", entry.job_id));
    }
    if !entry.error.is_empty() {
        line.push_str(&format!(": {}", entry.error));
    }
    line
}

/// Submits the document (unless it already has a job) and waits for its job to end.
async fn process(
    grpc: &mut client::Client,
    options: &JobOptions,
    document: SourceDocument,
    job_id: Option<String>,
    events: &tokio::sync::mpsc::UnboundedSender<LedgerEntry>,
) -> LedgerEntry {
    let request_id = request_id(&document);
    let mut entry = LedgerEntry {
        document: document.name.clone(),
        request_id: request_id.clone(),
        state: "submitted".to_string(),
        job_id: job_id.unwrap_or_default(),
        adapter_uri: String::new(),
        error: String::new(),
    };
    if entry.job_id.is_empty() {
        match submit(grpc, options, &document, &request_id).await {
            Ok(job_id) => {
                entry.job_id = job_id;
                let _ = events.send(entry.clone());
            }
            Err(error) => {
                entry.state = "rejected".to_string();
                entry.error = format!("{error:#}");
                let _ = events.send(entry.clone());
                return entry;
            }
        }
    }
    match client::wait_for_end(grpc, &entry.job_id, Duration::from_secs(2)).await {
        Ok(status) => {
            entry.state = client::state_name(status.state).to_string();
            entry.adapter_uri = status.adapter_uri;
            entry.error = status.error;
        }
        Err(error) => {
            entry.state = "failed".to_string();
            entry.error = format!("lost track of job: {error:#}");
        }
    }
    let _ = events.send(entry.clone());
    entry
}

/// The same document (name and content) always gets the same id, so the coordinator returns
/// its existing job instead of creating another.
fn request_id(document: &SourceDocument) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(document.name.as_bytes());
    hash.update([0]);
    hash.update(&document.bytes);
    format!("batch:{}", hex::encode(&hash.finalize()[..16]))
}

async fn submit(
    grpc: &mut client::Client,
    options: &JobOptions,
    document: &SourceDocument,
    request_id: &str,
) -> anyhow::Result<String> {
    let path = Path::new(&document.name);
    let (title, text) = title_and_text(path, document_text(path, document.bytes.clone())?);
    let mut request = options.to_request(vec![proto::Document { title, text }]);
    request.request_id = request_id.to_string();
    let mut attempt = 0;
    loop {
        match grpc.submit_job(request.clone()).await {
            Ok(response) => return Ok(response.into_inner().job_id),
            // The coordinator may be restarting; the request id makes a retry safe.
            Err(status) if client::is_transient(&status) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
            }
            Err(status) => return Err(client::explain(status)),
        }
    }
}

async fn append(ledger: &mut tokio::fs::File, entry: &LedgerEntry) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(entry)?;
    line.push(b'\n');
    ledger.write_all(&line).await?;
    ledger.sync_data().await?;
    Ok(())
}

/// The last entry of every document in the ledger (none if it does not exist yet).
fn read_ledger(path: &Path) -> anyhow::Result<HashMap<String, LedgerEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut entries = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // A line cut short by an interruption is the only one that can be torn: the last.
        let Ok(entry) = serde_json::from_str::<LedgerEntry>(line) else {
            eprintln!("lift batch: ignoring unreadable ledger line {}", number + 1);
            continue;
        };
        entries.insert(entry.document.clone(), entry);
    }
    Ok(entries)
}

async fn list_documents(
    source: &str,
    s3_endpoint: Option<&str>,
) -> anyhow::Result<Vec<SourceDocument>> {
    if source.starts_with("s3://") {
        return list_s3(source, s3_endpoint).await;
    }
    let root = PathBuf::from(source);
    anyhow::ensure!(
        root.is_dir(),
        "{source} is not a directory or an s3:// prefix"
    );
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    files.sort();
    let mut documents = Vec::with_capacity(files.len());
    for path in files {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        documents.push(SourceDocument { name, bytes });
    }
    Ok(documents)
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "md" || ext == "txt")
        {
            files.push(path);
        }
    }
    Ok(())
}

async fn list_s3(source: &str, s3_endpoint: Option<&str>) -> anyhow::Result<Vec<SourceDocument>> {
    let store =
        Store::open(source, s3_endpoint).with_context(|| format!("cannot open {source}"))?;
    let mut keys = store.list("").await?;
    keys.sort();
    let mut documents = Vec::with_capacity(keys.len());
    for key in keys {
        let bytes = store
            .get(&key)
            .await?
            .with_context(|| format!("{source}/{key} vanished while listing"))?;
        documents.push(SourceDocument {
            name: key,
            bytes: bytes.to_vec(),
        });
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_depend_on_name_and_content() {
        let doc = |name: &str, text: &str| SourceDocument {
            name: name.into(),
            bytes: text.as_bytes().to_vec(),
        };
        let a = request_id(&doc("a.md", "text"));
        assert_eq!(a, request_id(&doc("a.md", "text")));
        assert_ne!(a, request_id(&doc("b.md", "text")));
        assert_ne!(a, request_id(&doc("a.md", "other")));
        assert!(a.starts_with("batch:") && a.len() == "batch:".len() + 32);
    }

    #[test]
    fn ledger_keeps_the_last_entry_per_document_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let entry = |document: &str, state: &str| LedgerEntry {
            document: document.into(),
            request_id: format!("batch:{document}"),
            state: state.into(),
            job_id: format!("job-{document}"),
            adapter_uri: String::new(),
            error: String::new(),
        };
        let mut text = String::new();
        for e in [
            entry("a", "submitted"),
            entry("b", "submitted"),
            entry("a", "succeeded"),
        ] {
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
        }
        text.push_str("{\"document\":\"c\",\"requ");
        std::fs::write(&path, text).unwrap();
        let ledger = read_ledger(&path).unwrap();
        assert_eq!(ledger.len(), 2);
        assert!(ledger["a"].is_final());
        assert!(!ledger["b"].is_final());
        assert!(read_ledger(&dir.path().join("missing")).unwrap().is_empty());
    }
}
