//! Reply bodies of the two APIs, whole or as server-sent events: a chat reply is a message
//! (streamed as deltas), a text completion is text (streamed as pieces of text).

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lift_engine::{FinishReason, GenerationOutput};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Text,
}

/// One reply's identity: what every body and chunk of it repeats.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    api: Api,
    id: String,
    model: String,
    created: u64,
}

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

impl Reply {
    pub fn new(api: Api, model: String) -> Self {
        let prefix = match api {
            Api::Chat => "chatcmpl",
            Api::Text => "cmpl",
        };
        Self {
            api,
            id: format!("{prefix}-{}", uuid::Uuid::now_v7().simple()),
            model,
            created: unix_seconds(),
        }
    }

    /// The whole reply in one body.
    pub fn body(&self, content: &str, output: &GenerationOutput) -> Value {
        let finish_reason = finish_reason_name(output.finish_reason);
        let (object, choice) = match self.api {
            Api::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": content},
                       "finish_reason": finish_reason}),
            ),
            Api::Text => (
                "text_completion",
                json!({"index": 0, "text": content, "logprobs": null,
                       "finish_reason": finish_reason}),
            ),
        };
        let mut body = self.envelope(object, choice);
        body["usage"] = json!({
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "total_tokens": output.prompt_tokens + output.completion_tokens,
        });
        body
    }

    /// What a body and a chunk share: the reply's identity around its one choice.
    fn envelope(&self, object: &str, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    /// A streamed piece of the reply; the last one (with `finish_reason`) has no text.
    pub fn chunk(&self, text: Option<&str>, finish_reason: Option<FinishReason>) -> Value {
        let finish_reason = finish_reason.map(finish_reason_name);
        let (object, choice) = match self.api {
            Api::Chat => {
                let delta = match text {
                    Some(text) => json!({"content": text}),
                    None => json!({}),
                };
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "finish_reason": finish_reason}),
                )
            }
            Api::Text => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or_default(), "logprobs": null,
                       "finish_reason": finish_reason}),
            ),
        };
        self.envelope(object, choice)
    }

    /// The event that opens a stream: a chat reply names the assistant's role first.
    pub fn opening(&self, text: &str) -> Value {
        match self.api {
            Api::Chat => {
                let mut chunk = self.chunk(None, None);
                chunk["choices"][0]["delta"] = json!({"role": "assistant", "content": text});
                chunk
            }
            Api::Text => self.chunk(Some(text), None),
        }
    }

    /// The whole reply as a stream: for outputs that must be checked before they are sent.
    pub fn whole_as_stream(&self, content: &str, output: &GenerationOutput) -> Response {
        let events = vec![
            sse_event(&self.opening(content).to_string()),
            sse_event(&self.chunk(None, Some(output.finish_reason)).to_string()),
            sse_event(SSE_DONE),
        ];
        sse_response(futures::stream::iter(events))
    }
}

/// One server-sent event carrying `data`; a stream ends with `data: [DONE]`.
pub(super) fn sse_event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

pub(super) const SSE_DONE: &str = "[DONE]";

pub(super) fn sse_response(
    events: impl futures::Stream<Item = Bytes> + Send + 'static,
) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_data_lines_ending_with_done() {
        assert_eq!(sse_event("{\"a\":1}"), Bytes::from("data: {\"a\":1}\n\n"));
        assert_eq!(sse_event(SSE_DONE), Bytes::from("data: [DONE]\n\n"));
        let reply = Reply::new(Api::Chat, "m".to_string());
        let chunk = reply.chunk(Some("Hi"), None);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        let last = reply.chunk(None, Some(FinishReason::Length));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(
            reply.opening("")["choices"][0]["delta"]["role"],
            "assistant"
        );
    }

    #[test]
    fn text_completions_carry_text_not_messages() {
        let reply = Reply::new(Api::Text, "m".to_string());
        assert!(reply.id.starts_with("cmpl-"), "{}", reply.id);
        let output = GenerationOutput {
            text: "there".to_string(),
            prompt_tokens: 2,
            completion_tokens: 1,
            finish_reason: FinishReason::Stop,
        };
        let body = reply.body("Hi there", &output);
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Hi there");
        assert_eq!(body["choices"][0]["logprobs"], Value::Null);
        assert_eq!(body["usage"]["total_tokens"], 3);
        let chunk = reply.chunk(Some("x"), None);
        assert_eq!(chunk["choices"][0]["text"], "x");
        assert_eq!(
            reply.chunk(None, Some(FinishReason::Stop))["choices"][0]["text"],
            ""
        );
    }
}
