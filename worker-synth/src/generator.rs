//! What a question writer is: given one sentence (and the text before it), return raw replies
//! that `parse` turns into question/answer pairs. Backends: an OpenAI-compatible HTTP server
//! (`openai`) and the built-in engine (`builtin`).

use async_trait::async_trait;

/// One sentence to write questions about.
#[derive(Debug, Clone, PartialEq)]
pub struct QaRequest {
    /// Title of the document the sentence comes from; questions may name it.
    pub title: String,
    pub sentence: String,
    /// Text that precedes the sentence in its document (about 2,048 characters).
    pub left_context: String,
    /// How many pairs the caller wants; a backend may return more or fewer candidates.
    pub pairs_wanted: u32,
    pub temperature: f32,
    pub seed: u64,
    /// A model name that overrides the backend's configured one (`SynthesisOptions::generator_model`).
    pub model: Option<String>,
    /// Set when questions are wanted for a given answer, a fact span of the sentence
    /// (answer-first synthesis); unset, the generator chooses both.
    pub answer: Option<String>,
}

/// Sampling temperature of rewordings, for every backend: at a question's low temperature
/// most samples copy the sentence.
pub const RESTATE_TEMPERATURE: f32 = 0.7;

/// One sentence to reword (fact-first recipe, see `restate`).
#[derive(Debug, Clone, PartialEq)]
pub struct RestateRequest {
    pub sentence: String,
    /// Rewordings wanted; each is one sample.
    pub samples: u32,
    pub seed: u64,
    /// As in `QaRequest`.
    pub model: Option<String>,
}

/// One reply of the generator, exactly as written: validation happens in `parse`, because no
/// backend guarantees its output format (ARCHITECTURE.md, "OpenAI-compatible is not uniform").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("generator unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("generator timed out after {seconds} s")]
    Timeout { seconds: u64 },
    #[error("generator answered status {code}: {body}")]
    BadStatus { code: u16, body: String },
    #[error("generator returned invalid output: {0}")]
    InvalidOutput(String),
    #[error("failed to render prompt template: {0}")]
    Prompt(String),
    /// The built-in engine failed (prompt too long, model error, worker thread panicked).
    #[error("built-in engine failed: {0}")]
    Engine(String),
}

impl GeneratorError {
    /// Whether another attempt later may succeed: the server may come back, but a request it
    /// refused as malformed (4xx other than 408/429) or an engine error will fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::BadStatus { code, .. } => *code >= 500 || *code == 408 || *code == 429,
            Self::InvalidOutput(_) | Self::Prompt(_) | Self::Engine(_) => false,
        }
    }
}

#[async_trait]
pub trait QaGenerator: Send + Sync {
    async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError>;

    /// Rewordings of a sentence, one reply each, unchecked: `restate::restated_questions`
    /// decides what is usable.
    async fn restate(&self, request: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError>;

    /// Whether jobs that leave the question recipe to the worker get the fact-first recipe:
    /// true for weak generators (the built-in engine), whose free pairs are often wrong.
    fn prefers_fact_first(&self) -> bool {
        false
    }

    /// Replies for several sentences; backends that batch (the built-in engine) override it.
    /// One result per request, so one sentence's failure does not sink its neighbours.
    async fn generate_many(
        &self,
        requests: &[QaRequest],
    ) -> Result<Vec<Vec<RawReply>>, GeneratorError> {
        let results = futures::future::join_all(requests.iter().map(|r| self.generate(r))).await;
        let mut replies = Vec::with_capacity(results.len());
        let mut last_error = None;
        for result in results {
            match result {
                Ok(r) => replies.push(r),
                Err(error) => {
                    replies.push(Vec::new());
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if replies.iter().all(Vec::is_empty) => Err(error),
            _ => Ok(replies),
        }
    }
}
