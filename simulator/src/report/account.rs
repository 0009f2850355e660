//! Reading a report from code: verdicts by name, probe series, and
//! [`Report::assert_passed`], which panics with a readable account of what failed and when.

use super::{JournalEntry, Outcome, ProbeSummary, Report};
use crate::assertion::Verdict;

impl Report {
    /// Whether every assertion held and the run completed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }

    /// The verdict of the assertion named `name`.
    pub fn assertion(&self, name: &str) -> Option<&Verdict> {
        self.assertions.iter().find(|v| v.name == name)
    }

    /// The assertions that failed, in the scenario's order.
    pub fn failures(&self) -> Vec<&Verdict> {
        self.assertions.iter().filter(|v| !v.passed).collect()
    }

    /// The probe named `name`: its summary and every sample (time, result, RTT).
    pub fn probe(&self, name: &str) -> Option<&ProbeSummary> {
        self.probes.iter().find(|p| p.name == name)
    }

    /// The journal's entries of one verb (`partition`, `impair`, …).
    pub fn actions(&self, verb: &str) -> Vec<&JournalEntry> {
        self.journal.iter().filter(|j| j.verb == verb).collect()
    }

    /// Panics unless the run passed, with [`Report::account`] as the message: for a test.
    #[track_caller]
    pub fn assert_passed(&self) {
        if !self.passed() {
            panic!("{}", self.account());
        }
    }

    /// What happened, for a person: the outcome, every failed assertion with its window,
    /// what it saw and expected, and the actions that had been applied by the end of its
    /// window; or the error that stopped the run.
    pub fn account(&self) -> String {
        let mut s = format!(
            "scenario `{}` {} (run {}, target {}, seed {})\n",
            self.scenario,
            match self.outcome {
                Outcome::Passed => "passed",
                Outcome::Failed => "failed",
                Outcome::Error => "did not complete",
            },
            self.run_id,
            self.target,
            self.seed
        );
        if let Some(e) = &self.error {
            s.push_str(&format!("  error: {e}\n"));
        }
        let failed = self.failures();
        if !failed.is_empty() {
            s.push_str(&format!(
                "  {} of {} assertions failed:\n",
                failed.len(),
                self.assertions.len()
            ));
        }
        for v in failed {
            s.push_str(&format!(
                "  ✗ {}: expected {}{}, observed {} over {} samples\n",
                v.name,
                v.expected,
                v.window
                    .as_deref()
                    .map_or(String::new(), |w| format!(" during {w}")),
                v.observed_text,
                v.samples
            ));
            if !v.detail.is_empty() {
                s.push_str(&format!("      {}\n", v.detail));
            }
            let until = v.span.map_or(f64::INFINITY, |[_, to]| to);
            let before: Vec<&JournalEntry> = self
                .journal
                .iter()
                .filter(|j| j.applied.is_some_and(|a| a.as_secs_f64() <= until))
                .collect();
            if !before.is_empty() {
                s.push_str("      timeline by then:");
                for j in before {
                    s.push_str(&format!(
                        " {:.2}s {}{};",
                        j.applied.map_or(0.0, |a| a.as_secs_f64()),
                        j.summary,
                        if j.ok { "" } else { " (failed)" }
                    ));
                }
                s.push('\n');
            }
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        if let Some(a) = self.artifacts.iter().find(|a| a.kind == "html") {
            s.push_str(&format!("  report: {}\n", a.path.display()));
        }
        s
    }
}
