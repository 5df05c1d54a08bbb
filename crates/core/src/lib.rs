//! The domain of omnifold: validated events, member aggregates and the fold
//! that applies one to the other.
//!
//! Architecture invariant: this crate does no I/O, never reads the clock and
//! has no async runtime, database or Kafka client. The same events in the same
//! order give byte-identical aggregates ([`Member::encode`]).

pub mod audience;
pub mod book;
pub mod codec;
pub mod config;
pub mod decode;
pub mod effects;
mod erasure;
pub mod error;
pub mod event;
pub mod fold;
pub mod ident;
pub mod identity;
pub mod join;
pub mod limits;
pub mod loyalty;
pub mod member;
pub mod partition;
pub mod profile;
pub mod spend;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod windows;

pub use config::FoldConfig;
pub use decode::{Encoding, decode_event};
pub use effects::{Effects, Outgoing};
pub use error::{Error, Rejection};
pub use event::{Channel, Event, Payload, Subject};
pub use fold::{Position, apply};
pub use ident::{IdType, Identifier};
pub use limits::Limits;
pub use loyalty::{LedgerEntry, Tier, Verdict};
pub use member::{Change, Member, ProfileKind};
pub use time::Millis;
pub use windows::Windows;
