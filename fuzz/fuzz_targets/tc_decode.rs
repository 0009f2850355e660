//! Netlink datagrams as the kernel answers a tc dump: qdisc and class messages and the options of tbf, htb and netem.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgesim::fuzzing::tc_decode(data));
