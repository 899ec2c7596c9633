//! The Connect protocol (unary calls with protobuf and JSON bodies, its error format, headers and limits) and
//! server reflection in both versions, with Google's error model among the files it serves.

use std::io::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use http::{Method, StatusCode};
use prost::Message;
use serde_json::{Value, json};
use user_service::pb;

use crate::backend_tests;
use crate::http::{HttpClient, HttpResponse};
use crate::support::{Backend, TestApp, create, mask};

/// Asks reflection, in one of its two versions, for the services and for the file that defines `symbol`;
/// returns the service names and the names of the files answered (the defining file first).
macro_rules! reflect {
    ($version:ident, $addr:expr, $symbol:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let channel = tonic::transport::Channel::from_shared(format!("http://{}", $addr))
            .expect("uri")
            .connect()
            .await
            .expect("reflection client connects");
        let mut client = ServerReflectionClient::new(channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol($symbol.to_owned()),
        ]
        .map(|request| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        });
        let mut answers = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection answers")
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(answer) = answers.message().await.expect("a reflection answer") {
            match answer.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                Some(MessageResponse::FileDescriptorResponse(found)) => {
                    for bytes in found.file_descriptor_proto {
                        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("a file");
                        files.push((file.name().to_owned(), file));
                    }
                }
                other => panic!("unexpected reflection answer: {other:?}"),
            }
        }
        (services, files)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_services_and_serve_the_error_details() {
    let app = TestApp::start(Backend::Sqlite).await;
    let (v1_services, v1_files) = reflect!(v1, app.addr, "google.rpc.BadRequest");
    let (alpha_services, alpha_files) = reflect!(v1alpha, app.addr, "google.rpc.BadRequest");
    for services in [&v1_services, &alpha_services] {
        for expected in [
            "users.v1.UserService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
    for files in [&v1_files, &alpha_files] {
        let (name, file) = files.first().expect("the defining file");
        assert_eq!(name, "google/rpc/error_details.proto");
        let bad_request = file
            .message_type
            .iter()
            .find(|m| m.name() == "BadRequest")
            .expect("BadRequest is in the file");
        assert!(bad_request.nested_type.iter().any(|m| m.name() == "FieldViolation"));
        assert!(
            file.dependency.iter().any(|d| d == "google/protobuf/duration.proto"),
            "{:?}",
            file.dependency
        );
    }
    // The status message that carries the details, and ErrorInfo, resolve too.
    let (_, files) = reflect!(v1alpha, app.addr, "google.rpc.Status");
    assert_eq!(files.first().map(|(n, _)| n.as_str()), Some("google/rpc/status.proto"));
    let (_, files) = reflect!(v1, app.addr, "google.rpc.ErrorInfo");
    assert_eq!(
        files.first().map(|(n, _)| n.as_str()),
        Some("google/rpc/error_details.proto")
    );
}

/// A Connect unary call: POST to the procedure with the codec's content type and protocol version 1.
async fn call(
    http: &HttpClient,
    http2: bool,
    method: &str,
    content_type: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut all = vec![("content-type", content_type), ("connect-protocol-version", "1")];
    all.extend_from_slice(headers);
    http.send(
        http2,
        Method::POST,
        &format!("/users.v1.UserService/{method}"),
        &all,
        body,
    )
    .await
}

async fn call_json(http: &HttpClient, method: &str, body: Value) -> HttpResponse {
    call(http, false, method, "application/json", body.to_string(), &[]).await
}

async fn call_proto<M: Message>(http: &HttpClient, method: &str, message: &M) -> HttpResponse {
    call(http, true, method, "application/proto", message.encode_to_vec(), &[]).await
}

/// A Connect error: its HTTP status, Connect code and details decoded from base64 (no padding) by type.
struct ConnectError {
    http: StatusCode,
    code: String,
    message: String,
    details: Vec<(String, Vec<u8>)>,
}

fn connect_error(response: &HttpResponse) -> ConnectError {
    assert_eq!(
        response.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "Connect errors are JSON"
    );
    let body = response.json();
    let details = body["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .map(|d| {
                    let value = d["value"].as_str().expect("a detail value");
                    assert!(!value.ends_with('='), "Connect detail values have no padding: {value}");
                    let bytes = STANDARD_NO_PAD.decode(value).expect("base64 without padding");
                    (d["type"].as_str().expect("a detail type").to_owned(), bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    ConnectError {
        http: response.status,
        code: body["code"].as_str().expect("a code").to_owned(),
        message: body["message"].as_str().unwrap_or_default().to_owned(),
        details,
    }
}

impl ConnectError {
    fn detail<M: Message + Default>(&self, type_name: &str) -> M {
        let (_, bytes) = self
            .details
            .iter()
            .find(|(t, _)| t == type_name)
            .unwrap_or_else(|| panic!("no {type_name} among {:?}", self.details));
        M::decode(bytes.as_slice()).expect("the detail decodes")
    }
}

backend_tests!(
    unary_calls_with_proto_and_json_bodies,
    a_stale_etag_is_aborted_with_its_error_info,
    invalid_fields_are_invalid_argument_with_bad_request_violations,
);

async fn unary_calls_with_proto_and_json_bodies(app: TestApp) {
    let http = HttpClient::new(app.addr);
    // Create with JSON: the body is the whole request message in proto3 JSON.
    let created = call_json(
        &http,
        "CreateUser",
        json!({"user": {"email": "connect@example.com", "givenName": "Ana", "labels": {"team": "core"}}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(
        created.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let created = created.json();
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["givenName"], "Ana");

    // Get with protobuf, over HTTP/2.
    let got = call_proto(&http, "GetUser", &pb::GetUserRequest { id: id.clone() }).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/proto")
    );
    let got = pb::User::decode(got.body).expect("a User");
    assert_eq!(got.email, "connect@example.com");
    assert_eq!(got.labels.get("team").map(String::as_str), Some("core"));

    // Update with JSON, a mask and the current etag: only the masked field changes.
    let updated = call_json(
        &http,
        "UpdateUser",
        json!({"user": {"id": id, "etag": got.etag, "givenName": "Bea", "familyName": "Not in the mask"},
               "updateMask": "givenName,labels.env"}),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK, "{:?}", updated.body);
    let updated = updated.json();
    assert_eq!(updated["givenName"], "Bea");
    assert_eq!(updated["familyName"], "");
    assert_eq!(updated["labels"], json!({"team": "core"}));
    assert_ne!(updated["etag"], json!(got.etag));

    // Update with protobuf and a mask in snake_case.
    let updated = call_proto(
        &http,
        "UpdateUser",
        &pb::UpdateUserRequest {
            user: Some(pb::User {
                id: id.clone(),
                family_name: "Lee".into(),
                ..Default::default()
            }),
            update_mask: mask(&["family_name"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    let updated = pb::User::decode(updated.body).expect("a User");
    assert_eq!(
        (updated.given_name.as_str(), updated.family_name.as_str()),
        ("Bea", "Lee")
    );

    // A JSON answer's masks are written in the proto3 JSON form (lowerCamelCase), as REST writes them.
    let revisions = call_json(&http, "ListUserRevisions", json!({"id": id})).await;
    assert_eq!(revisions.status, StatusCode::OK, "{:?}", revisions.body);
    assert_eq!(revisions.json()["revisions"][0]["updateMask"], "familyName");

    // The calls are counted under their own protocol.
    let metrics = http.send(false, Method::GET, "/metrics", &[], Vec::new()).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.contains("rpc=\"GetUser\",protocol=\"connect\",code=\"OK\""),
        "{metrics}"
    );
}

async fn a_stale_etag_is_aborted_with_its_error_info(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let mut client = app.client.clone();
    let user = create(&mut client, crate::support::user("stale@example.com")).await;
    let update =
        |etag: String| json!({"user": {"id": user.id, "etag": etag, "givenName": "X"}, "updateMask": "givenName"});
    let first = call_json(&http, "UpdateUser", update(user.etag.clone())).await;
    assert_eq!(first.status, StatusCode::OK);
    let stale = call_json(&http, "UpdateUser", update(user.etag.clone())).await;
    let error = connect_error(&stale);
    assert_eq!(error.http, StatusCode::CONFLICT);
    assert_eq!(error.code, "aborted");
    let info: tonic_types::pb::ErrorInfo = error.detail("google.rpc.ErrorInfo");
    assert_eq!(info.reason, "ETAG_MISMATCH");
    assert_eq!(info.domain, "users.v1");
    // The readable form rides along for people.
    assert_eq!(stale.json()["details"][0]["debug"]["reason"], "ETAG_MISMATCH");
}

async fn invalid_fields_are_invalid_argument_with_bad_request_violations(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let response = call_proto(
        &http,
        "CreateUser",
        &pb::CreateUserRequest {
            user: Some(crate::support::user("not an e-mail")),
            ..Default::default()
        },
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    let bad: tonic_types::pb::BadRequest = error.detail("google.rpc.BadRequest");
    let fields: Vec<&str> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, vec!["user.email"]);

    // An unknown JSON field is refused by name, never dropped.
    let response = call_json(
        &http,
        "CreateUser",
        json!({"user": {"email": "u@example.com", "nickname": "x"}}),
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    assert!(error.message.contains("nickname"), "{}", error.message);
    // Nothing was created by either.
    let listed = call_json(&http, "ListUsers", json!({})).await.json();
    assert_eq!(listed["users"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_unauthenticated_in_connects_format() {
    let app = TestApp::start(Backend::Sqlite).await;
    let anonymous = HttpClient::with_token(app.addr, None);
    let response = call_json(
        &anonymous,
        "GetUser",
        json!({"id": "0190f6a0-0000-7000-8000-000000000000"}),
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert!(response.headers.contains_key("www-authenticate"));
    let info: tonic_types::pb::ErrorInfo = error.detail("google.rpc.ErrorInfo");
    assert_eq!(info.reason, "UNAUTHENTICATED");

    // A bad token over protobuf, the same.
    let forged = HttpClient::with_token(app.addr, Some("not.a.jwt".into()));
    let response = call_proto(&forged, "GetUser", &pb::GetUserRequest::default()).await;
    assert_eq!(connect_error(&response).code, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_ms_is_parsed_and_honoured() {
    let app = TestApp::start(Backend::Sqlite).await;
    let http = HttpClient::new(app.addr);
    let body = json!({"user": {"email": "late@example.com"}}).to_string();
    for bad in ["abc", "-1", "12345678901", "1.5", ""] {
        let response = call(
            &http,
            false,
            "CreateUser",
            "application/json",
            body.clone(),
            &[("connect-timeout-ms", bad)],
        )
        .await;
        let error = connect_error(&response);
        assert_eq!(
            (error.http, error.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_argument"),
            "{bad:?}"
        );
        assert!(error.message.contains("Connect-Timeout-Ms"), "{}", error.message);
    }
    // A deadline already past: the call is not made.
    let response = call(
        &http,
        false,
        "CreateUser",
        "application/json",
        body.clone(),
        &[("connect-timeout-ms", "0")],
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
    );
    let listed = call_json(&http, "ListUsers", json!({})).await.json();
    assert_eq!(listed["users"], json!([]), "nothing was created");

    // One millisecond for a batch that hashes ten passwords with Argon2id, each many milliseconds long.
    let requests: Vec<Value> = (0..10)
        .map(|n| json!({"user": {"id": format!("0190f6a0-0000-7000-8000-00000000000{n}"), "email": format!("p{n}@example.com"), "password": "Secret-Pass1"}, "updateMask": "*", "allowMissing": true}))
        .collect();
    let batch = json!({"requests": requests}).to_string();
    let response = call(
        &http,
        false,
        "BatchUpdateUsers",
        "application/json",
        batch.clone(),
        &[("connect-timeout-ms", "1")],
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded")
    );
    // A generous deadline lets the same call through.
    let response = call(
        &http,
        false,
        "BatchUpdateUsers",
        "application/json",
        batch,
        &[("connect-timeout-ms", "600000")],
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_accepted_and_other_encodings_refused() {
    let app = TestApp::start_with(Backend::Sqlite, |c| c.max_message_bytes = 64 * 1024).await;
    let http = HttpClient::new(app.addr);
    let body = json!({"user": {"email": "gzip@example.com"}}).to_string();
    let response = call(
        &http,
        false,
        "CreateUser",
        "application/json",
        gzip(body.as_bytes()),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(response.json()["email"], "gzip@example.com");
    let request = pb::CreateUserRequest {
        user: Some(crate::support::user("gzip-proto@example.com")),
        ..Default::default()
    };
    let response = call(
        &http,
        true,
        "CreateUser",
        "application/proto",
        gzip(&request.encode_to_vec()),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(response.status, StatusCode::OK);

    let response = call(
        &http,
        false,
        "CreateUser",
        "application/json",
        body.clone(),
        &[("content-encoding", "br")],
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::NOT_IMPLEMENTED, "unimplemented")
    );
    assert!(error.message.contains("gzip"), "{}", error.message);

    // A small body that inflates past the message limit is refused without inflating it all.
    let bomb = gzip(&vec![b' '; 8 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let response = call(
        &http,
        false,
        "CreateUser",
        "application/json",
        bomb,
        &[("content-encoding", "gzip")],
    )
    .await;
    let error = connect_error(&response);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "out_of_range")
    );
    // Not gzip at all.
    let response = call(
        &http,
        false,
        "CreateUser",
        "application/json",
        body,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(connect_error(&response).code, "invalid_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_by_the_limits() {
    let app = TestApp::start(Backend::Sqlite).await;
    let http = HttpClient::new(app.addr);
    let batch = pb::BatchUpdateUsersRequest {
        requests: vec![pb::UpdateUserRequest::default(); 1001],
    };
    let error = connect_error(&call_proto(&http, "BatchUpdateUsers", &batch).await);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    assert!(error.message.contains("at most 1000"), "{}", error.message);
    let bad: tonic_types::pb::BadRequest = error.detail("google.rpc.BadRequest");
    assert_eq!(bad.field_violations[0].field, "requests");

    let items = vec![json!({}); 1001];
    let error = connect_error(&call_json(&http, "BatchUpdateUsers", json!({"requests": items})).await);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    assert!(error.message.contains("at most 1000"), "{}", error.message);

    // Past the message size, refused with gRPC's words.
    let big = pb::CreateUserRequest {
        user: Some(pb::User {
            email: "big@example.com".into(),
            description: "x".repeat(5 << 20),
            ..Default::default()
        }),
        ..Default::default()
    };
    let error = connect_error(&call_proto(&http, "CreateUser", &big).await);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::BAD_REQUEST, "out_of_range")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_served_is_refused_clearly() {
    let app = TestApp::start(Backend::Sqlite).await;
    let http = HttpClient::new(app.addr);
    // The streaming protocol with JSON messages: an end-of-stream message with the error, in Connect's envelope.
    let response = call(&http, true, "ListUsers", "application/connect+json", Vec::new(), &[]).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body[0], 0x02, "an end-of-stream message");
    let length = u32::from_be_bytes([response.body[1], response.body[2], response.body[3], response.body[4]]);
    assert_eq!(usize::try_from(length).expect("small"), response.body.len() - 5);
    let end: Value = serde_json::from_slice(&response.body[5..]).expect("JSON");
    assert_eq!(end["error"]["code"], "unimplemented");

    // An unknown procedure.
    let error = connect_error(&call_json(&http, "NoSuchMethod", json!({})).await);
    assert_eq!(
        (error.http, error.code.as_str()),
        (StatusCode::NOT_FOUND, "unimplemented")
    );
    // Another protocol version.
    let response = http
        .send(
            false,
            Method::POST,
            "/users.v1.UserService/ListUsers",
            &[("content-type", "application/json"), ("connect-protocol-version", "2")],
            "{}",
        )
        .await;
    assert_eq!(connect_error(&response).code, "invalid_argument");
    // Without the version header, as connect-go servers allow by default.
    let response = http
        .send(
            false,
            Method::POST,
            "/users.v1.UserService/ListUsers",
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    // GET is not served.
    let response = http
        .send(
            false,
            Method::GET,
            "/users.v1.UserService/ListUsers?encoding=json&message=%7B%7D",
            &[("content-type", "application/json")],
            Vec::new(),
        )
        .await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
}

/// Splits a Connect streaming body into its envelopes: (flags, payload).
fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    assert!(body.is_empty(), "a partial envelope");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_over_the_connect_streaming_protocol() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let app = TestApp::start(Backend::Sqlite).await;
    // No token: reflection is open, as over gRPC.
    let http = HttpClient::with_token(app.addr, None);
    let mut body = Vec::new();
    for request in [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    ] {
        let message = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }
        .encode_to_vec();
        body.push(0);
        body.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        body.extend_from_slice(&message);
    }
    let headers = [
        ("content-type", "application/connect+proto"),
        ("connect-protocol-version", "1"),
    ];
    let response = http
        .send(
            true,
            Method::POST,
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            &headers,
            body,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/connect+proto")
    );
    let frames = envelopes(&response.body);
    assert_eq!(frames.len(), 3, "two answers and the end of the stream");
    let answers: Vec<_> = frames[..2]
        .iter()
        .map(|(flags, payload)| {
            assert_eq!(*flags, 0);
            ServerReflectionResponse::decode(payload.as_slice())
                .expect("an answer")
                .message_response
        })
        .collect();
    match &answers[0] {
        Some(MessageResponse::ListServicesResponse(list)) => {
            assert!(
                list.service.iter().any(|s| s.name == "users.v1.UserService"),
                "{list:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&answers[1], Some(MessageResponse::FileDescriptorResponse(_))),
        "{:?}",
        answers[1]
    );
    let (flags, end) = &frames[2];
    assert_eq!(*flags, 0x02);
    let end: Value = serde_json::from_slice(end).expect("JSON");
    assert!(end.get("error").is_none(), "{end}");

    // A streaming call the gate refuses ends with the refusal in the end-of-stream message.
    let response = http
        .send(
            true,
            Method::POST,
            "/users.v1.UserService/ListUsers",
            &headers,
            vec![0, 0, 0, 0, 0],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let frames = envelopes(&response.body);
    assert_eq!(frames.len(), 1);
    let end: Value = serde_json::from_slice(&frames[0].1).expect("JSON");
    assert_eq!(end["error"]["code"], "unauthenticated", "{end}");
}
