//! WatchUsers streams: one task per stream takes the batches of the process's shared reader (`store::tail`)
//! while it keeps up, reads the database a small page at a time while it is behind, and sends what the watcher
//! may see through a small channel. A watcher that stops reading holds at most a page and the channel's
//! messages; when it reads again the task goes on from where it stopped, in the database.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;

use super::convert::{bookmark, event_to_proto};
use super::status;
use crate::domain::caller::Caller;
use crate::domain::error::Error;
use crate::domain::event::{Event, FeedCursor, Position, Watch};
use crate::domain::filter;
use crate::domain::permission::{self, Rpc};
use crate::pb;
use crate::store::{FeedReader, Store};

/// Events a catching-up stream reads from the database at a time. Not large, because a watcher that stops
/// reading holds its page until it reads again: with 200 stalled watchers and pages of 64 events of 2 KiB users,
/// the pages held were a third of the server's 100 MB growth.
const PAGE: i64 = 32;
/// Messages a stream holds for a watcher that is not reading; past it the task waits (back-pressure). Room for a
/// burst: a task that waits stops taking batches, and one that waits past the shared ring reads the database.
const BUFFER: usize = 16;
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::UserEvent, Status>> + Send + 'static>>;

/// The streams a process serves: how many may be open, and the feed's timing.
#[derive(Clone)]
pub struct Watchers {
    slots: Arc<Semaphore>,
    max: usize,
    /// A BOOKMARK after this much silence.
    pub bookmark_interval: Duration,
    /// How far back a start cursor may be (`--event-retention`).
    pub retention: Duration,
}

impl Watchers {
    pub fn new(max: usize, bookmark_interval: Duration, retention: Duration) -> Watchers {
        Watchers {
            slots: Arc::new(Semaphore::new(max)),
            max,
            bookmark_interval,
            retention,
        }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::ResourceExhausted {
                reason: "TOO_MANY_WATCHERS",
                message: format!("{} WatchUsers streams are open, the most this server keeps", self.max),
                retry_after: Duration::from_secs(1),
            })
    }
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers::new(1024, Duration::from_secs(30), Duration::from_secs(7 * 86_400))
    }
}

/// Checks the request and opens the stream: the errors here are the call's answer; later ones end the stream.
pub async fn open(
    store: Store,
    watchers: &Watchers,
    caller: &Caller,
    request_id: String,
    req: pb::WatchUsersRequest,
) -> Result<EventStream, Error> {
    let sees_all = caller.is_admin() || caller.has_scope(permission::SCOPE_READ);
    let own = (!sees_all).then(|| Uuid::try_parse(&caller.subject).ok()).flatten();
    permission::authorize(caller, Rpc::WatchUsers, own)?;
    let filter = filter::parse(&req.filter).map_err(|e| Error::invalid_field("filter", e.message))?;
    let now = Utc::now();
    let start = if req.start_cursor.is_empty() {
        None
    } else {
        let cursor = FeedCursor::decode(&req.start_cursor, "start_cursor")?;
        cursor.check_retained(now, watchers.retention)?;
        Some(cursor)
    };
    if let Some(id) = own
        && let Some(user) = store.get(id).await?
    {
        permission::check_self_service_access(caller, Rpc::WatchUsers, &user, now)?;
    }
    let permit = watchers.admit()?;
    let start = match start {
        Some(cursor) => cursor,
        None => FeedCursor {
            position: store.feed_head().await?,
            time: now,
        },
    };
    let watch = Watch::new(caller, filter, req.show_deleted);
    let (sender, mut receiver) = mpsc::channel(BUFFER);
    let feed = Feed {
        store,
        watch,
        sender,
        bookmark_interval: watchers.bookmark_interval,
        request_id,
        _permit: permit,
    };
    tokio::spawn(feed.run(start));
    Ok(Box::pin(futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))))
}

/// One stream's task. It holds its slot until it ends (the watcher went away, or the database failed).
struct Feed {
    store: Store,
    watch: Watch,
    sender: mpsc::Sender<Result<pb::UserEvent, Status>>,
    bookmark_interval: Duration,
    request_id: String,
    _permit: OwnedSemaphorePermit,
}

/// Why a stream's task stopped.
struct Gone;

impl Feed {
    async fn run(self, start: FeedCursor) {
        let _ = self.stream(start).await;
    }

    async fn send(&self, message: Result<pb::UserEvent, Status>) -> Result<(), Gone> {
        self.sender.send(message).await.map_err(|_| Gone)
    }

    async fn stream(&self, start: FeedCursor) -> Result<(), Gone> {
        self.send(Ok(bookmark(start.encode()))).await?;
        // Subscribed before the first read: every batch published after it is received or reported lagged,
        // so whatever the database read leaves out is in a batch this stream sees.
        let mut tail = self.store.feed_tail();
        let mut at: Position = start.position;
        let mut quiet_since = tokio::time::Instant::now();
        self.catch_up(&mut at, &mut quiet_since).await?;
        loop {
            let bookmark_due = quiet_since + self.bookmark_interval;
            tokio::select! {
                batch = tail.recv() => match batch {
                    Ok(batch) if batch.to <= at => {}
                    Ok(batch) if batch.from <= at => {
                        self.deliver(&batch.events, &mut at, &mut quiet_since).await?;
                        at = at.max(batch.to);
                    }
                    // A range this stream has not seen: it fell out of the ring (it was not reading), or the
                    // shared reader began after it.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up(&mut at, &mut quiet_since).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        tail = self.store.feed_tail();
                        self.catch_up(&mut at, &mut quiet_since).await?;
                    }
                },
                // A bookmark after silence reads the database first: its cursor is then as fresh as it can
                // be, and a database that stopped answering ends the stream with its error instead of leaving
                // it silent while the shared reader retries.
                () = tokio::time::sleep_until(bookmark_due) => {
                    self.catch_up(&mut at, &mut quiet_since).await?;
                    let cursor = FeedCursor { position: at, time: Utc::now() };
                    self.send(Ok(bookmark(cursor.encode()))).await?;
                    quiet_since = tokio::time::Instant::now();
                }
                () = self.sender.closed() => return Err(Gone),
            }
        }
    }

    /// Reads from the database, a page at a time, everything after `at` up to the visibility horizon.
    async fn catch_up(&self, at: &mut Position, quiet_since: &mut tokio::time::Instant) -> Result<(), Gone> {
        loop {
            let page = match self.store.feed_after(FeedReader::CatchingUp, *at, PAGE).await {
                Ok(read) => read,
                Err(e) => {
                    let _ = self.send(Err(status::to_status(e, &self.request_id))).await;
                    return Err(Gone);
                }
            };
            let full = i64::try_from(page.events.len()).unwrap_or(i64::MAX) >= PAGE;
            self.deliver(&page.events, at, quiet_since).await?;
            *at = (*at).max(page.covered);
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends the events after `at` that this watcher may see, moving `at` past each.
    async fn deliver(
        &self,
        events: &[Event],
        at: &mut Position,
        quiet_since: &mut tokio::time::Instant,
    ) -> Result<(), Gone> {
        // Events come in feed order, so those after the starting point are those after `at` as it moves.
        let from = *at;
        for event in events.iter().filter(|e| e.position > from) {
            *at = event.position;
            if self.watch.sees(event) {
                let cursor = FeedCursor {
                    position: event.position,
                    time: event.create_time,
                };
                self.send(Ok(event_to_proto(event, cursor.encode()))).await?;
                *quiet_since = tokio::time::Instant::now();
            }
        }
        Ok(())
    }
}
