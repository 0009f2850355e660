//! Restart policies, `kill` and `restart` actions, as the report's workload events record
//! them and as the workloads themselves see it: each start appends a line to
//! `$EDGESIM_WORKDIR/starts`, so the number of real starts is counted by the workload, not
//! taken from edgesim's word.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Appends a line to the start counter, then runs `rest`.
fn counted(rest: &str) -> String {
    format!("[sh, -c, 'echo start >> \"$EDGESIM_WORKDIR/starts\"; {rest}']")
}

#[test]
fn restart_policies_kill_and_restart_act_on_real_processes() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let forever = counted("exec sleep 1000");
    let ok_after_1s = counted("sleep 1; exit 0");
    let fail_after_1s = counted("sleep 1; exit 3");
    let sc = Scenario::new(
        "workloads",
        &format!(
            "\
seed: 10
duration: 8s
sites:
  lab: {{}}
nodes:
  - {{name: box, site: lab, profile: raspberry-pi-5-4gb}}
workloads:
  - {{name: never, nodes: [box], command: {forever}, restart: never}}
  - {{name: onfail, nodes: [box], command: {forever}, restart: on-failure, restartDelay: 300ms}}
  - {{name: always, nodes: [box], command: {forever}, restart: always, restartDelay: 300ms}}
  - {{name: term, nodes: [box], command: {forever}, restart: never}}
  - {{name: ok-once, nodes: [box], command: {ok_after_1s}, restart: on-failure, restartDelay: 300ms}}
  - {{name: fails, nodes: [box], command: {fail_after_1s}, restart: on-failure, restartDelay: 300ms}}
  - {{name: loops, nodes: [box], command: {ok_after_1s}, restart: always, restartDelay: 300ms}}
timeline:
  - {{at: 2s, kill: {{workload: never}}}}
  - {{at: 2s, kill: {{workload: onfail}}}}
  - {{at: 2s, kill: {{workload: always}}}}
  - {{at: 2s, kill: {{workload: term, signal: TERM}}}}
  - {{at: 5s, restart: {{workload: never}}}}
  - {{at: 5s, restart: {{workload: always}}}}
"
        ),
    );
    let run = Run::start(&sc);
    let fin = run.finish(Duration::from_secs(60));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );

    // What happened while the timeline played; the final stop is checked on its own below.
    let events = |w: &str| -> Vec<Value> {
        fin.workload_events(w)
            .into_iter()
            .filter(|e| e["kind"] != "stopped")
            .cloned()
            .collect()
    };
    let kinds = |ev: &[Value]| -> Vec<String> {
        ev.iter()
            .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let starts = |w: &str| line_count(&sc.workdir(w, "box").join("starts"));
    let check = |w: &str, want: &[&str], real_starts: usize| {
        let ev = events(w);
        assert_eq!(kinds(&ev), want, "events of workload `{w}`: {ev:#?}");
        assert_eq!(
            starts(w),
            real_starts,
            "times `{w}` really started (its own count)"
        );
        ev
    };

    // SIGKILL at 2s: `never` stays dead until the `restart` action at 5s brings it back.
    let ev = check("never", &["started", "signalled", "exited", "started"], 2);
    assert_eq!(ev[2]["signal"], 9, "`never` died of SIGKILL: {}", ev[2]);
    assert!(
        ev[2]["t"].as_f64() >= Some(2.0),
        "`never` exited before the kill: {}",
        ev[2]
    );
    assert!(
        ev[3]["t"].as_f64() >= Some(5.0),
        "`never` came back before the restart action: {}",
        ev[3]
    );

    // on-failure: a death by signal is a failure, so it comes back by itself.
    let ev = check(
        "onfail",
        &["started", "signalled", "exited", "restarting", "started"],
        2,
    );
    assert_eq!(ev[2]["signal"], 9, "`onfail` died of SIGKILL: {}", ev[2]);
    let gap = ev[4]["t"].as_f64().unwrap_or(0.0) - ev[2]["t"].as_f64().unwrap_or(0.0);
    assert!(
        gap >= 0.3,
        "`onfail` restarted {gap:.3}s after dying, before its 300ms restartDelay"
    );

    // always: back after the kill, and the restart action replaces the running instance.
    let ev = check(
        "always",
        &[
            "started",
            "signalled",
            "exited",
            "restarting",
            "started",
            "exited",
            "started",
        ],
        3,
    );
    assert_eq!(
        ev[5]["detail"], "restart",
        "the second exit is the restart action's: {}",
        ev[5]
    );
    assert!(
        ev[5]["t"].as_f64() >= Some(5.0),
        "restart action applied before 5s: {}",
        ev[5]
    );

    // A custom signal is delivered as such; `never` leaves the instance dead.
    let ev = check("term", &["started", "signalled", "exited"], 1);
    assert_eq!(ev[2]["signal"], 15, "`term` died of SIGTERM: {}", ev[2]);

    // on-failure and a clean exit: done for good.
    let ev = check("ok-once", &["started", "exited"], 1);
    assert_eq!(ev[1]["code"], 0, "`ok-once` exited cleanly: {}", ev[1]);

    // on-failure and exit 3, always and exit 0: restarted over and over, every exit recorded.
    for (w, code) in [("fails", 3), ("loops", 0)] {
        let ev = events(w);
        let k = kinds(&ev);
        let n_started = k.iter().filter(|k| *k == "started").count();
        assert!(
            n_started >= 3,
            "`{w}` (exits after 1s) should have restarted repeatedly in 8s: {k:?}"
        );
        assert_eq!(
            starts(w),
            n_started,
            "`{w}`: events and the workload's own count of starts differ"
        );
        for e in ev
            .iter()
            .filter(|e| e["kind"] == "exited" && e.get("detail").is_none())
        {
            assert_eq!(e["code"], code, "`{w}` exit: {e}");
        }
        let restarts = k.iter().filter(|k| *k == "restarting").count();
        assert!(
            restarts + 1 >= n_started,
            "`{w}`: every start after the first follows a `restarting`: {k:?}"
        );
    }
    assert_gone(&fin.run_id());
}

/// At the end of a run each workload gets SIGTERM, and SIGKILL after the grace period (3 s)
/// if it ignores it; the report records how each one ended.
#[test]
fn the_report_records_how_workloads_were_stopped_at_teardown() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let sc = Scenario::new(
        "stop",
        "\
seed: 11
duration: 2s
sites:
  lab: {}
nodes:
  - {name: box, site: lab, profile: raspberry-pi-5-4gb}
workloads:
  - {name: polite, nodes: [box], command: sleep 1000}
  # SIG_IGN survives exec: sleep ignores SIGTERM too.
  - {name: stubborn, nodes: [box], command: [sh, -c, \"trap '' TERM; exec sleep 1000\"]}
",
    );
    let fin = Run::start(&sc).finish(Duration::from_secs(60));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    let stop = |w: &str| -> Value {
        let ev = fin.workload_events(w);
        ev.iter()
            .find(|e| e["kind"] == "stopped")
            .map(|e| (*e).clone())
            .unwrap_or_else(|| panic!("no `stopped` event for `{w}` in the report: {ev:#?}"))
    };
    let (polite, stubborn) = (stop("polite"), stop("stubborn"));
    assert_eq!(polite["signal"], 15, "`polite` ended on SIGTERM: {polite}");
    assert_eq!(
        stubborn["signal"], 9,
        "`stubborn` ignored SIGTERM and was killed: {stubborn}"
    );
    let waited = stubborn["t"].as_f64().unwrap_or(0.0) - polite["t"].as_f64().unwrap_or(0.0);
    assert!(
        waited >= 2.5,
        "`stubborn` was killed {waited:.2}s after `polite` stopped, before the 3 s grace"
    );
    assert_gone(&fin.run_id());
}
