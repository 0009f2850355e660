//! Quantities with units, as written in scenarios and profiles.
//!
//! Every quantity a user writes is a string with a unit: `150ms`, `0.5%`, `20mbit`, `512Mi`.
//! The types here parse those strings (so a bad unit is a deserialisation error that carries
//! the YAML location), print them back in the same notation, and describe themselves in the
//! JSON Schema that `edgesim schema` emits. Plain numbers are accepted where the meaning is
//! unambiguous (bytes, and percentages given as a bare number are refused so `loss: 1` is never
//! read as 100%).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Error for a quantity that does not parse; the message names the accepted units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '_'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    if num.is_empty() {
        return None;
    }
    let num: f64 = num.replace('_', "").parse().ok()?;
    if !num.is_finite() {
        return None;
    }
    Some((num, unit.trim()))
}

/// Formats `v` without a trailing `.0`, keeping up to six decimals.
fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

macro_rules! string_serde {
    ($ty:ident, $expecting:expr, $pattern:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(|e: UnitError| E::custom(e.0))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        $ty::from_bare_number(v as f64).map_err(|e| E::custom(e.0))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        $ty::from_bare_number(v as f64).map_err(|e| E::custom(e.0))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        $ty::from_bare_number(v).map_err(|e| E::custom(e.0))
                    }
                }
                d.deserialize_any(V)
            }
        }

        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "description": $expecting,
                })
            }
        }
    };
}

/// A span of time: `500us`, `150ms`, `2s`, `1.5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);

    pub fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn as_duration(self) -> Duration {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
    fn from_bare_number(v: f64) -> Result<Self, UnitError> {
        if v == 0.0 {
            Ok(Dur::ZERO)
        } else {
            Err(UnitError(format!(
                "a duration needs a unit: write `{}s` or `{}ms` (units: us, ms, s, m, h)",
                fmt_num(v),
                fmt_num(v)
            )))
        }
    }
}

impl FromStr for Dur {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid duration `{s}`: expected a number and a unit, e.g. `150ms`, `2s`, `1m` (units: us, ms, s, m, h)"
            ))
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let secs = match unit {
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "" if n == 0.0 => 0.0,
            _ => return Err(bad()),
        };
        if secs > 1e9 {
            return Err(UnitError(format!("duration `{s}` is too long")));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            f.write_str("0s")
        } else if ns.is_multiple_of(1_000_000_000) {
            let s = ns / 1_000_000_000;
            if s.is_multiple_of(60) && s >= 60 {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{}ms", fmt_num(ns as f64 / 1e6))
        }
    }
}

/// An offset into a run, for people: seconds with millisecond precision (`10.194s`), so a
/// column of times lines up and a seeded flap's offsets do not print to the nanosecond. Plans
/// and reports in JSON keep exact values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub Duration);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rounded to the nearest millisecond.
        let ms = (self.0.as_nanos() + 500_000) / 1_000_000;
        let text = format!("{}.{:03}s", ms / 1000, ms % 1000);
        f.pad(&text)
    }
}

string_serde!(
    Dur,
    "a duration such as `150ms`, `2s`, `1m` (units: us, ms, s, m, h)",
    r"^\s*[0-9][0-9_.]*\s*(us|µs|ms|s|m|min|h)?\s*$"
);

/// A percentage in `0%..=100%`, e.g. `0.5%`. Stored as a fraction in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    pub const ZERO: Percent = Percent(0.0);
    pub const HUNDRED: Percent = Percent(1.0);

    /// From a fraction in `0.0..=1.0`.
    pub fn from_fraction(f: f64) -> Result<Self, UnitError> {
        if (0.0..=1.0).contains(&f) {
            Ok(Percent(f))
        } else {
            Err(UnitError(format!(
                "percentage {}% is outside 0%..100%",
                fmt_num(f * 100.0)
            )))
        }
    }
    pub fn fraction(self) -> f64 {
        self.0
    }
    pub fn percent(self) -> f64 {
        self.0 * 100.0
    }
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }
    fn from_bare_number(v: f64) -> Result<Self, UnitError> {
        if v == 0.0 {
            Ok(Percent::ZERO)
        } else {
            Err(UnitError(format!(
                "a percentage needs the `%` sign: write `{}%`",
                fmt_num(v)
            )))
        }
    }
}

impl FromStr for Percent {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid percentage `{s}`: expected e.g. `0.5%` or `100%`"
            ))
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        match unit {
            "%" => Percent::from_fraction(n / 100.0),
            "" if n == 0.0 => Ok(Percent::ZERO),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", fmt_num(self.0 * 100.0))
    }
}

string_serde!(
    Percent,
    "a percentage such as `0.5%`",
    r"^\s*[0-9][0-9_.]*\s*%\s*$"
);

/// A bit rate: `500kbit`, `20mbit`, `1gbit` (decimal multiples, as `tc` uses), or `bit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rate(pub u64);

impl Rate {
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }
    pub fn bytes_per_sec(self) -> u64 {
        self.0 / 8
    }
    fn from_bare_number(v: f64) -> Result<Self, UnitError> {
        Err(UnitError(format!(
            "a rate needs a unit: write e.g. `{}mbit` (units: bit, kbit, mbit, gbit)",
            fmt_num(v)
        )))
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid rate `{s}`: expected e.g. `20mbit` (units: bit, kbit, mbit, gbit; `bps`-style byte rates are not accepted)"
            ))
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mult = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            _ => return Err(bad()),
        };
        let bits = n * mult;
        if !(8.0..=4e11).contains(&bits) {
            return Err(UnitError(format!(
                "rate `{s}` is out of range (8bit..400gbit)"
            )));
        }
        Ok(Rate(bits.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if b >= 1e9 {
            write!(f, "{}gbit", fmt_num(b / 1e9))
        } else if b >= 1e6 {
            write!(f, "{}mbit", fmt_num(b / 1e6))
        } else if b >= 1e3 {
            write!(f, "{}kbit", fmt_num(b / 1e3))
        } else {
            write!(f, "{}bit", self.0)
        }
    }
}

string_serde!(
    Rate,
    "a bit rate such as `20mbit` (units: bit, kbit, mbit, gbit)",
    r"^\s*[0-9][0-9_.]*\s*([kKmMgG]?[bB][iI][tT])\s*$"
);

/// A size in bytes: `512Mi`, `8Gi`, `64Ki`, `1Ti`, `500M` (decimal), or a bare byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn get(self) -> u64 {
        self.0
    }
    fn from_bare_number(v: f64) -> Result<Self, UnitError> {
        if v.fract() == 0.0 && v >= 0.0 {
            Ok(Bytes(v as u64))
        } else {
            Err(UnitError(format!("invalid byte count {v}")))
        }
    }
}

impl FromStr for Bytes {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || {
            UnitError(format!(
                "invalid size `{s}`: expected e.g. `512Mi` or `8Gi` (units: Ki, Mi, Gi, Ti; k, M, G, T)"
            ))
        };
        let (n, unit) = split_number(s).ok_or_else(bad)?;
        let mult: f64 = match unit {
            "" | "B" => 1.0,
            "Ki" | "KiB" => 1024.0,
            "Mi" | "MiB" => 1024.0 * 1024.0,
            "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
            "Ti" | "TiB" => 1024.0f64.powi(4),
            "k" | "K" | "kB" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "T" | "TB" => 1e12,
            _ => return Err(bad()),
        };
        let v = (n * mult).round();
        if v > u64::MAX as f64 / 2.0 {
            return Err(UnitError(format!("size `{s}` is too large")));
        }
        Ok(Bytes(v as u64))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (u, m) in UNITS {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

string_serde!(
    Bytes,
    "a size such as `512Mi` or `8Gi` (units: Ki, Mi, Gi, Ti; k, M, G, T) or a byte count",
    r"^\s*[0-9][0-9_.]*\s*(B|Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB|k|K|kB|M|MB|G|GB|T|TB)?\s*$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_print_to_the_millisecond_and_pad() {
        let at = |ns: u64| Offset(Duration::from_nanos(ns)).to_string();
        assert_eq!(at(10_193_514_967), "10.194s");
        assert_eq!(at(15_000_000_000), "15.000s");
        assert_eq!(at(999_600_000), "1.000s");
        assert_eq!(at(0), "0.000s");
        assert_eq!(
            format!("{:>9}", Offset(Duration::from_millis(1500))),
            "   1.500s"
        );
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("150ms".parse::<Dur>().unwrap(), Dur::from_millis(150));
        assert_eq!("2s".parse::<Dur>().unwrap(), Dur::from_secs(2));
        assert_eq!("1m".parse::<Dur>().unwrap(), Dur::from_secs(60));
        assert_eq!("1.5s".parse::<Dur>().unwrap(), Dur::from_millis(1500));
        assert_eq!(
            "250us".parse::<Dur>().unwrap(),
            Dur(Duration::from_micros(250))
        );
        assert_eq!(Dur::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Dur::from_secs(120).to_string(), "2m");
        assert_eq!(Dur::from_secs(15).to_string(), "15s");
        assert!("15".parse::<Dur>().is_err());
        assert!("15 sec".parse::<Dur>().is_err());
        assert!("ms".parse::<Dur>().is_err());
        assert_eq!("0".parse::<Dur>().unwrap(), Dur::ZERO);
    }

    #[test]
    fn percentages_parse_and_print() {
        let p: Percent = "0.5%".parse().unwrap();
        assert!((p.fraction() - 0.005).abs() < 1e-12);
        assert_eq!(p.to_string(), "0.5%");
        assert!("101%".parse::<Percent>().is_err());
        assert!("5".parse::<Percent>().is_err());
        assert_eq!("100%".parse::<Percent>().unwrap(), Percent::HUNDRED);
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("20mbit".parse::<Rate>().unwrap(), Rate(20_000_000));
        assert_eq!("1.5Gbit".parse::<Rate>().unwrap(), Rate(1_500_000_000));
        assert_eq!("500kbit".parse::<Rate>().unwrap().to_string(), "500kbit");
        assert_eq!(Rate(20_000_000).to_string(), "20mbit");
        assert!("20mbps".parse::<Rate>().is_err());
        assert!("20".parse::<Rate>().is_err());
    }

    #[test]
    fn bytes_parse_and_print() {
        assert_eq!("512Mi".parse::<Bytes>().unwrap(), Bytes(512 << 20));
        assert_eq!("8Gi".parse::<Bytes>().unwrap().to_string(), "8Gi");
        assert_eq!("1.5Gi".parse::<Bytes>().unwrap(), Bytes(1536 << 20));
        assert_eq!("500M".parse::<Bytes>().unwrap(), Bytes(500_000_000));
        assert!("8GB!".parse::<Bytes>().is_err());
        assert!("8 gigs".parse::<Bytes>().is_err());
    }

    #[test]
    fn yaml_errors_carry_the_unit_hint() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            d: Dur,
        }
        let e = serde_saphyr::from_str::<T>("d: 15 sec\n").unwrap_err();
        assert!(e.to_string().contains("units: us, ms, s, m, h"), "{e}");
    }
}
