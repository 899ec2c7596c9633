//! Database connections: one diesel `MultiConnection` over SQLite and PostgreSQL, the pool, per-connection
//! settings and the embedded migrations of each backend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::domain::error::Error;

/// A pooled connection idle for longer than this is pinged before use: a restarted or firewalled database drops
/// idle connections silently. A connection in steady use is trusted, which saves a round trip on every call.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How many pooled connections a call tries before it reports the database unavailable.
const CHECKOUT_ATTEMPTS: usize = 3;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// One connection to either backend; every query is written once against this type.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// SQLite's durability level (`PRAGMA synchronous`) in WAL mode. The command line names these in
/// `config.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    /// fsync on every commit: an acknowledged write survives a power loss.
    Full,
    /// fsync at checkpoints only: survives a crash of the process, may lose the last commits on power loss.
    Normal,
}

/// Where the data lives, parsed from the database URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Postgres(String),
    Sqlite(PathBuf),
}

impl DatabaseTarget {
    /// `postgres://` / `postgresql://` select PostgreSQL; `sqlite://path` or `sqlite:path` select SQLite.
    pub fn parse(url: &str) -> anyhow::Result<DatabaseTarget> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseTarget::Postgres(url.to_owned()))
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                anyhow::bail!("an SQLite database needs a file path (sqlite://./data/users.db)");
            }
            Ok(DatabaseTarget::Sqlite(PathBuf::from(path)))
        } else {
            anyhow::bail!("database URL must start with postgres://, postgresql:// or sqlite://")
        }
    }
}

/// Opens connections for the pool, configured for their backend.
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    pub target: DatabaseTarget,
    pub sqlite_sync: SqliteSync,
    pub busy_timeout: Duration,
}

/// How much of a SQLite database file each connection maps: 1 GiB of address space, a database of over a million
/// users. The pages are the kernel's page cache, shared by every connection, not memory of the process's own.
const SQLITE_MMAP_BYTES: u64 = 1 << 30;

impl ConnectionManager {
    pub fn establish(&self) -> ConnectionResult<DbConnection> {
        match &self.target {
            DatabaseTarget::Postgres(url) => Ok(DbConnection::Postgres(diesel::PgConnection::establish(url)?)),
            DatabaseTarget::Sqlite(path) => {
                let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy())?;
                // busy_timeout first: switching to WAL needs a lock another connection may hold.
                let sync = match self.sqlite_sync {
                    SqliteSync::Full => "FULL",
                    SqliteSync::Normal => "NORMAL",
                };
                conn.batch_execute(&format!("PRAGMA busy_timeout = {};", self.busy_timeout.as_millis()))
                    .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
                // Switching a fresh file to WAL can answer "database is locked" at once, without waiting in the
                // busy handler, while another process does the same (replicas starting together): retry.
                let deadline = Instant::now() + self.busy_timeout.max(Duration::from_secs(1));
                loop {
                    match conn.batch_execute("PRAGMA journal_mode = WAL;") {
                        Ok(()) => break,
                        Err(e) if e.to_string().contains("locked") && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(ConnectionError::BadConnection(e.to_string())),
                    }
                }
                // No automatic checkpoint: it would run inside a commit (the writer's, holding its whole batch);
                // the store's checkpoint thread does it instead (`checkpoint.rs`).
                // Pages are read through a shared memory map of the database file rather than copied into each
                // connection's own cache by a `pread` per miss (7% of a GetUser's CPU on 100k users); SQLite still
                // writes with `write`, and reads past the mapped size fall back to `pread`.
                conn.batch_execute(&format!(
                    "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
                     PRAGMA mmap_size = {SQLITE_MMAP_BYTES};"
                ))
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

/// A connection in the pool, with what the pool needs to know to retire it.
pub struct Pooled {
    db: DbConnection,
    /// Set when a call on it failed as a lost connection, so the pool drops it instead of handing it out again.
    lost: bool,
    last_used: Instant,
}

impl diesel::r2d2::ManageConnection for ConnectionManager {
    type Connection = Pooled;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Pooled, Self::Error> {
        let db = self.establish().map_err(diesel::r2d2::Error::ConnectionError)?;
        Ok(Pooled {
            db,
            lost: false,
            last_used: Instant::now(),
        })
    }

    fn is_valid(&self, conn: &mut Pooled) -> Result<(), Self::Error> {
        conn.db.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.lost || conn.db.is_broken()
    }
}

/// Runs `f` on a connection already taken from a pool. A PostgreSQL connection whose call fails as UNAVAILABLE
/// has lost its server and is retired; SQLite's UNAVAILABLE (a lock, a full disk, a read-only file) says
/// nothing against the connection, which stays.
pub fn run_inline<T>(conn: &mut Pooled, f: impl FnOnce(&mut DbConnection) -> Result<T, Error>) -> Result<T, Error> {
    let result = f(&mut conn.db);
    conn.last_used = Instant::now();
    if matches!(result, Err(Error::Unavailable(_))) && matches!(conn.db, DbConnection::Postgres(_)) {
        conn.lost = true;
    }
    result
}

/// Runs `f` on a pooled connection, waiting at most `wait` for one. A connection that has been idle is
/// checked first; one that has lost its server is retired from the pool (see [`run_inline`]).
pub fn with_connection<T>(
    pool: &r2d2::Pool<ConnectionManager>,
    wait: Duration,
    f: impl FnOnce(&mut DbConnection) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut attempt = 0;
    let mut conn = loop {
        attempt += 1;
        let mut conn = pool
            .get_timeout(wait)
            .map_err(|e| Error::Unavailable(format!("no database connection: {e}")))?;
        if conn.last_used.elapsed() < IDLE_CHECK {
            break conn;
        }
        match conn.db.ping() {
            Ok(_) => break conn,
            Err(e) => {
                conn.lost = true;
                if attempt >= CHECKOUT_ATTEMPTS {
                    return Err(Error::Unavailable(format!("database connection lost: {e}")));
                }
            }
        }
    };
    run_inline(&mut conn, f)
}

/// The PostgreSQL advisory lock (two-key form: this service, then "migrations") that serializes migration runs
/// of every process on one database. Two-key advisory locks never conflict with one-key ones.
const MIGRATION_LOCK: (i32, i32) = (0x7573_6572, 1);

/// Runs the pending migrations of the connection's backend; returns how many ran.
///
/// On PostgreSQL the run holds a session-level advisory lock: replicas starting together on a fresh database
/// would otherwise create the same tables at once and all but one fail (`relation "users" already exists`, or
/// a duplicate key in `pg_type`). A process that waited finds the migrations applied and runs none. SQLite
/// runs them in one `BEGIN IMMEDIATE` transaction, which takes the file's write lock before the harness looks
/// for pending migrations, for the same reason (`table users already exists` otherwise).
pub fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<usize> {
    let applied = match conn {
        DbConnection::Postgres(c) => {
            let (class, key) = MIGRATION_LOCK;
            c.batch_execute(&format!("SELECT pg_advisory_lock({class}, {key})"))
                .map_err(|e| anyhow::anyhow!("taking the migration lock: {e}"))?;
            let applied = c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|v| v.len());
            // Released explicitly so a connection kept open after this cannot block the next run; a failed
            // unlock only means the lock goes when the connection closes.
            if let Err(e) = c.batch_execute(&format!("SELECT pg_advisory_unlock({class}, {key})")) {
                tracing::warn!(error = %e, "releasing the migration lock failed; it is released on disconnect");
            }
            applied
        }
        DbConnection::Sqlite(c) => {
            c.immediate_transaction(|c| c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()))
        }
    }
    .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use diesel::prelude::*;

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// Without the query planner stability guarantee, SQLite compiles a statement again on every call that binds
    /// a new `LIMIT` (`.cargo/config.toml` turns it on in the bundled SQLite).
    #[test]
    fn the_bundled_sqlite_plans_without_looking_at_bound_values() {
        let mut conn = diesel::SqliteConnection::establish(":memory:").expect("an in-memory database");
        let options: Vec<CompileOption> = diesel::sql_query("PRAGMA compile_options")
            .load(&mut conn)
            .expect("compile options");
        assert!(
            options.iter().any(|o| o.compile_options == "ENABLE_QPSG"),
            "SQLite was built without SQLITE_ENABLE_QPSG: {:?}",
            options.iter().map(|o| o.compile_options.as_str()).collect::<Vec<_>>()
        );
    }
}
