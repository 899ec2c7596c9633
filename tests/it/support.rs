//! The test harness: a real server on 127.0.0.1:0 over a fresh database (a temporary SQLite file, or a fresh
//! PostgreSQL schema when `TEST_DATABASE_URL` is set), and a real tonic client.

use std::net::SocketAddr;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use tokio::sync::oneshot;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use user_service::config::ServeConfig;
use user_service::pb;
use user_service::pb::user_service_client::UserServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Everything the servers of this test binary log, at debug level, for tests that check what logs contain.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

#[derive(Clone)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = LogBuffer(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buffer
    });
}

/// What the test servers have logged so far.
pub fn captured_logs() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned())
        .unwrap_or_default()
}

/// The HS256 secret test servers use.
pub const TEST_SECRET: &str = "integration-test-secret-of-at-least-32-bytes";

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(pub Option<String>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("bad token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A client of the service that sends one fixed token (or none).
pub type Client = UserServiceClient<InterceptedService<Channel, BearerToken>>;

/// Signs a test token for `sub` with `scopes`.
pub fn token(sub: &str, scopes: &[&str]) -> String {
    token_with_ttl(sub, scopes, std::time::Duration::from_secs(3600))
}

pub fn token_with_ttl(sub: &str, scopes: &[&str], ttl: std::time::Duration) -> String {
    let config = user_service::auth::AuthConfig {
        jwt_secret: Some(TEST_SECRET.into()),
        ..Default::default()
    };
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    user_service::auth::signer_for_cli(&config)
        .and_then(|s| s.sign(sub, &scopes, ttl))
        .expect("test token")
}

/// A token of an administrator.
pub fn admin_token() -> String {
    token("test-admin", &["users.admin"])
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// A client authenticated as an administrator.
    pub client: Client,
    /// The database the server uses, for tests that open the store beside it.
    pub database_url: String,
    /// The server's own store, for tests that watch its writer.
    pub store: user_service::store::Store,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

/// The PostgreSQL URL of the test database, or `None` (with a note on stderr) when tests must skip it.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TEST_DATABASE_URL is not set: skipping the PostgreSQL variant of this test");
            None
        }
    }
}

impl TestApp {
    /// Starts a server on a fresh database of `backend`; `None` when PostgreSQL is not configured.
    pub async fn start(backend: Backend) -> Option<TestApp> {
        TestApp::start_with(backend, |_| {}).await
    }

    /// Starts a server whose configuration `configure` may change first.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut ServeConfig)) -> Option<TestApp> {
        capture_logs();
        let (database_url, dir, pg_schema) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("users.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let base = postgres_url()?;
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = diesel::PgConnection::establish(&base).expect("TEST_DATABASE_URL reachable");
                conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                (url, None, Some((base, schema)))
            }
        };
        TestApp::start_on(database_url, dir, pg_schema, configure).await
    }

    /// Another server on this server's database (the same SQLite file, or the same PostgreSQL schema), as a
    /// second replica would run. The database stays owned by `self`: keep it alive while this one runs.
    pub async fn start_beside(&self) -> TestApp {
        TestApp::start_on(self.database_url.clone(), None, None, |_| {})
            .await
            .expect("a server on the same database starts")
    }

    /// Starts a server on an existing database; `dir` and `pg_schema` are what it removes when dropped.
    async fn start_on(
        database_url: String,
        dir: Option<tempfile::TempDir>,
        pg_schema: Option<(String, String)>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Option<TestApp> {
        let mut config = ServeConfig::for_database(&database_url);
        config.database.db_pool_size = 8;
        config.auth.jwt_secret = Some(TEST_SECRET.into());
        // Tests make hundreds of calls as one caller as fast as the server answers; only the tests of the limiter
        // itself (which set their own) want it in the way.
        config.rate_limit = 1_000_000.0;
        config.rate_burst = 1_000_000;
        configure(&mut config);
        let app = user_service::app(&config).await.expect("app starts");
        let store = app.store.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            user_service::serve(listener, app, &config, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("client connects");
        let client = UserServiceClient::with_interceptor(channel, BearerToken(Some(admin_token())));
        Some(TestApp {
            addr,
            client,
            database_url,
            store,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            pg_schema,
        })
    }

    /// A new administrator client on its own connection.
    pub async fn new_client(&self) -> Client {
        self.client_with(Some(admin_token())).await
    }

    /// A client on its own connection that sends `token` (or no token).
    pub async fn client_with(&self, token: Option<String>) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("client connects");
        UserServiceClient::with_interceptor(channel, BearerToken(token))
    }
}

impl TestApp {
    /// Shuts the server down gracefully (as on SIGTERM) and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((base, schema)) = self.pg_schema.take() {
            // Best effort: a leftover schema only costs disk in the test database.
            if let Ok(mut conn) = diesel::PgConnection::establish(&base) {
                let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

/// Declares each listed `async fn(TestApp)` as two tests, `<name>::sqlite` and `<name>::postgres`. With
/// `configure = <name of a fn(&mut ServeConfig) beside the tests>;` first, the servers start with that configuration.
#[macro_export]
macro_rules! backend_tests {
    (configure = $configure:ident; $($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::{Backend, TestApp};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = TestApp::start_with(Backend::Sqlite, super::$configure).await.expect("SQLite is always available");
                    super::$name(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(app) = TestApp::start_with(Backend::Postgres, super::$configure).await else { return };
                    super::$name(app).await;
                }
            }
        )*
    };
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::{Backend, TestApp};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = TestApp::start(Backend::Sqlite).await.expect("SQLite is always available");
                    super::$name(app).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(app) = TestApp::start(Backend::Postgres).await else { return };
                    super::$name(app).await;
                }
            }
        )*
    };
}

/// A user with only the required field.
pub fn user(email: &str) -> pb::User {
    pb::User {
        email: email.to_owned(),
        ..Default::default()
    }
}

pub async fn create(client: &mut Client, user: pb::User) -> pb::User {
    client
        .create_user(pb::CreateUserRequest {
            user: Some(user),
            ..Default::default()
        })
        .await
        .expect("create succeeds")
        .into_inner()
}

pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

pub async fn update(client: &mut Client, user: pb::User, paths: &[&str]) -> Result<pb::User, Status> {
    client
        .update_user(pb::UpdateUserRequest {
            user: Some(user),
            update_mask: if paths.is_empty() { None } else { mask(paths) },
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The `BadRequest` field paths of an error.
pub fn violation_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo.reason` of an error.
pub fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// Asserts an error's code and returns it for further checks.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("expected {code:?}, got success: {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}
