//! Capability gates for tests that need privileges, kernel features or daemons.
//!
//! A test that needs something the machine lacks skips with a printed reason, unless the
//! `EDGESIM_REQUIRE` environment variable names that capability (comma- or space-separated;
//! CI sets it), in which case the test fails: CI can never pass by skipping.

/// Whether `EDGESIM_REQUIRE` names `cap`.
pub fn required(cap: &str) -> bool {
    std::env::var("EDGESIM_REQUIRE")
        .map(|v| {
            v.split([',', ' '])
                .map(str::trim)
                .any(|c| c == cap || c == "all")
        })
        .unwrap_or(false)
}

/// Returns `true` when the capability is present. When it is absent: panics if it is required,
/// else prints why the test is skipped and returns `false`.
pub fn gate(cap: &str, present: bool, why: &str) -> bool {
    if present {
        return true;
    }
    if required(cap) {
        panic!("EDGESIM_REQUIRE lists `{cap}` but it is not available: {why}");
    }
    eprintln!("skipped: needs `{cap}`: {why}");
    false
}

/// Gate for tests that create network namespaces (root and /run/netns).
pub fn netns() -> bool {
    gate(
        "netns",
        nix::unistd::geteuid().is_root(),
        "must run as root to create network namespaces",
    )
}

/// Gate for tests that need the kernel's netem qdisc (`EDGESIM_REQUIRE=netem` makes its
/// absence fail). Safe to call from async code: the probe runs on a thread of its own with its
/// own runtime, never blocking (or nesting in) the caller's.
pub fn netem() -> bool {
    let present = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(crate::targets::kernel_has_netem()))
            .unwrap_or(false)
    })
    .join()
    .unwrap_or(false);
    gate("netem", present, "the kernel has no sch_netem")
}

/// Whether a program is on PATH.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Gate for tests that need an external program (e.g. `iperf3`, `nft`).
pub fn program(cap: &str, name: &str) -> bool {
    gate(
        cap,
        have_program(name),
        &format!("`{name}` is not installed"),
    )
}

/// Gate for tests that read YAML the way YAML 1.1 tools do and check it against the JSON
/// Schema: `python3` with PyYAML and a jsonschema that has Draft 2020-12.
pub fn python_yaml() -> bool {
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import yaml, jsonschema; jsonschema.Draft202012Validator",
        ])
        .output();
    let why = match probe {
        Ok(o) if o.status.success() => return true,
        Ok(o) => format!(
            "python3 lacks PyYAML or a jsonschema with Draft 2020-12 (`pip install pyyaml jsonschema`): {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => format!("cannot run `python3`: {e}"),
    };
    gate("python", false, &why)
}

/// Whether a Docker daemon answers (`docker info`).
pub fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds, with `images/build.sh` of the checkout at `root`, the `edgesim/<name>` images for
/// `arch` (`amd64`, `arm64`) that the Docker Engine lacks. A node image without its
/// `edgesim.commands` label (an older build) counts as missing.
pub fn ensure_images(root: &std::path::Path, arch: &str, names: &[&str]) -> Result<(), String> {
    let version = env!("CARGO_PKG_VERSION");
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|a| {
            let tag = format!("edgesim/{a}:{version}-{arch}");
            let labels = std::process::Command::new("docker")
                .args(["image", "inspect", "-f", "{{json .Config.Labels}}", &tag])
                .output();
            !labels.is_ok_and(|o| {
                o.status.success()
                    && (*a != "node"
                        || String::from_utf8_lossy(&o.stdout).contains("edgesim.commands"))
            })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("building images for {arch}: {}", missing.join(", "));
    let mut cmd = std::process::Command::new(root.join("images/build.sh"));
    cmd.args(["--arch", arch, "--only", &missing.join(",")]);
    if arch == host_arch() {
        cmd.arg("--no-qemu");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running images/build.sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "images/build.sh --arch {arch} --only {} failed:\n{}",
            missing.join(","),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// This machine's architecture as image tags name it.
pub fn host_arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// Gate for tests that load pages in headless Chromium (Debian's `chromium` package).
pub fn chromium() -> bool {
    program("chromium", "chromium")
}

/// What one headless Chromium load of a page gave.
#[derive(Debug)]
pub struct Headless {
    /// Chromium's stdout: the DOM after the load with `--dump-dom`.
    pub stdout: String,
    /// Every console message of the page (errors, warnings, CSP violations, failed loads).
    pub console: Vec<String>,
}

/// Loads the file `page` in headless Chromium with `args` (`--dump-dom`,
/// `--screenshot=PATH`, …), a fresh profile under `dir`, and at most 90 s.
///
/// Console messages are read from Chromium's own log (`--enable-logging=stderr`), where each
/// is a line with `:CONSOLE` in its prefix (`INFO:CONSOLE:1] "message", source: URL (1)`):
/// no DevTools protocol client is needed. A test relying on this must show that it sees a
/// message on a page that makes one, so a change of the log's format fails the test instead
/// of passing it.
pub fn headless_chromium(
    page: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> Result<Headless, String> {
    use std::time::{Duration, Instant};
    let page = std::path::absolute(page).map_err(|e| format!("{}: {e}", page.display()))?;
    let profile = dir.join("chromium-profile");
    let (out_path, err_path) = (dir.join("chromium.stdout"), dir.join("chromium.stderr"));
    let file = |p: &std::path::Path| {
        std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))
    };
    let mut child = std::process::Command::new("chromium")
        .args([
            "--headless",
            // Tests run as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(file(&out_path)?)
        .stderr(file(&err_path)?)
        .spawn()
        .map_err(|e| format!("starting chromium: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "chromium did not finish loading {} in 90 s",
                    page.display()
                ));
            }
            Err(e) => return Err(format!("waiting for chromium: {e}")),
        }
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    if !status.success() {
        return Err(format!("chromium exited with {status}:\n{stderr}"));
    }
    let console = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    Ok(Headless { stdout, console })
}

static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by the tests in one test binary that measure time (RTT, goodput) or that load every
/// CPU (busy loops, benchmarks), so that none of them runs beside another: on a 2-CPU machine
/// a busy loop beside a goodput measurement makes that measurement about the machine, not
/// about the code. A test that panicked while holding it does not poison it for the rest.
pub fn exclusive() -> Exclusive {
    Exclusive(EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The guard [`exclusive`] returns; dropping it lets the next such test run.
pub struct Exclusive(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// The plan of scenario `text` as validation builds it for `target` on a machine that can do
/// everything; panics with the diagnostics when it is invalid (tests).
pub fn plan_of(text: &str, target: &str) -> crate::scenario::Plan {
    use crate::scenario::validate::{Overrides, build, parse};
    let f = std::path::Path::new("t.yaml");
    let sc = parse(f, text).unwrap_or_else(|d| panic!("{d}"));
    let profiles = crate::profile::ProfileSet::builtin().unwrap_or_else(|e| panic!("{e}"));
    build(
        f,
        text,
        &sc,
        profiles,
        &crate::caps::Capabilities::all(target),
        &Overrides::default(),
    )
    .unwrap_or_else(|d| panic!("{d}"))
    .plan
}

#[cfg(test)]
mod tests {
    /// The gate answers from inside a runtime (a `#[tokio::test]`, a harness's async code)
    /// exactly what the probe says, instead of panicking on a nested `block_on`.
    #[tokio::test]
    async fn netem_gate_works_from_async_code() {
        let probed = crate::targets::kernel_has_netem().await;
        if probed || !super::required("netem") {
            assert_eq!(super::netem(), probed);
        }
    }
}
