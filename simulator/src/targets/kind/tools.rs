//! The programs the kind target drives: `kind` (creating and deleting clusters, loading
//! images into their nodes) and `flux` (its install manifests, pushing the run's artifact).
//! Both are prerequisites on `PATH` (`edgesim doctor` says whether they are there; the
//! flake's `sim` shell has them). Each runs as a child process with its output captured; a
//! failure names the command and carries the end of what it printed.
//!
//! Everything else of the target speaks to the Docker Engine (bollard) and the Kubernetes API
//! (kube) directly: these two are used for what only they do well — Kind's node bootstrap
//! (kubeadm inside node containers) and Flux's artifact format and install manifests, which
//! follow the pinned Flux release.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::host::{HostError, Result};

/// The Flux controllers a run needs: sources and Kustomizations.
pub const FLUX_COMPONENTS: &str = "source-controller,kustomize-controller";
/// The label kubeadm puts on control-plane nodes (and the key of their taint).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The registry image the artifact registry runs (`EDGESIM_KIND_REGISTRY_IMAGE` overrides it).
pub const REGISTRY_IMAGE: &str = "registry:2";
/// The port the registry listens on inside its container.
pub const REGISTRY_PORT: u16 = 5000;

/// The registry image to run.
pub fn registry_image() -> String {
    std::env::var("EDGESIM_KIND_REGISTRY_IMAGE").unwrap_or_else(|_| REGISTRY_IMAGE.into())
}

fn show(program: &str, args: &[OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `program args…` to its end within `timeout`; its stdout. `what` says what it was for.
pub async fn run(
    program: &str,
    args: &[OsString],
    what: &'static str,
    timeout: Duration,
) -> Result<String> {
    let cmd = show(program, args);
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => {
            return Err(HostError::other(
                what,
                cmd,
                format!("it did not finish within {timeout:?}"),
            ));
        }
        Ok(Err(e)) => return Err(HostError::io(what, cmd, e)),
        Ok(Ok(o)) => o,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(HostError::other(
        what,
        cmd,
        format!(
            "it failed ({}): {}",
            out.status,
            tail(
                if stderr.trim().is_empty() {
                    &stdout
                } else {
                    &stderr
                },
                15
            )
        ),
    ))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `kind create cluster`: cluster `name` from configuration file `config`, its kubeconfig
/// written to `kubeconfig` (not the user's), waiting for the control plane.
pub async fn kind_create(name: &str, config: &Path, kubeconfig: &Path) -> Result<()> {
    let mut args = os(&[
        "create", "cluster", "--name", name, "--wait", "5m", "--config",
    ]);
    args.push(config.into());
    args.push("--kubeconfig".into());
    args.push(kubeconfig.into());
    run(
        "kind",
        &args,
        "creating the Kind cluster",
        Duration::from_secs(900),
    )
    .await?;
    Ok(())
}

/// `kind delete cluster`: idempotent (Kind deletes nothing, successfully, when the cluster
/// is gone).
pub async fn kind_delete(name: &str, kubeconfig: Option<&Path>) -> Result<()> {
    let mut args = os(&["delete", "cluster", "--name", name]);
    if let Some(k) = kubeconfig {
        args.push("--kubeconfig".into());
        args.push(k.into());
    }
    run(
        "kind",
        &args,
        "deleting the Kind cluster",
        Duration::from_secs(300),
    )
    .await?;
    Ok(())
}

/// `kind load docker-image`: the Engine's `images` into every node of cluster `name` (Kind
/// imports them with containerd inside each node; nothing is pulled).
pub async fn kind_load(name: &str, images: &[String]) -> Result<()> {
    if images.is_empty() {
        return Ok(());
    }
    let mut args = os(&["load", "docker-image", "--name", name]);
    args.extend(images.iter().map(OsString::from));
    run(
        "kind",
        &args,
        "loading images into the Kind nodes",
        Duration::from_secs(900),
    )
    .await?;
    Ok(())
}

/// `flux install --export`: the manifests of Flux's source and kustomize controllers (CRDs
/// included) of the `flux` on PATH, tolerating the control plane's taint.
pub async fn flux_install_manifests() -> Result<String> {
    let args = os(&[
        "install",
        "--export",
        "--components",
        FLUX_COMPONENTS,
        "--toleration-keys",
        CONTROL_PLANE_LABEL,
    ]);
    run(
        "flux",
        &args,
        "exporting Flux's install manifests",
        Duration::from_secs(60),
    )
    .await
}

/// Puts every Deployment of `yaml` (Flux's controllers) on the control plane: a node
/// selector on its label, beside the toleration `flux install --toleration-keys` wrote. The
/// workers get every fault; the controllers must not, or delivery itself would be what a
/// partition tests. Returns multi-document YAML.
pub fn pin_to_control_plane(yaml: &str) -> std::result::Result<String, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for mut d in docs.into_iter().filter(|d| !d.is_null()) {
        if d["kind"] == "Deployment" {
            let spec = &mut d["spec"]["template"]["spec"];
            if !spec.is_object() {
                return Err(format!(
                    "Deployment {} has no pod template",
                    d["metadata"]["name"]
                ));
            }
            if !spec["nodeSelector"].is_object() {
                spec["nodeSelector"] = Value::Object(Default::default());
            }
            spec["nodeSelector"][CONTROL_PLANE_LABEL] = Value::String(String::new());
        }
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&d).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// `flux push artifact`: the folder `dir` as an OCI artifact to `url`
/// (`oci://host:port/repository:tag`, plain HTTP for a local registry), with `source` and
/// `revision` as its metadata. Returns the digest of what was pushed (`sha256:…`).
pub async fn flux_push(url: &str, dir: &Path, source: &str, revision: &str) -> Result<String> {
    let mut args = os(&["push", "artifact", url, "--path"]);
    args.push(dir.into());
    args.extend(os(&[
        "--source",
        source,
        "--revision",
        revision,
        "--output",
        "json",
    ]));
    let out = run(
        "flux",
        &args,
        "pushing the run's artifact",
        Duration::from_secs(120),
    )
    .await?;
    pushed_digest(&out).ok_or_else(|| {
        HostError::other(
            "pushing the run's artifact",
            url.to_string(),
            format!("`flux push artifact` printed no digest: {}", tail(&out, 5)),
        )
    })
}

/// The digest in `flux push artifact --output json`'s answer.
fn pushed_digest(out: &str) -> Option<String> {
    let v: Value = serde_json::from_str(out.trim()).ok()?;
    v["digest"]
        .as_str()
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_controllers_are_pinned_to_the_control_plane_and_the_rest_kept() {
        let yaml = "\
---
apiVersion: v1
kind: Namespace
metadata: {name: flux-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: source-controller, namespace: flux-system}
spec:
  template:
    spec:
      nodeSelector: {kubernetes.io/os: linux}
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists}]
      containers: [{name: manager, image: ghcr.io/fluxcd/source-controller:v1}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: kustomize-controller, namespace: flux-system}
spec:
  template:
    spec:
      containers: [{name: manager, image: ghcr.io/fluxcd/kustomize-controller:v1}]
";
        let out = pin_to_control_plane(yaml).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0]["kind"], "Namespace");
        assert!(docs[0]["spec"].is_null());
        for d in &docs[1..] {
            let sel = &d["spec"]["template"]["spec"]["nodeSelector"];
            assert_eq!(sel[CONTROL_PLANE_LABEL], "", "{d}");
        }
        // What was there stays.
        let src = &docs[1]["spec"]["template"]["spec"];
        assert_eq!(src["nodeSelector"]["kubernetes.io/os"], "linux");
        assert_eq!(src["tolerations"][0]["key"], CONTROL_PLANE_LABEL);
        assert!(pin_to_control_plane("kind: Deployment\nmetadata: {name: x}\n").is_err());
    }

    #[test]
    fn the_pushed_digest_is_read_from_fluxs_json() {
        let out = r#"{"repository":"127.0.0.1:5001/edgesim/q","tag":"abc","digest":"sha256:0123","url":"oci://127.0.0.1:5001/edgesim/q:abc"}"#;
        assert_eq!(pushed_digest(out).as_deref(), Some("sha256:0123"));
        assert_eq!(pushed_digest("pushed"), None);
        assert_eq!(pushed_digest(r#"{"digest":"md5:1"}"#), None);
    }

    #[tokio::test]
    async fn a_failing_tool_is_named_with_the_end_of_its_output() {
        let e = run(
            "sh",
            &os(&["-c", "echo one >&2; echo two >&2; exit 3"]),
            "testing",
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("sh -c"), "{e}");
        assert!(e.contains("one\ntwo"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        let e = run(
            "sh",
            &os(&["-c", "sleep 5"]),
            "testing",
            Duration::from_millis(100),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("did not finish"), "{e}");
        let ok = run(
            "sh",
            &os(&["-c", "echo hi"]),
            "testing",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(ok, "hi\n");
    }
}
