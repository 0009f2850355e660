//! The Flux and pod half of the kind target, the same on a Kind cluster edgesim made and on a
//! cluster of your own: the run's artifact pushed, delivered by Flux and waited for (how long
//! that took, and again after every heal), the pods as the timeline acts on them (deleted,
//! created again from the delivered manifests), their container statuses as the workloads'
//! events, their logs at the end, and, on a cluster of your own, the run's Flux objects
//! removed again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, LogParams};
use serde_json::Value;

use crate::host::{HostError, Result};
use crate::scenario::Plan;
use crate::workload::{Event, EventKind, EventLog};

use super::config;
use super::existing::agents_namespace;
use super::kube as k;
use super::manifests::{self, FIELD_MANAGER, FLUX_NAMESPACE, RUN_LABEL};
use super::tools;

/// How long pods get between SIGTERM and SIGKILL.
pub const POD_GRACE: Duration = Duration::from_secs(5);
/// How often the pods' statuses are read for the workloads' events.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long the lab waits for Flux to converge after a heal.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// The run's Flux delivery and its pods.
pub struct Workloads {
    client: Client,
    plan: Arc<Plan>,
    run_id: String,
    pub events: EventLog,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// The revision Flux delivered, the Kustomizations that carry it, and the rendered
    /// artifact (restarts and power-ons create its pods again).
    delivered: Option<(String, Vec<String>, manifests::Delivery)>,
    notes: Arc<Mutex<Vec<String>>>,
    converging: Vec<tokio::task::JoinHandle<()>>,
}

impl Workloads {
    pub fn new(client: Client, plan: Arc<Plan>, run_id: &str) -> Workloads {
        Workloads {
            client,
            plan,
            run_id: run_id.to_string(),
            events: EventLog::default(),
            watcher: None,
            delivered: None,
            notes: Arc::default(),
            converging: Vec::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Pushes `delivery` (written under `dir`) as the run's artifact to `url`
    /// (`oci://host:port/repository:<run>`); returns its revision as Flux names it
    /// (`<run>@sha256:…`). A registry that has just started may not listen yet: a few tries.
    pub async fn push(
        &self,
        delivery: &manifests::Delivery,
        dir: &Path,
        url: &str,
    ) -> std::result::Result<String, String> {
        delivery
            .write(dir)
            .map_err(|e| format!("writing the artifact to {}: {e}", dir.display()))?;
        let source = format!("edgesim/{}", self.plan.name);
        let meta = format!("{}@sha1:{}", self.run_id, tree_hash(delivery));
        let mut tries = 0;
        loop {
            match tools::flux_push(url, dir, &source, &meta).await {
                Ok(digest) => return Ok(format!("{}@{digest}", self.run_id)),
                Err(e) if tries >= 10 => return Err(e.to_string()),
                Err(e) => {
                    tracing::debug!("pushing the artifact, try {tries}: {e}");
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Applies the run's Flux `objects` (its source and Kustomizations), asks Flux to
    /// reconcile `kustomizations` now and waits until `revision` is deployed and healthy;
    /// how long that took, also noted for the report as `what`.
    pub async fn deliver(
        &self,
        objects: &[Value],
        kustomizations: &[String],
        revision: &str,
        timeout: Duration,
        what: &str,
    ) -> std::result::Result<Duration, String> {
        k::apply(&self.client, &manifests::documents(objects), FIELD_MANAGER)
            .await
            .map_err(|e| e.to_string())?;
        let took = converge(
            &self.client,
            &self.run_id,
            kustomizations,
            revision,
            timeout,
        )
        .await?;
        self.note(format!(
            "Flux delivered {what} (revision {revision}) in {:.1} s: pushed, reconciled, every object healthy",
            took.as_secs_f64()
        ));
        Ok(took)
    }

    /// The workloads are delivered: remembers what (for restarts) and starts recording the
    /// pods' events.
    pub fn delivered(
        &mut self,
        revision: String,
        kustomizations: Vec<String>,
        delivery: manifests::Delivery,
    ) {
        self.delivered = Some((revision, kustomizations, delivery));
        self.watcher = Some(tokio::spawn(watch_pods(
            self.client.clone(),
            self.plan.clone(),
            self.run_id.clone(),
            self.events.clone(),
        )));
    }

    pub fn note(&self, s: String) {
        tracing::info!("{s}");
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }

    /// What there is to say for the report (delivery and convergence times).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pods of workload `wi` on the nodes `ns` (those it runs on).
    pub fn pod_names(&self, wi: usize, ns: &[usize]) -> Vec<(usize, String)> {
        let w = &self.plan.workloads[wi];
        ns.iter()
            .filter(|n| w.nodes.contains(n))
            .map(|&n| (n, manifests::pod_name(&w.name, &self.plan.nodes[n].name)))
            .collect()
    }

    /// The pods of every workload on `ns`.
    pub fn pods_on(&self, ns: &[usize]) -> Vec<String> {
        (0..self.plan.workloads.len())
            .flat_map(|wi| self.pod_names(wi, ns))
            .map(|(_, p)| p)
            .collect()
    }

    pub fn pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &manifests::namespace(&self.run_id))
    }

    /// Deletes pods and waits until they are gone.
    pub async fn delete_pods(&self, pods: &[String]) -> Result<()> {
        let api = self.pods_api();
        let dp = DeleteParams {
            grace_period_seconds: Some(POD_GRACE.as_secs() as u32),
            ..DeleteParams::default()
        };
        for p in pods {
            match api.delete(p, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(HostError::other("deleting pod", p.clone(), e.to_string())),
            }
        }
        let deadline = tokio::time::Instant::now() + POD_GRACE + Duration::from_secs(30);
        for p in pods {
            loop {
                match api.get_opt(p).await {
                    Ok(None) => break,
                    _ if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {
                        return Err(HostError::other(
                            "deleting pod",
                            p.clone(),
                            "it is still there",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates pods again from the delivered manifests.
    pub async fn create_pods(&self, pods: &[String]) -> Result<()> {
        let Some((_, _, d)) = &self.delivered else {
            return Err(HostError::other(
                "creating pods",
                pods.join(", "),
                "nothing was delivered yet",
            ));
        };
        for p in pods {
            let Some(yaml) = d.files.get(&format!("pods/{p}.yaml")) else {
                continue;
            };
            k::apply(&self.client, yaml, FIELD_MANAGER)
                .await
                .map_err(|e| HostError::other("creating pod", p.clone(), e.to_string()))?;
        }
        Ok(())
    }

    /// Asks Flux to reconcile and records, in the background, how long until the revision
    /// is deployed and healthy again after `what`.
    pub fn measure_convergence(&mut self, what: String) {
        let Some((revision, ks, _)) = &self.delivered else {
            return;
        };
        let (client, revision, ks, notes, run_id) = (
            self.client.clone(),
            revision.clone(),
            ks.clone(),
            self.notes.clone(),
            self.run_id.clone(),
        );
        self.converging.push(tokio::spawn(async move {
            let msg = match converge(&client, &run_id, &ks, &revision, CONVERGE_TIMEOUT).await {
                Ok(d) => format!(
                    "Flux converged {:.1} s after {what} (revision {revision} deployed and healthy again)",
                    d.as_secs_f64()
                ),
                Err(e) => format!("Flux did not converge after {what}: {e}"),
            };
            tracing::info!("{msg}");
            notes.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }));
    }

    /// Stops recording events and measuring convergence.
    pub fn stop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        for c in self.converging.drain(..) {
            c.abort();
        }
    }

    /// Every pod's log into `workloads/<workload>/<node>.stdout.log` (the previous
    /// container's first when it restarted). Nothing when nothing was delivered.
    pub async fn collect_logs(&self, out_dir: &Path) -> Vec<String> {
        if self.delivered.is_none() {
            return Vec::new();
        }
        let api = self.pods_api();
        let mut errors = Vec::new();
        for w in &self.plan.workloads {
            let dir = out_dir.join("workloads").join(&w.name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                errors.push(format!("creating {}: {e}", dir.display()));
                continue;
            }
            for &n in &w.nodes {
                let node = &self.plan.nodes[n].name;
                let pod = manifests::pod_name(&w.name, node);
                let restarted = match api.get_opt(&pod).await {
                    Ok(Some(p)) => restart_count(&p) > 0,
                    // Gone (powered off, never created): nothing to read.
                    _ => continue,
                };
                let mut text = String::new();
                if restarted {
                    let lp = LogParams {
                        previous: true,
                        ..LogParams::default()
                    };
                    if let Ok(prev) = api.logs(&pod, &lp).await {
                        text.push_str(&prev);
                        text.push_str("# edgesim: the container restarted here\n");
                    }
                }
                match api.logs(&pod, &LogParams::default()).await {
                    Ok(cur) => text.push_str(&cur),
                    Err(e) => errors.push(format!("reading the log of pod {pod}: {e}")),
                }
                let file = dir.join(format!("{node}.stdout.log"));
                if let Err(e) = std::fs::write(&file, text) {
                    errors.push(format!("writing {}: {e}", file.display()));
                }
            }
        }
        errors
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A content hash of the artifact (its revision's metadata).
fn tree_hash(d: &manifests::Delivery) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in &d.files {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Requests a reconcile of the run's source and `kustomizations` and waits until `revision`
/// is deployed and healthy; how long that took.
pub async fn converge(
    client: &Client,
    run_id: &str,
    kustomizations: &[String],
    revision: &str,
    timeout: Duration,
) -> std::result::Result<Duration, String> {
    let source = k::SourceRef {
        kind: k::SourceKind::OciRepository,
        namespace: FLUX_NAMESPACE.into(),
        name: manifests::flux_name(run_id),
    };
    let ks: Vec<(&str, &str)> = kustomizations
        .iter()
        .map(|n| (FLUX_NAMESPACE, n.as_str()))
        .collect();
    let start = tokio::time::Instant::now();
    let at = k::request_reconcile_with_source(client, &source, &ks)
        .await
        .map_err(|e| e.to_string())?;
    k::wait_deployed(client, &ks, &source, revision, Some(&at), timeout)
        .await
        .map_err(|d| d.to_string())?;
    Ok(start.elapsed())
}

/// Removes run `run_id`'s Flux objects from a cluster of your own — its Kustomizations first
/// (Flux prunes what they applied: the pods, the agents, their namespaces), then its source —
/// and waits up to `timeout` until the run's namespaces are gone, deleting them itself when
/// Flux did not.
///
/// Guarantees: idempotent; "already gone" is success; keeps going past errors.
pub async fn remove_flux_objects(client: &Client, run_id: &str, timeout: Duration) -> Vec<String> {
    let mut errors = Vec::new();
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let source = k::SourceKind::OciRepository.api_resource();
    for ar in [k::kustomization_resource(), source] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), FLUX_NAMESPACE, &ar);
        match api.delete_collection(&DeleteParams::default(), &lp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => errors.push(format!("deleting the run's {}s: {e}", ar.kind)),
        }
    }
    let namespaces = [manifests::namespace(run_id), agents_namespace(run_id)];
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut forced = BTreeSet::new();
    loop {
        let mut left = Vec::new();
        for ns in &namespaces {
            match api.get_opt(ns).await {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => left.push(ns.clone()),
            }
        }
        if left.is_empty() {
            return errors;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            errors.push(format!(
                "namespaces still there after {timeout:?}: {}",
                left.join(", ")
            ));
            return errors;
        }
        // Halfway, whatever Flux did not prune goes directly.
        if now + timeout / 2 >= deadline {
            for ns in left.iter().filter(|ns| forced.insert((*ns).clone())) {
                match api.delete(ns, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => errors.push(format!("deleting namespace {ns}: {e}")),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// The containerd id of a pod's running container.
pub fn running_container(p: &Pod) -> Option<String> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    c.state.as_ref()?.running.as_ref()?;
    container_id(c.container_id.as_deref()?)
}

/// `containerd://<id>` → `<id>`.
fn container_id(uri: &str) -> Option<String> {
    uri.split_once("://").map(|(_, id)| id.to_string())
}

/// A pod's statuses as last seen: its running container and the containers whose exit was
/// recorded.
#[derive(Default)]
struct Seen {
    running: Option<String>,
    exited: BTreeSet<String>,
}

/// What a pod's status says happened since `seen`, as workload events.
fn pod_events(p: &Pod, seen: &mut Seen) -> Vec<Event> {
    let mut out = Vec::new();
    let Some(c) = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return out;
    };
    let ev = |kind: EventKind| Event {
        t: 0.0,
        workload: String::new(),
        node: String::new(),
        kind,
        pid: None,
        code: None,
        signal: None,
        detail: None,
    };
    let exited = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated,
                  seen: &mut Seen,
                  out: &mut Vec<Event>| {
        let id = t
            .container_id
            .as_deref()
            .and_then(container_id)
            .unwrap_or_default();
        if seen.exited.insert(id) {
            let mut e = ev(EventKind::Exited);
            e.code = Some(t.exit_code);
            e.signal = t.signal;
            e.detail = t.reason.clone();
            out.push(e);
        }
    };
    // An exit not seen while it happened: the previous container's.
    if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        let id = t.container_id.as_deref().and_then(container_id);
        if id.is_some() && id == seen.running {
            exited(t, seen, &mut out);
        }
    }
    let state = c.state.as_ref();
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        exited(t, seen, &mut out);
        seen.running = None;
    }
    if state.and_then(|s| s.running.as_ref()).is_some() {
        let id = c.container_id.as_deref().and_then(container_id);
        if id.is_some() && id != seen.running {
            if seen.running.is_some() || c.restart_count > 0 {
                let mut e = ev(EventKind::Restarting);
                e.detail = Some(format!("restart {} (kubelet)", c.restart_count));
                out.push(e);
            }
            seen.running = id;
            out.push(ev(EventKind::Started));
        }
    }
    out
}

/// Polls the run's pods and records what their containers did.
async fn watch_pods(client: Client, plan: Arc<Plan>, run_id: String, log: EventLog) {
    let api: Api<Pod> = Api::namespaced(client, &manifests::namespace(&run_id));
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let label = |p: &Pod, k: &str| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&format!("{}{k}", config::LABEL_PREFIX)))
            .cloned()
            .unwrap_or_default()
    };
    loop {
        if let Ok(pods) = api.list(&lp).await {
            for p in &pods.items {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                for mut e in pod_events(p, seen.entry(uid).or_default()) {
                    e.workload = label(p, "workload");
                    e.node = label(p, "node");
                    if plan.workloads.iter().any(|w| w.name == e.workload) {
                        log.record_now(e);
                    }
                }
            }
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::mock::{Seen as Call, mock, not_found, resources};
    use super::*;
    use crate::targets::state::RunState;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use serde_json::json;

    fn list(kind: &str, api_version: &str) -> (u16, Value) {
        (
            200,
            json!({"kind": kind, "apiVersion": api_version, "metadata": {}, "items": []}),
        )
    }

    fn namespace(name: &str) -> (u16, Value) {
        (
            200,
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}}),
        )
    }

    const KS: &str = "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations";
    const OCI: &str = "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/ocirepositories";

    #[tokio::test(start_paused = true)]
    async fn a_runs_flux_objects_go_kustomizations_first_and_flux_prunes_its_namespaces() {
        let mut polls = 0;
        let (client, seen) = mock(move |s: &Call| match (s.method.as_str(), s.path.as_str()) {
            ("DELETE", KS) => list("KustomizationList", "kustomize.toolkit.fluxcd.io/v1"),
            ("DELETE", OCI) => list("OCIRepositoryList", "source.toolkit.fluxcd.io/v1"),
            ("GET", "/api/v1/namespaces/edgesim-r1") => {
                polls += 1;
                if polls < 3 {
                    namespace("edgesim-r1")
                } else {
                    not_found("namespaces \"edgesim-r1\"")
                }
            }
            ("GET", "/api/v1/namespaces/edgesim-r1-agents") => not_found("namespace"),
            _ => (500, json!({})),
        });
        let errors = remove_flux_objects(&client, "r1", Duration::from_secs(60)).await;
        drop(client);
        let seen = seen.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let calls: Vec<String> = seen.iter().map(Call::call).collect();
        assert_eq!(calls[0], format!("DELETE {KS}"));
        assert_eq!(calls[1], format!("DELETE {OCI}"));
        for s in &seen[..2] {
            let sel = s.query("labelSelector").unwrap_or_default();
            assert!(sel.contains("edgesim.dev") && sel.ends_with("r1"), "{sel}");
        }
        // Flux pruned the namespaces by itself: they were waited for, not deleted.
        assert_eq!(
            calls
                .iter()
                .filter(|c| *c == "GET /api/v1/namespaces/edgesim-r1")
                .count(),
            3
        );
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("DELETE /api/v1/namespaces")),
            "{calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn namespaces_flux_does_not_prune_are_deleted_halfway_and_named_at_the_end() {
        let (client, seen) = mock(|s: &Call| match (s.method.as_str(), s.path.as_str()) {
            ("DELETE", KS) => list("KustomizationList", "kustomize.toolkit.fluxcd.io/v1"),
            ("DELETE", OCI) => not_found("the resource type"),
            (_, p) if p.starts_with("/api/v1/namespaces/") => {
                namespace(p.rsplit('/').next().unwrap_or_default())
            }
            _ => (500, json!({})),
        });
        let errors = remove_flux_objects(&client, "r1", Duration::from_secs(20)).await;
        drop(client);
        let seen = seen.await.unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("still there") && errors[0].contains("edgesim-r1-agents"),
            "{errors:?}"
        );
        let deletes: Vec<String> = seen
            .iter()
            .map(Call::call)
            .filter(|c| c.starts_with("DELETE /api/v1/namespaces"))
            .collect();
        assert_eq!(
            deletes,
            [
                "DELETE /api/v1/namespaces/edgesim-r1",
                "DELETE /api/v1/namespaces/edgesim-r1-agents"
            ],
            "each once, halfway"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_pod_is_deleted_waited_for_and_applied_again_as_delivered() {
        let spec = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: pods}
spec:
  duration: 10s
  sites: {cloud: {}}
  nodes: [{name: sink, site: cloud, profile: cloud-small}]
  workloads: [{name: sink, nodes: [sink], app: cloud-sink}]
";
        let plan = Arc::new(crate::testing::plan_of(spec, "kind"));
        let pod = "/api/v1/namespaces/edgesim-r1/pods/sink-sink";
        let mut gets = 0;
        let (client, seen) = mock(move |s: &Call| match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/api/v1") => resources("v1", &[("pods", "Pod", true)]),
            ("DELETE", p) if p == pod => (
                200,
                json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "sink-sink"}}),
            ),
            ("GET", p) if p == pod => {
                gets += 1;
                if gets < 2 {
                    (
                        200,
                        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "sink-sink"}}),
                    )
                } else {
                    not_found("pods \"sink-sink\"")
                }
            }
            ("PATCH", p) if p == pod => (200, s.body.clone()),
            _ => (500, json!({})),
        });
        let state = RunState::new(
            &plan,
            "r1",
            crate::targets::state::Mode::Run,
            "/tmp/out".into(),
            crate::targets::state::TargetState::Kind(Default::default()),
        );
        let delivery = manifests::render(
            &plan,
            &state,
            |_, _| manifests::PodImage {
                image: "edgesim/cloud-sink:0.1.0-amd64".into(),
                pull_policy: "Never",
            },
            POD_GRACE,
        );
        let mut w = Workloads::new(client, plan.clone(), "r1");
        assert!(
            w.create_pods(&["sink-sink".into()]).await.is_err(),
            "nothing delivered yet"
        );
        // As `delivered` would, without the watcher (its polls are not this test's).
        w.delivered = Some(("r1@sha256:0".into(), vec![], delivery));
        let pods: Vec<String> = w.pod_names(0, &[0]).into_iter().map(|(_, p)| p).collect();
        assert_eq!(pods, ["sink-sink"]);
        w.delete_pods(&pods).await.unwrap();
        w.create_pods(&pods).await.unwrap();
        drop(w);
        let seen = seen.await.unwrap();
        let del = seen.iter().find(|s| s.method == "DELETE").unwrap();
        assert_eq!(del.body["gracePeriodSeconds"], 5, "{:?}", del.body);
        let patch = seen.iter().find(|s| s.method == "PATCH").unwrap();
        assert_eq!(patch.content_type, "application/apply-patch+yaml");
        assert_eq!(patch.query("fieldManager"), Some("edgesim"));
        assert_eq!(patch.query("force"), Some("true"));
        assert_eq!(
            patch.body["spec"]["nodeSelector"]["edgesim.dev/node"],
            "sink"
        );
        // The delete is waited for before the pod is applied again.
        let order: Vec<&str> = seen
            .iter()
            .filter(|s| s.path == pod)
            .map(|s| s.method.as_str())
            .collect();
        assert_eq!(order, ["DELETE", "GET", "GET", "PATCH"]);
    }

    fn pod(state: ContainerState, id: &str, restarts: i32, last: Option<(&str, i32)>) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "c".into(),
                    container_id: Some(format!("containerd://{id}")),
                    restart_count: restarts,
                    state: Some(state),
                    last_state: last.map(|(id, code)| ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            container_id: Some(format!("containerd://{id}")),
                            exit_code: code,
                            reason: Some("Error".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    #[test]
    fn container_statuses_become_starts_exits_and_restarts_once_each() {
        let mut seen = Seen::default();
        let kinds = |v: Vec<Event>| v.into_iter().map(|e| e.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(pod_events(&pod(running(), "a", 0, None), &mut seen)),
            [EventKind::Started]
        );
        // Seen again: nothing new.
        assert!(pod_events(&pod(running(), "a", 0, None), &mut seen).is_empty());
        // Killed and restarted between two polls: the exit comes from lastState.
        let ev = pod_events(&pod(running(), "b", 1, Some(("a", 137))), &mut seen);
        assert_eq!(
            kinds(ev.clone()),
            [EventKind::Exited, EventKind::Restarting, EventKind::Started]
        );
        assert_eq!(ev[0].code, Some(137));
        assert!(pod_events(&pod(running(), "b", 1, Some(("a", 137))), &mut seen).is_empty());
        // Exited for good (restartPolicy Never).
        let done = ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some("containerd://b".into()),
                exit_code: 0,
                reason: Some("Completed".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ev = pod_events(&pod(done.clone(), "b", 1, Some(("a", 137))), &mut seen);
        assert_eq!(kinds(ev.clone()), [EventKind::Exited]);
        assert_eq!(ev[0].detail.as_deref(), Some("Completed"));
        assert!(pod_events(&pod(done, "b", 1, Some(("a", 137))), &mut seen).is_empty());
        assert_eq!(
            running_container(&pod(running(), "c", 0, None)).as_deref(),
            Some("c")
        );
    }
}
