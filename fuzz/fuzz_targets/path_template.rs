//! `google.api.http` path templates and percent-decoding: parsing, matching and printing never panic; a
//! parsed template prints to a template that parses; a match binds every variable once; and `percent_decode`
//! agrees with a straightforward reference decoder.
//!
//! Input: lossy UTF-8; the first line is the template, the rest the request path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use user_service::transcode::path_template::{PathTemplate, percent_decode};

/// RFC 3986 percent-decoding: `%` must be followed by exactly two hex digits; with `keep_slash`, an escaped
/// `/` stays as it was written. `None` for a malformed escape or a result that is not UTF-8.
fn reference_decode(s: &str, keep_slash: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = (*bytes.get(i + 1)? as char).to_digit(16)?;
            let lo = (*bytes.get(i + 2)? as char).to_digit(16)?;
            let value = (hi * 16 + lo) as u8;
            if keep_slash && value == b'/' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (template, path) = text.split_once('\n').unwrap_or((&text, ""));

    if let Ok(parsed) = PathTemplate::parse(template) {
        if let Some(bindings) = parsed.matches(path) {
            let bound: Vec<Vec<String>> = bindings.into_iter().map(|(field, _)| field).collect();
            assert_eq!(
                bound,
                parsed.variables(),
                "a match of {template:?} on {path:?} binds other variables"
            );
        }
        let printed = parsed.to_string();
        if let Err(e) = PathTemplate::parse(&printed) {
            panic!("template {template:?} prints as {printed:?}, which does not parse: {e}");
        }
    }

    for keep_slash in [false, true] {
        assert_eq!(
            percent_decode(path, keep_slash),
            reference_decode(path, keep_slash),
            "percent_decode({path:?}, {keep_slash})"
        );
    }
});
