//! Reading the dead-letter topic back, for inspection and for replaying
//! dead letters into the events topic after a fix.

use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use omnifold_proto::v1 as proto;

use crate::consumer::client_config;
use crate::{Error, IngestConfig, Result};

/// One record of the dead-letter topic.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub letter: proto::DeadLetter,
}

/// Every dead letter, oldest first. Reads until the end the broker reported
/// and then until nothing arrives for `idle` (tansu's high watermarks can lag).
pub fn read_dead_letters(cfg: &IngestConfig, idle: Duration) -> Result<Vec<StoredDeadLetter>> {
    let topic = cfg.dead_letter_topic.as_str();
    read_topic(cfg, topic, "dlq-reader", idle, |m| {
        let letter = proto::DeadLetter::decode(m.payload().unwrap_or_default())
            .map_err(|e| Error::Config(format!("{topic} holds a record that is not a DeadLetter: {e}")))?;
        Ok(StoredDeadLetter { partition: m.partition(), offset: m.offset(), letter })
    })
}

/// Every record of `topic` through `read`, by partition and offset. Reads
/// until the end the broker reported and then until nothing arrives for
/// `idle` (tansu's high watermarks can lag).
pub(crate) fn read_topic<T>(
    cfg: &IngestConfig,
    topic: &str,
    reader: &str,
    idle: Duration,
    mut read: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}.{reader}", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create()?;
    let partitions = crate::partition_count(cfg, topic)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        ends.push(consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1);
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let mut positions = vec![0i64; partitions as usize];
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                last = Instant::now();
                positions[m.partition() as usize] = m.offset() + 1;
                out.push(((m.partition(), m.offset()), read(&m)?));
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                let reached = positions.iter().zip(&ends).all(|(p, e)| p >= e);
                if reached && last.elapsed() >= idle {
                    break;
                }
            }
        }
    }
    out.sort_by_key(|(at, _)| *at);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}
