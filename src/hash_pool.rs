//! The bounded pool every Argon2id computation runs on (hashes on create and update, checks of a current
//! password, sign-in checks): at most `slots` at once, each on a thread of the pool's own with a memory block of
//! its own that is kept for the next computation, at a lower CPU priority than the threads serving requests.
//!
//! Why a bound: each computation needs 19 MiB. Unbounded, a burst of N concurrent password changes costs N × 19
//! MiB at once, and glibc keeps most of it after the burst (after the first large free it raises its mmap
//! threshold, so later blocks come from arenas that are not returned). With one block per thread the peak is
//! `slots` × 19 MiB, allocated once; later computations reuse it, and no large block is ever freed.
//!
//! Why threads of its own at a lower priority: a computation keeps a core for tens of milliseconds. On the
//! runtime's blocking threads, a sign-in flood would take the cores at the same priority as the database calls
//! of reads and writes, and every read would queue behind a hash. The pool's threads run at nice
//! [`HASH_THREAD_NICE`]: when a core is wanted by both, the scheduler gives the request threads about nine
//! tenths of it, and the hashes run in what is left (all of it when nothing else runs). Lowering a thread's
//! priority needs no privilege; raising it again would, so the threads keep it for their whole life and never
//! run anything else.
//!
//! Callers waiting for a slot wait asynchronously: a call that reaches its deadline or is cancelled while
//! waiting is dropped and leaves the queue. A computation that has started runs to its end and keeps its slot
//! until then, even when its caller has gone, so the bound holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::domain::error::Error;
use crate::domain::password::{self, Memory};

/// How much nicer than the process the pool's threads run (nice 0 is the default, 19 the lowest priority): at
/// +10 Linux's scheduler weighs them 110 against 1024 for the request threads.
pub const HASH_THREAD_NICE: i32 = 10;

/// One computation handed to a pool thread, with the slot it holds until it ends.
struct Job {
    work: Box<dyn FnOnce(&mut Memory) + Send>,
    _permit: OwnedSemaphorePermit,
}

pub struct HashPool {
    slots: Arc<Semaphore>,
    size: usize,
    /// Computations for the threads; a thread takes one only when a slot was taken for it, so one is always free.
    jobs: Mutex<mpsc::Sender<Job>>,
    waiting: AtomicUsize,
    /// Memory blocks the threads hold now; at most `size` ever exist.
    blocks: Arc<AtomicUsize>,
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

/// The calling thread's nice value (on Linux `PRIO_PROCESS` with a thread id acts on that one thread).
#[cfg(target_os = "linux")]
fn thread_nice() -> std::io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid()))?)
}

/// Lowers the calling thread's CPU priority by [`HASH_THREAD_NICE`] (relative to where the process runs, at
/// most to 19). Failing (a sandbox refusing the call) leaves the thread at the process's priority, which is
/// slower for reads under a flood but still correct, so it is logged and not fatal.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let lowered = thread_nice().and_then(|nice| {
            let target = (nice + HASH_THREAD_NICE).min(19);
            Ok(rustix::process::setpriority_process(
                Some(rustix::thread::gettid()),
                target,
            )?)
        });
        if let Err(error) = lowered {
            tracing::warn!(%error, "could not lower the priority of a password hashing thread");
        }
    }
}

/// A pool thread: takes computations until the pool is dropped, on one memory block it keeps.
fn serve(jobs: Arc<Mutex<mpsc::Receiver<Job>>>, blocks: Arc<AtomicUsize>) {
    lower_priority();
    let mut memory = Memory::default();
    let mut counted = false;
    loop {
        // The lock is held only while waiting for the next job, never while computing.
        let job = match jobs.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(mpsc::RecvError) => break,
        };
        // A panic in a computation ends that computation (its caller gets an error) but not the thread.
        let Job { work, _permit } = job;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut memory)));
        drop(_permit);
        if !counted && memory.size() > 0 {
            counted = true;
            blocks.fetch_add(1, Ordering::Relaxed);
        }
    }
    if counted {
        blocks.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HashPool {
    /// A pool of `slots` concurrent computations (at least one), each on a thread of its own.
    pub fn new(slots: usize) -> HashPool {
        let size = slots.max(1);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let blocks = Arc::new(AtomicUsize::new(0));
        for n in 0..size {
            let (receiver, blocks) = (receiver.clone(), blocks.clone());
            // A thread that cannot be started leaves fewer threads than slots: the jobs still all run, on the
            // threads there are, so the bound holds; a pool with none would hang every call, so that panics.
            let started = std::thread::Builder::new()
                .name(format!("password-hash-{n}"))
                .spawn(move || serve(receiver, blocks));
            if let Err(e) = started {
                assert!(n > 0, "no password hashing thread could be started: {e}");
                tracing::warn!(error = %e, "started {n} of {size} password hashing threads");
                break;
            }
        }
        HashPool {
            slots: Arc::new(Semaphore::new(size)),
            size,
            jobs: Mutex::new(sender),
            waiting: AtomicUsize::new(0),
            blocks,
        }
    }

    /// How many computations may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Memory blocks of 19 MiB the pool's threads hold now: at most `size`, each kept once made.
    pub fn memory_blocks(&self) -> usize {
        self.blocks.load(Ordering::Relaxed)
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

    /// Runs `work` on a pool thread's memory once a slot is free.
    async fn run<R, F>(&self, work: F) -> Result<R, Error>
    where
        F: FnOnce(&mut Memory) -> R + Send + 'static,
        R: Send + 'static,
    {
        let closed = || Error::internal("the password hashing pool is closed");
        let permit = {
            let _waiting = Waiting::enter(&self.waiting);
            self.slots.clone().acquire_owned().await.map_err(|_| closed())?
        };
        let (answer, answered) = oneshot::channel();
        let job = Job {
            work: Box::new(move |memory| {
                // Nobody may be waiting any more (the caller was cancelled): the result is then dropped.
                let _ = answer.send(work(memory));
            }),
            _permit: permit,
        };
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| closed())?;
        answered
            .await
            .map_err(|_| Error::internal("a password hashing computation ended without an answer"))
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
        assert_eq!(pool.memory_blocks(), 1, "one slot, one memory block");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn computations_run_below_the_priority_of_the_threads_that_serve_requests() {
        let pool = HashPool::new(2);
        let caller = thread_nice().expect("nice");
        let in_pool = pool.run(|_| thread_nice()).await.expect("pool").expect("nice");
        assert_eq!(in_pool, (caller + HASH_THREAD_NICE).min(19), "caller at {caller}");
    }

    #[tokio::test]
    async fn a_panicking_computation_fails_its_call_and_leaves_the_slot_working() {
        let pool = HashPool::new(1);
        let failed = pool.run(|_| -> u8 { panic!("a computation that fails") }).await;
        assert!(failed.is_err(), "the caller gets an error, not a hang");
        let stored = pool
            .hash("After-Panic1".into())
            .await
            .expect("the one thread still serves");
        assert!(pool.verify("After-Panic1".into(), stored).await.expect("verify"));
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
        assert!(pool.memory_blocks() <= 2, "no more memory blocks than slots");
    }
}
