//! The per-packet decision log: what linkem decided for each packet, and which packet it was
//! (addresses, ports, ICMP echo sequence: [`PacketId`]), to replay or compare runs or to find
//! a packet an application sent. Kept in memory (bounded) or written as JSON lines to a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

use super::frame::PacketId;
use super::model::Dir;

/// Where the decision log goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DecisionLog {
    #[default]
    Off,
    /// In memory, at most this many entries (later ones are counted, not kept); read them with
    /// [`super::Relay::decision_log`].
    Memory(usize),
    /// One JSON object per line, in this file (created or truncated).
    File(PathBuf),
}

/// What happened to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Pass,
    DropLoss,
    DropPartition,
    DropOverflow,
}

/// One decision. A duplicated packet gives two entries with the same `seq`, the second with
/// `copy: true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    pub dir: Dir,
    /// Position of the packet in its direction's sequence (after GSO segmentation).
    pub seq: u64,
    pub copy: bool,
    pub rule: String,
    /// Wire length in bytes.
    pub len: u32,
    pub decision: Decision,
    /// Release time minus arrival time, ns (0 when dropped; negative jitter is kept as netem
    /// computes it).
    pub delay_ns: i64,
    pub duplicated: bool,
    pub corrupted: bool,
    pub reordered: bool,
    /// Which packet it was (addresses, ports or ICMP echo id and sequence): absent for
    /// frames that are not IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<PacketId>,
}

enum Sink {
    Memory {
        entries: Vec<LogEntry>,
        max: usize,
        overflow: u64,
    },
    File {
        w: BufWriter<File>,
        errors: u64,
    },
}

/// A log shared by the threads of one relay.
pub(crate) struct LogSink {
    sink: Mutex<Sink>,
}

impl LogSink {
    pub fn memory(max: usize) -> Self {
        LogSink {
            sink: Mutex::new(Sink::Memory {
                entries: Vec::new(),
                max,
                overflow: 0,
            }),
        }
    }

    pub fn file(f: File) -> Self {
        LogSink {
            sink: Mutex::new(Sink::File {
                w: BufWriter::new(f),
                errors: 0,
            }),
        }
    }

    pub fn push(&self, e: LogEntry) {
        let mut s = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *s {
            Sink::Memory {
                entries,
                max,
                overflow,
            } => {
                if entries.len() < *max {
                    entries.push(e);
                } else {
                    *overflow += 1;
                }
            }
            Sink::File { w, errors } => {
                let ok = serde_json::to_writer(&mut *w, &e).is_ok() && w.write_all(b"\n").is_ok();
                if !ok {
                    *errors += 1;
                }
            }
        }
    }

    /// The entries kept in memory so far (empty for a file log).
    pub fn entries(&self) -> Vec<LogEntry> {
        match &*self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory { entries, .. } => entries.clone(),
            Sink::File { .. } => Vec::new(),
        }
    }

    pub fn flush(&self) -> std::io::Result<()> {
        match &mut *self.sink.lock().unwrap_or_else(|p| p.into_inner()) {
            Sink::Memory { .. } => Ok(()),
            Sink::File { w, .. } => w.flush(),
        }
    }
}
