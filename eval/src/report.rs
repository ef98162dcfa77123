//! What `lift eval` reports, cell by cell, so a report can be re-plotted or compared later.

use serde::{Deserialize, Serialize};

/// One needle-in-a-haystack cell for one setting (`base`, `base+context` or `lift`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NiahCell {
    pub setting: String,
    pub length_tokens: usize,
    pub depth_percent: u32,
    pub answer: String,
    pub key_facts_hit: bool,
    pub f1: f64,
    /// False when the setting could not run this cell (the document does not fit the
    /// model's context); such cells are drawn grey and left out of the scores.
    pub fits_context: bool,
}

/// SQuAD scores of one setting, means over its questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadScore {
    pub setting: String,
    pub exact_match: f64,
    pub f1: f64,
    /// Share of answers that contain a gold answer as whole normalised tokens: this model
    /// answers in sentences, which exact match scores 0 and F1 only in part (SEAL grades
    /// answers with a judge model for the same reason). Absent from reports before 2026-12-02.
    #[serde(default)]
    pub contains_answer: f64,
    pub questions: usize,
}
