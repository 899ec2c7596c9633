//! The gate every RPC passes, whatever its protocol: bearer-token authentication filling the `Caller`, the
//! per-caller rate limit, and the request time limit. Health and reflection stay open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, header};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::status::ERROR_DOMAIN;
use crate::auth::{Verifier, bearer_token};
use crate::connection::Budget;
use crate::domain::caller::shown;
use crate::limits::{Admission, RateLimiter};
use crate::metrics::{Metrics, Protocol};
use crate::rpc_status::{
    bearer_challenge, connect_status_response, retry_after_seconds, set_retry_after, status_response,
};

/// gRPC services any client may call without a token.
const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The peer address of a connection, put in each request's extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

pub struct Gate {
    pub metrics: Arc<Metrics>,
    pub verifier: Verifier,
    /// Shared with the service, which charges it for work dearer than a request (passwords to hash).
    pub limiter: Arc<RateLimiter>,
    pub request_timeout: Duration,
}

/// A refusal in the caller's protocol: a trailers-only gRPC status, a REST error body or Connect's error JSON;
/// each with `Retry-After` when the status has a retry delay.
fn refuse(protocol: Protocol, status: &Status) -> Response {
    match protocol {
        Protocol::Grpc | Protocol::GrpcWeb => {
            let mut response = status.clone().into_http::<axum::body::Body>();
            set_retry_after(response.headers_mut(), status);
            response
        }
        Protocol::Rest => status_response(status),
        Protocol::Connect => connect_status_response(status),
    }
}

fn status(code: Code, message: String, reason: &str, details: impl FnOnce(&mut ErrorDetails)) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    details(&mut d);
    Status::with_error_details(code, message, d)
}

fn set_rate_headers(response: &mut Response, limit: u64, remaining: u64) {
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
}

/// The middleware: authenticate, rate limit, then run the call within the time limit.
pub async fn gate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if OPEN_SERVICES.iter().any(|open| path.starts_with(open)) {
        return next.run(request).await;
    }
    // gRPC-Web reaches the gate translated to gRPC, so its refusals are gRPC ones too (translated back on the way
    // out); the router names the protocol, and the content type does for a gate used without it.
    let protocol = request
        .extensions()
        .get::<Protocol>()
        .copied()
        .unwrap_or_else(|| Protocol::of(request.uri().path(), request.headers()));
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = bearer_token(header).and_then(|token| gate.verifier.verify(token));

    // Unauthenticated calls spend their address's budget, so bad tokens cannot make the verifier work for free.
    let key = match (&caller, request.extensions().get::<PeerAddr>()) {
        (Ok(caller), _) => crate::limits::caller_key(&caller.subject),
        (Err(_), Some(peer)) => format!("ip:{}", peer.0.ip()),
        (Err(_), None) => "ip:unknown".to_owned(),
    };
    let limit = gate.limiter.capacity();
    let remaining = match gate.limiter.take(&key) {
        Admission::Allowed { remaining } => remaining,
        Admission::Limited { retry_after } => {
            let seconds = retry_after_seconds(retry_after);
            let refused = status(
                Code::ResourceExhausted,
                format!("rate limit of {limit} requests exceeded; retry in {seconds} s"),
                "RATE_LIMITED",
                |d| {
                    d.set_retry_info(Some(retry_after));
                    // The key holds the token's `sub`, which may be long: the refusal shows at most 200
                    // characters of it.
                    d.add_quota_failure_violation(shown(&key), "requests per caller");
                },
            );
            gate.metrics.record_refusal(protocol, "RATE_LIMITED");
            let mut response = refuse(protocol, &refused);
            set_rate_headers(&mut response, limit, 0);
            return response;
        }
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => {
            gate.metrics.record_refusal(protocol, "UNAUTHENTICATED");
            let refused = status(Code::Unauthenticated, e.0, "UNAUTHENTICATED", |_| {});
            let mut response = refuse(protocol, &refused);
            if matches!(protocol, Protocol::Rest | Protocol::Connect) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, bearer_challenge(true));
            }
            return response;
        }
    };
    request.extensions_mut().insert(caller);
    // The time limit covers waiting for room in the connection's response budget: a connection whose client
    // does not read its answers gets no more work done for it.
    let budget = request.extensions().get::<Budget>().cloned();
    let run = async move {
        if let Some(budget) = budget {
            budget.admit().await;
        }
        next.run(request).await
    };
    let mut response = match tokio::time::timeout(gate.request_timeout, run).await {
        Ok(response) => response,
        Err(_) => {
            gate.metrics.record_refusal(protocol, "TIMEOUT");
            refuse(
                protocol,
                &status(
                    Code::DeadlineExceeded,
                    format!("the request took longer than {} ms", gate.request_timeout.as_millis()),
                    "REQUEST_TIMEOUT",
                    |_| {},
                ),
            )
        }
    };
    set_rate_headers(&mut response, limit, remaining);
    response
}
