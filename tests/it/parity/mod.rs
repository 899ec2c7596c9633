//! The parity matrix: every RPC over gRPC, gRPC-Web (binary and text, HTTP/1.1 and HTTP/2) and REST gives the
//! same result, or the same error code, reason and field violations, for the same input. This file holds the
//! driver (one call in every protocol's form, and the comparison); each RPC's cases are in the file named after
//! it.

mod batch_update_users;
mod create_user;
mod get_user;
mod lifecycle;
mod list_user_revisions;
mod list_users;
mod lookup_user;
mod update_user;

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

/// The steps run in this order on one server: each later step works on the users the first one created, and the
/// last checks the history the others left.
async fn every_rpc_behaves_the_same_over_every_protocol(app: TestApp) {
    let h = Harness::new(&app, Some(crate::support::admin_token()));
    let (ids, etags) = create_user::create_user(&h).await;
    get_user::get_user(&h, &ids).await;
    lookup_user::lookup_user(&h).await;
    list_users::list_users(&h).await;
    update_user::update_user(&h, &ids, &etags).await;
    lifecycle::lifecycle(&h, &ids).await;
    batch_update_users::batch_update_users(&h, &ids).await;
    list_user_revisions::list_user_revisions(&h, &ids).await;
}
