//! Ethernet frames as the userspace link emulator reads every packet it relays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::frame(data));
