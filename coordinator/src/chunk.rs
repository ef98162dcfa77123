//! Fan-out planning: a job's sentences grouped into chunks, one broker message and one task
//! file per chunk. Sentence and chunk indices run across all of the job's documents; a chunk
//! never mixes documents, because it carries one title for the prompt template.
//!
//! Every sentence travels with up to `left_context_chars` of the text before it, so a job's
//! messages can be many times its documents (a document of one-letter lines is the worst
//! case). Planning therefore keeps only sentence offsets, refuses a job that would expand past
//! the limits, and chunks are made one at a time as they are published.

use std::ops::Range;

use lift_shared::error::LiftError;
use lift_shared::ids::JobId;
use lift_shared::messages::{SentenceUnit, SynthChunk};
use lift_shared::spec::{JobSpec, Limits};

use crate::split::{left_context, split_sentences, SplitOptions};

/// A job's sentences as offsets into its documents, checked against the expansion limits.
#[derive(Debug)]
pub struct ChunkPlan {
    /// Per document, the byte range of each sentence.
    sentences: Vec<Vec<Range<usize>>>,
    per_chunk: usize,
    pub sentence_count: u32,
    pub chunk_count: u32,
    /// Bytes of sentence text and left context all chunks carry together.
    pub planned_bytes: u64,
}

/// Splits every document of `spec` and sizes its chunks of `spec.synthesis.chunk_sentences`.
/// Refuses, naming the field to change, a job with more sentences than `limits` allow, a
/// chunk message larger than allowed, or more planned bytes in all. CPU-bound on large
/// documents: call it off the runtime.
pub fn plan_chunks(
    spec: &JobSpec,
    split: &SplitOptions,
    limits: &Limits,
) -> Result<ChunkPlan, LiftError> {
    let per_chunk = spec.synthesis.chunk_sentences.max(1) as usize;
    let context_chars = spec.synthesis.left_context_chars as usize;
    let mut sentences = Vec::with_capacity(spec.documents.len());
    let (mut sentence_count, mut chunk_count, mut planned_bytes) = (0usize, 0usize, 0u64);
    for (document_index, document) in spec.documents.iter().enumerate() {
        let ranges = split_sentences(&document.text, split);
        sentence_count += ranges.len();
        if sentence_count > limits.max_sentences {
            return Err(LiftError::InvalidArgument(format!(
                "documents: the job splits into more than {} sentences (document {document_index} \
                 reaches {sentence_count}); submit it as several jobs",
                limits.max_sentences
            )));
        }
        for group in ranges.chunks(per_chunk) {
            let bytes: usize = group
                .iter()
                .map(|range| {
                    range.len() + left_context(&document.text, range.start, context_chars).len()
                })
                .sum::<usize>()
                + document.title.len();
            if bytes > limits.max_chunk_bytes {
                return Err(LiftError::InvalidArgument(format!(
                    "synthesis.chunk_sentences: a chunk of {per_chunk} sentences of document \
                     {document_index} with their left context (synthesis.left_context_chars = \
                     {context_chars}) is {bytes} bytes; at most {} bytes: lower either",
                    limits.max_chunk_bytes
                )));
            }
            planned_bytes += bytes as u64;
            chunk_count += 1;
        }
        if planned_bytes > limits.max_planned_bytes as u64 {
            return Err(LiftError::InvalidArgument(format!(
                "synthesis.left_context_chars: every sentence carries up to {context_chars} \
                 characters of the text before it, and the job's sentences would carry more than \
                 {} bytes in all; lower it or split the documents into several jobs",
                limits.max_planned_bytes
            )));
        }
        sentences.push(ranges);
    }
    Ok(ChunkPlan {
        sentences,
        per_chunk,
        sentence_count: sentence_count as u32,
        chunk_count: chunk_count as u32,
        planned_bytes,
    })
}

impl ChunkPlan {
    /// How many sentences chunk `chunk_index` holds (0 past the end).
    pub fn sentences_in(&self, chunk_index: u32) -> u32 {
        let mut index = chunk_index as usize;
        for ranges in &self.sentences {
            let chunks = ranges.len().div_ceil(self.per_chunk);
            if index < chunks {
                let first = index * self.per_chunk;
                return (ranges.len() - first).min(self.per_chunk) as u32;
            }
            index -= chunks;
        }
        0
    }

    /// The chunks, made one at a time, in order.
    pub fn chunks<'a>(
        &'a self,
        job_id: &'a JobId,
        spec: &'a JobSpec,
    ) -> impl Iterator<Item = SynthChunk> + Send + 'a {
        let context_chars = spec.synthesis.left_context_chars as usize;
        let mut first_sentence = 0u32;
        let groups = self
            .sentences
            .iter()
            .zip(&spec.documents)
            .enumerate()
            .flat_map(move |(document_index, (ranges, document))| {
                let start = first_sentence;
                first_sentence += ranges.len() as u32;
                ranges
                    .chunks(self.per_chunk)
                    .enumerate()
                    .map(move |(group_index, group)| {
                        let first = start + (group_index * self.per_chunk) as u32;
                        let sentences = group
                            .iter()
                            .enumerate()
                            .map(|(offset, range)| SentenceUnit {
                                index: first + offset as u32,
                                document: document_index as u32,
                                left_context: left_context(
                                    &document.text,
                                    range.start,
                                    context_chars,
                                )
                                .to_string(),
                                text: document.text[range.clone()].to_string(),
                            })
                            .collect();
                        (document.title.clone(), sentences)
                    })
            });
        groups
            .enumerate()
            .map(move |(chunk_index, (title, sentences))| SynthChunk {
                job_id: job_id.clone(),
                chunk_index: chunk_index as u32,
                title,
                sentences,
                options: spec.synthesis.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use lift_shared::spec::{Document, SynthesisOptions, TrainingOptions};

    use super::*;

    fn spec(chunk_sentences: u32) -> JobSpec {
        JobSpec {
            documents: vec![
                Document {
                    title: "First".into(),
                    text: "Go one. Go two. Go three. Go four. Go five.".into(),
                },
                Document {
                    title: "Second".into(),
                    text: "Go six. Go seven.".into(),
                },
            ],
            base_model: "default".into(),
            synthesis: SynthesisOptions {
                chunk_sentences,
                left_context_chars: 15,
                ..SynthesisOptions::default()
            },
            training: TrainingOptions::default(),
        }
    }

    #[test]
    fn chunks_group_consecutive_sentences_within_a_document() {
        let id = JobId::parse("j").unwrap();
        let spec = spec(2);
        let plan = plan_chunks(&spec, &SplitOptions::default(), &Limits::default()).unwrap();
        let chunks: Vec<SynthChunk> = plan.chunks(&id, &spec).collect();
        assert_eq!((plan.sentence_count, plan.chunk_count), (7, 4));
        let sizes: Vec<u32> = (0..5).map(|chunk| plan.sentences_in(chunk)).collect();
        assert_eq!(sizes, vec![2, 2, 1, 2, 0]);
        let shape: Vec<(u32, &str, Vec<u32>)> = chunks
            .iter()
            .map(|c| {
                (
                    c.chunk_index,
                    c.title.as_str(),
                    c.sentences.iter().map(|s| s.index).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, "First", vec![0, 1]),
                (1, "First", vec![2, 3]),
                (2, "First", vec![4]),
                (3, "Second", vec![5, 6]),
            ]
        );
        assert_eq!(chunks[3].sentences[0].document, 1);
        assert_eq!(chunks[3].sentences[0].text, "Go six.");
    }

    #[test]
    fn left_context_comes_from_the_same_document() {
        let id = JobId::parse("j").unwrap();
        let spec = spec(4);
        let plan = plan_chunks(&spec, &SplitOptions::default(), &Limits::default()).unwrap();
        let chunks: Vec<SynthChunk> = plan.chunks(&id, &spec).collect();
        let first = &chunks[0].sentences;
        assert_eq!(first[0].left_context, "");
        assert_eq!(first[2].left_context, "Go one. Go two.");
        let second_doc = chunks.last().unwrap();
        assert_eq!(second_doc.sentences[0].left_context, "");
        assert_eq!(second_doc.sentences[1].left_context, "Go six.");
    }

    #[test]
    fn a_job_that_would_expand_past_the_limits_is_refused_naming_the_field() {
        let refused = |spec: &JobSpec, limits: &Limits| match plan_chunks(
            spec,
            &SplitOptions::default(),
            limits,
        ) {
            Err(LiftError::InvalidArgument(message)) => message,
            other => panic!("{other:?}"),
        };
        let mut lines = spec(256);
        lines.documents[0].text = "A\n".repeat(5_000);
        lines.synthesis.left_context_chars = 16_384;
        let limits = Limits::default();
        assert!(plan_chunks(&lines, &SplitOptions::default(), &limits).is_ok());
        let tight = Limits {
            max_sentences: 1_000,
            ..Limits::default()
        };
        assert!(refused(&lines, &tight).starts_with("documents:"));
        let tight = Limits {
            max_chunk_bytes: 100_000,
            ..Limits::default()
        };
        assert!(refused(&lines, &tight).starts_with("synthesis.chunk_sentences:"));
        let tight = Limits {
            max_planned_bytes: 1_000_000,
            ..Limits::default()
        };
        lines.synthesis.chunk_sentences = 1;
        assert!(refused(&lines, &tight).starts_with("synthesis.left_context_chars:"));
    }
}
