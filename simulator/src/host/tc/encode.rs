//! Pure encoders for the `TCA_OPTIONS` payloads of tbf, htb (qdisc and class), netem and the
//! fifos, reproducing what iproute2 6.1's `tc` sends byte for byte (golden-tested against
//! `strace` captures in `golden/`).
//!
//! The arithmetic copies tc's, rounding and truncation included, because the kernel stores
//! what it is given and a dump must read back the same way `tc qdisc show` would:
//! - rates travel in bytes per second (`bits / 8`, truncated); a rate of 2^32 bytes/s or more
//!   (≈ 34.4 Gbit/s) does not fit the 32-bit `tc_ratespec.rate`, which then holds `u32::MAX`
//!   while the real value goes in a separate 64-bit attribute;
//! - times travel in scheduler ticks of 64 ns (the kernel's `PSCHED_SHIFT` is 6; tc reads the
//!   same fact from `/proc/net/psched`), computed from whole microseconds as tc does;
//! - probabilities are fractions of `u32::MAX`, rounded half to even (`rint`).

use std::time::Duration;

use super::{Distribution, Htb, HtbClass, Netem, NetemLoss, Tbf, TbfLimit};

/// Scheduler ticks per microsecond: one tick is 64 ns.
const TICKS_PER_USEC: f64 = 15.625;
/// `TIME_UNITS_PER_SEC` in iproute2: tc's times are microseconds.
const USEC_PER_SEC: f64 = 1_000_000.0;
/// `LINKLAYER_ETHERNET`.
const LINKLAYER_ETHERNET: u8 = 1;
/// The packet size tc assumes for HTB rate tables and default bursts (`mtu 1600`).
const HTB_MTU: u32 = 1600;

// tbf attributes (linux/pkt_sched.h)
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RTAB: u16 = 2;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
// htb attributes
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`.
const HTB_PROTOVER: u32 = 3;
// netem attributes
pub(super) const TCA_NETEM_CORR: u16 = 1;
pub(super) const TCA_NETEM_DELAY_DIST: u16 = 2;
pub(super) const TCA_NETEM_REORDER: u16 = 3;
pub(super) const TCA_NETEM_CORRUPT: u16 = 4;
pub(super) const TCA_NETEM_LOSS: u16 = 5;
pub(super) const TCA_NETEM_RATE: u16 = 6;
pub(super) const TCA_NETEM_RATE64: u16 = 8;
pub(super) const TCA_NETEM_LATENCY64: u16 = 10;
pub(super) const TCA_NETEM_JITTER64: u16 = 11;
/// Added to the kernel after iproute2 6.1 (which cannot send it); taken from the kernel's uapi.
pub(super) const TCA_NETEM_PRNG_SEED: u16 = 14;
pub(super) const NETEM_LOSS_GE: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;

/// Appends one netlink attribute (header, value, padding to 4 bytes).
pub(super) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    // Attribute lengths are u16 by definition; every caller stays far below.
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// `tc_core_time2tick`: microseconds (already truncated to an integer) to ticks.
fn usec_to_ticks(usec: u32) -> u32 {
    (f64::from(usec) * TICKS_PER_USEC) as u32
}

/// tc's `get_time`: a duration in whole microseconds (truncated, saturating).
pub(super) fn whole_usecs(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// A duration as tc encodes it in netem's `tc_netem_qopt`: ticks from whole microseconds.
pub(super) fn duration_to_ticks(d: Duration) -> u32 {
    usec_to_ticks(whole_usecs(d))
}

/// The largest duration whose tick count fits in 32 bits (tc refuses larger ones).
pub(super) const MAX_TICKED: Duration = Duration::from_micros((u32::MAX as f64 / 15.625) as u64);

/// `tc_calc_xmittime`: ticks needed to send `size` bytes at `rate` bytes/s.
fn xmittime(rate: u64, size: u32) -> u32 {
    let usec = USEC_PER_SEC * (f64::from(size) / rate as f64);
    usec_to_ticks(usec as u32)
}

/// Bytes that `ticks` worth of time carries at `rate` bytes/s (the inverse, for dumps).
pub(super) fn ticks_to_bytes(rate: u64, ticks: u32) -> u32 {
    let ns = u128::from(ticks) * 64;
    u32::try_from(u128::from(rate) * ns / 1_000_000_000).unwrap_or(u32::MAX)
}

/// `get_percent`: a fraction in [0, 1] as a fraction of `u32::MAX`, rounded half to even.
pub(super) fn probability(p: f64) -> u32 {
    (p * f64::from(u32::MAX)).round_ties_even() as u32
}

/// Bits per second to tc's bytes per second.
fn bytes_per_sec(bits: u64) -> u64 {
    bits / 8
}

/// The 32-bit rate field: saturated when the real rate needs the 64-bit attribute.
fn rate32(rate: u64) -> u32 {
    u32::try_from(rate).unwrap_or(u32::MAX)
}

/// A `struct tc_ratespec` plus the 256-entry rate table tc computes with it
/// (`tc_calc_rtable`, Ethernet link layer, no overhead, no mpu).
struct RateSpec {
    cell_log: u8,
    rate: u32,
    table: [u32; 256],
}

impl RateSpec {
    fn new(rate: u32, mtu: u32) -> Self {
        let mtu = if mtu == 0 { 2047 } else { mtu };
        let mut cell_log = 0u8;
        while (mtu >> cell_log) > 255 {
            cell_log += 1;
        }
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let size = ((i as u32) + 1) << cell_log;
            *slot = xmittime(u64::from(rate), size);
        }
        RateSpec {
            cell_log,
            rate,
            table,
        }
    }

    /// The 12-byte `struct tc_ratespec`.
    fn bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.cell_log;
        b[1] = LINKLAYER_ETHERNET;
        // overhead (u16) stays 0; cell_align is -1, as tc_calc_rtable sets it.
        b[4..6].copy_from_slice(&(-1i16).to_ne_bytes());
        // mpu (u16) stays 0.
        b[8..12].copy_from_slice(&self.rate.to_ne_bytes());
        b
    }

    fn table_bytes(&self) -> Vec<u8> {
        u32s(&self.table)
    }
}

/// tbf's `TCA_OPTIONS` payload, as `tc qdisc … tbf rate R burst B (limit L | latency T)` sends it.
pub fn encode_tbf(t: &Tbf) -> Vec<u8> {
    let rate64 = bytes_per_sec(t.rate);
    let spec = RateSpec::new(rate32(rate64), 0);
    let limit = match t.limit {
        TbfLimit::Bytes(b) => b,
        TbfLimit::Latency(lat) => {
            let lat = f64::from(whole_usecs(lat));
            (rate64 as f64 * lat / USEC_PER_SEC + f64::from(t.burst)) as u32
        }
    };
    // tc computes the buffer time from the saturated 32-bit rate; the kernel prefers
    // TCA_TBF_BURST (bytes) anyway, so this only matters for byte-identical requests.
    let buffer = xmittime(u64::from(spec.rate), t.burst);

    let mut parms = Vec::with_capacity(36);
    parms.extend_from_slice(&spec.bytes());
    parms.extend_from_slice(&[0u8; 12]); // no peak rate
    parms.extend_from_slice(&u32s(&[limit, buffer, 0]));

    let mut out = Vec::with_capacity(1100);
    put_attr(&mut out, TCA_TBF_PARMS, &parms);
    put_attr(&mut out, TCA_TBF_BURST, &t.burst.to_ne_bytes());
    if rate64 > u64::from(u32::MAX) {
        put_attr(&mut out, TCA_TBF_RATE64, &rate64.to_ne_bytes());
    }
    put_attr(&mut out, TCA_TBF_RTAB, &spec.table_bytes());
    out
}

/// htb's root `TCA_OPTIONS` payload (`tc qdisc … htb default D r2q R`).
pub fn encode_htb(h: &Htb) -> Vec<u8> {
    let glob = u32s(&[
        HTB_PROTOVER,
        h.r2q,
        u32::from(h.default_class),
        0, // debug
        0, // direct_pkts (output only)
    ]);
    let mut out = Vec::with_capacity(24);
    put_attr(&mut out, TCA_HTB_INIT, &glob);
    out
}

/// htb class `TCA_OPTIONS` payload (`tc class … htb rate R [ceil C] [burst B] [cburst CB]
/// [prio P] [quantum Q]`).
///
/// `hz` is the timer frequency tc reads from `/proc/net/psched` (10^9 on kernels with
/// high-resolution timers) and only shapes the default bursts: `rate / hz + 1600` bytes.
pub fn encode_htb_class(c: &HtbClass, hz: u32) -> Vec<u8> {
    let rate64 = bytes_per_sec(c.rate);
    let ceil64 = c
        .ceil
        .map(bytes_per_sec)
        .filter(|&v| v != 0)
        .unwrap_or(rate64);
    let hz = u64::from(hz.max(1));
    let burst = c.burst.unwrap_or((rate64 / hz + u64::from(HTB_MTU)) as u32);
    let cburst = c
        .cburst
        .unwrap_or((ceil64 / hz + u64::from(HTB_MTU)) as u32);
    let rspec = RateSpec::new(rate32(rate64), HTB_MTU);
    let cspec = RateSpec::new(rate32(ceil64), HTB_MTU);

    let mut parms = Vec::with_capacity(44);
    parms.extend_from_slice(&rspec.bytes());
    parms.extend_from_slice(&cspec.bytes());
    parms.extend_from_slice(&u32s(&[
        xmittime(rate64, burst),
        xmittime(ceil64, cburst),
        c.quantum.unwrap_or(0),
        0, // level (output only)
        c.prio,
    ]));

    let mut out = Vec::with_capacity(2120);
    if rate64 > u64::from(u32::MAX) {
        put_attr(&mut out, TCA_HTB_RATE64, &rate64.to_ne_bytes());
    }
    if ceil64 > u64::from(u32::MAX) {
        put_attr(&mut out, TCA_HTB_CEIL64, &ceil64.to_ne_bytes());
    }
    put_attr(&mut out, TCA_HTB_PARMS, &parms);
    put_attr(&mut out, TCA_HTB_RTAB, &rspec.table_bytes());
    put_attr(&mut out, TCA_HTB_CTAB, &cspec.table_bytes());
    out
}

/// pfifo/bfifo `TCA_OPTIONS` payload: a bare `struct tc_fifo_qopt`.
pub fn encode_fifo(limit: u32) -> Vec<u8> {
    limit.to_ne_bytes().to_vec()
}

/// netem's `TCA_OPTIONS` payload: a raw `struct tc_netem_qopt` followed by attributes, in the
/// order tc 6.1 emits them (CORR, REORDER, CORRUPT, LOSS, RATE64, RATE, then PRNG_SEED if set,
/// DELAY_DIST). `table` is the delay distribution (see [`Distribution::table`]), `None` for
/// the kernel's built-in uniform one.
///
/// Two deliberate differences from tc 6.1, both for options tc cannot express correctly:
/// a duplicate correlation is sent (tc parses it, then drops it unless another correlation is
/// given), and `seed` is sent as `TCA_NETEM_PRNG_SEED` (tc learned `seed` in 6.3).
pub fn encode_netem(n: &Netem, table: Option<&[i16]>) -> Vec<u8> {
    let random_loss = match n.loss {
        Some(NetemLoss::Random { probability, .. }) => probability,
        _ => 0.0,
    };
    let loss_corr = match n.loss {
        Some(NetemLoss::Random { correlation, .. }) => correlation,
        _ => 0.0,
    };
    let gap = if n.reorder > 0.0 && n.gap == 0 {
        1
    } else {
        n.gap
    };
    let mut out = u32s(&[
        duration_to_ticks(n.delay),
        n.limit,
        probability(random_loss),
        gap,
        probability(n.duplicate),
        duration_to_ticks(n.jitter),
    ]);

    let corr = [n.delay_correlation, loss_corr, n.duplicate_correlation];
    let any_corr = corr.iter().any(|&c| c != 0.0)
        || (n.reorder > 0.0 && n.reorder_correlation != 0.0)
        || (n.corrupt > 0.0 && n.corrupt_correlation != 0.0);
    if any_corr {
        put_attr(&mut out, TCA_NETEM_CORR, &u32s(&corr.map(probability)));
    }
    if n.reorder > 0.0 {
        put_attr(
            &mut out,
            TCA_NETEM_REORDER,
            &u32s(&[probability(n.reorder), probability(n.reorder_correlation)]),
        );
    }
    if n.corrupt > 0.0 {
        put_attr(
            &mut out,
            TCA_NETEM_CORRUPT,
            &u32s(&[probability(n.corrupt), probability(n.corrupt_correlation)]),
        );
    }
    if let Some(NetemLoss::GilbertElliott {
        p,
        r,
        loss_in_bad,
        loss_in_good,
    }) = n.loss
    {
        let p = probability(p);
        // tc's defaults: r = 1 - p, 1-h = 100 % (h = 0), k = 0; the kernel's `h` is the
        // probability of *delivering* in the bad state, so tc sends u32::MAX - (1-h).
        let r = r.map(probability).unwrap_or(u32::MAX - p);
        let h = loss_in_bad.map(|x| u32::MAX - probability(x)).unwrap_or(0);
        let k = loss_in_good.map(probability).unwrap_or(0);
        let mut nested = Vec::with_capacity(20);
        put_attr(&mut nested, NETEM_LOSS_GE, &u32s(&[p, r, h, k]));
        put_attr(&mut out, TCA_NETEM_LOSS | NLA_F_NESTED, &nested);
    }
    if let Some(rate) = &n.rate {
        let rate64 = bytes_per_sec(rate.rate);
        if rate64 > u64::from(u32::MAX) {
            put_attr(&mut out, TCA_NETEM_RATE64, &rate64.to_ne_bytes());
        }
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&rate32(rate64).to_ne_bytes());
        v.extend_from_slice(&rate.packet_overhead.to_ne_bytes());
        v.extend_from_slice(&rate.cell_size.to_ne_bytes());
        v.extend_from_slice(&rate.cell_overhead.to_ne_bytes());
        put_attr(&mut out, TCA_NETEM_RATE, &v);
    }
    if let Some(seed) = n.seed {
        put_attr(&mut out, TCA_NETEM_PRNG_SEED, &seed.to_ne_bytes());
    }
    if let Some(table) = table {
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
        put_attr(&mut out, TCA_NETEM_DELAY_DIST, &bytes);
    }
    out
}

/// Whether a netem delay distribution needs a table (uniform is the kernel's default).
pub(super) fn needs_table(d: &Option<Distribution>) -> bool {
    !matches!(d, None | Some(Distribution::Uniform))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_rounds_like_rint() {
        assert_eq!(probability(0.01), 0x028f_5c29);
        assert_eq!(probability(0.25), 0x4000_0000);
        assert_eq!(probability(0.3), 0x4ccc_cccc);
        assert_eq!(probability(1.0), u32::MAX);
        assert_eq!(probability(0.0), 0);
    }

    #[test]
    fn ticks_follow_whole_microseconds() {
        assert_eq!(duration_to_ticks(Duration::from_millis(10)), 156_250);
        // 1.03 µs is 1 µs to tc, i.e. 15 ticks, not 16.
        assert_eq!(duration_to_ticks(Duration::from_nanos(1030)), 15);
        assert_eq!(ticks_to_bytes(1_000_000, 512_000), 32_768);
    }

    #[test]
    fn rate_table_cell_log() {
        let spec = RateSpec::new(1_000_000, 0);
        assert_eq!(spec.cell_log, 3);
        assert_eq!(spec.table[0], 125); // 8 bytes at 1 MB/s: 8 µs
        assert_eq!(RateSpec::new(250_000, HTB_MTU).cell_log, 3);
    }
}
