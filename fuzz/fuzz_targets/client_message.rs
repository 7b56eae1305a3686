//! Client message decoding (`server::protocol::parse`): any text frame gives a message or a
//! clear error with a stable code, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myagent_host::server::protocol::parse;

const CODES: &[&str] = &[
    "invalid_json",
    "invalid_message",
    "missing_event",
    "unknown_event",
    "missing_field",
    "invalid_field",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in [None, Some("testkit.")] {
        if let Err(e) = parse(text, prefix) {
            assert!(CODES.contains(&e.code.as_str()), "unexpected code {}", e.code);
            assert!(!e.message.is_empty());
        }
    }
});
