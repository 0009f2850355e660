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
//! `pids.max` there), so they hold the workloads and the keeper together.
//!
//! **Guarantees.** [`stop`] is idempotent: a unit that is not loaded is success, and it
//! keeps going past errors (kill, stop, reset-failed) and reports them together, so a
//! restarted agent can call it for whatever unit its dead predecessor's state file names.

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

/// Whether this board was booted by systemd and its cgroups are the unified v2 hierarchy
/// (what a delegated scope with a freezable child needs).
pub fn usable() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
}

/// `systemd 252 (252.39-1~deb12u2)`, from `systemctl --version`, where systemd is PID 1 with
/// the v2 hierarchy and `systemd-run` runs; `None` otherwise (the agent makes its own cgroup).
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

/// The cgroup (relative to the v2 root) where the workloads of `unit` live.
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
    /// The `workloads` cgroup inside it.
    pub cgroup: NodeCgroup,
    keeper: Child,
}

impl Scope {
    /// Starts `unit` in [`SLICE`] with `limits` (when given), its keeper `agent agent-hold`,
    /// and makes its `workloads` cgroup; returns once that exists. A failure leaves nothing
    /// behind (the unit is stopped).
    pub fn start(unit: &str, limits: Option<&NodeLimits>, agent: &Path) -> Result<Scope> {
        let mut cmd = Command::new("systemd-run");
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let what = || format!("systemd-run --scope --unit {unit}");
        let mut keeper = cmd
            .spawn()
            .map_err(|e| HostError::io("starting", what(), e))?;
        let cgroups = Cgroups::v2("/sys/fs/cgroup")?;
        let scope_dir = PathBuf::from("/sys/fs/cgroup").join(SLICE).join(unit);
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = keeper.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = keeper.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let _ = stop(unit);
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
                let _ = stop(unit);
                return Err(HostError::other(
                    "starting",
                    what(),
                    format!("the scope did not appear within {START_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A plain mkdir: no controllers are enabled below the scope (the keeper is in the
        // scope's own cgroup, and v2 keeps processes out of a cgroup whose children have
        // controllers); the scope's limits hold its whole subtree.
        let dir = scope_dir.join(WORKLOADS);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                let _ = stop(unit);
                let _ = keeper.wait();
                return Err(HostError::io(
                    "creating cgroup",
                    dir.display().to_string(),
                    e,
                ));
            }
        }
        Ok(Scope {
            unit: unit.to_string(),
            cgroup: cgroups.open(&workloads_of(unit))?,
            keeper,
        })
    }

    /// Stops the scope and everything in it ([`stop`]), and reaps the keeper.
    pub fn stop(mut self) -> Result<()> {
        let r = stop(&self.unit);
        if r.is_ok() {
            let _ = self.keeper.wait();
        }
        r
    }
}

/// Whether systemctl's complaint means the unit is not there (already stopped and
/// collected).
fn not_loaded(stderr: &str) -> bool {
    stderr.contains("not loaded") || stderr.contains("not found")
}

/// Stops scope `unit` and what runs in it: its `workloads` cgroup thawed and killed (the
/// kernel's `cgroup.kill`) and removed, then `systemctl stop` (which kills the keeper) and
/// `systemctl reset-failed`; returns once the scope's cgroup is gone. Guarantees: idempotent;
/// a unit that is not loaded is success; keeps going past errors and returns them together.
pub fn stop(unit: &str) -> Result<()> {
    let mut errors = Vec::new();
    match Cgroups::v2("/sys/fs/cgroup") {
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
    for verb in ["stop", "reset-failed"] {
        match Command::new("systemctl")
            .args([verb, unit])
            .stdin(Stdio::null())
            .output()
        {
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
    let dir = PathBuf::from("/sys/fs/cgroup").join(SLICE).join(unit);
    let t = Instant::now();
    while dir.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if dir.exists() {
        errors.push(format!(
            "{} still exists after stopping {unit}",
            dir.display()
        ));
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
