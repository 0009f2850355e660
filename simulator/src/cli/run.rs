//! Subcommands that act on the machine: run, up, down, exec, doctor, cleanup, calibrate.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgesim::engine::{self, Progress, ProgressFn, RunOptions, StopLevel, StopSignal};
use edgesim::report::{self, Report, ReportFiles};
use edgesim::scenario::model::ImpairmentMode;
use edgesim::scenario::{Overrides, Plan};
use edgesim::targets::state::{self, Mode, RunState};

use super::commands::{capabilities, load_plan, load_profiles, resolve_plan};
use super::{
    Command, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_PASS, Output, RunArgs, TargetArg,
};

pub fn dispatch(cmd: Command, profile_dirs: &[PathBuf]) -> Result<u8> {
    match cmd {
        Command::Run(args) => run(args, profile_dirs),
        Command::Up {
            file,
            target,
            impairment,
            seed,
            out,
        } => up(&file, target, impairment, seed, out, profile_dirs),
        Command::Down { name } => down(&name),
        Command::Exec {
            name,
            node,
            command,
        } => exec(&name, &node, &command),
        Command::Fault {
            name,
            action,
            body,
            for_,
            list,
            output,
        } => fault(
            &name,
            action.as_deref(),
            body.as_deref(),
            for_.as_deref(),
            list,
            output,
        ),
        Command::Doctor { output } => doctor(output),
        Command::Cleanup { all } => cleanup(all),
        Command::Agent { state } => {
            agent(&state.unwrap_or_else(edgesim::targets::device::agent::default_state))
        }
        Command::AgentEnter {
            netns,
            cgroup,
            argv,
        } => {
            let e =
                edgesim::targets::device::cell::enter(netns.as_deref(), cgroup.as_deref(), &argv);
            eprintln!("edgesim agent-enter: {e:#}");
            Ok(126)
        }
        Command::AgentHold => edgesim::targets::device::scope::hold(),
        Command::Calibrate { save, builtin } => calibrate(save, builtin),
        Command::LabDaemon {
            file,
            run_id,
            target,
            impairment,
            seed,
            out,
            ready_fd,
        } => lab_daemon(
            &file,
            &run_id,
            target,
            impairment,
            seed,
            out,
            ready_fd,
            profile_dirs,
        ),
        Command::Validate { .. }
        | Command::Plan { .. }
        | Command::Profiles { .. }
        | Command::KindConfig { .. }
        | Command::KindDelivery { .. }
        | Command::Schema => {
            unreachable!("handled in commands::dispatch")
        }
    }
}

fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (network namespaces, tc, nftables and cgroups): run it with sudo");
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("edgesim")
        .build()
        .context("starting the async runtime")
}

fn default_out(plan: &Plan, run_id: &str, out: Option<PathBuf>, several: bool) -> PathBuf {
    match out {
        Some(o) if several => o.join(format!("{}-{run_id}", plan.name)),
        Some(o) => o,
        None => PathBuf::from("edgesim-runs").join(format!("{}-{run_id}", plan.name)),
    }
}

/// `--report out.json` with several scenarios becomes `out-<scenario>.json`.
fn per_scenario(path: &Path, name: &str, several: bool) -> PathBuf {
    if !several {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!("{stem}-{name}{ext}"))
}

/// Renders progress for a terminal (a live status line), a log (plain lines) or JSON lines.
fn progress_sink(output: Output) -> (ProgressFn, Option<indicatif::ProgressBar>) {
    if output == Output::Json {
        let f: ProgressFn = Arc::new(|p: Progress| {
            if let Ok(s) = serde_json::to_string(&p) {
                outln!("{s}");
            }
        });
        return (f, None);
    }
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let b2 = bar.clone();
    let f: ProgressFn = Arc::new(move |p: Progress| {
        let line = match &p {
            Progress::PhaseStarted { phase } => {
                if let Some(b) = &b2 {
                    b.set_message(format!("{phase}…"));
                    return;
                }
                return;
            }
            Progress::PhaseFinished { phase, seconds, ok } => {
                format!("{} {phase} {:.2}s", if *ok { "✓" } else { "✗" }, seconds)
            }
            Progress::Action { entry } => format!(
                "  {:>8.3}s  {}{}  (+{:.2} ms){}",
                entry.applied.map_or(0.0, |d| d.as_secs_f64()),
                entry.summary,
                if entry.revert { " [revert]" } else { "" },
                entry.lag_ms.unwrap_or(0.0),
                entry
                    .error
                    .as_ref()
                    .map(|e| format!("  ERROR: {e}"))
                    .unwrap_or_default()
            ),
            Progress::Message { text } => text.clone(),
        };
        match &b2 {
            Some(b) => b.println(line),
            None => errln!("{line}"),
        }
    });
    (f, bar)
}

/// Writes the run's reports (`report::write_run_reports`), printing what could not be.
fn write_reports(report: &mut Report, out_dir: &Path, extra: ReportFiles) {
    for e in report::write_run_reports(report, out_dir, &extra) {
        errln!("error: {e}");
    }
}

fn run(args: RunArgs, profile_dirs: &[PathBuf]) -> Result<u8> {
    let profiles = load_profiles(profile_dirs)?;
    let caps = capabilities(args.target)?;
    // Every file is validated, by the scenario rules and by the target, before anything is
    // created.
    let mut plans = Vec::new();
    let mut invalid = false;
    for f in &args.files {
        let ov = Overrides {
            seed: args.seed,
            impairment: args.impairment,
            live: false,
        };
        match load_plan(f, &profiles, &caps, &ov)? {
            Some(p) => match resolve_plan(args.target, &p)? {
                Some(r) => plans.push((p, r)),
                None => invalid = true,
            },
            None => invalid = true,
        }
    }
    if invalid {
        return Ok(EXIT_INVALID);
    }
    if args.target != TargetArg::Device {
        // The device target changes nothing on this host (its state file aside).
        require_root("edgesim run")?;
    }
    let rt = runtime()?;
    let several = plans.len() > 1;
    rt.block_on(async move {
        let (stopper, stop) = StopSignal::new();
        let bar_slot: Arc<std::sync::Mutex<Option<indicatif::ProgressBar>>> = Arc::default();
        let bs = bar_slot.clone();
        engine::stop_on_signals(stopper, move |lvl| {
            let msg = match lvl {
                StopLevel::Graceful => "stopping: tearing down gracefully (Ctrl-C again to force)",
                _ => "forcing teardown",
            };
            match bs.lock().ok().and_then(|g| g.clone()) {
                Some(b) => b.println(msg),
                None => errln!("{msg}"),
            }
        });
        let (metrics, _server) = match args.metrics_addr {
            Some(addr) => {
                let (m, reg) = edgesim::metrics::RunMetrics::new();
                let server = edgesim::metrics::serve(addr, Arc::new(reg)).await.context("serving metrics")?;
                errln!("metrics at http://{}/metrics", server.local_addr());
                (Some(Arc::new(m)), Some(server))
            }
            None => (None, None),
        };
        let mut worst = EXIT_PASS;
        for (plan, resolved) in plans {
            if stop.level() >= StopLevel::Graceful {
                worst = worst.max(EXIT_INTERRUPTED);
                break;
            }
            let run_id = state::new_run_id();
            let out_dir = default_out(&plan, &run_id, args.out.clone(), several);
            let (progress, bar) = progress_sink(args.output);
            *bar_slot.lock().unwrap_or_else(|e| e.into_inner()) = bar.clone();
            if args.output == Output::Text {
                errln!(
                    "running {} (run {run_id}, seed {}, {} nodes, {} s)",
                    plan.name,
                    plan.seed,
                    plan.nodes.len(),
                    plan.duration.as_secs_f64()
                );
            }
            let name = plan.name.clone();
            let opts = RunOptions {
                run_id,
                out_dir: out_dir.clone(),
                mode: Mode::Run,
                metrics: metrics.clone(),
                progress: Some(progress),
                stop: stop.clone(),
                ready: None,
                grace: Duration::from_secs(3),
                emulator: edgesim::faults::emulator::EmulatorOptions {
                    capture_dir: args.capture.then(|| out_dir.join("capture")),
                    decision_log_dir: args.decision_log.then(|| out_dir.join("decisions")),
                    busy_poll: args.busy_poll.map(|d| d.0),
                },
                control: None,
            };
            let mut report = engine::run(Arc::new(plan), resolved, opts).await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            write_reports(
                &mut report,
                &out_dir,
                ReportFiles {
                    json: args.report.as_ref().map(|p| per_scenario(p, &name, several)),
                    junit: args.junit.as_ref().map(|p| per_scenario(p, &name, several)),
                    html: args.html.as_ref().map(|p| per_scenario(p, &name, several)),
                },
            );
            let code = if stop.level() >= StopLevel::Graceful { EXIT_INTERRUPTED } else { report.exit_code as u8 };
            if args.output == Output::Json {
                outln!("{}", serde_json::json!({"event": "result", "scenario": name, "outcome": report.outcome, "exitCode": code, "report": out_dir.join("report.json"), "html": out_dir.join("report.html")}));
            } else {
                out!("{}", report::summary(&report, std::io::stdout().is_terminal()));
            }
            worst = worst.max(code);
        }
        Ok::<u8, anyhow::Error>(worst)
    })
}

/// The plan of a lab (`up`), checked as one that takes live faults, with the profiles and
/// capabilities it was checked with; `None` when invalid (the diagnostics are printed).
fn lab_plan(
    file: &Path,
    target: TargetArg,
    impairment: Option<ImpairmentMode>,
    seed: Option<u64>,
    profile_dirs: &[PathBuf],
) -> Result<
    Option<(
        edgesim::profile::ProfileSet,
        edgesim::scenario::Capabilities,
        Plan,
    )>,
> {
    let profiles = load_profiles(profile_dirs)?;
    let caps = capabilities(target)?;
    let ov = Overrides {
        seed,
        impairment,
        live: true,
    };
    Ok(load_plan(file, &profiles, &caps, &ov)?.map(|p| (profiles, caps, p)))
}

fn up(
    file: &Path,
    target: TargetArg,
    impairment: Option<ImpairmentMode>,
    seed: Option<u64>,
    out: Option<PathBuf>,
    profile_dirs: &[PathBuf],
) -> Result<u8> {
    let Some((_, _, plan)) = lab_plan(file, target, impairment, seed, profile_dirs)? else {
        return Ok(EXIT_INVALID);
    };
    if resolve_plan(target, &plan)?.is_none() {
        return Ok(EXIT_INVALID);
    }
    require_root("edgesim up")?;
    if let Some(live) = state::live_by_name(&plan.name).first() {
        errln!(
            "error: a lab of scenario `{}` is already up (run {}); `edgesim down {}` first",
            plan.name,
            live.run_id,
            plan.name
        );
        return Ok(EXIT_INVALID);
    }
    let run_id = state::new_run_id();
    let out_dir = default_out(&plan, &run_id, out, false);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let log_path = out_dir.join("lab.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let (rd, wr) = nix::unistd::pipe().context("creating a pipe")?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = std::process::Command::new(
        std::env::current_exe().context("finding the edgesim executable")?,
    );
    cmd.arg("lab-daemon")
        .arg(file)
        .args(["--run-id", &run_id])
        .args(["--target", target.kind().name()])
        .arg("--out")
        .arg(&out_dir)
        .args(["--ready-fd", &wr_raw.to_string()]);
    for d in profile_dirs {
        cmd.arg("--profiles").arg(d);
    }
    let opts = super::commands::target_options();
    for (flag, path) in [
        ("--inventory", opts.inventory),
        ("--kubeconfig", opts.kubeconfig),
    ] {
        if let Some(p) = path {
            cmd.arg(flag).arg(std::fs::canonicalize(&p).unwrap_or(p));
        }
    }
    if let Some(r) = opts.registry {
        cmd.arg("--registry").arg(r);
    }
    if let Some(s) = seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    if let Some(v) = impairment.and_then(|m| clap::ValueEnum::to_possible_value(&m)) {
        cmd.args(["--impairment", v.get_name()]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // The lab process starts with the open-file limit this one started with, so that it
    // hands that limit on to its workloads (it raises its own again).
    let nofile = edgesim::host::rlimit::child_limit();
    // SAFETY: between fork and exec the child only calls setsid, setrlimit (with a struct
    // prepared above and moved into the closure) and fcntl on a descriptor number it
    // inherited; all are async-signal-safe and touch no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::setsid();
            if let Some(l) = &nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, l);
            }
            // Keep the readiness pipe open across exec.
            let flags = libc::fcntl(wr_raw, libc::F_GETFD);
            libc::fcntl(wr_raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the lab process")?;
    drop(wr);
    let mut msg = String::new();
    std::fs::File::from(rd)
        .read_to_string(&mut msg)
        .context("waiting for the lab")?;
    if let Some(rest) = msg.strip_prefix("ok ") {
        let st: RunState = serde_json::from_str(rest.trim()).context("reading the lab's state")?;
        outln!(
            "lab `{}` is up (run {}, {} nodes)",
            st.scenario,
            st.run_id,
            st.nodes.len()
        );
        for n in st.nodes.iter().take(12) {
            outln!("  {:<16} {:<15} site {}", n.name, n.addr, n.site);
        }
        if st.nodes.len() > 12 {
            outln!("  … and {} more", st.nodes.len() - 12);
        }
        outln!("logs: {}", st.out_dir.display());
        outln!(
            "try:  edgesim exec {} {} -- ip addr",
            st.scenario,
            st.nodes[0].name
        );
        outln!("stop: edgesim down {}", st.scenario);
        Ok(EXIT_PASS)
    } else {
        let _ = child.wait();
        errln!(
            "error: the lab did not come up: {}",
            msg.trim().strip_prefix("err ").unwrap_or(msg.trim())
        );
        errln!("(log: {})", log_path.display());
        Ok(EXIT_INFRA)
    }
}

#[allow(clippy::too_many_arguments)]
fn lab_daemon(
    file: &Path,
    run_id: &str,
    target: TargetArg,
    impairment: Option<ImpairmentMode>,
    seed: Option<u64>,
    out: Option<PathBuf>,
    ready_fd: Option<i32>,
    profile_dirs: &[PathBuf],
) -> Result<u8> {
    // SAFETY: the descriptor number was passed by our parent, which opened it for us and
    // cleared its close-on-exec flag; nothing else in this process owns it.
    let ready: Option<OwnedFd> = ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some(fd) = &ready {
        // Workloads must not inherit it, or `up` would wait for them to exit.
        // SAFETY: fcntl(2) on a descriptor this process owns; no memory is passed.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    let report_ready = move |msg: String| {
        if let Some(fd) = ready {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(msg.as_bytes());
        }
    };
    let Some((profiles, caps, plan)) = lab_plan(file, target, impairment, seed, profile_dirs)?
    else {
        report_ready("err invalid scenario".into());
        return Ok(EXIT_INVALID);
    };
    let Some(resolved) = resolve_plan(target, &plan)? else {
        report_ready(format!(
            "err the `{}` target refuses the scenario",
            target.kind()
        ));
        return Ok(EXIT_INVALID);
    };
    let out_dir = out
        .unwrap_or_else(|| PathBuf::from("edgesim-runs").join(format!("{}-{run_id}", plan.name)));
    // Live faults are checked against the scenario as the lab was built from it.
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let model =
        edgesim::scenario::validate::parse(file, &text).map_err(|d| anyhow::anyhow!("{d}"))?;
    let timeline = edgesim::engine::live::LiveTimeline::new(
        model,
        text,
        file.to_path_buf(),
        profiles,
        caps,
        &Overrides {
            seed,
            impairment,
            live: true,
        },
        plan.clone(),
    );
    let rt = runtime()?;
    rt.block_on(async {
        let (stopper, stop) = StopSignal::new();
        engine::stop_on_signals(stopper, |_| {});
        let (tx, requests) = tokio::sync::mpsc::channel(16);
        let sock = state::control_path(run_id);
        let server = serve_control(&sock, tx).await?;
        let opts = RunOptions {
            run_id: run_id.to_string(),
            out_dir: out_dir.clone(),
            mode: Mode::Lab,
            metrics: None,
            progress: Some(Arc::new(|p: Progress| {
                if let Ok(s) = serde_json::to_string(&p) {
                    outln!("{s}");
                }
            })),
            stop,
            ready: Some(Box::new(
                move |r: std::result::Result<&RunState, String>| match r {
                    Ok(st) => report_ready(format!(
                        "ok {}",
                        serde_json::to_string(st).unwrap_or_default()
                    )),
                    Err(e) => report_ready(format!("err {e}")),
                },
            )),
            grace: Duration::from_secs(3),
            emulator: Default::default(),
            control: Some(engine::Control { timeline, requests }),
        };
        let mut report = engine::run(Arc::new(plan), resolved, opts).await;
        server.abort();
        let _ = std::fs::remove_file(&sock);
        write_reports(
            &mut report,
            &out_dir,
            ReportFiles {
                json: None,
                junit: None,
                html: None,
            },
        );
        Ok(
            if report.error.is_some() && report.error.as_deref() != Some("interrupted") {
                EXIT_INFRA
            } else {
                EXIT_PASS
            },
        )
    })
}

/// Listens on the lab's control socket (root only: it lives in the state folder) and hands
/// each request, one JSON line, to the lab; its reply goes back as one JSON line.
async fn serve_control(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<engine::ControlMsg>,
) -> Result<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = conn.into_split();
                let mut line = String::new();
                let mut rd = tokio::io::BufReader::new(rd.take(1 << 20));
                if rd.read_line(&mut line).await.is_err() {
                    return;
                }
                let reply = match serde_json::from_str::<edgesim::engine::live::Request>(&line) {
                    Err(e) => edgesim::engine::live::Reply::Invalid {
                        errors: vec![format!("bad request: {e}")],
                    },
                    Ok(req) => {
                        let (otx, orx) = tokio::sync::oneshot::channel();
                        if tx.send((req, otx)).await.is_err() {
                            return;
                        }
                        match orx.await {
                            Ok(r) => r,
                            Err(_) => return,
                        }
                    }
                };
                if let Ok(mut body) = serde_json::to_vec(&reply) {
                    body.push(b'\n');
                    let _ = wr.write_all(&body).await;
                }
            });
        }
    }))
}

/// `edgesim fault`: one request to the lab's control socket.
fn fault(
    name_or_file: &str,
    action: Option<&str>,
    body: Option<&str>,
    for_: Option<&str>,
    list: bool,
    output: Output,
) -> Result<u8> {
    use edgesim::engine::live::{Reply, Request};
    require_root("edgesim fault")?;
    let name = scenario_name(name_or_file);
    let Some(st) = state::list()
        .into_iter()
        .find(|s| s.scenario == name && s.mode == Mode::Lab && s.controller_alive())
    else {
        errln!("error: no lab of scenario `{name}` is up (start one with `edgesim up FILE`)");
        return Ok(EXIT_INVALID);
    };
    let req = if list {
        Request::List
    } else {
        let entry = edgesim::engine::live::entry_text(action.unwrap_or_default(), body, for_);
        Request::Fault { entry }
    };
    let sock = state::control_path(&st.run_id);
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).with_context(|| {
        format!(
            "connecting to lab `{name}` at {} (a lab started by an older edgesim takes no live faults)",
            sock.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut body = serde_json::to_vec(&req)?;
    body.push(b'\n');
    conn.write_all(&body)?;
    let mut line = String::new();
    std::io::BufReader::new(conn)
        .read_to_string(&mut line)
        .context("reading the lab's answer")?;
    let reply: Reply = serde_json::from_str(line.trim())
        .with_context(|| format!("reading the lab's answer {:?}", line.trim()))?;
    if output == Output::Json {
        outln!("{}", serde_json::to_string(&reply)?);
    }
    let show = |journal: &[edgesim::engine::live::Applied]| {
        for j in journal {
            match &j.error {
                None => outln!(
                    "applied {} at {:.3}s (took {:.1} ms)",
                    j.summary,
                    j.at,
                    j.apply_ms
                ),
                Some(e) => outln!("failed  {} at {:.3}s: {e}", j.summary, j.at),
            }
        }
    };
    Ok(match reply {
        Reply::Active { faults } => {
            if output == Output::Text {
                out!("{}", edgesim::engine::live::table(&faults));
            }
            EXIT_PASS
        }
        Reply::Applied { journal, scheduled } => {
            if output == Output::Text {
                show(&journal);
                if scheduled > 0 {
                    outln!(
                        "{scheduled} more action{} scheduled (see `edgesim fault {name} --list`)",
                        if scheduled == 1 { "" } else { "s" }
                    );
                }
            }
            EXIT_PASS
        }
        Reply::Invalid { errors } => {
            for e in errors {
                errln!("error: {e}");
            }
            errln!("nothing was changed");
            EXIT_INVALID
        }
        Reply::Failed { journal, error } => {
            if output == Output::Text {
                show(&journal);
            }
            errln!("error: {error}");
            EXIT_INFRA
        }
    })
}

/// The scenario name behind `name_or_file`.
fn scenario_name(name_or_file: &str) -> String {
    let p = Path::new(name_or_file);
    if p.is_file()
        && let Ok(text) = std::fs::read_to_string(p)
        && let Ok(sc) = edgesim::scenario::validate::parse(p, &text)
    {
        return sc.metadata.name.value;
    }
    name_or_file.to_string()
}

fn down(name_or_file: &str) -> Result<u8> {
    require_root("edgesim down")?;
    let name = scenario_name(name_or_file);
    let all: Vec<RunState> = state::list()
        .into_iter()
        .filter(|s| s.scenario == name && s.mode == Mode::Lab)
        .collect();
    if all.is_empty() {
        errln!("error: no lab of scenario `{name}` is up");
        return Ok(EXIT_INVALID);
    }
    let rt = runtime()?;
    let mut code = EXIT_PASS;
    for st in all {
        if st.controller_alive() {
            // SAFETY: kill(2) with a pid we verified (pid and start time) to be the lab's.
            unsafe {
                libc::kill(st.pid as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while st.controller_alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if st.controller_alive() || st.path().exists() {
            // The lab process is gone (or stuck): remove what it left from its state file.
            let errors = rt.block_on(edgesim::targets::cleanup(&st));
            for e in &errors {
                errln!("warning: {e}");
            }
            if !errors.is_empty() {
                code = EXIT_INFRA;
            }
        }
        outln!("lab `{}` (run {}) is down", st.scenario, st.run_id);
    }
    Ok(code)
}

fn exec(name_or_file: &str, node: &str, command: &[String]) -> Result<u8> {
    require_root("edgesim exec")?;
    let name = scenario_name(name_or_file);
    let live = state::live_by_name(&name);
    let Some(st) = live.last() else {
        errln!("error: no lab of scenario `{name}` is up (start one with `edgesim up FILE`)");
        return Ok(EXIT_INVALID);
    };
    let Some(n) = st.nodes.iter().find(|n| n.name == node) else {
        let names: Vec<&str> = st.nodes.iter().map(|n| n.name.as_str()).collect();
        let hint = edgesim::scenario::diag::unknown_hint(node, "nodes", &names).unwrap_or_default();
        errln!("error: lab `{name}` has no node `{node}`\n  hint: {hint}");
        return Ok(EXIT_INVALID);
    };
    let Some(ni) = st.node_index(&n.name) else {
        return Ok(EXIT_INVALID);
    };
    let rt = runtime()?;
    let code = rt
        .block_on(edgesim::targets::exec(st, ni, command))
        .with_context(|| format!("running `{}` in {node}", command[0]))?;
    Ok(code.clamp(0, 255) as u8)
}

fn doctor(output: Output) -> Result<u8> {
    let rt = runtime()?;
    let r = rt.block_on(edgesim::targets::doctor());
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(EXIT_PASS);
    }
    outln!("kernel: {}\n", r.kernel);
    for c in &r.checks {
        outln!(
            "  {} {:<14} {}",
            if c.ok { "✓" } else { "✗" },
            c.name,
            c.detail
        );
    }
    for t in &r.targets {
        if t.usable {
            outln!("\ntarget {}: usable", t.target);
        } else {
            outln!(
                "\ntarget {}: NOT usable here (needs {})",
                t.target,
                t.missing.join(", ")
            );
        }
        if let Some(n) = &t.note {
            outln!("  ({n})");
        }
        for a in &t.actions {
            let s = a.support.as_str();
            outln!("  {:<30} {:<12} {}", a.action, s, a.how);
        }
    }
    Ok(if r.targets.iter().any(|t| t.usable) {
        EXIT_PASS
    } else {
        EXIT_INFRA
    })
}

/// Run ids of runs whose controlling process is alive, read afresh.
fn live_runs() -> Vec<String> {
    state::list()
        .into_iter()
        .filter(|s| s.controller_alive())
        .map(|s| s.run_id)
        .collect()
}

fn agent(state: &std::path::Path) -> Result<u8> {
    // One thread: the agent's work is a few netlink messages at a time, and a board's
    // cores belong to its workloads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(edgesim::targets::device::agent::run(state));
    // The stdin reader blocks in a thread of its own: do not wait for it.
    rt.shutdown_background();
    Ok(u8::try_from(code?).unwrap_or(1))
}

fn cleanup(all: bool) -> Result<u8> {
    require_root("edgesim cleanup")?;
    let rt = runtime()?;
    let mut removed = 0usize;
    let mut errors = Vec::new();
    let mut live_ids = Vec::new();
    for st in state::list() {
        if st.controller_alive() && !all {
            live_ids.push(st.run_id.clone());
            continue;
        }
        if st.controller_alive() {
            // SAFETY: kill(2) on the verified controller pid of a run we are told to stop.
            unsafe {
                libc::kill(st.pid as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while st.controller_alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let errs = rt.block_on(edgesim::targets::cleanup(&st));
        outln!(
            "removed run {} ({}){}",
            st.run_id,
            st.scenario,
            if errs.is_empty() { "" } else { " with errors" }
        );
        errors.extend(errs);
        removed += 1;
    }
    // Orphans that no state file describes (e.g. a crash before the state file was written).
    let (n, errs) = rt.block_on(edgesim::targets::docker::cleanup_orphans(&live_runs()));
    if n > 0 {
        outln!("removed {n} container(s) of runs that are gone");
    }
    removed += n;
    errors.extend(errs);
    for ns in edgesim::host::ns::list("edgesim-") {
        let dead = match state::run_of_namespace(&ns) {
            // Read the state files again: a run that started since we began is not an orphan
            // (runs write their state file before creating anything).
            Some(id) => !live_runs().iter().any(|l| l == id),
            // Scratch namespaces of tests and probes: `edgesim-<tag>-<pid>-<n>`.
            None => ns
                .split('-')
                .nth(2)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| state::process_start(pid).is_none()),
        };
        if dead {
            match edgesim::host::ns::delete(&ns) {
                Ok(()) => {
                    outln!("removed namespace {ns}");
                    removed += 1;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if let Ok(cg) = edgesim::host::cgroup::Cgroups::detect() {
        for id in cg.children("edgesim").unwrap_or_default() {
            if !live_runs().contains(&id) {
                match cg.remove_tree(&format!("edgesim/{id}")) {
                    Ok(()) => {
                        outln!("removed cgroup edgesim/{id}");
                        removed += 1;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/etc/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("edgesim-")
                && state::run_of_namespace(&n)
                    .is_some_and(|id| !live_runs().iter().any(|l| l == id))
            {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => errors.push(format!("removing {}: {err}", e.path().display())),
                }
            }
        }
    }
    for e in &errors {
        errln!("error: {e}");
    }
    if removed == 0 && errors.is_empty() {
        outln!("nothing to clean up");
    }
    if !live_ids.is_empty() {
        outln!(
            "{} live run(s) left alone; `edgesim cleanup --all` stops them too",
            live_ids.len()
        );
    }
    Ok(if errors.is_empty() {
        EXIT_PASS
    } else {
        EXIT_INFRA
    })
}

fn calibrate(save: bool, builtin: bool) -> Result<u8> {
    use edgesim::profile::calibrate as cal;
    let opts = cal::CalibrateOptions {
        method: if builtin {
            cal::MethodChoice::Builtin
        } else {
            cal::MethodChoice::Auto
        },
        ..Default::default()
    };
    errln!("measuring single-core CPU speed (this takes up to a minute)…");
    let c = cal::calibrate(&opts)?;
    outln!("{}", serde_json::to_string_pretty(&c)?);
    outln!(
        "\nthis host's core ≈ {:.2} × a Raspberry Pi 5 core ({:?}, score {:.0} vs reference {:.0})",
        c.speed_per_core,
        c.method,
        c.score,
        c.reference_score
    );
    if save {
        let p = cal::calibration_path();
        cal::save(&c, &p)?;
        outln!("saved to {}", p.display());
    } else {
        outln!("(not saved; pass --save to use it for later runs)");
    }
    Ok(EXIT_PASS)
}
