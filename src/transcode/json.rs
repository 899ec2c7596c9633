//! JSON ⇄ protobuf for REST calls: assembling the request message from body, path and query (proto3 JSON
//! mapping through prost-reflect), inferring PATCH masks, and writing responses.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::rule::{Body, HttpBinding, INPUT_ONLY, field_behaviors, is_well_known};

/// A client mistake in the REST request, reported as INVALID_ARGUMENT with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Finds a field by its proto name or its JSON name.
fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Puts `value` at `fields` inside `object`, replacing whatever was there under either spelling of each name.
fn set_path(object: &mut Map<String, Value>, fields: &[FieldDescriptor], value: Value) -> Result<(), BadRequest> {
    let Some((first, rest)) = fields.split_first() else {
        return Ok(());
    };
    let existing = object.remove(first.name()).or_else(|| object.remove(first.json_name()));
    if rest.is_empty() {
        object.insert(first.json_name().to_owned(), value);
        return Ok(());
    }
    let mut child = match existing {
        Some(Value::Object(child)) => child,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(BadRequest(format!("`{}` must be a JSON object", first.json_name()))),
    };
    set_path(&mut child, rest, value)?;
    object.insert(first.json_name().to_owned(), Value::Object(child));
    Ok(())
}

/// Adds a repeated query value to the array at `fields`.
fn push_path(object: &mut Map<String, Value>, fields: &[FieldDescriptor], value: Value) -> Result<(), BadRequest> {
    let mut current = object;
    for (i, field) in fields.iter().enumerate() {
        let key = field.json_name().to_owned();
        if let Some(v) = current.remove(field.name()) {
            current.insert(key.clone(), v);
        }
        if i + 1 == fields.len() {
            match current.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                Value::Array(items) => items.push(value),
                _ => return Err(BadRequest(format!("`{}` is given twice", field.json_name()))),
            }
            return Ok(());
        }
        let entry = current.entry(key).or_insert_with(|| Value::Object(Map::new()));
        current = match entry {
            Value::Object(child) => child,
            _ => return Err(BadRequest(format!("`{}` must be a JSON object", field.json_name()))),
        };
    }
    Ok(())
}

/// A path or query string value as the JSON value the field's type takes.
fn scalar_json(field: &FieldDescriptor, raw: &str, name: &str) -> Result<Value, BadRequest> {
    match field.kind() {
        Kind::Bool => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(BadRequest(format!("`{name}` must be true or false"))),
        },
        Kind::Enum(_) => Ok(raw
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .unwrap_or_else(|_| Value::String(raw.to_owned()))),
        Kind::Message(m) if !is_well_known(&m) => Err(BadRequest(format!(
            "`{name}` is a message; set its fields as `{name}.<field>`"
        ))),
        // Strings, bytes (base64), numbers (the proto3 JSON mapping accepts them as strings) and well-known
        // types in their string forms (Timestamp, FieldMask, Duration).
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Resolves a dotted name (`a.b`, proto or JSON spelling) to its field chain.
fn resolve(message: &MessageDescriptor, dotted: &str) -> Option<Vec<FieldDescriptor>> {
    let mut chain = Vec::new();
    let mut current = message.clone();
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = field_named(&current, part)?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_well_known(&m) => current = m,
                _ => return None,
            }
        }
        chain.push(field);
    }
    Some(chain)
}

/// The mask a PATCH without `updateMask` means: the JSON keys present in the body, recursing into singular
/// messages and stopping at maps, repeated fields and well-known types.
pub fn infer_mask(message: &MessageDescriptor, body: &Map<String, Value>) -> Vec<String> {
    let mut paths = Vec::new();
    for (key, value) in body {
        // An unknown key is left for the decoder, which refuses it naming the key.
        let Some(field) = field_named(message, key) else {
            continue;
        };
        match (field.kind(), value) {
            (Kind::Message(m), Value::Object(inner)) if !field.is_list() && !field.is_map() && !is_well_known(&m) => {
                for sub in infer_mask(&m, inner) {
                    paths.push(format!("{}.{sub}", field.name()));
                }
            }
            _ => paths.push(field.name().to_owned()),
        }
    }
    paths
}

/// What the REST layer knows about a request besides the body.
pub struct RestInput<'a> {
    pub path_bindings: Vec<(Vec<String>, String)>,
    pub query: Option<&'a str>,
    pub body: Option<Value>,
    pub if_match: Option<String>,
    pub http_method: &'a http::Method,
}

/// Builds the request message of `binding` from a REST call.
pub fn request_message(binding: &HttpBinding, input: RestInput<'_>) -> Result<DynamicMessage, BadRequest> {
    let descriptor = binding.rpc.input();
    let mut request = match (&binding.body, input.body) {
        (Body::None, Some(_)) => {
            return Err(BadRequest("this method takes no request body".into()));
        }
        (_, None) => Map::new(),
        (Body::All, Some(Value::Object(object))) => object,
        (Body::All, Some(_)) => return Err(BadRequest("the request body must be a JSON object".into())),
        (Body::Field(name), Some(value)) => {
            let mut object = Map::new();
            if let Some(field) = descriptor.get_field_by_name(name) {
                object.insert(field.json_name().to_owned(), value);
            }
            object
        }
    };

    let update_mask = descriptor
        .get_field_by_name("update_mask")
        .filter(|f| matches!(f.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask"));

    // Query parameters: every field not bound by the path or the body.
    let mut mask_given = false;
    if let Some(query) = input.query.filter(|q| !q.is_empty()) {
        if binding.body == Body::All {
            return Err(BadRequest(
                "query parameters are not accepted here: the request body carries every field".into(),
            ));
        }
        for (name, raw) in form_urlencoded::parse(query.as_bytes()) {
            let chain =
                resolve(&descriptor, &name).ok_or_else(|| BadRequest(format!("unknown query parameter `{name}`")))?;
            if let (Body::Field(body_field), Some(first)) = (&binding.body, chain.first())
                && first.name() == body_field
            {
                return Err(BadRequest(format!("`{name}` belongs in the request body")));
            }
            let Some(last) = chain.last() else { continue };
            if update_mask.as_ref().is_some_and(|m| m == last) {
                mask_given = true;
            }
            if last.is_map() {
                return Err(BadRequest(format!(
                    "`{name}` is a map and cannot be set from the query string"
                )));
            }
            let value = scalar_json(last, &raw, &name)?;
            if last.is_list() {
                push_path(&mut request, &chain, value)?;
            } else {
                set_path(&mut request, &chain, value)?;
            }
        }
    }

    // Mask rules of API §4: PATCH infers the mask from the body's keys, PUT means a full replacement.
    if let (Some(mask_field), Body::Field(body_field)) = (&update_mask, &binding.body)
        && !mask_given
    {
        let body_message = descriptor.get_field_by_name(body_field).and_then(|f| match f.kind() {
            Kind::Message(m) => Some(m),
            _ => None,
        });
        let body_key = descriptor
            .get_field_by_name(body_field)
            .map(|f| f.json_name().to_owned())
            .unwrap_or_default();
        let body_json = request.get(&body_key);
        let mask = if input.http_method == http::Method::PATCH {
            match (body_message, body_json) {
                (Some(m), Some(Value::Object(o))) => Some(infer_mask(&m, o).join(",")),
                _ => None,
            }
        } else if input.http_method == http::Method::PUT {
            Some("*".to_owned())
        } else {
            None
        };
        if let Some(mask) = mask {
            set_path(&mut request, std::slice::from_ref(mask_field), Value::String(mask))?;
        }
    }

    // If-Match carries the etag (AIP-154): on the request itself, or on the resource in the body.
    if let Some(etag) = input.if_match {
        let target = if let Some(f) = descriptor.get_field_by_name("etag") {
            Some(vec![f])
        } else if let Body::Field(body_field) = &binding.body {
            resolve(&descriptor, &format!("{body_field}.etag"))
        } else {
            None
        };
        if let Some(chain) = target {
            set_path(&mut request, &chain, Value::String(etag))?;
        }
    }

    // Path variables last: the id in the path wins over an id in the body.
    for (path, value) in input.path_bindings {
        let chain = resolve(&descriptor, &path.join("."))
            .ok_or_else(|| BadRequest(format!("path variable `{}` has no field", path.join("."))))?;
        let Some(last) = chain.last() else { continue };
        let value = scalar_json(last, &value, &path.join("."))?;
        set_path(&mut request, &chain, value)?;
    }

    message_from_json(descriptor, request)
}

/// Builds a message of type `descriptor` from its proto3 JSON object, unknown fields refused. Field masks keep
/// their paths verbatim (either spelling, map keys as sent), so they bypass the proto3 JSON mapping, which
/// accepts only lowerCamelCase paths. REST and Connect bodies both come through here.
pub fn message_from_json(
    descriptor: MessageDescriptor,
    mut object: Map<String, Value>,
) -> Result<DynamicMessage, BadRequest> {
    let mut masks = Vec::new();
    take_masks(&descriptor, &mut object, &mut Vec::new(), &mut masks);
    let mut message = DynamicMessage::deserialize_with_options(
        descriptor,
        Value::Object(object),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| BadRequest(format!("invalid request: {e}")))?;
    for mask in masks {
        put_mask(&mut message, &mask.location, mask.paths);
    }
    Ok(message)
}

/// Where a field mask sat in the request JSON: each step a field, with the list index for repeated fields.
type Location = Vec<(FieldDescriptor, Option<usize>)>;

struct RawMask {
    location: Location,
    paths: Vec<String>,
}

fn is_field_mask(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask") && !field.is_list()
}

/// Removes every FieldMask string from `object` (recursively), recording where it was.
fn take_masks(
    message: &MessageDescriptor,
    object: &mut Map<String, Value>,
    location: &mut Location,
    out: &mut Vec<RawMask>,
) {
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        let Some(field) = field_named(message, &key) else {
            continue;
        };
        if is_field_mask(&field) {
            if let Some(Value::String(raw)) = object.get(&key) {
                let paths = split_mask(raw);
                object.remove(&key);
                let mut at = location.clone();
                at.push((field, None));
                out.push(RawMask { location: at, paths });
            }
            continue;
        }
        let Kind::Message(child) = field.kind() else { continue };
        if field.is_map() || is_well_known(&child) {
            continue;
        }
        match object.get_mut(&key) {
            Some(Value::Object(inner)) if !field.is_list() => {
                location.push((field.clone(), None));
                take_masks(&child, inner, location, out);
                location.pop();
            }
            Some(Value::Array(items)) if field.is_list() => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let Value::Object(inner) = item {
                        location.push((field.clone(), Some(i)));
                        take_masks(&child, inner, location, out);
                        location.pop();
                    }
                }
            }
            _ => {}
        }
    }
}

/// Splits a comma-separated mask at commas outside backtick-quoted segments, trimming each path.
pub fn split_mask(raw: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in raw.chars() {
        match c {
            '`' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => paths.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    paths.push(current);
    paths
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Sets the FieldMask at `location` inside a decoded message.
fn put_mask(message: &mut DynamicMessage, location: &[(FieldDescriptor, Option<usize>)], paths: Vec<String>) {
    let Some(((field, index), rest)) = location.split_first() else {
        return;
    };
    if rest.is_empty() {
        if let Kind::Message(mask_descriptor) = field.kind() {
            let mut mask = DynamicMessage::new(mask_descriptor);
            mask.set_field_by_name(
                "paths",
                prost_reflect::Value::List(paths.into_iter().map(prost_reflect::Value::String).collect()),
            );
            message.set_field(field, prost_reflect::Value::Message(mask));
        }
        return;
    }
    match (message.get_field_mut(field), index) {
        (prost_reflect::Value::Message(child), None) => put_mask(child, rest, paths),
        (prost_reflect::Value::List(items), Some(i)) => {
            if let Some(prost_reflect::Value::Message(child)) = items.get_mut(*i) {
                put_mask(child, rest, paths);
            }
        }
        _ => {}
    }
}

/// What the REST answer does with one field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Input-only (a password): never part of an answer, not even empty.
    Hidden,
    /// A singular field mask: its paths verbatim, as one comma-separated string.
    Mask,
    /// Everything else, by the proto3 JSON mapping.
    Shown,
}

/// The fields of a message type in the order the proto3 JSON mapping writes them, each with its role.
struct Plan {
    fields: Vec<(FieldDescriptor, Role)>,
}

impl Plan {
    fn of(message: &MessageDescriptor) -> Plan {
        let fields = message.fields().map(|field| (field.clone(), role_of(&field))).collect();
        Plan { fields }
    }
}

/// The role of a field in REST answers (reading it decodes the field's options: done once per message type).
pub(super) fn role_of(field: &FieldDescriptor) -> Role {
    if field_behaviors(field).contains(&INPUT_ONLY) {
        Role::Hidden
    } else if is_field_mask(field) {
        Role::Mask
    } else {
        Role::Shown
    }
}

thread_local! {
    /// Plans by message name: reading field options decodes them, too slow to repeat for every answer.
    static PLANS: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<Plan>>> =
        std::cell::RefCell::default();
}

fn plan(message: &MessageDescriptor) -> std::rc::Rc<Plan> {
    PLANS.with(|plans| {
        if let Some(plan) = plans.borrow().get(message.full_name()) {
            return plan.clone();
        }
        let plan = std::rc::Rc::new(Plan::of(message));
        plans.borrow_mut().insert(message.full_name().to_owned(), plan.clone());
        plan
    })
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// A message as REST answers it: proto3 JSON with every field present (those with presence when set), field
/// masks with their paths verbatim (a map key such as `labels.team-a` has no lowerCamelCase form), input-only
/// fields left out. Written straight to the serializer, so an answer is neither copied nor built as a tree.
struct RestJson<'a>(&'a DynamicMessage);

impl Serialize for RestJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let message = self.0;
        let descriptor = message.descriptor();
        // Well-known types have JSON forms of their own, which prost-reflect writes; all but timestamps, the
        // most frequent by far (several per user), which it writes by re-encoding the message and decoding it
        // into a `prost_types::Timestamp` (half the JSON writing of a page of users).
        if is_well_known(&descriptor) {
            if descriptor.full_name() == "google.protobuf.Timestamp" {
                return timestamp_json(message, serializer);
            }
            return message.serialize_with_options(serializer, &serialize_options());
        }
        let plan = plan(&descriptor);
        let mut map = serializer.serialize_map(None)?;
        for (field, role) in &plan.fields {
            // Fields with presence (messages, oneofs, `optional`) are written when set, the others always.
            if field.supports_presence() && !message.has_field(field) {
                continue;
            }
            match role {
                Role::Hidden => {}
                Role::Mask => match message.get_field(field).as_ref() {
                    prost_reflect::Value::Message(mask) => map.serialize_entry(field.json_name(), &MaskJson(mask))?,
                    _ => return Err(serde::ser::Error::custom("a field mask that is not a message")),
                },
                Role::Shown => map.serialize_entry(field.json_name(), &FieldJson(&message.get_field(field), field))?,
            }
        }
        map.end()
    }
}

/// The seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range RFC 3339 can write (and
/// prost-reflect accepts).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

/// A `google.protobuf.Timestamp` in RFC 3339, as prost-reflect writes it (the same `prost_types` formatting),
/// read from the message's two fields directly.
fn timestamp_json<S: serde::Serializer>(message: &DynamicMessage, serializer: S) -> Result<S::Ok, S::Error> {
    let field = |number: u32| message.get_field_by_number(number);
    let seconds = field(1)
        .as_deref()
        .and_then(prost_reflect::Value::as_i64)
        .unwrap_or_default();
    let nanos = field(2)
        .as_deref()
        .and_then(prost_reflect::Value::as_i32)
        .unwrap_or_default();
    match timestamp_text(seconds, nanos) {
        Some(text) => serializer.collect_str(&text),
        None => Err(serde::ser::Error::custom("timestamp out of range")),
    }
}

/// A timestamp's seconds and nanoseconds as the text RFC 3339 writes them, or `None` out of its range.
pub(super) fn timestamp_text(seconds: i64, nanos: i32) -> Option<impl std::fmt::Display> {
    TIMESTAMP_SECONDS
        .contains(&seconds)
        .then_some(prost_types::Timestamp { seconds, nanos })
}

/// A field mask message as its paths joined by commas.
struct MaskJson<'a>(&'a DynamicMessage);

impl Serialize for MaskJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let paths = self.0.get_field_by_name("paths");
        let paths: Vec<&str> = paths
            .as_deref()
            .and_then(prost_reflect::Value::as_list)
            .map(|list| list.iter().filter_map(prost_reflect::Value::as_str).collect())
            .unwrap_or_default();
        let paths: Vec<String> = paths.iter().map(|p| json_path(p)).collect();
        serializer.collect_str(&paths.join(","))
    }
}

/// A mask path in the proto3 JSON form: every `_` dropped and the letter after it upper-cased
/// (`family_name` → `familyName`). Strict parsers (`@bufbuild/protobuf`, Go's protojson, Python's json_format)
/// refuse a path with `_` in it and turn each capital back into `_` and its lower case. Field names come back
/// exactly; a map key comes back exactly when it is lower-case and each `_` in it stands before a letter
/// (`team_a`), and otherwise reads back in that same form (`camelKey` as `camel_key`): it still parses.
pub fn json_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper_next = false;
    for c in path.chars() {
        if c == '_' {
            upper_next = true;
            continue;
        }
        if upper_next {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        upper_next = false;
    }
    out
}

/// The value of a field: lists and singular values element by element; maps as prost-reflect writes them.
struct FieldJson<'a>(&'a prost_reflect::Value, &'a FieldDescriptor);

impl Serialize for FieldJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let kind = self.1.kind();
        match self.0 {
            prost_reflect::Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&ValueJson(item, &kind))?;
                }
                seq.end()
            }
            prost_reflect::Value::Map(entries) => {
                let value_kind = match &kind {
                    Kind::Message(entry) => entry.map_entry_value_field().kind(),
                    _ => return Err(serde::ser::Error::custom("a map field without an entry type")),
                };
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(&MapKeyJson(key), &MapValueJson(value, &value_kind))?;
                }
                map.end()
            }
            value => ValueJson(value, &kind).serialize(serializer),
        }
    }
}

/// A singular value: messages by [`RestJson`], scalars by the proto3 JSON mapping.
struct ValueJson<'a>(&'a prost_reflect::Value, &'a Kind);

impl Serialize for ValueJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            prost_reflect::Value::Message(message) => RestJson(message).serialize(serializer),
            scalar => scalar_json_value(scalar, self.1, serializer),
        }
    }
}

/// A map value: messages inside maps are written by prost-reflect whole, as they always were.
struct MapValueJson<'a>(&'a prost_reflect::Value, &'a Kind);

impl Serialize for MapValueJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            prost_reflect::Value::Message(message) => message.serialize_with_options(serializer, &serialize_options()),
            scalar => scalar_json_value(scalar, self.1, serializer),
        }
    }
}

struct MapKeyJson<'a>(&'a prost_reflect::MapKey);

impl Serialize for MapKeyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use prost_reflect::MapKey;
        match self.0 {
            MapKey::Bool(v) => serializer.collect_str(v),
            MapKey::I32(v) => serializer.collect_str(v),
            MapKey::I64(v) => serializer.collect_str(v),
            MapKey::U32(v) => serializer.collect_str(v),
            MapKey::U64(v) => serializer.collect_str(v),
            MapKey::String(v) => serializer.serialize_str(v),
        }
    }
}

/// A scalar by the proto3 JSON mapping, as prost-reflect writes it: 64-bit integers as strings, non-finite
/// floats by name, bytes in base64, enums by name (by number when unknown), `NullValue` as null.
fn scalar_json_value<S: serde::Serializer>(
    value: &prost_reflect::Value,
    kind: &Kind,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use prost_reflect::Value as V;
    fn float<S: serde::Serializer>(
        value: f64,
        finite: impl FnOnce(S) -> Result<S::Ok, S::Error>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            finite(s)
        } else if value.is_nan() {
            s.serialize_str("NaN")
        } else if value > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
    match value {
        V::Bool(v) => serializer.serialize_bool(*v),
        V::I32(v) => serializer.serialize_i32(*v),
        V::U32(v) => serializer.serialize_u32(*v),
        V::I64(v) => serializer.collect_str(v),
        V::U64(v) => serializer.collect_str(v),
        V::F32(v) => float(f64::from(*v), |s| s.serialize_f32(*v), serializer),
        V::F64(v) => float(*v, |s| s.serialize_f64(*v), serializer),
        V::String(v) => serializer.serialize_str(v),
        V::Bytes(v) => {
            use base64::Engine;
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
        }
        V::EnumNumber(number) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => serializer.serialize_none(),
            Kind::Enum(e) => match e.get_value(*number) {
                Some(name) => serializer.serialize_str(name.name()),
                None => serializer.serialize_i32(*number),
            },
            _ => serializer.serialize_i32(*number),
        },
        V::Message(message) => RestJson(message).serialize(serializer),
        V::List(_) | V::Map(_) => Err(serde::ser::Error::custom("a list or map where a single value belongs")),
    }
}

/// Appends a message as REST answers it (see [`RestJson`]) to `out`.
pub(super) fn write_message_json(out: &mut Vec<u8>, message: &DynamicMessage) -> Result<(), String> {
    serde_json::to_writer(out, &RestJson(message)).map_err(|e| e.to_string())
}

/// Appends the JSON of a field's value (a list, a map or a singular value) to `out`.
pub(super) fn write_field_json(
    out: &mut Vec<u8>,
    value: &prost_reflect::Value,
    field: &FieldDescriptor,
) -> Result<(), String> {
    serde_json::to_writer(out, &FieldJson(value, field)).map_err(|e| e.to_string())
}

/// Appends a scalar value (not a message, list or map) of `kind` to `out`, by the proto3 JSON mapping.
pub(super) fn write_scalar_json(out: &mut Vec<u8>, value: &prost_reflect::Value, kind: &Kind) -> Result<(), String> {
    scalar_json_value(value, kind, &mut serde_json::Serializer::new(out)).map_err(|e| e.to_string())
}

/// Serializes a message as REST answers it (see [`RestJson`]), as a JSON value.
pub fn message_json(message: &DynamicMessage) -> Result<Value, String> {
    RestJson(message)
        .serialize(serde_json::value::Serializer)
        .map_err(|e| e.to_string())
}

/// Serializes a response message (or its `response_body` field) for the REST body, straight to bytes.
pub fn response_json(binding: &HttpBinding, message: &DynamicMessage) -> Result<Vec<u8>, String> {
    body_json(message, binding.response_body.as_deref())
}

/// Serializes a whole message as REST answers it (see [`RestJson`]), straight to bytes: the body of a Connect
/// JSON answer.
pub fn message_json_bytes(message: &DynamicMessage) -> Result<Vec<u8>, String> {
    body_json(message, None)
}

/// The whole message, or its field `response_body`, as REST answers it.
pub fn body_json(message: &DynamicMessage, response_body: Option<&str>) -> Result<Vec<u8>, String> {
    let bytes = match response_body {
        Some(field) => {
            let value = message
                .get_field_by_name(field)
                .ok_or("response_body field is missing")?;
            match value.as_ref() {
                prost_reflect::Value::Message(m) => serde_json::to_vec(&RestJson(m)),
                prost_reflect::Value::String(s) => serde_json::to_vec(s),
                other => serde_json::to_vec(&format!("{other:?}")),
            }
        }
        None => serde_json::to_vec(&RestJson(message)),
    };
    bytes.map_err(|e| e.to_string())
}

/// The `etag` a response message carries at its top level, for the `ETag` header.
pub fn response_etag(message: &DynamicMessage) -> Option<String> {
    string_field(message, "etag").filter(|etag| !etag.is_empty())
}

/// The value of the top-level string field `name`: `None` when the message type has no such field, empty when
/// the field is unset.
pub fn string_field(message: &DynamicMessage, name: &str) -> Option<String> {
    let field = message.descriptor().get_field_by_name(name)?;
    match message.get_field(&field).as_ref() {
        prost_reflect::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcode::rule::bindings;
    use prost_reflect::DescriptorPool;

    fn binding(rpc: &str, method: http::Method) -> HttpBinding {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        bindings(&pool)
            .expect("bindings")
            .into_iter()
            .find(|b| b.rpc.name() == rpc && b.http_method == method)
            .expect("binding exists")
    }

    fn build(
        rpc: &str,
        method: http::Method,
        path: &[(&str, &str)],
        query: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, BadRequest> {
        let b = binding(rpc, method.clone());
        let message = request_message(
            &b,
            RestInput {
                path_bindings: path
                    .iter()
                    .map(|(k, v)| (k.split('.').map(str::to_owned).collect(), (*v).to_owned()))
                    .collect(),
                query,
                body,
                if_match: None,
                http_method: &method,
            },
        )?;
        let mut json = message_json(&message).expect("json");
        // The mask as the message holds it (proto paths), not in its JSON spelling: what the service receives.
        if let Some(mask) = message.get_field_by_name("update_mask")
            && let Some(mask) = mask.as_message()
            && let Some(paths) = mask.get_field_by_name("paths")
            && let Some(paths) = paths.as_list()
            && json.get("updateMask").is_some()
        {
            let paths: Vec<&str> = paths.iter().filter_map(prost_reflect::Value::as_str).collect();
            json["updateMask"] = Value::String(paths.join(","));
        }
        Ok(json)
    }

    #[test]
    fn query_parameters_map_to_fields_by_either_name() {
        let v = build(
            "ListUsers",
            http::Method::GET,
            &[],
            Some("pageSize=5&page_token=t&showDeleted=true&filter=a%3Db"),
            None,
        )
        .expect("valid");
        assert_eq!(v["pageSize"], 5);
        assert_eq!(v["pageToken"], "t");
        assert_eq!(v["showDeleted"], true);
        assert_eq!(v["filter"], "a=b");
    }

    #[test]
    fn unknown_and_malformed_query_parameters_are_refused() {
        let e = build("ListUsers", http::Method::GET, &[], Some("nope=1"), None).expect_err("unknown");
        assert!(e.0.contains("`nope`"), "{}", e.0);
        let e = build("ListUsers", http::Method::GET, &[], Some("showDeleted=yes"), None).expect_err("bad bool");
        assert!(e.0.contains("true or false"));
        let e = build("ListUsers", http::Method::GET, &[], Some("pageSize=abc"), None).expect_err("bad int");
        assert!(e.0.contains("invalid request"), "{}", e.0);
    }

    #[test]
    fn patch_infers_the_mask_from_body_keys_and_the_path_id_wins() {
        let body = serde_json::json!({"id": "body-id", "givenName": "A", "description": null, "labels": {"a": "1"}});
        let v = build(
            "UpdateUser",
            http::Method::PATCH,
            &[("user.id", "path-id")],
            None,
            Some(body),
        )
        .expect("valid");
        assert_eq!(v["user"]["id"], "path-id");
        let mut mask: Vec<&str> = v["updateMask"].as_str().expect("mask").split(',').collect();
        mask.sort_unstable();
        assert_eq!(mask, vec!["description", "given_name", "id", "labels"]);
    }

    #[test]
    fn explicit_update_mask_is_kept_and_put_means_star() {
        let body = serde_json::json!({"givenName": "A"});
        let v = build(
            "UpdateUser",
            http::Method::PATCH,
            &[("user.id", "x")],
            Some("updateMask=familyName"),
            Some(body.clone()),
        )
        .expect("valid");
        assert_eq!(v["updateMask"], "familyName");
        let v = build(
            "UpdateUser",
            http::Method::PUT,
            &[("user.id", "x")],
            None,
            Some(body.clone()),
        )
        .expect("valid");
        assert_eq!(v["updateMask"], "*");
        let v = build(
            "UpdateUser",
            http::Method::PUT,
            &[("user.id", "x")],
            Some("update_mask=given_name"),
            Some(body),
        )
        .expect("valid");
        assert_eq!(v["updateMask"], "given_name");
    }

    #[test]
    fn unknown_body_fields_are_refused_by_name() {
        let e = build(
            "CreateUser",
            http::Method::POST,
            &[],
            None,
            Some(serde_json::json!({"email": "a@b.co", "nickname": "x"})),
        )
        .expect_err("unknown");
        assert!(e.0.contains("nickname"), "{}", e.0);
    }

    #[test]
    fn body_star_takes_no_query_and_body_none_takes_no_body() {
        let e = build(
            "UndeleteUser",
            http::Method::POST,
            &[("id", "x")],
            Some("etag=1"),
            Some(serde_json::json!({})),
        )
        .expect_err("query with body *");
        assert!(e.0.contains("query parameters"));
        let e = build(
            "GetUser",
            http::Method::GET,
            &[("id", "x")],
            None,
            Some(serde_json::json!({})),
        )
        .expect_err("body");
        assert!(e.0.contains("no request body"));
    }

    #[test]
    fn masks_keep_their_paths_verbatim_in_query_and_body() {
        let v = build(
            "UpdateUser",
            http::Method::PATCH,
            &[("user.id", "x")],
            Some("updateMask=given_name,labels.`a,b`,labels.team_x"),
            Some(serde_json::json!({})),
        )
        .expect("valid");
        assert_eq!(
            v["updateMask"], "given_name,labels.`a,b`,labels.team_x",
            "paths kept verbatim"
        );
        let b = binding("BatchUpdateUsers", http::Method::POST);
        let method = http::Method::POST;
        let message = request_message(
            &b,
            RestInput {
                path_bindings: vec![],
                query: None,
                body: Some(serde_json::json!({"requests": [
                    {"user": {"id": "a"}, "updateMask": "family_name"},
                    {"user": {"id": "b"}, "updateMask": "labels.my_key"}
                ]})),
                if_match: None,
                http_method: &method,
            },
        )
        .expect("valid batch");
        let requests = message.get_field_by_name("requests").expect("requests");
        let paths: Vec<String> = requests
            .as_list()
            .expect("list")
            .iter()
            .map(|r| {
                let mask = r
                    .as_message()
                    .expect("msg")
                    .get_field_by_name("update_mask")
                    .expect("mask");
                let mask = mask
                    .as_message()
                    .expect("mask msg")
                    .get_field_by_name("paths")
                    .expect("paths");
                mask.as_list().expect("list")[0].as_str().expect("str").to_owned()
            })
            .collect();
        assert_eq!(paths, vec!["family_name", "labels.my_key"]);
    }

    #[test]
    fn mask_paths_are_written_in_lower_camel_case() {
        assert_eq!(json_path("family_name"), "familyName");
        assert_eq!(json_path("labels.team_a"), "labels.teamA");
        assert_eq!(json_path("attributes.camelKey"), "attributes.camelKey");
        assert_eq!(json_path("labels.a_1__b_"), "labels.a1B");
        assert!(!json_path("`odd_key`.x_y").contains('_'));
    }

    #[test]
    fn timestamps_are_written_as_prost_reflect_writes_them() {
        let pool = prost_reflect::DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let descriptor = pool
            .get_message_by_name("google.protobuf.Timestamp")
            .expect("the service's messages use timestamps");
        let cases = [
            (0, 0),
            (1_764_547_200, 0),
            (1_764_547_200, 500_000_000),
            (1_764_547_200, 123_456_000),
            (1_764_547_200, 1),
            (-62_135_596_800, 0),
            (253_402_300_799, 999_999_999),
            (-1, 999_999_999),
        ];
        for (seconds, nanos) in cases {
            let mut message = DynamicMessage::new(descriptor.clone());
            message.set_field_by_number(1, prost_reflect::Value::I64(seconds));
            message.set_field_by_number(2, prost_reflect::Value::I32(nanos));
            let ours = serde_json::to_string(&RestJson(&message)).expect("in range");
            let theirs = serde_json::to_string(&SerializeWrapperFor(&message)).expect("in range");
            assert_eq!(ours, theirs, "{seconds}.{nanos}");
        }
        for seconds in [-62_135_596_801, 253_402_300_800] {
            let mut message = DynamicMessage::new(descriptor.clone());
            message.set_field_by_number(1, prost_reflect::Value::I64(seconds));
            assert!(
                serde_json::to_string(&RestJson(&message)).is_err(),
                "{seconds} is out of range"
            );
        }
    }

    /// prost-reflect's own proto3 JSON of a message, to compare with.
    struct SerializeWrapperFor<'a>(&'a DynamicMessage);

    impl Serialize for SerializeWrapperFor<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.0.serialize_with_options(serializer, &serialize_options())
        }
    }

    #[test]
    fn split_mask_respects_backticks() {
        assert_eq!(split_mask(" a, b ,,`c,d`.e"), vec!["a", "b", "`c,d`.e"]);
    }

    #[test]
    fn repeated_query_values_accumulate() {
        // BatchUpdateUsers has body "*", so check repeated handling on a synthetic chain through push_path.
        let b = binding("ListUsers", http::Method::GET);
        let field = b.rpc.input().get_field_by_name("filter").expect("field");
        let mut object = Map::new();
        push_path(&mut object, std::slice::from_ref(&field), Value::String("a".into())).expect("push");
        push_path(&mut object, std::slice::from_ref(&field), Value::String("b".into())).expect("push");
        assert_eq!(object["filter"], serde_json::json!(["a", "b"]));
    }

    /// Messages of every response type, all fields set, from proto3 JSON; masks, which that JSON cannot spell
    /// verbatim, are set afterwards.
    fn full_answers(pool: &DescriptorPool) -> Vec<DynamicMessage> {
        let user = serde_json::json!({
            "id": "u-1", "username": "ann", "email": "ann@example.com", "emailVerified": true,
            "givenName": "Ann \"quoted\" \u{e9}", "familyName": "L\u{fc}beck", "phoneNumber": "+4917", "nationalId": "n",
            "address": "line\nbreak", "birthDate": "1990-01-02", "languageCode": "de", "regionCode": "DE",
            "timeZone": "Europe/Berlin", "imageUri": "https://example.com/a.png", "description": "d",
            "state": "DISABLED", "disabledReason": "why", "labels": {"team-a": "x", "b": "", "c.d": "e"},
            "roles": ["admin", "viewer"],
            "memberships": [{"organizationId": "o1", "role": "r", "admin": true}, {"organizationId": "o2"}],
            "attributes": {"a": {"b": [1, 2.5, "two", null, true, {}]}, "n": -0.125, "big": 1e300},
            "validFrom": "2024-01-02T03:04:05Z", "expireTime": "2030-01-01T00:00:00.123456789Z",
            "password": "s3cret-password", "createTime": "2024-01-02T03:04:05.100Z",
            "updateTime": "2024-01-03T00:00:00Z", "deleteTime": "2024-01-04T00:00:00Z",
            "purgeTime": "2024-02-04T00:00:00Z", "revision": "9007199254740993", "etag": "\"9\"",
        });
        let message = |name: &str, json: Value| {
            let descriptor = pool.get_message_by_name(name).expect("message exists");
            DynamicMessage::deserialize(descriptor, json).expect("valid JSON")
        };
        let mut revisions = message(
            "users.v1.ListUserRevisionsResponse",
            serde_json::json!({"revisions": [
                {"revision": "2", "actor": "admin", "createTime": "2024-01-02T03:04:05Z",
                 "before": {"labels": {"team-a": "x"}}, "after": {"labels": {}}},
                {"revision": "1", "actor": "self"},
            ], "nextPageToken": "t"}),
        );
        if let Some(prost_reflect::Value::List(items)) = revisions.get_field_by_name_mut("revisions")
            && let Some(prost_reflect::Value::Message(first)) = items.first_mut()
        {
            let mut mask = DynamicMessage::new(pool.get_message_by_name("google.protobuf.FieldMask").expect("mask"));
            mask.set_field_by_name(
                "paths",
                prost_reflect::Value::List(
                    ["given_name", "labels.team-a", "labels.`a,b`"]
                        .map(|p| prost_reflect::Value::String(p.to_owned()))
                        .to_vec(),
                ),
            );
            first.set_field_by_name("update_mask", prost_reflect::Value::Message(mask));
        }
        vec![
            message("users.v1.User", user.clone()),
            message(
                "users.v1.ListUsersResponse",
                serde_json::json!({"users": [user.clone(), {"email": "b@example.com"}], "nextPageToken": "n"}),
            ),
            message(
                "users.v1.BatchUpdateUsersResponse",
                serde_json::json!({"users": [user]}),
            ),
            revisions,
        ]
    }

    /// The full answers of a binding's output type, and its empty one.
    fn answers_of(pool: &DescriptorPool, binding: &HttpBinding) -> Vec<DynamicMessage> {
        let output = binding.rpc.output();
        let mut answers: Vec<DynamicMessage> = full_answers(pool)
            .into_iter()
            .filter(|m| m.descriptor() == output)
            .collect();
        answers.push(DynamicMessage::new(output));
        answers
    }

    #[test]
    fn answers_are_written_as_before() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let mut checked = 0;
        for binding in bindings(&pool).expect("bindings") {
            for answer in answers_of(&pool, &binding) {
                // The same JSON; only the order of object keys, which carries no meaning, may differ.
                // (No rule of this API has a `response_body`: the answer is the whole message.)
                let new = response_json(&binding, &answer).expect("serializes");
                let old = serde_json::to_vec(&reference::message_json(&answer).expect("serializes")).expect("JSON");
                let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).expect("JSON");
                assert_eq!(parse(&new), parse(&old), "{} answers as before", binding.rpc.name());
                assert_eq!(new.len(), old.len());
                let text = String::from_utf8_lossy(&new);
                assert!(!text.contains("s3cret") && !text.contains("password"), "{text}");
                assert_eq!(message_json(&answer).expect("json"), parse(&new));
                checked += 1;
            }
        }
        assert!(checked >= 20, "every binding was checked, full and empty ({checked})");
    }

    #[test]
    fn the_wire_writer_writes_what_the_reflective_writer_writes() {
        use crate::transcode::wire_json;
        use prost::Message;
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).expect("JSON");
        let mut checked = 0;
        for binding in bindings(&pool).expect("bindings") {
            let output = binding.rpc.output();
            for answer in answers_of(&pool, &binding) {
                let bytes = answer.encode_to_vec();
                let wire = wire_json::response_json(&binding, &bytes).expect("the wire writer writes it");
                let etag = wire_json::string_field(&output, &bytes, "etag").expect("an etag or none");
                let reflective = response_json(&binding, &answer).expect("serializes");
                assert_eq!(parse(&wire), parse(&reflective), "{}", binding.rpc.name());
                assert_eq!(wire.len(), reflective.len(), "{}", binding.rpc.name());
                assert_eq!(etag.filter(|e| !e.is_empty()), response_etag(&answer));
                let connect = wire_json::message_json(&output, &bytes).expect("the wire writer writes it");
                assert_eq!(
                    parse(&connect),
                    parse(&message_json_bytes(&answer).expect("serializes"))
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "every binding was checked, full and empty ({checked})");
    }

    #[test]
    fn the_wire_writer_gives_up_where_a_decoder_would_merge_or_fail() {
        use crate::transcode::wire_json::{self, GiveUp};
        use prost::Message;
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptors");
        let user = full_answers(&pool).into_iter().next().expect("a user");
        let descriptor = user.descriptor();
        let bytes = user.encode_to_vec();
        let number = |name: &str| descriptor.get_field_by_name(name).expect("field").number() as u8;
        // A singular message given twice (decoders merge the two).
        let mut twice = bytes.clone();
        twice.extend_from_slice(&[number("create_time") << 3 | 2, 2, 0x08, 0x01]);
        assert!(matches!(wire_json::message_json(&descriptor, &twice), Err(GiveUp)));
        // A map key given twice (the last entry wins).
        let mut key_twice = bytes.clone();
        key_twice.extend_from_slice(&[number("labels") << 3 | 2, 5, 0x0a, 0x01, b'b', 0x12, 0x00]);
        assert!(matches!(wire_json::message_json(&descriptor, &key_twice), Err(GiveUp)));
        // Cut short, and a string that is not UTF-8.
        assert!(matches!(
            wire_json::message_json(&descriptor, &bytes[..bytes.len() - 1]),
            Err(GiveUp)
        ));
        let bad_text = [number("email") << 3 | 2, 1, 0xff];
        assert!(matches!(wire_json::message_json(&descriptor, &bad_text), Err(GiveUp)));
        // An input-only field that is no UTF-8 (the decoder checks it; the answer never shows it), a first
        // value that is no UTF-8 before a valid last one, a key given twice within one map entry.
        let mut hidden = bytes.clone();
        hidden.extend_from_slice(&[number("password") << 3 | 2 | 0x80, 0x01, 1, 0xff]);
        assert!(matches!(wire_json::message_json(&descriptor, &hidden), Err(GiveUp)));
        let mut bad_then_good = bad_text.to_vec();
        bad_then_good.extend_from_slice(&[number("email") << 3 | 2, 1, b'z']);
        assert!(matches!(
            wire_json::message_json(&descriptor, &bad_then_good),
            Err(GiveUp)
        ));
        let entry_key_twice = [number("labels") << 3 | 2, 6, 0x0a, 0x01, b'x', 0x0a, 0x01, b'y'];
        assert!(matches!(
            wire_json::message_json(&descriptor, &entry_key_twice),
            Err(GiveUp)
        ));
        // A scalar given twice keeps its last value, and unknown fields are skipped, as a decoder does.
        let mut last_wins = bytes.clone();
        last_wins.extend_from_slice(&[number("email") << 3 | 2, 1, b'z', 0xf8, 0x3f, 0x07]);
        let mut decoded = user.clone();
        decoded.set_field_by_name("email", prost_reflect::Value::String("z".into()));
        let wire = wire_json::message_json(&descriptor, &last_wins).expect("written");
        assert_eq!(
            serde_json::from_slice::<Value>(&wire).expect("JSON"),
            message_json(&decoded).expect("serializes")
        );
    }

    /// The serializer answers were written with before they were written straight to bytes: a copy of the
    /// message, its masks taken out and put back into a `serde_json::Value`, input-only keys removed from it (and,
    /// since, mask paths written in lowerCamelCase).
    /// The new one must write the same JSON.
    mod reference {
        use super::super::*;

        /// Removes every FieldMask from a decoded message (recursively), recording where it was and its paths.
        fn take_message_masks(message: &mut DynamicMessage, location: &mut Location, out: &mut Vec<RawMask>) {
            let fields: Vec<FieldDescriptor> = message.descriptor().fields().collect();
            for field in fields {
                if !message.has_field(&field) {
                    continue;
                }
                if is_field_mask(&field) {
                    if let prost_reflect::Value::Message(mask) = message.get_field(&field).as_ref() {
                        let paths = mask
                            .get_field_by_name("paths")
                            .and_then(|p| {
                                p.as_list()
                                    .map(|l| l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                            })
                            .unwrap_or_default();
                        let mut at = location.clone();
                        at.push((field.clone(), None));
                        out.push(RawMask { location: at, paths });
                    }
                    message.clear_field(&field);
                    continue;
                }
                let Kind::Message(child) = field.kind() else { continue };
                if field.is_map() || is_well_known(&child) {
                    continue;
                }
                match message.get_field_mut(&field) {
                    prost_reflect::Value::Message(inner) => {
                        location.push((field.clone(), None));
                        take_message_masks(inner, location, out);
                        location.pop();
                    }
                    prost_reflect::Value::List(items) => {
                        for (i, item) in items.iter_mut().enumerate() {
                            if let prost_reflect::Value::Message(inner) = item {
                                location.push((field.clone(), Some(i)));
                                take_message_masks(inner, location, out);
                                location.pop();
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        /// Writes a mask back into response JSON as its comma-separated string.
        fn put_json_mask(value: &mut Value, location: &[(FieldDescriptor, Option<usize>)], paths: &[String]) {
            let Some(((field, index), rest)) = location.split_first() else {
                return;
            };
            let Value::Object(object) = value else { return };
            if rest.is_empty() {
                // Plus what changed since: paths in their lowerCamelCase JSON form.
                let paths: Vec<String> = paths.iter().map(|p| super::json_path(p)).collect();
                object.insert(field.json_name().to_owned(), Value::String(paths.join(",")));
                return;
            }
            match (object.get_mut(field.json_name()), index) {
                (Some(child), None) => put_json_mask(child, rest, paths),
                (Some(Value::Array(items)), Some(i)) => {
                    if let Some(child) = items.get_mut(*i) {
                        put_json_mask(child, rest, paths);
                    }
                }
                _ => {}
            }
        }

        /// Serializes a message as proto3 JSON with every field present; field masks are written with their paths
        /// verbatim (a map key such as `labels.team-a` has no lowerCamelCase form).
        pub fn message_json(message: &DynamicMessage) -> Result<Value, String> {
            let mut message = message.clone();
            let mut masks = Vec::new();
            take_message_masks(&mut message, &mut Vec::new(), &mut masks);
            let options = SerializeOptions::new().skip_default_fields(false);
            let mut value = message
                .serialize_with_options(serde_json::value::Serializer, &options)
                .map_err(|e| e.to_string())?;
            for mask in masks {
                put_json_mask(&mut value, &mask.location, &mask.paths);
            }
            strip_input_only(&mut value, &message.descriptor());
            Ok(value)
        }

        /// Where a message type's input-only fields are: its own (by JSON name) and the message fields to look into.
        struct StripPlan {
            input_only: Vec<String>,
            children: Vec<(String, MessageDescriptor)>,
        }

        impl StripPlan {
            fn of(message: &MessageDescriptor) -> StripPlan {
                let mut plan = StripPlan {
                    input_only: Vec::new(),
                    children: Vec::new(),
                };
                for field in message.fields() {
                    if field_behaviors(&field).contains(&INPUT_ONLY) {
                        plan.input_only.push(field.json_name().to_owned());
                    } else if let Kind::Message(child) = field.kind()
                        && !field.is_map()
                        && !is_well_known(&child)
                    {
                        plan.children.push((field.json_name().to_owned(), child));
                    }
                }
                plan
            }
        }

        thread_local! {
            /// Strip plans by message name: reading field options decodes them, too slow to repeat for every answer.
            static STRIP_PLANS: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<StripPlan>>> =
                std::cell::RefCell::default();
        }

        /// Input-only fields (a password) are never part of an answer, not even empty.
        fn strip_input_only(value: &mut Value, message: &MessageDescriptor) {
            let Value::Object(object) = value else { return };
            let plan = STRIP_PLANS.with(|plans| {
                if let Some(plan) = plans.borrow().get(message.full_name()) {
                    return plan.clone();
                }
                let plan = std::rc::Rc::new(StripPlan::of(message));
                plans.borrow_mut().insert(message.full_name().to_owned(), plan.clone());
                plan
            });
            for name in &plan.input_only {
                object.remove(name);
            }
            for (name, child) in &plan.children {
                match object.get_mut(name) {
                    Some(Value::Array(items)) => items.iter_mut().for_each(|item| strip_input_only(item, child)),
                    Some(item) => strip_input_only(item, child),
                    None => {}
                }
            }
        }
    }
}
