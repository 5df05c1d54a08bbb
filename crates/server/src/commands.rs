//! Commands through the log: a redemption or an adjustment becomes an event
//! keyed by the member and appended to the events topic. The fold, single
//! threaded per partition, decides it; the answer is that verdict, read from
//! the store once the partition's commit lands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_128;

use omnifold_core::loyalty::CommandKind;
use omnifold_core::time::to_timestamp;
use omnifold_core::{Channel, Verdict};
use omnifold_proto::v1 as proto;

use crate::{AppState, Error, now_millis};

/// Where commands are appended: the events topic, partitioned by murmur2 of
/// the key like every other producer.
#[tonic::async_trait]
pub trait CommandLog: Send + Sync + 'static {
    /// Appends one record and returns once the broker has acknowledged it.
    async fn append(&self, key: &str, value: Vec<u8>) -> Result<(), String>;

    /// Appends one event no one waits on (the HTTP collector's); by
    /// default as a command.
    async fn append_event(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.append(key, value).await
    }

    /// Appends one record only omnifold may write (signed) to `partition`,
    /// and returns its offset once the broker has acknowledged it.
    async fn append_internal(&self, partition: u32, key: &str, value: Vec<u8>) -> Result<i64, String>;
}

/// Commit counters per partition: a request waiting for a verdict is woken
/// by the commits of its member's partition, not by every commit of the
/// instance.
#[derive(Clone, Default)]
pub struct Commits(Arc<Mutex<HashMap<u32, watch::Sender<u64>>>>);

impl Commits {
    /// Called after each commit of `partition` (the fold's commit hook).
    pub fn committed(&self, partition: u32) {
        self.sender(partition).send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes with every later commit of `partition`.
    pub fn subscribe(&self, partition: u32) -> watch::Receiver<u64> {
        self.sender(partition).subscribe()
    }

    fn sender(&self, partition: u32) -> watch::Sender<u64> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(partition).or_insert_with(|| watch::channel(0).0).clone()
    }
}

/// A waiting request also looks at the store this often: a member that
/// joined another just now has its command decided on that one's partition.
const RECHECK: Duration = Duration::from_millis(100);

/// What an instance needs to accept commands.
#[derive(Clone)]
pub struct Commands {
    pub log: Arc<dyn CommandLog>,
    /// Commits of the fold on this instance, per partition.
    pub commits: Commits,
    /// How long a request waits for its verdict before answering IN_PROGRESS.
    pub timeout: Duration,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// A command ready to append.
pub(crate) struct Command {
    pub member: String,
    pub request_id: String,
    pub kind: CommandKind,
    pub points: i64,
    pub channel: Channel,
    pub payload: proto::event::Payload,
}

impl Command {
    /// Deterministic per (member, request id), so a retried append is also
    /// dropped by the event-id dedupe.
    pub fn event_id(&self) -> String {
        let prefix = match self.kind {
            CommandKind::Redeem => "redeem",
            CommandKind::Adjust => "adjust",
            CommandKind::Erase => "erase",
        };
        let h = xxh3_128(format!("{}\0{}", self.member, self.request_id).as_bytes());
        format!("{prefix}-{h:032x}")
    }

    pub(crate) fn event(&self) -> proto::Event {
        proto::Event {
            event_id: self.event_id(),
            occurred_at: Some(to_timestamp(now_millis())),
            channel: self.channel.to_proto() as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { member_id: self.member.clone(), ..Default::default() }),
            payload: Some(self.payload.clone()),
        }
    }

    /// A verdict recorded for this request id must be for the same command.
    fn check(&self, v: Verdict) -> Result<Verdict, Error> {
        if v.kind != self.kind || v.points != self.points {
            let what = match v.kind {
                CommandKind::Redeem => format!("a redemption of {} points", v.points),
                CommandKind::Adjust => format!("an adjustment of {} points", v.points),
                CommandKind::Erase => "an erasure".to_owned(),
            };
            return Err(Error::InvalidArgument(format!(
                "request_id `{}` was already used for {what}; use a new request_id for a new request",
                self.request_id
            )));
        }
        Ok(v)
    }
}

pub(crate) enum Outcome<T = Verdict> {
    Decided(T),
    /// The deadline passed first; the request is in the log and will be decided.
    InProgress,
}

/// Appends `cmd` unless it was already decided, then waits for the verdict.
pub(crate) async fn submit(state: &AppState, cmd: &Command) -> Result<Outcome, Error> {
    let partition = state.partition(&cmd.member)?;
    let decided = || -> Result<Option<Verdict>, Error> {
        let got = state.store().verdicts(partition, &[(&cmd.member, &cmd.request_id)])?;
        got.into_iter().next().flatten().map(|v| cmd.check(v)).transpose()
    };
    append_and_wait(state, &cmd.member, cmd.event(), decided).await
}

/// The outcome already in the store, or: append `event` keyed by `key` and
/// re-check after each commit of the fold until `outcome` answers or the
/// deadline passes.
pub(crate) async fn append_and_wait<T>(
    state: &AppState,
    key: &str,
    event: proto::Event,
    outcome: impl Fn() -> Result<Option<T>, Error>,
) -> Result<Outcome<T>, Error> {
    let commands = state
        .commands
        .as_ref()
        .ok_or_else(|| Error::Unavailable("this instance does not accept commands (no producer configured)".into()))?;
    if let Some(v) = outcome()? {
        return Ok(Outcome::Decided(v));
    }
    // The log is the arbiter: with no broker, nothing can be decided.
    if let Some(since) = state.ingest.as_ref().and_then(|i| i.broker_down_since()) {
        return Err(Error::Unavailable(format!(
            "the event log (Kafka) has been unreachable since {}; the request was not sent. Retry with the same \
             request_id",
            omnifold_core::time::rfc3339(since)
        )));
    }
    // One deadline covers the append and the wait.
    let deadline = Instant::now() + commands.timeout;
    let mut commits = commands.commits.subscribe(state.partition(key)?);
    match tokio::time::timeout_at(deadline, commands.log.append(key, event.encode_to_vec())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Error::Unavailable(format!(
                "could not append the request to the log ({e}); retry with the same request_id"
            )));
        }
        // It may or may not be in the log: asking again is safe either way.
        Err(_) => return Ok(Outcome::InProgress),
    }
    wait_for(&mut commits, deadline, outcome).await
}

/// Waits until `outcome` has an answer, looking again at each commit of
/// the partition `commits` follows (and every `RECHECK`), until `deadline`.
pub(crate) async fn wait_for<T>(
    commits: &mut watch::Receiver<u64>,
    deadline: Instant,
    outcome: impl Fn() -> Result<Option<T>, Error>,
) -> Result<Outcome<T>, Error> {
    loop {
        if let Some(v) = outcome()? {
            return Ok(Outcome::Decided(v));
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::InProgress);
        }
        let recheck = deadline.min(Instant::now() + RECHECK);
        if let Ok(Ok(())) = tokio::time::timeout_at(recheck, commits.changed()).await {
            commits.borrow_and_update();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(member: &str, request_id: &str) -> Command {
        Command {
            member: member.into(),
            request_id: request_id.into(),
            kind: CommandKind::Redeem,
            points: 10,
            channel: Channel::MobileApp,
            payload: proto::event::Payload::PointsRedemptionRequested(Default::default()),
        }
    }

    /// A log that only counts appends: no fold runs behind it.
    #[derive(Default)]
    struct CountingLog(std::sync::Mutex<Vec<String>>);

    #[tonic::async_trait]
    impl CommandLog for CountingLog {
        async fn append_internal(&self, _partition: u32, key: &str, value: Vec<u8>) -> Result<i64, String> {
            self.append(key, value).await.map(|()| 0)
        }

        async fn append(&self, key: &str, _value: Vec<u8>) -> Result<(), String> {
            self.0.lock().unwrap().push(key.to_owned());
            Ok(())
        }
    }

    #[tokio::test]
    async fn waits_until_the_deadline_then_answers_from_the_store_without_appending_again() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            omnifold_store::Store::open(&omnifold_store::StoreConfig { path: dir.path().into(), ..Default::default() })
                .unwrap();
        store.bind_partitions("events", 1).unwrap();
        let log = Arc::new(CountingLog::default());
        let commits = Commits::default();
        let fold = Arc::new(omnifold_core::FoldConfig::default().validate().unwrap());
        let state = AppState::new(omnifold_store::StoreHandle::new(store.clone()), "events", fold)
            .with_commands(Commands { log: log.clone(), commits: commits.clone(), timeout: Duration::from_millis(50) });
        let c = cmd("m-1", "r-1");
        assert!(matches!(submit(&state, &c).await.unwrap(), Outcome::InProgress));
        assert_eq!(log.0.lock().unwrap().len(), 1);

        // The fold decides it and commits; the next call reads the verdict.
        let verdict = Verdict {
            request_id: "r-1".into(),
            kind: CommandKind::Redeem,
            status: omnifold_core::loyalty::VerdictStatus::Accepted,
            points: 10,
            reason: String::new(),
            event_id: c.event_id(),
            at: 0,
            seq: Some(3),
        };
        let mut batch = store.batch("events", 0);
        batch.put_verdict(&store, "m-1", &verdict);
        store.commit(batch).unwrap();
        commits.committed(0);
        match submit(&state, &c).await.unwrap() {
            Outcome::Decided(v) => assert_eq!(v, verdict),
            Outcome::InProgress => panic!("the verdict is in the store"),
        }
        assert_eq!(log.0.lock().unwrap().len(), 1, "a decided request is not appended again");
        // The same request id with other points is refused.
        let other = Command { points: 11, ..cmd("m-1", "r-1") };
        let err = submit(&state, &other).await.err().unwrap().to_string();
        assert!(err.contains("already used for a redemption of 10 points"), "{err}");
    }

    #[test]
    fn a_waiter_is_woken_by_its_own_partitions_commits_only() {
        let commits = Commits::default();
        let mut one = commits.subscribe(1);
        commits.committed(0);
        commits.committed(2);
        assert!(!one.has_changed().unwrap(), "commits of other partitions leave it asleep");
        commits.committed(1);
        assert!(one.has_changed().unwrap());
        one.borrow_and_update();
        // A subscription taken after a commit starts from it.
        let late = commits.subscribe(1);
        assert!(!late.has_changed().unwrap());
    }

    #[test]
    fn event_ids_are_stable_per_member_and_request() {
        assert_eq!(cmd("m-1", "r-1").event_id(), cmd("m-1", "r-1").event_id());
        assert_ne!(cmd("m-1", "r-1").event_id(), cmd("m-2", "r-1").event_id());
        assert_ne!(cmd("m-1", "r-1").event_id(), cmd("m-1", "r-2").event_id());
        assert!(cmd("m-1", "r-1").event_id().len() <= omnifold_core::event::MAX_EVENT_ID_LEN);
    }
}
