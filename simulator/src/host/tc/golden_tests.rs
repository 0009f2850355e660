//! Byte-for-byte comparison of the requests built here with what iproute2's `tc` sends, as
//! captured by `golden/capture.sh`. Each case restates a fixture's command line as typed
//! values; the whole message after the netlink header (tcmsg + attributes), the message type
//! and the flags must match. Only the interface index is taken from the capture.

use std::time::Duration;

use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;

use super::*;

struct Golden {
    command: String,
    kind: u16,
    flags: u16,
    body: Vec<u8>,
}

fn parse_hex_u16(s: &str) -> u16 {
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
}

fn golden(text: &str) -> Golden {
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let mut field = |name: &str| {
        let l = lines.next().unwrap();
        l.strip_prefix(name)
            .unwrap_or_else(|| panic!("expected `{name}`, got `{l}`"))
            .trim()
            .to_string()
    };
    let command = field("command:");
    let kind = parse_hex_u16(&field("type:"));
    let flags = parse_hex_u16(&field("flags:"));
    field("body:");
    let hex: String = lines.collect();
    let body = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Golden {
        command,
        kind,
        flags,
        body,
    }
}

impl Golden {
    fn ifindex(&self) -> u32 {
        u32::from_ne_bytes(self.body[4..8].try_into().unwrap())
    }

    fn check(&self, msg: RouteNetlinkMessage, flags: u16) {
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = flags;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        assert_eq!(
            m.header.message_type, self.kind,
            "type for `{}`",
            self.command
        );
        assert_eq!(flags, self.flags, "flags for `{}`", self.command);
        let ours = &buf[16..];
        if ours != self.body.as_slice() {
            let at = ours
                .iter()
                .zip(&self.body)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(self.body.len()));
            let window = |b: &[u8]| {
                b.iter()
                    .skip(at.saturating_sub(8))
                    .take(32)
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            };
            panic!(
                "`{}`: bodies differ at byte {at} (ours {} bytes, tc {} bytes)\n ours: {}\n   tc: {}",
                self.command,
                ours.len(),
                self.body.len(),
                window(ours),
                window(&self.body)
            );
        }
    }

    fn check_qdisc(&self, parent: Parent, handle: u16, q: &Qdisc) {
        let table = match q {
            Qdisc::Netem(n) => n
                .distribution
                .as_ref()
                .map(|d| d.table().unwrap())
                .unwrap_or_default(),
            _ => None,
        };
        self.check(
            qdisc_message(self.ifindex(), parent, handle, q, table.as_deref()),
            QDISC_REPLACE_FLAGS,
        );
    }
}

macro_rules! fixture {
    ($name:literal) => {
        golden(include_str!(concat!("golden/", $name, ".txt")))
    };
}

/// tc parses `N%` as `N / 100`; writing the fractions the same way keeps the doubles equal.
fn pct(x: f64) -> f64 {
    x / 100.0
}

const MBIT: u64 = 1_000_000;
const GBIT: u64 = 1_000_000_000;
const KB: u32 = 1024;
const MB: u32 = 1024 * 1024;

fn have_tc_tables() -> bool {
    crate::testing::gate(
        "tc-dist",
        Distribution::Normal.table().is_ok(),
        "iproute2's netem distribution files (normal.dist …) are not installed",
    )
}

#[test]
fn tbf() {
    fixture!("tbf_8mbit").check_qdisc(
        Parent::Root,
        1,
        &Qdisc::Tbf(Tbf {
            rate: 8 * MBIT,
            burst: 32 * KB,
            limit: TbfLimit::Latency(Duration::from_millis(50)),
        }),
    );
    fixture!("tbf_40gbit").check_qdisc(
        Parent::Root,
        1,
        &Qdisc::Tbf(Tbf {
            rate: 40 * GBIT,
            burst: MB,
            limit: TbfLimit::Bytes(2 * MB),
        }),
    );
}

#[test]
fn htb_root() {
    fixture!("htb_root").check_qdisc(
        Parent::Root,
        1,
        &Qdisc::Htb(Htb {
            default_class: 0x10,
            r2q: 10,
        }),
    );
}

#[test]
fn htb_classes() {
    let hz = 1_000_000_000;
    let g = fixture!("htb_class_full");
    let c = HtbClass {
        rate: 2 * MBIT,
        ceil: Some(4 * MBIT),
        burst: Some(15 * KB),
        cburst: Some(15 * KB),
        prio: 1,
        quantum: Some(1514),
    };
    g.check(
        class_message(
            g.ifindex(),
            ClassId::qdisc(1),
            ClassId::new(1, 0x10),
            &c,
            hz,
        ),
        CLASS_REPLACE_FLAGS,
    );
    let g = fixture!("htb_class_default");
    let c = HtbClass {
        rate: 2 * MBIT,
        ..HtbClass::default()
    };
    g.check(
        class_message(
            g.ifindex(),
            ClassId::qdisc(1),
            ClassId::new(1, 0x20),
            &c,
            hz,
        ),
        CLASS_REPLACE_FLAGS,
    );
    let g = fixture!("htb_class_64bit");
    let c = HtbClass {
        rate: 40 * GBIT,
        ceil: Some(50 * GBIT),
        burst: Some(MB),
        cburst: Some(MB),
        ..HtbClass::default()
    };
    g.check(
        class_message(
            g.ifindex(),
            ClassId::new(1, 1),
            ClassId::new(1, 0x30),
            &c,
            hz,
        ),
        CLASS_REPLACE_FLAGS,
    );
}

#[test]
fn fifos() {
    fixture!("pfifo").check_qdisc(
        Parent::Class(ClassId::new(1, 0x10)),
        0x10,
        &Qdisc::Pfifo { limit: 100 },
    );
    fixture!("bfifo").check_qdisc(Parent::Root, 0, &Qdisc::Bfifo { limit: 10000 });
}

fn netem(n: Netem) -> Qdisc {
    Qdisc::Netem(n)
}

#[test]
fn netem_delay_and_distributions() {
    let base = Netem {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(2),
        ..Netem::default()
    };
    fixture!("netem_delay_uniform").check_qdisc(Parent::Root, 0, &netem(base.clone()));
    // Uniform sends no table: the same bytes as no distribution at all.
    fixture!("netem_delay_uniform").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            distribution: Some(Distribution::Uniform),
            ..base.clone()
        }),
    );
    if !have_tc_tables() {
        return;
    }
    fixture!("netem_delay_normal").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            delay: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
            delay_correlation: pct(25.0),
            distribution: Some(Distribution::Normal),
            ..Netem::default()
        }),
    );
    fixture!("netem_delay_pareto").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            distribution: Some(Distribution::Pareto),
            ..base.clone()
        }),
    );
    fixture!("netem_delay_paretonormal").check_qdisc(
        Parent::Root,
        2,
        &netem(Netem {
            delay: Duration::from_millis(50),
            jitter: Duration::from_millis(10),
            distribution: Some(Distribution::ParetoNormal),
            ..Netem::default()
        }),
    );
}

#[test]
fn netem_loss_models() {
    fixture!("netem_loss_random").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            loss: Some(NetemLoss::Random {
                probability: pct(1.0),
                correlation: pct(30.0),
            }),
            ..Netem::default()
        }),
    );
    fixture!("netem_loss_ge").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            loss: Some(NetemLoss::GilbertElliott {
                p: pct(1.0),
                r: Some(pct(10.0)),
                loss_in_bad: Some(pct(70.0)),
                loss_in_good: Some(pct(0.1)),
            }),
            ..Netem::default()
        }),
    );
    fixture!("netem_loss_ge_defaults").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            loss: Some(NetemLoss::GilbertElliott {
                p: pct(1.0),
                r: None,
                loss_in_bad: None,
                loss_in_good: None,
            }),
            ..Netem::default()
        }),
    );
}

#[test]
fn netem_duplicate_corrupt_reorder_rate() {
    fixture!("netem_dup_corrupt_reorder").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            delay: Duration::from_millis(10),
            reorder: pct(5.0),
            reorder_correlation: pct(50.0),
            gap: 3,
            duplicate: pct(2.0),
            corrupt: pct(0.5),
            corrupt_correlation: pct(10.0),
            ..Netem::default()
        }),
    );
    fixture!("netem_rate").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            rate: Some(NetemRate {
                rate: 10 * MBIT,
                ..NetemRate::default()
            }),
            ..Netem::default()
        }),
    );
    fixture!("netem_rate64_overheads").check_qdisc(
        Parent::Root,
        0,
        &netem(Netem {
            rate: Some(NetemRate {
                rate: 50 * GBIT,
                packet_overhead: 20,
                cell_size: 1500,
                cell_overhead: -4,
            }),
            limit: 5000,
            ..Netem::default()
        }),
    );
}

#[test]
fn netem_everything() {
    if !have_tc_tables() {
        return;
    }
    fixture!("netem_everything").check_qdisc(
        Parent::Class(ClassId::new(1, 0x10)),
        0x10,
        &netem(Netem {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(2),
            delay_correlation: pct(25.0),
            distribution: Some(Distribution::Pareto),
            loss: Some(NetemLoss::Random {
                probability: pct(1.0),
                correlation: pct(30.0),
            }),
            duplicate: pct(2.0),
            corrupt: pct(0.5),
            reorder: pct(5.0),
            reorder_correlation: pct(50.0),
            gap: 3,
            rate: Some(NetemRate {
                rate: 10 * MBIT,
                ..NetemRate::default()
            }),
            limit: 200,
            ..Netem::default()
        }),
    );
}

#[test]
fn u32_filters() {
    let net = |s: &str| Some(s.parse::<ipnet::Ipv4Net>().unwrap());
    let g = fixture!("u32_src_dst");
    g.check(
        u32_filter_message(
            g.ifindex(),
            ClassId::qdisc(1),
            1,
            &U32Match {
                src: net("10.0.0.0/24"),
                dst: net("10.0.1.2/32"),
            },
            ClassId::new(1, 0x10),
        ),
        FILTER_ADD_FLAGS,
    );
    let g = fixture!("u32_dst");
    g.check(
        u32_filter_message(
            g.ifindex(),
            ClassId::qdisc(1),
            2,
            &U32Match {
                src: None,
                dst: net("10.200.0.2/32"),
            },
            ClassId::new(1, 0x20),
        ),
        FILTER_ADD_FLAGS,
    );
    let g = fixture!("u32_all");
    g.check(
        u32_filter_message(
            g.ifindex(),
            ClassId::qdisc(2),
            7,
            &U32Match::default(),
            ClassId::new(2, 1),
        ),
        FILTER_ADD_FLAGS,
    );
}

#[test]
fn deletes() {
    let g = fixture!("qdisc_del_root");
    g.check(
        qdisc_delete_message(g.ifindex(), Parent::Root),
        DELETE_FLAGS,
    );
    let g = fixture!("qdisc_del_parent");
    g.check(
        qdisc_delete_message(g.ifindex(), Parent::Class(ClassId::new(1, 0x10))),
        DELETE_FLAGS,
    );
    let g = fixture!("class_del");
    g.check(
        class_delete_message(g.ifindex(), ClassId::new(1, 0x10)),
        DELETE_FLAGS,
    );
    let g = fixture!("filter_del");
    g.check(
        filter_delete_message(g.ifindex(), ClassId::qdisc(1), 1),
        DELETE_FLAGS,
    );
}
