//! One test per scenario file, run through the real `edgesim` binary.
//!
//! - `scenarios/*.yaml`: must validate without warnings, and (as root) run to a pass (exit 0).
//! - portable scenarios (`metadata.labels: {edgesim.dev/portable: "true"}`) run on `netns` and
//!   on `docker` (capability `docker`; the images they need are built with `images/build.sh`
//!   when the Engine lacks them), and every assertion must get the same verdict on both:
//!   the conformance matrix, one trial per scenario.
//! - `tests/scenarios/pass/*.yaml`: the same; they exercise every timeline action.
//! - `tests/scenarios/fail/*.yaml`: must validate and run to a failure (exit 1); the header
//!   comment `# expect-failed: a, b` names exactly the assertions that must fail.
//! - `tests/scenarios/reject/*.yaml`: `edgesim validate` must refuse them (exit 2) with exactly
//!   the diagnostics in the neighbouring `.stderr` file (golden; `EDGESIM_BLESS=1` rewrites
//!   them).
//! - every file of `scenarios/`, `pass/` and `fail/`, read by a YAML 1.1 parser (PyYAML, as
//!   Ansible and other Python tools read it; Go's yaml.v2, under kubectl and kustomize, reads
//!   keys alike), must validate against `edgesim schema` (Python `jsonschema`, Draft 2020-12):
//!   a key such as `on` that YAML 1.1 reads as a boolean cannot. Needs `python3` with PyYAML
//!   and jsonschema; skips without them (fails when EDGESIM_REQUIRE lists `python`).
//!
//! Scenarios with `spec.cpuScale` (verdicts that rest on CPU capacity) or the label
//! `edgesim.dev/runs-alone: "true"` (timing precision) run alone; the others run side by side.
//! The `cpuScale` ones measure the host's speed just before they run
//! (`EDGESIM_HOST_SPEED=measure`); every other run pins 1.0.
//!
//! Runs need root; without it they skip with a reason (and fail when EDGESIM_REQUIRE lists
//! `netns`). Scenarios longer than `EDGESIM_MAX_SCENARIO_SECS` (default 90) are only
//! validated.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use libtest_mimic::{Arguments, Failed, Trial};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_edgesim")
}

fn yamls(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn validate(file: &Path) -> Result<(), Failed> {
    let out = Command::new(bin())
        .arg("validate")
        .arg(file)
        .output()
        .map_err(|e| format!("running edgesim: {e}"))?;
    if out.status.code() != Some(0) {
        return Err(format!(
            "`edgesim validate {}` exited {:?}:\n{}",
            file.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    // What we ship is what we tell users to write: no deprecated keys.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("warning:") {
        return Err(format!("`edgesim validate {}` warned:\n{stderr}", file.display()).into());
    }
    Ok(())
}

/// Scenario duration in seconds, read without the library (a test of the binary).
fn duration_secs(file: &Path) -> f64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("duration:") {
            let v = v.trim();
            let (num, unit) =
                v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.trim().parse().unwrap_or(f64::MAX);
            return match unit {
                "ms" => n / 1e3,
                "m" => n * 60.0,
                "h" => n * 3600.0,
                _ => n,
            };
        }
    }
    f64::MAX
}

fn expected_failures(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("# expect-failed:"))
        .map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a scenario is marked portable (`metadata.labels: {edgesim.dev/portable: "true"}`):
/// it runs on every target with the same verdict per assertion.
fn portable(file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    edgesim::scenario::validate::parse(file, &text).is_ok_and(|sc| {
        sc.metadata
            .labels
            .get(PORTABLE)
            .is_some_and(|v| v == "true")
    })
}

const PORTABLE: &str = "edgesim.dev/portable";

/// Scenario runs share the machine, except CPU-shaped ones (below), which run alone.
static RUNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A held turn on the machine; dropping it lets the next run in.
enum Turn<'a> {
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'a, ()>),
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>),
}

/// Whether a scenario's verdicts rest on CPU capacity (`spec.cpuScale` set): a CFS quota is
/// a ceiling, not a guarantee, so such a run must not share a small machine's CPUs with
/// other trials (a 2-CPU CI machine runs two trials at once): every other trial waits.
/// The label `edgesim.dev/runs-alone: "true"` asks for the same (verdicts that rest on timing
/// precision).
fn cpu_shaped(file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    cpu_bound(file)
        || edgesim::scenario::validate::parse(file, &text).is_ok_and(|sc| {
            sc.metadata
                .labels
                .get("edgesim.dev/runs-alone")
                .map(String::as_str)
                == Some("true")
        })
}

/// Whether a scenario's verdicts rest on CPU capacity (`spec.cpuScale` set). Such a run takes
/// the host's speed from a fresh measurement (`EDGESIM_HOST_SPEED=measure`) instead of the
/// pinned 1.0: a shared cloud VM drifts from 0.7 to 1.4 × a Pi 5 core over hours, wider than
/// the Orin NX / Pi 5 capacity ratio that such a verdict rests on. Every other test pins.
fn cpu_bound(file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    edgesim::scenario::validate::parse(file, &text).is_ok_and(|sc| sc.spec.cpu_scale.is_some())
}

/// The apps a scenario file runs (`app: NAME`), for building their images.
fn apps_of(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut apps: Vec<String> = text
        .split("app:")
        .skip(1)
        .filter_map(|rest| {
            rest.trim_start()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .map(str::to_string)
        })
        .filter(|a| !a.is_empty())
        .collect();
    apps.sort();
    apps.dedup();
    apps
}

/// A portable scenario on both targets: each run must meet `want`, and every assertion must
/// have the same verdict on `docker` as on `netns`. Prints the row of the conformance matrix.
fn conformance(file: &Path, want: i32) -> Result<(), Failed> {
    let Some(on_netns) = run_on(file, want, "netns")? else {
        return Ok(());
    };
    if !edgesim::testing::gate(
        "docker",
        edgesim::testing::docker_answers(),
        "no Docker Engine answers",
    ) {
        return Ok(());
    }
    let apps = apps_of(file);
    let names: Vec<&str> = apps.iter().map(String::as_str).chain(["node"]).collect();
    {
        // Building images compiles for minutes on every CPU: never beside a run, least of all
        // beside a CPU-shaped one that was promised the machine.
        let _alone = RUNS.write().unwrap_or_else(|e| e.into_inner());
        edgesim::testing::ensure_images(&root(), edgesim::testing::host_arch(), &names)?;
    }
    let Some(on_docker) = run_on(file, want, "docker")? else {
        return Ok(());
    };
    let mut rows = Vec::new();
    let mut differ = Vec::new();
    for (name, n) in &on_netns {
        let d = on_docker.iter().find(|(m, _)| m == name).map(|(_, v)| *v);
        let mark = |v: Option<bool>| match v {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "missing",
        };
        rows.push(format!(
            "  {name:<32} netns {:<7} docker {}",
            mark(Some(*n)),
            mark(d)
        ));
        if d != Some(*n) {
            differ.push(name.clone());
        }
    }
    eprintln!("conformance {}:\n{}", name_of(file), rows.join("\n"));
    if !differ.is_empty() {
        return Err(format!(
            "verdicts differ between netns and docker for {differ:?}:\n{}",
            rows.join("\n")
        )
        .into());
    }
    Ok(())
}

fn run(file: &Path, want: i32) -> Result<(), Failed> {
    run_on(file, want, "netns").map(drop)
}

/// Runs a scenario on `target`; its verdicts (assertion name, passed), or `None` when the
/// machine cannot run it (skipped with a reason).
fn run_on(file: &Path, want: i32, target: &str) -> Result<Option<Vec<(String, bool)>>, Failed> {
    if !edgesim::testing::netns() {
        return Ok(None);
    }
    // A CPU-shaped scenario's verdict rests on its nodes getting their quota: it runs alone,
    // the others share the machine.
    let _turn = if cpu_shaped(file) {
        Turn::Alone(RUNS.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Turn::Shared(RUNS.read().unwrap_or_else(|e| e.into_inner()))
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let report = dir.path().join("report.json");
    let junit = dir.path().join("junit.xml");
    let out = Command::new(bin())
        .arg("run")
        .arg(file)
        .args(["--target", target])
        .arg("--report")
        .arg(&report)
        .arg("--junit")
        .arg(&junit)
        .arg("--out")
        .arg(dir.path().join("out"))
        .envs(cpu_bound(file).then_some((
            edgesim::profile::HOST_SPEED_ENV,
            edgesim::profile::MEASURE_NOW,
        )))
        .output()
        .map_err(|e| format!("running edgesim: {e}"))?;
    let code = out.status.code().unwrap_or(-1);
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if code != want {
        return Err(format!(
            "`edgesim run --target {target} {}` exited {code}, expected {want}\n{text}",
            file.display()
        )
        .into());
    }
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report).map_err(|e| format!("no report: {e}\n{text}"))?,
    )
    .map_err(|e| format!("bad report: {e}"))?;
    if !junit.exists() {
        return Err("no JUnit file written".into());
    }
    if !r["teardown"]["errors"]
        .as_array()
        .is_some_and(|a| a.is_empty())
    {
        return Err(format!("teardown reported errors: {}", r["teardown"]["errors"]).into());
    }
    if want == 1 {
        let failed: Vec<String> = r["assertions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|v| v["passed"] == false)
                    .filter_map(|v| v["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut expected = expected_failures(file);
        expected.sort();
        let mut got = failed.clone();
        got.sort();
        if !expected.is_empty() && got != expected {
            return Err(format!(
                "failed assertions {got:?}, expected exactly {expected:?}\n{text}"
            )
            .into());
        }
    }
    let verdicts = r["assertions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| Some((v["name"].as_str()?.to_string(), v["passed"].as_bool()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(verdicts))
}

fn normalise(stderr: &str, file: &Path) -> String {
    stderr.replace(
        &file.display().to_string(),
        &format!("{}", file.file_name().unwrap_or_default().to_string_lossy()),
    )
}

fn reject(file: &Path) -> Result<(), Failed> {
    let out = Command::new(bin())
        .arg("validate")
        .arg(file)
        .output()
        .map_err(|e| format!("running edgesim: {e}"))?;
    let stderr = normalise(&String::from_utf8_lossy(&out.stderr), file);
    if out.status.code() != Some(2) {
        return Err(format!(
            "`edgesim validate` exited {:?}, expected 2\n{stderr}",
            out.status.code()
        )
        .into());
    }
    let golden = file.with_extension("stderr");
    if std::env::var_os("EDGESIM_BLESS").is_some() {
        std::fs::write(&golden, &stderr).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let want = std::fs::read_to_string(&golden).map_err(|e| {
        format!(
            "missing golden file {} ({e}); run with EDGESIM_BLESS=1 to create it.\ngot:\n{stderr}",
            golden.display()
        )
    })?;
    if want != stderr {
        return Err(format!(
            "diagnostics differ from {}\n--- expected\n{want}\n--- got\n{stderr}",
            golden.display()
        )
        .into());
    }
    Ok(())
}

/// Reads the scenario named by argv[1] as YAML 1.1 tools do (PyYAML: the bare key `on` becomes
/// `True`) and checks it against the schema on stdin with Draft 2020-12; prints each schema
/// error and exits 3 when there is any (1 is Python's own exit on an exception).
const YAML11_CHECK: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(sys.stdin)
jsonschema.Draft202012Validator.check_schema(schema)
with open(sys.argv[1], encoding="utf-8") as f:
    doc = yaml.safe_load(f)
errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
    print("/".join(str(p) for p in e.absolute_path) or "(top)", "->", e.message)
sys.exit(3 if errors else 0)
"#;

/// `edgesim schema`, run once.
fn schema() -> Result<&'static str, Failed> {
    static SCHEMA: OnceLock<Result<String, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let out = Command::new(bin())
                .arg("schema")
                .output()
                .map_err(|e| format!("running edgesim schema: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`edgesim schema` exited {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            String::from_utf8(out.stdout).map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| e.clone().into())
}

/// The schema errors of `file` read as YAML 1.1; `None` when it validates.
fn yaml11_schema_errors(file: &Path) -> Result<Option<String>, Failed> {
    let mut child = Command::new("python3")
        .args(["-c", YAML11_CHECK])
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running python3: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(schema()?.as_bytes())
        .map_err(|e| format!("writing the schema to python3: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("python3: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(None),
        Some(3) => Ok(Some(text)),
        code => {
            Err(format!("the schema check itself failed (python3 exited {code:?}):\n{text}").into())
        }
    }
}

fn schema_yaml11(file: &Path) -> Result<(), Failed> {
    if !edgesim::testing::python_yaml() {
        return Ok(());
    }
    match yaml11_schema_errors(file)? {
        None => Ok(()),
        Some(errors) => Err(format!(
            "{} does not validate against `edgesim schema` when read as YAML 1.1 (PyYAML):\n{errors}",
            file.display()
        )
        .into()),
    }
}

/// The check above can fail: read as YAML 1.1, a workload's deprecated key `on` is the boolean
/// `true`, which the schema refuses; the same scenario with `nodes` passes.
fn schema_yaml11_refuses_on() -> Result<(), Failed> {
    if !edgesim::testing::python_yaml() {
        return Ok(());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let write = |key: &str| -> Result<PathBuf, Failed> {
        let f = dir.path().join(format!("{key}.yaml"));
        std::fs::write(
            &f,
            format!(
                "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {{name: t}}\nspec:\n  duration: 5s\n  sites: {{lab: {{}}}}\n  nodes:\n    - {{name: a, site: lab, profile: cloud-small}}\n  workloads:\n    - {{name: w, {key}: [a], command: sleep 1}}\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        Ok(f)
    };
    if let Some(errors) = yaml11_schema_errors(&write("nodes")?)? {
        return Err(format!("a workload with `nodes` should validate:\n{errors}").into());
    }
    match yaml11_schema_errors(&write("on")?)? {
        Some(errors) if errors.contains("True was unexpected") => Ok(()),
        Some(errors) => Err(format!(
            "a workload with `on` was refused, but not for its key `true`:\n{errors}"
        )
        .into()),
        None => Err("a workload with `on`, read as YAML 1.1, validated against the schema".into()),
    }
}

/// Runs a light trial (validation, schema, golden diagnostics) as a sharer of the machine: it
/// waits while a CPU-shaped run has the machine to itself (python and `edgesim` processes on
/// the other test thread would take a CPU from the quota the run's verdict rests on).
fn light(f: impl FnOnce() -> Result<(), Failed>) -> Result<(), Failed> {
    let _turn = RUNS.read().unwrap_or_else(|e| e.into_inner());
    f()
}

fn main() {
    let args = Arguments::from_args();
    let max_secs: f64 = std::env::var("EDGESIM_MAX_SCENARIO_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90.0);
    let mut trials = Vec::new();
    let shipped = yamls(&root().join("scenarios"));
    let pass = yamls(&root().join("tests/scenarios/pass"));
    let fail = yamls(&root().join("tests/scenarios/fail"));
    let rejected = yamls(&root().join("tests/scenarios/reject"));
    assert!(!shipped.is_empty(), "no scenarios found under scenarios/");
    for f in shipped.iter().chain(&pass).chain(&fail) {
        let g = f.clone();
        trials.push(Trial::test(format!("validate {}", name_of(f)), move || {
            light(|| validate(&g))
        }));
    }
    for f in shipped.iter().chain(&pass).chain(&fail) {
        let g = f.clone();
        trials.push(Trial::test(
            format!("schema-yaml1.1 {}", name_of(f)),
            move || light(|| schema_yaml11(&g)),
        ));
    }
    trials.push(Trial::test("schema-yaml1.1 refuses the key `on`", || {
        light(schema_yaml11_refuses_on)
    }));
    for (files, want) in [(&shipped, 0), (&pass, 0), (&fail, 1)] {
        for f in files {
            let g = f.clone();
            // Portable scenarios run once per target, as one row of the conformance matrix.
            let t = if portable(f) {
                Trial::test(format!("conformance {}", name_of(f)), move || {
                    conformance(&g, want)
                })
            } else {
                Trial::test(format!("run {}", name_of(f)), move || run(&g, want))
            };
            trials.push(if duration_secs(f) > max_secs {
                t.with_ignored_flag(true)
            } else {
                t
            });
        }
    }
    for f in &rejected {
        let g = f.clone();
        trials.push(Trial::test(format!("reject {}", name_of(f)), move || {
            light(|| reject(&g))
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
