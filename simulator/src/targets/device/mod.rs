//! The `device` target's pieces: physical boards (Raspberry Pi, Jetson) reached over SSH.
//!
//! - [`agent`]: `edgesim agent`, which applies a board's faults under a lease.
//! - [`cell`]: the workloads of a board without netem in a namespace behind linkem.
//! - [`transport`]: SSH to boards (the system's OpenSSH), the agent's upload and its protocol.
//! - [`inventory`]: which boards there are and how to reach them (Ansible's YAML inventory),
//!   and which scenario node is which board.
//!
//! The target itself (provisioning boards through the agent, faults with leases) builds on
//! these; see the roadmap in DESIGN.md.

pub mod agent;
pub mod cell;
pub mod fleet;
pub mod inventory;
pub mod lab;
pub mod scope;
pub mod sdbus;
pub mod transport;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::faults::shaping::loss_in_firewall;
use crate::profile::{Arch, ProfileSpec};
use crate::scenario::Plan;
use crate::scenario::plan::{Block, LinkParams};

use self::agent::{Desired, Facts, Peer, WireBlock};

/// What board `node` must hold for the lab's current state, by the boards' real addresses
/// (`addrs[i]` is node `i`'s board). Each direction of a link is split between its ends the
/// way the kernel can carry it faithfully: the sender shapes (rate, delay and netem's
/// impairments, toward each peer: [`Desired::peers`]); the receiver drops (cuts, plain loss,
/// partitions and site pairs with no path between them, on arrival: [`Desired::incoming`]
/// and [`Desired::blocks`]), so a sending application sees silent loss, as on a real link,
/// never an error from its own firewall. Traffic to or from anything that is not a board
/// (the controller, the internet) is never touched.
pub fn desired_for(
    plan: &Plan,
    links: &[(LinkParams, LinkParams)],
    partitions: &BTreeMap<String, Vec<Block>>,
    addrs: &[IpAddr],
    node: usize,
    iface: &str,
    lease: Duration,
) -> Desired {
    let me = &plan.nodes[node];
    let mut d = Desired {
        iface: iface.to_string(),
        lease_ms: lease.as_millis() as u64,
        seed: plan.seed ^ (node as u64).rotate_left(32),
        ..Desired::default()
    };
    for (m, other) in plan.nodes.iter().enumerate() {
        if m == node || addrs[m] == addrs[node] {
            continue;
        }
        // Shaping of what this board sends to `other`.
        if let Some(p) = plan.path_params(links, me.site, other.site) {
            let shaped = LinkParams {
                cut: false,
                loss: if loss_in_firewall(&p) { 0.0 } else { p.loss },
                ..p
            };
            if shaped.rate.is_some() || shaped.needs_netem() {
                d.peers.push(Peer {
                    addr: addrs[m],
                    params: shaped,
                });
            }
        }
        // Drops of what arrives from `other`.
        match plan.path_params(links, other.site, me.site) {
            None => d.blocks.push(WireBlock {
                name: format!("no-path {}->{}", other.name, me.name),
                from: vec![IpNet::from(addrs[m])],
                to: vec![IpNet::from(addrs[node])],
            }),
            Some(p) if p.cut || loss_in_firewall(&p) => d.incoming.push(Peer {
                addr: addrs[m],
                params: LinkParams {
                    cut: p.cut,
                    loss: if p.cut { 0.0 } else { p.loss },
                    ..LinkParams::default()
                },
            }),
            Some(_) => {}
        }
    }
    for (name, blocks) in partitions {
        for (i, b) in blocks.iter().enumerate() {
            // Dropped on arrival: only the receiving boards' agents act.
            if !b.to.contains(&node) {
                continue;
            }
            let nets = |ns: &[usize]| ns.iter().map(|n| IpNet::from(addrs[*n])).collect();
            d.blocks.push(WireBlock {
                name: format!("partition {name} #{i}"),
                from: nets(&b.from),
                to: nets(&b.to),
            });
        }
    }
    d
}

/// What the device target does, and what boards cannot reproduce, for validation and
/// `doctor`. Every board is checked against its profile and the scenario's needs (netem,
/// htb, nftables) when the run starts, before anything changes.
pub fn rows(c: &mut crate::caps::Capabilities) {
    use crate::caps::{Feature as F, Support as S};
    let netem = "tc netem on the sending board; on a board without sch_netem (stock Jetson L4T), \
         linkem in a cell that holds the board's workloads (needs CAP_SYS_ADMIN and CAP_NET_RAW)";
    c.set(
        F::Partition,
        S::Exact,
        "nftables on the receiving board (the agent, under a lease); its management SSH stays up",
    );
    c.set(
        F::Loss,
        S::Exact,
        "nftables numgen on the receiving board (netem on the sender when correlated)",
    );
    c.set(
        F::Rate,
        S::Emulated,
        "htb (or linkem in a cell) on each sending board, per destination: a site uplink shared \
         by several boards is not one bottleneck (each board gets the whole rate), so verdicts \
         that depend on boards competing for an uplink may differ from netns",
    );
    c.set(F::Delay, S::Exact, netem);
    c.set(F::BurstLoss, S::Exact, netem);
    c.set(F::DuplicateCorruptReorder, S::Exact, netem);
    c.set(
        F::FlapTrace,
        S::Exact,
        "the same mechanisms, changed on schedule",
    );
    c.set(
        F::Deterministic,
        S::Emulated,
        "with `impairment: userspace`: each board's links in a linkem cell, every drop and delay \
         drawn from the seed (the boards' own timing is not replayed); otherwise the boards' \
         kernels decide",
    );
    c.set(
        F::NodeIsolate,
        S::Exact,
        "everything to and from the board dropped on the boards, but its management SSH",
    );
    c.set(
        F::NodeFreeze,
        S::Exact,
        "the node's cgroup on the board frozen (its workloads hang) and the board isolated but its SSH: the systemd scope edgesim-<run>-<node>.scope where systemd is the board's init (the system's, or the agent user's own manager), else a cgroup the agent makes (root only)",
    );
    c.set(
        F::NodePoweroff,
        S::Emulated,
        "the board isolated and its workloads stopped and kept down (the board itself keeps running)",
    );
    c.set(
        F::KillRestart,
        S::Exact,
        "signals to the workload's process group on the board (over SSH)",
    );
    for f in [F::Cpu, F::Memory, F::BlockIo] {
        c.set(
            f,
            S::Unavailable,
            "a board's CPU, memory and storage are its own: checked against the profile before the run, not changed (on a systemd board the node's scope holds the profile's cores, workload memory and tasks as a ceiling)",
        );
    }
    c.set(
        F::AppWorkload,
        S::Exact,
        "the app's static build for the board's architecture, uploaded once by content hash and run over SSH; output into the run folder",
    );
    c.set(
        F::CommandWorkload,
        S::Exact,
        "a program the board has, run over SSH in its own process group",
    );
    c.set(
        F::ImageWorkload,
        S::Unavailable,
        "boards run binaries, not container images (deliver images with K3s and Flux: ansible/)",
    );
    c.set(
        F::Arm64Emulation,
        S::Unavailable,
        "boards run their own architecture",
    );
    c.netem_hint = "a board without sch_netem cannot carry delay: load the module (ansible/prepare-board.yml), or leave delay off its links".into();
}

/// What a scenario asks of a board's kernel and privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Delay or jitter toward some peer (netem).
    pub delay: bool,
    /// A rate limit (htb).
    pub rate: bool,
    /// Partitions or loss (nftables).
    pub firewall: bool,
    /// CPU and memory limits for the board's workloads (cgroup v2 with cpu and memory).
    pub limits: bool,
    /// The scenario asks for the userspace link emulator (`impairment: userspace`).
    pub userspace: bool,
    /// `node-down` with `mode: freeze` on this board (its workloads' cgroup frozen).
    pub freeze: bool,
}

impl Needs {
    /// Whether the board carries its links with linkem in a [cell](cell): what the scenario
    /// asks for with `impairment: userspace` (every board with any fault: linkem's seeded
    /// decisions, loss included), and what a kernel without sch_netem (delay) or sch_htb
    /// (rate) falls back to. A board whose links are clean needs none.
    pub fn cell(&self, facts: &Facts) -> bool {
        if self.userspace {
            return self.delay || self.rate || self.firewall;
        }
        (self.delay && !facts.netem) || (self.rate && !facts.htb)
    }
}

/// Checks a board against the profile its scenario node has and what the scenario needs;
/// every mismatch, at once (empty: the board fits). Runs before anything is changed.
pub fn check_board(host: &str, facts: &Facts, profile: &ProfileSpec, needs: Needs) -> Vec<String> {
    let mut out = Vec::new();
    let want_arch = match profile.arch {
        Arch::Amd64 => "amd64",
        Arch::Arm64 => "arm64",
    };
    if facts.arch != want_arch {
        out.push(format!(
            "{host}: the board is {} but its profile is {want_arch}",
            facts.arch
        ));
    }
    if facts.cores != profile.cpu.cores {
        out.push(format!(
            "{host}: the board has {} CPUs online, its profile {} cores (another board, or cores offline)",
            facts.cores, profile.cpu.cores
        ));
    }
    // MemTotal is what the kernel manages: installed memory less firmware and kernel
    // reservations (a few percent on these boards).
    let total = profile.memory.total.get() as f64;
    let seen = facts.memory_bytes as f64;
    if seen < total * 0.85 || seen > total * 1.05 {
        out.push(format!(
            "{host}: the board has {:.1} GiB of memory, its profile {:.1} GiB",
            seen / f64::from(1u32 << 30),
            total / f64::from(1u32 << 30)
        ));
    }
    out.extend(check_kernel(host, facts, needs));
    out
}

/// What the scenario needs of a board's kernel and of the agent's privileges (nftables, the
/// qdiscs or a cell, cgroups), every mismatch at once: [`check_board`] without the board's
/// shape (a cluster node's shape is checked through its allocatable resources instead).
pub fn check_kernel(host: &str, facts: &Facts, needs: Needs) -> Vec<String> {
    let mut out = Vec::new();
    if !facts.cap_net_admin {
        out.push(format!(
            "{host}: the agent lacks CAP_NET_ADMIN (run it as root, or give the user that capability: see ansible/)"
        ));
    }
    if needs.firewall
        && let Some(e) = &facts.nftables_error
    {
        out.push(format!(
            "{host}: partitions and loss need nftables, which fails: {e}"
        ));
    }
    if needs.cell(facts) {
        let why = if needs.userspace {
            "`impairment: userspace` runs linkem in a cell for the board's workloads".to_string()
        } else {
            let lacks: Vec<&str> = [
                (needs.delay && !facts.netem, "sch_netem (delay)"),
                (needs.rate && !facts.htb, "sch_htb (rate)"),
            ]
            .into_iter()
            .filter_map(|(l, m)| l.then_some(m))
            .collect();
            format!(
                "the kernel lacks {}, so linkem carries the links in a cell for the board's workloads",
                lacks.join(" and ")
            )
        };
        if !(facts.cap_sys_admin && facts.cap_net_raw) {
            out.push(format!(
                "{host}: {why}, which needs CAP_SYS_ADMIN and CAP_NET_RAW beside CAP_NET_ADMIN; the agent lacks {} (run it as root, or prepare the board with ansible/prepare-board.yml)",
                [
                    (!facts.cap_sys_admin, "CAP_SYS_ADMIN"),
                    (!facts.cap_net_raw, "CAP_NET_RAW"),
                ]
                .into_iter()
                .filter_map(|(l, c)| l.then_some(c))
                .collect::<Vec<_>>()
                .join(" and ")
            ));
        }
        if let Some(e) = facts.nftables_error.as_ref().filter(|_| !needs.firewall) {
            out.push(format!(
                "{host}: {why}, behind the board's address by nftables NAT, which fails: {e}"
            ));
        }
    }
    if needs.freeze
        && let Some(e) = &facts.cgroup_error
    {
        out.push(format!(
            "{host}: node-down freeze freezes the run's cgroup on the board, which the agent cannot make: {e} (log in as root, or prepare a systemd board with ansible/prepare-board.yml)"
        ));
    }
    if needs.limits {
        let ctl: Vec<&str> = facts
            .cgroup
            .strip_prefix("v2:")
            .map(|c| c.split_whitespace().collect())
            .unwrap_or_default();
        if !(ctl.contains(&"cpu") && ctl.contains(&"memory")) {
            out.push(format!(
                "{host}: CPU and memory limits need cgroup v2 with the cpu and memory controllers; the board has {}",
                facts.cgroup
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        crate::testing::plan_of(text, "netns")
    }

    #[test]
    fn each_board_gets_its_own_paths_and_the_partitions_that_involve_it() {
        let p = plan(
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: t}\nspec:\n  duration: 10s\n  sites:\n    cloud: {}\n    factory:\n      uplink: {site: cloud, delay: 40ms, rate: 20mbit, loss: 2%}\n  nodes:\n    - {name: sink, site: cloud, profile: cloud-small}\n    - {name: pi-a, site: factory, profile: raspberry-pi-5-8gb}\n    - {name: pi-b, site: factory, profile: raspberry-pi-5-8gb}\n",
        );
        let addrs: Vec<IpAddr> = ["192.0.2.10", "192.0.2.21", "192.0.2.22"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let links = p.baseline_links();
        let mut parts = BTreeMap::new();
        parts.insert(
            "cut".to_string(),
            vec![Block {
                from: vec![1],
                to: vec![0],
            }],
        );
        let at = |n| {
            desired_for(
                &p,
                &links,
                &parts,
                &addrs,
                n,
                "eth0",
                Duration::from_secs(3),
            )
        };
        let a = at(1);
        // pi-a shapes only its traffic to the sink (the uplink); pi-b is on its LAN. The
        // uplink's loss is dropped where it arrives: the sink drops 2 % of what pi-a sends,
        // pi-a 2 % of what the sink sends.
        assert_eq!(a.peers.len(), 1, "{a:#?}");
        assert_eq!(a.peers[0].addr, addrs[0]);
        assert_eq!(a.peers[0].params.delay, Some(Duration::from_millis(40)));
        assert_eq!(a.peers[0].params.rate, Some(20_000_000));
        assert_eq!(a.peers[0].params.loss, 0.0, "loss is not the sender's");
        assert_eq!(a.incoming.len(), 1, "{a:#?}");
        assert_eq!(a.incoming[0].addr, addrs[0]);
        assert!((a.incoming[0].params.loss - 0.02).abs() < 1e-12);
        assert_eq!(a.lease_ms, 3000);
        // The partition pi-a -> sink is dropped by the sink: nothing of it on pi-a.
        assert!(a.blocks.is_empty(), "{a:#?}");
        a.validate().unwrap();
        let sink = at(0);
        assert_eq!(sink.peers.len(), 2);
        assert_eq!(sink.incoming.len(), 2);
        assert_eq!(sink.blocks.len(), 1);
        assert_eq!(sink.blocks[0].from, vec![IpNet::from(addrs[1])]);
        assert_eq!(sink.blocks[0].to, vec![IpNet::from(addrs[0])]);
        sink.validate().unwrap();
        let b = at(2);
        assert!(b.blocks.is_empty());
        assert_ne!(a.seed, b.seed, "each board's netem draws its own stream");

        // A site pair with no path between them: each side drops what arrives from the other.
        let q = plan(
            "apiVersion: edgesim.dev/v1alpha1\nkind: Scenario\nmetadata: {name: t}\nspec:\n  duration: 10s\n  sites:\n    a: {}\n    b: {}\n  nodes:\n    - {name: x, site: a, profile: cloud-small}\n    - {name: y, site: b, profile: cloud-small}\n",
        );
        let x = desired_for(
            &q,
            &q.baseline_links(),
            &BTreeMap::new(),
            &addrs[..2],
            0,
            "eth0",
            Duration::from_secs(3),
        );
        assert!(x.peers.is_empty() && x.incoming.is_empty());
        assert_eq!(x.blocks.len(), 1);
        assert_eq!(x.blocks[0].from, vec![IpNet::from(addrs[1])]);
        assert_eq!(x.blocks[0].to, vec![IpNet::from(addrs[0])]);
    }

    #[test]
    fn an_apply_that_puts_drops_on_the_sender_or_shaping_on_the_receiver_is_refused() {
        let peer = |params| Peer {
            addr: "192.0.2.1".parse().unwrap(),
            params,
        };
        let cut = LinkParams {
            cut: true,
            ..LinkParams::default()
        };
        let lossy = LinkParams {
            loss: 0.1,
            ..LinkParams::default()
        };
        let slow = LinkParams {
            rate: Some(1_000_000),
            ..LinkParams::default()
        };
        for bad in [
            Desired {
                peers: vec![peer(cut)],
                ..Desired::default()
            },
            Desired {
                peers: vec![peer(lossy)],
                ..Desired::default()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains("incoming"), "{e}");
        }
        let e = Desired {
            incoming: vec![peer(slow)],
            ..Desired::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("sender"), "{e}");
        Desired {
            peers: vec![peer(slow)],
            incoming: vec![peer(cut), peer(lossy)],
            ..Desired::default()
        }
        .validate()
        .unwrap();
    }

    fn pi_facts() -> Facts {
        Facts {
            protocol: agent::PROTOCOL,
            version: "0".into(),
            arch: "arm64".into(),
            cores: 4,
            memory_bytes: 8_245_000_000,
            kernel: "6.6.51+rpt-rpi-2712".into(),
            euid: 0,
            cap_net_admin: true,
            cap_sys_admin: true,
            cap_net_raw: true,
            cell_netns: "/run/edgesim/agent-net1.cell".into(),
            netem: true,
            tbf: true,
            htb: true,
            nftables_error: None,
            cgroup: "v2: cpuset cpu io memory pids".into(),
            cgroup_error: None,
            systemd: None,
            interfaces: vec!["lo".into(), "eth0".into()],
            addrs: vec![("eth0".into(), std::net::Ipv4Addr::new(192, 168, 1, 20))],
            management: None,
            recovered: vec![],
        }
    }

    fn profile(name: &str) -> ProfileSpec {
        crate::profile::ProfileSet::builtin()
            .unwrap()
            .get(name)
            .unwrap()
            .clone()
    }

    #[test]
    fn a_pi_fits_its_profile_and_every_mismatch_of_another_board_is_listed() {
        let all = Needs {
            delay: true,
            rate: true,
            firewall: true,
            limits: true,
            userspace: false,
            freeze: true,
        };
        let pi = profile("raspberry-pi-5-8gb");
        assert_eq!(
            check_board("pi-1", &pi_facts(), &pi, all),
            Vec::<String>::new()
        );
        // A stock Jetson Orin NX bound to the Pi's profile, unprivileged, on cgroup v1.
        let orin = Facts {
            cores: 8,
            memory_bytes: 16_000_000_000,
            netem: false,
            cap_net_admin: false,
            cap_sys_admin: false,
            cap_net_raw: false,
            cgroup: "v1".into(),
            nftables_error: Some("Operation not permitted".into()),
            ..pi_facts()
        };
        let p = check_board("orin-1", &orin, &pi, all);
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].contains("8 CPUs") && p[1].contains("memory"), "{p:#?}");
        assert!(
            p.iter()
                .any(|m| m.contains("lacks sch_netem (delay), so linkem")
                    && m.contains("lacks CAP_SYS_ADMIN and CAP_NET_RAW")),
            "{p:#?}"
        );
        assert!(p.iter().any(|m| m.contains("CAP_NET_ADMIN")));
        // What the scenario does not need is not asked for.
        let p = check_board(
            "orin-1",
            &Facts {
                netem: false,
                ..pi_facts()
            },
            &pi,
            Needs::default(),
        );
        assert!(p.is_empty(), "{p:#?}");
        let amd = Facts {
            arch: "amd64".into(),
            ..pi_facts()
        };
        assert!(check_board("x", &amd, &pi, Needs::default())[0].contains("amd64"));
    }

    #[test]
    fn boards_without_netem_or_htb_carry_their_links_in_a_cell() {
        let delay = Needs {
            delay: true,
            firewall: true,
            ..Needs::default()
        };
        let rate = Needs {
            rate: true,
            ..Needs::default()
        };
        let jetson = Facts {
            netem: false,
            ..pi_facts()
        };
        let pi = pi_facts();
        assert!(delay.cell(&jetson) && !delay.cell(&pi));
        // The Jetson's htb carries a rate alone.
        assert!(!rate.cell(&jetson));
        assert!(rate.cell(&Facts {
            htb: false,
            ..pi_facts()
        }));
        // `impairment: userspace` asks for linkem wherever a board shapes anything.
        let userspace = Needs {
            userspace: true,
            ..delay
        };
        assert!(userspace.cell(&pi));
        assert!(
            Needs {
                userspace: true,
                firewall: true,
                ..Needs::default()
            }
            .cell(&pi)
        );
        assert!(
            !Needs {
                userspace: true,
                ..Needs::default()
            }
            .cell(&pi)
        );
        // Root on a Jetson: nothing to report (its profile's cores and memory aside).
        let orin = profile("raspberry-pi-5-8gb");
        assert_eq!(
            check_board("orin", &jetson, &orin, delay),
            Vec::<String>::new()
        );
        // Without CAP_NET_RAW (linkem's packet sockets) the cell cannot run: said before the run.
        let p = check_board(
            "orin",
            &Facts {
                cap_net_raw: false,
                ..jetson.clone()
            },
            &orin,
            delay,
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("lacks CAP_NET_RAW (run it as root"), "{p:#?}");
        // NAT needs nftables even where the scenario drops nothing.
        let p = check_board(
            "orin",
            &Facts {
                nftables_error: Some("no nf_tables".into()),
                ..jetson
            },
            &orin,
            Needs {
                rate: true,
                userspace: true,
                ..Needs::default()
            },
        );
        assert!(
            p.len() == 1 && p[0].contains("NAT, which fails: no nf_tables"),
            "{p:#?}"
        );
    }

    #[test]
    fn a_freeze_needs_the_agents_cgroup() {
        let pi = profile("raspberry-pi-5-8gb");
        let freeze = Needs {
            freeze: true,
            firewall: true,
            ..Needs::default()
        };
        assert!(check_board("pi", &pi_facts(), &pi, freeze).is_empty());
        let user = Facts {
            euid: 1001,
            cgroup_error: Some("the agent is not root".into()),
            ..pi_facts()
        };
        let p = check_board("pi", &user, &pi, freeze);
        assert!(p.len() == 1 && p[0].contains("node-down freeze"), "{p:#?}");
        assert!(check_board("pi", &user, &pi, Needs::default()).is_empty());
    }
}
