//! HTTP for partners (`server.http_listen`): a JSON gateway to the read
//! methods and `RedeemPoints`, and an event collector (docs/http.md, the
//! OpenAPI document `docs/openapi.json`).
//!
//! The gateway calls the gRPC services in process, as the caller the
//! request's `authorization` header names: authentication, scopes, rate
//! limits, masking, forwarding to the owner and the audit trail are the
//! services' own, so HTTP cannot see or do more than gRPC. A gRPC status
//! becomes an HTTP status in one place ([`status_response`]), with
//! `Retry-After` when the status carries a retry hint.
//!
//! The collector validates each event of a batch against the JSON contract
//! (the fold's own decoder) and appends the valid ones to the events topic
//! through the idempotent producer, then answers per event: accepted,
//! rejected with the reason, or failed (not written; send the batch again:
//! event ids make a resend harmless).

// Steps of a handler return the answer that ends it as their error: built
// once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use omnifold_core::{Event, Payload, decode_event};
use omnifold_proto::v1 as proto;
use proto::loyalty_service_server::LoyaltyService as _;
use proto::profile_service_server::ProfileService as _;
use serde::Deserialize;
use tokio::net::TcpListener;
use tonic::Status;

use crate::auth::{self, Caller, HTTP_EVENTS_METHOD, HTTP_EVENTS_SERVICE};
use crate::services::{Loyalty, Profiles};
use crate::{AppState, request};

/// The largest request body by default, and events per collector request.
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 1 << 20;
pub const MAX_EVENTS_PER_REQUEST: usize = 500;

/// The OpenAPI document of these routes (tested against [`routes`]).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

#[derive(Clone)]
struct Http {
    state: AppState,
    max_body: usize,
}

/// Serves the gateway and the collector on `listener` until `shutdown`:
/// HTTPS with the gRPC port's certificate (and client CA) when TLS is on.
pub async fn serve_http(
    listener: TcpListener,
    state: AppState,
    max_body: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = state.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.http.clone()));
    let app = router(state, max_body);
    match tls {
        Some(acceptor) => {
            let listener = crate::tls::TlsListener { tcp: listener, acceptor };
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}

/// Every route: method, path (as in the OpenAPI document) and handler.
fn routes() -> Vec<(&'static str, &'static str, MethodRouter<Http>)> {
    vec![
        ("get", "/v1/profiles/{member}", get(get_profile)),
        ("post", "/v1/profiles:batchGet", post(batch_get_profiles)),
        ("get", "/v1/identifiers/{type}/{value}", get(lookup_identifier)),
        ("get", "/v1/members/{member}/balance", get(get_balance)),
        ("get", "/v1/members/{member}/benefits", get(get_benefits)),
        ("get", "/v1/members/{member}/ledger", get(list_ledger)),
        ("post", "/v1/members/{member}/redemptions", post(redeem_points)),
        ("post", "/v1/events", post(collect_events)),
        ("get", "/v1/openapi.json", get(openapi)),
    ]
}

/// The router, with bodies limited to `max_body` bytes.
pub fn router(state: AppState, max_body: usize) -> Router {
    let mut r = Router::new();
    for (_, path, handler) in routes() {
        r = r.route(path, handler);
    }
    r.fallback(|| async { error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route; see /v1/openapi.json".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Http { state, max_body })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The caller the request's credentials name, or the refusal's answer
/// (recorded as a gRPC refusal would be).
fn admit(http: &Http, method: &str, headers: &HeaderMap) -> Result<Arc<Caller>, Response> {
    let Some(authenticator) = &http.state.auth else {
        return Ok(Arc::new(Caller::unauthenticated()));
    };
    let path = format!("/{method}");
    match authenticator.check(&path, headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(caller) => Ok(caller.unwrap_or_else(|| Arc::new(Caller::unauthenticated()))),
        Err((status, caller)) => {
            let audit = http.state.audit.clone().map(|log| (log, crate::audit::instance(&http.state)));
            auth::refused(audit.as_ref(), &path, caller.as_deref(), &status);
            Err(status_response(&status))
        }
    }
}

/// Calls a gRPC method as the request's caller and answers its message
/// as proto3 JSON.
async fn call<T, R, F, Fut>(http: &Http, headers: &HeaderMap, method: &str, msg: T, f: F) -> Response
where
    F: FnOnce(AppState, tonic::Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    R: serde::Serialize,
{
    let caller = match admit(http, method, headers) {
        Ok(c) => c,
        Err(refused) => return counted(method, refused),
    };
    // The credentials go along: a request forwarded to the member's owner
    // is authenticated there as this caller.
    let mut request = tonic::Request::new(msg);
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Ok(v) = v.parse()
    {
        request.metadata_mut().insert("authorization", v);
    }
    let answer = auth::scoped(caller, f(http.state.clone(), request)).await;
    let response = match answer {
        Ok(r) => (StatusCode::OK, axum::Json(r.into_inner())).into_response(),
        Err(s) => status_response(&s),
    };
    counted(method, response)
}

fn counted(method: &str, r: Response) -> Response {
    let route = method.rsplit('/').next().unwrap_or("unknown").to_owned();
    metrics::counter!("omnifold_http_requests_total", "method" => route, "code" => r.status().as_u16().to_string())
        .increment(1);
    r
}

/// A JSON error in the shape of `google.rpc.Status`: the gRPC code's
/// number and name, and the message.
fn error(http: StatusCode, name: &str, message: String) -> Response {
    let code = grpc_code_of(name);
    (http, axum::Json(serde_json::json!({"code": code, "status": name, "message": message}))).into_response()
}

fn grpc_code_of(name: &str) -> i32 {
    (0..=16).find(|c| code_name(tonic::Code::from_i32(*c)) == name).unwrap_or(2)
}

/// A gRPC status as an HTTP answer (the mapping of grpc-gateway and
/// Google's API design guide); a retry hint becomes `Retry-After`.
pub(crate) fn status_response(s: &Status) -> Response {
    use tonic::Code;
    let http = match s.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = error(http, code_name(s.code()), s.message().to_owned());
    let retry_ms = s.metadata().get(crate::routing::RETRY_AFTER_MS).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(ms) = retry_ms {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
    r
}

/// The code's name as in google.rpc.Code (`NOT_FOUND`).
fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn invalid(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

/// A JSON body of `T` (proto3 JSON), or the answer that says what is wrong.
fn body<T: serde::de::DeserializeOwned>(
    http: &Http,
    raw: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, Response> {
    let bytes = raw.map_err(|e| too_large_or(http, &e))?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("the body is not a {what} in proto3 JSON: {e}")))
}

fn too_large_or(http: &Http, e: &BytesRejection) -> Response {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "OUT_OF_RANGE",
            format!(
                "the body is larger than {} bytes (server.http_max_body_bytes); send less per request",
                http.max_body
            ),
        );
    }
    invalid(format!("the body cannot be read: {e}"))
}

/// An RFC 3339 instant from a query parameter.
fn instant(name: &str, value: Option<&str>) -> Result<Option<omnifold_proto::wkt::Timestamp>, Response> {
    value
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.to_owned()))
                .map_err(|_| invalid(format!("{name} `{v}` is not an RFC 3339 instant like 2026-06-01T10:00:00Z")))
        })
        .transpose()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct ReadQuery {
    /// Top-level fields, comma separated.
    fields: Option<String>,
    as_of: Option<String>,
}

async fn get_profile(
    State(http): State<Http>,
    Path(member): Path<String>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return invalid(format!("query: {e}; use fields=a,b and as_of=RFC 3339")),
    };
    let as_of = match instant("as_of", q.as_of.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let paths = q.fields.map(|f| f.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect());
    let msg = proto::GetProfileRequest {
        member: Some(request::member_ref(&member)),
        read_mask: Some(omnifold_proto::wkt::FieldMask { paths: paths.unwrap_or_default() }),
        as_of,
    };
    call(&http, &headers, "omnifold.v1.ProfileService/GetProfile", msg, |s, r| async move {
        Profiles(s).get_profile(r).await
    })
    .await
}

async fn batch_get_profiles(
    State(http): State<Http>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let msg: proto::BatchGetProfilesRequest = match body(&http, raw, "BatchGetProfilesRequest") {
        Ok(m) => m,
        Err(r) => return r,
    };
    call(&http, &headers, "omnifold.v1.ProfileService/BatchGetProfiles", msg, |s, r| async move {
        Profiles(s).batch_get_profiles(r).await
    })
    .await
}

async fn lookup_identifier(
    State(http): State<Http>,
    Path((kind, value)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(t) = proto::IdentifierType::from_str_name(&kind.to_ascii_uppercase()) else {
        return invalid(format!(
            "`{kind}` is not an identifier type; use PHONE, EMAIL, LOYALTY_CARD, DEVICE_ID or EXTERNAL"
        ));
    };
    let msg = proto::LookupIdentifierRequest { identifier: Some(proto::Identifier { r#type: t as i32, value }) };
    call(&http, &headers, "omnifold.v1.ProfileService/LookupIdentifier", msg, |s, r| async move {
        Profiles(s).lookup_identifier(r).await
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AsOfQuery {
    as_of: Option<String>,
}

type AsOfQueryResult = Result<Query<AsOfQuery>, axum::extract::rejection::QueryRejection>;

/// A read of the member in the path at the query's `as_of`: `make` builds
/// the request from them, `f` calls the method.
async fn member_read<T, R, F, Fut>(
    http: &Http,
    headers: &HeaderMap,
    (member, query): (String, AsOfQueryResult),
    method: &str,
    make: fn(Option<proto::MemberRef>, Option<omnifold_proto::wkt::Timestamp>) -> T,
    f: F,
) -> Response
where
    F: FnOnce(AppState, tonic::Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    R: serde::Serialize,
{
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return invalid(format!("query: {e}; use as_of=RFC 3339")),
    };
    let as_of = match instant("as_of", q.as_of.as_deref()) {
        Ok(t) => t,
        Err(r) => return r,
    };
    call(http, headers, method, make(Some(request::member_ref(&member)), as_of), f).await
}

async fn get_balance(
    State(http): State<Http>,
    Path(member): Path<String>,
    query: AsOfQueryResult,
    headers: HeaderMap,
) -> Response {
    let make = |member, as_of| proto::GetBalanceRequest { member, as_of };
    member_read(&http, &headers, (member, query), "omnifold.v1.LoyaltyService/GetBalance", make, |s, r| async move {
        Loyalty(s).get_balance(r).await
    })
    .await
}

async fn get_benefits(
    State(http): State<Http>,
    Path(member): Path<String>,
    query: AsOfQueryResult,
    headers: HeaderMap,
) -> Response {
    let make = |member, as_of| proto::GetBenefitsRequest { member, as_of };
    member_read(&http, &headers, (member, query), "omnifold.v1.LoyaltyService/GetBenefits", make, |s, r| async move {
        Loyalty(s).get_benefits(r).await
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    page_size: Option<i32>,
    page_token: Option<String>,
    /// Kinds, comma separated (EARN, REDEEM, ...).
    kinds: Option<String>,
}

async fn list_ledger(
    State(http): State<Http>,
    Path(member): Path<String>,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return invalid(format!("query: {e}; use page_size, page_token and kinds=EARN,REDEEM")),
    };
    let mut kinds = Vec::new();
    for k in q.kinds.iter().flat_map(|k| k.split(',')).map(str::trim).filter(|k| !k.is_empty()) {
        match proto::LedgerEntryKind::from_str_name(&k.to_ascii_uppercase()) {
            Some(kind) => kinds.push(kind as i32),
            None => return invalid(format!("kinds: `{k}` is not a ledger entry kind")),
        }
    }
    let msg = proto::ListLedgerRequest {
        member: Some(request::member_ref(&member)),
        page_size: q.page_size.unwrap_or_default(),
        page_token: q.page_token.unwrap_or_default(),
        kinds,
        ..Default::default()
    };
    call(&http, &headers, "omnifold.v1.LoyaltyService/ListLedger", msg, |s, r| async move {
        Loyalty(s).list_ledger(r).await
    })
    .await
}

async fn redeem_points(
    State(http): State<Http>,
    Path(member): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let mut msg: proto::RedeemPointsRequest = match body(&http, raw, "RedeemPointsRequest") {
        Ok(m) => m,
        Err(r) => return r,
    };
    if msg.member.is_some() {
        return invalid("the member is the path's; leave `member` out of the body".into());
    }
    msg.member = Some(request::member_ref(&member));
    call(&http, &headers, "omnifold.v1.LoyaltyService/RedeemPoints", msg, |s, r| async move {
        Loyalty(s).redeem_points(r).await
    })
    .await
}

/// One event's answer from the collector.
#[derive(Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    index: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    event_id: String,
    /// ACCEPTED (acknowledged by the broker), REJECTED (fix it: `reason`),
    /// FAILED (not written: send it again).
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

async fn collect_events(State(http): State<Http>, headers: HeaderMap, raw: Result<Bytes, BytesRejection>) -> Response {
    let method = format!("{HTTP_EVENTS_SERVICE}/{HTTP_EVENTS_METHOD}");
    if let Err(refused) = admit(&http, &method, &headers) {
        return counted(&method, refused);
    }
    let events = match raw.map_err(|e| too_large_or(&http, &e)).and_then(|b| events_of(&b)) {
        Ok(e) => e,
        Err(r) => return counted(&method, r),
    };
    let Some(log) = http.state.commands.as_ref().map(|c| c.log.clone()) else {
        let s = Status::unavailable("this instance writes nothing to Kafka (read-only); send events to another");
        return counted(&method, status_response(&s));
    };
    let checked: Vec<Result<(Event, Vec<u8>), String>> = events.iter().map(|e| check_event(&http.state, e)).collect();
    let appends = checked.iter().map(|c| {
        let log = log.clone();
        async move {
            match c {
                Ok((event, bytes)) => Some(log.append_event(&event.subject.key(), bytes.clone()).await),
                Err(_) => None,
            }
        }
    });
    let written = futures::future::join_all(appends).await;
    let verdicts: Vec<Verdict> = checked
        .iter()
        .zip(written)
        .enumerate()
        .map(|(index, (c, w))| {
            let event_id = events[index].get("eventId").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let (status, reason) = match (c, w) {
                (Err(why), _) => ("REJECTED", why.clone()),
                (Ok(_), Some(Ok(()))) => ("ACCEPTED", String::new()),
                (Ok(_), Some(Err(e))) => ("FAILED", format!("not written to Kafka ({e}); send it again")),
                (Ok(_), None) => ("FAILED", "not written".into()),
            };
            Verdict { index, event_id, status, reason }
        })
        .collect();
    let count = |s: &str| verdicts.iter().filter(|v| v.status == s).count();
    let (accepted, rejected, failed) = (count("ACCEPTED"), count("REJECTED"), count("FAILED"));
    metrics::counter!("omnifold_http_events_total", "status" => "accepted").increment(accepted as u64);
    metrics::counter!("omnifold_http_events_total", "status" => "rejected").increment(rejected as u64);
    metrics::counter!("omnifold_http_events_total", "status" => "failed").increment(failed as u64);
    let body = serde_json::json!({"accepted": accepted, "rejected": rejected, "failed": failed, "results": verdicts});
    // Rejections are the sender's to fix, and said per event; an event not
    // written is worth a retry of the batch.
    let mut r = if failed > 0 {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    } else {
        (StatusCode::OK, axum::Json(body)).into_response()
    };
    if failed > 0 {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    counted(&method, r)
}

/// The events of a collector body: a JSON array, or `{"events": [...]}`.
fn events_of(bytes: &[u8]) -> Result<Vec<serde_json::Value>, Response> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("the body is not JSON: {e}; send {{\"events\": [...]}} or an array of events")))?;
    let events = match value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("events") => match o.remove("events") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err(invalid("`events` must be an array of events".into())),
        },
        _ => return Err(invalid("send {\"events\": [...]} or an array of events (docs/events.md)".into())),
    };
    if events.is_empty() || events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "OUT_OF_RANGE",
            format!(
                "a request carries 1 to {MAX_EVENTS_PER_REQUEST} events, got {}; send them in several requests",
                events.len()
            ),
        ));
    }
    Ok(events)
}

/// An event checked as the fold will decode it, with the bytes to write;
/// or why it is refused. Points and erasure have their own authenticated
/// methods, and what only omnifold writes is never taken from outside.
fn check_event(state: &AppState, e: &serde_json::Value) -> Result<(Event, Vec<u8>), String> {
    let bytes = serde_json::to_vec(e).map_err(|e| e.to_string())?;
    let event = decode_event(&bytes, state.max_event_bytes, &state.fold.limits).map_err(|e| e.to_string())?;
    let refused = match &event.payload {
        Payload::PointsAdjusted { .. } => Some("pointsAdjusted moves points: use AdjustPoints (scope loyalty:adjust)"),
        Payload::PointsRedemptionRequested { .. } => {
            Some("pointsRedemptionRequested spends points: use POST /v1/members/{member}/redemptions")
        }
        Payload::ErasureRequested { .. } => Some("erasureRequested erases a person: use EraseMember (scope admin)"),
        Payload::MembersMerged { .. } => Some("membersMerged merges people: use MergeMembers (scope admin)"),
        _ if event.is_internal() => Some("only omnifold writes this event"),
        _ => None,
    };
    match refused {
        Some(why) => Err(why.to_owned()),
        None => Ok((event, bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is in the OpenAPI document, with its method, and the
    /// document names no route that does not exist.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.clone(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> =
            routes().into_iter().map(|(m, p, _)| (m.to_owned(), p.to_owned())).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    }

    #[test]
    fn statuses_become_http_answers_with_retry_hints() {
        let r = status_response(&Status::not_found("no profile for member `x`"));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let mut s = Status::resource_exhausted("slow down");
        s.metadata_mut().insert(crate::routing::RETRY_AFTER_MS, "1500".parse().expect("ascii"));
        let r = status_response(&s);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(grpc_code_of("NOT_FOUND"), 5);
    }
}
