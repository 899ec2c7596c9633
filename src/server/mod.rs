//! The server: [`app`] opens the store and assembles the service (the router in `router`, the health and purge
//! loops in `tasks`); [`serve`] (in `listener`) runs it on one port until shutdown.

mod listener;
mod router;
mod tasks;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;

use crate::config::ServeConfig;
use crate::mail::{self, Mailer, SenderOptions};
use crate::metrics::Metrics;
use crate::store::Store;

pub use listener::serve;

/// The built service: its router and the store behind it.
pub struct App {
    pub router: Router,
    pub store: Store,
    /// Background loops (health, purge, the mail sender) that end with the app.
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
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // /readyz answers from the health loop's last ping, so probes never reach the database themselves. The first
    // ping happens here, so the answer is right from the first request on.
    let ready = Arc::new(AtomicBool::new(store.ping().await));
    let mailer = Arc::new(Mailer::from_config(&config.mail, &config.auth.data_dir)?);
    let tasks = vec![
        tasks::health(store.clone(), metrics.clone(), ready.clone(), health_reporter),
        tasks::purge(store.clone(), config.purge_interval, config.event_retention),
        mail::spawn(
            store.clone(),
            mailer,
            metrics.clone(),
            SenderOptions {
                max_attempts: config.mail.mail_max_attempts,
                retry_delay: config.mail.mail_retry_delay,
                poll_interval: config.mail.mail_poll_interval,
                verification_ttl: config.mail.verification_ttl,
            },
        ),
    ];
    let router = router::router(config, &store, metrics, health_service, ready)?;
    Ok(App { router, store, tasks })
}
