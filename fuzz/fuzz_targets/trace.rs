//! Link trace CSV files (the `trace:` of a link).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::trace(data));
