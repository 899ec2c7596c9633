//! OpenAPI 3 document generated from the descriptors and http rules, so REST docs can never drift from the proto.
//!
//! Operations, parameters and bodies follow the bindings exactly as the transcoder serves them; schemas follow
//! the proto3 JSON mapping (lowerCamelCase names, 64-bit integers as strings, well-known types in their JSON
//! forms); descriptions are the proto comments; `google.api.field_behavior` becomes `readOnly` / `writeOnly`.

use std::collections::{BTreeMap, HashMap};

use http::Method;
use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::path_template::{PathTemplate, Segment};
use super::rule::{Body, HttpBinding, INPUT_ONLY, OUTPUT_ONLY, field_behaviors, field_by_path, is_well_known};

/// `google.api.FieldBehavior` numbers (google/api/field_behavior.proto).
const REQUIRED: i32 = 2;
const IMMUTABLE: i32 = 5;

const SCHEMAS: &str = "#/components/schemas/";
const JSON: &str = "application/json";

/// Endpoints a server answers beside the API (its probes), described under a tag of their own.
pub struct ServedBeside {
    pub tag: &'static str,
    pub description: &'static str,
    /// `(path, operation)` of each GET endpoint; each operation names `tag` in its `tags`.
    pub get: Vec<(&'static str, Value)>,
}

/// The document for `bindings`, with the endpoints the server answers next to them.
/// `license` is the API's license: its SPDX name and the address of its text.
pub fn document(
    bindings: &[HttpBinding],
    title: &str,
    version: &str,
    license: (&str, &str),
    beside: &[ServedBeside],
) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags: Vec<Value> = Vec::new();
    for (binding, operation_id) in bindings.iter().zip(operation_ids(bindings)) {
        // OpenAPI 3.0 path items only have the standard methods; a `custom` rule with another verb cannot be
        // described, so it is left out rather than misdescribed.
        let Some(method) = path_item_method(&binding.http_method) else {
            continue;
        };
        let service = binding.rpc.parent_service();
        if !tags.iter().any(|t| t["name"] == service.name()) {
            let mut tag = json!({"name": service.name()});
            insert_description(&mut tag, comment(&service.parent_file(), service.path()));
            tags.push(tag);
        }
        let operation = schemas.operation(binding, operation_id);
        // Two rules on the same method and path would conflict; the router takes the first, and so does this.
        paths
            .entry(openapi_path(&binding.template))
            .or_default()
            .entry(method)
            .or_insert(operation);
    }
    for group in beside {
        for (path, operation) in &group.get {
            paths
                .entry((*path).to_owned())
                .or_default()
                .entry("get")
                .or_insert_with(|| operation.clone());
        }
        tags.push(json!({"name": group.tag, "description": group.description}));
    }

    let mut components = schemas.finish();
    components.insert("Error".to_owned(), error_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "license": {"name": license.0, "url": license.1},
            "description": "REST/JSON mapping of the gRPC API, generated from its protobuf descriptors and \
                            `google.api.http` rules. Bodies use the proto3 JSON mapping.",
        },
        "servers": [{"url": "/"}],
        "tags": tags,
        "paths": paths.into_iter().map(|(path, item)| (path, Value::Object(item))).collect::<Map<_, _>>(),
        "components": {
            "schemas": components.into_iter().collect::<Map<_, _>>(),
            "responses": {
                "Error": {
                    "description": "The call failed. The HTTP status comes from the gRPC status code (400 \
                                    INVALID_ARGUMENT and FAILED_PRECONDITION, 403, 404, 409 ALREADY_EXISTS and \
                                    ABORTED, 429, 500, 501, 503, 504).",
                    "content": {JSON: {"schema": {"$ref": format!("{SCHEMAS}Error")}}},
                },
                "Unauthenticated": {
                    "description": "The bearer token is missing, malformed, expired or badly signed.",
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string", "example": "Bearer"}}},
                    "content": {JSON: {"schema": {"$ref": format!("{SCHEMAS}Error")}}},
                },
            },
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

/// The path item key of an HTTP method, if OpenAPI 3.0 has one.
fn path_item_method(method: &Method) -> Option<&'static str> {
    [
        (Method::GET, "get"),
        (Method::PUT, "put"),
        (Method::POST, "post"),
        (Method::DELETE, "delete"),
        (Method::PATCH, "patch"),
        (Method::HEAD, "head"),
        (Method::OPTIONS, "options"),
        (Method::TRACE, "trace"),
    ]
    .into_iter()
    .find_map(|(m, key)| (m == *method).then_some(key))
}

/// One id per binding: the RPC name, suffixed with the method when the RPC has several bindings, and with a
/// counter in the unlikely case that is still not unique (two services with the same RPC name).
fn operation_ids(bindings: &[HttpBinding]) -> Vec<String> {
    let mut per_rpc: HashMap<&str, usize> = HashMap::new();
    for binding in bindings {
        *per_rpc.entry(binding.rpc.full_name()).or_default() += 1;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    bindings
        .iter()
        .map(|binding| {
            let name = binding.rpc.name();
            let base = if per_rpc.get(binding.rpc.full_name()).copied().unwrap_or(0) > 1 {
                format!("{name}_{}", binding.http_method.as_str().to_ascii_lowercase())
            } else {
                name.to_owned()
            };
            let count = seen.entry(base.clone()).or_default();
            *count += 1;
            if *count == 1 { base } else { format!("{base}_{count}") }
        })
        .collect()
}

/// Component schemas of the messages the operations reach, built as they are referenced.
#[derive(Default)]
struct Schemas {
    /// By full message name; `Null` while the message waits in `pending`.
    components: BTreeMap<String, Value>,
    pending: Vec<MessageDescriptor>,
}

impl Schemas {
    /// Builds the schemas still pending (which may reference more) and returns them all.
    fn finish(mut self) -> BTreeMap<String, Value> {
        while let Some(message) = self.pending.pop() {
            let schema = self.message_schema(&message, &[]);
            self.components.insert(message.full_name().to_owned(), schema);
        }
        self.components
    }

    /// A `$ref` to the component of `message`, queued for building; recursive messages stop here.
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        let name = message.full_name();
        if !self.components.contains_key(name) {
            self.components.insert(name.to_owned(), Value::Null);
            self.pending.push(message.clone());
        }
        json!({"$ref": format!("{SCHEMAS}{name}")})
    }

    fn operation(&mut self, binding: &HttpBinding, operation_id: String) -> Value {
        let rpc = &binding.rpc;
        let input = rpc.input();
        let mut operation = json!({
            "operationId": operation_id,
            "tags": [rpc.parent_service().name()],
        });
        if let Some(text) = comment(&rpc.parent_file(), rpc.path()) {
            operation["summary"] = Value::String(first_sentence(&text));
            operation["description"] = Value::String(text);
        }

        let mut parameters = path_parameters(binding);
        match &binding.body {
            // The transcoder refuses a query string when the body carries every field.
            Body::All => {}
            Body::None | Body::Field(_) => {
                let mut excluded = binding.template.variables();
                if let Body::Field(field) = &binding.body {
                    excluded.push(vec![field.clone()]);
                }
                let mut ancestors = vec![input.full_name().to_owned()];
                query_parameters(&input, &[], "", &excluded, &mut ancestors, &mut parameters);
            }
        }
        if let Some(if_match) = if_match_parameter(binding) {
            parameters.push(if_match);
        }
        if binding.rpc.is_server_streaming()
            && input
                .get_field_by_name(super::streaming::RESUME_FIELD)
                .is_some_and(|f| f.kind() == prost_reflect::Kind::String)
        {
            parameters.push(json!({
                "name": "Last-Event-ID",
                "in": "header",
                "required": false,
                "description": format!(
                    "Server-Sent Events: the `id:` of the last event received (a browser's EventSource sends it \
                     when it reconnects); it sets `{}`, over a query parameter.",
                    super::streaming::RESUME_FIELD
                ),
                "schema": {"type": "string"},
            }));
        }
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = self.request_body(binding) {
            operation["requestBody"] = body;
        }
        operation["responses"] = json!({
            "200": self.success_response(binding),
            "401": {"$ref": "#/components/responses/Unauthenticated"},
            "default": {"$ref": "#/components/responses/Error"},
        });
        operation["security"] = json!([{"bearerAuth": []}]);
        operation
    }

    fn request_body(&mut self, binding: &HttpBinding) -> Option<Value> {
        let input = binding.rpc.input();
        let (schema, description) = match &binding.body {
            Body::None => return None,
            Body::All => {
                // Top-level path fields leave the body; a nested one (`{a.b}` with `body: "*"`) stays in its
                // message, where the transcoder lets the path value win.
                let path_fields: Vec<String> = binding
                    .template
                    .variables()
                    .into_iter()
                    .filter_map(|v| <[String; 1]>::try_from(v).ok().map(|[name]| name))
                    .collect();
                let schema = if path_fields.is_empty() {
                    self.reference(&input)
                } else {
                    let skip: Vec<&str> = path_fields.iter().map(String::as_str).collect();
                    self.message_schema(&input, &skip)
                };
                (schema, None)
            }
            Body::Field(name) => match input.get_field_by_name(name) {
                Some(field) => (self.value_schema(&field), field_description(&field)),
                None => (json!({"type": "object"}), None),
            },
        };
        let mut body = json!({"required": true, "content": {JSON: {"schema": schema}}});
        insert_description(&mut body, description);
        Some(body)
    }

    fn success_response(&mut self, binding: &HttpBinding) -> Value {
        let output = binding.rpc.output();
        let (schema, description) = match binding
            .response_body
            .as_deref()
            .and_then(|f| output.get_field_by_name(f))
        {
            Some(field) => (self.value_schema(&field), field_description(&field)),
            None => (self.reference(&output), comment(&output.parent_file(), output.path())),
        };
        let description = description.unwrap_or_else(|| format!("A `{}`.", output.full_name()));
        if binding.rpc.is_server_streaming() {
            // The transcoder streams the messages in one of two media types (see `transcode::streaming`).
            // A Media Type Object has no description: what each media type carries is told in the response's.
            return json!({
                "description": format!(
                    "A stream of `{}` messages. {description} As `{}` (the default): one JSON message per line; \
                     a failure after the stream began is its last line, a REST error body. With `Accept: {}`: \
                     one Server-Sent Event per message, `data:` its JSON and `id:` its `{}` field; a failure \
                     after the stream began is an `event: error` with a REST error body.",
                    output.full_name(),
                    super::streaming::NDJSON,
                    super::streaming::EVENT_STREAM,
                    super::streaming::CURSOR_FIELD
                ),
                "content": {
                    super::streaming::NDJSON: {"schema": schema},
                    super::streaming::EVENT_STREAM: {"schema": {"type": "string"}},
                },
            });
        }
        let mut response = json!({
            "description": description,
            "content": {JSON: {"schema": schema}},
        });
        // The transcoder copies a top-level `etag` of the response into the ETag header.
        if output.get_field_by_name("etag").is_some() {
            response["headers"] = json!({"ETag": {
                "description": "The `etag` of the response, quoted; send it back in `If-Match`.",
                "schema": {"type": "string"},
            }});
        }
        response
    }

    /// The object schema of `message`, leaving out the fields named in `skip`.
    fn message_schema(&mut self, message: &MessageDescriptor, skip: &[&str]) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            if !skip.contains(&field.name()) {
                properties.insert(field.json_name().to_owned(), self.field_schema(&field));
            }
        }
        let mut schema = json!({"type": "object", "properties": properties});
        insert_description(&mut schema, comment(&message.parent_file(), message.path()));
        schema
    }

    /// The schema of a field as a property: its value schema plus description and field behavior.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let behaviors = field_behaviors(field);
        let mut extras = Map::new();
        if let Some(text) = field_description(field) {
            extras.insert("description".into(), Value::String(text));
        }
        if behaviors.contains(&OUTPUT_ONLY) {
            extras.insert("readOnly".into(), Value::Bool(true));
        } else if behaviors.contains(&INPUT_ONLY) {
            // OpenAPI forbids readOnly and writeOnly together; output-only wins as the stricter claim.
            extras.insert("writeOnly".into(), Value::Bool(true));
        }
        let schema = self.value_schema(field);
        if extras.is_empty() {
            return schema;
        }
        match schema {
            // OpenAPI 3.0 ignores the siblings of `$ref`, so the extras go next to an `allOf` around it.
            Value::Object(object) if object.contains_key("$ref") => {
                extras.insert("allOf".into(), json!([object]));
                Value::Object(extras)
            }
            Value::Object(mut object) => {
                object.extend(extras);
                Value::Object(object)
            }
            other => other,
        }
    }

    /// The schema of a field's value: maps and lists around the element schema.
    fn value_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            // JSON object keys are strings whatever the key type, so only the value type matters.
            let value = entry.map_entry_value_field();
            return json!({"type": "object", "additionalProperties": self.kind_schema(&value.kind())});
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Message(message) => well_known_schema(message).unwrap_or_else(|| self.reference(message)),
            other => scalar_schema(other),
        }
    }
}

/// The OpenAPI name of a path variable: its last field name (`user.id` → `id`), so that templates that differ
/// only in which field they bind (`/v1/users/{id}`, `/v1/users/{user.id}`) are one OpenAPI path, as OpenAPI
/// requires; the full path when two variables of a template would share a name.
fn parameter_name(template: &PathTemplate, field_path: &[String]) -> String {
    let last = |p: &[String]| p.last().cloned().unwrap_or_default();
    let name = last(field_path);
    let clashes = template.variables().iter().filter(|v| last(v) == name).count() > 1;
    if clashes { field_path.join(".") } else { name }
}

/// The template as an OpenAPI path, with variables named by [`parameter_name`].
fn openapi_path(template: &PathTemplate) -> String {
    let mut out = String::new();
    for segment in &template.segments {
        out.push('/');
        match segment {
            Segment::Literal(l) => out.push_str(l),
            Segment::Single => out.push('*'),
            Segment::Multi => out.push_str("**"),
            Segment::Variable { field_path, .. } => {
                out.push('{');
                out.push_str(&parameter_name(template, field_path));
                out.push('}');
            }
        }
    }
    if let Some(verb) = &template.verb {
        out.push(':');
        out.push_str(verb);
    }
    out
}

/// One required parameter per template variable, named by [`parameter_name`].
fn path_parameters(binding: &HttpBinding) -> Vec<Value> {
    let input = binding.rpc.input();
    binding
        .template
        .segments
        .iter()
        .filter_map(|segment| match segment {
            Segment::Variable { field_path, segments } => Some((field_path, segments)),
            _ => None,
        })
        .map(|(field_path, segments)| {
            let field = field_by_path(&input, field_path);
            let schema = field
                .as_ref()
                .and_then(|f| leaf_schema(&f.kind()))
                .unwrap_or_else(|| json!({"type": "string"}));
            let mut description = field.as_ref().and_then(field_description);
            if segments.as_slice() != [Segment::Single] {
                // OpenAPI cannot express a multi-segment variable; say what it matches instead.
                let pattern = format!("Matches `{}`.", segments_text(segments));
                description = Some(match description {
                    Some(text) => format!("{text}\n\n{pattern}"),
                    None => pattern,
                });
            }
            let mut parameter = json!({
                "name": parameter_name(&binding.template, field_path),
                "in": "path",
                "required": true,
                "schema": schema,
            });
            insert_description(&mut parameter, description);
            parameter
        })
        .collect()
}

/// Query parameters for the fields of `message` not in `excluded` (proto field paths), flattening singular
/// messages into dotted JSON names (`a.fooBar`) the way the transcoder resolves them. `ancestors` are the
/// full names of the messages from the request down to `message`.
fn query_parameters(
    message: &MessageDescriptor,
    proto_prefix: &[String],
    json_prefix: &str,
    excluded: &[Vec<String>],
    ancestors: &mut Vec<String>,
    out: &mut Vec<Value>,
) {
    for field in message.fields() {
        let mut proto_path = proto_prefix.to_vec();
        proto_path.push(field.name().to_owned());
        if excluded.contains(&proto_path) {
            continue;
        }
        let name = format!("{json_prefix}{}", field.json_name());
        // The transcoder refuses maps in the query string.
        if field.is_map() {
            continue;
        }
        if let Kind::Message(child) = field.kind()
            && !is_well_known(&child)
        {
            // A repeated message cannot be spelled as query parameters, and a recursive message would
            // give infinitely many names.
            let recursive = ancestors.iter().any(|a| a == child.full_name());
            if !field.is_list() && !recursive {
                ancestors.push(child.full_name().to_owned());
                query_parameters(&child, &proto_path, &format!("{name}."), excluded, ancestors, out);
                ancestors.pop();
            }
            continue;
        }
        // Struct, Value and the like have no query string form.
        let Some(leaf) = leaf_schema(&field.kind()) else {
            continue;
        };
        let mut parameter = json!({"name": name, "in": "query"});
        if field.is_list() {
            parameter["schema"] = json!({"type": "array", "items": leaf});
            parameter["style"] = json!("form");
            parameter["explode"] = json!(true);
        } else {
            parameter["schema"] = leaf;
        }
        let mut description = field_description(&field);
        if matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask") {
            let format = "Comma-separated field paths in lowerCamelCase.";
            description = Some(match description {
                Some(text) => format!("{text}\n\n{format}"),
                None => format.to_owned(),
            });
        }
        insert_description(&mut parameter, description);
        out.push(parameter);
    }
}

/// Schemas of the non-message kinds under the proto3 JSON mapping.
fn scalar_schema(kind: &Kind) -> Value {
    match kind {
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({"type": "integer", "format": "int32"}),
        // uint32 overflows OpenAPI's int32, so it is an int64 that cannot be negative.
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // proto3 JSON writes 64-bit integers as strings, since JavaScript numbers cannot hold them exactly.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(enumeration) => enum_schema(enumeration),
        // Callers give messages their component or well-known schema; any object is the honest fallback.
        Kind::Message(_) => json!({"type": "object"}),
    }
}

fn enum_schema(enumeration: &EnumDescriptor) -> Value {
    // NullValue is JSON `null`, which OpenAPI 3.0 can only describe as "anything".
    if enumeration.full_name() == "google.protobuf.NullValue" {
        return json!({});
    }
    let names: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
    json!({"type": "string", "enum": names})
}

/// Well-known types have their own JSON forms, inlined instead of referenced.
fn well_known_schema(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" | "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string"}},
            "additionalProperties": true,
        }),
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => scalar_schema(&message.get_field(1)?.kind()),
        _ => return None,
    })
}

/// The schema of a value given as one path segment or query string value; `None` when there is no such form.
fn leaf_schema(kind: &Kind) -> Option<Value> {
    match kind {
        Kind::Message(message) => match message.full_name() {
            "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Empty"
            | "google.protobuf.Any" => None,
            _ => well_known_schema(message),
        },
        other => Some(scalar_schema(other)),
    }
}

/// `If-Match` is accepted wherever the transcoder has an `etag` field to put it in.
fn if_match_parameter(binding: &HttpBinding) -> Option<Value> {
    let input = binding.rpc.input();
    let has_etag = input.get_field_by_name("etag").is_some()
        || match &binding.body {
            Body::Field(body_field) => field_by_path(&input, &[body_field.clone(), "etag".to_owned()]).is_some(),
            _ => false,
        };
    has_etag.then(|| {
        json!({
            "name": "If-Match",
            "in": "header",
            "description": "The expected `etag`, as an alternative to the `etag` field.",
            "schema": {"type": "string"},
        })
    })
}

/// The field's comment, with REQUIRED and IMMUTABLE spelled out (there are no `required` arrays: one message
/// serves both create and partial update) and the meaning of enum values listed.
fn field_description(field: &FieldDescriptor) -> Option<String> {
    let behaviors = field_behaviors(field);
    let mut text = String::new();
    if behaviors.contains(&REQUIRED) {
        text.push_str("Required. ");
    }
    if behaviors.contains(&IMMUTABLE) {
        text.push_str("Immutable. ");
    }
    if let Some(comment) = comment(&field.parent_file(), field.path()) {
        text.push_str(&comment);
    }
    if let Kind::Enum(enumeration) = field.kind()
        && let Some(values) = enum_values_description(&enumeration)
    {
        text.push_str("\n\n");
        text.push_str(&values);
    }
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A Markdown list of the enum's values with their comments, or `None` when none is commented.
fn enum_values_description(enumeration: &EnumDescriptor) -> Option<String> {
    let lines: Vec<String> = enumeration
        .values()
        .filter_map(|value| {
            let text = comment(&value.parent_file(), value.path())?;
            Some(format!(
                "- `{}`: {}",
                value.name(),
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The leading comment of the element at `path` of `file` (see `SourceCodeInfo.Location.path`), without the
/// space after each `//`.
fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let raw = info
        .location
        .iter()
        .filter(|location| location.path == path)
        .find_map(|location| location.leading_comments.as_deref())?;
    let text = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The first sentence of the first paragraph, on one line, for `summary`.
fn first_sentence(text: &str) -> String {
    let paragraph = text.split("\n\n").next().unwrap_or(text);
    let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.find(". ") {
        Some(end) => flat[..=end].to_owned(),
        None => flat,
    }
}

fn insert_description(target: &mut Value, description: Option<String>) {
    if let (Some(text), Value::Object(object)) = (description, target) {
        object.insert("description".into(), Value::String(text));
    }
}

/// Variable sub-patterns as written in the template (`projects/*/users/*`).
fn segments_text(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(literal) => literal.clone(),
            Segment::Single => "*".to_owned(),
            Segment::Multi => "**".to_owned(),
            Segment::Variable { field_path, .. } => format!("{{{}}}", field_path.join(".")),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The body every REST error has (API §5).
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status", "details"],
                "properties": {
                    "code": {"type": "integer", "format": "int32", "description": "The HTTP status code."},
                    "message": {"type": "string", "description": "What went wrong, for developers."},
                    "status": {
                        "type": "string",
                        "description": "The gRPC status code name.",
                        "example": "INVALID_ARGUMENT",
                    },
                    "details": {
                        "type": "array",
                        "description": "Rich error details (`google.rpc.BadRequest`, `google.rpc.ErrorInfo`, ...) \
                                        in proto3 JSON, each named by its `@type`.",
                        "items": {
                            "type": "object",
                            "required": ["@type"],
                            "properties": {"@type": {"type": "string"}},
                            "additionalProperties": true,
                        },
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule::bindings;
    use super::*;
    use prost_reflect::DescriptorPool;

    fn descriptor_set() -> &'static [u8] {
        crate::pb::FILE_DESCRIPTOR_SET
    }

    fn generated() -> (Vec<HttpBinding>, Value) {
        let pool = DescriptorPool::decode(descriptor_set()).expect("the descriptor set decodes");
        let bindings = bindings(&pool).expect("the http rules are valid");
        let doc = document(
            &bindings,
            "user-service",
            "test",
            ("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
            &[],
        );
        (bindings, doc)
    }

    fn operation<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "no operation {method} {path}");
        operation
    }

    fn parameter<'a>(operation: &'a Value, name: &str, location: &str) -> Option<&'a Value> {
        operation["parameters"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name && p["in"] == location)
    }

    fn property<'a>(doc: &'a Value, schema: &str, name: &str) -> &'a Value {
        let property = &doc["components"]["schemas"][schema]["properties"][name];
        assert!(property.is_object(), "no property {schema}.{name}");
        property
    }

    #[test]
    fn every_binding_has_an_operation_with_its_method_and_path() {
        let (bindings, doc) = generated();
        assert!(bindings.len() >= 12, "11 RPCs, UpdateUser twice");
        for binding in &bindings {
            let method = binding.http_method.as_str().to_ascii_lowercase();
            let operation = operation(&doc, &openapi_path(&binding.template), &method);
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(id.starts_with(binding.rpc.name()), "{id} for {}", binding.rpc.name());
            assert_eq!(operation["tags"], json!(["UserService"]));
            assert_eq!(operation["security"], json!([{"bearerAuth": []}]));
            assert_eq!(
                operation["responses"]["default"]["$ref"],
                "#/components/responses/Error"
            );
        }
        assert_eq!(
            operation(&doc, "/v1/users/{id}", "patch")["operationId"],
            "UpdateUser_patch"
        );
        assert_eq!(
            operation(&doc, "/v1/users/{id}", "put")["operationId"],
            "UpdateUser_put"
        );
        assert_eq!(operation(&doc, "/v1/users/{id}", "get")["operationId"], "GetUser");
        assert_eq!(operation(&doc, "/v1/users:lookup", "get")["operationId"], "LookupUser");
    }

    #[test]
    fn operation_ids_are_unique() {
        let (_, doc) = generated();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|item| item.as_object().expect("path item").values())
            .map(|operation| operation["operationId"].as_str().expect("operationId"))
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn comments_become_summaries_and_descriptions() {
        let (_, doc) = generated();
        let create = operation(&doc, "/v1/users", "post");
        assert_eq!(create["summary"], "Creates a user.");
        assert!(create["description"].as_str().expect("description").contains("UUID v7"));
        assert_eq!(
            doc["components"]["schemas"]["users.v1.User"]["description"],
            "A person who can use the systems built on this service."
        );
        let email = property(&doc, "users.v1.User", "email")["description"]
            .as_str()
            .expect("description");
        assert!(email.starts_with("Required. The e-mail address"), "{email}");
        let state = property(&doc, "users.v1.User", "state");
        assert!(
            state["description"]
                .as_str()
                .expect("description")
                .contains("- `DELETED`: The user is soft-deleted")
        );
        assert_eq!(
            state["enum"],
            json!(["STATE_UNSPECIFIED", "ACTIVE", "DISABLED", "DELETED"])
        );
    }

    #[test]
    fn list_users_takes_its_fields_from_the_query() {
        let (_, doc) = generated();
        let list = operation(&doc, "/v1/users", "get");
        for name in ["pageSize", "pageToken", "filter", "orderBy", "showDeleted"] {
            assert!(parameter(list, name, "query").is_some(), "missing {name}");
        }
        assert_eq!(
            parameter(list, "pageSize", "query").expect("pageSize")["schema"],
            json!({"type": "integer", "format": "int32"})
        );
        assert!(list.get("requestBody").is_none());
        assert_eq!(
            list["responses"]["200"]["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/users.v1.ListUsersResponse"
        );
    }

    #[test]
    fn update_user_has_path_query_and_body() {
        let (_, doc) = generated();
        for method in ["patch", "put"] {
            let update = operation(&doc, "/v1/users/{id}", method);
            let id = parameter(update, "id", "path").expect("id path parameter binding user.id");
            assert_eq!(id["required"], true);
            assert_eq!(id["schema"], json!({"type": "string"}));
            let mask = parameter(update, "updateMask", "query").expect("updateMask");
            assert_eq!(mask["schema"], json!({"type": "string"}));
            for name in ["allowMissing", "validateOnly", "currentPassword"] {
                assert!(parameter(update, name, "query").is_some(), "missing {name}");
            }
            assert!(
                update["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .all(|p| !p["name"]
                        .as_str()
                        .is_some_and(|n| n == "user" || n.starts_with("user.") && p["in"] == "query")),
                "the body field is not a query parameter"
            );
            assert!(parameter(update, "If-Match", "header").is_some());
            let body = &update["requestBody"];
            assert_eq!(body["required"], true);
            assert_eq!(
                body["content"][JSON]["schema"]["$ref"],
                "#/components/schemas/users.v1.User"
            );
            assert!(update["responses"]["200"]["headers"]["ETag"].is_object());
        }
    }

    #[test]
    fn body_star_leaves_out_path_fields_and_the_query() {
        let (_, doc) = generated();
        let undelete = operation(&doc, "/v1/users/{id}:undelete", "post");
        let schema = &undelete["requestBody"]["content"][JSON]["schema"];
        let properties = schema["properties"].as_object().expect("inline body schema");
        assert!(!properties.contains_key("id"));
        assert!(properties.contains_key("etag"));
        let parameters = undelete["parameters"].as_array().expect("parameters");
        assert!(parameters.iter().all(|p| p["in"] != "query"), "{parameters:?}");
        assert!(parameter(undelete, "id", "path").is_some());
        // Without path fields the body is the request message itself.
        let batch = operation(&doc, "/v1/users:batchUpdate", "post");
        assert_eq!(
            batch["requestBody"]["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/users.v1.BatchUpdateUsersRequest"
        );
    }

    #[test]
    fn field_behaviors_and_types_follow_the_proto3_json_mapping() {
        let (_, doc) = generated();
        let user = "users.v1.User";
        assert_eq!(property(&doc, user, "password")["writeOnly"], true);
        assert!(property(&doc, user, "password").get("readOnly").is_none());
        assert_eq!(property(&doc, user, "id")["readOnly"], true);
        assert_eq!(property(&doc, user, "createTime")["readOnly"], true);
        assert_eq!(property(&doc, user, "createTime")["format"], "date-time");
        assert!(property(&doc, user, "email").get("readOnly").is_none());
        let revision = property(&doc, user, "revision");
        assert_eq!(
            (&revision["type"], &revision["format"]),
            (&json!("string"), &json!("int64"))
        );
        assert_eq!(property(&doc, "users.v1.UserRevision", "revision")["format"], "int64");
        assert_eq!(
            property(&doc, user, "labels")["additionalProperties"],
            json!({"type": "string"})
        );
        assert_eq!(property(&doc, user, "roles")["items"], json!({"type": "string"}));
        assert_eq!(
            property(&doc, user, "memberships")["items"]["$ref"],
            "#/components/schemas/users.v1.Membership"
        );
        assert_eq!(property(&doc, user, "attributes")["additionalProperties"], true);
        assert_eq!(property(&doc, "users.v1.UserRevision", "updateMask")["type"], "string");
        // A message field with a description keeps its reference inside allOf.
        let users = property(&doc, "users.v1.UpdateUserRequest", "user");
        assert_eq!(users["allOf"][0]["$ref"], "#/components/schemas/users.v1.User");
        assert!(users.get("$ref").is_none());
        assert!(doc["components"]["schemas"].get("google.protobuf.Timestamp").is_none());
    }

    fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref") {
                    out.push(target);
                }
                object.values().for_each(|v| collect_refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let (_, doc) = generated();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 20);
        for target in refs {
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(
                doc.pointer(pointer).is_some_and(Value::is_object),
                "{target} does not resolve"
            );
        }
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        assert!(schemas.values().all(|s| !s.is_null()), "every queued schema was built");
    }

    /// Set `OPENAPI_JSON_OUT=/tmp/openapi.json` to write the document for an external validator.
    #[test]
    fn output_is_deterministic() {
        let (bindings, doc) = generated();
        let text = serde_json::to_string_pretty(&doc).expect("serializes");
        let again = serde_json::to_string_pretty(&document(
            &bindings,
            "user-service",
            "test",
            ("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0"),
            &[],
        ))
        .expect("serializes");
        assert_eq!(text, again);
        if let Some(path) = std::env::var_os("OPENAPI_JSON_OUT") {
            std::fs::write(path, text).expect("writes the document");
        }
    }

    #[test]
    fn sentences_and_comments() {
        assert_eq!(first_sentence("Lists users. Page by page."), "Lists users.");
        assert_eq!(
            first_sentence("Changes the fields named\nby the mask, in one go"),
            "Changes the fields named by the mask, in one go"
        );
        assert_eq!(first_sentence("One.\n\nTwo."), "One.");
    }
}
