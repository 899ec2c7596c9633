//! E-mail verification (API §8) end to end on both backends: mail through a real SMTP exchange and through
//! `.eml` files, the rules of codes, the resend limit, and the outbox's transactional queueing.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use user_service::config::ServeConfig;
use user_service::pb;

use crate::http::HttpClient;
use crate::smtp::{SmtpServer, verification_code};
use crate::support::{Backend, Client, TestApp, admin_token, expect_code, reason, token, user, violation_fields};

/// Declares each `async fn(Backend)` as `<name>::sqlite` and `<name>::postgres` (ignored without
/// `TEST_DATABASE_URL`): these tests start their SMTP server before the service, so they start it themselves.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(crate::support::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
                async fn postgres() {
                    super::$name(crate::support::Backend::Postgres).await;
                }
            }
        )*
    };
}

both_backends!(
    a_mail_arrives_in_the_user_s_language_and_its_code_verifies,
    wrong_used_and_other_users_codes_are_refused,
    expired_codes_are_refused,
    a_change_of_email_voids_outstanding_codes,
    return_code_is_for_administrators_only,
    sending_is_limited_to_once_a_minute,
    a_verified_address_is_a_failed_precondition,
    five_wrong_codes_void_every_code,
    a_burst_of_wrong_codes_gets_five_checks,
    a_change_that_rolls_back_queues_nothing,
    the_file_transport_writes_an_eml_with_the_code,
);

const WAIT: Duration = Duration::from_secs(20);

fn mail_config(smtp: &SmtpServer) -> impl FnOnce(&mut ServeConfig) + Send + 'static {
    let url = smtp.url();
    move |config: &mut ServeConfig| {
        config.mail.smtp_url = Some(url);
        config.mail.mail_poll_interval = Duration::from_millis(100);
        config.mail.mail_retry_delay = Duration::from_millis(100);
    }
}

async fn mail_app(backend: Backend, smtp: &SmtpServer) -> TestApp {
    TestApp::builder().configure(mail_config(smtp)).start(backend).await
}

async fn create_with_mail(c: &mut Client, user: pb::User) -> Result<pb::User, Status> {
    c.create_user(pb::CreateUserRequest {
        user: Some(user),
        send_verification_email: true,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn plain_user(c: &mut Client, email: &str) -> pb::User {
    crate::support::create(c, user(email)).await
}

async fn returned_code(c: &mut Client, id: &str) -> Result<String, Status> {
    c.send_verification_email(pb::SendVerificationEmailRequest {
        id: id.to_owned(),
        return_code: true,
    })
    .await
    .map(|r| r.into_inner().verification_code)
}

async fn verify(c: &mut Client, id: &str, code: &str) -> Result<pb::User, Status> {
    c.verify_email(pb::VerifyEmailRequest {
        id: id.to_owned(),
        verification_code: code.to_owned(),
    })
    .await
    .map(tonic::Response::into_inner)
}

#[track_caller]
fn expect_invalid_code(result: Result<pb::User, Status>) -> Status {
    let status = expect_code(result, Code::InvalidArgument);
    assert_eq!(reason(&status), "INVALID_VERIFICATION_CODE");
    assert_eq!(violation_fields(&status), vec!["verification_code"]);
    status
}

/// A client acting as the user `id` (no scope).
async fn own_client(app: &TestApp, id: &str) -> Client {
    app.client_with(Some(token(id, &[]))).await
}

async fn a_mail_arrives_in_the_user_s_language_and_its_code_verifies(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let ana = create_with_mail(
        &mut c,
        pb::User {
            email: "ana@example.com".into(),
            given_name: "Ana".into(),
            language_code: "es-CO".into(),
            ..Default::default()
        },
    )
    .await
    .expect("created");
    let bo = create_with_mail(
        &mut c,
        pb::User {
            email: "bo@example.com".into(),
            language_code: "en".into(),
            ..Default::default()
        },
    )
    .await
    .expect("created");
    let mails = smtp.wait_for(2, WAIT).await;
    let to_ana = mails.iter().find(|m| m.to == ["ana@example.com"]).expect("mail to ana");
    let to_bo = mails.iter().find(|m| m.to == ["bo@example.com"]).expect("mail to bo");
    assert_eq!(to_ana.from, "no-reply@localhost");
    let subject = to_ana.header("Subject").expect("subject");
    assert!(subject.starts_with("Confirma tu"), "{subject}");
    assert!(to_ana.unfolded().contains("Hola, Ana:"), "{}", to_ana.data);
    assert_eq!(to_bo.header("Subject").as_deref(), Some("Confirm your e-mail address"));
    assert!(to_bo.unfolded().contains("Hello,"));
    let message_id = to_ana.header("Message-ID").expect("message id");
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@localhost>"),
        "{message_id}"
    );
    assert_ne!(Some(message_id), to_bo.header("Message-ID"));

    // The user verifies with its own token; the revision names it and the one path.
    let code = to_ana.code().expect("code in the mail");
    let mut own = own_client(&app, &ana.id).await;
    let verified = verify(&mut own, &ana.id, &code).await.expect("verifies");
    assert!(verified.email_verified);
    assert_eq!(verified.revision, ana.revision + 1);
    let revisions = c
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: ana.id.clone(),
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner()
        .revisions;
    assert_eq!(revisions[0].actor, ana.id);
    assert_eq!(
        revisions[0].update_mask.as_ref().map(|m| m.paths.clone()),
        Some(vec!["email_verified".to_owned()])
    );
    // Another user's mailed code does not verify Ana's address... and Bo's own does.
    let bo_code = to_bo.code().expect("code");
    assert_ne!(bo_code, code);
    expect_code(verify(&mut c, &ana.id, &bo_code).await, Code::FailedPrecondition);
    assert!(
        verify(&mut c, &bo.id, &bo_code)
            .await
            .expect("bo verifies")
            .email_verified
    );
    // Nothing was sent twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.mails().len(), 2);
}

async fn wrong_used_and_other_users_codes_are_refused(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let bob = plain_user(&mut c, "bob@example.com").await;
    let ann_code = returned_code(&mut c, &ann.id).await.expect("code");
    let bob_code = returned_code(&mut c, &bob.id).await.expect("code");
    assert_eq!(ann_code.len(), 43, "256 bits, base64url");
    expect_invalid_code(verify(&mut c, &ann.id, &bob_code).await);
    expect_invalid_code(verify(&mut c, &ann.id, "not-the-code").await);
    expect_invalid_code(verify(&mut c, &ann.id, &"x".repeat(5000)).await);
    let mut own = own_client(&app, &ann.id).await;
    expect_invalid_code(verify(&mut own, &ann.id, "").await);
    assert!(
        verify(&mut own, &ann.id, &ann_code)
            .await
            .expect("verifies")
            .email_verified
    );
    // Used: it does not verify again (the address is verified now).
    let again = expect_code(verify(&mut own, &ann.id, &ann_code).await, Code::FailedPrecondition);
    assert_eq!(reason(&again), "EMAIL_ALREADY_VERIFIED");
    // Bob's code still works for Bob after Ann's attempts with it.
    assert!(
        verify(&mut c, &bob.id, &bob_code)
            .await
            .expect("verifies")
            .email_verified
    );
    // Return-code calls send no mail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.mails().is_empty());
}

async fn expired_codes_are_refused(backend: Backend) {
    let app = TestApp::builder()
        .configure(|config| config.mail.verification_ttl = Duration::from_secs(1))
        .start(backend)
        .await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let code = returned_code(&mut c, &ann.id).await.expect("code");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    expect_invalid_code(verify(&mut c, &ann.id, &code).await);
    let user = c
        .get_user(pb::GetUserRequest { id: ann.id.clone() })
        .await
        .expect("get")
        .into_inner();
    assert!(!user.email_verified);
}

async fn a_change_of_email_voids_outstanding_codes(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let code = returned_code(&mut c, &ann.id).await.expect("code");
    let change = |email: &str| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: ann.id.clone(),
            email: email.to_owned(),
            ..Default::default()
        }),
        update_mask: crate::support::mask(&["email"]),
        send_verification_email: true,
        ..Default::default()
    };
    c.update_user(change("ann.new@example.com")).await.expect("changed");
    expect_invalid_code(verify(&mut c, &ann.id, &code).await);
    let mailed = smtp.wait_for(1, WAIT).await;
    assert_eq!(mailed[0].to, ["ann.new@example.com"]);
    let mailed_code = mailed[0].code().expect("code");
    // Changing it back voids the mailed code and does not revive the first one: codes are deleted, not just
    // mismatched.
    c.update_user(pb::UpdateUserRequest {
        send_verification_email: false,
        ..change("ann@example.com")
    })
    .await
    .expect("changed back");
    expect_invalid_code(verify(&mut c, &ann.id, &mailed_code).await);
    expect_invalid_code(verify(&mut c, &ann.id, &code).await);
}

async fn return_code_is_for_administrators_only(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let bob = plain_user(&mut c, "bob@example.com").await;
    let mut own = own_client(&app, &ann.id).await;
    let refused = expect_code(returned_code(&mut own, &ann.id).await, Code::PermissionDenied);
    assert_eq!(reason(&refused), "RETURN_CODE_ADMIN_ONLY");
    // Self-service on another user is refused, whether by code or by mail.
    expect_code(returned_code(&mut own, &bob.id).await, Code::PermissionDenied);
    let other = own
        .send_verification_email(pb::SendVerificationEmailRequest {
            id: bob.id.clone(),
            return_code: false,
        })
        .await;
    expect_code(other, Code::PermissionDenied);
    expect_code(verify(&mut own, &bob.id, "whatever").await, Code::PermissionDenied);
    // Its own mail it may ask for: the code is not in the answer, it is in the mail.
    let sent = own
        .send_verification_email(pb::SendVerificationEmailRequest {
            id: ann.id.clone(),
            return_code: false,
        })
        .await
        .expect("self-service send")
        .into_inner();
    assert!(sent.verification_code.is_empty());
    assert_eq!(sent.user.map(|u| u.id), Some(ann.id.clone()));
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails[0].to, ["ann@example.com"]);
    let code = mails[0].code().expect("code");
    assert!(verify(&mut own, &ann.id, &code).await.expect("verifies").email_verified);
    // An administrator may vouch without a code (imported users).
    assert!(
        verify(&mut c, &bob.id, "")
            .await
            .expect("admin verifies")
            .email_verified
    );
}

async fn sending_is_limited_to_once_a_minute(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    returned_code(&mut c, &ann.id).await.expect("first");
    let status = expect_code(returned_code(&mut c, &ann.id).await, Code::ResourceExhausted);
    assert_eq!(reason(&status), "VERIFICATION_THROTTLED");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(
        delay > Duration::from_secs(50) && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
    // The limit is the store's, so a second process on the same database keeps it.
    let beside = app.start_beside().await;
    let mut other = beside.client.clone();
    let mailed = other
        .send_verification_email(pb::SendVerificationEmailRequest {
            id: ann.id.clone(),
            return_code: false,
        })
        .await;
    let status = expect_code(mailed, Code::ResourceExhausted);
    assert_eq!(reason(&status), "VERIFICATION_THROTTLED");
    // REST gets 429 with Retry-After.
    let http = HttpClient::new(app.addr);
    let response = http
        .rest(
            Method::POST,
            &format!("/v1/users/{}:sendVerificationEmail", ann.id),
            Some(json!({})),
            &[],
        )
        .await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", response.body);
    assert!(response.headers.contains_key("retry-after"));
    // Another user is not limited by Ann's sends.
    let bob = plain_user(&mut c, "bob@example.com").await;
    returned_code(&mut c, &bob.id).await.expect("bob's first");
}

async fn a_verified_address_is_a_failed_precondition(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    verify(&mut c, &ann.id, "").await.expect("admin verifies");
    for result in [
        returned_code(&mut c, &ann.id).await.map(|_| ()),
        verify(&mut c, &ann.id, "").await.map(|_| ()),
    ] {
        let status = expect_code(result, Code::FailedPrecondition);
        assert_eq!(reason(&status), "EMAIL_ALREADY_VERIFIED");
    }
    // A change of address makes it unverified again, and a new code can be sent.
    let changed = crate::support::update(
        &mut c,
        pb::User {
            id: ann.id.clone(),
            email: "ann2@example.com".into(),
            ..Default::default()
        },
        &["email"],
    )
    .await
    .expect("changed");
    assert!(!changed.email_verified);
    let code = returned_code(&mut c, &ann.id).await.expect("code after the change");
    assert!(verify(&mut c, &ann.id, &code).await.expect("verifies").email_verified);
}

async fn five_wrong_codes_void_every_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let code = returned_code(&mut c, &ann.id).await.expect("code");
    for i in 0..5 {
        let status = expect_invalid_code(verify(&mut c, &ann.id, &format!("wrong-{i}")).await);
        assert!(status.message().contains("is not a valid"), "{}", status.message());
    }
    let status = expect_invalid_code(verify(&mut c, &ann.id, &code).await);
    assert!(status.message().contains("void"), "{}", status.message());
    // A count across processes: the second server sees the same void codes.
    let beside = app.start_beside().await;
    let mut other = beside.client.clone();
    expect_invalid_code(verify(&mut other, &ann.id, &code).await);
}

async fn a_burst_of_wrong_codes_gets_five_checks(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut c = app.client.clone();
    let ann = plain_user(&mut c, "ann@example.com").await;
    let code = returned_code(&mut c, &ann.id).await.expect("code");
    let mut burst = Vec::new();
    for i in 0..20 {
        let mut c = app.new_client().await;
        let id = ann.id.clone();
        burst.push(tokio::spawn(
            async move { verify(&mut c, &id, &format!("guess-{i}")).await },
        ));
    }
    let mut checked = 0;
    for task in burst {
        let status = expect_invalid_code(task.await.expect("task"));
        if status.message().contains("is not a valid") {
            checked += 1;
        } else {
            assert!(status.message().contains("void"), "{}", status.message());
        }
    }
    assert_eq!(checked, 5, "20 concurrent guesses get the 5 checks sequential ones get");
    expect_invalid_code(verify(&mut c, &ann.id, &code).await);
}

async fn a_change_that_rolls_back_queues_nothing(backend: Backend) {
    let smtp = SmtpServer::start().await;
    let app = mail_app(backend, &smtp).await;
    let mut c = app.client.clone();
    let taken = plain_user(&mut c, "taken@example.com").await;
    // Invalid field, taken address, validate-only: nothing is written, nothing is queued.
    expect_code(
        create_with_mail(
            &mut c,
            pb::User {
                email: "x1@example.com".into(),
                phone_number: "12".into(),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
    );
    expect_code(
        create_with_mail(&mut c, user("taken@example.com")).await,
        Code::AlreadyExists,
    );
    c.create_user(pb::CreateUserRequest {
        user: Some(user("preview@example.com")),
        validate_only: true,
        send_verification_email: true,
        ..Default::default()
    })
    .await
    .expect("validate only");
    let ann = plain_user(&mut c, "ann@example.com").await;
    let update = |email: &str, etag: &str, validate_only: bool| pb::UpdateUserRequest {
        user: Some(pb::User {
            id: ann.id.clone(),
            email: email.to_owned(),
            etag: etag.to_owned(),
            ..Default::default()
        }),
        update_mask: crate::support::mask(&["email"]),
        validate_only,
        send_verification_email: true,
        ..Default::default()
    };
    expect_code(
        c.update_user(update("x2@example.com", "1-stale", false)).await,
        Code::Aborted,
    );
    expect_code(
        c.update_user(update(&taken.email, "", false)).await,
        Code::AlreadyExists,
    );
    expect_code(
        c.update_user(update("not an address", "", false)).await,
        Code::InvalidArgument,
    );
    c.update_user(update("x3@example.com", "", true))
        .await
        .expect("validate only");
    // An update that keeps the address asks for nothing either.
    c.update_user(update("ann@example.com", "", false))
        .await
        .expect("no-op");
    // The one change that commits and changes the address is the one mail.
    c.update_user(update("ann.new@example.com", "", false))
        .await
        .expect("changed");
    let mails = smtp.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails_after = smtp.mails();
    assert_eq!(
        mails_after.len(),
        1,
        "{:?}",
        mails_after.iter().map(|m| &m.to).collect::<Vec<_>>()
    );
    assert_eq!(mails[0].to, ["ann.new@example.com"]);
}

async fn the_file_transport_writes_an_eml_with_the_code(backend: Backend) {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_owned();
    let app = TestApp::builder()
        .configure(move |config| {
            config.auth.data_dir = dir;
            config.mail.mail_poll_interval = Duration::from_millis(100);
            config.mail.verification_url = Some("https://app.test/verify?u={id}&c={code}&e={email}".into());
        })
        .start(backend)
        .await;
    // Over REST, `sendVerificationEmail` is a query parameter of CreateUser.
    let http = HttpClient::with_token(app.addr, Some(admin_token()));
    let response = http
        .rest(
            Method::POST,
            "/v1/users?sendVerificationEmail=true",
            Some(json!({"email": "Ann+1@example.com", "givenName": "Ann"})),
            &[],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    let id = response.json()["id"].as_str().expect("id").to_owned();
    let outbox = data.path().join("outbox");
    let deadline = tokio::time::Instant::now() + WAIT;
    let eml = loop {
        let found = std::fs::read_dir(&outbox)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "eml"));
        if let Some(entry) = found {
            break std::fs::read_to_string(entry.path()).expect("read eml");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no .eml in {}",
            outbox.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let unfolded = eml.replace("=\r\n", "");
    assert!(unfolded.contains("To: Ann <Ann+1@example.com>"), "{eml}");
    let code = verification_code(&unfolded).expect("code in the file");
    // The link carries the URL-encoded values (quoted-printable writes `=` as `=3D`).
    let link = format!("https://app.test/verify?u=3D{id}&c=3D{code}&e=3DAnn%2B1%40example.com");
    assert!(unfolded.contains(&link), "{unfolded}");
    let response = http
        .rest(
            Method::POST,
            &format!("/v1/users/{id}:verifyEmail"),
            Some(json!({"verificationCode": code})),
            &[],
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    assert_eq!(response.json()["emailVerified"], json!(true));
}

/// Two processes on one PostgreSQL database share the queue: 200 mails queued in one transaction are each
/// delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
async fn two_processes_send_each_queued_mail_once_postgres() {
    let smtp = SmtpServer::start().await;
    let app = mail_app(Backend::Postgres, &smtp).await;
    let beside = app.start_beside_with(mail_config(&smtp)).await;
    let requests = (0..200)
        .map(|i| pb::UpdateUserRequest {
            user: Some(pb::User {
                id: uuid::Uuid::now_v7().to_string(),
                email: format!("u{i}@example.com"),
                ..Default::default()
            }),
            allow_missing: true,
            send_verification_email: true,
            ..Default::default()
        })
        .collect();
    let mut c = app.client.clone();
    c.batch_update_users(pb::BatchUpdateUsersRequest { requests })
        .await
        .expect("batch");
    let mails = smtp.wait_for(200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mails = if smtp.mails().len() > mails.len() {
        smtp.mails()
    } else {
        mails
    };
    let mut ids: Vec<String> = mails.iter().filter_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((mails.len(), ids.len()), (200, 200), "each mail once");
    let mut recipients: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 200);
    // Both processes took part, and between them sent each mail once.
    let first = HttpClient::new(app.addr).metric("user_service_mail_sent_total").await;
    let second = HttpClient::new(beside.addr)
        .metric("user_service_mail_sent_total")
        .await;
    assert_eq!(
        first + second,
        200.0,
        "sent by the first {first}, by the second {second}"
    );
    assert!(
        first > 0.0 && second > 0.0,
        "sent by the first {first}, by the second {second}"
    );
}

/// The outbox under faults, with the real binary: the SMTP server is down when the user is created, the
/// service is killed with SIGKILL after a failed attempt, the SMTP server comes up, and the restarted service
/// delivers the queued mail, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_mail_survives_smtp_down_and_kill_9() {
    use crate::process::{connect, free_port, serve_command};
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let smtp_port = free_port();
    let spawn = |port: u16| {
        serve_command(&url, port)
            .env("USER_SERVICE_JWT_SECRET", crate::support::TEST_SECRET)
            .env("USER_SERVICE_SMTP_URL", format!("smtp://127.0.0.1:{smtp_port}"))
            .env("USER_SERVICE_MAIL_RETRY_DELAY", "200ms")
            .env("USER_SERVICE_MAIL_POLL_INTERVAL", "100ms")
            .env("USER_SERVICE_DATA_DIR", dir.path())
            .spawn()
            .expect("binary starts")
    };
    let port = free_port();
    let mut child = spawn(port);
    let mut c = connect(port).await;
    let ann = create_with_mail(&mut c, user("ann@example.com"))
        .await
        .expect("created");
    let http = HttpClient::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    let deadline = tokio::time::Instant::now() + WAIT;
    // The attempt is counted when it fails; the queue's gauge is read again after the sender's batch, a moment
    // later, so both are awaited.
    while http.metric("user_service_mail_failed_attempts_total").await < 1.0
        || http.metric("user_service_mail_queued").await < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempt, or no queued mail, while SMTP is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let smtp = SmtpServer::start_on(smtp_port).await;
    let port = free_port();
    let mut child = spawn(port);
    let mut c = connect(port).await;
    let mails = smtp.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(smtp.mails().len(), 1, "the mail is sent once");
    assert_eq!(mails[0].to, ["ann@example.com"]);
    let code = mails[0].code().expect("code");
    assert!(verify(&mut c, &ann.id, &code).await.expect("verifies").email_verified);
    let http = HttpClient::new(format!("127.0.0.1:{port}").parse().expect("addr"));
    assert_eq!(http.metric("user_service_mail_sent_total").await, 1.0);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}
