//! The journal tells the truth about the timeline: every action (and every automatic revert
//! of a `for:`) appears once, in order, at its scheduled offset, applied no earlier than
//! scheduled, with its lag recorded and summarised. No bound on the lag is asserted here:
//! performance goals are measured in bench/, not in tests.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[test]
fn journal_records_every_action_after_its_scheduled_time_in_order_with_lag() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let sc = Scenario::new(
        "timeline",
        "\
seed: 9
duration: 4s
sites:
  cloud: {}
  factory:
    uplink: {site: cloud, loss: 1%}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw-1, site: factory, profile: raspberry-pi-5-4gb}
timeline:
  - {at: 500ms, partition: {name: a, between: [[gw-1], [sink]]}}
  - {at: 800ms, heal: {name: a}}
  - {at: 1s, for: 500ms, impair: {link: factory-uplink, loss: 20%}}
  - {at: 1700ms, for: 300ms, cpu: {nodes: [gw-1], cores: 1}}
  - {at: 2100ms, for: 400ms, memory: {nodes: [gw-1], limit: 300Mi}}
  - {at: 2200ms, node-down: {nodes: [sink], mode: isolate}}
  - {at: 2600ms, node-up: {nodes: [sink]}}
  - {at: 3s, partition: {between: [[site/factory], [site/cloud]]}}
  - {at: 3300ms, heal: {}}
",
    );
    // (verb, scheduled offset in s, automatic revert of a `for:`), in timeline order.
    let expected = [
        ("partition", 0.5, false),
        ("heal", 0.8, false),
        ("impair", 1.0, false),
        ("impair", 1.5, true),
        ("cpu", 1.7, false),
        ("cpu", 2.0, true),
        ("memory", 2.1, false),
        ("node-down", 2.2, false),
        ("memory", 2.5, true),
        ("node-up", 2.6, false),
        ("partition", 3.0, false),
        ("heal", 3.3, false),
    ];

    let mut run = Run::start(&sc);
    // The progress stream announces each action as it is applied, in the same order.
    let streamed: Vec<Value> = expected
        .iter()
        .map(|(verb, _, revert)| run.action(verb, *revert))
        .collect();
    let fin = run.finish(Duration::from_secs(30));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );

    let journal = fin.report["journal"]
        .as_array()
        .expect("report has a journal");
    let got: Vec<(&str, f64, bool)> = journal
        .iter()
        .map(|j| {
            (
                j["verb"].as_str().unwrap_or("?"),
                j["scheduled"].as_f64().unwrap_or(f64::NAN),
                j["revert"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "one journal entry per action and revert: {got:?}"
    );
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            g.0 == e.0 && (g.1 - e.1).abs() < 1e-6 && g.2 == e.2,
            "journal {got:?}\ndoes not match the timeline {expected:?}"
        );
    }
    assert_eq!(
        &streamed[..],
        &journal[..],
        "progress events and the journal should agree"
    );

    let mut prev_applied = 0.0;
    for (i, j) in journal.iter().enumerate() {
        assert_eq!(
            j["seq"].as_u64(),
            Some(i as u64),
            "entry {i} out of sequence: {j}"
        );
        assert_eq!(j["ok"], true, "entry {i} failed: {j}");
        let scheduled = j["scheduled"].as_f64().expect("scheduled");
        let applied = j["applied"]
            .as_f64()
            .unwrap_or_else(|| panic!("entry {i} was never applied: {j}"));
        let lag = j["lag_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("entry {i} has no lag: {j}"));
        assert!(
            applied >= scheduled,
            "entry {i} took effect before its time: {j}"
        );
        assert!(
            applied >= prev_applied,
            "entry {i} was applied before the one before it: {j}"
        );
        assert!(
            (lag - (applied - scheduled) * 1e3).abs() < 1e-3,
            "entry {i}: lag_ms {lag} is not applied − scheduled: {j}"
        );
        assert!(
            j["apply_ms"].as_f64().is_some_and(|a| a >= 0.0),
            "entry {i} has no apply time: {j}"
        );
        prev_applied = applied;
    }

    let lag = &fin.report["lag"];
    let lags: Vec<f64> = journal
        .iter()
        .filter_map(|j| j["lag_ms"].as_f64())
        .collect();
    let max = lags.iter().copied().fold(0.0, f64::max);
    let (p50, p99) = (lag["p50_ms"].as_f64(), lag["p99_ms"].as_f64());
    assert_eq!(
        lag["count"].as_u64(),
        Some(expected.len() as u64),
        "lag summary count: {lag}"
    );
    assert_eq!(lag["max_ms"].as_f64(), Some(max), "lag summary max: {lag}");
    assert!(
        matches!((p50, p99), (Some(a), Some(b)) if 0.0 <= a && a <= b && b <= max),
        "lag percentiles should be ordered within [0, max]: {lag}"
    );
    eprintln!("timeline lag: {lag}");
    assert_gone(&fin.run_id());
}
