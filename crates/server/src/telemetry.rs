//! What every gRPC call leaves behind: the request metrics operators know
//! from go-grpc-prometheus (`grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, by service, method and code) and a
//! tracing span per call with its method.
//!
//! A tower layer outside authentication, so refusals are counted with
//! their codes. Only methods of the contract get their own labels; any
//! other path counts as `unknown`, so a caller cannot grow the number of
//! series by inventing paths.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::auth::{Need, need};

/// The layer that measures each call.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Measured<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Measured<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = labels(req.uri().path());
        let started = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            let code = match &r {
                Ok(resp) => code_of(resp.headers()),
                Err(_) => "Unknown",
            };
            let (s, m) = (service.clone(), method.clone());
            metrics::counter!("grpc_server_handled_total", "grpc_service" => s, "grpc_method" => m, "grpc_code" => code)
                .increment(1);
            metrics::histogram!("grpc_server_handling_seconds", "grpc_service" => service, "grpc_method" => method)
                .record(started.elapsed().as_secs_f64());
            r
        })
    }
}

/// The service and method labels of a path: `unknown` for a path that is
/// not a method of the contract (or health, or reflection).
fn labels(path: &str) -> (String, String) {
    match (need(path), path.strip_prefix('/').and_then(|p| p.split_once('/'))) {
        (Need::Unknown, _) | (_, None) => ("unknown".into(), "unknown".into()),
        (_, Some((service, method))) => (service.to_owned(), method.to_owned()),
    }
}

/// A response's gRPC code, in go-grpc-prometheus' spelling. An error is
/// answered in the headers (trailers-only); a success carries its status
/// in the trailers, after the body, so headers without one are OK. A
/// stream's code is of its start (later errors come in its trailers).
fn code_of(headers: &http::HeaderMap) -> &'static str {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// The span of one call: its method (the path), so every log line of the
/// call says which.
pub(crate) fn span(req: &http::Request<()>) -> tracing::Span {
    tracing::info_span!("grpc", method = req.uri().path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_of_the_contract_get_their_own_labels() {
        assert_eq!(
            labels("/omnifold.v1.ProfileService/GetProfile"),
            ("omnifold.v1.ProfileService".into(), "GetProfile".into())
        );
        assert_eq!(labels("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health".into(), "Check".into()));
        for invented in ["/omnifold.v1.ProfileService/Nope", "/x/y", "/", "no-slash"] {
            assert_eq!(labels(invented), ("unknown".into(), "unknown".into()), "{invented}");
        }
    }

    #[test]
    fn a_code_comes_from_the_headers_and_is_ok_without_one() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), "OK");
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&h), "NotFound");
    }
}
