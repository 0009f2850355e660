//! Kind cluster configurations (`kind.x-k8s.io/v1alpha4`) generated from a validated plan.
//!
//! # What a generated configuration holds
//!
//! - One control-plane node. It runs the API server and, later, Flux and the artifact
//!   registry, so it is never shaped nor impaired by links (a partition may cut it off, but
//!   for the API server's own traffic: see [`super::nodes`]); it keeps kubeadm's
//!   `node-role.kubernetes.io/control-plane:NoSchedule` taint (set explicitly, so that a
//!   change of kubeadm's defaults does not put workloads on it) and carries
//!   `edgesim.dev/role=control-plane`.
//! - One worker per scenario node, in the plan's order, each with one `JoinConfiguration`
//!   patch whose `nodeRegistration.kubeletExtraArgs` set:
//!   - `node-labels`: `edgesim.dev/node`, `edgesim.dev/profile`, `edgesim.dev/site`,
//!     `edgesim.dev/arch` (the board's, see the module docs of [`super`]) and, on boards
//!     with a GPU, `edgesim.dev/gpu=<vendor>`;
//!   - `register-with-taints`: `nvidia.com/gpu=present:NoSchedule` on boards with a GPU
//!     (the taint NVIDIA's GPU operator and the major clouds put on GPU nodes), so only pods
//!     that tolerate it land there;
//!   - `kube-reserved`, `system-reserved` and `eviction-hard`, computed by [`reservation`] so
//!     that the node's allocatable CPU and memory are the profile's;
//!   - `max-pods`: one pod per [`MEMORY_PER_POD`] of allocatable memory, between
//!     [`MIN_PODS`] and kubelet's default of [`MAX_PODS`] (a heuristic, so that a 2 GB board is
//!     not offered 110 pods; a real board's kubelet would also default to 110).
//!
//! The labels are set only through `node-labels` and Kind's own per-node `labels` field is
//! not used: Kind passes that field to kubeadm as the same `node-labels` kubelet argument,
//! which the patch would replace with kubeadm's v1beta3 configuration. The patches carry no
//! `apiVersion`, so Kind applies them to whichever kubeadm API version it generates (Kind
//! translates unversioned `kubeletExtraArgs` patches to v1beta4's list form, kind#4173).
//!
//! # Reservations
//!
//! For a host with `C` CPUs and `M` bytes of memory (what kubelet reports as capacity: the
//! online CPUs and `MemTotal` of `/proc/meminfo`) and a board with `c` cores and `m` bytes
//! left to workloads:
//!
//! ```text
//! eviction-hard   = memory.available<100Mi          (kubelet's default threshold)
//! kube-reserved   = cpu=min(100m, C − c), memory=min(256Mi, M − m − 100Mi)
//!                                                   (kubelet and containerd)
//! system-reserved = the rest: cpu=C − c − kube, memory=M − m − 100Mi − kube
//! ```
//!
//! `kube-reserved` takes what the host has to spare, up to a typical kubelet's share, so a
//! 4-core board still fits a 4-CPU host (a CI runner): Kind enforces neither reservation
//! (kubelet enforces node allocatable on pods only), they only size what the scheduler
//! offers. A board bigger than the host (`c > C`, or `m + 100Mi > M`) is an error that names
//! the node, the resource and both figures. The nodes' allocatable figures may add up to more than the
//! host has: each kubelet only knows its own node, so such a cluster is overcommitted, which
//! the generated header says. `eviction-hard` also keeps Kind's own disk thresholds
//! (`nodefs`/`imagefs` at 0%, i.e. off: Kind nodes share the host's disk), because the flag
//! replaces the whole `evictionHard` map of kubelet's configuration.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::profile::ProfileSpec;
use crate::scenario::Plan;
use crate::units::Bytes;

/// The Kind configuration API this module writes.
pub const API_VERSION: &str = "kind.x-k8s.io/v1alpha4";
/// Prefix of every label and taint key edgesim sets.
pub const LABEL_PREFIX: &str = "edgesim.dev/";
/// CPU kept for kubelet and the container runtime on every worker (at most), in millicores.
pub const KUBE_RESERVED_CPU_MILLI: u64 = 100;
/// Memory kept for kubelet and the container runtime on every worker (at most).
pub const KUBE_RESERVED_MEMORY: u64 = 256 << 20;
/// kubelet's default hard eviction threshold for `memory.available`, set explicitly because
/// the reservation arithmetic depends on it.
pub const EVICTION_MEMORY: u64 = 100 << 20;
/// Allocatable memory per pod for `max-pods`.
pub const MEMORY_PER_POD: u64 = 64 << 20;
/// Fewest pods a worker is allowed.
pub const MIN_PODS: u64 = 8;
/// Most pods a worker is allowed (kubelet's default `maxPods`).
pub const MAX_PODS: u64 = 110;
/// The taint of workers whose board has a GPU.
pub const GPU_TAINT: &str = "nvidia.com/gpu=present:NoSchedule";
/// The extended resource a GPU board's node advertises (and the key of its taint).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Longest name Kind gives a node container: `<cluster>-control-plane` must be a DNS label.
const MAX_NODE_NAME: usize = 63;

/// What the kubelets of the Kind nodes see of the host (every node sees all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Online CPUs.
    pub cpus: u32,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory: u64,
}

impl Host {
    /// This machine: its online CPUs and `MemTotal`, or `None` when either cannot be read.
    pub fn detect() -> Option<Host> {
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)?;
        let memory = crate::profile::calibrate::mem_total()?;
        Some(Host { cpus, memory })
    }
}

/// A failure to generate a configuration.
#[derive(Debug, thiserror::Error)]
pub enum KindConfigError {
    /// `need` says what the board needs and what the host has.
    #[error(
        "node `{node}` (profile `{profile}`) {need}: a Kind node cannot advertise more than the host it runs on (use a larger host, or a smaller profile)"
    )]
    ProfileTooBig {
        node: String,
        profile: String,
        need: String,
    },
    #[error(
        "the Kind cluster name `{name}` is too long: its node `{name}-control-plane` must be at most {MAX_NODE_NAME} characters (shorten the scenario's name)"
    )]
    NameTooLong { name: String },
    #[error("writing the Kind configuration as YAML: {0}")]
    Yaml(String),
}

/// What kubelet reserves on one worker, and what that leaves allocatable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub kube_cpu_milli: u64,
    pub kube_memory: u64,
    pub system_cpu_milli: u64,
    pub system_memory: u64,
    pub eviction_memory: u64,
    pub allocatable_cpu_milli: u64,
    pub allocatable_memory: u64,
}

impl Reservation {
    /// The `kube-reserved` kubelet argument.
    pub fn kube_reserved(&self) -> String {
        resources(self.kube_cpu_milli, self.kube_memory)
    }
    /// The `system-reserved` kubelet argument.
    pub fn system_reserved(&self) -> String {
        resources(self.system_cpu_milli, self.system_memory)
    }
    /// The `eviction-hard` kubelet argument: the memory threshold the arithmetic counts, and
    /// Kind's disk thresholds (off), which the flag would otherwise drop.
    pub fn eviction_hard(&self) -> String {
        format!(
            "memory.available<{},nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0%",
            Bytes(self.eviction_memory)
        )
    }
    /// The `max-pods` kubelet argument.
    pub fn max_pods(&self) -> u64 {
        (self.allocatable_memory / MEMORY_PER_POD).clamp(MIN_PODS, MAX_PODS)
    }
}

fn resources(cpu_milli: u64, memory: u64) -> String {
    format!("cpu={},memory={}", millicores(cpu_milli), Bytes(memory))
}

/// A CPU quantity as Kubernetes writes it: whole cores without a unit, else millicores.
fn millicores(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

/// The reservations that make a worker on `host` advertise the CPU cores of `spec` and the
/// memory it leaves its workloads (`total − reserved`). `node` names the node in errors.
pub fn reservation(
    node: &str,
    profile: &str,
    spec: &ProfileSpec,
    host: &Host,
) -> Result<Reservation, KindConfigError> {
    let cpu = u64::from(spec.cpu.cores) * 1000;
    let memory = spec.workload_memory().0;
    let host_cpu = u64::from(host.cpus) * 1000;
    let too_big = |resource: &str, need: String, overhead: &str, have: String| {
        KindConfigError::ProfileTooBig {
            node: node.into(),
            profile: profile.into(),
            need: format!("needs {need} {resource} allocatable{overhead}, but the host has {have}"),
        }
    };
    // What the host has beyond the board: kubelet's share first, the rest for the system.
    let spare_cpu = host_cpu
        .checked_sub(cpu)
        .ok_or_else(|| too_big("CPUs", millicores(cpu), "", millicores(host_cpu)))?;
    let spare_memory = host
        .memory
        .checked_sub(memory + EVICTION_MEMORY)
        .ok_or_else(|| {
            too_big(
                "memory",
                Bytes(memory).to_string(),
                &format!(
                    " plus kubelet's eviction threshold of {}",
                    Bytes(EVICTION_MEMORY)
                ),
                Bytes(host.memory).to_string(),
            )
        })?;
    let kube_cpu_milli = spare_cpu.min(KUBE_RESERVED_CPU_MILLI);
    let kube_memory = spare_memory.min(KUBE_RESERVED_MEMORY);
    Ok(Reservation {
        kube_cpu_milli,
        kube_memory,
        system_cpu_milli: spare_cpu - kube_cpu_milli,
        system_memory: spare_memory - kube_memory,
        eviction_memory: EVICTION_MEMORY,
        allocatable_cpu_milli: cpu,
        allocatable_memory: memory,
    })
}

/// A Kind cluster configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub name: String,
    pub nodes: Vec<KindNode>,
}

/// One node of a Kind cluster.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindNode {
    pub role: Role,
    /// Strategic-merge patches of the kubeadm configuration Kind generates for this node,
    /// each a YAML document.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kubeadm_config_patches: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

/// The kubeadm objects the patches touch: only their `nodeRegistration`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationPatch {
    kind: &'static str,
    node_registration: NodeRegistration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeRegistration {
    kubelet_extra_args: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    taints: Vec<Taint>,
}

#[derive(Serialize)]
struct Taint {
    key: &'static str,
    effect: &'static str,
}

/// One worker as generated, for the header and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub node: String,
    pub profile: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub reservation: Reservation,
}

/// A generated configuration: the cluster and, per scenario node, its worker.
#[derive(Debug, Clone)]
pub struct Generated {
    pub cluster: Cluster,
    pub workers: Vec<Worker>,
    pub host: Host,
}

/// The name of the Kind cluster of a scenario.
pub fn cluster_name(plan: &Plan) -> String {
    format!("edgesim-{}", plan.name)
}

/// The labels a worker for scenario node `i` of `plan` carries.
pub fn node_labels(plan: &Plan, i: usize) -> BTreeMap<String, String> {
    let n = &plan.nodes[i];
    let mut l = BTreeMap::new();
    let mut put = |k: &str, v: String| l.insert(format!("{LABEL_PREFIX}{k}"), v);
    put("node", n.name.clone());
    put("profile", n.profile_name.clone());
    put("site", plan.sites[n.site].name.clone());
    put("arch", n.profile.arch.to_string());
    if let Some(g) = &n.profile.gpu {
        put("gpu", g.vendor.clone());
    }
    l
}

fn joined(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// YAML as serde-saphyr writes it, except that long one-line strings (`node-labels`) stay on
/// one line instead of becoming folded (`>-`) scalars: equal to YAML parsers, easier to read
/// and to grep.
fn to_yaml<T: Serialize>(value: &T) -> Result<String, KindConfigError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = 1 << 20;
    serde_saphyr::to_string_with_options(value, options)
        .map_err(|e| KindConfigError::Yaml(e.to_string()))
}

/// The Kind configuration of `plan` for `host`.
pub fn generate(plan: &Plan, host: &Host) -> Result<Generated, KindConfigError> {
    let name = cluster_name(plan);
    if name.len() + "-control-plane".len() > MAX_NODE_NAME {
        return Err(KindConfigError::NameTooLong { name });
    }
    let control_plane = RegistrationPatch {
        kind: "InitConfiguration",
        node_registration: NodeRegistration {
            kubelet_extra_args: BTreeMap::from([(
                "node-labels",
                format!("{LABEL_PREFIX}role=control-plane"),
            )]),
            taints: vec![Taint {
                key: "node-role.kubernetes.io/control-plane",
                effect: "NoSchedule",
            }],
        },
    };
    let mut nodes = vec![KindNode {
        role: Role::ControlPlane,
        kubeadm_config_patches: vec![to_yaml(&control_plane)?],
    }];
    let mut workers = Vec::with_capacity(plan.nodes.len());
    for (i, n) in plan.nodes.iter().enumerate() {
        let r = reservation(&n.name, &n.profile_name, &n.profile, host)?;
        let labels = node_labels(plan, i);
        let taints: Vec<String> = n
            .profile
            .gpu
            .as_ref()
            .map(|_| GPU_TAINT.to_string())
            .into_iter()
            .collect();
        let mut args = BTreeMap::from([
            ("node-labels", joined(&labels)),
            ("kube-reserved", r.kube_reserved()),
            ("system-reserved", r.system_reserved()),
            ("eviction-hard", r.eviction_hard()),
            ("max-pods", r.max_pods().to_string()),
        ]);
        if !taints.is_empty() {
            args.insert("register-with-taints", taints.join(","));
        }
        let patch = RegistrationPatch {
            kind: "JoinConfiguration",
            node_registration: NodeRegistration {
                kubelet_extra_args: args,
                taints: Vec::new(),
            },
        };
        nodes.push(KindNode {
            role: Role::Worker,
            kubeadm_config_patches: vec![to_yaml(&patch)?],
        });
        workers.push(Worker {
            node: n.name.clone(),
            profile: n.profile_name.clone(),
            labels,
            taints,
            reservation: r,
        });
    }
    Ok(Generated {
        cluster: Cluster {
            kind: "Cluster",
            api_version: API_VERSION,
            name,
            nodes,
        },
        workers,
        host: *host,
    })
}

impl Generated {
    /// The configuration as a YAML file: a header comment (what it was generated from, for
    /// which host, what each worker advertises) and the document.
    pub fn to_yaml(&self, source: &str, command: &str) -> Result<String, KindConfigError> {
        let body = to_yaml(&self.cluster)?;
        let mut h = String::new();
        let _ = writeln!(
            h,
            "# Kind cluster for {source}, generated by edgesim; do not edit."
        );
        let _ = writeln!(h, "# Regenerate: {command}");
        let _ = writeln!(
            h,
            "# Host (what each node's kubelet sees as capacity): {} CPUs, {} memory.",
            self.host.cpus,
            Bytes(self.host.memory)
        );
        let _ = writeln!(
            h,
            "# Node 1 is the control plane (tainted NoSchedule, never impaired); then one worker per scenario node:"
        );
        for w in &self.workers {
            let r = &w.reservation;
            let _ = writeln!(
                h,
                "#   {:<12} {:<22} allocatable cpu {}, memory {}{}",
                w.node,
                w.profile,
                millicores(r.allocatable_cpu_milli),
                Bytes(r.allocatable_memory),
                if w.taints.is_empty() {
                    String::new()
                } else {
                    format!(", taint {}", w.taints.join(","))
                }
            );
        }
        let cpu: u64 = self
            .workers
            .iter()
            .map(|w| w.reservation.allocatable_cpu_milli)
            .sum();
        let mem: u64 = self
            .workers
            .iter()
            .map(|w| w.reservation.allocatable_memory)
            .sum();
        if cpu > u64::from(self.host.cpus) * 1000 || mem > self.host.memory {
            let _ = writeln!(
                h,
                "# Overcommitted: the workers advertise {} CPUs and {} in all, more than the host has.",
                millicores(cpu),
                Bytes(mem)
            );
        }
        Ok(format!("{h}{body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileSet;

    const GI: u64 = 1 << 30;

    fn host() -> Host {
        Host {
            cpus: 16,
            memory: 64 * GI,
        }
    }

    fn spec(name: &str) -> ProfileSpec {
        ProfileSet::builtin().unwrap().get(name).unwrap().clone()
    }

    fn plan(text: &str) -> Plan {
        crate::testing::plan_of(text, "kind")
    }

    const SCENARIO: &str = r#"
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: kindtest}
spec:
  seed: 1
  duration: 10s
  sites:
    cloud: {}
    factory: {uplink: {site: cloud, delay: 20ms}}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, count: 2, site: factory, profile: raspberry-pi-5-4gb}
    - {name: orin, site: factory, profile: jetson-orin-nx-16gb}
"#;

    #[test]
    fn reservations_leave_exactly_the_profile_allocatable() {
        let h = host();
        for name in [
            "raspberry-pi-5-4gb",
            "raspberry-pi-5-8gb",
            "jetson-agx-orin-64gb",
            "cloud-small",
        ] {
            let s = spec(name);
            if s.workload_memory().0 + KUBE_RESERVED_MEMORY + EVICTION_MEMORY > h.memory {
                continue;
            }
            let r = reservation("n", name, &s, &h).unwrap();
            // kubelet: allocatable = capacity − kube-reserved − system-reserved − eviction.
            assert_eq!(
                u64::from(h.cpus) * 1000 - r.kube_cpu_milli - r.system_cpu_milli,
                u64::from(s.cpu.cores) * 1000,
                "{name}"
            );
            assert_eq!(
                h.memory - r.kube_memory - r.system_memory - r.eviction_memory,
                s.memory.total.0 - s.memory.reserved.0,
                "{name}"
            );
        }
        let r = reservation("gw", "raspberry-pi-5-8gb", &spec("raspberry-pi-5-8gb"), &h).unwrap();
        // 16 − 4 − 0.1 CPUs; 64Gi − (8Gi − 640Mi) − 256Mi − 100Mi.
        assert_eq!(r.system_reserved(), "cpu=11900m,memory=57628Mi");
        assert_eq!(r.kube_reserved(), "cpu=100m,memory=256Mi");
        assert_eq!(
            r.eviction_hard(),
            "memory.available<100Mi,nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0%"
        );
        // 7552Mi / 64Mi = 118, capped at kubelet's default.
        assert_eq!(r.max_pods(), 110);
        let small =
            reservation("gw", "raspberry-pi-5-4gb", &spec("raspberry-pi-5-4gb"), &h).unwrap();
        assert_eq!(small.max_pods(), (4096 - 576) / 64);
    }

    #[test]
    fn a_profile_bigger_than_the_host_is_refused_with_both_figures() {
        let agx = spec("jetson-agx-orin-64gb");
        // Memory: 61.5Gi for workloads does not fit in 32Gi.
        let e = reservation(
            "orin",
            "jetson-agx-orin-64gb",
            &agx,
            &Host {
                cpus: 64,
                memory: 32 * GI,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("node `orin` (profile `jetson-agx-orin-64gb`)"),
            "{e}"
        );
        assert!(
            e.contains(
                "needs 62976Mi memory allocatable plus kubelet's eviction threshold of 100Mi"
            ),
            "{e}"
        );
        assert!(e.contains("the host has 32Gi"), "{e}");
        // CPU: 12 cores do not fit in 8 CPUs, although the memory would.
        let e = reservation(
            "orin",
            "jetson-agx-orin-64gb",
            &agx,
            &Host {
                cpus: 8,
                memory: 128 * GI,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("needs 12 CPUs allocatable, but the host has 8"),
            "{e}"
        );
        // Exactly enough is enough: kubelet's share shrinks to what is spare (none here).
        let fits = Host {
            cpus: 12,
            memory: agx.workload_memory().0 + EVICTION_MEMORY,
        };
        let r = reservation("orin", "jetson-agx-orin-64gb", &agx, &fits).unwrap();
        assert_eq!(
            (
                r.kube_cpu_milli,
                r.kube_memory,
                r.system_cpu_milli,
                r.system_memory
            ),
            (0, 0, 0, 0)
        );
        // A 4-core Pi on a 4-CPU runner with 16 GB: fits, kubelet gets no CPU share.
        let pi = spec("raspberry-pi-5-8gb");
        let r = reservation(
            "gw",
            "raspberry-pi-5-8gb",
            &pi,
            &Host {
                cpus: 4,
                memory: 16 * GI,
            },
        )
        .unwrap();
        assert_eq!(r.kube_reserved(), "cpu=0,memory=256Mi");
        assert_eq!(r.system_reserved(), "cpu=0,memory=8476Mi");
        // And generate reports the first node that does not fit.
        let e = generate(
            &plan(SCENARIO),
            &Host {
                cpus: 2,
                memory: 64 * GI,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("node `gw-1`"), "{e}");
    }

    #[test]
    fn workers_carry_their_labels_and_only_gpu_boards_the_gpu_taint() {
        let g = generate(&plan(SCENARIO), &host()).unwrap();
        assert_eq!(g.cluster.name, "edgesim-kindtest");
        let roles: Vec<Role> = g.cluster.nodes.iter().map(|n| n.role).collect();
        assert_eq!(
            roles,
            [
                Role::ControlPlane,
                Role::Worker,
                Role::Worker,
                Role::Worker,
                Role::Worker
            ]
        );
        let names: Vec<&str> = g.workers.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(names, ["sink", "gw-1", "gw-2", "orin"]);
        let gw = &g.workers[1];
        assert_eq!(
            gw.labels,
            BTreeMap::from([
                ("edgesim.dev/arch".to_string(), "arm64".to_string()),
                ("edgesim.dev/node".to_string(), "gw-1".to_string()),
                (
                    "edgesim.dev/profile".to_string(),
                    "raspberry-pi-5-4gb".to_string()
                ),
                ("edgesim.dev/site".to_string(), "factory".to_string()),
            ])
        );
        assert_eq!(g.workers[0].labels["edgesim.dev/arch"], "amd64");
        assert_eq!(g.workers[3].labels["edgesim.dev/gpu"], "nvidia");
        for w in &g.workers {
            let gpu = w.profile.starts_with("jetson");
            assert_eq!(
                w.taints,
                if gpu {
                    vec![GPU_TAINT.to_string()]
                } else {
                    vec![]
                },
                "{}",
                w.node
            );
            assert!(!w.labels.contains_key("kubernetes.io/arch"));
        }
        // The patches as Kind reads them: parse them back.
        let patch = |i: usize| -> serde_json::Value {
            serde_saphyr::from_str(&g.cluster.nodes[i].kubeadm_config_patches[0]).unwrap()
        };
        let cp = patch(0);
        assert_eq!(cp["kind"], "InitConfiguration");
        assert_eq!(
            cp["nodeRegistration"]["taints"][0]["key"],
            "node-role.kubernetes.io/control-plane"
        );
        let orin = patch(4);
        assert_eq!(orin["kind"], "JoinConfiguration");
        let args = &orin["nodeRegistration"]["kubeletExtraArgs"];
        assert_eq!(args["register-with-taints"], GPU_TAINT);
        assert_eq!(
            args["node-labels"],
            "edgesim.dev/arch=arm64,edgesim.dev/gpu=nvidia,edgesim.dev/node=orin,edgesim.dev/profile=jetson-orin-nx-16gb,edgesim.dev/site=factory"
        );
        assert!(
            patch(2)["nodeRegistration"]["kubeletExtraArgs"]
                .get("register-with-taints")
                .is_none()
        );
    }

    #[test]
    fn the_yaml_parses_back_into_the_same_configuration() {
        let g = generate(&plan(SCENARIO), &host()).unwrap();
        let text = g.to_yaml("s.yaml", "edgesim kind-config s.yaml").unwrap();
        assert!(text.starts_with("# Kind cluster for s.yaml"), "{text}");
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "Cluster");
        assert_eq!(v["nodes"].as_array().unwrap().len(), 5);
        assert_eq!(v["nodes"][0]["role"], "control-plane");
        assert_eq!(v["nodes"][1]["role"], "worker");
        let patch: serde_json::Value =
            serde_saphyr::from_str(v["nodes"][1]["kubeadmConfigPatches"][0].as_str().unwrap())
                .unwrap();
        assert_eq!(
            patch["nodeRegistration"]["kubeletExtraArgs"]["system-reserved"],
            g.workers[0].reservation.system_reserved()
        );
        // The workers advertise 2 + 4 + 4 + 8 = 18 CPUs on a 16-CPU host: the header says so.
        assert!(
            text.contains("# Overcommitted: the workers advertise 18 CPUs"),
            "{text}"
        );
        let roomy = generate(
            &plan(SCENARIO),
            &Host {
                cpus: 32,
                memory: 64 * GI,
            },
        )
        .unwrap()
        .to_yaml("s.yaml", "x")
        .unwrap();
        assert!(!roomy.contains("Overcommitted"), "{roomy}");
    }
}
