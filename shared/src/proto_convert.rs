//! Conversions between the gRPC messages and lift's own types. Zero-means-default and unset
//! optional fields are resolved here, so everything past the edge sees complete values.

use crate::error::LiftError;
use crate::proto;
use crate::spec::{Document, JobSpec, QuestionRecipe, Schedule, SynthesisOptions, TrainingOptions};
use crate::state::{JobState, JobStatus};

/// Turns a SubmitJob request into a spec with every default filled in. Range checks are
/// [`JobSpec::validate`]'s job; this only rejects what cannot be represented at all.
pub fn spec_from_submit(
    request: proto::SubmitJobRequest,
    default_base_model: &str,
) -> Result<JobSpec, LiftError> {
    let base_model = if request.base_model.trim().is_empty() {
        default_base_model.to_string()
    } else {
        request.base_model
    };
    Ok(JobSpec {
        documents: request
            .documents
            .into_iter()
            .map(|d| Document {
                title: d.title,
                text: d.text,
            })
            .collect(),
        base_model,
        synthesis: synthesis_from_proto(request.synthesis.unwrap_or_default())?,
        training: training_from_proto(request.training.unwrap_or_default())?,
    })
}

fn nonzero_or<T: PartialEq + Default>(value: T, default: T) -> T {
    if value == T::default() {
        default
    } else {
        value
    }
}

fn synthesis_from_proto(options: proto::SynthesisOptions) -> Result<SynthesisOptions, LiftError> {
    let defaults = SynthesisOptions::default();
    Ok(SynthesisOptions {
        qa_per_sentence: nonzero_or(options.qa_per_sentence, defaults.qa_per_sentence),
        left_context_chars: options
            .left_context_chars
            .unwrap_or(defaults.left_context_chars),
        chunk_sentences: nonzero_or(options.chunk_sentences, defaults.chunk_sentences),
        generator_model: options.generator_model,
        temperature: options.temperature.unwrap_or(defaults.temperature),
        seed: options.seed,
        cloze_tasks: options.cloze_tasks,
        restatements: options.restatements.unwrap_or(defaults.restatements),
        key_phrases: options.key_phrases.unwrap_or(defaults.key_phrases),
        recite_fact_sentences: options
            .recite_fact_sentences
            .unwrap_or(defaults.recite_fact_sentences),
        recipe: match proto::QuestionRecipe::try_from(options.recipe) {
            Ok(proto::QuestionRecipe::FreeQa) => QuestionRecipe::FreeQa,
            Ok(proto::QuestionRecipe::FactFirst) => QuestionRecipe::FactFirst,
            Ok(proto::QuestionRecipe::Templates) => QuestionRecipe::Templates,
            Ok(proto::QuestionRecipe::Unspecified) => QuestionRecipe::Auto,
            Err(_) => {
                return Err(LiftError::InvalidArgument(format!(
                    "synthesis.recipe {} is not a known question recipe",
                    options.recipe
                )))
            }
        },
    })
}

fn training_from_proto(options: proto::TrainingOptions) -> Result<TrainingOptions, LiftError> {
    let defaults = TrainingOptions::default();
    let schedule = match proto::Schedule::try_from(options.schedule) {
        Ok(proto::Schedule::Unspecified | proto::Schedule::Constant) => Schedule::Constant,
        Ok(proto::Schedule::Cosine) => Schedule::Cosine,
        Err(_) => {
            return Err(LiftError::InvalidArgument(format!(
                "training.schedule {} is not a known schedule",
                options.schedule
            )))
        }
    };
    let rank = nonzero_or(options.rank, defaults.rank);
    // PEFT's usual pairing: alpha twice the rank, unless the client picked both.
    let default_alpha = if options.rank == 0 {
        defaults.alpha
    } else {
        2.0 * rank as f32
    };
    Ok(TrainingOptions {
        rank,
        alpha: nonzero_or(options.alpha, default_alpha),
        target_modules: options.target_modules,
        learning_rate: nonzero_or(options.learning_rate, defaults.learning_rate),
        schedule,
        warmup_steps: options.warmup_steps.unwrap_or(defaults.warmup_steps),
        epochs: nonzero_or(options.epochs, defaults.epochs),
        batch_size: nonzero_or(options.batch_size, defaults.batch_size),
        max_grad_norm: options.max_grad_norm.unwrap_or(defaults.max_grad_norm),
        seed: options.seed,
        train_after_synthesis: options.train_after_synthesis,
        min_steps: options.min_steps.unwrap_or(defaults.min_steps),
    })
}

/// The request a client sends for `spec`; every option is explicit, so the server's defaults
/// do not matter.
impl From<&JobSpec> for proto::SubmitJobRequest {
    fn from(spec: &JobSpec) -> Self {
        let synthesis = &spec.synthesis;
        let training = &spec.training;
        Self {
            documents: spec
                .documents
                .iter()
                .map(|d| proto::Document {
                    title: d.title.clone(),
                    text: d.text.clone(),
                })
                .collect(),
            base_model: spec.base_model.clone(),
            request_id: String::new(),
            synthesis: Some(proto::SynthesisOptions {
                qa_per_sentence: synthesis.qa_per_sentence,
                left_context_chars: Some(synthesis.left_context_chars),
                chunk_sentences: synthesis.chunk_sentences,
                generator_model: synthesis.generator_model.clone(),
                temperature: Some(synthesis.temperature),
                seed: synthesis.seed,
                cloze_tasks: synthesis.cloze_tasks,
                restatements: Some(synthesis.restatements),
                key_phrases: Some(synthesis.key_phrases),
                recite_fact_sentences: Some(synthesis.recite_fact_sentences),
                recipe: match synthesis.recipe {
                    QuestionRecipe::Auto => proto::QuestionRecipe::Unspecified,
                    QuestionRecipe::FreeQa => proto::QuestionRecipe::FreeQa,
                    QuestionRecipe::FactFirst => proto::QuestionRecipe::FactFirst,
                    QuestionRecipe::Templates => proto::QuestionRecipe::Templates,
                } as i32,
            }),
            training: Some(proto::TrainingOptions {
                rank: training.rank,
                alpha: training.alpha,
                target_modules: training.target_modules.clone(),
                learning_rate: training.learning_rate,
                schedule: match training.schedule {
                    Schedule::Constant => proto::Schedule::Constant,
                    Schedule::Cosine => proto::Schedule::Cosine,
                } as i32,
                warmup_steps: Some(training.warmup_steps),
                epochs: training.epochs,
                batch_size: training.batch_size,
                max_grad_norm: Some(training.max_grad_norm),
                seed: training.seed,
                train_after_synthesis: training.train_after_synthesis,
                min_steps: Some(training.min_steps),
            }),
        }
    }
}

impl From<JobState> for proto::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => Self::Queued,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

impl TryFrom<proto::JobState> for JobState {
    type Error = LiftError;

    fn try_from(state: proto::JobState) -> Result<Self, Self::Error> {
        match state {
            proto::JobState::Queued => Ok(Self::Queued),
            proto::JobState::Running => Ok(Self::Running),
            proto::JobState::Succeeded => Ok(Self::Succeeded),
            proto::JobState::Failed => Ok(Self::Failed),
            proto::JobState::Cancelled => Ok(Self::Cancelled),
            proto::JobState::Unspecified => Err(LiftError::InvalidArgument(
                "job state is unspecified".to_string(),
            )),
        }
    }
}

impl From<&JobStatus> for proto::JobStatus {
    fn from(status: &JobStatus) -> Self {
        Self {
            job_id: status.job_id.to_string(),
            state: proto::JobState::from(status.state) as i32,
            sentences_total: status.sentences_total,
            sentences_synthesized: status.sentences_synthesized,
            sentences_failed: status.sentences_failed,
            chunks_total: status.chunks_total,
            chunks_synthesized: status.chunks_synthesized,
            chunks_failed: status.chunks_failed,
            tasks_total: status.tasks_total,
            pairs_dropped: status.pairs_dropped,
            facts_found: u32::try_from(status.facts_found).unwrap_or(u32::MAX),
            facts_covered: u32::try_from(status.facts_covered).unwrap_or(u32::MAX),
            epoch: status.epoch,
            epochs_total: status.epochs_total,
            step: status.step,
            last_loss: status.last_loss,
            created_at_ms: status.created_at_ms,
            started_at_ms: status.started_at_ms.unwrap_or(0),
            updated_at_ms: status.updated_at_ms,
            finished_at_ms: status.finished_at_ms.unwrap_or(0),
            first_step_at_ms: status.first_step_at_ms.unwrap_or(0),
            last_chunk_at_ms: status.last_chunk_at_ms.unwrap_or(0),
            adapter_uri: status.adapter_uri.clone().unwrap_or_default(),
            error: status.error.clone().unwrap_or_default(),
            trainer: status.trainer.clone().unwrap_or_default(),
            chunk_failures: status
                .chunk_failures
                .iter()
                .map(|f| proto::ChunkFailure {
                    chunk: f.chunk,
                    reason: f.reason.clone(),
                })
                .collect(),
            failed_share_threshold: status.failed_share_threshold,
            seq: status.seq,
            base_model: status.base_model.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::JobId;
    use crate::spec::Limits;

    fn request() -> proto::SubmitJobRequest {
        proto::SubmitJobRequest {
            documents: vec![proto::Document {
                title: "T".into(),
                text: "A sentence.".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn zero_and_unset_fields_take_the_defaults() {
        let spec = spec_from_submit(request(), "default").unwrap();
        assert_eq!(spec.base_model, "default");
        assert_eq!(spec.synthesis, SynthesisOptions::default());
        assert_eq!(spec.training, TrainingOptions::default());
        spec.validate(&Limits::default()).unwrap();
    }

    #[test]
    fn explicit_zeros_survive_where_zero_is_meaningful() {
        let mut req = request();
        req.synthesis = Some(proto::SynthesisOptions {
            temperature: Some(0.0),
            left_context_chars: Some(0),
            ..Default::default()
        });
        req.training = Some(proto::TrainingOptions {
            rank: 64,
            max_grad_norm: Some(0.0),
            ..Default::default()
        });
        let spec = spec_from_submit(req, "default").unwrap();
        assert_eq!(spec.synthesis.temperature, 0.0);
        assert_eq!(spec.synthesis.left_context_chars, 0);
        assert_eq!(spec.training.max_grad_norm, 0.0);
        assert_eq!(spec.training.alpha, 128.0, "alpha follows an explicit rank");
    }

    #[test]
    fn unknown_schedule_is_invalid_argument() {
        let mut req = request();
        req.training = Some(proto::TrainingOptions {
            schedule: 42,
            ..Default::default()
        });
        let err = spec_from_submit(req, "default").unwrap_err();
        assert_eq!(
            err,
            LiftError::InvalidArgument("training.schedule 42 is not a known schedule".into())
        );
    }

    #[test]
    fn spec_round_trips_through_the_request() {
        let mut spec = spec_from_submit(request(), "m").unwrap();
        spec.training.schedule = Schedule::Cosine;
        spec.training.warmup_steps = 10;
        spec.synthesis.temperature = 0.0;
        spec.synthesis.restatements = 3;
        spec.synthesis.key_phrases = 4;
        let back = spec_from_submit(proto::SubmitJobRequest::from(&spec), "other").unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn status_maps_state_and_optional_times() {
        let status = JobStatus::new(JobId::parse("j").unwrap(), "m".into(), 4, 1, 2, 0.5, 7);
        let message = proto::JobStatus::from(&status);
        assert_eq!(message.state(), proto::JobState::Queued);
        assert_eq!(message.started_at_ms, 0);
        assert_eq!(message.last_loss, None);
        assert_eq!(
            JobState::try_from(message.state()).unwrap(),
            JobState::Queued
        );
    }
}
