//! The rules of every write: building a new user, merging a masked patch, and the lifecycle transitions.
//! Each function takes the stored user and returns the user it should become, or why it may not; the
//! revision bookkeeping of a real change is `command`'s.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::error::{Error, FieldViolation};
use super::field_mask::UpdateMask;
use super::user::{State, User, UserFields};
use super::validate;

/// How long a soft-deleted user is kept before it is purged (AIP-164).
pub const PURGE_AFTER_DAYS: i64 = 30;
/// Longest `DisableUser.reason`, in characters.
pub const MAX_DISABLED_REASON_CHARS: usize = 500;

/// What a write does to the stored password hash. The hash is computed before the transaction starts, so the
/// slow Argon2 work never holds a database lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordWrite {
    Keep,
    Set(String),
    Clear,
}

impl PasswordWrite {
    /// The hash a user has once the write is stored, given the one it had.
    pub fn apply(self, stored_hash: Option<String>) -> Option<String> {
        match self {
            PasswordWrite::Keep => stored_hash,
            PasswordWrite::Set(hash) => Some(hash),
            PasswordWrite::Clear => None,
        }
    }
}

/// A password as it arrives with a write: absent, rejected by the policy (its violations), or already hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordInput {
    Absent,
    Invalid(Vec<FieldViolation>),
    Hashed(String),
}

/// A user the caller sends, relative to the request path `prefix` (`user`, `requests[2].user`).
#[derive(Debug, Clone)]
pub struct Patch {
    pub fields: UserFields,
    pub password: PasswordInput,
    pub mask: UpdateMask,
    pub etag: String,
}

/// What a rule makes of a user: the user it should become and what happens to the password. A new user is
/// complete; a change still has the stored revision, update time and password state, which only a change
/// that changes something updates (`command::Command::decide`).
#[derive(Debug, Clone)]
pub struct Draft {
    pub user: User,
    pub password: PasswordWrite,
}

/// Normalizes and validates user fields, adding the password's policy violations so every problem is reported
/// in one answer.
fn checked_fields(mut fields: UserFields, password: &PasswordInput, now: DateTime<Utc>) -> Result<UserFields, Error> {
    validate::normalize(&mut fields);
    let mut violations = Vec::new();
    validate::validate_fields(&fields, "user", now.date_naive(), &mut violations);
    if let PasswordInput::Invalid(v) = password {
        violations.extend(v.iter().cloned());
    }
    Error::check(violations)?;
    Ok(fields)
}

/// The user a create (or an `allow_missing` update) makes.
pub fn create(id: Uuid, fields: UserFields, password: PasswordInput, now: DateTime<Utc>) -> Result<Draft, Error> {
    let fields = checked_fields(fields, &password, now)?;
    let (has_password, password) = match password {
        PasswordInput::Hashed(hash) => (true, PasswordWrite::Set(hash)),
        PasswordInput::Absent | PasswordInput::Invalid(_) => (false, PasswordWrite::Keep),
    };
    Ok(Draft {
        user: User {
            id,
            fields,
            email_verified: false,
            disabled: false,
            disabled_reason: String::new(),
            has_password,
            create_time: now,
            update_time: now,
            delete_time: None,
            purge_time: None,
            last_login_time: None,
            revision: 1,
        },
        password,
    })
}

/// AIP-154: a non-empty etag must equal the stored one.
pub fn check_etag(stored: &User, etag: &str) -> Result<(), Error> {
    if etag.is_empty() || etag == stored.etag() {
        Ok(())
    } else {
        Err(Error::EtagMismatch(format!(
            "etag {etag:?} does not match the current etag {:?} of user {}: it changed since it was read",
            stored.etag(),
            stored.id
        )))
    }
}

fn require_not_deleted(stored: &User, action: &str) -> Result<(), Error> {
    if stored.state() == State::Deleted {
        Err(Error::FailedPrecondition {
            reason: "USER_DELETED",
            subject: format!("users/{}", stored.id),
            message: format!("user {} is deleted; undelete it before you {action} it", stored.id),
        })
    } else {
        Ok(())
    }
}

/// Marks the user's address verified (VerifyEmail, once its code checked out or an administrator vouches).
pub fn verify_email(stored: &User) -> Result<Draft, Error> {
    require_not_deleted(stored, "verify the address of")?;
    if stored.email_verified {
        return Err(super::verification::already_verified(stored.id));
    }
    let mut user = stored.clone();
    user.email_verified = true;
    Ok(Draft {
        user,
        password: PasswordWrite::Keep,
    })
}

/// Merges a masked patch into the stored user.
pub fn update(stored: &User, patch: Patch, now: DateTime<Utc>) -> Result<Draft, Error> {
    check_etag(stored, &patch.etag)?;
    require_not_deleted(stored, "update")?;
    let mut fields = stored.fields.clone();
    patch.mask.apply(&mut fields, &patch.fields);
    let writes_password = patch
        .mask
        .writes_password(!matches!(patch.password, PasswordInput::Absent));
    let fields = checked_fields(
        fields,
        if writes_password {
            &patch.password
        } else {
            &PasswordInput::Absent
        },
        now,
    )?;
    let mut user = stored.clone();
    if fields.email.to_lowercase() != stored.fields.email.to_lowercase() {
        user.email_verified = false;
    }
    user.fields = fields;
    let password = match (&patch.password, writes_password) {
        (_, false) => PasswordWrite::Keep,
        (PasswordInput::Hashed(hash), true) => PasswordWrite::Set(hash.clone()),
        // Listed in an explicit mask but not sent: cleared, like any other listed empty field.
        (PasswordInput::Absent | PasswordInput::Invalid(_), true) => PasswordWrite::Clear,
    };
    Ok(Draft { user, password })
}

fn transition(stored: &User, etag: &str, change: impl FnOnce(&mut User)) -> Result<Draft, Error> {
    check_etag(stored, etag)?;
    let mut user = stored.clone();
    change(&mut user);
    Ok(Draft {
        user,
        password: PasswordWrite::Keep,
    })
}

/// Soft delete (AIP-164).
pub fn delete(stored: &User, etag: &str, now: DateTime<Utc>) -> Result<Draft, Error> {
    check_etag(stored, etag)?;
    require_not_deleted(stored, "delete")?;
    transition(stored, "", |u| {
        u.delete_time = Some(now);
        u.purge_time = Some(now + Duration::days(PURGE_AFTER_DAYS));
    })
}

/// Restores a soft-deleted user to the state it had (active or disabled).
pub fn undelete(stored: &User, etag: &str) -> Result<Draft, Error> {
    check_etag(stored, etag)?;
    if stored.state() != State::Deleted {
        return Err(Error::FailedPrecondition {
            reason: "USER_NOT_DELETED",
            subject: format!("users/{}", stored.id),
            message: format!("user {} is not deleted", stored.id),
        });
    }
    transition(stored, "", |u| {
        u.delete_time = None;
        u.purge_time = None;
    })
}

/// Disables a user; disabling a disabled user only updates the reason.
pub fn disable(stored: &User, reason: &str, etag: &str) -> Result<Draft, Error> {
    check_etag(stored, etag)?;
    require_not_deleted(stored, "disable")?;
    let mut violations = Vec::new();
    if reason.chars().count() > MAX_DISABLED_REASON_CHARS {
        violations.push(FieldViolation::new(
            "reason",
            format!("must be at most {MAX_DISABLED_REASON_CHARS} characters"),
        ));
    }
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        violations.push(FieldViolation::new("reason", "must not contain control characters"));
    }
    Error::check(violations)?;
    transition(stored, "", |u| {
        u.disabled = true;
        u.disabled_reason = reason.to_owned();
    })
}

/// Enables a user; enabling an active user changes nothing.
pub fn enable(stored: &User, etag: &str) -> Result<Draft, Error> {
    check_etag(stored, etag)?;
    require_not_deleted(stored, "enable")?;
    transition(stored, "", |u| {
        u.disabled = false;
        u.disabled_reason.clear();
    })
}

/// Parses a user id: a hyphenated UUID, any case, returned in its canonical lower-case form.
pub fn parse_id(raw: &str, field: &str) -> Result<Uuid, Error> {
    if raw.is_empty() {
        return Err(Error::invalid_field(field, "is required"));
    }
    match Uuid::try_parse(raw) {
        Ok(id) if raw.len() == 36 => Ok(id),
        _ => Err(Error::invalid_field(
            field,
            "must be a UUID in its hyphenated form (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::field_mask::UpdateMask;

    fn stored() -> User {
        let now = Utc::now();
        let fields = UserFields {
            email: "ann@example.com".into(),
            given_name: "Ann".into(),
            ..Default::default()
        };
        let mut u = create(Uuid::now_v7(), fields, PasswordInput::Absent, now)
            .expect("valid")
            .user;
        u.email_verified = true;
        u
    }

    fn patch(mask: &[&str], fields: UserFields) -> Patch {
        Patch {
            fields,
            password: PasswordInput::Absent,
            mask: UpdateMask::parse(mask, "update_mask").expect("valid mask"),
            etag: String::new(),
        }
    }

    #[test]
    fn email_change_resets_verification() {
        let s = stored();
        let out = update(
            &s,
            patch(
                &["email"],
                UserFields {
                    email: "bea@example.com".into(),
                    ..Default::default()
                },
            ),
            Utc::now(),
        )
        .expect("valid update");
        assert!(!out.user.email_verified);
        let same = update(
            &s,
            patch(
                &["given_name"],
                UserFields {
                    given_name: "Bo".into(),
                    ..Default::default()
                },
            ),
            Utc::now(),
        )
        .expect("valid");
        assert!(same.user.email_verified);
    }

    #[test]
    fn clearing_email_is_rejected() {
        let err = update(&stored(), patch(&["email"], UserFields::default()), Utc::now()).expect_err("required");
        match err {
            Error::InvalidArgument { violations, .. } => assert_eq!(violations[0].field, "user.email"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stale_etag_is_aborted() {
        let s = stored();
        let mut p = patch(&["given_name"], UserFields::default());
        p.etag = "stale".into();
        assert!(matches!(update(&s, p, Utc::now()), Err(Error::EtagMismatch(_))));
        let mut p = patch(&["given_name"], UserFields::default());
        p.etag = s.etag();
        assert!(update(&s, p, Utc::now()).is_ok());
    }

    #[test]
    fn deleted_users_accept_only_undelete() {
        let now = Utc::now();
        let deleted = delete(&stored(), "", now).expect("deletable").user;
        assert_eq!(deleted.state(), State::Deleted);
        assert_eq!(deleted.purge_time, Some(now + Duration::days(30)));
        assert!(matches!(
            delete(&deleted, "", now),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(
            disable(&deleted, "x", ""),
            Err(Error::FailedPrecondition { .. })
        ));
        assert!(matches!(enable(&deleted, ""), Err(Error::FailedPrecondition { .. })));
        assert!(matches!(
            update(&deleted, patch(&["given_name"], UserFields::default()), now),
            Err(Error::FailedPrecondition { .. })
        ));
        let back = undelete(&deleted, "").expect("undeletable").user;
        assert_eq!(back.state(), State::Active);
        assert!(matches!(undelete(&back, ""), Err(Error::FailedPrecondition { .. })));
    }

    #[test]
    fn undelete_restores_disabled_state() {
        let disabled = disable(&stored(), "fraud", "").expect("ok").user;
        let deleted = delete(&disabled, "", Utc::now()).expect("ok").user;
        let back = undelete(&deleted, "").expect("ok").user;
        assert_eq!(back.state(), State::Disabled);
        assert_eq!(back.disabled_reason, "fraud");
    }

    #[test]
    fn password_policy_violations_join_field_violations() {
        let p = Patch {
            fields: UserFields {
                phone_number: "123".into(),
                ..Default::default()
            },
            password: PasswordInput::Invalid(vec![FieldViolation::new("user.password", "too short")]),
            mask: UpdateMask::parse(&["phone_number", "password"], "update_mask").expect("valid"),
            etag: String::new(),
        };
        match update(&stored(), p, Utc::now()) {
            Err(Error::InvalidArgument { violations, .. }) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                assert_eq!(fields, vec!["user.phone_number", "user.password"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn ids_must_be_hyphenated_uuids() {
        assert!(parse_id("0190b2a4-7c1e-7d2a-9a4b-1c2d3e4f5a6b", "id").is_ok());
        assert!(parse_id("0190B2A4-7C1E-7D2A-9A4B-1C2D3E4F5A6B", "id").is_ok());
        for bad in [
            "",
            "42",
            "0190b2a47c1e7d2a9a4b1c2d3e4f5a6b",
            "{0190b2a4-7c1e-7d2a-9a4b-1c2d3e4f5a6b}",
        ] {
            assert!(parse_id(bad, "id").is_err(), "{bad}");
        }
    }
}
