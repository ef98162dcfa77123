//! The message broker behind one trait: RabbitMQ in distributed mode, an in-process queue set
//! in embedded mode. Every delivery is at-least-once; consumers ack after the durable write.
//! What travels (payloads, queue names, headers) is the contract in `lift_shared::messages`;
//! this crate only moves it.

pub mod memory;
pub mod rabbitmq;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use lift_shared::error::LiftError;

// Re-exported so that a broker user names the queues and headers through one import.
pub use lift_shared::messages::{queues, Headers, DEATH_QUEUE_HEADER, DEATH_REASON_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("publish to {queue} was not confirmed: {reason}")]
    NotConfirmed { queue: String, reason: String },
    #[error("broker closed")]
    Closed,
}

impl From<BrokerError> for LiftError {
    fn from(error: BrokerError) -> Self {
        LiftError::Unavailable(error.to_string())
    }
}

/// One received message. Exactly one of `ack`, `nack_requeue` or `reject` must be called;
/// a delivery dropped without either is redelivered when the consumer goes away.
#[async_trait]
pub trait Delivery: Send + Sync {
    fn payload(&self) -> &[u8];
    fn headers(&self) -> &Headers;
    /// How many times this message was delivered before (0 on the first delivery).
    fn redelivery_count(&self) -> u32;
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Put the message back for another attempt; counts toward the delivery limit.
    async fn nack_requeue(self: Box<Self>) -> Result<(), BrokerError>;
    /// Give up on the message: it goes to the queue's dead-letter queue.
    async fn reject(self: Box<Self>) -> Result<(), BrokerError>;
}

pub type DeliveryStream =
    Pin<Box<dyn Stream<Item = Result<Box<dyn Delivery>, BrokerError>> + Send>>;

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes a persistent message and returns once the broker confirmed it.
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), BrokerError>;
    /// Consumes a queue with at most `prefetch` unacked deliveries in flight. The stream
    /// survives reconnects (the implementation re-consumes); it ends only on shutdown.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError>;
    /// Takes one ready message, if any, without subscribing. For a consumer that works on
    /// one long job at a time: a subscription would keep the next message in its prefetch
    /// buffer, away from idle consumers, for as long as the current job runs.
    async fn fetch(&self, queue: &str) -> Result<Option<Box<dyn Delivery>>, BrokerError>;
    /// Number of messages ready in a queue (for autoscaling and benchmarks).
    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError>;
    /// Whether queued messages survive a restart of the process. The coordinator republishes
    /// unfinished work at start when they do not (the in-process broker).
    fn is_durable(&self) -> bool {
        true
    }
}
