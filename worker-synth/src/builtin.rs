//! A question writer on the built-in engine, for embedded mode. It follows the recipe that makes a
//! 135M model usable (ARCHITECTURE.md, "A 135M model is a weak question writer"): a few-shot
//! prompt, the reply prefilled with `Question:`, a low temperature, a stop at the first blank line,
//! and several samples per wanted pair, all in one batch; `parse` and `ground` then keep the good
//! ones. The engine runs its requests through the engine's batcher (`batcher.rs`), so requests that
//! wait at the same time share one engine call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lift_engine::{
    Batcher, BatcherOptions, ChatMessage, Engine, GenerationOutput, GenerationRequest,
    SamplingParams,
};

use crate::generator::{
    GeneratorError, QaGenerator, QaRequest, RawReply, RestateRequest, RESTATE_TEMPERATURE,
};
use crate::prompt::{builtin_answer_first_user, builtin_fewshot_user, restate_user};

/// The reply starts here; the model only continues it.
const PREFILL: &str = "Question:";

#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinConfig {
    /// Samples per wanted pair: about half of a small model's pairs survive validation.
    pub samples_per_pair: u32,
    /// Upper bound on one batch, whatever the request asks for.
    pub max_samples: u32,
    /// One question and a short answer fit easily.
    pub max_tokens: usize,
    /// Samples per answer-first request (a question for a given answer): the answer is fixed,
    /// so fewer samples suffice than for a whole pair.
    pub answer_first_samples: u32,
    /// A question alone is shorter than a pair.
    pub answer_first_max_tokens: usize,
    /// Used when a request's temperature is not a usable number.
    pub default_temperature: f32,
    /// Rewordings need variety (`RESTATE_TEMPERATURE`).
    pub restate_temperature: f32,
    /// A rewording is about as long as its sentence (at most 2x is used).
    pub restate_max_tokens: usize,
    /// Most sequences generated together: requests that wait at the same time (sentences of
    /// a chunk, chunks in parallel) share one engine batch, and the engine computes their
    /// common few-shot prefix once.
    pub max_batch_rows: usize,
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        Self {
            samples_per_pair: 3,
            max_samples: 32,
            max_tokens: 96,
            answer_first_samples: 2,
            answer_first_max_tokens: 40,
            default_temperature: 0.2,
            restate_temperature: RESTATE_TEMPERATURE,
            restate_max_tokens: 96,
            max_batch_rows: 48,
        }
    }
}

pub struct BuiltinGenerator {
    config: BuiltinConfig,
    batcher: Batcher,
}

impl BuiltinGenerator {
    pub fn new(engine: Arc<Engine>) -> Self {
        let mut config = BuiltinConfig::default();
        if engine.device().is_cuda() {
            // A GPU decodes a few hundred sequences in about the time of one.
            config.max_batch_rows = 256;
        }
        Self::with_config(engine, config)
    }

    pub fn with_config(engine: Arc<Engine>, config: BuiltinConfig) -> Self {
        // Requests of one chunk arrive together; nothing is gained by waiting for more.
        let batcher = Batcher::spawn(
            engine,
            BatcherOptions {
                max_rows: config.max_batch_rows.max(1),
                window: Duration::ZERO,
            },
        );
        Self { config, batcher }
    }

    fn batch(&self, request: &QaRequest) -> Result<Vec<GenerationRequest>, GeneratorError> {
        let temperature = if request.temperature.is_finite() && request.temperature >= 0.0 {
            request.temperature
        } else {
            self.config.default_temperature
        };
        let (user, samples_per_pair, max_tokens, stop) = match &request.answer {
            Some(answer) => (
                builtin_answer_first_user(&request.sentence, answer)?,
                self.config.answer_first_samples,
                self.config.answer_first_max_tokens,
                "\n",
            ),
            None => (
                builtin_fewshot_user(&request.sentence)?,
                self.config.samples_per_pair,
                self.config.max_tokens,
                "\n\n",
            ),
        };
        // Greedy decoding gives the same reply every time: one sample is all there is.
        let samples = if temperature == 0.0 {
            1
        } else {
            (request.pairs_wanted.max(1) * samples_per_pair.max(1))
                .min(self.config.max_samples.max(1))
        };
        let batch = (0..u64::from(samples))
            .map(|sample| GenerationRequest {
                messages: vec![ChatMessage::new("user", user.clone())],
                prefill: PREFILL.to_string(),
                params: SamplingParams {
                    max_tokens,
                    temperature: f64::from(temperature),
                    stop: vec![stop.to_string()],
                    // Distinct seeds, or every sample of the batch would be the same.
                    seed: request.seed.wrapping_add(sample),
                    ..SamplingParams::default()
                },
            })
            .collect();
        Ok(batch)
    }
}

#[async_trait]
impl QaGenerator for BuiltinGenerator {
    fn prefers_fact_first(&self) -> bool {
        true
    }

    async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
        let outputs = self.run(self.batch(request)?).await?;
        // An answer-first reply is a question only: the given answer completes the pair.
        let answer_line = request
            .answer
            .as_ref()
            .map(|answer| format!("\nAnswer: {answer}"))
            .unwrap_or_default();
        Ok(outputs
            .into_iter()
            .map(|output| RawReply {
                text: format!("{PREFILL}{}{answer_line}", output.text),
            })
            .collect())
    }

    async fn restate(&self, request: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
        if request.samples == 0 {
            return Ok(Vec::new());
        }
        let outputs = self.run(self.restate_batch(request)?).await?;
        Ok(outputs
            .into_iter()
            .map(|output| RawReply { text: output.text })
            .collect())
    }
}

impl BuiltinGenerator {
    /// One sample per wanted rewording, zero-shot: the few-shot examples leaked into SmolLM2's
    /// rewordings (names of the examples in every reply), a plain instruction did not.
    fn restate_batch(
        &self,
        request: &RestateRequest,
    ) -> Result<Vec<GenerationRequest>, GeneratorError> {
        let user = restate_user(&request.sentence)?;
        let samples = request.samples.min(self.config.max_samples.max(1));
        Ok((0..u64::from(samples))
            .map(|sample| GenerationRequest {
                messages: vec![ChatMessage::new("user", user.clone())],
                prefill: String::new(),
                params: SamplingParams {
                    max_tokens: self.config.restate_max_tokens,
                    temperature: f64::from(self.config.restate_temperature),
                    stop: vec!["\n".to_string()],
                    seed: request.seed.wrapping_add(sample),
                    ..SamplingParams::default()
                },
            })
            .collect())
    }

    /// Hands a batch to the engine thread and waits for its outputs.
    async fn run(
        &self,
        requests: Vec<GenerationRequest>,
    ) -> Result<Vec<GenerationOutput>, GeneratorError> {
        self.batcher
            .generate(None, requests)
            .await
            .map_err(|error| GeneratorError::Engine(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use lift_engine::testing::tiny_engine;

    use super::*;

    fn request(pairs_wanted: u32, temperature: f32) -> QaRequest {
        QaRequest {
            title: "Eiffel Tower".to_string(),
            sentence: "The tower was completed in 1889.".to_string(),
            left_context: String::new(),
            pairs_wanted,
            temperature,
            seed: 3,
            model: None,
            answer: None,
        }
    }

    fn generator() -> BuiltinGenerator {
        BuiltinGenerator::with_config(
            Arc::new(tiny_engine(1)),
            BuiltinConfig {
                max_tokens: 8,
                ..BuiltinConfig::default()
            },
        )
    }

    #[test]
    fn batch_follows_the_small_model_recipe() {
        let batch = generator().batch(&request(2, 0.2)).unwrap();
        assert_eq!(batch.len(), 6);
        let first = &batch[0];
        assert_eq!(first.prefill, "Question:");
        assert_eq!(first.params.stop, vec!["\n\n".to_string()]);
        assert!((first.params.temperature - 0.2).abs() < 1e-6);
        assert!(first.messages[0]
            .content
            .ends_with("Sentence: The tower was completed in 1889."));
        let seeds: std::collections::HashSet<u64> =
            batch.iter().map(|request| request.params.seed).collect();
        assert_eq!(seeds.len(), 6, "every sample has its own seed");
    }

    #[test]
    fn greedy_requests_take_one_sample_and_bad_temperatures_fall_back() {
        assert_eq!(generator().batch(&request(3, 0.0)).unwrap().len(), 1);
        let fallback = generator().batch(&request(1, f32::NAN)).unwrap();
        assert!((fallback[0].params.temperature - 0.2).abs() < 1e-6);
    }

    #[tokio::test]
    async fn rewordings_are_sampled_one_per_wanted_without_prefill() {
        let request = RestateRequest {
            sentence: "The tower was completed in 1889.".to_string(),
            samples: 3,
            seed: 5,
            model: None,
        };
        let batch = generator().restate_batch(&request).unwrap();
        assert_eq!(batch.len(), 3);
        assert!(batch.iter().all(|sample| sample.prefill.is_empty()));
        assert!((batch[0].params.temperature - 0.7).abs() < 1e-6);
        assert!(batch[0].messages[0]
            .content
            .ends_with("The tower was completed in 1889."));
        assert_eq!(generator().restate(&request).await.unwrap().len(), 3);
        let none = RestateRequest {
            samples: 0,
            ..request
        };
        assert!(generator().restate(&none).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn replies_start_with_the_prefill() {
        let replies = generator().generate(&request(1, 0.7)).await.unwrap();
        assert_eq!(replies.len(), 3);
        assert!(replies
            .iter()
            .all(|reply| reply.text.starts_with("Question:")));
    }
}
