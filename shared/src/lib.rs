//! Types and plumbing every lift process shares: job ids, the job spec and its validation,
//! broker messages and the broker trait, the object-store layout, the job state machine,
//! configuration, errors mapped to gRPC codes, tracing setup and the generated gRPC API.

pub mod auth;
pub mod broker;
pub mod config;
pub mod error;
pub mod ids;
pub mod messages;
pub mod metrics;
pub mod proto;
pub mod proto_convert;
pub mod protocol;
pub mod spec;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
