//! Grounding check: keep an answer only if the source text supports it. Small generators invent
//! (ARCHITECTURE.md, "A 135M model is a weak question writer"), and a model fine-tuned on invented
//! answers learns them as facts of the document. The check is lexical on purpose: cheap,
//! deterministic, and strict about the part that matters most, numbers.

use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundingPolicy {
    /// Share of the answer's content words that must occur in the sentence or its left context.
    pub min_supported_fraction: f32,
}

impl Default for GroundingPolicy {
    fn default() -> Self {
        Self {
            min_supported_fraction: 0.6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Ungrounded {
    /// "Yes", "It is." and the like cannot be checked against the text and teach nothing.
    #[error("answer has no content words")]
    NoContentWords,
    #[error("number {0} is not in the source")]
    NumberNotInSource(String),
    #[error("{supported} of {total} content words are in the source")]
    TooFewSupported { supported: usize, total: usize },
}

/// The words of a source text, normalised once and checked against many answers.
#[derive(Debug, Default)]
pub struct SourceWords {
    numbers: HashSet<String>,
    stems: HashSet<String>,
}

impl SourceWords {
    pub fn new(sentence: &str, left_context: &str) -> Self {
        let mut source = Self::default();
        for text in [sentence, left_context] {
            for token in tokens(text) {
                match token {
                    Token::Number(number) => {
                        source.numbers.insert(number);
                    }
                    Token::Word(word) => {
                        source.stems.insert(stem(&word));
                    }
                }
            }
        }
        source
    }

    pub fn check(&self, answer: &str, policy: GroundingPolicy) -> Result<(), Ungrounded> {
        let mut total = 0usize;
        let mut supported = 0usize;
        for token in tokens(answer) {
            match token {
                Token::Number(number) => {
                    if !self.numbers.contains(&number) {
                        return Err(Ungrounded::NumberNotInSource(number));
                    }
                    total += 1;
                    supported += 1;
                }
                Token::Word(word) if is_content_word(&word) => {
                    total += 1;
                    if self.stems.contains(&stem(&word)) {
                        supported += 1;
                    }
                }
                Token::Word(_) => {}
            }
        }
        if total == 0 {
            return Err(Ungrounded::NoContentWords);
        }
        if (supported as f32) < policy.min_supported_fraction * total as f32 {
            return Err(Ungrounded::TooFewSupported { supported, total });
        }
        Ok(())
    }
}

/// Why a question was dropped: it names what the document does not, or is not about its
/// sentence (the small generator's "When was the Eiffel Tower built?" about a lighthouse).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnfoundedQuestion {
    #[error("question names {0}, which the source does not")]
    UnknownName(String),
    #[error("question has number {0}, which the source does not")]
    NumberNotInSource(String),
    #[error("question shares no content word with its sentence")]
    OffTopic,
    #[error("question gives its answer away")]
    GivesAnswerAway,
    #[error("question names nothing of the clause its answer is")]
    NotAboutItsClause,
    #[error("question has words the source does not: {0}")]
    InventedWords(String),
}

/// Content words of a question that the source lacks, up to which it is a rewording: a small
/// generator that writes more has made up what it asks about ("Who designed the north wing?").
const MAX_NEW_QUESTION_WORDS: usize = 1;

impl SourceWords {
    fn has_word(&self, word: &str) -> bool {
        self.stems.contains(&stem(word))
    }
}

/// A sentence and its left context as a grounding source, indexed lazily: most answers are
/// supported by the sentence alone, and indexing the context (about 2 KB per sentence) costs
/// more than the rest of a chunk's handling with a fast generator. The verdicts equal those of
/// `SourceWords::new(sentence, left_context)`: what the sentence supports, the union supports.
pub struct SentenceSource<'a> {
    sentence: &'a str,
    left_context: &'a str,
    sentence_only: SourceWords,
    with_context: std::sync::OnceLock<SourceWords>,
}

impl<'a> SentenceSource<'a> {
    pub fn new(sentence: &'a str, left_context: &'a str) -> Self {
        Self {
            sentence,
            left_context,
            sentence_only: SourceWords::new(sentence, ""),
            with_context: std::sync::OnceLock::new(),
        }
    }

    pub fn check(&self, answer: &str, policy: GroundingPolicy) -> Result<(), Ungrounded> {
        match self.sentence_only.check(answer, policy) {
            Err(_) if !self.left_context.is_empty() => self
                .with_context
                .get_or_init(|| SourceWords::new(self.sentence, self.left_context))
                .check(answer, policy),
            verdict => verdict,
        }
    }
}

impl SentenceSource<'_> {
    /// Whether a question fits its sentence and its answer: it does not contain the answer;
    /// every number and capitalised word it has occurs in the sentence, its left context or
    /// the document title, and at most one other content word does not (more is invention);
    /// one of its content words is in the sentence or the title; and where the answer is one
    /// clause of a long sentence (`evidence`), one is in that clause besides the answer (a
    /// question about another clause, trained with this one's answer, sends the model to the
    /// wrong words).
    pub fn check_question(
        &self,
        question: &str,
        answer: &str,
        evidence: &str,
        title: &str,
    ) -> Result<(), UnfoundedQuestion> {
        let context = self
            .with_context
            .get_or_init(|| SourceWords::new(self.sentence, self.left_context));
        let title_words = SourceWords::new(title, "");
        let question_key = normalise(question);
        let answer_key = normalise(answer);
        if !answer_key.is_empty() && contains_phrase(&question_key, &answer_key) {
            return Err(UnfoundedQuestion::GivesAnswerAway);
        }
        let clause = (evidence.trim() != self.sentence.trim())
            .then(|| SourceWords::new(&evidence.replacen(answer, " ", 1), ""));
        let mut on_topic = false;
        let mut about_clause = false;
        let mut new_words = Vec::new();
        for (position, raw) in question.split_whitespace().enumerate() {
            let trimmed = raw.trim_matches(|c: char| !c.is_alphanumeric());
            for token in tokens(trimmed) {
                match token {
                    Token::Number(number) => {
                        if !context.numbers.contains(&number)
                            && !title_words.numbers.contains(&number)
                        {
                            return Err(UnfoundedQuestion::NumberNotInSource(number));
                        }
                        on_topic |= self.sentence_only.numbers.contains(&number);
                        about_clause |=
                            clause.as_ref().is_some_and(|c| c.numbers.contains(&number));
                    }
                    Token::Word(word) => {
                        let capitalised = trimmed.chars().next().is_some_and(char::is_uppercase);
                        let known = context.has_word(&word) || title_words.has_word(&word);
                        if capitalised && position > 0 && is_content_word(&word) && !known {
                            return Err(UnfoundedQuestion::UnknownName(trimmed.to_string()));
                        }
                        if !is_content_word(&word) || QUESTION_WORDS.contains(&word.as_str()) {
                            continue;
                        }
                        if !known {
                            new_words.push(word.clone());
                        }
                        if self.sentence_only.has_word(&word) || title_words.has_word(&word) {
                            on_topic = true;
                        }
                        about_clause |= clause.as_ref().is_some_and(|c| c.has_word(&word));
                    }
                }
            }
        }
        if !on_topic {
            return Err(UnfoundedQuestion::OffTopic);
        }
        if clause.is_some() && !about_clause {
            return Err(UnfoundedQuestion::NotAboutItsClause);
        }
        if new_words.len() > MAX_NEW_QUESTION_WORDS {
            return Err(UnfoundedQuestion::InventedWords(new_words.join(", ")));
        }
        Ok(())
    }
}

/// Whether a question names more of another clause of its sentence than of its own: a weak
/// generator asked for "25 grams" of "For the starter: 150 grams of dark rye flour, ..., and 25
/// grams of mature rye sourdough" writes "How many grams of dark rye flour did the starter
/// use?", and trained with that answer the question leads the model from one item to another's
/// value. `own` is the answer's clause (`evidence`), `others` those of the sentence's other
/// facts; a clause shared with the answer's is no rival.
pub fn about_another_clause(question: &str, own: &str, others: &[&str]) -> bool {
    let named = |clause: &str| {
        let words = SourceWords::new(clause, "");
        tokens(question)
            .filter(|token| match token {
                Token::Number(number) => words.numbers.contains(number),
                Token::Word(word) => {
                    is_content_word(word)
                        && !QUESTION_WORDS.contains(&word.as_str())
                        && words.has_word(word)
                }
            })
            .collect::<HashSet<_>>()
            .len()
    };
    let own_named = named(own);
    others
        .iter()
        .filter(|other| other.trim() != own.trim())
        .any(|other| named(other) > own_named)
}

/// Whether two words are one word in another form ("paddle" and "paddles", "box" and
/// "boxes"; `stem` alone makes "paddl" of the plural).
pub(crate) fn same_stem(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    stem(&a) == stem(&b) || a.trim_end_matches('s') == b.trim_end_matches('s')
}

/// Words of questions that say nothing about their topic.
const QUESTION_WORDS: &[&str] = &["many", "much", "long", "year", "date", "name", "called"];

fn normalise(text: &str) -> Vec<String> {
    tokens(text)
        .map(|token| match token {
            Token::Number(number) | Token::Word(number) => number,
        })
        .collect()
}

fn contains_phrase(haystack: &[String], needle: &[String]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum Token {
    /// Digits with their inner separators, thousands commas removed (`1,000` -> `1000`).
    Number(String),
    /// A lowercase run of letters (and digits glued to letters is not a number: `mp3`).
    Word(String),
}

fn tokens(text: &str) -> impl Iterator<Item = Token> + '_ {
    text.split_whitespace().flat_map(|chunk| {
        let trimmed = chunk.trim_matches(|c: char| !c.is_alphanumeric());
        let is_number = !trimmed.is_empty()
            && trimmed.chars().any(|c| c.is_ascii_digit())
            && trimmed
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | ':' | '/' | '-'));
        if is_number {
            return vec![Token::Number(trimmed.replace(',', ""))];
        }
        trimmed
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(|word| Token::Word(word.to_lowercase()))
            .collect()
    })
}

const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had",
    "has", "have", "he", "her", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "just", "me", "more", "most", "my", "no", "not", "of", "on", "one", "only", "or",
    "other", "our", "out", "over", "s", "she", "so", "some", "such", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "those", "to", "too", "up", "us",
    "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "whose",
    "why", "will", "with", "would", "yes", "you", "your",
];

/// Whether a lowercase word carries content (shared with `cloze`, which must not blank out
/// "the").
pub(crate) fn is_content_word(word: &str) -> bool {
    !STOPWORDS.contains(&word)
}

/// A light suffix stripper, so "founded"/"founding"/"founds" and "cities"/"city" match; both
/// sides go through it, so over-stripping is harmless.
fn stem(word: &str) -> String {
    if let Some(base) = word.strip_suffix("ies") {
        if base.chars().count() >= 2 {
            return format!("{base}y");
        }
    }
    for suffix in ["ing", "ed", "es", "ly", "s"] {
        if let Some(base) = word.strip_suffix(suffix) {
            if base.chars().count() >= 3 && !(suffix == "s" && base.ends_with('s')) {
                return base.to_string();
            }
        }
    }
    word.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_naming_a_sibling_clause_is_about_it() {
        let own = "and 25 grams of mature rye sourdough.";
        let others = [
            "For the starter: 150 grams of dark rye flour",
            "150 millilitres of warm water (about 30 degrees Celsius)",
        ];
        assert!(about_another_clause(
            "How many grams of dark rye flour did the starter use?",
            own,
            &others
        ));
        assert!(!about_another_clause(
            "How many grams of mature sourdough went into the starter?",
            own,
            &others
        ));
        // Words both clauses have do not decide, nor does a clause that is the answer's own.
        assert!(!about_another_clause("How many grams?", own, &others));
        assert!(!about_another_clause(
            "How many grams of dark rye flour did the starter use?",
            others[0],
            &[others[0]]
        ));
    }

    const NEEDLE: &str = "The best thing to do in San Francisco is eat a sandwich and sit in \
                          Dolores Park on a sunny day.";

    /// Every case runs through both sources, which must agree.
    fn check(answer: &str, sentence: &str, context: &str) -> Result<(), Ungrounded> {
        let policy = GroundingPolicy::default();
        let eager = SourceWords::new(sentence, context).check(answer, policy);
        let lazy = SentenceSource::new(sentence, context).check(answer, policy);
        assert_eq!(lazy, eager, "sources disagree on {answer:?}");
        lazy
    }

    #[test]
    fn answer_restating_the_sentence_is_supported() {
        assert_eq!(
            check(
                "Eating a sandwich and sitting in Dolores Park on a sunny day.",
                NEEDLE,
                ""
            ),
            Ok(())
        );
    }

    #[test]
    fn invented_answer_is_rejected() {
        assert!(matches!(
            check("Riding a cable car to Fisherman's Wharf.", NEEDLE, ""),
            Err(Ungrounded::TooFewSupported { .. })
        ));
        assert!(matches!(
            check("Eating pizza in Golden Gate Park.", NEEDLE, ""),
            Err(Ungrounded::TooFewSupported {
                supported: 2,
                total: 5
            })
        ));
    }

    #[test]
    fn words_from_the_left_context_count() {
        assert_eq!(
            check(
                "Viaweb, in 1995",
                "He started it in 1995.",
                "Paul Graham co-founded Viaweb."
            ),
            Ok(())
        );
    }

    #[test]
    fn numbers_must_appear_exactly() {
        let sentence =
            "The tower, completed in 1889, is 330 metres tall and cost 7,799,401 francs.";
        assert_eq!(check("In 1889", sentence, ""), Ok(()));
        assert_eq!(check("7799401 francs", sentence, ""), Ok(()));
        assert_eq!(
            check("In 1887", sentence, ""),
            Err(Ungrounded::NumberNotInSource("1887".to_string()))
        );
        assert_eq!(
            check("330.5 metres", sentence, ""),
            Err(Ungrounded::NumberNotInSource("330.5".to_string()))
        );
    }

    #[test]
    fn answers_without_content_words_are_rejected() {
        assert_eq!(
            check("Yes, it is.", NEEDLE, ""),
            Err(Ungrounded::NoContentWords)
        );
    }

    #[test]
    fn a_question_about_something_the_document_never_names_is_dropped() {
        // Seen from SmolLM2-135M on a lighthouse history: the answer is in the sentence, the
        // question is about the Eiffel Tower.
        let sentence = "A new keeper, Tomas Brell, arrived in 1889 with his family.";
        let source = SentenceSource::new(sentence, "The Harrow Point light was built in 1871.");
        let title = "The Harrow Point Light";
        assert_eq!(source.check("In 1889.", GroundingPolicy::default()), Ok(()));
        assert_eq!(
            source.check_question(
                "When was the Eiffel Tower built?",
                "In 1889.",
                sentence,
                title
            ),
            Err(UnfoundedQuestion::UnknownName("Eiffel".to_string()))
        );
        assert_eq!(
            source.check_question(
                "When did the new keeper arrive?",
                "In 1889.",
                sentence,
                title
            ),
            Ok(())
        );
        assert_eq!(
            source.check_question(
                "When did Tomas Brell reach Harrow Point?",
                "1889",
                sentence,
                title
            ),
            Ok(())
        );
    }

    #[test]
    fn a_question_must_name_something_of_its_answers_clause_and_invent_at_most_one_word() {
        // Seen on the dev set's tide mill (SmolLM2-135M, fact-first): the answer clause is
        // about the wheat, the question about the profit in the clause after it.
        let sentence = "When the mill first turned on 2 June 1765, it could grind roughly 9 tons \
                        of wheat in a single tide, and the account books record a first-year \
                        profit of 412 pounds.";
        let evidence = "it could grind roughly 9 tons of wheat in a single tide";
        let source = SentenceSource::new(sentence, "");
        assert_eq!(
            source.check_question(
                "What was the first year of the mill's first-year profit?",
                "9 tons",
                evidence,
                ""
            ),
            Err(UnfoundedQuestion::NotAboutItsClause)
        );
        assert_eq!(
            source.check_question(
                "How many tons of wheat could the mill grind?",
                "9 tons",
                evidence,
                ""
            ),
            Ok(())
        );
        // The answer's own words do not make a question about its clause.
        assert_eq!(
            source.check_question("How many tons did the mill turn?", "9 tons", evidence, ""),
            Err(UnfoundedQuestion::NotAboutItsClause)
        );
        let sentence = "A great storm breached the dam, and the mill stood idle while repairs \
                        were made under the direction of the millwright Eliza O'Kerrigan.";
        let source = SentenceSource::new(sentence, "The mill was built in 1765.");
        assert_eq!(
            source.check_question(
                "Who built the mill, and who designed the north wing of the mill?",
                "Eliza O'Kerrigan",
                sentence,
                ""
            ),
            Err(UnfoundedQuestion::InventedWords(
                "designed, north, wing".to_string()
            ))
        );
        assert_eq!(
            source.check_question(
                "Who oversaw the repairs to the dam?",
                "Eliza O'Kerrigan",
                sentence,
                ""
            ),
            Ok(())
        );
    }

    #[test]
    fn questions_off_their_sentence_or_giving_the_answer_away_are_dropped() {
        let sentence = "A new keeper, Tomas Brell, arrived in 1889 with his family.";
        let source = SentenceSource::new(sentence, "");
        assert_eq!(
            source.check_question("What is the best thing to do?", "1889", sentence, ""),
            Err(UnfoundedQuestion::OffTopic)
        );
        assert_eq!(
            source.check_question("Who arrived in 1890?", "Tomas Brell", sentence, ""),
            Err(UnfoundedQuestion::NumberNotInSource("1890".to_string()))
        );
        assert_eq!(
            source.check_question("Did Tomas Brell arrive in 1889?", "1889", sentence, ""),
            Err(UnfoundedQuestion::GivesAnswerAway)
        );
    }

    #[test]
    fn inflections_match() {
        assert_eq!(
            check(
                "The founders founded two cities",
                "Two city founders founding",
                ""
            ),
            Ok(())
        );
    }
}
