//! Writes committed together (SQLite group commit) keep their own outcomes and are answered only after commit.

use std::time::{Duration, Instant};

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{Backend, TestApp, create, spawn_updates, update, user, violation_fields};

backend_tests!(a_batch_keeps_each_writes_own_outcome);

const WRITERS: usize = 64;
/// The writer whose update is invalid; it sits in the middle of the batch.
const INVALID: usize = 37;

/// 64 concurrent updates, one of them invalid. On SQLite the writer is held until all 64 are queued, so they
/// form one batch: nothing is answered while the batch waits, the 63 valid updates commit, the invalid one
/// alone gets INVALID_ARGUMENT naming its field, and each answered write is visible to a read on another
/// connection the moment it is answered. On PostgreSQL the same calls run concurrently with the same outcomes.
async fn a_batch_keeps_each_writes_own_outcome(app: TestApp) {
    let mut c = app.client.clone();
    let mut users = Vec::with_capacity(WRITERS);
    for n in 0..WRITERS {
        users.push(create(&mut c, user(&format!("batch{n}@example.com"))).await);
    }
    let sqlite = app.store.write_stats().is_some();
    assert_eq!(sqlite, app.database_url.starts_with("sqlite"));
    let before = app.store.write_stats().map(|s| s.snapshot());
    let hold = app.store.hold_writes();

    // Four connections, so the batch mixes writes from several HTTP/2 connections.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    let mut tasks = Vec::with_capacity(WRITERS);
    for (n, stored) in users.iter().enumerate() {
        let mut writer = clients[n % clients.len()].clone();
        let mut reader = app.client.clone();
        let id = stored.id.clone();
        tasks.push(tokio::spawn(async move {
            let (patch, paths): (pb::User, &[&str]) = if n == INVALID {
                let patch = pb::User {
                    id: id.clone(),
                    email: "not an e-mail address".into(),
                    ..Default::default()
                };
                (patch, &["email"])
            } else {
                let patch = pb::User {
                    id: id.clone(),
                    given_name: format!("Batched {n}"),
                    ..Default::default()
                };
                (patch, &["given_name"])
            };
            let answer = update(&mut writer, patch, paths).await;
            // Read right after the answer, on another connection of the pool: an answer given before its
            // commit would show the old value here.
            let seen = reader
                .get_user(pb::GetUserRequest { id })
                .await
                .map(tonic::Response::into_inner);
            (answer, seen)
        }));
    }

    if sqlite {
        // The writer took the first write and waits on the hold; the other 63 queue behind it.
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.store.queued_writes() < WRITERS - 1 {
            assert!(
                Instant::now() < deadline,
                "only {} writes queued",
                app.store.queued_writes()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answered = tasks.iter().filter(|t| t.is_finished()).count();
        assert_eq!(answered, 0, "writes were answered before their batch committed");
    }
    drop(hold);

    for (n, task) in tasks.into_iter().enumerate() {
        let (answer, seen) = task.await.expect("task");
        let seen = seen.expect("read after write");
        if n == INVALID {
            let status = answer.expect_err("the invalid update fails");
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(violation_fields(&status), vec!["user.email".to_owned()]);
            assert_eq!(
                seen.email,
                format!("batch{n}@example.com"),
                "the invalid update wrote nothing"
            );
            assert_eq!(seen.revision, 1);
        } else {
            let written = answer.unwrap_or_else(|e| panic!("update {n} failed beside an invalid one: {e:?}"));
            assert_eq!(written.given_name, format!("Batched {n}"));
            assert_eq!(written.revision, 2);
            assert_eq!(
                seen.given_name, written.given_name,
                "update {n} answered before it was visible"
            );
            assert_eq!(seen.revision, 2);
        }
    }

    if let (Some((batches0, writes0)), Some(stats)) = (before, app.store.write_stats()) {
        let (batches1, writes1) = stats.snapshot();
        assert_eq!(
            (batches1 - batches0, writes1 - writes0),
            (1, WRITERS as u64),
            "the 64 writes were not committed as one batch"
        );
    }
}

/// With group commit off (`--sqlite-commit-batch 1`) every write commits alone, and writes still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_one_commits_each_write_alone() {
    let app = TestApp::start_with(Backend::Sqlite, |config| config.database.sqlite_commit_batch = 1).await;
    let mut c = app.client.clone();
    let mut users = Vec::new();
    for n in 0..8 {
        users.push(create(&mut c, user(&format!("alone{n}@example.com"))).await);
    }
    let (batches0, writes0) = app.store.write_stats().expect("SQLite has a writer").snapshot();
    let hold = app.store.hold_writes();
    let tasks = spawn_updates(std::slice::from_ref(&app.client), &users, "Alone");
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.store.queued_writes() < users.len() - 1 {
        assert!(Instant::now() < deadline, "writes did not queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(hold);
    for task in tasks {
        task.await.expect("task").expect("update");
    }
    let (batches1, writes1) = app.store.write_stats().expect("SQLite has a writer").snapshot();
    assert_eq!((batches1 - batches0, writes1 - writes0), (8, 8));
}
