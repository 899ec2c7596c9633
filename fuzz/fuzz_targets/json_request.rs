//! REST request assembly over the service's real `google.api.http` bindings: building the request message from
//! a query string and a JSON body never panics; a message that was built serializes back to JSON; and the mask
//! a PATCH infers from its body is one the update-mask parser accepts.
//!
//! Input: the first byte picks the binding (modulo their number); then the query string up to the first `\n`;
//! then the JSON body (no body when it is empty or only white space; inputs whose body is not JSON are
//! skipped). Every path variable of the binding's template is bound to `x`.

#![no_main]

#[path = "shared/bindings.rs"]
mod shared_bindings;

use libfuzzer_sys::fuzz_target;
use prost_reflect::Kind;
use serde_json::Value;
use shared_bindings::bindings;
use user_service::domain::field_mask::UpdateMask;
use user_service::transcode::json::{RestInput, infer_mask, message_json, request_message};
use user_service::transcode::rule::Body;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let all = bindings();
    let binding = &all[usize::from(selector) % all.len()];

    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(newline) => (&rest[..newline], &rest[newline + 1..]),
        None => (rest, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let body: Option<Value> = if body.trim_ascii().is_empty() {
        None
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => Some(value),
            Err(_) => return,
        }
    };

    let path_bindings = binding
        .template
        .variables()
        .into_iter()
        .map(|field_path| (field_path, "x".to_owned()))
        .collect();
    let input = RestInput {
        path_bindings,
        query: Some(&query),
        body: body.clone(),
        if_match: None,
        http_method: &binding.http_method,
    };
    let Ok(message) = request_message(binding, input) else {
        return;
    };
    if let Err(e) = message_json(&message) {
        panic!("a request built from {query:?} and {body:?} does not serialize: {e}");
    }

    let Some(Value::Object(object)) = &body else {
        return;
    };
    let descriptor = binding.rpc.input();
    let _ = infer_mask(&descriptor, object);
    if let Body::Field(name) = &binding.body
        && let Some(field) = descriptor.get_field_by_name(name)
        && let Kind::Message(body_message) = field.kind()
    {
        let inferred = infer_mask(&body_message, object);
        if body_message.full_name() == "users.v1.User"
            && let Err(violations) = UpdateMask::parse(&inferred, "update_mask")
        {
            panic!("the mask {inferred:?} inferred from body {object:?} does not parse: {violations:?}");
        }
    }
});
