//! The human summary printed at the end of a run.
//!
//! Layout: a verdict line; one line per assertion (`✓`/`✗`, name, observed vs expected,
//! window, sample count, and for failures the detail on the next line); action lag; a probe
//! table; teardown problems and notes; where the reports were written. Colour (ANSI) only
//! when asked, so pipes and CI logs stay clean.

use std::fmt::Write as _;

use super::{Outcome, Report, fmt_ms};

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// Pads `s` to `w` characters (not bytes: names may be UTF-8).
fn pad(s: &str, w: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(w.saturating_sub(n)))
}

/// Renders the summary; `color` adds ANSI colours.
pub fn summary(report: &Report, color: bool) -> String {
    let st = Style { on: color };
    let mut s = String::new();
    let verdict = match report.outcome {
        Outcome::Passed => st.green(&st.bold("✓ PASSED")),
        Outcome::Failed => st.red(&st.bold("✗ FAILED")),
        Outcome::Error => st.red(&st.bold("! ERROR")),
    };
    let passed = report.assertions.iter().filter(|v| v.passed).count();
    let _ = writeln!(
        s,
        "{verdict} {} — {passed}/{} assertions held ({}, seed {}, run {}, {:.1}s)",
        st.bold(&report.scenario),
        report.assertions.len(),
        report.target,
        report.seed,
        report.run_id,
        report.elapsed()
    );
    if let Some(e) = &report.error {
        let _ = writeln!(s, "  {} {e}", st.red("error:"));
    }
    if let Some(h) = &report.host_cpu {
        let scale = if (h.cpu_scale - 1.0).abs() > f64::EPSILON {
            format!(", cpuScale {}", h.cpu_scale)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{}",
            st.dim(&format!(
                "  host CPU: {:.2} × a Raspberry Pi 5 core, {} CPUs{scale}; {}",
                h.speed_per_core, h.online_cpus, h.source
            ))
        );
    }

    if !report.assertions.is_empty() {
        let w = report
            .assertions
            .iter()
            .map(|v| v.name.chars().count())
            .max()
            .unwrap_or(0);
        for v in &report.assertions {
            let mark = if v.passed {
                st.green("✓")
            } else {
                st.red("✗")
            };
            let window = v
                .window
                .as_deref()
                .map(|w| {
                    // Metric verdicts carry an instant ("at 24s"), probe verdicts a window.
                    if w.starts_with("at ") {
                        format!(" {w}")
                    } else {
                        format!(" in {w}")
                    }
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {mark} {} {} (expected {}){window}, {} sample{}",
                pad(&v.name, w),
                if v.passed {
                    v.observed_text.clone()
                } else {
                    st.red(&v.observed_text)
                },
                v.expected,
                v.samples,
                if v.samples == 1 { "" } else { "s" }
            );
            if !v.passed {
                let _ = writeln!(s, "    {} {}", " ".repeat(w), st.dim(&v.detail));
            }
        }
    }

    let failed_actions = report.journal.iter().filter(|j| !j.ok).count();
    if report.lag.count > 0 || failed_actions > 0 {
        let f = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
        let _ = write!(
            s,
            "  actions: {} applied, lag p50 {} p99 {} max {}",
            report.lag.count,
            f(report.lag.p50_ms),
            f(report.lag.p99_ms),
            f(report.lag.max_ms)
        );
        if failed_actions > 0 {
            let _ = write!(s, ", {}", st.red(&format!("{failed_actions} failed")));
        }
        s.push('\n');
    }

    if !report.probes.is_empty() {
        let header = [
            "probe",
            "from",
            "target",
            "kind",
            "ok/attempts",
            "p50",
            "p99",
        ];
        let rows: Vec<[String; 7]> = report
            .probes
            .iter()
            .map(|p| {
                let f = |v: Option<f64>| v.map(fmt_ms).unwrap_or_else(|| "-".into());
                [
                    p.name.clone(),
                    p.from.clone(),
                    p.target.clone(),
                    p.kind.clone(),
                    format!("{}/{}", p.successes, p.attempts),
                    f(p.rtt_p50_ms),
                    f(p.rtt_p99_ms),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells.iter().zip(widths).map(|(c, w)| pad(c, w)).collect();
            format!("    {}", parts.join("  ").trim_end())
        };
        let _ = writeln!(s, "  probes:");
        let _ = writeln!(s, "{}", st.dim(&line(&header.map(str::to_string))));
        for r in &rows {
            let _ = writeln!(s, "{}", line(r));
        }
    }

    for e in &report.teardown.errors {
        let _ = writeln!(s, "  {} {e}", st.red("teardown:"));
    }
    for n in &report.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    for a in &report.artifacts {
        let _ = writeln!(s, "  {} report: {}", a.kind, a.path.display());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;
    use crate::scenario::expect::{Stat, format_observed};

    #[test]
    fn plain_summary_reads_well() {
        let r = sample_report();
        let got = summary(&r, false);
        let zero = format_observed(Stat::SuccessRate, 0.0);
        let ninety = format_observed(Stat::SuccessRate, 0.9);
        let want = format!(
            "\
✗ FAILED quickstart — 1/2 assertions held (netns, seed 7, run r1a2b, 2.2s)
  ✓ cut  {zero} (expected success_rate == 0%) in 600ms..800ms, 1 sample
  ✗ back {ninety} (expected success_rate >= 99%) in 0s..2s, 10 samples
         9 of 10 attempts succeeded in 0s..2s; most common failure: no echo reply within 1s (1×)
  actions: 2 applied, lag p50 0.400ms p99 1.2ms max 1.2ms
  probes:
    probe   from  target  kind  ok/attempts  p50     p99
    uplink  gw-1  sink    ping  9/10         35.0ms  39.0ms
  note: netem missing: delays by linkem
  json report: out/report.json
"
        );
        assert_eq!(got, want, "\n--- got ---\n{got}");
    }

    #[test]
    fn the_host_speed_behind_the_quotas_is_stated() {
        let mut r = sample_report();
        let host = crate::profile::HostCpu {
            speed_per_core: 1.234,
            online_cpus: 2,
            source: crate::profile::SpeedSource::Env,
        };
        r.host_cpu = Some(crate::report::HostCpuReport::new(&host, 0.05));
        let got = summary(&r, false);
        let line = got.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "  host CPU: 1.23 × a Raspberry Pi 5 core, 2 CPUs, cpuScale 0.05; set by EDGESIM_HOST_SPEED"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["host_cpu"]["speed_per_core"], 1.234);
    }

    #[test]
    fn colour_only_when_asked() {
        let r = sample_report();
        assert!(!summary(&r, false).contains('\x1b'));
        let c = summary(&r, true);
        assert!(c.contains("\x1b[31m"), "failures in red");
        assert!(c.contains("\x1b[32m✓\x1b[0m"), "passes in green");
    }

    #[test]
    fn errors_and_teardown_problems_are_shown() {
        let mut r = sample_report();
        r.error = Some("creating namespace: EPERM".into());
        r.teardown.errors.push("deleting namespace x: EBUSY".into());
        r.finish();
        let s = summary(&r, false);
        assert!(s.starts_with("! ERROR quickstart"), "{s}");
        assert!(s.contains("  error: creating namespace: EPERM\n"), "{s}");
        assert!(
            s.contains("  teardown: deleting namespace x: EBUSY\n"),
            "{s}"
        );
    }
}
