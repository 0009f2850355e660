//! A fleet of agents, whatever carries their protocol: the controller's side of
//! [`super::agent`] for many nodes at once — each node's whole desired state pushed in
//! parallel, one heartbeat task renewing every lease, probes started on the nodes and their
//! samples collected, metrics read through the agents, and `bye` to all.
//!
//! The device target reaches its agents over SSH; the kind target's bring-your-own-cluster
//! mode over `kubectl exec`-style streams into a DaemonSet's pods. Both are byte streams, so a
//! fleet holds boxed ones ([`Conn`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::agent::{Desired, Reply, Request, WireBlock, WireProbe, WireSample};
use super::transport::AgentConn;
use crate::host::{HostError, Result};
use crate::scenario::Plan;

/// What node `n` drops for the nodes of `isolated` (node-down `isolate`, `poweroff`): an
/// isolated node drops everything arriving on it; every other node drops what an isolated
/// one sends it (so a node's traffic stops both ways without its own agent's help).
pub fn isolation_blocks(
    plan: &Plan,
    addrs: &[std::net::IpAddr],
    n: usize,
    isolated: impl IntoIterator<Item = usize>,
) -> Vec<WireBlock> {
    isolated
        .into_iter()
        .map(|m| {
            if m == n {
                WireBlock {
                    name: "node-down isolate".to_string(),
                    from: vec![],
                    to: vec![],
                }
            } else {
                WireBlock {
                    name: format!("node-down isolate {}", plan.nodes[m].name),
                    from: vec![ipnet::IpNet::from(addrs[m])],
                    to: vec![],
                }
            }
        })
        .collect()
}

/// An agent connection over any byte streams.
pub type Conn = AgentConn<Box<dyn AsyncWrite + Send + Unpin>, Box<dyn AsyncRead + Send + Unpin>>;

/// One agent: its name (for messages) and its connection.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub conn: Arc<Mutex<Conn>>,
}

/// A reply that is not `ok`, or no reply, as an error naming the agent.
pub fn check(reply: std::io::Result<Reply>, name: &str, what: &'static str) -> Result<Reply> {
    match reply {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(HostError::other(what, name, r.error.unwrap_or_default())),
        Err(e) => Err(HostError::other(what, name, e.to_string())),
    }
}

/// The agents of a run, one per node (in the plan's order).
pub struct Fleet {
    pub members: Vec<Member>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Per plan probe: its node and its index among that node's probes.
    probe_at: Vec<(usize, usize)>,
}

impl Fleet {
    pub fn new(members: Vec<Member>) -> Fleet {
        Fleet {
            members,
            heartbeat: None,
            probe_at: Vec::new(),
        }
    }

    /// Sends every node its whole desired state (`desired[n]` to node `n`), in parallel; each
    /// agent's answer, in the nodes' order.
    pub async fn push(&self, desired: Vec<Desired>) -> Vec<Result<Reply>> {
        let mut set = tokio::task::JoinSet::new();
        for (n, (m, d)) in self.members.iter().zip(desired).enumerate() {
            let m = m.clone();
            set.spawn(async move {
                let r = m.conn.lock().await.call(Request::Apply(d)).await;
                (n, check(r, &m.name, "applying faults on"))
            });
        }
        let mut out: Vec<Result<Reply>> = (0..self.members.len())
            .map(|n| {
                Err(HostError::other(
                    "applying faults on",
                    self.members[n].name.clone(),
                    "no answer",
                ))
            })
            .collect();
        while let Some(r) = set.join_next().await {
            if let Ok((n, r)) = r {
                out[n] = r;
            }
        }
        out
    }

    /// [`Fleet::push`], its first error.
    pub async fn push_all(&self, desired: Vec<Desired>) -> Result<()> {
        self.push(desired)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Stops renewing the leases (the agents revert once theirs runs out).
    pub fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }

    /// Renews every agent's lease every `every` (a third of the shortest lease is right),
    /// until the fleet says bye.
    pub fn start_heartbeat(&mut self, every: Duration) {
        let members = self.members.clone();
        self.heartbeat = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                for m in &members {
                    if let Err(e) = m.conn.lock().await.call(Request::Heartbeat).await {
                        tracing::warn!(agent = %m.name, "heartbeat: {e}");
                    }
                }
            }
        }));
    }

    /// Starts the plan's probes on their nodes' agents, aimed at `real(addr)` for each
    /// target's scenario address, on a grid starting at `t0`.
    pub async fn start_probes(
        &mut self,
        plan: &Plan,
        real: impl Fn(Ipv4Addr) -> Ipv4Addr,
        t0: tokio::time::Instant,
    ) -> Result<()> {
        let mut per: Vec<Vec<WireProbe>> = vec![Vec::new(); self.members.len()];
        self.probe_at.clear();
        for p in &plan.probes {
            let p = p.with_addrs(&real);
            self.probe_at.push((p.from, per[p.from].len()));
            per[p.from].push(WireProbe::of(&p));
        }
        let start_in = t0.saturating_duration_since(tokio::time::Instant::now());
        for (n, probes) in per.into_iter().enumerate() {
            if probes.is_empty() {
                continue;
            }
            let run = super::agent::ProbeRun {
                probes,
                start_in_ms: start_in.as_millis() as u64,
                duration_ms: plan.duration.as_millis() as u64,
            };
            let m = &self.members[n];
            let r = m.conn.lock().await.call(Request::Probes(run)).await;
            check(r, &m.name, "starting probes on")?;
        }
        Ok(())
    }

    /// The probes' samples, into `logs` (one per plan probe); problems as messages.
    pub async fn collect_probes(&mut self, logs: &[crate::probe::ProbeLog]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut got: BTreeMap<usize, Vec<Vec<WireSample>>> = BTreeMap::new();
        for &(n, _) in &self.probe_at {
            if got.contains_key(&n) {
                continue;
            }
            let m = &self.members[n];
            let r = m.conn.lock().await.call(Request::ProbeResults).await;
            match check(r, &m.name, "reading probe results from") {
                Ok(Reply {
                    samples: Some(s), ..
                }) => {
                    got.insert(n, s);
                }
                Ok(_) => errors.push(format!("{}: no probe results", m.name)),
                Err(e) => errors.push(e.to_string()),
            }
        }
        for (pi, &(n, k)) in self.probe_at.iter().enumerate() {
            if let (Some(log), Some(samples)) = (logs.get(pi), got.get(&n).and_then(|v| v.get(k))) {
                for s in samples {
                    log.push(s.sample());
                }
            }
        }
        errors
    }

    /// Reads workloads' metrics through the agents.
    pub fn fetcher(&self) -> Fetcher {
        Fetcher {
            members: self.members.clone(),
        }
    }

    /// Every agent reverts what it holds and exits; what could not be reverted.
    pub async fn bye(&mut self) -> Vec<String> {
        self.stop_heartbeat();
        let mut set = tokio::task::JoinSet::new();
        for m in self.members.drain(..) {
            set.spawn(async move {
                let r = m.conn.lock().await.call(Request::Bye).await;
                match check(r, &m.name, "reverting on") {
                    Ok(_) => None,
                    Err(e) => Some(e.to_string()),
                }
            });
        }
        let mut errors = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Some(e)) => errors.push(e),
                Ok(None) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }
}

/// Reads workloads' metrics through a fleet's agents (an HTTP GET from the node itself).
#[derive(Clone)]
pub struct Fetcher {
    members: Vec<Member>,
}

impl Fetcher {
    /// The body of `http://127.0.0.1:<port><path>` on node `node`, read by its agent.
    pub async fn fetch(
        &self,
        node: usize,
        port: u16,
        path: &str,
    ) -> std::result::Result<String, String> {
        let m = self.members.get(node).ok_or("no such node")?;
        let r = m
            .conn
            .lock()
            .await
            .call(Request::Fetch {
                addr: std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
                path: path.to_string(),
                timeout_ms: 5000,
            })
            .await
            .map_err(|e| format!("{}: {e}", m.name))?;
        match (r.ok, r.body) {
            (true, Some(b)) => Ok(b),
            _ => Err(format!("{}: {}", m.name, r.error.unwrap_or_default())),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}
