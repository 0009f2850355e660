//! Tests of the firewall: the batches it builds (pure), and, in scratch namespaces, what it
//! does to packets, what it reads back, what `nft` shows of it, and how fast it commits.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::encode::{self, Batch, Family};
use super::golden_tests::describe;
use super::*;
use crate::host::tc::{ScratchNs, ip};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The NEWRULE lines of a batch's listing.
fn rules(rs: &Ruleset) -> Vec<String> {
    describe(&encode::apply(rs, "edgesim_x", 1).bytes)
        .into_iter()
        .filter(|l| l.contains("NEWRULE"))
        .collect()
}

/// `payload load LEN b @ network header + OFF => reg 1`, as [`describe`] lists it.
fn payload(off: u32, len: u32) -> String {
    format!("[payload 1=00000001 2=00000001 3={off:08x} 4={len:08x}]")
}

/// `cmp OP reg 1 VALUE`, as [`describe`] lists it.
fn cmp(op: u32, value: &str) -> String {
    format!("[cmp 1=00000001 2={op:08x} 3={value}]")
}

const COUNTER_DROP: &str = "[counter] [immediate 1=00000000 2=00000000]";

#[test]
fn batch_builds_both_tables_with_named_counted_rules() {
    let rs = Ruleset {
        blocks: vec![Block {
            name: "cut".into(),
            from: vec![net("10.0.0.0/24"), net("10.0.0.7/32"), net("fd00::/64")],
            to: vec![net("10.0.1.2/32")],
        }],
        losses: vec![Loss {
            name: "lossy".into(),
            from: vec![],
            to: vec![net("10.0.2.0/24")],
            probability: 0.1,
        }],
        exempt: vec![],
        cell: None,
    };
    let all = describe(&encode::apply(&rs, "edgesim_x", 1).bytes);
    // Batch begin and end around, per family: add table, add chain, flush table, mark rule,
    // 2 drop rules (the IPv6 source has no IPv6 destination to pair with, so only IPv4 rules).
    assert_eq!(all.len(), 2 + 2 * 6, "{all:#?}");
    assert!(all[0].contains("BATCH_BEGIN") && all[13].contains("BATCH_END"));
    let s = all.join("\n");
    for needle in [
        "inet NEWTABLE flags=0x1 edgesim_x".to_string(),
        "bridge DELRULE flags=0x1 edgesim_x".to_string(),
        // Forward hook (2) at the bridge family's filter priority, -200.
        "bridge NEWCHAIN flags=0x401 edgesim_x forward filter".to_string(),
        "hook=00000002,ffffff38".to_string(),
        "hook=00000002,00000000".to_string(),
        // 10.0.0.7 lies inside 10.0.0.0/24: merged, so a single prefix remains, compared on
        // its 3 whole bytes; the destination is one address.
        format!("{} {}", payload(12, 3), cmp(0, "0a0000")),
        format!("{} {}", payload(16, 4), cmp(0, "0a000102")),
        // numgen random mod 10000, in network byte order, within 0..=999.
        "[numgen 1=00000001 2=00002710 3=00000001 4=00000000]".to_string(),
        format!("{} {}", cmp(5, "00000000"), cmp(3, "000003e7")),
        "comment=\"lossy\"".to_string(),
        format!("{COUNTER_DROP} comment=\"cut\""),
    ] {
        assert!(s.contains(&needle), "missing {needle} in\n{s}");
    }
    assert!(!s.contains("fd00"), "{s}");
    // The marking rules: bridge sets the mark, inet returns on it.
    assert!(
        s.contains("[bitwise 1=00000001 2=00000001 6=00000000 3=00000004 4=ffffffbf 5=00000040] [meta 2=00000003 3=00000001] comment=\"edgesim: bridged\""),
        "{s}"
    );
    assert!(
        s.contains("[cmp 1=00000001 2=00000000 3=00000040] [immediate 1=00000000 2=fffffffb] comment=\"edgesim: bridged\""),
        "{s}"
    );
}

#[test]
fn batch_edge_cases() {
    let loss = |p| Ruleset {
        losses: vec![Loss {
            name: "l".into(),
            from: vec![net("fd00::1/128")],
            to: vec![net("fd00::2/128")],
            probability: p,
        }],
        ..Ruleset::default()
    };
    assert!(
        !rules(&loss(0.0))
            .iter()
            .any(|r| r.contains("comment=\"l\"")),
        "a loss of probability 0 adds no rule"
    );
    let all = rules(&loss(1.0)).join("\n");
    assert!(
        all.contains(&format!(
            "{} {}",
            payload(8, 16),
            cmp(0, "fd000000000000000000000000000001")
        )),
        "{all}"
    );
    assert!(!all.contains("numgen"), "{all}");
    assert!(
        rules(&loss(0.00005))
            .join("\n")
            .contains(&cmp(3, "00000000")),
        "the smallest probability drops one value in 10000"
    );
    let everything = Ruleset {
        blocks: vec![Block {
            name: "all".into(),
            from: vec![],
            to: vec![],
        }],
        ..Ruleset::default()
    };
    let r = rules(&everything);
    assert!(
        r.iter()
            .filter(|l| l.contains("comment=\"all\""))
            .all(|l| l.ends_with(&format!("{COUNTER_DROP} comment=\"all\""))
                && !l.contains("payload")),
        "{r:#?}"
    );
    assert!(loss(1.5).validate().is_err());
    let mut long = loss(0.5);
    long.losses[0].name = "x".repeat(129);
    assert!(long.validate().is_err());
    // Only the name is checked; nothing is opened.
    let fd: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
    assert!(Firewall::from_fd(fd, "self", "bad name").is_err());
}

#[test]
fn large_sets_are_split_across_messages_and_numbered_for_errors() {
    // A partition of 3000 nodes from one: 3000 addresses in one hash set.
    let to: Vec<IpNet> = (0..3000u32)
        .map(|i| IpNet::from(std::net::IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 2 * i))))
        .collect();
    let rs = Ruleset {
        blocks: vec![Block {
            name: "big".into(),
            from: vec![net("10.200.0.1/32")],
            to,
        }],
        ..Ruleset::default()
    };
    let b = encode::apply(&rs, "t", 40);
    let lines = describe(&b.bytes);
    let elems = lines.iter().filter(|l| l.contains("NEWSETELEM")).count();
    assert_eq!(elems, 2 * 3, "3000 elements in chunks of 1024, per family");
    assert!(
        lines.iter().any(|l| l.contains("size=00000bb8")),
        "{:?}",
        &lines[..6]
    );
    // Every message is named by its sequence number; the last command asks for the ack.
    assert_eq!(b.subject(40), Some(encode::Subject::Batch));
    assert_eq!(
        b.subject(b.ack_seq),
        Some(encode::Subject::Rule(Family::Bridge, "big"))
    );
    assert_eq!(b.ack_seq, b.last_seq() - 1);
}

#[test]
fn kernel_refusals_carry_errno_and_extended_ack_message() {
    use super::decode::{Ack, ack};
    // NLMSG_ERROR payload: -EINVAL, the capped header of the refused message, then
    // NLMSGERR_ATTR_MSG.
    let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
    p.extend_from_slice(&[0u8; 16]);
    let msg = b"Chain exists with different hook\0";
    p.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&1u16.to_ne_bytes());
    p.extend_from_slice(msg);
    p.resize(p.len().next_multiple_of(4), 0);
    let capped_with_tlvs = 0x100 | 0x200;
    assert_eq!(
        ack(capped_with_tlvs, &p).unwrap(),
        Ack::Refused {
            errno: libc::EINVAL,
            message: Some("Chain exists with different hook".into())
        }
    );
    assert_eq!(
        ack(0x100, &p).unwrap(),
        Ack::Refused {
            errno: libc::EINVAL,
            message: None
        }
    );
    assert_eq!(ack(0, &0i32.to_ne_bytes()).unwrap(), Ack::Ok);
    assert!(ack(0, &[1, 2]).is_err());
}

fn host_ruleset() -> Vec<u8> {
    Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap()
        .stdout
}

/// A fabric namespace with bridges br0 (10.88.1.0/24: nodes n1 .1 and n2 .2) and br1
/// (10.88.2.0/24: node n3 .3), routing between them. Field order: nodes go first.
struct Lab {
    n1: ScratchNs,
    n2: ScratchNs,
    n3: ScratchNs,
    fabric: ScratchNs,
    host_before: Vec<u8>,
}

const N1: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
const N2: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 2);
const N3: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 3);

impl Lab {
    fn new() -> Option<Self> {
        if !crate::testing::netns()
            || !crate::testing::program("nft", "nft")
            || !crate::testing::program("iproute2", "ip")
            || !crate::testing::program("ping", "ping")
        {
            return None;
        }
        let host_before = host_ruleset();
        let fabric = ScratchNs::create("t").unwrap();
        let n1 = ScratchNs::create("t").unwrap();
        let n2 = ScratchNs::create("t").unwrap();
        let n3 = ScratchNs::create("t").unwrap();
        let f = fabric.0.as_str();
        for (br, addr) in [("br0", "10.88.1.254/24"), ("br1", "10.88.2.254/24")] {
            ip(&["-n", f, "link", "add", br, "type", "bridge"]);
            ip(&["-n", f, "addr", "add", addr, "dev", br]);
            ip(&["-n", f, "link", "set", br, "up"]);
        }
        ip(&["-n", f, "link", "set", "lo", "up"]);
        for (i, node, br, addr, gw) in [
            (1, &n1, "br0", N1, "10.88.1.254"),
            (2, &n2, "br0", N2, "10.88.1.254"),
            (3, &n3, "br1", N3, "10.88.2.254"),
        ] {
            let host_end = format!("h{i}");
            ip(&[
                "-n", f, "link", "add", &host_end, "type", "veth", "peer", "name", "e0", "netns",
                &node.0,
            ]);
            ip(&["-n", f, "link", "set", &host_end, "master", br, "up"]);
            ip(&[
                "-n",
                &node.0,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "e0",
            ]);
            ip(&["-n", &node.0, "link", "set", "e0", "up"]);
            ip(&["-n", &node.0, "link", "set", "lo", "up"]);
            ip(&["-n", &node.0, "route", "add", "default", "via", gw]);
        }
        ns::run_in(f, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .unwrap()
            .unwrap();
        let lab = Lab {
            n1,
            n2,
            n3,
            fabric,
            host_before,
        };
        // Resolve neighbours so that no test packet waits on ARP.
        for (from, to) in [(&lab.n1, N2), (&lab.n1, N3), (&lab.n2, N3)] {
            let ok = Command::new("ip")
                .stdout(Stdio::null())
                .args([
                    "netns",
                    "exec",
                    &from.0,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "2",
                    &to.to_string(),
                ])
                .status()
                .unwrap()
                .success();
            assert!(ok, "no connectivity {} -> {to}", from.0);
        }
        Some(lab)
    }

    fn firewall(&self) -> Firewall {
        Firewall::new(&self.fabric.0, "edgesim_t").unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(
                host_ruleset(),
                self.host_before,
                "the host's ruleset changed"
            );
        }
    }
}

/// Sends `count` UDP datagrams from namespace `from` to `dst` and returns how many arrived.
fn udp(from: &ScratchNs, to: &ScratchNs, dst: Ipv4Addr, count: u32) -> u32 {
    let rx = ns::run_in(&to.0, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tx = ns::run_in(&from.0, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = [0u8; 64];
        while rx.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    for i in 0..count {
        tx.send_to(&i.to_be_bytes(), (dst, port)).unwrap();
        if i % 50 == 49 {
            // Keep the receiver's socket buffer from overflowing.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    receiver.join().unwrap()
}

fn block(name: &str, from: Ipv4Addr, to: &str) -> Block {
    Block {
        name: name.into(),
        from: vec![IpNet::from(std::net::IpAddr::V4(from))],
        to: vec![net(to)],
    }
}

fn counter_of(fw: &Firewall, name: &str) -> u64 {
    fw.counters()
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.packets)
        .unwrap_or_else(|| panic!("no counter named {name}"))
}

#[test]
fn blocks_are_one_way_then_both_ways_then_heal() {
    let Some(lab) = Lab::new() else { return };
    let fw = lab.firewall();
    let (n1, n2, n3) = (&lab.n1, &lab.n2, &lab.n3);
    const K: u32 = 50;
    let all_paths = || {
        [
            udp(n1, n2, N2, K),
            udp(n2, n1, N1, K),
            udp(n1, n3, N3, K),
            udp(n3, n1, N1, K),
        ]
    };
    assert_eq!(all_paths(), [K; 4], "baseline");

    let one_way = Ruleset {
        blocks: vec![
            block("n1-to-n2", N1, "10.88.1.2/32"),
            block("n1-to-site2", N1, "10.88.2.0/24"),
        ],
        ..Ruleset::default()
    };
    fw.apply(&one_way).unwrap();
    assert_eq!(
        all_paths(),
        [0, K, 0, K],
        "one-way blocks (bridged, routed)"
    );
    assert_eq!(counter_of(&fw, "n1-to-n2"), u64::from(K));
    assert_eq!(counter_of(&fw, "n1-to-site2"), u64::from(K));

    let mut both = one_way.clone();
    both.blocks.push(block("n2-to-n1", N2, "10.88.1.1/32"));
    both.blocks.push(block("n3-to-n1", N3, "10.88.1.1/32"));
    fw.apply(&both).unwrap();
    fw.apply(&both).unwrap(); // idempotent
    assert_eq!(all_paths(), [0, 0, 0, 0], "blocked both ways");

    // Heal: apply the previous desired state, then nothing.
    fw.apply(&one_way).unwrap();
    assert_eq!(all_paths(), [0, K, 0, K], "back to one way");
    fw.apply(&Ruleset::default()).unwrap();
    assert_eq!(all_paths(), [K; 4], "healed");

    fw.apply(&both).unwrap();
    fw.delete().unwrap();
    fw.delete().unwrap();
    assert_eq!(all_paths(), [K; 4], "after delete");
    let left = ns::run_in(&lab.fabric.0, || {
        Command::new("nft").args(["list", "tables"]).output()
    })
    .unwrap()
    .unwrap();
    assert!(
        left.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Whether `lost` of `n` is within the 99.9 % normal-approximation interval of p.
fn within(lost: u32, n: u32, p: f64) -> bool {
    let (n, lost) = (f64::from(n), f64::from(lost));
    let sd = (p * (1.0 - p) / n).sqrt();
    (lost / n - p).abs() <= 3.29 * sd
}

#[test]
fn loss_matches_its_probability_on_bridged_and_routed_paths() {
    let Some(lab) = Lab::new() else { return };
    let fw = lab.firewall();
    const N: u32 = 2000;
    for (bridged_p, routed_p) in [(0.10, 0.30), (0.30, 0.10)] {
        let rs = Ruleset {
            losses: vec![
                Loss {
                    name: "bridged".into(),
                    from: vec![net("10.88.1.1/32")],
                    to: vec![net("10.88.1.2/32")],
                    probability: bridged_p,
                },
                Loss {
                    name: "routed".into(),
                    from: vec![net("10.88.1.0/24")],
                    to: vec![net("10.88.2.0/24")],
                    probability: routed_p,
                },
            ],
            ..Ruleset::default()
        };
        fw.apply(&rs).unwrap();
        let got_bridged = udp(&lab.n1, &lab.n2, N2, N);
        let got_routed = udp(&lab.n1, &lab.n3, N3, N);
        // The reverse directions are untouched.
        assert_eq!(udp(&lab.n2, &lab.n1, N1, 200), 200);
        assert_eq!(udp(&lab.n3, &lab.n1, N1, 200), 200);
        let (lb, lr) = (N - got_bridged, N - got_routed);
        eprintln!(
            "loss: bridged {:.2} % (want {:.0} %), routed {:.2} % (want {:.0} %) over {N} datagrams",
            f64::from(lb) * 100.0 / f64::from(N),
            bridged_p * 100.0,
            f64::from(lr) * 100.0 / f64::from(N),
            routed_p * 100.0
        );
        assert!(
            within(lb, N, bridged_p),
            "bridged lost {lb} of {N}, want {bridged_p}"
        );
        assert!(
            within(lr, N, routed_p),
            "routed lost {lr} of {N}, want {routed_p}"
        );
        // Every missing datagram was dropped by its rule (and only once).
        assert_eq!(counter_of(&fw, "bridged"), u64::from(lb));
        assert_eq!(counter_of(&fw, "routed"), u64::from(lr));
    }
    fw.delete().unwrap();
}

/// `nft ARGS` inside namespace `ns`, which must succeed; its stdout.
fn nft_in(ns_name: &str, args: &[&str]) -> String {
    let out = ns::run_in(ns_name, || Command::new("nft").args(args).output())
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nft_lists_the_rules_with_comments_and_counters() {
    let Some(lab) = Lab::new() else { return };
    let fw = lab.firewall();
    let rs = Ruleset {
        blocks: vec![
            block("n1-to-n2", N1, "10.88.1.2/32"),
            Block {
                name: "sets".into(),
                from: vec![net("10.88.1.7/32"), net("10.88.1.5/32")],
                to: vec![net("10.88.2.0/24"), net("10.88.3.7/32")],
            },
        ],
        losses: vec![Loss {
            name: "lossy".into(),
            from: vec![],
            to: vec![net("10.88.2.3/32")],
            probability: 0.25,
        }],
        exempt: vec![],
        cell: None,
    };
    fw.apply(&rs).unwrap();
    const K: u32 = 200;
    assert_eq!(udp(&lab.n1, &lab.n2, N2, K), 0);
    let lost = K - udp(&lab.n1, &lab.n3, N3, K);
    assert!(lost > 0 && lost < K, "lossy dropped {lost} of {K}");

    let doc: serde_json::Value =
        serde_json::from_str(&nft_in(&lab.fabric.0, &["-j", "list", "ruleset"])).unwrap();
    let ours: Vec<&serde_json::Value> = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == "edgesim_t")
        .collect();
    for family in ["inet", "bridge"] {
        let comments: Vec<&str> = ours
            .iter()
            .filter(|r| r["family"] == family)
            .map(|r| r["comment"].as_str().unwrap_or("(none)"))
            .collect();
        assert_eq!(
            comments,
            [MARK_COMMENT, "n1-to-n2", "sets", "lossy"],
            "{family}"
        );
    }
    // nft's counters are ours: summed over both tables, they are what counters() reports.
    let packets = |name: &str| -> u64 {
        ours.iter()
            .filter(|r| r["comment"] == name)
            .filter_map(|r| {
                r["expr"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e.get("counter"))?
                    .get("packets")?
                    .as_u64()
            })
            .sum()
    };
    let counters = fw.counters().unwrap();
    assert_eq!(
        counters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["n1-to-n2", "sets", "lossy"]
    );
    for c in &counters {
        assert_eq!(packets(&c.name), c.packets, "{}", c.name);
    }
    assert_eq!(counter_of(&fw, "n1-to-n2"), u64::from(K));
    assert_eq!(counter_of(&fw, "lossy"), u64::from(lost));
    assert_eq!(counter_of(&fw, "sets"), 0);

    // nft decodes our expressions back into its own syntax: sets of addresses and prefixes,
    // numgen with its range.
    let text = nft_in(&lab.fabric.0, &["list", "table", "inet", "edgesim_t"]);
    eprintln!("{text}");
    for needle in [
        "meta mark & 0x40000000 == 0x40000000 return comment \"edgesim: bridged\"",
        // Bridged traffic is counted by the bridge table (see below), not here.
        "ip saddr 10.88.1.1 ip daddr 10.88.1.2 counter packets 0 bytes 0 drop comment \"n1-to-n2\"",
        "ip saddr { 10.88.1.5, 10.88.1.7 } ip daddr { 10.88.2.0/24, 10.88.3.7 } counter packets 0 bytes 0 drop comment \"sets\"",
        "ip daddr 10.88.2.3 numgen random mod 10000 0-2499 counter packets",
        "type filter hook forward priority filter; policy accept;",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    let bridge = nft_in(&lab.fabric.0, &["list", "table", "bridge", "edgesim_t"]);
    for needle in [
        "meta mark set meta mark | 0x40000000 comment \"edgesim: bridged\"",
        "ip saddr 10.88.1.1 ip daddr 10.88.1.2 counter packets 200 bytes",
        "type filter hook forward priority filter; policy accept;",
    ] {
        assert!(bridge.contains(needle), "missing `{needle}` in\n{bridge}");
    }
    fw.delete().unwrap();
}

#[test]
fn a_refused_apply_changes_nothing_and_names_what_was_refused() {
    let Some(lab) = Lab::new() else { return };
    let f = lab.fabric.0.as_str();
    // Someone else's chain `forward` sits on the input hook of a table with our name: our
    // forward chain cannot be added there.
    nft_in(f, &["add", "table", "inet", "edgesim_c"]);
    nft_in(
        f,
        &[
            "add",
            "chain",
            "inet",
            "edgesim_c",
            "forward",
            "{",
            "type",
            "filter",
            "hook",
            "input",
            "priority",
            "0",
            ";",
            "}",
        ],
    );
    let fw = Firewall::new(f, "edgesim_c").unwrap();
    let rs = Ruleset {
        blocks: vec![block("n1-to-n2", N1, "10.88.1.2/32")],
        ..Ruleset::default()
    };
    let err = fw.apply(&rs).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, HostError::Kernel { .. }), "{err:?}");
    assert!(
        text.contains("nftables chain inet edgesim_c forward") && text.contains(f),
        "{text}"
    );
    // All or nothing: the bridge table of the same batch was not created, traffic flows.
    let tables = nft_in(f, &["list", "tables"]);
    assert!(!tables.contains("bridge edgesim_c"), "{tables}");
    assert_eq!(udp(&lab.n1, &lab.n2, N2, 20), 20);
    // The socket is still good for the next request.
    fw.delete().unwrap();
    fw.apply(&rs).unwrap();
    assert_eq!(udp(&lab.n1, &lab.n2, N2, 20), 0);
    fw.delete().unwrap();
    assert_eq!(nft_in(f, &["list", "tables"]), "");
}

#[test]
fn kernel_errors_name_the_table_and_namespace() {
    let Some(lab) = Lab::new() else { return };
    let fw = Firewall::new(&lab.fabric.0, "no_such_table").unwrap();
    // A chain in a table that does not exist (the batch nft would send for
    // `add chain inet no_such_table forward …`).
    let err = fw
        .transact("applying", |seq| {
            let mut b = Batch::new("no_such_table", seq);
            b.add_forward_chain(Family::Inet);
            b.finish()
        })
        .unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, HostError::Kernel { .. }), "{err:?}");
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(
        text.contains("no_such_table") && text.contains(&lab.fabric.0),
        "{text}"
    );
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Commit latency, printed (timings are not asserted: see bench/README.md). The same ruleset
/// and conditions as the measurement of the nft-based firewall it replaced: 8 blocks with
/// address sets and a loss, alternating with the empty ruleset; each commit prepared and
/// started after a quiet 40 ms, then the same back to back.
#[test]
fn commit_latency() {
    let Some(lab) = Lab::new() else { return };
    let fw = lab.firewall();
    let rs = Ruleset {
        blocks: (0..8)
            .map(|i| Block {
                name: format!("b{i}"),
                from: vec![net(&format!("10.88.{i}.0/24"))],
                to: vec![net("10.88.200.0/24"), net("10.88.201.7/32")],
            })
            .collect(),
        losses: vec![Loss {
            name: "l".into(),
            from: vec![],
            to: vec![net("10.88.2.0/24")],
            probability: 0.05,
        }],
        exempt: vec![],
        cell: None,
    };
    fw.apply(&rs).unwrap();
    // A prepared firewall dropped unused changes nothing.
    drop(fw.prepare().unwrap());
    assert_eq!(fw.counters().unwrap().len(), 9);

    const RUNS: usize = 200;
    let empty = Ruleset::default();
    let pick = |i: usize| if i.is_multiple_of(2) { &empty } else { &rs };
    let (mut prepared, mut prepared_cpu) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        std::thread::sleep(Duration::from_millis(40));
        let p = fw.prepare().unwrap();
        let (t, c) = (Instant::now(), thread_cpu());
        p.commit(pick(i)).unwrap();
        prepared.push(t.elapsed());
        prepared_cpu.push(thread_cpu() - c);
    }
    let (mut back_to_back, mut back_cpu) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (t, c) = (Instant::now(), thread_cpu());
        fw.apply(pick(i)).unwrap();
        back_to_back.push(t.elapsed());
        back_cpu.push(thread_cpu() - c);
    }
    // The ruleset is in force after the last (odd) apply.
    assert_eq!(fw.counters().unwrap().len(), 9);
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
        format!(
            "p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            at(50),
            at(90),
            at(99),
            v[v.len() - 1]
        )
    };
    let mut encoding: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let t = Instant::now();
            let b = encode::apply(pick(i), "edgesim_t", 1);
            let d = t.elapsed();
            assert!(!b.bytes.is_empty());
            d
        })
        .collect();
    let t = Instant::now();
    fw.delete().unwrap();
    let deleted = t.elapsed();
    let t = Instant::now();
    drop(fw);
    let closed = t.elapsed();
    eprintln!(
        "nftables commit over netlink, {RUNS} applies alternating 9 rules / none (2 tables each):\n\
         after a quiet 40 ms:  wall {}\n                      CPU  {}\n\
         back to back:         wall {}\n                      CPU  {}\n\
         encoding alone:       {}\n\
         delete: {deleted:?}; closing the socket afterwards: {closed:?}",
        stats(&mut prepared),
        stats(&mut prepared_cpu),
        stats(&mut back_to_back),
        stats(&mut back_cpu),
        stats(&mut encoding),
    );
}
