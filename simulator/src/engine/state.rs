//! The state file of a run: everything it created, written before it is created, so that
//! `edgesim cleanup` can remove what a run killed with SIGKILL left behind, and `edgesim
//! exec`/`down` can find a lab that is up.
//!
//! Files live in `/run/edgesim/` (tmpfs: they vanish with a reboot, as do the namespaces they
//! describe), one JSON file per run, replaced atomically (write to a temporary, rename).
//! `EDGESIM_STATE_DIR` moves them (tests).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default directory of state files.
pub const STATE_DIR: &str = "/run/edgesim";

pub fn dir() -> PathBuf {
    std::env::var_os("EDGESIM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_DIR))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `edgesim run`: the run ends by itself.
    Run,
    /// `edgesim up`: a lab that stays up until `edgesim down`.
    Lab,
}

/// One node of a run, as `exec` needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub namespace: String,
    pub addr: std::net::Ipv4Addr,
    pub site: String,
    /// Cgroup of the node, relative to the cgroup roots.
    pub cgroup: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub scenario: String,
    pub file: PathBuf,
    pub mode: Mode,
    pub target: String,
    /// The controlling edgesim process and its start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`), which together survive pid reuse.
    pub pid: u32,
    pub pid_start: u64,
    pub started_unix: u64,
    pub out_dir: PathBuf,
    /// Namespaces, fabric first.
    pub namespaces: Vec<String>,
    /// The run's cgroup subtree, relative to the cgroup roots.
    pub cgroup: Option<String>,
    pub hosts_dirs: Vec<PathBuf>,
    pub nodes: Vec<NodeState>,
    /// Process groups of workloads, last known.
    pub workload_pids: Vec<i32>,
    /// Whether the lab finished provisioning and deploying.
    pub ready: bool,
}

impl RunState {
    pub fn path(&self) -> PathBuf {
        path_of(&self.run_id)
    }

    /// Writes the file atomically.
    pub fn save(&self) -> io::Result<()> {
        let d = dir();
        fs::create_dir_all(&d)?;
        let tmp = d.join(format!(".{}.tmp", self.run_id));
        let body = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fs::write(&tmp, body)?;
        fs::rename(&tmp, self.path())
    }

    /// Removes the file; already gone is fine.
    pub fn remove(&self) -> io::Result<()> {
        match fs::remove_file(self.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the process that owns this run is still running.
    pub fn controller_alive(&self) -> bool {
        process_start(self.pid).is_some_and(|s| s == self.pid_start)
    }
}

pub fn path_of(run_id: &str) -> PathBuf {
    dir().join(format!("{run_id}.json"))
}

pub fn load(path: &Path) -> io::Result<RunState> {
    let body = fs::read(path)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Every readable state file, oldest first.
pub fn list() -> Vec<RunState> {
    let Ok(rd) = fs::read_dir(dir()) else {
        return Vec::new();
    };
    let mut v: Vec<RunState> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| load(&p).ok())
        .collect();
    v.sort_by_key(|s| s.started_unix);
    v
}

/// Runs of scenario `name` whose controller is alive.
pub fn live_by_name(name: &str) -> Vec<RunState> {
    list()
        .into_iter()
        .filter(|s| s.scenario == name && s.controller_alive())
        .collect()
}

/// Start time of a running process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`); `None` when there is no such process or it has exited and only awaits
/// reaping (a zombie: its parent, often an init that reaps lazily, has not collected it yet).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// A fresh run id: 6 lowercase hex digits, not used by any state file or namespace.
pub fn new_run_id() -> String {
    use rand::RngExt;
    loop {
        let id = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
        if !path_of(&id).exists() && crate::host::ns::list(&format!("edgesim-{id}-")).is_empty() {
            return id;
        }
    }
}

/// The run id inside a namespace name `edgesim-<run>-<rest>`.
pub fn run_of_namespace(ns: &str) -> Option<&str> {
    let rest = ns.strip_prefix("edgesim-")?;
    let (id, _) = rest.split_once('-')?;
    (id.len() == 6 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_ids_and_process_start() {
        assert_eq!(run_of_namespace("edgesim-a1b2c3-gw-1"), Some("a1b2c3"));
        assert_eq!(run_of_namespace("edgesim-a1b2c3-fabric"), Some("a1b2c3"));
        assert_eq!(run_of_namespace("edgesim-t-123-1"), None);
        assert_eq!(run_of_namespace("other"), None);
        let me = std::process::id();
        assert!(process_start(me).is_some());
        assert_eq!(process_start(me), process_start(me));
    }
}
