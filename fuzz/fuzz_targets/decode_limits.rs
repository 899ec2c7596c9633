//! The repeated-field limits checked on encoded requests: the protobuf and JSON scans never panic, and they
//! agree with the real decoders: a message that passes the scan and then decodes re-encodes to bytes that
//! also pass (so the scan counted at least what the decoder built).
//!
//! Input: the first byte picks a request type of the service (modulo their number); the second byte's low bit
//! picks JSON (1) or the protobuf wire format (0); the rest is the encoded message.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use user_service::api::codec::decode_limits;

fn request_types() -> &'static [MessageDescriptor] {
    static TYPES: OnceLock<Vec<MessageDescriptor>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let pool = DescriptorPool::decode(user_service::pb::FILE_DESCRIPTOR_SET).expect("the descriptor set decodes");
        pool.services().flat_map(|s| s.methods().map(|m| m.input()).collect::<Vec<_>>()).collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, format, body @ ..] = data else {
        return;
    };
    let types = request_types();
    let message = &types[usize::from(*selector) % types.len()];
    let limits = decode_limits();
    let decoded = if format & 1 == 1 {
        if limits.check_json(message, body).is_err() {
            return;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        match DynamicMessage::deserialize(message.clone(), &mut deserializer) {
            Ok(decoded) => decoded,
            Err(_) => return,
        }
    } else {
        if limits.check_protobuf(message, body).is_err() {
            return;
        }
        match DynamicMessage::decode(message.clone(), body) {
            Ok(decoded) => decoded,
            Err(_) => return,
        }
    };
    let reencoded = decoded.encode_to_vec();
    if let Err(e) = limits.check_protobuf(message, &reencoded) {
        panic!("{} passed the scan but its decoded form does not: {e}", message.full_name());
    }
});
