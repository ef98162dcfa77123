//! A generator that answers at once, without a model: for measuring the message layer
//! (broker, store, coordinator) on its own, so that the benchmark shows what the system costs
//! and never what a model costs. Selected with `LIFT_GENERATOR_URL=instant:`; never a default.

use async_trait::async_trait;

use crate::generator::{GeneratorError, QaGenerator, QaRequest, RawReply, RestateRequest};

/// The value of `LIFT_GENERATOR_URL` that selects [`InstantGenerator`].
pub const INSTANT_GENERATOR_URL: &str = "instant:";

/// Writes `pairs_wanted` pairs per sentence whose answer is the sentence itself (so they pass
/// parsing and grounding like a real reply would), in the `{"pairs": [...]}` shape.
#[derive(Debug, Default, Clone, Copy)]
pub struct InstantGenerator;

/// As many as `SynthesisOptions::qa_per_sentence` may ask for.
const ORDINALS: [&str; 20] = [
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
];

#[async_trait]
impl QaGenerator for InstantGenerator {
    async fn generate(&self, request: &QaRequest) -> Result<Vec<RawReply>, GeneratorError> {
        let answer: String = request.sentence.chars().take(280).collect();
        // Ordinals in words: a number in a question must occur in the document.
        let pairs: Vec<_> = ORDINALS
            .iter()
            .cycle()
            .take(request.pairs_wanted.max(1) as usize)
            .map(|ordinal| {
                serde_json::json!({
                    "question": format!("What does the {ordinal} statement of \"{}\" say?", request.title),
                    "answer": answer,
                })
            })
            .collect();
        let text = serde_json::json!({ "pairs": pairs }).to_string();
        Ok(vec![RawReply { text }])
    }

    /// No rewordings: the sentence's own questions are all the message layer needs.
    async fn restate(&self, _: &RestateRequest) -> Result<Vec<RawReply>, GeneratorError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ground::{GroundingPolicy, SourceWords};
    use crate::parse::{parse_reply, ParseLimits};

    #[tokio::test]
    async fn replies_parse_and_pass_grounding() {
        let request = QaRequest {
            title: "Vellmar".into(),
            sentence: "The Vellmar lighthouse was built in 1887 from grey granite.".into(),
            left_context: String::new(),
            pairs_wanted: 3,
            temperature: 0.2,
            seed: 1,
            model: None,
            answer: None,
        };
        let replies = InstantGenerator.generate(&request).await.unwrap();
        let (pairs, dropped) = parse_reply(&replies[0], ParseLimits::default());
        assert_eq!(dropped.total(), 0, "{}", dropped.describe());
        assert_eq!(pairs.len(), 3);
        let source = SourceWords::new(&request.sentence, &request.left_context);
        for pair in pairs {
            source
                .check(&pair.answer, GroundingPolicy::default())
                .unwrap();
        }
    }
}
