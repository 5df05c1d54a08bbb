//! What applying one event produces besides the new aggregate: ledger
//! entries, a command's verdict, events to write to the topic, and route
//! changes for the identity index. Data only: the fold and its leaf modules
//! fill it in, the ingest stores and sends it.

use omnifold_proto::v1 as proto;

use crate::loyalty::{LedgerEntry, Verdict};
use crate::member::Member;

/// What applying one event produced besides the new aggregate: ledger
/// entries and a verdict, stored next to the member in the same batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub ledger: Vec<LedgerEntry>,
    pub verdict: Option<Verdict>,
    /// Events to write to the events topic before the batch commits (identity
    /// claims and joins).
    pub outbox: Vec<Outgoing>,
    /// Keys whose route changed, for the identity index every instance
    /// keeps: `(key, Some(member))` now routes to the member, `(key, None)`
    /// routes nowhere (a shared device).
    pub routes: Vec<(String, Option<String>)>,
    /// What an erasure removes of what is stored under the key.
    pub erase: Erase,
}

/// What an erasure removes of what is stored under the event's key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Erase {
    #[default]
    Nothing,
    /// Everything but the member's record, which is now its tombstone: the
    /// ledger, decided requests, kept events, join parts and books.
    Books,
    /// The record too: the key forgets everything (a key the erased member
    /// held).
    All,
}

/// An event omnifold writes to the events topic as a consequence of one it
/// folded, keyed like any other event.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub key: String,
    pub event: proto::Event,
    /// For a `profileJoined`: the joined profile, whose state the ingest
    /// sends ahead in parts, with its stored ledger, history and verdicts
    /// (the fold cannot read the store).
    pub join: Option<Box<Member>>,
}
