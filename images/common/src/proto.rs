//! The ingest protocol between `iot-collector` and `cloud-sink`.
//!
//! `POST /ingest` with a JSON [`Batch`]; the sink answers `200` with an [`IngestAck`] once the
//! batch is durable. Readings are identified by `(device, seq)`: resending a batch (after a
//! timeout, a lost acknowledgement, or a collector restart) is harmless, because the sink keeps
//! each `(device, seq)` once and counts the rest as duplicates. Sequence numbers start at 1
//! and increase by one per reading of a device, so the sink can tell exactly which are missing.

use serde::{Deserialize, Serialize};

/// One sensor reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The device's id, unique in the run (`<node>-sensor-<n>`).
    pub device: String,
    /// The device's sequence number: 1, 2, 3, … with no gaps at the source.
    pub seq: u64,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The measured value.
    pub value: f64,
}

/// A batch of readings from one collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The sending collector's node name (for logs).
    pub source: String,
    pub readings: Vec<Reading>,
}

/// The sink's answer to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAck {
    /// Readings stored for the first time.
    pub accepted: u64,
    /// Readings the sink already had.
    pub duplicates: u64,
    /// Readings refused as invalid (sequence below the first sequence number).
    pub rejected: u64,
}
