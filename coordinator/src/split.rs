//! Sentence splitting for real prose. LIFT writes questions per sentence, so a split in the
//! middle of "Dr. Smith" or "3.14" produces pairs about fragments; a missed split produces
//! fewer, vaguer pairs. The rules below favour not splitting when in doubt.

use std::ops::Range;

/// Words that end with a period but almost never end a sentence (titles before names,
/// "e.g.", references before numbers). Compared lower-case, without the final period.
const NEVER_SENTENCE_END: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "gen", "capt", "lt", "col", "sgt", "hon",
    "e.g", "i.e", "eg", "ie", "vs", "cf", "approx", "ca", "fig", "figs", "no", "nos", "vol",
    "vols", "pp", "p", "ch", "sec", "eq", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
];

/// Characters that may close a sentence after its final punctuation (`He said "Stop."`).
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»' | '›')
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
}

fn is_full_width_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

/// Characters that may open a word before an abbreviation (`(e.g.`).
fn is_opener(c: char) -> bool {
    matches!(c, '"' | '\'' | '(' | '[' | '{' | '“' | '‘' | '«' | '‹')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOptions {
    /// Longer "sentences" (tables, lists without punctuation) are cut at a space before this
    /// many characters, so every generation prompt stays small.
    pub max_sentence_chars: usize,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self {
            max_sentence_chars: 400,
        }
    }
}

/// Byte ranges of the sentences of `text`, in order, trimmed of surrounding whitespace and
/// never empty.
pub fn split_sentences(text: &str, options: &SplitOptions) -> Vec<Range<usize>> {
    let mut sentences = Vec::new();
    let mut start: Option<usize> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        let Some(sentence_start) = start else {
            if !c.is_whitespace() {
                start = Some(index);
            }
            continue;
        };
        if c == '\n' {
            if is_line_break_a_boundary(&text[index + 1..]) {
                push_sentence(text, sentence_start..index, options, &mut sentences);
                start = None;
            }
            continue;
        }
        if !is_terminator(c) {
            continue;
        }
        // The whole run of punctuation and closing quotes belongs to this sentence.
        let mut end = index + c.len_utf8();
        let mut run_has_strong_terminator = matches!(c, '!' | '?' | '…' | '。' | '！' | '？');
        let mut run_len = 1;
        let mut run_has_full_width = is_full_width_terminator(c);
        while let Some(&(next_index, next)) = chars.peek() {
            if !(is_terminator(next) || is_closer(next)) {
                break;
            }
            run_has_strong_terminator |= is_terminator(next) && next != '.';
            run_len += usize::from(next == '.');
            run_has_full_width |= is_full_width_terminator(next);
            end = next_index + next.len_utf8();
            chars.next();
        }
        let rest = &text[end..];
        // "3.14", "U.S.A", "example.com": punctuation inside a token is not an end. Chinese
        // and Japanese put no space after a sentence, so their full stops always count.
        if !run_has_full_width && rest.chars().next().is_some_and(|n| !n.is_whitespace()) {
            continue;
        }
        let ends = ends_sentence(
            &text[sentence_start..index],
            rest,
            run_has_strong_terminator || run_len > 1,
        );
        if ends {
            push_sentence(text, sentence_start..end, options, &mut sentences);
            start = None;
        }
    }
    if let Some(sentence_start) = start {
        push_sentence(text, sentence_start..text.len(), options, &mut sentences);
    }
    sentences
}

/// A single newline ends a sentence unless the next line continues it in lower case (text
/// hard-wrapped at a fixed width); an empty line always does.
fn is_line_break_a_boundary(after_newline: &str) -> bool {
    let line_rest = after_newline.trim_start_matches([' ', '\t', '\r']);
    if line_rest.is_empty() || line_rest.starts_with('\n') {
        return true;
    }
    !line_rest.chars().next().is_some_and(char::is_lowercase)
}

/// Whether punctuation ends the sentence, given the sentence so far (up to the punctuation)
/// and the text after it.
fn ends_sentence(before: &str, after: &str, strong: bool) -> bool {
    let Some(next) = after.trim_start().chars().next() else {
        return true;
    };
    // "approx. five", `"Why?" she asked`: a lower-case continuation is the same sentence.
    if next.is_lowercase() {
        return false;
    }
    if strong {
        return true;
    }
    // "7. Charges and Payment", "Funding. This work was supported by ...": a lone number or
    // word before the full stop labels what follows on its line, it is no sentence of its own.
    if !before.trim().contains(char::is_whitespace) {
        return false;
    }
    let word_start = before
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_whitespace() || is_opener(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[word_start..];
    if word.is_empty() {
        return true;
    }
    let lower = word.to_lowercase();
    if NEVER_SENTENCE_END.contains(&lower.as_str()) {
        return false;
    }
    // A lone capital is an initial ("J. R. R. Tolkien").
    let mut word_chars = word.chars();
    let is_initial =
        word_chars.next().is_some_and(char::is_uppercase) && word_chars.next().is_none();
    !is_initial
}

fn push_sentence(
    text: &str,
    range: Range<usize>,
    options: &SplitOptions,
    sentences: &mut Vec<Range<usize>>,
) {
    let slice = &text[range.clone()];
    let trimmed_start = range.start + (slice.len() - slice.trim_start().len());
    let trimmed_end = range.end - (slice.len() - slice.trim_end().len());
    if trimmed_start >= trimmed_end {
        return;
    }
    cut_long_sentence(
        text,
        trimmed_start..trimmed_end,
        options.max_sentence_chars.max(1),
        sentences,
    );
}

/// Cuts a too-long sentence into pieces of at most `max_chars` characters, at the last space
/// before the limit (or at the limit itself when a piece has no space).
fn cut_long_sentence(
    text: &str,
    range: Range<usize>,
    max_chars: usize,
    sentences: &mut Vec<Range<usize>>,
) {
    let mut start = range.start;
    while start < range.end {
        let piece = &text[start..range.end];
        let Some((limit, _)) = piece.char_indices().nth(max_chars) else {
            sentences.push(start..range.end);
            return;
        };
        let cut = piece[..limit]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, _)| i)
            .filter(|i| *i > 0)
            .unwrap_or(limit);
        let head = &piece[..cut];
        sentences.push(start..start + head.trim_end().len());
        let tail = &piece[cut..];
        start += cut + (tail.len() - tail.trim_start().len());
    }
}

/// Up to `max_chars` characters that precede byte offset `sentence_start` in `text`, without
/// the whitespace right before the sentence.
pub fn left_context(text: &str, sentence_start: usize, max_chars: usize) -> &str {
    let before = text[..sentence_start].trim_end();
    if max_chars == 0 {
        return "";
    }
    let from = before
        .char_indices()
        .rev()
        .nth(max_chars - 1)
        .map_or(0, |(i, _)| i);
    &before[from..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        split_sentences(text, &SplitOptions::default())
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn splits_on_periods_questions_and_exclamations() {
        assert_eq!(
            split("It rained. Did it? Yes! It did."),
            vec!["It rained.", "Did it?", "Yes!", "It did."]
        );
    }

    #[test]
    fn keeps_titles_and_latin_abbreviations_inside() {
        assert_eq!(
            split("Mr. Smith met Dr. Jones. They ate fruit, e.g. apples, i.e. Gala ones."),
            vec![
                "Mr. Smith met Dr. Jones.",
                "They ate fruit, e.g. apples, i.e. Gala ones."
            ]
        );
    }

    #[test]
    fn dotted_initialisms_end_a_sentence_only_before_a_new_one() {
        assert_eq!(
            split("He moved to the U.S. in 1990. He lived in the U.S. The end."),
            vec![
                "He moved to the U.S. in 1990.",
                "He lived in the U.S.",
                "The end."
            ]
        );
    }

    #[test]
    fn etc_before_a_capital_ends_the_sentence() {
        assert_eq!(
            split("Bring pens, paper, etc. Then sit down."),
            vec!["Bring pens, paper, etc.", "Then sit down."]
        );
    }

    #[test]
    fn decimals_and_versions_do_not_split() {
        assert_eq!(
            split("Pi is 3.14 roughly. Version 2.0.1 shipped."),
            vec!["Pi is 3.14 roughly.", "Version 2.0.1 shipped."]
        );
    }

    #[test]
    fn ellipses_split_only_before_a_capital() {
        assert_eq!(
            split("Wait... what was that? I don't know… It left."),
            vec!["Wait... what was that?", "I don't know…", "It left."]
        );
    }

    #[test]
    fn closing_quotes_and_brackets_stay_with_their_sentence() {
        assert_eq!(
            split("He said \"Stop.\" She stopped. (It was late.) Then home."),
            vec![
                "He said \"Stop.\"",
                "She stopped.",
                "(It was late.)",
                "Then home."
            ]
        );
        assert_eq!(
            split("“Why?” she asked. “Because.”"),
            vec!["“Why?” she asked.", "“Because.”"]
        );
    }

    #[test]
    fn initials_do_not_split() {
        assert_eq!(
            split("J. R. R. Tolkien wrote it. It sold."),
            vec!["J. R. R. Tolkien wrote it.", "It sold."]
        );
    }

    #[test]
    fn references_before_numbers_do_not_split() {
        assert_eq!(
            split("See Fig. 3 and No. 5 on pp. 12-14. Done."),
            vec!["See Fig. 3 and No. 5 on pp. 12-14.", "Done."]
        );
    }

    #[test]
    fn a_lone_label_stays_with_what_follows_on_its_line() {
        assert_eq!(
            split("7. Charges\n7.1 The fee is due. Each invoice is payable.\nFunding. It was paid. Done."),
            vec![
                "7. Charges",
                "7.1 The fee is due.",
                "Each invoice is payable.",
                "Funding. It was paid.",
                "Done."
            ]
        );
        assert_eq!(
            split("Methods.\nSeeds were sown."),
            vec!["Methods.", "Seeds were sown."]
        );
    }

    #[test]
    fn empty_lines_and_headings_are_boundaries() {
        assert_eq!(
            split("Chapter One\nIt was dark.\n\nThe end came\n\nlater"),
            vec!["Chapter One", "It was dark.", "The end came", "later"]
        );
    }

    #[test]
    fn hard_wrapped_lines_are_joined() {
        let text = "The quick brown fox\njumps over the lazy\ndog. Next one.";
        assert_eq!(
            split(text),
            vec![
                "The quick brown fox\njumps over the lazy\ndog.",
                "Next one."
            ]
        );
    }

    #[test]
    fn windows_line_endings_and_bullets_split_cleanly() {
        assert_eq!(
            split("Items:\r\n- one\r\n- two\r\n"),
            vec!["Items:", "- one", "- two"]
        );
    }

    #[test]
    fn long_sentences_are_cut_at_whitespace() {
        let text = "word ".repeat(30);
        let options = SplitOptions {
            max_sentence_chars: 22,
        };
        let pieces: Vec<&str> = split_sentences(&text, &options)
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert!(pieces.iter().all(|p| p.chars().count() <= 22), "{pieces:?}");
        assert_eq!(pieces[0], "word word word word");
        assert_eq!(pieces.join(" "), text.trim());
    }

    #[test]
    fn long_runs_without_spaces_are_cut_at_char_boundaries() {
        let text = "é".repeat(25);
        let options = SplitOptions {
            max_sentence_chars: 10,
        };
        let pieces: Vec<&str> = split_sentences(&text, &options)
            .into_iter()
            .map(|r| &text[r])
            .collect();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].chars().count(), 10);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn offsets_point_into_the_original_text() {
        let text = "  First one.   Second one.  ";
        let ranges = split_sentences(text, &SplitOptions::default());
        assert_eq!(ranges, vec![2..12, 15..26]);
    }

    #[test]
    fn whitespace_only_text_has_no_sentences() {
        assert!(split(" \n\n\t ").is_empty());
        assert_eq!(
            split("no punctuation at all"),
            vec!["no punctuation at all"]
        );
    }

    #[test]
    fn non_ascii_text_splits_safely() {
        assert_eq!(
            split("Ça va? Très bien! 日本語です。次の文。"),
            vec!["Ça va?", "Très bien!", "日本語です。", "次の文。"]
        );
    }

    #[test]
    fn left_context_is_bounded_and_char_safe() {
        let text = "ééé abc. Next sentence.";
        let start = text.find("Next").unwrap();
        assert_eq!(left_context(text, start, 100), "ééé abc.");
        assert_eq!(left_context(text, start, 6), "é abc.");
        assert_eq!(left_context(text, start, 0), "");
        assert_eq!(left_context(text, 0, 10), "");
    }
}
