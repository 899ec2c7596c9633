//! PostgreSQL reads of one user by id, grouped: reads that arrive while others are in flight share one
//! statement (`WHERE id = ANY($1)`) and one round trip.
//!
//! diesel is synchronous, so every read crosses to the blocking pool and back and blocks there on libpq's socket:
//! two thread switches and a round trip per read, most of a PostgreSQL GetUser's CPU (the rest is HTTP/2). A
//! read that finds a runner free starts at once, as before; reads that arrive while every runner is busy wait for
//! the next free one, which takes them all. Like group commit, the group grows with the load and costs an idle
//! service nothing. Every read still sees each write committed before it was asked: a runner takes its reads only
//! when it starts their statement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::connection::{self, ConnectionManager};
use super::users::{self, Stored};
use crate::domain::error::Error;

/// Runners (statements in flight) at most: few enough that reads arriving under load find them busy and group.
/// At 16 callers on two cores, 4 runners took about 10% off a GetUser's CPU, 2 about 30%; the throughput a
/// group of up to [`MAX_GROUP`] reads per round trip allows is far above what the HTTP/2 side can serve.
pub(super) const RUNNERS: usize = 2;
/// Reads one statement takes at most: the array bound to it, and the rows it returns, stay small.
const MAX_GROUP: usize = 64;

type Answer = oneshot::Sender<Result<Option<Stored>, Error>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(Uuid, Answer)>,
    runners: usize,
}

/// The queue of reads by id and the runners that take them.
pub struct ReadGroup {
    pool: r2d2::Pool<ConnectionManager>,
    /// The store's view of whether the database answers: a group waits for a connection as a lone read would.
    reachable: Arc<AtomicBool>,
    queue: Mutex<Queue>,
}

impl ReadGroup {
    pub fn new(pool: r2d2::Pool<ConnectionManager>, reachable: Arc<AtomicBool>) -> Arc<ReadGroup> {
        Arc::new(ReadGroup {
            pool,
            reachable,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// The user `id` and its password hash, read in a group with the reads waiting beside it.
    pub async fn find(self: &Arc<Self>, id: Uuid) -> Result<Option<Stored>, Error> {
        let (answer, answered) = oneshot::channel();
        let place = {
            let mut queue = self.lock();
            queue.waiting.push((id, answer));
            (queue.runners < RUNNERS).then(|| {
                queue.runners += 1;
                Place {
                    group: self.clone(),
                    given_back: false,
                }
            })
        };
        // The place travels with the runner: should the runner never run (the runtime shutting down) or end by a
        // panic, dropping it answers every waiting read rather than leaving it without a runner.
        if let Some(place) = place {
            tokio::task::spawn_blocking(move || place.run());
        }
        answered
            .await
            .map_err(|_| Error::internal("a grouped read ended without an answer"))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One group's statement; every read of the group gets its own row's answer (`None` for an unknown id, an
    /// error for a row that does not decode, the statement's error for all when it fails).
    fn answer(&self, group: Vec<(Uuid, Answer)>) {
        let wait = if self.reachable.load(Ordering::Relaxed) {
            self.pool.connection_timeout()
        } else {
            super::UNREACHABLE_WAIT
        };
        let ids: Vec<Uuid> = group.iter().map(|(id, _)| *id).collect();
        let found = connection::with_connection(&self.pool, wait, |conn| {
            users::find_many(conn, &ids).map_err(super::read_error)
        });
        match found {
            Ok(rows) => {
                let rows: HashMap<String, Result<Stored, Error>> = rows
                    .into_iter()
                    .map(|(id, row)| (id, row.map_err(super::read_error)))
                    .collect();
                for (id, answer) in group {
                    let _ = answer.send(rows.get(&id.to_string()).cloned().transpose());
                }
            }
            Err(error) => {
                for (_, answer) in group {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// A runner's place among the [`RUNNERS`].
struct Place {
    group: Arc<ReadGroup>,
    given_back: bool,
}

impl Place {
    /// Takes the waiting reads, a group at a time, until none is left; then gives the place back.
    fn run(mut self) {
        loop {
            let group: Vec<(Uuid, Answer)> = {
                let mut queue = self.group.lock();
                // Reads whose callers have gone (cancelled, timed out) are not read.
                queue.waiting.retain(|(_, answer)| !answer.is_closed());
                if queue.waiting.is_empty() {
                    // Under the lock that queues reads: a read queued after this starts a runner of its own.
                    queue.runners -= 1;
                    self.given_back = true;
                    return;
                }
                let take = queue.waiting.len().min(MAX_GROUP);
                queue.waiting.drain(..take).collect()
            };
            self.group.answer(group);
        }
    }
}

impl Drop for Place {
    /// A runner that never ran (the runtime shutting down) or ended by a panic gives its place back here; if it
    /// was the last, the reads it would have taken are answered with an error rather than left waiting.
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        let abandoned = {
            let mut queue = self.group.lock();
            queue.runners -= 1;
            if queue.runners == 0 {
                std::mem::take(&mut queue.waiting)
            } else {
                Vec::new()
            }
        };
        for (_, answer) in abandoned {
            let _ = answer.send(Err(Error::Unavailable("the database read was abandoned".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::connection::{DatabaseTarget, SqliteSync};

    /// Reads grouped behind a database that never answers each get UNAVAILABLE, none is left waiting, and every
    /// runner gives its place back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_of_an_unreachable_database_all_fail_and_free_their_runners() {
        let manager = ConnectionManager {
            // Nothing listens on port 1.
            target: DatabaseTarget::Postgres("postgres://postgres@127.0.0.1:1/none".into()),
            sqlite_sync: SqliteSync::Full,
            busy_timeout: Duration::from_secs(1),
        };
        let pool = r2d2::Pool::builder()
            .max_size(2)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(200))
            .build_unchecked(manager);
        let group = ReadGroup::new(pool, Arc::new(AtomicBool::new(false)));
        let reads: Vec<_> = (0..100)
            .map(|_| {
                let group = group.clone();
                tokio::spawn(async move { group.find(Uuid::now_v7()).await })
            })
            .collect();
        for read in reads {
            let answer = tokio::time::timeout(Duration::from_secs(30), read)
                .await
                .expect("every read is answered")
                .expect("no read panics");
            assert!(matches!(answer, Err(Error::Unavailable(_))), "{answer:?}");
        }
        // A runner answers its last group before it looks at the queue again and gives its place back: the
        // last answer can arrive first.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while group.lock().runners != 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(group.lock().runners, 0, "every runner gives its place back");
    }
}
