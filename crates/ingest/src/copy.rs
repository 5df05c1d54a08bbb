//! Copying what producers wrote to the events topic into another topic, one
//! with a different partition count: the first step of changing the count
//! (docs/operations.md, "Changing the partition count").
//!
//! Each record goes to the partition its subject's key has in the new topic
//! (murmur2, as the processor routes it), with its key, headers and
//! timestamp. Partitions are merged by record timestamp, so each new
//! partition sees event time move forward as the old ones did and nothing
//! lands behind its dedupe window; records of one old partition keep their
//! order. What omnifold wrote (forwards, claims, joins and their parts) is
//! left out: an `omnifold serve` folding the new topic writes it again for
//! the new layout. That also makes the copy the way to bring a topic whose
//! internal events predate signing into this version.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::warn;

use omnifold_core::partition::partition_for;
use omnifold_core::{Limits, decode_event};

use crate::consumer::{client_config, record_of};
use crate::processor::Record;
use crate::resume::{Resume, Step};
use crate::{Error, IngestConfig, Result, Shutdown, Signer};

/// Records held per old partition before it is paused until the merge
/// takes some: bounds memory whatever the topic's size.
const HELD_PER_PARTITION: usize = 20_000;

/// Where a copy stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Records read from the events topic.
    pub read: u64,
    /// Records written to the new topic.
    pub copied: u64,
    /// Records omnifold wrote, left out.
    pub left_out: u64,
    /// Records the broker reported at the start.
    pub expected: u64,
}

/// Copies producers' records of `cfg.topic` into `to_topic`, which must
/// exist and be empty, until every partition has reached the end it had at
/// the start and nothing arrived for `idle`. Calls `progress` as it goes.
pub fn copy_topic(
    cfg: &IngestConfig,
    limits: &Limits,
    to_topic: &str,
    idle: Duration,
    shutdown: &Shutdown,
    mut progress: impl FnMut(&CopyProgress),
) -> Result<CopyProgress> {
    if to_topic == cfg.topic {
        return Err(Error::Copy(format!("cannot copy {to_topic} into itself; name a new topic")));
    }
    let signer = cfg.signer()?;
    let from = cfg.topic.as_str();
    let partitions = crate::partition_count(cfg, from)?;
    let to_partitions = crate::partition_count(cfg, to_topic)?;
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}.copy", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create()?;
    refuse_non_empty(&consumer, to_topic, to_partitions)?;
    let mut merge = Merge::new(partitions);
    let mut state = CopyProgress::default();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(from, p as i32, Duration::from_secs(10))?;
        merge.ends[p as usize] = high;
        state.expected += high.max(0) as u64;
        tpl.add_partition_offset(from, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let out = Output::new(cfg, to_topic, to_partitions)?;
    let mut last_record = Instant::now();
    let mut reported = 0;
    while !shutdown.is_triggered() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                let p = m.partition() as u32;
                match merge.resumes[p as usize].step(m.offset()) {
                    Step::Take => {
                        state.read += 1;
                        match routing_of(&record_of(&m), &signer, limits) {
                            Some(routing) => merge.held[p as usize].push_back(Held { message: m.detach(), routing }),
                            None => state.left_out += 1,
                        }
                    }
                    // Read already, delivered again.
                    Step::Skip => {}
                    Step::Rewind(to) => {
                        warn!(partition = p, from = to, "the broker skipped records; reading again from earlier");
                        consumer.seek(from, p as i32, Offset::Offset(to), Duration::from_secs(10))?;
                    }
                }
            }
            Some(Err(e)) => warn!(error = %e, "copy poll error"),
            None if merge.reached() && last_record.elapsed() >= idle => break,
            None => {}
        }
        out.take(&mut merge, &mut state)?;
        merge.pause_full(&consumer, from)?;
        if state.read >= reported + 1_000 {
            reported = state.read;
            progress(&state);
        }
    }
    // Stopped by the idle end: every record is read, so the merge waits for
    // nothing (a shutdown leaves the copy unfinished, and says so).
    if shutdown.is_triggered() {
        return Err(Error::Copy("interrupted; delete the new topic and copy again".into()));
    }
    merge.finish();
    out.take(&mut merge, &mut state)?;
    out.flush()?;
    progress(&state);
    Ok(state)
}

/// A copy into a topic that already holds records would hold some twice.
fn refuse_non_empty(consumer: &BaseConsumer, topic: &str, partitions: u32) -> Result<()> {
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?;
        if high > low {
            return Err(Error::Copy(format!(
                "topic {topic} already holds records (partition {p}); copy into a new, empty topic"
            )));
        }
    }
    Ok(())
}

/// The key a producer's record is routed by in the new topic (its
/// subject's; the record key when it is not an event, which is refused
/// again where it lands), or `None` for a record omnifold wrote: a forward
/// (route header, or signed by omnifold) or an event only omnifold writes.
/// Those written with no valid signature were refused as forged when they
/// were read, and stay in the dead-letter topic.
fn routing_of(r: &Record<'_>, signer: &Signer, limits: &Limits) -> Option<Vec<u8>> {
    let value = r.value.unwrap_or_default();
    if r.route.is_some() || (r.signature.is_some() && signer.verify(r.key, None, value, r.signature)) {
        return None;
    }
    match decode_event(value, usize::MAX, limits) {
        Ok(e) if e.is_internal() => None,
        Ok(e) => Some(e.subject.key().into_bytes()),
        Err(_) => Some(r.key.unwrap_or_default().to_vec()),
    }
}

/// A producer's record waiting for the merge, with its routing key.
struct Held {
    message: OwnedMessage,
    routing: Vec<u8>,
}

/// The old partitions, merged by record timestamp.
struct Merge {
    held: Vec<VecDeque<Held>>,
    resumes: Vec<Resume>,
    ends: Vec<i64>,
    paused: Vec<bool>,
    /// Every record is read: take whatever is held.
    finished: bool,
}

impl Merge {
    fn new(partitions: u32) -> Merge {
        let n = partitions as usize;
        Merge {
            held: (0..n).map(|_| VecDeque::new()).collect(),
            resumes: vec![Resume::at(0, 0); n],
            ends: vec![0; n],
            paused: vec![false; n],
            finished: false,
        }
    }

    /// Whether every partition has been read to the end it had at the start.
    fn reached(&self) -> bool {
        self.resumes.iter().zip(&self.ends).all(|(r, end)| r.next >= *end)
    }

    fn finish(&mut self) {
        self.finished = true;
    }

    /// The held record with the earliest timestamp, once no partition that
    /// may still deliver an earlier one is empty.
    fn next(&mut self) -> Option<Held> {
        let waiting = (0..self.held.len())
            .any(|p| self.held[p].is_empty() && !self.finished && self.resumes[p].next < self.ends[p]);
        if waiting {
            return None;
        }
        let p = (0..self.held.len())
            .filter(|p| !self.held[*p].is_empty())
            .min_by_key(|p| self.held[*p].front().map(|h| h.message.timestamp().to_millis().unwrap_or(i64::MIN)))?;
        self.held[p].pop_front()
    }

    /// Pauses partitions holding many records, and resumes drained ones.
    fn pause_full(&mut self, consumer: &BaseConsumer, topic: &str) -> Result<()> {
        for p in 0..self.held.len() {
            let full = self.held[p].len() >= HELD_PER_PARTITION;
            if full != self.paused[p] {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, p as i32);
                if full {
                    consumer.pause(&tpl)?
                } else {
                    consumer.resume(&tpl)?
                }
                self.paused[p] = full;
            }
        }
        Ok(())
    }
}

/// Counts what the broker refused.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            failed.get_or_insert_with(|| e.to_string());
        }
    }
}

/// The new topic, written by an idempotent producer.
struct Output {
    producer: BaseProducer<Deliveries>,
    topic: String,
    partitions: u32,
}

impl Output {
    fn new(cfg: &IngestConfig, topic: &str, partitions: u32) -> Result<Output> {
        let producer = client_config(cfg)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .create_with_context(Deliveries::default())?;
        Ok(Output { producer, topic: topic.to_owned(), partitions })
    }

    /// Sends on what the merge has ready.
    fn take(&self, merge: &mut Merge, state: &mut CopyProgress) -> Result<()> {
        while let Some(h) = merge.next() {
            self.send(&h)?;
            state.copied += 1;
        }
        Ok(())
    }

    /// Queues one record at its routing key's partition in the new topic.
    fn send(&self, h: &Held) -> Result<()> {
        self.check()?;
        let m = &h.message;
        let value = m.payload().unwrap_or_default();
        let partition = partition_for(&h.routing, self.partitions) as i32;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).partition(partition).payload(value);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        if let Some(h) = m.headers() {
            record = record.headers(h.clone());
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn check(&self) -> Result<()> {
        let failed = self.producer.context().failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match failed.as_ref() {
            Some(e) => Err(Error::Copy(format!("the broker refused a record for {}: {e}", self.topic))),
            None => Ok(()),
        }
    }

    /// Waits until the broker has every record.
    fn flush(&self) -> Result<()> {
        self.producer.flush(Duration::from_secs(60))?;
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn record(partition: i32, offset: i64, at: i64) -> Held {
        let message = OwnedMessage::new(None, None, "t".into(), Timestamp::CreateTime(at), partition, offset, None);
        Held { message, routing: Vec::new() }
    }

    fn taken(merge: &mut Merge) -> Vec<(i32, i64)> {
        std::iter::from_fn(|| merge.next()).map(|h| (h.message.partition(), h.message.offset())).collect()
    }

    #[test]
    fn partitions_merge_by_timestamp_and_wait_for_one_that_is_behind() {
        let mut merge = Merge::new(2);
        merge.ends = vec![2, 2];
        for (offset, at) in [(0, 10), (1, 30)] {
            merge.held[0].push_back(record(0, offset, at));
            merge.resumes[0].step(offset);
        }
        // Partition 1 has not delivered yet: it may hold an earlier record.
        assert!(taken(&mut merge).is_empty());
        merge.held[1].push_back(record(1, 0, 20));
        merge.resumes[1].step(0);
        assert_eq!(taken(&mut merge), vec![(0, 0), (1, 0)]);
        // A late timestamp keeps its partition's order.
        merge.held[1].push_back(record(1, 1, 5));
        merge.resumes[1].step(1);
        assert_eq!(taken(&mut merge), vec![(1, 1), (0, 1)]);
    }

    #[test]
    fn a_finished_merge_takes_everything_held() {
        let mut merge = Merge::new(2);
        merge.ends = vec![5, 5];
        merge.held[0].push_back(record(0, 0, 10));
        assert!(taken(&mut merge).is_empty());
        merge.finish();
        assert_eq!(taken(&mut merge), vec![(0, 0)]);
    }
}
