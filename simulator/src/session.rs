//! The library API: load a scenario, adjust it, run it, read the report — from your own
//! tests and tools, sync or async.
//!
//! ```no_run
//! # async fn demo() -> Result<(), edgesim::Error> {
//! use edgesim::{Run, Scenario, Target};
//! let report = Run::new(Scenario::from_file("scenarios/quickstart.yaml")?)
//!     .target(Target::Netns)
//!     .seed(42)
//!     .run()
//!     .await?;
//! report.assert_passed(); // panics with what failed, when, and what the timeline did by then
//! let uplink = report.probe("uplink").expect("the scenario has this probe");
//! println!("uplink p50 RTT: {:?} ms", uplink.rtt_p50_ms);
//! # Ok(()) }
//! ```
//!
//! - [`Scenario`]: from a file, from YAML text, or built in Rust ([`Scenario::from_model`]
//!   with the types of [`crate::scenario::model`]); [`Scenario::model_mut`] edits it.
//! - [`Run`]: overrides (target, seed, timeline length, impairment mechanism, a workload's
//!   program — e.g. your own `cargo build` artifact through `env!("CARGO_BIN_EXE_…")` — output
//!   folder, profile folders, inventory), then [`Run::run`] (async), [`Run::run_blocking`], or
//!   [`Run::up`] for a lab that stays up and takes live faults ([`LabHandle::fault`]).
//! - The [`Report`](crate::report::Report): verdicts ([`Report::assertion`](crate::report::Report::assertion),
//!   [`Report::failures`](crate::report::Report::failures)), probe series
//!   ([`Report::probe`](crate::report::Report::probe)), the journal, link statistics
//!   (`links`, `linkem`), and [`Report::assert_passed`](crate::report::Report::assert_passed).
//!
//! A run is driven on a thread of its own with its own Tokio runtime: `run().await` works in
//! any async test (current-thread or multi-thread runtime) without nesting runtimes or
//! blocking the caller's, and `run_blocking()` works where there is no runtime. Every run
//! validates the scenario and lets the target check it (binaries, images, capacity) before
//! anything is created; errors come back as [`Error`] with the file's diagnostics. Runs on
//! `netns` and `docker` need root; a run leaves the host as it found it, and what a killed
//! process leaves is removed by `edgesim cleanup`. The reports (`report.json`, `report.html`)
//! are written to the run's folder ([`Run::out_dir`], by default
//! `edgesim-runs/<scenario>-<run>` under the working directory, as the CLI does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::live::{self, Active, Applied, LiveTimeline, Reply, Request};
use crate::engine::{self, Control, ControlMsg, RunOptions, StopLevel, StopSignal, Stopper};
use crate::report::Report;
use crate::scenario::loc::Loc;
use crate::scenario::model::{self, ImpairmentMode};
use crate::scenario::{Capabilities, Diagnostics, Overrides, Plan};
use crate::targets::state::{self, Mode, RunState};
use crate::units::Dur;

/// Where a scenario runs; the default is `Netns`.
pub use crate::targets::TargetKind as Target;

/// Why a scenario could not be run (an assertion failing is not an error: it is in the
/// report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario is invalid: every problem, with positions in its file.
    #[error("invalid scenario:\n{0}")]
    Invalid(Diagnostics),
    /// The target refuses the scenario (a binary or image missing, more than the host holds).
    #[error("the target refuses the scenario:\n{0}")]
    Refused(Diagnostics),
    /// A live fault was refused before anything changed.
    #[error("the fault was refused: {}", .0.join("; "))]
    Fault(Vec<String>),
    /// Anything else that stopped it before or while it ran (needs root, the lab is gone, a
    /// fault that failed to apply).
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}

/// A scenario to run: its model, and the text and file it came from (for diagnostics).
#[derive(Debug, Clone)]
pub struct Scenario {
    model: model::Scenario,
    text: String,
    file: PathBuf,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let file = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| other(format!("reading {}: {e}", file.display())))?;
        Self::parse(file, text)
    }

    /// Reads a scenario from YAML text (diagnostics name it `<scenario>`).
    ///
    /// ```
    /// let sc = edgesim::Scenario::from_yaml(
    ///     "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: tiny}\n\
    ///      spec:\n  duration: 5s\n  sites: {cloud: {}}\n\
    ///      \x20 nodes: [{name: a, site: cloud, profile: cloud-small}]\n",
    /// )?;
    /// assert_eq!(sc.name(), "tiny");
    /// # Ok::<(), edgesim::Error>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        Self::parse(PathBuf::from("<scenario>"), text.to_string())
    }

    /// A scenario built in Rust as data, e.g. with `serde_json::json!`: any value that
    /// serializes to a scenario document (read as its JSON text, which is YAML; diagnostics
    /// point into that text).
    ///
    /// ```
    /// let sc = edgesim::Scenario::from_value(&serde_json::json!({
    ///     "apiVersion": "edgesim.dev/v1alpha1", "kind": "Scenario",
    ///     "metadata": {"name": "built-in-rust"},
    ///     "spec": {"duration": "5s", "sites": {"cloud": {}},
    ///              "nodes": [{"name": "a", "site": "cloud", "profile": "cloud-small"}]},
    /// }))?;
    /// assert_eq!(sc.name(), "built-in-rust");
    /// # Ok::<(), edgesim::Error>(())
    /// ```
    pub fn from_value(value: &impl serde::Serialize) -> Result<Self, Error> {
        let text = serde_json::to_string_pretty(value).map_err(other)?;
        Self::parse(PathBuf::from("<scenario>"), text)
    }

    /// A scenario built in Rust with the types of [`model`] (values made with
    /// [`Loc::bare`](crate::scenario::loc::Loc::bare)).
    pub fn from_model(model: model::Scenario) -> Self {
        let text = serde_saphyr::to_string(&model).unwrap_or_default();
        Scenario {
            model,
            text,
            file: PathBuf::from("<scenario>"),
        }
    }

    fn parse(file: PathBuf, text: String) -> Result<Self, Error> {
        let model = crate::scenario::validate::parse(&file, &text).map_err(Error::Invalid)?;
        Ok(Scenario { model, text, file })
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.model.metadata.name.value
    }

    pub fn model(&self) -> &model::Scenario {
        &self.model
    }

    /// The model, to change before running (positions of changed values are unknown to
    /// diagnostics).
    pub fn model_mut(&mut self) -> &mut model::Scenario {
        &mut self.model
    }
}

/// A run of a scenario, with its overrides. Build it with [`Run::new`] and the methods
/// that follow, then [`Run::run`], [`Run::run_blocking`] or [`Run::up`].
#[derive(Debug, Clone)]
pub struct Run {
    scenario: Scenario,
    target: Target,
    seed: Option<u64>,
    impairment: Option<ImpairmentMode>,
    duration: Option<Duration>,
    programs: BTreeMap<String, PathBuf>,
    out_dir: Option<PathBuf>,
    profile_dirs: Vec<PathBuf>,
    target_options: crate::targets::ResolveOptions,
    grace: Duration,
}

impl Run {
    pub fn new(scenario: Scenario) -> Self {
        Run {
            scenario,
            target: Target::Netns,
            seed: None,
            impairment: None,
            duration: None,
            programs: BTreeMap::new(),
            out_dir: None,
            profile_dirs: Vec::new(),
            target_options: Default::default(),
            grace: Duration::from_secs(3),
        }
    }

    /// Where it runs (`netns` by default; `device` needs [`Run::inventory`]).
    pub fn target(mut self, t: Target) -> Self {
        self.target = t;
        self
    }

    /// The seed of every random choice (overrides `spec.seed`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// What carries link impairments (`--impairment`).
    pub fn impairment(mut self, m: ImpairmentMode) -> Self {
        self.impairment = Some(m);
        self
    }

    /// The timeline's length (overrides `spec.duration`; windows written relative to `end`
    /// move with it).
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Runs `program` for workload `workload` instead of what the scenario names: an app's
    /// binary, or a command's first word; the arguments stay. For example your own service,
    /// built by Cargo: `.workload_program("svc", env!("CARGO_BIN_EXE_svc"))`. On `device`
    /// it is uploaded as it is (build it for the boards' arch); `docker` runs images only.
    pub fn workload_program(mut self, workload: &str, program: impl Into<PathBuf>) -> Self {
        self.programs.insert(workload.to_string(), program.into());
        self
    }

    /// The run's folder (reports, workload output).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// One more folder of hardware profiles (like `--profiles`).
    pub fn profiles(mut self, dir: impl Into<PathBuf>) -> Self {
        self.profile_dirs.push(dir.into());
        self
    }

    /// The Ansible inventory of the boards (the `device` target).
    pub fn inventory(mut self, path: impl Into<PathBuf>) -> Self {
        self.target_options.inventory = Some(path.into());
        self
    }

    /// The `kind` target on a cluster of your own: its kubeconfig, and the registry its
    /// nodes pull the run's artifact and images from (like `--kubeconfig`, `--registry`).
    pub fn cluster(mut self, kubeconfig: impl Into<PathBuf>, registry: impl Into<String>) -> Self {
        self.target_options.kubeconfig = Some(kubeconfig.into());
        self.target_options.registry = Some(registry.into());
        self
    }

    /// How long workloads get to exit after SIGTERM at the end (default 3 s).
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    fn model(&self) -> model::Scenario {
        let mut m = self.scenario.model.clone();
        if let Some(d) = self.duration {
            m.spec.duration = Loc::bare(Dur(d));
        }
        m
    }

    fn overrides(&self, live: bool) -> Overrides {
        Overrides {
            seed: self.seed,
            impairment: self.impairment,
            live,
        }
    }

    fn profile_set(&self) -> Result<crate::profile::ProfileSet, Error> {
        crate::profile::ProfileSet::load(&self.profile_dirs).map_err(other)
    }

    /// Validates the scenario with its overrides into the plan a run would play, without
    /// creating anything (capabilities as this machine's target has them).
    pub async fn plan(&self) -> Result<Plan, Error> {
        let caps = crate::targets::capabilities_here(self.target).await;
        Ok(self.plan_with(&self.profile_set()?, &caps, false)?.0)
    }

    fn plan_with(
        &self,
        profiles: &crate::profile::ProfileSet,
        caps: &Capabilities,
        live: bool,
    ) -> Result<(Plan, model::Scenario), Error> {
        let model = self.model();
        let mut plan = crate::scenario::validate::build(
            &self.scenario.file,
            &self.scenario.text,
            &model,
            profiles,
            caps,
            &self.overrides(live),
        )
        .map_err(Error::Invalid)?
        .plan;
        for (name, program) in &self.programs {
            let Some(w) = plan.workloads.iter_mut().find(|w| &w.name == name) else {
                let names: Vec<&str> = plan.workloads.iter().map(|w| w.name.as_str()).collect();
                return Err(other(format!(
                    "workload_program: the scenario has no workload `{name}` (it has: {})",
                    names.join(", ")
                )));
            };
            w.program = Some(program.clone());
        }
        Ok((plan, model))
    }

    /// Validation, the target's own checks, and the run's identity: everything before
    /// anything is created.
    async fn prepare(&self, live: bool) -> Result<Prepared, Error> {
        if self.target != Target::Device && !nix::unistd::geteuid().is_root() {
            return Err(other(format!(
                "running on the `{}` target needs root (network namespaces, tc, nftables, cgroups)",
                self.target
            )));
        }
        let profiles = self.profile_set()?;
        let caps = crate::targets::capabilities_here(self.target).await;
        let (plan, model) = self.plan_with(&profiles, &caps, live)?;
        let resolved = crate::targets::resolve(self.target, &plan, &self.target_options)
            .await
            .map_err(|items| {
                Error::Refused(Diagnostics::new(
                    &self.scenario.file,
                    &self.scenario.text,
                    items,
                ))
            })?;
        let run_id = state::new_run_id();
        let out_dir = self.out_dir.clone().unwrap_or_else(|| {
            PathBuf::from("edgesim-runs").join(format!("{}-{run_id}", plan.name))
        });
        Ok(Prepared {
            plan,
            model,
            profiles,
            caps,
            resolved,
            run_id,
            out_dir,
        })
    }

    fn options(&self, p: &Prepared, mode: Mode, stop: StopSignal) -> RunOptions {
        RunOptions {
            run_id: p.run_id.clone(),
            out_dir: p.out_dir.clone(),
            mode,
            metrics: None,
            progress: None,
            stop,
            ready: None,
            grace: self.grace,
            emulator: Default::default(),
            control: None,
        }
    }

    /// Runs the scenario end to end and returns its report (also written as `report.json`
    /// and `report.html` in the run's folder). Dropping the future stops the run, which
    /// then tears down on its own thread.
    pub async fn run(self) -> Result<Report, Error> {
        let (stopper, stop) = StopSignal::new();
        let guard = StopOnDrop(Some(stopper));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("edgesim-run".into())
            .spawn(move || {
                let _ = tx.send(self.drive(stop));
            })
            .map_err(other)?;
        let r = rx
            .await
            .unwrap_or_else(|_| Err(other("the run's thread panicked")));
        drop(guard);
        r
    }

    /// [`Run::run`] for callers without an async runtime (do not call it from async code:
    /// it blocks the thread until the run ends).
    pub fn run_blocking(self) -> Result<Report, Error> {
        let (_stopper, stop) = StopSignal::new();
        std::thread::scope(|s| {
            s.spawn(|| self.drive(stop))
                .join()
                .unwrap_or_else(|_| Err(other("the run's thread panicked")))
        })
    }

    fn drive(self, stop: StopSignal) -> Result<Report, Error> {
        let rt = runtime()?;
        rt.block_on(async {
            let p = self.prepare(false).await?;
            let opts = self.options(&p, Mode::Run, stop);
            let out_dir = p.out_dir.clone();
            let mut report = engine::run(Arc::new(p.plan), p.resolved, opts).await;
            write_reports(&mut report, &out_dir);
            Ok(report)
        })
    }

    /// Builds the lab and starts its workloads, then returns a handle to it: faults by hand
    /// ([`LabHandle::fault`]), what is in effect ([`LabHandle::active`]), and
    /// [`LabHandle::down`], which tears it down and returns its report (the journal of the
    /// faults applied). The scenario's timeline, probes and assertions do not run in a lab.
    pub async fn up(self) -> Result<LabHandle, Error> {
        let (stopper, stop) = StopSignal::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (requests_tx, requests) = tokio::sync::mpsc::channel(16);
        let thread = std::thread::Builder::new()
            .name("edgesim-lab".into())
            .spawn(move || {
                let rt = match runtime() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let p = match self.prepare(true).await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let timeline = LiveTimeline::new(
                        p.model.clone(),
                        self.scenario.text.clone(),
                        self.scenario.file.clone(),
                        p.profiles.clone(),
                        p.caps.clone(),
                        &self.overrides(true),
                        p.plan.clone(),
                    );
                    let mut opts = self.options(&p, Mode::Lab, stop);
                    opts.control = Some(Control { timeline, requests });
                    opts.ready = Some(Box::new(move |r: Result<&RunState, String>| {
                        let _ = ready_tx.send(r.cloned().map_err(Error::Other));
                    }));
                    let out_dir = p.out_dir.clone();
                    let mut report = engine::run(Arc::new(p.plan), p.resolved, opts).await;
                    write_reports(&mut report, &out_dir);
                    let _ = done_tx.send(report);
                });
            })
            .map_err(other)?;
        let mut lab = LabHandle {
            state: None,
            requests: requests_tx,
            stopper: Some(stopper),
            done: Some(done_rx),
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(st)) => {
                lab.state = Some(st);
                Ok(lab)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(other("the lab's thread ended before the lab was up")),
        }
    }
}

struct Prepared {
    plan: Plan,
    model: model::Scenario,
    profiles: crate::profile::ProfileSet,
    caps: Capabilities,
    resolved: crate::targets::Resolved,
    run_id: String,
    out_dir: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("edgesim")
        .build()
        .map_err(|e| other(format!("starting the run's runtime: {e}")))
}

/// The run folder's reports; one that cannot be written is noted in the report.
fn write_reports(report: &mut Report, out_dir: &Path) {
    let errors = crate::report::write_run_reports(report, out_dir, &Default::default());
    report.notes.extend(errors);
}

struct StopOnDrop(Option<Stopper>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.stop(StopLevel::Graceful);
        }
    }
}

/// A lab that is up ([`Run::up`]). Dropping it tears the lab down and waits for that
/// (blocking the thread); prefer [`LabHandle::down`].
pub struct LabHandle {
    state: Option<RunState>,
    requests: tokio::sync::mpsc::Sender<ControlMsg>,
    stopper: Option<Stopper>,
    done: Option<tokio::sync::oneshot::Receiver<Report>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LabHandle {
    /// The lab's state: its run id, nodes, their addresses and namespaces.
    pub fn state(&self) -> &RunState {
        self.state
            .as_ref()
            .expect("a LabHandle exists only once its lab is up")
    }

    async fn ask(&self, req: Request) -> Result<Reply, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((req, tx))
            .await
            .map_err(|_| other("the lab is gone"))?;
        rx.await.map_err(|_| other("the lab is gone"))
    }

    /// Applies a timeline action now, written as in a scenario's timeline: `action` is its
    /// key (`partition`, `impair`, `heal`, `node-down`, …) and `body` its value in YAML;
    /// `revert_after` is its `for`. Returns what was applied.
    ///
    /// ```no_run
    /// # async fn demo(lab: &edgesim::LabHandle) -> Result<(), edgesim::Error> {
    /// use std::time::Duration;
    /// lab.fault("partition", "{between: [[site/factory], [site/cloud]]}", Some(Duration::from_secs(20))).await?;
    /// lab.fault("impair", "{link: factory-uplink, delay: 300ms}", None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn fault(
        &self,
        action: &str,
        body: &str,
        revert_after: Option<Duration>,
    ) -> Result<Vec<Applied>, Error> {
        let for_ = revert_after.map(|d| Dur(d).to_string());
        let entry = live::entry_text(action, Some(body), for_.as_deref());
        match self.ask(Request::Fault { entry }).await? {
            Reply::Applied { journal, .. } => Ok(journal),
            Reply::Invalid { errors } => Err(Error::Fault(errors)),
            Reply::Failed { error, .. } => Err(other(error)),
            Reply::Active { .. } => Err(other("unexpected answer from the lab")),
        }
    }

    /// The faults in effect.
    pub async fn active(&self) -> Result<Vec<Active>, Error> {
        match self.ask(Request::List).await? {
            Reply::Active { faults } => Ok(faults),
            _ => Err(other("unexpected answer from the lab")),
        }
    }

    /// Tears the lab down (pending reverts first, journalled) and returns its report.
    pub async fn down(mut self) -> Result<Report, Error> {
        if let Some(s) = self.stopper.take() {
            s.stop(StopLevel::Graceful);
        }
        let report = match self.done.take() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        if let Some(t) = self.thread.take() {
            // The report is sent just before the thread ends.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        report.ok_or_else(|| other("the lab's thread panicked; run `edgesim cleanup`"))
    }
}

impl Drop for LabHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stopper.take() {
            s.stop(StopLevel::Graceful);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
