//! Faults: applying and reverting the timeline's actions, with their journal.
//!
//! # Design
//!
//! [`Faults`] holds the live fault state of a run — current link parameters, active
//! partitions, nodes that are down, changed resource limits — and a journal of every fault in
//! force, in the order it was applied. It works on what it is handed, and on nothing else:
//! - the network side through a [`Fabric`] (namespace file descriptors and interface indexes:
//!   the routing namespace, its bridges, the node ports), with [`shaping::Shaper`] (tc and
//!   nftables) and the userspace [`emulator`];
//! - the node side (processes, cgroups, containers) through a [`NodeOps`] implementation that
//!   the target provides: a cgroup freeze on `netns`, `docker pause` on `docker`, and on a
//!   board the device agent's own.
//!
//! No target is named here, so the device agent runs this very code on a board.
//!
//! **Every fault reverts.** [`Faults::revert_all`] undoes whatever is in the journal in
//! reverse order (nodes powered on and thawed, limits restored, partitions healed, links back
//! to their baseline), keeps going past errors and returns them all. It is idempotent: a
//! second call finds an empty journal.

pub mod emulator;
pub mod shaping;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::fabric::Fabric;
use crate::host::Result;
use crate::profile::{HostCpu, NodeLimits, limits};
use crate::scenario::Plan;
use crate::scenario::model::DownMode;
use crate::scenario::plan::{ActionKind, Block, LinkParams};

use self::emulator::{Emulator, EmulatorOptions};
use self::shaping::{Prepared, Shaper};

/// What a target does to a node's processes and resources. Network faults never come here:
/// they are applied to the fabric.
#[allow(async_fn_in_trait)]
pub trait NodeOps {
    /// Powers a node off (`on == false`: every workload killed and kept down) or on again.
    async fn power(&mut self, node: usize, on: bool) -> Result<()>;
    /// Freezes every process of a node, or thaws them.
    async fn freeze(&mut self, node: usize, frozen: bool) -> Result<()>;
    /// Sends `signal` to the instances of `workload` on `nodes`.
    async fn signal(&mut self, workload: usize, nodes: &[usize], signal: i32) -> Result<()>;
    /// Stops and starts again the instances of `workload` on `nodes`.
    async fn restart(&mut self, workload: usize, nodes: &[usize]) -> Result<()>;
    /// Holds a node to new limits.
    async fn set_limits(&mut self, node: usize, limits: &NodeLimits) -> Result<()>;
}

/// One fault in force, as the journal records it (enough to revert it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Active {
    Partition { name: String },
    Link { link: usize },
    NodeDown { node: usize, mode: DownMode },
    Limits { node: usize },
}

/// The limits a `cpu` or `memory` action holds node `n` to (`None` for other actions): from
/// `base`, the limits it started with, and `current`, those it holds now; a `cpu` action keeps
/// the current memory limit and a `memory` action the current CPU. `host` is the CPU the
/// profile's quota is computed for, `allowed` the host CPUs nodes are pinned to.
pub(crate) fn resized(
    action: &ActionKind,
    n: usize,
    base: &NodeLimits,
    current: &NodeLimits,
    spec: &crate::profile::ProfileSpec,
    host: &HostCpu,
    allowed: &[u32],
) -> Option<NodeLimits> {
    match action {
        ActionKind::Cpu { cores, .. } => {
            let l = match cores {
                Some(c) => base
                    .clone()
                    .with_cpu_cores(*c, spec, host)
                    .pinned(n, allowed),
                None => base.clone(),
            };
            Some(NodeLimits {
                memory_bytes: current.memory_bytes,
                ..l
            })
        }
        ActionKind::Memory { limit, .. } => Some(NodeLimits {
            memory_bytes: limit.or(base.memory_bytes),
            ..current.clone()
        }),
        _ => None,
    }
}

/// The live fault state of a run and its journal.
pub struct Faults {
    plan: Arc<Plan>,
    host: HostCpu,
    /// Host CPUs this process may use: what nodes are pinned to.
    allowed: Vec<u32>,
    shaper: Shaper,
    emulator: Option<Emulator>,
    links: Vec<(LinkParams, LinkParams)>,
    partitions: BTreeMap<String, Vec<Block>>,
    down: BTreeMap<usize, DownMode>,
    limits: Vec<NodeLimits>,
    journal: Vec<Active>,
}

impl Faults {
    /// Installs the baseline: the links' impairments (tc, nftables) and, when the plan uses
    /// it, the userspace emulator. `host` is the CPU the profiles' quotas are computed from.
    ///
    /// Guarantees: on error what was installed lives inside the fabric's namespace.
    pub async fn install(
        plan: Arc<Plan>,
        fabric: &Fabric,
        host: HostCpu,
        emu: &EmulatorOptions,
    ) -> Result<Faults> {
        let userspace = plan.uses_emulator();
        let links = plan.baseline_links();
        let mut shaper = Shaper::new(&plan, fabric, userspace)?;
        shaper
            .apply(&plan, fabric, &links, &BTreeMap::new(), None)
            .await?;
        let emulator = if userspace {
            Some(Emulator::start(&plan, fabric, &links, emu)?)
        } else {
            None
        };
        let allowed = crate::host::cgroup::allowed_cpus();
        let node_limits = plan
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| limits(&n.profile, &host).pinned(i, &allowed))
            .collect();
        Ok(Faults {
            plan,
            host,
            allowed,
            shaper,
            emulator,
            links,
            partitions: BTreeMap::new(),
            down: BTreeMap::new(),
            limits: node_limits,
            journal: Vec::new(),
        })
    }

    /// The limits each node starts with (the profiles' shape on this host).
    pub fn base_limits(&self, node: usize) -> NodeLimits {
        limits(&self.plan.nodes[node].profile, &self.host).pinned(node, &self.allowed)
    }

    /// The limits node `node` is held to now.
    pub fn limits(&self, node: usize) -> &NodeLimits {
        &self.limits[node]
    }

    /// The faults in force, oldest first.
    pub fn active(&self) -> &[Active] {
        &self.journal
    }

    /// Whether the userspace link emulator carries link impairments.
    pub fn userspace(&self) -> bool {
        self.emulator.is_some()
    }

    pub fn emulator_stats(&self) -> Vec<crate::linkem::RelayStats> {
        self.emulator
            .as_ref()
            .map(|e| e.stats())
            .unwrap_or_default()
    }

    /// A function reading the emulator's statistics from any thread (for live metrics).
    pub fn emulator_stats_source(
        &self,
    ) -> Option<Box<dyn Fn() -> Vec<crate::linkem::RelayStats> + Send + Sync>> {
        self.emulator
            .as_ref()
            .map(|e| Box::new(e.stats_source()) as Box<_>)
    }

    /// Work to do before an action's scheduled instant so that the instant itself pays only
    /// for the change (e.g. opening the firewall's netlink socket).
    pub fn prepare(&mut self, action: &ActionKind) -> Option<Prepared> {
        match action {
            ActionKind::Impair { .. } if self.emulator.is_some() => None,
            ActionKind::Partition { .. } | ActionKind::Heal { .. } | ActionKind::Impair { .. } => {
                self.shaper.prepare().ok()
            }
            _ => None,
        }
    }

    fn record(&mut self, a: Active) {
        if !self.journal.contains(&a) {
            self.journal.push(a);
        }
    }

    fn forget(&mut self, a: &Active) {
        self.journal.retain(|x| x != a);
    }

    /// Applies one timeline action.
    pub async fn apply<N: NodeOps>(
        &mut self,
        action: &ActionKind,
        prepared: Option<Prepared>,
        fabric: &Fabric,
        nodes: &mut N,
    ) -> Result<()> {
        match action {
            ActionKind::Partition { name, blocks } => {
                self.partitions.insert(name.clone(), blocks.clone());
                self.record(Active::Partition { name: name.clone() });
                self.reshape(fabric, false, prepared).await
            }
            ActionKind::Heal { names } => {
                for n in names {
                    self.partitions.remove(n);
                    self.forget(&Active::Partition { name: n.clone() });
                }
                self.reshape(fabric, false, prepared).await
            }
            ActionKind::Impair { link, up, down } => {
                self.links[*link] = (*up, *down);
                let baseline = (self.plan.links[*link].up, self.plan.links[*link].down);
                if (*up, *down) == baseline {
                    self.forget(&Active::Link { link: *link });
                } else {
                    self.record(Active::Link { link: *link });
                }
                self.reshape(fabric, true, prepared).await
            }
            ActionKind::NodeDown { nodes: ns, mode } => {
                for &n in ns {
                    fabric.set_node_link(n, false).await?;
                    self.down.insert(n, *mode);
                    self.record(Active::NodeDown {
                        node: n,
                        mode: *mode,
                    });
                    match mode {
                        DownMode::Poweroff => nodes.power(n, false).await?,
                        DownMode::Freeze => nodes.freeze(n, true).await?,
                        DownMode::Isolate => {}
                    }
                }
                Ok(())
            }
            ActionKind::NodeUp { nodes: ns, .. } => {
                // Network first (and wait until it carries traffic), then processes: a board
                // that powers on finds its cable already plugged in.
                for &n in ns {
                    fabric.set_node_link(n, true).await?;
                }
                fabric.wait_links(ns, crate::fabric::LINK_STALL).await?;
                for &n in ns {
                    let mode = self.down.remove(&n).unwrap_or_default();
                    self.forget(&Active::NodeDown { node: n, mode });
                    match mode {
                        DownMode::Poweroff => nodes.power(n, true).await?,
                        DownMode::Freeze => nodes.freeze(n, false).await?,
                        DownMode::Isolate => {}
                    }
                }
                Ok(())
            }
            ActionKind::Kill {
                workload,
                nodes: ns,
                signal,
            } => nodes.signal(*workload, ns, *signal).await,
            ActionKind::Restart {
                workload,
                nodes: ns,
            } => nodes.restart(*workload, ns).await,
            ActionKind::Cpu { nodes: ns, .. } | ActionKind::Memory { nodes: ns, .. } => {
                for &n in ns {
                    let l = resized(
                        action,
                        n,
                        &self.base_limits(n),
                        &self.limits[n],
                        &self.plan.nodes[n].profile,
                        &self.host,
                        &self.allowed,
                    );
                    if let Some(l) = l {
                        self.set_limits(n, l, nodes).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn set_limits<N: NodeOps>(
        &mut self,
        n: usize,
        l: NodeLimits,
        nodes: &mut N,
    ) -> Result<()> {
        nodes.set_limits(n, &l).await?;
        if l == self.base_limits(n) {
            self.forget(&Active::Limits { node: n });
        } else {
            self.record(Active::Limits { node: n });
        }
        self.limits[n] = l;
        Ok(())
    }

    /// Makes firewall, qdiscs and emulator match the current links and partitions. The
    /// emulator goes first when a link changed: its rules take effect with the next packet.
    async fn reshape(
        &mut self,
        fabric: &Fabric,
        link_changed: bool,
        prepared: Option<Prepared>,
    ) -> Result<()> {
        if link_changed && let Some(e) = &mut self.emulator {
            e.update(&self.plan, &self.links)?;
        }
        self.shaper
            .apply(&self.plan, fabric, &self.links, &self.partitions, prepared)
            .await
    }

    /// Reverts every fault in force, newest first: nodes come back (thawed, powered on,
    /// plugged in), limits return to the profile's, partitions heal and links return to their
    /// baseline. Keeps going past errors and returns them all.
    ///
    /// Guarantees: idempotent; afterwards [`Faults::active`] is empty.
    pub async fn revert_all<N: NodeOps>(&mut self, fabric: &Fabric, nodes: &mut N) -> Vec<String> {
        let mut errors = Vec::new();
        let mut network = false;
        let mut links = false;
        for a in std::mem::take(&mut self.journal).into_iter().rev() {
            let res = match a {
                Active::NodeDown { node, mode } => {
                    self.down.remove(&node);
                    let r = fabric.set_node_link(node, true).await;
                    let p = match mode {
                        DownMode::Poweroff => nodes.power(node, true).await,
                        DownMode::Freeze => nodes.freeze(node, false).await,
                        DownMode::Isolate => Ok(()),
                    };
                    r.and(p)
                }
                Active::Limits { node } => {
                    let l = self.base_limits(node);
                    let r = nodes.set_limits(node, &l).await;
                    self.limits[node] = l;
                    r
                }
                Active::Partition { name } => {
                    self.partitions.remove(&name);
                    network = true;
                    Ok(())
                }
                Active::Link { link } => {
                    self.links[link] = (self.plan.links[link].up, self.plan.links[link].down);
                    network = true;
                    links = true;
                    Ok(())
                }
            };
            if let Err(e) = res {
                errors.push(e.to_string());
            }
        }
        if network && let Err(e) = self.reshape(fabric, links, None).await {
            errors.push(e.to_string());
        }
        errors
    }

    /// Stops the userspace emulator (if it runs); its errors.
    pub fn stop(&mut self) -> Vec<String> {
        self.emulator.take().map(|e| e.stop().1).unwrap_or_default()
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        if let Some(e) = self.emulator.take() {
            let _ = e.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The journal's promise, on a real fabric in scratch namespaces (root): every fault in
    //! force is reverted, newest first, through the target's node operations, and a second
    //! revert finds nothing to do. The node side is a recorder, as a device agent's would be
    //! a board.

    use super::*;
    use crate::host::tc::ScratchNs;
    use crate::scenario::validate::{Capabilities, Overrides, build, parse};

    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl NodeOps for Recorder {
        async fn power(&mut self, node: usize, on: bool) -> Result<()> {
            self.0.push(format!("power {node} {on}"));
            Ok(())
        }
        async fn freeze(&mut self, node: usize, frozen: bool) -> Result<()> {
            self.0.push(format!("freeze {node} {frozen}"));
            Ok(())
        }
        async fn signal(&mut self, workload: usize, nodes: &[usize], signal: i32) -> Result<()> {
            self.0.push(format!("signal {workload} {nodes:?} {signal}"));
            Ok(())
        }
        async fn restart(&mut self, workload: usize, nodes: &[usize]) -> Result<()> {
            self.0.push(format!("restart {workload} {nodes:?}"));
            Ok(())
        }
        async fn set_limits(&mut self, node: usize, l: &NodeLimits) -> Result<()> {
            self.0.push(format!("limits {node} {:?}", l.cpu_quota_us));
            Ok(())
        }
    }

    const SCENARIO: &str = "apiVersion: edgesim.dev/v1alpha1
kind: Scenario
metadata: {name: faults}
spec:
  seed: 1
  duration: 30s
  sites:
    cloud: {}
    edge: {uplink: {site: cloud, loss: 1%}}
  nodes:
    - {name: a, site: cloud, profile: cloud-small}
    - {name: b, site: edge, profile: raspberry-pi-5-4gb}
  timeline:
    - {at: 1s, partition: {name: cut, between: [[a], [b]]}}
    - {at: 2s, node-down: {nodes: [b], mode: freeze}}
    - {at: 3s, cpu: {nodes: [a], cores: 1}}
    - {at: 4s, impair: {link: edge-uplink, loss: 20%}}
    - {at: 5s, node-down: {nodes: [a], mode: poweroff}}
";

    #[test]
    fn every_fault_in_force_is_reverted_newest_first_once() {
        if !crate::testing::netns() {
            return;
        }
        let f = std::path::Path::new("faults.yaml");
        let sc = parse(f, SCENARIO).expect("parses");
        let plan = build(
            f,
            SCENARIO,
            &sc,
            crate::profile::ProfileSet::builtin().expect("profiles"),
            &Capabilities::all("netns"),
            &Overrides::default(),
        )
        .expect("valid")
        .plan;
        let plan = Arc::new(plan);
        let scratch: Vec<ScratchNs> = (0..3)
            .map(|_| ScratchNs::create("faults").expect("scratch namespace"))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let names = crate::fabric::Names {
                fabric: scratch[0].0.clone(),
                nodes: vec![scratch[1].0.clone(), scratch[2].0.clone()],
            };
            let fabric = crate::fabric::Fabric::build_named(&plan, names, false)
                .await
                .expect("fabric");
            let host = HostCpu::detect();
            let mut faults = Faults::install(plan.clone(), &fabric, host, &Default::default())
                .await
                .expect("baseline");
            let mut rec = Recorder::default();
            for a in &plan.actions {
                faults
                    .apply(&a.kind, None, &fabric, &mut rec)
                    .await
                    .expect("applied");
            }
            assert_eq!(
                faults.active(),
                &[
                    Active::Partition { name: "cut".into() },
                    Active::NodeDown {
                        node: 1,
                        mode: DownMode::Freeze
                    },
                    Active::Limits { node: 0 },
                    Active::Link { link: 0 },
                    Active::NodeDown {
                        node: 0,
                        mode: DownMode::Poweroff
                    },
                ]
            );
            rec.0.clear();
            let errors = faults.revert_all(&fabric, &mut rec).await;
            assert!(errors.is_empty(), "{errors:?}");
            let base = faults.base_limits(0).cpu_quota_us;
            assert_eq!(
                rec.0,
                vec![
                    "power 0 true".to_string(),
                    format!("limits 0 {base:?}"),
                    "freeze 1 false".to_string(),
                ],
                "node faults undone newest first"
            );
            assert!(faults.active().is_empty());
            // Links back to their baseline, no partition: the firewall the shaper installed
            // is the baseline's again.
            assert_eq!(faults.links, plan.baseline_links());
            assert!(faults.partitions.is_empty());
            let now = shaping::Shaper::ruleset(&plan, &faults.links, &faults.partitions, false);
            let base =
                shaping::Shaper::ruleset(&plan, &plan.baseline_links(), &BTreeMap::new(), false);
            assert_eq!(format!("{now:?}"), format!("{base:?}"));
            rec.0.clear();
            assert!(faults.revert_all(&fabric, &mut rec).await.is_empty());
            assert!(
                rec.0.is_empty(),
                "a second revert does nothing: {:?}",
                rec.0
            );
            faults.stop();
        });
    }
}
