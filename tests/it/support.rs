//! The test harness: a real server on 127.0.0.1:0 over a fresh database (a temporary SQLite file, or a fresh
//! PostgreSQL schema in the database of `TEST_DATABASE_URL`), and a real tonic client.

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

/// The PostgreSQL URL of the test database. The PostgreSQL tests are compiled as ignored without
/// `TEST_DATABASE_URL` (see `build.rs`), so one that runs without it was asked for by name: it fails, since a
/// test that returned early would be counted as passing.
pub fn postgres_url() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("TEST_DATABASE_URL is not set: this test needs PostgreSQL"),
    }
}

/// A change to the configuration of a test server.
type Configure = Box<dyn FnOnce(&mut ServeConfig) + Send>;

/// How a test server starts: the configuration changes (applied in order over the test defaults) that the
/// server of either backend starts with. `backend_tests!(app = <builder>; ...)` starts both variants from one.
#[derive(Default)]
#[must_use = "a builder starts nothing until `start` is called"]
pub struct AppBuilder {
    configure: Vec<Configure>,
}

impl AppBuilder {
    /// Adds a change to the server's configuration.
    pub fn configure(mut self, change: impl FnOnce(&mut ServeConfig) + Send + 'static) -> AppBuilder {
        self.configure.push(Box::new(change));
        self
    }

    /// Starts a server on a fresh database of `backend`: a temporary SQLite file, or a fresh schema in the
    /// PostgreSQL database of `TEST_DATABASE_URL`.
    pub async fn start(self, backend: Backend) -> TestApp {
        capture_logs();
        let (database_url, dir, pg_schema) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("users.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let base = postgres_url();
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut conn = diesel::PgConnection::establish(&base).expect("TEST_DATABASE_URL reachable");
                conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                (url, None, Some((base, schema)))
            }
        };
        TestApp::start_on(database_url, dir, pg_schema, move |config| {
            for change in self.configure {
                change(config);
            }
        })
        .await
    }
}

impl TestApp {
    /// A builder of a test server with the test defaults.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// Starts a server with the test defaults on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> TestApp {
        TestApp::builder().start(backend).await
    }

    /// Starts a server whose configuration `configure` changes first.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut ServeConfig) + Send + 'static) -> TestApp {
        TestApp::builder().configure(configure).start(backend).await
    }

    /// Another server on this server's database (the same SQLite file, or the same PostgreSQL schema), as a
    /// second replica would run. The database stays owned by `self`: keep it alive while this one runs.
    pub async fn start_beside(&self) -> TestApp {
        self.start_beside_with(|_| {}).await
    }

    /// [`TestApp::start_beside`] with `configure` applied to the second server's configuration.
    pub async fn start_beside_with(&self, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
        TestApp::start_on(self.database_url.clone(), None, None, configure).await
    }

    /// Starts a server on an existing database; `dir` and `pg_schema` are what it removes when dropped.
    async fn start_on(
        database_url: String,
        dir: Option<tempfile::TempDir>,
        pg_schema: Option<(String, String)>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> TestApp {
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
        TestApp {
            addr,
            client,
            database_url,
            store,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            pg_schema,
        }
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

    /// A connection of the test's own to the server's database, beside the server.
    pub fn raw_connection(&self) -> RawConnection {
        match self.database_url.strip_prefix("sqlite://") {
            Some(path) => {
                RawConnection::Sqlite(diesel::SqliteConnection::establish(path).expect("open the database file"))
            }
            None => RawConnection::Postgres(diesel::PgConnection::establish(&self.database_url).expect("connect")),
        }
    }
}

/// A test's own connection to the server's database: for a test that holds a lock or changes a row behind
/// the service's back.
pub enum RawConnection {
    Sqlite(diesel::SqliteConnection),
    Postgres(diesel::PgConnection),
}

impl RawConnection {
    /// Runs `;`-separated statements for their effect.
    pub fn batch(&mut self, statements: &str) {
        match self {
            RawConnection::Sqlite(conn) => conn.batch_execute(statements),
            RawConnection::Postgres(conn) => conn.batch_execute(statements),
        }
        .expect("statements")
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&mut self, statement: &str) -> usize {
        use diesel::RunQueryDsl;
        match self {
            RawConnection::Sqlite(conn) => diesel::sql_query(statement).execute(conn),
            RawConnection::Postgres(conn) => diesel::sql_query(statement).execute(conn),
        }
        .expect("statement")
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

/// Declares each listed `async fn(TestApp)` as two tests, `<name>::sqlite` and `<name>::postgres`, whose servers
/// start from one [`AppBuilder`]: `app = <builder expression>;` first (names of the enclosing module are in
/// scope), or `configure = <name of a fn(&mut ServeConfig)>;`, or nothing for the test defaults. Without
/// `TEST_DATABASE_URL` the PostgreSQL variants are reported as ignored.
#[macro_export]
macro_rules! backend_tests {
    (app = $app:expr; $($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                use $crate::support::{AppBuilder, Backend};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app: AppBuilder = $app;
                    super::$name(app.start(Backend::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(test_database), ignore = "TEST_DATABASE_URL is not set")]
                async fn postgres() {
                    let app: AppBuilder = $app;
                    super::$name(app.start(Backend::Postgres).await).await;
                }
            }
        )*
    };
    (configure = $configure:ident; $($name:ident),* $(,)?) => {
        $crate::backend_tests!(app = $crate::support::TestApp::builder().configure(super::$configure); $($name),*);
    };
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(app = $crate::support::TestApp::builder(); $($name),*);
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

/// Spawns one `given_name` update per user, spread over `clients` in turn, each naming the user `"{label} {n}"`.
pub fn spawn_updates(
    clients: &[Client],
    users: &[pb::User],
    label: &str,
) -> Vec<tokio::task::JoinHandle<Result<pb::User, Status>>> {
    users
        .iter()
        .enumerate()
        .map(|(n, stored)| {
            let mut client = clients[n % clients.len()].clone();
            let patch = pb::User {
                id: stored.id.clone(),
                given_name: format!("{label} {n}"),
                ..Default::default()
            };
            tokio::spawn(async move { update(&mut client, patch, &["given_name"]).await })
        })
        .collect()
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
