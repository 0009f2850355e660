//! One replica of the key-value store: an automerge document, its durable log, and the
//! stateless sync exchange.
//!
//! # Data model and conflicts
//! The document's root map holds `key → string`. Every write is an automerge change by this
//! replica's actor. When two replicas write the same key concurrently (neither had seen the
//! other's write), automerge keeps both values as a conflict and every replica picks the same
//! winner — the operation with the higher Lamport counter, ties broken by the higher actor id —
//! so replicas that have the same changes show the same value without talking further. The
//! losing value stays visible in [`Replica::conflicts`] until the key is written again. A
//! write concurrent with a delete survives the delete. Conflicts are counted when a merge
//! creates them.
//!
//! # Actors
//! The actor id is the first 12 bytes of SHA-256("offline-first/" + node name) followed by a
//! 4-byte *incarnation* that is incremented (durably) on every start. Reusing an actor after a
//! crash could reissue a sequence number that a peer already holds for a different change;
//! a fresh incarnation makes that impossible, and the node prefix keeps ids reproducible for a
//! given node and restart count.
//!
//! # Durability
//! `replica.log` in the data directory is a sequence of records, each a little-endian `u32`
//! length and that many bytes: first a compacted snapshot (automerge's `save`), then the
//! incremental chunks (`save_incremental`) of every local write and every applied remote
//! change, appended and `fsync`ed before the write is acknowledged or the sync answered. On
//! start the records are replayed; a torn last record (a crash mid-append) is dropped — it was
//! never acknowledged — and the log is rewritten as one snapshot. (automerge's own
//! partial-load mode would drop every chunk after the snapshot in that case, hence the
//! framing.)
//!
//! # Sync
//! Stateless and idempotent, one request per round: the initiator sends its heads and the
//! changes the responder may lack (everything not below the responder's heads as last
//! reported); the responder applies them and answers its own heads and the changes the
//! initiator lacks. Applying a change twice is a no-op, so lost answers and retries are
//! harmless; each round re-bases on the heads the other side actually reports, so a peer that
//! lost data is healed too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use automerge::transaction::{CommitOptions, Transactable as _};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ROOT, ReadDoc as _, ScalarValue, Value};
use sha2::{Digest as _, Sha256};

const DOC_FILE: &str = "replica.log";
const INCARNATION_FILE: &str = "actor-incarnation";

/// A replica failure.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<automerge::AutomergeError>,
    },
    #[error("applying changes from a peer: {0}")]
    Apply(#[source] Box<automerge::AutomergeError>),
    #[error("change {index} from a peer is malformed: {source}")]
    BadChange {
        index: usize,
        #[source]
        source: Box<automerge::LoadChangeError>,
    },
    #[error("writing to the document: {0}")]
    Write(#[source] Box<automerge::AutomergeError>),
    #[error("bad change hash `{0}`")]
    Hash(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ReplicaError + 'a {
    move |source| ReplicaError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What applying a peer's changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Changes that were new here.
    pub changes: usize,
    /// Keys that became conflicted by this merge.
    pub new_conflicts: usize,
}

/// Local changes a peer has not acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub ops: usize,
    /// When the oldest of them was written (ms since the epoch).
    pub oldest_ms: Option<u64>,
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    doc: AutoCommit,
    node_prefix: [u8; 12],
    log: Option<(File, PathBuf)>,
}

fn node_prefix(node: &str) -> [u8; 12] {
    let h = Sha256::digest(format!("offline-first/{node}").as_bytes());
    let mut p = [0u8; 12];
    p.copy_from_slice(&h[..12]);
    p
}

/// Parses hex change hashes.
///
/// # Errors
/// On a malformed hash.
pub fn parse_heads(heads: &[String]) -> Result<Vec<ChangeHash>, ReplicaError> {
    heads
        .iter()
        .map(|h| h.parse().map_err(|_| ReplicaError::Hash(h.clone())))
        .collect()
}

/// Change hashes as hex.
pub fn format_heads(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(ToString::to_string).collect()
}

fn scalar_text(v: &Value<'_>) -> String {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            other => other.to_string(),
        },
        Value::Object(t) => format!("<{t}>"),
    }
}

/// One log record: length, then the bytes.
fn record(bytes: &[u8]) -> Vec<u8> {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Replays a log; returns the document and how many records were complete.
fn replay(bytes: &[u8], path: &Path) -> Result<(AutoCommit, usize), ReplicaError> {
    let mut doc: Option<AutoCommit> = None;
    let mut rest = bytes;
    let mut n = 0;
    while let Some((len, body)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some(chunk) = body.get(..len) else { break };
        let load = |source| ReplicaError::Load {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        match &mut doc {
            None => doc = Some(AutoCommit::load(chunk).map_err(load)?),
            Some(d) => {
                d.load_incremental(chunk).map_err(load)?;
            }
        }
        rest = &body[len..];
        n += 1;
    }
    Ok((doc.unwrap_or_default(), n))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReplicaError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the directory of", path))?;
    }
    Ok(())
}

impl Replica {
    /// Opens the replica of `node`: durable in `dir` when given (loading what is there),
    /// else in memory.
    ///
    /// # Errors
    /// When the directory or files cannot be read or written, or the document is corrupt
    /// beyond a torn tail.
    pub fn open(dir: Option<&Path>, node: &str) -> Result<Self, ReplicaError> {
        let prefix = node_prefix(node);
        let Some(dir) = dir else {
            let mut actor = prefix.to_vec();
            actor.extend_from_slice(&0u32.to_be_bytes());
            return Ok(Self {
                doc: AutoCommit::new().with_actor(ActorId::from(actor)),
                node_prefix: prefix,
                log: None,
            });
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let inc_path = dir.join(INCARNATION_FILE);
        let incarnation = match std::fs::read_to_string(&inc_path) {
            Ok(s) => s.trim().parse::<u32>().unwrap_or(0).wrapping_add(1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => {
                return Err(ReplicaError::Io {
                    op: "reading",
                    path: inc_path,
                    source: e,
                });
            }
        };
        write_atomically(&inc_path, incarnation.to_string().as_bytes())?;
        let path = dir.join(DOC_FILE);
        let mut doc = match std::fs::read(&path) {
            Ok(bytes) => {
                let (doc, records) = replay(&bytes, &path)?;
                tracing::info!(path = %path.display(), records, "replica loaded");
                doc
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AutoCommit::new(),
            Err(e) => {
                return Err(ReplicaError::Io {
                    op: "reading",
                    path,
                    source: e,
                });
            }
        };
        let mut actor = prefix.to_vec();
        actor.extend_from_slice(&incarnation.to_be_bytes());
        doc.set_actor(ActorId::from(actor));
        // Compact: one snapshot, then appends from here on.
        write_atomically(&path, &record(&doc.save()))?;
        let file = File::options()
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        Ok(Self {
            doc,
            node_prefix: prefix,
            log: Some((file, path)),
        })
    }

    /// Appends what changed since the last persist and syncs it to disk.
    fn persist(&mut self) -> Result<(), ReplicaError> {
        let bytes = self.doc.save_incremental();
        if let Some((f, path)) = &mut self.log
            && !bytes.is_empty()
        {
            f.write_all(&record(&bytes))
                .map_err(io("appending to", path))?;
            f.sync_data().map_err(io("syncing", path))?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), ReplicaError> {
        let now = i64::try_from(edge_common::now_ms()).unwrap_or(i64::MAX);
        self.doc
            .commit_with(CommitOptions::default().with_time(now));
        self.persist()
    }

    /// Sets `key` to `value` (durably, when the replica is durable).
    ///
    /// # Errors
    /// When the change cannot be made or persisted.
    pub fn put(&mut self, key: &str, value: &str) -> Result<(), ReplicaError> {
        self.doc
            .put(ROOT, key, value)
            .map_err(|e| ReplicaError::Write(Box::new(e)))?;
        self.commit()
    }

    /// Deletes `key`; returns whether it existed.
    ///
    /// # Errors
    /// When the change cannot be made or persisted.
    pub fn delete(&mut self, key: &str) -> Result<bool, ReplicaError> {
        if self
            .doc
            .get(ROOT, key)
            .map_err(|e| ReplicaError::Write(Box::new(e)))?
            .is_none()
        {
            return Ok(false);
        }
        self.doc
            .delete(ROOT, key)
            .map_err(|e| ReplicaError::Write(Box::new(e)))?;
        self.commit()?;
        Ok(true)
    }

    /// The winning value of `key` and how many values it has (more than 1: a conflict).
    pub fn get(&self, key: &str) -> Option<(String, usize)> {
        let all = self.doc.get_all(ROOT, key).ok()?;
        let (v, _) = self.doc.get(ROOT, key).ok()??;
        Some((scalar_text(&v), all.len()))
    }

    /// Every key with its winning value.
    pub fn entries(&self) -> BTreeMap<String, String> {
        self.doc
            .keys(ROOT)
            .filter_map(|k| self.get(&k).map(|(v, _)| (k, v)))
            .collect()
    }

    /// Keys with concurrent values, and all their values (winner first).
    pub fn conflicts(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for k in self.doc.keys(ROOT) {
            if let Ok(all) = self.doc.get_all(ROOT, k.as_str())
                && all.len() > 1
            {
                let winner = self.get(&k).map(|(v, _)| v);
                let mut vals: Vec<String> = all.iter().map(|(v, _)| scalar_text(v)).collect();
                if let Some(w) = winner
                    && let Some(i) = vals.iter().position(|v| *v == w)
                {
                    vals.swap(0, i);
                }
                out.insert(k, vals);
            }
        }
        out
    }

    fn conflicted_keys(&self) -> BTreeSet<String> {
        self.conflicts().into_keys().collect()
    }

    /// SHA-256 (hex) of the visible state: the sorted `key → winning value` map as JSON.
    /// Replicas with the same changes have the same digest, whatever order they got them in.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(&self.entries()).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The document's heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    fn known(&mut self, heads: &[ChangeHash]) -> Vec<ChangeHash> {
        heads
            .iter()
            .copied()
            .filter(|h| self.doc.get_change_by_hash(h).is_some())
            .collect()
    }

    /// The changes (each in automerge's binary encoding) that a replica whose heads are
    /// `their_heads` may lack. Hashes unknown here are ignored, which can only send more.
    pub fn changes_since(&mut self, their_heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let known = self.known(their_heads);
        self.doc
            .get_changes(&known)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// Applies a peer's changes (durably), counting conflicts the merge creates. Changes
    /// already here are skipped; changes whose dependencies are missing wait in automerge's
    /// queue until those arrive.
    ///
    /// # Errors
    /// When a change is malformed (then none is applied) or cannot be persisted.
    pub fn apply(&mut self, changes: &[Vec<u8>]) -> Result<Applied, ReplicaError> {
        let parsed = changes
            .iter()
            .enumerate()
            .map(|(index, b)| {
                Change::from_bytes(b.clone()).map_err(|source| ReplicaError::BadChange {
                    index,
                    source: Box::new(source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fresh: Vec<Change> = parsed
            .into_iter()
            .filter(|c| self.doc.get_change_by_hash(&c.hash()).is_none())
            .collect();
        if fresh.is_empty() {
            return Ok(Applied::default());
        }
        let before = self.conflicted_keys();
        let before_count = self.doc.get_changes(&[]).len();
        self.doc
            .apply_changes(fresh)
            .map_err(|e| ReplicaError::Apply(Box::new(e)))?;
        self.persist()?;
        let after = self.conflicted_keys();
        Ok(Applied {
            changes: self.doc.get_changes(&[]).len().saturating_sub(before_count),
            new_conflicts: after.difference(&before).count(),
        })
    }

    /// This node's changes (any incarnation) that a replica with `their_heads` has not seen.
    pub fn pending_for(&mut self, their_heads: &[ChangeHash]) -> Pending {
        let known = self.known(their_heads);
        let prefix = self.node_prefix;
        let mut p = Pending::default();
        for c in self.doc.get_changes(&known) {
            if c.actor_id().to_bytes().starts_with(&prefix) {
                p.ops += 1;
                let t = u64::try_from(c.timestamp()).unwrap_or(0);
                p.oldest_ms = Some(p.oldest_ms.map_or(t, |o| o.min(t)));
            }
        }
        p
    }

    /// The current actor id (hex).
    pub fn actor(&self) -> String {
        self.doc.get_actor().to_hex_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sync round, initiator `a` to responder `b`, as the HTTP exchange does it.
    fn sync(
        a: &mut Replica,
        b: &mut Replica,
        b_heads_known_to_a: &mut Vec<ChangeHash>,
    ) -> (Applied, Applied) {
        let out = a.changes_since(b_heads_known_to_a);
        let a_heads = a.heads();
        let at_b = b.apply(&out).unwrap();
        let back = b.changes_since(&a_heads);
        *b_heads_known_to_a = b.heads();
        let at_a = a.apply(&back).unwrap();
        (at_a, at_b)
    }

    #[test]
    fn replicas_converge_after_a_partition_with_one_conflict_resolved_alike() {
        let mut a = Replica::open(None, "edge-a").unwrap();
        let mut b = Replica::open(None, "cloud").unwrap();
        let mut known = Vec::new();
        a.put("config", "v1").unwrap();
        sync(&mut a, &mut b, &mut known);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.pending_for(&known).ops, 0);

        // Partition: both sides write; a writes the same key as b.
        a.put("config", "from-a").unwrap();
        a.put("a-only", "1").unwrap();
        b.put("config", "from-b").unwrap();
        b.put("b-only", "2").unwrap();
        assert_ne!(a.digest(), b.digest());
        let p = a.pending_for(&known);
        assert_eq!(p.ops, 2);
        assert!(p.oldest_ms.is_some());

        // Heal.
        let (at_a, at_b) = sync(&mut a, &mut b, &mut known);
        assert_eq!((at_a.changes, at_b.changes), (2, 2));
        assert_eq!((at_a.new_conflicts, at_b.new_conflicts), (1, 1));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.entries(), b.entries());
        assert_eq!(a.entries().len(), 3);
        assert_eq!(a.get("config").unwrap().1, 2);
        assert_eq!(a.conflicts(), b.conflicts());
        assert_eq!(a.pending_for(&known).ops, 0);
        // A second round changes nothing (idempotent).
        let (x, y) = sync(&mut a, &mut b, &mut known);
        assert_eq!((x.changes, y.changes), (0, 0));
        // Writing the key again resolves the conflict everywhere.
        b.put("config", "settled").unwrap();
        sync(&mut a, &mut b, &mut known);
        assert!(a.conflicts().is_empty());
        assert_eq!(a.get("config").unwrap(), ("settled".to_string(), 1));
    }

    #[test]
    fn delete_and_resend_and_garbage() {
        let mut a = Replica::open(None, "a").unwrap();
        let mut b = Replica::open(None, "b").unwrap();
        a.put("k", "v").unwrap();
        assert!(a.delete("k").unwrap());
        assert!(!a.delete("k").unwrap());
        let all = a.changes_since(&[]);
        b.apply(&all).unwrap();
        // Applying the same changes again is a no-op.
        assert_eq!(b.apply(&all).unwrap(), Applied::default());
        assert_eq!(b.get("k"), None);
        assert_eq!(a.digest(), b.digest());
        assert!(b.apply(&[b"not automerge".to_vec()]).is_err());
        assert!(parse_heads(&["zz".into()]).is_err());
    }

    #[test]
    fn durable_across_reopen_with_a_new_incarnation_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (actor1, digest) = {
            let mut r = Replica::open(Some(dir.path()), "n").unwrap();
            r.put("x", "1").unwrap();
            r.put("y", "2").unwrap();
            (r.actor(), r.digest())
        };
        // A crash in the middle of an append leaves a torn chunk at the end.
        let path = dir.path().join(DOC_FILE);
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(&[0x85, 0x6f, 0x4a, 0x83, 0x01, 0x02]).unwrap();
        drop(f);
        let mut r = Replica::open(Some(dir.path()), "n").unwrap();
        assert_eq!(r.digest(), digest);
        assert_ne!(r.actor(), actor1, "a restart gets a fresh incarnation");
        assert_eq!(r.actor()[..24], actor1[..24], "same node prefix");
        r.put("z", "3").unwrap();
        drop(r);
        let r = Replica::open(Some(dir.path()), "n").unwrap();
        assert_eq!(r.entries().len(), 3);
    }
}
