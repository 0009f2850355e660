//! The Kubernetes API half of the kind target: applying manifests (Flux's own install
//! included), asking Flux to reconcile now, waiting until a revision is deployed and healthy,
//! advertising a fake `nvidia.com/gpu` on GPU boards, and checking that every node's
//! allocatable CPU and memory are its profile's.
//!
//! # Design
//!
//! Everything goes through a [`kube::Client`], so the logic is tested against kube's
//! `tower-test` mock (no API server runs in unit tests); the live path runs in the nightly
//! end-to-end job. Flux objects are read as [`DynamicObject`]s with small lenient status
//! structs: the kopium-generated Flux crates lag kube by two major versions.
//!
//! - **Apply** is server-side apply (`PatchParams::apply(manager).force()`), one object at a
//!   time, in document order, except that CustomResourceDefinitions go first and the rest waits
//!   until each is `Established`: `flux install --export` lists the CRDs beside objects of the
//!   kinds they define, and an API server knows a kind only once its CRD is established.
//!   Kinds are resolved through discovery of their group version alone
//!   ([`discovery::pinned_group`]), cached per group version within a phase; the cache is
//!   dropped after the CRDs, which is the "re-run discovery" step.
//! - **"Deployed and healthy"** is kustomize-controller's own test predicate, not
//!   `kubectl wait --for=condition=Ready` (which ignores `observedGeneration`, so a Ready left
//!   over from an earlier revision passes it): `Ready=True`, the Ready condition's and the
//!   status's `observedGeneration` both equal to `metadata.generation`, and
//!   `lastAppliedRevision == lastAttemptedRevision ==` the revision we pushed. A failure counts
//!   only once the controller has handled *our* reconcile request (`lastHandledReconcileAt`
//!   equals the `reconcile.fluxcd.io/requestedAt` we wrote): before that, a `Ready=False` may
//!   be left from before a partition healed. `Stalled=True` fails at once.
//! - **Waiting** polls (a GET per object per round) instead of watching: a handful of objects,
//!   a clear timeout, and on timeout a [`Diagnosis`] built from the last state seen of every
//!   object that was not ready. API errors while polling count as "not ready yet": after a
//!   heal the API server may answer late.
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::core::GroupVersion;
use kube::discovery::{self, ApiCapabilities, Scope};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{debug, info, instrument};

use super::config::LABEL_PREFIX;

/// The annotation that asks a Flux controller to reconcile now (its value must change).
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// How long [`apply`] waits for each CustomResourceDefinition to become `Established`.
pub const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
const CRD_POLL: Duration = Duration::from_millis(500);
/// How often [`wait_deployed`] reads the Flux objects.
pub const DEPLOY_POLL: Duration = Duration::from_secs(2);
pub use super::config::GPU_RESOURCE;

/// Reasons of a `Ready=False` condition that mean the attempt failed (kustomize-controller's
/// `meta` reasons), as opposed to `DependencyNotReady` or `Progressing`, which are waits.
const FAILURE_REASONS: &[&str] = &[
    "BuildFailed",
    "HealthCheckFailed",
    "ArtifactFailed",
    "PruneFailed",
    "ReconciliationFailed",
];

/// A failed call to the Kubernetes API, or manifests it cannot take.
#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("reading the manifests as YAML: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    #[error("manifest document {index}: {problem}")]
    Document { index: usize, problem: String },
    #[error("discovering the kinds of {api_version} on the API server")]
    Discovery {
        api_version: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "the API server serves no {kind} in {api_version} (is its CustomResourceDefinition installed?)"
    )]
    UnknownKind { api_version: String, kind: String },
    /// A call about one object failed: `doing` says which call, `object` which object.
    #[error("{doing} {object}")]
    Call {
        doing: &'static str,
        object: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("CustomResourceDefinition {name} was not Established after {waited:?} ({conditions})")]
    NotEstablished {
        name: String,
        waited: Duration,
        conditions: String,
    },
}

fn call_error(
    doing: &'static str,
    object: impl fmt::Display,
) -> impl FnOnce(kube::Error) -> KubeApiError {
    move |e| KubeApiError::Call {
        doing,
        object: object.to_string(),
        source: Box::new(e),
    }
}

/// An object [`apply`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRef {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for AppliedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One document of the manifests, with the fields every object needs.
struct Manifest {
    api_version: String,
    kind: String,
    name: String,
    object: DynamicObject,
}

/// Reads multi-document YAML as objects, skipping empty documents.
fn documents(yaml: &str) -> Result<Vec<Manifest>, KubeApiError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| KubeApiError::Yaml(Box::new(e)))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, doc)| {
            let problem = |problem: &str| KubeApiError::Document {
                index: i + 1,
                problem: problem.to_string(),
            };
            let object: DynamicObject =
                serde_json::from_value(doc).map_err(|e| problem(&e.to_string()))?;
            let types = object
                .types
                .clone()
                .ok_or_else(|| problem("no apiVersion and kind"))?;
            let name = object
                .metadata
                .name
                .clone()
                .ok_or_else(|| problem("no metadata.name"))?;
            Ok(Manifest {
                api_version: types.api_version,
                kind: types.kind,
                name,
                object,
            })
        })
        .collect()
}

fn is_crd(m: &Manifest) -> bool {
    m.kind == "CustomResourceDefinition" && m.api_version.starts_with("apiextensions.k8s.io/")
}

/// Kinds resolved through discovery, one request per group version.
struct Resolver<'a> {
    client: &'a Client,
    groups: HashMap<GroupVersion, Vec<(ApiResource, ApiCapabilities)>>,
}

impl<'a> Resolver<'a> {
    fn new(client: &'a Client) -> Self {
        Resolver {
            client,
            groups: HashMap::new(),
        }
    }

    async fn resolve(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, ApiCapabilities), KubeApiError> {
        let unknown = || KubeApiError::UnknownKind {
            api_version: api_version.into(),
            kind: kind.into(),
        };
        let gv: GroupVersion = api_version.parse().map_err(|_| unknown())?;
        if !self.groups.contains_key(&gv) {
            let group = discovery::pinned_group(self.client, &gv)
                .await
                .map_err(|e| KubeApiError::Discovery {
                    api_version: api_version.into(),
                    source: Box::new(e),
                })?;
            self.groups
                .insert(gv.clone(), group.versioned_resources(&gv.version));
        }
        self.groups
            .get(&gv)
            .and_then(|resources| resources.iter().find(|(ar, _)| ar.kind == kind))
            .cloned()
            .ok_or_else(unknown)
    }

    async fn apply(
        &mut self,
        m: &Manifest,
        field_manager: &str,
    ) -> Result<AppliedRef, KubeApiError> {
        let (ar, caps) = self.resolve(&m.api_version, &m.kind).await?;
        let client = self.client.clone();
        let (api, namespace): (Api<DynamicObject>, _) = match caps.scope {
            Scope::Cluster => (Api::all_with(client, &ar), None),
            Scope::Namespaced => {
                let ns = m
                    .object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                (Api::namespaced_with(client, &ns, &ar), Some(ns))
            }
        };
        let applied = AppliedRef {
            api_version: m.api_version.clone(),
            kind: m.kind.clone(),
            namespace,
            name: m.name.clone(),
        };
        api.patch(
            &m.name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&m.object),
        )
        .await
        .map_err(call_error("applying", &applied))?;
        debug!(object = %applied, "applied");
        Ok(applied)
    }
}

/// Applies multi-document YAML with server-side apply, as `field_manager`, taking conflicts
/// over (`force`): CustomResourceDefinitions first, then, once each is `Established`, the
/// rest in document order. Returns what it applied, in the order it did.
///
/// Guarantees: idempotent (applying the same YAML twice changes nothing the second time).
/// Stops at the first object the API server refuses; the objects before it stay applied.
/// Assumes the namespaces of namespaced objects exist or come earlier in the YAML; objects
/// without a namespace go to the client's default namespace.
#[instrument(skip_all, fields(field_manager = %field_manager))]
pub async fn apply(
    client: &Client,
    yaml: &str,
    field_manager: &str,
) -> Result<Vec<AppliedRef>, KubeApiError> {
    let (crds, rest): (Vec<_>, Vec<_>) = documents(yaml)?.into_iter().partition(is_crd);
    let mut applied = Vec::with_capacity(crds.len() + rest.len());
    if !crds.is_empty() {
        let mut resolver = Resolver::new(client);
        for crd in &crds {
            applied.push(resolver.apply(crd, field_manager).await?);
        }
        for crd in &applied {
            let (ar, _) = resolver.resolve(&crd.api_version, &crd.kind).await?;
            wait_established(client, &ar, &crd.name, CRD_ESTABLISHED_TIMEOUT).await?;
        }
        info!(crds = crds.len(), "CustomResourceDefinitions established");
    }
    // A fresh resolver: the kinds the CRDs define exist now.
    let mut resolver = Resolver::new(client);
    for obj in &rest {
        applied.push(resolver.apply(obj, field_manager).await?);
    }
    Ok(applied)
}

async fn wait_established(
    client: &Client,
    crd: &ApiResource,
    name: &str,
    timeout: Duration,
) -> Result<(), KubeApiError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), crd);
    let start = Instant::now();
    loop {
        let obj = api.get(name).await.map_err(call_error(
            "reading",
            format_args!("CustomResourceDefinition {name}"),
        ))?;
        let status = FluxStatus::of(&obj);
        if status
            .condition("Established")
            .is_some_and(|c| c.status == "True")
        {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let conditions = if status.conditions.is_empty() {
                "no conditions".to_string()
            } else {
                status
                    .conditions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(KubeApiError::NotEstablished {
                name: name.into(),
                waited: start.elapsed(),
                conditions,
            });
        }
        tokio::time::sleep(CRD_POLL).await;
    }
}

/// One entry of `status.conditions` (the fields Flux and the API server set; lenient).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: String,
    message: String,
    observed_generation: Option<i64>,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.type_, self.status)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Artifact {
    revision: String,
}

/// The status fields of Flux's Kustomizations and sources (and of CRDs: `conditions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FluxStatus {
    observed_generation: Option<i64>,
    conditions: Vec<Condition>,
    last_applied_revision: Option<String>,
    last_attempted_revision: Option<String>,
    last_handled_reconcile_at: Option<String>,
    artifact: Option<Artifact>,
}

impl FluxStatus {
    /// An object without a readable status reads as one without conditions: not ready yet.
    fn of(obj: &DynamicObject) -> FluxStatus {
        obj.data
            .get("status")
            .and_then(|s| FluxStatus::deserialize(s).ok())
            .unwrap_or_default()
    }

    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Where a Flux object stands with respect to a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Deployed and healthy at `revision`.
    Ready { revision: String },
    /// Not there yet; `reason` says what it waits for, in words.
    Progressing { reason: String },
    /// The controller tried and failed: the condition that says so.
    Failed {
        kind: String,
        name: String,
        condition: String,
        reason: String,
        message: String,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ready { revision } => write!(f, "is ready at {revision}"),
            Health::Progressing { reason } => write!(f, "is not ready: {reason}"),
            Health::Failed {
                condition,
                reason,
                message,
                ..
            } => {
                write!(
                    f,
                    "failed (condition {condition}, reason {reason}): {message}"
                )
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Kustomization,
    Source,
}

/// kustomize-controller's "revision deployed and healthy" predicate for a Kustomization
/// (see the module docs); `requested_at` is the `reconcile.fluxcd.io/requestedAt` value we
/// wrote, if we asked for a reconcile: without one, only `Stalled` counts as a failure.
pub fn kustomization_health(
    obj: &DynamicObject,
    want_revision: &str,
    requested_at: Option<&str>,
) -> Health {
    health(obj, want_revision, requested_at, Flavour::Kustomization)
}

/// The same for a source (OCIRepository, GitRepository): `Ready=True` at the current
/// generation with `status.artifact.revision == want_revision`.
pub fn source_health(
    obj: &DynamicObject,
    want_revision: &str,
    requested_at: Option<&str>,
) -> Health {
    health(obj, want_revision, requested_at, Flavour::Source)
}

fn health(obj: &DynamicObject, want: &str, requested_at: Option<&str>, flavour: Flavour) -> Health {
    let st = FluxStatus::of(obj);
    let failed = |c: &Condition| Health::Failed {
        kind: obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        condition: c.type_.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    };
    let progressing = |reason: String| Health::Progressing { reason };
    if let Some(stalled) = st.condition("Stalled").filter(|c| c.status == "True") {
        return failed(stalled);
    }
    let Some(ready) = st.condition("Ready") else {
        return progressing("no Ready condition yet".into());
    };
    let generation = obj.metadata.generation;
    let show = |g: Option<i64>| g.map_or("none".to_string(), |g| g.to_string());
    if ready.status == "True" {
        if ready.observed_generation != generation {
            return progressing(format!(
                "Ready=True is for generation {}, the object is at generation {}",
                show(ready.observed_generation),
                show(generation)
            ));
        }
        if st.observed_generation != generation {
            return progressing(format!(
                "status.observedGeneration {} is behind metadata.generation {}",
                show(st.observed_generation),
                show(generation)
            ));
        }
        let applied = match flavour {
            Flavour::Kustomization => {
                if st.last_applied_revision != st.last_attempted_revision {
                    return progressing(format!(
                        "attempting revision {} while {} is applied",
                        st.last_attempted_revision.as_deref().unwrap_or("none"),
                        st.last_applied_revision.as_deref().unwrap_or("none")
                    ));
                }
                st.last_applied_revision.as_deref()
            }
            Flavour::Source => st.artifact.as_ref().map(|a| a.revision.as_str()),
        };
        if applied != Some(want) {
            return progressing(format!(
                "Ready at revision {}, waiting for {want}",
                applied.unwrap_or("none")
            ));
        }
        return Health::Ready {
            revision: want.to_string(),
        };
    }
    let handled = requested_at.is_some_and(|r| st.last_handled_reconcile_at.as_deref() == Some(r));
    let retrying = st
        .condition("Reconciling")
        .is_some_and(|c| c.status == "True" && c.reason == "ProgressingWithRetry");
    if ready.status == "False"
        && handled
        && (retrying || FAILURE_REASONS.contains(&ready.reason.as_str()))
    {
        return failed(ready);
    }
    progressing(ready.to_string())
}

/// A Flux source kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    OciRepository,
    GitRepository,
}

impl SourceKind {
    pub fn api_resource(self) -> ApiResource {
        let (kind, plural) = match self {
            SourceKind::OciRepository => ("OCIRepository", "ocirepositories"),
            SourceKind::GitRepository => ("GitRepository", "gitrepositories"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", kind),
            plural,
        )
    }
}

/// `kustomize.toolkit.fluxcd.io/v1` Kustomization.
pub fn kustomization_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    )
}

/// The source the Kustomizations of a delivery read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    pub kind: SourceKind,
    pub namespace: String,
    pub name: String,
}

/// A new `reconcile.fluxcd.io/requestedAt` value: RFC 3339 with nanoseconds, as the Flux CLI
/// writes it (the controllers only compare it for equality).
fn now_rfc3339_nano() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

async fn annotate_requested_at(
    client: &Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
    at: &str,
) -> Result<(), KubeApiError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let patch = json!({ "metadata": { "annotations": { REQUESTED_AT: at } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(call_error(
            "asking to reconcile",
            format_args!("{} {namespace}/{name}", ar.kind),
        ))?;
    Ok(())
}

/// Asks Flux to reconcile one object now (merge-patches `reconcile.fluxcd.io/requestedAt`)
/// and returns the value written, which its `status.lastHandledReconcileAt` will echo.
///
/// Guarantees: touches only that annotation; safe to repeat (each call is a new request).
pub async fn request_reconcile(
    client: &Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
) -> Result<String, KubeApiError> {
    let at = now_rfc3339_nano();
    annotate_requested_at(client, ar, namespace, name, &at).await?;
    Ok(at)
}

/// `flux reconcile kustomization --with-source` for several Kustomizations of one source:
/// the source first (so that they see its new artifact), then each Kustomization, all with
/// the same `requestedAt`, which it returns for [`wait_deployed`].
pub async fn request_reconcile_with_source(
    client: &Client,
    source: &SourceRef,
    kustomizations: &[(&str, &str)],
) -> Result<String, KubeApiError> {
    let at = now_rfc3339_nano();
    annotate_requested_at(
        client,
        &source.kind.api_resource(),
        &source.namespace,
        &source.name,
        &at,
    )
    .await?;
    let ks = kustomization_resource();
    for (ns, name) in kustomizations {
        annotate_requested_at(client, &ks, ns, name, &at).await?;
    }
    Ok(at)
}

/// One Flux object as [`wait_deployed`] last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub health: Health,
}

/// Why a revision was not deployed: the objects that failed, or (on timeout) every object
/// that was not ready, with the condition that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub revision: String,
    /// `Some(timeout)` when it timed out, `None` when an object failed.
    pub timed_out: Option<Duration>,
    pub after: Duration,
    pub objects: Vec<Observed>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timed_out {
            Some(t) => write!(
                f,
                "Flux did not deploy revision {} within {t:?}",
                self.revision
            )?,
            None => write!(
                f,
                "Flux failed to deploy revision {} (after {:?})",
                self.revision, self.after
            )?,
        }
        for (i, o) in self.objects.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{} {}/{} {}", o.kind, o.namespace, o.name, o.health)?;
        }
        write!(f, ".")
    }
}

impl std::error::Error for Diagnosis {}

async fn observe(
    client: &Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
    health: impl Fn(&DynamicObject) -> Health,
) -> Observed {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let health = match api.get(name).await {
        Ok(obj) => health(&obj),
        Err(e) => Health::Progressing {
            reason: format!("not readable: {e}"),
        },
    };
    Observed {
        kind: ar.kind.clone(),
        namespace: namespace.into(),
        name: name.into(),
        health,
    }
}

/// Waits until `source` and every Kustomization (`(namespace, name)`) are deployed and
/// healthy at `revision` (the predicates of [`source_health`] and [`kustomization_health`]),
/// and returns how long that took. `requested_at` is what
/// [`request_reconcile_with_source`] returned, if a reconcile was requested: failures count
/// only once it has been handled. Fails at the first failure, or after `timeout`.
#[instrument(skip_all, fields(revision = %revision, source = %source.name))]
pub async fn wait_deployed(
    client: &Client,
    kustomizations: &[(&str, &str)],
    source: &SourceRef,
    revision: &str,
    requested_at: Option<&str>,
    timeout: Duration,
) -> Result<Duration, Diagnosis> {
    let start = Instant::now();
    let source_ar = source.kind.api_resource();
    let ks_ar = kustomization_resource();
    loop {
        let mut seen = vec![
            observe(client, &source_ar, &source.namespace, &source.name, |o| {
                source_health(o, revision, requested_at)
            })
            .await,
        ];
        for (ns, name) in kustomizations {
            seen.push(
                observe(client, &ks_ar, ns, name, |o| {
                    kustomization_health(o, revision, requested_at)
                })
                .await,
            );
        }
        let after = start.elapsed();
        seen.retain(|o| !matches!(o.health, Health::Ready { .. }));
        if seen.is_empty() {
            info!(?after, "deployed and healthy");
            return Ok(after);
        }
        let diagnosis = |timed_out, objects| Diagnosis {
            revision: revision.into(),
            timed_out,
            after,
            objects,
        };
        if seen
            .iter()
            .any(|o| matches!(o.health, Health::Failed { .. }))
        {
            seen.retain(|o| matches!(o.health, Health::Failed { .. }));
            return Err(diagnosis(None, seen));
        }
        if after >= timeout {
            return Err(diagnosis(Some(timeout), seen));
        }
        tokio::time::sleep(DEPLOY_POLL.min(timeout - after)).await;
    }
}

/// Makes a node advertise `count` `nvidia.com/gpu`: a JSON patch of its `/status` adding the
/// resource to capacity and allocatable (kubelet recomputes allocatable only on its periodic
/// status update, so both are set).
///
/// Guarantees: idempotent (`add` replaces an existing value). Assumption: nothing on the node
/// advertises the resource for real; kubelet leaves extended resources it does not manage alone.
#[instrument(skip(client))]
pub async fn advertise_gpu(client: &Client, node: &str, count: u32) -> Result<(), KubeApiError> {
    let key = GPU_RESOURCE.replace('/', "~1");
    let ops = json!([
        { "op": "add", "path": format!("/status/capacity/{key}"), "value": count.to_string() },
        { "op": "add", "path": format!("/status/allocatable/{key}"), "value": count.to_string() },
    ]);
    let patch = serde_json::from_value(ops).map_err(|e| KubeApiError::Call {
        doing: "building the GPU patch of",
        object: format!("Node {node}"),
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    Api::<Node>::all(client.clone())
        .patch_status(node, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map_err(call_error(
            "advertising nvidia.com/gpu on",
            format_args!("Node {node}"),
        ))?;
    Ok(())
}

/// A Kubernetes quantity (`4`, `3500m`, `7Gi`, `1.5`, `129e6`) in thousandths of its unit,
/// rounded up as the API server rounds; `None` when it is not a quantity or overflows.
pub fn quantity_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let (negative, q) = match q.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let (factor, exp10): (u128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s => match s.strip_prefix(['e', 'E']) {
            Some(e) if !e.is_empty() => (1, e.parse().ok()?),
            _ => return None,
        },
    };
    let frac_digits = i32::try_from(frac.len()).ok()?;
    let exp = exp10.checked_add(3)?.checked_sub(frac_digits)?;
    let value = digits.checked_mul(factor)?;
    let magnitude = if exp >= 0 {
        value.checked_mul(10u128.checked_pow(exp.unsigned_abs())?)?
    } else {
        let d = 10u128.checked_pow(exp.unsigned_abs())?;
        value.div_ceil(d)
    };
    let magnitude = i128::try_from(magnitude).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Which allocatable resource a [`Mismatch`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        })
    }
}

/// How far a node's allocatable may be from its profile's and still count as equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tolerance {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
}

/// A node whose allocatable resources are not its profile's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// No Node has that name or that `edgesim.dev/node` label.
    Missing { node: String },
    /// Allocatable differs: CPU in millicores, memory in bytes.
    Differs {
        node: String,
        resource: Resource,
        expected: u64,
        actual: u64,
    },
    /// Allocatable is absent or not a quantity.
    Unreadable {
        node: String,
        resource: Resource,
        quantity: Option<String>,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { node } => write!(f, "node {node}: no such Node in the cluster"),
            Mismatch::Differs {
                node,
                resource: Resource::Cpu,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "node {node}: allocatable cpu is {actual}m, the profile's is {expected}m"
                )
            }
            Mismatch::Differs {
                node,
                resource: Resource::Memory,
                expected,
                actual,
            } => write!(
                f,
                "node {node}: allocatable memory is {actual} bytes, the profile's is {expected} bytes"
            ),
            Mismatch::Unreadable {
                node,
                resource,
                quantity: Some(q),
            } => {
                write!(
                    f,
                    "node {node}: allocatable {resource} {q:?} is not a quantity"
                )
            }
            Mismatch::Unreadable {
                node,
                resource,
                quantity: None,
            } => {
                write!(f, "node {node}: no allocatable {resource}")
            }
        }
    }
}

/// Compares nodes' allocatable CPU and memory with `expected` (`(node, millicores, bytes)`);
/// a node is found by its name or by its `edgesim.dev/node` label.
pub fn allocatable_mismatches(
    nodes: &[Node],
    expected: &[(&str, u64, u64)],
    tolerance: Tolerance,
) -> Vec<Mismatch> {
    let label = format!("{LABEL_PREFIX}node");
    let mut found = Vec::new();
    for &(node, cpu, memory) in expected {
        let Some(n) = nodes.iter().find(|n| {
            n.metadata.name.as_deref() == Some(node)
                || n.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(&label))
                    .map(String::as_str)
                    == Some(node)
        }) else {
            found.push(Mismatch::Missing { node: node.into() });
            continue;
        };
        let allocatable = n.status.as_ref().and_then(|s| s.allocatable.as_ref());
        for (resource, key, want, tol, scale) in [
            (Resource::Cpu, "cpu", cpu, tolerance.cpu_millicores, 1),
            (
                Resource::Memory,
                "memory",
                memory,
                tolerance.memory_bytes,
                1000,
            ),
        ] {
            let quantity = allocatable.and_then(|a| a.get(key)).map(|q| q.0.clone());
            let actual = quantity
                .as_deref()
                .and_then(quantity_milli)
                .and_then(|milli| u128::try_from(milli).ok())
                .and_then(|milli| u64::try_from(milli.div_ceil(scale)).ok());
            match actual {
                None => found.push(Mismatch::Unreadable {
                    node: node.into(),
                    resource,
                    quantity,
                }),
                Some(actual) if actual.abs_diff(want) > tol => found.push(Mismatch::Differs {
                    node: node.into(),
                    resource,
                    expected: want,
                    actual,
                }),
                Some(_) => {}
            }
        }
    }
    found
}

/// Reads the cluster's Nodes and reports, all at once, every node of `expected` whose
/// allocatable CPU or memory is not the profile's (within `tolerance`), or that is missing.
#[instrument(skip_all, fields(nodes = expected.len()))]
pub async fn verify_allocatable(
    client: &Client,
    expected: &[(&str, u64, u64)],
    tolerance: Tolerance,
) -> Result<Vec<Mismatch>, KubeApiError> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(call_error("listing", "the Nodes"))?;
    Ok(allocatable_mismatches(&nodes.items, expected, tolerance))
}

#[cfg(test)]
mod tests {
    use super::super::mock::{Seen, mock, not_found, resources};
    use super::*;

    const CRD_NAME: &str = "kustomizations.kustomize.toolkit.fluxcd.io";

    fn crd(established: &str) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD_NAME, "generation": 1, "resourceVersion": "812"},
            "spec": {"group": "kustomize.toolkit.fluxcd.io", "scope": "Namespaced",
                     "names": {"kind": "Kustomization", "plural": "kustomizations"}, "versions": []},
            "status": {"conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": "2026-12-04T10:00:00Z"},
                {"type": "Established", "status": established, "reason": "Installing",
                 "message": "the initial names have been accepted", "lastTransitionTime": "2026-12-04T10:00:00Z"},
            ]},
        })
    }

    /// What `flux install --export` looks like, cut down: a Namespace, a CRD, an object of the
    /// CRD's kind, an empty document and a Deployment without a namespace.
    const INSTALL: &str = r#"
---
apiVersion: v1
kind: Namespace
metadata:
  name: flux-system
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: kustomizations.kustomize.toolkit.fluxcd.io
spec:
  group: kustomize.toolkit.fluxcd.io
  names: {kind: Kustomization, plural: kustomizations}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
---
# nothing but a comment
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: edgesim-cluster
  namespace: flux-system
spec:
  interval: 1m
  path: ./clusters/local
  prune: true
  sourceRef: {kind: OCIRepository, name: edgesim}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kustomize-controller
spec:
  replicas: 1
  selector: {matchLabels: {app: kustomize-controller}}
  template:
    metadata: {labels: {app: kustomize-controller}}
    spec: {containers: [{name: manager, image: "ghcr.io/fluxcd/kustomize-controller:v1.7.0"}]}
"#;

    /// An API server that has the Flux kinds only once their CRD reads Established, which it
    /// does on the `established_on`-th read (never when 0).
    fn install_server(established_on: usize) -> impl FnMut(&Seen) -> (u16, Value) + Send + 'static {
        let mut crd_reads = 0;
        move |s| match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/api/v1") => resources("v1", &[("namespaces", "Namespace", false)]),
            ("GET", "/apis/apps/v1") => {
                resources("apps/v1", &[("deployments", "Deployment", true)])
            }
            ("GET", "/apis/apiextensions.k8s.io/v1") => resources(
                "apiextensions.k8s.io/v1",
                &[(
                    "customresourcedefinitions",
                    "CustomResourceDefinition",
                    false,
                )],
            ),
            ("GET", "/apis/kustomize.toolkit.fluxcd.io/v1")
                if established_on > 0 && crd_reads >= established_on =>
            {
                resources(
                    "kustomize.toolkit.fluxcd.io/v1",
                    &[("kustomizations", "Kustomization", true)],
                )
            }
            ("GET", "/apis/kustomize.toolkit.fluxcd.io/v1") => {
                not_found("the server could not find the requested resource")
            }
            ("GET", p) if p.ends_with(CRD_NAME) => {
                crd_reads += 1;
                let established = if established_on > 0 && crd_reads >= established_on {
                    "True"
                } else {
                    "False"
                };
                (200, crd(established))
            }
            ("PATCH", _) => (200, s.body.clone()),
            _ => panic!("unexpected request {}", s.call()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn apply_puts_crds_first_waits_for_established_then_applies_the_rest() {
        let (client, server) = mock(install_server(2));
        let applied = apply(&client, INSTALL, "edgesim").await.unwrap();
        drop(client);
        let seen = server.await.unwrap();

        let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
        let calls: Vec<String> = seen.iter().map(Seen::call).collect();
        assert_eq!(
            calls,
            [
                "GET /apis/apiextensions.k8s.io/v1".to_string(),
                format!("PATCH {crds}/{CRD_NAME}"),
                format!("GET {crds}/{CRD_NAME}"),
                format!("GET {crds}/{CRD_NAME}"),
                "GET /api/v1".into(),
                "PATCH /api/v1/namespaces/flux-system".into(),
                "GET /apis/kustomize.toolkit.fluxcd.io/v1".into(),
                "PATCH /apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations/edgesim-cluster".into(),
                "GET /apis/apps/v1".into(),
                "PATCH /apis/apps/v1/namespaces/default/deployments/kustomize-controller".into(),
            ]
        );
        for patch in seen.iter().filter(|s| s.method == "PATCH") {
            assert_eq!(
                patch.content_type,
                "application/apply-patch+yaml",
                "{}",
                patch.call()
            );
            assert_eq!(
                patch.query("fieldManager"),
                Some("edgesim"),
                "{}",
                patch.call()
            );
            assert_eq!(patch.query("force"), Some("true"), "{}", patch.call());
            assert!(
                patch
                    .path
                    .ends_with(patch.body["metadata"]["name"].as_str().unwrap())
            );
            assert!(patch.body["apiVersion"].is_string() && patch.body["kind"].is_string());
        }
        let deployment = seen.last().unwrap();
        assert_eq!(
            deployment.body["spec"]["template"]["spec"]["containers"][0]["name"],
            "manager"
        );

        let shown: Vec<String> = applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                format!("CustomResourceDefinition {CRD_NAME}"),
                "Namespace flux-system".into(),
                "Kustomization flux-system/edgesim-cluster".into(),
                "Deployment default/kustomize-controller".into(),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn apply_gives_up_on_a_crd_that_is_never_established_and_says_why() {
        let (client, server) = mock(install_server(0));
        let err = apply(&client, INSTALL, "edgesim").await.unwrap_err();
        drop(client);
        let seen = server.await.unwrap();
        let text = err.to_string();
        assert!(
            text.contains(CRD_NAME) && text.contains("not Established after 60"),
            "{text}"
        );
        assert!(
            text.contains("Established=False (Installing): the initial names have been accepted"),
            "{text}"
        );
        // Nothing of the CRD's kind (nor after it) was applied.
        assert_eq!(seen.iter().filter(|s| s.method == "PATCH").count(), 1);
    }

    #[tokio::test]
    async fn apply_names_the_object_the_api_server_refuses() {
        let (client, server) = mock(|s| match (s.method.as_str(), s.path.as_str()) {
            ("GET", "/apis/apps/v1") => {
                resources("apps/v1", &[("deployments", "Deployment", true)])
            }
            ("PATCH", _) => (
                422,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
                       "message": "Deployment.apps \"web\" is invalid: spec.template.metadata.labels: Invalid value"}),
            ),
            _ => panic!("unexpected request {}", s.call()),
        });
        let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: edge}\nspec: {}\n";
        let err = apply(&client, yaml, "edgesim").await.unwrap_err();
        drop(client);
        server.await.unwrap();
        assert_eq!(err.to_string(), "applying Deployment edge/web");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            cause.contains("spec.template.metadata.labels: Invalid value"),
            "{cause}"
        );

        let (client, _server) = mock(|s| panic!("unexpected request {}", s.call()));
        let err = apply(&client, "---\nmetadata: {name: x}\n", "edgesim")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest document 1: no apiVersion and kind"
        );
    }

    #[test]
    fn the_local_cluster_folder_reads_as_the_objects_apply_sends() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../flux/clusters/local");
        let mut names = Vec::new();
        for file in [
            "source.yaml",
            "sync.yaml",
            "infrastructure.yaml",
            "apps.yaml",
        ] {
            let yaml = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            for m in documents(&yaml).unwrap() {
                assert!(!is_crd(&m));
                assert_eq!(m.object.metadata.namespace.as_deref(), Some("flux-system"));
                names.push(format!("{} {}", m.kind, m.name));
            }
        }
        assert_eq!(
            names,
            [
                "OCIRepository edgesim",
                "Kustomization edgesim-cluster",
                "Kustomization edgesim-infrastructure",
                "Kustomization edgesim-apps-cloud",
                "Kustomization edgesim-apps-raspberry-pi-5",
            ]
        );
    }

    const WANT: &str = "local@sha256:9f2c";
    const OLD: &str = "local@sha256:1a0b";
    const REQUEST: &str = "2026-12-04T10:15:00.123456789Z";

    fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": "2026-12-04T10:15:01Z"})
    }

    fn flux_object(kind: &str, name: &str, generation: i64, status: Value) -> DynamicObject {
        let api_version = if kind == "Kustomization" {
            "kustomize.toolkit.fluxcd.io/v1"
        } else {
            "source.toolkit.fluxcd.io/v1"
        };
        serde_json::from_value(json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": "flux-system", "generation": generation},
            "spec": {"interval": "1m", "prune": true, "path": "./apps/overlays/cloud"},
            "status": status,
        }))
        .unwrap()
    }

    /// A Kustomization at generation 2 whose status is `status`.
    fn ks(status: Value) -> DynamicObject {
        flux_object("Kustomization", "edgesim-apps-cloud", 2, status)
    }

    fn ks_status(
        ready: Value,
        applied: &str,
        attempted: &str,
        handled: &str,
        extra: &[Value],
    ) -> Value {
        let mut conditions = vec![ready];
        conditions.extend(extra.iter().cloned());
        json!({
            "observedGeneration": 2, "conditions": conditions,
            "lastAppliedRevision": applied, "lastAttemptedRevision": attempted,
            "lastHandledReconcileAt": handled,
            "inventory": {"entries": [{"id": "edgesim_edge-web_apps_Deployment", "v": "v1"}]},
        })
    }

    fn succeeded(generation: i64) -> Value {
        condition(
            "Ready",
            "True",
            "ReconciliationSucceeded",
            &format!("Applied revision: {WANT}"),
            generation,
        )
    }

    /// What, the object, our request, and the health expected (`Err`: Progressing, with a
    /// reason that contains those words).
    type Case = (
        &'static str,
        DynamicObject,
        Option<&'static str>,
        Result<Health, &'static str>,
    );

    #[test]
    fn kustomization_health_follows_kustomize_controllers_predicate() {
        let health_check_failed = condition(
            "Ready",
            "False",
            "HealthCheckFailed",
            "health check failed after 3m0s: timeout waiting for: [Deployment/edgesim/edge-web status: 'InProgress']",
            2,
        );
        let retrying = condition(
            "Reconciling",
            "True",
            "ProgressingWithRetry",
            "Detecting drift for revision",
            2,
        );
        let mut stale_status = ks_status(succeeded(2), WANT, WANT, REQUEST, &[]);
        stale_status["observedGeneration"] = json!(1);
        let failed = |condition: &str, reason: &str, message: &str| Health::Failed {
            kind: "Kustomization".into(),
            name: "edgesim-apps-cloud".into(),
            condition: condition.into(),
            reason: reason.into(),
            message: message.into(),
        };
        let cases: Vec<Case> = vec![
            (
                "ready at our revision",
                ks(ks_status(succeeded(2), WANT, WANT, REQUEST, &[])),
                Some(REQUEST),
                Ok(Health::Ready {
                    revision: WANT.into(),
                }),
            ),
            (
                "Ready left from the previous generation",
                ks(ks_status(succeeded(1), WANT, WANT, REQUEST, &[])),
                Some(REQUEST),
                Err("Ready=True is for generation 1, the object is at generation 2"),
            ),
            (
                "status.observedGeneration behind",
                ks(stale_status),
                None,
                Err("status.observedGeneration 1 is behind metadata.generation 2"),
            ),
            (
                "ready at the old revision",
                ks(ks_status(succeeded(2), OLD, OLD, REQUEST, &[])),
                Some(REQUEST),
                Err("Ready at revision local@sha256:1a0b, waiting for local@sha256:9f2c"),
            ),
            (
                "attempting ours, the old one applied",
                ks(ks_status(succeeded(2), OLD, WANT, REQUEST, &[])),
                Some(REQUEST),
                Err("attempting revision local@sha256:9f2c while local@sha256:1a0b is applied"),
            ),
            (
                "ProgressingWithRetry after our request",
                ks(ks_status(
                    health_check_failed.clone(),
                    OLD,
                    WANT,
                    REQUEST,
                    std::slice::from_ref(&retrying),
                )),
                Some(REQUEST),
                Ok(failed(
                    "Ready",
                    "HealthCheckFailed",
                    health_check_failed["message"].as_str().unwrap(),
                )),
            ),
            (
                "the same failure, from before our request",
                ks(ks_status(
                    health_check_failed.clone(),
                    OLD,
                    WANT,
                    "2026-12-04T09:00:00Z",
                    std::slice::from_ref(&retrying),
                )),
                Some(REQUEST),
                Err("Ready=False (HealthCheckFailed): health check failed after 3m0s"),
            ),
            (
                "the same failure when we asked for no reconcile",
                ks(ks_status(
                    health_check_failed.clone(),
                    OLD,
                    WANT,
                    REQUEST,
                    &[retrying],
                )),
                None,
                Err("HealthCheckFailed"),
            ),
            (
                "BuildFailed after our request",
                ks(ks_status(
                    condition(
                        "Ready",
                        "False",
                        "BuildFailed",
                        "kustomize build failed: accumulating resources",
                        2,
                    ),
                    OLD,
                    WANT,
                    REQUEST,
                    &[],
                )),
                Some(REQUEST),
                Ok(failed(
                    "Ready",
                    "BuildFailed",
                    "kustomize build failed: accumulating resources",
                )),
            ),
            (
                "Stalled",
                ks(ks_status(
                    condition(
                        "Ready",
                        "False",
                        "InvalidPath",
                        "path ./apps/overlays/clod not found",
                        2,
                    ),
                    OLD,
                    WANT,
                    "2026-12-04T09:00:00Z",
                    &[condition(
                        "Stalled",
                        "True",
                        "InvalidPath",
                        "path ./apps/overlays/clod not found",
                        2,
                    )],
                )),
                None,
                Ok(failed(
                    "Stalled",
                    "InvalidPath",
                    "path ./apps/overlays/clod not found",
                )),
            ),
            (
                "DependencyNotReady, even after our request",
                ks(ks_status(
                    condition(
                        "Ready",
                        "False",
                        "DependencyNotReady",
                        "dependency 'flux-system/edgesim-infrastructure' is not ready",
                        2,
                    ),
                    OLD,
                    OLD,
                    REQUEST,
                    &[],
                )),
                Some(REQUEST),
                Err(
                    "DependencyNotReady): dependency 'flux-system/edgesim-infrastructure' is not ready",
                ),
            ),
            (
                "no status yet",
                ks(json!({})),
                Some(REQUEST),
                Err("no Ready condition yet"),
            ),
        ];
        for (what, obj, request, want) in cases {
            let got = kustomization_health(&obj, WANT, request);
            match want {
                Ok(health) => assert_eq!(got, health, "{what}"),
                Err(words) => match &got {
                    Health::Progressing { reason } => {
                        assert!(reason.contains(words), "{what}: {reason}")
                    }
                    other => panic!("{what}: {other:?}, expected Progressing with {words:?}"),
                },
            }
        }
    }

    fn oci(artifact: &str, ready: Value, handled: &str, extra: &[Value]) -> DynamicObject {
        let mut conditions = vec![ready];
        conditions.extend(extra.iter().cloned());
        flux_object(
            "OCIRepository",
            "edgesim",
            1,
            json!({
                "observedGeneration": 1, "conditions": conditions, "lastHandledReconcileAt": handled,
                "artifact": {"revision": artifact, "digest": "sha256:77aa", "path": "ocirepository/flux-system/edgesim/77aa.tar.gz",
                             "url": "http://source-controller.flux-system.svc.cluster.local./ocirepository/flux-system/edgesim/77aa.tar.gz"},
            }),
        )
    }

    #[test]
    fn source_health_wants_the_pushed_artifact() {
        let stored = |rev: &str| {
            condition(
                "Ready",
                "True",
                "Succeeded",
                &format!("stored artifact for digest '{rev}'"),
                1,
            )
        };
        assert_eq!(
            source_health(&oci(WANT, stored(WANT), REQUEST, &[]), WANT, Some(REQUEST)),
            Health::Ready {
                revision: WANT.into()
            }
        );
        let old = source_health(&oci(OLD, stored(OLD), REQUEST, &[]), WANT, Some(REQUEST));
        assert!(
            matches!(&old, Health::Progressing { reason } if reason.contains("waiting for local@sha256:9f2c")),
            "{old:?}"
        );
        let pull_failed = condition(
            "Ready",
            "False",
            "OCIArtifactPullFailed",
            "failed to pull artifact from 'oci://edgesim-registry:5000/edgesim/flux': connection refused",
            1,
        );
        let retrying = condition(
            "Reconciling",
            "True",
            "ProgressingWithRetry",
            "processing object: new generation",
            1,
        );
        let failed = source_health(
            &oci(OLD, pull_failed, REQUEST, &[retrying]),
            WANT,
            Some(REQUEST),
        );
        assert!(
            matches!(&failed, Health::Failed { kind, condition, reason, message, .. }
                if kind == "OCIRepository" && condition == "Ready" && reason == "OCIArtifactPullFailed" && message.contains("connection refused")),
            "{failed:?}"
        );
    }

    const KS_PATH: &str =
        "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/flux-system/kustomizations";
    const OCI_PATH: &str =
        "/apis/source.toolkit.fluxcd.io/v1/namespaces/flux-system/ocirepositories";

    #[tokio::test]
    async fn reconcile_requests_merge_patch_the_annotation_source_first() {
        let (client, server) = mock(|s| (200, s.body.clone()));
        let at = request_reconcile(
            &client,
            &kustomization_resource(),
            "flux-system",
            "edgesim-apps-cloud",
        )
        .await
        .unwrap();
        let source = SourceRef {
            kind: SourceKind::OciRepository,
            namespace: "flux-system".into(),
            name: "edgesim".into(),
        };
        let together = request_reconcile_with_source(
            &client,
            &source,
            &[
                ("flux-system", "edgesim-infrastructure"),
                ("flux-system", "edgesim-apps-cloud"),
            ],
        )
        .await
        .unwrap();
        drop(client);
        let seen = server.await.unwrap();

        // RFC 3339 with nanoseconds, in UTC, as the Flux CLI writes it.
        let parsed = chrono::DateTime::parse_from_rfc3339(&at).unwrap();
        assert!(
            at.ends_with('Z') && at.split('.').nth(1).unwrap().len() == 10,
            "{at}"
        );
        assert!((chrono::Utc::now() - parsed.to_utc()).num_seconds().abs() < 60);
        assert_ne!(at, together, "every request is a new value");

        let calls: Vec<String> = seen.iter().map(Seen::call).collect();
        assert_eq!(
            calls,
            [
                format!("PATCH {KS_PATH}/edgesim-apps-cloud"),
                format!("PATCH {OCI_PATH}/edgesim"),
                format!("PATCH {KS_PATH}/edgesim-infrastructure"),
                format!("PATCH {KS_PATH}/edgesim-apps-cloud"),
            ]
        );
        for (s, value) in seen.iter().zip([&at, &together, &together, &together]) {
            assert_eq!(s.content_type, "application/merge-patch+json");
            assert_eq!(
                s.body,
                json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": value}}})
            );
        }
    }

    /// Flux objects as the API server has them: the source ready at `WANT`,
    /// `edgesim-infrastructure` ready, and `edgesim-apps-cloud` from `apps` (called with how
    /// many times it has been read).
    fn flux_server(
        mut apps: impl FnMut(usize) -> Value + Send + 'static,
    ) -> impl FnMut(&Seen) -> (u16, Value) + Send + 'static {
        let mut reads = 0;
        move |s| {
            assert_eq!(s.method, "GET");
            if s.path == format!("{OCI_PATH}/edgesim") {
                let ready = condition("Ready", "True", "Succeeded", "stored artifact", 1);
                return (
                    200,
                    serde_json::to_value(oci(WANT, ready, REQUEST, &[])).unwrap(),
                );
            }
            let name = s
                .path
                .strip_prefix(&format!("{KS_PATH}/"))
                .unwrap_or_else(|| panic!("unexpected {}", s.call()));
            let status = match name {
                "edgesim-infrastructure" => ks_status(succeeded(2), WANT, WANT, REQUEST, &[]),
                "edgesim-apps-cloud" => {
                    reads += 1;
                    apps(reads)
                }
                _ => return not_found(name),
            };
            (
                200,
                serde_json::to_value(flux_object("Kustomization", name, 2, status)).unwrap(),
            )
        }
    }

    fn oci_source() -> SourceRef {
        SourceRef {
            kind: SourceKind::OciRepository,
            namespace: "flux-system".into(),
            name: "edgesim".into(),
        }
    }

    const KUSTOMIZATIONS: &[(&str, &str)] = &[
        ("flux-system", "edgesim-infrastructure"),
        ("flux-system", "edgesim-apps-cloud"),
    ];

    /// Runs [`wait_deployed`] for `KUSTOMIZATIONS` of the OCI source against [`flux_server`]
    /// with `apps`, as if we had requested `REQUEST`; also returns how many reads it made.
    async fn wait_with(
        apps: impl FnMut(usize) -> Value + Send + 'static,
        timeout: Duration,
    ) -> (Result<Duration, Diagnosis>, usize) {
        let (client, server) = mock(flux_server(apps));
        let source = oci_source();
        let result = wait_deployed(
            &client,
            KUSTOMIZATIONS,
            &source,
            WANT,
            Some(REQUEST),
            timeout,
        )
        .await;
        drop(client);
        (result, server.await.unwrap().len())
    }

    #[tokio::test(start_paused = true)]
    async fn wait_deployed_returns_how_long_convergence_took() {
        // edgesim-apps-cloud becomes ready on the third round.
        let (took, reads) = wait_with(
            |reads| {
                if reads < 3 {
                    let progressing = condition(
                        "Ready",
                        "Unknown",
                        "Progressing",
                        "Reconciliation in progress",
                        2,
                    );
                    ks_status(progressing, OLD, WANT, REQUEST, &[])
                } else {
                    ks_status(succeeded(2), WANT, WANT, REQUEST, &[])
                }
            },
            Duration::from_secs(300),
        )
        .await;
        assert_eq!(took.unwrap(), 2 * DEPLOY_POLL);
        assert_eq!(reads, 3 * 3, "three rounds of three objects");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_deployed_times_out_naming_the_kustomization_and_its_condition() {
        let message = "dependency 'flux-system/edgesim-infrastructure' revision is not up to date";
        let timeout = Duration::from_secs(30);
        let (result, _) = wait_with(
            move |_| {
                ks_status(
                    condition("Ready", "False", "DependencyNotReady", message, 2),
                    OLD,
                    OLD,
                    REQUEST,
                    &[],
                )
            },
            timeout,
        )
        .await;
        let diagnosis = result.unwrap_err();
        assert_eq!(diagnosis.timed_out, Some(timeout));
        assert_eq!(diagnosis.objects.len(), 1, "{diagnosis}");
        assert_eq!(
            diagnosis.to_string(),
            format!(
                "Flux did not deploy revision {WANT} within 30s: Kustomization flux-system/edgesim-apps-cloud is \
                 not ready: Ready=False (DependencyNotReady): {message}."
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_deployed_stops_at_a_failure_after_our_request() {
        let (result, reads) = wait_with(
            |_| {
                let failed = condition(
                    "Ready",
                    "False",
                    "HealthCheckFailed",
                    "timeout waiting for: [Deployment/edgesim/edge-web]",
                    2,
                );
                let retrying = condition("Reconciling", "True", "ProgressingWithRetry", "", 2);
                ks_status(failed, OLD, WANT, REQUEST, &[retrying])
            },
            Duration::from_secs(300),
        )
        .await;
        let diagnosis = result.unwrap_err();
        assert_eq!(reads, 3, "one round");
        assert_eq!(diagnosis.timed_out, None);
        let text = diagnosis.to_string();
        assert!(
            text.contains("Kustomization flux-system/edgesim-apps-cloud failed (condition Ready, reason HealthCheckFailed): timeout waiting for: [Deployment/edgesim/edge-web]"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn advertise_gpu_patches_capacity_and_allocatable_of_the_node_status() {
        let (client, server) = mock(|_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edgesim-quickstart-worker3"}}),
            )
        });
        advertise_gpu(&client, "edgesim-quickstart-worker3", 1)
            .await
            .unwrap();
        drop(client);
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].call(),
            "PATCH /api/v1/nodes/edgesim-quickstart-worker3/status"
        );
        assert_eq!(seen[0].content_type, "application/json-patch+json");
        assert_eq!(
            seen[0].body,
            json!([
                {"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "1"},
                {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": "1"},
            ])
        );
    }

    #[test]
    fn quantities_parse_as_the_api_server_writes_them() {
        let gi = 1i128 << 30;
        for (q, milli) in [
            ("4", Some(4000)),
            ("3500m", Some(3500)),
            ("0.5", Some(500)),
            ("1.5Gi", Some(3 * gi / 2 * 1000)),
            ("7Gi", Some(7 * gi * 1000)),
            ("8012345Ki", Some(8_012_345 * 1024 * 1000)),
            ("129e6", Some(129_000_000_000)),
            ("12M", Some(12_000_000_000)),
            ("100n", Some(1)),
            ("-2", Some(-2000)),
            ("", None),
            ("Gi", None),
            ("1.2.3", None),
            ("4 cores", None),
            ("5Xi", None),
            ("2e", None),
            ("9Ei", Some(9 * (1i128 << 60) * 1000)),
            ("99999999999999999999999999999999999E", None),
        ] {
            assert_eq!(quantity_milli(q), milli, "{q:?}");
        }
    }

    fn node(name: &str, label: &str, allocatable: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"edgesim.dev/node": label, "kubernetes.io/arch": "amd64"}},
            "status": {"capacity": {"cpu": "16", "memory": "65823876Ki", "pods": "110"}, "allocatable": allocatable},
        })
    }

    #[tokio::test]
    async fn verify_allocatable_reports_every_mismatch_at_once() {
        let (client, server) = mock(|s| {
            assert_eq!(s.call(), "GET /api/v1/nodes");
            let items = vec![
                node(
                    "edgesim-quickstart-worker",
                    "cloud",
                    json!({"cpu": "4", "memory": "7Gi", "pods": "110"}),
                ),
                node(
                    "edgesim-quickstart-worker2",
                    "gw-1",
                    json!({"cpu": "3500m", "memory": "8012345Ki"}),
                ),
                node("edgesim-quickstart-worker3", "gw-2", json!({"cpu": "4"})),
            ];
            (
                200,
                json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1042"}, "items": items}),
            )
        });
        let gw_memory = 8_012_345 * 1024;
        let expected = [
            ("cloud", 4000, 7 << 30),
            ("edgesim-quickstart-worker2", 4000, gw_memory + 512 * 1024),
            ("gw-2", 4000, 4 << 30),
            ("gw-3", 4000, 4 << 30),
        ];
        let tolerance = Tolerance {
            cpu_millicores: 0,
            memory_bytes: 1 << 20,
        };
        let found = verify_allocatable(&client, &expected, tolerance)
            .await
            .unwrap();
        drop(client);
        server.await.unwrap();
        assert_eq!(
            found,
            [
                Mismatch::Differs {
                    node: "edgesim-quickstart-worker2".into(),
                    resource: Resource::Cpu,
                    expected: 4000,
                    actual: 3500
                },
                Mismatch::Unreadable {
                    node: "gw-2".into(),
                    resource: Resource::Memory,
                    quantity: None
                },
                Mismatch::Missing {
                    node: "gw-3".into()
                },
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "node edgesim-quickstart-worker2: allocatable cpu is 3500m, the profile's is 4000m"
        );
        // Outside the tolerance, the half-mebibyte difference of worker2's memory counts too.
        let nodes: Vec<Node> = vec![
            serde_json::from_value(node(
                "edgesim-quickstart-worker2",
                "gw-1",
                json!({"cpu": "4", "memory": "8012345Ki"}),
            ))
            .unwrap(),
        ];
        assert_eq!(
            allocatable_mismatches(
                &nodes,
                &[("gw-1", 4000, gw_memory + 512 * 1024)],
                Tolerance::default()
            ),
            [Mismatch::Differs {
                node: "gw-1".into(),
                resource: Resource::Memory,
                expected: gw_memory + 512 * 1024,
                actual: gw_memory
            }]
        );
    }
}
