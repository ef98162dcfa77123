//! Completions through the engine's batcher (`engine/src/batcher.rs`), which puts the waiting
//! completions for the same adapter into one engine call, and the token counts of each.

use std::sync::Arc;

use lift_engine::{
    Batcher, EngineError, FinishReason, GenerationOutput, GenerationRequest, LoraAdapter,
};
use lift_shared::metrics;
use tokio::sync::mpsc;

use super::error::ServeError;

pub(super) enum StreamPiece {
    Text(String),
    Finished(FinishReason),
    Failed(ServeError),
}

/// One whole completion.
pub(super) async fn complete(
    batcher: &Batcher,
    adapter: Option<Arc<LoraAdapter>>,
    request: GenerationRequest,
) -> Result<GenerationOutput, ServeError> {
    let output = batcher
        .generate(adapter, vec![request])
        .await
        .map_err(engine_error)?
        .pop()
        .ok_or_else(|| ServeError::Internal("engine returned no output".to_string()))?;
    count_tokens(&output);
    Ok(output)
}

/// One completion as its text is decoded, ending with `Finished` or `Failed`. Dropping the
/// receiver (the client went away) stops the decoding.
pub(super) fn stream(
    batcher: &Batcher,
    adapter: Option<Arc<LoraAdapter>>,
    request: GenerationRequest,
) -> mpsc::UnboundedReceiver<StreamPiece> {
    let (pieces, receiver) = mpsc::unbounded_channel();
    let batcher = batcher.clone();
    tokio::spawn(async move {
        let sender = pieces.clone();
        let on_text =
            Box::new(move |text: &str| sender.send(StreamPiece::Text(text.to_string())).is_ok());
        let last = match batcher.generate_stream(adapter, request, on_text).await {
            Ok(output) => {
                count_tokens(&output);
                StreamPiece::Finished(output.finish_reason)
            }
            Err(error) => StreamPiece::Failed(engine_error(error)),
        };
        let _ = pieces.send(last);
    });
    receiver
}

fn engine_error(error: EngineError) -> ServeError {
    match error {
        EngineError::Stopped => ServeError::shutting_down(),
        other => ServeError::engine(other),
    }
}

fn count_tokens(output: &GenerationOutput) {
    metrics::SERVE_PROMPT_TOKENS.inc_by(output.prompt_tokens as u64);
    metrics::SERVE_GENERATION_TOKENS.inc_by(output.completion_tokens as u64);
}
