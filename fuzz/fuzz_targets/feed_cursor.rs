//! WatchUsers cursors, as they arrive in `start_cursor` or an SSE `Last-Event-ID` header: parsing never panics,
//! an accepted cursor is exactly what encoding it gives back (one spelling per cursor), and the SSE framing writer
//! never lets an id break out of its line.
//!
//! Input: the raw header value bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use user_service::domain::event::FeedCursor;
use user_service::transcode::streaming::{last_event_id, sse_event};

fuzz_target!(|data: &[u8]| {
    let Some(text) = last_event_id(data) else {
        assert!(std::str::from_utf8(data).is_err(), "UTF-8 refused");
        return;
    };
    if let Ok(cursor) = FeedCursor::decode(text, "start_cursor") {
        assert_eq!(cursor.encode(), text, "a cursor has one spelling");
    }
    let event = sse_event(Some(text), b"{}");
    let event = std::str::from_utf8(&event).expect("events are UTF-8");
    assert!(event.ends_with("data: {}\n\n"), "{event:?}");
    assert_eq!(event.matches('\n').count(), if event.starts_with("id: ") { 3 } else { 2 }, "{event:?}");
});
