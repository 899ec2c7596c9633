//! The tonic `UserService`: decodes requests, hands the rules to the domain and the writes to the store, and
//! converts the results. Thin on purpose: no rule lives here.

pub mod codec;
mod convert;
mod page_token;
pub mod status;
pub mod watch;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::caller::Caller;
use crate::domain::change::{self, PasswordInput, Patch};
use crate::domain::command::{self, Command, Create, Update, WriteError};
use crate::domain::error::{Conflict, Error};
use crate::domain::field_mask::UpdateMask;
use crate::domain::password;
use crate::domain::permission::{self, Rpc};
use crate::domain::query::{self, Lookup, OrderField};
use crate::domain::sign_in::{self, LoginKey};
use crate::domain::user::{User, to_stored_precision};
use crate::domain::{filter, validate, verification};
use crate::hash_pool::HashPool;
use crate::limits::{self, Admission, RateLimiter};
use crate::metrics::{Metrics, Protocol};
use crate::pb;
use crate::pb::user_service_server::UserService;
use crate::pb::verify_password_request::Login;
use crate::rpc_status::code_name;
use crate::store::{Cursor, ListQuery, Saved, SignInStart, Store};
use chrono::Utc;
use convert::{fields_from_proto, revision_to_proto, user_to_proto};
use page_token::PageToken;

/// The response header (gRPC: initial metadata) of an UpdateUser answer listing its revision's changed paths.
pub const CHANGED_PATHS: &str = "changed-paths";

/// Default and largest page sizes of the list methods (AIP-158: larger requests are lowered, not refused).
pub const DEFAULT_PAGE_SIZE: i32 = 50;
pub const MAX_PAGE_SIZE: i32 = 1000;
pub use crate::domain::command::MAX_BATCH_SIZE;
/// The message limit list pages are cut to when none is configured (the default of `--max-message-bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// What a list page leaves free under the message limit for everything but its items: the next_page_token (an
/// e-mail cursor is at most a few hundred bytes, base64 of JSON) and its field key.
const PAGE_RESERVE_BYTES: usize = 4 * 1024;

/// The service, cheap to clone: every clone shares the store, the limiters and the hash pool.
#[derive(Clone)]
pub struct UserServiceImpl {
    store: Store,
    metrics: Arc<Metrics>,
    /// Wrong current passwords per caller.
    password_attempts: Arc<RateLimiter>,
    /// The per-caller request budget the gate spends per request; each password to hash costs a token more.
    requests: Arc<RateLimiter>,
    /// `EMAIL_TAKEN`/`USERNAME_TAKEN` answers per self-service caller, so they cannot map who is registered.
    conflict_answers: Arc<RateLimiter>,
    /// Where every Argon2id computation runs.
    hash_pool: Arc<HashPool>,
    /// The largest message the server sends: list pages stop adding items before passing it.
    max_message_bytes: usize,
    /// What unknown users' sign-ins are checked against (see `dummy_hash`).
    dummy_hash: Arc<tokio::sync::OnceCell<String>>,
    /// How long a verification code is valid (`--verification-ttl`).
    verification_ttl: chrono::Duration,
    /// The open WatchUsers streams and their settings.
    watchers: watch::Watchers,
}

impl UserServiceImpl {
    /// `requests` is the gate's per-caller limiter (keyed by [`limits::caller_key`]).
    pub fn new(store: Store, metrics: Arc<Metrics>, requests: Arc<RateLimiter>, hash_pool: Arc<HashPool>) -> Self {
        UserServiceImpl {
            store,
            metrics,
            password_attempts: Arc::new(RateLimiter::new(PASSWORD_ATTEMPTS_PER_SECOND, PASSWORD_ATTEMPTS)),
            requests,
            conflict_answers: Arc::new(RateLimiter::new(CONFLICT_ANSWERS_PER_SECOND, CONFLICT_ANSWERS)),
            hash_pool,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            dummy_hash: Arc::new(tokio::sync::OnceCell::new()),
            verification_ttl: chrono::Duration::hours(24),
            watchers: watch::Watchers::default(),
        }
    }

    /// How many WatchUsers streams may be open, and their timing (`--max-watchers`, `--event-retention`).
    pub fn with_watchers(mut self, watchers: watch::Watchers) -> Self {
        self.watchers = watchers;
        self
    }

    /// How long the verification codes this service makes are valid.
    pub fn with_verification_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.verification_ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(24));
        self
    }

    /// Cuts list pages to the server's message limit (`--max-message-bytes`), which the encoder enforces: a
    /// page past it would fail with OUT_OF_RANGE (REST 400) instead of arriving shorter, with a token.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The encoded bytes a page's items may take.
    fn page_budget(&self) -> usize {
        self.max_message_bytes.saturating_sub(PAGE_RESERVE_BYTES)
    }
}

/// What every call knows besides its message: who calls, and the request id for logs.
struct CallContext {
    caller: Caller,
    request_id: String,
}

impl CallContext {
    fn of<T>(request: &Request<T>) -> CallContext {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous);
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        CallContext { caller, request_id }
    }
}

impl UserServiceImpl {
    /// Runs one RPC body, converts its error and records its metrics, so each method reads as its logic alone.
    async fn handle<T, R, F, Fut>(&self, rpc: &'static str, request: Request<T>, body: F) -> Result<Response<R>, Status>
    where
        F: FnOnce(CallContext, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, Error>>,
    {
        let started = std::time::Instant::now();
        let protocol = request
            .extensions()
            .get::<Protocol>()
            .copied()
            .unwrap_or(Protocol::Grpc);
        let ctx = CallContext::of(&request);
        let request_id = ctx.request_id.clone();
        let result = body(ctx, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| status::to_status(e, &request_id));
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics
            .record_rpc(rpc, protocol, code_name(code), started.elapsed());
        result
    }
}

impl UserServiceImpl {
    /// Checks a new password against the policy and hashes it on the pool.
    async fn password_input(&self, password: &str, field: &str) -> Result<PasswordInput, Error> {
        if password.is_empty() {
            return Ok(PasswordInput::Absent);
        }
        let mut violations = Vec::new();
        validate::validate_password(password, field, &mut violations);
        if !violations.is_empty() {
            return Ok(PasswordInput::Invalid(violations));
        }
        self.hash_pool
            .hash(password.to_owned())
            .await
            .map(PasswordInput::Hashed)
    }

    /// Charges `count` passwords to hash to the caller's request budget, all or none, before any is hashed: a
    /// hash costs hundreds of times what a read does, so one request token must not buy a thousand of them.
    fn charge_passwords(&self, caller: &Caller, count: usize) -> Result<(), Error> {
        if count == 0 {
            return Ok(());
        }
        let cost = u32::try_from(count).unwrap_or(u32::MAX);
        let Admission::Limited { retry_after } = self.requests.take_n(&limits::caller_key(&caller.subject), cost)
        else {
            return Ok(());
        };
        let burst = self.requests.capacity();
        let (message, retry_after) = if u64::from(cost) > burst {
            (
                format!(
                    "{count} passwords to hash cost {count} rate-limit tokens, more than the burst of {burst}; \
                     send fewer passwords per call"
                ),
                self.requests.refill_time(),
            )
        } else {
            (
                format!("{count} passwords to hash cost {count} rate-limit tokens; the rate limit is exhausted"),
                retry_after,
            )
        };
        Err(Error::ResourceExhausted {
            reason: "RATE_LIMITED",
            message,
            retry_after,
        })
    }

    /// Writes, keeping a self-service caller within its allowance of `EMAIL_TAKEN`/`USERNAME_TAKEN` answers
    /// when the write may give one (`may_conflict`). The allowance is reserved before the write, so concurrent
    /// probes cannot all be answered, and given back unless the answer is such a conflict; once it is spent,
    /// every such write is refused, whether or not its value is taken, so the refusal tells nothing either.
    async fn write_within_conflict_allowance(
        &self,
        caller: &Caller,
        write: Write,
        may_conflict: bool,
    ) -> Result<Vec<Saved>, Error> {
        let reservation = if may_conflict && !caller.is_admin() {
            Some(self.conflict_answers.reserve(&caller.subject).map_err(|retry_after| {
                Error::ResourceExhausted {
                    reason: "TOO_MANY_CONFLICTS",
                    message: "too many changes to an e-mail address or username that is already taken; wait \
                                  before trying again"
                        .into(),
                    retry_after,
                }
            })?)
        } else {
            None
        };
        let result = self.write(caller, write).await;
        if let (
            Some(reservation),
            Err(Error::AlreadyExists {
                conflict: Conflict::Email | Conflict::Username,
                ..
            }),
        ) = (reservation, &result)
        {
            reservation.spend();
        }
        result
    }
}

fn page_size(requested: i32) -> Result<i64, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid_field("page_size", "must not be negative")),
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        n => Ok(i64::from(n.min(MAX_PAGE_SIZE))),
    }
}

/// Field number of the repeated items in both list responses (`users`, `revisions`).
const PAGE_ITEMS_FIELD: u32 = 1;

/// Turns rows fetched with one extra into a page's items: at most `limit`, and no more than fit in `budget`
/// encoded bytes (AIP-158: a page may hold fewer than asked), but always one so that a walk moves on. Returns
/// the items and the token of the next page, which continues right after the last item returned; empty when
/// every row made it in and the extra one was not there, i.e. on the last page.
fn fit_page<T, P: prost::Message>(
    rows: &[T],
    limit: i64,
    budget: usize,
    to_proto: impl Fn(&T) -> P,
    token_after: impl FnOnce(&T) -> String,
) -> (Vec<P>, String) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut size = 0usize;
    for row in rows.iter().take(limit) {
        let item = to_proto(row);
        // What the item adds to the response: its key, its length prefix and its bytes.
        let added = prost::encoding::message::encoded_len(PAGE_ITEMS_FIELD, &item);
        if !items.is_empty() && size.saturating_add(added) > budget {
            break;
        }
        size = size.saturating_add(added);
        items.push(item);
    }
    let token = if items.len() < rows.len() {
        items
            .len()
            .checked_sub(1)
            .and_then(|last| rows.get(last))
            .map(token_after)
            .unwrap_or_default()
    } else {
        String::new()
    };
    (items, token)
}

/// Most wrong current passwords a caller may send in a burst before password changes are refused for a while,
/// and how fast that allowance comes back.
const PASSWORD_ATTEMPTS: u32 = 5;
const PASSWORD_ATTEMPTS_PER_SECOND: f64 = 1.0 / 60.0;

/// Most `EMAIL_TAKEN`/`USERNAME_TAKEN` answers a self-service caller gets per hour (API §11).
const CONFLICT_ANSWERS: u32 = 10;
const CONFLICT_ANSWERS_PER_SECOND: f64 = CONFLICT_ANSWERS as f64 / 3600.0;

/// An update ready for the store.
struct PreparedUpdate {
    command: Command,
    /// Whether the write can fail on an e-mail address or username that is taken.
    may_conflict: bool,
}

/// Commands to write together, and where their errors point in the request.
struct Write {
    commands: Vec<Command>,
    validate_only: bool,
    /// The commands are the items of a batch: a refused one's field paths start with its `requests[i]`.
    batch: bool,
}

/// The request path of item `index` of a batch.
fn item_path(index: usize) -> String {
    format!("requests[{index}]")
}

impl UserServiceImpl {
    /// Writes commands, each refusal placed where its command sits in the request.
    async fn write(&self, caller: &Caller, write: Write) -> Result<Vec<Saved>, Error> {
        let Write {
            commands,
            validate_only,
            batch,
        } = write;
        self.store
            .write(caller.clone(), commands, validate_only)
            .await
            .map_err(|e: WriteError| {
                e.into_error(|index, e| {
                    if batch {
                        e.with_field_prefix(&item_path(index))
                    } else {
                        e
                    }
                })
            })
    }

    /// Checks a self-service password change's current password, which must be right. Returns the revision
    /// the check saw, so the write can refuse a user that changed in between.
    async fn check_current_password(&self, caller: &Caller, id: Uuid, current: &str) -> Result<i64, Error> {
        // The attempt is counted before the hash runs, so a burst of guesses gets no more checks than the same
        // guesses one after another; anything but a wrong password (a right one, a failure, a cancelled call)
        // gives it back when `attempt` is dropped.
        let key = format!("password:{}", caller.subject);
        let attempt = self
            .password_attempts
            .reserve(&key)
            .map_err(|retry_after| Error::ResourceExhausted {
                reason: "TOO_MANY_ATTEMPTS",
                message: "too many wrong current passwords; wait before trying again".into(),
                retry_after,
            })?;
        let Some((hash, revision)) = self.store.password_state(id).await? else {
            return Err(Error::not_found(id));
        };
        let Some(hash) = hash else {
            // No password yet: there is nothing to confirm.
            return Ok(revision);
        };
        if self.hash_pool.verify(current.to_owned(), hash).await? {
            Ok(revision)
        } else {
            attempt.spend();
            Err(Error::PermissionDenied {
                reason: "WRONG_PASSWORD",
                message: "current_password is not the user's password".into(),
                fields: vec!["current_password".into()],
            })
        }
    }

    /// An update request turned into a command, after the rules that need no stored data, the current-password
    /// check and the hashing. `prefix` is the request's path in a batch (`requests[2]`) or empty.
    async fn prepare_update(
        &self,
        caller: &Caller,
        req: pb::UpdateUserRequest,
        prefix: &str,
    ) -> Result<PreparedUpdate, Error> {
        let path = |field: &str| {
            if prefix.is_empty() {
                field.to_owned()
            } else {
                format!("{prefix}.{field}")
            }
        };
        let Some(user) = req.user else {
            return Err(Error::invalid_field(path("user"), "is required"));
        };
        let id = change::parse_id(&user.id, &path("user.id"))?;
        permission::authorize(caller, Rpc::UpdateUser, Some(id)).map_err(|e| e.with_field_prefix_if(prefix))?;
        let mut violations = Vec::new();
        let fields = fields_from_proto(&user, &path("user"), &mut violations);
        let password_sent = !user.password.is_empty();
        let mask = match req.update_mask.as_ref().filter(|m| !m.paths.is_empty()) {
            Some(m) => match UpdateMask::parse(&m.paths, &path("update_mask")) {
                Ok(mask) => mask,
                Err(v) => {
                    violations.extend(v);
                    UpdateMask::Paths(Vec::new())
                }
            },
            None => UpdateMask::populated(&fields, password_sent),
        };
        Error::check(violations)?;
        let plan = command::plan_update(
            caller,
            &mask,
            password_sent,
            req.allow_missing,
            !prefix.is_empty(),
            !req.current_password.is_empty(),
        )
        .map_err(|e| e.with_field_prefix_if(prefix))?;
        let observed_revision = if plan.confirm_password {
            Some(self.check_current_password(caller, id, &req.current_password).await?)
        } else {
            None
        };
        let password = self.password_input(&user.password, &path("user.password")).await?;
        Ok(PreparedUpdate {
            command: Command::Update(Update {
                id,
                patch: Patch {
                    fields,
                    password,
                    mask,
                    etag: user.etag,
                },
                allow_missing: req.allow_missing,
                observed_revision,
                send_verification_email: req.send_verification_email,
            }),
            may_conflict: plan.may_conflict,
        })
    }

    /// A lifecycle RPC: one user, one command.
    async fn transition(
        &self,
        ctx: &CallContext,
        rpc: Rpc,
        raw_id: &str,
        command: impl FnOnce(Uuid) -> Command,
    ) -> Result<pb::User, Error> {
        let id = change::parse_id(raw_id, "id")?;
        permission::authorize(&ctx.caller, rpc, Some(id))?;
        let users = self
            .write(
                &ctx.caller,
                Write {
                    commands: vec![command(id)],
                    validate_only: false,
                    batch: false,
                },
            )
            .await?;
        single(users)
    }
}

fn single(users: Vec<Saved>) -> Result<pb::User, Error> {
    users
        .first()
        .map(|saved| user_to_proto(&saved.user))
        .ok_or_else(|| Error::internal("a write returned no user"))
}

#[tonic::async_trait]
impl UserService for UserServiceImpl {
    async fn create_user(&self, request: Request<pb::CreateUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("CreateUser", request, |ctx, req| async move {
            permission::authorize(&ctx.caller, Rpc::CreateUser, None)?;
            let Some(user) = req.user else {
                return Err(Error::invalid_field("user", "is required"));
            };
            let id = if req.user_id.is_empty() {
                Uuid::now_v7()
            } else {
                change::parse_id(&req.user_id, "user_id")?
            };
            let mut violations = Vec::new();
            let fields = fields_from_proto(&user, "user", &mut violations);
            Error::check(violations)?;
            self.charge_passwords(&ctx.caller, usize::from(!user.password.is_empty()))?;
            let password = self.password_input(&user.password, "user.password").await?;
            let users = self
                .write(
                    &ctx.caller,
                    Write {
                        commands: vec![Command::Create(Create {
                            id,
                            fields,
                            password,
                            send_verification_email: req.send_verification_email,
                        })],
                        validate_only: req.validate_only,
                        batch: false,
                    },
                )
                .await?;
            single(users)
        })
        .await
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("GetUser", request, |ctx, req| async move {
            let id = change::parse_id(&req.id, "id")?;
            permission::authorize(&ctx.caller, Rpc::GetUser, Some(id))?;
            match self.store.get(id).await? {
                Some(user) => {
                    permission::check_self_service_access(&ctx.caller, Rpc::GetUser, &user, Utc::now())?;
                    Ok(user_to_proto(&user))
                }
                None => Err(Error::not_found(id)),
            }
        })
        .await
    }

    async fn lookup_user(&self, request: Request<pb::LookupUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("LookupUser", request, |ctx, req| async move {
            permission::authorize(&ctx.caller, Rpc::LookupUser, None)?;
            let lookup = Lookup::parse(&req.email, &req.username)?;
            let found = self.store.lookup(lookup.email.clone(), lookup.username.clone()).await?;
            lookup.pick(&found).map(|user| user_to_proto(&user))
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.handle("ListUsers", request, |ctx, req| async move {
            permission::authorize(&ctx.caller, Rpc::ListUsers, None)?;
            let mut violations = Vec::new();
            let limit = page_size(req.page_size).map_err(|e| violations.push(e)).ok();
            let filter = filter::parse(&req.filter)
                .map_err(|e| violations.push(Error::invalid_field("filter", e.message)))
                .ok();
            let order = query::parse_order_by(&req.order_by)
                .map_err(|e| violations.push(e))
                .ok();
            let (Some(limit), Some(filter), Some(order)) = (limit, filter, order) else {
                return Err(Error::combine_invalid(violations).unwrap_or_else(|| Error::internal("no violation")));
            };
            let query_hash = page_token::query_hash(&[&req.filter, &req.order_by, &req.show_deleted.to_string()]);
            let after = PageToken::decode(&req.page_token, query_hash)?.map(|t| t.cursor);
            if let Some(cursor) = &after {
                let time_key_ok = order.field == OrderField::Email || cursor.key.parse::<i64>().is_ok();
                if !time_key_ok || Uuid::try_parse(&cursor.id).is_err() {
                    return Err(Error::invalid_field(
                        "page_token",
                        "is not a page token this list returned",
                    ));
                }
            }
            let users = self
                .store
                .list(ListQuery {
                    filter,
                    order,
                    show_deleted: req.show_deleted,
                    after,
                    limit: limit + 1,
                })
                .await?;
            let (users, next_page_token) = fit_page(&users, limit, self.page_budget(), user_to_proto, |last| {
                PageToken {
                    cursor: Cursor::after(last, order),
                }
                .encode(query_hash)
            });
            Ok(pb::ListUsersResponse { users, next_page_token })
        })
        .await
    }

    async fn update_user(&self, request: Request<pb::UpdateUserRequest>) -> Result<Response<pb::User>, Status> {
        let answer = self
            .handle("UpdateUser", request, |ctx, req| async move {
                let validate_only = req.validate_only;
                let passwords = req.user.as_ref().is_some_and(|u| !u.password.is_empty());
                self.charge_passwords(&ctx.caller, usize::from(passwords))?;
                let update = self.prepare_update(&ctx.caller, req, "").await?;
                let users = self
                    .write_within_conflict_allowance(
                        &ctx.caller,
                        Write {
                            commands: vec![update.command],
                            validate_only,
                            batch: false,
                        },
                        update.may_conflict,
                    )
                    .await?;
                let paths = users
                    .first()
                    .map(|saved| saved.changed_paths.join(","))
                    .unwrap_or_default();
                Ok((single(users)?, paths))
            })
            .await?;
        let (metadata, (user, paths), extensions) = answer.into_parts();
        let mut response = Response::from_parts(metadata, user, extensions);
        // The receipt of what changed; paths are ASCII (field names, label keys as written in masks), so a value
        // that cannot be a header is left out rather than altered.
        if let Ok(value) = tonic::metadata::MetadataValue::try_from(paths.as_str()) {
            response.metadata_mut().insert(CHANGED_PATHS, value);
        }
        Ok(response)
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("DeleteUser", request, |ctx, req| async move {
            self.transition(&ctx, Rpc::DeleteUser, &req.id, |id| Command::Delete {
                id,
                etag: req.etag,
            })
            .await
        })
        .await
    }

    async fn undelete_user(&self, request: Request<pb::UndeleteUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("UndeleteUser", request, |ctx, req| async move {
            self.transition(&ctx, Rpc::UndeleteUser, &req.id, |id| Command::Undelete {
                id,
                etag: req.etag,
            })
            .await
        })
        .await
    }

    async fn disable_user(&self, request: Request<pb::DisableUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("DisableUser", request, |ctx, req| async move {
            self.transition(&ctx, Rpc::DisableUser, &req.id, |id| Command::Disable {
                id,
                reason: req.reason,
                etag: req.etag,
            })
            .await
        })
        .await
    }

    async fn enable_user(&self, request: Request<pb::EnableUserRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("EnableUser", request, |ctx, req| async move {
            self.transition(&ctx, Rpc::EnableUser, &req.id, |id| Command::Enable {
                id,
                etag: req.etag,
            })
            .await
        })
        .await
    }

    async fn batch_update_users(
        &self,
        request: Request<pb::BatchUpdateUsersRequest>,
    ) -> Result<Response<pb::BatchUpdateUsersResponse>, Status> {
        self.handle("BatchUpdateUsers", request, |ctx, req| async move {
            command::check_batch_size(req.requests.len())?;
            let passwords = req
                .requests
                .iter()
                .filter(|item| item.user.as_ref().is_some_and(|u| !u.password.is_empty()))
                .count();
            self.charge_passwords(&ctx.caller, passwords)?;
            let mut commands = Vec::with_capacity(req.requests.len());
            let mut may_conflict = false;
            let mut invalid = Vec::new();
            for (i, item) in req.requests.into_iter().enumerate() {
                let prefix = item_path(i);
                if let Err(e) = command::check_batch_item(item.validate_only) {
                    invalid.push(e.with_field_prefix(&prefix));
                    continue;
                }
                match self.prepare_update(&ctx.caller, item, &prefix).await {
                    Ok(update) => {
                        may_conflict |= update.may_conflict;
                        commands.push(update.command);
                    }
                    Err(e @ Error::InvalidArgument { .. }) => invalid.push(e),
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = Error::combine_invalid(invalid) {
                return Err(e);
            }
            let users = self
                .write_within_conflict_allowance(
                    &ctx.caller,
                    Write {
                        commands,
                        validate_only: false,
                        batch: true,
                    },
                    may_conflict,
                )
                .await?;
            Ok(pb::BatchUpdateUsersResponse {
                users: users.iter().map(|saved| user_to_proto(&saved.user)).collect(),
            })
        })
        .await
    }

    async fn list_user_revisions(
        &self,
        request: Request<pb::ListUserRevisionsRequest>,
    ) -> Result<Response<pb::ListUserRevisionsResponse>, Status> {
        self.handle("ListUserRevisions", request, |ctx, req| async move {
            let id = change::parse_id(&req.id, "id")?;
            permission::authorize(&ctx.caller, Rpc::ListUserRevisions, Some(id))?;
            let limit = page_size(req.page_size)?;
            if permission::is_self_service(&ctx.caller, Rpc::ListUserRevisions)
                && let Some(user) = self.store.get(id).await?
            {
                permission::check_self_service_access(&ctx.caller, Rpc::ListUserRevisions, &user, Utc::now())?;
            }
            let query_hash = page_token::query_hash(&[&req.id]);
            let before = page_token::RevisionToken::decode(&req.page_token, query_hash)?.map(|t| t.before);
            let revisions = self.store.revisions(id, before, limit + 1).await?;
            let (revisions, next_page_token) =
                fit_page(&revisions, limit, self.page_budget(), revision_to_proto, |last| {
                    page_token::RevisionToken { before: last.revision }.encode(query_hash)
                });
            Ok(pb::ListUserRevisionsResponse {
                revisions,
                next_page_token,
            })
        })
        .await
    }

    type WatchUsersStream = watch::EventStream;

    async fn watch_users(
        &self,
        request: Request<pb::WatchUsersRequest>,
    ) -> Result<Response<Self::WatchUsersStream>, Status> {
        self.handle("WatchUsers", request, |ctx, req| async move {
            watch::open(self.store.clone(), &self.watchers, &ctx.caller, ctx.request_id, req).await
        })
        .await
    }

    async fn verify_password(&self, request: Request<pb::VerifyPasswordRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("VerifyPassword", request, |ctx, req| async move {
            permission::authorize(&ctx.caller, Rpc::VerifyPassword, None)?;
            let key = match req.login {
                Some(Login::Id(id)) => LoginKey::Id(change::parse_id(&id, "id")?),
                Some(Login::Email(email)) if !email.is_empty() => LoginKey::Email(email),
                Some(Login::Username(username)) if !username.is_empty() => LoginKey::Username(username),
                _ => {
                    return Err(Error::invalid_field(
                        "login",
                        "exactly one of id, email and username is required",
                    ));
                }
            };
            self.verify_password_of(key, req.password)
                .await
                .map(|user| user_to_proto(&user))
        })
        .await
    }

    async fn send_verification_email(
        &self,
        request: Request<pb::SendVerificationEmailRequest>,
    ) -> Result<Response<pb::SendVerificationEmailResponse>, Status> {
        self.handle("SendVerificationEmail", request, |ctx, req| async move {
            let id = change::parse_id(&req.id, "id")?;
            permission::authorize(&ctx.caller, Rpc::SendVerificationEmail, Some(id))?;
            if req.return_code && !ctx.caller.is_admin() {
                return Err(Error::PermissionDenied {
                    reason: "RETURN_CODE_ADMIN_ONLY",
                    message: "only administrators may have the code returned instead of mailed".into(),
                    fields: vec!["return_code".into()],
                });
            }
            let (user, code) = self
                .store
                .send_verification(ctx.caller, id, req.return_code, self.verification_ttl)
                .await?;
            Ok(pb::SendVerificationEmailResponse {
                user: Some(user_to_proto(&user)),
                verification_code: code.unwrap_or_default(),
            })
        })
        .await
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Result<Response<pb::User>, Status> {
        self.handle("VerifyEmail", request, |ctx, req| async move {
            let id = change::parse_id(&req.id, "id")?;
            permission::authorize(&ctx.caller, Rpc::VerifyEmail, Some(id))?;
            // Imported users: an administrator may vouch for the address without a code.
            let code = if req.verification_code.is_empty() && ctx.caller.is_admin() {
                None
            } else {
                verification::check_code_shape(&req.verification_code)?;
                Some(req.verification_code)
            };
            let user = self.store.verify_email(ctx.caller, id, code).await?;
            Ok(user_to_proto(&user))
        })
        .await
    }
}

impl UserServiceImpl {
    /// A hash of a random password at the current cost, which unknown users and users without a password are
    /// checked against, so that their answer takes as long as a wrong password's. Made once, on the pool.
    async fn dummy_hash(&self) -> Result<String, Error> {
        self.dummy_hash
            .get_or_try_init(|| self.hash_pool.hash(Uuid::new_v4().to_string()))
            .await
            .cloned()
    }

    /// API §9: the attempt is taken before any hash runs; every failed check gets the same answer; the state
    /// is told only to whoever knows the password.
    async fn verify_password_of(&self, key: LoginKey, password: String) -> Result<User, Error> {
        // Made before the user is looked up, so the first call of a process takes as long whether or not the
        // user exists.
        let dummy = self.dummy_hash().await?;
        let now = to_stored_precision(Utc::now());
        let (user, stored_hash) = match self.store.begin_sign_in(key, now).await? {
            SignInStart::LockedOut(retry_after) => return Err(sign_in::too_many_attempts(retry_after)),
            SignInStart::Unknown => (None, None),
            SignInStart::Check { user, hash } => (Some(user), hash),
        };
        let checked = match &stored_hash {
            Some(hash) => hash.clone(),
            None => dummy,
        };
        let matches = self.hash_pool.verify(password.clone(), checked).await? && stored_hash.is_some();
        let (Some(user), Some(stored_hash), true) = (user, stored_hash, matches) else {
            return Err(sign_in::invalid_credentials());
        };
        let rehash = if password::needs_rehash(&stored_hash) {
            Some((stored_hash, self.hash_pool.hash(password).await?))
        } else {
            None
        };
        let refused = sign_in::check_can_sign_in(&user, now);
        let login_time = refused.is_ok().then_some(now);
        let recorded = self.store.record_sign_in(user.id, login_time, rehash).await?;
        refused?;
        // Purged between the check and the record: as unknown as any other missing user.
        recorded.map(|user| *user).ok_or_else(sign_in::invalid_credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::fit_page;

    /// Items of about `n` encoded bytes each.
    fn item(n: usize) -> prost_types::Value {
        prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("x".repeat(n))),
        }
    }

    #[test]
    fn a_page_stops_before_the_budget_and_continues_after_its_last_item() {
        let rows: Vec<usize> = (0..10).collect();
        // Each item takes 1 (key) + 2 (length) + 1 (key) + 2 (length) + 200 bytes = 206.
        let (items, token) = fit_page(&rows, 9, 206 * 3 + 100, |_| item(200), |last| last.to_string());
        assert_eq!(items.len(), 3);
        assert_eq!(token, "2", "the next page starts after the third row");
    }

    #[test]
    fn an_item_larger_than_the_budget_still_makes_a_page() {
        let rows = vec![0usize, 1];
        let (items, token) = fit_page(&rows, 5, 10, |_| item(200), |last| last.to_string());
        assert_eq!(items.len(), 1);
        assert_eq!(token, "0");
    }

    #[test]
    fn the_last_page_has_no_token_and_the_limit_still_cuts() {
        let rows: Vec<usize> = (0..4).collect();
        let (items, token) = fit_page(&rows, 4, usize::MAX, |_| item(1), |last| last.to_string());
        assert_eq!((items.len(), token.as_str()), (4, ""));
        // Fetched with one extra row: the limit cuts it and the token points after the last one kept.
        let (items, token) = fit_page(&rows, 3, usize::MAX, |_| item(1), |last| last.to_string());
        assert_eq!((items.len(), token.as_str()), (3, "2"));
    }
}
