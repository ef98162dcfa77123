//! The JSON constraint of generation (`OutputConstraint::QaJsonList`): the shape of the
//! question/answer list is written by the decode loop itself, and the model only fills the
//! strings, with tokens that cannot break out of one.

use crate::error::Result;
use crate::tokenizer::ChatTokenizer;

/// Which tokens may appear inside a JSON string, and which close one.
pub(crate) struct JsonVocab {
    pub(crate) string_ok: Vec<bool>,
    pub(crate) closes_string: Vec<bool>,
}

impl JsonVocab {
    pub(crate) fn build(tokenizer: &ChatTokenizer, vocab: usize) -> Result<Self> {
        let mut string_ok = vec![false; vocab];
        let mut closes_string = vec![false; vocab];
        for id in 0..vocab {
            let text = tokenizer.decode(&[id as u32])?;
            if text.is_empty() || text.contains('\u{FFFD}') {
                continue;
            }
            if text.starts_with('"') {
                closes_string[id] = true;
            } else if !text
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
            {
                string_ok[id] = true;
            }
        }
        Ok(Self {
            string_ok,
            closes_string,
        })
    }
}

/// Longest string value the constraint lets the model write before closing it.
pub(crate) const MAX_STRING_TOKENS: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum JsonField {
    Question,
    Answer,
}

pub(crate) struct JsonProgress {
    pub(crate) pairs_total: usize,
    pub(crate) pairs_done: usize,
    pub(crate) field: JsonField,
    pub(crate) string_tokens: usize,
    pub(crate) closed: bool,
}

/// The literal that ends the current string and opens the next one (or ends the object).
pub(crate) fn close_json_string(json: &mut JsonProgress) -> &'static str {
    json.string_tokens = 0;
    match json.field {
        JsonField::Question => {
            json.field = JsonField::Answer;
            "\", \"answer\": \""
        }
        JsonField::Answer => {
            json.pairs_done += 1;
            json.field = JsonField::Question;
            if json.pairs_done < json.pairs_total {
                "\"}, {\"question\": \""
            } else {
                json.closed = true;
                "\"}]}"
            }
        }
    }
}
