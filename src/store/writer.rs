//! SQLite group commit: one writer thread takes the writes queued by concurrent requests, applies them in one
//! transaction (each in a savepoint of its own) and answers each request only after that transaction commits.
//!
//! SQLite allows one writer at a time and, at `synchronous=FULL`, a commit costs an fsync. A transaction per
//! request caps writes at one fsync each; a batch pays one fsync for all of its writes. Every write still decides
//! its own outcome: a write that fails rolls back its savepoint alone, and its neighbours commit.
//! At `synchronous=FULL` the fsync is not the writer's: it commits without it and hands the batch to the sync
//! thread (`durability.rs`), which answers the batch once it is on disk while the writer applies the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::connection::{ConnectionManager, DbConnection, with_connection};
use super::durability::{Committed, Durability, Syncer, Touches};
use super::{TxError, UNREACHABLE_WAIT, db_error, settle};
use crate::domain::error::Error;

/// How many writes may wait for the writer; callers beyond this wait to enqueue (back-pressure), so the queue
/// never holds more than the writer clears in a few batches.
const QUEUE_CAPACITY: usize = 4096;

/// What a write does once its batch has ended: given the batch's commit result, answer the caller.
pub type Finish = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// One queued write: runs inside the batch's transaction (or is told why no connection could be had) and
/// returns how to answer once the batch ends.
pub type Work = Box<dyn FnOnce(Result<&mut DbConnection, Error>) -> Finish + Send>;

/// A write waiting for the writer, with the users it may change (for reads that wait for its sync).
struct Queued {
    touches: Touches,
    work: Work,
}

/// How many batches the writer committed and how many writes they held.
#[derive(Debug, Default)]
pub struct WriteStats {
    pub batches: AtomicU64,
    pub writes: AtomicU64,
}

impl WriteStats {
    /// (committed batches, writes they held).
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

/// The queue in front of the writer thread. Dropping every clone of the sender ends the thread.
#[derive(Clone)]
pub struct GroupWriter {
    queue: mpsc::Sender<Queued>,
    /// Held by the writer while it applies a batch; holding it from outside stops the writer before its next
    /// batch (maintenance, and tests that need a known batch).
    hold: Arc<std::sync::Mutex<()>>,
    pub stats: Arc<WriteStats>,
    /// With a sync thread: where commits stand against the disk, for reads to wait on.
    pub durability: Option<Arc<Durability>>,
}

impl GroupWriter {
    /// Starts the writer thread on `pool`, which should hold one connection kept for the writer alone (see
    /// `Store::open`). `max_batch` is the most writes one transaction takes; 1 commits every write on its own.
    /// With `syncer`, the pool's connection commits without syncing and the sync thread answers each batch.
    pub fn start(
        pool: r2d2::Pool<ConnectionManager>,
        reachable: Arc<AtomicBool>,
        max_batch: usize,
        syncer: Option<Syncer>,
    ) -> std::io::Result<GroupWriter> {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let hold = Arc::new(std::sync::Mutex::new(()));
        let stats = Arc::new(WriteStats::default());
        let durability = syncer.as_ref().map(|syncer| syncer.durability.clone());
        let writer = Writer {
            pool,
            reachable,
            max_batch: max_batch.max(1),
            hold: hold.clone(),
            stats: stats.clone(),
            syncer,
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok(GroupWriter {
            queue,
            hold,
            stats,
            durability,
        })
    }

    /// Queues the transaction `f`, which changes at most what `touches` names, and waits for its batch to end.
    /// `f` runs in a savepoint of its own, so a write that fails rolls back alone; what it returned is the
    /// answer once the batch has committed.
    pub async fn submit<T, F>(&self, touches: Touches, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, TxError<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Work = Box::new(move |conn| {
            let own = conn.map_err(TxError::Domain).and_then(|conn| conn.transaction(f));
            Box::new(move |committed| {
                // The caller may have gone (time-out, cancelled request); its write stands either way.
                let _ = reply.send(settle(own, committed));
            })
        });
        self.queue
            .send(Queued { touches, work: job })
            .await
            .map_err(|_| Error::Unavailable("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::internal("the database writer dropped a write without answering"))?
    }

    /// Stops the writer before its next batch until the guard is dropped. Writes queue up meanwhile.
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.hold.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock the writer holds while it applies a batch, for the checkpoint thread (which must not keep the
    /// writer alive, so it cannot hold a `GroupWriter`).
    pub fn hold_lock(&self) -> Arc<std::sync::Mutex<()>> {
        self.hold.clone()
    }

    /// Writes waiting in the queue (not counting a batch being applied).
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

struct Writer {
    pool: r2d2::Pool<ConnectionManager>,
    reachable: Arc<AtomicBool>,
    max_batch: usize,
    hold: Arc<std::sync::Mutex<()>>,
    stats: Arc<WriteStats>,
    syncer: Option<Syncer>,
}

impl Writer {
    fn run(self, mut receiver: mpsc::Receiver<Queued>) {
        let mut batch: Vec<Queued> = Vec::with_capacity(self.max_batch);
        while let Some(first) = receiver.blocking_recv() {
            let _held = self.hold.lock().unwrap_or_else(|p| p.into_inner());
            batch.push(first);
            while batch.len() < self.max_batch {
                match receiver.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
            self.apply(&mut batch);
        }
    }

    /// Applies the batch in one transaction and answers every write after it ends (with a sync thread, after
    /// it is on disk).
    fn apply(&self, batch: &mut Vec<Queued>) {
        let count = batch.len() as u64;
        let wait = if self.reachable.load(Ordering::Relaxed) {
            self.pool.connection_timeout()
        } else {
            UNREACHABLE_WAIT
        };
        let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
        let mut touched: Vec<Touches> = Vec::new();
        let mut seq = None;
        let committed = with_connection(&self.pool, wait, |conn| {
            conn.transaction(|conn| {
                for queued in batch.drain(..) {
                    if self.syncer.is_some() {
                        touched.push(queued.touches);
                    }
                    finishes.push((queued.work)(Ok(conn)));
                }
                seq = self
                    .syncer
                    .as_ref()
                    .map(|syncer| syncer.durability.begin_commit(touched.drain(..)));
                Ok::<_, diesel::result::Error>(())
            })
            .map_err(db_error)
        });
        // Writes left in the batch (no connection, or a failed BEGIN never ran them) get the transaction's answer.
        for queued in batch.drain(..) {
            let error = committed
                .clone()
                .err()
                .unwrap_or_else(|| Error::internal("write skipped by its batch"));
            (queued.work)(Err(error.clone()))(Err(error));
        }
        if committed.is_ok() {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats.writes.fetch_add(count, Ordering::Relaxed);
        }
        match (&self.syncer, seq) {
            (Some(syncer), Some(seq)) => syncer.hand_over(Committed {
                seq,
                committed,
                finishes,
            }),
            _ => {
                for finish in finishes {
                    finish(committed.clone());
                }
            }
        }
    }
}
