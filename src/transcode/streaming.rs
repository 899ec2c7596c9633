//! REST for server-streaming methods, generic over any annotated one: newline-delimited JSON
//! (`application/x-ndjson`, one message per line) by default, Server-Sent Events with `Accept:
//! text/event-stream`. Two naming conventions make SSE resumable without knowing the method: a string field
//! `cursor` of the streamed message becomes each event's `id:`, and the request's `Last-Event-ID` header (what
//! a browser's `EventSource` sends when it reconnects) sets the request's string field `start_cursor`. A failure
//! after the stream has begun is its last line (NDJSON) or an `event: error` (SSE), with the REST error body.

use axum::body::Body as AxumBody;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Response, header};
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

use super::rule::HttpBinding;
use super::{MessageStream, invalid_argument, json};
use crate::rpc_status::status_json;

/// The field of a streamed message that names its place in the stream (the SSE `id:`).
pub const CURSOR_FIELD: &str = "cursor";
/// The request field a stream resumes from; `Last-Event-ID` fills it.
pub const RESUME_FIELD: &str = "start_cursor";
pub const NDJSON: &str = "application/x-ndjson";
pub const EVENT_STREAM: &str = "text/event-stream";

/// Whether the client asked for Server-Sent Events.
fn wants_event_stream(accept: Option<&HeaderValue>) -> bool {
    accept.and_then(|v| v.to_str().ok()).is_some_and(|accept| {
        accept.split(',').any(|media| {
            media
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(EVENT_STREAM)
        })
    })
}

/// Sets the request's [`RESUME_FIELD`] from `Last-Event-ID` on a server-streaming method whose request has one;
/// the header wins over a query parameter, since a reconnecting `EventSource` repeats the original URL.
#[allow(clippy::result_large_err)]
pub fn resume_from_last_event_id(
    binding: &HttpBinding,
    headers: &HeaderMap,
    mut message: DynamicMessage,
) -> Result<DynamicMessage, Response<AxumBody>> {
    if !binding.rpc.is_server_streaming() {
        return Ok(message);
    }
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(message);
    };
    let Some(field) = message
        .descriptor()
        .get_field_by_name(RESUME_FIELD)
        .filter(|f| matches!(f.kind(), Kind::String) && !f.is_list())
    else {
        return Ok(message);
    };
    let value = last_event_id(raw.as_bytes()).ok_or_else(|| invalid_argument("Last-Event-ID must be UTF-8 text"))?;
    if !value.is_empty() {
        message.set_field(&field, Value::String(value.to_owned()));
    }
    Ok(message)
}

/// The value of a `Last-Event-ID` header: UTF-8 text, surrounding blanks dropped; `None` when not UTF-8.
pub fn last_event_id(raw: &[u8]) -> Option<&str> {
    std::str::from_utf8(raw).ok().map(str::trim)
}

/// One message as an SSE event: its `id:` (when the message has a cursor that fits on a line) and its JSON.
pub fn sse_event(id: Option<&str>, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 64);
    if let Some(id) = id.filter(|id| !id.is_empty() && !id.contains(['\n', '\r', '\0'])) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    // serde_json never writes a raw newline (it escapes them in strings), so the JSON is one `data:` line.
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A failure after the stream began, as SSE.
fn sse_error(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"event: error\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn ndjson_line(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.extend_from_slice(json);
    out.push(b'\n');
    Bytes::from(out)
}

/// The cursor a streamed message carries, if its type has one.
fn cursor_of(message: &DynamicMessage) -> Option<String> {
    let field = message.descriptor().get_field_by_name(CURSOR_FIELD)?;
    match message.get_field(&field).as_ref() {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The streaming REST answer: each message of `stream` written as it comes, in the media type the client
/// asked for; a failure ends the stream with its error.
pub fn response(
    binding: &HttpBinding,
    accept: Option<&HeaderValue>,
    stream: MessageStream,
    reply_headers: &HeaderMap,
) -> Response<AxumBody> {
    let sse = wants_event_stream(accept);
    let output = binding.rpc.output();
    let binding = binding.clone();
    let framed = stream
        .map(move |item| {
            let json = item.and_then(|bytes| {
                let message = DynamicMessage::decode(output.clone(), bytes)
                    .map_err(|e| tonic::Status::internal(format!("decoding a streamed message: {e}")))?;
                let json = json::response_json(&binding, &message).map_err(tonic::Status::internal)?;
                Ok((cursor_of(&message), json))
            });
            match json {
                Ok((cursor, json)) if sse => (sse_event(cursor.as_deref(), &json), false),
                Ok((_, json)) => (ndjson_line(&json), false),
                Err(status) => {
                    let status = if status.code() == tonic::Code::Internal {
                        tracing::error!(error = status.message(), "a REST stream failed");
                        tonic::Status::internal("internal error")
                    } else {
                        status
                    };
                    let body = status_json(&status).to_string();
                    let frame = if sse {
                        sse_error(body.as_bytes())
                    } else {
                        ndjson_line(body.as_bytes())
                    };
                    (frame, true)
                }
            }
        })
        // The error is the stream's last frame.
        .scan(false, |ended, (frame, failed)| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = failed;
            futures::future::ready(Some(Ok::<Bytes, std::convert::Infallible>(frame)))
        });
    let mut response = Response::new(AxumBody::from_stream(framed));
    let media = if sse { EVENT_STREAM } else { NDJSON };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    super::copy_passthrough_headers(reply_headers, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_event_has_its_id_and_one_data_line() {
        assert_eq!(
            sse_event(Some("abc"), br#"{"a":"x\ny"}"#),
            Bytes::from_static(b"id: abc\ndata: {\"a\":\"x\\ny\"}\n\n")
        );
        // An id that would break the framing is left out rather than sent.
        assert_eq!(sse_event(Some("a\nb"), b"{}"), Bytes::from_static(b"data: {}\n\n"));
    }

    #[test]
    fn event_stream_is_chosen_only_when_accepted() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(wants_event_stream(Some(&v("text/event-stream"))));
        assert!(wants_event_stream(Some(&v(
            "application/json, TEXT/EVENT-STREAM;q=0.9"
        ))));
        assert!(!wants_event_stream(Some(&v("application/x-ndjson"))));
        assert!(!wants_event_stream(None));
    }
}
