//! The parser of generator replies on any text: it never panics, and every pair it keeps has
//! a non-empty question and answer within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lift_worker_synth::parse::{PairCollector, ParseLimits};
use lift_worker_synth::RawReply;

fuzz_target!(|replies: Vec<String>| {
    let limits = ParseLimits::default();
    let mut collector = PairCollector::new(limits);
    for text in replies {
        collector.add_reply(&RawReply { text });
    }
    for pair in collector.pairs() {
        assert!(!pair.question.trim().is_empty() && !pair.answer.trim().is_empty());
        assert!(pair.answer.chars().count() <= limits.max_answer_chars);
    }
});
