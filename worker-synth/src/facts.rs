//! Fact-bearing spans of a sentence, found by rules: numbers (in digits or in words), dates,
//! quantities with their unit, codes, names and quoted terms. These are what questions about
//! a document ask for, so every one must get training tasks whose answer is that span, whatever
//! the generator manages to write (ARCHITECTURE.md, "Absorption with a weak generator").
//!
//! Over 600 lines: one rule per kind of fact, each with the exceptions real text needs;
//! 165 of the lines are tests.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactKind {
    /// A month with a day and/or year, a year alone, or a day of the week with what places it
    /// ("3 May 1871", "May 1871", "1871", "Thursday", "the last Saturday of September").
    Date,
    /// A number with the noun it counts or measures ("42 metres", "€1,250", "three keepers").
    Quantity,
    /// Letters and digits together ("KV-220", "A4"), or an all-capitals identifier ("NATO").
    Code,
    /// A number alone, in digits or words ("4.2.1", "forty-two"), or an ordinal ("54th",
    /// "twenty-first").
    Number,
    /// Capitalised words, with name particles inside ("Jan van der Berg", "Harrow Point").
    Name,
    /// A short phrase in quotation marks.
    Quoted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactSpan {
    /// Byte offsets into the sentence.
    pub start: usize,
    pub end: usize,
    pub kind: FactKind,
    /// Set for names that follow a preposition of place ("in Harrow Point").
    pub is_place: bool,
}

impl FactSpan {
    pub fn text<'a>(&self, sentence: &'a str) -> &'a str {
        &sentence[self.start..self.end]
    }

    /// Whether the byte range `start..end` shares a byte with the span.
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        self.start < end && start < self.end
    }
}

/// The fact spans of a sentence, in sentence order, none overlapping; where candidates
/// overlap, the more specific kind wins (a date over the number inside it).
pub fn fact_spans(sentence: &str) -> Vec<FactSpan> {
    let words = words(sentence);
    let mut candidates = Vec::new();
    candidates.extend(date_spans(&words));
    candidates.extend(number_spans(sentence, &words));
    candidates.extend(code_spans(&words));
    candidates.extend(name_spans(&words));
    candidates.extend(quoted_spans(sentence));
    candidates.sort_by_key(|span| (span.kind, std::cmp::Reverse(span.end - span.start)));
    let mut chosen: Vec<FactSpan> = Vec::new();
    for span in candidates {
        let overlaps = chosen
            .iter()
            .any(|kept| kept.overlaps(span.start, span.end));
        if !overlaps {
            chosen.push(span);
        }
    }
    chosen.sort_by_key(|span| span.start);
    chosen
}

/// A whitespace-separated word with its outer punctuation trimmed off.
#[derive(Debug)]
pub(crate) struct Word<'a> {
    pub text: &'a str,
    pub start: usize,
    pub end: usize,
    /// Punctuation right after the word (a comma, a full stop) ends a name or a phrase.
    pub ends_clause: bool,
}

impl Word<'_> {
    fn lower(&self) -> String {
        self.text.to_lowercase()
    }

    fn is_capitalised(&self) -> bool {
        self.text.chars().next().is_some_and(char::is_uppercase)
    }

    fn has_digit(&self) -> bool {
        self.text.chars().any(|c| c.is_ascii_digit())
    }
}

pub(crate) fn words(sentence: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut offset = 0;
    for raw in sentence.split_inclusive(char::is_whitespace) {
        let raw_start = offset;
        offset += raw.len();
        let trimmed_start = raw.trim_start_matches(|c: char| !c.is_alphanumeric());
        let core = trimmed_start.trim_end_matches(|c: char| !c.is_alphanumeric());
        if core.is_empty() {
            continue;
        }
        let start = raw_start + (raw.len() - trimmed_start.len());
        let end = start + core.len();
        let punctuation = raw[end - raw_start..].trim_end();
        let abbreviated = punctuation == "." && is_abbreviation(core);
        words.push(Word {
            text: core,
            start,
            end,
            ends_clause: !punctuation.is_empty() && !abbreviated,
        });
    }
    words
}

/// The sentences of a text, last first: a sentence ends at a line break or at a full stop,
/// question or exclamation mark followed by a space ("3.4 metres" ends nothing).
pub(crate) fn sentences_backwards(text: &str) -> impl Iterator<Item = &str> {
    let mut ends: Vec<usize> = text
        .char_indices()
        .filter(|&(at, c)| {
            c == '\n'
                || (matches!(c, '.' | '!' | '?') && text[at + 1..].starts_with(char::is_whitespace))
        })
        .map(|(at, _)| at + 1)
        .collect();
    ends.insert(0, 0);
    ends.push(text.len());
    ends.windows(2)
        .rev()
        .map(|pair| text[pair[0]..pair[1]].trim())
        .filter(|sentence| !sentence.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
];

const WEEKDAYS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Whether a date names a day of the week ("the last Saturday of September"): asked for with
/// "which day", not "what date".
pub(crate) fn names_a_weekday(text: &str) -> bool {
    words(text).iter().any(is_weekday)
}

fn is_weekday(word: &Word<'_>) -> bool {
    word.is_capitalised() && WEEKDAYS.contains(&word.lower().as_str())
}

/// Words that pick one of a month's weekdays ("the last Saturday of September").
const WEEKDAY_ORDINALS: &[&str] = &["first", "second", "third", "fourth", "fifth", "last"];

fn is_month(word: &Word<'_>) -> bool {
    // "may" and "march" are also common words: only capitalised ones are months.
    word.is_capitalised() && MONTHS.contains(&word.lower().as_str())
}

fn is_day_or_year(word: &Word<'_>) -> bool {
    let digits = word
        .text
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &word.text[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 4
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(suffix, "" | "st" | "nd" | "rd" | "th")
}

fn is_year(word: &Word<'_>) -> bool {
    word.text.len() == 4
        && word.text.chars().all(|c| c.is_ascii_digit())
        && matches!(word.text.parse::<u32>(), Ok(1000..=2199))
}

/// Months with their day and year ("3 May 1871", "May 3, 1871", "May 1871"), years alone, and
/// days of the week with an ordinal before and a month after ("first Thursday of March 1963").
fn date_spans(words: &[Word<'_>]) -> Vec<FactSpan> {
    let mut spans = Vec::new();
    let mut index = 0;
    while index < words.len() {
        let word = &words[index];
        if is_weekday(word) {
            let first = match index.checked_sub(1) {
                Some(before)
                    if WEEKDAY_ORDINALS.contains(&words[before].lower().as_str())
                        && !words[before].ends_clause =>
                {
                    before
                }
                _ => index,
            };
            let mut last = index;
            // "... of March 1963": the month, and a year right after it.
            if !word.ends_clause
                && words.get(index + 1).is_some_and(|w| w.lower() == "of")
                && words.get(index + 2).is_some_and(is_month)
            {
                last = index + 2;
                if !words[last].ends_clause && words.get(last + 1).is_some_and(is_year) {
                    last += 1;
                }
            }
            spans.push(date(words, first, last));
            index = last + 1;
            continue;
        }
        if is_month(word) {
            let mut first = index;
            let mut last = index;
            if index > 0 && is_day_or_year(&words[index - 1]) && !words[index - 1].ends_clause {
                first = index - 1;
            }
            while last + 1 < words.len()
                && last < index + 2
                && is_day_or_year(&words[last + 1])
                && (last == index || !words[last].ends_clause || is_year(&words[last + 1]))
            {
                last += 1;
            }
            if first < index || last > index {
                spans.push(date(words, first, last));
                index = last + 1;
                continue;
            }
        } else if is_year(word) {
            spans.push(date(words, index, index));
        }
        index += 1;
    }
    spans
}

fn date(words: &[Word<'_>], first: usize, last: usize) -> FactSpan {
    FactSpan {
        start: words[first].start,
        end: words[last].end,
        kind: FactKind::Date,
        is_place: false,
    }
}

const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
    "million",
    "billion",
    "dozen",
    "half",
];

/// "forty-two", "Three", "hundred": a number word, or number words joined by hyphens.
fn is_number_word(word: &Word<'_>) -> bool {
    word.lower()
        .split('-')
        .all(|part| NUMBER_WORDS.contains(&part))
}

/// Spelled ordinals that mark a fact. "first", "second" and "third" alone are left out: they
/// mostly order events ("first lit", "a second time") rather than state a fact.
const ORDINAL_WORDS: &[&str] = &[
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
    "fourteenth",
    "fifteenth",
    "sixteenth",
    "seventeenth",
    "eighteenth",
    "nineteenth",
    "twentieth",
    "thirtieth",
    "fortieth",
    "fiftieth",
    "sixtieth",
    "seventieth",
    "eightieth",
    "ninetieth",
    "hundredth",
    "thousandth",
];

/// Whether a fact is an ordinal ("54th"): asked for with "which", not "what number".
pub(crate) fn names_an_ordinal(text: &str) -> bool {
    words(text).first().is_some_and(is_ordinal)
}

/// "54th", "1st", "twelfth", "twenty-first": a position in a series, in digits or words.
fn is_ordinal(word: &Word<'_>) -> bool {
    let lower = word.lower();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        return matches!(&lower[digits.len()..], "st" | "nd" | "rd" | "th");
    }
    match lower.rsplit_once('-') {
        Some((tens, unit)) => {
            NUMBER_WORDS.contains(&tens)
                && (ORDINAL_WORDS.contains(&unit) || matches!(unit, "first" | "second" | "third"))
        }
        None => ORDINAL_WORDS.contains(&lower.as_str()),
    }
}

/// The unit of an amount written as one hyphenated word, in the singular as written: "72-hour"
/// and "38-kilometre" give "hour" and "kilometre", "17-year-old" gives "year", "two-person"
/// gives "person". A spelled number ("twenty-four") or an ordinal ("twenty-first") has none.
pub(crate) fn hyphenated_unit(text: &str) -> Option<&str> {
    let (number, rest) = text.split_once('-')?;
    let unit = rest.split('-').next().unwrap_or(rest);
    let is_number = (number.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | ','))
        && number.starts_with(|c: char| c.is_ascii_digit()))
        // "one-way", "one-off": "one" in a compound is mostly no amount.
        || (NUMBER_WORDS.contains(&number.to_lowercase().as_str())
            && !number.eq_ignore_ascii_case("one")
            && !number.eq_ignore_ascii_case("zero"));
    let is_unit = unit.len() >= 2
        && unit.chars().all(|c| c.is_ascii_lowercase())
        && !NUMBER_WORDS.contains(&unit)
        && !NOT_UNITS.contains(&unit)
        && !ORDINAL_WORDS.contains(&unit)
        && !matches!(
            unit,
            "first" | "second" | "third" | "st" | "nd" | "rd" | "th"
        );
    (is_number && is_unit).then_some(unit)
}

fn is_digit_number(word: &Word<'_>) -> bool {
    word.has_digit()
        && word
            .text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | ':' | '/'))
}

/// Words that end a quantity instead of being its unit.
const NOT_UNITS: &[&str] = &[
    "a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "is", "of", "on", "or",
    "than", "that", "the", "to", "was", "were", "with", "are", "be", "it", "its", "per",
];

/// Numbers in digits or words, each with the noun that follows it when there is one ("42
/// metres", "three keepers"), and a currency sign or a percent sign that touches it.
fn number_spans(sentence: &str, words: &[Word<'_>]) -> Vec<FactSpan> {
    let mut spans = Vec::new();
    let mut index = 0;
    while index < words.len() {
        let word = &words[index];
        if is_ordinal(word) {
            // An ordinal names a position, not an amount: the word after it is not a unit.
            spans.push(FactSpan {
                start: word.start,
                end: word.end,
                kind: FactKind::Number,
                is_place: false,
            });
            index += 1;
            continue;
        }
        if hyphenated_unit(word.text).is_some() {
            // "a 72-hour pulse", "a two-person lift": an amount and its unit in one word,
            // asked for as an amount ("how many hours"), not as a code.
            spans.push(FactSpan {
                start: word.start,
                end: word.end,
                kind: FactKind::Quantity,
                is_place: false,
            });
            index += 1;
            continue;
        }
        let spelled = is_number_word(word);
        if !(is_digit_number(word) || spelled) {
            index += 1;
            continue;
        }
        let mut last = index;
        // "three hundred and twelve", "2.5 million"
        while last + 1 < words.len() && !words[last].ends_clause {
            let next = &words[last + 1];
            if is_number_word(next) && (spelled || next.lower() != "one") {
                last += 1;
            } else if next.lower() == "and"
                && last + 2 < words.len()
                && is_number_word(&words[last + 2])
                && spelled
            {
                last += 2;
            } else {
                break;
            }
        }
        let number_only = last == index && spelled;
        // "one" and "half" alone are mostly not facts ("one of the", "half the crew").
        if number_only && matches!(word.lower().as_str(), "one" | "half" | "zero") {
            index += 1;
            continue;
        }
        let mut start = word.start;
        // A currency sign right before the number belongs to it.
        if let Some(sign) = sentence[..start].chars().next_back() {
            if matches!(sign, '$' | '€' | '£' | '¥') {
                start -= sign.len_utf8();
            }
        }
        let mut end = words[last].end;
        let mut kind = FactKind::Number;
        // A version ("4.2.1") counts nothing: the word after it is not its unit.
        let is_version = word.text.matches('.').count() > 1;
        if sentence[end..].starts_with('%') {
            end += 1;
            kind = FactKind::Quantity;
        } else if !is_version && !words[last].ends_clause && last + 1 < words.len() {
            let unit = &words[last + 1];
            let lower = unit.lower();
            let usable = !NOT_UNITS.contains(&lower.as_str())
                && unit.text.chars().all(|c| c.is_alphabetic() || c == '-')
                && !is_month(unit);
            if usable {
                end = unit.end;
                kind = FactKind::Quantity;
                last += 1;
            }
        }
        if start < word.start {
            kind = FactKind::Quantity;
        }
        spans.push(FactSpan {
            start,
            end,
            kind,
            is_place: false,
        });
        index = last + 1;
    }
    spans
}

/// "KV-220", "A4", "X7b", "NATO": letters and digits in one word, or capitals only.
fn code_spans(words: &[Word<'_>]) -> Vec<FactSpan> {
    words
        .iter()
        .filter(|word| {
            let letters = word.text.chars().filter(|c| c.is_alphabetic()).count();
            let mixed = letters > 0 && word.has_digit();
            let capitals = letters >= 2
                && word
                    .text
                    .chars()
                    .all(|c| c.is_uppercase() || c.is_ascii_digit() || c == '-');
            mixed || capitals
        })
        .filter(|word| !is_day_or_year(word))
        .map(|word| FactSpan {
            start: word.start,
            end: word.end,
            kind: FactKind::Code,
            is_place: false,
        })
        .collect()
}

/// Lowercase words that may sit inside a name ("Jan van der Berg", "Bank of Arden").
const NAME_PARTICLES: &[&str] = &[
    "van", "der", "den", "de", "la", "le", "du", "des", "von", "zu", "di", "da", "del", "dos",
    "bin", "ibn", "al", "el", "of", "y",
];

/// Capitalised words that start sentences and clauses without being names.
const FUNCTION_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "in",
    "on",
    "at",
    "by",
    "for",
    "from",
    "to",
    "with",
    "after",
    "before",
    "during",
    "since",
    "until",
    "when",
    "while",
    "if",
    "as",
    "but",
    "and",
    "or",
    "so",
    "it",
    "its",
    "he",
    "she",
    "they",
    "we",
    "i",
    "you",
    "his",
    "her",
    "their",
    "our",
    "my",
    "your",
    "there",
    "here",
    "each",
    "every",
    "all",
    "some",
    "no",
    "one",
    "what",
    "who",
    "where",
    "why",
    "how",
    "which",
    "then",
    "also",
    "however",
    "although",
    "because",
    "once",
    "today",
    "yesterday",
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sir",
    "saint",
];

const PLACE_PREPOSITIONS: &[&str] = &[
    "in", "at", "from", "near", "to", "into", "across", "outside", "inside", "towards", "toward",
    "through", "via",
];

/// Words whose full stop abbreviates them instead of ending anything: an initial, part of the
/// name it opens ("S. de Vries"), or a title, left out of the name after it like "The" ("Dr.
/// Brauchli" gives "Brauchli", not "Dr" and "Brauchli").
pub(crate) fn is_abbreviation(word: &str) -> bool {
    let single_capital = word.len() == 1 && word.starts_with(|c: char| c.is_ascii_uppercase());
    single_capital || TITLE_ABBREVIATIONS.contains(&word)
}

const TITLE_ABBREVIATIONS: &[&str] = &["Dr", "Mr", "Mrs", "Ms", "Prof", "St", "Capt", "Rev"];

/// Capitalised abbreviations that label a number ("No. 17", "Vol. 3"), never a name.
const NUMBER_LABELS: &[&str] = &["No", "Nos", "Vol", "Fig"];

fn is_name_word(word: &Word<'_>) -> bool {
    // "Jan" may be a month or a name; only whole month names are never names here.
    let full_month = MONTHS[..12].contains(&word.lower().as_str());
    word.is_capitalised()
        && !NUMBER_LABELS.contains(&word.text)
        && !full_month
        && !WEEKDAYS.contains(&word.lower().as_str())
        && !is_number_word(word)
        && !word.has_digit()
}

/// Runs of capitalised words, with particles inside. A capitalised function word that opens
/// the sentence or a run is left out ("The Harrow Point light" gives "Harrow Point"); a single
/// capitalised word that opens the sentence is not taken for a name.
fn name_spans(words: &[Word<'_>]) -> Vec<FactSpan> {
    let mut spans = Vec::new();
    let mut index = 0;
    while index < words.len() {
        if !is_name_word(&words[index]) {
            index += 1;
            continue;
        }
        let mut first = index;
        while first < words.len()
            && is_name_word(&words[first])
            && FUNCTION_WORDS.contains(&words[first].lower().as_str())
            && !words[first].ends_clause
        {
            first += 1;
        }
        if first >= words.len() || !is_name_word(&words[first]) {
            index = first.max(index + 1);
            continue;
        }
        let mut last = first;
        loop {
            if words[last].ends_clause || last + 1 >= words.len() {
                break;
            }
            let next = &words[last + 1];
            if is_name_word(next) {
                last += 1;
                continue;
            }
            // A particle joins only when a capitalised word follows it.
            let particles = words[last + 1..]
                .iter()
                .take_while(|w| {
                    NAME_PARTICLES.contains(&w.text) && !w.ends_clause && !w.is_capitalised()
                })
                .count();
            let after = last + 1 + particles;
            if particles > 0 && after < words.len() && is_name_word(&words[after]) {
                last = after;
                continue;
            }
            break;
        }
        // The sentence's capitalised opening word alone says nothing about being a name.
        let opens_sentence_alone = first == 0 && last == 0;
        if !opens_sentence_alone {
            let is_place = first > 0
                && PLACE_PREPOSITIONS.contains(&words[first - 1].lower().as_str())
                && !words[first - 1].ends_clause;
            spans.push(FactSpan {
                start: words[first].start,
                end: words[last].end,
                kind: FactKind::Name,
                is_place,
            });
        }
        index = last + 1;
    }
    spans
}

/// Short phrases in straight or curly double quotes.
fn quoted_spans(sentence: &str) -> Vec<FactSpan> {
    let mut spans = Vec::new();
    let mut rest_start = 0;
    while let Some(open) = sentence[rest_start..].find(['"', '“']) {
        let open = rest_start + open;
        let inner_start = open + sentence[open..].chars().next().map_or(1, char::len_utf8);
        let Some(close) = sentence[inner_start..].find(['"', '”']) else {
            break;
        };
        let inner_end = inner_start + close;
        let inner = sentence[inner_start..inner_end].trim();
        let word_count = inner.split_whitespace().count();
        if (1..=6).contains(&word_count) {
            let start = inner_start + sentence[inner_start..inner_end].find(inner).unwrap_or(0);
            let end = start + inner.len();
            let trimmed = sentence[start..end].trim_end_matches(|c: char| !c.is_alphanumeric());
            spans.push(FactSpan {
                start,
                end: start + trimmed.len(),
                kind: FactKind::Quoted,
                is_place: false,
            });
        }
        rest_start = inner_end + 1;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(sentence: &str) -> Vec<(&str, FactKind)> {
        fact_spans(sentence)
            .iter()
            .map(|span| (span.text(sentence), span.kind))
            .collect()
    }

    #[test]
    fn dates_in_their_usual_shapes() {
        assert_eq!(
            spans("The light was first lit on 3 May 1871 by the harbour board."),
            vec![("3 May 1871", FactKind::Date)]
        );
        assert_eq!(
            spans("It reopened on May 3, 1902, after repairs."),
            vec![("May 3, 1902", FactKind::Date)]
        );
        assert_eq!(
            spans("Work stopped in March 1990 and resumed in 1994."),
            vec![("March 1990", FactKind::Date), ("1994", FactKind::Date)]
        );
        // A lowercase "may" is a verb, not a month.
        assert_eq!(spans("Visitors may climb it."), vec![]);
    }

    #[test]
    fn days_of_the_week_with_what_places_them() {
        assert_eq!(
            spans("He rode the ferry every Thursday."),
            vec![("Thursday", FactKind::Date)]
        );
        assert_eq!(
            spans("Lantern Night is held on the last Saturday of September, at dusk."),
            vec![
                ("Lantern Night", FactKind::Name),
                ("last Saturday of September", FactKind::Date)
            ]
        );
        assert_eq!(
            spans("On the first Thursday of March 1963 the fog came down."),
            vec![("first Thursday of March 1963", FactKind::Date)]
        );
        // A day of the week is never a name.
        assert_eq!(
            spans("They met Ada on Monday."),
            vec![("Ada", FactKind::Name), ("Monday", FactKind::Date)]
        );
    }

    #[test]
    fn an_amount_hyphenated_to_its_unit_is_a_quantity_not_a_code() {
        assert_eq!(
            spans("a single 72-hour pulse along a 38-kilometre transect"),
            vec![
                ("72-hour", FactKind::Quantity),
                ("38-kilometre", FactKind::Quantity)
            ]
        );
        assert_eq!(
            spans("two-person lifting, for a 17-year-old apprentice"),
            vec![
                ("two-person", FactKind::Quantity),
                ("17-year-old", FactKind::Quantity)
            ]
        );
        // Spelled numbers and ordinals keep their kinds; codes and compounds of "one" are
        // no amounts.
        assert_eq!(
            spans("twenty-four months, the twenty-first day, a one-way trip, model GC-1200"),
            vec![
                ("twenty-four months", FactKind::Quantity),
                ("twenty-first", FactKind::Number),
                ("GC-1200", FactKind::Code)
            ]
        );
    }

    #[test]
    fn spelled_out_numbers_with_what_they_count() {
        assert_eq!(
            spans("the crew of forty-two sailors rowed ashore"),
            vec![("forty-two sailors", FactKind::Quantity)]
        );
        assert_eq!(
            spans("it has three hundred and twelve steps"),
            vec![("three hundred and twelve steps", FactKind::Quantity)]
        );
        assert_eq!(
            spans("Only one of the keepers stayed, and half the lamps failed."),
            vec![]
        );
        assert_eq!(
            spans("The votes were counted: Seven."),
            vec![("Seven", FactKind::Number)]
        );
    }

    #[test]
    fn ordinals_in_digits_and_words() {
        assert_eq!(
            spans("The 54th regatta drew a record crowd."),
            vec![("54th", FactKind::Number)]
        );
        assert_eq!(
            spans("The shop is on the twelfth floor, above the twenty-first gallery."),
            vec![
                ("twelfth", FactKind::Number),
                ("twenty-first", FactKind::Number)
            ]
        );
        // Ordering words alone are not facts; an ordinal day stays part of its date.
        assert_eq!(spans("It was first lit a second time."), vec![]);
        assert_eq!(
            spans("It reopened on 3rd May 1902."),
            vec![("3rd May 1902", FactKind::Date)]
        );
    }

    #[test]
    fn amounts_with_units_and_currency() {
        assert_eq!(
            spans("The tower is 42 metres tall and cost €1,250 to repaint."),
            vec![
                ("42 metres", FactKind::Quantity),
                ("€1,250", FactKind::Quantity)
            ]
        );
        assert_eq!(
            spans("The pump draws 3.5 kW at 240 volts, about 12% less."),
            vec![
                ("3.5 kW", FactKind::Quantity),
                ("240 volts", FactKind::Quantity),
                ("12%", FactKind::Quantity)
            ]
        );
        assert_eq!(
            spans("Version 4.2.1 fixed it."),
            vec![("4.2.1", FactKind::Number)]
        );
    }

    #[test]
    fn codes_mix_letters_and_digits() {
        assert_eq!(
            spans("Replace the filter with part KV-220 or the older A4 model."),
            vec![("KV-220", FactKind::Code), ("A4", FactKind::Code)]
        );
    }

    #[test]
    fn names_keep_their_particles() {
        assert_eq!(
            spans("The keeper was Jan van der Berg, who came from Harrow Point."),
            vec![
                ("Jan van der Berg", FactKind::Name),
                ("Harrow Point", FactKind::Name)
            ]
        );
        assert_eq!(
            spans("In Lisbon she met Maria de la Cruz and Sean O'Neill."),
            vec![
                ("Lisbon", FactKind::Name),
                ("Maria de la Cruz", FactKind::Name),
                ("Sean O'Neill", FactKind::Name)
            ]
        );
        let place = fact_spans("The keeper came from Harrow Point.");
        assert!(place[0].is_place);
        // A lone capitalised opening word is not a name; a particle needs a name after it.
        assert_eq!(spans("Afterwards the van of the keeper left."), vec![]);
        // An initial or a title keeps its name whole; "No." labels a number.
        assert_eq!(
            spans("On the back was engraved: No. 17, S. de Vries, 1949."),
            vec![
                ("17", FactKind::Number),
                ("S. de Vries", FactKind::Name),
                ("1949", FactKind::Date)
            ]
        );
        assert_eq!(
            spans("The author is Dr. Annelise Brauchli."),
            vec![("Annelise Brauchli", FactKind::Name)]
        );
    }

    #[test]
    fn quoted_terms() {
        assert_eq!(
            spans("The crew called the lamp \"the old eye\" for decades."),
            vec![("the old eye", FactKind::Quoted)]
        );
    }

    #[test]
    fn non_ascii_text_keeps_char_boundaries() {
        assert_eq!(
            spans("« Zoë went to Zürich », she said in 2004."),
            vec![("Zürich", FactKind::Name), ("2004", FactKind::Date)]
        );
    }
}
