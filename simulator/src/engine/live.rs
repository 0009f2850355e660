//! Live faults: timeline actions applied by hand to a lab that is up (`edgesim fault`, or
//! [`crate::session::LabHandle::fault`]).
//!
//! A live fault is a timeline entry without `at` (any action a scenario's timeline takes, with
//! an optional `for` that reverts it). It is checked exactly as a scenario's entry is: the
//! entries applied so far become a timeline whose `at`s are the moments they were applied
//! (offsets from the moment the lab came up), the new entry is appended at "now", and the whole
//! is validated with the scenario's own validator, profiles and capabilities. So a live
//! `heal p1` is accepted only while partition `p1` is in effect, an `impair` merges with what
//! the link has now, and a `for` schedules the same revert a scenario would get. The new
//! entry's actions (what to apply now, and its reverts or flap steps later) come out of that
//! plan; the control loop applies them and journals each into the lab's report.
//!
//! What is active is derived from the actions applied so far: partitions not healed, links
//! whose parameters differ from the scenario's, nodes down, CPU and memory overrides, each with
//! the time its entry ends when it has a `for`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scenario::diag::Diagnostic;
use crate::scenario::loc::Loc;
use crate::scenario::model::{EventSpec, Scenario};
use crate::scenario::plan::{Action, ActionKind, Plan};
use crate::scenario::{Capabilities, Overrides};
use crate::units::Dur;

/// What a lab's control channel is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// Apply a timeline entry (YAML of one entry, without `at`).
    Fault { entry: String },
    /// What is in effect.
    List,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Reply {
    /// The entry was accepted: the actions applied now (journal entries), and how many more
    /// are scheduled (its revert, flap steps).
    Applied {
        journal: Vec<Applied>,
        scheduled: usize,
    },
    /// The entry was refused before anything changed.
    Invalid { errors: Vec<String> },
    /// What is in effect.
    Active { faults: Vec<Active> },
    /// Applying failed (the journal says what did take effect).
    Failed {
        journal: Vec<Applied>,
        error: String,
    },
}

/// One action of a live fault as it was applied (the lab's journal has the whole entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// E.g. `partition factory|cloud (p1)`.
    pub summary: String,
    /// Seconds since the lab came up when it had taken effect.
    pub at: f64,
    /// How long applying it took, in milliseconds.
    pub apply_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&crate::report::JournalEntry> for Applied {
    fn from(j: &crate::report::JournalEntry) -> Self {
        Applied {
            summary: j.summary.clone(),
            at: j.applied.map_or(0.0, |d| d.as_secs_f64()),
            apply_ms: j.apply_ms.unwrap_or(0.0),
            error: j.error.clone(),
        }
    }
}

/// One fault in effect on a lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active {
    /// `partition`, `impair`, `node-down`, `cpu` or `memory`.
    pub kind: String,
    /// What it is, e.g. `partition factory|cloud (p1)`.
    pub summary: String,
    /// Seconds since the lab came up when it took effect.
    pub since: f64,
    /// Seconds since the lab came up when its `for` ends, if it has one.
    pub until: Option<f64>,
}

/// The timeline of a lab's live faults, and the means to check a new entry.
pub struct LiveTimeline {
    scenario: Scenario,
    text: String,
    file: PathBuf,
    profiles: crate::profile::ProfileSet,
    caps: Capabilities,
    overrides: Overrides,
    /// Entries accepted so far, with their `at` set to when they were applied.
    history: Vec<EventSpec>,
    base: Plan,
}

/// A new entry's actions, from the plan that includes it.
pub struct Accepted {
    pub plan: Plan,
    /// Its actions due now (`at` ≤ the entry's time), in order.
    pub now: Vec<Action>,
    /// Its actions due later (reverts, flap and trace steps).
    pub later: Vec<Action>,
}

impl LiveTimeline {
    /// For a lab of `base` (the plan it was built from), read from `scenario` as `text` in
    /// `file`, validated with these profiles, capabilities and overrides. The seed is the
    /// plan's, so that draws (flap schedules) are those a replay would make.
    pub fn new(
        scenario: Scenario,
        text: String,
        file: PathBuf,
        profiles: crate::profile::ProfileSet,
        caps: Capabilities,
        overrides: &Overrides,
        base: Plan,
    ) -> Self {
        let overrides = Overrides {
            seed: Some(base.seed),
            impairment: overrides.impairment,
            live: true,
        };
        LiveTimeline {
            scenario,
            text,
            file,
            profiles,
            caps,
            overrides,
            history: Vec::new(),
            base,
        }
    }

    /// The plan the lab was built from.
    pub fn base(&self) -> &Plan {
        &self.base
    }

    /// Parses one timeline entry written without `at` (YAML, e.g. `partition: {between:
    /// [factory, cloud]}` and optionally `for: 20s`).
    pub fn parse_entry(entry: &str) -> Result<EventSpec, Vec<String>> {
        let mut v: serde_json::Value =
            serde_saphyr::from_str(entry).map_err(|e| vec![format!("reading the fault: {e}")])?;
        let Some(map) = v.as_object_mut() else {
            return Err(vec![
                "a fault is one timeline entry: a mapping such as `partition: {between: [a, b]}`"
                    .into(),
            ]);
        };
        if map.contains_key("at") {
            return Err(vec![
                "a live fault has no `at`: it applies now (use `for` to revert it later)".into(),
            ]);
        }
        map.insert("at".into(), serde_json::Value::String("0s".into()));
        // Through YAML text again, so that the entry is read exactly as a scenario's is.
        let text = serde_json::to_string(&v).map_err(|e| vec![e.to_string()])?;
        serde_saphyr::from_str::<EventSpec>(&text).map_err(|e| {
            let inner = crate::scenario::validate::innermost(&e);
            vec![format!("reading the fault: {inner}")]
        })
    }

    /// Checks `entry` as if it were the next entry of the timeline at `at` (offset from the
    /// lab's start) and, when valid, records it and returns its actions.
    pub fn accept(&mut self, mut entry: EventSpec, at: Duration) -> Result<Accepted, Vec<String>> {
        entry.at = Loc::bare(Dur(at));
        let mut sc = self.scenario.clone();
        let mut timeline = self.history.clone();
        timeline.push(entry.clone());
        let ei = timeline.len() - 1;
        // The timeline must fit the scenario's duration: stretch it past the last revert.
        let end = timeline
            .iter()
            .map(|e| e.at.value.0 + e.for_.as_ref().map_or(Duration::ZERO, |f| f.value.0))
            .max()
            .unwrap_or_default();
        let d = sc.spec.duration.value.0.max(end + Duration::from_secs(1));
        sc.spec.duration = Loc::bare(Dur(d));
        sc.spec.timeline = timeline;
        let validated = crate::scenario::validate::build(
            &self.file,
            &self.text,
            &sc,
            &self.profiles,
            &self.caps,
            &self.overrides,
        )
        .map_err(|d| {
            d.items
                .iter()
                .filter(|i| i.severity == crate::scenario::diag::Severity::Error)
                .map(describe)
                .collect::<Vec<_>>()
        })?;
        let plan = validated.plan;
        if plan.mechanism != self.base.mechanism {
            return Err(vec![format!(
                "this lab's links are carried by {:?}, and this fault would need {:?}",
                self.base.mechanism, plan.mechanism
            )]);
        }
        let (now, later): (Vec<Action>, Vec<Action>) = plan
            .actions
            .iter()
            .filter(|a| a.event == ei)
            .cloned()
            .partition(|a| a.at <= at);
        self.history.push(entry);
        Ok(Accepted { plan, now, later })
    }

    /// What is in effect after `applied` (in the order they were applied), with the
    /// `pending` actions still to come.
    pub fn active(&self, applied: &[Action], pending: &[Action]) -> Vec<Active> {
        let until = |event: usize| {
            pending
                .iter()
                .filter(|p| p.event == event)
                .map(|p| p.at.as_secs_f64())
                .reduce(f64::max)
        };
        let base = self.base.baseline_links();
        let mut partitions: BTreeMap<String, Active> = BTreeMap::new();
        let mut links: BTreeMap<usize, Active> = BTreeMap::new();
        let mut down: BTreeMap<usize, Active> = BTreeMap::new();
        let mut resources: BTreeMap<(usize, &str), Active> = BTreeMap::new();
        for a in applied {
            let item = |kind: &str| Active {
                kind: kind.into(),
                summary: a.summary.clone(),
                since: a.at.as_secs_f64(),
                until: until(a.event),
            };
            match &a.kind {
                ActionKind::Partition { name, .. } => {
                    partitions.insert(name.clone(), item("partition"));
                }
                ActionKind::Heal { names } => {
                    for n in names {
                        partitions.remove(n);
                    }
                }
                ActionKind::Impair { link, up, down: dn } => {
                    if base.get(*link) == Some(&(*up, *dn)) {
                        links.remove(link);
                    } else {
                        links.insert(*link, item("impair"));
                    }
                }
                ActionKind::NodeDown { nodes, .. } => {
                    for n in nodes {
                        down.insert(*n, item("node-down"));
                    }
                }
                ActionKind::NodeUp { nodes, .. } => {
                    for n in nodes {
                        down.remove(n);
                    }
                }
                ActionKind::Cpu { nodes, cores } => {
                    for n in nodes {
                        match cores {
                            Some(_) => resources.insert((*n, "cpu"), item("cpu")),
                            None => resources.remove(&(*n, "cpu")),
                        };
                    }
                }
                ActionKind::Memory { nodes, limit } => {
                    for n in nodes {
                        match limit {
                            Some(_) => resources.insert((*n, "memory"), item("memory")),
                            None => resources.remove(&(*n, "memory")),
                        };
                    }
                }
                ActionKind::Kill { .. } | ActionKind::Restart { .. } => {}
            }
        }
        let mut all: Vec<Active> = partitions
            .into_values()
            .chain(links.into_values())
            .chain(down.into_values())
            .chain(resources.into_values())
            .collect();
        all.sort_by(|a, b| a.since.total_cmp(&b.since));
        // One entry can hold several nodes: list it once.
        all.dedup_by(|a, b| a.summary == b.summary && a.since == b.since);
        all
    }
}

/// A diagnostic as one line (and its hint): positions refer to no file the user wrote.
fn describe(d: &Diagnostic) -> String {
    let mut s = d.message.clone();
    if let Some(h) = &d.hint {
        s.push_str(&format!(" (hint: {h})"));
    }
    s
}

/// A timeline entry without `at`, as YAML: `action` is its key, `body` its value (YAML,
/// indented under the key whatever its style), `for_` its `for`.
pub fn entry_text(action: &str, body: Option<&str>, for_: Option<&str>) -> String {
    let mut entry = format!("{action}:\n");
    for l in body.unwrap_or_default().lines() {
        entry.push_str("  ");
        entry.push_str(l);
        entry.push('\n');
    }
    if let Some(f) = for_ {
        entry.push_str(&format!("for: {f}\n"));
    }
    entry
}

/// Renders `faults` as the table `edgesim fault NAME --list` prints.
pub fn table(faults: &[Active]) -> String {
    if faults.is_empty() {
        return "no faults in effect\n".into();
    }
    let mut s = format!("{:<10} {:<10} {:<10} WHAT\n", "KIND", "SINCE", "UNTIL");
    for f in faults {
        s.push_str(&format!(
            "{:<10} {:<10} {:<10} {}\n",
            f.kind,
            format!("{:.1}s", f.since),
            f.until.map_or("-".into(), |u| format!("{u:.1}s")),
            f.summary
        ));
    }
    s
}
