//! A *cell* on a board: the scenario's workloads in a network namespace of their own behind a
//! veth pair that linkem relays — how a board whose kernel has no sch_netem (stock Jetson L4T)
//! or no sch_htb still carries delay, jitter and rate faithfully, and how `impairment:
//! userspace` runs on boards.
//!
//! ```text
//!   board (its own namespace)          relay (anonymous)             cell (pinned by the agent)
//!   eth0 ── NAT ── esc-h 169.254.237.1 ═ esc-ra ⇄ linkem ⇄ esc-rb ═ esc-c 169.254.237.2
//! ```
//!
//! - The board keeps its address and its management SSH: nothing of the board's own traffic
//!   crosses the relay. New flows that arrive on the lab interface for the board's address
//!   (but for its SSH port) are sent on to the cell, and what the cell sends leaves as the
//!   board (nftables NAT in the agent's table, see [`CellNat`]); peers see the board's address
//!   both ways, and a board with a cell and one without talk as before.
//! - linkem carries, per peer, what the board's kernel would: what the cell *sends* gets the
//!   path's rate, delay, jitter, loss with delay, duplication, corruption and reordering
//!   (netem's decisions, seeded from the run); what *arrives* is dropped by cuts, partitions
//!   and loss, as the board's input hook would. One-way semantics are those of every board.
//! - The relay's namespace has no name: only the agent holds it. When the agent dies, the
//!   kernel frees it, and both veth pairs with it, so a cell cannot outlive its agent's data
//!   path; a restarted agent removes the rest (the cell, pinned beside the agent's state file
//!   where an unprivileged agent may create it; the NAT table; `ip_forward`) from the state
//!   file.
//! - Workloads enter the cell through `edgesim agent-enter` ([`enter`]), the agent's own
//!   binary: no `ip netns` or `nsenter` is needed on the board. (It also puts every workload
//!   in the run's cgroup on the board, cell or not.)
//!
//! Needs CAP_SYS_ADMIN (namespaces) and CAP_NET_RAW (linkem's packet sockets) beside
//! CAP_NET_ADMIN: root, or the launcher of `ansible/prepare-board.yml` on boards without netem.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use super::agent::Desired;
use crate::faults::emulator::impairment;
use crate::host::nft::CellNat;
use crate::host::{HostError, Result, link, ns};
use crate::linkem::{Dir, DirectionConfig, Impairment, Loss, Relay, RelayConfig, Rule};

/// The board's end of the cell's link, in the board's namespace.
pub const HOST_IF: &str = "esc-h";
/// The relay's ends: toward the board (`a`) and toward the cell (`b`).
pub const RELAY_A: &str = "esc-ra";
pub const RELAY_B: &str = "esc-rb";
/// The cell's interface.
pub const CELL_IF: &str = "esc-c";
/// The link between board and cell (link-local: never routed off the board).
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 237, 1);
pub const CELL_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 237, 2);
const PREFIX: u8 = 30;
const MTU: u32 = 1500;
const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What the state file records of a cell, for the agent after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellState {
    /// Where the cell's namespace is pinned (a bind mount beside the agent's state file).
    pub netns: PathBuf,
    /// `ip_forward` before the cell (restored with it).
    pub forward_was: String,
}

/// Where the cell of an agent whose state lives at `state` is pinned: beside it (one per
/// agent where boards share a filesystem, as the tests' namespace boards do).
pub fn netns_path(state: &Path) -> PathBuf {
    state.with_extension("cell")
}

/// A running cell.
pub struct Cell {
    relay: Option<Relay>,
    relay_ns: OwnedFd,
    relay_nl: rtnetlink::Handle,
    pub state: CellState,
    /// The board's address on the lab network (what the cell's traffic leaves as).
    pub board: Ipv4Addr,
    rules: [DirectionConfig; 2],
}

impl Cell {
    /// Builds the cell: namespaces, both veth pairs, addresses and routes, forwarding, and a
    /// relay that passes everything until [`Cell::update`], its random streams from `seed`.
    /// On error what was made is removed.
    pub async fn create(
        root: &rtnetlink::Handle,
        st: CellState,
        board: Ipv4Addr,
        seed: u64,
    ) -> Result<Cell> {
        let relay_ns = ns::create_anonymous("the cell's relay")?;
        let name = st.netns.display().to_string();
        ns::delete_at(&st.netns, &name)?;
        ns::create_at(&st.netns)?;
        let made = async {
            let cell_fd = ns::open_at(&st.netns)?;
            let disable_v6 = |_: &str| {
                for k in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{k}/disable_ipv6"), "1")
                        .or_else(|e| match e.kind() {
                            // A kernel without IPv6 has nothing to disable.
                            std::io::ErrorKind::NotFound => Ok(()),
                            _ => Err(e),
                        })
                        .map_err(|e| HostError::io("disabling IPv6 in", "the cell's relay", e))?;
                }
                Ok(())
            };
            let mut socks =
                ns::netlink_sockets_with(&[(&relay_ns, "the cell's relay")], disable_v6)?;
            socks.extend(ns::netlink_sockets(&[(&cell_fd, name.as_str())])?);
            let mut socks = socks.into_iter().map(ns::handle_from_socket);
            let (Some(relay_nl), Some(cell_nl)) = (socks.next(), socks.next()) else {
                return Err(HostError::other(
                    "opening netlink sockets for",
                    "the cell",
                    "missing",
                ));
            };
            let h = link::add_veth_into(root, HOST_IF, None, RELAY_A, relay_ns.as_raw_fd(), MTU)
                .await?;
            link::add_addr(root, h, HOST_ADDR, PREFIX, HOST_IF).await?;
            let rb =
                link::add_veth_into(&relay_nl, RELAY_B, None, CELL_IF, cell_fd.as_raw_fd(), MTU)
                    .await?;
            let ra = link::index_of(&relay_nl, RELAY_A).await?;
            link::set_up(&relay_nl, ra, true, RELAY_A).await?;
            link::set_up(&relay_nl, rb, true, RELAY_B).await?;
            link::loopback_up(&cell_nl, &name).await?;
            let c = link::index_of(&cell_nl, CELL_IF).await?;
            link::add_addr(&cell_nl, c, CELL_ADDR, PREFIX, CELL_IF).await?;
            link::set_up(&cell_nl, c, true, CELL_IF).await?;
            link::add_default_route(&cell_nl, HOST_ADDR, &name).await?;
            std::fs::write(FORWARD, "1")
                .map_err(|e| HostError::io("writing", "net.ipv4.ip_forward", e))?;
            let ns = relay_ns
                .try_clone()
                .map_err(|e| HostError::io("duplicating", "the relay's namespace handle", e))?;
            let cfg = RelayConfig::new("cell", ns, "the cell's relay", RELAY_A, RELAY_B, seed);
            let relay = Relay::start(cfg).map_err(|e| {
                HostError::other("starting the link emulator of", "the cell", e.to_string())
            })?;
            Ok((relay, relay_nl))
        }
        .await;
        match made {
            Ok((relay, relay_nl)) => Ok(Cell {
                relay: Some(relay),
                relay_ns,
                relay_nl,
                state: st,
                board,
                rules: Default::default(),
            }),
            Err(e) => {
                let _ = remove(root, &st).await;
                Err(e)
            }
        }
    }

    /// The rules for `d`, in force from the next packet; unchanged directions are left alone
    /// (their queues, statistics and random streams carry on).
    pub fn update(&mut self, d: &Desired) -> Result<()> {
        let (incoming, outgoing) = rules(d, self.board);
        let Some(relay) = &self.relay else {
            return Ok(());
        };
        for (dir, cfg) in [(Dir::AToB, incoming), (Dir::BToA, outgoing)] {
            let i = usize::from(dir == Dir::BToA);
            if self.rules[i] != cfg {
                relay.update(dir, cfg.clone()).map_err(|e| {
                    HostError::other("updating the link emulator of", "the cell", e.to_string())
                })?;
                self.rules[i] = cfg;
            }
        }
        Ok(())
    }

    /// The NAT rules that put the cell behind the board's address on `iface`.
    pub fn nat(&self, iface: &str, keep_port: u16) -> CellNat {
        CellNat {
            iface: iface.to_string(),
            board: self.board,
            cell: CELL_ADDR,
            keep_port,
        }
    }

    /// A socket factory inside the cell (probes, readiness and metrics from the workloads'
    /// side of the relay).
    pub fn sockets(&self) -> Result<ns::SocketFactory> {
        ns::SocketFactory::start(ns::open_at(&self.state.netns)?, "the cell")
    }

    /// Removes the cell; keeps going past errors. Returns what was undone and the errors.
    pub async fn destroy(mut self, root: &rtnetlink::Handle) -> (Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        if let Some(r) = self.relay.take()
            && let Err(e) = r.stop()
        {
            errors.push(format!("stopping the cell's relay: {e}"));
        }
        if let Ok(i) = link::index_of(&self.relay_nl, RELAY_B).await
            && let Err(e) = link::delete(&self.relay_nl, i, RELAY_B).await
        {
            errors.push(e.to_string());
        }
        drop(self.relay_ns);
        let (done, more) = remove(root, &self.state).await;
        errors.extend(more);
        (done, errors)
    }
}

/// Removes what a cell leaves in the board's namespace and on its filesystem: the board's
/// veth end (its peer goes with it), the named cell, and `ip_forward` as it was. Idempotent:
/// also what a restarted agent runs for a cell its crashed predecessor left.
pub async fn remove(root: &rtnetlink::Handle, st: &CellState) -> (Vec<String>, Vec<String>) {
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    if let Ok(i) = link::index_of(root, HOST_IF).await {
        match link::delete(root, i, HOST_IF).await {
            Ok(()) => done.push(format!("the cell's link {HOST_IF}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if st.netns.exists() {
        match ns::delete_at(&st.netns, "the cell") {
            Ok(()) => done.push(format!("the cell {}", st.netns.display())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let now = std::fs::read_to_string(FORWARD).unwrap_or_default();
    if now.trim() != st.forward_was.trim() {
        match std::fs::write(FORWARD, st.forward_was.trim()) {
            Ok(()) => done.push(format!("net.ipv4.ip_forward = {}", st.forward_was.trim())),
            Err(e) => errors.push(format!("restoring net.ipv4.ip_forward: {e}")),
        }
    }
    (done, errors)
}

/// `ip_forward` now (recorded before a cell turns it on).
pub fn forward_now() -> Result<String> {
    std::fs::read_to_string(FORWARD)
        .map(|s| s.trim().to_string())
        .map_err(|e| HostError::io("reading", "net.ipv4.ip_forward", e))
}

fn v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(v) => Some(*v),
        IpNet::V6(_) => None,
    }
}

fn host(a: IpAddr) -> Option<Ipv4Net> {
    match a {
        IpAddr::V4(v) => Some(Ipv4Net::from(v)),
        IpAddr::V6(_) => None,
    }
}

/// The relay's rules for `d` on the board at `board`: `(incoming, outgoing)` — what arrives
/// (toward the cell) dropped by blocks, cuts and loss from each peer, in that order; what the
/// cell sends shaped per destination with the path's whole impairment. (IPv6 entries are
/// left out: the lab network of boards is IPv4.)
pub fn rules(d: &Desired, board: Ipv4Addr) -> (DirectionConfig, DirectionConfig) {
    let mut incoming = Vec::new();
    for (i, b) in d.blocks.iter().enumerate() {
        let to: Vec<Ipv4Net> = b.to.iter().filter_map(v4).collect();
        if !(b.to.is_empty() || to.iter().any(|n| n.contains(&board))) {
            continue;
        }
        let from: Vec<Option<Ipv4Net>> = if b.from.is_empty() {
            vec![None]
        } else {
            b.from.iter().filter_map(v4).map(Some).collect()
        };
        for (j, src) in from.into_iter().enumerate() {
            incoming.push(Rule {
                name: format!("block {} #{i}.{j}", b.name),
                src,
                dst: None,
                imp: Impairment::blocked(),
            });
        }
    }
    for p in &d.incoming {
        let Some(src) = host(p.addr) else { continue };
        let imp = if p.params.cut {
            Impairment::blocked()
        } else if p.params.loss > 0.0 {
            Impairment {
                loss: Loss::random(p.params.loss),
                ..Impairment::default()
            }
        } else {
            continue;
        };
        incoming.push(Rule {
            name: format!("from {}", p.addr),
            src: Some(src),
            dst: None,
            imp,
        });
    }
    let outgoing = d
        .peers
        .iter()
        .filter_map(|p| {
            Some(Rule {
                name: format!("to {}", p.addr),
                src: None,
                dst: Some(host(p.addr)?),
                imp: impairment(&p.params),
            })
        })
        .collect();
    (
        DirectionConfig { rules: incoming },
        DirectionConfig { rules: outgoing },
    )
}

/// `edgesim agent-enter`: this process joins, where given, the cgroup of `cgroup` (the node's
/// systemd scope's `workloads` where the agent started one, in the system's manager or its
/// user's: [`super::scope::join`]; else `cgroup` itself relative to the hierarchies' roots:
/// `edgesim/<run>/<node>`, in every v1 hierarchy) and the cell pinned
/// at `netns`, gives up every capability it was handed for that (ambient ones: a workload runs
/// with its user's own rights), and becomes `argv`. Returns only on error.
pub fn enter(netns: Option<&Path>, cgroup: Option<&str>, argv: &[String]) -> anyhow::Error {
    use anyhow::Context as _;
    use std::os::unix::process::CommandExt as _;
    let joined = (|| -> anyhow::Result<()> {
        if let Some(rel) = cgroup {
            let in_scope = match super::scope::Manager::current() {
                Ok(m) => super::scope::join(&m, rel)
                    .with_context(|| format!("joining the workloads of {}", m.describe()))?,
                Err(_) => false,
            };
            if !in_scope {
                let cgs = crate::host::cgroup::Cgroups::detect()?;
                let cg = cgs.open(rel)?;
                anyhow::ensure!(cg.exists(), "the cgroup {rel} does not exist");
                cg.add_pid(std::process::id() as i32)
                    .with_context(|| format!("joining the cgroup {rel}"))?;
            }
        }
        if let Some(netns) = netns {
            let f = std::fs::File::open(netns)
                .with_context(|| format!("opening {}", netns.display()))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", netns.display()))?;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            tracing::debug!(
                "clearing ambient capabilities: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })();
    if let Err(e) = joined {
        return e;
    }
    let Some((prog, args)) = argv.split_first() else {
        return anyhow::anyhow!("agent-enter: no command");
    };
    let e = std::process::Command::new(prog).args(args).exec();
    anyhow::Error::new(e).context(format!("running {prog}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::plan::LinkParams;
    use crate::targets::device::agent::{Peer, WireBlock};
    use std::time::Duration;

    #[test]
    fn each_agent_pins_its_own_cell_beside_its_state() {
        let a = netns_path(Path::new("/run/edgesim/agent-net1.state"));
        assert_eq!(a, Path::new("/run/edgesim/agent-net1.cell"));
        assert_ne!(a, netns_path(Path::new("/run/edgesim/agent-net2.state")));
    }

    #[test]
    fn the_cell_drops_what_arrives_and_shapes_what_it_sends() {
        let board: Ipv4Addr = "192.0.2.9".parse().unwrap();
        let peer: IpAddr = "192.0.2.10".parse().unwrap();
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        let d = Desired {
            peers: vec![Peer {
                addr: peer,
                params: LinkParams {
                    delay: Some(Duration::from_millis(40)),
                    rate: Some(20_000_000),
                    ..LinkParams::default()
                },
            }],
            incoming: vec![
                Peer {
                    addr: peer,
                    params: LinkParams {
                        loss: 0.02,
                        ..LinkParams::default()
                    },
                },
                Peer {
                    addr: other,
                    params: LinkParams {
                        cut: true,
                        ..LinkParams::default()
                    },
                },
            ],
            blocks: vec![
                WireBlock {
                    name: "p".into(),
                    from: vec![
                        "192.0.2.10/32".parse().unwrap(),
                        "fd00::1/128".parse().unwrap(),
                    ],
                    to: vec!["192.0.2.0/28".parse().unwrap()],
                },
                // Not this board's: it is the other end's to drop.
                WireBlock {
                    name: "q".into(),
                    from: vec![],
                    to: vec!["192.0.2.10/32".parse().unwrap()],
                },
                WireBlock {
                    name: "isolate".into(),
                    from: vec![],
                    to: vec![],
                },
            ],
            ..Desired::default()
        };
        let (inc, out) = rules(&d, board);
        let names: Vec<&str> = inc.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "block p #0.0",
                "block isolate #2.0",
                "from 192.0.2.10",
                "from 192.0.2.11"
            ]
        );
        assert!(inc.rules[0].imp.blocked && inc.rules[1].imp.blocked && inc.rules[3].imp.blocked);
        assert_eq!(
            inc.rules[1].src, None,
            "isolation drops everything arriving"
        );
        assert_eq!(inc.rules[2].imp.loss, Loss::random(0.02));
        assert_eq!(out.rules.len(), 1);
        assert_eq!(out.rules[0].dst, Some("192.0.2.10/32".parse().unwrap()));
        assert_eq!(out.rules[0].imp.delay, Duration::from_millis(40));
        assert_eq!(out.rules[0].imp.rate, Some(20_000_000));
        inc.validate().unwrap();
        out.validate().unwrap();
    }
}
