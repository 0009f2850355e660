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

/// One node of a run, as `exec` and workloads see it (target-neutral).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub addr: std::net::Ipv4Addr,
    pub site: String,
    pub profile: String,
    /// The profile's core count (`EDGESIM_CPU_CORES`).
    pub cpu_cores: u32,
}

/// What a target created, tagged by target (`"target": "netns"` …): each target owns its part.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "kebab-case")]
pub enum TargetState {
    Netns(super::netns::NetnsState),
    Docker(super::docker::DockerState),
    Device(super::device::lab::DeviceState),
    Kind(super::kind::nodes::KindState),
}

impl TargetState {
    pub fn name(&self) -> &'static str {
        match self {
            TargetState::Netns(_) => "netns",
            TargetState::Docker(_) => "docker",
            TargetState::Device(_) => "device",
            TargetState::Kind(_) => "kind",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub scenario: String,
    pub file: PathBuf,
    pub mode: Mode,
    pub seed: u64,
    /// The controlling edgesim process and its start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`), which together survive pid reuse.
    pub pid: u32,
    pub pid_start: u64,
    pub started_unix: u64,
    pub out_dir: PathBuf,
    pub nodes: Vec<NodeState>,
    /// Whether the lab finished provisioning and deploying.
    pub ready: bool,
    /// The target's objects.
    #[serde(flatten)]
    pub target: TargetState,
}

impl RunState {
    /// The neutral part of a run's state, before the target adds its own.
    pub fn new(
        plan: &crate::scenario::Plan,
        run_id: &str,
        mode: Mode,
        out_dir: PathBuf,
        target: TargetState,
    ) -> RunState {
        RunState {
            run_id: run_id.to_string(),
            scenario: plan.name.clone(),
            file: std::fs::canonicalize(&plan.file).unwrap_or_else(|_| plan.file.clone()),
            mode,
            seed: plan.seed,
            pid: std::process::id(),
            pid_start: process_start(std::process::id()).unwrap_or(0),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            out_dir,
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeState {
                    name: n.name.clone(),
                    addr: n.addr,
                    site: plan.sites[n.site].name.clone(),
                    profile: n.profile_name.clone(),
                    cpu_cores: n.profile.cpu.cores,
                })
                .collect(),
            ready: false,
            target,
        }
    }

    /// The environment every workload instance on node `i` gets, and `edgesim exec` too.
    pub fn node_env(&self, i: usize) -> Vec<(String, String)> {
        let n = &self.nodes[i];
        let mut env = vec![
            ("EDGESIM_RUN".to_string(), self.run_id.clone()),
            ("EDGESIM_SCENARIO".into(), self.scenario.clone()),
            ("EDGESIM_NODE".into(), n.name.clone()),
            ("EDGESIM_SITE".into(), n.site.clone()),
            ("EDGESIM_ADDR".into(), n.addr.to_string()),
            ("EDGESIM_PROFILE".into(), n.profile.clone()),
            ("EDGESIM_CPU_CORES".into(), n.cpu_cores.to_string()),
            ("EDGESIM_SEED".into(), self.seed.to_string()),
        ];
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|m| format!("{}={}", m.name, m.addr))
            .collect();
        env.push(("EDGESIM_PEERS".into(), peers.join(",")));
        for m in &self.nodes {
            env.push((
                format!("EDGESIM_PEER_{}", env_key(&m.name)),
                m.addr.to_string(),
            ));
        }
        env
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
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

    /// [`RunState::save`], as a host error naming the file.
    pub fn save_or_err(&self) -> crate::host::Result<()> {
        self.save().map_err(|e| {
            crate::host::HostError::io("writing state file", self.path().display().to_string(), e)
        })
    }

    /// [`RunState::remove`], as a message naming the file when it fails.
    pub fn remove_or_msg(&self) -> Option<String> {
        self.remove()
            .err()
            .map(|e| format!("removing state file {}: {e}", self.path().display()))
    }

    /// Removes the file (and the lab's control socket); already gone is fine.
    pub fn remove(&self) -> io::Result<()> {
        let _ = fs::remove_file(control_path(&self.run_id));
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

/// The Unix socket a lab that is up (`edgesim up`) takes live faults on (`edgesim fault`).
pub fn control_path(run_id: &str) -> PathBuf {
    dir().join(format!("{run_id}.sock"))
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
            // (Containers of a run are named `edgesim-<run>-<node>` too; a state file exists
            // for each run that has any, so the two checks above cover them.)
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

    #[test]
    fn a_state_file_reads_back_for_every_target() {
        let node = NodeState {
            name: "gw-1".into(),
            addr: "10.90.0.2".parse().unwrap(),
            site: "edge".into(),
            profile: "raspberry-pi-5-4gb".into(),
            cpu_cores: 4,
        };
        let targets = [
            TargetState::Netns(super::super::netns::NetnsState {
                namespaces: vec!["edgesim-a1b2c3-fabric".into(), "edgesim-a1b2c3-gw-1".into()],
                cgroup: Some("edgesim/a1b2c3".into()),
                hosts_dirs: vec!["/etc/netns/edgesim-a1b2c3-gw-1".into()],
                nodes: vec![super::super::netns::NetnsNode {
                    namespace: "edgesim-a1b2c3-gw-1".into(),
                    cgroup: "edgesim/a1b2c3/gw-1".into(),
                }],
                workload_pids: vec![42],
            }),
            TargetState::Docker(super::super::docker::DockerState {
                fabric_namespace: "edgesim-a1b2c3-fabric".into(),
                containers: vec!["edgesim-a1b2c3-gw-1".into()],
                cgroup: None,
            }),
            TargetState::Kind(super::super::kind::nodes::KindState {
                cluster: "edgesim-t".into(),
                network: "kind".into(),
                table: "edgesim-a1b2c3".into(),
                containers: vec![super::super::kind::nodes::NodeRecord {
                    container: "edgesim-t-control-plane".into(),
                    addr: "172.18.0.2".parse().unwrap(),
                    table: true,
                    qdisc: false,
                }],
                created: true,
                kubeconfig: Some("/tmp/out/kubeconfig".into()),
                registry: Some("edgesim-a1b2c3-registry".into()),
            }),
        ];
        for target in targets {
            let st = RunState {
                run_id: "a1b2c3".into(),
                scenario: "t".into(),
                file: "t.yaml".into(),
                mode: Mode::Lab,
                seed: 1,
                pid: 1,
                pid_start: 2,
                started_unix: 3,
                out_dir: "out".into(),
                nodes: vec![node.clone()],
                ready: true,
                target,
            };
            let text = serde_json::to_string(&st).unwrap();
            let back: RunState = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{} state does not read back: {e}\n{text}", st.target.name())
            });
            assert_eq!(back.nodes.len(), 1);
            assert_eq!(back.target.name(), st.target.name());
            if let TargetState::Netns(n) = &back.target {
                assert_eq!(n.nodes[0].cgroup, "edgesim/a1b2c3/gw-1");
            }
        }
    }
}
