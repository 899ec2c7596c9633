//! SQLite at `synchronous=FULL` syncs its log beside the writer: a commit is neither answered nor shown to a
//! read before the sync that makes it durable.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::Text;
use tokio::task::JoinHandle;
use tonic::Status;
use user_service::pb;

use crate::support::{Backend, TestApp, create, spawn_updates, update, user};

#[derive(QueryableByName)]
struct GivenName {
    #[diesel(sql_type = Text)]
    given_name: String,
}

/// The name in the database file, read on a connection of the test's own (which does not wait for syncs).
fn stored_given_name(database_url: &str, id: &str) -> String {
    let path = database_url.strip_prefix("sqlite://").expect("an SQLite URL");
    let mut conn = SqliteConnection::establish(path).expect("open the database file");
    diesel::sql_query("SELECT given_name FROM users WHERE id = ?")
        .bind::<Text, _>(id)
        .get_result::<GivenName>(&mut conn)
        .expect("the user's row")
        .given_name
}

/// Spawns an update of user `id`'s given name to `name`, on a connection of its own.
async fn spawn_name_update(app: &TestApp, id: &str, name: &str) -> JoinHandle<Result<pb::User, Status>> {
    let mut writer = app.new_client().await;
    let patch = pb::User {
        id: id.to_owned(),
        given_name: name.to_owned(),
        ..Default::default()
    };
    tokio::spawn(async move { update(&mut writer, patch, &["given_name"]).await })
}

/// Waits until the SQLite writer has committed `writes` writes in all.
async fn wait_for_committed_writes(app: &TestApp, writes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.store.write_stats().expect("SQLite writer").snapshot().1 < writes {
        assert!(Instant::now() < deadline, "the writes did not commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// With the sync thread held, an update commits (its row is in the file) but is not answered, and a GetUser
/// on another connection, started after the commit, waits too rather than show the unsynced name; once syncs
/// go on, both answer with the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_shown_only_once_its_log_is_synced() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut c = app.client.clone();
    let created = create(&mut c, user("synced@example.com")).await;
    let (_, writes0) = app.store.write_stats().expect("SQLite writer").snapshot();
    // Kept as the `Option` the store gives: the guard is held across the waits below on purpose.
    let hold = app.store.hold_syncs();
    assert!(hold.is_some(), "a sync thread at synchronous=FULL");

    let write = spawn_name_update(&app, &created.id, "Synced").await;
    wait_for_committed_writes(&app, writes0 + 1).await;
    assert_eq!(stored_given_name(&app.database_url, &created.id), "Synced");

    let mut reader = app.new_client().await;
    let id = created.id.clone();
    let read = tokio::spawn(async move { reader.get_user(pb::GetUserRequest { id }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !write.is_finished(),
        "the update was answered before its log was synced"
    );
    assert!(!read.is_finished(), "a read showed a commit before its log was synced");

    drop(hold);
    let written = write.await.expect("task").expect("update");
    assert_eq!(written.given_name, "Synced");
    let read = read.await.expect("task").expect("get").into_inner();
    assert_eq!(read.given_name, "Synced");
    assert_eq!(read.etag, written.etag);
}

/// While an update of one user and a create of another wait for their sync, a GetUser of a third user answers
/// at once; a GetUser of the updated user, a GetUser of the id being created (which must not answer NOT_FOUND
/// from the unsynced file) and a ListUsers all wait for the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_one_user_waits_only_for_the_syncs_of_that_user() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut c = app.client.clone();
    let updated = create(&mut c, user("updated@example.com")).await;
    let untouched = create(&mut c, user("untouched@example.com")).await;
    let new_id = uuid::Uuid::now_v7().to_string();
    let (_, writes0) = app.store.write_stats().expect("SQLite writer").snapshot();
    let hold = app.store.hold_syncs();
    assert!(hold.is_some(), "a sync thread at synchronous=FULL");

    let write = spawn_name_update(&app, &updated.id, "Unsynced").await;
    let mut creator = app.new_client().await;
    let request = pb::CreateUserRequest {
        user: Some(user("created@example.com")),
        user_id: new_id.clone(),
        ..Default::default()
    };
    let created = tokio::spawn(async move { creator.create_user(request).await });
    wait_for_committed_writes(&app, writes0 + 2).await;

    let mut reader = app.new_client().await;
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        reader.get_user(pb::GetUserRequest {
            id: untouched.id.clone(),
        }),
    )
    .await
    .expect("a read of a user no unsynced write changed answers while syncs are held")
    .expect("get")
    .into_inner();
    assert_eq!(other.etag, untouched.etag);

    let get = |id: String| {
        let mut reader = reader.clone();
        tokio::spawn(async move { reader.get_user(pb::GetUserRequest { id }).await })
    };
    let same = get(updated.id.clone());
    let missing = get(new_id.clone());
    let mut lister = reader.clone();
    let list = tokio::spawn(async move { lister.list_users(pb::ListUsersRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !same.is_finished(),
        "a read of the updated user showed its unsynced commit"
    );
    assert!(
        !missing.is_finished(),
        "a read of the id being created answered before its create was synced"
    );
    assert!(!list.is_finished(), "a list showed unsynced commits");

    drop(hold);
    write.await.expect("task").expect("update");
    created.await.expect("task").expect("create");
    assert_eq!(
        same.await.expect("task").expect("get").into_inner().given_name,
        "Unsynced"
    );
    assert_eq!(missing.await.expect("task").expect("get").into_inner().id, new_id);
    let listed = list.await.expect("task").expect("list").into_inner().users;
    assert!(
        listed.iter().any(|u| u.id == new_id),
        "the created user is listed once synced"
    );
}

/// At `synchronous=NORMAL` commits sync only at checkpoints: there is no sync thread to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_sync_answers_at_commit() {
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.database.sqlite_sync = user_service::store::SqliteSync::Normal;
    })
    .await;
    assert!(app.store.hold_syncs().is_none());
    let mut c = app.client.clone();
    let created = create(&mut c, user("normal@example.com")).await;
    let patch = pb::User {
        id: created.id.clone(),
        given_name: "Unsynced".into(),
        ..Default::default()
    };
    let written = update(&mut c, patch, &["given_name"]).await.expect("update");
    assert_eq!(written.given_name, "Unsynced");
    assert_eq!(stored_given_name(&app.database_url, &created.id), "Unsynced");
}

/// Batches of one write each, more of them than the sync thread lets wait: with syncs held the writer stops
/// committing once the backlog is full (the rest of the writes wait in its queue), nothing is answered, and once
/// syncs go on every write is answered and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_backlog_holds_the_writer_back_and_loses_nothing() {
    const WRITES: usize = 320;
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.database.sqlite_commit_batch = 1;
        // Every write in flight at once: the caller's rate limit would hold some back before the store.
        config.rate_limit = 1e9;
        config.rate_burst = 1_000_000;
    })
    .await;
    let mut c = app.client.clone();
    let mut users = Vec::new();
    for n in 0..WRITES {
        users.push(create(&mut c, user(&format!("backlog{n}@example.com"))).await);
    }
    let stats = || app.store.write_stats().expect("SQLite writer").snapshot().0;
    let batches0 = stats();
    let hold = app.store.hold_syncs();
    assert!(hold.is_some(), "a sync thread at synchronous=FULL");
    // A fresh connection runs 32 calls at once until its answers show their size: enough connections that
    // every write reaches the store.
    let mut clients = Vec::new();
    for _ in 0..WRITES.div_ceil(32) {
        clients.push(app.new_client().await);
    }
    let tasks = spawn_updates(&clients, &users, "Backlog");
    // The writer commits until the backlog is full, then stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut committed = stats() - batches0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stats() - batches0;
        if now == committed && now > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the writer never stopped ({now} batches)");
        committed = now;
    }
    assert!(
        (committed as usize) < WRITES,
        "all {committed} batches committed with no sync: nothing held the writer back"
    );
    assert!(
        app.store.queued_writes() > 0,
        "the writes not committed wait in the writer's queue"
    );
    assert!(
        tasks.iter().all(|task| !task.is_finished()),
        "a write was answered before its sync"
    );
    drop(hold);
    for (n, task) in tasks.into_iter().enumerate() {
        let written = task.await.expect("task").expect("update");
        assert_eq!(written.given_name, format!("Backlog {n}"));
    }
    assert!(stats() - batches0 >= WRITES as u64);
    for (n, stored) in users.iter().enumerate() {
        assert_eq!(stored_given_name(&app.database_url, &stored.id), format!("Backlog {n}"));
    }
}
