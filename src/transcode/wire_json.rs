//! REST and Connect JSON answers written straight from the answer's protobuf bytes.
//!
//! The reflective writer (`json::RestJson`) needs a `DynamicMessage`: every answer decoded into a tree of
//! allocated values (a map per message, a `String` per field) only to be walked once, which was most of what a
//! page of users cost over REST beyond gRPC. This writer reads the wire bytes in place, with a plan per message
//! type made once (the JSON key of each field, its role, the JSON of its default). It writes exactly what the
//! reflective writer writes; where that would take more than reading the bytes (well-known types other than
//! timestamps and masks, which it hands to the reflective writer one sub-message at a time) or where the bytes
//! are not what prost writes (a singular message or a oneof given twice, a map key given twice, a wire type the
//! field does not have, nesting past prost's limit, bytes that are no message, even in an input-only field), it
//! gives up and the caller answers with the reflective writer. A sub-message handed to the reflective writer is
//! decoded on its own, with the decoder's whole depth budget: a `Struct` nested right at that limit is written
//! where decoding the whole answer would refuse it.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;

use prost::encoding::{WireType, decode_key, decode_varint};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::json::{self, Role};
use super::rule::{HttpBinding, is_well_known};

/// The wire writer cannot write these bytes as the reflective writer would: use that one.
#[derive(Debug)]
pub struct GiveUp;

pub(crate) type Written = Result<(), GiveUp>;

impl From<String> for GiveUp {
    fn from(_: String) -> GiveUp {
        GiveUp
    }
}

/// An answer's JSON and the top-level string field `beside` (an etag, a streamed event's cursor; see
/// [`string_field`]), read from the answer's bytes by this writer where it can, else by decoding the bytes for the
/// reflective writer, which writes the same (the `rest_answer` fuzz target holds the two to it). `response_body`
/// names the one field a REST binding answers with, if it has one. Fails only on bytes that do not decode.
pub fn answer_json(
    descriptor: &MessageDescriptor,
    response_body: Option<&str>,
    bytes: &[u8],
    beside: Option<&str>,
) -> Result<(Vec<u8>, Option<String>), String> {
    let from_wire = body_json(descriptor, response_body, bytes).and_then(|json| {
        let read = match beside {
            Some(name) => string_field(descriptor, bytes, name)?,
            None => None,
        };
        Ok((json, read))
    });
    match from_wire {
        Ok(answer) => Ok(answer),
        Err(GiveUp) => {
            let message =
                DynamicMessage::decode(descriptor.clone(), bytes).map_err(|e| format!("decoding an answer: {e}"))?;
            let json = json::body_json(&message, response_body)?;
            Ok((json, beside.and_then(|name| json::string_field(&message, name))))
        }
    }
}

/// A REST answer's body (the whole message, or its `response_body` field), from the answer's bytes.
pub fn response_json(binding: &HttpBinding, bytes: &[u8]) -> Result<Vec<u8>, GiveUp> {
    body_json(&binding.rpc.output(), binding.response_body.as_deref(), bytes)
}

/// A whole message as REST answers it (the body of a Connect JSON answer), from its bytes.
pub fn message_json(descriptor: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, GiveUp> {
    body_json(descriptor, None, bytes)
}

/// The whole message, or its field `response_body`, from the message's bytes.
fn body_json(descriptor: &MessageDescriptor, response_body: Option<&str>, bytes: &[u8]) -> Result<Vec<u8>, GiveUp> {
    let plan = plan(descriptor);
    // A user's JSON is about 3.4 times its protobuf (keys, defaults written out, RFC 3339 times): room for that
    // up front, so a page is not copied again when the buffer grows past half its size.
    let mut body = Vec::with_capacity(bytes.len() * 4 + 64);
    match response_body {
        None => write_message(&mut body, &plan, bytes, 0)?,
        Some(name) => {
            let index = plan.index_by_name(name).ok_or(GiveUp)?;
            let field = &plan.fields[index];
            let (count, value) = last_occurrence(&plan, bytes, index)?;
            // Given twice (a message merges, a string's first value must be checked too), or a oneof member
            // (a later sibling clears it): more than this pass does.
            if count > 1 || field.oneof.is_some() {
                return Err(GiveUp);
            }
            match (&field.kind, value) {
                (Kind::Message(_), None) if !field.list && !field.map => {
                    write_message(&mut body, field.child(), &[], 1)?
                }
                (Kind::Message(_), Some(Raw::Len(inner))) if !field.list && !field.map => {
                    write_message(&mut body, field.child(), inner, 1)?
                }
                (Kind::String, None) if !field.list => body.extend_from_slice(b"\"\""),
                (Kind::String, Some(Raw::Len(text))) if !field.list => write_string(&mut body, text)?,
                _ => return Err(GiveUp),
            }
        }
    }
    Ok(body)
}

/// The value of the top-level string field `name` (an answer's `etag`, a streamed event's `cursor`), as a
/// decoder reads it: `None` when the message type has no such field, empty when the field is absent.
pub fn string_field(descriptor: &MessageDescriptor, bytes: &[u8], name: &str) -> Result<Option<String>, GiveUp> {
    let plan = plan(descriptor);
    let Some(index) = plan.index_by_name(name) else {
        return Ok(None);
    };
    let field = &plan.fields[index];
    if !matches!(field.kind, Kind::String) || field.list || field.oneof.is_some() {
        return Err(GiveUp);
    }
    match last_occurrence(&plan, bytes, index)? {
        (1, Some(Raw::Len(text))) => Ok(Some(utf8(text)?.to_owned())),
        (0, _) => Ok(Some(String::new())),
        // Given twice, every value would have to be checked: the reflective read does that.
        _ => Err(GiveUp),
    }
}

/// One field of a message type, as the wire writer needs it.
struct FieldPlan {
    descriptor: FieldDescriptor,
    number: u32,
    /// `,"jsonName":`, escaped once; the first field written drops the comma.
    key: Vec<u8>,
    role: Role,
    kind: Kind,
    list: bool,
    map: bool,
    /// Written only when present (messages, `optional`, oneof members), as the reflective writer does.
    presence: bool,
    /// The index of the (non-synthetic) oneof the field belongs to.
    oneof: Option<usize>,
    /// What the field is written as when absent (fields without presence).
    default_json: Vec<u8>,
    /// The plan of the field's message type (or, for maps, of the entry), made when first needed.
    child: OnceCell<Rc<Plan>>,
}

impl FieldPlan {
    fn child(&self) -> &Plan {
        self.child.get_or_init(|| match &self.kind {
            Kind::Message(message) => plan(message),
            _ => Rc::new(Plan::empty()),
        })
    }
}

/// The fields of a message type in the order the reflective writer writes them.
struct Plan {
    descriptor: Option<MessageDescriptor>,
    special: Special,
    fields: Vec<FieldPlan>,
    /// (field number, index in `fields`), sorted by number.
    by_number: Vec<(u32, usize)>,
    /// The index in `fields` of each field number below [`DENSE_NUMBERS`] up to the largest such number
    /// (`NO_FIELD` where there is none), so the common case is one load instead of a search; numbers past its
    /// end are searched in `by_number`.
    dense: Vec<u16>,
    /// What every field writes when absent, in field order: `,"jsonName":<default_json>` for a field without
    /// presence, nothing for one with presence or a hidden one. The absent fields between two present ones are
    /// one copy of `absent[absent_at[from]..absent_at[to]]`.
    absent: Vec<u8>,
    /// Where each field's part of `absent` starts; one entry more than there are fields.
    absent_at: Vec<usize>,
}

/// Field numbers looked up through `Plan::dense`; larger ones are searched in `by_number`.
const DENSE_NUMBERS: u32 = 256;
/// `Plan::dense` where no field has the number.
const NO_FIELD: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Timestamp,
    /// Another well-known type: written by the reflective writer.
    WellKnown,
}

impl Plan {
    fn empty() -> Plan {
        Plan {
            descriptor: None,
            special: Special::WellKnown,
            fields: Vec::new(),
            by_number: Vec::new(),
            dense: Vec::new(),
            absent: Vec::new(),
            absent_at: vec![0],
        }
    }

    fn of(message: &MessageDescriptor) -> Plan {
        let special = if message.full_name() == "google.protobuf.Timestamp" {
            Special::Timestamp
        } else if is_well_known(message) {
            Special::WellKnown
        } else {
            Special::None
        };
        let fields: Vec<FieldPlan> = message
            .fields()
            .map(|field| {
                let mut key = vec![b','];
                write_str(&mut key, field.json_name());
                key.push(b':');
                let presence = field.supports_presence();
                let mut default_json = Vec::new();
                if !presence && json::write_field_json(&mut default_json, &field.default_value(), &field).is_err() {
                    default_json = b"null".to_vec();
                }
                FieldPlan {
                    number: field.number(),
                    key,
                    role: json::role_of(&field),
                    kind: field.kind(),
                    list: field.is_list(),
                    map: field.is_map(),
                    presence,
                    oneof: field
                        .containing_oneof()
                        .filter(|oneof| !oneof.is_synthetic())
                        .and_then(|oneof| message.oneofs().position(|o| o.name() == oneof.name())),
                    default_json,
                    child: OnceCell::new(),
                    descriptor: field,
                }
            })
            .collect();
        let mut by_number: Vec<(u32, usize)> = fields.iter().enumerate().map(|(i, f)| (f.number, i)).collect();
        by_number.sort_unstable();
        let mut dense = Vec::new();
        for &(number, index) in by_number.iter().filter(|&&(number, _)| number < DENSE_NUMBERS) {
            // A message of that many fields keeps to the search.
            let (Ok(number), Ok(index)) = (usize::try_from(number), u16::try_from(index)) else {
                dense.clear();
                break;
            };
            if index == NO_FIELD {
                dense.clear();
                break;
            }
            if dense.len() <= number {
                dense.resize(number + 1, NO_FIELD);
            }
            dense[number] = index;
        }
        let mut absent = Vec::new();
        let mut absent_at = vec![0];
        for field in &fields {
            if !field.presence && field.role != Role::Hidden {
                absent.extend_from_slice(&field.key);
                absent.extend_from_slice(&field.default_json);
            }
            absent_at.push(absent.len());
        }
        Plan {
            descriptor: Some(message.clone()),
            special,
            fields,
            by_number,
            dense,
            absent,
            absent_at,
        }
    }

    fn index_of(&self, number: u32) -> Option<usize> {
        if let Some(&index) = usize::try_from(number).ok().and_then(|n| self.dense.get(n)) {
            return (index != NO_FIELD).then_some(usize::from(index));
        }
        self.by_number
            .binary_search_by_key(&number, |&(n, _)| n)
            .ok()
            .map(|at| self.by_number[at].1)
    }

    fn index_by_name(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.descriptor.name() == name)
    }
}

thread_local! {
    /// Plans by message name, made once per thread.
    static PLANS: std::cell::RefCell<HashMap<String, Rc<Plan>>> = std::cell::RefCell::default();
}

fn plan(message: &MessageDescriptor) -> Rc<Plan> {
    PLANS.with(|plans| {
        if let Some(plan) = plans.borrow().get(message.full_name()) {
            return plan.clone();
        }
        let plan = Rc::new(Plan::of(message));
        plans.borrow_mut().insert(message.full_name().to_owned(), plan.clone());
        plan
    })
}

/// One value on the wire.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

/// Reads one field (key and value) off the front of `buf`.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Raw<'a>), GiveUp> {
    let (number, wire) = decode_key(buf).map_err(|_| GiveUp)?;
    let raw = match wire {
        WireType::Varint => Raw::Varint(decode_varint(buf).map_err(|_| GiveUp)?),
        WireType::SixtyFourBit => {
            let (value, rest) = buf.split_first_chunk::<8>().ok_or(GiveUp)?;
            *buf = rest;
            Raw::Fixed64(u64::from_le_bytes(*value))
        }
        WireType::ThirtyTwoBit => {
            let (value, rest) = buf.split_first_chunk::<4>().ok_or(GiveUp)?;
            *buf = rest;
            Raw::Fixed32(u32::from_le_bytes(*value))
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(buf).map_err(|_| GiveUp)?).map_err(|_| GiveUp)?;
            if len > buf.len() {
                return Err(GiveUp);
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Raw::Len(value)
        }
        WireType::StartGroup | WireType::EndGroup => return Err(GiveUp),
    };
    Ok((number, raw))
}

/// How many times field `index` occurs in a message's bytes, and its last value (the one a decoder keeps for a
/// singular scalar).
fn last_occurrence<'a>(plan: &Plan, mut bytes: &'a [u8], index: usize) -> Result<(usize, Option<Raw<'a>>), GiveUp> {
    let number = plan.fields[index].number;
    let (mut count, mut last) = (0, None);
    while !bytes.is_empty() {
        let (n, raw) = next_field(&mut bytes)?;
        if n == number {
            count += 1;
            last = Some(raw);
        }
    }
    Ok((count, last))
}

fn utf8(bytes: &[u8]) -> Result<&str, GiveUp> {
    std::str::from_utf8(bytes).map_err(|_| GiveUp)
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A string field's bytes as a JSON string. Most values are printable ASCII without a quote or a backslash:
/// valid UTF-8 that JSON writes as it is, so they are copied after one pass over them (a fold without an early
/// exit, which the compiler can vectorize); anything else is checked and escaped as the reflective writer does.
pub(crate) fn write_string(out: &mut Vec<u8>, bytes: &[u8]) -> Written {
    let plain = bytes.iter().fold(true, |plain, &b| {
        plain & (0x20..0x80).contains(&b) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        write_str(out, utf8(bytes)?);
    }
    Ok(())
}

/// How deep messages may nest before the writer gives up: prost's own recursion limit.
const MAX_DEPTH: usize = 100;

fn write_message(out: &mut Vec<u8>, plan: &Plan, bytes: &[u8], depth: usize) -> Written {
    if depth > MAX_DEPTH {
        return Err(GiveUp);
    }
    match plan.special {
        Special::None => {}
        Special::Timestamp => return write_timestamp(out, bytes),
        Special::WellKnown => {
            let descriptor = plan.descriptor.clone().ok_or(GiveUp)?;
            let message = DynamicMessage::decode(descriptor, bytes).map_err(|_| GiveUp)?;
            return Ok(json::write_message_json(out, &message)?);
        }
    }
    // The fields present, in wire order, then grouped by field (a stable sort keeps each field's own order).
    let mut present: Vec<(usize, Raw<'_>)> = Vec::with_capacity(plan.fields.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        let (number, raw) = next_field(&mut rest)?;
        // Unknown fields are not written, as the reflective writer does not write them.
        if let Some(index) = plan.index_of(number) {
            present.push((index, raw));
        }
    }
    if !present.is_sorted_by_key(|&(index, _)| index) {
        present.sort_by_key(|&(index, _)| index);
    }
    let mut oneofs_seen: u64 = 0;
    let mut at = 0;
    out.push(b'{');
    let mut first = true;
    let mut index = 0;
    while index < plan.fields.len() {
        let next_present = present.get(at).map_or(plan.fields.len(), |&(next, _)| next);
        if index < next_present {
            // The absent fields up to the next present one, in one copy; the first field written drops the comma
            // its key starts with.
            let run = &plan.absent[plan.absent_at[index]..plan.absent_at[next_present]];
            if !run.is_empty() {
                out.extend_from_slice(&run[usize::from(first)..]);
                first = false;
            }
            index = next_present;
            continue;
        }
        let field = &plan.fields[index];
        let start = at;
        while at < present.len() && present[at].0 == index {
            at += 1;
        }
        index += 1;
        let values = &present[start..at];
        if let Some(oneof) = field.oneof {
            // A decoder keeps only the last member of a oneof it reads; that takes more than this pass.
            let bit = 1u64
                .checked_shl(u32::try_from(oneof).map_err(|_| GiveUp)?)
                .ok_or(GiveUp)?;
            if oneofs_seen & bit != 0 {
                return Err(GiveUp);
            }
            oneofs_seen |= bit;
        }
        if field.role == Role::Hidden {
            // Never written, but a decoder checks it: written aside and dropped, so that bad bytes give up.
            write_value(&mut Vec::new(), field, values, depth)?;
            continue;
        }
        out.extend_from_slice(&field.key[usize::from(first)..]);
        first = false;
        write_value(out, field, values, depth)?;
    }
    out.push(b'}');
    Ok(())
}

/// The JSON of a field that is present: its map, its list or its one value.
fn write_value(out: &mut Vec<u8>, field: &FieldPlan, values: &[(usize, Raw<'_>)], depth: usize) -> Written {
    if field.map {
        write_map(out, field, values)
    } else if field.list {
        write_list(out, field, values, depth)
    } else {
        write_singular(out, field, values, depth)
    }
}

fn write_singular(out: &mut Vec<u8>, field: &FieldPlan, values: &[(usize, Raw<'_>)], depth: usize) -> Written {
    let Some(&(_, last)) = values.last() else {
        return Err(GiveUp);
    };
    match &field.kind {
        Kind::Message(_) => {
            // Several occurrences of a singular message merge into one: more than this pass does.
            let ([_], Raw::Len(inner)) = (values, last) else {
                return Err(GiveUp);
            };
            if field.role == Role::Mask {
                write_mask(out, inner)
            } else {
                write_message(out, field.child(), inner, depth + 1)
            }
        }
        kind => {
            // The decoder keeps the last value but checks every one (its wire type, its UTF-8).
            if let Some((_, earlier)) = values.split_last() {
                let mut scratch = Vec::new();
                for &(_, raw) in earlier {
                    write_scalar(&mut scratch, kind, raw)?;
                }
            }
            write_scalar(out, kind, last)
        }
    }
}

fn write_list(out: &mut Vec<u8>, field: &FieldPlan, values: &[(usize, Raw<'_>)], depth: usize) -> Written {
    out.push(b'[');
    let mut first = true;
    let mut separate = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    for &(_, raw) in values {
        match (&field.kind, raw) {
            (Kind::Message(_), Raw::Len(inner)) => {
                separate(out);
                write_message(out, field.child(), inner, depth + 1)?;
            }
            (Kind::String | Kind::Bytes, raw) => {
                separate(out);
                write_scalar(out, &field.kind, raw)?;
            }
            // A packed run of numbers.
            (kind, Raw::Len(mut packed)) => {
                while !packed.is_empty() {
                    let raw = match packed_wire(kind)? {
                        WireType::Varint => Raw::Varint(decode_varint(&mut packed).map_err(|_| GiveUp)?),
                        WireType::SixtyFourBit => {
                            let (value, rest) = packed.split_first_chunk::<8>().ok_or(GiveUp)?;
                            packed = rest;
                            Raw::Fixed64(u64::from_le_bytes(*value))
                        }
                        _ => {
                            let (value, rest) = packed.split_first_chunk::<4>().ok_or(GiveUp)?;
                            packed = rest;
                            Raw::Fixed32(u32::from_le_bytes(*value))
                        }
                    };
                    separate(out);
                    write_scalar(out, kind, raw)?;
                }
            }
            (kind, raw) => {
                separate(out);
                write_scalar(out, kind, raw)?;
            }
        }
    }
    out.push(b']');
    Ok(())
}

/// The wire type of one element of a packed run of `kind`.
fn packed_wire(kind: &Kind) -> Result<WireType, GiveUp> {
    Ok(match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Sint32 | Kind::Sint64 | Kind::Bool => {
            WireType::Varint
        }
        Kind::Enum(_) => WireType::Varint,
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => WireType::SixtyFourBit,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => WireType::ThirtyTwoBit,
        Kind::String | Kind::Bytes | Kind::Message(_) => return Err(GiveUp),
    })
}

/// A map key as a decoder keeps it, to find a key given twice (the last entry wins, which this pass does not do).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Text(&'a str),
    Number(i128),
}

fn write_map(out: &mut Vec<u8>, field: &FieldPlan, values: &[(usize, Raw<'_>)]) -> Written {
    let entry = field.child();
    let (Some(key_index), Some(value_index)) = (entry.index_of(1), entry.index_of(2)) else {
        return Err(GiveUp);
    };
    let (key_field, value_field) = (&entry.fields[key_index], &entry.fields[value_index]);
    if matches!(value_field.kind, Kind::Message(_)) {
        return Err(GiveUp);
    }
    let mut keys = Vec::with_capacity(values.len());
    out.push(b'{');
    for (i, &(_, raw)) in values.iter().enumerate() {
        let Raw::Len(mut bytes) = raw else {
            return Err(GiveUp);
        };
        let (mut key, mut value) = (None, None);
        while !bytes.is_empty() {
            // A key or value given twice within an entry: the decoder checks both, this pass only one.
            match next_field(&mut bytes)? {
                (1, raw) if key.is_none() => key = Some(raw),
                (2, raw) if value.is_none() => value = Some(raw),
                (1 | 2, _) => return Err(GiveUp),
                _ => {}
            }
        }
        if i > 0 {
            out.push(b',');
        }
        keys.push(write_map_key(out, &key_field.kind, key)?);
        out.push(b':');
        match value {
            Some(raw) => write_scalar(out, &value_field.kind, raw)?,
            None => out.extend_from_slice(&value_field.default_json),
        }
    }
    out.push(b'}');
    if keys.len() > 1 {
        keys.sort_unstable();
        if keys.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(GiveUp);
        }
    }
    Ok(())
}

/// Writes a map key as its JSON object key (numbers and booleans as strings) and returns it.
fn write_map_key<'a>(out: &mut Vec<u8>, kind: &Kind, raw: Option<Raw<'a>>) -> Result<Key<'a>, GiveUp> {
    if matches!(kind, Kind::String) {
        let text = match raw {
            Some(Raw::Len(bytes)) => utf8(bytes)?,
            None => "",
            Some(_) => return Err(GiveUp),
        };
        write_str(out, text);
        return Ok(Key::Text(text));
    }
    let value = match raw {
        Some(raw) => scalar(kind, raw)?,
        None => kind.default_value(),
    };
    let number = match value {
        Value::Bool(v) => i128::from(v),
        Value::I32(v) => i128::from(v),
        Value::I64(v) => i128::from(v),
        Value::U32(v) => i128::from(v),
        Value::U64(v) => i128::from(v),
        _ => return Err(GiveUp),
    };
    out.push(b'"');
    if let Value::Bool(v) = value {
        out.extend_from_slice(if v { b"true" } else { b"false" });
    } else {
        out.extend_from_slice(number.to_string().as_bytes());
    }
    out.push(b'"');
    Ok(Key::Number(number))
}

/// A scalar from the wire, as a decoder reads it for a field of `kind`.
fn scalar(kind: &Kind, raw: Raw<'_>) -> Result<Value, GiveUp> {
    Ok(match (kind, raw) {
        (Kind::Int32, Raw::Varint(v)) => Value::I32(v as i32),
        (Kind::Int64, Raw::Varint(v)) => Value::I64(v as i64),
        (Kind::Uint32, Raw::Varint(v)) => Value::U32(v as u32),
        (Kind::Uint64, Raw::Varint(v)) => Value::U64(v),
        (Kind::Sint32, Raw::Varint(v)) => {
            let v = v as u32;
            Value::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        (Kind::Sint64, Raw::Varint(v)) => Value::I64(((v >> 1) as i64) ^ -((v & 1) as i64)),
        (Kind::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Kind::Enum(_), Raw::Varint(v)) => Value::EnumNumber(v as i32),
        (Kind::Fixed32, Raw::Fixed32(v)) => Value::U32(v),
        (Kind::Sfixed32, Raw::Fixed32(v)) => Value::I32(v as i32),
        (Kind::Float, Raw::Fixed32(v)) => Value::F32(f32::from_bits(v)),
        (Kind::Fixed64, Raw::Fixed64(v)) => Value::U64(v),
        (Kind::Sfixed64, Raw::Fixed64(v)) => Value::I64(v as i64),
        (Kind::Double, Raw::Fixed64(v)) => Value::F64(f64::from_bits(v)),
        _ => return Err(GiveUp),
    })
}

fn write_scalar(out: &mut Vec<u8>, kind: &Kind, raw: Raw<'_>) -> Written {
    match (kind, raw) {
        (Kind::String, Raw::Len(bytes)) => write_string(out, bytes),
        (Kind::Bytes, Raw::Len(bytes)) => {
            use base64::Engine;
            out.push(b'"');
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes());
            out.push(b'"');
            Ok(())
        }
        (Kind::String | Kind::Bytes | Kind::Message(_), _) => Err(GiveUp),
        (kind, raw) => Ok(json::write_scalar_json(out, &scalar(kind, raw)?, kind)?),
    }
}

/// A `google.protobuf.Timestamp` in RFC 3339, as the reflective writer writes it.
fn write_timestamp(out: &mut Vec<u8>, mut bytes: &[u8]) -> Written {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    while !bytes.is_empty() {
        match next_field(&mut bytes)? {
            (1, Raw::Varint(v)) => seconds = v as i64,
            (2, Raw::Varint(v)) => nanos = v as i32,
            (1 | 2, _) => return Err(GiveUp),
            _ => {}
        }
    }
    out.push(b'"');
    write_rfc3339(out, seconds, nanos)?;
    out.push(b'"');
    Ok(())
}

/// Appends a timestamp in RFC 3339 exactly as `prost_types::Timestamp` displays it (a fraction of 3, 6 or 9
/// digits, the fewest that hold it, or none), without going through `fmt`: a page of users has a hundred of them,
/// and formatting them was a quarter of writing the page. Out of RFC 3339's range it gives up, as the
/// reflective writer refuses them.
pub(crate) fn write_rfc3339(out: &mut Vec<u8>, seconds: i64, nanos: i32) -> Written {
    use chrono::{Datelike, Timelike};
    json::timestamp_text(seconds, nanos).ok_or(GiveUp)?;
    let fraction = match u32::try_from(nanos) {
        Ok(nanos) if nanos < 1_000_000_000 => nanos,
        // Nanoseconds outside 0..1e9 are carried into the seconds first: the formatter's own way.
        _ => {
            use std::io::Write;
            let text = json::timestamp_text(seconds, nanos).ok_or(GiveUp)?;
            return write!(out, "{text}").map_err(|_| GiveUp);
        }
    };
    let time = chrono::DateTime::from_timestamp(seconds, 0).ok_or(GiveUp)?.naive_utc();
    // The range check above keeps the year within 1..=9999: four digits, no sign.
    push_digits(out, time.year().unsigned_abs(), 4, b'-');
    push_digits(out, time.month(), 2, b'-');
    push_digits(out, time.day(), 2, b'T');
    push_digits(out, time.hour(), 2, b':');
    push_digits(out, time.minute(), 2, b':');
    push_digits(out, time.second(), 2, b'Z');
    if fraction != 0 {
        let (value, width) = if fraction % 1_000_000 == 0 {
            (fraction / 1_000_000, 3)
        } else if fraction % 1_000 == 0 {
            (fraction / 1_000, 6)
        } else {
            (fraction, 9)
        };
        out.pop();
        out.push(b'.');
        push_digits(out, value, width, b'Z');
    }
    Ok(())
}

/// Appends `value` in `width` decimal digits (zero-padded; `value` has at most that many), then `then`.
fn push_digits(out: &mut Vec<u8>, value: u32, width: usize, then: u8) {
    let mut buf = [b'0'; 10];
    let mut rest = value;
    for at in (0..width).rev() {
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf[width] = then;
    out.extend_from_slice(&buf[..=width]);
}

/// A field mask as its paths, each in the proto3 JSON form, joined by commas (as the reflective writer does).
fn write_mask(out: &mut Vec<u8>, mut bytes: &[u8]) -> Written {
    let mut joined = String::new();
    let mut first = true;
    while !bytes.is_empty() {
        match next_field(&mut bytes)? {
            (1, Raw::Len(path)) => {
                if !first {
                    joined.push(',');
                }
                first = false;
                joined.push_str(&json::json_path(utf8(path)?));
            }
            (1, _) => return Err(GiveUp),
            _ => {}
        }
    }
    write_str(out, &joined);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(seconds: i64, nanos: i32) -> Option<String> {
        let mut out = Vec::new();
        write_rfc3339(&mut out, seconds, nanos).ok()?;
        Some(String::from_utf8(out).expect("ASCII"))
    }

    proptest! {
        #[test]
        fn timestamps_are_written_as_prost_types_displays_them(
            seconds in -62_135_596_800i64..=253_402_300_799,
            nanos in prop_oneof![
                Just(0i32),
                (0i32..1000).prop_map(|n| n * 1_000_000),
                (0i32..1_000_000).prop_map(|n| n * 1_000),
                0i32..1_000_000_000,
                any::<i32>(),
            ],
        ) {
            let expected = json::timestamp_text(seconds, nanos).map(|text| text.to_string());
            prop_assert_eq!(written(seconds, nanos), expected);
        }
    }

    #[test]
    fn timestamps_at_the_ends_of_the_range() {
        assert_eq!(written(-62_135_596_800, 0).as_deref(), Some("0001-01-01T00:00:00Z"));
        assert_eq!(
            written(253_402_300_799, 999_999_999).as_deref(),
            Some("9999-12-31T23:59:59.999999999Z")
        );
        assert_eq!(
            written(1_767_225_600, 1_000).as_deref(),
            Some("2026-01-01T00:00:00.000001Z")
        );
        assert_eq!(
            written(951_782_400, 5_000_000).as_deref(),
            Some("2000-02-29T00:00:00.005Z")
        );
        assert_eq!(written(-62_135_596_801, 0), None);
        assert_eq!(written(253_402_300_800, 0), None);
    }
}
