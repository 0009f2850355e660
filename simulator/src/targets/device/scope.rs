//! A node's workloads in a transient systemd scope, on boards whose init is systemd.
//!
//! # Design
//!
//! Where systemd is PID 1 it owns the cgroup tree (its "single writer" rule): a cgroup the
//! agent made beside it, `edgesim/<run>/<node>` at the root, works but is invisible to
//! `systemctl` and may be disturbed by it. So on such a board (`/run/systemd/system` exists,
//! as sd_booted(3) checks, with the unified cgroup v2 hierarchy) the agent asks systemd for
//! the node's cgroup instead:
//!
//! ```text
//! systemd-run --scope --quiet --collect --unit edgesim-<run>-<node> --slice edgesim.slice \
//!     -p Delegate=yes -p CPUQuota=… -p MemoryMax=… -p MemorySwapMax=0 -p TasksMax=… \
//!     -- <agent> agent-hold
//! ```
//!
//! **One scope per node**, not one per workload instance: the profile's limits are the
//! node's whole budget (two instances must share one `MemoryMax`, not get one each);
//! `node-down` freeze must stop everything of the node at once; and a workload the
//! supervisor restarts must land where its node's limits are. A scope lives only while a
//! process is in it, so the agent starts it with a keeper (`edgesim agent-hold`, which only
//! sleeps) when the run's state is applied and stops it on revert: the scope's lifetime is the
//! run's, like the agent's own cgroup.
//!
//! The scope is **delegated** (`Delegate=yes`) and the workloads live in its child cgroup
//! `workloads`, which is the agent's to manage: workloads join it through `edgesim
//! agent-enter` (a write to its `cgroup.procs`), `node-down` freeze writes its
//! `cgroup.freeze` (the kernel's v2 freezer, what `systemctl freeze` itself uses), and revert
//! kills it with `cgroup.kill`. The agent does not call `systemctl freeze` or `systemctl
//! kill`: in systemd 252 they need the D-Bus system bus, which minimal boards lack, while
//! `systemd-run`, `systemctl stop` and `reset-failed` talk to systemd's private socket. The
//! limits sit on the scope (systemd writes `cpu.max`, `memory.max`, `memory.swap.max`,
//! `pids.max` there), so they hold the workloads and the keeper together; the agent reads
//! them back once the scope runs, so a manager that silently drops one (a controller it was
//! not delegated) fails the run's start instead of running it unlimited.
//!
//! # An agent that is not root
//!
//! The `edgesim` user of ansible/prepare-board.yml cannot ask the system manager for a scope
//! (that takes root, or polkit), so its scopes belong to its **own systemd manager**
//! ([`Manager::User`]: `user@<uid>.service`, which logind starts at boot because the playbook
//! turns lingering on, and which delegates `cpu memory pids` since systemd 252 — the playbook
//! makes sure with a drop-in). The same command with `--user` makes
//! `user.slice/user-<uid>.slice/user@<uid>.service/edgesim.slice/edgesim-<run>-<node>.scope`,
//! with the same limits, keeper, `workloads` child, freeze and kill; `systemd-run --user` and
//! `systemctl --user` reach the manager through its private socket in `$XDG_RUNTIME_DIR`
//! (no D-Bus session bus). One thing differs: a workload starts in the user's SSH session
//! (`session-N.scope`), and cgroup v2 lets a user move a process only below a cgroup it may
//! write — `user-<uid>.slice`, where the session and the manager meet, is root's. So
//! `agent-enter` asks the user's manager to move it (`AttachProcessesToUnit`, which the
//! manager hands to the system manager, exactly as for `systemd-run --user --scope`):
//! [`join`], over [`super::sdbus`]. That needs the system's D-Bus and logind, which a board
//! with user managers has (they start them).
//!
//! Where systemd is not the init, a non-root agent gets no cgroup at all: nothing there could
//! move its SSH session's processes into a subtree of its own. [`Manager::current`] says so,
//! and the controller refuses what needs one (`node-down` freeze) before the run.
//!
//! **Guarantees.** [`stop`] is idempotent: a unit that is not loaded is success, and it
//! keeps going past errors (kill, stop, reset-failed) and reports them together, so a
//! restarted agent can call it for whatever unit its dead predecessor's state file names.
//! When the last scope of [`SLICE`] is gone, the slice is stopped too (under a lock that
//! starting scopes take, so a scope that is starting beside it keeps its slice).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::cgroup::{Cgroups, NodeCgroup, NodeLimits};
use crate::host::{HostError, Result};

/// The slice every scope of the agent is in.
pub const SLICE: &str = "edgesim.slice";
/// The child cgroup of a scope that holds the workloads (the keeper stays above it).
pub const WORKLOADS: &str = "workloads";
/// How long systemd may take to start a scope (a board under load, or qemu's TCG).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Where the cgroup v2 hierarchy is mounted on a systemd board.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The controllers a scope's limits need from its manager: `CPUQuota=`, `MemoryMax=` and
/// `MemorySwapMax=`, `TasksMax=`.
const NEEDED: [&str; 3] = ["cpu", "memory", "pids"];

/// Whether this board was booted by systemd and its cgroups are the unified v2 hierarchy
/// (what a delegated scope with a freezable child needs).
pub fn usable() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && Path::new(CGROUP_ROOT).join("cgroup.controllers").is_file()
}

/// `systemd 252 (252.39-1~deb12u2)`, from `systemctl --version`, where systemd is PID 1 with
/// the v2 hierarchy and `systemd-run` runs; `None` otherwise.
pub fn detect() -> Option<String> {
    if !usable() {
        return None;
    }
    let run = Command::new("systemd-run")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !run.status.success() {
        return None;
    }
    let out = Command::new("systemctl")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?.trim();
    out.status.success().then(|| first.to_string())
}

/// The systemd manager that holds a node's scope: the system's, for a root agent, or the
/// agent's user's own (`systemd --user`, `user@<uid>.service`, which logind starts at boot
/// for a user with lingering on), for an agent that is not root. A user's manager can give
/// its units the profile's limits only with the controllers its `user@.service` delegates:
/// `pids memory cpu` by default since systemd 252 (ansible/prepare-board.yml makes sure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    System,
    User {
        uid: u32,
        /// `$XDG_RUNTIME_DIR` (`/run/user/<uid>`): the manager's private socket is there.
        runtime_dir: PathBuf,
        /// The manager's own cgroup, below [`CGROUP_ROOT`]:
        /// `user.slice/user-<uid>.slice/user@<uid>.service`.
        cgroup: PathBuf,
    },
}

impl Manager {
    /// The manager this agent's scopes belong to, or why there is none (a sentence).
    pub fn current() -> std::result::Result<Manager, String> {
        if !usable() {
            return Err("the board's init is not systemd with the cgroup v2 hierarchy".to_string());
        }
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return Ok(Manager::System);
        }
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |u| u.name);
        // pam_systemd sets it for a login; an agent started otherwise finds the same place.
        let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")));
        let private = runtime_dir.join("systemd/private");
        if !private.exists() {
            return Err(format!(
                "{name}'s systemd manager is not running (no {}): turn lingering on for {name} \
                 (`loginctl enable-linger {name}`; ansible/prepare-board.yml does)",
                private.display()
            ));
        }
        let mut m = Manager::User {
            uid: uid.as_raw(),
            runtime_dir,
            cgroup: PathBuf::new(),
        };
        let out = m
            .command("systemctl")
            .args(["show", "--property=ControlGroup", "--value"])
            .output()
            .map_err(|e| format!("asking {name}'s systemd manager for its cgroup: {e}"))?;
        let cg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || !cg.starts_with('/') {
            return Err(format!(
                "{name}'s systemd manager does not say where its cgroup is: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dir = Path::new(CGROUP_ROOT).join(cg.trim_start_matches('/'));
        let have = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = NEEDED
            .into_iter()
            .filter(|c| !have.split_whitespace().any(|h| h == *c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{name}'s systemd manager ({}) is not delegated the {} controller{}, so it \
                 cannot hold a profile's limits: ansible/prepare-board.yml delegates cpu, memory \
                 and pids to it (`Delegate=cpu memory pids`)",
                cg,
                missing.join(" and "),
                if missing.len() == 1 { "" } else { "s" }
            ));
        }
        if let Manager::User { cgroup, .. } = &mut m {
            *cgroup = PathBuf::from(cg.trim_start_matches('/'));
        }
        Ok(m)
    }

    /// `prog` (`systemctl`, `systemd-run`) speaking to this manager: `--user` with the
    /// runtime directory its private socket is in (no D-Bus session bus is needed).
    fn command(&self, prog: &str) -> Command {
        let mut cmd = Command::new(prog);
        if let Manager::User { runtime_dir, .. } = self {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime_dir);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The top of this manager's cgroups: where [`SLICE`] is.
    pub fn root(&self) -> PathBuf {
        match self {
            Manager::System => PathBuf::from(CGROUP_ROOT),
            Manager::User { cgroup, .. } => Path::new(CGROUP_ROOT).join(cgroup),
        }
    }

    /// The cgroup of `unit`.
    pub fn scope_dir(&self, unit: &str) -> PathBuf {
        self.root().join(SLICE).join(unit)
    }

    /// Words for messages: `the system manager`, `uid 1000's manager`.
    pub fn describe(&self) -> String {
        match self {
            Manager::System => "the system manager".to_string(),
            Manager::User { uid, .. } => format!("uid {uid}'s user manager"),
        }
    }

    /// The uid whose manager this is (0: the system's).
    pub fn uid(&self) -> u32 {
        match self {
            Manager::System => 0,
            Manager::User { uid, .. } => *uid,
        }
    }

    /// Holds [`SLICE`] against removal: taken while a scope starts in it, and while an empty
    /// slice is checked and stopped, so that an agent whose scope ends cannot stop the slice
    /// under another agent's scope that is starting (boards that are network namespaces of
    /// one host share its managers). An exclusive flock(2) on the manager's top cgroup
    /// directory, which exists as long as the manager: no file is left behind.
    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let dir = self.root();
        let f = std::fs::File::open(&dir)
            .map_err(|e| HostError::io("opening", dir.display().to_string(), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| HostError::io("locking", dir.display().to_string(), e.into()))
    }
}

/// Escapes one part of a unit name: what systemd does not allow in one (`[A-Za-z0-9:_.-]`)
/// becomes `\xNN`, as systemd-escape(1) writes it.
fn escape(part: &str) -> String {
    let mut s = String::new();
    for b in part.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The scope of the node whose agent cgroup would be `rel` (`edgesim/<run>/<node>`):
/// `edgesim-<run>-<node>.scope`.
pub fn unit_of(rel: &str) -> String {
    let parts: Vec<String> = rel.split('/').map(escape).collect();
    format!("{}.scope", parts.join("-"))
}

/// The cgroup (relative to its manager's [`Manager::root`]) where the workloads of `unit`
/// live.
pub fn workloads_of(unit: &str) -> String {
    format!("{SLICE}/{unit}/{WORKLOADS}")
}

/// The unit properties that hold `l`: the CPU as a quota (`CPUQuota=`, percent of one CPU,
/// with its period where it is not systemd's 100 ms), memory with no swap beyond it, tasks,
/// and the CPUs the node is pinned to.
pub fn properties(l: &NodeLimits) -> Vec<String> {
    let mut p = vec!["Delegate=yes".to_string()];
    if let Some(q) = l.cpu_quota_us {
        let hundredths = (q as u128 * 10_000) / u128::from(l.cpu_period_us.max(1));
        let pct = if hundredths.is_multiple_of(100) {
            format!("{}", hundredths / 100)
        } else {
            format!("{}.{:02}", hundredths / 100, hundredths % 100)
        };
        p.push(format!("CPUQuota={pct}%"));
        if l.cpu_period_us != 100_000 {
            p.push(format!("CPUQuotaPeriodSec={}us", l.cpu_period_us));
        }
    }
    if let Some(m) = l.memory_bytes {
        p.push(format!("MemoryMax={m}"));
        p.push("MemorySwapMax=0".to_string());
    }
    if let Some(t) = l.pids_max {
        p.push(format!("TasksMax={t}"));
    }
    if let Some(c) = &l.cpus {
        p.push(format!("AllowedCPUs={c}"));
    }
    p
}

/// A node's scope, started by this agent.
pub struct Scope {
    pub unit: String,
    pub manager: Manager,
    /// The `workloads` cgroup inside it.
    pub cgroup: NodeCgroup,
    /// The limits the kernel holds for the scope, read back after it started.
    pub limits: Option<NodeLimits>,
    keeper: Child,
}

impl Scope {
    /// Starts `unit` in [`SLICE`] of `manager` with `limits` (when given), its keeper `agent
    /// agent-hold`, and makes its `workloads` cgroup; returns once that exists and the kernel
    /// holds the limits (read back: a manager that lacks a controller would otherwise drop a
    /// limit without a word). A failure leaves nothing behind (the unit is stopped).
    pub fn start(
        manager: &Manager,
        unit: &str,
        limits: Option<&NodeLimits>,
        agent: &Path,
    ) -> Result<Scope> {
        let slice = manager.lock()?;
        let r = Scope::start_locked(manager, unit, limits, agent);
        drop(slice);
        if r.is_err() {
            // The slice this start made (or the last one used) goes with the failed scope.
            let _ = remove_slice_if_empty(manager);
        }
        r
    }

    fn start_locked(
        manager: &Manager,
        unit: &str,
        limits: Option<&NodeLimits>,
        agent: &Path,
    ) -> Result<Scope> {
        let mut cmd = manager.command("systemd-run");
        cmd.args(["--scope", "--quiet", "--collect", "--unit", unit])
            .args(["--slice", SLICE])
            .arg(format!("--description=edgesim workloads of {unit}"));
        let props = match limits {
            Some(l) => properties(l),
            None => vec!["Delegate=yes".to_string()],
        };
        for p in &props {
            cmd.args(["-p", p]);
        }
        cmd.arg("--").arg(agent).arg("agent-hold");
        // Its own process group, no terminal and no pipe to the SSH session: the keeper
        // must not keep the session open, nor die with it (revert stops it).
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let what = || format!("systemd-run --scope --unit {unit} ({})", manager.describe());
        let mut keeper = cmd
            .spawn()
            .map_err(|e| HostError::io("starting", what(), e))?;
        let scope_dir = manager.scope_dir(unit);
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = keeper.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = keeper.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let _ = stop_unit(manager, unit);
                return Err(HostError::other(
                    "starting",
                    what(),
                    format!("{st}: {}", err.trim()),
                ));
            }
            // The keeper is in the scope once systemd-run has exec'd it.
            let procs = std::fs::read_to_string(scope_dir.join("cgroup.procs")).unwrap_or_default();
            if procs.lines().any(|l| l.trim() == keeper.id().to_string()) {
                break;
            }
            if t.elapsed() > START_TIMEOUT {
                let _ = keeper.kill();
                let _ = keeper.wait();
                let _ = stop_unit(manager, unit);
                return Err(HostError::other(
                    "starting",
                    what(),
                    format!("the scope did not appear within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let fail = |keeper: &mut Child, e: HostError| {
            let _ = stop_unit(manager, unit);
            let _ = keeper.wait();
            e
        };
        // A plain mkdir: no controllers are enabled below the scope (the keeper is in the
        // scope's own cgroup, and v2 keeps processes out of a cgroup whose children have
        // controllers); the scope's limits hold its whole subtree.
        let dir = scope_dir.join(WORKLOADS);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                let e = HostError::io("creating cgroup", dir.display().to_string(), e);
                return Err(fail(&mut keeper, e));
            }
        }
        let held = match limits.map(|l| held_limits(manager, unit, l)).transpose() {
            Ok(h) => h,
            Err(e) => return Err(fail(&mut keeper, e)),
        };
        let cgroup = match Cgroups::v2(manager.root()).and_then(|c| c.open(&workloads_of(unit))) {
            Ok(c) => c,
            Err(e) => return Err(fail(&mut keeper, e)),
        };
        Ok(Scope {
            unit: unit.to_string(),
            manager: manager.clone(),
            cgroup,
            limits: held,
            keeper,
        })
    }

    /// Stops the scope and everything in it ([`stop`]), and reaps the keeper.
    pub fn stop(mut self) -> Result<()> {
        let r = stop(&self.manager, &self.unit);
        if r.is_ok() {
            let _ = self.keeper.wait();
        }
        r
    }
}

/// The limits the kernel holds for `unit`'s scope, checked against `want`: the CPU quota to
/// systemd's rounding of `CPUQuota=` (1 %), memory and tasks exactly, and no swap beside the
/// memory. A limit the manager dropped (a controller it was not delegated) is an error that
/// names it.
fn held_limits(manager: &Manager, unit: &str, want: &NodeLimits) -> Result<NodeLimits> {
    let rel = format!("{SLICE}/{unit}");
    let what = || format!("the limits of {unit} ({})", manager.describe());
    let dropped = |detail: String| {
        HostError::other(
            "checking",
            what(),
            format!(
                "{detail}: the manager does not enforce the profile's limits (is the controller \
                 delegated to it? ansible/prepare-board.yml delegates cpu, memory and pids)"
            ),
        )
    };
    let got = Cgroups::v2(manager.root())?
        .open(&rel)?
        .read_limits()
        .map_err(|e| dropped(e.to_string()))?;
    if let Some(q) = want.cpu_quota_us {
        let ok = got.cpu_quota_us.is_some_and(|g| {
            let (g, q) = (
                g as f64 / got.cpu_period_us as f64,
                q as f64 / want.cpu_period_us as f64,
            );
            (g - q).abs() <= q * 0.01
        });
        if !ok {
            return Err(dropped(format!(
                "cpu.max is {:?} per {} µs, {q} per {} µs was asked",
                got.cpu_quota_us, got.cpu_period_us, want.cpu_period_us
            )));
        }
    }
    if want.memory_bytes.is_some() && got.memory_bytes != want.memory_bytes {
        return Err(dropped(format!(
            "memory.max is {:?}, {:?} was asked",
            got.memory_bytes, want.memory_bytes
        )));
    }
    if want.memory_bytes.is_some() {
        let f = manager.scope_dir(unit).join("memory.swap.max");
        let swap = std::fs::read_to_string(&f).unwrap_or_default();
        // A kernel without swap accounting has no such file: then there is no swap to limit.
        if f.exists() && swap.trim() != "0" {
            return Err(dropped(format!(
                "memory.swap.max is {}, 0 was asked",
                swap.trim()
            )));
        }
    }
    if want.pids_max.is_some() && got.pids_max != want.pids_max {
        return Err(dropped(format!(
            "pids.max is {:?}, {:?} was asked",
            got.pids_max, want.pids_max
        )));
    }
    Ok(got)
}

/// Whether systemctl's complaint means the unit is not there (already stopped and
/// collected).
fn not_loaded(stderr: &str) -> bool {
    stderr.contains("not loaded") || stderr.contains("not found")
}

/// `systemctl stop` and `reset-failed` of `unit`; a unit that is not loaded is success.
fn stop_unit(manager: &Manager, unit: &str) -> std::result::Result<(), String> {
    let mut errors = Vec::new();
    for verb in ["stop", "reset-failed"] {
        match manager.command("systemctl").args([verb, unit]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                // reset-failed on a unit that never failed (collected) says "not loaded".
                if !not_loaded(&err) {
                    errors.push(format!("systemctl {verb} {unit}: {}", err.trim()));
                }
            }
            Err(e) => errors.push(format!("systemctl {verb} {unit}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Waits (at most 5 s) for `dir` to be gone; says so where it is not.
fn gone(dir: &Path) -> std::result::Result<(), String> {
    let t = Instant::now();
    while dir.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if dir.exists() {
        Err(format!("{} still exists", dir.display()))
    } else {
        Ok(())
    }
}

/// Stops scope `unit` of `manager` and what runs in it: its `workloads` cgroup thawed and
/// killed (the kernel's `cgroup.kill`) and removed, then `systemctl stop` (which kills the
/// keeper) and `systemctl reset-failed`; returns once the scope's cgroup is gone. Then
/// [`SLICE`] itself is stopped if no scope is left in it. Guarantees: idempotent; a unit that
/// is not loaded is success; keeps going past errors and returns them together.
pub fn stop(manager: &Manager, unit: &str) -> Result<()> {
    let mut errors = Vec::new();
    match Cgroups::v2(manager.root()) {
        Ok(cgs) => {
            let rel = workloads_of(unit);
            if let Ok(c) = cgs.open(&rel)
                && c.exists()
            {
                if let Err(e) = c.thaw() {
                    errors.push(e.to_string());
                }
                if let Err(e) = cgs.remove_tree(&rel) {
                    errors.push(e.to_string());
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    if let Err(e) = stop_unit(manager, unit) {
        errors.push(e);
    }
    if let Err(e) = gone(&manager.scope_dir(unit)) {
        errors.push(format!("{e} after stopping {unit}"));
    }
    if let Err(e) = remove_slice_if_empty(manager) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(HostError::other(
            "stopping",
            unit.to_string(),
            errors.join("; "),
        ))
    }
}

/// Stops [`SLICE`] where no unit is left in it (no child cgroup): a slice that systemd made
/// for the first scope would otherwise stay, empty, after the last run. Under the manager's
/// lock, so a scope that is starting elsewhere keeps its slice.
fn remove_slice_if_empty(manager: &Manager) -> std::result::Result<(), String> {
    let dir = manager.root().join(SLICE);
    if !dir.exists() {
        return Ok(());
    }
    let _slice = manager.lock().map_err(|e| e.to_string())?;
    let busy = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        // Gone meanwhile: nothing to do.
        .unwrap_or(true);
    if busy {
        return Ok(());
    }
    stop_unit(manager, SLICE)?;
    gone(&dir).map_err(|e| format!("{e} after stopping {SLICE}"))
}

/// `edgesim agent-enter`'s way into the workloads of the node whose agent cgroup would be
/// `rel`, where the agent runs them in a scope of `manager`: `Ok(false)` where it does not
/// (no such scope). Under the system manager (a root agent) the process writes itself into
/// the scope's `workloads`; under a user's manager it cannot (its session's cgroup and the
/// manager's meet only in root's `user-<uid>.slice`), so it asks its manager to move it
/// ([`super::sdbus`]), and checks where it landed.
pub fn join(manager: &Manager, rel: &str) -> Result<bool> {
    let unit = unit_of(rel);
    let dir = manager.scope_dir(&unit).join(WORKLOADS);
    if !dir.is_dir() {
        return Ok(false);
    }
    let pid = std::process::id();
    match manager {
        Manager::System => {
            Cgroups::v2(manager.root())?
                .open(&workloads_of(&unit))?
                .add_pid(pid as i32)?;
        }
        Manager::User { runtime_dir, .. } => {
            let socket = runtime_dir.join("systemd/private");
            super::sdbus::attach_processes(&socket, &unit, &format!("/{WORKLOADS}"), &[pid])?;
            let now = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let want = format!("/{}", workloads_of(&unit));
            if !now
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&want))
            {
                return Err(HostError::other(
                    "joining",
                    dir.display().to_string(),
                    format!(
                        "{} answered, but this process is in {}",
                        manager.describe(),
                        now.trim()
                    ),
                ));
            }
        }
    }
    Ok(true)
}

/// `edgesim agent-hold`: the keeper of a node's scope; sleeps until it is killed.
pub fn hold() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_cgroup_names_its_scope() {
        assert_eq!(unit_of("edgesim/r1a2/pi"), "edgesim-r1a2-pi.scope");
        assert_eq!(unit_of("edgesim/r1/a b"), "edgesim-r1-a\\x20b.scope");
        assert_eq!(
            workloads_of("edgesim-r1-pi.scope"),
            "edgesim.slice/edgesim-r1-pi.scope/workloads"
        );
    }

    #[test]
    fn the_profiles_limits_become_unit_properties() {
        let l = NodeLimits {
            cpu_quota_us: Some(400_000),
            cpu_period_us: 100_000,
            effective_cores: 4.0,
            memory_bytes: Some(7 << 30),
            pids_max: Some(4096),
            max_cpus: None,
            cpus: None,
        };
        assert_eq!(
            properties(&l),
            [
                "Delegate=yes",
                "CPUQuota=400%",
                "MemoryMax=7516192768",
                "MemorySwapMax=0",
                "TasksMax=4096"
            ]
        );
        let half = NodeLimits {
            cpu_quota_us: Some(12_345),
            cpu_period_us: 50_000,
            memory_bytes: None,
            pids_max: None,
            cpus: Some("0-1".into()),
            ..l
        };
        assert_eq!(
            properties(&half),
            [
                "Delegate=yes",
                "CPUQuota=24.69%",
                "CPUQuotaPeriodSec=50000us",
                "AllowedCPUs=0-1"
            ]
        );
    }
}
