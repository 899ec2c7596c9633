//! The binary as an operator runs it: durability across `kill -9` and graceful shutdown on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use user_service::pb;
use user_service::pb::user_service_client::UserServiceClient;

use crate::support::{BearerToken, Client, TEST_SECRET, admin_token};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(database_url: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_user-service"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            database_url,
        ])
        .env("RUST_LOG", "warn")
        .env("USER_SERVICE_JWT_SECRET", TEST_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts")
}

async fn connect(port: u16) -> Client {
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

/// Every write acknowledged before a `kill -9` is there after a restart (SQLite, `synchronous=FULL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("users.db").display());
    let port = free_port();
    let mut child = spawn(&url, port);
    let mut client = connect(port).await;
    let mut acknowledged = Vec::new();
    let writer = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10_000 {
                match client
                    .create_user(pb::CreateUserRequest {
                        user: Some(pb::User {
                            email: format!("k{i}@example.com"),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(user) => ids.push(user.into_inner().id),
                    Err(_) => break,
                }
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    acknowledged.extend(writer.await.expect("writer"));
    assert!(
        !acknowledged.is_empty(),
        "some writes were acknowledged before the kill"
    );

    let port = free_port();
    let mut child = spawn(&url, port);
    client = {
        let _ = client;
        connect(port).await
    };
    for id in &acknowledged {
        client
            .get_user(pb::GetUserRequest { id: id.clone() })
            .await
            .unwrap_or_else(|e| panic!("acknowledged user {id} lost after kill -9: {e:?}"));
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
        Command::new(env!("CARGO_BIN_EXE_user-service"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &url,
            ])
            .env("USER_SERVICE_DATA_DIR", &data)
            .env_remove("USER_SERVICE_JWT_SECRET")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
