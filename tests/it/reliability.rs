//! A lost-update checker in the spirit of Jepsen's list-append: many clients over gRPC, gRPC-Web and REST
//! append unique tokens to one user (each an `attributes.<token>` key), with fresh etags, without etags and with
//! stale ones. Afterwards the user must hold exactly the acknowledged tokens, none of the refused ones, and one
//! revision per acknowledged change.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use prost::Message;
use serde_json::json;
use tonic::Code;
use user_service::pb;

use crate::backend_tests;
use crate::http::HttpClient;
use crate::support::{TestApp, create, user};

backend_tests!(
    no_acknowledged_append_is_lost,
    graceful_shutdown_under_load_loses_nothing
);

const CLIENTS: usize = 12;
const APPENDS_PER_CLIENT: usize = 25;

#[derive(Debug, Clone, Copy)]
enum Via {
    Grpc,
    GrpcWeb,
    Rest,
}

#[derive(Debug, Clone, Copy)]
enum EtagUse {
    None,
    Fresh,
    Stale,
}

/// The outcome of one append: acknowledged, or refused with a code.
type Appended = Result<(), Code>;

fn attribute_value() -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::BoolValue(true)),
    }
}

async fn append(app: &TestApp, http: &HttpClient, via: Via, id: &str, token: &str, etag: &str) -> Appended {
    let request = pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.into(),
            attributes: Some(prost_types::Struct {
                fields: [(token.to_owned(), attribute_value())].into(),
            }),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec![format!("attributes.{token}")],
        }),
        ..Default::default()
    };
    match via {
        Via::Grpc => {
            let mut client = app.client.clone();
            client.update_user(request).await.map(|_| ()).map_err(|s| s.code())
        }
        Via::GrpcWeb => {
            let (message, trailers) = http
                .grpc_web(
                    false,
                    false,
                    "/users.v1.UserService/UpdateUser",
                    &request.encode_to_vec(),
                    &[],
                )
                .await;
            match tonic::Status::from_header_map(&trailers) {
                Some(status) if status.code() != Code::Ok => Err(status.code()),
                _ if message.is_some() => Ok(()),
                _ => Err(Code::Unknown),
            }
        }
        Via::Rest => {
            let if_match = format!("\"{etag}\"");
            let headers: Vec<(&str, &str)> = if etag.is_empty() {
                vec![]
            } else {
                vec![("if-match", if_match.as_str())]
            };
            let response = http
                .rest(
                    Method::PATCH,
                    &format!("/v1/users/{id}?updateMask=attributes.{token}"),
                    Some(json!({"attributes": {token: true}})),
                    &headers,
                )
                .await;
            if response.status == StatusCode::OK {
                Ok(())
            } else {
                let name = response.json()["error"]["status"].as_str().unwrap_or("").to_owned();
                Err(match name.as_str() {
                    "ABORTED" => Code::Aborted,
                    _ => Code::Unknown,
                })
            }
        }
    }
}

async fn no_acknowledged_append_is_lost(app: TestApp) {
    let mut c = app.client.clone();
    let target = create(&mut c, user("appends@example.com")).await;
    let stale_etag = target.etag.clone();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let id = target.id.clone();
        let stale = stale_etag.clone();
        let app = &app;
        tasks.push(async move {
            let http = HttpClient::new(app.addr);
            let via = [Via::Grpc, Via::GrpcWeb, Via::Rest][client % 3];
            let mut acknowledged = Vec::new();
            let mut refused = Vec::new();
            for i in 0..APPENDS_PER_CLIENT {
                let token = format!("c{client}_{i}");
                let etag_use = [EtagUse::None, EtagUse::Fresh, EtagUse::Stale][(client + i) % 3];
                let etag = match etag_use {
                    EtagUse::None => String::new(),
                    EtagUse::Stale => stale.clone(),
                    EtagUse::Fresh => {
                        let mut reader = app.client.clone();
                        reader
                            .get_user(pb::GetUserRequest { id: id.clone() })
                            .await
                            .expect("read")
                            .into_inner()
                            .etag
                    }
                };
                match append(app, &http, via, &id, &token, &etag).await {
                    Ok(()) => acknowledged.push(token),
                    Err(code) => {
                        assert_eq!(
                            code,
                            Code::Aborted,
                            "{token} via {via:?} with {etag_use:?}: only etag conflicts may fail"
                        );
                        if matches!(etag_use, EtagUse::None) {
                            panic!("{token}: an append without an etag was refused");
                        }
                        refused.push(token);
                    }
                }
            }
            (acknowledged, refused)
        });
    }
    let results = futures::future::join_all(tasks).await;
    let acknowledged: BTreeSet<String> = results.iter().flat_map(|(a, _)| a.iter().cloned()).collect();
    let refused: BTreeSet<String> = results.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
    assert!(
        refused.len() >= CLIENTS * APPENDS_PER_CLIENT / 3,
        "every stale-etag append is refused"
    );

    let last = c
        .get_user(pb::GetUserRequest { id: target.id.clone() })
        .await
        .expect("get")
        .into_inner();
    let present: BTreeSet<String> = last
        .attributes
        .map(|a| a.fields.into_keys().collect())
        .unwrap_or_default();
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    let phantom: Vec<&String> = present.difference(&acknowledged).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        phantom.is_empty(),
        "present but never acknowledged (refused or unknown): {phantom:?}"
    );
    assert_eq!(
        last.revision as usize,
        acknowledged.len() + 1,
        "one revision per acknowledged change"
    );

    // The audit trail tells the same story: one revision per append, each naming its token.
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: target.id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner()
        .revisions;
    assert_eq!(revisions.len(), acknowledged.len() + 1);
    let recorded: BTreeSet<String> = revisions
        .iter()
        .filter(|r| r.revision > 1)
        .flat_map(|r| r.update_mask.clone().map(|m| m.paths).unwrap_or_default())
        .map(|p| p.trim_start_matches("attributes.").to_owned())
        .collect();
    assert_eq!(recorded, acknowledged);
    eprintln!(
        "lost-update check: {} appends acknowledged, {} refused (stale or raced etags), 0 lost",
        acknowledged.len(),
        refused.len()
    );
}

/// Shutting down (as on SIGTERM) while writers are busy: every acknowledged write is in the database afterwards,
/// and calls already running finish instead of being cut off.
async fn graceful_shutdown_under_load_loses_nothing(mut app: TestApp) {
    let config = user_service::config::ServeConfig::for_database(&app.database_url);
    let mut writers = Vec::new();
    for w in 0..6 {
        let mut client = app.new_client().await;
        writers.push(tokio::spawn(async move {
            let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
            for i in 0..10_000 {
                match client
                    .create_user(pb::CreateUserRequest {
                        user: Some(user(&format!("s{w}_{i}@example.com"))),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(u) => acknowledged.push(u.into_inner().id),
                    Err(status) => {
                        failures.push(status);
                        break;
                    }
                }
            }
            (acknowledged, failures)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    app.stop().await;
    let mut acknowledged = Vec::new();
    for writer in writers {
        let (ids, failures) = writer.await.expect("writer");
        for status in &failures {
            // After shutdown starts, calls are refused: UNAVAILABLE once the listener is closed, or a transport
            // error the client reports itself when its request crosses the server's GOAWAY. The server must
            // never answer a call with INTERNAL.
            let refused_by_transport = std::error::Error::source(status).is_some();
            assert!(status.code() != Code::Internal || refused_by_transport, "{status:?}");
        }
        acknowledged.extend(ids);
    }
    assert!(!acknowledged.is_empty());
    let store = user_service::store::Store::open(&config.database.store_options()).expect("reopen");
    for id in &acknowledged {
        let id = uuid::Uuid::parse_str(id).expect("uuid");
        assert!(
            store.get(id).await.expect("read").is_some(),
            "acknowledged user {id} missing after shutdown"
        );
    }
    eprintln!(
        "graceful shutdown: {} writes acknowledged under load, all present",
        acknowledged.len()
    );
}

/// Broken or stalled input on the wire gets an answer (or a closed connection), and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frames_and_stalled_bodies_do_not_stop_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start_with(crate::support::Backend::Sqlite, |c| {
        c.request_timeout = std::time::Duration::from_secs(1)
    })
    .await;
    let http = HttpClient::new(app.addr);
    // A gRPC-Web frame that announces 100 bytes and carries 3.
    let response = http
        .send(
            false,
            Method::POST,
            "/users.v1.UserService/GetUser",
            &[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")],
            vec![0u8, 0, 0, 0, 100, 1, 2, 3],
        )
        .await;
    let status = response
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let in_body = String::from_utf8_lossy(&response.body).contains("grpc-status");
    assert!(
        status.is_some_and(|s| s != "0") || in_body,
        "a truncated frame is answered with an error status"
    );
    // Garbage that is not protobuf at all.
    let response = http
        .send(
            false,
            Method::POST,
            "/users.v1.UserService/GetUser",
            &[("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")],
            vec![0u8, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "gRPC-Web carries errors in its trailers"
    );
    // A REST body that promises 1000 bytes and stalls after 10: the time limit answers it.
    let token = crate::support::admin_token();
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    slow.write_all(
        format!(
            "POST /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"email\": "
        )
        .as_bytes(),
    )
    .await
    .expect("partial body");
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), slow.read(&mut answer))
        .await
        .expect("answered within the time limit")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(read == 0 || head.starts_with("HTTP/1.1 504"), "{head}");
    // Still serving.
    let listed = http.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_eq!(listed.status, StatusCode::OK);
}
