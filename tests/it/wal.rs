//! SQLite's write-ahead log is checkpointed off the writer while the service writes: the `-wal` file stays
//! bounded however many writes go through (the automatic checkpoint is off on the service's connections).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use user_service::pb;

use crate::support::{Backend, TestApp, create, update, user};

/// Writers at once, each on its own connection.
const WRITERS: usize = 8;
/// Updates per writer: together they log far more than [`BOUND`] (each commit logs several pages).
const UPDATES: usize = 600;
/// The largest `-wal` file tolerated: the checkpoint thread empties a log above 16 MiB, so this leaves room.
const BOUND: u64 = 24 << 20;

fn wal_size(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_many_writes() {
    let app = TestApp::start(Backend::Sqlite).await;
    let wal = format!(
        "{}-wal",
        app.database_url.strip_prefix("sqlite://").expect("an SQLite URL")
    );
    let largest = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = app.new_client().await;
        let wal = wal.clone();
        let largest = largest.clone();
        tasks.push(tokio::spawn(async move {
            // A long name makes each revision row (and so each commit's log) larger.
            let mut stored = create(&mut client, user(&format!("wal{w}@example.com"))).await;
            for n in 0..UPDATES {
                let patch = pb::User {
                    id: stored.id.clone(),
                    given_name: format!("{n:0>100}"),
                    ..Default::default()
                };
                stored = update(&mut client, patch, &["given_name"]).await.expect("update");
                largest.fetch_max(wal_size(&wal), Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let (batches, _) = app.store.write_stats().expect("SQLite writer").snapshot();
    let largest = largest.load(Ordering::Relaxed);
    assert!(batches > 0);
    assert!(
        largest <= BOUND,
        "the -wal file reached {largest} bytes over {batches} commits (bound {BOUND})"
    );
}
