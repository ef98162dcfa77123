//! gRPC client commands: submit, watch, status, jobs, cancel.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lift_shared::proto::lift_service_client::LiftServiceClient;
use lift_shared::proto::{self, JobState};
use lift_shared::tls::ClientTls;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

pub type Client = LiftServiceClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        // The current span's trace context, so the coordinator continues the caller's trace.
        for (name, value) in lift_shared::telemetry::trace_headers() {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        Ok(request)
    }
}

/// How a client reaches the coordinator: its token (`LIFT_TOKEN`) and, for `https://`
/// addresses, what it trusts and presents.
#[derive(Clone, Default)]
pub struct ClientSettings {
    pub token: Option<String>,
    pub tls: ClientTls,
}

impl ClientSettings {
    /// For the coordinator this process started itself on loopback (embedded mode).
    pub fn loopback() -> Self {
        Self::default()
    }
}

pub async fn connect(addr: &str, settings: &ClientSettings) -> anyhow::Result<Client> {
    let url = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .with_context(|| format!("invalid coordinator address {addr}"))?
        .connect_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(settings.tls.tonic())
            .context("invalid TLS settings (LIFT_TLS_CA, LIFT_TLS_CLIENT_CERT)")?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach the coordinator at {url} (is `lift coordinator` running?)")
    })?;
    let token = match settings.token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token (LIFT_TOKEN) holds characters a header cannot carry")?,
        ),
    };
    Ok(
        LiftServiceClient::with_interceptor(channel, BearerToken(token))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
}

/// A gRPC status as the command's error: a sentence a person can act on, its code kept for
/// the exit status.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    crate::exit::RpcError(status).into()
}

pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Unspecified => "unknown",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

pub fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

pub fn print_status(status: &proto::JobStatus, json: bool) {
    if json {
        println!("{}", status_json(status));
        return;
    }
    println!("job        {}", status.job_id);
    println!("state      {}", state_name(status.state));
    println!(
        "synthesis  {}/{} chunks ({} failed), {}/{} sentences, {} tasks, {} pairs dropped",
        status.chunks_synthesized,
        status.chunks_total,
        status.chunks_failed,
        status.sentences_synthesized,
        status.sentences_total,
        status.tasks_total,
        status.pairs_dropped
    );
    println!(
        "facts      {}/{} with a task",
        status.facts_covered, status.facts_found
    );
    let loss = status
        .last_loss
        .map(|l| format!("{l:.4}"))
        .unwrap_or_else(|| "-".into());
    println!(
        "training   epoch {}/{}, step {}, loss {loss}",
        status.epoch, status.epochs_total, status.step
    );
    if !status.adapter_uri.is_empty() {
        println!("adapter    {}", status.adapter_uri);
    }
    if !status.error.is_empty() {
        println!("error      {}", status.error);
    }
}

pub fn status_json(status: &proto::JobStatus) -> serde_json::Value {
    serde_json::json!({
        "job_id": status.job_id,
        "state": state_name(status.state),
        "base_model": status.base_model,
        "sentences_total": status.sentences_total,
        "sentences_synthesized": status.sentences_synthesized,
        "sentences_failed": status.sentences_failed,
        "chunks_total": status.chunks_total,
        "chunks_synthesized": status.chunks_synthesized,
        "chunks_failed": status.chunks_failed,
        "tasks_total": status.tasks_total,
        "pairs_dropped": status.pairs_dropped,
        "facts_found": status.facts_found,
        "facts_covered": status.facts_covered,
        "epoch": status.epoch,
        "epochs_total": status.epochs_total,
        "step": status.step,
        "last_loss": status.last_loss,
        "created_at_ms": status.created_at_ms,
        "started_at_ms": status.started_at_ms,
        "finished_at_ms": status.finished_at_ms,
        "first_step_at_ms": status.first_step_at_ms,
        "last_chunk_at_ms": status.last_chunk_at_ms,
        "adapter_uri": status.adapter_uri,
        "error": status.error,
        "chunk_failures": status.chunk_failures.iter().map(|f| serde_json::json!({"chunk": f.chunk, "reason": f.reason})).collect::<Vec<_>>(),
    })
}

/// Follows a job until it is terminal, with progress bars (or JSON lines), reconnecting
/// when the stream breaks. Returns the final status.
pub async fn watch(
    client: &mut Client,
    job_id: &str,
    json: bool,
) -> anyhow::Result<proto::JobStatus> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let synthesis = bars.add(
        ProgressBar::new(0)
            .with_style(style.clone())
            .with_prefix("synthesis"),
    );
    let training = bars.add(
        ProgressBar::new(0)
            .with_style(style)
            .with_prefix("training"),
    );
    if json {
        synthesis.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        training.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut failures = 0;
    loop {
        let stream = client
            .watch_job(proto::WatchJobRequest {
                job_id: job_id.to_string(),
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable && failures < 30 => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(explain(status)),
        };
        while let Some(update) = stream.next().await {
            let status = match update {
                Ok(status) => status,
                Err(_) => break,
            };
            failures = 0;
            if json {
                println!("{}", status_json(&status));
            }
            synthesis.set_length(status.chunks_total as u64);
            synthesis.set_position((status.chunks_synthesized + status.chunks_failed) as u64);
            synthesis.set_message(format!("chunks, {} tasks", status.tasks_total));
            training.set_length(status.epochs_total as u64);
            training.set_position(status.epoch.saturating_sub(1) as u64);
            let loss = status
                .last_loss
                .map(|l| format!("{l:.3}"))
                .unwrap_or_else(|| "-".into());
            training.set_message(format!("epochs, step {}, loss {loss}", status.step));
            if is_terminal(status.state) {
                synthesis.finish();
                training.set_position(training.length().unwrap_or(0));
                training.finish();
                return Ok(status);
            }
        }
        failures += 1;
        if failures > 30 {
            anyhow::bail!("lost the coordinator while watching job {job_id}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An error a retry may get past (a restarting coordinator).
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
    )
}

/// Polls GetJob every `poll` until the job has ended. Transient errors (a restarting
/// coordinator) are retried until 60 polls in a row have failed.
pub async fn wait_for_end(
    grpc: &mut Client,
    job_id: &str,
    poll: Duration,
) -> anyhow::Result<proto::JobStatus> {
    let mut errors = 0;
    loop {
        match grpc
            .get_job(proto::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
        {
            Ok(status) => {
                let status = status.into_inner();
                if is_terminal(status.state) {
                    return Ok(status);
                }
                errors = 0;
            }
            Err(status) if is_transient(&status) && errors < 60 => errors += 1,
            Err(status) => return Err(explain(status)),
        }
        tokio::time::sleep(poll).await;
    }
}
