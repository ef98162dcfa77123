//! The roles wired into processes: what `lift coordinator`, `lift synth-worker`,
//! `lift train-worker` and the embedded mode of `lift run` start, over which broker and store,
//! and how they stop. The CLI (`cli/`) parses arguments and prints; it calls in here.

pub mod embedded;
pub mod infra;
pub mod ops;
pub mod roles;
