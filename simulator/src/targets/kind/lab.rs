//! The `kind` target's lab: its workloads delivered by Flux from an artifact the run pushes
//! ([`super::delivery`]), on one of two clusters:
//!
//! - **A Kind cluster made for the run** (the default): shaped like the scenario's boards, its
//!   faults installed inside the node containers ([`super::nodes`]), deleted at the end.
//! - **A cluster of your own** (`--kubeconfig FILE --registry REF`): K3s on the boards, or a
//!   cloud cluster, its nodes bound to the scenario's by label, their shape checked and not
//!   changed, their faults applied by edgesim's agent delivered as a DaemonSet
//!   ([`super::existing`]).
//!
//! - **Resolve** (before anything is created): for a Kind cluster, `kind` and `flux` on PATH,
//!   the Docker Engine, the cluster configuration for this host (a board larger than the host is
//!   refused), no cluster of the scenario's name already, every workload's image (`app:` → the
//!   image `images/build.sh` builds for this host's architecture, loaded into the nodes;
//!   `image:` → loaded when the Engine has it, else pulled by the nodes). For a cluster of your
//!   own, `flux`, the Engine (it pushes the apps' and the agent's images), a readable
//!   kubeconfig, a registry, and no action the agents cannot do (freeze, kill, cpu, memory).
//!   `command:` is refused on both (a cluster runs images).
//! - **Provision**, each step recorded in the state file before it is taken. Kind: `kind
//!   create cluster` from [`super::config`] (kubeconfig in the run's folder), the workers held to
//!   their boards ([`super::nodes::KindNodes::shape`]), the fake `nvidia.com/gpu` on GPU boards,
//!   every node's allocatable checked against its profile, the images loaded (`kind load`), a
//!   `registry:2` container beside the nodes, Flux's source and kustomize controllers installed
//!   on the control plane, and the links' baseline impairments. Your own cluster: the nodes
//!   bound and checked (allocatable, architecture), Flux's CRDs found, the images pushed, the
//!   artifact pushed and the agents delivered by Flux, each agent reached (exec into its pod)
//!   and its node checked against its profile and the scenario's needs, every problem at once,
//!   then the baseline.
//! - **Deploy**: the workloads rendered as pods ([`super::manifests`]) and Flux waited for until
//!   the pushed revision is deployed and healthy (every pod Ready: `readyPort`s accept
//!   connections), with Flux's diagnosis on failure.
//! - **Faults**: the lab keeps the live link parameters, partitions and isolated nodes and,
//!   after each action, makes the nodes hold exactly what they imply (kubelet ↔ API server
//!   traffic exempt). Kind: freeze pauses the node container (kubelet included: the node goes
//!   NotReady after 40 s, as a hung board's); kill signals a pod's container through containerd
//!   in its node (`ctr task kill`); cpu and memory update the node container. Both: poweroff
//!   isolates the node and deletes its pods, node-up creates them again from the delivered
//!   manifests; restart deletes the pod and creates it again. After a heal the lab asks Flux to
//!   reconcile and reports how long until the revision is deployed and healthy again.
//! - **Probes and metrics**: on Kind from inside the node containers' network namespaces,
//!   where the pods' ports are (`hostNetwork`); on your own cluster from the nodes, through the
//!   agents. Both aim at the nodes' cluster addresses.
//! - **Teardown** collects the pods' logs and reverts the faults; Kind: removes the registry and
//!   deletes the cluster; your own cluster: the agents revert and exit, the run's Flux objects
//!   are deleted (Flux prunes the pods, the agents and their namespaces). `edgesim cleanup` does
//!   the same from the state file after a SIGKILL (the agents revert by themselves when their
//!   controller's stream ends).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, AttachParams, ListParams};

use crate::host::nft::Flow;
use crate::host::ns::SocketFactory;
use crate::host::{HostError, Result};
use crate::profile::{Arch, HostCpu, NodeLimits};
use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::loc::Pos;
use crate::scenario::model::DownMode;
use crate::scenario::plan::{ActionKind, Block, LinkParams, Run};
use crate::targets::device::agent::{Desired, Facts, Request};
use crate::targets::device::fleet::{self, Fleet};
use crate::targets::docker::api::Docker;
use crate::targets::docker::{IMAGE_VERSION, image_tag, node_limits};
use crate::targets::state::{Mode, RunState, TargetState};

use super::config::{self, Generated};
use super::delivery::{self, Workloads};
use super::existing::{self, ClusterNode, RegistryRef};
use super::kube as k;
use super::manifests::{self, FIELD_MANAGER, PodImage};
use super::nodes::{self, Cut, KindFaults, KindNodes, KindState, Member, NodeFaults};
use super::tools;

/// How long Flux may take to deliver beyond the workloads' own `readyTimeout`: the
/// controllers start, pull the artifact, apply it and wait.
const DELIVERY_MARGIN: Duration = Duration::from_secs(180);
/// How long the agents of a cluster of your own may take to be delivered and start.
const AGENTS_TIMEOUT: Duration = Duration::from_secs(300);
/// The lease of the agents of a cluster of your own, and how often it is renewed.
const LEASE: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a teardown waits for Flux to prune a run from a cluster of your own.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(120);

/// Which cluster a kind run uses.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// A Kind cluster the run makes from this configuration.
    Create(Box<Generated>),
    /// A cluster of your own.
    Existing {
        kubeconfig: PathBuf,
        registry: RegistryRef,
    },
}

/// What a kind run will use, resolved before anything is created.
#[derive(Debug, Clone)]
pub struct Bound {
    pub cluster: Cluster,
    /// Per workload: the app it runs, or the image.
    pub runs: Vec<Runs>,
    /// Images of this Engine to load into a Kind cluster's nodes.
    pub load: Vec<String>,
}

/// What a workload runs, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runs {
    App(String),
    /// A user's image, and whether the Engine has it (then it is loaded into Kind's nodes).
    Image {
        image: String,
        local: bool,
    },
}

/// What the kind target needs beyond the plan: a cluster of your own, if one.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    pub registry: Option<String>,
}

fn program_diag(program: &str, hint: &str) -> Option<Diagnostic> {
    (!crate::testing::have_program(program)).then(|| {
        Diagnostic::new(
            Pos::UNKNOWN,
            format!("the kind target needs `{program}` on PATH"),
        )
        .hint(hint.to_string())
    })
}

const FLUX_HINT: &str = "install the Flux CLI (https://fluxcd.io/flux/installation/; 2.8 is what edgesim is tested with), or `nix develop .#sim`";

/// The kind target's validation of a plan; nothing is created.
pub async fn resolve(plan: &Plan, opts: &Options) -> std::result::Result<Bound, Vec<Diagnostic>> {
    let here = Pos::UNKNOWN;
    let mut errors: Vec<Diagnostic> = Vec::new();
    errors.extend(program_diag("flux", FLUX_HINT));
    let docker = match Docker::connect().await {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                Diagnostic::new(here, format!("the kind target needs a Docker Engine: {e}"))
                    .hint("start dockerd (Kind's nodes are containers; a cluster of your own gets its images pushed from it)"),
            );
            None
        }
    };
    let cluster = match (&opts.kubeconfig, &opts.registry) {
        (None, Some(_)) => {
            errors.push(
                Diagnostic::new(
                    here,
                    "--registry is for a cluster of your own: give --kubeconfig too",
                )
                .hint("a Kind cluster that edgesim makes gets a registry of its own"),
            );
            None
        }
        (None, None) => {
            errors.extend(program_diag(
                "kind",
                "install kind (https://kind.sigs.k8s.io; v0.32 is what edgesim is tested with), or `nix develop .#sim`",
            ));
            resolve_kind_cluster(plan, docker.as_ref(), &mut errors).await
        }
        (Some(kc), registry) => resolve_existing(plan, kc, registry.as_deref(), &mut errors),
    };
    if plan.mechanism == crate::scenario::plan::Mechanism::Userspace {
        errors.push(
            Diagnostic::new(
                here,
                "the scenario's links need the userspace link emulator (`impairment: userspace`, `deterministic: true`, or delay on a kernel without netem), which does not run on a cluster's nodes",
            )
            .hint("use `impairment: kernel` on a kernel with sch_netem, or run it on netns or docker"),
        );
    }
    let existing = opts.kubeconfig.is_some();
    let mut runs = Vec::with_capacity(plan.workloads.len());
    let mut load = Vec::new();
    let mut archs: BTreeSet<String> = BTreeSet::new();
    for w in &plan.workloads {
        let r = match (&w.program, &w.run) {
            (Some(p), _) => {
                errors.push(
                    Diagnostic::new(
                        w.pos,
                        format!(
                            "workload `{}`: the kind target runs images, not the program {}",
                            w.name,
                            p.display()
                        ),
                    )
                    .hint("run it on the netns target, or build it into an image and use `image:`"),
                );
                None
            }
            (None, Run::Command { argv }) => {
                errors.push(
                    Diagnostic::new(
                        w.pos,
                        format!(
                            "workload `{}`: the kind target runs images, not commands (`{}`)",
                            w.name,
                            argv.first().map(String::as_str).unwrap_or_default()
                        ),
                    )
                    .hint("use `app:` or `image:` for this target, or run the scenario on netns or docker"),
                );
                None
            }
            (None, Run::App { app, .. }) => {
                // On Kind every node runs this host's architecture (Kind cannot run arm64
                // nodes under qemu); on your own cluster each node its profile's (checked).
                let tags: Vec<(String, Arch)> = if existing {
                    w.nodes
                        .iter()
                        .map(|&n| plan.nodes[n].profile.arch)
                        .map(|a| (image_tag(app, a), a))
                        .collect()
                } else {
                    vec![(manifests::app_image(app), Arch::host())]
                };
                for (tag, arch) in tags {
                    if !archs.insert(tag.clone()) {
                        continue;
                    }
                    if let Some(d) = &docker
                        && d.image(&tag).await.is_err()
                    {
                        errors.push(
                            Diagnostic::new(
                                w.pos,
                                format!("app `{app}`: the image {tag} is not in the Docker Engine"),
                            )
                            .hint(format!(
                                "build it with `images/build.sh --arch {arch} --only {app}` (no registry is needed)"
                            )),
                        );
                    }
                    if !existing {
                        load.push(tag);
                    }
                }
                Some(Runs::App(app.clone()))
            }
            (None, Run::Image { image, .. }) => {
                let local = match &docker {
                    Some(d) => d.image(image).await.is_ok(),
                    None => false,
                };
                if local && !existing && !load.contains(image) {
                    load.push(image.clone());
                }
                Some(Runs::Image {
                    image: image.clone(),
                    local,
                })
            }
        };
        runs.push(r.unwrap_or(Runs::Image {
            image: String::new(),
            local: false,
        }));
    }
    if existing && let Some(d) = &docker {
        // The agent's image for every architecture the scenario's boards have.
        let mut need: Vec<Arch> = plan.nodes.iter().map(|n| n.profile.arch).collect();
        need.sort_by_key(|a| a.to_string());
        need.dedup();
        for arch in need {
            let tag = image_tag("agent", arch);
            if d.image(&tag).await.is_err() {
                errors.push(
                    Diagnostic::new(
                        here,
                        format!("the agent's image {tag} is not in the Docker Engine"),
                    )
                    .hint(format!(
                        "build it with `images/build.sh --arch {arch} --only agent`"
                    )),
                );
            }
        }
    }
    match cluster {
        Some(cluster) if errors.is_empty() => Ok(Bound {
            cluster,
            runs,
            load,
        }),
        _ => Err(errors),
    }
}

async fn resolve_kind_cluster(
    plan: &Plan,
    docker: Option<&Docker>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Cluster> {
    let here = Pos::UNKNOWN;
    let Some(host) = config::Host::detect() else {
        errors.push(Diagnostic::new(
            here,
            "cannot read this host's CPUs and memory (what each Kind node's kubelet sees)",
        ));
        return None;
    };
    let g = match config::generate(plan, &host) {
        Ok(g) => g,
        Err(e) => {
            errors.push(Diagnostic::new(here, e.to_string()));
            return None;
        }
    };
    let cp = nodes::container_name(&g.cluster.name, 0);
    if let Some(d) = docker
        && d.container_exists(&cp).await
    {
        errors.push(
            Diagnostic::new(
                here,
                format!(
                    "a Kind cluster named `{}` exists already (container {cp})",
                    g.cluster.name
                ),
            )
            .hint(format!(
                "another run of this scenario is using it, or one left it: `edgesim cleanup`, or `kind delete cluster --name {}`",
                g.cluster.name
            )),
        );
    }
    Some(Cluster::Create(Box::new(g)))
}

/// What a cluster of your own cannot do, action by action.
fn existing_refusal(a: &ActionKind) -> Option<&'static str> {
    match a {
        ActionKind::NodeDown {
            mode: DownMode::Freeze,
            ..
        } => {
            Some("`node-down` with `mode: freeze` (a node of a cluster of your own is not paused)")
        }
        ActionKind::Kill { .. } => {
            Some("`kill` (a pod's container cannot be signalled from outside it; `restart` works)")
        }
        ActionKind::Cpu { .. } | ActionKind::Memory { .. } => Some(
            "`cpu` and `memory` (a cluster's nodes are their own: their shape is checked, not changed)",
        ),
        _ => None,
    }
}

fn resolve_existing(
    plan: &Plan,
    kubeconfig: &Path,
    registry: Option<&str>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Cluster> {
    let here = Pos::UNKNOWN;
    for a in &plan.actions {
        if let Some(why) = existing_refusal(&a.kind) {
            errors.push(
                Diagnostic::new(
                    here,
                    format!(
                        "timeline at {}: {why} is not available on a cluster of your own",
                        crate::units::Dur(a.at)
                    ),
                )
                .hint("run this scenario on a Kind cluster edgesim makes (leave --kubeconfig out), or on netns, docker or device"),
            );
        }
    }
    if let Err(e) = kube::config::Kubeconfig::read_from(kubeconfig) {
        errors.push(Diagnostic::new(
            here,
            format!("--kubeconfig {}: {e}", kubeconfig.display()),
        ));
    }
    let registry = match registry.map(RegistryRef::parse) {
        None => {
            errors.push(
                Diagnostic::new(
                    here,
                    "a cluster of your own needs --registry: where edgesim pushes the run's artifact and images, and the nodes pull them",
                )
                .hint("e.g. --registry registry.lan:5000 (a registry both this machine and the nodes reach; http://… for plain HTTP)"),
            );
            None
        }
        Some(Err(e)) => {
            errors.push(Diagnostic::new(here, e));
            None
        }
        Some(Ok(r)) => Some(r),
    }?;
    Some(Cluster::Existing {
        kubeconfig: std::path::absolute(kubeconfig).unwrap_or_else(|_| kubeconfig.to_path_buf()),
        registry,
    })
}

/// What provisioning created on a Kind cluster, newest last (reverted in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    StateFile,
    Cluster,
    Registry,
    /// The run's Flux objects on a cluster of your own.
    FluxObjects,
}

/// What a failed provisioning left.
pub struct Partial {
    state: RunState,
    faults: Option<KindFaults>,
    fleet: Option<Fleet>,
    client: Option<Client>,
    journal: Vec<Created>,
}

impl Partial {
    /// The start of run `run_id`'s provisioning: its state, `ks` its kind part, nothing created.
    fn for_run(plan: &Plan, run_id: &str, mode: Mode, out_dir: PathBuf, ks: KindState) -> Partial {
        Partial::new(RunState::new(
            plan,
            run_id,
            mode,
            out_dir,
            TargetState::Kind(ks),
        ))
    }

    fn new(state: RunState) -> Partial {
        Partial {
            state,
            faults: None,
            fleet: None,
            client: None,
            journal: Vec::new(),
        }
    }

    pub async fn teardown(self) -> Vec<String> {
        let Partial {
            mut state,
            faults,
            fleet,
            client,
            journal,
        } = self;
        let mut errors = Vec::new();
        if let Some(mut f) = fleet {
            errors.extend(f.bye().await);
        }
        if let Some(mut f) = faults {
            errors.extend(f.clear().await);
            state = f.state().clone();
        }
        errors.extend(revert(&journal, &state, client.as_ref()).await);
        errors
    }
}

fn kind_state(st: &RunState) -> Option<&KindState> {
    match &st.target {
        TargetState::Kind(k) => Some(k),
        _ => None,
    }
}

/// Reverts a provisioning journal in reverse order.
async fn revert(journal: &[Created], state: &RunState, client: Option<&Client>) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(ks) = kind_state(state) else {
        return vec![format!("run {} is not a kind run", state.run_id)];
    };
    for c in journal.iter().rev() {
        match c {
            Created::Registry => match Docker::connect().await {
                Ok(d) => errors.extend(d.remove_run(&state.run_id).await),
                Err(e) => errors.push(e.to_string()),
            },
            Created::Cluster => {
                if let Err(e) = tools::kind_delete(&ks.cluster, ks.kubeconfig.as_deref()).await {
                    errors.push(e.to_string());
                }
            }
            Created::FluxObjects => match client {
                Some(c) => errors
                    .extend(delivery::remove_flux_objects(c, &state.run_id, PRUNE_TIMEOUT).await),
                None => errors.push("no API client to remove the run's Flux objects".into()),
            },
            Created::StateFile => errors.extend(state.remove_or_msg()),
        }
    }
    errors
}

/// Removes what a run left on a cluster of your own, from its state file alone (`edgesim
/// cleanup` after a SIGKILL): its Flux objects (Flux prunes its pods, agents and namespaces;
/// the agents reverted by themselves when the controller's streams ended).
pub async fn cleanup_existing(state: &RunState) -> Vec<String> {
    let Some(kc) = kind_state(state).and_then(|k| k.kubeconfig.clone()) else {
        return Vec::new();
    };
    match client_of(&kc).await {
        Ok(c) => delivery::remove_flux_objects(&c, &state.run_id, PRUNE_TIMEOUT).await,
        Err(e) => vec![e.to_string()],
    }
}

/// A Kubernetes client for the cluster of `kubeconfig`.
async fn client_of(kubeconfig: &Path) -> Result<Client> {
    let what = |e: &dyn std::fmt::Display| {
        HostError::other(
            "connecting to the API server of",
            kubeconfig.display().to_string(),
            e.to_string(),
        )
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| what(&e))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| what(&e))?;
    Client::try_from(cfg).map_err(|e| what(&e))
}

/// The registry container beside a Kind cluster.
struct Registry {
    /// Its name, by which the cluster reaches it on Kind's network.
    container: String,
    /// Where this host reaches it.
    host_port: u16,
}

/// A Kind cluster the run made: its node containers, the faults inside them.
struct Local {
    faults: KindFaults,
    nodes: KindNodes,
    docker: Docker,
    registry: Registry,
    journal: Vec<Created>,
    frozen: BTreeSet<usize>,
    host: HostCpu,
    allowed: Vec<u32>,
    limits: Vec<NodeLimits>,
    sockets: Vec<Option<SocketFactory>>,
}

/// A cluster of your own: its nodes, and the agents on them.
struct Remote {
    state: RunState,
    nodes: Vec<ClusterNode>,
    registry: RegistryRef,
    fleet: Fleet,
    /// The exec streams the agents speak over (dropped, they end the agents' sessions).
    _execs: Vec<kube::api::AttachedProcess>,
    /// Per node: the interface holding its cluster address, the connections exempt from
    /// faults.
    ifaces: Vec<String>,
    exempt: Vec<Vec<Flow>>,
    journal: Vec<Created>,
}

enum Net {
    Local(Box<Local>),
    Remote(Box<Remote>),
}

/// A lab on a Kubernetes cluster.
pub struct KindLab {
    pub plan: Arc<Plan>,
    bound: Bound,
    net: Net,
    pub workloads: Workloads,
    links: Vec<(LinkParams, LinkParams)>,
    partitions: BTreeMap<String, Vec<Block>>,
    isolated: BTreeSet<usize>,
    powered_off: BTreeSet<usize>,
}

impl KindLab {
    /// Builds the lab of `plan` on its cluster (see the module docs). The workloads are
    /// delivered separately ([`KindLab::deploy`]).
    ///
    /// Guarantees: the state file names what is created before it exists; on error everything
    /// created is described by the returned [`Partial`].
    pub async fn provision(
        plan: Arc<Plan>,
        bound: Bound,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> std::result::Result<KindLab, Box<(String, Partial)>> {
        match bound.cluster.clone() {
            Cluster::Create(g) => {
                Self::provision_kind(plan, bound, *g, run_id, mode, out_dir).await
            }
            Cluster::Existing {
                kubeconfig,
                registry,
            } => {
                Self::provision_existing(plan, bound, kubeconfig, registry, run_id, mode, out_dir)
                    .await
            }
        }
    }

    async fn provision_kind(
        plan: Arc<Plan>,
        bound: Bound,
        config: Generated,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> std::result::Result<KindLab, Box<(String, Partial)>> {
        let cluster = config.cluster.name.clone();
        let kubeconfig = std::path::absolute(out_dir.join("kubeconfig"))
            .unwrap_or_else(|_| out_dir.join("kubeconfig"));
        let registry_name = format!("edgesim-{run_id}-registry");
        let ks = KindState {
            cluster: cluster.clone(),
            network: nodes::network(),
            table: format!("edgesim-{run_id}"),
            containers: Vec::new(),
            created: true,
            kubeconfig: Some(kubeconfig.clone()),
            registry: Some(registry_name.clone()),
        };
        let mut partial = Partial::for_run(&plan, run_id, mode, out_dir.clone(), ks);
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err(Box::new((e.to_string(), partial))),
                }
            };
        }
        tri!(partial.state.save_or_err());
        partial.journal.push(Created::StateFile);
        let docker = tri!(Docker::connect().await);

        // 1. The cluster.
        let config_file = out_dir.join("kind.yaml");
        let yaml = tri!(config.to_yaml(
            &plan.file.display().to_string(),
            &format!("edgesim kind-config {}", plan.file.display())
        ));
        tri!(
            std::fs::write(&config_file, yaml).map_err(|e| HostError::io(
                "writing",
                config_file.display().to_string(),
                e
            ))
        );
        partial.journal.push(Created::Cluster);
        tracing::info!(%cluster, "creating the Kind cluster");
        tri!(tools::kind_create(&cluster, &config_file, &kubeconfig).await);

        // 2. Its nodes: found, their addresses in the state (what workloads and `exec` see),
        //    held to their boards.
        let kn = tri!(KindNodes::find(&cluster, plan.nodes.len(), &nodes::network()).await);
        for (i, n) in partial.state.nodes.iter_mut().enumerate() {
            n.addr = kn.addr(Member::Worker(i));
        }
        let faults = tri!(KindFaults::attach(partial.state.clone(), &kn));
        partial.faults = Some(faults);
        let limits = tri!(kn.shape(&plan).await);

        // 3. The API's view: GPUs advertised, allocatable checked against the profiles.
        let client = tri!(client_of(&kubeconfig).await);
        for (i, n) in plan.nodes.iter().enumerate() {
            if n.profile.gpu.is_some() {
                tri!(k::advertise_gpu(&client, &kn.nodes[i + 1].0, 1).await);
            }
        }
        let expected: Vec<(&str, u64, u64)> = config
            .workers
            .iter()
            .map(|w| {
                (
                    w.node.as_str(),
                    w.reservation.allocatable_cpu_milli,
                    w.reservation.allocatable_memory,
                )
            })
            .collect();
        let tolerance = k::Tolerance {
            cpu_millicores: 0,
            // kubelet reads capacity in KiB.
            memory_bytes: 1 << 10,
        };
        // Workers register with the API server as they join; give late ones a minute.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let wrong = loop {
            let wrong = tri!(k::verify_allocatable(&client, &expected, tolerance).await);
            if wrong.is_empty() || tokio::time::Instant::now() >= deadline {
                break wrong;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        if !wrong.is_empty() {
            tri!(Err(HostError::other(
                "checking the allocatable resources of",
                format!("Kind cluster {cluster}"),
                joined(&wrong)
            )));
        }

        // 4. Images into the nodes, the registry beside them, Flux on the control plane.
        tri!(tools::kind_load(&cluster, &bound.load).await);
        partial.journal.push(Created::Registry);
        let image = tools::registry_image();
        tri!(docker.ensure_image(&image).await);
        let labels = vec![
            ("edgesim.run".to_string(), run_id.to_string()),
            ("edgesim.scenario".to_string(), plan.name.clone()),
        ];
        let host_port = tri!(
            docker
                .start_published(
                    &registry_name,
                    &image,
                    &nodes::network(),
                    &labels,
                    tools::REGISTRY_PORT
                )
                .await
        );
        let install = tri!(tools::flux_install_manifests().await);
        let install = tri!(
            tools::pin_to_control_plane(&install).map_err(|e| HostError::other(
                "reading",
                "Flux's install manifests",
                e
            ))
        );
        tri!(k::apply(&client, &install, FIELD_MANAGER).await);

        // 5. The links' baseline.
        let baseline = plan.baseline_links();
        let f = node_faults(&plan, &baseline, &BTreeMap::new(), &BTreeSet::new());
        if let Some(faults) = partial.faults.as_mut() {
            tri!(faults.apply(&f).await);
        }
        let Some(faults) = partial.faults.take() else {
            return Err(Box::new((
                "internal: the node faults were not opened".into(),
                partial,
            )));
        };
        let n = plan.nodes.len();
        Ok(KindLab {
            workloads: Workloads::new(client, plan.clone(), run_id),
            links: baseline,
            net: Net::Local(Box::new(Local {
                host: plan.scaled_host(&HostCpu::detect()),
                faults,
                nodes: kn,
                docker,
                registry: Registry {
                    container: registry_name,
                    host_port,
                },
                journal: partial.journal,
                frozen: BTreeSet::new(),
                allowed: crate::host::cgroup::allowed_cpus(),
                limits,
                sockets: vec![None; n],
            })),
            plan,
            bound,
            partitions: BTreeMap::new(),
            isolated: BTreeSet::new(),
            powered_off: BTreeSet::new(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision_existing(
        plan: Arc<Plan>,
        bound: Bound,
        kubeconfig: PathBuf,
        registry: RegistryRef,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> std::result::Result<KindLab, Box<(String, Partial)>> {
        // 1. The cluster as it is: nodes bound and checked, Flux there. Nothing changes yet.
        let problems = |p: Vec<String>| {
            format!(
                "{} problem{} with the cluster; nothing was changed:\n  {}",
                p.len(),
                if p.len() == 1 { "" } else { "s" },
                p.join("\n  ")
            )
        };
        let ks = KindState {
            cluster: kubeconfig.display().to_string(),
            network: String::new(),
            table: format!("edgesim-{run_id}"),
            containers: Vec::new(),
            created: false,
            kubeconfig: Some(kubeconfig.clone()),
            registry: None,
        };
        let mut partial = Partial::for_run(&plan, run_id, mode, out_dir.clone(), ks);
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Err(Box::new((e.to_string(), partial))),
                }
            };
        }
        let client = tri!(client_of(&kubeconfig).await);
        partial.client = Some(client.clone());
        let all: Vec<Node> = tri!(
            Api::<Node>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| HostError::other("listing", "the cluster's Nodes", e.to_string()))
        )
        .items;
        let cluster_nodes = match existing::bind_nodes(&all, &plan) {
            Ok(b) => b,
            Err(p) => return Err(Box::new((problems(p), partial))),
        };
        let expected: Vec<(&str, u64, u64)> = plan
            .nodes
            .iter()
            .zip(&cluster_nodes)
            .map(|(n, c)| {
                (
                    c.node.as_str(),
                    u64::from(n.profile.cpu.cores) * 1000,
                    n.profile.workload_memory().0,
                )
            })
            .collect();
        let mut found = Vec::new();
        for (name, cpu, memory) in &expected {
            let tolerance = k::Tolerance {
                cpu_millicores: existing::TOLERANCE_CPU_MILLI,
                memory_bytes: (*memory as f64 * existing::TOLERANCE_MEMORY_FRACTION) as u64,
            };
            found.extend(k::allocatable_mismatches(
                &all,
                &[(name, *cpu, *memory)],
                tolerance,
            ));
        }
        let mut p: Vec<String> = found.iter().map(ToString::to_string).collect();
        let api_slices: Vec<EndpointSlice> = tri!(
            Api::<EndpointSlice>::namespaced(client.clone(), "default")
                .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
                .await
                .map_err(|e| HostError::other(
                    "reading",
                    "the API server's endpoints",
                    e.to_string()
                ))
        )
        .items;
        let api = existing::api_server_addrs(&api_slices);
        if api.is_empty() {
            p.push("the `kubernetes` Service has no endpoints: the API server's address is unknown, so its traffic could not be kept out of the faults".into());
        }
        let flux = Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            manifests::FLUX_NAMESPACE,
            &k::kustomization_resource(),
        );
        if let Err(e) = flux.list(&ListParams::default().limit(1)).await {
            p.push(format!(
                "Flux is not installed (listing Kustomizations in {}: {e}): bootstrap it (ansible/flux-bootstrap.yml) or `flux install`",
                manifests::FLUX_NAMESPACE
            ));
        }
        if !p.is_empty() {
            return Err(Box::new((problems(p), partial)));
        }
        for (n, c) in partial.state.nodes.iter_mut().zip(&cluster_nodes) {
            n.addr = c.addr;
        }
        tri!(partial.state.save_or_err());
        partial.journal.push(Created::StateFile);

        // 2. Images to the registry, for the architectures the nodes have.
        let docker = tri!(Docker::connect().await);
        let mut todo: BTreeSet<(String, String)> = BTreeSet::new();
        for c in &cluster_nodes {
            todo.insert((
                image_tag("agent", c.arch),
                registry.push_image("agent", &format!("{IMAGE_VERSION}-{}", c.arch)),
            ));
        }
        for (wi, w) in plan.workloads.iter().enumerate() {
            if let Runs::App(app) = &bound.runs[wi] {
                for &n in &w.nodes {
                    let arch = cluster_nodes[n].arch;
                    todo.insert((
                        image_tag(app, arch),
                        registry.push_image(app, &format!("{IMAGE_VERSION}-{arch}")),
                    ));
                }
            }
        }
        for (local, remote) in todo {
            tracing::info!(%local, %remote, "pushing");
            tri!(docker.push(&local, &remote).await);
        }

        // 3. The agents, delivered by Flux, reached through the API server, their nodes
        //    checked against the profiles and the scenario's needs.
        partial.journal.push(Created::FluxObjects);
        let workloads = Workloads::new(client.clone(), plan.clone(), run_id);
        let delivery = render_delivery(
            &plan,
            &partial.state,
            &bound,
            &Some(&registry),
            &cluster_nodes,
        );
        let url = format!(
            "oci://{}/{}:{run_id}",
            registry.push,
            manifests::artifact_repository(&plan)
        );
        let revision = tri!(
            workloads
                .push(&delivery, &out_dir.join("kind-artifact"), &url)
                .await
                .map_err(|e| HostError::other("delivering", "the run's artifact", e))
        );
        let agents_ks = format!("{}-agents", manifests::flux_name(run_id));
        let objects = [
            manifests::flux_source(&plan, run_id, &registry.pull, registry.insecure),
            manifests::flux_kustomization(run_id, &agents_ks, "./agents", AGENTS_TIMEOUT),
        ];
        tri!(
            workloads
                .deliver(
                    &objects,
                    std::slice::from_ref(&agents_ks),
                    &revision,
                    AGENTS_TIMEOUT,
                    "the agents"
                )
                .await
                .map_err(|e| HostError::other("delivering", "the agents", e))
        );
        let mut members = Vec::new();
        let mut execs = Vec::new();
        let mut facts = Vec::new();
        for (i, c) in cluster_nodes.iter().enumerate() {
            let (member, exec, f) =
                tri!(connect_agent(&client, run_id, c, &plan.nodes[i].name).await);
            members.push(member);
            execs.push(exec);
            facts.push(f);
        }
        partial.fleet = Some(Fleet::new(members));
        let mut p = Vec::new();
        let mut ifaces = Vec::new();
        for (i, (c, f)) in cluster_nodes.iter().zip(&facts).enumerate() {
            let host = format!("{} ({})", c.node, plan.nodes[i].name);
            let needs = crate::targets::device::lab::needs_of(&plan, i);
            // Its shape was checked through its allocatable resources: a node's kubelet
            // reserves, and its agent sees the whole machine.
            p.extend(crate::targets::device::check_kernel(&host, f, needs));
            if needs.cell(f) {
                p.push(format!(
                    "{host}: its kernel lacks sch_netem or sch_htb for the scenario's links, and the userspace emulator cannot carry a cluster node's pods: load the modules (ansible/prepare-board.yml), or leave delay and rate off its links"
                ));
            }
            match f.addrs.iter().find(|(_, a)| *a == c.addr) {
                Some((iface, _)) => ifaces.push(iface.clone()),
                None => p.push(format!(
                    "{host}: no interface holds its InternalIP {} (it has {})",
                    c.addr,
                    f.interfaces.join(", ")
                )),
            }
        }
        if !p.is_empty() {
            return Err(Box::new((problems(p), partial)));
        }
        let Some(mut fleet) = partial.fleet.take() else {
            return Err(Box::new(("internal: no agents".into(), partial)));
        };
        fleet.start_heartbeat(HEARTBEAT.min(LEASE / 3));
        let exempt: Vec<Vec<Flow>> = cluster_nodes
            .iter()
            .map(|c| existing::exempt_flows(c.addr, &api))
            .collect();
        // 4. The links' baseline.
        let links = plan.baseline_links();
        let baseline = remote_desired(
            &plan,
            &links,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &cluster_nodes,
            &ifaces,
            &exempt,
        );
        if let Err(e) = fleet.push_all(baseline).await {
            partial.fleet = Some(fleet);
            return Err(Box::new((e.to_string(), partial)));
        }
        Ok(KindLab {
            workloads,
            links,
            net: Net::Remote(Box::new(Remote {
                state: partial.state,
                nodes: cluster_nodes,
                registry,
                fleet,
                _execs: execs,
                ifaces,
                exempt,
                journal: partial.journal,
            })),
            plan,
            bound,
            partitions: BTreeMap::new(),
            isolated: BTreeSet::new(),
            powered_off: BTreeSet::new(),
        })
    }

    /// The run's state (what the state file says).
    pub fn state(&self) -> &RunState {
        match &self.net {
            Net::Local(l) => l.faults.state(),
            Net::Remote(r) => &r.state,
        }
    }

    fn state_mut(&mut self) -> &mut RunState {
        match &mut self.net {
            Net::Local(l) => l.faults.state_mut(),
            Net::Remote(r) => &mut r.state,
        }
    }

    /// What a probe aims at: the node's cluster address for its scenario address.
    pub fn real_addr(&self, a: Ipv4Addr) -> Ipv4Addr {
        self.plan
            .nodes
            .iter()
            .position(|n| n.addr == a)
            .map_or(a, |i| self.state().nodes[i].addr)
    }

    /// Whether probes run on the nodes, through the agents (a cluster of your own).
    pub fn remote_probes(&self) -> bool {
        matches!(self.net, Net::Remote(_))
    }

    /// Makes the nodes hold exactly the faults in force.
    async fn push(&mut self) -> Result<()> {
        let down: BTreeSet<usize> = self.isolated.union(&self.powered_off).copied().collect();
        match &mut self.net {
            Net::Local(l) => {
                let f = node_faults(&self.plan, &self.links, &self.partitions, &down);
                l.faults.apply(&f).await
            }
            Net::Remote(r) => {
                let desired = remote_desired(
                    &self.plan,
                    &self.links,
                    &self.partitions,
                    &down,
                    &r.nodes,
                    &r.ifaces,
                    &r.exempt,
                );
                r.fleet.push_all(desired).await
            }
        }
    }

    fn remote_registry(&self) -> Option<&RegistryRef> {
        match &self.net {
            Net::Remote(r) => Some(&r.registry),
            Net::Local(_) => None,
        }
    }

    fn remote_nodes(&self) -> &[ClusterNode] {
        match &self.net {
            Net::Remote(r) => &r.nodes,
            Net::Local(_) => &[],
        }
    }

    /// Renders the workloads, pushes them as the run's artifact and has Flux deliver them;
    /// returns once the revision is deployed and healthy.
    pub async fn deploy(&mut self, out_dir: &Path) -> std::result::Result<(), String> {
        let plan = self.plan.clone();
        let run_id = self.state().run_id.clone();
        let delivery = render_delivery(
            &plan,
            self.state(),
            &self.bound,
            &self.remote_registry(),
            self.remote_nodes(),
        );
        let (url, registry, insecure) = match &self.net {
            Net::Local(l) => (
                format!(
                    "oci://127.0.0.1:{}/{}:{run_id}",
                    l.registry.host_port,
                    manifests::artifact_repository(&plan)
                ),
                format!("{}:{}", l.registry.container, tools::REGISTRY_PORT),
                true,
            ),
            Net::Remote(r) => (
                format!(
                    "oci://{}/{}:{run_id}",
                    r.registry.push,
                    manifests::artifact_repository(&plan)
                ),
                r.registry.pull.clone(),
                r.registry.insecure,
            ),
        };
        // A cluster of your own has this very artifact already (the agents came with it).
        let revision = self
            .workloads
            .push(&delivery, &out_dir.join("kind-artifact"), &url)
            .await?;
        let name = manifests::flux_name(&run_id);
        let timeout = manifests::delivery_timeout(&plan, DELIVERY_MARGIN);
        let objects = [
            manifests::flux_source(&plan, &run_id, &registry, insecure),
            manifests::flux_kustomization(&run_id, &name, "./", timeout),
        ];
        let mut kustomizations = vec![name];
        if self.remote_probes() {
            kustomizations.push(format!("{}-agents", manifests::flux_name(&run_id)));
        }
        self.workloads
            .deliver(
                &objects,
                &kustomizations,
                &revision,
                timeout,
                "the workloads",
            )
            .await?;
        self.workloads.delivered(revision, kustomizations, delivery);
        Ok(())
    }

    /// What the lab has to say for the report (Flux's delivery and convergence times).
    pub fn take_notes(&mut self) -> Vec<String> {
        self.workloads.take_notes()
    }

    pub fn mark_ready(&mut self) -> Result<()> {
        self.state_mut().ready = true;
        self.state().save_or_err()
    }

    /// A socket factory inside node `n`'s container (where its pods' ports are); none on a
    /// cluster of your own, whose probes run on the nodes.
    pub fn sockets(&mut self, n: usize) -> Result<SocketFactory> {
        let Net::Local(l) = &mut self.net else {
            return Err(HostError::other(
                "opening sockets in",
                format!("node {n}"),
                "a cluster's own nodes run their probes through their agents",
            ));
        };
        if let Some(f) = &l.sockets[n] {
            return Ok(f.clone());
        }
        let (name, _, pid) = &l.nodes.nodes[n + 1];
        let f = SocketFactory::start(nodes::open_ns(name, *pid)?, name)?;
        l.sockets[n] = Some(f.clone());
        Ok(f)
    }

    /// Starts the probes on the nodes (a cluster of your own), on a grid from `t0`.
    pub async fn start_probes(&mut self, t0: tokio::time::Instant) -> Result<()> {
        let map: Vec<(Ipv4Addr, Ipv4Addr)> = self
            .plan
            .nodes
            .iter()
            .zip(&self.state().nodes)
            .map(|(p, s)| (p.addr, s.addr))
            .collect();
        let real = |a: Ipv4Addr| map.iter().find(|(p, _)| *p == a).map_or(a, |(_, s)| *s);
        match &mut self.net {
            Net::Remote(r) => r.fleet.start_probes(&self.plan, real, t0).await,
            Net::Local(_) => Ok(()),
        }
    }

    /// The samples of the probes run on the nodes, into `logs`.
    pub async fn collect_probes(&mut self, logs: &[crate::probe::ProbeLog]) -> Vec<String> {
        match &mut self.net {
            Net::Remote(r) => r.fleet.collect_probes(logs).await,
            Net::Local(_) => Vec::new(),
        }
    }

    /// Reads workloads' metrics through the agents (a cluster of your own).
    pub fn fetcher(&self) -> Option<fleet::Fetcher> {
        match &self.net {
            Net::Remote(r) => Some(r.fleet.fetcher()),
            Net::Local(_) => None,
        }
    }

    /// The limits node `n`'s container holds now (a Kind cluster).
    pub async fn read_limits(&self, n: usize) -> Result<NodeLimits> {
        match &self.net {
            Net::Local(l) => l.docker.read_limits(&l.nodes.nodes[n + 1].0).await,
            Net::Remote(_) => Err(HostError::other(
                "reading the limits of",
                format!("node {n}"),
                "a cluster's own nodes are what they are",
            )),
        }
    }

    /// Sends `signal` to the container of each pod of workload `wi` on `ns`, through
    /// containerd in its Kind node (the container's own processes get it, as a board's process
    /// would).
    async fn signal(&self, wi: usize, ns: &[usize], signal: i32) -> Result<()> {
        let Net::Local(l) = &self.net else {
            return Err(not_on_your_own(
                "signalling",
                self.plan.workloads[wi].name.clone(),
            ));
        };
        let api = self.workloads.pods_api();
        for (n, pod) in self.workloads.pod_names(wi, ns) {
            let p = api
                .get(&pod)
                .await
                .map_err(|e| HostError::other("reading pod", pod.clone(), e.to_string()))?;
            let Some(id) = delivery::running_container(&p) else {
                // Not running (exited, or restarting): nothing to signal, as on a board.
                continue;
            };
            let argv: Vec<String> = [
                "ctr",
                "--namespace",
                "k8s.io",
                "task",
                "kill",
                "--signal",
                &signal.to_string(),
                &id,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let node = &l.nodes.nodes[n + 1].0;
            let (code, out) = l.docker.exec_output(node, &argv).await?;
            if code != 0 {
                return Err(HostError::other(
                    "signalling",
                    format!("pod {pod} on {node}"),
                    format!("`{}` exited {code}: {}", argv.join(" "), out.trim()),
                ));
            }
        }
        Ok(())
    }

    /// Pauses or unpauses the Kind node containers of `ns`.
    async fn freeze(&mut self, ns: &[usize], on: bool) -> Result<()> {
        let Net::Local(l) = &mut self.net else {
            return Err(not_on_your_own("freezing", "a node"));
        };
        for &n in ns {
            if on || l.frozen.contains(&n) {
                l.docker.pause(&l.nodes.nodes[n + 1].0, on).await?;
            }
            if on {
                l.frozen.insert(n);
            } else {
                l.frozen.remove(&n);
            }
        }
        Ok(())
    }

    /// Applies one timeline action.
    pub async fn apply(&mut self, action: &ActionKind) -> Result<()> {
        match action {
            ActionKind::Partition { name, blocks } => {
                self.partitions.insert(name.clone(), blocks.clone());
                self.push().await
            }
            ActionKind::Heal { names } => {
                for n in names {
                    self.partitions.remove(n);
                }
                self.push().await?;
                self.workloads
                    .measure_convergence(format!("the heal of {}", names.join(", ")));
                Ok(())
            }
            ActionKind::Impair { link, up, down } => {
                self.links[*link] = (*up, *down);
                self.push().await
            }
            ActionKind::NodeDown { nodes: ns, mode } => match mode {
                DownMode::Isolate => {
                    self.isolated.extend(ns.iter().copied());
                    self.push().await
                }
                DownMode::Freeze => self.freeze(ns, true).await,
                DownMode::Poweroff => {
                    // Cable out first, then the node's workloads go.
                    self.powered_off.extend(ns.iter().copied());
                    self.push().await?;
                    let pods = self.workloads.pods_on(ns);
                    self.workloads.delete_pods(&pods).await
                }
            },
            ActionKind::NodeUp { nodes: ns, .. } => {
                let powered: Vec<usize> = ns
                    .iter()
                    .copied()
                    .filter(|n| self.powered_off.remove(n))
                    .collect();
                for n in ns {
                    self.isolated.remove(n);
                }
                if matches!(self.net, Net::Local(_)) {
                    self.freeze(ns, false).await?;
                }
                // Network first: a board that powers on finds its cable plugged in.
                self.push().await?;
                let pods = self.workloads.pods_on(&powered);
                self.workloads.create_pods(&pods).await
            }
            ActionKind::Kill {
                workload,
                nodes: ns,
                signal,
            } => self.signal(*workload, ns, *signal).await,
            ActionKind::Restart {
                workload,
                nodes: ns,
            } => {
                let pods: Vec<String> = self
                    .workloads
                    .pod_names(*workload, ns)
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                self.workloads.delete_pods(&pods).await?;
                self.workloads.create_pods(&pods).await
            }
            ActionKind::Cpu { nodes: ns, .. } | ActionKind::Memory { nodes: ns, .. } => {
                let Net::Local(l) = &mut self.net else {
                    return Err(not_on_your_own("resizing", "a node"));
                };
                for &n in ns {
                    let base = node_limits(&self.plan, n, &l.host, &l.allowed).with_pids(None);
                    let Some(lim) = crate::faults::resized(
                        action,
                        n,
                        &base,
                        &l.limits[n],
                        &self.plan.nodes[n].profile,
                        &l.host,
                        &l.allowed,
                    ) else {
                        continue;
                    };
                    l.docker
                        .update_limits(&l.nodes.nodes[n + 1].0, &lim)
                        .await?;
                    l.limits[n] = lim;
                }
                Ok(())
            }
        }
    }

    /// Collects the pods' logs and reverts every fault; then removes what the run created
    /// (Kind: the registry and the cluster; your own cluster: the run's Flux objects, whose
    /// pods, agents and namespaces Flux prunes). Keeps going past errors.
    pub async fn teardown(mut self) -> Vec<String> {
        let out_dir = self.state().out_dir.clone();
        self.workloads.stop();
        let mut errors = self.workloads.collect_logs(&out_dir).await;
        let client = self.workloads.client().clone();
        match self.net {
            Net::Local(mut l) => {
                let frozen: Vec<usize> = l.frozen.iter().copied().collect();
                for n in frozen {
                    if let Err(e) = l.docker.pause(&l.nodes.nodes[n + 1].0, false).await {
                        errors.push(e.to_string());
                    }
                }
                errors.extend(l.faults.clear().await);
                l.sockets.clear();
                let state = l.faults.state().clone();
                errors.extend(revert(&l.journal, &state, Some(&client)).await);
            }
            Net::Remote(mut r) => {
                errors.extend(r.fleet.bye().await);
                drop(r._execs);
                errors.extend(revert(&r.journal, &r.state, Some(&client)).await);
            }
        }
        errors
    }
}

/// What every node of a cluster of your own must hold (`nodes`' agents, in the plan's order):
/// the device target's desired state of a board, the isolation blocks of the nodes `down`, the
/// node's kubelet ↔ API server traffic exempt (its agent's session rides on it).
fn remote_desired(
    plan: &Plan,
    links: &[(LinkParams, LinkParams)],
    partitions: &BTreeMap<String, Vec<Block>>,
    down: &BTreeSet<usize>,
    nodes: &[ClusterNode],
    ifaces: &[String],
    exempt: &[Vec<Flow>],
) -> Vec<Desired> {
    let addrs: Vec<IpAddr> = nodes.iter().map(|c| IpAddr::V4(c.addr)).collect();
    (0..plan.nodes.len())
        .map(|n| {
            let mut d = crate::targets::device::desired_for(
                plan, links, partitions, &addrs, n, &ifaces[n], LEASE,
            );
            d.blocks.extend(fleet::isolation_blocks(
                plan,
                &addrs,
                n,
                down.iter().copied(),
            ));
            d.exempt_management = false;
            d.exempt = exempt[n].clone();
            d
        })
        .collect()
}

/// What workload `wi` runs on node `ni`: on Kind the image loaded into the nodes (or pulled,
/// for an image the Engine lacks); on your own cluster the image pushed to `registry` for the
/// node's architecture.
fn pod_image(
    bound: &Bound,
    registry: &Option<&RegistryRef>,
    nodes: &[ClusterNode],
    wi: usize,
    ni: usize,
) -> PodImage {
    match (&bound.runs[wi], registry) {
        (Runs::App(app), None) => PodImage {
            image: manifests::app_image(app),
            pull_policy: "Never",
        },
        (Runs::App(app), Some(reg)) => PodImage {
            image: reg.image(
                app,
                &format!(
                    "{IMAGE_VERSION}-{}",
                    nodes.get(ni).map_or(Arch::host(), |c| c.arch)
                ),
            ),
            pull_policy: "IfNotPresent",
        },
        (Runs::Image { image, local }, reg) => PodImage {
            image: image.clone(),
            pull_policy: if *local && reg.is_none() {
                "Never"
            } else {
                "IfNotPresent"
            },
        },
    }
}

/// The run's artifact: the workloads' pods and, on your own cluster, the agents.
fn render_delivery(
    plan: &Plan,
    state: &RunState,
    bound: &Bound,
    registry: &Option<&RegistryRef>,
    nodes: &[ClusterNode],
) -> manifests::Delivery {
    let mut d = manifests::render(
        plan,
        state,
        |wi, ni| pod_image(bound, registry, nodes, wi, ni),
        delivery::POD_GRACE,
    );
    if let Some(reg) = registry {
        d.files
            .extend(existing::agent_files(plan, &state.run_id, nodes, |a| {
                reg.image("agent", &format!("{IMAGE_VERSION}-{a}"))
            }));
    }
    d
}

/// Execs the agent in the agent pod on cluster node `c` (waiting until it runs) and greets
/// it; its connection, the exec stream (to keep), and its facts.
async fn connect_agent(
    client: &Client,
    run_id: &str,
    c: &ClusterNode,
    node: &str,
) -> Result<(fleet::Member, kube::api::AttachedProcess, Facts)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &existing::agents_namespace(run_id));
    let lp = ListParams::default()
        .labels(&format!("{}={run_id}", existing::AGENT_LABEL))
        .fields(&format!("spec.nodeName={}", c.node));
    let what = format!("the agent on {} ({node})", c.node);
    let deadline = tokio::time::Instant::now() + AGENTS_TIMEOUT;
    let pod = loop {
        let running = api.list(&lp).await.ok().and_then(|l| {
            l.items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        });
        if let Some(p) = running.and_then(|p| p.metadata.name) {
            break p;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HostError::other(
                "reaching",
                what,
                format!("no agent pod runs there within {AGENTS_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let ap = AttachParams::default()
        .container("agent")
        .stdin(true)
        .stdout(true)
        .stderr(false);
    let mut exec = api
        .exec(&pod, ["/edgesim", "agent"], &ap)
        .await
        .map_err(|e| HostError::other("starting", what.clone(), e.to_string()))?;
    let (Some(w), Some(r)) = (exec.stdin(), exec.stdout()) else {
        return Err(HostError::other(
            "starting",
            what,
            "the exec stream has no stdin or stdout",
        ));
    };
    let member = fleet::Member {
        name: format!("{} ({node})", c.node),
        conn: Arc::new(tokio::sync::Mutex::new(
            crate::targets::device::transport::AgentConn::new(
                Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            ),
        )),
    };
    let hello = member.conn.lock().await.call(Request::Hello).await;
    let facts = fleet::check(hello, &member.name, "greeting")?
        .facts
        .ok_or_else(|| HostError::other("greeting", what.clone(), "the agent sent no facts"))?;
    if facts.protocol != crate::targets::device::agent::PROTOCOL {
        return Err(HostError::other(
            "greeting",
            what,
            format!(
                "its agent (edgesim {}) speaks protocol {}, this edgesim ({}) {}: push the agent image of this edgesim",
                facts.version,
                facts.protocol,
                env!("CARGO_PKG_VERSION"),
                crate::targets::device::agent::PROTOCOL
            ),
        ));
    }
    Ok((member, exec, facts))
}

/// What a cluster of your own cannot do (validation refuses it before anything is created).
fn not_on_your_own(op: &'static str, what: impl Into<String>) -> HostError {
    HostError::other(op, what, "not on a cluster of your own")
}

fn joined(items: &[impl ToString]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The network faults implied by the live link parameters, partitions and isolated nodes:
/// per ordered pair of nodes, the impairment of the path between their sites (a missing path
/// is a cut), each partition's blocks, and everything to and from an isolated node cut (the
/// control plane included, but for the kubelet exemption).
pub fn node_faults(
    plan: &Plan,
    links: &[(LinkParams, LinkParams)],
    partitions: &BTreeMap<String, Vec<Block>>,
    isolated: &BTreeSet<usize>,
) -> NodeFaults {
    let mut f = NodeFaults::default();
    let n = plan.nodes.len();
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            match plan.path_params(links, plan.nodes[a].site, plan.nodes[b].site) {
                None => f.cuts.push(Cut {
                    name: format!("no-path {}->{}", plan.nodes[a].name, plan.nodes[b].name),
                    from: vec![Member::Worker(a)],
                    to: vec![Member::Worker(b)],
                }),
                Some(p) if p != LinkParams::default() => f = f.link(a, b, p),
                Some(_) => {}
            }
        }
    }
    let workers = |ns: &[usize]| ns.iter().map(|&i| Member::Worker(i)).collect::<Vec<_>>();
    for (name, blocks) in partitions {
        for (i, b) in blocks.iter().enumerate() {
            f.cuts.push(Cut {
                name: format!("partition {name} #{i}"),
                from: workers(&b.from),
                to: workers(&b.to),
            });
        }
    }
    for &m in isolated {
        let mut others: Vec<Member> = (0..n).filter(|&o| o != m).map(Member::Worker).collect();
        others.push(Member::ControlPlane);
        let name = format!("node-down isolate {}", plan.nodes[m].name);
        f.cuts.push(Cut {
            name: name.clone(),
            from: others.clone(),
            to: vec![Member::Worker(m)],
        });
        f.cuts.push(Cut {
            name,
            from: vec![Member::Worker(m)],
            to: others,
        });
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: kindfaults}
spec:
  seed: 1
  duration: 10s
  sites:
    cloud: {}
    edge: {uplink: {site: cloud, delay: 20ms, up: {rate: 5mbit}}}
    island: {}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, count: 2, site: edge, profile: raspberry-pi-5-8gb}
    - {name: lone, site: island, profile: raspberry-pi-5-8gb}
";

    fn plan() -> Plan {
        crate::testing::plan_of(SPEC, "kind")
    }

    #[test]
    fn links_partitions_and_isolation_become_node_faults() {
        let p = plan();
        let links = p.baseline_links();
        let none = BTreeMap::new();
        let f = node_faults(&p, &links, &none, &BTreeSet::new());
        // sink=0 (cloud), gw-1=1, gw-2=2 (edge), lone=3 (island: no path to anyone).
        let up = f.links[&(1, 0)];
        assert_eq!(up.delay, Some(Duration::from_millis(20)));
        assert_eq!(up.rate, Some(5_000_000));
        let down = f.links[&(0, 2)];
        assert_eq!(down.delay, Some(Duration::from_millis(20)));
        assert_eq!(down.rate, None);
        // Same site: no impairment at all.
        assert!(!f.links.contains_key(&(1, 2)));
        let cut = |a: usize, b: usize| {
            f.cuts
                .iter()
                .any(|c| c.from == [Member::Worker(a)] && c.to == [Member::Worker(b)])
        };
        for o in 0..3 {
            assert!(cut(3, o) && cut(o, 3), "lone is cut from {o}");
        }
        assert_eq!(f.cuts.len(), 6);

        let parts = BTreeMap::from([(
            "split".to_string(),
            vec![Block {
                from: vec![1, 2],
                to: vec![0],
            }],
        )]);
        let iso = BTreeSet::from([1]);
        let f = node_faults(&p, &links, &parts, &iso);
        assert!(f.cuts.iter().any(|c| c.name == "partition split #0"
            && c.from == [Member::Worker(1), Member::Worker(2)]
            && c.to == [Member::Worker(0)]));
        let isolate: Vec<&Cut> = f
            .cuts
            .iter()
            .filter(|c| c.name == "node-down isolate gw-1")
            .collect();
        assert_eq!(isolate.len(), 2);
        assert!(isolate[0].from.contains(&Member::ControlPlane));
        assert_eq!(isolate[0].to, [Member::Worker(1)]);
        assert_eq!(isolate[1].from, [Member::Worker(1)]);
        assert_eq!(isolate[1].to.len(), 4);
    }
}
