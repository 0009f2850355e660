//! One `cargo test` case per scenario file (feature `harness`), for your own crate.
//!
//! In `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! edgesim = { version = "0.1", features = ["harness"] }
//!
//! [[test]]
//! name = "scenarios"
//! harness = false
//! ```
//!
//! and in `tests/scenarios.rs`, as its `fn main`:
//!
//! ```no_run
//! edgesim::harness::Harness::new()
//!     .folder(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))
//!     // Your own service as the scenarios' `svc` workload: in a crate with a `svc`
//!     // binary, `env!("CARGO_BIN_EXE_svc")` (Cargo builds it for the tests).
//!     .workload_program("svc", "/usr/local/bin/svc")
//!     .main()
//! ```
//!
//! `cargo test` then lists `scenarios/<file stem>` cases and runs them one at a time (pass
//! `--test-threads N` for more): each passes when every assertion of its scenario holds, and
//! fails with [`Report::account`](crate::report::Report::account) — what failed, when, and
//! what the timeline had done by then — and the path of its HTML report. A file whose first
//! lines hold `# expect-failed: a, b` must fail exactly those assertions (a scenario that
//! shows a known weakness). Filters and `--list` work as for any test.
//!
//! Where the machine cannot run scenarios (not root: no network namespaces; the `docker`
//! target without a Docker Engine), every case is ignored with the reason printed; where
//! `EDGESIM_REQUIRE` names that capability (`netns`, `docker`; CI sets it), the cases fail
//! instead, so CI cannot pass by skipping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::session::{Run, Scenario, Target};

type Configure = Arc<dyn Fn(Run) -> Run + Send + Sync>;

/// Scenario folders and what every run of them gets.
#[derive(Clone, Default)]
pub struct Harness {
    folders: Vec<PathBuf>,
    target: Target,
    programs: BTreeMap<String, PathBuf>,
    out_dir: Option<PathBuf>,
    configure: Option<Configure>,
}

impl Harness {
    pub fn new() -> Self {
        Self::default()
    }

    /// A folder whose `*.yaml` / `*.yml` files are scenarios (not recursive).
    pub fn folder(mut self, dir: impl Into<PathBuf>) -> Self {
        self.folders.push(dir.into());
        self
    }

    /// Where they run (`netns` by default).
    pub fn target(mut self, t: Target) -> Self {
        self.target = t;
        self
    }

    /// [`Run::workload_program`] for every scenario that has that workload.
    pub fn workload_program(mut self, workload: &str, program: impl Into<PathBuf>) -> Self {
        self.programs.insert(workload.to_string(), program.into());
        self
    }

    /// The parent of the runs' folders (default: `edgesim-runs` under the crate's folder).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Any other override, applied to each [`Run`] (e.g. `|r| r.seed(7)`).
    pub fn configure(mut self, f: impl Fn(Run) -> Run + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// The test cases: one per scenario file, named `<folder>/<file stem>`.
    pub fn trials(&self) -> Vec<Trial> {
        let missing = self.missing();
        if let Some((cap, why)) = &missing
            && !crate::testing::required(cap)
        {
            eprintln!("edgesim: scenarios are ignored here: needs `{cap}`: {why}");
        }
        let mut out = Vec::new();
        for dir in &self.folders {
            let label = dir
                .file_name()
                .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
            let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                    .collect(),
                Err(e) => {
                    let msg = format!("reading the scenario folder {}: {e}", dir.display());
                    out.push(Trial::test(label.clone(), move || Err(msg.into())));
                    continue;
                }
            };
            files.sort();
            for f in files {
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let name = format!("{label}/{stem}");
                let me = self.clone();
                let missing = missing.clone();
                let ignored = missing
                    .as_ref()
                    .is_some_and(|(cap, _)| !crate::testing::required(cap));
                out.push(
                    Trial::test(name, move || match missing {
                        Some((cap, why)) => Err(format!(
                            "EDGESIM_REQUIRE lists `{cap}` but it is not available: {why}"
                        )
                        .into()),
                        None => me.run_one(&f),
                    })
                    .with_ignored_flag(ignored),
                );
            }
        }
        out
    }

    /// Runs the cases as the test binary's `main` (parses the usual test arguments; one
    /// scenario at a time unless `--test-threads` says otherwise) and exits.
    pub fn main(self) -> ! {
        let mut args = Arguments::from_args();
        if args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        libtest_mimic::run(&args, self.trials()).exit()
    }

    /// What this machine lacks to run the scenarios: (capability, why).
    fn missing(&self) -> Option<(String, String)> {
        match self.target {
            Target::Netns if !nix::unistd::geteuid().is_root() => Some((
                "netns".into(),
                "must run as root to create network namespaces".into(),
            )),
            Target::Docker if !nix::unistd::geteuid().is_root() => {
                Some(("docker".into(), "must run as root".into()))
            }
            Target::Docker if !crate::testing::docker_answers() => Some((
                "docker".into(),
                "no Docker Engine answers on /var/run/docker.sock".into(),
            )),
            _ => None,
        }
    }

    fn run_one(&self, file: &Path) -> Result<(), Failed> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let expect_failed = expected_failures(&text);
        let sc = Scenario::from_file(file).map_err(|e| e.to_string())?;
        let names: Vec<String> = sc
            .model()
            .spec
            .workloads
            .iter()
            .map(|w| w.name.value.clone())
            .collect();
        let mut run = Run::new(sc).target(self.target);
        for (w, p) in &self.programs {
            if names.contains(w) {
                run = run.workload_program(w, p);
            }
        }
        let parent = self.out_dir.clone().unwrap_or_else(|| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join("edgesim-runs")
        });
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        run = run.out_dir(parent.join(stem));
        if let Some(f) = &self.configure {
            run = f(run);
        }
        let report = run.run_blocking().map_err(|e| e.to_string())?;
        if report.error.is_some() {
            return Err(report.account().into());
        }
        let mut failed: Vec<String> = report.failures().iter().map(|v| v.name.clone()).collect();
        failed.sort();
        if failed == expect_failed {
            Ok(())
        } else if expect_failed.is_empty() {
            Err(report.account().into())
        } else {
            Err(format!(
                "expected exactly these assertions to fail: {}; failed: {}\n{}",
                expect_failed.join(", "),
                if failed.is_empty() {
                    "none".to_string()
                } else {
                    failed.join(", ")
                },
                report.account()
            )
            .into())
        }
    }
}

/// The sorted names of a `# expect-failed: a, b` line among the file's leading comments.
fn expected_failures(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .filter_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("expect-failed:")
        })
        .flat_map(|rest| rest.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_failures_come_from_the_leading_comments() {
        assert_eq!(
            expected_failures(
                "# a scenario\n# expect-failed: b, a\n\napiVersion: x\n# expect-failed: c\n"
            ),
            ["a", "b"]
        );
        assert!(expected_failures("apiVersion: x\n").is_empty());
    }

    #[test]
    fn cases_are_named_by_folder_and_file_and_a_missing_folder_fails() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("chaos");
        std::fs::create_dir(&dir).expect("mkdir");
        for f in ["b.yaml", "a.yml", "notes.txt"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        let h = Harness::new().folder(&dir).folder(d.path().join("absent"));
        let names: Vec<String> = h.trials().iter().map(|t| t.name().to_string()).collect();
        assert_eq!(names, ["chaos/a", "chaos/b", "absent"]);
    }
}
