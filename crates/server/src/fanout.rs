//! `BatchGetProfiles` across instances: the members are grouped by the
//! instance that answers for them; this instance reads its own, each other
//! owner gets one sub-batch (all at once), and the answers are put back in
//! request order. A member whose partition is moving fails its own result
//! (UNAVAILABLE, ask again), never the batch.

use std::collections::BTreeMap;

use tonic::Status;

use omnifold_proto::v1 as proto;
use omnifold_proto::v1::profile_service_client::ProfileServiceClient;

use crate::request::{AsOf, MemberAddress, ReadMask};
use crate::routing::{Forward, Hop, Route};
use crate::services::batch_profiles;
use crate::{AppState, Error, ReadCost};

/// Where each member of a batch goes.
#[derive(Default)]
struct Plan {
    /// Answered here: request index, with the applied offset of its
    /// partition, and the lag of the standby copy it is read from (if so).
    here: Vec<(usize, i64, Option<i64>)>,
    /// Sent to another owner, by address.
    there: BTreeMap<String, (Forward, Vec<usize>)>,
    /// Answered at once with an error of their own.
    failed: Vec<(usize, Status)>,
}

/// The batch's results, in request order.
pub(crate) async fn batch(
    state: &AppState,
    hop: &Hop,
    request: &proto::BatchGetProfilesRequest,
    addrs: Vec<MemberAddress>,
    mask: ReadMask,
    when: AsOf,
) -> Result<Vec<proto::ProfileResult>, Error> {
    let plan = plan(state, hop, &addrs).await?;
    let wire = |i: usize| request.members[i].clone();
    let mut results: Vec<Option<proto::ProfileResult>> = vec![None; addrs.len()];
    for (i, status) in plan.failed {
        results[i] = Some(failed(wire(i), &status));
    }
    let mut remote = tokio::task::JoinSet::new();
    for (_, (to, indices)) in plan.there {
        let sub = proto::BatchGetProfilesRequest {
            members: indices.iter().map(|i| wire(*i)).collect(),
            read_mask: request.read_mask.clone(),
            as_of: request.as_of,
        };
        remote.spawn(async move {
            let answer =
                to.send(sub, |c, req| async move { ProfileServiceClient::new(c).batch_get_profiles(req).await }).await;
            (indices, answer.map(|r| r.into_inner().results))
        });
    }
    if !plan.here.is_empty() {
        let here_addrs: Vec<MemberAddress> = plan.here.iter().map(|(i, ..)| addrs[*i].clone()).collect();
        let wires: Vec<proto::MemberRef> = plan.here.iter().map(|(i, ..)| wire(*i)).collect();
        let local = state
            .reading(hop.standby())
            .read(ReadCost::Long, move |state| batch_profiles(state, &here_addrs, wires, &mask, when))
            .await?;
        for ((i, applied, standby_lag), mut result) in plan.here.into_iter().zip(local) {
            result.applied_offset = applied;
            result.standby = standby_lag.is_some();
            result.standby_lag = standby_lag.unwrap_or_default();
            results[i] = Some(result);
        }
    }
    while let Some(done) = remote.join_next().await {
        let (indices, answer) = done.map_err(|e| Error::Internal(format!("a forwarded batch failed: {e}")))?;
        match answer {
            Ok(answers) if answers.len() == indices.len() => {
                for (i, result) in indices.into_iter().zip(answers) {
                    results[i] = Some(result);
                }
            }
            Ok(_) => {
                let status = Status::internal("an owner answered a batch with the wrong number of results");
                for i in indices {
                    results[i] = Some(failed(wire(i), &status));
                }
            }
            Err(status) => {
                for i in indices {
                    results[i] = Some(failed(wire(i), &status));
                }
            }
        }
    }
    Ok(results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|| failed(wire(i), &Status::internal("no answer"))))
        .collect())
}

/// Routes every member of the batch. A batch takes no minimum offset (its
/// members are on several partitions); each result carries its own.
async fn plan(state: &AppState, hop: &Hop, addrs: &[MemberAddress]) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    let hop = hop.without_min_offset();
    for (i, addr) in addrs.iter().enumerate() {
        match state.route(addr, &hop).await {
            Ok(Route::Here(served)) => plan.here.push((i, served.applied(), served.standby_lag())),
            Ok(Route::There(to)) => plan.there.entry(to.address().to_owned()).or_insert((to, Vec::new())).1.push(i),
            Err(e @ (Error::Elsewhere(_) | Error::NotFound(_))) => plan.failed.push((i, Status::from(e))),
            Err(e) => return Err(e),
        }
    }
    Ok(plan)
}

/// A member's result that carries an error instead of a profile.
fn failed(member: proto::MemberRef, status: &Status) -> proto::ProfileResult {
    proto::ProfileResult {
        member: Some(member),
        code: status.code() as i32,
        message: status.message().to_owned(),
        ..Default::default()
    }
}
