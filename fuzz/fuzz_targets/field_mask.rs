//! Update-mask paths: parsing never panics, and whatever parses prints (`Display`) to paths that parse back to
//! the same mask.
//!
//! Input: lossy UTF-8, one mask path per line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use user_service::domain::field_mask::UpdateMask;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let paths: Vec<&str> = text.split('\n').collect();
    let Ok(UpdateMask::Paths(parsed)) = UpdateMask::parse(&paths, "update_mask") else {
        return;
    };
    let printed: Vec<String> = parsed.iter().map(ToString::to_string).collect();
    let mask = UpdateMask::Paths(parsed);
    match UpdateMask::parse(&printed, "update_mask") {
        Ok(reparsed) => assert_eq!(
            reparsed, mask,
            "printed paths {printed:?} (from {paths:?}) parse to a different mask"
        ),
        Err(violations) => panic!("printed paths {printed:?} (from {paths:?}) do not parse: {violations:?}"),
    }
});
