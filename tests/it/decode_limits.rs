//! Repeated-field limits hold while a request is still bytes, on every protocol: a batch of two million empty
//! items, a user with hundreds of labels and an attributes tree of thousands of values are refused by name,
//! and the server keeps serving. (Their memory cost is measured by tests/reliability/decode_bombs.sh.)

use http::{Method, StatusCode};
use prost::Message;
use tonic::Code;
use user_service::pb;

use crate::http::HttpClient;
use crate::support::{Backend, TestApp, expect_code, violation_fields};

/// `requests` field (1), length 0, `n` times: a BatchUpdateUsersRequest of `n` empty items.
fn empty_batch(n: usize) -> Vec<u8> {
    [0x0a, 0x00].repeat(n)
}

fn violation_description(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.description.clone()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_million_batch_items_are_refused_before_decoding() {
    let app = TestApp::start(Backend::Sqlite).await;
    let http = HttpClient::new(app.addr);
    // 4,000,000 bytes: under the 4 MiB message limit, two million items.
    let (message, trailers) = http
        .grpc_web(
            false,
            false,
            "/users.v1.UserService/BatchUpdateUsers",
            &empty_batch(2_000_000),
            &[],
        )
        .await;
    assert!(message.is_none());
    let status = tonic::Status::from_header_map(&trailers).expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["requests"]);
    assert_eq!(
        violation_description(&status),
        "has 2000000 items; at most 1000 are allowed"
    );

    // REST: the JSON array is counted before it is parsed.
    let mut body = String::from("{\"requests\":[");
    body.push_str(&vec!["{}"; 1_300_000].join(","));
    body.push_str("]}");
    let response = http
        .send(
            false,
            Method::POST,
            "/v1/users:batchUpdate",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let error = response.json();
    assert_eq!(
        error["error"]["message"],
        "requests: has 1300000 items; at most 1000 are allowed"
    );

    // gRPC, with the generated client: one item too many.
    let mut client = app.client.clone();
    let status = expect_code(
        client
            .batch_update_users(pb::BatchUpdateUsersRequest {
                requests: vec![pb::UpdateUserRequest::default(); 1001],
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        violation_description(&status),
        "has 1001 items; at most 1000 are allowed"
    );

    // The server is still there for everyone else.
    let listed = client
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("served after the bombs");
    assert!(listed.into_inner().users.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_of_a_user_are_bounded_inside_a_batch_and_alone() {
    let app = TestApp::start(Backend::Sqlite).await;
    let labels = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let many_labels = pb::User {
        id: uuid::Uuid::now_v7().to_string(),
        labels: labels(5000),
        ..Default::default()
    };
    let mut client = app.client.clone();
    let status = expect_code(
        client
            .batch_update_users(pb::BatchUpdateUsersRequest {
                requests: vec![
                    pb::UpdateUserRequest::default(),
                    pb::UpdateUserRequest {
                        user: Some(many_labels.clone()),
                        ..Default::default()
                    },
                ],
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["requests[1].user.labels"]);
    assert_eq!(
        violation_description(&status),
        "has 5000 items; at most 256 are allowed"
    );

    // An attributes tree of 20,000 values in 60 KB: refused as a whole, by the field that holds it.
    let tree = prost_types::Struct {
        fields: [(
            "list".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                    values: vec![
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::BoolValue(true)),
                        };
                        20_000
                    ],
                })),
            },
        )]
        .into(),
    };
    let request = pb::UpdateUserRequest {
        user: Some(pb::User {
            id: uuid::Uuid::now_v7().to_string(),
            attributes: Some(tree),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["attributes".into()],
        }),
        ..Default::default()
    };
    let status = expect_code(client.update_user(request.clone()).await, Code::InvalidArgument);
    assert_eq!(violation_fields(&status), vec!["user.attributes"]);
    let (_, trailers) = HttpClient::new(app.addr)
        .grpc_web(
            true,
            true,
            "/users.v1.UserService/UpdateUser",
            &request.encode_to_vec(),
            &[],
        )
        .await;
    let web = tonic::Status::from_header_map(&trailers).expect("a status");
    assert_eq!(violation_fields(&web), vec!["user.attributes"]);

    // The same over REST, where the tree is JSON.
    let mut body = String::from("{\"attributes\":{\"list\":[");
    body.push_str(&vec!["true"; 20_000].join(","));
    body.push_str("]}}");
    let response = HttpClient::new(app.addr)
        .send(
            false,
            Method::PATCH,
            &format!("/v1/users/{}", uuid::Uuid::now_v7()),
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let message = response.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with("attributes: has more than 16384 nested values"),
        "{message}"
    );
}
