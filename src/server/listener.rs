//! The listener and its connections: serves the router on one port over HTTP/1.1 and HTTP/2 with deliberate
//! connection limits (first-byte, header and idle timeouts, undelivered bytes, the connection cap) and graceful
//! shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::App;
use crate::config::ServeConfig;
use crate::connection::{AcceptPacing, Account, Tracked, Verdict};

/// Largest header block a client may send; users need no more than a token and a few ids.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

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
        if config.socket_send_buffer_bytes > 0
            && let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(&stream, config.socket_send_buffer_bytes)
        {
            tracing::debug!(error = %e, "setting the socket's send buffer failed");
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
