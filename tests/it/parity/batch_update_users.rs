//! BatchUpdateUsers over every protocol: an atomic success, and an invalid item failing the whole batch.

use http::Method;
use serde_json::json;
use user_service::pb;

use super::{Harness, blank_users, call, keep};

pub(super) async fn batch_update_users(h: &Harness, ids: &[String]) {
    // BatchUpdateUsers: atomic success, and an invalid item failing the whole batch.
    h.same_everywhere(
        "BatchUpdateUsers",
        |i| {
            let id = ids[i].clone();
            call(
                "BatchUpdateUsers",
                pb::BatchUpdateUsersRequest {
                    requests: vec![pb::UpdateUserRequest {
                        user: Some(pb::User {
                            id: id.clone(),
                            description: "batched".into(),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["description".into()],
                        }),
                        ..Default::default()
                    }],
                },
                Method::POST,
                "/v1/users:batchUpdate",
                Some(
                    json!({"requests": [{"user": {"id": id, "description": "batched"}, "updateMask": "description"}]}),
                ),
            )
        },
        blank_users,
    )
    .await;
    h.same_everywhere(
        "BatchUpdateUsers invalid",
        |i| {
            let id = ids[i].clone();
            call(
                "BatchUpdateUsers",
                pb::BatchUpdateUsersRequest {
                    requests: vec![pb::UpdateUserRequest {
                        user: Some(pb::User {
                            id: id.clone(),
                            time_zone: "Nowhere/City".into(),
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["time_zone".into()],
                        }),
                        ..Default::default()
                    }],
                },
                Method::POST,
                "/v1/users:batchUpdate",
                Some(
                    json!({"requests": [{"user": {"id": id, "timeZone": "Nowhere/City"}, "updateMask": "time_zone"}]}),
                ),
            )
        },
        keep,
    )
    .await;
}
