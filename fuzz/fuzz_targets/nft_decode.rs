//! Netlink datagrams as the kernel answers nf_tables requests: acknowledgements, extended-ack errors and rule dumps.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::nft_decode(data));
