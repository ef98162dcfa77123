//! The synth worker: turns chunks of sentences into question/answer training tasks. It asks a
//! generator (an OpenAI-compatible server or the built-in engine) about each sentence, keeps
//! only well-formed pairs whose answers the source supports, optionally adds rule-based cloze
//! tasks, and writes one task file per chunk to the store.

pub mod builtin;
pub mod cloze;
pub mod facts;
pub mod generator;
pub mod ground;
pub mod instant;
pub mod keys;
pub mod openai;
pub mod parse;
mod past_tense;
pub mod prompt;
pub mod referent;
pub mod restate;
pub mod synthesize;
pub mod templates;
pub mod worker;

pub use builtin::{BuiltinConfig, BuiltinGenerator};
pub use generator::{GeneratorError, QaGenerator, QaRequest, RawReply, RestateRequest};
pub use instant::{InstantGenerator, INSTANT_GENERATOR_URL};
pub use openai::{OpenAiGenerator, OpenAiOptions, ResponseFormat};
pub use synthesize::SynthesisTuning;
pub use worker::{run_synth_worker, SynthWorkerConfig, SynthWorkerError};

#[cfg(test)]
mod worker_tests;
