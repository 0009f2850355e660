//! The engine: plan → provision → deploy → timeline → probes → assertions → report →
//! teardown.
//!
//! Design:
//! - The timeline plays on a dedicated OS thread with a 1 ns timer slack that sleeps until
//!   just before each action's instant and spins the last few tens of microseconds; the
//!   action is then applied through the tokio runtime (`Handle::block_on`). Work that can be
//!   done early (opening the firewall's socket) is done ~30 ms before. Every action is journalled with the
//!   instant it had taken effect, so lag is measured, not assumed.
//! - Probes and metric scrapes are tokio tasks on a grid anchored at the same `t0`.
//! - The engine drives a [`Lab`] and never names a target. The lab has one owner at a time:
//!   the engine, then the timeline thread for the length of the timeline (probes and timed
//!   scrapes hold only socket factories into nodes), then the engine again for the final
//!   scrapes and teardown. A timeline thread that panics is an infrastructure error, and the
//!   run's objects are then removed from its state file.
//! - Whatever happens — an assertion failing, an infrastructure error, Ctrl-C — the lab is
//!   torn down and a report is produced. A first Ctrl-C (or SIGTERM) stops the run and tears
//!   down gracefully; a second one makes teardown skip the grace period of workloads.

pub mod live;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::assertion::{self, Verdict};
use crate::metrics::RunMetrics;
use crate::probe::{self, ProbeLog};
use crate::report::{JournalEntry, LinkReport, Phase, ProbeSummary, Report};
use crate::scenario::Plan;
use crate::scenario::expect::Bound;
use crate::scenario::plan::Subject;

use crate::targets::state::{self, Mode};
use crate::targets::{self, Lab, Resolved};

/// How hard a stop was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    Running,
    /// Stop and tear down gracefully.
    Graceful,
    /// Tear down without waiting for workloads.
    Force,
}

/// A handle to ask a run to stop.
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<StopLevel>>);

impl Stopper {
    /// Asks for the next level: running → graceful → force.
    pub fn escalate(&self) {
        self.0.send_modify(|l| {
            *l = match *l {
                StopLevel::Running => StopLevel::Graceful,
                _ => StopLevel::Force,
            }
        });
    }
    pub fn stop(&self, level: StopLevel) {
        self.0.send_modify(|l| *l = (*l).max(level));
    }
}

/// What a run watches to learn that it should stop.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<StopLevel>);

impl StopSignal {
    pub fn new() -> (Stopper, StopSignal) {
        let (tx, rx) = watch::channel(StopLevel::Running);
        (Stopper(Arc::new(tx)), StopSignal(rx))
    }
    pub fn level(&self) -> StopLevel {
        *self.0.borrow()
    }
    /// Waits until a stop at `level` or above is asked for.
    pub async fn wait(&mut self, level: StopLevel) {
        let _ = self.0.wait_for(|l| *l >= level).await;
    }
}

/// Turns SIGINT and SIGTERM into stop requests (first graceful, second forced). Call from
/// within a tokio runtime.
pub fn stop_on_signals(stopper: Stopper, notify: impl Fn(StopLevel) + Send + 'static) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stopper.escalate();
            notify(*stopper.0.borrow());
        }
    });
}

/// Progress of a run, for a terminal or JSON lines.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Progress {
    PhaseStarted {
        phase: String,
    },
    PhaseFinished {
        phase: String,
        seconds: f64,
        ok: bool,
    },
    Action {
        entry: JournalEntry,
    },
    Message {
        text: String,
    },
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Called once the lab is up (`up`): the run's state, or why it failed.
pub type ReadyFn = Box<dyn FnOnce(Result<&state::RunState, String>) + Send>;

pub struct RunOptions {
    pub run_id: String,
    pub out_dir: PathBuf,
    pub mode: Mode,
    pub metrics: Option<Arc<RunMetrics>>,
    pub progress: Option<ProgressFn>,
    pub stop: StopSignal,
    pub ready: Option<ReadyFn>,
    /// How long workloads get to exit after SIGTERM at the end.
    pub grace: Duration,
    /// Captures and decision logs of the userspace link emulator.
    pub emulator: crate::faults::emulator::EmulatorOptions,
    /// Live faults on a lab (`Mode::Lab`): requests and the means to check them.
    pub control: Option<Control>,
}

/// A request of a lab's control channel and where its reply goes.
pub type ControlMsg = (live::Request, tokio::sync::oneshot::Sender<live::Reply>);

/// The control channel of a lab that is up: live faults ([`live`]).
pub struct Control {
    pub timeline: live::LiveTimeline,
    pub requests: tokio::sync::mpsc::Receiver<ControlMsg>,
}

struct Ctx {
    report: Report,
    progress: Option<ProgressFn>,
    phase_start: Instant,
}

impl Ctx {
    fn say(&self, p: Progress) {
        if let Some(f) = &self.progress {
            f(p);
        }
    }
    fn begin(&mut self, phase: &str) {
        self.phase_start = Instant::now();
        self.say(Progress::PhaseStarted {
            phase: phase.into(),
        });
    }
    fn end(&mut self, phase: &str, ok: bool) {
        let seconds = self.phase_start.elapsed().as_secs_f64();
        self.report.phases.push(Phase {
            name: phase.into(),
            seconds,
            ok,
        });
        self.say(Progress::PhaseFinished {
            phase: phase.into(),
            seconds,
            ok,
        });
    }
}

/// Runs a validated plan on the target that `resolved` came from ([`targets::resolve`]) and
/// returns its report. Never leaves anything behind: the lab is torn down whatever happens
/// (the report lists what could not be).
pub async fn run(plan: Arc<Plan>, resolved: Resolved, mut opts: RunOptions) -> Report {
    let target = resolved.kind();
    let mut cx = Ctx {
        report: Report::new(&plan, &opts.run_id, target.name()),
        progress: opts.progress.clone(),
        phase_start: Instant::now(),
    };
    // The host's speed, decided before anything is created (measured here, about 2 s, when
    // this host has no calibration yet); the targets' quotas read the same value.
    // Boards bring their own CPUs: this host's speed and CPU count shape nothing there.
    if target != targets::TargetKind::Device {
        let host = tokio::task::spawn_blocking(crate::profile::HostCpu::detect)
            .await
            .unwrap_or_else(|_| {
                crate::profile::HostCpu::uncalibrated(crate::profile::calibrate::online_cpus())
            });
        cx.report.host_cpu = Some(crate::report::HostCpuReport::new(&host, plan.cpu_scale));
        cx.report
            .notes
            .extend(plan.cpu_warnings(crate::host::cgroup::allowed_cpus().len()));
    }
    if let Err(e) = std::fs::create_dir_all(&opts.out_dir) {
        cx.report.error = Some(format!(
            "creating the output folder {}: {e}",
            opts.out_dir.display()
        ));
        if let Some(r) = opts.ready.take() {
            r(Err(cx.report.error.clone().unwrap_or_default()));
        }
        cx.report.finish();
        return cx.report;
    }

    for d in [&opts.emulator.capture_dir, &opts.emulator.decision_log_dir]
        .into_iter()
        .flatten()
    {
        if let Err(e) = std::fs::create_dir_all(d) {
            cx.report
                .notes
                .push(format!("cannot create {}: {e}", d.display()));
        }
    }

    // Provision.
    cx.begin("provision");
    let provisioned = Lab::provision(
        plan.clone(),
        resolved,
        &opts.run_id,
        opts.mode,
        opts.out_dir.clone(),
        &opts.emulator,
    )
    .await;
    let lab = match provisioned {
        Ok(l) => l,
        Err(pe) => {
            let pe = *pe;
            cx.end("provision", false);
            cx.report.error = Some(format!("provisioning: {}", pe.error));
            if let Some(r) = opts.ready.take() {
                r(Err(cx.report.error.clone().unwrap_or_default()));
            }
            cx.begin("teardown");
            let errors = pe.partial.teardown().await;
            cx.end("teardown", errors.is_empty());
            cx.report.teardown.errors = errors;
            cx.report.teardown.seconds = cx.report.phases.last().map_or(0.0, |p| p.seconds);
            cx.report.finish();
            return cx.report;
        }
    };
    cx.end("provision", true);
    if let Some(m) = &opts.metrics {
        m.set_nodes_up(plan.nodes.len());
    }
    let userspace = lab.userspace();
    cx.report.mechanism = if userspace {
        "userspace (linkem)".into()
    } else {
        "kernel (tc, nftables)".into()
    };
    if let Some(m) = &opts.metrics {
        m.set_link_stats(lab.faults().and_then(|f| f.emulator_stats_source()));
    }
    cx.report.links = plan
        .links
        .iter()
        .map(|l| {
            let mut mech = crate::faults::shaping::Shaper::mechanisms(&l.up, userspace);
            for m in crate::faults::shaping::Shaper::mechanisms(&l.down, userspace) {
                if !mech.contains(&m) {
                    mech.push(m);
                }
            }
            LinkReport {
                name: l.name.clone(),
                a: plan.sites[l.a].name.clone(),
                b: plan.sites[l.b].name.clone(),
                mechanisms: mech,
                up: l.up,
                down: l.down,
            }
        })
        .collect();

    // The state as provisioned: enough to remove everything should the lab be lost.
    let state_copy = lab.state().clone();
    let (lab, outcome) = play(&plan, lab, &mut opts, &mut cx).await;
    if let Err(e) = outcome {
        cx.report.error = Some(e);
    }

    // Teardown, always.
    cx.begin("teardown");
    let grace = if opts.stop.level() >= StopLevel::Force {
        Duration::ZERO
    } else {
        opts.grace
    };
    if let Some(m) = &opts.metrics {
        m.set_link_stats(None);
    }
    let Some(lab) = lab else {
        // The timeline thread panicked and took the lab with it: remove what the state file
        // names.
        let errors = targets::cleanup(&state_copy).await;
        cx.end("teardown", errors.is_empty());
        cx.report.teardown.errors = errors;
        cx.report.finish();
        return cx.report;
    };
    // The log outlives the lab: teardown's stops (and how workloads exited) are recorded too.
    let workload_log = lab.events();
    cx.report.linkem = lab.faults().map(|f| f.emulator_stats()).unwrap_or_default();
    let t = Instant::now();
    let errors = lab.teardown(grace).await;
    cx.report.workloads = {
        let mut w = workload_log.snapshot();
        w.sort_by(|a, b| a.t.total_cmp(&b.t));
        w
    };
    cx.report.teardown.seconds = t.elapsed().as_secs_f64();
    cx.end("teardown", errors.is_empty());
    if !errors.is_empty() && cx.report.error.is_none() {
        cx.report.error = Some(format!(
            "teardown left {} problem(s); run `edgesim cleanup`",
            errors.len()
        ));
    }
    cx.report.teardown.errors = errors;
    if let Some(m) = &opts.metrics {
        m.set_nodes_up(0);
        for v in &cx.report.assertions {
            m.assertion(&v.name, v.passed);
        }
    }
    cx.report.finish();
    cx.report
}

/// Deploy, timeline, probes and assertions. An `Err` is an infrastructure error. Gives the
/// lab back, unless the timeline thread panicked with it.
async fn play(
    plan: &Arc<Plan>,
    mut lab: Lab,
    opts: &mut RunOptions,
    cx: &mut Ctx,
) -> (Option<Lab>, Result<(), String>) {
    cx.begin("deploy");
    let ready = match lab.deploy(&opts.out_dir).await {
        Ok(()) => lab.mark_ready().map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = ready {
        cx.end("deploy", false);
        if let Some(r) = opts.ready.take() {
            r(Err(e.clone()));
        }
        return (Some(lab), Err(e));
    }
    cx.end("deploy", true);

    if opts.mode == Mode::Lab {
        if let Some(r) = opts.ready.take() {
            r(Ok(lab.state()));
        }
        cx.say(Progress::Message {
            text: "lab is up; waiting for `edgesim down`".into(),
        });
        match opts.control.take() {
            Some(control) => serve_lab(&mut lab, control, opts, cx).await,
            None => opts.stop.wait(StopLevel::Graceful).await,
        }
        cx.report.notes.extend(lab.take_notes());
        return (Some(lab), Ok(()));
    }

    // Probes and scrapes reach into nodes through socket factories, got before the timeline
    // takes the lab.
    let mut factories = BTreeMap::new();
    let mut wanted: Vec<usize> = plan.probes.iter().map(|p| p.from).collect();
    for a in &plan.assertions {
        if let Subject::Metric { nodes, .. } = &a.subject {
            wanted.extend(nodes.iter().copied());
        }
    }
    // (Remote probes run on the nodes themselves: no factories.)
    let remote = lab.remote_probes();
    for n in wanted.into_iter().filter(|_| !remote) {
        if let std::collections::btree_map::Entry::Vacant(e) = factories.entry(n) {
            match lab.sockets(n) {
                Ok(f) => {
                    e.insert(f);
                }
                Err(err) => return (Some(lab), Err(err.to_string())),
            }
        }
    }
    let factories = Arc::new(factories);
    // On boards, metrics are read by their agents.
    let fetcher = lab.fetcher();

    // Timeline, probes and timed scrapes share t0.
    cx.begin("timeline");
    let t0 = Instant::now() + Duration::from_millis(20);
    let t0_tokio = tokio::time::Instant::from_std(t0);
    lab.events().set_t0(t0_tokio);

    let mut probe_tasks = Vec::new();
    let mut logs: Vec<ProbeLog> = Vec::new();
    if remote {
        logs = plan.probes.iter().map(|_| ProbeLog::new()).collect();
        if let Err(e) = lab.start_probes(t0_tokio).await {
            return (Some(lab), Err(e.to_string()));
        }
    }
    for p in plan.probes.iter().filter(|_| !remote) {
        let Some(f) = factories.get(&p.from).cloned() else {
            continue;
        };
        let log = ProbeLog::new();
        logs.push(log.clone());
        let p = lab.localize(p);
        let until = plan.duration;
        let metrics = opts.metrics.clone();
        probe_tasks.push(tokio::spawn(async move {
            probe::run(&p, f, t0_tokio, until, log, metrics).await
        }));
    }

    let mut timed_scrapes = Vec::new();
    for (ai, a) in plan.assertions.iter().enumerate() {
        if let Subject::Metric {
            at: Bound::At(at), ..
        } = &a.subject
        {
            let factories = factories.clone();
            let fetcher = fetcher.clone();
            let plan = plan.clone();
            let at = *at;
            timed_scrapes.push((
                ai,
                tokio::spawn(async move {
                    tokio::time::sleep_until(t0_tokio + at).await;
                    scrape_for(&plan, &factories, fetcher.as_ref(), ai).await
                }),
            ));
        }
    }

    // The timeline thread owns the lab until the timeline ends, and hands it back.
    let (back_tx, back_rx) = tokio::sync::oneshot::channel();
    let spawned = {
        let plan = plan.clone();
        let rt = tokio::runtime::Handle::current();
        let stop = opts.stop.clone();
        let metrics = opts.metrics.clone();
        let progress = opts.progress.clone();
        std::thread::Builder::new()
            .name("edgesim-timeline".into())
            .spawn(move || {
                let mut lab = lab;
                let journal = play_timeline(
                    &plan,
                    &mut lab,
                    &rt,
                    t0,
                    &stop,
                    metrics.as_deref(),
                    progress.as_ref(),
                );
                let _ = back_tx.send((lab, journal));
            })
    };
    if let Err(e) = spawned {
        // The closure (and the lab in it) was dropped: the caller cleans up from the state.
        return (None, Err(format!("starting the timeline thread: {e}")));
    }

    // Wait for the end of the timeline or a stop.
    let end = t0_tokio + plan.duration;
    let mut stop = opts.stop.clone();
    let interrupted = tokio::select! {
        _ = tokio::time::sleep_until(end) => false,
        _ = stop.wait(StopLevel::Graceful) => true,
    };
    let (lab, journal) = match back_rx.await {
        Ok(v) => v,
        Err(_) => {
            for t in &probe_tasks {
                t.abort();
            }
            for (_, t) in &timed_scrapes {
                t.abort();
            }
            cx.end("timeline", false);
            return (
                None,
                Err("internal error: the timeline thread panicked; the run's objects are removed from its state file".into()),
            );
        }
    };
    cx.report.journal = journal;
    let mut lab = lab;
    cx.report.notes.extend(lab.take_notes());
    if remote {
        if !interrupted {
            // The last attempts end at most one timeout after the timeline.
            let last = plan
                .probes
                .iter()
                .map(|p| p.timeout)
                .max()
                .unwrap_or_default();
            tokio::time::sleep_until(end + last + Duration::from_millis(100)).await;
        }
        let notes = lab.collect_probes(&logs).await;
        cx.report.notes.extend(notes);
    }
    if interrupted {
        for t in &probe_tasks {
            t.abort();
        }
        for (_, t) in &timed_scrapes {
            t.abort();
        }
    }
    for t in probe_tasks {
        if let Ok(Err(e)) = t.await {
            cx.report.notes.push(format!("probe: {e}"));
        }
    }
    cx.end("timeline", !interrupted);
    if interrupted {
        for (_, t) in timed_scrapes {
            let _ = t.await;
        }
        cx.report
            .notes
            .push("interrupted: the run was stopped before the end of its timeline".into());
        cx.report.probes = plan
            .probes
            .iter()
            .zip(&logs)
            .map(|(p, l)| ProbeSummary::new(p, &plan.nodes[p.from].name, l.samples()))
            .collect();
        return (Some(lab), Err("interrupted".into()));
    }

    // Assertions: probes over their windows, metrics at their instants or now (`end`).
    cx.begin("assert");
    let mut scraped: BTreeMap<usize, Result<Vec<f64>, String>> = BTreeMap::new();
    for (ai, t) in timed_scrapes {
        scraped.insert(ai, t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    for (ai, a) in plan.assertions.iter().enumerate() {
        if let Subject::Metric { at: Bound::End, .. } = &a.subject {
            scraped.insert(ai, scrape_for(plan, &factories, fetcher.as_ref(), ai).await);
        }
    }
    let mut verdicts: Vec<Verdict> = Vec::new();
    for (ai, a) in plan.assertions.iter().enumerate() {
        let v = match &a.subject {
            Subject::Probe {
                probe,
                window,
                reference,
            } => {
                let w = window.resolve(plan.duration);
                let reference = reference.map(|r| logs[r].samples());
                let mut v = assertion::judge_probe(
                    &a.name,
                    &logs[*probe].samples(),
                    w,
                    &a.expect,
                    reference.as_deref(),
                );
                v.window = Some(window.to_string());
                v
            }
            Subject::Metric { aggregate, at, .. } => {
                let values = scraped
                    .remove(&ai)
                    .unwrap_or_else(|| Err("not read".into()));
                let mut v = assertion::judge_metric(&a.name, values, *aggregate, &a.expect);
                let instant = match at {
                    Bound::At(d) => *d,
                    Bound::Start => Duration::ZERO,
                    Bound::End => plan.duration,
                };
                v.window = Some(match at {
                    Bound::At(d) => format!("at {}", crate::units::Dur(*d)),
                    _ => "at end".into(),
                });
                v.span = Some([instant.as_secs_f64(); 2]);
                v
            }
        };
        verdicts.push(v);
    }
    cx.report.assertions = verdicts;
    cx.report.probes = plan
        .probes
        .iter()
        .zip(&logs)
        .map(|(p, l)| ProbeSummary::new(p, &plan.nodes[p.from].name, l.samples()))
        .collect();
    cx.end("assert", true);
    (Some(lab), Ok(()))
}

/// Serves a lab's control channel until a stop: live faults applied and journalled, their
/// reverts and flap steps applied when due. At the stop, the reverts still pending are
/// applied (journalled as such) before teardown removes the rest.
async fn serve_lab(lab: &mut Lab, mut control: Control, opts: &mut RunOptions, cx: &mut Ctx) {
    let t0 = Instant::now();
    let mut applied: Vec<crate::scenario::plan::Action> = Vec::new();
    // Actions due later, with the plan they came from (for their journal entries).
    let mut pending: Vec<(crate::scenario::plan::Action, Arc<Plan>)> = Vec::new();
    let mut stop = opts.stop.clone();
    loop {
        pending.sort_by_key(|(a, _)| a.at);
        let next = pending
            .first()
            .map(|(a, _)| tokio::time::Instant::from_std(t0 + a.at));
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait(StopLevel::Graceful) => break,
            _ = due => {
                let (a, plan) = pending.remove(0);
                let e = apply_live(lab, &plan, &a, t0, cx).await;
                if e.ok {
                    applied.push(a);
                }
            }
            msg = control.requests.recv() => {
                let Some((req, reply)) = msg else {
                    // Nobody can reach the lab any more: keep it up until the stop.
                    stop.wait(StopLevel::Graceful).await;
                    break;
                };
                let answer = match req {
                    live::Request::List => {
                        let later: Vec<_> = pending.iter().map(|(a, _)| a.clone()).collect();
                        live::Reply::Active { faults: control.timeline.active(&applied, &later) }
                    }
                    live::Request::Fault { entry } => {
                        match live::LiveTimeline::parse_entry(&entry)
                            .and_then(|e| control.timeline.accept(e, t0.elapsed()))
                        {
                            Err(errors) => live::Reply::Invalid { errors },
                            Ok(acc) => {
                                let plan = Arc::new(acc.plan);
                                let mut journal = Vec::new();
                                let mut error = None;
                                for a in &acc.now {
                                    let e = apply_live(lab, &plan, a, t0, cx).await;
                                    if e.ok {
                                        applied.push(a.clone());
                                    } else if error.is_none() {
                                        error = e.error.clone();
                                    }
                                    journal.push(live::Applied::from(&e));
                                }
                                let scheduled = acc.later.len();
                                pending.extend(acc.later.into_iter().map(|a| (a, plan.clone())));
                                match error {
                                    None => live::Reply::Applied { journal, scheduled },
                                    Some(error) => live::Reply::Failed { journal, error },
                                }
                            }
                        }
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }
    // The stop: what a `for` would revert is reverted now, in order.
    pending.sort_by_key(|(a, _)| a.at);
    for (a, plan) in pending.into_iter().filter(|(a, _)| a.revert) {
        apply_live(lab, &plan, &a, t0, cx).await;
    }
}

/// Applies one live action now and journals it (and tells the progress sink).
async fn apply_live(
    lab: &mut Lab,
    plan: &Plan,
    a: &crate::scenario::plan::Action,
    t0: Instant,
    cx: &mut Ctx,
) -> JournalEntry {
    let started = Instant::now();
    let res = lab.apply(&a.kind, None).await;
    let done = Instant::now();
    let entry = JournalEntry::applied(
        plan,
        a,
        done.saturating_duration_since(t0),
        done - started,
        res.map_err(|e| e.to_string()),
    );
    cx.say(Progress::Action {
        entry: entry.clone(),
    });
    cx.report.journal.push(entry.clone());
    entry
}

/// Reads the metric of assertion `ai` from every selected instance, from inside each node.
async fn scrape_for(
    plan: &Plan,
    factories: &BTreeMap<usize, crate::host::ns::SocketFactory>,
    fetcher: Option<&crate::targets::Fetcher>,
    ai: usize,
) -> Result<Vec<f64>, String> {
    let Subject::Metric {
        workload,
        name,
        json,
        labels,
        nodes,
        ..
    } = &plan.assertions[ai].subject
    else {
        return Err("not a metric assertion".into());
    };
    let w = &plan.workloads[*workload];
    let ep = w
        .metrics
        .as_ref()
        .ok_or("the workload has no metrics endpoint")?;
    let mut values = Vec::new();
    for &n in nodes {
        let what = |e: &dyn std::fmt::Display| {
            format!(
                "reading {} of `{}` on `{}`: {e}",
                ep.path, w.name, plan.nodes[n].name
            )
        };
        let doc = if let Some(fx) = fetcher {
            let body = fx.fetch(n, ep.port, &ep.path).await.map_err(|e| what(&e))?;
            probe::scrape::parse_document(body.as_bytes(), ep.format).map_err(|e| what(&e))?
        } else {
            let f = factories
                .get(&n)
                .ok_or_else(|| format!("no way into `{}`", plan.nodes[n].name))?;
            let addr = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, ep.port);
            probe::scrape::scrape(f, addr, &ep.path, ep.format, Duration::from_secs(5))
                .await
                .map_err(|e| what(&e))?
        };
        let v = probe::scrape::select(&doc, name.as_deref(), json.as_deref(), labels)
            .map_err(|e| format!("`{}` on `{}`: {e}", w.name, plan.nodes[n].name))?;
        values.extend(v);
    }
    Ok(values)
}

/// Sleeps until `deadline` with sub-100 µs precision: coarse sleeps, then a short spin.
/// Returns false when a stop was asked for meanwhile.
fn sleep_until_precise(deadline: Instant, stop: &StopSignal) -> bool {
    const SPIN: Duration = Duration::from_micros(200);
    loop {
        if stop.level() >= StopLevel::Graceful {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        let left = deadline - now;
        if left > SPIN {
            std::thread::sleep((left - SPIN).min(Duration::from_millis(50)));
        } else {
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            return true;
        }
    }
}

fn play_timeline(
    plan: &Plan,
    lab: &mut Lab,
    rt: &tokio::runtime::Handle,
    t0: Instant,
    stop: &StopSignal,
    metrics: Option<&RunMetrics>,
    progress: Option<&ProgressFn>,
) -> Vec<JournalEntry> {
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack; the argument is
    // a plain integer (1 ns) and no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    const PREPARE_AHEAD: Duration = Duration::from_millis(30);
    let mut journal = Vec::with_capacity(plan.actions.len());
    // Actions due at the same instant are prepared together, before the first of them, so
    // the later ones do not pay for preparation after the earlier ones applied.
    let mut prepared: std::collections::VecDeque<Option<crate::faults::shaping::Prepared>> =
        std::collections::VecDeque::new();
    for (i, a) in plan.actions.iter().enumerate() {
        let at = t0 + a.at;
        if i == 0 || plan.actions[i - 1].at != a.at {
            if !sleep_until_precise(at.checked_sub(PREPARE_AHEAD).unwrap_or(at), stop) {
                break;
            }
            let group = plan.actions[i..].iter().take_while(|b| b.at == a.at);
            prepared = group.map(|b| lab.prepare(&b.kind)).collect();
        }
        let prepared = prepared.pop_front().flatten();
        if !sleep_until_precise(at, stop) {
            break;
        }
        let started = Instant::now();
        let res = rt.block_on(lab.apply(&a.kind, prepared));
        let done = Instant::now();
        let entry = JournalEntry::applied(
            plan,
            a,
            done.saturating_duration_since(t0),
            done - started,
            res.map_err(|e| e.to_string()),
        );
        if let Some(m) = metrics {
            m.action(
                &entry.verb,
                entry.ok,
                Duration::from_secs_f64(entry.lag_ms.unwrap_or(0.0) / 1e3),
            );
        }
        if let Some(p) = progress {
            p(Progress::Action {
                entry: entry.clone(),
            });
        }
        journal.push(entry);
    }
    journal
}
