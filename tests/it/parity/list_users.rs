//! ListUsers over every protocol: a filtered, ordered page, the page after it, and invalid arguments.

use http::Method;
use user_service::pb;

use super::{Harness, call, keep};

pub(super) async fn list_users(h: &Harness) {
    // ListUsers with a filter, order and page size; and a bad filter.
    let listed = h
        .same_everywhere(
            "ListUsers",
            |_| {
                call(
                    "ListUsers",
                    pb::ListUsersRequest { page_size: 2, filter: "labels.team = core AND region_code = CO".into(), order_by: "email desc".into(), ..Default::default() },
                    Method::GET,
                    "/v1/users?pageSize=2&filter=labels.team%20%3D%20core%20AND%20region_code%20%3D%20CO&order_by=email+desc",
                    None,
                )
            },
            keep,
        )
        .await;
    let token = listed[0].value()["nextPageToken"].as_str().expect("token").to_owned();
    h.same_everywhere(
        "ListUsers page 2",
        |_| {
            call(
                "ListUsers",
                pb::ListUsersRequest { page_size: 2, page_token: token.clone(), filter: "labels.team = core AND region_code = CO".into(), order_by: "email desc".into(), ..Default::default() },
                Method::GET,
                format!("/v1/users?pageSize=2&pageToken={token}&filter=labels.team%20%3D%20core%20AND%20region_code%20%3D%20CO&orderBy=email%20desc"),
                None,
            )
        },
        keep,
    )
    .await;
    h.same_everywhere(
        "ListUsers invalid",
        |_| {
            call(
                "ListUsers",
                pb::ListUsersRequest {
                    page_size: -1,
                    filter: "nope = 1".into(),
                    ..Default::default()
                },
                Method::GET,
                "/v1/users?pageSize=-1&filter=nope%20%3D%201",
                None,
            )
        },
        keep,
    )
    .await;
}
