//! Writes as commands: what a caller asks for as plain data, the rules an update must pass before anything is
//! read, and `decide`, the one pure function that turns a command and the stored user into what is written.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::caller::Caller;
use super::change::{self, Draft, PasswordInput, PasswordWrite, Patch};
use super::error::{Conflict, Error};
use super::field_mask::{UpdateMask, UserField};
use super::permission;
use super::revision::{self, Diff};
use super::user::{User, UserFields};

/// Most updates one BatchUpdateUsers may carry.
pub const MAX_BATCH_SIZE: usize = 1000;

/// One write a caller asks for. Everything slow or stateful (hashing, the current-password check) has already
/// happened: its results travel as plain data (`PasswordInput`, `observed_revision`).
#[derive(Debug, Clone)]
pub enum Command {
    Create(Create),
    Update(Update),
    Delete {
        id: Uuid,
        etag: String,
    },
    Undelete {
        id: Uuid,
        etag: String,
    },
    Disable {
        id: Uuid,
        reason: String,
        etag: String,
    },
    Enable {
        id: Uuid,
        etag: String,
    },
    /// VerifyEmail: `email_verified` becomes true. The code (if any) was checked by the store in the same
    /// transaction; the variant reaches the store, so the revision it writes is known as a verification.
    VerifyEmail {
        id: Uuid,
    },
}

/// CreateUser: a new user with the given id, refused if the id is taken.
#[derive(Debug, Clone)]
pub struct Create {
    pub id: Uuid,
    pub fields: UserFields,
    pub password: PasswordInput,
    /// Queue a verification mail to the new address in the same transaction.
    pub send_verification_email: bool,
}

/// UpdateUser (or one item of a batch): a masked patch of user `id`.
#[derive(Debug, Clone)]
pub struct Update {
    pub id: Uuid,
    pub patch: Patch,
    /// Create the user when it does not exist (AIP-134).
    pub allow_missing: bool,
    /// The revision a self-service caller's current password was checked at: the write is refused if the user
    /// changed since, so a password confirmed for one version cannot change another.
    pub observed_revision: Option<i64>,
    /// Queue a verification mail in the same transaction when the update sets or changes the address.
    pub send_verification_email: bool,
}

/// What a decided command writes. The revision, the times and the password state are final: the store
/// persists them as they are.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Nothing would change: nothing is written and the stored user is the answer (no new revision).
    Unchanged(User),
    /// A new user, its password hash (if any) and its first revision record.
    Created {
        user: User,
        password_hash: Option<String>,
        diff: Diff,
    },
    /// A changed user, what happens to its password hash, and the revision record of the change.
    Changed {
        user: User,
        password: PasswordWrite,
        diff: Diff,
    },
}

impl Outcome {
    /// The paths the outcome's revision records; none when nothing changes.
    pub fn changed_paths(&self) -> &[String] {
        match self {
            Outcome::Unchanged(_) => &[],
            Outcome::Created { diff, .. } | Outcome::Changed { diff, .. } => &diff.paths,
        }
    }

    /// The user as it is once the outcome is stored.
    pub fn user(&self) -> &User {
        match self {
            Outcome::Unchanged(user) | Outcome::Created { user, .. } | Outcome::Changed { user, .. } => user,
        }
    }

    /// Whether the outcome gives the user an address it did not have: a creation, or a change of `email`.
    pub fn sets_email(&self) -> bool {
        match self {
            Outcome::Unchanged(_) => false,
            Outcome::Created { .. } => true,
            Outcome::Changed { diff, .. } => diff.paths.iter().any(|p| p == "email"),
        }
    }
}

impl Command {
    /// The user the command writes.
    pub fn id(&self) -> Uuid {
        match self {
            Command::Create(Create { id, .. })
            | Command::Update(Update { id, .. })
            | Command::Delete { id, .. }
            | Command::Undelete { id, .. }
            | Command::Disable { id, .. }
            | Command::Enable { id, .. }
            | Command::VerifyEmail { id } => *id,
        }
    }

    /// Whether the command asks for a verification mail when it sets an address.
    pub fn sends_verification_email(&self) -> bool {
        match self {
            Command::Create(c) => c.send_verification_email,
            Command::Update(u) => u.send_verification_email,
            _ => false,
        }
    }

    /// Decides what the command makes of `stored` (the user as the transaction sees it, locked), on behalf of
    /// `caller`, at `now` (the transaction's time, at stored precision).
    pub fn decide(self, stored: Option<&User>, caller: &Caller, now: DateTime<Utc>) -> Result<Outcome, Error> {
        let id = self.id();
        let draft = match (self, stored) {
            (Command::Create(_), Some(_)) => {
                return Err(Error::AlreadyExists {
                    conflict: Conflict::UserId,
                    field: "user_id".into(),
                    message: format!("a user with id {id} already exists"),
                });
            }
            (Command::Create(c), None) => change::create(c.id, c.fields, c.password, now)?,
            (Command::Update(u), Some(stored)) => {
                // Decided on the locked row, so a user disabled a moment ago is refused too.
                permission::check_self_service_access(caller, permission::Rpc::UpdateUser, stored, now)?;
                if u.observed_revision.is_some_and(|seen| seen != stored.revision) {
                    return Err(Error::EtagMismatch(format!(
                        "user {id} changed while its password was checked; retry"
                    )));
                }
                // A full replacement names every field, privileged ones included; it may leave them as they are.
                let full = u.patch.mask == UpdateMask::Full;
                let draft = change::update(stored, u.patch, now)?;
                if full {
                    permission::check_privileged_unchanged(caller, &stored.fields, &draft.user.fields)?;
                }
                draft
            }
            (Command::Update(u), None) if u.allow_missing => {
                let draft = change::create(id, u.patch.fields, u.patch.password, now)?;
                permission::check_privileged_unchanged(caller, &UserFields::default(), &draft.user.fields)?;
                draft
            }
            (_, None) => return Err(Error::not_found(id)),
            (Command::Delete { etag, .. }, Some(stored)) => change::delete(stored, &etag, now)?,
            (Command::Undelete { etag, .. }, Some(stored)) => change::undelete(stored, &etag)?,
            (Command::Disable { reason, etag, .. }, Some(stored)) => change::disable(stored, &reason, &etag)?,
            (Command::Enable { etag, .. }, Some(stored)) => change::enable(stored, &etag)?,
            (Command::VerifyEmail { .. }, Some(stored)) => {
                permission::check_self_service_access(caller, permission::Rpc::VerifyEmail, stored, now)?;
                change::verify_email(stored)?
            }
        };
        Ok(settle(stored, draft, now))
    }
}

/// Turns a rule's draft into what is stored: a creation as drafted; a change only if it changes something,
/// with the password state it leaves, the next revision and the update time.
fn settle(stored: Option<&User>, draft: Draft, now: DateTime<Utc>) -> Outcome {
    let Draft { mut user, password } = draft;
    let Some(old) = stored else {
        let password_hash = match password {
            PasswordWrite::Set(hash) => Some(hash),
            PasswordWrite::Keep | PasswordWrite::Clear => None,
        };
        // `change::create` made the user complete: revision 1, both times `now`, `has_password` set.
        let diff = revision::diff(None, &user, user.has_password);
        return Outcome::Created {
            user,
            password_hash,
            diff,
        };
    };
    user.has_password = match &password {
        PasswordWrite::Keep => old.has_password,
        PasswordWrite::Set(_) => true,
        PasswordWrite::Clear => false,
    };
    let diff = revision::diff(Some(old), &user, password != PasswordWrite::Keep);
    if diff.is_empty() {
        return Outcome::Unchanged(old.clone());
    }
    user.revision = old.revision + 1;
    user.update_time = now;
    Outcome::Changed { user, password, diff }
}

/// What an update needs before anything is read, decided from the request alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePlan {
    /// The caller must confirm its current password (a self-service password change).
    pub confirm_password: bool,
    /// The write may fail on an e-mail address or username that is taken.
    pub may_conflict: bool,
}

/// The rules of an update that need no stored data, checked before the slow work (the current-password check,
/// hashing) so a refusal costs nothing and never depends on whether the user exists. Field paths are relative
/// to the update request; a batch prefixes them.
pub fn plan_update(
    caller: &Caller,
    mask: &UpdateMask,
    password_sent: bool,
    allow_missing: bool,
    in_batch: bool,
    current_password_sent: bool,
) -> Result<UpdatePlan, Error> {
    let fields = mask.fields(password_sent);
    // A full replacement is checked against the stored user instead (see `Command::decide`): it may keep the
    // privileged values it repeats.
    if *mask != UpdateMask::Full {
        permission::check_writable(caller, &fields)?;
    }
    let confirm_password = mask.writes_password(password_sent) && !caller.is_admin();
    if confirm_password {
        if in_batch {
            return Err(Error::PermissionDenied {
                reason: "PASSWORD_CHANGE_IN_BATCH",
                message: "change your own password with UpdateUser and current_password".into(),
                fields: vec!["user.password".into()],
            });
        }
        if !current_password_sent {
            return Err(Error::invalid_field(
                "current_password",
                "is required to change your own password",
            ));
        }
    }
    let may_conflict = allow_missing
        || fields
            .iter()
            .any(|f| matches!(f, UserField::Email | UserField::Username));
    Ok(UpdatePlan {
        confirm_password,
        may_conflict,
    })
}

/// A batch carries at most [`MAX_BATCH_SIZE`] updates.
pub fn check_batch_size(len: usize) -> Result<(), Error> {
    if len > MAX_BATCH_SIZE {
        return Err(Error::invalid_field(
            "requests",
            format!("has {len} updates; at most {MAX_BATCH_SIZE} are allowed"),
        ));
    }
    Ok(())
}

/// A batch item may not be validate-only: a batch is applied whole or not at all. The path is relative to the
/// item.
pub fn check_batch_item(validate_only: bool) -> Result<(), Error> {
    if validate_only {
        return Err(Error::invalid_field(
            "validate_only",
            "cannot be set on a batch item: a batch is applied whole or not at all",
        ));
    }
    Ok(())
}

/// A command of a write that was refused: its index in the write, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub index: usize,
    pub error: Error,
}

/// Why a write was not made.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// Commands were refused: every refused command when all were refused as INVALID_ARGUMENT (a batch reports
    /// all its violations at once), otherwise the one command whose refusal stopped the write.
    Refused(Vec<Refusal>),
    /// The write failed as a whole (the database, not a command).
    Failed(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Failed(e)
    }
}

impl WriteError {
    /// The answer to the caller. `locate` places a refused command's error in the request (a batch prefixes its
    /// field paths with the item's path); several refusals are joined into one INVALID_ARGUMENT.
    pub fn into_error(self, locate: impl Fn(usize, Error) -> Error) -> Error {
        match self {
            WriteError::Failed(e) => e,
            WriteError::Refused(refusals) => {
                let mut errors: Vec<Error> = refusals.into_iter().map(|r| locate(r.index, r.error)).collect();
                if errors.iter().all(|e| matches!(e, Error::InvalidArgument { .. })) {
                    // One answer listing every violation, its message summarizing the located paths.
                    Error::combine_invalid(errors)
                        .unwrap_or_else(|| Error::internal("a write was refused without a reason"))
                } else {
                    errors
                        .pop()
                        .unwrap_or_else(|| Error::internal("a write was refused without a reason"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::permission::SCOPE_ADMIN;
    use crate::domain::user::State;
    use crate::domain::user::to_stored_precision;

    fn now() -> DateTime<Utc> {
        to_stored_precision(Utc::now())
    }

    fn admin() -> Caller {
        Caller {
            subject: "ops".into(),
            scopes: vec![SCOPE_ADMIN.into()],
        }
    }

    fn myself(id: Uuid) -> Caller {
        Caller {
            subject: id.to_string(),
            scopes: Vec::new(),
        }
    }

    fn fields(email: &str) -> UserFields {
        UserFields {
            email: email.into(),
            given_name: "Ann".into(),
            ..Default::default()
        }
    }

    /// A stored user at revision 3 with a password, as the store would read it.
    fn stored() -> User {
        let id = Uuid::now_v7();
        let created = Command::Create(Create {
            id,
            fields: fields("ann@example.com"),
            password: PasswordInput::Hashed("hash".into()),
            send_verification_email: false,
        })
        .decide(None, &admin(), now() - Duration::hours(1))
        .expect("valid");
        let mut user = created.user().clone();
        user.revision = 3;
        user
    }

    fn update(id: Uuid, paths: &[&str], fields: UserFields) -> Update {
        Update {
            id,
            patch: Patch {
                fields,
                password: PasswordInput::Absent,
                mask: UpdateMask::parse(paths, "update_mask").expect("valid mask"),
                etag: String::new(),
            },
            allow_missing: false,
            observed_revision: None,
            send_verification_email: false,
        }
    }

    #[test]
    fn create_makes_revision_one_or_refuses_a_taken_id() {
        let at = now();
        let id = Uuid::now_v7();
        let create = Command::Create(Create {
            id,
            fields: fields("ann@example.com"),
            password: PasswordInput::Hashed("hash".into()),
            send_verification_email: false,
        });
        let Outcome::Created {
            user,
            password_hash,
            diff,
        } = create.clone().decide(None, &admin(), at).expect("valid")
        else {
            panic!("not a creation")
        };
        assert_eq!((user.revision, user.create_time, user.update_time), (1, at, at));
        assert!(user.has_password);
        assert_eq!(password_hash.as_deref(), Some("hash"));
        assert!(diff.paths.contains(&"email".to_owned()) && diff.paths.contains(&"password".to_owned()));
        match create.decide(Some(&user), &admin(), at) {
            Err(Error::AlreadyExists { conflict, field, .. }) => {
                assert_eq!((conflict, field.as_str()), (Conflict::UserId, "user_id"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_real_change_takes_the_next_revision_and_the_time() {
        let s = stored();
        let at = now();
        let out = Command::Update(update(
            s.id,
            &["given_name"],
            UserFields {
                given_name: "Bo".into(),
                ..Default::default()
            },
        ))
        .decide(Some(&s), &admin(), at)
        .expect("valid");
        let Outcome::Changed { user, password, diff } = out else {
            panic!("not a change")
        };
        assert_eq!(
            (user.revision, user.update_time, user.create_time),
            (4, at, s.create_time)
        );
        assert_eq!(password, PasswordWrite::Keep);
        assert!(user.has_password, "a kept password stays");
        assert_eq!(diff.paths, vec!["given_name"]);
    }

    #[test]
    fn a_change_that_changes_nothing_writes_nothing() {
        let s = stored();
        let out = Command::Update(update(s.id, &["given_name"], fields("x@example.com")))
            .decide(Some(&s), &admin(), now())
            .expect("valid");
        assert!(matches!(&out, Outcome::Unchanged(u) if *u == s), "{out:?}");
        let out = Command::Enable {
            id: s.id,
            etag: s.etag(),
        }
        .decide(Some(&s), &admin(), now())
        .expect("enabling an active user");
        assert!(matches!(out, Outcome::Unchanged(_)));
    }

    #[test]
    fn clearing_the_password_leaves_none() {
        let s = stored();
        let out = Command::Update(update(s.id, &["password"], UserFields::default()))
            .decide(Some(&s), &admin(), now())
            .expect("valid");
        let Outcome::Changed { user, password, diff } = out else {
            panic!("not a change")
        };
        assert_eq!(password, PasswordWrite::Clear);
        assert!(!user.has_password);
        assert_eq!(diff.paths, vec!["password"]);
    }

    #[test]
    fn a_user_changed_since_its_password_was_checked_is_refused() {
        let s = stored();
        let mut u = update(
            s.id,
            &["given_name"],
            UserFields {
                given_name: "Bo".into(),
                ..Default::default()
            },
        );
        u.observed_revision = Some(s.revision - 1);
        let err = Command::Update(u.clone())
            .decide(Some(&s), &myself(s.id), now())
            .expect_err("changed in between");
        assert!(matches!(err, Error::EtagMismatch(_)), "{err:?}");
        u.observed_revision = Some(s.revision);
        assert!(Command::Update(u).decide(Some(&s), &myself(s.id), now()).is_ok());
    }

    #[test]
    fn a_missing_user_is_not_found_unless_allow_missing_creates_it() {
        let id = Uuid::now_v7();
        let mut u = update(id, &["email", "given_name"], fields("new@example.com"));
        assert!(matches!(
            Command::Update(u.clone()).decide(None, &myself(id), now()),
            Err(Error::NotFound(_))
        ));
        u.allow_missing = true;
        let out = Command::Update(u.clone())
            .decide(None, &myself(id), now())
            .expect("created");
        assert!(matches!(&out, Outcome::Created { user, .. } if user.id == id && user.revision == 1));
        // A self-service creation may not give itself roles, even through a full replacement.
        u.patch.mask = UpdateMask::Full;
        u.patch.fields.roles = vec!["admin".into()];
        match Command::Update(u.clone()).decide(None, &myself(id), now()) {
            Err(Error::PermissionDenied { fields, .. }) => assert_eq!(fields, vec!["user.roles"]),
            other => panic!("{other:?}"),
        }
        assert!(Command::Update(u).decide(None, &admin(), now()).is_ok());
    }

    #[test]
    fn a_full_replacement_may_keep_but_not_change_privileged_fields() {
        let mut s = stored();
        s.fields.roles = vec!["admin".into()];
        let me = myself(s.id);
        let mut keep = update(s.id, &["*"], s.fields.clone());
        keep.patch.fields.given_name = "Bo".into();
        assert!(Command::Update(keep.clone()).decide(Some(&s), &me, now()).is_ok());
        keep.patch.fields.roles.clear();
        match Command::Update(keep.clone()).decide(Some(&s), &me, now()) {
            Err(Error::PermissionDenied { fields, .. }) => assert_eq!(fields, vec!["user.roles"]),
            other => panic!("{other:?}"),
        }
        assert!(Command::Update(keep).decide(Some(&s), &admin(), now()).is_ok());
    }

    #[test]
    fn lifecycle_commands_follow_their_transitions() {
        let s = stored();
        let at = now();
        let deleted = Command::Delete {
            id: s.id,
            etag: s.etag(),
        }
        .decide(Some(&s), &admin(), at)
        .expect("deletable");
        let deleted = deleted.user().clone();
        assert_eq!((deleted.state(), deleted.revision), (State::Deleted, 4));
        assert_eq!(deleted.purge_time, Some(at + Duration::days(change::PURGE_AFTER_DAYS)));
        let stale = Command::Undelete {
            id: s.id,
            etag: s.etag(),
        };
        assert!(matches!(
            stale.decide(Some(&deleted), &admin(), at),
            Err(Error::EtagMismatch(_))
        ));
        let back = Command::Undelete {
            id: s.id,
            etag: String::new(),
        }
        .decide(Some(&deleted), &admin(), at)
        .expect("undeletable");
        assert_eq!((back.user().state(), back.user().revision), (State::Active, 5));
        let disabled = Command::Disable {
            id: s.id,
            reason: "fraud".into(),
            etag: String::new(),
        }
        .decide(Some(&s), &admin(), at)
        .expect("disable");
        assert_eq!(disabled.user().state(), State::Disabled);
        assert_eq!(disabled.user().disabled_reason, "fraud");
        let bad = Command::Disable {
            id: s.id,
            reason: "x".repeat(change::MAX_DISABLED_REASON_CHARS + 1),
            etag: String::new(),
        };
        assert!(matches!(
            bad.decide(Some(&s), &admin(), at),
            Err(Error::InvalidArgument { .. })
        ));
        let enabled = Command::Enable {
            id: s.id,
            etag: String::new(),
        }
        .decide(Some(disabled.user()), &admin(), at)
        .expect("enable");
        assert_eq!(enabled.user().state(), State::Active);
        for missing in [
            Command::Delete {
                id: s.id,
                etag: String::new(),
            },
            Command::Undelete {
                id: s.id,
                etag: String::new(),
            },
            Command::Enable {
                id: s.id,
                etag: String::new(),
            },
        ] {
            assert!(matches!(missing.decide(None, &admin(), at), Err(Error::NotFound(_))));
        }
    }

    #[test]
    fn an_update_plan_refuses_what_needs_no_stored_user() {
        let id = Uuid::now_v7();
        let me = myself(id);
        let mask = |paths: &[&str]| UpdateMask::parse(paths, "update_mask").expect("valid");
        match plan_update(&me, &mask(&["roles"]), false, false, false, false) {
            Err(Error::PermissionDenied { reason, fields, .. }) => {
                assert_eq!((reason, fields), ("PRIVILEGED_FIELD", vec!["user.roles".to_owned()]));
            }
            other => panic!("{other:?}"),
        }
        // The full mask is checked against the stored user instead.
        assert!(plan_update(&me, &UpdateMask::Full, false, false, false, false).is_ok());
        let password = mask(&["password"]);
        match plan_update(&me, &password, true, false, true, true) {
            Err(Error::PermissionDenied { reason, fields, .. }) => {
                assert_eq!(
                    (reason, fields),
                    ("PASSWORD_CHANGE_IN_BATCH", vec!["user.password".to_owned()])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_update(&me, &password, true, false, false, false),
            Err(Error::InvalidArgument { .. })
        ));
        let plan = plan_update(&me, &password, true, false, false, true).expect("allowed");
        assert!(plan.confirm_password && !plan.may_conflict);
        let plan = plan_update(&admin(), &password, true, false, true, false).expect("admins need no current password");
        assert!(!plan.confirm_password);
        assert!(
            plan_update(&me, &mask(&["email"]), false, false, false, false)
                .expect("ok")
                .may_conflict
        );
        assert!(
            plan_update(&me, &mask(&["given_name"]), false, true, false, false)
                .expect("ok")
                .may_conflict
        );
        assert!(
            !plan_update(&me, &mask(&["given_name"]), false, false, false, false)
                .expect("ok")
                .may_conflict
        );
    }

    #[test]
    fn batch_rules() {
        assert!(check_batch_size(MAX_BATCH_SIZE).is_ok());
        assert!(check_batch_size(MAX_BATCH_SIZE + 1).is_err());
        assert!(check_batch_item(false).is_ok());
        match check_batch_item(true) {
            Err(Error::InvalidArgument { violations, .. }) => assert_eq!(violations[0].field, "validate_only"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_are_located_then_joined() {
        let locate = |i: usize, e: Error| e.with_field_prefix(&format!("requests[{i}]"));
        let refused = WriteError::Refused(vec![
            Refusal {
                index: 1,
                error: Error::invalid_field("user.email", "bad"),
            },
            Refusal {
                index: 4,
                error: Error::invalid_field("user.phone_number", "bad"),
            },
        ]);
        match refused.into_error(locate) {
            Error::InvalidArgument {
                message, violations, ..
            } => {
                let paths: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                assert_eq!(paths, vec!["requests[1].user.email", "requests[4].user.phone_number"]);
                assert_eq!(message, "requests[1].user.email: bad (and 1 more violation)");
            }
            other => panic!("{other:?}"),
        }
        let one_invalid = WriteError::Refused(vec![Refusal {
            index: 3,
            error: Error::invalid_field("user.email", "bad"),
        }]);
        match one_invalid.into_error(locate) {
            Error::InvalidArgument { message, .. } => assert_eq!(message, "requests[3].user.email: bad"),
            other => panic!("{other:?}"),
        }
        let one = WriteError::Refused(vec![Refusal {
            index: 2,
            error: Error::not_found("u"),
        }]);
        assert_eq!(
            one.into_error(locate),
            Error::NotFound("requests[2]: user u not found".into())
        );
        let failed = WriteError::Failed(Error::Unavailable("down".into()));
        assert_eq!(failed.into_error(locate), Error::Unavailable("down".into()));
    }
}
