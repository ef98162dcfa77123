//! Types and plumbing every lift process shares: job ids, the job spec and its validation,
//! the broker messages and the records the store holds, the job state machine,
//! configuration, errors mapped to gRPC codes, tracing setup and the generated gRPC API. The
//! broker is `lift-broker` (`shared/broker`), the store `lift-store` (`shared/store`).

pub mod auth;
pub mod config;
pub mod error;
pub mod ids;
pub mod messages;
pub mod metrics;
pub mod proto;
pub mod proto_convert;
pub mod protocol;
pub mod records;
pub mod spec;
pub mod state;
pub mod telemetry;
pub mod tls;
