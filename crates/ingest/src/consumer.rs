//! The Kafka side: a consumer that resumes every partition it folds from
//! the offset in the store, and a blocking poll loop that runs micro-batches
//! through the [`Processor`], writes what they produce, and commits them.
//!
//! Faults stop a partition, never the process: a broker that is away is
//! waited for (reads go on from the store); a record the broker refuses for
//! good, a failed store write (a full disk) or a bug stalls that partition
//! with the reason in [`IngestStatus`], and it is tried again with backoff
//! from the offset in the store (after reopening the store if a write
//! failed) until the cause is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use omnifold_snapshots::{Restored, Snapshots};
use omnifold_store::{StoreConfig, StoreHandle, StoreSwitch};

use crate::admin::COMMAND_HEADER;
use crate::config::Assignment;
use crate::failpoint;
use crate::outbox::{Outbox, Undelivered};
use crate::processor::{OutRecord, Processed, Processor, ROUTE_HEADER, Record};
use crate::resume::{Resume, admit_event, seek_to};
use crate::sign::SIGNATURE_HEADER;
use crate::standby::Standbys;
use crate::status::{IngestStatus, STATS_INTERVAL_MS, now_ms};
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

    /// Sleeps up to `d`, returning early (false) on shutdown.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.is_triggered() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
        }
        !self.is_triggered()
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

/// What [`run`] needs besides the configuration and the processor.
#[derive(Default)]
pub struct RunOptions {
    /// Requests to switch to a rebuilt store (`AdminService.SwitchStore`).
    pub switches: Option<Receiver<StoreSwitch>>,
    /// Where ingest reports its health.
    pub status: IngestStatus,
    /// The store's configuration, to open it again after a failed write.
    pub store_config: Option<StoreConfig>,
    /// Where a partition's latest snapshot is restored from when it is
    /// assigned and the store's copy is older (docs/scale-out.md).
    pub snapshots: Option<Arc<Snapshots>>,
    /// Shared with the standby thread (`kafka.standby = "all"`): a
    /// partition assigned here is taken from it first.
    pub standbys: Option<Standbys>,
}

struct IngestContext {
    /// The store offsets come from (the processor's).
    stores: Arc<StoreHandle>,
    topic: String,
    /// Partitions this instance folds, with where each is read from.
    assigned: Mutex<HashMap<u32, Resume>>,
    /// Partitions stalled by a fault, waiting to be tried again.
    stalled: Mutex<BTreeMap<u32, Stalled>>,
    rewind: i64,
    status: IngestStatus,
    fatal: Mutex<Option<String>>,
    snapshots: Option<Arc<Snapshots>>,
    standbys: Option<Standbys>,
    /// Its member cache is emptied when a restore replaced a partition.
    processor: Processor,
}

/// A partition that stopped folding, and when to try it again.
#[derive(Debug, Clone)]
struct Stalled {
    retry_at: Instant,
    backoff: Duration,
    /// A store write failed: the store is opened again before retrying.
    store_fault: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        self.status.observe(&statistics);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::status::quiet_log(level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::status::quiet_error(&error, reason);
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                for (topic, p) in parts {
                    if let Some(standbys) = self.standbys.as_ref().filter(|_| topic == self.topic) {
                        standbys.take(p as u32);
                        self.status.standby_dropped(p as u32);
                    }
                    let Some(resume) = self.resume_from_store(p as u32) else {
                        continue;
                    };
                    if let Err(e) = tpl.set_partition_offset(&topic, p, resume.start()) {
                        error!(error = %e, partition = p, "cannot set start offset");
                    }
                    if topic == self.topic {
                        lock(&self.assigned).insert(p as u32, resume);
                        self.status.assigned([(p as u32, resume.next)]);
                    }
                    info!(
                        partition = p,
                        next_offset = resume.next,
                        "partition assigned; resuming from the store's offset"
                    );
                }
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                for e in tpl.elements() {
                    let p = e.partition() as u32;
                    lock(&self.assigned).remove(&p);
                    lock(&self.stalled).remove(&p);
                    self.status.revoked([p]);
                    if let Some(standbys) = &self.standbys {
                        standbys.give_back(p);
                    }
                    info!(partition = p, "partition revoked");
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    error!(error = %e, "unassign failed");
                }
            }
            other => {
                error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                let revoked: Vec<u32> = lock(&self.assigned).drain().map(|(p, _)| p).collect();
                lock(&self.stalled).clear();
                if let Some(standbys) = &self.standbys {
                    revoked.iter().for_each(|p| standbys.give_back(*p));
                }
                self.status.revoked(revoked);
            }
        }
    }
}

impl IngestContext {
    /// Where partition `p` resumes: the store's offset, read early, after
    /// restoring the latest snapshot if it is further than the store.
    fn resume_from_store(&self, p: u32) -> Option<Resume> {
        let store = self.stores.get();
        if let Some(snapshots) = &self.snapshots {
            match snapshots.restore(&store, &self.topic, p) {
                Ok(Restored::Snapshot { .. }) => self.processor.clear_cache(),
                Ok(Restored::Local { .. }) => {}
                Err(e) => warn!(
                    partition = p,
                    error = %e,
                    "the snapshot store cannot be read; the partition is read from the topic from the store's offset"
                ),
            }
        }
        match store.next_offset(&self.topic, p) {
            Ok(next) => Some(Resume::at(next.unwrap_or(0), self.rewind)),
            Err(e) => {
                *lock(&self.fatal) = Some(format!("reading the stored offset of partition {p}: {e}"));
                None
            }
        }
    }
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

/// The number of partitions of `topic`, from the broker.
pub fn partition_count(cfg: &IngestConfig, topic: &str) -> Result<u32> {
    let consumer: BaseConsumer<crate::status::Quiet> = client_config(cfg).create_with_context(crate::status::Quiet)?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if n == 0 {
        return Err(Error::NoTopic(topic.to_owned()));
    }
    Ok(n as u32)
}

/// [`partition_count`], waiting (with backoff) for a broker that does not
/// answer yet. `None` on shutdown.
pub(crate) fn await_partition_count(
    cfg: &IngestConfig,
    topic: &str,
    status: &IngestStatus,
    shutdown: &Shutdown,
) -> Result<Option<u32>> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match partition_count(cfg, topic) {
            Ok(n) => return Ok(Some(n)),
            Err(Error::NoTopic(t)) => return Err(Error::NoTopic(t)),
            Err(e) => {
                status.set_broker(false);
                warn!(brokers = %cfg.brokers, error = %e, retry_in = ?backoff, "waiting for the broker");
                if !shutdown.sleep(backoff) {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// How one partition's batch ended.
enum Outcome {
    Committed {
        next: i64,
    },
    /// Shutdown came while waiting for the broker: not committed.
    Stopped,
    Fault {
        reason: String,
        store: bool,
    },
}

/// Records a batch still takes after a command someone waits on: the other
/// commands of the same fetch share its commit instead of one batch each
/// (serve CPU per redemption −12% at 32 in flight), and the command waits
/// for at most this many more records to fold.
const COMMAND_BATCH_TAIL: usize = 64;

/// How often the consumer group's offsets are committed (monitoring only).
const GROUP_COMMIT_INTERVAL_MS: u32 = 1_000;

/// The running ingest loop.
struct Ingest<'a> {
    cfg: &'a IngestConfig,
    /// `cfg.fold_threads()`, resolved once: finding the core count reads
    /// cgroup files, which cost a sixth of the ingest thread when every
    /// batch asked (a redemption ends its batch).
    threads: usize,
    processor: Processor,
    outbox: Outbox,
    shutdown: Shutdown,
    opts: RunOptions,
}

/// Runs ingest until `shutdown`: folds every partition it gets (from the
/// consumer group, or all of them) from the store's offsets, and commits
/// per partition. Waits for a broker that is away; stalls a partition that
/// cannot go on and tries it again. Blocking: run it on its own thread.
pub fn run(cfg: &IngestConfig, processor: Processor, shutdown: Shutdown, opts: RunOptions) -> Result<()> {
    cfg.validate()?;
    // Before the client starts its threads, so they inherit it.
    crate::priority::lower_this_thread(cfg.fold_nice);
    let status = opts.status.clone();
    status.set_source(&cfg.group_id, &cfg.topic);
    status.set_running(true);
    let result = run_inner(cfg, processor, shutdown, opts);
    status.set_running(false);
    result
}

fn run_inner(cfg: &IngestConfig, processor: Processor, shutdown: Shutdown, opts: RunOptions) -> Result<()> {
    let status = opts.status.clone();
    let Some(partitions) = await_partition_count(cfg, &cfg.topic, &status, &shutdown)? else {
        return Ok(());
    };
    processor.store().bind_partitions(&cfg.topic, partitions)?;
    let context = IngestContext {
        stores: processor.handle().clone(),
        topic: cfg.topic.clone(),
        assigned: Mutex::new(HashMap::new()),
        stalled: Mutex::new(BTreeMap::new()),
        rewind: cfg.resume_rewind_records,
        status: status.clone(),
        fatal: Mutex::new(None),
        snapshots: opts.snapshots.clone(),
        standbys: opts.standbys.clone(),
        processor: processor.clone(),
    };
    let consumer: BaseConsumer<IngestContext> = group_config(cfg)
        // The store holds the offsets; the group's committed offsets only
        // feed lag monitoring, so librdkafka commits the latest stored ones
        // once a second (and at close) rather than one commit per batch.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", GROUP_COMMIT_INTERVAL_MS.to_string())
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
        .set("statistics.interval.ms", STATS_INTERVAL_MS.to_string())
        .create_with_context(context)?;
    let outbox = Outbox::new(cfg, &status)?;
    match cfg.assignment {
        Assignment::Group => consumer.subscribe(&[cfg.topic.as_str()])?,
        Assignment::All => assign_all(&consumer, &cfg.topic, partitions)?,
    }
    info!(topic = %cfg.topic, partitions, group = %cfg.group_id, assignment = ?cfg.assignment, "ingest started");
    let mut ingest = Ingest { cfg, threads: cfg.fold_threads(), processor, outbox, shutdown, opts };
    ingest.run(&consumer)
}

/// The client settings of the group: static membership when the instance
/// has a name, and the session timeout the operator chose.
fn group_config(cfg: &IngestConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.group_id);
    if !cfg.instance_id.is_empty() {
        c.set("group.instance.id", &cfg.instance_id);
    }
    if cfg.session_timeout_ms != 0 {
        c.set("session.timeout.ms", cfg.session_timeout_ms.to_string());
        // librdkafka refuses a heartbeat interval at or above the timeout.
        c.set("heartbeat.interval.ms", (cfg.session_timeout_ms / 3).clamp(100, 3_000).to_string());
    }
    c
}

/// `assignment = "all"`: every partition, positioned from the store, with
/// no consumer group to join.
fn assign_all(consumer: &BaseConsumer<IngestContext>, topic: &str, partitions: u32) -> Result<()> {
    let ctx = consumer.context();
    let store = ctx.stores.get();
    let mut tpl = TopicPartitionList::new();
    let mut nexts = Vec::new();
    for p in 0..partitions {
        let resume = Resume::at(store.next_offset(topic, p)?.unwrap_or(0), ctx.rewind);
        tpl.add_partition_offset(topic, p as i32, resume.start())?;
        lock(&ctx.assigned).insert(p, resume);
        nexts.push((p, resume.next));
    }
    ctx.status.assigned(nexts);
    consumer.assign(&tpl)?;
    Ok(())
}

impl Ingest<'_> {
    fn run(&mut self, c: &BaseConsumer<IngestContext>) -> Result<()> {
        while !self.shutdown.is_triggered() {
            self.take_switch(c);
            self.retry_stalled(c);
            let messages = self.poll_batch(c);
            if let Some(reason) = lock(&c.context().fatal).take() {
                return Err(Error::Config(reason));
            }
            if !self.fold(c, &messages) {
                break;
            }
        }
        info!("ingest stopping: every batch folded so far is committed");
        if let Err(e) = self.processor.store().flush() {
            warn!(error = %e, "flushing the store at shutdown failed; the write-ahead log has every commit");
        }
        Ok(())
    }

    /// Takes what librdkafka has fetched, up to `batch_max_records`,
    /// lingering up to `batch_max_wait_ms` for more; a command someone
    /// waits on ends the batch within `COMMAND_BATCH_TAIL` more records.
    fn poll_batch<'c>(&self, c: &'c BaseConsumer<IngestContext>) -> Vec<BorrowedMessage<'c>> {
        let mut messages: Vec<BorrowedMessage<'c>> = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.batch_max_wait_ms);
        let mut wait = Duration::from_millis(100);
        let mut limit = self.cfg.batch_max_records;
        while messages.len() < limit {
            match c.poll(wait) {
                Some(Ok(m)) => {
                    // Someone waits for this command's verdict: fold soon
                    // rather than fill the batch.
                    let waited_on = m.headers().is_some_and(|h| h.iter().any(|h| h.key == COMMAND_HEADER));
                    messages.push(m);
                    if waited_on {
                        limit = limit.min(messages.len() + COMMAND_BATCH_TAIL);
                    }
                }
                Some(Err(e)) => {
                    if self.opts.status.broker_down() {
                        debug!(error = %e, "poll error while the broker is away");
                    } else {
                        warn!(error = %e, "poll error");
                    }
                }
                None if messages.is_empty() => break,
                None => {
                    // Nothing buffered: linger for more up to batch_max_wait_ms.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    wait = left;
                    continue;
                }
            }
            wait = Duration::ZERO;
        }
        messages
    }

    /// Groups the messages by partition (dropping what was applied, what
    /// belongs to a stalled or revoked partition, and what came before a
    /// rewind), folds and commits each. False when shutdown interrupted.
    ///
    /// Three stages: the partitions are folded at once on up to
    /// `fold_threads` threads; what their batches write to Kafka is
    /// delivered in partition order (one producer); the batches whose
    /// records are delivered commit, again at once.
    fn fold(&mut self, c: &BaseConsumer<IngestContext>, messages: &[BorrowedMessage<'_>]) -> bool {
        let by_partition = self.group(c, messages);
        let started = Instant::now();
        let threads = self.threads;
        let processor = &self.processor;
        let processed = parallel(threads, by_partition.into_iter().collect(), |(partition, records)| {
            (partition, processor.process(partition, &records))
        });
        let mut ready = Vec::with_capacity(processed.len());
        let mut faults = Vec::new();
        for (partition, result) in processed {
            let outcome = match result {
                Ok(p) => match self.deliver_outputs(&p) {
                    None => {
                        ready.push((partition, p));
                        continue;
                    }
                    Some(o) => o,
                },
                Err(e) => Outcome::Fault { store: matches!(e, Error::Store(_)), reason: e.to_string() },
            };
            match outcome {
                Outcome::Stopped => return false,
                o => faults.push((partition, o)),
            }
        }
        let (processor, status) = (&self.processor, &self.opts.status);
        let committed = parallel(threads, ready, |(partition, p)| (partition, commit(processor, status, partition, p)));
        let mut offsets = TopicPartitionList::new();
        for (partition, outcome) in committed.into_iter().chain(faults) {
            match outcome {
                Outcome::Committed { next } => {
                    let _ = offsets.add_partition_offset(&self.cfg.topic, partition as i32, Offset::Offset(next));
                }
                Outcome::Stopped => return false,
                Outcome::Fault { reason, store } => self.stall(c, partition, &reason, store),
            }
        }
        if offsets.count() > 0 {
            metrics::histogram!("omnifold_batch_seconds").record(started.elapsed().as_secs_f64());
        }
        // The store is authoritative; the group offsets only feed lag
        // monitoring and are committed in the background.
        if offsets.count() > 0
            && let Err(e) = c.store_offsets(&offsets)
        {
            debug!(error = %e, "storing the group offsets failed (monitoring only)");
        }
        true
    }

    fn group<'m>(
        &self,
        c: &BaseConsumer<IngestContext>,
        messages: &'m [BorrowedMessage<'_>],
    ) -> BTreeMap<u32, Vec<Record<'m>>> {
        let ctx = c.context();
        let mut by_partition: BTreeMap<u32, Vec<Record<'m>>> = BTreeMap::new();
        let mut rewinds: BTreeMap<u32, i64> = BTreeMap::new();
        {
            let stalled = lock(&ctx.stalled);
            let mut assigned = lock(&ctx.assigned);
            for m in messages {
                let p = m.partition() as u32;
                if stalled.contains_key(&p) {
                    continue;
                }
                let Some(resume) = assigned.get_mut(&p) else {
                    continue;
                };
                if admit_event(resume, &mut rewinds, p, m.offset()) {
                    by_partition.entry(p).or_default().push(record_of(m));
                } else if rewinds.contains_key(&p) {
                    by_partition.remove(&p);
                }
            }
        }
        for (p, to) in rewinds {
            warn!(
                partition = p,
                from = to,
                "the broker skipped records at the resume offset; reading again from earlier"
            );
            if let Err(e) = c.seek(&self.cfg.topic, p as i32, seek_to(to), Duration::from_secs(10)) {
                warn!(partition = p, error = %e, "seek failed");
            }
        }
        by_partition
    }

    /// Writes what a folded batch produced, in order: its dead letters,
    /// its identity-index updates, its outbox, its changed profiles, its
    /// audience entries and exits. `Some` when the batch cannot commit.
    fn deliver_outputs(&mut self, processed: &Processed) -> Option<Outcome> {
        if !processed.dead_letters.is_empty() {
            let now = now_ms();
            let letters: Vec<OutRecord> =
                processed.dead_letters.iter().map(|d| d.to_record(now, self.cfg.max_event_bytes)).collect();
            if let Some(o) = self.deliver(&self.cfg.dead_letter_topic.clone(), &letters) {
                return Some(o);
            }
            for d in &processed.dead_letters {
                metrics::counter!("omnifold_dead_letters_total", "reason" => d.kind).increment(1);
            }
        }
        if !processed.index.is_empty()
            && let Some(o) = self.deliver(&self.cfg.identity_topic.clone(), &processed.index)
        {
            return Some(o);
        }
        if !processed.outbox.is_empty() {
            let (first, rest) = processed.outbox.split_at(processed.outbox.len() / 2);
            let topic = self.cfg.topic.clone();
            if failpoint::armed("mid_outbox") {
                // For the crash tests: half of a join's parts written, not all.
                if let Some(o) = self.deliver(&topic, first) {
                    return Some(o);
                }
                failpoint::hit("mid_outbox");
                if let Some(o) = self.deliver(&topic, rest) {
                    return Some(o);
                }
            } else if let Some(o) = self.deliver(&topic, &processed.outbox) {
                return Some(o);
            }
            failpoint::hit("after_outbox");
        }
        let audiences = if self.cfg.audience_topic.is_empty() { Vec::new() } else { processed.audience_records() };
        for (topic, records, counter) in [
            (self.cfg.changes_topic.clone(), &processed.changes, "omnifold_profile_changes_published_total"),
            (self.cfg.audience_topic.clone(), &audiences, "omnifold_audience_transitions_total"),
        ] {
            if records.is_empty() {
                continue;
            }
            if let Some(o) = self.deliver(&topic, records) {
                return Some(o);
            }
            metrics::counter!(counter).increment(records.len() as u64);
        }
        None
    }

    /// Writes records; `Some` when the batch cannot commit.
    fn deliver(&mut self, topic: &str, records: &[OutRecord]) -> Option<Outcome> {
        match self.outbox.deliver(topic, records, &self.shutdown) {
            Ok(()) => None,
            Err(Undelivered::Shutdown) => Some(Outcome::Stopped),
            Err(Undelivered::Refused(reason)) => Some(Outcome::Fault { reason, store: false }),
        }
    }

    /// Stops folding a partition: paused, its records dropped, tried again
    /// after a backoff.
    fn stall(&mut self, c: &BaseConsumer<IngestContext>, partition: u32, reason: &str, store: bool) {
        error!(partition, reason, "partition stalled; it is tried again with backoff");
        self.opts.status.stall(partition, reason);
        metrics::counter!("omnifold_partition_stalls_total").increment(1);
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(&self.cfg.topic, partition as i32);
        if let Err(e) = c.pause(&tpl) {
            warn!(partition, error = %e, "pause failed");
        }
        let mut stalled = lock(&c.context().stalled);
        let backoff =
            stalled.get(&partition).map_or(Duration::from_secs(1), |s| (s.backoff * 2).min(Duration::from_secs(30)));
        stalled.insert(partition, Stalled { retry_at: Instant::now() + backoff, backoff, store_fault: store });
    }

    /// Tries stalled partitions whose time has come again, from the
    /// store's offsets; opens the store again first if a write failed.
    fn retry_stalled(&mut self, c: &BaseConsumer<IngestContext>) {
        let ctx = c.context();
        let due: Vec<(u32, Stalled)> = lock(&ctx.stalled)
            .iter()
            .filter(|(_, s)| s.retry_at <= Instant::now())
            .map(|(p, s)| (*p, s.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        if due.iter().any(|(_, s)| s.store_fault)
            && let Err(reason) = self.reopen_store()
        {
            for (p, s) in due {
                self.opts.status.stall(p, &reason);
                let backoff = (s.backoff * 2).min(Duration::from_secs(30));
                lock(&ctx.stalled).insert(p, Stalled { retry_at: Instant::now() + backoff, backoff, ..s });
            }
            return;
        }
        let store = self.processor.store();
        for (p, _) in due {
            let next = match store.next_offset(&self.cfg.topic, p) {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    self.stall(c, p, &format!("reading the stored offset failed: {e}"), true);
                    continue;
                }
            };
            let resume = Resume::at(next, ctx.rewind);
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition(&self.cfg.topic, p as i32);
            let sought = c
                .resume(&tpl)
                .and_then(|()| c.seek(&self.cfg.topic, p as i32, resume.start(), Duration::from_secs(10)));
            match sought {
                Ok(()) => {
                    lock(&ctx.assigned).insert(p, resume);
                    lock(&ctx.stalled).remove(&p);
                    info!(partition = p, next_offset = next, "retrying a stalled partition");
                }
                Err(e) => {
                    let _ = c.pause(&tpl);
                    self.stall(c, p, &format!("cannot read the partition again yet: {e}"), false);
                }
            }
        }
    }

    /// Opens the store again after a failed write; the reason if it cannot.
    fn reopen_store(&mut self) -> std::result::Result<(), String> {
        let Some(config) = self.opts.store_config.clone() else {
            return Err("a store write failed, and this ingest cannot open the store again".into());
        };
        match self.processor.handle().reopen(&config, Duration::from_secs(10)) {
            Ok(_) => {
                self.processor.clear_cache();
                info!(path = %config.path.display(), "store opened again after a failed write");
                Ok(())
            }
            Err(e) => Err(format!("the store cannot be written yet (is the disk full?): {e}")),
        }
    }

    /// Serves one switch request, if any.
    fn take_switch(&mut self, c: &BaseConsumer<IngestContext>) {
        let Some(switch) = self.opts.switches.as_ref().and_then(|r| r.try_recv().ok()) else {
            return;
        };
        let result = self.switch_store(c, switch.to).map_err(|e| e.to_string());
        let _ = switch.done.send(result);
    }

    /// Catches `to` up to exactly the offsets the current store has read for
    /// every assigned partition (reading those records again from the topic),
    /// then folds into it and serves from it. Ingest pauses meanwhile; reads go
    /// on from the current store until the switch, so no answer is missing and
    /// none is older than one already given.
    fn switch_store(
        &mut self,
        c: &BaseConsumer<IngestContext>,
        to: Arc<omnifold_store::Store>,
    ) -> Result<BTreeMap<u32, i64>> {
        let ctx = c.context();
        let until: BTreeMap<u32, i64> = lock(&ctx.assigned).iter().map(|(p, r)| (*p, r.next)).collect();
        let catch_up = self.processor.with_store(to.clone());
        crate::replay(self.cfg, &catch_up, &crate::ReplayEnd::At(until.clone()), None, &Shutdown::default(), |_| {})?;
        // A store that had read further than the current one keeps its place:
        // records below its offsets are skipped.
        for (p, r) in lock(&ctx.assigned).iter_mut() {
            r.next = r.next.max(to.next_offset(&self.cfg.topic, *p)?.unwrap_or(0));
        }
        let old = self.processor.store();
        self.processor.handle().set(to);
        self.processor.clear_cache();
        old.flush()?;
        info!(partitions = until.len(), "switched to the new store");
        Ok(until)
    }
}

/// Runs `f` on every item, on up to `threads` threads (the calling one
/// included), and returns the results in the items' order. Items are
/// dealt to threads largest batch first, so one busy partition does not
/// wait behind another.
fn parallel<T: Send + Weight, R: Send>(threads: usize, items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    let n = threads.min(items.len());
    let mut lanes: Vec<(usize, Vec<(usize, T)>)> = (0..n).map(|_| (0, Vec::new())).collect();
    let mut order: Vec<(usize, T)> = items.into_iter().enumerate().collect();
    order.sort_by_key(|(_, t)| std::cmp::Reverse(t.weight()));
    for (i, t) in order {
        if let Some(lane) = lanes.iter_mut().min_by_key(|(w, _)| *w) {
            lane.0 += t.weight();
            lane.1.push((i, t));
        }
    }
    let f = &f;
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let mut lanes = lanes.into_iter().map(|(_, lane)| lane);
        let first = lanes.next().unwrap_or_default();
        let handles: Vec<_> = lanes
            .map(|lane| scope.spawn(move || lane.into_iter().map(|(i, t)| (i, f(t))).collect::<Vec<_>>()))
            .collect();
        let mut out: Vec<(usize, R)> = first.into_iter().map(|(i, t)| (i, f(t))).collect();
        for h in handles {
            match h.join() {
                Ok(r) => out.extend(r),
                // A panic outside the fold's own guard: let it end ingest as
                // it would on one thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// How much work an item of [`parallel`] is.
trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for (u32, Vec<Record<'_>>) {
    fn weight(&self) -> usize {
        self.1.len()
    }
}

impl Weight for (u32, Processed) {
    fn weight(&self) -> usize {
        usize::try_from(self.1.applied).unwrap_or(usize::MAX).max(1)
    }
}

/// Commits a batch whose records are delivered.
fn commit(processor: &Processor, status: &IngestStatus, partition: u32, processed: Processed) -> Outcome {
    metrics::counter!("omnifold_events_misrouted_total").increment(processed.misrouted);
    metrics::counter!("omnifold_events_forwarded_total").increment(processed.forwarded);
    let (next, applied, duplicates) = (processed.next_offset, processed.applied, processed.duplicates);
    let records = processed.next_offset - processed.first_offset;
    failpoint::hit("before_commit");
    let started = std::time::Instant::now();
    if let Err(e) = processor.commit(processed) {
        return Outcome::Fault { reason: format!("the store refused the batch: {e}"), store: true };
    }
    metrics::histogram!("omnifold_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("omnifold_batch_records").record(records as f64);
    failpoint::hit("after_commit");
    status.committed(partition, next);
    status.healthy(partition);
    metrics::counter!("omnifold_events_applied_total").increment(applied);
    metrics::counter!("omnifold_events_duplicate_total").increment(duplicates);
    debug!(partition, applied, next_offset = next, "batch committed");
    Outcome::Committed { next }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    struct Job(usize);

    impl Weight for Job {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn parallel_runs_every_item_once_and_keeps_their_order() {
        for threads in [1, 2, 3, 8] {
            let seen = Mutex::new(Vec::new());
            let jobs: Vec<Job> = [5, 1, 9, 3, 3, 7].into_iter().map(Job).collect();
            let out = parallel(threads, jobs, |j| {
                seen.lock().unwrap().push((j.0, std::thread::current().id()));
                j.0 * 10
            });
            assert_eq!(out, vec![50, 10, 90, 30, 30, 70], "{threads} threads");
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), 6);
            let used: HashSet<_> = seen.iter().map(|(_, t)| *t).collect();
            assert_eq!(used.len(), threads.min(6), "{threads} threads: every lane gets work");
        }
    }
}
