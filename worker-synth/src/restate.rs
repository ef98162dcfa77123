//! Other wordings of a sentence, written by the generator and checked by rule, as sources of
//! templated questions. A fact asked in the sentence's own words only is recalled by those
//! words only (docs/results.md, "The whole dev set"); a small model cannot write good
//! questions for a given answer, but it can restate a sentence, and a restatement that keeps
//! the facts verbatim gives templated questions with other words and another order.

use crate::facts::{fact_spans, words, FactSpan};
use crate::templates::{templated_questions, TemplatedQuestion};

/// A restatement longer than this many times the sentence's words is a ramble, not a rewording.
const MAX_LENGTH_FACTOR: usize = 2;

/// Why a restatement is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Empty, the sentence itself, or much longer than it.
    NotARewording,
    /// It states a name, number or date that the sentence does not: an invented fact.
    NewFact,
    /// None of the facts asked about is in it verbatim.
    NoFactKept,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotARewording => "not a rewording of the sentence",
            Self::NewFact => "states a fact the sentence does not",
            Self::NoFactKept => "keeps none of the facts asked about",
        })
    }
}

/// Templated questions from a restatement, each with the index (into `facts`) of the fact of
/// the original sentence it asks for. Every fact span of the restatement must be one of the
/// sentence's, written the same way, so nothing it adds can become a trained answer.
pub fn restated_questions(
    sentence: &str,
    facts: &[FactSpan],
    restatement: &str,
) -> Result<Vec<(usize, TemplatedQuestion)>, Unusable> {
    let restatement = restatement.trim();
    let sentence_words = words(sentence).len();
    let restated_words = words(restatement).len();
    if restated_words == 0
        || restated_words > sentence_words * MAX_LENGTH_FACTOR
        || normalised(restatement) == normalised(sentence)
    {
        return Err(Unusable::NotARewording);
    }
    let original: Vec<String> = fact_spans(sentence)
        .iter()
        .map(|span| normalised(span.text(sentence)))
        .collect();
    let restated = fact_spans(restatement);
    if restated
        .iter()
        .any(|span| !original.contains(&normalised(span.text(restatement))))
    {
        return Err(Unusable::NewFact);
    }
    let mut questions = Vec::new();
    for span in &restated {
        let text = normalised(span.text(restatement));
        let Some(fact) = facts
            .iter()
            .position(|fact| normalised(fact.text(sentence)) == text)
        else {
            continue;
        };
        questions.extend(
            templated_questions(restatement, span, None)
                .into_iter()
                .map(|question| (fact, question)),
        );
    }
    if questions.is_empty() {
        return Err(Unusable::NoFactKept);
    }
    Ok(questions)
}

/// Words only, lower case: "Ilse  Marrow," and "ilse marrow" are the same.
fn normalised(text: &str) -> String {
    words(text)
        .iter()
        .map(|word| word.text.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTENCE: &str = "The Tarrow Archipelago consists of 117 islands and rocks.";

    fn asked(restatement: &str) -> Result<Vec<(usize, String)>, Unusable> {
        let facts = fact_spans(SENTENCE);
        restated_questions(SENTENCE, &facts, restatement).map(|questions| {
            questions
                .into_iter()
                .map(|(fact, q)| (fact, format!("{} -> {}", q.question, q.answer)))
                .collect()
        })
    }

    #[test]
    fn a_restatement_gives_questions_in_its_own_words() {
        let facts = fact_spans(SENTENCE);
        let count = facts
            .iter()
            .position(|fact| fact.text(SENTENCE).starts_with("117"))
            .unwrap();
        let questions =
            asked("There are 117 islands and rocks in the Tarrow Archipelago.").unwrap();
        let name = facts
            .iter()
            .position(|fact| fact.text(SENTENCE) == "Tarrow Archipelago")
            .unwrap();
        let expected = [
            (
                count,
                "There are how many islands and rocks in the Tarrow Archipelago? -> 117 islands",
            ),
            (
                count,
                "How many islands are there and rocks in the Tarrow Archipelago? -> 117 islands",
            ),
            (
                name,
                "There are 117 islands and rocks in the what? -> Tarrow Archipelago",
            ),
        ]
        .map(|(fact, text)| (fact, text.to_string()));
        assert_eq!(questions, expected);
    }

    #[test]
    fn invented_or_missing_facts_and_copies_are_refused() {
        assert_eq!(
            asked("The Tarrow Archipelago has 118 islands and rocks."),
            Err(Unusable::NewFact)
        );
        assert_eq!(
            asked("It was mapped by Ada Brell in 1917."),
            Err(Unusable::NewFact)
        );
        assert_eq!(
            asked("The archipelago consists of many islands."),
            Err(Unusable::NoFactKept)
        );
        assert_eq!(asked(SENTENCE), Err(Unusable::NotARewording));
        assert_eq!(asked("  "), Err(Unusable::NotARewording));
        let ramble = "The Tarrow Archipelago ".repeat(10);
        assert_eq!(asked(&ramble), Err(Unusable::NotARewording));
    }
}
