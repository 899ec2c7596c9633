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
