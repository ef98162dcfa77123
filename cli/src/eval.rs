//! `lift eval`: does the adapted model know the document? Needle-in-a-haystack and SQuAD,
//! each scored for the base model without the document, the base model with the document in
//! its prompt (where it fits) and LIFT without the document. The data, metrics, haystack
//! builder and plots live in `lift-eval`; this module runs the models and the LIFT jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use lift_engine::{Engine, LoraAdapter, RankedReplies, RerankOptions};
use lift_eval::facts::{load_fact_documents, FactDocument, FactQuestion, FactScore};
use lift_eval::haystack::{build_haystack, load_essays};
use lift_eval::metrics::{contains_answer, contains_key_facts, exact_match, token_f1};
use lift_eval::plot::{facts_bars, niah_heatmap, squad_bars};
use lift_eval::report::{NiahCell, SquadScore};
use lift_eval::squad::{load_squad, Grouping, SquadOptions};
use lift_shared::config::Config;
use lift_shared::proto;
use lift_shared::store::Store;
use serde_json::json;

use crate::job_args::JobOptions;
use crate::{ask, client, embedded, infra};

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
    /// log-probability under its question and under a question asking nothing
    /// (`lift_engine::rerank`); 0 draws none. Whether the fact is among the candidates says
    /// whether the adapter stored it where the greedy answer did not find it. At most 32: every
    /// draw is a row of one generation batch per document.
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
    #[arg(
        long,
        default_value = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
    )]
    pub needle: String,
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
    match command {
        EvalCommand::Niah(args) => niah(config, args).await?,
        EvalCommand::Squad(args) => squad(config, args).await?,
        EvalCommand::Facts(args) => facts(config, args).await?,
        EvalCommand::Merge { out, reports } => merge_reports(&out, &reports)?,
        EvalCommand::Plot { report } => plot_report(&report)?,
    }
    Ok(std::process::ExitCode::SUCCESS)
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
/// directory (evaluation jobs are throwaway).
async fn with_lift<T, Work>(
    config: &Config,
    args: &LiftArgs,
    work: impl FnOnce(Arc<Engine>, Store, std::net::SocketAddr) -> Work,
) -> anyhow::Result<T>
where
    Work: std::future::Future<Output = anyhow::Result<T>>,
{
    let engine = infra::load_engine(config, &args.model()).await?;
    let store_dir = tempfile::tempdir().context("cannot create a temporary store")?;
    let store = Store::open(&store_dir.path().display().to_string(), None)?;
    let mut config = config.clone();
    config.model = args.model();
    let (engine_for_work, store_for_work) = (engine.clone(), store.clone());
    embedded::with_embedded(&config, engine, store, None, move |addr| {
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

async fn niah(config: Config, args: NiahArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.lengths.is_empty() && !args.depths.is_empty(),
        "--lengths and --depths need at least one value each"
    );
    anyhow::ensure!(
        args.depths.iter().all(|d| *d <= 100),
        "--depths are percentages, 0 to 100"
    );
    let essays = load_essays(&data_dir(&config, &args.lift).join("paul-graham-essays"))?;
    let started = Instant::now();
    let title = "Essays";
    let args = &args;
    let (cells, jobs) = with_lift(&config, &args.lift, |engine, store, addr| async move {
        let mut cells = Vec::new();
        let mut jobs = Vec::new();
        // Without the document the prompt is the same for every cell: answered once.
        let base = ask::answer(
            engine.clone(),
            None,
            title,
            std::slice::from_ref(&args.question),
            ANSWER_TOKENS,
        )
        .await?
        .remove(0);
        for &length in &args.lengths {
            for &depth in &args.depths {
                let haystack =
                    build_haystack(&essays, &args.needle, length, depth, &|text: &str| {
                        count_tokens(&engine, text)
                    })?;
                eprintln!(
                    "eval niah: {length} tokens, depth {depth} % ({} tokens)",
                    haystack.tokens
                );
                let score = |setting: &str, answer: String, fits: bool| NiahCell {
                    setting: setting.to_string(),
                    length_tokens: length,
                    depth_percent: depth,
                    key_facts_hit: fits && contains_key_facts(&answer, &args.key_facts),
                    f1: if fits {
                        token_f1(&answer, std::slice::from_ref(&args.reference))
                    } else {
                        0.0
                    },
                    answer,
                    fits_context: fits,
                };
                cells.push(score("base", base.clone(), true));
                let fits = fits_context(&engine, haystack.tokens);
                let in_context = if fits {
                    ask::answer_prompts(
                        engine.clone(),
                        None,
                        vec![context_prompt(&haystack.text, &args.question)],
                        ANSWER_TOKENS,
                    )
                    .await?
                    .remove(0)
                } else {
                    String::new()
                };
                cells.push(score("base+context", in_context, fits));
                let (adapter, status) = lift_document(
                    addr,
                    &store,
                    &engine,
                    lift_request(&args.lift, title, &haystack.text),
                )
                .await?;
                let lifted = match adapter {
                    Some(adapter) => ask::answer(
                        engine.clone(),
                        Some(adapter),
                        title,
                        std::slice::from_ref(&args.question),
                        ANSWER_TOKENS,
                    )
                    .await?
                    .remove(0),
                    None => String::new(),
                };
                cells.push(score("lift", lifted, true));
                let mut job = job_summary(&status);
                job["length_tokens"] = json!(length);
                job["depth_percent"] = json!(depth);
                jobs.push(job);
                // Kept current after every cell: a long run that is interrupted keeps what it did.
                write_report(
                    &args.lift.out,
                    &json!({ "eval": "niah", "partial": true, "cells": cells, "jobs": jobs }),
                )?;
            }
        }
        Ok((cells, jobs))
    })
    .await?;

    let summary = niah_summary(&cells);
    let report = json!({
        "eval": "niah",
        "config": {
            "lengths": args.lengths,
            "depths": args.depths,
            "needle": args.needle,
            "question": args.question,
            "key_facts": args.key_facts,
            "reference": args.reference,
            "lift": lift_config(&args.lift),
        },
        "summary": summary,
        "cells": cells,
        "jobs": jobs,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = write_report_and_plots(&args.lift.out, &report)?;
    println!(
        "{}",
        serde_json::to_string(&json!({ "report": path, "summary": report["summary"] }))?
    );
    Ok(())
}

/// Key-fact hits and mean F1 of each setting over the cells it could run.
fn niah_summary(cells: &[NiahCell]) -> Vec<serde_json::Value> {
    ["base", "base+context", "lift"]
        .iter()
        .map(|setting| {
            let scored: Vec<&NiahCell> = cells
                .iter()
                .filter(|c| c.setting == *setting && c.fits_context)
                .collect();
            let hits = scored.iter().filter(|c| c.key_facts_hit).count();
            let share = |total: f64| {
                if scored.is_empty() {
                    0.0
                } else {
                    total / scored.len() as f64
                }
            };
            json!({
                "setting": setting,
                "cells": scored.len(),
                "key_facts_hit": hits,
                "hit_share": share(hits as f64),
                "mean_f1": share(scored.iter().map(|c| c.f1).sum::<f64>()),
            })
        })
        .collect()
}

/// One report from several of one kind: their cells (NIAH) or answers (SQuAD) and jobs
/// together, the scores computed again over all of them, the plots drawn again.
fn merge_reports(out: &Path, paths: &[PathBuf]) -> anyhow::Result<()> {
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
    let mut report = json!({
        "eval": kind,
        "config": reports[0]["config"],
        "merged_from": paths,
        "jobs": jobs,
        // The processes ran side by side: the merged run took as long as the longest.
        "seconds": reports.iter().filter_map(|r| r["seconds"].as_f64()).fold(0.0, f64::max),
    });
    if kind == "niah" {
        let cells: Vec<NiahCell> = serde_json::from_value(gather("cells").into())
            .context("a NIAH report has malformed cells")?;
        report["summary"] = json!(niah_summary(&cells));
        report["cells"] = json!(cells);
    } else {
        let answers = gather("answers");
        let scores = squad_scores(&answers);
        report["gap_closed"] = json!(gap_closed(&scores));
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
            scores: report[scores],
            "gap_closed": report.get("gap_closed"),
        }))?
    );
    Ok(())
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
        "batch_size": job.batch_size,
        "cloze": job.cloze,
        "restatements": job.restatements,
        "key_phrases": job.key_phrases,
        "seed": job.seed,
    })
}

async fn squad(config: Config, args: SquadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.groups > 0 && args.questions_per_group > 0,
        "--groups and --questions-per-group must be at least 1"
    );
    let grouping = match args.paragraphs_per_group {
        Some(0) => anyhow::bail!("--paragraphs-per-group must be at least 1"),
        Some(n) => Grouping::Paragraphs(n),
        None => Grouping::Article,
    };
    let squad_path = data_dir(&config, &args.lift).join("squad.json");
    let mut groups = load_squad(
        &squad_path,
        &SquadOptions {
            grouping,
            limit_groups: Some(args.skip_groups + args.groups),
            limit_questions_per_group: Some(args.questions_per_group),
        },
    )?;
    groups.drain(..args.skip_groups.min(groups.len()));
    anyhow::ensure!(
        !groups.is_empty(),
        "--skip-groups {} passes over every group of {}",
        args.skip_groups,
        squad_path.display()
    );
    let started = Instant::now();
    let args = &args;
    let (answers, jobs) = with_lift(&config, &args.lift, |engine, store, addr| async move {
        let mut answers = Vec::new();
        let mut jobs = Vec::new();
        for group in &groups {
            eprintln!(
                "eval squad: {} ({} questions)",
                group.title,
                group.questions.len()
            );
            let questions: Vec<String> =
                group.questions.iter().map(|q| q.question.clone()).collect();
            let SettingAnswers {
                base,
                in_context,
                context_fits: fits,
                lifted,
                status,
                ..
            } = answer_in_three_settings(
                &engine,
                &store,
                addr,
                &args.lift,
                Questioned {
                    title: &group.title,
                    text: &group.context,
                    questions: &questions,
                },
                0,
            )
            .await?;
            for (i, question) in group.questions.iter().enumerate() {
                answers.push(json!({
                    "group": group.title,
                    "id": question.id,
                    "question": question.question,
                    "gold": question.answers,
                    "base": base[i],
                    "base+context": in_context[i],
                    "context_fits": fits,
                    "lift": lifted[i],
                }));
            }
            let mut job = job_summary(&status);
            job["group"] = json!(group.title);
            jobs.push(job);
        }
        Ok((answers, jobs))
    })
    .await?;

    let scores = squad_scores(&answers);
    let report = json!({
        "eval": "squad",
        "config": {
            "groups": args.groups,
            "paragraphs_per_group": args.paragraphs_per_group,
            "questions_per_group": args.questions_per_group,
            "skip_groups": args.skip_groups,
            "data": squad_path,
            "lift": lift_config(&args.lift),
        },
        "scores": scores,
        "gap_closed": gap_closed(&scores),
        "answers": answers,
        "jobs": jobs,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = write_report_and_plots(&args.lift.out, &report)?;
    println!(
        "{}",
        serde_json::to_string(
            &json!({ "report": path, "scores": report["scores"], "gap_closed": report["gap_closed"] })
        )?
    );
    Ok(())
}

fn squad_scores(answers: &[serde_json::Value]) -> Vec<SquadScore> {
    ["base", "base+context", "lift"]
        .iter()
        .map(|setting| squad_score(answers, setting))
        .collect()
}

fn squad_score(answers: &[serde_json::Value], setting: &str) -> SquadScore {
    let scored: Vec<(&str, Vec<String>)> = answers
        .iter()
        .filter(|a| setting != "base+context" || a["context_fits"] == true)
        .map(|a| {
            let gold = a["gold"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (a[setting].as_str().unwrap_or(""), gold)
        })
        .collect();
    let n = scored.len().max(1) as f64;
    SquadScore {
        setting: setting.to_string(),
        exact_match: scored.iter().map(|(p, g)| exact_match(p, g)).sum::<f64>() / n,
        f1: scored.iter().map(|(p, g)| token_f1(p, g)).sum::<f64>() / n,
        contains_answer: scored
            .iter()
            .map(|(p, g)| contains_answer(p, g))
            .sum::<f64>()
            / n,
        questions: scored.len(),
    }
}

/// Share of the F1 gap between the base model without and with the context that LIFT closes.
fn gap_closed(scores: &[SquadScore]) -> Option<f64> {
    let f1 = |setting: &str| scores.iter().find(|s| s.setting == setting).map(|s| s.f1);
    let (base, context, lift) = (f1("base")?, f1("base+context")?, f1("lift")?);
    (context > base).then(|| (lift - base) / (context - base))
}

/// One document of the fact dev set: its questions answered by the three settings.
struct FactAnswers {
    document: FactDocument,
    settings: SettingAnswers,
    job: serde_json::Value,
}

impl FactAnswers {
    fn scores(&self) -> [FactScore; 3] {
        let questions = &self.document.questions;
        let score = |setting: &str, answers: &[String]| {
            FactScore::of(
                setting,
                questions.iter().zip(answers.iter().map(String::as_str)),
            )
        };
        [
            score("base", &self.settings.base),
            score("base+context", &self.settings.in_context),
            score("lift", &self.settings.lifted),
        ]
    }

    fn to_json(&self) -> serde_json::Value {
        let questions: Vec<_> = self
            .document
            .questions
            .iter()
            .enumerate()
            .map(|(i, question)| {
                let SettingAnswers {
                    base,
                    in_context,
                    lifted,
                    candidates,
                    ..
                } = &self.settings;
                let candidates: Vec<_> = candidates
                    .get(i)
                    .map(|ranked| {
                        ranked
                            .candidates
                            .iter()
                            .map(|c| {
                                json!({
                                    "text": c.text,
                                    "hit": question.is_answered_by(&c.text),
                                    "log_prob": c.given_prompt.log_prob,
                                    "baseline_log_prob": c.given_baseline.log_prob,
                                    "tokens": c.given_prompt.tokens,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "question": question.question,
                    "key_fact": question.key_fact,
                    "reworded": question.reworded,
                    "base": base[i],
                    "base_hit": question.is_answered_by(&base[i]),
                    "base+context": in_context[i],
                    "base+context_hit": question.is_answered_by(&in_context[i]),
                    "lift": lifted[i],
                    "lift_hit": question.is_answered_by(&lifted[i]),
                    "lift_candidates": candidates,
                })
            })
            .collect();
        json!({
            "file": self.document.path,
            "title": self.document.title,
            "genre": self.document.genre,
            "words": self.document.words(),
            "context_fits": self.settings.context_fits,
            "scores": self.scores(),
            "job": self.job,
            "questions": questions,
        })
    }
}

/// Baseline weights the candidates summary picks with (0: by likelihood alone).
const CANDIDATE_BASELINE_WEIGHTS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// Over the questions whose candidates were drawn: how many the greedy answer got, how many
/// have the key fact in some candidate, and how many the best candidate by contrast gets
/// at each baseline weight (`lift_engine::rerank`).
fn candidates_summary(results: &[FactAnswers]) -> serde_json::Value {
    let drawn: Vec<(&FactQuestion, &RankedReplies)> = results
        .iter()
        .flat_map(|r| r.document.questions.iter().zip(&r.settings.candidates))
        .collect();
    let by_weight: Vec<_> = CANDIDATE_BASELINE_WEIGHTS
        .iter()
        .map(|&weight| {
            let answered = drawn
                .iter()
                .filter(|(q, ranked)| q.is_answered_by(&ranked.best(weight).text))
                .count();
            json!({ "baseline_weight": weight, "answered": answered })
        })
        .collect();
    json!({
        "questions": drawn.len(),
        "greedy_answered": drawn
            .iter()
            .filter(|(q, ranked)| q.is_answered_by(&ranked.candidates[0].text))
            .count(),
        "some_candidate_answers": drawn
            .iter()
            .filter(|(q, ranked)| ranked.candidates.iter().any(|c| q.is_answered_by(&c.text)))
            .count(),
        "best_by_contrast": by_weight,
    })
}

async fn facts(config: Config, args: FactsArgs) -> anyhow::Result<()> {
    let mut documents = load_fact_documents(&args.set).with_context(|| {
        format!(
            "cannot load the fact set at {} (run from the lift repository, or pass --set DIR)",
            args.set.display()
        )
    })?;
    if !args.only.is_empty() {
        documents.retain(|document| {
            let name = document
                .path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            args.only.iter().any(|only| name.contains(only.as_str()))
        });
        anyhow::ensure!(
            !documents.is_empty(),
            "--only matches no document of {}",
            args.set.display()
        );
    }
    let started = Instant::now();
    let args = &args;
    let results = with_lift(&config, &args.lift, |engine, store, addr| async move {
        let mut results: Vec<FactAnswers> = Vec::new();
        for document in documents {
            eprintln!(
                "eval facts: {} ({} words, {} questions)",
                document.title,
                document.words(),
                document.questions.len()
            );
            let questions: Vec<String> = document
                .questions
                .iter()
                .map(|q| q.question.clone())
                .collect();
            let settings = answer_in_three_settings(
                &engine,
                &store,
                addr,
                &args.lift,
                Questioned {
                    title: &document.title,
                    text: &document.text,
                    questions: &questions,
                },
                args.candidates,
            )
            .await?;
            let answers = FactAnswers {
                document,
                job: job_summary(&settings.status),
                settings,
            };
            let [_, _, lift] = answers.scores();
            eprintln!(
                "eval facts: {} answered {}/{} after LIFT",
                answers.document.title, lift.answered, lift.questions
            );
            results.push(answers);
            // Kept current after every document: an interrupted run keeps what it did.
            let partial: Vec<_> = results.iter().map(FactAnswers::to_json).collect();
            write_report(
                &args.lift.out,
                &json!({ "eval": "facts", "partial": true, "documents": partial }),
            )?;
        }
        Ok(results)
    })
    .await?;

    let overall: Vec<FactScore> = ["base", "base+context", "lift"]
        .iter()
        .enumerate()
        .map(|(setting, name)| {
            let answers = results.iter().flat_map(|r| {
                let answers = match setting {
                    0 => &r.settings.base,
                    1 => &r.settings.in_context,
                    _ => &r.settings.lifted,
                };
                r.document
                    .questions
                    .iter()
                    .zip(answers.iter().map(String::as_str))
            });
            FactScore::of(name, answers)
        })
        .collect();
    let job_seconds: Vec<f64> = results
        .iter()
        .filter_map(|r| r.job["seconds"].as_f64())
        .collect();
    let candidates = (args.candidates > 0).then(|| candidates_summary(&results));
    let report = json!({
        "eval": "facts",
        "candidates": candidates,
        "config": {
            "set": args.set,
            "documents": results.len(),
            "lift": lift_config(&args.lift),
        },
        "overall": overall,
        "facts_found": results.iter().filter_map(|r| r.job["facts_found"].as_u64()).sum::<u64>(),
        "facts_covered": results.iter().filter_map(|r| r.job["facts_covered"].as_u64()).sum::<u64>(),
        "mean_job_seconds": job_seconds.iter().sum::<f64>() / job_seconds.len().max(1) as f64,
        "documents": results.iter().map(FactAnswers::to_json).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = write_report_and_plots(&args.lift.out, &report)?;
    let per_document: Vec<_> = results
        .iter()
        .map(|r| {
            let [base, context, lift] = r.scores();
            json!({
                "document": r.document.title,
                "base": base.answered,
                "base+context": context.answered,
                "lift": lift.answered,
                "questions": lift.questions,
                "tasks": r.job["tasks"],
                "steps": r.job["steps"],
                "final_loss": r.job["final_loss"],
                "seconds": r.job["seconds"],
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string(&json!({
            "report": path,
            "overall": report["overall"],
            "candidates": report["candidates"],
            "facts_found": report["facts_found"],
            "facts_covered": report["facts_covered"],
            "mean_job_seconds": report["mean_job_seconds"],
            "documents": per_document,
        }))?
    );
    Ok(())
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
