//! JSON ⇄ protobuf for REST calls: assembling the request message from body, path and query (proto3 JSON
//! mapping through prost-reflect), inferring PATCH masks, and writing responses.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
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

    // Field masks keep their paths verbatim (either spelling, map keys as sent), so they bypass the proto3
    // JSON mapping, which accepts only lowerCamelCase paths.
    let mut masks = Vec::new();
    take_masks(&descriptor, &mut request, &mut Vec::new(), &mut masks);
    let mut message = DynamicMessage::deserialize_with_options(
        descriptor,
        Value::Object(request),
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

/// Serializes a response message (or its `response_body` field) for the REST body.
pub fn response_json(binding: &HttpBinding, message: &DynamicMessage) -> Result<Vec<u8>, String> {
    let value = match &binding.response_body {
        Some(field) => {
            let value = message
                .get_field_by_name(field)
                .ok_or("response_body field is missing")?;
            match value.as_ref() {
                prost_reflect::Value::Message(m) => message_json(m)?,
                prost_reflect::Value::String(s) => Value::String(s.clone()),
                other => Value::String(format!("{other:?}")),
            }
        }
        None => message_json(message)?,
    };
    serde_json::to_vec(&value).map_err(|e| e.to_string())
}

/// The `etag` a response message carries at its top level, for the `ETag` header.
pub fn response_etag(message: &DynamicMessage) -> Option<String> {
    let field = message.descriptor().get_field_by_name("etag")?;
    match message.get_field(&field).as_ref() {
        prost_reflect::Value::String(s) if !s.is_empty() => Some(s.clone()),
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
        Ok(message_json(&message).expect("json"))
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
}
