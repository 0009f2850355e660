//! Workload supervision: one task per workload instance (a workload on one node) that starts
//! the process, captures its output, applies the restart policy, and obeys the timeline
//! (kill, restart, node power-off and power-on, final stop).
//!
//! The supervisor is target-neutral: a [`Launch`] function provided by the target turns a
//! [`LaunchSpec`] into a running [`Process`] (a child inside a namespace and cgroup for `netns`;
//! a container, or a process inside the node container, for `docker`). Every start, exit and restart is recorded with its time in an [`EventLog`], which
//! the report includes.
//!
//! Each child leads its own process group; signals go to the whole group, so a workload that
//! is a shell pipeline is stopped as a whole. Whatever escapes the group is still killed with
//! the node's cgroup at teardown.

pub mod apps;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::scenario::model::RestartPolicy;

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub workload: usize,
    pub node: usize,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub workdir: PathBuf,
}

/// A started instance, as the supervisor drives it: a child process (`netns`), a container
/// or a process inside one (`docker`).
pub trait Process: Send {
    /// Its process id as this host sees it (0 when not known).
    fn pid(&self) -> i32;
    /// Sends `sig` to the instance (its whole process group where it has one).
    fn signal(&mut self, sig: i32) -> BoxFuture<'_, ()>;
    /// Waits for it to exit; its status when known.
    fn wait(&mut self) -> BoxFuture<'_, Option<std::process::ExitStatus>>;
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Starts an instance for a spec. Provided by the target.
pub type Launch =
    Arc<dyn Fn(&LaunchSpec) -> BoxFuture<'static, std::io::Result<Box<dyn Process>>> + Send + Sync>;

/// A child process that leads its own process group.
pub struct ChildProcess(pub Child);

impl Process for ChildProcess {
    fn pid(&self) -> i32 {
        self.0.id().map_or(0, |p| p as i32)
    }
    fn signal(&mut self, sig: i32) -> BoxFuture<'_, ()> {
        signal_group(self.pid(), sig);
        Box::pin(async {})
    }
    fn wait(&mut self) -> BoxFuture<'_, Option<std::process::ExitStatus>> {
        Box::pin(async move { self.0.wait().await.ok() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Started,
    Exited,
    SpawnFailed,
    Signalled,
    Restarting,
    Suspended,
    Resumed,
    Stopped,
}

/// One thing that happened to an instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Seconds since the timeline started (negative: during deployment).
    pub t: f64,
    pub workload: String,
    pub node: String,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Shared, append-only record of instance events.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<Vec<Event>>>,
    t0: Arc<Mutex<Option<Instant>>>,
    created: Instant,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            inner: Arc::default(),
            t0: Arc::default(),
            created: Instant::now(),
        }
    }
}

impl EventLog {
    /// Sets the instant event times are measured from.
    pub fn set_t0(&self, t0: Instant) {
        *self.t0.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
    }
    fn now(&self) -> f64 {
        let t0 = self
            .t0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(self.created);
        let now = Instant::now();
        if now >= t0 {
            (now - t0).as_secs_f64()
        } else {
            -(t0 - now).as_secs_f64()
        }
    }
    fn push(&self, e: Event) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).push(e);
    }
    /// Records `e` as happening now (its `t` is set), for targets whose workloads something
    /// else supervises (Kubernetes on kind): what they were seen to do.
    pub fn record_now(&self, mut e: Event) {
        e.t = self.now();
        self.push(e);
    }
    pub fn snapshot(&self) -> Vec<Event> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

enum Ctl {
    Signal(i32),
    Restart,
    Suspend,
    Resume,
    Stop(Duration),
}

struct Instance {
    workload: usize,
    node: usize,
    ctl: mpsc::UnboundedSender<Ctl>,
    pid: Arc<AtomicI32>,
    task: tokio::task::JoinHandle<()>,
}

/// Per-instance settings that do not change between restarts.
#[derive(Clone)]
pub struct InstanceSpec {
    pub launch: LaunchSpec,
    pub workload_name: String,
    pub node_name: String,
    pub restart: RestartPolicy,
    pub restart_delay: Duration,
}

/// Supervises every instance of a run.
pub struct Supervisor {
    instances: Vec<Instance>,
    /// One per instance whose first launch has not been awaited yet.
    first_launch: Vec<oneshot::Receiver<()>>,
    pub log: EventLog,
}

impl Supervisor {
    pub fn new(log: EventLog) -> Self {
        Supervisor {
            instances: Vec::new(),
            first_launch: Vec::new(),
            log,
        }
    }

    /// Starts an instance now; [`Supervisor::launched`] waits until its process exists.
    pub fn start(&mut self, spec: InstanceSpec, launch: Launch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let pid = Arc::new(AtomicI32::new(0));
        let (w, n) = (spec.launch.workload, spec.launch.node);
        let task = tokio::spawn(run_instance(
            spec,
            launch,
            rx,
            pid.clone(),
            self.log.clone(),
            first_tx,
        ));
        self.first_launch.push(first_rx);
        self.instances.push(Instance {
            workload: w,
            node: n,
            ctl: tx,
            pid,
            task,
        });
    }

    /// Waits until every instance started so far has made its first launch attempt, so
    /// that its pid is known (or its spawn failure logged) before the lab reports ready.
    pub async fn launched(&mut self) {
        for rx in self.first_launch.drain(..) {
            // An error means the task ended early, which also settles the attempt.
            let _ = rx.await;
        }
    }

    fn send(&self, workload: Option<usize>, nodes: &[usize], mk: impl Fn() -> Ctl) {
        for i in &self.instances {
            if workload.is_none_or(|w| w == i.workload) && nodes.contains(&i.node) {
                let _ = i.ctl.send(mk());
            }
        }
    }

    /// Sends `signal` to the instances of `workload` on `nodes`; the restart policy then
    /// decides what happens when they exit.
    pub fn signal(&self, workload: usize, nodes: &[usize], signal: i32) {
        self.send(Some(workload), nodes, || Ctl::Signal(signal));
    }
    /// Stops (TERM, then KILL) and starts again the instances of `workload` on `nodes`.
    pub fn restart(&self, workload: usize, nodes: &[usize]) {
        self.send(Some(workload), nodes, || Ctl::Restart);
    }
    /// Kills every instance on `nodes` and keeps them down (node powered off).
    pub fn suspend_nodes(&self, nodes: &[usize]) {
        self.send(None, nodes, || Ctl::Suspend);
    }
    /// Starts again what [`Supervisor::suspend_nodes`] stopped (node powered on).
    pub fn resume_nodes(&self, nodes: &[usize]) {
        self.send(None, nodes, || Ctl::Resume);
    }

    /// Current pid of an instance (0 when not running).
    pub fn pid(&self, workload: usize, node: usize) -> Option<i32> {
        self.instances
            .iter()
            .find(|i| i.workload == workload && i.node == node)
            .map(|i| i.pid.load(Ordering::SeqCst))
    }

    /// Every pid currently running (for the state file).
    pub fn pids(&self) -> Vec<i32> {
        self.instances
            .iter()
            .map(|i| i.pid.load(Ordering::SeqCst))
            .filter(|p| *p > 0)
            .collect()
    }

    /// Stops every instance: TERM to each process group, KILL after `grace`. Waits for all.
    pub async fn stop_all(self, grace: Duration) {
        for i in &self.instances {
            let _ = i.ctl.send(Ctl::Stop(grace));
        }
        for i in self.instances {
            let _ = i.task.await;
        }
    }
}

fn signal_group(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// Waits for the instance, TERM-then-KILL after `grace`. Returns its exit status if known.
async fn terminate(child: &mut dyn Process, grace: Duration) -> Option<std::process::ExitStatus> {
    child.signal(libc::SIGTERM).await;
    // A frozen or stopped group would never act on TERM.
    child.signal(libc::SIGCONT).await;
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            child.signal(libc::SIGKILL).await;
            child.wait().await
        }
    }
}

async fn run_instance(
    spec: InstanceSpec,
    launch: Launch,
    mut rx: mpsc::UnboundedReceiver<Ctl>,
    pid_slot: Arc<AtomicI32>,
    log: EventLog,
    first_launch: oneshot::Sender<()>,
) {
    let mut first_launch = Some(first_launch);
    use std::os::unix::process::ExitStatusExt;
    let ev = |kind: EventKind,
              pid: Option<i32>,
              status: Option<std::process::ExitStatus>,
              detail: Option<String>| Event {
        t: log.now(),
        workload: spec.workload_name.clone(),
        node: spec.node_name.clone(),
        kind,
        pid,
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        detail,
    };
    let mut child: Option<Box<dyn Process>> = None;
    let mut want_running = true;
    let mut suspended = false;
    let mut starts = 0u32;
    // When set, a restart is pending at this instant.
    let mut restart_at: Option<Instant> = None;

    loop {
        if child.is_none() && want_running && !suspended && restart_at.is_none() {
            if starts > 0 {
                log_marker(
                    &spec.launch.stdout,
                    &format!(
                        "--- edgesim: start #{} at t={:.3}s ---",
                        starts + 1,
                        log.now()
                    ),
                );
            }
            starts += 1;
            match launch(&spec.launch).await {
                Ok(c) => {
                    let pid = Some(c.pid()).filter(|p| *p > 0);
                    pid_slot.store(pid.unwrap_or(0), Ordering::SeqCst);
                    log.push(ev(EventKind::Started, pid, None, None));
                    child = Some(c);
                }
                Err(e) => {
                    log.push(ev(EventKind::SpawnFailed, None, None, Some(e.to_string())));
                    // A program that cannot start is a failure for the restart policy.
                    want_running = spec.restart != RestartPolicy::Never;
                    if want_running {
                        restart_at = Some(Instant::now() + spec.restart_delay);
                    }
                }
            }
            if let Some(tx) = first_launch.take() {
                let _ = tx.send(());
            }
        }

        let restart_sleep = async {
            match restart_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let wait_child = async {
            match child.as_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };

        tokio::select! {
            status = wait_child => {
                let pid = pid_slot.swap(0, Ordering::SeqCst);
                child = None;
                log.push(ev(EventKind::Exited, Some(pid), status, None));
                if suspended {
                    continue;
                }
                let failed = status.is_none_or(|s| !s.success());
                let again = match spec.restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => failed,
                    RestartPolicy::Always => true,
                };
                if again {
                    log.push(ev(EventKind::Restarting, None, None, Some(format!("restart policy, in {:?}", spec.restart_delay))));
                    restart_at = Some(Instant::now() + spec.restart_delay);
                } else {
                    want_running = false;
                }
            }
            _ = restart_sleep => {
                restart_at = None;
                want_running = true;
            }
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    // Supervisor dropped without stop: leave the process to the cgroup kill.
                    return;
                };
                match msg {
                    Ctl::Signal(sig) => {
                        let pid = pid_slot.load(Ordering::SeqCst);
                        if let Some(c) = child.as_mut() {
                            c.signal(sig).await;
                            log.push(ev(EventKind::Signalled, Some(pid), None, Some(format!("signal {sig}"))));
                        } else {
                            log.push(ev(EventKind::Signalled, None, None, Some(format!("signal {sig}: not running"))));
                        }
                    }
                    Ctl::Restart => {
                        if let Some(mut c) = child.take() {
                            let pid = pid_slot.swap(0, Ordering::SeqCst);
                            let st = terminate(c.as_mut(), Duration::from_secs(2)).await;
                            log.push(ev(EventKind::Exited, Some(pid), st, Some("restart".into())));
                        }
                        restart_at = None;
                        want_running = true;
                    }
                    Ctl::Suspend => {
                        suspended = true;
                        restart_at = None;
                        if let Some(mut c) = child.take() {
                            let pid = pid_slot.swap(0, Ordering::SeqCst);
                            c.signal(libc::SIGKILL).await;
                            let st = c.wait().await;
                            log.push(ev(EventKind::Exited, Some(pid), st, Some("node powered off".into())));
                        }
                        log.push(ev(EventKind::Suspended, None, None, None));
                    }
                    Ctl::Resume => {
                        suspended = false;
                        // A powered-on board starts its services again, whatever the policy.
                        want_running = true;
                        log.push(ev(EventKind::Resumed, None, None, None));
                    }
                    Ctl::Stop(grace) => {
                        if let Some(mut c) = child.take() {
                            let pid = pid_slot.swap(0, Ordering::SeqCst);
                            let st = terminate(c.as_mut(), grace).await;
                            log.push(ev(EventKind::Stopped, Some(pid), st, None));
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Appends a marker line to a workload log (between restarts), ignoring errors: logs are
/// for people, never a reason to fail a run.
pub fn log_marker(path: &std::path::Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
