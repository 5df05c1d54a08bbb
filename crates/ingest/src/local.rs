//! Folding events from anywhere but Kafka (files, for a data engineer with
//! no broker): a local stand-in for the events topic with one queue per
//! partition, fed through the same processor as live ingest. What live
//! ingest would write back to the topic (forwards, identity claims and
//! joins) goes to the queue of the partition that owns its key, so identity
//! resolution works as it does live.

use std::collections::VecDeque;

use omnifold_core::decode_event;
use omnifold_core::partition::partition_for;

use crate::processor::{OutRecord, Processor, ROUTE_HEADER, Record};
use crate::sign::SIGNATURE_HEADER;
use crate::{DeadLetter, Result};

/// What a local replay did.
#[derive(Debug, Clone, Default)]
pub struct LocalReplay {
    /// Records folded, including those the fold wrote itself.
    pub records: u64,
    pub applied: u64,
    pub dead_letters: Vec<DeadLetter>,
}

struct Queued {
    value: Vec<u8>,
    key: Option<Vec<u8>>,
    route: Option<String>,
    signature: Option<String>,
}

/// A local log of `partitions` partitions folded into the processor's store.
pub struct LocalLog<'a> {
    processor: &'a Processor,
    queues: Vec<VecDeque<Queued>>,
    next_offsets: Vec<i64>,
    batch_max: usize,
    pub done: LocalReplay,
}

impl<'a> LocalLog<'a> {
    pub fn new(processor: &'a Processor, topic: &str, partitions: u32, batch_max: usize) -> Result<Self> {
        let store = processor.store();
        store.bind_partitions(topic, partitions)?;
        let next_offsets =
            (0..partitions).map(|p| Ok(store.next_offset(topic, p)?.unwrap_or(0))).collect::<Result<Vec<i64>>>()?;
        Ok(LocalLog {
            processor,
            queues: (0..partitions).map(|_| VecDeque::new()).collect(),
            next_offsets,
            batch_max: batch_max.max(1),
            done: LocalReplay::default(),
        })
    }

    /// Appends one record as a producer would: to the partition of its
    /// subject's key (murmur2); an undecodable record to partition 0, where
    /// it becomes a dead letter.
    pub fn append(&mut self, value: Vec<u8>) {
        let key =
            decode_event(&value, usize::MAX, &self.processor.fold().limits).ok().map(|e| e.subject.key().into_bytes());
        self.push(Queued { value, key, route: None, signature: None });
    }

    /// Appends one record to `partition`, whatever its key: a producer that
    /// partitions differently (the processor forwards it where it belongs).
    pub fn append_to(&mut self, partition: u32, value: Vec<u8>) {
        let key =
            decode_event(&value, usize::MAX, &self.processor.fold().limits).ok().map(|e| e.subject.key().into_bytes());
        let p = partition as usize % self.queues.len();
        self.queues[p].push_back(Queued { value, key, route: None, signature: None });
    }

    fn push(&mut self, q: Queued) {
        let routing = q.route.as_deref().map(str::as_bytes).or(q.key.as_deref());
        let p = routing.map_or(0, |k| partition_for(k, self.queues.len() as u32)) as usize;
        self.queues[p].push_back(q);
    }

    fn push_out(&mut self, r: OutRecord) {
        let route = r.header(ROUTE_HEADER).map(str::to_owned);
        let signature = r.header(SIGNATURE_HEADER).map(str::to_owned);
        self.push(Queued { value: r.value, key: r.key, route, signature });
    }

    /// Folds everything queued, including what the fold writes meanwhile.
    pub fn drain(&mut self) -> Result<()> {
        while let Some(p) = self.queues.iter().position(|q| !q.is_empty()) {
            let n = self.queues[p].len().min(self.batch_max);
            let taken: Vec<Queued> = self.queues[p].drain(..n).collect();
            let start = self.next_offsets[p];
            let records: Vec<Record<'_>> = taken
                .iter()
                .enumerate()
                .map(|(i, q)| Record {
                    offset: start + i as i64,
                    key: q.key.as_deref(),
                    value: Some(&q.value),
                    route: q.route.as_deref(),
                    signature: q.signature.as_deref().map(str::as_bytes),
                    timestamp: None,
                })
                .collect();
            let mut processed = self.processor.process(p as u32, &records)?;
            processed.index_locally();
            self.next_offsets[p] = start + n as i64;
            self.done.records += n as u64;
            self.done.applied += processed.applied;
            let outbox = std::mem::take(&mut processed.outbox);
            self.done.dead_letters.append(&mut processed.dead_letters);
            self.processor.commit(processed)?;
            for r in outbox {
                self.push_out(r);
            }
        }
        Ok(())
    }
}
