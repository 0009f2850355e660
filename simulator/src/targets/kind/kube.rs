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
/// The extended resource a GPU board's node advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

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

/// Reads multi-document YAML as objects, skipping empty documents.
fn documents(yaml: &str) -> Result<Vec<DynamicObject>, KubeApiError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| KubeApiError::Yaml(Box::new(e)))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .enumerate()
        .map(|(i, doc)| {
            let problem = |problem: String| KubeApiError::Document {
                index: i + 1,
                problem,
            };
            let obj: DynamicObject =
                serde_json::from_value(doc).map_err(|e| problem(e.to_string()))?;
            if obj.types.is_none() {
                return Err(problem("no apiVersion and kind".into()));
            }
            if obj.metadata.name.is_none() {
                return Err(problem("no metadata.name".into()));
            }
            Ok(obj)
        })
        .collect()
}

fn is_crd(obj: &DynamicObject) -> bool {
    obj.types.as_ref().is_some_and(|t| {
        t.kind == "CustomResourceDefinition" && t.api_version.starts_with("apiextensions.k8s.io/")
    })
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
        obj: &DynamicObject,
        field_manager: &str,
    ) -> Result<AppliedRef, KubeApiError> {
        // `documents` only returns objects with both.
        let (Some(types), Some(name)) = (&obj.types, &obj.metadata.name) else {
            return Err(KubeApiError::Document {
                index: 0,
                problem: "no apiVersion, kind or name".into(),
            });
        };
        let (ar, caps) = self.resolve(&types.api_version, &types.kind).await?;
        let client = self.client.clone();
        let (api, namespace): (Api<DynamicObject>, _) = match caps.scope {
            Scope::Cluster => (Api::all_with(client, &ar), None),
            Scope::Namespaced => {
                let ns = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_string());
                (Api::namespaced_with(client, &ns, &ar), Some(ns))
            }
        };
        let applied = AppliedRef {
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            namespace,
            name: name.clone(),
        };
        api.patch(
            name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(obj),
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
#[instrument(skip_all, fields(field_manager))]
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
            Health::Ready { revision } => write!(f, "ready at {revision}"),
            Health::Progressing { reason } => write!(f, "{reason}"),
            Health::Failed {
                condition,
                reason,
                message,
                ..
            } => {
                write!(
                    f,
                    "failed: condition {condition}, reason {reason}: {message}"
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
    progressing(format!("condition {ready}"))
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
            write!(
                f,
                "{sep}{} {}/{} is {}",
                o.kind, o.namespace, o.name, o.health
            )?;
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
#[instrument(skip_all, fields(revision, source = %source.name))]
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
