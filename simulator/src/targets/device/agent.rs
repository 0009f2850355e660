//! `edgesim agent`: the piece of edgesim that runs on a board and applies its faults, with a
//! lease.
//!
//! # Protocol
//!
//! The controller starts `edgesim agent` on the board over SSH and speaks to it in lines of
//! JSON on the session's stdin and stdout (stderr carries the agent's log). Each request is
//! `{"id": N, "op": …}` and gets one reply `{"id": N, "ok": true|false, …}`:
//!
//! - `hello`: the board's [`Facts`] (architecture, cores, memory, kernel, qdiscs, nftables,
//!   cgroups, privileges, interfaces, the management connection) and what this agent reverted
//!   at start-up on behalf of one that died;
//! - `apply` with a [`Desired`] state: the board's own traffic is made to match it exactly —
//!   one-way blocks (partitions) and loss with nftables (table `inet edgesim_agent`, hook
//!   input: what a partition or a lossy link takes is dropped where it arrives, so the sender
//!   sees silent loss, as on a real cut, never an `EPERM` from its own firewall), rate and
//!   delay per destination with tc on the board's interface (an htb class per peer, netem
//!   under it where delay is asked for; netem's own loss is silent too). Each apply replaces the
//!   previous state; tc classes that did not change are left alone (a netem queue in flight
//!   is not flushed by an unrelated partition);
//!   With `cell` set (boards whose kernel lacks sch_netem or sch_htb, and `impairment:
//!   userspace`), the board's workloads live in a [linkem cell](super::cell) and linkem carries
//!   rate, delay and netem's impairments instead of tc; probes, `connect` and `fetch` then
//!   run from inside the cell, where the workloads are;
//! - `heartbeat`: nothing but a renewal of the lease (any request renews it);
//! - `revert`: everything back as it was; `bye`: revert and exit;
//! - `probes` with a [`ProbeRun`]: ping, TCP and HTTP probes run from the board itself by the
//!   same probe code as on every target, on a grid that starts `startInMs` from now (the
//!   controller's timeline start, less the round trip that carried the request); they change
//!   nothing on the board and end with their duration or the session; `probe-results`: every
//!   sample so far, per probe (offsets from the grid's start);
//! - `connect` (a TCP connection from the board: a workload's readiness) and `fetch` (an HTTP
//!   GET from the board: a workload's metrics, in the reply's `body`).
//!
//! Unprompted, the agent may write one event line, `{"event": "lease-expired", …}`, before
//! it exits.
//!
//! # The lease
//!
//! While any fault is in force, the agent expects a request at least every `leaseMs` (from
//! the last `apply`). When none comes — the controller was killed, the laptop closed, or the
//! control path cut by the very partition under test — it reverts everything and exits
//! (code 3): a board is never left impaired by a controller that is gone. When the SSH
//! session ends (stdin closes), it reverts at once and exits 0.
//!
//! What is in force is also written to a state file ([`default_state`], on tmpfs: rules do
//! not survive a reboot either) before anything is installed; an agent that starts and finds
//! one left by an agent that died (SIGKILL, OOM) reverts that first, and says so in `hello`.
//!
//! The management connection — the SSH connection the agent speaks over (`SSH_CONNECTION`)
//! — is accepted ahead of every block unless `exemptManagement` is false, so a partition
//! that isolates the board does not cut its controller off.
//!
//! The agent needs CAP_NET_ADMIN (and, for a cell, CAP_SYS_ADMIN and CAP_NET_RAW) and nothing
//! on the board but the kernel: no `tc`, no `nft`,
//! no iproute2 data files (netem's jitter tables are computed where they are not installed).
//! It is the edgesim binary itself, built static for musl (aarch64 and x86_64).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::cell::{self, Cell, CellState};
use super::scope::{self, Manager, Scope};
use crate::faults::shaping::{loss_in_firewall, netem_of};
use crate::host::cgroup::{Cgroups, NodeCgroup, NodeLimits};
use crate::host::nft::{self, Firewall, Flow, Layout};
use crate::host::tc::{self, ClassId, Htb, HtbClass, Netem, Parent, Qdisc, U32Match};
use crate::host::{HostError, Result, link, ns};
use crate::scenario::plan::LinkParams;

/// The agent's nftables table on the board.
pub const TABLE: &str = "edgesim_agent";
/// Where the agent records what is in force (tmpfs on systemd boards): one file per network
/// namespace in this folder ([`default_state`]).
pub const STATE_DIR: &str = "/run/edgesim";

/// The state file of an agent that is given none: `agent-net<inode>.state` in [`STATE_DIR`]
/// (the folder the prepare playbook gives the agent's user; no folder of its own, which a root
/// agent would leave root's), named by the network namespace the agent serves — stable for a board's
/// whole boot (an agent started after a crash finds its predecessor's), and one per
/// namespace where boards share a filesystem (the tests' namespace boards), so no agent takes
/// another's state for a dead predecessor's.
pub fn default_state() -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata("/proc/self/ns/net") {
        Ok(m) => PathBuf::from(format!("{STATE_DIR}/agent-net{}.state", m.ino())),
        Err(_) => PathBuf::from(format!("{STATE_DIR}/agent.state")),
    }
}

/// The lease when the controller names none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Version of the line protocol; `hello` reports it. 2: `probes`, `probe-results`,
/// `incoming`. 3: `cell` (a linkem cell for the board's workloads).
pub const PROTOCOL: u32 = 3;
/// Exit code of an agent whose lease expired.
pub const EXIT_LEASE_EXPIRED: i32 = 3;
/// Rates above this are treated as unlimited by a delay-only class.
const UNLIMITED_BPS: u64 = 10_000_000_000;

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// What the controller asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
// `Apply` carries a board's whole desired state and dwarfs the other requests; one request
// is in flight per agent, so boxing it would only cost clarity.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Hello,
    Heartbeat,
    Apply(Desired),
    Revert,
    Bye,
    /// Start probes from the board itself (replacing any that run), their grid starting
    /// `startInMs` from now and ending `durationMs` later.
    Probes(ProbeRun),
    /// The samples of the probes so far (all of them, each time).
    ProbeResults,
    /// Whether a TCP connection from the board to `addr` opens within `timeoutMs` (a
    /// workload's readiness).
    #[serde(rename_all = "camelCase")]
    Connect {
        addr: std::net::SocketAddrV4,
        timeout_ms: u64,
    },
    /// An HTTP GET from the board (a workload's metrics): the reply's `body`.
    #[serde(rename_all = "camelCase")]
    Fetch {
        addr: std::net::SocketAddrV4,
        path: String,
        timeout_ms: u64,
    },
}

/// Probes for the agent to run from the board, with the same probe code as the other
/// targets (so every packet leaves the board's own network stack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRun {
    pub probes: Vec<WireProbe>,
    pub start_in_ms: u64,
    pub duration_ms: u64,
}

/// One probe on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireProbe {
    pub name: String,
    #[serde(flatten)]
    pub kind: WireProbeKind,
    pub every_ms: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum WireProbeKind {
    Ping {
        addr: std::net::Ipv4Addr,
    },
    Tcp {
        addr: std::net::SocketAddrV4,
    },
    #[serde(rename_all = "camelCase")]
    Http {
        addr: std::net::SocketAddrV4,
        host: String,
        path: String,
        expect_status: Option<u16>,
    },
}

impl WireProbe {
    /// A plan's probe as the agent runs it.
    pub fn of(p: &crate::scenario::plan::Probe) -> WireProbe {
        use crate::scenario::plan::ProbeKind as K;
        WireProbe {
            name: p.name.clone(),
            kind: match &p.kind {
                K::Ping { addr, .. } => WireProbeKind::Ping { addr: *addr },
                K::Tcp { addr, .. } => WireProbeKind::Tcp { addr: *addr },
                K::Http {
                    addr,
                    host,
                    path,
                    expect_status,
                    ..
                } => WireProbeKind::Http {
                    addr: *addr,
                    host: host.clone(),
                    path: path.clone(),
                    expect_status: *expect_status,
                },
            },
            every_ms: p.every.as_millis() as u64,
            timeout_ms: p.timeout.as_millis() as u64,
        }
    }

    fn to_plan(&self) -> crate::scenario::plan::Probe {
        use crate::scenario::plan::ProbeKind as K;
        crate::scenario::plan::Probe {
            name: self.name.clone(),
            from: 0,
            kind: match &self.kind {
                WireProbeKind::Ping { addr } => K::Ping {
                    target: addr.to_string(),
                    addr: *addr,
                },
                WireProbeKind::Tcp { addr } => K::Tcp {
                    target: addr.to_string(),
                    addr: *addr,
                },
                WireProbeKind::Http {
                    addr,
                    host,
                    path,
                    expect_status,
                } => K::Http {
                    url: format!("http://{host}{path}"),
                    target: addr.to_string(),
                    addr: *addr,
                    path: path.clone(),
                    host: host.clone(),
                    expect_status: *expect_status,
                },
            },
            every: Duration::from_millis(self.every_ms),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

/// One probe attempt on the wire: microseconds from the probes' start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSample {
    pub t_us: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ping: the echo's ICMP sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u16>,
}

impl WireSample {
    pub fn sample(&self) -> crate::probe::Sample {
        crate::probe::Sample {
            t: Duration::from_micros(self.t_us),
            ok: self.ok,
            rtt: self.rtt_us.map(Duration::from_micros),
            error: self.error.clone(),
            seq: self.seq,
        }
    }
}

/// The probes an agent runs (stopped when it is dropped, with the session).
#[derive(Default)]
struct Probing {
    sockets: Option<crate::host::ns::SocketFactory>,
    /// Inside a cell: the board's address, which the cell reaches its own workloads by as
    /// 127.0.0.1 (the board's address there is the board's, not the cell's).
    cell: Option<Ipv4Addr>,
    logs: Vec<crate::probe::ProbeLog>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Probing {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Probing {
    fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    fn start(&mut self, run: &ProbeRun) -> std::result::Result<(), String> {
        self.stop();
        let sockets = self.sockets()?;
        let t0 = tokio::time::Instant::now() + Duration::from_millis(run.start_in_ms);
        let until = Duration::from_millis(run.duration_ms);
        self.logs = run
            .probes
            .iter()
            .map(|_| crate::probe::ProbeLog::new())
            .collect();
        for (p, log) in run.probes.iter().zip(&self.logs) {
            let (p, log, sockets) = (p.to_plan(), log.clone(), sockets.clone());
            self.tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::probe::run(&p, sockets, t0, until, log, None).await {
                    tracing::warn!("{e}");
                }
            }));
        }
        Ok(())
    }

    /// Probes, connections and fetches from now on run in `board`'s cell, if it has one, or
    /// from the board's own namespace.
    fn follow(&mut self, board: &Board) -> std::result::Result<(), String> {
        let now = board.cell.as_ref().map(|c| c.board);
        if now != self.cell {
            self.stop();
            self.sockets = match &board.cell {
                Some(c) => Some(c.sockets().map_err(|e| e.to_string())?),
                None => None,
            };
            self.cell = now;
        }
        Ok(())
    }

    /// `addr` as the probes' namespace reaches it.
    fn local(&self, addr: std::net::SocketAddrV4) -> std::net::SocketAddrV4 {
        match self.cell {
            Some(b) if *addr.ip() == b => {
                std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, addr.port())
            }
            _ => addr,
        }
    }

    fn sockets(&mut self) -> std::result::Result<crate::host::ns::SocketFactory, String> {
        if self.sockets.is_none() {
            let fd = std::fs::File::open("/proc/self/ns/net")
                .map_err(|e| format!("opening this board's network namespace: {e}"))?;
            self.sockets = Some(
                crate::host::ns::SocketFactory::start(fd.into(), "board")
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(self.sockets.clone().unwrap_or_else(|| unreachable!()))
    }

    async fn connect(
        &mut self,
        addr: std::net::SocketAddrV4,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let f = self.sockets()?;
        let addr = self.local(addr);
        match tokio::time::timeout(timeout, crate::probe::net::connect(&f, addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no connection to {addr} within {timeout:?}")),
        }
    }

    async fn fetch(
        &mut self,
        addr: std::net::SocketAddrV4,
        path: &str,
        timeout: Duration,
    ) -> std::result::Result<String, String> {
        let f = self.sockets()?;
        let host = addr.to_string();
        let addr = self.local(addr);
        match tokio::time::timeout(timeout, crate::probe::net::get(&f, addr, &host, path)).await {
            Ok(Ok(r)) if r.status.is_success() => Ok(String::from_utf8_lossy(&r.body).into_owned()),
            Ok(Ok(r)) => Err(format!("status {}", r.status.as_u16())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no response from {addr}{path} within {timeout:?}")),
        }
    }

    fn results(&self) -> Vec<Vec<WireSample>> {
        self.logs
            .iter()
            .map(|l| {
                l.samples()
                    .into_iter()
                    .map(|s| WireSample {
                        t_us: s.t.as_micros() as u64,
                        ok: s.ok,
                        rtt_us: s.rtt.map(|r| r.as_micros() as u64),
                        error: s.error,
                        seq: s.seq,
                    })
                    .collect()
            })
            .collect()
    }
}

/// The faults a board's own traffic should be under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Desired {
    /// The board's interface toward the lab (where rate and delay are shaped).
    pub iface: String,
    /// Revert everything when no request arrives for this long (milliseconds).
    pub lease_ms: u64,
    /// Rate and delay (netem: also loss, duplication, reordering and corruption beside a
    /// delay) of this board's traffic to each peer. A cut, or loss alone, belongs in
    /// `incoming` on the peer's agent: an apply that puts one here is refused.
    pub peers: Vec<Peer>,
    /// Traffic arriving from each peer: a cut drops all of it, loss alone drops that share
    /// (nftables, at input). Other parameters here are refused: they are shaped by the sender.
    pub incoming: Vec<Peer>,
    /// One-way blocks (partitions), by address, dropped on arrival: a block from A to B
    /// takes effect on the agent whose board has an address in `to` (or any, where `to` is
    /// empty).
    pub blocks: Vec<WireBlock>,
    /// Keep the management SSH connection out of every block.
    pub exempt_management: bool,
    /// More connections kept out of every block (a cluster node's kubelet ↔ API server
    /// traffic, which carries the agent's own session when it runs in a pod). Port 0 stands
    /// for any port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<Flow>,
    /// Seed of netem's generator (per peer, mixed with the peer's address).
    pub seed: u64,
    /// Run the board's workloads in a linkem cell behind this address (the board's own on
    /// the lab network): linkem, not tc, then carries `peers`, and `incoming` and `blocks`
    /// are dropped in the cell's relay as well. `None` removes a cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<Ipv4Addr>,
    /// The cgroup the board's workloads run in: on a board whose init is systemd, the
    /// transient scope `edgesim-<run>-<node>.scope` in `edgesim.slice` ([scope]) of the system
    /// manager, or of the agent user's own manager where the agent is not root; elsewhere (or
    /// where systemd-run fails, for root) `edgesim/<run>/<node>` as named here, relative to the
    /// hierarchies' roots, v2 or v1, made by the agent. On revert whatever still runs in it is
    /// killed and it is removed. `None` removes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The limits of that cgroup (the node's profile), when it is a systemd scope: its unit
    /// properties (`CPUQuota=`, `MemoryMax=`, `MemorySwapMax=0`, `TasksMax=`), read back once
    /// the scope runs. Set when the cgroup is made; an agent cgroup does not take them (yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<NodeLimits>,
    /// That cgroup frozen (`node-down` with `mode: freeze`: a hung board).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

impl Default for Desired {
    fn default() -> Self {
        Desired {
            iface: String::new(),
            lease_ms: DEFAULT_LEASE.as_millis() as u64,
            peers: Vec::new(),
            incoming: Vec::new(),
            blocks: Vec::new(),
            exempt_management: true,
            exempt: Vec::new(),
            seed: 0,
            cell: None,
            cgroup: None,
            limits: None,
            frozen: false,
        }
    }
}

impl Desired {
    /// Refuses what this agent would apply wrongly, before anything changes: cuts and plain
    /// loss on the sending side (they belong to the receiver's `incoming`), and shaping on
    /// the receiving side (it belongs to the sender's `peers`).
    pub fn validate(&self) -> std::result::Result<(), String> {
        for p in &self.peers {
            if p.params.cut || loss_in_firewall(&p.params) {
                return Err(format!(
                    "peers[{}]: a cut or loss alone is dropped by the receiver: put it in the \
                     `incoming` of the agent on {}",
                    p.addr, p.addr
                ));
            }
        }
        for p in &self.incoming {
            let rest = LinkParams {
                cut: false,
                loss: 0.0,
                ..p.params
            };
            if rest != LinkParams::default() {
                return Err(format!(
                    "incoming[{}]: only `cut` and `loss` are applied on arrival; rate and delay \
                     are shaped by the sender (its `peers`)",
                    p.addr
                ));
            }
        }
        Ok(())
    }
}

/// This board's traffic to `addr` (in [`Desired::peers`]) or from it (in
/// [`Desired::incoming`]) gets `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub addr: IpAddr,
    pub params: LinkParams,
}

/// Packets from any of `from` to any of `to` are dropped (empty: any address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlock {
    pub name: String,
    pub from: Vec<IpNet>,
    pub to: Vec<IpNet>,
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
    /// After `apply`: how long the kernel work took, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_us: Option<u64>,
    /// After `revert` or `bye`: what was undone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverted: Vec<String>,
    /// After `probe-results`: each probe's samples, in the order of `probes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Vec<WireSample>>>,
    /// After `fetch`: the response body (UTF-8, lossy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// After `apply`: where the workloads run (`systemd scope edgesim-….scope …` or `agent
    /// cgroup edgesim/…`), when they have a cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<String>,
}

/// A line the agent writes unasked, just before it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event: String,
    /// How long no request had come.
    pub silent_ms: u64,
    pub reverted: Vec<String>,
    pub errors: Vec<String>,
}

/// What the board is and can do, for the controller's checks before a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    pub protocol: u32,
    pub version: String,
    /// `arm64` or `amd64` (profile spelling).
    pub arch: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub kernel: String,
    pub euid: u32,
    pub cap_net_admin: bool,
    /// CAP_SYS_ADMIN and CAP_NET_RAW: what a cell needs beside CAP_NET_ADMIN.
    #[serde(default)]
    pub cap_sys_admin: bool,
    #[serde(default)]
    pub cap_net_raw: bool,
    /// Where a cell of this agent is pinned (workloads enter it there).
    #[serde(default)]
    pub cell_netns: PathBuf,
    pub netem: bool,
    pub tbf: bool,
    pub htb: bool,
    /// Why nftables cannot be used; `None` when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nftables_error: Option<String>,
    /// `v2: cpu memory pids …`, `v1`, or `none`.
    pub cgroup: String,
    /// Why the agent cannot make a cgroup for the workloads; `None` when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_error: Option<String>,
    /// `systemd 252 (…)` where systemd is the board's init (with the v2 hierarchy): the
    /// workloads then run in a systemd scope; `None`: in a cgroup the agent makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<String>,
    pub interfaces: Vec<String>,
    /// The IPv4 addresses of those interfaces (`[interface, address]`), so a controller that
    /// knows the board by address finds the interface to shape.
    #[serde(default)]
    pub addrs: Vec<(String, Ipv4Addr)>,
    /// The SSH connection the agent speaks over, as seen from the board.
    pub management: Option<Flow>,
    /// Reverted at start-up, left by an agent that died.
    pub recovered: Vec<String>,
}

/// What the state file records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    pid: u32,
    table: String,
    /// Interface whose root qdisc the agent replaced.
    qdisc_on: Option<String>,
    /// The cell, if one was made.
    #[serde(default)]
    cell: Option<CellState>,
    /// The workloads' cgroup, if one was made.
    #[serde(default)]
    cgroup: Option<String>,
    /// The workloads' systemd scope (unit name), if one was (or is being) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// Whose manager that scope is in: a user's (its uid), or the system's (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope_uid: Option<u32>,
}

/// What tc holds for one peer.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    minor: u16,
    rate: u64,
    netem: Option<Netem>,
}

/// The board side: the firewall, tc on one interface, and the state file.
pub struct Board {
    fw: Firewall,
    nl: rtnetlink::Handle,
    state_path: PathBuf,
    management: Option<Flow>,
    /// Interface (name, index) with the htb root, and the classes under it by peer.
    shaped: Option<(String, u32)>,
    shapes: IndexMap<IpAddr, Shape>,
    next_minor: u16,
    active: bool,
    recovered: Vec<String>,
    cell: Option<Cell>,
    /// The workloads' cgroup, and whether it is frozen.
    cgroup: Option<(Cgroups, NodeCgroup)>,
    /// Or their systemd scope.
    scope: Option<Scope>,
    frozen: bool,
    /// `systemd …` where systemd is the board's init ([`scope::detect`]).
    systemd: Option<String>,
    /// The systemd manager the workloads' scope would be in, or why there is none.
    manager: std::result::Result<Manager, String>,
}

/// The management connection from `SSH_CONNECTION` ("client port server port").
pub fn management_flow(ssh_connection: Option<&str>) -> Option<Flow> {
    let f: Vec<&str> = ssh_connection?.split_whitespace().collect();
    let [cip, cport, sip, sport] = f.as_slice() else {
        return None;
    };
    let remote = SocketAddr::new(cip.parse().ok()?, cport.parse().ok()?);
    let local = SocketAddr::new(sip.parse().ok()?, sport.parse().ok()?);
    (remote.is_ipv4() == local.is_ipv4()).then_some(Flow { local, remote })
}

fn write_state(path: &Path, st: &State) -> Result<()> {
    let io = |e| HostError::io("writing the agent state", path.display().to_string(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = serde_json::to_vec(st)
        .map_err(|e| HostError::other("encoding", "the agent state", e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Board {
    /// Opens the board's netlink sockets (its own namespace) and reverts what a dead agent
    /// left according to `state_path`.
    pub async fn open(state_path: &Path, management: Option<Flow>) -> Result<Board> {
        let fd = ns::current()?;
        let socks = ns::netlink_sockets(&[(&fd, "board")])?;
        let nl = ns::handle_from_socket(socks.into_iter().next().ok_or_else(|| {
            HostError::other("opening a netlink socket on", "the board", "no socket")
        })?);
        let fw = Firewall::with_layout(ns::current()?, "board", TABLE, Layout::Host)?;
        let mut b = Board {
            fw,
            nl,
            state_path: state_path.to_path_buf(),
            management,
            shaped: None,
            shapes: IndexMap::new(),
            next_minor: 0x100,
            active: false,
            recovered: Vec::new(),
            cell: None,
            cgroup: None,
            scope: None,
            frozen: false,
            systemd: None,
            manager: Err(String::new()),
        };
        b.systemd = scope::detect();
        b.manager = match &b.systemd {
            Some(_) => Manager::current(),
            None => Err("the board's init is not systemd (with cgroup v2 and systemd-run)".into()),
        };
        b.recover().await?;
        Ok(b)
    }

    async fn recover(&mut self) -> Result<()> {
        let text = match std::fs::read(&self.state_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(HostError::io(
                    "reading the agent state",
                    self.state_path.display().to_string(),
                    e,
                ));
            }
        };
        let st: Option<State> = serde_json::from_slice(&text).ok();
        let table = st.as_ref().map_or(TABLE, |s| s.table.as_str()).to_string();
        let fw = Firewall::with_layout(ns::current()?, "board", &table, Layout::Host)?;
        fw.delete()?;
        let pid = st.as_ref().map_or(0, |s| s.pid);
        self.recovered.push(format!(
            "nftables table inet {table} (left by agent pid {pid})"
        ));
        if let Some(unit) = st.as_ref().and_then(|s| s.scope.as_deref()) {
            let uid = st.as_ref().and_then(|s| s.scope_uid).unwrap_or(0);
            match &self.manager {
                Ok(m) if m.uid() == uid => scope::stop(m, unit)?,
                // This user's manager is not running: its units went with it.
                Err(why) if uid != 0 && uid == nix::unistd::geteuid().as_raw() => {
                    tracing::warn!(unit, "{why}: nothing of the scope can be left");
                }
                _ => {
                    return Err(HostError::other(
                        "recovering",
                        format!("systemd scope {unit}, left by an agent that died"),
                        format!(
                            "it is in the systemd manager of uid {uid}, which this agent (uid {}) cannot reach: start the agent as that user once, and it stops the scope",
                            nix::unistd::geteuid()
                        ),
                    ));
                }
            }
            self.recovered
                .push(format!("systemd scope {unit} and what ran in it"));
        }
        if let Some(rel) = st.as_ref().and_then(|s| s.cgroup.as_deref())
            && Cgroups::detect()?.open(rel)?.exists()
        {
            remove_cgroup(&Cgroups::detect()?, rel)?;
            self.recovered
                .push(format!("cgroup {rel} and what ran in it"));
        }
        if let Some(c) = st.as_ref().and_then(|s| s.cell.as_ref()) {
            let (done, errors) = cell::remove(&self.nl, c).await;
            if let Some(e) = errors.into_iter().next() {
                return Err(HostError::other(
                    "removing",
                    "a cell left by an agent that died",
                    e,
                ));
            }
            self.recovered.extend(done);
        }
        if let Some(iface) = st.and_then(|s| s.qdisc_on)
            && let Ok(idx) = link::index_of(&self.nl, &iface).await
        {
            tc::qdisc_delete(&self.nl, idx, Parent::Root).await?;
            self.recovered.push(format!("root qdisc on {iface}"));
        }
        self.remove_state()?;
        Ok(())
    }

    fn remove_state(&self) -> Result<()> {
        match std::fs::remove_file(&self.state_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io(
                "removing the agent state",
                self.state_path.display().to_string(),
                e,
            )),
        }
    }

    /// Whether any fault is in force.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The board's facts.
    pub async fn facts(&self) -> Facts {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = nix::unistd::geteuid().is_root();
        let mut has = [false; 3];
        for (i, kind) in ["netem", "tbf", "htb"].into_iter().enumerate() {
            // Root probes in a scratch namespace; otherwise the module files tell.
            has[i] = if root && let Ok(v) = tc::kernel_has_qdisc(kind).await {
                v
            } else {
                module_on_disk(&format!("sch_{kind}"), &release)
            };
        }
        let [netem, tbf, htb] = has;
        // Adding and deleting a scratch table proves both nf_tables and the privilege.
        let nftables = ns::current()
            .and_then(|fd| Firewall::with_layout(fd, "board", "edgesim_probe", Layout::Host))
            .and_then(|f| f.delete())
            .err()
            .map(|e| e.to_string());
        self.facts_with(release, netem, tbf, htb, nftables).await
    }

    async fn facts_with(
        &self,
        kernel: String,
        netem: bool,
        tbf: bool,
        htb: bool,
        nftables_error: Option<String>,
    ) -> Facts {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let memory_bytes = crate::profile::calibrate::mem_total().unwrap_or(0);
        let cgroup = match std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
            Ok(c) => format!("v2: {}", c.trim()),
            Err(_) if Path::new("/sys/fs/cgroup/cpu").exists() => "v1".to_string(),
            Err(_) => "none".to_string(),
        };
        let arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            "x86_64" => "amd64",
            other => other,
        };
        Facts {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            arch: arch.to_string(),
            cores: crate::profile::calibrate::online_cpus(),
            memory_bytes,
            kernel,
            euid: nix::unistd::geteuid().as_raw(),
            cap_net_admin: cap_eff & (1 << 12) != 0,
            cap_sys_admin: cap_eff & (1 << 21) != 0,
            cap_net_raw: cap_eff & (1 << 13) != 0,
            cell_netns: cell::netns_path(&self.state_path),
            netem,
            tbf,
            htb,
            nftables_error,
            cgroup,
            cgroup_error: if nix::unistd::geteuid().is_root() {
                Cgroups::detect().err().map(|e| e.to_string())
            } else {
                self.manager.as_ref().err().map(|why| {
                    format!(
                        "the agent is not root, and a non-root agent gets a cgroup only from its user's systemd manager: {why}"
                    )
                })
            },
            systemd: self.systemd.clone(),
            interfaces: link::names(&self.nl).await.unwrap_or_default(),
            addrs: link::ipv4_addrs(&self.nl).await.unwrap_or_default(),
            management: self.management,
            recovered: self.recovered.clone(),
        }
    }

    /// Makes the board's traffic match `d`.
    pub async fn apply(&mut self, d: &Desired) -> Result<()> {
        d.validate().map_err(|detail| HostError::Other {
            op: "applying",
            object: "the desired state".into(),
            detail,
        })?;
        // In a cell linkem shapes what the workloads send; tc is left alone.
        let tc_d = match d.cell {
            Some(_) => Desired {
                peers: Vec::new(),
                ..d.clone()
            },
            None => d.clone(),
        };
        let d_tc = &tc_d;
        // Recorded before anything is installed: a crash half-way is recovered too.
        let wants_tc = d_tc
            .peers
            .iter()
            .any(|p| p.params.rate.is_some() || p.params.needs_netem());
        if wants_tc {
            // An interface that is not there is refused before anything changes.
            link::index_of(&self.nl, &d.iface).await?;
        }
        let qdisc_on = if wants_tc || self.shaped.is_some() {
            Some(d.iface.clone())
        } else {
            None
        };
        let cell_state = match (d.cell, &self.cell) {
            (Some(a), Some(c)) if c.board == a => Some(c.state.clone()),
            (Some(_), _) => Some(CellState {
                netns: cell::netns_path(&self.state_path),
                forward_was: match &self.cell {
                    Some(c) => c.state.forward_was.clone(),
                    None => cell::forward_now()?,
                },
            }),
            (None, Some(c)) => Some(c.state.clone()),
            (None, None) => None,
        };
        write_state(
            &self.state_path,
            &State {
                pid: std::process::id(),
                table: TABLE.to_string(),
                qdisc_on,
                cell: cell_state.clone(),
                cgroup: d.cgroup.clone().or_else(|| {
                    self.cgroup
                        .as_ref()
                        .map(|(_, c)| c.rel().display().to_string())
                }),
                // Recorded before systemd-run: a crash while it starts is recovered too.
                scope: self.scope.as_ref().map(|s| s.unit.clone()).or_else(|| {
                    d.cgroup
                        .as_deref()
                        .filter(|_| self.manager.is_ok())
                        .map(scope::unit_of)
                }),
                scope_uid: self
                    .manager
                    .as_ref()
                    .ok()
                    .map(Manager::uid)
                    .filter(|u| *u != 0),
            },
        )?;
        self.active = true;
        // A cell for another address (or none wanted): the old one goes first.
        if let Some(c) = self.cell.take_if(|c| d.cell != Some(c.board)) {
            self.fw.apply(&self.ruleset(d))?;
            let (_, errors) = c.destroy(&self.nl).await;
            if let Some(e) = errors.into_iter().next() {
                return Err(HostError::other("removing", "the cell", e));
            }
        }
        if let (Some(addr), None, Some(st)) = (d.cell, &self.cell, cell_state) {
            self.cell = Some(Cell::create(&self.nl, st, addr, d.seed).await?);
        }
        let mut rs = self.ruleset(d);
        if let Some(c) = &self.cell {
            let ssh = self.management.map_or(22, |f| f.local.port());
            rs.cell = Some(c.nat(&d.iface, ssh));
        }
        self.fw.apply(&rs)?;
        if let Some(c) = &mut self.cell {
            c.update(d)?;
        }
        self.shape(d_tc).await?;
        self.place(d)
    }

    /// The workloads' cgroup as `d` says: made (a systemd scope where systemd is the init,
    /// else the agent's own cgroup), frozen or thawed, or removed.
    fn place(&mut self, d: &Desired) -> Result<()> {
        let want = d.cgroup.as_deref();
        let same = |c: &NodeCgroup| want.map(Path::new) == Some(c.rel());
        if let Some((cgs, c)) = self.cgroup.take_if(|(_, c)| !same(c)) {
            remove_cgroup(&cgs, &c.rel().display().to_string())?;
            self.frozen = false;
        }
        if let Some(s) = self
            .scope
            .take_if(|s| want.map(scope::unit_of).as_deref() != Some(s.unit.as_str()))
        {
            s.stop()?;
            self.frozen = false;
        }
        if let (Some(rel), None, None) = (want, &self.cgroup, &self.scope) {
            if let Ok(m) = &self.manager {
                let agent = std::env::current_exe()
                    .map_err(|e| HostError::io("finding", "the agent's own binary", e))?;
                match Scope::start(m, &scope::unit_of(rel), d.limits.as_ref(), &agent) {
                    Ok(s) => self.scope = Some(s),
                    // Root can make the cgroup itself; a user has nowhere else to go.
                    Err(e) if *m == Manager::System => tracing::warn!(
                        "a systemd scope for the workloads failed ({e}): the agent makes their cgroup {rel} itself"
                    ),
                    Err(e) => return Err(e),
                }
            }
            if self.scope.is_none() && !nix::unistd::geteuid().is_root() {
                return Err(HostError::other(
                    "making a cgroup for",
                    format!("the workloads ({rel})"),
                    self.manager.as_ref().err().cloned().unwrap_or_default(),
                ));
            }
            if self.scope.is_none() {
                let cgs = Cgroups::detect()?;
                let c = cgs.create(rel)?;
                self.cgroup = Some((cgs, c));
            }
        }
        let node = self
            .scope
            .as_ref()
            .map(|s| &s.cgroup)
            .or(self.cgroup.as_ref().map(|(_, c)| c));
        if let Some(c) = node
            && d.frozen != self.frozen
        {
            if d.frozen {
                c.freeze()?;
            } else {
                c.thaw()?;
            }
            self.frozen = d.frozen;
        }
        Ok(())
    }

    /// Where the workloads run: `systemd scope edgesim-….scope in edgesim.slice (…)` (`… of
    /// uid 1000's user manager (…)` for an agent that is not root) or
    /// `agent cgroup edgesim/… (v2)`; `None` without a cgroup.
    pub fn workloads(&self) -> Option<String> {
        if let Some(s) = &self.scope {
            let of = match s.manager {
                Manager::System => String::new(),
                Manager::User { .. } => format!(" of {}", s.manager.describe()),
            };
            // What the kernel holds, as read back when the scope started.
            let held = s.limits.as_ref().map_or(String::new(), |l| {
                let v = |x: Option<u64>| x.map_or("max".to_string(), |x| x.to_string());
                format!(
                    "; cpu.max {} {}, memory.max {}, pids.max {}",
                    v(l.cpu_quota_us),
                    l.cpu_period_us,
                    v(l.memory_bytes),
                    v(l.pids_max)
                )
            });
            return Some(format!(
                "systemd scope {} in {}{of} ({}; cgroup {}{held})",
                s.unit,
                scope::SLICE,
                self.systemd.as_deref().unwrap_or("systemd"),
                s.cgroup
                    .dirs()
                    .first()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
                    .trim_start_matches("/sys/fs/cgroup"),
            ));
        }
        self.cgroup
            .as_ref()
            .map(|(cgs, c)| format!("agent cgroup {} (v{})", c.rel().display(), cgs.version()))
    }

    /// Whether the workloads live in a cell.
    pub fn cell(&self) -> Option<&Cell> {
        self.cell.as_ref()
    }

    /// The firewall rules for `d`: blocks, and cuts and plain loss from each peer.
    fn ruleset(&self, d: &Desired) -> nft::Ruleset {
        let mut rs = nft::Ruleset::default();
        for b in &d.blocks {
            rs.blocks.push(nft::Block {
                name: b.name.clone(),
                from: b.from.clone(),
                to: b.to.clone(),
            });
        }
        for p in &d.incoming {
            let from = vec![IpNet::from(p.addr)];
            if p.params.cut {
                rs.blocks.push(nft::Block {
                    name: format!("link-down from {}", p.addr),
                    from,
                    to: vec![],
                });
            } else if p.params.loss > 0.0 {
                rs.losses.push(nft::Loss {
                    name: format!("loss from {}", p.addr),
                    from,
                    to: vec![],
                    probability: p.params.loss,
                });
            }
        }
        if d.exempt_management {
            rs.exempt.extend(self.management);
        }
        rs.exempt.extend(d.exempt.iter().copied());
        rs
    }

    /// Rate and delay per peer on `d.iface`, changing only what differs.
    async fn shape(&mut self, d: &Desired) -> Result<()> {
        let mut want: IndexMap<IpAddr, (u64, Option<Netem>)> = IndexMap::new();
        for p in &d.peers {
            let seed = d.seed ^ addr_bits(p.addr);
            let netem = p.params.needs_netem().then(|| netem_of(&p.params, seed));
            if p.params.rate.is_some() || netem.is_some() {
                want.insert(p.addr, (p.params.rate.unwrap_or(UNLIMITED_BPS), netem));
            }
        }
        let h = self.nl.clone();
        // Another interface than before: start over there.
        if let Some((name, idx)) = self.shaped.clone()
            && (name != d.iface || want.is_empty())
        {
            tc::qdisc_delete(&h, idx, Parent::Root).await?;
            self.shaped = None;
            self.shapes.clear();
        }
        if want.is_empty() {
            return Ok(());
        }
        let idx = match &self.shaped {
            Some((_, idx)) => *idx,
            None => {
                let idx = link::index_of(&h, &d.iface).await?;
                tc::qdisc_replace(&h, idx, Parent::Root, 1, &Qdisc::Htb(Htb::default())).await?;
                self.shaped = Some((d.iface.clone(), idx));
                idx
            }
        };
        let gone: Vec<IpAddr> = self
            .shapes
            .keys()
            .filter(|a| !want.contains_key(*a))
            .copied()
            .collect();
        for a in gone {
            if let Some(s) = self.shapes.shift_remove(&a) {
                tc::filter_delete(&h, idx, ClassId::qdisc(1), s.minor).await?;
                tc::class_delete(&h, idx, ClassId::new(1, s.minor)).await?;
            }
        }
        for (addr, (rate, netem)) in want {
            let IpAddr::V4(v4) = addr else {
                return Err(HostError::other(
                    "shaping",
                    format!("traffic to {addr}"),
                    "rate and delay toward IPv6 peers are not supported yet (loss and partitions are)",
                ));
            };
            let before = self.shapes.get(&addr).cloned();
            let minor = match &before {
                Some(s) => s.minor,
                None => {
                    let m = self.next_minor;
                    self.next_minor = self.next_minor.checked_add(1).ok_or_else(|| {
                        HostError::other("shaping", d.iface.clone(), "too many peers")
                    })?;
                    m
                }
            };
            let class = ClassId::new(1, minor);
            if before.as_ref().map(|b| b.rate) != Some(rate) {
                let c = HtbClass {
                    rate,
                    ceil: Some(rate),
                    ..HtbClass::default()
                };
                tc::class_replace(&h, idx, ClassId::qdisc(1), class, &c).await?;
            }
            if before.is_none() {
                let m = U32Match {
                    src: None,
                    dst: Some(Ipv4Net::from(v4)),
                };
                // The filter's priority is the class minor: unique per peer.
                tc::filter_delete(&h, idx, ClassId::qdisc(1), minor).await?;
                tc::u32_filter_add(&h, idx, ClassId::qdisc(1), minor, &m, class).await?;
            }
            if before.as_ref().and_then(|b| b.netem.clone()) != netem {
                match &netem {
                    Some(n) => {
                        tc::qdisc_replace(
                            &h,
                            idx,
                            Parent::Class(class),
                            minor,
                            &Qdisc::Netem(n.clone()),
                        )
                        .await?
                    }
                    None => tc::qdisc_delete(&h, idx, Parent::Class(class)).await?,
                }
            }
            self.shapes.insert(addr, Shape { minor, rate, netem });
        }
        Ok(())
    }

    /// Undoes everything; keeps going past errors and returns them with what was undone.
    pub async fn revert(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut done, mut errors) = (Vec::new(), Vec::new());
        if !self.active {
            return (done, errors);
        }
        match self.fw.delete() {
            Ok(()) => done.push(format!("nftables table inet {TABLE}")),
            Err(e) => errors.push(e.to_string()),
        }
        if let Some((cgs, c)) = self.cgroup.take() {
            let rel = c.rel().display().to_string();
            match remove_cgroup(&cgs, &rel) {
                Ok(()) => done.push(format!("cgroup {rel} and what ran in it")),
                Err(e) => errors.push(e.to_string()),
            }
            self.frozen = false;
        }
        if let Some(s) = self.scope.take() {
            let unit = s.unit.clone();
            match s.stop() {
                Ok(()) => done.push(format!("systemd scope {unit} and what ran in it")),
                Err(e) => errors.push(e.to_string()),
            }
            self.frozen = false;
        }
        if let Some(c) = self.cell.take() {
            let (d, e) = c.destroy(&self.nl).await;
            done.extend(d);
            errors.extend(e);
        }
        if let Some((name, idx)) = self.shaped.take() {
            match tc::qdisc_delete(&self.nl, idx, Parent::Root).await {
                Ok(()) => done.push(format!("root qdisc on {name}")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.shapes.clear();
        if errors.is_empty() {
            match self.remove_state() {
                Ok(()) => self.active = false,
                Err(e) => errors.push(e.to_string()),
            }
        }
        (done, errors)
    }
}

/// Kills what runs in cgroup `rel` (thawed first), removes it, and its parents (the run's,
/// `edgesim`) where nothing else uses them.
fn remove_cgroup(cgs: &Cgroups, rel: &str) -> Result<()> {
    let c = cgs.open(rel)?;
    if c.exists() {
        c.thaw()?;
    }
    cgs.remove_tree(rel)?;
    let mut parent = Path::new(rel).parent();
    while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
        cgs.remove_if_unused(&p.display().to_string())?;
        parent = p.parent();
    }
    Ok(())
}

fn addr_bits(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => {
            let b = u128::from(v);
            (b as u64) ^ ((b >> 64) as u64)
        }
    }
}

/// Whether kernel module `name` is loaded, built in or installed, and not blacklisted (stock
/// Jetson L4T has no sch_netem; a board may blacklist it).
pub fn module_on_disk(name: &str, release: &str) -> bool {
    let blacklisted = std::fs::read_dir("/etc/modprobe.d")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .any(|t| {
                    t.lines().any(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        matches!(w.as_slice(), ["blacklist", m] if *m == name)
                            || matches!(w.as_slice(), ["install", m, "/bin/false" | "/bin/true", ..] if *m == name)
                    })
                })
        })
        .unwrap_or(false);
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    if blacklisted {
        return false;
    }
    let dir = Path::new("/lib/modules")
        .join(release)
        .join("kernel/net/sched");
    let file = ["ko", "ko.xz", "ko.zst", "ko.gz"]
        .iter()
        .any(|x| dir.join(format!("{name}.{x}")).exists());
    let config = format!(
        "CONFIG_NET_SCH_{}",
        name.trim_start_matches("sch_").to_ascii_uppercase()
    );
    file || std::fs::read_to_string(format!("/boot/config-{release}"))
        .map(|c| {
            c.lines()
                .any(|l| l == format!("{config}=y") || l == format!("{config}=m"))
        })
        .unwrap_or(false)
}

async fn send<W: AsyncWrite + Unpin>(out: &mut W, v: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await
}

/// Serves the protocol on `input`/`output` until the session ends, `bye`, or the lease
/// expires; returns the process's exit code. Everything is reverted before it returns.
pub async fn serve<R, W>(board: &mut Board, input: R, mut output: W) -> i32
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    let mut probing = Probing::default();
    let mut lease = DEFAULT_LEASE;
    let mut last = Instant::now();
    loop {
        let deadline = tokio::time::Instant::from_std(last + lease);
        let line = tokio::select! {
            l = lines.next_line() => l,
            () = tokio::time::sleep_until(deadline), if board.active() => {
                let silent = last.elapsed();
                let (reverted, errors) = board.revert().await;
                tracing::warn!(silent_ms = silent.as_millis() as u64, ?reverted, "no word from the controller within the lease: reverted");
                let _ = send(&mut output, &Event {
                    event: "lease-expired".into(),
                    silent_ms: silent.as_millis() as u64,
                    reverted,
                    errors,
                }).await;
                return EXIT_LEASE_EXPIRED;
            }
        };
        last = Instant::now();
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => {
                let (reverted, errors) = board.revert().await;
                if !reverted.is_empty() || !errors.is_empty() {
                    tracing::info!(?reverted, ?errors, "session ended: reverted");
                }
                return i32::from(!errors.is_empty());
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Message = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["id"].as_u64())
                    .unwrap_or(0);
                let _ = send(&mut output, &Reply::error(id, format!("bad request: {e}"))).await;
                continue;
            }
        };
        let mut reply = Reply::ok(msg.id);
        let mut stop = false;
        match msg.request {
            Request::Hello => reply.facts = Some(board.facts().await),
            Request::Heartbeat => {}
            Request::Probes(run) => {
                if let Err(e) = probing.start(&run) {
                    reply = Reply::error(msg.id, e);
                }
            }
            Request::ProbeResults => reply.samples = Some(probing.results()),
            Request::Connect { addr, timeout_ms } => {
                if let Err(e) = probing
                    .connect(addr, Duration::from_millis(timeout_ms))
                    .await
                {
                    reply = Reply::error(msg.id, e);
                }
            }
            Request::Fetch {
                addr,
                path,
                timeout_ms,
            } => match probing
                .fetch(addr, &path, Duration::from_millis(timeout_ms))
                .await
            {
                Ok(b) => reply.body = Some(b),
                Err(e) => reply = Reply::error(msg.id, e),
            },
            Request::Apply(d) => {
                lease = Duration::from_millis(d.lease_ms.max(100));
                let t = Instant::now();
                match board.apply(&d).await {
                    Ok(()) => {
                        reply.applied_us = Some(t.elapsed().as_micros() as u64);
                        reply.workloads = board.workloads();
                    }
                    Err(e) => reply = Reply::error(msg.id, e.to_string()),
                }
                if let Err(e) = probing.follow(board) {
                    reply = Reply::error(msg.id, e);
                }
            }
            Request::Revert | Request::Bye => {
                stop = matches!(msg.request, Request::Bye);
                let (reverted, errors) = board.revert().await;
                let _ = probing.follow(board);
                reply.reverted = reverted;
                if !errors.is_empty() {
                    reply = Reply {
                        error: Some(errors.join("; ")),
                        ok: false,
                        ..reply
                    };
                }
            }
        }
        if send(&mut output, &reply).await.is_err() {
            // Nobody listens any more: the session is gone.
            board.revert().await;
            return 1;
        }
        if stop {
            return i32::from(!reply.ok);
        }
    }
}

impl Reply {
    fn ok(id: u64) -> Reply {
        Reply {
            id,
            ok: true,
            error: None,
            facts: None,
            applied_us: None,
            reverted: Vec::new(),
            samples: None,
            body: None,
            workloads: None,
        }
    }

    fn error(id: u64, e: String) -> Reply {
        Reply {
            ok: false,
            error: Some(e),
            ..Reply::ok(id)
        }
    }
}

/// `edgesim agent`: serves stdin/stdout on this board.
pub async fn run(state: &Path) -> anyhow::Result<i32> {
    let management = management_flow(std::env::var("SSH_CONNECTION").ok().as_deref());
    let mut board = Board::open(state, management).await?;
    if !board.recovered.is_empty() {
        tracing::warn!(recovered = ?board.recovered, "reverted what an agent that died had left");
    }
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    Ok(serve(&mut board, input, tokio::io::stdout()).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_connection_is_read_from_ssh_connection() {
        let f = management_flow(Some("192.0.2.1 50000 192.0.2.9 22")).unwrap();
        assert_eq!(f.remote, "192.0.2.1:50000".parse().unwrap());
        assert_eq!(f.local, "192.0.2.9:22".parse().unwrap());
        assert!(management_flow(Some("fd00::1 4 fd00::9 22")).is_some());
        assert!(management_flow(Some("192.0.2.1 50000 fd00::9 22")).is_none());
        assert!(management_flow(Some("junk")).is_none());
        assert!(management_flow(None).is_none());
    }

    #[test]
    fn requests_read_as_the_protocol_spells_them() {
        let m: Message = serde_json::from_str(
            r#"{"id":7,"op":"apply","iface":"eth0","leaseMs":2000,"peers":[{"addr":"10.0.0.2","params":{"delay":"20ms","rate":1000000,"loss":0.01}}],"blocks":[{"name":"p","from":["10.0.0.1/32"],"to":[]}]}"#,
        )
        .unwrap();
        let Request::Apply(d) = &m.request else {
            panic!("{m:?}")
        };
        assert_eq!(d.lease_ms, 2000);
        assert!(d.exempt_management, "exempt unless told otherwise");
        assert_eq!(d.peers[0].params.delay, Some(Duration::from_millis(20)));
        assert_eq!(d.peers[0].params.rate, Some(1_000_000));
        // What the controller sends reads back the same.
        let back: Message = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let h: Message = serde_json::from_str(r#"{"id":1,"op":"hello"}"#).unwrap();
        assert_eq!(h.request, Request::Hello);
    }
}
