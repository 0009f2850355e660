//! Targets: where a scenario's nodes become real, behind one enum that the engine drives
//! without naming any of them (youki-style enum dispatch: no `dyn`, no async-trait).
//!
//! - [`netns`] (default): network namespaces and cgroups on this host; workloads are processes.
//! - [`docker`]: one container per node (Docker Engine API), joined to the same fabric;
//!   workloads are containers and processes inside the node containers.
//! - [`device`]: physical boards from an inventory, over SSH, each with its own agent that
//!   applies the board's share of the faults under a lease ([`device::lab`]).
//! - [`kind`]: a Kind cluster made for the run, its worker containers shaped to their boards,
//!   workloads delivered as pods by Flux from an artifact the run pushes, faults installed
//!   inside the node containers with the kubelet ↔ API server traffic exempt
//!   ([`kind::lab`], behind the default `kube` feature).
//!
//! What every target shares lives outside them: the network ([`crate::fabric`]), the faults
//! and their journal ([`crate::faults`]), workload supervision ([`crate::workload`]), the
//! state file ([`state`], in which each target owns a tagged part). A run goes:
//! [`capabilities`] (validation reads them) → [`resolve`] (each target turns the plan's
//! target-neutral workloads into what it runs, before anything is created) →
//! [`Lab::provision`] → [`Lab::deploy`] → [`Lab::apply`] per action → [`Lab::teardown`];
//! [`cleanup`] removes what a dead run left, from its state file alone.
//!
//! Also here: what this machine can do ([`probe`], [`doctor`]), as one capability table per
//! target ([`crate::caps`]) that validation enforces and `doctor` prints.

pub mod device;
pub mod docker;
pub mod kind;
pub mod netns;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::caps::{Capabilities, Feature, Support};
use crate::faults::Faults;
use crate::faults::emulator::EmulatorOptions;
use crate::faults::shaping::Prepared;
use crate::host::cgroup::Cgroups;
use crate::host::ns::SocketFactory;
use crate::host::{HostError, Result};
use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::plan::ActionKind;
use crate::workload::{EventLog, InstanceSpec, LaunchSpec};

use self::state::{Mode, RunState, TargetState};

/// The targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    #[default]
    Netns,
    Docker,
    Device,
    Kind,
}

impl TargetKind {
    pub const ALL: [TargetKind; 4] = [
        TargetKind::Netns,
        TargetKind::Docker,
        TargetKind::Device,
        TargetKind::Kind,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Netns => "netns",
            TargetKind::Docker => "docker",
            TargetKind::Device => "device",
            TargetKind::Kind => "kind",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the running kernel offers sch_netem, without root: loaded, or present as a module
/// file, or built in according to the kernel's config. (Root can probe for sure with
/// [`crate::host::tc::kernel_has_qdisc`].)
pub fn netem_on_disk() -> bool {
    if std::path::Path::new("/sys/module/sch_netem").exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let modules = std::path::Path::new("/lib/modules").join(&release);
    let found = [
        "kernel/net/sched/sch_netem.ko",
        "kernel/net/sched/sch_netem.ko.xz",
        "kernel/net/sched/sch_netem.ko.zst",
        "kernel/net/sched/sch_netem.ko.gz",
    ]
    .iter()
    .any(|f| modules.join(f).exists());
    found
        || std::fs::read_to_string(format!("/boot/config-{release}"))
            .map(|c| {
                c.lines()
                    .any(|l| l == "CONFIG_NET_SCH_NETEM=y" || l == "CONFIG_NET_SCH_NETEM=m")
            })
            .unwrap_or(false)
}

/// Whether the kernel has netem: probed in a scratch namespace when root, else from disk.
pub async fn kernel_has_netem() -> bool {
    if nix::unistd::geteuid().is_root()
        && let Ok(v) = crate::host::tc::kernel_has_qdisc("netem").await
    {
        return v;
    }
    netem_on_disk()
}

/// What this machine offers, probed once (kernel features in scratch namespaces when root).
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub root: bool,
    pub kernel: String,
    pub netns: std::result::Result<(), String>,
    pub tbf: bool,
    pub htb: bool,
    pub netem: bool,
    pub nft: std::result::Result<(), String>,
    pub cgroups: std::result::Result<Cgroups, String>,
    pub binfmt_arm64: bool,
    pub docker: std::result::Result<docker::DockerInfo, String>,
}

/// Probes this machine for every target. Without root, kernel features are judged from disk.
pub async fn probe() -> HostProbe {
    probe_for(None).await
}

/// Probes what target `kind` needs (every target's needs with `None`): the Docker Engine is
/// asked only when the docker target is concerned.
pub async fn probe_for(kind: Option<TargetKind>) -> HostProbe {
    let root = nix::unistd::geteuid().is_root();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_default();
    let (mut tbf, mut htb, mut netem) = (false, false, netem_on_disk());
    let netns = if root {
        crate::host::tc::ScratchNs::create("doctor")
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        Err("needs root to check".into())
    };
    if root {
        for (kind, slot) in [("tbf", &mut tbf), ("htb", &mut htb), ("netem", &mut netem)] {
            if let Ok(v) = crate::host::tc::kernel_has_qdisc(kind).await {
                *slot = v;
            }
        }
    }
    // nf_tables in the kernel, tried for real: a table applied and deleted in a scratch
    // namespace (edgesim speaks netlink to it; the `nft` program is not needed).
    let nft = if root {
        crate::host::tc::ScratchNs::create("doctor")
            .and_then(|s| {
                let fw = crate::host::nft::Firewall::new(&s.0, "edgesim-doctor")?;
                fw.apply(&crate::host::nft::Ruleset::default())?;
                fw.delete()
            })
            .map_err(|e| e.to_string())
    } else {
        Err("needs root to check".into())
    };
    let cgroups = Cgroups::detect().map_err(|e| e.to_string());
    let binfmt_arm64 = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .is_ok_and(|s| s.lines().next() == Some("enabled"));
    let docker = match kind {
        None | Some(TargetKind::Docker | TargetKind::Kind) => docker::probe().await,
        Some(TargetKind::Netns | TargetKind::Device) => Err("not probed (not a docker run)".into()),
    };
    HostProbe {
        root,
        kernel,
        netns,
        tbf,
        htb,
        netem,
        nft,
        cgroups,
        binfmt_arm64,
        docker,
    }
}

/// The rows every target that builds its network with [`crate::fabric`] shares: links,
/// partitions and node isolation are done in the fabric namespace on this host.
fn fabric_rows(c: &mut Capabilities, p: &HostProbe) {
    let nft = p.nft.is_ok();
    let emulated =
        "linkem, the userspace emulator (seeded; `impairment: auto` picks it without netem)";
    let link = |c: &mut Capabilities, f: Feature, kernel_ok: bool, how: &str| {
        if kernel_ok {
            c.set(f, Support::Exact, how);
        } else {
            c.set(f, Support::Emulated, emulated);
        }
    };
    if nft {
        c.set(
            Feature::Partition,
            Support::Exact,
            "nftables drop rules in the fabric namespace (routed and bridged)",
        );
    } else {
        c.set(
            Feature::Partition,
            Support::Unavailable,
            "needs nf_tables in the kernel",
        );
    }
    link(
        c,
        Feature::Loss,
        nft,
        "nftables `numgen random` drop rules (netem when correlated)",
    );
    link(
        c,
        Feature::Rate,
        p.netem && p.htb,
        "tc htb classes on the destination site's bridge",
    );
    link(c, Feature::Delay, p.netem, "tc netem under the htb class");
    link(c, Feature::BurstLoss, p.netem, "tc netem");
    link(c, Feature::DuplicateCorruptReorder, p.netem, "tc netem");
    link(
        c,
        Feature::FlapTrace,
        p.netem,
        "the same mechanisms, changed on schedule",
    );
    c.set(
        Feature::Deterministic,
        Support::Emulated,
        "always linkem: every decision comes from the seed",
    );
    if p.root {
        c.set(
            Feature::NodeIsolate,
            Support::Exact,
            "the node's veth carrier down in the fabric",
        );
    } else {
        c.set(Feature::NodeIsolate, Support::Unavailable, "needs root");
    }
    c.netem_hint = "this kernel has no sch_netem (tc netem); `impairment: auto` or `userspace` runs the same \
         impairments in the userspace link emulator instead (`edgesim doctor` shows what this machine offers)"
        .into();
}

/// What target `kind` can do on this machine, from a probe: the one table that validation
/// enforces and `doctor` prints.
pub fn capabilities(kind: TargetKind, p: &HostProbe) -> Capabilities {
    let mut c = Capabilities::new(kind.name());
    match kind {
        TargetKind::Netns => {
            fabric_rows(&mut c, p);
            netns_rows(&mut c, p);
        }
        TargetKind::Docker => {
            fabric_rows(&mut c, p);
            docker::rows(&mut c, p);
        }
        TargetKind::Device => device::rows(&mut c),
        TargetKind::Kind => kind::nodes::rows(&mut c, p.netem),
    }
    c
}

fn netns_rows(c: &mut Capabilities, p: &HostProbe) {
    let cg = p.cgroups.as_ref().ok();
    let has = |k: &str| cg.is_some_and(|c| c.has(k));
    let row = |c: &mut Capabilities, f: Feature, ok: bool, how: &str, missing: &str| {
        if ok {
            c.set(f, Support::Exact, how);
        } else {
            c.set(f, Support::Unavailable, missing);
        }
    };
    row(
        c,
        Feature::NodeFreeze,
        has("freezer") || cg.is_some_and(|c| c.version() == 2),
        "the node's cgroup frozen (freezer / cgroup.freeze)",
        "needs the cgroup freezer",
    );
    row(
        c,
        Feature::NodePoweroff,
        true,
        "workloads killed and kept down, veth carrier down",
        "",
    );
    row(
        c,
        Feature::KillRestart,
        true,
        "signals to the workload's process group",
        "",
    );
    row(
        c,
        Feature::Cpu,
        has("cpu"),
        "the node cgroup's CFS quota, changed live",
        "needs the cgroup cpu controller",
    );
    row(
        c,
        Feature::Memory,
        has("memory"),
        "the node cgroup's memory limit, changed live",
        "needs the cgroup memory controller",
    );
    c.set(
        Feature::BlockIo,
        Support::Unavailable,
        "netns does not throttle block IO (the docker target enforces the profiles' storage)",
    );
    row(
        c,
        Feature::AppWorkload,
        true,
        "the app's native build, a process in the node (EDGESIM_APPS, next to edgesim, PATH)",
        "",
    );
    row(
        c,
        Feature::CommandWorkload,
        true,
        "a host program run inside the node's namespace and cgroup",
        "",
    );
    c.set(
        Feature::ImageWorkload,
        Support::Unavailable,
        "netns runs no images: use `--target docker` (or kind), or `app:`/`command:`",
    );
    let qemu = p.binfmt_arm64 || crate::workload::apps::arm64_runner().is_ok();
    row(
        c,
        Feature::Arm64Emulation,
        qemu,
        "the app's aarch64 build under qemu-user",
        "needs qemu-user (apt-get install qemu-user-static binfmt-support)",
    );
}

/// The phrases of `needs` whose condition does not hold here.
fn unmet(needs: &[(bool, &str)]) -> Vec<String> {
    needs
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| (*what).to_string())
        .collect()
}

/// What keeps target `kind` from running here at all (empty: it can), each as a short phrase.
pub fn missing(kind: TargetKind, p: &HostProbe) -> Vec<String> {
    let have = crate::testing::have_program;
    let (root, netns, nft) = (
        (p.root, "root"),
        (p.netns.is_ok(), "network namespaces"),
        (p.nft.is_ok(), "nf_tables"),
    );
    let docker = (p.docker.is_ok(), "a Docker Engine that answers");
    unmet(&match kind {
        TargetKind::Netns => vec![root, netns, nft],
        TargetKind::Docker => vec![root, netns, nft, docker],
        // The controller needs ssh; what each board can do is checked against it at the run.
        TargetKind::Device => vec![(have("ssh"), "`ssh` on PATH")],
        TargetKind::Kind => vec![
            (cfg!(feature = "kube"), "a build with the `kube` feature"),
            root,
            netns,
            nft,
            docker,
            (have("kind"), "`kind` on PATH"),
            (have("flux"), "`flux` on PATH"),
        ],
    })
}

/// For the kind target: whether a cluster of your own (`--kubeconfig`, `--registry`) can be
/// driven from here. It needs neither `kind` nor this host's namespaces and nf_tables (the
/// agents on the nodes apply the faults): root (as every `edgesim run` but the device
/// target's), the `kube` feature, `flux`, and a Docker Engine to push the images.
fn existing_cluster_note(p: &HostProbe) -> String {
    let m = unmet(&[
        (p.root, "root"),
        (cfg!(feature = "kube"), "a build with the `kube` feature"),
        (crate::testing::have_program("flux"), "`flux` on PATH"),
        (p.docker.is_ok(), "a Docker Engine that answers"),
    ]);
    if m.is_empty() {
        "a cluster of your own (--kubeconfig FILE --registry REF): usable".into()
    } else {
        format!(
            "a cluster of your own (--kubeconfig FILE --registry REF) needs {}",
            m.join(", ")
        )
    }
}

/// Probes and returns target `kind`'s capabilities (for validation).
pub async fn capabilities_here(kind: TargetKind) -> Capabilities {
    capabilities(kind, &probe_for(Some(kind)).await)
}

/// What a target runs for a plan's workloads, resolved before anything is created.
pub enum Resolved {
    Netns(netns::Programs),
    Docker(docker::Images),
    Device(device::lab::Bound),
    #[cfg(feature = "kube")]
    Kind(Box<kind::lab::Bound>),
}

impl Resolved {
    pub fn kind(&self) -> TargetKind {
        match self {
            Resolved::Netns(_) => TargetKind::Netns,
            Resolved::Docker(_) => TargetKind::Docker,
            Resolved::Device(_) => TargetKind::Device,
            #[cfg(feature = "kube")]
            Resolved::Kind(_) => TargetKind::Kind,
        }
    }
}

/// What resolving needs beyond the plan: the device target's inventory; the kind target's
/// cluster of your own and its registry.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    pub inventory: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub registry: Option<String>,
}

/// Reads workloads' metrics where probes run on the nodes themselves: through their agents
/// (boards over SSH, a cluster's over the API server).
pub type Fetcher = device::fleet::Fetcher;

/// The target's own validation of a plan: every workload resolved to what it runs (a host
/// binary, an image that exists), every target-specific need checked. Nothing is created.
/// Errors point at the workload's entry in the file.
pub async fn resolve(
    kind: TargetKind,
    plan: &Plan,
    opts: &ResolveOptions,
) -> std::result::Result<Resolved, Vec<Diagnostic>> {
    match kind {
        TargetKind::Netns => netns::resolve(plan).map(Resolved::Netns),
        TargetKind::Docker => docker::resolve(plan).await.map(Resolved::Docker),
        TargetKind::Device => device::lab::resolve(plan, opts.inventory.as_deref())
            .await
            .map(Resolved::Device),
        #[cfg(feature = "kube")]
        TargetKind::Kind => kind::lab::resolve(
            plan,
            &kind::lab::Options {
                kubeconfig: opts.kubeconfig.clone(),
                registry: opts.registry.clone(),
            },
        )
        .await
        .map(|b| Resolved::Kind(Box::new(b))),
        #[cfg(not(feature = "kube"))]
        TargetKind::Kind => Err(vec![Diagnostic::new(
            crate::scenario::loc::Pos::UNKNOWN,
            "this edgesim was built without the `kube` feature: it cannot drive a Kind cluster",
        )]),
    }
}

/// A lab that is up, on whichever target.
pub enum Lab {
    Netns(Box<netns::NetnsLab>),
    Docker(Box<docker::DockerLab>),
    Device(Box<device::lab::DeviceLab>),
    #[cfg(feature = "kube")]
    Kind(Box<kind::lab::KindLab>),
}

/// A provisioning failure: the error, and what was created (the caller tears it down).
pub struct ProvisionFailure {
    pub error: String,
    pub partial: Partial,
}

/// What a failed provisioning left.
pub enum Partial {
    Netns(netns::Partial),
    Docker(docker::Partial),
    Device(device::lab::Partial),
    #[cfg(feature = "kube")]
    Kind(Box<kind::lab::Partial>),
}

impl Partial {
    pub async fn teardown(self) -> Vec<String> {
        match self {
            Partial::Netns(p) => p.teardown().await,
            Partial::Docker(p) => p.teardown().await,
            Partial::Device(p) => p.teardown().await,
            #[cfg(feature = "kube")]
            Partial::Kind(p) => p.teardown().await,
        }
    }
}

/// How a lab is built.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    pub mode: Option<Mode>,
    /// Captures and decision logs of the userspace link emulator.
    pub emulator: EmulatorOptions,
}

/// The targets whose network is a [`crate::fabric`] on this host (netns, docker); `$other`
/// for the device target; `$kind` for the kind target.
macro_rules! each {
    ($self:expr, $l:ident => $e:expr, $d:ident => $other:expr, $k:ident => $kind:expr) => {
        match $self {
            Lab::Netns($l) => $e,
            Lab::Docker($l) => $e,
            Lab::Device($d) => $other,
            #[cfg(feature = "kube")]
            Lab::Kind($k) => $kind,
        }
    };
}

impl Lab {
    /// Builds the lab of `plan` on the target that `resolved` came from.
    pub async fn provision(
        plan: Arc<Plan>,
        resolved: Resolved,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
        emu: &EmulatorOptions,
    ) -> std::result::Result<Lab, Box<ProvisionFailure>> {
        // Room for the descriptors of a large lab (idempotent; the binary did it at startup).
        if let Err(e) = crate::host::rlimit::raise_nofile() {
            tracing::warn!("could not raise the open-file limit: {e}");
        }
        match resolved {
            Resolved::Netns(programs) => {
                let st = netns::initial_state(&plan, run_id, mode, out_dir);
                netns::NetnsLab::provision(plan, programs, st, emu)
                    .await
                    .map(|l| Lab::Netns(Box::new(l)))
                    .map_err(|e| {
                        let e = *e;
                        Box::new(ProvisionFailure {
                            error: e.error.to_string(),
                            partial: Partial::Netns(e.partial),
                        })
                    })
            }
            Resolved::Docker(images) => {
                docker::DockerLab::provision(plan, images, run_id, mode, out_dir, emu)
                    .await
                    .map(|l| Lab::Docker(Box::new(l)))
                    .map_err(|e| {
                        let e = *e;
                        Box::new(ProvisionFailure {
                            error: e.error.to_string(),
                            partial: Partial::Docker(e.partial),
                        })
                    })
            }
            Resolved::Device(bound) => {
                device::lab::DeviceLab::provision(plan, bound, run_id, mode, out_dir)
                    .await
                    .map(|l| Lab::Device(Box::new(l)))
                    .map_err(|e| {
                        let (error, partial) = *e;
                        Box::new(ProvisionFailure {
                            error,
                            partial: Partial::Device(partial),
                        })
                    })
            }
            #[cfg(feature = "kube")]
            Resolved::Kind(bound) => {
                kind::lab::KindLab::provision(plan, *bound, run_id, mode, out_dir)
                    .await
                    .map(|l| Lab::Kind(Box::new(l)))
                    .map_err(|e| {
                        let (error, partial) = *e;
                        Box::new(ProvisionFailure {
                            error,
                            partial: Partial::Kind(Box::new(partial)),
                        })
                    })
            }
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Lab::Netns(_) => TargetKind::Netns,
            Lab::Docker(_) => TargetKind::Docker,
            Lab::Device(_) => TargetKind::Device,
            #[cfg(feature = "kube")]
            Lab::Kind(_) => TargetKind::Kind,
        }
    }

    pub fn state(&self) -> &RunState {
        each!(self, l => &l.state, d => &d.state, k => k.state())
    }

    /// The run's network on this host (namespace handles and interface indexes); none for
    /// boards and Kind nodes.
    pub fn fabric(&self) -> Option<&crate::fabric::Fabric> {
        each!(self, l => Some(&l.fabric), _d => None, _k => None)
    }

    /// Starts every workload and waits until each has launched (so the pids in the state
    /// file and the processes a caller of `edgesim up` finds are all there) and every
    /// `readyPort` accepts connections.
    pub async fn deploy(&mut self, out_dir: &Path) -> std::result::Result<(), String> {
        each!(self, l => {
            l.deploy(out_dir).await.map_err(|e| e.to_string())?;
            l.nodes.supervisor.launched().await;
            let (fabric, sockets) = (&l.fabric, &mut l.sockets);
            wait_ports(&l.plan, |n| crate::fabric::node_sockets(fabric, sockets, n)).await
        }, d => d.deploy(out_dir).await, k => k.deploy(out_dir).await)
    }

    /// Marks the lab ready in its state file (for `up`, `exec`).
    pub fn mark_ready(&mut self) -> Result<()> {
        each!(self, l => l.mark_ready(), d => d.mark_ready(), k => k.mark_ready())
    }

    /// Probe `p` as this lab runs it: aimed at the address its target node has here (boards
    /// and Kind nodes have addresses of their own).
    pub fn localize(&self, p: &crate::scenario::plan::Probe) -> crate::scenario::plan::Probe {
        each!(self, _l => p.clone(), _d => p.clone(), k => p.with_addrs(|a| k.real_addr(a)))
    }

    /// What the lab has to add to the report's notes (Flux's delivery and convergence times on
    /// kind).
    pub fn take_notes(&mut self) -> Vec<String> {
        each!(self, _l => Vec::new(), _d => Vec::new(), k => k.take_notes())
    }

    /// Whether probes run on the nodes themselves ([`Lab::start_probes`]) rather than from
    /// this process through [`Lab::sockets`].
    pub fn remote_probes(&self) -> bool {
        each!(self, _l => false, _d => true, k => k.remote_probes())
    }

    /// A socket factory inside node `node`'s network namespace, for probes and scrapes.
    pub fn sockets(&mut self, node: usize) -> Result<SocketFactory> {
        each!(self, l => crate::fabric::node_sockets(&l.fabric, &mut l.sockets, node),
            _d => Err(HostError::other("opening sockets in", format!("node {node}"), "a board's probes run on the board")),
            k => k.sockets(node))
    }

    /// Reads workloads' metrics through the nodes' agents (boards, a cluster of your own).
    pub fn fetcher(&self) -> Option<Fetcher> {
        each!(self, _l => None, d => Some(d.fetcher()), k => k.fetcher())
    }

    /// Starts the probes on the nodes (remote probes only), on a grid from `t0`.
    pub async fn start_probes(&mut self, t0: tokio::time::Instant) -> Result<()> {
        each!(self, _l => Ok(()), d => d.start_probes(t0).await, k => k.start_probes(t0).await)
    }

    /// The samples of remote probes, into `logs` (one per plan probe); problems as notes.
    pub async fn collect_probes(&mut self, logs: &[crate::probe::ProbeLog]) -> Vec<String> {
        each!(self, _l => Vec::new(), d => d.collect_probes(logs).await, k => k.collect_probes(logs).await)
    }

    /// Work to do before an action's scheduled instant (see [`Faults::prepare`]).
    pub fn prepare(&mut self, action: &ActionKind) -> Option<Prepared> {
        each!(self, l => l.faults.prepare(action), _d => None, _k => None)
    }

    /// Applies one timeline action: the fault module, on the lab's fabric and its target's
    /// node operations (on boards: their agents).
    pub async fn apply(&mut self, action: &ActionKind, prepared: Option<Prepared>) -> Result<()> {
        each!(self, l => l.faults.apply(action, prepared, &l.fabric, &mut l.nodes).await,
            d => d.apply(action).await, k => k.apply(action).await)
    }

    /// The fault state of a lab on this host: what is in force, link statistics of the
    /// userspace emulator (none for boards and Kind nodes).
    pub fn faults(&self) -> Option<&Faults> {
        each!(self, l => Some(&l.faults), _d => None, _k => None)
    }

    /// Whether the userspace link emulator carries the links.
    pub fn userspace(&self) -> bool {
        self.faults().is_some_and(Faults::userspace)
    }

    /// The workloads' event log (starts, exits, restarts, signals).
    pub fn events(&self) -> EventLog {
        each!(self, l => l.nodes.supervisor.log.clone(), d => d.supervisor.log.clone(), k => k.workloads.events.clone())
    }

    /// Limits node `n` is held to now, read back from the kernel (or the daemon).
    pub async fn read_limits(&self, n: usize) -> Result<crate::profile::NodeLimits> {
        match self {
            Lab::Netns(l) => l.read_limits(n),
            Lab::Docker(l) => l.read_limits(n).await,
            Lab::Device(_) => Err(HostError::other(
                "reading the limits of",
                format!("node {n}"),
                "a board's resources are its own",
            )),
            #[cfg(feature = "kube")]
            Lab::Kind(k) => k.read_limits(n).await,
        }
    }

    /// Reverts every fault, stops workloads, removes everything. Keeps going past errors.
    pub async fn teardown(self, grace: Duration) -> Vec<String> {
        each!(self, l => l.teardown(grace).await, d => d.teardown(grace).await, k => k.teardown().await)
    }
}

/// Removes everything the run described by `state` may have created, on its target.
///
/// Guarantees: idempotent; keeps going past errors; "already gone" is success.
pub async fn cleanup(state: &RunState) -> Vec<String> {
    match &state.target {
        TargetState::Netns(_) => netns::cleanup_state(state).await,
        TargetState::Docker(_) => docker::cleanup_state(state).await,
        TargetState::Device(_) => device::lab::cleanup_state(state).await,
        TargetState::Kind(_) => {
            // A cluster of your own first: its API client needs the state that the node
            // containers' cleanup then removes.
            #[cfg(feature = "kube")]
            let mut errors = kind::lab::cleanup_existing(state).await;
            #[cfg(not(feature = "kube"))]
            let mut errors = Vec::new();
            errors.extend(kind::nodes::cleanup_state(state).await);
            errors
        }
    }
}

/// Runs `argv` inside node `node` of a lab that is up, with its workloads' environment,
/// stdin/stdout/stderr passed through. Returns the exit code (128 + signal when killed).
pub async fn exec(state: &RunState, node: usize, argv: &[String]) -> Result<i32> {
    match &state.target {
        TargetState::Netns(_) => {
            let cmd = netns::exec_command(state, node, argv)?;
            let status = tokio::process::Command::from(cmd)
                .status()
                .await
                .map_err(|e| HostError::io("running", argv[0].clone(), e))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        TargetState::Docker(_) => docker::exec(state, node, argv).await,
        TargetState::Device(_) => Err(HostError::other(
            "running a command on",
            state.nodes[node].name.clone(),
            "use ssh to reach a board",
        )),
        TargetState::Kind(k) if !k.created => Err(HostError::other(
            "running a command on",
            state.nodes[node].name.clone(),
            format!(
                "on a cluster of your own, use `kubectl exec` into its pods (namespace edgesim-{})",
                state.run_id
            ),
        )),
        TargetState::Kind(k) => {
            // The node container: its network is the node's pods' (hostNetwork).
            let c = k.containers.get(node + 1).ok_or_else(|| {
                HostError::other(
                    "running a command on",
                    state.nodes[node].name.clone(),
                    "no such Kind node",
                )
            })?;
            let docker = docker::api::Docker::connect().await?;
            docker
                .exec_interactive(&c.container, argv, &state.node_env(node))
                .await
        }
    }
}

/// The launch of instance `workload`@`node`: argv, environment (the node's, the workload's
/// own, its work folder), log files under `out_dir/workloads/<workload>/`. `workdir_in`:
/// where the work folder appears to the workload when not at its host path (a container's
/// mount point).
pub(crate) fn launch_spec(
    state: &RunState,
    plan: &Plan,
    wi: usize,
    ni: usize,
    out_dir: &Path,
    argv: Vec<String>,
    workdir_in: Option<&str>,
) -> Result<LaunchSpec> {
    let w = &plan.workloads[wi];
    let dir = out_dir.join("workloads").join(&w.name);
    let node = &plan.nodes[ni].name;
    let workdir = dir.join(format!("{node}.data"));
    std::fs::create_dir_all(&workdir)
        .map_err(|e| HostError::io("creating", workdir.display().to_string(), e))?;
    let mut env = state.node_env(ni);
    env.push(("EDGESIM_WORKLOAD".into(), w.name.clone()));
    env.push((
        "EDGESIM_WORKDIR".into(),
        workdir_in.map_or_else(|| workdir.display().to_string(), str::to_string),
    ));
    env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(LaunchSpec {
        workload: wi,
        node: ni,
        argv,
        env,
        stdout: dir.join(format!("{node}.stdout.log")),
        stderr: dir.join(format!("{node}.stderr.log")),
        workdir,
    })
}

pub(crate) fn instance_spec(plan: &Plan, wi: usize, ni: usize, launch: LaunchSpec) -> InstanceSpec {
    let w = &plan.workloads[wi];
    InstanceSpec {
        launch,
        workload_name: w.name.clone(),
        node_name: plan.nodes[ni].name.clone(),
        restart: w.restart,
        restart_delay: w.restart_delay,
    }
}

/// Why a run stops when workload `w` on node `ni` never accepted connections on `port`.
pub(crate) fn not_ready(
    plan: &Plan,
    w: &crate::scenario::plan::Workload,
    ni: usize,
    port: u16,
) -> String {
    format!(
        "workload `{}` on `{}` did not accept connections on port {port} within {} (see its log under workloads/{}/)",
        w.name,
        plan.nodes[ni].name,
        crate::units::Dur(w.ready_timeout),
        w.name
    )
}

/// Waits until every workload with a `readyPort` accepts TCP connections on its node.
pub(crate) async fn wait_ports(
    plan: &Plan,
    mut sockets: impl FnMut(usize) -> Result<SocketFactory>,
) -> std::result::Result<(), String> {
    for w in &plan.workloads {
        let Some(port) = w.ready_port else { continue };
        for &ni in &w.nodes {
            let f = sockets(ni).map_err(|e| e.to_string())?;
            let addr = std::net::SocketAddrV4::new(plan.nodes[ni].addr, port);
            let deadline = tokio::time::Instant::now() + w.ready_timeout;
            loop {
                if matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        crate::probe::net::connect(&f, addr)
                    )
                    .await,
                    Ok(Ok(_))
                ) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(not_ready(plan, w, ni, port));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

/// Removes a run's cgroup subtree and, with the last run that used it, the shared `edgesim`
/// parent.
pub(crate) fn remove_run_cgroup(cg: &Cgroups, rel: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = cg.remove_tree(rel) {
        errors.push(e.to_string());
    }
    if let Some((parent, _)) = rel.rsplit_once('/')
        && let Err(e) = cg.remove_if_unused(parent)
    {
        errors.push(e.to_string());
    }
    errors
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub usable: bool,
    /// What keeps the target from running here (empty where it is usable).
    pub missing: Vec<String>,
    /// A further way to use the target, and whether this host can (the kind target's
    /// cluster of your own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub actions: Vec<crate::caps::ActionSupport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub kernel: String,
    pub checks: Vec<Check>,
    pub targets: Vec<TargetReport>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Examines this machine: kernel features (probed in scratch namespaces when root), cgroups,
/// tools and daemons, and what each target can do with them — the same tables validation
/// enforces.
pub async fn doctor() -> DoctorReport {
    let p = probe().await;
    let root = p.root;
    let mut checks = vec![check(
        "root",
        root,
        if root {
            "running as root"
        } else {
            "not root: namespaces, tc, nftables and cgroups need root"
        },
    )];
    checks.push(match &p.netns {
        Ok(()) => check("netns", true, "network namespaces can be created"),
        Err(e) => check("netns", false, e.clone()),
    });
    let qdisc = |ok: bool, yes: &str, no: &str| {
        if ok {
            yes.to_string()
        } else if !root {
            "needs root to check".to_string()
        } else {
            no.to_string()
        }
    };
    checks.push(check(
        "qdisc tbf",
        p.tbf,
        qdisc(
            p.tbf,
            "tc tbf available (rate limits)",
            "missing: rate limits unavailable",
        ),
    ));
    checks.push(check(
        "qdisc htb",
        p.htb,
        qdisc(
            p.htb,
            "tc htb available (per-path rate limits)",
            "missing: per-path rate limits unavailable",
        ),
    ));
    checks.push(check(
        "qdisc netem",
        p.netem,
        if p.netem {
            "tc netem available (delay, jitter)"
        } else {
            "missing (as on WSL2, minimal VMs and stock Jetson L4T kernels): no kernel delay/jitter"
        },
    ));
    checks.push(check(
        "nftables",
        p.nft.is_ok(),
        match &p.nft {
            Ok(()) => "nf_tables works (partitions, loss)".to_string(),
            Err(e) => format!("nf_tables unusable: {e}"),
        },
    ));
    checks.push(match &p.cgroups {
        Ok(c) => check(
            "cgroups",
            c.has("cpu") && c.has("memory"),
            format!(
                "cgroup v{}; controllers: {}",
                c.version(),
                ["cpu", "memory", "pids", "freezer"]
                    .iter()
                    .filter(|k| c.has(k))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => check("cgroups", false, e.clone()),
    });
    checks.push(check(
        "binfmt arm64",
        p.binfmt_arm64,
        if p.binfmt_arm64 {
            "arm64 binaries run under qemu-user"
        } else {
            "qemu-aarch64 binfmt not registered (install qemu-user-static binfmt-support)"
        },
    ));
    checks.push(match &p.docker {
        Ok(d) => check("docker", true, d.summary()),
        Err(e) => check("docker", false, e.clone()),
    });
    let targets = TargetKind::ALL
        .iter()
        .map(|&k| {
            let missing = missing(k, &p);
            TargetReport {
                target: k.name().into(),
                usable: missing.is_empty(),
                missing,
                note: (k == TargetKind::Kind).then(|| existing_cluster_note(&p)),
                actions: capabilities(k, &p).rows,
            }
        })
        .collect();
    DoctorReport {
        kernel: p.kernel.clone(),
        checks,
        targets,
    }
}
