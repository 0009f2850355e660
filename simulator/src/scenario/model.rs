//! The scenario file as users write it (`apiVersion: edgesim.dev/v1alpha1`, `kind: Scenario`).
//!
//! These structs are the user-facing configuration only: they reject unknown fields, keep
//! source positions on every value a later check may complain about ([`Loc`]), and hold no
//! runtime state. [`super::plan`] turns them into the resolved, expanded plan that targets
//! execute. Field names are camelCase, as in Kubernetes manifests; timeline action keys that
//! users know from other tools keep their kebab-case spelling (`node-down`, `node-up`).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::loc::Loc;
use crate::profile::ProfileSpec;
use crate::units::{Bytes, Dur, Percent, Rate};

pub const API_VERSION: &str = "edgesim.dev/v1alpha1";
pub const KIND: &str = "Scenario";

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    /// Always `edgesim.dev/v1alpha1`.
    pub api_version: Loc<String>,
    /// Always `Scenario`.
    pub kind: Loc<String>,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Name of the scenario; names the lab (`edgesim down NAME`, `edgesim exec NAME …`).
    pub name: Loc<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Drives every random choice of the run. When absent a seed is drawn and reported, so
    /// the run can be replayed with `--seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How long the timeline plays (from the moment the workloads are started).
    pub duration: Loc<Dur>,
    /// Run the arm64 build of `app` workloads under qemu-user on nodes whose profile is arm64
    /// (much slower than native; checks the arm64 build, not its speed).
    #[serde(default)]
    pub emulate_arch: bool,
    /// What carries link impairments: `auto` (netem where the kernel has it, else the
    /// userspace emulator), `kernel` or `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impairment: Option<Loc<ImpairmentMode>>,
    /// Replayable impairments: forces the userspace emulator, whose every decision comes from
    /// the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deterministic: Option<Loc<bool>>,
    /// Slow every node's CPU by this factor (0 < x ≤ 1), to fit a lab whose boards together
    /// have more CPU than this host: a Pi 5 with `cpuScale: 0.25` gets a quarter of a Pi 5.
    /// Nodes keep their ratios to each other, so compare them with each other; scale
    /// request rates and deadlines by the same factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_scale: Option<Loc<f64>>,
    #[serde(default)]
    pub network: NetworkSpec,
    /// Hardware profiles defined inline, usable by name in `nodes[].profile`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub profiles: IndexMap<Loc<String>, ProfileSpec>,
    /// Sites (LAN segments), by name, in the order their subnets are allocated.
    pub sites: IndexMap<Loc<String>, SiteSpec>,
    /// WAN links between sites besides each site's `uplink`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkSpec>,
    pub nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<EventSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionSpec>,
}

/// What carries link impairments.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ImpairmentMode {
    /// netem where the kernel has it, the userspace emulator elsewhere.
    #[default]
    Auto,
    /// tc netem/htb and nftables.
    Kernel,
    /// The userspace link emulator (linkem).
    Userspace,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Private IPv4 pool the sites' subnets are carved from (default `10.90.0.0/16`). Every
    /// address lives inside the run's own namespaces, so runs never clash with each other or
    /// with the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Loc<String>>,
    /// MTU of every node interface (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Loc<u32>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SiteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The WAN link from this site to its parent site; named `<site>-uplink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<LinkSpec>,
}

/// Declares a struct that carries, besides its own fields, every impairment field, and a
/// method returning those as an [`Impairment`]. Links, their per-direction overrides and
/// `impair` actions share one list this way (serde's `flatten` would lose both
/// `deny_unknown_fields` and source positions).
macro_rules! with_impairment_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// Added one-way latency.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub delay: Option<Loc<Dur>>,
            /// Variation of the delay (at most the delay).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub jitter: Option<Loc<Dur>>,
            /// Shape of the jitter (default uniform).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub distribution: Option<Loc<Distribution>>,
            /// Correlation of successive delays.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub correlation: Option<Loc<Percent>>,
            /// Independent random loss.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub loss: Option<Loc<Percent>>,
            /// Correlation of successive loss decisions (bursty loss).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub loss_correlation: Option<Loc<Percent>>,
            /// Gilbert-Elliott two-state burst loss (instead of `loss`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gilbert_elliott: Option<Loc<GilbertElliott>>,
            /// Packets sent twice.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub duplicate: Option<Loc<Percent>>,
            /// Packets with one random bit flipped.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub corrupt: Option<Loc<Percent>>,
            /// Packets sent at once, ahead of delayed ones (needs a delay).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reorder: Option<Loc<Percent>>,
            /// Reorder only every N-th packet.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reorder_gap: Option<Loc<u32>>,
            /// Bandwidth cap.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rate: Option<Loc<Rate>>,
            /// Packets the link may queue (default 1000); more are dropped.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub limit: Option<Loc<u32>>,
        }

        impl $name {
            /// The impairment fields of this value.
            pub fn impairment(&self) -> Impairment {
                Impairment {
                    delay: self.delay.clone(),
                    jitter: self.jitter.clone(),
                    distribution: self.distribution.clone(),
                    correlation: self.correlation.clone(),
                    loss: self.loss.clone(),
                    loss_correlation: self.loss_correlation.clone(),
                    gilbert_elliott: self.gilbert_elliott.clone(),
                    duplicate: self.duplicate.clone(),
                    corrupt: self.corrupt.clone(),
                    reorder: self.reorder.clone(),
                    reorder_gap: self.reorder_gap.clone(),
                    rate: self.rate.clone(),
                    limit: self.limit.clone(),
                }
            }
        }
    };
}

with_impairment_fields! {
    /// A WAN link. As a site's `uplink` it names the parent `site`; in `links` it names the two
    /// sites it joins with `between`. Impairments given at the top apply in both directions;
    /// `up` and `down` override them per direction (`up`: from the site that owns the uplink,
    /// or the first site of `between`, towards the other).
    #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct LinkSpec {
        /// Uplinks only: the site at the other end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub site: Option<Loc<String>>,
        /// `links` entries only: the two sites joined.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub between: Option<Loc<Vec<Loc<String>>>>,
        /// `links` entries only (default `<a>-<b>`); an uplink is always `<site>-uplink`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<Loc<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub up: Option<Impairment>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub down: Option<Impairment>,
    }
}

with_impairment_fields! {
    /// Impairments of one direction of a link. Absent fields mean "no impairment" in a
    /// baseline and "unchanged" in a timeline `impair` action.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Impairment {}
}

impl Impairment {
    /// The fields set, each with where it was written (for conflict and capability checks).
    pub fn present(&self) -> Vec<(&'static str, super::loc::Pos)> {
        let mut v = Vec::new();
        macro_rules! f {
            ($($field:ident => $name:literal),*) => {
                $(if let Some(x) = &self.$field { v.push(($name, x.pos)); })*
            };
        }
        f!(delay => "delay", jitter => "jitter", distribution => "distribution",
           correlation => "correlation", loss => "loss", loss_correlation => "lossCorrelation",
           gilbert_elliott => "gilbertElliott", duplicate => "duplicate", corrupt => "corrupt",
           reorder => "reorder", reorder_gap => "reorderGap", rate => "rate", limit => "limit");
        v
    }
}

/// netem's jitter distributions (the same tables iproute2 ships).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

/// Gilbert-Elliott loss: a good and a bad state; `p` moves good → bad, `r` bad → good.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GilbertElliott {
    pub p: Percent,
    /// Default `100% - p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<Percent>,
    /// Loss in the bad state (default 100%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_in_bad: Option<Percent>,
    /// Loss in the good state (default 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_in_good: Option<Percent>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    /// Node name; with `count`, the nodes are `<name>-1` … `<name>-<count>`.
    pub name: Loc<String>,
    /// How many nodes this entry makes, 1 to 4000 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<Loc<u32>>,
    /// The site the nodes join. A site holds at most 1023 nodes (1022 when the userspace
    /// link emulator runs): it is one Linux bridge, which takes 1023 ports.
    pub site: Loc<String>,
    /// A profile from hardware-profiles/ (see `edgesim profiles`) or from `spec.profiles`.
    pub profile: Loc<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A command line: one string (split like a POSIX shell would, without running a shell) or a
/// list of arguments.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandLine {
    Line(String),
    Args(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsFormat {
    /// Prometheus / OpenMetrics text exposition.
    #[default]
    Prometheus,
    /// A JSON document; assertions pick a number with a JSON pointer (`json: /a/b`).
    Json,
}

/// Where a workload serves its metrics, scraped from inside the node.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsEndpoint {
    /// Default: the workload's `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Loc<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub format: MetricsFormat,
}

/// A program run on every node that `nodes` selects.
// `nodes` was first spelled `on`, a key YAML 1.1 parsers (PyYAML, Ansible, Go's yaml.v2 and so
// kubectl and kustomize) read as the boolean `true`. Both keys are fields rather than a serde
// alias so that validation can warn about `on` and reject the two together (an alias would
// hide which key was written). The schema asks for exactly one of them, so that it accepts
// what `edgesim validate` accepts, and marks `on` deprecated.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["nodes"]}, {"required": ["on"]}]))]
pub struct WorkloadSpec {
    pub name: Loc<String>,
    /// Node selectors: names, globs (`gw-*`), `site/NAME`, `label/KEY=VALUE`, or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>")]
    pub nodes: Option<Loc<Vec<Loc<String>>>>,
    /// Deprecated spelling of `nodes` (YAML 1.1 reads the key `on` as `true`); accepted with
    /// a warning while the format is `v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>", extend("deprecated" = true))]
    pub on: Option<Loc<Vec<Loc<String>>>>,
    /// The program and its arguments, run inside the node's namespace and cgroup. Give this
    /// or `app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Loc<CommandLine>>,
    /// One of the edge workloads of `images/` (`iot-collector`, `cloud-sink`, `edge-web`,
    /// `edge-cache`, `inference`, `offline-first`), with its metrics endpoint and readiness
    /// check preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<Loc<String>>,
    /// A container image to run (e.g. `registry.example/team/svc:1.4`; its entrypoint, then
    /// `args`). Only the `docker` and `kind` targets run images: a scenario that names one is
    /// not portable, and `netns` refuses it before anything is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Loc<String>>,
    /// Extra arguments for `app` or `image` (for `command`, put them in the command).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// The port the workload serves on (apps: default 8080). Exported as `PORT`; the default
    /// of `readyPort` for apps and of `metrics.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Loc<u16>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Pause before a restart (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<Loc<Dur>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsEndpoint>,
    /// Port the workload listens on; when set, the timeline waits until it accepts TCP
    /// connections before it starts (bounded by `readyTimeout`, default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_port: Option<Loc<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<Loc<Dur>>,
}

/// One entry of the timeline: when, for how long, and exactly one action.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventSpec {
    /// Offset from the start of the timeline.
    pub at: Loc<Dur>,
    /// When set, the action is reverted automatically this long after it was applied.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<Loc<Dur>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<HealAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair: Option<ImpairAction>,
    #[serde(default, rename = "node-down", skip_serializing_if = "Option::is_none")]
    pub node_down: Option<NodeDownAction>,
    #[serde(default, rename = "node-up", skip_serializing_if = "Option::is_none")]
    pub node_up: Option<NodesAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<FlapAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceAction>,
}

/// Take a link down and up again repeatedly while the entry lasts (`for` is required): it
/// stays up for a time drawn from `up`, then down for a time drawn from `down`, and so on,
/// all drawn from the scenario's seed, so the schedule is the same on every replay (`edgesim
/// plan` shows it).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlapAction {
    pub link: Loc<String>,
    /// How long the link stays up each time: `2s` or `fixed(2s)`, `uniform(1s..3s)` (or
    /// `"uniform(1s, 3s)"`), `exp(5s)` (exponential with that mean).
    pub up: Loc<Draw>,
    /// How long the link stays down each time.
    pub down: Loc<Draw>,
}

/// Replay a recorded link: a CSV file (relative to the scenario) with a `time` column and any
/// of `rate`, `delay`, `jitter`, `loss` (values with units; an empty cell leaves the field
/// unchanged). Each row applies at `at + time`. With `for`, the fields are restored when it
/// ends (and `repeat` loops the trace until then).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceAction {
    pub link: Loc<String>,
    pub file: Loc<String>,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub repeat: bool,
}

/// A random duration: `fixed(D)` (or just `D`), `uniform(A, B)`, `exp(MEAN)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    Fixed(Dur),
    Uniform(Dur, Dur),
    Exp(Dur),
}

impl Draw {
    /// Draws one duration, never shorter than 1 ms (a flap phase needs some length).
    pub fn sample(&self, rng: &mut impl rand::Rng) -> std::time::Duration {
        use rand::RngExt;
        let secs = match *self {
            Draw::Fixed(d) => d.as_secs_f64(),
            Draw::Uniform(a, b) => {
                a.as_secs_f64() + (b.as_secs_f64() - a.as_secs_f64()) * rng.random::<f64>()
            }
            // Inverse CDF of the exponential distribution; 1 - u is in (0, 1].
            Draw::Exp(m) => -m.as_secs_f64() * (1.0 - rng.random::<f64>()).ln(),
        };
        std::time::Duration::from_secs_f64(secs.max(0.001))
    }
}

impl std::str::FromStr for Draw {
    type Err = crate::units::UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::units::UnitError(format!(
                "invalid duration distribution `{s}`: write `2s`, `fixed(2s)`, `uniform(1s..3s)` or `exp(5s)` (in a `{{...}}` YAML mapping, quote a form with a comma)"
            ))
        };
        let t = s.trim();
        let Some((f, rest)) = t.split_once('(') else {
            return t.parse().map(Draw::Fixed);
        };
        let args = rest.strip_suffix(')').ok_or_else(bad)?;
        // `uniform(1s, 3s)` or, comma-free for YAML flow mappings, `uniform(1s..3s)`.
        let parts: Vec<Dur> = args
            .split([','])
            .flat_map(|a| a.split(".."))
            .map(|a| a.trim().parse::<Dur>())
            .collect::<Result<_, _>>()?;
        match (f.trim(), parts.as_slice()) {
            ("fixed", [d]) => Ok(Draw::Fixed(*d)),
            ("exp", [m]) if !m.is_zero() => Ok(Draw::Exp(*m)),
            ("uniform", [a, b]) if a <= b => Ok(Draw::Uniform(*a, *b)),
            ("uniform", [_, _]) => Err(crate::units::UnitError(format!(
                "`{s}`: the lower bound is above the upper one"
            ))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Draw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Draw::Fixed(d) => write!(f, "fixed({d})"),
            Draw::Uniform(a, b) => write!(f, "uniform({a}..{b})"),
            Draw::Exp(m) => write!(f, "exp({m})"),
        }
    }
}

impl Serialize for Draw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Draw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: crate::units::UnitError| serde::de::Error::custom(e.0))
    }
}

impl JsonSchema for Draw {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Draw".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "a duration (`2s`), or `fixed(2s)`, `uniform(1s..3s)`, `exp(5s)`",
        })
    }
}

/// Cut traffic between groups of nodes. Either `between` (two or more groups of selectors;
/// traffic between any two groups is dropped) or `isolate` (the selected nodes, or `pick` of
/// them chosen with the scenario seed, lose contact with every other node).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PartitionAction {
    /// Name for `heal: {name: …}`; default `partition-<n>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Loc<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub between: Option<Loc<Vec<Vec<Loc<String>>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate: Option<Loc<Vec<Loc<String>>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick: Option<Loc<u32>>,
    /// Drop only traffic from the first group to the others; traffic from the others to the
    /// first group still arrives (rules do not track connections, so a reply from the first
    /// group is dropped too: a ping fails, a UDP stream flows one way).
    #[serde(default)]
    pub one_way: bool,
}

/// Heal one named partition, or every partition when no name is given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Loc<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    #[default]
    Both,
    Up,
    Down,
}

with_impairment_fields! {
    /// Change a link's impairments; fields not given stay as they are.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ImpairAction {
        pub link: Loc<String>,
        #[serde(default)]
        pub direction: Direction,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DownMode {
    /// Link down and every workload on the node killed; `node-up` starts them again.
    #[default]
    Poweroff,
    /// Link down and the node's processes frozen (a hung board); `node-up` thaws them.
    Freeze,
    /// Link down only; processes keep running without a network.
    Isolate,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeDownAction {
    pub nodes: Loc<Vec<Loc<String>>>,
    #[serde(default)]
    pub mode: DownMode,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodesAction {
    pub nodes: Loc<Vec<Loc<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KillAction {
    pub workload: Loc<String>,
    /// Restrict to instances on these nodes (default: every instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Loc<Vec<Loc<String>>>>,
    /// Signal name (default `KILL`): `TERM`, `INT`, `HUP`, `KILL`, `STOP`, `CONT`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Loc<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestartAction {
    pub workload: Loc<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Loc<Vec<Loc<String>>>>,
}

/// Change the CPU a node gets, live: `cores` in the profile's own cores (a Pi 5 has 4), or
/// `percent` of what the profile gives.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CpuAction {
    pub nodes: Loc<Vec<Loc<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<Loc<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<Loc<Percent>>,
}

/// Change a node's memory limit, live.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryAction {
    pub nodes: Loc<Vec<Loc<String>>>,
    pub limit: Loc<Bytes>,
}

/// A probe runs from inside a node at a fixed interval: exactly one of `ping`, `tcp`, `http`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProbeSpec {
    pub name: Loc<String>,
    /// The node the probe runs in.
    pub from: Loc<String>,
    /// ICMP echo to a node name (or an IPv4 address inside the lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Loc<String>>,
    /// TCP connect to `node:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Loc<String>>,
    /// HTTP GET of `http://node:port/path`; success is a 2xx status unless `expectStatus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Loc<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Loc<u16>>,
    /// Interval between attempts (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Loc<Dur>>,
    /// How long one attempt may take (default 1s; attempts may overlap when it exceeds the
    /// interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Loc<Dur>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    /// Sum over matching series and workload instances.
    #[default]
    Sum,
    Max,
    Min,
    Avg,
    /// How many different values there are (e.g. `== 1`: every replica reports the same
    /// state digest).
    Distinct,
}

/// A number read from a workload's metrics endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricRef {
    pub workload: Loc<String>,
    /// Prometheus metric name (format `prometheus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Loc<String>>,
    /// JSON pointer into the document (format `json`), e.g. `/stats/missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Loc<String>>,
    /// Only series with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Only instances on these nodes (default: all instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Loc<Vec<Loc<String>>>>,
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// A check over probe results in a window, or over a workload metric at an instant.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AssertionSpec {
    pub name: Loc<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Loc<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricRef>,
    /// Probe window `FROM..TO` (offsets such as `16s..34s`; `start` and `end` allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during: Option<Loc<String>>,
    /// Metric instant: an offset such as `30s`, or `end` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Loc<String>>,
    /// `STAT OP VALUE`, e.g. `success_rate >= 99%`, `p99 < 150ms`; for metrics `OP VALUE`.
    pub expect: Loc<String>,
}
