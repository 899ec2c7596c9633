//! The parity matrix: every RPC over gRPC, gRPC-Web (binary and text, HTTP/1.1 and HTTP/2) and REST gives the
//! same result, or the same error code, reason and field violations, for the same input.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic_types::StatusExt;
use user_service::pb;

use crate::backend_tests;
use crate::http::HttpClient;
use crate::support::TestApp;

backend_tests!(every_rpc_behaves_the_same_over_every_protocol);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Grpc,
    WebH1,
    WebH2,
    WebTextH1,
    WebTextH2,
    Rest,
}

pub(crate) const PROTOCOLS: [Protocol; 6] = [
    Protocol::Grpc,
    Protocol::WebH1,
    Protocol::WebH2,
    Protocol::WebTextH1,
    Protocol::WebTextH2,
    Protocol::Rest,
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Ok(Value),
    Err {
        code: i32,
        reason: String,
        violations: Vec<String>,
    },
}

impl Outcome {
    fn value(&self) -> &Value {
        match self {
            Outcome::Ok(v) => v,
            Outcome::Err { .. } => panic!("expected success, got {self:?}"),
        }
    }
}

/// One call in both forms: the protobuf request of the RPC and the equivalent REST request.
pub(crate) struct Call {
    pub rpc: &'static str,
    pub request: Vec<u8>,
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

pub(crate) fn call(
    rpc: &'static str,
    request: impl Message,
    method: Method,
    path: impl Into<String>,
    body: Option<Value>,
) -> Call {
    Call {
        rpc,
        request: request.encode_to_vec(),
        method,
        path: path.into(),
        body,
        headers: Vec::new(),
    }
}

fn outcome_of_status(status: &tonic::Status) -> Outcome {
    Outcome::Err {
        code: status.code() as i32,
        reason: status.get_details_error_info().map(|i| i.reason).unwrap_or_default(),
        violations: status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default(),
    }
}

fn code_number(name: &str) -> i32 {
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    .iter()
    .position(|n| *n == name)
    .map_or(-1, |p| p as i32)
}

pub(crate) struct Harness {
    token: Option<String>,
    http: HttpClient,
    h2: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    base: String,
    pool: DescriptorPool,
}

impl Harness {
    /// A harness whose calls carry `token` (or none) on every protocol.
    pub(crate) fn new(app: &TestApp, token: Option<String>) -> Harness {
        Harness {
            token: token.clone(),
            http: HttpClient::with_token(app.addr, token),
            h2: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            base: format!("http://{}", app.addr),
            pool: DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors"),
        }
    }

    fn output_json(&self, rpc: &str, bytes: &[u8]) -> Value {
        let method = self
            .pool
            .get_service_by_name("users.v1.UserService")
            .and_then(|s| s.methods().find(|m| m.name() == rpc))
            .expect("rpc exists");
        let message = DynamicMessage::decode(method.output(), bytes).expect("decodes");
        user_service::transcode::json::message_json(&message).expect("json")
    }

    /// Plain gRPC over HTTP/2, framed by hand, status from the HTTP/2 trailers.
    async fn grpc(&self, c: &Call) -> Outcome {
        let mut frame = BytesMut::new();
        frame.put_u8(0);
        frame.put_u32(c.request.len() as u32);
        frame.put_slice(&c.request);
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(format!("{}/users.v1.UserService/{}", self.base, c.rpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in &c.headers {
            if *name != "if-match" {
                request = request.header(*name, value);
            }
        }
        let response = self
            .h2
            .request(request.body(Full::new(frame.freeze())).expect("request"))
            .await
            .expect("exchange");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let mut data = collected.to_bytes();
        self.finish(
            c.rpc,
            parts.headers,
            trailers,
            (data.remaining() >= 5).then(|| {
                data.advance(1);
                let len = data.get_u32() as usize;
                data.split_to(len)
            }),
        )
    }

    fn finish(&self, rpc: &str, headers: HeaderMap, trailers: HeaderMap, message: Option<Bytes>) -> Outcome {
        let status = tonic::Status::from_header_map(&trailers).or_else(|| tonic::Status::from_header_map(&headers));
        match status {
            Some(s) if s.code() != tonic::Code::Ok => outcome_of_status(&s),
            _ => Outcome::Ok(self.output_json(rpc, &message.expect("a response message"))),
        }
    }

    pub(crate) async fn invoke(&self, protocol: Protocol, c: &Call) -> Outcome {
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .filter(|(n, _)| protocol == Protocol::Rest || *n != "if-match")
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let headers = &headers;
        let web = |http2, text| async move {
            let (message, trailers) = self
                .http
                .grpc_web(
                    http2,
                    text,
                    &format!("/users.v1.UserService/{}", c.rpc),
                    &c.request,
                    headers,
                )
                .await;
            self.finish(c.rpc, HeaderMap::new(), trailers, message)
        };
        match protocol {
            Protocol::Grpc => self.grpc(c).await,
            Protocol::WebH1 => web(false, false).await,
            Protocol::WebH2 => web(true, false).await,
            Protocol::WebTextH1 => web(false, true).await,
            Protocol::WebTextH2 => web(true, true).await,
            Protocol::Rest => {
                let response = self.http.rest(c.method.clone(), &c.path, c.body.clone(), headers).await;
                let body = response.json();
                if response.status.is_success() {
                    if let Some(etag) = body.get("etag").and_then(Value::as_str) {
                        let header = response.headers.get("etag").and_then(|v| v.to_str().ok());
                        assert_eq!(
                            header,
                            Some(format!("\"{etag}\"").as_str()),
                            "ETag header carries the etag"
                        );
                    }
                    return Outcome::Ok(body);
                }
                let error = &body["error"];
                assert_eq!(error["code"].as_u64(), Some(u64::from(response.status.as_u16())));
                let details = error["details"].as_array().cloned().unwrap_or_default();
                let detail = |t: &str| {
                    details
                        .iter()
                        .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
                        .cloned()
                };
                Outcome::Err {
                    code: code_number(error["status"].as_str().unwrap_or("")),
                    reason: detail("ErrorInfo")
                        .and_then(|d| d["reason"].as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    violations: detail("BadRequest")
                        .and_then(|d| d["fieldViolations"].as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|v| v["field"].as_str().map(str::to_owned))
                        .collect(),
                }
            }
        }
    }

    /// Runs one call per protocol (built by `make`, which may use that protocol's own user) and asserts that all
    /// outcomes are equal once `normalize` has blanked what legitimately differs (ids, addresses, times, etags).
    async fn same_everywhere(
        &self,
        what: &str,
        make: impl Fn(usize) -> Call,
        normalize: fn(&mut Value),
    ) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for (i, protocol) in PROTOCOLS.iter().enumerate() {
            outcomes.push(self.invoke(*protocol, &make(i)).await);
        }
        let normalized: Vec<Outcome> = outcomes
            .iter()
            .cloned()
            .map(|o| match o {
                Outcome::Ok(mut v) => {
                    normalize(&mut v);
                    Outcome::Ok(v)
                }
                e => e,
            })
            .collect();
        for (protocol, outcome) in PROTOCOLS.iter().zip(&normalized).skip(1) {
            assert_eq!(outcome, &normalized[0], "{what}: {protocol:?} differs from gRPC");
        }
        outcomes
    }
}

fn keep(_: &mut Value) {}

/// Blanks the fields that differ between users created by different protocols.
fn blank_user(v: &mut Value) {
    for key in [
        "id",
        "email",
        "createTime",
        "updateTime",
        "etag",
        "deleteTime",
        "purgeTime",
    ] {
        if v.get(key).is_some_and(|x| !x.is_null()) {
            v[key] = json!("*");
        }
    }
}

fn blank_users(v: &mut Value) {
    for key in ["users", "revisions"] {
        if let Some(items) = v.get_mut(key).and_then(Value::as_array_mut) {
            for item in items {
                blank_user(item);
                if let Some(after) = item.get_mut("after") {
                    for k in ["email", "delete_time", "purge_time"] {
                        if after.get(k).is_some_and(|x| !x.is_null()) {
                            after[k] = json!("*");
                        }
                    }
                }
            }
        }
    }
}

async fn every_rpc_behaves_the_same_over_every_protocol(app: TestApp) {
    let h = Harness::new(&app, Some(crate::support::admin_token()));
    let n = PROTOCOLS.len();

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
        history[5]["updateMask"], "given_name,family_name,labels.tier",
        "REST shows mask paths verbatim"
    );
}
