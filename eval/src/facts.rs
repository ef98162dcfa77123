//! The key-fact dev set: fictional documents written for lift (`eval/facts/`), each with
//! questions whose answers are short facts of the document. A question counts as answered when
//! the answer contains one of its key fact's written forms (SQuAD normalisation, see
//! `metrics::contains_key_facts`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::contains_key_facts;
use crate::EvalError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactDocument {
    pub title: String,
    pub genre: String,
    pub text: String,
    pub questions: Vec<FactQuestion>,
    /// The file it came from (set by the loader).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactQuestion {
    pub question: String,
    /// A reference answer, for reading reports.
    pub answer: String,
    /// Written forms of the one key fact; any of them in an answer counts.
    pub key_fact: Vec<String>,
    /// Asked in other words than the document's.
    pub reworded: bool,
}

impl FactQuestion {
    pub fn is_answered_by(&self, answer: &str) -> bool {
        self.key_fact
            .iter()
            .any(|form| contains_key_facts(answer, std::slice::from_ref(form)))
    }
}

impl FactDocument {
    pub fn words(&self) -> usize {
        self.text.split_whitespace().count()
    }
}

/// Every `*.toml` document of a directory, in file-name order.
pub fn load_fact_documents(dir: &Path) -> Result<Vec<FactDocument>, EvalError> {
    let missing = |detail: String| EvalError::DataMissing {
        path: dir.display().to_string(),
        detail,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| missing(e.to_string()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(missing("no .toml documents".to_string()));
    }
    paths.iter().map(|path| load_fact_document(path)).collect()
}

pub fn load_fact_document(path: &Path) -> Result<FactDocument, EvalError> {
    let malformed = |detail: String| EvalError::DataMalformed {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| malformed(e.to_string()))?;
    let mut document: FactDocument = toml::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    if document.questions.is_empty() || document.text.trim().is_empty() {
        return Err(malformed("a document needs text and questions".to_string()));
    }
    if let Some(question) = document.questions.iter().find(|q| q.key_fact.is_empty()) {
        return Err(malformed(format!(
            "question {:?} has no key fact",
            question.question
        )));
    }
    document.path = path.to_path_buf();
    Ok(document)
}

/// Key-fact rates of one setting (`base`, `base+context`, `lift`) over some questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactScore {
    pub setting: String,
    pub questions: usize,
    pub answered: usize,
    pub rate: f64,
    /// The same over the questions asked in other words than the document's.
    pub reworded_questions: usize,
    pub reworded_answered: usize,
}

impl FactScore {
    /// Scores `(question, answer)` pairs of one setting.
    pub fn of<'a>(
        setting: &str,
        answers: impl IntoIterator<Item = (&'a FactQuestion, &'a str)>,
    ) -> Self {
        let mut score = Self {
            setting: setting.to_string(),
            questions: 0,
            answered: 0,
            rate: 0.0,
            reworded_questions: 0,
            reworded_answered: 0,
        };
        for (question, answer) in answers {
            let hit = question.is_answered_by(answer);
            score.questions += 1;
            score.answered += usize::from(hit);
            if question.reworded {
                score.reworded_questions += 1;
                score.reworded_answered += usize::from(hit);
            }
        }
        score.rate = if score.questions == 0 {
            0.0
        } else {
            score.answered as f64 / score.questions as f64
        };
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(forms: &[&str], reworded: bool) -> FactQuestion {
        FactQuestion {
            question: "How many paddles did the wheel carry?".to_string(),
            answer: forms[0].to_string(),
            key_fact: forms.iter().map(|f| f.to_string()).collect(),
            reworded,
        }
    }

    #[test]
    fn any_written_form_of_the_fact_counts() {
        let paddles = question(&["forty-eight", "48"], true);
        assert!(paddles.is_answered_by("It carried 48 paddles."));
        assert!(paddles.is_answered_by("Forty-eight paddles of elm."));
        assert!(!paddles.is_answered_by("It carried 84 paddles."));
        assert!(!paddles.is_answered_by("forty paddles"));
    }

    #[test]
    fn scores_count_reworded_questions_apart() {
        let (a, b) = (question(&["1765"], true), question(&["Coyle"], false));
        let score = FactScore::of(
            "lift",
            [(&a, "In 1765."), (&b, "Matthias Doyle designed it.")],
        );
        assert_eq!((score.questions, score.answered), (2, 1));
        assert_eq!((score.reworded_questions, score.reworded_answered), (1, 1));
        assert!((score.rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_dev_set_loads_and_every_key_fact_is_in_its_document() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("facts/dev");
        let documents = load_fact_documents(&dir).unwrap();
        assert!(documents.len() >= 10);
        for document in &documents {
            assert!(
                (300..=3000).contains(&document.words()),
                "{}",
                document.title
            );
            assert!(document.questions.len() >= 5, "{}", document.title);
            for question in &document.questions {
                let in_text = question.is_answered_by(&document.text);
                assert!(in_text, "{}: {:?}", document.title, question.key_fact);
            }
        }
    }
}
