//! The job specification a client submits, with defaults and validation at the edge.

use serde::{Deserialize, Serialize};

use crate::error::LiftError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Document {
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub documents: Vec<Document>,
    /// `default` (SmolLM2-135M-Instruct from the model cache), a `.gguf` path, or a Hugging Face
    /// model directory.
    pub base_model: String,
    pub synthesis: SynthesisOptions,
    pub training: TrainingOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynthesisOptions {
    pub qa_per_sentence: u32,
    pub left_context_chars: u32,
    /// Sentences per chunk (one broker message and one task file per chunk).
    pub chunk_sentences: u32,
    /// Empty: the worker's configured generator. Otherwise a model name passed to it.
    pub generator_model: String,
    pub temperature: f32,
    pub seed: u64,
    /// Also emit rule-based cloze tasks (no generator needed).
    pub cloze_tasks: bool,
    pub recipe: QuestionRecipe,
    /// Fact-first recipe: rewordings of each sentence asked of the generator; those that keep
    /// the facts verbatim give more questions per fact, in other words than the sentence's.
    /// Off by default: with SmolLM2 writing them they did not beat seed noise on the fact dev
    /// set and cost a third more training steps (docs/results.md).
    pub restatements: u32,
    /// Fact-first recipe: key phrases per sentence (its most distinctive runs of content
    /// words, `worker-synth/src/keys.rs`), each the key of a recall question and of a question
    /// for each fact; a reworded question shares a phrase or two with its sentence. Off by
    /// default: 2 gave 41 % against 38 % on the fact dev set over five seeds, within seed
    /// noise, for 70 % more tasks (docs/results.md).
    pub key_phrases: u32,
    /// Fact-first recipe: a passage task ("What does the text say after <previous
    /// sentence>?" -> the sentence) also for each sentence that has facts, besides their
    /// questions; a sentence without facts always gets one, since nothing else teaches it.
    pub recite_fact_sentences: bool,
}

/// How questions are written (ARCHITECTURE.md, "Absorption with a weak generator").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuestionRecipe {
    /// Fact-first on the built-in engine, free QA on an OpenAI-compatible generator, and
    /// fact-first for each sentence free QA gives nothing usable for.
    #[default]
    Auto,
    /// The paper's recipe: the generator writes whole pairs about each sentence.
    FreeQa,
    /// Fact spans found by rule, questions written for each (by the generator where it
    /// manages, by templates always).
    FactFirst,
    /// Fact-first with templated questions only: synthesis calls no generator.
    Templates,
}

impl SynthesisOptions {
    /// The defaults, as a constant so the CLI's `--help` shows the same values.
    pub const DEFAULT: Self = Self {
        qa_per_sentence: 1,
        left_context_chars: 2048,
        chunk_sentences: 4,
        generator_model: String::new(),
        temperature: 0.2,
        seed: 0,
        cloze_tasks: false,
        recipe: QuestionRecipe::Auto,
        restatements: 0,
        key_phrases: 0,
        recite_fact_sentences: true,
    };
}

impl Default for SynthesisOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingOptions {
    pub rank: u32,
    pub alpha: f32,
    /// Empty means all seven linear projections.
    pub target_modules: Vec<String>,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: u32,
    pub epochs: u32,
    pub batch_size: u32,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Epoch 1 waits for the whole synthesis instead of overlapping it, and is then a shuffled
    /// pass over the task cache like the later epochs.
    pub train_after_synthesis: bool,
    /// Steps to train at least: a small document has few tasks, and a fact seen a handful of
    /// times is not recalled, so it gets extra epochs (at most `MAX_EPOCH_FACTOR` x `epochs`).
    pub min_steps: u32,
}

/// Extra epochs for `min_steps` stop at this multiple of the asked epochs.
pub const MAX_EPOCH_FACTOR: u32 = 10;

impl TrainingOptions {
    /// Epochs to train once the number of steps per epoch is known: `epochs`, or more for a
    /// small task cache to reach `min_steps`.
    pub fn epochs_for(&self, steps_per_epoch: u64) -> u32 {
        let asked = self.epochs.max(1);
        let needed = u64::from(self.min_steps).div_ceil(steps_per_epoch.max(1));
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        needed.clamp(asked, asked.saturating_mul(MAX_EPOCH_FACTOR))
    }
}

impl TrainingOptions {
    /// The defaults, as a constant so the CLI's `--help` shows the same values. Chosen on the
    /// fact dev set (docs/results.md).
    pub const DEFAULT: Self = Self {
        rank: 16,
        alpha: 32.0,
        target_modules: Vec::new(),
        learning_rate: 1e-3,
        schedule: Schedule::Constant,
        warmup_steps: 0,
        epochs: 3,
        batch_size: 4,
        max_grad_norm: 1.0,
        seed: 0,
        train_after_synthesis: false,
        min_steps: 60,
    };
}

impl Default for TrainingOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The linear projections a LoRA adapter can target (the Llama/Qwen2 names PEFT uses).
pub const LORA_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Size limits and option ranges enforced at submit time, before anything is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest gRPC request the server decodes (all documents together).
    pub max_request_bytes: usize,
    pub max_documents: usize,
    pub max_document_bytes: usize,
    pub max_title_chars: usize,
    /// What a job may expand to once split (`coordinator/src/chunk.rs`): sentences, bytes of
    /// one chunk message (RabbitMQ refuses messages over 16 MiB by default), and bytes of
    /// sentence text plus left context over all chunks.
    pub max_sentences: usize,
    pub max_chunk_bytes: usize,
    pub max_planned_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024 * 1024,
            max_documents: 64,
            max_document_bytes: 10 * 1024 * 1024,
            max_title_chars: 512,
            max_sentences: 100_000,
            max_chunk_bytes: 4 * 1024 * 1024,
            max_planned_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Accepted ranges of the options; one place so messages and checks agree.
pub mod ranges {
    use std::ops::RangeInclusive;

    pub const QA_PER_SENTENCE: RangeInclusive<u32> = 1..=20;
    pub const RANK: RangeInclusive<u32> = 1..=512;
    pub const EPOCHS: RangeInclusive<u32> = 1..=100;
    pub const MIN_STEPS: RangeInclusive<u32> = 0..=100_000;
    pub const BATCH_SIZE: RangeInclusive<u32> = 1..=256;
    pub const CHUNK_SENTENCES: RangeInclusive<u32> = 1..=256;
    pub const RESTATEMENTS: RangeInclusive<u32> = 0..=8;
    pub const KEY_PHRASES: RangeInclusive<u32> = 0..=4;
    pub const TEMPERATURE: RangeInclusive<f32> = 0.0..=2.0;
    pub const MAX_LEFT_CONTEXT_CHARS: u32 = 16384;
    pub const MAX_LEARNING_RATE: f64 = 1.0;
}

/// Tells whether a base model can be used. The coordinator cannot see the workers' model
/// cache, so whoever starts it decides what "known" means (embedded mode checks the local
/// cache; a distributed coordinator may accept any name the trainers resolve).
pub trait ModelCatalog: Send + Sync {
    /// `Err` carries a lower-case reason shown to the client.
    fn check(&self, base_model: &str) -> Result<(), String>;
}

impl<F> ModelCatalog for F
where
    F: Fn(&str) -> Result<(), String> + Send + Sync,
{
    fn check(&self, base_model: &str) -> Result<(), String> {
        self(base_model)
    }
}

/// A catalog that accepts every model name; the trainers report unknown ones as a failed job.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAnyModel;

impl ModelCatalog for AcceptAnyModel {
    fn check(&self, _base_model: &str) -> Result<(), String> {
        Ok(())
    }
}

fn invalid(message: String) -> LiftError {
    LiftError::InvalidArgument(message)
}

fn check_range(
    name: &str,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<(), LiftError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(format!(
        "{name} is {value}; it must be in {}..={}",
        range.start(),
        range.end()
    )))
}

impl JobSpec {
    /// Checks sizes and option ranges. The base model is only checked for being present
    /// here; whether it exists is the [`ModelCatalog`]'s call.
    pub fn validate(&self, limits: &Limits) -> Result<(), LiftError> {
        if self.documents.is_empty() {
            return Err(invalid("job has no documents".to_string()));
        }
        if self.documents.len() > limits.max_documents {
            return Err(invalid(format!(
                "job has {} documents; at most {} are allowed",
                self.documents.len(),
                limits.max_documents
            )));
        }
        let mut total_bytes = 0usize;
        for (index, document) in self.documents.iter().enumerate() {
            if document.text.trim().is_empty() {
                return Err(invalid(format!("document {index} is empty")));
            }
            if document.text.len() > limits.max_document_bytes {
                return Err(invalid(format!(
                    "document {index} is {} bytes; at most {} are allowed",
                    document.text.len(),
                    limits.max_document_bytes
                )));
            }
            let title_chars = document.title.chars().count();
            if title_chars > limits.max_title_chars {
                return Err(invalid(format!(
                    "document {index} title is {title_chars} characters; at most {} are allowed",
                    limits.max_title_chars
                )));
            }
            total_bytes += document.text.len() + document.title.len();
        }
        if total_bytes > limits.max_request_bytes {
            return Err(invalid(format!(
                "documents total {total_bytes} bytes; at most {} are allowed",
                limits.max_request_bytes
            )));
        }
        if self.base_model.trim().is_empty() {
            return Err(invalid("base_model is empty".to_string()));
        }
        self.synthesis.validate()?;
        self.training.validate()
    }
}

impl SynthesisOptions {
    pub fn validate(&self) -> Result<(), LiftError> {
        check_range(
            "synthesis.qa_per_sentence",
            self.qa_per_sentence,
            ranges::QA_PER_SENTENCE,
        )?;
        check_range(
            "synthesis.restatements",
            self.restatements,
            ranges::RESTATEMENTS,
        )?;
        check_range(
            "synthesis.key_phrases",
            self.key_phrases,
            ranges::KEY_PHRASES,
        )?;
        check_range(
            "synthesis.chunk_sentences",
            self.chunk_sentences,
            ranges::CHUNK_SENTENCES,
        )?;
        if self.left_context_chars > ranges::MAX_LEFT_CONTEXT_CHARS {
            return Err(invalid(format!(
                "synthesis.left_context_chars is {}; at most {} are allowed",
                self.left_context_chars,
                ranges::MAX_LEFT_CONTEXT_CHARS
            )));
        }
        if !ranges::TEMPERATURE.contains(&self.temperature) {
            return Err(invalid(format!(
                "synthesis.temperature is {}; it must be in 0..=2",
                self.temperature
            )));
        }
        if self.recipe == QuestionRecipe::Templates && self.restatements > 0 {
            return Err(invalid(format!(
                "synthesis.restatements is {}; rewordings come from the generator, which the \
                 templates recipe never calls (use fact_first)",
                self.restatements
            )));
        }
        Ok(())
    }
}

impl TrainingOptions {
    pub fn validate(&self) -> Result<(), LiftError> {
        check_range("training.rank", self.rank, ranges::RANK)?;
        check_range("training.epochs", self.epochs, ranges::EPOCHS)?;
        check_range("training.min_steps", self.min_steps, ranges::MIN_STEPS)?;
        check_range("training.batch_size", self.batch_size, ranges::BATCH_SIZE)?;
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(invalid(format!(
                "training.alpha is {}; it must be a positive number",
                self.alpha
            )));
        }
        // NaN fails both comparisons, so it is rejected too.
        if !(self.learning_rate > 0.0 && self.learning_rate <= ranges::MAX_LEARNING_RATE) {
            return Err(invalid(format!(
                "training.learning_rate is {}; it must be in (0, 1]",
                self.learning_rate
            )));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(invalid(format!(
                "training.max_grad_norm is {}; it must be 0 (no clipping) or positive",
                self.max_grad_norm
            )));
        }
        for (index, module) in self.target_modules.iter().enumerate() {
            if !LORA_TARGET_MODULES.contains(&module.as_str()) {
                return Err(invalid(format!(
                    "training.target_modules[{index}] is {module:?}; known modules are {}",
                    LORA_TARGET_MODULES.join(", ")
                )));
            }
            if self.target_modules[..index].contains(module) {
                return Err(invalid(format!(
                    "training.target_modules lists {module:?} twice"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            documents: vec![Document {
                title: "Essay".to_string(),
                text: "One sentence. Another one.".to_string(),
            }],
            base_model: "default".to_string(),
            synthesis: SynthesisOptions::default(),
            training: TrainingOptions::default(),
        }
    }

    fn message(result: Result<(), LiftError>) -> String {
        match result {
            Err(LiftError::InvalidArgument(message)) => message,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn small_task_caches_train_extra_epochs_up_to_a_cap() {
        let options = TrainingOptions {
            epochs: 3,
            min_steps: 60,
            ..TrainingOptions::default()
        };
        // 40 steps an epoch: the asked 3 epochs are past 60 steps already.
        assert_eq!(options.epochs_for(40), 3);
        // 7 steps an epoch: 9 epochs reach 63 steps.
        assert_eq!(options.epochs_for(7), 9);
        // 1 step an epoch would need 60 epochs; capped at 10 x 3.
        assert_eq!(options.epochs_for(1), 30);
        let no_minimum = TrainingOptions {
            min_steps: 0,
            ..options
        };
        assert_eq!(no_minimum.epochs_for(1), 3);
    }

    #[test]
    fn default_spec_is_valid() {
        spec().validate(&Limits::default()).unwrap();
    }

    #[test]
    fn empty_or_whitespace_document_names_its_index() {
        let mut job = spec();
        job.documents.push(Document {
            title: "b".into(),
            text: " \n\t ".into(),
        });
        assert_eq!(
            message(job.validate(&Limits::default())),
            "document 1 is empty"
        );
    }

    #[test]
    fn document_count_and_sizes_are_limited() {
        let limits = Limits {
            max_documents: 2,
            max_document_bytes: 10,
            max_title_chars: 3,
            max_request_bytes: 1000,
            ..Limits::default()
        };
        let mut job = spec();
        job.documents = vec![];
        assert_eq!(message(job.validate(&limits)), "job has no documents");
        job.documents = vec![
            Document {
                title: "t".into(),
                text: "x".into()
            };
            3
        ];
        assert_eq!(
            message(job.validate(&limits)),
            "job has 3 documents; at most 2 are allowed"
        );
        job.documents = vec![Document {
            title: "t".into(),
            text: "x".repeat(11),
        }];
        assert_eq!(
            message(job.validate(&limits)),
            "document 0 is 11 bytes; at most 10 are allowed"
        );
        job.documents = vec![Document {
            title: "éééé".into(),
            text: "x".into(),
        }];
        assert_eq!(
            message(job.validate(&limits)),
            "document 0 title is 4 characters; at most 3 are allowed"
        );
    }

    #[test]
    fn option_ranges_are_enforced_with_field_names() {
        let limits = Limits::default();
        let mut job = spec();
        job.synthesis.qa_per_sentence = 21;
        assert_eq!(
            message(job.validate(&limits)),
            "synthesis.qa_per_sentence is 21; it must be in 1..=20"
        );
        job = spec();
        job.synthesis.restatements = 9;
        assert_eq!(
            message(job.validate(&limits)),
            "synthesis.restatements is 9; it must be in 0..=8"
        );
        job = spec();
        job.synthesis.recipe = QuestionRecipe::Templates;
        job.synthesis.restatements = 2;
        assert_eq!(
            message(job.validate(&limits)),
            "synthesis.restatements is 2; rewordings come from the generator, which the \
             templates recipe never calls (use fact_first)"
        );
        job.synthesis.restatements = 0;
        assert!(job.validate(&limits).is_ok());
        job = spec();
        job.synthesis.key_phrases = 5;
        assert_eq!(
            message(job.validate(&limits)),
            "synthesis.key_phrases is 5; it must be in 0..=4"
        );
        job = spec();
        job.synthesis.temperature = 2.5;
        assert!(message(job.validate(&limits)).contains("synthesis.temperature"));
        job = spec();
        job.synthesis.left_context_chars = 16385;
        assert!(message(job.validate(&limits)).contains("left_context_chars"));
        job = spec();
        job.synthesis.chunk_sentences = 0;
        assert!(message(job.validate(&limits)).contains("chunk_sentences is 0"));
        job = spec();
        job.training.rank = 513;
        assert!(message(job.validate(&limits)).contains("training.rank is 513"));
        job = spec();
        job.training.epochs = 0;
        assert!(message(job.validate(&limits)).contains("training.epochs"));
        job = spec();
        job.training.batch_size = 257;
        assert!(message(job.validate(&limits)).contains("training.batch_size"));
        for lr in [0.0, -1.0, 1.5, f64::NAN] {
            job = spec();
            job.training.learning_rate = lr;
            assert!(message(job.validate(&limits)).contains("training.learning_rate"));
        }
        job = spec();
        job.training.learning_rate = 1.0;
        job.validate(&limits).unwrap();
    }

    #[test]
    fn target_modules_must_be_known_and_unique() {
        let limits = Limits::default();
        let mut job = spec();
        job.training.target_modules = vec!["q_proj".into(), "lm_head".into()];
        assert!(message(job.validate(&limits)).starts_with("training.target_modules[1]"));
        job.training.target_modules = vec!["q_proj".into(), "q_proj".into()];
        assert_eq!(
            message(job.validate(&limits)),
            "training.target_modules lists \"q_proj\" twice"
        );
    }

    #[test]
    fn empty_base_model_is_rejected() {
        let mut job = spec();
        job.base_model = "  ".into();
        assert_eq!(
            message(job.validate(&Limits::default())),
            "base_model is empty"
        );
    }

    #[test]
    fn closures_are_model_catalogs() {
        let catalog = |name: &str| {
            if name == "default" {
                Ok(())
            } else {
                Err(format!("unknown model {name}"))
            }
        };
        assert!(catalog.check("default").is_ok());
        assert_eq!(catalog.check("x").unwrap_err(), "unknown model x");
        assert!(AcceptAnyModel.check("anything").is_ok());
    }
}
