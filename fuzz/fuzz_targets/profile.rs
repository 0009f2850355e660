//! Hardware profile text: parsing and checking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::profile(data));
