//! Command-line and environment configuration: one clap struct per command, each flag with its env name and
//! default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::auth::AuthConfig;
use crate::store::{SqliteSync, StoreOptions};

#[derive(Debug, Parser)]
#[command(
    name = "user-service",
    version,
    about = "User management over gRPC, gRPC-Web and REST/JSON"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log line format: `text` (human-readable; coloured only when writing to a terminal) or `json` (one JSON
    /// object per line, for log collectors).
    #[arg(
        long,
        global = true,
        env = "USER_SERVICE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once at start and moved into the server: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Serve gRPC, gRPC-Web and REST on one port (runs pending migrations first).
    Serve(ServeConfig),
    /// Run pending database migrations and exit.
    Migrate(DatabaseConfig),
    /// Print a signed HS256 token (for development and tests), using the same secret as `serve`.
    Token(TokenConfig),
}

#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    /// The token's subject: a user id for self-service, any name for a service account.
    #[arg(long)]
    pub sub: String,

    /// Scopes, space-separated or repeated: `users.admin`, `users.read`. None means self-service only.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,

    /// How long the token is valid, e.g. `15m`, `1h`.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Database URL: `sqlite://<path>` (created with its folder) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://./data/users.db")]
    pub database_url: String,

    /// Most pooled database connections. PostgreSQL serves concurrent writes on separate connections and, from
    /// 8 on, keeps a quarter of them (at least 3) for reads, so reads never queue behind writes; SQLite uses them
    /// for concurrent reads (writes are queued to one at a time, on one more connection of their own).
    #[arg(long, env = "USER_SERVICE_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How long a request waits for a database connection (and SQLite for its write lock) before it fails
    /// with UNAVAILABLE, e.g. `5s`, `500ms`.
    #[arg(long, env = "USER_SERVICE_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// SQLite durability: `full` fsyncs every commit (survives power loss); `normal` survives process crashes
    /// but may lose the last commits on power loss.
    #[arg(long, env = "USER_SERVICE_SQLITE_SYNC", default_value = "full", value_parser = sqlite_sync_parser())]
    pub sqlite_sync: SqliteSync,

    /// SQLite group commit: the most concurrent writes committed together in one transaction (one fsync),
    /// each in a savepoint of its own and acknowledged only after the commit. 1 commits every write alone.
    #[arg(long, env = "USER_SERVICE_SQLITE_COMMIT_BATCH", default_value_t = 128,
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub sqlite_commit_batch: u16,
}

/// The names and help of `--sqlite-sync`'s values: the store knows the levels, the command line names them.
fn sqlite_sync_parser() -> impl TypedValueParser<Value = SqliteSync> {
    PossibleValuesParser::new([
        PossibleValue::new("full").help("fsync on every commit: an acknowledged write survives a power loss"),
        PossibleValue::new("normal").help(
            "fsync at checkpoints only: survives a crash of the process, may lose the last commits on power loss",
        ),
    ])
    // Only the names above get here.
    .map(|name| {
        if name == "normal" {
            SqliteSync::Normal
        } else {
            SqliteSync::Full
        }
    })
}

impl DatabaseConfig {
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            url: self.database_url.clone(),
            pool_size: self.db_pool_size,
            sqlite_sync: self.sqlite_sync,
            acquire_timeout: self.db_timeout,
            sqlite_commit_batch: usize::from(self.sqlite_commit_batch),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on for all protocols.
    #[arg(long, env = "USER_SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    /// Requests per second each caller (token `sub`, or address when unauthenticated) may make on average.
    #[arg(long, env = "USER_SERVICE_RATE_LIMIT", default_value_t = 200.0)]
    pub rate_limit: f64,

    /// Requests a caller may make in a burst above the average rate.
    #[arg(long, env = "USER_SERVICE_RATE_BURST", default_value_t = 400)]
    pub rate_burst: u32,

    /// How long a call may run before it is answered with DEADLINE_EXCEEDED (REST 504).
    #[arg(long, env = "USER_SERVICE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Largest gRPC message accepted or sent, in bytes. 4 MiB holds a full batch of 1000 typical updates.
    #[arg(long, env = "USER_SERVICE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Browser origin allowed to call gRPC-Web and REST (CORS), e.g. `https://app.example.com`; repeat the flag
    /// (or separate with commas in the env var) for several. None by default: no cross-origin access.
    #[arg(long = "cors-origin", env = "USER_SERVICE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Most concurrent HTTP/2 streams per connection; bounds what one client can keep in flight.
    #[arg(long, env = "USER_SERVICE_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// How long a client may take to send a request's headers before its connection is closed (slowloris).
    #[arg(long, env = "USER_SERVICE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a connection with no request in flight stays open (HTTP/1.1 keep-alive and HTTP/2, PINGs or
    /// not) before it is closed.
    #[arg(long, env = "USER_SERVICE_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Most open client connections. Past it the server stops accepting: new connections wait in the listen
    /// backlog (nothing is spent on them) and are served as others close.
    #[arg(long, env = "USER_SERVICE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Response bytes one connection may hold undelivered before its new requests wait for the client to read
    /// (raised to --max-message-bytes if smaller).
    #[arg(long, env = "USER_SERVICE_MAX_CONNECTION_RESPONSE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_connection_response_bytes: usize,

    /// The kernel's send buffer of each connection (SO_SNDBUF; Linux keeps twice this for its bookkeeping), so
    /// a client that stops reading a stream holds this much of the machine's memory rather than the kernel's
    /// auto-tuned maximum (4 MiB by default) per connection. 0 leaves the kernel's auto-tuning on; raise it for
    /// large answers over links with a long round trip (throughput is about this size per round trip).
    #[arg(long, env = "USER_SERVICE_SOCKET_SEND_BUFFER_BYTES", default_value_t = 256 * 1024)]
    pub socket_send_buffer_bytes: usize,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish before connections are closed.
    #[arg(long, env = "USER_SERVICE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Most Argon2id computations at once (password hashes on create, update and batch; checks of a current
    /// password). Each holds 19 MiB, kept for the next; calls beyond it wait within their deadline.
    /// Default: the number of CPUs.
    #[arg(long, env = "USER_SERVICE_PASSWORD_HASH_CONCURRENCY", default_value_t = cpu_count(),
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub password_hash_concurrency: u16,

    /// How often soft-deleted users past their purge time are removed for good.
    #[arg(long, env = "USER_SERVICE_PURGE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub purge_interval: Duration,

    /// How long change feed events are kept (a purged user's PURGED event too); a WatchUsers cursor older than
    /// this is FAILED_PRECONDITION `CURSOR_EXPIRED`. Pruned by the purge loop.
    #[arg(long, env = "USER_SERVICE_EVENT_RETENTION", default_value = "168h", value_parser = parse_duration)]
    pub event_retention: Duration,

    /// Most open WatchUsers streams; past it new ones are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "USER_SERVICE_MAX_WATCHERS", default_value_t = 1024)]
    pub max_watchers: usize,

    /// How long a WatchUsers stream stays silent before it sends a BOOKMARK (tests shorten it).
    #[arg(long, env = "USER_SERVICE_WATCH_BOOKMARK_INTERVAL", default_value = "30s", value_parser = parse_duration,
          hide = true)]
    pub watch_bookmark_interval: Duration,

    /// Boxed: the subcommand enum stays small.
    #[command(flatten)]
    pub mail: Box<MailConfig>,
}

/// E-mail verification and the mail outbox's sender.
#[derive(Debug, Clone, Args)]
pub struct MailConfig {
    /// SMTP server for outgoing mail: `smtp://host:port` (plain; add `?tls=required` for STARTTLS),
    /// `smtps://host:port` (TLS), with optional `user:password@` before the host. When unset, each mail is
    /// written as an RFC 5322 `.eml` file into `<data-dir>/outbox/`.
    #[arg(long, env = "USER_SERVICE_SMTP_URL")]
    pub smtp_url: Option<String>,

    /// The sender of every mail, as `Name <address>` or a bare address.
    #[arg(
        long,
        env = "USER_SERVICE_MAIL_FROM",
        default_value = "user-service <no-reply@localhost>"
    )]
    pub mail_from: String,

    /// Link template put in verification mails, with `{id}`, `{code}` and `{email}` placeholders (URL-encoded
    /// when filled in), e.g. `https://app.example.com/verify?user={id}&code={code}`. When unset the mail carries
    /// the code alone.
    #[arg(long, env = "USER_SERVICE_VERIFICATION_URL")]
    pub verification_url: Option<String>,

    /// How long a verification code is valid.
    #[arg(long, env = "USER_SERVICE_VERIFICATION_TTL", default_value = "24h", value_parser = parse_duration)]
    pub verification_ttl: Duration,

    /// Attempts to deliver one mail before it is kept as failed (and counted in the metrics).
    #[arg(long, env = "USER_SERVICE_MAIL_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub mail_max_attempts: u16,

    /// Wait before the first retry of a failed delivery; each further retry waits twice as long (at most an
    /// hour).
    #[arg(long, env = "USER_SERVICE_MAIL_RETRY_DELAY", default_value = "30s", value_parser = parse_duration)]
    pub mail_retry_delay: Duration,

    /// How often the sender looks for mail queued by other processes (mail queued by this one is sent at once).
    #[arg(long, env = "USER_SERVICE_MAIL_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub mail_poll_interval: Duration,
}

impl ServeConfig {
    /// The configuration tests and embedders start from: every default, on the given database.
    pub fn for_database(database_url: &str) -> ServeConfig {
        let cli = Cli::parse_from(["user-service", "serve", "--database-url", database_url]);
        match cli.command {
            Command::Serve(config) => config,
            Command::Migrate(_) | Command::Token(_) => unreachable!("parsed a serve command"),
        }
    }
}

/// The CPUs this process may use (1 when unknown).
fn cpu_count() -> u16 {
    std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(1024).min(1024))
        .unwrap_or(1)
}

/// Parses `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 500ms, 5s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("`{raw}` has an unknown unit; use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn serve_defaults_match_the_contract() {
        let config = ServeConfig::for_database("sqlite://./data/users.db");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database.sqlite_sync, SqliteSync::Full);
    }

    #[test]
    fn sqlite_sync_names_each_level() {
        let sync = |value: &str| {
            Cli::try_parse_from(["user-service", "migrate", "--sqlite-sync", value]).map(|cli| match cli.command {
                Command::Migrate(database) => database.sqlite_sync,
                Command::Serve(_) | Command::Token(_) => unreachable!("parsed a migrate command"),
            })
        };
        assert_eq!(sync("full").ok(), Some(SqliteSync::Full));
        assert_eq!(sync("normal").ok(), Some(SqliteSync::Normal));
        assert!(sync("NORMAL").is_err(), "names are exact, as before");
        assert!(sync("off").is_err());
    }
}
