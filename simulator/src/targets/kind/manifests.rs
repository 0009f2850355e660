//! What the kind target delivers through Flux: a scenario's workloads as Kubernetes objects
//! (the artifact's content), and the Flux objects that make the cluster pull and apply it.
//!
//! # Design
//!
//! - **One Pod per instance.** A scenario's instance is "workload `w` on node `n`", with a
//!   restart policy of its own; a bare Pod says exactly that — `nodeSelector:
//!   edgesim.dev/node=<n>` (the label [`super::config`] gives each worker), `restartPolicy`
//!   from the workload's (`never` → `Never`, `on-failure` → `OnFailure`, `always` → `Always`) —
//!   where a Deployment would force `Always` and a DaemonSet would not pin one node. Pods are
//!   immutable, so the Kustomization sets `force: true` (a changed pod is recreated).
//!   `restartDelay` cannot be set per pod: kubelet's own back-off (10 s, doubling) applies.
//! - **The node's network is the pod's** (`hostNetwork: true`): on the netns and docker
//!   targets all workloads of a node share the node's network namespace, its address and its
//!   ports, and so they do here, in the Kind node container. That is also what makes the
//!   node-level faults of [`super::nodes`] (rules by node address) apply to the workloads'
//!   traffic: between hostNetwork pods, packets carry node addresses, with no pod-network
//!   hop that the rules would not see.
//! - **Names resolve as on every target**: `hostAliases` map every scenario node's name to
//!   its cluster address (kubelet writes them into hostNetwork pods' `/etc/hosts` too), and
//!   the `EDGESIM_*` environment carries the same addresses ([`RunState::node_env`] of a state
//!   whose nodes have their cluster addresses).
//! - **The work folder** (`EDGESIM_WORKDIR`) is an `emptyDir` at `/data`: it survives the
//!   container's restarts, as a board's disk does, and goes with the pod.
//! - **`readyPort`** becomes a TCP readiness probe, so "the Kustomization is healthy" (Flux
//!   waits for every pod Ready) means what `edgesim up` promises on the other targets: every
//!   instance accepts connections.
//! - **GPU boards** carry the `nvidia.com/gpu` taint ([`super::config::GPU_TAINT`]); every
//!   pod placed on one tolerates it (the scenario put it there).
//! - Every object is labelled `edgesim.dev/run=<run>` and lives in the run's namespace
//!   `edgesim-<run>`, which the artifact creates; Flux prunes it all when the Kustomization
//!   goes.
//!
//! The Flux side ([`flux_objects`]) is an `OCIRepository` reading the run's artifact from the
//! registry beside the cluster (tag = the run id, plain HTTP) and a `Kustomization` of its
//! root with `prune`, `wait` and `force`, both in `flux-system`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::scenario::Plan;
use crate::scenario::model::RestartPolicy;
use crate::targets::state::RunState;

use super::config::LABEL_PREFIX;

/// The namespace Flux's controllers and the run's Flux objects live in.
pub const FLUX_NAMESPACE: &str = "flux-system";
/// Where a pod sees its work folder.
pub const WORKDIR_IN: &str = "/data";
/// The label every object of a run carries, with the run id.
pub const RUN_LABEL: &str = "edgesim.dev/run";
/// The field manager of everything edgesim applies.
pub const FIELD_MANAGER: &str = "edgesim";

/// The run's namespace.
pub fn namespace(run_id: &str) -> String {
    format!("edgesim-{run_id}")
}

/// The name of the run's Flux objects (its `OCIRepository` and `Kustomization`).
pub fn flux_name(run_id: &str) -> String {
    format!("edgesim-{run_id}")
}

/// The pod of workload `workload` on node `node`.
pub fn pod_name(workload: &str, node: &str) -> String {
    format!("{workload}-{node}")
}

/// The repository path of a scenario's artifacts in the registry (`edgesim/<scenario>`).
pub fn artifact_repository(plan: &Plan) -> String {
    format!("edgesim/{}", plan.name)
}

/// The image app `app` runs as on a Kind node: its build for this host's architecture (Kind's
/// nodes run the host's; an arm64 board is a node labelled `edgesim.dev/arch=arm64`).
pub fn app_image(app: &str) -> String {
    crate::targets::docker::image_tag(app, crate::profile::Arch::host())
}

/// How long Flux gets to deliver a run's workloads: the longest `readyTimeout` of its
/// workloads and `margin` for the controllers to start, pull the artifact and apply it.
pub fn delivery_timeout(plan: &Plan, margin: Duration) -> Duration {
    plan.workloads
        .iter()
        .map(|w| w.ready_timeout)
        .max()
        .unwrap_or_default()
        + margin
}

/// What one workload runs on the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodImage {
    pub image: String,
    /// `Never` for images loaded into the nodes, `IfNotPresent` for images the nodes may pull.
    pub pull_policy: &'static str,
}

/// The artifact's files, by path relative to its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub files: BTreeMap<String, String>,
}

impl Delivery {
    /// Writes the files under `dir` (created), for `flux push artifact --path`.
    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        for (rel, text) in &self.files {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, text)?;
        }
        Ok(())
    }
}

pub(crate) fn to_yaml(v: &Value) -> String {
    // Serialising a JSON value cannot fail (string keys, no non-finite floats).
    serde_saphyr::to_string(v).unwrap_or_default()
}

fn restart_policy(r: RestartPolicy) -> &'static str {
    match r {
        RestartPolicy::Never => "Never",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Always => "Always",
    }
}

/// A `kustomization.yaml` that lists `resources`.
pub(crate) fn kustomization(resources: &[String]) -> String {
    to_yaml(&json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    }))
}

pub(crate) fn labels(run_id: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(RUN_LABEL.into(), json!(run_id));
    m.insert("app.kubernetes.io/managed-by".into(), json!("edgesim"));
    m
}

/// The pod of instance `wi`@`ni`. `state` holds the nodes with their cluster addresses (its
/// `node_env` is what the pod's environment starts from); `grace` is how long the pod gets
/// between SIGTERM and SIGKILL.
pub fn pod(
    plan: &Plan,
    state: &RunState,
    wi: usize,
    ni: usize,
    image: &PodImage,
    grace: Duration,
) -> Value {
    let w = &plan.workloads[wi];
    let node = &plan.nodes[ni].name;
    let run_id = &state.run_id;
    let mut env: Vec<(String, String)> = state.node_env(ni);
    env.push(("EDGESIM_WORKLOAD".into(), w.name.clone()));
    env.push(("EDGESIM_WORKDIR".into(), WORKDIR_IN.into()));
    env.extend(w.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A later value of a name wins, as in a process environment.
    let mut seen = BTreeMap::new();
    for (i, (k, _)) in env.iter().enumerate() {
        seen.insert(k.clone(), i);
    }
    let env: Vec<Value> = env
        .iter()
        .enumerate()
        .filter(|(i, (k, _))| seen.get(k) == Some(i))
        .map(|(_, (k, v))| json!({"name": k, "value": v}))
        .collect();
    // One alias entry per address, the names in the plan's order.
    let mut aliases: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for n in &state.nodes {
        aliases.entry(n.addr).or_default().push(n.name.clone());
    }
    let host_aliases: Vec<Value> = aliases
        .iter()
        .map(|(ip, names)| json!({"ip": ip.to_string(), "hostnames": names}))
        .collect();
    let mut container = json!({
        "name": w.name,
        "image": image.image,
        "imagePullPolicy": image.pull_policy,
        "env": env,
        "volumeMounts": [{"name": "data", "mountPath": WORKDIR_IN}],
    });
    let args = w.program_args();
    if !args.is_empty() {
        container["args"] = json!(args);
    }
    if let Some(port) = w.ready_port {
        container["readinessProbe"] = json!({
            "tcpSocket": {"port": port},
            "periodSeconds": 1,
            "failureThreshold": 1,
            "timeoutSeconds": 1,
        });
    }
    let mut l = labels(run_id);
    l.insert(format!("{LABEL_PREFIX}workload"), json!(w.name));
    l.insert(format!("{LABEL_PREFIX}node"), json!(node));
    let mut spec = json!({
        "nodeSelector": {format!("{LABEL_PREFIX}node"): node},
        "hostNetwork": true,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "enableServiceLinks": false,
        "hostAliases": host_aliases,
        "restartPolicy": restart_policy(w.restart),
        "terminationGracePeriodSeconds": grace.as_secs().max(1),
        "containers": [container],
        "volumes": [{"name": "data", "emptyDir": {}}],
    });
    if plan.nodes[ni].profile.gpu.is_some() {
        spec["tolerations"] = json!([{
            "key": super::config::GPU_RESOURCE,
            "operator": "Exists",
            "effect": "NoSchedule",
        }]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(&w.name, node),
            "namespace": namespace(run_id),
            "labels": l,
        },
        "spec": spec,
    })
}

/// The run's artifact: its namespace and one pod per instance, with the `kustomization.yaml`
/// that lists them. `image(wi, ni)` is what workload `wi` runs on node `ni`.
pub fn render(
    plan: &Plan,
    state: &RunState,
    image: impl Fn(usize, usize) -> PodImage,
    grace: Duration,
) -> Delivery {
    let mut files = BTreeMap::new();
    let ns = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace(&state.run_id), "labels": labels(&state.run_id)},
    });
    files.insert("namespace.yaml".to_string(), to_yaml(&ns));
    let mut resources = vec!["namespace.yaml".to_string()];
    for (wi, w) in plan.workloads.iter().enumerate() {
        for &ni in &w.nodes {
            let name = pod_name(&w.name, &plan.nodes[ni].name);
            let path = format!("pods/{name}.yaml");
            files.insert(
                path.clone(),
                to_yaml(&pod(plan, state, wi, ni, &image(wi, ni), grace)),
            );
            resources.push(path);
        }
    }
    files.insert("kustomization.yaml".to_string(), kustomization(&resources));
    Delivery { files }
}

/// The run's `OCIRepository`: tag `<run>` of the scenario's artifacts in `registry` (as the
/// cluster reaches it: `host[:port][/path]`), plain HTTP when `insecure`.
pub fn flux_source(plan: &Plan, run_id: &str, registry: &str, insecure: bool) -> Value {
    let mut spec = json!({
        // Reconciled on request (edgesim asks after every push and heal); the interval is
        // only Flux's own safety net.
        "interval": "10m",
        "url": format!("oci://{registry}/{}", artifact_repository(plan)),
        "ref": {"tag": run_id},
    });
    if insecure {
        spec["insecure"] = json!(true);
    }
    json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "OCIRepository",
        "metadata": {"name": flux_name(run_id), "namespace": FLUX_NAMESPACE, "labels": labels(run_id)},
        "spec": spec,
    })
}

/// A `Kustomization` `name` of the run's artifact at `path`, pruned, waited for (every object
/// it applies healthy) within `timeout`, pods recreated when they change (`force`).
pub fn flux_kustomization(run_id: &str, name: &str, path: &str, timeout: Duration) -> Value {
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": FLUX_NAMESPACE, "labels": labels(run_id)},
        "spec": {
            "interval": "10m",
            "retryInterval": "10s",
            "sourceRef": {"kind": "OCIRepository", "name": flux_name(run_id)},
            "path": path,
            "prune": true,
            "wait": true,
            "force": true,
            "timeout": format!("{}s", timeout.as_secs().max(1)),
        },
    })
}

/// Objects as multi-document YAML, for [`super::kube::apply`].
pub fn documents(objects: &[Value]) -> String {
    objects
        .iter()
        .map(to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Flux objects of a run on a Kind cluster edgesim made: the source, at the registry
/// container beside the nodes (`host:port`, plain HTTP), and one `Kustomization` of the
/// artifact's root.
pub fn flux_objects(plan: &Plan, run_id: &str, registry: &str, timeout: Duration) -> String {
    documents(&[
        flux_source(plan, run_id, registry, true),
        flux_kustomization(run_id, &flux_name(run_id), "./", timeout),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::state::{Mode, TargetState};

    const SPEC: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: podgen}
spec:
  seed: 1
  duration: 10s
  sites:
    cloud: {}
    edge: {uplink: {site: cloud, delay: 20ms}}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, count: 2, site: edge, profile: raspberry-pi-5-8gb}
    - {name: orin, site: edge, profile: jetson-orin-nx-16gb}
  workloads:
    - {name: sink, nodes: [sink], app: cloud-sink, restart: always}
    - name: collector
      nodes: ['gw-*']
      app: iot-collector
      args: [--rate, '5']
      env: {SINK_URL: 'http://sink:8080', EDGESIM_SEED: overridden}
      restart: on-failure
    - {name: once, nodes: [orin], image: 'example.com/job:1', restart: never}
";

    fn plan() -> Plan {
        crate::testing::plan_of(SPEC, "kind")
    }

    fn state(plan: &Plan) -> RunState {
        let ks = super::super::nodes::KindState {
            cluster: "edgesim-podgen".into(),
            network: "kind".into(),
            table: "edgesim-abc123".into(),
            containers: vec![],
            created: true,
            kubeconfig: None,
            registry: None,
        };
        let mut st = RunState::new(
            plan,
            "abc123",
            Mode::Run,
            "/tmp/out".into(),
            TargetState::Kind(ks),
        );
        for (i, n) in st.nodes.iter_mut().enumerate() {
            n.addr = Ipv4Addr::new(172, 18, 0, 3 + i as u8);
        }
        st
    }

    fn images() -> impl Fn(usize, usize) -> PodImage {
        let v = [
            PodImage {
                image: "edgesim/cloud-sink:0.1.0-amd64".into(),
                pull_policy: "Never",
            },
            PodImage {
                image: "edgesim/iot-collector:0.1.0-amd64".into(),
                pull_policy: "Never",
            },
            PodImage {
                image: "example.com/job:1".into(),
                pull_policy: "IfNotPresent",
            },
        ];
        move |wi, _| v[wi].clone()
    }

    fn docs(d: &Delivery) -> BTreeMap<String, Value> {
        d.files
            .iter()
            .map(|(k, v)| (k.clone(), serde_saphyr::from_str::<Value>(v).unwrap()))
            .collect()
    }

    #[test]
    fn every_instance_is_a_pod_pinned_to_its_node_on_the_nodes_network() {
        let p = plan();
        let d = docs(&render(&p, &state(&p), images(), Duration::from_secs(5)));
        let k = &d["kustomization.yaml"];
        let resources: Vec<&str> = k["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(
            resources,
            [
                "namespace.yaml",
                "pods/sink-sink.yaml",
                "pods/collector-gw-1.yaml",
                "pods/collector-gw-2.yaml",
                "pods/once-orin.yaml"
            ]
        );
        for r in &resources {
            assert!(d.contains_key(*r), "{r} is listed but not written");
        }
        assert_eq!(d["namespace.yaml"]["metadata"]["name"], "edgesim-abc123");
        let gw2 = &d["pods/collector-gw-2.yaml"];
        assert_eq!(gw2["metadata"]["namespace"], "edgesim-abc123");
        assert_eq!(gw2["metadata"]["labels"][RUN_LABEL], "abc123");
        assert_eq!(gw2["metadata"]["labels"]["edgesim.dev/node"], "gw-2");
        let spec = &gw2["spec"];
        assert_eq!(spec["nodeSelector"]["edgesim.dev/node"], "gw-2");
        assert_eq!(spec["hostNetwork"], true);
        assert_eq!(spec["restartPolicy"], "OnFailure");
        assert_eq!(spec["terminationGracePeriodSeconds"], 5);
        assert!(spec.get("tolerations").is_none());
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "edgesim/iot-collector:0.1.0-amd64");
        assert_eq!(c["imagePullPolicy"], "Never");
        assert_eq!(c["args"], json!(["--rate", "5"]));
        // The apps' default port makes a readiness probe.
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 8080);
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/data");
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        // Names resolve to the cluster's addresses, in /etc/hosts and in the environment.
        let aliases = spec["hostAliases"].as_array().unwrap();
        assert_eq!(aliases.len(), 4);
        assert!(aliases.contains(&json!({"ip": "172.18.0.3", "hostnames": ["sink"]})));
        let env: BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["EDGESIM_NODE"], "gw-2");
        assert_eq!(env["EDGESIM_ADDR"], "172.18.0.5");
        assert_eq!(env["EDGESIM_PEER_SINK"], "172.18.0.3");
        assert_eq!(env["SINK_URL"], "http://sink:8080");
        assert_eq!(env["EDGESIM_WORKDIR"], "/data");
        // The workload's own value of a name wins, and each name appears once.
        assert_eq!(env["EDGESIM_SEED"], "overridden");
        assert_eq!(env.len(), c["env"].as_array().unwrap().len());

        let sink = &d["pods/sink-sink.yaml"]["spec"];
        assert_eq!(sink["restartPolicy"], "Always");
        assert!(sink["containers"][0].get("args").is_none());
    }

    #[test]
    fn a_pod_on_a_gpu_board_tolerates_its_taint_and_a_job_never_restarts() {
        let p = plan();
        let d = docs(&render(&p, &state(&p), images(), Duration::from_secs(5)));
        let spec = &d["pods/once-orin.yaml"]["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        );
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert!(c.get("readinessProbe").is_none(), "{c}");
    }

    /// Kubernetes' own types drop what they do not know: an object that comes back the same
    /// through them has no misspelt or misplaced field.
    #[cfg(feature = "kube")]
    #[test]
    fn every_object_reads_back_the_same_through_kubernetes_own_types() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        let p = plan();
        let d = docs(&render(&p, &state(&p), images(), Duration::from_secs(5)));
        let mut pods = 0;
        for (file, v) in &d {
            let back = match v["kind"].as_str() {
                Some("Pod") => {
                    pods += 1;
                    serde_json::to_value(serde_json::from_value::<Pod>(v.clone()).unwrap())
                }
                Some("Namespace") => {
                    serde_json::to_value(serde_json::from_value::<Namespace>(v.clone()).unwrap())
                }
                _ => continue,
            }
            .unwrap();
            assert_eq!(&back, v, "{file}");
        }
        assert_eq!(pods, 4);
    }

    #[test]
    fn the_flux_objects_read_the_runs_tag_and_wait_for_health() {
        let p = plan();
        let y = flux_objects(
            &p,
            "abc123",
            "edgesim-abc123-registry:5000",
            Duration::from_secs(90),
        );
        let docs: Vec<Value> = serde_saphyr::from_multiple(&y).unwrap();
        assert_eq!(docs.len(), 2);
        let (src, ks) = (&docs[0], &docs[1]);
        assert_eq!(src["kind"], "OCIRepository");
        assert_eq!(src["metadata"]["namespace"], "flux-system");
        assert_eq!(
            src["spec"]["url"],
            "oci://edgesim-abc123-registry:5000/edgesim/podgen"
        );
        assert_eq!(src["spec"]["ref"]["tag"], "abc123");
        assert_eq!(src["spec"]["insecure"], true);
        assert_eq!(ks["kind"], "Kustomization");
        assert_eq!(ks["spec"]["sourceRef"]["name"], src["metadata"]["name"]);
        assert_eq!(ks["spec"]["timeout"], "90s");
        for f in ["prune", "wait", "force"] {
            assert_eq!(ks["spec"][f], true, "{f}");
        }
    }
}
