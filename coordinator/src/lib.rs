//! The lift coordinator: the gRPC front door (`service`), sentence splitting and fan-out of
//! chunks to the synth workers (`split`, `chunk`, `fanout`), progress aggregation into job
//! records (`progress`), recovery from the store (`recovery`), the trainer watchdog
//! (`lease`), the jobs/queue gauges (`gauges`) and bearer-token authentication (`auth`). `Coordinator::start` runs it all;
//! `serve_grpc` exposes it.

mod auth;
pub mod chunk;
mod fanout;
mod gauges;
mod jobs;
mod lease;
mod progress;
mod recovery;
mod server;
pub mod service;
pub mod split;

pub use server::{serve_grpc, serve_grpc_on, Coordinator, CoordinatorOptions};
pub use service::LiftServiceImpl;

#[cfg(test)]
mod tests;
