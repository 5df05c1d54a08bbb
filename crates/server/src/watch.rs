//! The change stream (`WatchProfile`): what the fold committed, kept per
//! partition in a bounded window that watchers read from and resume in.
//!
//! A change is one profile as a committed batch left it, with its version:
//! the partition and the offset after the event that produced it. A
//! watcher holds a cursor per partition (every change before it is seen)
//! and takes the changes after it from the window, so it gets each change
//! once, in fold order, however it is woken. A cursor older than the
//! window ([`Log::from`]) cannot be served: the watch ends `OUT_OF_RANGE`,
//! the client reads the profile again and watches from its version. This
//! is Kubernetes' resourceVersion window and etcd's compacted revision,
//! said explicitly instead of a silent cancel.
//!
//! Architecture invariant: a partition's window holds every change from
//! `from` to `applied` (the next offset the fold will commit), or its
//! watchers learn that it does not. A batch that does not start where the
//! last one ended (a store switch, a partition folded elsewhere meanwhile)
//! empties the window and moves `from` to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use omnifold_core::{Change, Member};
use omnifold_proto::v1 as proto;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;

use crate::Error;
use crate::request::{MemberAddress, ReadMask};
use crate::routing::Owner;
use crate::{AppState, auth, now_millis, privacy, services};

/// What a change holds in memory, roughly.
fn weight(c: &Change) -> usize {
    128 + c.key.len() + c.member.as_ref().map_or(0, |m| m.approx_heap_bytes())
}

/// Defaults of `[server.watch]`.
pub const DEFAULT_WATCH_BUFFER_BYTES: usize = 64 << 20;
pub const DEFAULT_MAX_WATCHERS: usize = 1024;
pub const DEFAULT_WATCH_PROGRESS: Duration = Duration::from_secs(5);
/// Members one watch may name at most.
pub const MAX_WATCHED_MEMBERS: usize = 100;
/// Messages queued for a watcher's connection before it counts as slow
/// (it then waits, and ends OUT_OF_RANGE once the window moves past it).
const WATCHER_QUEUE: usize = 256;
/// Changes taken from a window at once.
const TAKE: usize = 256;

/// The changes the fold committed on this instance, per partition, in a
/// window of at most `buffer_bytes`; and the watchers reading them.
#[derive(Debug, Clone)]
pub struct Changes {
    window: Arc<Mutex<Window>>,
    published: tokio::sync::watch::Sender<u64>,
    buffer_bytes: usize,
    watchers: Arc<Semaphore>,
    progress: Duration,
}

#[derive(Debug, Default)]
struct Window {
    logs: HashMap<u32, Log>,
    /// The partition of each change held, oldest first (what to evict).
    order: VecDeque<u32>,
    bytes: usize,
    /// Per partition: watches following it now, and when the last one ended.
    watched: HashMap<u32, (usize, Option<std::time::Instant>)>,
}

/// How long a partition's changes are still kept after its last watch
/// ended, so a client that reconnects resumes without reading again.
pub const KEEP_AFTER_LAST_WATCH: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Log {
    /// Every change at or after this offset up to `applied` is held.
    from: i64,
    /// The next offset the fold commits.
    applied: i64,
    entries: VecDeque<(Arc<Change>, usize)>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new(DEFAULT_WATCH_BUFFER_BYTES, DEFAULT_MAX_WATCHERS, DEFAULT_WATCH_PROGRESS)
    }
}

impl Changes {
    /// A window of `buffer_bytes` (at least one change per partition is
    /// kept), at most `max_watchers` watches at once, progress on quiet
    /// streams every `progress`.
    pub fn new(buffer_bytes: usize, max_watchers: usize, progress: Duration) -> Changes {
        Changes {
            window: Arc::default(),
            published: tokio::sync::watch::Sender::new(0),
            buffer_bytes,
            watchers: Arc::new(Semaphore::new(max_watchers)),
            progress: progress.max(Duration::from_millis(10)),
        }
    }

    /// Whether changes of `partition` are kept: while a watch follows it,
    /// and for [`KEEP_AFTER_LAST_WATCH`] after the last one ended. Keeping
    /// costs a copy of each changed profile, which a partition nobody
    /// watches does not pay.
    pub fn wants(&self, partition: u32) -> bool {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window
            .watched
            .get(&partition)
            .is_some_and(|(active, ended)| *active > 0 || ended.is_some_and(|at| at.elapsed() < KEEP_AFTER_LAST_WATCH))
    }

    /// Records a committed batch of `partition`: the records
    /// `first_offset..next_offset` and the profiles they changed, in fold
    /// order; none when they were not taken (nobody watched), after which
    /// the window starts again at `next_offset`.
    pub fn publish(&self, partition: u32, first_offset: i64, next_offset: i64, changes: Option<Vec<Change>>) {
        {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            let Window { logs, order, bytes, .. } = &mut *window;
            let Some(changes) = changes else {
                if let Some(log) = logs.get_mut(&partition) {
                    *bytes -= log.entries.drain(..).map(|(_, w)| w).sum::<usize>();
                    *log = Log::at(next_offset);
                    order.retain(|q| *q != partition);
                }
                return;
            };
            let log = logs.entry(partition).or_insert_with(|| Log::at(first_offset));
            if log.applied != first_offset {
                // What came between was not folded here: start over.
                *bytes -= log.entries.drain(..).map(|(_, w)| w).sum::<usize>();
                log.from = first_offset;
                order.retain(|q| *q != partition);
            }
            log.applied = next_offset;
            for c in changes {
                let w = weight(&c);
                *bytes += w;
                log.entries.push_back((Arc::new(c), w));
                order.push_back(partition);
            }
            evict(logs, order, bytes, self.buffer_bytes);
            metrics::gauge!("omnifold_watch_buffer_bytes").set(*bytes as f64);
        }
        self.published.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Counts a watch of `partition` until the returned guard is dropped;
    /// from now on its commits keep their changes.
    fn watch(&self, partition: u32) -> Watching {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.watched.entry(partition).or_default().0 += 1;
        Watching { changes: self.clone(), partition }
    }

    /// Opens `partition`'s window if nothing was published for it yet:
    /// it starts at `applied`, the store's next offset. Returns the next
    /// offset the window is at.
    fn open(&self, partition: u32, applied: i64) -> i64 {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.logs.entry(partition).or_insert_with(|| Log::at(applied)).applied
    }

    /// Where `partition`'s window starts.
    fn from(&self, partition: u32) -> Option<i64> {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.logs.get(&partition).map(|l| l.from)
    }

    /// The changes after `cursor` (at most about [`TAKE`]) and the cursor
    /// past them; `Err(from)` when changes after `cursor` are no longer
    /// held.
    fn take(&self, partition: u32, cursor: i64) -> Result<(Vec<Arc<Change>>, i64), i64> {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = window.logs.get(&partition) else {
            return Ok((Vec::new(), cursor));
        };
        if cursor < log.from {
            return Err(log.from);
        }
        let start = log.entries.partition_point(|(c, _)| c.next_offset <= cursor);
        let mut taken: Vec<Arc<Change>> = Vec::new();
        for (c, _) in log.entries.range(start..) {
            // Changes of one event (a merge changes two profiles) go together.
            if taken.len() >= TAKE && taken.last().is_some_and(|l| l.next_offset != c.next_offset) {
                let next = taken.last().map_or(cursor, |l| l.next_offset);
                return Ok((taken, next));
            }
            taken.push(c.clone());
        }
        Ok((taken, cursor.max(log.applied)))
    }
}

/// A watch of one partition, counted while it lives.
#[derive(Debug)]
struct Watching {
    changes: Changes,
    partition: u32,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut window = self.changes.window.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((active, ended)) = window.watched.get_mut(&self.partition) {
            *active = active.saturating_sub(1);
            *ended = Some(std::time::Instant::now());
        }
    }
}

impl Log {
    fn at(offset: i64) -> Log {
        Log { from: offset, applied: offset, entries: VecDeque::new() }
    }
}

/// Drops the oldest changes until the window fits `max` bytes, keeping
/// each partition's latest.
fn evict(logs: &mut HashMap<u32, Log>, order: &mut VecDeque<u32>, bytes: &mut usize, max: usize) {
    let mut kept = VecDeque::new();
    while *bytes > max
        && let Some(p) = order.pop_front()
    {
        let Some(log) = logs.get_mut(&p) else { continue };
        if log.entries.len() <= 1 {
            kept.push_back(p);
            continue;
        }
        if let Some((c, w)) = log.entries.pop_front() {
            *bytes -= w;
            log.from = c.next_offset;
            metrics::counter!("omnifold_watch_evicted_total").increment(1);
        }
    }
    while let Some(p) = kept.pop_back() {
        order.push_front(p);
    }
}

/// What one watch follows.
#[derive(Debug)]
struct Plan {
    /// Per partition: the cursor, and the members watched there with the
    /// version each was last sent at (none: every profile of the partition).
    partitions: BTreeMap<u32, Watched>,
    mask: ReadMask,
    /// The partitions counted as watched while the watch lives.
    _watching: Vec<Watching>,
}

#[derive(Debug)]
struct Watched {
    cursor: i64,
    members: Option<HashMap<String, i64>>,
}

type Out = mpsc::Sender<Result<proto::WatchProfileResponse, Status>>;

/// The response stream of a watch.
pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchProfileResponse, Status>> + Send>>;

/// Starts a watch on this instance (the members' partitions are owned
/// here): checks the request, sends the initial profiles, then follows.
pub(crate) async fn start(state: AppState, r: proto::WatchProfileRequest) -> Result<WatchStream, Error> {
    let changes = state.changes.clone().ok_or_else(|| {
        Error::FailedPrecondition(
            "this instance keeps no changes to watch (server.watch_buffer_bytes = 0, or it folds nothing)".into(),
        )
    })?;
    let permit = changes.watchers.clone().try_acquire_owned().map_err(|_| {
        Error::ResourceExhausted(
            "this instance serves as many watches as it may (server.max_watchers); retry later or on another \
             instance"
                .into(),
        )
    })?;
    let resume = resume_points(&r.resume_from)?;
    let mask = ReadMask::try_from(r.read_mask.clone())?;
    let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
    let caller = auth::caller();
    let plan = {
        let (state, changes, tx) = (state.clone(), changes.clone(), tx.clone());
        auth::scoped(caller.clone(), async move { plan(&state, &changes, r, mask, &resume, &tx).await }).await?
    };
    tokio::spawn(auth::scoped(caller, follow(state, changes, plan, tx, permit)));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The request's resume points, one per partition.
fn resume_points(cursors: &[proto::WatchCursor]) -> Result<BTreeMap<u32, i64>, Error> {
    let mut out = BTreeMap::new();
    for c in cursors {
        if c.next_offset < 0 {
            return Err(Error::InvalidArgument(format!(
                "resume_from: partition {} has a negative next_offset {}; send the next_offset of the last change \
                 or progress seen",
                c.partition, c.next_offset
            )));
        }
        if out.insert(c.partition, c.next_offset).is_some() {
            return Err(Error::InvalidArgument(format!(
                "resume_from names partition {} twice; send one cursor per partition",
                c.partition
            )));
        }
    }
    Ok(out)
}

/// What the request asks to watch, with the cursors it starts from; the
/// initial profiles are sent on `tx`.
async fn plan(
    state: &AppState,
    changes: &Changes,
    r: proto::WatchProfileRequest,
    mask: ReadMask,
    resume: &BTreeMap<u32, i64>,
    tx: &Out,
) -> Result<Plan, Error> {
    let mut refs: Vec<proto::MemberRef> = r.member.into_iter().chain(r.members).collect();
    match (&r.partitions, refs.is_empty()) {
        (Some(_), false) => {
            return Err(Error::InvalidArgument("name members or partitions to watch, not both".into()));
        }
        (None, true) => {
            return Err(Error::InvalidArgument("name a member (or members, or partitions) to watch".into()));
        }
        _ => {}
    }
    if refs.len() > MAX_WATCHED_MEMBERS {
        return Err(Error::InvalidArgument(format!(
            "a watch names at most {MAX_WATCHED_MEMBERS} members, got {}; split it into several watches",
            refs.len()
        )));
    }
    let mut partitions = BTreeMap::new();
    let mut watching = Vec::new();
    if let Some(range) = r.partitions {
        for p in partition_range(state, &range)? {
            here(state, p)?;
            // Counted before the store is read: every commit after the
            // read keeps its changes (the fold asks after committing).
            watching.push(changes.watch(p));
            let applied = changes.open(p, store_applied(state, p)?);
            let cursor = match resume.get(&p) {
                Some(c) => check_cursor(changes, p, *c)?,
                None => applied,
            };
            partitions.insert(p, Watched { cursor, members: None });
        }
        return Ok(Plan { partitions, mask, _watching: watching });
    }
    let mut first: Vec<(u32, Member)> = Vec::new();
    for (i, m) in refs.drain(..).enumerate() {
        let addr =
            MemberAddress::try_from(Some(m)).map_err(|e| Error::InvalidArgument(format!("members[{i}]: {e}")))?;
        let key = services::resolve(state, &addr)?.member.key;
        let p = state.partition(&key)?;
        here(state, p)?;
        if !partitions.contains_key(&p) {
            watching.push(changes.watch(p));
        }
        let applied = changes.open(p, store_applied(state, p)?);
        // Read after the window is open: later changes are all in it.
        // By its key: the index was followed once, above.
        let member = services::find_for(state, &MemberAddress::Key(key.clone()), &mask)?;
        let w = partitions.entry(p).or_insert(Watched { cursor: applied, members: Some(HashMap::new()) });
        let seen = member.version.next_offset;
        w.members.get_or_insert_default().insert(key, seen);
        if !resume.contains_key(&p) {
            first.push((p, member));
        }
    }
    for (p, w) in &mut partitions {
        if let Some(c) = resume.get(p) {
            w.cursor = resume_members(changes, *p, *c, w)?;
        }
    }
    for (p, member) in first {
        let change = Change {
            key: member.key.clone(),
            next_offset: member.version.next_offset,
            member: Some(member.into()),
            audiences: Vec::new(),
        };
        if let Some(mut msg) = change_message(state, p, &change, &mask) {
            msg.initial = true;
            send(tx, proto::watch_profile_response::Event::Change(msg)).await?;
        }
    }
    Ok(Plan { partitions, mask, _watching: watching })
}

/// A resume point of a member watch: served when the window holds every
/// change after it, or when none of the watched members changed since.
fn resume_members(changes: &Changes, p: u32, cursor: i64, w: &mut Watched) -> Result<i64, Error> {
    let members = w.members.get_or_insert_default();
    let start = match check_cursor(changes, p, cursor) {
        Ok(c) => c,
        // Unchanged since the resume point: follow from the window's start.
        Err(_) if members.values().all(|version| *version <= cursor) => changes.from(p).unwrap_or(cursor),
        Err(e) => return Err(e),
    };
    for seen in members.values_mut() {
        *seen = cursor;
    }
    Ok(start)
}

/// `cursor` when the window of `p` holds every change after it.
fn check_cursor(changes: &Changes, p: u32, cursor: i64) -> Result<i64, Error> {
    match changes.from(p) {
        Some(from) if cursor < from => Err(too_old(p, cursor, from)),
        _ => Ok(cursor),
    }
}

fn too_old(p: u32, cursor: i64, from: i64) -> Error {
    Error::OutOfRange(format!(
        "changes of partition {p} after offset {cursor} are no longer kept here (kept from {from}); read the \
         profile again, then watch from its version"
    ))
}

/// The partitions of `range`, checked against the topic.
fn partition_range(state: &AppState, range: &proto::PartitionRange) -> Result<std::ops::RangeInclusive<u32>, Error> {
    let count = state
        .store()
        .partition_count(&state.topic)?
        .ok_or_else(|| Error::Unavailable("the store has not joined the events topic yet; retry shortly".into()))?;
    if range.first > range.last || range.last >= count {
        return Err(Error::InvalidArgument(format!(
            "partitions {}..={} is not a range of the topic's partitions 0..={}",
            range.first,
            range.last,
            count.saturating_sub(1)
        )));
    }
    Ok(range.first..=range.last)
}

/// Ok when this instance folds `p` (a watch follows only what is folded
/// here; one member's watch is forwarded to its owner before this).
fn here(state: &AppState, p: u32) -> Result<(), Error> {
    let Some(routing) = &state.routing else { return Ok(()) };
    match routing.owners.owner(p) {
        Owner::Here { .. } => Ok(()),
        Owner::There { instance, address, .. } => Err(Error::FailedPrecondition(format!(
            "partition {p} is folded by {instance} at {address}: watch its members there (a watch of several \
             members or of partitions is served by the instance that folds them all)"
        ))),
        other => Err(routing.not_here(p, &other, crate::routing::Why::Asked)),
    }
}

fn store_applied(state: &AppState, p: u32) -> Result<i64, Error> {
    Ok(state.store().next_offset(&state.topic, p)?.unwrap_or(0))
}

/// Follows the plan until the client goes away or the watch must end.
async fn follow(state: AppState, changes: Changes, mut plan: Plan, tx: Out, _permit: OwnedSemaphorePermit) {
    metrics::gauge!("omnifold_watchers").increment(1.0);
    let mut published = changes.published.subscribe();
    let mut last_sent = tokio::time::Instant::now();
    let ended = loop {
        published.borrow_and_update();
        match step(&state, &changes, &mut plan, &tx).await {
            Ok(0) => {}
            Ok(_) => last_sent = tokio::time::Instant::now(),
            Err(Error::Gone) => break None,
            Err(e) => break Some(e),
        }
        // Quiet (nothing sent for a while): progress moves the client's
        // resume point.
        tokio::select! {
            r = published.changed() => if r.is_err() { break None },
            () = tokio::time::sleep_until(last_sent + changes.progress) => {
                if send(&tx, proto::watch_profile_response::Event::Progress(progress_of(&plan))).await.is_err() {
                    break None;
                }
                last_sent = tokio::time::Instant::now();
            }
            () = tx.closed() => break None,
        }
    };
    if let Some(e) = ended {
        let _ = send(&tx, proto::watch_profile_response::Event::Progress(progress_of(&plan))).await;
        let _ = tx.send(Err(Status::from(e))).await;
    }
    metrics::gauge!("omnifold_watchers").decrement(1.0);
}

/// Sends every change held after the plan's cursors; returns how many.
async fn step(state: &AppState, changes: &Changes, plan: &mut Plan, tx: &Out) -> Result<usize, Error> {
    let mut sent = 0;
    for (p, w) in plan.partitions.iter_mut() {
        if let Err(e) = here(state, *p) {
            return Err(Error::Unavailable(format!(
                "partition {p} is no longer folded by this instance ({e}); watch again with resume_from, on any \
                 instance"
            )));
        }
        loop {
            let (taken, next) = changes.take(*p, w.cursor).map_err(|from| too_old(*p, w.cursor, from))?;
            let more = !taken.is_empty() && next != w.cursor;
            for c in taken {
                if !wanted(w, &c) {
                    continue;
                }
                if let Some(msg) = change_message(state, *p, &c, &plan.mask) {
                    send(tx, proto::watch_profile_response::Event::Change(msg)).await?;
                    sent += 1;
                }
            }
            w.cursor = next;
            if !more {
                break;
            }
        }
    }
    Ok(sent)
}

/// Whether the watch wants `c`, marking it sent.
fn wanted(w: &mut Watched, c: &Change) -> bool {
    let Some(members) = w.members.as_mut() else { return true };
    match members.get_mut(&c.key) {
        Some(seen) if c.next_offset > *seen => {
            *seen = c.next_offset;
            true
        }
        _ => false,
    }
}

/// The message of a change as the watch's caller may see it; none for a
/// profile the caller may not see (a purpose it was not granted).
fn change_message(state: &AppState, p: u32, c: &Change, mask: &ReadMask) -> Option<proto::ProfileChange> {
    let caller = auth::caller();
    let version = Some(proto::WatchCursor { partition: p, next_offset: c.next_offset });
    let transitions = || c.audiences.iter().map(crate::convert::transition).collect();
    // A deleted record was a provisional or anonymous profile's.
    let anonymous = c.member.as_ref().is_none_or(|m| m.kind != omnifold_core::member::ProfileKind::KnownMember);
    let removed = |routes_to: String| proto::ProfileChange {
        member_id: if caller.may(crate::Scope::ProfilePii) {
            c.key.clone()
        } else {
            privacy::mask_key(&c.key, anonymous)
        },
        version,
        removed: true,
        routes_to,
        audience_transitions: transitions(),
        ..Default::default()
    };
    match c.member.as_deref() {
        None => Some(removed(String::new())),
        Some(m) if m.erased_at.is_some() => Some(removed(String::new())),
        Some(m) if m.routes_to.is_some() => Some(removed(m.routes_to.clone().unwrap_or_default())),
        Some(m) if !services::visible(m) => None,
        Some(m) => {
            let profile = services::profile_for(state, m, now_millis(), mask);
            Some(proto::ProfileChange {
                member_id: profile.member_id.clone(),
                version,
                profile: Some(profile),
                audience_transitions: transitions(),
                ..Default::default()
            })
        }
    }
}

fn progress_of(plan: &Plan) -> proto::WatchProgress {
    proto::WatchProgress {
        cursors: plan
            .partitions
            .iter()
            .map(|(p, w)| proto::WatchCursor { partition: *p, next_offset: w.cursor })
            .collect(),
    }
}

async fn send(tx: &Out, event: proto::watch_profile_response::Event) -> Result<(), Error> {
    tx.send(Ok(proto::WatchProfileResponse { event: Some(event) })).await.map_err(|_| Error::Gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, next_offset: i64) -> Change {
        Change { key: key.into(), next_offset, member: None, audiences: Vec::new() }
    }

    #[test]
    fn a_window_holds_every_change_after_its_start_and_says_when_a_cursor_is_older() {
        let changes = Changes::new(3 * weight(&change("a", 0)), 10, DEFAULT_WATCH_PROGRESS);
        changes.publish(0, 0, 2, Some(vec![change("a", 1), change("b", 2)]));
        changes.publish(0, 2, 4, Some(vec![change("a", 4)]));
        let (taken, next) = changes.take(0, 0).expect("all held");
        assert_eq!(
            taken.iter().map(|c| (c.key.as_str(), c.next_offset)).collect::<Vec<_>>(),
            [("a", 1), ("b", 2), ("a", 4)]
        );
        assert_eq!(next, 4);
        // A fourth change evicts the oldest: a cursor before it is too old.
        changes.publish(0, 4, 5, Some(vec![change("c", 5)]));
        assert_eq!(changes.take(0, 0).map(|_| ()), Err(1));
        let (taken, next) = changes.take(0, 1).expect("held from 1");
        assert_eq!(taken.len(), 3);
        assert_eq!(next, 5);
        // Nothing after the latest: the cursor stays where the fold is.
        assert_eq!(changes.take(0, 5).map(|(t, n)| (t.len(), n)), Ok((0, 5)));
    }

    #[test]
    fn a_batch_that_does_not_follow_the_last_one_starts_the_window_over() {
        let changes = Changes::new(1 << 20, 10, DEFAULT_WATCH_PROGRESS);
        changes.publish(3, 0, 2, Some(vec![change("a", 2)]));
        // Offsets 2..10 were folded elsewhere: changes before 10 are not here.
        changes.publish(3, 10, 12, Some(vec![change("b", 11)]));
        assert_eq!(changes.take(3, 2).map(|_| ()), Err(10));
        let (taken, next) = changes.take(3, 10).expect("held from 10");
        assert_eq!(taken.len(), 1);
        assert_eq!(next, 12);
    }

    #[test]
    fn a_window_keeps_each_partitions_latest_change_however_small_its_budget() {
        let changes = Changes::new(0, 10, DEFAULT_WATCH_PROGRESS);
        changes.publish(0, 0, 1, Some(vec![change("a", 1)]));
        changes.publish(1, 0, 1, Some(vec![change("b", 1)]));
        assert_eq!(changes.take(0, 0).map(|(t, _)| t.len()), Ok(1));
        assert_eq!(changes.take(1, 0).map(|(t, _)| t.len()), Ok(1));
    }

    #[test]
    fn changes_are_kept_while_a_partition_is_watched_and_a_while_after() {
        let changes = Changes::new(1 << 20, 10, DEFAULT_WATCH_PROGRESS);
        assert!(!changes.wants(0), "nobody ever watched");
        let watching = changes.watch(0);
        assert!(changes.wants(0) && !changes.wants(1));
        drop(watching);
        assert!(changes.wants(0), "kept a while after the last watch ends");
        // A batch not taken: the window starts again after it.
        changes.publish(0, 0, 1, Some(vec![change("a", 1)]));
        changes.publish(0, 1, 3, None);
        assert_eq!(changes.take(0, 0).map(|_| ()), Err(3));
        assert_eq!(changes.take(0, 3).map(|(t, n)| (t.len(), n)), Ok((0, 3)));
    }

    #[test]
    fn changes_of_one_event_are_taken_together() {
        let changes = Changes::new(1 << 30, 10, DEFAULT_WATCH_PROGRESS);
        let mut batch: Vec<Change> = (1..TAKE as i64).map(|i| change(&format!("k{i}"), i)).collect();
        batch.push(change("from", TAKE as i64));
        batch.push(change("into", TAKE as i64));
        changes.publish(0, 0, TAKE as i64 + 1, Some(batch));
        let (taken, next) = changes.take(0, 0).expect("held");
        assert_eq!(taken.len(), TAKE + 1);
        assert_eq!(next, TAKE as i64 + 1);
    }
}
