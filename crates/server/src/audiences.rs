//! `AudienceService`: the audiences defined, their sizes, and their members
//! a page at a time, every page of a listing from one snapshot of the store
//! (docs/audiences.md, "Reading audiences").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use omnifold_core::audience::{Audience, Backfill};
use omnifold_proto::v1 as proto;
use omnifold_store::{Frozen, Store};

use crate::audit::Audited;
use crate::request::{AudiencePage, PageToken, audience_name};
use crate::{AppState, Error, ReadCost};

/// A listing unused this long expires (its snapshot is let go).
pub const LISTING_IDLE: Duration = Duration::from_secs(600);
/// Listings open at most per instance: opening one more expires the least
/// recently used. Each holds a snapshot, which keeps RocksDB from dropping
/// what was overwritten since.
pub const MAX_LISTINGS: usize = 16;

/// What a listing reads: the audience, its snapshot, what it covers.
struct Opened {
    name: String,
    frozen: Frozen,
    partitions: Vec<u32>,
    total: u64,
}

/// One open listing, and when it was last used.
struct Listing {
    opened: Arc<Opened>,
    used: Instant,
}

/// The open listings of this instance.
#[derive(Default)]
pub struct Listings(Mutex<HashMap<u128, Listing>>);

impl std::fmt::Debug for Listings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listings").field("open", &self.lock().len()).finish()
    }
}

impl Listings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, Listing>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `opened` open; its id.
    fn open(&self, opened: Arc<Opened>) -> u128 {
        let mut all = self.lock();
        all.retain(|_, l| l.used.elapsed() < LISTING_IDLE);
        while all.len() >= MAX_LISTINGS {
            let Some(oldest) = all.iter().min_by_key(|(_, l)| l.used).map(|(id, _)| *id) else { break };
            all.remove(&oldest);
        }
        let id = rand::random::<u128>();
        all.insert(id, Listing { opened, used: Instant::now() });
        id
    }

    /// The open listing `id`, marked used now.
    fn get(&self, id: u128) -> Option<Arc<Opened>> {
        let mut all = self.lock();
        all.retain(|_, l| l.used.elapsed() < LISTING_IDLE);
        let l = all.get_mut(&id)?;
        l.used = Instant::now();
        Some(l.opened.clone())
    }

    fn close(&self, id: u128) {
        self.lock().remove(&id);
    }
}

/// The audiences of `parts`: the configured ones and those defined through
/// `AdminService`, each of the latest version any of them has folded, in
/// name order (the configured ones alone when there are no partitions).
pub(crate) fn catalogue(state: &AppState, store: &Store, parts: &[u32]) -> Result<Vec<Audience>, Error> {
    let mut by_name: BTreeMap<String, Audience> = state.audiences.iter().map(|a| (a.name.clone(), a.clone())).collect();
    for p in parts {
        for a in store.audiences(*p, &state.audiences)?.iter() {
            if by_name.get(&a.name).is_none_or(|held| held.version < a.version) {
                by_name.insert(a.name.clone(), a.clone());
            }
        }
    }
    Ok(by_name.into_values().collect())
}

/// The audience named `name`, or NOT_FOUND saying where the names are.
pub(crate) fn defined(state: &AppState, store: &Store, parts: &[u32], name: &str) -> Result<Audience, Error> {
    catalogue(state, store, parts)?.into_iter().find(|a| a.name == name).ok_or_else(|| {
        Error::NotFound(format!("no audience `{name}` is defined; ListAudiences lists the audiences there are"))
    })
}

/// Each of `parts` with a backfill pass under way, and its pass.
fn passes(frozen: &Frozen, parts: &[u32]) -> Result<Vec<(u32, Backfill)>, Error> {
    let mut out = Vec::new();
    for p in parts {
        if let Some(b) = frozen.backfill(*p)?.filter(|b| !b.pending.is_empty()) {
            out.push((*p, b));
        }
    }
    Ok(out)
}

/// `a` with its size in `frozen` over `parts`, and whether it is built.
fn described(
    a: &Audience,
    frozen: &Frozen,
    parts: &[u32],
    passes: &[(u32, Backfill)],
) -> Result<proto::Audience, Error> {
    let mut size = 0;
    for p in parts {
        size += frozen.audience_size(*p, &a.name)?;
    }
    let building: Vec<&(u32, Backfill)> = passes.iter().filter(|(_, b)| b.pending.contains(&a.name)).collect();
    let status = if building.is_empty() { proto::AudienceStatus::Ready } else { proto::AudienceStatus::Building };
    Ok(proto::Audience {
        status: status as i32,
        building_partitions: building.iter().map(|(p, _)| *p).collect(),
        members_evaluated: building.iter().map(|(_, b)| b.evaluated).sum(),
        name: a.name.clone(),
        rule: a.source.clone(),
        purpose: a.purpose.clone().unwrap_or_default(),
        description: a.description.clone(),
        size,
        partitions: parts.to_vec(),
        version: a.version,
        source: if a.version == 0 { proto::AudienceSource::Configuration } else { proto::AudienceSource::Api } as i32,
    })
}

fn list(state: &AppState) -> Result<proto::ListAudiencesResponse, Error> {
    let frozen = state.store().freeze();
    let parts = state.held_partitions(frozen.store())?;
    let passes = passes(&frozen, &parts)?;
    let audiences = catalogue(state, frozen.store(), &parts)?
        .iter()
        .map(|a| described(a, &frozen, &parts, &passes))
        .collect::<Result<_, _>>()?;
    Ok(proto::ListAudiencesResponse { audiences })
}

pub(crate) fn get(state: &AppState, name: &str) -> Result<proto::Audience, Error> {
    let frozen = state.store().freeze();
    let parts = state.held_partitions(frozen.store())?;
    let a = defined(state, frozen.store(), &parts, name)?;
    described(&a, &frozen, &parts, &passes(&frozen, &parts)?)
}

/// Where a page starts: a partition's index, and the member after which
/// it goes on there.
type Start = (usize, Option<String>);

/// The listing a page reads (a new one for a request without a token),
/// its id, and where the page starts.
fn listing_of(state: &AppState, page: &AudiencePage) -> Result<(u128, Arc<Opened>, Start), Error> {
    let Some(t) = &page.token else {
        let frozen = state.store().freeze();
        let partitions = state.held_partitions(frozen.store())?;
        let a = defined(state, frozen.store(), &partitions, &page.name)?;
        let total = described(&a, &frozen, &partitions, &[])?.size;
        let opened = Arc::new(Opened { name: page.name.clone(), frozen, partitions, total });
        return Ok((state.listings.open(opened.clone()), opened, (0, None)));
    };
    let opened = state.listings.get(t.listing).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "page_token's listing has expired (unused for {} minutes, or more than {MAX_LISTINGS} listings were \
             opened since): start again with an empty page_token",
            LISTING_IDLE.as_secs() / 60
        ))
    })?;
    if opened.name != page.name {
        return Err(Error::InvalidArgument(format!(
            "page_token belongs to a listing of audience `{}`, not `{}`",
            opened.name, page.name
        )));
    }
    Ok((t.listing, opened, (t.partition, t.after.clone())))
}

/// One page of a listing.
fn members(state: &AppState, page: AudiencePage) -> Result<proto::ListAudienceMembersResponse, Error> {
    let (id, opened, mut at) = listing_of(state, &page)?;
    let Opened { frozen, partitions: parts, total, .. } = &*opened;
    let mut member_ids = Vec::new();
    while member_ids.len() < page.page_size && at.0 < parts.len() {
        let want = page.page_size - member_ids.len();
        // One more than wanted: whether this partition has more.
        let mut got = frozen.audience_members(parts[at.0], &page.name, at.1.as_deref(), want + 1)?;
        if got.len() > want {
            got.truncate(want);
            at.1 = got.last().cloned();
            member_ids.extend(got);
            break;
        }
        member_ids.extend(got);
        at = (at.0 + 1, None);
    }
    // The next page starts in a partition with members, if one is left.
    while at.1.is_none() && at.0 < parts.len() && frozen.audience_members(parts[at.0], &page.name, None, 1)?.is_empty()
    {
        at.0 += 1;
    }
    let next_page_token = if at.0 < parts.len() {
        PageToken { listing: id, partition: at.0, after: at.1 }.encode()
    } else {
        state.listings.close(id);
        String::new()
    };
    Ok(proto::ListAudienceMembersResponse {
        member_ids,
        next_page_token,
        total_size: *total,
        partitions: parts.clone(),
    })
}

/// The gRPC service.
pub struct AudienceReads(pub AppState);

#[tonic::async_trait]
impl proto::audience_service_server::AudienceService for AudienceReads {
    async fn list_audiences(
        &self,
        _req: Request<proto::ListAudiencesRequest>,
    ) -> Result<Response<proto::ListAudiencesResponse>, Status> {
        Ok(Response::new(self.0.read(ReadCost::Long, list).await?))
    }

    async fn get_audience(&self, req: Request<proto::GetAudienceRequest>) -> Result<Response<proto::Audience>, Status> {
        let name = audience_name(&req.get_ref().name)?;
        Ok(Response::new(self.0.read(ReadCost::Long, move |state| get(state, &name)).await?))
    }

    async fn list_audience_members(
        &self,
        req: Request<proto::ListAudienceMembersRequest>,
    ) -> Result<Response<proto::ListAudienceMembersResponse>, Status> {
        let r = req.get_ref();
        let audit = Audited::of(
            "AudienceService/ListAudienceMembers",
            &req,
            serde_json::json!({"name": r.name, "page_size": r.page_size, "continued": !r.page_token.is_empty()}),
        );
        audit
            .run(&self.0, async move {
                let page = AudiencePage::try_from(req.into_inner())?;
                Ok(Response::new(self.0.read(ReadCost::Long, move |state| members(state, page)).await?))
            })
            .await
    }
}
