//! Answers picked among candidates by how much more likely the prompt makes them than a
//! baseline prompt does. A model fine-tuned on a document can answer a question with a
//! sentence it finds likely whatever was asked (one it saw often in training); its greedy
//! reply then recites that sentence. Scoring each candidate by log p(reply | prompt) minus a
//! weighted log p(reply | baseline prompt) prefers the reply the question itself calls for.
//! Measured on four documents of the fact dev set (docs/results.md, "Candidate answers"),
//! no weight picked better than the greedy reply, so `lift ask` answers greedily; `lift eval
//! facts --candidates N` uses this to report whether the key fact is among the candidates.

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::Result;
use crate::generate::{GenerationRequest, SamplingParams};
use crate::lora::LoraAdapter;
use crate::score::{ReplyScore, ScoreRequest};
use crate::tokenizer::ChatMessage;

/// How candidates are drawn and weighed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RerankOptions {
    pub max_tokens: usize,
    /// Sampled candidates besides the greedy reply.
    pub samples: usize,
    pub temperature: f64,
}

/// A prompt and the baseline it is weighed against (the same frame, asking nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastPrompt {
    pub prompt: String,
    pub baseline: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub text: String,
    pub given_prompt: ReplyScore,
    pub given_baseline: ReplyScore,
}

impl Candidate {
    /// log p(reply | prompt) - `baseline_weight` x log p(reply | baseline); a weight of 0
    /// ranks by likelihood alone.
    pub fn contrast(&self, baseline_weight: f64) -> f64 {
        self.given_prompt.log_prob - baseline_weight * self.given_baseline.log_prob
    }
}

/// One prompt's distinct candidates, the greedy reply first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedReplies {
    pub candidates: Vec<Candidate>,
}

impl RankedReplies {
    /// The candidate with the highest contrast (the earliest on a tie, so the greedy reply
    /// wins when nothing beats it).
    pub fn best(&self, baseline_weight: f64) -> &Candidate {
        let mut best = &self.candidates[0];
        for candidate in &self.candidates[1..] {
            if candidate.contrast(baseline_weight) > best.contrast(baseline_weight) {
                best = candidate;
            }
        }
        best
    }
}

impl Engine {
    /// For each prompt, the greedy reply and `options.samples` sampled ones, deduplicated,
    /// each scored under its prompt and under the baseline.
    pub fn rank_replies(
        &self,
        adapter: Option<&LoraAdapter>,
        prompts: &[ContrastPrompt],
        options: &RerankOptions,
    ) -> Result<Vec<RankedReplies>> {
        let per_prompt = options.samples + 1;
        let requests: Vec<GenerationRequest> = prompts
            .iter()
            .flat_map(|p| {
                (0..per_prompt).map(|draw| GenerationRequest {
                    messages: vec![ChatMessage::new("user", p.prompt.clone())],
                    prefill: String::new(),
                    params: SamplingParams {
                        max_tokens: options.max_tokens,
                        temperature: if draw == 0 { 0.0 } else { options.temperature },
                        seed: draw as u64,
                        ..SamplingParams::default()
                    },
                })
            })
            .collect();
        let outputs = self.generate(adapter, &requests)?;
        let replies: Vec<Vec<String>> = outputs
            .chunks(per_prompt)
            .map(|drawn| {
                let mut distinct: Vec<String> = Vec::new();
                for reply in drawn {
                    let text = reply.text.trim().to_string();
                    if !distinct.contains(&text) {
                        distinct.push(text);
                    }
                }
                distinct
            })
            .collect();
        let score_requests: Vec<ScoreRequest> = prompts
            .iter()
            .zip(&replies)
            .flat_map(|(p, replies)| {
                replies.iter().flat_map(|reply| {
                    [&p.prompt, &p.baseline].map(|prompt| ScoreRequest {
                        prompt: prompt.clone(),
                        reply: reply.clone(),
                    })
                })
            })
            .collect();
        let mut scores = self.score_replies(adapter, &score_requests)?.into_iter();
        Ok(replies
            .into_iter()
            .map(|replies| RankedReplies {
                candidates: replies
                    .into_iter()
                    .map(|text| Candidate {
                        text,
                        given_prompt: scores.next().expect("a score per request"),
                        given_baseline: scores.next().expect("a score per request"),
                    })
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_engine;

    fn candidate(text: &str, given_prompt: f64, given_baseline: f64) -> Candidate {
        let score = |log_prob| ReplyScore {
            log_prob,
            tokens: 4,
        };
        Candidate {
            text: text.to_string(),
            given_prompt: score(given_prompt),
            given_baseline: score(given_baseline),
        }
    }

    #[test]
    fn the_reply_the_prompt_calls_for_beats_the_one_likely_anyway() {
        let ranked = RankedReplies {
            candidates: vec![
                candidate("recited whatever was asked", -2.0, -2.5),
                candidate("the asked-for sentence", -3.0, -9.0),
            ],
        };
        assert_eq!(ranked.best(0.0).text, "recited whatever was asked");
        assert_eq!(ranked.best(0.5).text, "the asked-for sentence");
        let tie = RankedReplies {
            candidates: vec![
                candidate("greedy", -2.0, -2.0),
                candidate("other", -2.0, -2.0),
            ],
        };
        assert_eq!(tie.best(1.0).text, "greedy");
    }

    #[test]
    fn draws_are_deduplicated_and_scored_under_both_prompts() {
        let engine = tiny_engine(7);
        let prompts = [ContrastPrompt {
            prompt: "Name a colour.".into(),
            baseline: "Say something.".into(),
        }];
        let greedy = engine
            .generate(
                None,
                &[GenerationRequest {
                    messages: vec![ChatMessage::new("user", "Name a colour.")],
                    prefill: String::new(),
                    params: SamplingParams {
                        max_tokens: 6,
                        ..SamplingParams::default()
                    },
                }],
            )
            .unwrap();
        // At temperature 0 every draw is the greedy reply: one candidate.
        let options = RerankOptions {
            max_tokens: 6,
            samples: 5,
            temperature: 0.0,
        };
        let ranked = engine.rank_replies(None, &prompts, &options).unwrap();
        let candidates = &ranked[0].candidates;
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].text, greedy[0].text.trim());
        let expected = engine
            .score_replies(
                None,
                &[&prompts[0].prompt, &prompts[0].baseline].map(|prompt| ScoreRequest {
                    prompt: prompt.clone(),
                    reply: candidates[0].text.clone(),
                }),
            )
            .unwrap();
        assert_eq!(candidates[0].given_prompt, expected[0]);
        assert_eq!(candidates[0].given_baseline, expected[1]);
        // Sampled draws: the greedy reply first, then distinct ones.
        let sampled = RerankOptions {
            temperature: 2.0,
            ..options
        };
        let ranked = engine.rank_replies(None, &prompts, &sampled).unwrap();
        let candidates = &ranked[0].candidates;
        assert_eq!(candidates[0].text, greedy[0].text.trim());
        assert!(candidates.len() <= 6);
        for (i, a) in candidates.iter().enumerate() {
            assert!(candidates[i + 1..].iter().all(|b| b.text != a.text));
        }
    }
}
