//! Command-line front end: argument parsing (clap), rendering of diagnostics, progress and
//! summaries, exit codes. The work itself lives in the library.
//!
//! Exit codes: 0 all assertions held, 1 an assertion failed, 2 invalid input, 3 an
//! infrastructure error, 130 interrupted.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// Output of the CLI never panics: `println!` panics when stdout or stderr is a closed pipe
// (`edgesim run … | head`), which would abort a run before its teardown. A line that
// cannot be written is dropped; the run, its reports and its teardown go on.
macro_rules! outln {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stdout(), $($t)*); }};
}
macro_rules! out {
    ($($t:tt)*) => {{ use std::io::Write as _; let mut o = std::io::stdout(); let _ = write!(o, $($t)*); let _ = o.flush(); }};
}
macro_rules! err {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = write!(std::io::stderr(), $($t)*); }};
}
macro_rules! errln {
    ($($t:tt)*) => {{ use std::io::Write as _; let _ = writeln!(std::io::stderr(), $($t)*); }};
}

mod commands;
mod run;

pub const EXIT_PASS: u8 = 0;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_INFRA: u8 = 3;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "edgesim",
    version,
    about = "Network-partition and hardware-constraint simulator for edge computing",
    long_about = "edgesim runs a YAML scenario — nodes shaped like real boards, sites joined by impaired \
links, a timeline of faults, workloads and assertions — and tells you whether your edge \
workloads behave. Exit codes: 0 pass, 1 assertion failed, 2 invalid input, 3 infrastructure error."
)]
pub struct Cli {
    /// Log filter (tracing syntax), e.g. `edgesim=debug`. Also read from EDGESIM_LOG.
    #[arg(long, global = true, env = "EDGESIM_LOG", default_value = "warn")]
    pub log: String,
    /// Extra directories of hardware profiles (also EDGESIM_PROFILES, `:`-separated).
    #[arg(long = "profiles", global = true, value_name = "DIR")]
    pub profile_dirs: Vec<PathBuf>,
    /// The boards of the `device` target: an Ansible YAML inventory (each host with
    /// `edgesim_profile`).
    #[arg(long, global = true, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// The `kind` target on a cluster of your own (K3s on the boards, a cloud cluster)
    /// instead of a Kind cluster it makes: its kubeconfig. Needs `--registry`.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With `--kubeconfig`: the registry this machine pushes the run's artifact and images
    /// to and the cluster's nodes pull from (`host[:port][/path]`; `http://…` for plain HTTP;
    /// `PUSH=PULL` where the two reach it under different names).
    #[arg(long, global = true, value_name = "REF")]
    pub registry: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable text, with progress on a terminal.
    #[default]
    Text,
    /// JSON: one object per line (events while running, the result at the end).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum TargetArg {
    /// Network namespaces and cgroups on this host (needs root).
    #[default]
    Netns,
    /// One container per node through the Docker Engine (needs root and a Docker daemon).
    Docker,
    /// Physical boards over SSH, from `--inventory` (each runs edgesim's agent).
    Device,
    /// A Kind cluster made for the run, workloads delivered by Flux (needs root, a Docker
    /// daemon, `kind` and `flux`).
    Kind,
}

impl TargetArg {
    pub fn kind(self) -> edgesim::targets::TargetKind {
        match self {
            TargetArg::Netns => edgesim::targets::TargetKind::Netns,
            TargetArg::Docker => edgesim::targets::TargetKind::Docker,
            TargetArg::Device => edgesim::targets::TargetKind::Device,
            TargetArg::Kind => edgesim::targets::TargetKind::Kind,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario files, run one after another.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub target: TargetArg,
    /// Seed for every random choice (overrides the scenario's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON report (journal, realised schedule, samples, verdicts) here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML file with one testcase per assertion.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the HTML report (timeline of faults, probes and verdicts) here; it is always
    /// written as `report.html` in the run folder.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Serve Prometheus metrics of the run at this address while it runs, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Folder for workload logs and reports (default: ./edgesim-runs/<scenario>-<run>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// What carries link impairments (overrides the scenario's `impairment`).
    #[arg(long, value_enum)]
    pub impairment: Option<edgesim::scenario::model::ImpairmentMode>,
    /// Userspace emulator: write a pcap per site and direction into the output folder.
    #[arg(long)]
    pub capture: bool,
    /// Userspace emulator: write every per-packet decision (JSON lines) into the output folder.
    #[arg(long)]
    pub decision_log: bool,
    /// Userspace emulator: keep polling this long after each packet (e.g. `20ms`) instead of
    /// sleeping, for microsecond-accurate timing at the cost of a CPU per busy site.
    #[arg(long, value_name = "DURATION")]
    pub busy_poll: Option<edgesim::units::Dur>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenarios end to end: build, play the timeline, probe, judge, report, tear down.
    Run(RunArgs),
    /// Check scenario files without creating anything (exit 2 on invalid input).
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        target: TargetArg,
    },
    /// Show what a scenario would create and when, without changing anything.
    Plan {
        file: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Build a scenario's lab and start its workloads, then return; it stays up until `down`.
    Up {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        target: TargetArg,
        #[arg(long, value_enum)]
        impairment: Option<edgesim::scenario::model::ImpairmentMode>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Tear down a lab started with `up`, by scenario name or file.
    Down {
        /// Scenario name or scenario file.
        name: String,
    },
    /// Run a command inside a node of a lab that is up (peer names resolve as for workloads).
    Exec {
        /// Scenario name (or file) of the lab.
        name: String,
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Apply a timeline action to a lab that is up, now; `--for` reverts it, `--list` shows
    /// what is in effect. Journalled into the lab's report; `down` reverts everything.
    #[command(
        after_help = "The action and its body are written as in a scenario's timeline \
(the body in YAML, as after the action's key):\n\n  \
edgesim fault iot-partition partition '{between: [factory, cloud]}' --for 20s\n  \
edgesim fault iot-partition impair '{link: factory-uplink, delay: 300ms, loss: 5%}'\n  \
edgesim fault iot-partition heal p1\n  \
edgesim fault iot-partition node-down '{nodes: [gw-1]}' --for 10s\n  \
edgesim fault iot-partition --list"
    )]
    Fault {
        /// Scenario name (or file) of the lab.
        name: String,
        /// The action, as a timeline key: partition, heal, impair, flap, trace, node-down,
        /// node-up, kill, restart, cpu, memory.
        #[arg(required_unless_present = "list")]
        action: Option<String>,
        /// The action's body as in the timeline (YAML), e.g. `{between: [factory, cloud]}`.
        body: Option<String>,
        /// Revert it after this long (e.g. `20s`), as a timeline entry's `for`.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// List the faults in effect (and when those with a `for` end).
        #[arg(long, conflicts_with_all = ["action", "for_"])]
        list: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Report what this machine can do: kernel features, cgroups, tools, per target.
    Doctor {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove what runs left behind (after SIGKILL or a crash). `--all` also stops live labs.
    Cleanup {
        #[arg(long)]
        all: bool,
    },
    /// List the hardware profiles and what each gets on this host.
    Profiles {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Print the JSON Schema of scenario files (for editors).
    Schema,
    /// Measure this host's per-core CPU speed, which scales profile CPU quotas.
    Calibrate {
        /// Save the result for later runs.
        #[arg(long)]
        save: bool,
        /// Only use the built-in benchmark, even if 7-Zip is installed.
        #[arg(long)]
        builtin: bool,
    },
    /// Run on a board by the device target (over SSH): applies the board's faults under a
    /// lease, speaking JSON lines on stdin/stdout. Reverts everything when the controller
    /// goes silent for a lease, when the session ends, and at start-up what a dead agent left.
    Agent {
        /// Where the agent records what is in force [default: one file per network namespace
        /// under /run/edgesim].
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
    },
    /// (internal) Run on a board by the device target: this process enters the board's linkem
    /// cell and the run's cgroup, drops the capabilities it was given for that, and runs ARGV.
    #[command(hide = true)]
    AgentEnter {
        /// The cell's network namespace (where the agent pinned it).
        #[arg(long, value_name = "PATH")]
        netns: Option<PathBuf>,
        /// The cgroup to join, relative to the hierarchies' roots (`edgesim/<run>/<node>`).
        #[arg(long, value_name = "REL")]
        cgroup: Option<String>,
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "ARGV"
        )]
        argv: Vec<String>,
    },
    /// (internal) The keeper of a node's systemd scope on a board: sleeps until the agent
    /// stops the scope.
    #[command(hide = true)]
    AgentHold,
    /// Print the Kind cluster configuration of a scenario (what `--target kind` creates): a
    /// control plane and one worker per node, each advertising its profile's CPU and memory.
    #[command(hide = true)]
    KindConfig {
        file: PathBuf,
        /// The host's CPUs, as kubelet counts them [default: this machine's online CPUs].
        #[arg(long, value_name = "N")]
        host_cpus: Option<u32>,
        /// The host's memory (`MemTotal`), e.g. `68719476736` or `64Gi` [default: this
        /// machine's].
        #[arg(long, value_name = "BYTES")]
        host_memory: Option<edgesim::units::Bytes>,
    },
    /// Write what `--target kind` delivers through Flux for a scenario into DIR: the
    /// artifact (`artifact/`: a namespace and one pod per instance, with its
    /// `kustomization.yaml`) and the run's Flux objects (`flux.yaml`), for run id `preview`
    /// and the scenario's own addresses (a run uses its cluster's).
    #[command(hide = true)]
    KindDelivery {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// (internal) The process behind `up`.
    #[command(hide = true)]
    LabDaemon {
        file: PathBuf,
        #[arg(long)]
        run_id: String,
        #[arg(long, value_enum, default_value_t)]
        target: TargetArg,
        #[arg(long, value_enum)]
        impairment: Option<edgesim::scenario::model::ImpairmentMode>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // A log line that cannot be written (stderr piped into `head`, then closed) is lost;
        // reporting that on the same closed stderr would panic in `eprintln!` and abort the
        // run before its teardown.
        .log_internal_errors(false)
        .init();
    // A lab of thousands of nodes outgrows the customary soft limit of 1024 descriptors.
    if let Err(e) = edgesim::host::rlimit::raise_nofile() {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
    ExitCode::from(commands::dispatch(cli))
}
