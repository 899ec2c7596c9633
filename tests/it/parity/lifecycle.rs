//! DisableUser, EnableUser, DeleteUser and UndeleteUser over every protocol, each on that protocol's own
//! user, and UndeleteUser of a user that is not deleted.

use http::Method;
use prost::Message;
use serde_json::json;
use user_service::pb;

use super::{Call, Harness, blank_user, call, keep};

pub(super) async fn lifecycle(h: &Harness, ids: &[String]) {
    // Lifecycle methods on each protocol's own user.
    for (rpc, path_verb) in [
        ("DisableUser", ":disable"),
        ("EnableUser", ":enable"),
        ("DeleteUser", ""),
        ("UndeleteUser", ":undelete"),
    ] {
        h.same_everywhere(
            rpc,
            |i| {
                let id = ids[i].clone();
                let (request, method, body) = match rpc {
                    "DisableUser" => (
                        pb::DisableUserRequest {
                            id: id.clone(),
                            reason: "audit".into(),
                            etag: String::new(),
                        }
                        .encode_to_vec(),
                        Method::POST,
                        Some(json!({"reason": "audit"})),
                    ),
                    "EnableUser" => (
                        pb::EnableUserRequest {
                            id: id.clone(),
                            etag: String::new(),
                        }
                        .encode_to_vec(),
                        Method::POST,
                        Some(json!({})),
                    ),
                    "DeleteUser" => (
                        pb::DeleteUserRequest {
                            id: id.clone(),
                            etag: String::new(),
                        }
                        .encode_to_vec(),
                        Method::DELETE,
                        None,
                    ),
                    _ => (
                        pb::UndeleteUserRequest {
                            id: id.clone(),
                            etag: String::new(),
                        }
                        .encode_to_vec(),
                        Method::POST,
                        Some(json!({})),
                    ),
                };
                Call {
                    rpc,
                    request,
                    method,
                    path: format!("/v1/users/{id}{path_verb}"),
                    body,
                    headers: Vec::new(),
                }
            },
            blank_user,
        )
        .await;
    }
    h.same_everywhere(
        "UndeleteUser not deleted",
        |i| {
            let id = ids[i].clone();
            call(
                "UndeleteUser",
                pb::UndeleteUserRequest {
                    id: id.clone(),
                    etag: String::new(),
                },
                Method::POST,
                format!("/v1/users/{id}:undelete"),
                Some(json!({})),
            )
        },
        keep,
    )
    .await;
}
