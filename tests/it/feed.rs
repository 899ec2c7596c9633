//! The change feed (WatchUsers) end to end, on both backends: one event per committed change, exactly once and
//! in each user's revision order under concurrent writers, across processes and around a transaction held open
//! on PostgreSQL; resuming, expired and malformed cursors, visibility, filters, the watcher limit, bookmarks,
//! and the REST (NDJSON, SSE) and gRPC-Web forms of the stream.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use diesel::Connection;
use diesel::connection::SimpleConnection;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tonic::Code;
use tonic::codec::Streaming;
use user_service::domain::event::{FeedCursor, Position};
use user_service::pb;
use user_service::pb::user_event::Type;

use crate::backend_tests;
use crate::http::HttpClient;
use crate::support::{Client, TestApp, admin_token, create, expect_code, reason, token, update, user};

backend_tests!(
    each_kind_of_change_is_one_event,
    concurrent_writers_every_revision_once_in_order,
    resuming_from_a_cursor_has_no_gap_and_no_duplicate,
    malformed_and_expired_cursors_are_refused,
    self_service_sees_only_its_own_user_and_filters_apply,
    rest_streams_ndjson_and_sse_resuming_with_last_event_id,
    grpc_web_streams_the_events,
    update_answers_carry_the_changed_paths,
    the_feed_filter_selects_what_list_users_does,
    watchers_that_keep_up_share_one_read_per_commit,
);

// Both watchers read only once every write is done, more than the default request time-out (30 s) on a busy
// machine; the server would rightly drop a stream whose client leaves its events unread that long.
backend_tests!(
    app = TestApp::builder().configure(|c| c.request_timeout = Duration::from_secs(600));
    a_watcher_that_stops_reading_catches_up_from_the_database
);

backend_tests!(app = TestApp::builder().configure(|c| c.max_watchers = 2); watchers_past_the_limit_are_refused);

backend_tests!(
    app = TestApp::builder().configure(|c| c.watch_bookmark_interval = Duration::from_millis(300));
    silence_sends_bookmarks_that_resume
);

/// How long a test waits for an event it expects.
const WAIT: Duration = Duration::from_secs(20);

async fn watch(client: &mut Client, start_cursor: &str, filter: &str, show_deleted: bool) -> Streaming<pb::UserEvent> {
    client
        .watch_users(pb::WatchUsersRequest {
            start_cursor: start_cursor.to_owned(),
            filter: filter.to_owned(),
            show_deleted,
        })
        .await
        .expect("watch starts")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::UserEvent>) -> pb::UserEvent {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event in time")
        .expect("stream ok")
        .expect("stream open")
}

/// The next event that is not a bookmark.
/// Sets the user's given name; returns the acknowledged revision.
async fn rename(client: &mut Client, id: &str, given_name: String) -> i64 {
    update(
        client,
        pb::User {
            id: id.to_owned(),
            given_name,
            ..Default::default()
        },
        &["given_name"],
    )
    .await
    .expect("update")
    .revision
}

async fn next_change(stream: &mut Streaming<pb::UserEvent>) -> pb::UserEvent {
    loop {
        let event = next(stream).await;
        if event.r#type != Type::Bookmark as i32 {
            return event;
        }
    }
}

/// The next event that is neither a bookmark nor a creation. A stream started at the head may begin with
/// changes that committed just before it while an older transaction ran (PostgreSQL, see `store::feed`): tests
/// whose users exist before the stream starts skip their creations.
async fn next_update(stream: &mut Streaming<pb::UserEvent>) -> pb::UserEvent {
    loop {
        let event = next_change(stream).await;
        if event.r#type != Type::Created as i32 {
            return event;
        }
    }
}

/// Asserts that nothing but bookmarks arrives within `quiet`.
async fn expect_silence(stream: &mut Streaming<pb::UserEvent>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
        let event = message.expect("stream ok").expect("stream open");
        assert_eq!(event.r#type, Type::Bookmark as i32, "unexpected event {event:?}");
    }
}

/// Runs `writers` concurrent writers, each on a connection of its own making `each` renames over `ids` in turn
/// (the name from `name(writer, n)`); returns every acknowledged revision by user, in revision order.
async fn concurrent_renames(
    app: &TestApp,
    ids: &[String],
    writers: usize,
    each: usize,
    name: fn(usize, usize) -> String,
) -> BTreeMap<String, Vec<i64>> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = app.new_client().await;
        let ids = ids.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..each {
                let id = ids[(w + n) % ids.len()].clone();
                let revision = rename(&mut client, &id, name(w, n)).await;
                acknowledged.push((id, revision));
            }
            acknowledged
        }));
    }
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for task in tasks {
        for (id, revision) in task.await.expect("writer") {
            expected.entry(id).or_default().push(revision);
        }
    }
    for revisions in expected.values_mut() {
        revisions.sort_unstable();
    }
    expected
}

/// The next `total` updates of a stream, their revisions by user in the order they came.
async fn read_updates(stream: &mut Streaming<pb::UserEvent>, total: usize) -> BTreeMap<String, Vec<i64>> {
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for _ in 0..total {
        let event = next_update(stream).await;
        assert_eq!(event.r#type, Type::Updated as i32);
        seen.entry(event.user.map(|u| u.id).unwrap_or_default())
            .or_default()
            .push(event.revision);
    }
    seen
}

fn paths(event: &pb::UserEvent) -> Vec<String> {
    event.update_mask.as_ref().map(|m| m.paths.clone()).unwrap_or_default()
}

/// A stream opened with no cursor starts with a bookmark and then sends each change as one event of its type,
/// with the user after the change, its revision, changed paths and actor; a purge leaves a PURGED event.
async fn each_kind_of_change_is_one_event(app: TestApp) {
    let mut c = app.client.clone();
    let mut stream = watch(&mut c, "", "", true).await;
    let first = next(&mut stream).await;
    assert_eq!(first.r#type, Type::Bookmark as i32);
    assert!(first.user.is_none() && !first.cursor.is_empty());

    let created = create(&mut c, user("kinds@example.com")).await;
    let id = created.id.clone();
    let event = next_change(&mut stream).await;
    assert_eq!(event.r#type, Type::Created as i32);
    assert_eq!(event.revision, 1);
    assert_eq!(event.actor, "test-admin");
    assert_eq!(event.user.as_ref().map(|u| u.email.as_str()), Some("kinds@example.com"));
    assert!(paths(&event).contains(&"email".to_owned()), "{:?}", paths(&event));

    let named = update(
        &mut c,
        pb::User {
            id: id.clone(),
            given_name: "Ana".into(),
            ..Default::default()
        },
        &["given_name"],
    )
    .await
    .expect("update");
    let event = next_change(&mut stream).await;
    assert_eq!(event.r#type, Type::Updated as i32);
    assert_eq!((event.revision, paths(&event)), (2, vec!["given_name".to_owned()]));
    assert_eq!(event.user.as_ref().map(|u| u.given_name.as_str()), Some("Ana"));
    assert_eq!(event.user.as_ref().map(|u| u.etag.as_str()), Some(named.etag.as_str()));

    // The event carries the user as this change left it, not as it is when the event is read.
    c.disable_user(pb::DisableUserRequest {
        id: id.clone(),
        reason: "audit".into(),
        ..Default::default()
    })
    .await
    .expect("disable");
    c.enable_user(pb::EnableUserRequest {
        id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("enable");
    let disabled = next_change(&mut stream).await;
    assert_eq!((disabled.r#type, disabled.revision), (Type::Disabled as i32, 3));
    assert_eq!(
        disabled.user.as_ref().map(|u| u.state),
        Some(pb::user::State::Disabled as i32)
    );
    let enabled = next_change(&mut stream).await;
    assert_eq!((enabled.r#type, enabled.revision), (Type::Enabled as i32, 4));
    assert_eq!(
        enabled.user.as_ref().map(|u| u.state),
        Some(pb::user::State::Active as i32)
    );

    // An administrator verifies the address without a code (an imported user).
    c.verify_email(pb::VerifyEmailRequest {
        id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("verify e-mail");
    let verified = next_change(&mut stream).await;
    assert_eq!(
        (verified.r#type, verified.revision, paths(&verified)),
        (Type::EmailVerified as i32, 5, vec!["email_verified".to_owned()])
    );
    assert_eq!(verified.user.as_ref().map(|u| u.email_verified), Some(true));

    for (expected, revision) in [(Type::Deleted, 6), (Type::Undeleted, 7), (Type::Deleted, 8)] {
        if expected == Type::Deleted {
            c.delete_user(pb::DeleteUserRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
        } else {
            c.undelete_user(pb::UndeleteUserRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("undelete");
        }
        let event = next_change(&mut stream).await;
        assert_eq!((event.r#type, event.revision), (expected as i32, revision));
    }

    // The purge runs as if 31 days had passed; the events of today stay within a retention longer than that.
    let in_31_days = chrono::Utc::now() + chrono::Duration::days(31);
    let retention = Duration::from_secs(40 * 86_400);
    assert_eq!(app.store.purge_expired(in_31_days, retention).await.expect("purge"), 1);
    let purged = next_change(&mut stream).await;
    assert_eq!((purged.r#type, purged.revision), (Type::Purged as i32, 8));
    assert_eq!(
        purged.user,
        Some(pb::User {
            id: id.clone(),
            ..Default::default()
        }),
        "a purged user is only its id"
    );
    // The PURGED event outlives the user and its revisions.
    let mut replay = watch(&mut c, &first.cursor, "", true).await;
    let mut types = Vec::new();
    while types.len() < 9 {
        types.push(next_change(&mut replay).await.r#type);
    }
    assert_eq!(types.last(), Some(&(Type::Purged as i32)));
}

/// 8 writers × 50 updates over 4 users while 2 watchers run: every acknowledged revision is seen exactly once by
/// each watcher, per user in revision order, and nothing else.
async fn concurrent_writers_every_revision_once_in_order(app: TestApp) {
    let mut c = app.client.clone();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(create(&mut c, user(&format!("writer{i}@example.com"))).await.id);
    }
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut stream = watch(&mut c, "", "", false).await;
        assert_eq!(next(&mut stream).await.r#type, Type::Bookmark as i32);
        watchers.push(stream);
    }
    let expected = concurrent_renames(&app, &ids, 8, 50, |w, n| format!("w{w}n{n}")).await;
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(total, 400);
    for mut stream in watchers {
        let seen = read_updates(&mut stream, total).await;
        assert_eq!(seen, expected, "each revision once, in revision order per user");
        expect_silence(&mut stream, Duration::from_millis(500)).await;
    }
}

/// A stream resumed from the cursor of the last event it delivered continues with exactly the next change.
async fn resuming_from_a_cursor_has_no_gap_and_no_duplicate(app: TestApp) {
    let mut c = app.client.clone();
    let mut stream = watch(&mut c, "", "", false).await;
    next(&mut stream).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(create(&mut c, user(&format!("resume{i}@example.com"))).await.id);
    }
    let mut cursor = String::new();
    for id in &ids[..3] {
        let event = next_change(&mut stream).await;
        assert_eq!(event.user.as_ref().map(|u| &u.id), Some(id));
        cursor = event.cursor;
    }
    drop(stream);
    let mut resumed = watch(&mut c, &cursor, "", false).await;
    let bookmark = next(&mut resumed).await;
    assert_eq!(
        (bookmark.r#type, bookmark.cursor.as_str()),
        (Type::Bookmark as i32, cursor.as_str())
    );
    for id in &ids[3..] {
        let event = next_change(&mut resumed).await;
        assert_eq!(event.user.as_ref().map(|u| &u.id), Some(id));
    }
    expect_silence(&mut resumed, Duration::from_millis(500)).await;
}

async fn malformed_and_expired_cursors_are_refused(app: TestApp) {
    let mut c = app.client.clone();
    for bad in ["nonsense", "AQ", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let status = expect_code(
            c.watch_users(pb::WatchUsersRequest {
                start_cursor: bad.into(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
        );
        assert_eq!(crate::support::violation_fields(&status), vec!["start_cursor"], "{bad}");
    }
    let old = FeedCursor {
        position: Position { txid: 0, seq: 1 },
        time: chrono::Utc::now() - chrono::Duration::days(8),
    };
    let status = expect_code(
        c.watch_users(pb::WatchUsersRequest {
            start_cursor: old.encode(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "CURSOR_EXPIRED");
    let status = expect_code(
        c.watch_users(pb::WatchUsersRequest {
            filter: "nickname = \"x\"".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(crate::support::violation_fields(&status), vec!["filter"]);
}

/// A caller without scope sees only its own user; `users.read` sees everyone; the filter applies to the user as
/// the change left it; deleted users' changes need show_deleted, but their DELETED event always comes.
async fn self_service_and_filters_apply(app: TestApp) {
    let mut c = app.client.clone();
    let mine = create(&mut c, user("me@example.com")).await;
    let other = create(&mut c, user("other@example.com")).await;
    let mut own = app.client_with(Some(token(&mine.id, &[]))).await;
    let mut own_stream = watch(&mut own, "", "", false).await;
    next(&mut own_stream).await;
    let mut reader = app.client_with(Some(token("auditor", &["users.read"]))).await;
    let mut colombians = watch(&mut reader, "", "region_code = \"CO\"", false).await;
    next(&mut colombians).await;
    // Outsiders of the filter: the other user is never in Colombia.
    set_region(&mut c, &other.id, "US").await;
    set_region(&mut c, &mine.id, "CO").await;
    set_region(&mut c, &mine.id, "US").await;
    let first = next_update(&mut own_stream).await;
    assert_eq!(
        (first.user.as_ref().map(|u| &u.id), first.revision),
        (Some(&mine.id), 2)
    );
    let second = next_change(&mut own_stream).await;
    assert_eq!(second.revision, 3);
    expect_silence(&mut own_stream, Duration::from_millis(300)).await;
    let filtered = next_change(&mut colombians).await;
    assert_eq!(
        (
            filtered.user.as_ref().map(|u| u.region_code.as_str()),
            filtered.revision
        ),
        (Some("CO"), 2),
        "only the change that left the user in CO"
    );
    expect_silence(&mut colombians, Duration::from_millis(300)).await;

    // Someone else's token without scope watching: sees nothing of ours. A token whose sub is no user id may not.
    let mut stranger = app.client_with(Some(token("not-a-user-id", &[]))).await;
    expect_code(
        stranger.watch_users(pb::WatchUsersRequest::default()).await,
        Code::PermissionDenied,
    );
}

/// Sets a user's region code.
async fn set_region(c: &mut Client, id: &str, code: &str) {
    update(
        c,
        pb::User {
            id: id.to_owned(),
            region_code: code.to_owned(),
            ..Default::default()
        },
        &["region_code"],
    )
    .await
    .expect("update");
}

async fn self_service_sees_only_its_own_user_and_filters_apply(app: TestApp) {
    self_service_and_filters_apply(app).await;
}

async fn watchers_past_the_limit_are_refused(app: TestApp) {
    let mut c = app.client.clone();
    let mut a = watch(&mut c, "", "", false).await;
    next(&mut a).await;
    let b = watch(&mut c, "", "", false).await;
    let status = expect_code(
        c.watch_users(pb::WatchUsersRequest::default()).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&status), "TOO_MANY_WATCHERS");
    // A closed stream frees its slot.
    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.watch_users(pb::WatchUsersRequest::default()).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("slot not freed: {status:?}"),
        }
    }
}

async fn silence_sends_bookmarks_that_resume(app: TestApp) {
    let mut c = app.client.clone();
    let mut stream = watch(&mut c, "", "", false).await;
    next(&mut stream).await;
    let created = create(&mut c, user("quiet@example.com")).await;
    let event = next_change(&mut stream).await;
    assert_eq!(event.user.as_ref().map(|u| &u.id), Some(&created.id));
    let bookmark = next(&mut stream).await;
    assert_eq!(bookmark.r#type, Type::Bookmark as i32, "a bookmark after the silence");
    assert!(bookmark.user.is_none());
    let later = create(&mut c, user("later@example.com")).await;
    let mut resumed = watch(&mut c, &bookmark.cursor, "", false).await;
    let event = next_change(&mut resumed).await;
    assert_eq!(
        event.user.as_ref().map(|u| &u.id),
        Some(&later.id),
        "the bookmark resumes after the last event"
    );
}

/// The UpdateUser answer tells the revision's changed paths (empty for a no-op) in `changed-paths`.
async fn update_answers_carry_the_changed_paths(app: TestApp) {
    let mut c = app.client.clone();
    let created = create(&mut c, user("receipt@example.com")).await;
    let request = |given: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: created.id.clone(),
            given_name: given.into(),
            family_name: "Ruiz".into(),
            ..Default::default()
        }),
        update_mask: crate::support::mask(&["given_name", "family_name"]),
        ..Default::default()
    };
    let answer = c.update_user(request("Ana")).await.expect("update");
    assert_eq!(
        answer.metadata().get("changed-paths").and_then(|v| v.to_str().ok()),
        Some("given_name,family_name")
    );
    let again = c.update_user(request("Ana")).await.expect("no-op");
    assert_eq!(
        again.metadata().get("changed-paths").and_then(|v| v.to_str().ok()),
        Some("")
    );
    let http = crate::http::HttpClient::new(app.addr);
    let rest = http
        .rest(
            http::Method::PATCH,
            &format!("/v1/users/{}", created.id),
            Some(serde_json::json!({"givenName": "Eva"})),
            &[],
        )
        .await;
    assert_eq!(rest.status, http::StatusCode::OK);
    assert_eq!(
        rest.headers.get("changed-paths").and_then(|v| v.to_str().ok()),
        Some("given_name")
    );
}

/// Reads a streaming HTTP body until `done` says what was read is enough.
async fn read_until(body: &mut hyper::body::Incoming, buffer: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done(buffer) {
            let frame = body.frame().await.expect("body open").expect("body ok");
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
            }
        }
    })
    .await
    .expect("the stream sent it in time");
}

async fn rest_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> http::Response<hyper::body::Incoming> {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::get(format!("http://{}{path}", app.addr))
        .header("authorization", format!("Bearer {}", admin_token()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("HTTP exchange")
}

/// REST streams one JSON event per line by default, and SSE with `id:` = cursor on request; an `EventSource`
/// reconnecting with `Last-Event-ID` resumes after that event. Errors before the stream are plain REST errors.
async fn rest_streams_ndjson_and_sse_resuming_with_last_event_id(app: TestApp) {
    let mut c = app.client.clone();
    let response = rest_get(&app, "/v1/users:watch", &[]).await;
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    read_until(&mut body, &mut buffer, |b| b.contains(&b'\n')).await;
    let created = create(&mut c, user("ndjson@example.com")).await;
    read_until(&mut body, &mut buffer, |b| {
        b.iter().filter(|&&x| x == b'\n').count() >= 2
    })
    .await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&buffer)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines[0]["type"], "BOOKMARK");
    assert_eq!(lines[1]["type"], "CREATED");
    assert_eq!(lines[1]["user"]["id"], created.id.as_str());
    let cursor = lines[1]["cursor"].as_str().expect("cursor").to_owned();

    let second = create(&mut c, user("sse@example.com")).await;
    let response = rest_get(
        &app,
        "/v1/users:watch",
        &[("accept", "text/event-stream"), ("last-event-id", &cursor)],
    )
    .await;
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    read_until(&mut body, &mut buffer, |b| {
        String::from_utf8_lossy(b).matches("\n\n").count() >= 2
    })
    .await;
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events[0], format!("id: {cursor}\ndata: {}", first_data(events[0])));
    let data: serde_json::Value = serde_json::from_str(first_data(events[1])).expect("data is JSON");
    assert_eq!(
        (data["type"].as_str(), data["user"]["id"].as_str()),
        (Some("CREATED"), Some(second.id.as_str()))
    );
    assert!(events[1].starts_with(&format!("id: {}\n", data["cursor"].as_str().unwrap_or_default())));

    let refused = rest_get(&app, "/v1/users:watch?startCursor=nonsense", &[]).await;
    assert_eq!(refused.status(), http::StatusCode::BAD_REQUEST);
    let body = refused.into_body().collect().await.expect("body").to_bytes();
    let error: serde_json::Value = serde_json::from_slice(&body).expect("a REST error");
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
}

fn first_data(event: &str) -> &str {
    event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default()
}

/// gRPC-Web carries the stream as a browser library reads it: one length-prefixed message frame per event.
async fn grpc_web_streams_the_events(app: TestApp) {
    let mut c = app.client.clone();
    let request = pb::WatchUsersRequest::default().encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(u32::try_from(request.len()).expect("small"));
    frame.put_slice(&request);
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(
            http::Request::post(format!("http://{}/users.v1.UserService/WatchUsers", app.addr))
                .header("content-type", "application/grpc-web+proto")
                .header("x-grpc-web", "1")
                .header("authorization", format!("Bearer {}", admin_token()))
                .body(Full::new(frame.freeze()))
                .expect("request"),
        )
        .await
        .expect("exchange");
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut body = response.into_body();
    let mut buffer = Vec::new();
    let frames = |b: &[u8]| {
        let mut b = b;
        let mut messages = Vec::new();
        while b.len() >= 5 {
            let len = usize::try_from(u32::from_be_bytes([b[1], b[2], b[3], b[4]])).unwrap_or(usize::MAX);
            if b.len() < 5 + len {
                break;
            }
            messages.push(pb::UserEvent::decode(&b[5..5 + len]).expect("an event"));
            b = &b[5 + len..];
        }
        messages
    };
    read_until(&mut body, &mut buffer, |b| !frames(b).is_empty()).await;
    let created = create(&mut c, user("web@example.com")).await;
    read_until(&mut body, &mut buffer, |b| frames(b).len() >= 2).await;
    let messages = frames(&buffer);
    assert_eq!(messages[0].r#type, Type::Bookmark as i32);
    assert_eq!(messages[1].r#type, Type::Created as i32);
    assert_eq!(messages[1].user.as_ref().map(|u| &u.id), Some(&created.id));
    let _ = buffer.as_slice().remaining();
}

#[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_postgres_each_see_every_change_once() {
    let first = TestApp::builder().start(crate::support::Backend::Postgres).await;
    let second = first.start_beside().await;
    let mut c1 = first.client.clone();
    let mut c2 = second.client.clone();
    let mut w1 = watch(&mut c1, "", "", false).await;
    let mut w2 = watch(&mut c2, "", "", false).await;
    next(&mut w1).await;
    next(&mut w2).await;
    let a = create(&mut c1, user("one@example.com")).await;
    let b = create(&mut c2, user("two@example.com")).await;
    let mut writers = Vec::new();
    let pairs = [
        (c1.clone(), a.id.clone()),
        (c2.clone(), b.id.clone()),
        (c1, b.id.clone()),
        (c2, a.id.clone()),
    ];
    for (w, (client, id)) in pairs.into_iter().enumerate() {
        let mut client = client;
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..25 {
                let revision = rename(&mut client, &id, format!("w{w}n{n}")).await;
                acknowledged.push((id.clone(), revision));
            }
            acknowledged
        }));
    }
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    expected.entry(a.id.clone()).or_default().push(1);
    expected.entry(b.id.clone()).or_default().push(1);
    for writer in writers {
        for (id, revision) in writer.await.expect("writer") {
            expected.entry(id).or_default().push(revision);
        }
    }
    for revisions in expected.values_mut() {
        revisions.sort_unstable();
    }
    for stream in [&mut w1, &mut w2] {
        let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for _ in 0..102 {
            let event = loop {
                let Ok(Ok(Some(event))) = tokio::time::timeout(WAIT, stream.message()).await else {
                    panic!("missing events: saw {seen:?}, expected {expected:?}");
                };
                if event.r#type != Type::Bookmark as i32 {
                    break event;
                }
            };
            seen.entry(event.user.map(|u| u.id).unwrap_or_default())
                .or_default()
                .push(event.revision);
        }
        assert_eq!(seen, expected);
        expect_silence(stream, Duration::from_millis(300)).await;
    }
}

/// A raw connection to the test server's PostgreSQL schema.
fn raw_pg(app: &TestApp) -> diesel::PgConnection {
    diesel::PgConnection::establish(&app.database_url).expect("raw connection")
}

/// A transaction that wrote an event and stays open holds the feed back: later commits are not delivered past
/// it (they would be skipped otherwise once it commits with its smaller id), and once it commits everything
/// arrives, it included.
#[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_held_open_delays_but_never_loses_events() {
    let app = TestApp::builder().start(crate::support::Backend::Postgres).await;
    let mut c = app.client.clone();
    let held = create(&mut c, user("held@example.com")).await;
    let mut stream = watch(&mut c, "", "", false).await;
    next(&mut stream).await;
    let mut raw = raw_pg(&app);
    raw.batch_execute(&format!(
        "BEGIN; UPDATE users SET given_name = 'Held', revision = revision + 1 WHERE id = '{id}'; \
         INSERT INTO user_events (user_id, revision, event_type, actor, update_mask, create_time, snapshot) \
         SELECT user_id, 2, 'UPDATED', 'raw', '[\"given_name\"]', now(), snapshot FROM user_events \
         WHERE user_id = '{id}' LIMIT 1;",
        id = held.id
    ))
    .expect("held transaction writes");
    let mut later = Vec::new();
    for i in 0..5 {
        later.push(create(&mut c, user(&format!("later{i}@example.com"))).await.id);
    }
    // Nothing of the later commits while the held transaction runs (only, possibly, the creation of its user,
    // which may have committed above the head; see `next_update`).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
        let event = message.expect("stream ok").expect("stream open");
        let leftover = event.r#type == Type::Created as i32 && event.user.as_ref().map(|u| &u.id) == Some(&held.id);
        assert!(
            event.r#type == Type::Bookmark as i32 || leftover,
            "delivered past the held transaction: {event:?}"
        );
    }
    raw.batch_execute("COMMIT").expect("commit");
    let mut first = next_change(&mut stream).await;
    if first.user.as_ref().map(|u| &u.id) == Some(&held.id) && first.revision == 1 {
        first = next_change(&mut stream).await;
    }
    assert_eq!(
        (first.actor.as_str(), first.revision),
        ("raw", 2),
        "the held change, first: its id is smallest"
    );
    for id in &later {
        let event = next_change(&mut stream).await;
        assert_eq!(event.user.as_ref().map(|u| &u.id), Some(id));
    }
    expect_silence(&mut stream, Duration::from_millis(300)).await;
}

/// A batch that has locked one user and waits for another must not end up with a smaller transaction id than a
/// writer that changed the second user meanwhile (the feed would then put the batch's later revision first).
/// Users A < C < B by id; a raw transaction holds C's row (as a sign-in check does, without the advisory lock);
/// the batch (A, C, B) is stuck at C; a single update of B runs; then C is released.
#[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_batch_keeps_each_users_events_in_revision_order() {
    let app = TestApp::builder().start(crate::support::Backend::Postgres).await;
    let mut c = app.client.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create(&mut c, user(&format!("batch{i}@example.com"))).await.id);
    }
    ids.sort();
    let (a, cc, b) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let mut stream = watch(&mut c, "", "", false).await;
    next(&mut stream).await;
    let mut raw = raw_pg(&app);
    raw.batch_execute(&format!("BEGIN; SELECT id FROM users WHERE id = '{cc}' FOR UPDATE;"))
        .expect("hold C");
    let item = |id: &str, given: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.to_owned(),
            given_name: given.to_owned(),
            ..Default::default()
        }),
        update_mask: crate::support::mask(&["given_name"]),
        ..Default::default()
    };
    let mut batch_client = app.new_client().await;
    let requests = vec![item(&a, "batch"), item(&cc, "batch"), item(&b, "batch")];
    let batch = tokio::spawn(async move {
        batch_client
            .batch_update_users(pb::BatchUpdateUsersRequest { requests })
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut single_client = app.new_client().await;
    let single_b = item(&b, "single");
    let single = tokio::spawn(async move { single_client.update_user(single_b).await.map(|r| r.into_inner()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    raw.batch_execute("COMMIT").expect("release C");
    batch.await.expect("batch task").expect("batch");
    single.await.expect("single task").expect("single");
    let mut revisions: HashMap<String, Vec<i64>> = HashMap::new();
    for _ in 0..4 {
        let event = next_update(&mut stream).await;
        revisions
            .entry(event.user.map(|u| u.id).unwrap_or_default())
            .or_default()
            .push(event.revision);
    }
    assert_eq!(
        revisions.get(&b),
        Some(&vec![2, 3]),
        "B's revisions in order: {revisions:?}"
    );
    assert_eq!(revisions.get(&a), Some(&vec![2]));
    assert_eq!(revisions.get(&cc), Some(&vec![2]));
}

/// The feed's filter is the ListUsers filter: for each filter, the creations a filtered stream delivers are
/// exactly the users ListUsers returns for it (the stream evaluates it in memory, ListUsers in SQL).
async fn the_feed_filter_selects_what_list_users_does(app: TestApp) {
    let mut c = app.client.clone();
    let filters = [
        "email = \"*@b.example.com\"",
        "email:ann",
        "email != ann@a.example.com",
        "username = \"ann*\"",
        "username != \"ann*\"",
        "username:*",
        "username != *",
        "region_code = CO",
        "region_code != co",
        "labels.team = core",
        "labels.team:*",
        "labels.team != core",
        "roles:admin",
        "state = ACTIVE AND labels.team = core AND region_code = CO",
    ];
    let mut streams = Vec::new();
    for filter in filters {
        let mut stream = watch(&mut c, "", filter, false).await;
        next(&mut stream).await;
        streams.push(stream);
    }
    let people = [
        ("ann@a.example.com", "ann", "CO", Some("core"), vec!["admin"]),
        ("bob@b.example.com", "", "US", Some("web"), vec![]),
        ("joann@b.example.com", "joann", "CO", None, vec!["admin", "ops"]),
        ("carl@a.example.com", "annex", "", Some("core"), vec!["ops"]),
        ("dana@c.example.com", "", "CO", Some("core"), vec![]),
    ];
    for (email, username, region, team, roles) in people {
        create(
            &mut c,
            pb::User {
                email: email.into(),
                username: username.into(),
                region_code: region.into(),
                labels: team
                    .map(|t| [("team".to_owned(), t.to_owned())].into())
                    .unwrap_or_default(),
                roles: roles.into_iter().map(str::to_owned).collect(),
                ..Default::default()
            },
        )
        .await;
    }
    for (filter, mut stream) in filters.into_iter().zip(streams) {
        let listed = c
            .list_users(pb::ListUsersRequest {
                filter: filter.into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let mut expected: Vec<String> = listed.users.into_iter().map(|u| u.email).collect();
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            seen.push(next_change(&mut stream).await.user.map(|u| u.email).unwrap_or_default());
        }
        expect_silence(&mut stream, Duration::from_millis(200)).await;
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected, "filter {filter}");
    }
}

/// Reads of the feed so far, by the shared reader and by watchers catching up on their own.
async fn feed_reads(http: &HttpClient) -> (f64, f64) {
    (
        http.metric("user_service_feed_reads_total{reader=\"shared\"}").await,
        http.metric("user_service_feed_reads_total{reader=\"catching_up\"}")
            .await,
    )
}

/// Twenty watchers that keep up cost one read per commit between them, not one each: every commit's events
/// reach all of them from the process's shared reader, and none reads the database on its own.
async fn watchers_that_keep_up_share_one_read_per_commit(app: TestApp) {
    const WATCHERS: usize = 20;
    const UPDATES: usize = 50;
    let mut c = app.client.clone();
    let id = create(&mut c, user("shared@example.com")).await.id;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        watchers.push(watch(&mut c, "", "", false).await);
    }
    // Every watcher has met the shared reader once it delivers a change made after all of them started.
    let first = rename(&mut c, &id, "first".into()).await;
    for stream in &mut watchers {
        assert_eq!(next_update(stream).await.revision, first);
    }
    let http = HttpClient::new(app.addr);
    let (shared_before, catching_up_before) = feed_reads(&http).await;
    let mut revisions = Vec::new();
    for n in 0..UPDATES {
        revisions.push(rename(&mut c, &id, format!("n{n}")).await);
    }
    for stream in &mut watchers {
        let mut seen = Vec::new();
        for _ in 0..UPDATES {
            seen.push(next_update(stream).await.revision);
        }
        assert_eq!(seen, revisions);
    }
    let (shared_after, catching_up_after) = feed_reads(&http).await;
    assert_eq!(catching_up_after, catching_up_before, "no watcher read on its own");
    // One read per wake-up, a few more while a commit elsewhere in the cluster holds the horizon back
    // (PostgreSQL); a read per watcher per commit would be 1,000.
    let shared = shared_after - shared_before;
    assert!(
        shared >= 1.0 && shared <= (WATCHERS * UPDATES / 4) as f64,
        "{shared} shared reads for {UPDATES} commits"
    );
}

/// A watcher that stops reading falls behind the shared reader's ring while another keeps up; when it reads
/// again it gets every change from the database, exactly once and in order, and the one that kept up never
/// waited for it.
async fn a_watcher_that_stops_reading_catches_up_from_the_database(app: TestApp) {
    const WRITERS: usize = 8;
    const UPDATES_EACH: usize = 300;
    let mut c = app.client.clone();
    let mut ids = Vec::new();
    // Each user carries nearly the most attributes it may (16 KiB), so every event is large and the stalled
    // stream's transport buffers and per-connection response budget fill after a few hundred changes.
    let bulky = prost_types::Struct {
        fields: [(
            "notes".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(15_000))),
            },
        )]
        .into_iter()
        .collect(),
    };
    for i in 0..4 {
        let stalled_user = pb::User {
            attributes: Some(bulky.clone()),
            ..user(&format!("stall{i}@example.com"))
        };
        ids.push(create(&mut c, stalled_user).await.id);
    }
    // Apart on connections of their own: HTTP/2 flow control is also per connection, and the stalled stream
    // must not hold back the other one's.
    let mut stalled = watch(&mut app.new_client().await, "", "", false).await;
    let mut live = watch(&mut app.new_client().await, "", "", false).await;
    assert_eq!(next(&mut stalled).await.r#type, Type::Bookmark as i32);
    assert_eq!(next(&mut live).await.r#type, Type::Bookmark as i32);
    let http = HttpClient::new(app.addr);
    let (_, catching_up_before) = feed_reads(&http).await;
    let expected = concurrent_renames(&app, &ids, WRITERS, UPDATES_EACH, |w, n| format!("w{w}n{n}")).await;
    let total = WRITERS * UPDATES_EACH;
    assert_eq!(
        read_updates(&mut live, total).await,
        expected,
        "the live watcher saw each revision once, in order"
    );
    assert_eq!(
        read_updates(&mut stalled, total).await,
        expected,
        "the stalled watcher caught up on each revision once, in order"
    );
    let (_, catching_up_after) = feed_reads(&http).await;
    assert!(
        catching_up_after > catching_up_before,
        "the stalled watcher fell out of the ring and read the database"
    );
    expect_silence(&mut stalled, Duration::from_millis(300)).await;
}
