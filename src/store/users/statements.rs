//! The hot write statements of a user (the full-row INSERT and UPDATE, the SQLite write lock, the revision
//! INSERT) as fixed SQL that each connection prepares once.
//!
//! diesel never caches the statements its `insert_into(..).values(row)` and `update(..).set(row)` build (they
//! mark themselves unsafe to cache), nor `sql_query`, so PostgreSQL parsed and planned, and SQLite compiled, each
//! of them on every write. These types render the same SQL text every time and declare a static query id, so
//! diesel's statement cache keys them by type: no re-rendering to look them up, no re-preparing. They must be
//! run on the backend's own connection (see `on_backend!` in `users`), not through the multi-backend
//! connection, whose wrapper has no static query id.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;

use super::super::feed::NewEvent;
use super::{RevisionRow, UserRow};

/// Calls `$callback!([$args] <every column of `users` but `id`: its SQL type>)`, in the order the INSERT and
/// UPDATE write them. A column of `UserRow` missing here fails the build (`every_column_listed`).
macro_rules! user_columns {
    ($callback:ident [$($arg:ident),*]) => {
        $callback! {
            [$($arg),*]
            username: Nullable<Text>,
            email: Text,
            email_key: Text,
            email_verified: Bool,
            given_name: Text,
            family_name: Text,
            phone_number: Text,
            national_id: Text,
            address: Text,
            birth_date: Text,
            language_code: Text,
            region_code: Text,
            time_zone: Text,
            image_uri: Text,
            description: Text,
            disabled: Bool,
            disabled_reason: Text,
            labels: Text,
            roles: Text,
            memberships: Text,
            attributes: Nullable<Text>,
            valid_from: Nullable<Timestamp>,
            expire_time: Nullable<Timestamp>,
            password_hash: Nullable<Text>,
            create_time: Timestamp,
            update_time: Timestamp,
            delete_time: Nullable<Timestamp>,
            purge_time: Nullable<Timestamp>,
            revision: BigInt,
            last_login_time: Nullable<Timestamp>,
        }
    };
}

/// Declares `$name` as a statement with a static query id, implemented for each of `$backend` by `$body`
/// (`|this, out| …`), which pushes the SQL and binds.
macro_rules! fixed_statement {
    ($(#[$doc:meta])* $name:ident<$lt:lifetime>($field:ty) for [$($backend:ty),+], |$this:ident, $out:ident| $body:block) => {
        $(#[$doc])*
        pub struct $name<$lt>(pub $field);

        impl QueryId for $name<'_> {
            type QueryId = $name<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<Conn> diesel::RunQueryDsl<Conn> for $name<'_> {}

        $(
            impl QueryFragment<$backend> for $name<'_> {
                fn walk_ast<'b>(&'b self, mut $out: AstPass<'_, 'b, $backend>) -> QueryResult<()> {
                    let $this = self;
                    $body
                    Ok(())
                }
            }
        )+
    };
}

/// Pushes `<column> = <bind>, …` (UPDATE) from `$row` for every column but those named in `$skip` (a constant,
/// so the statement's SQL text is the same on every call).
macro_rules! push_assignments {
    ([$out:ident, $row:ident, $skip:ident] $($column:ident: $ty:ty),* $(,)?) => {
        let mut separator = "";
        $(
            if !$skip.contains(&stringify!($column)) {
                $out.push_sql(separator);
                $out.push_sql(concat!(stringify!($column), " = "));
                $out.push_bind_param::<$ty, _>(&$row.$column)?;
                separator = ", ";
            }
        )*
        let _ = separator;
    };
}

/// The indexed columns of `users` that an update seldom changes (`update_time`, always changed, is not one).
/// SQLite rewrites the entry of every index on a column an `UPDATE` assigns, changed or not: assigning these
/// on every update cost each write three more pages (read, logged, synced and checkpointed), so on SQLite they
/// are written by [`UpdateUserKeys`], only when one of them changed.
pub const KEY_COLUMNS: [&str; 4] = ["username", "email_key", "create_time", "purge_time"];

/// No column: what PostgreSQL's full-row update skips.
const NO_COLUMNS: [&str; 0] = [];

/// Pushes `, <column>` for every column (the INSERT's column list).
macro_rules! push_names {
    ([$out:ident] $($column:ident: $ty:ty),* $(,)?) => {
        $( $out.push_sql(concat!(", ", stringify!($column))); )*
    };
}

/// Pushes `, <bind>` for every column from `$row` (the INSERT's values).
macro_rules! push_values {
    ([$out:ident, $row:ident] $($column:ident: $ty:ty),* $(,)?) => {
        $(
            $out.push_sql(", ");
            $out.push_bind_param::<$ty, _>(&$row.$column)?;
        )*
    };
}

/// Fails the build when `UserRow` has a column `user_columns!` does not list.
macro_rules! check_row_columns {
    ([] $($column:ident: $ty:ty),* $(,)?) => {
        #[allow(dead_code)]
        fn every_column_listed(row: &UserRow) {
            let UserRow { id: _, $($column: _),* } = row;
        }
    };
}
user_columns!(check_row_columns []);

/// Pushes the `UPDATE` of `$row`'s user: every column but those in `$skip`.
macro_rules! push_update_user {
    ($out:ident, $row:ident, $skip:ident) => {
        $out.push_sql("UPDATE users SET ");
        user_columns!(push_assignments [$out, $row, $skip]);
        $out.push_sql(" WHERE id = ");
        $out.push_bind_param::<Text, _>(&$row.id)?;
    };
}

/// Pushes the `INSERT` of the revision record `$row`: its values as `VALUES (…)`, or with `from` as
/// `SELECT … FROM <from>`, one row for each row of `from`.
macro_rules! push_insert_revision {
    ($out:ident, $row:ident) => {
        push_insert_revision!($out, $row, " VALUES (", ")");
    };
    ($out:ident, $row:ident from $from:literal) => {
        push_insert_revision!($out, $row, " SELECT ", concat!(" FROM ", $from));
    };
    ($out:ident, $row:ident, $open:expr, $close:expr) => {
        $out.push_sql(
            "INSERT INTO user_revisions (user_id, revision, actor, update_mask, create_time, before_values, \
             after_values)",
        );
        $out.push_sql($open);
        $out.push_bind_param::<Text, _>(&$row.user_id)?;
        $out.push_sql(", ");
        $out.push_bind_param::<BigInt, _>(&$row.revision)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$row.actor)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$row.update_mask)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Timestamp, _>(&$row.create_time)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$row.before_values)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$row.after_values)?;
        $out.push_sql($close);
    };
}

/// Pushes the `INSERT` of the feed event `$event` (its `seq` and `txid` come from the column defaults), as
/// `VALUES (…)` or `SELECT … FROM <from>` (see [`push_insert_revision`]).
macro_rules! push_insert_event {
    ($out:ident, $event:ident) => {
        push_insert_event!($out, $event, " VALUES (", ")");
    };
    ($out:ident, $event:ident from $from:literal) => {
        push_insert_event!($out, $event, " SELECT ", concat!(" FROM ", $from));
    };
    ($out:ident, $event:ident, $open:expr, $close:expr) => {
        $out.push_sql(
            "INSERT INTO user_events (user_id, revision, event_type, actor, update_mask, create_time, snapshot)",
        );
        $out.push_sql($open);
        $out.push_bind_param::<Text, _>(&$event.user_id)?;
        $out.push_sql(", ");
        $out.push_bind_param::<BigInt, _>(&$event.revision)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$event.event_type)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$event.actor)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Text, _>(&$event.update_mask)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Timestamp, _>(&$event.create_time)?;
        $out.push_sql(", ");
        $out.push_bind_param::<Nullable<Text>, _>(&$event.snapshot)?;
        $out.push_sql($close);
    };
}

fixed_statement! {
    /// `INSERT` of a whole new user row.
    InsertUser<'a>(&'a UserRow) for [Pg, Sqlite], |this, out| {
        let row = this.0;
        out.push_sql("INSERT INTO users (id");
        user_columns!(push_names [out]);
        out.push_sql(") VALUES (");
        out.push_bind_param::<Text, _>(&row.id)?;
        user_columns!(push_values [out, row]);
        out.push_sql(")");
    }
}

fixed_statement! {
    /// SQLite: `UPDATE` of a user's row from the row the write decided on, every column but [`KEY_COLUMNS`].
    UpdateUser<'a>(&'a UserRow) for [Sqlite], |this, out| {
        let row = this.0;
        push_update_user!(out, row, KEY_COLUMNS);
    }
}

fixed_statement! {
    /// SQLite: `UPDATE` of a user's [`KEY_COLUMNS`], for a write that changed one of them.
    UpdateUserKeys<'a>(&'a UserRow) for [Sqlite], |this, out| {
        let row = this.0;
        out.push_sql("UPDATE users SET username = ");
        out.push_bind_param::<Nullable<Text>, _>(&row.username)?;
        out.push_sql(", email_key = ");
        out.push_bind_param::<Text, _>(&row.email_key)?;
        out.push_sql(", create_time = ");
        out.push_bind_param::<Timestamp, _>(&row.create_time)?;
        out.push_sql(", purge_time = ");
        out.push_bind_param::<Nullable<Timestamp>, _>(&row.purge_time)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(&row.id)?;
    }
}

fixed_statement! {
    /// SQLite: a no-op `UPDATE` of a user's row that takes the database's write lock before the row is read (see
    /// `lock_all`).
    TouchUser<'a>(&'a str) for [Sqlite], |this, out| {
        out.push_sql("UPDATE users SET revision = revision WHERE id = ");
        out.push_bind_param::<Text, _>(this.0)?;
    }
}

fixed_statement! {
    /// The `INSERT` of one revision record. Columns with a default may be added to the table without changing it.
    InsertRevision<'a>(&'a RevisionRow) for [Pg, Sqlite], |this, out| {
        let row = this.0;
        push_insert_revision!(out, row);
    }
}

fixed_statement! {
    /// PostgreSQL: [`InsertRevision`] and the change's feed event in one statement, so one round trip:
    /// data-modifying `WITH`s run to completion whether or not anything reads them. Other processes' watchers
    /// are woken after the commit (`feed::Signal`), not by a `NOTIFY` here, which would serialize the commits.
    InsertRevisionWithEvent<'a>((&'a RevisionRow, &'a NewEvent)) for [Pg], |this, out| {
        let (revision, event) = this.0;
        out.push_sql("WITH revision AS (");
        push_insert_revision!(out, revision);
        out.push_sql(") ");
        push_insert_event!(out, event);
    }
}

fixed_statement! {
    /// PostgreSQL: [`UpdateUser`], [`InsertRevision`] and the change's feed event in one statement, so one round
    /// trip (see [`InsertRevisionWithEvent`]). The row is locked (`lock_all`), so the UPDATE finds it.
    UpdateUserWithRevision<'a>((&'a UserRow, &'a RevisionRow, &'a NewEvent)) for [Pg], |this, out| {
        let (row, revision, event) = this.0;
        out.push_sql("WITH updated_user AS (");
        // Every column: PostgreSQL compares the values, and an index whose columns kept theirs is not touched.
        push_update_user!(out, row, NO_COLUMNS);
        out.push_sql("), revision AS (");
        push_insert_revision!(out, revision);
        out.push_sql(") ");
        push_insert_event!(out, event);
    }
}

/// What [`UpdateUserIfRevision`] writes: the user's row as an update decided it, the revision it was decided
/// on, the user's advisory lock key (`users::user_lock_key`), the revision record and the feed event.
pub struct GuardedUpdate<'a> {
    pub row: &'a UserRow,
    pub read_revision: i64,
    pub lock_key: i64,
    pub revision: &'a RevisionRow,
    pub event: &'a NewEvent,
}

fixed_statement! {
    /// PostgreSQL, outside a transaction: [`UpdateUserWithRevision`] of a row read without a lock, written only
    /// if the row is still at the revision the update was decided on. Two round trips (the read, this) instead
    /// of four (BEGIN, lock and read, write, COMMIT). It affects one row if it wrote, none if another writer
    /// got there first (the caller decides again, under the lock).
    ///
    /// The user's advisory lock is taken first, as every writer takes it (`users::lock_rows`): an uncorrelated
    /// sub-select is a one-time filter, evaluated before the scan, so before this statement's transaction has
    /// an id. A concurrent writer that commits while this one waits (for the advisory or the row lock) changed
    /// the revision: PostgreSQL evaluates the condition again on the row's newest version and skips it. The
    /// inserts read `updated_user`, so they add nothing when the update matched nothing.
    UpdateUserIfRevision<'a>(GuardedUpdate<'a>) for [Pg], |this, out| {
        let GuardedUpdate { row, read_revision, lock_key, revision, event } = &this.0;
        out.push_sql("WITH updated_user AS (");
        push_update_user!(out, row, NO_COLUMNS);
        out.push_sql(" AND revision = ");
        out.push_bind_param::<BigInt, _>(read_revision)?;
        out.push_sql(" AND (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(");
        out.push_bind_param::<BigInt, _>(lock_key)?;
        out.push_sql(")) AS user_lock) >= 0 RETURNING id), revision AS (");
        push_insert_revision!(out, revision from "updated_user");
        out.push_sql(") ");
        push_insert_event!(out, event from "updated_user");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::change::{self, PasswordInput};
    use crate::domain::user::{UserFields, to_stored_precision};
    use chrono::Utc;

    /// The columns a statement assigns, in its order, read from its SQL text.
    fn assigned(sql: &str) -> Vec<String> {
        let set = sql.split_once(" SET ").expect("an UPDATE").1;
        let set = set.split_once(" WHERE ").expect("a WHERE").0;
        set.split(", ")
            .map(|assignment| assignment.split_once(" = ").expect("an assignment").0.to_owned())
            .collect()
    }

    macro_rules! column_names {
        ([] $($column:ident: $ty:ty),* $(,)?) => {
            [$(stringify!($column)),*]
        };
    }

    /// On SQLite the update every write runs assigns no key column, and with the one for key changes it assigns
    /// every column exactly once: a column missing from both would never be written.
    #[test]
    fn sqlites_two_updates_assign_every_column_once() {
        let fields = UserFields {
            email: "a@example.com".into(),
            ..Default::default()
        };
        let draft = change::create(
            uuid::Uuid::now_v7(),
            fields,
            PasswordInput::Absent,
            to_stored_precision(Utc::now()),
        )
        .expect("a valid user");
        let user = draft.user;
        let row = UserRow::from_user(&user, None).expect("a row");
        let every = assigned(&diesel::debug_query::<Sqlite, _>(&UpdateUser(&row)).to_string());
        let keys = assigned(&diesel::debug_query::<Sqlite, _>(&UpdateUserKeys(&row)).to_string());
        assert!(every.iter().all(|c| !KEY_COLUMNS.contains(&c.as_str())), "{every:?}");
        assert_eq!(keys, KEY_COLUMNS);
        let mut both: Vec<String> = every.into_iter().chain(keys).collect();
        both.sort();
        let mut columns: Vec<&str> = user_columns!(column_names []).to_vec();
        columns.sort();
        assert_eq!(both, columns);
    }
}
