//! Judging assertions: probe statistics over a window, and workload metrics at an instant.
//!
//! Statistics over the samples whose start `t` lies in the half-open window `[from, to)`:
//! - `count`, `successes`, `failures`; `success_rate` and `loss_rate` as fractions of `count`.
//! - Latencies (`p50` … `p999`, `min`, `max`, `mean`) over the RTTs of *successful* samples
//!   only: a lost packet has no latency, and mixing timeouts in would make p99 measure the
//!   timeout setting. Percentiles use the nearest-rank method (the smallest sample such that at
//!   least q·N samples are ≤ it), so every reported percentile is a latency that was actually
//!   observed, and `p100` would be the max.
//!
//! A verdict never passes on missing data: an empty window, a latency statistic with no
//! successful sample, a metric that could not be read or a NaN all fail, with the reason in
//! `detail`. Every verdict carries the observed value formatted in the statistic's unit
//! ([`format_observed`]) next to the expectation, so reports read "observed 80% vs expected
//! `success_rate >= 99%`".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::probe::Sample;
use crate::scenario::expect::{Expectation, Stat, format_observed};
use crate::scenario::model::Aggregate;
use crate::units::Dur;

/// The judgement of one assertion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub passed: bool,
    /// The statistic's value in base units (fraction, seconds or number); `None` when it could
    /// not be computed.
    pub observed: Option<f64>,
    /// `observed` in the statistic's unit (`97.5%`, `12.300ms`, `42`), or `-`.
    pub observed_text: String,
    /// The expectation as written, normalised (`success_rate >= 99%`).
    pub expected: String,
    /// The window judged (`16s..34s`), or the instant of a metric (`at end`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The window judged as offsets in seconds, `[from, to]` (a metric's instant has
    /// `from == to`): what the HTML timeline draws. `None` when not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<[f64; 2]>,
    /// Samples (probe) or series values (metric) the statistic was computed over.
    pub samples: usize,
    /// One line explaining the numbers, and why a verdict failed when it was not the comparison.
    pub detail: String,
}

/// Nearest-rank percentile of an ascending slice; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Statistics of the samples in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeStats {
    pub count: usize,
    pub successes: usize,
    /// RTTs of the successful samples in seconds, ascending.
    pub rtts: Vec<f64>,
    /// Failure reasons and how often each occurred, most frequent first.
    pub errors: Vec<(String, usize)>,
}

impl ProbeStats {
    /// Collects the samples whose `t` lies in `[from, to)`.
    pub fn collect(samples: &[Sample], (from, to): (Duration, Duration)) -> Self {
        let mut count = 0;
        let mut successes = 0;
        let mut rtts = Vec::new();
        let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.t >= from && s.t < to) {
            count += 1;
            if s.ok {
                successes += 1;
                if let Some(r) = s.rtt {
                    rtts.push(r.as_secs_f64());
                }
            } else {
                *errors
                    .entry(s.error.as_deref().unwrap_or("failed"))
                    .or_default() += 1;
            }
        }
        rtts.sort_by(f64::total_cmp);
        let mut errors: Vec<(String, usize)> = errors
            .into_iter()
            .map(|(e, n)| (e.to_string(), n))
            .collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ProbeStats {
            count,
            successes,
            rtts,
            errors,
        }
    }

    pub fn failures(&self) -> usize {
        self.count - self.successes
    }

    /// The value of `stat`, or why it has none.
    pub fn stat(&self, stat: Stat) -> Result<f64, String> {
        if self.count == 0 {
            return Err("no probe samples in the window".into());
        }
        let latency = |f: &dyn Fn(&[f64]) -> Option<f64>| {
            f(&self.rtts).ok_or_else(|| {
                format!(
                    "no successful attempt in the window ({} of {} failed), so there is no latency",
                    self.failures(),
                    self.count
                )
            })
        };
        match stat {
            Stat::Count => Ok(self.count as f64),
            Stat::Successes => Ok(self.successes as f64),
            Stat::Failures => Ok(self.failures() as f64),
            Stat::SuccessRate => Ok(self.successes as f64 / self.count as f64),
            Stat::LossRate => Ok(self.failures() as f64 / self.count as f64),
            Stat::Min => latency(&|r| r.first().copied()),
            Stat::Max => latency(&|r| r.last().copied()),
            Stat::Mean => {
                latency(&|r| (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64))
            }
            Stat::P50 | Stat::P90 | Stat::P95 | Stat::P99 | Stat::P999 => {
                let q = stat.quantile().unwrap_or(1.0);
                latency(&|r| percentile(r, q))
            }
            Stat::Value => Err("`value` applies to metric assertions, not probes".into()),
        }
    }
}

fn fmt_window((from, to): (Duration, Duration)) -> String {
    format!("{}..{}", Dur(from), Dur(to))
}

/// Judges a probe assertion over the samples whose start lies in `window` (`[from, to)`).
/// `reference` holds the samples of the probe a relative expectation names
/// (`p50 < lan.p50 + 41ms`), judged over the same window; it is ignored otherwise.
pub fn judge_probe(
    name: &str,
    samples: &[Sample],
    window: (Duration, Duration),
    expect: &Expectation,
    reference: Option<&[Sample]>,
) -> Verdict {
    let st = ProbeStats::collect(samples, window);
    let win = fmt_window(window);
    let mut detail = format!(
        "{} of {} attempts succeeded in {win}",
        st.successes, st.count
    );
    if let Some((err, n)) = st.errors.first() {
        detail.push_str(&format!("; most common failure: {err} ({n}×)"));
    }
    let mut expected = expect.to_string();
    // The bound: fixed, or computed from the referenced probe over the same window.
    let bound = match (expect.fixed(), expect.reference()) {
        (Some(t), _) => Ok(t),
        (None, Some(r)) => match reference {
            None => Err(format!(
                "probe `{}` has no samples to compare with",
                r.probe
            )),
            Some(ref_samples) => {
                let rs = ProbeStats::collect(ref_samples, window);
                match rs.stat(r.stat) {
                    Ok(v) => {
                        let b = r.bound(v);
                        expected = format!("{expected} = {}", format_observed(expect.stat, b));
                        detail.push_str(&format!(
                            "; {}.{} = {} over {} samples",
                            r.probe,
                            r.stat.name(),
                            format_observed(r.stat, v),
                            rs.count
                        ));
                        Ok(b)
                    }
                    Err(why) => Err(format!("the reference `{}`: {why}", r.probe)),
                }
            }
        },
        (None, None) => Err("the expectation has no bound".to_string()),
    };
    let (passed, observed, observed_text) = match st.stat(expect.stat) {
        Ok(v) => match bound {
            Ok(b) => (
                expect.op.holds(v, b),
                Some(v),
                format_observed(expect.stat, v),
            ),
            Err(why) => {
                detail = format!("{why}; {detail}");
                (false, Some(v), format_observed(expect.stat, v))
            }
        },
        Err(why) => {
            detail = if st.count == 0 {
                format!("{why} {win}: the probe made no attempt there")
            } else {
                format!("{why}; {detail}")
            };
            (false, None, "-".to_string())
        }
    };
    Verdict {
        name: name.to_string(),
        passed,
        observed,
        observed_text,
        expected,
        window: Some(win),
        span: Some([window.0.as_secs_f64(), window.1.as_secs_f64()]),
        samples: st.count,
        detail,
    }
}

fn aggregate_name(a: Aggregate) -> &'static str {
    match a {
        Aggregate::Sum => "sum",
        Aggregate::Max => "max",
        Aggregate::Min => "min",
        Aggregate::Avg => "avg",
        Aggregate::Distinct => "distinct values of",
    }
}

/// Judges a metric assertion from the values read from every matching series of every
/// instance (`Err` when they could not be read), folded by `aggregate`. The caller sets
/// `window` (the instant it read them) when it knows it.
pub fn judge_metric(
    name: &str,
    values: Result<Vec<f64>, String>,
    aggregate: Aggregate,
    expect: &Expectation,
) -> Verdict {
    let mut v = Verdict {
        name: name.to_string(),
        passed: false,
        observed: None,
        observed_text: "-".to_string(),
        expected: expect.to_string(),
        window: None,
        span: None,
        samples: 0,
        detail: String::new(),
    };
    let values = match values {
        Ok(values) => values,
        Err(e) => {
            v.detail = format!("metric not read: {e}");
            return v;
        }
    };
    v.samples = values.len();
    let Some(x) = crate::probe::scrape::aggregate(&values, aggregate) else {
        v.detail = "no value to compare: no series matched".into();
        return v;
    };
    v.observed = Some(x);
    v.observed_text = format_observed(expect.stat, x);
    let Some(bound) = expect.fixed() else {
        v.detail = "a metric assertion compares with a fixed number".into();
        return v;
    };
    v.passed = !x.is_nan() && expect.op.holds(x, bound);
    v.detail = if x.is_nan() {
        "the metric is NaN".to_string()
    } else if values.len() == 1 {
        "1 series".to_string()
    } else {
        format!("{} of {} series", aggregate_name(aggregate), values.len())
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::expect::parse_expectation;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn ok(t: u64, rtt_ms: u64) -> Sample {
        Sample {
            t: ms(t),
            ok: true,
            rtt: Some(ms(rtt_ms)),
            error: None,
            seq: None,
        }
    }

    fn fail(t: u64, why: &str) -> Sample {
        Sample {
            t: ms(t),
            ok: false,
            rtt: None,
            error: Some(why.to_string()),
            seq: None,
        }
    }

    fn exp(s: &str) -> Expectation {
        parse_expectation(s, false).unwrap()
    }

    fn all() -> (Duration, Duration) {
        (Duration::ZERO, Duration::from_secs(3600))
    }

    /// 100 samples at 0..10 s: RTT 1..=100 ms; the ones at 5 s..6 s failed.
    fn hundred() -> Vec<Sample> {
        (0..100u64)
            .map(|i| {
                if (50..60).contains(&i) {
                    fail(i * 100, "no echo reply within 1s")
                } else {
                    ok(i * 100, i + 1)
                }
            })
            .collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.999), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.51), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn rates_and_counts_over_the_window_only() {
        let s = hundred();
        let v = judge_probe(
            "w",
            &s,
            (Duration::from_secs(4), Duration::from_secs(7)),
            &exp("success_rate >= 66%"),
            None,
        );
        // 4.0 s .. 6.9 s: 30 samples, 10 failed.
        assert_eq!(v.samples, 30);
        assert!((v.observed.unwrap() - 20.0 / 30.0).abs() < 1e-12);
        assert!(v.passed, "{v:?}");
        assert_eq!(v.observed_text, "66.667%");
        assert_eq!(v.window.as_deref(), Some("4s..7s"));
        assert!(
            v.detail.contains("20 of 30 attempts succeeded in 4s..7s"),
            "{}",
            v.detail
        );
        assert!(
            v.detail.contains("no echo reply within 1s (10×)"),
            "{}",
            v.detail
        );

        let v = judge_probe("w", &s, all(), &exp("loss_rate == 10%"), None);
        assert!(v.passed, "{v:?}");
        let v = judge_probe("w", &s, all(), &exp("failures == 10"), None);
        assert!(v.passed && v.observed_text == "10", "{v:?}");
        let v = judge_probe("w", &s, all(), &exp("count > 100"), None);
        assert!(!v.passed && v.observed == Some(100.0), "{v:?}");
        let v = judge_probe("w", &s, all(), &exp("successes == 90"), None);
        assert!(v.passed);
        // The window is half-open: a sample exactly at `to` is not in it.
        let v = judge_probe("w", &s, (ms(0), ms(100)), &exp("count == 1"), None);
        assert!(v.passed, "{v:?}");
    }

    #[test]
    fn latency_over_successful_samples_only() {
        let s = hundred();
        // Successful RTTs: 1..=50 and 61..=100 ms (90 values). p50 → rank 45 → 45 ms.
        let v = judge_probe("l", &s, all(), &exp("p50 < 46ms"), None);
        assert!(v.passed, "{v:?}");
        assert!((v.observed.unwrap() - 0.045).abs() < 1e-12);
        assert_eq!(v.observed_text, "45.000ms");
        // p99 → rank ceil(89.1) = 90 → 100 ms.
        let v = judge_probe("l", &s, all(), &exp("p99 <= 99ms"), None);
        assert!(!v.passed);
        assert!((v.observed.unwrap() - 0.100).abs() < 1e-12);
        let v = judge_probe("l", &s, all(), &exp("min == 1ms"), None);
        assert!(v.passed, "{v:?}");
        let v = judge_probe("l", &s, all(), &exp("max == 100ms"), None);
        assert!(v.passed, "{v:?}");
        let mean = ((1..=50).sum::<u64>() + (61..=100).sum::<u64>()) as f64 / 90.0 / 1000.0;
        let v = judge_probe("l", &s, all(), &exp("mean < 1s"), None);
        assert!((v.observed.unwrap() - mean).abs() < 1e-12 && v.passed);
    }

    #[test]
    fn relative_expectations_take_their_bound_from_the_reference_over_the_same_window() {
        let s = hundred();
        // The reference: 2 ms RTT, except 10 ms from 5 s on (outside the first window).
        let lan: Vec<Sample> = (0..100u64)
            .map(|i| ok(i * 100, if i >= 50 { 10 } else { 2 }))
            .collect();
        // 0..5 s: p50 of 1..=50 ms is 25 ms; lan.p50 = 2 ms, so the bound is 2 + 24 = 26 ms.
        let w = (Duration::ZERO, Duration::from_secs(5));
        let v = judge_probe("r", &s, w, &exp("p50 < lan.p50 + 24ms"), Some(&lan));
        assert!(v.passed, "{v:?}");
        assert_eq!(v.expected, "p50 < lan.p50 + 24ms = 26.000ms");
        assert!(
            v.detail.contains("lan.p50 = 2.000ms over 50 samples"),
            "{}",
            v.detail
        );
        let v = judge_probe("r", &s, w, &exp("p50 < lan.p50 + 22ms"), Some(&lan));
        assert!(!v.passed, "{v:?}");
        // Over everything, lan.p50 is 2 ms still (rank 50 of 100) but its max is 10 ms.
        let v = judge_probe("r", &s, all(), &exp("max <= 10 * lan.max"), Some(&lan));
        assert!(v.passed, "{v:?}");
        let v = judge_probe(
            "r",
            &s,
            all(),
            &exp("success_rate >= 0.95 * lan.success_rate"),
            Some(&lan),
        );
        assert!(!v.passed, "90% is below 95% of 100%: {v:?}");
        // A reference without samples in the window never passes.
        let late = (Duration::from_secs(5), Duration::from_secs(6));
        let empty: Vec<Sample> = Vec::new();
        let v = judge_probe("r", &s, late, &exp("count >= lan.count"), Some(&empty));
        assert!(!v.passed);
        assert!(
            v.detail.contains("the reference `lan`: no probe samples"),
            "{}",
            v.detail
        );
        let v = judge_probe("r", &s, late, &exp("count >= lan.count"), None);
        assert!(
            !v.passed && v.detail.contains("no samples to compare with"),
            "{v:?}"
        );
    }

    #[test]
    fn empty_window_fails_clearly() {
        let s = hundred();
        let w = (Duration::from_secs(20), Duration::from_secs(30));
        // Even an expectation that an empty set would satisfy must not pass.
        for e in [
            "success_rate == 0%",
            "count == 0",
            "failures == 0",
            "p99 < 1s",
        ] {
            let v = judge_probe("e", &s, w, &exp(e), None);
            assert!(!v.passed, "{e}");
            assert_eq!(v.observed, None);
            assert_eq!(v.observed_text, "-");
            assert_eq!(v.samples, 0);
            assert!(
                v.detail.contains("no probe samples in the window 20s..30s"),
                "{}",
                v.detail
            );
        }
    }

    #[test]
    fn latency_without_success_fails_and_says_so() {
        let s: Vec<Sample> = (0..5)
            .map(|i| fail(i * 200, "connection refused"))
            .collect();
        let v = judge_probe("x", &s, all(), &exp("p99 < 150ms"), None);
        assert!(!v.passed);
        assert_eq!(v.samples, 5);
        assert!(v.detail.contains("no successful attempt"), "{}", v.detail);
        assert!(v.detail.contains("5 of 5 failed"), "{}", v.detail);
        assert!(v.detail.contains("connection refused (5×)"), "{}", v.detail);
        // The rate statistics are still defined.
        let v = judge_probe("x", &s, all(), &exp("success_rate == 0%"), None);
        assert!(v.passed, "{v:?}");
        // Rendering is `format_observed`'s business; the verdict must use it.
        assert_eq!(v.observed_text, format_observed(Stat::SuccessRate, 0.0));
    }

    #[test]
    fn metrics_are_aggregated_and_compared() {
        let e = parse_expectation("== 0", true).unwrap();
        let v = judge_metric("m", Ok(vec![0.0, 0.0, 0.0]), Aggregate::Sum, &e);
        assert!(v.passed && v.samples == 3, "{v:?}");
        assert_eq!(v.detail, "sum of 3 series");
        assert_eq!(v.expected, "value == 0");
        let v = judge_metric("m", Ok(vec![0.0, 2.0]), Aggregate::Sum, &e);
        assert!(!v.passed && v.observed == Some(2.0) && v.observed_text == "2");
        let e = parse_expectation("value >= 10", true).unwrap();
        let v = judge_metric("m", Ok(vec![4.0, 12.0]), Aggregate::Max, &e);
        assert!(v.passed);
        let v = judge_metric("m", Ok(vec![4.0, 12.0]), Aggregate::Avg, &e);
        assert!(!v.passed && v.observed == Some(8.0));
        let v = judge_metric("m", Ok(vec![2.5]), Aggregate::Min, &e);
        assert_eq!(
            (v.observed_text.as_str(), v.detail.as_str()),
            ("2.5", "1 series")
        );
    }

    #[test]
    fn unreadable_empty_or_nan_metrics_fail() {
        let e = parse_expectation("!= 1", true).unwrap();
        let v = judge_metric("m", Err("connection refused".into()), Aggregate::Sum, &e);
        assert!(!v.passed && v.observed.is_none());
        assert_eq!(v.detail, "metric not read: connection refused");
        let v = judge_metric("m", Ok(vec![]), Aggregate::Sum, &e);
        assert!(!v.passed && v.detail.contains("no series"));
        let v = judge_metric("m", Ok(vec![f64::NAN]), Aggregate::Sum, &e);
        assert!(!v.passed && v.detail.contains("NaN"), "{v:?}");
    }
}
