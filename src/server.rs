//! Assembles the service (gRPC service, health, reflection, probes, middleware) into one router and serves it
//! on one port over HTTP/1.1 and HTTP/2 with deliberate connection limits and graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::api::UserServiceImpl;
use crate::auth::Verifier;
use crate::config::ServeConfig;
use crate::connection::{AcceptPacing, Account, Tracked, Verdict};
use crate::gate::Gate;
use crate::hash_pool::HashPool;
use crate::limits::RateLimiter;
use crate::metrics::{Metrics, Protocol};
use crate::pb;
use crate::pb::user_service_server::UserServiceServer;
use crate::rest_dispatch::MessageLimits;
use crate::store::{Store, WriteStats};
use crate::transcode::Transcoder;
use crate::transcode::openapi::ServedBeside;
use crate::transcode::rule::HttpBinding;
use serde_json::json;

/// How often the database is pinged to keep the health status true.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Largest header block a client may send; users need no more than a token and a few ids.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// The built service: its router and the store behind it.
pub struct App {
    pub router: Router,
    pub store: Store,
    /// Background loops (health, purge) that end with the app.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens the database (running migrations) and builds the router serving every protocol.
pub async fn app(config: &ServeConfig) -> anyhow::Result<App> {
    let options = config.database.store_options();
    let store = tokio::task::spawn_blocking(move || Store::open(&options)).await??;

    let metrics = Arc::new(Metrics::default());
    // The gate spends the per-caller limiter per request; the service spends it per password to hash.
    let limiter = Arc::new(RateLimiter::new(config.rate_limit, config.rate_burst));
    let hash_pool = Arc::new(HashPool::new(usize::from(config.password_hash_concurrency)));
    let service = Arc::new(
        UserServiceImpl::new(store.clone(), metrics.clone(), limiter.clone(), hash_pool)
            .with_max_message_bytes(config.max_message_bytes),
    );
    let user_service = UserServiceServer::from_arc(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // /readyz answers from the health loop's last ping, so probes never reach the database themselves. The first
    // ping happens here, so the answer is right from the first request on.
    let ready = Arc::new(AtomicBool::new(store.ping().await));
    let health_task = tokio::spawn({
        let store = store.clone();
        let metrics = metrics.clone();
        let ready = ready.clone();
        async move {
            let mut last = None;
            let mut up = ready.load(Ordering::Relaxed);
            loop {
                ready.store(up, Ordering::Relaxed);
                metrics.set_database_up(up);
                let status = if up {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                if last != Some(status) {
                    tracing::info!(?status, "health status");
                    health_reporter.set_service_status("", status).await;
                    health_reporter.set_service_status("users.v1.UserService", status).await;
                    last = Some(status);
                }
                tokio::time::sleep(HEALTH_INTERVAL).await;
                up = store.ping().await;
            }
        }
    });

    let purge_task = tokio::spawn({
        let store = store.clone();
        let interval = config.purge_interval;
        async move {
            loop {
                match store.purge_expired(chrono::Utc::now()).await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, "purged soft-deleted users past their purge time"),
                    Err(e) => tracing::warn!(error = ?e, "purging soft-deleted users failed; will retry"),
                }
                tokio::time::sleep(interval).await;
            }
        }
    });

    let grpc = tonic::service::Routes::new(user_service)
        .add_service(health_service)
        .add_service(reflection)
        .into_axum_router();
    // REST calls the service's methods directly, held to the message limits gRPC calls are held to.
    let limits = MessageLimits {
        max_decoding: config.max_message_bytes,
        max_encoding: config.max_message_bytes,
    };
    let transcoder = Transcoder::new(
        pb::FILE_DESCRIPTOR_SET,
        pb::user_service_handlers(service, limits),
        config.max_message_bytes,
        crate::api::codec::decode_limits().clone(),
    )?;
    let openapi = Bytes::from(serde_json::to_vec(&openapi_document(transcoder.bindings()))?);
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
    Ok(App {
        router,
        store,
        tasks: vec![health_task, purge_task],
    })
}

/// Sends gRPC and gRPC-Web requests (by content type) to the tonic services and everything else to REST.
#[derive(Clone)]
struct Dispatch {
    grpc: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
    rest: BoxCloneSyncService<Request, Response, std::convert::Infallible>,
}

impl Dispatch {
    async fn call(self, mut request: Request) -> Response {
        let protocol = Protocol::of(request.headers());
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

/// The OpenAPI document of the REST API and of the probes served beside it.
fn openapi_document(bindings: &[HttpBinding]) -> serde_json::Value {
    crate::transcode::openapi::document(bindings, "user-service", env!("CARGO_PKG_VERSION"), &[probes()])
}

/// The probes this router answers (`/metrics` is left out of the document), which need no token.
fn probes() -> ServedBeside {
    const TAG: &str = "Operations";
    let text = |example: &str| json!({"text/plain": {"schema": {"type": "string", "example": example}}});
    ServedBeside {
        tag: TAG,
        description: "Liveness, readiness and this document; no authentication needed.",
        get: vec![
            (
                "/healthz",
                json!({
                    "operationId": "healthz",
                    "tags": [TAG],
                    "summary": "Liveness probe.",
                    "responses": {"200": {"description": "The process is serving.", "content": text("ok")}},
                }),
            ),
            (
                "/readyz",
                json!({
                    "operationId": "readyz",
                    "tags": [TAG],
                    "summary": "Readiness probe: whether the database is reachable.",
                    "responses": {
                        "200": {"description": "Ready to serve.", "content": text("ready")},
                        "503": {"description": "The database is unreachable.", "content": text("database unreachable")},
                    },
                }),
            ),
            (
                "/openapi.json",
                json!({
                    "operationId": "openapiDocument",
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

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish for up to the
/// configured grace period.
///
/// Each connection gets `--header-timeout` to send its first bytes, is closed after `--idle-timeout` without a
/// request in flight, and is dropped when a response it holds stays undelivered past the request's deadline.
/// At `--max-connections` open connections the listener stops accepting until one closes.
pub async fn serve(
    listener: TcpListener,
    app: App,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(limit) = crate::connection::raise_open_file_limit() {
        let wanted = u64::from(config.max_connections) + FILE_RESERVE;
        if limit < wanted {
            tracing::warn!(
                open_file_limit = limit,
                max_connections = config.max_connections,
                "the open-file limit is below --max-connections; accepts past it fail and are paced"
            );
        }
    }
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        // The head of a request must fit the read buffer, so this caps the HTTP/1.1 header block (431).
        .max_buf_size(MAX_HEADER_BYTES as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_BYTES)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let limits = ConnectionLimits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        request_timeout: config.request_timeout,
        response_budget: config.max_connection_response_bytes.max(config.max_message_bytes),
    };
    let (stop, stopping) = watch::channel(Stop::Serving);
    let slots = Arc::new(Semaphore::new(config.max_connections as usize));
    let mut pacing = AcceptPacing::default();
    let router = app.router.clone();
    tokio::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close before accepting: waiting clients cost nothing but a slot
        // in the kernel's backlog, where refusing them would make them retry in a loop.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    pacing.succeeded();
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    let delay = pacing.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        tokio::spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            builder.clone(),
            limits,
            stopping.clone(),
            slot,
        ));
    }
    drop(listener);
    drop(stopping);
    tracing::info!("shutting down: waiting for in-flight requests");
    let _ = stop.send(Stop::Graceful);
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("grace period over; closing connections");
            let _ = stop.send(Stop::Now);
            stop.closed().await;
        }
    }
    drop(app);
    Ok(())
}

/// How long an idle connection that was asked to close may take to finish closing.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Open files kept for the database pool, the listener and logs beside client connections.
const FILE_RESERVE: u64 = 64;

/// What the listener tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Serving,
    /// Finish in-flight requests, then close.
    Graceful,
    /// Close now.
    Now,
}

#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_timeout: Duration,
    idle_timeout: Duration,
    request_timeout: Duration,
    response_budget: usize,
}

/// Serves one connection until it ends, is idle too long, holds an undelivered answer past its deadline, or the
/// server stops. Holds its connection slot until then.
async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<Stop>,
    _slot: OwnedSemaphorePermit,
) {
    // A connection that sends nothing within the header timeout is closed before hyper sees it: hyper's own
    // header timeout starts only once it knows the protocol, which takes the client's first bytes.
    let mut first = [0u8; 1];
    tokio::select! {
        sent = tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)) => match sent {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(%peer, "closing a connection that sent nothing within the header timeout");
                return;
            }
        },
        _ = stopping.wait_for(|stop| *stop != Stop::Serving) => return,
    }
    let account = Account::new(limits.response_budget);
    let service = TowerToHyperService::new(Tracked {
        router,
        account: account.clone(),
        peer,
        request_timeout: limits.request_timeout,
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    // Set when an idle connection was asked to close: a client that never completes the HTTP/2 GOAWAY
    // exchange (acknowledging its PING) is dropped after a short grace.
    let idle_close = tokio::time::sleep(Duration::MAX);
    tokio::pin!(idle_close);
    let mut idle_closing = false;
    loop {
        let idle_timeout = (!closing).then_some(limits.idle_timeout);
        tokio::select! {
            () = idle_close.as_mut(), if idle_closing => {
                tracing::debug!(%peer, "dropping an idle connection that did not finish closing");
                return;
            }
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            verdict = account.verdict(idle_timeout) => match verdict {
                Verdict::Idle => {
                    tracing::debug!(%peer, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    idle_closing = true;
                    idle_close.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                }
                Verdict::Expired => {
                    // Dropping the connection resets every stream on it and frees what they held.
                    tracing::warn!(
                        %peer,
                        held_bytes = account.held_bytes(),
                        "dropping a connection whose client did not read a response within the request timeout"
                    );
                    return;
                }
            },
            changed = stopping.changed() => {
                let stop = if changed.is_ok() { *stopping.borrow_and_update() } else { Stop::Now };
                match stop {
                    Stop::Serving => {}
                    Stop::Graceful if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    Stop::Graceful => {}
                    Stop::Now => return,
                }
            }
        }
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
        for path in ["/healthz", "/readyz", "/openapi.json"] {
            let probe = &doc["paths"][path]["get"];
            assert!(probe.is_object(), "{path} is described");
            assert!(probe.get("security").is_none());
            assert_eq!(probe["tags"], json!(["Operations"]));
        }
        assert!(doc["paths"]["/readyz"]["get"]["responses"]["503"].is_object());
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");
        let tags = doc["tags"].as_array().expect("tags");
        assert_eq!(tags.last().map(|t| &t["name"]), Some(&json!("Operations")));
    }
}
