//! REST specifics: mask inference, PUT, ETag/If-Match, routing errors, and every kind of malformed request
//! answered with a clear 4xx.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::http::HttpClient;
use crate::support::{Backend, TestApp};

backend_tests!(
    patch_infers_the_mask_and_put_replaces,
    etag_header_and_if_match,
    path_id_wins_and_both_spellings_are_accepted,
    malformed_requests_get_clear_client_errors,
);

async fn create(http: &HttpClient, body: Value) -> Value {
    let response = http.rest(Method::POST, "/v1/users", Some(body), &[]).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    response.json()
}

fn error_status(response: &crate::http::HttpResponse) -> String {
    response.json()["error"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn patch_infers_the_mask_and_put_replaces(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let user = create(
        &http,
        json!({"email": "rest@example.com", "givenName": "Ana", "familyName": "Lee", "description": "d",
               "labels": {"team": "core"}, "roles": ["admin"]}),
    )
    .await;
    let id = user["id"].as_str().expect("id");

    let patched = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"familyName": "Ruiz", "description": null})),
            &[],
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let patched = patched.json();
    assert_eq!(patched["familyName"], "Ruiz");
    assert_eq!(patched["description"], "", "a key present with null clears the field");
    assert_eq!(patched["givenName"], "Ana", "keys not sent are untouched");
    assert_eq!(patched["labels"], json!({"team": "core"}));
    assert_eq!(patched["revision"], "2", "int64 is a JSON string");

    // PUT replaces every writable field: what is not sent is reset, output-only fields stay.
    let put = http
        .rest(
            Method::PUT,
            &format!("/v1/users/{id}"),
            Some(json!({"email": "rest@example.com", "givenName": "Bo"})),
            &[],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let put = put.json();
    assert_eq!(put["givenName"], "Bo");
    assert_eq!(put["familyName"], "");
    assert_eq!(put["labels"], json!({}));
    assert_eq!(put["roles"], json!([]));
    assert_eq!(put["createTime"], user["createTime"]);

    // PUT with an explicit mask changes only that.
    let put = http
        .rest(
            Method::PUT,
            &format!("/v1/users/{id}?updateMask=labels.env"),
            Some(json!({"email": "rest@example.com", "givenName": "Ignored", "labels": {"env": "prod"}})),
            &[],
        )
        .await
        .json();
    assert_eq!(put["givenName"], "Bo");
    assert_eq!(put["labels"], json!({"env": "prod"}));

    // The PATCH mask may also be explicit, in either spelling.
    let patched = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{id}?update_mask=given_name"),
            Some(json!({"familyName": "X"})),
            &[],
        )
        .await
        .json();
    assert_eq!(patched["givenName"], "", "listed but absent: cleared");
    assert_eq!(patched["familyName"], "", "not listed: unchanged");
}

async fn etag_header_and_if_match(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let user = create(&http, json!({"email": "etag@example.com"})).await;
    let id = user["id"].as_str().expect("id");
    let got = http.rest(Method::GET, &format!("/v1/users/{id}"), None, &[]).await;
    let etag_header = got
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("ETag header")
        .to_owned();
    assert_eq!(etag_header, format!("\"{}\"", user["etag"].as_str().expect("etag")));

    let fresh = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"givenName": "A"})),
            &[("if-match", &etag_header)],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
    let stale = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(json!({"givenName": "B"})),
            &[("if-match", &etag_header)],
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(error_status(&stale), "ABORTED");
    let stale_delete = http
        .rest(
            Method::DELETE,
            &format!("/v1/users/{id}"),
            None,
            &[("if-match", &etag_header)],
        )
        .await;
    assert_eq!(stale_delete.status, StatusCode::CONFLICT);
    let now = http
        .rest(Method::GET, &format!("/v1/users/{id}"), None, &[])
        .await
        .json();
    assert_eq!(now["givenName"], "A");
    assert_eq!(now["state"], "ACTIVE");
}

async fn path_id_wins_and_both_spellings_are_accepted(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let a = create(&http, json!({"email": "a@example.com", "given_name": "Snake"})).await;
    assert_eq!(a["givenName"], "Snake", "proto field names are accepted as input");
    let b = create(&http, json!({"email": "b@example.com"})).await;
    let (a_id, b_id) = (a["id"].as_str().expect("id"), b["id"].as_str().expect("id"));
    let patched = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{a_id}"),
            Some(json!({"id": b_id, "familyName": "Path"})),
            &[],
        )
        .await
        .json();
    assert_eq!(patched["id"], a_id);
    assert_eq!(patched["familyName"], "Path");
    let b_now = http
        .rest(Method::GET, &format!("/v1/users/{b_id}"), None, &[])
        .await
        .json();
    assert_eq!(b_now["familyName"], "", "the body's id did not pick the user");
    let listed = http
        .rest(Method::GET, "/v1/users?page_size=1&show_deleted=false", None, &[])
        .await
        .json();
    assert_eq!(listed["users"].as_array().map(Vec::len), Some(1));
    assert!(listed["nextPageToken"].as_str().is_some_and(|t| !t.is_empty()));
}

/// (what, method, path, headers, body, expected status, text the message must contain)
type MalformedCase = (
    &'static str,
    Method,
    &'static str,
    &'static [(&'static str, &'static str)],
    Vec<u8>,
    StatusCode,
    &'static str,
);

async fn malformed_requests_get_clear_client_errors(app: TestApp) {
    let http = HttpClient::new(app.addr);
    let cases: Vec<MalformedCase> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            b"{\"email\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "bad UTF-8",
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            b"{\"email\": \"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "wrong JSON type",
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            br#"{"email": 42}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            br#"{"email": "a@b.co", "nickname": "x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "nickname",
        ),
        (
            "not an object",
            Method::POST,
            "/v1/users:batchUpdate",
            &[("content-type", "application/json")],
            b"[1, 2]".to_vec(),
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            "wrong content type",
            Method::POST,
            "/v1/users",
            &[("content-type", "text/plain")],
            b"email=a".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/v1/users?colour=red",
            &[],
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            "bad query value",
            Method::GET,
            "/v1/users?pageSize=lots",
            &[],
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "invalid request",
        ),
        (
            "body on GET",
            Method::GET,
            "/v1/users",
            &[("content-type", "application/json")],
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
            "no request body",
        ),
        (
            "oversized body",
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            vec![b' '; 5 * 1024 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "unmatched path",
            Method::GET,
            "/v2/users",
            &[],
            Vec::new(),
            StatusCode::NOT_FOUND,
            "no route",
        ),
        (
            "undecodable path",
            Method::GET,
            "/v1/users/%ff%fe",
            &[],
            Vec::new(),
            StatusCode::NOT_FOUND,
            "no route",
        ),
        (
            "bad id in path",
            Method::GET,
            "/v1/users/not-a-uuid",
            &[],
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "UUID",
        ),
    ];
    for (what, method, path, headers, body, status, needle) in cases {
        let response = http.send(false, method, path, headers, body).await;
        assert_eq!(
            response.status,
            status,
            "{what}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        let text = response.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            text.contains(needle),
            "{what}: message {text:?} should mention {needle:?}"
        );
    }
    let wrong_method = http.send(false, Method::DELETE, "/v1/users", &[], Vec::new()).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = wrong_method
        .headers
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    // The server is still serving after all of that.
    create(&http, json!({"email": "after@example.com"})).await;
}

#[tokio::test]
async fn probes_and_openapi_are_served() {
    let app = TestApp::start(Backend::Sqlite).await;
    let http = HttpClient::new(app.addr);
    assert_eq!(
        http.send(false, Method::GET, "/healthz", &[], Vec::new()).await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.send(false, Method::GET, "/readyz", &[], Vec::new()).await.status,
        StatusCode::OK
    );
    let doc = http.send(false, Method::GET, "/openapi.json", &[], Vec::new()).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    assert!(doc["paths"]["/v1/users/{id}"]["patch"].is_object());
    assert!(doc["paths"]["/v1/users:batchUpdate"]["post"].is_object());

    // Metrics count calls per RPC, protocol and code, and refusals at the gate; no token needed.
    let mut c = app.client.clone();
    c.list_users(user_service::pb::ListUsersRequest::default())
        .await
        .expect("grpc list");
    http.rest(Method::GET, "/v1/users", None, &[]).await;
    HttpClient::with_token(app.addr, None)
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    let metrics = HttpClient::with_token(app.addr, None)
        .send(false, Method::GET, "/metrics", &[], Vec::new())
        .await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        "user_service_rpc_duration_seconds_count{rpc=\"ListUsers\",protocol=\"grpc\",code=\"OK\"} 1",
        "user_service_rpc_duration_seconds_count{rpc=\"ListUsers\",protocol=\"rest\",code=\"OK\"} 1",
        "user_service_refused_total{protocol=\"rest\",reason=\"UNAUTHENTICATED\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.cors_origins = vec!["https://app.example.com".into()]
    })
    .await;
    let http = HttpClient::new(app.addr);
    let preflight = |origin: &'static str| {
        let http = http.clone();
        async move {
            http.send(
                false,
                Method::OPTIONS,
                "/users.v1.UserService/GetUser",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "content-type,x-grpc-web,authorization",
                    ),
                ],
                Vec::new(),
            )
            .await
        }
    };
    let allowed = preflight("https://app.example.com").await;
    assert_eq!(
        allowed
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    let allowed_headers = allowed
        .headers
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allowed_headers.contains("x-grpc-web") && allowed_headers.contains("authorization"));
    let refused = preflight("https://evil.example.com").await;
    assert!(refused.headers.get("access-control-allow-origin").is_none());
    // Actual responses expose the gRPC status headers to the browser.
    let response = http
        .send(
            false,
            Method::GET,
            "/v1/users",
            &[("origin", "https://app.example.com")],
            Vec::new(),
        )
        .await;
    let exposed = response
        .headers
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-status-details-bin"),
        "{exposed}"
    );
}
