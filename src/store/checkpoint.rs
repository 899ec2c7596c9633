//! SQLite WAL checkpoints, run by a thread of their own on a connection of their own, so the writer's commits
//! never pay for copying the log back into the database file.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that commit, and every
//! write waiting in its batch, waits for the copy and its fsync. Every connection of the store turns the
//! automatic checkpoint off (`connection.rs`); this thread checkpoints instead. A PASSIVE checkpoint copies what
//! no reader still needs without blocking anyone, and lets the next commit start the log from its beginning,
//! which keeps the file bounded. Readers that always overlap can keep a PASSIVE checkpoint from finishing; when
//! the log file grows past [`TRUNCATE_ABOVE`] a TRUNCATE checkpoint waits (briefly) for them and empties it.
//!
//! SQLite starts the log over only when a write begins with every frame already copied; a checkpoint running
//! beside a busy writer never sees that moment (the writer has always appended more), so the log would only
//! grow. Each checkpoint therefore runs in steps: PASSIVE ones beside the writer copy the bulk (and the thread
//! syncs what they copied), then a last one copies the few frames written meanwhile while the writer waits
//! between two batches, so its next batch starts the log over.
//! Durability is unchanged: a checkpoint only copies committed pages, and its connection (at the configured level)
//! syncs the log before it copies, so the database file never holds a commit its log has not made durable.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use diesel::RunQueryDsl;
use diesel::sql_types::Integer;

use super::connection::{ConnectionManager, DatabaseTarget, DbConnection, SqliteSync};
use super::writer::WriteStats;

/// How often the thread looks for new commits to checkpoint. A turn's syncs hold up the writer's own (the
/// device flushes everything queued), for as long as the pages the turn copied take to write: short turns keep
/// that short. At 2,200 updates/s, UpdateUser's p99 was 10-14 ms with 100 ms turns, 6-7 ms with 25 ms turns, at
/// the same closed-loop throughput. At 2,650/s (half the closed-loop rate), 10 ms turns against 25 ms: p99
/// 3.8-6.4 ms (median of 8 runs 4.1) against 5.1-6.0 ms, and 64 callers at `synchronous=FULL` 6,950-7,310/s
/// against 6,510-6,850/s; 5 ms turns were no better than 10 and raised the p50.
pub const INTERVAL: Duration = Duration::from_millis(10);
/// A log file larger than this is emptied (TRUNCATE) rather than only copied back (PASSIVE).
pub const TRUNCATE_ABOVE: u64 = 16 << 20;
/// How long a TRUNCATE checkpoint waits for readers and the writer; it blocks new writes while it waits, so it
/// gives up soon and tries again at the next turn.
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

/// Checkpoints of each turn that run beside the writer after the first, before the last one, which stops it.
const CATCH_UP_PASSES: usize = 1;

/// Flushes the pages a checkpoint copied into the database file. A checkpoint that has not caught up with the
/// log leaves them unsynced, and the one that catches up syncs them all: with the writer stopped, that sync
/// took it 8-10 ms every turn (UpdateUser's p99), so it is done beside the writer first, leaving SQLite's own
/// sync only the last pages. Any descriptor of the file flushes its pages; a failure here only leaves the work
/// to SQLite's sync.
fn sync_database_file(file: Option<&File>) {
    if let Some(Err(e)) = file.map(File::sync_data) {
        tracing::debug!(error = %e, "syncing the database file ahead of a checkpoint failed");
    }
}

#[derive(diesel::QueryableByName)]
struct Outcome {
    /// 1 when the checkpoint could not finish (a reader or the writer was in the way).
    #[diesel(sql_type = Integer)]
    busy: i32,
    /// Frames in the log, and how many of them are now in the database file.
    #[diesel(sql_type = Integer)]
    log: i32,
    #[diesel(sql_type = Integer)]
    checkpointed: i32,
}

/// Starts the checkpoint thread for the SQLite file at `path`. It ends once `stats` is gone, which is when the
/// writer has stopped.
pub fn start(
    path: PathBuf,
    sqlite_sync: SqliteSync,
    stats: Weak<WriteStats>,
    hold: Arc<Mutex<()>>,
) -> std::io::Result<()> {
    let manager = ConnectionManager {
        target: DatabaseTarget::Sqlite(path.clone()),
        sqlite_sync,
        busy_timeout: TRUNCATE_WAIT,
    };
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    // The descriptor `sync_database_file` syncs through is opened once and never closed: closing any descriptor of
    // the file drops every POSIX lock the process holds on it, SQLite's connections' included, which would let
    // another process take the file as if no one had it open.
    let database = match File::open(&path) {
        Ok(file) => Some(ManuallyDrop::new(file)),
        Err(e) => {
            tracing::warn!(error = %e, "opening the database file to sync checkpoints failed; SQLite syncs alone");
            None
        }
    };
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || run(&manager, database.as_deref(), &wal, &stats, &hold))?;
    Ok(())
}

fn run(manager: &ConnectionManager, database: Option<&File>, wal: &Path, stats: &Weak<WriteStats>, hold: &Mutex<()>) {
    let mut conn: Option<DbConnection> = None;
    let mut seen = 0;
    // After a checkpoint that could not finish, the next turn tries again even without new commits.
    let mut pending = false;
    // A failure is logged once until a checkpoint succeeds again: a full disk would otherwise log every turn.
    let mut failing = false;
    loop {
        std::thread::sleep(INTERVAL);
        let Some(stats) = stats.upgrade() else { return };
        let batches = stats.batches.load(Ordering::Relaxed);
        drop(stats);
        if batches == seen && !pending {
            continue;
        }
        seen = batches;
        let db = match conn.as_mut() {
            Some(db) => db,
            None => match manager.establish() {
                Ok(db) => conn.insert(db),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "opening the checkpoint connection failed; retrying");
                    }
                    failing = true;
                    pending = true;
                    continue;
                }
            },
        };
        let large = std::fs::metadata(wal).is_ok_and(|m| m.len() > TRUNCATE_ABOVE);
        let (mode, statement) = if large {
            ("TRUNCATE", "PRAGMA wal_checkpoint(TRUNCATE)")
        } else {
            ("PASSIVE", "PRAGMA wal_checkpoint(PASSIVE)")
        };
        let checkpoint = |db: &mut DbConnection| diesel::sql_query(statement).get_result::<Outcome>(db);
        let done = checkpoint(db).and_then(|mut outcome| {
            // Each pass beside the writer copies what it appended during the last; then the short tail is
            // copied with the writer stopped between batches (see the module comment).
            for pass in 0..=CATCH_UP_PASSES {
                if outcome.busy != 0 || outcome.log == 0 {
                    break;
                }
                sync_database_file(database);
                let frames_before = outcome.log;
                outcome = if pass == CATCH_UP_PASSES {
                    let _writer = hold.lock().unwrap_or_else(|p| p.into_inner());
                    checkpoint(db)?
                } else {
                    checkpoint(db)?
                };
                // Nothing appended since the last pass, which therefore copied the whole log (and synced it).
                if outcome.log == frames_before {
                    break;
                }
            }
            Ok(outcome)
        });
        match done {
            Ok(outcome) => {
                if failing {
                    tracing::info!("WAL checkpoints work again");
                }
                failing = false;
                pending = outcome.busy != 0 || outcome.checkpointed < outcome.log;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, mode, "WAL checkpoint failed; retrying");
                }
                failing = true;
                pending = true;
                // A connection in a bad state is replaced at the next turn.
                conn = None;
            }
        }
    }
}
