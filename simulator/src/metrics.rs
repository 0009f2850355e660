//! Prometheus metrics of a run, and the small HTTP server that exposes them.
//!
//! Design (after firecracker's metrics): [`RunMetrics`] is one documented struct, one field per
//! metric, registered once in [`RunMetrics::new`]; the engine, probes and workload supervisor
//! record through its methods and never name metrics themselves. Durations of work are
//! recorded by a guard on `Drop` ([`ActionTimer`]), so an early return still records them.
//!
//! Built on `prometheus-client` (the official Rust client; the tikv `prometheus` crate is no
//! longer maintained). Everything is exported under the `edgesim_` prefix in the OpenMetrics
//! text format. [`serve`] answers `GET /metrics` (404 elsewhere) with a hyper 1.x server that
//! stops when its [`MetricsServer`] handle is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;

/// The content type of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeResultLabels {
    probe: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AssertionLabels {
    assertion: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn lag_histogram() -> Histogram {
    // 100 µs .. ~3.3 s: timeline lag is sub-millisecond when healthy, seconds when not.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

fn rtt_histogram() -> Histogram {
    // 50 µs (bare veth) .. ~13 s (a probe timeout on a flapping satellite link).
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// The metrics of one run. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct RunMetrics {
    /// `edgesim_actions_applied_total{verb}`: timeline actions applied successfully, by verb
    /// (`partition`, `heal`, `impair`, …). Automatic reverts count under their own verb.
    actions_applied: Family<VerbLabels, Counter>,
    /// `edgesim_action_errors_total{verb}`: timeline actions whose application failed.
    action_errors: Family<VerbLabels, Counter>,
    /// `edgesim_action_lag_seconds`: how late each action started relative to its scheduled
    /// offset. The health of the timeline: a loaded host shows here first.
    action_lag: Histogram,
    /// `edgesim_action_apply_seconds{verb}`: how long applying an action took (netlink,
    /// nftables, cgroup writes), recorded by [`ActionTimer`].
    action_apply: HistogramFamily<VerbLabels>,
    /// `edgesim_probe_attempts_total{probe,result}`: probe attempts, `result` = `ok`|`fail`.
    probe_attempts: Family<ProbeResultLabels, Counter>,
    /// `edgesim_probe_rtt_seconds{probe}`: round-trip time of successful probe attempts.
    probe_rtt: HistogramFamily<ProbeLabels>,
    /// `edgesim_assertion_passed{assertion}`: 1 when the assertion held, 0 when it failed; set
    /// once assertions are judged at the end of the run (absent before).
    assertion_passed: Family<AssertionLabels, Gauge>,
    /// `edgesim_nodes_up`: nodes currently up (set by the engine on bring-up, node-down and
    /// node-up).
    nodes_up: Gauge,
    /// `edgesim_workload_restarts_total{workload}`: restarts of workload instances, whether by
    /// restart policy or by a `restart` action.
    workload_restarts: Family<WorkloadLabels, Counter>,
    /// The userspace link emulator's counters, read on each scrape (see [`LinkStats`]).
    link_stats: LinkStats,
}

type StatsSource = Box<dyn Fn() -> Vec<crate::linkem::RelayStats> + Send + Sync>;

/// Per-relay, per-direction, per-rule counters of the userspace link emulator, read from the
/// relays' atomics at scrape time (so they are never stale and cost nothing between scrapes):
/// `edgesim_link_packets_total`, `edgesim_link_bytes_total`, `edgesim_link_sent_packets_total`,
/// `edgesim_link_dropped_total{cause=loss|partition|overflow}`,
/// `edgesim_link_duplicated_total`, `edgesim_link_corrupted_total`,
/// `edgesim_link_reordered_total` and the gauge `edgesim_link_queue_depth`, each labelled
/// `relay`, `direction`, `rule`.
#[derive(Clone, Default)]
pub struct LinkStats(Arc<std::sync::Mutex<Option<StatsSource>>>);

impl std::fmt::Debug for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkStats")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    relay: String,
    direction: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkCauseLabels {
    relay: String,
    direction: String,
    rule: String,
    cause: String,
}

impl prometheus_client::collector::Collector for LinkStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let stats = match self.0.lock() {
            Ok(g) => g.as_ref().map(|f| f()).unwrap_or_default(),
            Err(_) => return Ok(()),
        };
        if stats.is_empty() {
            return Ok(());
        }
        let rows: Vec<(LinkLabels, &crate::linkem::RuleStats)> = stats
            .iter()
            .flat_map(|r| {
                [&r.a_to_b, &r.b_to_a].into_iter().flat_map(move |d| {
                    d.rules.iter().map(move |rule| {
                        (
                            LinkLabels {
                                relay: r.relay.clone(),
                                direction: d.dir.as_str().to_string(),
                                rule: rule.rule.clone(),
                            },
                            rule,
                        )
                    })
                })
            })
            .collect();
        type Get = fn(&crate::linkem::RuleStats) -> u64;
        let counters: [(&str, &str, Get); 6] = [
            (
                "link_packets",
                "Packets that reached the link emulator, by relay, direction and rule",
                |r| r.packets,
            ),
            ("link_bytes", "Bytes that reached the link emulator", |r| {
                r.bytes
            }),
            (
                "link_sent_packets",
                "Packets the link emulator sent on (duplicates included)",
                |r| r.sent_packets,
            ),
            (
                "link_duplicated",
                "Packets the link emulator duplicated",
                |r| r.duplicated,
            ),
            (
                "link_corrupted",
                "Packets the link emulator corrupted",
                |r| r.corrupted,
            ),
            (
                "link_reordered",
                "Packets the link emulator sent ahead of delayed ones",
                |r| r.reordered,
            ),
        ];
        for (name, help, get) in counters {
            let mut e = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (l, r) in &rows {
                ConstCounter::new(get(r)).encode(e.encode_family(l)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "link_queue_max_depth",
            "Most packets ever waiting in a rule's queue",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (l, r) in &rows {
            ConstGauge::new(r.max_queue_depth as i64).encode(e.encode_family(l)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "link_dropped",
            "Packets the link emulator dropped, by cause (loss, partition, overflow)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (l, r) in &rows {
            for (cause, v) in [
                ("loss", r.dropped_loss),
                ("partition", r.dropped_partition),
                ("overflow", r.dropped_overflow),
            ] {
                let labels = LinkCauseLabels {
                    relay: l.relay.clone(),
                    direction: l.direction.clone(),
                    rule: l.rule.clone(),
                    cause: cause.into(),
                };
                ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "link_queue_depth",
            "Packets waiting in a rule's queue now",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (l, r) in &rows {
            ConstGauge::new(r.queue_depth as i64).encode(e.encode_family(l)?)?;
        }
        Ok(())
    }
}

impl RunMetrics {
    /// Creates the metrics and a registry holding them (prefix `edgesim`).
    pub fn new() -> (Self, Registry) {
        let mut registry = Registry::with_prefix("edgesim");
        let m = RunMetrics {
            actions_applied: Family::default(),
            action_errors: Family::default(),
            action_lag: lag_histogram(),
            action_apply: Family::new_with_constructor(lag_histogram),
            probe_attempts: Family::default(),
            probe_rtt: Family::new_with_constructor(rtt_histogram),
            assertion_passed: Family::default(),
            nodes_up: Gauge::default(),
            workload_restarts: Family::default(),
            link_stats: LinkStats::default(),
        };
        registry.register_collector(Box::new(m.link_stats.clone()));
        registry.register(
            "actions_applied",
            "Timeline actions applied, by verb",
            m.actions_applied.clone(),
        );
        registry.register(
            "action_errors",
            "Timeline actions that failed to apply, by verb",
            m.action_errors.clone(),
        );
        registry.register(
            "action_lag_seconds",
            "Delay between an action's scheduled and actual start",
            m.action_lag.clone(),
        );
        registry.register(
            "action_apply_seconds",
            "Time taken to apply an action, by verb",
            m.action_apply.clone(),
        );
        registry.register(
            "probe_attempts",
            "Probe attempts, by probe and result (ok or fail)",
            m.probe_attempts.clone(),
        );
        registry.register(
            "probe_rtt_seconds",
            "Round-trip time of successful probe attempts",
            m.probe_rtt.clone(),
        );
        registry.register(
            "assertion_passed",
            "1 when the assertion held, 0 when it failed",
            m.assertion_passed.clone(),
        );
        registry.register("nodes_up", "Nodes currently up", m.nodes_up.clone());
        registry.register(
            "workload_restarts",
            "Restarts of workload instances",
            m.workload_restarts.clone(),
        );
        (m, registry)
    }

    /// Lets scrapes read the link emulator's counters through `source` (until cleared).
    pub fn set_link_stats(&self, source: Option<StatsSource>) {
        if let Ok(mut g) = self.link_stats.0.lock() {
            *g = source;
        }
    }

    /// Records an action that was applied (`ok`) or failed, and how late it started.
    pub fn action(&self, verb: &str, ok: bool, lag: Duration) {
        let l = VerbLabels {
            verb: verb.to_string(),
        };
        if ok {
            self.actions_applied.get_or_create(&l).inc();
        } else {
            self.action_errors.get_or_create(&l).inc();
        }
        self.action_lag.observe(lag.as_secs_f64());
    }

    /// Starts timing the application of an action; the time is recorded when the guard drops.
    pub fn time_action(&self, verb: &str) -> ActionTimer<'_> {
        ActionTimer {
            metrics: self,
            verb: verb.to_string(),
            start: Instant::now(),
        }
    }

    /// Records one probe attempt (and its RTT when it succeeded).
    pub fn probe_attempt(&self, probe: &str, ok: bool, rtt: Option<Duration>) {
        self.probe_attempts
            .get_or_create(&ProbeResultLabels {
                probe: probe.to_string(),
                result: if ok { "ok" } else { "fail" },
            })
            .inc();
        if let (true, Some(rtt)) = (ok, rtt) {
            self.probe_rtt
                .get_or_create(&ProbeLabels {
                    probe: probe.to_string(),
                })
                .observe(rtt.as_secs_f64());
        }
    }

    /// Sets an assertion's outcome.
    pub fn assertion(&self, assertion: &str, passed: bool) {
        self.assertion_passed
            .get_or_create(&AssertionLabels {
                assertion: assertion.to_string(),
            })
            .set(i64::from(passed));
    }

    /// Sets the number of nodes up.
    pub fn set_nodes_up(&self, n: usize) {
        self.nodes_up.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one restart of an instance of `workload`.
    pub fn workload_restarted(&self, workload: &str) {
        self.workload_restarts
            .get_or_create(&WorkloadLabels {
                workload: workload.to_string(),
            })
            .inc();
    }
}

/// Records the time since its creation into `edgesim_action_apply_seconds` when dropped.
#[must_use = "the duration is recorded when the guard is dropped"]
pub struct ActionTimer<'a> {
    metrics: &'a RunMetrics,
    verb: String,
    start: Instant,
}

impl Drop for ActionTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .action_apply
            .get_or_create(&VerbLabels {
                verb: std::mem::take(&mut self.verb),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// Encodes a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry)?;
    Ok(s)
}

/// The metrics server could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("binding the metrics server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running metrics server; dropping it stops the server and its open connections.
#[derive(Debug)]
pub struct MetricsServer {
    task: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address it listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `GET /metrics` on `addr` from `registry`, on the current tokio runtime, until the
/// returned handle is dropped.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> Result<MetricsServer, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        // Connections live in this set: aborting the accept loop drops it, which aborts them.
        let mut conns = JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics server: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let registry = registry.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, %peer, "metrics server: connection ended");
                }
            });
        }
    });
    tracing::info!(addr = %local, "serving run metrics on /metrics");
    Ok(MetricsServer { task, addr: local })
}

fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match encode(registry) {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::expo;
    use http_body_util::{BodyExt, Empty};

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Option<String>, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    fn value(e: &expo::Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
        e.series
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
    }

    #[tokio::test]
    async fn serves_recorded_values_and_404_elsewhere() {
        let (m, registry) = RunMetrics::new();
        let server = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        m.action("partition", true, Duration::from_micros(300));
        m.action("partition", true, Duration::from_micros(700));
        m.action("heal", false, Duration::from_millis(2));
        drop(m.time_action("heal"));
        m.probe_attempt("uplink", true, Some(Duration::from_millis(31)));
        m.probe_attempt("uplink", false, None);
        m.probe_attempt("uplink", false, None);
        m.assertion("cut", true);
        m.assertion("back", false);
        m.set_nodes_up(4);
        m.workload_restarted("sink");

        let (status, ct, body) = get(addr, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some(CONTENT_TYPE));
        let e = expo::parse(&body).unwrap();
        let v = |n, l: &[(&str, &str)]| value(&e, n, l);
        assert_eq!(
            v("edgesim_actions_applied_total", &[("verb", "partition")]),
            2.0
        );
        assert_eq!(v("edgesim_action_errors_total", &[("verb", "heal")]), 1.0);
        assert_eq!(v("edgesim_action_lag_seconds_count", &[]), 3.0);
        assert!((v("edgesim_action_lag_seconds_sum", &[]) - 0.003).abs() < 1e-9);
        assert_eq!(
            v("edgesim_action_apply_seconds_count", &[("verb", "heal")]),
            1.0
        );
        assert_eq!(
            v(
                "edgesim_probe_attempts_total",
                &[("probe", "uplink"), ("result", "fail")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "edgesim_probe_attempts_total",
                &[("probe", "uplink"), ("result", "ok")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "edgesim_probe_rtt_seconds_bucket",
                &[("probe", "uplink"), ("le", "+Inf")]
            ),
            1.0
        );
        assert_eq!(v("edgesim_assertion_passed", &[("assertion", "cut")]), 1.0);
        assert_eq!(v("edgesim_assertion_passed", &[("assertion", "back")]), 0.0);
        assert_eq!(v("edgesim_nodes_up", &[]), 4.0);
        assert_eq!(
            v("edgesim_workload_restarts_total", &[("workload", "sink")]),
            1.0
        );
        assert_eq!(
            e.type_of("edgesim_probe_rtt_seconds_bucket"),
            Some(expo::MetricType::Histogram)
        );

        let (status, _, _) = get(addr, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        drop(server);
        // The listener closes once the aborted task has been dropped by the runtime.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "server still accepting after drop");
    }
}
