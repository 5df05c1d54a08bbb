//! `EraseMember`: the erasure job. The member is resolved here, the
//! erasure goes through the log as `erasureRequested` (the fold does the
//! erasing, docs/security.md), and the answer waits for the fold like a
//! redemption's.

use omnifold_core::loyalty::CommandKind;
use omnifold_core::member::ProfileKind;
use omnifold_core::time::to_timestamp;
use omnifold_proto::v1 as proto;

use crate::commands::{self, Command, Outcome};
use crate::request::{Erasure, MemberAddress};
use crate::services::resolve;
use crate::{AppState, Books, Error, convert, now_millis};

/// Erases the member `e` addresses through the log and waits for the fold
/// to do it; a retry of a finished job answers it again.
pub(crate) async fn erase(state: &AppState, e: Erasure) -> Result<proto::EraseMemberResponse, Error> {
    // `None`: not found by its member id, perhaps erased by this very job.
    let (key, kind) = match resolve(state, &e.member) {
        Ok(r) => (r.member.key, Some(r.member.kind)),
        Err(Error::NotFound(m)) => match &e.member {
            MemberAddress::Key(k) => (k.clone(), None),
            MemberAddress::Identifier(_) => return Err(Error::NotFound(m)),
        },
        Err(other) => return Err(other),
    };
    let cmd = Command {
        member: key.clone(),
        request_id: e.request_id.clone(),
        kind: CommandKind::Erase,
        points: 0,
        channel: omnifold_core::Channel::CallCenter,
        payload: proto::event::Payload::ErasureRequested(proto::ErasureRequested {
            reason: e.reason,
            request_id: e.request_id.clone(),
        }),
    };
    if kind.is_some_and(|k| k != ProfileKind::KnownMember) {
        return erase_profile(state, &cmd).await;
    }
    let partition = state.partition(&key)?;
    let finished = state.store().verdicts(partition, &[(&key, &e.request_id)])?.into_iter().next().flatten();
    if kind.is_none() && finished.is_none() {
        return Err(Error::NotFound(format!("no profile for member `{key}`")));
    }
    let days = days_of(state);
    let now = now_millis();
    let mut answer =
        proto::EraseMemberResponse { request_id: e.request_id, member_id: key.clone(), ..Default::default() };
    match commands::submit(state, &cmd).await? {
        Outcome::Decided(v) => {
            answer.status = proto::ErasureStatus::Done as i32;
            answer.requested_at = Some(to_timestamp(v.at));
            // Seen done now; a retry of a finished job reports the erasure's own time.
            answer.completed_at = Some(to_timestamp(if finished.is_some() { v.at } else { now.max(v.at) }));
            answer.deadline = Some(to_timestamp(v.at.saturating_add(days)));
            if now > v.at.saturating_add(days) && finished.is_none() {
                metrics::counter!("omnifold_erasures_overdue_total").increment(1);
            }
            answer.version = state.load(&key, Books::Skip)?.map(|m| convert::version(&m));
        }
        Outcome::InProgress => {
            answer.status = proto::ErasureStatus::Pending as i32;
            answer.requested_at = Some(to_timestamp(now));
            answer.deadline = Some(to_timestamp(now.saturating_add(days)));
        }
    }
    Ok(answer)
}

/// `privacy.erasure_deadline_days` in milliseconds.
fn days_of(state: &AppState) -> i64 {
    i64::from(state.privacy.erasure_deadline_days) * omnifold_core::time::DAY
}

/// Erases a provisional or anonymous profile: its record is deleted (its
/// key is an identifier or a device), so the job is done when it is gone.
async fn erase_profile(state: &AppState, cmd: &Command) -> Result<proto::EraseMemberResponse, Error> {
    let (key, days) = (cmd.member.clone(), days_of(state));
    let gone = || -> Result<Option<()>, Error> { Ok(state.load(&key, Books::Skip)?.is_none().then_some(())) };
    let now = now_millis();
    let mut answer = proto::EraseMemberResponse {
        request_id: cmd.request_id.clone(),
        member_id: cmd.member.clone(),
        requested_at: Some(to_timestamp(now)),
        deadline: Some(to_timestamp(now.saturating_add(days))),
        ..Default::default()
    };
    answer.status = match commands::append_and_wait(state, &cmd.member, cmd.event(), gone).await? {
        Outcome::Decided(()) => {
            answer.completed_at = Some(to_timestamp(now_millis()));
            proto::ErasureStatus::Done
        }
        Outcome::InProgress => proto::ErasureStatus::Pending,
    } as i32;
    Ok(answer)
}
