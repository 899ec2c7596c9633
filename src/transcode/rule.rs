//! Reads the `google.api.http` rules of every method in a descriptor pool into routable bindings.

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};

use super::path_template::PathTemplate;

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body: every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the body is the request message, minus path fields; no query parameters.
    All,
    /// `body: "<field>"`: the body is that top-level field; other fields come from the query string.
    Field(String),
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct HttpBinding {
    pub http_method: Method,
    pub template: PathTemplate,
    pub body: Body,
    /// `response_body`: the response field sent as the HTTP body instead of the whole message.
    pub response_body: Option<String>,
    pub rpc: MethodDescriptor,
}

impl HttpBinding {
    /// The gRPC path of the RPC (`/users.v1.UserService/GetUser`).
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.rpc.parent_service().full_name(), self.rpc.name())
    }
}

/// Resolves a dotted field path (`user.id`) from `message`; every step but the last must be a singular
/// message field.
pub fn field_by_path(message: &MessageDescriptor, path: &[String]) -> Option<FieldDescriptor> {
    let (last, parents) = path.split_last()?;
    let mut current = message.clone();
    for name in parents {
        let field = current.get_field_by_name(name)?;
        match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
            _ => return None,
        }
    }
    current.get_field_by_name(last)
}

/// Every `google.protobuf` message has its own JSON form and is a leaf for the transcoder: set whole, never
/// field by field.
pub fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// `google.api.FieldBehavior` numbers the transcoder acts on.
pub const OUTPUT_ONLY: i32 = 3;
pub const INPUT_ONLY: i32 = 4;

/// The `google.api.field_behavior` values of a field.
pub fn field_behaviors(field: &FieldDescriptor) -> Vec<i32> {
    let Some(extension) = field.parent_pool().get_extension_by_name("google.api.field_behavior") else {
        return Vec::new();
    };
    let options = field.options();
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    match options.get_extension(&extension).as_ref() {
        Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

fn string_field(rule: &DynamicMessage, name: &str) -> Option<String> {
    match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Turns one `HttpRule` message (and its additional bindings) into bindings.
fn rule_bindings(
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
    nested: bool,
    out: &mut Vec<HttpBinding>,
) -> Result<(), String> {
    let mut pattern = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            pattern = string_field(rule, name).map(|p| (method, p));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let kind = string_field(custom, "kind").unwrap_or_default();
        let method =
            Method::from_bytes(kind.as_bytes()).map_err(|_| format!("custom method `{kind}` is not an HTTP method"))?;
        pattern = string_field(custom, "path").map(|p| (method, p));
    }
    let (http_method, path) = pattern.ok_or_else(|| format!("{}: http rule without a pattern", rpc.full_name()))?;
    let template = PathTemplate::parse(&path).map_err(|e| format!("{}: {e}", rpc.full_name()))?;
    let input = rpc.input();
    for variable in template.variables() {
        if field_by_path(&input, &variable).is_none() {
            return Err(format!(
                "{}: path variable `{}` is not a field of {}",
                rpc.full_name(),
                variable.join("."),
                input.full_name()
            ));
        }
    }
    let body = match string_field(rule, "body").as_deref() {
        None => Body::None,
        Some("*") => Body::All,
        Some(field) => {
            if input.get_field_by_name(field).is_none() {
                return Err(format!(
                    "{}: body field `{field}` is not a field of {}",
                    rpc.full_name(),
                    input.full_name()
                ));
            }
            Body::Field(field.to_owned())
        }
    };
    let response_body = string_field(rule, "response_body");
    if let Some(field) = &response_body
        && rpc.output().get_field_by_name(field).is_none()
    {
        return Err(format!(
            "{}: response_body `{field}` is not a field of the response",
            rpc.full_name()
        ));
    }
    out.push(HttpBinding {
        http_method,
        template,
        body,
        response_body,
        rpc: rpc.clone(),
    });
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        if nested && !more.is_empty() {
            return Err(format!("{}: additional bindings cannot nest", rpc.full_name()));
        }
        for extra in more {
            if let Value::Message(extra) = extra {
                rule_bindings(rpc, extra, true, out)?;
            }
        }
    }
    Ok(())
}

/// Every binding of every service in `pool`, in declaration order. A rule that does not make sense (bad
/// template, unknown field) is an error: better to fail at start than to serve a route that cannot work.
pub fn bindings(pool: &DescriptorPool) -> Result<Vec<HttpBinding>, String> {
    let Some(extension) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for service in pool.services() {
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&extension) {
                continue;
            }
            if let Value::Message(rule) = options.get_extension(&extension).as_ref() {
                debug_assert_eq!(rule.descriptor().full_name(), "google.api.HttpRule");
                rule_bindings(&rpc, rule, false, &mut out)?;
            }
        }
    }
    Ok(out)
}
