//! The three omnifold services. Handlers validate (request.rs), read the
//! store, and convert (convert.rs); nothing else.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use omnifold_core::Member;
use omnifold_core::time::to_timestamp;
use omnifold_proto::v1 as proto;

use crate::request::{MemberAddress, ReadMask, instant};
use crate::{AppState, Error, convert, now_millis};

/// Most members one `BatchGetProfiles` may ask for.
pub const MAX_BATCH: usize = 100;

const IDENTIFIER_LOOKUP: &str =
    "lookup by identifier needs the identity index, which is not built yet; address the member by member_id";

fn find(state: &AppState, addr: &MemberAddress) -> Result<Member, Error> {
    match addr {
        MemberAddress::Key(key) => {
            state.load(key)?.ok_or_else(|| Error::NotFound(format!("no profile for member `{key}`")))
        }
        MemberAddress::Identifier(_) => Err(Error::Unimplemented(IDENTIFIER_LOOKUP)),
    }
}

pub struct Profiles(pub AppState);

#[tonic::async_trait]
impl proto::profile_service_server::ProfileService for Profiles {
    async fn get_profile(&self, req: Request<proto::GetProfileRequest>) -> Result<Response<proto::Profile>, Status> {
        let r = req.into_inner();
        let addr = MemberAddress::try_from(r.member)?;
        let mask = ReadMask::try_from(r.read_mask)?;
        let now = instant("as_of", r.as_of, now_millis())?;
        let member = find(&self.0, &addr)?;
        Ok(Response::new(convert::profile(&member, now, &mask, &self.0.program_currency)))
    }

    async fn batch_get_profiles(
        &self,
        req: Request<proto::BatchGetProfilesRequest>,
    ) -> Result<Response<proto::BatchGetProfilesResponse>, Status> {
        let r = req.into_inner();
        if r.members.is_empty() || r.members.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "members must hold 1 to {MAX_BATCH} entries, got {}",
                r.members.len()
            ))
            .into());
        }
        let mask = ReadMask::try_from(r.read_mask)?;
        let now = instant("as_of", r.as_of, now_millis())?;
        let addrs = r
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                MemberAddress::try_from(Some(m.clone()))
                    .map_err(|e| Error::InvalidArgument(format!("members[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(addrs.len());
        for (addr, wire) in addrs.iter().zip(r.members) {
            let mut result = proto::ProfileResult { member: Some(wire), ..Default::default() };
            match find(&self.0, addr) {
                Ok(m) => result.profile = Some(convert::profile(&m, now, &mask, &self.0.program_currency)),
                Err(Error::NotFound(msg)) => {
                    result.code = tonic::Code::NotFound as i32;
                    result.message = msg;
                }
                Err(e) => return Err(e.into()),
            }
            results.push(result);
        }
        Ok(Response::new(proto::BatchGetProfilesResponse { results }))
    }

    async fn lookup_identifier(
        &self,
        _req: Request<proto::LookupIdentifierRequest>,
    ) -> Result<Response<proto::LookupIdentifierResponse>, Status> {
        Err(Error::Unimplemented(IDENTIFIER_LOOKUP).into())
    }

    type WatchProfileStream = Pin<Box<dyn Stream<Item = Result<proto::Profile, Status>> + Send + 'static>>;

    async fn watch_profile(
        &self,
        _req: Request<proto::WatchProfileRequest>,
    ) -> Result<Response<Self::WatchProfileStream>, Status> {
        Err(Error::Unimplemented("WatchProfile is not available yet; poll GetProfile and compare version").into())
    }
}

pub struct Loyalty(pub AppState);

const LEDGER: &str = "the points ledger is not built yet; GetBalance reports what the fold holds";

#[tonic::async_trait]
impl proto::loyalty_service_server::LoyaltyService for Loyalty {
    async fn get_balance(&self, req: Request<proto::GetBalanceRequest>) -> Result<Response<proto::Balance>, Status> {
        let r = req.into_inner();
        let addr = MemberAddress::try_from(r.member)?;
        let now = instant("as_of", r.as_of, now_millis())?;
        let m = find(&self.0, &addr)?;
        Ok(Response::new(proto::Balance {
            member_id: m.key.clone(),
            active_points: m.loyalty.active_points,
            pending_points: m.loyalty.pending_points,
            negative_balance: m.loyalty.negative_balance,
            tier: proto::Tier::Member as i32,
            version: Some(convert::version(&m)),
            as_of: Some(to_timestamp(now)),
            ..Default::default()
        }))
    }

    async fn list_ledger(
        &self,
        _: Request<proto::ListLedgerRequest>,
    ) -> Result<Response<proto::ListLedgerResponse>, Status> {
        Err(Error::Unimplemented(LEDGER).into())
    }

    async fn get_benefits(&self, _: Request<proto::GetBenefitsRequest>) -> Result<Response<proto::Benefits>, Status> {
        Err(Error::Unimplemented(LEDGER).into())
    }

    async fn redeem_points(
        &self,
        _: Request<proto::RedeemPointsRequest>,
    ) -> Result<Response<proto::RedeemPointsResponse>, Status> {
        Err(Error::Unimplemented(LEDGER).into())
    }

    async fn adjust_points(
        &self,
        _: Request<proto::AdjustPointsRequest>,
    ) -> Result<Response<proto::AdjustPointsResponse>, Status> {
        Err(Error::Unimplemented(LEDGER).into())
    }
}

pub struct Admin(pub AppState);

const ADMIN: &str = "this admin operation is not available yet";

#[tonic::async_trait]
impl proto::admin_service_server::AdminService for Admin {
    async fn erase_member(
        &self,
        _: Request<proto::EraseMemberRequest>,
    ) -> Result<Response<proto::EraseMemberResponse>, Status> {
        Err(Error::Unimplemented(ADMIN).into())
    }

    async fn export_member(
        &self,
        _: Request<proto::ExportMemberRequest>,
    ) -> Result<Response<proto::ExportMemberResponse>, Status> {
        Err(Error::Unimplemented(ADMIN).into())
    }

    async fn merge_members(
        &self,
        _: Request<proto::MergeMembersRequest>,
    ) -> Result<Response<proto::MergeMembersResponse>, Status> {
        Err(Error::Unimplemented(ADMIN).into())
    }

    async fn get_partition_status(
        &self,
        _: Request<proto::GetPartitionStatusRequest>,
    ) -> Result<Response<proto::GetPartitionStatusResponse>, Status> {
        let state = &self.0;
        let count = state.store.partition_count(&state.topic).map_err(Error::from)?.unwrap_or(0);
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let next = state.store.next_offset(&state.topic, p).map_err(Error::from)?;
            partitions.push(proto::PartitionStatus {
                topic: state.topic.clone(),
                partition: p,
                next_offset: next.unwrap_or(0),
                high_watermark: -1,
                has_state: next.is_some(),
            });
        }
        Ok(Response::new(proto::GetPartitionStatusResponse { partitions }))
    }

    async fn get_replay_status(
        &self,
        _: Request<proto::GetReplayStatusRequest>,
    ) -> Result<Response<proto::GetReplayStatusResponse>, Status> {
        Ok(Response::new(proto::GetReplayStatusResponse::default()))
    }
}
