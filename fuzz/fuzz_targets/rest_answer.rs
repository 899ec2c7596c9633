//! REST answers written from their protobuf bytes: for any bytes that decode as a binding's answer and that the
//! reflective writer writes, the wire writer writes the same JSON (the same value, the same length) or gives up;
//! bytes that do not decode it refuses too, and it never panics. The Connect JSON form, the `etag` and a streamed event's `cursor` are
//! checked the same way, and so is the typed writer of users and pages of users, on the prost message the bytes
//! decode to.
//!
//! Input: the first byte picks the binding (modulo their number); the rest is the answer's bytes.

#![no_main]

#[path = "shared/bindings.rs"]
mod shared_bindings;

use libfuzzer_sys::fuzz_target;
use prost_reflect::DynamicMessage;
use serde_json::Value;
use shared_bindings::bindings;
use user_service::transcode::json::{message_json_bytes, response_etag, response_json};
use user_service::transcode::streaming::cursor_of;
use prost::Message;
use user_service::transcode::wire_json;
use user_service::{pb, typed_json};

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("the wire writer writes JSON")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let all = bindings();
    let binding = &all[usize::from(selector) % all.len()];
    let output = binding.rpc.output();
    let wire = wire_json::response_json(binding, bytes);
    let etag = wire_json::string_field(&output, bytes, "etag");
    let cursor = wire_json::string_field(&output, bytes, "cursor");
    let connect = wire_json::message_json(&output, bytes);
    let message = match DynamicMessage::decode(output, bytes) {
        Ok(message) => message,
        Err(error) => {
            // Bytes a decoder refuses are never written, but for one case: the wire writer hands a Struct to the
            // decoder on its own, with prost's whole depth budget, so a Struct nested right at the limit is
            // written where decoding the whole answer runs out of depth.
            if !error.to_string().contains("recursion limit") {
                assert!(wire.is_err(), "{}: bytes that do not decode were written", binding.rpc.name());
                assert!(connect.is_err(), "{}: bytes that do not decode were written", binding.rpc.name());
            }
            return;
        }
    };
    if let (Ok(json), Ok(reflective)) = (&wire, response_json(binding, &message)) {
        assert_eq!(parse(json), parse(&reflective), "{}", binding.rpc.name());
        assert_eq!(json.len(), reflective.len(), "{}", binding.rpc.name());
    }
    if let Ok(etag) = etag {
        assert_eq!(etag.filter(|e| !e.is_empty()), response_etag(&message));
    }
    if let Ok(cursor) = cursor {
        assert_eq!(cursor, cursor_of(&message));
    }
    if let (Ok(json), Ok(reflective)) = (&connect, message_json_bytes(&message)) {
        assert_eq!(parse(json), parse(&reflective), "{}", binding.rpc.name());
    }
    let typed = match binding.rpc.output().full_name() {
        "users.v1.User" => pb::User::decode(bytes).ok().and_then(|user| typed_json::answer(&user, bytes.len())),
        "users.v1.ListUsersResponse" => pb::ListUsersResponse::decode(bytes)
            .ok()
            .and_then(|page| typed_json::answer(&page, bytes.len())),
        _ => None,
    };
    if let Some(typed) = typed {
        // What the typed writer writes (it declines what the reflective writer refuses), the reflective writer
        // writes too.
        let reflective = message_json_bytes(&message).expect("the reflective writer writes it");
        assert_eq!(parse(&typed.body), parse(&reflective), "{}", binding.rpc.name());
        assert_eq!(typed.body.len(), reflective.len(), "{}", binding.rpc.name());
        assert_eq!(typed.etag.filter(|e| !e.is_empty()), response_etag(&message));
    }
});
