//! Conversions between the protobuf messages and the domain types.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use crate::domain::FieldViolation;
use crate::domain::event::{Event, EventKind};
use crate::domain::field_table::user_field_table;
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

/// A `google.protobuf.Value` as JSON; numbers that JSON cannot carry (NaN, infinities) and values with no
/// kind set (which proto3 JSON cannot write, and which would otherwise be stored as a null nobody sent) are
/// violations.
fn value_to_json(v: &prost_types::Value, field: &str, out: &mut Vec<FieldViolation>) -> Value {
    match &v.kind {
        None => {
            out.push(FieldViolation::new(
                field,
                "every google.protobuf.Value must have its kind set (null_value for null)",
            ));
            Value::Null
        }
        Some(Kind::NullValue(_)) => Value::Null,
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

/// The request path of one field, formatted only when a violation needs it.
struct FieldPath<'a> {
    prefix: &'a str,
    name: &'static str,
}

impl fmt::Display for FieldPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.prefix, self.name)
    }
}

/// How one writable field's value crosses between its prost form `P` and its domain form.
trait ProtoValue<P>: Sized {
    /// Conversion problems are added to `out` under `path`.
    fn from_proto(value: &P, path: &FieldPath<'_>, out: &mut Vec<FieldViolation>) -> Self;
    fn to_proto(&self) -> P;
}

impl ProtoValue<String> for String {
    fn from_proto(value: &String, _: &FieldPath<'_>, _: &mut Vec<FieldViolation>) -> Self {
        value.clone()
    }

    fn to_proto(&self) -> String {
        self.clone()
    }
}

impl ProtoValue<Vec<String>> for Vec<String> {
    fn from_proto(value: &Vec<String>, _: &FieldPath<'_>, _: &mut Vec<FieldViolation>) -> Self {
        value.clone()
    }

    fn to_proto(&self) -> Vec<String> {
        self.clone()
    }
}

impl ProtoValue<HashMap<String, String>> for BTreeMap<String, String> {
    fn from_proto(value: &HashMap<String, String>, _: &FieldPath<'_>, _: &mut Vec<FieldViolation>) -> Self {
        value.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn to_proto(&self) -> HashMap<String, String> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl ProtoValue<Vec<pb::Membership>> for Vec<Membership> {
    fn from_proto(value: &Vec<pb::Membership>, _: &FieldPath<'_>, _: &mut Vec<FieldViolation>) -> Self {
        value
            .iter()
            .map(|m| {
                let pb::Membership {
                    organization_id,
                    role,
                    admin,
                } = m;
                Membership {
                    organization_id: organization_id.clone(),
                    role: role.clone(),
                    admin: *admin,
                }
            })
            .collect()
    }

    fn to_proto(&self) -> Vec<pb::Membership> {
        self.iter()
            .map(|m| {
                let Membership {
                    organization_id,
                    role,
                    admin,
                } = m;
                pb::Membership {
                    organization_id: organization_id.clone(),
                    role: role.clone(),
                    admin: *admin,
                }
            })
            .collect()
    }
}

impl ProtoValue<Option<prost_types::Struct>> for Option<Map<String, Value>> {
    fn from_proto(value: &Option<prost_types::Struct>, path: &FieldPath<'_>, out: &mut Vec<FieldViolation>) -> Self {
        value.as_ref().map(|s| struct_to_json(s, &path.to_string(), out))
    }

    fn to_proto(&self) -> Option<prost_types::Struct> {
        self.as_ref().map(json_to_struct)
    }
}

impl ProtoValue<Option<prost_types::Timestamp>> for Option<DateTime<Utc>> {
    fn from_proto(value: &Option<prost_types::Timestamp>, path: &FieldPath<'_>, out: &mut Vec<FieldViolation>) -> Self {
        value.as_ref().and_then(|t| time_from_proto(t, &path.to_string(), out))
    }

    fn to_proto(&self) -> Option<prost_types::Timestamp> {
        self.map(timestamp)
    }
}

fn state_to_proto(state: State) -> pb::user::State {
    match state {
        State::Active => pb::user::State::Active,
        State::Disabled => pb::user::State::Disabled,
        State::Deleted => pb::user::State::Deleted,
    }
}

/// Builds both conversions of `pb::User` from the field table. Each names every field of the message (no `..`), so
/// a field added to the proto fails the build here until the table, or the service fields below, handle it.
macro_rules! proto_conversions {
    (writable { $($(#[$doc:meta])* $name:ident: $ty:ty = $variant:ident, $shape:ident, $behavior:ident, $access:ident, $text:expr;)* }
     input_only { $input:ident = $input_variant:ident } output_only { $($output:ident),* } precondition { $precondition:ident }) => {
        /// The writable fields of a request's user; conversion problems are added to `out` with paths under
        /// `prefix`.
        pub fn fields_from_proto(u: &pb::User, prefix: &str, out: &mut Vec<FieldViolation>) -> UserFields {
            let pb::User { $($name,)* $input: _, $($output: _,)* $precondition: _ } = u;
            UserFields {
                $($name: ProtoValue::from_proto($name, &FieldPath { prefix, name: stringify!($name) }, out),)*
            }
        }

        /// The user as clients see it. The password is never set: it is input only.
        pub fn user_to_proto(u: &User) -> pb::User {
            let UserFields { $($name,)* } = &u.fields;
            pb::User {
                $($name: ProtoValue::to_proto($name),)*
                $input: String::new(),
                id: u.id.to_string(),
                email_verified: u.email_verified,
                state: state_to_proto(u.state()) as i32,
                disabled_reason: u.disabled_reason.clone(),
                create_time: Some(timestamp(u.create_time)),
                update_time: Some(timestamp(u.update_time)),
                delete_time: u.delete_time.map(timestamp),
                purge_time: u.purge_time.map(timestamp),
                last_login_time: u.last_login_time.map(timestamp),
                revision: u.revision,
                etag: u.etag(),
            }
        }
    };
}

user_field_table!(proto_conversions);

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

/// A feed event as sent; a purged user is only its id.
pub fn event_to_proto(e: &Event, cursor: String) -> pb::UserEvent {
    let kind = match e.kind {
        EventKind::Created => pb::user_event::Type::Created,
        EventKind::Updated => pb::user_event::Type::Updated,
        EventKind::Deleted => pb::user_event::Type::Deleted,
        EventKind::Undeleted => pb::user_event::Type::Undeleted,
        EventKind::Disabled => pb::user_event::Type::Disabled,
        EventKind::Enabled => pb::user_event::Type::Enabled,
        EventKind::EmailVerified => pb::user_event::Type::EmailVerified,
        EventKind::Purged => pb::user_event::Type::Purged,
    };
    let user = match &e.user {
        Some(user) => user_to_proto(user),
        None => pb::User {
            id: e.user_id.to_string(),
            ..pb::User::default()
        },
    };
    pb::UserEvent {
        cursor,
        r#type: kind as i32,
        user: Some(user),
        revision: e.revision,
        update_mask: Some(prost_types::FieldMask { paths: e.paths.clone() }),
        actor: e.actor.clone(),
        create_time: Some(timestamp(e.create_time)),
    }
}

/// A bookmark: only a cursor to resume from.
pub fn bookmark(cursor: String) -> pb::UserEvent {
    pb::UserEvent {
        cursor,
        r#type: pb::user_event::Type::Bookmark as i32,
        ..pb::UserEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost_reflect::{DescriptorPool, Value as Reflected};
    use uuid::Uuid;

    use super::*;
    use crate::domain::change::{self, PasswordInput};
    use crate::domain::field_mask::UserField;
    use crate::domain::field_table::{Behavior, OUTPUT_ONLY_FIELDS, PRECONDITION_FIELD};

    /// `google.api.FieldBehavior` numbers.
    const REQUIRED: i32 = 2;
    const OUTPUT_ONLY: i32 = 3;
    const INPUT_ONLY: i32 = 4;

    /// Every field of `users.v1.User` with its `field_behavior` options, as the descriptor set carries them.
    fn proto_fields() -> BTreeMap<String, Vec<i32>> {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let behavior = pool
            .get_extension_by_name("google.api.field_behavior")
            .expect("field_behavior extension");
        let user = pool.get_message_by_name("users.v1.User").expect("users.v1.User");
        user.fields()
            .map(|field| {
                let numbers = match field.options().get_extension(&behavior).as_ref() {
                    Reflected::List(values) => values.iter().filter_map(Reflected::as_enum_number).collect(),
                    _ => Vec::new(),
                };
                (field.name().to_owned(), numbers)
            })
            .collect()
    }

    #[test]
    fn the_field_table_names_every_proto_field_once() {
        let proto: BTreeSet<String> = proto_fields().into_keys().collect();
        let mut table: Vec<&str> = UserField::ALL.iter().map(|f| f.name()).collect();
        table.extend(OUTPUT_ONLY_FIELDS);
        table.push(PRECONDITION_FIELD);
        let listed: BTreeSet<String> = table.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(listed.len(), table.len(), "a field is listed twice: {table:?}");
        assert_eq!(listed, proto);
    }

    #[test]
    fn the_field_table_flags_match_the_proto_field_behavior() {
        let proto = proto_fields();
        for field in UserField::ALL {
            let behaviors = &proto[field.name()];
            let expected = if behaviors.contains(&INPUT_ONLY) {
                Behavior::InputOnly
            } else if behaviors.contains(&REQUIRED) {
                Behavior::Required
            } else {
                Behavior::Optional
            };
            assert_eq!(field.behavior(), expected, "{}: {behaviors:?}", field.name());
            assert!(!behaviors.contains(&OUTPUT_ONLY), "{} is writable", field.name());
        }
        let output_only: BTreeSet<&str> = proto
            .iter()
            .filter(|(_, behaviors)| behaviors.contains(&OUTPUT_ONLY))
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(output_only, OUTPUT_ONLY_FIELDS.into_iter().collect());
        // Clients send the etag back, so it is not output only, yet no mask writes it.
        assert!(!proto[PRECONDITION_FIELD].contains(&OUTPUT_ONLY));
    }

    #[test]
    fn a_populated_user_survives_the_round_trip() {
        let now = crate::domain::user::to_stored_precision(Utc::now());
        let fields = UserFields {
            username: "ann".into(),
            email: "ann@example.com".into(),
            given_name: "Ann".into(),
            family_name: "Lee".into(),
            phone_number: "+5712345678".into(),
            national_id: "123".into(),
            address: "Street 1".into(),
            birth_date: "1990-01-02".into(),
            language_code: "es-CO".into(),
            region_code: "CO".into(),
            time_zone: "America/Bogota".into(),
            image_uri: "https://example.com/a.png".into(),
            description: "about".into(),
            labels: BTreeMap::from([("team".into(), "core".into())]),
            roles: vec!["admin".into()],
            memberships: vec![Membership {
                organization_id: "org".into(),
                role: "dev".into(),
                admin: true,
            }],
            attributes: serde_json::json!({"score": 7.5, "tags": ["a"]}).as_object().cloned(),
            valid_from: Some(now),
            expire_time: Some(now + chrono::Duration::days(1)),
        };
        let user = change::create(Uuid::now_v7(), fields.clone(), PasswordInput::Absent, now)
            .expect("a valid user")
            .user;
        assert_eq!(user.fields, fields, "nothing to normalize");
        let mut violations = Vec::new();
        let proto = user_to_proto(&user);
        assert!(proto.password.is_empty());
        assert_eq!(fields_from_proto(&proto, "user", &mut violations), fields);
        assert!(violations.is_empty(), "{violations:?}");
    }
}
