//! Which instance answers a request: this one, when it owns the member's
//! partition and has folded far enough; else the owner, reached by
//! forwarding the request (or named in a redirect, as configured). A
//! partition that is moving answers a retryable status with a hint, never
//! a stale profile (docs/scale-out.md).
//!
//! The ownership table lives in ingest; the server sees it through
//! [`Owners`], which the binary implements, so this crate needs no Kafka
//! client. Instances reach each other with tonic clients on the
//! advertised addresses.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::Error;

/// A request may ask for at least this applied offset of its member's
/// partition (an offset an earlier answer carried: read your writes).
pub const MIN_OFFSET: &str = "omnifold-min-offset";
/// Set on a forwarded request: the instance that forwarded it. Such a
/// request is never forwarded again.
pub const FORWARDED_BY: &str = "omnifold-forwarded-by";
/// On answers: the member's partition, how far its fold had read, the
/// owner's epoch and name.
pub const PARTITION: &str = "omnifold-partition";
pub const APPLIED_OFFSET: &str = "omnifold-applied-offset";
pub const EPOCH: &str = "omnifold-epoch";
pub const SERVED_BY: &str = "omnifold-served-by";
/// On a redirect or a moving partition: the owner's address (when known)
/// and when to ask again.
pub const OWNER: &str = "omnifold-owner";
pub const RETRY_AFTER_MS: &str = "omnifold-retry-after-ms";
/// A read may be answered from a standby's warm copy when the request says
/// `true`; such an answer says how many records the copy is behind its
/// partition's end (-1: not known).
pub const READ_STANDBY: &str = "omnifold-read-standby";
pub const STANDBY_LAG: &str = "omnifold-standby-lag";

/// How long a request waits for its partition to fold up to the offset it
/// asked for before answering UNAVAILABLE.
const MIN_OFFSET_WAIT: Duration = Duration::from_secs(2);
/// A forwarded request's deadline when the caller set none.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// When to ask again about a partition that is moving.
const RETRY_MOVING_MS: u64 = 500;

/// Where a partition is answered, as this instance knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Here, folded up to `applied`.
    Here { epoch: u64, applied: i64 },
    /// By another instance, at `address`.
    There { instance: String, address: String, epoch: u64, applied: i64 },
    /// Moving: the new owner (when known) is catching up.
    Moving {
        instance: Option<String>,
        address: Option<String>,
        epoch: u64,
        applied: i64,
        target: Option<i64>,
        /// When the new owner will answer, at the rate it folds.
        eta_ms: Option<u64>,
    },
    /// Nobody has claimed it yet.
    Unknown,
}

/// This instance's warm copy of a partition another instance owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyCopy {
    /// The next offset the copy has folded to.
    pub applied: i64,
    /// The partition's end as its owner last said.
    pub end: Option<i64>,
}

impl StandbyCopy {
    /// Records behind the partition's end; -1 when the end is not known.
    pub fn lag(&self) -> i64 {
        lag_behind(self.end, self.applied)
    }
}

/// Records a copy folded to `applied` is behind a partition's `end`; -1
/// when the end is not known.
pub(crate) fn lag_behind(end: Option<i64>, applied: i64) -> i64 {
    end.map_or(-1, |end| (end - applied).max(0))
}

/// One partition's latest claim, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerClaim {
    pub instance: String,
    pub address: String,
    pub epoch: u64,
    pub applied: i64,
    /// "catching_up", "serving" or "released".
    pub state: String,
    pub at_ms: i64,
    /// The partition's end as the owner last saw it.
    pub end: Option<i64>,
    /// The latest snapshot the owner knows of: next offset and when taken (Unix ms).
    pub snapshot: Option<(i64, i64)>,
}

/// The ownership table, as the server reads it (the binary implements it
/// with the ingest crate's).
pub trait Owners: std::fmt::Debug + Send + Sync + 'static {
    fn owner(&self, partition: u32) -> Owner;
    /// This instance's name.
    fn instance(&self) -> &str;
    fn claims(&self) -> BTreeMap<u32, OwnerClaim>;
    /// This instance's warm copy of `partition`, if it keeps one.
    fn standby(&self, _partition: u32) -> Option<StandbyCopy> {
        None
    }
    /// Every instance keeping a warm copy of `partition`, with the next
    /// offset each has folded to.
    fn standbys(&self, _partition: u32) -> Vec<(String, i64)> {
        Vec::new()
    }
}

/// What a request for a member owned elsewhere gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Forwarded to the owner, whose answer is returned.
    #[default]
    Forward,
    /// Answered FAILED_PRECONDITION with the owner's address in
    /// `omnifold-owner`, for clients that route themselves.
    Redirect,
}

/// Routing for an instance that shares its partitions with others.
#[derive(Debug, Clone)]
pub struct Routing {
    pub owners: Arc<dyn Owners>,
    pub mode: Mode,
    peers: Arc<Peers>,
    /// This instance's name as a header value, made once.
    served_by: Option<MetadataValue<Ascii>>,
}

impl Routing {
    pub fn new(owners: Arc<dyn Owners>, mode: Mode) -> Routing {
        let served_by = MetadataValue::try_from(owners.instance()).ok();
        Routing { owners, mode, peers: Arc::default(), served_by }
    }

    /// Forwards to `https://` peers with this TLS configuration (their CA,
    /// and this instance's certificate for mutual TLS).
    pub fn with_peer_tls(mut self, tls: Option<&crate::Tls>) -> Routing {
        self.peers = Arc::new(Peers { channels: Mutex::default(), tls: tls.and_then(|t| t.peers.clone()) });
        self
    }
}

/// Channels to the other instances, by address, made once and reused.
#[derive(Debug, Default)]
struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    /// For `https://` peers.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Peers {
    fn channel(&self, address: &str) -> Result<Channel, Error> {
        let mut peers = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = peers.get(address) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|e| Error::Unavailable(format!("the owner's address `{address}` is not a URL: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2));
        if address.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| {
                Error::Unavailable(format!(
                    "the owner at {address} speaks TLS, and this instance has no CA to check it with: set \
                     server.tls.ca"
                ))
            })?;
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect_lazy();
        peers.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Why a request is not answered here, with the hint a client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elsewhere {
    /// A redirect (FAILED_PRECONDITION) rather than a retry (UNAVAILABLE).
    pub redirect: bool,
    pub message: String,
    /// The owner's address, when known.
    pub owner: Option<String>,
    pub retry_after_ms: u64,
}

impl Elsewhere {
    pub(crate) fn into_status(self) -> Status {
        let mut meta = MetadataMap::new();
        if let Some(v) = self.owner.as_deref().and_then(|o| MetadataValue::try_from(o).ok()) {
            meta.insert(OWNER, v);
        }
        meta.insert(RETRY_AFTER_MS, MetadataValue::from(self.retry_after_ms));
        let code = if self.redirect { tonic::Code::FailedPrecondition } else { tonic::Code::Unavailable };
        Status::with_metadata(code, self.message, meta)
    }
}

/// What a request brings about routing, from its metadata.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hop {
    min_offset: Option<i64>,
    /// The caller accepts an answer from a standby's warm copy.
    standby: bool,
    forwarded_by: Option<String>,
    timeout: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// The caller's credentials: a forwarded request carries them, so the
    /// owner authenticates the caller and checks its scopes itself.
    credentials: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Hop {
    pub(crate) fn of(meta: &MetadataMap) -> Result<Hop, Error> {
        let min_offset = match meta.get(MIN_OFFSET) {
            None => None,
            Some(v) => {
                Some(v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|n| *n >= 0).ok_or_else(
                    || Error::InvalidArgument(format!("{MIN_OFFSET} must be an offset (a whole number, 0 or more)")),
                )?)
            }
        };
        let standby = match meta.get(READ_STANDBY).map(|v| v.to_str().map(str::trim)) {
            None | Some(Ok("false")) => false,
            Some(Ok("true")) => true,
            Some(_) => return Err(Error::InvalidArgument(format!("{READ_STANDBY} must be true or false"))),
        };
        let forwarded_by = meta.get(FORWARDED_BY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Hop {
            min_offset,
            standby,
            forwarded_by,
            timeout: meta.get("grpc-timeout").cloned(),
            credentials: meta.get("authorization").cloned(),
        })
    }

    /// Whether the caller accepts an answer from a standby's warm copy.
    pub(crate) fn standby(&self) -> bool {
        self.standby
    }

    /// The same hop for a write (a redemption, an adjustment, a merge): only
    /// the owner decides those, whatever the caller accepts for reads.
    pub(crate) fn for_write(&self) -> Hop {
        Hop { standby: false, ..self.clone() }
    }

    /// The same hop without a minimum offset (a batch's members are on
    /// several partitions).
    pub(crate) fn without_min_offset(&self) -> Hop {
        Hop { min_offset: None, ..self.clone() }
    }

    /// This hop's metadata on a request forwarded by `instance`.
    fn stamp<T>(&self, req: &mut Request<T>, instance: &str) {
        let meta = req.metadata_mut();
        if let Some(m) = self.min_offset {
            meta.insert(MIN_OFFSET, MetadataValue::from(m));
        }
        if self.standby {
            meta.insert(READ_STANDBY, MetadataValue::from_static("true"));
        }
        if let Ok(v) = MetadataValue::try_from(instance) {
            meta.insert(FORWARDED_BY, v);
        }
        if let Some(c) = &self.credentials {
            meta.insert("authorization", c.clone());
        }
        match &self.timeout {
            Some(t) => {
                meta.insert("grpc-timeout", t.clone());
            }
            None => req.set_timeout(FORWARD_TIMEOUT),
        }
    }
}

/// A request answered here, and what its answer says about the partition.
#[derive(Debug, Clone, Default)]
pub(crate) struct Served {
    /// Unset on an instance without routing (one instance, or a test).
    at: Option<At>,
}

/// The partition a request was answered for, as its answer reports it.
#[derive(Debug, Clone)]
struct At {
    partition: u32,
    epoch: u64,
    applied: i64,
    served_by: Option<MetadataValue<Ascii>>,
    /// Answered from a standby's warm copy this many records behind.
    standby_lag: Option<i64>,
}

impl Served {
    /// `msg` with the partition, applied offset, epoch and instance.
    pub(crate) fn respond<T>(&self, msg: T) -> Response<T> {
        let mut r = Response::new(msg);
        if let Some(at) = &self.at {
            let meta = r.metadata_mut();
            meta.insert(PARTITION, MetadataValue::from(at.partition));
            meta.insert(APPLIED_OFFSET, MetadataValue::from(at.applied));
            meta.insert(EPOCH, MetadataValue::from(at.epoch));
            if let Some(v) = &at.served_by {
                meta.insert(SERVED_BY, v.clone());
            }
            if let Some(lag) = at.standby_lag {
                meta.insert(STANDBY_LAG, MetadataValue::from(lag));
            }
        }
        r
    }

    /// Answered from a standby's warm copy: how far behind, -1 not known.
    pub(crate) fn standby_lag(&self) -> Option<i64> {
        self.at.as_ref().and_then(|a| a.standby_lag)
    }

    /// The state to read with: one that accepts the standby copy when the
    /// route chose it.
    pub(crate) fn on<'a>(&self, app: &'a crate::AppState) -> std::borrow::Cow<'a, crate::AppState> {
        app.reading(self.standby_lag().is_some())
    }

    /// The applied offset, when known.
    pub(crate) fn applied(&self) -> i64 {
        self.at.as_ref().map_or(0, |a| a.applied)
    }
}

/// How a request came to a partition not answered here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Why<'a> {
    /// Asked directly (with `server.routing = "redirect"`).
    Asked,
    /// Forwarded by the named instance.
    Forwarded(&'a str),
    /// It was answered here when the request was routed, and is no longer.
    Changed,
}

/// Where a request goes.
pub(crate) enum Route {
    Here(Served),
    There(Forward),
}

/// A request to send to the owner.
pub(crate) struct Forward {
    routing: Routing,
    partition: u32,
    address: String,
    hop: Hop,
}

impl Routing {
    /// Where a request for a member of `partition` goes. Waits (briefly)
    /// for this instance to fold up to the offset the request asks for.
    pub(crate) async fn route(
        &self,
        partition: u32,
        hop: &Hop,
        commits: Option<&crate::Commits>,
    ) -> Result<Route, Error> {
        // Subscribed only when a request waits for an offset: it takes a
        // lock, and most requests name none.
        let mut changed = None;
        let deadline = tokio::time::Instant::now() + MIN_OFFSET_WAIT;
        loop {
            let owner = self.owners.owner(partition);
            if let Some(served) = self.standby_answer(partition, &owner, hop) {
                return Ok(Route::Here(served));
            }
            match owner {
                Owner::Here { epoch, applied } if hop.min_offset.is_none_or(|m| applied >= m) => {
                    let at = At { partition, epoch, applied, served_by: self.served_by.clone(), standby_lag: None };
                    return Ok(Route::Here(Served { at: Some(at) }));
                }
                Owner::Here { applied, .. } => {
                    if changed.is_none()
                        && let Some(c) = commits
                    {
                        // Subscribed before looking again, so no commit
                        // between the look and the wait is missed.
                        changed = Some(c.subscribe(partition));
                        continue;
                    }
                    let waited = match changed.as_mut() {
                        Some(rx) => tokio::time::timeout_at(deadline, rx.changed()).await.is_ok_and(|r| r.is_ok()),
                        None => false,
                    };
                    if !waited {
                        return Err(behind(partition, applied, hop.min_offset.unwrap_or_default()));
                    }
                }
                Owner::There { address, .. } if hop.forwarded_by.is_none() && self.mode == Mode::Forward => {
                    let routing = self.clone();
                    return Ok(Route::There(Forward { routing, partition, address, hop: hop.clone() }));
                }
                other => {
                    let why = hop.forwarded_by.as_deref().map_or(Why::Asked, Why::Forwarded);
                    return Err(self.not_here(partition, &other, why));
                }
            }
        }
    }

    /// A read the caller lets a standby answer, of a partition another
    /// instance owns and this one keeps a warm copy of that is as far as
    /// the request asks.
    fn standby_answer(&self, partition: u32, owner: &Owner, hop: &Hop) -> Option<Served> {
        if !hop.standby || matches!(owner, Owner::Here { .. }) {
            return None;
        }
        let copy = self.owners.standby(partition).filter(|c| hop.min_offset.is_none_or(|m| c.applied >= m))?;
        let epoch = match owner {
            Owner::There { epoch, .. } | Owner::Moving { epoch, .. } => *epoch,
            _ => 0,
        };
        let at = At {
            partition,
            epoch,
            applied: copy.applied,
            served_by: self.served_by.clone(),
            standby_lag: Some(copy.lag()),
        };
        Some(Served { at: Some(at) })
    }

    /// Why `partition` is not answered here, as an error with a hint.
    pub(crate) fn not_here(&self, partition: u32, owner: &Owner, why: Why<'_>) -> Error {
        let e = match (owner, why) {
            (Owner::Here { .. }, _) | (Owner::There { .. }, Why::Changed) => Elsewhere {
                redirect: false,
                message: format!("partition {partition} changed owner during the request; retry"),
                owner: match owner {
                    Owner::There { address, .. } => Some(address.clone()),
                    _ => None,
                },
                retry_after_ms: 0,
            },
            (Owner::There { address, instance, .. }, Why::Asked) => Elsewhere {
                redirect: true,
                message: format!(
                    "the member's partition {partition} is answered by {instance} at {address}; send the request \
                     there (this instance redirects: server.routing = \"redirect\")"
                ),
                owner: Some(address.clone()),
                retry_after_ms: 0,
            },
            (Owner::There { address, instance, .. }, Why::Forwarded(by)) => Elsewhere {
                redirect: false,
                message: format!(
                    "partition {partition} is not answered here but by {instance} at {address}, and the request \
                     was already forwarded once (by {by}); retry shortly"
                ),
                owner: Some(address.clone()),
                retry_after_ms: RETRY_MOVING_MS,
            },
            (Owner::Moving { instance, address, applied, target, eta_ms, .. }, _) => Elsewhere {
                redirect: false,
                message: match (instance, target) {
                    (Some(i), Some(t)) => format!(
                        "partition {partition} is moving to {i}, which has folded up to offset {applied} of {t}{}; \
                         retry shortly",
                        eta_ms.map(|ms| format!(" (about {:.1} s left)", ms as f64 / 1_000.0)).unwrap_or_default()
                    ),
                    (Some(i), None) => format!("partition {partition} is moving to {i}; retry shortly"),
                    _ => format!("partition {partition} is moving between instances; retry shortly"),
                },
                owner: address.clone(),
                retry_after_ms: eta_ms.map_or(RETRY_MOVING_MS, |ms| ms.clamp(100, 30_000)),
            },
            (Owner::Unknown, _) => Elsewhere {
                redirect: false,
                message: format!("no instance has claimed partition {partition} yet; retry shortly"),
                owner: None,
                retry_after_ms: RETRY_MOVING_MS * 2,
            },
        };
        Error::Elsewhere(Box::new(e))
    }
}

impl Forward {
    /// The owner's address.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Sends `msg` to the owner with `call` and returns its answer with the
    /// owner's routing metadata.
    pub(crate) async fn send<Req, Resp, F, Fut>(self, msg: Req, call: F) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let to = self;
        let channel = to.routing.peers.channel(&to.address)?;
        let mut req = Request::new(msg);
        to.hop.stamp(&mut req, to.routing.owners.instance());
        metrics::counter!("omnifold_requests_forwarded_total").increment(1);
        crate::audit::mark_forwarded();
        match call(channel, req).await {
            Ok(resp) => {
                let (meta, msg, ext) = resp.into_parts();
                Ok(Response::from_parts(routing_only(&meta), msg, ext))
            }
            // The owner's own answers (including its hints) pass through;
            // a failure to reach it (a transport error, which tonic
            // reports with its cause attached) becomes a retryable hint.
            Err(s) if !unreachable(&s) => Err(s),
            Err(s) => Err(Elsewhere {
                redirect: false,
                message: format!(
                    "the owner of partition {} at {} did not answer ({}); retry shortly",
                    to.partition,
                    to.address,
                    s.message()
                ),
                owner: Some(to.address),
                retry_after_ms: RETRY_MOVING_MS,
            }
            .into_status()),
        }
    }
}

/// Whether a forwarded request failed to reach the owner, rather than
/// being answered by it.
fn unreachable(s: &Status) -> bool {
    use std::error::Error as _;
    s.metadata().get(RETRY_AFTER_MS).is_none() && (s.source().is_some() || s.code() == tonic::Code::Unavailable)
}

/// The routing entries of an owner's answer.
fn routing_only(meta: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in [PARTITION, APPLIED_OFFSET, EPOCH, SERVED_BY] {
        if let Some(v) = meta.get(key) {
            out.insert(key, v.clone());
        }
    }
    out
}

/// The request asks for more than this instance has folded yet.
fn behind(partition: u32, applied: i64, wanted: i64) -> Error {
    Error::Elsewhere(Box::new(Elsewhere {
        redirect: false,
        message: format!(
            "partition {partition} has folded up to offset {applied} here, and the request asks for at least \
             {wanted} ({MIN_OFFSET}); retry shortly"
        ),
        owner: None,
        retry_after_ms: RETRY_MOVING_MS,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Owner);

    impl Owners for Fixed {
        fn owner(&self, _: u32) -> Owner {
            self.0.clone()
        }
        fn instance(&self) -> &str {
            "me"
        }
        fn claims(&self) -> BTreeMap<u32, OwnerClaim> {
            BTreeMap::new()
        }
    }

    fn routing(owner: Owner, mode: Mode) -> Routing {
        Routing::new(Arc::new(Fixed(owner)), mode)
    }

    fn hop(pairs: &[(&'static str, &str)]) -> Result<Hop, Error> {
        let mut meta = MetadataMap::new();
        for (k, v) in pairs {
            meta.insert(*k, MetadataValue::try_from(*v).unwrap());
        }
        Hop::of(&meta)
    }

    fn elsewhere(r: Result<Route, Error>) -> Elsewhere {
        match r {
            Err(Error::Elsewhere(e)) => *e,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("routed"),
        }
    }

    #[tokio::test]
    async fn here_answers_with_its_offset_and_there_is_forwarded_once() {
        let here = routing(Owner::Here { epoch: 3, applied: 42 }, Mode::Forward);
        let Ok(Route::Here(s)) = here.route(7, &Hop::default(), None).await else { panic!("not here") };
        let meta = s.respond(()).metadata().clone();
        assert_eq!(meta.get(APPLIED_OFFSET).unwrap(), "42");
        assert_eq!(meta.get(PARTITION).unwrap(), "7");
        assert_eq!(meta.get(EPOCH).unwrap(), "3");

        let there = Owner::There { instance: "b".into(), address: "http://b:1".into(), epoch: 3, applied: 9 };
        let forward = routing(there.clone(), Mode::Forward);
        assert!(
            matches!(forward.route(7, &Hop::default(), None).await, Ok(Route::There(f)) if f.address == "http://b:1")
        );
        let again = elsewhere(forward.route(7, &hop(&[(FORWARDED_BY, "c")]).unwrap(), None).await);
        assert!(!again.redirect && again.retry_after_ms > 0, "a forwarded request is not forwarded again");

        let redirect = elsewhere(routing(there, Mode::Redirect).route(7, &Hop::default(), None).await);
        assert!(redirect.redirect);
        assert_eq!(redirect.owner.as_deref(), Some("http://b:1"));
        let status = redirect.into_status();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.metadata().get(OWNER).unwrap(), "http://b:1");
    }

    #[tokio::test]
    async fn a_moving_partition_answers_unavailable_with_a_hint() {
        let moving = Owner::Moving {
            instance: Some("b".into()),
            address: Some("http://b:1".into()),
            epoch: 4,
            applied: 10,
            target: Some(20),
            eta_ms: Some(1_500),
        };
        let e = elsewhere(routing(moving, Mode::Forward).route(1, &Hop::default(), None).await);
        assert!(e.message.contains("10 of 20 (about 1.5 s left)"), "{}", e.message);
        let status = e.into_status();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(RETRY_AFTER_MS).unwrap(), "1500", "ask again when it should answer");
        let unknown = elsewhere(routing(Owner::Unknown, Mode::Forward).route(1, &Hop::default(), None).await);
        assert!(unknown.message.contains("no instance has claimed partition 1"));
    }

    /// An owner whose fold moves on.
    #[derive(Debug, Default)]
    struct Folding(std::sync::atomic::AtomicI64);

    impl Owners for Folding {
        fn owner(&self, _: u32) -> Owner {
            Owner::Here { epoch: 1, applied: self.0.load(std::sync::atomic::Ordering::SeqCst) }
        }
        fn instance(&self) -> &str {
            "me"
        }
        fn claims(&self) -> BTreeMap<u32, OwnerClaim> {
            BTreeMap::new()
        }
    }

    #[tokio::test]
    async fn a_request_for_a_later_offset_waits_for_the_commit_that_reaches_it() {
        let folding = Arc::new(Folding::default());
        folding.0.store(5, std::sync::atomic::Ordering::SeqCst);
        let r = Routing::new(folding.clone(), Mode::Forward);
        let e = elsewhere(r.route(0, &hop(&[(MIN_OFFSET, "6")]).unwrap(), None).await);
        assert!(e.message.contains("at least 6"), "without commits to wait on: {}", e.message);
        assert!(matches!(r.route(0, &hop(&[(MIN_OFFSET, "5")]).unwrap(), None).await, Ok(Route::Here(_))));

        let commits = crate::Commits::default();
        let wanted = hop(&[(MIN_OFFSET, "7")]).unwrap();
        let waiting = {
            let (r, commits) = (r.clone(), commits.clone());
            tokio::spawn(async move { r.route(0, &wanted, Some(&commits)).await.map(|r| matches!(r, Route::Here(_))) })
        };
        // Commits that do not reach offset 7 leave it waiting; the one that does answers it.
        for applied in [6, 7] {
            tokio::task::yield_now().await;
            folding.0.store(applied, std::sync::atomic::Ordering::SeqCst);
            commits.committed(0);
        }
        assert!(waiting.await.unwrap().unwrap(), "answered here once folded to 7");

        assert!(matches!(hop(&[(MIN_OFFSET, "-1")]), Err(Error::InvalidArgument(m)) if m.contains(MIN_OFFSET)));
        assert!(matches!(hop(&[(MIN_OFFSET, "soon")]), Err(Error::InvalidArgument(_))));
    }
}
