//! The outbox sender: claims due mail jobs, makes each one's code, sends it, and records the outcome, retrying
//! failures with exponential backoff; woken by this process's commits, polling for other processes'.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use super::{Mailer, SendError};
use crate::metrics::Metrics;
use crate::store::{MailJob, Store};

/// Jobs claimed at once; a full batch is followed by another claim without waiting.
const BATCH: i64 = 32;
/// How long a claimed job is kept from other senders: longer than an SMTP exchange may take
/// ([`super::SMTP_TIMEOUT`]) with room to spare, so a live sender's job is never taken twice; a sender that died
/// leaves it to the others after this.
const LEASE: Duration = Duration::from_secs(120);
/// The longest wait between two attempts of one mail.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How the sender runs.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    pub max_attempts: u16,
    pub retry_delay: Duration,
    pub poll_interval: Duration,
    pub verification_ttl: Duration,
}

/// The wait after the `attempts`-th failed attempt: `retry_delay`, doubled for each attempt after the first,
/// at most [`MAX_BACKOFF`].
pub fn backoff(retry_delay: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
    retry_delay.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Starts the sender. It runs until the task is aborted (with the app).
pub fn spawn(store: Store, mailer: Arc<Mailer>, metrics: Arc<Metrics>, options: SenderOptions) -> JoinHandle<()> {
    tokio::spawn(async move {
        let wake = store.mail_queued();
        loop {
            let claimed = match store.claim_mail(LEASE, BATCH).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = ?e, "claiming queued mail failed; will retry");
                    Vec::new()
                }
            };
            let full = i64::try_from(claimed.len()).unwrap_or(i64::MAX) >= BATCH;
            futures::future::join_all(
                claimed
                    .into_iter()
                    .map(|job| deliver(&store, &mailer, &metrics, &options, job)),
            )
            .await;
            match store.mail_stats().await {
                Ok(stats) => metrics.set_mail_queue(
                    stats.queued,
                    stats.failed,
                    stats.oldest_queued.map(|t| t.timestamp_micros()),
                ),
                Err(e) => tracing::debug!(error = ?e, "reading the mail queue's counts failed"),
            }
            if full {
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    })
}

/// One attempt of one job. Errors of the database leave the job claimed: its lease runs out and it is tried
/// again, so a mail is sent at least once; its stable Message-ID tells a duplicate apart.
async fn deliver(store: &Store, mailer: &Mailer, metrics: &Metrics, options: &SenderOptions, job: MailJob) {
    let ttl = chrono::Duration::from_std(options.verification_ttl).unwrap_or(chrono::Duration::hours(24));
    let id = job.id.clone();
    let attempts = job.attempts;
    let prepared = match store.prepare_mail(job, ttl).await {
        Ok(Some(prepared)) => prepared,
        Ok(None) => {
            tracing::debug!(job = %id, "queued mail has nothing left to send; dropped");
            return;
        }
        Err(e) => {
            tracing::warn!(job = %id, error = ?e, "preparing queued mail failed; will retry");
            return;
        }
    };
    let (user, code) = prepared;
    let sent = match mailer.verification_message(&id, &user, &code) {
        Ok(message) => mailer.send(&id, message).await,
        Err(e) => Err(e),
    };
    // The code is not needed past this point; it never reaches a log or the database.
    drop(code);
    let result = match sent {
        Ok(()) => {
            metrics.record_mail_sent();
            tracing::info!(job = %id, user = %user.id, "verification mail sent");
            store.finish_mail(id.clone(), true, None, String::new()).await
        }
        Err(e) => {
            let retry_at = match &e {
                SendError::Transient(_) if attempts < i32::from(options.max_attempts) => {
                    let wait = backoff(options.retry_delay, attempts);
                    Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1)))
                }
                _ => None,
            };
            metrics.record_mail_failed_attempt();
            if retry_at.is_some() {
                tracing::warn!(job = %id, attempts, error = %e, "sending mail failed; will retry");
            } else {
                tracing::error!(job = %id, attempts, error = %e, "sending mail failed; giving up");
            }
            store.finish_mail(id.clone(), false, retry_at, e.to_string()).await
        }
    };
    if let Err(e) = result {
        tracing::warn!(job = %id, error = ?e, "recording a mail attempt failed; the job is tried again after its lease");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(30);
        assert_eq!(backoff(base, 1), Duration::from_secs(30));
        assert_eq!(backoff(base, 2), Duration::from_secs(60));
        assert_eq!(backoff(base, 4), Duration::from_secs(240));
        assert_eq!(backoff(base, 9), MAX_BACKOFF);
        assert_eq!(backoff(base, i32::MAX), MAX_BACKOFF);
    }
}
