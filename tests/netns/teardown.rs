//! Teardown leaves the host as it found it: its links, routes (IPv4 and IPv6, every table)
//! and nftables ruleset are identical before and after a run that ends normally, one stopped
//! with Ctrl-C, one killed with SIGKILL and then cleaned up with `edgesim cleanup`, and a lab
//! whose daemon was killed. Nothing of the run remains: namespaces, hosts folders, cgroups,
//! state file, processes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// A lab that uses every kind of kernel object a run creates: namespaces, bridges, veths,
/// htb classes and filters, nftables loss and partition rules, cgroups with limits, a frozen
/// node, workloads. The partition and the frozen node are still in force when it ends.
fn busy_lab(tag: &str, duration: &str) -> Scenario {
    Scenario::new(
        tag,
        &format!(
            "\
seed: 8
duration: {duration}
sites:
  cloud: {{}}
  factory:
    uplink: {{site: cloud, loss: 5%, rate: 10mbit}}
nodes:
  - {{name: sink, site: cloud, profile: cloud-small}}
  - {{name: gw, count: 2, site: factory, profile: raspberry-pi-5-4gb}}
workloads:
  - {{name: idle, nodes: [all], command: sleep 1000, restart: always}}
timeline:
  - {{at: 1s, partition: {{name: cut, between: [[site/factory], [site/cloud]]}}}}
  - {{at: 1500ms, cpu: {{nodes: [sink], cores: 1}}}}
  - {{at: 2s, node-down: {{nodes: [gw-2], mode: freeze}}}}
"
        ),
    )
}

fn gates() -> bool {
    privileged() && edgesim::testing::program("iproute2", "ip")
}

#[test]
fn a_normal_run_leaves_the_host_identical() {
    let _g = serial();
    if !gates() {
        return;
    }
    let sc = busy_lab("teardown-normal", "3s");
    let before = HostSnapshot::take();
    let mut run = Run::start(&sc);
    run.action("node-down", false);
    let fin = run.finish(Duration::from_secs(60));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    assert_eq!(
        fin.report["teardown"]["errors"],
        serde_json::json!([]),
        "teardown reported errors"
    );
    assert_gone(&fin.run_id());
    before.assert_same(&HostSnapshot::take(), "across a normal run");
}

#[test]
fn ctrl_c_tears_down_gracefully_with_exit_code_130() {
    let _g = serial();
    if !gates() {
        return;
    }
    let sc = busy_lab("teardown-sigint", "60s");
    let before = HostSnapshot::take();
    let mut run = Run::start(&sc);
    run.action("node-down", false);
    let run_id = run.state().run_id;
    assert!(
        !leftovers(&run_id).is_empty(),
        "the run's objects should exist while it runs"
    );
    let t = Instant::now();
    run.signal(libc::SIGINT);
    let fin = run.finish(Duration::from_secs(30));
    let took = t.elapsed();
    assert_eq!(
        fin.status.code(),
        Some(130),
        "a run stopped by Ctrl-C exits with 130\nstderr:\n{}",
        fin.stderr
    );
    let notes = fin.report["notes"].to_string();
    assert!(
        notes.contains("interrupted"),
        "the report should say the run was interrupted: {notes}"
    );
    assert_eq!(
        fin.report["teardown"]["errors"],
        serde_json::json!([]),
        "teardown reported errors"
    );
    assert!(
        took < Duration::from_secs(20),
        "graceful teardown took {took:?}, not the 60 s timeline"
    );
    assert_gone(&run_id);
    before.assert_same(&HostSnapshot::take(), "across a run stopped with Ctrl-C");
}

#[test]
fn sigkill_leaves_leftovers_that_cleanup_removes() {
    let _g = serial();
    if !gates() {
        return;
    }
    let sc = busy_lab("teardown-sigkill", "60s");
    let before = HostSnapshot::take();
    let _cleanup = CleanupOnDrop(None);
    let mut run = Run::start(&sc);
    run.action("node-down", false);
    let st = run.state();
    run.sigkill();

    // Killed without teardown, the run's objects are all still there.
    let left = leftovers(&st.run_id);
    for what in ["namespace", "cgroup", "state file", "hosts folder", "pid "] {
        assert!(
            left.iter().any(|l| l.starts_with(what)),
            "after SIGKILL the run should have left a {what}; it left:\n  {}",
            left.join("\n  ")
        );
    }

    let out = edgesim()
        .arg("cleanup")
        .output()
        .expect("running edgesim cleanup");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "edgesim cleanup failed ({})\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed run {}", st.run_id)),
        "cleanup should name the run it removed: {stdout}"
    );
    assert_gone(&st.run_id);
    before.assert_same(
        &HostSnapshot::take(),
        "across a SIGKILLed run and `edgesim cleanup`",
    );
}

#[test]
fn a_lab_whose_daemon_is_killed_is_removed_by_cleanup() {
    let _g = serial();
    if !gates() {
        return;
    }
    let sc = busy_lab("teardown-lab", "60s");
    let before = HostSnapshot::take();
    let _cleanup = CleanupOnDrop(Some(sc.name.clone()));
    let st = Lab::up(&sc).into_state();
    assert!(
        st.controller_alive(),
        "the lab daemon (pid {}) should be running",
        st.pid
    );
    // `up` returns once every workload process exists: 3 nodes, one instance each.
    assert_eq!(
        netns_of(&st).workload_pids.len(),
        3,
        "the state file should list every workload pid: {:?}",
        netns_of(&st).workload_pids
    );
    for p in &netns_of(&st).workload_pids {
        assert!(
            Path::new(&format!("/proc/{p}")).exists(),
            "workload pid {p} from the state file is not running"
        );
    }
    kill_lab_daemon(&st);
    let left = leftovers(&st.run_id);
    assert!(
        left.iter().any(|l| l.starts_with("namespace"))
            && left.iter().any(|l| l.starts_with("pid ")),
        "the killed lab should have left its namespaces and workloads: {left:?}"
    );

    let out = edgesim()
        .arg("cleanup")
        .output()
        .expect("running edgesim cleanup");
    assert!(
        out.status.success(),
        "edgesim cleanup failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_gone(&st.run_id);
    before.assert_same(
        &HostSnapshot::take(),
        "across a lab whose daemon was killed, and `edgesim cleanup`",
    );
}
