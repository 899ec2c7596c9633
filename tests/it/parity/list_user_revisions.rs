//! ListUserRevisions over every protocol: the same history of each protocol's own user, left by the steps
//! before it.

use http::Method;
use serde_json::{Value, json};
use user_service::pb;

use super::{Harness, PROTOCOLS, call};

pub(super) async fn list_user_revisions(h: &Harness, ids: &[String]) {
    let n = PROTOCOLS.len();
    // ListUserRevisions of each protocol's own user: the same history everywhere.
    let revisions = h
        .same_everywhere(
            "ListUserRevisions",
            |i| {
                let id = ids[i].clone();
                call(
                    "ListUserRevisions",
                    pb::ListUserRevisionsRequest {
                        id: id.clone(),
                        ..Default::default()
                    },
                    Method::GET,
                    format!("/v1/users/{id}/revisions"),
                    None,
                )
            },
            |v| {
                if let Some(items) = v.get_mut("revisions").and_then(Value::as_array_mut) {
                    for item in items {
                        item["createTime"] = json!("*");
                        for side in ["before", "after"] {
                            for k in ["email", "delete_time", "purge_time"] {
                                if item[side].get(k).is_some_and(|x| !x.is_null()) {
                                    item[side][k] = json!("*");
                                }
                            }
                        }
                    }
                }
            },
        )
        .await;
    let history = revisions[n - 1].value()["revisions"]
        .as_array()
        .expect("revisions")
        .clone();
    assert_eq!(
        history.len(),
        7,
        "create, update, disable, enable, delete, undelete, batch"
    );
    assert_eq!(history[0]["updateMask"], "description");
    assert_eq!(
        history[5]["updateMask"], "givenName,familyName,labels.tier",
        "mask paths in their proto3 JSON (lowerCamelCase) form"
    );
}
