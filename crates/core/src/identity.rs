//! Identity resolution in the fold: members claim anonymous ids, identifiers
//! and (by merging) other members; the partition that owns a claimed key
//! decides, turns the key into a route to the member, and sends the key's
//! history to the member, which combines it. The rules are in
//! `docs/identity.md`.
//!
//! Everything travels as events on the events topic, keyed like any other:
//! a claim is folded in order with the claimed key's own events, so exactly
//! the events before it join the member and every later one is forwarded.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::config::FoldConfig;
use crate::effects::{Effects, Outgoing};
use crate::event::{Event, KeyKind, Line};
use crate::ident::{IdType, Identifier};
use crate::loyalty::{self, LedgerEntry, collects_points};
use crate::member::{Member, ProfileKind, RecentProduct};
use crate::profile::{bump_category, prune_history, sum};
use crate::time::to_timestamp;
use crate::{Error, Rejection};
use omnifold_proto::v1 as proto;

/// What happens when a member links a unique identifier another member holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// The link is refused into the dead-letter topic with the reason.
    #[default]
    Reject,
    /// The linking member is merged into the holder.
    Merge,
}

/// `[fold.identity]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Identifier types a single member at most may hold (`PHONE`, `EMAIL`,
    /// `LOYALTY_CARD`, `DEVICE_ID`, `EXTERNAL`). A key of another type that a
    /// second member links becomes shared and routes nowhere.
    pub unique_types: Vec<String>,
    pub on_conflict: OnConflict,
    /// Most members that can be merged into one; more are refused, so a
    /// runaway producer cannot glue a crowd into one profile.
    pub max_merged_members: usize,
    #[serde(skip)]
    unique: BTreeSet<IdType>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            unique_types: ["PHONE", "EMAIL", "LOYALTY_CARD", "EXTERNAL"].map(String::from).to_vec(),
            on_conflict: OnConflict::Reject,
            max_merged_members: 20,
            unique: BTreeSet::new(),
        }
    }
}

impl IdentityConfig {
    pub(crate) fn validate(mut self) -> Result<Self, Error> {
        self.unique = BTreeSet::new();
        for name in &self.unique_types {
            let t = [IdType::Phone, IdType::Email, IdType::LoyaltyCard, IdType::DeviceId, IdType::External]
                .into_iter()
                .find(|t| t.as_str() == name.as_str())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "identity: unique_types: unknown type `{name}`; use PHONE, EMAIL, LOYALTY_CARD, DEVICE_ID or \
                         EXTERNAL"
                    ))
                })?;
            self.unique.insert(t);
        }
        if !(1..=10_000).contains(&self.max_merged_members) {
            return Err(Error::Config(format!(
                "identity: max_merged_members must be 1 to 10000, got {}",
                self.max_merged_members
            )));
        }
        Ok(self)
    }

    pub fn is_unique(&self, t: IdType) -> bool {
        self.unique.contains(&t)
    }
}

/// A key a member can claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    Anonymous(String),
    Identifier(Identifier),
    Member(String),
}

impl Claimed {
    fn key(&self) -> String {
        match self {
            Claimed::Anonymous(a) | Claimed::Member(a) => a.clone(),
            Claimed::Identifier(i) => i.key(),
        }
    }

    fn subject(&self) -> proto::Subject {
        match self {
            Claimed::Anonymous(a) => proto::Subject { anonymous_id: a.clone(), ..Default::default() },
            Claimed::Member(m) => proto::Subject { member_id: m.clone(), ..Default::default() },
            Claimed::Identifier(i) => proto::Subject { identifiers: vec![wire_identifier(i)], ..Default::default() },
        }
    }
}

fn wire_identifier(i: &Identifier) -> proto::Identifier {
    proto::Identifier { r#type: i.kind.to_proto() as i32, value: i.value.clone() }
}

/// The id of an event omnifold writes because of `cause`: the same cause
/// gives the same id, so a re-sent event is dropped by the dedupe.
pub fn derived_event_id(prefix: &str, cause: &str, key: &str) -> String {
    let h = xxh3_128(format!("{cause}\0{key}").as_bytes());
    format!("{prefix}-{h:032x}")
}

/// The claims the fold sends for `event` at member `member`: every
/// anonymous id and identifier it names that the member does not hold yet.
pub(crate) fn claims_of(member: &Member, event: &Event, extra: &[Claimed]) -> Vec<Claimed> {
    let mut out: Vec<Claimed> = extra.to_vec();
    if let Some(anon) = &event.subject.anonymous_id {
        out.push(Claimed::Anonymous(anon.clone()));
    }
    out.extend(event.subject.identifiers.iter().cloned().map(Claimed::Identifier));
    let mut seen = BTreeSet::new();
    out.retain(|c| {
        let new = match c {
            Claimed::Anonymous(a) => !member.aliases.contains(a),
            Claimed::Identifier(i) => !member.identifiers.contains(i),
            Claimed::Member(m) => !member.aliases.contains(m),
        };
        new && *c != Claimed::Member(member.key.clone()) && seen.insert(c.key())
    });
    out
}

/// Sends a claim of `target` by `member`, caused by `event`.
pub(crate) fn claim(member: &Member, event: &Event, target: &Claimed, merge: bool) -> Outgoing {
    let key = target.key();
    Outgoing {
        event: proto::Event {
            event_id: derived_event_id("claim", &event.event_id, &key),
            occurred_at: Some(to_timestamp(event.occurred_at)),
            channel: event.channel.to_proto() as i32,
            store_id: String::new(),
            subject: Some(target.subject()),
            payload: Some(proto::event::Payload::IdentityClaimed(proto::IdentityClaimed {
                member_id: member.key.clone(),
                merge,
                cause_event_id: event.event_id.clone(),
            })),
        },
        key,
        join: None,
    }
}

fn joined(
    event: &Event,
    member_id: &str,
    profile_key: &str,
    kind: KeyKind,
    identifier: Option<&Identifier>,
    profile: Option<Box<Member>>,
) -> Outgoing {
    Outgoing {
        key: member_id.to_owned(),
        event: proto::Event {
            event_id: derived_event_id("joined", &event.event_id, profile_key),
            occurred_at: Some(to_timestamp(event.occurred_at)),
            channel: event.channel.to_proto() as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { member_id: member_id.to_owned(), ..Default::default() }),
            payload: Some(proto::event::Payload::ProfileJoined(proto::ProfileJoined {
                from_key: profile_key.to_owned(),
                identifier: identifier.map(wire_identifier),
                from_kind: kind.name().to_owned(),
                // Set by the ingest when it cuts the profile's state into parts.
                parts: 0,
                digest: Vec::new(),
            })),
        },
        join: profile,
    }
}

/// The kind of key an event's subject is stored under.
pub(crate) fn key_kind(event: &Event) -> KeyKind {
    if event.subject.member_id.is_some() {
        KeyKind::Member
    } else if event.subject.anonymous_id.is_some() {
        KeyKind::Anonymous
    } else {
        KeyKind::Identifier
    }
}

/// A claim folded at the claimed key's own profile (`profile`).
pub(crate) fn on_claim(
    profile: &mut Member,
    event: &Event,
    member_id: &str,
    merge: bool,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let out = &mut fx.outbox;
    let kind = key_kind(event);
    let identifier = event.subject.identifiers.first().filter(|_| kind == KeyKind::Identifier);
    if profile.key == member_id {
        return Err(Rejection(format!("{member_id} cannot claim itself")));
    }
    if kind == KeyKind::Member && !merge {
        return Err(Rejection(format!("{} is a member id: members are combined with membersMerged", profile.key)));
    }
    if profile.shared {
        // A shared device: the member lists it, but it routes nowhere.
        out.push(joined(event, member_id, &profile.key, kind, identifier, None));
        return Ok(());
    }
    match profile.routes_to.as_deref() {
        Some(to) if to == member_id => {
            // Already the member's: confirm again (the member may have
            // forgotten it, after an erasure), with no history to carry.
            out.push(joined(event, member_id, &profile.key, kind, identifier, None));
            return Ok(());
        }
        Some(to) if merge => return Err(Rejection(format!("member {} was already merged into {to}", profile.key))),
        Some(to) => {
            let unique = identifier.is_some_and(|i| cfg.identity.is_unique(i.kind));
            if !unique {
                profile.routes_to = None;
                profile.shared = true;
                out.push(joined(event, member_id, &profile.key, kind, identifier, None));
                fx.routes.push((profile.key.clone(), None));
                return Ok(());
            }
            return match cfg.identity.on_conflict {
                OnConflict::Reject => Err(Rejection(format!(
                    "{} belongs to member {to}; linking it to member {member_id} was refused",
                    profile.key
                ))),
                OnConflict::Merge => {
                    out.push(merge_request(to, event, member_id));
                    Ok(())
                }
            };
        }
        None => {}
    }
    // The key becomes a route; its history goes to the member.
    let mut stub = Member::new(profile.key.clone(), profile.kind);
    stub.routes_to = Some(member_id.to_owned());
    stub.version = profile.version;
    let old = std::mem::replace(profile, stub);
    let key = old.key.clone();
    let state = (old.version.events_applied > 0).then(|| Box::new(old));
    out.push(joined(event, member_id, &key, kind, identifier, state));
    fx.routes.push((key, Some(member_id.to_owned())));
    Ok(())
}

/// A `membersMerged` event for `into` (the holder) absorbing `from`.
fn merge_request(into: &str, event: &Event, from: &str) -> Outgoing {
    Outgoing {
        key: into.to_owned(),
        event: proto::Event {
            event_id: derived_event_id("merge", &event.event_id, from),
            occurred_at: Some(to_timestamp(event.occurred_at)),
            channel: event.channel.to_proto() as i32,
            store_id: String::new(),
            subject: Some(proto::Subject { member_id: into.to_owned(), ..Default::default() }),
            payload: Some(proto::event::Payload::MembersMerged(proto::MembersMerged {
                from_member_id: from.to_owned(),
                into_member_id: into.to_owned(),
            })),
        },
        join: None,
    }
}

/// `membersMerged` at the surviving member: claims the other member id.
pub(crate) fn on_merge_request(
    member: &mut Member,
    event: &Event,
    from: &str,
    cfg: &FoldConfig,
    out: &mut Vec<Outgoing>,
) -> Result<(), Rejection> {
    if from == member.key {
        return Err(Rejection(format!("cannot merge member {from} into itself")));
    }
    if member.merged_members.contains(from) {
        return Ok(());
    }
    if member.merged_members.len() >= cfg.identity.max_merged_members {
        return Err(Rejection(format!(
            "member {} already has {} members merged into it (identity.max_merged_members); merging {from} was refused",
            member.key,
            member.merged_members.len()
        )));
    }
    out.push(claim(member, event, &Claimed::Member(from.to_owned()), true));
    Ok(())
}

/// The parts of a `profileJoined` payload.
pub(crate) struct Joined<'a> {
    pub from_key: &'a str,
    pub from_kind: KeyKind,
    pub identifier: Option<&'a Identifier>,
    pub snapshot: Option<&'a Member>,
    pub ledger: &'a [LedgerEntry],
}

/// `profileJoined` at the member: the key now routes here; its history, if
/// any, is combined into the member.
pub(crate) fn on_joined(
    member: &mut Member,
    event: &Event,
    j: &Joined<'_>,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let Joined { from_key, from_kind, identifier, snapshot, ledger } = *j;
    // A key the member already holds brings nothing twice: a copy of a
    // join that was applied before (its state was combined then).
    let known = match (from_kind, identifier) {
        (KeyKind::Identifier, Some(i)) => member.identifiers.contains(i),
        _ => member.aliases.contains(from_key),
    };
    let snapshot = if known { None } else { snapshot };
    match (from_kind, identifier) {
        (KeyKind::Identifier, Some(i)) => {
            member.identifiers.insert(i.clone());
        }
        (KeyKind::Member, _) => {
            member.aliases.insert(from_key.to_owned());
            member.merged_members.insert(from_key.to_owned());
        }
        _ => {
            member.aliases.insert(from_key.to_owned());
        }
    }
    let Some(other) = snapshot else {
        return Ok(());
    };
    // Identifiers a non-member profile gathered were never claimed: claim them now.
    if other.kind != ProfileKind::KnownMember {
        let extra: Vec<Claimed> = other
            .identifiers
            .iter()
            .filter(|i| !member.identifiers.contains(*i))
            .cloned()
            .map(Claimed::Identifier)
            .collect();
        for c in extra {
            fx.outbox.push(claim(member, event, &c, false));
        }
    } else {
        member.identifiers.extend(other.identifiers.iter().cloned());
        member.merged_members.extend(other.merged_members.iter().cloned());
    }
    member.aliases.extend(other.aliases.iter().cloned());
    combine(member, other, event, ledger, cfg, fx)
}

/// Adds another profile's history to `member`.
fn combine(
    member: &mut Member,
    other: &Member,
    event: &Event,
    ledger: &[LedgerEntry],
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    for (k, v) in &other.traits {
        if member.traits.get(k).is_none_or(|old| old.older_than(v.at, &v.event_id)) {
            member.traits.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in &other.consents {
        if member.consents.get(k).is_none_or(|old| old.older_than(v.at, &v.event_id)) {
            member.consents.insert(k.clone(), v.clone());
        }
    }
    for (c, s) in &other.channels {
        let spend = member.channels.get(c).map_or(0, |m| m.spend_minor);
        let spend = sum(member, "channel spend", spend, s.spend_minor)?;
        let mine = member.channels.entry(*c).or_default();
        mine.events = mine.events.saturating_add(s.events);
        mine.orders = mine.orders.saturating_add(s.orders);
        mine.spend_minor = spend;
        mine.last_seen_at = mine.last_seen_at.max(s.last_seen_at);
    }
    combine_browse(member, other, cfg);
    let gross = sum(member, "gross spend", member.purchases.gross_minor, other.purchases.gross_minor)?;
    let returned = sum(member, "returned amount", member.purchases.returned_minor, other.purchases.returned_minor)?;
    let p = &mut member.purchases;
    let q = &other.purchases;
    p.orders = p.orders.saturating_add(q.orders);
    p.units = p.units.saturating_add(q.units);
    p.gross_minor = gross;
    p.returned_minor = returned;
    p.returns = p.returns.saturating_add(q.returns);
    p.cancelled = p.cancelled.saturating_add(q.cancelled);
    p.first_order_at = min_opt(p.first_order_at, q.first_order_at);
    p.last_order_at = p.last_order_at.max(q.last_order_at);
    for (s, n) in &q.stores {
        let mine = p.stores.entry(s.clone()).or_default();
        *mine = mine.saturating_add(*n);
    }
    let mut joined_orders = Vec::new();
    p.spend.merge(&q.spend);
    for o in q.history.iter() {
        if p.history.insert(o.clone()) {
            joined_orders.push(o.order_id.clone());
        } else if !o.cancelled && q.spend.has_mark(o.at) {
            // An order both had counts once, as this member holds it.
            p.spend.cancelled(o.at, o.net_program_minor());
        }
    }
    prune_history(member, cfg);
    member.first_seen_at = min_opt(member.first_seen_at, other.first_seen_at);
    member.last_seen_at = member.last_seen_at.max(other.last_seen_at);
    member.enrolled_at = min_opt(member.enrolled_at, other.enrolled_at);
    member.version.events_applied = member.version.events_applied.saturating_add(other.version.events_applied);
    if !collects_points(member) {
        return Ok(());
    }
    if other.kind == ProfileKind::KnownMember {
        combine_points(member, other, ledger, fx)?;
    } else {
        // Orders of an anonymous or provisional profile earn when it joins a
        // member: at the tier the member held when each occurred.
        for order_id in joined_orders {
            earn_joined_order(member, &order_id, &other.key, event, cfg, fx)?;
        }
    }
    loyalty::upgrade(member, event.occurred_at, &cfg.loyalty);
    Ok(())
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn combine_browse(member: &mut Member, other: &Member, cfg: &FoldConfig) {
    let b = &mut member.browse;
    let o = &other.browse;
    b.product_views = b.product_views.saturating_add(o.product_views);
    b.searches = b.searches.saturating_add(o.searches);
    b.cart_updates = b.cart_updates.saturating_add(o.cart_updates);
    let mut recent: BTreeMap<String, RecentProduct> = BTreeMap::new();
    for r in b.recent.iter().chain(&o.recent) {
        recent
            .entry(r.sku.clone())
            .and_modify(|e| {
                e.views = e.views.saturating_add(r.views);
                e.last_viewed_at = e.last_viewed_at.max(r.last_viewed_at);
                if e.category.is_empty() {
                    e.category = r.category.clone();
                }
            })
            .or_insert_with(|| r.clone());
    }
    let mut recent: Vec<RecentProduct> = recent.into_values().collect();
    recent.sort_by(|a, b| b.last_viewed_at.cmp(&a.last_viewed_at).then_with(|| a.sku.cmp(&b.sku)));
    recent.truncate(cfg.recent_products);
    b.recent = recent;
    let mut searches: BTreeMap<String, i64> = BTreeMap::new();
    for s in b.recent_searches.iter().chain(&o.recent_searches) {
        let at = searches.entry(s.query.clone()).or_insert(s.at);
        *at = (*at).max(s.at);
    }
    let mut searches: Vec<crate::member::RecentSearch> =
        searches.into_iter().map(|(query, at)| crate::member::RecentSearch { query, at }).collect();
    searches.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.query.cmp(&b.query)));
    searches.truncate(cfg.recent_searches);
    b.recent_searches = searches;
    for (name, c) in &o.categories {
        bump_category(member, name, c.views, c.units, cfg);
    }
}

/// A merged member's lots, totals and ledger, renumbered after the survivor's.
fn combine_points(
    member: &mut Member,
    other: &Member,
    ledger: &[LedgerEntry],
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let o = &other.loyalty;
    let totals = [
        sum(member, "points owed", member.loyalty.negative, o.negative)?,
        sum(member, "points earned", member.loyalty.earned, o.earned)?,
        sum(member, "points redeemed", member.loyalty.redeemed, o.redeemed)?,
        sum(member, "points revoked", member.loyalty.revoked, o.revoked)?,
        sum(member, "points expired", member.loyalty.expired, o.expired)?,
        sum(member, "points written off", member.loyalty.written_off, o.written_off)?,
    ];
    let l = &mut member.loyalty;
    let mut renumbered: BTreeMap<u64, u64> = BTreeMap::new();
    for e in ledger {
        let seq = l.next_seq;
        l.next_seq += 1;
        renumbered.insert(e.seq, seq);
        let mut e = e.clone();
        e.seq = seq;
        e.reason = if e.reason.is_empty() {
            format!("merged from {}", other.key)
        } else {
            format!("merged from {}: {}", other.key, e.reason)
        };
        fx.ledger.push(e);
    }
    for lot in &o.lots {
        let mut lot = lot.clone();
        lot.seq = match renumbered.get(&lot.seq) {
            Some(s) => *s,
            None => {
                l.next_seq += 1;
                l.next_seq - 1
            }
        };
        l.insert_lot(lot);
    }
    [l.negative, l.earned, l.redeemed, l.revoked, l.expired, l.written_off] = totals;
    l.clock = l.clock.max(o.clock);
    Ok(())
}

/// Earns the points of an order that joined from a non-member profile.
fn earn_joined_order(
    member: &mut Member,
    order_id: &str,
    from: &str,
    event: &Event,
    cfg: &FoldConfig,
    fx: &mut Effects,
) -> Result<(), Rejection> {
    let Some(order) = member.purchases.history.get(order_id) else {
        return Ok(());
    };
    if order.cancelled || order.points > 0 {
        return Ok(());
    }
    let lines: Vec<Line> = order
        .lines
        .iter()
        .map(|l| Line {
            sku: l.sku.clone(),
            category: l.category.clone(),
            quantity: l.quantity,
            unit_price_minor: l.unit_price_minor,
        })
        .collect();
    let (at, channel, total_program) = (order.at, order.channel, order.total_program_minor);
    let (returned, total) = (order.returned_minor, order.total_minor);
    let tier = loyalty::tier_at(member, at, &cfg.loyalty);
    let points = loyalty::order_points(total_program, &lines, channel, tier, &cfg.loyalty);
    loyalty::room(member, points.unsigned_abs())?;
    // At most `points`: returned never exceeds the order's total.
    let revoked = if total > 0 {
        (i128::from(points) * i128::from(returned.clamp(0, total)) / i128::from(total)) as i64
    } else {
        0
    };
    if let Some(o) = member.purchases.history.get_mut(order_id) {
        o.points = points;
        o.points_revoked = revoked;
    }
    let order = loyalty::JoinedOrder { order_id, at, channel, points, revoked, from };
    loyalty::earn_joined(member, event, &order, &cfg.loyalty, fx);
    Ok(())
}
