//! Decoding of qdisc and class dumps: kind, handles, the options of tbf, htb, netem and the
//! fifos, and statistics. netlink-packet-route hands the options of kinds it does not know as
//! one opaque attribute; they are parsed here with the kernel's layouts (linux/pkt_sched.h).

use std::time::Duration;

use netlink_packet_core::Nla;
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcOption, TcStats2};

use super::encode::{
    NETEM_LOSS_GE, TCA_NETEM_CORR, TCA_NETEM_CORRUPT, TCA_NETEM_JITTER64, TCA_NETEM_LATENCY64,
    TCA_NETEM_LOSS, TCA_NETEM_PRNG_SEED, TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_REORDER,
    ticks_to_bytes,
};
use super::{ClassId, Netem, NetemLoss, NetemRate, Parent};

pub(super) const TCA_OPTIONS: u16 = 2;

/// Counters of a qdisc or class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub overlimits: u64,
    pub requeues: u64,
    /// Bytes queued now.
    pub backlog: u64,
    /// Packets queued now.
    pub qlen: u64,
}

/// A tbf as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfInfo {
    /// Bits per second.
    pub rate: u64,
    /// Bytes (recomputed from the bucket time, as tc prints it).
    pub burst: u32,
    /// Bytes.
    pub limit: u32,
}

/// An htb root as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbInfo {
    pub default_class: u16,
    pub r2q: u32,
    /// Packets sent unclassified (no default class).
    pub direct_packets: u32,
}

/// Decoded options of a qdisc.
#[derive(Debug, Clone, PartialEq)]
pub enum QdiscOptions {
    Tbf(TbfInfo),
    Htb(HtbInfo),
    /// netem's parameters (the delay distribution is not dumped by the kernel).
    Netem(Box<Netem>),
    Fifo {
        limit: u32,
    },
    /// A kind without a decoder here, or without options.
    Other,
}

/// One qdisc of a dump.
#[derive(Debug, Clone, PartialEq)]
pub struct QdiscInfo {
    pub kind: String,
    pub handle: ClassId,
    pub parent: Parent,
    pub options: QdiscOptions,
    pub stats: Stats,
}

/// An htb class as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClassInfo {
    /// Bits per second.
    pub rate: u64,
    /// Bits per second.
    pub ceil: u64,
    /// Bytes.
    pub burst: u32,
    /// Bytes.
    pub cburst: u32,
    pub quantum: u32,
    pub prio: u32,
    /// 0 for leaves.
    pub level: u32,
}

/// One class of a dump.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    pub kind: String,
    pub classid: ClassId,
    pub parent: Parent,
    pub htb: Option<HtbClassInfo>,
    pub stats: Stats,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or_else(|| format!("truncated: need 4 bytes at offset {off}, have {}", b.len()))
}

fn u64_of(b: &[u8]) -> Result<u64, String> {
    b.get(0..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or_else(|| format!("truncated 64-bit attribute ({} bytes)", b.len()))
}

/// Splits a buffer into (kind without flags, value) attributes.
pub(super) fn attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return Err(format!(
                "bad attribute length {len} ({} bytes left)",
                b.len()
            ));
        }
        out.push((kind, &b[4..len]));
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Bits per second from the kernel's bytes per second (a 64-bit rate may be any value: the
/// kernel takes what it is given; saturates rather than overflowing).
fn bits(bytes_per_s: u64) -> u64 {
    bytes_per_s.saturating_mul(8)
}

fn fraction(v: u32) -> f64 {
    f64::from(v) / f64::from(u32::MAX)
}

fn ticks(v: u32) -> Duration {
    Duration::from_nanos(u64::from(v) * 64)
}

/// The raw `TCA_OPTIONS` payload of a dumped message, if any.
fn options_payload(m: &TcMessage) -> Option<Vec<u8>> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => match opts.as_slice() {
            [TcOption::Other(nla)] if nla.kind() == TCA_OPTIONS => {
                let mut v = vec![0u8; nla.value_len()];
                nla.emit_value(&mut v);
                Some(v)
            }
            _ => None,
        },
        TcAttribute::Other(nla) if nla.kind() == TCA_OPTIONS => {
            let mut v = vec![0u8; nla.value_len()];
            nla.emit_value(&mut v);
            Some(v)
        }
        _ => None,
    })
}

fn kind_of(m: &TcMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Statistics from `TCA_STATS2` (preferred) or the legacy `TCA_STATS`.
pub fn stats(m: &TcMessage) -> Stats {
    let mut s = Stats::default();
    let mut have2 = false;
    for a in &m.attributes {
        if let TcAttribute::Stats2(v) = a {
            for st in v {
                match st {
                    TcStats2::Basic(b) => {
                        have2 = true;
                        s.bytes = b.bytes;
                        s.packets = u64::from(b.packets);
                    }
                    TcStats2::Queue(q) => {
                        have2 = true;
                        s.qlen = u64::from(q.qlen);
                        s.backlog = u64::from(q.backlog);
                        s.drops = u64::from(q.drops);
                        s.requeues = u64::from(q.requeues);
                        s.overlimits = u64::from(q.overlimits);
                    }
                    _ => {}
                }
            }
        }
    }
    if !have2 {
        for a in &m.attributes {
            if let TcAttribute::Stats(st) = a {
                s.bytes = st.bytes;
                s.packets = u64::from(st.packets);
                s.drops = u64::from(st.drops);
                s.overlimits = u64::from(st.overlimits);
                s.qlen = u64::from(st.qlen);
                s.backlog = u64::from(st.backlog);
            }
        }
    }
    s
}

/// Decodes tbf options (`TCA_TBF_PARMS` + `TCA_TBF_RATE64`).
pub fn tbf(payload: &[u8]) -> Result<TbfInfo, String> {
    let mut parms = None;
    let mut rate64 = None;
    for (kind, v) in attrs(payload)? {
        match kind {
            1 => parms = Some(v),
            4 => rate64 = Some(u64_of(v)?),
            _ => {}
        }
    }
    let p = parms.ok_or("tbf options without TCA_TBF_PARMS")?;
    let rate = rate64.unwrap_or(u64::from(u32_at(p, 8)?));
    Ok(TbfInfo {
        rate: bits(rate),
        limit: u32_at(p, 24)?,
        burst: ticks_to_bytes(rate, u32_at(p, 28)?),
    })
}

/// Decodes htb root options (`TCA_HTB_INIT`).
pub fn htb(payload: &[u8]) -> Result<HtbInfo, String> {
    let (_, g) = attrs(payload)?
        .into_iter()
        .find(|(k, _)| *k == 2)
        .ok_or("htb options without TCA_HTB_INIT")?;
    Ok(HtbInfo {
        r2q: u32_at(g, 4)?,
        default_class: u32_at(g, 8)? as u16,
        direct_packets: u32_at(g, 16)?,
    })
}

/// Decodes htb class options (`TCA_HTB_PARMS` + 64-bit rates).
pub fn htb_class(payload: &[u8]) -> Result<HtbClassInfo, String> {
    let mut parms = None;
    let (mut rate64, mut ceil64) = (None, None);
    for (kind, v) in attrs(payload)? {
        match kind {
            1 => parms = Some(v),
            6 => rate64 = Some(u64_of(v)?),
            7 => ceil64 = Some(u64_of(v)?),
            _ => {}
        }
    }
    let p = parms.ok_or("htb class options without TCA_HTB_PARMS")?;
    let rate = rate64.unwrap_or(u64::from(u32_at(p, 8)?));
    let ceil = ceil64.unwrap_or(u64::from(u32_at(p, 20)?));
    Ok(HtbClassInfo {
        rate: bits(rate),
        ceil: bits(ceil),
        burst: ticks_to_bytes(rate, u32_at(p, 24)?),
        cburst: ticks_to_bytes(ceil, u32_at(p, 28)?),
        quantum: u32_at(p, 32)?,
        level: u32_at(p, 36)?,
        prio: u32_at(p, 40)?,
    })
}

/// Decodes netem options: a `tc_netem_qopt` then attributes (the kernel's 64-bit latency and
/// jitter, in nanoseconds, win over the 32-bit tick fields when present).
pub fn netem(payload: &[u8]) -> Result<Netem, String> {
    const QOPT: usize = 24;
    if payload.len() < QOPT {
        return Err(format!("netem options of {} bytes", payload.len()));
    }
    let q = |i: usize| u32_at(payload, i * 4);
    let mut n = Netem {
        delay: ticks(q(0)?),
        limit: q(1)?,
        gap: q(3)?,
        duplicate: fraction(q(4)?),
        jitter: ticks(q(5)?),
        ..Netem::default()
    };
    let loss = q(2)?;
    let mut loss_corr = 0.0;
    let mut rate64 = None;
    for (kind, v) in attrs(&payload[QOPT..])? {
        match kind {
            TCA_NETEM_CORR => {
                n.delay_correlation = fraction(u32_at(v, 0)?);
                loss_corr = fraction(u32_at(v, 4)?);
                n.duplicate_correlation = fraction(u32_at(v, 8)?);
            }
            TCA_NETEM_REORDER => {
                n.reorder = fraction(u32_at(v, 0)?);
                n.reorder_correlation = fraction(u32_at(v, 4)?);
            }
            TCA_NETEM_CORRUPT => {
                n.corrupt = fraction(u32_at(v, 0)?);
                n.corrupt_correlation = fraction(u32_at(v, 4)?);
            }
            TCA_NETEM_LOSS => {
                for (model, g) in attrs(v)? {
                    if model == NETEM_LOSS_GE {
                        n.loss = Some(NetemLoss::GilbertElliott {
                            p: fraction(u32_at(g, 0)?),
                            r: Some(fraction(u32_at(g, 4)?)),
                            loss_in_bad: Some(1.0 - fraction(u32_at(g, 8)?)),
                            loss_in_good: Some(fraction(u32_at(g, 12)?)),
                        });
                    }
                }
            }
            TCA_NETEM_RATE => {
                n.rate = Some(NetemRate {
                    rate: bits(u64::from(u32_at(v, 0)?)),
                    packet_overhead: u32_at(v, 4)? as i32,
                    cell_size: u32_at(v, 8)?,
                    cell_overhead: u32_at(v, 12)? as i32,
                });
            }
            TCA_NETEM_RATE64 => rate64 = Some(u64_of(v)?),
            TCA_NETEM_LATENCY64 => n.delay = Duration::from_nanos(u64_of(v)?),
            TCA_NETEM_JITTER64 => n.jitter = Duration::from_nanos(u64_of(v)?),
            TCA_NETEM_PRNG_SEED => n.seed = Some(u64_of(v)?),
            _ => {}
        }
    }
    if let (Some(r), Some(rate)) = (rate64, n.rate.as_mut()) {
        rate.rate = bits(r);
    }
    if n.loss.is_none() && loss != 0 {
        n.loss = Some(NetemLoss::Random {
            probability: fraction(loss),
            correlation: loss_corr,
        });
    }
    Ok(n)
}

/// Decodes one message of a qdisc dump.
pub fn qdisc_info(m: &TcMessage) -> Result<QdiscInfo, String> {
    let kind = kind_of(m);
    let payload = options_payload(m);
    let options = match (kind.as_str(), payload.as_deref()) {
        ("tbf", Some(p)) => QdiscOptions::Tbf(tbf(p)?),
        ("htb", Some(p)) => QdiscOptions::Htb(htb(p)?),
        ("netem", Some(p)) => QdiscOptions::Netem(Box::new(netem(p)?)),
        ("pfifo" | "bfifo", Some(p)) => QdiscOptions::Fifo {
            limit: u32_at(p, 0)?,
        },
        _ => QdiscOptions::Other,
    };
    Ok(QdiscInfo {
        handle: ClassId::from_raw(m.header.handle.into()),
        parent: Parent::from_raw(m.header.parent.into()),
        options,
        stats: stats(m),
        kind,
    })
}

/// Decodes one message of a class dump.
pub fn class_info(m: &TcMessage) -> Result<ClassInfo, String> {
    let kind = kind_of(m);
    let htb = match (kind.as_str(), options_payload(m)) {
        ("htb", Some(p)) => Some(htb_class(&p)?),
        _ => None,
    };
    Ok(ClassInfo {
        classid: ClassId::from_raw(m.header.handle.into()),
        parent: Parent::from_raw(m.header.parent.into()),
        htb,
        stats: stats(m),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{
        Distribution, HtbClass, Tbf, TbfLimit, encode_htb_class, encode_netem, encode_tbf,
    };
    use super::*;

    #[test]
    fn tbf_round_trip() {
        let t = Tbf {
            rate: 8_000_000,
            burst: 32 * 1024,
            limit: TbfLimit::Bytes(100_000),
        };
        let info = tbf(&encode_tbf(&t)).unwrap();
        assert_eq!(
            info,
            TbfInfo {
                rate: 8_000_000,
                burst: 32768,
                limit: 100_000
            }
        );
        let fast = Tbf {
            rate: 40_000_000_000,
            ..t
        };
        assert_eq!(tbf(&encode_tbf(&fast)).unwrap().rate, 40_000_000_000);
    }

    #[test]
    fn htb_class_round_trip() {
        let c = HtbClass {
            rate: 2_000_000,
            ceil: Some(50_000_000_000),
            burst: Some(15 * 1024),
            prio: 3,
            quantum: Some(1514),
            ..HtbClass::default()
        };
        let i = htb_class(&encode_htb_class(&c, 1_000_000_000)).unwrap();
        assert_eq!(
            (i.rate, i.ceil, i.burst, i.prio, i.quantum),
            (2_000_000, 50_000_000_000, 15360, 3, 1514)
        );
    }

    #[test]
    fn netem_round_trip() {
        let n = Netem {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            delay_correlation: 0.25,
            distribution: Some(Distribution::Custom(vec![1, 2, 3])),
            loss: Some(NetemLoss::GilbertElliott {
                p: 0.01,
                r: Some(0.1),
                loss_in_bad: Some(0.7),
                loss_in_good: Some(0.001),
            }),
            duplicate: 0.02,
            corrupt: 0.005,
            reorder: 0.05,
            reorder_correlation: 0.5,
            gap: 3,
            rate: Some(NetemRate {
                rate: 50_000_000_000,
                packet_overhead: 20,
                cell_size: 1500,
                cell_overhead: -4,
            }),
            limit: 5000,
            seed: Some(42),
            ..Netem::default()
        };
        let d = netem(&encode_netem(&n, Some(&[1, 2, 3]))).unwrap();
        assert_eq!(d.delay, n.delay);
        assert_eq!(d.jitter, n.jitter);
        assert_eq!((d.limit, d.gap, d.seed), (5000, 3, Some(42)));
        assert_eq!(d.rate, n.rate);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(d.delay_correlation, 0.25));
        assert!(close(d.duplicate, 0.02) && close(d.corrupt, 0.005) && close(d.reorder, 0.05));
        match d.loss {
            Some(NetemLoss::GilbertElliott {
                p,
                r: Some(r),
                loss_in_bad: Some(b),
                loss_in_good: Some(g),
            }) => assert!(close(p, 0.01) && close(r, 0.1) && close(b, 0.7) && close(g, 0.001)),
            other => panic!("loss decoded as {other:?}"),
        }
    }
}
