//! Turning one chunk of sentences into training tasks: ask the generator about each sentence,
//! parse and ground what it wrote, add rule-based cloze tasks if the job wants them. The
//! decisions about the delivery (retry, dead-letter, write) are the worker's.

use futures::future::join_all;
use lift_shared::messages::{SentenceUnit, SynthChunk, Task};
use lift_shared::metrics;

use crate::cloze::cloze_tasks;
use crate::generator::{GeneratorError, QaGenerator, QaRequest};
use crate::ground::{GroundingPolicy, SentenceSource};
use crate::parse::{DropCounts, PairCollector, ParseLimits, QaPair};

#[derive(Debug, Clone, PartialEq)]
pub struct SynthesisTuning {
    pub parse_limits: ParseLimits,
    pub grounding: GroundingPolicy,
    /// Generator calls per sentence at most: another round (new seed) runs while fewer
    /// grounded pairs than wanted came back, since small models miss about half the time.
    pub rounds_per_sentence: u32,
    /// Cloze tasks per sentence when the job asks for them.
    pub cloze_per_sentence: usize,
}

impl Default for SynthesisTuning {
    fn default() -> Self {
        Self {
            parse_limits: ParseLimits::default(),
            grounding: GroundingPolicy::default(),
            rounds_per_sentence: 2,
            cloze_per_sentence: 1,
        }
    }
}

/// What a chunk produced.
#[derive(Debug)]
pub struct ChunkSynthesis {
    /// In sentence order, question/answer tasks before cloze tasks.
    pub tasks: Vec<Task>,
    pub sentences: u32,
    /// Why each failed sentence failed (its first generator call erred).
    pub failures: Vec<(u32, GeneratorError)>,
    pub pairs_dropped: DropCounts,
}

impl ChunkSynthesis {
    pub fn sentences_failed(&self) -> u32 {
        self.failures.len() as u32
    }

    /// Whether some sentence may succeed on a later attempt (the generator was down or busy).
    pub fn has_transient_failure(&self) -> bool {
        self.failures.iter().any(|(_, error)| error.is_transient())
    }

    /// Every sentence failed: the chunk as a whole failed, not a sentence of it.
    pub fn all_failed(&self) -> bool {
        self.sentences > 0 && self.sentences_failed() == self.sentences
    }

    /// The task file: one JSON `Task` per line.
    pub fn task_file(&self) -> serde_json::Result<Vec<u8>> {
        let mut file = Vec::new();
        for task in &self.tasks {
            serde_json::to_writer(&mut file, task)?;
            file.push(b'\n');
        }
        Ok(file)
    }
}

pub async fn synthesize_chunk(
    generator: &dyn QaGenerator,
    chunk: &SynthChunk,
    tuning: &SynthesisTuning,
) -> ChunkSynthesis {
    let outcomes = join_all(
        chunk
            .sentences
            .iter()
            .map(|sentence| synthesize_sentence(generator, chunk, sentence, tuning)),
    )
    .await;

    let traceparent = lift_shared::telemetry::trace_headers()
        .remove("traceparent")
        .unwrap_or_default();
    let mut synthesis = ChunkSynthesis {
        tasks: Vec::new(),
        sentences: chunk.sentences.len() as u32,
        failures: Vec::new(),
        pairs_dropped: DropCounts::default(),
    };
    for (sentence, outcome) in chunk.sentences.iter().zip(outcomes) {
        match outcome {
            Ok(SentencePairs { pairs, dropped }) => {
                synthesis.pairs_dropped.add(&dropped);
                if pairs.is_empty() {
                    // The generator answered, but nothing it wrote is usable: the sentence
                    // failed, and the reason says what was wrong with the replies.
                    let reason = format!("no usable question/answer pair ({})", dropped.describe());
                    synthesis
                        .failures
                        .push((sentence.index, GeneratorError::InvalidOutput(reason)));
                }
                synthesis.tasks.extend(pairs.into_iter().map(|pair| Task {
                    sentence_index: sentence.index,
                    title: chunk.title.clone(),
                    question: pair.question,
                    answer: pair.answer,
                    kind: "qa".to_string(),
                    traceparent: traceparent.clone(),
                }));
            }
            Err(error) => synthesis.failures.push((sentence.index, error)),
        }
        if chunk.options.cloze_tasks {
            let cloze = cloze_tasks(&sentence.text, tuning.cloze_per_sentence);
            synthesis.tasks.extend(cloze.into_iter().map(|task| Task {
                sentence_index: sentence.index,
                title: chunk.title.clone(),
                question: task.question,
                answer: task.answer,
                kind: "cloze".to_string(),
                traceparent: traceparent.clone(),
            }));
        }
    }
    synthesis
}

struct SentencePairs {
    pairs: Vec<QaPair>,
    dropped: DropCounts,
}

async fn synthesize_sentence(
    generator: &dyn QaGenerator,
    chunk: &SynthChunk,
    sentence: &SentenceUnit,
    tuning: &SynthesisTuning,
) -> Result<SentencePairs, GeneratorError> {
    let options = &chunk.options;
    let wanted = options.qa_per_sentence as usize;
    let source = SentenceSource::new(&sentence.text, &sentence.left_context);
    let mut collector = PairCollector::new(tuning.parse_limits);
    let mut request = QaRequest {
        title: chunk.title.clone(),
        sentence: sentence.text.clone(),
        left_context: sentence.left_context.clone(),
        pairs_wanted: options.qa_per_sentence,
        temperature: options.temperature,
        seed: 0,
        model: Some(options.generator_model.clone()).filter(|model| !model.is_empty()),
    };
    for round in 0..tuning.rounds_per_sentence.max(1) {
        request.seed = sentence_seed(options.seed, sentence.index, round);
        let timer = metrics::GENERATOR_REQUEST_SECONDS.start_timer();
        let generated = generator.generate(&request).await;
        timer.observe_duration();
        if generated.is_err() {
            metrics::GENERATOR_ERRORS.inc();
        }
        match generated {
            Ok(replies) => replies.iter().for_each(|reply| collector.add_reply(reply)),
            Err(error) if round == 0 => return Err(error),
            // Later rounds only top up; what the first round gave is kept.
            Err(error) => {
                tracing::debug!(
                    job_id = %chunk.job_id,
                    sentence = sentence.index,
                    %error,
                    "extra generation round failed"
                );
                break;
            }
        }
        let grounded = collector
            .pairs()
            .iter()
            .filter(|pair| source.check(&pair.answer, tuning.grounding).is_ok())
            .count();
        if grounded >= wanted {
            break;
        }
    }

    let (candidates, mut dropped) = collector.into_parts();
    let mut pairs = Vec::new();
    for pair in candidates {
        match source.check(&pair.answer, tuning.grounding) {
            Ok(()) => pairs.push(pair),
            Err(reason) => {
                tracing::debug!(
                    job_id = %chunk.job_id,
                    sentence = sentence.index,
                    answer = %pair.answer,
                    %reason,
                    "dropped ungrounded answer"
                );
                dropped.ungrounded += 1;
            }
        }
    }
    // Extra grounded pairs beyond the wanted number are surplus, not invalid: not counted.
    pairs.truncate(wanted);
    metrics::QA_PAIRS_PER_SENTENCE.observe(pairs.len() as f64);
    Ok(SentencePairs { pairs, dropped })
}

/// A seed per (job seed, sentence, round), so a redelivered chunk asks the same questions
/// again and no two sentences or rounds share a sample stream. Backends add small offsets
/// per sample (below 2^16).
fn sentence_seed(job_seed: u64, sentence_index: u32, round: u32) -> u64 {
    job_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(sentence_index) << 24)
        .wrapping_add(u64::from(round) << 16)
}
