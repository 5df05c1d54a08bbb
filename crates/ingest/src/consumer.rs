//! The Kafka side: a consumer-group member that resumes every assigned
//! partition from the offset in the store, and a blocking poll loop that
//! runs micro-batches through the [`Processor`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use omnifold_store::{Store, StoreHandle, StoreSwitch};

use crate::config::Assignment;
use crate::failpoint;
use crate::processor::{OutRecord, Processor, ROUTE_HEADER, Record};
use crate::resume::{Resume, Step};
use crate::sign::SIGNATURE_HEADER;
use crate::{Error, IngestConfig, Result};

/// A stop signal the poll loop checks between batches: the batch in hand is
/// finished and committed, then the loop returns.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Base librdkafka settings shared by every client omnifold creates.
pub fn client_config(cfg: &IngestConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("log_level", "3");
    for (k, v) in &cfg.librdkafka {
        c.set(k, v);
    }
    c
}

struct IngestContext {
    /// The store offsets come from; replaced by a switch.
    store: Mutex<Arc<Store>>,
    topic: String,
    /// Partitions this member owns, with where each is read from.
    assigned: Mutex<HashMap<u32, Resume>>,
    /// `kafka.resume_rewind_records`.
    rewind: i64,
    fatal: Mutex<Option<String>>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                let mut assigned = self.assigned.lock().expect("assignment lock");
                for (topic, p) in parts {
                    let store = self.store.lock().expect("store lock").clone();
                    let next = match store.next_offset(&topic, p as u32) {
                        Ok(next) => next,
                        Err(e) => {
                            *self.fatal.lock().expect("fatal lock") = Some(format!("reading stored offset: {e}"));
                            None
                        }
                    };
                    let resume = Resume::at(next.unwrap_or(0), self.rewind);
                    let offset = match resume.position() {
                        0 => Offset::Beginning,
                        at => Offset::Offset(at),
                    };
                    if let Err(e) = tpl.set_partition_offset(&topic, p, offset) {
                        error!(error = %e, partition = p, "cannot set start offset");
                    }
                    if topic == self.topic {
                        assigned.insert(p as u32, resume);
                    }
                    info!(partition = p, next_offset = ?next, "partition assigned; resuming from the store's offset");
                }
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut assigned = self.assigned.lock().expect("assignment lock");
                for e in tpl.elements() {
                    assigned.remove(&(e.partition() as u32));
                    info!(partition = e.partition(), "partition revoked");
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    error!(error = %e, "unassign failed");
                }
            }
            other => {
                error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                self.assigned.lock().expect("assignment lock").clear();
            }
        }
    }
}

#[derive(Default)]
struct DlqContext {
    failed: Mutex<Vec<usize>>,
}

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        if let Err((e, _)) = result {
            warn!(error = %e, "record not delivered; will retry");
            self.failed.lock().expect("delivery lock").push(*index);
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A consumed message as the processor takes it, with its route and
/// signature headers and its timestamp.
pub(crate) fn record_of<'a>(m: &'a BorrowedMessage<'_>) -> Record<'a> {
    let header = |name: &str| m.headers().and_then(|h| h.iter().find(|h| h.key == name)).and_then(|h| h.value);
    Record {
        offset: m.offset(),
        key: m.key(),
        value: m.payload(),
        route: header(ROUTE_HEADER).and_then(|v| std::str::from_utf8(v).ok()),
        signature: header(SIGNATURE_HEADER),
        timestamp: m.timestamp().to_millis(),
    }
}

/// Produces records and waits until the broker has every one of them.
/// Retries failed deliveries until they succeed or shutdown is requested.
fn deliver(producer: &BaseProducer<DlqContext>, topic: &str, records: &[OutRecord], shutdown: &Shutdown) -> Result<()> {
    let mut pending: Vec<usize> = (0..records.len()).collect();
    let mut backoff = Duration::from_millis(100);
    while !pending.is_empty() {
        for &i in &pending {
            let r = &records[i];
            let mut headers = OwnedHeaders::new();
            for (k, v) in &r.headers {
                headers = headers.insert(Header { key: k, value: Some(v.as_str()) });
            }
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(i)).payload(&r.value).headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        producer.flush(Duration::from_secs(30))?;
        pending = std::mem::take(&mut *producer.context().failed.lock().expect("delivery lock"));
        if !pending.is_empty() {
            if shutdown.is_triggered() {
                return Err(Error::Kafka(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    Ok(())
}

/// The number of partitions of `topic`, from the broker.
pub fn partition_count(cfg: &IngestConfig, topic: &str) -> Result<u32> {
    let consumer: BaseConsumer = client_config(cfg).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if n == 0 {
        return Err(Error::NoTopic(topic.to_owned()));
    }
    Ok(n as u32)
}

/// Runs ingest until `shutdown`: joins the consumer group, folds every
/// assigned partition from the store's offsets, and commits per partition.
/// Blocking: run it on its own thread.
pub fn run(cfg: &IngestConfig, processor: Processor, shutdown: Shutdown) -> Result<()> {
    run_switchable(cfg, processor, shutdown, None)
}

/// [`run`], also taking store switches from `switches` and publishing the
/// current store in `handle`.
pub fn run_switchable(
    cfg: &IngestConfig,
    mut processor: Processor,
    shutdown: Shutdown,
    switches: Option<(std::sync::mpsc::Receiver<StoreSwitch>, Arc<StoreHandle>)>,
) -> Result<()> {
    cfg.validate()?;
    let store = processor.store().clone();
    let partitions = partition_count(cfg, &cfg.topic)?;
    store.bind_partitions(&cfg.topic, partitions)?;

    let context = IngestContext {
        store: Mutex::new(store.clone()),
        topic: cfg.topic.clone(),
        assigned: Mutex::new(HashMap::new()),
        rewind: cfg.resume_rewind_records,
        fatal: Mutex::new(None),
    };
    let consumer: BaseConsumer<IngestContext> = client_config(cfg)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .create_with_context(context)?;
    // Dead letters, forwards and identity events; murmur2 like every
    // producer, so forwards land on the partition that owns their key.
    let producer: BaseProducer<DlqContext> = client_config(cfg)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create_with_context(DlqContext::default())?;
    match cfg.assignment {
        Assignment::Group => consumer.subscribe(&[cfg.topic.as_str()])?,
        Assignment::All => assign_all(&consumer, &cfg.topic, partitions)?,
    }
    info!(topic = %cfg.topic, partitions, group = %cfg.group_id, assignment = ?cfg.assignment, "ingest started");

    let max_wait = Duration::from_millis(cfg.batch_max_wait_ms);
    while !shutdown.is_triggered() {
        if let Some((requests, handle)) = &switches
            && let Ok(switch) = requests.try_recv()
        {
            let result = switch_store(cfg, &consumer, &mut processor, handle, switch.to).map_err(|e| e.to_string());
            let _ = switch.done.send(result);
        }
        let mut messages: Vec<BorrowedMessage<'_>> = Vec::new();
        match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => {
                warn!(error = %e, "poll error");
                continue;
            }
            Some(Ok(m)) => messages.push(m),
        }
        let deadline = Instant::now() + max_wait;
        while messages.len() < cfg.batch_max_records {
            // Take what librdkafka has already fetched, without waiting.
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    messages.push(m);
                    continue;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "poll error");
                    continue;
                }
                None => {}
            }
            // Nothing buffered: linger for more up to batch_max_wait_ms.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match consumer.poll(left) {
                Some(Ok(m)) => messages.push(m),
                Some(Err(e)) => warn!(error = %e, "poll error"),
                None => break,
            }
        }
        if let Some(reason) = consumer.context().fatal.lock().expect("fatal lock").take() {
            return Err(Error::Config(reason));
        }
        commit_messages(cfg, &processor, &consumer, &producer, &messages, &shutdown)?;
    }
    info!("ingest stopping: last batch committed");
    processor.store().flush()?;
    Ok(())
}

/// `assignment = "all"`: every partition, positioned from the store, with
/// no consumer group to join.
fn assign_all(consumer: &BaseConsumer<IngestContext>, topic: &str, partitions: u32) -> Result<()> {
    let store = consumer.context().store.lock().expect("store lock").clone();
    let mut tpl = TopicPartitionList::new();
    let mut assigned = consumer.context().assigned.lock().expect("assignment lock");
    for p in 0..partitions {
        let resume = Resume::at(store.next_offset(topic, p)?.unwrap_or(0), consumer.context().rewind);
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(resume.position()))?;
        assigned.insert(p, resume);
    }
    consumer.assign(&tpl)?;
    Ok(())
}

/// Catches `to` up to exactly the offsets the current store has read for
/// every assigned partition (reading those records again from the topic),
/// then folds into it and serves from it. Ingest pauses meanwhile; reads go
/// on from the current store until the switch, so no answer is missing and
/// none is older than one already given.
fn switch_store(
    cfg: &IngestConfig,
    consumer: &BaseConsumer<IngestContext>,
    processor: &mut Processor,
    handle: &StoreHandle,
    to: Arc<Store>,
) -> Result<BTreeMap<u32, i64>> {
    let until: BTreeMap<u32, i64> =
        consumer.context().assigned.lock().expect("assignment lock").iter().map(|(p, r)| (*p, r.next)).collect();
    let next = processor.with_store(to.clone());
    crate::replay(cfg, &next, &crate::ReplayEnd::At(until.clone()), None, &Shutdown::default(), |_| {})?;
    // A store that had read further than the current one keeps its place:
    // records below its offsets are skipped.
    {
        let mut assigned = consumer.context().assigned.lock().expect("assignment lock");
        for (p, r) in assigned.iter_mut() {
            r.next = r.next.max(to.next_offset(&cfg.topic, *p)?.unwrap_or(0));
        }
    }
    *consumer.context().store.lock().expect("store lock") = to.clone();
    let old = std::mem::replace(processor, next);
    handle.set(to);
    old.store().flush()?;
    info!(partitions = until.len(), "switched to the new store");
    Ok(until)
}

fn commit_messages(
    cfg: &IngestConfig,
    processor: &Processor,
    consumer: &BaseConsumer<IngestContext>,
    producer: &BaseProducer<DlqContext>,
    messages: &[BorrowedMessage<'_>],
    shutdown: &Shutdown,
) -> Result<()> {
    let mut by_partition: BTreeMap<u32, Vec<Record<'_>>> = BTreeMap::new();
    let mut rewinds: BTreeMap<u32, i64> = BTreeMap::new();
    {
        let mut assigned = consumer.context().assigned.lock().expect("assignment lock");
        for m in messages {
            let p = m.partition() as u32;
            // Skip partitions revoked meanwhile, records already applied,
            // and what arrived before a rewind.
            let Some(resume) = assigned.get_mut(&p) else {
                continue;
            };
            if rewinds.contains_key(&p) {
                continue;
            }
            match resume.step(m.offset()) {
                Step::Take => by_partition.entry(p).or_default().push(record_of(m)),
                Step::Skip => {}
                Step::Rewind(to) => {
                    rewinds.insert(p, to);
                }
            }
        }
    }
    for (p, to) in rewinds {
        warn!(partition = p, from = to, "the broker skipped records at the resume offset; reading again from earlier");
        if let Err(e) = consumer.seek(&cfg.topic, p as i32, Offset::Offset(to), Duration::from_secs(10)) {
            warn!(partition = p, error = %e, "seek failed");
        }
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, records) in by_partition {
        let started = Instant::now();
        let processed = processor.process(partition, &records)?;
        if !processed.dead_letters.is_empty() {
            let now = now_millis();
            let letters: Vec<OutRecord> = processed.dead_letters.iter().map(|d| d.to_record(now)).collect();
            deliver(producer, &cfg.dead_letter_topic, &letters, shutdown)?;
            metrics::counter!("omnifold_dead_letters_total").increment(letters.len() as u64);
        }
        if !processed.index.is_empty() {
            deliver(producer, &cfg.identity_topic, &processed.index, shutdown)?;
        }
        if !processed.outbox.is_empty() {
            deliver(producer, &cfg.topic, &processed.outbox, shutdown)?;
            failpoint::hit("after_outbox");
        }
        metrics::counter!("omnifold_events_misrouted_total").increment(processed.misrouted);
        metrics::counter!("omnifold_events_forwarded_total").increment(processed.forwarded);
        let next = processed.next_offset;
        let (applied, duplicates) = (processed.applied, processed.duplicates);
        failpoint::hit("before_commit");
        processor.commit(processed)?;
        failpoint::hit("after_commit");
        offsets.add_partition_offset(&cfg.topic, partition as i32, Offset::Offset(next))?;
        metrics::counter!("omnifold_events_applied_total").increment(applied);
        metrics::counter!("omnifold_events_duplicate_total").increment(duplicates);
        metrics::histogram!("omnifold_batch_seconds").record(started.elapsed().as_secs_f64());
        debug!(partition, records = records.len(), applied, next_offset = next, "batch committed");
    }
    // The store is authoritative; the group offsets only feed lag monitoring.
    if offsets.count() > 0
        && let Err(e) = consumer.commit(&offsets, CommitMode::Async)
    {
        debug!(error = %e, "group offset commit failed (monitoring only)");
    }
    Ok(())
}
