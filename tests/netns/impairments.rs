//! Link impairments measured by their effect: the fraction of datagrams a lossy link
//! delivers, and the goodput a TCP transfer gets through a rate-limited link.

use crate::common::*;

/// Datagrams per measured path: at p = 0.9 the 99.9 % interval is about ±1.6 points.
const N: u32 = 4000;

/// Both mechanisms must give the same effect: the kernel's (nftables `numgen`) and the
/// userspace emulator's (linkem, seeded).
#[test]
fn loss_drops_the_configured_fraction_per_direction_and_composes_along_a_path() {
    loss_with("kernel");
}

#[test]
fn loss_in_the_userspace_emulator() {
    loss_with("userspace");
}

fn loss_with(mechanism: &str) {
    let _g = serial();
    if !privileged() {
        return;
    }
    loss_on("netns", mechanism);
}

/// Loss per direction and along a path, measured with datagrams, on `target`.
pub fn loss_on(target: &'static str, mechanism: &str) {
    let sc = Scenario::new(
        &format!("loss-{mechanism}-{target}"),
        &(format!("impairment: {mechanism}\n")
            + "\
seed: 3
duration: 60s
sites:
  cloud: {}
  near:
    uplink: {site: cloud, loss: 10%}
  far:
    uplink: {site: cloud, loss: 30%}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: n, count: 2, site: near, profile: raspberry-pi-5-4gb}
  - {name: f-1, site: far, profile: raspberry-pi-5-4gb}
"),
    )
    .on(target);
    let lab = Lab::up(&sc);
    let (sink, n1, n2, f1) = (
        lab.peer("sink"),
        lab.peer("n-1"),
        lab.peer("n-2"),
        lab.peer("f-1"),
    );

    // The harness itself loses nothing: a clean path (same site) delivers every datagram.
    let clean = udp_delivered(&n1, &n2, N);
    assert_eq!(
        clean, N,
        "n-1 -> n-2 (same site, no impairment) delivered {clean} of {N}"
    );

    // Each direction of a link crosses it once; a path through two links crosses both.
    let cases = [
        ("n-1 -> sink (near uplink, up)", &n1, &sink, 0.90),
        ("sink -> n-1 (near uplink, down)", &sink, &n1, 0.90),
        ("f-1 -> sink (far uplink, up)", &f1, &sink, 0.70),
        ("n-1 -> f-1 (near up, then far down)", &n1, &f1, 0.90 * 0.70),
    ];
    let mut report = Vec::new();
    for (what, from, to, p) in cases {
        let got = udp_delivered(from, to, N);
        let (lo, hi) = binomial_999(N, p);
        report.push(format!(
            "{what}: delivered {got}/{N} = {:.4} (expected {p:.4}, 99.9% interval {:.4}..{:.4})",
            f64::from(got) / f64::from(N),
            lo / f64::from(N),
            hi / f64::from(N)
        ));
        assert!((lo..=hi).contains(&f64::from(got)), "{}", report.join("\n"));
    }
    eprintln!("{}", report.join("\n"));
    lab.down();
}

/// Goodput an iperf3 TCP transfer from `from` (or to it, with `reverse`) reached, in bit/s,
/// and the MSS it used.
fn iperf(lab: &str, from: &str, secs: u32, reverse: bool) -> (f64, f64) {
    let secs = secs.to_string();
    let mut args = vec![
        "iperf3", "-c", "sink", "-p", "5201", "-t", &secs, "-O", "1", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let out = exec(lab, from, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 from {from} failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{text}"));
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in iperf3 output:\n{text}"));
    let mss = v["start"]["tcp_mss_default"].as_f64().unwrap_or(1448.0);
    (bps, mss)
}

/// How much of a link's rate TCP payload can use. The rate limit (htb on the destination
/// site's bridge) counts whole Ethernet frames without preamble or FCS: a full segment is
/// MTU (1500) + 14 bytes of Ethernet header on the wire and carries MSS bytes of payload
/// (1448 with TCP timestamps: 1500 − 20 IP − 20 TCP − 12 options). ACKs travel the other
/// direction and do not count against this one.
fn expected_goodput(rate_bps: f64, mss: f64) -> f64 {
    rate_bps * mss / (1500.0 + 14.0)
}

/// Kernel (tc htb) and userspace (linkem) rate limits.
#[test]
fn rate_limits_tcp_goodput_to_the_configured_rate() {
    rate_with("kernel");
}

#[test]
fn rate_limits_in_the_userspace_emulator() {
    rate_with("userspace");
}

fn rate_with(mechanism: &str) {
    let _g = serial();
    if !privileged() || !edgesim::testing::program("iperf3", "iperf3") {
        return;
    }
    let sc = Scenario::new(
        &format!("rate-{mechanism}"),
        &(format!("impairment: {mechanism}\n")
            + "\
seed: 4
duration: 60s
sites:
  cloud: {}
  slow:
    uplink: {site: cloud, rate: 8mbit}
  fast:
    uplink: {site: cloud, rate: 20mbit}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: peer, site: cloud, profile: cloud-small}
  - {name: s-gw, site: slow, profile: raspberry-pi-5-4gb}
  - {name: f-gw, site: fast, profile: raspberry-pi-5-4gb}
workloads:
  - {name: iperf, nodes: [sink], command: iperf3 -s -p 5201, readyPort: 5201, restart: always}
"),
    );
    let lab = Lab::up(&sc);
    let mut lines = Vec::new();
    // 8 mbit from the slow site up to the cloud; 20 mbit from the cloud down to the fast site.
    for (what, from, reverse, rate) in [
        ("s-gw -> sink (8mbit link, up)", "s-gw", false, 8e6),
        ("sink -> f-gw (20mbit link, down)", "f-gw", true, 20e6),
    ] {
        let (bps, mss) = iperf(&lab.name, from, 6, reverse);
        let want = expected_goodput(rate, mss);
        let ratio = bps / want;
        lines.push(format!(
            "{what}: goodput {:.3} Mbit/s, expected {:.3} Mbit/s (rate × {mss}/1514), ratio {ratio:.3}",
            bps / 1e6,
            want / 1e6
        ));
        assert!(
            (0.9..=1.1).contains(&ratio),
            "goodput not within ±10%:\n{}",
            lines.join("\n")
        );
    }
    // The same transfer on an unshaped path (same site) is far faster: the limit above is
    // the link's, not the machine's.
    let (bps, _) = iperf(&lab.name, "peer", 2, false);
    lines.push(format!(
        "peer -> sink (same site, no limit): {:.1} Mbit/s",
        bps / 1e6
    ));
    assert!(
        bps > 60e6,
        "an unshaped path should carry well over 20 Mbit/s:\n{}",
        lines.join("\n")
    );
    eprintln!("{}", lines.join("\n"));
    lab.down();
}

/// A flapping link by its effect, with both mechanisms: every ping sent while the journal
/// says the link is down is lost, every ping sent while it is up comes back. The schedule
/// comes from the seed; the phases are read from the report's journal (when each change had
/// taken effect), so the test needs no timing assumption beyond a small guard band around
/// each transition.
#[test]
fn flap_loses_packets_exactly_while_down() {
    flap_with("kernel");
}

#[test]
fn flap_in_the_userspace_emulator() {
    flap_with("userspace");
}

fn flap_with(mechanism: &str) {
    let _g = serial();
    if !privileged() {
        return;
    }
    let sc = Scenario::new(
        &format!("flap-{mechanism}"),
        &(format!("impairment: {mechanism}\n")
            + "\
seed: 21
duration: 7s
sites:
  cloud: {}
  edge:
    uplink: {site: cloud}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw, site: edge, profile: raspberry-pi-5-4gb}
timeline:
  - {at: 1s, for: 5s, flap: {link: edge-uplink, up: uniform(300ms..700ms), down: uniform(300ms..700ms)}}
probes:
  - {name: p, from: gw, ping: sink, every: 20ms, timeout: 150ms}
"),
    );
    let fin = Run::start(&sc).finish(std::time::Duration::from_secs(60));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    // The transitions, as (offset in s, link up afterwards).
    let journal = fin.report["journal"].as_array().expect("journal");
    let mut phases: Vec<(f64, bool)> = vec![(0.0, true)];
    for j in journal {
        let applied = j["applied"].as_f64().expect("every change took effect");
        let summary = j["summary"].as_str().unwrap_or_default();
        assert_eq!(j["ok"], true, "{j}");
        // `flap` entries say which way the link went; the end of the `for:` restores it.
        let up = !summary.ends_with(" down");
        phases.push((applied, up));
    }
    let downs = phases.iter().filter(|p| !p.1).count();
    assert!(
        downs >= 3,
        "the seeded schedule has several down phases: {phases:?}"
    );
    let samples = fin.report["probes"][0]["samples"]
        .as_array()
        .expect("samples");
    // A ping whose send lies within GUARD of a transition may go either way.
    const GUARD: f64 = 0.030;
    let (mut lost_down, mut n_down, mut ok_up, mut n_up) = (0, 0, 0, 0);
    for s in samples {
        let t = s["t"].as_f64().expect("t");
        let i = phases.partition_point(|p| p.0 <= t);
        let (start, up) = phases[i - 1];
        let next = phases.get(i).map(|p| p.0).unwrap_or(f64::INFINITY);
        if t - start < GUARD || next - t < GUARD + 0.150 {
            continue;
        }
        let ok = s["ok"].as_bool().unwrap_or(false);
        if up {
            n_up += 1;
            ok_up += usize::from(ok);
        } else {
            n_down += 1;
            lost_down += usize::from(!ok);
        }
    }
    assert!(
        n_down > 40 && n_up > 80,
        "too few judged samples: {n_down} down, {n_up} up"
    );
    assert_eq!(
        lost_down, n_down,
        "pings sent while the link was down must all be lost ({mechanism}); phases {phases:?}"
    );
    assert_eq!(
        ok_up, n_up,
        "pings sent while the link was up must all arrive ({mechanism}); phases {phases:?}"
    );
}
