//! The `netns` target: nodes are network namespaces with cgroups on this host, workloads are
//! processes inside them.
//!
//! [`NetnsLab::provision`] is the one linear, privileged sequence that builds a lab; every
//! object it creates is first written to the run's state file and then recorded in the
//! provisioning journal, which [`NetnsLab::teardown`] reverts in reverse order, keeping going
//! past errors and treating "already gone" as success. [`cleanup_state`] does the same from
//! a state file alone, for runs that died without tearing down.
//!
//! **Descriptors.** A lab of thousands of nodes must not hold descriptors per node: with one
//! process's limit at, say, 20000, seven per node (what it once held on cgroup v1) run out at
//! 2860 nodes. What the lab process holds, per node:
//!
//! | | up | during bring-up |
//! |---|---:|---:|
//! | node namespace (`Fabric`, [`crate::fabric::NodeNs::Named`]) | 0: reopened by path when a socket factory or a process starts | 1, for [`crate::fabric::CHUNK`] nodes at a time |
//! | netlink socket inside the node | 0 | 1, likewise, closed with its chunk |
//! | [`NodeExec`] (namespace, one `cgroup.procs` per hierarchy: 5 on v1, 1 on v2) | 0: opened by each start, closed once the process is spawned | 0 |
//! | socket factory ([`SocketFactory`], started on first use) | 0: its thread entered the namespace and closed the handle | 0 |
//! | workload process | 1 (tokio's pidfd), per process | — |
//!
//! So a lab holds a few dozen descriptors of its own plus one per workload process, and
//! bring-up adds at most `2 × CHUNK`. [`capacity`] turns these figures into the up-front
//! check, and the binary raises its soft limit to the hard one ([`crate::host::rlimit`]).

pub mod capacity;
pub mod exec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{Mode, RunState, TargetState};
use crate::fabric::{self, Fabric, Names};
use crate::faults::emulator::EmulatorOptions;
use crate::faults::{Faults, NodeOps};
use crate::host::cgroup::{Cgroups, NodeCgroup};
use crate::host::ns::{self, SocketFactory};
use crate::host::{HostError, Result};
use crate::profile::{HostCpu, NodeLimits, limits};
use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::loc::Pos;
use crate::scenario::plan::Run;
use crate::workload::{ChildProcess, Launch, LaunchSpec, Process, Supervisor, apps};

use self::exec::NodeExec;

/// What the netns target created for a run (its part of the state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetnsState {
    /// Namespaces, fabric first.
    pub namespaces: Vec<String>,
    /// The run's cgroup subtree, relative to the cgroup roots.
    pub cgroup: Option<String>,
    pub hosts_dirs: Vec<PathBuf>,
    /// Per node (in the order of [`RunState::nodes`]): namespace and cgroup. Not called
    /// `nodes` in the file: this struct is flattened into [`RunState`], which has its own.
    #[serde(rename = "netns_nodes")]
    pub nodes: Vec<NetnsNode>,
    /// Process groups of workloads, last known (for people; `cleanup` ends workloads through
    /// their cgroups, never by these ids, which may since belong to someone else).
    pub workload_pids: Vec<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetnsNode {
    pub namespace: String,
    /// Cgroup of the node, relative to the cgroup roots.
    pub cgroup: String,
}

/// One object a run created, in the order it was created.
#[derive(Debug, Clone)]
enum Created {
    StateFile,
    Namespaces(Vec<String>),
    HostsDirs(Vec<PathBuf>),
    Cgroup(String),
}

impl Created {
    fn kind(&self) -> &'static str {
        match self {
            Created::StateFile => "state file",
            Created::Namespaces(_) => "namespaces",
            Created::HostsDirs(_) => "hosts directories",
            Created::Cgroup(_) => "cgroups",
        }
    }
}

/// The programs of a plan's workloads on this host: per workload, per node, the argv.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    argv: Vec<BTreeMap<usize, Vec<String>>>,
}

impl Programs {
    pub fn argv(&self, workload: usize, node: usize) -> &[String] {
        self.argv
            .get(workload)
            .and_then(|m| m.get(&node))
            .map_or(&[], Vec::as_slice)
    }
}

/// Resolves every workload to a program on this host, before anything is created: an app to
/// its native build (or, on arm64 nodes with `emulateArch`, its aarch64 build under qemu), a
/// command to itself. `image:` never reaches here (validation refuses it for `netns`). Also
/// refuses a lab this host cannot hold ([`capacity`]).
pub fn resolve(plan: &Plan) -> std::result::Result<Programs, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut argv = Vec::with_capacity(plan.workloads.len());
    for w in &plan.workloads {
        let mut per_node = BTreeMap::new();
        if let Some(p) = &w.program {
            let mut v = vec![p.display().to_string()];
            v.extend(w.program_args());
            if !p.is_file() {
                errors.push(Diagnostic::new(
                    w.pos,
                    format!(
                        "workload `{}`: its program {} does not exist",
                        w.name,
                        p.display()
                    ),
                ));
            }
            for &n in &w.nodes {
                per_node.insert(n, v.clone());
            }
            argv.push(per_node);
            continue;
        }
        match &w.run {
            Run::Command { argv: a } => {
                for &n in &w.nodes {
                    per_node.insert(n, a.clone());
                }
            }
            Run::App { app, args } => {
                let arm64 = |n: usize| {
                    plan.emulate_arch && plan.nodes[n].profile.arch == crate::profile::Arch::Arm64
                };
                let mut native: Option<std::result::Result<Vec<String>, String>> = None;
                let mut emulated: Option<std::result::Result<Vec<String>, String>> = None;
                for &n in &w.nodes {
                    let slot = if arm64(n) { &mut emulated } else { &mut native };
                    let r = slot.get_or_insert_with(|| {
                        if arm64(n) {
                            apps::arm64_command(app)
                        } else {
                            apps::native_binary(app).map(|p| vec![p.display().to_string()])
                        }
                        .map(|mut v| {
                            v.extend(args.iter().cloned());
                            v
                        })
                    });
                    if let Ok(v) = r {
                        per_node.insert(n, v.clone());
                    }
                }
                for e in [native, emulated]
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.err())
                {
                    errors.push(Diagnostic::new(w.pos, format!("app `{app}`: {e}")));
                }
            }
            Run::Image { image, .. } => errors.push(Diagnostic::new(
                w.pos,
                format!("the `netns` target cannot run the image `{image}`"),
            )),
        }
        argv.push(per_node);
    }
    for r in capacity::check(&capacity::Demand::of(plan), &capacity::HostLimits::read()) {
        errors.push(Diagnostic::new(Pos::UNKNOWN, r.message).hint(r.hint));
    }
    if errors.is_empty() {
        Ok(Programs { argv })
    } else {
        Err(errors)
    }
}

/// The node side of the netns target, as the fault module drives it: workloads through the
/// supervisor, resources through cgroups.
pub struct NetnsNodes {
    cgroups: Vec<NodeCgroup>,
    pub supervisor: Supervisor,
}

impl NodeOps for NetnsNodes {
    async fn power(&mut self, node: usize, on: bool) -> Result<()> {
        if on {
            self.supervisor.resume_nodes(&[node]);
        } else {
            self.supervisor.suspend_nodes(&[node]);
        }
        Ok(())
    }
    async fn freeze(&mut self, node: usize, frozen: bool) -> Result<()> {
        if frozen {
            self.cgroups[node].freeze()
        } else {
            self.cgroups[node].thaw()
        }
    }
    async fn signal(&mut self, workload: usize, nodes: &[usize], signal: i32) -> Result<()> {
        self.supervisor.signal(workload, nodes, signal);
        Ok(())
    }
    async fn restart(&mut self, workload: usize, nodes: &[usize]) -> Result<()> {
        self.supervisor.restart(workload, nodes);
        Ok(())
    }
    async fn set_limits(&mut self, node: usize, limits: &NodeLimits) -> Result<()> {
        self.cgroups[node].apply(limits)
    }
}

/// A lab on this host that is up.
pub struct NetnsLab {
    pub run_id: String,
    pub plan: Arc<Plan>,
    pub state: RunState,
    pub fabric: Fabric,
    pub(crate) faults: Faults,
    cgroups: Cgroups,
    pub nodes: NetnsNodes,
    programs: Programs,
    execs: Vec<Arc<NodeExec>>,
    pub(crate) sockets: Vec<Option<SocketFactory>>,
    journal: Vec<Created>,
}

/// Names and paths a run will use, decided before anything is created.
pub fn initial_state(plan: &Plan, run_id: &str, mode: Mode, out_dir: PathBuf) -> RunState {
    let names = Names::new(run_id, plan);
    let cgroup = format!("edgesim/{run_id}");
    let st = NetnsState {
        namespaces: names.all(),
        cgroup: Some(cgroup.clone()),
        hosts_dirs: names.nodes.iter().map(|n| fabric::hosts_dir(n)).collect(),
        nodes: plan
            .nodes
            .iter()
            .zip(&names.nodes)
            .map(|(n, ns)| NetnsNode {
                namespace: ns.clone(),
                cgroup: format!("{cgroup}/{}", n.name),
            })
            .collect(),
        workload_pids: Vec::new(),
    };
    RunState::new(plan, run_id, mode, out_dir, TargetState::Netns(st))
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

fn netns_state(st: &RunState) -> Option<&NetnsState> {
    match &st.target {
        TargetState::Netns(n) => Some(n),
        _ => None,
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
        programs: Programs,
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
        let Some(nst) = netns_state(&state).cloned() else {
            fail!(HostError::other(
                "provisioning",
                state.run_id.clone(),
                "not a netns run"
            ));
        };
        // 0. Room for the descriptors of a large lab (a no-op when the binary did it).
        if let Err(e) = crate::host::rlimit::raise_nofile() {
            tracing::warn!("could not raise the open-file limit: {e}");
        }
        let mut step = std::time::Instant::now();
        let mut done = |what: &str| {
            tracing::debug!(step = what, took = ?step.elapsed(), "provisioned");
            step = std::time::Instant::now();
        };
        // 1. The state file names everything below before it exists.
        if let Err(e) = state.save_or_err() {
            fail!(e);
        }
        journal.push(Created::StateFile);

        // 2. Namespaces: fabric and one per node, from one thread.
        let names = Names::new(&state.run_id, &plan);
        if let Err(e) = ns::create_many(&names.all()) {
            fail!(e);
        }
        journal.push(Created::Namespaces(names.all()));

        done("namespaces");
        // 3. The fabric: bridges, veth pairs, addresses, routes.
        let userspace = plan.uses_emulator();
        let fabric = match Fabric::build_named(&plan, names.clone(), userspace).await {
            Ok(f) => f,
            Err(e) => fail!(e),
        };
        let t_links = std::time::Instant::now();
        if let Err(e) = fabric
            .wait_links(
                &(0..plan.nodes.len()).collect::<Vec<_>>(),
                fabric::LINK_STALL,
            )
            .await
        {
            fail!(e);
        }
        tracing::debug!(waited = ?t_links.elapsed(), "every node link carries traffic");

        done("fabric and link wait");
        // 4. Hosts files, so node names resolve inside nodes.
        journal.push(Created::HostsDirs(nst.hosts_dirs.clone()));
        if let Err(e) = fabric::write_hosts(&plan, &names) {
            fail!(e);
        }

        done("hosts files");
        // 5. Cgroups with the profiles' limits.
        let cgroups = match Cgroups::detect() {
            Ok(c) => c,
            Err(e) => fail!(e),
        };
        let run_cg = nst.cgroup.clone().unwrap_or_default();
        cgroups_slot = Some(cgroups.clone());
        journal.push(Created::Cgroup(run_cg.clone()));
        let host = plan.scaled_host(&HostCpu::detect());
        let mut node_cgroups = Vec::with_capacity(plan.nodes.len());
        let allowed = crate::host::cgroup::allowed_cpus();
        for (i, (n, st)) in plan.nodes.iter().zip(&nst.nodes).enumerate() {
            let cg = match cgroups.create(&st.cgroup) {
                Ok(c) => c,
                Err(e) => fail!(e),
            };
            if let Err(e) = cg.apply(&limits(&n.profile, &host).pinned(i, &allowed)) {
                fail!(e);
            }
            node_cgroups.push(cg);
        }

        done("cgroups");
        // 6. Baseline WAN shaping and firewall in the fabric namespace, and the userspace
        //    link emulator when it carries the impairments.
        let faults = match Faults::install(plan.clone(), &fabric, host, emu).await {
            Ok(f) => f,
            Err(e) => fail!(e),
        };

        done("shaping and firewall");
        // 7. What processes need to start inside nodes (paths: each start opens them).
        let execs = node_cgroups
            .iter()
            .enumerate()
            .map(|(i, cg)| {
                let hosts = fabric::hosts_dir(&names.nodes[i]).join("hosts");
                NodeExec::new(
                    &names.nodes[i],
                    ns::path(&names.nodes[i]),
                    Some(&hosts),
                    cg.procs_paths(),
                )
                .map(Arc::new)
                .map_err(|e| HostError::io("preparing process start in", &names.nodes[i], e))
            })
            .collect::<Result<Vec<_>>>();
        let execs = match execs {
            Ok(x) => x,
            Err(e) => fail!(e),
        };

        let n = plan.nodes.len();
        Ok(NetnsLab {
            run_id: state.run_id.clone(),
            plan,
            state,
            fabric,
            faults,
            cgroups,
            nodes: NetnsNodes {
                cgroups: node_cgroups,
                supervisor: Supervisor::new(Default::default()),
            },
            programs,
            execs,
            sockets: vec![None; n],
            journal,
        })
    }

    /// Starts every workload instance, each in its node's namespace and cgroup, with its
    /// output captured under `out_dir/workloads/<workload>/`.
    pub async fn deploy(&mut self, out_dir: &std::path::Path) -> Result<()> {
        let plan = self.plan.clone();
        for (wi, w) in plan.workloads.iter().enumerate() {
            for &ni in &w.nodes {
                let launch_spec = super::launch_spec(
                    &self.state,
                    &plan,
                    wi,
                    ni,
                    out_dir,
                    self.programs.argv(wi, ni).to_vec(),
                    None,
                )?;
                let spec = super::instance_spec(&plan, wi, ni, launch_spec);
                let exec = self.execs[ni].clone();
                let launch: Launch = Arc::new(move |s: &LaunchSpec| {
                    let r =
                        spawn_in(&exec, s).map(|c| Box::new(ChildProcess(c)) as Box<dyn Process>);
                    Box::pin(async move { r })
                });
                self.nodes.supervisor.start(spec, launch);
            }
        }
        Ok(())
    }

    /// Limits node `n`'s cgroup holds now (read back from the kernel).
    pub fn read_limits(&self, n: usize) -> Result<NodeLimits> {
        self.nodes.cgroups[n].read_limits()
    }

    /// Marks the lab ready in its state file (for `up`, `exec`).
    pub fn mark_ready(&mut self) -> Result<()> {
        self.state.ready = true;
        if let TargetState::Netns(n) = &mut self.state.target {
            n.workload_pids = self.nodes.supervisor.pids();
        }
        self.state.save_or_err()
    }

    /// Reverts every fault, stops workloads and removes everything the lab created, in
    /// reverse order. Keeps going past errors and returns them all.
    pub async fn teardown(mut self, grace: Duration) -> Vec<String> {
        // Faults first, in reverse: frozen nodes must be thawed before their processes can
        // be killed, and on a device every fault must be undone anyway.
        let mut errors = self.faults.revert_all(&self.fabric, &mut self.nodes).await;
        let NetnsLab {
            journal,
            state,
            cgroups,
            fabric,
            mut faults,
            nodes,
            sockets,
            execs,
            ..
        } = self;
        nodes.supervisor.stop_all(grace).await;
        errors.extend(faults.stop());
        drop((sockets, execs, fabric, faults));
        errors.extend(revert(&journal, &state, Some(&cgroups)).await);
        errors
    }
}

/// Starts `s` inside a node, with its output appended to its log files.
fn spawn_in(exec: &NodeExec, s: &LaunchSpec) -> std::io::Result<tokio::process::Child> {
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    let Some((program, args)) = s.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = exec.command(program, args)?;
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
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
}

/// Reverts a provisioning journal in reverse order.
async fn revert(journal: &[Created], state: &RunState, cgroups: Option<&Cgroups>) -> Vec<String> {
    let mut errors = Vec::new();
    for c in journal.iter().rev() {
        let t = std::time::Instant::now();
        match c {
            Created::Cgroup(rel) => {
                if let Some(cg) = cgroups {
                    errors.extend(super::remove_run_cgroup(cg, rel));
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
                errors.extend(state.remove_or_msg());
            }
        }
        tracing::debug!(step = c.kind(), took = ?t.elapsed(), "reverted");
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
/// Used by `edgesim cleanup` and `down` when the controlling process is gone. Workloads end
/// with their cgroups (removal kills what is inside first), never by saved process ids.
///
/// Guarantees: idempotent; keeps going past errors; "already gone" is success.
pub async fn cleanup_state(state: &RunState) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(nst) = netns_state(state) else {
        return vec![format!("run {} is not a netns run", state.run_id)];
    };
    let cgroups = Cgroups::detect().ok();
    let mut journal = vec![
        Created::StateFile,
        Created::Namespaces(nst.namespaces.clone()),
        Created::HostsDirs(nst.hosts_dirs.clone()),
    ];
    if let Some(cg) = &nst.cgroup {
        journal.push(Created::Cgroup(cg.clone()));
    }
    if cgroups.is_none() && nst.cgroup.is_some() {
        errors.push("cannot find the cgroup hierarchies to remove the run's cgroups".into());
    }
    errors.extend(revert(&journal, state, cgroups.as_ref()).await);
    errors
}

/// A command that runs `argv` inside node `node` of a netns lab that is up, with the
/// environment its workloads get. The command holds the descriptors it enters the node with
/// until it is dropped.
pub fn exec_command(
    state: &RunState,
    node: usize,
    argv: &[String],
) -> Result<std::process::Command> {
    let Some(nst) = netns_state(state) else {
        return Err(HostError::other(
            "exec in",
            state.run_id.clone(),
            "not a netns run",
        ));
    };
    let n = &nst.nodes[node];
    if !ns::exists(&n.namespace) {
        return Err(HostError::NsOpen {
            name: n.namespace.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    // Outside the node's cgroup when it is gone (the lab is going down), as before.
    let procs = Cgroups::detect()
        .and_then(|c| c.open(&n.cgroup))
        .ok()
        .map(|c| c.procs_paths())
        .filter(|ps| ps.iter().all(|p| p.exists()))
        .unwrap_or_default();
    let hosts = fabric::hosts_dir(&n.namespace).join("hosts");
    let x = NodeExec::new(&n.namespace, ns::path(&n.namespace), Some(&hosts), procs)
        .map_err(|e| HostError::io("preparing process start in", &n.namespace, e))?;
    let Some((program, args)) = argv.split_first() else {
        return Err(HostError::other(
            "exec in",
            n.namespace.clone(),
            "empty command",
        ));
    };
    let mut cmd = x
        .command(program, args)
        .map_err(|e| HostError::io("preparing", program.clone(), e))?;
    cmd.envs(state.node_env(node));
    Ok(cmd)
}
