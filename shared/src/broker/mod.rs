//! The message broker behind one trait: RabbitMQ in distributed mode, an in-process queue set
//! in embedded mode. Every delivery is at-least-once; consumers ack after the durable write.

pub mod memory;
pub mod rabbitmq;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// Queue names, one per flow in ARCHITECTURE.md.
pub mod queues {
    /// Chunks of sentences waiting for question/answer synthesis.
    pub const SYNTH: &str = "lift.synth";
    /// Jobs waiting for a trainer (one message per job and training attempt).
    pub const TRAIN: &str = "lift.train";
    /// Progress events from workers to the coordinator.
    pub const EVENTS: &str = "lift.events";
    /// Where a queue's messages go after the delivery limit; the dead-letter queue of `q`
    /// is `dead_letter_queue(q)`.
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{queue}.dead")
    }
}

/// Header naming the queue a dead-lettered message came from (RabbitMQ sets it too).
pub const DEATH_QUEUE_HEADER: &str = "x-first-death-queue";
/// Header saying why a message was dead-lettered: `rejected` or `delivery_limit` (RabbitMQ's
/// values; it also uses `expired`).
pub const DEATH_REASON_HEADER: &str = "x-first-death-reason";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("publish to {queue} was not confirmed: {reason}")]
    NotConfirmed { queue: String, reason: String },
    #[error("broker closed")]
    Closed,
}

/// Message headers that travel with a payload (W3C trace context, message kind).
pub type Headers = std::collections::BTreeMap<String, String>;

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
