//! Rebuilding a store from the events topic: every partition from the
//! beginning, through the same processor as live ingest, without a consumer
//! group and without writing anything back to Kafka.
//!
//! What live ingest writes back (forwards, identity claims and joins, dead
//! letters) is already in the topic and the dead-letter topic, at the
//! positions the live fold read them; the fold is deterministic, so a replay
//! computes the same records again and drops them. Identity-index updates go
//! straight into the rebuilt store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::consumer::{client_config, record_of};
use crate::processor::{Processor, Record};
use crate::resume::{Resume, admit_event, seek_to};
use crate::{IngestConfig, Result, Shutdown};

/// Where a replay stands.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayProgress {
    pub records: u64,
    pub applied: u64,
    /// Records the broker reported at the start (tansu's high watermarks can
    /// lag, so the replay goes on until the topic is idle).
    pub expected: u64,
}

/// Where a replay stops.
#[derive(Debug, Clone)]
pub enum ReplayEnd {
    /// Once every partition has reached the high watermark seen at the start
    /// and no record arrived for this long.
    Idle(Duration),
    /// Exactly at these next offsets, per partition (to compare with a store
    /// that has read that far); partitions not listed are not read.
    At(BTreeMap<u32, i64>),
}

/// Replays `cfg.topic` into the processor's store until `end`, or
/// `shutdown`, skipping records written before `from_time` (Kafka record
/// timestamps, milliseconds) when given. Calls `progress` after each batch.
pub fn replay(
    cfg: &IngestConfig,
    processor: &Processor,
    end_at: &ReplayEnd,
    from_time: Option<i64>,
    shutdown: &Shutdown,
    mut progress: impl FnMut(&ReplayProgress),
) -> Result<ReplayProgress> {
    let store = processor.store();
    let topic = cfg.topic.as_str();
    let partitions = crate::partition_count(cfg, topic)?;
    store.bind_partitions(topic, partitions)?;
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}.replay", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut end: BTreeMap<u32, i64> = BTreeMap::new();
    // Where each partition's reading stands (skipped records included).
    let mut positions: BTreeMap<u32, i64> = BTreeMap::new();
    let mut resumes: BTreeMap<u32, Resume> = BTreeMap::new();
    let mut state = ReplayProgress::default();
    for p in 0..partitions {
        let start = store.next_offset(topic, p)?;
        let high = match end_at {
            ReplayEnd::At(until) => match until.get(&p) {
                Some(u) => *u,
                None => continue,
            },
            ReplayEnd::Idle(_) => consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?.1,
        };
        if start.unwrap_or(0) >= high && matches!(end_at, ReplayEnd::At(_)) {
            continue;
        }
        let first = match (start, from_time) {
            (Some(s), _) => s,
            // Where the broker says the instant starts (tansu answers 0 for
            // any time, so records before it are skipped below too).
            (None, Some(t)) => {
                let mut q = TopicPartitionList::new();
                q.add_partition_offset(topic, p as i32, Offset::Offset(t))?;
                let found = consumer.offsets_for_times(q, Duration::from_secs(10))?;
                match found.find_partition(topic, p as i32).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                }
            }
            (None, None) => 0,
        };
        let resume = Resume::at(first, cfg.resume_rewind_records);
        tpl.add_partition_offset(topic, p as i32, resume.start())?;
        resumes.insert(p, resume);
        positions.insert(p, start.unwrap_or(0));
        end.insert(p, high);
        state.expected += (high - start.unwrap_or(0)).max(0) as u64;
    }
    if end.is_empty() {
        return Ok(state);
    }
    consumer.assign(&tpl)?;
    let mut last_record = Instant::now();
    while !shutdown.is_triggered() {
        let mut messages = Vec::new();
        while messages.len() < cfg.batch_max_records {
            match consumer.poll(if messages.is_empty() { Duration::from_millis(100) } else { Duration::ZERO }) {
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) => warn!(error = %e, "replay poll error"),
                None => break,
            }
        }
        let reached =
            |positions: &BTreeMap<u32, i64>| end.iter().all(|(p, high)| positions.get(p).is_some_and(|at| at >= high));
        if messages.is_empty() {
            match end_at {
                ReplayEnd::Idle(idle) if reached(&positions) && last_record.elapsed() >= *idle => break,
                _ => continue,
            }
        }
        last_record = Instant::now();
        let mut by_partition: BTreeMap<u32, Vec<Record<'_>>> = BTreeMap::new();
        let mut rewinds: BTreeMap<u32, i64> = BTreeMap::new();
        for m in &messages {
            let p = m.partition() as u32;
            let Some(resume) = resumes.get_mut(&p) else {
                continue;
            };
            if !admit_event(resume, &mut rewinds, p, m.offset()) {
                continue;
            }
            if let ReplayEnd::At(_) = end_at
                && end.get(&p).is_none_or(|high| m.offset() >= *high)
            {
                continue;
            }
            let at = positions.entry(p).or_default();
            *at = (*at).max(m.offset() + 1);
            if from_time.is_some_and(|t| m.timestamp().to_millis().is_some_and(|ts| ts < t)) {
                continue;
            }
            by_partition.entry(p).or_default().push(record_of(m));
        }
        for (p, to) in rewinds {
            warn!(
                partition = p,
                from = to,
                "the broker skipped records at the resume offset; reading again from earlier"
            );
            consumer.seek(topic, p as i32, seek_to(to), Duration::from_secs(10))?;
        }
        for (partition, records) in by_partition {
            let mut processed = processor.process(partition, &records)?;
            processed.index_locally();
            state.records += records.len() as u64;
            state.applied += processed.applied;
            processor.commit(processed)?;
        }
        progress(&state);
        if matches!(end_at, ReplayEnd::At(_)) && reached(&positions) {
            break;
        }
    }
    store.flush()?;
    Ok(state)
}
