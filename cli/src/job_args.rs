//! Job options shared by `lift run` and `lift submit`, turned into a `SubmitJobRequest`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use lift_shared::error::LiftError;
use lift_shared::proto;
use lift_shared::spec::{SynthesisOptions, TrainingOptions};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Cosine,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// Text or Markdown files to absorb (one document each; a leading `# Title` line, or
    /// else the file name, becomes the title).
    #[arg(required = true)]
    pub documents: Vec<PathBuf>,
    /// Title for every document (overrides the `# Title` line).
    #[arg(long)]
    pub title: Option<String>,
    #[command(flatten)]
    pub options: JobOptions,
}

/// How a job synthesizes and trains: everything of a `SubmitJobRequest` but its documents.
/// The defaults shown are `lift_shared::spec`'s, the same a server applies to a bare request.
#[derive(Debug, Clone, Args)]
pub struct JobOptions {
    /// Base model: `default`, a .gguf file or a Hugging Face model directory.
    #[arg(long)]
    pub model: Option<String>,
    /// How questions are written: fact-first (fact spans found by rule, questions written for
    /// each) suits weak generators, free-qa (the paper's recipe) strong ones; auto picks
    /// fact-first on the built-in engine and free-qa on an OpenAI-compatible generator, falling
    /// back to fact-first for each sentence free-qa gives nothing usable for; templates is
    /// fact-first with rule-built questions only (no generator call).
    #[arg(long, value_enum, default_value_t = RecipeArg::Auto)]
    pub recipe: RecipeArg,
    /// Question/answer pairs per sentence (free-qa), or generated questions per fact
    /// (fact-first).
    #[arg(long, default_value_t = SYNTHESIS.qa_per_sentence, value_parser = clap::value_parser!(u32).range(1..))]
    pub qa_per_sentence: u32,
    /// Sentences per synthesis work item.
    #[arg(long, default_value_t = SYNTHESIS.chunk_sentences)]
    pub chunk_sentences: u32,
    /// Characters of preceding text the generator sees.
    #[arg(long, default_value_t = SYNTHESIS.left_context_chars)]
    pub left_context_chars: u32,
    /// Generator sampling temperature.
    #[arg(long, default_value_t = SYNTHESIS.temperature)]
    pub temperature: f32,
    /// Also train on rule-based cloze tasks.
    #[arg(long)]
    pub cloze: bool,
    /// Fact-first: rewordings of each sentence asked of the generator, each turned into more
    /// questions per fact when it keeps the facts verbatim (0 turns them off).
    #[arg(long, default_value_t = SYNTHESIS.restatements, value_parser = clap::value_parser!(u32).range(0..=8))]
    pub restatements: u32,
    /// Fact-first: key phrases per sentence, each the key of a recall question and of a
    /// question for each fact (0 turns them off).
    #[arg(long, default_value_t = SYNTHESIS.key_phrases, value_parser = clap::value_parser!(u32).range(0..=4))]
    pub key_phrases: u32,
    /// Fact-first: also a passage task (what the text says after the previous sentence) for
    /// each sentence that has facts; sentences without facts always get one.
    #[arg(long, default_value_t = SYNTHESIS.recite_fact_sentences, action = clap::ArgAction::Set)]
    pub recite_fact_sentences: bool,
    /// Epochs over the task cache (more for a small document, see --min-steps).
    #[arg(long, default_value_t = TRAINING.epochs, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: u32,
    /// Steps to train at least: a small document's few tasks get extra epochs (up to 10x
    /// --epochs), since a fact seen a handful of times is not recalled.
    #[arg(long, default_value_t = TRAINING.min_steps)]
    pub min_steps: u32,
    /// LoRA rank.
    #[arg(long, default_value_t = TRAINING.rank, value_parser = clap::value_parser!(u32).range(1..))]
    pub rank: u32,
    /// LoRA alpha [default: 2 x rank].
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Projections that get a LoRA pair, comma-separated (q_proj, k_proj, v_proj, o_proj,
    /// gate_proj, up_proj, down_proj) [default: all seven].
    #[arg(long, value_delimiter = ',')]
    pub target_modules: Vec<String>,
    /// AdamW learning rate of the LoRA matrices.
    #[arg(long, default_value_t = TRAINING.learning_rate)]
    pub learning_rate: f64,
    /// Learning-rate schedule; `cosine` keeps the base rate while synthesis runs and decays
    /// to zero over the epochs trained from the task cache.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
    /// Steps over which the learning rate rises linearly from zero.
    #[arg(long, default_value_t = TRAINING.warmup_steps)]
    pub warmup_steps: u32,
    /// Examples per training step.
    #[arg(long, default_value_t = TRAINING.batch_size, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Seed for generation, adapter initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start training only when every sentence is synthesized (no overlap of epoch 1 with
    /// generation); epoch 1 is then shuffled like the later ones.
    #[arg(long)]
    pub train_after_synthesis: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecipeArg {
    Auto,
    FreeQa,
    FactFirst,
    Templates,
}

const SYNTHESIS: SynthesisOptions = SynthesisOptions::DEFAULT;
const TRAINING: TrainingOptions = TrainingOptions::DEFAULT;

/// Splits a leading Markdown `# Title` line off a document.
pub fn title_and_text(path: &std::path::Path, raw: String) -> (String, String) {
    if let Some(first) = raw.lines().next() {
        if let Some(title) = first.strip_prefix("# ") {
            let rest = raw[first.len()..]
                .trim_start_matches(['\r', '\n'])
                .to_string();
            return (title.trim().to_string(), rest);
        }
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    (stem, raw)
}

/// A document file as text, or a sentence saying why it is not.
pub fn document_text(path: &std::path::Path, bytes: Vec<u8>) -> anyhow::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        LiftError::InvalidArgument(format!(
            "{} is not valid UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
        .into()
    })
}

impl JobArgs {
    pub fn to_request(&self) -> anyhow::Result<proto::SubmitJobRequest> {
        let mut documents = Vec::with_capacity(self.documents.len());
        for path in &self.documents {
            let bytes = std::fs::read(path).map_err(|error| {
                LiftError::InvalidArgument(format!("cannot read {}: {error}", path.display()))
            })?;
            let (title, text) = title_and_text(path, document_text(path, bytes)?);
            documents.push(proto::Document {
                title: self.title.clone().unwrap_or(title),
                text,
            });
        }
        Ok(self.options.to_request(documents))
    }
}

impl JobOptions {
    pub fn to_request(&self, documents: Vec<proto::Document>) -> proto::SubmitJobRequest {
        proto::SubmitJobRequest {
            documents,
            base_model: self.model.clone().unwrap_or_default(),
            request_id: String::new(),
            synthesis: Some(proto::SynthesisOptions {
                qa_per_sentence: self.qa_per_sentence,
                left_context_chars: Some(self.left_context_chars),
                chunk_sentences: self.chunk_sentences,
                generator_model: String::new(),
                temperature: Some(self.temperature),
                seed: self.seed,
                cloze_tasks: self.cloze,
                restatements: Some(self.restatements),
                key_phrases: Some(self.key_phrases),
                recite_fact_sentences: Some(self.recite_fact_sentences),
                recipe: match self.recipe {
                    RecipeArg::Auto => proto::QuestionRecipe::Unspecified,
                    RecipeArg::FreeQa => proto::QuestionRecipe::FreeQa,
                    RecipeArg::FactFirst => proto::QuestionRecipe::FactFirst,
                    RecipeArg::Templates => proto::QuestionRecipe::Templates,
                } as i32,
            }),
            training: Some(proto::TrainingOptions {
                rank: self.rank,
                // 0: the server's 2 x rank.
                alpha: self.alpha.unwrap_or(0.0),
                target_modules: self.target_modules.clone(),
                learning_rate: self.learning_rate,
                schedule: match self.schedule {
                    ScheduleArg::Constant => proto::Schedule::Constant,
                    ScheduleArg::Cosine => proto::Schedule::Cosine,
                } as i32,
                warmup_steps: Some(self.warmup_steps),
                epochs: self.epochs,
                batch_size: self.batch_size,
                max_grad_norm: None,
                seed: self.seed,
                train_after_synthesis: self.train_after_synthesis,
                min_steps: Some(self.min_steps),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Options {
        #[command(flatten)]
        job: JobOptions,
    }

    fn training(args: &[&str]) -> proto::TrainingOptions {
        let options = Options::try_parse_from(std::iter::once("lift").chain(args.iter().copied()))
            .expect("valid options");
        options
            .job
            .to_request(Vec::new())
            .training
            .expect("training options")
    }

    #[test]
    fn target_modules_are_a_comma_separated_list_and_default_to_all() {
        assert!(training(&[]).target_modules.is_empty());
        assert_eq!(
            training(&["--target-modules", "gate_proj,up_proj,down_proj"]).target_modules,
            ["gate_proj", "up_proj", "down_proj"]
        );
    }
}
