//! `edge-cache`: a read-through HTTP cache at the edge, in front of a cloud origin (any HTTP
//! service; `edge-web`'s `/data/{key}` is made for it). While the origin is unreachable — a
//! partition — it keeps answering from what it has, but never with data older than
//! `--max-stale`, and it reports how stale its answers were, so a scenario can assert
//! "stale reads stayed under 30 s".
//!
//! # Design
//! Every `GET` other than the service's own endpoints is looked up in the cache
//! ([`cache::Cache`], which holds the freshness rules): a fresh entry is served (hit); otherwise
//! the origin is asked (`--origin` + the same path and query), and its 2xx answer is cached
//! and served (miss). When the origin fails (refused, timeout, 5xx) the expired entry is
//! served if its age is within `--max-stale` (stale), else the request fails with 504 and the
//! error is counted. After a failure the origin is not asked again for `--origin-retry`, so
//! during a partition stale answers come at once instead of after a timeout each.
//!
//! Responses carry `x-cache: HIT|MISS|STALE` and `age` (seconds since the content was
//! fetched from the origin). The cache is in memory: a restarted cache starts empty.
//!
//! # Endpoints
//! - `GET /<anything>` — served through the cache.
//! - `GET /healthz`, `GET /metrics`, `GET /status`.

pub mod cache;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use edge_common::client::HttpClient;
use edge_common::metrics::{FloatGauge, exponential_buckets};
use edge_common::units::Dur;
use edge_common::{CommonArgs, EdgeEnv, Shutdown};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::cache::{Cache, Entry, Lookup, StaleVerdict};

/// Command line of `edge-cache`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "edge-cache",
    version,
    about = "Read-through edge cache that serves stale data within a bound while the origin is unreachable"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Base URL of the origin (a request for /PATH goes to ORIGIN/PATH). Node names resolve through
    /// EDGESIM_PEERS, then /etc/hosts.
    #[arg(long, env = "ORIGIN_URL", default_value = "http://origin:8080")]
    pub origin: String,

    /// How long a fetched response is fresh (served without asking the origin).
    #[arg(long, env = "CACHE_TTL", default_value = "5s")]
    pub ttl: Dur,

    /// The oldest content (time since it was fetched from the origin) ever served when the
    /// origin cannot be reached; older entries answer 504. At least --ttl.
    #[arg(long, env = "CACHE_MAX_STALE", default_value = "30s")]
    pub max_stale: Dur,

    /// Timeout of one request to the origin.
    #[arg(long, env = "CACHE_ORIGIN_TIMEOUT", default_value = "1s")]
    pub origin_timeout: Dur,

    /// After the origin failed, answer from the cache without asking it for this long.
    #[arg(long, env = "CACHE_ORIGIN_RETRY", default_value = "1s")]
    pub origin_retry: Dur,

    /// Most entries held (first in, first out).
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 10_000)]
    pub capacity: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug)]
struct Metrics {
    hits: Counter,
    misses: Counter,
    stale: Counter,
    errors: Family<ReasonLabel, Counter>,
    stale_age: Histogram,
    stale_age_max: FloatGauge,
    max_stale: FloatGauge,
    entries: Gauge,
    origin_up: Gauge,
    origin_fetch: Histogram,
    duration: Histogram,
}

impl Metrics {
    fn register(r: &mut Registry) -> Self {
        let m = Self {
            hits: Counter::default(),
            misses: Counter::default(),
            stale: Counter::default(),
            errors: Family::default(),
            stale_age: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            stale_age_max: FloatGauge::default(),
            max_stale: FloatGauge::default(),
            entries: Gauge::default(),
            origin_up: Gauge::default(),
            origin_fetch: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        };
        r.register(
            "cache_hits",
            "Requests served fresh from the cache",
            m.hits.clone(),
        );
        r.register(
            "cache_misses",
            "Requests the origin answered (new or expired entries)",
            m.misses.clone(),
        );
        r.register(
            "cache_stale",
            "Requests served stale because the origin was unreachable",
            m.stale.clone(),
        );
        r.register("cache_errors", "Requests that failed: beyond-max-stale (only data older than --max-stale was cached), origin-unreachable (nothing cached)", m.errors.clone());
        r.register(
            "cache_stale_age_seconds",
            "Age of the content of stale answers",
            m.stale_age.clone(),
        );
        r.register(
            "cache_stale_age_max_seconds",
            "Age of the oldest content ever served stale (0 if none); never above --max-stale",
            m.stale_age_max.clone(),
        );
        r.register(
            "cache_max_stale_seconds",
            "The configured --max-stale bound",
            m.max_stale.clone(),
        );
        r.register("cache_entries", "Entries held", m.entries.clone());
        r.register(
            "cache_origin_up",
            "1 if the last request to the origin succeeded, else 0",
            m.origin_up.clone(),
        );
        r.register(
            "cache_origin_fetch_duration_seconds",
            "Duration of successful origin fetches",
            m.origin_fetch.clone(),
        );
        r.register(
            "cache_request_duration_seconds",
            "Time to answer a request through the cache",
            m.duration.clone(),
        );
        for reason in ["beyond-max-stale", "origin-unreachable"] {
            let _ = m.errors.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

#[derive(Debug, Default)]
struct OriginState {
    down_until: Option<Instant>,
    last_error: Option<String>,
}

struct EdgeCache {
    env: EdgeEnv,
    args: Args,
    cache: Mutex<Cache>,
    origin: Mutex<OriginState>,
    client: HttpClient,
    metrics: Metrics,
}

/// What the origin said.
enum Fetched {
    /// A 2xx (cached) or a 4xx (passed through, not cached).
    Answer(StatusCode, Entry),
    /// Unreachable, timed out, or 5xx.
    Failed(String),
}

impl EdgeCache {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn origin(&self) -> std::sync::MutexGuard<'_, OriginState> {
        self.origin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn fetch(&self, path_and_query: &str) -> Fetched {
        if let Some(until) = self.origin().down_until
            && Instant::now() < until
        {
            return Fetched::Failed("origin marked down after a recent failure".into());
        }
        let url = format!(
            "{}{}",
            self.args.origin.trim_end_matches('/'),
            path_and_query
        );
        let started = Instant::now();
        let failure = match self.client.get(&url).await {
            Ok(r) if !r.status.is_server_error() => {
                self.metrics
                    .origin_fetch
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.origin_up.set(1);
                let mut o = self.origin();
                o.down_until = None;
                o.last_error = None;
                drop(o);
                let content_type = r
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Fetched::Answer(
                    r.status,
                    Entry {
                        body: r.body,
                        content_type,
                        fetched: Instant::now(),
                    },
                );
            }
            Ok(r) => format!("origin answered {} for {url}", r.status),
            Err(e) => edge_common::error_chain(&e),
        };
        self.metrics.origin_up.set(0);
        let mut o = self.origin();
        if o.last_error.is_none() {
            tracing::warn!(error = %failure, "origin unreachable; serving from the cache");
        }
        o.down_until = Some(Instant::now() + self.args.origin_retry.0);
        o.last_error = Some(failure.clone());
        Fetched::Failed(failure)
    }

    fn respond(&self, status: StatusCode, e: &Entry, kind: &'static str, now: Instant) -> Response {
        let age = now.saturating_duration_since(e.fetched);
        let mut resp = (status, e.body.clone()).into_response();
        let h = resp.headers_mut();
        if let Some(ct) = e
            .content_type
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        h.insert("x-cache", HeaderValue::from_static(kind));
        h.insert(header::AGE, HeaderValue::from(age.as_secs()));
        h.insert(
            "x-cache-age-ms",
            HeaderValue::from(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        );
        resp
    }

    fn error(&self, reason: &'static str, msg: String) -> Response {
        self.metrics
            .errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
        (
            StatusCode::GATEWAY_TIMEOUT,
            [("x-cache", "ERROR")],
            format!("{reason}: {msg}\n"),
        )
            .into_response()
    }

    async fn serve(&self, key: &str) -> Response {
        let looked = self.cache().lookup(key, Instant::now());
        let expired = match looked {
            Lookup::Fresh(e) => {
                self.metrics.hits.inc();
                return self.respond(StatusCode::OK, &e, "HIT", Instant::now());
            }
            Lookup::Expired(e) => Some(e),
            Lookup::Absent => None,
        };
        match self.fetch(key).await {
            Fetched::Answer(status, e) => {
                self.metrics.misses.inc();
                if status.is_success() {
                    let mut c = self.cache();
                    c.insert(key, e.clone());
                    self.metrics
                        .entries
                        .set(i64::try_from(c.len()).unwrap_or(i64::MAX));
                }
                self.respond(status, &e, "MISS", Instant::now())
            }
            Fetched::Failed(why) => {
                let now = Instant::now();
                let Some(e) = expired else {
                    return self.error("origin-unreachable", why);
                };
                match self.cache().stale_verdict(&e, now) {
                    StaleVerdict::Serve(age) => {
                        let secs = age.as_secs_f64();
                        self.metrics.stale.inc();
                        self.metrics.stale_age.observe(secs);
                        if secs > self.metrics.stale_age_max.get() {
                            self.metrics.stale_age_max.set(secs);
                        }
                        self.respond(StatusCode::OK, &e, "STALE", now)
                    }
                    StaleVerdict::TooOld(age) => self.error(
                        "beyond-max-stale",
                        format!(
                            "cached copy is {age:.1?} old, above --max-stale {}; {why}",
                            self.args.max_stale
                        ),
                    ),
                }
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        let entries = self.cache().len();
        let o = self.origin();
        json!({
            "env": self.env,
            "origin": self.args.origin,
            "ttl": self.args.ttl.to_string(),
            "max_stale": self.args.max_stale.to_string(),
            "entries": entries,
            "origin_up": self.metrics.origin_up.get() == 1,
            "origin_last_error": o.last_error,
            "hits": self.metrics.hits.get(),
            "misses": self.metrics.misses.get(),
            "stale": self.metrics.stale.get(),
            "stale_age_max_seconds": self.metrics.stale_age_max.get(),
        })
    }
}

async fn proxy(State(c): State<Arc<EdgeCache>>, method: Method, uri: Uri) -> Response {
    if method != Method::GET {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "the cache serves GET only\n",
        )
            .into_response();
    }
    let started = Instant::now();
    let key = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let resp = c.serve(&key).await;
    c.metrics.duration.observe(started.elapsed().as_secs_f64());
    resp
}

/// A started cache.
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds and serves until `shutdown`.
///
/// # Errors
/// When the flags are inconsistent or the address cannot be bound.
pub async fn start(args: Args, shutdown: Shutdown) -> anyhow::Result<Running> {
    anyhow::ensure!(
        args.max_stale.0 >= args.ttl.0,
        "--max-stale ({}) must be at least --ttl ({})",
        args.max_stale,
        args.ttl
    );
    let env = EdgeEnv::new("edge-cache", env!("CARGO_PKG_VERSION"), &args.common);
    let mut registry = edge_common::metrics::new_registry(&env);
    let metrics = Metrics::register(&mut registry);
    metrics.max_stale.set(args.max_stale.0.as_secs_f64());
    let client = HttpClient::new(args.origin_timeout.0, args.common.peer_map().clone());
    let c = Arc::new(EdgeCache {
        env,
        cache: Mutex::new(Cache::new(args.ttl.0, args.max_stale.0, args.capacity)),
        origin: Mutex::new(OriginState::default()),
        client,
        metrics,
        args: args.clone(),
    });
    let status_c = c.clone();
    let app =
        edge_common::server::base_router(Arc::new(registry), Arc::new(move || status_c.status()))
            .merge(Router::new().fallback(proxy).with_state(c));
    let listener = edge_common::server::bind(&args.common).await?;
    let addr = listener.local_addr();
    tracing::info!(origin = %args.origin, ttl = %args.ttl, max_stale = %args.max_stale, "ready");
    let task = tokio::spawn(edge_common::server::serve(
        listener,
        app,
        shutdown,
        args.common.shutdown_grace.0,
    ));
    Ok(Running { addr, task })
}
