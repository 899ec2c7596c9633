//! The limits concurrency and batching must not get around (API §11): guesses of a current password counted
//! before they are checked, a rate-limit token per password to hash, and self-service callers kept from using
//! conflict answers as a directory of who is registered.

use tonic::Code;
use tonic_types::StatusExt;
use user_service::config::ServeConfig;
use user_service::domain::password::{self, Memory};
use user_service::pb;

use crate::backend_tests;
use crate::support::{Client, TestApp, create, mask, reason, token, user};

backend_tests!(
    a_burst_of_guesses_gets_the_checks_of_sequential_guesses,
    self_service_gets_at_most_ten_conflict_answers,
    a_burst_of_probes_gets_at_most_ten_conflict_answers,
);
backend_tests!(configure = small_burst; each_password_costs_a_rate_limit_token);

/// Six requests per caller, refilled so slowly that no token comes back during a test.
fn small_burst(config: &mut ServeConfig) {
    config.rate_limit = 1e-6;
    config.rate_burst = 6;
}

fn password_change(id: &str, current: &str, new: &str) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.into(),
            password: new.into(),
            ..Default::default()
        }),
        update_mask: mask(&["password"]),
        current_password: current.into(),
        ..Default::default()
    }
}

/// The stored hash of a user, read from the server's own store.
async fn stored_hash(app: &TestApp, id: &str) -> Option<String> {
    let id = uuid::Uuid::parse_str(id).expect("an id");
    app.store
        .password_state(id)
        .await
        .expect("store read")
        .expect("the user exists")
        .0
}

async fn a_burst_of_guesses_gets_the_checks_of_sequential_guesses(app: TestApp) {
    let mut admin = app.client.clone();
    let me = create(
        &mut admin,
        pb::User {
            email: "guessed@example.com".into(),
            password: "Right-Pass-1".into(),
            ..Default::default()
        },
    )
    .await;
    let mine = app.client_with(Some(token(&me.id, &[]))).await;
    // 35 wrong guesses and the right one in their middle, all in flight at once on one connection.
    const GUESSES: usize = 36;
    const RIGHT: usize = 17;
    let calls = (0..GUESSES).map(|i| {
        let mut mine = mine.clone();
        let current = if i == RIGHT {
            "Right-Pass-1".to_owned()
        } else {
            format!("Wrong-Pass-{i}")
        };
        let request = password_change(&me.id, &current, "Changed-Pass-2");
        async move { mine.update_user(request).await }
    });
    let answers = futures::future::join_all(calls).await;
    let (mut wrong, mut limited, mut changed) = (0, 0, 0);
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(_) => {
                assert_eq!(i, RIGHT, "only the right password changes it");
                changed += 1;
            }
            Err(s) if s.code() == Code::PermissionDenied && reason(s) == "WRONG_PASSWORD" => wrong += 1,
            Err(s) if s.code() == Code::ResourceExhausted && reason(s) == "TOO_MANY_ATTEMPTS" => {
                assert!(s.get_details_retry_info().is_some(), "{s:?}");
                limited += 1;
            }
            Err(s) => panic!("guess {i}: unexpected answer {s:?}"),
        }
    }
    // Five attempts are allowed; each is counted before its hash runs. The right one, if it got a token, gives
    // it back, which at most one wrong guess then takes: 4 or 5 wrong guesses are checked, never more.
    assert!(
        (4..=5).contains(&wrong),
        "{wrong} wrong guesses were checked, {limited} refused, {changed} changed"
    );
    assert_eq!(wrong + limited + changed, GUESSES);
    // The password changed exactly when the right guess was among those checked.
    let hash = stored_hash(&app, &me.id).await.expect("a password");
    let mut memory = Memory::default();
    assert_eq!(password::verify("Changed-Pass-2", &hash, &mut memory), changed == 1);
    assert_eq!(password::verify("Right-Pass-1", &hash, &mut memory), changed == 0);
}

async fn each_password_costs_a_rate_limit_token(app: TestApp) {
    // The administrator who sets up spends its own budget; the one under test has six tokens.
    let mut setup = app.client.clone();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&mut setup, user(&format!("charged{i}@example.com"))).await.id);
    }
    let mut batcher = app.client_with(Some(token("batcher", &["users.admin"]))).await;
    let batch = |ids: &[String]| pb::BatchUpdateUsersRequest {
        requests: ids
            .iter()
            .enumerate()
            .map(|(i, id)| pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: id.clone(),
                    password: format!("Batch-Pass-{i}"),
                    ..Default::default()
                }),
                update_mask: mask(&["password"]),
                ..Default::default()
            })
            .collect(),
    };
    // One token for the call and one per password: 1 + 3 of 6.
    batcher
        .batch_update_users(batch(&ids[..3]))
        .await
        .expect("a batch the budget pays for");
    let mut before = Vec::new();
    for id in &ids {
        before.push(stored_hash(&app, id).await);
    }
    assert!(before[..3].iter().all(Option::is_some) && before[3..].iter().all(Option::is_none));

    // 1 + 5 with 2 left: refused whole, before anything is hashed or written.
    let refused = batcher
        .batch_update_users(batch(&ids))
        .await
        .expect_err("a batch the budget cannot pay for");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "RATE_LIMITED");
    assert!(
        refused
            .get_details_retry_info()
            .is_some_and(|r| r.retry_delay.is_some())
    );
    for (id, hash) in ids.iter().zip(&before) {
        assert_eq!(&stored_hash(&app, id).await, hash, "nothing was written");
    }

    // A single update pays the same: its call takes the last token, its password finds none.
    let refused = batcher
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: ids[4].clone(),
                password: "Single-Pass-1".into(),
                ..Default::default()
            }),
            update_mask: mask(&["password"]),
            ..Default::default()
        })
        .await
        .expect_err("no token left for the password");
    assert_eq!(reason(&refused), "RATE_LIMITED");
    assert_eq!(stored_hash(&app, &ids[4]).await, None);

    // More passwords than the whole burst can never pass, and the answer says so.
    let mut fresh = app.client_with(Some(token("fresh", &["users.admin"]))).await;
    let seven: Vec<String> = ids.iter().chain(&ids[..2]).cloned().collect();
    let refused = fresh
        .batch_update_users(batch(&seven))
        .await
        .expect_err("over the burst");
    assert_eq!(reason(&refused), "RATE_LIMITED");
    assert!(
        refused.message().contains("more than the burst"),
        "{}",
        refused.message()
    );
}

/// A self-service change of one's own e-mail address to `email`, validated only.
fn email_probe(id: &str, email: &str) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.into(),
            email: email.into(),
            ..Default::default()
        }),
        update_mask: mask(&["email"]),
        validate_only: true,
        ..Default::default()
    }
}

async fn self_service_client(app: &TestApp, email: &str) -> (String, Client) {
    let mut admin = app.client.clone();
    let me = create(&mut admin, user(email)).await;
    let client = app.client_with(Some(token(&me.id, &[]))).await;
    (me.id, client)
}

async fn self_service_gets_at_most_ten_conflict_answers(app: TestApp) {
    let mut admin = app.client.clone();
    create(
        &mut admin,
        pb::User {
            email: "someone@example.com".into(),
            username: "someone".into(),
            ..Default::default()
        },
    )
    .await;
    let (me, mut mine) = self_service_client(&app, "prober@example.com").await;
    for i in 0..10 {
        // A free address is no conflict and costs nothing.
        mine.update_user(email_probe(&me, &format!("free{i}@example.com")))
            .await
            .expect("a free address");
        let taken = mine
            .update_user(email_probe(&me, "someone@example.com"))
            .await
            .expect_err("the address is taken");
        assert_eq!(taken.code(), Code::AlreadyExists, "probe {i}: {taken:?}");
        assert_eq!(reason(&taken), "EMAIL_TAKEN");
    }
    // The eleventh conflict is not answered; from now on no change of e-mail or username is, taken or free,
    // so the refusal tells nothing either.
    let refused = mine
        .update_user(email_probe(&me, "someone@example.com"))
        .await
        .expect_err("the allowance is spent");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_CONFLICTS");
    assert!(refused.get_details_retry_info().is_some());
    let free = mine
        .update_user(email_probe(&me, "free-later@example.com"))
        .await
        .expect_err("refused whether or not the address is taken");
    assert_eq!(free.code(), Code::ResourceExhausted);
    let username = mine
        .update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: me.clone(),
                username: "someone".into(),
                ..Default::default()
            }),
            update_mask: mask(&["username"]),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect_err("usernames share the allowance");
    assert_eq!(username.code(), Code::ResourceExhausted);
    // Changes that cannot conflict go on.
    mine.update_user(pb::UpdateUserRequest {
        user: Some(pb::User {
            id: me.clone(),
            given_name: "Still".into(),
            ..Default::default()
        }),
        update_mask: mask(&["given_name"]),
        ..Default::default()
    })
    .await
    .expect("a change of another field");
    // Administrators are told of every conflict.
    for _ in 0..11 {
        let taken = admin
            .update_user(email_probe(&me, "someone@example.com"))
            .await
            .expect_err("taken");
        assert_eq!(reason(&taken), "EMAIL_TAKEN");
    }
}

async fn a_burst_of_probes_gets_at_most_ten_conflict_answers(app: TestApp) {
    let mut admin = app.client.clone();
    create(&mut admin, user("burst-target@example.com")).await;
    let (me, mine) = self_service_client(&app, "burst-prober@example.com").await;
    let probes = (0..30).map(|_| {
        let mut mine = mine.clone();
        let request = email_probe(&me, "burst-target@example.com");
        async move { mine.update_user(request).await }
    });
    let answers = futures::future::join_all(probes).await;
    let (mut taken, mut refused) = (0, 0);
    for answer in &answers {
        match answer {
            Err(s) if s.code() == Code::AlreadyExists && reason(s) == "EMAIL_TAKEN" => taken += 1,
            Err(s) if s.code() == Code::ResourceExhausted && reason(s) == "TOO_MANY_CONFLICTS" => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Every probe conflicts, so every reservation is kept: exactly the allowance is answered.
    assert_eq!((taken, refused), (10, 20));
}
