//! Plan-building tests: expansion, addressing, path composition, timeline semantics.

use std::path::Path;
use std::time::Duration;

use super::plan::{ActionKind, LinkParams, Plan};
use super::validate::{Capabilities, Overrides, build, parse};
use crate::profile::ProfileSet;

fn plan_with(text: &str, caps: &Capabilities) -> Result<Plan, String> {
    let f = Path::new("t.yaml");
    let sc = parse(f, text).map_err(|d| d.to_string())?;
    build(
        f,
        text,
        &sc,
        ProfileSet::builtin().expect("built-in profiles"),
        caps,
        &Overrides::default(),
    )
    .map(|v| v.plan)
    .map_err(|d| d.to_string())
}

fn plan(text: &str) -> Plan {
    plan_with(text, &Capabilities::all("netns")).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> String {
    plan_with(text, &Capabilities::all("netns")).expect_err("should be rejected")
}

const HEAD: &str = "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: t}\nspec:\n  seed: 5\n  duration: 60s\n";

#[test]
fn expands_counts_and_allocates_addresses_per_site() {
    let p = plan(&format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud}}}}\n  nodes:\n    - {{name: sink, site: cloud, profile: cloud-small}}\n    - {{name: gw, count: 300, site: edge, profile: raspberry-pi-5-4gb}}\n"
    ));
    assert_eq!(p.nodes.len(), 301);
    assert_eq!(p.nodes[1].name, "gw-1");
    assert_eq!(p.nodes[300].name, "gw-300");
    assert_eq!(p.sites[0].subnet.to_string(), "10.90.0.0/24");
    // 300 nodes need a /23, aligned.
    assert_eq!(p.sites[1].subnet.to_string(), "10.90.2.0/23");
    assert_eq!(p.sites[1].gateway.to_string(), "10.90.2.1");
    assert_eq!(p.nodes[1].addr.to_string(), "10.90.2.2");
    assert_eq!(p.nodes[300].addr.to_string(), "10.90.3.45");
    assert_eq!(p.links[0].name, "edge-uplink");
}

#[test]
fn a_site_holds_as_many_nodes_as_its_bridge_has_ports() {
    let site = |mode: &str, counts: &[u32]| {
        let mut t = format!(
            "{HEAD}  impairment: {mode}\n  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, loss: 1%}}}}\n  nodes:\n"
        );
        for (i, c) in counts.iter().enumerate() {
            t.push_str(&format!(
                "    - {{name: n{i}, count: {c}, site: edge, profile: raspberry-pi-5-4gb}}\n"
            ));
        }
        t
    };
    // Kernel shaping: 1023 bridge ports, all for nodes, whatever the entries.
    assert_eq!(plan(&site("kernel", &[1000, 23])).nodes.len(), 1023);
    let e = errors(&site("kernel", &[1000, 24]));
    assert!(
        e.contains("site `edge` has 1024 nodes; a site holds at most 1023"),
        "{e}"
    );
    // The error points at the count of the entry that goes over.
    assert!(e.contains("t.yaml:13:"), "{e}");
    // With the userspace emulator one port goes to it.
    assert_eq!(plan(&site("userspace", &[1022])).nodes.len(), 1022);
    let e = errors(&site("userspace", &[1023]));
    assert!(
        e.contains("at most 1022") && e.contains("userspace link emulator"),
        "{e}"
    );
    // Other sites do not count.
    let two = plan(&format!(
        "{HEAD}  sites:\n    a: {{}}\n    b: {{}}\n  nodes:\n    - {{name: x, count: 1023, site: a, profile: raspberry-pi-5-4gb}}\n    - {{name: y, count: 1023, site: b, profile: raspberry-pi-5-4gb}}\n"
    ));
    assert_eq!(two.nodes.len(), 2046);
}

#[test]
fn inline_profiles_and_per_direction_overrides() {
    let p = plan(&format!(
        "{HEAD}  profiles:\n    tiny: {{arch: arm64, cpu: {{model: A53, cores: 1, clockGHz: 1.2, relativeSpeed: 0.3}}, memory: {{total: 512Mi}}}}\n  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, rate: 10mbit, loss: 1%, up: {{rate: 2mbit}}}}}}\n  nodes:\n    - {{name: a, site: edge, profile: tiny}}\n"
    ));
    assert_eq!(p.nodes[0].profile.cpu.cores, 1);
    let l = &p.links[0];
    assert_eq!(l.up.rate, Some(2_000_000));
    assert_eq!(l.down.rate, Some(10_000_000));
    assert!((l.up.loss - 0.01).abs() < 1e-12 && (l.down.loss - 0.01).abs() < 1e-12);
}

#[test]
fn paths_compose_along_links() {
    let p = plan(&format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    a: {{uplink: {{site: cloud, delay: 10ms, loss: 10%, rate: 50mbit}}}}\n    b: {{uplink: {{site: cloud, delay: 20ms, loss: 10%, rate: 20mbit}}}}\n    island: {{}}\n  nodes:\n    - {{name: n, site: a, profile: cloud-small}}\n"
    ));
    let links = p.baseline_links();
    let ab = p
        .path_params(&links, 1, 2)
        .expect("a reaches b through the cloud");
    assert_eq!(ab.delay, Some(Duration::from_millis(30)));
    assert!(
        (ab.loss - 0.19).abs() < 1e-9,
        "losses compound: {}",
        ab.loss
    );
    assert_eq!(ab.rate, Some(20_000_000));
    assert_eq!(
        p.path_params(&links, 1, 3),
        None,
        "no link reaches the island"
    );
    assert_eq!(p.path_params(&links, 2, 2), Some(LinkParams::default()));
}

#[test]
fn for_reverts_only_the_fields_it_set() {
    let p = plan(&format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, rate: 10mbit}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n  timeline:\n    - {{at: 10s, for: 10s, impair: {{link: edge-uplink, loss: 50%}}}}\n    - {{at: 15s, impair: {{link: edge-uplink, rate: 1mbit}}}}\n"
    ));
    let impairs: Vec<(Duration, LinkParams)> = p
        .actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::Impair { up, .. } => Some((a.at, *up)),
            _ => None,
        })
        .collect();
    assert_eq!(impairs.len(), 3);
    assert_eq!(impairs[2].0, Duration::from_secs(20));
    // The revert at 20s restores the loss but keeps the rate set at 15s.
    assert_eq!(impairs[2].1.loss, 0.0);
    assert_eq!(impairs[2].1.rate, Some(1_000_000));
}

#[test]
fn seeded_pick_is_stable_and_depends_on_the_seed() {
    let text = |seed: u64| {
        format!(
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {{name: t}}\nspec:\n  seed: {seed}\n  duration: 60s\n  sites: {{s: {{}}}}\n  nodes:\n    - {{name: n, count: 20, site: s, profile: cloud-small}}\n  timeline:\n    - {{at: 1s, partition: {{isolate: [all], pick: 3}}}}\n"
        )
    };
    let picked = |p: &Plan| match &p.actions[0].kind {
        ActionKind::Partition { blocks, .. } => blocks[0].from.clone(),
        _ => unreachable!(),
    };
    let a = picked(&plan(&text(1)));
    assert_eq!(a.len(), 3);
    assert_eq!(a, picked(&plan(&text(1))), "same seed, same choice");
    let others: Vec<Vec<usize>> = (2..6).map(|s| picked(&plan(&text(s)))).collect();
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds should choose differently"
    );
}

#[test]
fn one_way_partitions_block_one_direction() {
    let p = plan(&format!(
        "{HEAD}  sites: {{s: {{}}}}\n  nodes:\n    - {{name: a, site: s, profile: cloud-small}}\n    - {{name: b, site: s, profile: cloud-small}}\n  timeline:\n    - {{at: 1s, for: 1s, partition: {{oneWay: true, between: [[a], [b]]}}}}\n"
    ));
    match &p.actions[0].kind {
        ActionKind::Partition { blocks, .. } => {
            assert_eq!(blocks.len(), 1);
            assert_eq!(
                (blocks[0].from.clone(), blocks[0].to.clone()),
                (vec![0], vec![1])
            );
        }
        k => panic!("unexpected {k:?}"),
    }
    assert!(matches!(p.actions[1].kind, ActionKind::Heal { .. }) && p.actions[1].revert);
}

#[test]
fn delay_is_refused_where_the_target_cannot_do_it() {
    let mut caps = Capabilities::all("netns");
    caps.set(
        crate::caps::Feature::Delay,
        crate::caps::Support::Emulated,
        "linkem",
    );
    caps.netem_hint = "no netem here".into();
    let e = plan_with(
        &format!("{HEAD}  impairment: kernel\n  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, delay: 30ms}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n"),
        &caps,
    )
    .expect_err("delay without netem");
    assert!(
        e.contains("link delay needs netem, which this kernel lacks"),
        "{e}"
    );
    assert!(e.contains("t.yaml:10:41"), "points at the delay: {e}");
    assert!(e.contains("no netem here"), "{e}");
    // `auto` (the default) takes the userspace emulator instead.
    let p = plan_with(
        &format!("{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, delay: 30ms}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n"),
        &caps,
    )
    .expect("auto falls back to the emulator");
    assert_eq!(p.mechanism, super::plan::Mechanism::Userspace);
    assert!(p.uses_emulator());
}

#[test]
fn misspelt_selectors_and_sites_get_suggestions() {
    let e = errors(&format!(
        "{HEAD}  sites: {{factory: {{}}}}\n  nodes:\n    - {{name: gw, count: 2, site: factory, profile: cloud-small}}\n  timeline:\n    - {{at: 1s, node-down: {{nodes: [factory]}}}}\n    - {{at: 2s, node-down: {{nodes: [site/factroy]}}}}\n    - {{at: 3s, node-down: {{nodes: [\"xx-*\"]}}}}\n"
    ));
    assert!(
        e.contains("`factory` is a site: write `site/factory`"),
        "{e}"
    );
    assert!(e.contains("did you mean `factory`?"), "{e}");
    assert!(e.contains("`xx-*` in node-down selects no node"), "{e}");
}

/// Validates `text` with every capability, keeping the warnings of a valid scenario.
fn validated(text: &str) -> Result<super::Validated, super::Diagnostics> {
    let f = Path::new("t.yaml");
    let sc = parse(f, text)?;
    build(
        f,
        text,
        &sc,
        ProfileSet::builtin().expect("built-in profiles"),
        &Capabilities::all("netns"),
        &Overrides::default(),
    )
}

fn with_workloads(workloads: &str) -> String {
    format!(
        "{HEAD}  sites: {{s: {{}}}}\n  nodes:\n    - {{name: gw, count: 3, site: s, profile: cloud-small}}\n  workloads:\n{workloads}"
    )
}

#[test]
fn workloads_select_nodes_with_nodes_without_warnings() {
    let v = validated(&with_workloads(
        "    - {name: w, nodes: [gw-2, gw-3], command: sleep 1}\n",
    ))
    .unwrap_or_else(|d| panic!("{d}"));
    assert!(v.warnings.is_empty(), "{}", v.warnings);
    assert_eq!(v.plan.workloads[0].nodes, vec![1, 2]);
}

#[test]
fn the_deprecated_key_on_still_selects_nodes_with_a_warning() {
    let v = validated(&with_workloads(
        "    - {name: w, on: [gw-2, gw-3], command: sleep 1}\n    - name: v\n      on:\n        - gw-1\n      command: sleep 1\n",
    ))
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(v.plan.workloads[0].nodes, vec![1, 2]);
    assert_eq!(v.plan.workloads[1].nodes, vec![0]);
    let w = &v.warnings.items;
    assert_eq!(w.len(), 2, "{}", v.warnings);
    assert!(
        w.iter()
            .all(|d| d.severity == super::diag::Severity::Warning)
    );
    assert_eq!(
        w[0].message,
        "workload `w`: the key `on` is deprecated; write `nodes`"
    );
    // Under the key itself, in flow and in block style.
    assert_eq!((w[0].pos.line, w[0].pos.column, w[0].width), (11, 17, 2));
    assert_eq!((w[1].pos.line, w[1].pos.column, w[1].width), (13, 7, 2));
    let text = v.warnings.to_string();
    assert!(text.starts_with("warning: workload `w`"), "{text}");
    assert!(text.contains("read the key `on` as `true`"), "{text}");
}

#[test]
fn on_and_nodes_together_or_neither_are_refused() {
    let d = validated(&with_workloads(
        "    - {name: w, nodes: [gw-1], on: [gw-1], command: sleep 1}\n    - {name: x, command: sleep 1}\n    - {name: y, on: [gw-1], command: sleep 1}\n",
    ))
    .expect_err("should be rejected");
    assert_eq!(d.errors(), 2, "{d}");
    assert_eq!(
        d.warnings(),
        1,
        "the warning of `y` is shown with the errors: {d}"
    );
    let e = d.to_string();
    assert!(
        e.contains("error: workload `w` gives both `nodes` and `on`"),
        "{e}"
    );
    assert!(e.contains("error: workload `x` has no `nodes`"), "{e}");
    assert!(e.contains("warning: workload `y`"), "{e}");
}

#[test]
fn cpu_beyond_the_boards_cores_is_refused() {
    let e = errors(&format!(
        "{HEAD}  sites: {{s: {{}}}}\n  nodes:\n    - {{name: pi, site: s, profile: raspberry-pi-5-4gb}}\n  timeline:\n    - {{at: 1s, cpu: {{nodes: [pi], cores: 6}}}}\n"
    ));
    assert!(e.contains("has 4 cores"), "{e}");
}

#[test]
fn flap_schedules_are_seeded_and_end_up() {
    let text = |seed: u64| {
        format!(
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {{name: t}}\nspec:\n  seed: {seed}\n  duration: 60s\n  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, loss: 1%}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n  timeline:\n    - {{at: 10s, for: 20s, flap: {{link: edge-uplink, up: exp(2s), down: \"uniform(500ms, 1s)\"}}}}\n    - {{at: 15s, impair: {{link: edge-uplink, rate: 1mbit}}}}\n"
        )
    };
    let cuts = |p: &Plan| -> Vec<(Duration, bool, Option<u64>, f64)> {
        p.actions
            .iter()
            .filter_map(|a| match &a.kind {
                ActionKind::Impair { up, .. } => Some((a.at, up.cut, up.rate, up.loss)),
                _ => None,
            })
            .collect()
    };
    let a = cuts(&plan(&text(9)));
    assert_eq!(a, cuts(&plan(&text(9))), "same seed, same schedule");
    assert_ne!(a, cuts(&plan(&text(10))), "another seed, another schedule");
    let flaps: Vec<_> = a
        .iter()
        .filter(|x| x.0 != Duration::from_secs(15))
        .collect();
    assert!(flaps.len() >= 3, "some flapping in 20s: {a:?}");
    for w in flaps.windows(2) {
        assert_ne!(w[0].1, w[1].1, "down and up alternate: {a:?}");
    }
    let last = flaps.last().expect("end");
    assert_eq!(
        (last.0, last.1),
        (Duration::from_secs(30), false),
        "up again at the end"
    );
    assert!(
        a.iter()
            .all(|x| x.0 >= Duration::from_secs(10) && x.0 <= Duration::from_secs(30))
    );
    // Other fields survive the flap: the loss stays, the rate set at 15s stays.
    assert!(a.iter().all(|x| (x.3 - 0.01).abs() < 1e-12));
    assert_eq!(last.2, Some(1_000_000));
    // Cuts are enforced per path.
    let p = plan(&text(9));
    let mut links = p.baseline_links();
    links[0].0.cut = true;
    assert!(p.path_params(&links, 1, 0).expect("path").cut);
}

#[test]
fn flap_needs_for_and_owns_the_link() {
    let base = "  sites:\n    cloud: {}\n    edge: {uplink: {site: cloud}}\n  nodes:\n    - {name: a, site: edge, profile: cloud-small}\n  timeline:\n";
    let e = errors(&format!(
        "{HEAD}{base}    - {{at: 10s, flap: {{link: edge-uplink, up: 2s, down: 1s}}}}\n"
    ));
    assert!(e.contains("`flap` needs `for`"), "{e}");
    let e = errors(&format!(
        "{HEAD}{base}    - {{at: 10s, for: 10s, flap: {{link: edge-uplink, up: 2s, down: 1s}}}}\n    - {{at: 12s, for: 1s, flap: {{link: edge-uplink, up: 1s, down: 1s}}}}\n"
    ));
    assert!(e.contains("while the entry at 10s still holds it"), "{e}");
    let e = errors(&format!(
        "{HEAD}{base}    - {{at: 10s, for: 5s, flap: {{link: edge-uplink, up: gauss(2s), down: 1s}}}}\n"
    ));
    assert!(e.contains("invalid duration distribution"), "{e}");
}

#[test]
fn traces_parse_and_replay() {
    use super::validate::parse_trace;
    let rows = parse_trace(
        "# a comment\ntime,rate,delay,loss\n0,10mbit,40ms,1%\n0.5s,2mbit,,\n1,,90ms,0%\n",
    )
    .expect("valid trace");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].t, Duration::from_millis(500));
    assert_eq!(rows[1].fields, vec!["rate"]);
    assert_eq!(rows[2].params.delay, Some(Duration::from_millis(90)));
    assert!(
        parse_trace("time,rate\n1,1mbit\n")
            .unwrap_err()
            .contains("time 0")
    );
    assert!(
        parse_trace("time,rate\n0,1mbit\n0,2mbit\n")
            .unwrap_err()
            .contains("increase")
    );
    assert!(
        parse_trace("time,speed\n0,1\n")
            .unwrap_err()
            .contains("unknown column `speed`")
    );
    // Bare seconds beyond what a Duration holds are refused, not a panic (found by fuzzing).
    assert!(
        parse_trace("time,rate\n0,1mbit\n22222222222222222222222222222222,2mbit\n")
            .unwrap_err()
            .contains("line 3: time `22222222222222222222222222222222` is out of range")
    );
    assert!(
        parse_trace("time,rate\n0,fast\n")
            .unwrap_err()
            .contains("line 2")
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tr.csv"),
        "time,rate,loss\n0,10mbit,1%\n1s,5mbit,2%\n",
    )
    .expect("write");
    let text = format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, rate: 50mbit}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n  timeline:\n    - {{at: 10s, for: 5s, trace: {{link: edge-uplink, file: tr.csv, repeat: true}}}}\n"
    );
    let file = dir.path().join("s.yaml");
    let sc = parse(&file, &text).expect("parse");
    let p = build(
        &file,
        &text,
        &sc,
        ProfileSet::builtin().expect("profiles"),
        &Capabilities::all("netns"),
        &Overrides::default(),
    )
    .expect("valid")
    .plan;
    let steps: Vec<(Duration, Option<u64>)> = p
        .actions
        .iter()
        .filter_map(|a| match &a.kind {
            ActionKind::Impair { up, .. } => Some((a.at, up.rate)),
            _ => None,
        })
        .collect();
    // Rows at 10, 11, then repeated every 2s (the period is the last time + one step), then
    // restored at 15s.
    assert_eq!(
        steps,
        vec![
            (Duration::from_secs(10), Some(10_000_000)),
            (Duration::from_secs(11), Some(5_000_000)),
            (Duration::from_secs(12), Some(10_000_000)),
            (Duration::from_secs(13), Some(5_000_000)),
            (Duration::from_secs(14), Some(10_000_000)),
            (Duration::from_secs(15), Some(50_000_000)),
        ]
    );
}

#[test]
fn empty_files_and_second_documents_say_so_in_the_users_words() {
    for text in ["", "\n\n", "# nothing yet\n", "---\n", "---\n...\n"] {
        let e = errors(text);
        assert!(
            e.contains("the file is empty: a scenario file holds one Scenario document"),
            "{text:?}: {e}"
        );
    }
    let one = format!(
        "{HEAD}  sites: {{a: {{}}}}\n  nodes:\n    - {{name: n, site: a, profile: cloud-small}}\n"
    );
    let e = errors(&format!("{one}---\n{one}"));
    assert!(
        e.contains("a second YAML document starts here: one scenario per file"),
        "{e}"
    );
    assert!(
        !e.contains("from_str_multiple"),
        "library wording leaked: {e}"
    );
    // The first document is 9 lines, the separator line 10: the second starts on line 11.
    assert!(e.contains("t.yaml:11:"), "{e}");
}

#[test]
fn effects_pair_each_fault_with_what_ends_it() {
    use crate::report::{Change, Lane, effects};
    let p = plan(&format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, rate: 10mbit}}}}\n  nodes:\n    - {{name: a, site: edge, profile: raspberry-pi-5-4gb}}\n    - {{name: c, site: cloud, profile: cloud-small}}\n  workloads:\n    - {{name: w, nodes: [a], command: sleep 100}}\n  timeline:\n    - {{at: 1s, for: 2s, partition: {{name: cut, between: [[a], [c]]}}}}\n    - {{at: 10s, for: 10s, impair: {{link: edge-uplink, loss: 50%}}}}\n    - {{at: 15s, impair: {{link: edge-uplink, rate: 1mbit}}}}\n    - {{at: 30s, for: 5s, node-down: {{nodes: [a]}}}}\n    - {{at: 40s, for: 5s, cpu: {{nodes: [a], cores: 1}}}}\n    - {{at: 50s, kill: {{workload: w}}}}\n"
    ));
    let got: Vec<(u64, String)> = p
        .actions
        .iter()
        .flat_map(|a| {
            effects(&p, a).into_iter().map(|e| {
                let lane = match e.lane {
                    Lane::Partition { partition } => format!("partition {partition}"),
                    Lane::Link { link } => format!("link {link}"),
                    Lane::Node { node, aspect } => format!("node {node} {aspect:?}"),
                    Lane::Workload { workload, node } => format!("workload {workload}@{node}"),
                };
                (a.at.as_secs(), format!("{lane} {:?}", e.change))
            })
        })
        .collect();
    let want: Vec<(u64, String)> = [
        (1, "partition cut Start"),
        (3, "partition cut End"),
        (10, "link edge-uplink Start"),
        // A second setting starts a new band; the 20s restore of the loss leaves the rate
        // set at 15s, so the link is still impaired (a new band), never back to baseline.
        (15, "link edge-uplink Start"),
        (20, "link edge-uplink Start"),
        (30, "node a Down Start"),
        (35, "node a Down End"),
        (40, "node a Cpu Start"),
        (45, "node a Cpu End"),
        (50, "workload w@a Instant"),
    ]
    .into_iter()
    .map(|(t, s)| (t, s.to_string()))
    .collect();
    assert_eq!(got, want);

    // A `for:` impairment alone ends where its window restores the baseline.
    let p = plan(&format!(
        "{HEAD}  sites:\n    cloud: {{}}\n    edge: {{uplink: {{site: cloud, rate: 10mbit}}}}\n  nodes:\n    - {{name: a, site: edge, profile: cloud-small}}\n  timeline:\n    - {{at: 10s, for: 10s, impair: {{link: edge-uplink, loss: 50%}}}}\n"
    ));
    let changes: Vec<Change> = p
        .actions
        .iter()
        .flat_map(|a| effects(&p, a))
        .map(|e| e.change)
        .collect();
    assert_eq!(changes, [Change::Start, Change::End]);
}
