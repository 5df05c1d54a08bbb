//! The per-member aggregate the fold maintains, and its stored encoding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::event::Channel;
use crate::ident::Identifier;
use crate::loyalty::Loyalty;
use crate::time::Millis;

/// Leading byte of every stored aggregate; bumped on incompatible changes.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileKind {
    #[default]
    KnownMember,
    Anonymous,
    Provisional,
}

/// A value with the event that wrote it; the latest `(at, event_id)` wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub value: T,
    pub at: Millis,
    pub event_id: String,
}

impl<T> Stamped<T> {
    /// Whether a write at `(at, event_id)` is newer than this one.
    pub fn older_than(&self, at: Millis, event_id: &str) -> bool {
        (self.at, self.event_id.as_str()) < (at, event_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub granted: bool,
    pub channel: Channel,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub events: u64,
    pub orders: u64,
    /// Net of returns, program currency minor units.
    pub spend_minor: i64,
    pub last_seen_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentProduct {
    pub sku: String,
    pub category: String,
    pub last_viewed_at: Millis,
    pub views: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryStats {
    pub views: u64,
    pub units: u64,
}

impl CategoryStats {
    /// A view counts 1, a purchased unit 5.
    pub fn weight(&self) -> u64 {
        self.views + 5 * self.units
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentSearch {
    pub query: String,
    pub at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Browse {
    /// Distinct SKUs, most recently viewed first.
    pub recent: Vec<RecentProduct>,
    pub categories: BTreeMap<String, CategoryStats>,
    pub product_views: u64,
    pub searches: u64,
    /// Distinct queries, most recent first.
    pub recent_searches: Vec<RecentSearch>,
    pub cart_updates: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub category: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

/// One order as the fold remembers it, for returns, cancellations and windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: String,
    pub at: Millis,
    pub channel: Channel,
    pub store_id: Option<String>,
    pub currency: String,
    /// Paid, in the order's currency.
    pub total_minor: i64,
    /// Paid, in the program currency.
    pub total_program_minor: i64,
    pub units: u32,
    pub lines: Vec<OrderLine>,
    /// Cumulative list value of returned lines, order currency.
    pub returned_list_minor: i64,
    /// Cumulative refunded, order currency.
    pub returned_minor: i64,
    /// Cumulative refunded, program currency.
    pub returned_program_minor: i64,
    pub returned_units: BTreeMap<String, u32>,
    pub return_ids: BTreeSet<String>,
    pub cancelled: bool,
    /// Points the order earned, and how many returns and a cancellation
    /// have taken back so far (cumulative, so rounding never drifts).
    pub points: i64,
    pub points_revoked: i64,
}

impl OrderRecord {
    pub fn net_program_minor(&self) -> i64 {
        self.total_program_minor.saturating_sub(self.returned_program_minor)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchases {
    /// Orders placed and not cancelled.
    pub orders: u64,
    pub units: u64,
    pub gross_minor: i64,
    pub returned_minor: i64,
    pub returns: u64,
    pub cancelled: u64,
    pub first_order_at: Option<Millis>,
    pub last_order_at: Option<Millis>,
    /// Orders per store id.
    pub stores: BTreeMap<String, u64>,
    /// Recent orders, oldest first, bounded by the config.
    pub history: Vec<OrderRecord>,
}

impl Purchases {
    pub fn net_minor(&self) -> i64 {
        self.gross_minor.saturating_sub(self.returned_minor)
    }

    /// The store with most orders; ties go to the smallest id.
    pub fn favourite_store(&self) -> Option<&str> {
        self.stores.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(s, _)| s.as_str())
    }
}

/// Bookkeeping of the member's kept event history (the store keeps the
/// events; the fold never reads this).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMark {
    /// Events folded into the history's base snapshot and no longer kept.
    pub pruned: u64,
    /// Every pruned event occurred before this instant: reads as of an
    /// earlier instant cannot be exact.
    pub pruned_before: Millis,
    /// The oldest event time still kept, if any.
    pub oldest_kept: Option<Millis>,
}

/// How far the fold had read when it last changed this member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub partition: u32,
    pub next_offset: i64,
    pub events_applied: u64,
}

/// Everything omnifold knows about one subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub key: String,
    pub kind: ProfileKind,
    pub identifiers: BTreeSet<Identifier>,
    pub aliases: BTreeSet<String>,
    pub traits: BTreeMap<String, Stamped<String>>,
    pub consents: BTreeMap<String, Stamped<Consent>>,
    pub channels: BTreeMap<Channel, ChannelStats>,
    pub browse: Browse,
    pub purchases: Purchases,
    pub loyalty: Loyalty,
    pub first_seen_at: Option<Millis>,
    pub last_seen_at: Option<Millis>,
    pub enrolled_at: Option<Millis>,
    pub erased_at: Option<Millis>,
    pub version: Version,
    /// Set when this key's profile joined a member (a linked anonymous id or
    /// identifier, or a merged member): events and reads for the key go there.
    pub routes_to: Option<String>,
    /// A non-unique identifier (a device) that several members linked: it
    /// routes nowhere, so a shared device cannot glue members together.
    pub shared: bool,
    /// Member ids merged into this one (also listed in `aliases`).
    pub merged_members: BTreeSet<String>,
    pub history: HistoryMark,
}

impl Member {
    pub fn new(key: impl Into<String>, kind: ProfileKind) -> Self {
        Member { key: key.into(), kind, ..Member::default() }
    }

    /// Deterministic bytes: a format byte, then postcard. All collections are
    /// ordered, so equal aggregates encode to equal bytes.
    #[allow(clippy::expect_used, reason = "serialising plain data into a Vec cannot fail")]
    pub fn encode(&self) -> Vec<u8> {
        // to_extend, not to_io: io::Write costs a memmove call per byte written.
        let mut out = Vec::with_capacity(256);
        out.push(FORMAT_VERSION);
        postcard::to_extend(self, out).expect("member aggregate serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes.split_first() {
            Some((&FORMAT_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| Error::Corrupt(e.to_string())),
            Some((v, _)) => Err(Error::Corrupt(format!("unknown format version {v}"))),
            None => Err(Error::Corrupt("empty value".into())),
        }
    }

    /// Traits with a value (removals are kept only to order later writes).
    pub fn live_traits(&self) -> impl Iterator<Item = (&str, &str)> {
        self.traits.iter().filter(|(_, v)| !v.value.is_empty()).map(|(k, v)| (k.as_str(), v.value.as_str()))
    }
}
