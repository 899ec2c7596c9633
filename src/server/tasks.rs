//! The background loops of a running service: the health loop (the database's ping, published to gRPC health,
//! `/readyz` and the metrics) and the purge of soft-deleted users past their purge time
//! (and of change feed events past their retention).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::Metrics;
use crate::store::Store;

/// How often the database is pinged to keep the health status true.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Pings the database every [`HEALTH_INTERVAL`] and publishes the answer to `ready` (for `/readyz`), the metrics
/// and, when it changes, the gRPC health service. Starts from `ready`'s value, the first ping.
pub(super) fn health(
    store: Store,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    health_reporter: HealthReporter,
) -> JoinHandle<()> {
    tokio::spawn(async move {
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
    })
}

/// Purges soft-deleted users past their purge time, and change feed events older than `event_retention`,
/// every `interval`.
pub(super) fn purge(store: Store, interval: Duration, event_retention: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match store.purge_expired(chrono::Utc::now(), event_retention).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged soft-deleted users past their purge time"),
                Err(e) => tracing::warn!(error = ?e, "purging soft-deleted users failed; will retry"),
            }
            tokio::time::sleep(interval).await;
        }
    })
}
