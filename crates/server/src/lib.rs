//! The gRPC face of omnifold: `ProfileService`, `LoyaltyService`,
//! `AudienceService`, `AdminService`, `grpc.health.v1` and server reflection.
//!
//! Architecture invariant: generated protobuf types stay in this crate and
//! `omnifold-proto`; requests become validated domain values in `request.rs`,
//! and every error becomes a `tonic::Status` in one place (`From<Error>`).

pub mod audiences;
pub mod audit;
pub mod auth;
mod commands;
mod convert;
mod definitions;
mod erasure;
mod export;
mod fanout;
pub mod feed;
mod health;
pub mod http;
pub mod privacy;
mod request;
mod routing;
mod services;
mod telemetry;
mod tls;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::Status;

pub use auth::{AuthConfig, Authenticator, Caller, Scope};
pub use commands::{CommandLog, Commands, Commits};
pub use health::{DEFAULT_READY_MAX_LAG, IngestHealth, IngestReport, PartitionReport};
use omnifold_core::{FoldConfig, Member, Millis, partition::partition_for};
use omnifold_proto::v1::{
    admin_service_server::AdminServiceServer, audience_service_server::AudienceServiceServer,
    loyalty_service_server::LoyaltyServiceServer, profile_service_server::ProfileServiceServer,
};
use omnifold_store::{Store, StoreHandle};
pub use request::member_ref;
pub use routing::{Elsewhere, Mode as RoutingMode, Owner, OwnerClaim, Owners, Routing, StandbyCopy};
pub use tls::{Tls, TlsConfig};
pub use watch::{Changes, DEFAULT_MAX_WATCHERS, DEFAULT_WATCH_BUFFER_BYTES, DEFAULT_WATCH_PROGRESS};

/// The crate's one error type; `From<Error> for Status` is the only place
/// errors become gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A change made on a version that is no longer the current one.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The client of a stream went away (ends the stream's task; never an answer).
    #[error("the client went away")]
    Gone,
    /// Not answered here: another instance owns the member's partition,
    /// or it is moving.
    #[error("{}", .0.message)]
    Elsewhere(Box<Elsewhere>),
    #[error("{0}")]
    Internal(String),
    /// Authentication is misconfigured (at start; never a request's answer).
    #[error("auth: {0}")]
    Auth(String),
    /// TLS is misconfigured (at start).
    #[error("tls: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] omnifold_store::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Aborted(m) => Status::aborted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Unimplemented(m) => Status::unimplemented(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Gone => Status::cancelled("the client went away"),
            Error::Elsewhere(e) => e.into_status(),
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal(other.to_string())
            }
        }
    }
}

/// What the services read from, and where commands go.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The store reads come from; a switch replaces it while serving.
    pub stores: Arc<StoreHandle>,
    /// The events topic; member keys route to its partitions.
    pub topic: String,
    /// The fold's rules: program currency, loyalty program.
    pub fold: Arc<FoldConfig>,
    /// Absent on a read-only instance: redemptions and adjustments answer UNAVAILABLE.
    pub commands: Option<Commands>,
    /// Where `SwitchStore` hands a rebuilt store to the ingest loop.
    pub switcher: Option<Switcher>,
    /// What ingest reports about its health (absent: no ingest here).
    pub ingest: Option<Arc<dyn IngestHealth>>,
    /// Who owns each partition, and how requests reach the owner (absent:
    /// this instance answers from its store for every partition).
    pub routing: Option<Routing>,
    /// Where `TakeSnapshot` goes (absent: snapshots are off).
    pub snapshots: Option<Arc<dyn SnapshotTaker>>,
    /// What the fold committed here, for `WatchProfile` (absent: nothing
    /// is folded here to watch).
    pub changes: Option<watch::Changes>,
    /// Where admin and loyalty-write calls are recorded (absent: not recorded).
    pub audit: Option<Arc<dyn audit::AuditLog>>,
    /// Which traits are plain or sensitive, and the consent sensitive data needs.
    pub privacy: Arc<privacy::PrivacyConfig>,
    /// The configured audiences, shown in profiles (docs/audiences.md).
    pub audiences: Arc<omnifold_core::audience::Audiences>,
    /// The open `ListAudienceMembers` listings.
    listings: Arc<audiences::Listings>,
    /// TLS on the gRPC port (absent: plain text).
    pub(crate) tls: Option<Tls>,
    /// The largest request message decoded, in bytes.
    max_request_bytes: usize,
    /// Who may call (absent: authentication is off).
    pub auth: Option<Arc<Authenticator>>,
    /// Reads may come from a standby's warm copy (the request opted in).
    standby_read: bool,
    /// Records a partition may be behind before the instance is not ready
    /// (health; `server.ready_max_lag`).
    ready_max_lag: i64,
    /// The largest event the HTTP collector takes (`kafka.max_event_bytes`).
    pub(crate) max_event_bytes: usize,
    /// Store reads in flight on the blocking pool at most (`read`).
    reads: Arc<tokio::sync::Semaphore>,
}

/// Takes snapshots of the partitions this instance folds (the binary
/// implements it with the ingest crate's snapshot thread).
#[tonic::async_trait]
pub trait SnapshotTaker: std::fmt::Debug + Send + Sync + 'static {
    /// Snapshots of `partitions` now (every partition folded here when
    /// empty); `Err` when no snapshot could be asked for at all.
    async fn take(&self, partitions: Vec<u32>) -> Result<Vec<SnapshotResult>, String>;
}

/// What one partition's snapshot came to: `Ok(None)` when the latest
/// snapshot is already as far as this instance has folded.
#[derive(Debug, Clone)]
pub struct SnapshotResult {
    pub partition: u32,
    pub outcome: Result<Option<TakenSnapshot>, String>,
}

#[derive(Debug, Clone, Default)]
pub struct TakenSnapshot {
    pub next_offset: i64,
    pub taken_at_ms: i64,
    pub chunks: u32,
    pub bytes: u64,
    pub uploaded_chunks: u32,
    pub uploaded_bytes: u64,
}

/// The largest request decoded by default: 4 MiB, tonic's own default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// Store reads in flight at most by default: twice the cores, so reads that
/// wait for the disk do not leave a core idle.
pub fn default_read_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).saturating_mul(2).max(4)
}

/// Where `SwitchStore` requests go (the ingest loop), and how to open the
/// store they name.
#[derive(Clone, Debug)]
pub struct Switcher {
    pub requests: std::sync::mpsc::SyncSender<omnifold_store::StoreSwitch>,
    pub store_config: omnifold_store::StoreConfig,
    /// Only stores in directories under this one may be switched to.
    pub root: std::path::PathBuf,
}

impl Switcher {
    /// `dir` resolved (links and `..` followed) when it is a directory
    /// strictly under the root; a caller cannot make the server open a
    /// store anywhere else.
    pub(crate) fn allowed(&self, dir: &str) -> Result<std::path::PathBuf, Error> {
        let root = self.root.canonicalize().map_err(|e| {
            Error::FailedPrecondition(format!("server.switch_root {} cannot be used: {e}", self.root.display()))
        })?;
        let path = std::path::Path::new(dir)
            .canonicalize()
            .map_err(|e| Error::InvalidArgument(format!("data_dir {dir} cannot be used: {e}")))?;
        if path == root || !path.starts_with(&root) || !path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "data_dir {dir} is not a directory under {} (server.switch_root); rebuild the store there with \
                 `omnifold replay --data-dir`",
                root.display()
            )));
        }
        Ok(path)
    }
}

impl AppState {
    pub fn new(stores: Arc<StoreHandle>, topic: impl Into<String>, fold: Arc<FoldConfig>) -> Self {
        AppState {
            stores,
            topic: topic.into(),
            fold,
            commands: None,
            switcher: None,
            ingest: None,
            routing: None,
            snapshots: None,
            auth: None,
            audit: None,
            changes: None,
            privacy: Arc::default(),
            audiences: Arc::default(),
            listings: Arc::default(),
            tls: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            standby_read: false,
            ready_max_lag: DEFAULT_READY_MAX_LAG,
            max_event_bytes: 1 << 20,
            reads: Arc::new(tokio::sync::Semaphore::new(default_read_threads())),
        }
    }

    /// At most `n` (at least 1) store reads in flight on the blocking pool.
    pub fn with_read_threads(mut self, n: usize) -> Self {
        self.reads = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Runs `f`, which reads the store. A [`ReadCost::Point`] read runs
    /// here, on the async worker: it is a point read and a seek (tens of
    /// microseconds from the block cache), and handing it to another thread
    /// cost 11% of `GetProfile`'s throughput (docs/benchmarks.md). A
    /// [`ReadCost::Long`] read (kept history replayed for a past instant, a
    /// ledger page, a batch, a scan) runs on tokio's blocking pool, at most
    /// `read_threads` at a time (the rest wait without holding a thread),
    /// so it never holds up the workers that move every other request.
    pub(crate) async fn read<T, F>(&self, cost: ReadCost, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&AppState) -> Result<T, Error> + Send + 'static,
    {
        if cost == ReadCost::Point {
            return f(self);
        }
        let permit =
            self.reads.clone().acquire_owned().await.map_err(|_| Error::Unavailable("shutting down".into()))?;
        let state = self.clone();
        let caller = auth::current();
        let read = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            auth::as_caller(caller, || f(&state))
        });
        read.await.map_err(|e| Error::Internal(format!("a store read failed: {e}")))?
    }

    pub fn with_ingest(mut self, ingest: Arc<dyn IngestHealth>) -> Self {
        self.ingest = Some(ingest);
        self
    }

    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = Some(routing);
        self
    }

    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotTaker>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// Requests larger than `n` bytes are refused (RESOURCE_EXHAUSTED).
    pub fn with_max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = n;
        self
    }

    /// Not ready while a partition is more than `records` behind its end.
    pub fn with_ready_max_lag(mut self, records: i64) -> Self {
        self.ready_max_lag = records;
        self
    }

    /// The largest event the HTTP collector takes, in bytes.
    pub fn with_max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Serves `WatchProfile` from what the fold publishes to `changes`.
    pub fn with_changes(mut self, changes: watch::Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    pub fn with_audit(mut self, audit: Arc<dyn audit::AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn with_privacy(mut self, privacy: privacy::PrivacyConfig) -> Self {
        self.privacy = Arc::new(privacy);
        self
    }

    /// The audiences profiles show their members' memberships in.
    pub fn with_audiences(mut self, audiences: Arc<omnifold_core::audience::Audiences>) -> Self {
        self.audiences = audiences;
        self
    }

    /// Serves TLS (and forwards to `https://` peers with it).
    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    pub fn with_switcher(mut self, switcher: Switcher) -> Self {
        self.switcher = Some(switcher);
        self
    }

    /// The store to read from now.
    pub fn store(&self) -> Arc<Store> {
        self.stores.get()
    }

    pub fn with_commands(mut self, commands: Commands) -> Self {
        self.commands = Some(commands);
        self
    }

    /// The partition that owns a subject key.
    /// The audiences of the partition of `key`: the configured ones, and
    /// those defined through `AdminService` it has folded. Should the store
    /// not say, the configured ones.
    pub(crate) fn audiences_of(&self, key: &str) -> Arc<omnifold_core::audience::Audiences> {
        let read = || -> Result<_, Error> { Ok(self.store().audiences(self.partition(key)?, &self.audiences)?) };
        read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the partition's audiences; the configured ones are used");
            self.audiences.clone()
        })
    }

    pub(crate) fn partition(&self, key: &str) -> Result<u32, Error> {
        let partitions = self
            .store()
            .partition_count(&self.topic)?
            .ok_or_else(|| Error::Unavailable("the store has not joined the events topic yet; retry shortly".into()))?;
        Ok(partition_for(key.as_bytes(), partitions))
    }

    /// Loads the aggregate stored under a subject key, with its dated spend
    /// and open lots when the caller returns something drawn from them.
    ///
    /// Only a partition this instance answers for is read: any other
    /// answers [`Error::Elsewhere`], so a copy left from an earlier
    /// ownership is never served.
    pub(crate) fn load(&self, key: &str, books: Books) -> Result<Option<Member>, Error> {
        let partition = self.partition(key)?;
        self.answers_for(partition)?;
        Ok(match books {
            Books::SpendAndLots => self.store().member_without_orders(partition, key)?,
            Books::Skip => self.store().member_without_books(partition, key)?,
        })
    }

    /// Ok when this instance answers for `partition` now (or keeps a warm
    /// copy of it, when the request accepts one).
    /// The partitions of `store` this instance answers for and has folded:
    /// what a report over all members covers (a copy of a partition it no
    /// longer owns would count its members twice across instances).
    pub(crate) fn held_partitions(&self, store: &Store) -> Result<Vec<u32>, Error> {
        let count = store.partition_count(&self.topic)?.unwrap_or(0);
        let mut out = Vec::new();
        for p in 0..count {
            if store.next_offset(&self.topic, p)?.is_some() && self.answers_for(p).is_ok() {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub(crate) fn answers_for(&self, partition: u32) -> Result<(), Error> {
        match &self.routing {
            None => Ok(()),
            Some(r) => match r.owners.owner(partition) {
                routing::Owner::Here { .. } => Ok(()),
                _ if self.standby_read && r.owners.standby(partition).is_some() => Ok(()),
                other => Err(r.not_here(partition, &other, routing::Why::Changed)),
            },
        }
    }

    /// The state a request reads with: this one, or (`standby`: the
    /// request opted in) one that reads standby copies too.
    pub(crate) fn reading(&self, standby: bool) -> std::borrow::Cow<'_, AppState> {
        if standby {
            std::borrow::Cow::Owned(AppState { standby_read: true, ..self.clone() })
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }
}

/// How long a store read may take: where [`AppState::read`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadCost {
    /// A member's record and books, or an index entry: on the async worker.
    Point,
    /// Kept history, a ledger page, several members, a scan: on the blocking pool.
    Long,
}

impl ReadCost {
    /// A read as of an instant the caller named may replay kept history.
    pub(crate) fn of(when: request::AsOf) -> ReadCost {
        if when.asked { ReadCost::Long } else { ReadCost::Point }
    }
}

/// Which of a member's books a read loads. No answer is drawn from the kept
/// orders (tiers and windows read the dated spend), so a read loads at most
/// the dated spend and the open lots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Books {
    /// The dated spend and the open lots: balances, benefits, a profile's
    /// `loyalty` and `purchases`.
    SpendAndLots,
    /// The record only.
    Skip,
}

pub(crate) fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Accepted connections with `TCP_NODELAY` set: without it every response
/// larger than one segment waits for the client's delayed ACK (about 40 ms
/// on Linux), which capped `GetProfile` at a few thousand requests a second.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves every service on `listener` until `shutdown` resolves, then
/// finishes in-flight requests and returns.
pub async fn run(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ProfileServiceServer<services::Profiles>>().await;
    health.set_serving::<LoyaltyServiceServer<services::Loyalty>>().await;
    health.set_serving::<AdminServiceServer<services::Admin>>().await;
    let max_lag = state.ready_max_lag;
    let watcher = state.ingest.clone().map(|ingest| tokio::spawn(health::watch(ingest, health.clone(), max_lag)));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(omnifold_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let limit = state.max_request_bytes;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &state.tls {
        server = server.tls_config(tls.server.clone())?;
    }
    server
        .trace_fn(telemetry::span)
        .layer(telemetry::GrpcMetricsLayer)
        .layer(auth::AuthLayer {
            auth: state.auth.clone(),
            audit: state.audit.clone().map(|log| (log, audit::instance(&state))),
        })
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ProfileServiceServer::new(services::Profiles(state.clone())).max_decoding_message_size(limit))
        .add_service(LoyaltyServiceServer::new(services::Loyalty(state.clone())).max_decoding_message_size(limit))
        .add_service(
            AudienceServiceServer::new(audiences::AudienceReads(state.clone())).max_decoding_message_size(limit),
        )
        .add_service(AdminServiceServer::new(services::Admin(state)).max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    if let Some(w) = watcher {
        w.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(read_threads: usize) -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&omnifold_store::StoreConfig { path: dir.path().into(), ..Default::default() }).unwrap();
        let fold = Arc::new(FoldConfig::default().validate().unwrap());
        (dir, AppState::new(StoreHandle::new(store), "events", fold).with_read_threads(read_threads))
    }

    /// A point read stays on the caller's thread; a long one runs on the
    /// blocking pool holding one of the `read_threads` permits, and its
    /// error comes back as it was.
    #[tokio::test(flavor = "current_thread")]
    async fn long_reads_run_on_the_bounded_pool_and_point_reads_in_place() {
        let (_dir, state) = state(3);
        let here = std::thread::current().id();
        let point =
            state.read(ReadCost::Point, move |s| Ok((std::thread::current().id(), s.reads.available_permits())));
        assert_eq!(point.await.unwrap(), (here, 3));
        let long = state.read(ReadCost::Long, move |s| Ok((std::thread::current().id(), s.reads.available_permits())));
        let (thread, permits) = long.await.unwrap();
        assert_ne!(thread, here, "a long read runs off the async worker");
        assert_eq!(permits, 2, "and holds one permit while it runs");
        assert_eq!(state.reads.available_permits(), 3, "which it gives back");
        let failed = state.read(ReadCost::Long, |_| Err::<(), _>(Error::NotFound("no profile".into()))).await;
        assert!(matches!(failed, Err(Error::NotFound(m)) if m == "no profile"));
    }

    /// With one permit, a second long read starts only after the first has
    /// finished: it cannot see the first one's mark unfinished.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_beyond_the_bound_wait_their_turn() {
        let (_dir, state) = state(1);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let (state, running) = (state.clone(), running.clone());
                tokio::spawn(async move {
                    state
                        .read(ReadCost::Long, move |_| {
                            let before = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            // Long enough that an unbounded pool would overlap them.
                            for _ in 0..100 {
                                std::thread::yield_now();
                            }
                            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            Ok(before)
                        })
                        .await
                })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), 0, "another long read was running");
        }
    }
}
