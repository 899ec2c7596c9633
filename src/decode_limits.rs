//! Limits on repeated fields, checked on the encoded message (protobuf wire format or JSON) before it is
//! decoded: a message of two million empty list items is refused after one allocation-free pass over its
//! bytes instead of after building two million structs in memory.
//!
//! The pass is generic over message descriptors. It only counts; anything malformed is left for the real
//! decoder to report, with its own message.

use std::collections::HashMap;
use std::fmt;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

/// The dynamic JSON types whose values nest freely; their elements are counted per tree.
const DYNAMIC_TYPES: [&str; 3] = [
    "google.protobuf.Struct",
    "google.protobuf.ListValue",
    "google.protobuf.Value",
];
const FIELD_MASK: &str = "google.protobuf.FieldMask";
/// Nesting beyond this is left to the decoders, which refuse it (prost at 100, serde_json at 128).
const MAX_SCAN_DEPTH: usize = 100;

/// Inputs at least this large are checked and decoded on a blocking-capable thread.
pub const LARGE_INPUT_BYTES: usize = 64 * 1024;

/// Runs `work` on an input of `len` bytes; a large one runs with the worker thread handed over to the other
/// tasks meanwhile (on a multi-threaded runtime), so that calls on the same worker are not held up behind it.
pub fn decode_off_worker<R>(len: usize, work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len >= LARGE_INPUT_BYTES && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// How many elements repeated and map fields may hold.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Most elements of one repeated or map field in one message, by full field name
    /// (`users.v1.User.labels`).
    per_field: HashMap<String, usize>,
    /// Most elements of any other repeated or map field in one message.
    default_per_field: usize,
    /// Most values in one tree of `google.protobuf.Struct` / `ListValue` / `Value`.
    dynamic_values: usize,
    /// Most repeated elements in one whole message.
    total: usize,
}

/// A repeated field with more elements than allowed. `field` is its request path (`requests[2].user.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub field: String,
    pub description: String,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// Why a scan stopped early.
enum Stop {
    Exceeded(LimitExceeded),
    /// Not well-formed: the decoder that runs next reports it.
    Malformed,
}

impl From<LimitExceeded> for Stop {
    fn from(e: LimitExceeded) -> Self {
        Stop::Exceeded(e)
    }
}

/// Counts of one scan.
struct Tally<'a> {
    limits: &'a DecodeLimits,
    total: usize,
    /// Values counted in the dynamic tree being scanned, if inside one.
    dynamic: Option<usize>,
    /// The path of the field holding that tree, which an error names.
    dynamic_root: String,
    /// Elements seen per repeated field, by path. Keyed by path rather than per occurrence of the message
    /// holding it, since occurrences of a singular message field merge into one message when decoded.
    counts: HashMap<String, usize>,
}

impl Tally<'_> {
    /// Adds `n` elements to the repeated field at `path`; returns the count before and after.
    fn count(&mut self, path: &str, n: usize) -> (usize, usize) {
        let count = match self.counts.get_mut(path) {
            Some(count) => count,
            None => self.counts.entry(path.to_owned()).or_insert(0),
        };
        let before = *count;
        *count += n;
        (before, *count)
    }
}

impl Tally<'_> {
    fn add_total(&mut self, n: usize) -> Result<(), LimitExceeded> {
        self.total += n;
        if self.total > self.limits.total {
            return Err(LimitExceeded {
                field: "(message)".into(),
                description: format!(
                    "has more than {} repeated elements in all; at most {} are allowed",
                    self.limits.total, self.limits.total
                ),
            });
        }
        Ok(())
    }

    fn add_dynamic(&mut self, n: usize) -> Result<(), LimitExceeded> {
        if let Some(count) = &mut self.dynamic {
            *count += n;
            if *count > self.limits.dynamic_values {
                return Err(LimitExceeded {
                    field: self.dynamic_root.clone(),
                    description: format!(
                        "has more than {} nested values; at most {} are allowed",
                        self.limits.dynamic_values, self.limits.dynamic_values
                    ),
                });
            }
        }
        Ok(())
    }
}

fn too_many(path: &str, count: usize, limit: usize) -> LimitExceeded {
    LimitExceeded {
        field: path.to_owned(),
        description: format!("has {count} items; at most {limit} are allowed"),
    }
}

/// A mask is named as a whole, as its validation names it: `update_mask: has 1001 paths`.
fn too_many_paths(mask_path: &str, count: usize, limit: usize) -> LimitExceeded {
    LimitExceeded {
        field: mask_path.to_owned(),
        description: format!("has {count} paths; at most {limit} are allowed"),
    }
}

fn is_dynamic(message: &MessageDescriptor) -> bool {
    DYNAMIC_TYPES.contains(&message.full_name())
}

fn child_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl DecodeLimits {
    /// Limits with `default_per_field` for every repeated field not named in `per_field`.
    pub fn new(
        per_field: impl IntoIterator<Item = (&'static str, usize)>,
        default_per_field: usize,
        dynamic_values: usize,
        total: usize,
    ) -> DecodeLimits {
        DecodeLimits {
            per_field: per_field.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            default_per_field,
            dynamic_values,
            total,
        }
    }

    fn limit_of(&self, field: &FieldDescriptor) -> usize {
        if is_dynamic(field.parent_message()) {
            // A tree is bounded as a whole; its single lists are not bounded separately.
            return self.dynamic_values;
        }
        self.per_field
            .get(field.full_name())
            .copied()
            .unwrap_or(self.default_per_field)
    }

    /// Checks a protobuf-encoded `message`.
    pub fn check_protobuf(&self, message: &MessageDescriptor, bytes: &[u8]) -> Result<(), LimitExceeded> {
        let mut tally = Tally {
            limits: self,
            total: 0,
            dynamic: None,
            dynamic_root: String::new(),
            counts: HashMap::new(),
        };
        match self.scan_wire(message, bytes, "", 0, &mut tally) {
            Ok(()) | Err(Stop::Malformed) => Ok(()),
            Err(Stop::Exceeded(e)) => Err(e),
        }
    }

    fn scan_wire(
        &self,
        message: &MessageDescriptor,
        mut bytes: &[u8],
        path: &str,
        depth: usize,
        tally: &mut Tally<'_>,
    ) -> Result<(), Stop> {
        if depth > MAX_SCAN_DEPTH {
            return Err(Stop::Malformed);
        }
        let entering_dynamic = is_dynamic(message) && tally.dynamic.is_none();
        if entering_dynamic {
            tally.dynamic = Some(0);
            tally.dynamic_root = path.to_owned();
        }
        while !bytes.is_empty() {
            let key = read_varint(&mut bytes).ok_or(Stop::Malformed)?;
            let number = u32::try_from(key >> 3).map_err(|_| Stop::Malformed)?;
            let wire_type = (key & 7) as u8;
            let payload = take_value(&mut bytes, wire_type).ok_or(Stop::Malformed)?;
            let Some(field) = message.get_field(number) else {
                continue;
            };
            let repeated = field.is_list() || field.is_map();
            let mut index = 0;
            if repeated {
                let added = if wire_type == LEN && is_packable(&field.kind()) {
                    packed_len(&field.kind(), payload).ok_or(Stop::Malformed)?
                } else {
                    1
                };
                let name = child_path(path, field.name());
                let (before, count) = tally.count(&name, added);
                index = before;
                let limit = self.limit_of(&field);
                if count > limit {
                    // Count the rest of this field for an exact figure; no need to look inside.
                    let rest = count_occurrences(bytes, number).unwrap_or(0);
                    if message.full_name() == FIELD_MASK {
                        return Err(too_many_paths(path, count + rest, limit).into());
                    }
                    return Err(too_many(&name, count + rest, limit).into());
                }
                tally.add_total(added)?;
                tally.add_dynamic(added)?;
            }
            if let (Kind::Message(child), LEN) = (field.kind(), wire_type) {
                let child_path = if field.is_list() {
                    format!("{}[{index}]", child_path(path, field.name()))
                } else {
                    child_path(path, field.name())
                };
                self.scan_wire(&child, payload, &child_path, depth + 1, tally)?;
            }
        }
        if entering_dynamic {
            tally.dynamic = None;
        }
        Ok(())
    }

    /// Checks a JSON body that becomes `message` (proto3 JSON mapping).
    pub fn check_json(&self, message: &MessageDescriptor, bytes: &[u8]) -> Result<(), LimitExceeded> {
        let mut tally = Tally {
            limits: self,
            total: 0,
            dynamic: None,
            dynamic_root: String::new(),
            counts: HashMap::new(),
        };
        let mut reader = JsonReader { bytes, at: 0 };
        match self.scan_json_message(message, &mut reader, "", 0, &mut tally) {
            Ok(()) | Err(Stop::Malformed) => Ok(()),
            Err(Stop::Exceeded(e)) => Err(e),
        }
    }

    fn scan_json_message(
        &self,
        message: &MessageDescriptor,
        reader: &mut JsonReader<'_>,
        path: &str,
        depth: usize,
        tally: &mut Tally<'_>,
    ) -> Result<(), Stop> {
        if depth > MAX_SCAN_DEPTH {
            return Err(Stop::Malformed);
        }
        if is_dynamic(message) {
            if tally.dynamic.is_some() {
                return self.scan_json_dynamic(reader, depth, tally);
            }
            tally.dynamic = Some(0);
            tally.dynamic_root = path.to_owned();
            let result = self.scan_json_dynamic(reader, depth, tally);
            tally.dynamic = None;
            return result;
        }
        if message.full_name() == FIELD_MASK && reader.peek() == Some(b'"') {
            // `"a,b.c"`: one path per comma-separated part.
            let limit = self
                .per_field
                .get("google.protobuf.FieldMask.paths")
                .copied()
                .unwrap_or(self.default_per_field);
            let (start, end) = reader.string_span()?;
            let paths = 1 + reader.bytes[start..end].iter().filter(|b| **b == b',').count();
            if paths > limit {
                return Err(too_many_paths(path, paths, limit).into());
            }
            tally.add_total(paths)?;
            return Ok(());
        }
        if reader.peek() != Some(b'{') {
            return reader.skip_value(depth);
        }
        reader.each_element(|reader, key| {
            let key = reader.text(key.ok_or(Stop::Malformed)?)?;
            let field = message
                .get_field_by_name(&key)
                .or_else(|| message.get_field_by_json_name(&key));
            match field {
                Some(field) if reader.peek() != Some(b'n') => self.scan_json_field(&field, reader, path, depth, tally),
                // Unknown fields and nulls are the JSON decoder's to judge.
                _ => reader.skip_value(depth + 1),
            }
        })
    }

    fn scan_json_field(
        &self,
        field: &FieldDescriptor,
        reader: &mut JsonReader<'_>,
        path: &str,
        depth: usize,
        tally: &mut Tally<'_>,
    ) -> Result<(), Stop> {
        let name = child_path(path, field.name());
        if !(field.is_list() || field.is_map()) {
            return match field.kind() {
                Kind::Message(child) => self.scan_json_message(&child, reader, &name, depth + 1, tally),
                _ => reader.skip_value(depth + 1),
            };
        }
        if reader.peek() != Some(if field.is_map() { b'{' } else { b'[' }) {
            return reader.skip_value(depth + 1);
        }
        let limit = self.limit_of(field);
        let element_kind = match field.kind() {
            Kind::Message(entry) if field.is_map() => entry.map_entry_value_field().kind(),
            other => other,
        };
        reader.each_element(|reader, _| {
            // A field given twice counts once per element in all.
            let (index, count) = tally.count(&name, 1);
            if count > limit {
                // Read on for an exact figure in the error.
                reader.skip_value(depth + 2)?;
                let mut rest = 0;
                while reader.next_byte() == Some(b',') {
                    reader.skip_member(depth + 2)?;
                    rest += 1;
                }
                return Err(too_many(&name, count + rest, limit).into());
            }
            tally.add_total(1)?;
            match &element_kind {
                Kind::Message(child) if reader.peek() != Some(b'n') => {
                    let element = if field.is_list() {
                        format!("{name}[{index}]")
                    } else {
                        name.clone()
                    };
                    self.scan_json_message(child, reader, &element, depth + 2, tally)
                }
                _ => reader.skip_value(depth + 2),
            }
        })
    }

    /// Any JSON value inside a Struct/ListValue/Value tree: every member and element counts.
    fn scan_json_dynamic(&self, reader: &mut JsonReader<'_>, depth: usize, tally: &mut Tally<'_>) -> Result<(), Stop> {
        if depth > MAX_SCAN_DEPTH {
            return Err(Stop::Malformed);
        }
        if !matches!(reader.peek(), Some(b'{' | b'[')) {
            return reader.skip_value(depth);
        }
        reader.each_element(|reader, _| {
            tally.add_total(1)?;
            tally.add_dynamic(1)?;
            self.scan_json_dynamic(reader, depth + 1, tally)
        })
    }
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Takes one field value of `wire_type` off the front of `bytes`: the payload of a length-delimited field, or
/// the raw bytes of a scalar.
fn take_value<'a>(bytes: &mut &'a [u8], wire_type: u8) -> Option<&'a [u8]> {
    let len = match wire_type {
        VARINT => {
            let start = *bytes;
            read_varint(bytes)?;
            return Some(&start[..start.len() - bytes.len()]);
        }
        I64 => 8,
        I32 => 4,
        LEN => usize::try_from(read_varint(bytes)?).ok()?,
        // Groups are not used by proto3 messages; the decoder refuses them.
        _ => return None,
    };
    if bytes.len() < len {
        return None;
    }
    let (value, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(value)
}

fn is_packable(kind: &Kind) -> bool {
    !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_))
}

/// Elements of a packed repeated scalar field.
fn packed_len(kind: &Kind, payload: &[u8]) -> Option<usize> {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => Some(payload.len() / 8),
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => Some(payload.len() / 4),
        _ => Some(payload.iter().filter(|b| **b & 0x80 == 0).count()),
    }
}

/// Occurrences of field `number` in the rest of a message.
fn count_occurrences(mut bytes: &[u8], number: u32) -> Option<usize> {
    let mut count = 0;
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        take_value(&mut bytes, (key & 7) as u8)?;
        if key >> 3 == u64::from(number) {
            count += 1;
        }
    }
    Some(count)
}

/// A forward-only reader of JSON tokens that skips values without building them.
struct JsonReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Where a string's contents (between its quotes) lie in the input.
type Span = (usize, usize);

impl JsonReader<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    /// The string at the cursor; the cursor moves past it.
    fn string_span(&mut self) -> Result<Span, Stop> {
        if self.next_byte() != Some(b'"') {
            return Err(Stop::Malformed);
        }
        let start = self.at;
        loop {
            match self.bytes.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok((start, self.at - 1));
                }
                Some(b'\\') => self.at += 2,
                Some(_) => self.at += 1,
                None => return Err(Stop::Malformed),
            }
        }
    }

    /// A string's text, escapes decoded.
    fn text(&self, (start, end): Span) -> Result<String, Stop> {
        let raw = &self.bytes[start..end];
        if raw.contains(&b'\\') {
            serde_json::from_slice::<String>(&self.bytes[start - 1..=end]).map_err(|_| Stop::Malformed)
        } else {
            String::from_utf8(raw.to_vec()).map_err(|_| Stop::Malformed)
        }
    }

    /// Walks the object or array at the cursor, calling `element` at each member's value (with the member's
    /// key) or at each array element (with none); the cursor ends past the closing bracket.
    fn each_element(
        &mut self,
        mut element: impl FnMut(&mut Self, Option<Span>) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let close = match self.next_byte() {
            Some(b'{') => b'}',
            Some(b'[') => b']',
            _ => return Err(Stop::Malformed),
        };
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            let key = if close == b'}' {
                let key = self.string_span()?;
                if self.next_byte() != Some(b':') {
                    return Err(Stop::Malformed);
                }
                Some(key)
            } else {
                None
            };
            element(self, key)?;
            match self.next_byte() {
                Some(b',') => continue,
                Some(b) if b == close => return Ok(()),
                _ => return Err(Stop::Malformed),
            }
        }
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), Stop> {
        if depth > MAX_SCAN_DEPTH {
            return Err(Stop::Malformed);
        }
        match self.peek() {
            Some(b'"') => self.string_span().map(|_| ()),
            Some(b'{' | b'[') => self.each_element(|reader, _| reader.skip_value(depth + 1)),
            Some(_) => {
                // A number or a literal: up to the next delimiter.
                let start = self.at;
                while let Some(b) = self.bytes.get(self.at) {
                    if matches!(b, b',' | b'}' | b']' | b':' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
                if self.at == start { Err(Stop::Malformed) } else { Ok(()) }
            }
            None => Err(Stop::Malformed),
        }
    }

    /// Skips an array element, or an object member with its key.
    fn skip_member(&mut self, depth: usize) -> Result<(), Stop> {
        let checkpoint = self.at;
        if self.peek() == Some(b'"') {
            self.string_span()?;
            if self.peek() == Some(b':') {
                self.at += 1;
            } else {
                // It was a string element, not a key.
                self.at = checkpoint;
            }
        }
        self.skip_value(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_reflect::DescriptorPool;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors")
    }

    fn limits() -> DecodeLimits {
        DecodeLimits::new(
            [
                ("users.v1.BatchUpdateUsersRequest.requests", 3),
                ("users.v1.User.labels", 2),
                ("google.protobuf.FieldMask.paths", 2),
            ],
            5,
            6,
            40,
        )
    }

    fn batch_of(n: usize) -> crate::pb::BatchUpdateUsersRequest {
        crate::pb::BatchUpdateUsersRequest {
            requests: (0..n).map(|_| crate::pb::UpdateUserRequest::default()).collect(),
        }
    }

    #[test]
    fn protobuf_repeated_fields_are_counted_before_decoding() {
        let pool = pool();
        let batch = pool
            .get_message_by_name("users.v1.BatchUpdateUsersRequest")
            .expect("type");
        let limits = limits();
        assert_eq!(limits.check_protobuf(&batch, &batch_of(3).encode_to_vec()), Ok(()));
        let err = limits
            .check_protobuf(&batch, &batch_of(7).encode_to_vec())
            .expect_err("too many");
        assert_eq!(err.field, "requests");
        assert_eq!(err.description, "has 7 items; at most 3 are allowed");

        let mut one = batch_of(1);
        let user = crate::pb::User {
            labels: [("a", "1"), ("b", "2"), ("c", "3")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Default::default()
        };
        one.requests[0].user = Some(user);
        one.requests[0].update_mask = Some(prost_types::FieldMask {
            paths: vec!["labels".into()],
        });
        let err = limits.check_protobuf(&batch, &one.encode_to_vec()).expect_err("labels");
        assert_eq!(err.field, "requests[0].user.labels");

        // Two occurrences of one singular message field merge when decoded, so their lists add up.
        let two_labels = crate::pb::UpdateUserRequest {
            user: Some(crate::pb::User {
                labels: [("a".into(), "1".into()), ("b".into(), "2".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let update = pool.get_message_by_name("users.v1.UpdateUserRequest").expect("type");
        assert_eq!(limits.check_protobuf(&update, &two_labels), Ok(()));
        let err = limits
            .check_protobuf(&update, &[two_labels.clone(), two_labels].concat())
            .expect_err("merged labels");
        assert_eq!(err.field, "user.labels");
    }

    #[test]
    fn protobuf_dynamic_trees_are_bounded_as_a_whole() {
        let pool = pool();
        let user_type = pool.get_message_by_name("users.v1.User").expect("type");
        let list = |n: usize| prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(prost_types::ListValue {
                values: (0..n)
                    .map(|_| prost_types::Value {
                        kind: Some(prost_types::value::Kind::BoolValue(true)),
                    })
                    .collect(),
            })),
        };
        let attributes = |lists: usize, each: usize| crate::pb::User {
            attributes: Some(prost_types::Struct {
                fields: (0..lists).map(|i| (format!("k{i}"), list(each))).collect(),
            }),
            ..Default::default()
        };
        // 2 keys + 2×2 elements = 6 values.
        assert_eq!(
            limits().check_protobuf(&user_type, &attributes(2, 2).encode_to_vec()),
            Ok(())
        );
        let err = limits()
            .check_protobuf(&user_type, &attributes(2, 3).encode_to_vec())
            .expect_err("8 values");
        assert_eq!(err.field, "attributes");
    }

    #[test]
    fn malformed_input_is_left_to_the_decoder() {
        let pool = pool();
        let batch = pool
            .get_message_by_name("users.v1.BatchUpdateUsersRequest")
            .expect("type");
        assert_eq!(limits().check_protobuf(&batch, &[0x0a, 0x05, 0x01]), Ok(()));
        assert_eq!(limits().check_protobuf(&batch, &[0xff; 12]), Ok(()));
        assert_eq!(limits().check_json(&batch, b"{\"requests\": [{}, "), Ok(()));
        assert_eq!(limits().check_json(&batch, b"[[[[[[[[[["), Ok(()));
    }

    #[test]
    fn json_repeated_fields_maps_masks_and_trees_are_counted() {
        let pool = pool();
        let batch = pool
            .get_message_by_name("users.v1.BatchUpdateUsersRequest")
            .expect("type");
        let limits = limits();
        assert_eq!(limits.check_json(&batch, br#"{"requests": [{}, {}, {}]}"#), Ok(()));
        let err = limits
            .check_json(&batch, br#"{"requests": [{}, {}, {}, {}, {"user": {}}, {}]}"#)
            .expect_err("too many");
        assert_eq!(
            (err.field.as_str(), err.description.as_str()),
            ("requests", "has 6 items; at most 3 are allowed")
        );
        let err = limits
            .check_json(
                &batch,
                br#"{"requests": [{"user": {"labels": {"a": "1", "b\"": "2", "c": "3"}}}]}"#,
            )
            .expect_err("labels");
        assert_eq!(err.field, "requests[0].user.labels");
        let err = limits
            .check_json(&batch, br#"{"requests": [{}, {"updateMask": "a,b,c"}]}"#)
            .expect_err("mask");
        assert_eq!(err.field, "requests[1].update_mask");
        let err = limits
            .check_json(
                &batch,
                br#"{"requests": [{"user": {"attributes": {"a": [1, [2, {"b": 3}]], "c": null}}}]}"#,
            )
            .expect_err("tree");
        assert_eq!(err.field, "requests[0].user.attributes");
        // Unknown keys and strings with brackets inside are skipped, not counted.
        assert_eq!(
            limits.check_json(
                &batch,
                br#"{"nope": [1,2,3,4,5,6,7], "requests": [{"user": {"givenName": "[[{"}}]}"#
            ),
            Ok(())
        );
    }
}
