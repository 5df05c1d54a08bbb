//! Ingest settings: broker, topics, group and batching.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How an instance gets its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Join the consumer group `group_id`; Kafka shares the partitions
    /// among the group's instances (scale-out).
    #[default]
    Group,
    /// Read every partition without joining a group: one instance on one
    /// machine. A restart resumes at once, with no group to rebalance.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// Compacted topic of the identity index: which member each linked key
    /// routes to. Every instance reads all of it into its store.
    pub identity_topic: String,
    pub group_id: String,
    /// `group` (default) or `all`.
    pub assignment: Assignment,
    /// Most records folded into one store batch.
    pub batch_max_records: usize,
    /// A batch takes every record already fetched; when none is left it
    /// waits this long for more before committing (0: commit at once, the
    /// lowest latency for commands waiting on the fold).
    pub batch_max_wait_ms: u64,
    /// librdkafka `fetch.wait.max.ms`. Keep it low for tansu, which answers a
    /// fetch only when this runs out.
    pub fetch_wait_max_ms: u32,
    /// Larger records go to the dead-letter topic.
    pub max_event_bytes: usize,
    /// Decoded members kept in memory between batches (0 disables), so a
    /// busy member is not read and decoded from RocksDB on every batch.
    pub member_cache_entries: usize,
    /// A partition resumed at offset N is fetched from this many records
    /// earlier, and the records before N are dropped: some brokers (tansu
    /// 0.6) answer a fetch inside a producer's batch with the next batch,
    /// skipping the rest of the one that holds N. A first record after N
    /// still makes omnifold read from further back (docs/decisions.md).
    pub resume_rewind_records: i64,
    /// Extra librdkafka settings for the consumer and producer.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "omnifold.events".into(),
            dead_letter_topic: "omnifold.events.dlq".into(),
            identity_topic: "omnifold.identity".into(),
            group_id: "omnifold".into(),
            assignment: Assignment::Group,
            batch_max_records: 5_000,
            batch_max_wait_ms: 0,
            fetch_wait_max_ms: 10,
            max_event_bytes: 64 * 1024,
            member_cache_entries: 20_000,
            resume_rewind_records: 10_000,
            librdkafka: BTreeMap::new(),
        }
    }
}

impl IngestConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (name, v) in [
            ("brokers", &self.brokers),
            ("topic", &self.topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("identity_topic", &self.identity_topic),
            ("group_id", &self.group_id),
        ] {
            if v.trim().is_empty() {
                return Err(Error::Config(format!("{name} must not be empty")));
            }
        }
        if self.topic == self.dead_letter_topic || self.topic == self.identity_topic {
            return Err(Error::Config("dead_letter_topic and identity_topic must differ from topic".into()));
        }
        if self.batch_max_records == 0 {
            return Err(Error::Config("batch_max_records must be at least 1".into()));
        }
        if !(0..=100_000_000).contains(&self.resume_rewind_records) {
            return Err(Error::Config("resume_rewind_records must be 0 to 100000000".into()));
        }
        if self.max_event_bytes < 1024 {
            return Err(Error::Config("max_event_bytes must be at least 1024".into()));
        }
        Ok(())
    }
}
