//! `lift eval squad`: SQuAD paragraphs in groups as documents, their questions asked after.

use super::*;

/// Returns how many of its jobs did not succeed.
pub(super) async fn run(config: Config, args: SquadArgs) -> anyhow::Result<usize> {
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
    let failed = jobs_failed(&jobs);
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
        "jobs_failed": failed,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = write_report_and_plots(&args.lift.out, &report)?;
    println!(
        "{}",
        serde_json::to_string(&json!({
            "report": path,
            "scores": report["scores"],
            "gap_closed": report["gap_closed"],
            "jobs_failed": failed,
        }))?
    );
    Ok(failed)
}

pub(super) fn squad_scores(answers: &[serde_json::Value]) -> Vec<SquadScore> {
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
pub(super) fn gap_closed(scores: &[SquadScore]) -> Option<f64> {
    let f1 = |setting: &str| scores.iter().find(|s| s.setting == setting).map(|s| s.f1);
    let (base, context, lift) = (f1("base")?, f1("base+context")?, f1("lift")?);
    (context > base).then(|| (lift - base) / (context - base))
}
