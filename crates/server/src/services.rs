//! The three omnifold services. Handlers validate (request.rs), read the
//! store, and convert (convert.rs); nothing else.

use tonic::{Request, Response, Status};

use omnifold_core::fold::{Position, apply};
use omnifold_core::identity::derived_event_id;
use omnifold_core::loyalty::report::Liability;
use omnifold_core::loyalty::{CommandKind, LoyaltyConfig, VerdictStatus};
use omnifold_core::member::ProfileKind;
use omnifold_core::time::{rfc3339, to_timestamp};
use omnifold_core::{Member, Millis, decode_event};
use omnifold_proto::v1 as proto;

use omnifold_proto::v1::admin_service_client::AdminServiceClient;
use omnifold_proto::v1::loyalty_service_client::LoyaltyServiceClient;
use omnifold_proto::v1::profile_service_client::ProfileServiceClient;

use crate::audit::{self, Audited};
use crate::auth;
use crate::commands::{self, Command, Outcome};
use crate::definitions::Change;
use crate::request::{
    Adjust, AsOf, Erasure, LedgerQuery, MemberAddress, Merge, ReadMask, Redeem, identifier_address, instant, page_token,
};
use crate::routing::{Hop, Route, Served, lag_behind};
use crate::{AppState, Books, Error, ReadCost, convert, now_millis, privacy};

/// Most members one `BatchGetProfiles` may ask for.
pub const MAX_BATCH: usize = 100;

/// A request's member, found by following routes: an identifier, an
/// anonymous id or a merged member id leads to the member it joined.
pub(crate) struct Resolved {
    pub member: Member,
    /// "member_id", "identifier", "anonymous_id" or "merged_member".
    pub via: &'static str,
    /// The keys followed, starting with the one asked for.
    pub path: Vec<String>,
}

/// Longest chain of routes followed (merges of merges).
const MAX_HOPS: usize = 16;

/// The member a key or identifier resolves to, its record only (kind,
/// routes, merges, version).
pub(crate) fn resolve(state: &AppState, addr: &MemberAddress) -> Result<Resolved, Error> {
    resolve_with(state, addr, Books::Skip)
}

/// `resolve`, loading the member's books only when asked to.
fn resolve_with(state: &AppState, addr: &MemberAddress, books: Books) -> Result<Resolved, Error> {
    let (mut key, asked) = match addr {
        MemberAddress::Key(k) => (k.clone(), "member"),
        MemberAddress::Identifier(i) => (i.key(), "identifier"),
    };
    let mut path: Vec<String> = Vec::new();
    let mut via = if matches!(addr, MemberAddress::Identifier(_)) { "identifier" } else { "member_id" };
    for _ in 0..MAX_HOPS {
        let loaded = match state.load(&key, books) {
            // Answered elsewhere: a key that joined a member here is
            // followed through the identity index instead of its record.
            Err(Error::Elsewhere(e)) => match state.store().index(&key)? {
                Some(next) => {
                    path.push(std::mem::replace(&mut key, next));
                    continue;
                }
                None => return Err(Error::Elsewhere(e)),
            },
            other => other?,
        };
        let m = loaded.ok_or_else(|| match path.first() {
            None => Error::NotFound(format!("no profile for {asked} `{key}`")),
            Some(first) => {
                Error::NotFound(format!("`{first}` routes to `{key}`, which has no profile yet; retry shortly"))
            }
        })?;
        if path.is_empty() {
            via = match (addr, m.kind, m.routes_to.is_some()) {
                (MemberAddress::Identifier(_), _, _) | (_, ProfileKind::Provisional, _) => "identifier",
                (_, ProfileKind::Anonymous, _) => "anonymous_id",
                (_, ProfileKind::KnownMember, true) => "merged_member",
                (_, ProfileKind::KnownMember, false) => "member_id",
            };
        }
        path.push(std::mem::take(&mut key));
        match &m.routes_to {
            Some(to) => key = to.clone(),
            // An erased member, or one the caller may not see, answers as a missing one.
            None if m.erased_at.is_some() || !visible(&m) => {
                return Err(Error::NotFound(format!("no profile for {asked} `{}`", path[0])));
            }
            None => return Ok(Resolved { member: m, via, path }),
        }
    }
    Err(Error::Unavailable(format!("`{}` routes through more than {MAX_HOPS} profiles", path[0])))
}

/// Whether the caller of this request may see `m`: a caller bound to a
/// purpose sees only members who granted it. A member it may not see
/// answers exactly as one that does not exist.
pub(crate) fn visible(m: &Member) -> bool {
    let caller = auth::caller();
    caller.purpose.as_ref().is_none_or(|p| m.consents.get(p).is_some_and(|c| c.value.granted))
}

/// The keys the identity index leads through from `start` (linked
/// identifiers, anonymous ids, merged members): `start` first, the member
/// it reaches last.
fn index_path(state: &AppState, start: String) -> Result<Vec<String>, Error> {
    let mut path = vec![start];
    while let Some(last) = path.last()
        && let Some(next) = state.store().index(last)?
    {
        if path.len() > MAX_HOPS {
            return Err(Error::Unavailable(format!("`{}` routes through more than {MAX_HOPS} keys", path[0])));
        }
        path.push(next);
    }
    Ok(path)
}

impl AppState {
    /// Where a request for `addr` goes: here, or forwarded to its owner.
    /// The partition is the one of the key the identity index leads to from
    /// the address (its own key when it leads nowhere).
    pub(crate) async fn route(&self, addr: &MemberAddress, hop: &Hop) -> Result<Route, Error> {
        let Some(routing) = &self.routing else {
            return Ok(Route::Here(Served::default()));
        };
        let start = match addr {
            MemberAddress::Key(k) => k.clone(),
            MemberAddress::Identifier(i) => i.key(),
        };
        let key = index_path(self, start)?.pop().unwrap_or_default();
        routing.route(self.partition(&key)?, hop, self.commands.as_ref().map(|c| &c.commits)).await
    }
}

/// Routes a request: evaluates to what it is answered with here, or
/// returns the owner's answer to it, sent with `$method` of `$client`.
macro_rules! route_or_forward {
    ($state:expr, $addr:expr, $hop:expr, $msg:expr, $client:ident, $method:ident) => {
        match $state.route($addr, $hop).await? {
            Route::Here(served) => served,
            Route::There(to) => {
                return to.send($msg, |c, req| async move { $client::new(c).$method(req).await }).await;
            }
        }
    };
}

/// Follows the identity index from an identifier to the member it routes
/// to, through merged members.
fn lookup_index(state: &AppState, addr: &MemberAddress) -> Result<Option<proto::LookupIdentifierResponse>, Error> {
    let MemberAddress::Identifier(i) = addr else {
        return Ok(None);
    };
    let path = index_path(state, i.key())?;
    if path.len() == 1 {
        return Ok(None);
    }
    Ok(Some(proto::LookupIdentifierResponse {
        member_id: path.last().cloned().unwrap_or_default(),
        resolved_via: "identifier".into(),
        path,
        kind: proto::ProfileKind::KnownMember as i32,
    }))
}

/// The member as of `when`: when events after that instant were folded,
/// the fold of exactly the kept events that occurred up to it, in log
/// order; otherwise the member as it stands (reads project it to the
/// instant). Identifiers, aliases and the version stay as they are now.
///
/// A named instant (`when.asked`) before the member's latest event is
/// answered exactly or refused with FAILED_PRECONDITION saying why (no
/// history kept, kept in part, pruned); an unnamed one (now) is answered
/// from the member as it stands when its events dated ahead of the
/// server's clock cannot be left out exactly.
fn as_of(state: &AppState, member: Member, when: AsOf) -> Result<Member, Error> {
    // The usual read (now, or after the latest event) touches nothing more.
    let Some(last) = member.last_seen_at.filter(|last| *last > when.at) else {
        return Ok(member);
    };
    match past_of(state, &member, when.at, last) {
        Ok(mut past) => {
            past.identifiers = member.identifiers;
            past.aliases = member.aliases;
            past.merged_members = member.merged_members;
            past.version = member.version;
            past.history = member.history;
            Ok(past)
        }
        Err(Error::FailedPrecondition(_)) if !when.asked => Ok(member),
        Err(e) => Err(e),
    }
}

/// The fold of `member`'s kept events up to `at` (before its latest event,
/// `last`); FAILED_PRECONDITION when they are not all kept.
fn past_of(state: &AppState, member: &Member, at: Millis, last: Millis) -> Result<Member, Error> {
    let store = state.store();
    let (key, at_s, last_s) = (&member.key, rfc3339(at), rfc3339(last));
    if !store.keeps_history() {
        return Err(Error::FailedPrecondition(format!(
            "`{key}` changed after {at_s} (its latest event is of {last_s}) and this store keeps no history \
             (store.keep_history = false), so its state then is not known; ask for an as_of from {last_s} on, \
             or keep history"
        )));
    }
    if at < member.history.pruned_before {
        return Err(Error::FailedPrecondition(format!(
            "events of `{key}` before {} are no longer kept (store.history_days); ask for a later as_of",
            rfc3339(member.history.pruned_before)
        )));
    }
    let partition = state.partition(key)?;
    let history: Vec<(u64, i64, Vec<u8>)> = store.history(partition, key).collect::<Result<_, _>>()?;
    if member.history.pruned + history.len() as u64 != member.version.events_applied {
        // Kept only in part: history was off for a while, or a joined
        // profile's was pruned.
        return Err(Error::FailedPrecondition(format!(
            "only some of `{key}`'s events are kept (store.keep_history was off when the others were applied), \
             so its state at {at_s} is not known; ask for an as_of from {last_s} on"
        )));
    }
    let mut past = match store.history_base(partition, key)? {
        Some(base) => base,
        None => Member::new(key.clone(), member.kind),
    };
    for (_, _, record) in history.into_iter().filter(|(_, t, _)| *t <= at) {
        if let Ok(event) = decode_event(&record, usize::MAX, &state.fold.limits) {
            // Refused events stay refused; what the fold would write is dropped.
            let _ = apply(&mut past, &event, Position { partition, offset: 0 }, &state.fold);
        }
    }
    Ok(past)
}

/// The member with its dated spend and open lots: what balances and
/// benefits read.
fn find(state: &AppState, addr: &MemberAddress) -> Result<Member, Error> {
    Ok(resolve_with(state, addr, Books::SpendAndLots)?.member)
}

/// The member a profile read returns, with only what `mask` needs loaded.
pub(crate) fn find_for(state: &AppState, addr: &MemberAddress, mask: &ReadMask) -> Result<Member, Error> {
    Ok(resolve_with(state, addr, mask.books())?.member)
}

/// `m`'s profile as the request's caller may see it (privacy.rs).
pub(crate) fn profile_for(state: &AppState, m: &Member, at: Millis, mask: &ReadMask) -> proto::Profile {
    let mut p = convert::profile(m, at, mask, &state.fold);
    if mask.includes("audiences") {
        let audiences = state.audiences_of(&m.key);
        p.audiences = audiences.of(m, at, &state.fold).into_iter().map(str::to_owned).collect();
    }
    privacy::profile(&mut p, privacy::view_of(&auth::caller(), m, &state.privacy), &state.privacy);
    p
}

/// Each member's profile, or the status that member alone failed with: a
/// member not found, or not known at that instant, fails its own result,
/// not the batch.
pub(crate) fn batch_profiles(
    state: &AppState,
    addrs: &[MemberAddress],
    wires: Vec<proto::MemberRef>,
    mask: &ReadMask,
    when: AsOf,
) -> Result<Vec<proto::ProfileResult>, Error> {
    let mut results = Vec::with_capacity(addrs.len());
    for (addr, wire) in addrs.iter().zip(wires) {
        let mut result = proto::ProfileResult { member: Some(wire), ..Default::default() };
        match find_for(state, addr, mask).and_then(|m| as_of(state, m, when)) {
            Ok(m) => result.profile = Some(profile_for(state, &m, when.at, mask)),
            Err(e @ (Error::NotFound(_) | Error::FailedPrecondition(_) | Error::Elsewhere(_))) => {
                let status = Status::from(e);
                result.code = status.code() as i32;
                result.message = status.message().to_owned();
            }
            Err(e) => return Err(e),
        }
        results.push(result);
    }
    Ok(results)
}

pub struct Profiles(pub AppState);

#[tonic::async_trait]
impl proto::profile_service_server::ProfileService for Profiles {
    async fn get_profile(&self, req: Request<proto::GetProfileRequest>) -> Result<Response<proto::Profile>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        let addr = MemberAddress::try_from(r.member.clone())?;
        let mask = ReadMask::try_from(r.read_mask.clone())?;
        let when = AsOf::from_request(r.as_of, now_millis())?;
        let served = route_or_forward!(self.0, &addr, &hop, r, ProfileServiceClient, get_profile);
        let profile = served
            .on(&self.0)
            .read(ReadCost::of(when), move |state| {
                let member = as_of(state, find_for(state, &addr, &mask)?, when)?;
                Ok(profile_for(state, &member, when.at, &mask))
            })
            .await?;
        Ok(served.respond(profile))
    }

    async fn batch_get_profiles(
        &self,
        req: Request<proto::BatchGetProfilesRequest>,
    ) -> Result<Response<proto::BatchGetProfilesResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        if r.members.is_empty() || r.members.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "members must hold 1 to {MAX_BATCH} entries, got {}",
                r.members.len()
            ))
            .into());
        }
        let mask = ReadMask::try_from(r.read_mask.clone())?;
        let when = AsOf::from_request(r.as_of, now_millis())?;
        let addrs = r
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                MemberAddress::try_from(Some(m.clone()))
                    .map_err(|e| Error::InvalidArgument(format!("members[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let results = crate::fanout::batch(&self.0, &hop, &r, addrs, mask, when).await?;
        Ok(Response::new(proto::BatchGetProfilesResponse { results }))
    }

    async fn lookup_identifier(
        &self,
        req: Request<proto::LookupIdentifierRequest>,
    ) -> Result<Response<proto::LookupIdentifierResponse>, Status> {
        let (meta, _, msg) = req.into_parts();
        let caller = auth::caller();
        let view = privacy::View { personal: caller.may(crate::Scope::ProfilePii), sensitive: false };
        let purpose_bound = caller.purpose.is_some();
        let hop = Hop::of(&meta)?;
        let addr = identifier_address(msg.identifier.clone())?;
        // The replicated index answers on every instance, but for a caller
        // bound to a purpose: the member's owner decides whether it may see
        // the member (the request goes there).
        if let Some(mut found) = lookup_index(&self.0, &addr)? {
            if purpose_bound {
                let member = MemberAddress::Key(found.member_id.clone());
                let served = route_or_forward!(self.0, &member, &hop, msg, ProfileServiceClient, lookup_identifier);
                if resolve(&served.on(&self.0), &member).is_err() {
                    // As for an identifier no one holds, whatever the reason.
                    let asked = match &addr {
                        MemberAddress::Identifier(i) => i.key(),
                        MemberAddress::Key(k) => k.clone(),
                    };
                    return Err(Error::NotFound(format!("no profile for identifier `{asked}`")).into());
                }
                privacy::lookup(&mut found, view);
                return Ok(served.respond(found));
            }
            privacy::lookup(&mut found, view);
            return Ok(Response::new(found));
        }
        // Not linked to a member: a provisional or shared profile, on the
        // instance that owns its partition.
        let served = route_or_forward!(self.0, &addr, &hop, msg, ProfileServiceClient, lookup_identifier);
        let r = resolve(&served.on(&self.0), &addr)?;
        if r.member.shared {
            return Err(Error::FailedPrecondition(format!(
                "`{}` is shared by several members, so it identifies none of them",
                r.path[0]
            ))
            .into());
        }
        let mut found = proto::LookupIdentifierResponse {
            member_id: r.member.key.clone(),
            resolved_via: r.via.to_owned(),
            path: r.path,
            kind: convert::kind(r.member.kind) as i32,
        };
        privacy::lookup(&mut found, view);
        Ok(served.respond(found))
    }

    type WatchProfileStream = crate::watch::WatchStream;

    async fn watch_profile(
        &self,
        req: Request<proto::WatchProfileRequest>,
    ) -> Result<Response<Self::WatchProfileStream>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        // One member's watch goes to the instance that folds it.
        if r.partitions.is_none()
            && r.members.is_empty()
            && let Some(member) = &r.member
        {
            let addr = MemberAddress::try_from(Some(member.clone()))?;
            if let Route::There(to) = self.0.route(&addr, &hop).await? {
                return to
                    .send(r, |c, req| async move { ProfileServiceClient::new(c).watch_profile(req).await })
                    .await
                    .map(|resp| resp.map(|s| Box::pin(s) as Self::WatchProfileStream));
            }
        }
        let stream = crate::watch::start(self.0.clone(), r).await?;
        Ok(Response::new(stream))
    }
}

/// One page of a member's ledger, newest first: at most `page_size`
/// entries, and at most `MAX_SCAN` scanned.
fn ledger_page(state: &AppState, q: &LedgerQuery) -> Result<proto::ListLedgerResponse, Error> {
    let m = points_holder(state, &q.member)?;
    let partition = state.partition(&m.key)?;
    // Lots expired by now but not yet closed by a later event come first:
    // they are numbered after everything stored.
    let expiries = m.pending_expiries(now_millis());
    let below = |seq: u64| q.before.is_none_or(|b| seq < b);
    let virtual_entries = expiries.into_iter().rev().filter(|e| below(e.seq)).map(Ok);
    let stored_before = q.before.map(|b| b.min(m.loyalty.next_seq));
    let store = state.store();
    let stored = store.ledger(partition, &m.key, stored_before).map(|r| r.map_err(Error::from));
    let mut entries = Vec::new();
    let mut next_page_token = String::new();
    for (scanned, e) in virtual_entries.chain(stored).enumerate() {
        let e = e?;
        if entries.len() == q.page_size || scanned == MAX_SCAN {
            next_page_token = page_token(e.seq + 1);
            break;
        }
        if q.matches(&e) {
            entries.push(convert::ledger_entry(&e));
        }
    }
    Ok(proto::ListLedgerResponse { entries, next_page_token })
}

pub struct Loyalty(pub AppState);

/// Members only: anonymous and provisional profiles hold no points.
fn points_holder(state: &AppState, addr: &MemberAddress) -> Result<Member, Error> {
    let m = find(state, addr)?;
    if m.kind != ProfileKind::KnownMember {
        return Err(Error::FailedPrecondition(format!(
            "`{}` is not a member (an anonymous or provisional profile); points belong to members",
            m.key
        )));
    }
    Ok(m)
}

/// Scanned ledger entries per page at most, so a selective filter over a
/// long ledger still answers quickly (with a token to go on).
const MAX_SCAN: usize = 10_000;

/// What RedeemPoints and AdjustPoints answer.
struct CommandAnswer {
    status: proto::RedemptionStatus,
    reason: String,
    balance: Option<proto::Balance>,
    event_id: String,
}

/// What a points command asks: its request id, kind and points (a
/// redemption's, or an adjustment's delta).
struct Asked<'a> {
    request_id: &'a str,
    kind: CommandKind,
    points: i64,
}

impl Loyalty {
    /// A points command for the member `addr` leads to: appended through the
    /// log, then its verdict.
    async fn points_command(
        &self,
        addr: &MemberAddress,
        asked: Asked<'_>,
        channel: omnifold_core::Channel,
        payload: proto::event::Payload,
    ) -> Result<CommandAnswer, Error> {
        let m = points_holder(&self.0, addr)?;
        let cmd = Command {
            member: m.key.clone(),
            request_id: asked.request_id.to_owned(),
            kind: asked.kind,
            points: asked.points,
            channel,
            payload,
        };
        self.command(&m, cmd).await
    }

    /// Appends a command, waits for its verdict, and reads the balance after it.
    async fn command(&self, member: &Member, cmd: Command) -> Result<CommandAnswer, Error> {
        let state = &self.0;
        match commands::submit(state, &cmd).await? {
            Outcome::Decided(v) => {
                let after = state.load(&member.key, Books::SpendAndLots)?.unwrap_or_else(|| member.clone());
                let status = match v.status {
                    VerdictStatus::Accepted => proto::RedemptionStatus::Accepted,
                    VerdictStatus::Rejected => proto::RedemptionStatus::Rejected,
                };
                let balance = Some(convert::balance(&after, now_millis(), &state.fold.loyalty));
                Ok(CommandAnswer { status, reason: v.reason, balance, event_id: v.event_id })
            }
            Outcome::InProgress => Ok(CommandAnswer {
                status: proto::RedemptionStatus::InProgress,
                reason: "no verdict before the deadline; call again with the same request_id to get it (retrying \
                         never applies it twice)"
                    .into(),
                balance: None,
                event_id: cmd.event_id(),
            }),
        }
    }
}

#[tonic::async_trait]
impl proto::loyalty_service_server::LoyaltyService for Loyalty {
    async fn get_balance(&self, req: Request<proto::GetBalanceRequest>) -> Result<Response<proto::Balance>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        let addr = MemberAddress::try_from(r.member.clone())?;
        let when = AsOf::from_request(r.as_of, now_millis())?;
        let served = route_or_forward!(self.0, &addr, &hop, r, LoyaltyServiceClient, get_balance);
        Ok(served.respond(holder_as_of(&served.on(&self.0), addr, when, convert::balance).await?))
    }

    async fn list_ledger(
        &self,
        req: Request<proto::ListLedgerRequest>,
    ) -> Result<Response<proto::ListLedgerResponse>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        let q = LedgerQuery::try_from(r.clone())?;
        let served = route_or_forward!(self.0, &q.member, &hop, r, LoyaltyServiceClient, list_ledger);
        Ok(served.respond(served.on(&self.0).read(ReadCost::Long, move |state| ledger_page(state, &q)).await?))
    }

    async fn get_benefits(&self, req: Request<proto::GetBenefitsRequest>) -> Result<Response<proto::Benefits>, Status> {
        let (meta, _, r) = req.into_parts();
        let hop = Hop::of(&meta)?;
        let addr = MemberAddress::try_from(r.member.clone())?;
        let when = AsOf::from_request(r.as_of, now_millis())?;
        let served = route_or_forward!(self.0, &addr, &hop, r, LoyaltyServiceClient, get_benefits);
        Ok(served.respond(holder_as_of(&served.on(&self.0), addr, when, convert::benefits).await?))
    }

    async fn redeem_points(
        &self,
        req: Request<proto::RedeemPointsRequest>,
    ) -> Result<Response<proto::RedeemPointsResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "LoyaltyService/RedeemPoints",
            &req,
            serde_json::json!({"member": audit::member(&r.member), "request_id": r.request_id, "points": r.points, "channel": r.channel, "reward": r.reward}),
        );
        audit
            .run(&self.0, async move {
                let (meta, _, msg) = req.into_parts();
                let hop = Hop::of(&meta)?;
                let r = Redeem::try_from(msg.clone())?;
                let served =
                    route_or_forward!(self.0, &r.member, &hop.for_write(), msg, LoyaltyServiceClient, redeem_points);
                let payload = proto::event::Payload::PointsRedemptionRequested(proto::PointsRedemptionRequested {
                    request_id: r.request_id.clone(),
                    points: r.points,
                    reward: r.reward,
                });
                let asked = Asked { request_id: &r.request_id, kind: CommandKind::Redeem, points: r.points };
                let a = self.points_command(&r.member, asked, r.channel, payload).await?;
                let verdict = a.status.as_str_name().trim_start_matches("REDEMPTION_STATUS_");
                metrics::counter!("omnifold_redemptions_total", "status" => verdict.to_ascii_lowercase()).increment(1);
                Ok(served.respond(proto::RedeemPointsResponse {
                    status: a.status as i32,
                    reason: a.reason,
                    balance: a.balance,
                    request_id: r.request_id,
                    event_id: a.event_id,
                }))
            })
            .await
    }

    async fn adjust_points(
        &self,
        req: Request<proto::AdjustPointsRequest>,
    ) -> Result<Response<proto::AdjustPointsResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "LoyaltyService/AdjustPoints",
            &req,
            serde_json::json!({"member": audit::member(&r.member), "request_id": r.request_id, "delta": r.delta, "reason": r.reason, "actor": r.actor}),
        );
        audit
            .run(&self.0, async move {
                let (meta, _, msg) = req.into_parts();
                let hop = Hop::of(&meta)?;
                let r = Adjust::try_from(msg.clone())?;
                let served =
                    route_or_forward!(self.0, &r.member, &hop.for_write(), msg, LoyaltyServiceClient, adjust_points);
                let payload = proto::event::Payload::PointsAdjusted(proto::PointsAdjusted {
                    delta: r.delta,
                    reason: r.reason,
                    actor: r.actor,
                    request_id: r.request_id.clone(),
                });
                let asked = Asked { request_id: &r.request_id, kind: CommandKind::Adjust, points: r.delta };
                let a = self.points_command(&r.member, asked, r.channel, payload).await?;
                Ok(served.respond(proto::AdjustPointsResponse {
                    status: a.status as i32,
                    reason: a.reason,
                    balance: a.balance,
                    request_id: r.request_id,
                    event_id: a.event_id,
                }))
            })
            .await
    }
}

/// The points every member holds as of `as_of`: a scan of every member of
/// every partition this instance answers for (a copy of a partition it no
/// longer owns would count its members twice across instances).
fn liability(state: &AppState, as_of: Millis) -> Result<proto::GetPointsLiabilityResponse, Error> {
    let store = state.store();
    let mut report = Liability::new(as_of);
    let partitions = state.held_partitions(&store)?;
    for p in &partitions {
        for m in store.scan_members(*p) {
            report.add(&m?, &state.fold.loyalty);
        }
    }
    Ok(convert::liability(&report, partitions))
}

/// The points holder `addr` leads to, as of `when`, answered by `answer`.
async fn holder_as_of<T: Send + 'static>(
    state: &AppState,
    addr: MemberAddress,
    when: AsOf,
    answer: fn(&Member, Millis, &LoyaltyConfig) -> T,
) -> Result<T, Error> {
    state
        .read(ReadCost::of(when), move |state| {
            let m = as_of(state, points_holder(state, &addr)?, when)?;
            Ok(answer(&m, when.at, &state.fold.loyalty))
        })
        .await
}

/// A partition as this instance's store and ingest see it.
fn local_status(
    state: &AppState,
    store: &omnifold_store::Store,
    report: &crate::IngestReport,
    p: u32,
    local: bool,
) -> Result<proto::PartitionStatus, Error> {
    let next = store.next_offset(&state.topic, p)?;
    let health = report.partitions.get(&p);
    let stalled = health.and_then(|h| h.stalled.clone());
    let state_name = match (health, &stalled) {
        (_, Some(_)) => "stalled",
        (Some(_), None) => "ok",
        (None, None) => "unassigned",
    };
    Ok(proto::PartitionStatus {
        topic: state.topic.clone(),
        partition: p,
        next_offset: next.unwrap_or(0),
        has_state: next.is_some(),
        state: state_name.into(),
        error: stalled.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
        stalled_since: stalled.as_ref().map(|s| to_timestamp(s.1)),
        retries: stalled.as_ref().map_or(0, |s| s.2),
        local,
        ..Default::default()
    })
}

/// `status` with the partition's owner (its latest claim), snapshot and
/// standbys, as the ownership table says.
fn owner_status(
    state: &AppState,
    p: u32,
    claim: Option<&crate::OwnerClaim>,
    status: proto::PartitionStatus,
) -> proto::PartitionStatus {
    let end = claim.and_then(|c| c.end);
    let owners = state.routing.as_ref().map(|r| &r.owners);
    let standbys = owners.map(|o| o.standbys(p)).unwrap_or_default().into_iter();
    proto::PartitionStatus {
        high_watermark: end.unwrap_or(-1),
        owner_instance: claim.map(|c| c.instance.clone()).unwrap_or_default(),
        owner_address: claim.map(|c| c.address.clone()).unwrap_or_default(),
        epoch: claim.map_or(0, |c| c.epoch),
        owner_applied: claim.map_or(0, |c| c.applied),
        owner_state: claim.map_or_else(|| "unknown".to_owned(), |c| c.state.clone()),
        owner_seen: claim.filter(|c| c.at_ms > 0).map(|c| to_timestamp(c.at_ms)),
        lag: claim.map_or(-1, |c| lag_behind(end, c.applied)),
        snapshot_offset: claim.and_then(|c| c.snapshot).map_or(-1, |s| s.0),
        snapshot_taken: claim.and_then(|c| c.snapshot).map(|s| to_timestamp(s.1)),
        standby_applied: owners.and_then(|o| o.standby(p)).filter(|_| !status.local).map_or(-1, |c| c.applied),
        standbys: standbys
            .map(|(instance, applied)| proto::PartitionStandby { instance, applied, lag: lag_behind(end, applied) })
            .collect(),
        ..status
    }
}

pub struct Admin(pub AppState);

#[tonic::async_trait]
impl proto::admin_service_server::AdminService for Admin {
    async fn create_audience(
        &self,
        req: Request<proto::CreateAudienceRequest>,
    ) -> Result<Response<proto::Audience>, Status> {
        let r = req.get_ref();
        let audit =
            Audited::of("AdminService/CreateAudience", &req, serde_json::json!({"name": r.name, "rule": r.rule}));
        audit
            .run(&self.0, async move {
                let change = Change::try_from(req.into_inner())?;
                Ok(Response::new(crate::definitions::define_and_read(&self.0, change).await?))
            })
            .await
    }

    async fn update_audience(
        &self,
        req: Request<proto::UpdateAudienceRequest>,
    ) -> Result<Response<proto::Audience>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "AdminService/UpdateAudience",
            &req,
            serde_json::json!({"name": r.name, "rule": r.rule, "version": r.version}),
        );
        audit
            .run(&self.0, async move {
                let change = Change::try_from(req.into_inner())?;
                Ok(Response::new(crate::definitions::define_and_read(&self.0, change).await?))
            })
            .await
    }

    async fn delete_audience(
        &self,
        req: Request<proto::DeleteAudienceRequest>,
    ) -> Result<Response<proto::DeleteAudienceResponse>, Status> {
        let r = req.get_ref();
        let audit =
            Audited::of("AdminService/DeleteAudience", &req, serde_json::json!({"name": r.name, "version": r.version}));
        audit
            .run(&self.0, async move {
                let change = Change::try_from(req.into_inner())?;
                let (name, version) = crate::definitions::define(&self.0, change).await?;
                Ok(Response::new(proto::DeleteAudienceResponse { name, version }))
            })
            .await
    }

    async fn erase_member(
        &self,
        req: Request<proto::EraseMemberRequest>,
    ) -> Result<Response<proto::EraseMemberResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "AdminService/EraseMember",
            &req,
            serde_json::json!({"member": audit::member(&r.member), "reason": r.reason}),
        );
        audit
            .run(&self.0, async move {
                let (meta, _, msg) = req.into_parts();
                let hop = Hop::of(&meta)?.for_write();
                let e = Erasure::try_from(msg.clone())?;
                let served = route_or_forward!(self.0, &e.member, &hop, msg, AdminServiceClient, erase_member);
                let answer = crate::erasure::erase(&served.on(&self.0), e).await?;
                Ok(served.respond(answer))
            })
            .await
    }

    async fn export_member(
        &self,
        req: Request<proto::ExportMemberRequest>,
    ) -> Result<Response<proto::ExportMemberResponse>, Status> {
        let r = req.get_ref();
        let audit =
            Audited::of("AdminService/ExportMember", &req, serde_json::json!({"member": audit::member(&r.member)}));
        audit
            .run(&self.0, async move {
                let (meta, _, msg) = req.into_parts();
                let hop = Hop::of(&meta)?.for_write();
                let addr = MemberAddress::try_from(msg.member.clone())?;
                let served = route_or_forward!(self.0, &addr, &hop, msg, AdminServiceClient, export_member);
                let doc = served
                    .on(&self.0)
                    .read(ReadCost::Long, move |state| crate::export::export(state, &addr, now_millis()))
                    .await?;
                let json = serde_json::to_string_pretty(&doc).map_err(|e| Error::Internal(format!("export: {e}")))?;
                Ok(served.respond(proto::ExportMemberResponse { json }))
            })
            .await
    }

    async fn merge_members(
        &self,
        req: Request<proto::MergeMembersRequest>,
    ) -> Result<Response<proto::MergeMembersResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "AdminService/MergeMembers",
            &req,
            serde_json::json!({"from_member_id": r.from_member_id, "into_member_id": r.into_member_id, "request_id": r.request_id}),
        );
        audit
            .run(&self.0, async move {
                let (meta, _, msg) = req.into_parts();
                let hop = Hop::of(&meta)?;
                let r = Merge::try_from(msg.clone())?;
                let state = &self.0;
                let survivor = MemberAddress::Key(r.into.clone());
                let served =
                    route_or_forward!(state, &survivor, &hop.for_write(), msg, AdminServiceClient, merge_members);
                let into = resolve(state, &survivor)?.member;
                // The merged member is checked where it is stored; on a partition
                // another instance answers for, its fold checks it (a merge of a
                // non-member is refused there, into the dead-letter topic).
                let from = match state.load(&r.from, Books::Skip) {
                    Err(Error::Elsewhere(_)) => None,
                    other => {
                        Some(other?.ok_or_else(|| Error::NotFound(format!("no profile for member `{}`", r.from)))?)
                    }
                };
                if into.kind != ProfileKind::KnownMember
                    || from.as_ref().is_some_and(|f| f.kind != ProfileKind::KnownMember)
                {
                    return Err(Error::FailedPrecondition(
                        "only members are merged; link anonymous ids and identifiers with identityLinked".into(),
                    )
                    .into());
                }
                if into.key == r.from {
                    return Err(
                        Error::FailedPrecondition(format!("`{}` already resolves to `{}`", r.from, into.key)).into()
                    );
                }
                if let Some(other) = from.as_ref().and_then(|f| f.routes_to.as_deref()).filter(|to| *to != into.key) {
                    return Err(Error::FailedPrecondition(format!(
                        "member `{}` was already merged into `{other}`",
                        r.from
                    ))
                    .into());
                }
                let event = proto::Event {
                    event_id: derived_event_id("merge-request", &r.request_id, &format!("{}\0{}", into.key, r.from)),
                    occurred_at: Some(to_timestamp(now_millis())),
                    channel: proto::Channel::CallCenter as i32,
                    store_id: String::new(),
                    subject: Some(proto::Subject { member_id: into.key.clone(), ..Default::default() }),
                    payload: Some(proto::event::Payload::MembersMerged(proto::MembersMerged {
                        from_member_id: r.from.clone(),
                        into_member_id: into.key.clone(),
                    })),
                };
                let done = || -> Result<Option<Member>, Error> {
                    Ok(state.load(&into.key, Books::Skip)?.filter(|m| m.merged_members.contains(&r.from)))
                };
                let (version, completed) = match commands::append_and_wait(state, &into.key, event, done).await? {
                    Outcome::Decided(m) => (convert::version(&m), true),
                    Outcome::InProgress => (convert::version(&into), false),
                };
                Ok(served.respond(proto::MergeMembersResponse { version: Some(version), completed }))
            })
            .await
    }

    async fn get_partition_status(
        &self,
        req: Request<proto::GetPartitionStatusRequest>,
    ) -> Result<Response<proto::GetPartitionStatusResponse>, Status> {
        let audit = Audited::of("AdminService/GetPartitionStatus", &req, serde_json::json!({}));
        audit
            .run(&self.0, async move {
                let state = &self.0;
                let store = state.store();
                let count = store.partition_count(&state.topic).map_err(Error::from)?.unwrap_or(0);
                let report = state.ingest.as_ref().map(|i| i.report()).unwrap_or_default();
                let claims = state.routing.as_ref().map(|r| r.owners.claims()).unwrap_or_default();
                let mut partitions = Vec::with_capacity(count as usize);
                for p in 0..count {
                    let local = match &state.routing {
                        Some(r) => matches!(r.owners.owner(p), crate::Owner::Here { .. }),
                        None => report.partitions.contains_key(&p),
                    };
                    let status = local_status(state, &store, &report, p, local)?;
                    partitions.push(owner_status(state, p, claims.get(&p), status));
                }
                let broker = match report.broker_up {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "unknown",
                };
                Ok(Response::new(proto::GetPartitionStatusResponse {
                    partitions,
                    broker: broker.into(),
                    broker_since: (report.broker_since_ms > 0).then(|| to_timestamp(report.broker_since_ms)),
                    records_waiting: report.records_waiting,
                    ingest_running: report.running,
                }))
            })
            .await
    }

    async fn switch_store(
        &self,
        req: Request<proto::SwitchStoreRequest>,
    ) -> Result<Response<proto::SwitchStoreResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of("AdminService/SwitchStore", &req, serde_json::json!({"data_dir": r.data_dir}));
        audit
            .run(&self.0, async move {
                let state = &self.0;
                let switcher = state.switcher.clone().ok_or_else(|| {
                    Error::Unavailable("this instance does not fold events, so it cannot switch stores".into())
                })?;
                let dir = req.into_inner().data_dir;
                if dir.trim().is_empty() {
                    return Err(
                        Error::InvalidArgument("data_dir is required: the rebuilt store's directory".into()).into()
                    );
                }
                let path = switcher.allowed(&dir)?;
                let config = omnifold_store::StoreConfig { path, ..switcher.store_config.clone() };
                let to = omnifold_store::Store::open(&config).map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "cannot open the store at {dir}: {e} (is a replay still using it?)"
                    ))
                })?;
                if to.partition_count(&state.topic).map_err(Error::from)?.is_none() {
                    return Err(Error::FailedPrecondition(format!(
                        "{dir} holds no state for topic {}; build it with omnifold replay",
                        state.topic
                    ))
                    .into());
                }
                let (done, answer) = std::sync::mpsc::channel();
                switcher
                    .requests
                    .send(omnifold_store::StoreSwitch { to, done })
                    .map_err(|_| Error::Unavailable("ingest is not running".into()))?;
                let result = tokio::task::spawn_blocking(move || answer.recv())
                    .await
                    .map_err(|e| Error::Unavailable(format!("switch interrupted: {e}")))?
                    .map_err(|_| Error::Unavailable("ingest stopped before the switch finished".into()))?
                    .map_err(|e| Error::Unavailable(format!("switch failed, still serving the old store: {e}")))?;
                let partitions = result
                    .into_iter()
                    .map(|(p, next)| proto::PartitionStatus {
                        topic: state.topic.clone(),
                        partition: p,
                        next_offset: next,
                        high_watermark: -1,
                        has_state: true,
                        state: "ok".into(),
                        ..Default::default()
                    })
                    .collect();
                Ok(Response::new(proto::SwitchStoreResponse { partitions }))
            })
            .await
    }

    async fn take_snapshot(
        &self,
        req: Request<proto::TakeSnapshotRequest>,
    ) -> Result<Response<proto::TakeSnapshotResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of("AdminService/TakeSnapshot", &req, serde_json::json!({"partitions": r.partitions}));
        audit
            .run(&self.0, async move {
                let state = &self.0;
                let taker = state.snapshots.clone().ok_or_else(|| {
                    Error::FailedPrecondition(
                        "snapshots are off on this instance: set [snapshots] url (docs/scale-out.md)".into(),
                    )
                })?;
                let partitions = req.into_inner().partitions;
                let count = state.store().partition_count(&state.topic).map_err(Error::from)?.unwrap_or(0);
                if let Some(p) = partitions.iter().find(|p| **p >= count) {
                    return Err(Error::InvalidArgument(format!(
                        "partition {p} does not exist: topic {} has {count} partitions",
                        state.topic
                    ))
                    .into());
                }
                let results = taker.take(partitions).await.map_err(Error::Unavailable)?;
                let results = results.into_iter().map(|r| snapshot_result(state, r)).collect();
                Ok(Response::new(proto::TakeSnapshotResponse { results }))
            })
            .await
    }

    async fn get_points_liability(
        &self,
        req: Request<proto::GetPointsLiabilityRequest>,
    ) -> Result<Response<proto::GetPointsLiabilityResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "AdminService/GetPointsLiability",
            &req,
            serde_json::json!({"as_of": r.as_of.map(|t| omnifold_core::time::rfc3339(omnifold_core::time::from_timestamp(&t)))}),
        );
        audit
            .run(&self.0, async move {
                let as_of = instant("as_of", req.into_inner().as_of, now_millis())?;
                Ok(Response::new(self.0.read(ReadCost::Long, move |state| liability(state, as_of)).await?))
            })
            .await
    }

    async fn get_replay_status(
        &self,
        req: Request<proto::GetReplayStatusRequest>,
    ) -> Result<Response<proto::GetReplayStatusResponse>, Status> {
        let audit = Audited::of("AdminService/GetReplayStatus", &req, serde_json::json!({}));
        audit.run(&self.0, async move { Ok(Response::new(proto::GetReplayStatusResponse::default())) }).await
    }
}

/// One partition's `TakeSnapshot` answer; a partition folded elsewhere
/// names its owner.
fn snapshot_result(state: &AppState, r: crate::SnapshotResult) -> proto::PartitionSnapshotResult {
    let partition = r.partition;
    match r.outcome {
        Ok(Some(t)) => proto::PartitionSnapshotResult {
            partition,
            taken: true,
            next_offset: t.next_offset,
            taken_at: Some(to_timestamp(t.taken_at_ms)),
            chunks: t.chunks,
            bytes: t.bytes,
            uploaded_chunks: t.uploaded_chunks,
            uploaded_bytes: t.uploaded_bytes,
            error: String::new(),
        },
        Ok(None) => proto::PartitionSnapshotResult { partition, next_offset: -1, ..Default::default() },
        Err(e) => {
            let owner = state.routing.as_ref().and_then(|r| match r.owners.owner(partition) {
                crate::Owner::There { instance, address, .. } => Some(format!("{instance} at {address}")),
                _ => None,
            });
            let error = match owner {
                Some(owner) => format!("{e} ({owner})"),
                None => e,
            };
            proto::PartitionSnapshotResult { partition, next_offset: -1, error, ..Default::default() }
        }
    }
}
