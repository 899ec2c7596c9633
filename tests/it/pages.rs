//! List pages within the message limit: a page that would pass `--max-message-bytes` holds fewer items and a
//! next_page_token, and walking the pages returns every item exactly once, over gRPC and REST.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use prost::Message;
use user_service::pb;

use crate::backend_tests;
use crate::http::HttpClient;
use crate::support::TestApp;

/// The message limit of these tests: low, so that a few users near the attribute limit fill a page.
const MESSAGE_LIMIT: usize = 128 * 1024;
/// Users (or revisions) of the walk: several pages' worth at [`MESSAGE_LIMIT`].
const ITEMS: usize = 40;
/// One attribute value of about 15 KB, near the 16 KiB limit of a user's attributes.
const BLOB_CHARS: usize = 15_000;

fn blob(seed: usize) -> prost_types::Struct {
    let text: String = (0..BLOB_CHARS)
        .map(|i| char::from(b'a' + u8::try_from((i * 7 + seed) % 26).unwrap_or(0)))
        .collect();
    prost_types::Struct {
        fields: [(
            "blob".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(text)),
            },
        )]
        .into(),
    }
}

backend_tests!(
    app = TestApp::builder().configure(|c| c.max_message_bytes = MESSAGE_LIMIT);
    large_users_split_into_pages,
    large_revisions_split_into_pages,
);

/// Users with attributes near the limit: a page_size 1000 page would pass the message limit several times.
/// Each page is within it, all but the last carry a token, and the walk returns every user once, in every
/// order, over gRPC and REST.
async fn large_users_split_into_pages(app: TestApp) {
    let mut client = app.client.clone();
    let mut created = BTreeSet::new();
    for n in 0..ITEMS {
        let user = client
            .create_user(pb::CreateUserRequest {
                user: Some(pb::User {
                    email: format!("big{n:02}@example.com"),
                    attributes: Some(blob(n)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create {n}: {e:?}"))
            .into_inner();
        created.insert(user.id);
    }

    for order_by in ["", "email desc", "update_time"] {
        let (mut seen, mut pages, mut token) = (Vec::new(), 0, String::new());
        loop {
            let page = client
                .list_users(pb::ListUsersRequest {
                    page_size: 1000,
                    page_token: token,
                    order_by: order_by.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("order {order_by:?}, page {pages}: {e:?}"))
                .into_inner();
            assert!(!page.users.is_empty(), "a page holds at least one user");
            assert!(page.encoded_len() <= MESSAGE_LIMIT, "a page fits the message limit");
            pages += 1;
            seen.extend(page.users.into_iter().map(|u| u.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert!(
            pages > 2,
            "order {order_by:?}: {ITEMS} large users need several pages, got {pages}"
        );
        assert_exactly_once(&seen, &created, &format!("gRPC, order {order_by:?}"));
    }

    let (users, pages) = rest_pages(&HttpClient::new(app.addr), "/v1/users", "users").await;
    let seen: Vec<String> = users
        .iter()
        .map(|u| u["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(pages > 2, "REST: several pages, got {pages}");
    assert_exactly_once(&seen, &created, "REST");
}

/// A user whose every revision carries about 30 KB (a large attribute before and after): the revision list
/// splits into pages within the limit and the walk returns every revision once, newest first.
async fn large_revisions_split_into_pages(app: TestApp) {
    let mut client = app.client.clone();
    let user = client
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: "history@example.com".into(),
                attributes: Some(blob(0)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    for n in 1..ITEMS {
        client
            .update_user(pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: user.id.clone(),
                    attributes: Some(blob(n)),
                    ..Default::default()
                }),
                update_mask: crate::support::mask(&["attributes"]),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("update {n}: {e:?}"));
    }
    let all: Vec<i64> = (1..=ITEMS as i64).rev().collect();

    let (mut seen, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let page = client
            .list_user_revisions(pb::ListUserRevisionsRequest {
                id: user.id.clone(),
                page_size: 1000,
                page_token: token,
            })
            .await
            .unwrap_or_else(|e| panic!("revisions page {pages}: {e:?}"))
            .into_inner();
        assert!(!page.revisions.is_empty(), "a page holds at least one revision");
        assert!(page.encoded_len() <= MESSAGE_LIMIT, "a page fits the message limit");
        pages += 1;
        seen.extend(page.revisions.iter().map(|r| r.revision));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(pages > 2, "{ITEMS} large revisions need several pages, got {pages}");
    assert_eq!(seen, all, "gRPC: every revision once, newest first");

    let path = format!("/v1/users/{}/revisions", user.id);
    let (revisions, pages) = rest_pages(&HttpClient::new(app.addr), &path, "revisions").await;
    // int64 is a JSON string.
    let seen: Vec<i64> = revisions
        .iter()
        .map(|r| r["revision"].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0))
        .collect();
    assert!(pages > 2, "REST: several pages, got {pages}");
    assert_eq!(seen, all, "REST: every revision once, newest first");
}

/// Walks every page of a REST list at `path` with the largest page size; returns the items under `key` of
/// all pages, and how many pages there were.
async fn rest_pages(http: &HttpClient, path: &str, key: &str) -> (Vec<serde_json::Value>, usize) {
    let (mut items, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let response = http
            .rest(
                Method::GET,
                &format!("{path}?pageSize=1000&pageToken={token}"),
                None,
                &[],
            )
            .await;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "REST page {pages}: {:?}",
            response.body
        );
        let page = response.json();
        let page_items = page[key].as_array().cloned().unwrap_or_default();
        assert!(!page_items.is_empty(), "a page of {path} holds at least one item");
        pages += 1;
        items.extend(page_items);
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => return (items, pages),
        }
    }
}

#[track_caller]
fn assert_exactly_once(seen: &[String], expected: &BTreeSet<String>, what: &str) {
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "{what}: a user appeared on two pages");
    assert_eq!(&unique, expected, "{what}: every user, none missing");
}
