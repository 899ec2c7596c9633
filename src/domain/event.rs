//! The change feed as the domain sees it: event types, the cursor (its opaque encoding is client input) and
//! which events a watcher may see.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::caller::Caller;
use super::command::Command;
use super::error::Error;
use super::filter::Filter;
use super::user::{State, User};

/// What a change did to a user. Stored by name in the event row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    Undeleted,
    Disabled,
    Enabled,
    EmailVerified,
    Purged,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Updated,
        EventKind::Deleted,
        EventKind::Undeleted,
        EventKind::Disabled,
        EventKind::Enabled,
        EventKind::EmailVerified,
        EventKind::Purged,
    ];

    /// The proto enum value name, which is also how the store keeps it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "CREATED",
            EventKind::Updated => "UPDATED",
            EventKind::Deleted => "DELETED",
            EventKind::Undeleted => "UNDELETED",
            EventKind::Disabled => "DISABLED",
            EventKind::Enabled => "ENABLED",
            EventKind::EmailVerified => "EMAIL_VERIFIED",
            EventKind::Purged => "PURGED",
        }
    }

    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl Command {
    /// The event a command's change is recorded as. This is the one place a command maps to an event type; an
    /// update that creates its user (`allow_missing`) is recorded as `Created` by the store instead.
    pub fn event_kind(&self) -> EventKind {
        match self {
            Command::Create(_) => EventKind::Created,
            Command::Update(_) => EventKind::Updated,
            Command::Delete { .. } => EventKind::Deleted,
            Command::Undelete { .. } => EventKind::Undeleted,
            Command::Disable { .. } => EventKind::Disabled,
            Command::Enable { .. } => EventKind::Enabled,
            Command::VerifyEmail { .. } => EventKind::EmailVerified,
        }
    }
}

/// Where an event sits in the feed: events are delivered in `(txid, seq)` order. On SQLite `txid` is always 0
/// and `seq` is commit order; on PostgreSQL `txid` is the writing transaction's id (see `store::feed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub txid: i64,
    pub seq: i64,
}

/// A point to resume from: everything at or before `position` has been delivered. `time` is when that was so
/// (the event's commit time, or the read of a bookmark), which tells whether the events after it are still kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedCursor {
    pub position: Position,
    pub time: DateTime<Utc>,
}

/// The first byte of an encoded cursor: a later layout gets a new version, and old cursors are then refused as
/// malformed rather than misread.
const CURSOR_VERSION: u8 = 1;
const CURSOR_BYTES: usize = 1 + 3 * 8;

impl FeedCursor {
    /// Opaque and URL-safe (base64url without padding of a version byte and three big-endian integers), so it
    /// can travel in a query string and an SSE `id:` line unchanged.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(CURSOR_BYTES);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.position.txid.to_be_bytes());
        bytes.extend_from_slice(&self.position.seq.to_be_bytes());
        bytes.extend_from_slice(&self.time.timestamp_micros().to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor a stream delivered; anything else is INVALID_ARGUMENT on `field`.
    pub fn decode(raw: &str, field: &str) -> Result<FeedCursor, Error> {
        let invalid = || Error::invalid_field(field, "is not a cursor a WatchUsers stream delivered");
        // A cursor is 34 characters; refusing longer input first keeps the decoder's work bounded.
        if raw.len() > 64 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw.as_bytes()).map_err(|_| invalid())?;
        let [version, rest @ ..] = bytes.as_slice() else {
            return Err(invalid());
        };
        if *version != CURSOR_VERSION || rest.len() != CURSOR_BYTES - 1 {
            return Err(invalid());
        }
        let int = |i: usize| -> Result<i64, Error> {
            let chunk: [u8; 8] = rest[i * 8..i * 8 + 8].try_into().map_err(|_| invalid())?;
            Ok(i64::from_be_bytes(chunk))
        };
        let position = Position {
            txid: int(0)?,
            seq: int(1)?,
        };
        if position.txid < 0 || position.seq < 0 {
            return Err(invalid());
        }
        let time = DateTime::from_timestamp_micros(int(2)?).ok_or_else(invalid)?;
        Ok(FeedCursor { position, time })
    }

    /// FAILED_PRECONDITION `CURSOR_EXPIRED` when the events after this cursor may no longer all be kept.
    pub fn check_retained(&self, now: DateTime<Utc>, retention: std::time::Duration) -> Result<(), Error> {
        let kept_since = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|r| now.checked_sub_signed(r))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        if self.time < kept_since {
            return Err(Error::FailedPrecondition {
                reason: "CURSOR_EXPIRED",
                subject: "start_cursor".into(),
                message: format!(
                    "start_cursor is older than the {}s of events kept: list the users again and watch from a new \
                     bookmark",
                    retention.as_secs()
                ),
            });
        }
        Ok(())
    }
}

/// One committed change, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub position: Position,
    pub kind: EventKind,
    pub user_id: Uuid,
    /// The user as the change left it; `None` for `Purged`.
    pub user: Option<User>,
    pub revision: i64,
    pub paths: Vec<String>,
    pub actor: String,
    pub create_time: DateTime<Utc>,
}

/// What one watcher may see and asked to see.
#[derive(Debug, Clone)]
pub struct Watch {
    /// `Some(id)` for a self-service caller: only events of its own user.
    pub only: Option<Uuid>,
    pub filter: Filter,
    pub show_deleted: bool,
}

impl Watch {
    /// `caller` was authorized for WatchUsers: administrators and `users.read` see every user, anyone else only
    /// the user its `sub` names (none if it names no user).
    pub fn new(caller: &Caller, filter: Filter, show_deleted: bool) -> Watch {
        let sees_all = caller.is_admin() || caller.has_scope(super::permission::SCOPE_READ);
        let only = (!sees_all).then(|| {
            Uuid::try_parse(&caller.subject)
                .ok()
                .filter(|id| caller.is_user(*id))
                .unwrap_or(Uuid::nil())
        });
        Watch {
            only,
            filter,
            show_deleted,
        }
    }

    /// Whether the watcher gets `event`. The filter applies to the user after the change. Without
    /// `show_deleted` changes that leave a user deleted are left out, as deleted users are from ListUsers,
    /// except the `Deleted` event itself, which tells that the user left the list; `Purged` always passes (its
    /// user is gone, so no filter can apply).
    pub fn sees(&self, event: &Event) -> bool {
        if self.only.is_some_and(|id| id != event.user_id) {
            return false;
        }
        let Some(user) = &event.user else {
            return true;
        };
        if !self.show_deleted && user.state() == State::Deleted && event.kind != EventKind::Deleted {
            return false;
        }
        self.filter.matches(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_everything_else() {
        let cursor = FeedCursor {
            position: Position { txid: 7, seq: i64::MAX },
            time: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap_or_default(),
        };
        let encoded = cursor.encode();
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(FeedCursor::decode(&encoded, "start_cursor").ok(), Some(cursor));
        for bad in ["", "x", "AQ", &encoded[1..], &format!("{encoded}A"), &"A".repeat(100)] {
            assert!(FeedCursor::decode(bad, "start_cursor").is_err(), "{bad}");
        }
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&encoded).unwrap_or_default();
        wrong_version[0] = 2;
        assert!(FeedCursor::decode(&URL_SAFE_NO_PAD.encode(wrong_version), "start_cursor").is_err());
    }

    #[test]
    fn a_cursor_past_the_retention_is_expired() {
        let now = Utc::now();
        let cursor = |age: i64| FeedCursor {
            position: Position::default(),
            time: now - chrono::Duration::seconds(age),
        };
        let week = std::time::Duration::from_secs(7 * 86_400);
        assert!(cursor(60).check_retained(now, week).is_ok());
        assert!(matches!(
            cursor(8 * 86_400).check_retained(now, week),
            Err(Error::FailedPrecondition {
                reason: "CURSOR_EXPIRED",
                ..
            })
        ));
    }

    #[test]
    fn every_kind_is_stored_by_a_name_that_reads_back() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
    }
}
