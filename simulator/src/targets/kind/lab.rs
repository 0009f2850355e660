//! The `kind` target's lab: a Kind cluster made for the run, shaped like the scenario's boards,
//! its workloads delivered by Flux from an artifact the run pushes, its faults installed inside
//! the node containers.
//!
//! - **Resolve** (before anything is created): `kind` and `flux` on PATH, the Docker Engine,
//!   the cluster configuration for this host (a board larger than the host is refused), no
//!   cluster of the scenario's name already, every workload's image (`app:` → the image
//!   `images/build.sh` builds for this host's architecture, loaded into the nodes; `image:`
//!   → loaded when the Engine has it, else pulled by the nodes); `command:` is refused (a
//!   cluster runs images).
//! - **Provision**, each step recorded in the state file before it is taken: `kind create
//!   cluster` from [`super::config`] (kubeconfig in the run's folder), the workers held to their
//!   boards ([`super::nodes::KindNodes::shape`]), the fake `nvidia.com/gpu` on GPU boards,
//!   every node's allocatable checked against its profile, the images loaded (`kind load`), a
//!   `registry:2` container beside the nodes, Flux's source and kustomize controllers
//!   installed on the control plane, and the links' baseline impairments.
//! - **Deploy**: the workloads rendered as pods ([`super::manifests`]), pushed as an OCI
//!   artifact (tag = the run id), an `OCIRepository` and a `Kustomization` applied, a reconcile
//!   requested, and the run waits until Flux reports *that* revision deployed and healthy
//!   (every pod Ready: `readyPort`s accept connections), with Flux's diagnosis on failure.
//! - **Faults**: the lab keeps the live link parameters, partitions and isolated nodes and,
//!   after each action, makes the node containers hold exactly what they imply
//!   ([`super::nodes::KindFaults`]; kubelet ↔ API server traffic exempt). Freeze pauses the
//!   node container (kubelet included: the node goes NotReady after 40 s, as a hung board's);
//!   poweroff isolates the node and deletes its pods, node-up creates them again from the
//!   delivered manifests; kill signals a pod's container through containerd in its node
//!   (`ctr task kill`), restart deletes the pod and creates it again; cpu and memory update
//!   the node container. After a heal the lab asks Flux to reconcile and reports how long
//!   until the revision is deployed and healthy again.
//! - **Probes and metrics** run from inside the node containers' network namespaces, where the
//!   pods' ports are (`hostNetwork`), aimed at the nodes' cluster addresses.
//! - **Workloads' events** come from the pods' container statuses (polled), their output from
//!   the pods' logs at the end (`<node>.stdout.log`: stdout and stderr together, the previous
//!   container's first when it restarted).
//! - **Teardown** collects the logs, reverts the node faults, removes the registry and deletes
//!   the cluster; `edgesim cleanup` does the same from the state file after a SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams};

use crate::host::ns::SocketFactory;
use crate::host::{HostError, Result};
use crate::profile::{Arch, HostCpu, NodeLimits};
use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::loc::Pos;
use crate::scenario::model::DownMode;
use crate::scenario::plan::{ActionKind, Block, LinkParams, Run};
use crate::targets::docker::api::Docker;
use crate::targets::docker::node_limits;
use crate::targets::state::{Mode, RunState, TargetState};
use crate::workload::{Event, EventKind, EventLog};

use super::config::{self, Generated};
use super::kube as k;
use super::manifests::{self, FIELD_MANAGER, FLUX_NAMESPACE, PodImage, RUN_LABEL};
use super::nodes::{self, Cut, KindFaults, KindNodes, KindState, Member, NodeFaults};
use super::tools;

/// How long pods get between SIGTERM and SIGKILL.
const POD_GRACE: Duration = Duration::from_secs(5);
/// How often the pods' statuses are read for the workloads' events.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long Flux may take to deliver beyond the workloads' own `readyTimeout`: the
/// controllers start, pull the artifact, apply it and wait.
const DELIVERY_MARGIN: Duration = Duration::from_secs(180);
/// How long the lab waits for Flux to converge after a heal.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a kind run will use, resolved before anything is created.
#[derive(Debug, Clone)]
pub struct Bound {
    pub config: Generated,
    /// What each workload runs.
    pub images: Vec<PodImage>,
    /// Images of this Engine to load into the nodes.
    pub load: Vec<String>,
}

/// The kind target's validation of a plan; nothing is created.
pub async fn resolve(plan: &Plan) -> std::result::Result<Bound, Vec<Diagnostic>> {
    let here = Pos::UNKNOWN;
    let mut errors = Vec::new();
    for (program, hint) in [
        (
            "kind",
            "install kind (https://kind.sigs.k8s.io; v0.32 is what edgesim is tested with), or `nix develop .#sim`",
        ),
        (
            "flux",
            "install the Flux CLI (https://fluxcd.io/flux/installation/; 2.8 is what edgesim is tested with), or `nix develop .#sim`",
        ),
    ] {
        if !crate::testing::have_program(program) {
            errors.push(
                Diagnostic::new(here, format!("the kind target needs `{program}` on PATH"))
                    .hint(hint),
            );
        }
    }
    let docker = match Docker::connect().await {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                Diagnostic::new(here, format!("the kind target needs a Docker Engine: {e}"))
                    .hint("start dockerd (Kind's nodes are containers)"),
            );
            None
        }
    };
    let config = match config::Host::detect() {
        None => {
            errors.push(Diagnostic::new(
                here,
                "cannot read this host's CPUs and memory (what each Kind node's kubelet sees)",
            ));
            None
        }
        Some(host) => match config::generate(plan, &host) {
            Ok(g) => Some(g),
            Err(e) => {
                errors.push(Diagnostic::new(here, e.to_string()));
                None
            }
        },
    };
    if let (Some(d), Some(g)) = (&docker, &config) {
        let cp = nodes::container_name(&g.cluster.name, 0);
        if d.container_exists(&cp).await {
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
    }
    let mut images = Vec::with_capacity(plan.workloads.len());
    let mut load = Vec::new();
    for w in &plan.workloads {
        let image = match (&w.program, &w.run) {
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
                // Kind nodes run this host's architecture (Kind cannot run arm64 nodes under
                // qemu): every app runs its build for this host.
                let tag = manifests::app_image(app);
                if let Some(d) = &docker
                    && d.image(&tag).await.is_err()
                {
                    errors.push(
                        Diagnostic::new(
                            w.pos,
                            format!("app `{app}`: the image {tag} is not in the Docker Engine"),
                        )
                        .hint(format!(
                            "build it with `images/build.sh --arch {} --only {app}` (no registry is needed)",
                            Arch::host()
                        )),
                    );
                }
                if !load.contains(&tag) {
                    load.push(tag.clone());
                }
                Some(PodImage {
                    image: tag,
                    pull_policy: "Never",
                })
            }
            (None, Run::Image { image, .. }) => {
                let local = match &docker {
                    Some(d) => d.image(image).await.is_ok(),
                    None => false,
                };
                if local && !load.contains(image) {
                    load.push(image.clone());
                }
                Some(PodImage {
                    image: image.clone(),
                    pull_policy: if local { "Never" } else { "IfNotPresent" },
                })
            }
        };
        images.push(image.unwrap_or(PodImage {
            image: String::new(),
            pull_policy: "Never",
        }));
    }
    match config {
        Some(config) if errors.is_empty() => Ok(Bound {
            config,
            images,
            load,
        }),
        _ => Err(errors),
    }
}

/// What provisioning created, newest last (reverted in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    StateFile,
    Cluster,
    Registry,
}

/// What a failed provisioning left.
pub struct Partial {
    state: RunState,
    faults: Option<KindFaults>,
    journal: Vec<Created>,
}

impl Partial {
    pub async fn teardown(self) -> Vec<String> {
        let Partial {
            mut state,
            faults,
            journal,
        } = self;
        let mut errors = Vec::new();
        if let Some(mut f) = faults {
            errors.extend(f.clear().await);
            state = f.state().clone();
        }
        errors.extend(revert(&journal, &state).await);
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
async fn revert(journal: &[Created], state: &RunState) -> Vec<String> {
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
            Created::StateFile => errors.extend(state.remove_or_msg()),
        }
    }
    errors
}

/// The registry the run's artifact goes to.
struct Registry {
    /// Its container, which the cluster reaches by name on Kind's network.
    container: String,
    /// Where this host reaches it.
    host_port: u16,
}

/// The pods' statuses as last seen, per pod: its running container and the containers whose
/// exit was recorded.
#[derive(Default)]
struct Seen {
    running: Option<String>,
    exited: BTreeSet<String>,
}

/// A lab on a Kind cluster.
pub struct KindLab {
    pub plan: Arc<Plan>,
    faults: KindFaults,
    nodes: KindNodes,
    client: Client,
    docker: Docker,
    bound: Bound,
    registry: Registry,
    journal: Vec<Created>,
    links: Vec<(LinkParams, LinkParams)>,
    partitions: BTreeMap<String, Vec<Block>>,
    isolated: BTreeSet<usize>,
    frozen: BTreeSet<usize>,
    powered_off: BTreeSet<usize>,
    host: HostCpu,
    allowed: Vec<u32>,
    limits: Vec<NodeLimits>,
    sockets: Vec<Option<SocketFactory>>,
    pub events: EventLog,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The revision Flux delivered, and the rendered artifact (restarts recreate its pods).
    delivered: Option<(String, manifests::Delivery)>,
    notes: Arc<Mutex<Vec<String>>>,
    converging: Vec<tokio::task::JoinHandle<()>>,
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

impl KindLab {
    /// Builds the cluster of `plan` and everything around it (see the module docs). The
    /// workloads are delivered separately ([`KindLab::deploy`]).
    ///
    /// Guarantees: the state file names the cluster and the registry before they exist; on
    /// error everything created is described by the returned [`Partial`].
    pub async fn provision(
        plan: Arc<Plan>,
        bound: Bound,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> std::result::Result<KindLab, Box<(String, Partial)>> {
        let cluster = bound.config.cluster.name.clone();
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
        let mut partial = Partial {
            state: RunState::new(&plan, run_id, mode, out_dir.clone(), TargetState::Kind(ks)),
            faults: None,
            journal: Vec::new(),
        };
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
        let yaml = tri!(bound.config.to_yaml(
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
        let expected: Vec<(&str, u64, u64)> = bound
            .config
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
            let msg = wrong
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            tri!(Err(HostError::other(
                "checking the allocatable resources of",
                format!("Kind cluster {cluster}"),
                msg
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
        let none = BTreeMap::new();
        let f = node_faults(&plan, &baseline, &none, &BTreeSet::new());
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
            host: plan.scaled_host(&HostCpu::detect()),
            links: baseline,
            plan,
            faults,
            nodes: kn,
            client,
            docker,
            bound,
            registry: Registry {
                container: registry_name,
                host_port,
            },
            journal: partial.journal,
            partitions: BTreeMap::new(),
            isolated: BTreeSet::new(),
            frozen: BTreeSet::new(),
            powered_off: BTreeSet::new(),
            allowed: crate::host::cgroup::allowed_cpus(),
            limits,
            sockets: vec![None; n],
            events: EventLog::default(),
            watcher: None,
            delivered: None,
            notes: Arc::default(),
            converging: Vec::new(),
        })
    }

    /// The run's state (what the state file says).
    pub fn state(&self) -> &RunState {
        self.faults.state()
    }

    /// What a probe aims at: the node's cluster address for its scenario address.
    pub fn real_addr(&self, a: Ipv4Addr) -> Ipv4Addr {
        self.plan
            .nodes
            .iter()
            .position(|n| n.addr == a)
            .map_or(a, |i| self.state().nodes[i].addr)
    }

    /// Every network fault the nodes should hold now.
    fn node_faults(&self) -> NodeFaults {
        node_faults(
            &self.plan,
            &self.links,
            &self.partitions,
            &self.isolated.union(&self.powered_off).copied().collect(),
        )
    }

    async fn push(&mut self) -> Result<()> {
        let f = self.node_faults();
        self.faults.apply(&f).await
    }

    /// Renders the workloads, pushes them as the run's artifact and has Flux deliver it;
    /// returns once the revision is deployed and healthy.
    pub async fn deploy(&mut self, out_dir: &Path) -> std::result::Result<(), String> {
        let plan = self.plan.clone();
        let run_id = self.state().run_id.clone();
        let delivery = manifests::render(&plan, self.state(), &self.bound.images, POD_GRACE);
        let dir = out_dir.join("kind-artifact");
        delivery
            .write(&dir)
            .map_err(|e| format!("writing the artifact to {}: {e}", dir.display()))?;
        let url = format!(
            "oci://127.0.0.1:{}/{}:{run_id}",
            self.registry.host_port,
            manifests::artifact_repository(&plan)
        );
        // A registry container that has just started may not listen yet: a few tries.
        let mut tries = 0;
        let digest = loop {
            match tools::flux_push(
                &url,
                &dir,
                &format!("edgesim/{}", plan.name),
                &format!("{run_id}@sha1:{}", tree_hash(&delivery)),
            )
            .await
            {
                Ok(d) => break d,
                Err(e) if tries >= 10 => return Err(e.to_string()),
                Err(e) => {
                    tracing::debug!("pushing the artifact, try {tries}: {e}");
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let revision = format!("{run_id}@{digest}");
        let timeout = manifests::delivery_timeout(&plan, DELIVERY_MARGIN);
        let objects = manifests::flux_objects(
            &plan,
            &run_id,
            &format!("{}:{}", self.registry.container, tools::REGISTRY_PORT),
            timeout,
        );
        k::apply(&self.client, &objects, FIELD_MANAGER)
            .await
            .map_err(|e| e.to_string())?;
        let took = converge(&self.client, &run_id, &revision, timeout)
            .await
            .map_err(|e| e.to_string())?;
        self.note(format!(
            "Flux delivered revision {revision} in {:.1} s (pushed, reconciled, every pod Ready)",
            took.as_secs_f64()
        ));
        self.delivered = Some((revision, delivery));
        self.watcher = Some(tokio::spawn(watch_pods(
            self.client.clone(),
            plan.clone(),
            run_id,
            self.events.clone(),
        )));
        Ok(())
    }

    fn note(&self, s: String) {
        tracing::info!("{s}");
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// What the lab has to say for the report (Flux's delivery and convergence times).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn mark_ready(&mut self) -> Result<()> {
        self.faults.state_mut().ready = true;
        self.faults.state().save_or_err()
    }

    /// A socket factory inside node `n`'s container (where its pods' ports are).
    pub fn sockets(&mut self, n: usize) -> Result<SocketFactory> {
        if let Some(f) = &self.sockets[n] {
            return Ok(f.clone());
        }
        let (name, _, pid) = &self.nodes.nodes[n + 1];
        let f = SocketFactory::start(nodes::open_ns(name, *pid)?, name)?;
        self.sockets[n] = Some(f.clone());
        Ok(f)
    }

    /// The limits node `n`'s container holds now.
    pub async fn read_limits(&self, n: usize) -> Result<NodeLimits> {
        self.docker.read_limits(&self.nodes.nodes[n + 1].0).await
    }

    /// The pods of workload `wi` on `ns`, by name.
    fn pod_names(&self, wi: usize, ns: &[usize]) -> Vec<String> {
        let w = &self.plan.workloads[wi];
        ns.iter()
            .filter(|n| w.nodes.contains(n))
            .map(|&n| manifests::pod_name(&w.name, &self.plan.nodes[n].name))
            .collect()
    }

    fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            &manifests::namespace(&self.state().run_id),
        )
    }

    /// Sends `signal` to the container of each pod (through containerd in its node: the
    /// container's own processes get it, as a board's process would).
    async fn signal(&self, wi: usize, ns: &[usize], signal: i32) -> Result<()> {
        let api = self.pods_api();
        for (n, pod) in ns
            .iter()
            .filter(|n| self.plan.workloads[wi].nodes.contains(n))
            .zip(self.pod_names(wi, ns))
        {
            let p = api
                .get(&pod)
                .await
                .map_err(|e| HostError::other("reading pod", pod.clone(), e.to_string()))?;
            let Some(id) = running_container(&p) else {
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
            let node = &self.nodes.nodes[n + 1].0;
            let (code, out) = self.docker.exec_output(node, &argv).await?;
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

    /// Deletes pods and waits until they are gone.
    async fn delete_pods(&self, pods: &[String]) -> Result<()> {
        let api = self.pods_api();
        let dp = DeleteParams {
            grace_period_seconds: Some(POD_GRACE.as_secs() as u32),
            ..DeleteParams::default()
        };
        for p in pods {
            match api.delete(p, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(HostError::other("deleting pod", p.clone(), e.to_string())),
            }
        }
        let deadline = tokio::time::Instant::now() + POD_GRACE + Duration::from_secs(30);
        for p in pods {
            loop {
                match api.get_opt(p).await {
                    Ok(None) => break,
                    Ok(Some(_)) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {
                        return Err(HostError::other(
                            "deleting pod",
                            p.clone(),
                            "it is still there",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates pods again from the delivered manifests.
    async fn create_pods(&self, pods: &[String]) -> Result<()> {
        let Some((_, d)) = &self.delivered else {
            return Err(HostError::other(
                "creating pods",
                pods.join(", "),
                "nothing was delivered yet",
            ));
        };
        for p in pods {
            let Some(yaml) = d.files.get(&format!("pods/{p}.yaml")) else {
                continue;
            };
            k::apply(&self.client, yaml, FIELD_MANAGER)
                .await
                .map_err(|e| HostError::other("creating pod", p.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// The pods of every workload on `ns`.
    fn pods_on(&self, ns: &[usize]) -> Vec<String> {
        (0..self.plan.workloads.len())
            .flat_map(|wi| self.pod_names(wi, ns))
            .collect()
    }

    /// Asks Flux to reconcile and records, in the background, how long until the revision is
    /// deployed and healthy again.
    fn measure_convergence(&mut self, what: String) {
        let Some((revision, _)) = &self.delivered else {
            return;
        };
        let (client, revision, notes) = (self.client.clone(), revision.clone(), self.notes.clone());
        let run_id = self.state().run_id.clone();
        self.converging.push(tokio::spawn(async move {
            let msg = match converge(&client, &run_id, &revision, CONVERGE_TIMEOUT).await {
                Ok(d) => format!(
                    "Flux converged {:.1} s after {what} (revision {revision} deployed and healthy again)",
                    d.as_secs_f64()
                ),
                Err(e) => format!("Flux did not converge after {what}: {e}"),
            };
            tracing::info!("{msg}");
            notes.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }));
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
                self.measure_convergence(format!("the heal of {}", names.join(", ")));
                Ok(())
            }
            ActionKind::Impair { link, up, down } => {
                self.links[*link] = (*up, *down);
                self.push().await
            }
            ActionKind::NodeDown { nodes: ns, mode } => {
                match mode {
                    DownMode::Isolate => self.isolated.extend(ns.iter().copied()),
                    DownMode::Freeze => {
                        for &n in ns {
                            self.docker.pause(&self.nodes.nodes[n + 1].0, true).await?;
                            self.frozen.insert(n);
                        }
                        return Ok(());
                    }
                    DownMode::Poweroff => {
                        // Cable out first, then the node's workloads go.
                        self.powered_off.extend(ns.iter().copied());
                        self.push().await?;
                        return self.delete_pods(&self.pods_on(ns)).await;
                    }
                }
                self.push().await
            }
            ActionKind::NodeUp { nodes: ns, .. } => {
                let powered: Vec<usize> = ns
                    .iter()
                    .copied()
                    .filter(|n| self.powered_off.remove(n))
                    .collect();
                for n in ns {
                    self.isolated.remove(n);
                    if self.frozen.remove(n) {
                        self.docker.pause(&self.nodes.nodes[n + 1].0, false).await?;
                    }
                }
                // Network first: a board that powers on finds its cable plugged in.
                self.push().await?;
                self.create_pods(&self.pods_on(&powered)).await
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
                let pods = self.pod_names(*workload, ns);
                self.delete_pods(&pods).await?;
                self.create_pods(&pods).await
            }
            ActionKind::Cpu { nodes: ns, .. } | ActionKind::Memory { nodes: ns, .. } => {
                for &n in ns {
                    let base =
                        node_limits(&self.plan, n, &self.host, &self.allowed).with_pids(None);
                    let Some(l) = crate::faults::resized(
                        action,
                        n,
                        &base,
                        &self.limits[n],
                        &self.plan.nodes[n].profile,
                        &self.host,
                        &self.allowed,
                    ) else {
                        continue;
                    };
                    self.docker
                        .update_limits(&self.nodes.nodes[n + 1].0, &l)
                        .await?;
                    self.limits[n] = l;
                }
                Ok(())
            }
        }
    }

    /// Collects the pods' logs, reverts every fault, removes the registry and deletes the
    /// cluster. Keeps going past errors.
    pub async fn teardown(mut self) -> Vec<String> {
        let out_dir = self.state().out_dir.clone();
        let mut errors = Vec::new();
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        for c in self.converging.drain(..) {
            c.abort();
        }
        if self.delivered.is_some() {
            errors.extend(self.collect_logs(&out_dir).await);
        }
        for &n in &self.frozen {
            if let Err(e) = self.docker.pause(&self.nodes.nodes[n + 1].0, false).await {
                errors.push(e.to_string());
            }
        }
        errors.extend(self.faults.clear().await);
        self.sockets.clear();
        let state = self.faults.state().clone();
        errors.extend(revert(&self.journal, &state).await);
        errors
    }

    /// Every pod's log into `workloads/<workload>/<node>.stdout.log` (the previous
    /// container's first when it restarted).
    async fn collect_logs(&self, out_dir: &Path) -> Vec<String> {
        let api = self.pods_api();
        let mut errors = Vec::new();
        for w in &self.plan.workloads {
            let dir = out_dir.join("workloads").join(&w.name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                errors.push(format!("creating {}: {e}", dir.display()));
                continue;
            }
            for &n in &w.nodes {
                let node = &self.plan.nodes[n].name;
                let pod = manifests::pod_name(&w.name, node);
                let restarted = match api.get_opt(&pod).await {
                    Ok(Some(p)) => restart_count(&p) > 0,
                    // Gone (powered off, never created): nothing to read.
                    _ => continue,
                };
                let mut text = String::new();
                if restarted {
                    let lp = LogParams {
                        previous: true,
                        ..LogParams::default()
                    };
                    if let Ok(prev) = api.logs(&pod, &lp).await {
                        text.push_str(&prev);
                        text.push_str("# edgesim: the container restarted here\n");
                    }
                }
                match api.logs(&pod, &LogParams::default()).await {
                    Ok(cur) => text.push_str(&cur),
                    Err(e) => errors.push(format!("reading the log of pod {pod}: {e}")),
                }
                let file = dir.join(format!("{node}.stdout.log"));
                if let Err(e) = std::fs::write(&file, text) {
                    errors.push(format!("writing {}: {e}", file.display()));
                }
            }
        }
        errors
    }
}

/// A content hash of the artifact (its revision's metadata).
fn tree_hash(d: &manifests::Delivery) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in &d.files {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Requests a reconcile of the run's source and Kustomization and waits until `revision` is
/// deployed and healthy; how long that took.
async fn converge(
    client: &Client,
    run_id: &str,
    revision: &str,
    timeout: Duration,
) -> std::result::Result<Duration, String> {
    let name = manifests::flux_name(run_id);
    let source = k::SourceRef {
        kind: k::SourceKind::OciRepository,
        namespace: FLUX_NAMESPACE.into(),
        name: name.clone(),
    };
    let ks = [(FLUX_NAMESPACE, name.as_str())];
    let start = tokio::time::Instant::now();
    let at = k::request_reconcile_with_source(client, &source, &ks)
        .await
        .map_err(|e| e.to_string())?;
    k::wait_deployed(client, &ks, &source, revision, Some(&at), timeout)
        .await
        .map_err(|d| d.to_string())?;
    Ok(start.elapsed())
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

fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// The containerd id of a pod's running container.
fn running_container(p: &Pod) -> Option<String> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    c.state.as_ref()?.running.as_ref()?;
    container_id(c.container_id.as_deref()?)
}

/// `containerd://<id>` → `<id>`.
fn container_id(uri: &str) -> Option<String> {
    uri.split_once("://").map(|(_, id)| id.to_string())
}

/// What the pods' statuses say happened since `seen`, as workload events.
fn pod_events(p: &Pod, seen: &mut Seen) -> Vec<(EventKind, Event)> {
    let mut out = Vec::new();
    let Some(c) = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return out;
    };
    let ev = |kind: EventKind| Event {
        t: 0.0,
        workload: String::new(),
        node: String::new(),
        kind,
        pid: None,
        code: None,
        signal: None,
        detail: None,
    };
    let exited = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated,
                  seen: &mut Seen,
                  out: &mut Vec<(EventKind, Event)>| {
        let id = t
            .container_id
            .as_deref()
            .and_then(container_id)
            .unwrap_or_default();
        if seen.exited.insert(id) {
            let mut e = ev(EventKind::Exited);
            e.code = Some(t.exit_code);
            e.signal = t.signal;
            e.detail = t.reason.clone();
            out.push((EventKind::Exited, e));
        }
    };
    // An exit not seen while it happened: the previous container's.
    if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        let id = t.container_id.as_deref().and_then(container_id);
        if id.is_some() && id == seen.running {
            exited(t, seen, &mut out);
        }
    }
    let state = c.state.as_ref();
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        exited(t, seen, &mut out);
        seen.running = None;
    }
    if state.and_then(|s| s.running.as_ref()).is_some() {
        let id = c.container_id.as_deref().and_then(container_id);
        if id.is_some() && id != seen.running {
            if seen.running.is_some() || c.restart_count > 0 {
                let mut e = ev(EventKind::Restarting);
                e.detail = Some(format!("restart {} (kubelet)", c.restart_count));
                out.push((EventKind::Restarting, e));
            }
            seen.running = id;
            out.push((EventKind::Started, ev(EventKind::Started)));
        }
    }
    out
}

/// Polls the run's pods and records what their containers did.
async fn watch_pods(client: Client, plan: Arc<Plan>, run_id: String, log: EventLog) {
    let api: Api<Pod> = Api::namespaced(client, &manifests::namespace(&run_id));
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let label = |p: &Pod, k: &str| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&format!("{}{k}", config::LABEL_PREFIX)))
            .cloned()
            .unwrap_or_default()
    };
    loop {
        if let Ok(pods) = api.list(&lp).await {
            for p in &pods.items {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                for (_, mut e) in pod_events(p, seen.entry(uid).or_default()) {
                    e.workload = label(p, "workload");
                    e.node = label(p, "node");
                    if plan.workloads.iter().any(|w| w.name == e.workload) {
                        log.record_now(e);
                    }
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

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
        use crate::scenario::validate::{Overrides, build, parse};
        let f = std::path::Path::new("kindfaults.yaml");
        let sc = parse(f, SPEC).unwrap_or_else(|d| panic!("{d}"));
        build(
            f,
            SPEC,
            &sc,
            crate::profile::ProfileSet::builtin().unwrap(),
            &crate::caps::Capabilities::all("kind"),
            &Overrides::default(),
        )
        .unwrap_or_else(|d| panic!("{d}"))
        .plan
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

    fn pod(state: ContainerState, id: &str, restarts: i32, last: Option<(&str, i32)>) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "c".into(),
                    container_id: Some(format!("containerd://{id}")),
                    restart_count: restarts,
                    state: Some(state),
                    last_state: last.map(|(id, code)| ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            container_id: Some(format!("containerd://{id}")),
                            exit_code: code,
                            reason: Some("Error".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    #[test]
    fn container_statuses_become_starts_exits_and_restarts_once_each() {
        let mut seen = Seen::default();
        let kinds = |v: Vec<(EventKind, Event)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            kinds(pod_events(&pod(running(), "a", 0, None), &mut seen)),
            [EventKind::Started]
        );
        // Seen again: nothing new.
        assert!(pod_events(&pod(running(), "a", 0, None), &mut seen).is_empty());
        // Killed and restarted between two polls: the exit comes from lastState.
        let ev = pod_events(&pod(running(), "b", 1, Some(("a", 137))), &mut seen);
        assert_eq!(
            kinds(ev.clone()),
            [EventKind::Exited, EventKind::Restarting, EventKind::Started]
        );
        assert_eq!(ev[0].1.code, Some(137));
        assert!(pod_events(&pod(running(), "b", 1, Some(("a", 137))), &mut seen).is_empty());
        // Exited for good (restartPolicy Never).
        let done = ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some("containerd://b".into()),
                exit_code: 0,
                reason: Some("Completed".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ev = pod_events(&pod(done.clone(), "b", 1, Some(("a", 137))), &mut seen);
        assert_eq!(kinds(ev.clone()), [EventKind::Exited]);
        assert_eq!(ev[0].1.detail.as_deref(), Some("Completed"));
        assert!(pod_events(&pod(done, "b", 1, Some(("a", 137))), &mut seen).is_empty());
        assert_eq!(
            running_container(&pod(running(), "c", 0, None)).as_deref(),
            Some("c")
        );
    }
}
