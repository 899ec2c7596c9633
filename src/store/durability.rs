//! SQLite at `synchronous=FULL`: the log's fsync runs on a thread of its own, beside the writer's next batch,
//! and nothing this process answers shows a commit before that commit is on disk.
//!
//! At `synchronous=FULL` SQLite syncs the log inside COMMIT, with the write lock held: the writer thread, the one
//! place every write passes, stood idle for every fsync, and 64 callers got 0.83-0.89× the throughput of the
//! same load without the fsync. Here the writer's own connection commits at `synchronous=NORMAL` (the log is
//! written, not synced) and hands the batch to the sync thread, which syncs the log and only then answers the
//! batch's writes. One sync covers every batch committed before it, so the thread takes all that are waiting.
//!
//! A commit at `NORMAL` is visible to readers before it is synced. So that no answer shows a commit a power loss
//! could still take back (a read that returned a revision, or a feed position, that is later given to another
//! change), every read of the store waits, after it ran, until every batch whose COMMIT had started by then is
//! synced ([`Durability::settled`]): free while nothing waits for a sync, otherwise until the sync that covers
//! the newest commit (the one running, or the next). The acknowledged-write guarantee is the one `FULL` gives: a
//! write is answered once its log frames are on disk. Another process reading the same file does not wait for
//! this process's syncs.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::writer::Finish;
use crate::domain::error::Error;

/// Committed batches that may wait for the sync thread; beyond this the writer waits before it takes its next
/// batch, so a disk slower than the writer holds the writes back in the writer's queue rather than here.
const SYNC_BACKLOG: usize = 256;

/// Where commits stand against the disk: which batches have begun to commit, which are synced.
#[derive(Debug)]
pub struct Durability {
    /// The number of the last batch whose COMMIT has started. A batch takes its number before COMMIT makes it
    /// visible, so a read that sees a commit finds its number here when it looks afterwards.
    committing: AtomicU64,
    /// Every batch up to this number is synced (or failed, and was answered so).
    synced: AtomicU64,
    /// `synced`, for reads that wait for it.
    synced_changes: watch::Sender<u64>,
    /// Held by the sync thread while it syncs; holding it from outside stops syncs before the next one.
    hold: Mutex<()>,
}

impl Durability {
    fn new() -> Durability {
        Durability {
            committing: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            synced_changes: watch::Sender::new(0),
            hold: Mutex::new(()),
        }
    }

    /// Numbers the batch about to commit; called inside its transaction, before COMMIT.
    pub fn begin_commit(&self) -> u64 {
        self.committing.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Returns once every batch whose COMMIT had started when it was called is synced: a read calls it after
    /// it ran, so what it read is on disk before it answers.
    pub async fn settled(&self) {
        let needed = self.committing.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= needed {
            return;
        }
        // `wait_for` looks at the current value first, so a sync finished since the check above is not missed.
        // The sender lives as long as `self`, so the wait ends only by the condition.
        let _ = self
            .synced_changes
            .subscribe()
            .wait_for(|synced| *synced >= needed)
            .await;
    }

    fn mark_synced(&self, seq: u64) {
        self.synced.fetch_max(seq, Ordering::SeqCst);
        self.synced_changes.send_modify(|synced| *synced = (*synced).max(seq));
    }

    /// Stops the sync thread before its next sync while the guard lives (tests: a commit that is not yet on
    /// disk must not be shown).
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A batch that has committed (or failed to), waiting for the sync that makes it durable.
pub struct Committed {
    pub seq: u64,
    pub committed: Result<(), Error>,
    pub finishes: Vec<Finish>,
}

/// The writer's end of the sync thread.
pub struct Syncer {
    pub durability: Arc<Durability>,
    batches: SyncSender<Committed>,
}

impl Syncer {
    /// Starts the sync thread for the SQLite database at `database`.
    pub fn start(database: &Path) -> io::Result<Syncer> {
        let durability = Arc::new(Durability::new());
        let (batches, receiver) = sync_channel(SYNC_BACKLOG);
        let log = Log::new(database);
        let thread_durability = durability.clone();
        std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || run(receiver, log, &thread_durability))?;
        Ok(Syncer { durability, batches })
    }

    /// Hands a committed batch to the sync thread, which answers its writes once it is on disk.
    pub fn hand_over(&self, batch: Committed) {
        if let Err(std::sync::mpsc::SendError(batch)) = self.batches.send(batch) {
            // The thread ended (it panicked): the commit's durability is unknown, and no later read must wait.
            self.durability.mark_synced(batch.seq);
            let error = Error::internal("the log's sync thread has stopped");
            for finish in batch.finishes {
                finish(Err(error.clone()));
            }
        }
    }
}

fn run(receiver: Receiver<Committed>, mut log: Log, durability: &Durability) {
    // A failure is logged once until a sync succeeds again.
    let mut failing = false;
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        group.extend(receiver.try_iter());
        let _held = durability.hold();
        let synced = if group.iter().any(|batch| batch.committed.is_ok()) {
            log.sync()
        } else {
            Ok(())
        };
        let synced = match synced {
            Ok(()) => {
                failing = false;
                Ok(())
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "syncing the SQLite log failed; the writes it held are answered with an error");
                }
                failing = true;
                Err(Error::internal(format!("syncing the database log failed: {e}")))
            }
        };
        let last = group.last().map_or(0, |batch| batch.seq);
        durability.mark_synced(last);
        for batch in group {
            let result = batch.committed.and(synced.clone());
            for finish in batch.finishes {
                finish(result.clone());
            }
        }
    }
}

/// The database's `-wal` file, synced through a descriptor of its own.
struct Log {
    path: PathBuf,
    folder: PathBuf,
    /// The open log and the (device, inode) it was opened at: SQLite keeps one log file for the life of its
    /// connections, but one that is removed and made again (every connection closed) is opened anew.
    open: Option<(File, (u64, u64))>,
}

impl Log {
    fn new(database: &Path) -> Log {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        let folder = match database.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder.to_owned(),
            _ => PathBuf::from("."),
        };
        Log {
            path: PathBuf::from(path),
            folder,
            open: None,
        }
    }

    /// Syncs what the log holds. Any descriptor of the file flushes its pages. Closing one is safe here (unlike
    /// the database file's, see `checkpoint.rs`): SQLite takes no POSIX lock on the log file.
    fn sync(&mut self) -> io::Result<()> {
        let identity = match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()),
            // No log: the last connection checkpointed it into the database (synced) and removed it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let file = match &self.open {
            Some((file, opened)) if *opened == identity => file,
            _ => {
                let file = File::open(&self.path)?;
                let meta = file.metadata()?;
                // A log new to this thread may be a new file: its name in the folder must reach the disk too.
                File::open(&self.folder)?.sync_all()?;
                &self.open.insert((file, (meta.dev(), meta.ino()))).0
            }
        };
        file.sync_data()
    }
}
