//! The edge workloads shipped in `images/`, usable in scenarios as `app: NAME`.
//!
//! An app is one of the six programs of `images/` run as a workload: edgesim finds its binary,
//! gives it the app's default port, metrics endpoint and readiness check, and the workload's
//! `args` and `env` configure it. Binaries are looked up, in order, in the directories of
//! `EDGESIM_APPS` (`:`-separated), next to the `edgesim` executable (so `cargo build
//! --workspace` is all a checkout needs), and on `PATH`.
//!
//! With `emulateArch: true`, nodes whose profile is arm64 run the aarch64 build under
//! qemu-user instead: from `EDGESIM_APPS_ARM64`, or `target/images/arm64/` as
//! `images/build.sh` leaves it. The kernel runs it through binfmt_misc when `qemu-aarch64` is
//! registered, else edgesim starts it with `qemu-aarch64-static`/`qemu-aarch64`. Emulation is
//! honest about behaviour (the arm64 code paths, page size, atomics) but not about speed:
//! expect it 5–20× slower than native, on top of the profile's CPU quota, so use it to check
//! that the arm64 build works, not to measure it.

use std::path::{Path, PathBuf};

/// An app: program name, port it listens on by default, and how its health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct App {
    pub name: &'static str,
    pub port: u16,
    pub summary: &'static str,
}

/// The apps of `images/`.
pub const APPS: [App; 6] = [
    App {
        name: "iot-collector",
        port: 8080,
        summary: "simulated sensors → durable queue → sink",
    },
    App {
        name: "cloud-sink",
        port: 8080,
        summary: "ingest, de-duplication, missing-reading accounting",
    },
    App {
        name: "edge-web",
        port: 8080,
        summary: "HTTP service with a CPU cost per request",
    },
    App {
        name: "edge-cache",
        port: 8080,
        summary: "read-through cache serving bounded-stale data",
    },
    App {
        name: "inference",
        port: 8080,
        summary: "CNN forward pass on the CPU with deadlines",
    },
    App {
        name: "offline-first",
        port: 8080,
        summary: "local-first key-value store with CRDT sync",
    },
];

pub fn find(name: &str) -> Option<&'static App> {
    APPS.iter().find(|a| a.name == name)
}

fn env_dirs(var: &str) -> Vec<PathBuf> {
    std::env::var_os(var)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn first_file(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The native binary of app `name`, or where it was looked for.
pub fn native_binary(name: &str) -> Result<PathBuf, String> {
    let mut dirs = env_dirs("EDGESIM_APPS");
    dirs.extend(exe_dir());
    if let Some(p) = first_file(&dirs, name) {
        return Ok(p);
    }
    if let Some(p) = first_file(&env_dirs("PATH"), name) {
        return Ok(p);
    }
    Err(format!(
        "the `{name}` binary was not found (looked in {}{} and on PATH); build it with `cargo build -p {name}` (or `cargo build --workspace`), or point EDGESIM_APPS at a folder holding it",
        if dirs.is_empty() {
            String::new()
        } else {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if std::env::var_os("EDGESIM_APPS").is_some() {
            ""
        } else {
            " (EDGESIM_APPS unset)"
        }
    ))
}

/// How to run an aarch64 binary on this machine: directly (native arm64, or binfmt_misc with
/// qemu registered), or through a qemu-user program.
pub fn arm64_runner() -> Result<Option<PathBuf>, String> {
    if std::env::consts::ARCH == "aarch64" {
        return Ok(None);
    }
    let registered = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .map(|s| s.lines().next() == Some("enabled"))
        .unwrap_or(false);
    if registered {
        return Ok(None);
    }
    for q in ["qemu-aarch64-static", "qemu-aarch64"] {
        if let Some(p) = first_file(&env_dirs("PATH"), q) {
            return Ok(Some(p));
        }
    }
    Err("arm64 emulation needs qemu-user: `apt-get install qemu-user-static binfmt-support` (and mount binfmt_misc)".into())
}

/// The aarch64 binary of app `name` and the command that runs it, as an argv prefix.
/// A static build of app `name` for a board of `machine` (`aarch64`, `x86_64`), to upload:
/// `EDGESIM_APPS_<MACHINE>`, then images/build.sh's output beside this binary's target
/// folder (`target/images/<arch>/`), Cargo's cross build (`target/<machine>-unknown-linux-musl/release/`),
/// and on a board of this host's own machine, the native build.
pub fn board_binary(name: &str, machine: &str) -> Result<PathBuf, String> {
    let arch = if machine == "aarch64" {
        "arm64"
    } else {
        "amd64"
    };
    let mut dirs = env_dirs(&format!("EDGESIM_APPS_{}", machine.to_uppercase()));
    if let Some(d) = exe_dir()
        && let Some(target) = d.parent()
    {
        dirs.push(target.join("images").join(arch));
        dirs.push(
            target
                .join(format!("{machine}-unknown-linux-musl"))
                .join("release"),
        );
    }
    if let Some(p) = first_file(&dirs, name) {
        return Ok(p);
    }
    if machine == std::env::consts::ARCH {
        return native_binary(name);
    }
    Err(format!(
        "no {machine} build of `{name}` for the boards (looked in {}); build it with `images/build.sh --arch {arch} --only {name} --no-docker` or set EDGESIM_APPS_{}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        machine.to_uppercase()
    ))
}

pub fn arm64_command(name: &str) -> Result<Vec<String>, String> {
    let mut dirs = env_dirs("EDGESIM_APPS_ARM64");
    if let Some(d) = exe_dir() {
        // target/{debug,release}/edgesim → target/images/arm64/ (images/build.sh).
        if let Some(target) = d.parent() {
            dirs.push(target.join("images").join("arm64"));
            dirs.push(target.join("aarch64-unknown-linux-musl").join("release"));
        }
    }
    let bin = first_file(&dirs, name).ok_or_else(|| {
        format!(
            "no arm64 build of `{name}` (looked in {}); build it with `images/build.sh --arch arm64 --only {name} --no-docker` or set EDGESIM_APPS_ARM64",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut argv = Vec::new();
    if let Some(q) = arm64_runner()? {
        argv.push(q.display().to_string());
    }
    argv.push(bin.display().to_string());
    Ok(argv)
}
