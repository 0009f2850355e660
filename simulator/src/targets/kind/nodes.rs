//! Kind's node containers, worked on through the Docker Engine: the workers held to their
//! boards' CPU and memory, and network faults installed inside the node containers, with the
//! traffic between kubelets and the API server always exempt.
//!
//! # Design
//!
//! - **Which container is which.** Kind names a cluster's node containers after the order of
//!   the configuration's `nodes`: `<cluster>-control-plane`, then `<cluster>-worker`,
//!   `<cluster>-worker2`, … ([`container_name`]). [`super::config`] writes the control plane
//!   first and then one worker per scenario node in the plan's order, so the plan's node `i`
//!   is Kind node `i + 1`. [`KindNodes::find`] reads each container's address on the Kind
//!   network (`kind` unless `KIND_EXPERIMENTAL_DOCKER_NETWORK` says otherwise) and its init's
//!   pid from the Engine.
//! - **Shaping** ([`KindNodes::shape`]): each worker container is updated with the limits
//!   the docker target gives a node container (the quota arithmetic of `netns`: calibration,
//!   `cpuScale`, CPU pinning; `memory_swap` = `memory`, so no swap beyond the board), through
//!   the same Engine client ([`crate::targets::docker`]); the profile's task limit is left
//!   out, since a Kind node's systemd, containerd and kubelet count against it too. Then every
//!   worker is inspected and every difference from what was asked is reported at once. The
//!   control plane stays unshaped. The kubelet inside still reports the host's CPUs and memory
//!   as capacity (cAdvisor ignores the container's cgroup); the reservations of
//!   [`super::config`] make allocatable the board's, and this step makes the node's cgroup
//!   really hold the board's shape.
//! - **Faults** ([`NodeFaults`], applied by [`KindFaults`]): the host layer's own mechanisms,
//!   installed inside each node container's network namespace (`/proc/<pid>/ns/net`, entered
//!   on a throwaway thread by [`crate::host::ns`]; the sockets opened there stay bound to it):
//!   - partitions ([`Cut`]) and independent loss: one nftables table `edgesim-<run>` per node
//!     ([`Layout::Host`]: hook input, so a packet from A to B is dropped where it arrives,
//!     at B, as a wire loses it, and a sender never sees EPERM), rules by the nodes'
//!     addresses on the Kind network;
//!   - rate, and delay with its kin, on the sending node's `eth0`: an htb root `1:`, a class
//!     `1:(0x100+j)` per impaired destination worker `j` selected by a u32 filter on its
//!     address, netem under that class for delay, jitter, correlated loss, duplication,
//!     corruption and reordering. Traffic to anything else (the API server, the registry,
//!     the Internet) is not classified and leaves unshaped.
//!   - **The exemption**, ahead of every drop, loss and shaping rule, on every node that has
//!     any: TCP to the control plane's API server (port [`API_SERVER_PORT`]) and the API
//!     server's connections to the kubelets (port [`KUBELET_PORT`]), both directions,
//!     accepted first in the table; and on `eth0` a filter of the first priority that sends
//!     everything addressed to the control plane to an unlimited class `1:1`. Without it a
//!     node cut off from the API server stops renewing its lease, the node controller marks
//!     it NotReady after the node-monitor grace period (40 s by default) and the
//!     `not-ready`/`unreachable` NoExecute taints evict its pods 300 s later (the default
//!     tolerations), which would turn every long partition into a reschedule. The price:
//!     kubelet heartbeats cross a partition, so **a partitioned node stays Ready and its pods
//!     keep running**, where a real cut would make it NotReady and, after 300 s, evicted. A
//!     partition's verdict on Kind says whether the *workloads* coped with the cut between
//!     them, not how Kubernetes reacts to losing a node.
//! - **Delay needs netem.** The userspace link emulator (linkem) relays between the host-side
//!   ends of edgesim's own veth pairs, and a Kind node's `eth0` belongs to Docker's bridge,
//!   so it is not reused here: on a kernel without sch_netem, a fault that needs netem is
//!   refused ([`NO_NETEM`]) and every node is left without faults, never shaped without its
//!   delay. Rate (htb) and independent loss (nftables) work on every kernel.
//! - **Only node addresses.** Rules match the nodes' own addresses: kubelets, host-network
//!   pods and NodePorts, and traffic that kindnet masquerades to the node's address. Traffic
//!   between pods on different nodes keeps its pod addresses (kindnet routes pod subnets
//!   without encapsulation) and is forwarded, not delivered locally: it is neither cut nor
//!   shaped yet (that needs the nodes' pod CIDRs, from the API server).
//! - **Revert.** Before anything is installed, the run's state file ([`super::super::state`],
//!   tag `kind`) records which node holds a table and which a root qdisc; [`KindFaults::revert`]
//!   and `edgesim cleanup` ([`cleanup_state`], from the state file alone, after a SIGKILL)
//!   delete exactly those: the run's table, and the root qdisc edgesim put on `eth0` (Kind
//!   leaves it to the kernel's default). A container that is gone took its namespace along.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::caps::{Capabilities, Feature, Support};
use crate::faults::shaping::{UNLIMITED_BPS, loss_in_firewall, netem_of};
use crate::host::nft::{self, Firewall, Flow, Layout, Ruleset};
use crate::host::tc::{self, ClassId, Htb, HtbClass, Parent, Qdisc, U32Match};
use crate::host::{HostError, Result};
use crate::profile::{HostCpu, NodeLimits};
use crate::scenario::Plan;
use crate::scenario::plan::LinkParams;
use crate::targets::docker::api::Docker;
use crate::targets::docker::node_limits;
use crate::targets::state::{Mode, RunState, TargetState};

/// The API server's port on the control plane (kubeadm's default, which Kind keeps).
pub const API_SERVER_PORT: u16 = 6443;
/// The kubelet's port, which the API server connects to (logs, exec, port-forward).
pub const KUBELET_PORT: u16 = 10250;
/// The Docker network Kind puts its nodes on.
pub const DEFAULT_NETWORK: &str = "kind";
/// A node container's interface on that network.
pub const IFACE: &str = "eth0";
/// Why delay is refused on a kernel without netem.
pub const NO_NETEM: &str = "this kernel has no netem qdisc (sch_netem), and the userspace link emulator does not run inside Kind's node containers: delay, jitter, correlated loss, duplication, corruption and reordering are unavailable on kind here (rate and independent loss work); load sch_netem (`modprobe sch_netem`, package linux-modules-extra-$(uname -r) on Ubuntu)";

/// Kind's name for node `i` of cluster `cluster`, in the order of the configuration's
/// `nodes`: 0 is the control plane, `k ≥ 1` the `k`-th worker.
pub fn container_name(cluster: &str, i: usize) -> String {
    match i {
        0 => format!("{cluster}-control-plane"),
        1 => format!("{cluster}-worker"),
        k => format!("{cluster}-worker{k}"),
    }
}

/// The Docker network Kind uses here.
pub fn network() -> String {
    std::env::var("KIND_EXPERIMENTAL_DOCKER_NETWORK").unwrap_or_else(|_| DEFAULT_NETWORK.into())
}

/// A node of the cluster, as faults name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Member {
    ControlPlane,
    /// The worker of scenario node `i` (the plan's order).
    Worker(usize),
}

impl Member {
    /// The node's position in the configuration's `nodes` (0: the control plane).
    pub fn index(self) -> usize {
        match self {
            Member::ControlPlane => 0,
            Member::Worker(i) => i + 1,
        }
    }
}

/// One node container as the state file records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub container: String,
    pub addr: Ipv4Addr,
    /// The run's nftables table may exist in its namespace.
    #[serde(default)]
    pub table: bool,
    /// edgesim's root qdisc may be on its `eth0`.
    #[serde(default)]
    pub qdisc: bool,
}

/// What the kind target installed for a run (its part of the state file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KindState {
    pub cluster: String,
    pub network: String,
    /// The nftables table in the nodes' namespaces (`edgesim-<run>`).
    pub table: String,
    /// The control plane, then the workers in the plan's order (not `nodes`, which the
    /// state file's target-neutral part holds).
    pub containers: Vec<NodeRecord>,
    /// The run created the cluster (`kind create cluster`), so it deletes it.
    #[serde(default)]
    pub created: bool,
    /// The cluster's kubeconfig (in the run's folder for a cluster the run created).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The artifact registry container the run started beside the cluster.
    #[serde(default)]
    pub registry: Option<String>,
}

/// The node containers of a running Kind cluster.
pub struct KindNodes {
    docker: Docker,
    pub cluster: String,
    pub network: String,
    /// The control plane, then the workers in the plan's order: container, address, pid.
    pub nodes: Vec<(String, Ipv4Addr, i64)>,
}

impl KindNodes {
    /// The containers of cluster `cluster` with `workers` workers on Docker network
    /// `network`. Fails, naming the container, when one is missing, stopped or not on it.
    pub async fn find(cluster: &str, workers: usize, network: &str) -> Result<KindNodes> {
        let docker = Docker::connect().await?;
        let mut nodes = Vec::with_capacity(workers + 1);
        for i in 0..=workers {
            let name = container_name(cluster, i);
            let (addr, pid) = docker.addr_and_pid(&name, network).await?;
            nodes.push((name, addr, pid));
        }
        Ok(KindNodes {
            docker,
            cluster: cluster.to_string(),
            network: network.to_string(),
            nodes,
        })
    }

    /// The nodes of `plan`'s cluster ([`super::config::cluster_name`]) on Kind's network.
    pub async fn of_plan(plan: &Plan) -> Result<KindNodes> {
        Self::find(
            &super::config::cluster_name(plan),
            plan.nodes.len(),
            &network(),
        )
        .await
    }

    pub fn addr(&self, m: Member) -> Ipv4Addr {
        self.nodes[m.index()].1
    }

    /// Holds each worker to its board's CPU and memory (the docker target's limits, without
    /// the task limit), leaves the control plane alone, reads every worker back and reports
    /// every mismatch at once. Returns the limits asked for, per worker.
    ///
    /// Guarantees: idempotent. Assumes: the cluster has one worker per node of `plan`.
    pub async fn shape(&self, plan: &Plan) -> Result<Vec<NodeLimits>> {
        self.check_workers(plan)?;
        let host = plan.scaled_host(&HostCpu::detect());
        let allowed = crate::host::cgroup::allowed_cpus();
        let want: Vec<NodeLimits> = (0..plan.nodes.len())
            .map(|i| node_limits(plan, i, &host, &allowed).with_pids(None))
            .collect();
        for (i, l) in want.iter().enumerate() {
            self.docker.update_limits(&self.nodes[i + 1].0, l).await?;
        }
        let mut wrong = Vec::new();
        for (i, w) in want.iter().enumerate() {
            let name = &self.nodes[i + 1].0;
            let (got, swap) = self.docker.limits_held(name).await?;
            let mut differs = |what: &str, want: String, got: String| {
                if want != got {
                    wrong.push(format!("{name}: {what} is {got}, not {want}"));
                }
            };
            let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
            differs(
                "the CPU quota (µs per 100 ms)",
                show(w.cpu_quota_us),
                show(got.cpu_quota_us),
            );
            differs("memory", show(w.memory_bytes), show(got.memory_bytes));
            differs("memory + swap", show(w.memory_bytes), show(swap));
            if w.cpus.is_some() {
                differs(
                    "the CPU set",
                    w.cpus.clone().unwrap_or_default(),
                    got.cpus.clone().unwrap_or_default(),
                );
            }
        }
        if wrong.is_empty() {
            Ok(want)
        } else {
            Err(HostError::other(
                "shaping",
                format!("the workers of Kind cluster {}", self.cluster),
                format!(
                    "the Engine holds other limits than asked: {}",
                    wrong.join("; ")
                ),
            ))
        }
    }

    fn check_workers(&self, plan: &Plan) -> Result<()> {
        if self.nodes.len() == plan.nodes.len() + 1 {
            return Ok(());
        }
        Err(HostError::other(
            "matching",
            format!("Kind cluster {}", self.cluster),
            format!(
                "it has {} workers for {} scenario nodes",
                self.nodes.len() - 1,
                plan.nodes.len()
            ),
        ))
    }
}

/// Traffic from any node of `from` to any node of `to` dropped (one direction), but for the
/// exemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub name: String,
    pub from: Vec<Member>,
    pub to: Vec<Member>,
}

/// The network faults the nodes should hold, as a whole: each apply makes them hold exactly
/// this.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFaults {
    pub cuts: Vec<Cut>,
    /// Impairment of the traffic from worker `a` to worker `b` (plan indices).
    pub links: BTreeMap<(usize, usize), LinkParams>,
}

impl NodeFaults {
    /// Adds partition `name`: every group cut from every other, both ways.
    pub fn partition(mut self, name: &str, groups: &[&[Member]]) -> Self {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    self.cuts.push(Cut {
                        name: format!("partition {name} #{}", self.cuts.len()),
                        from: a.to_vec(),
                        to: b.to_vec(),
                    });
                }
            }
        }
        self
    }

    /// Adds an impairment of the traffic from worker `a` to worker `b`.
    pub fn link(mut self, a: usize, b: usize, p: LinkParams) -> Self {
        self.links.insert((a, b), p);
        self
    }
}

/// What one node should hold.
#[derive(Debug, Clone, Default, PartialEq)]
struct Want {
    /// Drop and loss rules, without the exemption (empty: no table at all).
    rules: Ruleset,
    /// Per destination worker (plan index): its address and the impairment toward it.
    shapes: BTreeMap<usize, (Ipv4Addr, LinkParams)>,
}

fn host_net(a: Ipv4Addr) -> IpNet {
    IpNet::V4(Ipv4Net::from(a))
}

/// The exempt flows of node `k` (0: the control plane) given the nodes' addresses.
fn exemption(addrs: &[Ipv4Addr], k: usize) -> Vec<Flow> {
    let at = |a: Ipv4Addr, port: u16| SocketAddr::new(IpAddr::V4(a), port);
    let cp = addrs[0];
    if k == 0 {
        addrs[1..]
            .iter()
            .flat_map(|&w| {
                [
                    // kubelet → API server, and the API server → kubelet's replies.
                    Flow {
                        local: at(cp, API_SERVER_PORT),
                        remote: at(w, 0),
                    },
                    Flow {
                        local: at(cp, 0),
                        remote: at(w, KUBELET_PORT),
                    },
                ]
            })
            .collect()
    } else {
        let me = addrs[k];
        vec![
            Flow {
                local: at(me, 0),
                remote: at(cp, API_SERVER_PORT),
            },
            Flow {
                local: at(me, KUBELET_PORT),
                remote: at(cp, 0),
            },
        ]
    }
}

/// What every node should hold for `f`, by node index (0: the control plane).
fn desired(addrs: &[Ipv4Addr], f: &NodeFaults) -> Result<Vec<Want>> {
    let workers = addrs.len() - 1;
    let bad = |what: String| {
        Err(HostError::other(
            "validating",
            "Kind node faults",
            format!("{what} (the cluster has {workers} workers)"),
        ))
    };
    for c in &f.cuts {
        if let Some(m) = c.from.iter().chain(&c.to).find(|m| m.index() > workers) {
            return bad(format!("cut `{}` names {m:?}", c.name));
        }
    }
    for &(a, b) in f.links.keys() {
        if a >= workers || b >= workers || a == b {
            return bad(format!("link {a} → {b} is not between two workers"));
        }
    }
    let mut want = vec![Want::default(); addrs.len()];
    for c in &f.cuts {
        let from: Vec<IpNet> = c.from.iter().map(|m| host_net(addrs[m.index()])).collect();
        for m in &c.to {
            want[m.index()].rules.blocks.push(nft::Block {
                name: c.name.clone(),
                from: from.clone(),
                to: vec![host_net(addrs[m.index()])],
            });
        }
    }
    for (&(a, b), p) in &f.links {
        let (from, to) = (vec![host_net(addrs[a + 1])], vec![host_net(addrs[b + 1])]);
        let name = format!("link {a}->{b}");
        let rules = &mut want[b + 1].rules;
        if p.cut {
            rules.blocks.push(nft::Block { name, from, to });
        } else if loss_in_firewall(p) {
            rules.losses.push(nft::Loss {
                name,
                from,
                to,
                probability: p.loss,
            });
        }
        if !p.cut && (p.rate.is_some() || p.needs_netem()) {
            want[a + 1].shapes.insert(b, (addrs[b + 1], *p));
        }
    }
    Ok(want)
}

/// One node as [`KindFaults`] works on it.
struct Live {
    ns: OwnedFd,
    firewall: Firewall,
    /// tc handle and `eth0`'s index, opened on first use.
    tc: Option<(rtnetlink::Handle, u32)>,
    installed: Want,
}

/// Network faults inside the node containers of one run.
pub struct KindFaults {
    state: RunState,
    addrs: Vec<Ipv4Addr>,
    live: Vec<Live>,
    seed: u64,
}

fn kind_state(st: &mut RunState) -> Option<&mut KindState> {
    match &mut st.target {
        TargetState::Kind(k) => Some(k),
        _ => None,
    }
}

impl KindFaults {
    /// Starts run `run_id` on `nodes`: writes its state file (nothing is installed yet) and
    /// opens each node's network namespace.
    pub fn open(
        plan: &Plan,
        nodes: &KindNodes,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> Result<KindFaults> {
        nodes.check_workers(plan)?;
        let ks = KindState {
            cluster: nodes.cluster.clone(),
            network: nodes.network.clone(),
            created: false,
            kubeconfig: None,
            registry: None,
            table: format!("edgesim-{run_id}"),
            containers: Vec::new(),
        };
        let state = RunState::new(plan, run_id, mode, out_dir, TargetState::Kind(ks));
        Self::attach(state, nodes)
    }

    /// Takes over run `state` (a kind run's, whose table name it keeps) on `nodes`: records
    /// the node containers in it, saves it (nothing is installed yet) and opens each node's
    /// network namespace.
    pub fn attach(mut state: RunState, nodes: &KindNodes) -> Result<KindFaults> {
        if state.nodes.len() + 1 != nodes.nodes.len() {
            return Err(HostError::other(
                "matching",
                format!("Kind cluster {}", nodes.cluster),
                format!(
                    "it has {} workers for {} scenario nodes",
                    nodes.nodes.len() - 1,
                    state.nodes.len()
                ),
            ));
        }
        let Some(ks) = kind_state(&mut state) else {
            return Err(HostError::other(
                "opening the node faults of",
                state.run_id.clone(),
                "not a kind run",
            ));
        };
        ks.containers = nodes
            .nodes
            .iter()
            .map(|(c, a, _)| NodeRecord {
                container: c.clone(),
                addr: *a,
                table: false,
                qdisc: false,
            })
            .collect();
        let table = ks.table.clone();
        state.save_or_err()?;
        let mut live = Vec::with_capacity(nodes.nodes.len());
        for (c, _, pid) in &nodes.nodes {
            let ns = open_ns(c, *pid)?;
            let fw_ns = ns
                .try_clone()
                .map_err(|e| HostError::io("duplicating the namespace handle of", c, e))?;
            live.push(Live {
                ns,
                firewall: Firewall::with_layout(fw_ns, c, &table, Layout::Host)?,
                tc: None,
                installed: Want::default(),
            });
        }
        Ok(KindFaults {
            seed: state.seed,
            state,
            addrs: nodes.nodes.iter().map(|n| n.1).collect(),
            live,
        })
    }

    /// The run's state (what the state file says).
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The run's state, to change (save it after).
    pub fn state_mut(&mut self) -> &mut RunState {
        &mut self.state
    }

    /// Makes the nodes hold exactly `f`, the exemption ahead of every rule.
    ///
    /// Guarantees: validated before anything is changed; each table and qdisc is recorded in
    /// the state file before it is created; on error every node is left with no faults at all
    /// (never half of `f`, never a rate without its delay) and the error says why.
    pub async fn apply(&mut self, f: &NodeFaults) -> Result<()> {
        let want = desired(&self.addrs, f)?;
        let mut failed = None;
        for (k, w) in want.into_iter().enumerate() {
            if let Err(e) = self.apply_node(k, w).await {
                failed = Some(e);
                break;
            }
        }
        let Some(e) = failed else { return Ok(()) };
        for msg in self.clear().await {
            tracing::warn!(error = %msg, "removing the Kind node faults after a failed apply");
        }
        Err(e)
    }

    async fn apply_node(&mut self, k: usize, w: Want) -> Result<()> {
        let name = self.state_nodes()[k].container.clone();
        if w.rules != self.live[k].installed.rules {
            if w.rules == Ruleset::default() {
                self.live[k].firewall.delete()?;
                self.record(k, |r| r.table = false)?;
            } else {
                self.record(k, |r| r.table = true)?;
                let mut rs = w.rules.clone();
                rs.exempt = exemption(&self.addrs, k);
                self.live[k].firewall.apply(&rs)?;
            }
            self.live[k].installed.rules = w.rules;
        }
        if w.shapes != self.live[k].installed.shapes {
            let (h, dev) = self.tc(k, &name).await?;
            // Rebuilt whole: a change of faults is rare, and the kernel swaps qdiscs of one
            // handle only within one kind.
            tc::qdisc_delete(&h, dev, Parent::Root).await?;
            self.live[k].installed.shapes.clear();
            if w.shapes.is_empty() {
                self.record(k, |r| r.qdisc = false)?;
            } else {
                self.record(k, |r| r.qdisc = true)?;
                self.shape_egress(&h, dev, k, &name, &w.shapes).await?;
                self.live[k].installed.shapes = w.shapes;
            }
        }
        Ok(())
    }

    /// htb on `eth0` of node `k`: the control plane's class first, then one class per
    /// impaired destination.
    async fn shape_egress(
        &self,
        h: &rtnetlink::Handle,
        dev: u32,
        k: usize,
        name: &str,
        shapes: &BTreeMap<usize, (Ipv4Addr, LinkParams)>,
    ) -> Result<()> {
        let root = ClassId::qdisc(1);
        tc::qdisc_replace(h, dev, Parent::Root, 1, &Qdisc::Htb(Htb::default())).await?;
        let open = HtbClass {
            rate: UNLIMITED_BPS,
            ceil: Some(UNLIMITED_BPS),
            ..HtbClass::default()
        };
        let exempt = ClassId::new(1, 1);
        tc::class_replace(h, dev, root, exempt, &open).await?;
        let to = |a: Ipv4Addr| U32Match {
            src: None,
            dst: Some(Ipv4Net::from(a)),
        };
        tc::u32_filter_add(h, dev, root, 1, &to(self.addrs[0]), exempt).await?;
        for (&b, (addr, p)) in shapes {
            let class = ClassId::new(1, 0x100 + b as u16);
            let rate = p.rate.unwrap_or(UNLIMITED_BPS);
            let c = HtbClass {
                rate,
                ceil: Some(rate),
                ..HtbClass::default()
            };
            tc::class_replace(h, dev, root, class, &c).await?;
            tc::u32_filter_add(h, dev, root, 2 + b as u16, &to(*addr), class).await?;
            if p.needs_netem() {
                let seed = self.seed ^ (((k as u64) << 32) | b as u64);
                let q = Qdisc::Netem(netem_of(p, seed));
                match tc::qdisc_replace(h, dev, Parent::Class(class), 0x100 + b as u16, &q).await {
                    Err(HostError::Unsupported { what, op, .. }) => {
                        return Err(HostError::Unsupported {
                            what,
                            op,
                            object: format!("the impairment {} → worker {b} on {name}", k - 1),
                            detail: NO_NETEM.into(),
                        });
                    }
                    other => other?,
                }
            }
        }
        Ok(())
    }

    async fn tc(&mut self, k: usize, name: &str) -> Result<(rtnetlink::Handle, u32)> {
        if let Some(t) = &self.live[k].tc {
            return Ok(t.clone());
        }
        let h = tc::netlink_fd(&self.live[k].ns, name)?;
        let dev = crate::host::link::index_of(&h, IFACE).await?;
        self.live[k].tc = Some((h.clone(), dev));
        Ok((h, dev))
    }

    fn state_nodes(&self) -> &[NodeRecord] {
        match &self.state.target {
            TargetState::Kind(k) => &k.containers,
            _ => &[],
        }
    }

    fn record(&mut self, k: usize, f: impl FnOnce(&mut NodeRecord)) -> Result<()> {
        if let Some(ks) = kind_state(&mut self.state) {
            f(&mut ks.containers[k]);
        }
        self.state.save_or_err()
    }

    /// Packets and bytes dropped so far by each rule of node `m`'s table.
    pub fn counters(&self, m: Member) -> Result<Vec<nft::RuleCounter>> {
        self.live[m.index()].firewall.counters()
    }

    /// Removes everything installed, keeps the state file (its records cleared).
    pub(crate) async fn clear(&mut self) -> Vec<String> {
        for l in &mut self.live {
            l.installed = Want::default();
        }
        let errors = remove_installed(&mut self.state).await;
        if let Err(e) = self.state.save_or_err() {
            return errors.into_iter().chain([e.to_string()]).collect();
        }
        errors
    }

    /// Removes every table and qdisc this run installed, then its state file.
    ///
    /// Guarantees: keeps going past errors and returns them all; "already gone" is success.
    pub async fn revert(mut self) -> Vec<String> {
        let mut errors = self.clear().await;
        drop(self.live);
        errors.extend(self.state.remove_or_msg());
        errors
    }
}

pub(crate) fn open_ns(container: &str, pid: i64) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::File::open(&path).map(OwnedFd::from).map_err(|e| {
        HostError::io(
            "opening the network namespace of",
            format!("{container} ({path})"),
            e,
        )
    })
}

/// Deletes what the records of `state` say is installed, clearing each record that is gone.
pub(crate) async fn remove_installed(state: &mut RunState) -> Vec<String> {
    let Some(ks) = kind_state(state) else {
        return vec![format!("run {} is not a kind run", state.run_id)];
    };
    let mut errors = Vec::new();
    if !ks.containers.iter().any(|n| n.table || n.qdisc) {
        return errors;
    }
    let docker = match Docker::connect().await {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    for n in &mut ks.containers {
        if !(n.table || n.qdisc) {
            continue;
        }
        // A container that is gone (or stopped) took its namespace, and all in it, along.
        let Ok(pid) = docker.pid(&n.container).await else {
            n.table = false;
            n.qdisc = false;
            continue;
        };
        let ns = match open_ns(&n.container, pid) {
            Ok(ns) => ns,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        if n.qdisc {
            let res = async {
                let h = tc::netlink_fd(&ns, &n.container)?;
                let dev = crate::host::link::index_of(&h, IFACE).await?;
                tc::qdisc_delete(&h, dev, Parent::Root).await
            }
            .await;
            match res {
                Ok(()) => n.qdisc = false,
                Err(e) => errors.push(e.to_string()),
            }
        }
        if n.table {
            let res = ns
                .try_clone()
                .map_err(|e| HostError::io("duplicating the namespace handle of", &n.container, e))
                .and_then(|fd| Firewall::with_layout(fd, &n.container, &ks.table, Layout::Host))
                .and_then(|fw| fw.delete());
            match res {
                Ok(()) => n.table = false,
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    errors
}

/// Removes what a kind run installed, from its state file alone (`edgesim cleanup` after a
/// SIGKILL): its faults inside the node containers, the registry container it started, the
/// cluster when the run created it (`kind delete cluster`), and the state file.
///
/// Guarantees: idempotent; keeps going past errors; "already gone" is success. A cluster the
/// run did not create stays, with its workers' limits: it belongs to its owner.
pub async fn cleanup_state(state: &RunState) -> Vec<String> {
    let mut st = state.clone();
    let mut errors = remove_installed(&mut st).await;
    let run_id = st.run_id.clone();
    if let Some(ks) = kind_state(&mut st) {
        if ks.registry.is_some() {
            match Docker::connect().await {
                Ok(d) => errors.extend(d.remove_run(&run_id).await),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if ks.created
            && let Err(e) = super::tools::kind_delete(&ks.cluster, ks.kubeconfig.as_deref()).await
        {
            errors.push(e.to_string());
        }
    }
    errors.extend(st.remove_or_msg());
    errors
}

/// The kind rows of the capability table, for a kernel with or without netem.
pub fn rows(c: &mut Capabilities, netem: bool) {
    c.set(
        Feature::Partition,
        Support::Emulated,
        "nftables drop rules inside the node containers, by node address; kubelet ↔ API server traffic (TCP 6443 and 10250) is exempt, so a partitioned node stays Ready and keeps its pods (a real cut makes it NotReady, and its pods are evicted after 300 s); pod-to-pod traffic between nodes is not cut yet",
    );
    c.set(
        Feature::Loss,
        Support::Exact,
        "nftables numgen inside the receiving node container (API server traffic exempt)",
    );
    c.set(
        Feature::Rate,
        Support::Emulated,
        "tc htb on the sending node container's eth0, per destination node (traffic to the control plane exempt): a site uplink shared by several nodes is not one bottleneck (each node gets the whole rate), so verdicts that depend on nodes competing for an uplink may differ from netns",
    );
    let netem_row = if netem {
        (
            Support::Exact,
            "tc netem under the htb class of the destination",
        )
    } else {
        (Support::Unavailable, NO_NETEM)
    };
    for f in [
        Feature::Delay,
        Feature::BurstLoss,
        Feature::DuplicateCorruptReorder,
    ] {
        c.set(f, netem_row.0, netem_row.1);
    }
    let shape = "docker update of the worker container (kubelet still reports the host's capacity: the configuration's reservations make allocatable the board's)";
    c.set(Feature::Cpu, Support::Exact, shape);
    c.set(Feature::Memory, Support::Exact, shape);
    c.set(
        Feature::FlapTrace,
        if netem {
            Support::Exact
        } else {
            Support::Emulated
        },
        "the same mechanisms, changed on schedule (steps that need delay need netem)",
    );
    c.set(
        Feature::Deterministic,
        Support::Unavailable,
        "the userspace link emulator does not run inside Kind's node containers: drops and delays are the kernel's (use netns or docker for a replayable run)",
    );
    c.set(
        Feature::NodeIsolate,
        Support::Emulated,
        "everything to and from the node container dropped inside the nodes, but kubelet ↔ API server traffic: the node stays Ready",
    );
    c.set(
        Feature::NodeFreeze,
        Support::Exact,
        "docker pause of the node container: its pods and its kubelet hang (the node goes NotReady after 40 s, as a hung board's would)",
    );
    c.set(
        Feature::NodePoweroff,
        Support::Emulated,
        "the node isolated and its pods deleted; node-up creates them again from the delivered manifests (their /data, an emptyDir, starts empty)",
    );
    c.set(
        Feature::KillRestart,
        Support::Exact,
        "kill: the signal to the pod's container through containerd in its node (kubelet then applies the restart policy); restart: the pod deleted and created again",
    );
    c.set(
        Feature::BlockIo,
        Support::Unavailable,
        "Kind nodes share the host's disk; the docker target throttles block IO",
    );
    c.set(
        Feature::AppWorkload,
        Support::Exact,
        "the app's image for this host's architecture, loaded into the nodes (`kind load`), run as a pod on the node's network, delivered by Flux",
    );
    c.set(
        Feature::ImageWorkload,
        Support::Exact,
        "a pod of the image: loaded into the nodes when the Docker Engine has it, else pulled by them",
    );
    c.set(
        Feature::CommandWorkload,
        Support::Unavailable,
        "a Kubernetes cluster runs images: use `app:` or `image:` (or the netns and docker targets)",
    );
    c.set(
        Feature::Arm64Emulation,
        Support::Unavailable,
        "Kind cannot run arm64 nodes under qemu (kind#2718): arm64 boards are nodes of this host's architecture labelled edgesim.dev/arch=arm64",
    );
    c.netem_hint = NO_NETEM.into();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<Ipv4Addr> {
        ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    #[test]
    fn kind_names_its_nodes_in_the_order_of_the_configuration() {
        let names: Vec<String> = (0..4).map(|i| container_name("edgesim-t", i)).collect();
        assert_eq!(
            names,
            [
                "edgesim-t-control-plane",
                "edgesim-t-worker",
                "edgesim-t-worker2",
                "edgesim-t-worker3"
            ]
        );
        assert_eq!(Member::Worker(0).index(), 1);
        assert_eq!(Member::ControlPlane.index(), 0);
    }

    #[test]
    fn cuts_and_loss_land_on_the_receiver_and_shaping_on_the_sender() {
        let a = addrs();
        let f = NodeFaults::default()
            .partition(
                "split",
                &[
                    &[Member::Worker(0)],
                    &[Member::Worker(1), Member::ControlPlane],
                ],
            )
            .link(
                0,
                1,
                LinkParams {
                    loss: 0.25,
                    rate: Some(8_000_000),
                    ..LinkParams::default()
                },
            );
        let w = desired(&a, &f).unwrap();
        // The control plane receives from worker 0: one block; worker 1 a block and the loss.
        assert_eq!(w[0].rules.blocks.len(), 1);
        assert_eq!(w[0].rules.blocks[0].from, vec![host_net(a[1])]);
        assert_eq!(w[2].rules.blocks.len(), 1);
        assert_eq!(w[2].rules.losses.len(), 1);
        assert_eq!(w[2].rules.losses[0].from, vec![host_net(a[1])]);
        // Worker 0 receives from both others.
        assert_eq!(
            w[1].rules.blocks[0].from,
            vec![host_net(a[2]), host_net(a[0])]
        );
        // The rate shapes worker 0's egress toward worker 1 only.
        assert_eq!(w[1].shapes.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(w[0].shapes.is_empty() && w[2].shapes.is_empty());
        // No link may involve the control plane or a worker the cluster lacks.
        assert!(desired(&a, &NodeFaults::default().link(0, 2, LinkParams::default())).is_err());
        assert!(
            desired(
                &a,
                &NodeFaults::default().partition("x", &[&[Member::Worker(5)], &[]])
            )
            .is_err()
        );
    }

    #[test]
    fn the_exemption_covers_both_directions_of_both_services() {
        let a = addrs();
        let worker = exemption(&a, 1);
        // What arrives at a worker from the API server, and the API server's calls.
        assert!(worker.contains(&Flow {
            local: "172.18.0.3:0".parse().unwrap(),
            remote: "172.18.0.2:6443".parse().unwrap(),
        }));
        assert!(worker.contains(&Flow {
            local: "172.18.0.3:10250".parse().unwrap(),
            remote: "172.18.0.2:0".parse().unwrap(),
        }));
        let cp = exemption(&a, 0);
        assert_eq!(cp.len(), 4, "two flows per worker: {cp:?}");
        assert!(cp.contains(&Flow {
            local: "172.18.0.2:6443".parse().unwrap(),
            remote: "172.18.0.4:0".parse().unwrap(),
        }));
    }

    #[test]
    fn the_capability_rows_say_what_a_partition_means_and_refuse_delay_without_netem() {
        let mut c = Capabilities::new("kind");
        rows(&mut c, false);
        assert_eq!(c.support(Feature::Delay), Support::Unavailable);
        assert!(c.row(Feature::Delay).unwrap().how.contains("no netem"));
        let p = c.row(Feature::Partition).unwrap();
        assert_eq!(p.support, Support::Emulated);
        assert!(p.how.contains("stays Ready"), "{}", p.how);
        rows(&mut c, true);
        assert_eq!(c.support(Feature::Delay), Support::Exact);
    }
}
