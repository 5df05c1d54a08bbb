//! Kafka ingest: a blocking poll loop that reads micro-batches, folds them
//! per partition and commits state, dedupe markers and offsets in one store
//! batch; undecodable, invalid or refused events go to the dead-letter topic.
//!
//! Architecture invariant: this crate knows nothing about gRPC. Offsets
//! advance only in the same store batch as the state that covers them, and
//! only after the batch's dead letters are acknowledged by the broker.

mod admin;
mod audit;
mod backfill;
mod config;
mod consumer;
mod copy;
mod dead_letter;
mod dlq;
mod failpoint;
mod index;
mod local;
mod outbox;
mod ownership;
mod priority;
mod processor;
mod replay;
mod resume;
mod sign;
mod snapshotting;
mod standby;
mod status;

pub use admin::{CommandProducer, EventProducer, TopicOutcome, create_topics};
pub use audit::{AuditProducer, StoredAudit, read_audit};
pub use backfill::{BackfillDriver, run_backfills};
pub use config::{Assignment, IngestConfig, MIN_SECRET_LEN, Secret, Standby};
pub use consumer::{RunOptions, Shutdown, client_config, partition_count, run};
pub use copy::{CopyProgress, copy_topic};
pub use dead_letter::DeadLetter;
pub use dlq::{StoredDeadLetter, read_dead_letters};
pub use index::run_index;
pub use local::{LocalLog, LocalReplay};
pub use ownership::{Claim, OwnerState, OwnerView, Ownership, instance_name, run_ownership};
pub use processor::{
    ChangeSink, ChangeTopic, Committed, OnChanges, OnCommit, OutRecord, Processed, Processor, ROUTE_HEADER, Record,
};
pub use replay::{ReplayEnd, ReplayProgress, replay};
pub use sign::{SIGNATURE_HEADER, Signer};
pub use snapshotting::{SnapshotOutcome, SnapshotQueue, SnapshotRequests, run_snapshots, snapshot_requests};
pub use standby::{Standbys, run_standby};
pub use status::{IngestStatus, PartitionHealth, Snapshot, SnapshotMark, Stall, Waiting};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Store(#[from] omnifold_store::Error),
    #[error(transparent)]
    Snapshots(#[from] omnifold_snapshots::Error),
    #[error("invalid ingest config: {0}")]
    Config(String),
    #[error("topic {0} does not exist or has no partitions")]
    NoTopic(String),
    #[error("copy: {0}")]
    Copy(String),
    #[error("bug: {0}")]
    Bug(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
