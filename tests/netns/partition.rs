//! Partitions cut real traffic: between sites (routed), within a site (bridged), one way
//! only, and heal restores it. Each phase is observed from inside the nodes while
//! `edgesim run` plays the timeline.

use std::time::Duration;

use crate::common::*;

/// Phases are 4 s apart; the checks of one phase take about 1.5 s here. `EDGESIM_TEST_PHASE`
/// (seconds) stretches them where everything is slower: under qemu TCG (tests/vm) the checks
/// take about 4 s.
fn phase() -> Duration {
    std::env::var("EDGESIM_TEST_PHASE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(Duration::from_secs(4), Duration::from_secs_f64)
}

const SITES: &str = "\
seed: 1
sites:
  cloud: {}
  factory:
    uplink: {site: cloud}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw, count: 3, site: factory, profile: raspberry-pi-5-4gb}
";

/// Runs the `partition` action `cut` one phase in and the `heal` action `heal` two phases in
/// on the two-site lab, and returns what got through between `a` and `b` (and between the
/// bystanders `c` and `d`) before, during and after the partition.
fn observe(
    target: &'static str,
    tag: &str,
    (cut, heal): (&str, &str),
    pairs: [(&str, &str); 2],
) -> [(Reach, Reach); 3] {
    let p = phase().as_secs_f64();
    let (t1, t2, end) = (p, 2.0 * p, 3.0 * p);
    let spec = format!(
        "duration: {end}s\n{SITES}timeline:\n  - {{at: {t1}s, partition: {cut}}}\n  - {{at: {t2}s, heal: {heal}}}\n"
    );
    let sc = Scenario::new(tag, &spec).on(target);
    let mut run = Run::start(&sc);
    let t0 = run.timeline_started();
    let st = run.state();
    let [(a, b), (c, d)] = pairs;
    let (a, b, c, d) = (peer(&st, a), peer(&st, b), peer(&st, c), peer(&st, d));
    let measure = |phase: &str, since| {
        let r = (reach(&sc.name, &a, &b), reach(&sc.name, &c, &d));
        assert_within(phase, since, self::phase());
        r
    };

    let before = measure("before the partition", t0);
    let cut = run.action("partition", false);
    let during = measure("during the partition", std::time::Instant::now());
    let heal = run.action("heal", false);
    let after = measure("after the heal", std::time::Instant::now());

    let fin = run.finish(Duration::from_secs(30));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    assert!(
        cut["applied"].as_f64() < heal["applied"].as_f64(),
        "journal out of order: {cut} / {heal}"
    );
    assert_gone(&fin.run_id());
    [before, during, after]
}

#[test]
fn partition_between_sites_blocks_both_ways_until_heal() {
    let _g = serial();
    if !privileged() || !edgesim::testing::program("ping", "ping") {
        return;
    }
    between_sites("netns");
}

/// Factory and cloud partitioned, then healed, on `target`.
pub fn between_sites(target: &'static str) {
    let [before, during, after] = observe(
        target,
        &format!("partition-sites-{target}"),
        (
            "{name: cut, between: [[site/factory], [site/cloud]]}",
            "{name: cut}",
        ),
        [("gw-1", "sink"), ("gw-2", "gw-3")],
    );
    assert_eq!(before.0, Reach::OPEN, "gw-1 <-> sink before the partition");
    assert_eq!(
        during.0,
        Reach::CUT,
        "gw-1 <-> sink while factory and cloud are partitioned"
    );
    assert_eq!(after.0, Reach::OPEN, "gw-1 <-> sink after the heal");
    // Traffic inside the factory never crosses the cut.
    for (phase, r) in [
        ("before", before.1),
        ("during", during.1),
        ("after", after.1),
    ] {
        assert_eq!(
            r,
            Reach::OPEN,
            "gw-2 <-> gw-3 (same site) {phase} the partition"
        );
    }
}

#[test]
fn partition_within_a_site_blocks_bridged_traffic() {
    let _g = serial();
    if !privileged() || !edgesim::testing::program("ping", "ping") {
        return;
    }
    let [before, during, after] = observe(
        "netns",
        "partition-lan",
        ("{name: lan, between: [[gw-1], [gw-2]]}", "{}"),
        [("gw-1", "gw-2"), ("gw-1", "gw-3")],
    );
    assert_eq!(before.0, Reach::OPEN, "gw-1 <-> gw-2 before the partition");
    assert_eq!(
        during.0,
        Reach::CUT,
        "gw-1 <-> gw-2 (bridged, same site) while partitioned"
    );
    assert_eq!(after.0, Reach::OPEN, "gw-1 <-> gw-2 after the heal");
    for (phase, r) in [
        ("before", before.1),
        ("during", during.1),
        ("after", after.1),
    ] {
        assert_eq!(
            r,
            Reach::OPEN,
            "gw-1 <-> gw-3 (not in the partition) {phase} it"
        );
    }
}

#[test]
fn one_way_partition_blocks_only_the_first_group_towards_the_second() {
    let _g = serial();
    if !privileged() || !edgesim::testing::program("ping", "ping") {
        return;
    }
    one_way("netns");
}

/// A one-way partition from the factory to the cloud, then healed, on `target`.
pub fn one_way(target: &'static str) {
    let [before, during, after] = observe(
        target,
        &format!("partition-oneway-{target}"),
        (
            "{name: up-cut, oneWay: true, between: [[site/factory], [site/cloud]]}",
            "{name: up-cut}",
        ),
        [("gw-1", "sink"), ("gw-2", "gw-3")],
    );
    assert_eq!(before.0, Reach::OPEN, "gw-1 <-> sink before the partition");
    // factory -> cloud is dropped, cloud -> factory flows. Rules are stateless, so anything
    // that needs an answer from the factory (ping, a TCP handshake) fails either way.
    let one_way = Reach {
        udp_there: 0,
        udp_back: DATAGRAMS,
        tcp_there: false,
        tcp_back: false,
        ping_there: 0,
        ping_back: 0,
    };
    assert_eq!(
        during.0, one_way,
        "gw-1 (factory) -> sink (cloud) cut one way"
    );
    assert_eq!(after.0, Reach::OPEN, "gw-1 <-> sink after the heal");
    for (phase, r) in [
        ("before", before.1),
        ("during", during.1),
        ("after", after.1),
    ] {
        assert_eq!(
            r,
            Reach::OPEN,
            "gw-2 <-> gw-3 (same site) {phase} the partition"
        );
    }
}
