//! The small language of `expect:` in assertions, and probe windows (`during: 16s..34s`).
//!
//! ```text
//! expect  := [stat] op value
//! stat    := success_rate | loss_rate | p50 | p90 | p95 | p99 | p999 | min | max | mean
//!          | count | successes | failures | value
//! op      := == | != | < | <= | > | >=
//! value   := number [ % | us | ms | s | m ]
//! ```
//! Probe assertions must name a statistic; metric assertions compare the metric's value
//! (`value` may be written or left out). Rates take a percentage, latencies a duration, counts
//! and metric values a bare number — a mismatch is an input error, caught before the run.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::units::{Dur, Percent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    SuccessRate,
    LossRate,
    P50,
    P90,
    P95,
    P99,
    P999,
    Min,
    Max,
    Mean,
    Count,
    Successes,
    Failures,
    Value,
}

impl Stat {
    pub const PROBE_NAMES: [&'static str; 13] = [
        "success_rate",
        "loss_rate",
        "p50",
        "p90",
        "p95",
        "p99",
        "p999",
        "min",
        "max",
        "mean",
        "count",
        "successes",
        "failures",
    ];

    fn parse(s: &str) -> Option<Stat> {
        Some(match s {
            "success_rate" => Stat::SuccessRate,
            "loss_rate" => Stat::LossRate,
            "p50" | "median" => Stat::P50,
            "p90" => Stat::P90,
            "p95" => Stat::P95,
            "p99" => Stat::P99,
            "p999" => Stat::P999,
            "min" => Stat::Min,
            "max" => Stat::Max,
            "mean" | "avg" => Stat::Mean,
            "count" => Stat::Count,
            "successes" => Stat::Successes,
            "failures" => Stat::Failures,
            "value" => Stat::Value,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Stat::SuccessRate => "success_rate",
            Stat::LossRate => "loss_rate",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::P999 => "p999",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Mean => "mean",
            Stat::Count => "count",
            Stat::Successes => "successes",
            Stat::Failures => "failures",
            Stat::Value => "value",
        }
    }

    /// The kind of value this statistic is compared with.
    pub fn unit(self) -> UnitKind {
        match self {
            Stat::SuccessRate | Stat::LossRate => UnitKind::Percent,
            Stat::P50
            | Stat::P90
            | Stat::P95
            | Stat::P99
            | Stat::P999
            | Stat::Min
            | Stat::Max
            | Stat::Mean => UnitKind::Duration,
            Stat::Count | Stat::Successes | Stat::Failures | Stat::Value => UnitKind::Number,
        }
    }

    /// The quantile of a latency statistic (`p99` → 0.99), `None` for the others.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Stat::P50 => Some(0.50),
            Stat::P90 => Some(0.90),
            Stat::P95 => Some(0.95),
            Stat::P99 => Some(0.99),
            Stat::P999 => Some(0.999),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    Percent,
    Duration,
    Number,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    pub fn holds(self, observed: f64, expected: f64) -> bool {
        // Percentages and durations go through floating point: compare with a tolerance far
        // below anything a user could write, so `success_rate == 100%` means exactly all.
        let eps = 1e-9 * expected.abs().max(1.0);
        match self {
            Op::Eq => (observed - expected).abs() <= eps,
            Op::Ne => (observed - expected).abs() > eps,
            Op::Lt => observed < expected - eps,
            Op::Le => observed <= expected + eps,
            Op::Gt => observed > expected + eps,
            Op::Ge => observed >= expected - eps,
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A threshold with its unit. Percent as a fraction, durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Percent(Percent),
    Duration(Dur),
    Number(f64),
}

impl Threshold {
    /// The threshold in the unit statistics are computed in (fraction, seconds, number).
    pub fn as_f64(self) -> f64 {
        match self {
            Threshold::Percent(p) => p.fraction(),
            Threshold::Duration(d) => d.as_secs_f64(),
            Threshold::Number(n) => n,
        }
    }
    fn kind(self) -> UnitKind {
        match self {
            Threshold::Percent(_) => UnitKind::Percent,
            Threshold::Duration(_) => UnitKind::Duration,
            Threshold::Number(_) => UnitKind::Number,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Percent(p) => p.fmt(f),
            Threshold::Duration(d) => d.fmt(f),
            Threshold::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A parsed `expect:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub stat: Stat,
    pub op: Op,
    pub threshold: Threshold,
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.stat.name(),
            self.op.symbol(),
            self.threshold
        )
    }
}

impl Serialize for Expectation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Renders a statistic's observed value in the statistic's unit (`97.5%`, `12.3ms`, `42`).
pub fn format_observed(stat: Stat, v: f64) -> String {
    match stat.unit() {
        UnitKind::Percent => {
            let s = format!("{:.3}", v * 100.0);
            format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
        }
        UnitKind::Duration => {
            if v < 1e-3 {
                format!("{:.1}us", v * 1e6)
            } else if v < 10.0 {
                format!("{:.3}ms", v * 1e3)
            } else {
                format!("{v:.3}s")
            }
        }
        UnitKind::Number => {
            if v.fract() == 0.0 {
                format!("{}", v as i64)
            } else {
                format!("{v}")
            }
        }
    }
}

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    let s = s.trim();
    if s.ends_with('%') {
        return s
            .parse::<Percent>()
            .map(Threshold::Percent)
            .map_err(|e| e.0);
    }
    if let Ok(n) = s.parse::<f64>() {
        return Ok(Threshold::Number(n));
    }
    s.parse::<Dur>()
        .map(Threshold::Duration)
        .map_err(|_| format!("`{s}` is not a number, a percentage or a duration"))
}

/// Parses an `expect:` string. `metric` selects the metric form, where the statistic is
/// optional and must be `value`.
pub fn parse_expectation(s: &str, metric: bool) -> Result<Expectation, (String, Option<String>)> {
    let s = s.trim();
    let op_at = s.find(['=', '!', '<', '>']).ok_or_else(|| {
        (
            format!("`{s}` has no comparison"),
            Some(if metric {
                "write e.g. `== 0` or `<= 100`".to_string()
            } else {
                "write e.g. `success_rate >= 99%` or `p99 < 150ms`".to_string()
            }),
        )
    })?;
    let (lhs, rest) = s.split_at(op_at);
    let (op, rhs) = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ]
    .iter()
    .find_map(|(sym, op)| rest.strip_prefix(sym).map(|r| (*op, r)))
    .ok_or_else(|| {
        (
            format!("unknown comparison in `{s}`"),
            Some("comparisons: ==, !=, <, <=, >, >=".to_string()),
        )
    })?;
    let lhs = lhs.trim();
    let stat = if lhs.is_empty() {
        if metric {
            Stat::Value
        } else {
            return Err((
                format!("`{s}` does not say which statistic to compare"),
                Some(format!("statistics: {}", Stat::PROBE_NAMES.join(", "))),
            ));
        }
    } else {
        let st = Stat::parse(lhs).ok_or_else(|| {
            let names: Vec<&str> = if metric {
                vec!["value"]
            } else {
                Stat::PROBE_NAMES.to_vec()
            };
            (
                format!("unknown statistic `{lhs}`"),
                super::diag::unknown_hint(lhs, "statistics", &names),
            )
        })?;
        if metric && st != Stat::Value {
            return Err((
                format!("a metric assertion compares the metric's value, not `{lhs}`"),
                Some("write e.g. `== 0` or `value >= 10`".into()),
            ));
        }
        if !metric && st == Stat::Value {
            return Err((
                "`value` is for metric assertions; a probe assertion names a statistic".into(),
                Some(format!("statistics: {}", Stat::PROBE_NAMES.join(", "))),
            ));
        }
        st
    };
    let threshold = parse_threshold(rhs).map_err(|e| (e, None))?;
    let want = stat.unit();
    if threshold.kind() != want {
        let example = match want {
            UnitKind::Percent => "a percentage such as `99%`",
            UnitKind::Duration => "a duration such as `150ms`",
            UnitKind::Number => "a plain number",
        };
        return Err((
            format!(
                "`{}` is compared with {example}, not `{}`",
                stat.name(),
                rhs.trim()
            ),
            None,
        ));
    }
    Ok(Expectation {
        stat,
        op,
        threshold,
    })
}

/// One end of a probe window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Start,
    End,
    At(#[serde(serialize_with = "ser_dur")] Duration),
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Dur(*d))
}

/// A window of the timeline, `FROM..TO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: Bound,
    pub to: Bound,
}

impl Window {
    pub const ALL: Window = Window {
        from: Bound::Start,
        to: Bound::End,
    };

    /// Resolves the window against a timeline of length `duration`.
    pub fn resolve(self, duration: Duration) -> (Duration, Duration) {
        let r = |b| match b {
            Bound::Start => Duration::ZERO,
            Bound::End => duration,
            Bound::At(d) => d,
        };
        (r(self.from), r(self.to))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = |b: Bound| match b {
            Bound::Start => "start".to_string(),
            Bound::End => "end".to_string(),
            Bound::At(d) => Dur(d).to_string(),
        };
        write!(f, "{}..{}", b(self.from), b(self.to))
    }
}

pub fn parse_bound(s: &str) -> Result<Bound, String> {
    match s.trim() {
        "start" => Ok(Bound::Start),
        "end" => Ok(Bound::End),
        t => t.parse::<Dur>().map(|d| Bound::At(d.0)).map_err(|e| e.0),
    }
}

pub fn parse_window(s: &str) -> Result<Window, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not a window: write `FROM..TO`, e.g. `16s..34s`"))?;
    let w = Window {
        from: parse_bound(a)?,
        to: parse_bound(b)?,
    };
    if let (Bound::At(x), Bound::At(y)) = (w.from, w.to)
        && y <= x
    {
        return Err(format!("window `{s}` ends before it starts"));
    }
    if w.from == Bound::End || w.to == Bound::Start {
        return Err(format!("window `{s}` is empty"));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_expectations() {
        let e = parse_expectation("success_rate >= 99%", false).unwrap();
        assert_eq!(e.stat, Stat::SuccessRate);
        assert_eq!(e.op, Op::Ge);
        assert!((e.threshold.as_f64() - 0.99).abs() < 1e-12);
        let e = parse_expectation("p99<150ms", false).unwrap();
        assert_eq!((e.stat, e.op), (Stat::P99, Op::Lt));
        assert!((e.threshold.as_f64() - 0.150).abs() < 1e-12);
        assert_eq!(e.to_string(), "p99 < 150ms");
        assert!(parse_expectation("success_rate == 0%", false).is_ok());
        assert!(parse_expectation("count > 10", false).is_ok());
    }

    #[test]
    fn rejects_mismatched_units_and_unknown_stats() {
        assert!(
            parse_expectation("p99 < 99%", false)
                .unwrap_err()
                .0
                .contains("duration")
        );
        assert!(parse_expectation("success_rate > 5ms", false).is_err());
        let (m, h) = parse_expectation("sucess_rate > 5%", false).unwrap_err();
        assert!(m.contains("unknown statistic"));
        assert!(h.unwrap().contains("did you mean `success_rate`"));
        assert!(parse_expectation("== 0", false).is_err());
        assert!(parse_expectation("p99 150ms", false).is_err());
    }

    #[test]
    fn parses_metric_expectations() {
        let e = parse_expectation("== 0", true).unwrap();
        assert_eq!((e.stat, e.op), (Stat::Value, Op::Eq));
        assert!(parse_expectation("value >= 10", true).is_ok());
        assert!(parse_expectation("p99 >= 10ms", true).is_err());
    }

    #[test]
    fn comparisons_hold_exactly() {
        assert!(Op::Eq.holds(1.0, 1.0));
        assert!(!Op::Eq.holds(0.999, 1.0));
        assert!(Op::Ge.holds(0.99, 0.99));
        assert!(!Op::Lt.holds(0.15, 0.15));
    }

    #[test]
    fn windows() {
        let w = parse_window("16s..34s").unwrap();
        assert_eq!(
            w.resolve(Duration::from_secs(60)),
            (Duration::from_secs(16), Duration::from_secs(34))
        );
        assert_eq!(
            parse_window("start..end")
                .unwrap()
                .resolve(Duration::from_secs(9)),
            (Duration::ZERO, Duration::from_secs(9))
        );
        assert!(parse_window("34s..16s").is_err());
        assert!(parse_window("16s-34s").is_err());
        assert_eq!(parse_window("10s..end").unwrap().to_string(), "10s..end");
    }
}
