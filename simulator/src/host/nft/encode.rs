//! nf_tables batches for a [`Ruleset`], built byte by byte (pure: no I/O).
//!
//! Every message mirrors what `nft` 1.0.6 sends for the same ruleset written in its own syntax
//! (see `golden/`): the same messages in the same order, the same attributes in the same
//! order, the same expressions for each match (including nft's redundant ones, such as the
//! `cmp gte 0` of a range starting at 0), and the same user data, so that `nft list ruleset`
//! prints what edgesim installed exactly as if nft had installed it (comments, anonymous sets
//! and their element types included). Only two things differ from nft's batch: sequence
//! numbers and set ids are ours, and the last command carries `NLM_F_ACK` so that the kernel
//! confirms the commit (see [`Encoded::ack_seq`]).
//!
//! Constants come from the kernel's `include/uapi/linux/netfilter/nf_tables.h`, `nfnetlink.h`
//! and libnftnl's `udata.h` (user data is a libnftnl convention that the kernel stores
//! opaquely).

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLA_F_NESTED, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};

use super::{
    BRIDGED_MARK, CELL_COMMENT, CHAIN, CellNat, LOSS_SCALE, MANAGEMENT_COMMENT, MARK_COMMENT,
    Ruleset,
};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(super) const NFT_MSG_NEWTABLE: u8 = 0;
pub(super) const NFT_MSG_DELTABLE: u8 = 2;
pub(super) const NFT_MSG_NEWCHAIN: u8 = 3;
pub(super) const NFT_MSG_NEWRULE: u8 = 6;
pub(super) const NFT_MSG_GETRULE: u8 = 7;
pub(super) const NFT_MSG_DELRULE: u8 = 8;
pub(super) const NFT_MSG_NEWSET: u8 = 9;
pub(super) const NFT_MSG_NEWSETELEM: u8 = 12;

/// The netlink message type of an nf_tables message.
pub(super) const fn msg_type(nft_msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | nft_msg as u16
}

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
/// `NF_INET_FORWARD`, and `NF_BR_FORWARD` for the bridge family: both 2.
const HOOK_LOCAL_IN: u32 = 1;
const HOOK_FORWARD: u32 = 2;
/// The base chain of a host's own traffic ([`super::Layout::Host`]).
pub(super) const INPUT: &str = "input";
/// `NF_INET_PRE_ROUTING` and `NF_INET_POST_ROUTING`: the NAT of a cell.
const HOOK_PRE_ROUTING: u32 = 0;
const HOOK_POST_ROUTING: u32 = 4;
/// The cell's NAT chains and their priorities (nft's `dstnat` and `srcnat`).
const CELL_IN: &str = "cell-in";
const CELL_OUT: &str = "cell-out";
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
const NF_ACCEPT: u32 = 1;

pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_EXPR_NAME: u16 = 1;
pub(super) const NFTA_EXPR_DATA: u16 = 2;
/// libnftnl's `NFTNL_UDATA_RULE_COMMENT`: the TLV nft reads a rule's comment from.
pub(super) const UDATA_RULE_COMMENT: u8 = 0;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
/// The name of every anonymous set: the kernel picks `__set0`, `__set1`, … in its place.
const ANON_SET: &str = "__set%d";

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// Elements per NEWSETELEM message: keeps each element list far below the 64 KiB an attribute
/// can hold.
const ELEMENTS_PER_MESSAGE: usize = 1024;

const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_DROP: i32 = 0;
const NFT_RETURN: i32 = -5;

/// nft's legacy register 1 (16 bytes wide, holds an IPv6 address) and the verdict register.
const NFT_REG_1: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;

const NFT_META_PROTOCOL: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_NFPROTO: u32 = 15;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_CMP_NEQ: u32 = 1;
const NFT_NAT_SNAT: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;
/// `IFNAMSIZ`: interface names are compared as 16 bytes, zero-padded.
const IFNAMSIZ: usize = 16;
const IPPROTO_TCP: u8 = 6;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
const NFT_BITWISE_BOOL: u32 = 0;
const NFT_NG_RANDOM: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The two tables of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// `inet`: traffic routed between sites (and bridged IP through br_netfilter).
    Inet,
    /// `bridge`: traffic between nodes on one bridge.
    Bridge,
}

impl Family {
    pub(super) const ALL: [Family; 2] = [Family::Inet, Family::Bridge];

    /// `NFPROTO_INET`, `NFPROTO_BRIDGE`.
    pub(super) const fn raw(self) -> u8 {
        match self {
            Family::Inet => 1,
            Family::Bridge => 7,
        }
    }

    pub(super) fn from_raw(v: u8) -> Option<Self> {
        Family::ALL.into_iter().find(|f| f.raw() == v)
    }

    pub(super) const fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }

    /// The `filter` priority of the family's forward hook.
    const fn priority(self) -> i32 {
        match self {
            Family::Inet => 0,
            Family::Bridge => -200,
        }
    }
}

/// What a message of a batch acts on, to name it when the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Subject<'a> {
    /// The transaction as a whole (batch begin and end, the commit itself).
    Batch,
    Table(Family),
    Chain(Family),
    /// Emptying the table's chains.
    Flush(Family),
    /// A rule, or an anonymous set of a rule, by the rule's name.
    Rule(Family, &'a str),
    Set(Family, &'a str),
}

/// A finished batch.
#[derive(Debug)]
pub(super) struct Encoded<'a> {
    pub bytes: Vec<u8>,
    /// The batch's messages by sequence number: `first_seq` is the batch begin.
    pub first_seq: u32,
    pub subjects: Vec<Subject<'a>>,
    /// The last command, which alone asks for an acknowledgement: nfnetlink processes a batch
    /// inside `sendmsg` and sends the acknowledgements after the commit (or the abort), after
    /// any error of an earlier message, so this one's arrival ends the reply. (Kernels before
    /// 6.10 ignore `NLM_F_ACK` on the batch begin and end messages themselves.)
    pub ack_seq: u32,
}

impl Encoded<'_> {
    /// Sequence numbers this batch used: the next batch starts at `first_seq + messages()`.
    pub fn messages(&self) -> u32 {
        self.subjects.len() as u32
    }

    #[cfg(test)]
    pub fn last_seq(&self) -> u32 {
        self.first_seq.wrapping_add(self.messages()).wrapping_sub(1)
    }

    /// What the message with sequence number `seq` acted on.
    pub fn subject(&self, seq: u32) -> Option<Subject<'_>> {
        let i = seq.wrapping_sub(self.first_seq) as usize;
        self.subjects.get(i).copied()
    }
}

/// Appends netlink messages and attributes to a buffer.
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a message with its nlmsghdr (length patched by [`Writer::end_msg`]) and nfgenmsg.
    fn begin_msg(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }

    fn put(&mut self, kind: u16, value: &[u8]) {
        // Values are bounded by construction (names ≤ 64, comments ≤ 130, addresses ≤ 16).
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A 32-bit attribute, in network byte order as nf_tables wants them.
    fn put_u32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    fn put_str(&mut self, kind: u16, s: &str) {
        let len = (4 + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Closes a nest. A nest larger than an attribute can describe is a bug of this module
    /// (element lists are split well below it), so it is checked in debug builds only.
    fn end_nest(&mut self, start: usize) {
        let len = self.buf.len() - start;
        debug_assert!(len <= usize::from(u16::MAX), "attribute of {len} bytes");
        self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// `NFTA_*_DATA`-style nest holding one `NFTA_DATA_VALUE`.
    fn put_data(&mut self, kind: u16, value: &[u8]) {
        let n = self.nest(kind);
        self.put(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { … } }`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Self)) {
        let elem = self.nest(NFTA_LIST_ELEM);
        self.put_str(NFTA_EXPR_NAME, name);
        let d = self.nest(NFTA_EXPR_DATA);
        data(self);
        self.end_nest(d);
        self.end_nest(elem);
    }

    /// `meta load KEY => reg 1`
    fn meta_load(&mut self, key: u32) {
        self.expr("meta", |w| {
            w.put_u32(2, key); // NFTA_META_KEY
            w.put_u32(1, NFT_REG_1); // NFTA_META_DREG
        });
    }

    /// `meta set KEY with reg 1`
    fn meta_set(&mut self, key: u32) {
        self.expr("meta", |w| {
            w.put_u32(2, key); // NFTA_META_KEY
            w.put_u32(3, NFT_REG_1); // NFTA_META_SREG
        });
    }

    /// `cmp OP reg 1 VALUE`
    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_CMP_SREG
            w.put_u32(2, op); // NFTA_CMP_OP
            w.put_data(3, value); // NFTA_CMP_DATA
        });
    }

    /// `payload load LEN b @ network header + OFFSET => reg 1`
    fn payload(&mut self, offset: u32, len: u32) {
        self.payload_at(NFT_PAYLOAD_NETWORK_HEADER, offset, len);
    }

    /// `payload load LEN b @ BASE header + OFFSET => reg 1`
    fn payload_at(&mut self, base: u32, offset: u32, len: u32) {
        self.expr("payload", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
            w.put_u32(2, base); // NFTA_PAYLOAD_BASE
            w.put_u32(3, offset); // NFTA_PAYLOAD_OFFSET
            w.put_u32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    /// `bitwise reg 1 = (reg 1 & MASK) ^ XOR`. nft names the boolean operation explicitly in
    /// the expressions it writes itself (the mark rules) but leaves it to the kernel's default
    /// in the mask of a prefix match: `with_op` reproduces either.
    fn bitwise(&mut self, mask: &[u8], xor: &[u8], with_op: bool) {
        self.expr("bitwise", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_BITWISE_SREG
            w.put_u32(2, NFT_REG_1); // NFTA_BITWISE_DREG
            if with_op {
                w.put_u32(6, NFT_BITWISE_BOOL); // NFTA_BITWISE_OP
            }
            w.put_u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            w.put_data(4, mask); // NFTA_BITWISE_MASK
            w.put_data(5, xor); // NFTA_BITWISE_XOR
        });
    }

    /// `lookup reg 1 set __set%d` (the set added earlier in the batch under `set_id`)
    fn lookup(&mut self, set_id: u32) {
        self.expr("lookup", |w| {
            w.put_u32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
            w.put_str(1, ANON_SET); // NFTA_LOOKUP_SET
            w.put_u32(4, set_id); // NFTA_LOOKUP_SET_ID
        });
    }

    /// `numgen reg 1 = random mod MODULUS`
    fn numgen_random(&mut self, modulus: u32) {
        self.expr("numgen", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_NG_DREG
            w.put_u32(2, modulus); // NFTA_NG_MODULUS
            w.put_u32(3, NFT_NG_RANDOM); // NFTA_NG_TYPE
            w.put_u32(4, 0); // NFTA_NG_OFFSET
        });
    }

    /// `byteorder reg 1 = hton(reg 1, 4, 4)`
    fn hton32(&mut self) {
        self.expr("byteorder", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_BYTEORDER_SREG
            w.put_u32(2, NFT_REG_1); // NFTA_BYTEORDER_DREG
            w.put_u32(3, NFT_BYTEORDER_HTON); // NFTA_BYTEORDER_OP
            w.put_u32(4, 4); // NFTA_BYTEORDER_LEN
            w.put_u32(5, 4); // NFTA_BYTEORDER_SIZE
        });
    }

    /// `counter` (the kernel starts it at zero)
    fn counter(&mut self) {
        self.expr("counter", |_| {});
    }

    /// `immediate reg 1 ADDR`, then `nat KIND ip addr_min reg 1`.
    fn nat(&mut self, kind: u32, to: std::net::Ipv4Addr) {
        self.expr("immediate", |w| {
            w.put_u32(1, NFT_REG_1); // NFTA_IMMEDIATE_DREG
            w.put_data(2, &to.octets()); // NFTA_IMMEDIATE_DATA
        });
        self.expr("nat", |w| {
            w.put_u32(1, kind); // NFTA_NAT_TYPE
            w.put_u32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
            w.put_u32(3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
        });
    }

    /// `immediate reg 0 VERDICT`
    fn verdict(&mut self, code: i32) {
        self.expr("immediate", |w| {
            w.put_u32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
            let data = w.nest(2); // NFTA_IMMEDIATE_DATA
            let v = w.nest(NFTA_DATA_VERDICT);
            w.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
            w.end_nest(v);
            w.end_nest(data);
        });
    }
}

/// Which address of the IP header a match reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Saddr,
    Daddr,
}

/// How one side of a rule matches: one prefix (or address), or an anonymous set.
enum Operand {
    Net(IpNet),
    Set(u32),
}

/// An address as a number, and the width of its family in bytes.
fn bits(a: IpAddr) -> (u128, usize) {
    match a {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 4),
        IpAddr::V6(a) => (u128::from(a), 16),
    }
}

/// The `width` low bytes of `v`, in network byte order.
fn be(v: u128, width: usize) -> Vec<u8> {
    v.to_be_bytes()[16 - width..].to_vec()
}

/// Network-header offset of a field: IPv4 saddr 12, daddr 16; IPv6 saddr 8, daddr 24.
fn offset(v6: bool, field: Field) -> u32 {
    match (v6, field) {
        (false, Field::Saddr) => 12,
        (false, Field::Daddr) => 16,
        (true, Field::Saddr) => 8,
        (true, Field::Daddr) => 24,
    }
}

/// A libnftnl user-data TLV: one byte of type, one of length, then the value.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// The user data nft attaches to an anonymous set of addresses, which `nft list` needs to
/// print the elements as addresses: key byte order (big endian), element merging (interval
/// sets), and the key's "typeof": a payload expression (nft's `EXPR_PAYLOAD` = 7) of the
/// protocol description ip (12) / ip6 (13) and its field template (ip saddr 11, daddr 12; ip6
/// saddr 8, daddr 9).
fn set_udata(v6: bool, field: Field, interval: bool) -> Vec<u8> {
    let (desc, template): (u32, u32) = match (v6, field) {
        (false, Field::Saddr) => (12, 11),
        (false, Field::Daddr) => (12, 12),
        (true, Field::Saddr) => (13, 8),
        (true, Field::Daddr) => (13, 9),
    };
    let mut data = Vec::new();
    tlv(&mut data, 0, &desc.to_ne_bytes()); // NFTNL_UDATA_SET_TYPEOF_PAYLOAD_DESC
    tlv(&mut data, 1, &template.to_ne_bytes()); // NFTNL_UDATA_SET_TYPEOF_PAYLOAD_TYPE
    let mut typeof_ = Vec::new();
    tlv(&mut typeof_, 0, &7u32.to_ne_bytes()); // NFTNL_UDATA_SET_TYPEOF_EXPR
    tlv(&mut typeof_, 1, &data); // NFTNL_UDATA_SET_TYPEOF_DATA
    let mut out = Vec::new();
    tlv(&mut out, 0, &2u32.to_ne_bytes()); // NFTNL_UDATA_SET_KEYBYTEORDER: big endian
    if interval {
        tlv(&mut out, 2, &1u32.to_ne_bytes()); // NFTNL_UDATA_SET_MERGE_ELEMENTS
    }
    tlv(&mut out, 3, &typeof_); // NFTNL_UDATA_SET_KEY_TYPEOF
    out
}

/// One element of an anonymous set.
struct Element {
    key: u128,
    /// An interval set's end marker (the first key past an interval).
    end: bool,
    /// The start of an interval that runs to the top of the address space (no end marker).
    open: bool,
}

/// The elements of an interval set holding `nets`, as nft lays them out, and the set size nft
/// declares. Overlapping or adjacent prefixes merge into one interval; the space below the
/// first interval is closed by an end marker at 0, as nft does.
fn interval_elements(nets: &[IpNet], width: usize) -> (Vec<Element>, usize) {
    let top = if width == 4 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let mut ranges: Vec<(u128, u128)> = nets
        .iter()
        .map(|n| (bits(n.network()).0, bits(n.broadcast()).0))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 == top || start <= last.1 + 1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = Vec::with_capacity(2 * merged.len() + 1);
    let gap_below = merged.first().is_some_and(|r| r.0 != 0);
    if gap_below {
        out.push(Element {
            key: 0,
            end: true,
            open: false,
        });
    }
    for (start, end) in &merged {
        out.push(Element {
            key: *start,
            end: false,
            open: *end == top,
        });
        if *end != top {
            out.push(Element {
                key: end + 1,
                end: true,
                open: false,
            });
        }
    }
    (out, 2 * merged.len() + usize::from(gap_below))
}

/// `ip saddr { … }` and friends, per IP family: the merged address lists of a from→to pair,
/// one entry per family that can match (an empty list is "any"); both empty matches every
/// packet.
struct Matches {
    v6: bool,
    from: Vec<IpNet>,
    to: Vec<IpNet>,
}

fn merged(list: &[IpNet]) -> Vec<IpNet> {
    let mut v = IpNet::aggregate(&list.iter().map(IpNet::trunc).collect());
    v.sort();
    v
}

fn address_matches(from: &[IpNet], to: &[IpNet]) -> Vec<Matches> {
    if from.is_empty() && to.is_empty() {
        return vec![Matches {
            v6: false,
            from: vec![],
            to: vec![],
        }];
    }
    let mut out = Vec::new();
    for v6 in [false, true] {
        let fam = |list: &[IpNet]| -> Vec<IpNet> {
            list.iter()
                .copied()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .collect()
        };
        let (f, t) = (fam(from), fam(to));
        if (!from.is_empty() && f.is_empty()) || (!to.is_empty() && t.is_empty()) {
            continue; // this family cannot match both sides
        }
        out.push(Matches {
            v6,
            from: merged(&f),
            to: merged(&t),
        });
    }
    out
}

/// The loss threshold: drop when `numgen random mod 10000` is in `0..n`.
pub(super) fn loss_threshold(p: f64) -> u32 {
    (p * f64::from(LOSS_SCALE))
        .round()
        .clamp(0.0, f64::from(LOSS_SCALE)) as u32
}

/// A drop rule of the ruleset, before it is laid out for one table.
struct DropRule<'a> {
    name: &'a str,
    matches: Matches,
    /// `Some(n)`: drop only when `numgen random mod 10000` is in `0..n`.
    below: Option<u32>,
}

/// The drop rules of `rs`, in order: blocks, then losses (losses of probability 0 vanish).
fn drop_rules(rs: &Ruleset) -> Vec<DropRule<'_>> {
    let mut out = Vec::new();
    for b in &rs.blocks {
        for matches in address_matches(&b.from, &b.to) {
            out.push(DropRule {
                name: &b.name,
                matches,
                below: None,
            });
        }
    }
    for l in &rs.losses {
        let n = loss_threshold(l.probability);
        if n == 0 {
            continue;
        }
        for matches in address_matches(&l.from, &l.to) {
            out.push(DropRule {
                name: &l.name,
                matches,
                below: (n < LOSS_SCALE).then_some(n),
            });
        }
    }
    out
}

/// A batch under construction: `NFNL_MSG_BATCH_BEGIN`, commands, `NFNL_MSG_BATCH_END`.
pub(super) struct Batch<'a> {
    w: Writer,
    first_seq: u32,
    subjects: Vec<Subject<'a>>,
    last_command: Option<usize>,
    next_set_id: u32,
    table: &'a str,
}

impl<'a> Batch<'a> {
    /// A batch acting on tables named `table`, numbering its messages from `first_seq`.
    pub fn new(table: &'a str, first_seq: u32) -> Self {
        let mut b = Batch {
            w: Writer {
                buf: Vec::with_capacity(4096),
            },
            first_seq,
            subjects: Vec::new(),
            last_command: None,
            next_set_id: 1,
            table,
        };
        b.control(NFNL_MSG_BATCH_BEGIN);
        b
    }

    fn seq(&self) -> u32 {
        self.first_seq.wrapping_add(self.subjects.len() as u32)
    }

    fn control(&mut self, kind: u16) {
        let seq = self.seq();
        let m = self.w.begin_msg(
            kind,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        self.w.end_msg(m);
        self.subjects.push(Subject::Batch);
    }

    /// Starts a command message; its attributes follow; [`Batch::end`] closes it.
    fn begin(&mut self, msg: u8, flags: u16, family: Family, subject: Subject<'a>) -> usize {
        let seq = self.seq();
        let start = self.w.begin_msg(msg_type(msg), flags, seq, family.raw(), 0);
        self.subjects.push(subject);
        self.last_command = Some(start);
        start
    }

    fn end(&mut self, start: usize) {
        self.w.end_msg(start);
    }

    /// `add table FAMILY TABLE` (a no-op when it exists).
    pub fn add_table(&mut self, family: Family) {
        let m = self.begin(
            NFT_MSG_NEWTABLE,
            NLM_F_REQUEST,
            family,
            Subject::Table(family),
        );
        self.w.put_str(NFTA_TABLE_NAME, self.table);
        self.w.put_u32(NFTA_TABLE_FLAGS, 0);
        self.end(m);
    }

    /// `delete table FAMILY TABLE`
    pub fn delete_table(&mut self, family: Family) {
        let m = self.begin(
            NFT_MSG_DELTABLE,
            NLM_F_REQUEST,
            family,
            Subject::Table(family),
        );
        self.w.put_str(NFTA_TABLE_NAME, self.table);
        self.end(m);
    }

    /// `add chain FAMILY TABLE forward { type filter hook forward priority P; policy accept; }`
    /// (updates nothing when it exists: its hook stays registered).
    pub fn add_forward_chain(&mut self, family: Family) {
        self.add_base_chain(family, CHAIN, HOOK_FORWARD);
    }

    /// `add chain FAMILY TABLE NAME { type filter hook HOOK priority P; policy accept; }`
    fn add_base_chain(&mut self, family: Family, name: &str, hooknum: u32) {
        self.add_typed_chain(family, name, "filter", hooknum, family.priority());
    }

    /// `add chain FAMILY TABLE NAME { type KIND hook … priority PRIORITY; policy accept; }`.
    fn add_typed_chain(
        &mut self,
        family: Family,
        name: &str,
        kind: &str,
        hooknum: u32,
        priority: i32,
    ) {
        let m = self.begin(
            NFT_MSG_NEWCHAIN,
            NLM_F_REQUEST | NLM_F_CREATE,
            family,
            Subject::Chain(family),
        );
        self.w.put_str(NFTA_CHAIN_TABLE, self.table);
        self.w.put_str(NFTA_CHAIN_NAME, name);
        self.w.put_str(NFTA_CHAIN_TYPE, kind);
        self.w.put_u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        let hook = self.w.nest(NFTA_CHAIN_HOOK);
        self.w.put_u32(NFTA_HOOK_HOOKNUM, hooknum);
        self.w.put(NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
        self.w.end_nest(hook);
        self.end(m);
    }

    /// `flush table FAMILY TABLE`: deletes every rule (and with them their anonymous sets).
    pub fn flush_table(&mut self, family: Family) {
        let m = self.begin(
            NFT_MSG_DELRULE,
            NLM_F_REQUEST,
            family,
            Subject::Flush(family),
        );
        self.w.put_str(NFTA_RULE_TABLE, self.table);
        self.end(m);
    }

    /// Starts `add rule FAMILY TABLE forward …`; expressions follow through the writer.
    fn begin_rule(&mut self, family: Family, name: &'a str) -> (usize, usize) {
        self.begin_rule_in(family, CHAIN, name)
    }

    /// Starts `add rule FAMILY TABLE CHAIN …`.
    fn begin_rule_in(&mut self, family: Family, chain: &str, name: &'a str) -> (usize, usize) {
        let m = self.begin(
            NFT_MSG_NEWRULE,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND,
            family,
            Subject::Rule(family, name),
        );
        self.w.put_str(NFTA_RULE_TABLE, self.table);
        self.w.put_str(NFTA_RULE_CHAIN, chain);
        let exprs = self.w.nest(NFTA_RULE_EXPRESSIONS);
        (m, exprs)
    }

    /// Closes a rule with its comment.
    fn end_rule(&mut self, (m, exprs): (usize, usize), comment: &str) {
        self.w.end_nest(exprs);
        let mut udata = Vec::with_capacity(comment.len() + 3);
        let mut text = comment.as_bytes().to_vec();
        text.push(0);
        tlv(&mut udata, UDATA_RULE_COMMENT, &text);
        self.w.put(NFTA_RULE_USERDATA, &udata);
        self.end(m);
    }

    /// The rule that ties the two tables together (see [`BRIDGED_MARK`]): the bridge chain
    /// marks every frame it passes (`meta mark set meta mark | MARK`), the inet chain lets
    /// marked packets through untouched (`meta mark & MARK == MARK return`).
    pub fn mark_rule(&mut self, family: Family) {
        let r = self.begin_rule(family, MARK_COMMENT);
        let mark = BRIDGED_MARK.to_ne_bytes();
        self.w.meta_load(NFT_META_MARK);
        match family {
            Family::Bridge => {
                self.w.bitwise(&(!BRIDGED_MARK).to_ne_bytes(), &mark, true);
                self.w.meta_set(NFT_META_MARK);
            }
            Family::Inet => {
                self.w.bitwise(&mark, &0u32.to_ne_bytes(), true);
                self.w.cmp(NFT_CMP_EQ, &mark);
                self.w.verdict(NFT_RETURN);
            }
        }
        self.end_rule(r, MARK_COMMENT);
    }

    /// Adds the anonymous set of `nets` (at least two, merged, one IP family) that `rule`'s
    /// `field` is looked up in; returns its id.
    fn add_set(&mut self, family: Family, rule: &'a str, field: Field, nets: &[IpNet]) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        let v6 = matches!(nets.first(), Some(IpNet::V6(_)));
        let width = if v6 { 16 } else { 4 };
        let interval = nets.iter().any(|n| n.prefix_len() != n.max_prefix_len());
        let (elements, size) = if interval {
            interval_elements(nets, width)
        } else {
            let v: Vec<Element> = nets
                .iter()
                .map(|n| Element {
                    key: bits(n.addr()).0,
                    end: false,
                    open: false,
                })
                .collect();
            let n = v.len();
            (v, n)
        };

        let flags =
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | if interval { NFT_SET_INTERVAL } else { 0 };
        let m = self.begin(
            NFT_MSG_NEWSET,
            NLM_F_REQUEST | NLM_F_CREATE,
            family,
            Subject::Set(family, rule),
        );
        self.w.put_str(NFTA_SET_TABLE, self.table);
        self.w.put_str(NFTA_SET_NAME, ANON_SET);
        self.w.put_u32(NFTA_SET_FLAGS, flags);
        self.w.put_u32(NFTA_SET_KEY_TYPE, if v6 { 8 } else { 7 }); // ipv6_addr, ipv4_addr
        self.w.put_u32(NFTA_SET_KEY_LEN, width as u32);
        self.w.put_u32(NFTA_SET_ID, id);
        let desc = self.w.nest(NFTA_SET_DESC);
        self.w.put_u32(NFTA_SET_DESC_SIZE, size as u32);
        self.w.end_nest(desc);
        self.w
            .put(NFTA_SET_USERDATA, &set_udata(v6, field, interval));
        self.end(m);

        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            let m = self.begin(
                NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_CREATE,
                family,
                Subject::Set(family, rule),
            );
            self.w.put_str(NFTA_SET_ELEM_LIST_TABLE, self.table);
            self.w.put_str(NFTA_SET_ELEM_LIST_SET, ANON_SET);
            self.w.put_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
            let list = self.w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for (i, e) in chunk.iter().enumerate() {
                let n = self.w.nest(i as u16 + 1);
                if e.end {
                    self.w
                        .put_u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                self.w.put_data(NFTA_SET_ELEM_KEY, &be(e.key, width));
                if e.open {
                    // NFTNL_UDATA_SET_ELEM_FLAGS: NFTNL_SET_ELEM_F_INTERVAL_OPEN
                    let mut u = Vec::new();
                    tlv(&mut u, 1, &1u32.to_ne_bytes());
                    self.w.put(NFTA_SET_ELEM_USERDATA, &u);
                }
                self.w.end_nest(n);
            }
            self.w.end_nest(list);
            self.end(m);
        }
        id
    }

    /// Adds the set an operand needs (before the rule that uses it, as nft orders them).
    fn operand(
        &mut self,
        family: Family,
        rule: &'a str,
        field: Field,
        nets: &[IpNet],
    ) -> Option<Operand> {
        match nets {
            [] => None,
            [one] => Some(Operand::Net(*one)),
            many => Some(Operand::Set(self.add_set(family, rule, field, many))),
        }
    }

    /// `ip saddr 10.0.0.0/24`, `ip6 daddr { … }`: load the field, then compare (a prefix on
    /// whole bytes loads only those bytes; any other prefix is masked) or look it up.
    fn address(&mut self, v6: bool, field: Field, op: &Operand) {
        let width: u32 = if v6 { 16 } else { 4 };
        let off = offset(v6, field);
        match op {
            Operand::Set(id) => {
                self.w.payload(off, width);
                self.w.lookup(*id);
            }
            Operand::Net(net) => {
                let (addr, w) = bits(net.network());
                let bytes = be(addr, w);
                let len = u32::from(net.prefix_len());
                if len > 0 && len % 8 == 0 {
                    let n = len / 8;
                    self.w.payload(off, n);
                    self.w.cmp(NFT_CMP_EQ, &bytes[..n as usize]);
                } else {
                    let (mask, _) = bits(net.netmask());
                    self.w.payload(off, width);
                    self.w.bitwise(&be(mask, w), &vec![0; w], false);
                    self.w.cmp(NFT_CMP_EQ, &bytes);
                }
            }
        }
    }

    /// `add rule inet TABLE CHAIN ip saddr A ip daddr B tcp sport P tcp dport Q accept`: one
    /// direction of a TCP connection (or, with a port 0, of every connection of a service)
    /// let through ahead of every drop rule.
    fn flow_rule(&mut self, chain: &str, from: std::net::SocketAddr, to: std::net::SocketAddr) {
        let r = self.begin_rule_in(Family::Inet, chain, MANAGEMENT_COMMENT);
        let v6 = from.is_ipv6();
        self.w.meta_load(NFT_META_NFPROTO);
        self.w
            .cmp(NFT_CMP_EQ, &[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }]);
        for (field, ip) in [(Field::Saddr, from.ip()), (Field::Daddr, to.ip())] {
            let net = IpNet::from(ip);
            self.address(v6, field, &Operand::Net(net));
        }
        self.w.meta_load(NFT_META_L4PROTO);
        self.w.cmp(NFT_CMP_EQ, &[IPPROTO_TCP]);
        // Port 0 is no TCP port: it stands for any (a service's every connection, see
        // [`super::Flow`]), and only the other port is matched.
        match (from.port(), to.port()) {
            (0, 0) => {}
            (sport, 0) => {
                self.w.payload_at(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2);
                self.w.cmp(NFT_CMP_EQ, &sport.to_be_bytes());
            }
            (0, dport) => {
                self.w.payload_at(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                self.w.cmp(NFT_CMP_EQ, &dport.to_be_bytes());
            }
            (sport, dport) => {
                // nft merges the adjacent port matches into one 4-byte load.
                self.w.payload_at(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 4);
                let mut ports = sport.to_be_bytes().to_vec();
                ports.extend_from_slice(&dport.to_be_bytes());
                self.w.cmp(NFT_CMP_EQ, &ports);
            }
        }
        self.w.verdict(NF_ACCEPT as i32);
        self.end_rule(r, MANAGEMENT_COMMENT);
    }

    /// The cell's three NAT rules (see [`CellNat`]), as nft spells them:
    /// `iifname IFACE ip daddr BOARD tcp dport != PORT dnat ip to CELL`,
    /// `iifname IFACE ip daddr BOARD meta l4proto != tcp dnat ip to CELL` and
    /// `oifname IFACE ip saddr CELL snat ip to BOARD`.
    fn cell_rules(&mut self, c: &CellNat) {
        let mut name = [0u8; IFNAMSIZ];
        name[..c.iface.len()].copy_from_slice(c.iface.as_bytes());
        for tcp in [true, false] {
            let r = self.begin_rule_in(Family::Inet, CELL_IN, CELL_COMMENT);
            self.w.meta_load(NFT_META_IIFNAME);
            self.w.cmp(NFT_CMP_EQ, &name);
            self.w.meta_load(NFT_META_NFPROTO);
            self.w.cmp(NFT_CMP_EQ, &[NFPROTO_IPV4]);
            self.address(
                false,
                Field::Daddr,
                &Operand::Net(IpNet::from(IpAddr::V4(c.board))),
            );
            self.w.meta_load(NFT_META_L4PROTO);
            if tcp {
                self.w.cmp(NFT_CMP_EQ, &[IPPROTO_TCP]);
                self.w.payload_at(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                self.w.cmp(NFT_CMP_NEQ, &c.keep_port.to_be_bytes());
            } else {
                self.w.cmp(NFT_CMP_NEQ, &[IPPROTO_TCP]);
            }
            self.w.nat(NFT_NAT_DNAT, c.cell);
            self.end_rule(r, CELL_COMMENT);
        }
        let r = self.begin_rule_in(Family::Inet, CELL_OUT, CELL_COMMENT);
        self.w.meta_load(NFT_META_OIFNAME);
        self.w.cmp(NFT_CMP_EQ, &name);
        self.w.meta_load(NFT_META_NFPROTO);
        self.w.cmp(NFT_CMP_EQ, &[NFPROTO_IPV4]);
        self.address(
            false,
            Field::Saddr,
            &Operand::Net(IpNet::from(IpAddr::V4(c.cell))),
        );
        self.w.nat(NFT_NAT_SNAT, c.board);
        self.end_rule(r, CELL_COMMENT);
    }

    /// One drop rule, with its sets before it.
    fn drop_rule(&mut self, family: Family, rule: &DropRule<'a>) {
        self.drop_rule_in(family, CHAIN, rule);
    }

    /// One drop rule in `chain`, with its sets before it.
    fn drop_rule_in(&mut self, family: Family, chain: &str, rule: &DropRule<'a>) {
        let m = &rule.matches;
        let src = self.operand(family, rule.name, Field::Saddr, &m.from);
        let dst = self.operand(family, rule.name, Field::Daddr, &m.to);
        let r = self.begin_rule_in(family, chain, rule.name);
        if src.is_some() || dst.is_some() {
            // The dependency nft adds before an `ip`/`ip6` match.
            match family {
                Family::Inet => {
                    self.w.meta_load(NFT_META_NFPROTO);
                    let p = if m.v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 };
                    self.w.cmp(NFT_CMP_EQ, &[p]);
                }
                Family::Bridge => {
                    self.w.meta_load(NFT_META_PROTOCOL);
                    let p = if m.v6 { ETH_P_IPV6 } else { ETH_P_IP };
                    self.w.cmp(NFT_CMP_EQ, &p.to_be_bytes());
                }
            }
        }
        if let Some(op) = &src {
            self.address(m.v6, Field::Saddr, op);
        }
        if let Some(op) = &dst {
            self.address(m.v6, Field::Daddr, op);
        }
        if let Some(n) = rule.below {
            // numgen random mod 10000 0-(n-1), compared in network byte order as nft does.
            self.w.numgen_random(LOSS_SCALE);
            self.w.hton32();
            self.w.cmp(NFT_CMP_GTE, &0u32.to_be_bytes());
            self.w.cmp(NFT_CMP_LTE, &(n - 1).to_be_bytes());
        }
        self.w.counter();
        self.w.verdict(NF_DROP);
        self.end_rule(r, rule.name);
    }

    /// Closes the batch; the last command asks for the acknowledgement.
    pub fn finish(mut self) -> Encoded<'a> {
        let ack_seq = self.seq().wrapping_sub(1);
        if let Some(start) = self.last_command {
            let at = start + 6;
            let flags = u16::from_ne_bytes([self.w.buf[at], self.w.buf[at + 1]]) | NLM_F_ACK;
            self.w.buf[at..at + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        self.control(NFNL_MSG_BATCH_END);
        Encoded {
            bytes: self.w.buf,
            first_seq: self.first_seq,
            subjects: self.subjects,
            ack_seq,
        }
    }
}

/// The transaction that makes tables `inet TABLE` and `bridge TABLE` hold exactly `rs`: each
/// table and its base chain are added (a no-op when present), emptied and refilled, all in
/// one atomic batch. Keeping the base chains keeps their hooks registered: re-creating a base
/// chain makes the transaction wait for an RCU grace period (about 10 ms on the test
/// machine), emptying and refilling it does not.
pub(super) fn apply<'a>(rs: &'a Ruleset, table: &'a str, first_seq: u32) -> Encoded<'a> {
    let rules = drop_rules(rs);
    let mut b = Batch::new(table, first_seq);
    for family in Family::ALL {
        b.add_table(family);
        b.add_forward_chain(family);
        b.flush_table(family);
        b.mark_rule(family);
        for r in &rules {
            b.drop_rule(family, r);
        }
    }
    b.finish()
}

/// The same for a host's own traffic ([`super::Layout::Host`]): table `inet TABLE` with base
/// chain `input`: the exempt connections' accept rules first, then blocks and losses, all on
/// arrival (see [`super::Layout::Host`] for why not on output).
pub(super) fn apply_host<'a>(rs: &'a Ruleset, table: &'a str, first_seq: u32) -> Encoded<'a> {
    let rules = drop_rules(rs);
    let mut b = Batch::new(table, first_seq);
    b.add_table(Family::Inet);
    b.add_base_chain(Family::Inet, INPUT, HOOK_LOCAL_IN);
    if rs.cell.is_some() {
        b.add_typed_chain(
            Family::Inet,
            CELL_IN,
            "nat",
            HOOK_PRE_ROUTING,
            PRIORITY_DSTNAT,
        );
        b.add_typed_chain(
            Family::Inet,
            CELL_OUT,
            "nat",
            HOOK_POST_ROUTING,
            PRIORITY_SRCNAT,
        );
    }
    b.flush_table(Family::Inet);
    if let Some(c) = &rs.cell {
        b.cell_rules(c);
    }
    for f in &rs.exempt {
        b.flow_rule(INPUT, f.remote, f.local);
    }
    for r in &rules {
        b.drop_rule_in(Family::Inet, INPUT, r);
    }
    b.finish()
}

/// The transaction that removes the run's tables whether or not they exist.
#[cfg(test)]
pub(super) fn delete(table: &str, first_seq: u32) -> Encoded<'_> {
    delete_families(table, first_seq, &Family::ALL)
}

/// Removes tables `FAMILY TABLE` for each of `families`, whether or not they exist.
pub(super) fn delete_families<'a>(
    table: &'a str,
    first_seq: u32,
    families: &[Family],
) -> Encoded<'a> {
    let mut b = Batch::new(table, first_seq);
    for &family in families {
        b.add_table(family);
        b.delete_table(family);
    }
    b.finish()
}

/// A dump request for the rules of table `family table`. (With a table name the kernel dumps
/// only the first table of that name it finds, whatever the family: ask per family.)
pub(super) fn get_rules(family: Family, table: &str, seq: u32) -> Vec<u8> {
    let mut w = Writer {
        buf: Vec::with_capacity(64),
    };
    let m = w.begin_msg(
        msg_type(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.raw(),
        0,
    );
    w.put_str(NFTA_RULE_TABLE, table);
    w.end_msg(m);
    w.buf
}
