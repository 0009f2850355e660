//! The run report: everything a run did and saw, as data.
//!
//! Design: the engine fills one [`Report`] as the run goes (phases, the journal of applied
//! actions, workload events, probe samples, verdicts, teardown) and the writers render it:
//! [`write_json`] (the complete record), [`write_html`] (one self-contained page with an SVG
//! timeline of faults, probes, workload events and assertion windows, drawn from the same
//! record), [`write_junit`] (one testsuite per scenario, one testcase per assertion, for CI)
//! and [`summary`] (what a person reads on stdout). Nothing is summarised away in the JSON: every
//! action, probe sample and verdict is kept with its timestamp, as an offset in seconds from
//! the start of the timeline (`t = 0` is when the first action could be applied), so a run
//! can be replayed or plotted. Wall-clock time appears once, in `started_at` (RFC 3339, UTC).
//!
//! Time is written with `chrono`: it is already in the build through `quick-junit` (whose
//! timestamps are chrono types), so a second date-time crate would add weight for nothing.

mod account;
mod html;
mod junit;
mod summary;

pub use html::{esc, html, timeline_svg, write_html};
pub use junit::{junit, write_junit};
pub use summary::summary;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::assertion::{Verdict, percentile};
use crate::probe::{Sample, ser_opt_secs, ser_secs};
use crate::scenario::plan::{Action, ActionKind, LinkParams, Plan, Probe, ProbeKind, SeedSource};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// At least one assertion failed.
    Failed,
    /// The run could not be carried out (infrastructure error).
    Error,
}

impl Outcome {
    /// The process exit code for this outcome (0, 1, 3; 2 is invalid input, which never gets
    /// as far as a report).
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Passed => 0,
            Outcome::Failed => 1,
            Outcome::Error => 3,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Failed => "FAILED",
            Outcome::Error => "ERROR",
        }
    }
}

/// One step of the run (`provision`, `deploy`, `timeline`, `assert`, `teardown`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub name: String,
    /// Wall-clock duration.
    pub seconds: f64,
    pub ok: bool,
}

/// One applied (or attempted) action of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalEntry {
    /// The action's position in the plan's realised order.
    pub seq: usize,
    /// Offset it was scheduled for.
    #[serde(serialize_with = "ser_secs")]
    pub scheduled: Duration,
    /// Offset at which it had taken effect (applying finished); `None` when it never ran
    /// (the run stopped first).
    #[serde(serialize_with = "ser_opt_secs")]
    pub applied: Option<Duration>,
    /// `applied - scheduled` in milliseconds: how late the change took effect.
    pub lag_ms: Option<f64>,
    /// How long applying it took, in milliseconds.
    pub apply_ms: Option<f64>,
    /// `partition`, `heal`, `impair`, …
    pub verb: String,
    /// The plan's one-liner, e.g. `partition factory|cloud (p1)`.
    pub summary: String,
    /// An automatic revert of a `for:` entry.
    pub revert: bool,
    /// Which mechanism carried it out (`nftables`, `netem`, `linkem`, `cgroup`, …), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it acted on and whether a fault starts or ends there ([`effects`]): what the
    /// HTML timeline pairs into bands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<Effect>,
}

/// A row of the timeline: one thing a fault can hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case", tag = "on")]
pub enum Lane {
    /// A named partition (its groups are in the action's summary).
    Partition { partition: String },
    /// A WAN link's impairment.
    Link { link: String },
    /// One aspect of a node: `down`, `cpu` or `memory`.
    Node { node: String, aspect: NodeAspect },
    /// One instance of a workload.
    Workload { workload: String, node: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeAspect {
    Down,
    Cpu,
    Memory,
}

/// What an action did to its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// A fault holds from here (replacing the lane's previous one, if any).
    Start,
    /// The lane is back to its baseline.
    End,
    /// Something that happens at an instant (a kill, a restart).
    Instant,
}

/// One lane an action changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effect {
    #[serde(flatten)]
    pub lane: Lane,
    pub change: Change,
}

/// The lanes `action` of `plan` changes, in the plan's names. An impairment that sets a link
/// back to its baseline (a `for:` window's restore) ends the link's fault; one that leaves it
/// changed starts a new one, so each setting is a band of its own.
pub fn effects(plan: &Plan, action: &Action) -> Vec<Effect> {
    let node = |n: &usize| {
        plan.nodes
            .get(*n)
            .map_or_else(|| format!("node #{n}"), |x| x.name.clone())
    };
    let on_nodes = |nodes: &[usize], aspect, change| {
        nodes
            .iter()
            .map(|n| Effect {
                lane: Lane::Node {
                    node: node(n),
                    aspect,
                },
                change,
            })
            .collect()
    };
    let on_instances = |workload: &usize, nodes: &[usize]| {
        let w = plan
            .workloads
            .get(*workload)
            .map_or_else(|| format!("workload #{workload}"), |w| w.name.clone());
        nodes
            .iter()
            .map(|n| Effect {
                lane: Lane::Workload {
                    workload: w.clone(),
                    node: node(n),
                },
                change: Change::Instant,
            })
            .collect()
    };
    match &action.kind {
        ActionKind::Partition { name, .. } => vec![Effect {
            lane: Lane::Partition {
                partition: name.clone(),
            },
            change: Change::Start,
        }],
        ActionKind::Heal { names } => names
            .iter()
            .map(|n| Effect {
                lane: Lane::Partition {
                    partition: n.clone(),
                },
                change: Change::End,
            })
            .collect(),
        ActionKind::Impair { link, up, down } => {
            let Some(l) = plan.links.get(*link) else {
                return Vec::new();
            };
            let baseline = (l.up, l.down) == (*up, *down);
            vec![Effect {
                lane: Lane::Link {
                    link: l.name.clone(),
                },
                change: if baseline { Change::End } else { Change::Start },
            }]
        }
        ActionKind::NodeDown { nodes, .. } => on_nodes(nodes, NodeAspect::Down, Change::Start),
        ActionKind::NodeUp { nodes, .. } => on_nodes(nodes, NodeAspect::Down, Change::End),
        ActionKind::Cpu { nodes, cores } => on_nodes(
            nodes,
            NodeAspect::Cpu,
            if cores.is_some() {
                Change::Start
            } else {
                Change::End
            },
        ),
        ActionKind::Memory { nodes, limit } => on_nodes(
            nodes,
            NodeAspect::Memory,
            if limit.is_some() {
                Change::Start
            } else {
                Change::End
            },
        ),
        ActionKind::Kill {
            workload, nodes, ..
        }
        | ActionKind::Restart { workload, nodes } => on_instances(workload, nodes),
    }
}

impl JournalEntry {
    /// An entry for `action` of `plan` that had taken effect `applied` into the timeline,
    /// after applying it took `took`.
    pub fn applied(
        plan: &Plan,
        action: &Action,
        applied: Duration,
        took: Duration,
        result: Result<(), String>,
    ) -> Self {
        let lag = applied.saturating_sub(action.at);
        JournalEntry {
            seq: action.seq,
            scheduled: action.at,
            applied: Some(applied),
            lag_ms: Some(lag.as_secs_f64() * 1e3),
            apply_ms: Some(took.as_secs_f64() * 1e3),
            verb: action.kind.verb().to_string(),
            summary: action.summary.clone(),
            revert: action.revert,
            mechanism: None,
            ok: result.is_ok(),
            error: result.err(),
            effects: effects(plan, action),
        }
    }
}

/// Lateness of the timeline's actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LagStats {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Actions that ran.
    pub count: usize,
}

impl LagStats {
    /// Nearest-rank statistics over the entries that ran.
    pub fn from_journal(journal: &[JournalEntry]) -> Self {
        let mut lags: Vec<f64> = journal.iter().filter_map(|j| j.lag_ms).collect();
        lags.sort_by(f64::total_cmp);
        LagStats {
            p50_ms: percentile(&lags, 0.50),
            p99_ms: percentile(&lags, 0.99),
            max_ms: lags.last().copied(),
            count: lags.len(),
        }
    }
}

/// One probe and all its samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSummary {
    pub name: String,
    /// Node the probe ran from.
    pub from: String,
    /// What it probed, as written (`sink`, `sink:8080`, a URL).
    pub target: String,
    /// `ping`, `tcp` or `http`.
    pub kind: String,
    #[serde(serialize_with = "ser_secs")]
    pub every: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
    pub attempts: usize,
    pub successes: usize,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub samples: Vec<Sample>,
}

impl ProbeSummary {
    /// Summarises `samples` (in any order; kept sorted by start) of `probe`, run from `from`.
    pub fn new(probe: &Probe, from: &str, mut samples: Vec<Sample>) -> Self {
        samples.sort_by_key(|s| s.t);
        let (kind, target) = match &probe.kind {
            ProbeKind::Ping { target, .. } => ("ping", target.clone()),
            ProbeKind::Tcp { target, .. } => ("tcp", target.clone()),
            ProbeKind::Http { url, .. } => ("http", url.clone()),
        };
        let mut rtts: Vec<f64> = samples
            .iter()
            .filter(|s| s.ok)
            .filter_map(|s| s.rtt)
            .map(|r| r.as_secs_f64() * 1e3)
            .collect();
        rtts.sort_by(f64::total_cmp);
        ProbeSummary {
            name: probe.name.clone(),
            from: from.to_string(),
            target,
            kind: kind.to_string(),
            every: probe.every,
            timeout: probe.timeout,
            attempts: samples.len(),
            successes: samples.iter().filter(|s| s.ok).count(),
            rtt_p50_ms: percentile(&rtts, 0.50),
            rtt_p99_ms: percentile(&rtts, 0.99),
            samples,
        }
    }
}

/// What happened to workload instances (starts, exits, restarts, signals), in order.
pub use crate::workload::{Event as WorkloadEvent, EventKind as WorkloadEventKind};

/// A WAN link as it was realised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkReport {
    pub name: String,
    /// Site names of the two ends; `up` is a→b.
    pub a: String,
    pub b: String,
    /// Mechanisms that carried its impairments (`netem`, `tbf`, `linkem`, …).
    pub mechanisms: Vec<String>,
    pub up: LinkParams,
    pub down: LinkParams,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TeardownSummary {
    pub seconds: f64,
    /// Everything teardown could not undo, each naming the object and the operation.
    pub errors: Vec<String>,
}

/// A file the run wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Artifact {
    /// `json`, `junit`, `html`, …
    pub kind: String,
    pub path: PathBuf,
}

/// The host CPU speed the run's CPU quotas were computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostCpuReport {
    /// Single-core speed of the host relative to a Raspberry Pi 5 core.
    pub speed_per_core: f64,
    /// The scenario's `cpuScale` (every quota multiplied by it).
    pub cpu_scale: f64,
    /// CPUs edgesim may use.
    pub online_cpus: u32,
    /// Where the speed came from: measured (method, when, file), set by
    /// `EDGESIM_HOST_SPEED`, or assumed.
    pub source: String,
}

impl HostCpuReport {
    pub fn new(host: &crate::profile::HostCpu, cpu_scale: f64) -> Self {
        HostCpuReport {
            speed_per_core: host.speed_per_core,
            cpu_scale,
            online_cpus: host.online_cpus,
            source: host.source.to_string(),
        }
    }
}

/// The complete record of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub file: PathBuf,
    pub run_id: String,
    pub target: String,
    pub seed: u64,
    pub seed_source: SeedSource,
    /// Wall-clock start of the run, RFC 3339 in UTC.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Planned length of the timeline.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    pub outcome: Outcome,
    pub exit_code: i32,
    /// The infrastructure error that ended the run, when `outcome` is `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub phases: Vec<Phase>,
    pub journal: Vec<JournalEntry>,
    pub lag: LagStats,
    pub probes: Vec<ProbeSummary>,
    pub assertions: Vec<Verdict>,
    pub workloads: Vec<WorkloadEvent>,
    pub links: Vec<LinkReport>,
    /// What carried the link impairments (`kernel (tc, nftables)`, `userspace (linkem)`).
    pub mechanism: String,
    /// The host CPU speed behind the CPU quotas (set when the run starts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<HostCpuReport>,
    /// The userspace link emulator's counters at the end of the run, per site relay.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub linkem: Vec<crate::linkem::RelayStats>,
    pub teardown: TeardownSummary,
    pub notes: Vec<String>,
    /// Where the reports of this run were written.
    pub artifacts: Vec<Artifact>,
    /// The HTML report of this run, relative to the folder of the JSON file that names it
    /// (`report.html` beside the run folder's `report.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<PathBuf>,
}

impl Report {
    /// An empty report for a run of `plan`, started now, to be filled as the run goes.
    pub fn new(plan: &Plan, run_id: &str, target: &str) -> Self {
        Report {
            scenario: plan.name.clone(),
            description: plan.description.clone(),
            file: plan.file.clone(),
            run_id: run_id.to_string(),
            target: target.to_string(),
            seed: plan.seed,
            seed_source: plan.seed_source,
            started_at: chrono::Utc::now(),
            duration: plan.duration,
            outcome: Outcome::Passed,
            exit_code: 0,
            error: None,
            phases: Vec::new(),
            journal: Vec::new(),
            lag: LagStats::default(),
            probes: Vec::new(),
            assertions: Vec::new(),
            workloads: Vec::new(),
            links: Vec::new(),
            mechanism: String::new(),
            host_cpu: None,
            linkem: Vec::new(),
            teardown: TeardownSummary::default(),
            notes: Vec::new(),
            artifacts: Vec::new(),
            html: None,
        }
    }

    /// Settles the derived fields: lag statistics from the journal, then the outcome and exit
    /// code (an error wins over failed assertions, which win over success).
    pub fn finish(&mut self) {
        self.lag = LagStats::from_journal(&self.journal);
        self.outcome = if self.error.is_some() {
            Outcome::Error
        } else if self.assertions.iter().any(|v| !v.passed) {
            Outcome::Failed
        } else {
            Outcome::Passed
        };
        self.exit_code = self.outcome.exit_code();
    }

    /// Total wall-clock time of the recorded phases.
    pub fn elapsed(&self) -> f64 {
        self.phases.iter().map(|p| p.seconds).sum()
    }
}

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing report {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("encoding the JUnit report: {0}")]
    Junit(#[from] quick_junit::SerializeError),
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so a reader never
/// sees half a report and an interrupted write leaves the previous one intact.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".to_string());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(err)
}

/// The reports a run writes besides the run folder's `report.json` and `report.html`
/// (`--report`, `--junit`, `--html`).
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

/// How a JSON report at `json` names the HTML report at `html`: its file name when they share
/// a folder, else its absolute path.
fn html_link(json: &Path, html: &Path) -> PathBuf {
    if json.parent() == html.parent()
        && let Some(name) = html.file_name()
    {
        return PathBuf::from(name);
    }
    std::path::absolute(html).unwrap_or_else(|_| html.to_path_buf())
}

/// Writes a run's reports: `report.json` (which links `report.html`) and `report.html` in
/// `out_dir`, and the `extra` files; each is listed in `artifacts`. Returns what could not be
/// written.
pub fn write_run_reports(report: &mut Report, out_dir: &Path, extra: &ReportFiles) -> Vec<String> {
    let run_html = out_dir.join("report.html");
    let mut targets = vec![
        ("json", out_dir.join("report.json")),
        ("html", run_html.clone()),
    ];
    targets.extend(extra.json.clone().map(|j| ("json", j)));
    targets.extend(extra.html.clone().map(|h| ("html", h)));
    targets.extend(extra.junit.clone().map(|j| ("junit", j)));
    for (kind, path) in &targets {
        report.artifacts.push(Artifact {
            kind: kind.to_string(),
            path: path.clone(),
        });
    }
    let mut errors = Vec::new();
    for (kind, path) in targets {
        let res = match kind {
            "junit" => write_junit(report, &path),
            "html" => write_html(report, &path),
            _ => {
                report.html = Some(html_link(&path, &run_html));
                write_json(report, &path)
            }
        };
        if let Err(e) = res {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Writes the complete report as pretty-printed JSON.
pub fn write_json(report: &Report, path: &Path) -> Result<(), ReportError> {
    let mut bytes = serde_json::to_vec_pretty(report)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Milliseconds for people: `0.412ms`, `31.2ms`, `1204ms`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scenario::expect::parse_expectation;

    /// A small, fully populated report: one passed and one failed assertion, two actions.
    pub(crate) fn sample_report() -> Report {
        let ms = Duration::from_millis;
        let samples: Vec<Sample> = (0..10u64)
            .map(|i| Sample {
                t: ms(i * 200),
                ok: i != 3,
                rtt: (i != 3).then(|| ms(30 + i)),
                error: (i == 3).then(|| "no echo reply within 1s".to_string()),
                seq: None,
            })
            .collect();
        let pass = crate::assertion::judge_probe(
            "cut",
            &samples,
            (ms(600), ms(800)),
            &parse_expectation("success_rate == 0%", false).unwrap(),
            None,
        );
        let fail = crate::assertion::judge_probe(
            "back",
            &samples,
            (Duration::ZERO, Duration::from_secs(2)),
            &parse_expectation("success_rate >= 99%", false).unwrap(),
            None,
        );
        let journal = vec![
            JournalEntry {
                seq: 0,
                scheduled: ms(600),
                applied: Some(ms(600) + Duration::from_micros(400)),
                lag_ms: Some(0.4),
                apply_ms: Some(1.5),
                verb: "partition".into(),
                summary: "partition factory|cloud (p1)".into(),
                revert: false,
                mechanism: Some("nftables".into()),
                ok: true,
                error: None,
                effects: vec![Effect {
                    lane: Lane::Partition {
                        partition: "p1".into(),
                    },
                    change: Change::Start,
                }],
            },
            JournalEntry {
                seq: 1,
                scheduled: ms(800),
                applied: Some(ms(800) + Duration::from_micros(1200)),
                lag_ms: Some(1.2),
                apply_ms: Some(0.9),
                verb: "heal".into(),
                summary: "heal p1".into(),
                revert: false,
                mechanism: Some("nftables".into()),
                ok: true,
                error: None,
                effects: vec![Effect {
                    lane: Lane::Partition {
                        partition: "p1".into(),
                    },
                    change: Change::End,
                }],
            },
        ];
        let mut r = Report {
            scenario: "quickstart".into(),
            description: Some("demo".into()),
            file: "scenarios/quickstart.yaml".into(),
            run_id: "r1a2b".into(),
            target: "netns".into(),
            seed: 7,
            seed_source: SeedSource::Scenario,
            started_at: chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
            duration: Duration::from_secs(2),
            outcome: Outcome::Passed,
            exit_code: 0,
            error: None,
            phases: vec![
                Phase {
                    name: "provision".into(),
                    seconds: 0.25,
                    ok: true,
                },
                Phase {
                    name: "timeline".into(),
                    seconds: 2.0,
                    ok: true,
                },
            ],
            journal,
            lag: LagStats::default(),
            probes: Vec::new(),
            assertions: vec![pass, fail],
            workloads: vec![WorkloadEvent {
                t: 0.0,
                workload: "sink".into(),
                node: "sink".into(),
                kind: WorkloadEventKind::Started,
                pid: Some(4242),
                code: None,
                signal: None,
                detail: None,
            }],
            links: Vec::new(),
            mechanism: "kernel (tc, nftables)".into(),
            host_cpu: None,
            linkem: Vec::new(),
            teardown: TeardownSummary {
                seconds: 0.05,
                errors: Vec::new(),
            },
            notes: vec!["netem missing: delays by linkem".into()],
            artifacts: vec![Artifact {
                kind: "json".into(),
                path: "out/report.json".into(),
            }],
            html: None,
        };
        let probe = Probe {
            name: "uplink".into(),
            from: 1,
            kind: ProbeKind::Ping {
                target: "sink".into(),
                addr: "10.0.0.2".parse().unwrap(),
            },
            every: ms(200),
            timeout: Duration::from_secs(1),
        };
        r.probes.push(ProbeSummary::new(&probe, "gw-1", samples));
        r.finish();
        r
    }

    #[test]
    fn finish_derives_lag_outcome_and_exit_code() {
        let mut r = sample_report();
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.exit_code, 1);
        assert_eq!(r.lag.count, 2);
        assert_eq!(r.lag.p50_ms, Some(0.4));
        assert_eq!(r.lag.p99_ms, Some(1.2));
        r.assertions.retain(|v| v.passed);
        r.finish();
        assert_eq!((r.outcome, r.exit_code), (Outcome::Passed, 0));
        r.error = Some("creating namespace: EPERM".into());
        r.finish();
        assert_eq!((r.outcome, r.exit_code), (Outcome::Error, 3));
    }

    #[test]
    fn probe_summary_counts_and_percentiles() {
        let r = sample_report();
        let p = &r.probes[0];
        assert_eq!((p.attempts, p.successes), (10, 9));
        assert_eq!((p.kind.as_str(), p.target.as_str()), ("ping", "sink"));
        // Successful RTTs 30,31,32,34..39 ms (9): p50 = rank 5 = 35 ms, p99 = rank 9 = 39 ms.
        assert_eq!(p.rtt_p50_ms, Some(35.0));
        assert_eq!(p.rtt_p99_ms, Some(39.0));
    }

    #[test]
    fn json_keeps_every_sample_verdict_and_action_with_timestamps() {
        let r = sample_report();
        let dir = std::env::temp_dir().join(format!("edgesim-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.json");
        write_json(&r, &path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v["started_at"], "2026-11-27T10:00:00Z");
        assert_eq!(v["outcome"], "failed");
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["seed_source"], "scenario");
        assert_eq!(v["duration"], 2.0);
        let samples = v["probes"][0]["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 10);
        assert_eq!(samples[1]["t"], 0.2);
        assert_eq!(samples[1]["rtt"], 0.031);
        assert_eq!(samples[3]["ok"], false);
        assert_eq!(samples[3]["error"], "no echo reply within 1s");
        assert_eq!(v["journal"][1]["scheduled"], 0.8);
        assert_eq!(v["journal"][1]["applied"], 0.8012);
        assert_eq!(v["journal"][0]["verb"], "partition");
        assert_eq!(v["assertions"][1]["name"], "back");
        assert_eq!(v["assertions"][1]["passed"], false);
        assert_eq!(v["assertions"][1]["window"], "0s..2s");
        assert_eq!(v["assertions"][1]["expected"], "success_rate >= 99%");
        assert_eq!(v["assertions"][1]["span"], serde_json::json!([0.0, 2.0]));
        assert_eq!(
            v["journal"][0]["effects"],
            serde_json::json!([{"on": "partition", "partition": "p1", "change": "start"}])
        );
        assert_eq!(v["journal"][1]["effects"][0]["change"], "end");
        assert!(
            v.get("html").is_none(),
            "no HTML report named until one is written"
        );
        assert_eq!(v["workloads"][0]["kind"], "started");
        assert_eq!(v["lag"]["p99_ms"], 1.2);
    }

    #[test]
    fn write_reports_the_path_on_error() {
        let r = sample_report();
        let e = write_json(&r, Path::new("/nonexistent-dir/x/report.json")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent-dir/x/report.json"),
            "{e}"
        );
    }
}
