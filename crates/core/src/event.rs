//! Validated domain events, built from the wire type with
//! `TryFrom<proto::Event>`. Everything downstream of this module can rely on
//! the invariants checked here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::ident::Identifier;
use crate::join::{JoinedState, MAX_PARTS};
use crate::limits::Limits;
use crate::time::{self, Millis};
use omnifold_proto::v1 as proto;

pub const MAX_EVENT_ID_LEN: usize = 128;
const MAX_TEXT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Channel {
    OnlineWeb,
    MobileApp,
    MiniProgram,
    StorePos,
    Marketplace,
    CallCenter,
}

impl Channel {
    pub fn to_proto(self) -> proto::Channel {
        match self {
            Channel::OnlineWeb => proto::Channel::OnlineWeb,
            Channel::MobileApp => proto::Channel::MobileApp,
            Channel::MiniProgram => proto::Channel::MiniProgram,
            Channel::StorePos => proto::Channel::StorePos,
            Channel::Marketplace => proto::Channel::Marketplace,
            Channel::CallCenter => proto::Channel::CallCenter,
        }
    }

    pub fn from_proto(value: i32) -> Option<Channel> {
        match proto::Channel::try_from(value).ok()? {
            proto::Channel::OnlineWeb => Some(Channel::OnlineWeb),
            proto::Channel::MobileApp => Some(Channel::MobileApp),
            proto::Channel::MiniProgram => Some(Channel::MiniProgram),
            proto::Channel::StorePos => Some(Channel::StorePos),
            proto::Channel::Marketplace => Some(Channel::Marketplace),
            proto::Channel::CallCenter => Some(Channel::CallCenter),
            proto::Channel::Unspecified => None,
        }
    }

    /// The channel's contract name, for example `MOBILE_APP`.
    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::from_proto(proto::Channel::from_str_name(name)? as i32)
    }

    pub fn name(self) -> &'static str {
        self.to_proto().as_str_name()
    }
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub member_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub identifiers: Vec<Identifier>,
}

impl Subject {
    /// The Kafka record key and the aggregate's key: the member id, else the
    /// anonymous id, else the first identifier as `TYPE:value`.
    pub fn key(&self) -> String {
        if let Some(m) = &self.member_id {
            m.clone()
        } else if let Some(a) = &self.anonymous_id {
            a.clone()
        } else {
            // Validation guarantees at least one identifier here.
            self.identifiers[0].key()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub category: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnLine {
    pub sku: String,
    pub quantity: u32,
}

/// What a return gives back: lines priced from the order, or an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    Lines(Vec<ReturnLine>),
    Amount(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    ProductViewed {
        sku: String,
        category: String,
        price_minor: i64,
    },
    SearchPerformed {
        query: String,
    },
    CartUpdated {
        cart_id: String,
        lines: Vec<Line>,
    },
    OrderPlaced {
        order_id: String,
        currency: String,
        lines: Vec<Line>,
        total_minor: i64,
    },
    OrderReturned {
        order_id: String,
        return_id: String,
        returned: Returned,
    },
    OrderCancelled {
        order_id: String,
        reason: String,
    },
    MemberEnrolled {
        program: String,
    },
    ProfileUpdated {
        traits: BTreeMap<String, String>,
    },
    ConsentChanged {
        purpose: String,
        granted: bool,
    },
    IdentityLinked {
        anonymous_id: Option<String>,
        identifiers: Vec<Identifier>,
    },
    MembersMerged {
        from_member_id: String,
        into_member_id: String,
    },
    PointsAdjusted {
        delta: i64,
        reason: String,
        actor: String,
        request_id: Option<String>,
    },
    PointsRedemptionRequested {
        request_id: String,
        points: i64,
        reward: String,
    },
    ErasureRequested {
        reason: String,
        /// The erasure job's id: decided once per member, like a command's.
        request_id: Option<String>,
    },
    /// Internal: `member_id` claims this event's subject key.
    IdentityClaimed {
        member_id: String,
        merge: bool,
        cause_event_id: String,
    },
    /// Internal: `from_key` now routes to this event's member. When it had a
    /// profile, its state arrived ahead in `parts` `ProfileJoinPart`s; the
    /// ingest puts them together into `state` before the fold sees the join.
    ProfileJoined {
        from_key: String,
        from_kind: KeyKind,
        identifier: Option<Identifier>,
        parts: u32,
        digest: Vec<u8>,
        state: Option<Box<JoinedState>>,
    },
    /// Internal: one piece of a join's state (kept until the join arrives).
    ProfileJoinPart {
        join_id: String,
        index: u32,
        data: Vec<u8>,
    },
    /// Internal: `member_id` was erased; this event's key, which it held,
    /// forgets it (its route and its own profile are deleted).
    KeyErased {
        member_id: String,
        cause_event_id: String,
    },
    /// Internal: evaluate the partition's next `members` members against
    /// every audience; with `audiences`, start a new pass for them first.
    AudienceBackfill {
        audiences: Vec<String>,
        members: u32,
    },
    /// Internal: an audience defined, changed or deleted through `AdminService`.
    AudienceDefined(crate::audience::Definition),
}

/// The most members one `audienceBackfill` record evaluates.
pub const MAX_BACKFILL_MEMBERS: u32 = 100_000;

/// What kind of subject key a profile is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    Member,
    Anonymous,
    Identifier,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Member => "member",
            KeyKind::Anonymous => "anonymous",
            KeyKind::Identifier => "identifier",
        }
    }

    fn from_name(name: &str) -> Option<KeyKind> {
        [KeyKind::Member, KeyKind::Anonymous, KeyKind::Identifier].into_iter().find(|k| k.name() == name)
    }
}

/// The prefix of the keys under which omnifold remembers erased keys (an
/// HMAC of the key): no subject may use it.
pub const ERASED_PREFIX: &str = "erased:";

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub occurred_at: Millis,
    pub channel: Channel,
    pub store_id: Option<String>,
    pub subject: Subject,
    pub payload: Payload,
}

impl Event {
    /// Whether only omnifold may write this event (identity claims, joins
    /// and their parts): it must carry omnifold's signature.
    pub fn is_internal(&self) -> bool {
        matches!(
            self.payload,
            Payload::IdentityClaimed { .. }
                | Payload::ProfileJoined { .. }
                | Payload::ProfileJoinPart { .. }
                | Payload::KeyErased { .. }
                | Payload::AudienceBackfill { .. }
                | Payload::AudienceDefined(_)
        )
    }

    /// The idempotency key of a points command: redemptions always have
    /// one, adjustments may. One request id is decided once per member.
    pub fn request_id(&self) -> Option<&str> {
        match &self.payload {
            Payload::PointsRedemptionRequested { request_id, .. } => Some(request_id),
            Payload::PointsAdjusted { request_id, .. } => request_id.as_deref(),
            Payload::ErasureRequested { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// `s` without surrounding whitespace, in the same allocation: the decoded
/// wire type's strings move into the domain event instead of being copied.
fn trimmed(mut s: String) -> String {
    s.truncate(s.trim_end().len());
    let start = s.len() - s.trim_start().len();
    s.drain(..start);
    s
}

fn text(field: &'static str, s: String, required: bool) -> Result<String, Error> {
    let t = trimmed(s);
    if required && t.is_empty() {
        return Err(Error::Missing(field));
    }
    if t.len() > MAX_TEXT {
        return Err(Error::invalid(field, format!("longer than {MAX_TEXT} bytes")));
    }
    Ok(t)
}

fn opt_text(field: &'static str, s: String) -> Result<Option<String>, Error> {
    let t = text(field, s, false)?;
    Ok(if t.is_empty() { None } else { Some(t) })
}

fn currency(field: &'static str, c: &str) -> Result<String, Error> {
    let c = c.trim();
    if c.is_empty() {
        return Err(Error::Missing(field));
    }
    if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Error::invalid(field, format!("`{c}` is not an ISO 4217 code like CNY")));
    }
    Ok(c.to_ascii_uppercase())
}

/// Order or cart lines, each within the limits, and their list value.
fn lines(
    field: &'static str,
    limits: &Limits,
    raw: impl ExactSizeIterator<Item = (String, String, i32, i64)>,
) -> Result<(Vec<Line>, i64), Error> {
    limits.lines(field, raw.len())?;
    let mut list: i128 = 0;
    let lines = raw
        .map(|(sku, category, q, price)| {
            let line = Line {
                sku: text("lines.sku", sku, true)?,
                category: text("lines.category", category, false)?,
                quantity: limits.quantity("lines.quantity", q)?,
                unit_price_minor: limits.amount("lines.unitPriceMinor", price)?,
            };
            list += i128::from(line.unit_price_minor) * i128::from(line.quantity);
            Ok(line)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok((lines, limits.list_value(field, list)?))
}

impl TryFrom<proto::Event> for Event {
    type Error = Error;

    /// Validates with the default [`Limits`]; ingest uses the configured ones.
    fn try_from(e: proto::Event) -> Result<Self, Error> {
        Event::validate(e, &Limits::default())
    }
}

impl Event {
    /// Builds a valid event from the wire type, or says which field is wrong.
    pub fn validate(e: proto::Event, limits: &Limits) -> Result<Self, Error> {
        let event_id = trimmed(e.event_id);
        if event_id.is_empty() {
            return Err(Error::Missing("eventId"));
        }
        if event_id.len() > MAX_EVENT_ID_LEN {
            return Err(Error::invalid("eventId", format!("longer than {MAX_EVENT_ID_LEN} characters")));
        }
        if event_id.chars().any(char::is_control) {
            return Err(Error::invalid("eventId", "must not contain control characters"));
        }
        let occurred_at = time::from_timestamp(e.occurred_at.as_ref().ok_or(Error::Missing("occurredAt"))?);
        if !(time::MIN_EVENT_TIME..time::MAX_EVENT_TIME).contains(&occurred_at) {
            return Err(Error::invalid("occurredAt", "must be between 2000-01-01 and 2100-01-01"));
        }
        let channel = Channel::from_proto(e.channel).ok_or_else(|| {
            if e.channel == 0 {
                Error::Missing("channel")
            } else {
                Error::invalid("channel", format!("unknown channel {}", e.channel))
            }
        })?;
        let store_id = opt_text("storeId", e.store_id)?;
        let s = e.subject.ok_or(Error::Missing("subject"))?;
        let identifiers = s.identifiers.iter().map(Identifier::try_from).collect::<Result<Vec<_>, _>>()?;
        let subject = Subject {
            member_id: opt_text("subject.memberId", s.member_id)?,
            anonymous_id: opt_text("subject.anonymousId", s.anonymous_id)?,
            identifiers,
        };
        if subject.member_id.is_none() && subject.anonymous_id.is_none() && subject.identifiers.is_empty() {
            return Err(Error::invalid("subject", "needs memberId, anonymousId or an identifier"));
        }
        for (field, id) in [("subject.memberId", &subject.member_id), ("subject.anonymousId", &subject.anonymous_id)] {
            if id.as_deref().is_some_and(|i| i.starts_with(ERASED_PREFIX)) {
                return Err(Error::invalid(
                    field,
                    format!("must not start with `{ERASED_PREFIX}` (omnifold's own keys)"),
                ));
            }
        }
        use proto::event::Payload as P;
        let payload = match e.payload.ok_or(Error::Missing("payload"))? {
            P::ProductViewed(p) => Payload::ProductViewed {
                sku: text("productViewed.sku", p.sku, true)?,
                category: text("productViewed.category", p.category, false)?,
                price_minor: limits.amount("productViewed.priceMinor", p.price_minor)?,
            },
            P::SearchPerformed(p) => Payload::SearchPerformed { query: text("searchPerformed.query", p.query, true)? },
            P::CartUpdated(p) => Payload::CartUpdated {
                cart_id: text("cartUpdated.cartId", p.cart_id, false)?,
                lines: lines(
                    "cartUpdated.lines",
                    limits,
                    p.lines.into_iter().map(|l| (l.sku, l.category, l.quantity, l.unit_price_minor)),
                )?
                .0,
            },
            P::OrderPlaced(p) => {
                let (lines, _) = lines(
                    "orderPlaced.lines",
                    limits,
                    p.lines.into_iter().map(|l| (l.sku, l.category, l.quantity, l.unit_price_minor)),
                )?;
                let total_minor = limits.amount("orderPlaced.totalMinor", p.total_minor)?;
                if lines.is_empty() && total_minor == 0 {
                    return Err(Error::invalid("orderPlaced", "needs lines or a totalMinor"));
                }
                Payload::OrderPlaced {
                    order_id: text("orderPlaced.orderId", p.order_id, true)?,
                    currency: currency("orderPlaced.currency", &p.currency)?,
                    lines,
                    total_minor,
                }
            }
            P::OrderReturned(p) => {
                let returned = if !p.lines.is_empty() {
                    if p.amount_minor != 0 {
                        return Err(Error::invalid("orderReturned", "give lines or amountMinor, not both"));
                    }
                    limits.lines("orderReturned.lines", p.lines.len())?;
                    Returned::Lines(
                        p.lines
                            .into_iter()
                            .map(|l| {
                                Ok(ReturnLine {
                                    sku: text("orderReturned.lines.sku", l.sku, true)?,
                                    quantity: limits.quantity("orderReturned.lines.quantity", l.quantity)?,
                                })
                            })
                            .collect::<Result<_, Error>>()?,
                    )
                } else if p.amount_minor > 0 {
                    Returned::Amount(limits.amount("orderReturned.amountMinor", p.amount_minor)?)
                } else {
                    return Err(Error::invalid("orderReturned", "needs lines or a positive amountMinor"));
                };
                Payload::OrderReturned {
                    order_id: text("orderReturned.orderId", p.order_id, true)?,
                    return_id: text("orderReturned.returnId", p.return_id, true)?,
                    returned,
                }
            }
            P::OrderCancelled(p) => Payload::OrderCancelled {
                order_id: text("orderCancelled.orderId", p.order_id, true)?,
                reason: text("orderCancelled.reason", p.reason, false)?,
            },
            P::MemberEnrolled(p) => {
                Payload::MemberEnrolled { program: text("memberEnrolled.program", p.program, false)? }
            }
            P::ProfileUpdated(p) => {
                let mut traits = BTreeMap::new();
                for (k, v) in p.traits {
                    traits.insert(text("profileUpdated.traits", k, true)?, text("profileUpdated.traits", v, false)?);
                }
                Payload::ProfileUpdated { traits }
            }
            P::ConsentChanged(p) => Payload::ConsentChanged {
                purpose: text("consentChanged.purpose", p.purpose, true)?,
                granted: p.granted,
            },
            P::IdentityLinked(p) => {
                let anonymous_id = opt_text("identityLinked.anonymousId", p.anonymous_id)?;
                let identifiers = p.identifiers.iter().map(Identifier::try_from).collect::<Result<Vec<_>, _>>()?;
                if subject.member_id.is_none() {
                    return Err(Error::invalid("subject.memberId", "identityLinked needs the member it links to"));
                }
                if anonymous_id.is_none() && identifiers.is_empty() {
                    return Err(Error::invalid("identityLinked", "needs an anonymousId or identifiers to link"));
                }
                Payload::IdentityLinked { anonymous_id, identifiers }
            }
            P::MembersMerged(p) => {
                let into_member_id = text("membersMerged.intoMemberId", p.into_member_id, true)?;
                if subject.member_id.as_deref() != Some(into_member_id.as_str()) {
                    return Err(Error::invalid(
                        "subject.memberId",
                        "membersMerged is sent for the surviving member: set subject.memberId to intoMemberId",
                    ));
                }
                Payload::MembersMerged {
                    from_member_id: text("membersMerged.fromMemberId", p.from_member_id, true)?,
                    into_member_id,
                }
            }
            P::PointsAdjusted(p) => Payload::PointsAdjusted {
                delta: limits.points("pointsAdjusted.delta", p.delta)?,
                reason: text("pointsAdjusted.reason", p.reason, true)?,
                actor: text("pointsAdjusted.actor", p.actor, true)?,
                request_id: opt_text("pointsAdjusted.requestId", p.request_id)?,
            },
            P::PointsRedemptionRequested(p) => {
                if p.points <= 0 {
                    return Err(Error::invalid("pointsRedemptionRequested.points", "must be positive"));
                }
                Payload::PointsRedemptionRequested {
                    request_id: text("pointsRedemptionRequested.requestId", p.request_id, true)?,
                    points: limits.points("pointsRedemptionRequested.points", p.points)?,
                    reward: text("pointsRedemptionRequested.reward", p.reward, false)?,
                }
            }
            P::ErasureRequested(p) => Payload::ErasureRequested {
                reason: text("erasureRequested.reason", p.reason, false)?,
                request_id: opt_text("erasureRequested.requestId", p.request_id)?,
            },
            P::KeyErased(p) => Payload::KeyErased {
                member_id: text("keyErased.memberId", p.member_id, true)?,
                cause_event_id: text("keyErased.causeEventId", p.cause_event_id, false)?,
            },
            P::AudienceBackfill(p) => {
                if p.members == 0 || p.members > MAX_BACKFILL_MEMBERS {
                    return Err(Error::invalid(
                        "audienceBackfill.members",
                        format!("must be 1 to {MAX_BACKFILL_MEMBERS}"),
                    ));
                }
                if p.audiences.len() > crate::audience::MAX_AUDIENCES * 2 {
                    return Err(Error::invalid("audienceBackfill.audiences", "too many audiences"));
                }
                let audiences = p
                    .audiences
                    .into_iter()
                    .map(|a| text("audienceBackfill.audiences", a, true))
                    .collect::<Result<Vec<_>, _>>()?;
                Payload::AudienceBackfill { audiences, members: p.members }
            }
            P::AudienceDefined(p) => {
                let name = text("audienceDefined.name", p.name, true)?;
                crate::audience::check_name(&name).map_err(|e| Error::invalid("audienceDefined.name", e))?;
                if p.version == 0 {
                    return Err(Error::invalid("audienceDefined.version", "must be at least 1"));
                }
                if p.rule.chars().count() > crate::audience::MAX_RULE_CHARS
                    || p.description.len() > crate::audience::MAX_DESCRIPTION_BYTES
                {
                    return Err(Error::invalid("audienceDefined.rule", "too long"));
                }
                let config = crate::audience::AudienceConfig {
                    rule: p.rule,
                    purpose: text("audienceDefined.purpose", p.purpose, false)?,
                    description: p.description,
                };
                Payload::AudienceDefined(crate::audience::Definition {
                    name,
                    config,
                    version: p.version,
                    deleted: p.deleted,
                })
            }
            P::IdentityClaimed(p) => Payload::IdentityClaimed {
                member_id: text("identityClaimed.memberId", p.member_id, true)?,
                merge: p.merge,
                cause_event_id: text("identityClaimed.causeEventId", p.cause_event_id, false)?,
            },
            P::ProfileJoined(p) => {
                if subject.member_id.is_none() {
                    return Err(Error::invalid("subject.memberId", "profileJoined needs the member it joins"));
                }
                let from_kind = KeyKind::from_name(&p.from_kind).ok_or_else(|| {
                    Error::invalid("profileJoined.fromKind", "must be anonymous, identifier or member")
                })?;
                if p.parts > MAX_PARTS {
                    return Err(Error::invalid("profileJoined.parts", format!("more than {MAX_PARTS}")));
                }
                Payload::ProfileJoined {
                    from_key: text("profileJoined.fromKey", p.from_key, true)?,
                    from_kind,
                    identifier: p.identifier.as_ref().map(Identifier::try_from).transpose()?,
                    parts: p.parts,
                    digest: p.digest,
                    state: None,
                }
            }
            P::ProfileJoinPart(p) => {
                if subject.member_id.is_none() {
                    return Err(Error::invalid("subject.memberId", "profileJoinPart needs the member it joins"));
                }
                if p.index >= MAX_PARTS {
                    return Err(Error::invalid("profileJoinPart.index", format!("at most {MAX_PARTS}")));
                }
                Payload::ProfileJoinPart {
                    join_id: text("profileJoinPart.joinId", p.join_id, true)?,
                    index: p.index,
                    data: p.data,
                }
            }
        };
        Ok(Event { event_id, occurred_at, channel, store_id, subject, payload })
    }
}
