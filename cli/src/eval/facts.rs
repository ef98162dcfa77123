//! `lift eval facts`: the key-fact dev set (`eval/facts`), documents written for it with
//! questions on short key facts.

use super::*;

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
                                    "question_log_prob": c.question_given_reply.log_prob,
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
/// Weights of log p(question | reply) in the noisy-channel picks of the summary.
const CANDIDATE_QUESTION_WEIGHTS: [f64; 4] = [0.25, 0.5, 1.0, 2.0];

/// Over the questions whose candidates were drawn: how many the greedy answer got, how many
/// have the key fact in some candidate, and how many the best candidate by contrast gets
/// at each baseline weight and by the noisy channel at each question weight
/// (`lift_engine::rerank`).
fn candidates_summary(results: &[FactAnswers]) -> serde_json::Value {
    let drawn: Vec<(&FactQuestion, &RankedReplies)> = results
        .iter()
        .flat_map(|r| r.document.questions.iter().zip(&r.settings.candidates))
        .collect();
    let answered_by = |score: &dyn Fn(&Candidate) -> f64| {
        drawn
            .iter()
            .filter(|(q, ranked)| q.is_answered_by(&ranked.best_by(score).text))
            .count()
    };
    // Per weight, how many the best candidate by `score(candidate, weight)` answers.
    let picks = |weight_key: &str, weights: &[f64], score: fn(&Candidate, f64) -> f64| {
        weights
            .iter()
            .map(|&weight| {
                let answered = answered_by(&|c| score(c, weight));
                json!({ weight_key: weight, "answered": answered })
            })
            .collect::<Vec<_>>()
    };
    let by_weight = picks(
        "baseline_weight",
        &CANDIDATE_BASELINE_WEIGHTS,
        Candidate::contrast,
    );
    let by_channel = picks(
        "question_weight",
        &CANDIDATE_QUESTION_WEIGHTS,
        Candidate::channel,
    );
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
        "best_by_channel": by_channel,
    })
}

/// Returns how many of its jobs did not succeed.
pub(super) async fn run(config: Config, args: FactsArgs) -> anyhow::Result<usize> {
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
    let failed = jobs_failed(results.iter().map(|r| &r.job));
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
        "jobs_failed": failed,
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
            "jobs_failed": failed,
            "documents": per_document,
        }))?
    );
    Ok(failed)
}
