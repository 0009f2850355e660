//! `edge-web`: an HTTP service whose requests cost a configurable amount of real CPU work, so
//! that the same load shows different latency on a Pi-shaped and an Orin-shaped node (or under
//! CPU pressure). It also serves versioned documents, so it can be the origin behind
//! `edge-cache`.
//!
//! # Design
//! Each request hashes `--work-kib` KiB ([`work::hash_kib`]) on tokio's blocking pool, with at
//! most `--workers` requests computing at once (default: the CPUs the process may use); the
//! rest wait their turn, as in a real thread-pooled server. Latency is measured from the
//! request's arrival to its answer, so it includes that queueing — which is what a constrained
//! node shows first.
//!
//! # Endpoints
//! - `GET /work[?kib=N]` — does the work (N KiB, at most `--max-work-kib`) and answers the
//!   digest and timings.
//! - `GET /data/{key}` — a JSON document for `key` whose `version` changes every
//!   `--version-every` (so a cache in front can tell fresh from stale), costing the same work.
//! - `GET /healthz`, `GET /metrics`, `GET /status`.

pub mod work;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edge_common::metrics::exponential_buckets;
use edge_common::units::Dur;
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::Semaphore;

/// Command line of `edge-web`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "edge-web",
    version,
    about = "HTTP service with a configurable CPU cost per request and a latency histogram"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// KiB of data hashed (SHA-256) per request: the CPU cost. 64 KiB is ~0.1-0.3 ms on a
    /// server core; 4096 KiB is ~10-30 ms.
    #[arg(long, env = "WEB_WORK_KIB", default_value_t = 256)]
    pub work_kib: u64,

    /// Most KiB a request may ask for with `?kib=`.
    #[arg(long, env = "WEB_MAX_WORK_KIB", default_value_t = 65536)]
    pub max_work_kib: u64,

    /// Requests computing at once; the rest queue. Defaults to the CPUs available.
    #[arg(long, env = "WEB_WORKERS")]
    pub workers: Option<usize>,

    /// How often the documents under /data/ change version.
    #[arg(long, env = "WEB_VERSION_EVERY", default_value = "10s")]
    pub version_every: Dur,

    /// Bytes of filler in each /data/ document.
    #[arg(long, env = "WEB_PAYLOAD_BYTES", default_value_t = 256)]
    pub payload_bytes: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug)]
struct Metrics {
    requests: Family<RequestLabel, Counter>,
    duration: Family<RouteLabel, Histogram>,
    compute: Histogram,
    queue_wait: Histogram,
    inflight: Gauge,
    work_bytes: Counter,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.25 ms … ~8 s.
    exponential_buckets(0.000_25, 2.0, 16)
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            compute: Histogram::new(latency_buckets()),
            queue_wait: Histogram::new(latency_buckets()),
            inflight: Gauge::default(),
            work_bytes: Counter::default(),
        };
        r.register(
            "web_requests",
            "Requests answered, by route and status code",
            m.requests.clone(),
        );
        r.register(
            "web_request_duration_seconds",
            "Time from a request's arrival to its answer (queueing and work), by route",
            m.duration.clone(),
        );
        r.register(
            "web_compute_duration_seconds",
            "CPU work per request (hashing), without queueing",
            m.compute.clone(),
        );
        r.register(
            "web_queue_wait_seconds",
            "Time requests waited for a worker",
            m.queue_wait.clone(),
        );
        r.register(
            "web_inflight_requests",
            "Requests being served now",
            m.inflight.clone(),
        );
        r.register("web_work_bytes", "Bytes hashed", m.work_bytes.clone());
        m
    }
}

struct Web {
    env: EdgeEnv,
    args: Args,
    workers: usize,
    slots: Semaphore,
    metrics: Metrics,
    served: AtomicU64,
}

/// What one unit of work took.
struct Done {
    digest: String,
    queue_ms: f64,
    compute_ms: f64,
}

impl Web {
    async fn work(&self, kib: u64, salt: u64) -> Result<Done, StatusCode> {
        let arrived = Instant::now();
        let _permit = self
            .slots
            .acquire()
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        let waited = arrived.elapsed();
        self.metrics.queue_wait.observe(waited.as_secs_f64());
        let started = Instant::now();
        let digest = tokio::task::spawn_blocking(move || work::hash_kib(kib, salt))
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        let took = started.elapsed();
        self.metrics.compute.observe(took.as_secs_f64());
        self.metrics.work_bytes.inc_by(kib.saturating_mul(1024));
        Ok(Done {
            digest,
            queue_ms: waited.as_secs_f64() * 1e3,
            compute_ms: took.as_secs_f64() * 1e3,
        })
    }

    fn finish(&self, route: &'static str, arrived: Instant, resp: Response) -> Response {
        let code = resp.status().as_u16();
        self.metrics
            .requests
            .get_or_create(&RequestLabel { route, code })
            .inc();
        self.metrics
            .duration
            .get_or_create(&RouteLabel { route })
            .observe(arrived.elapsed().as_secs_f64());
        self.served.fetch_add(1, Ordering::Relaxed);
        resp
    }

    fn status(&self) -> serde_json::Value {
        json!({
            "env": self.env,
            "work_kib": self.args.work_kib,
            "max_work_kib": self.args.max_work_kib,
            "workers": self.workers,
            "version_every": self.args.version_every.to_string(),
            "served": self.served.load(Ordering::Relaxed),
            "inflight": self.metrics.inflight.get(),
        })
    }
}

/// Counts a request as in flight for as long as it lives.
struct Inflight<'a>(&'a Gauge);

impl<'a> Inflight<'a> {
    fn new(g: &'a Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, serde::Deserialize)]
struct WorkQuery {
    kib: Option<u64>,
}

async fn work_handler(State(web): State<Arc<Web>>, Query(q): Query<WorkQuery>) -> Response {
    let arrived = Instant::now();
    let _g = Inflight::new(&web.metrics.inflight);
    let kib = q.kib.unwrap_or(web.args.work_kib);
    let resp = if kib > web.args.max_work_kib {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "kib={kib} is above --max-work-kib {}\n",
                web.args.max_work_kib
            ),
        )
            .into_response()
    } else {
        let salt = web.served.load(Ordering::Relaxed);
        match web.work(kib, salt).await {
            Ok(d) => axum::Json(json!({
                "kib": kib,
                "salt": salt,
                "digest": d.digest,
                "queue_ms": d.queue_ms,
                "compute_ms": d.compute_ms,
                "node": web.env.node,
            }))
            .into_response(),
            Err(code) => code.into_response(),
        }
    };
    web.finish("work", arrived, resp)
}

async fn data_handler(State(web): State<Arc<Web>>, Path(key): Path<String>) -> Response {
    let arrived = Instant::now();
    let _g = Inflight::new(&web.metrics.inflight);
    let now = edge_common::now_ms();
    let every = u64::try_from(web.args.version_every.0.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let version = now / every;
    let resp = match web.work(web.args.work_kib, version).await {
        Ok(d) => {
            let filler: String = d
                .digest
                .chars()
                .cycle()
                .take(web.args.payload_bytes)
                .collect();
            axum::Json(json!({
                "key": key,
                "version": version,
                "generated_at_ms": now,
                "origin": web.env.node,
                "digest": d.digest,
                "payload": filler,
            }))
            .into_response()
        }
        Err(code) => code.into_response(),
    };
    web.finish("data", arrived, resp)
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds and serves until `shutdown`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    let env = EdgeEnv::new("edge-web", env!("CARGO_PKG_VERSION"), &args.common);
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let web = Arc::new(Web {
        env,
        args: args.clone(),
        workers,
        slots: Semaphore::new(workers),
        metrics,
        served: AtomicU64::new(0),
    });
    let status_web = web.clone();
    let app = Router::new()
        .route("/work", get(work_handler))
        .route("/data/{key}", get(data_handler))
        .with_state(web)
        .merge(edge_common::server::base_router(
            Arc::new(registry),
            Arc::new(move || status_web.status()),
        ));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    tracing::info!(work_kib = args.work_kib, workers, "ready");
    let task = tokio::spawn(edge_common::server::serve(
        listener,
        app,
        shutdown,
        args.common.shutdown_grace.0,
    ));
    Ok(Running { addr, task })
}
