//! Root tests: everything happens in namespace pairs created here (`edgesim-t-<pid>-<n>`,
//! deleted on drop, also when a test panics), joined by a veth pair. Traffic never leaves them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use super::*;

/// Namespace `a` (`va`, 10.77.0.1/24) joined to namespace `b` (`vb`, 10.77.0.2/24 and
/// 10.77.0.3/24). Field order makes the namespaces go after the handle.
struct Pair {
    h: rtnetlink::Handle,
    va: u32,
    a: ScratchNs,
    b: ScratchNs,
}

async fn ifindex(h: &rtnetlink::Handle, name: &str) -> u32 {
    let link = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap();
    link.header.index
}

impl Pair {
    async fn new() -> Option<Self> {
        if !crate::testing::netns() || !crate::testing::program("iproute2", "ip") {
            return None;
        }
        let a = ScratchNs::create("t").unwrap();
        let b = ScratchNs::create("t").unwrap();
        ip(&[
            "-n", &a.0, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.0,
        ]);
        ip(&["-n", &a.0, "addr", "add", "10.77.0.1/24", "dev", "va"]);
        ip(&["-n", &b.0, "addr", "add", "10.77.0.2/24", "dev", "vb"]);
        ip(&["-n", &b.0, "addr", "add", "10.77.0.3/24", "dev", "vb"]);
        for (ns, dev) in [(&a.0, "va"), (&b.0, "vb"), (&a.0, "lo"), (&b.0, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let h = netlink(&a.0).unwrap();
        let va = ifindex(&h, "va").await;
        Some(Pair { h, va, a, b })
    }
}

/// Sends TCP from namespace `a` to `dst:port` in namespace `b` for `warmup + measure` and
/// returns the goodput over the measured part, in bits/s.
fn goodput(pair_a: &str, pair_b: &str, dst: Ipv4Addr, port: u16, measure: Duration) -> f64 {
    let warmup = Duration::from_millis(800);
    let listener = ns::run_in(pair_b, move || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap()
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_tx = stop.clone();
    let stream = ns::run_in(pair_a, move || TcpStream::connect((dst, port)))
        .unwrap()
        .unwrap();
    let sender = std::thread::spawn(move || {
        let mut s = stream;
        let buf = vec![0x5au8; 64 * 1024];
        while !stop_tx.load(Ordering::Relaxed) {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let (mut rx, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut counted = 0u64;
    // Bytes returned by a read arrived since the previous read: count the reads after `begin`.
    let mut begin: Option<Instant> = None;
    loop {
        let n = rx.read(&mut buf).unwrap();
        assert!(n > 0, "sender closed early");
        let now = Instant::now();
        match begin {
            None if now - start >= warmup => begin = Some(now),
            None => {}
            Some(b) => {
                counted += n as u64;
                if now - b >= measure {
                    stop.store(true, Ordering::Relaxed);
                    drop(rx);
                    sender.join().unwrap();
                    return counted as f64 * 8.0 / (now - b).as_secs_f64();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbf_read_back_and_rate() {
    let _quiet = crate::testing::exclusive();
    let Some(p) = Pair::new().await else { return };
    let tbf = Tbf {
        rate: 8_000_000,
        burst: 32 * 1024,
        limit: TbfLimit::Latency(Duration::from_millis(50)),
    };
    qdisc_replace(&p.h, p.va, Parent::Root, 1, &Qdisc::Tbf(tbf.clone()))
        .await
        .unwrap();
    // Twice: replace is idempotent.
    qdisc_replace(&p.h, p.va, Parent::Root, 1, &Qdisc::Tbf(tbf))
        .await
        .unwrap();
    let qs = dump(&p.h, p.va).await.unwrap();
    let q = qs.iter().find(|q| q.parent == Parent::Root).unwrap();
    assert_eq!((q.kind.as_str(), q.handle), ("tbf", ClassId::qdisc(1)));
    let QdiscOptions::Tbf(info) = q.options else {
        panic!("not decoded as tbf: {q:?}")
    };
    assert_eq!(info.rate, 8_000_000);
    assert!(
        (32_700..=32_768).contains(&info.burst),
        "burst {}",
        info.burst
    );
    assert_eq!(info.limit, 1_000_000 / 20 + 32 * 1024);

    let before = q.stats;
    let t = Instant::now();
    let bps = goodput(
        &p.a.0,
        &p.b.0,
        Ipv4Addr::new(10, 77, 0, 2),
        5201,
        Duration::from_secs(3),
    );
    let elapsed = t.elapsed().as_secs_f64();
    let after = dump(&p.h, p.va).await.unwrap();
    let stats = after.iter().find(|q| q.kind == "tbf").unwrap().stats;
    let wire = (stats.bytes - before.bytes) as f64 * 8.0 / elapsed;
    eprintln!(
        "tbf 8 Mbit/s: TCP goodput {:.3} Mbit/s ({:+.1} %), qdisc throughput {:.3} Mbit/s over the whole transfer, {} overlimits",
        bps / 1e6,
        (bps / 8e6 - 1.0) * 100.0,
        wire / 1e6,
        stats.overlimits
    );
    assert!(
        (7.2e6..=8.8e6).contains(&bps),
        "goodput {bps} bit/s is not within 10 % of 8 Mbit/s"
    );
    assert!(stats.packets > before.packets && stats.overlimits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htb_classes_and_u32_filters_steer_rates() {
    let _quiet = crate::testing::exclusive();
    let Some(p) = Pair::new().await else { return };
    let (h, va) = (&p.h, p.va);
    let root = ClassId::qdisc(1);
    qdisc_replace(
        h,
        va,
        Parent::Root,
        1,
        &Qdisc::Htb(Htb {
            default_class: 0x30,
            r2q: 10,
        }),
    )
    .await
    .unwrap();
    let slow = HtbClass {
        rate: 2_000_000,
        burst: Some(15 * 1024),
        cburst: Some(15 * 1024),
        ..HtbClass::default()
    };
    let fast = HtbClass {
        rate: 6_000_000,
        burst: Some(15 * 1024),
        cburst: Some(15 * 1024),
        prio: 1,
        ..HtbClass::default()
    };
    let other = HtbClass {
        rate: 100_000_000,
        ..HtbClass::default()
    };
    for (minor, c) in [(0x10, &slow), (0x20, &fast), (0x30, &other)] {
        class_replace(h, va, root, ClassId::new(1, minor), c)
            .await
            .unwrap();
    }
    // Replacing a class changes it in place.
    class_replace(h, va, root, ClassId::new(1, 0x10), &slow)
        .await
        .unwrap();
    let dst = |s: &str| U32Match {
        src: Some("10.77.0.0/24".parse().unwrap()),
        dst: Some(s.parse().unwrap()),
    };
    u32_filter_add(h, va, root, 1, &dst("10.77.0.2/32"), ClassId::new(1, 0x10))
        .await
        .unwrap();
    u32_filter_add(h, va, root, 2, &dst("10.77.0.3/32"), ClassId::new(1, 0x20))
        .await
        .unwrap();

    let qs = dump(h, va).await.unwrap();
    let q = qs.iter().find(|q| q.parent == Parent::Root).unwrap();
    // `direct_packets` is left out: IPv6 neighbour discovery of the fresh veth may pass the
    // qdisc before its default class exists, and those packets go out directly.
    match &q.options {
        QdiscOptions::Htb(HtbInfo {
            default_class, r2q, ..
        }) => assert_eq!((*default_class, *r2q), (0x30, 10)),
        other => panic!("expected htb, got {other:?}"),
    }
    let classes = dump_classes(h, va).await.unwrap();
    let class = |minor| {
        classes
            .iter()
            .find(|c| c.classid == ClassId::new(1, minor))
            .and_then(|c| c.htb)
            .unwrap()
    };
    let c10 = class(0x10);
    assert_eq!((c10.rate, c10.ceil, c10.prio), (2_000_000, 2_000_000, 0));
    assert!(
        (15_300..=15_360).contains(&c10.burst),
        "burst {}",
        c10.burst
    );
    assert_eq!((class(0x20).rate, class(0x20).prio), (6_000_000, 1));
    assert_eq!(class(0x30).rate, 100_000_000);

    let (a, b) = (p.a.0.clone(), p.b.0.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let measure = Duration::from_secs(3);
    let t_slow =
        std::thread::spawn(move || goodput(&a, &b, Ipv4Addr::new(10, 77, 0, 2), 5301, measure));
    let t_fast =
        std::thread::spawn(move || goodput(&a2, &b2, Ipv4Addr::new(10, 77, 0, 3), 5302, measure));
    let (slow_bps, fast_bps) = (t_slow.join().unwrap(), t_fast.join().unwrap());
    eprintln!(
        "htb: to .2 (class 1:10, 2 Mbit/s) {:.3} Mbit/s, to .3 (class 1:20, 6 Mbit/s) {:.3} Mbit/s",
        slow_bps / 1e6,
        fast_bps / 1e6
    );
    assert!((1.7e6..=2.2e6).contains(&slow_bps), "slow flow {slow_bps}");
    assert!((5.2e6..=6.6e6).contains(&fast_bps), "fast flow {fast_bps}");
    let classes = dump_classes(h, va).await.unwrap();
    let bytes = |minor| {
        classes
            .iter()
            .find(|c| c.classid == ClassId::new(1, minor))
            .unwrap()
            .stats
            .bytes
    };
    assert!(bytes(0x20) > 2 * bytes(0x10), "class counters: {classes:?}");

    // Tear down piecewise; each delete is idempotent.
    for prio in [1, 2, 1] {
        filter_delete(h, va, root, prio).await.unwrap();
    }
    for minor in [0x10, 0x20, 0x10] {
        class_delete(h, va, ClassId::new(1, minor)).await.unwrap();
    }
    assert!(
        dump_classes(h, va)
            .await
            .unwrap()
            .iter()
            .all(|c| c.classid.minor == 0x30)
    );
    qdisc_delete(h, va, Parent::Root).await.unwrap();
    qdisc_delete(h, va, Parent::Root).await.unwrap();
    assert!(dump(h, va).await.unwrap().iter().all(|q| q.kind != "htb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_changes_kind_and_fifo_leaves() {
    let Some(p) = Pair::new().await else { return };
    let (h, va) = (&p.h, p.va);
    let tbf = Qdisc::Tbf(Tbf {
        rate: 1_000_000,
        burst: 10_000,
        limit: TbfLimit::Bytes(20_000),
    });
    qdisc_replace(h, va, Parent::Root, 1, &tbf).await.unwrap();
    // tbf 1: → htb 1: needs delete + add, done inside replace.
    qdisc_replace(h, va, Parent::Root, 1, &Qdisc::Htb(Htb::default()))
        .await
        .unwrap();
    class_replace(
        h,
        va,
        ClassId::qdisc(1),
        ClassId::new(1, 1),
        &HtbClass {
            rate: 1_000_000,
            ..HtbClass::default()
        },
    )
    .await
    .unwrap();
    qdisc_replace(
        h,
        va,
        Parent::Class(ClassId::new(1, 1)),
        0x10,
        &Qdisc::Bfifo { limit: 30_000 },
    )
    .await
    .unwrap();
    qdisc_replace(
        h,
        va,
        Parent::Class(ClassId::new(1, 1)),
        0x10,
        &Qdisc::Pfifo { limit: 50 },
    )
    .await
    .unwrap();
    let qs = dump(h, va).await.unwrap();
    let kinds: Vec<_> = qs
        .iter()
        .map(|q| (q.kind.as_str(), q.handle, q.parent))
        .collect();
    assert!(
        kinds.contains(&("htb", ClassId::qdisc(1), Parent::Root)),
        "{kinds:?}"
    );
    let leaf = qs
        .iter()
        .find(|q| q.handle == ClassId::qdisc(0x10))
        .unwrap();
    assert_eq!(leaf.kind, "pfifo");
    assert_eq!(leaf.parent, Parent::Class(ClassId::new(1, 1)));
    assert_eq!(leaf.options, QdiscOptions::Fifo { limit: 50 });
    qdisc_delete(h, va, Parent::Class(ClassId::new(1, 1)))
        .await
        .unwrap();
    qdisc_delete(h, va, Parent::Class(ClassId::new(1, 1)))
        .await
        .unwrap();
    qdisc_delete(h, va, Parent::Root).await.unwrap();
    // A missing parent is an error, not "already gone".
    let err = qdisc_replace(
        h,
        va,
        Parent::Class(ClassId::new(9, 9)),
        0x20,
        &Qdisc::Pfifo { limit: 5 },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HostError::Kernel { .. }), "{err}");
    eprintln!("missing parent: {err}");
}

fn netem_sample() -> Qdisc {
    Qdisc::Netem(Netem {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        distribution: Some(Distribution::Uniform),
        loss: Some(NetemLoss::Random {
            probability: 0.01,
            correlation: 0.0,
        }),
        ..Netem::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netem_is_applied_or_reported_unsupported() {
    let Some(p) = Pair::new().await else { return };
    let has = kernel_has_qdisc("netem").await.unwrap();
    let res = qdisc_replace(&p.h, p.va, Parent::Root, 1, &netem_sample()).await;
    // Also through a socket without extended acks: the probe decides instead.
    let plain = ns::netlink(&p.a.0).unwrap();
    let res_plain = qdisc_replace(&plain, p.va, Parent::Root, 1, &netem_sample()).await;
    if has {
        res.unwrap();
        res_plain.unwrap();
        let qs = dump(&p.h, p.va).await.unwrap();
        let QdiscOptions::Netem(n) = &qs.iter().find(|q| q.kind == "netem").unwrap().options else {
            panic!("netem not decoded")
        };
        assert_eq!(n.delay, Duration::from_millis(20));
        return;
    }
    for r in [res, res_plain] {
        let err = r.unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(
            matches!(&err, HostError::Unsupported { what, .. } if what == "netem"),
            "{err:?}"
        );
        assert!(text.contains("sch_netem"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_qdisc_probe_stays_out_of_the_host() {
    if !crate::testing::netns() {
        return;
    }
    let host_before = Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .unwrap()
        .stdout;
    assert!(kernel_has_qdisc("tbf").await.unwrap());
    assert!(kernel_has_qdisc("htb").await.unwrap());
    assert!(kernel_has_qdisc("pfifo").await.unwrap());
    assert!(!kernel_has_qdisc("edgesim-no-such-qdisc").await.unwrap());
    let netem = kernel_has_qdisc("netem").await.unwrap();
    eprintln!("this kernel has netem: {netem}");
    let host_after = Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(host_before, host_after, "the host's qdiscs changed");
    let prefix = format!("edgesim-probe-{}-", std::process::id());
    assert_eq!(ns::list(&prefix), Vec::<String>::new());
}

#[test]
fn ext_ack_parsing() {
    // An error payload: echoed 20-byte request (header + 4 bytes), then NLMSGERR_ATTR_MSG.
    let mut b = Vec::new();
    b.extend_from_slice(&20u32.to_ne_bytes());
    b.extend_from_slice(&[0u8; 16]);
    let msg = b"Specified qdisc kind is unknown.\0";
    b.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&1u16.to_ne_bytes());
    b.extend_from_slice(msg);
    assert_eq!(
        ext_ack_message(&b).as_deref(),
        Some("Specified qdisc kind is unknown.")
    );
    assert_eq!(ext_ack_message(&b[..20]), None);
}

#[test]
fn validation_rejects_before_sending() {
    let bad = [
        Qdisc::Netem(Netem {
            distribution: Some(Distribution::Normal),
            ..Netem::default()
        }),
        Qdisc::Netem(Netem {
            gap: 2,
            ..Netem::default()
        }),
        Qdisc::Netem(Netem {
            duplicate: 1.5,
            ..Netem::default()
        }),
        Qdisc::Tbf(Tbf {
            rate: 0,
            burst: 1,
            limit: TbfLimit::Bytes(1),
        }),
    ];
    for q in bad {
        assert!(q.validate().is_err(), "{q:?} must be refused");
    }
    assert!(netem_sample().validate().is_ok());
    assert_eq!(ClassId::new(1, 0x10).to_string(), "1:10");
    assert_eq!(Parent::from_raw(Parent::Root.raw()), Parent::Root);
}
