//! The `netns` target: nodes are network namespaces with cgroups on this host, workloads are
//! processes inside them.
//!
//! [`NetnsLab::provision`] is the one linear, privileged sequence that builds a lab; every
//! object it creates is first written to the run's state file and then recorded in the
//! provisioning journal, which [`NetnsLab::teardown`] reverts in reverse order, keeping going
//! past errors and treating "already gone" as success. [`cleanup_state`] does the same from
//! a state file alone, for runs that died without tearing down.

pub mod emulator;
pub mod exec;
pub mod fabric;
pub mod shaping;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::state::{Mode, NodeState, RunState};
use crate::host::cgroup::{Cgroups, NodeCgroup};
use crate::host::ns::{self, SocketFactory};
use crate::host::{HostError, Result};
use crate::profile::{HostCpu, NodeLimits, limits};
use crate::scenario::Plan;
use crate::scenario::model::DownMode;
use crate::scenario::plan::{ActionKind, Block, LinkParams};
use crate::workload::{InstanceSpec, Launch, LaunchSpec, Supervisor};

use self::emulator::{Emulator, EmulatorOptions};
use self::exec::NodeExec;
use self::fabric::{Fabric, Names};
use self::shaping::Shaper;

/// One object a run created, in the order it was created.
#[derive(Debug, Clone)]
enum Created {
    StateFile,
    Namespaces(Vec<String>),
    HostsDirs(Vec<PathBuf>),
    Cgroup(String),
}

/// A lab on this host that is up.
pub struct NetnsLab {
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub state: RunState,
    pub fabric: Fabric,
    shaper: Shaper,
    emulator: Option<Emulator>,
    cgroups: Cgroups,
    node_cgroups: Vec<NodeCgroup>,
    node_limits: Vec<NodeLimits>,
    host: HostCpu,
    execs: Vec<Arc<NodeExec>>,
    sockets: Vec<Option<SocketFactory>>,
    pub supervisor: Supervisor,
    journal: Vec<Created>,
    // Live fault state, for applying and reverting.
    links: Vec<(LinkParams, LinkParams)>,
    partitions: BTreeMap<String, Vec<Block>>,
    down: HashMap<usize, DownMode>,
}

/// Names and paths a run will use, decided before anything is created.
pub fn initial_state(plan: &Plan, run_id: &str, mode: Mode, out_dir: PathBuf) -> RunState {
    let names = Names::new(run_id, plan);
    let cgroup = format!("edgesim/{run_id}");
    RunState {
        run_id: run_id.to_string(),
        scenario: plan.name.clone(),
        file: std::fs::canonicalize(&plan.file).unwrap_or_else(|_| plan.file.clone()),
        mode,
        target: "netns".into(),
        pid: std::process::id(),
        pid_start: crate::engine::state::process_start(std::process::id()).unwrap_or(0),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        out_dir,
        namespaces: names.all(),
        cgroup: Some(cgroup.clone()),
        hosts_dirs: names.nodes.iter().map(|n| fabric::hosts_dir(n)).collect(),
        nodes: plan
            .nodes
            .iter()
            .zip(&names.nodes)
            .map(|(n, ns)| NodeState {
                name: n.name.clone(),
                namespace: ns.clone(),
                addr: n.addr,
                site: plan.sites[n.site].name.clone(),
                cgroup: format!("{cgroup}/{}", n.name),
            })
            .collect(),
        workload_pids: Vec::new(),
        ready: false,
    }
}

/// A provisioning failure, with what was created so far (to be torn down by the caller).
pub struct ProvisionError {
    pub error: HostError,
    pub partial: Partial,
}

/// What a failed provisioning left, enough to remove it.
pub struct Partial {
    state: RunState,
    journal: Vec<Created>,
    cgroups: Option<Cgroups>,
}

impl Partial {
    pub async fn teardown(self) -> Vec<String> {
        revert(&self.journal, &self.state, self.cgroups.as_ref()).await
    }
}

impl NetnsLab {
    /// Builds the lab: state file, namespaces, fabric (bridges, veth pairs, addresses,
    /// routes), hosts files, cgroups with the profiles' limits, baseline link shaping and
    /// firewall. Workloads are started separately ([`NetnsLab::deploy`]).
    ///
    /// Guarantees: each object is recorded before (state file) and after (journal) it is
    /// created; on error everything created is described by the returned [`Partial`].
    pub async fn provision(
        plan: Arc<Plan>,
        state: RunState,
        emu: &EmulatorOptions,
    ) -> std::result::Result<NetnsLab, Box<ProvisionError>> {
        let mut journal = Vec::new();
        let mut cgroups_slot = None;
        macro_rules! fail {
            ($e:expr) => {
                return Err(Box::new(ProvisionError {
                    error: $e,
                    partial: Partial {
                        state,
                        journal,
                        cgroups: cgroups_slot,
                    },
                }))
            };
        }
        // 1. The state file names everything below before it exists.
        if let Err(e) = state.save() {
            fail!(HostError::io(
                "writing state file",
                state.path().display().to_string(),
                e
            ));
        }
        journal.push(Created::StateFile);

        // 2. Namespaces: fabric and one per node, from one thread.
        let names = Names::new(&state.run_id, &plan);
        if let Err(e) = ns::create_many(&names.all()) {
            fail!(e);
        }
        journal.push(Created::Namespaces(names.all()));

        // 3. The fabric: bridges, veth pairs, addresses, routes.
        let userspace = plan.uses_emulator();
        let fabric = match Fabric::build(&plan, names.clone(), userspace).await {
            Ok(f) => f,
            Err(e) => fail!(e),
        };
        let t_links = std::time::Instant::now();
        if let Err(e) = fabric
            .wait_links(
                &(0..plan.nodes.len()).collect::<Vec<_>>(),
                Duration::from_secs(5),
            )
            .await
        {
            fail!(e);
        }
        tracing::debug!(waited = ?t_links.elapsed(), "every node link carries traffic");

        // 4. Hosts files, so node names resolve inside nodes.
        journal.push(Created::HostsDirs(state.hosts_dirs.clone()));
        if let Err(e) = fabric::write_hosts(&plan, &names) {
            fail!(e);
        }

        // 5. Cgroups with the profiles' limits.
        let cgroups = match Cgroups::detect() {
            Ok(c) => c,
            Err(e) => fail!(e),
        };
        let run_cg = state.cgroup.clone().unwrap_or_default();
        cgroups_slot = Some(cgroups.clone());
        journal.push(Created::Cgroup(run_cg.clone()));
        let host = plan.scaled_host(&HostCpu::detect());
        let mut node_cgroups = Vec::with_capacity(plan.nodes.len());
        let mut node_limits = Vec::with_capacity(plan.nodes.len());
        for (n, st) in plan.nodes.iter().zip(&state.nodes) {
            let cg = match cgroups.create(&st.cgroup) {
                Ok(c) => c,
                Err(e) => fail!(e),
            };
            let l = limits(&n.profile, &host);
            if let Err(e) = cg.apply(&l) {
                fail!(e);
            }
            node_cgroups.push(cg);
            node_limits.push(l);
        }

        // 6. Baseline WAN shaping and firewall in the fabric namespace.
        let links = plan.baseline_links();
        let mut shaper = match Shaper::new(&plan, &fabric, userspace) {
            Ok(s) => s,
            Err(e) => fail!(e),
        };
        if let Err(e) = shaper
            .apply(&plan, &fabric, &links, &BTreeMap::new(), None)
            .await
        {
            fail!(e);
        }

        // 7. The userspace link emulator, when it carries the impairments.
        let emulator = if userspace {
            match Emulator::start(&plan, &fabric, &links, emu) {
                Ok(e) => Some(e),
                Err(e) => fail!(e),
            }
        } else {
            None
        };

        // 8. What processes need to start inside nodes.
        let mut execs = Vec::with_capacity(plan.nodes.len());
        for (i, cg) in node_cgroups.iter().enumerate() {
            let fd = match fabric.node_fds[i].try_clone() {
                Ok(f) => f,
                Err(e) => fail!(HostError::io(
                    "duplicating the namespace handle of",
                    &names.nodes[i],
                    e
                )),
            };
            let procs = match cg.procs_files() {
                Ok(p) => p,
                Err(e) => fail!(e),
            };
            let hosts = fabric::hosts_dir(&names.nodes[i]).join("hosts");
            match NodeExec::new(&names.nodes[i], fd, Some(&hosts), procs) {
                Ok(x) => execs.push(Arc::new(x)),
                Err(e) => fail!(HostError::io(
                    "preparing process start in",
                    &names.nodes[i],
                    e
                )),
            }
        }

        let n = plan.nodes.len();
        Ok(NetnsLab {
            run_id: state.run_id.clone(),
            plan,
            state,
            fabric,
            shaper,
            emulator,
            cgroups,
            node_cgroups,
            node_limits,
            host,
            execs,
            sockets: vec![None; n],
            supervisor: Supervisor::new(Default::default()),
            journal,
            links,
            partitions: BTreeMap::new(),
            down: HashMap::new(),
        })
    }

    /// A socket factory inside node `i` (started on first use).
    pub fn sockets(&mut self, node: usize) -> Result<SocketFactory> {
        if let Some(f) = &self.sockets[node] {
            return Ok(f.clone());
        }
        let fd = self.fabric.node_fds[node].try_clone().map_err(|e| {
            HostError::io(
                "duplicating the namespace handle of",
                &self.fabric.names.nodes[node],
                e,
            )
        })?;
        let f = SocketFactory::start(fd, &self.fabric.names.nodes[node])?;
        self.sockets[node] = Some(f.clone());
        Ok(f)
    }

    /// The environment every workload instance on `node` gets.
    pub fn node_env(&self, node: usize) -> Vec<(String, String)> {
        let p = &self.plan;
        let n = &p.nodes[node];
        let mut env = vec![
            ("EDGESIM_RUN".to_string(), self.run_id.clone()),
            ("EDGESIM_SCENARIO".into(), p.name.clone()),
            ("EDGESIM_NODE".into(), n.name.clone()),
            ("EDGESIM_SITE".into(), p.sites[n.site].name.clone()),
            ("EDGESIM_ADDR".into(), n.addr.to_string()),
            ("EDGESIM_PROFILE".into(), n.profile_name.clone()),
            ("EDGESIM_CPU_CORES".into(), n.profile.cpu.cores.to_string()),
            ("EDGESIM_SEED".into(), p.seed.to_string()),
        ];
        let peers: Vec<String> = p
            .nodes
            .iter()
            .map(|m| format!("{}={}", m.name, m.addr))
            .collect();
        env.push(("EDGESIM_PEERS".into(), peers.join(",")));
        for m in &p.nodes {
            env.push((
                format!("EDGESIM_PEER_{}", env_key(&m.name)),
                m.addr.to_string(),
            ));
        }
        env
    }

    /// Starts every workload instance, each in its node's namespace and cgroup, with its
    /// output captured under `out_dir/workloads/<workload>/`.
    pub fn deploy(&mut self, out_dir: &std::path::Path) -> Result<()> {
        let plan = self.plan.clone();
        for (wi, w) in plan.workloads.iter().enumerate() {
            let dir = out_dir.join("workloads").join(&w.name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| HostError::io("creating", dir.display().to_string(), e))?;
            for &ni in &w.nodes {
                let node = &plan.nodes[ni].name;
                let workdir = dir.join(format!("{node}.data"));
                std::fs::create_dir_all(&workdir)
                    .map_err(|e| HostError::io("creating", workdir.display().to_string(), e))?;
                let mut env = self.node_env(ni);
                env.push(("EDGESIM_WORKLOAD".into(), w.name.clone()));
                env.push(("EDGESIM_WORKDIR".into(), workdir.display().to_string()));
                env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
                let spec = InstanceSpec {
                    launch: LaunchSpec {
                        workload: wi,
                        node: ni,
                        argv: w.argv_for(&plan.nodes[ni]).to_vec(),
                        env,
                        stdout: dir.join(format!("{node}.stdout.log")),
                        stderr: dir.join(format!("{node}.stderr.log")),
                        workdir,
                    },
                    workload_name: w.name.clone(),
                    node_name: node.clone(),
                    restart: w.restart,
                    restart_delay: w.restart_delay,
                };
                let exec = self.execs[ni].clone();
                let launch: Launch = Arc::new(move |s: &LaunchSpec| {
                    let open = |p: &std::path::Path| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(p)
                    };
                    let mut cmd = exec.command(&s.argv[0], &s.argv[1..])?;
                    cmd.env_clear()
                        .env(
                            "PATH",
                            std::env::var_os("PATH").unwrap_or_else(|| {
                                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                                    .into()
                            }),
                        )
                        .env("HOME", &s.workdir)
                        .env("LANG", "C.UTF-8")
                        .envs(s.env.iter().map(|(k, v)| (k, v)))
                        .current_dir(&s.workdir)
                        .stdin(std::process::Stdio::null())
                        .stdout(open(&s.stdout)?)
                        .stderr(open(&s.stderr)?);
                    let mut cmd = tokio::process::Command::from(cmd);
                    cmd.kill_on_drop(false);
                    cmd.spawn()
                });
                self.supervisor.start(spec, launch);
            }
        }
        Ok(())
    }

    /// Waits until every workload with a `readyPort` accepts TCP connections on its node.
    /// Every workload process has been launched first, so the pids in the state file and
    /// the processes a caller of `edgesim up` finds are all there.
    pub async fn wait_ready(&mut self) -> std::result::Result<(), String> {
        self.supervisor.launched().await;
        let plan = self.plan.clone();
        for w in &plan.workloads {
            let Some(port) = w.ready_port else { continue };
            for &ni in &w.nodes {
                let f = self.sockets(ni).map_err(|e| e.to_string())?;
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
                        return Err(format!(
                            "workload `{}` on `{}` did not accept connections on port {port} within {} (see its log under workloads/{}/)",
                            w.name,
                            plan.nodes[ni].name,
                            crate::units::Dur(w.ready_timeout),
                            w.name
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    }

    /// Work to do before an action's scheduled instant so that the instant itself pays only
    /// for the change (e.g. opening the firewall's netlink socket).
    pub fn prepare(&mut self, action: &ActionKind) -> Option<shaping::Prepared> {
        match action {
            ActionKind::Impair { .. } if self.emulator.is_some() => None,
            ActionKind::Partition { .. } | ActionKind::Heal { .. } | ActionKind::Impair { .. } => {
                self.shaper.prepare().ok()
            }
            _ => None,
        }
    }

    /// Applies one timeline action.
    pub async fn apply(
        &mut self,
        action: &ActionKind,
        prepared: Option<shaping::Prepared>,
    ) -> Result<()> {
        match action {
            ActionKind::Partition { name, blocks } => {
                self.partitions.insert(name.clone(), blocks.clone());
                self.reshape(false, prepared).await
            }
            ActionKind::Heal { names } => {
                for n in names {
                    self.partitions.remove(n);
                }
                self.reshape(false, prepared).await
            }
            ActionKind::Impair { link, up, down } => {
                self.links[*link] = (*up, *down);
                self.reshape(true, prepared).await
            }
            ActionKind::NodeDown { nodes, mode } => {
                for &n in nodes {
                    self.fabric.set_node_link(n, false).await?;
                    match mode {
                        DownMode::Poweroff => self.supervisor.suspend_nodes(&[n]),
                        DownMode::Freeze => self.node_cgroups[n].freeze()?,
                        DownMode::Isolate => {}
                    }
                    self.down.insert(n, *mode);
                }
                Ok(())
            }
            ActionKind::NodeUp { nodes, .. } => {
                // Network first (and wait until it carries traffic), then processes: a board
                // that powers on finds its cable already plugged in.
                for &n in nodes {
                    self.fabric.set_node_link(n, true).await?;
                }
                self.fabric
                    .wait_links(nodes, Duration::from_secs(2))
                    .await?;
                for &n in nodes {
                    let mode = self.down.remove(&n).unwrap_or_default();
                    match mode {
                        DownMode::Poweroff => self.supervisor.resume_nodes(&[n]),
                        DownMode::Freeze => self.node_cgroups[n].thaw()?,
                        DownMode::Isolate => {}
                    }
                }
                Ok(())
            }
            ActionKind::Kill {
                workload,
                nodes,
                signal,
            } => {
                self.supervisor.signal(*workload, nodes, *signal);
                Ok(())
            }
            ActionKind::Restart { workload, nodes } => {
                self.supervisor.restart(*workload, nodes);
                Ok(())
            }
            ActionKind::Cpu { nodes, cores } => {
                for &n in nodes {
                    let spec = &self.plan.nodes[n].profile;
                    let base = limits(spec, &self.host);
                    let l = match cores {
                        Some(c) => base.with_cpu_cores(*c, spec, &self.host),
                        None => base,
                    };
                    let l = NodeLimits {
                        memory_bytes: self.node_limits[n].memory_bytes,
                        ..l
                    };
                    self.node_cgroups[n].apply(&l)?;
                    self.node_limits[n] = l;
                }
                Ok(())
            }
            ActionKind::Memory { nodes, limit } => {
                for &n in nodes {
                    let base = limits(&self.plan.nodes[n].profile, &self.host);
                    let l = NodeLimits {
                        memory_bytes: limit.or(base.memory_bytes),
                        ..self.node_limits[n].clone()
                    };
                    self.node_cgroups[n].apply(&l)?;
                    self.node_limits[n] = l;
                }
                Ok(())
            }
        }
    }

    /// Makes firewall, qdiscs and emulator match the current links and partitions. The
    /// emulator goes first when a link changed: its rules take effect with the next packet.
    async fn reshape(
        &mut self,
        link_changed: bool,
        prepared: Option<shaping::Prepared>,
    ) -> Result<()> {
        if link_changed && let Some(e) = &mut self.emulator {
            e.update(&self.plan, &self.links)?;
        }
        self.shaper
            .apply(
                &self.plan,
                &self.fabric,
                &self.links,
                &self.partitions,
                prepared,
            )
            .await
    }

    /// Statistics of the userspace link emulator, if it runs.
    pub fn emulator_stats(&self) -> Vec<crate::linkem::RelayStats> {
        self.emulator
            .as_ref()
            .map(|e| e.stats())
            .unwrap_or_default()
    }

    /// A function reading the emulator's statistics from any thread (for live metrics).
    pub fn emulator_stats_source(
        &self,
    ) -> Option<Box<dyn Fn() -> Vec<crate::linkem::RelayStats> + Send + Sync>> {
        self.emulator
            .as_ref()
            .map(|e| Box::new(e.stats_source()) as Box<_>)
    }

    /// Whether the userspace emulator carries the link impairments.
    pub fn userspace(&self) -> bool {
        self.emulator.is_some()
    }

    /// Limits node `n`'s cgroup holds now (read back from the kernel).
    pub fn read_limits(&self, n: usize) -> Result<NodeLimits> {
        self.node_cgroups[n].read_limits()
    }

    /// Marks the lab ready in its state file (for `up`, `exec`).
    pub fn mark_ready(&mut self) -> Result<()> {
        self.state.ready = true;
        self.state.workload_pids = self.supervisor.pids();
        self.state.save().map_err(|e| {
            HostError::io(
                "writing state file",
                self.state.path().display().to_string(),
                e,
            )
        })
    }

    /// Stops workloads and removes everything the lab created, in reverse order. Keeps going
    /// past errors and returns them all.
    pub async fn teardown(mut self, grace: Duration) -> Vec<String> {
        let mut errors = Vec::new();
        // Faults first, in reverse: frozen nodes must be thawed before their processes can
        // be killed, and on a device every fault must be undone anyway.
        for (n, mode) in std::mem::take(&mut self.down) {
            if mode == DownMode::Freeze
                && let Err(e) = self.node_cgroups[n].thaw()
            {
                errors.push(e.to_string());
            }
        }
        if !self.partitions.is_empty() {
            self.partitions.clear();
            if let Err(e) = self
                .shaper
                .apply(
                    &self.plan,
                    &self.fabric,
                    &self.plan.baseline_links(),
                    &self.partitions,
                    None,
                )
                .await
            {
                errors.push(e.to_string());
            }
        }
        self.supervisor.stop_all(grace).await;
        if let Some(e) = self.emulator.take() {
            errors.extend(e.stop().1);
        }
        drop(std::mem::take(&mut self.sockets));
        drop(std::mem::take(&mut self.execs));
        let NetnsLab {
            journal,
            state,
            cgroups,
            fabric,
            ..
        } = self;
        drop(fabric);
        errors.extend(revert(&journal, &state, Some(&cgroups)).await);
        errors
    }
}

/// Reverts a provisioning journal in reverse order.
async fn revert(journal: &[Created], state: &RunState, cgroups: Option<&Cgroups>) -> Vec<String> {
    let mut errors = Vec::new();
    for c in journal.iter().rev() {
        match c {
            Created::Cgroup(rel) => {
                if let Some(cg) = cgroups {
                    if let Err(e) = cg.remove_tree(rel) {
                        errors.push(e.to_string());
                    }
                    // The shared `edgesim` parent goes with the last run that used it.
                    if let Some((parent, _)) = rel.rsplit_once('/')
                        && let Err(e) = cg.remove_if_unused(parent)
                    {
                        errors.push(e.to_string());
                    }
                }
            }
            Created::HostsDirs(dirs) => errors.extend(remove_dirs(dirs)),
            Created::Namespaces(names) => {
                // Nodes first, fabric last (the reverse of creation).
                for n in names.iter().rev() {
                    if let Err(e) = ns::delete(n) {
                        errors.push(e.to_string());
                    }
                }
            }
            Created::StateFile => {
                if let Err(e) = state.remove() {
                    errors.push(format!(
                        "removing state file {}: {e}",
                        state.path().display()
                    ));
                }
            }
        }
    }
    errors
}

/// Removes directories concurrently (on a journalling filesystem each removal waits for the
/// journal; 200 in a row take half a second on a busy disk). Missing ones count as removed.
fn remove_dirs(dirs: &[PathBuf]) -> Vec<String> {
    const THREADS: usize = 8;
    let chunk = dirs.len().div_ceil(THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|d| match std::fs::remove_dir_all(d) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                Some(format!("removing {}: {e}", d.display()))
                            }
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec!["removing hosts directories: a thread panicked".into()]
                })
            })
            .collect()
    })
}

/// Removes everything a run described by `state` may have created, whether or not it did.
/// Used by `edgesim cleanup` and `down` when the controlling process is gone.
///
/// Guarantees: idempotent; keeps going past errors; "already gone" is success.
pub async fn cleanup_state(state: &RunState) -> Vec<String> {
    let mut errors = Vec::new();
    for pid in &state.workload_pids {
        if *pid > 0 {
            // SAFETY: kill(2) on a process group id; no memory is involved.
            unsafe {
                libc::kill(-*pid, libc::SIGKILL);
            }
        }
    }
    let cgroups = Cgroups::detect().ok();
    let mut journal = vec![
        Created::StateFile,
        Created::Namespaces(state.namespaces.clone()),
        Created::HostsDirs(state.hosts_dirs.clone()),
    ];
    if let Some(cg) = &state.cgroup {
        journal.push(Created::Cgroup(cg.clone()));
    }
    if cgroups.is_none() && state.cgroup.is_some() {
        errors.push("cannot find the cgroup hierarchies to remove the run's cgroups".into());
    }
    errors.extend(revert(&journal, state, cgroups.as_ref()).await);
    errors
}

/// `EDGESIM_PEER_<NAME>` key for a node name (`gw-1` → `GW_1`).
pub fn env_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
