//! Snapshots of what REST clients read: the error body of each kind of error, and `/openapi.json`. A change to
//! any of them shows as a diff of a file in `tests/it/snapshots/`; values that differ per run are masked.
//! Review a change with `cargo insta review`, or run with `INSTA_UPDATE=always` and read the diff; CI never
//! writes snapshots (`INSTA_UPDATE=no`), so a missing or different one fails there.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::http::{HttpClient, HttpResponse};
use crate::support::{Backend, TestApp, token};

backend_tests!(every_kind_of_rest_error_has_its_body);

/// An id no user has, the same on every run so that messages naming it stay the same.
const UNKNOWN_ID: &str = "01890000-0000-7000-8000-000000000000";

/// What a client sees of one answer: the status and the JSON body.
fn seen(response: &HttpResponse) -> Value {
    json!({"status": response.status.as_u16(), "body": response.json()})
}

/// Asserts `value` against the snapshot `name`, masking what differs per run: the retry delay, the crate's
/// version, and each `(text, mask)` of `masks` (ids and etags) within error messages. The name is explicit so
/// that the SQLite and PostgreSQL variants compare against one snapshot: the bodies must not depend on the store.
fn assert_snapshot(name: &str, value: &Value, masks: &[(&str, &str)]) {
    let masks: Vec<(String, String)> = masks.iter().map(|(t, m)| ((*t).to_owned(), (*m).to_owned())).collect();
    let mut settings = insta::Settings::clone_current();
    settings.set_omit_expression(true);
    settings.add_redaction(".**.retryDelay", "[retry delay]");
    settings.add_redaction(".info.version", "[version]");
    settings.add_dynamic_redaction(".body.error.message", move |message, _| match message.as_str() {
        Some(text) => masks
            .iter()
            .fold(text.to_owned(), |text, (t, m)| text.replace(t, m))
            .into(),
        None => message,
    });
    settings.bind(|| insta::assert_json_snapshot!(name, value));
}

async fn every_kind_of_rest_error_has_its_body(app: TestApp) {
    let admin = HttpClient::new(app.addr);
    let created = admin
        .rest(
            Method::POST,
            "/v1/users",
            Some(json!({"email": "snap@example.com"})),
            &[],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let etag = created.json()["etag"].as_str().expect("etag").to_owned();
    let masks = [(id.as_str(), "[id]"), (etag.as_str(), "[etag]")];

    let invalid = admin
        .rest(
            Method::POST,
            "/v1/users",
            Some(json!({"email": "not-an-email", "phoneNumber": "1"})),
            &[],
        )
        .await;
    assert_snapshot("rest_error_invalid_fields", &seen(&invalid), &masks);

    let not_found = admin
        .rest(Method::GET, &format!("/v1/users/{UNKNOWN_ID}"), None, &[])
        .await;
    assert_snapshot("rest_error_not_found", &seen(&not_found), &masks);

    let stale = admin
        .rest(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"givenName": "Late"})),
            &[("if-match", "\"stale-etag\"")],
        )
        .await;
    assert_snapshot("rest_error_etag_mismatch", &seen(&stale), &masks);

    let someone = HttpClient::with_token(app.addr, Some(token("someone-else", &[])));
    let denied = someone.rest(Method::GET, &format!("/v1/users/{id}"), None, &[]).await;
    assert_snapshot("rest_error_permission_denied", &seen(&denied), &masks);

    let anonymous = HttpClient::with_token(app.addr, None);
    let unauthenticated = anonymous.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_snapshot("rest_error_unauthenticated", &seen(&unauthenticated), &masks);

    let unknown_field = admin
        .rest(
            Method::POST,
            "/v1/users",
            Some(json!({"email": "a@example.com", "nickname": "x"})),
            &[],
        )
        .await;
    assert_snapshot("rest_error_unknown_json_field", &seen(&unknown_field), &masks);

    let json_headers = [("content-type", "application/json")];
    let malformed = admin
        .send(false, Method::POST, "/v1/users", &json_headers, &b"{\"email\": "[..])
        .await;
    assert_snapshot("rest_error_malformed_json", &seen(&malformed), &masks);

    let too_large = admin
        .send(
            false,
            Method::POST,
            "/v1/users",
            &json_headers,
            vec![b' '; 5 * 1024 * 1024],
        )
        .await;
    assert_snapshot("rest_error_too_large", &seen(&too_large), &masks);
}

/// A caller past its burst: the limiter refills so slowly that no token comes back during the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_caller_gets_its_body() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.rate_limit = 1e-6;
        c.rate_burst = 1;
    })
    .await;
    let admin = HttpClient::new(app.addr);
    let first = admin.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let limited = admin.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_snapshot("rest_error_rate_limited", &seen(&limited), &[]);
}

/// The OpenAPI document, whole: every path, schema and error response a generated client is built from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_the_snapshot() {
    let app = TestApp::start(Backend::Sqlite).await;
    let response = HttpClient::new(app.addr)
        .rest(Method::GET, "/openapi.json", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_snapshot("openapi", &response.json(), &[]);
}
