//! A node's hardware profile is in the kernel: its cgroup holds the CPU quota, memory limit
//! and task limit the profile asks for, a busy workload gets no more CPU than the quota, and
//! timeline `cpu`/`memory` actions change the limits live and their `for:` reverts restore them,
//! and `node-down` freeze stops the node's processes in the kernel (v1 freezer, v2
//! `cgroup.freeze`) until `node-up` thaws them. On cgroup v1 here; on v2 with real controllers in
//! the stock-kernel VM (tests/vm).

use std::time::{Duration, Instant};

use crate::common::*;

const MIB: u64 = 1 << 20;
/// How long CPU use is measured per phase.
const WINDOW: Duration = Duration::from_millis(1200);

/// The most CPU a cgroup with `quota`/`period` may have used over a window of `secs`: the
/// quota rate, plus up to two periods' worth at the window's edges, plus 5 %.
fn cpu_ceiling(quota: u64, period: u64, secs: f64) -> f64 {
    let rate = quota as f64 / period as f64;
    (rate * secs + 2.0 * quota as f64 / 1e6) * 1.05 / secs
}

#[test]
fn profile_limits_are_in_the_kernel_and_cpu_memory_actions_change_and_revert_them() {
    let _g = serial();
    if !privileged() {
        return;
    }
    // With the host speed fixed at 1.0 (see `edgesim()`), 2 cores at relative speed 0.1 are
    // 0.2 host CPUs: a quota of 20 ms per 100 ms period; 1 core is 10 ms.
    let sc = Scenario::new(
        "cgroups",
        "\
seed: 5
duration: 14s
profiles:
  tiny-board:
    arch: arm64
    cpu: {model: test-core, cores: 2, clockGHz: 1.0, relativeSpeed: 0.1}
    memory: {total: 1Gi, reserved: 256Mi}
    pids: 200
sites:
  lab: {}
nodes:
  - {name: box, site: lab, profile: tiny-board}
workloads:
  - {name: spin, nodes: [box], command: [sh, -c, 'while :; do :; done']}
timeline:
  - {at: 3s, for: 3s, cpu: {nodes: [box], cores: 1}}
  - {at: 7s, for: 3s, memory: {nodes: [box], limit: 256Mi}}
  - {at: 10.5s, node-down: {nodes: [box], mode: freeze}}
  - {at: 12s, node-up: {nodes: [box]}}
",
    );
    let mut run = Run::start(&sc);
    let t0 = run.timeline_started();
    let st = run.state();
    let cg = NodeCgroup::of(&st, "box");
    let profile_mem = Some(1024 * MIB - 256 * MIB);

    // Baseline: the profile's limits.
    assert_eq!(
        cg.cpu(),
        (Some(20_000), 100_000),
        "CPU quota/period from the profile"
    );
    assert_eq!(cg.memory(), profile_mem, "memory limit = total − reserved");
    if let Some(memsw) = cg.memory_and_swap() {
        assert_eq!(
            memsw, profile_mem,
            "no swap beyond the memory limit (memsw = limit)"
        );
    }
    assert_eq!(cg.pids_max(), Some(200), "task limit from the profile");
    let busy = cg.cpu_rate(WINDOW);
    assert_within("profile limits", t0, Duration::from_secs(3));
    let ceiling = cpu_ceiling(20_000, 100_000, WINDOW.as_secs_f64());
    assert!(
        busy <= ceiling,
        "a busy loop in the node used {busy:.3} CPUs, more than its quota allows ({ceiling:.3})"
    );
    assert!(
        busy > 0.02,
        "the busy workload used only {busy:.3} CPUs: is it running in the node's cgroup?"
    );

    // `cpu: {cores: 1}`: half the quota, memory untouched.
    run.action("cpu", false);
    let t = Instant::now();
    assert_eq!(
        cg.cpu(),
        (Some(10_000), 100_000),
        "CPU quota after `cpu: {{cores: 1}}`"
    );
    assert_eq!(
        cg.memory(),
        profile_mem,
        "memory limit unchanged by a cpu action"
    );
    let throttled = cg.cpu_rate(WINDOW);
    assert_within("cpu pressure", t, Duration::from_secs(3));
    let ceiling_1 = cpu_ceiling(10_000, 100_000, WINDOW.as_secs_f64());
    assert!(
        throttled <= ceiling_1,
        "after `cpu: {{cores: 1}}` the busy loop used {throttled:.3} CPUs, more than the new quota allows ({ceiling_1:.3})"
    );

    run.action("cpu", true);
    assert_eq!(
        cg.cpu(),
        (Some(20_000), 100_000),
        "CPU quota restored by the `for:` revert"
    );

    run.action("memory", false);
    assert_eq!(
        cg.memory(),
        Some(256 * MIB),
        "memory limit after `memory: {{limit: 256Mi}}`"
    );
    if let Some(memsw) = cg.memory_and_swap() {
        assert_eq!(memsw, Some(256 * MIB), "memsw follows the memory limit");
    }
    assert_eq!(
        cg.cpu(),
        (Some(20_000), 100_000),
        "CPU quota unchanged by a memory action"
    );
    assert_eq!(
        cg.pids_max(),
        Some(200),
        "task limit unchanged by a memory action"
    );

    run.action("memory", true);
    assert_eq!(
        cg.memory(),
        profile_mem,
        "memory limit restored by the `for:` revert"
    );
    if let Some(memsw) = cg.memory_and_swap() {
        assert_eq!(memsw, profile_mem, "memsw restored with the memory limit");
    }

    // `node-down` freeze: the kernel holds every task, and the busy loop uses no CPU at all.
    run.action("node-down", false);
    let t = Instant::now();
    assert!(
        cg.frozen(),
        "node-down freeze: the kernel does not report the cgroup frozen"
    );
    let frozen = cg.cpu_rate(Duration::from_millis(500));
    assert_within("freeze", t, Duration::from_millis(1400));
    assert!(
        frozen < 0.005,
        "a frozen node's busy loop used {frozen:.4} CPUs"
    );
    run.action("node-up", false);
    assert!(!cg.frozen(), "node-up: the cgroup is still frozen");
    let thawed = cg.cpu_rate(Duration::from_millis(500));
    assert!(
        thawed > 0.02,
        "after node-up the busy loop used only {thawed:.3} CPUs: not thawed?"
    );

    let fin = run.finish(Duration::from_secs(30));
    assert_eq!(
        fin.status.code(),
        Some(0),
        "the run failed: {}\n{}",
        fin.report,
        fin.stderr
    );
    eprintln!("busy loop: {busy:.3} CPUs at quota 0.2, {throttled:.3} CPUs at quota 0.1");
    assert_gone(&fin.run_id());
}
