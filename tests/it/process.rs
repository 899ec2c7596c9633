//! The binary as an operator runs it: durability across `kill -9` and graceful shutdown on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use user_service::pb;
use user_service::pb::user_service_client::UserServiceClient;

use crate::support::{BearerToken, Client, TEST_SECRET, admin_token};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `user-service serve` on `port` and `database_url`, quiet, with no secret chosen yet.
pub(crate) fn serve_command(database_url: &str, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_user-service"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            database_url,
        ])
        .env("RUST_LOG", "warn")
        .env_remove("USER_SERVICE_JWT_SECRET")
        // As in the in-process tests: the load these tests make as one caller is not the limiter's to refuse.
        .env("USER_SERVICE_RATE_LIMIT", "1000000")
        .env("USER_SERVICE_RATE_BURST", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn spawn(database_url: &str, port: u16) -> Child {
    serve_command(database_url, port)
        .env("USER_SERVICE_JWT_SECRET", TEST_SECRET)
        .spawn()
        .expect("binary starts")
}

pub(crate) async fn connect(port: u16) -> Client {
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
        {
            return UserServiceClient::with_interceptor(channel, BearerToken(Some(admin_token())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server on port {port} did not come up");
}

/// Kill rounds of the crash-consistency check (each: write load, `kill -9` at a varying moment, restart).
const KILL_ROUNDS: u64 = 4;

/// Write load against one server until it dies: concurrent creates, and appends of unique `attributes` keys to
/// one shared user. Returns what was acknowledged.
async fn write_until_killed(port: u16, shared: String, round: u64) -> (Vec<String>, Vec<String>) {
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut client = connect(port).await;
        let shared = shared.clone();
        writers.push(tokio::spawn(async move {
            let (mut created, mut appended) = (Vec::new(), Vec::new());
            for i in 0.. {
                let result = if i % 2 == 0 {
                    client
                        .create_user(pb::CreateUserRequest {
                            user: Some(pb::User {
                                email: format!("r{round}w{w}i{i}@example.com"),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await
                        .map(|u| created.push(u.into_inner().id))
                } else {
                    let token = format!("r{round}w{w}i{i}");
                    let value = prost_types::Value {
                        kind: Some(prost_types::value::Kind::BoolValue(true)),
                    };
                    client
                        .update_user(pb::UpdateUserRequest {
                            user: Some(pb::User {
                                id: shared.clone(),
                                attributes: Some(prost_types::Struct {
                                    fields: [(token.clone(), value)].into(),
                                }),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec![format!("attributes.{token}")],
                            }),
                            ..Default::default()
                        })
                        .await
                        .map(|_| appended.push(token))
                };
                if result.is_err() {
                    break;
                }
            }
            (created, appended)
        }));
    }
    let mut acknowledged = (Vec::new(), Vec::new());
    for writer in writers {
        let (created, appended) = writer.await.expect("writer");
        acknowledged.0.extend(created);
        acknowledged.1.extend(appended);
    }
    acknowledged
}

#[derive(diesel::QueryableByName)]
struct IntegrityCheck {
    #[diesel(sql_type = diesel::sql_types::Text)]
    integrity_check: String,
}

#[derive(diesel::QueryableByName)]
struct RevisionCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    revision: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
}

/// Crash consistency: under write load the server is killed with SIGKILL at varying moments, several times.
/// After every restart each acknowledged write is there, SQLite's own integrity check passes, and every user's
/// revision equals its number of revision rows (SQLite, `synchronous=FULL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_rounds() {
    use diesel::{Connection, RunQueryDsl};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("users.db");
    let url = format!("sqlite://{}", path.display());
    let mut port = free_port();
    let mut child = spawn(&url, port);
    let mut client = connect(port).await;
    let shared = client
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: "shared@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("shared user")
        .into_inner()
        .id;
    let (mut created, mut appended) = (vec![shared.clone()], Vec::new());
    for round in 0..KILL_ROUNDS {
        let load = tokio::spawn(write_until_killed(port, shared.clone(), round));
        // A different moment each round, from early in the load to well into it.
        tokio::time::sleep(Duration::from_millis(300 + round * 350)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        let (c, a) = load.await.expect("load");
        assert!(
            !c.is_empty() && !a.is_empty(),
            "round {round}: writes were acknowledged before the kill"
        );
        created.extend(c);
        appended.extend(a);
        port = free_port();
        child = spawn(&url, port);
        client = connect(port).await;
        for id in &created {
            client
                .get_user(pb::GetUserRequest { id: id.clone() })
                .await
                .unwrap_or_else(|e| panic!("round {round}: acknowledged user {id} lost after kill -9: {e:?}"));
        }
        let user = client
            .get_user(pb::GetUserRequest { id: shared.clone() })
            .await
            .expect("shared")
            .into_inner();
        let keys: std::collections::BTreeSet<String> = user
            .attributes
            .map(|a| a.fields.into_keys().collect())
            .unwrap_or_default();
        for token in &appended {
            assert!(
                keys.contains(token),
                "round {round}: acknowledged append {token} lost after kill -9"
            );
        }
        let mut conn = diesel::SqliteConnection::establish(&path.to_string_lossy()).expect("open the database file");
        let check: Vec<IntegrityCheck> = diesel::sql_query("PRAGMA integrity_check")
            .load(&mut conn)
            .expect("integrity check");
        assert_eq!(
            check.iter().map(|c| c.integrity_check.as_str()).collect::<Vec<_>>(),
            vec!["ok"],
            "round {round}"
        );
        let counts: Vec<RevisionCount> = diesel::sql_query(
            "SELECT u.id AS id, u.revision AS revision, COUNT(r.revision) AS rows \
             FROM users u LEFT JOIN user_revisions r ON r.user_id = u.id GROUP BY u.id, u.revision",
        )
        .load(&mut conn)
        .expect("revision counts");
        for c in &counts {
            assert_eq!(
                c.revision, c.rows,
                "round {round}: user {} has revision {} but {} revision rows",
                c.id, c.revision, c.rows
            );
        }
        eprintln!(
            "kill round {round}: {} users and {} appends acknowledged so far, all present; integrity ok",
            created.len(),
            appended.len()
        );
    }
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

/// SIGTERM lets a running server finish and exit cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let port = free_port();
    let mut child = spawn(&url, port);
    let mut client = connect(port).await;
    client
        .create_user(pb::CreateUserRequest {
            user: Some(pb::User {
                email: "t@example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("server exited within 10 s of SIGTERM");
    assert!(status.success(), "clean exit, got {status:?}");
}

/// With no secret configured, the first start creates one (mode 0600) in the data folder, later starts reuse
/// it, and `user-service token` signs tokens the server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_a_secret_and_token_signs_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let url = format!("sqlite://{}", data.join("users.db").display());
    let start = |port: u16| {
        serve_command(&url, port)
            .env("USER_SERVICE_DATA_DIR", &data)
            .spawn()
            .expect("binary starts")
    };
    let port = free_port();
    let mut child = start(port);
    let _ = connect(port).await;
    let secret = data.join("jwt-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).expect("secret file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let first = std::fs::read_to_string(&secret).expect("secret");
    child.kill().expect("stop");
    child.wait().expect("reaped");

    let port = free_port();
    let mut child = start(port);
    let _ = connect(port).await;
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        first,
        "reused, not replaced"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args(["token", "--sub", "ops", "--scope", "users.admin", "--ttl", "5m"])
        .env("USER_SERVICE_DATA_DIR", &data)
        .env_remove("USER_SERVICE_JWT_SECRET")
        .output()
        .expect("token command");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = UserServiceClient::with_interceptor(channel.clone(), BearerToken(Some(token)));
    client
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect("the minted token is accepted");
    let mut forged = UserServiceClient::with_interceptor(channel, BearerToken(Some(admin_token())));
    let refused = forged
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect_err("another secret");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    child.kill().expect("stop");
    child.wait().expect("reaped");
}

/// A server process that is killed when dropped, so a failed assertion leaves no server running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `--jwks-file` only the JWKS keys are trusted: the secret an earlier start without configuration left in
/// the data folder signs nothing the server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jwks_file_the_data_folder_secret_is_not_trusted() {
    use http::{Method, StatusCode};
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let url = format!("sqlite://{}", data.join("users.db").display());
    let port = free_port();
    let first = KillOnDrop(
        serve_command(&url, port)
            .env("USER_SERVICE_DATA_DIR", &data)
            .spawn()
            .expect("binary starts"),
    );
    let _ = connect(port).await;
    let leftover = std::fs::read_to_string(data.join("jwt-secret")).expect("the first start wrote a secret");
    drop(first);

    let jwks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwks.json");
    let port = free_port();
    let _server = KillOnDrop(
        serve_command(&url, port)
            .env("USER_SERVICE_DATA_DIR", &data)
            .arg("--jwks-file")
            .arg(&jwks)
            .spawn()
            .expect("binary starts"),
    );
    let _ = connect(port).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // The JWKS keys are served (so the server is up and refusals below are about the token)…
    let rs256 = crate::auth::sign_with_fixture(
        jsonwebtoken::Algorithm::RS256,
        "test-rsa",
        "rsa-test-key.pem",
        "ops",
        "users.admin",
    );
    let response = crate::http::HttpClient::with_token(addr, Some(rs256))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.body);
    // …while an admin token signed with the leftover secret is refused, over REST and gRPC.
    let config = user_service::auth::AuthConfig {
        jwt_secret: Some(leftover.trim().to_owned()),
        ..Default::default()
    };
    let forged = user_service::auth::signer_for_cli(&config)
        .and_then(|s| s.sign("ops", &["users.admin".into()], Duration::from_secs(300)))
        .expect("sign");
    let response = crate::http::HttpClient::with_token(addr, Some(forged.clone()))
        .rest(Method::GET, "/v1/users", None, &[])
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = UserServiceClient::with_interceptor(channel, BearerToken(Some(forged)));
    let refused = client
        .list_users(pb::ListUsersRequest::default())
        .await
        .expect_err("the leftover secret is not configuration");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

/// A start with an HS256 secret under 32 bytes, given or found in the data folder, fails with a message saying
/// so; the `token` command refuses it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_secret_stops_the_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let url = format!("sqlite://{}", data.join("users.db").display());
    let short_file = dir.path().join("short");
    std::fs::create_dir_all(&short_file).expect("dir");
    std::fs::write(short_file.join("jwt-secret"), "0123456789abcdef0123456789abcde").expect("31 bytes");
    let given = KillOnDrop(
        serve_command(&url, free_port())
            .env("USER_SERVICE_DATA_DIR", &data)
            .env("USER_SERVICE_JWT_SECRET", "x")
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts"),
    );
    let other_url = format!("sqlite://{}", short_file.join("users.db").display());
    let found = KillOnDrop(
        serve_command(&other_url, free_port())
            .env("USER_SERVICE_DATA_DIR", &short_file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts"),
    );
    let file = short_file.join("jwt-secret").display().to_string();
    for (mut child, what) in [(given, "--jwt-secret"), (found, file.as_str())] {
        let mut exited = None;
        // Generous: the process exits as soon as it has read its configuration.
        for _ in 0..300 {
            if let Some(status) = child.0.try_wait().expect("try_wait") {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(status) = exited else {
            panic!("a server with a short secret ({what}) kept running");
        };
        assert!(!status.success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
        assert!(stderr.contains(what) && stderr.contains("at least 32"), "{stderr}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args(["token", "--sub", "ops", "--scope", "users.admin"])
        .env("USER_SERVICE_DATA_DIR", &data)
        .env("USER_SERVICE_JWT_SECRET", "short-secret")
        .output()
        .expect("token command");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("at least 32") && !stderr.contains("short-secret"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no token printed");
}

/// Runs `migrate` on a fresh database with `extra` flags and returns what it logged to stdout (a pipe).
fn migrate_logs(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let output = Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args(extra)
        .args(["migrate", "--database-url", &url])
        .env("RUST_LOG", "info")
        .env_remove("USER_SERVICE_LOG_FORMAT")
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "migrate fails: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 logs")
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_json_logs_are_json() {
    let text = migrate_logs(&[]);
    assert!(text.contains("migrations done"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI escapes in a pipe: {text:?}");

    let json = migrate_logs(&["--log-format", "json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "migrations done"),
        "{json}"
    );
}
