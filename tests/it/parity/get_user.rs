//! GetUser over every protocol: one user, an unknown id and a malformed id.

use http::Method;
use user_service::pb;

use super::{Harness, call, keep};

pub(super) async fn get_user(h: &Harness, ids: &[String]) {
    // GetUser of one user, and its errors.
    let id0 = ids[0].clone();
    h.same_everywhere(
        "GetUser",
        |_| {
            call(
                "GetUser",
                pb::GetUserRequest { id: id0.clone() },
                Method::GET,
                format!("/v1/users/{id0}"),
                None,
            )
        },
        keep,
    )
    .await;
    let unknown = uuid::Uuid::now_v7().to_string();
    h.same_everywhere(
        "GetUser unknown",
        |_| {
            call(
                "GetUser",
                pb::GetUserRequest { id: unknown.clone() },
                Method::GET,
                format!("/v1/users/{unknown}"),
                None,
            )
        },
        keep,
    )
    .await;
    h.same_everywhere(
        "GetUser bad id",
        |_| {
            call(
                "GetUser",
                pb::GetUserRequest { id: "nope".into() },
                Method::GET,
                "/v1/users/nope",
                None,
            )
        },
        keep,
    )
    .await;
}
