//! The bounded pool every Argon2id computation runs on (hashes on create and update, checks of a current
//! password): at most `slots` at once, each on a blocking thread with a memory block of its own that is kept for
//! the next computation.
//!
//! Why: each computation needs 19 MiB. Unbounded, a burst of N concurrent password changes costs N × 19 MiB at
//! once, and glibc keeps most of it after the burst (after the first large free it raises its mmap threshold,
//! so later blocks come from arenas that are not returned). With one block per slot the peak is
//! `slots` × 19 MiB, allocated once; later computations reuse it, and no large block is ever freed.
//!
//! Callers waiting for a slot wait asynchronously: a call that reaches its deadline or is cancelled while
//! waiting is dropped and leaves the queue. A computation that has started runs to its end and keeps its slot
//! until then, even when its caller has gone, so the bound holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::domain::error::Error;
use crate::domain::password::{self, Memory};

pub struct HashPool {
    slots: Arc<Semaphore>,
    size: usize,
    /// Memory blocks of slots not computing now; at most `size` ever exist.
    idle: Arc<Mutex<Vec<Memory>>>,
    waiting: AtomicUsize,
}

/// Counts a caller as waiting for as long as it lives, cancellation included.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HashPool {
    /// A pool of `slots` concurrent computations (at least one).
    pub fn new(slots: usize) -> HashPool {
        let size = slots.max(1);
        HashPool {
            slots: Arc::new(Semaphore::new(size)),
            size,
            idle: Arc::new(Mutex::new(Vec::with_capacity(size))),
            waiting: AtomicUsize::new(0),
        }
    }

    /// How many computations may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Hashes a new password (already checked against the policy).
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        self.run(move |memory| password::hash(&password, memory)).await?
    }

    /// Whether `password` matches the stored PHC hash.
    pub async fn verify(&self, password: String, stored_hash: String) -> Result<bool, Error> {
        self.run(move |memory| password::verify(&password, &stored_hash, memory))
            .await
    }

    /// Runs `work` on a slot's memory once a slot is free.
    async fn run<R, F>(&self, work: F) -> Result<R, Error>
    where
        F: FnOnce(&mut Memory) -> R + Send + 'static,
        R: Send + 'static,
    {
        let permit = {
            let _waiting = Waiting::enter(&self.waiting);
            self.slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::internal("the password hashing pool is closed"))?
        };
        let idle = self.idle.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the computation ends, whether or not anyone still awaits it.
            let _permit = permit;
            let mut memory = idle.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
            let result = work(&mut memory);
            idle.lock().unwrap_or_else(|p| p.into_inner()).push(memory);
            result
        })
        .await
        .map_err(|e| Error::internal(format!("a password hashing task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts a computation that holds its slot until `release` is sent; returns once it runs.
    async fn hold_slot(pool: &Arc<HashPool>) -> (tokio::task::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (running, started) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let pool = pool.clone();
            async move {
                let _ = pool
                    .run(move |_| {
                        let _ = running.send(());
                        let _ = released.recv();
                    })
                    .await;
            }
        });
        started.await.expect("the computation started");
        (task, release)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_calls_keep_their_deadline_and_cancelled_ones_leave_the_queue() {
        let pool = Arc::new(HashPool::new(1));
        let (holder, release) = hold_slot(&pool).await;
        // A call past its deadline while the only slot is busy gives up, and is no longer queued.
        let waited = tokio::time::timeout(Duration::from_millis(50), pool.hash("Waiting-Pass1".into())).await;
        assert!(waited.is_err(), "the call waited for a slot rather than running");
        assert_eq!(pool.waiting(), 0, "the timed-out call left the queue");

        // Cancelling the caller of a running computation does not free its slot before it ends.
        holder.abort();
        let _ = holder.await;
        let waited = tokio::time::timeout(Duration::from_millis(50), pool.hash("Waiting-Pass2".into())).await;
        assert!(waited.is_err(), "the slot stays taken while its computation runs");
        release.send(()).expect("the computation still runs");

        // Once it ends, waiting calls run, on the memory the slot already has.
        let stored = pool.hash("Right-Pass1".into()).await.expect("hash");
        assert!(pool.verify("Right-Pass1".into(), stored.clone()).await.expect("verify"));
        assert!(!pool.verify("Wrong-Pass1".into(), stored).await.expect("verify"));
        assert_eq!(pool.idle.lock().expect("lock").len(), 1, "one slot, one memory block");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_computations_run_than_slots() {
        let pool = Arc::new(HashPool::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..12).map(|i| {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                pool.run(move |memory| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let hashed = password::hash(&format!("Concurrent-Pass{i}"), memory);
                    running.fetch_sub(1, Ordering::SeqCst);
                    hashed
                })
                .await
            })
        });
        for call in futures::future::join_all(calls).await {
            call.expect("task").expect("pool").expect("hash");
        }
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "{} ran at once",
            most.load(Ordering::SeqCst)
        );
        assert!(
            pool.idle.lock().expect("lock").len() <= 2,
            "no more memory blocks than slots"
        );
    }
}
