//! RabbitMQ behind the [`Broker`] trait (distributed mode).
//!
//! Topology, declared on the first publish or consume of a queue (idempotent): the queue is a
//! durable quorum queue with an explicit `x-delivery-limit` and an at-least-once dead-letter
//! route through the direct exchange `lift.dlx` to `<queue>.dead`, itself a durable quorum queue.
//! Every limit is declared explicitly because the test broker (3.10) lacks the 4.x defaults.
//!
//! Recovery: the broker holds one AMQP connection and replaces it, with exponential backoff,
//! whenever it is found dead. A publish that fails for a transient reason is retried on a fresh
//! channel until `retry_timeout`; every consumer has a supervisor task that re-opens a channel
//! and re-consumes after a connection loss, a channel error or a server-side `basic.cancel`.
//! lapin's own `enable_auto_recover()` is deliberately not used: a server-side `basic.cancel` is
//! no error, so lapin's recovery never acts on it and a supervisor is needed anyway; with one
//! mechanism for every case, a delivery always belongs to a connection that is never reused, so
//! settling it after a reconnect fails loudly instead of touching a recovered channel.
//!
//! Over 600 lines: the topology, the connection and the consumer supervisors share one
//! reconnection state and are read together; 500 of the lines are tests against a real broker.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ErrorKind, ExchangeKind,
};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::queues::dead_letter_queue;
use super::{Broker, BrokerError, Delivery, DeliveryStream, Headers};

/// The direct exchange that routes every dead-lettered message to `<queue>.dead`.
pub const DEAD_LETTER_EXCHANGE: &str = "lift.dlx";
/// Deliveries of one message before it is dead-lettered, unless configured otherwise.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// Set by quorum queues on redeliveries: how often the message was returned before.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
const DELIVERY_MODE_PERSISTENT: u8 = 2;
const REPLY_SUCCESS: u16 = 200;
const AMQP_NOT_FOUND: u16 = 404;

/// How to reach RabbitMQ and how hard to try.
#[derive(Debug, Clone)]
pub struct RabbitBrokerOptions {
    /// AMQP URL, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (env `LIFT_AMQP_URL`).
    pub url: String,
    /// `x-delivery-limit` of every queue this broker declares (`LIFT_DELIVERY_LIMIT`).
    /// Changing it for an existing queue is refused by RabbitMQ (inequivalent argument).
    pub delivery_limit: u32,
    /// Name shown by `rabbitmqctl list_connections client_properties`.
    pub connection_name: String,
    /// How long connect, publish, consume and queue_depth keep retrying transient failures
    /// before they return [`BrokerError::Unavailable`].
    pub retry_timeout: Duration,
    /// First delay between attempts; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Limit for one TCP/AMQP connect attempt and for one publisher confirm.
    pub attempt_timeout: Duration,
    /// How often a consumer checks, with a passive declare on its channel, that its queue still
    /// exists and counts a consumer; if not, it re-consumes. A safety net: RabbitMQ 3.10 sends
    /// the `basic.cancel` for a deleted quorum queue asynchronously and may not send it at all.
    pub consumer_check_interval: Duration,
}

impl RabbitBrokerOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            connection_name: "lift".to_owned(),
            retry_timeout: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(15),
            consumer_check_interval: Duration::from_secs(30),
        }
    }

    /// The options a `lift` process uses: URL, delivery limit and retry time from its
    /// configuration, `connection_name` to tell its connections apart.
    pub fn from_config(config: &lift_shared::config::Config, connection_name: &str) -> Self {
        Self {
            delivery_limit: config.delivery_limit,
            retry_timeout: Duration::from_secs(config.broker_retry_secs),
            connection_name: connection_name.to_string(),
            ..Self::new(config.amqp_url.clone())
        }
    }
}

/// The RabbitMQ broker. Dropping it (or calling [`RabbitBroker::shutdown`]) ends every
/// delivery stream it handed out.
pub struct RabbitBroker {
    shared: Arc<Shared>,
}

struct Shared {
    options: RabbitBrokerOptions,
    /// The current connection; replaced when found dead.
    connection: Mutex<Option<Arc<Connection>>>,
    /// A confirm-mode channel shared by all publishes; replaced when found dead.
    publish_channel: Mutex<Option<Channel>>,
    /// The channel `fetch` pulls messages on (their acks go back on it); replaced when dead.
    fetch_channel: Mutex<Option<Channel>>,
    /// Queues whose topology this process declared (declarations are durable).
    declared_queues: StdMutex<HashSet<String>>,
    shutdown: watch::Sender<bool>,
    consumer_supervisors: StdMutex<Vec<JoinHandle<()>>>,
}

/// Why one attempt failed: worth another attempt, or not.
enum AttemptError {
    Retry(String),
    Fail(BrokerError),
}

impl From<lapin::Error> for AttemptError {
    fn from(error: lapin::Error) -> Self {
        // Channel-level (soft) errors are answers about the request itself (inequivalent
        // queue arguments, access refused); everything else is about the connection.
        if error.is_amqp_soft_error() {
            AttemptError::Fail(BrokerError::Unavailable(error.to_string()))
        } else {
            AttemptError::Retry(error.to_string())
        }
    }
}

impl RabbitBroker {
    /// Connects, retrying with backoff for up to `options.retry_timeout` (RabbitMQ may still be
    /// starting).
    pub async fn connect(options: RabbitBrokerOptions) -> Result<Self, BrokerError> {
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            options,
            connection: Mutex::new(None),
            publish_channel: Mutex::new(None),
            fetch_channel: Mutex::new(None),
            declared_queues: StdMutex::new(HashSet::new()),
            shutdown,
            consumer_supervisors: StdMutex::new(Vec::new()),
        });
        let what = format!(
            "failed to connect to rabbitmq at {}",
            redact_url(&shared.options.url)
        );
        shared
            .with_retry(&what, || async { shared.connection().await.map(drop) })
            .await?;
        Ok(Self { shared })
    }

    pub fn options(&self) -> &RabbitBrokerOptions {
        &self.shared.options
    }

    /// Ends every delivery stream, waits for the consumer supervisors and closes the
    /// connection. Later calls on this broker return [`BrokerError::Closed`].
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let supervisors = std::mem::take(&mut *lock(&self.shared.consumer_supervisors));
        for supervisor in supervisors {
            if let Err(error) = supervisor.await {
                tracing::warn!(%error, "rabbitmq consumer supervisor panicked");
            }
        }
        for channel in [&self.shared.publish_channel, &self.shared.fetch_channel] {
            if let Some(channel) = channel.lock().await.take() {
                close_channel_quietly(&channel).await;
            }
        }
        if let Some(connection) = self.shared.connection.lock().await.take() {
            if connection.status().connected() {
                if let Err(error) = connection.close(REPLY_SUCCESS, "shutdown".into()).await {
                    tracing::debug!(%error, "failed to close rabbitmq connection");
                }
            }
        }
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        // Supervisors notice and exit; the last of them drops the connection, which closes it.
        self.shared.shutdown.send_replace(true);
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn publish(
        &self,
        queue: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let what = format!("failed to publish to {queue}");
        shared
            .with_retry(&what, || shared.publish_once(queue, payload, &headers))
            .await
    }

    /// A `prefetch` of 0 means no limit (AMQP semantics).
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BrokerError> {
        let shared = &self.shared;
        let what = format!("failed to consume from {queue}");
        let subscription = shared
            .with_retry(&what, || shared.subscribe(queue, prefetch))
            .await?;
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        let supervisor = tokio::spawn(supervise_consumer(
            Arc::clone(shared),
            queue.to_owned(),
            prefetch,
            subscription,
            sender,
        ));
        let mut supervisors = lock(&shared.consumer_supervisors);
        supervisors.retain(|handle| !handle.is_finished());
        supervisors.push(supervisor);
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            let delivery = receiver.recv().await?;
            Some((Ok(delivery), receiver))
        });
        Ok(Box::pin(stream))
    }

    async fn fetch(&self, queue: &str) -> Result<Option<Box<dyn Delivery>>, BrokerError> {
        let shared = &self.shared;
        let what = format!("failed to fetch from {queue}");
        let delivery = shared
            .with_retry(&what, || shared.fetch_once(queue))
            .await?;
        Ok(delivery
            .map(|delivery| Box::new(RabbitDelivery::new(queue, delivery)) as Box<dyn Delivery>))
    }

    /// Ready messages in `queue`; 0 for a queue that was never declared.
    async fn queue_depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let shared = &self.shared;
        let what = format!("failed to read the depth of {queue}");
        shared
            .with_retry(&what, || shared.queue_depth_once(queue))
            .await
    }
}

impl Shared {
    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `attempt` until it succeeds, fails for good, `retry_timeout` passes or the broker
    /// shuts down.
    async fn with_retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let started = Instant::now();
        let deadline = started + self.options.retry_timeout;
        let mut backoff = Backoff::new(&self.options);
        let mut attempts = 0u32;
        loop {
            if self.is_shut_down() {
                return Err(BrokerError::Closed);
            }
            attempts += 1;
            let reason = match attempt().await {
                Ok(value) => return Ok(value),
                Err(AttemptError::Fail(BrokerError::Unavailable(reason))) => {
                    return Err(BrokerError::Unavailable(format!("{what}: {reason}")));
                }
                Err(AttemptError::Fail(error)) => return Err(error),
                Err(AttemptError::Retry(reason)) => reason,
            };
            let delay = backoff.next_delay();
            if Instant::now() + delay > deadline {
                return Err(BrokerError::Unavailable(format!(
                    "{what}: gave up after {attempts} attempts in {:.1} s: {reason}",
                    started.elapsed().as_secs_f64()
                )));
            }
            tracing::warn!(operation = what, attempt = attempts, %reason, retry_in_ms = delay.as_millis() as u64, "rabbitmq operation failed, retrying");
            if !self.sleep_unless_shut_down(delay).await {
                return Err(BrokerError::Closed);
            }
        }
    }

    /// Sleeps for `delay`; false when the broker shut down meanwhile.
    async fn sleep_unless_shut_down(&self, delay: Duration) -> bool {
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.wait_for(|shut_down| *shut_down) => false,
        }
    }

    /// The live connection, or one new connect attempt.
    async fn connection(&self) -> Result<Arc<Connection>, AttemptError> {
        let mut current = self.connection.lock().await;
        if self.is_shut_down() {
            return Err(AttemptError::Fail(BrokerError::Closed));
        }
        if let Some(connection) = current.as_ref() {
            if connection.status().connected() {
                return Ok(Arc::clone(connection));
            }
            tracing::warn!("rabbitmq connection lost, reconnecting");
        }
        *current = None;
        let properties = ConnectionProperties::default()
            .with_connection_name(self.options.connection_name.as_str().into());
        let connect = Connection::connect(&self.options.url, properties);
        let connection = tokio::time::timeout(self.options.attempt_timeout, connect)
            .await
            .map_err(|_| {
                AttemptError::Retry(format!(
                    "no connection within {} s",
                    self.options.attempt_timeout.as_secs()
                ))
            })?
            // Wrong credentials or vhost come back as protocol errors too: retried until the
            // deadline, since a broker that is still booting answers the same way.
            .map_err(|error| AttemptError::Retry(error.to_string()))?;
        let connection = Arc::new(connection);
        *current = Some(Arc::clone(&connection));
        tracing::info!(url = %redact_url(&self.options.url), "connected to rabbitmq");
        Ok(connection)
    }

    async fn publish_channel(&self) -> Result<Channel, AttemptError> {
        let mut current = self.publish_channel.lock().await;
        if let Some(channel) = current.as_ref() {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *current = None;
        let connection = self.connection().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *current = Some(channel.clone());
        Ok(channel)
    }

    async fn fetch_once(
        &self,
        queue: &str,
    ) -> Result<Option<lapin::message::Delivery>, AttemptError> {
        let mut current = self.fetch_channel.lock().await;
        let channel = match current.as_ref().filter(|c| c.status().connected()) {
            Some(channel) => channel.clone(),
            None => {
                *current = None;
                let channel = self.connection().await?.create_channel().await?;
                *current = Some(channel.clone());
                channel
            }
        };
        self.declare_topology(&channel, queue).await?;
        let options = BasicGetOptions { no_ack: false };
        match channel.basic_get(queue.into(), options).await {
            Ok(message) => Ok(message.map(|message| message.delivery)),
            Err(error) => {
                *current = None;
                Err(error.into())
            }
        }
    }

    async fn publish_once(
        &self,
        queue: &str,
        payload: &[u8],
        headers: &Headers,
    ) -> Result<(), AttemptError> {
        let channel = self.publish_channel().await?;
        if !self.is_declared(queue) {
            self.declare_topology(&channel, queue).await?;
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
            .with_headers(field_table_from_headers(headers));
        // Mandatory: a queue deleted behind our back returns the message instead of dropping it.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish("".into(), queue.into(), options, payload, properties)
            .await?;
        let confirmation = tokio::time::timeout(self.options.attempt_timeout, confirm)
            .await
            .map_err(|_| {
                AttemptError::Retry(format!(
                    "no publisher confirm within {} s",
                    self.options.attempt_timeout.as_secs()
                ))
            })??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => {
                lock(&self.declared_queues).remove(queue);
                Err(AttemptError::Retry(format!(
                    "message returned as unroutable ({} {}), re-declaring the queue",
                    returned.reply_code, returned.reply_text
                )))
            }
            // A quorum queue nacks while it has no leader (an election under load, a node
            // restarting): the message was not stored, so publishing it again is safe.
            Confirmation::Nack(_) => Err(AttemptError::Retry(format!(
                "the broker nacked the message on {queue} (queue leader unavailable?)"
            ))),
            Confirmation::NotRequested => Err(AttemptError::Fail(BrokerError::NotConfirmed {
                queue: queue.to_owned(),
                reason: "the channel is not in confirm mode".to_owned(),
            })),
        }
    }

    fn is_declared(&self, queue: &str) -> bool {
        lock(&self.declared_queues).contains(queue)
    }

    /// Declares the dead-letter exchange, `<queue>.dead` and `queue` (idempotent). A queue named
    /// like a dead-letter queue is declared as one, so that it can be consumed directly.
    async fn declare_topology(&self, channel: &Channel, queue: &str) -> Result<(), AttemptError> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        let dead_letters = match work_queue_of_dead_letter_queue(queue) {
            Some(_) => queue.to_owned(),
            None => dead_letter_queue(queue),
        };
        channel
            .queue_declare(
                dead_letters.as_str().into(),
                QueueDeclareOptions::durable(),
                dead_letter_queue_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                dead_letters.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                dead_letters.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if dead_letters != queue {
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions::durable(),
                    work_queue_arguments(&dead_letters, self.options.delivery_limit),
                )
                .await?;
        }
        lock(&self.declared_queues).insert(queue.to_owned());
        Ok(())
    }

    /// A fresh channel consuming `queue` (declared first: a deleted queue is also how a
    /// server-side `basic.cancel` happens).
    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Subscription, AttemptError> {
        let connection = self.connection().await?;
        let channel = connection.create_channel().await?;
        let consumer = async {
            self.declare_topology(&channel, queue).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, AttemptError>(consumer)
        }
        .await;
        match consumer {
            Ok(consumer) => Ok(Subscription { channel, consumer }),
            Err(error) => {
                close_channel_quietly(&channel).await;
                Err(error)
            }
        }
    }

    async fn queue_depth_once(&self, queue: &str) -> Result<u64, AttemptError> {
        let connection = self.connection().await?;
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await;
        match declared {
            Ok(declared) => {
                close_channel_quietly(&channel).await;
                Ok(u64::from(declared.message_count()))
            }
            // The server closed the channel already.
            Err(error) if is_not_found(&error) => Ok(0),
            Err(error) => {
                close_channel_quietly(&channel).await;
                Err(error.into())
            }
        }
    }

    #[cfg(test)]
    async fn delete_queue_with_dead_letters(&self, queue: &str) -> Result<(), BrokerError> {
        let what = format!("failed to delete {queue}");
        self.with_retry(&what, || async {
            let connection = self.connection().await?;
            let channel = connection.create_channel().await?;
            for name in [queue.to_owned(), dead_letter_queue(queue)] {
                channel
                    .queue_delete(name.as_str().into(), Default::default())
                    .await?;
            }
            close_channel_quietly(&channel).await;
            lock(&self.declared_queues).remove(queue);
            Ok(())
        })
        .await
    }
}

struct Subscription {
    channel: Channel,
    consumer: Consumer,
}

enum PumpEnd {
    ShutDown,
    StreamDropped,
    ConsumerEnded(String),
}

/// Forwards deliveries to the stream and re-consumes, with backoff, whenever the consumer
/// ends, until the broker shuts down or the stream is dropped.
async fn supervise_consumer(
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    mut subscription: Subscription,
    sender: mpsc::Sender<Box<dyn Delivery>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = Backoff::new(&shared.options);
    loop {
        let end = forward_deliveries(
            &shared.options,
            &queue,
            &mut subscription,
            &sender,
            &mut shutdown,
            &mut backoff,
        )
        .await;
        close_channel_quietly(&subscription.channel).await;
        match end {
            PumpEnd::ShutDown | PumpEnd::StreamDropped => return,
            PumpEnd::ConsumerEnded(reason) => {
                tracing::warn!(queue = %queue, %reason, "rabbitmq consumer ended, re-consuming");
            }
        }
        subscription = loop {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait_for(|shut_down| *shut_down) => return,
                _ = sender.closed() => return,
            }
            match shared.subscribe(&queue, prefetch).await {
                Ok(subscription) => {
                    tracing::info!(queue = %queue, "rabbitmq consumer re-consuming");
                    break subscription;
                }
                Err(AttemptError::Fail(BrokerError::Closed)) => return,
                Err(AttemptError::Retry(reason))
                | Err(AttemptError::Fail(BrokerError::Unavailable(reason))) => {
                    tracing::warn!(queue = %queue, %reason, retry_in_ms = delay.as_millis() as u64, "failed to re-consume");
                }
                Err(AttemptError::Fail(error)) => {
                    tracing::warn!(queue = %queue, %error, "failed to re-consume");
                }
            }
        };
    }
}

async fn forward_deliveries(
    options: &RabbitBrokerOptions,
    queue: &str,
    subscription: &mut Subscription,
    sender: &mpsc::Sender<Box<dyn Delivery>>,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> PumpEnd {
    let period = options.consumer_check_interval;
    let mut consumer_check = tokio::time::interval_at(Instant::now() + period, period);
    consumer_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let check_due = tokio::select! {
            _ = shutdown.wait_for(|shut_down| *shut_down) => return PumpEnd::ShutDown,
            _ = sender.closed() => return PumpEnd::StreamDropped,
            _ = consumer_check.tick() => None,
            next = subscription.consumer.next() => Some(next),
        };
        let Some(next) = check_due else {
            match check_consumer(options, &subscription.channel, queue).await {
                Ok(()) => continue,
                Err(reason) => return PumpEnd::ConsumerEnded(reason),
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return PumpEnd::ConsumerEnded(error.to_string()),
            None => return PumpEnd::ConsumerEnded("consumer cancelled".to_owned()),
        };
        backoff.reset();
        let delivery: Box<dyn Delivery> = Box::new(RabbitDelivery::new(queue, delivery));
        tokio::select! {
            _ = shutdown.wait_for(|shut_down| *shut_down) => return PumpEnd::ShutDown,
            sent = sender.send(delivery) => {
                if sent.is_err() {
                    return PumpEnd::StreamDropped;
                }
            }
        }
    }
}

/// Err when the consumer is gone without a `basic.cancel`: its queue was deleted, or its
/// channel failed.
async fn check_consumer(
    options: &RabbitBrokerOptions,
    channel: &Channel,
    queue: &str,
) -> Result<(), String> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(queue.into(), passive, FieldTable::default());
    match tokio::time::timeout(options.attempt_timeout, declare).await {
        Ok(Ok(declared)) if declared.consumer_count() > 0 => Ok(()),
        Ok(Ok(_)) => Err("the queue counts no consumer".to_owned()),
        Ok(Err(error)) if is_not_found(&error) => Err("the queue was deleted".to_owned()),
        Ok(Err(error)) => Err(format!("consumer check failed: {error}")),
        Err(_) => Err(format!(
            "consumer check got no answer within {} s",
            options.attempt_timeout.as_secs()
        )),
    }
}

struct RabbitDelivery {
    queue: String,
    delivery_tag: u64,
    payload: Vec<u8>,
    headers: Headers,
    redelivery_count: u32,
    acker: Acker,
}

impl RabbitDelivery {
    fn new(queue: &str, delivery: lapin::message::Delivery) -> Self {
        let table = delivery.properties.headers().clone().unwrap_or_default();
        Self {
            queue: queue.to_owned(),
            delivery_tag: delivery.delivery_tag,
            payload: delivery.data,
            headers: headers_from_field_table(&table),
            redelivery_count: delivery_count(&table),
            acker: delivery.acker,
        }
    }

    /// `settled` is lapin's answer: Ok(false) means the channel is gone.
    fn settle_result(&self, action: &str, settled: lapin::Result<bool>) -> Result<(), BrokerError> {
        let reason = match settled {
            Ok(true) => return Ok(()),
            Ok(false) => "its channel is closed".to_owned(),
            Err(error) => error.to_string(),
        };
        Err(BrokerError::Unavailable(format!(
            "failed to {action} delivery {} from {}: {reason} (the broker redelivers it)",
            self.delivery_tag, self.queue
        )))
    }
}

#[async_trait]
impl Delivery for RabbitDelivery {
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
        let settled = self.acker.ack(BasicAckOptions::default()).await;
        self.settle_result("ack", settled)
    }

    async fn nack_requeue(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let settled = self.acker.nack(options).await;
        self.settle_result("nack", settled)
    }

    async fn reject(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicRejectOptions { requeue: false };
        let settled = self.acker.reject(options).await;
        self.settle_result("reject", settled)
    }
}

/// Exponential backoff with jitter, so reconnecting workers do not stampede.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(options: &RabbitBrokerOptions) -> Self {
        Self {
            initial: options.initial_backoff,
            max: options.max_backoff,
            next: options.initial_backoff,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay.mul_f64(rand::random_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `Some(work queue)` when `queue` is the dead-letter queue of another queue.
fn work_queue_of_dead_letter_queue(queue: &str) -> Option<&str> {
    let suffix = dead_letter_queue("");
    queue.strip_suffix(suffix.as_str())
}

fn work_queue_arguments(dead_letters: &str, delivery_limit: u32) -> FieldTable {
    let mut arguments = quorum_queue_arguments();
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        long_string(DEAD_LETTER_EXCHANGE),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        long_string(dead_letters),
    );
    // At-least-once dead-lettering requires reject-publish overflow.
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    arguments
}

/// The dead-letter queue keeps what it gets: no delivery limit, no further dead-lettering.
fn dead_letter_queue_arguments() -> FieldTable {
    quorum_queue_arguments()
}

fn quorum_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn field_table_from_headers(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(name.as_str()), long_string(value));
    }
    table
}

/// String-valued headers only; broker annotations of other types (`x-death`, counters) are
/// left out, and the delivery count is read by [`delivery_count`].
fn headers_from_field_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .filter_map(|(name, value)| {
            let text = match value {
                AMQPValue::LongString(text) => {
                    String::from_utf8_lossy(text.as_bytes()).into_owned()
                }
                AMQPValue::ShortString(text) => text.as_str().to_owned(),
                _ => return None,
            };
            Some((name.as_str().to_owned(), text))
        })
        .collect()
}

fn delivery_count(table: &FieldTable) -> u32 {
    let count: i128 = match table.inner().get(DELIVERY_COUNT_HEADER) {
        Some(AMQPValue::ShortShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortShortUInt(n)) => (*n).into(),
        Some(AMQPValue::ShortInt(n)) => (*n).into(),
        Some(AMQPValue::ShortUInt(n)) => (*n).into(),
        Some(AMQPValue::LongInt(n)) => (*n).into(),
        Some(AMQPValue::LongUInt(n)) => (*n).into(),
        Some(AMQPValue::LongLongInt(n)) => (*n).into(),
        Some(AMQPValue::Timestamp(n)) => (*n).into(),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp) if amqp.get_id() == AMQP_NOT_FOUND)
}

async fn close_channel_quietly(channel: &Channel) {
    if !channel.status().connected() {
        return;
    }
    if let Err(error) = channel.close(REPLY_SUCCESS, "OK".into()).await {
        tracing::debug!(%error, channel = channel.id(), "failed to close rabbitmq channel");
    }
}

/// The URL without its password, for messages and logs.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***@{host}")
}

fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Integration tests against the real broker at `LIFT_TEST_AMQP_URL` (`scripts/test-env.sh`
/// starts one). They fail, never skip, when the broker or `rabbitmqctl` is missing.
#[cfg(test)]
mod tests {
    use super::*;

    /// The forced-close test closes every connection on the broker; the others hold the read
    /// side so that their exact delivery counts are not disturbed.
    static FORCED_CLOSE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());
    const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
    const QUIET_PERIOD: Duration = Duration::from_millis(1500);

    /// Broker logs in the test output (`RUST_LOG=lapin=debug` for more).
    fn init_test_logs() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _already_set = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }

    // The test harness's variable (scripts/test-env.sh), not process configuration.
    #[allow(clippy::disallowed_methods)]
    fn test_url() -> String {
        std::env::var("LIFT_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    fn unique_queue(purpose: &str) -> String {
        format!("lift.test.{purpose}.{}", uuid::Uuid::now_v7().simple())
    }

    async fn test_broker(delivery_limit: u32) -> RabbitBroker {
        init_test_logs();
        let mut options = RabbitBrokerOptions::new(test_url());
        options.delivery_limit = delivery_limit;
        options.connection_name = "lift-shared-test".to_owned();
        options.retry_timeout = Duration::from_secs(20);
        options.consumer_check_interval = Duration::from_secs(1);
        RabbitBroker::connect(options)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "the rabbitmq test broker at {} is unreachable (source scripts/test-env.sh \
                 to start it): {error}",
                    redact_url(&test_url())
                )
            })
    }

    async fn cleanup(broker: RabbitBroker, queue: &str) {
        broker
            .shared
            .delete_queue_with_dead_letters(queue)
            .await
            .expect("delete test queues");
        broker.shutdown().await;
    }

    async fn next_delivery(stream: &mut DeliveryStream) -> Box<dyn Delivery> {
        match tokio::time::timeout(RECEIVE_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(error))) => panic!("delivery stream failed: {error}"),
            Ok(None) => panic!("delivery stream ended"),
            Err(_) => panic!("no delivery within {RECEIVE_TIMEOUT:?}"),
        }
    }

    async fn assert_no_delivery(stream: &mut DeliveryStream) {
        if let Ok(next) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
            let what = match next {
                Some(Ok(delivery)) => format!(
                    "a delivery of {:?}",
                    String::from_utf8_lossy(delivery.payload())
                ),
                Some(Err(error)) => format!("an error: {error}"),
                None => "the end of the stream".to_owned(),
            };
            panic!("expected no delivery within {QUIET_PERIOD:?}, got {what}");
        }
    }

    async fn wait_for_depth(broker: &RabbitBroker, queue: &str, expected: u64) {
        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        loop {
            let depth = broker.queue_depth(queue).await.expect("queue depth");
            if depth == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} holds {depth} ready messages, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `rabbitmqctl close_all_connections`: what an operator or a broker restart does.
    async fn force_close_all_connections() {
        let output = tokio::task::spawn_blocking(|| {
            let mut last_error = None;
            for program in [
                "rabbitmqctl",
                "/usr/sbin/rabbitmqctl",
                "/usr/lib/rabbitmq/bin/rabbitmqctl",
            ] {
                match std::process::Command::new(program)
                    .args(["close_all_connections", "lift test: forced close"])
                    .output()
                {
                    Ok(output) => return output,
                    Err(error) => last_error = Some(error),
                }
            }
            panic!(
                "rabbitmqctl not found (PATH, /usr/sbin, /usr/lib/rabbitmq/bin): this test \
                 needs it to force-close connections; install rabbitmq-server \
                 (scripts/test-env.sh does): {last_error:?}"
            )
        })
        .await
        .expect("run rabbitmqctl");
        assert!(
            output.status.success(),
            "rabbitmqctl close_all_connections failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_consume_ack_round_trip() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("round-trip");
        assert_eq!(broker.queue_depth(&queue).await.expect("depth"), 0);

        broker
            .publish(&queue, b"chunk 7", Headers::new())
            .await
            .expect("publish");
        wait_for_depth(&broker, &queue, 1).await;
        let mut stream = broker.consume(&queue, 4).await.expect("consume");
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.payload(), b"chunk 7");
        assert_eq!(delivery.redelivery_count(), 0);
        delivery.ack().await.expect("ack");
        assert_no_delivery(&mut stream).await;
        drop(stream);
        wait_for_depth(&broker, &queue, 0).await;
        cleanup(broker, &queue).await;
    }

    #[tokio::test]
    async fn fetch_takes_one_message_without_subscribing() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("fetch");
        assert!(broker.fetch(&queue).await.expect("fetch").is_none());
        for payload in [&b"job 1"[..], b"job 2"] {
            broker
                .publish(&queue, payload, Headers::new())
                .await
                .expect("publish");
        }
        wait_for_depth(&broker, &queue, 2).await;
        let first = broker
            .fetch(&queue)
            .await
            .expect("fetch")
            .expect("a message");
        assert_eq!(first.payload(), b"job 1");
        // The second stays ready for other consumers while the first is held.
        wait_for_depth(&broker, &queue, 1).await;
        first.nack_requeue().await.expect("nack");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let delivery = broker
                .fetch(&queue)
                .await
                .expect("fetch")
                .expect("a message");
            seen.push((delivery.payload().to_vec(), delivery.redelivery_count()));
            delivery.ack().await.expect("ack");
        }
        seen.sort();
        assert_eq!(seen, vec![(b"job 1".to_vec(), 1), (b"job 2".to_vec(), 0)]);
        assert!(broker.fetch(&queue).await.expect("fetch").is_none());
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nack_requeue_redelivers_with_count_one() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("nack");
        broker
            .publish(&queue, b"retry me", Headers::new())
            .await
            .expect("publish");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");

        let first = next_delivery(&mut stream).await;
        assert_eq!(first.redelivery_count(), 0);
        first.nack_requeue().await.expect("nack");
        let second = next_delivery(&mut stream).await;
        assert_eq!(second.payload(), b"retry me");
        assert_eq!(second.redelivery_count(), 1);
        second.ack().await.expect("ack");
        assert_no_delivery(&mut stream).await;
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejected_message_lands_in_dead_letter_queue() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("reject");
        let dead_letters = dead_letter_queue(&queue);
        broker
            .publish(&queue, b"poison", Headers::new())
            .await
            .expect("publish");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");
        next_delivery(&mut stream)
            .await
            .reject()
            .await
            .expect("reject");

        wait_for_depth(&broker, &dead_letters, 1).await;
        assert_no_delivery(&mut stream).await;
        let mut dead_stream = broker.consume(&dead_letters, 1).await.expect("consume dlq");
        let dead = next_delivery(&mut dead_stream).await;
        assert_eq!(dead.payload(), b"poison");
        assert_eq!(
            dead.headers()
                .get("x-first-death-reason")
                .map(String::as_str),
            Some("rejected")
        );
        dead.ack().await.expect("ack dead letter");
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn message_past_delivery_limit_lands_in_dead_letter_queue() {
        let _shared = FORCED_CLOSE.read().await;
        let delivery_limit = 2;
        let broker = test_broker(delivery_limit).await;
        let queue = unique_queue("delivery-limit");
        broker
            .publish(&queue, b"always fails", Headers::new())
            .await
            .expect("publish");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");

        let mut deliveries = 0;
        while let Ok(Some(next)) = tokio::time::timeout(QUIET_PERIOD, stream.next()).await {
            let delivery = next.expect("delivery");
            assert_eq!(delivery.redelivery_count(), deliveries);
            deliveries += 1;
            assert!(deliveries <= 10, "the delivery limit was not enforced");
            delivery.nack_requeue().await.expect("nack");
        }
        assert_eq!(deliveries, delivery_limit + 1);
        wait_for_depth(&broker, &dead_letter_queue(&queue), 1).await;
        wait_for_depth(&broker, &queue, 0).await;
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn headers_round_trip() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("headers");
        let headers = Headers::from([
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            ("kind".to_owned(), "synth-chunk".to_owned()),
            ("note".to_owned(), "größe ü".to_owned()),
        ]);
        broker
            .publish(&queue, b"{}", headers.clone())
            .await
            .expect("publish");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.headers(), &headers);
        delivery.ack().await.expect("ack");
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetch_bounds_in_flight_deliveries() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("prefetch");
        for n in 0..6 {
            broker
                .publish(&queue, format!("m{n}").as_bytes(), Headers::new())
                .await
                .expect("publish");
        }
        let mut stream = broker.consume(&queue, 2).await.expect("consume");
        let first = next_delivery(&mut stream).await;
        let second = next_delivery(&mut stream).await;
        assert_no_delivery(&mut stream).await;

        first.ack().await.expect("ack");
        let third = next_delivery(&mut stream).await;
        assert_no_delivery(&mut stream).await;
        second.ack().await.expect("ack");
        third.ack().await.expect("ack");
        let mut received = 3;
        while received < 6 {
            next_delivery(&mut stream).await.ack().await.expect("ack");
            received += 1;
        }
        assert_no_delivery(&mut stream).await;
        cleanup(broker, &queue).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumer_survives_forced_connection_close() {
        let _exclusive = FORCED_CLOSE.write().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("forced-close");
        let mut stream = broker.consume(&queue, 4).await.expect("consume");
        broker
            .publish(&queue, b"before", Headers::new())
            .await
            .expect("publish before");
        let held = next_delivery(&mut stream).await;
        assert_eq!(held.payload(), b"before");

        force_close_all_connections().await;

        // Publishing reconnects; the held (unacked) message comes back on the new consumer.
        broker
            .publish(&queue, b"after", Headers::new())
            .await
            .expect("publish after the forced close");
        let mut payloads = Vec::new();
        for _ in 0..2 {
            let delivery = next_delivery(&mut stream).await;
            payloads.push(String::from_utf8_lossy(delivery.payload()).into_owned());
            delivery.ack().await.expect("ack after reconnect");
        }
        payloads.sort();
        assert_eq!(payloads, ["after", "before"]);
        let stale = held.ack().await;
        assert!(
            stale.is_err(),
            "acking a delivery of a closed connection must fail"
        );

        // And once more, to show the supervisor keeps going.
        force_close_all_connections().await;
        broker
            .publish(&queue, b"later", Headers::new())
            .await
            .expect("publish after the second forced close");
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.payload(), b"later");
        delivery.ack().await.expect("ack");
        assert_no_delivery(&mut stream).await;
        cleanup(broker, &queue).await;
    }

    /// Deleting a queue cancels its consumers server-side (`basic.cancel`; on 3.10 sometimes
    /// only the consumer check notices). The supervisor declares the queue again and
    /// re-consumes. The test waits for that before publishing: 3.10 loses the cancel when a
    /// quorum queue is declared again within milliseconds of its deletion.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumer_resumes_after_its_queue_is_deleted() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("queue-deleted");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");
        broker
            .shared
            .delete_queue_with_dead_letters(&queue)
            .await
            .expect("delete queue");

        let deadline = Instant::now() + RECEIVE_TIMEOUT;
        while consumer_count(&broker, &queue).await != Some(1) {
            assert!(
                Instant::now() < deadline,
                "the consumer did not come back on {queue}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broker
            .publish(&queue, b"after delete", Headers::new())
            .await
            .expect("publish");
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.payload(), b"after delete");
        delivery.ack().await.expect("ack");
        cleanup(broker, &queue).await;
    }

    /// None when the queue does not exist.
    async fn consumer_count(broker: &RabbitBroker, queue: &str) -> Option<u32> {
        let connection = match broker.shared.connection().await {
            Ok(connection) => connection,
            Err(_) => panic!("no connection to the test broker"),
        };
        let channel = connection.create_channel().await.expect("open channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await;
        match declared {
            Ok(declared) => {
                close_channel_quietly(&channel).await;
                Some(declared.consumer_count())
            }
            Err(error) if is_not_found(&error) => None,
            Err(error) => panic!("passive declare of {queue} failed: {error}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivery_stream_ends_on_shutdown() {
        let _shared = FORCED_CLOSE.read().await;
        let broker = test_broker(DEFAULT_DELIVERY_LIMIT).await;
        let queue = unique_queue("shutdown");
        let mut stream = broker.consume(&queue, 1).await.expect("consume");
        broker
            .shared
            .delete_queue_with_dead_letters(&queue)
            .await
            .expect("delete queue");
        broker.shutdown().await;
        let end = tokio::time::timeout(RECEIVE_TIMEOUT, stream.next()).await;
        assert!(matches!(end, Ok(None)), "the stream must end on shutdown");
        assert!(matches!(
            broker.publish(&queue, b"late", Headers::new()).await,
            Err(BrokerError::Closed)
        ));
    }

    #[tokio::test]
    async fn connect_to_unreachable_broker_fails() {
        let mut options = RabbitBrokerOptions::new("amqp://guest:secret@127.0.0.1:1/%2f");
        options.retry_timeout = Duration::from_secs(1);
        let error = match RabbitBroker::connect(options).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("failed to connect to rabbitmq"), "{error}");
        assert!(!error.contains("secret"), "password leaked: {error}");
    }

    #[test]
    fn delivery_count_reads_any_integer_type() {
        let mut table = FieldTable::default();
        assert_eq!(delivery_count(&table), 0);
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(delivery_count(&table), 3);
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongInt(-1));
        assert_eq!(delivery_count(&table), 0);
    }

    #[test]
    fn headers_keep_strings_and_drop_broker_annotations() {
        let mut table = field_table_from_headers(&Headers::from([(
            "traceparent".to_owned(),
            "00-ab-cd-01".to_owned(),
        )]));
        table.insert(DELIVERY_COUNT_HEADER.into(), AMQPValue::LongLongInt(1));
        let headers = headers_from_field_table(&table);
        assert_eq!(
            headers,
            Headers::from([("traceparent".to_owned(), "00-ab-cd-01".to_owned())])
        );
    }

    #[test]
    fn redact_url_hides_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
