//! `iot-collector`: an edge gateway that reads simulated sensors, keeps every reading in a
//! crash-safe local queue, and forwards the queue to `cloud-sink` in batches, retrying with
//! exponential backoff and seeded jitter while the cloud is unreachable.
//!
//! # Design
//! Three tasks share one [`store::Store`] (redb):
//! - the **sampler** wakes at the configured rate, takes one reading per device and appends
//!   them to the queue in one durable transaction that also assigns each device's next
//!   sequence number (1, 2, 3, …). A reading is *accepted* once that commit returns: from then
//!   on `kill -9` cannot lose it.
//! - the **forwarder** sends the oldest `--batch-size` queued readings to `SINK_URL/ingest`
//!   and deletes them only after the sink answers 2xx. Any failure (refused connection,
//!   timeout, 5xx) is retried after [`edge_common::backoff::Backoff`]'s delay. Delivery is
//!   at-least-once; the sink de-duplicates by `(device, seq)`, which makes it effectively
//!   exactly-once.
//! - a **gauge refresher** keeps the backlog gauges (size, bytes, age of the oldest reading)
//!   current between events.
//!
//! When the queue reaches `--disk-budget`, `--on-full` decides (see [`store::FullPolicy`]);
//! each drop is counted in `edgesim_collector_dropped_by_policy_total{policy}` and leaves a
//! hole in the device's sequence that the sink reports as missing.
//!
//! On SIGTERM the sampler stops, an in-flight batch finishes (its acknowledgement is
//! recorded), and the queue, durable already, stays for the next start.

pub mod sensors;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use edge_common::backoff::Backoff;
use edge_common::client::{ClientError, HttpClient};
use edge_common::metrics::{FloatGauge, exponential_buckets};
use edge_common::proto::{Batch, IngestAck};
use edge_common::rng::SeededRng;
use edge_common::units::{Bytes, Dur};
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Notify;

use crate::sensors::Sensor;
use crate::store::{Backlog, FullPolicy, Sample, Store};

/// Command line of `iot-collector`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "iot-collector",
    version,
    about = "Simulated sensors with a crash-safe local queue, forwarded to cloud-sink with retries"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Base URL of the cloud sink (readings are posted to SINK_URL/ingest). Node names resolve through
    /// EDGESIM_PEERS, then /etc/hosts.
    #[arg(long, env = "SINK_URL", default_value = "http://sink:8080")]
    pub sink_url: String,

    /// Number of simulated devices on this collector.
    #[arg(long, env = "COLLECTOR_DEVICES", default_value_t = 3)]
    pub devices: u32,

    /// Readings per second, per device.
    #[arg(long, env = "COLLECTOR_RATE", default_value_t = 5.0)]
    pub rate: f64,

    /// Device ids are PREFIX-sensor-1, PREFIX-sensor-2, …; defaults to the node name.
    #[arg(long, env = "COLLECTOR_DEVICE_PREFIX")]
    pub device_prefix: Option<String>,

    /// Stop sampling once every device has reached this sequence number (the queue still
    /// drains). Unlimited when absent.
    #[arg(long, env = "COLLECTOR_MAX_READINGS")]
    pub max_readings: Option<u64>,

    /// Most readings per request to the sink.
    #[arg(long, env = "COLLECTOR_BATCH_SIZE", default_value_t = 200)]
    pub batch_size: usize,

    /// Directory of the queue database; defaults to $EDGESIM_WORKDIR, else ./iot-collector-data.
    #[arg(long, env = "COLLECTOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most bytes of readings the queue may hold (payload; the file adds page overhead).
    #[arg(long, env = "COLLECTOR_DISK_BUDGET", default_value = "64MiB")]
    pub disk_budget: Bytes,

    /// What to do when the queue is at its budget: drop-oldest evicts the oldest queued
    /// readings, drop-newest refuses new ones. Both are counted; both leave holes the sink
    /// reports as missing.
    #[arg(long, env = "COLLECTOR_ON_FULL", value_enum, default_value_t = FullPolicy::DropOldest)]
    pub on_full: FullPolicy,

    /// Timeout of one request to the sink (connect, send, answer).
    #[arg(long, env = "COLLECTOR_REQUEST_TIMEOUT", default_value = "2s")]
    pub request_timeout: Dur,

    /// First retry delay (doubles per failure, with jitter).
    #[arg(long, env = "COLLECTOR_RETRY_BASE", default_value = "100ms")]
    pub retry_base: Dur,

    /// Longest retry delay.
    #[arg(long, env = "COLLECTOR_RETRY_MAX", default_value = "5s")]
    pub retry_max: Dur,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The collector's metrics (all prefixed `edgesim_`).
#[derive(Clone, Debug)]
struct Metrics {
    generated: Counter,
    accepted: Counter,
    forwarded: Counter,
    acknowledged: Counter,
    dropped: Family<PolicyLabel, Counter>,
    send_failures: Family<ReasonLabel, Counter>,
    store_errors: Counter,
    batches: Counter,
    backlog: Gauge,
    backlog_bytes: Gauge,
    oldest_age: FloatGauge,
    budget: Gauge,
    sink_up: Gauge,
    request_duration: Histogram,
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            generated: Counter::default(),
            accepted: Counter::default(),
            forwarded: Counter::default(),
            acknowledged: Counter::default(),
            dropped: Family::default(),
            send_failures: Family::default(),
            store_errors: Counter::default(),
            batches: Counter::default(),
            backlog: Gauge::default(),
            backlog_bytes: Gauge::default(),
            oldest_age: FloatGauge::default(),
            budget: Gauge::default(),
            sink_up: Gauge::default(),
            request_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        };
        r.register(
            "collector_generated",
            "Readings taken from the sensors",
            m.generated.clone(),
        );
        r.register(
            "collector_accepted",
            "Readings durably written to the local queue",
            m.accepted.clone(),
        );
        r.register(
            "collector_forwarded",
            "Readings sent to the sink, resends included",
            m.forwarded.clone(),
        );
        r.register(
            "collector_acknowledged",
            "Readings the sink acknowledged and the queue released",
            m.acknowledged.clone(),
        );
        r.register("collector_dropped_by_policy", "Readings lost to the disk-budget policy (drop-oldest: evicted from the queue; drop-newest: refused)", m.dropped.clone());
        r.register(
            "collector_send_failures",
            "Failed batch sends by reason (connect, timeout, status, body)",
            m.send_failures.clone(),
        );
        r.register(
            "collector_store_errors",
            "Failed queue transactions",
            m.store_errors.clone(),
        );
        r.register(
            "collector_batches",
            "Batch requests sent to the sink",
            m.batches.clone(),
        );
        r.register(
            "collector_backlog_readings",
            "Readings in the local queue, not yet acknowledged",
            m.backlog.clone(),
        );
        r.register(
            "collector_backlog_bytes",
            "Payload bytes in the local queue",
            m.backlog_bytes.clone(),
        );
        r.register(
            "collector_backlog_oldest_age_seconds",
            "Age of the oldest reading in the queue (0 when empty)",
            m.oldest_age.clone(),
        );
        r.register(
            "collector_disk_budget_bytes",
            "The queue's budget in payload bytes",
            m.budget.clone(),
        );
        r.register(
            "collector_sink_up",
            "1 if the last request to the sink succeeded, else 0",
            m.sink_up.clone(),
        );
        r.register(
            "collector_request_duration_seconds",
            "Duration of successful batch requests",
            m.request_duration.clone(),
        );
        for policy in ["drop-oldest", "drop-newest"] {
            let _ = m.dropped.get_or_create(&PolicyLabel { policy });
        }
        for reason in ["connect", "timeout", "status", "body"] {
            let _ = m.send_failures.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

#[derive(Debug, Default, serde::Serialize)]
struct Live {
    backlog: Backlog,
    last_error: Option<String>,
    last_ack_ms: Option<u64>,
    sampling_done: bool,
}

struct Collector {
    env: EdgeEnv,
    args: Args,
    store: Store,
    metrics: Metrics,
    live: Mutex<Live>,
    queued: Notify,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector {
    fn ingest_url(&self) -> String {
        format!("{}/ingest", self.args.sink_url.trim_end_matches('/'))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_backlog(&self, b: Backlog) {
        self.metrics.backlog.set(to_i64(b.readings));
        self.metrics.backlog_bytes.set(to_i64(b.bytes));
        self.metrics
            .oldest_age
            .set(oldest_age(b, edge_common::now_ms()));
        self.live().backlog = b;
    }

    fn status(&self) -> serde_json::Value {
        let totals = self.store.totals();
        let live = self.live();
        let (totals, seqs) = match totals {
            Ok((t, s)) => (
                json!(t),
                json!(s.into_iter().collect::<std::collections::BTreeMap<_, _>>()),
            ),
            Err(e) => (json!({"error": e.to_string()}), json!(null)),
        };
        json!({
            "env": self.env,
            "sink_url": self.args.sink_url,
            "devices": self.args.devices,
            "rate_per_device": self.args.rate,
            "max_readings": self.args.max_readings,
            "disk_budget_bytes": self.args.disk_budget.0,
            "on_full": self.args.on_full,
            "queue": self.store.path().display().to_string(),
            "backlog": {
                "readings": live.backlog.readings,
                "bytes": live.backlog.bytes,
                "oldest_age_seconds": oldest_age(live.backlog, edge_common::now_ms()),
            },
            "sampling_done": live.sampling_done,
            "sink_up": self.metrics.sink_up.get() == 1,
            "last_error": live.last_error,
            "last_ack_ms": live.last_ack_ms,
            "lifetime": totals,
            "last_sequence": seqs,
            "session": {
                "generated": self.metrics.generated.get(),
                "accepted": self.metrics.accepted.get(),
                "forwarded": self.metrics.forwarded.get(),
                "acknowledged": self.metrics.acknowledged.get(),
            },
        })
    }
}

fn oldest_age(b: Backlog, now_ms: u64) -> f64 {
    b.oldest_ts_ms
        .map_or(0.0, |ts| now_ms.saturating_sub(ts) as f64 / 1000.0)
}

/// Takes readings at `--rate` until shutdown (or `--max-readings`), queueing each tick's
/// readings in one transaction.
async fn sampler(c: Arc<Collector>, shutdown: Shutdown) {
    let prefix = c
        .args
        .device_prefix
        .clone()
        .unwrap_or_else(|| c.env.node.clone());
    let mut sensors: Vec<Sensor> = sensors::device_ids(&prefix, c.args.devices)
        .into_iter()
        .map(|id| Sensor::new(id, c.args.seed()))
        .collect();
    // Resume numbering where the store left off, for --max-readings.
    let mut last_seq: std::collections::HashMap<String, u64> = match c.store.totals() {
        Ok((_, seqs)) => seqs.into_iter().collect(),
        Err(e) => {
            tracing::error!(error = %e, "reading the sequence counters");
            Default::default()
        }
    };
    let rate = c.args.rate.max(1e-3);
    // One tick per reading up to 100 Hz; above that, several readings per device per tick.
    let tick = Duration::from_secs_f64((1.0 / rate).max(0.01));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut produced: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = interval.tick() => {}
        }
        let due = (start.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
        let n = due.saturating_sub(produced);
        if n == 0 {
            continue;
        }
        let now = edge_common::now_ms();
        let mut batch = Vec::new();
        for s in &mut sensors {
            let have = last_seq.get(&s.id).copied().unwrap_or(0);
            let room = c
                .args
                .max_readings
                .map_or(n, |max| n.min(max.saturating_sub(have)));
            for _ in 0..room {
                batch.push(Sample {
                    device: s.id.clone(),
                    ts_ms: now,
                    value: s.sample(now),
                });
            }
        }
        produced += n;
        if batch.is_empty() {
            tracing::info!("every device reached --max-readings; sampling stopped");
            c.live().sampling_done = true;
            break;
        }
        let store_c = c.clone();
        let res = tokio::task::spawn_blocking(move || {
            let r = store_c
                .store
                .enqueue(&batch, store_c.args.disk_budget.0, store_c.args.on_full);
            let b = store_c.store.backlog();
            (batch.len() as u64, r, b)
        })
        .await;
        let (count, res, backlog) = match res {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "queue task failed");
                continue;
            }
        };
        let m = &c.metrics;
        match res {
            Ok(e) => {
                m.generated.inc_by(count);
                m.accepted.inc_by(e.accepted);
                if e.dropped_oldest > 0 {
                    m.dropped
                        .get_or_create(&PolicyLabel {
                            policy: "drop-oldest",
                        })
                        .inc_by(e.dropped_oldest);
                }
                if e.dropped_newest > 0 {
                    m.dropped
                        .get_or_create(&PolicyLabel {
                            policy: "drop-newest",
                        })
                        .inc_by(e.dropped_newest);
                }
                if e.dropped_oldest + e.dropped_newest > 0 {
                    tracing::warn!(
                        dropped_oldest = e.dropped_oldest,
                        dropped_newest = e.dropped_newest,
                        "queue at its disk budget"
                    );
                }
                for (d, s) in e.last_seq {
                    last_seq.insert(d, s);
                }
                c.queued.notify_one();
            }
            Err(e) => {
                // Nothing of this tick was numbered or stored: the readings were never
                // accepted, so no sequence number is missing; the error is counted and logged.
                m.store_errors.inc();
                tracing::error!(error = %e, "could not queue readings");
            }
        }
        if let Ok(b) = backlog {
            c.set_backlog(b);
        }
    }
}

fn failure_reason(e: &ClientError) -> &'static str {
    match e {
        ClientError::Timeout { .. } => "timeout",
        ClientError::Body { .. } => "body",
        _ => "connect",
    }
}

/// Sends the queue to the sink, oldest first, until shutdown.
async fn forwarder(c: Arc<Collector>, client: HttpClient, shutdown: Shutdown) {
    let url = c.ingest_url();
    let mut backoff = Backoff::new(
        c.args.retry_base.0,
        c.args.retry_max.0,
        SeededRng::for_stream(c.args.seed(), &format!("retry/{}", c.env.node)),
    );
    let batch_size = c.args.batch_size.max(1);
    while !shutdown.is_triggered() {
        let store_c = c.clone();
        let peeked = tokio::task::spawn_blocking(move || store_c.store.peek(batch_size)).await;
        let batch = match peeked {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                c.metrics.store_errors.inc();
                tracing::error!(error = %e, "reading the queue");
                sleep_or_stop(backoff.next_delay(), &shutdown).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "queue task failed");
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = c.queued.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.wait() => {}
            }
            continue;
        }
        let (ids, readings): (Vec<u64>, Vec<_>) = batch.into_iter().unzip();
        let n = readings.len() as u64;
        let body = Batch {
            source: c.env.node.clone(),
            readings,
        };
        c.metrics.forwarded.inc_by(n);
        c.metrics.batches.inc();
        let started = Instant::now();
        let result = client.post_json(&url, &body).await;
        let failure = match result {
            Ok(resp) if resp.status.is_success() => {
                c.metrics
                    .request_duration
                    .observe(started.elapsed().as_secs_f64());
                let ack: Option<IngestAck> = resp.json().ok();
                let store_c = c.clone();
                let acked = tokio::task::spawn_blocking(move || {
                    let r = store_c.store.ack(&ids);
                    (r, store_c.store.backlog())
                })
                .await;
                match acked {
                    Ok((Ok(removed), backlog)) => {
                        c.metrics.acknowledged.inc_by(removed);
                        c.metrics.sink_up.set(1);
                        if let Ok(b) = backlog {
                            c.set_backlog(b);
                        }
                        let mut live = c.live();
                        live.last_ack_ms = Some(edge_common::now_ms());
                        live.last_error = None;
                        drop(live);
                        tracing::debug!(n, removed, ?ack, "batch acknowledged");
                        backoff.reset();
                        None
                    }
                    Ok((Err(e), _)) => {
                        // Delivered but still queued: it will be resent and de-duplicated.
                        c.metrics.store_errors.inc();
                        Some(format!("recording an acknowledgement: {e}"))
                    }
                    Err(e) => Some(format!("queue task failed: {e}")),
                }
            }
            Ok(resp) => {
                c.metrics
                    .send_failures
                    .get_or_create(&ReasonLabel { reason: "status" })
                    .inc();
                Some(format!(
                    "sink answered {}: {}",
                    resp.status,
                    resp.text().trim()
                ))
            }
            Err(e) => {
                c.metrics
                    .send_failures
                    .get_or_create(&ReasonLabel {
                        reason: failure_reason(&e),
                    })
                    .inc();
                Some(edge_common::error_chain(&e))
            }
        };
        if let Some(err) = failure {
            c.metrics.sink_up.set(0);
            let delay = backoff.next_delay();
            if backoff.attempts() <= 1 || backoff.attempts().is_multiple_of(10) {
                tracing::warn!(error = %err, retry_in = ?delay, attempt = backoff.attempts(), "sending a batch failed");
            }
            c.live().last_error = Some(err);
            sleep_or_stop(delay, &shutdown).await;
        }
    }
}

async fn sleep_or_stop(d: Duration, shutdown: &Shutdown) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = shutdown.wait() => {}
    }
}

/// Keeps the age gauge moving while nothing else updates it.
async fn refresher(c: Arc<Collector>, shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        let b = c.live().backlog;
        c.metrics
            .oldest_age
            .set(oldest_age(b, edge_common::now_ms()));
        sleep_or_stop(Duration::from_millis(250), &shutdown).await;
    }
}

impl Args {
    fn seed(&self) -> u64 {
        self.common.seed
    }
}

/// A started collector.
#[derive(Debug)]
pub struct Running {
    /// Where its HTTP endpoints listen.
    pub addr: std::net::SocketAddr,
    /// Resolves when every task stopped (after `shutdown` was triggered).
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens the queue, binds the HTTP endpoints and starts sampling and forwarding.
///
/// # Errors
/// When the queue cannot be opened or the address cannot be bound.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number"
    );
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    let env = EdgeEnv::new("iot-collector", env!("CARGO_PKG_VERSION"), &args.common);
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    metrics.budget.set(to_i64(args.disk_budget.0));
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| args.common.workdir_or("iot-collector-data"));
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .context("opening the queue")??;
    let backlog = store.backlog()?;
    tracing::info!(path = %store.path().display(), backlog = backlog.readings, sink = %args.sink_url, "queue opened");
    let client = HttpClient::new(args.request_timeout.0, args.common.peer_map().clone());
    let c = Arc::new(Collector {
        env,
        args: args.clone(),
        store,
        metrics,
        live: Mutex::new(Live::default()),
        queued: Notify::new(),
    });
    c.set_backlog(backlog);
    let status_c = c.clone();
    let app = Router::new().merge(edge_common::server::base_router(
        Arc::new(registry),
        Arc::new(move || status_c.status()),
    ));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    let grace = args.common.shutdown_grace.0;
    let tasks = vec![
        tokio::spawn(sampler(c.clone(), shutdown.clone())),
        tokio::spawn(forwarder(c.clone(), client, shutdown.clone())),
        tokio::spawn(refresher(c.clone(), shutdown.clone())),
    ];
    let task = edge_common::server::serve_with_tasks(
        listener,
        app,
        shutdown.clone(),
        grace,
        tasks,
        "background tasks",
    );
    Ok(Running { addr, task })
}
