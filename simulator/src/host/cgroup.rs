//! Control groups, v1 and v2: where a node's processes live and what holds them to its profile.
//!
//! # Design
//!
//! Every node gets one cgroup, `edgesim/<run>/<node>` (relative to the hierarchy roots; the
//! caller picks the path). Its limits come from [`NodeLimits`]: a CFS quota for CPU, a memory
//! limit with no swap beyond it, and a task limit. Workloads enter the cgroup before they
//! exec: [`NodeCgroup::procs_files`] hands out opened `cgroup.procs` files into which a forked
//! child writes `0` (one `write(2)`, async-signal-safe), so not a single instruction of the
//! workload runs outside its limits.
//!
//! **Layouts.** On cgroup v2 (Raspberry Pi OS, Jetson Linux 35+, every current distro) there is
//! one hierarchy; controllers must be enabled in `cgroup.subtree_control` of every ancestor,
//! which [`Cgroups::create`] does top-down, and only leaves hold processes. On cgroup v1 each
//! controller has its own mount (`cpu`, `cpuacct`, `memory`, `pids`, `freezer`; some are
//! co-mounted) and a node's cgroup is one directory per hierarchy. [`Cgroups::detect`] reads
//! `/proc/self/mountinfo` and prefers v2 when its hierarchy offers the `cpu` and `memory`
//! controllers (on hybrid systems v2 is often mounted with no controllers), else v1.
//!
//! | | v2 | v1 |
//! |---|---|---|
//! | CPU | `cpu.max` = `quota period` | `cpu.cfs_quota_us`, `cpu.cfs_period_us` |
//! | memory | `memory.max`, `memory.swap.max = 0` | `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (same value) |
//! | tasks | `pids.max` | `pids.max` |
//! | freeze | `cgroup.freeze`, wait for `frozen 1` in `cgroup.events` | `freezer.state` = `FROZEN` |
//! | kill | `cgroup.kill` (5.14+), else freeze, SIGKILL each, thaw | freeze, SIGKILL each, thaw |
//! | usage | `cpu.stat` `usage_usec`, `memory.current`, `memory.peak` | `cpuacct.usage`, `memory.usage_in_bytes`, `memory.max_usage_in_bytes` |
//!
//! Swap beyond the memory limit is refused "where the kernel allows": v2 needs
//! `memory.swap.max` (swap accounting), v1 needs `memory.memsw.*` (`swapaccount=1`); without
//! them the v1 code sets the cgroup's `memory.swappiness` to 0 instead.
//!
//! **One seam.** All file access goes through the hierarchy root paths held by [`Cgroups`];
//! nothing else in the code names `/sys/fs/cgroup`. The unit tests point those roots at a
//! temporary directory laid out like the kernel's, so the order of operations and the values
//! written are checked without root; the privileged tests run the same code against the real
//! hierarchy (v1 on the CI machine), and v2's core — placement, `cpu.stat`, `cgroup.freeze`,
//! `cgroup.kill`, removal — against the CI machine's controller-less cgroup2 mount. v2's
//! `cpu.max`, `memory.max` and `pids.max` are checked on the fake tree only there.
//!
//! **Guarantees.** [`Cgroups::create`] and [`NodeCgroup::remove`] are idempotent; removal kills
//! what is inside first and treats an already-removed cgroup as success, and
//! [`Cgroups::remove_tree`] removes depth-first and keeps going past errors, so `edgesim
//! cleanup` can call it on whatever a crashed run left behind. Cgroups are created relative to
//! the hierarchy roots (as container runtimes do with the cgroupfs driver), not below the
//! calling process's own cgroup, so a later `edgesim cleanup` from another session finds them.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use super::{HostError, Result};

/// The limits a node is held to, as plain values: what a cgroup (or Docker, or kubelet)
/// enforces. `crate::profile` computes them from a board's profile and this host's CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLimits {
    /// CFS quota per period, in µs; `None` means unlimited (the node may use every host CPU).
    pub cpu_quota_us: Option<u64>,
    /// CFS period, in µs.
    pub cpu_period_us: u64,
    /// Host CPUs the node may keep busy: `quota / period`, or the host's online CPUs when
    /// unlimited.
    pub effective_cores: f64,
    /// Memory limit in bytes (no swap beyond it); `None` means unlimited.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks; `None` means unlimited.
    pub pids_max: Option<u64>,
    /// The most host CPUs the node may run on: the board's core count, when this host lets
    /// edgesim use more CPUs than that (`None`: no bound beyond the host's). A model value;
    /// [`cpus`](Self::cpus) is its realisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<u32>,
    /// The host CPUs the node is pinned to (`cpuset.cpus`, Docker's `CpusetCpus`), in the
    /// kernel's list format (`0-3`, `4,6`); `None`: any CPU edgesim may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
}

/// The host CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> Vec<u32> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .filter_map(|c| u32::try_from(c).ok())
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get() as u32)).collect(),
    }
}

/// `cpus` in the kernel's list format: runs of consecutive CPUs as ranges (`0-3,6`).
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Parses the kernel's CPU list format (`0-3,6`, possibly empty).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut v = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                v.extend(a..=b);
            }
            None => v.push(part.trim().parse().ok()?),
        }
    }
    Some(v)
}

use serde::Deserialize;

/// Controllers edgesim uses.
const WANTED: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"];
/// Controllers edgesim enables in v2 `cgroup.subtree_control` (cpuacct and freezer are core
/// features there).
const WANTED_V2: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];
/// How long freezing and killing may take before it is reported as an error.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);
/// Values at or above this in a v1 limit file mean "unlimited" (the kernel prints
/// PAGE_COUNTER_MAX pages, 0x7FFFFFFFFFFFF000 with 4 KiB pages, rounded to the page size).
const V1_UNLIMITED: u64 = 1 << 62;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub root: PathBuf,
    /// The controllers edgesim uses that it carries (v1), or that are available (v2).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    V1(Vec<Hierarchy>),
    V2(Hierarchy),
}

/// The cgroup hierarchies of this host, as edgesim uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    layout: Layout,
}

/// One line of `/proc/self/mountinfo`, the parts this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let _source = right.next()?;
            let super_options = right.next().unwrap_or("");
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
                super_options: super_options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| HostError::io("reading", path.display().to_string(), e))
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io("reading", path.display().to_string(), e)),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value)
        .map_err(|e| HostError::io("writing", format!("{} = {value}", path.display()), e))
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| {
        HostError::other(
            "parsing",
            path.display().to_string(),
            format!("`{}` is not a number", text.trim()),
        )
    })
}

/// Parses `max` or a number.
fn parse_max(path: &Path, text: &str) -> Result<Option<u64>> {
    match text.trim() {
        "max" => Ok(None),
        t => parse_u64(path, t).map(Some),
    }
}

/// Checks that `rel` is a relative path of plain names (no `..`, no root) and returns it.
fn rel_path(rel: &str) -> Result<PathBuf> {
    // Split by hand: `Path::components` silently drops interior `.` and trailing `/`.
    let plain = rel
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if plain {
        Ok(PathBuf::from(rel))
    } else {
        Err(HostError::other(
            "resolving cgroup",
            rel,
            "expected a relative path of plain names such as `edgesim/<run>/<node>`",
        ))
    }
}

impl Cgroups {
    /// Detects the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Cgroups> {
        let text = read(Path::new("/proc/self/mountinfo"))?;
        Cgroups::from_mountinfo(&text)
    }

    /// Picks the layout from a mountinfo text: the v2 hierarchy when it offers `cpu` and
    /// `memory`, else the v1 hierarchies of the controllers edgesim uses.
    pub fn from_mountinfo(text: &str) -> Result<Cgroups> {
        let mounts = parse_mountinfo(text);
        for m in mounts.iter().filter(|m| m.fs_type == "cgroup2") {
            if let Ok(cg) = Cgroups::v2(&m.mount_point)
                && let Layout::V2(h) = &cg.layout
                && h.has("cpu")
                && h.has("memory")
            {
                return Ok(cg);
            }
        }
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in mounts.iter().filter(|m| m.fs_type == "cgroup") {
            let controllers: Vec<String> = WANTED
                .iter()
                .filter(|w| m.super_options.iter().any(|o| o == *w))
                .map(|w| w.to_string())
                .collect();
            // The same hierarchy may be mounted twice (bind mounts): keep the first.
            if !controllers.is_empty() && !hierarchies.iter().any(|h| h.controllers == controllers)
            {
                hierarchies.push(Hierarchy {
                    root: m.mount_point.clone(),
                    controllers,
                });
            }
        }
        Cgroups::v1(hierarchies)
    }

    /// A v2 layout rooted at `root` (normally `/sys/fs/cgroup`); the available controllers are
    /// read from `root/cgroup.controllers`.
    pub fn v2(root: impl Into<PathBuf>) -> Result<Cgroups> {
        let root = root.into();
        let available = read(&root.join("cgroup.controllers"))?;
        let controllers = available
            .split_whitespace()
            .filter(|c| WANTED_V2.contains(c))
            .map(str::to_string)
            .collect();
        Ok(Cgroups {
            layout: Layout::V2(Hierarchy { root, controllers }),
        })
    }

    /// A v1 layout from its hierarchies; `cpu` and `memory` must be among them.
    pub fn v1(hierarchies: Vec<Hierarchy>) -> Result<Cgroups> {
        for needed in ["cpu", "memory"] {
            if !hierarchies.iter().any(|h| h.has(needed)) {
                return Err(HostError::other(
                    "detecting",
                    "cgroups",
                    format!(
                        "no cgroup v2 hierarchy with the cpu and memory controllers, and no v1 `{needed}` hierarchy is mounted"
                    ),
                ));
            }
        }
        Ok(Cgroups {
            layout: Layout::V1(hierarchies),
        })
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self.layout {
            Layout::V1(_) => 1,
            Layout::V2(_) => 2,
        }
    }

    /// The hierarchies in use (one on v2).
    pub fn hierarchies(&self) -> Vec<&Hierarchy> {
        match &self.layout {
            Layout::V1(hs) => hs.iter().collect(),
            Layout::V2(h) => vec![h],
        }
    }

    /// Whether a controller is usable (`cpu`, `memory`, `pids`, `freezer`, `cpuacct`).
    pub fn has(&self, controller: &str) -> bool {
        match &self.layout {
            Layout::V1(hs) => hs.iter().any(|h| h.has(controller)),
            // Freezing and CPU accounting are core features of v2.
            Layout::V2(h) => h.has(controller) || matches!(controller, "freezer" | "cpuacct"),
        }
    }

    /// Creates the cgroup `rel` (e.g. `edgesim/<run>/<node>`) with its ancestors, and on v2
    /// enables the controllers along the path.
    ///
    /// Guarantees: idempotent. Assumes: root (or a delegated subtree); on v2 no ancestor of
    /// `rel` below the root holds processes.
    pub fn create(&self, rel: &str) -> Result<NodeCgroup> {
        let relp = rel_path(rel)?;
        // A concurrent run that ends may remove a shared parent (`edgesim`) between our
        // mkdirs: that shows as "not found", and creating again settles it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.create_dirs(&relp) {
                Err(HostError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempt < 3 => {}
                other => break other?,
            }
        }
        tracing::debug!(cgroup = rel, version = self.version(), "created cgroup");
        self.open(rel)
    }

    fn create_dirs(&self, relp: &Path) -> Result<()> {
        match &self.layout {
            Layout::V1(hs) => {
                for h in hs {
                    if h.has("cpuset") {
                        // A new v1 cpuset starts with no CPUs and no memory nodes, and takes
                        // no tasks until both are set: each level inherits its parent's.
                        let mut dir = h.root.clone();
                        for comp in relp.components() {
                            let parent = dir.clone();
                            dir.push(comp);
                            create_level(&dir)?;
                            for f in ["cpuset.cpus", "cpuset.mems"] {
                                if read_opt(&dir.join(f))?.is_some_and(|v| v.trim().is_empty()) {
                                    let from = read(&parent.join(f))?;
                                    write(&dir.join(f), from.trim())?;
                                }
                            }
                        }
                        continue;
                    }
                    let dir = h.root.join(relp);
                    fs::create_dir_all(&dir).map_err(|e| {
                        HostError::io("creating cgroup", dir.display().to_string(), e)
                    })?;
                }
            }
            Layout::V2(h) => {
                let mut dir = h.root.clone();
                for comp in relp.components() {
                    enable_controllers(&dir, &h.controllers)?;
                    dir.push(comp);
                    create_level(&dir)?;
                }
            }
        }
        Ok(())
    }

    /// A handle on the cgroup `rel`, which may or may not exist.
    pub fn open(&self, rel: &str) -> Result<NodeCgroup> {
        Ok(NodeCgroup {
            rel: rel_path(rel)?,
            layout: self.layout.clone(),
            settle_timeout: SETTLE_TIMEOUT,
        })
    }

    /// Names of the child cgroups of `rel` (in any hierarchy), sorted; empty when `rel` does
    /// not exist. For `edgesim cleanup`: `children("edgesim")` lists the runs.
    pub fn children(&self, rel: &str) -> Result<Vec<String>> {
        let relp = rel_path(rel)?;
        let mut names = BTreeSet::new();
        for h in self.hierarchies() {
            let dir = h.root.join(&relp);
            let entries = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(HostError::io(
                        "listing cgroup",
                        dir.display().to_string(),
                        e,
                    ));
                }
            };
            for entry in entries {
                let entry = entry
                    .map_err(|e| HostError::io("listing cgroup", dir.display().to_string(), e))?;
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Ok(name) = entry.file_name().into_string()
                {
                    names.insert(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Kills every process in `rel` and its descendants and removes them all, depth-first.
    /// Keeps going past errors and reports them together; a cgroup already gone is success.
    pub fn remove_tree(&self, rel: &str) -> Result<()> {
        let mut errors = Vec::new();
        self.remove_tree_into(rel, &mut errors);
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(HostError::other(
                "removing cgroup tree",
                rel,
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Removes the cgroup `rel` in every hierarchy if it is empty (no processes, no children);
    /// leaves it where it is still in use. For shared parents such as `edgesim`, which
    /// concurrent runs create and only the last one to finish can remove.
    pub fn remove_if_unused(&self, rel: &str) -> Result<()> {
        let cg = self.open(rel)?;
        for dir in cg.dirs() {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::EBUSY | libc::ENOTEMPTY)
                    ) => {}
                Err(e) => {
                    return Err(HostError::io(
                        "removing cgroup",
                        dir.display().to_string(),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn remove_tree_into(&self, rel: &str, errors: &mut Vec<HostError>) {
        match self.children(rel) {
            Ok(children) => {
                for c in children {
                    self.remove_tree_into(&format!("{rel}/{c}"), errors);
                }
            }
            Err(e) => errors.push(e),
        }
        if let Err(e) = self.open(rel).and_then(|cg| cg.remove()) {
            errors.push(e);
        }
    }
}

/// Enables `wanted` controllers in `dir/cgroup.subtree_control` (v2) that are not yet enabled,
/// in one write so the kernel applies them together.
/// Creates one level of a cgroup path; one that exists already is fine.
fn create_level(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(HostError::io(
            "creating cgroup",
            dir.display().to_string(),
            e,
        )),
        _ => Ok(()),
    }
}

fn enable_controllers(dir: &Path, wanted: &[String]) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read_opt(&file)?.unwrap_or_default();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| {
            !enabled
                .split_whitespace()
                .any(|e| e.trim_start_matches('+') == w.as_str())
        })
        .map(|w| format!("+{w}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(&file, &missing.join(" ")).map_err(|e| match e {
        HostError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            HostError::other(
                "enabling controllers in",
                file.display().to_string(),
                "the cgroup holds processes (cgroup v2 allows controllers only above leaves); \
                 choose a cgroup path whose ancestors hold no processes",
            )
        }
        other => other,
    })
}

/// CPU time and memory a cgroup has used, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU time consumed by all tasks, µs.
    pub cpu_usage_us: u64,
    /// Memory charged now, bytes.
    pub memory_current: Option<u64>,
    /// Highest memory charged, bytes (v2 needs Linux 5.19+ for `memory.peak`).
    pub memory_peak: Option<u64>,
}

/// One node's cgroup (in every hierarchy on v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCgroup {
    rel: PathBuf,
    layout: Layout,
    settle_timeout: Duration,
}

impl NodeCgroup {
    /// The same handle, waiting at most `timeout` (default 5 s) for freezing, killing and
    /// removal to take effect before reporting an error.
    pub fn with_settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// The path relative to the hierarchy roots, e.g. `edgesim/<run>/<node>`.
    pub fn rel(&self) -> &Path {
        &self.rel
    }

    /// The directories of this cgroup, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1(hs) => hs.iter().map(|h| h.root.join(&self.rel)).collect(),
            Layout::V2(h) => vec![h.root.join(&self.rel)],
        }
    }

    /// The directory holding `controller`'s files, if that controller is mounted.
    fn dir_for(&self, controller: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(hs) => hs
                .iter()
                .find(|h| h.has(controller))
                .map(|h| h.root.join(&self.rel)),
            Layout::V2(h) => Some(h.root.join(&self.rel)),
        }
    }

    fn need(&self, controller: &str, op: &'static str) -> Result<PathBuf> {
        self.dir_for(controller).ok_or_else(|| {
            HostError::other(
                op,
                self.rel.display().to_string(),
                format!("the cgroup v1 `{controller}` controller is not mounted"),
            )
        })
    }

    /// Whether the cgroup exists (in any hierarchy).
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.is_dir())
    }

    /// Applies `l`: CPU quota and period, memory limit with no swap beyond it where the kernel
    /// allows, task limit. Guarantees: idempotent; safe while processes run inside (limits
    /// change live).
    pub fn apply(&self, l: &NodeLimits) -> Result<()> {
        match &self.layout {
            Layout::V2(h) => {
                let dir = h.root.join(&self.rel);
                let quota = l.cpu_quota_us.map_or("max".to_string(), |q| q.to_string());
                write(
                    &dir.join("cpu.max"),
                    &format!("{quota} {}", l.cpu_period_us),
                )?;
                if h.has("cpuset") {
                    // Empty: the parent's CPUs.
                    write(&dir.join("cpuset.cpus"), l.cpus.as_deref().unwrap_or(""))?;
                }
                let mem = l.memory_bytes.map_or("max".to_string(), |m| m.to_string());
                write(&dir.join("memory.max"), &mem)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, if l.memory_bytes.is_some() { "0" } else { "max" })?;
                }
                self.apply_pids(h.has("pids").then_some(dir), l.pids_max)
            }
            Layout::V1(_) => {
                let cpu = self.need("cpu", "limiting the CPU of cgroup")?;
                write(&cpu.join("cpu.cfs_period_us"), &l.cpu_period_us.to_string())?;
                let quota = l.cpu_quota_us.map_or("-1".to_string(), |q| q.to_string());
                write(&cpu.join("cpu.cfs_quota_us"), &quota)?;
                if let Some(dir) = self.dir_for("cpuset") {
                    let cpus = match &l.cpus {
                        Some(c) => c.clone(),
                        None => self.parent_cpus(&dir)?,
                    };
                    write(&dir.join("cpuset.cpus"), &cpus)?;
                }
                self.apply_memory_v1(l.memory_bytes)?;
                self.apply_pids(self.dir_for("pids"), l.pids_max)
            }
        }
    }

    fn apply_pids(&self, dir: Option<PathBuf>, pids: Option<u64>) -> Result<()> {
        match (dir, pids) {
            (Some(dir), p) => write(
                &dir.join("pids.max"),
                &p.map_or("max".to_string(), |p| p.to_string()),
            ),
            (None, None) => Ok(()),
            (None, Some(_)) => Err(HostError::other(
                "limiting the tasks of cgroup",
                self.rel.display().to_string(),
                "the pids controller is not available",
            )),
        }
    }

    /// v1 memory: `memory.limit_in_bytes` must never exceed `memory.memsw.limit_in_bytes`, so
    /// when raising, the memsw limit goes first, and when lowering, last.
    /// The CPUs of the cpuset above `dir` (v1 has no "inherit": unpinned means the parent's).
    fn parent_cpus(&self, dir: &Path) -> Result<String> {
        let parent = dir.parent().unwrap_or(dir);
        Ok(read(&parent.join("cpuset.cpus"))?.trim().to_string())
    }

    /// The CPUs this cgroup is pinned to, `None` when it may use all of its parent's (or the
    /// host has no cpuset controller).
    fn read_cpus(&self) -> Result<Option<String>> {
        let Some(dir) = self.dir_for("cpuset") else {
            return Ok(None);
        };
        let file = dir.join("cpuset.cpus");
        let Some(own) = read_opt(&file)? else {
            return Ok(None);
        };
        let own = own.trim().to_string();
        if own.is_empty() || parse_cpu_list(&own) == parse_cpu_list(&self.parent_cpus(&dir)?) {
            return Ok(None);
        }
        Ok(Some(own))
    }

    fn apply_memory_v1(&self, bytes: Option<u64>) -> Result<()> {
        let dir = self.need("memory", "limiting the memory of cgroup")?;
        let value = bytes.map_or("-1".to_string(), |b| b.to_string());
        let limit = dir.join("memory.limit_in_bytes");
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if !memsw.exists() {
            write(&limit, &value)?;
            // No swap accounting: at least ask the kernel not to swap this cgroup.
            let _ = fs::write(dir.join("memory.swappiness"), "0");
            return Ok(());
        }
        let current = read_opt(&limit)?
            .map(|s| parse_u64(&limit, &s))
            .transpose()?
            .unwrap_or(u64::MAX);
        let raising = bytes.unwrap_or(u64::MAX) > current;
        if raising {
            write(&memsw, &value)?;
            write(&limit, &value)
        } else {
            write(&limit, &value)?;
            write(&memsw, &value)
        }
    }

    /// The limits the kernel holds for this cgroup now.
    pub fn read_limits(&self) -> Result<NodeLimits> {
        let (quota, period, memory, pids) = match &self.layout {
            Layout::V2(h) => {
                let dir = h.root.join(&self.rel);
                let cpu_max = dir.join("cpu.max");
                let text = read(&cpu_max)?;
                let mut f = text.split_whitespace();
                let quota = parse_max(&cpu_max, f.next().unwrap_or(""))?;
                let period = parse_u64(&cpu_max, f.next().unwrap_or(""))?;
                let mem_max = dir.join("memory.max");
                let memory = parse_max(&mem_max, &read(&mem_max)?)?;
                let pids = if h.has("pids") {
                    let p = dir.join("pids.max");
                    parse_max(&p, &read(&p)?)?
                } else {
                    None
                };
                (quota, period, memory, pids)
            }
            Layout::V1(_) => {
                let cpu = self.need("cpu", "reading the CPU limit of cgroup")?;
                let qf = cpu.join("cpu.cfs_quota_us");
                let q = read(&qf)?;
                let quota = match q.trim().parse::<i64>() {
                    Ok(v) if v < 0 => None,
                    Ok(v) => Some(v.unsigned_abs()),
                    Err(_) => {
                        return Err(HostError::other(
                            "parsing",
                            qf.display().to_string(),
                            q.trim().to_string(),
                        ));
                    }
                };
                let pf = cpu.join("cpu.cfs_period_us");
                let period = parse_u64(&pf, &read(&pf)?)?;
                let mem = self.need("memory", "reading the memory limit of cgroup")?;
                let lf = mem.join("memory.limit_in_bytes");
                let memory = Some(parse_u64(&lf, &read(&lf)?)?).filter(|m| *m < V1_UNLIMITED);
                let pids = match self.dir_for("pids") {
                    Some(d) => {
                        let p = d.join("pids.max");
                        parse_max(&p, &read(&p)?)?
                    }
                    None => None,
                };
                (quota, period, memory, pids)
            }
        };
        let effective_cores = match quota {
            Some(q) if period > 0 => q as f64 / period as f64,
            _ => std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        };
        let cpus = self.read_cpus()?;
        Ok(NodeLimits {
            cpu_quota_us: quota,
            cpu_period_us: period,
            effective_cores,
            memory_bytes: memory,
            pids_max: pids,
            max_cpus: cpus
                .as_deref()
                .and_then(parse_cpu_list)
                .and_then(|v| u32::try_from(v.len()).ok()),
            cpus,
        })
    }

    /// The `cgroup.procs` file of every hierarchy (what [`NodeCgroup::procs_files`] opens).
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Opens `cgroup.procs` of every hierarchy for writing. A child forked to run a workload
    /// writes `0` into each (with `write(2)`, which is async-signal-safe) before it execs, so
    /// it runs inside the cgroup from its first instruction. The files are close-on-exec.
    pub fn procs_files(&self) -> Result<Vec<File>> {
        self.procs_paths()
            .into_iter()
            .map(|p| {
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| HostError::io("opening", p.display().to_string(), e))
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) into this cgroup, in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in this cgroup (in any hierarchy), sorted; empty when it does not exist.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let mut pids = BTreeSet::new();
        for d in self.dirs() {
            let file = d.join("cgroup.procs");
            if let Some(text) = read_opt(&file)? {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let pid = line.trim().parse::<i32>().map_err(|_| {
                        HostError::other("parsing", file.display().to_string(), line.to_string())
                    })?;
                    pids.insert(pid);
                }
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// Stops every process in the cgroup until [`thaw`](Self::thaw); returns once the kernel
    /// reports the cgroup frozen.
    pub fn freeze(&self) -> Result<()> {
        match &self.layout {
            Layout::V2(h) => {
                let dir = h.root.join(&self.rel);
                write(&dir.join("cgroup.freeze"), "1")?;
                let events = dir.join("cgroup.events");
                self.wait_until("freezing cgroup", || {
                    Ok(read(&events)?.lines().any(|l| l.trim() == "frozen 1"))
                })
            }
            Layout::V1(_) => {
                let dir = self.need("freezer", "freezing cgroup")?;
                let state = dir.join("freezer.state");
                write(&state, "FROZEN")?;
                self.wait_until("freezing cgroup", || Ok(read(&state)?.trim() == "FROZEN"))
            }
        }
    }

    /// Lets the processes of a frozen cgroup run again.
    pub fn thaw(&self) -> Result<()> {
        match &self.layout {
            Layout::V2(h) => write(&h.root.join(&self.rel).join("cgroup.freeze"), "0"),
            Layout::V1(_) => {
                let dir = self.need("freezer", "thawing cgroup")?;
                write(&dir.join("freezer.state"), "THAWED")
            }
        }
    }

    fn wait_until(&self, op: &'static str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
        let start = Instant::now();
        loop {
            if done()? {
                return Ok(());
            }
            if start.elapsed() > self.settle_timeout {
                return Err(HostError::other(
                    op,
                    self.rel.display().to_string(),
                    format!("not done after {:?}", self.settle_timeout),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILLs every process in the cgroup and waits (at most 5 s) until it is empty.
    /// On v2 with `cgroup.kill` the kernel does it atomically; otherwise the cgroup is frozen
    /// first (where a freezer exists) so nothing can fork while the processes are killed one
    /// by one. Guarantees: a cgroup that is empty or gone is success.
    pub fn kill_all(&self) -> Result<()> {
        if !self.exists() || self.pids()?.is_empty() {
            return Ok(());
        }
        let cgroup_kill = match &self.layout {
            Layout::V2(h) => {
                Some(h.root.join(&self.rel).join("cgroup.kill")).filter(|p| p.exists())
            }
            Layout::V1(_) => None,
        };
        if let Some(file) = cgroup_kill {
            write(&file, "1")?;
        } else {
            let frozen = self.dir_for("freezer").is_some() && self.freeze().is_ok();
            let result = self.signal_all(Signal::SIGKILL);
            if frozen {
                // SIGKILL is delivered when the tasks run again.
                self.thaw()?;
            }
            result?;
        }
        self.wait_until("killing the processes of cgroup", || {
            // Without a freezer a task may have forked meanwhile: keep killing.
            let pids = self.pids()?;
            for &pid in &pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Ok(pids.is_empty())
        })
    }

    fn signal_all(&self, sig: Signal) -> Result<()> {
        for pid in self.pids()? {
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => {
                    return Err(HostError::io(
                        "signalling",
                        format!("pid {pid} in cgroup {}", self.rel.display()),
                        e.into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Kills what is inside and removes the cgroup (every hierarchy). Child cgroups must be
    /// removed first ([`Cgroups::remove_tree`] does that). Guarantees: idempotent; a cgroup
    /// already gone is success.
    pub fn remove(&self) -> Result<()> {
        let killed = self.exists() && !self.pids()?.is_empty();
        if killed {
            self.kill_all()?;
        }
        let start = Instant::now();
        for dir in self.dirs() {
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Tasks just killed may still be leaving the cgroup.
                    Err(e)
                        if killed
                            && e.raw_os_error() == Some(libc::EBUSY)
                            && start.elapsed() < self.settle_timeout =>
                    {
                        std::thread::sleep(POLL);
                    }
                    Err(e) => {
                        return Err(HostError::io(
                            "removing cgroup",
                            dir.display().to_string(),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// CPU time and memory used so far.
    pub fn usage(&self) -> Result<Usage> {
        match &self.layout {
            Layout::V2(h) => {
                let dir = h.root.join(&self.rel);
                let stat = dir.join("cpu.stat");
                let text = read(&stat)?;
                let usec = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .ok_or_else(|| {
                        HostError::other(
                            "reading",
                            stat.display().to_string(),
                            "no usage_usec line",
                        )
                    })?;
                let opt = |name: &str| -> Result<Option<u64>> {
                    let p = dir.join(name);
                    read_opt(&p)?.map(|t| parse_u64(&p, &t)).transpose()
                };
                Ok(Usage {
                    cpu_usage_us: parse_u64(&stat, usec)?,
                    memory_current: opt("memory.current")?,
                    memory_peak: opt("memory.peak")?,
                })
            }
            Layout::V1(_) => {
                let acct = self.need("cpuacct", "reading the CPU usage of cgroup")?;
                let uf = acct.join("cpuacct.usage");
                let ns = parse_u64(&uf, &read(&uf)?)?;
                let mem = self.need("memory", "reading the memory usage of cgroup")?;
                let opt = |name: &str| -> Result<Option<u64>> {
                    let p = mem.join(name);
                    read_opt(&p)?.map(|t| parse_u64(&p, &t)).transpose()
                };
                Ok(Usage {
                    cpu_usage_us: ns / 1000,
                    memory_current: opt("memory.usage_in_bytes")?,
                    memory_peak: opt("memory.max_usage_in_bytes")?,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A fake v2 root in a tempdir, with what the kernel would show at the top.
    fn fake_v2(controllers: &str) -> (tempfile::TempDir, Cgroups) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        let cg = Cgroups::v2(dir.path()).unwrap();
        (dir, cg)
    }

    fn fake_v1(mounts: &[(&str, &[&str])]) -> (tempfile::TempDir, Cgroups) {
        let dir = tempfile::tempdir().unwrap();
        let hs = mounts
            .iter()
            .map(|(name, ctrls)| {
                let root = dir.path().join(name);
                fs::create_dir_all(&root).unwrap();
                Hierarchy {
                    root,
                    controllers: ctrls.iter().map(|c| c.to_string()).collect(),
                }
            })
            .collect();
        (dir, Cgroups::v1(hs).unwrap())
    }

    fn limits() -> NodeLimits {
        NodeLimits {
            cpu_quota_us: Some(250_000),
            cpu_period_us: 100_000,
            effective_cores: 2.5,
            memory_bytes: Some(7_516_192_768),
            pids_max: Some(512),
            max_cpus: None,
            cpus: None,
        }
    }

    #[test]
    fn cpu_lists_print_and_parse_as_the_kernel_writes_them() {
        assert_eq!(cpu_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(cpu_list(&[6, 0, 1, 3, 4, 5]), "0-1,3-6");
        assert_eq!(cpu_list(&[2]), "2");
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(parse_cpu_list("0-1,3-6\n"), Some(vec![0, 1, 3, 4, 5, 6]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        let mine = allowed_cpus();
        assert!(
            !mine.is_empty() && mine.windows(2).all(|w| w[0] < w[1]),
            "{mine:?}"
        );
    }

    #[test]
    fn mountinfo_is_parsed_with_escapes() {
        let m = parse_mountinfo(
            "41 31 0:38 / /sys/fs/cgroup/my\\040dir rw - cgroup2 cgroup2 rw,nsdelegate\nbad line\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/sys/fs/cgroup/my dir"));
        assert_eq!(m[0].fs_type, "cgroup2");
        assert_eq!(m[0].super_options, vec!["rw", "nsdelegate"]);
    }

    #[test]
    fn detection_prefers_usable_v2_and_falls_back_to_v1() {
        // This machine's layout: v2 mounted but without controllers -> v1.
        let cg = Cgroups::from_mountinfo(MOUNTINFO_V1);
        // The unified mount is not readable from a test in a tempdir, so v2 is skipped either
        // way; what matters is that v1 is complete.
        let cg = cg.unwrap();
        if cg.version() == 1 {
            let roots: Vec<_> = cg.hierarchies().iter().map(|h| h.root.clone()).collect();
            assert!(roots.contains(&PathBuf::from("/sys/fs/cgroup/cpu")));
            assert!(roots.contains(&PathBuf::from("/sys/fs/cgroup/pids")));
            assert!(roots.contains(&PathBuf::from("/sys/fs/cgroup/cpuset")));
            assert!(cg.has("cpuset"));
            assert!(!roots.contains(&PathBuf::from("/sys/fs/cgroup/systemd")));
            assert!(cg.has("freezer") && cg.has("cpuacct"));
        }

        // A usable v2 root wins.
        let (dir, _) = fake_v2("cpuset cpu io memory pids");
        let info = format!(
            "{MOUNTINFO_V1}50 31 0:40 / {} rw - cgroup2 cgroup2 rw\n",
            dir.path().display()
        );
        let cg = Cgroups::from_mountinfo(&info).unwrap();
        assert_eq!(cg.version(), 2);
        assert!(cg.has("pids") && cg.has("freezer"));

        // A v2 root without the cpu controller does not.
        let (dir, _) = fake_v2("memory pids");
        let info = format!(
            "{MOUNTINFO_V1}50 31 0:40 / {} rw - cgroup2 cgroup2 rw\n",
            dir.path().display()
        );
        assert_eq!(Cgroups::from_mountinfo(&info).unwrap().version(), 1);

        // Neither: a clear error.
        let e = Cgroups::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda1 rw\n").unwrap_err();
        assert!(e.to_string().contains("cpu"), "{e}");
    }

    #[test]
    fn paths_must_be_plain_and_relative() {
        let (_d, cg) = fake_v2("cpu memory pids");
        for bad in [
            "",
            "/edgesim",
            "edgesim/../etc",
            "./x",
            "a/./b",
            "a//b",
            "a/",
        ] {
            assert!(cg.create(bad).is_err(), "{bad:?} accepted");
        }
        assert!(cg.open("edgesim/run-1/gw-1").is_ok());
    }

    #[test]
    fn v2_create_enables_controllers_along_the_path_once() {
        let (dir, cg) = fake_v2("cpuset cpu io memory hugetlb pids rdma");
        let node = cg.create("edgesim/run1/gw-1").unwrap();
        let root = dir.path();
        for d in [
            root.to_path_buf(),
            root.join("edgesim"),
            root.join("edgesim/run1"),
        ] {
            assert_eq!(
                fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
                "+cpuset +cpu +memory +pids",
                "in {d:?}"
            );
        }
        assert!(root.join("edgesim/run1/gw-1").is_dir());
        assert!(
            !root
                .join("edgesim/run1/gw-1/cgroup.subtree_control")
                .exists(),
            "a leaf enables nothing"
        );
        assert_eq!(node.dirs(), vec![root.join("edgesim/run1/gw-1")]);

        // Idempotent, and nothing is re-enabled: the kernel shows enabled controllers without
        // the `+`, and a second write would be wasted.
        fs::write(
            root.join("cgroup.subtree_control"),
            "cpuset cpu memory pids",
        )
        .unwrap();
        cg.create("edgesim/run1/gw-1").unwrap();
        cg.create("edgesim/run1/gw-2").unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "cpuset cpu memory pids"
        );
    }

    #[test]
    fn v2_apply_writes_the_limits_and_reads_them_back() {
        let (dir, cg) = fake_v2("cpu memory pids");
        let node = cg.create("edgesim/r/n").unwrap();
        let d = dir.path().join("edgesim/r/n");
        fs::write(d.join("memory.swap.max"), "max").unwrap();
        node.apply(&limits()).unwrap();
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "250000 100000"
        );
        assert_eq!(
            fs::read_to_string(d.join("memory.max")).unwrap(),
            "7516192768"
        );
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(fs::read_to_string(d.join("pids.max")).unwrap(), "512");
        assert_eq!(node.read_limits().unwrap(), limits());

        let open = NodeLimits {
            cpu_quota_us: None,
            memory_bytes: None,
            pids_max: None,
            max_cpus: None,
            cpus: None,
            ..limits()
        };
        node.apply(&open).unwrap();
        assert_eq!(fs::read_to_string(d.join("cpu.max")).unwrap(), "max 100000");
        assert_eq!(fs::read_to_string(d.join("memory.max")).unwrap(), "max");
        assert_eq!(
            fs::read_to_string(d.join("memory.swap.max")).unwrap(),
            "max"
        );
        assert_eq!(fs::read_to_string(d.join("pids.max")).unwrap(), "max");
        let back = node.read_limits().unwrap();
        assert_eq!(
            (back.cpu_quota_us, back.memory_bytes, back.pids_max),
            (None, None, None)
        );
    }

    #[test]
    fn v2_without_swap_accounting_or_pids_controller() {
        let (dir, cg) = fake_v2("cpu memory");
        let node = cg.create("edgesim/r/n").unwrap();
        let d = dir.path().join("edgesim/r/n");
        let e = node.apply(&limits()).unwrap_err();
        assert!(e.to_string().contains("pids controller"), "{e}");
        assert!(
            !d.join("memory.swap.max").exists(),
            "not created where the kernel has none"
        );
        node.apply(&limits().with_pids(None)).unwrap();
        assert!(!d.join("pids.max").exists());
    }

    #[test]
    fn v2_freeze_kill_usage_and_removal() {
        let (dir, cg) = fake_v2("cpu memory pids");
        let node = cg
            .create("edgesim/r/n")
            .unwrap()
            .with_settle_timeout(Duration::from_millis(50));
        let d = dir.path().join("edgesim/r/n");
        fs::write(d.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        node.freeze().unwrap();
        assert_eq!(fs::read_to_string(d.join("cgroup.freeze")).unwrap(), "1");
        node.thaw().unwrap();
        assert_eq!(fs::read_to_string(d.join("cgroup.freeze")).unwrap(), "0");

        fs::write(d.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let e = node.freeze().unwrap_err();
        assert!(e.to_string().contains("freezing cgroup"), "{e}");

        // pids are read from cgroup.procs; cgroup.kill is used when the kernel has it. The
        // fake pid is far above pid_max, so no real process is signalled.
        fs::write(d.join("cgroup.procs"), "").unwrap();
        assert!(node.pids().unwrap().is_empty());
        node.kill_all().unwrap();
        assert!(
            !d.join("cgroup.kill").exists(),
            "empty cgroups are left alone"
        );
        fs::write(d.join("cgroup.kill"), "").unwrap();
        fs::write(d.join("cgroup.procs"), "2147483000\n").unwrap();
        assert_eq!(node.pids().unwrap(), vec![2_147_483_000]);
        assert!(node.kill_all().is_err(), "the fake process never leaves");
        assert_eq!(fs::read_to_string(d.join("cgroup.kill")).unwrap(), "1");

        fs::write(
            d.join("cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        let u = node.usage().unwrap();
        assert_eq!(
            u,
            Usage {
                cpu_usage_us: 1_500_000,
                memory_current: Some(4096),
                memory_peak: None
            }
        );

        // children() and remove_tree() on a real directory tree: plain rmdir needs empty
        // directories, so drop the fake control files first (the kernel's vanish with rmdir).
        cg.create("edgesim/r/m").unwrap();
        assert_eq!(cg.children("edgesim/r").unwrap(), vec!["m", "n"]);
        assert_eq!(cg.children("edgesim/none").unwrap(), Vec::<String>::new());
        for f in fs::read_dir(&d).unwrap() {
            fs::remove_file(f.unwrap().path()).unwrap();
        }
        for f in ["edgesim", "edgesim/r"] {
            let _ = fs::remove_file(dir.path().join(f).join("cgroup.subtree_control"));
        }
        cg.remove_tree("edgesim").unwrap();
        assert!(!dir.path().join("edgesim").exists());
        cg.remove_tree("edgesim").unwrap();
        node.remove().unwrap();
    }

    #[test]
    fn v1_apply_orders_memsw_and_reads_back() {
        let (dir, cg) = fake_v1(&[
            ("cpu,cpuacct", &["cpu", "cpuacct"]),
            ("memory", &["memory"]),
            ("pids", &["pids"]),
            ("freezer", &["freezer"]),
        ]);
        assert_eq!(cg.version(), 1);
        let node = cg.create("edgesim/r/n").unwrap();
        let cpu = dir.path().join("cpu,cpuacct/edgesim/r/n");
        let mem = dir.path().join("memory/edgesim/r/n");
        assert_eq!(node.dirs().len(), 4);
        for d in node.dirs() {
            assert!(d.is_dir(), "{d:?}");
        }
        // As the kernel shows a fresh cgroup: unlimited.
        fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        fs::write(
            mem.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();

        node.apply(&limits()).unwrap();
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "250000"
        );
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "7516192768"
        );
        assert_eq!(
            fs::read_to_string(mem.join("memory.memsw.limit_in_bytes")).unwrap(),
            "7516192768"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("pids/edgesim/r/n/pids.max")).unwrap(),
            "512"
        );
        assert_eq!(node.read_limits().unwrap(), limits());

        let open = NodeLimits {
            cpu_quota_us: None,
            memory_bytes: None,
            pids_max: None,
            max_cpus: None,
            cpus: None,
            ..limits()
        };
        node.apply(&open).unwrap();
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "-1"
        );
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "-1"
        );
        // The kernel would now show the unlimited value again.
        fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let back = node.read_limits().unwrap();
        assert_eq!(
            (back.cpu_quota_us, back.memory_bytes, back.pids_max),
            (None, None, None)
        );

        fs::write(cpu.join("cpuacct.usage"), "2500000000\n").unwrap();
        fs::write(mem.join("memory.usage_in_bytes"), "8192\n").unwrap();
        fs::write(mem.join("memory.max_usage_in_bytes"), "16384\n").unwrap();
        assert_eq!(
            node.usage().unwrap(),
            Usage {
                cpu_usage_us: 2_500_000,
                memory_current: Some(8192),
                memory_peak: Some(16384)
            }
        );
        let fz = dir.path().join("freezer/edgesim/r/n/freezer.state");
        node.freeze().unwrap();
        assert_eq!(fs::read_to_string(&fz).unwrap(), "FROZEN");
        node.thaw().unwrap();
        assert_eq!(fs::read_to_string(&fz).unwrap(), "THAWED");
    }

    #[test]
    fn v1_without_swap_accounting_sets_swappiness_and_without_freezer_cannot_freeze() {
        let (dir, cg) = fake_v1(&[("cpu", &["cpu", "cpuacct"]), ("memory", &["memory"])]);
        let node = cg.create("e/n").unwrap();
        node.apply(&limits().with_pids(None)).unwrap();
        let mem = dir.path().join("memory/e/n");
        assert_eq!(
            fs::read_to_string(mem.join("memory.swappiness")).unwrap(),
            "0"
        );
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        assert!(
            node.apply(&limits())
                .unwrap_err()
                .to_string()
                .contains("pids")
        );
        let e = node.freeze().unwrap_err();
        assert!(e.to_string().contains("freezer"), "{e}");
        assert!(Cgroups::v1(vec![]).is_err());
    }

    // ---- privileged tests: the real hierarchy of this host ----

    /// Creates `edgesim-test-<pid>/<name>` and removes it (with everything inside) on drop,
    /// even when the test panics.
    struct TestCgroup {
        cg: Cgroups,
        rel: String,
    }

    impl TestCgroup {
        fn parent() -> String {
            format!("edgesim-test-{}", std::process::id())
        }
        fn new(name: &str) -> Option<(TestCgroup, NodeCgroup)> {
            Self::in_layout(name, Cgroups::detect())
        }
        /// On the machine's cgroup2 mount, whatever controllers it offers (none on a hybrid
        /// layout like this machine's, where v1 holds them all).
        fn new_v2(name: &str) -> Option<(TestCgroup, NodeCgroup)> {
            let v2 = read(Path::new("/proc/self/mountinfo")).and_then(|text| {
                let m = parse_mountinfo(&text)
                    .into_iter()
                    .find(|m| m.fs_type == "cgroup2")
                    .ok_or_else(|| HostError::other("finding", "cgroup2", "not mounted"))?;
                Cgroups::v2(&m.mount_point)
            });
            Self::in_layout(name, v2)
        }
        fn in_layout(name: &str, layout: Result<Cgroups>) -> Option<(TestCgroup, NodeCgroup)> {
            let root = nix::unistd::geteuid().is_root();
            let why = match (&layout, root) {
                (_, false) => "must run as root to create cgroups".to_string(),
                (Err(e), _) => format!("no usable cgroup hierarchy: {e}"),
                _ => String::new(),
            };
            if !crate::testing::gate("cgroup", root && layout.is_ok(), &why) {
                return None;
            }
            let cg = layout.ok()?;
            let rel = format!("{}/{name}", Self::parent());
            let node = cg.create(&rel).unwrap();
            Some((TestCgroup { cg, rel }, node))
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Err(e) = self.cg.remove_tree(&self.rel) {
                eprintln!("cleaning up {}: {e}", self.rel);
            }
            // The shared parent goes with the last test's child: one rmdir per hierarchy,
            // which fails harmlessly ("busy") while other tests still have children there.
            if let Ok(parent) = self.cg.open(&Self::parent()) {
                for d in parent.dirs() {
                    let _ = fs::remove_dir(d);
                }
            }
        }
    }

    fn spawn_in(node: &NodeCgroup, script: &str) -> std::process::Child {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let files = node.procs_files().unwrap();
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]);
        // SAFETY: the closure runs in the forked child before exec and only calls write(2),
        // which is async-signal-safe; `fds` was built before the fork and is only read.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(files);
        child
    }

    #[test]
    fn real_cgroup_limits_hold_and_processes_are_frozen_killed_and_removed() {
        let _quiet = crate::testing::exclusive();
        let Some((guard, node)) = TestCgroup::new("lifecycle") else {
            return;
        };
        let cg = &guard.cg;
        let l = NodeLimits {
            cpu_quota_us: Some(20_000),
            cpu_period_us: 100_000,
            effective_cores: 0.2,
            memory_bytes: Some(64 << 20),
            pids_max: Some(32),
            max_cpus: None,
            cpus: None,
        };
        node.apply(&l).unwrap();
        assert_eq!(node.read_limits().unwrap(), l);
        node.apply(&l).unwrap(); // idempotent

        // A busy loop enters the cgroup before exec and is held to 20 % of one CPU.
        let mut busy = spawn_in(&node, "while :; do :; done");
        let pid = busy.id() as i32;
        assert!(
            node.pids().unwrap().contains(&pid),
            "child not in the cgroup"
        );
        let before = node.usage().unwrap().cpu_usage_us;
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(1000));
        let used = node.usage().unwrap().cpu_usage_us - before;
        let wall = t.elapsed().as_micros() as u64;
        assert!(
            used < wall * 35 / 100,
            "quota 20 % not enforced: {used} µs of CPU in {wall} µs"
        );
        assert!(used > 0, "the busy loop never ran");

        freeze_stops_and_thaw_resumes(&node);
        sleeper_joins_and_kill_all_takes_both(&node, &mut busy, false);

        // Removal: gone from every hierarchy, and removing again is fine.
        assert!(
            cg.children(&TestCgroup::parent())
                .unwrap()
                .contains(&"lifecycle".to_string())
        );
        node.remove().unwrap();
        assert!(!node.exists());
        node.remove().unwrap();
    }

    /// Pinned to one CPU, a process in the cgroup may run there only (the kernel's own view,
    /// `Cpus_allowed_list`); unpinned again, it may run on every CPU of the parent. Needs a
    /// host with at least two CPUs and a cpuset controller (v1 here).
    #[test]
    fn real_cgroup_pins_processes_to_cpus() {
        let _quiet = crate::testing::exclusive();
        let Some((guard, node)) = TestCgroup::new("pinned") else {
            return;
        };
        if !guard.cg.has("cpuset") || allowed_cpus().len() < 2 {
            assert!(
                !crate::testing::required("cgroup"),
                "EDGESIM_REQUIRE lists cgroup, but this host has no cpuset controller or one CPU"
            );
            return;
        }
        let last = *allowed_cpus().last().unwrap();
        let pinned = NodeLimits {
            max_cpus: Some(1),
            cpus: Some(last.to_string()),
            ..NodeLimits::unlimited(2)
        };
        node.apply(&pinned).unwrap();
        assert_eq!(node.read_limits().unwrap().cpus, pinned.cpus);
        let mut child = spawn_in(&node, "sleep 30");
        let allowed = |pid: u32| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| parse_cpu_list(v).unwrap())
                .unwrap()
        };
        assert_eq!(allowed(child.id()), vec![last]);
        node.apply(&NodeLimits::unlimited(2)).unwrap();
        assert_eq!(node.read_limits().unwrap().cpus, None);
        assert_eq!(allowed(child.id()), allowed_cpus());
        let _ = child.kill();
        let _ = child.wait();
        node.remove().unwrap();
    }

    /// Frozen, a cgroup's busy loop uses no CPU at all (and v2 reports it frozen); thawed,
    /// it runs again.
    fn freeze_stops_and_thaw_resumes(node: &NodeCgroup) {
        node.freeze().unwrap();
        let events = node.dirs()[0].join("cgroup.events");
        if events.exists() {
            // v2 (v1 has no such file).
            let events = fs::read_to_string(events).unwrap();
            assert!(events.contains("frozen 1"), "{events}");
        }
        let a = node.usage().unwrap().cpu_usage_us;
        std::thread::sleep(Duration::from_millis(300));
        let b = node.usage().unwrap().cpu_usage_us;
        assert!(b - a < 2_000, "frozen cgroup used {} µs", b - a);
        node.thaw().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            node.usage().unwrap().cpu_usage_us > b,
            "thawed cgroup did not run"
        );
    }

    /// A second process joins with add_pid; kill_all (of a frozen cgroup when `frozen`)
    /// takes both.
    fn sleeper_joins_and_kill_all_takes_both(
        node: &NodeCgroup,
        busy: &mut std::process::Child,
        frozen: bool,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        node.add_pid(sleeper.id() as i32).unwrap();
        assert_eq!(node.pids().unwrap().len(), 2);
        if frozen {
            node.freeze().unwrap();
        }
        node.kill_all().unwrap();
        assert!(node.pids().unwrap().is_empty());
        assert_eq!(busy.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    /// A shared parent stays while any child uses it, goes with the last, and removing it
    /// again is fine.
    #[test]
    fn real_cgroup_shared_parent_goes_with_its_last_child() {
        let Some((guard, _node)) = TestCgroup::new("unused") else {
            return;
        };
        let cg = &guard.cg;
        let parent = format!("edgesim-test-{}-shared", std::process::id());
        let a = cg.create(&format!("{parent}/a")).unwrap();
        let b = cg.create(&format!("{parent}/b")).unwrap();
        a.remove().unwrap();
        cg.remove_if_unused(&parent).unwrap();
        assert!(cg.open(&parent).unwrap().exists(), "b still uses it");
        b.remove().unwrap();
        cg.remove_if_unused(&parent).unwrap();
        assert!(!cg.open(&parent).unwrap().exists());
        cg.remove_if_unused(&parent).unwrap();
    }

    /// cgroup v2's core (no controller needed): placement before exec, CPU accounting,
    /// `cgroup.freeze`, `cgroup.kill`, removal — on the kernel, not a fake tree. On a hybrid
    /// layout such as this machine's the v2 mount has no controllers, so limits cannot be
    /// applied there, and `apply` must say which file it could not write.
    #[test]
    fn real_cgroup_v2_core_places_accounts_freezes_kills_and_removes() {
        let _quiet = crate::testing::exclusive();
        let Some((guard, node)) = TestCgroup::new_v2("v2core") else {
            return;
        };
        assert_eq!(guard.cg.version(), 2);
        let dir = node.dirs().remove(0);
        assert!(dir.join("cgroup.freeze").exists(), "{}", dir.display());

        let mut busy = spawn_in(&node, "while :; do :; done");
        let pid = busy.id() as i32;
        assert_eq!(node.pids().unwrap(), vec![pid], "placed before exec");
        std::thread::sleep(Duration::from_millis(300));
        let a = node.usage().unwrap().cpu_usage_us;
        assert!(a > 0, "cpu.stat counts the busy loop");

        freeze_stops_and_thaw_resumes(&node);

        let limits = NodeLimits::unlimited(1).with_pids(Some(8));
        if !guard.cg.has("cpu") {
            let e = node.apply(&limits).unwrap_err().to_string();
            assert!(e.contains("cpu.max"), "{e}");
        }
        // Frozen while killed: cgroup.kill still takes every task.
        sleeper_joins_and_kill_all_takes_both(&node, &mut busy, true);
        node.remove().unwrap();
        assert!(!node.exists());
    }

    #[test]
    fn real_cgroup_memory_limit_kills_a_process_that_exceeds_it() {
        let Some((_guard, node)) = TestCgroup::new("oom") else {
            return;
        };
        let l = NodeLimits {
            cpu_quota_us: None,
            cpu_period_us: 100_000,
            effective_cores: 1.0,
            memory_bytes: Some(32 << 20),
            pids_max: Some(16),
            max_cpus: None,
            cpus: None,
        };
        node.apply(&l).unwrap();
        // The shell keeps ~100 MB in a variable: far beyond 32 MiB, so the cgroup's OOM killer
        // (not swap) must end it.
        let mut child = spawn_in(
            &node,
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}",
        );
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.code() == Some(137),
            "expected an OOM kill, got {status:?}"
        );
        let peak = node.usage().unwrap().memory_peak;
        if let Some(peak) = peak {
            assert!(peak <= 32 << 20, "peak {peak} above the limit");
        }
    }

    #[test]
    fn real_cgroup_pids_limit_stops_forks() {
        let Some((_guard, node)) = TestCgroup::new("pids") else {
            return;
        };
        let l = NodeLimits::unlimited(1).with_pids(Some(4));
        node.apply(&l).unwrap();
        // Try to start 10 sleepers in the background; at most 4 tasks fit (the shell included).
        let mut child = spawn_in(
            &node,
            "n=0; for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & n=$((n+1)); done 2>/dev/null; wait",
        );
        std::thread::sleep(Duration::from_millis(500));
        let inside = node.pids().unwrap().len();
        assert!(inside <= 4, "{inside} tasks despite pids.max 4");
        node.kill_all().unwrap();
        let _ = child.wait();
        assert!(node.pids().unwrap().is_empty());
    }
}
