//! Database connections: one diesel `MultiConnection` over SQLite and PostgreSQL, the pool, per-connection
//! settings and the embedded migrations of each backend.

use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// One connection to either backend; every query is written once against this type.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// SQLite's durability level (`PRAGMA synchronous`) in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
#[derive(Debug)]
pub struct ConnectionManager {
    pub target: DatabaseTarget,
    pub sqlite_sync: SqliteSync,
    pub busy_timeout: Duration,
}

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
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
                     PRAGMA foreign_keys = ON;",
                    self.busy_timeout.as_millis()
                ))
                .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

impl diesel::r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.establish().map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

/// Runs the pending migrations of the connection's backend; returns how many ran.
pub fn run_migrations(conn: &mut DbConnection) -> anyhow::Result<usize> {
    let applied = match conn {
        DbConnection::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
        DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
    }
    .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(applied.len())
}
