//! The sentence splitter on any text: every range is in bounds, on character boundaries, in
//! order and non-empty, and the left context of every sentence is at most 2,048 characters
//! ending where the text before the sentence ends (less the whitespace in between).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lift_coordinator::split::{left_context, split_sentences, SplitOptions};

fuzz_target!(|input: (u16, &str)| {
    let (limit, text) = input;
    let options = SplitOptions {
        max_sentence_chars: usize::from(limit % 600) + 8,
    };
    let sentences = split_sentences(text, &options);
    let mut end = 0;
    for range in sentences {
        assert!(range.start >= end && range.start < range.end && range.end <= text.len());
        assert!(text.is_char_boundary(range.start) && text.is_char_boundary(range.end));
        end = range.end;
        let context = left_context(text, range.start, 2048);
        assert!(text[..range.start].trim_end().ends_with(context));
        assert!(context.chars().count() <= 2048);
    }
});
