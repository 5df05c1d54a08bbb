//! The audit trail: who called an admin or loyalty-write method, what it
//! asked, when, and how it ended, appended through an [`AuditLog`] (the
//! binary writes it to the audit topic) once the call is decided. Refusals
//! by the auth layer are recorded too.
//!
//! A forwarded call is recorded once, by the instance that decided it
//! (the owner), with the instance that forwarded it.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use omnifold_proto::v1 as proto;

use crate::auth::{Caller, Via};
use crate::{AppState, privacy};

/// One record of the audit topic (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call was decided (RFC 3339, UTC).
    pub at: String,
    /// The key's name or the token's subject; `unauthenticated` when the
    /// call had no good credentials.
    pub caller: String,
    /// `api_key`, `jwt`, `none` (authentication off) or `unknown`.
    pub via: String,
    /// `service/method`, e.g. `omnifold.v1.LoyaltyService/AdjustPoints`.
    pub method: String,
    /// What the call asked: ids, amounts, reasons; a member addressed by an
    /// identifier is recorded masked.
    #[serde(default)]
    pub request: serde_json::Value,
    /// The gRPC status code's name, e.g. `Ok`, `PermissionDenied`.
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// The instance that decided it.
    pub instance: String,
    /// The instance that forwarded it here, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<String>,
}

/// Where audit records go.
#[tonic::async_trait]
pub trait AuditLog: std::fmt::Debug + Send + Sync + 'static {
    /// Appends one record under `key` (the caller); `Err` when it could not
    /// be written.
    async fn append(&self, key: &str, value: Vec<u8>) -> Result<(), String>;
}

/// Whether calls to `path` are audited: every admin method, the loyalty
/// writes and audience listings (bulk reads of who is in a segment).
pub(crate) fn audited(path: &str) -> bool {
    let path = path.trim_start_matches('/');
    path.starts_with("omnifold.v1.AdminService/")
        || path == "omnifold.v1.LoyaltyService/RedeemPoints"
        || path == "omnifold.v1.LoyaltyService/AdjustPoints"
        || path == "omnifold.v1.AudienceService/ListAudienceMembers"
}

tokio::task_local! {
    /// Set when the call being audited was forwarded to its owner.
    static FORWARDED: Cell<bool>;
}

/// Notes that the call in progress went to another instance, which
/// records it.
pub(crate) fn mark_forwarded() {
    let _ = FORWARDED.try_with(|f| f.set(true));
}

/// A call to be recorded once it is decided.
pub(crate) struct Audited {
    method: &'static str,
    caller: Arc<Caller>,
    forwarded_by: Option<String>,
    request: serde_json::Value,
}

impl Audited {
    pub(crate) fn of<T>(method: &'static str, req: &Request<T>, request: serde_json::Value) -> Audited {
        Audited {
            method,
            caller: crate::auth::caller(),
            forwarded_by: req
                .metadata()
                .get(crate::routing::FORWARDED_BY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            request,
        }
    }

    /// Runs `call` and records how it ended (unless it was forwarded: the
    /// owner records it).
    pub(crate) async fn run<T>(
        self,
        state: &AppState,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let Some(log) = state.audit.clone() else {
            return call.await;
        };
        let (result, forwarded) = FORWARDED
            .scope(Cell::new(false), async {
                let r = call.await;
                (r, FORWARDED.with(Cell::get))
            })
            .await;
        if !forwarded {
            let record = AuditRecord::of(
                Some(&self.caller),
                format!("omnifold.v1.{}", self.method),
                self.request,
                result.as_ref().err(),
                instance(state),
                self.forwarded_by,
            );
            append(log, record).await;
        }
        result
    }
}

impl AuditRecord {
    /// The record of a call by `caller` (`None`: not authenticated) that
    /// ended with `refused` (`None`: answered).
    fn of(
        caller: Option<&Caller>,
        method: String,
        request: serde_json::Value,
        refused: Option<&Status>,
        instance: String,
        forwarded_by: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            at: omnifold_core::time::rfc3339(crate::now_millis()),
            caller: caller.map_or_else(|| "unauthenticated".to_owned(), |c| c.name.clone()),
            via: caller.map_or("unknown", |c| via(c.via)).into(),
            method,
            request,
            code: format!("{:?}", refused.map_or(tonic::Code::Ok, Status::code)),
            message: refused.map_or_else(String::new, |s| s.message().to_owned()),
            instance,
            forwarded_by,
        }
    }
}

/// A refusal by the auth layer, recorded in the background.
pub(crate) fn refused(log: &Arc<dyn AuditLog>, instance: String, path: &str, caller: Option<&Caller>, status: &Status) {
    let method = path.trim_start_matches('/').to_owned();
    let record = AuditRecord::of(caller, method, serde_json::Value::Null, Some(status), instance, None);
    deliver(log.clone(), record);
}

/// How long a call's answer waits for its audit record to be taken by the
/// broker. Past it the answer goes out and the record keeps trying in the
/// background (the producer's own delivery timeout): a broker outage must
/// not hold every admin call and redemption up.
const AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Appends `record`, waiting at most [`AUDIT_WAIT`] for the broker.
async fn append(log: Arc<dyn AuditLog>, record: AuditRecord) {
    if let Some(delivery) = deliver(log, record)
        && tokio::time::timeout(AUDIT_WAIT, delivery).await.is_err()
    {
        tracing::debug!("an audit record is still on its way to the broker");
    }
}

/// Starts sending `record` in the background; the task ends once the
/// broker took it or it was counted lost.
fn deliver(log: Arc<dyn AuditLog>, record: AuditRecord) -> Option<tokio::task::JoinHandle<()>> {
    let value = match serde_json::to_vec(&record) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "an audit record could not be written as JSON");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        if let Err(e) = log.append(&record.caller, value).await {
            metrics::counter!("omnifold_audit_failures_total").increment(1);
            tracing::error!(error = %e, method = record.method, caller = record.caller, "an audit record was lost");
        }
    }))
}

fn via(v: Via) -> &'static str {
    match v {
        Via::ApiKey => "api_key",
        Via::Jwt => "jwt",
        Via::Nobody => "none",
    }
}

/// This instance's name in the group, if it has one.
pub(crate) fn instance(state: &AppState) -> String {
    state.routing.as_ref().map_or_else(String::new, |r| r.owners.instance().to_owned())
}

/// A member address as the audit trail records it: a member or anonymous
/// id as it is, an identifier masked.
pub(crate) fn member(r: &Option<proto::MemberRef>) -> String {
    use proto::member_ref::Ref;
    match r.as_ref().and_then(|r| r.r#ref.as_ref()) {
        Some(Ref::MemberId(id)) | Some(Ref::AnonymousId(id)) => id.clone(),
        Some(Ref::Identifier(i)) => {
            let kind = proto::IdentifierType::try_from(i.r#type).map_or("UNKNOWN", |t| t.as_str_name());
            privacy::mask_key(&format!("{kind}:{}", i.value), false)
        }
        None => String::new(),
    }
}
