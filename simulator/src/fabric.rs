//! The run's network: one fabric namespace with a bridge per site and the routing between
//! sites, and one namespace per node joined to its site's bridge by a veth pair.
//!
//! ```text
//!   node ns "edgesim-<run>-gw-1"        fabric ns "edgesim-<run>-fabric"        node ns "…-sink"
//!   eth0 10.90.1.2/24 ── veth ── n1 ─┐                                  ┌─ n0 ── veth ── eth0 10.90.0.2/24
//!   default via 10.90.1.1            s1 (bridge, 10.90.1.1/24) ⇄ routing ⇄ s0 (bridge, 10.90.0.1/24)
//! ```
//! Traffic between nodes of one site is bridged; traffic between sites is routed by the
//! fabric namespace, which is where WAN impairments, partitions and loss are applied (see
//! `shaping`). The host's namespace is never touched: the node ends of the veth pairs are
//! created directly inside the node namespaces.
//!
//! This code is target-neutral: it takes namespace file descriptors, not names under
//! `/run/netns`, so the docker target hands it the namespaces of its containers
//! (`/proc/<pid>/ns/net`) in place of named node namespaces. [`Names`] only label objects
//! in messages (and name the hosts files of named namespaces).
//!
//! Descriptors: a named node namespace is opened only while it is built, [`CHUNK`] nodes at
//! a time, and whenever something enters it later ([`NodeNs::open`]); a container's is held
//! (one per node, [`NodeNs::Held`]). Netlink sockets inside nodes live only while their chunk
//! is configured. The fabric keeps two descriptors of its own: the routing namespace and its
//! netlink socket.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use rtnetlink::Handle;

use crate::host::{HostError, Result, link, ns};
use crate::scenario::Plan;

/// Interface name of a node inside its namespace.
pub const NODE_IF: &str = "eth0";

/// How many netlink requests are kept in flight at once during bring-up.
const PARALLEL: usize = 64;

/// How many nodes are built at a time (see [`Fabric::build`]): enough to keep [`PARALLEL`]
/// requests in flight, few enough that bring-up holds few descriptors at once.
pub const CHUNK: usize = 256;

/// Namespace names of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Names {
    pub fabric: String,
    pub nodes: Vec<String>,
}

impl Names {
    pub fn new(run: &str, plan: &Plan) -> Self {
        Names {
            fabric: format!("{}-fabric", prefix(run)),
            nodes: plan
                .nodes
                .iter()
                .map(|n| format!("{}-{}", prefix(run), n.name))
                .collect(),
        }
    }
    /// Every namespace, fabric first.
    pub fn all(&self) -> Vec<String> {
        std::iter::once(self.fabric.clone())
            .chain(self.nodes.iter().cloned())
            .collect()
    }
}

/// Prefix of every namespace of run `run`.
pub fn prefix(run: &str) -> String {
    format!("edgesim-{run}")
}

/// Path of the hosts file of namespace `ns` (the `ip netns exec` convention, so
/// `ip netns exec <ns> ping sink` resolves names too).
pub fn hosts_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Where a node's network namespace is found when something has to enter it.
#[derive(Debug)]
pub enum NodeNs {
    /// A named namespace (`/run/netns/NAME`), opened each time it is needed: a lab holds no
    /// descriptor per node once it is up.
    Named(PathBuf),
    /// A namespace known only by a descriptor (a container's `/proc/<pid>/ns/net`), held for
    /// the lab's life because the path may name another namespace later.
    Held(OwnedFd),
}

impl NodeNs {
    /// A descriptor of the namespace, for the caller to close when done; `what` names it in
    /// errors.
    pub fn open(&self, what: &str) -> Result<OwnedFd> {
        match self {
            NodeNs::Named(p) => {
                std::fs::File::open(p)
                    .map(OwnedFd::from)
                    .map_err(|source| HostError::NsOpen {
                        name: what.to_string(),
                        source,
                    })
            }
            NodeNs::Held(fd) => fd
                .try_clone()
                .map_err(|e| HostError::io("duplicating the namespace handle of", what, e)),
        }
    }

    /// Descriptors the lab holds for this node while it is up.
    pub fn held(&self) -> usize {
        match self {
            NodeNs::Named(_) => 0,
            NodeNs::Held(_) => 1,
        }
    }
}

pub struct Fabric {
    pub names: Names,
    pub fabric_fd: OwnedFd,
    pub fabric_nl: Handle,
    /// Per node, in plan order: its namespace.
    pub nodes: Vec<NodeNs>,
    /// Per site: index of its bridge in the fabric namespace.
    pub bridges: Vec<u32>,
    /// Per node: index of the fabric end of its veth pair.
    pub ports: Vec<u32>,
    /// Per node: index of `eth0` inside the node.
    pub node_ifs: Vec<u32>,
}

impl Fabric {
    /// Builds the fabric in the named namespaces in `names` (already created by the caller,
    /// who recorded them for cleanup), opening each node's namespace only while its part is
    /// built ([`Fabric::build`]).
    pub async fn build_named(plan: &Plan, names: Names, userspace: bool) -> Result<Fabric> {
        let fabric_fd = ns::open(&names.fabric)?;
        let nodes = names
            .nodes
            .iter()
            .map(|n| NodeNs::Named(ns::path(n)))
            .collect();
        Fabric::build(plan, names, fabric_fd, nodes, userspace).await
    }

    /// Builds bridges, veth pairs, addresses and routes in the namespaces it is handed: the
    /// routing namespace `fabric_fd` and one per node (`nodes`, in plan order), labelled by
    /// `names` in messages.
    ///
    /// Nodes are built [`CHUNK`] at a time: their namespaces opened, their veth pairs
    /// created, a netlink socket opened inside each to configure its end, and all of it
    /// closed before the next chunk. So bring-up holds at most `2 × CHUNK` descriptors for
    /// nodes whatever the lab's size, and the lab [`NodeNs::held`] per node after it.
    ///
    /// Assumes: the namespaces are empty but for loopback. Guarantees: on error, what was
    /// built lives inside those namespaces (and the node ends of veth pairs inside the
    /// nodes'), so deleting the fabric namespace and the nodes undoes everything.
    ///
    /// `userspace`: put each site's gateway behind a pair of interfaces (`q<i>`, `g<i>`) for
    /// the userspace link emulator to relay between, instead of on the bridge.
    pub async fn build(
        plan: &Plan,
        names: Names,
        fabric_fd: OwnedFd,
        nodes: Vec<NodeNs>,
        userspace: bool,
    ) -> Result<Fabric> {
        if nodes.len() != plan.nodes.len() || names.nodes.len() != plan.nodes.len() {
            return Err(HostError::other(
                "building the fabric of",
                names.fabric.clone(),
                format!(
                    "{} node namespaces ({} names) for {} nodes",
                    nodes.len(),
                    names.nodes.len(),
                    plan.nodes.len()
                ),
            ));
        }

        let mut socks = ns::netlink_sockets(&[(&fabric_fd, names.fabric.as_str())])?;
        let Some(sock) = socks.pop() else {
            return Err(HostError::other(
                "opening netlink in",
                names.fabric.clone(),
                "no socket came back",
            ));
        };
        let fabric_nl = ns::handle_from_socket(sock);

        // Fabric: loopback, forwarding, and no bridge-netfilter double processing.
        link::loopback_up(&fabric_nl, &names.fabric).await?;
        link::sysctl_in(&fabric_fd, &names.fabric, "net.ipv4.ip_forward", "1")?;
        let fabric_name = names.fabric.clone();
        ns::run_in_fd(&fabric_fd, &names.fabric, move || {
            no_link_local(&fabric_name)
        })??;

        // A bridge per site. With kernel shaping it holds the site's gateway address; with the
        // userspace emulator the gateway sits behind the emulator instead:
        //   bridge s<i> — p<i> ⇄ q<i> [linkem] g<i> ⇄ w<i> (gateway address, routing)
        let mut bridges = Vec::with_capacity(plan.sites.len());
        for (i, s) in plan.sites.iter().enumerate() {
            let name = format!("s{i}");
            let what = format!("bridge {name} (site {})", s.name);
            // txqueuelen matters once a qdisc is attached: htb's default leaf uses it.
            let idx = link::add_bridge(&fabric_nl, &name, plan.mtu, 1000).await?;
            let gw_dev = if userspace {
                link::add_veth_pair(
                    &fabric_nl,
                    &format!("p{i}"),
                    &format!("q{i}"),
                    Some(idx),
                    plan.mtu,
                )
                .await?;
                let (_, w) = link::add_veth_pair(
                    &fabric_nl,
                    &format!("g{i}"),
                    &format!("w{i}"),
                    None,
                    plan.mtu,
                )
                .await?;
                w
            } else {
                idx
            };
            link::add_addr(&fabric_nl, gw_dev, s.gateway, s.subnet.prefix_len(), &what).await?;
            bridges.push(idx);
        }

        let mut ports: Vec<u32> = Vec::with_capacity(plan.nodes.len());
        let mut node_ifs: Vec<u32> = Vec::with_capacity(plan.nodes.len());
        for start in (0..plan.nodes.len()).step_by(CHUNK) {
            let range = start..(start + CHUNK).min(plan.nodes.len());
            let fds: Vec<OwnedFd> = range
                .clone()
                .map(|i| nodes[i].open(&names.nodes[i]))
                .collect::<Result<_>>()?;
            // One thread enters each node of the chunk: no link-local address for the `eth0`
            // about to be created there, and a netlink socket to configure it with.
            let targets: Vec<(&OwnedFd, &str)> = fds
                .iter()
                .zip(names.nodes[range.clone()].iter().map(String::as_str))
                .collect();
            let node_nl: Vec<Handle> = ns::netlink_sockets_with(&targets, no_link_local)?
                .into_iter()
                .map(ns::handle_from_socket)
                .collect();
            drop(targets);

            // A veth pair per node: fabric end `n<i>` on the site bridge, node end `eth0`.
            let made: Vec<u32> = stream::iter(range.clone().zip(&fds))
                .map(|(i, fd)| {
                    let h = fabric_nl.clone();
                    let master = bridges[plan.nodes[i].site];
                    let fd = fd.as_raw_fd();
                    async move {
                        link::add_veth_into(
                            &h,
                            &format!("n{i}"),
                            Some(master),
                            NODE_IF,
                            fd,
                            plan.mtu,
                        )
                        .await
                    }
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            ports.extend(made);

            drop(fds);

            // Inside each node: loopback, address, default route through the site gateway.
            // A node's netlink socket closes when its last handle goes, at the end of its
            // future.
            let configured: Vec<u32> = stream::iter(range.zip(node_nl))
                .map(|(i, h)| {
                    let n = &plan.nodes[i];
                    let what = names.nodes[i].clone();
                    let site = &plan.sites[n.site];
                    async move {
                        link::loopback_up(&h, &what).await?;
                        let idx = link::index_of(&h, NODE_IF).await?;
                        link::set_up(&h, idx, true, &what).await?;
                        link::add_addr(&h, idx, n.addr, site.subnet.prefix_len(), &what).await?;
                        link::add_default_route(&h, site.gateway, &what).await?;
                        Ok::<u32, HostError>(idx)
                    }
                })
                .buffered(PARALLEL)
                .try_collect()
                .await?;
            node_ifs.extend(configured);
        }

        Ok(Fabric {
            names,
            fabric_fd,
            fabric_nl,
            nodes,
            bridges,
            ports,
            node_ifs,
        })
    }

    /// Cuts or restores a node's network by taking the fabric end of its veth pair down or
    /// up. The node sees its carrier go (`NO-CARRIER`), as a board whose cable is pulled:
    /// its address and routes stay, packets go nowhere.
    pub async fn set_node_link(&self, node: usize, up: bool) -> Result<()> {
        link::set_up(
            &self.fabric_nl,
            self.ports[node],
            up,
            &self.names.nodes[node],
        )
        .await
    }

    /// Waits until the fabric ends of `nodes`' veths are operationally up, i.e. their bridge
    /// ports forward. Setting a link up returns before that: the kernel applies the carrier
    /// change from deferred work (linkwatch, under the RTNL lock, which the freeing of a
    /// previous lab's namespaces also takes), some time later, and packets sent meanwhile are
    /// lost. One interface dump per poll, however many nodes.
    ///
    /// How long that takes grows with the lab and with what else the kernel is doing, so there
    /// is no deadline: the wait goes on while the kernel makes progress — more of the ports
    /// up, or fewer network namespaces alive on the host (it is freeing old ones) — and fails
    /// once neither has moved for `stall` ([`LINK_STALL`]).
    pub async fn wait_links(&self, nodes: &[usize], stall: Duration) -> Result<()> {
        let mut progress = Progress::new(stall);
        let mut pause = Duration::from_millis(1);
        loop {
            let up = link::oper_up_indexes(&self.fabric_nl).await?;
            let mut missing = nodes.iter().filter(|&&n| !up.contains(&self.ports[n]));
            let Some(&node) = missing.next() else {
                return Ok(());
            };
            let done = nodes.len() - 1 - missing.count();
            let now = tokio::time::Instant::now();
            if let Err(waited) = progress.observe(now, done, live_namespaces()) {
                return Err(HostError::other(
                    "waiting for the link of",
                    self.names.nodes[node].clone(),
                    format!(
                        "not carrying traffic after {:.1} s: {done} of {} ports up, and no \
                         progress in the kernel (no port came up, no namespace was freed) \
                         for {:.1} s",
                        waited.as_secs_f64(),
                        nodes.len(),
                        stall.as_secs_f64()
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            // Dumping thousands of interfaces costs CPU that the kernel needs for the work
            // being waited for: poll less often the longer the wait lasts.
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Makes interfaces created from now on in the calling thread's namespace get no IPv6
/// link-local address (`net.ipv6.conf.default.addr_gen_mode = 1`, "none"). Nodes are
/// addressed over IPv4 only, and an interface with a link-local address multicasts duplicate
/// address detection, MLD reports and router solicitations as it comes up, which a bridge
/// floods to every port: with a thousand nodes on a site's bridge that is a million and
/// more packets to deliver in the first seconds, all competing with bring-up. IPv6 itself
/// stays on (`::1`, sockets bound to `::`). Nothing to do where the kernel has no IPv6.
fn no_link_local(what: &str) -> Result<()> {
    match std::fs::write("/proc/sys/net/ipv6/conf/default/addr_gen_mode", "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(HostError::io(
            "writing sysctl",
            format!("net.ipv6.conf.default.addr_gen_mode in {what}"),
            e,
        )),
        _ => Ok(()),
    }
}

/// How long the kernel may make no progress before a wait for links gives up (see
/// [`Fabric::wait_links`]).
pub const LINK_STALL: Duration = Duration::from_secs(5);

/// Progress of work the kernel does, from periodic observations: how many of the awaited
/// items are done, and how many network namespaces are alive (fewer means it is freeing
/// them, which competes with the work awaited). Gives up only after a stretch of time with
/// no progress of either kind.
#[derive(Debug, Clone)]
pub struct Progress {
    stall: Duration,
    start: Option<tokio::time::Instant>,
    last_progress: Option<tokio::time::Instant>,
    best_done: usize,
    fewest_namespaces: Option<usize>,
}

impl Progress {
    pub fn new(stall: Duration) -> Self {
        Progress {
            stall,
            start: None,
            last_progress: None,
            best_done: 0,
            fewest_namespaces: None,
        }
    }

    /// Records an observation made at `now`: `done` items finished, `namespaces` alive (when
    /// known). `Err(waited)`, the time since the first observation, once nothing has
    /// progressed for the stall time.
    pub fn observe(
        &mut self,
        now: tokio::time::Instant,
        done: usize,
        namespaces: Option<usize>,
    ) -> std::result::Result<(), Duration> {
        let start = *self.start.get_or_insert(now);
        let mut moved = self.last_progress.is_none() || done > self.best_done;
        self.best_done = self.best_done.max(done);
        if let Some(n) = namespaces {
            moved |= self.fewest_namespaces.is_some_and(|f| n < f);
            self.fewest_namespaces = Some(self.fewest_namespaces.map_or(n, |f| f.min(n)));
        }
        if moved {
            self.last_progress = Some(now);
        }
        match self.last_progress {
            Some(t) if now.duration_since(t) >= self.stall => Err(now.duration_since(start)),
            _ => Ok(()),
        }
    }
}

/// Network namespaces alive on this host, those the kernel is still freeing included: the
/// active objects of the `net_namespace` slab cache (`/proc/slabinfo`, readable by root).
/// `None` when unknown.
pub fn live_namespaces() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slab_active(&text, "net_namespace")
}

/// The active objects of slab cache `cache` in `/proc/slabinfo` text.
pub fn slab_active(slabinfo: &str, cache: &str) -> Option<usize> {
    slabinfo.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        if f.next()? != cache {
            return None;
        }
        f.next()?.parse().ok()
    })
}

/// The socket factory of node `node` (started on first use and kept in `slots`).
pub fn node_sockets(
    fabric: &Fabric,
    slots: &mut [Option<ns::SocketFactory>],
    node: usize,
) -> Result<ns::SocketFactory> {
    if let Some(f) = &slots[node] {
        return Ok(f.clone());
    }
    let fd = fabric.nodes[node].open(&fabric.names.nodes[node])?;
    let f = ns::SocketFactory::start(fd, &fabric.names.nodes[node])?;
    slots[node] = Some(f.clone());
    Ok(f)
}

/// Writes a hosts file per node (`/etc/netns/<ns>/hosts`) naming every node of the run.
/// Returns the directories created, for cleanup.
pub fn write_hosts(plan: &Plan, names: &Names) -> Result<Vec<PathBuf>> {
    let mut body =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in &plan.nodes {
        body.push_str(&format!("{}\t{}\n", n.addr, n.name));
    }
    let mut dirs = Vec::with_capacity(names.nodes.len());
    for ns_name in &names.nodes {
        let dir = hosts_dir(ns_name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| HostError::io("creating", dir.display().to_string(), e))?;
        let path = dir.join("hosts");
        std::fs::write(&path, &body)
            .map_err(|e| HostError::io("writing", path.display().to_string(), e))?;
        dirs.push(dir);
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_wait_lasts_while_the_kernel_makes_progress() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Progress::new(Duration::from_secs(5));
        // Ports come up slowly, one every 4 s, for a minute: never a stall of 5 s.
        for i in 0..15 {
            assert_eq!(p.observe(at(i * 4000), i as usize, None), Ok(()));
        }
        // Then nothing for 5 s: the wait fails, and says how long it lasted in all.
        assert_eq!(p.observe(at(60_000), 14, None), Ok(()));
        assert_eq!(
            p.observe(at(61_000), 14, None),
            Err(Duration::from_millis(61_000))
        );

        // The kernel freeing a previous lab's namespaces is progress too, even with no port up.
        let mut p = Progress::new(Duration::from_secs(5));
        assert_eq!(p.observe(at(0), 0, Some(8001)), Ok(()));
        for i in 1..=4usize {
            assert_eq!(
                p.observe(at(i as u64 * 4000), 0, Some(8001 - i * 1000)),
                Ok(())
            );
        }
        // Namespaces created meanwhile (by someone else) are not progress.
        assert_eq!(p.observe(at(20_000), 0, Some(9000)), Ok(()));
        assert_eq!(
            p.observe(at(21_000), 0, Some(9000)),
            Err(Duration::from_secs(21))
        );

        // A port that goes down again does not count twice when it comes back.
        let mut p = Progress::new(Duration::from_secs(1));
        assert_eq!(p.observe(at(0), 3, None), Ok(()));
        assert_eq!(p.observe(at(500), 2, None), Ok(()));
        assert_eq!(p.observe(at(1000), 3, None), Err(Duration::from_secs(1)));
    }

    #[test]
    fn live_namespaces_come_from_the_slab_line() {
        let text = "slabinfo - version: 2.1\n\
             # name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n\
             net_namespace_x       1      7   4288    7    8 : tunables    0    0    0 : slabdata     10     10      0\n\
             net_namespace         28     70   4288    7    8 : tunables    0    0    0 : slabdata     10     10      0\n";
        assert_eq!(slab_active(text, "net_namespace"), Some(28));
        assert_eq!(slab_active(text, "inet_peer"), None);
    }
}
