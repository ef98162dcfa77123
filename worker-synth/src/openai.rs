//! A question writer behind any OpenAI-compatible `/v1/chat/completions` server: vLLM in
//! production, `lift serve` in tests, whatever a user points at otherwise. Servers differ in what
//! `response_format` they accept (ARCHITECTURE.md, "OpenAI-compatible is not uniform"), so the
//! client starts with a strict JSON schema and steps down to `json_object`, then to none,
//! remembering the level that worked; `parse` validates whatever comes back.
//!
//! Over 600 lines: 350 of them are tests against mock servers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::generator::{
    GeneratorError, QaGenerator, QaRequest, RawReply, RestateRequest, RESTATE_TEMPERATURE,
};
use crate::prompt::{json_messages, restate_user};
use lift_shared::error::with_causes;
use lift_shared::protocol::qa_pairs_schema;

#[derive(Clone, PartialEq)]
pub struct OpenAiOptions {
    /// The API base including `/v1` (`http://vllm:8000/v1`), as OpenAI clients take it.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// One HTTP attempt, connect to last byte.
    pub request_timeout: Duration,
    /// Attempts per request, the first included, on connect errors, timeouts, 429 and 5xx.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight from this client at once; vLLM batches what it is sent, so this is
    /// the knob between throughput and the server's queue.
    pub max_in_flight: usize,
    pub max_tokens: u32,
}

impl OpenAiOptions {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            request_timeout: Duration::from_secs(120),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            max_in_flight: 64,
            max_tokens: 1024,
        }
    }
}

/// Written by hand so the API key never reaches a log line.
impl std::fmt::Debug for OpenAiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// The `response_format` a request carries, from most to least constrained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    JsonSchema,
    JsonObject,
    Unconstrained,
}

impl ResponseFormat {
    fn from_level(level: u8) -> Self {
        match level {
            0 => Self::JsonSchema,
            1 => Self::JsonObject,
            _ => Self::Unconstrained,
        }
    }

    fn level(self) -> u8 {
        match self {
            Self::JsonSchema => 0,
            Self::JsonObject => 1,
            Self::Unconstrained => 2,
        }
    }

    fn body(self, pairs_wanted: u32) -> Option<serde_json::Value> {
        match self {
            Self::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": {
                    "name": "qa_pairs",
                    "strict": true,
                    "schema": qa_pairs_schema(pairs_wanted),
                },
            })),
            Self::JsonObject => Some(json!({"type": "json_object"})),
            Self::Unconstrained => None,
        }
    }
}

pub struct OpenAiGenerator {
    http: reqwest::Client,
    endpoint: String,
    config: OpenAiOptions,
    /// A `ResponseFormat` level; only ever lowered, shared by all requests of this client.
    format_level: AtomicU8,
    in_flight: Semaphore,
}

impl OpenAiGenerator {
    pub fn new(config: OpenAiOptions) -> Result<Self, GeneratorError> {
        let endpoint = chat_completions_url(&config.base_url);
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|error| GeneratorError::Unreachable {
                url: endpoint.clone(),
                reason: format!("failed to build http client: {error}"),
            })?;
        Ok(Self {
            http,
            endpoint,
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            format_level: AtomicU8::new(ResponseFormat::JsonSchema.level()),
            config,
        })
    }

    /// The `response_format` the next request will use.
    pub fn response_format(&self) -> ResponseFormat {
        ResponseFormat::from_level(self.format_level.load(Ordering::Relaxed))
    }

    /// Steps down from `rejected`; a concurrent request may have stepped down already.
    fn step_down_from(&self, rejected: ResponseFormat) {
        let next = rejected.level() + 1;
        let previous = self.format_level.fetch_max(next, Ordering::Relaxed);
        if previous < next {
            tracing::warn!(
                url = %self.endpoint,
                rejected = ?rejected,
                now = ?ResponseFormat::from_level(next),
                "generator rejected response_format, falling back"
            );
        }
    }

    fn request_body(
        &self,
        request: &QaRequest,
        messages: &serde_json::Value,
        format: ResponseFormat,
    ) -> serde_json::Value {
        let mut body = json!({
            "model": request.model.as_deref().unwrap_or(&self.config.model),
            "messages": messages,
            "temperature": request.temperature,
            "seed": request.seed,
            "max_tokens": reply_token_bound(request.pairs_wanted, self.config.max_tokens),
            "n": 1,
        });
        if let Some(response_format) = format.body(request.pairs_wanted.max(1)) {
            body["response_format"] = response_format;
        }
        body
    }

    async fn attempt(
        &self,
        body: &serde_json::Value,
        format: ResponseFormat,
    ) -> Result<String, AttemptError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| AttemptError::Final(self.unreachable("client is shutting down")))?;
        let mut builder = self.http.post(&self.endpoint).json(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = builder
            .send()
            .await
            .map_err(|error| self.transport_error(&error))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let text = response
            .text()
            .await
            .map_err(|error| self.transport_error(&error))?;
        if status.is_success() {
            return completion_content(&text).map_err(AttemptError::Final);
        }
        let code = status.as_u16();
        if may_refuse_a_format(code)
            && format != ResponseFormat::Unconstrained
            && mentions_response_format(&text)
        {
            return Err(AttemptError::FormatRejected);
        }
        let error = GeneratorError::BadStatus {
            code,
            body: truncate(&text, 500),
        };
        if error.is_transient() {
            Err(AttemptError::Retry { error, retry_after })
        } else {
            Err(AttemptError::Final(error))
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> AttemptError {
        let error = if error.is_connect() {
            self.unreachable(&with_causes(error))
        } else if error.is_timeout() {
            GeneratorError::Timeout {
                seconds: self.config.request_timeout.as_secs(),
            }
        } else {
            // A connection reset or a body cut short: the server went away mid-request.
            self.unreachable(&with_causes(error))
        };
        AttemptError::Retry {
            error,
            retry_after: None,
        }
    }

    fn unreachable(&self, reason: &str) -> GeneratorError {
        GeneratorError::Unreachable {
            url: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    /// Exponential backoff with equal jitter, so workers that failed together do not retry in
    /// lockstep; a server's `Retry-After` is honoured when longer (capped at a minute).
    fn backoff(&self, failed_attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self
            .config
            .initial_backoff
            .saturating_mul(1u32 << failed_attempts.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let half = exponential / 2;
        let jittered = half + half.mul_f64(rand::rng().random::<f64>());
        retry_after
            .map(|wait| wait.min(Duration::from_secs(60)))
            .map_or(jittered, |wait| wait.max(jittered))
    }
}

enum AttemptError {
    Retry {
        error: GeneratorError,
        retry_after: Option<Duration>,
    },
    /// The server refused the current `response_format`; try the next one.
    FormatRejected,
    Final(GeneratorError),
}

#[async_trait]
impl QaGenerator for OpenAiGenerator {
    async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
        let (system, user) = json_messages(request)?;
        let messages = json!([
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]);
        let text = self
            .complete(|format| (self.request_body(request, &messages, format), format))
            .await?;
        Ok(vec![RawReply { text }])
    }

    /// One plain-text completion per wanted rewording, at a temperature that gives variety.
    async fn restate(&self, request: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
        let messages = json!([{"role": "user", "content": restate_user(&request.sentence)?}]);
        let completions = (0..u64::from(request.samples)).map(|sample| {
            let body = json!({
                "model": request.model.as_deref().unwrap_or(&self.config.model),
                "messages": messages,
                "temperature": RESTATE_TEMPERATURE,
                "seed": request.seed.wrapping_add(sample),
                "max_tokens": self.config.max_tokens,
                "n": 1,
            });
            async move {
                self.complete(|_| (body.clone(), ResponseFormat::Unconstrained))
                    .await
                    .map(|text| RawReply { text })
            }
        });
        futures::future::join_all(completions)
            .await
            .into_iter()
            .collect()
    }
}

impl OpenAiGenerator {
    /// One completion, retried with backoff while the failure is transient; `body` builds the
    /// request for a `response_format` and says which one it used, so a rejected format
    /// steps down and the request goes again.
    async fn complete(
        &self,
        body: impl Fn(ResponseFormat) -> (serde_json::Value, ResponseFormat),
    ) -> Result<String, GeneratorError> {
        let mut failed_attempts = 0;
        loop {
            let (body, format) = body(self.response_format());
            match self.attempt(&body, format).await {
                Ok(text) => return Ok(text),
                // Bounded: there are only two levels to step down through.
                Err(AttemptError::FormatRejected) => self.step_down_from(format),
                Err(AttemptError::Final(error)) => return Err(error),
                Err(AttemptError::Retry { error, retry_after }) => {
                    failed_attempts += 1;
                    if failed_attempts >= self.config.max_attempts {
                        return Err(error);
                    }
                    let wait = self.backoff(failed_attempts, retry_after);
                    tracing::warn!(
                        url = %self.endpoint,
                        attempt = failed_attempts,
                        wait_ms = wait.as_millis() as u64,
                        %error,
                        "generator request failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Tokens a reply of `pairs` question/answer pairs needs, with room to spare, at most
/// `configured`. Without a schema a weak model may write on to the limit (1,023 tokens seen
/// behind llama.cpp), and every extra token is decoding time for nothing usable.
fn reply_token_bound(pairs: u32, configured: u32) -> u32 {
    const TOKENS_PER_PAIR: u32 = 160;
    const ENVELOPE: u32 = 64;
    (ENVELOPE + TOKENS_PER_PAIR * pairs.max(1)).min(configured)
}

fn chat_completions_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if base.ends_with("/chat/completions") {
        base.to_string()
    } else {
        format!("{base}/chat/completions")
    }
}

#[derive(Deserialize)]
struct ChatCompletion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

fn completion_content(body: &str) -> Result<String, GeneratorError> {
    let completion: ChatCompletion = serde_json::from_str(body).map_err(|error| {
        GeneratorError::InvalidOutput(format!(
            "response is not a chat completion ({error}): {}",
            truncate(body, 200)
        ))
    })?;
    completion
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content)
        .ok_or_else(|| GeneratorError::InvalidOutput("completion has no message content".into()))
}

/// Statuses a server refuses a `response_format` with: 400 and 422 (vLLM, OpenAI), and 500
/// from servers that validate the request late (llama-cpp-python's server answers 500 with a
/// validation error naming `response_format`). Auth, not-found and rate limits never are.
fn may_refuse_a_format(code: u16) -> bool {
    code == 500 || ((400..500).contains(&code) && !matches!(code, 401 | 403 | 404 | 408 | 429))
}

/// Whether an error body is about `response_format` (and not, say, a prompt that is too long, which
/// a weaker format would not fix).
fn mentions_response_format(body: &str) -> bool {
    let lower = body.to_lowercase();
    [
        "response_format",
        "json_schema",
        "json_object",
        "schema",
        "structured",
        "guided",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::Value;

    use super::*;

    /// How the test server answers its `index`-th request (0-based): status and body.
    type Behaviour = Arc<dyn Fn(usize, &Value) -> (u16, String) + Send + Sync>;
    type Seen = Arc<Mutex<Vec<Value>>>;

    async fn start_server(
        behaviour: impl Fn(usize, &Value) -> (u16, String) + Send + Sync + 'static,
    ) -> (String, Seen) {
        let behaviour: Behaviour = Arc::new(behaviour);
        async fn handle(
            State((behaviour, seen)): State<(Behaviour, Seen)>,
            Json(body): Json<Value>,
        ) -> (StatusCode, String) {
            let index = {
                let mut seen = seen.lock().unwrap();
                seen.push(body.clone());
                seen.len() - 1
            };
            let (code, text) = behaviour(index, &body);
            (StatusCode::from_u16(code).unwrap(), text)
        }
        let seen = Seen::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state((behaviour, seen.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1/"), seen)
    }

    fn completion(content: &str) -> (u16, String) {
        let body = json!({
            "id": "cmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        });
        (200, body.to_string())
    }

    const PAIRS: &str = r#"{"pairs": [{"question": "When?", "answer": "1889"}]}"#;

    fn format_type(body: &Value) -> Option<&str> {
        body.get("response_format")?.get("type")?.as_str()
    }

    fn fast_config(base_url: String) -> OpenAiOptions {
        OpenAiOptions {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            request_timeout: Duration::from_secs(5),
            ..OpenAiOptions::new(base_url, "test-model")
        }
    }

    fn request() -> QaRequest {
        QaRequest {
            title: "Eiffel Tower".to_string(),
            sentence: "It was completed in 1889.".to_string(),
            left_context: String::new(),
            pairs_wanted: 2,
            temperature: 0.5,
            seed: 7,
            model: None,
            answer: None,
        }
    }

    fn texts(replies: Vec<RawReply>) -> Vec<String> {
        replies.into_iter().map(|reply| reply.text).collect()
    }

    #[tokio::test]
    async fn json_schema_server_gets_the_strict_schema() {
        let (url, seen) = start_server(|_, _| completion(PAIRS)).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let replies = generator.generate(&request()).await.unwrap();
        assert_eq!(texts(replies), vec![PAIRS.to_string()]);

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        let body = &seen[0];
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["seed"], 7);
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("It was completed in 1889."));
        assert_eq!(format_type(body), Some("json_schema"));
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(
            body["response_format"]["json_schema"]["schema"],
            qa_pairs_schema(2)
        );
        assert_eq!(generator.response_format(), ResponseFormat::JsonSchema);
    }

    #[tokio::test]
    async fn replies_are_bounded_by_the_pairs_wanted_and_the_configured_limit() {
        let (url, seen) = start_server(|_, _| completion(PAIRS)).await;
        let generator = OpenAiGenerator::new(OpenAiOptions {
            max_tokens: 500,
            ..fast_config(url)
        })
        .unwrap();
        let mut one_pair = request();
        one_pair.pairs_wanted = 1;
        generator.generate(&one_pair).await.unwrap();
        let mut many_pairs = request();
        many_pairs.pairs_wanted = 8;
        generator.generate(&many_pairs).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0]["max_tokens"], 224);
        assert_eq!(seen[1]["max_tokens"], 500);
    }

    #[tokio::test]
    async fn request_model_overrides_the_configured_one() {
        let (url, seen) = start_server(|_, _| completion(PAIRS)).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let mut with_model = request();
        with_model.model = Some("other-model".to_string());
        generator.generate(&with_model).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0]["model"], "other-model");
    }

    #[tokio::test]
    async fn rewordings_are_plain_completions_one_per_sample() {
        let (url, seen) = start_server(|index, _| completion(&format!("Reworded {index}."))).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let request = RestateRequest {
            sentence: "The tower was completed in 1889.".to_string(),
            samples: 2,
            seed: 7,
            model: None,
        };
        let mut replies = texts(generator.restate(&request).await.unwrap());
        replies.sort();
        assert_eq!(replies, ["Reworded 0.", "Reworded 1."]);
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|body| format_type(body).is_none()));
        let mut seeds: Vec<u64> = seen
            .iter()
            .map(|body| body["seed"].as_u64().unwrap())
            .collect();
        seeds.sort();
        assert_eq!(seeds, [7, 8]);
        assert!(seen[0]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .ends_with("The tower was completed in 1889."));
    }

    /// A refusal of the strict schema steps down to `json_object` once and is remembered:
    /// as a 400 (OpenAI, vLLM) or as a 500 naming `response_format` (llama-cpp-python's
    /// server, 0.3.16, with its exact body), which must not be retried as it is.
    #[tokio::test]
    async fn json_schema_rejected_falls_back_to_json_object_and_remembers() {
        let refusals = [
            (
                400,
                r#"{"error": {"message": "response_format type must be \"json_object\""}}"#,
            ),
            (
                500,
                r#"{"detail":[{"type":"literal_error","loc":["body","response_format","type"],"msg":"Input should be 'text' or 'json_object'","input":"json_schema"}]}"#,
            ),
        ];
        for (status, refusal) in refusals {
            let (url, seen) = start_server(move |_, body| match format_type(body) {
                Some("json_schema") => (status, refusal.to_string()),
                _ => completion(PAIRS),
            })
            .await;
            let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
            generator.generate(&request()).await.unwrap();
            generator.generate(&request()).await.unwrap();
            assert_eq!(generator.response_format(), ResponseFormat::JsonObject);
            let formats: Vec<_> = seen
                .lock()
                .unwrap()
                .iter()
                .map(|body| format_type(body).map(str::to_string))
                .collect();
            assert_eq!(
                formats,
                vec![
                    Some("json_schema".to_string()),
                    Some("json_object".to_string()),
                    Some("json_object".to_string()),
                ],
                "refused with {status}"
            );
        }
    }

    #[tokio::test]
    async fn server_without_response_format_gets_none() {
        let (url, seen) = start_server(|_, body| match body.get("response_format") {
            Some(_) => (400, "unsupported schema".to_string()),
            None => completion("Question: When?\nAnswer: 1889"),
        })
        .await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let replies = generator.generate(&request()).await.unwrap();
        assert_eq!(
            texts(replies),
            vec!["Question: When?\nAnswer: 1889".to_string()]
        );
        assert_eq!(generator.response_format(), ResponseFormat::Unconstrained);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn bad_request_not_about_the_format_is_final() {
        let (url, seen) = start_server(|_, _| (400, "prompt is too long".to_string())).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let error = generator.generate(&request()).await.unwrap_err();
        assert!(
            matches!(error, GeneratorError::BadStatus { code: 400, ref body } if body == "prompt is too long"),
            "{error:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(generator.response_format(), ResponseFormat::JsonSchema);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_success() {
        let (url, seen) = start_server(|index, _| match index {
            0 | 1 => (500, "overloaded".to_string()),
            _ => completion(PAIRS),
        })
        .await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let replies = generator.generate(&request()).await.unwrap();
        assert_eq!(texts(replies), vec![PAIRS.to_string()]);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn persistent_server_errors_give_bad_status_after_bounded_attempts() {
        let (url, seen) = start_server(|_, _| (429, "slow down".to_string())).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let error = generator.generate(&request()).await.unwrap_err();
        assert!(
            matches!(error, GeneratorError::BadStatus { code: 429, .. }),
            "{error:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable_after_retries() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let generator = OpenAiGenerator::new(fast_config(format!("http://{addr}/v1"))).unwrap();
        let started = std::time::Instant::now();
        let error = generator.generate(&request()).await.unwrap_err();
        assert!(
            matches!(error, GeneratorError::Unreachable { .. }),
            "{error:?}"
        );
        assert!(error.is_transient());
        // Two backoffs of at least half of 10 ms and 20 ms: it did wait between attempts.
        assert!(started.elapsed() >= Duration::from_millis(15));
    }

    #[tokio::test]
    async fn non_json_response_is_invalid_output_without_retry() {
        let (url, seen) =
            start_server(|_, _| (200, "<html>gateway says hi</html>".to_string())).await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let error = generator.generate(&request()).await.unwrap_err();
        assert!(
            matches!(error, GeneratorError::InvalidOutput(_)),
            "{error:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn null_content_is_invalid_output() {
        let (url, _) = start_server(|_, _| {
            (
                200,
                json!({"choices": [{"message": {"content": null}}]}).to_string(),
            )
        })
        .await;
        let generator = OpenAiGenerator::new(fast_config(url)).unwrap();
        let error = generator.generate(&request()).await.unwrap_err();
        assert!(
            matches!(error, GeneratorError::InvalidOutput(_)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn in_flight_requests_are_bounded() {
        use std::sync::atomic::AtomicUsize;
        static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        async fn slow(Json(_): Json<Value>) -> (StatusCode, String) {
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            (StatusCode::OK, completion(PAIRS).1)
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/v1/chat/completions", post(slow));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let config = OpenAiOptions {
            max_in_flight: 2,
            ..fast_config(format!("http://{addr}/v1"))
        };
        let generator = Arc::new(OpenAiGenerator::new(config).unwrap());
        let request = request();
        let calls = (0..6).map(|_| generator.generate(&request));
        for result in futures::future::join_all(calls).await {
            result.unwrap();
        }
        assert_eq!(PEAK.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn endpoint_accepts_base_or_full_url() {
        assert_eq!(
            chat_completions_url("http://h:8000/v1/"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            chat_completions_url("http://h:8000/v1/chat/completions"),
            "http://h:8000/v1/chat/completions"
        );
    }
}
