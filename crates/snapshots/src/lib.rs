//! The snapshot store: each partition's state as immutable chunk files and
//! a manifest, in a directory (local or shared) or S3-compatible object
//! storage through `object_store`, with a latest pointer that never moves
//! backwards (issue 11).
//!
//! Layout under the store's root, per topic and partition:
//!
//! ```text
//! {topic}/{partition:05}/chunks/{xxh3-128}        chunk files, named by their bytes
//! {topic}/{partition:05}/snapshots/{offset:020}   manifests (JSON), named by next offset
//! {topic}/{partition:05}/latest/{seq:020}         the pointer's history; the highest is current
//! ```
//!
//! Architecture invariant: this crate writes no state of its own into the
//! RocksDB store; it moves what `omnifold_store` exports and imports, and
//! trusts nothing it reads back (the store checks every chunk again).
//! Architecture invariant: an object once written is never changed: chunks
//! and manifests are content- or offset-named, and the pointer advances by
//! creating the next entry of its history with a create-only put, which
//! fails if another writer took that entry first.

mod config;
mod layout;
mod snapshots;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::SnapshotConfig;
pub use snapshots::{Manifest, Restored, Retention, Snapshots, Taken};

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error(transparent)]
    Store(#[from] omnifold_store::Error),
    #[error("invalid snapshot config: {0}")]
    Config(String),
    #[error("snapshot {0}")]
    Damaged(String),
    #[error("snapshot staging: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
