//! Byte-for-byte comparison of the batches built here with what `nft` sends for the same
//! rules, as captured by `golden/capture.sh`. Each case restates a fixture's nft script as a
//! typed [`Ruleset`]; every message (type, flags, nfgenmsg, attributes) must match, after
//! three normalisations: sequence numbers are ignored, set ids are renumbered in order of
//! first use (nft counts them from wherever its session is), and the `NLM_F_ACK` that our
//! batch puts on its last command (nft's has none) is checked apart.

use netlink_packet_core::NLM_F_ACK;

use super::decode::replies;
use super::encode::{self, Encoded, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, msg_type};
use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

fn block(name: &str, from: &[&str], to: &[&str]) -> Block {
    Block {
        name: name.into(),
        from: nets(from),
        to: nets(to),
    }
}

fn loss(name: &str, from: &[&str], to: &[&str], probability: f64) -> Loss {
    Loss {
        name: name.into(),
        from: nets(from),
        to: nets(to),
        probability,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let text = match name {
        "empty" => include_str!("golden/empty.txt"),
        "representative" => include_str!("golden/representative.txt"),
        "prefixes" => include_str!("golden/prefixes.txt"),
        "delete" => include_str!("golden/delete.txt"),
        "host" => include_str!("golden/host.txt"),
        "cell" => include_str!("golden/cell.txt"),
        other => panic!("no fixture {other}"),
    };
    let hex: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<String>();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// One message of a batch: type, flags, and everything after the nlmsghdr.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    kind: u16,
    flags: u16,
    seq: u32,
    body: Vec<u8>,
}

fn split(bytes: &[u8]) -> Vec<Msg> {
    replies(bytes)
        .map(|r| {
            let r = r.unwrap();
            Msg {
                kind: r.kind,
                flags: r.flags,
                seq: r.seq,
                body: r.payload.to_vec(),
            }
        })
        .collect()
}

/// (offset, length) of each attribute value in `b[from..]`, by type.
fn attr_spans(b: &[u8], from: usize) -> Vec<(u16, usize, usize)> {
    let mut out = Vec::new();
    let mut at = from;
    while at + 4 <= b.len() {
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let kind = u16::from_ne_bytes([b[at + 2], b[at + 3]]) & 0x3fff;
        assert!(
            len >= 4 && at + len <= b.len(),
            "malformed attribute at {at}"
        );
        out.push((kind, at + 4, len - 4));
        at += len.next_multiple_of(4);
    }
    out
}

fn value(spans: &[(u16, usize, usize)], kind: u16) -> Option<(usize, usize)> {
    spans
        .iter()
        .find(|s| s.0 == kind)
        .map(|&(_, at, len)| (at, len))
}

/// Offsets of the set ids in a message body: NEWSET's `NFTA_SET_ID`, NEWSETELEM's
/// `NFTA_SET_ELEM_LIST_SET_ID`, and each lookup expression's `NFTA_LOOKUP_SET_ID`.
fn set_id_offsets(m: &Msg) -> Vec<usize> {
    let b = &m.body;
    let top = attr_spans(b, 4);
    if m.kind == msg_type(NFT_MSG_NEWSET) {
        return value(&top, 10).map(|v| v.0).into_iter().collect();
    }
    if m.kind == msg_type(NFT_MSG_NEWSETELEM) {
        return value(&top, 4).map(|v| v.0).into_iter().collect();
    }
    let mut out = Vec::new();
    if m.kind == msg_type(NFT_MSG_NEWRULE)
        && let Some((at, len)) = value(&top, 4)
    {
        for (_, e_at, e_len) in attr_spans(&b[..at + len], at) {
            let inner = attr_spans(&b[..e_at + e_len], e_at);
            let name = value(&inner, 1).map(|(a, l)| &b[a..a + l]);
            if name == Some(b"lookup\0".as_slice())
                && let Some((d_at, d_len)) = value(&inner, 2)
            {
                let data = attr_spans(&b[..d_at + d_len], d_at);
                out.extend(value(&data, 4).map(|v| v.0));
            }
        }
    }
    out
}

/// Renumbers set ids 1, 2, … in order of first appearance.
fn renumber_set_ids(msgs: &mut [Msg]) {
    let mut seen: Vec<u32> = Vec::new();
    for m in msgs.iter_mut() {
        for at in set_id_offsets(m) {
            let id = u32::from_be_bytes(m.body[at..at + 4].try_into().unwrap());
            let n = match seen.iter().position(|&s| s == id) {
                Some(i) => i + 1,
                None => {
                    seen.push(id);
                    seen.len()
                }
            } as u32;
            m.body[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }
}

/// Attributes with their raw type (flags kept).
fn raw_attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= b.len() {
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let kind = u16::from_ne_bytes([b[at + 2], b[at + 3]]);
        if len < 4 || at + len > b.len() {
            break;
        }
        out.push((kind, &b[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An attribute's value: hex, or its children's values for a nest.
fn show(kind: u16, v: &[u8]) -> String {
    if kind & 0x8000 == 0 {
        return hex(v);
    }
    let inner: Vec<String> = raw_attrs(v).into_iter().map(|(k, x)| show(k, x)).collect();
    inner.join(",")
}

/// A readable listing of a batch (one line per message, expressions as
/// `[name attr=value …]`), for failure messages and for tests that look for particular
/// expressions.
pub(super) fn describe(bytes: &[u8]) -> Vec<String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned();
    let mut out = Vec::new();
    for r in replies(bytes) {
        let r = r.unwrap();
        let family = match r.payload[0] {
            1 => "inet",
            7 => "bridge",
            _ => "-",
        };
        let name = match (r.kind >> 8, r.kind & 0xff) {
            (0, 0x10) => "BATCH_BEGIN",
            (0, 0x11) => "BATCH_END",
            (10, 0) => "NEWTABLE",
            (10, 2) => "DELTABLE",
            (10, 3) => "NEWCHAIN",
            (10, 6) => "NEWRULE",
            (10, 8) => "DELRULE",
            (10, 9) => "NEWSET",
            (10, 12) => "NEWSETELEM",
            _ => "?",
        };
        let mut line = format!("{family} {name} flags={:#x}", r.flags);
        for (raw, v) in raw_attrs(&r.payload[4..]) {
            match (name, raw & 0x3fff) {
                ("NEWRULE", 4) => {
                    for (_, e) in raw_attrs(v) {
                        let mut parts = Vec::new();
                        for (k, x) in raw_attrs(e) {
                            if k & 0x3fff == 1 {
                                parts.push(text(x));
                            } else {
                                for (dk, dv) in raw_attrs(x) {
                                    parts.push(format!("{}={}", dk & 0x3fff, show(dk, dv)));
                                }
                            }
                        }
                        line.push_str(&format!(" [{}]", parts.join(" ")));
                    }
                }
                ("NEWRULE", 7) => line.push_str(&format!(" comment={:?}", text(&v[2..]))),
                ("NEWCHAIN", 4) => line.push_str(&format!(" hook={}", show(raw, v))),
                ("NEWSET", 3) => line.push_str(&format!(" setflags={}", hex(v))),
                ("NEWSET", 9) => line.push_str(&format!(" size={}", show(raw, v))),
                ("NEWSETELEM", 3) => {
                    for (_, e) in raw_attrs(v) {
                        let mut el = String::new();
                        for (k, x) in raw_attrs(e) {
                            match k & 0x3fff {
                                1 => el.push_str(&show(k, x)),
                                3 => el.push_str("end:"),
                                6 => el.push_str("+open"),
                                _ => {}
                            }
                        }
                        line.push_str(&format!(" {el}"));
                    }
                }
                (_, _)
                    if raw & 0x8000 == 0
                        && v.len() > 1
                        && v.last() == Some(&0)
                        && v[..v.len() - 1]
                            .iter()
                            .all(|c| c.is_ascii_graphic() || *c == b' ') =>
                {
                    line.push_str(&format!(" {}", text(v)))
                }
                _ => {}
            }
        }
        out.push(line);
    }
    out
}

fn check(name: &str, ours: &Encoded<'_>) {
    let mut theirs = split(&fixture(name));
    let mut mine = split(&ours.bytes);
    // Our batch asks for one acknowledgement, on its last command.
    for m in &mut mine {
        let want = m.seq == ours.ack_seq;
        assert_eq!(
            m.flags & NLM_F_ACK != 0,
            want,
            "{name}: NLM_F_ACK on seq {}",
            m.seq
        );
        m.flags &= !NLM_F_ACK;
    }
    // Sequence numbers are consecutive from the batch begin.
    for (i, m) in mine.iter().enumerate() {
        assert_eq!(
            m.seq,
            ours.first_seq.wrapping_add(i as u32),
            "{name}: sequence numbers"
        );
    }
    for m in mine.iter_mut().chain(theirs.iter_mut()) {
        m.seq = 0;
    }
    renumber_set_ids(&mut theirs);
    renumber_set_ids(&mut mine);
    let listing = |b: &[u8]| describe(b).join("\n");
    assert_eq!(
        mine.len(),
        theirs.len(),
        "{name}: message count\n ours:\n{}\n nft:\n{}",
        listing(&ours.bytes),
        listing(&fixture(name))
    );
    for (i, (a, b)) in mine.iter().zip(&theirs).enumerate() {
        if a == b {
            continue;
        }
        let at = a
            .body
            .iter()
            .zip(&b.body)
            .position(|(x, y)| x != y)
            .unwrap_or(a.body.len().min(b.body.len()));
        let window = |v: &[u8]| {
            v.iter()
                .skip(at.saturating_sub(8))
                .take(40)
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        panic!(
            "{name}: message {i} differs (type {:#x}/{:#x}, flags {:#x}/{:#x}) at body byte {at} \
             (ours {} bytes, nft {})\n ours: {}\n  nft: {}\n ours:\n{}\n nft:\n{}",
            a.kind,
            b.kind,
            a.flags,
            b.flags,
            a.body.len(),
            b.body.len(),
            window(&a.body),
            window(&b.body),
            listing(&ours.bytes),
            listing(&fixture(name))
        );
    }
}

const TABLE: &str = "edgesim_g";

#[test]
fn empty_ruleset_matches_nft() {
    let rs = Ruleset::default();
    check("empty", &encode::apply(&rs, TABLE, 100));
}

#[test]
fn representative_ruleset_matches_nft() {
    let rs = Ruleset {
        blocks: vec![
            block(
                "no-path a->b",
                &["10.0.0.0/24", "10.0.0.7/32", "fd00::/64"],
                &["10.0.1.2/32", "fd00:1::1/128"],
            ),
            block(
                "partition p #0",
                &["10.0.3.1/32", "10.0.3.2/32"],
                &["10.0.4.0/24", "10.0.5.9/32"],
            ),
            block("all", &[], &[]),
        ],
        losses: vec![
            loss("loss a->c", &[], &["10.0.2.0/24"], 0.1),
            loss("certain", &["10.0.9.0/24"], &[], 1.0),
            loss("zero", &["10.0.9.0/24"], &[], 0.0),
            loss("tiny", &[], &[], 0.00005),
        ],
        exempt: vec![],
        cell: None,
    };
    rs.validate().unwrap();
    check("representative", &encode::apply(&rs, TABLE, 7));
}

#[test]
fn prefix_shapes_match_nft() {
    let rs = Ruleset {
        blocks: vec![
            block(
                "odd",
                &["10.0.16.0/20", "fd00::/60"],
                &["0.0.0.0/0", "::/0"],
            ),
            block("adjacent", &[], &["10.0.1.0/24", "10.0.2.0/24"]),
            block("edges", &[], &["240.0.0.0/4", "0.0.0.0/8"]),
            // Host bits are ignored, as nft ignores them.
            block("pair", &["10.1.2.3/31"], &[]),
            block(
                "v6 sets",
                &["fd00::1/128", "fd00::2/128"],
                &["fd00:1::/64", "fd00:2::5/128"],
            ),
        ],
        losses: vec![],
        exempt: vec![],
        cell: None,
    };
    check("prefixes", &encode::apply(&rs, TABLE, u32::MAX - 3));
}

#[test]
fn host_layout_matches_nft() {
    let flow = |l: &str, r: &str| Flow {
        local: l.parse().unwrap(),
        remote: r.parse().unwrap(),
    };
    let rs = Ruleset {
        blocks: vec![
            block("partition p #0", &["192.0.2.10/32"], &["192.0.2.9/32"]),
            block("isolate", &[], &[]),
        ],
        losses: vec![loss("loss from orin", &["192.0.2.11/32"], &[], 0.05)],
        exempt: vec![
            flow("192.0.2.9:22", "192.0.2.1:50000"),
            flow("[fd00::9]:2222", "[fd00::1]:40000"),
        ],
        cell: None,
    };
    rs.validate().unwrap();
    check("host", &encode::apply_host(&rs, TABLE, 3));
}

#[test]
fn cell_nat_matches_nft() {
    let rs = Ruleset {
        cell: Some(CellNat {
            iface: "eth0".into(),
            board: "192.0.2.9".parse().unwrap(),
            cell: "169.254.237.2".parse().unwrap(),
            keep_port: 22,
        }),
        ..Ruleset::default()
    };
    rs.validate().unwrap();
    check("cell", &encode::apply_host(&rs, TABLE, 7));
}

#[test]
fn delete_matches_nft() {
    check("delete", &encode::delete(TABLE, 1));
}
