//! The `User` resource as the domain sees it: plain Rust values, no wire or storage types.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Lifecycle state. `Deleted` wins over `Disabled`: a disabled user that is deleted and later undeleted is
/// disabled again, which is why the store keeps `disabled` and `delete_time` apart and derives the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Active,
    Disabled,
    Deleted,
}

impl State {
    /// The enum value name used in filters and revision records (`ACTIVE`, ...).
    pub fn name(self) -> &'static str {
        match self {
            State::Active => "ACTIVE",
            State::Disabled => "DISABLED",
            State::Deleted => "DELETED",
        }
    }

    pub fn from_name(name: &str) -> Option<State> {
        match name {
            "ACTIVE" => Some(State::Active),
            "DISABLED" => Some(State::Disabled),
            "DELETED" => Some(State::Deleted),
            _ => None,
        }
    }
}

/// One organization the user belongs to, with the role and admin flag they hold there.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub organization_id: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub admin: bool,
}

pub use super::field_table::UserFields;

/// A stored user: the writable fields plus everything the service maintains.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub fields: UserFields,
    pub email_verified: bool,
    pub disabled: bool,
    pub disabled_reason: String,
    pub has_password: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub delete_time: Option<DateTime<Utc>>,
    pub purge_time: Option<DateTime<Utc>>,
    /// Set by a successful sign-in check; not part of the etag, since it is no edit.
    pub last_login_time: Option<DateTime<Utc>>,
    pub revision: i64,
}

impl User {
    pub fn state(&self) -> State {
        if self.delete_time.is_some() {
            State::Deleted
        } else if self.disabled {
            State::Disabled
        } else {
            State::Active
        }
    }

    /// AIP-154 etag: opaque, and different for every stored version. The update time is part of it so that a
    /// purged and re-created id never repeats an etag a client may still hold.
    pub fn etag(&self) -> String {
        format!("{:x}-{:x}", self.revision, self.update_time.timestamp_micros())
    }
}

/// Truncates a time to the microsecond precision both databases store, so what a call returns is exactly what
/// a later read returns.
pub fn to_stored_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
