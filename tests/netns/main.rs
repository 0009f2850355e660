//! Integration tests of the `netns` target against the real kernel: every test builds a lab
//! with the `edgesim` binary and observes its effects from inside the nodes — datagrams
//! counted, rates measured, cgroup files read back, processes watched — and checks that the
//! run left nothing behind.
//!
//! They need root (network namespaces, tc, nftables, cgroups) and skip with a printed reason
//! without it, unless `EDGESIM_REQUIRE` lists `netns` (CI), in which case they fail. Tools:
//! `ip` (iproute2), `nft`, `ping` (iputils), `iperf3`.
//!
//! Run them narrowly: `cargo test -p edgesim --test netns -- <filter>`.

mod common;

mod board;
mod cgroups;
mod device;
mod docker;
mod impairments;
mod kind;
mod library;
mod live;
mod nodes;
mod partition;
mod teardown;
mod timeline;
mod workloads;
