//! `lift eval niah`: a needle sentence at several depths of haystacks of several lengths.

use super::*;

/// Returns how many of its jobs did not succeed.
pub(super) async fn run(config: Config, args: NiahArgs) -> anyhow::Result<usize> {
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
    let failed = jobs_failed(&jobs);
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
        "jobs_failed": failed,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let path = write_report_and_plots(&args.lift.out, &report)?;
    println!(
        "{}",
        serde_json::to_string(
            &json!({ "report": path, "summary": report["summary"], "jobs_failed": failed })
        )?
    );
    Ok(failed)
}

/// Key-fact hits and mean F1 of each setting over the cells it could run.
pub(super) fn niah_summary(cells: &[NiahCell]) -> Vec<serde_json::Value> {
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
