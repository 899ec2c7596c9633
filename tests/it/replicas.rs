//! Several service processes on one database: replicas starting together on a fresh PostgreSQL database, and
//! two servers racing allow_missing upserts on one new id.

use std::process::{Child, Command};
use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use user_service::pb;

use crate::backend_tests;
use crate::process::{free_port, serve_command};
use crate::support::{BearerToken, Client, TEST_SECRET, TestApp, admin_token, mask, postgres_url};

backend_tests!(racing_upserts_on_one_new_id_from_two_servers_create_once);

/// `base` (a PostgreSQL URL) pointing at database `name` instead, keeping its host, user and parameters.
fn with_database(base: &str, name: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (base, None),
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let host = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{host}/{name}?{query}"),
        None => format!("{scheme}://{host}/{name}"),
    }
}

/// A PostgreSQL database of its own, dropped (with whatever still connects to it) at the end.
struct FreshDatabase {
    base: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    fn create(base: &str) -> FreshDatabase {
        let name = format!("replicas_{}", uuid::Uuid::new_v4().simple());
        let mut conn = diesel::PgConnection::establish(base).expect("TEST_DATABASE_URL reachable");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        FreshDatabase {
            base: base.to_owned(),
            url: with_database(base, &name),
            name,
        }
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(&self.base) {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// Child processes killed and reaped at the end, even when an assertion fails first.
struct Processes(Vec<(Child, std::path::PathBuf)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a process wrote to its stderr file, for a failure message.
fn stderr_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the server of `child` on `port` answers an authenticated ListUsers, or fails as soon as the
/// process has exited. The bound only guards against a hang; a healthy start takes well under a second.
async fn serving(child: &mut Child, stderr: &std::path::Path, port: u16) -> Client {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "the server on port {port} exited ({status}) instead of serving:\n{}",
                stderr_of(stderr)
            );
        }
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut client = user_service::pb::user_service_client::UserServiceClient::with_interceptor(
                channel,
                BearerToken(Some(admin_token())),
            );
            if client.list_users(pb::ListUsersRequest::default()).await.is_ok() {
                return client;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server on port {port} did not come up:\n{}", stderr_of(stderr));
}

/// Replicas started together on a fresh PostgreSQL database: three `serve` processes and one `migrate`, all
/// at once, several rounds (each on a new database). Every server must come up and serve, `migrate` must
/// succeed, and one schema must result: a user created through one replica is read through the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
async fn replicas_start_together_on_a_fresh_postgres_database() {
    let base = postgres_url();
    for round in 0..ROUNDS {
        let db = FreshDatabase::create(&base);
        start_together(&db.url, round).await;
        drop(db);
    }
}

/// The same on one fresh SQLite file (processes on one host sharing a volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_start_together_on_a_fresh_sqlite_file() {
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        start_together(&format!("sqlite://{}", dir.path().join("users.db").display()), round).await;
    }
}

/// Rounds of [`start_together`], each on a new database: the start-up race is hit often, not every time.
const ROUNDS: usize = 3;

/// Starts three `serve` processes and one `migrate` on `url` back to back, before anything waits, so that
/// their migrations overlap; then checks that all of them succeed and share one schema.
async fn start_together(url: &str, round: usize) {
    const SERVERS: usize = 3;
    let logs = tempfile::tempdir().expect("temp dir");
    let mut started = Vec::new();
    let mut ports = Vec::new();
    for i in 0..SERVERS {
        let port = free_port();
        let err_path = logs.path().join(format!("serve-{i}.log"));
        let child = serve_command(url, port)
            .env("USER_SERVICE_JWT_SECRET", TEST_SECRET)
            .stderr(std::fs::File::create(&err_path).expect("log file"))
            .spawn()
            .expect("binary starts");
        started.push((child, err_path));
        ports.push(port);
    }
    let migrate_err = logs.path().join("migrate.log");
    let migrate = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args(["migrate", "--database-url", url])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&migrate_err).expect("log file"))
        .spawn()
        .expect("binary starts");
    started.push((migrate, migrate_err));
    let mut processes = Processes(started);

    let mut clients = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (child, err_path) = &mut processes.0[i];
        clients.push(serving(child, err_path, *port).await);
    }
    let (migrate, migrate_err) = &mut processes.0[SERVERS];
    let status = migrate.wait().expect("migrate ends");
    assert!(
        status.success(),
        "round {round}: `migrate` beside starting servers failed ({status}):\n{}",
        stderr_of(migrate_err)
    );

    let created = clients[0]
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: format!("replica{round}@example.com"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create through the first replica")
        .into_inner();
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        let read = client
            .get_user(pb::GetUserRequest { id: created.id.clone() })
            .await
            .unwrap_or_else(|e| panic!("round {round}: replica {i} does not see the user: {e:?}"))
            .into_inner();
        assert_eq!(read.email, created.email);
    }
}

/// Upserts racing on one new id, split across two servers on one database.
const UPSERTS: usize = 80;
/// Connections per server the upserts are spread over.
const CONNECTIONS: usize = 8;

/// `allow_missing` UpdateUser calls on one id that does not exist yet, all at once from two servers on one
/// database, each setting an attribute of its own: one call creates the user and every other one updates it. No
/// call fails (never ALREADY_EXISTS for that id), the history holds one create, and every attribute landed.
async fn racing_upserts_on_one_new_id_from_two_servers_create_once(first: TestApp) {
    let second = first.start_beside().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut clients = Vec::new();
    for server in [&first, &second] {
        for _ in 0..CONNECTIONS {
            clients.push(server.new_client().await);
        }
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(UPSERTS));
    let mut calls = Vec::new();
    for n in 0..UPSERTS {
        let mut client = clients[n % clients.len()].clone();
        let (id, start) = (id.clone(), start.clone());
        calls.push(tokio::spawn(async move {
            let key = format!("call{n}");
            start.wait().await;
            client
                .update_user(pb::UpdateUserRequest {
                    user: Some(pb::User {
                        id,
                        email: "upsert@example.com".into(),
                        attributes: Some(prost_types::Struct {
                            fields: [(
                                key.clone(),
                                prost_types::Value {
                                    kind: Some(prost_types::value::Kind::BoolValue(true)),
                                },
                            )]
                            .into(),
                        }),
                        ..Default::default()
                    }),
                    update_mask: mask(&[&format!("attributes.{key}")]),
                    allow_missing: true,
                    ..Default::default()
                })
                .await
        }));
    }
    let mut failed = Vec::new();
    for (n, call) in calls.into_iter().enumerate() {
        if let Err(status) = call.await.expect("call task") {
            failed.push(format!("call {n}: {:?} {}", status.code(), status.message()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {UPSERTS} upserts failed:\n{}",
        failed.len(),
        failed.join("\n")
    );

    let mut client = first.client.clone();
    let user = client
        .get_user(pb::GetUserRequest { id: id.clone() })
        .await
        .expect("the user exists")
        .into_inner();
    assert_eq!(user.revision, UPSERTS as i64, "one revision per call");
    let keys = user.attributes.map_or(0, |a| a.fields.len());
    assert_eq!(keys, UPSERTS, "every call's attribute landed");
    let revisions = client
        .list_user_revisions(pb::ListUserRevisionsRequest {
            id: id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("revisions")
        .into_inner()
        .revisions;
    assert_eq!(revisions.len(), UPSERTS);
    let creates: Vec<i64> = revisions
        .iter()
        .filter(|r| {
            r.update_mask
                .as_ref()
                .is_some_and(|m| m.paths.iter().any(|p| p == "email"))
        })
        .map(|r| r.revision)
        .collect();
    assert_eq!(creates, vec![1], "exactly one create, and it is revision 1");
    drop(second);
}
