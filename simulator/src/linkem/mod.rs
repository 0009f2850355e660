//! linkem: the userspace link emulator, for kernels without `sch_netem` (stock Jetson L4T,
//! WSL2, minimal VMs) and for runs that must replay bit for bit.
//!
//! A [`Relay`] sits between two interfaces `a` and `b` of one network namespace and copies
//! every Ethernet frame from one to the other through AF_PACKET sockets, applying per
//! direction the first [`Rule`] whose (source prefix → destination prefix) matches. The fabric
//! places it between a site's bridge port `q` and the veth `g` whose peer holds the site's
//! gateway address, so every packet entering or leaving a site crosses it.
//!
//! Design, in the order a packet meets it:
//! 1. **Capture with offloads on.** Sockets use `PACKET_VNET_HDR`, so TCP's 64 KB GSO
//!    super-frames arrive and leave whole with their virtio-net header, and
//!    `PACKET_IGNORE_OUTGOING` so a relay never reads back what it sent. Zero-impairment
//!    throughput stays close to a bare veth's (see `bench/linkem/`). Receive timestamps come
//!    from the kernel (`sys`).
//! 2. **Per-packet semantics where they matter.** Delay and rate act on whole GSO frames,
//!    counting the wire bytes of every segment they stand for. When a rule drops, duplicates,
//!    corrupts or reorders, GSO frames are first cut into wire-size packets in software
//!    ([`frame::segment`], TCP over IPv4/IPv6 and UDP-L4, with partial checksums left to the
//!    kernel), so a 64 KB frame is never lost or duplicated as one unit. Other GSO kinds are
//!    decided whole and counted (`gso_whole`).
//! 3. **netem's decisions, seeded.** [`decide`] reproduces `netem_enqueue` (order of draws,
//!    correlation, Gilbert-Elliott, `tabledist` with iproute2's tables, reorder gap, rate
//!    serialisation, limit), drawing from one ChaCha8 stream per (relay, direction, rule)
//!    derived from the run seed and stable names — the same seed and packet sequence give the
//!    same decisions, recorded if asked in a [`DecisionLog`].
//! 4. **Timing on dedicated threads** ([`relay`]): due packets are sent inline by the io
//!    thread; delayed ones wait in a release-ordered queue whose thread sleeps until shortly
//!    before the release time and spins the rest. No tokio timers.
//! 5. **Counting** ([`stats`]): per direction and rule, atomics readable at any time,
//!    snapshots serialisable for the report; optional pcap capture of what leaves
//!    ([`pcap`]).
//!
//! Rules change at run time with [`Relay::update`]: the next packet read is decided by the
//! new rules, queued packets keep their release times.

pub mod decide;
pub mod dist;
pub mod frame;
pub mod log;
pub mod model;
pub mod pcap;
pub mod relay;
pub mod stats;
mod sys;
pub mod testbed;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use log::{Decision, DecisionLog, LogEntry};
pub use model::{DEFAULT_RULE, Dir, DirectionConfig, Impairment, Loss, Rule};
pub use relay::{Relay, Timing};
pub use stats::{DirectionStats, RelayStats, RuleStats};

pub use crate::host::tc::Distribution;

/// Everything a relay needs to start.
#[derive(Debug)]
pub struct RelayConfig {
    /// Stable name (e.g. the link's): names random streams, captures and errors.
    pub name: String,
    /// The namespace holding both interfaces.
    pub ns: OwnedFd,
    /// Its name, for errors.
    pub ns_name: String,
    /// Interface names.
    pub a: String,
    pub b: String,
    /// The run's seed.
    pub seed: u64,
    pub a_to_b: DirectionConfig,
    pub b_to_a: DirectionConfig,
    /// A directory to write `<name>-a-to-b.pcap` and `<name>-b-to-a.pcap` into: what leaves
    /// the relay, with real timestamps.
    pub pcap: Option<PathBuf>,
    pub decision_log: DecisionLog,
    pub timing: Timing,
}

impl RelayConfig {
    /// A relay that passes everything untouched, with default timing and no capture.
    pub fn new(
        name: impl Into<String>,
        ns: OwnedFd,
        ns_name: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
        seed: u64,
    ) -> Self {
        RelayConfig {
            name: name.into(),
            ns,
            ns_name: ns_name.into(),
            a: a.into(),
            b: b.into(),
            seed,
            a_to_b: DirectionConfig::default(),
            b_to_a: DirectionConfig::default(),
            pcap: None,
            decision_log: DecisionLog::Off,
            timing: Timing::default(),
        }
    }
}

/// A linkem failure, naming the relay, interface, namespace or file involved.
#[derive(Debug, thiserror::Error)]
pub enum LinkemError {
    #[error("relay {relay}, {dir}, rule {rule:?}: {detail}")]
    InvalidRule {
        relay: String,
        dir: Dir,
        rule: String,
        detail: String,
    },
    #[error("relay {relay}: {detail}")]
    InvalidConfig { relay: String, detail: String },
    #[error("{op} interface {iface} in namespace {ns}: {source}")]
    Socket {
        op: &'static str,
        iface: String,
        ns: String,
        #[source]
        source: io::Error,
    },
    #[error("relay {relay}: {source}")]
    Namespace {
        relay: String,
        #[source]
        source: Box<crate::host::HostError>,
    },
    #[error("{op} {}: {source}", .path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("relay {relay}: starting thread {thread}: {source}")]
    Thread {
        relay: String,
        thread: String,
        #[source]
        source: io::Error,
    },
    #[error("relay {relay}: thread {thread} panicked")]
    Panicked { relay: String, thread: String },
}

pub type Result<T, E = LinkemError> = std::result::Result<T, E>;
