//! Who may do what (API §6): scopes per RPC, self-service on one's own user, and the privileged fields only
//! administrators may write. Pure functions, checked before anything is read, so a refusal never depends on
//! whether a user exists.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::caller::Caller;
use super::error::Error;
use super::field_mask::UserField;
use super::sign_in;
use super::user::{User, UserFields};

/// Every RPC on every user, every field.
pub const SCOPE_ADMIN: &str = "users.admin";
/// Read every user.
pub const SCOPE_READ: &str = "users.read";
/// Check passwords (VerifyPassword) and nothing else: a login front end's scope.
pub const SCOPE_AUTHENTICATE: &str = "users.authenticate";

/// The RPCs, as permissions see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    CreateUser,
    GetUser,
    LookupUser,
    ListUsers,
    UpdateUser,
    DeleteUser,
    UndeleteUser,
    DisableUser,
    EnableUser,
    BatchUpdateUsers,
    ListUserRevisions,
    VerifyPassword,
    SendVerificationEmail,
    VerifyEmail,
    /// The target of a self-service watch is the caller's own user; readers watch every user (`None`).
    WatchUsers,
}

impl Caller {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    pub fn is_admin(&self) -> bool {
        self.has_scope(SCOPE_ADMIN)
    }

    /// Whether the caller is the user `id`: its token's `sub` is that id in the canonical spelling (lower-case,
    /// hyphenated). Other spellings of the same UUID (`urn:uuid:…`, `{…}`, upper-case, 32 hex digits) name another
    /// caller: the rate limit and attempt counters key on the `sub` as written, so accepting them as the user
    /// would give one user as many budgets as spellings.
    pub fn is_user(&self, id: Uuid) -> bool {
        let mut canonical = Uuid::encode_buffer();
        self.subject == *id.hyphenated().encode_lower(&mut canonical)
    }
}

fn denied(caller: &Caller, rpc: Rpc, target: Option<Uuid>) -> Error {
    let on = target.map(|id| format!(" on user {id}")).unwrap_or_default();
    Error::PermissionDenied {
        reason: "PERMISSION_DENIED",
        message: format!("caller {:?} may not call {rpc:?}{on}", caller.shown_subject()),
        fields: Vec::new(),
    }
}

/// Whether `caller` may call `rpc` on `target` (the user the call names; `None` for collection calls and
/// creation). Administrators may do everything; `users.read` may read everyone; any caller may read, update and
/// see the revisions of their own user.
pub fn authorize(caller: &Caller, rpc: Rpc, target: Option<Uuid>) -> Result<(), Error> {
    if caller.is_admin() {
        return Ok(());
    }
    let own = target.is_some_and(|id| caller.is_user(id));
    let reader = caller.has_scope(SCOPE_READ);
    let allowed = match rpc {
        Rpc::GetUser | Rpc::ListUserRevisions | Rpc::WatchUsers => reader || own,
        Rpc::LookupUser | Rpc::ListUsers => reader,
        Rpc::UpdateUser | Rpc::BatchUpdateUsers | Rpc::SendVerificationEmail | Rpc::VerifyEmail => own,
        Rpc::CreateUser | Rpc::DeleteUser | Rpc::UndeleteUser | Rpc::DisableUser | Rpc::EnableUser => false,
        Rpc::VerifyPassword => caller.has_scope(SCOPE_AUTHENTICATE),
    };
    if allowed {
        Ok(())
    } else {
        Err(denied(caller, rpc, target))
    }
}

/// Whether `caller` may call `rpc` only because the user is its own (no scope grants it the call), so the
/// user's state decides too (see [`check_self_service_access`]).
pub fn is_self_service(caller: &Caller, rpc: Rpc) -> bool {
    if caller.is_admin() {
        return false;
    }
    let reads = matches!(rpc, Rpc::GetUser | Rpc::ListUserRevisions | Rpc::WatchUsers);
    !(reads && caller.has_scope(SCOPE_READ))
}

/// Refuses a self-service call on a user that is disabled, deleted or outside its validity window at `now`: a
/// token that outlives its user's access grants nothing (API §6). Callers a scope authorizes pass.
pub fn check_self_service_access(caller: &Caller, rpc: Rpc, user: &User, now: DateTime<Utc>) -> Result<(), Error> {
    if !is_self_service(caller, rpc) {
        return Ok(());
    }
    match sign_in::access_refusal(user, now) {
        None => Ok(()),
        Some((reason, why)) => Err(Error::PermissionDenied {
            reason,
            message: format!("{why}: its own token grants no access"),
            fields: Vec::new(),
        }),
    }
}

fn privileged_denied(fields: Vec<String>) -> Error {
    Error::PermissionDenied {
        reason: "PRIVILEGED_FIELD",
        message: format!(
            "only administrators may change {}; nothing was changed",
            fields.join(", ")
        ),
        fields,
    }
}

/// Refuses a non-administrator's write that names privileged fields (explicit or inferred masks).
pub fn check_writable(caller: &Caller, fields: &[UserField]) -> Result<(), Error> {
    if caller.is_admin() {
        return Ok(());
    }
    let named: Vec<String> = fields
        .iter()
        .filter(|f| f.is_privileged())
        .map(|f| format!("user.{}", f.name()))
        .collect();
    if named.is_empty() {
        Ok(())
    } else {
        Err(privileged_denied(named))
    }
}

/// Refuses a non-administrator's write whose result differs from `before` in a privileged field (a full
/// replacement, or a creation through `allow_missing` where `before` is empty).
pub fn check_privileged_unchanged(caller: &Caller, before: &UserFields, after: &UserFields) -> Result<(), Error> {
    if caller.is_admin() {
        return Ok(());
    }
    let changed: Vec<String> = UserField::ALL
        .into_iter()
        .filter(|&f| f.is_privileged() && !before.same(after, f))
        .map(|f| format!("user.{}", f.name()))
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(privileged_denied(changed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str, scopes: &[&str]) -> Caller {
        Caller {
            subject: sub.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    const ALL: [Rpc; 15] = [
        Rpc::CreateUser,
        Rpc::GetUser,
        Rpc::LookupUser,
        Rpc::ListUsers,
        Rpc::UpdateUser,
        Rpc::DeleteUser,
        Rpc::UndeleteUser,
        Rpc::DisableUser,
        Rpc::EnableUser,
        Rpc::BatchUpdateUsers,
        Rpc::ListUserRevisions,
        Rpc::VerifyPassword,
        Rpc::SendVerificationEmail,
        Rpc::VerifyEmail,
        Rpc::WatchUsers,
    ];

    #[test]
    fn the_scope_table_of_the_contract() {
        let me = Uuid::now_v7();
        let other = Uuid::now_v7();
        let admin = caller("ops", &[SCOPE_ADMIN]);
        let reader = caller("auditor", &[SCOPE_READ]);
        let myself = caller(&me.to_string(), &[]);
        let front_end = caller("login", &[SCOPE_AUTHENTICATE]);
        for rpc in ALL {
            assert_eq!(
                authorize(&front_end, rpc, Some(other)).is_ok(),
                rpc == Rpc::VerifyPassword,
                "authenticate {rpc:?}"
            );
            let own = matches!(
                rpc,
                Rpc::GetUser
                    | Rpc::UpdateUser
                    | Rpc::ListUserRevisions
                    | Rpc::BatchUpdateUsers
                    | Rpc::SendVerificationEmail
                    | Rpc::VerifyEmail
                    | Rpc::WatchUsers
            );
            // A login front end acting as a user: what the user may do on itself, and VerifyPassword.
            assert_eq!(
                authorize(&caller(&other.to_string(), &[SCOPE_AUTHENTICATE]), rpc, Some(other)).is_ok(),
                own || rpc == Rpc::VerifyPassword,
                "authenticate on its own user {rpc:?}"
            );
            assert!(authorize(&admin, rpc, Some(other)).is_ok(), "{rpc:?}");
            let reads = matches!(
                rpc,
                Rpc::GetUser | Rpc::LookupUser | Rpc::ListUsers | Rpc::ListUserRevisions | Rpc::WatchUsers
            );
            assert_eq!(authorize(&reader, rpc, Some(other)).is_ok(), reads, "reader {rpc:?}");
            assert_eq!(authorize(&myself, rpc, Some(me)).is_ok(), own, "self {rpc:?}");
            assert!(
                authorize(&myself, rpc, Some(other)).is_err(),
                "self on another user {rpc:?}"
            );
        }
    }

    #[test]
    fn only_the_canonical_spelling_of_an_id_is_that_user() {
        let id = Uuid::now_v7();
        assert!(caller(&id.to_string(), &[]).is_user(id));
        for other in [
            format!("urn:uuid:{id}"),
            format!("{{{id}}}"),
            id.to_string().to_uppercase(),
            id.simple().to_string(),
            format!(" {id}"),
        ] {
            let spelled = caller(&other, &[]);
            assert!(!spelled.is_user(id), "{other}");
            assert!(authorize(&spelled, Rpc::GetUser, Some(id)).is_err(), "{other}");
        }
    }

    #[test]
    fn refusals_show_at_most_200_characters_of_the_subject() {
        let long = caller(&"s".repeat(100_000), &[]);
        let Error::PermissionDenied { message, .. } = authorize(&long, Rpc::ListUsers, None).expect_err("denied")
        else {
            panic!("not a permission error")
        };
        assert!(
            message.contains(&"s".repeat(200)) && !message.contains(&"s".repeat(201)),
            "{}",
            message.len()
        );
    }

    #[test]
    fn privileged_fields_are_for_admins_only() {
        let me = caller(&Uuid::now_v7().to_string(), &[]);
        let err =
            check_writable(&me, &[UserField::GivenName, UserField::Roles, UserField::ExpireTime]).expect_err("denied");
        match err {
            Error::PermissionDenied { fields, .. } => assert_eq!(fields, vec!["user.roles", "user.expire_time"]),
            other => panic!("{other:?}"),
        }
        assert!(check_writable(&me, &[UserField::GivenName, UserField::Labels]).is_ok());
        assert!(check_writable(&caller("ops", &[SCOPE_ADMIN]), &[UserField::Roles]).is_ok());
        let before = UserFields {
            roles: vec!["admin".into()],
            ..Default::default()
        };
        let after = UserFields::default();
        assert!(
            check_privileged_unchanged(&me, &before, &after).is_err(),
            "a reset of roles is a change"
        );
        assert!(check_privileged_unchanged(&me, &before, &before.clone()).is_ok());
    }
}
