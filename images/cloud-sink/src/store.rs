//! Durable storage of the readings the sink accepted, in a redb database.
//!
//! Table `readings`: `(device, seq) → (ts_ms, value)`. A batch is written in one transaction
//! with redb's default (immediate) durability, and the sink acknowledges the batch only after
//! the commit returns, so an acknowledged reading survives a crash of the sink. On start the
//! ledger is rebuilt by scanning the keys, so a restarted sink still knows which sequence
//! numbers it has and does not report old readings as missing.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use edge_common::proto::Reading;

const READINGS: TableDefinition<(&str, u64), (u64, f64)> = TableDefinition::new("readings");

/// A storage failure, naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the database {path}: {source}")]
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
}

/// The readings database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `dir/sink.redb`.
    ///
    /// # Errors
    /// When the directory or the database cannot be created or opened.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("sink.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let s = Self { db, path };
        // Create the table so that a read of a new database finds it.
        s.write(&[])?;
        Ok(s)
    }

    fn op<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Op {
            op,
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Stores `readings` durably, in one transaction.
    ///
    /// # Errors
    /// When the transaction fails; then none of them is stored.
    pub fn write(&self, readings: &[&Reading]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(self.op("starting a write"))?;
        {
            let mut t = txn
                .open_table(READINGS)
                .map_err(self.op("opening the table"))?;
            for r in readings {
                t.insert((r.device.as_str(), r.seq), (r.ts_ms, r.value))
                    .map_err(self.op("inserting a reading"))?;
            }
        }
        txn.commit().map_err(self.op("committing"))
    }

    /// Calls `f(device, seq)` for every stored reading, in key order.
    ///
    /// # Errors
    /// When reading fails.
    pub fn scan(&self, mut f: impl FnMut(&str, u64)) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.op("starting a read"))?;
        let t = txn
            .open_table(READINGS)
            .map_err(self.op("opening the table"))?;
        let mut n = 0;
        for entry in t.iter().map_err(self.op("scanning"))? {
            let (k, _) = entry.map_err(self.op("scanning"))?;
            let (device, seq) = k.value();
            f(device, seq);
            n += 1;
        }
        Ok(n)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
