//! The `docker` target: one container per node through the Docker Engine API (bollard, the
//! local socket or `DOCKER_HOST`), wired into the same fabric as the `netns` target.
//!
//! # Design
//!
//! - **Nodes.** Each node is a container `edgesim-<run>-<node>` from the node image
//!   (`edgesim/node:<version>-<arch>`: a tiny init and busybox), labelled `edgesim.run`,
//!   `edgesim.node`, `edgesim.scenario`, started with `network_mode: none`. Its network
//!   namespace (`/proc/<pid>/ns/net`) is handed to [`crate::fabric`], which moves the node's
//!   veth end into it: bridges, routes, tc, nftables and linkem are exactly those of `netns`,
//!   so impairments, partitions and verdicts behave identically. The node container holds
//!   the node's network the way a pod's sandbox does, for the whole run.
//! - **Limits.** The profile's shape, with the quota arithmetic of `netns` (calibration,
//!   `cpuScale`): `nano_cpus`, `memory` = `memory_swap` (no swap beyond), `pids_limit`, and the
//!   profile's storage as block-IO bandwidth and IOPS throttles on the devices behind Docker's
//!   data root. Every container of a node carries them, and where Docker uses the cgroupfs
//!   driver all of a node's containers share one parent cgroup `edgesim/<run>/<node>` that
//!   holds the same limits (the code `netns` uses), so together they never exceed the board.
//! - **Workloads.** `app:` runs the image that `images/build.sh` builds
//!   (`edgesim/<app>:<version>-<arch>`; arm64 under qemu binfmt with `emulateArch: true`),
//!   `image:` runs the user's image; both as containers `edgesim-<run>-<node>-<workload>` in
//!   the node's network namespace (`network_mode: container:…`), with the work folder mounted
//!   at `/data`. `command:` runs inside the node container (`docker exec`). Images are
//!   checked before anything is created.
//! - **Faults.** Network faults go through [`crate::faults`] on the fabric, unchanged. On
//!   the node side: freeze is `docker pause`/`unpause` of the node's containers, poweroff
//!   stops its workloads (containers stopped, exec'd processes killed) and node-up starts
//!   them again, kill and restart go through the supervisor, cpu and memory are container
//!   updates (and the shared parent cgroup).
//! - **Cleanup** by label: `edgesim cleanup` removes every container labelled with the run,
//!   its fabric namespace and its cgroups, from the state file alone.

pub(crate) mod api;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HostProbe;
use super::state::{Mode, RunState, TargetState};
use crate::caps::{Capabilities, Feature, Support};
use crate::fabric::{Fabric, Names, NodeNs};
use crate::faults::emulator::EmulatorOptions;
use crate::faults::{Faults, NodeOps};
use crate::host::cgroup::{Cgroups, NodeCgroup};
use crate::host::ns::{self, SocketFactory};
use crate::host::{HostError, Result};
use crate::profile::{Arch, HostCpu, NodeLimits, limits};
use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::plan::Run;
use crate::workload::{Launch, LaunchSpec, Process, Supervisor};

use self::api::Docker;
pub use self::api::{DockerInfo, probe};

/// The version part of the image tags `images/build.sh` writes.
pub const IMAGE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a container sees its work folder.
const WORKDIR_IN: &str = "/data";

/// Image tag of app or node image `name` for `arch`.
pub fn image_tag(name: &str, arch: Arch) -> String {
    format!("edgesim/{name}:{IMAGE_VERSION}-{}", arch_name(arch))
}

fn arch_name(a: Arch) -> &'static str {
    match a {
        Arch::Amd64 => "amd64",
        Arch::Arm64 => "arm64",
    }
}

/// The architecture node `n` runs as: the profile's when the scenario emulates
/// architectures, else this host's (as on `netns`).
fn node_arch(plan: &Plan, n: usize) -> Arch {
    if plan.emulate_arch {
        plan.nodes[n].profile.arch
    } else {
        Arch::host()
    }
}

/// The limits node `n` of `plan` holds on `host` (already scaled by the plan's `cpuScale`):
/// the profile's quota arithmetic of `netns`, pinned to the node's share of the `allowed`
/// host CPUs. The Kind target holds its worker containers to the same limits.
pub(crate) fn node_limits(plan: &Plan, n: usize, host: &HostCpu, allowed: &[u32]) -> NodeLimits {
    limits(&plan.nodes[n].profile, host).pinned(n, allowed)
}

/// The docker rows of the capability table.
pub fn rows(c: &mut Capabilities, p: &HostProbe) {
    let (ok, why) = match &p.docker {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.clone()),
    };
    let row = |c: &mut Capabilities, f: Feature, how: &str| {
        if ok {
            c.set(f, Support::Exact, how);
        } else {
            c.set(f, Support::Unavailable, format!("no Docker Engine: {why}"));
        }
    };
    row(
        c,
        Feature::NodeFreeze,
        "docker pause / unpause of the node's containers",
    );
    row(
        c,
        Feature::NodePoweroff,
        "the node's workload containers stopped, started again at node-up",
    );
    row(
        c,
        Feature::KillRestart,
        "signals through the Engine (docker kill), restarts by the supervisor",
    );
    let shared = p
        .docker
        .as_ref()
        .is_ok_and(|d| d.cgroup_driver == "cgroupfs");
    let limit_how = if shared {
        "container updates, and the node's shared parent cgroup"
    } else {
        "container updates (per container: the systemd cgroup driver has no shared parent)"
    };
    row(c, Feature::Cpu, limit_how);
    row(c, Feature::Memory, limit_how);
    match p.docker.as_ref().map(|d| d.storage_device.clone()) {
        Ok(Some(dev)) => {
            c.set(
                Feature::BlockIo,
                Support::Exact,
                format!("block-IO bandwidth and IOPS throttles on {dev} (Docker's data root)"),
            );
        }
        Ok(None) => {
            c.set(
                Feature::BlockIo,
                Support::Unavailable,
                "Docker's data root is on no block device (overlay, tmpfs): nothing to throttle",
            );
        }
        Err(_) => row(c, Feature::BlockIo, ""),
    }
    row(
        c,
        Feature::AppWorkload,
        "the app's image from images/build.sh, a container in the node's namespace",
    );
    row(
        c,
        Feature::CommandWorkload,
        "docker exec in the node container (the node image's commands)",
    );
    row(
        c,
        Feature::ImageWorkload,
        "the named image, a container in the node's namespace",
    );
    if ok && (p.binfmt_arm64 || std::env::consts::ARCH == "aarch64") {
        c.set(
            Feature::Arm64Emulation,
            Support::Exact,
            "arm64 images under qemu binfmt",
        );
    } else {
        c.set(
            Feature::Arm64Emulation,
            Support::Unavailable,
            "needs qemu-user binfmt (apt-get install qemu-user-static binfmt-support)",
        );
    }
}

/// What one workload runs on this target.
#[derive(Debug, Clone)]
enum Runs {
    /// Per node, the image of its container, with the arguments after its entrypoint.
    Container {
        images: BTreeMap<usize, String>,
        args: Vec<String>,
    },
    /// A command inside the node container.
    Exec { argv: Vec<String> },
}

/// The images of a plan, checked to exist: the node image per node, what each workload runs.
#[derive(Debug, Clone)]
pub struct Images {
    nodes: Vec<String>,
    workloads: Vec<Runs>,
    info: DockerInfo,
}

/// Resolves every workload to an image that exists (or a command the node image has), before
/// anything is created. A missing image names the command that builds it.
pub async fn resolve(plan: &Plan) -> std::result::Result<Images, Vec<Diagnostic>> {
    let first = |msg: String| vec![Diagnostic::new(crate::scenario::loc::Pos::UNKNOWN, msg)];
    let docker = Docker::connect().await.map_err(|e| first(e.to_string()))?;
    let info = docker.info.clone();
    let mut errors = Vec::new();
    let mut known: BTreeMap<String, Option<api::ImageFacts>> = BTreeMap::new();
    let mut look = async |tag: &str| -> Option<api::ImageFacts> {
        if !known.contains_key(tag) {
            let f = docker.image(tag).await.ok();
            known.insert(tag.to_string(), f);
        }
        known.get(tag).cloned().flatten()
    };
    let build_hint = |name: &str, arch: Arch| {
        format!(
            "build it with `images/build.sh --arch {} --only {name}` (no registry is needed)",
            arch_name(arch)
        )
    };
    let mut node_images = Vec::with_capacity(plan.nodes.len());
    let mut node_commands: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in 0..plan.nodes.len() {
        let arch = node_arch(plan, n);
        let tag = image_tag("node", arch);
        match look(&tag).await {
            Some(f) => {
                node_commands.insert(tag.clone(), f.commands.clone());
            }
            None if node_images.contains(&tag) => {}
            None => errors.push(
                Diagnostic::new(
                    crate::scenario::loc::Pos::UNKNOWN,
                    format!("the node image {tag} is not in the Docker Engine"),
                )
                .hint(build_hint("node", arch)),
            ),
        }
        node_images.push(tag);
    }
    let mut workloads = Vec::with_capacity(plan.workloads.len());
    for w in &plan.workloads {
        if let Some(p) = &w.program {
            errors.push(
                Diagnostic::new(
                    w.pos,
                    format!(
                        "workload `{}`: the docker target runs images, not the program {}",
                        w.name,
                        p.display()
                    ),
                )
                .hint("run it on the netns target, or build it into an image and use `image:`"),
            );
            workloads.push(Runs::Container {
                images: BTreeMap::new(),
                args: Vec::new(),
            });
            continue;
        }
        match &w.run {
            Run::App { app, args } => {
                let mut images = BTreeMap::new();
                let mut missing = Vec::new();
                for &n in &w.nodes {
                    let arch = node_arch(plan, n);
                    let tag = image_tag(app, arch);
                    if look(&tag).await.is_none() && !missing.contains(&(tag.clone(), arch)) {
                        missing.push((tag.clone(), arch));
                    }
                    images.insert(n, tag);
                }
                for (tag, arch) in missing {
                    errors.push(
                        Diagnostic::new(
                            w.pos,
                            format!("app `{app}`: the image {tag} is not in the Docker Engine"),
                        )
                        .hint(build_hint(app, arch)),
                    );
                }
                workloads.push(Runs::Container {
                    images,
                    args: args.clone(),
                });
            }
            Run::Image { image, args } => {
                if look(image).await.is_none() {
                    errors.push(
                        Diagnostic::new(
                            w.pos,
                            format!("the image {image} is not in the Docker Engine"),
                        )
                        .hint("edgesim pulls nothing: `docker pull` or `docker build` it first"),
                    );
                }
                workloads.push(Runs::Container {
                    images: w.nodes.iter().map(|&n| (n, image.clone())).collect(),
                    args: args.clone(),
                });
            }
            Run::Command { argv } => {
                let prog = argv.first().cloned().unwrap_or_default();
                for &n in &w.nodes {
                    let Some(cmds) = node_commands.get(&node_images[n]) else {
                        continue;
                    };
                    let base = prog.rsplit('/').next().unwrap_or(&prog);
                    let in_image = cmds.iter().any(|c| c == base)
                        && (!prog.contains('/')
                            || prog.starts_with("/bin/")
                            || prog.starts_with("/sbin/")
                            || prog.starts_with("/usr/bin/"));
                    if !in_image {
                        errors.push(
                            Diagnostic::new(
                                w.pos,
                                format!(
                                    "command `{prog}` is not in the node image {} (the docker target runs commands inside the node container)",
                                    node_images[n]
                                ),
                            )
                            .hint(if cmds.is_empty() {
                                format!(
                                    "the node image names no commands (its `edgesim.commands` label): rebuild it with `images/build.sh --arch {} --only node`",
                                    arch_name(node_arch(plan, n))
                                )
                            } else {
                                format!(
                                    "the node image has busybox's {} commands (sh, sleep, nc, ping, wget, …: `docker image inspect -f '{{{{index .Config.Labels \"edgesim.commands\"}}}}' {}`); for other programs use `image:` or `app:`",
                                    cmds.len(),
                                    node_images[n]
                                )
                            }),
                        );
                        break;
                    }
                }
                workloads.push(Runs::Exec { argv: argv.clone() });
            }
        }
    }
    if errors.is_empty() {
        Ok(Images {
            nodes: node_images,
            workloads,
            info,
        })
    } else {
        Err(errors)
    }
}

/// What the docker target created for a run (its part of the state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerState {
    /// The routing namespace (a named namespace on this host, as on `netns`).
    pub fabric_namespace: String,
    /// Per node (in the order of [`RunState::nodes`]): its container's name.
    pub containers: Vec<String>,
    /// The run's cgroup subtree (cgroupfs driver), relative to the cgroup roots.
    pub cgroup: Option<String>,
}

fn docker_state(st: &RunState) -> Option<&DockerState> {
    match &st.target {
        TargetState::Docker(d) => Some(d),
        _ => None,
    }
}

/// Labels of every object of a run.
fn labels(plan: &Plan, run_id: &str, node: &str) -> Vec<(String, String)> {
    vec![
        ("edgesim.run".into(), run_id.to_string()),
        ("edgesim.node".into(), node.to_string()),
        ("edgesim.scenario".into(), plan.name.clone()),
    ]
}

/// The node side of the docker target.
pub struct DockerNodes {
    docker: Docker,
    /// Per node: its containers (node container first, then workload containers as they are
    /// created).
    containers: Vec<Vec<String>>,
    /// Per node: the shared parent cgroup (cgroupfs driver).
    parents: Vec<Option<NodeCgroup>>,
    storage: Option<api::StorageDevices>,
    pub supervisor: Supervisor,
}

impl NodeOps for DockerNodes {
    async fn power(&mut self, node: usize, on: bool) -> Result<()> {
        if on {
            self.supervisor.resume_nodes(&[node]);
        } else {
            self.supervisor.suspend_nodes(&[node]);
        }
        Ok(())
    }
    async fn freeze(&mut self, node: usize, frozen: bool) -> Result<()> {
        for c in self.containers[node].clone() {
            self.docker.pause(&c, frozen).await?;
        }
        Ok(())
    }
    async fn signal(&mut self, workload: usize, nodes: &[usize], signal: i32) -> Result<()> {
        self.supervisor.signal(workload, nodes, signal);
        Ok(())
    }
    async fn restart(&mut self, workload: usize, nodes: &[usize]) -> Result<()> {
        self.supervisor.restart(workload, nodes);
        Ok(())
    }
    async fn set_limits(&mut self, node: usize, l: &NodeLimits) -> Result<()> {
        // cgroup v1 refuses a parent CPU quota below a child's: when limits shrink the
        // containers go first, when they grow the parent does.
        let shrinks = match &self.parents[node] {
            Some(p) => p.read_limits().is_ok_and(|cur| {
                let q = |x: &NodeLimits| {
                    x.cpu_quota_us
                        .map_or(u64::MAX, |q| q * 1_000_000 / x.cpu_period_us.max(1))
                };
                q(l) < q(&cur)
            }),
            None => false,
        };
        if !shrinks && let Some(p) = &self.parents[node] {
            p.apply(l)?;
        }
        for c in self.containers[node].clone() {
            self.docker.update_limits(&c, l).await?;
        }
        if shrinks && let Some(p) = &self.parents[node] {
            p.apply(l)?;
        }
        Ok(())
    }
}

/// One object a run created, in the order it was created.
#[derive(Debug, Clone)]
enum Created {
    StateFile,
    FabricNamespace(String),
    Cgroup(String),
    Containers,
}

/// A provisioning failure, with what was created so far.
pub struct ProvisionError {
    pub error: HostError,
    pub partial: Partial,
}

/// What a failed provisioning left, enough to remove it.
pub struct Partial {
    state: RunState,
    journal: Vec<Created>,
}

impl Partial {
    pub async fn teardown(self) -> Vec<String> {
        revert(&self.journal, &self.state).await
    }
}

/// A lab of containers that is up.
pub struct DockerLab {
    pub plan: Arc<Plan>,
    pub state: RunState,
    pub fabric: Fabric,
    pub(crate) faults: Faults,
    images: Images,
    pub nodes: DockerNodes,
    pub(crate) sockets: Vec<Option<SocketFactory>>,
    journal: Vec<Created>,
}

impl DockerLab {
    /// Builds the lab: state file, fabric namespace, node containers (started, network-less),
    /// the fabric wired into their namespaces, parent cgroups, baseline shaping. Workloads are
    /// started separately ([`DockerLab::deploy`]).
    ///
    /// Guarantees: each object is recorded before (state file, labels) and after (journal)
    /// it is created; on error everything created is described by the returned [`Partial`].
    pub async fn provision(
        plan: Arc<Plan>,
        images: Images,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
        emu: &EmulatorOptions,
    ) -> std::result::Result<DockerLab, Box<ProvisionError>> {
        let names = Names::new(run_id, &plan);
        let shared_cgroup = images.info.cgroup_driver == "cgroupfs";
        let cgroup = shared_cgroup.then(|| format!("edgesim/{run_id}"));
        let dstate = DockerState {
            fabric_namespace: names.fabric.clone(),
            containers: names.nodes.clone(),
            cgroup: cgroup.clone(),
        };
        let state = RunState::new(&plan, run_id, mode, out_dir, TargetState::Docker(dstate));
        let mut journal = Vec::new();
        macro_rules! fail {
            ($e:expr) => {
                return Err(Box::new(ProvisionError {
                    error: $e,
                    partial: Partial { state, journal },
                }))
            };
        }
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => fail!(e),
                }
            };
        }
        let docker = tri!(Docker::connect().await);

        // 1. The state file names everything below before it exists.
        if let Err(e) = state.save_or_err() {
            fail!(e);
        }
        journal.push(Created::StateFile);

        // 2. The routing namespace.
        tri!(ns::create_many(std::slice::from_ref(&names.fabric)));
        journal.push(Created::FabricNamespace(names.fabric.clone()));

        // 3. Parent cgroups with the profiles' limits (cgroupfs driver).
        let host = plan.scaled_host(&HostCpu::detect());
        let allowed = crate::host::cgroup::allowed_cpus();
        let mut parents = Vec::with_capacity(plan.nodes.len());
        if let Some(cg) = &cgroup {
            let cgroups = tri!(Cgroups::detect());
            journal.push(Created::Cgroup(cg.clone()));
            for (i, n) in plan.nodes.iter().enumerate() {
                let c = tri!(cgroups.create(&format!("{cg}/{}", n.name)));
                tri!(c.apply(&node_limits(&plan, i, &host, &allowed)));
                parents.push(Some(c));
            }
        } else {
            parents.resize_with(plan.nodes.len(), || None);
        }

        // 4. Node containers, created and started concurrently, network-less.
        journal.push(Created::Containers);
        let storage = docker.storage_devices().await;
        let hosts: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.name, n.addr))
            .collect();
        let specs: Vec<api::NodeContainer> = plan
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| api::NodeContainer {
                name: names.nodes[i].clone(),
                image: images.nodes[i].clone(),
                platform: format!("linux/{}", arch_name(node_arch(&plan, i))),
                hostname: n.name.clone(),
                labels: labels(&plan, run_id, &n.name),
                limits: node_limits(&plan, i, &host, &allowed),
                throttle: storage
                    .as_ref()
                    .and_then(|d| api::Throttle::of(&n.profile, d)),
                cgroup_parent: cgroup.as_ref().map(|c| format!("/{c}/{}", n.name)),
                extra_hosts: hosts.clone(),
            })
            .collect();
        let pids = tri!(docker.start_nodes(&specs).await);

        // 5. The fabric, in the containers' namespaces.
        let mut node_fds: Vec<NodeNs> = Vec::with_capacity(pids.len());
        for (i, pid) in pids.iter().enumerate() {
            let path = format!("/proc/{pid}/ns/net");
            match std::fs::File::open(&path) {
                Ok(f) => node_fds.push(NodeNs::Held(f.into())),
                Err(e) => fail!(HostError::io(
                    "opening the network namespace of",
                    format!("{} ({path})", names.nodes[i]),
                    e
                )),
            }
        }
        let fabric_fd = tri!(ns::open(&names.fabric));
        let userspace = plan.uses_emulator();
        let fabric =
            tri!(Fabric::build(&plan, names.clone(), fabric_fd, node_fds, userspace).await);
        tri!(
            fabric
                .wait_links(
                    &(0..plan.nodes.len()).collect::<Vec<_>>(),
                    crate::fabric::LINK_STALL,
                )
                .await
        );

        // 6. Baseline shaping, firewall and emulator in the fabric namespace.
        let faults = tri!(Faults::install(plan.clone(), &fabric, host, emu).await);

        let n = plan.nodes.len();
        Ok(DockerLab {
            plan,
            state,
            fabric,
            faults,
            images,
            nodes: DockerNodes {
                docker,
                containers: names.nodes.iter().map(|c| vec![c.clone()]).collect(),
                parents,
                storage,
                supervisor: Supervisor::new(Default::default()),
            },
            sockets: vec![None; n],
            journal,
        })
    }

    /// Starts every workload instance: containers for `app:`/`image:`, processes inside the
    /// node container for `command:`.
    pub async fn deploy(&mut self, out_dir: &Path) -> Result<()> {
        let plan = self.plan.clone();
        let host = plan.scaled_host(&HostCpu::detect());
        for (wi, w) in plan.workloads.iter().enumerate() {
            for &ni in &w.nodes {
                let node = &plan.nodes[ni];
                let (argv, inside) = match &self.images.workloads[wi] {
                    Runs::Container { args, .. } => (args.clone(), Some(WORKDIR_IN)),
                    Runs::Exec { argv } => (argv.clone(), None),
                };
                let ls = super::launch_spec(&self.state, &plan, wi, ni, out_dir, argv, inside)?;
                // Containers may run as any user: the work folder must be theirs to write.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&ls.workdir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| {
                        HostError::io("opening up", ls.workdir.display().to_string(), e)
                    })?;
                let spec = super::instance_spec(&plan, wi, ni, ls);
                let node_ctr = self.nodes.containers[ni][0].clone();
                let docker = self.nodes.docker.clone();
                let launch: Launch = match &self.images.workloads[wi] {
                    Runs::Container { images, .. } => {
                        let name = format!("{node_ctr}-{}", w.name);
                        self.nodes.containers[ni].push(name.clone());
                        let c = api::WorkloadContainer {
                            name,
                            image: images.get(&ni).cloned().unwrap_or_default(),
                            platform: format!("linux/{}", arch_name(node_arch(&plan, ni))),
                            node_container: node_ctr,
                            labels: {
                                let mut l = labels(&plan, &self.state.run_id, &node.name);
                                l.push(("edgesim.workload".into(), w.name.clone()));
                                l
                            },
                            limits: node_limits(
                                &plan,
                                ni,
                                &host,
                                &crate::host::cgroup::allowed_cpus(),
                            ),
                            throttle: self
                                .nodes
                                .storage
                                .as_ref()
                                .and_then(|d| api::Throttle::of(&node.profile, d)),
                            cgroup_parent: self
                                .state_cgroup()
                                .map(|c| format!("/{c}/{}", node.name)),
                            // Docker binds absolute host paths only.
                            workdir_mount: (
                                std::fs::canonicalize(&spec.launch.workdir)
                                    .unwrap_or_else(|_| spec.launch.workdir.clone()),
                                WORKDIR_IN.into(),
                            ),
                        };
                        let c = Arc::new(c);
                        Arc::new(move |s: &LaunchSpec| {
                            let (docker, c, s) = (docker.clone(), c.clone(), s.clone());
                            Box::pin(async move {
                                docker
                                    .run_workload(&c, &s)
                                    .await
                                    .map(|p| Box::new(p) as Box<dyn Process>)
                            })
                        })
                    }
                    Runs::Exec { .. } => Arc::new(move |s: &LaunchSpec| {
                        let (docker, node_ctr, s) = (docker.clone(), node_ctr.clone(), s.clone());
                        Box::pin(async move {
                            docker
                                .exec_workload(&node_ctr, &s)
                                .await
                                .map(|p| Box::new(p) as Box<dyn Process>)
                        })
                    }),
                };
                self.nodes.supervisor.start(spec, launch);
            }
        }
        Ok(())
    }

    fn state_cgroup(&self) -> Option<String> {
        docker_state(&self.state).and_then(|d| d.cgroup.clone())
    }

    /// The limits node `n`'s container holds now, read back from the Engine.
    pub async fn read_limits(&self, n: usize) -> Result<NodeLimits> {
        self.nodes
            .docker
            .read_limits(&self.nodes.containers[n][0])
            .await
    }

    pub fn mark_ready(&mut self) -> Result<()> {
        self.state.ready = true;
        self.state.save_or_err()
    }

    /// Reverts every fault, stops workloads, removes containers, namespace and cgroups.
    pub async fn teardown(mut self, grace: Duration) -> Vec<String> {
        let mut errors = self.faults.revert_all(&self.fabric, &mut self.nodes).await;
        let DockerLab {
            journal,
            state,
            fabric,
            mut faults,
            nodes,
            sockets,
            ..
        } = self;
        nodes.supervisor.stop_all(grace).await;
        errors.extend(faults.stop());
        drop((sockets, fabric, faults));
        errors.extend(revert(&journal, &state).await);
        errors
    }
}

/// Reverts a provisioning journal in reverse order.
async fn revert(journal: &[Created], state: &RunState) -> Vec<String> {
    let mut errors = Vec::new();
    for c in journal.iter().rev() {
        match c {
            Created::Containers => match Docker::connect().await {
                Ok(docker) => errors.extend(docker.remove_run(&state.run_id).await),
                Err(e) => errors.push(format!(
                    "removing the containers of run {}: {e}",
                    state.run_id
                )),
            },
            Created::Cgroup(rel) => {
                // Docker's runtime made the node cgroups in every hierarchy it uses, some
                // of which edgesim does not manage: remove the run's subtree in all of them.
                errors.extend(api::remove_cgroup_everywhere(rel));
                if let Ok(cg) = Cgroups::detect() {
                    errors.extend(super::remove_run_cgroup(&cg, rel));
                }
                // The shared parent goes with the last run, in every hierarchy; never
                // recursively: other runs' cgroups live below it.
                api::remove_empty_cgroup_everywhere("edgesim");
            }
            Created::FabricNamespace(n) => {
                if let Err(e) = ns::delete(n) {
                    errors.push(e.to_string());
                }
            }
            Created::StateFile => {
                errors.extend(state.remove_or_msg());
            }
        }
    }
    errors
}

/// Removes everything a docker run may have created, from its state file alone: containers
/// by label, the fabric namespace, the cgroups.
///
/// Guarantees: idempotent; keeps going past errors; "already gone" is success.
pub async fn cleanup_state(state: &RunState) -> Vec<String> {
    let Some(d) = docker_state(state) else {
        return vec![format!("run {} is not a docker run", state.run_id)];
    };
    let mut journal = vec![
        Created::StateFile,
        Created::FabricNamespace(d.fabric_namespace.clone()),
    ];
    if let Some(cg) = &d.cgroup {
        journal.push(Created::Cgroup(cg.clone()));
    }
    journal.push(Created::Containers);
    revert(&journal, state).await
}

/// Runs `argv` in node `node`'s container (docker exec) with its workloads' environment.
pub async fn exec(state: &RunState, node: usize, argv: &[String]) -> Result<i32> {
    let Some(d) = docker_state(state) else {
        return Err(HostError::other(
            "exec in",
            state.run_id.clone(),
            "not a docker run",
        ));
    };
    let docker = Docker::connect().await?;
    docker
        .exec_interactive(&d.containers[node], argv, &state.node_env(node))
        .await
}

/// Removes every container labelled with any run whose controller is gone (`cleanup` of
/// orphans no state file describes). Returns how many it removed, and errors.
pub async fn cleanup_orphans(live: &[String]) -> (usize, Vec<String>) {
    match Docker::connect().await {
        Ok(d) => d.remove_orphans(live).await,
        Err(_) => (0, Vec::new()),
    }
}
