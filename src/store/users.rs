//! SQL for users, their label/role index rows and revisions, written once for both backends.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::{exists, not};
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::connection::{DbConnection, MultiBackend};
use super::schema::{
    unknown_sign_ins, user_labels, user_revisions, user_roles, user_sign_ins, user_verification_codes,
    user_verifications, users,
};
use super::stored_time::{MaybeStoredTime, StoredTime};
use crate::domain::command::Outcome;
use crate::domain::event::EventKind;
use crate::domain::field_table::user_field_table;
use crate::domain::filter::{Condition, Filter, TextField, TextPattern};
use crate::domain::query::{OrderBy, OrderField};
use crate::domain::revision::{self, Revision};
use crate::domain::sign_in::{Attempts, LoginKey};
use crate::domain::user::{Membership, State, User, UserFields};

mod statements;

use statements::{
    GuardedUpdate, InsertRevision, InsertRevisionWithEvent, InsertUser, TouchUser, UpdateUser, UpdateUserIfRevision,
    UpdateUserKeys, UpdateUserWithRevision,
};

/// Runs `$body` with `$c` bound to the backend's own connection. Through the multi-backend connection diesel
/// renders a query's SQL text again on every call, even to find its cached statement (~10% of a GetUser); on the
/// backend's connection a query with a static query id is found in the statement cache by its type.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            DbConnection::Postgres($c) => $body,
            DbConnection::Sqlite($c) => $body,
        }
    };
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = users)]
pub struct UserRow {
    id: String,
    username: Option<String>,
    email: String,
    email_key: String,
    email_verified: bool,
    given_name: String,
    family_name: String,
    phone_number: String,
    national_id: String,
    address: String,
    birth_date: String,
    language_code: String,
    region_code: String,
    time_zone: String,
    image_uri: String,
    description: String,
    disabled: bool,
    disabled_reason: String,
    labels: String,
    roles: String,
    memberships: String,
    attributes: Option<String>,
    #[diesel(deserialize_as = MaybeStoredTime)]
    valid_from: Option<NaiveDateTime>,
    #[diesel(deserialize_as = MaybeStoredTime)]
    expire_time: Option<NaiveDateTime>,
    password_hash: Option<String>,
    #[diesel(deserialize_as = StoredTime)]
    create_time: NaiveDateTime,
    #[diesel(deserialize_as = StoredTime)]
    update_time: NaiveDateTime,
    #[diesel(deserialize_as = MaybeStoredTime)]
    delete_time: Option<NaiveDateTime>,
    #[diesel(deserialize_as = MaybeStoredTime)]
    purge_time: Option<NaiveDateTime>,
    revision: i64,
    #[diesel(deserialize_as = MaybeStoredTime)]
    last_login_time: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = user_revisions)]
struct RevisionRow {
    user_id: String,
    revision: i64,
    actor: String,
    update_mask: String,
    #[diesel(deserialize_as = StoredTime)]
    create_time: NaiveDateTime,
    before_values: String,
    after_values: String,
}

/// A stored row that does not decode is corruption, reported as a deserialization error (INTERNAL).
fn corrupt(what: &str, e: impl std::fmt::Display) -> DieselError {
    DieselError::DeserializationError(format!("stored {what} is invalid: {e}").into())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DieselError> {
    serde_json::to_string(value).map_err(|e| DieselError::SerializationError(Box::new(e)))
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

/// How one writable field's domain value is stored in its column of type `C`; the row's column type picks the
/// form (`username` is `NULL` when unset, so unset names never collide in its unique index).
trait Column<C>: Sized {
    fn to_column(&self) -> Result<C, DieselError>;
    /// `name` says which column is corrupt when the stored value does not decode.
    fn from_column(column: C, name: &str) -> Result<Self, DieselError>;
}

impl Column<String> for String {
    fn to_column(&self) -> Result<String, DieselError> {
        Ok(self.clone())
    }

    fn from_column(column: String, _: &str) -> Result<Self, DieselError> {
        Ok(column)
    }
}

impl Column<Option<String>> for String {
    fn to_column(&self) -> Result<Option<String>, DieselError> {
        Ok((!self.is_empty()).then(|| self.clone()))
    }

    fn from_column(column: Option<String>, _: &str) -> Result<Self, DieselError> {
        Ok(column.unwrap_or_default())
    }
}

impl Column<Option<NaiveDateTime>> for Option<DateTime<Utc>> {
    fn to_column(&self) -> Result<Option<NaiveDateTime>, DieselError> {
        Ok(self.map(naive))
    }

    fn from_column(column: Option<NaiveDateTime>, _: &str) -> Result<Self, DieselError> {
        Ok(column.map(utc))
    }
}

/// Collections are stored as JSON text.
macro_rules! json_column {
    ($($ty:ty),*) => {
        $(impl Column<String> for $ty {
            fn to_column(&self) -> Result<String, DieselError> {
                to_json(self)
            }

            fn from_column(column: String, name: &str) -> Result<Self, DieselError> {
                serde_json::from_str(&column).map_err(|e| corrupt(name, e))
            }
        })*
    };
}
json_column!(BTreeMap<String, String>, Vec<String>, Vec<Membership>);

impl Column<Option<String>> for Option<Map<String, Value>> {
    fn to_column(&self) -> Result<Option<String>, DieselError> {
        self.as_ref().map(to_json).transpose()
    }

    fn from_column(column: Option<String>, name: &str) -> Result<Self, DieselError> {
        column
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt(name, e))
    }
}

/// Builds both conversions of `UserRow` from the field table. Each names every column of the row (no `..`), so a
/// column missing from the row, or one neither the table nor the service columns below handle, fails the build.
macro_rules! row_conversions {
    (writable { $($(#[$doc:meta])* $name:ident: $ty:ty = $variant:ident, $shape:ident, $behavior:ident, $access:ident, $text:expr;)* }
     input_only { $input:ident = $input_variant:ident } output_only { $($output:ident),* } precondition { $precondition:ident }) => {
        impl UserRow {
            fn from_user(user: &User, password_hash: Option<String>) -> Result<UserRow, DieselError> {
                let UserFields { $($name,)* } = &user.fields;
                Ok(UserRow {
                    $($name: Column::to_column($name)?,)*
                    // Uniqueness is case-insensitive: the unique index is on the lower-cased address.
                    email_key: user.fields.email.to_lowercase(),
                    id: user.id.to_string(),
                    email_verified: user.email_verified,
                    disabled: user.disabled,
                    disabled_reason: user.disabled_reason.clone(),
                    password_hash,
                    create_time: naive(user.create_time),
                    update_time: naive(user.update_time),
                    delete_time: user.delete_time.map(naive),
                    purge_time: user.purge_time.map(naive),
                    revision: user.revision,
                    last_login_time: user.last_login_time.map(naive),
                })
            }

            fn into_user(self) -> Result<(User, Option<String>), DieselError> {
                let UserRow {
                    $($name,)*
                    email_key: _,
                    id,
                    email_verified,
                    disabled,
                    disabled_reason,
                    password_hash,
                    create_time,
                    update_time,
                    delete_time,
                    purge_time,
                    revision,
                    last_login_time,
                } = self;
                let fields = UserFields {
                    $($name: Column::from_column($name, stringify!($name))?,)*
                };
                let user = User {
                    id: Uuid::try_parse(&id).map_err(|e| corrupt("id", e))?,
                    fields,
                    email_verified,
                    disabled,
                    disabled_reason,
                    has_password: password_hash.is_some(),
                    create_time: utc(create_time),
                    update_time: utc(update_time),
                    delete_time: delete_time.map(utc),
                    purge_time: purge_time.map(utc),
                    last_login_time: last_login_time.map(utc),
                    revision,
                };
                Ok((user, password_hash))
            }
        }
    };
}

user_field_table!(row_conversions);

/// A stored user with its password hash.
pub type Stored = (User, Option<String>);

/// Locks the rows of `ids` (sorted, without repeats) for the rest of the transaction and reads them, so a
/// read-modify-write sees the latest committed version and no concurrent writer slips in between. Rows are
/// locked in id order, so two batches touching the same users cannot deadlock. Unknown ids are left out.
///
/// PostgreSQL locks and reads in one `SELECT … FOR UPDATE` round trip. A row that does not exist cannot be
/// locked, so two writes may both find an id missing and both create it, and the second would fail on the
/// primary key; an `allow_missing` upsert must update instead. So every id takes a transaction-level advisory
/// lock of its own first (in key order, so writers cannot deadlock; see [`lock_rows`]) and missing ids are read
/// again under it: a write that waited for a creator sees its committed row (each statement reads the latest
/// commits) and updates it.
/// SQLite has no row locks: a no-op UPDATE takes the database write lock, then the rows are read; one writer
/// at a time means a missing row stays missing until this transaction ends.
pub fn lock_all(conn: &mut DbConnection, ids: &[Uuid]) -> QueryResult<HashMap<Uuid, Stored>> {
    let rows: Vec<UserRow> = match conn {
        DbConnection::Postgres(pg) => {
            let mut rows = lock_rows(pg, ids)?;
            if rows.len() < ids.len() {
                // The first statement took every id's advisory lock, waiting for any creator of the id to
                // finish, but read with the snapshot from before that wait: read the missing ones again.
                let found: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                let missing: Vec<Uuid> = ids
                    .iter()
                    .filter(|id| !found.contains(id.to_string().as_str()))
                    .copied()
                    .collect();
                rows.extend(lock_rows(pg, &missing)?);
            }
            rows
        }
        DbConnection::Sqlite(sqlite) => {
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                TouchUser(&id.to_string()).execute(sqlite)?;
                rows.extend(find_sqlite_row(sqlite, *id)?);
            }
            rows
        }
    };
    rows.into_iter()
        .map(|row| row.into_user().map(|stored| (stored.0.id, stored)))
        .collect()
}

/// PostgreSQL: takes the advisory lock of every id (in key order), then locks the existing rows of `ids`
/// (sorted, without repeats) in id order and reads them, in one statement.
///
/// The advisory locks come first, and in the same statement (a one-time filter the planner evaluates before
/// the scan, so also when no row exists): they keep the change feed's order (see `store::feed`). A row lock
/// gives the transaction its id; a transaction that already has one (it locked another user of its batch)
/// and then waits for a row could commit after the holder of that row with a smaller id, and the feed would
/// put its later revision first. Advisory locks give no transaction id, so a writer that waits for them has
/// none yet; every writer takes them for all its users before any row lock, so no writer waits for a row lock
/// of a user it holds the advisory lock of while another writer of that user runs.
fn lock_rows(pg: &mut diesel::PgConnection, ids: &[Uuid]) -> QueryResult<Vec<UserRow>> {
    use diesel::sql_types::{Array, BigInt, Bool};
    let mut keys: Vec<i64> = ids.iter().map(user_lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    let advisory = diesel::dsl::sql::<Bool>("(SELECT count(*) FROM (SELECT pg_advisory_xact_lock(k) FROM unnest(")
        .bind::<Array<BigInt>, _>(keys)
        .sql(") AS k ORDER BY k) AS locks) >= 0");
    match ids {
        [id] => users::table
            .find(id.to_string())
            .filter(advisory)
            .select(UserRow::as_select())
            .for_update()
            .load(pg),
        _ => users::table
            .filter(users::id.eq_any(ids.iter().map(Uuid::to_string).collect::<Vec<_>>()))
            .filter(advisory)
            .order(users::id)
            .select(UserRow::as_select())
            .for_update()
            .load(pg),
    }
}

/// The one-key advisory lock every writer of `id` takes before its row lock: it serializes the creation of
/// `id` and keeps the feed's order (see [`lock_rows`]; the two-key space holds the migration lock). Both halves
/// of the UUID are folded in, so ids made in the same millisecond (v7) still differ; two ids sharing a key
/// only wait for each other.
fn user_lock_key(id: &Uuid) -> i64 {
    let (high, low) = id.as_u64_pair();
    (high ^ low).cast_signed()
}

/// The row of `id`. No `LIMIT` (the key is unique): SQLite re-prepares a statement whose `LIMIT` is a bound
/// parameter every time it is bound, which would cost a full parse on every read.
fn find_row(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    match conn {
        DbConnection::Postgres(pg) => users::table
            .find(id.to_string())
            .select(UserRow::as_select())
            .get_result(pg)
            .optional(),
        DbConnection::Sqlite(sqlite) => find_sqlite_row(sqlite, id),
    }
}

/// [`find_row`] on SQLite's own connection.
fn find_sqlite_row(sqlite: &mut diesel::SqliteConnection, id: Uuid) -> QueryResult<Option<UserRow>> {
    users::table
        .find(id.to_string())
        .select(UserRow::as_select())
        .get_result(sqlite)
        .optional()
}

/// A user and its password hash.
pub fn find(conn: &mut DbConnection, id: Uuid) -> QueryResult<Option<Stored>> {
    find_row(conn, id)?.map(UserRow::into_user).transpose()
}

/// The users of `ids` that exist, each by its id with its password hash (or why its row does not decode), in
/// no particular order. One statement whatever the count on PostgreSQL (`id = ANY($1)`, so one prepared
/// statement serves every group).
pub fn find_many(conn: &mut DbConnection, ids: &[Uuid]) -> QueryResult<Vec<(String, QueryResult<Stored>)>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<UserRow> = match conn {
        DbConnection::Postgres(pg) => users::table
            .filter(users::id.eq_any(&ids))
            .select(UserRow::as_select())
            .load(pg)?,
        DbConnection::Sqlite(sqlite) => users::table
            .filter(users::id.eq_any(&ids))
            .select(UserRow::as_select())
            .load(sqlite)?,
    };
    Ok(rows.into_iter().map(|row| (row.id.clone(), row.into_user())).collect())
}

pub fn user_exists(conn: &mut DbConnection, id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(users::table.find(id.to_string()))).get_result(conn)
}

pub fn lookup(conn: &mut DbConnection, email: Option<String>, username: Option<String>) -> QueryResult<Vec<User>> {
    let mut query = users::table.select(UserRow::as_select()).into_boxed::<MultiBackend>();
    if let Some(email) = email {
        query = query.or_filter(users::email_key.eq(email.to_lowercase()));
    }
    if let Some(username) = username {
        query = query.or_filter(users::username.eq(username.to_lowercase()));
    }
    query
        .limit(2)
        .load(conn)?
        .into_iter()
        .map(|row| row.into_user().map(|(u, _)| u))
        .collect()
}

/// Stores what a command decided: the new or changed user as the outcome has it (revision, times and password
/// state included), its index rows and its revision record. `stored` and `stored_hash` are the row the
/// command decided on; an unchanged user writes nothing.
/// `kind` is the event the change is recorded as in the feed (a creation is always `Created`).
pub fn save(
    conn: &mut DbConnection,
    actor: &str,
    stored: Option<&User>,
    stored_hash: Option<String>,
    outcome: Outcome,
    kind: EventKind,
    now: DateTime<Utc>,
) -> QueryResult<User> {
    match outcome {
        Outcome::Unchanged(user) => Ok(user),
        Outcome::Created {
            user,
            password_hash,
            diff,
        } => {
            let row = UserRow::from_user(&user, password_hash)?;
            on_backend!(conn, |c| InsertUser(&row).execute(c))?;
            write_labels(conn, user.id, &BTreeMap::new(), &user.fields.labels)?;
            write_roles(conn, user.id, &[], &user.fields.roles)?;
            write_change(conn, None, &user, actor, diff, EventKind::Created, now)?;
            Ok(user)
        }
        Outcome::Changed { user, password, diff } => {
            let row = UserRow::from_user(&user, password.apply(stored_hash))?;
            super::verification::void_codes_on_email_change(conn, stored, &user)?;
            let before = stored.map(|u| &u.fields);
            write_labels(
                conn,
                user.id,
                before.map_or(&BTreeMap::new(), |f| &f.labels),
                &user.fields.labels,
            )?;
            write_roles(conn, user.id, before.map_or(&[], |f| &f.roles), &user.fields.roles)?;
            let keys_changed = stored.is_none_or(|old| {
                old.fields.username != user.fields.username
                    || old.fields.email != user.fields.email
                    || old.create_time != user.create_time
                    || old.purge_time != user.purge_time
            });
            let updated = Updated {
                row: &row,
                keys_changed,
            };
            write_change(conn, Some(updated), &user, actor, diff, kind, now)?;
            Ok(user)
        }
    }
}

/// PostgreSQL: stores what a command decided on `stored` (its row and hash, read without a lock) in one
/// statement, outside a transaction, if nothing else wrote the user since it was read
/// ([`statements::UpdateUserIfRevision`]). `None` when nothing was written: another writer got there first, or
/// the outcome needs more than the row, its revision and its event (index rows, voided codes, a new row), or
/// the backend is SQLite; the caller then writes in a transaction, under the user's lock. An unchanged user is
/// written nowhere and is the answer.
pub fn save_unless_changed(
    conn: &mut DbConnection,
    actor: &str,
    stored: Stored,
    outcome: Outcome,
    kind: EventKind,
    now: DateTime<Utc>,
) -> QueryResult<Option<User>> {
    let (before, stored_hash) = stored;
    let (user, password, diff) = match outcome {
        Outcome::Unchanged(user) => return Ok(Some(user)),
        Outcome::Changed { user, password, diff }
            if user.fields.labels == before.fields.labels
                && user.fields.roles == before.fields.roles
                && user.fields.email == before.fields.email =>
        {
            (user, password, diff)
        }
        Outcome::Changed { .. } | Outcome::Created { .. } => return Ok(None),
    };
    let DbConnection::Postgres(pg) = conn else {
        return Ok(None);
    };
    let row = UserRow::from_user(&user, password.apply(stored_hash))?;
    let (revision, event) = change_rows(&user, actor, diff, kind, now)?;
    let written = UpdateUserIfRevision(GuardedUpdate {
        row: &row,
        read_revision: before.revision,
        lock_key: user_lock_key(&user.id),
        revision: &revision,
        event: &event,
    })
    .execute(pg)?;
    Ok((written == 1).then_some(user))
}

/// Brings the label index rows from `old` to `new`, touching only keys that changed. Rows go one by one:
/// multi-row inserts are not portable across the two backends through one connection type.
fn write_labels(
    conn: &mut DbConnection,
    id: Uuid,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> QueryResult<()> {
    let id = id.to_string();
    let stale: Vec<&String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    if !stale.is_empty() {
        diesel::delete(
            user_labels::table
                .filter(user_labels::user_id.eq(&id))
                .filter(user_labels::label_key.eq_any(stale)),
        )
        .execute(conn)?;
    }
    for (key, value) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
        diesel::insert_into(user_labels::table)
            .values((
                user_labels::user_id.eq(&id),
                user_labels::label_key.eq(key),
                user_labels::label_value.eq(value),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Brings the role index rows from `old` to `new`, touching only roles that were removed or added.
fn write_roles(conn: &mut DbConnection, id: Uuid, old: &[String], new: &[String]) -> QueryResult<()> {
    let id = id.to_string();
    let removed: Vec<&String> = old.iter().filter(|r| !new.contains(r)).collect();
    if !removed.is_empty() {
        diesel::delete(
            user_roles::table
                .filter(user_roles::user_id.eq(&id))
                .filter(user_roles::role.eq_any(removed)),
        )
        .execute(conn)?;
    }
    for role in new.iter().filter(|r| !old.contains(r)) {
        diesel::insert_into(user_roles::table)
            .values((user_roles::user_id.eq(&id), user_roles::role.eq(role)))
            .execute(conn)?;
    }
    Ok(())
}

/// The row an update leaves, and whether it changed one of the columns SQLite's update leaves to
/// [`UpdateUserKeys`] (`statements::KEY_COLUMNS`).
struct Updated<'a> {
    row: &'a UserRow,
    keys_changed: bool,
}

/// Writes the revision record of a change and its feed event (the user as the change left it), and for an update
/// the user's row, in the same transaction. On PostgreSQL that is one statement, so the feed costs no round trip;
/// watchers are woken after the commit (`feed::Signal`).
fn write_change(
    conn: &mut DbConnection,
    updated: Option<Updated<'_>>,
    user: &User,
    actor: &str,
    diff: revision::Diff,
    kind: EventKind,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let (revision, event) = change_rows(user, actor, diff, kind, now)?;
    match conn {
        DbConnection::Postgres(pg) => match updated {
            Some(updated) => UpdateUserWithRevision((updated.row, &revision, &event)).execute(pg)?,
            None => InsertRevisionWithEvent((&revision, &event)).execute(pg)?,
        },
        DbConnection::Sqlite(sqlite) => {
            if let Some(updated) = updated {
                UpdateUser(updated.row).execute(sqlite)?;
                if updated.keys_changed {
                    UpdateUserKeys(updated.row).execute(sqlite)?;
                }
            }
            InsertRevision(&revision).execute(sqlite)?;
            diesel::insert_into(super::schema::user_events::table)
                .values(&event)
                .execute(sqlite)?
        }
    };
    Ok(())
}

/// The revision record of a change of `user` and its feed event.
fn change_rows(
    user: &User,
    actor: &str,
    diff: revision::Diff,
    kind: EventKind,
    now: DateTime<Utc>,
) -> QueryResult<(RevisionRow, super::feed::NewEvent)> {
    let revision = revision_row(user, actor, diff, now)?;
    let event = super::feed::NewEvent {
        user_id: revision.user_id.clone(),
        revision: revision.revision,
        event_type: kind.name().to_owned(),
        actor: revision.actor.clone(),
        update_mask: revision.update_mask.clone(),
        create_time: revision.create_time,
        snapshot: Some(snapshot(user)?),
    };
    Ok((revision, event))
}

/// The revision record of a write of `user` (written by [`InsertRevision`]).
fn revision_row(user: &User, actor: &str, diff: revision::Diff, now: DateTime<Utc>) -> QueryResult<RevisionRow> {
    Ok(RevisionRow {
        user_id: user.id.to_string(),
        revision: user.revision,
        actor: actor.to_owned(),
        update_mask: to_json(&diff.paths)?,
        create_time: naive(now),
        before_values: to_json(&diff.before)?,
        after_values: to_json(&diff.after)?,
    })
}

/// The user as a feed event keeps it: its row as JSON, without the password hash (only whether there is one).
#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    #[serde(flatten)]
    row: UserRow,
    has_password: bool,
}

fn snapshot(user: &User) -> QueryResult<String> {
    to_json(&Snapshot {
        row: UserRow::from_user(user, None)?,
        has_password: user.has_password,
    })
}

/// Reads a user back from its feed snapshot.
pub(super) fn from_snapshot(json: &str) -> QueryResult<User> {
    let snapshot: Snapshot = serde_json::from_str(json).map_err(|e| corrupt("event snapshot", e))?;
    let (mut user, _) = snapshot.row.into_user()?;
    user.has_password = snapshot.has_password;
    Ok(user)
}

pub fn revisions(conn: &mut DbConnection, id: Uuid, before: Option<i64>, limit: i64) -> QueryResult<Vec<Revision>> {
    let mut query = user_revisions::table
        .filter(user_revisions::user_id.eq(id.to_string()))
        .select(RevisionRow::as_select())
        .order(user_revisions::revision.desc())
        .limit(limit)
        .into_boxed::<MultiBackend>();
    if let Some(before) = before {
        query = query.filter(user_revisions::revision.lt(before));
    }
    query
        .load(conn)?
        .into_iter()
        .map(|row| {
            let object = |s: &str, what: &str| -> QueryResult<Map<String, Value>> {
                serde_json::from_str(s).map_err(|e| corrupt(what, e))
            };
            Ok(Revision {
                revision: row.revision,
                actor: row.actor,
                paths: serde_json::from_str(&row.update_mask).map_err(|e| corrupt("revision mask", e))?,
                create_time: utc(row.create_time),
                before: object(&row.before_values, "revision before")?,
                after: object(&row.after_values, "revision after")?,
            })
        })
        .collect()
}

/// Hard-deletes the users whose purge time has passed, leaving a `Purged` feed event for each. They are locked
/// first, as every write locks its users (see [`lock_all`]), so the events of one user stay in revision order.
pub fn purge_expired(conn: &mut DbConnection, now: DateTime<Utc>) -> QueryResult<usize> {
    let mut ids: Vec<Uuid> = users::table
        .filter(users::purge_time.le(naive(now)))
        .select(users::id)
        .load::<String>(conn)?
        .iter()
        .filter_map(|id| Uuid::try_parse(id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    ids.sort_unstable();
    let locked = lock_all(conn, &ids)?;
    for (user, _) in locked.values().filter(|(u, _)| u.purge_time.is_some_and(|t| t <= now)) {
        super::feed::insert_purged(conn, user, now)?;
    }
    let expired = users::table.filter(users::purge_time.le(naive(now))).select(users::id);
    // Children first: SQLite enforces the foreign keys only when the pragma is on, so do not rely on cascades.
    diesel::delete(user_labels::table.filter(user_labels::user_id.eq_any(expired))).execute(conn)?;
    diesel::delete(user_roles::table.filter(user_roles::user_id.eq_any(expired))).execute(conn)?;
    diesel::delete(user_revisions::table.filter(user_revisions::user_id.eq_any(expired))).execute(conn)?;
    diesel::delete(user_verification_codes::table.filter(user_verification_codes::user_id.eq_any(expired)))
        .execute(conn)?;
    diesel::delete(user_verifications::table.filter(user_verifications::user_id.eq_any(expired))).execute(conn)?;
    diesel::delete(users::table.filter(users::purge_time.le(naive(now)))).execute(conn)
}

/// Where the previous page ended: the sort key and id of its last user (keyset pagination, so deep pages cost
/// what the first one does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Microseconds since the epoch for the time orders, the lower-cased e-mail for `email`.
    pub key: String,
    pub id: String,
}

impl Cursor {
    pub fn after(user: &User, order: OrderBy) -> Cursor {
        let key = match order.field {
            OrderField::CreateTime => user.create_time.timestamp_micros().to_string(),
            OrderField::UpdateTime => user.update_time.timestamp_micros().to_string(),
            OrderField::Email => user.fields.email.to_lowercase(),
        };
        Cursor {
            key,
            id: user.id.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Filter,
    pub order: OrderBy,
    pub show_deleted: bool,
    pub after: Option<Cursor>,
    pub limit: i64,
}

/// Escapes LIKE wildcards so a filter value matches literally, then adds the pattern's own wildcards.
fn like_pattern(pattern: &TextPattern) -> String {
    let literal = |s: &str| s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    match pattern {
        TextPattern::Exact(v) => literal(v),
        TextPattern::Prefix(v) => format!("{}%", literal(v)),
        TextPattern::Suffix(v) => format!("%{}", literal(v)),
        TextPattern::Contains(v) => format!("%{}%", literal(v)),
    }
}

/// Keyset condition and order for one sort column: rows strictly after `(key, id)` in the list's order.
macro_rules! keyset {
    ($query:ident, $column:expr, $key:expr, $cursor:expr, $desc:expr) => {{
        if let Some(cursor) = $cursor {
            let key = $key;
            let id = cursor.id.clone();
            // The leading `column >= key` is implied by the OR that follows; it is there so that both query
            // planners start an index range scan at the cursor instead of scanning from the first row.
            $query = if $desc {
                $query
                    .filter($column.le(key.clone()))
                    .filter($column.lt(key.clone()).or($column.eq(key).and(users::id.lt(id))))
            } else {
                $query
                    .filter($column.ge(key.clone()))
                    .filter($column.gt(key.clone()).or($column.eq(key).and(users::id.gt(id))))
            };
        }
        $query = if $desc {
            $query.order(($column.desc(), users::id.desc()))
        } else {
            $query.order(($column.asc(), users::id.asc()))
        };
    }};
}

fn cursor_time(cursor: &Cursor) -> QueryResult<NaiveDateTime> {
    cursor
        .key
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| t.naive_utc())
        .ok_or_else(|| DieselError::QueryBuilderError("page cursor holds no time".into()))
}

pub fn list(conn: &mut DbConnection, q: &ListQuery) -> QueryResult<Vec<User>> {
    let mut query = users::table.select(UserRow::as_select()).into_boxed::<MultiBackend>();
    if !q.show_deleted {
        query = query.filter(users::delete_time.is_null());
    }
    for condition in &q.filter.conditions {
        query = match condition {
            Condition::Text {
                field: TextField::Email,
                pattern: TextPattern::Exact(v),
                negated,
            } => {
                if *negated {
                    query.filter(users::email_key.ne(v.clone()))
                } else {
                    query.filter(users::email_key.eq(v.clone()))
                }
            }
            Condition::Text {
                field: TextField::Email,
                pattern,
                negated,
            } => {
                if *negated {
                    query.filter(users::email_key.not_like(like_pattern(pattern)).escape('\\'))
                } else {
                    query.filter(users::email_key.like(like_pattern(pattern)).escape('\\'))
                }
            }
            Condition::Text {
                field: TextField::Username,
                pattern: TextPattern::Exact(v),
                negated,
            } => {
                if *negated {
                    query.filter(users::username.ne(v.clone()).or(users::username.is_null()))
                } else {
                    query.filter(users::username.eq(v.clone()))
                }
            }
            Condition::Text {
                field: TextField::Username,
                pattern,
                negated,
            } => {
                if *negated {
                    query.filter(
                        users::username
                            .not_like(like_pattern(pattern))
                            .escape('\\')
                            .or(users::username.is_null()),
                    )
                } else {
                    query.filter(users::username.like(like_pattern(pattern)).escape('\\'))
                }
            }
            Condition::UsernamePresent { negated: false } => query.filter(users::username.is_not_null()),
            Condition::UsernamePresent { negated: true } => query.filter(users::username.is_null()),
            Condition::State { state, negated } => {
                let deleted = users::delete_time.is_not_null();
                let disabled = users::delete_time.is_null().and(users::disabled.eq(true));
                let active = users::delete_time.is_null().and(users::disabled.eq(false));
                match (state, negated) {
                    (State::Deleted, false) => query.filter(deleted),
                    (State::Deleted, true) => query.filter(users::delete_time.is_null()),
                    (State::Disabled, false) => query.filter(disabled),
                    (State::Disabled, true) => query.filter(not(disabled)),
                    (State::Active, false) => query.filter(active),
                    (State::Active, true) => query.filter(not(active)),
                }
            }
            Condition::RegionCode { code, negated } => {
                if *negated {
                    query.filter(users::region_code.ne(code.clone()))
                } else {
                    query.filter(users::region_code.eq(code.clone()))
                }
            }
            Condition::LabelEquals { key, value, negated } => {
                let has = exists(
                    user_labels::table
                        .filter(user_labels::user_id.eq(users::id))
                        .filter(user_labels::label_key.eq(key.clone()))
                        .filter(user_labels::label_value.eq(value.clone())),
                );
                if *negated {
                    query.filter(not(has))
                } else {
                    query.filter(has)
                }
            }
            Condition::LabelPresent { key, negated } => {
                let has = exists(
                    user_labels::table
                        .filter(user_labels::user_id.eq(users::id))
                        .filter(user_labels::label_key.eq(key.clone())),
                );
                if *negated {
                    query.filter(not(has))
                } else {
                    query.filter(has)
                }
            }
            Condition::HasRole { role, negated } => {
                let has = exists(
                    user_roles::table
                        .filter(user_roles::user_id.eq(users::id))
                        .filter(user_roles::role.eq(role.clone())),
                );
                if *negated {
                    query.filter(not(has))
                } else {
                    query.filter(has)
                }
            }
        };
    }
    let cursor = q.after.as_ref();
    let desc = q.order.descending;
    match q.order.field {
        OrderField::CreateTime => {
            let key = cursor.map(cursor_time).transpose()?;
            keyset!(query, users::create_time, key.unwrap_or_default(), cursor, desc);
        }
        OrderField::UpdateTime => {
            let key = cursor.map(cursor_time).transpose()?;
            keyset!(query, users::update_time, key.unwrap_or_default(), cursor, desc);
        }
        OrderField::Email => {
            let key = cursor.map(|c| c.key.clone());
            keyset!(query, users::email_key, key.unwrap_or_default(), cursor, desc);
        }
    }
    let query = query.limit(q.limit);
    let rows: Vec<UserRow> = if q.filter.conditions.is_empty() {
        query.load(conn)?
    } else {
        Uncached(query).load(conn)?
    };
    rows.into_iter().map(|row| row.into_user().map(|(u, _)| u)).collect()
}

/// A query prepared afresh on every call instead of being kept in the connection's statement cache. A filtered
/// ListUsers has one SQL text per filter shape (up to 20 restrictions of a dozen kinds, in any order), and diesel
/// keeps every statement it caches for the connection's life (about 27 KB each on SQLite, a server-side prepared
/// statement on PostgreSQL): a caller varying its filter would grow the service and the database without bound.
/// Unfiltered pages have a few dozen shapes (order, direction, cursor, deleted) and stay cached.
struct Uncached<Q>(Q);

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Uncached<Q> {
    type SqlType = Q::SqlType;
}

impl<Q> diesel::query_builder::QueryId for Uncached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: diesel::backend::Backend, Q: diesel::query_builder::QueryFragment<DB>> diesel::query_builder::QueryFragment<DB>
    for Uncached<Q>
{
    fn walk_ast<'b>(&'b self, mut pass: diesel::query_builder::AstPass<'_, 'b, DB>) -> QueryResult<()> {
        pass.unsafe_to_cache_prepared();
        self.0.walk_ast(pass)
    }
}

impl<Q, C> RunQueryDsl<C> for Uncached<Q> {}

/// The id of the user a sign-in names, if any.
fn sign_in_id(conn: &mut DbConnection, key: &LoginKey) -> QueryResult<Option<String>> {
    let query = users::table.select(users::id).into_boxed::<MultiBackend>();
    let query = match key {
        LoginKey::Id(id) => query.filter(users::id.eq(id.to_string())),
        LoginKey::Email(email) => query.filter(users::email_key.eq(email.to_lowercase())),
        LoginKey::Username(username) => query.filter(users::username.eq(username.to_lowercase())),
    };
    query.get_result(conn).optional()
}

/// Locks the user a sign-in names for the rest of the transaction and reads it with its attempts, so that
/// concurrent attempts on one user take their turns one after another (PostgreSQL: `FOR UPDATE`; SQLite: the
/// write lock a no-op UPDATE takes, as in [`lock_all`]).
pub fn lock_for_sign_in(conn: &mut DbConnection, key: &LoginKey) -> QueryResult<Option<(Stored, Attempts)>> {
    let Some(id) = sign_in_id(conn, key)? else {
        return Ok(None);
    };
    let row = match conn {
        DbConnection::Postgres(pg) => users::table
            .find(&id)
            .select(UserRow::as_select())
            .for_update()
            .get_result(pg)
            .optional()?,
        DbConnection::Sqlite(sqlite) => {
            TouchUser(&id).execute(sqlite)?;
            find_sqlite_row(sqlite, Uuid::try_parse(&id).map_err(|e| corrupt("id", e))?)?
        }
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: Option<(i32, Option<NaiveDateTime>)> = user_sign_ins::table
        .find(&id)
        .select((user_sign_ins::failed_logins, user_sign_ins::locked_until))
        .get_result(conn)
        .optional()?;
    let attempts = stored.map_or_else(Attempts::default, |(failed, locked_until)| Attempts {
        failed,
        locked_until: locked_until.map(utc),
    });
    Ok(Some((row.into_user()?, attempts)))
}

/// The attempts of a login that names nobody, locked for the rest of the transaction like a user's (the row is
/// created first if it is new, so concurrent attempts on one login take their turns), and the key they are
/// stored under. API §9: an unknown login must cost what a wrong password costs, lockout included.
pub fn lock_unknown_sign_in(
    conn: &mut DbConnection,
    key: &LoginKey,
    now: DateTime<Utc>,
) -> QueryResult<(String, Attempts)> {
    use sha2::{Digest, Sha256};
    let login = match key {
        LoginKey::Id(id) => format!("id:{id}"),
        LoginKey::Email(email) => format!("email:{}", email.to_lowercase()),
        LoginKey::Username(username) => format!("username:{}", username.to_lowercase()),
    };
    let digest: String = Sha256::digest(login.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let new = (
        unknown_sign_ins::login_digest.eq(&digest),
        unknown_sign_ins::failed_logins.eq(0),
        unknown_sign_ins::update_time.eq(naive(now)),
    );
    // The multi-backend connection has no ON CONFLICT; each backend's own does.
    on_backend!(conn, |c| diesel::insert_into(unknown_sign_ins::table)
        .values(new)
        .on_conflict_do_nothing()
        .execute(c))?;
    let query = unknown_sign_ins::table
        .find(&digest)
        .select((unknown_sign_ins::failed_logins, unknown_sign_ins::locked_until));
    let (failed, locked_until): (i32, Option<NaiveDateTime>) = match conn {
        DbConnection::Postgres(pg) => query.for_update().get_result(pg)?,
        // The INSERT took the database's write lock.
        DbConnection::Sqlite(sqlite) => query.get_result(sqlite)?,
    };
    Ok((
        digest,
        Attempts {
            failed,
            locked_until: locked_until.map(utc),
        },
    ))
}

/// Stores the attempts of a login that names nobody (see [`lock_unknown_sign_in`]).
pub fn set_unknown_attempts(
    conn: &mut DbConnection,
    digest: &str,
    attempts: Attempts,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(unknown_sign_ins::table.find(digest))
        .set((
            unknown_sign_ins::failed_logins.eq(attempts.failed),
            unknown_sign_ins::locked_until.eq(attempts.locked_until.map(naive)),
            unknown_sign_ins::update_time.eq(naive(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Forgets unknown logins whose last attempt was before `before`; returns how many.
pub fn prune_unknown_sign_ins(conn: &mut DbConnection, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(unknown_sign_ins::table.filter(unknown_sign_ins::update_time.lt(naive(before)))).execute(conn)
}

/// Stores a user's attempts; the caller holds the user's lock (see [`lock_for_sign_in`]), so the row cannot
/// appear between the UPDATE and the INSERT.
pub fn set_attempts(conn: &mut DbConnection, id: Uuid, attempts: Attempts) -> QueryResult<()> {
    let key = id.to_string();
    let locked_until = attempts.locked_until.map(naive);
    let updated = diesel::update(user_sign_ins::table.find(&key))
        .set((
            user_sign_ins::failed_logins.eq(attempts.failed),
            user_sign_ins::locked_until.eq(locked_until),
        ))
        .execute(conn)?;
    if updated == 0 && attempts != Attempts::default() {
        diesel::insert_into(user_sign_ins::table)
            .values((
                user_sign_ins::user_id.eq(&key),
                user_sign_ins::failed_logins.eq(attempts.failed),
                user_sign_ins::locked_until.eq(locked_until),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Records a correct password: the failure count starts over; `login_time` (a full success) becomes the last
/// sign-in; `rehash` replaces the stored hash only if it is still `old_hash`, so a password changed meanwhile is
/// not overwritten. None of it is an edit: `revision` and `update_time` (the etag) stay. Returns the user.
pub fn record_sign_in(
    conn: &mut DbConnection,
    id: Uuid,
    login_time: Option<DateTime<Utc>>,
    rehash: Option<(String, String)>,
) -> QueryResult<Option<User>> {
    let key = id.to_string();
    set_attempts(conn, id, Attempts::default())?;
    if let Some(at) = login_time {
        diesel::update(users::table.find(&key))
            .set(users::last_login_time.eq(Some(naive(at))))
            .execute(conn)?;
    }
    if let Some((old_hash, new_hash)) = rehash {
        diesel::update(users::table.find(&key).filter(users::password_hash.eq(old_hash)))
            .set(users::password_hash.eq(Some(new_hash)))
            .execute(conn)?;
    }
    Ok(find(conn, id)?.map(|(user, _)| user))
}
