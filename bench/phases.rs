//! Where the time goes, step by step, with the library's own host layer (needs root).
//!
//! `bringup` replays the netns target's provisioning and its teardown for scenarios/scale-200.yaml one
//! step at a time (the same public functions, in the same order) and times each step, next
//! to the kernel floor of the same objects (bare namespaces + bridge + veth pairs, made with
//! `ip -batch` as bench/scale.sh does), so a slow step shows against what the kernel needs.
//!
//! `actions` provisions bench/scenarios/lag.yaml with `Lab::provision` (netns), then applies
//! every timeline action of the plan back to back (no schedule), timing `prepare` (work the
//! engine does 30 ms ahead) and `apply` (what the schedule pays) per verb. It also measures
//! two physical baselines on the same machine at the same time: how late a thread wakes at
//! an absolute deadline (the engine's sleep-then-spin, and a plain sleep), and the CPU time
//! each `nft` process burns (from `getrusage(RUSAGE_CHILDREN)`): a prepared, empty `nft`
//! (start-up and exit only) against one that commits the run's ruleset.
//!
//! Run: `sudo cargo bench -p edgesim --bench phases -- [bringup|actions|all] [--reps N]`
//! (bench/lag.sh and bench/README.md call it). Prints a table; no timing is asserted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use edgesim::fabric::{self, Fabric, Names};
use edgesim::faults::shaping::Shaper;
use edgesim::host::cgroup::Cgroups;
use edgesim::host::ns;
use edgesim::profile::{HostCpu, ProfileSet, limits};
use edgesim::scenario::{self, Overrides, Plan};
use edgesim::targets::netns::exec::NodeExec;
use edgesim::targets::netns::{self as netns};
use edgesim::targets::state::{self, Mode};
use edgesim::targets::{Lab, Resolved};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(rel: &str) -> Result<Plan> {
    let profiles = ProfileSet::builtin().context("built-in profiles")?;
    // The real capabilities of this kernel, as `edgesim run` checks them.
    let caps = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(edgesim::targets::capabilities_here(
            edgesim::targets::TargetKind::Netns,
        ));
    scenario::load(&root().join(rel), profiles, &caps, &Overrides::default())
        .map(|v| v.plan)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

fn summary(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        pct(v, 0.5),
        pct(v, 0.9),
        pct(v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

// ---------------------------------------------------------------------------------------
// bringup

struct Steps(BTreeMap<&'static str, Vec<f64>>, Vec<&'static str>);

impl Steps {
    fn new() -> Self {
        Steps(BTreeMap::new(), Vec::new())
    }
    fn add(&mut self, name: &'static str, d: Duration) {
        if !self.0.contains_key(name) {
            self.1.push(name);
        }
        self.0.entry(name).or_default().push(ms(d));
    }
    fn print(&mut self) {
        println!(
            "{:<46} {:>8} {:>8} {:>8}",
            "step (ms)", "median", "min", "max"
        );
        for name in self.1.clone() {
            let v = self.0.get_mut(name).expect("recorded");
            v.sort_by(f64::total_cmp);
            println!(
                "{:<46} {:>8.1} {:>8.1} {:>8.1}",
                name,
                pct(v, 0.5),
                v[0],
                v[v.len() - 1]
            );
        }
    }
}

async fn bringup_once(plan: &Plan, steps: &mut Steps) -> Result<()> {
    let run_id = state::new_run_id();
    let out = std::env::temp_dir().join(format!("edgesim-phases-{run_id}"));
    let st = netns::initial_state(plan, &run_id, Mode::Lab, out.clone());
    let total = Instant::now();

    let t = Instant::now();
    st.save().context("state file")?;
    steps.add("up: state file", t.elapsed());

    let names = Names::new(&run_id, plan);
    let t = Instant::now();
    let created = ns::create_many(&names.all());
    steps.add("up: namespaces (201)", t.elapsed());
    // From here on, whatever happens, remove what was made.
    let res: Result<()> = async {
        created?;
        let t = Instant::now();
        let fab = Fabric::build_named(plan, names.clone(), plan.uses_emulator()).await?;
        steps.add("up: fabric (bridges, veths, addrs, routes)", t.elapsed());

        let t = Instant::now();
        fabric::write_hosts(plan, &names)?;
        steps.add("up: hosts files (/etc/netns/*)", t.elapsed());

        let t = Instant::now();
        let cgroups = Cgroups::detect()?;
        let host = HostCpu::detect();
        let mut cgs = Vec::new();
        let edgesim::targets::state::TargetState::Netns(nst) = &st.target else {
            bail!("not a netns state");
        };
        for (n, ns_st) in plan.nodes.iter().zip(&nst.nodes) {
            let cg = cgroups.create(&ns_st.cgroup)?;
            cg.apply(&limits(&n.profile, &host))?;
            cgs.push(cg);
        }
        steps.add("up: cgroups (create + limits)", t.elapsed());

        let t = Instant::now();
        let mut shaper = Shaper::new(plan, &fab, plan.uses_emulator())?;
        shaper
            .apply(plan, &fab, &plan.baseline_links(), &BTreeMap::new(), None)
            .await?;
        steps.add("up: shaping (tc htb + nft)", t.elapsed());

        let t = Instant::now();
        let mut execs = Vec::new();
        for (i, cg) in cgs.iter().enumerate() {
            let hosts = fabric::hosts_dir(&names.nodes[i]).join("hosts");
            execs.push(NodeExec::new(
                &names.nodes[i],
                ns::path(&names.nodes[i]),
                Some(&hosts),
                cg.procs_paths(),
            )?);
        }
        steps.add("up: exec handles", t.elapsed());
        steps.add("up: TOTAL", total.elapsed());

        let down = Instant::now();
        let t = Instant::now();
        drop(execs);
        drop(shaper);
        drop(fab);
        steps.add("down: close handles and sockets", t.elapsed());
        let t = Instant::now();
        if let Some(rel) = &nst.cgroup {
            cgroups.remove_tree(rel)?;
        }
        steps.add("down: cgroups", t.elapsed());
        let t = Instant::now();
        for d in &nst.hosts_dirs {
            std::fs::remove_dir_all(d)?;
        }
        steps.add("down: hosts dirs (rmdir /etc/netns/*)", t.elapsed());
        let t = Instant::now();
        for n in names.all().iter().rev() {
            ns::delete(n)?;
        }
        steps.add("down: namespaces", t.elapsed());
        let t = Instant::now();
        st.remove()?;
        steps.add("down: state file", t.elapsed());
        steps.add("down: TOTAL", down.elapsed());
        Ok(())
    }
    .await;
    if res.is_err() {
        let _ = netns::cleanup_state(&st).await;
    }
    let _ = std::fs::remove_dir_all(&out);
    res
}

/// The floor: the same namespaces, a bridge and veth pairs, with iproute2 in batch mode.
fn floor_once(n: usize, steps: &mut Steps) -> Result<()> {
    let tag = format!("esbench-phases-{}", std::process::id());
    let dir = tempfile::tempdir()?;
    let mut add = format!("netns add {tag}-fab\n");
    let mut fab = String::from("link add br0 type bridge\nlink set br0 up\n");
    let mut del = String::new();
    for i in 1..=n {
        add.push_str(&format!("netns add {tag}-n{i}\n"));
        fab.push_str(&format!(
            "link add v{i} type veth peer name eth0 netns {tag}-n{i}\n"
        ));
        del.push_str(&format!("netns del {tag}-n{i}\n"));
    }
    for i in 1..=n {
        fab.push_str(&format!("link set v{i} master br0 up\n"));
    }
    del.push_str(&format!("netns del {tag}-fab\n"));
    let write = |name: &str, s: &str| -> Result<PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, s)?;
        Ok(p)
    };
    let (a, f, d) = (
        write("add", &add)?,
        write("fab", &fab)?,
        write("del", &del)?,
    );
    let ip = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let s = std::process::Command::new("ip").args(args).status()?;
        if !s.success() {
            bail!("ip {args:?}: {s}");
        }
        Ok(())
    };
    let t = Instant::now();
    let r = ip(&["-batch".as_ref(), a.as_os_str()]);
    steps.add("floor up: ip netns add (201)", t.elapsed());
    let r = r.and_then(|()| {
        let t = Instant::now();
        let r = ip(&[
            "-n".as_ref(),
            format!("{tag}-fab").as_ref(),
            "-batch".as_ref(),
            f.as_os_str(),
        ]);
        steps.add("floor up: bridge + veths", t.elapsed());
        r
    });
    let t = Instant::now();
    let _ = ip(&["-force".as_ref(), "-batch".as_ref(), d.as_os_str()]);
    steps.add("floor down: ip netns del (201)", t.elapsed());
    r
}

fn bringup(reps: usize) -> Result<()> {
    let plan = load("scenarios/scale-200.yaml")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut steps = Steps::new();
    for _ in 0..reps {
        floor_once(plan.nodes.len(), &mut steps)?;
        rt.block_on(bringup_once(&plan, &mut steps))?;
    }
    println!("\n== bring-up and teardown of scale-200 by step, {reps} repetitions ==");
    steps.print();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// actions

fn children_cpu() -> Duration {
    // SAFETY: `rusage` is plain integers, so all-zero is a valid value; getrusage only writes
    // into the struct we pass. RUSAGE_CHILDREN covers the children waited for so far.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Waits until every child of this process has been reaped (nft is reaped on background
/// threads after its commit is announced).
fn nft_children_settled() {
    let me = std::process::id();
    for _ in 0..500 {
        let kids =
            std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
        let any_nft = kids.split_whitespace().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "nft")
        });
        if !any_nft {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lateness of waking at absolute deadlines: the engine's sleep-then-spin, and a plain sleep.
fn timer_baseline(samples: usize) -> (Vec<f64>, Vec<f64>) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) on this thread, as the engine's timeline thread does.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let mut spin = Vec::new();
    let mut plain = Vec::new();
    for i in 0..samples {
        let deadline = Instant::now() + Duration::from_millis(20);
        if i % 2 == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(left.saturating_sub(Duration::from_micros(200)));
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            spin.push(ms(Instant::now() - deadline));
        } else {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            plain.push(ms(Instant::now() - deadline));
        }
    }
    (spin, plain)
}

fn actions(rounds: usize) -> Result<()> {
    let plan = Arc::new(load("bench/scenarios/lag.yaml")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The supervisor spawns tokio tasks from plain calls (deploy).
    let _guard = rt.enter();
    let run_id = state::new_run_id();
    let out = tempfile::tempdir()?;
    let programs = netns::resolve(&plan).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut lab = match rt.block_on(Lab::provision(
        plan.clone(),
        Resolved::Netns(programs),
        &run_id,
        Mode::Run,
        out.path().to_path_buf(),
        &Default::default(),
    )) {
        Ok(l) => l,
        Err(pe) => {
            let errs = rt.block_on(pe.partial.teardown());
            bail!("provisioning: {} (teardown: {errs:?})", pe.error);
        }
    };
    let res = (|| -> Result<_> {
        rt.block_on(lab.deploy(out.path()))
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut prep: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut apply: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        nft_children_settled();
        for _ in 0..rounds {
            for a in &plan.actions {
                let verb = a.kind.verb();
                let t = Instant::now();
                let p = lab.prepare(&a.kind);
                prep.entry(verb).or_default().push(ms(t.elapsed()));
                // As in the engine: prepared ~30 ms ahead, then applied at the instant.
                std::thread::sleep(Duration::from_millis(30));
                let t = Instant::now();
                rt.block_on(lab.apply(&a.kind, p))?;
                apply.entry(verb).or_default().push(ms(t.elapsed()));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        nft_children_settled();

        // nft CPU per process: prepared and dropped (start-up + exit) against committed.
        let fw = edgesim::host::nft::Firewall::new(
            &lab.fabric().expect("a netns lab").names.fabric,
            "edgesim",
        )?;
        let rs = Shaper::ruleset(
            &plan,
            &plan.baseline_links(),
            &BTreeMap::new(),
            plan.uses_emulator(),
        );
        let n = 40;
        let c0 = children_cpu();
        for _ in 0..n {
            drop(fw.prepare()?);
        }
        nft_children_settled();
        let c1 = children_cpu();
        let mut commit = Vec::new();
        for _ in 0..n {
            let p = fw.prepare()?;
            std::thread::sleep(Duration::from_millis(30));
            let t = Instant::now();
            p.commit(&rs)?;
            commit.push(ms(t.elapsed()));
            std::thread::sleep(Duration::from_millis(20));
        }
        nft_children_settled();
        let c2 = children_cpu();
        Ok((
            prep,
            apply,
            commit,
            ms(c1 - c0) / n as f64,
            ms(c2 - c1) / n as f64,
        ))
    })();
    let errors = rt.block_on(lab.teardown(Duration::from_millis(500)));
    let (mut prep, mut apply, mut commit, cpu_empty, cpu_commit) = res?;
    if !errors.is_empty() {
        bail!("teardown: {errors:?}");
    }
    let (mut spin, mut plain) = timer_baseline(400);

    println!(
        "\n== timeline actions of bench/scenarios/lag.yaml applied back to back, {rounds} round(s) =="
    );
    println!(
        "{:<26} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "ms", "n", "p50", "p90", "p99", "max"
    );
    for (verb, v) in apply.iter_mut() {
        println!(
            "{:<26} {:>5} {}",
            format!("apply {verb}"),
            v.len(),
            summary(v)
        );
    }
    for (verb, v) in prep.iter_mut() {
        if verb.starts_with("partition") || *verb == "heal" || *verb == "impair" {
            println!(
                "{:<26} {:>5} {}",
                format!("prepare {verb} (ahead)"),
                v.len(),
                summary(v)
            );
        }
    }
    println!(
        "{:<26} {:>5} {}",
        "nft commit, baseline rs",
        commit.len(),
        summary(&mut commit)
    );
    println!("\n== physical baselines, same machine, same run ==");
    println!(
        "{:<26} {:>5} {}",
        "wake-up late, sleep+spin",
        spin.len(),
        summary(&mut spin)
    );
    println!(
        "{:<26} {:>5} {}",
        "wake-up late, plain sleep",
        plain.len(),
        summary(&mut plain)
    );
    println!(
        "nft CPU time per process (user+sys): {cpu_empty:.2} ms started and exited empty, {cpu_commit:.2} ms with a commit"
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut what: Option<String> = None;
    let mut reps = 5usize;
    let mut foreign = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => reps = it.next().and_then(|v| v.parse().ok()).context("--reps N")?,
            "bringup" | "actions" | "all" => what = Some(a.clone()),
            // `cargo bench -p edgesim -- FILTER` hands criterion's filters and flags to every
            // bench target: not ours to run then.
            other => foreign.push(other.to_string()),
        }
    }
    let what = match what {
        Some(w) => w,
        None if foreign.is_empty() => "all".into(),
        None => {
            println!(
                "phases: not run for arguments {foreign:?} (it takes bringup|actions|all, --reps N)"
            );
            return Ok(());
        }
    };
    // Skips with a reason, or fails where EDGESIM_REQUIRE lists `netns` (CONVENTIONS rule 7).
    if !edgesim::testing::netns() {
        return Ok(());
    }
    if what == "bringup" || what == "all" {
        bringup(reps)?;
    }
    if what == "actions" || what == "all" {
        actions(reps.min(3))?;
    }
    Ok(())
}
