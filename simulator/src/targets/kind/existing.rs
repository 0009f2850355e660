//! Bring your own cluster (`--kubeconfig FILE --registry REF`): the kind target's delivery on
//! a cluster that already exists — K3s on the boards themselves, or a cloud cluster — where
//! edgesim creates nothing but what the run delivers through Flux.
//!
//! # Design
//!
//! - **Nodes are bound by label.** The node that plays scenario node `gw-1` carries
//!   `edgesim.dev/node=gw-1` (`kubectl label node pi-17 edgesim.dev/node=gw-1`), as the nodes of
//!   a Kind cluster edgesim makes do. Its address is its `InternalIP`, its architecture its
//!   `kubernetes.io/arch`, which must be the profile's (a real board is what it is).
//! - **Shaping is checked, not applied**: every node's allocatable CPU and memory against its
//!   profile (within [`TOLERANCE_CPU_MILLI`] and [`TOLERANCE_MEMORY_FRACTION`]: a real node
//!   reserves what its distribution reserves), every mismatch reported before anything changes.
//! - **Images** go to the user's registry (`--registry`, reachable from this machine and from
//!   the nodes; `PUSH=PULL` where they reach it under different names): the apps' and the
//!   agent's static images for each architecture the nodes have, as
//!   `<registry>/edgesim/<name>:<version>-<arch>`; the artifact as
//!   `<registry>/edgesim/<scenario>:<run>`. `http://` before the cluster's side means plain
//!   HTTP (Flux's `insecure`; the nodes' container runtime must allow it too).
//! - **Faults come from edgesim's agent, delivered through Flux**: a DaemonSet per
//!   architecture on the host network of the scenario's nodes, holding the capabilities the
//!   agent uses on a board (CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN) ([`agent_files`], in a
//!   namespace of its own, `edgesim-<run>-agents`, with a Kustomization of its own delivered
//!   before the workloads'), whose pods idle until the controller execs `/edgesim agent` in
//!   each (the API server's exec stream carries the agent protocol, as SSH does for the device
//!   target). The agents get each node's whole desired state after every action, a heartbeat
//!   every second, and revert everything by themselves when the controller's stream ends or
//!   falls silent for the lease (the same lease as on boards). The kubelet ↔ API server
//!   traffic — which carries that stream — is exempt from every fault ([`exempt_flows`]: the
//!   API server's endpoints, from the `kubernetes` Service's EndpointSlice).
//! - **Probes and metrics** run on the nodes, through their agents, as on boards.
//! - **What it cannot do**: freeze a node, signal a pod's container, or change a node's CPU or
//!   memory (a cluster's nodes are its own; restart and poweroff work through the API);
//!   validation refuses those actions before anything is created.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use crate::host::nft::Flow;
use crate::profile::Arch;
use crate::scenario::Plan;

use super::config::LABEL_PREFIX;
use super::manifests::{self, RUN_LABEL};
use super::nodes::KUBELET_PORT;

/// How far a node's allocatable CPU may be from its profile's cores.
pub const TOLERANCE_CPU_MILLI: u64 = 500;
/// How far a node's allocatable memory may be from its profile's workload memory, as a
/// fraction of the latter.
pub const TOLERANCE_MEMORY_FRACTION: f64 = 0.15;
/// The label of the agents' pods (value: the run id).
pub const AGENT_LABEL: &str = "edgesim.dev/agent";
/// Where the agent keeps its state on the node (a hostPath, so an agent in a new pod finds
/// what one that died left, and reverts it).
pub const AGENT_STATE_DIR: &str = "/run/edgesim";

/// A user's registry, as `--registry` gives it: `REF`, or `PUSH=PULL` where this machine and
/// the cluster reach it under different names (a port-forward, a registry container beside
/// Kind: `localhost:5001=http://kind-registry:5000`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// Where this machine pushes: `host[:port][/path]`.
    pub push: String,
    /// Where the cluster pulls from: `host[:port][/path]`.
    pub pull: String,
    /// The cluster pulls over plain HTTP (`http://` was given).
    pub insecure: bool,
}

/// One side of `--registry`: `host[:port][/path]`, and whether it is plain HTTP.
fn registry_side(whole: &str, s: &str) -> Result<(String, bool), String> {
    let (base, insecure) = match s.split_once("://") {
        None => (s, false),
        Some(("http", rest)) => (rest, true),
        Some(("https" | "oci", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(format!(
                "registry `{whole}`: the scheme {scheme}:// is not a registry's (give host[:port][/path], or http://… for plain HTTP)"
            ));
        }
    };
    let base = base.trim_end_matches('/');
    if base.is_empty() || base.contains(char::is_whitespace) || base.contains('=') {
        return Err(format!(
            "registry `{whole}`: expected host[:port][/path] (or PUSH=PULL), e.g. registry.lan:5000"
        ));
    }
    Ok((base.to_string(), insecure))
}

impl RegistryRef {
    pub fn parse(s: &str) -> Result<RegistryRef, String> {
        let (push, pull) = s.split_once('=').unwrap_or((s, s));
        let (push, _) = registry_side(s, push)?;
        let (pull, insecure) = registry_side(s, pull)?;
        Ok(RegistryRef {
            push,
            pull,
            insecure,
        })
    }

    /// The image `edgesim/<name>:<tag>`, as the cluster pulls it.
    pub fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/edgesim/{name}:{tag}", self.pull)
    }

    /// The same image, as this machine pushes it.
    pub fn push_image(&self, name: &str, tag: &str) -> String {
        format!("{}/edgesim/{name}:{tag}", self.push)
    }
}

/// A cluster node that plays a scenario node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The Node's name.
    pub node: String,
    pub addr: Ipv4Addr,
    pub arch: Arch,
}

fn label<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// Each scenario node's cluster node (by its `edgesim.dev/node` label), or every problem found.
pub fn bind_nodes(nodes: &[Node], plan: &Plan) -> Result<Vec<ClusterNode>, Vec<String>> {
    let key = format!("{LABEL_PREFIX}node");
    let mut bound = Vec::new();
    let mut problems = Vec::new();
    for n in &plan.nodes {
        let found: Vec<&Node> = nodes
            .iter()
            .filter(|k| label(k, &key) == Some(n.name.as_str()))
            .collect();
        let name = |k: &Node| k.metadata.name.clone().unwrap_or_default();
        let k = match found.as_slice() {
            [k] => *k,
            [] => {
                problems.push(format!(
                    "no Node is labelled {key}={0}: label the node that plays it (`kubectl label node NODE {key}={0}`)",
                    n.name
                ));
                continue;
            }
            several => {
                problems.push(format!(
                    "several Nodes are labelled {key}={}: {}",
                    n.name,
                    several
                        .iter()
                        .map(|k| name(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            }
        };
        let addr = k
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| {
                a.iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
            });
        let Some(addr) = addr else {
            problems.push(format!(
                "node {} ({}) has no IPv4 InternalIP",
                name(k),
                n.name
            ));
            continue;
        };
        let arch = label(k, "kubernetes.io/arch")
            .map(str::to_string)
            .or_else(|| {
                k.status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.architecture.clone())
            })
            .unwrap_or_default();
        let arch = match arch.as_str() {
            "amd64" => Arch::Amd64,
            "arm64" => Arch::Arm64,
            other => {
                problems.push(format!(
                    "node {} ({}) is {other:?}: edgesim's agent and apps are built for amd64 and arm64",
                    name(k),
                    n.name
                ));
                continue;
            }
        };
        if arch != n.profile.arch {
            problems.push(format!(
                "node {} ({}) is {arch}, its profile {} is {}",
                name(k),
                n.name,
                n.profile_name,
                n.profile.arch
            ));
            continue;
        }
        bound.push(ClusterNode {
            node: name(k),
            addr,
            arch,
        });
    }
    if problems.is_empty() {
        Ok(bound)
    } else {
        Err(problems)
    }
}

/// The API server's addresses, from the `kubernetes` Service's EndpointSlices: what kubelets
/// (and so the agents' exec streams) talk to.
pub fn api_server_addrs(slices: &[EndpointSlice]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let ports: Vec<u16> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
            .collect();
        for e in &s.endpoints {
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.extend(ports.iter().map(|&p| SocketAddr::new(ip, p)));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The connections of node `node` that no fault may touch: its kubelet's to the API server
/// (any local port) and the API server's to its kubelet, both ways.
pub fn exempt_flows(node: Ipv4Addr, api: &[SocketAddr]) -> Vec<Flow> {
    let me = |port: u16| SocketAddr::new(IpAddr::V4(node), port);
    api.iter()
        .flat_map(|a| {
            [
                Flow {
                    local: me(0),
                    remote: *a,
                },
                Flow {
                    local: me(KUBELET_PORT),
                    remote: SocketAddr::new(a.ip(), 0),
                },
            ]
        })
        .collect()
}

/// The agents' namespace.
pub fn agents_namespace(run_id: &str) -> String {
    format!("edgesim-{run_id}-agents")
}

/// The agents' part of the artifact (`agents/`, with its own `kustomization.yaml`): their
/// namespace and one DaemonSet per architecture of `nodes`, each on exactly the cluster nodes
/// that play scenario nodes, on the host network with the agent's capabilities, idling until
/// the controller execs
/// the agent. `image` gives the agent's image for an architecture.
pub fn agent_files(
    plan: &Plan,
    run_id: &str,
    nodes: &[ClusterNode],
    image: impl Fn(Arch) -> String,
) -> BTreeMap<String, String> {
    let ns = agents_namespace(run_id);
    let labels = manifests::labels(run_id);
    let mut files = BTreeMap::new();
    files.insert(
        "agents/namespace.yaml".to_string(),
        manifests::to_yaml(&json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels},
        })),
    );
    let mut resources = vec!["namespace.yaml".to_string()];
    let mut archs: Vec<Arch> = nodes.iter().map(|n| n.arch).collect();
    archs.sort_by_key(|a| a.to_string());
    archs.dedup();
    for arch in archs {
        let names: Vec<&str> = plan
            .nodes
            .iter()
            .zip(nodes)
            .filter(|(_, c)| c.arch == arch)
            .map(|(n, _)| n.name.as_str())
            .collect();
        let pod_labels = json!({AGENT_LABEL: run_id, RUN_LABEL: run_id});
        let ds = json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": format!("edgesim-agent-{arch}"), "namespace": ns, "labels": labels},
            "spec": {
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "hostNetwork": true,
                        "dnsPolicy": "ClusterFirstWithHostNet",
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": 2,
                        "nodeSelector": {"kubernetes.io/arch": arch.to_string()},
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [{
                                "key": format!("{LABEL_PREFIX}node"),
                                "operator": "In",
                                "values": names,
                            }]}],
                        }}},
                        // The agent must run wherever a scenario node is, tainted or not.
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": "agent",
                            "image": image(arch),
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/edgesim", "agent-hold"],
                            // What the agent uses on a board (AGENT_CAPS): nftables and tc,
                            // raw sockets for its probes, namespaces. No more.
                            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}},
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                            "volumeMounts": [{"name": "state", "mountPath": AGENT_STATE_DIR}],
                        }],
                        "volumes": [{"name": "state", "hostPath": {"path": AGENT_STATE_DIR, "type": "DirectoryOrCreate"}}],
                    },
                },
            },
        });
        let file = format!("daemonset-{arch}.yaml");
        files.insert(format!("agents/{file}"), manifests::to_yaml(&ds));
        resources.push(file);
    }
    files.insert(
        "agents/kustomization.yaml".to_string(),
        manifests::kustomization(&resources),
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus, NodeSystemInfo};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::Value;

    const SPEC: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: byo}
spec:
  seed: 1
  duration: 10s
  sites:
    cloud: {}
    edge: {uplink: {site: cloud, delay: 20ms}}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, count: 2, site: edge, profile: raspberry-pi-5-8gb}
";

    fn plan() -> Plan {
        crate::testing::plan_of(SPEC, "kind")
    }

    fn node(name: &str, plays: Option<&str>, ip: &str, arch: &str) -> Node {
        let mut labels = BTreeMap::from([("kubernetes.io/arch".to_string(), arch.to_string())]);
        if let Some(p) = plays {
            labels.insert("edgesim.dev/node".into(), p.into());
        }
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                ]),
                node_info: Some(NodeSystemInfo {
                    architecture: arch.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scenario_nodes_bind_to_cluster_nodes_by_label_and_every_problem_is_named() {
        let p = plan();
        let nodes = vec![
            node("vm-1", Some("sink"), "192.168.1.10", "amd64"),
            node("pi-17", Some("gw-1"), "192.168.1.17", "arm64"),
            node("pi-18", Some("gw-2"), "192.168.1.18", "arm64"),
            node("spare", None, "192.168.1.19", "arm64"),
        ];
        let b = bind_nodes(&nodes, &p).unwrap();
        assert_eq!(
            b,
            [
                ClusterNode {
                    node: "vm-1".into(),
                    addr: Ipv4Addr::new(192, 168, 1, 10),
                    arch: Arch::Amd64
                },
                ClusterNode {
                    node: "pi-17".into(),
                    addr: Ipv4Addr::new(192, 168, 1, 17),
                    arch: Arch::Arm64
                },
                ClusterNode {
                    node: "pi-18".into(),
                    addr: Ipv4Addr::new(192, 168, 1, 18),
                    arch: Arch::Arm64
                },
            ]
        );
        let wrong = vec![
            node("vm-1", Some("sink"), "192.168.1.10", "arm64"),
            node("pi-17", Some("gw-1"), "192.168.1.17", "arm64"),
            node("pi-99", Some("gw-1"), "192.168.1.99", "arm64"),
        ];
        let e = bind_nodes(&wrong, &p).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("vm-1") && e[0].contains("arm64") && e[0].contains("cloud-small"));
        assert!(e[1].contains("several") && e[1].contains("pi-17, pi-99"));
        assert!(e[2].contains("edgesim.dev/node=gw-2"));
    }

    #[test]
    fn the_kubelet_and_api_server_traffic_is_exempt_both_ways() {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec!["192.168.1.10".into()],
                ..Default::default()
            }],
            ports: Some(vec![EndpointPort {
                port: Some(6443),
                ..Default::default()
            }]),
            metadata: Default::default(),
        };
        let api = api_server_addrs(&[slice]);
        assert_eq!(api, ["192.168.1.10:6443".parse().unwrap()]);
        let f = exempt_flows(Ipv4Addr::new(192, 168, 1, 17), &api);
        assert_eq!(
            f,
            [
                Flow {
                    local: "192.168.1.17:0".parse().unwrap(),
                    remote: "192.168.1.10:6443".parse().unwrap()
                },
                Flow {
                    local: "192.168.1.17:10250".parse().unwrap(),
                    remote: "192.168.1.10:0".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn one_agent_daemonset_per_architecture_with_the_agents_capabilities_on_the_scenarios_nodes() {
        use k8s_openapi::api::apps::v1::DaemonSet;
        let p = plan();
        let nodes = bind_nodes(
            &[
                node("vm-1", Some("sink"), "192.168.1.10", "amd64"),
                node("pi-17", Some("gw-1"), "192.168.1.17", "arm64"),
                node("pi-18", Some("gw-2"), "192.168.1.18", "arm64"),
            ],
            &p,
        )
        .unwrap();
        let reg = RegistryRef::parse("http://registry.lan:5000/").unwrap();
        assert!(reg.insecure);
        assert_eq!(reg.push, "registry.lan:5000");
        assert_eq!(reg.pull, "registry.lan:5000");
        let split = RegistryRef::parse("localhost:5001=http://kind-registry:5000").unwrap();
        assert_eq!(
            (split.push.as_str(), split.pull.as_str(), split.insecure),
            ("localhost:5001", "kind-registry:5000", true)
        );
        assert_eq!(
            split.push_image("agent", "0.1.0-arm64"),
            "localhost:5001/edgesim/agent:0.1.0-arm64"
        );
        assert_eq!(
            split.image("agent", "0.1.0-arm64"),
            "kind-registry:5000/edgesim/agent:0.1.0-arm64"
        );
        assert!(RegistryRef::parse("a=b=c").is_err());
        let files = agent_files(&p, "r1", &nodes, |a| {
            reg.image("agent", &format!("0.1.0-{a}"))
        });
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "agents/daemonset-amd64.yaml",
                "agents/daemonset-arm64.yaml",
                "agents/kustomization.yaml",
                "agents/namespace.yaml"
            ]
        );
        let v: Value = serde_saphyr::from_str(&files["agents/daemonset-arm64.yaml"]).unwrap();
        // Kubernetes' own type reads it back unchanged: no misspelt field.
        let back =
            serde_json::to_value(serde_json::from_value::<DaemonSet>(v.clone()).unwrap()).unwrap();
        assert_eq!(back, v);
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["nodeSelector"]["kubernetes.io/arch"], "arm64");
        let expr = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(expr["values"], json!(["gw-1", "gw-2"]));
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "registry.lan:5000/edgesim/agent:0.1.0-arm64");
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW", "SYS_ADMIN"])
        );
        assert_eq!(v["metadata"]["namespace"], "edgesim-r1-agents");
        assert!(RegistryRef::parse("ftp://x").is_err());
        assert!(!RegistryRef::parse("ghcr.io/acme").unwrap().insecure);
    }
}
