//! Candidate answers and the scores to pick among them by. A model fine-tuned on a document
//! can answer a question with a sentence it finds likely whatever was asked (one it saw often
//! in training); its greedy reply then recites that sentence. Two scores aim at the reply the
//! question itself calls for: the contrast, log p(reply | prompt) minus a weighted log
//! p(reply | baseline prompt), and the noisy channel, log p(reply | prompt) plus a weighted
//! log p(question | reply) under the base model. Measured on the fact dev set
//! (docs/results.md, "Candidate answers" and "Picking among 16 answers"), neither picks
//! enough better than the greedy reply to pay for the draws, so `lift ask` answers greedily;
//! `lift eval facts --candidates N` reports both and whether the key fact is among the
//! candidates.

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

/// A prompt and the baseline it is weighed against (the same frame, asking nothing), and the
/// bare question it asks (scored given each reply).
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastPrompt {
    pub prompt: String,
    pub baseline: String,
    pub question: String,
}

/// The prompt under which a question is scored given a reply: how well the reply calls for
/// the question, which likelihood under the question cannot tell when the adapted model is
/// sure of a reply whatever is asked.
pub fn question_prompt(reply: &str) -> String {
    format!("Write the question that this text answers.\nText: {reply}\nQuestion:")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub text: String,
    pub given_prompt: ReplyScore,
    pub given_baseline: ReplyScore,
    /// log p(question | `question_prompt(text)`) under the base model: whether the reply
    /// calls for the question, judged by a model that has not learnt the document.
    pub question_given_reply: ReplyScore,
}

impl Candidate {
    /// log p(reply | prompt) - `baseline_weight` x log p(reply | baseline); a weight of 0
    /// ranks by likelihood alone.
    pub fn contrast(&self, baseline_weight: f64) -> f64 {
        self.given_prompt.log_prob - baseline_weight * self.given_baseline.log_prob
    }

    /// log p(reply | prompt) + `question_weight` x log p(question | reply): the noisy-channel
    /// score, the reply likely under the question and the question likely given the reply.
    pub fn channel(&self, question_weight: f64) -> f64 {
        self.given_prompt.log_prob + question_weight * self.question_given_reply.log_prob
    }
}

/// One prompt's distinct candidates, the greedy reply first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedReplies {
    pub candidates: Vec<Candidate>,
}

impl RankedReplies {
    /// The candidate with the highest `score` (the earliest on a tie, so the greedy reply
    /// wins when nothing beats it).
    pub fn best_by(&self, score: impl Fn(&Candidate) -> f64) -> &Candidate {
        let mut best = &self.candidates[0];
        for candidate in &self.candidates[1..] {
            if score(candidate) > score(best) {
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
        let question_requests: Vec<ScoreRequest> = prompts
            .iter()
            .zip(&replies)
            .flat_map(|(p, replies)| {
                replies.iter().map(|reply| ScoreRequest {
                    prompt: question_prompt(reply),
                    reply: p.question.clone(),
                })
            })
            .collect();
        let mut by_base = self.score_replies(None, &question_requests)?.into_iter();
        Ok(replies
            .into_iter()
            .map(|replies| RankedReplies {
                candidates: replies
                    .into_iter()
                    .map(|text| Candidate {
                        text,
                        given_prompt: scores.next().expect("a score per request"),
                        given_baseline: scores.next().expect("a score per request"),
                        question_given_reply: by_base.next().expect("a score per request"),
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

    fn candidate(
        text: &str,
        given_prompt: f64,
        given_baseline: f64,
        question_given_reply: f64,
    ) -> Candidate {
        let score = |log_prob| ReplyScore {
            log_prob,
            tokens: 4,
        };
        Candidate {
            text: text.to_string(),
            given_prompt: score(given_prompt),
            given_baseline: score(given_baseline),
            question_given_reply: score(question_given_reply),
        }
    }

    #[test]
    fn the_reply_the_prompt_calls_for_beats_the_one_likely_anyway() {
        let ranked = RankedReplies {
            candidates: vec![
                candidate("recited whatever was asked", -2.0, -2.5, -30.0),
                candidate("the asked-for sentence", -3.0, -9.0, -20.0),
            ],
        };
        let by_contrast = |weight| ranked.best_by(|c| c.contrast(weight)).text.as_str();
        assert_eq!(by_contrast(0.0), "recited whatever was asked");
        assert_eq!(by_contrast(0.5), "the asked-for sentence");
        // The question is likelier given the asked-for sentence: the channel score picks it.
        assert_eq!(
            ranked.best_by(|c| c.channel(0.0)).text,
            "recited whatever was asked"
        );
        assert_eq!(
            ranked.best_by(|c| c.channel(0.5)).text,
            "the asked-for sentence"
        );
        let tie = RankedReplies {
            candidates: vec![
                candidate("greedy", -2.0, -2.0, -2.0),
                candidate("other", -2.0, -2.0, -2.0),
            ],
        };
        assert_eq!(tie.best_by(|c| c.contrast(1.0)).text, "greedy");
    }

    #[test]
    fn draws_are_deduplicated_and_scored_under_both_prompts() {
        let engine = tiny_engine(7);
        let prompts = [ContrastPrompt {
            prompt: "Name a colour.".into(),
            baseline: "Say something.".into(),
            question: "Which colour?".into(),
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
        let question = ScoreRequest {
            prompt: question_prompt(&candidates[0].text),
            reply: "Which colour?".into(),
        };
        let by_base = engine.score_replies(None, &[question]).unwrap();
        assert_eq!(candidates[0].question_given_reply, by_base[0]);
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
