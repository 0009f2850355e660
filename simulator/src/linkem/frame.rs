//! Frames as linkem sees them: a virtio-net header (`PACKET_VNET_HDR`) followed by an
//! Ethernet frame, which may be a GSO super-frame of up to 64 KB.
//!
//! Design:
//! - Offloads stay on and GSO frames pass whole when only delay and rate apply (they count
//!   the wire bytes of every segment the frame stands for, netem's `qdisc_pkt_len`). That is
//!   what keeps linkem within reach of a bare veth's throughput.
//! - When a rule takes per-packet decisions (loss, duplication, corruption, reordering), a
//!   TCP (IPv4 or IPv6) or UDP-L4 GSO frame is cut here into the wire-size packets it stands
//!   for — what the kernel's `tcp_gso_segment` / `__udp_gso_segment` would put on a wire:
//!   per-segment IP length (and a fresh IPv4 id and header checksum), TCP sequence numbers,
//!   FIN/PSH only on the last segment and CWR only on the first. Each segment leaves with a
//!   *partial* checksum (pseudo-header sum plus `NEEDS_CSUM`), exactly like a
//!   checksum-offloaded packet, so the kernel or the receiver completes it at no cost here.
//! - Corruption first completes a partial checksum in software (netem's
//!   `skb_checksum_help`), then flips one bit, so the receiver sees a real checksum error.
//! - GSO kinds that cannot be cut here (UFO, tunnels, IPv6 extension headers) are decided
//!   as one unit; the relay counts them (`gso_whole`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// Size of `struct virtio_net_hdr` (the legacy header `PACKET_VNET_HDR` uses).
pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`, little-endian on the wire of a packet socket (the legacy
/// header's byte order is the host's, and linkem supports little-endian hosts only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "linkem assumes a little-endian host"
);

impl VnetHdr {
    pub fn read(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Where the headers of a frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Offset of the network header (after the Ethernet header and any VLAN tags).
    pub l3: usize,
    pub ethertype: u16,
    /// IPv4 source and destination (what rules match on).
    pub v4: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Transport header offset and protocol, when the network header could be read
    /// (IPv4 first fragment or unfragmented; IPv6 without extension headers).
    pub l4: Option<(usize, u8)>,
}

/// Reads a frame's headers; `None` if it is shorter than an Ethernet header.
pub fn parse(f: &[u8]) -> Option<Parsed> {
    if f.len() < ETH_HLEN {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(12);
    while matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD) && f.len() >= l3 + 4 {
        ethertype = be16(l3 + 2);
        l3 += 4;
    }
    let mut p = Parsed {
        l3,
        ethertype,
        v4: None,
        l4: None,
    };
    match ethertype {
        ETH_P_IP if f.len() >= l3 + 20 && f[l3] >> 4 == 4 => {
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            let src = Ipv4Addr::new(f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]);
            let dst = Ipv4Addr::new(f[l3 + 16], f[l3 + 17], f[l3 + 18], f[l3 + 19]);
            p.v4 = Some((src, dst));
            let frag_off = be16(l3 + 6) & 0x1fff;
            if ihl >= 20 && f.len() >= l3 + ihl && frag_off == 0 {
                p.l4 = Some((l3 + ihl, f[l3 + 9]));
            }
        }
        ETH_P_IPV6 if f.len() >= l3 + 40 && f[l3] >> 4 == 6 => {
            let nh = f[l3 + 6];
            if nh == IPPROTO_TCP || nh == IPPROTO_UDP {
                p.l4 = Some((l3 + 40, nh));
            }
        }
        _ => {}
    }
    Some(p)
}

/// Which packet a frame is, for the decision log: addresses, protocol, and what identifies
/// the packet within its flow (ports and TCP sequence number, or ICMP type, echo identifier
/// and sequence number; the IPv4 identification field). A log entry can then be matched with
/// the application's own record of the packet (a ping's sequence number, a capture) rather
/// than by its position in the log, which a packet lost before the relay would shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PacketId {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol number.
    #[serde(serialize_with = "proto_name")]
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_id: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// Echo request and reply only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_id: Option<u16>,
    /// Echo request and reply only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_seq: Option<u16>,
}

fn proto_name<S: Serializer>(p: &u8, s: S) -> Result<S::Ok, S::Error> {
    match *p {
        IPPROTO_TCP => s.serialize_str("tcp"),
        IPPROTO_UDP => s.serialize_str("udp"),
        IPPROTO_ICMP => s.serialize_str("icmp"),
        IPPROTO_ICMPV6 => s.serialize_str("icmpv6"),
        n => s.serialize_u8(n),
    }
}

/// Identifies an IPv4 or IPv6 frame (see [`PacketId`]); `None` for anything else. Fields the
/// frame is too short to hold (or that a later IPv4 fragment does not carry) are left out.
pub fn identify(f: &[u8], p: &Parsed) -> Option<PacketId> {
    let l3 = p.l3;
    let (src, dst, proto, ip_id, l4) = match p.ethertype {
        ETH_P_IP => {
            let (s, d) = p.v4?;
            let proto = f[l3 + 9];
            let id = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
            (
                IpAddr::V4(s),
                IpAddr::V4(d),
                proto,
                Some(id),
                p.l4.map(|(o, _)| o),
            )
        }
        ETH_P_IPV6 if f.len() >= l3 + 40 && f[l3] >> 4 == 6 => {
            let addr = |o: usize| {
                let b: [u8; 16] = f[o..o + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(b))
            };
            (addr(l3 + 8), addr(l3 + 24), f[l3 + 6], None, Some(l3 + 40))
        }
        _ => return None,
    };
    let mut id = PacketId {
        proto,
        src,
        dst,
        ip_id,
        sport: None,
        dport: None,
        tcp_seq: None,
        icmp_type: None,
        icmp_id: None,
        icmp_seq: None,
    };
    let Some(l4) = l4 else { return Some(id) };
    let be16 = |i: usize| f.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            id.sport = be16(l4);
            id.dport = be16(l4 + 2);
            if proto == IPPROTO_TCP {
                id.tcp_seq = f
                    .get(l4 + 4..l4 + 8)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            id.icmp_type = f.get(l4).copied();
            // Echo request and reply: 8 and 0 in ICMP, 128 and 129 in ICMPv6.
            let echo = matches!(
                (proto, id.icmp_type),
                (IPPROTO_ICMP, Some(0 | 8)) | (IPPROTO_ICMPV6, Some(128 | 129))
            );
            if echo {
                id.icmp_id = be16(l4 + 4);
                id.icmp_seq = be16(l4 + 6);
            }
        }
        _ => {}
    }
    Some(id)
}

/// Length of the transport header at `l4` (TCP data offset, or 8 for UDP).
fn l4_header_len(f: &[u8], l4: usize, proto: u8) -> Option<usize> {
    let n = match proto {
        IPPROTO_TCP => usize::from(*f.get(l4 + 12)? >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    (n >= 8 && f.len() >= l4 + n).then_some(n)
}

/// Bytes the frame occupies on a wire: a GSO frame counts the headers of every segment it
/// stands for (netem's `qdisc_pkt_len`), anything else its own length.
pub fn wire_len(h: &VnetHdr, f: &[u8], p: &Parsed) -> u32 {
    let len = f.len();
    if h.is_gso()
        && h.gso_size > 0
        && let Some((l4, proto)) = p.l4
        && let Some(l4h) = l4_header_len(f, l4, proto)
    {
        let hlen = l4 + l4h;
        let payload = len.saturating_sub(hlen);
        let segs = payload.div_ceil(usize::from(h.gso_size)).max(1);
        return u32::try_from(len + (segs - 1) * hlen).unwrap_or(u32::MAX);
    }
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Ones'-complement sum of `data` as big-endian 16-bit words, added to `acc` (unfolded).
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not complemented).
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum for a transport segment of `l4_len` bytes.
fn pseudo_sum(f: &[u8], l3: usize, ethertype: u16, proto: u8, l4_len: usize) -> u64 {
    let (addrs, n) = if ethertype == ETH_P_IP {
        (&f[l3 + 12..l3 + 20], 8)
    } else {
        (&f[l3 + 8..l3 + 40], 32)
    };
    debug_assert_eq!(addrs.len(), n);
    sum16(addrs, u64::from(proto) + l4_len as u64)
}

/// Completes a partial (offloaded) checksum in software, as `skb_checksum_help` does, and
/// clears `NEEDS_CSUM`. Returns `false` if the header points outside the frame.
pub fn complete_checksum(h: &mut VnetHdr, f: &mut [u8]) -> bool {
    if h.flags & F_NEEDS_CSUM == 0 {
        return true;
    }
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > f.len() {
        return false;
    }
    let mut c = !fold(sum16(&f[start..], 0));
    if c == 0 {
        // CSUM_MANGLED_0: a UDP checksum of 0 would mean "no checksum".
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    h.flags &= !F_NEEDS_CSUM;
    true
}

/// Flips bit `bit` counted from the start of the network header.
pub fn flip_bit(f: &mut [u8], l3: usize, bit: u32) {
    let i = l3 + (bit / 8) as usize;
    if let Some(b) = f.get_mut(i) {
        *b ^= 1 << (bit % 8);
    }
}

/// Cuts a TCP or UDP-L4 GSO frame into the packets it stands for, each prefixed by its own
/// virtio-net header, appended to `out`. Returns `false` (and appends nothing) for a frame
/// this cannot cut.
pub fn segment(h: &VnetHdr, f: &[u8], p: &Parsed, out: &mut Vec<Vec<u8>>) -> bool {
    let kind = h.gso_type & !GSO_ECN;
    let Some((l4, proto)) = p.l4 else {
        return false;
    };
    let ok = matches!(
        (kind, p.ethertype, proto),
        (GSO_TCPV4, ETH_P_IP, IPPROTO_TCP)
            | (GSO_TCPV6, ETH_P_IPV6, IPPROTO_TCP)
            | (GSO_UDP_L4, ETH_P_IP | ETH_P_IPV6, IPPROTO_UDP)
    );
    let mss = usize::from(h.gso_size);
    let Some(l4h) = l4_header_len(f, l4, proto) else {
        return false;
    };
    let hlen = l4 + l4h;
    if !ok || mss == 0 || f.len() <= hlen {
        return false;
    }
    let l3 = p.l3;
    let payload = &f[hlen..];
    let n = payload.len().div_ceil(mss);
    let ip_id = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
    let seq0 = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
    let (check_off, check_at) = if proto == IPPROTO_TCP {
        (16u16, l4 + 16)
    } else {
        (6, l4 + 6)
    };
    out.reserve(n);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut v = Vec::with_capacity(VNET_HDR_LEN + hlen + chunk.len());
        v.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        v.extend_from_slice(&f[..hlen]);
        v.extend_from_slice(chunk);
        let s = &mut v[VNET_HDR_LEN..];
        let l4_len = l4h + chunk.len();
        if p.ethertype == ETH_P_IP {
            let ihl = l4 - l3;
            let total = (ihl + l4_len) as u16;
            s[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            let id = ip_id.wrapping_add(i as u16);
            s[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            s[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
            let c = !fold(sum16(&s[l3..l4], 0));
            s[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            let plen = (l4 - l3 - 40 + l4_len) as u16;
            s[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }
        if proto == IPPROTO_TCP {
            let seq = seq0.wrapping_add((i * mss) as u32);
            s[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < n {
                s[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                s[l4 + 13] &= !TCP_CWR;
            }
        } else {
            s[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        let ps = fold(pseudo_sum(s, l3, p.ethertype, proto, l4_len));
        s[check_at..check_at + 2].copy_from_slice(&ps.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: hlen as u16,
            gso_size: 0,
            csum_start: l4 as u16,
            csum_offset: check_off,
        }
        .write(&mut v);
        out.push(v);
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP/IPv4 GSO super-frame as the kernel hands it to a packet socket: partial
    /// checksum, `gso_size` = mss.
    pub(crate) fn tcp4_gso(payload: &[u8], mss: u16, flags: u8) -> (VnetHdr, Vec<u8>) {
        let mut f = vec![0u8; 14 + 20 + 32];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        let total = (20 + 32 + payload.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 9, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 9, 0, 2]);
        let c = !fold(sum16(ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut f[34..66];
        tcp[0..2].copy_from_slice(&5201u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&40000u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        tcp[12] = 8 << 4;
        tcp[13] = flags;
        f.extend_from_slice(payload);
        let p = parse(&f).unwrap();
        let l4_len = 32 + payload.len();
        let ps = fold(pseudo_sum(&f, 14, ETH_P_IP, IPPROTO_TCP, l4_len));
        f[34 + 16..34 + 18].copy_from_slice(&ps.to_be_bytes());
        assert_eq!(p.l4, Some((34, IPPROTO_TCP)));
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        };
        (h, f)
    }

    fn l4_valid(f: &[u8], p: &Parsed) -> bool {
        let (l4, proto) = p.l4.unwrap();
        let l4_len = f.len() - l4;
        fold(sum16(
            &f[l4..],
            pseudo_sum(f, p.l3, p.ethertype, proto, l4_len),
        )) == 0xffff
    }

    #[test]
    fn tcp4_gso_frame_segments_like_the_kernel() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let (h, f) = tcp4_gso(&payload, 1448, 0x18 | TCP_FIN | TCP_CWR);
        let p = parse(&f).unwrap();
        assert_eq!(wire_len(&h, &f, &p), (f.len() + 3 * 66) as u32);
        let mut out = Vec::new();
        assert!(segment(&h, &f, &p, &mut out));
        assert_eq!(out.len(), 4);
        let mut joined = Vec::new();
        for (i, v) in out.iter().enumerate() {
            let mut vh = VnetHdr::read(v).unwrap();
            assert_eq!(vh.gso_type, GSO_NONE);
            let mut s = v[VNET_HDR_LEN..].to_vec();
            let sp = parse(&s).unwrap();
            // IPv4 header: length, id, checksum.
            assert_eq!(
                usize::from(u16::from_be_bytes([s[16], s[17]])),
                s.len() - 14
            );
            assert_eq!(
                u16::from_be_bytes([s[18], s[19]]),
                0xfffeu16.wrapping_add(i as u16)
            );
            assert_eq!(fold(sum16(&s[14..34], 0)), 0xffff);
            // TCP: sequence (wrapping), flags.
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(i as u32 * 1448));
            let fl = s[34 + 13];
            assert_eq!(fl & TCP_FIN != 0, i == 3);
            assert_eq!(fl & TCP_PSH != 0, i == 3);
            assert_eq!(fl & TCP_CWR != 0, i == 0);
            // Partial checksum completes to a valid one.
            assert!(complete_checksum(&mut vh, &mut s));
            assert!(l4_valid(&s, &sp));
            joined.extend_from_slice(&s[66..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn corruption_after_checksum_is_detectable() {
        let (mut h, mut f) = tcp4_gso(&[1, 2, 3, 4, 5], 1448, 0x18);
        h.gso_type = GSO_NONE;
        let p = parse(&f).unwrap();
        assert!(complete_checksum(&mut h, &mut f));
        assert_eq!(h.flags & F_NEEDS_CSUM, 0);
        assert!(l4_valid(&f, &p));
        let last_bit = (f.len() - p.l3 - 1) as u32 * 8 + 3;
        flip_bit(&mut f, p.l3, last_bit);
        assert!(!l4_valid(&f, &p));
    }

    #[test]
    fn udp_l4_and_tcp6_segment() {
        // UDP GSO over IPv6.
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[14 + 6] = IPPROTO_UDP;
        f[14 + 8 + 15] = 1;
        f[14 + 24 + 15] = 2;
        f.extend(std::iter::repeat_n(0xab, 2500));
        let p = parse(&f).unwrap();
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 62,
            gso_size: 1000,
            csum_start: 54,
            csum_offset: 6,
        };
        let mut out = Vec::new();
        assert!(segment(&h, &f, &p, &mut out));
        let lens: Vec<usize> = out.iter().map(|v| v.len() - VNET_HDR_LEN - 62).collect();
        assert_eq!(lens, vec![1000, 1000, 500]);
        for v in &out {
            let mut vh = VnetHdr::read(v).unwrap();
            let mut s = v[VNET_HDR_LEN..].to_vec();
            let sp = parse(&s).unwrap();
            assert_eq!(
                usize::from(u16::from_be_bytes([s[18], s[19]])),
                s.len() - 54,
                "IPv6 payload length"
            );
            assert!(complete_checksum(&mut vh, &mut s));
            assert!(l4_valid(&s, &sp));
        }
        // UFO is not cut.
        let mut out = Vec::new();
        let ufo = VnetHdr {
            gso_type: GSO_UDP,
            ..h
        };
        assert!(!segment(&ufo, &f, &p, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn parse_handles_vlan_and_short_frames() {
        assert!(parse(&[0u8; 10]).is_none());
        let (_, f) = tcp4_gso(&[0; 10], 1448, 0);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        let p = parse(&tagged).unwrap();
        assert_eq!(p.l3, 18);
        assert_eq!(
            p.v4,
            Some((Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2)))
        );
        let arp = {
            let mut a = vec![0u8; 42];
            a[12] = 0x08;
            a[13] = 0x06;
            a
        };
        let p = parse(&arp).unwrap();
        assert_eq!((p.v4, p.l4), (None, None));
        assert_eq!(identify(&arp, &p), None);
    }

    #[test]
    fn packets_are_identified_for_the_log() {
        // TCP over IPv4, behind a VLAN tag: ports, sequence number, IPv4 id.
        let (_, f) = tcp4_gso(&[0; 10], 1448, 0);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        let id = identify(&tagged, &parse(&tagged).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!({"proto": "tcp", "src": "10.9.0.1", "dst": "10.9.0.2",
                "ip_id": 0xfffe, "sport": 5201, "dport": 40000, "tcp_seq": 0xffff_fff0u32})
        );
        // An ICMP echo request as ping sends it (98 bytes): identifier and sequence number.
        let mut ping = f[..34].to_vec();
        ping[14 + 9] = IPPROTO_ICMP;
        ping.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0x00, 0xb4]);
        ping.resize(98, 0);
        let id = identify(&ping, &parse(&ping).unwrap()).unwrap();
        assert_eq!(
            (id.proto, id.icmp_type, id.icmp_id, id.icmp_seq, id.sport),
            (IPPROTO_ICMP, Some(8), Some(0x1234), Some(180), None)
        );
        // Other ICMP (port unreachable) has no echo fields.
        ping[34] = 3;
        let id = identify(&ping, &parse(&ping).unwrap()).unwrap();
        assert_eq!(
            (id.icmp_type, id.icmp_id, id.icmp_seq),
            (Some(3), None, None)
        );
        // A later IPv4 fragment: addresses and id only.
        let mut frag = f.clone();
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10;
        let id = identify(&frag, &parse(&frag).unwrap()).unwrap();
        assert_eq!((id.ip_id, id.sport, id.tcp_seq), (Some(0xfffe), None, None));
        // ICMPv6 echo reply; a frame cut short after the addresses keeps them.
        let mut v6 = vec![0u8; 14 + 40];
        v6[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        v6[14] = 0x60;
        v6[14 + 6] = IPPROTO_ICMPV6;
        v6[14 + 8 + 15] = 1;
        v6[14 + 24 + 15] = 2;
        let short = identify(&v6, &parse(&v6).unwrap()).unwrap();
        assert_eq!((short.icmp_type, short.ip_id), (None, None));
        v6.extend_from_slice(&[129, 0, 0, 0, 0, 7, 0, 9]);
        let id = identify(&v6, &parse(&v6).unwrap()).unwrap();
        assert_eq!(
            serde_json::to_value(id).unwrap(),
            serde_json::json!({"proto": "icmpv6", "src": "::1", "dst": "::2",
                "icmp_type": 129, "icmp_id": 7, "icmp_seq": 9})
        );
    }
}
