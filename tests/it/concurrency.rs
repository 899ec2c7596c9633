//! Concurrent writers on both backends: no lost update, uniqueness held by the database.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, create, mask, reason, update, user};

backend_tests!(
    concurrent_label_updates_all_land,
    concurrent_field_updates_all_land,
    an_update_that_waits_for_another_writer_keeps_that_writers_change,
    concurrent_creates_with_one_email_have_one_winner,
    concurrent_reads_each_get_their_own_user
);

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
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, RunQueryDsl};
    match app.database_url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut conn = diesel::SqliteConnection::establish(path).expect("open the database file");
            conn.batch_execute("BEGIN IMMEDIATE").expect("write lock");
            release(None).await;
            conn.batch_execute(&format!("{statements}; COMMIT")).expect("write");
        }
        None => {
            let mut conn = diesel::PgConnection::establish(&app.database_url).expect("connect");
            conn.batch_execute(&format!("BEGIN; SELECT 1 FROM users WHERE id = '{id}' FOR UPDATE"))
                .expect("row lock");
            let pid = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"))
                .get_result::<i32>(&mut conn)
                .expect("backend pid");
            release(Some(pid)).await;
            conn.batch_execute(&format!("{statements}; COMMIT")).expect("write");
        }
    }
}

/// Whether some PostgreSQL connection waits for a lock the backend `pid` holds.
fn someone_waits_for(app: &TestApp, pid: i32) -> bool {
    use diesel::{Connection, RunQueryDsl};
    let mut conn = diesel::PgConnection::establish(&app.database_url).expect("connect");
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_stat_activity WHERE {pid} = ANY (pg_blocking_pids(pid)))"
    )))
    .get_result(&mut conn)
    .expect("pg_stat_activity")
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
            match pid {
                Some(pid) => {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while !someone_waits_for(app, pid) {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the update never waited for the row"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
                // SQLite's writer waits on its busy time-out, which no view shows.
                None => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            }
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
