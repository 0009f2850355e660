//! `cloud-sink`: the cloud end of the sensor pipeline. It ingests batches of readings from
//! `iot-collector`s over HTTP, keeps each `(device, sequence)` once, and accounts for every
//! sequence number that never arrived, so a scenario can assert "no reading was lost" with one
//! number: `edgesim_sink_missing_total == 0`.
//!
//! # Design
//! - [`ledger::DeviceLedger`] keeps, per device, the received sequence numbers as ranges; a
//!   gap is a number between the first sequence number (1) and the highest received that is
//!   not there. A gap closes when the reading arrives late (after a partition heals), so
//!   `missing` is a gauge, not a counter.
//! - Readings are stored durably ([`store::Store`], redb) before the batch is acknowledged; a
//!   collector that never got the acknowledgement resends, and the resent readings count as
//!   duplicates, not as new data. The ledger is rebuilt from the store on start.
//! - Ingest is serialised behind one mutex: the store commit dominates, and one writer keeps
//!   the ledger and the store in step.
//!
//! # Endpoints
//! - `POST /ingest` — a JSON [`edge_common::proto::Batch`]; answers an
//!   [`edge_common::proto::IngestAck`] after the batch is durable, `500` if it could not be
//!   stored (the collector retries).
//! - `GET /status` — totals and, per device, unique/duplicate counts, highest sequence,
//!   missing count and the first gaps as `[from, to]` ranges.
//! - `GET /healthz`, `GET /metrics`.

pub mod ledger;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use edge_common::metrics::{FloatGauge, exponential_buckets};
use edge_common::proto::{Batch, IngestAck};
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::ledger::DeviceLedger;
use crate::store::Store;

/// Command line of `cloud-sink`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "cloud-sink",
    version,
    about = "Ingests sensor readings, de-duplicates them by (device, sequence) and counts every gap"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Directory for the readings database; defaults to $EDGESIM_WORKDIR, else ./cloud-sink-data.
    #[arg(long, env = "SINK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep readings in memory only (nothing survives a restart of the sink).
    #[arg(long, env = "SINK_IN_MEMORY")]
    pub in_memory: bool,

    /// The first sequence number every device uses; lower numbers are rejected.
    #[arg(long, env = "SINK_FIRST_SEQUENCE", default_value_t = 1)]
    pub first_sequence: u64,

    /// How many gaps per device `/status` lists (the counts always cover all of them).
    #[arg(long, env = "SINK_MAX_GAPS_LISTED", default_value_t = 100)]
    pub max_gaps_listed: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

/// The sink's metrics (all prefixed `edgesim_`).
#[derive(Clone, Debug)]
struct Metrics {
    batches: Counter,
    received: Counter,
    accepted: Counter,
    duplicates: Counter,
    rejected: Counter,
    store_errors: Counter,
    missing: Gauge,
    devices: Gauge,
    device_missing: Family<DeviceLabel, Gauge>,
    device_highest: Family<DeviceLabel, Gauge>,
    device_unique: Family<DeviceLabel, Gauge>,
    delivery_delay: Histogram,
    last_ingest_age_base: FloatGauge,
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            batches: Counter::default(),
            received: Counter::default(),
            accepted: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
            store_errors: Counter::default(),
            missing: Gauge::default(),
            devices: Gauge::default(),
            device_missing: Family::default(),
            device_highest: Family::default(),
            device_unique: Family::default(),
            delivery_delay: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            last_ingest_age_base: FloatGauge::default(),
        };
        r.register(
            "sink_batches",
            "Ingest requests received",
            m.batches.clone(),
        );
        r.register(
            "sink_received",
            "Readings received, duplicates included",
            m.received.clone(),
        );
        r.register(
            "sink_accepted",
            "Readings stored for the first time",
            m.accepted.clone(),
        );
        r.register(
            "sink_duplicates",
            "Readings received again after they were stored (idempotent resends)",
            m.duplicates.clone(),
        );
        r.register(
            "sink_rejected",
            "Readings refused as invalid (sequence below the first sequence number)",
            m.rejected.clone(),
        );
        r.register(
            "sink_store_errors",
            "Batches that could not be stored (answered 500, to be resent)",
            m.store_errors.clone(),
        );
        r.register("sink_missing_total", "Sequence numbers, summed over devices, between the first and the highest received that never arrived; 0 means nothing was lost", m.missing.clone());
        r.register(
            "sink_devices",
            "Devices that sent at least one reading",
            m.devices.clone(),
        );
        r.register(
            "sink_device_missing",
            "Per device: sequence numbers below the highest received that never arrived",
            m.device_missing.clone(),
        );
        r.register(
            "sink_device_highest_sequence",
            "Per device: the highest sequence number received",
            m.device_highest.clone(),
        );
        r.register(
            "sink_device_unique",
            "Per device: distinct readings received",
            m.device_unique.clone(),
        );
        r.register(
            "sink_delivery_delay_seconds",
            "Time from a reading being taken to the sink storing it (backlog included)",
            m.delivery_delay.clone(),
        );
        r.register(
            "sink_last_ingest_timestamp_seconds",
            "Unix time of the last batch that stored something",
            m.last_ingest_age_base.clone(),
        );
        m
    }
}

#[derive(Debug, Default)]
struct Ledgers {
    devices: BTreeMap<String, DeviceLedger>,
    last_ts_ms: BTreeMap<String, u64>,
}

/// The shared state behind the handlers.
#[derive(Debug)]
struct Sink {
    env: EdgeEnv,
    first: u64,
    max_gaps: usize,
    ledgers: Mutex<Ledgers>,
    store: Option<Store>,
    metrics: Metrics,
}

impl Sink {
    /// Stores the new readings of `batch` and updates the ledgers; the store commit happens
    /// before the ledger changes, so a failed commit leaves both as they were.
    fn ingest(&self, batch: &Batch) -> Result<IngestAck, store::StoreError> {
        let m = &self.metrics;
        m.batches.inc();
        m.received.inc_by(batch.readings.len() as u64);
        let mut ledgers = self.ledgers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen_in_batch = HashSet::new();
        let mut fresh = Vec::new();
        let mut repeated = Vec::new();
        let mut rejected = 0u64;
        for r in &batch.readings {
            if r.seq < self.first {
                rejected += 1;
                continue;
            }
            let known = ledgers
                .devices
                .get(&r.device)
                .is_some_and(|l| l.contains(r.seq));
            if known || !seen_in_batch.insert((r.device.as_str(), r.seq)) {
                repeated.push(r);
                continue;
            }
            fresh.push(r);
        }
        if let Some(store) = &self.store {
            store.write(&fresh).inspect_err(|_| {
                m.store_errors.inc();
            })?;
        }
        let now = edge_common::now_ms();
        for r in &fresh {
            ledgers
                .devices
                .entry(r.device.clone())
                .or_default()
                .record(r.seq);
            let last = ledgers.last_ts_ms.entry(r.device.clone()).or_default();
            *last = (*last).max(r.ts_ms);
            m.delivery_delay
                .observe(now.saturating_sub(r.ts_ms) as f64 / 1000.0);
        }
        // After the fresh ones, so that each of these counts as a duplicate in its ledger.
        for r in &repeated {
            ledgers
                .devices
                .entry(r.device.clone())
                .or_default()
                .record(r.seq);
        }
        let duplicates = repeated.len() as u64;
        m.accepted.inc_by(fresh.len() as u64);
        m.duplicates.inc_by(duplicates);
        m.rejected.inc_by(rejected);
        if !fresh.is_empty() {
            m.last_ingest_age_base.set(now as f64 / 1000.0);
        }
        self.refresh_gauges(&ledgers, batch.readings.iter().map(|r| r.device.as_str()));
        Ok(IngestAck {
            accepted: fresh.len() as u64,
            duplicates,
            rejected,
        })
    }

    fn refresh_gauges<'a>(&self, ledgers: &Ledgers, touched: impl Iterator<Item = &'a str>) {
        let m = &self.metrics;
        let mut done = HashSet::new();
        for d in touched {
            if !done.insert(d) {
                continue;
            }
            if let Some(l) = ledgers.devices.get(d) {
                let label = DeviceLabel {
                    device: d.to_string(),
                };
                m.device_missing
                    .get_or_create(&label)
                    .set(to_i64(l.missing(self.first)));
                m.device_highest
                    .get_or_create(&label)
                    .set(to_i64(l.highest().unwrap_or(0)));
                m.device_unique
                    .get_or_create(&label)
                    .set(to_i64(l.unique()));
            }
        }
        let missing: u64 = ledgers
            .devices
            .values()
            .map(|l| l.missing(self.first))
            .sum();
        m.missing.set(to_i64(missing));
        m.devices.set(to_i64(ledgers.devices.len() as u64));
    }

    fn status(&self) -> serde_json::Value {
        let ledgers = self.ledgers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut devices = serde_json::Map::new();
        let (mut unique, mut dups, mut missing) = (0u64, 0u64, 0u64);
        for (name, l) in &ledgers.devices {
            unique += l.unique();
            dups += l.duplicates();
            missing += l.missing(self.first);
            let gaps = l.gaps(self.first, self.max_gaps);
            devices.insert(
                name.clone(),
                json!({
                    "unique": l.unique(),
                    "duplicates": l.duplicates(),
                    "highest": l.highest(),
                    "missing": l.missing(self.first),
                    "gap_count": l.gap_count(self.first),
                    "gaps": gaps,
                    "last_ts_ms": ledgers.last_ts_ms.get(name),
                }),
            );
        }
        json!({
            "env": self.env,
            "durable": self.store.as_ref().map(|s| s.path().display().to_string()),
            "first_sequence": self.first,
            "totals": {
                "devices": ledgers.devices.len(),
                "unique": unique,
                "duplicates": dups,
                "missing": missing,
                "received": self.metrics.received.get(),
                "batches": self.metrics.batches.get(),
            },
            "devices": devices,
        })
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn ingest(
    State(sink): State<Arc<Sink>>,
    axum::Json(batch): axum::Json<Batch>,
) -> Result<axum::Json<IngestAck>, (StatusCode, String)> {
    let s = sink.clone();
    let source = batch.source.clone();
    let n = batch.readings.len();
    let res = tokio::task::spawn_blocking(move || s.ingest(&batch))
        .await
        .map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("ingest task failed: {e}\n"),
            )
        })?;
    match res {
        Ok(ack) => {
            tracing::debug!(%source, n, accepted = ack.accepted, duplicates = ack.duplicates, "batch stored");
            Ok(axum::Json(ack))
        }
        Err(e) => {
            tracing::error!(%source, n, error = %e, "could not store a batch");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
        }
    }
}

/// A started sink.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Resolves when the server stopped (after `shutdown` was triggered).
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens the store, rebuilds the ledgers from it, binds and starts serving until `shutdown`.
///
/// # Errors
/// When the store cannot be opened or read, or the address cannot be bound.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    let env = EdgeEnv::new("cloud-sink", env!("CARGO_PKG_VERSION"), &args.common);
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    let store = if args.in_memory {
        None
    } else {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| args.common.workdir_or("cloud-sink-data"));
        Some(tokio::task::spawn_blocking(move || Store::open(&dir)).await??)
    };
    let mut ledgers = Ledgers::default();
    if let Some(s) = &store {
        let n = s
            .scan(|device, seq| {
                if let Some(l) = ledgers.devices.get_mut(device) {
                    l.record(seq);
                } else {
                    let mut l = DeviceLedger::default();
                    l.record(seq);
                    ledgers.devices.insert(device.to_string(), l);
                }
            })
            .context("rebuilding the ledger from the store")?;
        tracing::info!(path = %s.path().display(), readings = n, devices = ledgers.devices.len(), "store opened");
    }
    let sink = Arc::new(Sink {
        env,
        first: args.first_sequence,
        max_gaps: args.max_gaps_listed,
        ledgers: Mutex::new(Ledgers::default()),
        store,
        metrics,
    });
    {
        let names: Vec<String> = ledgers.devices.keys().cloned().collect();
        sink.refresh_gauges(&ledgers, names.iter().map(String::as_str));
        *sink.ledgers.lock().unwrap_or_else(PoisonError::into_inner) = ledgers;
    }
    let status_sink = sink.clone();
    let app = Router::new()
        .route("/ingest", post(ingest))
        .with_state(sink)
        .merge(edge_common::server::base_router(
            Arc::new(registry),
            Arc::new(move || status_sink.status()),
        ));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    let grace = args.common.shutdown_grace.0;
    let task = tokio::spawn(edge_common::server::serve(listener, app, shutdown, grace));
    Ok(Running { addr, task })
}
