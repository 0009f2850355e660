//! A synthetic scenario much larger than any shipped one, for the parse and plan benches:
//! `sites` edge sites around a cloud (each with an uplink), `nodes_per_site` nodes each,
//! `events` timeline entries cycling through every action kind that validates without
//! workloads (partition with `for`, heal, impair loss/rate with `for`, cpu, memory,
//! node-down with `for`), one ping probe and one assertion per probe.
//!
//! Entries are 100 ms apart and every `for` lasts 50 ms, so no two overlap and the scenario
//! is valid: the plan bench measures the full validation path, not an early error exit.

use std::fmt::Write;

pub struct Synth {
    pub sites: usize,
    pub nodes_per_site: usize,
    pub events: usize,
    pub probes: usize,
}

impl Synth {
    /// The default "large" case: 8 sites × 100 nodes, 1000 timeline entries, 200 probes.
    pub const LARGE: Synth = Synth {
        sites: 8,
        nodes_per_site: 100,
        events: 1000,
        probes: 200,
    };

    pub fn yaml(&self) -> String {
        let mut s = String::with_capacity(64 * 1024);
        let duration_ms = (self.events as u64 + 2) * 100;
        let _ = writeln!(
            s,
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: synth-large\n  \
             description: synthetic scenario for the parse/plan benches\nspec:\n  seed: 42\n  \
             duration: {duration_ms}ms\n  network: {{pool: 10.64.0.0/12}}\n  sites:\n    cloud: {{}}"
        );
        for i in 0..self.sites {
            let _ = writeln!(
                s,
                "    site-{i}: {{uplink: {{site: cloud, rate: {}mbit, loss: 0.{}%}}}}",
                10 + i * 5,
                i % 10
            );
        }
        s.push_str("  nodes:\n");
        for i in 0..self.sites {
            let profile = if i % 2 == 0 {
                "raspberry-pi-5-4gb"
            } else {
                "raspberry-pi-5-8gb"
            };
            let _ = writeln!(
                s,
                "    - {{name: n{i}, count: {}, site: site-{i}, profile: {profile}, labels: {{ring: r{}}}}}",
                self.nodes_per_site,
                i % 3
            );
        }
        s.push_str("    - {name: sink, site: cloud, profile: cloud-small}\n");
        s.push_str("  timeline:\n");
        for e in 0..self.events {
            let at = (e as u64 + 1) * 100;
            let site = e % self.sites;
            let node = format!("n{site}-{}", e % self.nodes_per_site + 1);
            let line = match e % 7 {
                0 => format!(
                    "{{at: {at}ms, for: 50ms, partition: {{name: p{e}, between: [[site/site-{site}], [site/cloud]]}}}}"
                ),
                1 => format!(
                    "{{at: {at}ms, partition: {{name: q{e}, isolate: [\"n{site}-*\"], pick: 3}}}}"
                ),
                2 => format!("{{at: {at}ms, heal: {{name: q{}}}}}", e - 1),
                3 => format!(
                    "{{at: {at}ms, for: 50ms, impair: {{link: site-{site}-uplink, loss: {}%, rate: {}mbit}}}}",
                    e % 20,
                    1 + e % 50
                ),
                4 => format!("{{at: {at}ms, for: 50ms, cpu: {{nodes: [{node}], percent: 50%}}}}"),
                5 => {
                    format!("{{at: {at}ms, for: 50ms, memory: {{nodes: [{node}], limit: 512Mi}}}}")
                }
                _ => format!(
                    "{{at: {at}ms, for: 50ms, node-down: {{nodes: [{node}], mode: isolate}}}}"
                ),
            };
            let _ = writeln!(s, "    - {line}");
        }
        s.push_str("  probes:\n");
        for p in 0..self.probes {
            let from = format!("n{}-{}", p % self.sites, p % self.nodes_per_site + 1);
            let to = format!(
                "n{}-{}",
                (p + 1) % self.sites,
                (p * 7) % self.nodes_per_site + 1
            );
            let _ = writeln!(
                s,
                "    - {{name: pr{p}, from: {from}, ping: {to}, every: 500ms}}"
            );
        }
        s.push_str("  assertions:\n");
        for p in 0..self.probes {
            let _ = writeln!(
                s,
                "    - {{name: a{p}, probe: pr{p}, during: 1s..end, expect: \"success_rate >= 10%\"}}"
            );
        }
        s
    }
}
