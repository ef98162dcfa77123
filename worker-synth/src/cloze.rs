//! Rule-based cloze tasks: blank out a content span of the sentence and ask for it. They need no
//! generator, cannot be invented, and give every sentence at least one task even when the
//! generator wrote nothing usable for it.

use crate::facts::{fact_spans, words, Word};
use crate::ground::is_content_word;

pub const BLANK: &str = "____";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClozeTask {
    pub question: String,
    pub answer: String,
}

/// Up to `max_tasks` cloze tasks for one sentence, one per distinct span, best span first:
/// numbers, dates and amounts, then codes and names (see `facts`), then noun phrases after a
/// determiner.
pub fn cloze_tasks(sentence: &str, max_tasks: usize) -> Vec<ClozeTask> {
    let words = words(sentence);
    // Shorter sentences leave too little around the blank to recall it from.
    if words.len() < 4 {
        return Vec::new();
    }
    let mut facts = fact_spans(sentence);
    facts.sort_by_key(|span| span.kind);
    let mut spans: Vec<(usize, usize)> = facts.iter().map(|s| (s.start, s.end)).collect();
    spans.extend(noun_phrase_spans(&words));

    let mut tasks: Vec<ClozeTask> = Vec::new();
    for (start, end) in spans {
        if tasks.len() >= max_tasks {
            break;
        }
        let answer = &sentence[start..end];
        if tasks.iter().any(|task| task.answer == answer) {
            continue;
        }
        let blanked = format!("{}{BLANK}{}", &sentence[..start], &sentence[end..]);
        tasks.push(ClozeTask {
            question: format!("Fill in the blank: {}", blanked.trim()),
            answer: answer.to_string(),
        });
    }
    tasks
}

const DETERMINERS: &[&str] = &[
    "the", "a", "an", "this", "that", "these", "those", "his", "her", "its", "their", "our",
];

/// Up to three content words after a determiner ("a sunny day" gives "sunny day"), the closest a
/// rule gets to a noun phrase without a tagger.
fn noun_phrase_spans(words: &[Word<'_>]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    for (index, word) in words.iter().enumerate() {
        if word.ends_clause || !DETERMINERS.contains(&word.text.to_lowercase().as_str()) {
            continue;
        }
        let mut phrase: Option<(usize, usize)> = None;
        let mut letters = 0;
        for next in words[index + 1..].iter().take(3) {
            if !is_content_word(&next.text.to_lowercase()) {
                break;
            }
            let start = phrase.map_or(next.start, |(start, _)| start);
            phrase = Some((start, next.end));
            letters += next.text.len();
            if next.ends_clause {
                break;
            }
        }
        if let Some(span) = phrase.filter(|_| letters >= 4) {
            spans.push(span);
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_answer(sentence: &str) -> Option<String> {
        cloze_tasks(sentence, 1)
            .into_iter()
            .next()
            .map(|task| task.answer)
    }

    #[test]
    fn numbers_come_first() {
        let tasks = cloze_tasks("The Eiffel Tower was completed in 1889, in Paris.", 1);
        assert_eq!(
            tasks,
            vec![ClozeTask {
                question: "Fill in the blank: The Eiffel Tower was completed in ____, in Paris."
                    .to_string(),
                answer: "1889".to_string(),
            }]
        );
    }

    #[test]
    fn names_skip_the_opening_function_word() {
        let tasks = cloze_tasks("The Eiffel Tower was completed in 1889, in Paris.", 3);
        let answers: Vec<_> = tasks.iter().map(|task| task.answer.as_str()).collect();
        assert_eq!(answers, vec!["1889", "Eiffel Tower", "Paris"]);
    }

    #[test]
    fn opening_word_alone_is_not_a_name() {
        assert_eq!(
            first_answer("Eating a sandwich in Dolores Park is the best thing to do."),
            Some("Dolores Park".to_string())
        );
    }

    #[test]
    fn noun_phrase_when_no_number_or_name() {
        assert_eq!(
            first_answer("we sat on a sunny bench, then left."),
            Some("sunny bench".to_string())
        );
    }

    #[test]
    fn short_or_contentless_sentences_give_nothing() {
        assert!(cloze_tasks("It rained.", 1).is_empty());
        assert!(cloze_tasks("and so it was that it was", 1).is_empty());
    }

    #[test]
    fn non_ascii_text_keeps_char_boundaries() {
        assert_eq!(
            first_answer("« Zoë went to Zürich », she said in 2004."),
            Some("2004".to_string())
        );
        assert_eq!(
            cloze_tasks("« Zoë went to Zürich », she said.", 2)
                .into_iter()
                .map(|task| task.answer)
                .collect::<Vec<_>>(),
            vec!["Zürich".to_string()]
        );
    }
}
