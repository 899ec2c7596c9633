//! Conversions between the protobuf messages and the domain types.

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use crate::domain::FieldViolation;
use crate::domain::revision::Revision;
use crate::domain::user::{Membership, State, User, UserFields};
use crate::pb;

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a UTC time; `None` (with a violation on `field`) when it is out of range.
fn time_from_proto(t: &prost_types::Timestamp, field: &str, out: &mut Vec<FieldViolation>) -> Option<DateTime<Utc>> {
    // 0001-01-01 to 9999-12-31, the range the Timestamp type itself defines.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    let valid = (MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos);
    let converted = valid
        .then(|| DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .flatten();
    if converted.is_none() {
        out.push(FieldViolation::new(
            field,
            "must be a valid timestamp between 0001-01-01 and 9999-12-31",
        ));
    }
    // Stored with microsecond precision, so that what a write returns is what a later read returns.
    converted.map(crate::domain::user::to_stored_precision)
}

/// A `google.protobuf.Value` as JSON; numbers that JSON cannot carry (NaN, infinities) are violations.
fn value_to_json(v: &prost_types::Value, field: &str, out: &mut Vec<FieldViolation>) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => match Number::from_f64(*n) {
            Some(n) => Value::Number(n),
            None => {
                out.push(FieldViolation::new(
                    field,
                    "numbers must be finite (no NaN or infinity)",
                ));
                Value::Null
            }
        },
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s, field, out)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(|v| value_to_json(v, field, out)).collect()),
    }
}

pub fn struct_to_json(s: &prost_types::Struct, field: &str, out: &mut Vec<FieldViolation>) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v, field, out)))
        .collect()
}

fn json_to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn json_to_struct(o: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect(),
    }
}

/// The writable fields of a request's user; conversion problems are added to `out` with paths under
/// `prefix`.
pub fn fields_from_proto(u: &pb::User, prefix: &str, out: &mut Vec<FieldViolation>) -> UserFields {
    UserFields {
        username: u.username.clone(),
        email: u.email.clone(),
        given_name: u.given_name.clone(),
        family_name: u.family_name.clone(),
        phone_number: u.phone_number.clone(),
        national_id: u.national_id.clone(),
        address: u.address.clone(),
        birth_date: u.birth_date.clone(),
        language_code: u.language_code.clone(),
        region_code: u.region_code.clone(),
        time_zone: u.time_zone.clone(),
        image_uri: u.image_uri.clone(),
        description: u.description.clone(),
        labels: u.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        roles: u.roles.clone(),
        memberships: u
            .memberships
            .iter()
            .map(|m| Membership {
                organization_id: m.organization_id.clone(),
                role: m.role.clone(),
                admin: m.admin,
            })
            .collect(),
        attributes: u
            .attributes
            .as_ref()
            .map(|s| struct_to_json(s, &format!("{prefix}.attributes"), out)),
        valid_from: u
            .valid_from
            .as_ref()
            .and_then(|t| time_from_proto(t, &format!("{prefix}.valid_from"), out)),
        expire_time: u
            .expire_time
            .as_ref()
            .and_then(|t| time_from_proto(t, &format!("{prefix}.expire_time"), out)),
    }
}

fn state_to_proto(state: State) -> pb::user::State {
    match state {
        State::Active => pb::user::State::Active,
        State::Disabled => pb::user::State::Disabled,
        State::Deleted => pb::user::State::Deleted,
    }
}

/// The user as clients see it. `password` is never set: it is input only.
pub fn user_to_proto(u: &User) -> pb::User {
    let f = &u.fields;
    pb::User {
        id: u.id.to_string(),
        username: f.username.clone(),
        email: f.email.clone(),
        email_verified: u.email_verified,
        given_name: f.given_name.clone(),
        family_name: f.family_name.clone(),
        phone_number: f.phone_number.clone(),
        national_id: f.national_id.clone(),
        address: f.address.clone(),
        birth_date: f.birth_date.clone(),
        language_code: f.language_code.clone(),
        region_code: f.region_code.clone(),
        time_zone: f.time_zone.clone(),
        image_uri: f.image_uri.clone(),
        description: f.description.clone(),
        state: state_to_proto(u.state()) as i32,
        disabled_reason: u.disabled_reason.clone(),
        labels: f.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        roles: f.roles.clone(),
        memberships: f
            .memberships
            .iter()
            .map(|m| pb::Membership {
                organization_id: m.organization_id.clone(),
                role: m.role.clone(),
                admin: m.admin,
            })
            .collect(),
        attributes: f.attributes.as_ref().map(json_to_struct),
        valid_from: f.valid_from.map(timestamp),
        expire_time: f.expire_time.map(timestamp),
        password: String::new(),
        create_time: Some(timestamp(u.create_time)),
        update_time: Some(timestamp(u.update_time)),
        delete_time: u.delete_time.map(timestamp),
        purge_time: u.purge_time.map(timestamp),
        revision: u.revision,
        etag: u.etag(),
    }
}

pub fn revision_to_proto(r: &Revision) -> pb::UserRevision {
    pb::UserRevision {
        revision: r.revision,
        actor: r.actor.clone(),
        update_mask: Some(prost_types::FieldMask { paths: r.paths.clone() }),
        create_time: Some(timestamp(r.create_time)),
        before: Some(json_to_struct(&r.before)),
        after: Some(json_to_struct(&r.after)),
    }
}
