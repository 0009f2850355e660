//! WAN impairments and partitions in the fabric namespace, kept equal to a desired state.
//!
//! Impairments are per path: traffic from site `s` to site `d` gets the composition of the
//! links along the path between them ([`Plan::path_params`]), applied where it enters `d`:
//! - **rate**: an htb class `1:(0x100+s)` on `d`'s bridge, selected by a u32 filter on the
//!   source subnet (priority `1+s`, so each path's filter can be replaced on its own);
//!   unclassified traffic (same-site, from the fabric itself) passes unshaped;
//! - **delay and jitter**: a netem qdisc under that class, where the kernel has netem
//!   (validation refuses delay on kernels without it until the userspace emulator lands);
//! - **loss**: an nftables `numgen` rule per path, the same on every kernel;
//! - **partitions**: nftables drop rules between node addresses, for routed (between
//!   sites) and bridged (within a site) traffic alike.
//!
//! Each change recomputes the desired state and applies only the difference to tc (classes
//! replaced in place, filters re-added per priority); the firewall is replaced as a whole in
//! one nf_tables transaction over netlink ([`Prepared`] opens the socket ahead of time).
//! Because the approximation is per path, two paths that share a link in the scenario do
//! not compete for that link's bandwidth: in a chain `a → b → cloud`, traffic from `a` and
//! from `b` into the cloud both cross `b`'s uplink, and each gets its full rate; likewise in
//! a star, `a → hub` and `a → b` (through the hub) each get `a`'s uplink rate. All nodes of
//! one site sending to one destination site do share their path's rate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

use crate::fabric::Fabric;
use crate::host::nft::{self, Firewall, Pending, Ruleset};
use crate::host::tc::{self, ClassId, Htb, HtbClass, Netem, Parent, Qdisc, U32Match};
use crate::host::{HostError, Result};
use crate::scenario::Plan;
use crate::scenario::plan::{Block, LinkParams};

/// nftables table of a run (inside the fabric namespace, so the name need not be unique).
pub const TABLE: &str = "edgesim";
/// Rates above this are treated as unlimited by the htb class of a delay-only path.
pub(crate) const UNLIMITED_BPS: u64 = 10_000_000_000;

/// Firewall work started ahead of an action's scheduled instant.
pub struct Prepared(Pending);

/// What is installed on one path `(src site, dst site)`.
#[derive(Debug, Clone, PartialEq)]
struct PathShape {
    rate: u64,
    netem: Option<Netem>,
}

/// netem's options for a path's parameters; loss goes to netem only when it is correlated or
/// bursty (plain loss stays in nftables, the same on every kernel).
pub(crate) fn netem_of(p: &LinkParams, seed: u64) -> Netem {
    use crate::scenario::model::Distribution as D;
    let loss = if let Some(ge) = p.gilbert_elliott {
        Some(tc::NetemLoss::GilbertElliott {
            p: ge.p,
            r: Some(ge.r),
            loss_in_bad: Some(ge.loss_in_bad),
            loss_in_good: Some(ge.loss_in_good),
        })
    } else if p.loss_correlation > 0.0 {
        Some(tc::NetemLoss::Random {
            probability: p.loss,
            correlation: p.loss_correlation,
        })
    } else {
        None
    };
    Netem {
        delay: p.delay.unwrap_or(Duration::ZERO),
        jitter: p.jitter.unwrap_or(Duration::ZERO),
        delay_correlation: p.correlation,
        distribution: match p.distribution {
            None | Some(D::Uniform) => None,
            Some(D::Normal) => Some(tc::Distribution::Normal),
            Some(D::Pareto) => Some(tc::Distribution::Pareto),
            Some(D::Paretonormal) => Some(tc::Distribution::ParetoNormal),
        }
        .filter(|_| p.jitter.is_some_and(|j| !j.is_zero())),
        loss,
        duplicate: p.duplicate,
        corrupt: p.corrupt,
        reorder: p.reorder,
        gap: p.reorder_gap,
        limit: p.limit.unwrap_or(1000),
        seed: Some(seed),
        ..Netem::default()
    }
}

/// Whether plain loss of a path goes to nftables (not netem).
pub(crate) fn loss_in_firewall(p: &LinkParams) -> bool {
    p.loss > 0.0 && p.gilbert_elliott.is_none() && p.loss_correlation == 0.0
}

pub struct Shaper {
    firewall: Firewall,
    /// Paths shaped now, by (src, dst).
    installed: BTreeMap<(usize, usize), PathShape>,
    /// Destination sites whose bridge has the htb root.
    roots: BTreeSet<usize>,
    /// Ruleset in force.
    ruleset: Ruleset,
    seed: u64,
    userspace: bool,
}

fn class_of(src: usize) -> ClassId {
    ClassId::new(1, 0x100 + src as u16)
}

fn net(n: Ipv4Net) -> IpNet {
    IpNet::V4(n)
}

impl Shaper {
    /// `userspace`: the link emulator carries every link impairment; the shaper then keeps
    /// only partitions and unreachable paths in the firewall and installs no qdiscs.
    pub fn new(plan: &Plan, fabric: &Fabric, userspace: bool) -> Result<Self> {
        let fd = fabric.fabric_fd.try_clone().map_err(|e| {
            HostError::io(
                "duplicating the namespace handle of",
                &fabric.names.fabric,
                e,
            )
        })?;
        Ok(Shaper {
            firewall: Firewall::from_fd(fd, &fabric.names.fabric, TABLE)?,
            installed: BTreeMap::new(),
            roots: BTreeSet::new(),
            ruleset: Ruleset::default(),
            seed: plan.seed,
            userspace,
        })
    }

    /// Makes sure the firewall's netlink socket is open, so that a later [`Shaper::apply`]
    /// pays only for the transaction.
    pub fn prepare(&self) -> Result<Prepared> {
        self.firewall.prepare().map(Prepared)
    }

    /// The effective parameters of every path between two different sites.
    pub fn paths(
        plan: &Plan,
        links: &[(LinkParams, LinkParams)],
    ) -> BTreeMap<(usize, usize), Option<LinkParams>> {
        let mut out = BTreeMap::new();
        for s in 0..plan.sites.len() {
            for d in 0..plan.sites.len() {
                if s != d {
                    out.insert((s, d), plan.path_params(links, s, d));
                }
            }
        }
        out
    }

    /// The firewall rules for a link state and a set of partitions.
    pub fn ruleset(
        plan: &Plan,
        links: &[(LinkParams, LinkParams)],
        partitions: &BTreeMap<String, Vec<Block>>,
        userspace: bool,
    ) -> Ruleset {
        let mut rs = Ruleset::default();
        for ((s, d), p) in Self::paths(plan, links) {
            let from = vec![net(plan.sites[s].subnet)];
            let to = vec![net(plan.sites[d].subnet)];
            match p {
                // Sites with no path between them cannot reach each other.
                None => rs.blocks.push(nft::Block {
                    name: format!("no-path {}->{}", plan.sites[s].name, plan.sites[d].name),
                    from,
                    to,
                }),
                // With the emulator, cuts and loss are its business.
                Some(_) if userspace => {}
                Some(p) if p.cut => rs.blocks.push(nft::Block {
                    name: format!("link-down {}->{}", plan.sites[s].name, plan.sites[d].name),
                    from,
                    to,
                }),
                Some(p) if loss_in_firewall(&p) => rs.losses.push(nft::Loss {
                    name: format!("loss {}->{}", plan.sites[s].name, plan.sites[d].name),
                    from,
                    to,
                    probability: p.loss,
                }),
                Some(_) => {}
            }
        }
        for (name, blocks) in partitions {
            for (i, b) in blocks.iter().enumerate() {
                let addrs = |ns: &[usize]| -> Vec<IpNet> {
                    ns.iter()
                        .map(|n| {
                            IpNet::V4(Ipv4Net::new(plan.nodes[*n].addr, 32).expect("/32 is valid"))
                        })
                        .collect()
                };
                rs.blocks.push(nft::Block {
                    name: format!("partition {name} #{i}"),
                    from: addrs(&b.from),
                    to: addrs(&b.to),
                });
            }
        }
        rs
    }

    /// Makes the fabric match `links` and `partitions`. `prepared` is used for the firewall
    /// when given.
    pub async fn apply(
        &mut self,
        plan: &Plan,
        fabric: &Fabric,
        links: &[(LinkParams, LinkParams)],
        partitions: &BTreeMap<String, Vec<Block>>,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        // Firewall first: partitions are what the timeline's instants are about.
        let rs = Self::ruleset(plan, links, partitions, self.userspace);
        if rs != self.ruleset || prepared.is_some() {
            match prepared {
                Some(Prepared(p)) => p.commit(&rs)?,
                None => self.firewall.apply(&rs)?,
            }
            self.ruleset = rs;
        }

        // Rates and delays on the destination bridges.
        let mut want: BTreeMap<(usize, usize), PathShape> = BTreeMap::new();
        for ((s, d), p) in Self::paths(plan, links) {
            let Some(p) = p.filter(|_| !self.userspace) else {
                continue;
            };
            let seed = self.seed ^ (((s as u64) << 32) | d as u64);
            let netem = p.needs_netem().then(|| netem_of(&p, seed));
            if p.rate.is_some() || netem.is_some() {
                want.insert(
                    (s, d),
                    PathShape {
                        rate: p.rate.unwrap_or(UNLIMITED_BPS),
                        netem,
                    },
                );
            }
        }
        let h = &fabric.fabric_nl;
        // Remove what is no longer wanted.
        let gone: Vec<(usize, usize)> = self
            .installed
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for (s, d) in gone {
            let dev = fabric.bridges[d];
            tc::filter_delete(h, dev, ClassId::qdisc(1), 1 + s as u16).await?;
            tc::class_delete(h, dev, class_of(s)).await?;
            self.installed.remove(&(s, d));
        }
        for d in self.roots.clone() {
            if !want.keys().any(|(_, dd)| *dd == d) {
                tc::qdisc_delete(h, fabric.bridges[d], Parent::Root).await?;
                self.roots.remove(&d);
            }
        }
        // Add or change what is wanted.
        for (&(s, d), shape) in &want {
            let dev = fabric.bridges[d];
            if self.roots.insert(d) {
                tc::qdisc_replace(h, dev, Parent::Root, 1, &Qdisc::Htb(Htb::default())).await?;
            }
            let before = self.installed.get(&(s, d)).cloned();
            if before.as_ref().map(|b| b.rate) != Some(shape.rate) {
                let class = HtbClass {
                    rate: shape.rate,
                    ceil: Some(shape.rate),
                    ..HtbClass::default()
                };
                tc::class_replace(h, dev, ClassId::qdisc(1), class_of(s), &class).await?;
            }
            if before.is_none() {
                let m = U32Match {
                    src: Some(plan.sites[s].subnet),
                    dst: None,
                };
                tc::filter_delete(h, dev, ClassId::qdisc(1), 1 + s as u16).await?;
                tc::u32_filter_add(h, dev, ClassId::qdisc(1), 1 + s as u16, &m, class_of(s))
                    .await?;
            }
            if before.as_ref().and_then(|b| b.netem.clone()) != shape.netem {
                match &shape.netem {
                    Some(n) => {
                        let q = Qdisc::Netem(n.clone());
                        tc::qdisc_replace(h, dev, Parent::Class(class_of(s)), 0x100 + s as u16, &q)
                            .await?;
                    }
                    None => tc::qdisc_delete(h, dev, Parent::Class(class_of(s))).await?,
                }
            }
            self.installed.insert((s, d), shape.clone());
        }
        Ok(())
    }

    /// Packets and bytes dropped by each firewall rule so far.
    pub fn counters(&self) -> Result<Vec<nft::RuleCounter>> {
        self.firewall.counters()
    }

    /// Which mechanism carries each impairment of a link, for the report.
    pub fn mechanisms(p: &LinkParams, userspace: bool) -> Vec<String> {
        if userspace {
            return if p.is_clear() {
                Vec::new()
            } else {
                vec!["linkem (userspace, seeded)".to_string()]
            };
        }
        let mut v = Vec::new();
        if p.rate.is_some() {
            v.push("rate: tc htb".to_string());
        }
        if p.needs_netem() {
            v.push("delay/jitter/burst loss/duplicate/corrupt/reorder: tc netem".to_string());
        }
        if loss_in_firewall(p) {
            v.push("loss: nftables numgen".to_string());
        }
        v
    }
}
