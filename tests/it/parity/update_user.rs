//! UpdateUser over every protocol: an explicit mask with a clear and a map key, a stale etag, and a bad
//! mask with bad values.

use http::Method;
use serde_json::json;
use user_service::pb;

use super::{Harness, blank_user, call, keep};

pub(super) async fn update_user(h: &Harness, ids: &[String], etags: &[String]) {
    // UpdateUser on each protocol's own user: explicit mask with a clear and a map key.
    h.same_everywhere(
        "UpdateUser",
        |i| {
            let id = ids[i].clone();
            call(
                "UpdateUser",
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: id.clone(),
                        family_name: "Ruiz".into(),
                        labels: [("tier".to_owned(), "gold".to_owned())].into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["family_name".into(), "given_name".into(), "labels.tier".into()],
                    }),
                    ..Default::default()
                },
                Method::PATCH,
                format!("/v1/users/{id}?updateMask=family_name,given_name,labels.tier"),
                Some(json!({"familyName": "Ruiz", "labels": {"tier": "gold"}})),
            )
        },
        blank_user,
    )
    .await;
    h.same_everywhere(
        "UpdateUser stale etag",
        |i| {
            let id = ids[i].clone();
            let mut c = call(
                "UpdateUser",
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: id.clone(),
                        given_name: "Late".into(),
                        etag: etags[i].clone(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["given_name".into()],
                    }),
                    ..Default::default()
                },
                Method::PATCH,
                format!("/v1/users/{id}"),
                Some(json!({"givenName": "Late"})),
            );
            c.headers.push(("if-match", format!("\"{}\"", etags[i])));
            c
        },
        keep,
    )
    .await;
    h.same_everywhere(
        "UpdateUser bad mask and values",
        |i| {
            let id = ids[i].clone();
            call(
                "UpdateUser",
                pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: id.clone(),
                        phone_number: "12".into(),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["roles.0".into(), "phone_number".into()],
                    }),
                    ..Default::default()
                },
                Method::PATCH,
                format!("/v1/users/{id}?updateMask=roles.0,phone_number"),
                Some(json!({"phoneNumber": "12"})),
            )
        },
        keep,
    )
    .await;
}
