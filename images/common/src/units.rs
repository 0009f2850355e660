//! Parsing of the human-friendly quantities the workloads take as flags: durations such as
//! `200ms`, `30s`, `1.5s`, `2m`, and byte sizes such as `64MiB`, `512KiB`, `1GB`, `4096`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A malformed quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{input}`: {hint}")]
pub struct ParseError {
    kind: &'static str,
    input: String,
    hint: &'static str,
}

/// A duration flag value (`clap` parses it through [`FromStr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else if self.0.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}us", self.0.as_micros())
        }
    }
}

/// Parses `<number><unit>` with unit `ns`, `us`, `ms`, `s`, `m` or `h`; the number may have a
/// fraction (`1.5s`). A bare `0` is accepted; other bare numbers are rejected as ambiguous.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let err = |hint| ParseError {
        kind: "duration",
        input: s.to_string(),
        hint,
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| err("add a unit: ns, us, ms, s, m or h (e.g. 200ms)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| err("expected a number before the unit"))?;
    let secs_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err("unknown unit; use ns, us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(n * secs_per_unit).map_err(|_| err("out of range"))
}

/// A byte-size flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl FromStr for Bytes {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map(Bytes)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{name}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses a size: a plain byte count, or a number with `B`, `KB`/`MB`/`GB` (powers of 1000),
/// `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, ParseError> {
    let err = |hint| ParseError {
        kind: "size",
        input: s.to_string(),
        hint,
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| err("expected a number, e.g. 64MiB"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "K" | "KiB" | "k" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err("unknown unit; use B, KiB, MiB, GiB, KB, MB or GB")),
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(err("out of range"));
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        assert_eq!(Dur(Duration::from_millis(200)).to_string(), "200ms");
        assert_eq!(Dur(Duration::from_secs(30)).to_string(), "30s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("512K").unwrap(), 512 << 10);
        assert!(parse_bytes("12 parsecs").is_err());
        assert_eq!(Bytes(64 << 20).to_string(), "64MiB");
    }
}
