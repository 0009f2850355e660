//! The collector's durable queue, in a redb database.
//!
//! # Crash safety
//! A reading is *accepted* when the write transaction that assigns its sequence number and
//! appends it to the queue has committed (redb's default, immediate durability: the commit
//! returns after the data is on disk). The sequence counter and the queue entry are in the
//! same transaction, so after `kill -9` a restarted collector neither reuses a sequence number
//! nor loses an accepted reading. A reading leaves the queue only in the transaction that
//! follows the sink's acknowledgement; a crash between the two makes the collector send it
//! again, which the sink counts as a duplicate (it de-duplicates by `(device, seq)`).
//!
//! # Tables
//! - `queue`: `id → encoded reading`, ids increasing, so the oldest is first.
//! - `meta`: `name → u64`: `next_id`, `bytes` (the queue's payload size, for the budget),
//!   `seq/<device>` (the last sequence number given to a device), and lifetime totals
//!   `total/generated`, `total/accepted`, `total/acknowledged`, `total/dropped`.
//!
//! # Disk budget
//! The budget bounds the queued payload bytes (what `edgesim_collector_backlog_bytes` shows;
//! redb's pages add overhead on top, roughly 2-3x for small readings). When a new reading does
//! not fit, [`FullPolicy`] decides; either way the reading's sequence number is consumed, so
//! the sink sees the hole and counts it in `edgesim_sink_missing_total`: loss is never silent.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use edge_common::proto::Reading;

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_ID: &str = "next_id";
const BYTES: &str = "bytes";
const T_GENERATED: &str = "total/generated";
const T_ACCEPTED: &str = "total/accepted";
const T_ACKED: &str = "total/acknowledged";
const T_DROPPED: &str = "total/dropped";

/// What to do with a new reading when the queue is at its disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Evict the oldest queued readings to make room (the freshest data wins; the sink sees
    /// holes at the start of the outage).
    DropOldest,
    /// Refuse the new reading (the backlog is kept intact; the sink sees holes at the end of
    /// the outage).
    DropNewest,
}

/// A storage failure, naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the queue database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("{op} in {path}: {source}")]
    Op {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("queue entry {id} in {path} is corrupt")]
    Corrupt { id: u64, path: PathBuf },
}

/// A reading to be queued; the store gives it its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device: String,
    pub ts_ms: u64,
    pub value: f64,
}

/// The result of [`Store::enqueue`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Enqueued {
    /// Readings written to the queue.
    pub accepted: u64,
    /// New readings refused (drop-newest).
    pub dropped_newest: u64,
    /// Queued readings evicted (drop-oldest).
    pub dropped_oldest: u64,
    /// The last sequence number given to each device in this call.
    pub last_seq: Vec<(String, u64)>,
}

/// The queue's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub readings: u64,
    pub bytes: u64,
    /// When the oldest queued reading was taken.
    pub oldest_ts_ms: Option<u64>,
}

/// Lifetime totals, kept in the database (they survive restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub generated: u64,
    pub accepted: u64,
    pub acknowledged: u64,
    pub dropped: u64,
}

/// The durable queue.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

fn encode(r: &Reading) -> Vec<u8> {
    let dev = r.device.as_bytes();
    let mut v = Vec::with_capacity(1 + 24 + dev.len());
    v.push(1u8);
    v.extend_from_slice(&r.seq.to_le_bytes());
    v.extend_from_slice(&r.ts_ms.to_le_bytes());
    v.extend_from_slice(&r.value.to_bits().to_le_bytes());
    v.extend_from_slice(dev);
    v
}

fn decode(b: &[u8]) -> Option<Reading> {
    let (&version, rest) = b.split_first()?;
    if version != 1 || rest.len() < 24 {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(rest.get(i..i + 8)?.try_into().ok()?))
    };
    Some(Reading {
        seq: word(0)?,
        ts_ms: word(8)?,
        value: f64::from_bits(word(16)?),
        device: String::from_utf8(rest.get(24..)?.to_vec()).ok()?,
    })
}

fn seq_key(device: &str) -> String {
    format!("seq/{device}")
}

impl Store {
    /// Opens (or creates) `dir/queue.redb`, recovering it after a crash if needed.
    ///
    /// # Errors
    /// When the directory or the database cannot be created or opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("queue.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let s = Self { db, path };
        // Create both tables, so reads of a fresh database find them.
        let txn = s.db.begin_write().map_err(s.op("starting a write"))?;
        txn.open_table(QUEUE).map_err(s.op("creating the queue"))?;
        txn.open_table(META)
            .map_err(s.op("creating the meta table"))?;
        txn.commit().map_err(s.op("committing"))?;
        Ok(s)
    }

    fn op<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Op {
            op,
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives each sample the next sequence number of its device and queues it, in one durable
    /// transaction, applying `policy` when the queued bytes would exceed `budget`. Returns
    /// only after the commit.
    ///
    /// # Errors
    /// When the transaction fails; then nothing of this call is stored or numbered.
    pub fn enqueue(
        &self,
        samples: &[Sample],
        budget: u64,
        policy: FullPolicy,
    ) -> Result<Enqueued, StoreError> {
        let mut out = Enqueued::default();
        let txn = self.db.begin_write().map_err(self.op("starting a write"))?;
        {
            let mut q = txn
                .open_table(QUEUE)
                .map_err(self.op("opening the queue"))?;
            let mut meta = txn
                .open_table(META)
                .map_err(self.op("opening the meta table"))?;
            let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<u64, StoreError> {
                Ok(meta
                    .get(k)
                    .map_err(self.op("reading meta"))?
                    .map_or(0, |v| v.value()))
            };
            let mut next_id = get(&meta, NEXT_ID)?;
            let mut bytes = get(&meta, BYTES)?;
            let mut last: Vec<(String, u64)> = Vec::new();
            for s in samples {
                let key = seq_key(&s.device);
                let seq = match last.iter().find(|(d, _)| *d == s.device) {
                    Some((_, n)) => n + 1,
                    None => get(&meta, &key)? + 1,
                };
                meta.insert(key.as_str(), seq)
                    .map_err(self.op("numbering a reading"))?;
                match last.iter_mut().find(|(d, _)| *d == s.device) {
                    Some(e) => e.1 = seq,
                    None => last.push((s.device.clone(), seq)),
                }
                let enc = encode(&Reading {
                    device: s.device.clone(),
                    seq,
                    ts_ms: s.ts_ms,
                    value: s.value,
                });
                let size = enc.len() as u64;
                if bytes + size > budget {
                    match policy {
                        FullPolicy::DropNewest => {
                            out.dropped_newest += 1;
                            continue;
                        }
                        FullPolicy::DropOldest => {
                            while bytes + size > budget {
                                let Some((_, v)) = q.pop_first().map_err(self.op("evicting"))?
                                else {
                                    break;
                                };
                                bytes = bytes.saturating_sub(v.value().len() as u64);
                                out.dropped_oldest += 1;
                            }
                            if bytes + size > budget {
                                // Larger than the whole budget: it can never be queued.
                                out.dropped_newest += 1;
                                continue;
                            }
                        }
                    }
                }
                q.insert(next_id, enc.as_slice())
                    .map_err(self.op("queueing a reading"))?;
                next_id += 1;
                bytes += size;
                out.accepted += 1;
            }
            meta.insert(NEXT_ID, next_id)
                .map_err(self.op("writing meta"))?;
            meta.insert(BYTES, bytes).map_err(self.op("writing meta"))?;
            let add =
                |meta: &mut redb::Table<&str, u64>, k: &str, n: u64| -> Result<(), StoreError> {
                    let v = get(meta, k)? + n;
                    meta.insert(k, v).map_err(self.op("writing totals"))?;
                    Ok(())
                };
            add(&mut meta, T_GENERATED, samples.len() as u64)?;
            add(&mut meta, T_ACCEPTED, out.accepted)?;
            add(
                &mut meta,
                T_DROPPED,
                out.dropped_newest + out.dropped_oldest,
            )?;
            out.last_seq = last;
        }
        txn.commit().map_err(self.op("committing"))?;
        Ok(out)
    }

    /// The oldest `n` queued readings with their queue ids.
    ///
    /// # Errors
    /// When reading fails or an entry is corrupt.
    pub fn peek(&self, n: usize) -> Result<Vec<(u64, Reading)>, StoreError> {
        let txn = self.db.begin_read().map_err(self.op("starting a read"))?;
        let q = txn
            .open_table(QUEUE)
            .map_err(self.op("opening the queue"))?;
        let mut out = Vec::with_capacity(n);
        for e in q.iter().map_err(self.op("reading the queue"))?.take(n) {
            let (k, v) = e.map_err(self.op("reading the queue"))?;
            let id = k.value();
            let r = decode(v.value()).ok_or_else(|| StoreError::Corrupt {
                id,
                path: self.path.clone(),
            })?;
            out.push((id, r));
        }
        Ok(out)
    }

    /// Removes acknowledged readings; returns how many were still queued (some may have been
    /// evicted meanwhile).
    ///
    /// # Errors
    /// When the transaction fails; then nothing is removed (and the readings will be resent).
    pub fn ack(&self, ids: &[u64]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(self.op("starting a write"))?;
        let mut removed = 0;
        {
            let mut q = txn
                .open_table(QUEUE)
                .map_err(self.op("opening the queue"))?;
            let mut meta = txn
                .open_table(META)
                .map_err(self.op("opening the meta table"))?;
            let mut freed = 0u64;
            for &id in ids {
                if let Some(v) = q.remove(id).map_err(self.op("removing"))? {
                    freed += v.value().len() as u64;
                    removed += 1;
                }
            }
            let bytes = meta
                .get(BYTES)
                .map_err(self.op("reading meta"))?
                .map_or(0, |v| v.value());
            meta.insert(BYTES, bytes.saturating_sub(freed))
                .map_err(self.op("writing meta"))?;
            let acked = meta
                .get(T_ACKED)
                .map_err(self.op("reading meta"))?
                .map_or(0, |v| v.value());
            meta.insert(T_ACKED, acked + removed)
                .map_err(self.op("writing totals"))?;
        }
        txn.commit().map_err(self.op("committing"))?;
        Ok(removed)
    }

    /// The queue's current size and the age of its oldest entry.
    ///
    /// # Errors
    /// When reading fails.
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        let txn = self.db.begin_read().map_err(self.op("starting a read"))?;
        let q = txn
            .open_table(QUEUE)
            .map_err(self.op("opening the queue"))?;
        let meta = txn
            .open_table(META)
            .map_err(self.op("opening the meta table"))?;
        let oldest = q.first().map_err(self.op("reading the queue"))?;
        Ok(Backlog {
            readings: q.len().map_err(self.op("counting the queue"))?,
            bytes: meta
                .get(BYTES)
                .map_err(self.op("reading meta"))?
                .map_or(0, |v| v.value()),
            oldest_ts_ms: oldest.and_then(|(_, v)| decode(v.value())).map(|r| r.ts_ms),
        })
    }

    /// Lifetime totals and the last sequence number of every device.
    ///
    /// # Errors
    /// When reading fails.
    pub fn totals(&self) -> Result<(Totals, Vec<(String, u64)>), StoreError> {
        let txn = self.db.begin_read().map_err(self.op("starting a read"))?;
        let meta = txn
            .open_table(META)
            .map_err(self.op("opening the meta table"))?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(self.op("reading meta"))?
                .map_or(0, |v| v.value()))
        };
        let totals = Totals {
            generated: get(T_GENERATED)?,
            accepted: get(T_ACCEPTED)?,
            acknowledged: get(T_ACKED)?,
            dropped: get(T_DROPPED)?,
        };
        let mut seqs = Vec::new();
        for e in meta
            .range("seq/".."seq0")
            .map_err(self.op("reading meta"))?
        {
            let (k, v) = e.map_err(self.op("reading meta"))?;
            if let Some(dev) = k.value().strip_prefix("seq/") {
                seqs.push((dev.to_string(), v.value()));
            }
        }
        Ok((totals, seqs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(devices: &[&str], each: usize) -> Vec<Sample> {
        let mut v = Vec::new();
        for i in 0..each {
            for d in devices {
                v.push(Sample {
                    device: (*d).to_string(),
                    ts_ms: 1000 + i as u64,
                    value: i as f64,
                });
            }
        }
        v
    }

    #[test]
    fn codec_round_trips_and_rejects_garbage() {
        let r = Reading {
            device: "gw-1-sensor-2".into(),
            seq: 42,
            ts_ms: 7,
            value: -1.25,
        };
        assert_eq!(decode(&encode(&r)), Some(r));
        assert_eq!(decode(&[2, 0, 0]), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn numbers_per_device_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let e = s
                .enqueue(&samples(&["a", "b"], 3), u64::MAX, FullPolicy::DropOldest)
                .unwrap();
            assert_eq!(e.accepted, 6);
            let got = s.peek(10).unwrap();
            let a: Vec<u64> = got
                .iter()
                .filter(|(_, r)| r.device == "a")
                .map(|(_, r)| r.seq)
                .collect();
            assert_eq!(a, vec![1, 2, 3]);
            assert_eq!(s.ack(&[got[0].0, got[1].0]).unwrap(), 2);
            // Acknowledging twice removes nothing more.
            assert_eq!(s.ack(&[got[0].0]).unwrap(), 0);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.backlog().unwrap().readings, 4);
        let e = s
            .enqueue(&samples(&["a"], 1), u64::MAX, FullPolicy::DropOldest)
            .unwrap();
        assert_eq!(e.last_seq, vec![("a".to_string(), 4)]);
        let (t, seqs) = s.totals().unwrap();
        assert_eq!(
            t,
            Totals {
                generated: 7,
                accepted: 7,
                acknowledged: 2,
                dropped: 0
            }
        );
        assert_eq!(seqs, vec![("a".into(), 4), ("b".into(), 3)]);
        let b = s.backlog().unwrap();
        assert_eq!(b.readings, 5);
        assert_eq!(b.oldest_ts_ms, Some(1001));
    }

    #[test]
    fn budget_policies_count_every_drop_and_consume_sequence_numbers() {
        let one = encode(&Reading {
            device: "a".into(),
            seq: 1,
            ts_ms: 0,
            value: 0.0,
        })
        .len() as u64;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let e = s
            .enqueue(&samples(&["a"], 10), 4 * one, FullPolicy::DropNewest)
            .unwrap();
        assert_eq!((e.accepted, e.dropped_newest, e.dropped_oldest), (4, 6, 0));
        let seqs: Vec<u64> = s
            .peek(10)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);

        let e = s
            .enqueue(&samples(&["a"], 3), 4 * one, FullPolicy::DropOldest)
            .unwrap();
        assert_eq!((e.accepted, e.dropped_newest, e.dropped_oldest), (3, 0, 3));
        let seqs: Vec<u64> = s
            .peek(10)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.seq)
            .collect();
        assert_eq!(seqs, vec![4, 11, 12, 13]);
        assert_eq!(s.backlog().unwrap().bytes, 4 * one);
        let (t, _) = s.totals().unwrap();
        assert_eq!(t.generated, t.accepted + 6);
        assert_eq!(t.dropped, 9);
    }
}
