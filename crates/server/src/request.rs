//! Requests validated into domain values. Every `INVALID_ARGUMENT` the
//! server sends is built here, with a message that says what to fix.

use omnifold_core::loyalty::EntryKind;
use omnifold_core::time::{MAX_EVENT_TIME, MIN_EVENT_TIME, from_timestamp};
use omnifold_core::{Channel, Identifier, LedgerEntry, Millis};
use omnifold_proto::v1 as proto;
use omnifold_proto::wkt::{FieldMask, Timestamp};

use crate::Error;
use crate::definitions::Change;
use omnifold_core::audience::AudienceConfig;

/// A member addressed by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAddress {
    /// A member id or an anonymous id: the aggregate's own key.
    Key(String),
    Identifier(Identifier),
}

impl TryFrom<Option<proto::MemberRef>> for MemberAddress {
    type Error = Error;

    fn try_from(r: Option<proto::MemberRef>) -> Result<Self, Error> {
        use proto::member_ref::Ref;
        let invalid = |m: &str| Error::InvalidArgument(m.to_owned());
        match r.and_then(|r| r.r#ref) {
            None => Err(invalid("member is required: set member.member_id, member.anonymous_id or member.identifier")),
            Some(Ref::MemberId(id)) | Some(Ref::AnonymousId(id)) => {
                let id = id.trim();
                if id.is_empty() {
                    Err(invalid("member id must not be empty"))
                } else if id.len() > 128 {
                    Err(invalid("member id must be at most 128 characters"))
                } else if id.contains('*') {
                    Err(masked("member id"))
                } else {
                    Ok(MemberAddress::Key(id.to_owned()))
                }
            }
            Some(Ref::Identifier(i)) if i.value.contains('*') => Err(masked("member.identifier.value")),
            Some(Ref::Identifier(i)) => Identifier::try_from(&i)
                .map(MemberAddress::Identifier)
                .map_err(|e| Error::InvalidArgument(format!("member.identifier: {e}"))),
        }
    }
}

/// The identifier of a `LookupIdentifier` request.
pub fn identifier_address(i: Option<proto::Identifier>) -> Result<MemberAddress, Error> {
    let i = i.ok_or_else(|| {
        Error::InvalidArgument("identifier is required: {type, value}, e.g. {PHONE, \"+8613800000000\"}".into())
    })?;
    if i.value.contains('*') {
        return Err(masked("identifier.value"));
    }
    Identifier::try_from(&i)
        .map(MemberAddress::Identifier)
        .map_err(|e| Error::InvalidArgument(format!("identifier: {e}")))
}

/// A value that looks masked (privacy.rs) cannot address a member.
fn masked(field: &str) -> Error {
    Error::InvalidArgument(format!(
        "{field} looks masked (it holds `*`): a masked value addresses no one; read the clear value with the \
         profile:pii scope"
    ))
}

/// Top-level `Profile` fields a read mask may name.
pub const PROFILE_FIELDS: [&str; 17] = [
    "member_id",
    "kind",
    "identifiers",
    "aliases",
    "traits",
    "consents",
    "channels",
    "browse",
    "purchases",
    "loyalty",
    "version",
    "first_seen_at",
    "last_seen_at",
    "as_of",
    "enrolled_at",
    "merged_member_ids",
    "audiences",
];

/// A validated read mask: `None` means every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMask(Option<Vec<&'static str>>);

impl ReadMask {
    /// Every field.
    pub fn everything() -> ReadMask {
        ReadMask(None)
    }

    pub fn includes(&self, field: &str) -> bool {
        self.0.as_ref().is_none_or(|f| f.contains(&field))
    }

    /// Which of the member's books the fields asked for are drawn from:
    /// `loyalty` (lots, tier), `purchases` (windows) and `audiences` (their
    /// rules) read the dated spend and the open lots; no field needs the
    /// kept orders.
    pub(crate) fn books(&self) -> crate::Books {
        if self.includes("purchases") || self.includes("loyalty") || self.includes("audiences") {
            crate::Books::SpendAndLots
        } else {
            crate::Books::Skip
        }
    }
}

impl TryFrom<Option<FieldMask>> for ReadMask {
    type Error = Error;

    fn try_from(m: Option<FieldMask>) -> Result<Self, Error> {
        let Some(m) = m.filter(|m| !m.paths.is_empty()) else {
            return Ok(ReadMask(None));
        };
        let mut fields = Vec::with_capacity(m.paths.len());
        for p in &m.paths {
            // Accept the JSON (camelCase) spelling too.
            let snake: String = p
                .chars()
                .flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] })
                .collect();
            match PROFILE_FIELDS.iter().find(|f| **f == snake) {
                Some(f) => fields.push(*f),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "read_mask path `{p}` is not a Profile field; use any of: {}",
                        PROFILE_FIELDS.join(", ")
                    )));
                }
            }
        }
        Ok(ReadMask(Some(fields)))
    }
}

/// An instant from a request, or `default` when absent.
pub fn instant(field: &str, ts: Option<Timestamp>, default: Millis) -> Result<Millis, Error> {
    match ts {
        None => Ok(default),
        Some(ts) => {
            let ms = from_timestamp(&ts);
            if !(MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&ms) || !(0..1_000_000_000).contains(&ts.nanos) {
                return Err(Error::InvalidArgument(format!(
                    "{field} must be a valid time between 2000-01-01 and 2100-01-01"
                )));
            }
            Ok(ms)
        }
    }
}

/// The instant a read is for: the one the request names, else now.
#[derive(Debug, Clone, Copy)]
pub struct AsOf {
    pub at: Millis,
    /// The request named it. A read for now is answered from the stored
    /// state; only a named instant can ask for the past.
    pub asked: bool,
}

impl AsOf {
    pub fn from_request(ts: Option<Timestamp>, now: Millis) -> Result<AsOf, Error> {
        let asked = ts.is_some();
        Ok(AsOf { at: instant("as_of", ts, now)?, asked })
    }
}

/// Longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;
/// Longest reason, reward or actor accepted.
const MAX_TEXT: usize = 512;
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;

fn request_id(raw: &str) -> Result<String, Error> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(Error::InvalidArgument(
            "request_id is required: a key unique to this request, reused only when retrying it".into(),
        ));
    }
    if id.len() > MAX_REQUEST_ID {
        return Err(Error::InvalidArgument(format!("request_id must be at most {MAX_REQUEST_ID} characters")));
    }
    Ok(id.to_owned())
}

fn channel(field: &str, raw: i32) -> Result<Channel, Error> {
    Channel::from_proto(raw).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{field} is required: the sales channel making the request, e.g. MOBILE_APP or STORE_POS"
        ))
    })
}

fn short_text(field: &str, raw: &str, required: bool) -> Result<String, Error> {
    let t = raw.trim();
    if required && t.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if t.len() > MAX_TEXT {
        return Err(Error::InvalidArgument(format!("{field} must be at most {MAX_TEXT} bytes")));
    }
    Ok(t.to_owned())
}

/// A validated `RedeemPoints` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeem {
    pub member: MemberAddress,
    pub request_id: String,
    pub points: i64,
    pub channel: Channel,
    pub reward: String,
}

impl TryFrom<proto::RedeemPointsRequest> for Redeem {
    type Error = Error;

    fn try_from(r: proto::RedeemPointsRequest) -> Result<Self, Error> {
        let member = MemberAddress::try_from(r.member)?;
        let request_id = request_id(&r.request_id)?;
        if r.points <= 0 {
            return Err(Error::InvalidArgument(format!(
                "points must be a positive number to redeem, got {}",
                r.points
            )));
        }
        Ok(Redeem {
            member,
            request_id,
            points: r.points,
            channel: channel("channel", r.channel)?,
            reward: short_text("reward", &r.reward, false)?,
        })
    }
}

/// A validated `AdjustPoints` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjust {
    pub member: MemberAddress,
    pub request_id: String,
    pub delta: i64,
    pub reason: String,
    pub actor: String,
    pub channel: Channel,
}

impl TryFrom<proto::AdjustPointsRequest> for Adjust {
    type Error = Error;

    fn try_from(r: proto::AdjustPointsRequest) -> Result<Self, Error> {
        let member = MemberAddress::try_from(r.member)?;
        let request_id = request_id(&r.request_id)?;
        if r.delta == 0 {
            return Err(Error::InvalidArgument("delta must not be zero: points to add (>0) or take (<0)".into()));
        }
        Ok(Adjust {
            member,
            request_id,
            delta: r.delta,
            reason: short_text("reason", &r.reason, true)?,
            actor: short_text("actor", &r.actor, true)?,
            // Adjustments are usually made by staff tools; default to the call centre.
            channel: if r.channel == 0 { Channel::CallCenter } else { channel("channel", r.channel)? },
        })
    }
}

/// A validated `EraseMember` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub member: MemberAddress,
    pub request_id: String,
    pub reason: String,
}

impl TryFrom<proto::EraseMemberRequest> for Erasure {
    type Error = Error;

    fn try_from(r: proto::EraseMemberRequest) -> Result<Self, Error> {
        Ok(Erasure {
            member: MemberAddress::try_from(r.member)?,
            request_id: request_id(&r.request_id)?,
            reason: short_text("reason", &r.reason, false)?,
        })
    }
}

/// A validated `MergeMembers` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub from: String,
    pub into: String,
    pub request_id: String,
}

impl TryFrom<proto::MergeMembersRequest> for Merge {
    type Error = Error;

    fn try_from(r: proto::MergeMembersRequest) -> Result<Self, Error> {
        let id = |field: &str, raw: &str| {
            let t = raw.trim();
            if t.is_empty() || t.len() > 128 {
                Err(Error::InvalidArgument(format!("{field} is required (1 to 128 characters)")))
            } else {
                Ok(t.to_owned())
            }
        };
        let (from, into) = (id("from_member_id", &r.from_member_id)?, id("into_member_id", &r.into_member_id)?);
        if from == into {
            return Err(Error::InvalidArgument("from_member_id and into_member_id must differ".into()));
        }
        Ok(Merge { from, into, request_id: request_id(&r.request_id)? })
    }
}

/// A validated `ListLedger` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerQuery {
    pub member: MemberAddress,
    pub page_size: usize,
    /// List entries with a sequence number below this.
    pub before: Option<u64>,
    /// Empty: every kind.
    pub kinds: Vec<EntryKind>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
}

impl LedgerQuery {
    pub fn matches(&self, e: &LedgerEntry) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.from.is_none_or(|f| e.at >= f)
            && self.to.is_none_or(|t| e.at < t)
    }
}

const TOKEN_PREFIX: &str = "seq:";

pub fn page_token(next_seq: u64) -> String {
    format!("{TOKEN_PREFIX}{next_seq}")
}

impl TryFrom<proto::ListLedgerRequest> for LedgerQuery {
    type Error = Error;

    fn try_from(r: proto::ListLedgerRequest) -> Result<Self, Error> {
        let member = MemberAddress::try_from(r.member)?;
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 || n as usize > MAX_PAGE_SIZE => {
                return Err(Error::InvalidArgument(format!("page_size must be 1 to {MAX_PAGE_SIZE}, got {n}")));
            }
            n => n as usize,
        };
        let before = if r.page_token.is_empty() {
            None
        } else {
            let seq = r.page_token.strip_prefix(TOKEN_PREFIX).and_then(|s| s.parse::<u64>().ok());
            Some(seq.ok_or_else(|| {
                Error::InvalidArgument(
                    "page_token is not one this service issued; pass next_page_token from the previous answer".into(),
                )
            })?)
        };
        let kinds = r
            .kinds
            .iter()
            .map(|k| match proto::LedgerEntryKind::try_from(*k) {
                Ok(proto::LedgerEntryKind::Earn) => Ok(EntryKind::Earn),
                Ok(proto::LedgerEntryKind::Redeem) => Ok(EntryKind::Redeem),
                Ok(proto::LedgerEntryKind::Revoke) => Ok(EntryKind::Revoke),
                Ok(proto::LedgerEntryKind::Expire) => Ok(EntryKind::Expire),
                Ok(proto::LedgerEntryKind::Adjust) => Ok(EntryKind::Adjust),
                _ => Err(Error::InvalidArgument(format!(
                    "kinds: {k} is not a ledger entry kind; use EARN, REDEEM, REVOKE, EXPIRE or ADJUST"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let from = r.from.map(|t| instant("from", Some(t), 0)).transpose()?;
        let to = r.to.map(|t| instant("to", Some(t), 0)).transpose()?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(Error::InvalidArgument("from must be before to".into()));
        }
        Ok(LedgerQuery { member, page_size, before, kinds, from, to })
    }
}

/// A member address written as text (a URL path, a command line):
/// `TYPE:value` for an identifier (PHONE, EMAIL, LOYALTY_CARD, DEVICE_ID,
/// EXTERNAL), else a member or anonymous id.
pub fn member_ref(text: &str) -> proto::MemberRef {
    use proto::member_ref::Ref;
    if let Some((kind, value)) = text.split_once(':')
        && let Some(t) = proto::IdentifierType::from_str_name(kind)
    {
        let identifier = proto::Identifier { r#type: t as i32, value: value.to_owned() };
        return proto::MemberRef { r#ref: Some(Ref::Identifier(identifier)) };
    }
    proto::MemberRef { r#ref: Some(Ref::MemberId(text.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_comes_back_as_it_went_and_a_bad_one_says_what_to_do() {
        for after in [None, Some("m-1.with.dots".to_owned())] {
            let t = PageToken { listing: u128::MAX - 7, partition: 3, after };
            let r = proto::ListAudienceMembersRequest { name: "a".into(), page_size: 0, page_token: t.encode() };
            let page = AudiencePage::try_from(r).unwrap();
            assert_eq!((page.page_size, page.token), (DEFAULT_AUDIENCE_PAGE, Some(t)));
        }
        let bad = |page_size, page_token: &str| {
            let r = proto::ListAudienceMembersRequest { name: "a".into(), page_size, page_token: page_token.into() };
            AudiencePage::try_from(r).unwrap_err().to_string()
        };
        assert!(bad(0, "not-a-token").contains("page_token is not one this server gave"));
        assert!(bad(-1, "").contains("page_size must be 0 to 1000"));
        assert!(bad(1001, "").contains("page_size must be 0 to 1000"));
    }

    #[test]
    fn member_ref_is_required_and_checked() {
        let err = MemberAddress::try_from(None).unwrap_err().to_string();
        assert!(err.contains("member is required"), "{err}");
        let r = proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId("  ".into())) };
        assert!(MemberAddress::try_from(Some(r)).is_err());
        let r = proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId(" m-1 ".into())) };
        assert_eq!(MemberAddress::try_from(Some(r)).unwrap(), MemberAddress::Key("m-1".into()));
        let r = proto::MemberRef {
            r#ref: Some(proto::member_ref::Ref::Identifier(proto::Identifier { r#type: 1, value: "12".into() })),
        };
        let err = MemberAddress::try_from(Some(r)).unwrap_err().to_string();
        assert!(err.contains("E.164"), "{err}");
    }

    #[test]
    fn read_mask_names_valid_fields() {
        let mask =
            ReadMask::try_from(Some(FieldMask { paths: vec!["purchases".into(), "firstSeenAt".into()] })).unwrap();
        assert!(mask.includes("purchases") && mask.includes("first_seen_at") && !mask.includes("browse"));
        let err = ReadMask::try_from(Some(FieldMask { paths: vec!["purchase".into()] })).unwrap_err().to_string();
        assert!(err.contains("`purchase` is not a Profile field"), "{err}");
        assert!(ReadMask::try_from(None).unwrap().includes("browse"));
    }

    #[test]
    fn redeem_and_adjust_requests_say_what_to_fix() {
        let member = Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId("m-1".into())) });
        let ok = proto::RedeemPointsRequest {
            member: member.clone(),
            request_id: "r-1".into(),
            points: 100,
            channel: proto::Channel::MobileApp as i32,
            reward: "coupon".into(),
        };
        assert_eq!(Redeem::try_from(ok.clone()).unwrap().points, 100);
        let err = Redeem::try_from(proto::RedeemPointsRequest { points: 0, ..ok.clone() }).unwrap_err().to_string();
        assert!(err.contains("points must be a positive number"), "{err}");
        let err = Redeem::try_from(proto::RedeemPointsRequest { request_id: " ".into(), ..ok.clone() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("request_id is required"), "{err}");
        let err = Redeem::try_from(proto::RedeemPointsRequest { channel: 0, ..ok }).unwrap_err().to_string();
        assert!(err.contains("channel is required"), "{err}");
        let adjust = proto::AdjustPointsRequest {
            member,
            request_id: "a-1".into(),
            delta: 0,
            reason: "goodwill".into(),
            actor: "agent-7".into(),
            channel: 0,
        };
        let err = Adjust::try_from(adjust.clone()).unwrap_err().to_string();
        assert!(err.contains("delta must not be zero"), "{err}");
        let err = Adjust::try_from(proto::AdjustPointsRequest { delta: 5, actor: String::new(), ..adjust })
            .unwrap_err()
            .to_string();
        assert!(err.contains("actor is required"), "{err}");
    }

    #[test]
    fn ledger_query_checks_page_and_filters() {
        let member = Some(proto::MemberRef { r#ref: Some(proto::member_ref::Ref::MemberId("m-1".into())) });
        let q =
            LedgerQuery::try_from(proto::ListLedgerRequest { member: member.clone(), ..Default::default() }).unwrap();
        assert_eq!((q.page_size, q.before), (DEFAULT_PAGE_SIZE, None));
        let q = LedgerQuery::try_from(proto::ListLedgerRequest {
            member: member.clone(),
            page_token: page_token(17),
            kinds: vec![proto::LedgerEntryKind::Redeem as i32],
            ..Default::default()
        })
        .unwrap();
        assert_eq!((q.before, q.kinds), (Some(17), vec![EntryKind::Redeem]));
        for (bad, want) in [
            (proto::ListLedgerRequest { page_size: 501, ..Default::default() }, "page_size must be 1 to 500"),
            (proto::ListLedgerRequest { page_token: "17".into(), ..Default::default() }, "page_token is not one"),
            (proto::ListLedgerRequest { kinds: vec![9], ..Default::default() }, "not a ledger entry kind"),
        ] {
            let err = LedgerQuery::try_from(proto::ListLedgerRequest { member: member.clone(), ..bad })
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}

/// Members per page of `ListAudienceMembers` when the request says 0, and at most.
pub const DEFAULT_AUDIENCE_PAGE: usize = 100;
pub const MAX_AUDIENCE_PAGE: usize = 1_000;

/// A `ListAudienceMembers` request: which audience, how many, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudiencePage {
    pub name: String,
    pub page_size: usize,
    /// None: the first page of a new listing.
    pub token: Option<PageToken>,
}

/// Where a listing's next page starts: the listing, the index of the
/// partition among its partitions, and the last member sent there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub listing: u128,
    pub partition: usize,
    pub after: Option<String>,
}

impl PageToken {
    /// The token as the client sees it: opaque, URL-safe.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let text = format!("{:032x}.{}.{}", self.listing, self.partition, self.after.as_deref().unwrap_or(""));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(token: &str) -> Option<PageToken> {
        use base64::Engine;
        let text = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = text.splitn(3, '.');
        let listing = u128::from_str_radix(parts.next()?, 16).ok()?;
        let partition = parts.next()?.parse().ok()?;
        let after = parts.next()?;
        Some(PageToken { listing, partition, after: (!after.is_empty()).then(|| after.to_owned()) })
    }
}

/// An audience name as a request gives it.
pub fn audience_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::InvalidArgument("name is required: the audience's name (ListAudiences lists them)".into()));
    }
    if name.len() > 64 {
        return Err(Error::InvalidArgument("name must be at most 64 characters".into()));
    }
    Ok(name.to_owned())
}

impl TryFrom<proto::ListAudienceMembersRequest> for AudiencePage {
    type Error = Error;

    fn try_from(r: proto::ListAudienceMembersRequest) -> Result<Self, Error> {
        let name = audience_name(&r.name)?;
        let page_size = match usize::try_from(r.page_size) {
            Ok(0) => DEFAULT_AUDIENCE_PAGE,
            Ok(n) if n <= MAX_AUDIENCE_PAGE => n,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "page_size must be 0 to {MAX_AUDIENCE_PAGE} (0: {DEFAULT_AUDIENCE_PAGE}), got {}",
                    r.page_size
                )));
            }
        };
        let token = match r.page_token.as_str() {
            "" => None,
            t => Some(PageToken::decode(t).ok_or_else(|| {
                Error::InvalidArgument(
                    "page_token is not one this server gave: pass next_page_token as it came, or leave it empty to \
                     start again"
                        .into(),
                )
            })?),
        };
        Ok(AudiencePage { name, page_size, token })
    }
}

/// An audience name a definition request gives.
fn defined_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    omnifold_core::audience::check_name(name).map_err(Error::InvalidArgument)?;
    Ok(name.to_owned())
}

fn audience_config(rule: String, purpose: String, description: String) -> Result<AudienceConfig, Error> {
    if description.len() > omnifold_core::audience::MAX_DESCRIPTION_BYTES {
        return Err(Error::InvalidArgument(format!(
            "description must be at most {} bytes",
            omnifold_core::audience::MAX_DESCRIPTION_BYTES
        )));
    }
    Ok(AudienceConfig { rule, purpose: purpose.trim().to_owned(), description })
}

impl TryFrom<proto::CreateAudienceRequest> for Change {
    type Error = Error;

    fn try_from(r: proto::CreateAudienceRequest) -> Result<Self, Error> {
        let name = defined_name(&r.name)?;
        Ok(Change { name, config: audience_config(r.rule, r.purpose, r.description)?, deleted: false, on: None })
    }
}

impl TryFrom<proto::UpdateAudienceRequest> for Change {
    type Error = Error;

    fn try_from(r: proto::UpdateAudienceRequest) -> Result<Self, Error> {
        let name = defined_name(&r.name)?;
        let config = audience_config(r.rule, r.purpose, r.description)?;
        Ok(Change { name, config, deleted: false, on: Some(r.version) })
    }
}

impl TryFrom<proto::DeleteAudienceRequest> for Change {
    type Error = Error;

    fn try_from(r: proto::DeleteAudienceRequest) -> Result<Self, Error> {
        let name = defined_name(&r.name)?;
        Ok(Change { name, config: AudienceConfig::default(), deleted: true, on: Some(r.version) })
    }
}
