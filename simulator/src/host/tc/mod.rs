//! Traffic control over netlink: tbf, htb (qdisc, classes, u32 filters), netem and the fifos,
//! set, deleted and read back without running `tc`.
//!
//! Design:
//! - rtnetlink 0.24 has no types for tbf, htb or netem (and its qdisc builder cannot set a
//!   kind), so every request here is a hand-built [`TcMessage`] sent through
//!   [`rtnetlink::Handle::request`]. The `TCA_OPTIONS` payloads come from the pure encoders in
//!   [`encode`], which reproduce iproute2 6.1's bytes exactly (rate tables, tick rounding and
//!   all); `golden/` holds the `strace` captures they are tested against and the script that
//!   regenerates them. Every payload travels as one opaque `TCA_OPTIONS` attribute, which is
//!   what netem requires (a raw `tc_netem_qopt` followed by attributes) and is equally valid for
//!   the nested tbf/htb options.
//! - u32 filters use netlink-packet-route's typed u32 options (same bytes as tc, also golden).
//! - Semantics follow `tc … replace`: a qdisc is created or changed in place; where the kernel
//!   refuses an in-place change of kind (say tbf → htb under the same handle) the old qdisc is
//!   deleted and the new one added. Deleting something that is already gone succeeds.
//! - Kernel refusals carry the kernel's own explanation when the socket has extended acks on
//!   ([`netlink`] opens such a socket inside a namespace). A qdisc kind the kernel does not
//!   have (netem on stock L4T, WSL2, minimal VMs) becomes [`HostError::Unsupported`], so
//!   callers can fall back (to linkem) instead of failing; [`kernel_has_qdisc`] asks the
//!   question up front, in a scratch namespace, never in the host's.
//! - Read-back ([`dump`], [`dump_classes`]) decodes kinds, handles, the options of the kinds
//!   above and the statistics, so tests and the engine can check what the kernel holds.
//!
//! Rates are bits per second (`u64`), sizes bytes, times [`Duration`]s, probabilities fractions
//! in `[0, 1]`. Handles print as tc prints them (hexadecimal): `ClassId::new(1, 0x10)` is `1:10`.

pub mod decode;
pub mod dist;
pub mod encode;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcU32Key, TcU32Selector,
    TcU32SelectorFlags,
};

pub use decode::{ClassInfo, HtbClassInfo, HtbInfo, QdiscInfo, QdiscOptions, Stats, TbfInfo};
pub use encode::{encode_fifo, encode_htb, encode_htb_class, encode_netem, encode_tbf};

use super::{HostError, Result, ns};

/// A tc handle or class id, `major:minor` (tc writes both halves in hexadecimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClassId {
    pub major: u16,
    pub minor: u16,
}

impl ClassId {
    pub const fn new(major: u16, minor: u16) -> Self {
        ClassId { major, minor }
    }
    /// The handle of qdisc `major:` (minor 0), also the parent of its top-level classes.
    pub const fn qdisc(major: u16) -> Self {
        ClassId { major, minor: 0 }
    }
    pub const fn raw(self) -> u32 {
        ((self.major as u32) << 16) | self.minor as u32
    }
    pub const fn from_raw(v: u32) -> Self {
        ClassId {
            major: (v >> 16) as u16,
            minor: v as u16,
        }
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.minor == 0 {
            write!(f, "{:x}:", self.major)
        } else {
            write!(f, "{:x}:{:x}", self.major, self.minor)
        }
    }
}

impl From<ClassId> for TcHandle {
    fn from(c: ClassId) -> Self {
        TcHandle {
            major: c.major,
            minor: c.minor,
        }
    }
}

/// Where a qdisc hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parent {
    /// The device's egress root.
    Root,
    /// The ingress hook (`ffff:fff1`), for the ingress/clsact qdiscs.
    Ingress,
    /// A class of a classful qdisc (e.g. an htb class `1:10`).
    Class(ClassId),
}

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_INGRESS: u32 = 0xFFFF_FFF1;

impl Parent {
    pub const fn raw(self) -> u32 {
        match self {
            Parent::Root => TC_H_ROOT,
            Parent::Ingress => TC_H_INGRESS,
            Parent::Class(c) => c.raw(),
        }
    }
    pub const fn from_raw(v: u32) -> Self {
        match v {
            TC_H_ROOT => Parent::Root,
            TC_H_INGRESS => Parent::Ingress,
            v => Parent::Class(ClassId::from_raw(v)),
        }
    }
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Parent::Root => f.write_str("root"),
            Parent::Ingress => f.write_str("ingress"),
            Parent::Class(c) => write!(f, "parent {c}"),
        }
    }
}

/// A queueing discipline and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Qdisc {
    Tbf(Tbf),
    Htb(Htb),
    Netem(Netem),
    /// Tail-drop fifo holding at most `limit` packets.
    Pfifo {
        limit: u32,
    },
    /// Tail-drop fifo holding at most `limit` bytes.
    Bfifo {
        limit: u32,
    },
}

/// Token bucket filter: `rate` with bursts of up to `burst` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tbf {
    /// Bits per second (tc rounds down to whole bytes per second).
    pub rate: u64,
    /// Bucket size in bytes; at least the device MTU or full-size packets never pass.
    pub burst: u32,
    pub limit: TbfLimit,
}

/// How much a tbf may queue: bytes, or the longest time a packet may wait (tc's `latency`,
/// which tc turns into `rate × latency + burst` bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TbfLimit {
    Bytes(u32),
    Latency(Duration),
}

/// Root of an htb hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct Htb {
    /// Minor of the class that takes unclassified traffic (`default 10` in tc is `0x10`);
    /// 0 sends it straight out unshaped.
    pub default_class: u16,
    /// Rate-to-quantum divisor (tc's default is 10).
    pub r2q: u32,
}

impl Default for Htb {
    fn default() -> Self {
        Htb {
            default_class: 0,
            r2q: 10,
        }
    }
}

/// An htb class.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HtbClass {
    /// Guaranteed rate, bits per second.
    pub rate: u64,
    /// Most it may borrow up to, bits per second (`None`: the rate, i.e. no borrowing).
    pub ceil: Option<u64>,
    /// Bytes that may pass at full speed (`None`: tc's `rate / HZ + 1600`).
    pub burst: Option<u32>,
    /// Same for the ceil.
    pub cburst: Option<u32>,
    /// 0 (highest) to 7.
    pub prio: u32,
    /// Bytes served per round (`None`: the kernel derives it from rate / r2q).
    pub quantum: Option<u32>,
}

/// netem: delay, jitter, loss, duplication, corruption, reordering, rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Netem {
    pub delay: Duration,
    pub jitter: Duration,
    /// Correlation of successive delays, fraction.
    pub delay_correlation: f64,
    /// Shape of the jitter; needs `delay` and `jitter` (`None`: uniform).
    pub distribution: Option<Distribution>,
    pub loss: Option<NetemLoss>,
    pub duplicate: f64,
    pub duplicate_correlation: f64,
    pub corrupt: f64,
    pub corrupt_correlation: f64,
    /// Fraction of packets sent immediately (ahead of the delayed ones); needs a delay.
    pub reorder: f64,
    pub reorder_correlation: f64,
    /// Reorder every `gap`-th packet (0 with a reorder means 1, as in tc).
    pub gap: u32,
    pub rate: Option<NetemRate>,
    /// Packets queued at most (tc's default 1000).
    pub limit: u32,
    /// Seed of netem's random generator, for reproducible runs (kernels since 2023; older ones
    /// ignore the attribute).
    pub seed: Option<u64>,
}

impl Default for Netem {
    fn default() -> Self {
        Netem {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            delay_correlation: 0.0,
            distribution: None,
            loss: None,
            duplicate: 0.0,
            duplicate_correlation: 0.0,
            corrupt: 0.0,
            corrupt_correlation: 0.0,
            reorder: 0.0,
            reorder_correlation: 0.0,
            gap: 0,
            rate: None,
            limit: 1000,
            seed: None,
        }
    }
}

/// netem's loss models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NetemLoss {
    /// Independent (or correlated) random loss.
    Random { probability: f64, correlation: f64 },
    /// Gilbert-Elliott two-state model (`loss gemodel p [r [1-h [1-k]]]` in tc). `None`
    /// fields take tc's defaults: `r = 1 - p`, `loss_in_bad = 1`, `loss_in_good = 0`.
    GilbertElliott {
        /// Good → bad transition probability.
        p: f64,
        /// Bad → good transition probability.
        r: Option<f64>,
        /// Loss probability in the bad state (tc's third argument, "1-h").
        loss_in_bad: Option<f64>,
        /// Loss probability in the good state (tc's fourth argument).
        loss_in_good: Option<f64>,
    },
}

/// netem's jitter distributions.
#[derive(Debug, Clone, PartialEq)]
pub enum Distribution {
    Uniform,
    Normal,
    Pareto,
    ParetoNormal,
    /// A table in the `.dist` format's units (values scaled by 8192 = `NETEM_DIST_SCALE`).
    Custom(Vec<i16>),
}

/// netem's rate emulation (with per-packet and per-cell overheads, as in tc).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NetemRate {
    /// Bits per second.
    pub rate: u64,
    pub packet_overhead: i32,
    pub cell_size: u32,
    pub cell_overhead: i32,
}

/// Source and/or destination IPv4 prefixes a u32 filter matches (neither: every IPv4 packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct U32Match {
    pub src: Option<ipnet::Ipv4Net>,
    pub dst: Option<ipnet::Ipv4Net>,
}

impl Qdisc {
    /// The kernel's name for the kind (`TCA_KIND`).
    pub fn kind(&self) -> &'static str {
        match self {
            Qdisc::Tbf(_) => "tbf",
            Qdisc::Htb(_) => "htb",
            Qdisc::Netem(_) => "netem",
            Qdisc::Pfifo { .. } => "pfifo",
            Qdisc::Bfifo { .. } => "bfifo",
        }
    }

    /// Rejects parameters the kernel would refuse or misread, before anything is sent.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| {
            Err(HostError::other(
                "validating",
                format!("{} qdisc", self.kind()),
                detail,
            ))
        };
        match self {
            Qdisc::Tbf(t) => {
                if t.rate < 8 {
                    return bad(format!("rate {} bit/s is below 1 byte/s", t.rate));
                }
                if t.burst == 0 {
                    return bad("burst must be at least one packet".into());
                }
                if let TbfLimit::Latency(l) = t.limit
                    && l > encode::MAX_TICKED
                {
                    return bad(format!("latency {l:?} is too large"));
                }
            }
            Qdisc::Htb(_) | Qdisc::Pfifo { .. } | Qdisc::Bfifo { .. } => {}
            Qdisc::Netem(n) => return validate_netem(n),
        }
        Ok(())
    }

    fn options(&self, table: Option<&[i16]>) -> Vec<u8> {
        match self {
            Qdisc::Tbf(t) => encode_tbf(t),
            Qdisc::Htb(h) => encode_htb(h),
            Qdisc::Netem(n) => encode_netem(n, table),
            Qdisc::Pfifo { limit } | Qdisc::Bfifo { limit } => encode_fifo(*limit),
        }
    }
}

fn validate_netem(n: &Netem) -> Result<()> {
    let bad = |detail: String| Err(HostError::other("validating", "netem qdisc", detail));
    let fractions = [
        ("delay correlation", n.delay_correlation),
        ("duplicate", n.duplicate),
        ("duplicate correlation", n.duplicate_correlation),
        ("corrupt", n.corrupt),
        ("corrupt correlation", n.corrupt_correlation),
        ("reorder", n.reorder),
        ("reorder correlation", n.reorder_correlation),
    ];
    let loss: Vec<(&str, f64)> = match n.loss {
        None => vec![],
        Some(NetemLoss::Random {
            probability,
            correlation,
        }) => vec![("loss", probability), ("loss correlation", correlation)],
        Some(NetemLoss::GilbertElliott {
            p,
            r,
            loss_in_bad,
            loss_in_good,
        }) => [
            ("gemodel p", Some(p)),
            ("gemodel r", r),
            ("gemodel loss in bad state", loss_in_bad),
            ("gemodel loss in good state", loss_in_good),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect(),
    };
    for (what, v) in fractions.into_iter().chain(loss) {
        if !(0.0..=1.0).contains(&v) {
            return bad(format!("{what} {v} is not a fraction in [0, 1]"));
        }
    }
    for (what, d) in [("delay", n.delay), ("jitter", n.jitter)] {
        if d > encode::MAX_TICKED {
            return bad(format!("{what} {d:?} exceeds {:?}", encode::MAX_TICKED));
        }
    }
    if encode::needs_table(&n.distribution) && (n.delay.is_zero() || n.jitter.is_zero()) {
        return bad("a delay distribution needs both a delay and a jitter".into());
    }
    if n.gap > 0 && n.reorder == 0.0 {
        return bad("gap given without a reorder probability".into());
    }
    if n.reorder > 0.0 && n.delay.is_zero() {
        return bad("reordering needs a delay (packets overtake delayed ones)".into());
    }
    if let Some(r) = &n.rate
        && r.rate < 8
    {
        return bad(format!("rate {} bit/s is below 1 byte/s", r.rate));
    }
    if let Some(Distribution::Custom(t)) = &n.distribution
        && (t.is_empty() || t.len() > dist::MAX_DIST)
    {
        return bad(format!(
            "custom distribution has {} values (1..={} allowed)",
            t.len(),
            dist::MAX_DIST
        ));
    }
    Ok(())
}

impl HtbClass {
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(HostError::other("validating", "htb class", detail));
        if self.rate < 8 {
            return bad(format!("rate {} bit/s is below 1 byte/s", self.rate));
        }
        if let Some(c) = self.ceil
            && c != 0
            && c < self.rate
        {
            return bad(format!("ceil {c} bit/s is below the rate {}", self.rate));
        }
        if self.prio > 7 {
            return bad(format!("prio {} is above 7", self.prio));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Request building (pure; the golden tests check these messages whole).

fn tc_message(ifindex: u32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.handle = TcHandle::from(handle);
    m.header.parent = TcHandle::from(parent);
    m.header.info = info;
    m
}

fn options_attr(payload: Vec<u8>) -> TcAttribute {
    // One opaque TCA_OPTIONS: netem's payload is not a list of attributes, and for the others
    // the bytes are the same either way.
    TcAttribute::Other(DefaultNla::new(decode::TCA_OPTIONS, payload))
}

/// Flags of `tc qdisc replace`.
pub const QDISC_REPLACE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags of `tc qdisc add`.
pub const QDISC_ADD_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of `tc class replace` (the kernel changes an existing class in place).
pub const CLASS_REPLACE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
/// Flags of `tc filter add`.
pub const FILTER_ADD_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of the delete requests.
pub const DELETE_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// `RTM_NEWQDISC` for `q` (`table`: the netem delay distribution, if any).
pub fn qdisc_message(
    ifindex: u32,
    parent: Parent,
    handle_major: u16,
    q: &Qdisc,
    table: Option<&[i16]>,
) -> RouteNetlinkMessage {
    let mut m = tc_message(ifindex, ClassId::qdisc(handle_major).raw(), parent.raw(), 0);
    m.attributes.push(TcAttribute::Kind(q.kind().into()));
    m.attributes.push(options_attr(q.options(table)));
    RouteNetlinkMessage::NewQueueDiscipline(m)
}

/// `RTM_NEWTCLASS` for an htb class (`hz`: see [`encode_htb_class`]).
pub fn class_message(
    ifindex: u32,
    parent: ClassId,
    classid: ClassId,
    c: &HtbClass,
    hz: u32,
) -> RouteNetlinkMessage {
    let mut m = tc_message(ifindex, classid.raw(), parent.raw(), 0);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    m.attributes.push(options_attr(encode_htb_class(c, hz)));
    RouteNetlinkMessage::NewTrafficClass(m)
}

const ETH_P_IP: u16 = 0x0800;
/// Offsets of the source and destination addresses in an IPv4 header.
const IPV4_SRC_OFF: i32 = 12;
const IPV4_DST_OFF: i32 = 16;

/// `RTM_NEWTFILTER` for `tc filter add … protocol ip prio P u32 match ip src S match ip dst D
/// flowid F`.
pub fn u32_filter_message(
    ifindex: u32,
    parent: ClassId,
    prio: u16,
    m: &U32Match,
    flowid: ClassId,
) -> RouteNetlinkMessage {
    let info = (u32::from(prio) << 16) | u32::from(ETH_P_IP.to_be());
    let mut msg = tc_message(ifindex, 0, parent.raw(), info);
    let mut keys = Vec::new();
    for (net, off) in [(m.src, IPV4_SRC_OFF), (m.dst, IPV4_DST_OFF)] {
        if let Some(net) = net
            && net.prefix_len() > 0
        {
            let mut k = TcU32Key::default();
            k.mask = u32::from(net.netmask());
            k.val = u32::from(net.network());
            k.off = off;
            keys.push(k);
        }
    }
    if keys.is_empty() {
        // Match everything: one key with an empty mask.
        keys.push(TcU32Key::default());
    }
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = keys.len() as u8;
    sel.keys = keys;
    msg.attributes.push(TcAttribute::Kind("u32".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::ClassId(flowid.into())),
        TcOption::U32(TcFilterU32Option::Selector(sel)),
    ]));
    RouteNetlinkMessage::NewTrafficFilter(msg)
}

/// `RTM_DELQDISC` for the qdisc at `parent`.
pub fn qdisc_delete_message(ifindex: u32, parent: Parent) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelQueueDiscipline(tc_message(ifindex, 0, parent.raw(), 0))
}

/// `RTM_DELTCLASS` for class `classid`.
pub fn class_delete_message(ifindex: u32, classid: ClassId) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelTrafficClass(tc_message(ifindex, classid.raw(), 0, 0))
}

/// `RTM_DELTFILTER` for every filter at `prio` on `parent`.
pub fn filter_delete_message(ifindex: u32, parent: ClassId, prio: u16) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelTrafficFilter(tc_message(
        ifindex,
        0,
        parent.raw(),
        u32::from(prio) << 16,
    ))
}

// ---------------------------------------------------------------------------------------------
// Sending.

/// Why a request failed: the kernel said no (errno and, with extended acks, its message), or
/// the request never got an answer.
#[derive(Debug)]
enum Failure {
    Kernel { errno: i32, message: Option<String> },
    Transport(rtnetlink::Error),
}

impl Failure {
    fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            Failure::Transport(_) => None,
        }
    }

    fn into_error(self, op: &'static str, object: String) -> HostError {
        match self {
            Failure::Kernel { errno, message } => HostError::Kernel {
                op,
                object,
                message,
                source: std::io::Error::from_raw_os_error(errno),
            },
            Failure::Transport(e) => HostError::netlink(op, object, e),
        }
    }
}

async fn send(h: &rtnetlink::Handle, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Failure> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut resp = h.clone().request(req).map_err(Failure::Transport)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(Failure::Kernel {
                errno: -e.raw_code(),
                message: ext_ack_message(&e.header),
            });
        }
    }
    Ok(())
}

async fn dump_raw(
    h: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
) -> Result<Vec<TcMessage>, Failure> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut resp = h.clone().request(req).map_err(Failure::Transport)?;
    let mut out = Vec::new();
    while let Some(m) = resp.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewQueueDiscipline(t)
                | RouteNetlinkMessage::NewTrafficClass(t),
            ) => out.push(t),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(Failure::Kernel {
                    errno: -e.raw_code(),
                    message: ext_ack_message(&e.header),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's extended-ack message from the bytes after an `NLMSG_ERROR`'s error code: the
/// echoed request (whole, or only its header when the socket caps acks), then attributes.
fn ext_ack_message(after_code: &[u8]) -> Option<String> {
    let orig_len = u32::from_ne_bytes(after_code.get(0..4)?.try_into().ok()?) as usize;
    [orig_len.next_multiple_of(4), 16]
        .into_iter()
        .find_map(|start| scan_ext_ack(after_code.get(start..)?))
}

fn scan_ext_ack(mut b: &[u8]) -> Option<String> {
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let v = &b[4..len];
            let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
            let s = String::from_utf8_lossy(&v[..end]).trim().to_string();
            return (!s.is_empty()).then_some(s);
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

const ENOENT: i32 = libc::ENOENT;
const EINVAL: i32 = libc::EINVAL;

/// An rtnetlink handle acting inside namespace `name`, with extended acks on so that kernel
/// refusals come with the kernel's explanation (prefer it to [`ns::netlink`] for tc).
pub fn netlink(name: &str) -> Result<rtnetlink::Handle> {
    netlink_fd(&ns::open(name)?, name)
}

/// [`netlink`] for the namespace behind `fd` (a container's `/proc/<pid>/ns/net`); `name`
/// names it in errors.
pub fn netlink_fd(fd: &std::os::fd::OwnedFd, name: &str) -> Result<rtnetlink::Handle> {
    let mut socks = ns::netlink_sockets(&[(fd, name)])?;
    let sock = socks
        .pop()
        .ok_or_else(|| HostError::other("opening a netlink socket in", name, "no socket"))?;
    sock.set_ext_ack(true)
        .map_err(|e| HostError::io("enabling extended acks on a netlink socket in", name, e))?;
    Ok(ns::handle_from_socket(sock))
}

/// The timer frequency tc reads from `/proc/net/psched` for htb's default bursts: the fourth
/// field when the third is 1000000 (10^9 with high-resolution timers), else 10^9.
pub fn psched_hz() -> u32 {
    let Ok(s) = std::fs::read_to_string("/proc/net/psched") else {
        return 1_000_000_000;
    };
    let f: Vec<u32> = s
        .split_whitespace()
        .filter_map(|w| u32::from_str_radix(w, 16).ok())
        .collect();
    match f.as_slice() {
        [_, _, 1_000_000, hz, ..] if *hz > 0 => *hz,
        _ => 1_000_000_000,
    }
}

fn object(ifindex: u32, what: impl fmt::Display) -> String {
    format!("{what} on ifindex {ifindex}")
}

// ---------------------------------------------------------------------------------------------
// Operations.

/// Creates or replaces the qdisc at `parent` on `ifindex`, with handle `handle_major:` (0 lets
/// the kernel choose).
///
/// Guarantees: idempotent; the parameters are validated before anything is sent; replacing a
/// qdisc of another kind under the same handle deletes the old one first (its classes and
/// children go with it). Errors: [`HostError::Unsupported`] when the kernel lacks the kind
/// (e.g. no sch_netem), [`HostError::Kernel`] for other refusals.
/// Assumes: `h` acts in the namespace that holds `ifindex`.
pub async fn qdisc_replace(
    h: &rtnetlink::Handle,
    ifindex: u32,
    parent: Parent,
    handle_major: u16,
    q: &Qdisc,
) -> Result<()> {
    q.validate()?;
    let table = match q {
        // iproute2's file where it is installed, else the same table computed (a board image
        // without iproute2's data files still gets `distribution normal`).
        Qdisc::Netem(n) => n
            .distribution
            .as_ref()
            .and_then(crate::linkem::dist::table)
            .map(|t| t.to_vec()),
        _ => None,
    };
    let what = format!(
        "{} qdisc {} {}",
        q.kind(),
        ClassId::qdisc(handle_major),
        parent
    );
    let op = "replacing";
    let msg = || qdisc_message(ifindex, parent, handle_major, q, table.as_deref());
    let err = match send(h, msg(), QDISC_REPLACE_FLAGS).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    match err.errno() {
        Some(ENOENT) if unknown_kind(&err, q.kind()).await => {
            Err(unsupported(q.kind(), op, object(ifindex, &what), &err))
        }
        Some(EINVAL) if handle_major != 0 => {
            // The kernel changes a qdisc in place only within one kind: swap it.
            let existing = dump(h, ifindex).await?;
            let clash = existing.iter().any(|i| {
                i.parent == parent && i.handle.major == handle_major && i.kind != q.kind()
            });
            if !clash {
                return Err(err.into_error(op, object(ifindex, &what)));
            }
            qdisc_delete(h, ifindex, parent).await?;
            send(h, msg(), QDISC_ADD_FLAGS)
                .await
                .map_err(|e| e.into_error(op, object(ifindex, &what)))
        }
        _ => Err(err.into_error(op, object(ifindex, &what))),
    }
}

/// Whether an ENOENT from creating a qdisc of `kind` means the kernel lacks the kind (rather
/// than a missing parent). The kernel's message says so when extended acks are on; otherwise
/// ask [`kernel_has_qdisc`].
async fn unknown_kind(err: &Failure, kind: &str) -> bool {
    match err {
        Failure::Kernel {
            message: Some(m), ..
        } => m.contains("kind is unknown"),
        Failure::Kernel { message: None, .. } => matches!(kernel_has_qdisc(kind).await, Ok(false)),
        Failure::Transport(_) => false,
    }
}

fn unsupported(kind: &str, op: &'static str, object: String, err: &Failure) -> HostError {
    let kernel = match err {
        Failure::Kernel {
            message: Some(m), ..
        } => format!(" (kernel: {m})"),
        _ => String::new(),
    };
    HostError::Unsupported {
        what: kind.to_string(),
        op,
        object,
        detail: format!(
            "this kernel has no `{kind}` qdisc (module sch_{kind} is not built or not loadable){kernel}"
        ),
    }
}

/// Deletes the qdisc at `parent` on `ifindex` (and everything below it).
///
/// Guarantees: idempotent: a qdisc that is not there (or the device's default one, which
/// cannot be deleted) counts as deleted.
pub async fn qdisc_delete(h: &rtnetlink::Handle, ifindex: u32, parent: Parent) -> Result<()> {
    match send(h, qdisc_delete_message(ifindex, parent), DELETE_FLAGS).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno(), Some(ENOENT | EINVAL)) => Ok(()),
        Err(e) => Err(e.into_error("deleting", object(ifindex, format!("qdisc at {parent}")))),
    }
}

/// Creates or changes htb class `classid` under `parent` (the htb qdisc `N:` or a class).
///
/// Guarantees: idempotent; validated before sending. Assumes: an htb qdisc owns `classid`'s
/// major.
pub async fn class_replace(
    h: &rtnetlink::Handle,
    ifindex: u32,
    parent: ClassId,
    classid: ClassId,
    c: &HtbClass,
) -> Result<()> {
    c.validate()?;
    let msg = class_message(ifindex, parent, classid, c, psched_hz());
    send(h, msg, CLASS_REPLACE_FLAGS).await.map_err(|e| {
        e.into_error(
            "replacing",
            object(ifindex, format!("htb class {classid} (parent {parent})")),
        )
    })
}

/// Deletes class `classid`. Guarantees: idempotent (a missing class counts as deleted).
/// A class still referenced by filters or holding children is refused by the kernel (EBUSY).
pub async fn class_delete(h: &rtnetlink::Handle, ifindex: u32, classid: ClassId) -> Result<()> {
    match send(h, class_delete_message(ifindex, classid), DELETE_FLAGS).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno(), Some(ENOENT | EINVAL)) => Ok(()),
        Err(e) => Err(e.into_error("deleting", object(ifindex, format!("class {classid}")))),
    }
}

/// Adds a u32 filter on qdisc `parent` (e.g. `1:`) at priority `prio` that sends IPv4
/// packets matching `m` to class `flowid`.
///
/// Not idempotent on its own (u32 appends): to replace the filters of a priority, call
/// [`filter_delete`] for it first.
pub async fn u32_filter_add(
    h: &rtnetlink::Handle,
    ifindex: u32,
    parent: ClassId,
    prio: u16,
    m: &U32Match,
    flowid: ClassId,
) -> Result<()> {
    if prio == 0 {
        return Err(HostError::other(
            "validating",
            "u32 filter",
            "prio 0 asks the kernel to pick one; give 1..=65535",
        ));
    }
    let msg = u32_filter_message(ifindex, parent, prio, m, flowid);
    send(h, msg, FILTER_ADD_FLAGS).await.map_err(|e| {
        e.into_error(
            "adding",
            object(
                ifindex,
                format!("u32 filter prio {prio} on {parent} → {flowid}"),
            ),
        )
    })
}

/// Deletes every filter at priority `prio` of qdisc `parent`. Guarantees: idempotent.
pub async fn filter_delete(
    h: &rtnetlink::Handle,
    ifindex: u32,
    parent: ClassId,
    prio: u16,
) -> Result<()> {
    match send(
        h,
        filter_delete_message(ifindex, parent, prio),
        DELETE_FLAGS,
    )
    .await
    {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno(), Some(ENOENT | EINVAL)) => Ok(()),
        Err(e) => Err(e.into_error(
            "deleting",
            object(ifindex, format!("filters prio {prio} on {parent}")),
        )),
    }
}

/// The qdiscs of `ifindex`, decoded.
pub async fn dump(h: &rtnetlink::Handle, ifindex: u32) -> Result<Vec<QdiscInfo>> {
    let m = tc_message(ifindex, 0, 0, 0);
    let all = dump_raw(h, RouteNetlinkMessage::GetQueueDiscipline(m))
        .await
        .map_err(|e| e.into_error("dumping", object(ifindex, "qdiscs")))?;
    // The kernel dumps every device's qdiscs whatever the request says: filter here.
    all.iter()
        .filter(|t| t.header.index as u32 == ifindex)
        .map(|t| {
            decode::qdisc_info(t)
                .map_err(|d| HostError::other("decoding", object(ifindex, "qdisc dump"), d))
        })
        .collect()
}

/// The classes of `ifindex`, decoded.
pub async fn dump_classes(h: &rtnetlink::Handle, ifindex: u32) -> Result<Vec<ClassInfo>> {
    let m = tc_message(ifindex, 0, 0, 0);
    let all = dump_raw(h, RouteNetlinkMessage::GetTrafficClass(m))
        .await
        .map_err(|e| e.into_error("dumping", object(ifindex, "classes")))?;
    all.iter()
        .filter(|t| t.header.index as u32 == ifindex)
        .map(|t| {
            decode::class_info(t)
                .map_err(|d| HostError::other("decoding", object(ifindex, "class dump"), d))
        })
        .collect()
}

/// Runs iproute2's `ip` with `args` (tests set up and inspect scratch namespaces with it);
/// panics with its stderr when it fails.
#[cfg(test)]
pub(crate) fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A namespace deleted when dropped (scratch probes, tests).
pub(crate) struct ScratchNs(pub String);

impl ScratchNs {
    /// Creates `edgesim-<tag>-<pid>-<n>`.
    pub(crate) fn create(tag: &str) -> Result<Self> {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let name = format!("edgesim-{tag}-{}-{n}", std::process::id());
        ns::create(&name)?;
        Ok(ScratchNs(name))
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        if let Err(e) = ns::delete(&self.0) {
            tracing::warn!(namespace = %self.0, error = %e, "deleting scratch namespace");
        }
    }
}

/// Whether the running kernel offers qdisc `kind` (`"netem"`, `"tbf"`, …), for `edgesim
/// doctor` and validation.
///
/// Probes by adding the qdisc, without options, to the loopback device of a scratch namespace
/// that is deleted afterwards: "unknown kind" (ENOENT) means absent; success or any other
/// refusal (typically EINVAL for missing options) means the kernel knows the kind. The host's
/// namespace is never touched; the kernel may autoload the module, as `tc` would.
/// Assumes: root (creating namespaces).
pub async fn kernel_has_qdisc(kind: &str) -> Result<bool> {
    let scratch = ScratchNs::create("probe")?;
    let h = netlink(&scratch.0)?;
    const LOOPBACK_IFINDEX: u32 = 1;
    let mut m = tc_message(LOOPBACK_IFINDEX, 0, TC_H_ROOT, 0);
    m.attributes.push(TcAttribute::Kind(kind.into()));
    let res = send(
        &h,
        RouteNetlinkMessage::NewQueueDiscipline(m),
        QDISC_ADD_FLAGS,
    )
    .await;
    drop(h);
    Ok(match res {
        Ok(()) => true,
        Err(Failure::Kernel { errno: ENOENT, .. }) => false,
        Err(Failure::Kernel { .. }) => true,
        Err(Failure::Transport(e)) => {
            return Err(HostError::netlink(
                "probing",
                format!("qdisc kind {kind} in {}", scratch.0),
                e,
            ));
        }
    })
}

/// Decodes a datagram as the answers to tc requests and dumps are decoded: an error's
/// extended-ack text, a qdisc's or class's kind, handles, options and statistics, and the
/// option layouts of tbf, htb and netem on the raw bytes too. For [`crate::fuzzing`].
pub(crate) fn decode_datagram(data: &[u8]) {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    let _ = data.get(4..).map(ext_ack_message);
    let _ = decode::tbf(data);
    let _ = decode::htb(data);
    let _ = decode::htb_class(data);
    let _ = decode::netem(data);
    let _ = decode::attrs(data);
    let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) else {
        return;
    };
    if let NetlinkPayload::InnerMessage(inner) = m.payload {
        match inner {
            RouteNetlinkMessage::NewQueueDiscipline(t) => {
                let _ = decode::qdisc_info(&t);
            }
            RouteNetlinkMessage::NewTrafficClass(t) => {
                let _ = decode::class_info(&t);
            }
            _ => {}
        }
    }
}
