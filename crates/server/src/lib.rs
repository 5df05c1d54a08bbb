//! The gRPC face of omnifold: `ProfileService`, `LoyaltyService`,
//! `AdminService`, `grpc.health.v1` and server reflection.
//!
//! Architecture invariant: generated protobuf types stay in this crate and
//! `omnifold-proto`; requests become validated domain values in `request.rs`,
//! and every error becomes a `tonic::Status` in one place (`From<Error>`).

mod commands;
mod convert;
mod health;
mod request;
mod services;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::Status;

pub use commands::{CommandLog, Commands, Commits};
pub use health::{IngestHealth, IngestReport, PartitionReport};
use omnifold_core::{FoldConfig, Member, Millis, partition::partition_for};
use omnifold_proto::v1::{
    admin_service_server::AdminServiceServer, loyalty_service_server::LoyaltyServiceServer,
    profile_service_server::ProfileServiceServer,
};
use omnifold_store::{Store, StoreHandle};

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
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(&'static str),
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
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Unimplemented(m) => Status::unimplemented(m),
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
}

/// Where `SwitchStore` requests go (the ingest loop), and how to open the
/// store they name.
#[derive(Clone, Debug)]
pub struct Switcher {
    pub requests: std::sync::mpsc::SyncSender<omnifold_store::StoreSwitch>,
    pub store_config: omnifold_store::StoreConfig,
}

impl AppState {
    pub fn new(stores: Arc<StoreHandle>, topic: impl Into<String>, fold: Arc<FoldConfig>) -> Self {
        AppState { stores, topic: topic.into(), fold, commands: None, switcher: None, ingest: None }
    }

    pub fn with_ingest(mut self, ingest: Arc<dyn IngestHealth>) -> Self {
        self.ingest = Some(ingest);
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
    pub(crate) fn partition(&self, key: &str) -> Result<u32, Error> {
        let partitions = self
            .store()
            .partition_count(&self.topic)?
            .ok_or_else(|| Error::Unavailable("the store has not joined the events topic yet; retry shortly".into()))?;
        Ok(partition_for(key.as_bytes(), partitions))
    }

    /// Loads the aggregate stored under a subject key; without its books
    /// (kept orders, open lots) when the caller returns nothing drawn from them.
    pub(crate) fn load(&self, key: &str, books: Books) -> Result<Option<Member>, Error> {
        let partition = self.partition(key)?;
        Ok(match books {
            Books::Load => self.store().member(partition, key)?,
            Books::Skip => self.store().member_without_books(partition, key)?,
        })
    }
}

/// Whether a read loads a member's books (kept orders, open lots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Books {
    Load,
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
    let watcher = state.ingest.clone().map(|ingest| tokio::spawn(health::watch(ingest, health.clone())));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(omnifold_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ProfileServiceServer::new(services::Profiles(state.clone())))
        .add_service(LoyaltyServiceServer::new(services::Loyalty(state.clone())))
        .add_service(AdminServiceServer::new(services::Admin(state)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    if let Some(w) = watcher {
        w.abort();
    }
    Ok(())
}
