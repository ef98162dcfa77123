//! Fan-out planning: a job's sentences grouped into chunks, one broker message and one task
//! file per chunk. Sentence and chunk indices run across all of the job's documents; a chunk
//! never mixes documents, because it carries one title for the prompt template.

use lift_shared::ids::JobId;
use lift_shared::messages::{SentenceUnit, SynthChunk};
use lift_shared::spec::JobSpec;

use crate::split::{left_context, split_sentences, SplitOptions};

/// Splits every document of `spec` and groups the sentences into chunks of
/// `spec.synthesis.chunk_sentences`. CPU-bound on large documents: call it off the runtime.
pub fn plan_chunks(job_id: &JobId, spec: &JobSpec, split: &SplitOptions) -> Vec<SynthChunk> {
    let per_chunk = spec.synthesis.chunk_sentences.max(1) as usize;
    let context_chars = spec.synthesis.left_context_chars as usize;
    let mut chunks = Vec::new();
    let mut sentence_index = 0u32;
    for (document_index, document) in spec.documents.iter().enumerate() {
        let units: Vec<SentenceUnit> = split_sentences(&document.text, split)
            .into_iter()
            .map(|range| {
                let unit = SentenceUnit {
                    index: sentence_index,
                    document: document_index as u32,
                    left_context: left_context(&document.text, range.start, context_chars)
                        .to_string(),
                    text: document.text[range].to_string(),
                };
                sentence_index += 1;
                unit
            })
            .collect();
        for group in units.chunks(per_chunk) {
            chunks.push(SynthChunk {
                job_id: job_id.clone(),
                chunk_index: chunks.len() as u32,
                title: document.title.clone(),
                sentences: group.to_vec(),
                options: spec.synthesis.clone(),
            });
        }
    }
    chunks
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
                    text: "One. Two. Three. Four. Five.".into(),
                },
                Document {
                    title: "Second".into(),
                    text: "Six. Seven.".into(),
                },
            ],
            base_model: "default".into(),
            synthesis: SynthesisOptions {
                chunk_sentences,
                left_context_chars: 9,
                ..SynthesisOptions::default()
            },
            training: TrainingOptions::default(),
        }
    }

    #[test]
    fn chunks_group_consecutive_sentences_within_a_document() {
        let id = JobId::parse("j").unwrap();
        let chunks = plan_chunks(&id, &spec(2), &SplitOptions::default());
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
        assert_eq!(chunks[3].sentences[0].text, "Six.");
    }

    #[test]
    fn left_context_comes_from_the_same_document() {
        let id = JobId::parse("j").unwrap();
        let chunks = plan_chunks(&id, &spec(4), &SplitOptions::default());
        let first = &chunks[0].sentences;
        assert_eq!(first[0].left_context, "");
        assert_eq!(first[2].left_context, "One. Two.");
        let second_doc = chunks.last().unwrap();
        assert_eq!(second_doc.sentences[0].left_context, "");
        assert_eq!(second_doc.sentences[1].left_context, "Six.");
    }
}
