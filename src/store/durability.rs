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
//! the newest commit (the one running, or the next). A read of one user waits only for the unsynced batches that
//! could have written that user ([`Durability::settled_for`]): every write says which users it may change
//! ([`Touches`]), so a GetUser beside a write load does not wait for the syncs of other users' writes. The
//! acknowledged-write guarantee is the one `FULL` gives: a write is answered once its log frames are on disk.
//! Another process reading the same file does not wait for this process's syncs.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use uuid::Uuid;

use super::writer::Finish;
use crate::domain::error::Error;

/// Committed batches that may wait for the sync thread; beyond this the writer waits before it takes its next
/// batch, so a disk slower than the writer holds the writes back in the writer's queue rather than here.
const SYNC_BACKLOG: usize = 256;

/// The users a write may change: what a read of one user must wait for while the write's batch is unsynced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touches {
    /// These users' rows and what belongs to them (labels, roles, revisions, codes), nothing a read of another
    /// user shows. A create names the id it creates, so a read that finds no such user waits for it too.
    Users(Vec<Uuid>),
    /// Anything: a write whose users are not known before it runs (a sign-in by e-mail address, a purge).
    Any,
}

impl Touches {
    pub fn user(id: Uuid) -> Touches {
        Touches::Users(vec![id])
    }

    /// A write of tables no read of a user shows (the mail outbox, the feed's retention, unknown logins).
    pub fn no_user() -> Touches {
        Touches::Users(Vec::new())
    }
}

/// The batches committed and not yet synced, by the users they wrote.
#[derive(Debug, Default)]
struct Unsynced {
    /// For each user an unsynced batch wrote, the newest such batch.
    newest: HashMap<Uuid, u64>,
    /// Each unsynced batch that wrote named users, oldest first, so its users are forgotten once it is synced.
    batches: VecDeque<(u64, Vec<Uuid>)>,
    /// The newest batch with a write of [`Touches::Any`].
    any: u64,
}

impl Unsynced {
    fn record(&mut self, seq: u64, touches: impl IntoIterator<Item = Touches>) {
        let mut users = Vec::new();
        for touched in touches {
            match touched {
                Touches::Users(ids) => users.extend(ids),
                Touches::Any => self.any = seq,
            }
        }
        for id in &users {
            self.newest.insert(*id, seq);
        }
        if !users.is_empty() {
            self.batches.push_back((seq, users));
        }
    }

    fn forget_through(&mut self, synced: u64) {
        while self.batches.front().is_some_and(|(seq, _)| *seq <= synced) {
            let Some((seq, users)) = self.batches.pop_front() else {
                break;
            };
            for id in users {
                if self.newest.get(&id) == Some(&seq) {
                    self.newest.remove(&id);
                }
            }
        }
    }

    /// The newest unsynced batch a read of `user` could have seen (0: none).
    fn needed_for(&self, user: Uuid) -> u64 {
        self.newest.get(&user).copied().unwrap_or(0).max(self.any)
    }
}

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
    /// Which users the unsynced batches wrote. A batch is recorded here before its COMMIT, with its number.
    unsynced: Mutex<Unsynced>,
    /// Held by the sync thread while it syncs; holding it from outside stops syncs before the next one.
    hold: Mutex<()>,
}

impl Durability {
    fn new() -> Durability {
        Durability {
            committing: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            synced_changes: watch::Sender::new(0),
            unsynced: Mutex::new(Unsynced::default()),
            hold: Mutex::new(()),
        }
    }

    fn unsynced(&self) -> MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the batch about to commit and records the users its writes may change; called inside its
    /// transaction, before COMMIT.
    pub fn begin_commit(&self, touches: impl IntoIterator<Item = Touches>) -> u64 {
        let mut unsynced = self.unsynced();
        let seq = self.committing.fetch_add(1, Ordering::SeqCst) + 1;
        unsynced.record(seq, touches);
        seq
    }

    /// Returns once every batch whose COMMIT had started when it was called is synced: a read calls it after
    /// it ran, so what it read is on disk before it answers.
    pub async fn settled(&self) {
        self.wait_synced(self.committing.load(Ordering::SeqCst)).await;
    }

    /// [`Durability::settled`] for a read of one user: waits only for the batches that may have written it.
    pub async fn settled_for(&self, user: Uuid) {
        let committing = self.committing.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= committing {
            return;
        }
        // A batch numbered after `committing` began its COMMIT after the read ran, so the read did not see it.
        let needed = self.unsynced().needed_for(user).min(committing);
        self.wait_synced(needed).await;
    }

    async fn wait_synced(&self, needed: u64) {
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
        self.unsynced().forget_through(seq);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_read_of_a_user_waits_for_the_newest_unsynced_batch_that_wrote_it() {
        let mut unsynced = Unsynced::default();
        unsynced.record(1, [Touches::user(id(1)), Touches::Users(vec![id(2), id(3)])]);
        unsynced.record(2, [Touches::user(id(2))]);
        unsynced.record(3, [Touches::no_user()]);
        assert_eq!(
            [1, 2, 3, 4].map(|n| unsynced.needed_for(id(n))),
            [1, 2, 1, 0],
            "a user no batch wrote waits for none"
        );
        unsynced.forget_through(1);
        assert_eq!([1, 2, 3].map(|n| unsynced.needed_for(id(n))), [0, 2, 0]);
        unsynced.forget_through(3);
        assert_eq!(unsynced.needed_for(id(2)), 0);
        assert!(
            unsynced.newest.is_empty() && unsynced.batches.is_empty(),
            "synced batches are forgotten"
        );
    }

    #[test]
    fn a_write_of_unknown_users_holds_every_read_of_a_user() {
        let mut unsynced = Unsynced::default();
        unsynced.record(4, [Touches::user(id(1)), Touches::Any]);
        unsynced.record(5, [Touches::user(id(1))]);
        assert_eq!(unsynced.needed_for(id(9)), 4);
        assert_eq!(unsynced.needed_for(id(1)), 5);
    }

    #[tokio::test]
    async fn settled_for_waits_only_for_the_batches_of_its_user() {
        let durability = Arc::new(Durability::new());
        let first = durability.begin_commit([Touches::user(id(1))]);
        let second = durability.begin_commit([Touches::user(id(2))]);
        durability.mark_synced(first);
        // Batch 2 is unsynced: user 1's read answers, user 2's waits for it.
        tokio::time::timeout(Duration::from_secs(5), durability.settled_for(id(1)))
            .await
            .expect("user 1 is synced");
        let waiting = tokio::spawn({
            let durability = durability.clone();
            async move { durability.settled_for(id(2)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a read of user 2 answered before its batch was synced"
        );
        durability.mark_synced(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("user 2 answers once synced")
            .expect("task");
    }
}
