//! Every RPC of `users.v1.UserService` end to end, on both backends.

use std::collections::HashMap;

use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::support::{TestApp, create, expect_code, reason, update, user, violation_fields};

/// The default event retention, for direct purges.
const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

backend_tests!(
    create_assigns_v7_id_and_hides_password,
    create_with_client_id_and_conflicts,
    create_validate_only_writes_nothing,
    get_rejects_bad_ids_and_reports_missing,
    lookup_by_email_username_or_both,
    list_pages_filters_and_orders,
    list_rejects_bad_parameters,
    delete_undelete_disable_enable,
    batch_update_is_atomic,
    revisions_record_every_change,
    duplicate_email_and_username_are_already_exists,
    health_and_reflection_are_served,
    purge_removes_users_past_their_purge_time,
);

async fn create_assigns_v7_id_and_hides_password(app: TestApp) {
    let mut c = app.client.clone();
    let created = create(
        &mut c,
        pb::User {
            email: "Ann@Example.com".into(),
            username: "Ann.Lee".into(),
            password: "S3cret!pass".into(),
            ..Default::default()
        },
    )
    .await;
    let id = uuid::Uuid::parse_str(&created.id).expect("uuid id");
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(created.id, id.hyphenated().to_string(), "lower-case hyphenated");
    assert_eq!(created.username, "ann.lee", "usernames are stored lower-case");
    assert_eq!(created.email, "Ann@Example.com");
    assert_eq!(created.password, "", "password is input only");
    assert_eq!(created.revision, 1);
    assert_eq!(created.state, pb::user::State::Active as i32);
    assert!(!created.email_verified);
    assert!(!created.etag.is_empty());
    assert!(created.create_time.is_some() && created.update_time == created.create_time);

    let got = c
        .get_user(pb::GetUserRequest { id: created.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, created, "a read returns exactly what the create returned");
}

async fn create_with_client_id_and_conflicts(app: TestApp) {
    let mut c = app.client.clone();
    let id = "0190b2a4-7c1e-4d2a-9a4b-1c2d3e4f5a6b";
    let created = c
        .create_user(pb::CreateUserRequest {
            user: Some(user("a@example.com")),
            user_id: id.into(),
            validate_only: false,
            send_verification_email: false,
        })
        .await
        .expect("create with id")
        .into_inner();
    assert_eq!(created.id, id);
    let again = c
        .create_user(pb::CreateUserRequest {
            user: Some(user("b@example.com")),
            user_id: id.into(),
            validate_only: false,
            send_verification_email: false,
        })
        .await;
    let status = expect_code(again, Code::AlreadyExists);
    assert_eq!(reason(&status), "USER_ID_TAKEN");

    let bad = c
        .create_user(pb::CreateUserRequest {
            user: Some(user("c@example.com")),
            user_id: "not-a-uuid".into(),
            validate_only: false,
            send_verification_email: false,
        })
        .await;
    let status = expect_code(bad, Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["user_id"]);

    let missing = c.create_user(pb::CreateUserRequest::default()).await;
    let status = expect_code(missing, Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["user"]);
}

async fn create_validate_only_writes_nothing(app: TestApp) {
    let mut c = app.client.clone();
    let id = "0190b2a4-7c1e-4d2a-9a4b-000000000001";
    let preview = c
        .create_user(pb::CreateUserRequest {
            user: Some(user("v@example.com")),
            user_id: id.into(),
            validate_only: true,
            send_verification_email: false,
        })
        .await
        .expect("validate only")
        .into_inner();
    assert_eq!(preview.email, "v@example.com");
    let status = expect_code(c.get_user(pb::GetUserRequest { id: id.into() }).await, Code::NotFound);
    assert_eq!(reason(&status), "USER_NOT_FOUND");
    // Uniqueness is part of "every check".
    create(&mut c, user("taken@example.com")).await;
    let dup = c
        .create_user(pb::CreateUserRequest {
            user: Some(user("TAKEN@example.com")),
            validate_only: true,
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&expect_code(dup, Code::AlreadyExists)), "EMAIL_TAKEN");
}

async fn get_rejects_bad_ids_and_reports_missing(app: TestApp) {
    let mut c = app.client.clone();
    let status = expect_code(
        c.get_user(pb::GetUserRequest { id: "42".into() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["id"]);
    let status = expect_code(
        c.get_user(pb::GetUserRequest { id: String::new() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["id"]);
    expect_code(
        c.get_user(pb::GetUserRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await,
        Code::NotFound,
    );
}

async fn lookup_by_email_username_or_both(app: TestApp) {
    let mut c = app.client.clone();
    let ann = create(
        &mut c,
        pb::User {
            email: "ann@example.com".into(),
            username: "ann".into(),
            ..Default::default()
        },
    )
    .await;
    let bob = create(
        &mut c,
        pb::User {
            email: "bob@example.com".into(),
            username: "bob".into(),
            ..Default::default()
        },
    )
    .await;
    let by_email = c
        .lookup_user(pb::LookupUserRequest {
            email: "ANN@example.COM".into(),
            username: String::new(),
        })
        .await
        .expect("by email")
        .into_inner();
    assert_eq!(by_email.id, ann.id);
    let by_username = c
        .lookup_user(pb::LookupUserRequest {
            email: String::new(),
            username: "BOB".into(),
        })
        .await
        .expect("by username")
        .into_inner();
    assert_eq!(by_username.id, bob.id);
    let both = c
        .lookup_user(pb::LookupUserRequest {
            email: "bob@example.com".into(),
            username: "bob".into(),
        })
        .await
        .expect("both match")
        .into_inner();
    assert_eq!(both.id, bob.id);
    expect_code(
        c.lookup_user(pb::LookupUserRequest {
            email: "ann@example.com".into(),
            username: "bob".into(),
        })
        .await,
        Code::NotFound,
    );
    let status = expect_code(
        c.lookup_user(pb::LookupUserRequest::default()).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["email", "username"]);
    expect_code(
        c.lookup_user(pb::LookupUserRequest {
            email: "nobody@example.com".into(),
            username: String::new(),
        })
        .await,
        Code::NotFound,
    );
}

async fn list_all(c: &mut crate::support::Client, filter: &str) -> Vec<String> {
    let response = c
        .list_users(pb::ListUsersRequest {
            filter: filter.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("filter {filter:?}: {e:?}"))
        .into_inner();
    response.users.into_iter().map(|u| u.email).collect()
}

async fn list_pages_filters_and_orders(app: TestApp) {
    let mut c = app.client.clone();
    let mut ids = Vec::new();
    for i in 0..7 {
        let u = create(
            &mut c,
            pb::User {
                email: format!("user{i}@example.com"),
                username: if i % 2 == 0 { format!("even{i}") } else { String::new() },
                region_code: if i < 3 { "CO".into() } else { "CL".into() },
                labels: HashMap::from([("team".to_owned(), if i < 4 { "core" } else { "edge" }.to_owned())]),
                roles: if i == 5 {
                    vec!["admin".into(), "dev".into()]
                } else {
                    vec!["dev".into()]
                },
                ..Default::default()
            },
        )
        .await;
        ids.push(u.id);
    }
    // Pages of 3 in creation order, with tokens, cover everything exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_users(pb::ListUsersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    // The token is bound to its query.
    let first = c
        .list_users(pb::ListUsersRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let status = expect_code(
        c.list_users(pb::ListUsersRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            order_by: "email desc".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["page_token"]);
    expect_code(
        c.list_users(pb::ListUsersRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );

    // Ordering by email descending.
    let desc = c
        .list_users(pb::ListUsersRequest {
            order_by: "email desc".into(),
            ..Default::default()
        })
        .await
        .expect("ordered")
        .into_inner();
    let emails: Vec<String> = desc.users.into_iter().map(|u| u.email).collect();
    let mut sorted = emails.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(emails, sorted);

    // Filters.
    assert_eq!(list_all(&mut c, r#"region_code = "CO""#).await.len(), 3);
    assert_eq!(list_all(&mut c, "region_code != CO").await.len(), 4);
    assert_eq!(list_all(&mut c, "labels.team = edge").await.len(), 3);
    assert_eq!(
        list_all(&mut c, "labels.team = core AND region_code = CL").await,
        vec!["user3@example.com"]
    );
    assert_eq!(list_all(&mut c, "roles:admin").await, vec!["user5@example.com"]);
    assert_eq!(list_all(&mut c, "roles != admin").await.len(), 6);
    assert_eq!(
        list_all(&mut c, r#"email = "user1@example.com""#).await,
        vec!["user1@example.com"]
    );
    assert_eq!(list_all(&mut c, r#"email = "*@example.com""#).await.len(), 7);
    assert_eq!(list_all(&mut c, "username:*").await.len(), 4);
    assert_eq!(list_all(&mut c, r#"username = "even*""#).await.len(), 4);
    assert_eq!(list_all(&mut c, "labels:team").await.len(), 7);
    assert_eq!(list_all(&mut c, "labels:nope").await.len(), 0);
    assert_eq!(list_all(&mut c, "state = ACTIVE").await.len(), 7);

    // Deleted users are hidden unless asked for.
    c.delete_user(pb::DeleteUserRequest {
        id: ids[0].clone(),
        etag: String::new(),
    })
    .await
    .expect("delete");
    assert_eq!(list_all(&mut c, "").await.len(), 6);
    assert_eq!(list_all(&mut c, "state = DELETED").await.len(), 0);
    let with_deleted = c
        .list_users(pb::ListUsersRequest {
            show_deleted: true,
            filter: "state = DELETED".into(),
            ..Default::default()
        })
        .await
        .expect("show deleted")
        .into_inner();
    assert_eq!(with_deleted.users.len(), 1);
    assert_eq!(with_deleted.users[0].id, ids[0]);
}

async fn list_rejects_bad_parameters(app: TestApp) {
    let mut c = app.client.clone();
    let status = expect_code(
        c.list_users(pb::ListUsersRequest {
            page_size: -1,
            filter: "nope = 1".into(),
            order_by: "given_name".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["page_size", "filter", "order_by"]);
    // Oversized pages are lowered to the maximum, not refused.
    c.list_users(pb::ListUsersRequest {
        page_size: 100_000,
        ..Default::default()
    })
    .await
    .expect("coerced page size");
}

async fn delete_undelete_disable_enable(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(&mut c, user("life@example.com")).await;
    let id = u.id.clone();

    let disabled = c
        .disable_user(pb::DisableUserRequest {
            id: id.clone(),
            reason: "chargeback".into(),
            etag: u.etag.clone(),
        })
        .await
        .expect("disable")
        .into_inner();
    assert_eq!(disabled.state, pb::user::State::Disabled as i32);
    assert_eq!(disabled.disabled_reason, "chargeback");
    assert_eq!(disabled.revision, 2);

    // A stale etag on a lifecycle method is ABORTED too.
    let status = expect_code(
        c.enable_user(pb::EnableUserRequest {
            id: id.clone(),
            etag: u.etag.clone(),
        })
        .await,
        Code::Aborted,
    );
    assert_eq!(reason(&status), "ETAG_MISMATCH");

    let deleted = c
        .delete_user(pb::DeleteUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.state, pb::user::State::Deleted as i32);
    let (dt, pt) = (
        deleted.delete_time.expect("delete_time"),
        deleted.purge_time.expect("purge_time"),
    );
    assert_eq!(pt.seconds - dt.seconds, 30 * 24 * 3600);

    // Still readable, with its state.
    let got = c
        .get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.state, pb::user::State::Deleted as i32);

    for result in [
        c.enable_user(pb::EnableUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await,
        c.disable_user(pb::DisableUserRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await,
        c.delete_user(pb::DeleteUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await,
        update(
            &mut c,
            pb::User {
                id: id.clone(),
                given_name: "X".into(),
                ..Default::default()
            },
            &["given_name"],
        )
        .await
        .map(tonic::Response::new),
    ] {
        assert_eq!(reason(&expect_code(result, Code::FailedPrecondition)), "USER_DELETED");
    }

    let restored = c
        .undelete_user(pb::UndeleteUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .expect("undelete")
        .into_inner();
    assert_eq!(
        restored.state,
        pb::user::State::Disabled as i32,
        "undelete restores the state before deletion"
    );
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    let status = expect_code(
        c.undelete_user(pb::UndeleteUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "USER_NOT_DELETED");

    let enabled = c
        .enable_user(pb::EnableUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .expect("enable")
        .into_inner();
    assert_eq!(enabled.state, pb::user::State::Active as i32);
    assert_eq!(enabled.disabled_reason, "");
    // Enabling an active user changes nothing.
    let again = c
        .enable_user(pb::EnableUserRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .expect("enable again")
        .into_inner();
    assert_eq!(again.revision, enabled.revision);

    expect_code(
        c.delete_user(pb::DeleteUserRequest {
            id: uuid::Uuid::now_v7().to_string(),
            etag: String::new(),
        })
        .await,
        Code::NotFound,
    );
}

async fn batch_update_is_atomic(app: TestApp) {
    let mut c = app.client.clone();
    let a = create(&mut c, user("a@example.com")).await;
    let b = create(&mut c, user("b@example.com")).await;
    let item = |id: &str, given: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.into(),
            given_name: given.into(),
            ..Default::default()
        }),
        update_mask: crate::support::mask(&["given_name"]),
        ..Default::default()
    };
    let ok = c
        .batch_update_users(pb::BatchUpdateUsersRequest {
            requests: vec![item(&a.id, "Ann"), item(&b.id, "Bob")],
        })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(
        ok.users.iter().map(|u| u.given_name.as_str()).collect::<Vec<_>>(),
        vec!["Ann", "Bob"]
    );

    // One invalid item: nothing applies, and the violation names the item.
    let mut bad = item(&b.id, "Bobby");
    bad.user.as_mut().expect("user").phone_number = "12".into();
    bad.update_mask = crate::support::mask(&["given_name", "phone_number"]);
    let status = expect_code(
        c.batch_update_users(pb::BatchUpdateUsersRequest {
            requests: vec![item(&a.id, "Anna"), bad],
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["requests[1].user.phone_number"]);
    let a_now = c
        .get_user(pb::GetUserRequest { id: a.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(a_now.given_name, "Ann", "the valid item was rolled back");

    // A missing user fails the whole batch too.
    let status = expect_code(
        c.batch_update_users(pb::BatchUpdateUsersRequest {
            requests: vec![item(&a.id, "Anna"), item(&uuid::Uuid::now_v7().to_string(), "X")],
        })
        .await,
        Code::NotFound,
    );
    assert!(status.message().contains("requests[1]"), "{}", status.message());
    let a_now = c
        .get_user(pb::GetUserRequest { id: a.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(a_now.given_name, "Ann");

    // Over the limit.
    let too_many: Vec<_> = (0..1001).map(|_| item(&a.id, "x")).collect();
    let status = expect_code(
        c.batch_update_users(pb::BatchUpdateUsersRequest { requests: too_many })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["requests"]);
}

async fn revisions_record_every_change(app: TestApp) {
    let mut c = app.client.clone();
    let u = create(
        &mut c,
        pb::User {
            email: "rev@example.com".into(),
            password: "Init!al-Pass1".into(),
            ..Default::default()
        },
    )
    .await;
    update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "Ann".into(),
            ..Default::default()
        },
        &["given_name"],
    )
    .await
    .expect("update 1");
    update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            password: "N3w-Secret-Pass".into(),
            labels: HashMap::from([("team".to_owned(), "core".to_owned())]),
            ..Default::default()
        },
        &["password", "labels.team"],
    )
    .await
    .expect("update 2");
    // A no-op writes no revision.
    update(
        &mut c,
        pb::User {
            id: u.id.clone(),
            given_name: "Ann".into(),
            ..Default::default()
        },
        &["given_name"],
    )
    .await
    .expect("no-op");
    c.disable_user(pb::DisableUserRequest {
        id: u.id.clone(),
        reason: "r".into(),
        etag: String::new(),
    })
    .await
    .expect("disable");

    let all = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    let numbers: Vec<i64> = all.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(numbers, vec![4, 3, 2, 1], "newest first, one per change");
    let paths = |i: usize| all.revisions[i].update_mask.clone().expect("mask").paths;
    assert_eq!(paths(0), vec!["state", "disabled_reason"]);
    assert_eq!(paths(1), vec!["labels.team", "password"]);
    assert_eq!(paths(2), vec!["given_name"]);
    assert_eq!(paths(3), vec!["email", "password"]);
    assert!(
        all.revisions.iter().all(|r| r.actor == "test-admin"),
        "the actor is the token's sub"
    );

    let text = format!("{all:?}");
    assert!(
        !text.contains("N3w-Secret-Pass") && !text.contains("Init!al-Pass1"),
        "passwords never appear"
    );
    assert!(!text.contains("argon2"), "hashes never appear");
    let after = all.revisions[1].after.clone().expect("after");
    assert_eq!(
        after.fields.get("password").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::StringValue("[redacted]".into()))
    );
    let before = all.revisions[2].before.clone().expect("before");
    assert_eq!(
        before.fields.get("given_name").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::NullValue(0))
    );

    // Paging through revisions.
    let first = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(first.revisions.len(), 3);
    let second = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: u.id.clone(),
            page_size: 3,
            page_token: first.next_page_token.clone(),
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(second.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), vec![1]);
    assert!(second.next_page_token.is_empty());

    expect_code(
        c.list_user_revisions(pb::ListUserRevisionsRequest {
            id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
}

async fn duplicate_email_and_username_are_already_exists(app: TestApp) {
    let mut c = app.client.clone();
    create(
        &mut c,
        pb::User {
            email: "dup@example.com".into(),
            username: "dup".into(),
            ..Default::default()
        },
    )
    .await;
    let other = create(&mut c, user("other@example.com")).await;
    let status = expect_code(
        c.create_user(pb::CreateUserRequest {
            user: Some(user("DUP@example.com")),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "EMAIL_TAKEN");
    let status = expect_code(
        c.create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: "new@example.com".into(),
                username: "DUP".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "USERNAME_TAKEN");
    // Taking a used address by update is refused the same way, and changes nothing.
    let status = expect_code(
        update(
            &mut c,
            pb::User {
                id: other.id.clone(),
                email: "Dup@Example.com".into(),
                ..Default::default()
            },
            &["email"],
        )
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status), "EMAIL_TAKEN");
    let unchanged = c
        .get_user(pb::GetUserRequest { id: other.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged, other);
}

async fn health_and_reflection_are_served(app: TestApp) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let mut serving = false;
    for _ in 0..50 {
        let status = health
            .check(HealthCheckRequest {
                service: "users.v1.UserService".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(1)) {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(serving, "health reports SERVING once the database answers");

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.message().await.expect("message").expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"users.v1.UserService".to_owned()), "{names:?}");
}

async fn purge_removes_users_past_their_purge_time(app: TestApp) {
    let mut c = app.client.clone();
    let gone = create(&mut c, user("gone@example.com")).await;
    let kept_deleted = create(&mut c, user("recent@example.com")).await;
    let alive = create(&mut c, user("alive@example.com")).await;
    c.delete_user(pb::DeleteUserRequest {
        id: gone.id.clone(),
        etag: String::new(),
    })
    .await
    .expect("delete");
    let config = user_service::config::ServeConfig::for_database(&app.database_url);
    let store = user_service::store::Store::open(&config.database.store_options()).expect("store beside the server");
    let in_31_days = chrono::Utc::now() + chrono::Duration::days(31);
    // The second user is deleted only after the first purge ran: its purge time lies 30 days after that.
    assert_eq!(store.purge_expired(in_31_days, WEEK).await.expect("purge"), 1);
    c.delete_user(pb::DeleteUserRequest {
        id: kept_deleted.id.clone(),
        etag: String::new(),
    })
    .await
    .expect("delete");
    assert_eq!(store.purge_expired(chrono::Utc::now(), WEEK).await.expect("purge"), 0);
    expect_code(
        c.get_user(pb::GetUserRequest { id: gone.id.clone() }).await,
        Code::NotFound,
    );
    expect_code(
        c.list_user_revisions(pb::ListUserRevisionsRequest {
            id: gone.id.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
    );
    c.get_user(pb::GetUserRequest {
        id: kept_deleted.id.clone(),
    })
    .await
    .expect("not yet purged");
    c.get_user(pb::GetUserRequest { id: alive.id.clone() })
        .await
        .expect("never deleted");
    // The purged address is free again.
    create(&mut c, user("gone@example.com")).await;
}
