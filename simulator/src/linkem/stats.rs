//! Statistics per direction and per rule: relaxed atomics written on the data path and read
//! from any thread, with serialisable snapshots for the engine's metrics and report.
//!
//! A rule's counters live as long as the relay: replacing a direction's rules keeps the
//! counters of a rule that keeps its name and adds counters for new names, so totals over a
//! run stay complete.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::model::Dir;

/// Live counters of one (direction, rule).
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    pub name: String,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub sent_packets: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_partition: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub duplicated: AtomicU64,
    pub corrupted: AtomicU64,
    pub reordered: AtomicU64,
    pub queue_depth: AtomicU64,
    pub max_queue_depth: AtomicU64,
}

impl RuleCounters {
    pub fn new(name: &str) -> Self {
        RuleCounters {
            name: name.to_string(),
            ..Self::default()
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// A packet of this rule entered the real transmit queue.
    pub fn queued(&self) {
        let d = self.queue_depth.fetch_add(1, Relaxed) + 1;
        self.max_queue_depth.fetch_max(d, Relaxed);
    }

    /// A queued packet left (sent or discarded at shutdown).
    pub fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Relaxed);
    }

    pub fn sent(&self, bytes: u64) {
        self.sent_packets.fetch_add(1, Relaxed);
        self.sent_bytes.fetch_add(bytes, Relaxed);
    }

    fn snapshot(&self) -> RuleStats {
        RuleStats {
            rule: self.name.clone(),
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            sent_packets: self.sent_packets.load(Relaxed),
            sent_bytes: self.sent_bytes.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_partition: self.dropped_partition.load(Relaxed),
            dropped_overflow: self.dropped_overflow.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            corrupted: self.corrupted.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            max_queue_depth: self.max_queue_depth.load(Relaxed),
        }
    }
}

/// Live counters of one direction.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    pub rules: Mutex<Vec<Arc<RuleCounters>>>,
    pub frames: AtomicU64,
    pub gso_frames: AtomicU64,
    pub gso_segmented: AtomicU64,
    pub gso_whole: AtomicU64,
    pub malformed: AtomicU64,
    pub recv_errors: AtomicU64,
    pub send_errors: AtomicU64,
    pub pcap_errors: AtomicU64,
    pub late_sends: AtomicU64,
    pub max_lateness_ns: AtomicU64,
    pub inline_packets: AtomicU64,
    pub inline_latency_ns: AtomicU64,
    pub wake_margin_ns: AtomicU64,
    pub max_wake_overshoot_ns: AtomicU64,
}

/// A queued packet sent more than this after its release time counts as late.
pub const LATE_NS: u64 = 100_000;

impl DirCounters {
    /// A queued packet left `ns` after its release time.
    pub fn lateness(&self, ns: u64) {
        if ns > LATE_NS {
            self.late_sends.fetch_add(1, Relaxed);
        }
        self.max_lateness_ns.fetch_max(ns, Relaxed);
    }

    /// The counters of rule `name`, created on first use.
    pub fn rule(&self, name: &str) -> Arc<RuleCounters> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rules.iter().find(|r| r.name == name) {
            return r.clone();
        }
        let r = Arc::new(RuleCounters::new(name));
        rules.push(r.clone());
        r
    }

    pub fn snapshot(&self, dir: Dir) -> DirectionStats {
        let rules = self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| r.snapshot())
            .collect();
        DirectionStats {
            dir,
            rules,
            frames: self.frames.load(Relaxed),
            gso_frames: self.gso_frames.load(Relaxed),
            gso_segmented: self.gso_segmented.load(Relaxed),
            gso_whole: self.gso_whole.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            recv_errors: self.recv_errors.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            pcap_errors: self.pcap_errors.load(Relaxed),
            late_sends: self.late_sends.load(Relaxed),
            max_lateness_ns: self.max_lateness_ns.load(Relaxed),
            inline_packets: self.inline_packets.load(Relaxed),
            inline_latency_ns: self.inline_latency_ns.load(Relaxed),
            wake_margin_ns: self.wake_margin_ns.load(Relaxed),
            max_wake_overshoot_ns: self.max_wake_overshoot_ns.load(Relaxed),
        }
    }
}

/// One (direction, rule)'s counters at one instant. Packets are counted after GSO
/// segmentation where segmentation happened; bytes are wire bytes (a GSO frame counts the
/// headers of every segment it stands for, as netem's `qdisc_pkt_len` does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleStats {
    pub rule: String,
    /// Packets that matched the rule.
    pub packets: u64,
    pub bytes: u64,
    /// Packets handed to the outgoing interface (duplicates included).
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    /// Dropped because the rule's queue held `limit` packets.
    pub dropped_overflow: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
    /// Packets waiting in the transmit queue now, and at most so far.
    pub queue_depth: u64,
    pub max_queue_depth: u64,
}

impl RuleStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_partition + self.dropped_overflow
    }
}

/// One direction's counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    pub dir: Dir,
    /// Per rule, in order of first use (`default` collects unmatched packets).
    pub rules: Vec<RuleStats>,
    /// Frames read from the incoming interface.
    pub frames: u64,
    /// Of those, GSO super-frames; how many were cut into wire-size packets, and how many had
    /// to be decided whole (a GSO kind linkem cannot segment).
    pub gso_frames: u64,
    pub gso_segmented: u64,
    pub gso_whole: u64,
    /// Frames too short or inconsistent to relay.
    pub malformed: u64,
    pub recv_errors: u64,
    /// Sends the kernel refused (e.g. the peer's backlog was full): packets lost in linkem
    /// itself, not by decision.
    pub send_errors: u64,
    pub pcap_errors: u64,
    /// Queued packets that left more than 100 µs after their release time (the emulation's
    /// own timing error: a loaded machine or a descheduled thread), and the worst lateness.
    pub late_sends: u64,
    pub max_lateness_ns: u64,
    /// Packets sent at once by the io thread (the zero-delay path), and the total time from
    /// their kernel receive timestamp to the return of their send: linkem's own latency.
    pub inline_packets: u64,
    pub inline_latency_ns: u64,
    /// How long before a release time the tx thread now wakes (its last margin: the base
    /// `tx_spin` plus the 90th percentile of its recent wake-up overshoots, capped by
    /// `tx_spin_max`), and the worst overshoot seen: how late this host wakes a sleeping
    /// thread.
    pub wake_margin_ns: u64,
    pub max_wake_overshoot_ns: u64,
}

impl DirectionStats {
    pub fn rule(&self, name: &str) -> Option<&RuleStats> {
        self.rules.iter().find(|r| r.rule == name)
    }

    /// Sum over all rules (the `rule` field is empty).
    pub fn total(&self) -> RuleStats {
        let mut t = RuleStats::default();
        for r in &self.rules {
            t.packets += r.packets;
            t.bytes += r.bytes;
            t.sent_packets += r.sent_packets;
            t.sent_bytes += r.sent_bytes;
            t.dropped_loss += r.dropped_loss;
            t.dropped_partition += r.dropped_partition;
            t.dropped_overflow += r.dropped_overflow;
            t.duplicated += r.duplicated;
            t.corrupted += r.corrupted;
            t.reordered += r.reordered;
            t.queue_depth += r.queue_depth;
            t.max_queue_depth = t.max_queue_depth.max(r.max_queue_depth);
        }
        t
    }
}

/// A relay's counters at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    pub relay: String,
    /// Interface names.
    pub a: String,
    pub b: String,
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
}

impl RelayStats {
    pub fn dir(&self, d: Dir) -> &DirectionStats {
        match d {
            Dir::AToB => &self.a_to_b,
            Dir::BToA => &self.b_to_a,
        }
    }
}
