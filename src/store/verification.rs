//! SQL for e-mail verification: the stored code digests, the per-user wrong-code count and resend time, and the
//! mail outbox (queue, claim with a lease, outcome), written once for both backends.

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::connection::DbConnection;
use super::schema::{mail_outbox, user_verification_codes, user_verifications};
use crate::domain::user::User;
use crate::domain::verification::CodeAttempts;

/// The only kind of mail so far.
const KIND_VERIFICATION: &str = "verification";

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

/// A claimed mail job.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = mail_outbox)]
pub struct MailJob {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub email: String,
    pub create_time: NaiveDateTime,
    /// Attempts made, this one included.
    pub attempts: i32,
}

/// What the queue holds: unsent jobs, jobs given up on, and when the oldest unsent one was queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub queued: i64,
    pub failed: i64,
    pub oldest_queued: Option<DateTime<Utc>>,
}

/// Queues a verification mail to `user`'s current address; the caller's transaction decides whether it stays.
pub fn queue_verification(conn: &mut DbConnection, user: &User, now: DateTime<Utc>) -> QueryResult<()> {
    diesel::insert_into(mail_outbox::table)
        .values((
            mail_outbox::id.eq(Uuid::now_v7().to_string()),
            mail_outbox::user_id.eq(user.id.to_string()),
            mail_outbox::kind.eq(KIND_VERIFICATION),
            mail_outbox::email.eq(&user.fields.email),
            mail_outbox::create_time.eq(naive(now)),
            mail_outbox::attempts.eq(0),
            mail_outbox::next_attempt_time.eq(naive(now)),
        ))
        .execute(conn)?;
    Ok(())
}

/// A change of address voids every outstanding code of the user, in the transaction of the change: a code is
/// bound to the address it was sent to.
pub fn void_codes_on_email_change(conn: &mut DbConnection, before: Option<&User>, after: &User) -> QueryResult<()> {
    let changed = before.is_some_and(|b| b.fields.email.to_lowercase() != after.fields.email.to_lowercase());
    if changed {
        delete_codes(conn, after.id)?;
    }
    Ok(())
}

pub fn delete_codes(conn: &mut DbConnection, id: Uuid) -> QueryResult<usize> {
    diesel::delete(user_verification_codes::table.filter(user_verification_codes::user_id.eq(id.to_string())))
        .execute(conn)
}

/// The user's wrong-code count and last send. The caller holds the user's row lock.
pub fn attempts(conn: &mut DbConnection, id: Uuid) -> QueryResult<CodeAttempts> {
    let row: Option<(i32, Option<NaiveDateTime>)> = user_verifications::table
        .find(id.to_string())
        .select((user_verifications::wrong_codes, user_verifications::last_sent_time))
        .get_result(conn)
        .optional()?;
    Ok(row.map_or_else(CodeAttempts::default, |(wrong, last)| CodeAttempts {
        wrong,
        last_sent: last.map(|t| t.and_utc()),
    }))
}

/// Stores the user's attempts; the caller holds the user's row lock, so the row cannot appear between the
/// UPDATE and the INSERT.
pub fn set_attempts(conn: &mut DbConnection, id: Uuid, attempts: CodeAttempts) -> QueryResult<()> {
    let key = id.to_string();
    let last = attempts.last_sent.map(naive);
    let updated = diesel::update(user_verifications::table.find(&key))
        .set((
            user_verifications::wrong_codes.eq(attempts.wrong),
            user_verifications::last_sent_time.eq(last),
        ))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(user_verifications::table)
            .values((
                user_verifications::user_id.eq(&key),
                user_verifications::wrong_codes.eq(attempts.wrong),
                user_verifications::last_sent_time.eq(last),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Stores a new code's digest, bound to the user's current address, and starts the wrong-code count over.
pub fn insert_code(
    conn: &mut DbConnection,
    user: &User,
    digest: &str,
    now: DateTime<Utc>,
    ttl: Duration,
) -> QueryResult<()> {
    diesel::insert_into(user_verification_codes::table)
        .values((
            user_verification_codes::code_digest.eq(digest),
            user_verification_codes::user_id.eq(user.id.to_string()),
            user_verification_codes::email_key.eq(user.fields.email.to_lowercase()),
            user_verification_codes::create_time.eq(naive(now)),
            user_verification_codes::expire_time.eq(naive(now + ttl)),
        ))
        .execute(conn)?;
    // Expired codes of the user go with it, so retried sends do not pile up rows.
    diesel::delete(
        user_verification_codes::table
            .filter(user_verification_codes::user_id.eq(user.id.to_string()))
            .filter(user_verification_codes::expire_time.le(naive(now))),
    )
    .execute(conn)?;
    let current = attempts(conn, user.id)?;
    set_attempts(conn, user.id, CodeAttempts { wrong: 0, ..current })
}

/// The address and expiry of the user's code with `digest`, if the user has one. Another user's code is not
/// found: the lookup is by user and digest.
pub fn find_code(conn: &mut DbConnection, id: Uuid, digest: &str) -> QueryResult<Option<(String, DateTime<Utc>)>> {
    let row: Option<(String, NaiveDateTime)> = user_verification_codes::table
        .find(digest)
        .filter(user_verification_codes::user_id.eq(id.to_string()))
        .select((user_verification_codes::email_key, user_verification_codes::expire_time))
        .get_result(conn)
        .optional()?;
    Ok(row.map(|(email, expire)| (email, expire.and_utc())))
}

/// Whether any job is due: a read, so an idle sender's poll takes no write lock and commits nothing.
pub fn any_due(conn: &mut DbConnection, now: DateTime<Utc>) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        mail_outbox::table
            .filter(mail_outbox::failed_time.is_null())
            .filter(mail_outbox::next_attempt_time.le(naive(now))),
    ))
    .get_result(conn)
}

/// Claims up to `limit` due jobs for `lease`: each is due again only when the lease ends, so a sender that dies
/// mid-send leaves its jobs to the next one. PostgreSQL locks the rows it claims with `FOR UPDATE SKIP LOCKED`,
/// so concurrent senders of several processes take different jobs instead of waiting for one another; SQLite
/// runs this through its single writer, one claim at a time.
pub fn claim(conn: &mut DbConnection, now: DateTime<Utc>, lease: Duration, limit: i64) -> QueryResult<Vec<MailJob>> {
    let due = mail_outbox::table
        .filter(mail_outbox::failed_time.is_null())
        .filter(mail_outbox::next_attempt_time.le(naive(now)))
        .order(mail_outbox::next_attempt_time)
        .limit(limit)
        .select(mail_outbox::id);
    let ids: Vec<String> = match conn {
        DbConnection::Postgres(pg) => due.for_update().skip_locked().load(pg)?,
        DbConnection::Sqlite(_) => due.load(conn)?,
    };
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    diesel::update(mail_outbox::table.filter(mail_outbox::id.eq_any(&ids)))
        .set((
            mail_outbox::next_attempt_time.eq(naive(now + lease)),
            mail_outbox::attempts.eq(mail_outbox::attempts + 1),
        ))
        .execute(conn)?;
    mail_outbox::table
        .filter(mail_outbox::id.eq_any(&ids))
        .order(mail_outbox::create_time)
        .select(MailJob::as_select())
        .load(conn)
}

/// A delivered job is deleted: nothing is left to do for it, and the queue stays as small as what is pending.
pub fn mark_sent(conn: &mut DbConnection, id: &str) -> QueryResult<()> {
    diesel::delete(mail_outbox::table.find(id)).execute(conn)?;
    Ok(())
}

/// A failed attempt: tried again at `retry_at`, or, with `None`, kept as failed for good.
pub fn mark_failed_attempt(
    conn: &mut DbConnection,
    id: &str,
    now: DateTime<Utc>,
    retry_at: Option<DateTime<Utc>>,
    error: &str,
) -> QueryResult<()> {
    let target = mail_outbox::table.find(id);
    match retry_at {
        Some(at) => diesel::update(target)
            .set((
                mail_outbox::next_attempt_time.eq(naive(at)),
                mail_outbox::last_error.eq(Some(error)),
            ))
            .execute(conn)?,
        None => diesel::update(target)
            .set((
                mail_outbox::failed_time.eq(Some(naive(now))),
                mail_outbox::last_error.eq(Some(error)),
            ))
            .execute(conn)?,
    };
    Ok(())
}

/// Removes a job that has nothing left to send (its user is gone, verified, or has another address now).
pub fn drop_job(conn: &mut DbConnection, id: &str) -> QueryResult<()> {
    diesel::delete(mail_outbox::table.find(id)).execute(conn)?;
    Ok(())
}

pub fn stats(conn: &mut DbConnection) -> QueryResult<OutboxStats> {
    let unsent = mail_outbox::table.filter(mail_outbox::failed_time.is_null());
    let queued: i64 = unsent.count().get_result(conn)?;
    let oldest: Option<NaiveDateTime> = unsent
        .select(diesel::dsl::min(mail_outbox::create_time))
        .get_result(conn)?;
    let failed: i64 = mail_outbox::table
        .filter(mail_outbox::failed_time.is_not_null())
        .count()
        .get_result(conn)?;
    Ok(OutboxStats {
        queued,
        failed,
        oldest_queued: oldest.map(|t| t.and_utc()),
    })
}
