//! `offline-first`: a local-first key-value store. Every replica accepts reads and writes with
//! no connection to anyone; replicas sync whenever they can reach each other and converge to
//! the same state after a partition heals, resolving concurrent writes with the automerge
//! CRDT. A scenario asserts convergence by comparing `/status`'s `digest` (or the
//! `edgesim_offline_state_digest` gauge) across instances, and reads pending operations, sync
//! lag and conflicts from the metrics.
//!
//! # Design
//! - [`replica::Replica`] holds the automerge document, its durable log and the conflict and
//!   sync logic (see there for the conflict rule, actor ids and durability).
//! - Topology is up to the scenario: each replica syncs with the peers named by `--sync-with`
//!   (a hub: edge replicas name the cloud one; a mesh: everyone names everyone). A replica
//!   with no `--sync-with` only answers others' syncs.
//! - One task per peer runs a sync round every `--sync-interval`, right after a local write,
//!   and with exponential backoff (seeded jitter) while the peer is unreachable. A round is one
//!   `POST /sync` ([`SyncRequest`] → [`SyncReply`]), stateless and idempotent.
//! - A write is acknowledged after it is durable locally; it is *pending* until a peer reports
//!   heads that include it. `edgesim_offline_sync_lag_seconds` is the age of the oldest
//!   pending write: how far the cloud is behind this replica.
//! - With `--write-rate` above 0, a built-in generator ([`generator`]) writes seeded keys and
//!   values through the same path as `PUT /kv/{key}` until `--write-until` has passed since
//!   the start, so a scenario needs no client; `/status`'s `generation_done` says when it
//!   stopped (replicas can converge only after every generator has).
//!
//! # Endpoints
//! - `PUT /kv/{key}` (body: the value), `GET /kv/{key}`, `DELETE /kv/{key}`, `GET /kv` (all).
//! - `GET /conflicts` — keys with concurrent values, winner first.
//! - `POST /sync` — the sync exchange between replicas.
//! - `GET /healthz`, `GET /metrics`, `GET /status`.

pub mod generator;
pub mod replica;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edge_common::backoff::Backoff;
use edge_common::client::HttpClient;
use edge_common::metrics::FloatGauge;
use edge_common::rng::SeededRng;
use edge_common::units::Dur;
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use crate::generator::{Pacer, WriteSequence};
use crate::replica::{Replica, ReplicaError, format_heads, parse_heads};

/// Command line of `offline-first`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "offline-first",
    version,
    about = "Local-first key-value store whose replicas sync with the automerge CRDT and converge after partitions"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Peers to sync with, comma-separated: node names (resolved through EDGESIM_PEERS, then
    /// /etc/hosts, on this service's port), name:port, or http:// URLs.
    #[arg(long, env = "SYNC_WITH", default_value = "", value_delimiter = ',')]
    pub sync_with: Vec<String>,

    /// Time between sync rounds with each peer (a local write syncs at once).
    #[arg(long, env = "SYNC_INTERVAL", default_value = "1s")]
    pub sync_interval: Dur,

    /// Timeout of one sync request.
    #[arg(long, env = "SYNC_TIMEOUT", default_value = "2s")]
    pub sync_timeout: Dur,

    /// This replica's name (for actor ids and peers' status); defaults to the node name.
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Directory of the replica's log; defaults to $EDGESIM_WORKDIR, else ./offline-first-data.
    #[arg(long, env = "OFFLINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep the replica in memory only (nothing survives a restart).
    #[arg(long, env = "OFFLINE_IN_MEMORY")]
    pub in_memory: bool,

    /// Built-in write generator: PUTs per second (0: off). Keys and values are seeded by
    /// --seed and the replica id; each write takes the same path as `PUT /kv/{key}`.
    #[arg(long, env = "OFFLINE_WRITE_RATE", default_value = "0", value_parser = generator::parse_rate)]
    pub write_rate: f64,

    /// Size of the generator's key space (`gen-00` … `gen-19` for 20); small, so that
    /// replicas writing concurrently collide on keys and conflict.
    #[arg(long, env = "OFFLINE_WRITE_KEYS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_keys: u32,

    /// Stop generating this long after the start (e.g. `25s`), so replicas can converge
    /// before a scenario ends; never when absent.
    #[arg(long, env = "OFFLINE_WRITE_UNTIL")]
    pub write_until: Option<Dur>,
}

/// One sync round's request: the initiator's heads and the changes the responder may lack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub from: String,
    /// Change hashes (hex).
    pub heads: Vec<String>,
    /// Changes in automerge's binary encoding, hex.
    pub changes: Vec<String>,
}

/// The responder's answer: its heads after applying, and the changes the initiator lacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReply {
    pub from: String,
    pub heads: Vec<String>,
    pub changes: Vec<String>,
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoundLabel {
    peer: String,
    result: &'static str,
}

#[derive(Clone, Debug)]
struct Metrics {
    writes: Family<OpLabel, Counter>,
    write_errors: Counter,
    pending: Gauge,
    lag: FloatGauge,
    rounds: Family<RoundLabel, Counter>,
    served_syncs: Counter,
    received: Counter,
    sent: Counter,
    conflicts: Counter,
    conflicted_keys: Gauge,
    keys: Gauge,
    in_sync: Gauge,
    peer_up: Family<PeerLabel, Gauge>,
    peer_pending: Family<PeerLabel, Gauge>,
    last_sync_age: Family<PeerLabel, FloatGauge>,
    digest: Gauge,
    generated: Counter,
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            writes: Family::default(),
            write_errors: Counter::default(),
            pending: Gauge::default(),
            lag: FloatGauge::default(),
            rounds: Family::default(),
            served_syncs: Counter::default(),
            received: Counter::default(),
            sent: Counter::default(),
            conflicts: Counter::default(),
            conflicted_keys: Gauge::default(),
            keys: Gauge::default(),
            in_sync: Gauge::default(),
            peer_up: Family::default(),
            peer_pending: Family::default(),
            last_sync_age: Family::default(),
            digest: Gauge::default(),
            generated: Counter::default(),
        };
        r.register(
            "offline_local_writes",
            "Local writes accepted (durable), by op (put, delete)",
            m.writes.clone(),
        );
        r.register(
            "offline_write_errors",
            "Local writes that failed",
            m.write_errors.clone(),
        );
        r.register("offline_pending_ops", "This replica's writes not yet acknowledged by some --sync-with peer (the largest count over peers)", m.pending.clone());
        r.register("offline_sync_lag_seconds", "Age of the oldest write of this replica that some --sync-with peer has not acknowledged (0 when none)", m.lag.clone());
        r.register(
            "offline_sync_rounds",
            "Sync rounds this replica started, by peer and result (ok, error)",
            m.rounds.clone(),
        );
        r.register(
            "offline_sync_served",
            "Sync rounds other replicas started with this one",
            m.served_syncs.clone(),
        );
        r.register(
            "offline_changes_received",
            "Changes from other replicas applied here",
            m.received.clone(),
        );
        r.register(
            "offline_changes_sent",
            "Changes sent to other replicas",
            m.sent.clone(),
        );
        r.register(
            "offline_conflicts",
            "Keys that became conflicted (concurrent writes) when changes were merged here",
            m.conflicts.clone(),
        );
        r.register("offline_conflicted_keys", "Keys with concurrent values now (resolved alike everywhere; cleared by the next write of the key)", m.conflicted_keys.clone());
        r.register("offline_keys", "Keys in the store", m.keys.clone());
        r.register("offline_in_sync", "1 if the last round with every --sync-with peer ended with identical heads (1 with no peers)", m.in_sync.clone());
        r.register(
            "offline_peer_up",
            "Per peer: 1 if the last sync round succeeded",
            m.peer_up.clone(),
        );
        r.register(
            "offline_peer_pending_ops",
            "Per peer: this replica's writes the peer has not acknowledged",
            m.peer_pending.clone(),
        );
        r.register(
            "offline_peer_last_sync_age_seconds",
            "Per peer: time since the last successful sync round",
            m.last_sync_age.clone(),
        );
        r.register(
            "offline_state_digest",
            "The first 48 bits of the state digest as an integer: equal on converged replicas",
            m.digest.clone(),
        );
        r.register(
            "offline_generated_writes",
            "Writes the built-in generator (--write-rate) made; each is also counted in offline_local_writes{op=put}",
            m.generated.clone(),
        );
        for op in ["put", "delete"] {
            let _ = m.writes.get_or_create(&OpLabel { op });
        }
        m
    }
}

#[derive(Debug, Default, Clone, Serialize)]
struct PeerState {
    peer: String,
    url: String,
    #[serde(skip)]
    known_heads: Vec<automerge::ChangeHash>,
    up: bool,
    in_sync: bool,
    pending_ops: usize,
    last_ok_ms: Option<u64>,
    #[serde(skip)]
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

struct Node {
    env: EdgeEnv,
    id: String,
    args: Args,
    data_file: Option<PathBuf>,
    replica: Mutex<Replica>,
    peers: Mutex<Vec<PeerState>>,
    served: Mutex<BTreeMap<String, u64>>,
    metrics: Metrics,
    wrote: Notify,
    /// Set once the write generator has stopped for good (at once when it is off).
    generation_done: AtomicBool,
}

type Failure = (StatusCode, String);

fn internal(e: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
}

impl Node {
    fn replica(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Vec<PeerState>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the replica on the blocking pool (writes `fsync`).
    async fn with_replica<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&mut me.replica()))
            .await
            .map_err(internal)
    }

    /// Recomputes the gauges that depend on the whole state.
    fn refresh(&self) {
        let mut r = self.replica();
        let mut peers = self.peers();
        let (mut max_pending, mut oldest) = (0usize, None::<u64>);
        let mut all_in_sync = true;
        let heads = r.heads();
        for p in peers.iter_mut() {
            let pend = r.pending_for(&p.known_heads);
            p.pending_ops = pend.ops;
            max_pending = max_pending.max(pend.ops);
            if let Some(t) = pend.oldest_ms {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
            p.in_sync = p.up && p.known_heads == heads;
            all_in_sync &= p.in_sync;
            let label = PeerLabel {
                peer: p.peer.clone(),
            };
            self.metrics
                .peer_pending
                .get_or_create(&label)
                .set(i64::try_from(pend.ops).unwrap_or(i64::MAX));
            self.metrics
                .peer_up
                .get_or_create(&label)
                .set(i64::from(p.up));
            if let Some(t) = p.last_ok {
                self.metrics
                    .last_sync_age
                    .get_or_create(&label)
                    .set(t.elapsed().as_secs_f64());
            }
        }
        let m = &self.metrics;
        m.pending
            .set(i64::try_from(max_pending).unwrap_or(i64::MAX));
        m.lag.set(oldest.map_or(0.0, |t| {
            edge_common::now_ms().saturating_sub(t) as f64 / 1000.0
        }));
        m.in_sync.set(i64::from(all_in_sync));
        m.conflicted_keys
            .set(i64::try_from(r.conflicts().len()).unwrap_or(i64::MAX));
        m.keys
            .set(i64::try_from(r.entries().len()).unwrap_or(i64::MAX));
        let digest = r.digest();
        m.digest.set(
            digest
                .get(..12)
                .and_then(|h| i64::from_str_radix(h, 16).ok())
                .unwrap_or(0),
        );
    }

    fn status(&self) -> serde_json::Value {
        let mut r = self.replica();
        let heads = format_heads(&r.heads());
        let conflicts = r.conflicts();
        let m = &self.metrics;
        json!({
            "env": self.env,
            "replica": self.id,
            "actor": r.actor(),
            "data_file": self.data_file.as_ref().map(|p| p.display().to_string()),
            "keys": r.entries().len(),
            "digest": r.digest(),
            "heads": heads,
            "conflicted_keys": conflicts.len(),
            "conflicts_total": m.conflicts.get(),
            "pending_ops": m.pending.get(),
            "sync_lag_seconds": m.lag.get(),
            "in_sync": m.in_sync.get() == 1,
            "peers": *self.peers(),
            "synced_by": *self.served.lock().unwrap_or_else(PoisonError::into_inner),
            "generation_done": self.generation_done.load(Ordering::SeqCst),
            "generator": {
                "write_rate": self.args.write_rate,
                "write_keys": self.args.write_keys,
                "write_until_seconds": self.args.write_until.map(|d| d.0.as_secs_f64()),
                "generated_writes": m.generated.get(),
            },
        })
    }
}

fn write_result(node: &Node, op: &'static str, r: Result<(), ReplicaError>) -> Result<(), Failure> {
    match r {
        Ok(()) => {
            node.metrics.writes.get_or_create(&OpLabel { op }).inc();
            node.wrote.notify_waiters();
            Ok(())
        }
        Err(e) => {
            node.metrics.write_errors.inc();
            tracing::error!(error = %e, "local write failed");
            Err(internal(e))
        }
    }
}

/// A local `put`: durable, counted, synced at once. `PUT /kv/{key}` and the write generator
/// both write through here.
async fn local_put(n: &Arc<Node>, key: String, value: String) -> Result<(), Failure> {
    let r = n.with_replica(move |r| r.put(&key, &value)).await?;
    write_result(n, "put", r)?;
    n.refresh();
    Ok(())
}

async fn put_key(
    State(n): State<Arc<Node>>,
    Path(key): Path<String>,
    body: String,
) -> Result<Response, Failure> {
    local_put(&n, key.clone(), body.clone()).await?;
    Ok(axum::Json(json!({"key": key, "value": body})).into_response())
}

async fn delete_key(
    State(n): State<Arc<Node>>,
    Path(key): Path<String>,
) -> Result<Response, Failure> {
    let k = key.clone();
    match n.with_replica(move |r| r.delete(&k)).await? {
        Ok(false) => Ok((StatusCode::NOT_FOUND, "no such key\n").into_response()),
        Ok(true) => {
            write_result(&n, "delete", Ok(()))?;
            n.refresh();
            Ok(axum::Json(json!({"key": key, "deleted": true})).into_response())
        }
        Err(e) => {
            write_result(&n, "delete", Err(e))?;
            Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

async fn get_key(State(n): State<Arc<Node>>, Path(key): Path<String>) -> Response {
    match n.replica().get(&key) {
        Some((v, values)) => ([("x-conflict-values", values.to_string())], v).into_response(),
        None => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
    }
}

async fn all_keys(State(n): State<Arc<Node>>) -> Response {
    axum::Json(n.replica().entries()).into_response()
}

async fn conflicts(State(n): State<Arc<Node>>) -> Response {
    axum::Json(n.replica().conflicts()).into_response()
}

fn decode_changes(changes: &[String]) -> Result<Vec<Vec<u8>>, Failure> {
    changes
        .iter()
        .map(|c| {
            from_hex(c)
                .ok_or_else(|| (StatusCode::BAD_REQUEST, "a change is not hex\n".to_string()))
        })
        .collect()
}

async fn serve_sync(
    State(n): State<Arc<Node>>,
    axum::Json(req): axum::Json<SyncRequest>,
) -> Result<Response, Failure> {
    let changes = decode_changes(&req.changes)?;
    let their_heads =
        parse_heads(&req.heads).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let out = n
        .with_replica(move |r| -> Result<_, ReplicaError> {
            let applied = r.apply(&changes)?;
            let back = r.changes_since(&their_heads);
            Ok((applied, back, r.heads()))
        })
        .await?;
    let (applied, back, heads) = out.map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let m = &n.metrics;
    m.served_syncs.inc();
    m.received.inc_by(applied.changes as u64);
    m.conflicts.inc_by(applied.new_conflicts as u64);
    m.sent.inc_by(back.len() as u64);
    n.served
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(req.from.clone(), edge_common::now_ms());
    if applied.changes > 0 {
        tracing::info!(from = %req.from, changes = applied.changes, conflicts = applied.new_conflicts, "merged changes");
        n.refresh();
    }
    Ok(axum::Json(SyncReply {
        from: n.id.clone(),
        heads: format_heads(&heads),
        changes: back.iter().map(|c| to_hex(c)).collect(),
    })
    .into_response())
}

/// One sync round with peer `i`.
async fn sync_round(n: &Arc<Node>, i: usize, client: &HttpClient) -> Result<(), String> {
    let (url, known) = {
        let peers = n.peers();
        let p = &peers[i];
        (format!("{}/sync", p.url), p.known_heads.clone())
    };
    let (changes, heads) = n
        .with_replica(move |r| (r.changes_since(&known), r.heads()))
        .await
        .map_err(|e| e.1)?;
    let req = SyncRequest {
        from: n.id.clone(),
        heads: format_heads(&heads),
        changes: changes.iter().map(|c| to_hex(c)).collect(),
    };
    let resp = client
        .post_json(&url, &req)
        .await
        .map_err(|e| edge_common::error_chain(&e))?;
    if !resp.status.is_success() {
        return Err(format!(
            "{url} answered {}: {}",
            resp.status,
            resp.text().trim()
        ));
    }
    let reply: SyncReply = resp
        .json()
        .map_err(|e| format!("{url} answered bad JSON: {e}"))?;
    let back = decode_changes(&reply.changes).map_err(|e| e.1)?;
    let their_heads = parse_heads(&reply.heads).map_err(|e| e.to_string())?;
    let applied = n
        .with_replica(move |r| r.apply(&back))
        .await
        .map_err(|e| e.1)?
        .map_err(|e| e.to_string())?;
    let m = &n.metrics;
    m.sent.inc_by(changes.len() as u64);
    m.received.inc_by(applied.changes as u64);
    m.conflicts.inc_by(applied.new_conflicts as u64);
    if applied.changes > 0 {
        tracing::info!(peer = %reply.from, changes = applied.changes, conflicts = applied.new_conflicts, "merged changes");
    }
    let mut peers = n.peers();
    let p = &mut peers[i];
    if !p.up {
        tracing::info!(peer = %p.peer, "peer reachable; synced");
    }
    p.known_heads = their_heads;
    p.up = true;
    p.last_ok = Some(Instant::now());
    p.last_ok_ms = Some(edge_common::now_ms());
    p.last_error = None;
    Ok(())
}

async fn sync_loop(n: Arc<Node>, i: usize, client: HttpClient, shutdown: Shutdown) {
    let peer = n.peers()[i].peer.clone();
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5).max(n.args.sync_interval.0),
        SeededRng::for_stream(n.args.common.seed, &format!("sync/{}/{peer}", n.id)),
    );
    while !shutdown.is_triggered() {
        let result = sync_round(&n, i, &client).await;
        let wait = match result {
            Ok(()) => {
                n.metrics
                    .rounds
                    .get_or_create(&RoundLabel {
                        peer: peer.clone(),
                        result: "ok",
                    })
                    .inc();
                backoff.reset();
                n.sync_interval()
            }
            Err(e) => {
                n.metrics
                    .rounds
                    .get_or_create(&RoundLabel {
                        peer: peer.clone(),
                        result: "error",
                    })
                    .inc();
                let mut peers = n.peers();
                let p = &mut peers[i];
                if p.up || p.last_error.is_none() {
                    tracing::warn!(%peer, error = %e, "sync failed; working offline");
                }
                p.up = false;
                p.last_error = Some(e);
                drop(peers);
                backoff.next_delay()
            }
        };
        n.refresh();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = n.wrote.notified(), if backoff.attempts() == 0 => {}
            () = shutdown.wait() => {}
        }
    }
}

impl Node {
    fn sync_interval(&self) -> Duration {
        self.args.sync_interval.0
    }
}

/// The built-in write generator (`--write-rate` > 0): seeded puts, paced by a token bucket,
/// until `--write-until` has passed since `started` or shutdown. A failed write is counted
/// and logged by the write path and not retried; the generator goes on.
async fn write_generator(n: Arc<Node>, started: Instant, shutdown: Shutdown) {
    let rate = n.args.write_rate;
    let until = n.args.write_until.map(|d| d.0);
    let mut writes = WriteSequence::new(n.args.common.seed, &n.id, n.args.write_keys);
    let mut pacer = Pacer::new(rate);
    tracing::info!(
        rate,
        keys = n.args.write_keys,
        until = ?until,
        "write generator on"
    );
    let mut interval = tokio::time::interval(pacer.tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    'ticks: loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        if until.is_some_and(|u| now.duration_since(started) >= u) {
            tracing::info!(
                generated = n.metrics.generated.get(),
                "--write-until reached; write generator stopped"
            );
            n.generation_done.store(true, Ordering::SeqCst);
            break;
        }
        let due = pacer.due(now.duration_since(last));
        last = now;
        for _ in 0..due {
            if shutdown.is_triggered() {
                break 'ticks;
            }
            let w = writes.next_write();
            if local_put(&n, w.key, w.value).await.is_ok() {
                n.metrics.generated.inc();
            }
        }
    }
}

async fn refresher(n: Arc<Node>, shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        n.refresh();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.wait() => {}
        }
    }
}

/// A started replica.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens the replica, binds, and starts serving and syncing until `shutdown`.
///
/// # Errors
/// When the replica cannot be opened or the address cannot be bound.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    let env = EdgeEnv::new("offline-first", env!("CARGO_PKG_VERSION"), &args.common);
    let id = args.replica_id.clone().unwrap_or_else(|| env.node.clone());
    let dir = (!args.in_memory).then(|| {
        args.data_dir
            .clone()
            .unwrap_or_else(|| args.common.workdir_or("offline-first-data"))
    });
    let (d, i) = (dir.clone(), id.clone());
    let replica = tokio::task::spawn_blocking(move || Replica::open(d.as_deref(), &i))
        .await?
        .context("opening the replica")?;
    let port = args.common.listen_addr().port();
    let peers = args
        .sync_with
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| PeerState {
            peer: s.to_string(),
            url: args.common.peer_url(s, port),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    let client = HttpClient::new(args.sync_timeout.0, args.common.peer_map().clone());
    tracing::info!(replica = %id, actor = %replica.actor(), peers = ?peers.iter().map(|p| &p.url).collect::<Vec<_>>(), "replica open");
    let node = Arc::new(Node {
        env,
        id,
        data_file: dir.map(|d| d.join("replica.log")),
        replica: Mutex::new(replica),
        peers: Mutex::new(peers),
        served: Mutex::new(BTreeMap::new()),
        metrics,
        wrote: Notify::new(),
        generation_done: AtomicBool::new(args.write_rate == 0.0),
        args: args.clone(),
    });
    node.refresh();
    let status_node = node.clone();
    let app = Router::new()
        .route("/kv", get(all_keys))
        .route("/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/conflicts", get(conflicts))
        .route("/sync", post(serve_sync))
        .with_state(node.clone())
        .merge(edge_common::server::base_router(
            Arc::new(registry),
            Arc::new(move || status_node.status()),
        ));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    let grace = args.common.shutdown_grace.0;
    let mut tasks = vec![tokio::spawn(refresher(node.clone(), shutdown.clone()))];
    if args.write_rate > 0.0 {
        tasks.push(tokio::spawn(write_generator(
            node.clone(),
            Instant::now(),
            shutdown.clone(),
        )));
    }
    let n_peers = node.peers().len();
    for i in 0..n_peers {
        tasks.push(tokio::spawn(sync_loop(
            node.clone(),
            i,
            client.clone(),
            shutdown.clone(),
        )));
    }
    let task = edge_common::server::serve_with_tasks(
        listener,
        app,
        shutdown.clone(),
        grace,
        tasks,
        "sync",
    );
    Ok(Running { addr, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = vec![0u8, 1, 0xfe, 0xff];
        assert_eq!(from_hex(&to_hex(&b)), Some(b));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
