//! WatchUsers streams: one task per stream reads the feed from the database a small page at a time and sends
//! what the watcher may see through a small channel, so a watcher that stops reading holds at most a page and
//! the channel's messages; when it reads again the task goes on from where it stopped, in the database.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;
use uuid::Uuid;

use super::convert::{bookmark, event_to_proto};
use super::status;
use crate::domain::caller::Caller;
use crate::domain::error::Error;
use crate::domain::event::{FeedCursor, Position, Watch};
use crate::domain::filter;
use crate::domain::permission::{self, Rpc};
use crate::pb;
use crate::store::Store;

/// Events read from the database at a time.
const PAGE: i64 = 64;
/// Messages a stream holds for a watcher that is not reading; past it the task waits (back-pressure).
const BUFFER: usize = 16;
/// How often a caught-up stream looks at the database even without a wake-up: a backstop for a lost
/// notification (a reconnecting listener), not the normal path.
const BACKSTOP_POLL: Duration = Duration::from_secs(2);

/// The first wait before looking again at events held back by an older transaction, doubling up to
/// [`HELD_BACK_MAX`]: a long transaction elsewhere in the cluster costs a few reads a second per waiting stream.
const HELD_BACK_POLL: Duration = Duration::from_millis(10);
const HELD_BACK_MAX: Duration = Duration::from_millis(200);

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
        let mut signal = self.store.feed_signal();
        let mut at: Position = start.position;
        let mut quiet_since = tokio::time::Instant::now();
        let mut held_back_poll = HELD_BACK_POLL;
        loop {
            // Marked seen before the read: a commit after this point changes the signal again.
            signal.borrow_and_update();
            let page = match self.store.feed_after(at, PAGE).await {
                Ok(read) => read,
                Err(e) => {
                    let _ = self.send(Err(status::to_status(e, &self.request_id))).await;
                    return Err(Gone);
                }
            };
            let full = i64::try_from(page.events.len()).unwrap_or(i64::MAX) >= PAGE;
            for event in &page.events {
                at = event.position;
                if self.watch.sees(event) {
                    let cursor = FeedCursor {
                        position: at,
                        time: event.create_time,
                    };
                    self.send(Ok(event_to_proto(event, cursor.encode()))).await?;
                    quiet_since = tokio::time::Instant::now();
                }
            }
            at = at.max(page.covered);
            if full {
                continue;
            }
            // Events held back by an older transaction are delivered once it ends, which notifies nobody: look
            // again soon, backing off while it lasts.
            let poll = if page.held_back {
                let wait = held_back_poll;
                held_back_poll = (held_back_poll * 2).min(HELD_BACK_MAX);
                wait
            } else {
                held_back_poll = HELD_BACK_POLL;
                BACKSTOP_POLL
            };
            let bookmark_due = quiet_since + self.bookmark_interval;
            tokio::select! {
                _ = signal.changed() => {}
                () = tokio::time::sleep(poll) => {}
                () = tokio::time::sleep_until(bookmark_due) => {
                    let cursor = FeedCursor { position: at, time: Utc::now() };
                    self.send(Ok(bookmark(cursor.encode()))).await?;
                    quiet_since = tokio::time::Instant::now();
                }
                () = self.sender.closed() => return Err(Gone),
            }
        }
    }
}
