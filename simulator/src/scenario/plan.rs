//! The resolved plan: what a target builds and plays, with every name resolved to an index,
//! every `count` expanded, addresses allocated, and the timeline turned into a flat list of
//! absolute actions (automatic reverts included) whose effect was simulated at plan time.
//!
//! Targets never see selectors, globs or units: only indices, addresses, durations and
//! fractions. Because the plan is computed before anything is created, `edgesim plan` can
//! print exactly what a run would do.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::expect::{Bound, Expectation, Window};
use super::model::{Aggregate, Distribution, DownMode, Impairment, MetricsFormat, RestartPolicy};
use crate::profile::ProfileSpec;

/// What carries link impairments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// tc (htb, netem) and nftables in the kernel.
    Kernel,
    /// The userspace link emulator (linkem), seeded; partitions stay in nftables.
    Userspace,
}

/// How the seed of a run was chosen (reported, so a drawn seed can be replayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeedSource {
    Scenario,
    CommandLine,
    Drawn,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub file: PathBuf,
    pub seed: u64,
    pub seed_source: SeedSource,
    #[serde(serialize_with = "ser_dur")]
    pub duration: Duration,
    pub pool: Ipv4Net,
    pub mtu: u32,
    /// Factor applied to every node's CPU (`spec.cpuScale`, default 1).
    pub cpu_scale: f64,
    /// What carries link impairments.
    pub mechanism: Mechanism,
    /// `spec.emulateArch`: arm64 nodes run arm64 builds under qemu.
    pub emulate_arch: bool,
    /// A lab that takes live faults: links are ready for any impairment.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub live: bool,
    pub sites: Vec<Site>,
    pub links: Vec<Link>,
    pub nodes: Vec<Node>,
    pub workloads: Vec<Workload>,
    pub actions: Vec<Action>,
    pub probes: Vec<Probe>,
    pub assertions: Vec<Assertion>,
}

pub(crate) fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::units::Dur(*d))
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&crate::units::Dur(*d)),
        None => s.serialize_none(),
    }
}

fn de_opt_dur<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<crate::units::Dur>::deserialize(d).map(|o| o.map(|d| d.0))
}

#[derive(Debug, Clone, Serialize)]
pub struct Site {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Gilbert-Elliott loss parameters, as fractions, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeParams {
    pub p: f64,
    pub r: f64,
    pub loss_in_bad: f64,
    pub loss_in_good: f64,
}

/// Impairments of one direction of a link, as numbers. (Read back too: the device agent
/// receives a board's parameters in this form.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkParams {
    #[serde(
        serialize_with = "ser_opt_dur",
        deserialize_with = "de_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    #[serde(
        serialize_with = "ser_opt_dur",
        deserialize_with = "de_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Correlation of successive delays, fraction.
    #[serde(skip_serializing_if = "is_zero")]
    pub correlation: f64,
    /// Fraction of packets dropped, `0.0..=1.0`.
    #[serde(skip_serializing_if = "is_zero")]
    pub loss: f64,
    #[serde(skip_serializing_if = "is_zero")]
    pub loss_correlation: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gilbert_elliott: Option<GeParams>,
    #[serde(skip_serializing_if = "is_zero")]
    pub duplicate: f64,
    #[serde(skip_serializing_if = "is_zero")]
    pub corrupt: f64,
    #[serde(skip_serializing_if = "is_zero")]
    pub reorder: f64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub reorder_gap: u32,
    /// Bits per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Packets the link may queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The link is down (a `flap` in its down phase): nothing passes.
    #[serde(skip_serializing_if = "is_false")]
    pub cut: bool,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

impl LinkParams {
    pub fn is_clear(&self) -> bool {
        *self == LinkParams::default()
    }
    /// Whether these parameters need a delay-capable mechanism (netem or the userspace
    /// emulator).
    pub fn needs_delay(&self) -> bool {
        self.delay.is_some_and(|d| !d.is_zero()) || self.jitter.is_some_and(|d| !d.is_zero())
    }
    /// Whether these parameters need netem (or the userspace emulator): anything beyond a
    /// rate, independent loss and a cut, which tc htb and nftables do on every kernel.
    pub fn needs_netem(&self) -> bool {
        self.needs_delay()
            || self.loss_correlation > 0.0
            || self.gilbert_elliott.is_some()
            || self.duplicate > 0.0
            || self.corrupt > 0.0
            || self.reorder > 0.0
            || self.limit.is_some()
    }

    /// Sets the fields `imp` gives, leaving the others.
    pub fn set_from(&mut self, imp: &Impairment) {
        let pct =
            |p: &Option<super::loc::Loc<crate::units::Percent>>| p.as_ref().map(|x| x.fraction());
        if let Some(d) = &imp.delay {
            self.delay = Some(d.0);
        }
        if let Some(d) = &imp.jitter {
            self.jitter = Some(d.0);
        }
        if let Some(d) = &imp.distribution {
            self.distribution = Some(**d);
        }
        if let Some(v) = pct(&imp.correlation) {
            self.correlation = v;
        }
        if let Some(v) = pct(&imp.loss) {
            self.loss = v;
        }
        if let Some(v) = pct(&imp.loss_correlation) {
            self.loss_correlation = v;
        }
        if let Some(ge) = &imp.gilbert_elliott {
            let p = ge.p.fraction();
            self.gilbert_elliott = Some(GeParams {
                p,
                r: ge.r.map_or(1.0 - p, |r| r.fraction()),
                loss_in_bad: ge.loss_in_bad.map_or(1.0, |x| x.fraction()),
                loss_in_good: ge.loss_in_good.map_or(0.0, |x| x.fraction()),
            });
        }
        if let Some(v) = pct(&imp.duplicate) {
            self.duplicate = v;
        }
        if let Some(v) = pct(&imp.corrupt) {
            self.corrupt = v;
        }
        if let Some(v) = pct(&imp.reorder) {
            self.reorder = v;
        }
        if let Some(g) = &imp.reorder_gap {
            self.reorder_gap = **g;
        }
        if let Some(r) = &imp.rate {
            self.rate = Some(r.0);
        }
        if let Some(l) = &imp.limit {
            self.limit = Some(**l);
        }
    }

    /// Copies the named fields (as [`Impairment::present`] names them) from `from`.
    pub fn copy_fields(&mut self, from: &LinkParams, fields: &[&str]) {
        for f in fields {
            match *f {
                "delay" => self.delay = from.delay,
                "jitter" => self.jitter = from.jitter,
                "distribution" => self.distribution = from.distribution,
                "correlation" => self.correlation = from.correlation,
                "loss" => self.loss = from.loss,
                "lossCorrelation" => self.loss_correlation = from.loss_correlation,
                "gilbertElliott" => self.gilbert_elliott = from.gilbert_elliott,
                "duplicate" => self.duplicate = from.duplicate,
                "corrupt" => self.corrupt = from.corrupt,
                "reorder" => self.reorder = from.reorder,
                "reorderGap" => self.reorder_gap = from.reorder_gap,
                "rate" => self.rate = from.rate,
                "limit" => self.limit = from.limit,
                "cut" => self.cut = from.cut,
                _ => {}
            }
        }
    }

    /// Composes two hops in series: delays add, jitters add as independent variances,
    /// probabilities compound, the slower rate and the shorter queue win, a cut anywhere cuts
    /// the path. Correlations, distribution and burst-loss parameters come from the first hop
    /// that has them (an approximation: a path crossing two bursty links is modelled with the
    /// burstiness of the first).
    pub fn then(&self, next: &LinkParams) -> LinkParams {
        let add = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or_default() + b.unwrap_or_default()),
        };
        let jitter = match (self.jitter, next.jitter) {
            (None, None) => None,
            (a, b) => {
                let (x, y) = (
                    a.unwrap_or_default().as_secs_f64(),
                    b.unwrap_or_default().as_secs_f64(),
                );
                Some(Duration::from_secs_f64((x * x + y * y).sqrt()))
            }
        };
        let either = |a: f64, b: f64| 1.0 - (1.0 - a) * (1.0 - b);
        let first = |a: f64, b: f64| if a > 0.0 { a } else { b };
        let min_opt = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LinkParams {
            delay: add(self.delay, next.delay),
            jitter,
            distribution: self.distribution.or(next.distribution),
            correlation: first(self.correlation, next.correlation),
            loss: either(self.loss, next.loss),
            loss_correlation: first(self.loss_correlation, next.loss_correlation),
            gilbert_elliott: self.gilbert_elliott.or(next.gilbert_elliott),
            duplicate: either(self.duplicate, next.duplicate),
            corrupt: either(self.corrupt, next.corrupt),
            reorder: either(self.reorder, next.reorder),
            reorder_gap: self.reorder_gap.max(next.reorder_gap),
            rate: min_opt(self.rate, next.rate),
            limit: min_opt(self.limit.map(u64::from), next.limit.map(u64::from)).map(|v| v as u32),
            cut: self.cut || next.cut,
        }
    }
}

/// A WAN link between sites `a` and `b`; `up` is a→b, `down` is b→a.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub name: String,
    pub a: usize,
    pub b: usize,
    pub up: LinkParams,
    pub down: LinkParams,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub site: usize,
    pub profile_name: String,
    #[serde(skip)]
    pub profile: ProfileSpec,
    pub addr: Ipv4Addr,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsEndpoint {
    pub port: u16,
    pub path: String,
    pub format: MetricsFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: String,
    /// What runs, target-neutral (each target resolves it in its own validation).
    pub run: Run,
    /// Where the workload's `command`, `app` or `image` is in the file (for target errors).
    #[serde(skip)]
    pub pos: super::loc::Pos,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    #[serde(serialize_with = "ser_dur")]
    pub restart_delay: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_port: Option<u16>,
    #[serde(serialize_with = "ser_dur")]
    pub ready_timeout: Duration,
    /// Indices of the nodes an instance runs on.
    pub nodes: Vec<usize>,
    /// A program that replaces what `run` names (set through the library, e.g. a `cargo
    /// build` artifact): an app's binary, or a command's first word. Its arguments stay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
}

impl Workload {
    /// The arguments that follow the program: an app's or image's `args`, a command's words
    /// after the first.
    pub fn program_args(&self) -> Vec<String> {
        match &self.run {
            Run::App { args, .. } | Run::Image { args, .. } => args.clone(),
            Run::Command { argv } => argv.iter().skip(1).cloned().collect(),
        }
    }
}

/// What a workload runs, as the scenario says it: no host paths, no image tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Run {
    /// One of the apps of `images/`, with extra arguments.
    App { app: String, args: Vec<String> },
    /// A program and its arguments.
    Command { argv: Vec<String> },
    /// A container image (not portable: `docker` and `kind` only), with extra arguments.
    Image { image: String, args: Vec<String> },
}

impl Workload {
    /// The app of `images/` this runs, if any.
    pub fn app(&self) -> Option<&str> {
        match &self.run {
            Run::App { app, .. } => Some(app),
            _ => None,
        }
    }
}

/// A one-directional block: packets from any of `from` to any of `to` are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub from: Vec<usize>,
    pub to: Vec<usize>,
}

// `Impair` carries two full parameter sets and dwarfs the other variants; a plan holds at
// most a few thousand actions, built once, so boxing would only cost clarity.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum ActionKind {
    Partition {
        name: String,
        blocks: Vec<Block>,
    },
    Heal {
        names: Vec<String>,
    },
    /// Sets a link's parameters in both directions (the plan already merged what changed).
    Impair {
        link: usize,
        up: LinkParams,
        down: LinkParams,
    },
    NodeDown {
        nodes: Vec<usize>,
        mode: DownMode,
    },
    NodeUp {
        nodes: Vec<usize>,
        mode: DownMode,
    },
    Kill {
        workload: usize,
        nodes: Vec<usize>,
        signal: i32,
    },
    Restart {
        workload: usize,
        nodes: Vec<usize>,
    },
    /// Sets the CPU of nodes, in the profile's cores; `None` restores the profile's.
    Cpu {
        nodes: Vec<usize>,
        cores: Option<f64>,
    },
    /// Sets the memory limit of nodes in bytes; `None` restores the profile's.
    Memory {
        nodes: Vec<usize>,
        limit: Option<u64>,
    },
}

impl ActionKind {
    pub fn verb(&self) -> &'static str {
        match self {
            ActionKind::Partition { .. } => "partition",
            ActionKind::Heal { .. } => "heal",
            ActionKind::Impair { .. } => "impair",
            ActionKind::NodeDown { .. } => "node-down",
            ActionKind::NodeUp { .. } => "node-up",
            ActionKind::Kill { .. } => "kill",
            ActionKind::Restart { .. } => "restart",
            ActionKind::Cpu { .. } => "cpu",
            ActionKind::Memory { .. } => "memory",
        }
    }
}

/// One action of the flattened timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// Position in the realised order (0-based).
    pub seq: usize,
    #[serde(serialize_with = "ser_dur")]
    pub at: Duration,
    /// Index of the timeline entry this comes from.
    pub event: usize,
    /// Set on the automatic revert of a `for:` entry.
    pub revert: bool,
    /// Human-readable one-liner, e.g. `partition factory|cloud (p1)`.
    pub summary: String,
    #[serde(flatten)]
    pub kind: ActionKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum ProbeKind {
    Ping {
        target: String,
        addr: Ipv4Addr,
    },
    Tcp {
        target: String,
        addr: SocketAddrV4,
    },
    Http {
        url: String,
        target: String,
        addr: SocketAddrV4,
        /// Request target (path and query).
        path: String,
        /// `Host` header value.
        host: String,
        /// `None`: any 2xx.
        expect_status: Option<u16>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub name: String,
    pub from: usize,
    #[serde(flatten)]
    pub kind: ProbeKind,
    #[serde(serialize_with = "ser_dur")]
    pub every: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
}

impl Probe {
    /// The probe aimed at the address `real` gives for its target's scenario address: where a
    /// target's nodes have addresses of their own (boards, Kind nodes), not the plan's.
    pub fn with_addrs(&self, real: impl Fn(Ipv4Addr) -> Ipv4Addr) -> Probe {
        let mut p = self.clone();
        match &mut p.kind {
            ProbeKind::Ping { addr, .. } => *addr = real(*addr),
            ProbeKind::Tcp { addr, .. } | ProbeKind::Http { addr, .. } => {
                addr.set_ip(real(*addr.ip()));
            }
        }
        p
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Subject {
    Probe {
        probe: usize,
        window: Window,
        /// The probe a relative expectation takes its bound from (`lan` in
        /// `p50 < lan.p50 + 41ms`), judged over the same window.
        #[serde(skip_serializing_if = "Option::is_none")]
        reference: Option<usize>,
    },
    Metric {
        workload: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        json: Option<String>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        nodes: Vec<usize>,
        aggregate: Aggregate,
        at: Bound,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Assertion {
    pub name: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub expect: Expectation,
}

impl Plan {
    /// The host CPU as the run sees it: `host` slowed by `cpuScale`, so every quota computed
    /// from it shrinks by that factor.
    pub fn scaled_host(&self, host: &crate::profile::HostCpu) -> crate::profile::HostCpu {
        let mut h = host.clone();
        h.speed_per_core /= self.cpu_scale;
        h
    }

    /// What CPU shaping cannot model on a host where edgesim may use `host_cpus` CPUs: one
    /// line per profile whose board has more cores than that (its nodes run on every host
    /// CPU, so no more than `host_cpus` of its threads run at once).
    pub fn cpu_warnings(&self, host_cpus: usize) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.nodes
            .iter()
            .filter(|n| n.profile.cpu.cores as usize > host_cpus)
            .filter(|n| seen.insert(n.profile_name.clone()))
            .map(|n| {
                format!(
                    "profile {} has {} cores but this host gives edgesim {host_cpus} CPU{}: at \
                     most {host_cpus} of a node's threads run at once",
                    n.profile_name,
                    n.profile.cpu.cores,
                    if host_cpus == 1 { "" } else { "s" },
                )
            })
            .collect()
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
    pub fn workload_index(&self, name: &str) -> Option<usize> {
        self.workloads.iter().position(|w| w.name == name)
    }

    /// The effective impairment of traffic from site `from` to site `to`, composed along the
    /// shortest path of links (fewest hops; ties broken by link order), with `links` giving
    /// each link's current parameters. `None` when no path joins the sites.
    pub fn path_params(
        &self,
        links: &[(LinkParams, LinkParams)],
        from: usize,
        to: usize,
    ) -> Option<LinkParams> {
        if from == to {
            return Some(LinkParams::default());
        }
        // Breadth-first search over sites; `prev[s]` = (previous site, link, direction up?).
        let n = self.sites.len();
        let mut prev: Vec<Option<(usize, usize, bool)>> = vec![None; n];
        let mut seen = vec![false; n];
        let mut queue = std::collections::VecDeque::from([from]);
        seen[from] = true;
        while let Some(s) = queue.pop_front() {
            if s == to {
                break;
            }
            for (li, l) in self.links.iter().enumerate() {
                let (next, up) = if l.a == s {
                    (l.b, true)
                } else if l.b == s {
                    (l.a, false)
                } else {
                    continue;
                };
                if !seen[next] {
                    seen[next] = true;
                    prev[next] = Some((s, li, up));
                    queue.push_back(next);
                }
            }
        }
        if !seen[to] {
            return None;
        }
        let mut hops = Vec::new();
        let mut cur = to;
        while let Some((p, li, up)) = prev[cur] {
            hops.push(if up { links[li].0 } else { links[li].1 });
            cur = p;
        }
        hops.reverse();
        Some(
            hops.iter()
                .fold(LinkParams::default(), |acc, h| acc.then(h)),
        )
    }

    /// Whether any link is ever impaired (baseline or timeline): runs without impairments need
    /// no emulator.
    pub fn has_impairments(&self) -> bool {
        self.links
            .iter()
            .any(|l| !l.up.is_clear() || !l.down.is_clear())
            || self
                .actions
                .iter()
                .any(|a| matches!(a.kind, ActionKind::Impair { .. }))
    }

    /// Whether the userspace link emulator runs.
    pub fn uses_emulator(&self) -> bool {
        self.mechanism == Mechanism::Userspace && (self.live || self.has_impairments())
    }

    /// Every link's baseline parameters, as `(up, down)` pairs in link order.
    pub fn baseline_links(&self) -> Vec<(LinkParams, LinkParams)> {
        self.links.iter().map(|l| (l.up, l.down)).collect()
    }
}
