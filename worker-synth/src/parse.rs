//! Strict parsing of generator replies into question/answer pairs. Three shapes are accepted,
//! because servers differ in what they enforce: a JSON object `{"pairs": [...]}` (what the JSON
//! schema asks for), a bare JSON array of pairs (what `json_object` mode and unconstrained models
//! often write), and the `Question: ... Answer: ...` text of the built-in few-shot recipe.
//! Everything else is counted as dropped, with the reason, so a bad generator shows in metrics.

use std::collections::HashSet;

use serde::Deserialize;

use crate::generator::RawReply;

/// A validated pair, trimmed and with whitespace collapsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaPair {
    pub question: String,
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Longer answers are dropped: LIFT trains on short factual answers, and a long one is
    /// usually the model restating its context.
    pub max_answer_chars: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_answer_chars: 300,
        }
    }
}

/// Why pairs were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// A reply (or an entry of it) in none of the accepted shapes.
    pub malformed: u32,
    pub empty_field: u32,
    pub not_a_question: u32,
    pub answer_too_long: u32,
    pub duplicate: u32,
    /// Answers the grounding check found unsupported by the source text (see `ground`).
    pub ungrounded: u32,
    /// Rewordings of a sentence that invent or lose its facts (see `restate`).
    pub unusable_rewording: u32,
}

impl DropCounts {
    pub fn total(&self) -> u32 {
        self.malformed
            + self.empty_field
            + self.not_a_question
            + self.answer_too_long
            + self.duplicate
            + self.ungrounded
            + self.unusable_rewording
    }

    /// `malformed 3, not a question 1`, naming only what occurred (`nothing` if none).
    pub fn describe(&self) -> String {
        let counts = [
            ("malformed", self.malformed),
            ("empty field", self.empty_field),
            ("not a question", self.not_a_question),
            ("answer too long", self.answer_too_long),
            ("duplicate", self.duplicate),
            ("ungrounded", self.ungrounded),
            ("unusable rewording", self.unusable_rewording),
        ];
        let parts: Vec<String> = counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        if parts.is_empty() {
            "no replies".to_string()
        } else {
            parts.join(", ")
        }
    }

    pub fn add(&mut self, other: &DropCounts) {
        self.malformed += other.malformed;
        self.empty_field += other.empty_field;
        self.not_a_question += other.not_a_question;
        self.answer_too_long += other.answer_too_long;
        self.duplicate += other.duplicate;
        self.ungrounded += other.ungrounded;
        self.unusable_rewording += other.unusable_rewording;
    }
}

/// Accumulates the pairs of several replies about one sentence (the built-in backend samples
/// several), dropping invalid ones and repeats across replies.
#[derive(Debug, Default)]
pub struct PairCollector {
    limits: ParseLimits,
    seen_questions: HashSet<String>,
    pairs: Vec<QaPair>,
    dropped: DropCounts,
}

impl PairCollector {
    pub fn new(limits: ParseLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    pub fn add_reply(&mut self, reply: &RawReply) {
        match extract_candidates(&reply.text) {
            Some(candidates) => {
                for candidate in candidates {
                    self.add_candidate(candidate);
                }
            }
            None => self.dropped.malformed += 1,
        }
    }

    pub fn pairs(&self) -> &[QaPair] {
        &self.pairs
    }

    pub fn dropped(&self) -> DropCounts {
        self.dropped
    }

    pub fn into_parts(self) -> (Vec<QaPair>, DropCounts) {
        (self.pairs, self.dropped)
    }

    fn add_candidate(&mut self, candidate: Candidate) {
        let Candidate::Pair { question, answer } = candidate else {
            self.dropped.malformed += 1;
            return;
        };
        let question = collapse_whitespace(&question);
        let answer = collapse_whitespace(&answer);
        if question.is_empty() || answer.is_empty() {
            self.dropped.empty_field += 1;
            return;
        }
        if !looks_like_question(&question) {
            self.dropped.not_a_question += 1;
            return;
        }
        if answer.chars().count() > self.limits.max_answer_chars {
            self.dropped.answer_too_long += 1;
            return;
        }
        if !self.seen_questions.insert(question_key(&question)) {
            self.dropped.duplicate += 1;
            return;
        }
        self.pairs.push(QaPair { question, answer });
    }
}

/// Parses one reply on its own (convenience over `PairCollector`).
pub fn parse_reply(reply: &RawReply, limits: ParseLimits) -> (Vec<QaPair>, DropCounts) {
    let mut collector = PairCollector::new(limits);
    collector.add_reply(reply);
    collector.into_parts()
}

enum Candidate {
    Pair {
        question: String,
        answer: String,
    },
    /// An entry that is not a question/answer pair (a JSON entry without both string fields,
    /// a `Question:` without its `Answer:`).
    Malformed,
}

#[derive(Deserialize)]
struct PairsObject {
    pairs: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct JsonPair {
    question: String,
    answer: String,
}

/// Splits a reply into candidate pairs, or `None` when it has none of the accepted shapes.
fn extract_candidates(text: &str) -> Option<Vec<Candidate>> {
    let body = strip_code_fence(text.trim());
    if body.starts_with('{') || body.starts_with('[') {
        return extract_json_candidates(body);
    }
    let candidates = extract_text_candidates(body);
    (!candidates.is_empty()).then_some(candidates)
}

fn extract_json_candidates(body: &str) -> Option<Vec<Candidate>> {
    let entries = if body.starts_with('{') {
        serde_json::from_str::<PairsObject>(body).ok()?.pairs
    } else {
        serde_json::from_str::<Vec<serde_json::Value>>(body).ok()?
    };
    let candidates = entries
        .into_iter()
        .map(|entry| match serde_json::from_value::<JsonPair>(entry) {
            Ok(pair) => Candidate::Pair {
                question: pair.question,
                answer: pair.answer,
            },
            Err(_) => Candidate::Malformed,
        })
        .collect();
    Some(candidates)
}

/// Models often wrap JSON in a Markdown fence even when told not to.
fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let after_language = rest.find('\n').map_or("", |newline| &rest[newline + 1..]);
    after_language
        .trim_end()
        .strip_suffix("```")
        .unwrap_or(after_language)
        .trim()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Question,
    Answer,
}

/// Reads `Question: ... Answer: ...` blocks; a field runs until the next label, so multi-line
/// answers survive, and labels may carry list markers or Markdown bold (`1. **Question:**`).
fn extract_text_candidates(body: &str) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    let mut question: Option<String> = None;
    let mut answer: Option<String> = None;
    let mut current: Option<Field> = None;

    let mut finish = |question: &mut Option<String>, answer: &mut Option<String>| match (
        question.take(),
        answer.take(),
    ) {
        (Some(q), Some(a)) => candidates.push(Candidate::Pair {
            question: q,
            answer: a,
        }),
        (None, None) => {}
        _ => candidates.push(Candidate::Malformed),
    };

    for line in body.lines() {
        for (field, content) in split_labels(line) {
            match field {
                Some(Field::Question) => {
                    finish(&mut question, &mut answer);
                    question = Some(content.to_string());
                    current = Some(Field::Question);
                }
                Some(Field::Answer) => {
                    if answer.is_some() {
                        finish(&mut question, &mut answer);
                    }
                    answer = Some(content.to_string());
                    current = Some(Field::Answer);
                }
                None => {
                    let target = match current {
                        Some(Field::Question) => question.as_mut(),
                        Some(Field::Answer) => answer.as_mut(),
                        None => None,
                    };
                    if let Some(text) = target {
                        text.push('\n');
                        text.push_str(content);
                    }
                }
            }
        }
    }
    finish(&mut question, &mut answer);
    candidates
}

/// Splits one line into labelled parts: `Question: X Answer: Y` on one line gives two parts.
fn split_labels(line: &str) -> Vec<(Option<Field>, &str)> {
    let Some((field, rest)) = leading_label(line) else {
        return vec![(None, line)];
    };
    if field == Field::Question {
        if let Some((question, answer)) = find_inline_answer_label(rest) {
            return vec![
                (Some(Field::Question), question),
                (Some(Field::Answer), answer),
            ];
        }
    }
    vec![(Some(field), rest)]
}

/// A `Question:`/`Answer:` label at the start of a line, after list markers and bold markers.
fn leading_label(line: &str) -> Option<(Field, &str)> {
    let stripped = line.trim_start_matches(|c: char| {
        c.is_whitespace() || c.is_ascii_digit() || matches!(c, '-' | '*' | '#' | '.' | ')')
    });
    for (name, field) in [("question", Field::Question), ("answer", Field::Answer)] {
        let Some(head) = stripped.get(..name.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(name) {
            continue;
        }
        let after_name = stripped[name.len()..].trim_start_matches('*');
        if let Some(after_colon) = after_name.strip_prefix(':') {
            return Some((field, after_colon.trim_start_matches('*')));
        }
    }
    None
}

/// `Answer:` inside a line, for replies that put the pair on one line.
fn find_inline_answer_label(text: &str) -> Option<(&str, &str)> {
    let lower = text.to_ascii_lowercase();
    let position = lower.find("answer:")?;
    let before = text[..position].trim_end_matches('*');
    let after = text[position + "answer:".len()..].trim_start_matches('*');
    Some((before, after))
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

const WH_WORDS: &[&str] = &[
    "what", "who", "whom", "whose", "when", "where", "why", "how", "which",
];

/// Words that open a yes/no or choice question; they count only at the start.
const AUXILIARY_OPENERS: &[&str] = &[
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would", "should",
    "has", "have", "had", "may", "might", "must", "shall",
];

fn looks_like_question(question: &str) -> bool {
    if question.contains('?') {
        return true;
    }
    let mut words = question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase);
    let Some(first) = words.next() else {
        return false;
    };
    AUXILIARY_OPENERS.contains(&first.as_str())
        || WH_WORDS.contains(&first.as_str())
        || words.any(|word| WH_WORDS.contains(&word.as_str()))
}

/// Questions that differ only in case, punctuation or spacing are the same question.
fn question_key(question: &str) -> String {
    question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> RawReply {
        RawReply {
            text: text.to_string(),
        }
    }

    fn parse(text: &str) -> (Vec<QaPair>, DropCounts) {
        parse_reply(&reply(text), ParseLimits::default())
    }

    fn pair(question: &str, answer: &str) -> QaPair {
        QaPair {
            question: question.to_string(),
            answer: answer.to_string(),
        }
    }

    #[test]
    fn json_object_with_pairs_is_parsed() {
        let (pairs, dropped) = parse(
            r#"{"pairs": [{"question": " When was the tower built? ", "answer": "In 1889."},
                          {"question": "Who built it?", "answer": "Gustave  Eiffel"}]}"#,
        );
        assert_eq!(
            pairs,
            vec![
                pair("When was the tower built?", "In 1889."),
                pair("Who built it?", "Gustave Eiffel")
            ]
        );
        assert_eq!(dropped.total(), 0);
    }

    #[test]
    fn bare_json_array_and_code_fence_are_parsed() {
        let (pairs, _) =
            parse("```json\n[{\"question\": \"Where is the tower?\", \"answer\": \"Paris\"}]\n```");
        assert_eq!(pairs, vec![pair("Where is the tower?", "Paris")]);
    }

    #[test]
    fn json_entries_without_both_strings_are_malformed() {
        let (pairs, dropped) = parse(
            r#"{"pairs": [{"question": "Where is it?"}, {"question": "Why?", "answer": 3},
                          {"question": "Who?", "answer": "Ann"}]}"#,
        );
        assert_eq!(pairs, vec![pair("Who?", "Ann")]);
        assert_eq!(dropped.malformed, 2);
    }

    #[test]
    fn truncated_json_is_one_malformed_reply() {
        let (pairs, dropped) = parse(r#"{"pairs": [{"question": "Where is"#);
        assert!(pairs.is_empty());
        assert_eq!(dropped.malformed, 1);
    }

    #[test]
    fn prose_without_labels_is_malformed() {
        let (pairs, dropped) = parse("Sure! The sentence is about the Eiffel Tower.");
        assert!(pairs.is_empty());
        assert_eq!(dropped.malformed, 1);
    }

    #[test]
    fn question_answer_text_is_parsed() {
        let (pairs, dropped) = parse(
            "Question: What is the best thing to do in San Francisco?\n\
             Answer: Eating a sandwich and sitting in Dolores Park on a sunny day.",
        );
        assert_eq!(
            pairs,
            vec![pair(
                "What is the best thing to do in San Francisco?",
                "Eating a sandwich and sitting in Dolores Park on a sunny day."
            )]
        );
        assert_eq!(dropped.total(), 0);
    }

    #[test]
    fn numbered_bold_and_single_line_pairs_are_parsed() {
        let (pairs, _) = parse(
            "1. **Question:** Who wrote it?\n**Answer:** Paul Graham\n\
             2. Question: When? Answer: In 2009\n\
             question: Where did he live?\nanswer: In\nCambridge",
        );
        assert_eq!(
            pairs,
            vec![
                pair("Who wrote it?", "Paul Graham"),
                pair("When?", "In 2009"),
                pair("Where did he live?", "In Cambridge"),
            ]
        );
    }

    #[test]
    fn question_without_answer_is_malformed() {
        let (pairs, dropped) = parse("Question: Who wrote it?\nQuestion: When? Answer: 2009");
        assert_eq!(pairs, vec![pair("When?", "2009")]);
        assert_eq!(dropped.malformed, 1);
    }

    #[test]
    fn invalid_pairs_are_dropped_with_their_reason() {
        let long_answer = "word ".repeat(100);
        let text = format!(
            r#"[{{"question": "", "answer": "x"}},
                {{"question": "Tell me about the tower.", "answer": "It is tall."}},
                {{"question": "How tall is the tower?", "answer": "{long_answer}"}},
                {{"question": "Is the tower tall", "answer": "Yes, 330 m."}},
                {{"question": "Name the city where the tower stands.", "answer": "Paris"}}]"#
        );
        let (pairs, dropped) = parse(&text);
        assert_eq!(
            pairs,
            vec![
                pair("Is the tower tall", "Yes, 330 m."),
                pair("Name the city where the tower stands.", "Paris"),
            ]
        );
        assert_eq!(dropped.empty_field, 1);
        assert_eq!(dropped.not_a_question, 1);
        assert_eq!(dropped.answer_too_long, 1);
        assert_eq!(dropped.total(), 3);
    }

    #[test]
    fn duplicates_across_replies_are_dropped() {
        let mut collector = PairCollector::new(ParseLimits::default());
        collector.add_reply(&reply("Question: Who built it?\nAnswer: Eiffel"));
        collector.add_reply(&reply("Question: who built it ?\nAnswer: Gustave Eiffel"));
        collector.add_reply(&reply("Question: When was it built?\nAnswer: 1889"));
        assert_eq!(
            collector.pairs(),
            &[
                pair("Who built it?", "Eiffel"),
                pair("When was it built?", "1889")
            ]
        );
        assert_eq!(collector.dropped().duplicate, 1);
    }
}
