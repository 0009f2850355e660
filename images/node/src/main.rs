//! `edgesim-node`: PID 1 of an edgesim node container (the `edgesim/node` image).
//!
//! A node's container exists so that edgesim can wire its network namespace and run the node's
//! `command:` workloads in it with `docker exec`. Those processes are children of the container
//! runtime's shim, outside the container's pid namespace, but whatever they leave behind (a
//! backgrounded `sleep &`, a daemonised helper) is reparented to the namespace's init when its
//! parent exits. This program is that init: it reaps every child it gets, and on SIGTERM or
//! SIGINT it stops the whole namespace and exits 0. Otherwise it sleeps.
//!
//! Design:
//! - SIGCHLD, SIGTERM and SIGINT are blocked before anything else and taken synchronously with
//!   `sigwait`: no handlers, nothing async-signal-unsafe, no race between a signal and a wait.
//!   Blocking also makes the signals arrive at all: the kernel discards a signal sent to a pid
//!   namespace's init whose disposition is the default one, unless it is blocked (then it
//!   queues). SIGCHLD keeps its default disposition, so exited children stay waitable.
//! - Standard signals coalesce, so one SIGCHLD may stand for several exits: every wake-up reaps
//!   with `waitpid(-1, WNOHANG)` until nothing is left to reap.
//! - Stopping: `kill(-1, SIGTERM)` reaches every process of the namespace but this one, the
//!   `docker exec`ed ones included. It then waits up to [`GRACE`], reaping, until `kill(-1, 0)`
//!   finds nobody, sends SIGKILL to whatever is left and exits 0 (the kernel kills and reaps
//!   anything remaining once a namespace's init is gone).
//! - Outside a pid namespace of its own (pid ≠ 1), `kill(-1, …)` would reach every process the
//!   user may signal on the host, so the program then only reaps its own children and exits on
//!   SIGTERM without signalling anyone.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};

/// How long the namespace's processes have between SIGTERM and SIGKILL. Short: a node's
/// `command:` workloads are shell commands, and `docker stop` waits 10 s by default before it
/// kills this process itself (which would exit 137 instead of 0).
const GRACE: Duration = Duration::from_secs(1);
/// How often the grace period checks whether anyone is left.
const POLL: Duration = Duration::from_millis(10);

const USAGE: &str = "usage: edgesim-node [--version | --help]

PID 1 of an edgesim node container: reaps every process reparented to it; on SIGTERM or
SIGINT sends SIGTERM to every other process of its pid namespace, waits up to 1s, sends
SIGKILL to the rest and exits 0. Takes no arguments: a node's commands run with docker exec.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {}
        ["--version" | "-V"] => {
            println!(
                "edgesim-node {} ({})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            );
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("edgesim-node: unexpected arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgesim-node: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sleeps, reaping, until SIGTERM or SIGINT; then stops the namespace.
fn run() -> nix::Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(s);
    }
    signals.thread_block()?;
    let init = getpid() == Pid::from_raw(1);
    if !init {
        eprintln!(
            "edgesim-node: not PID 1 (pid {}): reaping only its own children, signalling nobody",
            getpid()
        );
    }
    loop {
        reap();
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(Errno::EINTR) => {}
            Ok(sig) => {
                if init {
                    stop_namespace(sig);
                }
                reap();
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reaps every child that has exited and returns their pids.
fn reap() -> Vec<Pid> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return reaped,
            Ok(status) => reaped.extend(status.pid()),
            Err(Errno::EINTR) => {}
            // ECHILD: no children at all.
            Err(_) => return reaped,
        }
    }
}

/// SIGTERM to every other process of the namespace, [`GRACE`] to go, then SIGKILL.
/// Only for the namespace's init (see the module docs).
fn stop_namespace(sig: Signal) {
    let everyone = Pid::from_raw(-1);
    if kill(everyone, Signal::SIGTERM) == Err(Errno::ESRCH) {
        return;
    }
    eprintln!("edgesim-node: {sig}: SIGTERM sent to every process; waiting up to {GRACE:?}");
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        reap();
        if kill(everyone, None) == Err(Errno::ESRCH) {
            return;
        }
        std::thread::sleep(POLL);
    }
    eprintln!("edgesim-node: processes left after {GRACE:?}: SIGKILL");
    let _ = kill(everyone, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exited child is reaped (it no longer exists as a zombie), and only once.
    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "the child is left unwaited on purpose: reap() must collect it"
    )]
    fn reap_collects_exited_children() {
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawning true");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reaped = Vec::new();
        while !reaped.contains(&pid) {
            assert!(Instant::now() < deadline, "child {pid} never reaped");
            std::thread::sleep(Duration::from_millis(10));
            reaped.extend(reap());
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} still exists after being reaped"
        );
        assert!(!reap().contains(&pid), "{pid} reaped twice");
    }
}
