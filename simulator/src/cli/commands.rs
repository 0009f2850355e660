//! One function per subcommand.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use edgesim::profile::{HostCpu, ProfileSet, limits};
use edgesim::scenario::{self, Capabilities, LoadError, Overrides, Plan, Validated};

use super::{Cli, Command, EXIT_INFRA, EXIT_INVALID, EXIT_PASS, Output, TargetArg};

/// `--inventory`, `--kubeconfig` and `--registry`, for the targets' validation.
static TARGET_OPTIONS: std::sync::OnceLock<edgesim::targets::ResolveOptions> =
    std::sync::OnceLock::new();

/// The target options (`--inventory`, `--kubeconfig`, `--registry`) this process was given.
pub fn target_options() -> edgesim::targets::ResolveOptions {
    TARGET_OPTIONS.get().cloned().unwrap_or_default()
}

pub fn dispatch(cli: Cli) -> u8 {
    let _ = TARGET_OPTIONS.set(edgesim::targets::ResolveOptions {
        inventory: cli.inventory.clone(),
        kubeconfig: cli.kubeconfig.clone(),
        registry: cli.registry.clone(),
    });
    let profile_dirs: Vec<PathBuf> = cli
        .profile_dirs
        .iter()
        .cloned()
        .chain(ProfileSet::env_dirs())
        .collect();
    let res = match cli.command {
        Command::Validate { files, target } => validate(&files, target, &profile_dirs),
        Command::Plan { file, seed, output } => plan(&file, seed, output, &profile_dirs),
        Command::Profiles { output } => profiles(output, &profile_dirs),
        Command::Schema => schema(),
        Command::KindConfig {
            file,
            host_cpus,
            host_memory,
        } => kind_config(&file, host_cpus, host_memory.map(|b| b.0), &profile_dirs),
        Command::KindDelivery { file, out } => kind_delivery(&file, &out, &profile_dirs),
        other => super::run::dispatch(other, &profile_dirs),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            errln!("error: {e:#}");
            EXIT_INFRA
        }
    }
}

pub fn load_profiles(dirs: &[PathBuf]) -> Result<ProfileSet> {
    ProfileSet::load(dirs).context("loading hardware profiles")
}

/// What the target can do here, for validation: the table `doctor` prints. Probing the
/// kernel needs root; without it we look for the netem module on disk.
pub fn capabilities(target: TargetArg) -> Result<Capabilities> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(edgesim::targets::capabilities_here(target.kind())))
}

/// The target's own validation of a plan (workloads resolved to binaries or images), with
/// its problems printed as diagnostics of the file. `Ok(None)` when the target refuses it.
pub fn resolve_plan(target: TargetArg, plan: &Plan) -> Result<Option<edgesim::targets::Resolved>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let opts = target_options();
    match rt.block_on(edgesim::targets::resolve(target.kind(), plan, &opts)) {
        Ok(r) => Ok(Some(r)),
        Err(items) => {
            let n = items.len();
            let text = std::fs::read_to_string(&plan.file).unwrap_or_default();
            err!(
                "{}",
                scenario::diag::Diagnostics::new(&plan.file, &text, items)
            );
            errln!(
                "\n{}: {n} problem{} for the `{}` target; nothing was created.",
                plan.file.display(),
                if n == 1 { "" } else { "s" },
                target.kind()
            );
            Ok(None)
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Loads and validates one scenario, printing diagnostics to stderr. `Ok(None)` when invalid.
pub fn load_plan(
    file: &Path,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Option<Plan>> {
    Ok(load_checked(file, profiles, caps, ov)?.map(|v| v.plan))
}

/// [`load_plan`], keeping the warnings (already printed) with the plan.
fn load_checked(
    file: &Path,
    profiles: &ProfileSet,
    caps: &Capabilities,
    ov: &Overrides,
) -> Result<Option<Validated>> {
    match scenario::load(file, profiles, caps, ov) {
        Ok(v) => {
            if !v.warnings.is_empty() {
                errln!("{}", v.warnings);
            }
            Ok(Some(v))
        }
        Err(LoadError::Invalid(d)) => {
            let warnings = match d.warnings() {
                0 => String::new(),
                w => format!(" (and {})", plural(w, "warning")),
            };
            err!("{d}");
            errln!(
                "\n{}: {} found{warnings}; nothing was created.",
                file.display(),
                plural(d.errors(), "problem"),
            );
            Ok(None)
        }
        Err(e @ LoadError::Read { .. }) => {
            errln!("error: {e}");
            Ok(None)
        }
    }
}

fn validate(files: &[PathBuf], target: TargetArg, dirs: &[PathBuf]) -> Result<u8> {
    let profiles = load_profiles(dirs)?;
    let caps = capabilities(target)?;
    let mut code = EXIT_PASS;
    for f in files {
        match load_checked(
            f,
            &profiles,
            &caps,
            &Overrides {
                seed: Some(0),
                impairment: None,
                live: false,
            },
        )? {
            Some(v) if resolve_plan(target, &v.plan)?.is_none() => code = EXIT_INVALID,
            Some(Validated { plan: p, warnings }) => outln!(
                "{}: ok ({} sites, {} nodes, {} workloads, {} timeline actions, {} probes, {} assertions{})",
                f.display(),
                p.sites.len(),
                p.nodes.len(),
                p.workloads.len(),
                p.actions.len(),
                p.probes.len(),
                p.assertions.len(),
                match warnings.warnings() {
                    0 => String::new(),
                    w => format!("; {}", plural(w, "warning")),
                }
            ),
            None => code = EXIT_INVALID,
        }
    }
    Ok(code)
}

fn plan(file: &Path, seed: Option<u64>, output: Output, dirs: &[PathBuf]) -> Result<u8> {
    let profiles = load_profiles(dirs)?;
    // What would happen on this machine (which mechanism carries impairments depends on it).
    let caps = capabilities(TargetArg::Netns)?;
    let Some(p) = load_plan(
        file,
        &profiles,
        &caps,
        &Overrides {
            seed,
            impairment: None,
            live: false,
        },
    )?
    else {
        return Ok(EXIT_INVALID);
    };
    let host = p.scaled_host(&HostCpu::detect());
    let mut out = std::io::stdout().lock();
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut out, &p)?;
        writeln!(out)?;
        return Ok(EXIT_PASS);
    }
    writeln!(out, "scenario {} ({})", p.name, p.file.display())?;
    if let Some(d) = &p.description {
        writeln!(out, "  {d}")?;
    }
    writeln!(
        out,
        "seed {} ({:?}), duration {}, address pool {}, link impairments by {}",
        p.seed,
        p.seed_source,
        edgesim::units::Dur(p.duration),
        p.pool,
        match p.mechanism {
            edgesim::scenario::plan::Mechanism::Kernel => "the kernel (tc, nftables)",
            edgesim::scenario::plan::Mechanism::Userspace => "the userspace emulator (linkem)",
        }
    )?;
    writeln!(out, "\nsites:")?;
    for s in &p.sites {
        let n = p
            .nodes
            .iter()
            .filter(|n| p.sites[n.site].name == s.name)
            .count();
        writeln!(
            out,
            "  {:<16} {:<18} gateway {:<15} {n} nodes",
            s.name, s.subnet, s.gateway
        )?;
    }
    if !p.links.is_empty() {
        writeln!(out, "\nlinks:")?;
        for l in &p.links {
            writeln!(
                out,
                "  {:<20} {} -> {}: {}   {} -> {}: {}",
                l.name,
                p.sites[l.a].name,
                p.sites[l.b].name,
                describe_params(&l.up),
                p.sites[l.b].name,
                p.sites[l.a].name,
                describe_params(&l.down)
            )?;
        }
    }
    writeln!(out, "\nnodes:")?;
    let shown = if p.nodes.len() > 24 {
        20
    } else {
        p.nodes.len()
    };
    let allowed = edgesim::host::cgroup::allowed_cpus();
    for (i, n) in p.nodes[..shown].iter().enumerate() {
        let l = limits(&n.profile, &host).pinned(i, &allowed);
        writeln!(
            out,
            "  {:<16} {:<10} {:<15} {:<22} cpu {:.2} host cores{}, memory {}",
            n.name,
            p.sites[n.site].name,
            n.addr,
            n.profile_name,
            l.effective_cores,
            l.cpus
                .as_deref()
                .map_or(String::new(), |c| format!(" on CPUs {c}")),
            l.memory_bytes
                .map_or("unlimited".into(), |b| edgesim::units::Bytes(b).to_string())
        )?;
    }
    if shown < p.nodes.len() {
        writeln!(out, "  … and {} more", p.nodes.len() - shown)?;
    }
    for w in p.cpu_warnings(allowed.len()) {
        writeln!(out, "  note: {w}")?;
    }
    if !p.workloads.is_empty() {
        writeln!(out, "\nworkloads:")?;
        for w in &p.workloads {
            let on: Vec<&str> = w.nodes.iter().map(|i| p.nodes[*i].name.as_str()).collect();
            writeln!(
                out,
                "  {:<16} on {}: {}",
                w.name,
                on.join(","),
                match &w.run {
                    edgesim::scenario::plan::Run::Command { argv } =>
                        shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default(),
                    edgesim::scenario::plan::Run::App { app, args } => format!(
                        "app {app} {}",
                        shlex::try_join(args.iter().map(String::as_str)).unwrap_or_default()
                    )
                    .trim_end()
                    .to_string(),
                    edgesim::scenario::plan::Run::Image { image, args } => format!(
                        "image {image} {}",
                        shlex::try_join(args.iter().map(String::as_str)).unwrap_or_default()
                    )
                    .trim_end()
                    .to_string(),
                }
            )?;
        }
    }
    if !p.actions.is_empty() {
        writeln!(out, "\ntimeline:")?;
        for a in &p.actions {
            writeln!(out, "  {:>9}  {}", edgesim::units::Offset(a.at), a.summary)?;
        }
    }
    if !p.probes.is_empty() {
        writeln!(out, "\nprobes:")?;
        for pr in &p.probes {
            let what = match &pr.kind {
                edgesim::scenario::plan::ProbeKind::Ping { target, .. } => format!("ping {target}"),
                edgesim::scenario::plan::ProbeKind::Tcp { addr, target } => {
                    format!("tcp {target}:{}", addr.port())
                }
                edgesim::scenario::plan::ProbeKind::Http { url, .. } => format!("http {url}"),
            };
            writeln!(
                out,
                "  {:<16} from {:<12} {what} every {}",
                pr.name,
                p.nodes[pr.from].name,
                edgesim::units::Dur(pr.every)
            )?;
        }
    }
    if !p.assertions.is_empty() {
        writeln!(out, "\nassertions:")?;
        for a in &p.assertions {
            let subj = match &a.subject {
                edgesim::scenario::plan::Subject::Probe { probe, window, .. } => {
                    format!("probe {} during {window}", p.probes[*probe].name)
                }
                edgesim::scenario::plan::Subject::Metric {
                    workload,
                    name,
                    json,
                    ..
                } => format!(
                    "metric {} of {}",
                    name.clone().or(json.clone()).unwrap_or_default(),
                    p.workloads[*workload].name
                ),
            };
            writeln!(out, "  {:<28} {subj}: {}", a.name, a.expect)?;
        }
    }
    Ok(EXIT_PASS)
}

pub fn describe_params(l: &edgesim::scenario::plan::LinkParams) -> String {
    let v = serde_json::to_value(l).unwrap_or_default();
    let parts: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| match x.as_f64() {
                    Some(f) if k != "reorder_gap" && k != "rate" && k != "limit" => {
                        format!(
                            "{k} {}",
                            edgesim::units::Percent::from_fraction(f)
                                .map(|p| p.to_string())
                                .unwrap_or_else(|_| f.to_string())
                        )
                    }
                    _ if k == "rate" => {
                        format!("rate {}", edgesim::units::Rate(x.as_u64().unwrap_or(0)))
                    }
                    _ => format!(
                        "{k} {}",
                        x.as_str().map_or_else(|| x.to_string(), str::to_string)
                    ),
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "clear".into()
    } else {
        parts.join(", ")
    }
}

fn profiles(output: Output, dirs: &[PathBuf]) -> Result<u8> {
    let set = load_profiles(dirs)?;
    let host = HostCpu::detect();
    if output == Output::Json {
        let v: Vec<serde_json::Value> = set
            .iter()
            .map(|(name, e)| {
                serde_json::json!({
                    "name": name,
                    "description": e.description,
                    "source": e.source.to_string(),
                    "spec": e.spec,
                    "limitsOnThisHost": limits(&e.spec, &host),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(EXIT_PASS);
    }
    let color = std::io::stdout().is_terminal();
    outln!(
        "{:<24} {:<6} {:>5} {:>7} {:>9} {:>10}  DESCRIPTION",
        "PROFILE",
        "ARCH",
        "CORES",
        "SPEED",
        "MEMORY",
        "HOST CPUS"
    );
    for (name, e) in set.iter() {
        let l = limits(&e.spec, &host);
        let row = format!(
            "{:<24} {:<6} {:>5} {:>7.2} {:>9} {:>10.2}  {}",
            name,
            format!("{:?}", e.spec.arch).to_lowercase(),
            e.spec.cpu.cores,
            e.spec.cpu.relative_speed,
            edgesim::units::Bytes(e.spec.memory.total.0).to_string(),
            l.effective_cores,
            e.description
        );
        outln!("{row}");
    }
    let note = format!(
        "\nSPEED is per-core speed relative to the reference core; HOST CPUS is the CPU quota a node gets on this host\n\
         (host per-core speed {:.2}, {}, {} online CPUs).\n\
         A node runs on at most CORES host CPUs (pinned with cpuset where the host has more), within that quota.\n\
         The quota is aggregate throughput, not speed: one thread on a node whose quota is below one host CPU\n\
         runs at host speed until the quota is spent, and so gets the node's whole quota; compare boards with\n\
         work that loads every core. Not modelled: single-thread latency on a faster host, memory bandwidth,\n\
         caches, the GPU.",
        host.speed_per_core, host.source, host.online_cpus
    );
    if color {
        outln!("\x1b[2m{note}\x1b[0m");
    } else {
        outln!("{note}");
    }
    Ok(EXIT_PASS)
}

fn schema() -> Result<u8> {
    let s = schemars::schema_for!(edgesim::scenario::model::Scenario);
    outln!("{}", serde_json::to_string_pretty(&s)?);
    Ok(EXIT_PASS)
}

/// `edgesim kind-config`: the scenario's Kind configuration on stdout. Validated as for a
/// machine that can do everything (the configuration does not depend on this machine's
/// kernel); the host's figures default to this machine's.
fn kind_config(
    file: &Path,
    cpus: Option<u32>,
    memory: Option<u64>,
    dirs: &[PathBuf],
) -> Result<u8> {
    use edgesim::targets::kind::config;
    let profiles = load_profiles(dirs)?;
    let caps = Capabilities::all("kind");
    let Some(p) = load_plan(file, &profiles, &caps, &Overrides::default())? else {
        return Ok(EXIT_INVALID);
    };
    let host = match (cpus, memory) {
        (Some(cpus), Some(memory)) => config::Host { cpus, memory },
        _ => {
            let here = config::Host::detect().context(
                "reading this machine's CPUs and memory (give --host-cpus and --host-memory)",
            )?;
            config::Host {
                cpus: cpus.unwrap_or(here.cpus),
                memory: memory.unwrap_or(here.memory),
            }
        }
    };
    let generated = match config::generate(&p, &host) {
        Ok(g) => g,
        Err(e) => {
            errln!("error: {}: {e}", file.display());
            return Ok(EXIT_INVALID);
        }
    };
    let command = format!(
        "edgesim kind-config {} --host-cpus {} --host-memory {}",
        file.display(),
        host.cpus,
        edgesim::units::Bytes(host.memory)
    );
    let text = generated.to_yaml(&file.display().to_string(), &command)?;
    outln!("{}", text.trim_end());
    Ok(EXIT_PASS)
}

/// `edgesim kind-delivery`: what the kind target would deliver for a scenario, written to
/// `out` (see the command's help).
fn kind_delivery(file: &Path, out: &Path, dirs: &[PathBuf]) -> Result<u8> {
    use edgesim::targets::kind::{manifests, nodes::KindState};
    use edgesim::targets::state::{Mode, RunState, TargetState};
    let profiles = load_profiles(dirs)?;
    let caps = Capabilities::all("kind");
    let Some(p) = load_plan(file, &profiles, &caps, &Overrides::default())? else {
        return Ok(EXIT_INVALID);
    };
    let run_id = "preview";
    let state = RunState::new(
        &p,
        run_id,
        Mode::Run,
        out.to_path_buf(),
        TargetState::Kind(KindState {
            cluster: edgesim::targets::kind::config::cluster_name(&p),
            network: edgesim::targets::kind::nodes::network(),
            table: format!("edgesim-{run_id}"),
            containers: Vec::new(),
            created: true,
            kubeconfig: None,
            registry: None,
        }),
    );
    let image = |wi: usize, _ni: usize| manifests::PodImage {
        image: match &p.workloads[wi].run {
            edgesim::scenario::plan::Run::App { app, .. } => manifests::app_image(app),
            edgesim::scenario::plan::Run::Image { image, .. } => image.clone(),
            edgesim::scenario::plan::Run::Command { argv } => {
                argv.first().cloned().unwrap_or_default()
            }
        },
        pull_policy: "Never",
    };
    let delivery = manifests::render(&p, &state, image, std::time::Duration::from_secs(5));
    delivery
        .write(&out.join("artifact"))
        .with_context(|| format!("writing the artifact under {}", out.display()))?;
    let timeout = manifests::delivery_timeout(&p, std::time::Duration::ZERO);
    let flux = manifests::flux_objects(&p, run_id, "edgesim-preview-registry:5000", timeout);
    std::fs::write(out.join("flux.yaml"), flux)
        .with_context(|| format!("writing {}", out.join("flux.yaml").display()))?;
    Ok(EXIT_PASS)
}
