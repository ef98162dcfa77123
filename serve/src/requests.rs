//! The two OpenAI request bodies the server takes, `/v1/chat/completions` and the older text
//! `/v1/completions`, validated into engine requests. Every field is either served or refused
//! with a 400 that names it: nothing a client asks for is silently ignored.
//!
//! Over 600 lines: 230 of them are tests of what is accepted and refused.

use lift_engine::{ChatMessage, GenerationRequest, OutputConstraint, SamplingParams};
use serde::Deserialize;
use serde_json::Value;

use super::error::ServeError;

/// The sampling fields both APIs share.
#[derive(Debug, Deserialize)]
struct SamplingBody {
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<StopBody>,
    seed: Option<u64>,
    n: Option<u32>,
    /// vLLM's extension (HF's meaning: > 1 discourages tokens already generated).
    repetition_penalty: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionBody {
    #[serde(default)]
    model: String,
    messages: Vec<MessageBody>,
    /// The newer name of `max_tokens`.
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    response_format: Option<ResponseFormatBody>,
    // serde fills flattened fields in order, each taking the keys it knows: `other` gets only
    // what `sampling` left, so it must stay last.
    #[serde(flatten)]
    sampling: SamplingBody,
    /// Every other field, checked against [`UNSERVED_FIELDS`].
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct TextCompletionBody {
    #[serde(default)]
    model: String,
    prompt: PromptBody,
    #[serde(default)]
    stream: bool,
    /// Whether the reply repeats the prompt before the completion.
    #[serde(default)]
    echo: bool,
    #[serde(flatten)]
    sampling: SamplingBody,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptBody {
    Text(String),
    Texts(Vec<String>),
    /// Token ids, one list or several: refused with a sentence.
    Tokens(Vec<serde::de::IgnoredAny>),
}

/// Fields of OpenAI's APIs this server does not implement. A request that uses one gets a 400
/// naming it rather than an answer that silently ignored it.
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
    "best_of",
    "suffix",
];

/// The first field of `other` this server would have to ignore to answer. A field sent with
/// its neutral value (as OpenAI's SDKs may send) asks for nothing and passes.
fn unserved_field(other: &serde_json::Map<String, Value>) -> Option<&'static str> {
    let neutral = |name: &str, value: &Value| {
        value.is_null()
            || match name {
                "logprobs" => value.as_bool() == Some(false),
                "presence_penalty" | "frequency_penalty" => value.as_f64() == Some(0.0),
                "best_of" => value.as_f64() == Some(1.0),
                "logit_bias" => value.as_object().is_some_and(|bias| bias.is_empty()),
                "suffix" => value.as_str() == Some(""),
                _ => false,
            }
    };
    UNSERVED_FIELDS
        .into_iter()
        .find(|name| other.get(*name).is_some_and(|value| !neutral(name, value)))
}

fn refuse_unserved(other: &serde_json::Map<String, Value>) -> Result<(), ServeError> {
    match unserved_field(other) {
        Some(field) => Err(ServeError::BadRequest(format!(
            "`{field}` is not supported by this server; leave it out"
        ))),
        None => Ok(()),
    }
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

/// Chat replies are answers: room for a long one unless the client says otherwise.
const CHAT_DEFAULT_MAX_TOKENS: usize = 512;
/// OpenAI's (and vLLM's) default for a text completion.
const TEXT_DEFAULT_MAX_TOKENS: usize = 16;

/// What the reply must be, beyond text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputFormat {
    Text,
    /// Any JSON: generated freely, then checked.
    Json,
    /// The QA pairs schema: the engine's constrained decoding guarantees the shape.
    QaPairs(usize),
}

/// A validated chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ChatRequest {
    pub model: String,
    pub generation: GenerationRequest,
    pub format: OutputFormat,
    pub stream: bool,
}

/// A validated text completion request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TextRequest {
    pub model: String,
    pub generation: GenerationRequest,
    /// The prompt, when the reply repeats it (`echo`).
    pub echo: Option<String>,
    pub stream: bool,
}

fn invalid_body(error: serde_json::Error) -> ServeError {
    ServeError::BadRequest(format!("invalid request body: {error}"))
}

fn sampling_params(
    body: SamplingBody,
    max_completion_tokens: Option<u32>,
    default_max_tokens: usize,
    fresh_seed: u64,
) -> Result<SamplingParams, ServeError> {
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
    let repetition_penalty = body.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty <= 10.0) {
        return Err(ServeError::BadRequest(format!(
            "repetition_penalty must be in (0, 10], got {repetition_penalty}"
        )));
    }
    let max_tokens = max_completion_tokens
        .or(body.max_tokens)
        .map_or(default_max_tokens, |tokens| tokens as usize);
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
    Ok(SamplingParams {
        max_tokens,
        temperature,
        top_p,
        repetition_penalty: repetition_penalty as f32,
        stop,
        seed: body.seed.unwrap_or(fresh_seed),
        constraint: None,
    })
}

pub(super) fn parse_chat_request(body: &[u8], fresh_seed: u64) -> Result<ChatRequest, ServeError> {
    let body: ChatCompletionBody = serde_json::from_slice(body).map_err(invalid_body)?;
    refuse_unserved(&body.other)?;
    let mut params = sampling_params(
        body.sampling,
        body.max_completion_tokens,
        CHAT_DEFAULT_MAX_TOKENS,
        fresh_seed,
    )?;
    let format = match body.response_format {
        None | Some(ResponseFormatBody::Text) => OutputFormat::Text,
        Some(ResponseFormatBody::JsonObject) => OutputFormat::Json,
        Some(ResponseFormatBody::JsonSchema { json_schema }) => {
            match lift_shared::protocol::qa_pairs_count(&json_schema.schema) {
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

    params.constraint = match format {
        OutputFormat::QaPairs(pairs) => Some(OutputConstraint::QaJsonList { pairs }),
        OutputFormat::Text | OutputFormat::Json => None,
    };
    Ok(ChatRequest {
        model: body.model,
        generation: GenerationRequest {
            messages,
            prefill,
            params,
        },
        format,
        stream: body.stream,
    })
}

pub(super) fn parse_text_request(body: &[u8], fresh_seed: u64) -> Result<TextRequest, ServeError> {
    let body: TextCompletionBody = serde_json::from_slice(body).map_err(invalid_body)?;
    refuse_unserved(&body.other)?;
    let params = sampling_params(body.sampling, None, TEXT_DEFAULT_MAX_TOKENS, fresh_seed)?;
    let prompt = match body.prompt {
        PromptBody::Text(prompt) => prompt,
        PromptBody::Texts(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        PromptBody::Texts(_) => {
            return Err(ServeError::BadRequest(
                "`prompt`: one prompt per request is served; send a request for each".to_string(),
            ))
        }
        PromptBody::Tokens(items) => {
            return Err(ServeError::BadRequest(format!(
                "`prompt`: token ids are not served (got a list of {} non-text items); send \
                 the prompt as text",
                items.len()
            )))
        }
    };
    if prompt.is_empty() {
        return Err(ServeError::BadRequest("`prompt` is empty".to_string()));
    }
    Ok(TextRequest {
        model: body.model,
        echo: body.echo.then(|| prompt.clone()),
        // No messages: the engine takes the prompt as it is, with no chat template.
        generation: GenerationRequest {
            messages: Vec::new(),
            prefill: prompt,
            params,
        },
        stream: body.stream,
    })
}

/// Unconstrained "JSON" output: models wrap it in fences or prose, so take the outermost
/// object or array that parses.
pub(super) fn extract_json(text: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
                "name": "qa_pairs", "strict": true, "schema": lift_shared::protocol::qa_pairs_schema(3)}}}))
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
        assert_eq!(other.status(), axum::http::StatusCode::BAD_REQUEST);

        let object = parse(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})).unwrap();
        assert_eq!(object.format, OutputFormat::Json);
    }

    /// Clients that send the defaults of fields this server lacks (as OpenAI's SDKs may) and
    /// fields it need not act on are answered.
    #[test]
    fn unused_values_of_unserved_fields_are_accepted() {
        let body = json!({"messages": [{"role": "user", "content": "x"}], "logprobs": false,
            "presence_penalty": 0, "frequency_penalty": 0.0, "best_of": 1,
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
            (
                json!({"messages": user, "repetition_penalty": 0}),
                "repetition_penalty",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body.clone()).unwrap_err();
            assert!(
                matches!(error, ServeError::BadRequest(_)),
                "{body}: {error:?}"
            );
            assert!(error.to_string().contains(expected), "{body}: {error}");
            assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
        }
        let not_json = parse_chat_request(b"hello", 0).unwrap_err();
        assert_eq!(not_json.body()["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn repetition_penalty_is_served() {
        let request = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "repetition_penalty": 1.3}))
        .unwrap();
        assert_eq!(request.generation.params.repetition_penalty, 1.3);
    }

    fn parse_text(body: Value) -> Result<TextRequest, ServeError> {
        parse_text_request(body.to_string().as_bytes(), 99)
    }

    #[test]
    fn text_prompt_is_taken_as_is_with_openai_defaults() {
        let request = parse_text(json!({"model": "m", "prompt": "Once upon a time"})).unwrap();
        assert_eq!(request.model, "m");
        assert!(request.generation.messages.is_empty());
        assert_eq!(request.generation.prefill, "Once upon a time");
        assert_eq!(request.echo, None);
        let params = request.generation.params;
        assert_eq!(
            (params.max_tokens, params.temperature, params.seed),
            (16, 1.0, 99)
        );

        let request = parse_text(json!({"prompt": ["Hi"], "echo": true, "max_tokens": 3,
            "temperature": 0, "stop": ".", "suffix": null, "logprobs": null}))
        .unwrap();
        assert_eq!(request.echo.as_deref(), Some("Hi"));
        assert_eq!(request.generation.params.max_tokens, 3);
        assert_eq!(request.generation.params.stop, vec![".".to_string()]);
    }

    #[test]
    fn text_requests_the_server_cannot_serve_are_refused() {
        let cases = [
            (json!({"prompt": ["a", "b"]}), "one prompt per request"),
            (json!({"prompt": [1, 2, 3]}), "token ids"),
            (json!({"prompt": [[1, 2]]}), "token ids"),
            (json!({"prompt": ""}), "empty"),
            (json!({"prompt": "a", "suffix": "z"}), "`suffix`"),
            (json!({"prompt": "a", "logprobs": 2}), "`logprobs`"),
            (json!({"prompt": "a", "best_of": 3}), "`best_of`"),
            (json!({"prompt": "a", "n": 2}), "n = 1"),
            (json!({"model": "m"}), "invalid request body"),
        ];
        for (body, expected) in cases {
            let error = parse_text(body.clone()).unwrap_err();
            assert!(
                matches!(error, ServeError::BadRequest(_)),
                "{body}: {error:?}"
            );
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
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
}
