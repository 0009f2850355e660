//! Probes: ping, TCP connect and HTTP GET, run from inside a node, and metric scrapes.
//!
//! Design:
//! - A probe runs in the engine's process but its sockets are opened by the node's
//!   [`SocketFactory`], so every packet leaves from the node's namespace and crosses the same
//!   links, partitions and impairments as the node's workloads.
//! - Attempts sit on a fixed grid `t0 + k·every` (a [`tokio::time::Interval`] with
//!   [`MissedTickBehavior::Skip`]): a late wake-up never shifts later attempts, and ticks missed
//!   while the runtime was busy are skipped rather than fired in a burst, which would inflate
//!   the success count of a window. Each attempt is its own task bounded by `probe.timeout`,
//!   so attempts overlap when the timeout is longer than the interval (a partition then shows
//!   as a run of failures, one per tick, not one long stall).
//! - A [`Sample`] records when its attempt began (offset from `t0`, the timeline's start),
//!   success, the round-trip time and the reason of a failure. Samples land in a shared
//!   [`ProbeLog`]; assertions and the report read them afterwards.
//! - RTTs are measured on the monotonic clock: for ping from the send to the reply's arrival
//!   in the receive task, for TCP the connect, for HTTP the time to the full response (connect
//!   included).
//!
//! Submodules: [`ping`] (raw-socket ICMP echo), [`net`] (TCP connect and HTTP GET from a
//! namespace), [`expo`] (Prometheus/OpenMetrics text parser), [`scrape`] (reading a workload's
//! metrics and selecting values).

pub mod expo;
pub mod net;
pub mod ping;
pub mod scrape;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::host::ns::SocketFactory;
use crate::metrics::RunMetrics;
use crate::scenario::plan::{Probe, ProbeKind};

/// The outcome of one probe attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When the attempt began, as an offset from the timeline's start.
    #[serde(serialize_with = "ser_secs")]
    pub t: Duration,
    pub ok: bool,
    /// Round-trip time of a successful attempt.
    #[serde(
        serialize_with = "ser_opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub rtt: Option<Duration>,
    /// Why the attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ping: the echo request's ICMP sequence number, to find the attempt in a capture or in
    /// linkem's decision log. Attempts that overlap may take their numbers in another order
    /// than they began (two attempts started together race for them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u16>,
}

/// What became of an attempt, as a report draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Ok,
    /// Nothing answered within the timeout: dropped on the way (a partition, loss, a node
    /// down).
    Lost,
    /// Something answered with a failure: refused, unreachable, a wrong HTTP status.
    Error,
}

impl Sample {
    /// Whether the attempt succeeded, got no answer, or got a failure back.
    pub fn attempt(&self) -> Attempt {
        match &self.error {
            _ if self.ok => Attempt::Ok,
            Some(e) if is_no_answer(e) => Attempt::Lost,
            _ => Attempt::Error,
        }
    }
}

/// The reason of an attempt that got no `what` within `timeout`; [`is_no_answer`] recognises
/// it (samples reach the report as text, from this process or a board's agent).
pub(crate) fn no_answer(what: &str, timeout: Duration) -> String {
    format!("no {what} within {}", crate::units::Dur(timeout))
}

/// Whether `error` is a reason [`no_answer`] wrote.
pub fn is_no_answer(error: &str) -> bool {
    error.starts_with("no ") && error.contains(" within ")
}

/// Durations in reports are seconds as a float: easy to plot, exact enough (ns resolution).
pub(crate) fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

pub(crate) fn ser_opt_secs<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// The samples of one probe, shared between the running probe and its readers.
#[derive(Debug, Clone, Default)]
pub struct ProbeLog(Arc<Mutex<Vec<Sample>>>);

impl ProbeLog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, s: Sample) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// A copy of the samples so far, ordered by start time (attempts finish out of order).
    pub fn samples(&self) -> Vec<Sample> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_by_key(|s| s.t);
        v
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A probe that could not start at all (as opposed to a failed attempt, which is a sample).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe {probe}: opening an ICMP socket in {ns}: {source}")]
    IcmpSocket {
        probe: String,
        ns: String,
        #[source]
        source: std::io::Error,
    },
}

/// What one attempt does; shared by the attempt tasks of a probe.
enum Attempter {
    Ping(ping::Pinger),
    Tcp(std::net::SocketAddrV4),
    Http {
        addr: std::net::SocketAddrV4,
        host: String,
        path: String,
        expect_status: Option<u16>,
    },
}

impl Attempter {
    /// Runs one attempt; a ping's also says its sequence number.
    async fn attempt(
        &self,
        sockets: &SocketFactory,
        timeout: Duration,
    ) -> (Result<Duration, String>, Option<u16>) {
        let res = match self {
            Attempter::Ping(p) => {
                let (seq, res) = p.ping_seq(timeout).await;
                return (res, Some(seq));
            }
            Attempter::Tcp(addr) => {
                let start = Instant::now();
                match tokio::time::timeout(timeout, net::connect(sockets, *addr)).await {
                    Ok(Ok(_stream)) => Ok(start.elapsed()),
                    Ok(Err(e)) => Err(error_chain(&e)),
                    Err(_) => Err(no_answer("connection", timeout)),
                }
            }
            Attempter::Http {
                addr,
                host,
                path,
                expect_status,
            } => {
                let start = Instant::now();
                match tokio::time::timeout(timeout, net::get(sockets, *addr, host, path)).await {
                    Ok(Ok(resp)) => {
                        let rtt = start.elapsed();
                        let code = resp.status.as_u16();
                        let ok = match expect_status {
                            Some(want) => code == *want,
                            None => resp.status.is_success(),
                        };
                        if ok {
                            Ok(rtt)
                        } else {
                            Err(match expect_status {
                                Some(want) => format!("status {code}, expected {want}"),
                                None => format!("status {code}"),
                            })
                        }
                    }
                    Ok(Err(e)) => Err(error_chain(&e)),
                    Err(_) => Err(no_answer("complete response", timeout)),
                }
            }
        };
        (res, None)
    }
}

/// `e: cause: cause` — hyper's errors hide the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Runs `probe` from the namespace behind `sockets`: one attempt every `probe.every` on the
/// grid `t0 + k·every`, starting at `t0`, for every tick before `t0 + until`. Each sample goes
/// to `out` (and to `metrics` when given) as its attempt finishes. Returns once the last
/// attempt has finished, at most `probe.timeout` after `until`.
///
/// Cancelling the returned future (dropping it) aborts the attempts in flight.
///
/// Guarantees: a failed attempt is a sample with `ok: false` and a reason, never an error.
/// Errors only when the probe cannot start (the ICMP socket cannot be opened).
pub async fn run(
    probe: &Probe,
    sockets: SocketFactory,
    t0: Instant,
    until: Duration,
    out: ProbeLog,
    metrics: Option<Arc<RunMetrics>>,
) -> Result<(), ProbeError> {
    let attempter = Arc::new(match &probe.kind {
        ProbeKind::Ping { addr, .. } => {
            Attempter::Ping(ping::Pinger::new(&sockets, *addr).map_err(|source| {
                ProbeError::IcmpSocket {
                    probe: probe.name.clone(),
                    ns: sockets.namespace().to_string(),
                    source,
                }
            })?)
        }
        ProbeKind::Tcp { addr, .. } => Attempter::Tcp(*addr),
        ProbeKind::Http {
            addr,
            host,
            path,
            expect_status,
            ..
        } => Attempter::Http {
            addr: *addr,
            host: host.clone(),
            path: path.clone(),
            expect_status: *expect_status,
        },
    });
    let every = probe.every.max(Duration::from_millis(1));
    let timeout = probe.timeout;
    let name: Arc<str> = probe.name.as_str().into();
    let mut ticks = tokio::time::interval_at(t0, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let end = t0 + until;
    let mut attempts = JoinSet::new();
    tracing::debug!(probe = %name, ns = sockets.namespace(), ?every, ?timeout, "probe started");
    loop {
        let tick = tokio::select! {
            tick = ticks.tick() => tick,
            // Reap finished attempts while waiting so the set does not grow for the whole run.
            Some(_) = attempts.join_next(), if !attempts.is_empty() => continue,
        };
        if tick >= end {
            break;
        }
        let (attempter, sockets, out, metrics, name) = (
            attempter.clone(),
            sockets.clone(),
            out.clone(),
            metrics.clone(),
            name.clone(),
        );
        attempts.spawn(async move {
            let started = Instant::now();
            let t = started.saturating_duration_since(t0);
            let (res, seq) = attempter.attempt(&sockets, timeout).await;
            let sample = match res {
                Ok(rtt) => Sample {
                    t,
                    ok: true,
                    rtt: Some(rtt),
                    error: None,
                    seq,
                },
                Err(e) => Sample {
                    t,
                    ok: false,
                    rtt: None,
                    error: Some(e),
                    seq,
                },
            };
            if let Some(m) = &metrics {
                m.probe_attempt(&name, sample.ok, sample.rtt);
            }
            tracing::trace!(probe = %name, t = ?sample.t, ok = sample.ok, rtt = ?sample.rtt, error = ?sample.error, "probe attempt");
            out.push(sample);
        });
    }
    while attempts.join_next().await.is_some() {}
    tracing::debug!(probe = %name, samples = out.len(), "probe finished");
    Ok(())
}

#[cfg(test)]
mod tests;
