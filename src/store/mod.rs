//! Storage: the connection pool, blocking-pool execution, transactions and the mapping of database errors
//! to domain errors. SQL itself lives in `users`.

mod checkpoint;
mod connection;
mod durability;
mod feed;
mod read_group;
mod schema;
mod stored_time;
mod tail;
mod users;
mod verification;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, QueryResult};
use uuid::Uuid;

use connection::{ConnectionManager, DbConnection};
pub use connection::{DatabaseTarget, SqliteSync};
use durability::Touches;
pub use feed::Page;
pub use tail::Batch;
pub use users::{Cursor, ListQuery};
pub use verification::{MailJob, OutboxStats};
use writer::GroupWriter;
pub use writer::WriteStats;

use crate::domain::caller::Caller;
use crate::domain::change;
use crate::domain::command::{Command, Refusal, WriteError};
use crate::domain::error::{Conflict, Error};
use crate::domain::event::{EventKind, Position};
use crate::domain::permission::{self, Rpc};
use crate::domain::revision::Revision;
use crate::domain::sign_in::{self, LoginKey};
use crate::domain::user::{User, to_stored_precision};
use crate::domain::verification::{self as codes, CodeAttempts};

/// How long a call waits for a connection while the database is known to be unreachable.
const UNREACHABLE_WAIT: Duration = Duration::from_millis(250);
/// SQLite connections for inline reads: one per thread that may run them is enough.
const INLINE_READERS: u32 = 4;
/// How long a health check waits for a connection: a database that takes longer is reported down.
const PING_WAIT: Duration = Duration::from_millis(1000);
/// PostgreSQL pools at least this large keep a share of their connections for reads (see [`read_share`]).
const SPLIT_FROM: u32 = 8;
/// The fewest connections kept for reads: the read group's runners and one for a list or a feed page.
const MIN_READERS: u32 = read_group::RUNNERS as u32 + 1;

/// How many of a PostgreSQL pool's `pool_size` connections are kept for reads (0: reads and writes share
/// one pool). Without a share of their own, reads queue for a connection behind every write in flight: 128
/// concurrent updates on a pool of 32 kept a GetUser waiting seconds. A quarter is enough on two cores, where
/// 8 concurrent statements already keep the server busy, and the total stays what the operator set.
fn read_share(pool_size: u32) -> u32 {
    if pool_size < SPLIT_FROM {
        0
    } else {
        (pool_size / 4).max(MIN_READERS)
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub pool_size: u32,
    pub sqlite_sync: SqliteSync,
    /// How long a call waits for a pooled connection (and SQLite for a lock) before it answers UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// SQLite: the most writes committed together in one transaction (group commit); 1 commits each alone.
    pub sqlite_commit_batch: usize,
}

/// The database, shared by every request.
#[derive(Clone)]
pub struct Store {
    /// Connections for writes; on SQLite, and on a small PostgreSQL pool, for reads too.
    pool: r2d2::Pool<ConnectionManager>,
    /// Connections for reads (see [`read_share`]): on a PostgreSQL pool that is split, reads never wait for a
    /// connection behind writes. Otherwise the same pool as `pool`.
    readers: r2d2::Pool<ConnectionManager>,
    /// Whether the database answered last time: while it does not, calls wait only briefly for a connection,
    /// so they fail fast with UNAVAILABLE instead of each waiting the full time-out.
    reachable: Arc<AtomicBool>,
    /// SQLite has one writer at a time: every write goes through one writer thread that commits queued writes
    /// together (see `writer`). `None` on PostgreSQL, whose row locks serialize only what conflicts.
    writer: Option<GroupWriter>,
    /// SQLite only: connections for reads of one user, run inline on the async thread (see [`Store::read`]).
    inline_readers: Option<r2d2::Pool<ConnectionManager>>,
    /// PostgreSQL: reads of one user by id, grouped under load (`read_group`).
    read_group: Option<Arc<read_group::ReadGroup>>,
    /// Told after a commit that queued mail, so this process's sender delivers it at once instead of at its
    /// next poll.
    mail_queued: Arc<tokio::sync::Notify>,
    /// Bumped after every commit that wrote feed events, so watchers wake (see [`Store::feed_signal`]).
    feed: feed::Signal,
    /// The process's one reader of the newest events, shared by every caught-up watcher.
    tail: tail::Tail,
    /// Reads of the feed by the shared reader, and by watchers catching up on their own.
    feed_reads: Arc<[AtomicU64; 2]>,
}

/// Who reads the feed: counted apart, so `/metrics` shows whether watchers keep up with the shared reader.
#[derive(Debug, Clone, Copy)]
pub enum FeedReader {
    Shared = 0,
    CatchingUp = 1,
}

/// Where a sign-in attempt stands once it is taken.
#[derive(Debug)]
pub enum SignInStart {
    /// No such user: there is nothing to count.
    Unknown,
    /// Too many failures: refused without a check, for this long.
    LockedOut(Duration),
    /// The attempt is counted; check the password against `hash` (`None`: the user has none).
    Check { user: Box<User>, hash: Option<String> },
}

/// Why a transaction ended early.
enum TxError<T> {
    Domain(Error),
    Db(DieselError),
    /// The transaction ran to the end and is rolled back on purpose: a validate-only write, or one whose
    /// commands were refused. Its result is still the answer.
    RolledBack(T),
}

impl<T> From<DieselError> for TxError<T> {
    fn from(e: DieselError) -> Self {
        TxError::Db(e)
    }
}

impl<T> From<Error> for TxError<T> {
    fn from(e: Error) -> Self {
        TxError::Domain(e)
    }
}

/// A transaction's answer: its own result, acknowledged only if its commit succeeded.
fn settle<T>(own: Result<T, TxError<T>>, committed: Result<(), Error>) -> Result<T, Error> {
    match own {
        Ok(value) => committed.map(|()| value),
        Err(TxError::RolledBack(value)) => Ok(value),
        Err(TxError::Domain(e)) => Err(e),
        Err(TxError::Db(e)) => Err(db_error(e)),
    }
}

/// What the transaction of a write answers: the users written, or the commands refused (and rolled back).
type Written = Result<Vec<Saved>, Vec<Refusal>>;

/// One command's result: the user as written and the paths its revision records (empty when nothing changed),
/// which the UpdateUser answer reports (`changed-paths`).
#[derive(Debug, Clone)]
pub struct Saved {
    pub user: User,
    pub changed_paths: Vec<String>,
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
        let is_sqlite = matches!(target, DatabaseTarget::Sqlite(_));
        let manager = ConnectionManager {
            target: target.clone(),
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
        let read_share = if is_sqlite { 0 } else { read_share(options.pool_size) };
        let open_pool = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size.max(1))
                // Checked in `with_connection` instead, only after idling: a check on every checkout costs
                // PostgreSQL a round trip per call.
                .test_on_check_out(false)
                .min_idle(Some(1))
                .connection_timeout(options.acquire_timeout)
                .build(manager.clone())
                .map_err(|e| anyhow::anyhow!("opening the connection pool: {e}"))
        };
        let pool = open_pool(options.pool_size - read_share)?;
        let readers = if read_share == 0 {
            pool.clone()
        } else {
            open_pool(read_share)?
        };
        let reachable = Arc::new(AtomicBool::new(true));
        let inline_readers = if is_sqlite {
            let manager = ConnectionManager {
                target: target.clone(),
                sqlite_sync: options.sqlite_sync,
                // Never wait for a lock on the async thread: a busy database sends the read to the blocking pool.
                busy_timeout: Duration::ZERO,
            };
            Some(
                r2d2::Pool::builder()
                    .max_size(INLINE_READERS)
                    // try_get never opens a connection: keep them all open (r2d2 opens them in the background).
                    .min_idle(None)
                    .test_on_check_out(false)
                    .build_unchecked(manager),
            )
        } else {
            None
        };
        let writer = if is_sqlite {
            // The writer's connection is its own, never lent to a reader: SQLite empties a connection's page cache
            // whenever another connection has written since its last transaction, so a writer drawing from the
            // shared pool started nearly every batch by reading each B-tree's upper pages back from the file.
            // At `synchronous=FULL` the writer commits without the fsync and a thread of its own syncs the log
            // (`durability`): the writer applies its next batch meanwhile.
            let syncer = match (&target, options.sqlite_sync) {
                (DatabaseTarget::Sqlite(path), SqliteSync::Full) => Some(
                    durability::Syncer::start(path)
                        .map_err(|e| anyhow::anyhow!("starting the log's sync thread: {e}"))?,
                ),
                _ => None,
            };
            let writer_pool = r2d2::Pool::builder()
                .max_size(1)
                .test_on_check_out(false)
                .min_idle(Some(1))
                .connection_timeout(options.acquire_timeout)
                .build(ConnectionManager {
                    target: target.clone(),
                    sqlite_sync: if syncer.is_some() {
                        SqliteSync::Normal
                    } else {
                        options.sqlite_sync
                    },
                    busy_timeout: options.acquire_timeout,
                })
                .map_err(|e| anyhow::anyhow!("opening the writer's connection: {e}"))?;
            Some(
                GroupWriter::start(writer_pool, reachable.clone(), options.sqlite_commit_batch, syncer)
                    .map_err(|e| anyhow::anyhow!("starting the database writer: {e}"))?,
            )
        } else {
            None
        };
        if let (Some(writer), DatabaseTarget::Sqlite(path)) = (&writer, &target) {
            checkpoint::start(
                path.clone(),
                options.sqlite_sync,
                Arc::downgrade(&writer.stats),
                writer.hold_lock(),
            )
            .map_err(|e| anyhow::anyhow!("starting the checkpoint thread: {e}"))?;
        }
        let read_group = (!is_sqlite).then(|| read_group::ReadGroup::new(readers.clone(), reachable.clone()));
        let feed = feed::Signal::default();
        if let DatabaseTarget::Postgres(url) = &target {
            feed::start_listener(url.clone(), &feed)
                .map_err(|e| anyhow::anyhow!("starting the change feed listener: {e}"))?;
        }
        Ok(Store {
            pool,
            readers,
            reachable,
            writer,
            inline_readers,
            read_group,
            mail_queued: Arc::new(tokio::sync::Notify::new()),
            feed,
            tail: tail::Tail::default(),
            feed_reads: Arc::default(),
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
        self.run_on(&self.pool, self.wait(), None, f).await
    }

    /// [`Store::run`] for a call that only reads, on a connection kept for reads (see [`read_share`]).
    async fn run_read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, Error> + Send + 'static,
    {
        self.run_on(&self.readers, self.wait(), None, f).await
    }

    /// How long a call waits for a connection: briefly while the database is known to be unreachable, the
    /// pool's time-out (`None`) otherwise.
    fn wait(&self) -> Option<Duration> {
        (!self.reachable.load(Ordering::Relaxed)).then_some(UNREACHABLE_WAIT)
    }

    /// Runs `f` on a connection of `pool`, waiting at most `wait` for one (the pool's time-out when `None`),
    /// and keeps track of whether the database answers. `user`: `f` reads that one user only (see
    /// [`Store::settled`]).
    async fn run_on<T, F>(
        &self,
        pool: &r2d2::Pool<ConnectionManager>,
        wait: Option<Duration>,
        user: Option<Uuid>,
        f: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, Error> + Send + 'static,
    {
        let pool = pool.clone();
        let wait = wait.unwrap_or_else(|| pool.connection_timeout());
        let result = tokio::task::spawn_blocking(move || connection::with_connection(&pool, wait, f))
            .await
            .map_err(|e| Error::internal(format!("database task failed: {e}")))?;
        self.track(&result);
        self.settled(user).await;
        result
    }

    /// Returns once what a read that has just run could have seen is on disk (SQLite at `synchronous=FULL`,
    /// whose log is synced beside the writer: see `durability`); at once on other stores. A read of one `user`
    /// waits only for the writes that may have changed that user.
    async fn settled(&self, user: Option<Uuid>) {
        if let Some(durability) = self.writer.as_ref().and_then(|writer| writer.durability.as_deref()) {
            match user {
                Some(user) => durability.settled_for(user).await,
                None => durability.settled().await,
            }
        }
    }

    /// Stops the SQLite log's syncs while the guard lives, so commits stay unsynced; `None` without a sync
    /// thread (PostgreSQL, or SQLite at `synchronous=NORMAL`). Lets a test see what waits for a sync.
    pub fn hold_syncs(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.writer
            .as_ref()
            .and_then(|writer| writer.durability.as_deref())
            .map(durability::Durability::hold)
    }

    /// Runs a read of the row of `user` (nothing else). On SQLite it runs inline, on the async thread, when an
    /// inline connection is free and the database is not locked: such a read takes microseconds, less than
    /// handing it to the blocking pool and back (two thread switches, measured at about 40% of a GetUser's CPU).
    /// Anything that would wait (no free connection, a lock, a database that is down) goes to the blocking pool
    /// as every other call does.
    async fn read<T, F>(&self, user: Uuid, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T, Error> + Send + 'static,
    {
        if let Some(readers) = &self.inline_readers
            && self.reachable.load(Ordering::Relaxed)
            && let Some(mut conn) = readers.try_get()
        {
            match connection::run_inline(&mut conn, &f) {
                Err(Error::Unavailable(_)) => {}
                result => {
                    drop(conn);
                    self.settled(Some(user)).await;
                    return result;
                }
            }
        }
        self.run_on(&self.readers, self.wait(), Some(user), f).await
    }

    /// Remembers whether the database answered a call.
    fn track<T>(&self, result: &Result<T, Error>) {
        match result {
            Err(Error::Unavailable(_)) => self.reachable.store(false, Ordering::Relaxed),
            Ok(_) => self.reachable.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }

    /// Runs a write transaction: on SQLite queued to the writer, which runs it inside its batch's transaction
    /// and settles it once the batch commits; on PostgreSQL in a transaction of its own on a pooled connection.
    async fn transact<T, F>(&self, touches: Touches, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, TxError<T>> + Send + 'static,
    {
        let Some(writer) = &self.writer else {
            return self.run(move |conn| settle(conn.transaction(f), Ok(()))).await;
        };
        let result = writer.submit(touches, f).await;
        self.track(&result);
        result
    }

    /// How many group commits the SQLite writer made and how many writes they held; `None` on PostgreSQL.
    pub fn write_stats(&self) -> Option<&WriteStats> {
        self.writer.as_ref().map(|w| &*w.stats)
    }

    /// Stops the SQLite writer before its next batch while the guard lives, so writes queue up; `None` on
    /// PostgreSQL. Lets a test (or an operator's maintenance step) form a known batch.
    pub fn hold_writes(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.writer.as_ref().map(GroupWriter::hold)
    }

    /// Writes waiting for the SQLite writer (0 on PostgreSQL).
    pub fn queued_writes(&self) -> usize {
        self.writer.as_ref().map_or(0, GroupWriter::queued)
    }

    /// Whether the database answers. Asked on a connection kept for reads, so writes that take every other
    /// connection do not make a live database look down.
    pub async fn ping(&self) -> bool {
        self.run_on(&self.readers, Some(PING_WAIT), None, |conn| {
            diesel::connection::SimpleConnection::batch_execute(conn, "SELECT 1").map_err(db_error)
        })
        .await
        .is_ok()
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<User>, Error> {
        Ok(self.find(id).await?.map(|(user, _)| user))
    }

    /// A user and its password hash: on PostgreSQL grouped with the reads beside it (`read_group`), on SQLite
    /// read inline where it can (see [`Store::read`]).
    async fn find(&self, id: Uuid) -> Result<Option<users::Stored>, Error> {
        let Some(group) = &self.read_group else {
            return self
                .read(id, move |conn| users::find(conn, id).map_err(read_error))
                .await;
        };
        let result = group.find(id).await;
        self.track(&result);
        result
    }

    /// The stored password hash of a user (if it has one) and the revision it was read at; `None` for an
    /// unknown user.
    pub async fn password_state(&self, id: Uuid) -> Result<Option<(Option<String>, i64)>, Error> {
        Ok(self.find(id).await?.map(|(user, hash)| (hash, user.revision)))
    }

    /// Takes a sign-in attempt for the user `key` names, atomically, before its password is checked: the
    /// attempt counts as a failure until [`Store::record_sign_in`] resets it, so concurrent guesses cannot pass
    /// the limit. A locked-out user gets the time left.
    pub async fn begin_sign_in(&self, key: LoginKey, now: DateTime<Utc>) -> Result<SignInStart, Error> {
        let touches = match &key {
            LoginKey::Id(id) => Touches::user(*id),
            LoginKey::Email(_) | LoginKey::Username(_) => Touches::Any,
        };
        self.transact(touches, move |conn| {
            let Some(((user, hash), attempts)) = users::lock_for_sign_in(conn, &key)? else {
                let (digest, attempts) = users::lock_unknown_sign_in(conn, &key, now)?;
                return match sign_in::take_attempt(attempts, now) {
                    Err(retry_after) => Ok(SignInStart::LockedOut(retry_after)),
                    Ok(taken) => {
                        users::set_unknown_attempts(conn, &digest, taken, now)?;
                        Ok(SignInStart::Unknown)
                    }
                };
            };
            match sign_in::take_attempt(attempts, now) {
                Err(retry_after) => Ok(SignInStart::LockedOut(retry_after)),
                Ok(taken) => {
                    users::set_attempts(conn, user.id, taken)?;
                    Ok(SignInStart::Check {
                        user: Box::new(user),
                        hash,
                    })
                }
            }
        })
        .await
    }

    /// Records a correct password (see `users::record_sign_in`); `None` when the user is gone.
    pub async fn record_sign_in(
        &self,
        id: Uuid,
        login_time: Option<DateTime<Utc>>,
        rehash: Option<(String, String)>,
    ) -> Result<Option<Box<User>>, Error> {
        self.transact(Touches::user(id), move |conn| {
            Ok(users::record_sign_in(conn, id, login_time, rehash)?.map(Box::new))
        })
        .await
    }

    /// Users whose e-mail or username (compared case-insensitively) is the given one.
    pub async fn lookup(&self, email: Option<String>, username: Option<String>) -> Result<Vec<User>, Error> {
        self.run_read(move |conn| users::lookup(conn, email, username).map_err(read_error))
            .await
    }

    /// One page of users; the query's `limit` is the number of rows returned at most.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<User>, Error> {
        self.run_read(move |conn| users::list(conn, &query).map_err(read_error))
            .await
    }

    /// Revisions of a user, newest first, older than `before` when given; NOT_FOUND for an unknown user.
    pub async fn revisions(&self, id: Uuid, before: Option<i64>, limit: i64) -> Result<Vec<Revision>, Error> {
        self.run_read(move |conn| {
            if !users::user_exists(conn, id).map_err(read_error)? {
                return Err(Error::not_found(id));
            }
            users::revisions(conn, id, before, limit).map_err(read_error)
        })
        .await
    }

    /// Hard-deletes users whose purge time has passed (each leaves a PURGED event), and drops the feed events
    /// older than `event_retention`; returns how many users were purged.
    pub async fn purge_expired(&self, now: DateTime<Utc>, event_retention: Duration) -> Result<usize, Error> {
        let purged = self
            .transact(Touches::Any, move |conn| Ok(users::purge_expired(conn, now)?))
            .await?;
        if purged > 0 {
            self.feed.notify();
        }
        let before = chrono::Duration::from_std(event_retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.transact(Touches::no_user(), move |conn| Ok(feed::prune(conn, before)?))
            .await?;
        // An unknown login's count matters only while a lockout could still follow from it.
        let forgotten = now - sign_in::MAX_LOCKOUT - chrono::Duration::hours(1);
        self.transact(Touches::no_user(), move |conn| {
            Ok(users::prune_unknown_sign_ins(conn, forgotten)?)
        })
        .await?;
        Ok(purged)
    }

    /// The change feed's head: the position after every change committed so far.
    pub async fn feed_head(&self) -> Result<Position, Error> {
        self.run_read(|conn| feed::head(conn).map_err(read_error)).await
    }

    /// Up to `limit` events after `after`, in feed order, the position the read covered, and whether committed
    /// events wait above the visibility horizon (see `feed`).
    pub async fn feed_after(&self, reader: FeedReader, after: Position, limit: i64) -> Result<feed::Page, Error> {
        self.feed_reads[reader as usize].fetch_add(1, Ordering::Relaxed);
        self.run_read(move |conn| feed::read_after(conn, after, limit).map_err(read_error))
            .await
    }

    /// How many reads of the feed the shared reader and catching-up watchers made so far.
    pub fn feed_reads(&self) -> (u64, u64) {
        let [shared, catching_up] = &*self.feed_reads;
        (shared.load(Ordering::Relaxed), catching_up.load(Ordering::Relaxed))
    }

    /// What watchers wait on: it changes after commits that wrote events.
    pub fn feed_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.subscribe()
    }

    /// The batches of newest events this process's shared reader publishes from now on (see `tail`). Must
    /// be called within the runtime: the first subscriber starts the reader's task.
    pub fn feed_tail(&self) -> tokio::sync::broadcast::Receiver<Arc<Batch>> {
        self.tail.subscribe(self)
    }

    /// Applies `commands` in one transaction: all or nothing (on SQLite a savepoint of the writer's batch,
    /// acknowledged only once the batch commits). Each command decides on the user as the earlier ones left
    /// it, on behalf of `caller`, who is recorded as the actor of every revision. Commands refused as
    /// INVALID_ARGUMENT are all reported together; any other refusal stops the write at once. With `dry_run`
    /// everything runs, unique constraints included, and is rolled back.
    pub async fn write(&self, caller: Caller, commands: Vec<Command>, dry_run: bool) -> Result<Vec<Saved>, WriteError> {
        let may_queue_mail = !dry_run && commands.iter().any(Command::sends_verification_email);
        let written = if self.writer.is_none() && !dry_run && !may_queue_mail && commands.len() == 1 {
            // PostgreSQL, one write: first without a transaction (see `write_unless_changed`).
            self.run(move |conn| match write_unless_changed(conn, &caller, &commands[0])? {
                Some(written) => Ok(written),
                None => settle(
                    conn.transaction(|conn| write_transaction(conn, &caller, commands, false)),
                    Ok(()),
                ),
            })
            .await
        } else {
            let touches = Touches::Users(commands.iter().map(Command::id).collect());
            self.transact(touches, move |conn| write_transaction(conn, &caller, commands, dry_run))
                .await
        };
        match written {
            Ok(Ok(users)) => {
                if may_queue_mail {
                    // A wake-up too many (the address did not change) only costs the sender one empty claim.
                    self.mail_queued.notify_one();
                }
                if !users.is_empty() {
                    self.feed.notify();
                }
                Ok(users)
            }
            Ok(Err(refusals)) => Err(WriteError::Refused(refusals)),
            Err(e) => Err(WriteError::Failed(e)),
        }
    }
}

/// E-mail verification (API §8) and the mail outbox.
impl Store {
    /// SendVerificationEmail: once a minute per user (stored, so it holds across processes), for an unverified
    /// user; queues the mail, or with `return_code` makes the code now and returns it instead.
    pub async fn send_verification(
        &self,
        caller: Caller,
        id: Uuid,
        return_code: bool,
        ttl: chrono::Duration,
    ) -> Result<(Box<User>, Option<String>), Error> {
        let sent = self
            .transact(Touches::user(id), move |conn| {
                let now = to_stored_precision(Utc::now());
                let Some((user, _)) = users::lock_all(conn, &[id])?.remove(&id) else {
                    return Err(Error::not_found(id).into());
                };
                permission::check_self_service_access(&caller, Rpc::SendVerificationEmail, &user, now)?;
                // The checks of a verification, without its write: a deleted or verified user gets no code.
                change::verify_email(&user)?;
                let attempts = verification::attempts(conn, id)?;
                codes::check_resend(attempts, now)?;
                verification::set_attempts(
                    conn,
                    id,
                    CodeAttempts {
                        last_sent: Some(now),
                        ..attempts
                    },
                )?;
                let code = if return_code {
                    let code = codes::new_code();
                    verification::insert_code(conn, &user, &code.digest, now, ttl)?;
                    Some(code.plaintext)
                } else {
                    verification::queue_verification(conn, &user, now)?;
                    None
                };
                Ok((Box::new(user), code))
            })
            .await?;
        if sent.1.is_none() {
            self.mail_queued.notify_one();
        }
        Ok(sent)
    }

    /// VerifyEmail: with a code, one attempt is counted under the user's row lock before the code is compared,
    /// so concurrent guesses take turns and get no more checks than sequential ones; the count is committed
    /// even when the code is wrong. The fifth wrong code voids every code of the user. Without a code (an
    /// administrator's call, checked by the caller) the user is verified as is.
    pub async fn verify_email(&self, caller: Caller, id: Uuid, code: Option<String>) -> Result<Box<User>, Error> {
        let verified = self
            .transact(Touches::user(id), move |conn| {
                let now = to_stored_precision(Utc::now());
                let (stored, stored_hash) = users::lock_all(conn, &[id])?.remove(&id).unzip();
                let outcome = Command::VerifyEmail { id }.decide(stored.as_ref(), &caller, now)?;
                let attempts = verification::attempts(conn, id)?;
                if let (Some(code), Some(user)) = (code, &stored) {
                    let taken = match codes::take_attempt(attempts) {
                        Ok(taken) => taken,
                        Err(e) => return Ok(Err(e)),
                    };
                    verification::set_attempts(conn, id, taken)?;
                    let valid = verification::find_code(conn, id, &codes::digest(&code))?
                        .is_some_and(|(bound, expire)| codes::code_is_valid(&bound, &user.fields.email, expire, now));
                    if !valid {
                        if taken.wrong >= codes::MAX_WRONG_CODES {
                            verification::delete_codes(conn, id)?;
                        }
                        return Ok(Err(codes::invalid_code(codes::NOT_VALID)));
                    }
                }
                // Single use: the code (and any other of the user's) is gone with the verification.
                verification::delete_codes(conn, id)?;
                verification::set_attempts(conn, id, CodeAttempts { wrong: 0, ..attempts })?;
                let user = users::save(
                    conn,
                    &caller.subject,
                    stored.as_ref(),
                    stored_hash.flatten(),
                    outcome,
                    EventKind::EmailVerified,
                    now,
                )?;
                Ok(Ok(Box::new(user)))
            })
            .await?;
        if verified.is_ok() {
            // The verification wrote an EMAIL_VERIFIED event (or nothing, for an already verified address).
            self.feed.notify();
        }
        verified
    }

    /// What the sender waits on besides its poll: a commit of this process that queued mail.
    pub fn mail_queued(&self) -> Arc<tokio::sync::Notify> {
        self.mail_queued.clone()
    }

    /// Claims up to `limit` due mail jobs for `lease` (see `verification::claim`); none, without a write, when
    /// nothing is due.
    pub async fn claim_mail(&self, lease: std::time::Duration, limit: i64) -> Result<Vec<MailJob>, Error> {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(5));
        // Most polls find nothing: they read, and only a due job costs a write transaction (on SQLite a turn of
        // the single writer and an fsync).
        let due = self
            .run(|conn| verification::any_due(conn, to_stored_precision(Utc::now())).map_err(read_error))
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.transact(Touches::no_user(), move |conn| {
            let now = to_stored_precision(Utc::now());
            Ok(verification::claim(conn, now, lease, limit)?)
        })
        .await
    }

    /// Makes the code of a claimed verification mail: its digest is stored (bound to the address, valid for
    /// `ttl`) and committed before the mail leaves, so the mail never carries a code that is not there yet, and
    /// the plaintext exists only in the sender's memory. `None`, and the job is dropped, when there is nothing
    /// to send any more: the user is gone, verified, or has another address now.
    pub async fn prepare_mail(
        &self,
        job: MailJob,
        ttl: chrono::Duration,
    ) -> Result<Option<(Box<User>, String)>, Error> {
        // A code and the job: nothing a read of the user shows.
        self.transact(Touches::no_user(), move |conn| {
            let now = to_stored_precision(Utc::now());
            let user = Uuid::try_parse(&job.user_id)
                .ok()
                .and_then(|id| users::lock_all(conn, &[id]).map(|mut m| m.remove(&id)).transpose())
                .transpose()?
                .map(|(user, _)| user);
            let Some(user) = user.filter(|u| {
                !u.email_verified
                    && u.delete_time.is_none()
                    && u.fields.email.to_lowercase() == job.email.to_lowercase()
            }) else {
                verification::drop_job(conn, &job.id)?;
                return Ok(None);
            };
            let code = codes::new_code();
            verification::insert_code(conn, &user, &code.digest, now, ttl)?;
            Ok(Some((Box::new(user), code.plaintext)))
        })
        .await
    }

    /// Records a job's attempt: sent; or failed, to be tried again at `retry_at` or (with `None`) kept as
    /// failed. `error` is the transport's message, which never holds the code.
    pub async fn finish_mail(
        &self,
        id: String,
        sent: bool,
        retry_at: Option<DateTime<Utc>>,
        error: String,
    ) -> Result<(), Error> {
        self.transact(Touches::no_user(), move |conn| {
            let now = to_stored_precision(Utc::now());
            if sent {
                verification::mark_sent(conn, &id)?;
            } else {
                verification::mark_failed_attempt(conn, &id, now, retry_at, &error)?;
            }
            Ok(())
        })
        .await
    }

    /// The queue's counts, for the metrics.
    pub async fn mail_stats(&self) -> Result<OutboxStats, Error> {
        self.run_read(|conn| verification::stats(conn).map_err(read_error))
            .await
    }
}

/// The transaction of a write: every command decided and saved, then committed, or rolled back when one was
/// refused or with `dry_run`.
fn write_transaction(
    conn: &mut DbConnection,
    caller: &Caller,
    commands: Vec<Command>,
    dry_run: bool,
) -> Result<Written, TxError<Written>> {
    match write_all(conn, caller, commands)? {
        Ok(users) if !dry_run => Ok(Ok(users)),
        written => Err(TxError::RolledBack(written)),
    }
}

/// PostgreSQL, a write of one existing user: reads it without a lock, decides, and stores the outcome in one
/// statement that writes only if the user is still at the revision read (`users::save_unless_changed`): two
/// round trips instead of a transaction's four. A refusal decided on that read is the answer (it was true of a
/// committed version). `None` when nothing was decided or written: the user is missing (a create, an upsert
/// or NOT_FOUND is decided under the user's lock), the outcome needs more than one statement, or another
/// writer changed the user in between; the caller then runs the write's transaction.
fn write_unless_changed(conn: &mut DbConnection, caller: &Caller, command: &Command) -> Result<Option<Written>, Error> {
    let Some(stored) = users::find(conn, command.id()).map_err(db_error)? else {
        return Ok(None);
    };
    let now = to_stored_precision(Utc::now());
    let refused = |error| stopped(0, error).map(Some);
    let outcome = match command.clone().decide(Some(&stored.0), caller, now) {
        Ok(outcome) => outcome,
        Err(error) => return refused(error),
    };
    let changed_paths = outcome.changed_paths().to_vec();
    match users::save_unless_changed(conn, &caller.subject, stored, outcome, command.event_kind(), now) {
        Ok(Some(user)) => Ok(Some(Ok(vec![Saved { user, changed_paths }]))),
        Ok(None) => Ok(None),
        Err(e) => refused(db_error(e)),
    }
}

/// Decides and saves every command; refusals come back as the `Written` answer, failures as errors.
fn write_all(conn: &mut DbConnection, caller: &Caller, commands: Vec<Command>) -> Result<Written, TxError<Written>> {
    let now = to_stored_precision(Utc::now());
    let mut ids: Vec<Uuid> = commands.iter().map(Command::id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut locked = users::lock_all(conn, &ids)?;
    // The first write of a user uses the row read with its lock; a later one in the same batch reads what the
    // earlier one left.
    let mut first_write = std::collections::HashSet::with_capacity(ids.len());
    let mut written = Vec::with_capacity(commands.len());
    let mut invalid: Vec<Refusal> = Vec::new();
    for (index, command) in commands.into_iter().enumerate() {
        let id = command.id();
        let stored = if first_write.insert(id) {
            locked.remove(&id)
        } else {
            users::find(conn, id)?
        };
        let (stored, stored_hash) = stored.unzip();
        let mail = command.sends_verification_email();
        let kind = command.event_kind();
        match command.decide(stored.as_ref(), caller, now) {
            Ok(outcome) => {
                let mail = mail && outcome.sets_email();
                let changed_paths = outcome.changed_paths().to_vec();
                match users::save(
                    conn,
                    &caller.subject,
                    stored.as_ref(),
                    stored_hash.flatten(),
                    outcome,
                    kind,
                    now,
                )
                .and_then(|user| queue_mail_if(conn, mail, user, now))
                {
                    Ok(user) => written.push(Saved { user, changed_paths }),
                    Err(e) => return Ok(stopped(index, db_error(e))?),
                }
            }
            Err(error @ Error::InvalidArgument { .. }) => invalid.push(Refusal { index, error }),
            Err(error) => return Ok(stopped(index, error)?),
        }
    }
    Ok(if invalid.is_empty() { Ok(written) } else { Err(invalid) })
}

/// Queues the verification mail a write asked for (`mail`: it asked, and it set an address), in the write's
/// transaction, so a write that rolls back queues nothing.
fn queue_mail_if(conn: &mut DbConnection, mail: bool, user: User, now: DateTime<Utc>) -> QueryResult<User> {
    if mail {
        verification::queue_verification(conn, &user, now)?;
    }
    Ok(user)
}

/// A write stopped at command `index`: that command is refused, unless the database itself failed, which is no
/// fault of the command (and tells the store the database may be gone).
fn stopped(index: usize, error: Error) -> Result<Written, Error> {
    match error {
        Error::Unavailable(_) | Error::Internal(_) => Err(error),
        error => Ok(Err(vec![Refusal { index, error }])),
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
                Error::taken(Conflict::Email)
            } else if what.contains("username") {
                Error::taken(Conflict::Username)
            } else if what.contains("users.id") || what.contains("users_pkey") {
                Error::taken(Conflict::UserId)
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
