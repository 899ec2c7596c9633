//! The router of the service: the gRPC service with health and reflection, gRPC-Web, Connect and REST behind the
//! gate,
//! the probes, `/metrics` and `/openapi.json`, with CORS and request ids around them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_web::GrpcWebLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::api::UserServiceImpl;
use crate::auth::Verifier;
use crate::config::ServeConfig;
use crate::gate::Gate;
use crate::hash_pool::HashPool;
use crate::limits::RateLimiter;
use crate::metrics::{Metrics, Protocol};
use crate::pb;
use crate::pb::user_service_server::UserServiceServer;
use crate::rest_dispatch::MessageLimits;
use crate::store::{Store, WriteStats};
use crate::transcode::Transcoder;
use crate::transcode::connect::Connect;
use crate::transcode::connect_stream;
use crate::transcode::openapi::ServedBeside;
use crate::transcode::rule::HttpBinding;
use serde_json::json;

/// Builds the router serving every protocol over `store`; `/readyz` answers from `ready`, which the health loop
/// keeps.
pub(super) fn router<H: Health>(
    config: &ServeConfig,
    store: &Store,
    metrics: Arc<Metrics>,
    health_service: HealthServer<H>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<Router> {
    // The gate spends the per-caller limiter per request; the service spends it per password to hash.
    let limiter = Arc::new(RateLimiter::new(config.rate_limit, config.rate_burst));
    let hash_pool = Arc::new(HashPool::new(usize::from(config.password_hash_concurrency)));
    let service = Arc::new(
        UserServiceImpl::new(store.clone(), metrics.clone(), limiter.clone(), hash_pool)
            .with_max_message_bytes(config.max_message_bytes)
            .with_verification_ttl(config.mail.verification_ttl)
            .with_watchers(crate::api::watch::Watchers::new(
                config.max_watchers,
                config.watch_bookmark_interval,
                config.event_retention,
            )),
    );
    let user_service = UserServiceServer::from_arc(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    // Reflection in both versions (grpcurl before 1.8.8 speaks only v1alpha), with Google's error model beside
    // the service so that tools decode `grpc-status-details-bin` and Connect error details.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(pb::GOOGLE_RPC_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version lists only itself otherwise; a client should see every service it can call.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };

    let grpc = tonic::service::Routes::new(user_service)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .into_axum_router();
    // REST calls the service's methods directly, held to the message limits gRPC calls are held to.
    let limits = MessageLimits {
        max_decoding: config.max_message_bytes,
        max_encoding: config.max_message_bytes,
    };
    let transcoder = Transcoder::new(
        pb::FILE_DESCRIPTOR_SET,
        pb::user_service_handlers(service.clone(), limits),
        config.max_message_bytes,
        crate::api::codec::decode_limits().clone(),
    )?;
    // Connect calls the same handlers as REST, with the request message in its body.
    let connect = Connect::new(
        pb::FILE_DESCRIPTOR_SET,
        pb::user_service_handlers(service, limits),
        config.max_message_bytes,
        crate::api::codec::decode_limits().clone(),
    )?;
    let openapi = Bytes::from(serde_json::to_vec(&openapi_document(transcoder.bindings()))?);
    let (verifier, _, generated) = Verifier::from_config(&config.auth)?;
    if generated {
        tracing::info!(
            "generated a JWT secret in {}; mint an admin token with `user-service {MINT_ARGS}` (from a checkout: `cargo run --release \
             -- {MINT_ARGS}`)",
            config.auth.data_dir.join(crate::auth::SECRET_FILE).display()
        );
    }
    let gate = Arc::new(Gate {
        metrics: metrics.clone(),
        verifier,
        limiter,
        request_timeout: config.request_timeout,
    });
    // The gate sits inside the gRPC-Web translation (so its refusals reach browsers as gRPC-Web) and in front
    // of REST: one check for every protocol. REST then calls the service's methods, with the caller.
    let grpc_with_web: BoxCloneSyncService<Request, Response, std::convert::Infallible> = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .map_response(|r: http::Response<tonic::body::Body>| r.map(axum::body::Body::new))
            .layer(GrpcWebLayer::new())
            .map_request(|r: http::Request<tonic::body::Body>| r.map(axum::body::Body::new))
            .layer(axum::middleware::from_fn_with_state(gate.clone(), crate::gate::gate))
            .service(grpc),
    );
    let rest_service = tower::service_fn(move |request: Request| {
        let transcoder = transcoder.clone();
        async move { Ok::<_, std::convert::Infallible>(transcoder.handle(request).await) }
    });
    let rest: BoxCloneSyncService<Request, Response, std::convert::Infallible> = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(gate.clone(), crate::gate::gate))
            .service(rest_service),
    );
    let connect_service = tower::service_fn(move |request: Request| {
        let connect = connect.clone();
        async move { Ok::<_, std::convert::Infallible>(connect.handle(request).await) }
    });
    let connect: BoxCloneSyncService<Request, Response, std::convert::Infallible> = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(gate, crate::gate::gate))
            .service(connect_service),
    );
    let dispatch = Dispatch {
        grpc: grpc_with_web,
        rest,
        connect,
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz).with_state(ready))
        .route(
            "/metrics",
            get({
                let store = store.clone();
                move || {
                    let metrics = metrics.clone();
                    let commits = store.write_stats().map(WriteStats::snapshot);
                    let feed_reads = store.feed_reads();
                    async move {
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            metrics.render(commits, feed_reads),
                        )
                    }
                }
            }),
        )
        .route(
            "/openapi.json",
            get(move || {
                let document = openapi.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document) }
            }),
        )
        .fallback(move |request: Request| dispatch.clone().call(request));
    let router = match cors_layer(&config.cors_origins)? {
        Some(cors) => router.layer(cors),
        None => router,
    };
    let router = router
        // The span names the path but never the query string, which can carry a current password.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &http::Request<axum::body::Body>| {
                let request_id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    Ok(router)
}

/// Sends gRPC and gRPC-Web requests (by content type) to the tonic services, Connect requests (by path and
/// content type) to the Connect handler, and everything else to REST.
#[derive(Clone)]
struct Dispatch {
    grpc: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
    rest: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
    connect: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
}

impl Dispatch {
    async fn call(self, mut request: Request) -> Response {
        let protocol = Protocol::of(request.uri().path(), request.headers());
        if protocol == Protocol::Connect && connect_stream::is_streaming_proto(request.headers()) {
            return self.connect_stream(request).await;
        }
        request.extensions_mut().insert(protocol);
        let service = match protocol {
            Protocol::Rest => self.rest,
            Protocol::Connect => self.connect,
            Protocol::Grpc | Protocol::GrpcWeb => self.grpc,
        };
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

impl Dispatch {
    /// Connect's streaming protocol with protobuf messages, served by the gRPC services through the bridge: the
    /// gate sees a gRPC call, and its refusals are bridged back like any gRPC status.
    async fn connect_stream(self, request: Request) -> Response {
        let mut request = match connect_stream::to_grpc(request) {
            Ok(request) => request,
            Err(refused) => return connect_stream::end_of_stream_response(&refused),
        };
        request.extensions_mut().insert(Protocol::Grpc);
        match self.grpc.oneshot(request).await {
            Ok(response) => connect_stream::from_grpc(response),
            Err(never) => match never {},
        }
    }
}

/// CORS for browsers: the configured origins may call gRPC-Web, Connect and REST, send the headers those
/// protocols need and read the gRPC status trailers-in-headers and Connect's compression headers. No origins configured means no cross-origin access.
fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| anyhow::anyhow!("--cors-origin {o:?} is not a valid origin")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let header_names = |names: &[&'static str]| names.iter().map(|n| HeaderName::from_static(n)).collect::<Vec<_>>();
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers(header_names(&[
                "content-type",
                "authorization",
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
                "if-match",
                "x-request-id",
                "connect-protocol-version",
                "connect-timeout-ms",
                "content-encoding",
                "connect-content-encoding",
                "connect-accept-encoding",
            ]))
            .expose_headers(header_names(&[
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
                "etag",
                "x-request-id",
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "content-encoding",
                "connect-content-encoding",
                "connect-accept-encoding",
            ]))
            .max_age(Duration::from_secs(600)),
    ))
}

/// The OpenAPI document of the REST API and of the probes served beside it.
fn openapi_document(bindings: &[HttpBinding]) -> serde_json::Value {
    crate::transcode::openapi::document(
        bindings,
        "user-service",
        env!("CARGO_PKG_VERSION"),
        (env!("CARGO_PKG_LICENSE"), "https://www.apache.org/licenses/LICENSE-2.0"),
        &[probes()],
    )
}

/// The token command an operator runs after the first start, installed or from a checkout.
const MINT_ARGS: &str = "token --sub admin --scope users.admin";

/// The probes this router answers, which need no token (an explicit empty `security`, so that the document
/// says so rather than leaving it open).
fn probes() -> ServedBeside {
    const TAG: &str = "Operations";
    let text = |example: &str| json!({"text/plain": {"schema": {"type": "string", "example": example}}});
    ServedBeside {
        tag: TAG,
        description: "Liveness, readiness, metrics and this document; no authentication needed.",
        get: vec![
            (
                "/healthz",
                json!({
                    "operationId": "healthz",
                    "security": [],
                    "tags": [TAG],
                    "summary": "Liveness probe.",
                    "responses": {"200": {"description": "The process is serving.", "content": text("ok")}},
                }),
            ),
            (
                "/readyz",
                json!({
                    "operationId": "readyz",
                    "security": [],
                    "tags": [TAG],
                    "summary": "Readiness probe: whether the database is reachable.",
                    "responses": {
                        "200": {"description": "Ready to serve.", "content": text("ready")},
                        "503": {"description": "The database is unreachable.", "content": text("database unreachable")},
                    },
                }),
            ),
            (
                "/metrics",
                json!({
                    "operationId": "metrics",
                    "tags": [TAG],
                    "security": [],
                    "summary": "Prometheus metrics (text exposition format 0.0.4).",
                    "responses": {"200": {
                        "description": "Request, refusal, database and commit counters.",
                        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                    }},
                }),
            ),
            (
                "/openapi.json",
                json!({
                    "operationId": "openapiDocument",
                    "security": [],
                    "tags": [TAG],
                    "summary": "This OpenAPI document.",
                    "responses": {"200": {
                        "description": "The OpenAPI 3.0 document of the REST API.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }},
                }),
            ),
        ],
    }
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_need_no_token() {
        let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let bindings = crate::transcode::rule::bindings(&pool).expect("the http rules are valid");
        let doc = openapi_document(&bindings);
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let probe = &doc["paths"][path]["get"];
            assert!(probe.is_object(), "{path} is described");
            assert_eq!(probe["security"], json!([]), "{path} needs no token, and says so");
            assert_eq!(probe["tags"], json!(["Operations"]));
        }
        assert!(doc["paths"]["/readyz"]["get"]["responses"]["503"].is_object());
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        let tags = doc["tags"].as_array().expect("tags");
        assert_eq!(tags.last().map(|t| &t["name"]), Some(&json!("Operations")));
    }
}
