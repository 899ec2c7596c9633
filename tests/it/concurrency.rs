//! Concurrent writers on both backends: no lost update, uniqueness held by the database.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{RawConnection, TestApp, create, mask, reason, update, user};

backend_tests!(
    concurrent_label_updates_all_land,
    concurrent_field_updates_all_land,
    an_update_that_waits_for_another_writer_keeps_that_writers_change,
    concurrent_creates_with_one_email_have_one_winner,
    concurrent_reads_each_get_their_own_user
);

backend_tests!(
    configure = short_connection_wait;
    reads_answer_while_writes_take_every_write_connection
);

/// A call that finds no free connection fails after a second, so a read queued behind the writes would fail
/// within the test rather than wait for them.
fn short_connection_wait(config: &mut user_service::config::ServeConfig) {
    config.database.db_timeout = std::time::Duration::from_secs(1);
}

const TASKS: usize = 16;
const UPDATES_PER_TASK: usize = 50;

/// The client of writer `task`: half the tasks share the app's connection, half have their own, and both paths
/// must hold.
async fn task_client(app: &TestApp, task: usize) -> crate::support::Client {
    if task.is_multiple_of(2) {
        app.client.clone()
    } else {
        app.new_client().await
    }
}

/// 16 tasks each set their own label 50 times, without etags, on one user: every last value must be there,
/// and `revision` must count every effective change.
async fn concurrent_label_updates_all_land(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, user("hot@example.com")).await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = task_client(&app, task).await;
        let id = u.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut changes = 0i64;
            for n in 0..UPDATES_PER_TASK {
                let key = format!("task{task}");
                let before = client
                    .update_user(pb::UpdateUserRequest {
                        user: Some(pb::User {
                            id: id.clone(),
                            labels: HashMap::from([(key.clone(), n.to_string())]),
                            ..Default::default()
                        }),
                        update_mask: mask(&[&format!("labels.{key}")]),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("task {task} update {n}: {e:?}"));
                assert_eq!(before.into_inner().labels.get(&key), Some(&n.to_string()));
                changes += 1;
            }
            changes
        }));
    }
    let mut effective = 0;
    for t in tasks {
        effective += t.await.expect("task");
    }
    let last = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    for task in 0..TASKS {
        assert_eq!(
            last.labels.get(&format!("task{task}")),
            Some(&(UPDATES_PER_TASK - 1).to_string()),
            "task {task}'s last value was lost"
        );
    }
    assert_eq!(last.revision, effective + 1);
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    assert_eq!(
        revisions.revisions.len() as i64,
        effective + 1,
        "one revision row per change"
    );
}

/// Plain fields, each task its own, set many times on one user without etags: a write of one user's row alone
/// (on PostgreSQL decided on a read without a lock, stored only if the user did not change meanwhile) loses no
/// task's value, and every change has its revision.
async fn concurrent_field_updates_all_land(app: TestApp) {
    const FIELDS: [&str; 5] = ["given_name", "family_name", "address", "description", "national_id"];
    fn value(user: &pb::User, field: &str) -> String {
        match field {
            "given_name" => user.given_name.clone(),
            "family_name" => user.family_name.clone(),
            "address" => user.address.clone(),
            "description" => user.description.clone(),
            _ => user.national_id.clone(),
        }
    }
    let mut c = app.client.clone();
    let u = create(&mut c, user("fields@example.com")).await;
    let mut tasks = Vec::new();
    for (task, field) in FIELDS.into_iter().enumerate() {
        let mut client = task_client(&app, task).await;
        let id = u.id.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for n in 0..UPDATES_PER_TASK {
                let text = format!("{field} {n}");
                let mut change = pb::User {
                    id: id.clone(),
                    ..Default::default()
                };
                match field {
                    "given_name" => change.given_name = text.clone(),
                    "family_name" => change.family_name = text.clone(),
                    "address" => change.address = text.clone(),
                    "description" => change.description = text.clone(),
                    _ => change.national_id = text.clone(),
                }
                let after = update(&mut client, change, &[field])
                    .await
                    .unwrap_or_else(|e| panic!("{field} update {n}: {e:?}"));
                assert_eq!(value(&after, field), text);
                revisions.push(after.revision);
            }
            revisions
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.expect("task"));
    }
    acknowledged.sort_unstable();
    let changes = (FIELDS.len() * UPDATES_PER_TASK) as i64;
    assert_eq!(
        acknowledged,
        (2..=changes + 1).collect::<Vec<_>>(),
        "each acknowledged write has a revision of its own"
    );
    let last = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    for field in FIELDS {
        assert_eq!(
            value(&last, field),
            format!("{field} {}", UPDATES_PER_TASK - 1),
            "{field}'s last value was lost"
        );
    }
    assert_eq!(last.revision, changes + 1);
}

/// Runs `statements` on the server's database beside it, in a transaction that first takes the write lock of
/// user `id` (PostgreSQL: its row lock; SQLite: the database's), and commits once `release` resolves.
/// `release` is given the PostgreSQL backend's process id, to see who waits for it.
async fn hold_and_write<F: std::future::Future<Output = ()>>(
    app: &TestApp,
    id: &str,
    statements: &str,
    release: impl FnOnce(Option<i32>) -> F,
) {
    use diesel::RunQueryDsl;
    let mut conn = app.raw_connection();
    let pid = match &mut conn {
        RawConnection::Sqlite(_) => {
            conn.batch("BEGIN IMMEDIATE");
            None
        }
        RawConnection::Postgres(pg) => {
            let pid = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"))
                .get_result::<i32>(pg)
                .expect("backend pid");
            conn.batch(&format!("BEGIN; SELECT 1 FROM users WHERE id = '{id}' FOR UPDATE"));
            Some(pid)
        }
    };
    release(pid).await;
    conn.batch(&format!("{statements}; COMMIT"));
}

/// How many PostgreSQL connections wait, directly or behind another waiter, for a lock the backend `pid`
/// holds (updates of one user queue on its advisory lock behind the one that waits for the row).
fn waiting_for(app: &TestApp, pid: i32) -> i64 {
    use diesel::RunQueryDsl;
    let RawConnection::Postgres(mut conn) = app.raw_connection() else {
        unreachable!("only PostgreSQL has backends to wait for")
    };
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(WITH RECURSIVE waiting(pid) AS (
            SELECT pid FROM pg_stat_activity WHERE {pid} = ANY (pg_blocking_pids(pid))
            UNION SELECT a.pid FROM pg_stat_activity a, waiting w WHERE w.pid = ANY (pg_blocking_pids(a.pid))
        ) SELECT count(*) FROM waiting)"
    )))
    .get_result(&mut conn)
    .expect("pg_stat_activity")
}

/// Returns once at least `count` service connections wait for the PostgreSQL backend `pid` (see
/// [`hold_and_write`]); on SQLite, whose writer waits on its busy time-out that no view shows, after a while.
async fn until_waiting(app: &TestApp, pid: Option<i32>, count: i64) {
    let Some(pid) = pid else {
        return tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiting_for(app, pid) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the updates never waited for the row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Another writer holds the user and changes a field while an update waits for it: the update is decided again
/// on that writer's version (on PostgreSQL it was first decided on a read without a lock), so both changes
/// are kept and the revision counts both.
async fn an_update_that_waits_for_another_writer_keeps_that_writers_change(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, user("waits@example.com")).await;
    let (started, waiting) = tokio::sync::oneshot::channel::<()>();
    let mut client = app.new_client().await;
    let id = u.id.clone();
    let mine = tokio::spawn(async move {
        let _ = waiting.await;
        let change = pb::User {
            id,
            given_name: "mine".into(),
            ..Default::default()
        };
        update(&mut client, change, &["given_name"]).await
    });
    let release = |pid: Option<i32>| {
        let app = &app;
        async move {
            started.send(()).expect("updater waits");
            until_waiting(app, pid, 1).await;
        }
    };
    let theirs = format!(
        "UPDATE users SET family_name = 'theirs', revision = revision + 1 WHERE id = '{}'",
        u.id
    );
    hold_and_write(&app, &u.id, &theirs, release).await;
    let after = mine.await.expect("task").expect("update");
    assert_eq!(
        (after.given_name.as_str(), after.family_name.as_str()),
        ("mine", "theirs")
    );
    assert_eq!(after.revision, 3, "created, theirs, mine");
    let stored = c
        .get_user(pb::GetUserRequest { id: u.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored, after);
}

/// As many updates as the pool has connections wait for one user that another session holds: on PostgreSQL
/// each holds a connection while it waits. Reads of another user, a list, and the user's revisions still
/// answer (on connections kept for reads), and once the holder lets go, every update that got a connection
/// lands.
async fn reads_answer_while_writes_take_every_write_connection(app: TestApp) {
    const WRITERS: usize = 8; // the test server's whole pool
    let mut c = app.client.clone();
    let held = create(&mut c, user("held@example.com")).await;
    let other = create(&mut c, user("other@example.com")).await;
    let (started, waiting) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for n in 0..WRITERS {
        let mut client = app.new_client().await;
        let mut waiting = waiting.clone();
        let change = pb::User {
            id: held.id.clone(),
            given_name: format!("writer {n}"),
            ..Default::default()
        };
        writers.push(tokio::spawn(async move {
            let _ = waiting.wait_for(|go| *go).await;
            update(&mut client, change, &["given_name"]).await
        }));
    }
    let reader = app.client.clone();
    let other_id = other.id.clone();
    let release = |pid: Option<i32>| {
        let app = &app;
        async move {
            started.send(true).expect("writers wait");
            // Five of the eight take the pool's five write connections and wait for the row; the rest wait
            // for a connection.
            until_waiting(app, pid, 5).await;
            let mut reader = reader;
            let got = reader
                .get_user(pb::GetUserRequest { id: other_id.clone() })
                .await
                .expect("a read of another user answers while writes wait");
            assert_eq!(got.into_inner().email, "other@example.com");
            let page = reader
                .list_users(pb::ListUsersRequest {
                    page_size: 10,
                    ..Default::default()
                })
                .await
                .expect("a list answers while writes wait");
            assert_eq!(page.into_inner().users.len(), 2);
            let revisions = reader
                .list_user_revisions(pb::ListUserRevisionsRequest {
                    id: other_id.clone(),
                    ..Default::default()
                })
                .await
                .expect("revisions answer while writes wait");
            assert_eq!(revisions.into_inner().revisions.len(), 1);
        }
    };
    hold_and_write(&app, &held.id, "SELECT 1", release).await;
    let mut landed = 0;
    for writer in writers {
        match writer.await.expect("task") {
            Ok(_) => landed += 1,
            // A writer that found no connection within the second waited behind the others.
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    let stored = c
        .get_user(pb::GetUserRequest { id: held.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert!(landed >= 1, "some update lands once the row is free");
    assert_eq!(stored.revision, 1 + landed, "every acknowledged update counted once");
}

/// Two creates race for one e-mail address, many times: exactly one wins each round, the other is told why.
async fn concurrent_creates_with_one_email_have_one_winner(app: TestApp) {
    for round in 0..10 {
        let email = format!("race{round}@example.com");
        let (mut a, mut b) = (app.client.clone(), app.new_client().await);
        let (ea, eb) = (email.clone(), email.to_uppercase());
        let (ra, rb) = tokio::join!(
            a.create_user(pb::CreateUserRequest {
                user: Some(user(&ea)),
                ..Default::default()
            }),
            b.create_user(pb::CreateUserRequest {
                user: Some(user(&eb)),
                ..Default::default()
            }),
        );
        let outcomes = [ra, rb];
        let wins = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {outcomes:?}");
        let loser = outcomes.into_iter().find_map(Result::err).expect("one loser");
        assert_eq!(loser.code(), Code::AlreadyExists);
        assert_eq!(reason(&loser), "EMAIL_TAKEN");
    }
}

/// Reads that run together (on PostgreSQL, grouped into one statement) each get the user they asked for, an
/// unknown id NOT_FOUND, and a read right after a write sees the write.
async fn concurrent_reads_each_get_their_own_user(app: TestApp) {
    let mut c = app.client.clone();
    let mut read_only = Vec::new();
    for n in 0..8 {
        read_only.push(create(&mut c, user(&format!("reader{n}@example.com"))).await);
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = app.client.clone();
        let expected = read_only[task % read_only.len()].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let got = client
                    .get_user(pb::GetUserRequest {
                        id: expected.id.clone(),
                    })
                    .await
                    .expect("get")
                    .into_inner();
                assert_eq!(
                    got, expected,
                    "a read answered with another user, or another state of it"
                );
                let unknown = uuid::Uuid::now_v7().to_string();
                let missing = client.get_user(pb::GetUserRequest { id: unknown }).await;
                assert_eq!(missing.expect_err("an unknown id").code(), Code::NotFound);
            }
        }));
    }
    for task in 0..4 {
        let mut client = app.client.clone();
        let mine = create(&mut c, user(&format!("writer{task}@example.com"))).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                let name = format!("v{n}");
                let changed = pb::User {
                    id: mine.id.clone(),
                    given_name: name.clone(),
                    ..Default::default()
                };
                update(&mut client, changed, &["given_name"]).await.expect("update");
                let got = client
                    .get_user(pb::GetUserRequest { id: mine.id.clone() })
                    .await
                    .expect("get")
                    .into_inner();
                assert_eq!(got.given_name, name, "a read after a write must see it");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
}
