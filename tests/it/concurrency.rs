//! Concurrent writers on both backends: no lost update, uniqueness held by the database.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, create, mask, reason, update, user};

backend_tests!(
    concurrent_label_updates_all_land,
    concurrent_creates_with_one_email_have_one_winner,
    concurrent_reads_each_get_their_own_user
);

const TASKS: usize = 16;
const UPDATES_PER_TASK: usize = 50;

/// 16 tasks each set their own label 50 times, without etags, on one user: every last value must be there,
/// and `revision` must count every effective change.
async fn concurrent_label_updates_all_land(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, user("hot@example.com")).await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        // Half the tasks share one connection, half have their own: both paths must hold.
        let mut client = if task % 2 == 0 {
            app.client.clone()
        } else {
            app.new_client().await
        };
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
