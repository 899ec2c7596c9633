//! VerifyPassword and the self-service state checks (API §6, §9), end to end on both backends.

use tonic::{Code, Status};
use tonic_types::StatusExt;
use user_service::pb;
use user_service::pb::verify_password_request::Login;

use crate::backend_tests;
use crate::support::{Client, TestApp, create, expect_code, reason, token, update, user};

backend_tests!(
    verifies_by_id_email_and_username,
    every_failed_check_gets_the_same_answer,
    concurrent_wrong_guesses_get_five_checks_and_the_lockout_is_shared,
    an_unknown_login_is_locked_out_as_a_user_is,
    a_success_resets_the_count,
    state_is_told_only_after_a_correct_password,
    only_admin_and_authenticate_may_verify,
    self_service_ends_with_the_user_s_access,
    rest_verifies_with_the_same_rules,
    a_weaker_hash_is_rehashed_on_success,
);

const PASSWORD: &str = "Right-Pass1";

async fn verify(c: &mut Client, login: Login, password: &str) -> Result<pb::User, Status> {
    c.verify_password(pb::VerifyPasswordRequest {
        login: Some(login),
        password: password.to_owned(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// A user with a password and a username, made by the administrator client.
async fn member(c: &mut Client, name: &str) -> pb::User {
    create(
        c,
        pb::User {
            email: format!("{name}@example.com"),
            username: name.to_owned(),
            password: PASSWORD.to_owned(),
            ..Default::default()
        },
    )
    .await
}

fn timestamp_in(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + seconds,
        nanos: 0,
    })
}

/// Everything a client can tell of an error.
/// How many of the wrong guesses were checked (INVALID_CREDENTIALS) and how many refused unchecked
/// (TOO_MANY_ATTEMPTS, with RetryInfo); any other answer fails the test.
async fn tally(guesses: impl Iterator<Item = tokio::task::JoinHandle<Result<pb::User, Status>>>) -> (usize, usize) {
    let (mut invalid, mut locked) = (0, 0);
    for guess in futures::future::join_all(guesses).await {
        let status = guess.expect("task").expect_err("every guess is wrong");
        match (status.code(), reason(&status).as_str()) {
            (Code::InvalidArgument, "INVALID_CREDENTIALS") => invalid += 1,
            (Code::ResourceExhausted, "TOO_MANY_ATTEMPTS") => {
                assert!(status.get_details_retry_info().is_some(), "{status:?}");
                locked += 1;
            }
            other => panic!("unexpected answer {other:?}: {status:?}"),
        }
    }
    (invalid, locked)
}

fn whole(status: &Status) -> (Code, String, Vec<u8>) {
    (status.code(), status.message().to_owned(), status.details().to_vec())
}

async fn revision_count(c: &mut Client, id: &str) -> usize {
    c.list_user_revisions(pb::ListUserRevisionsRequest {
        id: id.to_owned(),
        ..Default::default()
    })
    .await
    .expect("revisions")
    .into_inner()
    .revisions
    .len()
}

async fn verifies_by_id_email_and_username(app: TestApp) {
    let mut c = app.client.clone();
    let created = member(&mut c, "ann").await;
    assert!(created.last_login_time.is_none(), "never signed in");
    let mut last = None;
    for login in [
        Login::Id(created.id.clone()),
        Login::Email("ANN@example.com".into()),
        Login::Username("Ann".into()),
    ] {
        let signed_in = verify(&mut c, login.clone(), PASSWORD).await.expect("right password");
        assert_eq!(signed_in.id, created.id, "{login:?}");
        assert!(signed_in.password.is_empty());
        let at = signed_in.last_login_time.expect("last_login_time is set");
        assert!(last.is_none_or(|l: prost_types::Timestamp| (at.seconds, at.nanos) >= (l.seconds, l.nanos)));
        last = Some(at);
        // Not an edit: the etag a client holds stays valid and no revision is written.
        assert_eq!((signed_in.revision, &signed_in.etag), (created.revision, &created.etag));
    }
    let read = c
        .get_user(pb::GetUserRequest { id: created.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.last_login_time, last, "the sign-in is stored");
    assert_eq!((read.revision, &read.etag), (created.revision, &created.etag));
    assert_eq!(revision_count(&mut c, &created.id).await, 1);
    // The etag from before the sign-in still makes a conditional update succeed.
    let mut edit = pb::User {
        id: created.id.clone(),
        given_name: "Ann".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    edit = update(&mut c, edit, &["given_name"])
        .await
        .expect("the old etag still matches");
    assert_eq!(edit.last_login_time, last, "an edit keeps the last sign-in");

    let none = c
        .verify_password(pb::VerifyPasswordRequest {
            login: None,
            password: PASSWORD.into(),
        })
        .await;
    expect_code(none, Code::InvalidArgument);
}

async fn every_failed_check_gets_the_same_answer(app: TestApp) {
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    let bob = create(&mut c, user("bob@example.com")).await;
    let answers = [
        verify(&mut c, Login::Id(ann.id.clone()), "Wrong-Pass1").await,
        verify(&mut c, Login::Email("ann@example.com".into()), "").await,
        verify(&mut c, Login::Id(uuid::Uuid::now_v7().to_string()), PASSWORD).await,
        verify(&mut c, Login::Email("nobody@example.com".into()), PASSWORD).await,
        verify(&mut c, Login::Username("nobody".into()), PASSWORD).await,
        verify(&mut c, Login::Id(bob.id.clone()), PASSWORD).await,
    ];
    let answers: Vec<Status> = answers
        .into_iter()
        .map(|a| expect_code(a, Code::InvalidArgument))
        .collect();
    assert_eq!(reason(&answers[0]), "INVALID_CREDENTIALS");
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(
            whole(answer),
            whole(&answers[0]),
            "answer {i} tells something the others do not"
        );
    }
}

async fn concurrent_wrong_guesses_get_five_checks_and_the_lockout_is_shared(app: TestApp) {
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    let guesses = (0..20).map(|i| {
        let mut c = c.clone();
        let id = ann.id.clone();
        tokio::spawn(async move { verify(&mut c, Login::Id(id), &format!("Wrong-Pass{i}")).await })
    });
    assert_eq!(tally(guesses).await, (5, 15), "only five guesses were checked");
    // Locked out, the right password is refused too, here and on a second server on the same database.
    let refused = expect_code(
        verify(&mut c, Login::Id(ann.id.clone()), PASSWORD).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&refused), "TOO_MANY_ATTEMPTS");
    let beside = app.start_beside().await;
    let mut other = beside.client.clone();
    let refused = expect_code(
        verify(&mut other, Login::Username("ann".into()), PASSWORD).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&refused), "TOO_MANY_ATTEMPTS");
    let retry = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(retry <= std::time::Duration::from_secs(60), "{retry:?}");
    // Another user is not affected.
    member(&mut c, "bob").await;
    verify(&mut other, Login::Username("bob".into()), PASSWORD)
        .await
        .expect("bob signs in");
}

/// A login that names nobody is counted and locked out as a user's is: otherwise the sixth wrong guess would
/// tell a registered address (TOO_MANY_ATTEMPTS) from an unknown one (INVALID_CREDENTIALS again).
async fn an_unknown_login_is_locked_out_as_a_user_is(app: TestApp) {
    let mut c = app.client.clone();
    let guesses = (0..20).map(|i| {
        let mut c = c.clone();
        // The address in varying case: one login, as for a user.
        let email = if i % 2 == 0 {
            "Nobody@Example.com"
        } else {
            "nobody@example.com"
        };
        tokio::spawn(async move { verify(&mut c, Login::Email(email.into()), &format!("Wrong-Pass{i}")).await })
    });
    assert_eq!(
        tally(guesses).await,
        (5, 15),
        "an unknown login gets the five checks a user gets"
    );
    // The same lockout answer as a registered user's, on a second server on the same database too.
    let ann = member(&mut c, "ann").await;
    for i in 0..5 {
        let _ = verify(&mut c, Login::Id(ann.id.clone()), &format!("Wrong-Pass{i}")).await;
    }
    let known = expect_code(
        verify(&mut c, Login::Id(ann.id.clone()), PASSWORD).await,
        Code::ResourceExhausted,
    );
    let beside = app.start_beside().await;
    let mut other = beside.client.clone();
    let unknown = expect_code(
        verify(&mut other, Login::Email("nobody@example.com".into()), PASSWORD).await,
        Code::ResourceExhausted,
    );
    assert_eq!((known.message(), reason(&known)), (unknown.message(), reason(&unknown)));
    // Other unknown logins are not affected.
    let fresh = expect_code(
        verify(&mut other, Login::Username("someone-else".into()), PASSWORD).await,
        Code::InvalidArgument,
    );
    assert_eq!(reason(&fresh), "INVALID_CREDENTIALS");
}

async fn a_success_resets_the_count(app: TestApp) {
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    for round in 0..3 {
        for _ in 0..4 {
            let wrong = verify(&mut c, Login::Id(ann.id.clone()), "Wrong-Pass1").await;
            assert_eq!(
                reason(&expect_code(wrong, Code::InvalidArgument)),
                "INVALID_CREDENTIALS"
            );
        }
        verify(&mut c, Login::Id(ann.id.clone()), PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the fifth attempt is the right one: {e:?}"));
    }
}

async fn state_is_told_only_after_a_correct_password(app: TestApp) {
    let mut c = app.client.clone();
    let cases = [
        ("disabled", "USER_DISABLED"),
        ("deleted", "USER_DELETED"),
        ("early", "USER_NOT_YET_VALID"),
        ("expired", "USER_EXPIRED"),
    ];
    for (name, expected) in cases {
        let u = member(&mut c, name).await;
        let id = u.id.clone();
        match name {
            "disabled" => {
                c.disable_user(pb::DisableUserRequest {
                    id: id.clone(),
                    reason: "left".into(),
                    ..Default::default()
                })
                .await
                .expect("disable");
            }
            "deleted" => {
                c.delete_user(pb::DeleteUserRequest {
                    id: id.clone(),
                    ..Default::default()
                })
                .await
                .expect("delete");
            }
            "early" => {
                let edit = pb::User {
                    id: id.clone(),
                    valid_from: timestamp_in(3600),
                    ..Default::default()
                };
                update(&mut c, edit, &["valid_from"]).await.expect("valid_from");
            }
            _ => {
                let edit = pb::User {
                    id: id.clone(),
                    expire_time: timestamp_in(-3600),
                    ..Default::default()
                };
                update(&mut c, edit, &["expire_time"]).await.expect("expire_time");
            }
        }
        let before = c
            .get_user(pb::GetUserRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner();
        let wrong = expect_code(
            verify(&mut c, Login::Id(id.clone()), "Wrong-Pass1").await,
            Code::InvalidArgument,
        );
        assert_eq!(
            reason(&wrong),
            "INVALID_CREDENTIALS",
            "{name}: a wrong password tells nothing"
        );
        let refused = expect_code(
            verify(&mut c, Login::Id(id.clone()), PASSWORD).await,
            Code::FailedPrecondition,
        );
        assert_eq!(reason(&refused), expected, "{name}");
        let after = c.get_user(pb::GetUserRequest { id }).await.expect("get").into_inner();
        assert_eq!(after.last_login_time, None, "{name}: a refused sign-in is no sign-in");
        assert_eq!(after.etag, before.etag);
    }
}

async fn only_admin_and_authenticate_may_verify(app: TestApp) {
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    let mut reader = app.client_with(Some(token("auditor", &["users.read"]))).await;
    let denied = expect_code(
        verify(&mut reader, Login::Id(ann.id.clone()), PASSWORD).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&denied), "PERMISSION_DENIED");
    // Not even on one's own user without the scope.
    let mut myself = app.client_with(Some(token(&ann.id, &[]))).await;
    expect_code(
        verify(&mut myself, Login::Id(ann.id.clone()), PASSWORD).await,
        Code::PermissionDenied,
    );

    let mut front_end = app.client_with(Some(token("login", &["users.authenticate"]))).await;
    verify(&mut front_end, Login::Email("ann@example.com".into()), PASSWORD)
        .await
        .expect("a login front end verifies");
    let get = front_end.get_user(pb::GetUserRequest { id: ann.id.clone() }).await;
    expect_code(get, Code::PermissionDenied);
    let list = front_end.list_users(pb::ListUsersRequest::default()).await;
    expect_code(list, Code::PermissionDenied);
    let lookup = front_end
        .lookup_user(pb::LookupUserRequest {
            email: "ann@example.com".into(),
            ..Default::default()
        })
        .await;
    expect_code(lookup, Code::PermissionDenied);
    let edit = pb::User {
        id: ann.id.clone(),
        given_name: "Eve".into(),
        ..Default::default()
    };
    expect_code(
        update(&mut front_end, edit, &["given_name"]).await,
        Code::PermissionDenied,
    );
}

/// The self-service RPCs a refused user's own token is tried on; each must answer PERMISSION_DENIED `reason`.
async fn assert_self_service_refused(own: &mut Client, id: &str, expected: &str) {
    let get = own.get_user(pb::GetUserRequest { id: id.to_owned() }).await;
    assert_eq!(reason(&expect_code(get, Code::PermissionDenied)), expected, "GetUser");
    let edit = pb::User {
        id: id.to_owned(),
        given_name: "Changed".into(),
        ..Default::default()
    };
    let updated = update(own, edit, &["given_name"]).await;
    assert_eq!(
        reason(&expect_code(updated, Code::PermissionDenied)),
        expected,
        "UpdateUser"
    );
    let revisions = own
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: id.to_owned(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        reason(&expect_code(revisions, Code::PermissionDenied)),
        expected,
        "ListUserRevisions"
    );
}

async fn self_service_ends_with_the_user_s_access(app: TestApp) {
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    let id = ann.id.clone();
    let mut own = app.client_with(Some(token(&id, &[]))).await;
    own.get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .expect("active: allowed");

    c.disable_user(pb::DisableUserRequest {
        id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("disable");
    assert_self_service_refused(&mut own, &id, "USER_DISABLED").await;
    c.enable_user(pb::EnableUserRequest {
        id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("enable");
    own.get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .expect("enabled again: allowed");

    let early = pb::User {
        id: id.clone(),
        valid_from: timestamp_in(3600),
        ..Default::default()
    };
    update(&mut c, early, &["valid_from"]).await.expect("valid_from");
    assert_self_service_refused(&mut own, &id, "USER_NOT_YET_VALID").await;

    let expired = pb::User {
        id: id.clone(),
        valid_from: timestamp_in(-7200),
        expire_time: timestamp_in(-3600),
        ..Default::default()
    };
    update(&mut c, expired, &["valid_from", "expire_time"])
        .await
        .expect("expire_time");
    assert_self_service_refused(&mut own, &id, "USER_EXPIRED").await;

    update(
        &mut c,
        pb::User {
            id: id.clone(),
            ..Default::default()
        },
        &["valid_from", "expire_time"],
    )
    .await
    .expect("window cleared");
    c.delete_user(pb::DeleteUserRequest {
        id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("delete");
    assert_self_service_refused(&mut own, &id, "USER_DELETED").await;
    // Refused, nothing changed; a scope still reads the user.
    let read = c
        .get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .expect("admin reads")
        .into_inner();
    assert_eq!(read.given_name, "");
    let mut reader = app.client_with(Some(token("auditor", &["users.read"]))).await;
    reader
        .get_user(pb::GetUserRequest { id })
        .await
        .expect("users.read reads a deleted user");
}

async fn rest_verifies_with_the_same_rules(app: TestApp) {
    use http::{Method, StatusCode};
    use serde_json::json;
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    let http = crate::http::HttpClient::with_token(app.addr, Some(token("login", &["users.authenticate"])));
    let ok = http
        .rest(
            Method::POST,
            "/v1/users:verifyPassword",
            Some(json!({"email": "ann@example.com", "password": PASSWORD})),
            &[],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let body = ok.json();
    assert_eq!(body["id"], ann.id.as_str());
    assert!(body["lastLoginTime"].is_string(), "{body}");
    assert!(body.get("password").is_none());
    let wrong = http
        .rest(
            Method::POST,
            "/v1/users:verifyPassword",
            Some(json!({"username": "ann", "password": "Wrong-Pass1"})),
            &[],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let error = wrong.json();
    assert_eq!(error["error"]["details"][0]["reason"], "INVALID_CREDENTIALS", "{error}");
    // Two members of the oneof: refused, never one of them picked silently.
    let both = http
        .rest(
            Method::POST,
            "/v1/users:verifyPassword",
            Some(json!({"id": ann.id, "email": "ann@example.com", "password": PASSWORD})),
            &[],
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST, "{:?}", both.body);
}

/// Runs one statement on the server's database, beside it; returns the rows it changed.
fn execute(app: &TestApp, statement: &str) -> usize {
    app.raw_connection().execute(statement)
}

async fn a_weaker_hash_is_rehashed_on_success(app: TestApp) {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let mut c = app.client.clone();
    let ann = member(&mut c, "ann").await;
    // A hash stored by an older release with a lower cost.
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(1024, 1, 1, None).expect("params"),
    )
    .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
    .expect("hash")
    .to_string();
    let id = &ann.id;
    assert_eq!(
        execute(
            &app,
            &format!("UPDATE users SET password_hash = '{weak}' WHERE id = '{id}'")
        ),
        1
    );
    let current = "'$argon2id$v=19$m=19456,t=2,p=1$%'";
    let at_current_cost =
        format!("UPDATE users SET revision = revision WHERE id = '{id}' AND password_hash LIKE {current}");
    assert_eq!(execute(&app, &at_current_cost), 0, "the weak hash is stored");
    verify(&mut c, Login::Id(id.clone()), "Wrong-Pass1")
        .await
        .expect_err("wrong");
    assert_eq!(execute(&app, &at_current_cost), 0, "a wrong password re-hashes nothing");
    verify(&mut c, Login::Id(id.clone()), PASSWORD)
        .await
        .expect("the weak hash still verifies");
    assert_eq!(execute(&app, &at_current_cost), 1, "re-hashed at the current cost");
    let signed_in = verify(&mut c, Login::Id(id.clone()), PASSWORD)
        .await
        .expect("the new hash verifies");
    assert_eq!(
        (signed_in.revision, &signed_in.etag),
        (ann.revision, &ann.etag),
        "not an edit"
    );
}
