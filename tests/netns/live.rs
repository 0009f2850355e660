//! Live faults on a lab that is up (`edgesim fault`): applied now, reverted by `--for`,
//! listed, refused before anything changes when invalid, journalled into the lab's report,
//! and gone with `down`.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;

pub fn fault(name: &str, args: &[&str]) -> Output {
    edgesim()
        .args(["fault", name])
        .args(args)
        .output()
        .expect("running edgesim fault")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "edgesim fault failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The average RTT in ms of `count` pings from `from` to `to`.
fn rtt_ms(name: &str, from: &str, to: &str, count: u32) -> f64 {
    let out = exec(
        name,
        from,
        &["ping", "-n", "-c", &count.to_string(), "-i", "0.2", to],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no RTT in ping's output:\n{text}"))
}

#[test]
fn live_faults_apply_revert_list_and_land_in_the_report() {
    let _g = serial();
    if !edgesim::testing::netns() {
        return;
    }
    let sc = Scenario::new(
        "live-faults",
        "\
seed: 3
duration: 30s
sites:
  cloud: {}
  edge:
    uplink: {site: cloud}
nodes:
  - {name: sink, site: cloud, profile: cloud-small}
  - {name: gw, site: edge, profile: raspberry-pi-5-4gb}
",
    );
    let lab = Lab::up(&sc);
    let name = sc.name.as_str();
    assert_eq!(ping(name, "gw", "sink", 3), 3, "the lab starts connected");
    assert!(ok(&fault(name, &["--list"])).contains("no faults in effect"));

    // A partition for 4 s: cut now, listed with its end, healed by itself.
    let t = Instant::now();
    let said = ok(&fault(
        name,
        &[
            "partition",
            "{name: cut, between: [[site/edge], [site/cloud]]}",
            "--for",
            "4s",
        ],
    ));
    assert!(said.contains("applied partition `cut`"), "{said}");
    assert!(said.contains("1 more action scheduled"), "{said}");
    assert_eq!(ping(name, "gw", "sink", 2), 0, "partitioned");
    let listed = ok(&fault(name, &["--list"]));
    assert!(
        listed.contains("partition") && listed.contains("`cut`"),
        "{listed}"
    );
    // Its `for` ends 4 s after it was applied.
    let until: f64 = listed
        .lines()
        .find(|l| l.starts_with("partition"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|u| u.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no end in {listed}"));
    let since: f64 = listed
        .lines()
        .find(|l| l.starts_with("partition"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no start in {listed}"));
    assert!((until - since - 4.0).abs() < 0.11, "{listed}");
    std::thread::sleep((t + Duration::from_millis(4500)).saturating_duration_since(Instant::now()));
    assert_eq!(ping(name, "gw", "sink", 3), 3, "healed by its `for`");
    assert!(ok(&fault(name, &["--list"])).contains("no faults in effect"));

    // An impairment that stays: 40 ms each way.
    let base = rtt_ms(name, "gw", "sink", 5);
    ok(&fault(
        name,
        &["impair", "{link: edge-uplink, delay: 40ms}"],
    ));
    let slow = rtt_ms(name, "gw", "sink", 5);
    assert!(
        (75.0..140.0).contains(&slow),
        "RTT {slow:.2} ms with 40 ms each way (was {base:.2} ms)"
    );

    // Refused before anything changes: an unknown partition, an unknown link, a zero `for`.
    for (args, says) in [
        (vec!["heal", "{name: nope}"], "nope"),
        (vec!["impair", "{link: nowhere, delay: 1ms}"], "nowhere"),
        (
            vec!["node-down", "{nodes: [gw]}", "--for", "0s"],
            "longer than zero",
        ),
        (
            vec!["partition", "{between: [[site/edge]"],
            "reading the fault",
        ),
    ] {
        let out = fault(name, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("nothing was changed"),
            "{args:?}: {stderr}"
        );
    }
    let still = rtt_ms(name, "gw", "sink", 3);
    assert!(
        still > 75.0,
        "the refused faults changed nothing: {still:.2} ms"
    );
    let listed = ok(&fault(name, &["--list"]));
    assert!(
        listed.contains("impair") && listed.contains("delay=40ms"),
        "{listed}"
    );

    // A partition without `for`, still in effect at `down`.
    ok(&fault(
        name,
        &["partition", "{name: left, between: [[gw], [sink]]}"],
    ));
    assert_eq!(ping(name, "gw", "sink", 2), 0);
    let run_id = lab.state.run_id.clone();
    lab.down();
    assert_gone(&run_id);

    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sc.out_dir().join("report.json")).expect("the lab's report"),
    )
    .expect("report.json is JSON");
    let journal: Vec<(String, bool, bool)> = report["journal"]
        .as_array()
        .expect("a journal")
        .iter()
        .map(|j| {
            (
                j["verb"].as_str().unwrap_or_default().to_string(),
                j["revert"].as_bool().unwrap_or_default(),
                j["ok"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    let expect = [
        ("partition", false),
        ("heal", true),
        ("impair", false),
        ("partition", false),
    ];
    assert_eq!(
        journal,
        expect
            .iter()
            .map(|(v, r)| (v.to_string(), *r, true))
            .collect::<Vec<_>>(),
        "{:#}",
        report["journal"]
    );
}
