//! Prometheus metrics: per RPC, protocol and status code, a request count and a latency histogram; refusals at
//! the gate; whether the database answers. Rendered in the text exposition format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// The protocol a request came in by, put in the request extensions by the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Grpc,
    GrpcWeb,
    Rest,
    Connect,
}

impl Protocol {
    /// The protocol of a request: gRPC-Web and gRPC by their content types; Connect by a path of the form
    /// `/<package.Service>/<Method>` with one of Connect's content types (`application/proto`, `application/json`,
    /// or a streaming `application/connect+…`); anything else is REST (no REST route has that form).
    pub fn of(path: &str, headers: &http::HeaderMap) -> Protocol {
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/grpc-web") {
            Protocol::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            Protocol::Grpc
        } else if is_procedure_path(path) && is_connect_content_type(content_type) {
            Protocol::Connect
        } else {
            Protocol::Rest
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc-web",
            Protocol::Rest => "rest",
            Protocol::Connect => "connect",
        }
    }
}

/// Whether `path` names a procedure as Connect and gRPC do: `/<package.Service>/<Method>`, the service
/// qualified by its package.
pub fn is_procedure_path(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    let name = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let mut parts = service.split('.');
    let qualified = service.contains('.') && parts.all(name);
    qualified && name(method)
}

/// Whether a content type is one of Connect's: unary `application/proto` and `application/json` (parameters
/// such as `charset` allowed), or streaming `application/connect+<codec>`.
pub fn is_connect_content_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/proto" || media == "application/json" || media.starts_with("application/connect+")
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    rpcs: Mutex<BTreeMap<(&'static str, Protocol, &'static str), Histogram>>,
    refused: Mutex<BTreeMap<(Protocol, &'static str), u64>>,
    database_up: AtomicBool,
    mail: MailCounts,
}

/// The outbox as the sender last saw it, and what this process's sender did.
#[derive(Default)]
struct MailCounts {
    /// Unsent jobs in the queue (every process's), and jobs kept as failed.
    queued: AtomicI64,
    failed: AtomicI64,
    /// When the oldest unsent job was queued, in microseconds since the epoch; `i64::MIN` when none is.
    oldest_queued_micros: AtomicI64,
    sent: AtomicU64,
    failed_attempts: AtomicU64,
}

impl Metrics {
    pub fn record_rpc(&self, rpc: &'static str, protocol: Protocol, code: &'static str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|p| p.into_inner());
        let h = rpcs.entry((rpc, protocol, code)).or_default();
        h.count += 1;
        h.sum += seconds;
        for (bucket, bound) in h.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// A call refused before it reached the service (`UNAUTHENTICATED`, `RATE_LIMITED`, `TIMEOUT`).
    pub fn record_refusal(&self, protocol: Protocol, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((protocol, reason))
            .or_default() += 1;
    }

    pub fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }

    /// The outbox's counts read by the sender: unsent jobs, failed jobs, and when the oldest unsent one was
    /// queued (microseconds since the epoch).
    pub fn set_mail_queue(&self, queued: i64, failed: i64, oldest_queued_micros: Option<i64>) {
        self.mail.queued.store(queued, Ordering::Relaxed);
        self.mail.failed.store(failed, Ordering::Relaxed);
        self.mail
            .oldest_queued_micros
            .store(oldest_queued_micros.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    pub fn record_mail_sent(&self) {
        self.mail.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_mail_failed_attempt(&self) {
        self.mail.failed_attempts.fetch_add(1, Ordering::Relaxed);
    }

    fn render_mail(&self, out: &mut String) {
        let m = &self.mail;
        let oldest = m.oldest_queued_micros.load(Ordering::Relaxed);
        // The age is taken now, not when the queue was read, so a stuck queue shows its age growing.
        let age = if oldest == i64::MIN {
            0.0
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            #[expect(clippy::cast_precision_loss, reason = "an age in seconds needs no 64-bit precision")]
            let age = now.saturating_sub(oldest).max(0) as f64 / 1e6;
            age
        };
        let lines: [(&str, &str, &str, String); 5] = [
            (
                "user_service_mail_queued",
                "gauge",
                "Mails queued and not yet sent (every process's).",
                m.queued.load(Ordering::Relaxed).to_string(),
            ),
            (
                "user_service_mail_failed",
                "gauge",
                "Mails given up on after --mail-max-attempts, kept as failed.",
                m.failed.load(Ordering::Relaxed).to_string(),
            ),
            (
                "user_service_mail_oldest_queued_age_seconds",
                "gauge",
                "Age of the oldest mail not yet sent; 0 when none is waiting.",
                age.to_string(),
            ),
            (
                "user_service_mail_sent_total",
                "counter",
                "Mails this process delivered.",
                m.sent.load(Ordering::Relaxed).to_string(),
            ),
            (
                "user_service_mail_failed_attempts_total",
                "counter",
                "Delivery attempts of this process that failed (retried or given up).",
                m.failed_attempts.load(Ordering::Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }

    /// The metrics in the Prometheus text format; `group_commits` is the SQLite writer's count of committed
    /// batches and of the writes they held (absent on PostgreSQL); `feed_reads` the change feed's reads by the
    /// shared reader and by watchers catching up on their own.
    pub fn render(&self, group_commits: Option<(u64, u64)>, feed_reads: (u64, u64)) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP user_service_rpc_duration_seconds Time to answer an RPC, by protocol and status code."
        );
        let _ = writeln!(out, "# TYPE user_service_rpc_duration_seconds histogram");
        for ((rpc, protocol, code), h) in self.rpcs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let labels = format!("rpc=\"{rpc}\",protocol=\"{}\",code=\"{code}\"", protocol.name());
            for (count, bound) in h.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "user_service_rpc_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "user_service_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "user_service_rpc_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "user_service_rpc_duration_seconds_count{{{labels}}} {}", h.count);
        }
        let _ = writeln!(
            out,
            "# HELP user_service_refused_total Calls refused before reaching the service."
        );
        let _ = writeln!(out, "# TYPE user_service_refused_total counter");
        for ((protocol, reason), n) in self.refused.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "user_service_refused_total{{protocol=\"{}\",reason=\"{reason}\"}} {n}",
                protocol.name()
            );
        }
        let _ = writeln!(
            out,
            "# HELP user_service_database_up Whether the database answered the last health check."
        );
        let _ = writeln!(out, "# TYPE user_service_database_up gauge");
        let _ = writeln!(
            out,
            "user_service_database_up {}",
            u8::from(self.database_up.load(Ordering::Relaxed))
        );
        if let Some((batches, writes)) = group_commits {
            let _ = writeln!(
                out,
                "# HELP user_service_sqlite_commits_total Transactions the SQLite writer committed (one per batch)."
            );
            let _ = writeln!(out, "# TYPE user_service_sqlite_commits_total counter");
            let _ = writeln!(out, "user_service_sqlite_commits_total {batches}");
            let _ = writeln!(
                out,
                "# HELP user_service_sqlite_committed_writes_total Writes applied in committed SQLite batches."
            );
            let _ = writeln!(out, "# TYPE user_service_sqlite_committed_writes_total counter");
            let _ = writeln!(out, "user_service_sqlite_committed_writes_total {writes}");
        }
        let _ = writeln!(
            out,
            "# HELP user_service_feed_reads_total Reads of the change feed: by the shared reader (one per wake-up, \
             whatever the number of watchers), and by watchers behind it catching up on their own."
        );
        let _ = writeln!(out, "# TYPE user_service_feed_reads_total counter");
        let (shared, catching_up) = feed_reads;
        let _ = writeln!(out, "user_service_feed_reads_total{{reader=\"shared\"}} {shared}");
        let _ = writeln!(
            out,
            "user_service_feed_reads_total{{reader=\"catching_up\"}} {catching_up}"
        );
        self.render_mail(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_names_the_protocol() {
        let on = |path: &str, content_type: Option<&'static str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = content_type {
                headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(value));
            }
            Protocol::of(path, &headers)
        };
        let of = |content_type| on("/users.v1.UserService/GetUser", content_type);
        assert_eq!(of(Some("application/grpc")), Protocol::Grpc);
        assert_eq!(of(Some("application/grpc+proto")), Protocol::Grpc);
        assert_eq!(of(Some("application/grpc-web+proto")), Protocol::GrpcWeb);
        assert_eq!(of(Some("application/grpc-web-text")), Protocol::GrpcWeb);
        assert_eq!(of(Some("application/json")), Protocol::Connect);
        assert_eq!(of(Some("application/json; charset=utf-8")), Protocol::Connect);
        assert_eq!(of(Some("application/proto")), Protocol::Connect);
        assert_eq!(of(Some("application/connect+proto")), Protocol::Connect);
        assert_eq!(of(Some("text/plain")), Protocol::Rest);
        assert_eq!(of(None), Protocol::Rest);
        // REST paths are never procedures, whatever the content type.
        assert_eq!(on("/v1/users", Some("application/json")), Protocol::Rest);
        assert_eq!(on("/v1/users/x", Some("application/proto")), Protocol::Rest);
        assert_eq!(on("/UserService/GetUser", Some("application/json")), Protocol::Rest);
        assert_eq!(
            on("/users.v1.UserService/GetUser/x", Some("application/json")),
            Protocol::Rest
        );
    }

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::default();
        m.record_rpc("GetUser", Protocol::Rest, "OK", Duration::from_millis(3));
        m.record_rpc("GetUser", Protocol::Rest, "OK", Duration::from_secs(10));
        m.record_refusal(Protocol::Grpc, "UNAUTHENTICATED");
        m.set_database_up(true);
        let text = m.render(None, (0, 0));
        assert!(text.contains(
            "user_service_rpc_duration_seconds_bucket{rpc=\"GetUser\",protocol=\"rest\",code=\"OK\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "user_service_rpc_duration_seconds_bucket{rpc=\"GetUser\",protocol=\"rest\",code=\"OK\",le=\"+Inf\"} 2"
        ));
        assert!(
            text.contains("user_service_rpc_duration_seconds_count{rpc=\"GetUser\",protocol=\"rest\",code=\"OK\"} 2")
        );
        assert!(text.contains("user_service_refused_total{protocol=\"grpc\",reason=\"UNAUTHENTICATED\"} 1"));
        assert!(text.contains("user_service_database_up 1"));
        assert!(!text.contains("user_service_sqlite_commits_total"));
        let text = m.render(Some((3, 70)), (0, 0));
        assert!(text.contains("user_service_sqlite_commits_total 3\n"));
        assert!(text.contains("user_service_sqlite_committed_writes_total 70\n"));
    }
}
