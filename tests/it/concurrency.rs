//! Concurrent writers on both backends: no lost update, uniqueness held by the database.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, create, mask, reason, user};

backend_tests!(
    concurrent_label_updates_all_land,
    concurrent_creates_with_one_email_have_one_winner
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
