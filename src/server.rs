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
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use std::sync::Arc;

use crate::api::UserServiceImpl;
use crate::auth::Verifier;
use crate::config::ServeConfig;
use crate::gate::{Gate, PeerAddr};
use crate::hash_pool::HashPool;
use crate::limits::RateLimiter;
use crate::metrics::{Metrics, Protocol};
use crate::pb;
use crate::pb::user_service_server::UserServiceServer;
use crate::store::{Store, WriteStats};
use crate::transcode::Transcoder;

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
    let user_service = UserServiceServer::new(
        UserServiceImpl::new(store.clone(), metrics.clone(), limiter.clone(), hash_pool)
            .with_max_message_bytes(config.max_message_bytes),
    )
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let health_task = tokio::spawn({
        let store = store.clone();
        let metrics = metrics.clone();
        async move {
            let mut last = None;
            loop {
                let up = store.ping().await;
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
        .route("/readyz", get(readyz).with_state(store.clone()))
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

async fn readyz(State(store): State<Store>) -> (StatusCode, &'static str) {
    if store.ping().await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish for up to the
/// configured grace period.
pub async fn serve(
    listener: TcpListener,
    app: App,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_BYTES)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let router = app.router.clone();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
                let service = TowerToHyperService::new(router.clone().map_request(
                    move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(PeerAddr(peer));
                        request
                    },
                ));
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => tracing::warn!("grace period over; closing connections"),
    }
    drop(app);
    Ok(())
}
