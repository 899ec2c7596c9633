//! Storage: the connection pool, blocking-pool execution, transactions and the mapping of database errors
//! to domain errors. SQL itself lives in `users`.

mod connection;
mod schema;
mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::Connection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use uuid::Uuid;

use connection::{ConnectionManager, DbConnection};
pub use connection::{DatabaseTarget, SqliteSync};
pub use users::{Cursor, ListQuery, OrderBy, OrderField};

use crate::domain::change::Outcome;
use crate::domain::error::{Conflict, Error};
use crate::domain::revision::Revision;
use crate::domain::user::{User, to_stored_precision};

/// How long a call waits for a connection while the database is known to be unreachable.
const UNREACHABLE_WAIT: Duration = Duration::from_millis(250);
/// How long a health check waits for a connection: a database that takes longer is reported down.
const PING_WAIT: Duration = Duration::from_millis(1000);

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub pool_size: u32,
    pub sqlite_sync: SqliteSync,
    /// How long a call waits for a pooled connection (and SQLite for a lock) before it answers UNAVAILABLE.
    pub acquire_timeout: Duration,
}

/// Decides what one item of a write becomes, given the stored user (if any) and the transaction's time.
pub type Decide = Box<dyn FnOnce(Option<&User>, DateTime<Utc>) -> Result<Outcome, Error> + Send>;

/// One user to write in a transaction.
pub struct Mutation {
    pub id: Uuid,
    /// Prefix for the field paths of this item's errors (`requests[3]` in a batch).
    pub field_prefix: Option<String>,
    pub decide: Decide,
}

/// The database, shared by every request.
#[derive(Clone)]
pub struct Store {
    pool: r2d2::Pool<ConnectionManager>,
    /// Whether the database answered last time: while it does not, calls wait only briefly for a connection,
    /// so they fail fast with UNAVAILABLE instead of each waiting the full time-out.
    reachable: Arc<AtomicBool>,
    /// SQLite has one writer at a time; queueing writers here instead of in SQLite's busy handler (which polls
    /// with sleeps) keeps write latency flat. `None` on PostgreSQL, whose row locks serialize what conflicts.
    sqlite_writer: Option<Arc<Mutex<()>>>,
}

/// Why a transaction ended early.
enum TxError {
    Domain(Error),
    Db(DieselError),
    /// A validate-only write ran to the end and is rolled back on purpose.
    DryRun(Vec<User>),
}

impl From<DieselError> for TxError {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Domain(e)
    }
}

impl Store {
    /// Connects, creating the SQLite file and its folder when needed, and runs pending migrations.
    pub fn open(options: &StoreOptions) -> anyhow::Result<Store> {
        let target = DatabaseTarget::parse(&options.url)?;
        if let DatabaseTarget::Sqlite(path) = &target
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating database folder {}: {e}", dir.display()))?;
        }
        let sqlite_writer = matches!(target, DatabaseTarget::Sqlite(_)).then(|| Arc::new(Mutex::new(())));
        let manager = ConnectionManager {
            target,
            sqlite_sync: options.sqlite_sync,
            busy_timeout: options.acquire_timeout,
        };
        // Migrations run on a connection of their own before the pool opens, so a broken URL fails with the
        // database's own message rather than the pool's time-out.
        let mut conn = manager
            .establish()
            .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
        connection::run_migrations(&mut conn)?;
        drop(conn);
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.acquire_timeout)
            .build(manager)
            .map_err(|e| anyhow::anyhow!("opening the connection pool: {e}"))?;
        Ok(Store {
            pool,
            reachable: Arc::new(AtomicBool::new(true)),
            sqlite_writer,
        })
    }

    /// Runs migrations alone (the `migrate` command).
    pub fn migrate(options: &StoreOptions) -> anyhow::Result<usize> {
        let manager = ConnectionManager {
            target: DatabaseTarget::parse(&options.url)?,
            sqlite_sync: options.sqlite_sync,
            busy_timeout: options.acquire_timeout,
        };
        let mut conn = manager
            .establish()
            .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
        connection::run_migrations(&mut conn)
    }

    /// Runs `f` with a pooled connection on the blocking pool (diesel is synchronous).
    async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, Error> + Send + 'static,
    {
        let wait = if self.reachable.load(Ordering::Relaxed) {
            None
        } else {
            Some(UNREACHABLE_WAIT)
        };
        self.run_waiting(wait, f).await
    }

    /// [`Store::run`] waiting at most `wait` for a connection (the pool's time-out when `None`), and keeping
    /// track of whether the database answers.
    async fn run_waiting<T, F>(&self, wait: Option<Duration>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = match wait {
                Some(wait) => pool.get_timeout(wait),
                None => pool.get(),
            };
            let mut conn = conn.map_err(|e| Error::Unavailable(format!("no database connection: {e}")))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::internal(format!("database task failed: {e}")))?;
        match &result {
            Err(Error::Unavailable(_)) => self.reachable.store(false, Ordering::Relaxed),
            Ok(_) => self.reachable.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
        result
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        self.run_waiting(Some(PING_WAIT), |conn| {
            diesel::connection::SimpleConnection::batch_execute(conn, "SELECT 1").map_err(db_error)
        })
        .await
        .is_ok()
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<User>, Error> {
        self.run(move |conn| {
            users::find(conn, id)
                .map(|found| found.map(|(u, _)| u))
                .map_err(read_error)
        })
        .await
    }

    /// The stored password hash of a user (if it has one) and the revision it was read at; `None` for an
    /// unknown user.
    pub async fn password_state(&self, id: Uuid) -> Result<Option<(Option<String>, i64)>, Error> {
        self.run(move |conn| {
            users::find(conn, id)
                .map(|found| found.map(|(u, hash)| (hash, u.revision)))
                .map_err(read_error)
        })
        .await
    }

    /// Users whose e-mail or username (compared case-insensitively) is the given one.
    pub async fn lookup(&self, email: Option<String>, username: Option<String>) -> Result<Vec<User>, Error> {
        self.run(move |conn| users::lookup(conn, email, username).map_err(read_error))
            .await
    }

    /// One page of users; the query's `limit` is the number of rows returned at most.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<User>, Error> {
        self.run(move |conn| users::list(conn, &query).map_err(read_error))
            .await
    }

    /// Revisions of a user, newest first, older than `before` when given; NOT_FOUND for an unknown user.
    pub async fn revisions(&self, id: Uuid, before: Option<i64>, limit: i64) -> Result<Vec<Revision>, Error> {
        self.run(move |conn| {
            if !users::user_exists(conn, id).map_err(read_error)? {
                return Err(Error::not_found(id));
            }
            users::revisions(conn, id, before, limit).map_err(read_error)
        })
        .await
    }

    /// Hard-deletes users whose purge time has passed; returns how many.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let writer = self.sqlite_writer.clone();
        self.run(move |conn| {
            let _guard = writer.as_ref().map(|w| w.lock().unwrap_or_else(|p| p.into_inner()));
            conn.transaction(|conn| users::purge_expired(conn, now))
                .map_err(db_error)
        })
        .await
    }

    /// Applies `mutations` in one transaction: all or nothing. Each item's `decide` sees the user as the
    /// earlier items left it. Validation errors of all items are collected and reported together; any other
    /// error stops at once. With `dry_run` everything runs, unique constraints included, and is rolled back.
    pub async fn write(&self, actor: String, mutations: Vec<Mutation>, dry_run: bool) -> Result<Vec<User>, Error> {
        let writer = self.sqlite_writer.clone();
        self.run(move |conn| {
            let _guard = writer.as_ref().map(|w| w.lock().unwrap_or_else(|p| p.into_inner()));
            let result = conn.transaction(|conn| {
                let users = write_all(conn, &actor, mutations)?;
                if dry_run {
                    Err(TxError::DryRun(users))
                } else {
                    Ok(users)
                }
            });
            match result {
                Ok(users) | Err(TxError::DryRun(users)) => Ok(users),
                Err(TxError::Domain(e)) => Err(e),
                Err(TxError::Db(e)) => Err(db_error(e)),
            }
        })
        .await
    }
}

fn write_all(conn: &mut DbConnection, actor: &str, mutations: Vec<Mutation>) -> Result<Vec<User>, TxError> {
    let now = to_stored_precision(Utc::now());
    // Lock every row first, in id order, so two batches touching the same users cannot deadlock.
    let mut ids: Vec<Uuid> = mutations.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in &ids {
        users::lock(conn, *id)?;
    }
    let mut written = Vec::with_capacity(mutations.len());
    let mut invalid: Vec<Error> = Vec::new();
    for Mutation {
        id,
        field_prefix,
        decide,
    } in mutations
    {
        let prefix = |e: Error| match &field_prefix {
            Some(p) => e.with_field_prefix(p),
            None => e,
        };
        let stored = users::find(conn, id)?;
        match decide(stored.as_ref().map(|(u, _)| u), now) {
            Ok(outcome) => match users::save(conn, actor, stored, outcome, now) {
                Ok(user) => written.push(user),
                Err(e) => return Err(TxError::Domain(prefix(db_error(e)))),
            },
            Err(e @ Error::InvalidArgument { .. }) => invalid.push(prefix(e)),
            Err(e) => return Err(TxError::Domain(prefix(e))),
        }
    }
    match Error::combine_invalid(invalid) {
        Some(e) => Err(TxError::Domain(e)),
        None => Ok(written),
    }
}

/// Messages of a database that went away, is shutting down, or cannot write (full disk, read-only file; libpq
/// and SQLite wording), as opposed to a query that failed on its own: the client may retry later.
fn is_connection_loss(message: &str) -> bool {
    const SIGNS: [&str; 12] = [
        "database is locked",
        "database or disk is full",
        "No space left on device",
        "attempt to write a readonly database",
        "read-only file system",
        "server closed the connection",
        "terminating connection",
        "no connection to the server",
        "could not connect",
        "Connection refused",
        "the database system is shutting down",
        "the database system is starting up",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

/// A read failure: the row exists but cannot be understood, or the database failed.
fn read_error(e: DieselError) -> Error {
    db_error(e)
}

/// Maps a database error to the domain: unique violations become ALREADY_EXISTS naming the value, lost
/// connections and lock time-outs UNAVAILABLE, everything else INTERNAL (logged, never sent).
fn db_error(e: DieselError) -> Error {
    match &e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            let what = format!("{} {}", info.constraint_name().unwrap_or(""), info.message());
            if what.contains("email_key") {
                Error::AlreadyExists {
                    conflict: Conflict::Email,
                    field: "user.email".into(),
                    message: "the e-mail address is already used by another user".into(),
                }
            } else if what.contains("username") {
                Error::AlreadyExists {
                    conflict: Conflict::Username,
                    field: "user.username".into(),
                    message: "the username is already used by another user".into(),
                }
            } else if what.contains("users.id") || what.contains("users_pkey") {
                Error::AlreadyExists {
                    conflict: Conflict::UserId,
                    field: "user_id".into(),
                    message: "a user with this id already exists".into(),
                }
            } else {
                Error::internal(e)
            }
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) | DieselError::BrokenTransactionManager => {
            Error::Unavailable(e.to_string())
        }
        DieselError::DatabaseError(_, info) if is_connection_loss(info.message()) => Error::Unavailable(e.to_string()),
        _ => Error::internal(e),
    }
}
