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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use super::connection::{self, ConnectionManager};
use super::users::{self, Stored};
use crate::domain::error::Error;

/// Runners (statements in flight) at most: few enough that reads arriving under load find them busy and group.
/// At 16 callers on two cores, 4 runners took about 10% off a GetUser's CPU, 2 about 30%; the throughput a
/// group of up to [`MAX_GROUP`] reads per round trip allows is far above what the HTTP/2 side can serve.
const RUNNERS: usize = 2;
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
    queue: Mutex<Queue>,
}

impl ReadGroup {
    pub fn new(pool: r2d2::Pool<ConnectionManager>) -> Arc<ReadGroup> {
        Arc::new(ReadGroup {
            pool,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// The user `id` and its password hash, read in a group with the reads waiting beside it; `wait` bounds
    /// the wait for a connection.
    pub async fn find(self: &Arc<Self>, id: Uuid, wait: Duration) -> Result<Option<Stored>, Error> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push((id, answer));
            let start = queue.runners < RUNNERS;
            if start {
                queue.runners += 1;
            }
            start
        };
        if start {
            let group = self.clone();
            tokio::task::spawn_blocking(move || group.run(wait));
        }
        answered
            .await
            .map_err(|_| Error::internal("a grouped read ended without an answer"))?
    }

    /// Takes the waiting reads, a group at a time, until none is left.
    fn run(&self, wait: Duration) {
        let mut place = Place(self, true);
        loop {
            let group: Vec<(Uuid, Answer)> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiting.is_empty() {
                    // Under the lock that queued them: a read queued after this starts a runner of its own.
                    queue.runners -= 1;
                    place.1 = false;
                    return;
                }
                let take = queue.waiting.len().min(MAX_GROUP);
                queue.waiting.drain(..take).collect()
            };
            let ids: Vec<Uuid> = group.iter().map(|(id, _)| *id).collect();
            let found = connection::with_connection(&self.pool, wait, |conn| {
                users::find_many(conn, &ids).map_err(super::read_error)
            });
            match found {
                Ok(rows) => {
                    let mut rows: HashMap<Uuid, Stored> = rows.into_iter().map(|row| (row.0.id, row)).collect();
                    // An id asked twice in one group gets the row twice; the last asker takes the original.
                    let mut asked: HashMap<Uuid, usize> = HashMap::new();
                    for (id, _) in &group {
                        *asked.entry(*id).or_default() += 1;
                    }
                    for (id, answer) in group {
                        let left = asked.get_mut(&id).map(|n| {
                            *n -= 1;
                            *n
                        });
                        let row = if left == Some(0) {
                            rows.remove(&id)
                        } else {
                            rows.get(&id).cloned()
                        };
                        let _ = answer.send(Ok(row));
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
}

/// A runner's place, given back should the runner end by a panic, so the group cannot run out of runners.
struct Place<'a>(&'a ReadGroup, bool);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.queue.lock().unwrap_or_else(|p| p.into_inner()).runners -= 1;
        }
    }
}
