//! Link impairments in userspace: one linkem relay per site, between the site's bridge and its
//! gateway.
//!
//! ```text
//!   nodes ── bridge s<i> ── p<i> ⇄ q<i> ══[linkem relay "site-<name>"]══ g<i> ⇄ w<i> (gateway) ── routing
//! ```
//! Every packet entering a site crosses the relay from `g` to `q`, so the relay's `b → a`
//! direction holds one rule per other site, keyed by the source subnet, carrying that path's
//! composed impairment (the same path model as the kernel mechanism). Packets leaving a site
//! pass untouched (they are impaired where they enter their destination). ARP and other
//! non-IPv4 frames match no rule and pass, so a cut link never breaks neighbour discovery.
//! Partitions stay in nftables, where they also cover traffic within a site.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::fabric::Fabric;
use crate::host::{HostError, Result};
use crate::linkem::{
    self, DecisionLog, Dir, DirectionConfig, Loss, Relay, RelayConfig, RelayStats, Rule,
};
use crate::scenario::Plan;
use crate::scenario::plan::LinkParams;

/// Where the relays write captures and decision logs, when asked.
#[derive(Debug, Clone, Default)]
pub struct EmulatorOptions {
    pub capture_dir: Option<PathBuf>,
    pub decision_log_dir: Option<PathBuf>,
    /// Keep each relay's io thread polling this long after a packet instead of 50 µs, at
    /// normal priority. Takes the scheduler's wake-up out of the path (on a VM most of what a
    /// relay adds to a round trip) at the cost of a CPU per busy relay.
    pub busy_poll: Option<Duration>,
}

pub struct Emulator {
    relays: Vec<Arc<Relay>>,
    /// Rules in force per site (to skip updates that change nothing).
    rules: Vec<DirectionConfig>,
}

/// linkem's impairment for a path's parameters.
pub fn impairment(p: &LinkParams) -> linkem::Impairment {
    use crate::scenario::model::Distribution as D;
    let loss = if let Some(ge) = p.gilbert_elliott {
        Loss::GilbertElliott {
            p: ge.p,
            r: ge.r,
            loss_in_bad: ge.loss_in_bad,
            loss_in_good: ge.loss_in_good,
        }
    } else if p.loss > 0.0 {
        Loss::Random {
            probability: p.loss,
            correlation: p.loss_correlation,
        }
    } else {
        Loss::None
    };
    linkem::Impairment {
        delay: p.delay.unwrap_or(Duration::ZERO),
        jitter: p.jitter.unwrap_or(Duration::ZERO),
        distribution: match p.distribution {
            None | Some(D::Uniform) => linkem::Distribution::Uniform,
            Some(D::Normal) => linkem::Distribution::Normal,
            Some(D::Pareto) => linkem::Distribution::Pareto,
            Some(D::Paretonormal) => linkem::Distribution::ParetoNormal,
        },
        delay_correlation: p.correlation,
        loss,
        duplicate: p.duplicate,
        corrupt: p.corrupt,
        reorder: p.reorder,
        gap: p.reorder_gap,
        rate: p.rate,
        limit: p.limit.unwrap_or(1000),
        blocked: p.cut,
        ..linkem::Impairment::default()
    }
}

/// The rules of the relay of site `d` for a link state: one per other site with an impaired
/// path to `d`. Sites with no path at all are left to the firewall's `no-path` rules.
pub fn rules_for(plan: &Plan, links: &[(LinkParams, LinkParams)], d: usize) -> DirectionConfig {
    let mut rules = Vec::new();
    for s in 0..plan.sites.len() {
        if s == d {
            continue;
        }
        let Some(p) = plan.path_params(links, s, d) else {
            continue;
        };
        if p.is_clear() {
            continue;
        }
        rules.push(Rule {
            // Stable per path: names the rule's random stream and its statistics.
            name: format!("from-{}", plan.sites[s].name),
            src: Some(plan.sites[s].subnet),
            dst: None,
            imp: impairment(&p),
        });
    }
    DirectionConfig { rules }
}

impl Emulator {
    /// Starts one relay per site with the rules for `links`.
    pub fn start(
        plan: &Plan,
        fabric: &Fabric,
        links: &[(LinkParams, LinkParams)],
        opts: &EmulatorOptions,
    ) -> Result<Emulator> {
        let mut relays = Vec::with_capacity(plan.sites.len());
        let mut rules = Vec::with_capacity(plan.sites.len());
        for (i, site) in plan.sites.iter().enumerate() {
            let name = format!("site-{}", site.name);
            let ns = fabric.fabric_fd.try_clone().map_err(|e| {
                HostError::io(
                    "duplicating the namespace handle of",
                    &fabric.names.fabric,
                    e,
                )
            })?;
            let mut cfg = RelayConfig::new(
                &name,
                ns,
                &fabric.names.fabric,
                format!("q{i}"),
                format!("g{i}"),
                plan.seed,
            );
            let r = rules_for(plan, links, i);
            cfg.b_to_a = r.clone();
            cfg.pcap = opts.capture_dir.clone();
            if let Some(spin) = opts.busy_poll {
                cfg.timing.rx_spin = spin;
                // A real-time thread that rarely sleeps meets real-time throttling (the kernel
                // stops it for 50 ms of every second): keep it at normal priority.
                cfg.timing.realtime_io = false;
            }
            if let Some(d) = &opts.decision_log_dir {
                cfg.decision_log = DecisionLog::File(d.join(format!("{name}.decisions.jsonl")));
            }
            let relay = Relay::start(cfg).map_err(|e| {
                HostError::other(
                    "starting the link emulator for",
                    name.clone(),
                    e.to_string(),
                )
            })?;
            relays.push(Arc::new(relay));
            rules.push(r);
        }
        Ok(Emulator { relays, rules })
    }

    /// Makes every relay's rules match `links`; relays whose rules do not change are left
    /// alone (their queues and random streams continue).
    pub fn update(&mut self, plan: &Plan, links: &[(LinkParams, LinkParams)]) -> Result<()> {
        for (i, relay) in self.relays.iter().enumerate() {
            let r = rules_for(plan, links, i);
            if r != self.rules[i] {
                relay.update(Dir::BToA, r.clone()).map_err(|e| {
                    HostError::other(
                        "updating the link emulator of site",
                        plan.sites[i].name.clone(),
                        e.to_string(),
                    )
                })?;
                self.rules[i] = r;
            }
        }
        Ok(())
    }

    /// A function returning the relays' statistics, usable from any thread (metrics).
    pub fn stats_source(&self) -> impl Fn() -> Vec<RelayStats> + Send + Sync + 'static {
        let relays = self.relays.clone();
        move || relays.iter().map(|r| r.stats()).collect()
    }

    pub fn stats(&self) -> Vec<RelayStats> {
        self.relays.iter().map(|r| r.stats()).collect()
    }

    /// Stops every relay (their threads end); returns the final statistics by relay name.
    pub fn stop(self) -> (BTreeMap<String, RelayStats>, Vec<String>) {
        let mut out = BTreeMap::new();
        let mut errors = Vec::new();
        for r in self.relays {
            match Arc::try_unwrap(r) {
                Ok(relay) => match relay.stop() {
                    Ok(s) => {
                        out.insert(s.relay.clone(), s);
                    }
                    Err(e) => errors.push(format!("stopping the link emulator: {e}")),
                },
                // Someone still reads its statistics; dropping our handle stops it when they
                // are done.
                Err(shared) => {
                    let s = shared.stats();
                    out.insert(s.relay.clone(), s);
                }
            }
        }
        (out, errors)
    }
}
