//! `lift ask`: answer with the base model plus a job's adapter, no document in the prompt.

use std::sync::Arc;

use anyhow::Context;
use lift_engine::{
    ChatMessage, ContrastPrompt, Engine, GenerationRequest, LoraAdapter, PeftFiles, RankedReplies,
    RerankOptions, SamplingParams,
};
use lift_shared::error::LiftError;
use lift_shared::protocol::qa_prompt;
use lift_shared::spec::JobSpec;
use lift_store::{layout, Store};

use crate::client_commands::{not_in_store, parse_job_id};

pub struct JobAdapter {
    pub spec: JobSpec,
    pub files: PeftFiles,
}

impl JobAdapter {
    /// The title LIFT's prompt names: the job's first document's (training used each
    /// task's own document title).
    pub fn title(&self) -> String {
        self.spec
            .documents
            .first()
            .map(|d| d.title.clone())
            .unwrap_or_default()
    }
}

/// The job's spec and final adapter files from the store.
pub async fn load_job_adapter(store: &Store, job: &str) -> anyhow::Result<JobAdapter> {
    let job = parse_job_id(job)?;
    let spec: JobSpec = store
        .get_json(&layout::spec(&job))
        .await?
        .ok_or_else(|| not_in_store(&job, store))?;
    let Some(adapter) = store.published_adapter(&job).await? else {
        return Err(LiftError::NotFound(format!(
            "job {job} has no adapter yet (it has not succeeded); see `lift status {job}`"
        ))
        .into());
    };
    Ok(JobAdapter {
        spec,
        files: PeftFiles {
            safetensors: adapter.weights.to_vec(),
            config_json: adapter.config.to_vec(),
        },
    })
}

/// Greedy answers to LIFT-style prompts, one batch.
pub async fn answer(
    engine: Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    title: &str,
    questions: &[String],
    max_tokens: usize,
) -> anyhow::Result<Vec<String>> {
    let prompts = questions.iter().map(|q| qa_prompt(title, q)).collect();
    answer_prompts(engine, adapter, prompts, max_tokens).await
}

/// LIFT's prompt asking nothing in particular: what a candidate answer is weighed against.
const BASELINE_QUESTION: &str = "What does the text say?";

/// Candidate answers to LIFT-style prompts (the greedy one first), each scored under its
/// question and under a question that asks nothing (`lift_engine::rerank`).
pub async fn ranked_answers(
    engine: Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    title: &str,
    questions: &[String],
    options: RerankOptions,
) -> anyhow::Result<Vec<RankedReplies>> {
    let prompts: Vec<ContrastPrompt> = questions
        .iter()
        .map(|q| ContrastPrompt {
            prompt: qa_prompt(title, q),
            baseline: qa_prompt(title, BASELINE_QUESTION),
            question: q.clone(),
        })
        .collect();
    tokio::task::spawn_blocking(move || engine.rank_replies(adapter.as_deref(), &prompts, &options))
        .await
        .context("generation thread failed")?
        .map_err(Into::into)
}

/// Greedy answers to user prompts, one batch.
pub async fn answer_prompts(
    engine: Arc<Engine>,
    adapter: Option<Arc<LoraAdapter>>,
    prompts: Vec<String>,
    max_tokens: usize,
) -> anyhow::Result<Vec<String>> {
    let requests: Vec<GenerationRequest> = prompts
        .into_iter()
        .map(|prompt| GenerationRequest {
            messages: vec![ChatMessage::new("user", prompt)],
            prefill: String::new(),
            params: SamplingParams {
                max_tokens,
                ..SamplingParams::default()
            },
        })
        .collect();
    let outputs =
        tokio::task::spawn_blocking(move || engine.generate(adapter.as_deref(), &requests))
            .await
            .context("generation thread failed")??;
    Ok(outputs
        .into_iter()
        .map(|o| o.text.trim().to_string())
        .collect())
}
