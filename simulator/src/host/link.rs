//! Interfaces, addresses and routes over rtnetlink, on a handle bound to one namespace.
//!
//! Each function is one kernel request (or a create plus the lookup of the new index) so
//! callers can issue many of them concurrently on per-namespace handles: that is what lets a
//! 200-node fabric come up in well under a second. Deleting things that are already gone is
//! success, so teardown can run twice.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::{HostError, Result};

/// Whether an rtnetlink error means "no such object".
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| matches!(-c.get(), libc::ENOENT | libc::ENODEV | libc::ESRCH | libc::EADDRNOTAVAIL)))
}

/// Index of interface `name`.
pub async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(HostError::other("looking up", name, "no such interface")),
        Err(e) => Err(HostError::netlink("looking up", name, e)),
    }
}

/// Whether interface `index` is administratively up.
pub async fn is_up(h: &Handle, index: u32) -> Result<bool> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.flags.contains(LinkFlags::Up)),
        Ok(None) => Err(HostError::other(
            "reading",
            format!("interface {index}"),
            "gone",
        )),
        Err(e) => Err(HostError::netlink(
            "reading",
            format!("interface {index}"),
            e,
        )),
    }
}

/// The indexes of every interface in the handle's namespace that is operationally up
/// (one dump, however many interfaces there are).
pub async fn oper_up_indexes(h: &Handle) -> Result<std::collections::HashSet<u32>> {
    use netlink_packet_route::link::State;
    let mut s = h.link().get().execute();
    let mut up = std::collections::HashSet::new();
    loop {
        match s.try_next().await {
            Ok(Some(m)) => {
                if m.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::OperState(State::Up)))
                {
                    up.insert(m.header.index);
                }
            }
            Ok(None) => return Ok(up),
            Err(e) => return Err(HostError::netlink("listing", "interfaces", e)),
        }
    }
}

/// Sets interface `index` up or down.
pub async fn set_up(h: &Handle, index: u32, up: bool, what: &str) -> Result<()> {
    let b = LinkUnspec::new_with_index(index);
    let msg = if up { b.up() } else { b.down() }.build();
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(|e| HostError::netlink(if up { "setting up" } else { "setting down" }, what, e))
}

/// Creates a bridge (STP off, as Linux defaults) and brings it up; returns its index.
pub async fn add_bridge(h: &Handle, name: &str, mtu: u32, txqueuelen: u32) -> Result<u32> {
    let msg = LinkBridge::new(name)
        .mtu(mtu)
        .txqueuelen(txqueuelen)
        .up()
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| HostError::netlink("creating bridge", name, e))?;
    index_of(h, name).await
}

/// Creates a veth pair: `name` here, enslaved to `master` (when given) and up; its peer `peer_name` created
/// directly inside the namespace behind `peer_ns` (creating in place avoids the ~16 ms RCU
/// grace period that moving a device between namespaces costs). The peer stays down: the
/// kernel refuses (ENOTCONN) to bring up a peer created in another namespace in the same
/// request, so the caller sets it up from inside. Returns the index of the local end.
pub async fn add_veth_into(
    h: &Handle,
    name: &str,
    master: Option<u32>,
    peer_name: &str,
    peer_ns: RawFd,
    mtu: u32,
) -> Result<u32> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer_name.to_string())
        .mtu(mtu)
        .setns_by_fd(peer_ns)
        .build();
    let mut msg = LinkVeth::new(name, peer_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu);
    if let Some(m) = master {
        msg = msg.controller(m);
    }
    let msg = msg.up().build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| HostError::netlink("creating veth", name, e))?;
    index_of(h, name).await
}

/// Creates a veth pair with both ends in the handle's namespace, both up; `a` is enslaved to
/// `master` when given. Returns the indices of `a` and `b`.
pub async fn add_veth_pair(
    h: &Handle,
    a: &str,
    b: &str,
    master: Option<u32>,
    mtu: u32,
) -> Result<(u32, u32)> {
    let mut msg = LinkVeth::new(a, b).mtu(mtu);
    if let Some(m) = master {
        msg = msg.controller(m);
    }
    h.link()
        .add(msg.up().build())
        .execute()
        .await
        .map_err(|e| HostError::netlink("creating veth", a, e))?;
    let ia = index_of(h, a).await?;
    let ib = index_of(h, b).await?;
    set_up(h, ib, true, b).await?;
    Ok((ia, ib))
}

/// Deletes interface `index`; an interface that is already gone counts as deleted.
pub async fn delete(h: &Handle, index: u32, what: &str) -> Result<()> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_gone(&e) => Ok(()),
        Err(e) => Err(HostError::netlink("deleting", what, e)),
    }
}

/// Adds an IPv4 address to interface `index`.
pub async fn add_addr(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<()> {
    h.address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
        .map_err(|e| HostError::netlink("adding an address to", what, e))
}

/// Adds a default route via `gw`.
pub async fn add_default_route(h: &Handle, gw: Ipv4Addr, what: &str) -> Result<()> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).build();
    h.route()
        .add(msg)
        .execute()
        .await
        .map_err(|e| HostError::netlink("adding the default route in", what, e))
}

/// Brings the loopback interface up (it is down in a fresh namespace).
pub async fn loopback_up(h: &Handle, what: &str) -> Result<()> {
    // `lo` is always index 1 in a network namespace.
    set_up(h, 1, true, what).await
}

/// The interfaces in the handle's namespace: index and name.
async fn indexed_names(h: &Handle) -> Result<Vec<(u32, String)>> {
    let msgs: Vec<_> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| HostError::netlink("listing", "interfaces", e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| {
            let index = m.header.index;
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some((index, n)),
                _ => None,
            })
        })
        .collect())
}

/// Names of the interfaces in the handle's namespace (for tests and diagnostics).
pub async fn names(h: &Handle) -> Result<Vec<String>> {
    Ok(indexed_names(h)
        .await?
        .into_iter()
        .map(|(_, n)| n)
        .collect())
}

/// The IPv4 addresses of the interfaces in the handle's namespace, with their interface's name.
pub async fn ipv4_addrs(h: &Handle) -> Result<Vec<(String, Ipv4Addr)>> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    let links = indexed_names(h).await?;
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| HostError::netlink("listing", "addresses", e))?;
    Ok(addrs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            let (_, name) = links.iter().find(|(i, _)| *i == m.header.index)?;
            Some((name.clone(), ip))
        })
        .collect())
}

/// Writes a sysctl of the namespace behind `ns` (`/proc/sys/...` resolves per network
/// namespace for the thread that opens it).
pub fn sysctl_in(ns: &std::os::fd::OwnedFd, what: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    super::ns::run_in_fd(ns, what, || std::fs::write(&path, value))?
        .map_err(|e| HostError::io("writing sysctl", format!("{key} in {what}"), e))
}
