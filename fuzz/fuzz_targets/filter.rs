//! ListUsers filters: `parse` never panics on any string, and what it accepts respects the condition limit.
//!
//! Input: lossy UTF-8, the whole filter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use user_service::domain::filter::{MAX_CONDITIONS, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(filter) => assert!(
            filter.conditions.len() <= MAX_CONDITIONS,
            "{text:?} gave too many conditions"
        ),
        Err(e) => assert!(!e.message.is_empty(), "{text:?} was refused with an empty message"),
    }
});
