//! The shared tail of the change feed: one task per process reads the newest events once per wake-up and
//! hands the same batch to every caught-up watcher, so a commit costs one database read whatever the number of
//! watchers. A watcher that is behind (a resume, or one that stopped reading and fell out of the ring) reads
//! from the database on its own until it meets the tail again.
//!
//! Batches cover contiguous ranges of the feed: each one holds every event in `(from, to]`, and the next
//! begins where it ended. A watcher at position `p` may take a batch whose `from <= p`; a batch with
//! `from > p` means something between was not seen, and the watcher reads that range from the database.
//! Nothing is lost by a batch a watcher never received: its range is read again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

use super::{FeedReader, Store};
use crate::domain::event::{Event, Position};

/// Events the tail reads at a time: at most this many in one batch, so the ring's bound in events stays small
/// however large the commits are (a burst is read as several batches, one after the other).
const TAIL_PAGE: i64 = 32;
/// Batches kept for watchers that are slower than the tail; one that falls further behind reads from the
/// database. With [`TAIL_PAGE`] this bounds the ring at 8,192 events for the whole process; under a steady load a
/// batch holds the few events of one wake-up, so the ring covers the last 256 wake-ups (at 2,000 writes/s about
/// a quarter of a second): a watcher whose client pauses for less than that keeps up without reading the database.
const RING: usize = 256;
/// A look at the database without a wake-up: the backstop for a lost notification, not the normal path.
const BACKSTOP_POLL: Duration = Duration::from_secs(2);
/// The first wait before looking again at events held back by an older transaction (PostgreSQL), doubling up
/// to [`HELD_BACK_MAX`]: a long transaction elsewhere in the cluster costs a few reads a second per process.
const HELD_BACK_POLL: Duration = Duration::from_millis(10);
const HELD_BACK_MAX: Duration = Duration::from_millis(200);
/// After a failed read, the tail waits this long before reading again (its watchers wait meanwhile).
const RETRY: Duration = Duration::from_secs(1);

/// Every event in `(from, to]`, in feed order.
#[derive(Debug)]
pub struct Batch {
    pub from: Position,
    pub to: Position,
    pub events: Vec<Event>,
}

/// The handle watchers subscribe through; the task runs while anyone is subscribed.
#[derive(Clone, Default)]
pub struct Tail {
    /// The live ring, `None` while no task runs. Under the mutex, so a subscriber never joins a ring whose
    /// task has decided to stop.
    ring: Arc<Mutex<Option<broadcast::Sender<Arc<Batch>>>>>,
}

impl Tail {
    /// A receiver of the batches published from now on, starting the task if it is not running.
    pub fn subscribe(&self, store: &Store) -> broadcast::Receiver<Arc<Batch>> {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = ring.as_ref() {
            return sender.subscribe();
        }
        let (sender, receiver) = broadcast::channel(RING);
        *ring = Some(sender.clone());
        tokio::spawn(run(self.clone(), store.clone(), sender));
        receiver
    }

    /// Whether the task should stop: nobody is subscribed. Decided under the mutex, and the ring is taken
    /// down in the same step, so a later subscriber starts a new task.
    fn retire_if_unwatched(&self, sender: &broadcast::Sender<Arc<Batch>>) -> bool {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.receiver_count() > 0 {
            return false;
        }
        *ring = None;
        true
    }
}

async fn run(tail: Tail, store: Store, sender: broadcast::Sender<Arc<Batch>>) {
    let mut signal = store.feed_signal();
    let mut at: Option<Position> = None;
    let mut held_back_poll = HELD_BACK_POLL;
    loop {
        if tail.retire_if_unwatched(&sender) {
            return;
        }
        // Marked seen before the read: a commit after this point changes the signal again.
        signal.borrow_and_update();
        let read = async {
            let from = match at {
                Some(position) => position,
                None => store.feed_head().await?,
            };
            Ok::<_, crate::domain::error::Error>((from, store.feed_after(FeedReader::Shared, from, TAIL_PAGE).await?))
        };
        let (from, page) = match read.await {
            Ok(read) => read,
            Err(e) => {
                // Watchers keep waiting; each reads from the database on its own backstop and reports what
                // it meets. The tail starts again from the head, so its next batch tells them of the gap.
                tracing::warn!(error = %e, "the change feed's shared reader failed; retrying");
                at = None;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let full = i64::try_from(page.events.len()).unwrap_or(i64::MAX) >= TAIL_PAGE;
        at = Some(page.covered);
        if page.covered > from {
            // No receiver is not an error: the next turn of the loop notices and stops.
            let _ = sender.send(Arc::new(Batch {
                from,
                to: page.covered,
                events: page.events,
            }));
        }
        if full {
            continue;
        }
        let poll = if page.held_back {
            let wait = held_back_poll;
            held_back_poll = (held_back_poll * 2).min(HELD_BACK_MAX);
            wait
        } else {
            held_back_poll = HELD_BACK_POLL;
            BACKSTOP_POLL
        };
        tokio::select! {
            _ = signal.changed() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}
