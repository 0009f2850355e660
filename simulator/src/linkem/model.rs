//! The user-facing model of a relay's impairments: per-direction ordered rules keyed by
//! (source prefix → destination prefix), each carrying a netem-like [`Impairment`].
//!
//! Units follow [`crate::host::tc`]: times are [`Duration`]s, probabilities fractions in
//! `[0, 1]`, rates bits per second, limits packets. Validation mirrors what `tc … netem`
//! accepts, so a scenario that is valid for the kernel path is valid here and vice versa.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::host::tc::{Distribution, Netem, NetemLoss};

/// Largest jitter netem's arithmetic can carry (`tabledist` takes a signed 32-bit sigma in ns).
pub const MAX_JITTER: Duration = Duration::from_nanos(i32::MAX as u64);
/// Largest delay accepted (far beyond any WAN; keeps every time computation inside `i64` ns).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The name statistics and decision logs use for packets that match no rule.
pub const DEFAULT_RULE: &str = "default";

/// A direction of a relay: from interface `a` to `b`, or back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dir {
    AToB,
    BToA,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::AToB, Dir::BToA];

    /// Stable name, used in RNG stream names, file names and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::AToB => "a-to-b",
            Dir::BToA => "b-to-a",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Dir::AToB => 0,
            Dir::BToA => 1,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packet loss models, as netem has them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    #[default]
    None,
    /// Each packet is lost with `probability`; `correlation` makes successive draws depend on
    /// the previous one exactly as netem's correlated generator does (which, as in netem, also
    /// pulls the realised loss rate towards 50 % for strong correlations).
    Random { probability: f64, correlation: f64 },
    /// Gilbert-Elliott two-state model, `loss gemodel p r 1-h 1-k` in tc terms.
    GilbertElliott {
        /// Good → bad transition probability per packet.
        p: f64,
        /// Bad → good transition probability per packet (mean burst length is `1 / r`).
        r: f64,
        /// Loss probability in the bad state (tc's `1-h`).
        loss_in_bad: f64,
        /// Loss probability in the good state (tc's `1-k`).
        loss_in_good: f64,
    },
}

impl Loss {
    /// Uncorrelated loss with probability `p`.
    pub fn random(p: f64) -> Self {
        Loss::Random {
            probability: p,
            correlation: 0.0,
        }
    }

    /// Gilbert-Elliott with tc's defaults for the omitted parameters: `r = 1 - p`,
    /// loss 100 % in the bad state and 0 % in the good one.
    pub fn gemodel(p: f64) -> Self {
        Loss::GilbertElliott {
            p,
            r: 1.0 - p,
            loss_in_bad: 1.0,
            loss_in_good: 0.0,
        }
    }

    fn is_none(&self) -> bool {
        match *self {
            Loss::None => true,
            Loss::Random { probability, .. } => probability == 0.0,
            Loss::GilbertElliott {
                p, loss_in_good, ..
            } => p == 0.0 && loss_in_good == 0.0,
        }
    }
}

impl From<NetemLoss> for Loss {
    fn from(l: NetemLoss) -> Self {
        match l {
            NetemLoss::Random {
                probability,
                correlation,
            } => Loss::Random {
                probability,
                correlation,
            },
            NetemLoss::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => Loss::GilbertElliott {
                p,
                r: r.unwrap_or(1.0 - p),
                loss_in_bad: loss_in_bad.unwrap_or(1.0),
                loss_in_good: loss_in_good.unwrap_or(0.0),
            },
        }
    }
}

/// What happens to the packets of one path in one direction. The default passes packets
/// untouched.
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Spread of the delay (netem's sigma); shaped by `distribution`.
    pub jitter: Duration,
    pub distribution: Distribution,
    /// Correlation of successive delay draws, fraction.
    pub delay_correlation: f64,
    pub loss: Loss,
    pub duplicate: f64,
    pub duplicate_correlation: f64,
    /// Probability of flipping one random bit of the packet (after the Ethernet header).
    pub corrupt: f64,
    pub corrupt_correlation: f64,
    /// Probability that a candidate packet is sent immediately, ahead of delayed ones.
    pub reorder: f64,
    pub reorder_correlation: f64,
    /// Every `gap`-th packet is a reordering candidate (0 with a reorder means 1, as in tc).
    pub gap: u32,
    /// Serialisation rate in bits per second: packets queue behind each other.
    pub rate: Option<u64>,
    /// Packets that may wait in this path's queue; arrivals beyond are dropped and counted.
    pub limit: u32,
    /// Partition: every packet is dropped.
    pub blocked: bool,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            distribution: Distribution::Uniform,
            delay_correlation: 0.0,
            loss: Loss::None,
            duplicate: 0.0,
            duplicate_correlation: 0.0,
            corrupt: 0.0,
            corrupt_correlation: 0.0,
            reorder: 0.0,
            reorder_correlation: 0.0,
            gap: 0,
            rate: None,
            limit: 1000,
            blocked: false,
        }
    }
}

impl Impairment {
    /// Passes every packet untouched.
    pub fn pass() -> Self {
        Self::default()
    }

    /// Drops every packet (a partition).
    pub fn blocked() -> Self {
        Impairment {
            blocked: true,
            ..Self::default()
        }
    }

    /// A fixed delay and nothing else.
    pub fn delay(d: Duration) -> Self {
        Impairment {
            delay: d,
            ..Self::default()
        }
    }

    /// Whether some decision is taken per packet (loss, duplication, corruption, reordering):
    /// GSO super-frames are then cut into wire-size packets before deciding, so that a 64 KB
    /// frame is never dropped or duplicated as one unit.
    pub fn per_packet(&self) -> bool {
        !self.loss.is_none() || self.duplicate > 0.0 || self.corrupt > 0.0 || self.reorder > 0.0
    }

    /// Whether packets pass untouched and at once (the relay's fast path).
    pub fn is_passthrough(&self) -> bool {
        !self.blocked
            && !self.per_packet()
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate.is_none()
    }

    /// Rejects what netem (or tc) would refuse, with the reason.
    pub fn validate(&self) -> Result<(), String> {
        let mut fractions = vec![
            ("delay correlation", self.delay_correlation),
            ("duplicate", self.duplicate),
            ("duplicate correlation", self.duplicate_correlation),
            ("corrupt", self.corrupt),
            ("corrupt correlation", self.corrupt_correlation),
            ("reorder", self.reorder),
            ("reorder correlation", self.reorder_correlation),
        ];
        match self.loss {
            Loss::None => {}
            Loss::Random {
                probability,
                correlation,
            } => {
                fractions.push(("loss", probability));
                fractions.push(("loss correlation", correlation));
            }
            Loss::GilbertElliott {
                p,
                r,
                loss_in_bad,
                loss_in_good,
            } => {
                fractions.push(("gemodel p", p));
                fractions.push(("gemodel r", r));
                fractions.push(("gemodel loss in bad state", loss_in_bad));
                fractions.push(("gemodel loss in good state", loss_in_good));
            }
        }
        for (what, v) in fractions {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{what} {v} is not a fraction in [0, 1]"));
            }
        }
        if self.delay > MAX_DELAY {
            return Err(format!("delay {:?} exceeds {:?}", self.delay, MAX_DELAY));
        }
        if self.jitter > MAX_JITTER {
            return Err(format!(
                "jitter {:?} exceeds netem's {:?}",
                self.jitter, MAX_JITTER
            ));
        }
        if !matches!(self.distribution, Distribution::Uniform)
            && (self.delay.is_zero() || self.jitter.is_zero())
        {
            return Err("a delay distribution needs both a delay and a jitter".into());
        }
        if let Distribution::Custom(t) = &self.distribution
            && (t.is_empty() || t.len() > crate::host::tc::dist::MAX_DIST)
        {
            return Err(format!(
                "custom distribution has {} values (1..={} allowed)",
                t.len(),
                crate::host::tc::dist::MAX_DIST
            ));
        }
        if self.gap > 0 && self.reorder == 0.0 {
            return Err("gap given without a reorder probability".into());
        }
        if self.reorder > 0.0 && self.delay.is_zero() {
            return Err("reordering needs a delay (packets overtake delayed ones)".into());
        }
        if let Some(r) = self.rate
            && r < 8
        {
            return Err(format!("rate {r} bit/s is below 1 byte/s"));
        }
        if self.limit == 0 {
            return Err("limit 0 would drop every packet (use `blocked` for a partition)".into());
        }
        Ok(())
    }
}

impl From<&Netem> for Impairment {
    /// The same impairment as a kernel netem qdisc would apply (the rate's overheads and the
    /// seed are netem-specific and not carried: linkem seeds itself from the run's seed).
    fn from(n: &Netem) -> Self {
        Impairment {
            delay: n.delay,
            jitter: n.jitter,
            distribution: n.distribution.clone().unwrap_or(Distribution::Uniform),
            delay_correlation: n.delay_correlation,
            loss: n.loss.map(Loss::from).unwrap_or_default(),
            duplicate: n.duplicate,
            duplicate_correlation: n.duplicate_correlation,
            corrupt: n.corrupt,
            corrupt_correlation: n.corrupt_correlation,
            reorder: n.reorder,
            reorder_correlation: n.reorder_correlation,
            gap: n.gap,
            rate: n.rate.map(|r| r.rate),
            limit: n.limit,
            blocked: false,
        }
    }
}

/// One path's impairment: packets from `src` to `dst` (IPv4 prefixes; `None` matches
/// anything, including frames that are not IPv4, such as ARP).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable name: keys the rule's random stream and statistics.
    pub name: String,
    pub src: Option<Ipv4Net>,
    pub dst: Option<Ipv4Net>,
    pub imp: Impairment,
}

impl Rule {
    /// A rule matching every packet.
    pub fn all(name: impl Into<String>, imp: Impairment) -> Self {
        Rule {
            name: name.into(),
            src: None,
            dst: None,
            imp,
        }
    }

    /// Whether a packet with these addresses (`None` for non-IPv4 frames) matches.
    pub fn matches(&self, addrs: Option<(Ipv4Addr, Ipv4Addr)>) -> bool {
        match addrs {
            Some((s, d)) => {
                self.src.is_none_or(|n| n.contains(&s)) && self.dst.is_none_or(|n| n.contains(&d))
            }
            None => self.src.is_none() && self.dst.is_none(),
        }
    }
}

/// The rules of one direction; the first that matches a packet decides its fate, and a
/// packet that matches none passes untouched (counted under [`DEFAULT_RULE`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DirectionConfig {
    pub rules: Vec<Rule>,
}

impl DirectionConfig {
    /// One rule for every packet.
    pub fn all(imp: Impairment) -> Self {
        DirectionConfig {
            rules: vec![Rule::all("all", imp)],
        }
    }

    /// Checks every rule; on error returns the offending rule's name and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            if r.name.is_empty() {
                return Err((r.name.clone(), "a rule needs a name".into()));
            }
            if r.name == DEFAULT_RULE {
                return Err((
                    r.name.clone(),
                    format!("`{DEFAULT_RULE}` is reserved for unmatched packets"),
                ));
            }
            if !seen.insert(r.name.as_str()) {
                return Err((r.name.clone(), "rule names must be unique".into()));
            }
            r.imp.validate().map_err(|e| (r.name.clone(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_mirrors_tc() {
        assert!(Impairment::pass().validate().is_ok());
        let bad = |f: fn(&mut Impairment)| {
            let mut i = Impairment::pass();
            f(&mut i);
            i.validate().unwrap_err()
        };
        assert!(bad(|i| i.duplicate = 1.5).contains("duplicate"));
        assert!(bad(|i| i.gap = 3).contains("gap"));
        assert!(bad(|i| i.reorder = 0.1).contains("delay"));
        assert!(bad(|i| i.distribution = Distribution::Normal).contains("distribution"));
        assert!(bad(|i| i.jitter = Duration::from_secs(3)).contains("jitter"));
        assert!(bad(|i| i.rate = Some(4)).contains("rate"));
        assert!(bad(|i| i.limit = 0).contains("limit"));
        assert!(bad(|i| i.loss = Loss::random(-0.1)).contains("loss"));
    }

    #[test]
    fn rules_match_prefixes_first_wins() {
        let net = |s: &str| Some(s.parse::<Ipv4Net>().unwrap());
        let r = Rule {
            name: "x".into(),
            src: net("10.1.0.0/16"),
            dst: None,
            imp: Impairment::pass(),
        };
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(r.matches(Some((a("10.1.2.3"), a("8.8.8.8")))));
        assert!(!r.matches(Some((a("10.2.2.3"), a("8.8.8.8")))));
        assert!(
            !r.matches(None),
            "prefixed rules never match non-IPv4 frames"
        );
        assert!(Rule::all("y", Impairment::pass()).matches(None));

        let dup = DirectionConfig {
            rules: vec![
                Rule::all("a", Impairment::pass()),
                Rule::all("a", Impairment::pass()),
            ],
        };
        assert_eq!(dup.validate().unwrap_err().0, "a");
        let reserved = DirectionConfig::all(Impairment::pass());
        assert!(reserved.validate().is_ok());
        let reserved = DirectionConfig {
            rules: vec![Rule::all(DEFAULT_RULE, Impairment::pass())],
        };
        assert!(reserved.validate().is_err());
    }

    #[test]
    fn from_netem_resolves_tc_defaults() {
        let n = Netem {
            delay: Duration::from_millis(20),
            loss: Some(NetemLoss::GilbertElliott {
                p: 0.01,
                r: None,
                loss_in_bad: None,
                loss_in_good: None,
            }),
            ..Netem::default()
        };
        let i = Impairment::from(&n);
        assert_eq!(i.delay, Duration::from_millis(20));
        assert_eq!(i.loss, Loss::gemodel(0.01));
        assert!(i.per_packet());
        assert!(!i.is_passthrough());
        assert!(Impairment::pass().is_passthrough());
    }
}
