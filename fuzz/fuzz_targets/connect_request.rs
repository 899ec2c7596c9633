//! Connect request bodies and headers: `parse_timeout` accepts exactly 1 to 10 ASCII digits, and
//! `decode_request` never panics on any body in either codec, plain or gzip; a JSON body it accepts became a
//! message of the method's input type that decodes again and stays within the repeated-field limits.
//!
//! Input: the first byte picks a unary method of the service (modulo their number); the second byte's bit 0
//! picks JSON (1) or protobuf (0) and bit 1 gzip; then a `Connect-Timeout-Ms` value up to the first `\n`; the
//! rest is the body.

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use user_service::api::codec::decode_limits;
use user_service::transcode::connect::{Codec, Encoding, decode_request, parse_timeout};

/// The message limit the fuzzer holds bodies to: small, so inflating gzip stays cheap.
const MAX_BYTES: usize = 1 << 16;

fn methods() -> &'static [MethodDescriptor] {
    static METHODS: OnceLock<Vec<MethodDescriptor>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = DescriptorPool::decode(user_service::pb::FILE_DESCRIPTOR_SET).expect("the descriptor set decodes");
        pool.services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .filter(|m| !m.is_client_streaming() && !m.is_server_streaming())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [selector, flags, rest @ ..] = data else {
        return;
    };
    let methods = methods();
    let method = &methods[usize::from(*selector) % methods.len()];
    let (timeout, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(end) => (&rest[..end], &rest[end + 1..]),
        None => (&[][..], rest),
    };
    let timeout = String::from_utf8_lossy(timeout);
    let digits = !timeout.is_empty() && timeout.len() <= 10 && timeout.bytes().all(|b| b.is_ascii_digit());
    assert_eq!(parse_timeout(&timeout).is_ok(), digits, "{timeout:?}");

    let codec = if flags & 1 == 1 { Codec::Json } else { Codec::Proto };
    let encoding = if flags & 2 == 2 { Encoding::Gzip } else { Encoding::Identity };
    let limits = decode_limits();
    let Ok(message) = decode_request(method, codec, encoding, Bytes::copy_from_slice(body), limits, MAX_BYTES) else {
        return;
    };
    if codec == Codec::Json {
        let input = method.input();
        if let Err(e) = DynamicMessage::decode(input.clone(), message.clone()) {
            panic!("{}: an accepted JSON body encoded to bytes that do not decode: {e}", input.full_name());
        }
        if let Err(e) = limits.check_protobuf(&input, &message) {
            panic!("{}: an accepted JSON body is past the limits once encoded: {e}", input.full_name());
        }
    } else if encoding == Encoding::Identity {
        assert_eq!(message.as_ref(), body, "protobuf bodies pass unchanged");
    }
});
