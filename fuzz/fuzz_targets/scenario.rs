//! Scenario text: YAML parsing, validation into a plan, and the diagnostics users read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::scenario(data));
