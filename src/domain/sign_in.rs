//! Sign-in checks (API §9): how a login names its user, the stored failure count and lockout, the one answer
//! every failed check gets, and which user states refuse access once the password is right.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::error::Error;
use super::user::{State, User};

/// Consecutive failures allowed before attempts are refused for a while.
pub const MAX_FAILURES: i32 = 5;
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::hours(1);

/// How a sign-in names its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginKey {
    Id(Uuid),
    /// Compared case-insensitively, as the unique index is.
    Email(String),
    Username(String),
}

/// A user's stored sign-in attempts: consecutive failures (attempts under way included) and until when new
/// attempts are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempts {
    pub failed: i32,
    pub locked_until: Option<DateTime<Utc>>,
}

/// How long attempts stay refused after the `failures`-th consecutive failure: none before the fifth, then
/// 2^(n-5) minutes, at most an hour.
pub fn lockout(failures: i32) -> Option<Duration> {
    let over = failures.checked_sub(MAX_FAILURES)?;
    let over = u32::try_from(over).ok()?;
    // 2^6 minutes already passes the hour: cap the exponent so the shift cannot overflow.
    let minutes = 1i64 << over.min(6);
    Some(Duration::minutes(minutes).min(MAX_LOCKOUT))
}

/// Takes one attempt before the password is checked, so concurrent guesses cannot pass the limit: the attempt
/// counts as a failure (and sets the lockout it would cause) until a success resets it. Refused with the time
/// left while the user is locked out.
pub fn take_attempt(current: Attempts, now: DateTime<Utc>) -> Result<Attempts, std::time::Duration> {
    if let Some(until) = current.locked_until.filter(|until| *until > now) {
        return Err((until - now).to_std().unwrap_or_default());
    }
    let failed = current.failed.saturating_add(1);
    Ok(Attempts {
        failed,
        locked_until: lockout(failed).map(|d| now + d).or(current.locked_until),
    })
}

/// The one answer to an unknown user, a wrong password and a user without a password, so none tells which.
pub fn invalid_credentials() -> Error {
    Error::InvalidArgument {
        reason: "INVALID_CREDENTIALS",
        message: "the user or password is not valid".into(),
        violations: Vec::new(),
    }
}

pub fn too_many_attempts(retry_after: std::time::Duration) -> Error {
    Error::ResourceExhausted {
        reason: "TOO_MANY_ATTEMPTS",
        message: "too many failed sign-in attempts for this user; wait before trying again".into(),
        retry_after,
    }
}

/// Why a user may not use its account at `now`: its state or its validity window. `None` when it may.
pub fn access_refusal(user: &User, now: DateTime<Utc>) -> Option<(&'static str, &'static str)> {
    match user.state() {
        State::Deleted => return Some(("USER_DELETED", "the user is deleted")),
        State::Disabled => return Some(("USER_DISABLED", "the user is disabled")),
        State::Active => {}
    }
    if user.fields.valid_from.is_some_and(|from| now < from) {
        return Some(("USER_NOT_YET_VALID", "the user is not valid yet (before valid_from)"));
    }
    if user.fields.expire_time.is_some_and(|expire| now >= expire) {
        return Some(("USER_EXPIRED", "the user has expired (after expire_time)"));
    }
    None
}

/// The refusal of a correct password for a user that may not sign in (FAILED_PRECONDITION).
pub fn check_can_sign_in(user: &User, now: DateTime<Utc>) -> Result<(), Error> {
    match access_refusal(user, now) {
        None => Ok(()),
        Some((reason, message)) => Err(Error::FailedPrecondition {
            reason,
            subject: format!("users/{}", user.id),
            message: message.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_doubles_from_the_fifth_failure_up_to_an_hour() {
        assert_eq!(lockout(4), None);
        assert_eq!(lockout(5), Some(Duration::minutes(1)));
        assert_eq!(lockout(6), Some(Duration::minutes(2)));
        assert_eq!(lockout(10), Some(Duration::minutes(32)));
        assert_eq!(lockout(11), Some(Duration::hours(1)));
        assert_eq!(lockout(i32::MAX), Some(Duration::hours(1)));
    }

    #[test]
    fn the_fifth_attempt_locks_before_its_password_is_checked() {
        let now = Utc::now();
        let mut attempts = Attempts::default();
        for n in 1..=4 {
            attempts = take_attempt(attempts, now).expect("allowed");
            assert_eq!((attempts.failed, attempts.locked_until), (n, None));
        }
        attempts = take_attempt(attempts, now).expect("the fifth is allowed");
        assert_eq!(attempts.locked_until, Some(now + Duration::minutes(1)));
        let left = take_attempt(attempts, now).expect_err("the sixth waits");
        assert_eq!(left, std::time::Duration::from_secs(60));
        // Once the lock ends, one more attempt runs and locks for twice as long.
        let later = now + Duration::minutes(1);
        attempts = take_attempt(attempts, later).expect("the lock ended");
        assert_eq!(attempts.locked_until, Some(later + Duration::minutes(2)));
    }
}
