//! `lift eval`: does the adapted model know the document? Needle-in-a-haystack, SQuAD and the
//! key-fact dev set (`niah.rs`, `squad.rs`, `facts.rs`), each scored for the base model without the
//! document, the base model with the document in its prompt (where it fits) and LIFT without the
//! document. The data, metrics, haystack builder and plots live in `lift-eval`; this module runs
//! the models and the LIFT jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use lift_engine::{Candidate, Engine, LoraAdapter, RankedReplies, RerankOptions};
use lift_eval::facts::{load_fact_documents, FactDocument, FactQuestion, FactScore};
use lift_eval::haystack::{build_haystack, load_essays};
use lift_eval::metrics::{contains_answer, contains_key_facts, exact_match, token_f1};
use lift_eval::plot::{facts_bars, niah_heatmap, squad_bars};
use lift_eval::report::{NiahCell, SquadScore};
use lift_eval::squad::{load_squad, Grouping, SquadOptions};
use lift_runtime::infra;
use lift_shared::config::Config;
use lift_shared::proto;
use lift_store::Store;
use serde_json::json;

use crate::job_args::JobOptions;

mod facts;
mod niah;
mod squad;
use crate::exit::Exit;
use crate::{ask, client};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Needle in a haystack: a made-up fact hidden in Paul Graham's essays.
    Niah(NiahArgs),
    /// SQuAD v2.0 dev (answerable questions), one LIFT job per group of paragraphs.
    Squad(SquadArgs),
    /// The key-fact dev set (eval/facts): fictional documents, questions on their facts.
    Facts(FactsArgs),
    /// Merge reports of `lift eval niah` or `lift eval squad` that ran side by side (e.g. one
    /// process per cell or group on a GPU machine) into one report, scores and plots.
    Merge {
        /// Directory for the merged report.json and its plots.
        #[arg(long)]
        out: PathBuf,
        /// The reports to merge, all of one kind.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Draw a report's plots again (next to its report.json).
    Plot {
        /// A report.json written by `lift eval niah` or `lift eval squad`.
        report: PathBuf,
    },
}

/// How each LIFT job of an evaluation runs: the job options of `lift run`, with the same
/// defaults, so an evaluation measures what a user gets.
#[derive(Args, Clone)]
pub struct LiftArgs {
    #[command(flatten)]
    pub job: JobOptions,
    /// Where the evaluation data was fetched (scripts/fetch-eval-data.sh); default:
    /// `LIFT_EVAL_DATA_DIR`, else `~/.cache/lift/eval-data`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Directory for report.json and the plots.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the evaluation's jobs (task files, adapters) in this store directory, to read what
    /// was trained afterwards (`jobs/<id>/tasks/*.jsonl`); default: a temporary store, removed
    /// at the end.
    #[arg(long)]
    pub keep_store: Option<PathBuf>,
}

impl LiftArgs {
    fn model(&self) -> String {
        self.job
            .model
            .clone()
            .unwrap_or_else(|| "default".to_string())
    }
}

#[derive(Args)]
pub struct FactsArgs {
    /// A directory of fact documents (`eval/facts/README.md` gives the format).
    #[arg(long, default_value = "eval/facts/dev")]
    pub set: PathBuf,
    /// Only the documents whose file name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A diagnostic: also draw this many sampled answers (temperature 1) per question from the
    /// adapted model, and report every candidate, whether it holds the key fact, and its
    /// log-probability under its question and under a question asking nothing, and the
    /// question's given it under the base model (`lift_engine::rerank`); 0 draws none.
    /// Whether the fact is among the candidates says whether the adapter stored it where the
    /// greedy answer did not find it. At most 32: every draw is a row of one generation batch
    /// per document.
    #[arg(long, default_value_t = 0,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=32))]
    pub candidates: usize,
    #[command(flatten)]
    pub lift: LiftArgs,
}

#[derive(Args)]
pub struct NiahArgs {
    /// Haystack lengths in tokens of the base model's tokenizer.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,2048,4096,8192,16384"
    )]
    pub lengths: Vec<usize>,
    /// Needle depths in percent of the haystack.
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    pub depths: Vec<u32>,
    /// The sentence hidden in the haystack.
    #[arg(
        long,
        default_value = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    )]
    pub needle: String,
    /// What every setting is asked.
    #[arg(long, default_value = "What is the best thing to do in San Francisco?")]
    pub question: String,
    /// Facts an answer must contain to count (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sandwich,Dolores Park")]
    pub key_facts: Vec<String>,
    /// Reference answer for token F1.
    #[arg(
        long,
        default_value = "eat a sandwich and sit in Dolores Park on a sunny day"
    )]
    pub reference: String,
    #[command(flatten)]
    pub lift: LiftArgs,
}

#[derive(Args)]
pub struct SquadArgs {
    /// Groups (LIFT jobs) to evaluate.
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Paragraphs per group; unset groups whole articles.
    #[arg(long)]
    pub paragraphs_per_group: Option<usize>,
    /// Questions asked per group, at most.
    #[arg(long, default_value_t = 10)]
    pub questions_per_group: usize,
    /// Groups to pass over before the first one evaluated, so that processes running side by
    /// side can each take their own groups (merged with `lift eval merge`).
    #[arg(long, default_value_t = 0)]
    pub skip_groups: usize,
    #[command(flatten)]
    pub lift: LiftArgs,
}

const ANSWER_TOKENS: usize = 48;
/// Room the in-context prompt needs besides the document: instructions, question, answer.
const PROMPT_OVERHEAD_TOKENS: usize = 96;

pub async fn run(config: Config, command: EvalCommand) -> anyhow::Result<std::process::ExitCode> {
    let jobs_failed = match command {
        EvalCommand::Niah(args) => niah::run(config, args).await?,
        EvalCommand::Squad(args) => squad::run(config, args).await?,
        EvalCommand::Facts(args) => facts::run(config, args).await?,
        EvalCommand::Merge { out, reports } => merge_reports(&out, &reports)?,
        EvalCommand::Plot { report } => {
            plot_report(&report)?;
            0
        }
    };
    // The report is written either way; a job that did not succeed (out of GPU memory, a
    // diverged loss) left its questions unanswered, so the scores understate LIFT.
    if jobs_failed > 0 {
        eprintln!(
            "eval: {jobs_failed} LIFT job(s) did not succeed: their questions count as unanswered \
             (each job's `error` in the report says why)"
        );
        return Ok(Exit::JobFailed.into());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// How many of a report's jobs (`job_summary`) did not succeed.
fn jobs_failed<'a>(jobs: impl IntoIterator<Item = &'a serde_json::Value>) -> usize {
    jobs.into_iter()
        .filter(|job| job["state"] != "succeeded")
        .count()
}

fn data_dir(config: &Config, args: &LiftArgs) -> PathBuf {
    args.data_dir
        .clone()
        .unwrap_or_else(|| config.eval_data_dir.clone())
}

/// The prompt of the "document in context" setting.
fn context_prompt(document: &str, question: &str) -> String {
    format!(
        "{document}\n\nAnswer the question based on the text above.\nQuestion: {question}\nAnswer:"
    )
}

fn fits_context(engine: &Engine, tokens: usize) -> bool {
    tokens + PROMPT_OVERHEAD_TOKENS + ANSWER_TOKENS <= engine.config().max_position_embeddings
}

fn count_tokens(engine: &Engine, text: &str) -> usize {
    engine.tokenizer.encode(text).map_or(0, |ids| ids.len())
}

fn lift_request(args: &LiftArgs, title: &str, text: &str) -> proto::SubmitJobRequest {
    let mut request = args.job.to_request(vec![proto::Document {
        title: title.to_string(),
        text: text.to_string(),
    }]);
    request.base_model = args.model();
    request
}

/// Submits one job to the in-process lift and waits for it; returns its adapter (None when
/// the job did not succeed, which the report shows as a failed cell) and the job's status.
async fn lift_document(
    addr: std::net::SocketAddr,
    store: &Store,
    engine: &Engine,
    request: proto::SubmitJobRequest,
) -> anyhow::Result<(Option<Arc<LoraAdapter>>, proto::JobStatus)> {
    let mut grpc = client::connect(&addr.to_string(), &client::ClientSettings::loopback()).await?;
    let job_id = grpc
        .submit_job(request)
        .await
        .map_err(client::explain)?
        .into_inner()
        .job_id;
    let status = client::wait_for_end(&mut grpc, &job_id, Duration::from_millis(500)).await?;
    if status.state != proto::JobState::Succeeded as i32 {
        eprintln!(
            "eval: job {job_id} ended {}: {}",
            client::state_name(status.state),
            status.error
        );
        return Ok((None, status));
    }
    let job = ask::load_job_adapter(store, &job_id).await?;
    Ok((Some(Arc::new(engine.load_adapter(&job.files)?)), status))
}

/// The answers of the three settings to one document's questions, and its LIFT job.
struct SettingAnswers {
    base: Vec<String>,
    in_context: Vec<String>,
    /// Whether document and question fit the model's context (else `in_context` is empty).
    context_fits: bool,
    lifted: Vec<String>,
    /// The adapted model's ranked candidates per question, when they were asked for.
    candidates: Vec<RankedReplies>,
    status: proto::JobStatus,
}

/// A document and the questions asked about it.
struct Questioned<'a> {
    title: &'a str,
    text: &'a str,
    questions: &'a [String],
}

/// Asks the questions of the base model without and with the document in its prompt, then
/// LIFTs the document and asks the adapted model without it (drawing `candidates` sampled
/// answers as well when that is not 0).
async fn answer_in_three_settings(
    engine: &Arc<Engine>,
    store: &Store,
    addr: std::net::SocketAddr,
    args: &LiftArgs,
    document: Questioned<'_>,
    candidates: usize,
) -> anyhow::Result<SettingAnswers> {
    let Questioned {
        title,
        text,
        questions,
    } = document;
    let base = ask::answer(engine.clone(), None, title, questions, ANSWER_TOKENS).await?;
    let context_fits = fits_context(engine, count_tokens(engine, text));
    let in_context = if context_fits {
        let prompts = questions.iter().map(|q| context_prompt(text, q)).collect();
        ask::answer_prompts(engine.clone(), None, prompts, ANSWER_TOKENS).await?
    } else {
        vec![String::new(); questions.len()]
    };
    let (adapter, status) =
        lift_document(addr, store, engine, lift_request(args, title, text)).await?;
    let lifted = match &adapter {
        Some(adapter) => {
            ask::answer(
                engine.clone(),
                Some(adapter.clone()),
                title,
                questions,
                ANSWER_TOKENS,
            )
            .await?
        }
        None => vec![String::new(); questions.len()],
    };
    let candidates = match adapter {
        Some(adapter) if candidates > 0 => {
            let options = RerankOptions {
                max_tokens: ANSWER_TOKENS,
                samples: candidates,
                temperature: 1.0,
            };
            ask::ranked_answers(engine.clone(), Some(adapter), title, questions, options).await?
        }
        _ => Vec::new(),
    };
    Ok(SettingAnswers {
        base,
        in_context,
        context_fits,
        lifted,
        candidates,
        status,
    })
}

fn job_summary(status: &proto::JobStatus) -> serde_json::Value {
    json!({
        "job_id": status.job_id,
        "state": client::state_name(status.state),
        "sentences": status.sentences_total,
        "tasks": status.tasks_total,
        "facts_found": status.facts_found,
        "facts_covered": status.facts_covered,
        "steps": status.step,
        "final_loss": status.last_loss,
        "seconds": (status.finished_at_ms - status.created_at_ms) as f64 / 1000.0,
        "error": status.error,
    })
}

/// Loads the model and runs `work` against an in-process lift whose store is a temporary
/// directory (evaluation jobs are throwaway), or `--keep-store`'s.
async fn with_lift<T, Work>(
    config: &Config,
    args: &LiftArgs,
    work: impl FnOnce(Arc<Engine>, Store, std::net::SocketAddr) -> Work,
) -> anyhow::Result<T>
where
    Work: std::future::Future<Output = anyhow::Result<T>>,
{
    let engine = infra::load_engine(config, &args.model()).await?;
    // Removed when dropped, at the end of this function: after the work is done.
    let mut temporary = None;
    let store_dir = match &args.keep_store {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the store {}", dir.display()))?;
            dir.clone()
        }
        None => temporary
            .insert(tempfile::tempdir().context("cannot create a temporary store")?)
            .path()
            .to_path_buf(),
    };
    let store = Store::open(&store_dir.display().to_string(), None)?;
    let mut config = config.clone();
    config.model = args.model();
    let (engine_for_work, store_for_work) = (engine.clone(), store.clone());
    lift_runtime::embedded::with_embedded(&config, engine, store, None, move |addr| {
        work(engine_for_work, store_for_work, addr)
    })
    .await
}

fn write_report(out: &Path, report: &serde_json::Value) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// One report from several of one kind: their cells (NIAH) or answers (SQuAD) and jobs
/// together, the scores computed again over all of them, the plots drawn again.
/// Merges reports of one kind into one; returns how many of their jobs did not succeed.
fn merge_reports(out: &Path, paths: &[PathBuf]) -> anyhow::Result<usize> {
    let reports = paths
        .iter()
        .map(|path| read_report(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kind = reports[0]["eval"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(
        kind == "niah" || kind == "squad",
        "{} is not a report of `lift eval niah` or `lift eval squad`",
        paths[0].display()
    );
    if let Some((path, _)) = paths
        .iter()
        .zip(&reports)
        .find(|(_, report)| report["eval"] != kind.as_str())
    {
        anyhow::bail!(
            "{} is not a {kind} report like {}",
            path.display(),
            paths[0].display()
        );
    }
    let gather = |field: &str| -> Vec<serde_json::Value> {
        reports
            .iter()
            .flat_map(|r| r[field].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let jobs = gather("jobs");
    let failed = jobs_failed(&jobs);
    let mut report = json!({
        "eval": kind,
        "config": reports[0]["config"],
        "merged_from": paths,
        "jobs": jobs,
        "jobs_failed": failed,
        // The processes ran side by side: the merged run took as long as the longest.
        "seconds": reports.iter().filter_map(|r| r["seconds"].as_f64()).fold(0.0, f64::max),
    });
    if kind == "niah" {
        let cells: Vec<NiahCell> = serde_json::from_value(gather("cells").into())
            .context("a NIAH report has malformed cells")?;
        report["summary"] = json!(niah::niah_summary(&cells));
        report["cells"] = json!(cells);
    } else {
        let answers = gather("answers");
        let scores = squad::squad_scores(&answers);
        report["gap_closed"] = json!(squad::gap_closed(&scores));
        report["scores"] = json!(scores);
        report["answers"] = json!(answers);
    }
    let path = write_report_and_plots(out, &report)?;
    let scores = if kind == "niah" { "summary" } else { "scores" };
    println!(
        "{}",
        serde_json::to_string(&json!({
            "report": path,
            "reports": paths.len(),
            "jobs": report["jobs"].as_array().map_or(0, Vec::len),
            "jobs_failed": failed,
            scores: report[scores],
            "gap_closed": report.get("gap_closed"),
        }))?
    );
    Ok(failed)
}

/// Writes the report, then draws its plots next to it: a run whose plots cannot be drawn
/// (no font on a bare GPU machine) keeps its report.
fn write_report_and_plots(out: &Path, report: &serde_json::Value) -> anyhow::Result<PathBuf> {
    let path = write_report(out, report)?;
    draw_plots(report, &path)
        .with_context(|| format!("{} is written, its plots are not", path.display()))?;
    Ok(path)
}

/// Where the plots of a report go: next to it.
fn plot_dir(report: &Path) -> &Path {
    report.parent().unwrap_or(Path::new("."))
}

fn draw_niah(cells: &[NiahCell], out: &Path) -> anyhow::Result<()> {
    for setting in ["base", "base+context", "lift"] {
        let file = format!("niah-{}.png", setting.replace('+', "-"));
        niah_heatmap(cells, setting, &out.join(file))?;
    }
    Ok(())
}

fn read_report(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn plot_report(path: &Path) -> anyhow::Result<()> {
    draw_plots(&read_report(path)?, path)
}

/// Draws the plots of `report`, stored at `path`, next to it.
fn draw_plots(report: &serde_json::Value, path: &Path) -> anyhow::Result<()> {
    match report["eval"].as_str() {
        Some("niah") => {
            let cells: Vec<NiahCell> = serde_json::from_value(report["cells"].clone())
                .with_context(|| format!("{} has no NIAH cells", path.display()))?;
            draw_niah(&cells, plot_dir(path))
        }
        Some("facts") => {
            let documents = report["documents"].as_array().cloned().unwrap_or_default();
            let mut groups = Vec::new();
            let mut rates = Vec::new();
            for document in &documents {
                let scores: Vec<FactScore> = serde_json::from_value(document["scores"].clone())
                    .with_context(|| format!("{} has no fact scores", path.display()))?;
                groups.push(document["genre"].as_str().unwrap_or("").to_string());
                rates.push([scores[0].rate, scores[1].rate, scores[2].rate]);
            }
            let overall: Vec<FactScore> = serde_json::from_value(report["overall"].clone())
                .with_context(|| format!("{} has no overall fact scores", path.display()))?;
            groups.push("overall".to_string());
            rates.push([overall[0].rate, overall[1].rate, overall[2].rate]);
            Ok(facts_bars(
                &groups,
                &rates,
                &plot_dir(path).join("facts.png"),
            )?)
        }
        Some("squad") => {
            let scores: Vec<SquadScore> = serde_json::from_value(report["scores"].clone())
                .with_context(|| format!("{} has no SQuAD scores", path.display()))?;
            Ok(squad_bars(&scores, &plot_dir(path).join("squad.png"))?)
        }
        _ => anyhow::bail!(
            "{} is not a report of `lift eval niah`, `lift eval squad` or `lift eval facts`",
            path.display()
        ),
    }
}

fn lift_config(args: &LiftArgs) -> serde_json::Value {
    let job = &args.job;
    json!({
        "model": args.model(),
        "recipe": format!("{:?}", job.recipe),
        "qa_per_sentence": job.qa_per_sentence,
        "epochs": job.epochs,
        "min_steps": job.min_steps,
        "learning_rate": job.learning_rate,
        "rank": job.rank,
        "target_modules": job.target_modules,
        "batch_size": job.batch_size,
        "cloze": job.cloze,
        "restatements": job.restatements,
        "key_phrases": job.key_phrases,
        "recite_fact_sentences": job.recite_fact_sentences,
        "seed": job.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, report: serde_json::Value) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(&report).unwrap()).unwrap();
        path
    }

    fn squad_answer(gold: &str, lift: &str) -> serde_json::Value {
        json!({
            "gold": [gold], "base": "no idea", "base+context": gold,
            "context_fits": true, "lift": lift,
        })
    }

    #[test]
    fn merged_squad_reports_are_scored_over_all_their_answers() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(
            dir.path(),
            "a.json",
            json!({ "eval": "squad", "config": {}, "seconds": 5.0, "jobs": [{"job_id": "a"}],
                    "answers": [squad_answer("911", "In 911.")] }),
        );
        let second = write(
            dir.path(),
            "b.json",
            json!({ "eval": "squad", "config": {}, "seconds": 7.0, "jobs": [{"job_id": "b"}],
                    "answers": [squad_answer("Rollo", "Charles"), squad_answer("Rouen", "Rouen")] }),
        );
        let out = dir.path().join("merged");
        merge_reports(&out, &[first, second]).unwrap();
        let merged: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(merged["jobs"].as_array().unwrap().len(), 2);
        assert_eq!(merged["seconds"], 7.0);
        let lift = &merged["scores"][2];
        assert_eq!(lift["setting"], "lift");
        assert_eq!(lift["questions"], 3);
        assert!((lift["contains_answer"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((lift["exact_match"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        // Base scores 0 and the context 1 everywhere, so the gap closed is LIFT's F1.
        assert_eq!(merged["gap_closed"], lift["f1"]);
        assert!(out.join("squad.png").exists());
    }

    #[test]
    fn merged_niah_reports_keep_every_cell_and_reports_of_another_kind_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cell = |length: usize, hit: bool| NiahCell {
            setting: "lift".into(),
            length_tokens: length,
            depth_percent: 50,
            answer: String::new(),
            key_facts_hit: hit,
            f1: if hit { 1.0 } else { 0.0 },
            fits_context: true,
        };
        let niah = |name: &str, cells: Vec<NiahCell>| {
            write(
                dir.path(),
                name,
                json!({ "eval": "niah", "config": {}, "jobs": [], "cells": cells }),
            )
        };
        let first = niah("a.json", vec![cell(1024, true)]);
        let second = niah("b.json", vec![cell(2048, false)]);
        let out = dir.path().join("merged");
        merge_reports(&out, &[first.clone(), second]).unwrap();
        let merged: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(merged["cells"].as_array().unwrap().len(), 2);
        assert_eq!(merged["summary"][2]["key_facts_hit"], 1);
        assert_eq!(merged["summary"][2]["hit_share"], 0.5);

        let squad = write(
            dir.path(),
            "s.json",
            json!({ "eval": "squad", "answers": [] }),
        );
        let error = merge_reports(&out, &[first, squad])
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a niah report"), "{error}");
    }
}
