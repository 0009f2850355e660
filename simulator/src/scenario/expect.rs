//! The small language of `expect:` in assertions, and probe windows (`during: 16s..34s`).
//!
//! ```text
//! expect    := [stat] op rhs
//! stat      := success_rate | loss_rate | p50 | p90 | p95 | p99 | p999 | min | max | mean
//!            | count | successes | failures | value
//! op        := == | != | < | <= | > | >=
//! rhs       := value | [number *] reference [(+ | -) value]
//! reference := probe-name . stat
//! value     := number [ % | us | ms | s | m ]
//! ```
//! Probe assertions must name a statistic; metric assertions compare the metric's value
//! (`value` may be written or left out). Rates take a percentage, latencies a duration, counts
//! and metric values a bare number — a mismatch is an input error, caught before the run.
//!
//! **Relative expectations.** A probe assertion may compare with *another probe's statistic
//! over the same window*: `p50 < lan.p50 + 41ms` says "at most 41 ms slower than the path
//! `lan` measured at the same time", `success_rate >= 0.9 * lan.success_rate` "at least 90 % of
//! what `lan` achieved". A bound measured in the same run carries the host's own overhead (a
//! loaded CI machine, an emulated CPU, a slow kernel), so the verdict judges what the scenario
//! changed, not how fast the host is. The referenced statistic must be in the same unit as the
//! judged one, and the offset too.

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
    pub rhs: Rhs,
}

/// The right-hand side of an expectation: a fixed threshold, or one derived from another
/// probe's statistic over the same window.
#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    Fixed(Threshold),
    Relative(Reference),
}

/// `[scale *] probe.stat [± offset]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub scale: f64,
    pub probe: String,
    pub stat: Stat,
    /// The offset and whether it is subtracted.
    pub offset: Option<(bool, Threshold)>,
}

impl Reference {
    /// The bound for a referenced statistic of `value` (base units).
    pub fn bound(&self, value: f64) -> f64 {
        let off = match self.offset {
            None => 0.0,
            Some((neg, t)) => {
                if neg {
                    -t.as_f64()
                } else {
                    t.as_f64()
                }
            }
        };
        self.scale * value + off
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale != 1.0 {
            write!(f, "{} * ", self.scale)?;
        }
        write!(f, "{}.{}", self.probe, self.stat.name())?;
        if let Some((neg, t)) = &self.offset {
            write!(f, " {} {t}", if *neg { '-' } else { '+' })?;
        }
        Ok(())
    }
}

impl fmt::Display for Rhs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rhs::Fixed(t) => t.fmt(f),
            Rhs::Relative(r) => r.fmt(f),
        }
    }
}

impl Expectation {
    /// The probe whose statistic the bound comes from, if any.
    pub fn reference(&self) -> Option<&Reference> {
        match &self.rhs {
            Rhs::Relative(r) => Some(r),
            Rhs::Fixed(_) => None,
        }
    }

    /// The fixed threshold in base units; `None` for a relative expectation.
    pub fn fixed(&self) -> Option<f64> {
        match &self.rhs {
            Rhs::Fixed(t) => Some(t.as_f64()),
            Rhs::Relative(_) => None,
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.stat.name(), self.op.symbol(), self.rhs)
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
    let unit_error = |what: &str| {
        let example = match stat.unit() {
            UnitKind::Percent => "a percentage such as `99%`",
            UnitKind::Duration => "a duration such as `150ms`",
            UnitKind::Number => "a plain number",
        };
        (
            format!(
                "`{}` is compared with {example}, not `{}`",
                stat.name(),
                what.trim()
            ),
            None,
        )
    };
    if let Some(reference) = parse_reference(rhs).map_err(|e| (e, None))? {
        if metric {
            return Err((
                format!(
                    "a metric assertion compares with a number, not with probe `{}`",
                    reference.probe
                ),
                None,
            ));
        }
        if reference.stat.unit() != stat.unit() {
            return Err((
                format!(
                    "`{}` cannot be compared with `{}.{}`: they are in different units",
                    stat.name(),
                    reference.probe,
                    reference.stat.name()
                ),
                None,
            ));
        }
        if let Some((_, t)) = reference.offset
            && t.kind() != stat.unit()
        {
            return Err(unit_error(&t.to_string()));
        }
        return Ok(Expectation {
            stat,
            op,
            rhs: Rhs::Relative(reference),
        });
    }
    let threshold = parse_threshold(rhs).map_err(|e| (e, None))?;
    if threshold.kind() != stat.unit() {
        return Err(unit_error(rhs));
    }
    Ok(Expectation {
        stat,
        op,
        rhs: Rhs::Fixed(threshold),
    })
}

/// Parses `[number *] probe.stat [(+|-) value]`; `Ok(None)` when `s` holds no reference
/// (a plain threshold).
fn parse_reference(s: &str) -> Result<Option<Reference>, String> {
    let s = s.trim();
    // A reference starts with a probe name (a DNS label: a letter first) followed by `.`.
    let (scale, rest) = match s.split_once(['*', '×']) {
        Some((k, r)) => {
            let k = k.trim();
            let scale = k
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    format!("`{k}` is not a factor: write e.g. `0.9 * lan.success_rate`")
                })?;
            (scale, r.trim())
        }
        None => (1.0, s),
    };
    let name_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(rest.len());
    let name = &rest[..name_end];
    let starts_like_name = name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !starts_like_name || !rest[name_end..].starts_with('.') {
        if scale != 1.0 || s.contains(['*', '×']) {
            return Err(format!(
                "`{s}` multiplies something that is not a probe statistic: write e.g. `0.9 * lan.success_rate`"
            ));
        }
        return Ok(None);
    }
    let after = &rest[name_end + 1..];
    let stat_end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    let stat_word = &after[..stat_end];
    let stat = match Stat::parse(stat_word) {
        Some(Stat::Value) | None => {
            let hint = super::diag::unknown_hint(stat_word, "statistics", &Stat::PROBE_NAMES)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(format!(
                "`{name}.{stat_word}` does not name a probe statistic{hint}"
            ));
        }
        Some(st) => st,
    };
    let tail = after[stat_end..].trim();
    let offset = if tail.is_empty() {
        None
    } else {
        let (neg, v) = if let Some(v) = tail.strip_prefix('+') {
            (false, v)
        } else if let Some(v) = tail.strip_prefix('-') {
            (true, v)
        } else {
            return Err(format!(
                "`{tail}` after `{name}.{stat_word}` is not an offset: write e.g. `{name}.{stat_word} + 5ms`"
            ));
        };
        Some((neg, parse_threshold(v)?))
    };
    Ok(Some(Reference {
        scale,
        probe: name.to_string(),
        stat,
        offset,
    }))
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
        assert!((e.fixed().unwrap() - 0.99).abs() < 1e-12);
        let e = parse_expectation("p99<150ms", false).unwrap();
        assert_eq!((e.stat, e.op), (Stat::P99, Op::Lt));
        assert!((e.fixed().unwrap() - 0.150).abs() < 1e-12);
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
    fn parses_relative_expectations() {
        let e = parse_expectation("p50 < lan.p50 + 41ms", false).unwrap();
        let r = e.reference().unwrap();
        assert_eq!((r.probe.as_str(), r.stat, r.scale), ("lan", Stat::P50, 1.0));
        assert!((r.bound(0.001) - 0.042).abs() < 1e-12);
        assert_eq!(e.to_string(), "p50 < lan.p50 + 41ms");
        let e = parse_expectation("success_rate >= 0.9 * lan-2.success_rate", false).unwrap();
        let r = e.reference().unwrap();
        assert_eq!((r.probe.as_str(), r.scale), ("lan-2", 0.9));
        assert!((r.bound(1.0) - 0.9).abs() < 1e-12);
        assert_eq!(e.to_string(), "success_rate >= 0.9 * lan-2.success_rate");
        let e = parse_expectation("p99<base.p99-1ms", false).unwrap();
        assert!((e.reference().unwrap().bound(0.010) - 0.009).abs() < 1e-12);
        assert_eq!(e.to_string(), "p99 < base.p99 - 1ms");
        let e = parse_expectation("count >= 2 * other.count", false).unwrap();
        assert_eq!(e.reference().unwrap().bound(10.0), 20.0);
        // A plain decimal threshold is not a reference.
        assert!(
            parse_expectation("p50 < 41.5ms", false)
                .unwrap()
                .fixed()
                .is_some()
        );
    }

    #[test]
    fn rejects_bad_relative_expectations() {
        let err = |s: &str| parse_expectation(s, false).unwrap_err().0;
        assert!(err("p50 < lan.success_rate").contains("different units"));
        assert!(err("p50 < lan.p50 + 5%").contains("duration"));
        assert!(err("p50 < lan.p5 + 1ms").contains("does not name a probe statistic"));
        assert!(err("p50 < lan.value").contains("does not name a probe statistic"));
        assert!(err("p50 < lan.p50 5ms").contains("not an offset"));
        assert!(err("p50 < x * lan.p50").contains("not a factor"));
        assert!(err("p50 < 2 * 5ms").contains("not a probe statistic"));
        assert!(
            parse_expectation("== lan.p50", true)
                .unwrap_err()
                .0
                .contains("metric assertion")
        );
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
