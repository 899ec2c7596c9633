//! The audit record of a change: which paths changed, with their values before and after.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::field_mask::{UserField, quote_segment};
use super::user::{Membership, User, UserFields};

/// What a password looks like in a revision: it is never recorded, only that it changed.
pub const REDACTED: &str = "[redacted]";

/// One stored revision of a user.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub revision: i64,
    pub actor: String,
    pub paths: Vec<String>,
    pub create_time: DateTime<Utc>,
    pub before: Map<String, Value>,
    pub after: Map<String, Value>,
}

/// The changed paths between two versions of a user, keyed by mask path; empty when nothing changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub paths: Vec<String>,
    pub before: Map<String, Value>,
    pub after: Map<String, Value>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn record(&mut self, path: String, before: Value, after: Value) {
        self.before.insert(path.clone(), before);
        self.after.insert(path.clone(), after);
        self.paths.push(path);
    }
}

/// Reads one service-maintained field of a user as JSON.
type ServiceFieldValue = fn(&User) -> Value;

/// Compares two versions of a user. `before` is `None` for a creation. A password change is recorded as
/// `password` with both values redacted (or null where there was none).
pub fn diff(before: Option<&User>, after: &User, password_changed: bool) -> Diff {
    let mut d = Diff::default();
    let empty = UserFields::default();
    let (bf, af) = (before.map_or(&empty, |u| &u.fields), &after.fields);
    for field in UserField::ALL {
        if field == UserField::Password {
            if password_changed {
                let had = before.is_some_and(|u| u.has_password);
                let redacted = |present: bool| {
                    if present {
                        Value::String(REDACTED.to_owned())
                    } else {
                        Value::Null
                    }
                };
                d.record("password".into(), redacted(had), redacted(after.has_password));
            }
        } else {
            UserFields::record_diff(bf, af, field, &mut d);
        }
    }
    let service_fields: [(&str, ServiceFieldValue); 5] = [
        ("email_verified", |u| Value::Bool(u.email_verified)),
        ("state", |u| Value::String(u.state().name().to_owned())),
        ("disabled_reason", |u| string_or_null(&u.disabled_reason)),
        ("delete_time", |u| time_json(u.delete_time)),
        ("purge_time", |u| time_json(u.purge_time)),
    ];
    if let Some(before) = before {
        for (name, value) in service_fields {
            let (b, a) = (value(before), value(after));
            if b != a {
                d.record(name.into(), b, a);
            }
        }
    }
    d
}

fn string_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// A timestamp in its proto3 JSON form (RFC 3339, UTC, `Z`).
pub fn time_json(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    })
}

fn membership_json(m: &Membership) -> Value {
    serde_json::json!({"organizationId": m.organization_id, "role": m.role, "admin": m.admin})
}

/// How a writable field's value is recorded in a revision: unset values are null, so before and after show
/// presence plainly; maps are recorded key by key, as the mask paths that write them.
pub(crate) trait RevisionValue {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff);
}

/// Records a field whose value is compared and recorded whole.
fn record_whole(d: &mut Diff, name: &str, before: Value, after: Value) {
    if before != after {
        d.record(name.into(), before, after);
    }
}

impl RevisionValue for String {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        record_whole(d, name, string_or_null(before), string_or_null(after));
    }
}

impl RevisionValue for Option<DateTime<Utc>> {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        record_whole(d, name, time_json(*before), time_json(*after));
    }
}

/// A repeated field as a JSON array; null when empty.
fn list_json<T>(items: &[T], item_json: impl Fn(&T) -> Value) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items.iter().map(item_json).collect())
    }
}

impl RevisionValue for Vec<String> {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        let json = |s: &String| Value::String(s.clone());
        record_whole(d, name, list_json(before, json), list_json(after, json));
    }
}

impl RevisionValue for Vec<Membership> {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        record_whole(
            d,
            name,
            list_json(before, membership_json),
            list_json(after, membership_json),
        );
    }
}

/// Records every key of a map field whose value differs, as `<name>.<key>` with null where a key is absent;
/// returns whether it recorded any.
fn record_keys<'a, V: PartialEq + 'a>(
    d: &mut Diff,
    name: &str,
    keys: BTreeSet<&'a String>,
    before: impl Fn(&str) -> Option<&'a V>,
    after: impl Fn(&str) -> Option<&'a V>,
    json: impl Fn(&V) -> Value,
) -> bool {
    let recorded = d.paths.len();
    for key in keys {
        let (b, a) = (before(key), after(key));
        if b != a {
            d.record(
                format!("{name}.{}", quote_segment(key)),
                b.map_or(Value::Null, &json),
                a.map_or(Value::Null, &json),
            );
        }
    }
    d.paths.len() > recorded
}

impl RevisionValue for BTreeMap<String, String> {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        let keys = before.keys().chain(after.keys()).collect();
        record_keys(
            d,
            name,
            keys,
            |k| before.get(k),
            |k| after.get(k),
            |v| Value::String(v.clone()),
        );
    }
}

impl RevisionValue for Option<Map<String, Value>> {
    fn record_diff(before: &Self, after: &Self, name: &str, d: &mut Diff) {
        // Key by key, an absent object counting as empty, so that a first key shows as `attributes.<key>` like
        // every later one.
        let empty = Map::new();
        let (b, a) = (before.as_ref().unwrap_or(&empty), after.as_ref().unwrap_or(&empty));
        let keys = b.keys().chain(a.keys()).collect();
        let recorded = record_keys(d, name, keys, |k| b.get(k), |k| a.get(k), Value::clone);
        if !recorded && before.is_some() != after.is_some() {
            // Only presence changed (an empty object set or cleared).
            let json = |v: &Self| v.clone().map_or(Value::Null, Value::Object);
            d.record(name.into(), json(before), json(after));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::to_stored_precision;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn user() -> User {
        let now = to_stored_precision(Utc::now());
        User {
            id: Uuid::now_v7(),
            fields: UserFields {
                email: "a@example.com".into(),
                labels: BTreeMap::from([("team".into(), "core".into())]),
                ..Default::default()
            },
            email_verified: true,
            disabled: false,
            disabled_reason: String::new(),
            has_password: true,
            create_time: now,
            update_time: now,
            delete_time: None,
            purge_time: None,
            last_login_time: None,
            revision: 1,
        }
    }

    #[test]
    fn identical_users_have_no_diff() {
        let u = user();
        assert!(diff(Some(&u), &u.clone(), false).is_empty());
    }

    #[test]
    fn records_changed_paths_with_values_and_redacts_password() {
        let before = user();
        let mut after = before.clone();
        after.fields.given_name = "Ann".into();
        after.fields.labels.insert("a.b".into(), "x".into());
        after.fields.labels.remove("team");
        let d = diff(Some(&before), &after, true);
        assert_eq!(d.paths, vec!["given_name", "labels.`a.b`", "labels.team", "password"]);
        assert_eq!(d.before["given_name"], Value::Null);
        assert_eq!(d.after["given_name"], "Ann");
        assert_eq!(d.before["labels.team"], "core");
        assert_eq!(d.after["labels.team"], Value::Null);
        assert_eq!(d.after["password"], REDACTED);
        assert!(!serde_json::to_string(&d.after).unwrap_or_default().contains("Secret"));
    }

    #[test]
    fn creation_lists_set_fields() {
        let d = diff(None, &user(), true);
        assert_eq!(d.paths, vec!["email", "labels.team", "password"]);
        assert_eq!(d.before["password"], Value::Null);
    }

    #[test]
    fn a_first_attribute_key_is_recorded_by_its_path() {
        let before = user();
        let mut after = before.clone();
        after.fields.attributes = serde_json::json!({"score": 1}).as_object().cloned();
        assert_eq!(diff(Some(&before), &after, false).paths, vec!["attributes.score"]);
        let mut emptied = before.clone();
        emptied.fields.attributes = Some(Map::new());
        assert_eq!(
            diff(Some(&before), &emptied, false).paths,
            vec!["attributes"],
            "presence alone changed"
        );
    }

    #[test]
    fn state_changes_are_recorded() {
        let before = user();
        let mut after = before.clone();
        after.disabled = true;
        after.disabled_reason = "fraud".into();
        let d = diff(Some(&before), &after, false);
        assert_eq!(d.paths, vec!["state", "disabled_reason"]);
        assert_eq!(d.after["state"], "DISABLED");
    }
}
