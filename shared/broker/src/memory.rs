//! The in-process broker of embedded mode: the RabbitMQ semantics lift relies on (prefetch,
//! redelivery of unacked messages, a delivery limit, dead-letter queues) without a server, so
//! embedded and distributed runs exercise the same worker code paths.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    queues, Broker, BrokerError, Delivery, DeliveryStream, Headers, DEATH_QUEUE_HEADER,
    DEATH_REASON_HEADER,
};

/// Deliveries of one message before it is dead-lettered, as RabbitMQ's `x-delivery-limit`.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

#[derive(Debug, Clone)]
struct Message {
    payload: Bytes,
    headers: Headers,
    /// Times the message was handed to a consumer.
    deliveries: u32,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Message>,
    arrived: Arc<Notify>,
}

struct Inner {
    queues: Mutex<HashMap<String, QueueState>>,
    delivery_limit: u32,
    closed: watch::Sender<bool>,
}

impl Inner {
    fn lock_queues(&self) -> MutexGuard<'_, HashMap<String, QueueState>> {
        // A panic while holding the lock cannot leave the map half-updated (every critical
        // section is a single push or pop), so a poisoned lock is still usable.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, queue: &str, message: Message, front: bool) {
        let mut queues = self.lock_queues();
        let state = queues.entry(queue.to_string()).or_default();
        if front {
            state.ready.push_front(message);
        } else {
            state.ready.push_back(message);
        }
        state.arrived.notify_waiters();
    }

    fn pop(&self, queue: &str) -> Option<Message> {
        self.lock_queues().get_mut(queue)?.ready.pop_front()
    }

    /// Notified whenever a message lands in `queue` (creating the queue on first use).
    fn arrived_signal(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.lock_queues();
        queues.entry(queue.to_string()).or_default().arrived.clone()
    }

    fn dead_letter(&self, queue: &str, mut message: Message, reason: &str) {
        message
            .headers
            .entry(DEATH_QUEUE_HEADER.to_string())
            .or_insert_with(|| queue.to_string());
        message
            .headers
            .entry(DEATH_REASON_HEADER.to_string())
            .or_insert_with(|| reason.to_string());
        message.deliveries = 0;
        tracing::warn!(queue, reason, "message dead-lettered");
        self.push(&queues::dead_letter_queue(queue), message, false);
    }

    /// A message came back unacknowledged: retry it first in line, or dead-letter it once it
    /// used up its deliveries.
    fn return_message(&self, queue: &str, message: Message) {
        if message.deliveries >= self.delivery_limit {
            self.dead_letter(queue, message, "delivery_limit");
        } else {
            self.push(queue, message, true);
        }
    }
}

/// Broker for one process. Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct InProcessBroker {
    inner: Arc<Inner>,
}

impl Default for InProcessBroker {
    fn default() -> Self {
        Self::new(DEFAULT_DELIVERY_LIMIT)
    }
}

impl InProcessBroker {
    /// `delivery_limit`: deliveries of a message before it goes to its dead-letter queue
    /// (at least 1).
    pub fn new(delivery_limit: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                queues: Mutex::new(HashMap::new()),
                delivery_limit: delivery_limit.max(1),
                closed: watch::channel(false).0,
            }),
        }
    }

    /// Ends every consumer stream (shutdown); publishing afterwards fails with `Closed`.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }
}

#[async_trait]
impl Broker for InProcessBroker {
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        let message = Message {
            payload: Bytes::copy_from_slice(payload),
            headers,
            deliveries: 0,
        };
        self.inner.push(queue, message, false);
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        // AMQP reads a prefetch of 0 as "no limit".
        let permits = if prefetch == 0 {
            Semaphore::MAX_PERMITS
        } else {
            usize::from(prefetch)
        };
        let consumer = Arc::new(Consumer {
            inner: self.inner.clone(),
            queue: queue.to_string(),
            outstanding: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(permits)),
        });
        let guard = ConsumerGuard(consumer);
        let stream = futures::stream::unfold(guard, |guard| async move {
            let delivery = guard.0.next_delivery().await?;
            Some((Ok(Box::new(delivery) as Box<dyn Delivery>), guard))
        });
        Ok(Box::pin(stream))
    }

    async fn fetch(&self, queue: &str) -> Result<Option<Box<dyn Delivery>>, BrokerError> {
        if self.is_closed() {
            return Err(BrokerError::Closed);
        }
        let Some(message) = self.inner.pop(queue) else {
            return Ok(None);
        };
        // A consumer of its own, with one slot: settling or dropping the delivery ends it.
        let consumer = Arc::new(Consumer {
            inner: self.inner.clone(),
            queue: queue.to_string(),
            outstanding: Mutex::new(HashMap::new()),
            next_tag: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(1)),
        });
        let permit = consumer
            .permits
            .clone()
            .try_acquire_owned()
            .expect("a new consumer has a free slot");
        Ok(Some(Box::new(consumer.deliver(message, permit))))
    }

    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let queues = self.inner.lock_queues();
        Ok(queues.get(queue).map_or(0, |q| q.ready.len() as u64))
    }

    fn is_durable(&self) -> bool {
        false
    }
}

struct Consumer {
    inner: Arc<Inner>,
    queue: String,
    /// Unsettled deliveries by tag, kept so they can be returned when the consumer goes away.
    outstanding: Mutex<HashMap<u64, Message>>,
    next_tag: AtomicU64,
    permits: Arc<Semaphore>,
}

impl Consumer {
    fn lock_outstanding(&self) -> MutexGuard<'_, HashMap<u64, Message>> {
        self.outstanding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a prefetch slot and a message; `None` once the broker is closed.
    async fn next_delivery(self: &Arc<Self>) -> Option<InProcessDelivery> {
        let mut closed = self.inner.closed.subscribe();
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit.ok()?,
            _ = closed.wait_for(|closed| *closed) => return None,
        };
        let arrived = self.inner.arrived_signal(&self.queue);
        let message = loop {
            if *closed.borrow() {
                return None;
            }
            let notified = arrived.notified();
            tokio::pin!(notified);
            // Registered before looking, so a push between the look and the wait is not missed.
            notified.as_mut().enable();
            if let Some(message) = self.inner.pop(&self.queue) {
                break message;
            }
            tokio::select! {
                _ = notified => {}
                _ = closed.wait_for(|closed| *closed) => return None,
            }
        };
        Some(self.deliver(message, permit))
    }

    /// Hands out `message`, remembered until it is settled.
    fn deliver(
        self: &Arc<Self>,
        mut message: Message,
        permit: OwnedSemaphorePermit,
    ) -> InProcessDelivery {
        message.deliveries += 1;
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let delivery = InProcessDelivery {
            consumer: self.clone(),
            tag,
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            redelivery_count: message.deliveries - 1,
            permit: Some(permit),
        };
        self.lock_outstanding().insert(tag, message);
        delivery
    }

    fn settle(&self, tag: u64, outcome: Outcome) -> Result<(), BrokerError> {
        // Missing: the consumer went away and the message was already returned to the queue,
        // as when RabbitMQ closes the channel under an unacked delivery.
        let message = self
            .lock_outstanding()
            .remove(&tag)
            .ok_or(BrokerError::Closed)?;
        match outcome {
            Outcome::Ack => {}
            Outcome::Requeue => self.inner.return_message(&self.queue, message),
            Outcome::Reject => self.inner.dead_letter(&self.queue, message, "rejected"),
        }
        Ok(())
    }
}

/// Lives inside the consumer stream: dropping the stream returns its unsettled deliveries.
struct ConsumerGuard(Arc<Consumer>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let mut returned: Vec<(u64, Message)> = self.0.lock_outstanding().drain().collect();
        // Oldest first, so the queue keeps its order after they are pushed back to the front.
        returned.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        for (_, message) in returned {
            self.0.inner.return_message(&self.0.queue, message);
        }
    }
}

enum Outcome {
    Ack,
    Requeue,
    Reject,
}

struct InProcessDelivery {
    consumer: Arc<Consumer>,
    tag: u64,
    payload: Bytes,
    headers: Headers,
    redelivery_count: u32,
    /// Holds one prefetch slot until the delivery is settled or dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl InProcessDelivery {
    fn finish(mut self, outcome: Outcome) -> Result<(), BrokerError> {
        self.permit.take();
        self.consumer.settle(self.tag, outcome)
    }
}

impl Drop for InProcessDelivery {
    fn drop(&mut self) {
        // Still holding the permit means nobody settled it: redeliver, as RabbitMQ would when
        // the consumer's channel closes.
        if self.permit.take().is_some() {
            let _ = self.consumer.settle(self.tag, Outcome::Requeue);
        }
    }
}

#[async_trait]
impl Delivery for InProcessDelivery {
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn headers(&self) -> &Headers {
        &self.headers
    }

    fn redelivery_count(&self) -> u32 {
        self.redelivery_count
    }

    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        (*self).finish(Outcome::Ack)
    }

    async fn nack_requeue(self: Box<Self>) -> Result<(), BrokerError> {
        (*self).finish(Outcome::Requeue)
    }

    async fn reject(self: Box<Self>) -> Result<(), BrokerError> {
        (*self).finish(Outcome::Reject)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    const Q: &str = "test.q";

    async fn publish(broker: &InProcessBroker, text: &str) {
        broker
            .publish(Q, text.as_bytes(), Headers::new())
            .await
            .unwrap();
    }

    async fn next(stream: &mut DeliveryStream) -> Box<dyn Delivery> {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a delivery within 5 s")
            .expect("stream open")
            .expect("delivery ok")
    }

    async fn nothing_within(stream: &mut DeliveryStream, millis: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(millis), stream.next())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_ack_removes_them() {
        let broker = InProcessBroker::default();
        publish(&broker, "a").await;
        publish(&broker, "b").await;
        assert_eq!(broker.queue_depth(Q).await.unwrap(), 2);
        let mut stream = broker.consume(Q, 10).await.unwrap();
        let first = next(&mut stream).await;
        let second = next(&mut stream).await;
        assert_eq!(first.payload(), b"a");
        assert_eq!(second.payload(), b"b");
        assert_eq!(first.redelivery_count(), 0);
        first.ack().await.unwrap();
        second.ack().await.unwrap();
        assert_eq!(broker.queue_depth(Q).await.unwrap(), 0);
        assert!(nothing_within(&mut stream, 50).await);
    }

    #[tokio::test]
    async fn consumer_waits_for_messages_published_later() {
        let broker = InProcessBroker::default();
        let mut stream = broker.consume(Q, 1).await.unwrap();
        let publisher = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publish(&publisher, "late").await;
        });
        assert_eq!(next(&mut stream).await.payload(), b"late");
    }

    #[tokio::test]
    async fn prefetch_limits_unacked_deliveries() {
        let broker = InProcessBroker::default();
        for text in ["a", "b", "c"] {
            publish(&broker, text).await;
        }
        let mut stream = broker.consume(Q, 2).await.unwrap();
        let first = next(&mut stream).await;
        let _second = next(&mut stream).await;
        assert!(
            nothing_within(&mut stream, 50).await,
            "third exceeds prefetch"
        );
        first.ack().await.unwrap();
        assert_eq!(next(&mut stream).await.payload(), b"c");
    }

    #[tokio::test]
    async fn nacked_message_is_redelivered_with_a_count() {
        let broker = InProcessBroker::default();
        publish(&broker, "a").await;
        let mut stream = broker.consume(Q, 1).await.unwrap();
        next(&mut stream).await.nack_requeue().await.unwrap();
        let again = next(&mut stream).await;
        assert_eq!(again.payload(), b"a");
        assert_eq!(again.redelivery_count(), 1);
    }

    #[tokio::test]
    async fn dropped_delivery_is_redelivered() {
        let broker = InProcessBroker::default();
        publish(&broker, "a").await;
        let mut stream = broker.consume(Q, 1).await.unwrap();
        drop(next(&mut stream).await);
        let again = next(&mut stream).await;
        assert_eq!(again.redelivery_count(), 1);
    }

    #[tokio::test]
    async fn dropped_consumer_returns_its_unacked_deliveries() {
        let broker = InProcessBroker::default();
        publish(&broker, "a").await;
        publish(&broker, "b").await;
        let mut stream = broker.consume(Q, 5).await.unwrap();
        let held = next(&mut stream).await;
        let _other = next(&mut stream).await;
        drop(stream);
        assert_eq!(broker.queue_depth(Q).await.unwrap(), 2);
        // The channel is gone, so settling the old delivery fails like it does on RabbitMQ.
        assert!(matches!(held.ack().await, Err(BrokerError::Closed)));
        let mut fresh = broker.consume(Q, 5).await.unwrap();
        let first = next(&mut fresh).await;
        let second = next(&mut fresh).await;
        assert_eq!(first.payload(), b"a");
        assert_eq!(second.payload(), b"b");
    }

    #[tokio::test]
    async fn delivery_limit_moves_message_to_dead_letter_queue() {
        let broker = InProcessBroker::new(3);
        publish(&broker, "poison").await;
        let mut stream = broker.consume(Q, 1).await.unwrap();
        for attempt in 0..3 {
            let delivery = next(&mut stream).await;
            assert_eq!(delivery.redelivery_count(), attempt);
            delivery.nack_requeue().await.unwrap();
        }
        assert!(nothing_within(&mut stream, 50).await);
        let dlq = queues::dead_letter_queue(Q);
        assert_eq!(broker.queue_depth(&dlq).await.unwrap(), 1);
        let mut dead = broker.consume(&dlq, 1).await.unwrap();
        let delivery = next(&mut dead).await;
        assert_eq!(delivery.payload(), b"poison");
        assert_eq!(delivery.headers()[DEATH_REASON_HEADER], "delivery_limit");
        assert_eq!(delivery.headers()[DEATH_QUEUE_HEADER], Q);
    }

    #[tokio::test]
    async fn reject_dead_letters_at_once() {
        let broker = InProcessBroker::default();
        publish(&broker, "bad").await;
        let mut stream = broker.consume(Q, 1).await.unwrap();
        next(&mut stream).await.reject().await.unwrap();
        let dlq = queues::dead_letter_queue(Q);
        assert_eq!(broker.queue_depth(&dlq).await.unwrap(), 1);
        assert_eq!(broker.queue_depth(Q).await.unwrap(), 0);
        let mut dead = broker.consume(&dlq, 1).await.unwrap();
        assert_eq!(
            next(&mut dead).await.headers()[DEATH_REASON_HEADER],
            "rejected"
        );
    }

    #[tokio::test]
    async fn competing_consumers_each_get_distinct_messages() {
        let broker = InProcessBroker::default();
        let mut one = broker.consume(Q, 1).await.unwrap();
        let mut two = broker.consume(Q, 1).await.unwrap();
        publish(&broker, "a").await;
        publish(&broker, "b").await;
        let first = next(&mut one).await;
        let second = next(&mut two).await;
        assert_ne!(first.payload(), second.payload());
    }

    #[tokio::test]
    async fn close_ends_streams_and_refuses_publishes() {
        let broker = InProcessBroker::default();
        let mut stream = broker.consume(Q, 1).await.unwrap();
        broker.close();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap();
        assert!(end.is_none());
        assert!(matches!(
            broker.publish(Q, b"x", Headers::new()).await,
            Err(BrokerError::Closed)
        ));
        assert!(!broker.is_durable());
    }

    #[tokio::test]
    async fn fetch_takes_one_message_and_an_unsettled_one_comes_back() {
        let broker = InProcessBroker::default();
        assert!(broker.fetch(Q).await.unwrap().is_none());
        publish(&broker, "first").await;
        publish(&broker, "second").await;
        let first = broker.fetch(Q).await.unwrap().unwrap();
        assert_eq!(first.payload(), b"first");
        drop(first);
        let again = broker.fetch(Q).await.unwrap().unwrap();
        assert_eq!(
            (again.payload(), again.redelivery_count()),
            (&b"first"[..], 1)
        );
        again.ack().await.unwrap();
        let second = broker.fetch(Q).await.unwrap().unwrap();
        assert_eq!(second.payload(), b"second");
        second.ack().await.unwrap();
        assert!(broker.fetch(Q).await.unwrap().is_none());
        assert_eq!(broker.queue_depth(Q).await.unwrap(), 0);
    }
}
