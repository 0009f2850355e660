//! The `device` target's lab: a scenario's nodes are boards from an inventory, each driven by
//! its own `edgesim agent` over SSH.
//!
//! - **Resolve** (before anything changes): the inventory is read, every node bound to a
//!   host (by name, then by profile), every board's address known, an agent binary found for
//!   every architecture the profiles name; what boards cannot do (container images) is
//!   refused with the scenario's position.
//! - **Provision**: every board is reached (in parallel), the agent uploaded (once per
//!   content hash) and started; its facts are checked against the node's profile and what the
//!   scenario needs, every mismatch of every board reported at once, before any fault is
//!   installed. Then the state file names the boards, and each board gets the baseline.
//! - **Faults**: the lab keeps the live link parameters, partitions and isolated nodes; after
//!   each action every board gets its whole desired state again ([`super::desired_for`]:
//!   the sender shapes, the receiver drops), in parallel. A heartbeat renews every board's
//!   lease once a second; when the controller is gone the boards revert by themselves.
//! - **Probes** run on the boards (the agent's `probes`), from the board's own stack, with the
//!   scenario's addresses replaced by the boards' real ones; their samples come back at the
//!   end of the timeline.
//! - **Teardown**: every agent reverts and exits (`bye`); **cleanup** (after SIGKILL) reaches
//!   the boards named in the state file and starts an agent there, which reverts what the
//!   dead run's agent left.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::scenario::Plan;
use crate::scenario::diag::Diagnostic;
use crate::scenario::model::DownMode;
use crate::scenario::plan::{ActionKind, Block, LinkParams};
use crate::targets::state::{Mode, RunState, TargetState};
use crate::workload::{BoxFuture, Launch, LaunchSpec, Process, Supervisor};

use super::agent::{Desired, Facts, Reply, Request};
use super::inventory::{Inventory, InventoryHost};
use super::transport::{self, AgentConn, Board, ConnectOptions};
use super::{Needs, check_board, desired_for};

/// How long a board keeps a fault without hearing from the controller, unless its inventory
/// host sets `edgesim_lease`.
pub const LEASE: Duration = Duration::from_secs(5);
/// The shortest `edgesim_lease`: three heartbeats must fit in it.
pub const MIN_LEASE: Duration = Duration::from_millis(300);
/// How often the controller renews every board's lease (more often for short leases).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a device run will use, resolved before anything is created.
#[derive(Debug, Clone)]
pub struct Bound {
    pub inventory: PathBuf,
    /// The inventory host of each node.
    pub hosts: Vec<InventoryHost>,
    /// Each node's board address on the lab network.
    pub addrs: Vec<Ipv4Addr>,
    /// The interface each board reaches the others through.
    pub ifaces: Vec<String>,
    /// The agent binary per `uname -m` (`aarch64`, `x86_64`).
    pub agents: BTreeMap<String, PathBuf>,
    /// What each workload instance runs, by (workload, node).
    pub programs: BTreeMap<(usize, usize), Program>,
    /// Each board's lease (`edgesim_lease`, else [`LEASE`]).
    pub leases: Vec<Duration>,
}

/// What a workload instance runs on its board.
#[derive(Debug, Clone)]
pub enum Program {
    /// A binary of this machine's, uploaded to the board (by content hash), and its arguments.
    Upload { local: PathBuf, args: Vec<String> },
    /// A program the board has.
    Command { argv: Vec<String> },
}

/// The device target's part of the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub inventory: PathBuf,
    /// The inventory host of each node, and the agent's path on it once uploaded.
    pub hosts: Vec<String>,
    #[serde(default)]
    pub agent_paths: BTreeMap<String, String>,
    /// The process groups of the workloads started on each board (for cleanup).
    #[serde(default)]
    pub workload_groups: BTreeMap<String, Vec<i32>>,
}

fn machine_of(arch: crate::profile::Arch) -> &'static str {
    match arch {
        crate::profile::Arch::Arm64 => "aarch64",
        crate::profile::Arch::Amd64 => "x86_64",
    }
}

/// The static agent for `machine`: `EDGESIM_AGENT_<MACHINE>`; next to this binary as
/// `edgesim-<machine>`; Cargo's cross build folder beside this binary's
/// (`target/<machine>-unknown-linux-musl/{release,debug}/edgesim`); this very binary when it
/// is for `machine`.
pub fn agent_binary(machine: &str) -> Option<PathBuf> {
    let var = format!("EDGESIM_AGENT_{}", machine.to_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let beside = dir.join(format!("edgesim-{machine}"));
    if beside.is_file() {
        return Some(beside);
    }
    // target/debug/edgesim (or target/debug/deps/… for tests) → target/<triple>/<profile>/.
    let triple = format!("{machine}-unknown-linux-musl");
    for up in dir.ancestors().take(3) {
        for profile in ["release", "debug"] {
            let p = up.join(&triple).join(profile).join("edgesim");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    (std::env::consts::ARCH == machine).then_some(exe)
}

/// The device target's validation of a plan against an inventory; nothing is created.
pub async fn resolve(
    plan: &Plan,
    inventory: Option<&Path>,
) -> std::result::Result<Bound, Vec<Diagnostic>> {
    let here = crate::scenario::loc::Pos::default();
    let mut errors = Vec::new();
    let Some(path) = inventory else {
        return Err(vec![
            Diagnostic::new(
                here,
                "the device target needs an inventory of the boards: --inventory FILE",
            )
            .hint("an Ansible YAML inventory; each host with `edgesim_profile` (see the README)"),
        ]);
    };
    let inv = match Inventory::load(path) {
        Ok(i) => i,
        Err(e) => return Err(vec![Diagnostic::new(here, e.to_string())]),
    };
    let mut programs = BTreeMap::new();
    for (wi, w) in plan.workloads.iter().enumerate() {
        if let Some(p) = &w.program {
            // The caller's own build: uploaded as it is (it must suit the boards' arch).
            for &n in &w.nodes {
                programs.insert(
                    (wi, n),
                    Program::Upload {
                        local: p.clone(),
                        args: w.program_args(),
                    },
                );
            }
            continue;
        }
        match &w.run {
            crate::scenario::plan::Run::App { app, args } => {
                let mut failed = BTreeSet::new();
                for &n in &w.nodes {
                    let m = machine_of(plan.nodes[n].profile.arch);
                    match crate::workload::apps::board_binary(app, m) {
                        Ok(local) => {
                            programs.insert(
                                (wi, n),
                                Program::Upload {
                                    local,
                                    args: args.clone(),
                                },
                            );
                        }
                        Err(e) => {
                            if failed.insert(m) {
                                errors.push(Diagnostic::new(w.pos, format!("app `{app}`: {e}")));
                            }
                        }
                    }
                }
            }
            crate::scenario::plan::Run::Command { argv } => {
                for &n in &w.nodes {
                    programs.insert((wi, n), Program::Command { argv: argv.clone() });
                }
            }
            crate::scenario::plan::Run::Image { image, .. } => errors.push(
                Diagnostic::new(
                    w.pos,
                    format!("image `{image}`: boards run binaries, not container images"),
                )
                .hint("use `app:` (a static build is uploaded) or `command:`, or deliver images with K3s and Flux"),
            ),
        }
    }
    let nodes: Vec<(String, String)> = plan
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.profile_name.clone()))
        .collect();
    let bindings = match inv.bind(&nodes) {
        Ok(b) => b,
        Err(e) => {
            errors.push(Diagnostic::new(here, e.to_string()));
            return Err(errors);
        }
    };
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    let mut ifaces = Vec::new();
    let mut leases = Vec::new();
    for b in &bindings {
        let h = inv.hosts[&b.host].clone();
        let addr_text = h
            .vars
            .get("edgesim_address")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| h.address.clone());
        let addr = match addr_text.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => tokio::net::lookup_host((addr_text.as_str(), 22))
                .await
                .ok()
                .and_then(|mut it| {
                    it.find_map(|a| match a.ip() {
                        IpAddr::V4(v) => Some(v),
                        IpAddr::V6(_) => None,
                    })
                }),
        };
        match addr {
            Some(a) => addrs.push(a),
            None => {
                errors.push(Diagnostic::new(
                    here,
                    format!(
                        "inventory host `{}`: `{addr_text}` is not an IPv4 address and does not resolve to one (set `edgesim_address` to the board's address on the lab network)",
                        h.name
                    ),
                ));
                addrs.push(Ipv4Addr::UNSPECIFIED);
            }
        }
        ifaces.push(
            h.vars
                .get("edgesim_interface")
                .and_then(|v| v.as_str())
                .unwrap_or("eth0")
                .to_string(),
        );
        let lease = match h.vars.get("edgesim_lease").and_then(|v| v.as_str()) {
            None => LEASE,
            Some(t) => match t.parse::<crate::units::Dur>() {
                Ok(d) if d.0 >= MIN_LEASE => d.0,
                Ok(_) => {
                    errors.push(Diagnostic::new(
                        here,
                        format!(
                            "inventory host `{}`: edgesim_lease `{t}` is shorter than {} (three heartbeats must fit in it)",
                            h.name,
                            crate::units::Dur(MIN_LEASE)
                        ),
                    ));
                    LEASE
                }
                Err(e) => {
                    errors.push(Diagnostic::new(
                        here,
                        format!("inventory host `{}`: edgesim_lease: {e}", h.name),
                    ));
                    LEASE
                }
            },
        };
        leases.push(lease);
        hosts.push(h);
    }
    let mut agents = BTreeMap::new();
    for n in &plan.nodes {
        let m = machine_of(n.profile.arch);
        if agents.contains_key(m) {
            continue;
        }
        match agent_binary(m) {
            Some(p) => {
                agents.insert(m.to_string(), p);
            }
            None => errors.push(
                Diagnostic::new(
                    here,
                    format!(
                        "node `{}` is {m}, and there is no {m} agent: a static edgesim build for {m}-unknown-linux-musl",
                        n.name
                    ),
                )
                .hint(format!(
                    "build it with .ci/agent-static release, or set EDGESIM_AGENT_{}",
                    m.to_uppercase()
                )),
            ),
        }
    }
    if errors.is_empty() {
        Ok(Bound {
            inventory: path.to_path_buf(),
            hosts,
            addrs,
            ifaces,
            agents,
            programs,
            leases,
        })
    } else {
        Err(errors)
    }
}

/// What the plan asks of board `node`'s kernel, over every state its links go through
/// (the baseline, then each `impair` in turn): netem or htb where it *sends* on a path that
/// needs them, nftables where it *receives* drops (loss, cuts, partitions, isolation).
pub fn needs_of(plan: &Plan, node: usize) -> Needs {
    let mut needs = Needs {
        userspace: plan.mechanism == crate::scenario::plan::Mechanism::Userspace,
        ..Needs::default()
    };
    let mut links = plan.baseline_links();
    let look = |links: &[(LinkParams, LinkParams)], needs: &mut Needs| {
        let me = plan.nodes[node].site;
        for other in plan.nodes.iter().map(|n| n.site) {
            if let Some(p) = plan.path_params(links, me, other) {
                needs.delay |= p.needs_netem();
                needs.rate |= p.rate.is_some();
            }
            match plan.path_params(links, other, me) {
                Some(p) => needs.firewall |= p.cut || p.loss > 0.0,
                None => needs.firewall = true,
            }
        }
    };
    look(&links, &mut needs);
    for a in &plan.actions {
        match &a.kind {
            ActionKind::Impair { link, up, down } => {
                links[*link] = (*up, *down);
                look(&links, &mut needs);
            }
            ActionKind::Partition { blocks, .. } => {
                needs.firewall |= blocks.iter().any(|b| b.to.contains(&node));
            }
            ActionKind::NodeDown { nodes, mode } => {
                needs.firewall = true;
                needs.freeze |= *mode == DownMode::Freeze && nodes.contains(&node);
            }
            _ => {}
        }
    }
    needs
}

use super::fleet::{self, Conn, Fleet};

/// One board and its agent.
struct BoardLink {
    board: Arc<Board>,
    agent: Arc<Mutex<Conn>>,
    child: Option<openssh::Child<Arc<openssh::Session>>>,
    facts: Facts,
}

/// A device lab that is up.
pub struct DeviceLab {
    pub plan: Arc<Plan>,
    pub state: RunState,
    bound: Bound,
    boards: Vec<BoardLink>,
    links: Vec<(LinkParams, LinkParams)>,
    partitions: BTreeMap<String, Vec<Block>>,
    isolated: BTreeSet<usize>,
    /// The boards' agents, as a fleet: pushes, heartbeats, probes, metrics.
    fleet: Fleet,
    pub supervisor: Supervisor,
    /// Nodes powered off: isolated, their workloads down.
    powered_off: BTreeSet<usize>,
    /// Which boards carry their links with linkem in a cell (their workloads live there).
    cells: Vec<bool>,
    /// Which boards keep their workloads in a cgroup the agent makes (`edgesim/<run>/<node>`).
    cgroups: Vec<bool>,
    /// Nodes frozen (`node-down` freeze): isolated, their cgroup frozen.
    frozen: BTreeSet<usize>,
    /// Where each board's agent said its workloads run (a systemd scope or its own cgroup).
    workloads: Vec<Option<String>>,
}

/// The limits of a node's workloads on a board of profile `spec` (a systemd scope's unit
/// properties): the profile's cores as a quota (no tighter than a board that fits the profile,
/// which has that many), its workload memory (total less what the profile reserves for the
/// system) with no swap, its task limit.
pub fn board_limits(spec: &crate::profile::ProfileSpec) -> crate::host::cgroup::NodeLimits {
    let period = crate::profile::CPU_PERIOD_US;
    crate::host::cgroup::NodeLimits {
        cpu_quota_us: Some(u64::from(spec.cpu.cores) * period),
        cpu_period_us: period,
        effective_cores: f64::from(spec.cpu.cores),
        memory_bytes: Some(spec.workload_memory().0),
        pids_max: spec.pids,
        max_cpus: None,
        cpus: None,
    }
}

/// Shell quoting for a word of a remote command line.
fn quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// A workload instance on a board: the SSH command running it, in its own process group
/// there (the session sshd made for it).
struct RemoteProcess {
    board: Arc<Board>,
    child: Option<openssh::Child<Arc<openssh::Session>>>,
    group: i32,
    copies: Vec<tokio::task::JoinHandle<()>>,
    /// Held open, never written: when this process dies (SIGKILL included) the board sees
    /// its end and kills the instance's group.
    _lifeline: Option<openssh::ChildStdin>,
}

impl Process for RemoteProcess {
    fn pid(&self) -> i32 {
        self.group
    }
    fn signal(&mut self, sig: i32) -> BoxFuture<'_, ()> {
        let (board, group) = (self.board.clone(), self.group);
        Box::pin(async move {
            let _ = board
                .sh(&format!("kill -{sig} -{group} 2>/dev/null || true"))
                .await;
        })
    }
    fn wait(&mut self) -> BoxFuture<'_, Option<std::process::ExitStatus>> {
        let child = self.child.take();
        let copies = std::mem::take(&mut self.copies);
        Box::pin(async move {
            let st = match child {
                Some(c) => c.wait().await.ok(),
                None => None,
            };
            for c in copies {
                let _ = c.await;
            }
            st
        })
    }
}

/// The folder of a run's workloads on a board.
async fn remote_runs(board: &Board, run_id: &str) -> std::result::Result<String, String> {
    Ok(format!(
        "{}/runs/{run_id}",
        board.cache_dir().await.map_err(|e| e.to_string())?
    ))
}

/// Starts one instance on `board`: `argv` with the spec's environment, in a work folder of
/// its own on the board, its output copied into the spec's log files here.
async fn spawn_remote(
    board: Arc<Board>,
    spec: LaunchSpec,
    argv: Vec<String>,
    workdir: String,
) -> std::io::Result<Box<dyn Process>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let env: Vec<String> = spec
        .env
        .iter()
        .filter(|(k, _)| k != "EDGESIM_WORKDIR")
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    // The group's id first (the process group sshd made for this command); a watcher that
    // kills the group when the controller's end of stdin closes (the controller died or the
    // connection is gone), then the workload itself, its stdin from /dev/null.
    let script = format!(
        "W={}; mkdir -p \"$W\" && cd \"$W\" || exit 126; read -r _ _ _ _ g _ < /proc/$$/stat; echo \"edgesim-group $g\"; exec 3<&0; (cat <&3 >/dev/null; kill -9 -$g) >/dev/null 2>&1 & exec 3<&- </dev/null; exec env {} EDGESIM_WORKDIR=\"$W\" {}",
        quote(&workdir),
        env.join(" "),
        argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    );
    let mut child = openssh::Session::to_command(board.session.clone(), "sh")
        .arg("-c")
        .arg(&script)
        .stdin(openssh::Stdio::piped())
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped())
        .spawn()
        .await
        .map_err(std::io::Error::other)?;
    let lifeline = child.stdin().take();
    let (Some(out), Some(err)) = (child.stdout().take(), child.stderr().take()) else {
        return Err(std::io::Error::other("no pipes"));
    };
    let mut out = tokio::io::BufReader::new(out);
    let mut first = String::new();
    out.read_line(&mut first).await?;
    let group: i32 = first
        .trim()
        .strip_prefix("edgesim-group ")
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{} did not start `{}` (see its stderr log)",
                board.host.name,
                argv.join(" ")
            ))
        })?;
    let mut copies = Vec::new();
    let mut out_file = tokio::fs::File::create(&spec.stdout).await?;
    copies.push(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out, &mut out_file).await;
        let _ = out_file.flush().await;
    }));
    let mut err = err;
    let mut err_file = tokio::fs::File::create(&spec.stderr).await?;
    copies.push(tokio::spawn(async move {
        let _ = tokio::io::copy(&mut err, &mut err_file).await;
        let _ = err_file.flush().await;
    }));
    Ok(Box::new(RemoteProcess {
        board,
        child: Some(child),
        group,
        copies,
        _lifeline: lifeline,
    }))
}

/// What a failed provisioning left: the boards whose agents run.
pub struct Partial {
    boards: Vec<BoardLink>,
    state: Option<RunState>,
}

impl Partial {
    pub async fn teardown(self) -> Vec<String> {
        let mut errors = bye_all(self.boards).await;
        if let Some(st) = self.state
            && let Some(e) = st.remove_or_msg()
        {
            errors.push(e);
        }
        errors
    }
}

async fn bye_all(boards: Vec<BoardLink>) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for b in boards {
        set.spawn(async move {
            let name = b.board.host.name.clone();
            let r = b.agent.lock().await.call(Request::Bye).await;
            let mut errors = Vec::new();
            match r {
                Ok(r) if !r.ok => errors.push(format!(
                    "{name}: reverting: {}",
                    r.error.unwrap_or_default()
                )),
                Ok(_) => {}
                Err(e) => errors.push(format!("{name}: the agent did not answer bye: {e}")),
            }
            if let Some(c) = b.child {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            }
            drop(b.agent);
            if let Ok(board) = Arc::try_unwrap(b.board)
                && let Err(e) = board.close().await
            {
                tracing::debug!("{e}");
            }
            errors
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        errors.extend(r.unwrap_or_else(|e| vec![e.to_string()]));
    }
    errors
}

/// Starts the agent at `remote` on `board`, speaking over the command's pipes.
async fn spawn_agent(
    board: &Board,
    remote: &str,
    state: Option<&str>,
) -> std::result::Result<(openssh::Child<Arc<openssh::Session>>, Conn), String> {
    let name = &board.host.name;
    let mut child = board
        .agent_command(remote, state)
        .await
        .map_err(|e| e.to_string())?
        .stdin(openssh::Stdio::piped())
        .stdout(openssh::Stdio::piped())
        .spawn()
        .await
        .map_err(|e| format!("{name}: starting the agent: {e}"))?;
    match (child.stdin().take(), child.stdout().take()) {
        (Some(w), Some(r)) => Ok((
            child,
            AgentConn::new(
                Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            ),
        )),
        _ => Err(format!("{name}: the agent's pipes are missing")),
    }
}

/// Reaches a board and starts its agent; `agent` per `uname -m`.
async fn start_board(
    host: InventoryHost,
    agents: BTreeMap<String, PathBuf>,
    state: Option<String>,
) -> std::result::Result<(BoardLink, String), String> {
    let board = transport::connect(&host, &ConnectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let machine = board.machine().await.map_err(|e| e.to_string())?;
    let local = agents.get(&machine).ok_or_else(|| {
        format!(
            "{}: the board is {machine}, and no agent for it was found (EDGESIM_AGENT_{})",
            host.name,
            machine.to_uppercase()
        )
    })?;
    let remote = board.upload_agent(local).await.map_err(|e| e.to_string())?;
    let (child, mut agent) = spawn_agent(&board, &remote, state.as_deref()).await?;
    let hello = agent
        .call(Request::Hello)
        .await
        .map_err(|e| format!("{}: the agent did not answer: {e}", host.name))?;
    let facts = hello
        .facts
        .ok_or_else(|| format!("{}: the agent sent no facts", host.name))?;
    if facts.protocol != super::agent::PROTOCOL {
        return Err(format!(
            "{}: its agent ({}, edgesim {}) speaks protocol {}, this edgesim ({}) speaks {}: build the agent from this edgesim (.ci/agent-static)",
            host.name,
            local.display(),
            facts.version,
            facts.protocol,
            env!("CARGO_PKG_VERSION"),
            super::agent::PROTOCOL
        ));
    }
    if !facts.recovered.is_empty() {
        tracing::warn!(board = %host.name, recovered = ?facts.recovered, "reverted what an earlier agent left");
    }
    Ok((
        BoardLink {
            board: Arc::new(board),
            agent: Arc::new(Mutex::new(agent)),
            child: Some(child),
            facts,
        },
        remote,
    ))
}

impl DeviceLab {
    pub async fn provision(
        plan: Arc<Plan>,
        bound: Bound,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
    ) -> std::result::Result<DeviceLab, Box<(String, Partial)>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, h) in bound.hosts.iter().enumerate() {
            let (h, agents) = (h.clone(), bound.agents.clone());
            set.spawn(async move { (i, start_board(h, agents, None).await) });
        }
        let mut slots: Vec<Option<(BoardLink, String)>> =
            (0..bound.hosts.len()).map(|_| None).collect();
        let mut problems = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((i, Ok(b))) => slots[i] = Some(b),
                Ok((_, Err(e))) => problems.push(e),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut boards = Vec::new();
        let mut agent_paths = BTreeMap::new();
        for (i, s) in slots.into_iter().enumerate() {
            if let Some((b, remote)) = s {
                agent_paths.insert(bound.hosts[i].name.clone(), remote);
                boards.push(b);
            }
        }
        // Every board against its node's profile and the scenario's needs, all at once.
        if problems.is_empty() {
            for (i, b) in boards.iter().enumerate() {
                let node = &plan.nodes[i];
                let needs = needs_of(&plan, i);
                problems.extend(check_board(
                    &b.board.host.name,
                    &b.facts,
                    &node.profile,
                    needs,
                ));
                if !b.facts.interfaces.contains(&bound.ifaces[i]) {
                    problems.push(format!(
                        "{}: no interface `{}` (it has {}); set `edgesim_interface` in the inventory",
                        b.board.host.name,
                        bound.ifaces[i],
                        b.facts.interfaces.join(", ")
                    ));
                }
            }
        }
        let cells: Vec<bool> = boards
            .iter()
            .enumerate()
            .map(|(i, b)| needs_of(&plan, i).cell(&b.facts))
            .collect();
        for (b, _) in boards.iter().zip(&cells).filter(|(_, c)| **c) {
            if plan.mechanism == crate::scenario::plan::Mechanism::Userspace {
                tracing::info!(board = %b.board.host.name, "linkem carries the board's links, in a cell that holds its workloads");
            } else {
                tracing::warn!(board = %b.board.host.name, netem = b.facts.netem, htb = b.facts.htb, "the board's kernel cannot shape these links: linkem carries them, in a cell that holds its workloads");
            }
        }
        let cgroups: Vec<bool> = boards
            .iter()
            .map(|b| b.facts.cgroup_error.is_none())
            .collect();
        for (i, b) in boards.iter().enumerate() {
            if let Some(e) = &b.facts.cgroup_error
                && plan.workloads.iter().any(|w| w.nodes.contains(&i))
            {
                tracing::warn!(board = %b.board.host.name, "its workloads run without a cgroup of the run's ({e}): each in its own process group only, without the profile's limits");
            }
        }
        if !problems.is_empty() {
            return Err(Box::new((
                format!(
                    "{} problem{} with the boards; nothing was changed:\n  {}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" },
                    problems.join("\n  ")
                ),
                Partial {
                    boards,
                    state: None,
                },
            )));
        }
        let mut state = RunState::new(
            &plan,
            run_id,
            mode,
            out_dir,
            TargetState::Device(DeviceState {
                inventory: std::fs::canonicalize(&bound.inventory)
                    .unwrap_or_else(|_| bound.inventory.clone()),
                hosts: bound.hosts.iter().map(|h| h.name.clone()).collect(),
                agent_paths,
                workload_groups: BTreeMap::new(),
            }),
        );
        for (n, a) in state.nodes.iter_mut().zip(&bound.addrs) {
            n.addr = *a;
        }
        if let Err(e) = state.save_or_err() {
            return Err(Box::new((
                e.to_string(),
                Partial {
                    boards,
                    state: None,
                },
            )));
        }
        let members = boards
            .iter()
            .map(|b| fleet::Member {
                name: b.board.host.name.clone(),
                conn: b.agent.clone(),
            })
            .collect();
        let mut lab = DeviceLab {
            links: plan.baseline_links(),
            plan,
            state,
            bound,
            boards,
            partitions: BTreeMap::new(),
            isolated: BTreeSet::new(),
            fleet: Fleet::new(members),
            supervisor: Supervisor::new(crate::workload::EventLog::default()),
            powered_off: BTreeSet::new(),
            cells,
            workloads: vec![None; cgroups.len()],
            cgroups,
            frozen: BTreeSet::new(),
        };
        if let Err(e) = lab.push().await {
            let DeviceLab { boards, state, .. } = lab;
            return Err(Box::new((
                e.to_string(),
                Partial {
                    boards,
                    state: Some(state),
                },
            )));
        }
        let shortest = lab.bound.leases.iter().copied().min().unwrap_or(LEASE);
        lab.fleet.start_heartbeat(HEARTBEAT.min(shortest / 3));
        Ok(lab)
    }

    /// The boards' addresses, by node.
    fn addrs(&self) -> Vec<IpAddr> {
        self.bound.addrs.iter().map(|a| IpAddr::V4(*a)).collect()
    }

    /// What board `n` must hold now.
    fn desired(&self, n: usize) -> Desired {
        let addrs = self.addrs();
        let mut d = desired_for(
            &self.plan,
            &self.links,
            &self.partitions,
            &addrs,
            n,
            &self.bound.ifaces[n],
            self.bound.leases[n],
        );
        // An isolated node: everything arriving on it dropped, and what it sends dropped where
        // it arrives.
        let down = self.isolated.union(&self.powered_off).copied();
        d.blocks
            .extend(fleet::isolation_blocks(&self.plan, &addrs, n, down));
        if self.cells[n] {
            d.cell = Some(self.bound.addrs[n]);
        }
        if self.cgroups[n] {
            d.cgroup = Some(self.cgroup_of(n));
            d.frozen = self.frozen.contains(&n);
            if self.boards[n].facts.systemd.is_some() {
                d.limits = Some(board_limits(&self.plan.nodes[n].profile));
            }
        }
        d
    }

    /// Node `n`'s cgroup on its board, relative to the hierarchies' roots.
    fn cgroup_of(&self, n: usize) -> String {
        format!("edgesim/{}/{}", self.state.run_id, self.plan.nodes[n].name)
    }

    /// The words that put a workload of board `n` in its cgroup and its cell, through the
    /// board's own agent binary (none: the board has neither).
    async fn enter_prefix(&self, n: usize) -> std::result::Result<Vec<String>, String> {
        if !self.cells[n] && !self.cgroups[n] {
            return Ok(Vec::new());
        }
        let b = &self.boards[n];
        let name = &b.board.host.name;
        let agent = match &self.state.target {
            TargetState::Device(d) => d.agent_paths.get(name).cloned(),
            _ => None,
        }
        .ok_or_else(|| format!("{name}: no agent path recorded"))?;
        let privilege = b.board.privilege().await.map_err(|e| e.to_string())?;
        // setns(2) needs CAP_SYS_ADMIN; a cgroup is joined by its owner (root).
        let caps: &[&str] = if self.cells[n] {
            &["cap_sys_admin"]
        } else {
            &[]
        };
        let mut argv = privilege.argv(&agent, caps);
        argv.push("agent-enter".to_string());
        if self.cgroups[n] {
            argv.extend(["--cgroup".to_string(), self.cgroup_of(n)]);
        }
        if self.cells[n] {
            argv.extend([
                "--netns".to_string(),
                b.facts.cell_netns.display().to_string(),
            ]);
        }
        argv.push("--".to_string());
        Ok(argv)
    }

    /// Whether board `n` runs its links (and workloads) in a linkem cell.
    pub fn in_cell(&self, n: usize) -> bool {
        self.cells.get(n).copied().unwrap_or(false)
    }

    /// Every board gets its whole desired state, in parallel.
    async fn push(&mut self) -> crate::host::Result<()> {
        let desired = (0..self.boards.len()).map(|n| self.desired(n)).collect();
        let mut first = Ok(());
        for (n, r) in self.fleet.push(desired).await.into_iter().enumerate() {
            match r {
                Ok(reply) => {
                    let w = reply.workloads;
                    if w.is_some() && w != self.workloads[n] {
                        tracing::info!(board = %self.boards[n].board.host.name, workloads = w.as_deref().unwrap_or_default(), "the node's workloads run there");
                        self.workloads[n] = w;
                    }
                }
                Err(e) if first.is_ok() => first = Err(e),
                Err(_) => {}
            }
        }
        first
    }

    /// Applies one timeline action on the boards.
    pub async fn apply(&mut self, action: &ActionKind) -> crate::host::Result<()> {
        match action {
            ActionKind::Partition { name, blocks } => {
                self.partitions.insert(name.clone(), blocks.clone());
            }
            ActionKind::Heal { names } => {
                for n in names {
                    self.partitions.remove(n);
                }
            }
            ActionKind::Impair { link, up, down } => self.links[*link] = (*up, *down),
            ActionKind::NodeDown {
                nodes,
                mode: DownMode::Isolate,
            } => self.isolated.extend(nodes.iter().copied()),
            ActionKind::NodeDown {
                nodes,
                mode: DownMode::Freeze,
            } => {
                // Cable out and the board hung: isolated, its workloads' cgroup frozen.
                self.isolated.extend(nodes.iter().copied());
                self.frozen.extend(nodes.iter().copied());
            }
            ActionKind::NodeDown {
                nodes,
                mode: DownMode::Poweroff,
            } => {
                // Cable out first, then the board's workloads stop and stay down.
                self.powered_off.extend(nodes.iter().copied());
                self.push().await?;
                self.supervisor.suspend_nodes(nodes);
                return Ok(());
            }
            ActionKind::NodeUp { nodes, .. } => {
                let powered: Vec<usize> = nodes
                    .iter()
                    .copied()
                    .filter(|n| self.powered_off.remove(n))
                    .collect();
                for n in nodes {
                    self.isolated.remove(n);
                    self.frozen.remove(n);
                }
                // Network first: a board that powers on finds its cable plugged in.
                self.push().await?;
                self.supervisor.resume_nodes(&powered);
                return Ok(());
            }
            ActionKind::Kill {
                workload,
                nodes,
                signal,
            } => {
                self.supervisor.signal(*workload, nodes, *signal);
                return Ok(());
            }
            ActionKind::Restart { workload, nodes } => {
                self.supervisor.restart(*workload, nodes);
                return Ok(());
            }
            other => {
                // Validation refuses these for this target (capabilities).
                return Err(crate::host::HostError::other(
                    "applying",
                    other.verb(),
                    "not supported on boards",
                ));
            }
        }
        self.push().await
    }

    /// Starts the plan's probes on their boards, on a grid starting at `t0`.
    pub async fn start_probes(&mut self, t0: tokio::time::Instant) -> crate::host::Result<()> {
        let map: BTreeMap<Ipv4Addr, Ipv4Addr> = self
            .plan
            .nodes
            .iter()
            .zip(&self.bound.addrs)
            .map(|(n, a)| (n.addr, *a))
            .collect();
        let real = |a: Ipv4Addr| *map.get(&a).unwrap_or(&a);
        self.fleet.start_probes(&self.plan, real, t0).await
    }

    /// The probes' samples from the boards, into `logs` (one per plan probe).
    pub async fn collect_probes(&mut self, logs: &[crate::probe::ProbeLog]) -> Vec<String> {
        // Where each node's workloads ran, for the report.
        let mut errors: Vec<String> = self
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(n, w)| {
                let w = w.as_ref()?;
                Some(format!(
                    "{} ({}): workloads in {w}",
                    self.plan.nodes[n].name, self.boards[n].board.host.name
                ))
            })
            .collect();
        errors.extend(self.fleet.collect_probes(logs).await);
        errors
    }

    /// Starts every workload on its board (binaries uploaded once per content hash), waits
    /// until each has launched and every `readyPort` accepts connections on its board.
    pub async fn deploy(&mut self, out_dir: &Path) -> std::result::Result<(), String> {
        let plan = self.plan.clone();
        let mut uploaded: BTreeMap<(usize, PathBuf), String> = BTreeMap::new();
        for (wi, w) in plan.workloads.iter().enumerate() {
            for &ni in &w.nodes {
                let board = self.boards[ni].board.clone();
                let argv = match self.bound.programs.get(&(wi, ni)) {
                    Some(Program::Command { argv }) => argv.clone(),
                    Some(Program::Upload { local, args }) => {
                        let key = (ni, local.clone());
                        let remote = match uploaded.get(&key) {
                            Some(r) => r.clone(),
                            None => {
                                let name = local
                                    .file_name()
                                    .map(|n| n.to_string_lossy().into_owned())
                                    .unwrap_or_else(|| w.name.clone());
                                let r = board
                                    .upload(local, "bin", &name)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                uploaded.insert(key, r.clone());
                                r
                            }
                        };
                        std::iter::once(remote)
                            .chain(args.iter().cloned())
                            .collect()
                    }
                    None => return Err(format!("workload `{}`: nothing resolved", w.name)),
                };
                let argv: Vec<String> = self
                    .enter_prefix(ni)
                    .await?
                    .into_iter()
                    .chain(argv)
                    .collect();
                let workdir = format!(
                    "{}/{}/{}.data",
                    remote_runs(&board, &self.state.run_id).await?,
                    w.name,
                    plan.nodes[ni].name
                );
                let launch_spec = crate::targets::launch_spec(
                    &self.state,
                    &plan,
                    wi,
                    ni,
                    out_dir,
                    argv.clone(),
                    Some(&workdir),
                )
                .map_err(|e| e.to_string())?;
                let spec = crate::targets::instance_spec(&plan, wi, ni, launch_spec);
                let launch: Launch = Arc::new(move |s: &LaunchSpec| {
                    Box::pin(spawn_remote(
                        board.clone(),
                        s.clone(),
                        argv.clone(),
                        workdir.clone(),
                    ))
                });
                self.supervisor.start(spec, launch);
            }
        }
        self.supervisor.launched().await;
        for w in &plan.workloads {
            let Some(port) = w.ready_port else { continue };
            for &ni in &w.nodes {
                let deadline = tokio::time::Instant::now() + w.ready_timeout;
                let addr = std::net::SocketAddrV4::new(self.bound.addrs[ni], port);
                loop {
                    let r = self.boards[ni]
                        .agent
                        .lock()
                        .await
                        .call(Request::Connect {
                            addr,
                            timeout_ms: 500,
                        })
                        .await;
                    if matches!(r, Ok(Reply { ok: true, .. })) {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(crate::targets::not_ready(&plan, w, ni, port));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// Reads workloads' metrics through the agents (taken before the timeline takes the lab).
    pub fn fetcher(&self) -> fleet::Fetcher {
        self.fleet.fetcher()
    }

    pub fn mark_ready(&mut self) -> crate::host::Result<()> {
        self.state.ready = true;
        if let TargetState::Device(d) = &mut self.state.target {
            d.workload_groups.clear();
            for (wi, w) in self.plan.workloads.iter().enumerate() {
                for &ni in &w.nodes {
                    if let Some(g) = self.supervisor.pid(wi, ni).filter(|g| *g > 0) {
                        d.workload_groups
                            .entry(self.bound.hosts[ni].name.clone())
                            .or_default()
                            .push(g);
                    }
                }
            }
        }
        self.state.save_or_err()
    }

    /// Every board reverted, every agent gone, the state file removed.
    pub async fn teardown(mut self, grace: Duration) -> Vec<String> {
        self.fleet.stop_heartbeat();
        let supervisor = std::mem::replace(
            &mut self.supervisor,
            Supervisor::new(crate::workload::EventLog::default()),
        );
        supervisor.stop_all(grace).await;
        let mut errors = Vec::new();
        if !self.plan.workloads.is_empty() {
            for b in &self.boards {
                let r = match remote_runs(&b.board, &self.state.run_id).await {
                    Ok(runs) => b
                        .board
                        .sh(&format!("rm -rf {}", quote(&runs)))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    errors.push(e);
                }
            }
        }
        errors.extend(bye_all(std::mem::take(&mut self.boards)).await);
        if let Some(e) = self.state.remove_or_msg() {
            errors.push(e);
        }
        errors
    }
}

/// `edgesim cleanup` for a device run: an agent started on every board reverts what the
/// dead run's agent left (its state file on the board), then exits.
pub async fn cleanup_state(state: &RunState) -> Vec<String> {
    let TargetState::Device(d) = &state.target else {
        return vec![];
    };
    let inv = match Inventory::load(&d.inventory) {
        Ok(i) => i,
        Err(e) => return vec![format!("{e}: the boards cannot be reached to revert them")],
    };
    let mut errors = Vec::new();
    for name in &d.hosts {
        let Some(h) = inv.hosts.get(name) else {
            errors.push(format!("{name}: no longer in {}", d.inventory.display()));
            continue;
        };
        let Some(remote) = d.agent_paths.get(name) else {
            continue;
        };
        let r: std::result::Result<(), String> = async {
            let board = transport::connect(h, &ConnectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            if let Some(groups) = d.workload_groups.get(name) {
                for g in groups {
                    let _ = board.sh(&format!("kill -9 -{g} 2>/dev/null || true")).await;
                }
                if let Ok(runs) = remote_runs(&board, &state.run_id).await {
                    let _ = board.sh(&format!("rm -rf {}", quote(&runs))).await;
                }
            }
            let (out, mut agent) = spawn_agent(&board, remote, None).await?;
            let hello = agent
                .call(Request::Hello)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(f) = hello.facts
                && !f.recovered.is_empty()
            {
                tracing::info!(board = %name, recovered = ?f.recovered, "reverted");
            }
            agent.call(Request::Bye).await.map_err(|e| e.to_string())?;
            let _ = out.wait().await;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            errors.push(format!("{name}: {e}"));
        }
    }
    // Kept while a board could not be reached: a later cleanup tries again.
    if errors.is_empty()
        && let Some(e) = state.remove_or_msg()
    {
        errors.push(e);
    }
    errors
}
