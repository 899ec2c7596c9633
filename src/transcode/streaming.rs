//! REST for server-streaming methods, generic over any annotated one: newline-delimited JSON
//! (`application/x-ndjson`, one message per line) by default, Server-Sent Events with `Accept:
//! text/event-stream`. Two naming conventions make SSE resumable without knowing the method: a string field
//! `cursor` of the streamed message becomes each event's `id:`, and the request's `Last-Event-ID` header (what
//! a browser's `EventSource` sends when it reconnects) sets the request's string field `start_cursor`. A failure
//! after the stream has begun is its last line (NDJSON) or an `event: error` (SSE), with the REST error body.
//! Streams that send the same message (a change-feed event goes to every watcher) share its frame: it is
//! written as JSON once, not once per stream.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Mutex, OnceLock, PoisonError};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Response, header};
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

use super::rule::HttpBinding;
use super::{MessageStream, invalid_argument, json, wire_json};
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
pub fn cursor_of(message: &DynamicMessage) -> Option<String> {
    json::string_field(message, CURSOR_FIELD)
}

/// Frames of the messages streamed last, shared by every stream: a change-feed event reaches each watcher as the
/// same encoded message, and decoding it and writing its JSON was most of the server's work per event per
/// watcher. Looked up by the message's bytes (and the method and media type), never by an identity that two
/// different messages could share, so a hit is always the frame this stream would have written.
struct RecentFrames {
    entries: Mutex<VecDeque<RecentFrame>>,
}

struct RecentFrame {
    hash: u64,
    /// The method and the binding's `response_body`.
    method: String,
    sse: bool,
    message: Bytes,
    frame: Bytes,
}

/// Frames kept: more than the events of one commit batch of the feed's shared reader (32), so every watcher of
/// a batch finds each of its frames.
const RECENT_FRAMES: usize = 128;
/// A message larger than this, or whose frame is more than twice this, is framed per stream: the kept
/// messages and frames stay within 128 × 96 KiB (12 MiB) whatever is streamed; a change-feed event of a user
/// with the largest attributes (16 KiB) is kept.
const RECENT_FRAME_MAX: usize = 32 * 1024;

impl RecentFrames {
    fn new() -> RecentFrames {
        RecentFrames {
            entries: Mutex::new(VecDeque::with_capacity(RECENT_FRAMES)),
        }
    }

    fn get() -> &'static RecentFrames {
        static FRAMES: OnceLock<RecentFrames> = OnceLock::new();
        FRAMES.get_or_init(RecentFrames::new)
    }

    fn key(method: &str, sse: bool, message: &[u8]) -> u64 {
        let mut hasher = DefaultHasher::new();
        method.hash(&mut hasher);
        sse.hash(&mut hasher);
        message.hash(&mut hasher);
        hasher.finish()
    }

    /// The frame of `message`, written by `frame` unless a stream already did.
    fn frame(
        &self,
        method: &str,
        sse: bool,
        message: Bytes,
        frame: impl FnOnce(Bytes) -> Result<Bytes, tonic::Status>,
    ) -> Result<Bytes, tonic::Status> {
        if message.len() > RECENT_FRAME_MAX {
            return frame(message);
        }
        let hash = Self::key(method, sse, &message);
        {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = entries
                .iter()
                .rev()
                .find(|e| e.hash == hash && e.sse == sse && e.method == method && e.message == message)
            {
                return Ok(hit.frame.clone());
            }
        }
        let framed = frame(message.clone())?;
        if framed.len() > 2 * RECENT_FRAME_MAX {
            return Ok(framed);
        }
        // A copy for the key, made only for a frame that is kept: the message may be a slice of a larger buffer
        // that should not stay pinned.
        let key = Bytes::copy_from_slice(&message);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= RECENT_FRAMES {
            entries.pop_front();
        }
        entries.push_back(RecentFrame {
            hash,
            method: method.to_owned(),
            sse,
            message: key,
            frame: framed.clone(),
        });
        Ok(framed)
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
    // The JSON depends on the method and on the binding's `response_body`, nothing of the request.
    let method = format!(
        "{} {}",
        binding.rpc.full_name(),
        binding.response_body.as_deref().unwrap_or("*")
    );
    let framed = stream
        .map(move |item| {
            let framed = item.and_then(|bytes| {
                RecentFrames::get().frame(&method, sse, bytes, |bytes| {
                    let (json, cursor) = wire_json::answer_json(
                        &output,
                        binding.response_body.as_deref(),
                        &bytes,
                        sse.then_some(CURSOR_FIELD),
                    )
                    .map_err(tonic::Status::internal)?;
                    Ok(if sse {
                        sse_event(cursor.as_deref(), &json)
                    } else {
                        ndjson_line(&json)
                    })
                })
            });
            match framed {
                Ok(frame) => (frame, false),
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
    fn a_frame_is_shared_only_by_the_same_message_method_and_media_type() {
        let frames = RecentFrames::new();
        let framed = std::cell::Cell::new(0);
        let frame = |method: &str, sse: bool, message: &'static [u8]| {
            frames
                .frame(method, sse, Bytes::from_static(message), |m| {
                    framed.set(framed.get() + 1);
                    Ok(Bytes::from(format!("{method} {sse} {}", String::from_utf8_lossy(&m))))
                })
                .expect("framed")
        };
        assert_eq!(frame("m *", false, b"a"), "m * false a");
        assert_eq!(frame("m *", false, b"a"), "m * false a");
        assert_eq!(framed.get(), 1, "the second stream reuses the first one's frame");
        assert_eq!(frame("m *", true, b"a"), "m * true a");
        assert_eq!(frame("n *", false, b"a"), "n * false a");
        assert_eq!(frame("m *", false, b"b"), "m * false b");
        assert_eq!(framed.get(), 4, "another media type, method or message is framed anew");
        // A failure is not kept: the next stream tries again.
        let failed = frames.frame("m *", false, Bytes::from_static(b"c"), |_| {
            Err(tonic::Status::internal("x"))
        });
        assert!(failed.is_err());
        assert_eq!(frame("m *", false, b"c"), "m * false c");
        assert_eq!(framed.get(), 5);
    }

    #[test]
    fn kept_frames_are_bounded_in_number_and_size() {
        let frames = RecentFrames::new();
        let framed = std::cell::Cell::new(0);
        let frame = |message: Vec<u8>| {
            frames
                .frame("m *", false, Bytes::from(message), |m| {
                    framed.set(framed.get() + 1);
                    Ok(m)
                })
                .expect("framed")
        };
        for i in 0..=RECENT_FRAMES {
            frame(i.to_string().into_bytes());
        }
        assert_eq!(frames.entries.lock().expect("lock").len(), RECENT_FRAMES);
        frame(b"0".to_vec());
        assert_eq!(framed.get(), RECENT_FRAMES + 2, "the oldest frame was dropped");
        let large = vec![b'x'; RECENT_FRAME_MAX + 1];
        frame(large.clone());
        frame(large);
        assert_eq!(
            framed.get(),
            RECENT_FRAMES + 4,
            "a large message is framed by each stream"
        );
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
