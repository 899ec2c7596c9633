//! Authentication and authorization (API §6): the matrix of every RPC against every kind of caller over every
//! protocol, privileged fields, password changes, and the limits a caller meets.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use http::{Method, StatusCode};
use serde_json::json;
use tonic::Code;
use user_service::auth::{Audience, Claims};
use user_service::pb;

use crate::backend_tests;
use crate::http::HttpClient;
use crate::parity::{Call, Harness, Outcome, PROTOCOLS, Protocol, call};
use crate::support::{
    Backend, TEST_SECRET, TestApp, create, expect_code, mask, reason, token, update, user, violation_fields,
};

backend_tests!(
    app = TestApp::builder().configure(|c| c.auth.jwt_audience = Some(AUDIENCE.into()));
    every_rpc_against_every_caller,
);
backend_tests!(
    self_service_cannot_touch_privileged_fields,
    password_changes_need_the_current_password,
    passwords_and_hashes_never_reach_logs_or_answers,
    scopes_joined_by_other_whitespace_grant_nothing,
    another_spelling_of_a_users_id_is_not_that_user,
);

const AUDIENCE: &str = "user-service";

/// Signs claims with `secret`, so tests can build tokens the service's own signer never would.
fn sign(secret: &str, sub: &str, scopes: &str, exp_offset: i64, aud: Option<&str>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64;
    let claims = Claims {
        sub: sub.into(),
        exp: (now + exp_offset) as u64,
        nbf: None,
        iat: Some(now as u64),
        scope: scopes.into(),
        iss: None,
        aud: aud.map(|a| Audience::One(a.to_owned())),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoToken,
    Expired,
    WrongSignature,
    WrongAudience,
    Myself,
    OtherUser,
    Reader,
    Admin,
}

const EVERYONE: [Who; 8] = [
    Who::NoToken,
    Who::Expired,
    Who::WrongSignature,
    Who::WrongAudience,
    Who::Myself,
    Who::OtherUser,
    Who::Reader,
    Who::Admin,
];

const RPCS: [&str; 11] = [
    "CreateUser",
    "GetUser",
    "LookupUser",
    "ListUsers",
    "UpdateUser",
    "DisableUser",
    "EnableUser",
    "DeleteUser",
    "UndeleteUser",
    "BatchUpdateUsers",
    "ListUserRevisions",
];

/// The code API §6 gives `who` calling `rpc` on the caller's own user (or, for `OtherUser`, on someone else's).
fn expected(who: Who, rpc: &str) -> Code {
    match who {
        Who::NoToken | Who::Expired | Who::WrongSignature | Who::WrongAudience => Code::Unauthenticated,
        Who::Admin => Code::Ok,
        Who::Reader if matches!(rpc, "GetUser" | "LookupUser" | "ListUsers" | "ListUserRevisions") => Code::Ok,
        Who::Myself if matches!(rpc, "GetUser" | "UpdateUser" | "BatchUpdateUsers" | "ListUserRevisions") => Code::Ok,
        _ => Code::PermissionDenied,
    }
}

fn rpc_call(rpc: &'static str, target: &str, n: usize) -> Call {
    let id = target.to_owned();
    match rpc {
        "CreateUser" => call(
            rpc,
            pb::CreateUserRequest {
                user: Some(user(&format!("new{n}@example.com"))),
                ..Default::default()
            },
            Method::POST,
            "/v1/users",
            Some(json!({"email": format!("new{n}@example.com")})),
        ),
        "GetUser" => call(
            rpc,
            pb::GetUserRequest { id: id.clone() },
            Method::GET,
            format!("/v1/users/{id}"),
            None,
        ),
        "LookupUser" => call(
            rpc,
            pb::LookupUserRequest {
                email: "me@example.com".into(),
                username: String::new(),
            },
            Method::GET,
            "/v1/users:lookup?email=me%40example.com",
            None,
        ),
        "ListUsers" => call(rpc, pb::ListUsersRequest::default(), Method::GET, "/v1/users", None),
        "UpdateUser" => call(
            rpc,
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: id.clone(),
                    given_name: format!("n{n}"),
                    ..Default::default()
                }),
                update_mask: mask(&["given_name"]),
                ..Default::default()
            },
            Method::PATCH,
            format!("/v1/users/{id}"),
            Some(json!({"givenName": format!("n{n}")})),
        ),
        "DisableUser" => call(
            rpc,
            pb::DisableUserRequest {
                id: id.clone(),
                reason: "r".into(),
                etag: String::new(),
            },
            Method::POST,
            format!("/v1/users/{id}:disable"),
            Some(json!({"reason": "r"})),
        ),
        "EnableUser" => call(
            rpc,
            pb::EnableUserRequest {
                id: id.clone(),
                etag: String::new(),
            },
            Method::POST,
            format!("/v1/users/{id}:enable"),
            Some(json!({})),
        ),
        "DeleteUser" => call(
            rpc,
            pb::DeleteUserRequest {
                id: id.clone(),
                etag: String::new(),
            },
            Method::DELETE,
            format!("/v1/users/{id}"),
            None,
        ),
        "UndeleteUser" => call(
            rpc,
            pb::UndeleteUserRequest {
                id: id.clone(),
                etag: String::new(),
            },
            Method::POST,
            format!("/v1/users/{id}:undelete"),
            Some(json!({})),
        ),
        "BatchUpdateUsers" => call(
            rpc,
            pb::BatchUpdateUsersRequest {
                requests: vec![pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id: id.clone(),
                        description: format!("b{n}"),
                        ..Default::default()
                    }),
                    update_mask: mask(&["description"]),
                    ..Default::default()
                }],
            },
            Method::POST,
            "/v1/users:batchUpdate",
            Some(
                json!({"requests": [{"user": {"id": id, "description": format!("b{n}")}, "updateMask": "description"}]}),
            ),
        ),
        _ => call(
            rpc,
            pb::ListUserRevisionsRequest {
                id: id.clone(),
                ..Default::default()
            },
            Method::GET,
            format!("/v1/users/{id}/revisions"),
            None,
        ),
    }
}

fn code_of(outcome: &Outcome) -> Code {
    match outcome {
        Outcome::Ok(_) => Code::Ok,
        Outcome::Err { code, .. } => Code::from_i32(*code),
    }
}

/// Runs on a server that requires the audience [`AUDIENCE`].
async fn every_rpc_against_every_caller(app: TestApp) {
    let admin_token = sign(TEST_SECRET, "ops", "users.admin", 3600, Some(AUDIENCE));
    let admin = Harness::new(&app, Some(admin_token.clone()));
    let created = admin
        .invoke(
            Protocol::Grpc,
            &call(
                "CreateUser",
                pb::CreateUserRequest {
                    user: Some(user("me@example.com")),
                    ..Default::default()
                },
                Method::POST,
                "/v1/users",
                None,
            ),
        )
        .await;
    let Outcome::Ok(me) = created else {
        panic!("setup: {created:?}")
    };
    let me = me["id"].as_str().expect("id").to_owned();
    let other = uuid::Uuid::now_v7().to_string();
    let token_of = |who: Who| -> Option<String> {
        match who {
            Who::NoToken => None,
            Who::Expired => Some(sign(TEST_SECRET, &me, "", -3600, Some(AUDIENCE))),
            Who::WrongSignature => Some(sign(
                "not-the-secret-but-just-as-long-as-one",
                &me,
                "users.admin",
                3600,
                Some(AUDIENCE),
            )),
            Who::WrongAudience => Some(sign(TEST_SECRET, &me, "users.admin", 3600, Some("another-service"))),
            Who::Myself => Some(sign(TEST_SECRET, &me, "", 3600, Some(AUDIENCE))),
            Who::OtherUser => Some(sign(TEST_SECRET, &other, "", 3600, Some(AUDIENCE))),
            Who::Reader => Some(sign(TEST_SECRET, "auditor", "users.read", 3600, Some(AUDIENCE))),
            Who::Admin => Some(admin_token.clone()),
        }
    };
    let mut n = 0;
    let mut cells = 0;
    for who in EVERYONE {
        let harness = Harness::new(&app, token_of(who));
        for rpc in RPCS {
            let want = expected(who, rpc);
            // A successful lifecycle change cannot repeat (a second delete is refused), so those run once, over
            // gRPC; every other cell runs over every protocol.
            let once = want == Code::Ok && matches!(rpc, "DisableUser" | "EnableUser" | "DeleteUser" | "UndeleteUser");
            for protocol in PROTOCOLS.iter().filter(|p| !once || **p == Protocol::Grpc) {
                n += 1;
                let outcome = harness.invoke(*protocol, &rpc_call(rpc, &me, n)).await;
                assert_eq!(code_of(&outcome), want, "{who:?} {rpc} over {protocol:?}: {outcome:?}");
                cells += 1;
            }
        }
    }
    assert!(cells > 400, "the matrix ran {cells} cells");

    // A non-administrator probing an unknown id is refused exactly like for an existing one.
    let stranger = Harness::new(&app, token_of(Who::OtherUser));
    for target in [me.clone(), uuid::Uuid::now_v7().to_string()] {
        let outcome = stranger.invoke(Protocol::Rest, &rpc_call("GetUser", &target, 0)).await;
        assert_eq!(code_of(&outcome), Code::PermissionDenied, "{target}");
    }

    // REST refusals say how to authenticate.
    let http = HttpClient::with_token(app.addr, None);
    let response = http.rest(Method::GET, &format!("/v1/users/{me}"), None, &[]).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let expired = HttpClient::with_token(app.addr, token_of(Who::Expired));
    let message = expired
        .rest(Method::GET, &format!("/v1/users/{me}"), None, &[])
        .await
        .json()["error"]["message"]
        .clone();
    assert_eq!(message, "the token has expired");

    // Revisions name the caller's sub as the actor.
    let revisions = admin
        .invoke(Protocol::Rest, &rpc_call("ListUserRevisions", &me, 0))
        .await;
    let actors: Vec<String> = match &revisions {
        Outcome::Ok(v) => v["revisions"]
            .as_array()
            .expect("revisions")
            .iter()
            .map(|r| r["actor"].as_str().unwrap_or("").to_owned())
            .collect(),
        other => panic!("{other:?}"),
    };
    assert!(
        actors.contains(&me),
        "self updates are recorded as the user: {actors:?}"
    );
    assert!(actors.contains(&"ops".to_owned()));
}

async fn self_service_cannot_touch_privileged_fields(app: TestApp) {
    let mut admin = app.client.clone();
    let me = create(
        &mut admin,
        pb::User {
            email: "self@example.com".into(),
            roles: vec!["staff".into()],
            ..Default::default()
        },
    )
    .await;
    let someone = create(&mut admin, user("someone@example.com")).await;
    let my_token = token(&me.id, &[]);
    let http = HttpClient::with_token(app.addr, Some(my_token.clone()));
    let mut mine = app.client_with(Some(my_token)).await;

    // PATCH with an inferred mask naming roles: 403 naming the field, nothing written.
    let response = http
        .rest(
            Method::PATCH,
            &format!("/v1/users/{}", me.id),
            Some(json!({"givenName": "Me", "roles": ["admin"]})),
            &[],
        )
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    let body = response.json();
    let fields: Vec<String> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .flat_map(|d| d["fieldViolations"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v["field"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(fields, vec!["user.roles"]);

    // Explicit masks, over gRPC, the same.
    for paths in [
        vec!["memberships"],
        vec!["valid_from"],
        vec!["expire_time", "given_name"],
    ] {
        let status = expect_code(
            update(
                &mut mine,
                pb::User {
                    id: me.id.clone(),
                    ..Default::default()
                },
                &paths,
            )
            .await,
            Code::PermissionDenied,
        );
        assert_eq!(reason(&status), "PRIVILEGED_FIELD");
    }

    // PUT (`*`) that would reset roles is refused; one that keeps them is allowed.
    let reset = http
        .rest(
            Method::PUT,
            &format!("/v1/users/{}", me.id),
            Some(json!({"email": "self@example.com"})),
            &[],
        )
        .await;
    assert_eq!(reset.status, StatusCode::FORBIDDEN, "{:?}", reset.json());
    let keep = http
        .rest(
            Method::PUT,
            &format!("/v1/users/{}", me.id),
            Some(json!({"email": "self@example.com", "roles": ["staff"], "givenName": "Kept"})),
            &[],
        )
        .await;
    assert_eq!(keep.status, StatusCode::OK, "{:?}", keep.json());

    // A batch mixing an allowed item and a denied one applies nothing.
    let item = |id: &str, description: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: id.into(),
            description: description.into(),
            ..Default::default()
        }),
        update_mask: mask(&["description"]),
        ..Default::default()
    };
    let status = expect_code(
        mine.batch_update_users(pb::BatchUpdateUsersRequest {
            requests: vec![item(&me.id, "mine"), item(&someone.id, "theirs")],
        })
        .await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains("requests[1]"), "{}", status.message());
    let mut privileged = item(&me.id, "x");
    privileged.update_mask = mask(&["roles"]);
    expect_code(
        mine.batch_update_users(pb::BatchUpdateUsersRequest {
            requests: vec![item(&me.id, "mine"), privileged],
        })
        .await,
        Code::PermissionDenied,
    );
    let now = admin
        .get_user(pb::GetUserRequest { id: me.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(now.description, "", "nothing of the refused batches was applied");
    assert_eq!(now.roles, vec!["staff".to_owned()]);
    assert_eq!(now.given_name, "Kept");

    // allow_missing creation by a self-service caller may not grant itself roles.
    let new_id = uuid::Uuid::now_v7().to_string();
    let mut newcomer = app.client_with(Some(token(&new_id, &[]))).await;
    let status = expect_code(
        newcomer
            .update_user(pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: new_id.clone(),
                    email: "newcomer@example.com".into(),
                    roles: vec!["admin".into()],
                    ..Default::default()
                }),
                allow_missing: true,
                update_mask: mask(&["email"]),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(violation_fields(&status), vec!["user.roles"]);
    expect_code(admin.get_user(pb::GetUserRequest { id: new_id }).await, Code::NotFound);
}

async fn password_changes_need_the_current_password(app: TestApp) {
    let mut admin = app.client.clone();
    let me = create(
        &mut admin,
        pb::User {
            email: "pw@example.com".into(),
            password: "First-Pass1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut mine = app.client_with(Some(token(&me.id, &[]))).await;
    let change = |current: &str, new: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: me.id.clone(),
            password: new.into(),
            ..Default::default()
        }),
        update_mask: mask(&["password"]),
        current_password: current.into(),
        ..Default::default()
    };
    let status = expect_code(
        mine.update_user(change("", "Second-Pass2")).await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["current_password"]);
    let status = expect_code(
        mine.update_user(change("wrong", "Second-Pass2")).await,
        Code::PermissionDenied,
    );
    assert_eq!(reason(&status), "WRONG_PASSWORD");
    mine.update_user(change("First-Pass1", "Second-Pass2"))
        .await
        .expect("right current password");
    // Administrators need no current password.
    admin.update_user(change("", "Third-Pass3")).await.expect("admin reset");
    // Guessing is limited: after a few wrong answers even the right one waits.
    for _ in 0..4 {
        expect_code(
            mine.update_user(change("guess", "Fourth-Pass4")).await,
            Code::PermissionDenied,
        );
    }
    let status = expect_code(
        mine.update_user(change("Third-Pass3", "Fourth-Pass4")).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("too many"), "{}", status.message());
    // Other callers are not affected.
    admin
        .get_user(pb::GetUserRequest { id: me.id.clone() })
        .await
        .expect("admin still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_and_spare_other_callers() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.rate_limit = 0.5;
        c.rate_burst = 3;
    })
    .await;
    let noisy = HttpClient::with_token(app.addr, Some(token("noisy", &["users.read"])));
    let mut last = None;
    for _ in 0..4 {
        last = Some(noisy.rest(Method::GET, "/v1/users", None, &[]).await);
    }
    let refused = last.expect("responses");
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert!(
        refused
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1))
    );
    assert_eq!(
        refused.headers.get("ratelimit-limit").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    assert_eq!(
        refused.headers.get("ratelimit-remaining").and_then(|v| v.to_str().ok()),
        Some("0")
    );
    // Over gRPC the same caller is refused with RESOURCE_EXHAUSTED…
    let mut noisy_grpc = app.client_with(Some(token("noisy", &["users.read"]))).await;
    expect_code(
        noisy_grpc.list_users(pb::ListUsersRequest::default()).await,
        Code::ResourceExhausted,
    );
    // …while another caller is served, and sees its own budget.
    let quiet = HttpClient::with_token(app.addr, Some(token("quiet", &["users.read"])));
    let served = quiet.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        served.headers.get("ratelimit-remaining").and_then(|v| v.to_str().ok()),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_input_is_refused_and_the_server_keeps_serving() {
    let app = TestApp::start_with(Backend::Sqlite, |c| c.max_message_bytes = 64 * 1024).await;
    let mut c = app.client.clone();
    let big = pb::User {
        email: "big@example.com".into(),
        description: "x".repeat(100 * 1024),
        ..Default::default()
    };
    let status = c
        .create_user(pb::CreateUserRequest {
            user: Some(big),
            ..Default::default()
        })
        .await
        .expect_err("too big");
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{status:?}"
    );
    let http = HttpClient::new(app.addr);
    let big_body = http
        .send(
            false,
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            vec![b' '; 200 * 1024],
        )
        .await;
    assert_eq!(big_body.status, StatusCode::PAYLOAD_TOO_LARGE);
    let nested = format!(
        "{{\"email\": \"n@example.com\", \"attributes\": {}1{}}}",
        "{\"a\":".repeat(200),
        "}".repeat(200)
    );
    let response = http
        .send(
            false,
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            nested,
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    let nested = format!("{{\"attributes\": {}1{}}}", "{\"a\":".repeat(50), "}".repeat(50));
    let response = http
        .send(
            false,
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            nested,
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nested deeper than 32")
    );
    let nested = format!(
        "{{\"email\": \"n@example.com\", \"attributes\": {}1{}}}",
        "{\"a\":".repeat(25),
        "}".repeat(25)
    );
    let response = http
        .send(
            false,
            Method::POST,
            "/v1/users",
            &[("content-type", "application/json")],
            nested,
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::BAD_REQUEST,
        "attributes deeper than 20 levels"
    );
    assert!(
        response.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("attributes")
    );
    // Still serving.
    create(&mut c, user("after@example.com")).await;
}

async fn passwords_and_hashes_never_reach_logs_or_answers(app: TestApp) {
    const CANARY: &str = "Canary-Pa55word!";
    const NEW_CANARY: &str = "Canary-N3w-Pa55!";
    let mut admin = app.client.clone();
    let me = create(
        &mut admin,
        pb::User {
            email: "canary@example.com".into(),
            password: CANARY.into(),
            ..Default::default()
        },
    )
    .await;
    let mut answers = format!("{me:?}");
    let http = HttpClient::with_token(app.addr, Some(token(&me.id, &[])));
    // A wrong current password, a right one, a refused new one, over REST and gRPC.
    for (current, new) in [("wrong-Pa55!", NEW_CANARY), (CANARY, "short"), (CANARY, NEW_CANARY)] {
        let response = http
            .rest(
                Method::PATCH,
                &format!("/v1/users/{}?currentPassword={}", me.id, current),
                Some(json!({"password": new})),
                &[],
            )
            .await;
        answers.push_str(&String::from_utf8_lossy(&response.body));
    }
    let revisions = admin
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: me.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner();
    answers.push_str(&format!("{revisions:?}"));
    let listed = http
        .rest(Method::GET, &format!("/v1/users/{}/revisions", me.id), None, &[])
        .await;
    answers.push_str(&String::from_utf8_lossy(&listed.body));
    assert!(answers.contains("[redacted]"), "the revisions were read");
    let logs = crate::support::captured_logs();
    assert!(
        logs.contains(&me.id) || logs.contains("request"),
        "logs were captured at all"
    );
    for secret in [CANARY, NEW_CANARY, "$argon2id$", "wrong-Pa55!"] {
        assert!(
            !logs.contains(secret),
            "a log line contains {secret:?}: {}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!answers.contains(secret), "an answer contains {secret:?}");
    }
}

/// Signs a token with any header and claims, as a client holding the secret could.
fn forge(header: &jsonwebtoken::Header, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("sign")
}

fn in_an_hour() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600
}

async fn scopes_joined_by_other_whitespace_grant_nothing(app: TestApp) {
    let mut admin = app.client.clone();
    create(&mut admin, user("listed@example.com")).await;
    // The control: joined by an ASCII space, both scopes count.
    let mut both = app
        .client_with(Some(sign(TEST_SECRET, "ops", "users.read users.admin", 3600, None)))
        .await;
    create(&mut both, user("by-ops@example.com")).await;
    for space in ['\u{00a0}', '\u{3000}', '\u{2028}', '\t', '\n'] {
        let scope = format!("users.read{space}users.admin");
        let mut joined = app
            .client_with(Some(sign(TEST_SECRET, "ops", &scope, 3600, None)))
            .await;
        let status = expect_code(
            joined
                .create_user(pb::CreateUserRequest {
                    user: Some(user("never@example.com")),
                    ..Default::default()
                })
                .await,
            Code::PermissionDenied,
        );
        assert!(
            status.message().contains("CreateUser"),
            "{space:?}: {}",
            status.message()
        );
        // Nor is it `users.read`: the one scope token is simply unknown.
        expect_code(
            joined.list_users(pb::ListUsersRequest::default()).await,
            Code::PermissionDenied,
        );
    }
}

async fn another_spelling_of_a_users_id_is_not_that_user(app: TestApp) {
    let mut admin = app.client.clone();
    let me = create(&mut admin, user("spelled@example.com")).await;
    let id = uuid::Uuid::parse_str(&me.id).expect("a UUID id");
    let path = format!("/v1/users/{}", me.id);
    // The canonical spelling is the user, over both protocols.
    let mut canonical = app.client_with(Some(token(&me.id, &[]))).await;
    canonical
        .get_user(pb::GetUserRequest { id: me.id.clone() })
        .await
        .expect("own user over gRPC");
    let rest = HttpClient::with_token(app.addr, Some(token(&me.id, &[])));
    assert_eq!(rest.rest(Method::GET, &path, None, &[]).await.status, StatusCode::OK);
    for sub in [
        format!("urn:uuid:{id}"),
        format!("{{{id}}}"),
        me.id.to_uppercase(),
        id.simple().to_string(),
    ] {
        let mut grpc = app.client_with(Some(token(&sub, &[]))).await;
        expect_code(
            grpc.get_user(pb::GetUserRequest { id: me.id.clone() }).await,
            Code::PermissionDenied,
        );
        expect_code(
            update(
                &mut grpc,
                pb::User {
                    id: me.id.clone(),
                    given_name: "Taken".into(),
                    ..Default::default()
                },
                &["given_name"],
            )
            .await,
            Code::PermissionDenied,
        );
        let rest = HttpClient::with_token(app.addr, Some(token(&sub, &[])));
        let response = rest.rest(Method::GET, &path, None, &[]).await;
        assert_eq!(response.status, StatusCode::FORBIDDEN, "{sub}");
        let response = rest
            .rest(Method::PATCH, &path, Some(json!({"givenName": "Taken"})), &[])
            .await;
        assert_eq!(response.status, StatusCode::FORBIDDEN, "{sub}");
    }
    let now = admin
        .get_user(pb::GetUserRequest { id: me.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(now.given_name, "", "no other spelling changed the user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_kid_gets_a_small_refusal() {
    let app = TestApp::start(Backend::Sqlite).await;
    // The longest kid whose token still fits the 64 KiB header block (base64 makes it 4/3 as long).
    let kid = "k".repeat(40_000);
    let header = jsonwebtoken::Header {
        kid: Some(kid),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
    };
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": "ops", "exp": in_an_hour()}).to_string());
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header"));
    let bad = format!("{header}.{claims}.c2lnbmF0dXJl");
    let response = HttpClient::with_token(app.addr, Some(bad.clone()))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert!(response.body.len() < 1024, "a {}-byte 401 body", response.body.len());
    let message = response.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(message.starts_with("no key with kid"), "{message}");
    assert!(message.contains(&"k".repeat(200)) && !message.contains(&"k".repeat(201)));
    let mut grpc = app.client_with(Some(bad)).await;
    let status = expect_code(
        grpc.list_users(pb::ListUsersRequest::default()).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().len() < 300,
        "a {}-byte grpc-message",
        status.message().len()
    );
    assert!(status.message().starts_with("no key with kid"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aud_arrays_are_accepted_when_they_name_the_audience() {
    let app = TestApp::start_with(Backend::Sqlite, |c| c.auth.jwt_audience = Some(AUDIENCE.into())).await;
    let with_aud = |aud: serde_json::Value| {
        forge(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "ops", "exp": in_an_hour(), "scope": "users.read", "aud": aud}),
        )
    };
    for aud in [json!(["billing", AUDIENCE]), json!([AUDIENCE]), json!(AUDIENCE)] {
        let mut client = app.client_with(Some(with_aud(aud.clone()))).await;
        client
            .list_users(pb::ListUsersRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{aud}: {e:?}"));
        let response = HttpClient::with_token(app.addr, Some(with_aud(aud.clone())))
            .rest(Method::GET, "/v1/users", None, &[])
            .await;
        assert_eq!(response.status, StatusCode::OK, "{aud}");
    }
    let response = HttpClient::with_token(app.addr, Some(with_aud(json!(["billing", "audit"]))))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.json()["error"]["message"],
        "the token is for another audience (aud)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crit_header_is_refused() {
    let app = TestApp::start(Backend::Sqlite).await;
    let claims = json!({"sub": "ops", "exp": in_an_hour(), "scope": "users.admin"});
    let plain = forge(&jsonwebtoken::Header::default(), &claims);
    let response = HttpClient::with_token(app.addr, Some(plain))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::OK, "the same token without crit is fine");
    let critical = forge(
        &jsonwebtoken::Header {
            crit: Some(vec!["x-unknown-extension".into()]),
            ..jsonwebtoken::Header::default()
        },
        &claims,
    );
    let response = HttpClient::with_token(app.addr, Some(critical.clone()))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let message = response.json()["error"]["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("crit"), "{message}");
    let mut grpc = app.client_with(Some(critical)).await;
    let status = expect_code(
        grpc.list_users(pb::ListUsersRequest::default()).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("crit"), "{}", status.message());
}

/// The gate remembers verified tokens; a remembered token must still stop working at its `exp` (plus the
/// leeway), on the same connection that had it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_before_is_refused_once_expired() {
    let app = TestApp::start(Backend::Sqlite).await;
    let leeway = user_service::auth::LEEWAY_SECONDS;
    let now = || SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    // A token two seconds from expiry (counting the leeway). Should the clock pass it before the first call
    // lands, a new one is minted: the first acceptance is what puts the token in the cache.
    let mut attempts = 0;
    let (exp, mut grpc, http) = loop {
        attempts += 1;
        assert!(attempts <= 10, "a fresh token was never accepted");
        let exp = now() + 2 - leeway;
        let token = forge(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "ops", "exp": exp, "scope": "users.admin"}),
        );
        let mut grpc = app.client_with(Some(token.clone())).await;
        if grpc.list_users(pb::ListUsersRequest::default()).await.is_err() {
            continue;
        }
        let http = HttpClient::with_token(app.addr, Some(token));
        if http.rest(Method::GET, "/v1/users", None, &[]).await.status == StatusCode::OK {
            break (exp, grpc, http);
        }
    };
    while now() <= exp + leeway + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = expect_code(
        grpc.list_users(pb::ListUsersRequest::default()).await,
        Code::Unauthenticated,
    );
    assert_eq!(status.message(), "the token has expired");
    let response = http.rest(Method::GET, "/v1/users", None, &[]).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.json()["error"]["message"], "the token has expired");
}

/// Signs claims with one of the test key pairs of tests/fixtures.
pub(crate) fn sign_with_fixture(
    algorithm: jsonwebtoken::Algorithm,
    kid: &str,
    pem_file: &str,
    sub: &str,
    scopes: &str,
) -> String {
    let pem = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(pem_file),
    )
    .expect("fixture key");
    let key = match algorithm {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .expect("fixture key parses");
    let mut header = jsonwebtoken::Header::new(algorithm);
    header.kid = Some(kid.into());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let claims = Claims {
        sub: sub.into(),
        exp: now + 600,
        nbf: Some(now - 10),
        iat: Some(now),
        scope: scopes.into(),
        iss: Some("https://issuer.test".into()),
        aud: None,
    };
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_verify_against_the_jwks_file() {
    let jwks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwks.json");
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.auth.jwks_file = Some(jwks);
        c.auth.jwt_issuer = Some("https://issuer.test".into());
    })
    .await;
    use jsonwebtoken::Algorithm::{ES256, RS256};
    for (algorithm, kid, pem) in [
        (RS256, "test-rsa", "rsa-test-key.pem"),
        (ES256, "test-ec", "ec-test-key.pem"),
    ] {
        let mut client = app
            .client_with(Some(sign_with_fixture(algorithm, kid, pem, "ops", "users.admin")))
            .await;
        client
            .list_users(pb::ListUsersRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{algorithm:?}: {e:?}"));
    }
    let refusals = [
        (
            sign_with_fixture(RS256, "unknown-kid", "rsa-test-key.pem", "ops", "users.admin"),
            "no key with kid",
        ),
        (
            sign_with_fixture(RS256, "test-ec", "rsa-test-key.pem", "ops", "users.admin"),
            "is not a RS256 key",
        ),
        (sign(TEST_SECRET, "ops", "users.admin", 600, None), "has no iss claim"),
    ];
    for (bad, why) in refusals {
        let mut client = app.client_with(Some(bad)).await;
        let status = expect_code(
            client.list_users(pb::ListUsersRequest::default()).await,
            Code::Unauthenticated,
        );
        assert!(status.message().contains(why), "{why}: {}", status.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_time_limit_end_with_deadline_exceeded() {
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.request_timeout = std::time::Duration::from_millis(1)
    })
    .await;
    // Hashing a password (Argon2id) takes far longer than the 1 ms limit.
    let mut c = app.client.clone();
    let slow = pb::User {
        email: "slow@example.com".into(),
        password: "Slow-Hash-1!".into(),
        ..Default::default()
    };
    expect_code(
        c.create_user(pb::CreateUserRequest {
            user: Some(slow),
            ..Default::default()
        })
        .await,
        Code::DeadlineExceeded,
    );
    let response = HttpClient::new(app.addr)
        .rest(
            Method::POST,
            "/v1/users",
            Some(json!({"email": "slow2@example.com", "password": "Slow-Hash-1!"})),
            &[],
        )
        .await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.json()["error"]["status"], "DEADLINE_EXCEEDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start_with(Backend::Sqlite, |c| {
        c.header_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    slow.write_all(b"GET /v1/users HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    let mut buffer = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the server closes the connection instead of waiting forever"
    );
    // Meanwhile others are served.
    let response = HttpClient::new(app.addr)
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let mut c = app.client.clone();
    let too_long: Vec<String> = (0..1001).map(|i| format!("labels.k{i}")).collect();
    let status = expect_code(
        c.update_user(pb::UpdateUserRequest {
            user: Some(pb::User {
                id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: too_long }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
    );
    assert_eq!(violation_fields(&status), vec!["update_mask"]);
}
