//! How likely the model finds a given reply to a prompt: the log-probability of the reply's
//! tokens, encoded exactly as training encodes an answer. Used to rank candidate answers
//! (`rerank.rs`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::Result;
use crate::lora::LoraAdapter;
use crate::model::{ForwardInput, LogitsFor};
use crate::sft_batch::AttentionInputs;
use crate::train::{answer_positions, encode_exchange, target_log_probs, AnswerPositions};

/// Sequences scored per forward call: bounds the activations of one call.
const SCORE_ROWS: usize = 16;

/// One prompt (a user message) and a reply to score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    pub prompt: String,
    pub reply: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplyScore {
    /// Natural-log probability of the reply's tokens, its end of turn included.
    pub log_prob: f64,
    pub tokens: usize,
}

impl Engine {
    /// The log-probability of each request's reply given its prompt, under the model with
    /// `adapter` applied.
    pub fn score_replies(
        &self,
        adapter: Option<&LoraAdapter>,
        requests: &[ScoreRequest],
    ) -> Result<Vec<ReplyScore>> {
        let mut scores = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(SCORE_ROWS) {
            scores.extend(self.score_chunk(adapter, chunk)?);
        }
        Ok(scores)
    }

    fn score_chunk(
        &self,
        adapter: Option<&LoraAdapter>,
        requests: &[ScoreRequest],
    ) -> Result<Vec<ReplyScore>> {
        let limit = self.config().max_position_embeddings;
        let encoded = requests
            .iter()
            .map(|r| encode_exchange(self, &r.prompt, &r.reply, limit))
            .collect::<Result<Vec<_>>>()?;
        let AnswerPositions {
            inputs,
            t,
            flat: rows,
            targets,
            owners,
        } = answer_positions(&encoded, self.tokenizer.pad_id(), 0);
        let mut scores = vec![
            ReplyScore {
                log_prob: 0.0,
                tokens: 0
            };
            requests.len()
        ];
        if rows.is_empty() {
            return Ok(scores);
        }
        let b = encoded.len();
        let device = self.device();
        let _turn = self.shared_stream_turn();
        let inputs = Tensor::from_vec(inputs, (b, t), device)?;
        let attention = AttentionInputs::new(b, t, self.model.dtype(), device)?;
        let flat_rows = Tensor::from_vec(rows, owners.len(), device)?;
        let logits = self.model.forward(
            &ForwardInput {
                input_ids: &inputs,
                positions: &attention.positions,
                mask: Some(&attention.mask),
                adapter,
                logits: LogitsFor::FlatPositions(&flat_rows),
                decoding: false,
            },
            None,
        )?;
        let targets = Tensor::from_vec(targets, owners.len(), device)?;
        let log_probs = target_log_probs(&logits, &targets)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (owner, log_prob) in owners.into_iter().zip(log_probs) {
            scores[owner].log_prob += f64::from(log_prob);
            scores[owner].tokens += 1;
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::{lora_trainer, tiny_engine};
    use crate::SftExample;

    fn example(prompt: &str, answer: &str) -> SftExample {
        SftExample {
            prompt: prompt.to_string(),
            answer: answer.to_string(),
        }
    }

    #[test]
    fn a_reply_scores_minus_its_training_loss_alone_or_beside_longer_ones() {
        let engine = Arc::new(tiny_engine(6));
        let mut trainer = lora_trainer(engine.clone(), 4, 1, 1e-2);
        let short = example("Colour?", "Teal.");
        let long = example(
            "Which colour is the door of the hall?",
            "It is saffron yellow.",
        );
        trainer.step(&[short.clone(), long.clone()]).unwrap();
        let batch = trainer.batch(std::slice::from_ref(&short)).unwrap();
        let loss = trainer.loss(&batch).unwrap().to_scalar::<f32>().unwrap();
        let expected = -f64::from(loss) * batch.answer_tokens as f64;

        let request = |e: &SftExample| ScoreRequest {
            prompt: e.prompt.clone(),
            reply: e.answer.clone(),
        };
        let adapter = Some(trainer.adapter());
        let alone = engine.score_replies(adapter, &[request(&short)]).unwrap();
        let padded = engine
            .score_replies(adapter, &[request(&long), request(&short)])
            .unwrap();
        assert_eq!(alone[0].tokens, batch.answer_tokens);
        assert!(
            (alone[0].log_prob - expected).abs() < 1e-3,
            "{alone:?} vs {expected}"
        );
        assert_eq!(padded[1].tokens, alone[0].tokens);
        assert!(
            (padded[1].log_prob - alone[0].log_prob).abs() < 1e-3,
            "{padded:?}"
        );
        // The adapter is what was scored: without it the same reply scores differently.
        let base = engine.score_replies(None, &[request(&short)]).unwrap();
        assert!((base[0].log_prob - alone[0].log_prob).abs() > 1e-3);
    }
}
