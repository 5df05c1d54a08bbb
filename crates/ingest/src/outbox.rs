//! Writing a batch's records (dead letters, forwards, identity events,
//! index updates) and waiting until the broker has every one, before the
//! batch commits.
//!
//! A broker that is away is waited for, however long, with backoff: the
//! batch is not committed meanwhile, nothing is lost, and a shutdown ends
//! the wait (the batch is done again after the restart). A record the
//! broker refuses for good (too large, not allowed) is an error for the
//! partition, which stalls with the reason instead of retrying in a loop.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use tracing::warn;

use crate::consumer::{Shutdown, client_config};
use crate::processor::OutRecord;
use crate::status::{IngestStatus, STATS_INTERVAL_MS};
use crate::{IngestConfig, Result};

/// Why records were not delivered.
#[derive(Debug)]
pub(crate) enum Undelivered {
    /// Shutdown was asked for while waiting for the broker.
    Shutdown,
    /// The broker (or the client) refused a record for good.
    Refused(String),
}

pub(crate) struct OutboxContext {
    failed: Mutex<Vec<(usize, RDKafkaErrorCode)>>,
    status: IngestStatus,
}

impl ClientContext for OutboxContext {
    /// While records wait, the producer is the one trying to reach the
    /// broker (the consumer is not polled meanwhile); idle, it says nothing
    /// (a broker may close an idle connection).
    fn stats(&self, statistics: Statistics) {
        if statistics.msg_cnt > 0 {
            self.status.observe(&statistics);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::status::quiet_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::status::quiet_error(&error, reason);
    }
}

impl ProducerContext for OutboxContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        if let Err((e, _)) = result {
            let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
            self.failed.lock().unwrap_or_else(PoisonError::into_inner).push((*index, code));
        }
    }
}

/// Errors no retry will cure: the record itself, or what it may do.
fn permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidRecord
            | C::InvalidMessage
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::PolicyViolation
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
    )
}

/// The idempotent producer of a batch's records.
pub(crate) struct Outbox {
    producer: BaseProducer<OutboxContext>,
    cfg: IngestConfig,
    status: IngestStatus,
}

impl Outbox {
    pub(crate) fn new(cfg: &IngestConfig, status: &IngestStatus) -> Result<Outbox> {
        Ok(Outbox { producer: Self::producer(cfg, status)?, cfg: cfg.clone(), status: status.clone() })
    }

    /// murmur2 like every producer, so forwards land on the partition that
    /// owns their key.
    fn producer(cfg: &IngestConfig, status: &IngestStatus) -> Result<BaseProducer<OutboxContext>> {
        let context = OutboxContext { failed: Mutex::new(Vec::new()), status: status.clone() };
        Ok(client_config(cfg)
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
            .create_with_context(context)?)
    }

    /// Writes `records` to `topic` and returns once the broker has all of
    /// them; waits out a broker that is away.
    pub(crate) fn deliver(
        &mut self,
        topic: &str,
        records: &[OutRecord],
        shutdown: &Shutdown,
    ) -> std::result::Result<(), Undelivered> {
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut backoff = Duration::from_millis(100);
        let result = loop {
            if pending.is_empty() {
                break Ok(());
            }
            self.send_all(topic, records, &pending)?;
            if !self.wait_acknowledged(shutdown) {
                break Err(Undelivered::Shutdown);
            }
            let failed =
                std::mem::take(&mut *self.producer.context().failed.lock().unwrap_or_else(PoisonError::into_inner));
            if let Some((_, code)) = failed.iter().find(|(_, c)| permanent(*c)) {
                break Err(Undelivered::Refused(format!("the broker refused a record for {topic}: {code}")));
            }
            pending = failed.into_iter().map(|(i, _)| i).collect();
            if !pending.is_empty() {
                self.status.set_waiting(Some(pending.len()));
                warn!(topic, records = pending.len(), retry_in = ?backoff, "records not delivered; retrying");
                if !self.sleep(backoff, shutdown) {
                    break Err(Undelivered::Shutdown);
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                self.renew_if_fatal();
            }
        };
        self.status.set_waiting(None);
        result
    }

    fn send_all(&self, topic: &str, records: &[OutRecord], which: &[usize]) -> std::result::Result<(), Undelivered> {
        for &i in which {
            let r = &records[i];
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
            }
            let mut record = BaseRecord::<[u8], [u8], Box<usize>>::with_opaque_to(topic, Box::new(i)).headers(headers);
            // An empty value goes as a Kafka tombstone (null): on the compacted
            // identity topic a key that routes nowhere (erased, shared) is then
            // removed by compaction, not kept forever; readers treat both alike.
            if !r.value.is_empty() {
                record = record.payload(&r.value[..]);
            }
            if let Some(k) = &r.key {
                record = record.key(&k[..]);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(Undelivered::Refused(format!("a record for {topic} could not be sent: {e}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls until nothing is in flight; false if shutdown came first.
    fn wait_acknowledged(&self, shutdown: &Shutdown) -> bool {
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 {
            self.producer.poll(Duration::from_millis(100));
            if started.elapsed() > Duration::from_secs(1) {
                self.status.set_waiting(Some(self.producer.in_flight_count().max(0) as usize));
            }
            if shutdown.is_triggered() {
                return false;
            }
        }
        true
    }

    fn sleep(&self, d: Duration, shutdown: &Shutdown) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if shutdown.is_triggered() {
                return false;
            }
            self.producer.poll(Duration::from_millis(50));
        }
        true
    }

    /// An idempotent producer that hit a fatal error cannot send again:
    /// a new one takes over (the records keep their event ids, so the
    /// dedupe drops any copy).
    fn renew_if_fatal(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            warn!(?code, reason, "the producer failed for good; starting a new one");
            if let Ok(p) = Self::producer(&self.cfg, &self.status) {
                self.producer = p;
            }
        }
    }
}
