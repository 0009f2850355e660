//! Partitions and probabilistic loss with nftables, declaratively, over netlink.
//!
//! Design:
//! - The caller holds the desired [`Ruleset`] (one-way [`Block`]s and [`Loss`]es between
//!   address sets). Every apply makes the run's tables hold exactly that ruleset, in one
//!   nf_tables transaction, so a revert is just applying the previous one. Tables and base
//!   chains stay; their rules are flushed and re-added in the same transaction (re-creating a
//!   base chain would make the transaction wait for an RCU grace period).
//! - Two tables with the run's name: `inet NAME` (hook forward) catches traffic routed between
//!   sites, `bridge NAME` (hook forward) traffic between nodes on the same bridge, matching
//!   `ip saddr/daddr` (or `ip6`) inside the frames. Where br_netfilter is active (built in on
//!   many kernels, on in every new namespace) bridged IP frames are *also* handed to the inet
//!   forward hook, which would apply a loss twice; so the bridge chain marks every frame it
//!   passes ([`BRIDGED_MARK`]) and the inet chain lets marked packets through untouched.
//!   The mark lives only inside the namespace (it is cleared when a packet crosses into
//!   another one).
//! - Loss uses `numgen random mod 10000` matched against the range `0..=N-1`
//!   (N = probability × 10000). Every rule carries the rule's name as its comment and a
//!   counter, read back by [`Firewall::counters`].
//! - Timeline actions must land within milliseconds of their schedule, so no process is
//!   spawned: the firewall talks to the kernel itself, over a `NETLINK_NETFILTER` socket
//!   opened once inside the target namespace (on a throwaway thread that entered it, see
//!   [`ns::run_in_fd`]) and kept for the firewall's life. A change is one batch
//!   (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`) in one `sendmsg`; the kernel processes
//!   it, commits or aborts it as a whole and queues its answer before `sendmsg` returns, so
//!   an apply costs the encoding (microseconds) plus the kernel's own commit. The last command
//!   asks for an acknowledgement, which arrives after any refusal of an earlier message.
//! - `encode` builds the batches by hand, byte for byte as `nft` 1.0.6 would for the same
//!   rules (checked against captures of nft in `golden/`), user data included, so the `nft`
//!   tool lists, and users can inspect, what edgesim installed: `nft list ruleset` inside
//!   the namespace shows every rule with its comment and counter. The `nft` binary is not
//!   needed at run time. Kernel refusals carry the kernel's extended-ack message and name the
//!   rule, set, chain or table concerned ([`HostError::Kernel`]).
//! - [`Firewall::counters`] dumps the rules (`NFT_MSG_GETRULE`) and reads each rule's comment
//!   and `counter` expression back.
//! - [`Firewall::prepare`] exists for callers that start work ahead of a scheduled instant:
//!   it only makes sure the socket is open, so that [`Pending::commit`] pays for nothing else.

mod conn;
mod decode;
mod encode;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;

use self::conn::{Conn, Failure};
use self::encode::{Encoded, Family, Subject};
use super::{HostError, Result, ns};

/// Drop packets from any address in `from` to any address in `to` (one direction). An empty
/// list means any address. Rules act on traffic the namespace forwards (between nodes, bridged
/// or routed), not on traffic addressed to the namespace itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Rule name, kept as the rules' comment (at most 128 bytes).
    pub name: String,
    pub from: Vec<IpNet>,
    pub to: Vec<IpNet>,
}

/// Drop a random fraction `probability` (0 to 1, resolution 10^-4) of the packets from `from`
/// to `to`. An empty list means any address.
#[derive(Debug, Clone, PartialEq)]
pub struct Loss {
    pub name: String,
    pub from: Vec<IpNet>,
    pub to: Vec<IpNet>,
    pub probability: f64,
}

/// One TCP connection, seen from this host: `local` is this end. In a
/// [`Layout::Host`] firewall both directions are accepted ahead of every drop rule (the
/// device agent's management SSH connection survives a partition of its board).
///
/// A port 0 (never a real TCP port) matches any port, so one flow stands for every
/// connection of a service: `local: node:0, remote: apiserver:6443` lets in whatever the API
/// server at 6443 sends to this node, whichever ephemeral port the node's end took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
}

/// The complete desired state of a run's firewall.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ruleset {
    pub blocks: Vec<Block>,
    pub losses: Vec<Loss>,
    /// Connections let through whatever the blocks say ([`Layout::Host`] only).
    pub exempt: Vec<Flow>,
    /// The NAT of a linkem cell on this host ([`Layout::Host`] only).
    pub cell: Option<CellNat>,
}

/// The NAT that puts a board's workloads in a *cell* — a namespace behind a veth pair that
/// linkem relays, for boards whose kernels lack sch_netem — while the board keeps its own
/// address on the lab network: every new connection (and every other new flow: UDP, ICMP
/// echo) that arrives on `iface` for `board`, but for TCP port `keep_port` (its SSH server),
/// goes to `cell`; what `cell` sends out of `iface` leaves as `board`. Replies follow the
/// connections' conntrack entries, so the board's own connections are untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellNat {
    pub iface: String,
    pub board: std::net::Ipv4Addr,
    pub cell: std::net::Ipv4Addr,
    pub keep_port: u16,
}

/// Which traffic a firewall acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Traffic the namespace forwards (a lab's fabric): `inet` and `bridge` tables, hook
    /// forward.
    Router,
    /// The host's own traffic (a board): table `inet NAME`, hook input only, exempt
    /// connections accepted first. Every drop happens on arrival, at the receiving host, as a
    /// wire loses packets: a drop in the output (or postrouting) hook makes the sender's
    /// `sendmsg` fail with EPERM, which no network does (a UDP sender would see errors
    /// instead of silent loss). So a block or loss of traffic from A to B is B's rule.
    Host,
}

/// Packets and bytes counted by the rules named `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Set on every frame the bridge chain lets through, so the inet chain (reached by bridged
/// frames only through br_netfilter) skips them.
pub const BRIDGED_MARK: u32 = 0x4000_0000;
/// Granularity of [`Loss::probability`].
pub const LOSS_SCALE: u32 = 10_000;
const CHAIN: &str = "forward";
const MAX_COMMENT: usize = 128;
const MARK_COMMENT: &str = "edgesim: bridged";
/// The comment of the accept rules of [`Ruleset::exempt`].
const MANAGEMENT_COMMENT: &str = "edgesim: management";
/// The comment of the rules of [`Ruleset::cell`].
const CELL_COMMENT: &str = "edgesim: cell";

impl Ruleset {
    /// Rejects what the kernel would refuse or nft would misread: empty or over-long names,
    /// probabilities outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        let names = self
            .blocks
            .iter()
            .map(|b| &b.name)
            .chain(self.losses.iter().map(|l| &l.name));
        for n in names {
            if n.is_empty()
                || n.len() > MAX_COMMENT
                || n.contains('\0')
                || n == MARK_COMMENT
                || n == MANAGEMENT_COMMENT
                || n == CELL_COMMENT
            {
                return Err(HostError::other(
                    "validating",
                    format!("firewall rule `{n}`"),
                    format!(
                        "names must be 1 to {MAX_COMMENT} bytes without NUL, other than `{MARK_COMMENT}`, `{MANAGEMENT_COMMENT}` and `{CELL_COMMENT}`"
                    ),
                ));
            }
        }
        for f in &self.exempt {
            if f.local.is_ipv4() != f.remote.is_ipv4() {
                return Err(HostError::other(
                    "validating",
                    format!("exempt connection {} ↔ {}", f.local, f.remote),
                    "both ends must be of one IP family",
                ));
            }
        }
        if let Some(c) = &self.cell
            && (c.iface.is_empty() || c.iface.len() >= 16 || c.iface.contains('\0'))
        {
            return Err(HostError::other(
                "validating",
                format!("the cell's interface `{}`", c.iface),
                "an interface name is 1 to 15 bytes without NUL",
            ));
        }
        for l in &self.losses {
            if !(0.0..=1.0).contains(&l.probability) {
                return Err(HostError::other(
                    "validating",
                    format!("firewall loss `{}`", l.name),
                    format!("probability {} is not in [0, 1]", l.probability),
                ));
            }
        }
        Ok(())
    }
}

/// The firewall of one run inside one namespace: tables `inet TABLE` and `bridge TABLE`.
/// Clones share one netlink socket; their requests are serialised.
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

struct Inner {
    ns: OwnedFd,
    ns_name: String,
    table: String,
    layout: Layout,
    /// Opened on first use; dropped after a transport failure, to be reopened afresh.
    conn: Mutex<Option<Conn>>,
}

impl fmt::Debug for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Firewall")
            .field("namespace", &self.inner.ns_name)
            .field("table", &self.inner.table)
            .finish()
    }
}

/// A firewall ready to commit at once (see [`Firewall::prepare`]).
#[derive(Debug)]
pub struct Pending {
    fw: Firewall,
}

impl Firewall {
    /// A firewall acting in namespace `ns_name` on tables named `table` (letters, digits,
    /// `_` and `-`, starting with a letter, at most 64 bytes).
    pub fn new(ns_name: &str, table: &str) -> Result<Self> {
        Self::from_fd(ns::open(ns_name)?, ns_name, table)
    }

    /// Same, from an open namespace handle; `ns_name` only names it in errors. Nothing is
    /// opened until the first request.
    pub fn from_fd(fd: OwnedFd, ns_name: &str, table: &str) -> Result<Self> {
        Self::with_layout(fd, ns_name, table, Layout::Router)
    }

    /// A firewall of the given [`Layout`], from an open namespace handle.
    pub fn with_layout(fd: OwnedFd, ns_name: &str, table: &str, layout: Layout) -> Result<Self> {
        let ok = table.len() <= 64
            && table.starts_with(|c: char| c.is_ascii_alphabetic())
            && table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(HostError::other(
                "validating",
                format!("nftables table name `{table}`"),
                "use letters, digits, `_` and `-`, starting with a letter, at most 64 bytes",
            ));
        }
        Ok(Firewall {
            inner: Arc::new(Inner {
                ns: fd,
                ns_name: ns_name.to_string(),
                table: table.to_string(),
                layout,
                conn: Mutex::new(None),
            }),
        })
    }

    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Runs `f` on the connection, opened if need be. After a transport failure the socket
    /// may hold unread answers, and after a panic mid-request (a poisoned lock) anything may
    /// be left: it is dropped, and the next request opens a fresh one.
    fn with_conn<R>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<R, Failure>,
    ) -> Result<Result<R, Failure>> {
        let mut guard = self.inner.conn.lock().unwrap_or_else(|poisoned| {
            let mut g = poisoned.into_inner();
            *g = None;
            g
        });
        let conn = match &mut *guard {
            Some(c) => c,
            empty => empty.insert(Conn::open(self.inner.ns.as_fd(), &self.inner.ns_name)?),
        };
        let res = f(conn);
        if let Err(Failure::Io { .. } | Failure::Protocol(_)) = &res {
            *guard = None;
        }
        Ok(res)
    }

    /// Names what a failed request was about, for errors.
    fn object(&self, subject: Option<Subject<'_>>) -> String {
        let (t, ns) = (&self.inner.table, &self.inner.ns_name);
        match subject {
            None | Some(Subject::Batch) => format!("nftables tables {t} in namespace {ns}"),
            Some(Subject::Table(f)) => {
                format!("nftables table {} {t} in namespace {ns}", f.name())
            }
            Some(Subject::Chain(f)) => {
                format!("nftables chain {} {t} {CHAIN} in namespace {ns}", f.name())
            }
            Some(Subject::Flush(f)) => format!(
                "the rules of nftables table {} {t} in namespace {ns}",
                f.name()
            ),
            Some(Subject::Rule(f, name)) => format!(
                "nftables rule `{name}` in table {} {t} (namespace {ns})",
                f.name()
            ),
            Some(Subject::Set(f, name)) => format!(
                "the address set of nftables rule `{name}` in table {} {t} (namespace {ns})",
                f.name()
            ),
        }
    }

    fn error(&self, op: &'static str, failure: Failure, batch: Option<&Encoded<'_>>) -> HostError {
        match failure {
            Failure::Kernel {
                seq,
                errno,
                message,
            } => HostError::Kernel {
                op,
                object: self.object(batch.and_then(|b| b.subject(seq))),
                message,
                source: std::io::Error::from_raw_os_error(errno),
            },
            Failure::Io { what, source } => HostError::Io {
                op,
                object: format!("{} ({what})", self.object(None)),
                source,
            },
            Failure::Protocol(detail) => HostError::Nft {
                op,
                table: self.inner.table.clone(),
                namespace: self.inner.ns_name.clone(),
                detail,
            },
        }
    }

    /// Encodes a batch numbered for the connection and runs it as one transaction.
    fn transact<'a>(
        &self,
        op: &'static str,
        encode: impl FnOnce(u32) -> Encoded<'a>,
    ) -> Result<()> {
        let started = Instant::now();
        let mut batch = None;
        let res = self.with_conn(|conn| {
            let b = batch.insert(encode(conn.next_seq()));
            conn.transact(b)
        })?;
        let Some(batch) = batch else {
            return res.map_err(|f| self.error(op, f, None));
        };
        tracing::debug!(
            table = %self.inner.table,
            namespace = %self.inner.ns_name,
            op,
            messages = batch.messages(),
            bytes = batch.bytes.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            ok = res.is_ok(),
            "nftables transaction"
        );
        res.map_err(|f| self.error(op, f, Some(&batch)))
    }

    /// Makes sure the netlink socket is open, so that [`Pending::commit`] costs only the
    /// transaction. Cheap once the socket is open.
    pub fn prepare(&self) -> Result<Pending> {
        self.with_conn(|_| Ok(()))?
            .map_err(|f| self.error("preparing", f, None))?;
        Ok(Pending { fw: self.clone() })
    }

    /// Makes the kernel hold exactly `rs` (one atomic transaction).
    ///
    /// Guarantees: idempotent; on error the previous state is untouched (nf_tables
    /// transactions are all or nothing); validated before anything is sent.
    pub fn apply(&self, rs: &Ruleset) -> Result<()> {
        rs.validate()?;
        let table = self.inner.table.as_str();
        match self.inner.layout {
            Layout::Router if !rs.exempt.is_empty() || rs.cell.is_some() => Err(HostError::other(
                "validating",
                format!("nftables table {table}"),
                "exempt connections and a cell's NAT need a host firewall (Layout::Host)",
            )),
            Layout::Router => self.transact("applying", |seq| encode::apply(rs, table, seq)),
            Layout::Host => self.transact("applying", |seq| encode::apply_host(rs, table, seq)),
        }
    }

    /// Removes the run's tables. Guarantees: idempotent (missing tables are fine).
    pub fn delete(&self) -> Result<()> {
        let table = self.inner.table.as_str();
        let families: &[Family] = match self.inner.layout {
            Layout::Router => &Family::ALL,
            Layout::Host => &[Family::Inet],
        };
        self.transact("deleting", |seq| {
            encode::delete_families(table, seq, families)
        })
    }

    /// Packets and bytes counted so far by each named rule (summed over the rule's inet and
    /// bridge copies and address families), in ruleset order. Counters restart at every apply.
    pub fn counters(&self) -> Result<Vec<RuleCounter>> {
        let rules = self
            .with_conn(|conn| {
                let mut rules = conn.dump_rules(Family::Inet, &self.inner.table)?;
                if self.inner.layout == Layout::Router {
                    rules.extend(conn.dump_rules(Family::Bridge, &self.inner.table)?);
                }
                Ok(rules)
            })?
            .map_err(|f| self.error("reading counters of", f, None))?;
        let mut out: Vec<RuleCounter> = Vec::new();
        for r in rules {
            if r.family.is_none() || r.table != self.inner.table {
                continue;
            }
            let (Some(name), Some((packets, bytes))) = (r.comment, r.counter) else {
                continue;
            };
            if name == MARK_COMMENT {
                continue;
            }
            match out.iter_mut().find(|c| c.name == name) {
                Some(c) => {
                    c.packets += packets;
                    c.bytes += bytes;
                }
                None => out.push(RuleCounter {
                    name,
                    packets,
                    bytes,
                }),
            }
        }
        Ok(out)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let conn = match self.conn.get_mut() {
            Ok(c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(conn) = conn else { return };
        // Closing a netfilter netlink socket waits for the kernel to free the rules replaced
        // by earlier transactions (an RCU grace period: about 20 ms here): never on the
        // caller's time. Should no thread start, the socket closes here.
        let closer = std::thread::Builder::new()
            .name("edgesim-nft-close".into())
            .spawn(move || drop(conn));
        if let Err(e) = closer {
            tracing::warn!(table = %self.table, error = %e, "no thread to close the nftables socket");
        }
    }
}

impl Pending {
    /// Makes the kernel hold exactly `rs` (see [`Firewall::apply`]).
    pub fn commit(self, rs: &Ruleset) -> Result<()> {
        self.fw.apply(rs)
    }
}

/// Decodes a datagram as the kernel's answers are decoded: every message, its ack or error
/// (with the extended-ack text) and, in a dump, the rule it holds. For [`crate::fuzzing`].
pub(crate) fn decode_datagram(data: &[u8]) {
    for r in decode::replies(data) {
        let Ok(r) = r else { break };
        if decode::is_error(&r) {
            let _ = decode::ack(r.flags, r.payload);
        } else if !decode::is_done(&r) {
            let _ = decode::dumped_rule(&r);
        }
    }
}
