//! Key phrases of a sentence: the runs of content words a reader would use to point at it
//! ("the solar-powered water pump", "the diesel generator"). A question worded unlike the training
//! ones still shares a phrase or two with its sentence; questions keyed by each phrase alone
//! teach the model to find the sentence from any of them, not only from the whole wording
//! the templates copy (see "Questions keyed by a phrase" in docs/results.md).

use crate::facts::{words, FactKind, FactSpan, Word};
use crate::ground::is_content_word;

/// Byte offsets of a key phrase in its sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPhrase {
    pub start: usize,
    pub end: usize,
}

impl KeyPhrase {
    pub fn text<'a>(&self, sentence: &'a str) -> &'a str {
        &sentence[self.start..self.end]
    }
}

/// Words of a key phrase at most: a longer run is a clause, and its last words (the head of a
/// noun phrase) are kept.
const MAX_KEY_WORDS: usize = 4;

/// Content words that point at nothing in particular.
const VAGUE_WORDS: &[&str] = &[
    "also", "first", "last", "many", "much", "new", "now", "old", "same", "several", "still",
    "total", "two", "three", "made", "later", "cent",
];

/// Prepositions and quantifiers that end a phrase; the shared stop words do not list them.
const PHRASE_BREAKS: &[&str] = &[
    "above", "across", "against", "along", "among", "around", "behind", "below", "between",
    "beyond", "despite", "down", "during", "each", "every", "except", "inside", "like", "near",
    "off", "onto", "outside", "per", "since", "through", "toward", "towards", "under", "unlike",
    "until", "upon", "via", "within", "without",
];

/// The sentence's key phrases, most distinctive first: runs of content words, split at stop
/// words, prepositions, punctuation, values (numbers, dates, amounts and codes are what
/// questions ask for, not what they name) and after a name, whose next lowercase word is left
/// out ("Veskar Hut stands" gives "Veskar Hut"); a lone verb form ("installed", "replacing")
/// is no key. Ranked by how many of their words the left context does not have, then by
/// length. At most `limit`.
pub fn key_phrases(
    sentence: &str,
    left_context: &str,
    facts: &[FactSpan],
    limit: usize,
) -> Vec<KeyPhrase> {
    if limit == 0 {
        return Vec::new();
    }
    let context: std::collections::HashSet<String> = words(left_context)
        .iter()
        .map(|word| word.text.to_lowercase())
        .collect();
    let within = |word: &Word<'_>, names: bool| {
        facts.iter().any(|fact| {
            matches!(fact.kind, FactKind::Name | FactKind::Quoted) == names
                && fact.overlaps(word.start, word.end)
        })
    };
    let is_value = |word: &Word<'_>| within(word, false);
    let in_name = |word: &Word<'_>| within(word, true);
    let all = words(sentence);
    let mut runs: Vec<&[Word<'_>]> = Vec::new();
    let mut run_start = 0;
    for (index, word) in all.iter().enumerate() {
        let lower = word.text.to_lowercase();
        let is_key_word = is_content_word(&lower)
            && !VAGUE_WORDS.contains(&lower.as_str())
            && !PHRASE_BREAKS.contains(&lower.as_str())
            && !is_value(word);
        let after_name =
            index > run_start && in_name(&all[index - 1]) && !starts_uppercase(word.text);
        if !is_key_word {
            runs.push(&all[run_start..index]);
            run_start = index + 1;
            continue;
        }
        if after_name {
            // The lowercase word after a name is its verb far more often than a noun.
            runs.push(&all[run_start..index]);
            run_start = index + 1;
            continue;
        }
        if word.ends_clause {
            runs.push(&all[run_start..=index]);
            run_start = index + 1;
        }
    }
    runs.push(&all[run_start..]);

    let mut phrases: Vec<(usize, usize, KeyPhrase)> = runs
        .into_iter()
        .filter(|run| !run.is_empty())
        .map(|run| {
            // "trustees approved": the verb that ends a subject's run is not part of it.
            let end = run.len()
                - run
                    .iter()
                    .rev()
                    .take_while(|word| ends_like_verb(word.text))
                    .count();
            &run[end.saturating_sub(MAX_KEY_WORDS)..end]
        })
        .filter(|run| !run.is_empty())
        .filter(|run| run.len() > 1 || !looks_like_verb_form(run[0].text))
        .map(|run| {
            let new_words = run
                .iter()
                .filter(|word| !context.contains(&word.text.to_lowercase()))
                .count();
            let phrase = KeyPhrase {
                start: run[0].start,
                end: run[run.len() - 1].end,
            };
            (new_words, run.len(), phrase)
        })
        .collect();
    phrases.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then(a.2.start.cmp(&b.2.start)));
    phrases.truncate(limit);
    phrases.into_iter().map(|(_, _, phrase)| phrase).collect()
}

fn starts_uppercase(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

/// A lowercase "-ed" or "-ly" word: a verb or adverb wherever it stands ("-ing" words end
/// noun phrases too: "the old building").
fn ends_like_verb(word: &str) -> bool {
    word.chars().all(char::is_lowercase) && (word.ends_with("ed") || word.ends_with("ly"))
}

/// A lone "-ed", "-ing" or "-ly" word is a verb or an adverb far more often than a thing one
/// asks about; in a run ("sealed bid", "opening hours") it is part of a noun phrase.
fn looks_like_verb_form(word: &str) -> bool {
    ends_like_verb(word) || (word.chars().all(char::is_lowercase) && word.ends_with("ing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::fact_spans;

    fn texts(sentence: &str, left_context: &str, limit: usize) -> Vec<&'static str> {
        let sentence: &'static str = Box::leak(sentence.to_string().into_boxed_str());
        key_phrases(sentence, left_context, &fact_spans(sentence), limit)
            .iter()
            .map(|phrase| phrase.text(sentence))
            .collect()
    }

    #[test]
    fn runs_of_content_words_split_at_stop_words_and_lone_verbs_are_left_out() {
        let sentence =
            "A solar-powered water pump was installed in 2016, replacing the diesel generator.";
        assert_eq!(
            texts(sentence, "", 4),
            vec!["solar-powered water pump", "diesel generator"]
        );
    }

    #[test]
    fn phrases_the_text_before_does_not_have_come_first() {
        let sentence = "The warden of the hut is Sigrun Halvaard.";
        assert_eq!(
            texts(sentence, "The hut sleeps forty.", 3),
            vec!["Sigrun Halvaard", "warden", "hut"]
        );
        assert_eq!(
            texts(sentence, "The hut sleeps forty.", 1),
            vec!["Sigrun Halvaard"]
        );
        assert!(texts(sentence, "", 0).is_empty());
    }

    #[test]
    fn values_prepositions_and_the_verb_after_a_name_end_a_phrase() {
        let sentence = "The Veskar Hut stands at 2,310 metres below Holm Glacier since 2009.";
        assert_eq!(texts(sentence, "", 4), vec!["Veskar Hut", "Holm Glacier"]);
    }

    #[test]
    fn a_long_run_keeps_its_last_words() {
        let sentence = "Regional heritage lottery fund trustees quickly approved it.";
        assert_eq!(
            texts(sentence, "", 1),
            vec!["heritage lottery fund trustees"]
        );
    }
}
