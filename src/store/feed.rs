//! SQL of the change feed: reading committed events in feed order, the head, the PURGED events and pruning
//! by retention, and the PostgreSQL listener that wakes this process's watchers on other processes' commits.
//! (The events of changes are written with their revisions, in `users::insert_revision`.)
//!
//! Why a delivered cursor is never passed by a later commit:
//!
//! - SQLite has one writer at a time, so the AUTOINCREMENT `seq`, assigned in the write transaction, is commit
//!   order: once a reader sees `seq` n, everything up to n has committed (or never will).
//! - PostgreSQL: an id taken before commit is not commit order; a transaction with a smaller one may still be
//!   running. Each row carries its transaction's id (`txid`), and a read delivers only rows with `txid` below
//!   `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running when the read started:
//!   every transaction below it has ended, so every row that will ever exist below that horizon is already
//!   visible, and nothing can later appear at or before a delivered `(txid, seq)`. Transactions that write one
//!   user are serialized by its advisory lock, taken before the transaction has an id (see
//!   `users::lock_rows`), so the later writer gets the larger id and a user's events come in revision order.
//!   The price: a long transaction anywhere in the cluster (any database, even one that writes no event)
//!   holds the horizon back, so events wait until it ends. That is latency, never a skip.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use uuid::Uuid;

use super::connection::DbConnection;
use super::schema::user_events;
use super::stored_time::StoredTime;
use crate::domain::event::{Event, EventKind, Position};
use crate::domain::user::User;

/// The channel on which PostgreSQL processes tell each other of their commits.
pub const CHANNEL: &str = "user_events";
/// How often the listener looks for notifications when this process commits nothing; also the most a watcher
/// waits for another process's commit beyond the notification's own trip.
const LISTEN_POLL: Duration = Duration::from_millis(5);
/// How long the listener waits before connecting again after losing its connection.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = user_events)]
pub struct NewEvent {
    pub user_id: String,
    pub revision: i64,
    pub event_type: String,
    pub actor: String,
    pub update_mask: String,
    pub create_time: NaiveDateTime,
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = user_events)]
struct EventRow {
    seq: i64,
    txid: i64,
    user_id: String,
    revision: i64,
    event_type: String,
    actor: String,
    update_mask: String,
    #[diesel(deserialize_as = StoredTime)]
    create_time: NaiveDateTime,
    snapshot: Option<String>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(format!("stored {what} is invalid: {e}").into())
}

impl EventRow {
    fn into_event(self) -> QueryResult<Event> {
        let kind = EventKind::from_name(&self.event_type).ok_or_else(|| corrupt("event type", &self.event_type))?;
        let user: Option<User> = self.snapshot.as_deref().map(super::users::from_snapshot).transpose()?;
        Ok(Event {
            position: Position {
                txid: self.txid,
                seq: self.seq,
            },
            kind,
            user_id: Uuid::try_parse(&self.user_id).map_err(|e| corrupt("event user id", e))?,
            user,
            revision: self.revision,
            paths: serde_json::from_str(&self.update_mask).map_err(|e| corrupt("event mask", e))?,
            actor: self.actor,
            create_time: self.create_time.and_utc(),
        })
    }
}

/// PostgreSQL's visibility horizon as SQL: the oldest transaction running when the statement's snapshot was
/// taken, as a bigint comparable with `user_events.txid`.
const PG_HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint";

/// The visibility horizon: every row below it that will ever exist is visible now. PostgreSQL: the oldest
/// running transaction; SQLite: unbounded (one writer, see the module documentation).
fn horizon(conn: &mut DbConnection) -> QueryResult<i64> {
    match conn {
        DbConnection::Postgres(pg) => diesel::select(diesel::dsl::sql::<BigInt>(PG_HORIZON)).get_result(pg),
        DbConnection::Sqlite(_) => Ok(i64::MAX),
    }
}

/// What one read of the feed found.
#[derive(Debug)]
pub struct Page {
    /// Events after the reader's position, in feed order.
    pub events: Vec<Event>,
    /// How far the reader has covered: the last event's position, or, when the page is not full, as far as the
    /// horizon (so a watcher with nothing to send still moves on).
    pub covered: Position,
    /// Committed events above the horizon wait for an older transaction to end (PostgreSQL): nothing will
    /// notify the reader when it does, so it should look again soon.
    pub held_back: bool,
}

/// One page of events after `after` (see [`Page`]).
pub fn read_after(conn: &mut DbConnection, after: Position, limit: i64) -> QueryResult<Page> {
    let (rows, horizon, held_back) = match conn {
        DbConnection::Postgres(pg) => {
            let rows: Vec<PgPageRow> = PgPageAfter { after, limit }.load(pg)?;
            // Every answer has at least one row, which carries the horizon (and no event when none is due).
            let (horizon, held_back) = rows.first().map_or((0, false), |r| (r.horizon, r.held_back));
            let events = rows.into_iter().filter_map(PgPageRow::into_event_row).collect();
            (events, horizon, held_back)
        }
        DbConnection::Sqlite(sqlite) => {
            // `txid` is always 0 here: `seq` alone is the order, and the rowid, so this is a range scan from the
            // cursor on (a row-value comparison would make SQLite's planner scan the whole table and sort). No
            // row here is after a position with a larger `txid`, as the comparison would have it.
            let rows = user_events::table
                .select(EventRow::as_select())
                .filter(user_events::seq.gt(if after.txid == 0 { after.seq } else { i64::MAX }))
                .order(user_events::seq.asc())
                .limit(limit)
                .load(sqlite)?;
            (rows, i64::MAX, false)
        }
    };
    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
    let events = rows
        .into_iter()
        .map(EventRow::into_event)
        .collect::<QueryResult<Vec<_>>>()?;
    let mut covered = events.last().map_or(after, |e| e.position);
    if !full && horizon != i64::MAX {
        covered = covered.max(Position {
            txid: horizon - 1,
            seq: i64::MAX,
        });
    }
    Ok(Page {
        events,
        covered,
        held_back: !full && held_back,
    })
}

/// PostgreSQL: the page after a position, the visibility horizon and whether committed events wait above it,
/// in one statement (one round trip, prepared once per connection). The horizon is the `xmin` of the
/// statement's own snapshot (`pg_current_snapshot()` is the active one), so every transaction below it had
/// ended before the rows were read, and each of its events is in the answer or after the page. Whether events
/// wait above the horizon is asked as `max(txid)`, one step down the key, where an `EXISTS` on a bound the
/// planner cannot see would scan the table.
struct PgPageAfter {
    after: Position,
    limit: i64,
}

impl diesel::query_builder::QueryId for PgPageAfter {
    type QueryId = PgPageAfter;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::Query for PgPageAfter {
    type SqlType = diesel::sql_types::Untyped;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for PgPageAfter {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql("WITH horizon AS (SELECT ");
        out.push_sql(PG_HORIZON);
        out.push_sql(
            " AS xmin) \
             SELECT horizon.xmin AS horizon, \
                    COALESCE((SELECT max(txid) FROM user_events) >= GREATEST(horizon.xmin, ",
        );
        out.push_bind_param::<BigInt, _>(&self.after.txid)?;
        out.push_sql(
            "), false) AS held_back, \
                    page.seq, page.txid, page.user_id, page.revision, page.event_type, page.actor, \
                    page.update_mask, page.create_time, page.snapshot \
             FROM horizon LEFT JOIN LATERAL ( \
                 SELECT * FROM user_events WHERE user_events.txid < horizon.xmin \
                 AND (user_events.txid, user_events.seq) > (",
        );
        out.push_bind_param::<BigInt, _>(&self.after.txid)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.after.seq)?;
        out.push_sql(") ORDER BY user_events.txid, user_events.seq LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.limit)?;
        out.push_sql(") page ON true ORDER BY page.txid, page.seq");
        Ok(())
    }
}

impl RunQueryDsl<diesel::PgConnection> for PgPageAfter {}

#[derive(QueryableByName)]
struct PgPageRow {
    #[diesel(sql_type = BigInt)]
    horizon: i64,
    #[diesel(sql_type = Bool)]
    held_back: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    txid: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    revision: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    actor: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    update_mask: Option<String>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    create_time: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Text>)]
    snapshot: Option<String>,
}

impl PgPageRow {
    /// The event of the row, `None` for the row that only carries the horizon (no event was due).
    fn into_event_row(self) -> Option<EventRow> {
        Some(EventRow {
            seq: self.seq?,
            txid: self.txid?,
            user_id: self.user_id?,
            revision: self.revision?,
            event_type: self.event_type?,
            actor: self.actor?,
            update_mask: self.update_mask?,
            create_time: self.create_time?,
            snapshot: self.snapshot,
        })
    }
}

/// Where a stream without a start cursor begins: after everything committed so far (PostgreSQL: everything
/// below the horizon; a change committed above it while an older transaction runs is delivered after the
/// head, never lost).
pub fn head(conn: &mut DbConnection) -> QueryResult<Position> {
    match conn {
        DbConnection::Postgres(_) => Ok(Position {
            txid: horizon(conn)? - 1,
            seq: i64::MAX,
        }),
        DbConnection::Sqlite(_) => {
            let last: Option<i64> = user_events::table
                .select(diesel::dsl::max(user_events::seq))
                .get_result(conn)?;
            Ok(Position {
                txid: 0,
                seq: last.unwrap_or(0),
            })
        }
    }
}

/// Records that `user` was purged: a `Purged` event holding only its id and last revision.
pub fn insert_purged(conn: &mut DbConnection, user: &User, now: DateTime<Utc>) -> QueryResult<()> {
    diesel::insert_into(user_events::table)
        .values(NewEvent {
            user_id: user.id.to_string(),
            revision: user.revision,
            event_type: EventKind::Purged.name().to_owned(),
            actor: PURGE_ACTOR.to_owned(),
            update_mask: "[]".to_owned(),
            create_time: now.naive_utc(),
            snapshot: None,
        })
        .execute(conn)?;
    Ok(())
}

/// The actor of purges, which no caller makes.
pub const PURGE_ACTOR: &str = "system";

/// Deletes the events older than `before`; returns how many.
pub fn prune(conn: &mut DbConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(user_events::table.filter(user_events::create_time.lt(before.naive_utc()))).execute(conn)
}

/// Wakes watchers after every commit that wrote events: this process's at once (a counter they wait on to
/// change, with a slow poll as backstop), and on PostgreSQL other processes' through the listener thread,
/// which sends one `NOTIFY` for however many commits happened while its previous one was on the way.
///
/// Why not `NOTIFY` in the writing transaction, which would be delivered exactly on commit: PostgreSQL takes
/// one cluster-wide lock at the commit of every transaction that notified, so all writers would commit one
/// after another. After the commit, a crash can lose a wake-up; other processes then see the change at their
/// next backstop poll, never miss it (the feed is read from the table).
#[derive(Clone)]
pub struct Signal {
    sender: Arc<tokio::sync::watch::Sender<u64>>,
    /// The listener's queue of commits to announce: one slot, so a full queue means an announcement is
    /// already due and covers this commit too.
    announce: Arc<std::sync::OnceLock<std::sync::mpsc::SyncSender<()>>>,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            sender: Arc::new(tokio::sync::watch::channel(0).0),
            announce: Arc::new(std::sync::OnceLock::new()),
        }
    }
}

impl Signal {
    pub fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
        if let Some(announce) = self.announce.get() {
            // Full: an announcement is already due. Disconnected: the listener is gone with the store.
            let _ = announce.try_send(());
        }
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sender.subscribe()
    }

    fn downgrade(&self) -> Weak<tokio::sync::watch::Sender<u64>> {
        Arc::downgrade(&self.sender)
    }
}

/// PostgreSQL: a thread with a connection of its own that announces this process's commits on [`CHANNEL`] and
/// LISTENs there, bumping `signal` on other processes' announcements, so watchers here see their commits. It
/// ends when the store is gone.
pub fn start_listener(url: String, signal: &Signal) -> std::io::Result<()> {
    let weak = signal.downgrade();
    let (announce, commits) = std::sync::mpsc::sync_channel(1);
    if signal.announce.set(announce).is_err() {
        return Err(std::io::Error::other("the change feed listener was already started"));
    }
    std::thread::Builder::new()
        .name("feed-listener".into())
        .spawn(move || {
            while weak.strong_count() > 0 {
                match listen(&url, &weak, &commits) {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "change feed listener lost its connection; reconnecting"),
                }
                std::thread::sleep(LISTEN_RETRY);
            }
        })?;
    Ok(())
}

/// Serves one connection until the store is gone (`Ok`) or the connection fails.
fn listen(
    url: &str,
    weak: &Weak<tokio::sync::watch::Sender<u64>>,
    commits: &std::sync::mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    use diesel::connection::SimpleConnection;
    use std::sync::mpsc::RecvTimeoutError;
    let mut pg = diesel::PgConnection::establish(url)?;
    // An announcement is a wake-up, lost anyway if this process dies: it need not wait for the disk.
    pg.batch_execute(&format!("SET synchronous_commit = off; LISTEN {CHANNEL}"))?;
    let own_pid: i32 =
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()")).get_result(&mut pg)?;
    let announce = format!("NOTIFY {CHANNEL}");
    // On (re)connecting, wake both sides once: announcements sent or due while disconnected are lost.
    let wake = |weak: &Weak<tokio::sync::watch::Sender<u64>>| {
        weak.upgrade()
            .map(|sender| sender.send_modify(|n| *n = n.wrapping_add(1)))
    };
    wake(weak);
    pg.batch_execute(&announce)?;
    loop {
        match commits.recv_timeout(LISTEN_POLL) {
            Ok(()) => pg.batch_execute(&announce)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // notifications_iter only reads what has arrived, without blocking.
        let mut foreign = false;
        for notification in pg.notifications_iter() {
            foreign |= notification?.process_id != own_pid;
        }
        if foreign && wake(weak).is_none() {
            return Ok(());
        }
        if weak.strong_count() == 0 {
            return Ok(());
        }
    }
}
