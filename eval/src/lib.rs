//! Quality evaluation of LIFT, the parts without a model: answer metrics (SQuAD's official
//! normalisation, exact match, token F1, key facts), the key-fact dev set, the
//! needle-in-a-haystack builder, the SQuAD loader, report types and plots. `lift eval` runs the models and the jobs.

pub mod facts;
pub mod haystack;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod squad;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("evaluation data missing at {path}: run scripts/fetch-eval-data.sh ({detail})")]
    DataMissing { path: String, detail: String },
    #[error("evaluation data at {path} is malformed: {detail}")]
    DataMalformed { path: String, detail: String },
    #[error("invalid evaluation option: {0}")]
    InvalidOption(String),
    #[error("failed to draw {path}: {detail}")]
    Plot { path: String, detail: String },
}
