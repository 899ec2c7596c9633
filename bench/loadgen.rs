//! The benchmark's load generator: seeds databases in SQL, drives one RPC over gRPC, gRPC-Web or REST at a
//! closed-loop concurrency or a fixed rate while checking every answer, and runs the same store calls
//! in-process. Prints one JSON object per run on stdout; bench/bench.py drives it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use diesel::Connection;
use diesel::connection::SimpleConnection;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use user_service::pb;
use user_service::pb::user_service_client::UserServiceClient;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second for user space.
const TICKS_PER_SECOND: f64 = 100.0;
/// Users per page of the list runs.
const PAGE_SIZE: i32 = 50;

#[derive(Parser)]
#[command(about = "Load generator of the user-service benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fill a migrated database with N users directly in SQL (ids 00000000-0000-4000-8000-<n in hex>).
    Seed {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        users: u64,
    },
    /// Give every seeded user one password (one Argon2id hash at the service's cost, shared by all of them).
    SetPassword {
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value = SEEDED_PASSWORD)]
        password: String,
    },
    /// Drive one RPC against a running server and print the run's figures as JSON.
    Run(RunArgs),
    /// Run the store's own calls in-process (no transport) and print the figures as JSON.
    Store {
        #[arg(long)]
        database_url: String,
        #[arg(long, value_enum)]
        op: StoreOp,
        #[arg(long)]
        users: u64,
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Time the REST answer's JSON for one page of users, in-process: protobuf encoding (what gRPC sends), the
    /// reflective writer (decode into a `DynamicMessage`, then write) and the wire writer, per page.
    Json {
        #[arg(long, default_value_t = 50)]
        users: usize,
        #[arg(long, default_value_t = 3_000)]
        pages: u32,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    target: String,
    /// Bearer token sent with every call.
    #[arg(long)]
    token: String,
    #[arg(long, value_enum)]
    protocol: Protocol,
    #[arg(long, value_enum)]
    op: Op,
    /// How many seeded users there are (ids and e-mails are drawn from 0..users).
    #[arg(long)]
    users: u64,
    /// Calls in flight at most (closed loop: exactly this many workers).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds the measured run lasts.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Calls in the measured run instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: calls per second on a fixed schedule instead of back to back.
    #[arg(long)]
    rate: Option<f64>,
    /// Server process whose CPU time is read around the measured run.
    #[arg(long)]
    server_pid: Option<u32>,
    /// HTTP/1.1 with a connection per worker for gRPC-Web and REST (default: HTTP/2 on one connection, as gRPC).
    #[arg(long)]
    http1: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Calls made before the measured run (not counted).
    #[arg(long, default_value_t = 200)]
    warmup_requests: u64,
    /// Users the verify runs take in turn instead of at random: `first..first+span` (with --user-span), so that
    /// runs of wrong guesses given disjoint slices never guess one user often enough to lock it out.
    #[arg(long, default_value_t = 0)]
    first_user: u64,
    #[arg(long)]
    user_span: Option<u64>,
    /// Worker threads of the client's runtime; 1 runs a current-thread runtime (the client has one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// WatchUsers streams (gRPC, a connection each) opened after the warm-up: each must receive every update of
    /// the measured run, and the time from the change's `update_time` to its arrival is reported (update runs).
    #[arg(long, default_value_t = 0)]
    watchers: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Protocol {
    Grpc,
    GrpcWeb,
    Rest,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Op {
    Get,
    Lookup,
    ListFirst,
    ListDeep,
    Update,
    Create,
    NoopGrpc,
    NoopHttp,
    /// VerifyPassword by id with the password `set-password` gave (gRPC only).
    VerifyRight,
    /// VerifyPassword by id with a wrong password: INVALID_CREDENTIALS is the expected answer.
    VerifyWrong,
    /// VerifyPassword by e-mail of nobody: INVALID_CREDENTIALS is the expected answer.
    VerifyUnknown,
}

/// The password `set-password` gives the seeded users unless told otherwise, and what verify-right sends.
const SEEDED_PASSWORD: &str = "Bench-Pass1!";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum StoreOp {
    Get,
    Update,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Seed { database_url, users } => seed(&database_url, users),
        Command::SetPassword { database_url, password } => set_password(&database_url, &password),
        Command::Run(args) => {
            let runtime = if args.threads <= 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(args.threads)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(run(args))
        }
        Command::Store {
            database_url,
            op,
            users,
            requests,
            concurrency,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(store(&database_url, op, users, requests, concurrency)),
        Command::Json { users, pages } => json_page(users, pages),
    }
}

// --- REST answer JSON, in-process ----------------------------------------------------------------------------

/// A ListUsers answer of `users` users shaped like the seeded ones (plus a label, a role and a membership each),
/// written `pages` times by each writer (the reflective one, the wire one after encoding, the typed one from the
/// message); prints the CPU time per page of each.
fn json_page(users: usize, pages: u32) -> anyhow::Result<()> {
    use prost::Message;
    use user_service::pb;
    let time = |n: usize| prost_types::Timestamp {
        seconds: 1_767_225_600 + n as i64,
        nanos: 1_000,
    };
    let page = pb::ListUsersResponse {
        users: (0..users)
            .map(|n| pb::User {
                id: seeded_id(n as u64),
                username: format!("user{n}"),
                email: format!("user{n}@bench.test"),
                given_name: format!("Given{n}"),
                family_name: format!("Family{n}"),
                state: pb::user::State::Active as i32,
                labels: [("team".to_owned(), "core".to_owned())].into(),
                roles: vec!["viewer".to_owned()],
                memberships: vec![pb::Membership {
                    organization_id: "org-1".to_owned(),
                    role: "member".to_owned(),
                    ..Default::default()
                }],
                create_time: Some(time(n)),
                update_time: Some(time(n)),
                revision: 1,
                etag: format!("1-{n}"),
                ..Default::default()
            })
            .collect(),
        next_page_token: "eyJxIjo5MjMwNzMyNjQ4NjkyODg0MzExfQ".to_owned(),
    };
    let pool = prost_reflect::DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET)?;
    let binding = user_service::transcode::rule::bindings(&pool)
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .find(|b| b.rpc.name() == "ListUsers" && b.http_method == http::Method::GET)
        .ok_or_else(|| anyhow::anyhow!("no GET binding of ListUsers"))?;
    let bytes = page.encode_to_vec();
    let per_page = |f: &mut dyn FnMut() -> usize| {
        let mut written = 0;
        let started = cpu_time();
        for _ in 0..pages {
            written = f();
        }
        ((cpu_time() - started) * 1e6 / f64::from(pages), written)
    };
    let (encode_us, encoded) = per_page(&mut || page.encode_to_vec().len());
    let (reflective_us, reflective_len) = per_page(&mut || {
        let message = prost_reflect::DynamicMessage::decode(binding.rpc.output(), bytes.as_slice()).expect("decodes");
        user_service::transcode::json::response_json(&binding, &message)
            .expect("writes")
            .len()
    });
    let (wire_us, wire_len) = per_page(&mut || {
        user_service::transcode::wire_json::response_json(&binding, &bytes)
            .expect("writes")
            .len()
    });
    let (typed_us, typed_len) = per_page(&mut || {
        user_service::typed_json::answer(&page, encoded)
            .expect("writes")
            .body
            .len()
    });
    anyhow::ensure!(
        reflective_len == wire_len && wire_len == typed_len,
        "the three writers wrote {reflective_len}, {wire_len} and {typed_len} bytes"
    );
    println!(
        "{}",
        serde_json::json!({
            "users_per_page": users, "pages": pages, "protobuf_bytes": encoded, "json_bytes": wire_len,
            "protobuf_encode_us": encode_us, "reflective_json_us": reflective_us, "wire_json_us": wire_us,
            "typed_json_us": typed_us,
        })
    );
    Ok(())
}

/// CPU time of this process so far, in seconds (to the 10 ms of a clock tick: time many pages).
fn cpu_time() -> f64 {
    cpu_ticks(std::process::id()).unwrap_or_default() as f64 / 100.0
}

fn seeded_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

// --- seeding ---------------------------------------------------------------------------------------------

/// Inserts users 0..n in one statement per table, as the service would store them: username `user<n>`, e-mail
/// `user<n>@bench.test`, names, no labels or roles, create_time one millisecond apart, revision 1 with its
/// revision row. SQLite keeps times as text, so they are written in the service's own form (six fractional
/// digits here, never a bare `.000`), which keeps text order and time order the same.
fn seed(url: &str, users: u64) -> anyhow::Result<()> {
    if users == 0 {
        return Ok(());
    }
    let last = users - 1;
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = diesel::SqliteConnection::establish(path)?;
        let time = "printf('2026-01-01 %02d:%02d:%02d.%06d', (i / 3600000) % 24, (i / 60000) % 60, (i / 1000) % 60, \
                    (i % 1000) * 1000 + 1)";
        conn.batch_execute(&format!(
            "PRAGMA journal_mode = WAL; BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
             INSERT INTO users (id, username, email, email_key, given_name, family_name, create_time, update_time,
                                revision)
             SELECT printf('00000000-0000-4000-8000-%012x', i), 'user' || i, 'user' || i || '@bench.test',
                    'user' || i || '@bench.test', 'Given' || i, 'Family' || i,
                    {time}, {time}, 1
             FROM n;
             INSERT INTO user_revisions (user_id, revision, actor, update_mask, create_time, before_values,
                                         after_values)
             SELECT id, 1, 'seed', '[\"email\",\"username\",\"given_name\",\"family_name\"]', create_time,
                    '{{\"email\":null,\"username\":null,\"given_name\":null,\"family_name\":null}}',
                    json_object('email', email, 'username', username, 'given_name', given_name,
                                'family_name', family_name)
             FROM users WHERE id LIKE '00000000-0000-4000-8000-%';
             COMMIT; ANALYZE; PRAGMA wal_checkpoint(TRUNCATE);"
        ))?;
    } else {
        let mut conn = diesel::PgConnection::establish(url)?;
        conn.batch_execute(&format!(
            "BEGIN;
             INSERT INTO users (id, username, email, email_key, given_name, family_name, create_time, update_time,
                                revision)
             SELECT '00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), 'user' || i,
                    'user' || i || '@bench.test', 'user' || i || '@bench.test', 'Given' || i, 'Family' || i,
                    timestamp '2026-01-01 00:00:00.000001' + i * interval '1 millisecond',
                    timestamp '2026-01-01 00:00:00.000001' + i * interval '1 millisecond', 1
             FROM generate_series(0::bigint, {last}) AS i;
             INSERT INTO user_revisions (user_id, revision, actor, update_mask, create_time, before_values,
                                         after_values)
             SELECT id, 1, 'seed', '[\"email\",\"username\",\"given_name\",\"family_name\"]', create_time,
                    '{{\"email\":null,\"username\":null,\"given_name\":null,\"family_name\":null}}',
                    json_build_object('email', email, 'username', username, 'given_name', given_name,
                                      'family_name', family_name)::text
             FROM users WHERE id LIKE '00000000-0000-4000-8000-%';
             COMMIT;"
        ))?;
        // VACUUM refuses to run in the implicit transaction of a multi-statement batch.
        conn.batch_execute("VACUUM ANALYZE users")?;
        conn.batch_execute("VACUUM ANALYZE user_revisions")?;
    }
    Ok(())
}

/// Stores one Argon2id hash of `password` (made as the service makes it) on every seeded user.
fn set_password(url: &str, password: &str) -> anyhow::Result<()> {
    let hash = user_service::domain::password::hash(password, &mut Default::default())
        .map_err(|e| anyhow::anyhow!("hashing: {e:?}"))?;
    // The hash is a PHC string of base64 and `$,=`: no quote can appear in it.
    anyhow::ensure!(!hash.contains('\''), "unexpected quote in a PHC string");
    let sql = format!("UPDATE users SET password_hash = '{hash}' WHERE id LIKE '00000000-0000-4000-8000-%'");
    if let Some(path) = url.strip_prefix("sqlite://") {
        diesel::SqliteConnection::establish(path)?.batch_execute(&sql)?;
    } else {
        diesel::PgConnection::establish(url)?.batch_execute(&sql)?;
    }
    Ok(())
}

// --- clients -----------------------------------------------------------------------------------------------

/// One way of calling the server; every call checks the answer and returns an error naming what was wrong.
#[derive(Clone)]
enum Caller {
    Grpc {
        users: UserServiceClient<Channel>,
        health: HealthClient<Channel>,
        auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    },
    Http {
        client: HttpClient<HttpConnector, Full<Bytes>>,
        base: String,
        auth: http::HeaderValue,
        grpc_web: bool,
    },
}

/// What one call asks for.
enum Call {
    Get(String),
    Lookup(String),
    List(String),
    Update {
        id: String,
        given_name: String,
        description: String,
    },
    Create {
        email: String,
        username: String,
    },
    NoopGrpc,
    NoopHttp,
    Verify {
        login: pb::verify_password_request::Login,
        password: String,
        /// Whether the password is the right one (else INVALID_CREDENTIALS is what a correct server answers).
        right: bool,
    },
}

impl Caller {
    async fn connect(args: &RunArgs) -> anyhow::Result<Caller> {
        let grpc = args.protocol == Protocol::Grpc && args.op != Op::NoopHttp;
        if grpc || args.op == Op::NoopGrpc {
            let channel = Channel::from_shared(args.target.clone())?.connect().await?;
            Ok(Caller::Grpc {
                users: UserServiceClient::new(channel.clone()),
                health: HealthClient::new(channel),
                auth: format!("Bearer {}", args.token).parse()?,
            })
        } else {
            let mut builder = HttpClient::builder(TokioExecutor::new());
            if !args.http1 {
                builder.http2_only(true);
            }
            builder.pool_max_idle_per_host(args.concurrency.max(1));
            // Without TCP_NODELAY small requests wait for delayed ACKs (Nagle), tens of milliseconds each.
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Ok(Caller::Http {
                client: builder.build(connector),
                base: args.target.trim_end_matches('/').to_owned(),
                auth: format!("Bearer {}", args.token).parse()?,
                grpc_web: args.protocol == Protocol::GrpcWeb,
            })
        }
    }

    async fn call(&mut self, call: Call) -> Result<(), String> {
        match self {
            Caller::Grpc { users, health, auth } => {
                fn request<T>(
                    message: T,
                    auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
                ) -> tonic::Request<T> {
                    let mut request = tonic::Request::new(message);
                    request.metadata_mut().insert("authorization", auth.clone());
                    request
                }
                let status = |e: tonic::Status| format!("grpc {:?}: {}", e.code(), e.message());
                match call {
                    Call::Get(id) => {
                        let user = users
                            .get_user(request(pb::GetUserRequest { id: id.clone() }, auth))
                            .await
                            .map_err(status)?;
                        check_id(&user.into_inner().id, &id)
                    }
                    Call::Lookup(email) => {
                        let user = users
                            .lookup_user(request(
                                pb::LookupUserRequest {
                                    email: email.clone(),
                                    username: String::new(),
                                },
                                auth,
                            ))
                            .await
                            .map_err(status)?;
                        check_email(&user.into_inner().email, &email)
                    }
                    Call::List(token) => {
                        let page = users
                            .list_users(request(list_request(token), auth))
                            .await
                            .map_err(status)?;
                        check_page(page.into_inner().users.len())
                    }
                    Call::Update {
                        id,
                        given_name,
                        description,
                    } => {
                        let user = users
                            .update_user(request(update_request(id, given_name.clone(), description), auth))
                            .await
                            .map_err(status)?;
                        check_given_name(&user.into_inner().given_name, &given_name)
                    }
                    Call::Create { email, username } => {
                        let user = users
                            .create_user(request(create_request(email.clone(), username), auth))
                            .await
                            .map_err(status)?;
                        check_email(&user.into_inner().email, &email)
                    }
                    Call::NoopGrpc => {
                        let answer = health
                            .check(HealthCheckRequest { service: String::new() })
                            .await
                            .map_err(status)?;
                        if answer.into_inner().status == 1 {
                            Ok(())
                        } else {
                            Err("health: not SERVING".into())
                        }
                    }
                    Call::NoopHttp => Err("noop-http needs an HTTP protocol".into()),
                    Call::Verify { login, password, right } => {
                        let want_id = match &login {
                            pb::verify_password_request::Login::Id(id) => Some(id.clone()),
                            _ => None,
                        };
                        let answer = users
                            .verify_password(request(
                                pb::VerifyPasswordRequest {
                                    login: Some(login),
                                    password,
                                },
                                auth,
                            ))
                            .await;
                        match (answer, right) {
                            (Ok(user), true) => check_id(&user.into_inner().id, want_id.as_deref().unwrap_or("")),
                            (Err(e), false) if e.code() == tonic::Code::InvalidArgument => Ok(()),
                            (Ok(_), false) => Err("a wrong password was accepted".into()),
                            (Err(e), _) => Err(status(e)),
                        }
                    }
                }
            }
            Caller::Http {
                client,
                base,
                auth,
                grpc_web,
            } => {
                if *grpc_web && !matches!(call, Call::NoopHttp) {
                    grpc_web_call(client, base, auth, call).await
                } else {
                    rest_call(client, base, auth, call).await
                }
            }
        }
    }
}

fn list_request(token: String) -> pb::ListUsersRequest {
    pb::ListUsersRequest {
        page_size: PAGE_SIZE,
        page_token: token,
        ..Default::default()
    }
}

fn update_request(id: String, given_name: String, description: String) -> pb::UpdateUserRequest {
    pb::UpdateUserRequest {
        user: Some(pb::User {
            id,
            given_name,
            description,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["given_name".into(), "description".into()],
        }),
        ..Default::default()
    }
}

fn create_request(email: String, username: String) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        user: Some(pb::User {
            email,
            username,
            given_name: "Created".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check_id(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("asked for user {want}, got {got}"))
    }
}

fn check_email(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("wanted e-mail {want}, got {got}"))
    }
}

fn check_given_name(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("wrote given_name {want}, got back {got}"))
    }
}

fn check_page(len: usize) -> Result<(), String> {
    if len > 0 { Ok(()) } else { Err("an empty page".into()) }
}

/// Frames a gRPC-Web message: flag byte 0, big-endian length, the message.
fn grpc_web_frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + body.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    frame.put_slice(&body);
    frame.freeze()
}

/// Splits a gRPC-Web response body into its message and its trailers, and checks grpc-status is 0.
fn grpc_web_message(headers: &http::HeaderMap, mut body: Bytes) -> Result<Bytes, String> {
    if let Some(status) = headers.get("grpc-status") {
        // Trailers-only answer: an error.
        return Err(format!("grpc-web status {status:?}: {:?}", headers.get("grpc-message")));
    }
    let mut message = None;
    let mut status = None;
    while body.remaining() >= 5 {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        if body.remaining() < len {
            return Err("truncated gRPC-Web frame".into());
        }
        let payload = body.split_to(len);
        if flag & 0x80 == 0 {
            message = Some(payload);
        } else {
            let text = String::from_utf8_lossy(&payload).into_owned();
            status = text
                .lines()
                .find_map(|line| line.strip_prefix("grpc-status:").map(|s| s.trim().to_owned()));
            if status.as_deref() != Some("0") {
                return Err(format!("grpc-web trailers: {}", text.trim()));
            }
        }
    }
    if status.is_none() {
        return Err("gRPC-Web answer without trailers".into());
    }
    message.ok_or_else(|| "gRPC-Web answer without a message".into())
}

async fn send(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::response::Parts, Bytes), String> {
    let response = client.request(request).await.map_err(|e| format!("http: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("http body: {e}"))?.to_bytes();
    Ok((parts, body))
}

async fn grpc_web_call(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    base: &str,
    auth: &http::HeaderValue,
    call: Call,
) -> Result<(), String> {
    let (method, frame) = match &call {
        Call::Get(id) => ("GetUser", grpc_web_frame(&pb::GetUserRequest { id: id.clone() })),
        Call::Lookup(email) => (
            "LookupUser",
            grpc_web_frame(&pb::LookupUserRequest {
                email: email.clone(),
                username: String::new(),
            }),
        ),
        Call::List(token) => ("ListUsers", grpc_web_frame(&list_request(token.clone()))),
        Call::Update {
            id,
            given_name,
            description,
        } => (
            "UpdateUser",
            grpc_web_frame(&update_request(id.clone(), given_name.clone(), description.clone())),
        ),
        Call::Create { email, username } => (
            "CreateUser",
            grpc_web_frame(&create_request(email.clone(), username.clone())),
        ),
        Call::NoopGrpc | Call::NoopHttp => return Err("no-op calls are not gRPC-Web".into()),
        Call::Verify { .. } => return Err("the verify runs are gRPC only".into()),
    };
    let request = http::Request::post(format!("{base}/users.v1.UserService/{method}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", auth.clone())
        .body(Full::new(frame))
        .map_err(|e| e.to_string())?;
    let (parts, body) = send(client, request).await?;
    if parts.status != http::StatusCode::OK {
        return Err(format!("grpc-web http {}", parts.status.as_u16()));
    }
    let message = grpc_web_message(&parts.headers, body)?;
    let decode_error = |e: prost::DecodeError| format!("grpc-web decode: {e}");
    match call {
        Call::Get(id) => check_id(&pb::User::decode(message).map_err(decode_error)?.id, &id),
        Call::Lookup(email) | Call::Create { email, .. } => {
            check_email(&pb::User::decode(message).map_err(decode_error)?.email, &email)
        }
        Call::List(_) => check_page(
            pb::ListUsersResponse::decode(message)
                .map_err(decode_error)?
                .users
                .len(),
        ),
        Call::Update { given_name, .. } => check_given_name(
            &pb::User::decode(message).map_err(decode_error)?.given_name,
            &given_name,
        ),
        Call::NoopGrpc | Call::NoopHttp | Call::Verify { .. } => Ok(()),
    }
}

async fn rest_call(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    base: &str,
    auth: &http::HeaderValue,
    call: Call,
) -> Result<(), String> {
    let json = |value: serde_json::Value| Full::new(Bytes::from(value.to_string()));
    let (method, path, body) = match &call {
        Call::Get(id) => (http::Method::GET, format!("/v1/users/{id}"), None),
        Call::Lookup(email) => (
            http::Method::GET,
            format!("/v1/users:lookup?email={}", email.replace('@', "%40")),
            None,
        ),
        Call::List(token) if token.is_empty() => (http::Method::GET, format!("/v1/users?pageSize={PAGE_SIZE}"), None),
        Call::List(token) => (
            http::Method::GET,
            format!("/v1/users?pageSize={PAGE_SIZE}&pageToken={token}"),
            None,
        ),
        Call::Update {
            id,
            given_name,
            description,
        } => (
            http::Method::PATCH,
            format!("/v1/users/{id}?updateMask=given_name,description"),
            Some(json(
                serde_json::json!({"givenName": given_name, "description": description}),
            )),
        ),
        Call::Create { email, username } => (
            http::Method::POST,
            "/v1/users".to_owned(),
            Some(json(
                serde_json::json!({"email": email, "username": username, "givenName": "Created"}),
            )),
        ),
        Call::NoopHttp => (http::Method::GET, "/healthz".to_owned(), None),
        Call::NoopGrpc => return Err("noop-grpc is not REST".into()),
        Call::Verify { .. } => return Err("the verify runs are gRPC only".into()),
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", auth.clone());
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.unwrap_or_else(|| Full::new(Bytes::new())))
        .map_err(|e| e.to_string())?;
    let (parts, body) = send(client, request).await?;
    if !parts.status.is_success() {
        return Err(format!(
            "http {}: {}",
            parts.status.as_u16(),
            String::from_utf8_lossy(&body)
        ));
    }
    if matches!(call, Call::NoopHttp) {
        return if body.as_ref() == b"ok" {
            Ok(())
        } else {
            Err("healthz did not say ok".into())
        };
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("rest json: {e}"))?;
    let text = |field: &str| {
        value
            .get(field)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match call {
        Call::Get(id) => check_id(&text("id"), &id),
        Call::Lookup(email) | Call::Create { email, .. } => check_email(&text("email"), &email),
        Call::List(_) => check_page(
            value
                .get("users")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len),
        ),
        Call::Update { given_name, .. } => check_given_name(&text("givenName"), &given_name),
        Call::NoopGrpc | Call::NoopHttp | Call::Verify { .. } => Ok(()),
    }
}

// --- runs ----------------------------------------------------------------------------------------------------

/// Makes the calls of a run: random seeded users, fresh values for writes.
struct Calls {
    op: Op,
    users: u64,
    rng: SmallRng,
    /// Distinguishes this run's writes from every other run's.
    run_tag: String,
    counter: u64,
    deep_token: String,
    /// The slice of users the verify runs go through in turn, when given.
    span: Option<(u64, u64)>,
}

impl Calls {
    fn next(&mut self) -> Call {
        self.counter += 1;
        let n = self.rng.random_range(0..self.users.max(1));
        match self.op {
            Op::Get => Call::Get(seeded_id(n)),
            Op::Lookup => Call::Lookup(format!("user{n}@bench.test")),
            Op::ListFirst => Call::List(String::new()),
            Op::ListDeep => Call::List(self.deep_token.clone()),
            Op::Update => Call::Update {
                id: seeded_id(n),
                given_name: format!("Given {} {}", self.run_tag, self.counter),
                description: format!("Updated by run {} call {}", self.run_tag, self.counter),
            },
            Op::Create => Call::Create {
                email: format!("new-{}-{}@bench.test", self.run_tag, self.counter),
                username: format!("new-{}-{}", self.run_tag, self.counter),
            },
            Op::NoopGrpc => Call::NoopGrpc,
            Op::NoopHttp => Call::NoopHttp,
            Op::VerifyRight | Op::VerifyWrong => Call::Verify {
                login: pb::verify_password_request::Login::Id(seeded_id(match self.span {
                    Some((first, span)) => (first + (self.counter - 1) % span) % self.users.max(1),
                    None => n,
                })),
                password: if self.op == Op::VerifyRight {
                    SEEDED_PASSWORD.to_owned()
                } else {
                    format!("Wrong-{}-{}!", self.run_tag, self.counter)
                },
                right: self.op == Op::VerifyRight,
            },
            Op::VerifyUnknown => Call::Verify {
                login: pb::verify_password_request::Login::Email(format!(
                    "nobody-{}-{}@bench.test",
                    self.run_tag, self.counter
                )),
                password: format!("Wrong-{}-{}!", self.run_tag, self.counter),
                right: false,
            },
        }
    }
}

/// The page token of the page starting about 90% into the list, found by walking it with large pages.
async fn deep_token(args: &RunArgs) -> anyhow::Result<String> {
    let channel = Channel::from_shared(args.target.clone())?.connect().await?;
    let mut client = UserServiceClient::new(channel);
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", args.token).parse()?;
    let target = (args.users * 9 / 10).max(1);
    // Ten or more pages end exactly at the target, which lies before the end of the list.
    let page_size = i32::try_from((target / 10).clamp(1, 1000)).unwrap_or(1000);
    let mut seen = 0u64;
    let mut token = String::new();
    while seen < target {
        let mut request = tonic::Request::new(pb::ListUsersRequest {
            page_size,
            page_token: token,
            ..Default::default()
        });
        request.metadata_mut().insert("authorization", auth.clone());
        let page = client.list_users(request).await?.into_inner();
        seen += page.users.len() as u64;
        token = page.next_page_token;
        anyhow::ensure!(!token.is_empty(), "the list ended after {seen} users, before {target}");
    }
    Ok(token)
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3; utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc stat"))?
            .parse()?)
    };
    Ok(field(11)? + field(12)?)
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_errors: Vec<String>,
    late: u64,
}

impl Tally {
    /// Records one call that took `took`, measured where the call ended (not where its result was collected).
    fn record(&mut self, took: Duration, result: Result<(), String>) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(micros);
        if let Err(e) = result {
            self.errors += 1;
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.late += other.late;
        for e in other.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(e);
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let caller = Caller::connect(&args).await?;
    let deep = if args.op == Op::ListDeep {
        deep_token(&args).await?
    } else {
        String::new()
    };
    let mut tag_rng = SmallRng::seed_from_u64(args.seed ^ u64::from(std::process::id()));
    let calls = Arc::new(std::sync::Mutex::new(Calls {
        op: args.op,
        users: args.users,
        rng: SmallRng::seed_from_u64(args.seed),
        run_tag: format!("{:08x}", tag_rng.random::<u32>()),
        counter: 0,
        deep_token: deep,
        span: args.user_span.map(|span| (args.first_user, span.max(1))),
    }));

    // Warm-up: connections open, caches fill; not counted.
    if args.warmup_requests > 0 {
        closed_loop(&caller, &calls, args.concurrency, Some(args.warmup_requests), None).await;
    }

    let watch = if args.watchers > 0 {
        anyhow::ensure!(args.op == Op::Update, "--watchers needs --op update");
        let (tag, warmed_up) = {
            let calls = calls.lock().unwrap_or_else(|p| p.into_inner());
            (calls.run_tag.clone(), calls.counter)
        };
        Some(Watchers::start(&args, &tag, warmed_up).await?)
    } else {
        None
    };
    let cpu_before = args.server_pid.map(cpu_ticks).transpose()?;
    let client_cpu_before = cpu_ticks(std::process::id())?;
    let started = Instant::now();
    let tally = match args.rate {
        None => {
            let deadline = args
                .requests
                .is_none()
                .then(|| started + Duration::from_secs_f64(args.duration));
            closed_loop(&caller, &calls, args.concurrency, args.requests, deadline).await
        }
        Some(rate) => open_loop(&caller, &calls, args.concurrency, rate, args.requests, args.duration).await,
    };
    let seconds = started.elapsed().as_secs_f64();
    // The watchers' last events may still be on the way: their CPU is the server's too, so it is read after
    // they have all arrived (or the wait gave up).
    let acknowledged = tally.latencies_us.len() as u64 - tally.errors;
    let watched = match watch {
        Some(watch) => Some(watch.finish(acknowledged).await),
        None => None,
    };
    let cpu_after = args.server_pid.map(cpu_ticks).transpose()?;
    let client_cpu_seconds = (cpu_ticks(std::process::id())? - client_cpu_before) as f64 / TICKS_PER_SECOND;

    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    let percentile = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    let server_cpu_seconds = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b - a) as f64 / TICKS_PER_SECOND),
        _ => None,
    };
    if let Some(cpu) = server_cpu_seconds
        && cpu < 1.0
        && args.requests.is_none()
    {
        eprintln!("note: only {cpu:.2} s of server CPU was measured; /proc counts in 10 ms ticks");
    }
    let report = serde_json::json!({
        "op": format!("{:?}", args.op),
        "protocol": format!("{:?}", args.protocol),
        "concurrency": args.concurrency,
        "rate": args.rate,
        "requests": requests,
        "errors": tally.errors,
        "late": tally.late,
        "seconds": seconds,
        "throughput": requests as f64 / seconds,
        "p50_us": percentile(50.0),
        "p90_us": percentile(90.0),
        "p99_us": percentile(99.0),
        "max_us": latencies.last().copied().unwrap_or(0),
        "server_cpu_seconds": server_cpu_seconds,
        "server_cpu_us_per_req": server_cpu_seconds.filter(|_| requests > 0).map(|s| s * 1e6 / requests as f64),
        // Over the measured run's wall time: near 1 per client thread, the client is what bounds the run.
        "client_cpu_share": client_cpu_seconds / seconds,
    });
    let mut report = report;
    let mut missing = 0;
    if let Some(watched) = &watched {
        missing = watched.missing;
        report["watchers"] = args.watchers.into();
        report["watch_events"] = watched.latencies_us.len().into();
        report["watch_missing"] = watched.missing.into();
        report["watch_p50_us"] = percentile_of(&watched.latencies_us, 50.0).into();
        report["watch_p99_us"] = percentile_of(&watched.latencies_us, 99.0).into();
        report["watch_max_us"] = watched.latencies_us.last().copied().unwrap_or(0).into();
    }
    println!("{report}");
    if missing > 0 {
        anyhow::bail!("watchers missed {missing} of the run's updates");
    }
    if tally.errors > 0 {
        for e in &tally.first_errors {
            eprintln!("error: {e}");
        }
        anyhow::bail!("{} of {requests} calls failed", tally.errors);
    }
    Ok(())
}

/// The `p`th percentile of sorted values (nearest rank).
fn percentile_of(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The WatchUsers streams of a run with `--watchers`.
struct Watchers {
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<i64>, String>>>,
    /// How many updates each stream must receive before it ends: set when the run is over.
    expected: tokio::sync::watch::Sender<Option<u64>>,
}

/// What the watchers received: every arrival's delay after its change's `update_time`, sorted, and how many
/// acknowledged updates some stream never received.
struct Watched {
    latencies_us: Vec<i64>,
    missing: u64,
}

/// How long the watchers may take to receive the run's last updates once the writes are done.
const WATCH_DRAIN: Duration = Duration::from_secs(30);

impl Watchers {
    /// Opens the streams and waits for each one's first bookmark. Only updates of this run's calls (`tag`) after
    /// the warm-up (`Calls::counter` above `warmed_up`) are counted.
    async fn start(args: &RunArgs, tag: &str, warmed_up: u64) -> anyhow::Result<Watchers> {
        let prefix = format!("Given {tag} ");
        let (expected, _) = tokio::sync::watch::channel(None);
        let mut tasks = Vec::with_capacity(args.watchers);
        let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", args.token).parse()?;
        for _ in 0..args.watchers {
            let channel = Channel::from_shared(args.target.clone())?.connect().await?;
            let mut request = tonic::Request::new(pb::WatchUsersRequest::default());
            request.metadata_mut().insert("authorization", auth.clone());
            let mut stream = UserServiceClient::new(channel).watch_users(request).await?.into_inner();
            let first = stream.message().await?;
            anyhow::ensure!(
                first.is_some_and(|e| e.r#type == pb::user_event::Type::Bookmark as i32),
                "a stream that does not begin with a bookmark"
            );
            let mut expected = expected.subscribe();
            let prefix = prefix.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut drain_until = None;
                loop {
                    if let Some(want) = *expected.borrow_and_update() {
                        if latencies.len() as u64 >= want {
                            return Ok(latencies);
                        }
                        drain_until.get_or_insert_with(|| tokio::time::Instant::now() + WATCH_DRAIN);
                    }
                    let deadline = drain_until.unwrap_or_else(|| tokio::time::Instant::now() + WATCH_DRAIN);
                    let message = tokio::select! {
                        message = stream.message() => message.map_err(|e| format!("watch: {e}"))?,
                        _ = expected.changed() => continue,
                        () = tokio::time::sleep_until(deadline) => return Ok(latencies),
                    };
                    let Some(event) = message else {
                        return Err("the watch stream ended".into());
                    };
                    let arrived = unix_micros(std::time::SystemTime::now());
                    let Some(user) = event
                        .user
                        .filter(|_| event.r#type == pb::user_event::Type::Updated as i32)
                    else {
                        continue;
                    };
                    let counter = user
                        .given_name
                        .strip_prefix(&prefix)
                        .and_then(|n| n.parse::<u64>().ok());
                    if counter.is_some_and(|n| n > warmed_up)
                        && let Some(changed) = user.update_time
                    {
                        let changed = changed.seconds * 1_000_000 + i64::from(changed.nanos / 1000);
                        latencies.push(arrived - changed);
                    }
                }
            }));
        }
        Ok(Watchers { tasks, expected })
    }

    /// Tells the streams how many updates the run acknowledged and collects what they received.
    async fn finish(self, acknowledged: u64) -> Watched {
        let _ = self.expected.send(Some(acknowledged));
        let mut latencies_us = Vec::new();
        let mut missing = 0;
        for task in self.tasks {
            match task.await {
                Ok(Ok(received)) => {
                    missing += acknowledged.saturating_sub(received.len() as u64);
                    latencies_us.extend(received);
                }
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    missing += acknowledged;
                }
                Err(e) => {
                    eprintln!("error: watcher: {e}");
                    missing += acknowledged;
                }
            }
        }
        latencies_us.sort_unstable();
        Watched { latencies_us, missing }
    }
}

fn unix_micros(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// `concurrency` workers call back to back until `budget` calls are made or `deadline` passes.
async fn closed_loop(
    caller: &Caller,
    calls: &Arc<std::sync::Mutex<Calls>>,
    concurrency: usize,
    budget: Option<u64>,
    deadline: Option<Instant>,
) -> Tally {
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let mut caller = caller.clone();
        let calls = calls.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                if budget.is_some_and(|b| issued.fetch_add(1, Ordering::Relaxed) >= b)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    return tally;
                }
                let call = calls.lock().unwrap_or_else(|p| p.into_inner()).next();
                let started = Instant::now();
                let result = caller.call(call).await;
                tally.record(started.elapsed(), result);
            }
        }));
    }
    let mut tally = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(t) => tally.merge(t),
            Err(e) => {
                tally.errors += 1;
                tally.first_errors.push(format!("worker: {e}"));
            }
        }
    }
    tally
}

/// Calls on a fixed schedule of `rate` per second, at most `concurrency` in flight. A call that must wait for
/// a free slot counts as late and its latency runs from its scheduled time, so a slow server is not hidden by
/// the client waiting for it (coordinated omission).
async fn open_loop(
    caller: &Caller,
    calls: &Arc<std::sync::Mutex<Calls>>,
    concurrency: usize,
    rate: f64,
    budget: Option<u64>,
    duration: f64,
) -> Tally {
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration);
    let total = budget.unwrap_or(u64::MAX);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Result<(), String>)>();
    let mut tally = Tally::default();
    let mut sent = 0u64;
    while sent < total {
        let scheduled = start + interval.mul_f64(sent as f64);
        if budget.is_none() && scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let (permit, began) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, Instant::now()),
            Err(_) => {
                tally.late += 1;
                match slots.clone().acquire_owned().await {
                    Ok(permit) => (permit, scheduled),
                    Err(_) => break,
                }
            }
        };
        let call = calls.lock().unwrap_or_else(|p| p.into_inner()).next();
        let mut caller = caller.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let result = caller.call(call).await;
            // Timed here: the loop collects results only when it wakes for its next call, up to an interval later.
            let _ = done.send((began.elapsed(), result));
            drop(permit);
        });
        sent += 1;
        while let Ok((took, result)) = done_rx.try_recv() {
            tally.record(took, result);
        }
    }
    drop(done_tx);
    while let Some((took, result)) = done_rx.recv().await {
        tally.record(took, result);
    }
    tally
}

// --- in-process store --------------------------------------------------------------------------------------------

async fn store(url: &str, op: StoreOp, users: u64, requests: u64, concurrency: usize) -> anyhow::Result<()> {
    use user_service::domain::caller::Caller;
    use user_service::domain::change::{PasswordInput, Patch};
    use user_service::domain::command::{Command, Update};
    use user_service::domain::field_mask::UpdateMask;
    use user_service::domain::user::UserFields;
    use user_service::store::{Store, StoreOptions};

    let store = Store::open(&StoreOptions {
        url: url.to_owned(),
        pool_size: 16,
        sqlite_sync: user_service::store::SqliteSync::Full,
        acquire_timeout: Duration::from_secs(5),
        sqlite_commit_batch: 128,
    })?;
    let issued = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_ticks(std::process::id())?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency.max(1) {
        let store = store.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64);
            let mut tally = Tally::default();
            while issued.fetch_add(1, Ordering::Relaxed) < requests {
                let n = rng.random_range(0..users.max(1));
                let id = uuid::Uuid::parse_str(&seeded_id(n)).unwrap_or_default();
                let began = Instant::now();
                let result = match op {
                    StoreOp::Get => match store.get(id).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(format!("user {id} not found")),
                        Err(e) => Err(e.to_string()),
                    },
                    StoreOp::Update => {
                        let fields = UserFields {
                            given_name: format!("In-process {worker} {n}"),
                            description: format!("store loop {}", began.elapsed().as_nanos()),
                            ..Default::default()
                        };
                        let mask = UpdateMask::parse(&["given_name", "description"], "update_mask")
                            .map_err(|v| format!("{v:?}"));
                        match mask {
                            Ok(mask) => {
                                let patch = Patch {
                                    fields,
                                    password: PasswordInput::Absent,
                                    mask,
                                    etag: String::new(),
                                };
                                let command = Command::Update(Update {
                                    id,
                                    patch,
                                    allow_missing: false,
                                    observed_revision: None,
                                    send_verification_email: false,
                                });
                                let caller = Caller {
                                    subject: "bench".into(),
                                    scopes: Vec::new(),
                                };
                                store
                                    .write(caller, vec![command], false)
                                    .await
                                    .map(|_| ())
                                    .map_err(|e| e.into_error(|_, e| e).to_string())
                            }
                            Err(e) => Err(e),
                        }
                    }
                };
                tally.record(began.elapsed(), result);
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(std::process::id())? - cpu_before) as f64 / TICKS_PER_SECOND;
    let done = tally.latencies_us.len() as u64;
    println!(
        "{}",
        serde_json::json!({
            "op": format!("{op:?}"),
            "requests": done,
            "errors": tally.errors,
            "seconds": seconds,
            "throughput": done as f64 / seconds,
            "cpu_us_per_op": cpu * 1e6 / done.max(1) as f64,
        })
    );
    if tally.errors > 0 {
        for e in &tally.first_errors {
            eprintln!("error: {e}");
        }
        anyhow::bail!("{} of {done} store calls failed", tally.errors);
    }
    Ok(())
}
