//! CreateUser over every protocol: each creates its own user from the same fields, and the same invalid
//! and duplicate users are refused alike.

use http::Method;
use serde_json::json;
use user_service::pb;

use super::{Harness, blank_user, call, keep};

/// Creates one user per protocol and returns their ids and etags, in the order of the protocols.
pub(super) async fn create_user(h: &Harness) -> (Vec<String>, Vec<String>) {
    // CreateUser: each protocol creates its own user from the same fields.
    let new_user = |i: usize| pb::User {
        email: format!("p{i}@example.com"),
        given_name: "Ana".into(),
        region_code: "co".into(),
        labels: [("team".to_owned(), "core".to_owned())].into(),
        password: "S3cure!pass".into(),
        ..Default::default()
    };
    let created = h
        .same_everywhere(
            "CreateUser",
            |i| {
                let user = new_user(i);
                call(
                    "CreateUser",
                    pb::CreateUserRequest {
                        user: Some(user),
                        ..Default::default()
                    },
                    Method::POST,
                    "/v1/users",
                    Some(
                        json!({"email": format!("p{i}@example.com"), "givenName": "Ana", "regionCode": "co",
                                "labels": {"team": "core"}, "password": "S3cure!pass"}),
                    ),
                )
            },
            blank_user,
        )
        .await;
    let ids: Vec<String> = created
        .iter()
        .map(|o| o.value()["id"].as_str().expect("id").to_owned())
        .collect();
    let etags: Vec<String> = created
        .iter()
        .map(|o| o.value()["etag"].as_str().expect("etag").to_owned())
        .collect();
    for outcome in &created {
        assert!(
            outcome.value().get("password").is_none(),
            "an input-only field is never returned: {outcome:?}"
        );
    }
    assert_eq!(created[0].value()["regionCode"], "CO");

    h.same_everywhere(
        "CreateUser invalid",
        |_| {
            call(
                "CreateUser",
                pb::CreateUserRequest {
                    user: Some(pb::User {
                        email: "x".into(),
                        phone_number: "1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Method::POST,
                "/v1/users",
                Some(json!({"email": "x", "phoneNumber": "1"})),
            )
        },
        keep,
    )
    .await;
    h.same_everywhere(
        "CreateUser duplicate",
        |_| {
            call(
                "CreateUser",
                pb::CreateUserRequest {
                    user: Some(pb::User {
                        email: "P0@example.com".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Method::POST,
                "/v1/users",
                Some(json!({"email": "P0@example.com"})),
            )
        },
        keep,
    )
    .await;
    (ids, etags)
}
