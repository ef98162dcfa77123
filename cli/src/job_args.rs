//! Job options shared by `lift run` and `lift submit`, turned into a `SubmitJobRequest`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use lift_shared::proto;

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
#[derive(Debug, Clone, Args)]
pub struct JobOptions {
    /// Base model: `default`, a .gguf file or a Hugging Face model directory.
    #[arg(long)]
    pub model: Option<String>,
    /// Question/answer pairs per sentence.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub qa_per_sentence: Option<u32>,
    /// Sentences per synthesis work item.
    #[arg(long)]
    pub chunk_sentences: Option<u32>,
    /// Characters of preceding text the generator sees.
    #[arg(long)]
    pub left_context_chars: Option<u32>,
    /// Generator sampling temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Also train on rule-based cloze tasks.
    #[arg(long)]
    pub cloze: bool,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rank: Option<u32>,
    #[arg(long)]
    pub alpha: Option<f32>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    #[arg(long)]
    pub warmup_steps: Option<u32>,
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Seed for generation, adapter initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start training only when every sentence is synthesized (no overlap of epoch 1 with
    /// generation; for measuring what the pipeline saves).
    #[arg(long)]
    pub train_after_synthesis: bool,
}

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
        anyhow::anyhow!(
            "{} is not valid UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

impl JobArgs {
    pub fn to_request(&self) -> anyhow::Result<proto::SubmitJobRequest> {
        let mut documents = Vec::with_capacity(self.documents.len());
        for path in &self.documents {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
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
                qa_per_sentence: self.qa_per_sentence.unwrap_or(0),
                left_context_chars: self.left_context_chars,
                chunk_sentences: self.chunk_sentences.unwrap_or(0),
                generator_model: String::new(),
                temperature: self.temperature,
                seed: self.seed,
                cloze_tasks: self.cloze,
            }),
            training: Some(proto::TrainingOptions {
                rank: self.rank.unwrap_or(0),
                alpha: self.alpha.unwrap_or(0.0),
                target_modules: Vec::new(),
                learning_rate: self.learning_rate.unwrap_or(0.0),
                schedule: match self.schedule {
                    None => proto::Schedule::Unspecified,
                    Some(ScheduleArg::Constant) => proto::Schedule::Constant,
                    Some(ScheduleArg::Cosine) => proto::Schedule::Cosine,
                } as i32,
                warmup_steps: self.warmup_steps,
                epochs: self.epochs.unwrap_or(0),
                batch_size: self.batch_size.unwrap_or(0),
                max_grad_norm: None,
                seed: self.seed,
                train_after_synthesis: self.train_after_synthesis,
            }),
        }
    }
}
