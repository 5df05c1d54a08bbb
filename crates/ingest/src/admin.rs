//! Kafka tools for the CLI and the server: create omnifold's topics, and
//! produce events keyed with Kafka's default partitioner.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};

use crate::consumer::client_config;
use crate::sign::Signer;
use crate::{Error, IngestConfig, Result};

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created(String),
    AlreadyExists(String),
}

/// Creates the events topic (`partitions`), the dead-letter topic, the
/// compacted identity-index and ownership topics (one partition each), the
/// audit topic and, when configured, the compacted profile-changes topic
/// (`partitions`); existing topics are left alone.
pub async fn create_topics(cfg: &IngestConfig, partitions: i32, replication: i32) -> Result<Vec<TopicOutcome>> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let mut topics = vec![
        NewTopic::new(&cfg.topic, partitions, TopicReplication::Fixed(replication)),
        NewTopic::new(&cfg.dead_letter_topic, 1, TopicReplication::Fixed(replication)),
        // The identity index: small, read whole by every instance, latest
        // value per key is all that matters.
        NewTopic::new(&cfg.identity_topic, 1, TopicReplication::Fixed(replication)).set("cleanup.policy", "compact"),
        // Who owns each partition: one small record per partition, read
        // whole by every instance.
        NewTopic::new(&cfg.ownership_topic, 1, TopicReplication::Fixed(replication)).set("cleanup.policy", "compact"),
        // The audit trail: appended to, never compacted; keep it as long as
        // your rules require (retention.ms, docs/security.md).
        NewTopic::new(&cfg.audit_topic, 1, TopicReplication::Fixed(replication)),
    ];
    // Audience entries and exits, keyed by member: an event stream.
    if !cfg.audience_topic.is_empty() {
        topics.push(NewTopic::new(&cfg.audience_topic, partitions, TopicReplication::Fixed(replication)));
    }
    // Changed profiles, latest per member: as many partitions as events.
    if !cfg.changes_topic.is_empty() {
        topics.push(
            NewTopic::new(&cfg.changes_topic, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact"),
        );
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics(&topics, &opts)
        .await?
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok(TopicOutcome::Created(name)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(TopicOutcome::AlreadyExists(name)),
            Err((name, code)) => Err(Error::Config(format!("creating topic {name}: {code}"))),
        })
        .collect()
}

/// An idempotent producer that partitions keys with murmur2, as the Java
/// client does, so records land where omnifold routes their members.
pub struct EventProducer {
    producer: BaseProducer,
}

impl EventProducer {
    pub fn new(cfg: &IngestConfig) -> Result<EventProducer> {
        let producer = client_config(cfg)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "10")
            .set("batch.num.messages", "10000")
            .create()?;
        Ok(EventProducer { producer })
    }

    /// Queues one record, waiting while the local queue is full.
    pub fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<()> {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    /// Waits until the broker has acknowledged everything sent.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        Ok(self.producer.flush(timeout)?)
    }
}

/// The header of a command a caller waits on (`RedeemPoints`, `AdjustPoints`).
pub const COMMAND_HEADER: &str = "omnifold-command";

/// Appends single commands (redemptions, adjustments) to the events topic
/// and reports when each is acknowledged; for request handlers.
#[derive(Clone)]
pub struct CommandProducer {
    producer: FutureProducer<crate::status::Quiet>,
    topic: String,
    timeout: Duration,
}

impl CommandProducer {
    pub fn new(cfg: &IngestConfig, timeout: Duration) -> Result<CommandProducer> {
        let producer = client_config(cfg)
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create_with_context(crate::status::Quiet)?;
        Ok(CommandProducer { producer, topic: cfg.topic.clone(), timeout })
    }

    /// Sends one event (no one waits for its verdict) and waits for the
    /// broker's acknowledgement: the HTTP collector's.
    pub async fn append_event(&self, key: &[u8], payload: &[u8]) -> Result<()> {
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        self.producer.send(record, self.timeout).await.map(|_| ()).map_err(|(e, _)| Error::Kafka(e))
    }

    /// Sends one record only omnifold may write, signed, to `partition`,
    /// and waits for the broker's acknowledgement: its offset.
    pub async fn append_internal(&self, partition: u32, key: &[u8], payload: &[u8], signer: &Signer) -> Result<i64> {
        let sig = signer.sign(Some(key), None, payload);
        let headers = OwnedHeaders::new().insert(Header { key: crate::sign::SIGNATURE_HEADER, value: Some(&sig) });
        let record =
            FutureRecord::to(&self.topic).partition(partition as i32).key(key).payload(payload).headers(headers);
        let delivered = self.producer.send(record, self.timeout).await.map_err(|(e, _)| Error::Kafka(e))?;
        Ok(delivered.offset)
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn append(&self, key: &[u8], payload: &[u8]) -> Result<()> {
        // The header only tells ingest that someone is waiting for this
        // record's verdict, so it folds the batch at once (forging it gains
        // nothing but a smaller batch).
        let headers = OwnedHeaders::new().insert(Header { key: COMMAND_HEADER, value: Some("1") });
        let record = FutureRecord::to(&self.topic).key(key).payload(payload).headers(headers);
        self.producer.send(record, self.timeout).await.map(|_| ()).map_err(|(e, _)| Error::Kafka(e))
    }
}
