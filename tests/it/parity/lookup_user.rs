//! LookupUser over every protocol: by email, and with neither email nor username.

use http::Method;
use user_service::pb;

use super::{Harness, call, keep};

pub(super) async fn lookup_user(h: &Harness) {
    // LookupUser.
    h.same_everywhere(
        "LookupUser",
        |_| {
            call(
                "LookupUser",
                pb::LookupUserRequest {
                    email: "P1@example.com".into(),
                    username: String::new(),
                },
                Method::GET,
                "/v1/users:lookup?email=P1%40example.com",
                None,
            )
        },
        keep,
    )
    .await;
    h.same_everywhere(
        "LookupUser empty",
        |_| {
            call(
                "LookupUser",
                pb::LookupUserRequest::default(),
                Method::GET,
                "/v1/users:lookup",
                None,
            )
        },
        keep,
    )
    .await;
}
