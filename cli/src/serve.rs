//! `lift serve`: an OpenAI-compatible HTTP server on the built-in engine. `model` set to a job
//! id answers with that job's adapter (loaded from the store, a few kept in memory); the base
//! model id (or an empty model) answers without one. It is also the generator that the synth
//! worker's HTTP client is tested against, so `response_format` with the QA pairs schema maps
//! to the engine's constrained QA decoding.
//!
//! Requests that arrive together are generated together: one engine loop takes what is queued
//! and runs requests for the same adapter as one batch, since synthesis throughput depends on it.
//!
//! With tokens configured (`LIFT_AUTH_TOKENS_FILE`, `LIFT_AUTH_TOKENS`) every request but
//! `/health` needs `Authorization: Bearer <token>` (401 without), and a job's adapter answers
//! only its own tenant (403 otherwise); with a certificate (`LIFT_TLS_CERT`) it serves HTTPS.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use lift_engine::{
    ChatMessage, Engine, EngineError, FinishReason, GenerationOutput, GenerationRequest,
    LoraAdapter, OutputConstraint, PeftFiles, SamplingParams,
};
use lift_shared::auth::{ServerSecurity, Tenant, TokenTable};
use lift_shared::config::Config;
use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::store::{layout, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::infra;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LIFT_SERVE_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Base model (default: LIFT_MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// Job adapters kept in memory at once.
    #[arg(long, default_value_t = 4)]
    pub adapter_cache: usize,
    /// Most requests generated together in one engine call.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// How long the engine loop waits for more requests to join an idle batch, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub batch_window_ms: u64,
    /// Completions admitted at once, waiting or generating; past it a request gets 429.
    #[arg(long, default_value_t = ServeOptions::default().max_admitted as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_admitted: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    pub max_batch: usize,
    pub batch_window: Duration,
    /// Completions admitted at once (each holds its request and reply in memory until done).
    pub max_admitted: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            batch_window: Duration::from_millis(2),
            max_admitted: 256,
        }
    }
}

pub async fn run(config: Config, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let security = ServerSecurity::from_config(&config)?;
    let store = infra::open_store(&config)?;
    let engine = infra::load_engine(args.model.as_deref().unwrap_or(&config.model)).await?;
    let adapters = AdapterSource::new(store, args.adapter_cache);
    let options = ServeOptions {
        max_batch: args.max_batch.max(1),
        batch_window: Duration::from_millis(args.batch_window_ms),
        max_admitted: args.max_admitted as usize,
    };
    let shutdown = infra::shutdown_signal();
    serve(args.addr, engine, adapters, options, security, async move {
        shutdown.cancelled().await
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    addr: SocketAddr,
    engine: Arc<Engine>,
    adapters: AdapterSource,
    options: ServeOptions,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        %addr,
        model = engine.model_id(),
        tls = security.tls.is_some(),
        bearer_tokens = security.tokens.is_some(),
        "serving OpenAI-compatible API"
    );
    serve_on(listener, engine, adapters, options, security, shutdown).await
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    adapters: AdapterSource,
    options: ServeOptions,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (jobs, queue) = mpsc::unbounded_channel();
    let engine_loop = tokio::spawn(run_engine_loop(engine.clone(), queue, options));
    let state = Arc::new(ServerState {
        engine,
        adapters,
        admission: Admission::new(options.max_admitted),
        jobs,
        tokens: security.tokens.clone(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state);
    match &security.tls {
        Some(tls) => crate::https::serve_tls(listener, app, tls.rustls()?, shutdown).await?,
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("http server failed")?,
    }
    // The router (and with it the last job sender) is gone: the loop drains and ends.
    engine_loop.await.context("engine loop failed")?;
    Ok(())
}

struct ServerState {
    engine: Arc<Engine>,
    adapters: AdapterSource,
    admission: Admission,
    jobs: mpsc::UnboundedSender<EngineJob>,
    tokens: Option<Arc<TokenTable>>,
}

/// A bound on the completions in the server at once: the engine queue is unbounded, so
/// without it a burst of clients would grow memory without limit.
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl Admission {
    fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// A permit held until the completion's reply is sent, or 429 when all are taken.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ServeError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServeError::Overloaded(self.limit))
    }
}

impl ServerState {
    /// The caller, from the `Authorization` header (everyone is open without tokens).
    fn caller(&self, headers: &HeaderMap) -> Result<Tenant, ServeError> {
        let header = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        lift_shared::auth::authenticate(self.tokens.as_deref(), header).map_err(|error| match error
        {
            LiftError::Unauthenticated(message) => ServeError::Unauthenticated(message),
            other => ServeError::Internal(other.to_string()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Adapters

type AdapterCell = Arc<OnceCell<Arc<LoraAdapter>>>;

/// Job adapters from the store (`jobs/<id>/adapter/`), the most recently used few kept loaded.
pub struct AdapterSource {
    store: Store,
    capacity: usize,
    /// Least recently used first. A cell per job, so concurrent first requests load it once.
    cache: Mutex<VecDeque<(JobId, AdapterCell)>>,
}

impl AdapterSource {
    pub fn new(store: Store, capacity: usize) -> Self {
        Self {
            store,
            capacity: capacity.max(1),
            cache: Mutex::new(VecDeque::new()),
        }
    }

    /// The caller's jobs whose final adapter is in the store.
    async fn jobs_with_adapters(&self, tenant: &Tenant) -> Result<Vec<JobId>, ServeError> {
        let mut jobs = Vec::new();
        for job in self.store.list_job_ids().await.map_err(ServeError::store)? {
            let key = layout::adapter_config(&job);
            if self.store.exists(&key).await.map_err(ServeError::store)?
                && self.may_use(tenant, &job).await?
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    /// Whether `tenant` may use the job's adapter: its own jobs only, once tokens are on.
    async fn may_use(&self, tenant: &Tenant, job: &JobId) -> Result<bool, ServeError> {
        if *tenant == Tenant::Open {
            return Ok(true);
        }
        let status = self
            .store
            .read_latest_status(job)
            .await
            .map_err(ServeError::store)?
            .ok_or_else(|| ServeError::ModelNotFound(job.to_string()))?;
        Ok(tenant.owns(&status.tenant))
    }

    async fn adapter(
        &self,
        engine: &Arc<Engine>,
        job: &JobId,
    ) -> Result<Arc<LoraAdapter>, ServeError> {
        let cell = self.cell(job);
        let loaded = cell
            .get_or_try_init(|| self.load(engine.clone(), job.clone()))
            .await
            .cloned();
        if loaded.is_err() {
            // Not cached: the job may finish (or the store come back) before the next request.
            self.forget(job, &cell);
        }
        loaded
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VecDeque<(JobId, AdapterCell)>> {
        // Each critical section is a lookup and a push or remove; a poisoned lock is still usable.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cell(&self, job: &JobId) -> AdapterCell {
        let mut cache = self.lock_cache();
        let cell = match cache.iter().position(|(cached, _)| cached == job) {
            Some(position) => cache.remove(position).map(|(_, cell)| cell),
            None => None,
        }
        .unwrap_or_default();
        cache.push_back((job.clone(), cell.clone()));
        while cache.len() > self.capacity {
            cache.pop_front();
        }
        cell
    }

    fn forget(&self, job: &JobId, cell: &AdapterCell) {
        self.lock_cache()
            .retain(|(cached, cached_cell)| !(cached == job && Arc::ptr_eq(cached_cell, cell)));
    }

    async fn load(&self, engine: Arc<Engine>, job: JobId) -> Result<Arc<LoraAdapter>, ServeError> {
        let weights = self.store.get(&layout::adapter_weights(&job)).await;
        let config = self.store.get(&layout::adapter_config(&job)).await;
        let (Some(safetensors), Some(config_json)) = (
            weights.map_err(ServeError::store)?,
            config.map_err(ServeError::store)?,
        ) else {
            return Err(ServeError::ModelNotFound(job.to_string()));
        };
        let files = PeftFiles {
            safetensors: safetensors.to_vec(),
            config_json: config_json.to_vec(),
        };
        tracing::info!(job_id = %job, bytes = files.safetensors.len(), "loading adapter");
        // Building the adapter's tensors is CPU work (and a device upload).
        let adapter = tokio::task::spawn_blocking(move || engine.load_adapter(&files))
            .await
            .map_err(|error| ServeError::Internal(format!("adapter loading task failed: {error}")))?
            .map_err(|error| match error {
                EngineError::InvalidAdapter(reason) => ServeError::BadRequest(format!(
                    "the adapter of job {job} does not fit the served model: {reason}"
                )),
                other => ServeError::Internal(format!(
                    "failed to load the adapter of job {job}: {other}"
                )),
            })?;
        Ok(Arc::new(adapter))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug)]
enum ServeError {
    BadRequest(String),
    Unauthenticated(String),
    PermissionDenied(String),
    ModelNotFound(String),
    /// Completions admitted at once, all taken.
    Overloaded(usize),
    Unavailable(String),
    Internal(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRequest(message)
            | Self::Unauthenticated(message)
            | Self::PermissionDenied(message)
            | Self::Unavailable(message)
            | Self::Internal(message) => f.write_str(message),
            // OpenAI's wording, which clients show as is.
            Self::ModelNotFound(model) => write!(f, "The model `{model}` does not exist"),
            Self::Overloaded(limit) => write!(
                f,
                "the server is busy ({limit} completions in progress); retry shortly"
            ),
        }
    }
}

impl ServeError {
    fn store(error: lift_shared::error::LiftError) -> Self {
        Self::Unavailable(error.to_string())
    }

    fn engine(error: EngineError) -> Self {
        match error {
            EngineError::PromptTooLong { .. } | EngineError::InvalidRequest(_) => {
                Self::BadRequest(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error object OpenAI clients parse.
    fn body(&self) -> Value {
        let (kind, code) = match self {
            Self::BadRequest(_) => ("invalid_request_error", Value::Null),
            Self::Unauthenticated(_) => ("authentication_error", json!("invalid_api_key")),
            Self::PermissionDenied(_) => ("permission_error", Value::Null),
            Self::ModelNotFound(_) => ("invalid_request_error", json!("model_not_found")),
            Self::Overloaded(_) => ("requests", json!("rate_limit_exceeded")),
            Self::Unavailable(_) | Self::Internal(_) => ("server_error", Value::Null),
        };
        json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}})
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Internal(_) | Self::Unavailable(_)) {
            tracing::error!(error = %self, "chat completion failed");
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, Self::Overloaded(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Deserialize)]
struct ChatCompletionBody {
    #[serde(default)]
    model: String,
    messages: Vec<MessageBody>,
    max_tokens: Option<u32>,
    /// The newer name of `max_tokens`.
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<StopBody>,
    seed: Option<u64>,
    n: Option<u32>,
    #[serde(default)]
    stream: bool,
    response_format: Option<ResponseFormatBody>,
    /// Every other field, checked against [`UNSERVED_FIELDS`].
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Fields of OpenAI's chat API this server does not implement. A request that uses one gets
/// a 400 naming it rather than an answer that silently ignored it.
const UNSERVED_FIELDS: [&str; 11] = [
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "best_of",
];

/// The first field of `other` this server would have to ignore to answer. A field sent with
/// its neutral value (as OpenAI's SDKs may send) asks for nothing and passes.
fn unserved_field(other: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
    let neutral = |name: &str, value: &serde_json::Value| {
        value.is_null()
            || match name {
                "logprobs" => value.as_bool() == Some(false),
                "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
                "repetition_penalty" | "best_of" => value.as_f64() == Some(1.0),
                "logit_bias" => value.as_object().is_some_and(|bias| bias.is_empty()),
                _ => false,
            }
    };
    UNSERVED_FIELDS
        .into_iter()
        .find(|name| other.get(*name).is_some_and(|value| !neutral(name, value)))
}

#[derive(Debug, Deserialize)]
struct MessageBody {
    role: String,
    content: ContentBody,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ContentBody {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopBody {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormatBody {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaBody },
}

#[derive(Debug, Deserialize)]
struct JsonSchemaBody {
    #[serde(default)]
    schema: Value,
}

const DEFAULT_MAX_TOKENS: usize = 512;

/// What the reply must be, beyond text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Text,
    /// Any JSON: generated freely, then checked.
    Json,
    /// The QA pairs schema: the engine's constrained decoding guarantees the shape.
    QaPairs(usize),
}

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
struct ChatRequest {
    model: String,
    generation: GenerationRequest,
    format: OutputFormat,
    stream: bool,
}

fn parse_chat_request(body: &[u8], fresh_seed: u64) -> Result<ChatRequest, ServeError> {
    let body: ChatCompletionBody = serde_json::from_slice(body)
        .map_err(|error| ServeError::BadRequest(format!("invalid request body: {error}")))?;
    if let Some(field) = unserved_field(&body.other) {
        return Err(ServeError::BadRequest(format!(
            "`{field}` is not supported by this server; leave it out"
        )));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ServeError::BadRequest(
            "only n = 1 is supported".to_string(),
        ));
    }
    let temperature = body.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ServeError::BadRequest(format!(
            "temperature must be between 0 and 2, got {temperature}"
        )));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ServeError::BadRequest(format!(
            "top_p must be in (0, 1], got {top_p}"
        )));
    }
    let max_tokens = body
        .max_completion_tokens
        .or(body.max_tokens)
        .map_or(DEFAULT_MAX_TOKENS, |tokens| tokens as usize);
    if max_tokens == 0 {
        return Err(ServeError::BadRequest(
            "max_tokens must be at least 1".to_string(),
        ));
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(StopBody::One(stop)) => vec![stop],
        Some(StopBody::Many(stops)) => stops,
    }
    .into_iter()
    .filter(|stop| !stop.is_empty())
    .collect();
    let format = match body.response_format {
        None | Some(ResponseFormatBody::Text) => OutputFormat::Text,
        Some(ResponseFormatBody::JsonObject) => OutputFormat::Json,
        Some(ResponseFormatBody::JsonSchema { json_schema }) => {
            match lift_worker_synth::qa_pairs_count(&json_schema.schema) {
                Some(pairs) => OutputFormat::QaPairs(pairs.max(1)),
                None => {
                    return Err(ServeError::BadRequest(
                        "`response_format` json_schema: only lift's question/answer schema is \
                         enforced while decoding; use json_object for any JSON, or text"
                            .to_string(),
                    ))
                }
            }
        }
    };

    let mut messages = Vec::with_capacity(body.messages.len());
    for message in body.messages {
        let role = match message.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ServeError::BadRequest(format!(
                    "unsupported message role `{other}`"
                )))
            }
        };
        let content = match message.content {
            ContentBody::Text(text) => text,
            ContentBody::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    if part.kind != "text" {
                        return Err(ServeError::BadRequest(format!(
                            "unsupported content part `{}`: only text is served",
                            part.kind
                        )));
                    }
                    text.push_str(&part.text);
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, content));
    }
    if !messages.iter().any(|message| message.role != "assistant") {
        return Err(ServeError::BadRequest(
            "messages must include a system or user message".to_string(),
        ));
    }
    // A final assistant message is the start of the reply, continued rather than answered
    // (as vLLM's `continue_final_message`): the built-in few-shot recipe relies on it.
    let prefill = match messages.last() {
        Some(last) if last.role == "assistant" => messages.pop().map(|last| last.content),
        _ => None,
    }
    .unwrap_or_default();

    let constraint = match format {
        OutputFormat::QaPairs(pairs) => Some(OutputConstraint::QaJsonList { pairs }),
        OutputFormat::Text | OutputFormat::Json => None,
    };
    Ok(ChatRequest {
        model: body.model,
        generation: GenerationRequest {
            messages,
            prefill,
            params: SamplingParams {
                max_tokens,
                temperature,
                top_p,
                stop,
                seed: body.seed.unwrap_or(fresh_seed),
                constraint,
                ..SamplingParams::default()
            },
        },
        format,
        stream: body.stream,
    })
}

/// Unconstrained "JSON" output: models wrap it in fences or prose, so take the outermost
/// object or array that parses.
fn extract_json(text: &str) -> Option<String> {
    let trimmed = text.trim();
    if serde_json::from_str::<Value>(trimmed).is_ok() {
        return Some(trimmed.to_string());
    }
    let start = trimmed.find(['{', '['])?;
    let end = trimmed.rfind(['}', ']'])?;
    let candidate = trimmed.get(start..=end)?;
    serde_json::from_str::<Value>(candidate)
        .is_ok()
        .then(|| candidate.to_string())
}

// ---------------------------------------------------------------------------------------------
// Responses

fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::now_v7().simple())
}

fn completion_body(id: &str, model: &str, content: &str, output: &GenerationOutput) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason_name(output.finish_reason),
        }],
        "usage": {
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens,
        },
    })
}

fn chunk_body(id: &str, model: &str, delta: Value, finish_reason: Option<FinishReason>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": unix_seconds(),
        "model": model,
        "choices": [{
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason.map(finish_reason_name),
        }],
    })
}

/// One server-sent event carrying `data`; a stream ends with `data: [DONE]`.
fn sse_event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

const SSE_DONE: &str = "[DONE]";

fn sse_response(events: impl futures::Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures::StreamExt;
    let body = Body::from_stream(events.map(Ok::<_, std::convert::Infallible>));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The whole reply as a stream: for outputs that must be checked before they are sent.
fn sse_whole_reply(
    id: String,
    model: String,
    content: String,
    output: &GenerationOutput,
) -> Response {
    let events = vec![
        sse_event(
            &chunk_body(
                &id,
                &model,
                json!({"role": "assistant", "content": content}),
                None,
            )
            .to_string(),
        ),
        sse_event(&chunk_body(&id, &model, json!({}), Some(output.finish_reason)).to_string()),
        sse_event(SSE_DONE),
    ];
    sse_response(futures::stream::iter(events))
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn list_models(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServeError> {
    let tenant = state.caller(&headers)?;
    let base = state.engine.model_id().to_string();
    let mut data = vec![json!({"id": base, "object": "model", "created": 0, "owned_by": "lift"})];
    for job in state.adapters.jobs_with_adapters(&tenant).await? {
        data.push(json!({
            "id": job.as_str(), "object": "model", "created": 0, "owned_by": "lift", "parent": base,
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ServeError> {
    let tenant = state.caller(&headers)?;
    let admitted = state.admission.admit()?;
    // Requests without a seed still differ from each other, as OpenAI's do.
    let fresh_seed = uuid::Uuid::now_v7().as_u64_pair().1;
    let request = parse_chat_request(&body, fresh_seed)?;
    let adapter = resolve_adapter(&state, &tenant, &request.model).await?;
    let model = if request.model.is_empty() {
        state.engine.model_id().to_string()
    } else {
        request.model.clone()
    };
    let id = completion_id();

    if request.stream && request.format != OutputFormat::Json {
        return stream_completion(&state, adapter, request.generation, id, model, admitted);
    }
    let (reply, receiver) = oneshot::channel();
    state
        .jobs
        .send(EngineJob::Complete {
            adapter,
            request: request.generation,
            reply,
        })
        .map_err(|_| ServeError::Unavailable("the server is shutting down".to_string()))?;
    let output = receiver
        .await
        .map_err(|_| ServeError::Unavailable("the server is shutting down".to_string()))??;
    let content = match request.format {
        OutputFormat::Json => extract_json(&output.text).ok_or_else(|| {
            ServeError::Internal("the model's reply is not valid JSON".to_string())
        })?,
        OutputFormat::Text | OutputFormat::QaPairs(_) => output.text.clone(),
    };
    if request.stream {
        return Ok(sse_whole_reply(id, model, content, &output));
    }
    Ok(Json(completion_body(&id, &model, &content, &output)).into_response())
}

async fn resolve_adapter(
    state: &ServerState,
    tenant: &Tenant,
    model: &str,
) -> Result<Option<Arc<LoraAdapter>>, ServeError> {
    if model.is_empty() || model == state.engine.model_id() {
        return Ok(None);
    }
    let job = JobId::parse(model).map_err(|_| ServeError::ModelNotFound(model.to_string()))?;
    if !state.adapters.may_use(tenant, &job).await? {
        return Err(ServeError::PermissionDenied(format!(
            "job {job} belongs to another tenant"
        )));
    }
    state.adapters.adapter(&state.engine, &job).await.map(Some)
}

fn stream_completion(
    state: &ServerState,
    adapter: Option<Arc<LoraAdapter>>,
    request: GenerationRequest,
    id: String,
    model: String,
    admitted: tokio::sync::OwnedSemaphorePermit,
) -> Result<Response, ServeError> {
    use futures::StreamExt;
    let (pieces, receiver) = mpsc::unbounded_channel();
    state
        .jobs
        .send(EngineJob::Stream {
            adapter,
            request,
            pieces,
        })
        .map_err(|_| ServeError::Unavailable("the server is shutting down".to_string()))?;
    let opening = sse_event(
        &chunk_body(
            &id,
            &model,
            json!({"role": "assistant", "content": ""}),
            None,
        )
        .to_string(),
    );
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(receiver).map(move |piece| {
        // Held while the stream lives: the completion stays admitted until it ends.
        let _admitted = &admitted;
        match piece {
            StreamPiece::Text(text) => {
                sse_event(&chunk_body(&id, &model, json!({"content": text}), None).to_string())
            }
            StreamPiece::Finished(reason) => {
                let last = chunk_body(&id, &model, json!({}), Some(reason)).to_string();
                Bytes::from([sse_event(&last), sse_event(SSE_DONE)].concat())
            }
            // Headers are out already: report in-band, the way OpenAI streams report errors.
            StreamPiece::Failed(error) => {
                tracing::error!(%error, "streamed completion failed");
                Bytes::from([sse_event(&error.body().to_string()), sse_event(SSE_DONE)].concat())
            }
        }
    });
    Ok(sse_response(
        futures::stream::once(async move { opening }).chain(events),
    ))
}

// ---------------------------------------------------------------------------------------------
// Engine loop

enum EngineJob {
    Complete {
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        reply: oneshot::Sender<Result<GenerationOutput, ServeError>>,
    },
    Stream {
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        pieces: mpsc::UnboundedSender<StreamPiece>,
    },
}

enum StreamPiece {
    Text(String),
    Finished(FinishReason),
    Failed(ServeError),
}

fn same_adapter(left: &Option<Arc<LoraAdapter>>, right: &Option<Arc<LoraAdapter>>) -> bool {
    match (left, right) {
        (None, None) => true,
        (Some(left), Some(right)) => Arc::ptr_eq(left, right),
        _ => false,
    }
}

/// The only place that runs the engine: one call at a time (a batch fills the device), with
/// every queued completion for the same adapter in that call.
async fn run_engine_loop(
    engine: Arc<Engine>,
    mut queue: mpsc::UnboundedReceiver<EngineJob>,
    options: ServeOptions,
) {
    let mut pending: VecDeque<EngineJob> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Some(job) = queue.recv().await else {
                return;
            };
            pending.push_back(job);
            if !options.batch_window.is_zero() {
                tokio::time::sleep(options.batch_window).await;
            }
        }
        while let Ok(job) = queue.try_recv() {
            pending.push_back(job);
        }
        let Some(first) = pending.pop_front() else {
            continue;
        };
        match first {
            EngineJob::Stream {
                adapter,
                request,
                pieces,
            } => run_stream(&engine, adapter, request, pieces).await,
            EngineJob::Complete {
                adapter,
                request,
                reply,
            } => {
                let mut requests = vec![request];
                let mut replies = vec![reply];
                let mut others = VecDeque::with_capacity(pending.len());
                for job in pending.drain(..) {
                    match job {
                        EngineJob::Complete {
                            adapter: other,
                            request,
                            reply,
                        } if requests.len() < options.max_batch
                            && same_adapter(&adapter, &other) =>
                        {
                            requests.push(request);
                            replies.push(reply);
                        }
                        job => others.push_back(job),
                    }
                }
                pending = others;
                run_batch(&engine, adapter, requests, replies).await;
            }
        }
    }
}

async fn run_batch(
    engine: &Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    requests: Vec<GenerationRequest>,
    replies: Vec<oneshot::Sender<Result<GenerationOutput, ServeError>>>,
) {
    let engine = engine.clone();
    let results = tokio::task::spawn_blocking(move || {
        match engine.generate(adapter.as_deref(), &requests) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            // One bad request (a prompt too long) must not fail the others: retry one by one.
            Err(error) if requests.len() > 1 => {
                tracing::warn!(%error, batch = requests.len(), "batch failed, generating one by one");
                requests
                    .iter()
                    .map(|request| {
                        engine
                            .generate(adapter.as_deref(), std::slice::from_ref(request))
                            .map_err(ServeError::engine)
                            .and_then(|mut outputs| {
                                outputs.pop().ok_or_else(|| ServeError::Internal("engine returned no output".to_string()))
                            })
                    })
                    .collect()
            }
            Err(error) => vec![Err(ServeError::engine(error))],
        }
    })
    .await;
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // The client may have gone away; nothing to do then.
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(ServeError::Internal(format!(
                    "generation task failed: {error}"
                ))));
            }
        }
    }
}

async fn run_stream(
    engine: &Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    request: GenerationRequest,
    pieces: mpsc::UnboundedSender<StreamPiece>,
) {
    let engine = engine.clone();
    let sender = pieces.clone();
    let result = tokio::task::spawn_blocking(move || {
        // A failed send means the client hung up: stop generating for it.
        engine.generate_stream(adapter.as_deref(), &request, &mut |text| {
            sender.send(StreamPiece::Text(text.to_string())).is_ok()
        })
    })
    .await;
    let last = match result {
        Ok(Ok(output)) => StreamPiece::Finished(output.finish_reason),
        Ok(Err(error)) => StreamPiece::Failed(ServeError::engine(error)),
        Err(error) => StreamPiece::Failed(ServeError::Internal(format!(
            "generation task failed: {error}"
        ))),
    };
    let _ = pieces.send(last);
}

#[cfg(test)]
mod tests {
    use lift_engine::testing::tiny_engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn parse(body: Value) -> Result<ChatRequest, ServeError> {
        parse_chat_request(body.to_string().as_bytes(), 99)
    }

    #[test]
    fn request_fields_map_to_sampling_params() {
        let request = parse(json!({
            "model": "job-1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            ],
            "max_tokens": 7, "temperature": 0.3, "top_p": 0.9, "stop": "\n", "seed": 5,
            "frequency_penalty": 0, "user": "ignored",
        }))
        .unwrap();
        assert_eq!(request.model, "job-1");
        assert!(!request.stream);
        assert_eq!(request.format, OutputFormat::Text);
        let generation = request.generation;
        assert_eq!(
            generation.messages,
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi there")
            ]
        );
        assert_eq!(generation.prefill, "");
        let params = generation.params;
        assert_eq!((params.max_tokens, params.seed), (7, 5));
        assert_eq!((params.temperature, params.top_p), (0.3, 0.9));
        assert_eq!(params.stop, vec!["\n".to_string()]);
        assert_eq!(params.constraint, None);
    }

    #[test]
    fn defaults_follow_openai() {
        let request = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                                   "stop": ["a", "b"], "max_completion_tokens": 9}),
        )
        .unwrap();
        let params = request.generation.params;
        assert_eq!(
            (params.temperature, params.top_p, params.seed),
            (1.0, 1.0, 99)
        );
        assert_eq!(params.max_tokens, 9);
        assert_eq!(params.stop, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn final_assistant_message_becomes_the_prefill() {
        let request = parse(json!({"messages": [
            {"role": "user", "content": "Sentence: Paris is in France."},
            {"role": "assistant", "content": "Question:"},
        ]}))
        .unwrap();
        assert_eq!(request.generation.messages.len(), 1);
        assert_eq!(request.generation.prefill, "Question:");
    }

    #[test]
    fn qa_pairs_schema_selects_constrained_decoding() {
        let request = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "qa_pairs", "strict": true, "schema": lift_worker_synth::qa_pairs_schema(3)}}}))
        .unwrap();
        assert_eq!(request.format, OutputFormat::QaPairs(3));
        assert_eq!(
            request.generation.params.constraint,
            Some(OutputConstraint::QaJsonList { pairs: 3 })
        );

        // Another schema would not be enforced: refused rather than answered unchecked.
        let other = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}}))
        .unwrap_err();
        assert!(other.to_string().contains("json_schema"), "{other}");
        assert_eq!(other.status(), StatusCode::BAD_REQUEST);

        let object = parse(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})).unwrap();
        assert_eq!(object.format, OutputFormat::Json);
    }

    /// Clients that send the defaults of fields this server lacks (as OpenAI's SDKs may) and
    /// fields it need not act on are answered.
    #[test]
    fn unused_values_of_unserved_fields_are_accepted() {
        let body = json!({"messages": [{"role": "user", "content": "x"}], "logprobs": false,
            "presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
            "logit_bias": {}, "tools": null, "user": "ada", "stream_options": null});
        parse(body).unwrap();
    }

    #[test]
    fn bad_requests_are_rejected_with_a_reason() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!({"messages": user, "n": 2}), "n = 1"),
            (json!({"messages": user, "temperature": 3.0}), "temperature"),
            (json!({"messages": user, "top_p": 0.0}), "top_p"),
            (json!({"messages": user, "max_tokens": 0}), "max_tokens"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "role `tool`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "image_url",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "x"}]}),
                "system or user",
            ),
            (
                json!({"messages": user, "response_format": {"type": "grammar"}}),
                "invalid request body",
            ),
            (json!({"model": "m"}), "invalid request body"),
            (json!({"messages": user, "tools": []}), "`tools`"),
            (json!({"messages": user, "logprobs": true}), "`logprobs`"),
            (
                json!({"messages": user, "presence_penalty": 0.5}),
                "`presence_penalty`",
            ),
            (
                json!({"messages": user, "frequency_penalty": -1}),
                "`frequency_penalty`",
            ),
            (
                json!({"messages": user, "logit_bias": {"50256": -100}}),
                "`logit_bias`",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body.clone()).unwrap_err();
            assert!(
                matches!(error, ServeError::BadRequest(_)),
                "{body}: {error:?}"
            );
            assert!(error.to_string().contains(expected), "{body}: {error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        let not_json = parse_chat_request(b"hello", 0).unwrap_err();
        assert_eq!(not_json.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn sse_events_are_data_lines_ending_with_done() {
        assert_eq!(sse_event("{\"a\":1}"), Bytes::from("data: {\"a\":1}\n\n"));
        assert_eq!(sse_event(SSE_DONE), Bytes::from("data: [DONE]\n\n"));
        let chunk = chunk_body("id-1", "m", json!({"content": "Hi"}), None);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        let last = chunk_body("id-1", "m", json!({}), Some(FinishReason::Length));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn json_is_extracted_from_wrapped_replies() {
        assert_eq!(extract_json(" {\"a\": 1} ").as_deref(), Some("{\"a\": 1}"));
        assert_eq!(
            extract_json("```json\n[1, 2]\n```").as_deref(),
            Some("[1, 2]")
        );
        assert_eq!(
            extract_json("Sure: {\"a\": {\"b\": 2}} done").as_deref(),
            Some("{\"a\": {\"b\": 2}}")
        );
        assert_eq!(extract_json("no json here"), None);
    }

    // --- The server end to end, on the tiny random engine (its text is noise). ---

    struct TestServer {
        addr: SocketAddr,
        shutdown: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl TestServer {
        async fn start() -> Self {
            Self::start_with(Arc::new(tiny_engine(7)), Store::open("memory://").unwrap()).await
        }

        async fn start_with(engine: Arc<Engine>, store: Store) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let adapters = AdapterSource::new(store, 2);
            let (shutdown, stopped) = oneshot::channel::<()>();
            let server = tokio::spawn(serve_on(
                listener,
                engine,
                adapters,
                ServeOptions::default(),
                ServerSecurity::open(),
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                shutdown: Some(shutdown),
                server,
            }
        }

        /// One HTTP/1.1 exchange over a raw socket: status and body (de-chunked).
        async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let body = body.map(|body| body.to_string()).unwrap_or_default();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let chunked = head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked");
            (
                status,
                if chunked {
                    dechunk(body)
                } else {
                    body.to_string()
                },
            )
        }

        async fn stop(mut self) {
            let _ = self.shutdown.take().map(|shutdown| shutdown.send(()));
            self.server.await.unwrap().unwrap();
        }
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        loop {
            let (size, rest) = body.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.push_str(&rest[..size]);
            body = &rest[size + 2..];
        }
    }

    fn user_request(extra: Value) -> Value {
        let mut body = json!({"model": "tiny-random", "max_tokens": 6, "temperature": 0,
                              "messages": [{"role": "user", "content": "Hello"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    }

    #[test]
    fn completions_past_the_admission_bound_get_429() {
        let admission = Admission::new(2);
        let first = admission.admit().unwrap();
        let _second = admission.admit().unwrap();
        let refused = admission.admit().unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.body()["error"]["code"], "rate_limit_exceeded");
        assert!(refused.to_string().contains("2 completions"), "{refused}");
        let response = refused.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // A finished completion makes room.
        drop(first);
        let _third = admission.admit().unwrap();
    }

    #[tokio::test]
    async fn health_and_models_answer() {
        let server = TestServer::start().await;
        let (status, body) = server.request("GET", "/health", None).await;
        assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
        let (status, body) = server.request("GET", "/v1/models", None).await;
        assert_eq!(status, 200);
        let models: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(models["data"][0]["id"], "tiny-random");
        server.stop().await;
    }

    #[tokio::test]
    async fn completion_has_the_openai_shape() {
        let server = TestServer::start().await;
        let (status, body) = server
            .request(
                "POST",
                "/v1/chat/completions",
                Some(user_request(json!({}))),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let completion: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["model"], "tiny-random");
        assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
        assert!(completion["choices"][0]["message"]["content"].is_string());
        assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
        server.stop().await;
    }

    #[tokio::test]
    async fn simultaneous_requests_are_all_answered() {
        let server = Arc::new(TestServer::start().await);
        let calls = (0..5).map(|seed| {
            let server = server.clone();
            async move {
                let body = user_request(json!({"temperature": 0.8, "seed": seed}));
                server
                    .request("POST", "/v1/chat/completions", Some(body))
                    .await
            }
        });
        for (status, body) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{body}");
        }
        let Ok(server) = Arc::try_unwrap(server) else {
            panic!("server still shared");
        };
        server.stop().await;
    }

    #[tokio::test]
    async fn qa_schema_request_returns_the_pairs_shape() {
        let server = TestServer::start().await;
        let format = json!({"type": "json_schema", "json_schema": {
            "name": "qa_pairs", "strict": true, "schema": lift_worker_synth::qa_pairs_schema(2)}});
        let request = user_request(json!({"max_tokens": 400, "response_format": format}));
        let (status, body) = server
            .request("POST", "/v1/chat/completions", Some(request))
            .await;
        assert_eq!(status, 200, "{body}");
        let completion: Value = serde_json::from_str(&body).unwrap();
        let content = completion["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        let pairs: Value =
            serde_json::from_str(content).unwrap_or_else(|error| panic!("{error}: {content}"));
        assert_eq!(pairs["pairs"].as_array().unwrap().len(), 2);
        server.stop().await;
    }

    #[tokio::test]
    async fn streamed_completion_is_sse_ending_with_done() {
        let server = TestServer::start().await;
        let (status, body) = server
            .request(
                "POST",
                "/v1/chat/completions",
                Some(user_request(json!({"stream": true}))),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let events: Vec<&str> = body
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .collect();
        assert!(
            events.iter().all(|event| event.starts_with("data: ")),
            "{body}"
        );
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let first: Value = serde_json::from_str(&events[0]["data: ".len()..]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let last: Value =
            serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).unwrap();
        assert!(last["choices"][0]["finish_reason"].is_string());
        server.stop().await;
    }

    #[tokio::test]
    async fn job_adapter_is_loaded_from_the_store_and_listed() {
        let engine = Arc::new(tiny_engine(7));
        let store = Store::open("memory://").unwrap();
        let job = JobId::new();
        let config = lift_engine::LoraConfig::new(4, 8.0, &[]).unwrap();
        let files = engine
            .new_adapter(config, 1)
            .unwrap()
            .to_peft_files()
            .unwrap();
        store
            .put_create(&layout::adapter_weights(&job), files.safetensors)
            .await
            .unwrap();
        store
            .put_create(&layout::adapter_config(&job), files.config_json)
            .await
            .unwrap();
        let server = TestServer::start_with(engine, store).await;

        let (status, body) = server.request("GET", "/v1/models", None).await;
        assert_eq!(status, 200);
        let models: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(models["data"][1]["id"], job.as_str());
        for _ in 0..2 {
            let request = user_request(json!({"model": job.as_str()}));
            let (status, body) = server
                .request("POST", "/v1/chat/completions", Some(request))
                .await;
            assert_eq!(status, 200, "{body}");
            let completion: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(completion["model"], job.as_str());
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_model_is_404_and_bad_request_is_400() {
        let server = TestServer::start().await;
        let (status, body) = server
            .request(
                "POST",
                "/v1/chat/completions",
                Some(user_request(json!({"model": "no-such-job"}))),
            )
            .await;
        assert_eq!(status, 404);
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "model_not_found");
        let (status, body) = server
            .request(
                "POST",
                "/v1/chat/completions",
                Some(user_request(json!({"model": "Bad Id!"}))),
            )
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = server
            .request(
                "POST",
                "/v1/chat/completions",
                Some(user_request(json!({"temperature": 9}))),
            )
            .await;
        assert_eq!(status, 400);
        assert!(body.contains("temperature"), "{body}");
        server.stop().await;
    }
}
