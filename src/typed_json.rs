//! REST and Connect JSON of the answers that carry users (`User`, `ListUsersResponse`), written straight from
//! the prost messages the service returns, without encoding them first.
//!
//! Every other answer is encoded and written by the transcoder's wire writer (`transcode::wire_json`), which
//! reads the protobuf bytes through a plan made from the descriptors. A page of users is the largest and most
//! frequent answer; encoding it only to read the bytes back, field by field through the plan, was most of what
//! REST cost beyond gRPC. This writer writes exactly what the wire writer writes for the same message (the tests
//! and the `rest_answer` fuzz target hold it to the reflective writer, as they hold the wire writer); where the
//! general writers refuse a message (a timestamp outside RFC 3339's range, a number in `attributes` that JSON
//! cannot hold) or might (`attributes` nested deeper than any request can write them), it declines and the
//! answer is encoded and written the general way, which answers as it always did. The tests build every field of
//! `User` by name, so a field added to the contract stops them compiling until it is written here too.

use std::any::Any;
use std::io::Write;

use crate::domain::validate::MAX_ATTRIBUTES_DEPTH;
use crate::pb;
use crate::transcode::JsonAnswer;
use crate::transcode::wire_json::{write_rfc3339, write_string};

/// The whole answer as JSON, if `message` is one of the types written here and this writer can write it.
/// `encoded_len` is the message's protobuf size: the JSON takes about 3.4 times that (keys, defaults written out,
/// RFC 3339 times), so four times it is room enough that the buffer is not copied again as it grows, and never
/// more than the wire writer would have taken for the same answer.
pub fn answer(message: &dyn Any, encoded_len: usize) -> Option<JsonAnswer> {
    let capacity = encoded_len.saturating_mul(4).saturating_add(64);
    if let Some(user) = message.downcast_ref::<pb::User>() {
        let mut body = Vec::with_capacity(capacity);
        write_user(&mut body, user)?;
        return Some(JsonAnswer {
            body,
            etag: Some(user.etag.clone()),
        });
    }
    if let Some(page) = message.downcast_ref::<pb::ListUsersResponse>() {
        let mut body = Vec::with_capacity(capacity);
        body.extend_from_slice(b"{\"users\":[");
        separated(&mut body, &page.users, write_user)?;
        body.extend_from_slice(b"],\"nextPageToken\":");
        string(&mut body, &page.next_page_token);
        body.push(b'}');
        // ListUsersResponse has no `etag` field.
        return Some(JsonAnswer { body, etag: None });
    }
    None
}

/// A user's JSON: every field without presence (defaults too), messages when set, `password` never (input
/// only), in the order the fields are declared, as the reflective writer writes them.
fn write_user(out: &mut Vec<u8>, user: &pb::User) -> Option<()> {
    keyed_string(out, b"{\"id\":", &user.id);
    keyed_string(out, b",\"username\":", &user.username);
    keyed_string(out, b",\"email\":", &user.email);
    out.extend_from_slice(b",\"emailVerified\":");
    boolean(out, user.email_verified);
    keyed_string(out, b",\"givenName\":", &user.given_name);
    keyed_string(out, b",\"familyName\":", &user.family_name);
    keyed_string(out, b",\"phoneNumber\":", &user.phone_number);
    keyed_string(out, b",\"nationalId\":", &user.national_id);
    keyed_string(out, b",\"address\":", &user.address);
    keyed_string(out, b",\"birthDate\":", &user.birth_date);
    keyed_string(out, b",\"languageCode\":", &user.language_code);
    keyed_string(out, b",\"regionCode\":", &user.region_code);
    keyed_string(out, b",\"timeZone\":", &user.time_zone);
    keyed_string(out, b",\"imageUri\":", &user.image_uri);
    keyed_string(out, b",\"description\":", &user.description);
    out.extend_from_slice(b",\"state\":");
    match pb::user::State::try_from(user.state) {
        Ok(state) => {
            out.push(b'"');
            out.extend_from_slice(state.as_str_name().as_bytes());
            out.push(b'"');
        }
        // A number the enum does not name is written as the number.
        Err(_) => write!(out, "{}", user.state).ok()?,
    }
    keyed_string(out, b",\"disabledReason\":", &user.disabled_reason);
    out.extend_from_slice(b",\"labels\":{");
    separated(out, &user.labels, |out, (key, value)| {
        string(out, key);
        out.push(b':');
        string(out, value);
        Some(())
    })?;
    out.extend_from_slice(b"},\"roles\":[");
    separated(out, &user.roles, |out, role| {
        string(out, role);
        Some(())
    })?;
    out.extend_from_slice(b"],\"memberships\":[");
    separated(out, &user.memberships, |out, membership| {
        keyed_string(out, b"{\"organizationId\":", &membership.organization_id);
        keyed_string(out, b",\"role\":", &membership.role);
        out.extend_from_slice(b",\"admin\":");
        boolean(out, membership.admin);
        out.push(b'}');
        Some(())
    })?;
    out.push(b']');
    if let Some(attributes) = &user.attributes {
        out.extend_from_slice(b",\"attributes\":");
        write_struct(out, attributes, 1)?;
    }
    timestamp(out, b",\"validFrom\":", user.valid_from.as_ref())?;
    timestamp(out, b",\"expireTime\":", user.expire_time.as_ref())?;
    timestamp(out, b",\"createTime\":", user.create_time.as_ref())?;
    timestamp(out, b",\"updateTime\":", user.update_time.as_ref())?;
    timestamp(out, b",\"deleteTime\":", user.delete_time.as_ref())?;
    timestamp(out, b",\"purgeTime\":", user.purge_time.as_ref())?;
    // 64-bit integers are strings in proto3 JSON.
    write!(out, ",\"revision\":\"{}\"", user.revision).ok()?;
    keyed_string(out, b",\"etag\":", &user.etag);
    timestamp(out, b",\"lastLoginTime\":", user.last_login_time.as_ref())?;
    out.push(b'}');
    Some(())
}

/// Levels of `attributes` (each object or list one) this writer writes; deeper ones go the general way. Stored
/// attributes nest at most `MAX_ATTRIBUTES_DEPTH` levels (the domain refuses deeper ones), so every stored user
/// is written here, and the general writers' decoder (prost's 100 levels of messages, two or three per level
/// here) writes whatever this writer writes.
const MAX_ATTRIBUTE_LEVELS: usize = MAX_ATTRIBUTES_DEPTH + 4;

/// A `google.protobuf.Struct` as the reflective writer (prost-reflect, through `prost_types`) writes it: keys
/// in their sorted order, numbers by serde_json, a value of no kind as `null`.
fn write_struct(out: &mut Vec<u8>, object: &prost_types::Struct, level: usize) -> Option<()> {
    if level > MAX_ATTRIBUTE_LEVELS {
        return None;
    }
    out.push(b'{');
    separated(out, &object.fields, |out, (key, value)| {
        string(out, key);
        out.push(b':');
        write_value(out, value, level)
    })?;
    out.push(b'}');
    Some(())
}

fn write_value(out: &mut Vec<u8>, value: &prost_types::Value, level: usize) -> Option<()> {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => out.extend_from_slice(b"null"),
        Some(Kind::BoolValue(value)) => boolean(out, *value),
        // JSON has no NaN or infinities; the reflective writer refuses them.
        Some(Kind::NumberValue(number)) if !number.is_finite() => return None,
        Some(Kind::NumberValue(number)) => serde_json::to_writer(&mut *out, number).ok()?,
        Some(Kind::StringValue(text)) => string(out, text),
        Some(Kind::StructValue(object)) => write_struct(out, object, level + 1)?,
        Some(Kind::ListValue(list)) => {
            if level + 1 > MAX_ATTRIBUTE_LEVELS {
                return None;
            }
            out.push(b'[');
            separated(out, &list.values, |out, item| write_value(out, item, level + 1))?;
            out.push(b']');
        }
    }
    Some(())
}

/// Writes each item with `write`, a comma between two; stops at the first item `write` declines.
fn separated<I: IntoIterator>(
    out: &mut Vec<u8>,
    items: I,
    mut write: impl FnMut(&mut Vec<u8>, I::Item) -> Option<()>,
) -> Option<()> {
    for (at, item) in items.into_iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        write(out, item)?;
    }
    Some(())
}

fn string(out: &mut Vec<u8>, text: &str) {
    // A `str` is valid UTF-8, the one thing the wire writer's string writer can refuse.
    let _ = write_string(out, text.as_bytes());
}

fn keyed_string(out: &mut Vec<u8>, key: &[u8], text: &str) {
    out.extend_from_slice(key);
    string(out, text);
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// A timestamp field, written only when set (messages have presence); `None` when it is outside RFC 3339's range.
fn timestamp(out: &mut Vec<u8>, key: &[u8], value: Option<&prost_types::Timestamp>) -> Option<()> {
    if let Some(time) = value {
        out.extend_from_slice(key);
        out.push(b'"');
        write_rfc3339(out, time.seconds, time.nanos).ok()?;
        out.push(b'"');
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use prost::{Message, Name};
    use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

    use super::*;
    use crate::transcode::json::{message_json_bytes, response_etag};
    use crate::transcode::wire_json;

    fn descriptor<M: Name>() -> MessageDescriptor {
        let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        pool.get_message_by_name(&M::full_name())
            .expect("the message is described")
    }

    /// The typed writer against the two general ones on the same message: byte for byte against the wire writer
    /// (the same map iterated in the same order), by value and length against the reflective writer.
    fn assert_written_alike<M: Message + Name + Any>(message: &M) {
        let typed = answer(message, message.encoded_len()).expect("the typed writer writes it");
        let bytes = message.encode_to_vec();
        let (wire, etag) = wire_json::answer_json(&descriptor::<M>(), None, &bytes, Some("etag")).expect("writes");
        assert_eq!(String::from_utf8_lossy(&typed.body), String::from_utf8_lossy(&wire));
        assert_eq!(typed.etag, etag);
        let decoded = DynamicMessage::decode(descriptor::<M>(), bytes.as_slice()).expect("decodes");
        let reflective = message_json_bytes(&decoded).expect("writes");
        let parse = |json: &[u8]| serde_json::from_slice::<serde_json::Value>(json).expect("JSON");
        assert_eq!(parse(&typed.body), parse(&reflective));
        assert_eq!(typed.body.len(), reflective.len());
        assert_eq!(typed.etag.filter(|e| !e.is_empty()), response_etag(&decoded));
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9@.-]{0,12}",
            // Quotes, backslashes, control characters, DEL and text beyond ASCII: everything JSON escapes or not.
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a-z]{0,8}",
            any::<String>(),
        ]
    }

    fn time() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
        proptest::option::of(
            (
                -62_135_596_800i64..=253_402_300_799,
                prop_oneof![
                    Just(0i32),
                    (0i32..1000).prop_map(|n| n * 1_000_000),
                    0i32..1_000_000_000
                ],
            )
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    }

    fn user() -> impl Strategy<Value = pb::User> {
        let names = (text(), text(), text(), text(), text(), text(), text(), text());
        let more = (text(), text(), text(), text(), text(), text(), text());
        let shape = (
            any::<bool>(),
            -2i32..6,
            proptest::collection::hash_map(text(), text(), 0..4),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::vec((text(), text(), any::<bool>()), 0..3),
            any::<i64>(),
        );
        let times = (time(), time(), time(), time(), time(), time(), time());
        (names, more, shape, times).prop_map(|(n, m, s, t)| pb::User {
            id: n.0,
            username: n.1,
            email: n.2,
            given_name: n.3,
            family_name: n.4,
            phone_number: n.5,
            national_id: n.6,
            address: n.7,
            birth_date: m.0,
            language_code: m.1,
            region_code: m.2,
            time_zone: m.3,
            image_uri: m.4,
            description: m.5,
            disabled_reason: m.6,
            email_verified: s.0,
            state: s.1,
            labels: s.2,
            roles: s.3,
            memberships: s
                .4
                .into_iter()
                .map(|(organization_id, role, admin)| pb::Membership {
                    organization_id,
                    role,
                    admin,
                })
                .collect(),
            revision: s.5,
            valid_from: t.0,
            expire_time: t.1,
            create_time: t.2,
            update_time: t.3,
            delete_time: t.4,
            purge_time: t.5,
            last_login_time: t.6,
            // Input only: never written, whatever it holds.
            password: "secret".to_owned(),
            etag: String::new(),
            attributes: None,
        })
    }

    /// Attributes of every kind of value, nested a few levels, numbers finite (JSON holds no others).
    fn attributes() -> impl Strategy<Value = prost_types::Struct> {
        use prost_types::value::Kind;
        let leaf = prop_oneof![
            Just(None),
            Just(Some(Kind::NullValue(0))),
            any::<bool>().prop_map(|v| Some(Kind::BoolValue(v))),
            prop_oneof![
                any::<f64>().prop_filter("finite", |n| n.is_finite()),
                Just(-0.0),
                Just(1e21),
                Just(3.0)
            ]
            .prop_map(|v| Some(Kind::NumberValue(v))),
            text().prop_map(|v| Some(Kind::StringValue(v))),
        ]
        .prop_map(|kind| prost_types::Value { kind });
        let value = leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|values| Some(Kind::ListValue(prost_types::ListValue { values }))),
                proptest::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|fields| Some(Kind::StructValue(prost_types::Struct { fields }))),
            ]
            .prop_map(|kind| prost_types::Value { kind })
        });
        proptest::collection::btree_map(text(), value, 0..5).prop_map(|fields| prost_types::Struct { fields })
    }

    proptest! {
        #[test]
        fn a_user_is_written_as_the_general_writers_write_it(
            mut user in user(),
            etag in text(),
            attributes in proptest::option::of(attributes()),
        ) {
            user.etag = etag;
            user.attributes = attributes;
            assert_written_alike(&user);
        }

        #[test]
        fn a_page_is_written_as_the_general_writers_write_it(
            users in proptest::collection::vec(user(), 0..4),
            next_page_token in text(),
        ) {
            assert_written_alike(&pb::ListUsersResponse { users, next_page_token });
        }
    }

    /// Attributes holding `value` as their one field, `levels` objects deep.
    fn nested(levels: usize, value: prost_types::Value) -> prost_types::Struct {
        let mut object = prost_types::Struct {
            fields: [("a".to_owned(), value)].into(),
        };
        for _ in 1..levels {
            object = prost_types::Struct {
                fields: [(
                    "a".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StructValue(object)),
                    },
                )]
                .into(),
            };
        }
        object
    }

    #[test]
    fn what_the_general_writers_refuse_or_might_goes_their_way() {
        use prost_types::value::Kind;
        let with = |attributes| pb::User {
            attributes: Some(attributes),
            ..Default::default()
        };
        let number = |n: f64| prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        };
        // As deep as stored attributes go: written, as the general writers write it.
        let deepest = with(nested(MAX_ATTRIBUTES_DEPTH, number(1.5)));
        assert_written_alike(&deepest);
        assert!(answer(&with(nested(MAX_ATTRIBUTE_LEVELS + 1, number(1.5))), 0).is_none());
        let not_a_number = with(nested(2, number(f64::NAN)));
        assert!(answer(&not_a_number, 0).is_none());
        let general = wire_json::answer_json(&descriptor::<pb::User>(), None, &not_a_number.encode_to_vec(), None);
        assert!(general.is_err(), "the general writers refuse NaN too");
        assert!(answer(&with(nested(1, number(f64::INFINITY))), 0).is_none());
        let far = pb::User {
            update_time: Some(prost_types::Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert!(answer(&far, 0).is_none());
        assert!(
            answer(
                &pb::ListUsersResponse {
                    users: vec![far],
                    next_page_token: String::new()
                },
                0
            )
            .is_none()
        );
    }

    #[test]
    fn other_answers_are_left_to_the_general_writers() {
        assert!(answer(&pb::ListUserRevisionsResponse::default(), 0).is_none());
        assert!(answer(&HashMap::<String, String>::new(), 0).is_none());
    }

    #[test]
    fn a_seeded_user_reads_as_expected() {
        let user = pb::User {
            id: "u1".into(),
            email: "a@b.test".into(),
            state: pb::user::State::Active as i32,
            revision: 3,
            etag: "3-x".into(),
            labels: [("team".to_owned(), "core".to_owned())].into(),
            roles: vec!["viewer".into()],
            create_time: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 1_000,
            }),
            ..Default::default()
        };
        let written = answer(&user, 0).expect("writes");
        let value: serde_json::Value = serde_json::from_slice(&written.body).expect("JSON");
        assert_eq!(value["state"], "ACTIVE");
        assert_eq!(value["revision"], "3");
        assert_eq!(value["labels"]["team"], "core");
        assert_eq!(value["createTime"], "2026-01-01T00:00:00.000001Z");
        assert_eq!(value["phoneNumber"], "");
        assert!(value.get("password").is_none());
        assert!(value.get("updateTime").is_none());
        assert_eq!(written.etag.as_deref(), Some("3-x"));
        assert_written_alike(&user);
    }
}
