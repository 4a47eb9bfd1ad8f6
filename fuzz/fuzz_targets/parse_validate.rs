//! Parse + validate arbitrary bytes: must never panic, hang or blow the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = secureclaw_engine::validate::validate_bytes(std::path::Path::new("fuzz.yaml"), data);
});
