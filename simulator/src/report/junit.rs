//! JUnit XML: one testsuite per scenario, one testcase per assertion.
//!
//! CI systems show a failed testcase's `message` first, so it holds the whole story in one
//! line: observed value, expectation and window. The verdict's detail goes in the failure's
//! text. The suite's system-out carries the journal, so a CI page shows when each fault was
//! applied next to the failures it caused. An infrastructure error becomes an extra testcase
//! `run` with an `<error>`, so a run that never got to judge anything cannot look green.

use std::fmt::Write as _;
use std::path::Path;

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use super::{Report, ReportError, write_atomic};
use crate::assertion::Verdict;

fn failure_message(v: &Verdict) -> String {
    let mut m = format!("observed {}, expected {}", v.observed_text, v.expected);
    if let Some(w) = &v.window {
        m.push_str(&format!(" in {w}"));
    }
    m
}

/// The journal as plain text, one action per line.
fn journal_text(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "edgesim run {} of {} on {} (seed {}), outcome {}",
        report.run_id,
        report.scenario,
        report.target,
        report.seed,
        report.outcome.word()
    );
    for j in &report.journal {
        let applied = j
            .applied
            .map(|a| format!("{:.3}s", a.as_secs_f64()))
            .unwrap_or_else(|| "never".into());
        let _ = write!(
            s,
            "#{:<3} at {:>8.3}s applied {applied:>9} {}{}",
            j.seq,
            j.scheduled.as_secs_f64(),
            j.summary,
            if j.revert { " (revert)" } else { "" }
        );
        if let Some(l) = j.lag_ms {
            let _ = write!(s, " lag {}", super::fmt_ms(l));
        }
        match &j.error {
            Some(e) => {
                let _ = writeln!(s, " FAILED: {e}");
            }
            None => s.push('\n'),
        }
    }
    if report.lag.count > 0 {
        let f = |v: Option<f64>| v.map(super::fmt_ms).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "action lag p50 {} p99 {} max {}",
            f(report.lag.p50_ms),
            f(report.lag.p99_ms),
            f(report.lag.max_ms)
        );
    }
    for e in &report.teardown.errors {
        let _ = writeln!(s, "teardown error: {e}");
    }
    s
}

/// Builds the JUnit report in memory.
pub fn junit(report: &Report) -> quick_junit::Report {
    let mut suite = TestSuite::new(report.scenario.as_str());
    let ts = report.started_at.fixed_offset();
    suite.set_timestamp(ts);
    suite.set_time(std::time::Duration::from_secs_f64(
        report.elapsed().max(0.0),
    ));
    for (k, v) in [
        ("file", report.file.display().to_string()),
        ("run_id", report.run_id.clone()),
        ("target", report.target.clone()),
        ("seed", report.seed.to_string()),
    ] {
        suite.add_property(Property::new(k, v));
    }
    for v in &report.assertions {
        let status = if v.passed {
            TestCaseStatus::success()
        } else {
            let mut st = TestCaseStatus::non_success(NonSuccessKind::Failure);
            st.set_message(failure_message(v));
            st.set_type("assertion");
            st.set_description(v.detail.as_str());
            st
        };
        let mut tc = TestCase::new(v.name.as_str(), status);
        tc.set_classname(report.scenario.as_str());
        tc.set_assertions(1);
        tc.add_property(Property::new("observed", v.observed_text.as_str()));
        tc.add_property(Property::new("expected", v.expected.as_str()));
        if let Some(w) = &v.window {
            tc.add_property(Property::new("window", w.as_str()));
        }
        tc.add_property(Property::new("samples", v.samples.to_string()));
        suite.add_test_case(tc);
    }
    if let Some(err) = &report.error {
        let mut st = TestCaseStatus::non_success(NonSuccessKind::Error);
        st.set_message(err.as_str());
        st.set_type("infrastructure");
        let mut tc = TestCase::new("run", st);
        tc.set_classname(report.scenario.as_str());
        suite.add_test_case(tc);
    }
    suite.set_system_out(journal_text(report));
    let mut out = quick_junit::Report::new("edgesim");
    out.set_timestamp(ts);
    out.add_test_suite(suite);
    out
}

/// Writes the JUnit XML report.
pub fn write_junit(report: &Report, path: &Path) -> Result<(), ReportError> {
    let xml = junit(report).to_string()?;
    write_atomic(path, xml.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;
    use crate::scenario::expect::{Stat, format_observed};

    #[test]
    fn round_trips_with_one_case_per_assertion() {
        let r = sample_report();
        let dir = std::env::temp_dir().join(format!("edgesim-junit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junit.xml");
        write_junit(&r, &path).unwrap();
        let xml = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let back = quick_junit::Report::deserialize_from_str(&xml).unwrap();
        assert_eq!(back.name.as_ref().map(|n| n.as_str()), Some("edgesim"));
        assert_eq!(back.test_suites.len(), 1);
        let suite = &back.test_suites[0];
        assert_eq!(suite.name.as_str(), "quickstart");
        assert_eq!(suite.tests, 2);
        assert_eq!(suite.failures, 1);
        assert_eq!(suite.errors, 0);
        let names: Vec<&str> = suite.test_cases.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cut", "back"]);
        assert!(matches!(
            suite.test_cases[0].status,
            TestCaseStatus::Success { .. }
        ));
        match &suite.test_cases[1].status {
            TestCaseStatus::NonSuccess {
                kind,
                message,
                description,
                ..
            } => {
                assert_eq!(*kind, NonSuccessKind::Failure);
                let m = message.as_ref().unwrap().as_str();
                let observed = format_observed(Stat::SuccessRate, 0.9);
                assert_eq!(
                    m,
                    format!("observed {observed}, expected success_rate >= 99% in 0s..2s")
                );
                let d = description.as_ref().unwrap().as_str();
                assert!(d.contains("9 of 10 attempts succeeded"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        let out = suite.system_out.as_ref().unwrap().as_str();
        assert!(out.contains("partition factory|cloud (p1)"), "{out}");
        assert!(out.contains("lag 0.400ms"), "{out}");
        assert!(out.contains("action lag p50 0.400ms p99 1.2ms"), "{out}");
    }

    #[test]
    fn an_infrastructure_error_is_an_error_case() {
        let mut r = sample_report();
        r.assertions.clear();
        r.error = Some("creating namespace edgesim-r1-gw-1: Operation not permitted".into());
        r.finish();
        let xml = junit(&r).to_string().unwrap();
        let back = quick_junit::Report::deserialize_from_str(&xml).unwrap();
        let suite = &back.test_suites[0];
        assert_eq!((suite.tests, suite.errors), (1, 1));
        assert_eq!(suite.test_cases[0].name.as_str(), "run");
    }
}
