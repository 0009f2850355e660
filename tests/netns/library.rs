//! The library API from inside async tests: a scenario from text, overrides, a run, its
//! report read from code (verdicts, probe series, journal), `assert_passed`'s account, and a
//! lab that takes live faults.

use std::time::Duration;

use crate::common::*;
use edgesim::{Error, Run, Scenario};

const SPEC: &str = "\
apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: library-run}
spec:
  seed: 1
  duration: 60s
  sites:
    cloud: {}
    edge:
      uplink: {site: cloud}
  nodes:
    - {name: sink, site: cloud, profile: cloud-small}
    - {name: gw, site: edge, profile: raspberry-pi-5-4gb}
  workloads:
    - {name: idle, nodes: [gw], command: [no-such-program, '600']}
  timeline:
    - {at: 2s, for: 2s, partition: {name: cut, between: [[site/edge], [site/cloud]]}}
  probes:
    - {name: uplink, from: gw, ping: sink, every: 100ms}
  assertions:
    - {name: cut-while-partitioned, probe: uplink, during: 2.3s..3.9s, expect: 'success_rate == 0%'}
    - {name: wrongly-expects-no-loss, probe: uplink, expect: 'success_rate == 100%'}
";

// `serial()` keeps the kernel tests of this binary one at a time; each test has a runtime of
// its own, so holding it across awaits blocks no other task.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_scenario_runs_from_an_async_test_and_its_report_reads_from_code() {
    let _g = serial();
    if !edgesim::testing::netns() {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let sc = Scenario::from_yaml(SPEC).expect("valid");
    assert_eq!(sc.name(), "library-run");
    let report = Run::new(sc)
        .seed(9)
        .duration(Duration::from_secs(6))
        // The command's program is replaced (its argument stays): `sleep 600`.
        .workload_program("idle", "/bin/sleep")
        .out_dir(out.path())
        .run()
        .await
        .expect("the run completes");
    assert_eq!(report.seed, 9, "seed override");
    assert_eq!(report.duration, Duration::from_secs(6), "duration override");
    assert!(report.error.is_none(), "{}", report.account());
    let cut = report.assertion("cut-while-partitioned").expect("verdict");
    assert!(cut.passed, "{}", report.account());
    assert_eq!(
        report
            .failures()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["wrongly-expects-no-loss"]
    );
    let uplink = report.probe("uplink").expect("probe");
    assert!(
        uplink.samples.len() >= 50,
        "{} samples",
        uplink.samples.len()
    );
    let lost: Vec<f64> = uplink
        .samples
        .iter()
        .filter(|s| !s.ok)
        .map(|s| s.t.as_secs_f64())
        .collect();
    assert!(
        lost.iter().all(|t| (1.9..4.3).contains(t)),
        "losses only around the cut: {lost:?}"
    );
    assert_eq!(report.actions("partition").len(), 1);
    assert_eq!(report.actions("heal").len(), 1);
    // The workload ran the replacement program for the whole run.
    let started = report
        .workloads
        .iter()
        .filter(|w| w.workload == "idle" && w.kind == edgesim::report::WorkloadEventKind::Started)
        .count();
    assert_eq!(started, 1, "{:#?}", report.workloads);
    assert!(
        !report
            .workloads
            .iter()
            .any(|w| w.kind == edgesim::report::WorkloadEventKind::SpawnFailed),
        "{:#?}",
        report.workloads
    );
    assert!(out.path().join("report.json").is_file());
    assert!(out.path().join("report.html").is_file());

    // `assert_passed` panics with an account of what failed and when.
    let msg = std::panic::catch_unwind(|| report.assert_passed())
        .expect_err("the run failed an assertion");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    for want in [
        "scenario `library-run` failed",
        "1 of 2 assertions failed",
        "wrongly-expects-no-loss",
        "expected success_rate == 100%",
        "timeline by then",
        "partition `cut`",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
}

#[tokio::test]
async fn bad_input_is_an_error_before_anything_is_created() {
    let bad = SPEC.replace("profile: cloud-small", "profile: cloud-smal");
    let err = match Scenario::from_yaml(&bad) {
        Ok(sc) => Run::new(sc).plan().await.expect_err("unknown profile"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("cloud-smal"), "{err}");
    let sc = Scenario::from_yaml(SPEC).expect("valid");
    let err = Run::new(sc)
        .workload_program("nope", "/bin/true")
        .plan()
        .await
        .expect_err("unknown workload");
    assert!(err.to_string().contains("no workload `nope`"), "{err}");

    // Built in Rust, as data: validated the same way, errors included.
    let doc = |profile: &str| {
        serde_json::json!({
            "apiVersion": "edgesim.dev/v1alpha1", "kind": "Scenario",
            "metadata": {"name": "built-in-rust"},
            "spec": {
                "duration": "5s",
                "sites": {"cloud": {}, "edge": {"uplink": {"site": "cloud", "delay": "5ms"}}},
                "nodes": [
                    {"name": "a", "site": "cloud", "profile": "cloud-small"},
                    {"name": "b", "count": 2, "site": "edge", "profile": profile},
                ],
            },
        })
    };
    let plan = Run::new(Scenario::from_value(&doc("raspberry-pi-5-4gb")).expect("parses"))
        .plan()
        .await
        .expect("valid");
    assert_eq!((plan.nodes.len(), plan.links.len()), (3, 1));
    let err = Run::new(Scenario::from_value(&doc("pi-6")).expect("parses"))
        .plan()
        .await
        .expect_err("unknown profile");
    assert!(err.to_string().contains("pi-6"), "{err}");
}

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_from_the_library_takes_live_faults() {
    let _g = serial();
    if !edgesim::testing::netns() {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let sc = Scenario::from_yaml(&SPEC.replace("library-run", "library-lab")).expect("valid");
    let lab = Run::new(sc)
        .workload_program("idle", "/bin/sleep")
        .out_dir(out.path())
        .up()
        .await
        .expect("the lab comes up");
    let run_id = lab.state().run_id.clone();
    let ping_now = || tokio::task::spawn_blocking(|| ping("library-lab", "gw", "sink", 2));
    assert_eq!(ping_now().await.expect("ping"), 2);
    let applied = lab
        .fault(
            "partition",
            "{name: manual, between: [[gw], [sink]]}",
            Some(Duration::from_secs(30)),
        )
        .await
        .expect("applied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(ping_now().await.expect("ping"), 0, "partitioned");
    let active = lab.active().await.expect("listed");
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].kind, "partition");
    assert!(
        active[0]
            .until
            .is_some_and(|u| (u - active[0].since - 30.0).abs() < 0.1)
    );
    match lab.fault("heal", "{name: other}", None).await {
        Err(Error::Fault(e)) => assert!(e.join(" ").contains("other"), "{e:?}"),
        r => panic!("a heal of no partition must be refused: {r:?}"),
    }
    let report = lab.down().await.expect("the lab's report");
    assert_gone(&run_id);
    let verbs: Vec<(&str, bool)> = report
        .journal
        .iter()
        .map(|j| (j.verb.as_str(), j.revert))
        .collect();
    // The pending revert of the `for` was applied at `down`.
    assert_eq!(verbs, [("partition", false), ("heal", true)]);
}
