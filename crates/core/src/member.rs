//! The per-member aggregate the fold maintains, and its stored encoding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::book::{Book, Entry};
use crate::event::Channel;
use crate::ident::Identifier;
use crate::loyalty::Loyalty;
use crate::spend::Spend;
use crate::time::Millis;

/// Leading byte of the full encoding (`Member::encode`, orders inline);
/// bumped on incompatible changes.
pub const FORMAT_VERSION: u8 = 4;

/// Leading byte of the split encoding (`Member::encode_hot`): the member
/// without its books (orders, lots) and dated spend, which the store keeps
/// under their own keys.
pub const HOT_FORMAT_VERSION: u8 = 5;

/// The full encoding before dated spend (`Purchases::spend`): read, never
/// written; the spend is rebuilt from the kept orders.
pub const FORMAT_VERSION_2: u8 = 2;

/// The split encoding before dated spend: read, never written; the spend is
/// rebuilt from the kept orders once the store has loaded them.
pub const HOT_FORMAT_VERSION_3: u8 = 3;

/// Whether `bytes` are a full encoding (`Member::encode`, of any version
/// this omnifold reads), as opposed to a split one.
pub fn is_full_encoding(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&(FORMAT_VERSION | FORMAT_VERSION_2)))
}

/// Leading byte of a stored book entry (`encode_entry`).
pub const ENTRY_FORMAT_VERSION: u8 = 1;

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
    pub history: OrderBook,
    /// Net spend of the orders in the longest window read, dated: what the
    /// tier and the yearly windows are computed from. Kept beside the
    /// member's record like a book; in the full encoding (`Member::encode`)
    /// after the rest of the member, so encodings of format 2 still decode.
    #[serde(skip)]
    pub spend: Spend,
}

impl Purchases {
    pub fn net_minor(&self) -> i64 {
        self.gross_minor.saturating_sub(self.returned_minor)
    }

    /// Dated spend from the kept orders, for members stored before it was
    /// kept: the figures those formats computed from the same orders.
    pub fn rebuild_spend(&mut self) {
        let mut spend = Spend::default();
        for o in self.history.iter().filter(|o| !o.cancelled) {
            spend.add_order(o.at, o.net_program_minor());
        }
        self.spend = spend;
    }

    /// The store with most orders; ties go to the smallest id.
    pub fn favourite_store(&self) -> Option<&str> {
        self.stores.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(s, _)| s.as_str())
    }
}

/// The member's kept orders, oldest first (by time, then order id).
pub type OrderBook = Book<OrderRecord>;

impl Entry for OrderRecord {
    type Id = String;

    fn id(&self) -> &String {
        &self.order_id
    }

    /// Oldest first, by time, then order id.
    fn precedes(&self, other: &Self) -> bool {
        (self.at, &self.order_id) < (other.at, &other.order_id)
    }

    fn key(id: &String) -> Vec<u8> {
        id.as_bytes().to_vec()
    }
}

impl Book<OrderRecord> {
    pub fn get(&self, order_id: &str) -> Option<&OrderRecord> {
        self.find(|o| o.order_id == order_id)
    }

    /// The order to change; it is written back with the member.
    pub fn get_mut(&mut self, order_id: &str) -> Option<&mut OrderRecord> {
        self.find_mut(|o| o.order_id == order_id)
    }

    pub fn contains(&self, order_id: &str) -> bool {
        self.get(order_id).is_some()
    }
}

/// How many entries of each book a stored member record says are kept
/// beside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub orders: u32,
    pub lots: u32,
    /// Marks of the dated spend (0: no spend entry).
    pub marks: u32,
    /// The record predates dated spend: rebuild it from the orders
    /// (`Purchases::rebuild_spend`) once they are loaded.
    pub rebuild_spend: bool,
}

/// Which stored copies of a member's books it continues (`Book::lineage`):
/// what the store needs to write only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    pub orders: u64,
    pub lots: u64,
    pub spend: u64,
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

/// One profile a committed batch of the fold changed (the change stream).
#[derive(Debug, Clone)]
pub struct Change {
    pub key: String,
    /// The next offset after the event that produced the change: its version.
    pub next_offset: i64,
    /// The profile as committed; none when its record was deleted (an erasure).
    pub member: Option<std::sync::Arc<Member>>,
    /// The audiences the profile entered and left in the batch, in order
    /// (time alone may change them: then the profile is otherwise as it was).
    pub audiences: Vec<crate::audience::Transition>,
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

    /// Deterministic bytes: a format byte, then postcard of the member and
    /// of its dated spend. All collections are ordered, so equal aggregates
    /// encode to equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        append(&self.purchases.spend, append(self, vec![FORMAT_VERSION]))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        match bytes.split_first() {
            Some((&FORMAT_VERSION, rest)) => with_spend(rest),
            Some((&FORMAT_VERSION_2, rest)) => {
                let mut m: Member = postcard::from_bytes(rest).map_err(corrupt)?;
                m.purchases.rebuild_spend();
                Ok(m)
            }
            Some((v, _)) => Err(Error::Corrupt(format!("unknown format version {v}"))),
            None => Err(Error::Corrupt("empty value".into())),
        }
    }

    /// The member without its books and dated spend, for the store's member
    /// record: `HOT_FORMAT_VERSION`, the number of orders, of lots and of
    /// spend marks kept beside it (u32 each, big-endian), then postcard. The
    /// books' entries are taken out for the encoding and put back.
    pub fn encode_hot(&mut self) -> Vec<u8> {
        let orders = self.purchases.history.take_entries();
        let lots = self.loyalty.lots.take_entries();
        let mut out = Vec::with_capacity(256);
        out.push(HOT_FORMAT_VERSION);
        for n in [orders.len(), lots.len(), self.purchases.spend.len()] {
            out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        }
        let out = append(&*self, out);
        self.purchases.history.restore_entries(orders);
        self.loyalty.lots.restore_entries(lots);
        out
    }

    /// A stored member record (`encode_hot`, or a full encoding an older
    /// store kept), and how many entries of each book (orders, lots) and
    /// spend marks the store holds for it beside it. A record of format 3
    /// says so in `Counts::rebuild_spend`: its dated spend is rebuilt from
    /// its orders once they are loaded.
    pub fn decode_stored(bytes: &[u8]) -> Result<(Self, Counts), Error> {
        let corrupt_at = |what: &str| Error::Corrupt(what.to_owned());
        let (version, mut rest) = bytes.split_first().ok_or_else(|| corrupt_at("empty value"))?;
        let rebuild_spend = match *version {
            HOT_FORMAT_VERSION => false,
            HOT_FORMAT_VERSION_3 => true,
            _ => return Ok((Member::decode(bytes)?, Counts::default())),
        };
        let mut count = || -> Result<u32, Error> {
            let (n, tail) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt_at("truncated member record"))?;
            rest = tail;
            Ok(u32::from_be_bytes(*n))
        };
        let (orders, lots) = (count()?, count()?);
        let marks = if rebuild_spend { 0 } else { count()? };
        let m: Member = postcard::from_bytes(rest).map_err(corrupt)?;
        if !m.purchases.history.is_empty() || !m.loyalty.lots.is_empty() {
            return Err(corrupt_at("a member record holds its orders or lots inline"));
        }
        Ok((m, Counts { orders, lots, marks, rebuild_spend }))
    }

    /// The stored copies this member's books continue.
    pub fn lineage(&self) -> Lineage {
        Lineage {
            orders: self.purchases.history.lineage(),
            lots: self.loyalty.lots.lineage(),
            spend: self.purchases.spend.lineage(),
        }
    }

    /// An estimate of the memory this member holds, for caches bounded by
    /// bytes: every collection at its elements' size plus each string's
    /// length. Allocator and tree-node overheads are left out, so the
    /// process uses somewhat more (docs/operations.md). The books (orders,
    /// lots) are weighed by their first `WEIGH_SAMPLE` entries scaled to
    /// their length, so weighing does not cost more as the history grows.
    pub fn approx_heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let text = |t: &String| size_of::<String>() + t.len();
        let texts = |ts: &BTreeSet<String>| ts.iter().map(text).sum::<usize>();
        let order = |o: &OrderRecord| {
            size_of::<OrderRecord>()
                + o.order_id.len()
                + o.currency.len()
                + o.store_id.as_ref().map_or(0, String::len)
                + o.lines.iter().map(|l| size_of::<OrderLine>() + l.sku.len() + l.category.len()).sum::<usize>()
                + o.returned_units.keys().map(|k| text(k) + size_of::<u32>()).sum::<usize>()
                + texts(&o.return_ids)
        };
        let lot =
            |l: &crate::loyalty::Lot| size_of::<crate::loyalty::Lot>() + l.order_id.as_ref().map_or(0, String::len);
        let b = &self.browse;
        size_of::<Member>()
            + self.key.len()
            + self.identifiers.iter().map(|i| size_of::<Identifier>() + i.value.len()).sum::<usize>()
            + texts(&self.aliases)
            + texts(&self.merged_members)
            + self
                .traits
                .iter()
                .map(|(k, v)| text(k) + size_of::<Stamped<String>>() + v.value.len() + v.event_id.len())
                .sum::<usize>()
            + self
                .consents
                .iter()
                .map(|(k, v)| text(k) + size_of::<Stamped<Consent>>() + v.event_id.len())
                .sum::<usize>()
            + self.channels.len() * size_of::<(Channel, ChannelStats)>()
            + b.recent.iter().map(|r| size_of::<RecentProduct>() + r.sku.len() + r.category.len()).sum::<usize>()
            + b.categories.keys().map(|k| text(k) + size_of::<CategoryStats>()).sum::<usize>()
            + b.recent_searches.iter().map(|r| size_of::<RecentSearch>() + r.query.len()).sum::<usize>()
            + self.purchases.stores.keys().map(|k| text(k) + size_of::<u64>()).sum::<usize>()
            + self.purchases.history.weight(WEIGH_SAMPLE, order)
            + self.loyalty.lots.weight(WEIGH_SAMPLE, lot)
            + self.loyalty.tier_changes.len() * size_of::<crate::loyalty::TierChange>()
            + self.purchases.spend.len() * size_of::<crate::spend::SpendMark>()
            + self.routes_to.as_ref().map_or(0, String::len)
    }

    /// Traits with a value (removals are kept only to order later writes).
    pub fn live_traits(&self) -> impl Iterator<Item = (&str, &str)> {
        self.traits.iter().filter(|(_, v)| !v.value.is_empty()).map(|(k, v)| (k.as_str(), v.value.as_str()))
    }
}

/// Entries of a book weighed by `Member::approx_heap_bytes`; the rest are
/// taken to weigh as much on average.
const WEIGH_SAMPLE: usize = 16;

/// A member then its dated spend, in postcard, with nothing after them.
fn with_spend(bytes: &[u8]) -> Result<Member, Error> {
    let (mut m, rest): (Member, _) = postcard::take_from_bytes(bytes).map_err(corrupt)?;
    let (spend, rest) = postcard::take_from_bytes(rest).map_err(corrupt)?;
    if !rest.is_empty() {
        return Err(Error::Corrupt(format!("{} bytes after a member's encoding", rest.len())));
    }
    m.purchases.spend = spend;
    Ok(m)
}

fn corrupt(e: postcard::Error) -> Error {
    Error::Corrupt(e.to_string())
}

/// One stored book entry (an order, a lot): `ENTRY_FORMAT_VERSION`, then postcard.
pub fn encode_entry<T: Serialize>(entry: &T) -> Vec<u8> {
    crate::codec::encode(ENTRY_FORMAT_VERSION, entry)
}

pub fn decode_entry<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    crate::codec::decode(ENTRY_FORMAT_VERSION, "entry format", bytes)
}

/// `value` in postcard after the bytes in `out`. `to_extend`, not `to_io`:
/// `io::Write` costs a memmove call per byte written.
#[allow(clippy::expect_used, reason = "serialising plain data into a Vec cannot fail")]
fn append<T: Serialize + ?Sized>(value: &T, mut out: Vec<u8>) -> Vec<u8> {
    out.reserve(256);
    postcard::to_extend(value, out).expect("plain data serialises")
}
