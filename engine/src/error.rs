use std::path::PathBuf;

/// Errors at the engine's edge; model code uses `candle_core::Result` inside.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {path} not found; run `lift model fetch` to download the default model")]
    ModelMissing { path: PathBuf },
    #[error("model file {path} is corrupt ({reason}); delete it and run `lift model fetch`")]
    ModelCorrupt { path: PathBuf, reason: String },
    #[error("unsupported model architecture `{0}` (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("invalid adapter: {0}")]
    InvalidAdapter(String),
    #[error("prompt of {tokens} tokens does not fit the context window of {context} tokens")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the engine's thread has stopped")]
    Stopped,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}
