//! What `lift serve` runs (`cli/src/serve.rs` parses its options): an OpenAI-compatible HTTP
//! server on the built-in engine, the way vLLM's is used: `/v1/chat/completions`,
//! `/v1/completions` (text in, text out, no chat template),
//! `/v1/models`, `/metrics` (Prometheus) and `/health`. `model` set to a job id answers with
//! that job's adapter (loaded from the store, a few kept in memory), set to a name given with
//! `--lora-modules name=DIR` with that directory's PEFT adapter; the base model id (or an empty
//! model) answers without one. It is also the generator that the synth worker's HTTP client is
//! tested against, so `response_format` with the QA pairs schema maps to the engine's
//! constrained QA decoding.
//!
//! The flow of a request: `requests` validates the body, `adapters` finds the adapter, the
//! request waits in the engine's batcher (`generation`, which batches requests for the same
//! adapter), and `responses` shapes the reply; `error` is what a client sees when one of these
//! refuses.
//!
//! With tokens configured (`LIFT_AUTH_TOKENS_FILE`, `LIFT_AUTH_TOKENS`) every request but
//! `/health` and `/metrics` needs `Authorization: Bearer <token>` (401 without), and a job's
//! adapter answers only its own tenant (403 otherwise); with a certificate (`LIFT_TLS_CERT`) it
//! serves HTTPS.
//!
//! Over 600 lines: 435 of them are tests of the HTTP API.

mod adapters;
mod error;
mod generation;
mod https;
mod requests;
mod responses;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lift_engine::{Batcher, BatcherOptions, Engine, GenerationRequest, LoraAdapter};
use lift_shared::auth::{ServerSecurity, Tenant, TokenTable};
use lift_shared::error::LiftError;
use lift_shared::metrics;
use serde_json::{json, Value};

pub use adapters::{load_lora_modules, AdapterSource, LoraModule};
use error::ServeError;
use generation::StreamPiece;
use requests::{extract_json, parse_chat_request, parse_text_request, OutputFormat};
use responses::{sse_event, sse_response, Api, Reply, SSE_DONE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Completions generated together in one engine call, and how long an idle engine waits
    /// for more to join.
    pub batching: BatcherOptions,
    /// Completions admitted at once (each holds its request and reply in memory until done).
    pub max_admitted: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            batching: BatcherOptions {
                max_rows: 32,
                window: Duration::from_millis(2),
            },
            max_admitted: 256,
        }
    }
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
    metrics::init();
    let batcher = Batcher::spawn(engine.clone(), options.batching);
    let state = Arc::new(ServerState {
        engine,
        adapters,
        admission: Admission::new(options.max_admitted),
        batcher,
        tokens: security.tokens.clone(),
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(text_completions))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    match &security.tls {
        Some(tls) => crate::https::serve_tls(listener, app, tls.rustls()?, shutdown).await?,
        None => axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("http server failed")?,
    }
    // The router, and with it the batcher's last handle, is gone: its thread ends once the
    // completions in flight are done.
    Ok(())
}

struct ServerState {
    engine: Arc<Engine>,
    adapters: AdapterSource,
    admission: Admission,
    batcher: Batcher,
    tokens: Option<Arc<TokenTable>>,
}

/// A bound on the completions in the server at once: the engine queue is unbounded, so
/// without it a burst of clients would grow memory without limit.
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

/// An admitted completion, held until its reply is sent (a stream's last event): it frees
/// its place on drop and records how long it took.
#[derive(Debug)]
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    api: Api,
    since: Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::SERVE_REQUESTS_RUNNING.dec();
        metrics::SERVE_REQUEST_SECONDS
            .with_label_values(&[api_label(self.api)])
            .observe(self.since.elapsed().as_secs_f64());
    }
}

fn api_label(api: Api) -> &'static str {
    match api {
        Api::Chat => "chat",
        Api::Text => "text",
    }
}

impl Admission {
    fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }

    /// A place held until the completion's reply is sent, or 429 when all are taken.
    fn admit(&self, api: Api) -> Result<Admitted, ServeError> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServeError::Overloaded(self.limit))?;
        metrics::SERVE_REQUESTS_RUNNING.inc();
        Ok(Admitted {
            _permit: permit,
            api,
            since: Instant::now(),
        })
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
// Handlers

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

async fn list_models(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServeError> {
    let tenant = state.caller(&headers)?;
    let base = state.engine.model_id().to_string();
    let mut data = vec![json!({"id": base, "object": "model", "created": 0, "owned_by": "lift"})];
    let jobs = state.adapters.jobs_with_adapters(&tenant).await?;
    let names = state.adapters.names().into_iter();
    for id in names.chain(jobs.iter().map(|job| job.as_str())) {
        data.push(json!({
            "id": id, "object": "model", "created": 0, "owned_by": "lift", "parent": base,
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Counts the reply by API and status: what `/metrics` shows of the completions.
fn counted(api: Api, reply: Result<Response, ServeError>) -> Response {
    let response = reply.unwrap_or_else(IntoResponse::into_response);
    metrics::SERVE_REQUESTS
        .with_label_values(&[api_label(api), response.status().as_str()])
        .inc();
    response
}

async fn chat_completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    counted(Api::Chat, chat_completion(&state, &headers, &body).await)
}

async fn text_completions(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    counted(Api::Text, text_completion(&state, &headers, &body).await)
}

/// Requests without a seed still differ from each other, as OpenAI's do.
fn fresh_seed() -> u64 {
    uuid::Uuid::now_v7().as_u64_pair().1
}

async fn chat_completion(
    state: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ServeError> {
    let (tenant, admitted) = state.admit(headers, Api::Chat)?;
    let request = parse_chat_request(body, fresh_seed())?;
    let (adapter, reply) = state.reply_for(&tenant, Api::Chat, &request.model).await?;
    if request.stream && request.format != OutputFormat::Json {
        return Ok(state.stream(adapter, request.generation, reply, String::new(), admitted));
    }
    let output = state.complete(adapter, request.generation).await?;
    let content = match request.format {
        OutputFormat::Json => extract_json(&output.text).ok_or_else(|| {
            ServeError::Internal("the model's reply is not valid JSON".to_string())
        })?,
        OutputFormat::Text | OutputFormat::QaPairs(_) => output.text.clone(),
    };
    if request.stream {
        return Ok(reply.whole_as_stream(&content, &output));
    }
    Ok(Json(reply.body(&content, &output)).into_response())
}

async fn text_completion(
    state: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ServeError> {
    let (tenant, admitted) = state.admit(headers, Api::Text)?;
    let request = parse_text_request(body, fresh_seed())?;
    let (adapter, reply) = state.reply_for(&tenant, Api::Text, &request.model).await?;
    let echo = request.echo.unwrap_or_default();
    if request.stream {
        return Ok(state.stream(adapter, request.generation, reply, echo, admitted));
    }
    let output = state.complete(adapter, request.generation).await?;
    let text = format!("{echo}{}", output.text);
    Ok(Json(reply.body(&text, &output)).into_response())
}

impl ServerState {
    /// What every completion takes first: who asks, and a place in the server.
    fn admit(&self, headers: &HeaderMap, api: Api) -> Result<(Tenant, Admitted), ServeError> {
        let tenant = self.caller(headers)?;
        Ok((tenant, self.admission.admit(api)?))
    }

    /// The adapter a request's `model` names (none for the base model or an empty name), and
    /// the reply, which carries the model's name.
    async fn reply_for(
        &self,
        tenant: &Tenant,
        api: Api,
        model: &str,
    ) -> Result<(Option<Arc<LoraAdapter>>, Reply), ServeError> {
        let base = self.engine.model_id();
        if model.is_empty() || model == base {
            return Ok((None, Reply::new(api, base.to_string())));
        }
        let adapter = self.adapters.resolve(&self.engine, tenant, model).await?;
        Ok((Some(adapter), Reply::new(api, model.to_string())))
    }

    async fn complete(
        &self,
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
    ) -> Result<lift_engine::GenerationOutput, ServeError> {
        generation::complete(&self.batcher, adapter, request).await
    }

    /// A reply streamed as it is generated, opening with `first_text` (a text completion's
    /// echoed prompt).
    fn stream(
        &self,
        adapter: Option<Arc<LoraAdapter>>,
        request: GenerationRequest,
        reply: Reply,
        first_text: String,
        admitted: Admitted,
    ) -> Response {
        use futures::StreamExt;
        let receiver = generation::stream(&self.batcher, adapter, request);
        let opening = sse_event(&reply.opening(&first_text).to_string());
        let events =
            tokio_stream::wrappers::UnboundedReceiverStream::new(receiver).map(move |piece| {
                // Held while the stream lives: the completion stays admitted until it ends.
                let _admitted = &admitted;
                match piece {
                    StreamPiece::Text(text) => {
                        sse_event(&reply.chunk(Some(&text), None).to_string())
                    }
                    StreamPiece::Finished(reason) => {
                        let last = reply.chunk(None, Some(reason)).to_string();
                        Bytes::from([sse_event(&last), sse_event(SSE_DONE)].concat())
                    }
                    // Headers are out already: report in-band, the way OpenAI streams report
                    // errors.
                    StreamPiece::Failed(error) => {
                        tracing::error!(%error, "streamed completion failed");
                        Bytes::from(
                            [sse_event(&error.body().to_string()), sse_event(SSE_DONE)].concat(),
                        )
                    }
                }
            });
        sse_response(futures::stream::once(async move { opening }).chain(events))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use lift_engine::testing::tiny_engine;
    use lift_shared::ids::JobId;
    use lift_store::{layout, Store};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;

    // --- The server end to end, on the tiny random engine (its text is noise). ---

    struct TestServer {
        addr: SocketAddr,
        shutdown: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl TestServer {
        async fn start() -> Self {
            Self::start_with(
                Arc::new(tiny_engine(7)),
                Store::open("memory://", None).unwrap(),
            )
            .await
        }

        async fn start_with(engine: Arc<Engine>, store: Store) -> Self {
            Self::start_with_adapters(engine, AdapterSource::new(store, 2)).await
        }

        async fn start_with_adapters(engine: Arc<Engine>, adapters: AdapterSource) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
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
        /// A chat completion request: status and body.
        async fn chat(&self, body: Value) -> (u16, String) {
            self.request("POST", "/v1/chat/completions", Some(body))
                .await
        }

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
        let first = admission.admit(Api::Chat).unwrap();
        let _second = admission.admit(Api::Chat).unwrap();
        let refused = admission.admit(Api::Chat).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.body()["error"]["code"], "rate_limit_exceeded");
        assert!(refused.to_string().contains("2 completions"), "{refused}");
        let response = refused.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // A finished completion makes room.
        drop(first);
        let _third = admission.admit(Api::Chat).unwrap();
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
        let (status, body) = server.chat(user_request(json!({}))).await;
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
                server.chat(body).await
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
            "name": "qa_pairs", "strict": true, "schema": lift_shared::protocol::qa_pairs_schema(2)}});
        let request = user_request(json!({"max_tokens": 400, "response_format": format}));
        let (status, body) = server.chat(request).await;
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
        let (status, body) = server.chat(user_request(json!({"stream": true}))).await;
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
        let store = Store::open("memory://", None).unwrap();
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
            let (status, body) = server.chat(request).await;
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
            .chat(user_request(json!({"model": "no-such-job"})))
            .await;
        assert_eq!(status, 404);
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "model_not_found");
        let (status, body) = server.chat(user_request(json!({"model": "Bad Id!"}))).await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = server.chat(user_request(json!({"temperature": 9}))).await;
        assert_eq!(status, 400);
        assert!(body.contains("temperature"), "{body}");
        server.stop().await;
    }

    fn sse_data(body: &str) -> Vec<Value> {
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"), "{body}");
        events[..events.len() - 1]
            .iter()
            .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn text_completion_continues_the_prompt_as_it_is() {
        let server = TestServer::start().await;
        let request = json!({"model": "tiny-random", "prompt": "Once upon", "max_tokens": 4,
                             "temperature": 0});
        let (status, body) = server
            .request("POST", "/v1/completions", Some(request.clone()))
            .await;
        assert_eq!(status, 200, "{body}");
        let completion: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(completion["object"], "text_completion");
        let text = completion["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string();
        // The byte-level tiny tokenizer: one token per byte, no chat template around it.
        assert_eq!(completion["usage"]["prompt_tokens"], "Once upon".len());
        assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() <= 4);

        let mut echoed = request.clone();
        echoed["echo"] = json!(true);
        let (status, body) = server
            .request("POST", "/v1/completions", Some(echoed))
            .await;
        assert_eq!(status, 200, "{body}");
        let completion: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(completion["choices"][0]["text"], format!("Once upon{text}"));

        let mut streamed = request;
        streamed["stream"] = json!(true);
        let (status, body) = server
            .request("POST", "/v1/completions", Some(streamed))
            .await;
        assert_eq!(status, 200, "{body}");
        let chunks = sse_data(&body);
        assert!(
            chunks.iter().all(|c| c["object"] == "text_completion"),
            "{body}"
        );
        let joined: String = chunks
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            joined, text,
            "greedy: the stream says what the whole reply said"
        );
        assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

        let (status, body) = server
            .request(
                "POST",
                "/v1/completions",
                Some(json!({"prompt": "a", "suffix": "b"})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("`suffix`"), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_count_completions_by_api_and_status() {
        let server = TestServer::start().await;
        let before = server.request("GET", "/metrics", None).await.1;
        let count = |text: &str, api: &str, status: &str| -> u64 {
            let prefix = format!("lift_serve_requests_total{{api=\"{api}\",status=\"{status}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |value| value.parse().unwrap())
        };
        server.chat(user_request(json!({}))).await;
        server
            .request(
                "POST",
                "/v1/completions",
                Some(json!({"prompt": "x", "n": 3})),
            )
            .await;
        let (status, after) = server.request("GET", "/metrics", None).await;
        assert_eq!(status, 200);
        // The counters are the process's: tests running beside this one add to them too.
        assert!(count(&after, "chat", "200") > count(&before, "chat", "200"));
        assert!(count(&after, "text", "400") > count(&before, "text", "400"));
        for name in [
            "lift_serve_request_seconds",
            "lift_serve_requests_running",
            "lift_serve_generation_tokens_total",
        ] {
            assert!(
                after.contains(&format!("# TYPE {name} ")),
                "{name}:\n{after}"
            );
        }
        server.stop().await;
    }

    #[test]
    fn lora_module_arguments_are_name_equals_dir() {
        let module: LoraModule = "kestrel=/data/adapters/kestrel".parse().unwrap();
        assert_eq!(module.name, "kestrel");
        assert_eq!(
            module.dir,
            std::path::PathBuf::from("/data/adapters/kestrel")
        );
        for bad in ["kestrel", "=dir", "a b=dir", "name="] {
            assert!(bad.parse::<LoraModule>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn lora_modules_are_served_by_name_and_checked_at_start() {
        let engine = Arc::new(tiny_engine(7));
        let config = lift_engine::LoraConfig::new(4, 8.0, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let adapter_dir = dir.path().join("kestrel");
        engine
            .new_adapter(config, 1)
            .unwrap()
            .save_peft(&adapter_dir)
            .unwrap();
        let module = |spec: &str| spec.parse::<LoraModule>().unwrap();

        // A wrong directory, a taken name and a name given twice fail the start.
        let missing = module(&format!("x={}", dir.path().join("none").display()));
        let error = adapters::load_lora_modules(&engine, &[missing]).unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot read a PEFT adapter"),
            "{error:#}"
        );
        let base = module(&format!("tiny-random={}", adapter_dir.display()));
        assert!(adapters::load_lora_modules(&engine, &[base]).is_err());
        let kestrel = module(&format!("kestrel={}", adapter_dir.display()));
        let twice = adapters::load_lora_modules(&engine, &[kestrel.clone(), kestrel.clone()]);
        assert!(format!("{:#}", twice.unwrap_err()).contains("twice"));

        let named = adapters::load_lora_modules(&engine, &[kestrel]).unwrap();
        let adapters =
            AdapterSource::new(Store::open("memory://", None).unwrap(), 2).with_named(named);
        let server = TestServer::start_with_adapters(engine, adapters).await;
        let (_, body) = server.request("GET", "/v1/models", None).await;
        let models: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(models["data"][1]["id"], "kestrel");
        assert_eq!(models["data"][1]["parent"], "tiny-random");
        let (status, body) = server.chat(user_request(json!({"model": "kestrel"}))).await;
        assert_eq!(status, 200, "{body}");
        let completion: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(completion["model"], "kestrel");
        let (status, _) = server
            .request(
                "POST",
                "/v1/completions",
                Some(json!({"model": "kestrel", "prompt": "Hi"})),
            )
            .await;
        assert_eq!(status, 200);
        server.stop().await;
    }
}
