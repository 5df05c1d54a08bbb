//! The points ledger and tiers: lots that are earned pending, become active,
//! expire; spending, revoking and adjusting them; negative balances; tier
//! upgrades and anniversary reviews. The rules are in `docs/loyalty.md`.
//!
//! Points state is part of the [`Member`] aggregate. What a read sees at an
//! instant `T` is a projection of that state to `T` ([`Member::balance`]),
//! so pending points activate and lots expire without any event.

pub mod config;
pub mod report;
mod tier;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use config::{Benefit, LoyaltyConfig, NegativeBalance, TierConfig};
pub use tier::TierChange;

use crate::Error;
use crate::book::{Book, Entry};
use crate::effects::Effects;
use crate::event::{Channel, Event, Line};
use crate::member::Member;
use crate::time::Millis;

/// Leading byte of stored ledger entries and verdicts.
const RECORD_VERSION: u8 = 1;

/// Loyalty tiers, lowest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Tier {
    #[default]
    Member,
    Silver,
    Gold,
    Platinum,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Member, Tier::Silver, Tier::Gold, Tier::Platinum];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Member => "MEMBER",
            Tier::Silver => "SILVER",
            Tier::Gold => "GOLD",
            Tier::Platinum => "PLATINUM",
        }
    }

    pub fn next(self) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| *t > self)
    }
}

/// Points earned together (one order, or one positive adjustment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// The ledger entry that earned it.
    pub seq: u64,
    pub order_id: Option<String>,
    pub channel: Channel,
    pub points: i64,
    /// What is left after spending, revoking and paying off a negative balance.
    pub remaining: i64,
    pub activates_at: Millis,
    pub expires_at: Millis,
}

impl Entry for Lot {
    type Id = u64;

    fn id(&self) -> &u64 {
        &self.seq
    }

    /// Spending order: expiring first, then the ledger entry that earned it.
    fn precedes(&self, other: &Self) -> bool {
        (self.expires_at, self.seq) < (other.expires_at, other.seq)
    }

    fn key(id: &u64) -> Vec<u8> {
        id.to_be_bytes().to_vec()
    }
}

/// The loyalty part of a member aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loyalty {
    /// Lots not yet closed, ordered by `(expires_at, seq)`: spending order.
    pub lots: Book<Lot>,
    /// Points owed after a shortfall; paid off by the next earnings.
    pub negative: i64,
    /// Lifetime totals. `expired` counts closed lots only; a read adds the
    /// open lots that have expired by its instant.
    pub earned: i64,
    pub redeemed: i64,
    pub revoked: i64,
    pub expired: i64,
    pub written_off: i64,
    pub tier: Tier,
    pub tier_since: Option<Millis>,
    pub next_review: Option<Millis>,
    /// The latest tier changes, oldest first (bounded).
    pub tier_changes: Vec<TierChange>,
    /// Latest event time folded: lots that expired before it are closed.
    pub clock: Millis,
    /// Sequence number of the next ledger entry.
    pub next_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    Earn,
    Redeem,
    Revoke,
    Expire,
    Adjust,
}

impl EntryKind {
    pub const ALL: [EntryKind; 5] =
        [EntryKind::Earn, EntryKind::Redeem, EntryKind::Revoke, EntryKind::Expire, EntryKind::Adjust];
}

/// One line of a member's points ledger, with its cause. `points` is signed:
/// positive for earnings and positive adjustments, negative otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    pub kind: EntryKind,
    pub points: i64,
    /// Event time of the cause; for an expiry, the instant the lot expired.
    pub at: Millis,
    pub event_id: String,
    pub order_id: Option<String>,
    pub channel: Option<Channel>,
    pub reason: String,
    pub actor: String,
    pub request_id: Option<String>,
    /// For earnings: when the lot becomes active and when it expires.
    pub activates_at: Option<Millis>,
    pub expires_at: Option<Millis>,
}

impl LedgerEntry {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        decode(bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    Redeem,
    Adjust,
    /// An erasure job (its verdict is the job's record).
    Erase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerdictStatus {
    Accepted,
    Rejected,
}

/// The fold's answer to a redemption or an adjustment carrying a request id.
/// Kept per member and request id, so a retry gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub request_id: String,
    pub kind: CommandKind,
    pub status: VerdictStatus,
    /// Points asked to redeem, or the adjustment's delta.
    pub points: i64,
    pub reason: String,
    pub event_id: String,
    pub at: Millis,
    /// The ledger entry it produced, when accepted.
    pub seq: Option<u64>,
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        decode(bytes)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::encode(RECORD_VERSION, v)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    crate::codec::decode(RECORD_VERSION, "record", bytes)
}

/// Points that become active later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingLot {
    pub points: i64,
    pub activates_at: Millis,
    pub order_id: Option<String>,
}

/// Active points and when they expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringLot {
    pub points: i64,
    pub expires_at: Millis,
}

/// A member's points as of one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub as_of: Millis,
    pub active: i64,
    pub pending: i64,
    /// Pending lots, soonest to activate first.
    pub pending_lots: Vec<PendingLot>,
    /// Active points expiring within `expiring_soon_days`, soonest first.
    pub expiring_soon: i64,
    pub expiring_lots: Vec<ExpiringLot>,
    pub negative: i64,
    pub earned: i64,
    pub redeemed: i64,
    pub expired: i64,
    pub revoked: i64,
    pub written_off: i64,
    pub tier: Tier,
    pub tier_since: Option<Millis>,
}

/// Tier standing and what the next tier needs, as of one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub tier: Tier,
    pub tier_since: Option<Millis>,
    pub next_tier: Option<Tier>,
    /// Net spend in the tier window ending at the instant.
    pub qualifying_spend_minor: i64,
    pub next_tier_threshold_minor: Option<i64>,
    /// When the tier is next reviewed (it cannot drop before then).
    pub next_review: Option<Millis>,
}

impl Member {
    /// Points as of `at`: lots active and unexpired at `at`, pending lots,
    /// and open lots that have expired by `at` counted as expired.
    pub fn balance(&self, at: Millis, cfg: &LoyaltyConfig) -> Balance {
        let l = &self.loyalty;
        let (tier, tier_since, _) = tier::standing_at(self, at, cfg);
        let mut b = Balance {
            as_of: at,
            negative: l.negative,
            earned: l.earned,
            redeemed: l.redeemed,
            expired: l.expired,
            revoked: l.revoked,
            written_off: l.written_off,
            tier,
            tier_since,
            ..Balance::default()
        };
        let soon = at + cfg.expiring_soon();
        for lot in l.lots.iter().filter(|lot| lot.remaining > 0) {
            if lot.expires_at <= at {
                b.expired = b.expired.saturating_add(lot.remaining);
            } else if lot.activates_at > at {
                b.pending = b.pending.saturating_add(lot.remaining);
                b.pending_lots.push(PendingLot {
                    points: lot.remaining,
                    activates_at: lot.activates_at,
                    order_id: lot.order_id.clone(),
                });
            } else {
                b.active = b.active.saturating_add(lot.remaining);
                if lot.expires_at <= soon {
                    b.expiring_soon = b.expiring_soon.saturating_add(lot.remaining);
                    b.expiring_lots.push(ExpiringLot { points: lot.remaining, expires_at: lot.expires_at });
                }
            }
        }
        b.pending_lots.sort_by_key(|p| p.activates_at);
        b
    }

    /// Outstanding points as of `at` per channel of earning: `(channel,
    /// active, pending)`, for the liability report.
    pub fn outstanding(&self, at: Millis) -> BTreeMap<Channel, (i64, i64)> {
        let mut out: BTreeMap<Channel, (i64, i64)> = BTreeMap::new();
        for lot in self.loyalty.lots.iter().filter(|l| l.remaining > 0 && at < l.expires_at) {
            let e = out.entry(lot.channel).or_default();
            if lot.activates_at <= at {
                e.0 = e.0.saturating_add(lot.remaining);
            } else {
                e.1 = e.1.saturating_add(lot.remaining);
            }
        }
        out
    }

    /// Tier, progress to the next tier and the next review, as of `at`.
    pub fn standing(&self, at: Millis, cfg: &LoyaltyConfig) -> Standing {
        let (tier, tier_since, next_review) = tier::standing_at(self, at, cfg);
        let next_tier = tier.next();
        Standing {
            tier,
            tier_since,
            next_tier,
            qualifying_spend_minor: tier::qualifying_spend(self, at, cfg),
            next_tier_threshold_minor: next_tier.map(|t| cfg.threshold_minor(t)),
            next_review,
        }
    }

    /// Ledger entries for lots that are still open but have expired by `at`
    /// (the fold writes them when a later event closes the lot), numbered
    /// from the member's next sequence number in expiry order.
    pub fn pending_expiries(&self, at: Millis) -> Vec<LedgerEntry> {
        let mut seq = self.loyalty.next_seq;
        self.loyalty
            .lots
            .iter()
            .filter(|lot| lot.expires_at <= at && lot.remaining > 0)
            .map(|lot| {
                let e = expiry_entry(seq, lot);
                seq += 1;
                e
            })
            .collect()
    }
}

fn expiry_entry(seq: u64, lot: &Lot) -> LedgerEntry {
    LedgerEntry {
        seq,
        kind: EntryKind::Expire,
        points: -lot.remaining,
        at: lot.expires_at,
        event_id: String::new(),
        order_id: lot.order_id.clone(),
        channel: Some(lot.channel),
        reason: "expired".into(),
        actor: String::new(),
        request_id: None,
        activates_at: Some(lot.activates_at),
        expires_at: Some(lot.expires_at),
    }
}

/// Refuses an event that could move up to `points` points when one of the
/// member's lifetime totals could not count them. Called before the event
/// changes anything, so every later `+` on the totals fits.
pub(crate) fn room(member: &Member, points: u64) -> Result<(), crate::Rejection> {
    let l = &member.loyalty;
    let points = i64::try_from(points).unwrap_or(i64::MAX);
    let totals = [l.earned, l.redeemed, l.revoked, l.expired, l.written_off, l.negative];
    if totals.iter().any(|t| t.checked_add(points).is_none()) {
        return Err(crate::Rejection(format!(
            "the points totals of `{}` cannot count {points} more points; the event was refused",
            member.key
        )));
    }
    Ok(())
}

/// Only members collect points; anonymous and provisional profiles do not.
pub(crate) fn collects_points(member: &Member) -> bool {
    member.kind == crate::member::ProfileKind::KnownMember
}

/// Builds ledger entries for one event.
struct Writer<'a> {
    event: &'a Event,
    fx: &'a mut Effects,
}

impl Writer<'_> {
    fn push(&mut self, l: &mut Loyalty, kind: EntryKind, points: i64, f: impl FnOnce(&mut LedgerEntry)) -> u64 {
        let seq = l.next_seq;
        l.next_seq += 1;
        let mut e = LedgerEntry {
            seq,
            kind,
            points,
            at: self.event.occurred_at,
            event_id: self.event.event_id.clone(),
            order_id: None,
            channel: Some(self.event.channel),
            reason: String::new(),
            actor: String::new(),
            request_id: None,
            activates_at: None,
            expires_at: None,
        };
        f(&mut e);
        self.fx.ledger.push(e);
        seq
    }
}

/// `floor(a × b / c)` for non-negative operands without overflowing when
/// `a × b` is large: `a = q·c + r`, so `a·b/c = q·b + r·b/c`.
fn mul_div(a: u128, b: u128, c: u128) -> u128 {
    (a / c) * b + (a % c) * b / c
}

/// Points an order earns: floor(net amount in major units × earn rate ×
/// channel × tier × the category multipliers averaged over the lines by
/// list value).
pub(crate) fn order_points(
    total_program_minor: i64,
    lines: &[Line],
    channel: Channel,
    tier: Tier,
    cfg: &LoyaltyConfig,
) -> i64 {
    let c = &cfg.compiled;
    let amount = total_program_minor.max(0) as u128;
    let channel_m = c.channel_milli.get(&channel).copied().unwrap_or(1_000);
    let tier_m = c.tier_milli.get(&tier).copied().unwrap_or(1_000);
    // Weighted category multiplier as a fraction num / den (thousandths).
    let list: u128 = lines.iter().map(|l| l.unit_price_minor as u128 * u128::from(l.quantity)).sum();
    let (num, den) = if c.category_milli.is_empty() || list == 0 {
        (1_000, 1_000)
    } else {
        let weighted: u128 = lines
            .iter()
            .map(|l| {
                let m = c.category_milli.get(&l.category).copied().unwrap_or(1_000);
                l.unit_price_minor as u128 * u128::from(l.quantity) * m
            })
            .sum();
        (weighted, list * 1_000)
    };
    // amount × earn × channel × tier × num / (minor_per_major × 1000³ × den)
    let x = mul_div(amount * c.earn_milli, channel_m * tier_m, 1_000_000);
    let x = mul_div(x, num, den);
    (x / (c.minor_per_major * 1_000)).min(i64::MAX as u128) as i64
}

impl Loyalty {
    /// Inserts a lot in spending order as it is. A lot is kept under the
    /// ledger entry that earned it; a second lot under the same number
    /// would be dropped with its points, so it is a bug, which the processor
    /// turns into a `bug` dead letter with the member unchanged.
    pub(crate) fn insert_lot(&mut self, lot: Lot) {
        let seq = lot.seq;
        assert!(self.lots.insert(lot), "a lot for ledger entry {seq} is already held");
    }

    /// Inserts a lot in spending order, paying off a negative balance first.
    /// Returns how much of it went to the negative balance.
    fn add_lot(&mut self, mut lot: Lot) -> i64 {
        let paid = self.negative.min(lot.remaining);
        self.negative -= paid;
        lot.remaining -= paid;
        self.insert_lot(lot);
        paid
    }

    /// Takes up to `points` from lots active at `at`, expiring first, and
    /// returns what was taken.
    fn take_active(&mut self, points: i64, at: Millis) -> i64 {
        let mut left = points;
        for lot in self.lots.iter_mut_where(move |l| l.activates_at <= at && at < l.expires_at) {
            if left == 0 {
                break;
            }
            let n = lot.remaining.min(left);
            lot.remaining -= n;
            left -= n;
        }
        points - left
    }

    /// Points that can be spent at `at`: active minus what is owed.
    pub fn spendable(&self, at: Millis) -> i64 {
        let active = self
            .lots
            .iter()
            .filter(|l| l.activates_at <= at && at < l.expires_at)
            .fold(0i64, |sum, l| sum.saturating_add(l.remaining));
        active.saturating_sub(self.negative).max(0)
    }

    /// Records a shortfall according to the policy.
    fn shortfall(&mut self, points: i64, cfg: &LoyaltyConfig) {
        match cfg.negative_balance {
            NegativeBalance::Carry => self.negative += points,
            NegativeBalance::WriteOff => self.written_off += points,
        }
    }
}

/// Earns an order's points: a pending lot, then any tier upgrade the order's
/// spend brings. `points` was computed at the tier held before the order.
pub(crate) fn earn_order(
    member: &mut Member,
    event: &Event,
    order_id: &str,
    points: i64,
    cfg: &LoyaltyConfig,
    fx: &mut Effects,
) {
    let at = event.occurred_at;
    if points > 0 {
        let l = &mut member.loyalty;
        let (activates_at, expires_at) = (at + cfg.pending(), at + cfg.pending() + cfg.expiry());
        let mut w = Writer { event, fx };
        let seq = w.push(l, EntryKind::Earn, points, |e| {
            e.order_id = Some(order_id.to_owned());
            e.activates_at = Some(activates_at);
            e.expires_at = Some(expires_at);
        });
        l.earned += points;
        let paid = l.add_lot(Lot {
            seq,
            order_id: Some(order_id.to_owned()),
            channel: event.channel,
            points,
            remaining: points,
            activates_at,
            expires_at,
        });
        if paid > 0
            && let Some(entry) = fx.ledger.last_mut()
        {
            entry.reason = format!("{paid} points paid off the negative balance");
        }
    }
    tier::upgrade(member, at, cfg);
}

/// Takes back `points` of an order's earnings (a return or a cancellation):
/// from the order's own lot if it has not expired, then from other active
/// lots expiring first; the rest is a shortfall.
pub(crate) fn revoke(
    member: &mut Member,
    event: &Event,
    order_id: &str,
    points: i64,
    reason: &str,
    cfg: &LoyaltyConfig,
    fx: &mut Effects,
) {
    if points <= 0 {
        return;
    }
    let at = event.occurred_at;
    let l = &mut member.loyalty;
    let mut left = points;
    if let Some(own) = l.lots.find_mut(|lot| lot.order_id.as_deref() == Some(order_id) && at < lot.expires_at) {
        let n = own.remaining.min(left);
        own.remaining -= n;
        left -= n;
    }
    left -= l.take_active(left, at);
    l.shortfall(left, cfg);
    // A carried shortfall counts as revoked (it is owed); a written-off one does not.
    l.revoked += if cfg.negative_balance == NegativeBalance::Carry { points } else { points - left };
    let mut w = Writer { event, fx };
    w.push(l, EntryKind::Revoke, -points, |e| {
        e.order_id = Some(order_id.to_owned());
        e.reason = if left > 0 { format!("{reason}; {left} points short") } else { reason.to_owned() };
    });
}

/// The parts of a `pointsAdjusted` payload.
pub(crate) struct Adjustment<'a> {
    pub delta: i64,
    pub reason: &'a str,
    pub actor: &'a str,
    pub request_id: Option<&'a str>,
}

/// A manual adjustment: a positive delta is a lot active at once; a negative
/// one takes from active lots, expiring first, and the rest is a shortfall.
pub(crate) fn adjust(member: &mut Member, event: &Event, adj: &Adjustment<'_>, cfg: &LoyaltyConfig, fx: &mut Effects) {
    let Adjustment { delta, reason, actor, request_id } = *adj;
    let at = event.occurred_at;
    let l = &mut member.loyalty;
    let mut w = Writer { event, fx };
    let seq = w.push(l, EntryKind::Adjust, delta, |e| {
        e.reason = reason.to_owned();
        e.actor = actor.to_owned();
        e.request_id = request_id.map(str::to_owned);
        if delta > 0 {
            e.activates_at = Some(at);
            e.expires_at = Some(at + cfg.expiry());
        }
    });
    if delta > 0 {
        l.earned += delta;
        l.add_lot(Lot {
            seq,
            order_id: None,
            channel: event.channel,
            points: delta,
            remaining: delta,
            activates_at: at,
            expires_at: at + cfg.expiry(),
        });
    } else {
        let want = -delta;
        let left = want - l.take_active(want, at);
        l.shortfall(left, cfg);
        l.revoked += if cfg.negative_balance == NegativeBalance::Carry { want } else { want - left };
    }
    if let Some(request_id) = request_id {
        fx.verdict = Some(Verdict {
            request_id: request_id.to_owned(),
            kind: CommandKind::Adjust,
            status: VerdictStatus::Accepted,
            points: delta,
            reason: String::new(),
            event_id: event.event_id.clone(),
            at,
            seq: Some(seq),
        });
    }
}

/// A redemption: accepted if the points spendable at the event's time cover
/// it (spending lots that expire first), else rejected. Either way the
/// verdict is recorded.
pub(crate) fn redeem(
    member: &mut Member,
    event: &Event,
    request_id: &str,
    points: i64,
    reward: &str,
    fx: &mut Effects,
) {
    let at = event.occurred_at;
    let l = &mut member.loyalty;
    let spendable = l.spendable(at);
    let mut verdict = Verdict {
        request_id: request_id.to_owned(),
        kind: CommandKind::Redeem,
        status: VerdictStatus::Rejected,
        points,
        reason: String::new(),
        event_id: event.event_id.clone(),
        at,
        seq: None,
    };
    if spendable < points {
        verdict.reason = if l.negative > 0 {
            format!("insufficient points: {spendable} spendable ({} owed), {points} requested", l.negative)
        } else {
            format!("insufficient points: {spendable} active, {points} requested")
        };
    } else {
        let taken = l.take_active(points, at);
        debug_assert_eq!(taken, points);
        l.redeemed += points;
        let mut w = Writer { event, fx };
        let seq = w.push(l, EntryKind::Redeem, -points, |e| {
            e.reason = reward.to_owned();
            e.request_id = Some(request_id.to_owned());
        });
        verdict.status = VerdictStatus::Accepted;
        verdict.seq = Some(seq);
    }
    fx.verdict = Some(verdict);
}

/// Moves the loyalty clock to `at` and closes lots that expired by then,
/// writing their expiry entries.
pub(crate) fn advance(member: &mut Member, at: Millis, fx: &mut Effects) {
    let l = &mut member.loyalty;
    l.clock = l.clock.max(at);
    let clock = l.clock;
    // Lots are in expiry order: the first one says whether any expired, so
    // the usual event touches one lot, not a search through all of them
    // (a member's lots are rarely in the CPU's cache).
    if l.lots.first().is_none_or(|lot| lot.expires_at > clock) {
        return;
    }
    let closed = l.lots.partition_point(|lot| lot.expires_at <= clock);
    for lot in l.lots.drain_first(closed) {
        if lot.remaining > 0 {
            l.expired += lot.remaining;
            fx.ledger.push(expiry_entry(l.next_seq, &lot));
            l.next_seq += 1;
        }
    }
}

pub(crate) use tier::{tier_for_order, upgrade};

/// The tier held at `at`.
pub(crate) fn tier_at(member: &Member, at: Millis, cfg: &LoyaltyConfig) -> Tier {
    tier::standing_at(member, at, cfg).0
}

/// An order that joined from an anonymous or provisional profile.
pub(crate) struct JoinedOrder<'a> {
    pub order_id: &'a str,
    pub at: Millis,
    pub channel: Channel,
    pub points: i64,
    /// Already taken back by the order's returns.
    pub revoked: i64,
    /// The profile it came from.
    pub from: &'a str,
}

/// Earns a joined order's points as of its own time: a lot pending and
/// expiring from the order's time, less what its returns took back.
pub(crate) fn earn_joined(
    member: &mut Member,
    event: &Event,
    o: &JoinedOrder<'_>,
    cfg: &LoyaltyConfig,
    fx: &mut Effects,
) {
    if o.points <= 0 {
        return;
    }
    let l = &mut member.loyalty;
    let (activates_at, expires_at) = (o.at + cfg.pending(), o.at + cfg.pending() + cfg.expiry());
    let mut w = Writer { event, fx };
    let seq = w.push(l, EntryKind::Earn, o.points, |e| {
        e.at = o.at;
        e.order_id = Some(o.order_id.to_owned());
        e.channel = Some(o.channel);
        e.reason = format!("joined from {}", o.from);
        e.activates_at = Some(activates_at);
        e.expires_at = Some(expires_at);
    });
    l.earned += o.points;
    if o.revoked > 0 {
        w.push(l, EntryKind::Revoke, -o.revoked, |e| {
            e.at = o.at;
            e.order_id = Some(o.order_id.to_owned());
            e.channel = Some(o.channel);
            e.reason = "returned before joining".into();
        });
        l.revoked += o.revoked;
    }
    l.add_lot(Lot {
        seq,
        order_id: Some(o.order_id.to_owned()),
        channel: o.channel,
        points: o.points,
        remaining: o.points - o.revoked,
        activates_at,
        expires_at,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "a lot for ledger entry 7 is already held")]
    fn a_second_lot_under_one_ledger_entry_is_a_bug_not_a_loss() {
        let lot = Lot {
            seq: 7,
            order_id: None,
            channel: Channel::StorePos,
            points: 10,
            remaining: 10,
            activates_at: 0,
            expires_at: 100,
        };
        let mut l = Loyalty::default();
        l.insert_lot(lot.clone());
        l.insert_lot(Lot { points: 20, remaining: 20, ..lot });
    }
}
