//! The `kind` target's assets: the generated Kind configurations (`kind/`, golden;
//! `EDGESIM_BLESS=1` rewrites them), the Flux repository (`flux/`: every folder builds with
//! `kubectl kustomize`, every Flux object validates against the published CRD schemas, its
//! references resolve), what `--target kind` delivers (builds, validates), the Nix flake
//! (parses), and, `#[ignore]`d, a real Kind cluster from the quickstart scenario with Flux
//! delivering `flux/clusters/local`, and the quickstart scenario run end to end with `edgesim
//! run --target kind` (the nightly workflow runs them: `cargo test -p edgesim --test kind --
//! --ignored`).
//!
//! Gates: `kubectl` (kubectl v1.32 with its built-in kustomize), `python` (python3 with
//! jsonschema, for the CRD schemas), `nix` (`nix-instantiate`). The CRD schemas are read from
//! `../shared/schemas/flux` beside the checkout; where that folder is absent the schema test
//! says so and returns (it is not a capability CI requires).

// The helpers below are parts of the tests: a failure in them is a failed test, so they unwrap
// as the tests do (clippy's allow-unwrap-in-tests covers only the #[test] functions).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgesim"));
    c.current_dir(repo("."));
    c
}

/// The host every checked-in example of `kind/` is generated for.
const EXAMPLE_HOST: [&str; 4] = ["--host-cpus", "16", "--host-memory", "64Gi"];

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn documents(text: &str, what: &Path) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{}: {e}", what.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn kind_examples_are_what_kind_config_generates() {
    let examples = yaml_files(&repo("kind"));
    assert!(
        examples.len() >= 2,
        "kind/ holds the examples: {examples:?}"
    );
    for example in &examples {
        let stem = example.file_stem().unwrap().to_str().unwrap();
        let scenario = format!("scenarios/{stem}.yaml");
        let text = run(bin().args(["kind-config", &scenario]).args(EXAMPLE_HOST));
        if std::env::var_os("EDGESIM_BLESS").is_some() {
            std::fs::write(example, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(example).unwrap();
        assert!(
            want == text,
            "{} differs from `edgesim kind-config {scenario} {}` (EDGESIM_BLESS=1 rewrites it)\n--- checked in\n{want}\n--- generated\n{text}",
            example.display(),
            EXAMPLE_HOST.join(" ")
        );
        // What Kind reads: a control plane, then one worker per scenario node, each with a
        // JoinConfiguration patch that parses and labels the node.
        let cfg: Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(cfg["apiVersion"], "kind.x-k8s.io/v1alpha4");
        let plan: Value =
            serde_json::from_str(&run(bin().args(["plan", &scenario, "--output", "json"])))
                .unwrap();
        let nodes = cfg["nodes"].as_array().unwrap();
        let scenario_nodes = plan["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), scenario_nodes.len() + 1, "{stem}");
        assert_eq!(nodes[0]["role"], "control-plane");
        for (node, want) in nodes[1..].iter().zip(scenario_nodes) {
            assert_eq!(node["role"], "worker");
            let patch: Value =
                serde_saphyr::from_str(node["kubeadmConfigPatches"][0].as_str().unwrap()).unwrap();
            assert_eq!(patch["kind"], "JoinConfiguration");
            let labels = patch["nodeRegistration"]["kubeletExtraArgs"]["node-labels"]
                .as_str()
                .unwrap();
            let name = want["name"].as_str().unwrap();
            assert!(
                labels
                    .split(',')
                    .any(|l| l == format!("edgesim.dev/node={name}")),
                "{stem}: {labels}"
            );
        }
    }
    // Every shipped scenario gets a configuration for that host.
    for s in yaml_files(&repo("scenarios")) {
        run(bin().arg("kind-config").arg(&s).args(EXAMPLE_HOST));
    }
}

#[test]
fn kind_config_refuses_a_host_smaller_than_a_board() {
    let out = bin()
        .args([
            "kind-config",
            "scenarios/inference-constrained.yaml",
            "--host-cpus",
            "6",
            "--host-memory",
            "64Gi",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node `orin` (profile `jetson-orin-nx-16gb`) needs 8 CPUs allocatable, but the host has 6"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// Every folder of flux/ that kustomize builds.
fn kustomize_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![repo("flux/infrastructure")];
    for group in ["flux/clusters", "flux/apps/overlays", "flux/apps/base"] {
        dirs.extend(subdirs(&repo(group)));
    }
    dirs
}

fn kustomize(dir: &Path) -> Vec<Value> {
    documents(&run(Command::new("kubectl").arg("kustomize").arg(dir)), dir)
}

/// The workloads of images/ (each a crate with a Dockerfile), bar the node's and the agent's
/// images.
fn workloads() -> Vec<String> {
    subdirs(&repo("images"))
        .into_iter()
        .filter(|d| d.join("Dockerfile").exists())
        .map(|d| d.file_name().unwrap().to_str().unwrap().to_string())
        .filter(|n| n != "node" && n != "agent")
        .collect()
}

fn pod_spec(o: &Value) -> &Value {
    &o["spec"]["template"]["spec"]
}

#[test]
fn every_flux_folder_builds_and_places_workloads_by_edgesim_labels() {
    if !edgesim::testing::program("kubectl", "kubectl") {
        return;
    }
    let mut built = BTreeMap::new();
    for dir in kustomize_dirs() {
        let docs = kustomize(&dir);
        assert!(!docs.is_empty(), "{} builds to nothing", dir.display());
        built.insert(dir.strip_prefix(repo("flux")).unwrap().to_path_buf(), docs);
    }
    // A base per workload, with the image images/build.sh tags for the host's architecture.
    let version = env!("CARGO_PKG_VERSION");
    let mut covered = BTreeSet::new();
    for w in workloads() {
        let docs = built
            .get(Path::new("apps/base").join(&w).as_path())
            .unwrap_or_else(|| panic!("no flux/apps/base/{w}"));
        let controller = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet")
            .unwrap_or_else(|| panic!("{w}: no Deployment or DaemonSet"));
        assert_eq!(
            pod_spec(controller)["containers"][0]["image"],
            format!("edgesim/{w}:{version}"),
            "{w}"
        );
        assert!(
            docs.iter()
                .any(|d| d["kind"] == "Service" && d["spec"]["ports"][0]["port"] == 8080),
            "{w}: no Service on 8080"
        );
        covered.insert(w);
    }
    // Every overlay places every pod by edgesim's labels, never by kubernetes.io/arch.
    let mut in_overlays = BTreeSet::new();
    for (dir, docs) in built.iter().filter(|(d, _)| d.starts_with("apps/overlays")) {
        let overlay = dir.file_name().unwrap().to_str().unwrap();
        for d in docs {
            assert_eq!(d["metadata"]["namespace"], "edgesim", "{overlay}: {d}");
            if d["kind"] != "Deployment" && d["kind"] != "DaemonSet" {
                continue;
            }
            let name = d["metadata"]["name"].as_str().unwrap();
            in_overlays.insert(name.to_string());
            let spec = pod_spec(d);
            let selector = spec["nodeSelector"].as_object().unwrap();
            assert!(
                selector.contains_key("edgesim.dev/arch"),
                "{overlay}/{name}"
            );
            assert!(
                !selector.contains_key("kubernetes.io/arch"),
                "{overlay}/{name}"
            );
            let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0];
            assert_eq!(terms["key"], "edgesim.dev/profile", "{overlay}/{name}");
            let limits = &spec["containers"][0]["resources"]["limits"];
            let tolerates_gpu = spec["tolerations"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == "nvidia.com/gpu"));
            match overlay {
                "jetson-orin" => {
                    assert_eq!(limits["nvidia.com/gpu"], 1, "{name}");
                    assert!(tolerates_gpu, "{name}");
                    assert_eq!(selector["edgesim.dev/arch"], "arm64");
                }
                "raspberry-pi-5" => {
                    assert_eq!(selector["edgesim.dev/arch"], "arm64");
                    let mem = limits["memory"].as_str().unwrap();
                    let mi: u64 = mem.strip_suffix("Mi").unwrap().parse().unwrap();
                    assert!(mi <= 256, "{name}: {mem} is not Pi-sized");
                    assert!(!tolerates_gpu && limits.get("nvidia.com/gpu").is_none());
                }
                _ => {
                    assert_eq!(selector["edgesim.dev/arch"], "amd64", "{overlay}/{name}");
                    assert!(!tolerates_gpu && limits.get("nvidia.com/gpu").is_none());
                }
            }
        }
    }
    assert_eq!(in_overlays, covered, "every workload is in an overlay");
    // A cluster folder holds Flux objects only (the apps come from their Kustomizations).
    for (dir, docs) in built.iter().filter(|(d, _)| d.starts_with("clusters")) {
        for d in docs {
            let api = d["apiVersion"].as_str().unwrap_or("");
            assert!(
                api.contains(".toolkit.fluxcd.io/"),
                "{}: {d}",
                dir.display()
            );
        }
    }
}

/// The Flux objects of one cluster folder, by kind and name.
struct ClusterObjects {
    dir: PathBuf,
    objects: Vec<Value>,
}

fn cluster_objects() -> Vec<ClusterObjects> {
    subdirs(&repo("flux/clusters"))
        .into_iter()
        .map(|dir| {
            let objects = yaml_files(&dir)
                .iter()
                .flat_map(|f| documents(&std::fs::read_to_string(f).unwrap(), f))
                .filter(|d| {
                    d["apiVersion"]
                        .as_str()
                        .is_some_and(|a| a.contains(".toolkit.fluxcd.io/"))
                })
                .collect();
            ClusterObjects { dir, objects }
        })
        .collect()
}

/// `apiVersion/kind` → the CRD version's `openAPIV3Schema`, from the CRD files in `dir`.
fn crd_schemas(dir: &Path) -> BTreeMap<String, Value> {
    let mut schemas = BTreeMap::new();
    for f in yaml_files(dir) {
        for crd in documents(&std::fs::read_to_string(&f).unwrap(), &f) {
            if crd["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let group = crd["spec"]["group"].as_str().unwrap();
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
            for v in crd["spec"]["versions"].as_array().unwrap() {
                let name = v["name"].as_str().unwrap();
                schemas.insert(
                    format!("{group}/{name}/{kind}"),
                    v["schema"]["openAPIV3Schema"].clone(),
                );
            }
        }
    }
    schemas
}

/// Validates each object against its schema as the API server would admit it: JSON Schema
/// (Draft 7 keywords; OpenAPI's own are ignored) with every object that lists `properties`
/// closed unless it preserves unknown fields, because the API server silently drops unknown
/// fields (a misspelt `dependOn` would vanish without an error). Returns each object's errors.
const VALIDATE_PY: &str = r#"
import json, sys, jsonschema
req = json.load(sys.stdin)
def close(s):
    if isinstance(s, dict):
        if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        for v in s.values():
            close(v)
    elif isinstance(s, list):
        for v in s:
            close(v)
out = []
for o in req["objects"]:
    schema = req["schemas"][o["schema"]]
    close(schema)
    v = jsonschema.Draft7Validator(schema)
    out.append(sorted("%s: %s" % ("/".join(map(str, e.absolute_path)) or "(root)", e.message) for e in v.iter_errors(o["object"])))
json.dump(out, sys.stdout)
"#;

fn schema_key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["apiVersion"].as_str().unwrap_or(""),
        o["kind"].as_str().unwrap_or("")
    )
}

fn validate(schemas: &BTreeMap<String, Value>, objects: &[Value]) -> Vec<Vec<String>> {
    let request = serde_json::json!({
        "schemas": schemas,
        "objects": objects.iter().map(|o| {
            let key = schema_key(o);
            assert!(schemas.contains_key(&key), "no CRD schema for {key}");
            serde_json::json!({"schema": key, "object": o})
        }).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", VALIDATE_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn flux_objects_validate_against_the_crds_and_their_references_resolve() {
    let schema_dir = repo("../shared/schemas/flux");
    if !schema_dir.is_dir() {
        eprintln!(
            "skipped: the Flux CRD schemas are not at {} (a shared folder beside the checkout)",
            schema_dir.display()
        );
        return;
    }
    if !edgesim::testing::python_yaml() {
        return;
    }
    let schemas = crd_schemas(&schema_dir);
    for kind in [
        "kustomize.toolkit.fluxcd.io/v1/Kustomization",
        "source.toolkit.fluxcd.io/v1/OCIRepository",
        "source.toolkit.fluxcd.io/v1/GitRepository",
    ] {
        assert!(schemas.contains_key(kind), "{kind} in {schemas:?}");
    }
    let clusters = cluster_objects();
    let envs: Vec<String> = clusters
        .iter()
        .map(|c| c.dir.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        envs,
        [
            "cloud-production",
            "edge-production",
            "edge-staging",
            "local",
            "staging"
        ],
        "the environments of the progressive path"
    );
    let mut all = Vec::new();
    for c in &clusters {
        let name = |o: &Value| o["metadata"]["name"].as_str().unwrap().to_string();
        let of_kind = |k: &str| -> BTreeSet<String> {
            c.objects
                .iter()
                .filter(|o| o["kind"] == k)
                .map(name)
                .collect()
        };
        let kustomizations = of_kind("Kustomization");
        let sources: BTreeSet<(String, String)> = c
            .objects
            .iter()
            .filter(|o| o["kind"] == "OCIRepository" || o["kind"] == "GitRepository")
            .map(|o| (o["kind"].as_str().unwrap().to_string(), name(o)))
            .collect();
        assert_eq!(sources.len(), 1, "{}: one source", c.dir.display());
        assert!(kustomizations.contains("edgesim-infrastructure"));
        for k in c.objects.iter().filter(|o| o["kind"] == "Kustomization") {
            let (n, spec) = (name(k), &k["spec"]);
            let at = format!("{}: {n}", c.dir.display());
            let deps: Vec<String> = spec["dependsOn"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|d| d["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            for d in &deps {
                assert!(
                    kustomizations.contains(d),
                    "{at}: dependsOn {d}, not in this cluster"
                );
            }
            if n.starts_with("edgesim-apps-") {
                assert!(
                    deps.iter().any(|d| d == "edgesim-infrastructure"),
                    "{at}: apps wait for the infrastructure"
                );
                assert_eq!(spec["wait"], true, "{at}");
            }
            assert_eq!(spec["prune"], true, "{at}");
            assert!(spec["timeout"].is_string(), "{at}");
            let source = (
                spec["sourceRef"]["kind"].as_str().unwrap().to_string(),
                spec["sourceRef"]["name"].as_str().unwrap().to_string(),
            );
            assert!(sources.contains(&source), "{at}: sourceRef {source:?}");
            // Paths are relative to the artifact's root, which is flux/.
            let path = spec["path"].as_str().unwrap();
            let dir = repo("flux").join(path.trim_start_matches("./"));
            assert!(
                dir.join("kustomization.yaml").is_file(),
                "{at}: path {path}"
            );
        }
        all.extend(c.objects.iter().cloned());
    }
    let errors = validate(&schemas, &all);
    for (o, e) in all.iter().zip(&errors) {
        assert!(
            e.is_empty(),
            "{} {}: {e:#?}",
            o["kind"],
            o["metadata"]["name"]
        );
    }

    // The validator rejects what the API server would: a Kustomization without `prune`, a
    // source of a kind Flux does not have, a malformed interval, a misspelt field.
    let good = all
        .iter()
        .find(|o| o["kind"] == "Kustomization")
        .unwrap()
        .clone();
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut o = good.clone();
        f(&mut o);
        o
    };
    let bad = [
        broken(&|o| {
            o["spec"].as_object_mut().unwrap().remove("prune");
        }),
        broken(&|o| o["spec"]["sourceRef"]["kind"] = "HelmRepository".into()),
        broken(&|o| o["spec"]["interval"] = "ten minutes".into()),
        broken(&|o| o["spec"]["dependOn"] = serde_json::json!([{"name": "x"}])),
    ];
    let errors = validate(&schemas, &bad);
    for (e, want) in errors
        .iter()
        .zip(["prune", "HelmRepository", "ten minutes", "dependOn"])
    {
        assert!(
            e.iter().any(|m| m.contains(want)),
            "the validator lets a broken object through ({want}): {e:?}"
        );
    }
    assert!(validate(&schemas, &[good]).iter().all(|e| e.is_empty()));
}

#[test]
fn the_flake_parses_and_offers_its_shells() {
    let flake = repo("flake.nix");
    let text = std::fs::read_to_string(&flake).unwrap();
    for shell in ["default", "sim", "cross", "kubeedge", "jetson"] {
        assert!(
            text.contains(&format!("{shell} = ")),
            "flake.nix: no devShells.{shell}"
        );
    }
    // The pinned toolchain is rust-toolchain.toml's, read by rust-overlay.
    assert!(text.contains("fromRustupToolchainFile ./rust-toolchain.toml"));
    // allowUnfree (CUDA) only in the jetson shell's own nixpkgs.
    assert_eq!(text.matches("allowUnfree = true").count(), 1, "{text}");
    if !edgesim::testing::program("nix", "nix-instantiate") {
        return;
    }
    let parse = |p: &Path| {
        Command::new("nix-instantiate")
            .arg("--parse")
            .arg(p)
            .output()
            .unwrap()
    };
    let out = parse(&flake);
    assert!(
        out.status.success(),
        "nix-instantiate --parse flake.nix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The parser finds a broken copy broken, so a pass means something.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("flake.nix");
    std::fs::write(&bad, text.replacen("outputs", "outputs = = ", 1)).unwrap();
    assert!(
        !parse(&bad).status.success(),
        "nix-instantiate accepts a broken flake"
    );
}

/// What `--target kind` delivers for the scenarios of the checked-in Kind examples
/// (`edgesim kind-delivery`): the artifact builds with kustomize into the run's namespace
/// and one pod per instance, each pinned to its node on the node's network, and the run's
/// Flux objects validate against Flux's CRD schemas.
#[test]
fn what_the_kind_target_delivers_builds_and_validates() {
    let schema_dir = repo("../shared/schemas/flux");
    let schemas =
        (schema_dir.is_dir() && edgesim::testing::python_yaml()).then(|| crd_schemas(&schema_dir));
    if schemas.is_none() {
        eprintln!(
            "the Flux objects are not validated: no CRD schemas at {} (or no python3 jsonschema)",
            schema_dir.display()
        );
    }
    let kubectl = edgesim::testing::program("kubectl", "kubectl");
    for scenario in ["quickstart", "iot-partition", "inference-constrained"] {
        let file = format!("scenarios/{scenario}.yaml");
        let plan: Value =
            serde_json::from_str(&run(bin().args(["plan", &file, "--output", "json"]))).unwrap();
        let instances: usize = plan["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["nodes"].as_array().unwrap().len())
            .sum();
        let dir = tempfile::tempdir().unwrap();
        run(bin()
            .args(["kind-delivery", &file, "--out"])
            .arg(dir.path()));
        let artifact = dir.path().join("artifact");
        let objects = if kubectl {
            kustomize(&artifact)
        } else {
            // What kustomize would build: the files its kustomization lists.
            let k = &documents(
                &std::fs::read_to_string(artifact.join("kustomization.yaml")).unwrap(),
                &artifact,
            )[0];
            k["resources"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    let f = artifact.join(r.as_str().unwrap());
                    documents(&std::fs::read_to_string(&f).unwrap(), &f)
                })
                .collect()
        };
        let pods: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Pod").collect();
        assert_eq!(pods.len(), instances, "{scenario}: one pod per instance");
        assert_eq!(
            objects.iter().filter(|o| o["kind"] == "Namespace").count(),
            1,
            "{scenario}"
        );
        let nodes: BTreeSet<&str> = plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        for p in &pods {
            let spec = &p["spec"];
            assert_eq!(spec["hostNetwork"], true, "{scenario}: {p}");
            let node = spec["nodeSelector"]["edgesim.dev/node"].as_str().unwrap();
            assert!(
                nodes.contains(node),
                "{scenario}: pod on unknown node {node}"
            );
            assert_eq!(p["metadata"]["namespace"], "edgesim-preview");
        }
        let flux_file = dir.path().join("flux.yaml");
        let flux = documents(&std::fs::read_to_string(&flux_file).unwrap(), &flux_file);
        let kinds: Vec<&str> = flux.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["OCIRepository", "Kustomization"], "{scenario}");
        if let Some(schemas) = &schemas {
            for (o, errors) in flux.iter().zip(validate(schemas, &flux)) {
                assert!(
                    errors.is_empty(),
                    "{scenario}: {} {}: {errors:?}",
                    o["kind"],
                    o["metadata"]["name"]
                );
            }
            // The validator finds a misspelt field: a pass means something.
            let mut bad = flux[1].clone();
            bad["spec"]["prunne"] = Value::Bool(true);
            assert!(!validate(schemas, &[bad])[0].is_empty());
        }
    }
}

/// Runs a program to success, returning its stdout; panics with its stderr otherwise.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes the Kind cluster and the registry container when dropped, also when the test
/// panicked half-way.
struct Cluster {
    name: String,
    kubeconfig: PathBuf,
}

const REGISTRY: &str = "edgesim-registry";

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What Flux saw, for the log of a failed run.
            let _ = Command::new("flux")
                .args(["get", "all", "-A"])
                .env("KUBECONFIG", &self.kubeconfig)
                .status();
            let _ = Command::new("kubectl")
                .args(["get", "pods", "-A", "-o", "wide"])
                .env("KUBECONFIG", &self.kubeconfig)
                .status();
        }
        let _ = Command::new("kind")
            .args(["delete", "cluster", "--name", &self.name])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .status();
        let _ = Command::new("docker").args(["rm", "-f", REGISTRY]).status();
    }
}

/// `3520Mi`, `3604480Ki`, `4` → bytes (the forms kubelet reports memory in).
fn bytes(q: &str) -> u64 {
    for (unit, m) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(unit) {
            return n.parse::<u64>().unwrap() * m;
        }
    }
    q.parse().unwrap()
}

/// The quickstart scenario as a Kind cluster: the generated configuration comes up with every
/// node labelled and sized like its board, and Flux, from `flux/` pushed as an OCI artifact to
/// a registry beside the cluster, brings `flux/clusters/local` to Ready, with the collectors
/// on the gateways and the sink on the cloud node. The cluster and the registry are deleted
/// at the end, also when it fails. Needs kind, flux, kubectl and a Docker daemon (images are
/// built with images/build.sh when missing).
#[test]
#[ignore = "needs kind and flux"]
fn kind_cluster_from_quickstart_comes_up() {
    for p in ["kind", "flux", "kubectl", "docker"] {
        assert!(edgesim::testing::have_program(p), "needs `{p}`");
    }
    let dir = tempfile::tempdir().unwrap();
    // The configuration for this machine (its CPUs and memory: what the kubelets see).
    let config = run(bin().args(["kind-config", "scenarios/quickstart.yaml"]));
    let config_file = dir.path().join("kind.yaml");
    std::fs::write(&config_file, &config).unwrap();
    let cfg: Value = serde_saphyr::from_str(&config).unwrap();
    let cluster = Cluster {
        name: cfg["name"].as_str().unwrap().to_string(),
        kubeconfig: dir.path().join("kubeconfig"),
    };
    let kubectl = || {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &cluster.kubeconfig);
        c
    };
    run(Command::new("kind")
        .args(["create", "cluster", "--wait", "5m", "--config"])
        .arg(&config_file)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig));

    // Nodes: the control plane tainted, one worker per scenario node with its labels, the
    // node's own architecture untouched, allocatable = the profile's.
    let plan: Value = serde_json::from_str(&run(bin().args([
        "plan",
        "scenarios/quickstart.yaml",
        "--output",
        "json",
    ])))
    .unwrap();
    let profiles: Value =
        serde_json::from_str(&run(bin().args(["profiles", "--output", "json"]))).unwrap();
    let nodes: Value =
        serde_json::from_str(&run(kubectl().args(["get", "nodes", "-o", "json"]))).unwrap();
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), plan["nodes"].as_array().unwrap().len() + 1);
    let label = |n: &Value, k: &str| n["metadata"]["labels"][k].as_str().map(str::to_string);
    let cp: Vec<&Value> = nodes
        .iter()
        .filter(|n| label(n, "edgesim.dev/role").as_deref() == Some("control-plane"))
        .collect();
    assert_eq!(cp.len(), 1);
    assert!(
        cp[0]["spec"]["taints"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/control-plane")),
        "{}",
        cp[0]["spec"]
    );
    let mut node_of = BTreeMap::new();
    for want in plan["nodes"].as_array().unwrap() {
        let name = want["name"].as_str().unwrap();
        let profile = want["profileName"]
            .as_str()
            .or_else(|| want["profile_name"].as_str())
            .unwrap();
        let n = nodes
            .iter()
            .find(|n| label(n, "edgesim.dev/node").as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no node labelled edgesim.dev/node={name}"));
        assert_eq!(label(n, "edgesim.dev/profile").as_deref(), Some(profile));
        assert_eq!(
            label(n, "kubernetes.io/arch").as_deref(),
            Some(edgesim::testing::host_arch()),
            "the node's own architecture is the host's"
        );
        let p = profiles
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == profile)
            .unwrap();
        let spec = &p["spec"];
        assert_eq!(
            label(n, "edgesim.dev/arch").as_deref(),
            spec["arch"].as_str()
        );
        let alloc = &n["status"]["allocatable"];
        assert_eq!(
            alloc["cpu"],
            spec["cpu"]["cores"].to_string(),
            "{name}: {alloc}"
        );
        // What the profile leaves workloads (total − reserved), as the netns target gives it.
        assert_eq!(
            bytes(alloc["memory"].as_str().unwrap()),
            p["limitsOnThisHost"]["memoryBytes"].as_u64().unwrap(),
            "{name}: {alloc}"
        );
        node_of.insert(
            n["metadata"]["name"].as_str().unwrap().to_string(),
            name.to_string(),
        );
    }

    // The workloads' images, into the cluster (nothing is pulled from a registry).
    let apps = [
        "cloud-sink",
        "edge-web",
        "iot-collector",
        "edge-cache",
        "offline-first",
    ];
    let arch = edgesim::testing::host_arch();
    edgesim::testing::ensure_images(&repo("."), arch, &apps).unwrap();
    for a in apps {
        run(Command::new("kind").args([
            "load",
            "docker-image",
            &format!("edgesim/{a}:{}", env!("CARGO_PKG_VERSION")),
            "--name",
            &cluster.name,
        ]));
    }

    // The registry beside the nodes, and flux/ pushed to it as the `local` tag.
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        REGISTRY,
        "--network",
        "kind",
        "-p",
        "127.0.0.1:5001:5000",
        "registry:2",
    ]));
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo("."))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("0".repeat(40), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let mut pushed = None;
    for _ in 0..30 {
        let out = Command::new("flux")
            .args([
                "push",
                "artifact",
                "oci://localhost:5001/edgesim/flux:local",
            ])
            .arg(format!("--path={}", repo("flux").display()))
            .args(["--source=https://github.com/edgesim/edgesim"])
            .arg(format!("--revision=local@sha1:{revision}"))
            .output()
            .unwrap();
        if out.status.success() {
            pushed = Some(out);
            break;
        }
        // The registry takes a moment to listen.
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert!(pushed.is_some(), "flux push artifact never succeeded");

    run(Command::new("flux")
        .args([
            "install",
            "--components=source-controller,kustomize-controller",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig));
    run(kubectl()
        .args(["apply", "-k"])
        .arg(repo("flux/clusters/local")));

    // Every Kustomization of flux/clusters/local Ready on a revision of the `local` tag.
    let expected = cluster_objects()
        .iter()
        .find(|c| c.dir.ends_with("local"))
        .map(|c| {
            c.objects
                .iter()
                .filter(|o| o["kind"] == "Kustomization")
                .count()
        })
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let ks: Value = serde_json::from_str(&run(kubectl().args([
            "get",
            "kustomizations.kustomize.toolkit.fluxcd.io",
            "-n",
            "flux-system",
            "-o",
            "json",
        ])))
        .unwrap();
        let items = ks["items"].as_array().unwrap();
        let ready = |k: &Value| {
            k["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            }) && k["status"]["lastAppliedRevision"]
                .as_str()
                .is_some_and(|r| r.starts_with("local@sha256:"))
        };
        if items.len() == expected && items.iter().all(ready) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Kustomizations not Ready after 10 minutes: {}",
            serde_json::to_string_pretty(&items.iter().map(|k| &k["status"]).collect::<Vec<_>>())
                .unwrap()
        );
        std::thread::sleep(std::time::Duration::from_secs(5));
    }

    // And the pods where the labels put them: a collector on each gateway, the sink in the
    // cloud.
    let pods: Value = serde_json::from_str(&run(
        kubectl().args(["get", "pods", "-n", "edgesim", "-o", "json"])
    ))
    .unwrap();
    let mut placed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in pods["items"].as_array().unwrap() {
        let app = p["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap()
            .to_string();
        let node = p["spec"]["nodeName"].as_str().unwrap();
        placed.entry(app).or_default().insert(
            node_of
                .get(node)
                .cloned()
                .unwrap_or_else(|| node.to_string()),
        );
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        placed["iot-collector"],
        set(&["gw-1", "gw-2", "gw-3"]),
        "{placed:?}"
    );
    assert_eq!(placed["cloud-sink"], set(&["sink"]), "{placed:?}");
    drop(cluster);
}

/// The quickstart scenario on a Kind cluster that edgesim creates, delivers to through Flux,
/// impairs and deletes: every assertion holds as on netns, Flux's delivery and post-heal
/// convergence are reported, and nothing is left (no cluster, no registry, no state file).
#[test]
#[ignore = "needs kind and flux"]
fn quickstart_passes_on_the_kind_target() {
    for p in ["kind", "flux", "docker"] {
        assert!(edgesim::testing::have_program(p), "needs `{p}`");
    }
    let arch = edgesim::testing::host_arch();
    edgesim::testing::ensure_images(&repo("."), arch, &["cloud-sink", "iot-collector"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = bin()
        .args([
            "run",
            "--target",
            "kind",
            "scenarios/quickstart.yaml",
            "--report",
        ])
        .arg(&report)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }))
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r["assertions"]
    );
    assert_eq!(r["target"], "kind");
    for a in r["assertions"].as_array().unwrap() {
        assert_eq!(a["passed"], true, "{a}");
    }
    let notes: Vec<&str> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with("Flux delivered")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.starts_with("Flux converged")),
        "{notes:?}"
    );
    // The workloads' output was collected from the pods.
    let log = dir.path().join("workloads/sink/sink.stdout.log");
    assert!(
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "{}",
        log.display()
    );
    // Nothing is left.
    let left = run(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=edgesim.run={}", r["run_id"].as_str().unwrap()),
        "-q",
    ]));
    assert!(left.trim().is_empty(), "containers left: {left}");
    let clusters = run(Command::new("kind").args(["get", "clusters"]));
    assert!(!clusters.contains("edgesim-quickstart"), "{clusters}");
}

/// A scenario whose boards are all amd64 (a Kind node runs the host's architecture, and a
/// cluster of your own must have the profiles' architectures).
const BYO_SCENARIO: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: byo}
spec:
  seed: 3
  duration: DURATION
  sites:
    cloud: {}
    factory: {uplink: {site: cloud, loss: 0.5%, rate: 20mbit}}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, count: 2, site: factory, profile: cloud-small}
  workloads:
    - {name: sink, nodes: [sink], app: cloud-sink}
    - name: collector
      nodes: ['gw-*']
      app: iot-collector
      args: [--devices, '2', --rate, '5', --max-readings, '100']
      env: {SINK_URL: 'http://sink:8080'}
      restart: on-failure
  timeline:
    - {at: 8s, partition: {name: cut, between: [[site/factory], [site/cloud]]}}
    - {at: HEAL, heal: {name: cut}}
  probes:
    - {name: uplink, from: gw-1, ping: sink, every: 200ms}
  assertions:
    - {name: cut-while-partitioned, probe: uplink, during: 9s..17s, expect: 'success_rate == 0%'}
    - {name: no-reading-lost, metric: {workload: sink, name: edgesim_sink_missing_total}, at: end, expect: '== 0'}
";

/// What a node container's network namespace holds of edgesim's: its nftables rules.
fn edgesim_rules(node: &str) -> bool {
    let pid = run(Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", node]));
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", pid.trim()))
        .args(["nft", "list", "ruleset"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("edgesim")
}

/// A cluster of your own, as a user has one: a Kind cluster the test makes from the scenario's
/// configuration (its nodes labelled `edgesim.dev/node`), Flux installed, a registry this
/// machine reaches on localhost:5001 and the nodes as `http://edgesim-byo-registry:5000`.
/// `edgesim run --target kind --kubeconfig … --registry …` delivers the agents and the
/// workloads through Flux and passes; a run SIGKILLed in the middle of a partition leaves
/// nodes whose agents reverted by themselves within the lease (5 s, plus a generous margin for
/// a loaded runner), and `edgesim cleanup` removes the run from the cluster.
#[test]
#[ignore = "needs kind and flux"]
fn a_cluster_of_your_own_runs_the_scenario_and_its_agents_revert_by_themselves() {
    for p in ["kind", "flux", "kubectl", "docker", "nsenter", "nft"] {
        assert!(edgesim::testing::have_program(p), "needs `{p}`");
    }
    let arch = edgesim::testing::host_arch();
    edgesim::testing::ensure_images(&repo("."), arch, &["cloud-sink", "iot-collector", "agent"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = |duration: &str, heal: &str| {
        let f = dir.path().join(format!("byo-{duration}.yaml"));
        std::fs::write(
            &f,
            BYO_SCENARIO
                .replace("DURATION", duration)
                .replace("HEAL", heal),
        )
        .unwrap();
        f
    };
    let quick = scenario("30s", "18s");

    // The cluster: the scenario's configuration, plus containerd reading registry hosts from
    // certs.d (kind's documented local-registry set-up).
    let mut config = run(bin().arg("kind-config").arg(&quick));
    config.push_str(
        "containerdConfigPatches:\n- |-\n  [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"/etc/containerd/certs.d\"\n",
    );
    let config_file = dir.path().join("kind.yaml");
    std::fs::write(&config_file, &config).unwrap();
    let cluster = Cluster {
        name: "edgesim-byo".into(),
        kubeconfig: dir.path().join("kubeconfig"),
    };
    run(Command::new("kind")
        .args([
            "create",
            "cluster",
            "--name",
            &cluster.name,
            "--wait",
            "5m",
            "--config",
        ])
        .arg(&config_file)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig));
    let registry = "edgesim-byo-registry";
    struct Registry(&'static str);
    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", self.0]).status();
        }
    }
    let _registry = Registry(registry);
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        registry,
        "--network",
        "kind",
        "-p",
        "127.0.0.1:5001:5000",
        "registry:2",
    ]));
    let nodes: Vec<String> =
        run(Command::new("kind").args(["get", "nodes", "--name", &cluster.name]))
            .lines()
            .map(str::to_string)
            .collect();
    for n in &nodes {
        run(Command::new("docker").args([
            "exec",
            n,
            "sh",
            "-c",
            &format!(
                "mkdir -p /etc/containerd/certs.d/{registry}:5000 && printf '[host.\"http://{registry}:5000\"]\\n' > /etc/containerd/certs.d/{registry}:5000/hosts.toml"
            ),
        ]));
    }
    run(Command::new("flux")
        .args([
            "install",
            "--components",
            "source-controller,kustomize-controller",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig));
    let reg = format!("localhost:5001=http://{registry}:5000");
    let edgesim_on_cluster = |file: &Path, out: &Path| {
        let mut c = bin();
        c.args(["run", "--target", "kind", "--kubeconfig"])
            .arg(&cluster.kubeconfig)
            .args(["--registry", &reg, "--out"])
            .arg(out)
            .arg("--report")
            .arg(out.join("report.json"))
            .arg(file);
        c
    };

    // 1. A run: agents and workloads delivered by Flux, the partition cuts, nothing lost.
    let out = dir.path().join("run");
    let o = edgesim_on_cluster(&quick, &out).output().unwrap();
    let report = std::fs::read_to_string(out.join("report.json")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}{}\n{report}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_str(&report).unwrap();
    let notes = r["notes"].to_string();
    assert!(notes.contains("Flux delivered the agents"), "{notes}");
    assert!(notes.contains("Flux converged"), "{notes}");
    let namespaces = run(Command::new("kubectl")
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", &cluster.kubeconfig));
    assert!(!namespaces.contains("edgesim-"), "{namespaces}");
    for n in &nodes {
        assert!(!edgesim_rules(n), "{n} holds edgesim rules after the run");
    }

    // 2. A run killed in the middle of a long partition: the agents revert by themselves.
    let long = scenario("120s", "100s");
    let out = dir.path().join("killed");
    let mut child = edgesim_on_cluster(&long, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !nodes.iter().any(|n| edgesim_rules(n)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the partition never came"
        );
        assert!(child.try_wait().unwrap().is_none(), "edgesim exited early");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Past the partition's start (8 s into the timeline), into the cut.
    std::thread::sleep(std::time::Duration::from_secs(12));
    child.kill().unwrap();
    let killed = std::time::Instant::now();
    let _ = child.wait();
    while nodes.iter().any(|n| edgesim_rules(n)) {
        assert!(
            killed.elapsed() < std::time::Duration::from_secs(30),
            "the agents did not revert within 30 s of the controller's SIGKILL"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "the agents reverted {:.2} s after the controller's SIGKILL (lease 5 s)",
        killed.elapsed().as_secs_f64()
    );
    run(bin().arg("cleanup"));
    let namespaces = run(Command::new("kubectl")
        .args(["get", "namespaces", "-o", "name"])
        .env("KUBECONFIG", &cluster.kubeconfig));
    assert!(
        !namespaces.contains("edgesim-"),
        "after cleanup: {namespaces}"
    );
}
