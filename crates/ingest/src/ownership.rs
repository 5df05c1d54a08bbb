//! Who answers for each partition, as every instance sees it.
//!
//! Kafka's consumer group decides which instance folds a partition; this
//! module makes that visible to every instance. Each instance writes, for
//! every partition it folds, a signed [`PartitionOwner`] record to the
//! compacted ownership topic (key: the partition number): its name, its gRPC
//! address, an epoch, how far it has folded, and whether it answers yet. It
//! repeats them every `ownership_interval_ms` with its applied offset, and
//! writes `released` when a partition is revoked or the instance stops.
//! Every instance reads the whole topic into a table; the server asks
//! [`Ownership::view`] where a request for a partition goes.
//!
//! The epoch is the highest epoch seen for the partition plus one, taken
//! once this instance has read the topic to its end; a claim with a lower
//! epoch than one already seen (a zombie that has not noticed its
//! revocation) is ignored.
//!
//! A new owner answers only once it has folded up to its target: the end of
//! the partition when it was assigned, so it never answers with a state
//! older than one the previous owner gave. An instance whose own claim was
//! the partition's latest (static membership, a restart) and whose store has
//! folded at least as far as that claim said answers at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use omnifold_proto::v1 as proto;

use crate::consumer::{Shutdown, client_config, partition_count, record_of};
use crate::sign::SIGNATURE_HEADER;
use crate::status::{IngestStatus, Quiet, SnapshotMark, now_ms};
use omnifold_store::{Store, StoreHandle};

use crate::{Assignment, Error, IngestConfig, Result, Signer};

/// What an owner says about a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Assigned, folding what it has not read yet; not answering.
    CatchingUp,
    /// Answering for the partition.
    Serving,
    /// Revoked or stopping.
    Released,
}

impl OwnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerState::CatchingUp => "catching_up",
            OwnerState::Serving => "serving",
            OwnerState::Released => "released",
        }
    }
}

/// One instance's latest word about one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub instance: String,
    pub address: String,
    pub epoch: u64,
    /// The next offset the owner will fold.
    pub applied: i64,
    /// Where it must reach before it answers.
    pub target: i64,
    pub state: OwnerState,
    /// When the owner wrote it (Unix ms, its clock).
    pub at_ms: i64,
    /// The partition's end as the owner last saw it.
    pub end: Option<i64>,
    /// Offsets folded per second since the owner's claim before.
    pub rate: u64,
    /// The latest snapshot of the partition the owner knows of.
    pub snapshot: Option<SnapshotMark>,
}

/// Where a request for a partition goes, from this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerView {
    /// This instance answers; it has folded up to `applied`.
    Here { epoch: u64, applied: i64 },
    /// Another instance answers, at `address`.
    There { instance: String, address: String, epoch: u64, applied: i64 },
    /// The partition is moving: its new owner (if known) is catching up
    /// from `applied` to `target`.
    Moving {
        instance: Option<String>,
        address: Option<String>,
        epoch: u64,
        applied: i64,
        target: Option<i64>,
        /// When the new owner will answer, at the rate it folds.
        eta_ms: Option<u64>,
    },
    /// No instance has claimed it yet.
    Unknown,
}

/// The table of claims and this instance's own partitions; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ownership {
    me: Arc<Me>,
    status: IngestStatus,
    table: Arc<RwLock<BTreeMap<u32, Claim>>>,
    /// Every instance's warm copies (`kafka.standby`), by instance.
    standbys: Arc<RwLock<BTreeMap<String, Copies>>>,
    /// The table has been read to its end once (or there is no topic to
    /// read), and the partitions this instance owned last are answered.
    ready: Arc<AtomicBool>,
}

/// One instance's warm copies: partition → next offset folded, and when
/// the instance said so (Unix ms).
type Copies = (BTreeMap<u32, i64>, i64);

#[derive(Debug)]
struct Me {
    instance: String,
    address: String,
    /// One instance reads every partition (`assignment = "all"`): nothing
    /// else ever answers, so it answers at once.
    alone: bool,
}

impl Ownership {
    /// `instance` names this instance (see [`instance_name`]), `address`
    /// is its advertised gRPC address, `status` is its ingest's.
    pub fn new(cfg: &IngestConfig, instance: String, address: &str, status: IngestStatus) -> Ownership {
        let me = Me { instance, address: address.to_owned(), alone: cfg.assignment == Assignment::All };
        Ownership { me: Arc::new(me), status, table: Arc::default(), standbys: Arc::default(), ready: Arc::default() }
    }

    /// Whether this instance knows who owns what yet: `serve` starts
    /// answering once it does (or after a bounded wait for the broker).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.me.instance
    }

    /// Every partition's latest claim.
    pub fn claims(&self) -> BTreeMap<u32, Claim> {
        self.read().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Claim>> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// This instance's warm copy of `partition` (`kafka.standby`): the
    /// next offset it has folded to, and the partition's end as its owner
    /// last said.
    pub fn standby(&self, partition: u32) -> Option<(i64, Option<i64>)> {
        let applied = self.status.standby(partition)?;
        Some((applied, self.read().get(&partition).and_then(|c| c.end)))
    }

    /// The instances keeping a warm copy of `partition`, with the next
    /// offset each has folded to; copies not repeated for
    /// [`STANDBY_FRESH_MS`] are left out.
    pub fn standbys_of(&self, partition: u32) -> Vec<(String, i64)> {
        let since = now_ms() - STANDBY_FRESH_MS;
        let table = self.standbys.read().unwrap_or_else(PoisonError::into_inner);
        table
            .iter()
            .filter(|(_, (_, at))| *at >= since)
            .filter_map(|(instance, (copies, _))| copies.get(&partition).map(|a| (instance.clone(), *a)))
            .collect()
    }

    fn apply_standbys(&self, copies: proto::StandbyCopies) {
        let mine = copies.copies.iter().map(|c| (c.partition, c.applied)).collect();
        let mut table = self.standbys.write().unwrap_or_else(PoisonError::into_inner);
        table.insert(copies.instance, (mine, copies.at_ms));
    }

    /// Where a request for `partition` goes.
    pub fn view(&self, partition: u32) -> OwnerView {
        // Asked on every request: the table is read under its lock and a
        // claim's strings are cloned only when the answer names them.
        let local = self.status.partition(partition);
        let table = self.read();
        let claim = table.get(&partition);
        let mine = claim.filter(|c| c.instance == self.me.instance);
        // Another instance's live claim is the latest: this instance's own
        // is not written yet, or it is a zombie whose epoch was overtaken.
        let overtaken = !self.me.alone && mine.is_none() && claim.is_some_and(|c| c.state != OwnerState::Released);
        if let Some(h) = local.filter(|_| !overtaken) {
            let epoch = mine.map_or(0, |c| c.epoch);
            // Alone, nothing else ever answers: no target to wait for.
            return if h.serving() || self.me.alone {
                OwnerView::Here { epoch, applied: h.applied }
            } else {
                OwnerView::Moving {
                    instance: Some(self.me.instance.clone()),
                    address: Some(self.me.address.clone()),
                    epoch,
                    applied: h.applied,
                    target: h.target,
                    eta_ms: eta_ms(h.applied, h.target, mine.map_or(0, |c| c.rate)),
                }
            };
        }
        let Some(c) = claim else {
            return OwnerView::Unknown;
        };
        let moving = |target: Option<i64>, named: bool| OwnerView::Moving {
            instance: named.then(|| c.instance.clone()),
            address: named.then(|| c.address.clone()),
            epoch: c.epoch,
            applied: c.applied,
            target,
            eta_ms: eta_ms(c.applied, target, c.rate),
        };
        match c.state {
            // Ours but no longer folded here: revoked, the claim not yet replaced.
            _ if c.instance == self.me.instance => moving(None, false),
            OwnerState::Serving => OwnerView::There {
                instance: c.instance.clone(),
                address: c.address.clone(),
                epoch: c.epoch,
                applied: c.applied,
            },
            OwnerState::CatchingUp => moving(Some(c.target), true),
            OwnerState::Released => moving(None, false),
        }
    }

    /// Takes a claim read from the topic (or written here): the highest
    /// epoch wins, and an owner's later word replaces its earlier one. Two
    /// instances that claimed the same epoch (assigned at once, each before
    /// it read the other's claim) are told apart by name, the same way by
    /// every reader, so all of them, the two included, agree on one owner.
    fn apply(&self, partition: u32, claim: Claim) -> bool {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        match table.get(&partition) {
            Some(old) if !supersedes(&claim, old) => false,
            _ => {
                table.insert(partition, claim);
                true
            }
        }
    }

    /// Where a newly assigned partition must reach before this instance
    /// answers for it; `None` while that needs the table and the table is
    /// not read to its end yet.
    fn target_for(
        &self,
        partition: u32,
        applied: i64,
        table_ready: bool,
        end: impl Fn() -> Result<i64>,
    ) -> Result<Option<i64>> {
        if self.me.alone {
            return Ok(Some(applied));
        }
        if !table_ready {
            return Ok(None);
        }
        let last_mine =
            self.read().get(&partition).is_some_and(|c| c.instance == self.me.instance && c.applied <= applied);
        if last_mine {
            return Ok(Some(applied));
        }
        end().map(Some)
    }
}

impl Claim {
    fn encode(&self, partition: u32) -> Vec<u8> {
        proto::PartitionOwner {
            partition,
            instance: self.instance.clone(),
            address: self.address.clone(),
            epoch: self.epoch,
            applied: self.applied,
            target: self.target,
            state: match self.state {
                OwnerState::CatchingUp => proto::OwnerState::CatchingUp,
                OwnerState::Serving => proto::OwnerState::Serving,
                OwnerState::Released => proto::OwnerState::Released,
            } as i32,
            at_ms: self.at_ms,
            end: self.end.unwrap_or(-1),
            rate: self.rate,
            snapshot_offset: self.snapshot.map_or(-1, |m| m.next_offset),
            snapshot_at_ms: self.snapshot.map_or(0, |m| m.taken_at_ms),
        }
        .encode_to_vec()
    }

    /// A record from the topic; `None` when it is not a claim.
    fn decode(bytes: &[u8]) -> Option<(u32, Claim)> {
        let r = proto::PartitionOwner::decode(bytes).ok()?;
        let state = match proto::OwnerState::try_from(r.state).ok()? {
            proto::OwnerState::CatchingUp => OwnerState::CatchingUp,
            proto::OwnerState::Serving => OwnerState::Serving,
            proto::OwnerState::Released => OwnerState::Released,
            proto::OwnerState::Unspecified => return None,
        };
        let claim = Claim {
            instance: r.instance,
            address: r.address,
            epoch: r.epoch,
            applied: r.applied,
            target: r.target,
            state,
            at_ms: r.at_ms,
            end: (r.end >= 0).then_some(r.end),
            rate: r.rate,
            snapshot: (r.snapshot_offset >= 0)
                .then_some(SnapshotMark { next_offset: r.snapshot_offset, taken_at_ms: r.snapshot_at_ms }),
        };
        Some((r.partition, claim))
    }
}

/// Offsets a second folded between the claim `before` and `applied` now.
fn fold_rate(before: &Claim, applied: i64, now_ms: i64) -> u64 {
    let (done, ms) = (applied - before.applied, now_ms - before.at_ms);
    match (u64::try_from(done), u64::try_from(ms)) {
        (Ok(done), Ok(ms)) if ms > 0 => done.saturating_mul(1_000) / ms,
        _ => 0,
    }
}

/// How long folding from `applied` to `target` takes at `rate` offsets a
/// second; unknown without a target or a rate.
fn eta_ms(applied: i64, target: Option<i64>, rate: u64) -> Option<u64> {
    let left = u64::try_from(target? - applied).unwrap_or(0);
    (rate > 0).then(|| left.saturating_mul(1_000) / rate)
}

/// Whether `new` replaces `old` as a partition's latest claim.
fn supersedes(new: &Claim, old: &Claim) -> bool {
    new.epoch > old.epoch || (new.epoch == old.epoch && new.instance >= old.instance)
}

/// This instance's name: `kafka.instance_id`, else the one kept in the
/// store (made up and kept the first time), so a restart on the same disk
/// recognises its own claims.
pub fn instance_name(cfg: &IngestConfig, store: &Store) -> Result<String> {
    if !cfg.instance_id.is_empty() {
        return Ok(cfg.instance_id.clone());
    }
    Ok(store.instance_name(|| format!("omnifold-{:08x}", rand::random::<u32>()))?)
}

/// `fetch.wait.max.ms` of the ownership topic's reader.
const OWNERS_FETCH_WAIT_MS: u32 = 200;

/// The key of a partition's claims.
fn key_of(partition: u32) -> String {
    partition.to_string()
}

/// The key of an instance's standby copies in the ownership topic.
const STANDBY_KEY: &str = "standby/";

/// How long an instance's list of standby copies counts without being
/// repeated (it is repeated every beat; a dead instance's goes stale).
pub const STANDBY_FRESH_MS: i64 = 10_000;

/// Reads the ownership topic into `own`'s table and writes this
/// instance's claims until `shutdown`, then releases them. Blocking: run it
/// on its own thread.
pub fn run_ownership(cfg: &IngestConfig, own: &Ownership, stores: &StoreHandle, shutdown: &Shutdown) -> Result<()> {
    let mut owner = Owner::new(cfg, own)?;
    let interval = Duration::from_millis(cfg.ownership_interval_ms);
    let mut next_beat = Instant::now();
    let mut rested = false;
    if own.me.alone {
        // Every partition is this instance's: answered from the store at
        // once, also when the broker is away at start.
        owner.rest_all(&stores.get())?;
        own.ready.store(true, Ordering::SeqCst);
    }
    while !shutdown.is_triggered() {
        owner.read_topic();
        if !rested && (owner.table_ready() || owner.missing) {
            owner.rest(&stores.get())?;
            rested = true;
            own.ready.store(true, Ordering::SeqCst);
        }
        owner.set_targets();
        let beat = Instant::now() >= next_beat;
        owner.publish(beat);
        if beat {
            next_beat = Instant::now() + interval;
        }
    }
    owner.release_all();
    Ok(())
}

/// The ownership thread's state.
struct Owner<'a> {
    cfg: &'a IngestConfig,
    own: &'a Ownership,
    signer: Signer,
    /// Reads the ownership topic; `None` until the topic exists.
    reader: Option<Reader>,
    producer: BaseProducer,
    /// Fetches the events topic's ends.
    probe: BaseConsumer<Quiet>,
    /// The claims this instance has written, by partition.
    mine: BTreeMap<u32, Claim>,
    /// The ownership topic does not exist (nothing to wait for).
    missing: bool,
    next_topic_check: Instant,
    /// The last list of standby copies written was not empty.
    copies_said: bool,
}

/// A reader of the whole ownership topic.
struct Reader {
    consumer: BaseConsumer<Quiet>,
    /// Offsets to read up to before the table counts as read to its end.
    ends: BTreeMap<i32, i64>,
    /// The next offset of each partition read so far.
    read: BTreeMap<i32, i64>,
}

impl Reader {
    fn caught_up(&self) -> bool {
        self.ends.iter().all(|(p, end)| self.read.get(p).copied().unwrap_or(0) >= *end)
    }
}

impl<'a> Owner<'a> {
    fn new(cfg: &'a IngestConfig, own: &'a Ownership) -> Result<Owner<'a>> {
        let producer = client_config(cfg).set("enable.idempotence", "true").set("linger.ms", "0").create()?;
        let probe = client_config(cfg).create_with_context(Quiet)?;
        Ok(Owner {
            cfg,
            own,
            signer: cfg.signer()?,
            reader: None,
            producer,
            probe,
            mine: BTreeMap::new(),
            missing: false,
            next_topic_check: Instant::now(),
            copies_said: false,
        })
    }

    /// Opens the reader once the topic exists (checked every few seconds).
    fn open_reader(&mut self) {
        if self.reader.is_some() || Instant::now() < self.next_topic_check {
            return;
        }
        self.next_topic_check = Instant::now() + Duration::from_secs(5);
        let topic = self.cfg.ownership_topic.as_str();
        let opened = partition_count(self.cfg, topic).and_then(|n| {
            let consumer: BaseConsumer<Quiet> = client_config(self.cfg)
                .set("group.id", format!("{}.owners-reader", self.cfg.group_id))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "false")
                // Claims change rarely and a fifth of a second is soon
                // enough to see one: a broker that holds every fetch for its
                // whole wait (tansu) is asked five times a second, not 100.
                .set("fetch.wait.max.ms", OWNERS_FETCH_WAIT_MS.to_string())
                .create_with_context(Quiet)?;
            let mut tpl = TopicPartitionList::new();
            let mut ends = BTreeMap::new();
            for p in 0..n as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
                let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                ends.insert(p, high);
            }
            consumer.assign(&tpl)?;
            Ok(Reader { consumer, ends, read: BTreeMap::new() })
        });
        match opened {
            Ok(r) => {
                info!(topic, "reading partition ownership");
                self.reader = Some(r);
                self.missing = false;
            }
            Err(Error::NoTopic(_)) if self.missing => {}
            Err(Error::NoTopic(_)) => {
                self.missing = true;
                warn!(
                    topic,
                    "the ownership topic does not exist (`omnifold topics create` makes it); \
                     this instance answers only for its own partitions"
                );
            }
            Err(e) => debug!(topic, error = %e, "the ownership topic cannot be read yet"),
        }
    }

    /// Applies what the topic holds (waits up to 100 ms for it).
    fn read_topic(&mut self) {
        self.open_reader();
        let Some(reader) = self.reader.as_mut() else {
            std::thread::sleep(Duration::from_millis(100));
            return;
        };
        let mut wait = Duration::from_millis(100);
        for _ in 0..1_000 {
            let Some(m) = reader.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let Ok(m) = m else {
                continue;
            };
            reader.read.insert(m.partition(), m.offset() + 1);
            let r = record_of(&m);
            let value = r.value.unwrap_or_default();
            if !self.signer.verify(r.key, None, value, r.signature) {
                warn!(offset = r.offset, "an ownership record without omnifold's signature was dropped");
                continue;
            }
            if let Some(instance) = r.key.and_then(|k| k.strip_prefix(STANDBY_KEY.as_bytes())) {
                match proto::StandbyCopies::decode(value) {
                    Ok(copies) if copies.instance.as_bytes() == instance => self.own.apply_standbys(copies),
                    _ => {
                        warn!(offset = r.offset, "an ownership record that is not a list of standby copies was dropped")
                    }
                }
                continue;
            }
            match Claim::decode(value) {
                Some((p, claim)) if r.key == Some(key_of(p).as_bytes()) => {
                    self.own.apply(p, claim);
                }
                _ => warn!(offset = r.offset, "an ownership record that is not a claim was dropped"),
            }
        }
    }

    fn table_ready(&self) -> bool {
        self.reader.as_ref().is_some_and(Reader::caught_up)
    }

    /// Alone: every partition the store has folded is answered from it.
    fn rest_all(&self, store: &Store) -> Result<()> {
        for p in 0..store.partition_count(&self.cfg.topic)?.unwrap_or(0) {
            if let Some(applied) = store.next_offset(&self.cfg.topic, p)? {
                self.own.status.rest(p, applied);
            }
        }
        Ok(())
    }

    /// After a restart: the partitions whose latest claim is this
    /// instance's own and whose store has folded at least as far as it
    /// said are answered from the store at once, before the group assigns
    /// anything (nothing newer than this store was ever answered for them).
    fn rest(&self, store: &Store) -> Result<()> {
        let Some(partitions) = store.partition_count(&self.cfg.topic)? else {
            return Ok(());
        };
        for (p, claim) in self.own.claims().into_iter().filter(|(p, _)| *p < partitions) {
            if claim.instance != self.own.me.instance {
                continue;
            }
            let applied = store.next_offset(&self.cfg.topic, p)?.unwrap_or(0);
            if applied >= claim.applied {
                info!(
                    partition = p,
                    applied, "answering for a partition this instance owned last, until it is assigned or claimed"
                );
                self.own.status.rest(p, applied);
            }
        }
        Ok(())
    }

    /// Sets the target of every newly assigned partition.
    fn set_targets(&mut self) {
        let status = self.own.status.snapshot();
        let ready = self.table_ready() || self.reader.is_none();
        for (p, h) in status.partitions.iter().filter(|(_, h)| h.target.is_none()) {
            let end = || -> Result<i64> {
                let (_, high) = self.probe.fetch_watermarks(&self.cfg.topic, *p as i32, Duration::from_secs(10))?;
                Ok(high)
            };
            match self.own.target_for(*p, h.applied, ready, end) {
                Ok(Some(target)) => {
                    info!(
                        partition = p,
                        applied = h.applied,
                        target,
                        "partition assigned; answering once folded to its target"
                    );
                    self.own.status.set_target(*p, target);
                }
                Ok(None) => {}
                Err(e) => debug!(partition = p, error = %e, "the partition's end cannot be read yet"),
            }
        }
    }

    /// Writes a claim for each partition whose state changed, and on a beat
    /// for every partition (with its applied offset); releases revoked ones.
    fn publish(&mut self, beat: bool) {
        if self.reader.is_none() || !self.table_ready() {
            return;
        }
        let status = self.own.status.snapshot();
        if beat && (!status.standby.is_empty() || self.copies_said) {
            self.write_standbys(&status.standby);
        }
        let revoked: Vec<u32> = self.mine.keys().filter(|p| !status.partitions.contains_key(p)).copied().collect();
        for p in revoked {
            self.release(p);
        }
        for (p, h) in &status.partitions {
            let Some(target) = h.target else {
                continue;
            };
            let state = if h.serving() { OwnerState::Serving } else { OwnerState::CatchingUp };
            let before = self.mine.get(p);
            let epoch = match before {
                Some(c) if self.overtaken(*p, c.epoch) => continue,
                Some(c) if !beat && c.state == state => continue,
                Some(c) => c.epoch,
                None => self.epoch_for(*p),
            };
            let now = now_ms();
            let rate = before.map_or(0, |before| fold_rate(before, h.applied, now));
            let claim = Claim {
                instance: self.own.me.instance.clone(),
                address: self.own.me.address.clone(),
                epoch,
                applied: h.applied,
                target,
                state,
                at_ms: now,
                end: h.end,
                rate,
                snapshot: h.snapshot,
            };
            if !self.mine.contains_key(p) {
                info!(partition = p, epoch, state = state.as_str(), "claiming the partition");
            }
            self.write(*p, &claim);
            self.mine.insert(*p, claim);
        }
        self.producer.poll(Duration::ZERO);
    }

    /// Another instance has claimed `partition` at `epoch` or later: this
    /// one stops writing its claim (a zombie's would only be ignored), and
    /// stops answering for it (`Ownership::view`).
    fn overtaken(&self, partition: u32, epoch: u64) -> bool {
        self.own.read().get(&partition).is_some_and(|c| c.instance != self.own.me.instance && c.epoch >= epoch)
    }

    /// The epoch of a new claim: the latest one's if it is this instance's
    /// (a restart is not a handover), else one more than the highest seen.
    fn epoch_for(&self, partition: u32) -> u64 {
        match self.own.read().get(&partition) {
            Some(c) if c.instance == self.own.me.instance && c.state != OwnerState::Released => c.epoch,
            Some(c) => c.epoch + 1,
            None => 1,
        }
    }

    fn release(&mut self, partition: u32) {
        if let Some(mut claim) = self.mine.remove(&partition) {
            claim.state = OwnerState::Released;
            claim.at_ms = now_ms();
            info!(partition, epoch = claim.epoch, "releasing the partition");
            self.write(partition, &claim);
        }
    }

    /// Releases every claim and waits (briefly) until the broker has them.
    fn release_all(&mut self) {
        let mine: Vec<u32> = self.mine.keys().copied().collect();
        for p in mine {
            self.release(p);
        }
        if self.copies_said {
            self.write_standbys(&BTreeMap::new());
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(5)) {
            warn!(error = %e, "the partitions' release did not reach the broker; other instances see it when the group moves them");
        }
    }

    /// This instance's standby copies (`applied` by partition), or none.
    fn write_standbys(&mut self, applied: &BTreeMap<u32, i64>) {
        let copies = proto::StandbyCopies {
            instance: self.own.me.instance.clone(),
            address: self.own.me.address.clone(),
            copies: applied.iter().map(|(p, a)| proto::StandbyCopy { partition: *p, applied: *a }).collect(),
            at_ms: now_ms(),
        };
        self.copies_said = !applied.is_empty();
        let key = format!("{STANDBY_KEY}{}", self.own.me.instance);
        let value = copies.encode_to_vec();
        self.own.apply_standbys(copies);
        self.send(&key, &value);
    }

    fn write(&self, partition: u32, claim: &Claim) {
        // Ours wins locally at once; the topic tells the others.
        self.own.apply(partition, claim.clone());
        self.send(&key_of(partition), &claim.encode(partition));
    }

    /// Queues one signed record of the ownership topic.
    fn send(&self, key: &str, value: &[u8]) {
        let signature = self.signer.sign(Some(key.as_bytes()), None, value);
        let headers = OwnedHeaders::new().insert(Header { key: SIGNATURE_HEADER, value: Some(signature.as_bytes()) });
        let record = BaseRecord::to(&self.cfg.ownership_topic).key(key).payload(value).headers(headers);
        if let Err((e, _)) = self.producer.send(record) {
            debug!(key, error = %e, "an ownership record could not be queued; the next beat repeats it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership(instance: &str, assignment: Assignment) -> Ownership {
        let cfg = IngestConfig { assignment, ..IngestConfig::default() };
        Ownership::new(&cfg, instance.into(), "http://a:1", IngestStatus::default())
    }

    fn claim(instance: &str, epoch: u64, state: OwnerState) -> Claim {
        Claim {
            instance: instance.into(),
            address: format!("http://{instance}:1"),
            epoch,
            applied: 10,
            target: 10,
            state,
            at_ms: 0,
            end: Some(12),
            rate: 0,
            snapshot: None,
        }
    }

    #[test]
    fn the_highest_epoch_wins_and_a_zombie_is_ignored() {
        let own = ownership("a", Assignment::Group);
        assert!(own.apply(0, claim("b", 2, OwnerState::Serving)));
        assert!(!own.apply(0, claim("c", 1, OwnerState::Serving)), "a lower epoch is a zombie's");
        assert!(matches!(own.view(0), OwnerView::There { ref instance, epoch: 2, .. } if instance == "b"));
        assert!(own.apply(0, claim("b", 2, OwnerState::Released)));
        assert!(matches!(own.view(0), OwnerView::Moving { address: None, epoch: 2, .. }));
        assert!(own.apply(0, claim("c", 3, OwnerState::CatchingUp)));
        assert!(matches!(own.view(0), OwnerView::Moving { address: Some(_), target: Some(10), .. }));
        assert_eq!(own.view(1), OwnerView::Unknown);
    }

    #[test]
    fn two_claims_of_one_epoch_settle_on_the_same_owner_in_any_order() {
        let (x, y) = (ownership("x", Assignment::Group), ownership("y", Assignment::Group));
        for own in [&x, &y] {
            own.status.assigned([(0, 5)]);
            own.status.set_target(0, 5);
        }
        // Each wrote its own claim of epoch 3 first, then read the other's.
        x.apply(0, claim("x", 3, OwnerState::Serving));
        x.apply(0, claim("y", 3, OwnerState::Serving));
        y.apply(0, claim("y", 3, OwnerState::Serving));
        y.apply(0, claim("x", 3, OwnerState::Serving));
        assert!(matches!(x.view(0), OwnerView::There { ref instance, .. } if instance == "y"));
        assert!(matches!(y.view(0), OwnerView::Here { epoch: 3, .. }));
        // And y's heartbeats keep it so.
        assert!(x.apply(0, claim("y", 3, OwnerState::Serving)));
        assert!(!x.apply(0, claim("x", 3, OwnerState::Serving)));
    }

    #[test]
    fn an_assigned_partition_answers_here_once_folded_to_its_target() {
        let own = ownership("a", Assignment::Group);
        own.apply(0, claim("b", 4, OwnerState::Released));
        own.status.assigned([(0, 5)]);
        assert!(matches!(own.view(0), OwnerView::Moving { target: None, applied: 5, .. }), "no target yet");
        own.status.set_target(0, 8);
        assert!(matches!(own.view(0), OwnerView::Moving { target: Some(8), .. }));
        own.status.committed(0, 8);
        assert!(matches!(own.view(0), OwnerView::Here { applied: 8, .. }));
    }

    #[test]
    fn an_instance_whose_claim_was_overtaken_does_not_answer() {
        let own = ownership("a", Assignment::Group);
        own.status.assigned([(0, 5)]);
        own.status.set_target(0, 5);
        own.apply(0, claim("a", 1, OwnerState::Serving));
        assert!(matches!(own.view(0), OwnerView::Here { epoch: 1, applied: 5 }));
        own.apply(0, claim("b", 2, OwnerState::Serving));
        assert!(matches!(own.view(0), OwnerView::There { ref instance, .. } if instance == "b"));
    }

    #[test]
    fn a_partition_owned_last_is_answered_after_a_restart_until_another_claims_it() {
        let own = ownership("a", Assignment::Group);
        own.apply(0, claim("a", 3, OwnerState::Released));
        own.status.rest(0, 12);
        assert_eq!(own.view(0), OwnerView::Here { epoch: 3, applied: 12 });
        // The group assigns it here: the fold takes over from the store's
        // offset, and it is answered throughout.
        own.status.assigned([(0, 12)]);
        assert_eq!(own.view(0), OwnerView::Here { epoch: 3, applied: 12 });
        own.status.revoked([0]);
        own.status.rest(0, 12);
        own.apply(0, claim("b", 4, OwnerState::CatchingUp));
        assert!(matches!(own.view(0), OwnerView::Moving { ref instance, .. } if instance.as_deref() == Some("b")));
    }

    #[test]
    fn a_target_is_the_partition_end_unless_this_instance_owned_it_last() {
        let end = || Ok(100);
        let own = ownership("a", Assignment::Group);
        assert_eq!(own.target_for(0, 7, false, end).unwrap(), None, "the table must be read first");
        assert_eq!(own.target_for(0, 7, true, end).unwrap(), Some(100));
        own.apply(0, claim("a", 1, OwnerState::Serving));
        assert_eq!(own.target_for(0, 10, true, end).unwrap(), Some(10), "its own claim, and its store as far");
        assert_eq!(own.target_for(0, 9, true, end).unwrap(), Some(100), "its store is behind its own claim");
        let alone = ownership("a", Assignment::All);
        assert_eq!(alone.target_for(0, 3, false, end).unwrap(), Some(3));
    }

    #[test]
    fn a_catching_up_owner_says_when_it_will_answer() {
        let own = ownership("a", Assignment::Group);
        own.apply(0, Claim { applied: 1_000, target: 5_000, rate: 2_000, ..claim("b", 2, OwnerState::CatchingUp) });
        assert!(matches!(own.view(0), OwnerView::Moving { eta_ms: Some(2_000), .. }), "{:?}", own.view(0));
        own.apply(0, Claim { rate: 0, ..claim("b", 2, OwnerState::CatchingUp) });
        assert!(matches!(own.view(0), OwnerView::Moving { eta_ms: None, .. }), "no rate yet");
        let before = Claim { applied: 100, at_ms: 10_000, ..claim("b", 2, OwnerState::CatchingUp) };
        assert_eq!(fold_rate(&before, 2_100, 12_000), 1_000);
        assert_eq!(fold_rate(&before, 50, 12_000), 0, "never negative");
        assert_eq!(fold_rate(&before, 2_100, 10_000), 0, "no time passed");
    }

    #[test]
    fn a_claim_survives_its_encoding() {
        let c = claim("b", 9, OwnerState::CatchingUp);
        assert_eq!(Claim::decode(&c.encode(3)), Some((3, c)));
        assert_eq!(Claim::decode(b"\xff\xff"), None);
    }
}
