//! The router of the service: the gRPC service with health and reflection, gRPC-Web and REST behind the gate,
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
use crate::store::{Store, WriteStats};
use crate::transcode::Transcoder;

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
    let user_service = UserServiceServer::new(
        UserServiceImpl::new(store.clone(), metrics.clone(), limiter.clone(), hash_pool)
            .with_max_message_bytes(config.max_message_bytes),
    )
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let grpc = tonic::service::Routes::new(user_service)
        .add_service(health_service)
        .add_service(reflection)
        .into_axum_router();
    // REST calls reach the plain gRPC router in-process; only callers from outside go through gRPC-Web.
    let transcoder = Transcoder::new(
        pb::FILE_DESCRIPTOR_SET,
        grpc.clone(),
        config.max_message_bytes,
        crate::api::codec::decode_limits().clone(),
    )?;
    let openapi = Bytes::from(serde_json::to_vec(&crate::transcode::openapi::document(
        transcoder.bindings(),
        "user-service",
        env!("CARGO_PKG_VERSION"),
    ))?);
    let (verifier, _, generated) = Verifier::from_config(&config.auth)?;
    if generated {
        tracing::info!(
            "generated a JWT secret in {}; mint an admin token with: user-service token --sub admin --scope users.admin",
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
    // of REST: one check for every protocol. REST then calls the gRPC router directly, with the caller.
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
            .layer(axum::middleware::from_fn_with_state(gate, crate::gate::gate))
            .service(rest_service),
    );
    let dispatch = Dispatch {
        grpc: grpc_with_web,
        rest,
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
                    async move {
                        (
                            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                            metrics.render(commits),
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

/// Sends gRPC and gRPC-Web requests (by content type) to the tonic services and everything else to REST.
#[derive(Clone)]
struct Dispatch {
    grpc: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
    rest: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
}

impl Dispatch {
    async fn call(self, mut request: Request) -> Response {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let protocol = if content_type.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            Protocol::Grpc
        } else {
            Protocol::Rest
        };
        request.extensions_mut().insert(protocol);
        let service = if protocol == Protocol::Rest {
            self.rest
        } else {
            self.grpc
        };
        match service.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// CORS for browsers: the configured origins may call gRPC-Web and REST, send the headers those protocols need
/// and read the gRPC status trailers-in-headers. No origins configured means no cross-origin access.
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
            ]))
            .max_age(Duration::from_secs(600)),
    ))
}

async fn readyz(State(ready): State<Arc<AtomicBool>>) -> (StatusCode, &'static str) {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}
