//! Partitions and probabilistic loss with nftables, declaratively.
//!
//! Design:
//! - The caller holds the desired [`Ruleset`] (one-way [`Block`]s and [`Loss`]es between
//!   address sets). Every apply makes the run's tables hold exactly that ruleset, in one nft
//!   transaction, so a revert is just applying the previous one. [`render`] builds the
//!   transaction (pure, unit-tested) and `nft -j -f -` executes it. Tables and base chains
//!   stay; their rules are flushed and re-added in the same transaction (re-creating a base
//!   chain would make the transaction wait for an RCU grace period).
//! - Two tables with the run's name: `inet NAME` (hook forward) catches traffic routed between
//!   sites, `bridge NAME` (hook forward) traffic between nodes on the same bridge, matching
//!   `ip saddr/daddr` (or `ip6`) inside the frames. Where br_netfilter is active (built in on
//!   many kernels, on in every new namespace) bridged IP frames are *also* handed to the inet
//!   forward hook, which would apply a loss twice; so the bridge chain marks every frame it
//!   passes ([`BRIDGED_MARK`]) and the inet chain lets marked packets through untouched.
//!   The mark lives only inside the namespace (it is cleared when a packet crosses into
//!   another one).
//! - Loss uses `numgen random mod 10000` matched against the range `0..=N-1` with `==`
//!   (N = probability × 10000), which sidesteps the nftables crate's swapped `<`/`>`
//!   serialisation. Every rule carries the rule's name as its comment and a counter, read
//!   back by [`Firewall::counters`].
//! - `nft` runs inside the target namespace: the child `setns`es into an already-open
//!   namespace handle between fork and exec (one raw syscall, async-signal-safe).
//! - Timeline actions must land within milliseconds of their schedule. Starting `nft` costs a
//!   few, and nft's *exit* after a transaction that replaced rules costs ~10 ms more (closing
//!   its netlink socket waits for the kernel to free the old rules after an RCU grace
//!   period), so neither may sit on the critical path: [`Firewall::prepare`] starts
//!   `nft -j -f -` ahead of time, waiting on its stdin, and subscribes (from a throwaway
//!   thread inside the namespace) to the kernel's nftables notifications; [`Pending::commit`]
//!   writes the batch, closes stdin and returns as soon as the kernel announces the new
//!   ruleset generation made by *that* nft process (`NFT_MSG_NEWGEN` carries the committer's
//!   pid). nft is reaped in the background. Without that announcement (nft failed, or the
//!   notification was lost) nft's exit status and stderr decide.
//!   A [`Pending`] dropped without commit gets an empty input, so nft exits changing nothing.
//! - nft's stderr is captured into the error ([`HostError::Nft`]).

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use ipnet::IpNet;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, NgMode, Numgen, Payload,
    PayloadField, Prefix, Range, SetItem,
};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{AnonymousCounter, Counter, Mangle, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

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

/// The complete desired state of a run's firewall.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ruleset {
    pub blocks: Vec<Block>,
    pub losses: Vec<Loss>,
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

impl Ruleset {
    /// Rejects what nft would refuse or misread: empty or over-long names, probabilities
    /// outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        let names = self
            .blocks
            .iter()
            .map(|b| &b.name)
            .chain(self.losses.iter().map(|l| &l.name));
        for n in names {
            if n.is_empty() || n.len() > MAX_COMMENT || n.contains('\0') || n == MARK_COMMENT {
                return Err(HostError::other(
                    "validating",
                    format!("firewall rule `{n}`"),
                    format!(
                        "names must be 1 to {MAX_COMMENT} bytes without NUL, other than `{MARK_COMMENT}`"
                    ),
                ));
            }
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

fn owned(s: &str) -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Owned(s.to_string())
}

fn addr_expr(net: &IpNet) -> Expression<'static> {
    let net = net.trunc();
    if net.prefix_len() == net.max_prefix_len() {
        Expression::String(owned(&net.addr().to_string()))
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(Expression::String(owned(&net.network().to_string()))),
            len: u32::from(net.prefix_len()),
        }))
    }
}

/// `ip saddr { … }` (or `ip6`, `daddr`); overlapping prefixes are merged, as nft refuses
/// overlapping intervals in a set.
fn addr_match(v6: bool, field: &str, nets: &[IpNet]) -> Statement<'static> {
    let mut merged = IpNet::aggregate(&nets.to_vec());
    merged.sort();
    let right = match merged.as_slice() {
        [one] => addr_expr(one),
        many => Expression::Named(NamedExpression::Set(
            many.iter()
                .map(|n| SetItem::Element(addr_expr(n)))
                .collect(),
        )),
    };
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: owned(if v6 { "ip6" } else { "ip" }),
                field: owned(field),
            },
        ))),
        right,
        op: Operator::EQ,
    })
}

/// The address matches of a from→to pair, one list per IP family that can match (an empty
/// list is "any"); both empty matches every packet.
fn address_matches(from: &[IpNet], to: &[IpNet]) -> Vec<Vec<Statement<'static>>> {
    if from.is_empty() && to.is_empty() {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for v6 in [false, true] {
        let fam = |list: &[IpNet]| -> Vec<IpNet> {
            list.iter()
                .copied()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .collect()
        };
        let (f, t) = (fam(from), fam(to));
        if (!from.is_empty() && f.is_empty()) || (!to.is_empty() && t.is_empty()) {
            continue; // this family cannot match both sides
        }
        let mut m = Vec::new();
        if !f.is_empty() {
            m.push(addr_match(v6, "saddr", &f));
        }
        if !t.is_empty() {
            m.push(addr_match(v6, "daddr", &t));
        }
        out.push(m);
    }
    out
}

fn meta_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

/// The loss threshold: drop when `numgen random mod 10000` is in `0..n`.
fn loss_threshold(p: f64) -> u32 {
    (p * f64::from(LOSS_SCALE))
        .round()
        .clamp(0.0, f64::from(LOSS_SCALE)) as u32
}

/// The drop rules of `rs` for one table, in order: blocks, then losses.
fn drop_rules(rs: &Ruleset) -> Vec<(String, Vec<Statement<'static>>)> {
    let mut out = Vec::new();
    for b in &rs.blocks {
        for mut m in address_matches(&b.from, &b.to) {
            m.push(counter());
            m.push(Statement::Drop(None));
            out.push((b.name.clone(), m));
        }
    }
    for l in &rs.losses {
        let n = loss_threshold(l.probability);
        if n == 0 {
            continue;
        }
        for mut m in address_matches(&l.from, &l.to) {
            if n < LOSS_SCALE {
                m.push(Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Numgen(Numgen {
                        mode: NgMode::Random,
                        ng_mod: LOSS_SCALE,
                        offset: None,
                    })),
                    right: Expression::Range(Box::new(Range {
                        range: [Expression::Number(0), Expression::Number(n - 1)],
                    })),
                    op: Operator::EQ,
                }));
            }
            m.push(counter());
            m.push(Statement::Drop(None));
            out.push((l.name.clone(), m));
        }
    }
    out
}

/// The nft transaction that makes the kernel hold exactly `rs` in tables `inet TABLE` and
/// `bridge TABLE`: each table and its base chain are added (a no-op when present), emptied and
/// refilled, all in one atomic batch. Keeping the base chains keeps their hooks registered:
/// re-creating a base chain makes the transaction wait for an RCU grace period (about 10 ms
/// on the test machine), emptying and refilling it does not.
pub fn render(rs: &Ruleset, table: &str) -> Nftables<'static> {
    let mut objects = Vec::new();
    let rules = drop_rules(rs);
    for family in [NfFamily::INet, NfFamily::Bridge] {
        let t = Table {
            family,
            name: owned(table),
            handle: None,
        };
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(
            t.clone(),
        ))));
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
            Chain {
                family,
                table: owned(table),
                name: owned(CHAIN),
                _type: Some(NfChainType::Filter),
                hook: Some(NfHook::Forward),
                // The filter priority of each family (bridge: -200, inet: 0).
                prio: Some(if family == NfFamily::Bridge { -200 } else { 0 }),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            },
        ))));
        objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Table(t))));
        let rule = |expr: Vec<Statement<'static>>, comment: &str| {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
                family,
                table: owned(table),
                chain: owned(CHAIN),
                expr: expr.into(),
                handle: None,
                index: None,
                comment: Some(owned(comment)),
            })))
        };
        let mark = Expression::Number(BRIDGED_MARK);
        if family == NfFamily::Bridge {
            // meta mark set meta mark | BRIDGED_MARK
            objects.push(rule(
                vec![Statement::Mangle(Mangle {
                    key: meta_mark(),
                    value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                        meta_mark(),
                        mark,
                    ]))),
                })],
                MARK_COMMENT,
            ));
        } else {
            // meta mark & BRIDGED_MARK == BRIDGED_MARK return
            objects.push(rule(
                vec![
                    Statement::Match(Match {
                        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                            meta_mark(),
                            mark.clone(),
                        ))),
                        right: mark,
                        op: Operator::EQ,
                    }),
                    Statement::Return(None),
                ],
                MARK_COMMENT,
            ));
        }
        for (name, expr) in &rules {
            objects.push(rule(expr.clone(), name));
        }
    }
    Nftables {
        objects: objects.into(),
    }
}

/// The transaction that removes the run's tables whether or not they exist.
fn render_delete(table: &str) -> Nftables<'static> {
    let mut objects = Vec::new();
    for family in [NfFamily::INet, NfFamily::Bridge] {
        let t = Table {
            family,
            name: owned(table),
            handle: None,
        };
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(
            t.clone(),
        ))));
        objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(t))));
    }
    Nftables {
        objects: objects.into(),
    }
}

/// The firewall of one run inside one namespace: tables `inet TABLE` and `bridge TABLE`.
#[derive(Clone)]
pub struct Firewall {
    ns: Arc<OwnedFd>,
    ns_name: String,
    table: String,
}

impl fmt::Debug for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Firewall")
            .field("namespace", &self.ns_name)
            .field("table", &self.table)
            .finish()
    }
}

/// A started `nft -j -f -` waiting for its batch (see [`Firewall::prepare`]).
pub struct Pending {
    child: Option<Child>,
    fw: Firewall,
    /// Subscription to the namespace's nftables notifications, to see the commit happen.
    watch: Option<GenWatch>,
}

impl Firewall {
    /// A firewall acting in namespace `ns_name` on tables named `table` (letters, digits,
    /// `_` and `-`, starting with a letter, at most 64 bytes).
    pub fn new(ns_name: &str, table: &str) -> Result<Self> {
        Self::from_fd(ns::open(ns_name)?, ns_name, table)
    }

    /// Same, from an open namespace handle; `ns_name` only names it in errors.
    pub fn from_fd(fd: OwnedFd, ns_name: &str, table: &str) -> Result<Self> {
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
            ns: Arc::new(fd),
            ns_name: ns_name.to_string(),
            table: table.to_string(),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn err(&self, op: &'static str, detail: impl Into<String>) -> HostError {
        HostError::Nft {
            op,
            table: self.table.clone(),
            namespace: self.ns_name.clone(),
            detail: detail.into(),
        }
    }

    /// `nft ARGS` inside the namespace, with stdin/stdout/stderr piped.
    fn spawn(&self, op: &'static str, args: &[&str]) -> Result<Child> {
        let fd = self.ns.as_raw_fd();
        let mut cmd = Command::new("nft");
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe work is allowed: it makes one raw setns(2) syscall on a descriptor
        // owned by `self.ns` (kept alive by the caller across the spawn; O_CLOEXEC only closes
        // it at exec) and reads errno on failure. It allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd.spawn()
            .map_err(|e| self.err(op, format!("starting `nft {}`: {e}", args.join(" "))))
    }

    /// Starts `nft -j -f -` in the namespace and returns it waiting for a batch, so that
    /// [`Pending::commit`] pays only for the transaction itself.
    pub fn prepare(&self) -> Result<Pending> {
        // Subscribe first, so the announcement cannot precede the subscription.
        let watch = GenWatch::open(self)?;
        self.pending(Some(watch))
    }

    fn pending(&self, watch: Option<GenWatch>) -> Result<Pending> {
        let child = self.spawn("preparing", &["-j", "-f", "-"])?;
        Ok(Pending {
            child: Some(child),
            fw: self.clone(),
            watch,
        })
    }

    /// Makes the kernel hold exactly `rs` (one atomic transaction).
    ///
    /// Guarantees: idempotent; on error the previous state is untouched (nft transactions are
    /// all or nothing); validated before anything runs.
    pub fn apply(&self, rs: &Ruleset) -> Result<()> {
        rs.validate()?;
        self.prepare()?.commit(rs)
    }

    /// Removes the run's tables. Guarantees: idempotent (missing tables are fine).
    pub fn delete(&self) -> Result<()> {
        let json = serde_json::to_vec(&render_delete(&self.table))
            .map_err(|e| self.err("deleting", format!("serialising the batch: {e}")))?;
        // Deleting is never on a schedule: wait for nft to exit.
        self.pending(None)?.run("deleting", &json)
    }

    /// Packets and bytes counted so far by each named rule (summed over the rule's inet and
    /// bridge copies and address families), in ruleset order. Counters restart at every apply.
    pub fn counters(&self) -> Result<Vec<RuleCounter>> {
        let child = self.spawn("reading counters of", &["-j", "list", "ruleset"])?;
        let out = child
            .wait_with_output()
            .map_err(|e| self.err("reading counters of", format!("waiting for nft: {e}")))?;
        if !out.status.success() {
            return Err(self.err(
                "reading counters of",
                format!(
                    "nft -j list ruleset: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| self.err("reading counters of", format!("parsing nft's JSON: {e}")))?;
        Ok(parse_counters(&doc, &self.table))
    }
}

/// Sums the counters of the rules of `table` (inet and bridge) by comment.
fn parse_counters(doc: &serde_json::Value, table: &str) -> Vec<RuleCounter> {
    let mut out: Vec<RuleCounter> = Vec::new();
    let objects = doc
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        let family = rule.get("family").and_then(|v| v.as_str());
        if rule.get("table").and_then(|v| v.as_str()) != Some(table)
            || !matches!(family, Some("inet" | "bridge"))
        {
            continue;
        }
        let Some(name) = rule.get("comment").and_then(|v| v.as_str()) else {
            continue;
        };
        if name == MARK_COMMENT {
            continue;
        }
        let counter = rule
            .get("expr")
            .and_then(|e| e.as_array())
            .and_then(|e| e.iter().find_map(|s| s.get("counter")));
        let Some(c) = counter else { continue };
        let get = |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        match out.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                r.packets += get("packets");
                r.bytes += get("bytes");
            }
            None => out.push(RuleCounter {
                name: name.to_string(),
                packets: get("packets"),
                bytes: get("bytes"),
            }),
        }
    }
    out
}

impl Pending {
    /// Sends `rs` to the waiting nft and waits for the transaction.
    pub fn commit(self, rs: &Ruleset) -> Result<()> {
        rs.validate()?;
        let json = serde_json::to_vec(&render(rs, &self.fw.table)).map_err(|e| {
            self.fw
                .err("applying", format!("serialising the batch: {e}"))
        })?;
        self.run("applying", &json)
    }

    /// Feeds `input` to nft and waits until the transaction is done: until the kernel
    /// announces the generation committed by this nft (then nft is reaped in the background),
    /// or else until nft exits.
    fn run(mut self, op: &'static str, input: &[u8]) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Err(self.fw.err(op, "nft was already used"));
        };
        let written = child.stdin.take().map(|mut s| s.write_all(input));
        if let Some(watch) = self.watch.take() {
            if matches!(written, Some(Ok(()))) && watch.wait_commit(&mut child) {
                reap_later(child, watch, self.fw.table.clone());
                return Ok(());
            }
            // Closing a netfilter netlink socket waits for the kernel's pending rule cleanup
            // (an RCU grace period): never on the caller's time.
            drop_later(watch);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| self.fw.err(op, format!("waiting for nft: {e}")))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            return Err(self.fw.err(op, format!("nft: {}: {stderr}", out.status)));
        }
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.fw.err(op, format!("writing the batch to nft: {e}"))),
            None => Err(self.fw.err(op, "nft's stdin was not piped")),
        }
    }
}

const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_NEWGEN: u16 = (10 << 8) | 15; // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
const NFTA_GEN_PROC_PID: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Longest wait for a commit before giving up on the announcement and waiting for nft's exit.
const COMMIT_WAIT_MS: libc::c_int = 10_000;

/// A `NETLINK_NETFILTER` socket, opened inside the firewall's namespace, subscribed to the
/// nftables notification group.
struct GenWatch {
    sock: netlink_sys::Socket,
}

impl GenWatch {
    fn open(fw: &Firewall) -> Result<Self> {
        let open = || -> std::io::Result<netlink_sys::Socket> {
            let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
            s.bind_auto()?;
            s.add_membership(NFNLGRP_NFTABLES)?;
            s.set_non_blocking(true)?;
            // A large batch announces every object; room for them spares an ENOBUFS (which
            // would only cost the fast path). Best effort: FORCE needs CAP_NET_ADMIN.
            let size: libc::c_int = 8 << 20;
            // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            Ok(s)
        };
        let sock = ns::run_in_fd(fw.ns.as_fd(), &fw.ns_name, open)?.map_err(|e| {
            fw.err(
                "preparing",
                format!("subscribing to nftables notifications: {e}"),
            )
        })?;
        Ok(GenWatch { sock })
    }

    /// Waits until the kernel announces a generation committed by `child` (true), or nft
    /// closes its stdout, i.e. exits, or the wait times out (false).
    fn wait_commit(&self, child: &mut Child) -> bool {
        let pid = child.id();
        let Some(stdout) = child.stdout.as_mut() else {
            return false;
        };
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.sock.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stdout.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a live array of two pollfd for descriptors owned by `self` and
            // `child`, both open for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, COMMIT_WAIT_MS) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if n <= 0 {
                return false;
            }
            if fds[0].revents != 0 && self.drain_saw(pid, &mut buf) {
                return true;
            }
            if fds[1].revents != 0 {
                // nft writes nothing to stdout here: readable means end of file (it exited).
                let mut sink = [0u8; 512];
                if matches!(stdout.read(&mut sink), Ok(0) | Err(_)) {
                    // A last look: the announcement precedes the exit.
                    return self.drain_saw(pid, &mut buf);
                }
            }
        }
    }

    /// Reads every queued notification; whether one is a new generation committed by `pid`.
    fn drain_saw(&self, pid: u32, buf: &mut Vec<u8>) -> bool {
        let mut seen = false;
        loop {
            buf.clear();
            match self.sock.recv(buf, 0) {
                Ok(_) => seen |= newgen_from(buf, pid),
                // ENOBUFS: some notifications were lost; later ones still arrive.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(_) => return seen,
            }
        }
    }
}

/// Whether the netlink datagram `b` holds an `NFT_MSG_NEWGEN` whose committer is `pid`.
fn newgen_from(mut b: &[u8], pid: u32) -> bool {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDRLEN || len > b.len() {
            return false;
        }
        if kind == NFT_MSG_NEWGEN
            && let Some(mut attrs) = b.get(NLMSG_HDRLEN + NFGENMSG_LEN..len)
        {
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if akind == NFTA_GEN_PROC_PID && alen >= 8 {
                    let v = u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]);
                    if v == pid {
                        return true;
                    }
                }
                attrs = attrs.get(alen.next_multiple_of(4)..).unwrap_or(&[]);
            }
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    false
}

/// Waits for a committed nft to exit and closes the notification socket, on a short-lived
/// thread (both wait for the kernel's cleanup of the replaced rules), logging anything odd.
fn reap_later(child: Child, watch: GenWatch, table: String) {
    let spawned = std::thread::Builder::new()
        .name("edgesim-nft-reap".into())
        .spawn(move || {
            drop(watch);
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => tracing::warn!(
                    %table,
                    status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                    "nft failed after its transaction was announced"
                ),
                Err(e) => tracing::warn!(%table, error = %e, "reaping nft"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread to reap nft; it stays a zombie until we exit");
    }
}

/// Closes a notification socket on a short-lived thread.
fn drop_later(watch: GenWatch) {
    if let Err(e) = std::thread::Builder::new()
        .name("edgesim-nft-close".into())
        .spawn(move || drop(watch))
    {
        tracing::warn!(error = %e, "no thread to close an nftables notification socket");
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            drop_later(watch);
        }
        // Not committed: nft reads an empty batch and exits without changing anything.
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            if let Err(e) = child.wait() {
                tracing::warn!(table = %self.fw.table, error = %e, "reaping an unused nft");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::host::tc::ScratchNs;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn json(rs: &Ruleset) -> String {
        serde_json::to_string(&render(rs, "edgesim_x")).unwrap()
    }

    #[test]
    fn render_builds_both_tables_with_named_counted_rules() {
        let rs = Ruleset {
            blocks: vec![Block {
                name: "cut".into(),
                from: vec![net("10.0.0.0/24"), net("10.0.0.7/32"), net("fd00::/64")],
                to: vec![net("10.0.1.2/32")],
            }],
            losses: vec![Loss {
                name: "lossy".into(),
                from: vec![],
                to: vec![net("10.0.2.0/24")],
                probability: 0.1,
            }],
        };
        let doc = render(&rs, "edgesim_x");
        let cmds: Vec<String> = doc
            .objects
            .iter()
            .map(|o| serde_json::to_string(o).unwrap())
            .collect();
        // Per family: add table, add chain, flush table, mark rule, 2 drop rules (the IPv6
        // source has no IPv6 destination to pair with, so only IPv4 rules).
        assert_eq!(cmds.len(), 2 * 6, "{cmds:#?}");
        let s = json(&rs);
        for needle in [
            r#"{"add":{"table":{"family":"inet","name":"edgesim_x"}}}"#,
            r#"{"flush":{"table":{"family":"bridge","name":"edgesim_x"}}}"#,
            r#""hook":"forward","prio":-200"#,
            // 10.0.0.7 lies inside 10.0.0.0/24: merged, so a single prefix remains.
            r#""right":{"prefix":{"addr":"10.0.0.0","len":24}}"#,
            r#""right":"10.0.1.2""#,
            r#"{"numgen":{"mode":"random","mod":10000}},"right":{"range":[0,999]},"op":"=="}"#,
            r#""comment":"lossy""#,
            r#"{"counter":{"packets":0,"bytes":0}},{"drop":null}"#,
        ] {
            assert!(s.contains(needle), "missing {needle} in {s}");
        }
        assert!(!s.contains("fd00"), "{s}");
    }

    #[test]
    fn render_edge_cases() {
        let loss = |p| Ruleset {
            losses: vec![Loss {
                name: "l".into(),
                from: vec![net("fd00::1/128")],
                to: vec![net("fd00::2/128")],
                probability: p,
            }],
            ..Ruleset::default()
        };
        assert!(!json(&loss(0.0)).contains(r#""comment":"l""#));
        let all = json(&loss(1.0));
        assert!(all.contains(r#""protocol":"ip6","field":"saddr"}},"right":"fd00::1""#));
        assert!(!all.contains("numgen"));
        assert!(json(&loss(0.00005)).contains(r#""range":[0,0]"#));
        let everything = Ruleset {
            blocks: vec![Block {
                name: "all".into(),
                from: vec![],
                to: vec![],
            }],
            ..Ruleset::default()
        };
        assert!(json(&everything).contains(
            r#""expr":[{"counter":{"packets":0,"bytes":0}},{"drop":null}],"comment":"all""#
        ));
        assert!(loss(1.5).validate().is_err());
        let mut long = loss(0.5);
        long.losses[0].name = "x".repeat(129);
        assert!(long.validate().is_err());
        // Only the name is checked; nothing runs.
        let fd: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        assert!(Firewall::from_fd(fd, "self", "bad name").is_err());
    }

    fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn host_ruleset() -> Vec<u8> {
        Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap()
            .stdout
    }

    /// A fabric namespace with bridges br0 (10.88.1.0/24: nodes n1 .1 and n2 .2) and br1
    /// (10.88.2.0/24: node n3 .3), routing between them. Field order: nodes go first.
    struct Lab {
        n1: ScratchNs,
        n2: ScratchNs,
        n3: ScratchNs,
        fabric: ScratchNs,
        host_before: Vec<u8>,
    }

    const N1: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
    const N2: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 2);
    const N3: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 3);

    impl Lab {
        fn new() -> Option<Self> {
            if !crate::testing::netns()
                || !crate::testing::program("nft", "nft")
                || !crate::testing::program("iproute2", "ip")
                || !crate::testing::program("ping", "ping")
            {
                return None;
            }
            let host_before = host_ruleset();
            let fabric = ScratchNs::create("t").unwrap();
            let n1 = ScratchNs::create("t").unwrap();
            let n2 = ScratchNs::create("t").unwrap();
            let n3 = ScratchNs::create("t").unwrap();
            let f = fabric.0.as_str();
            for (br, addr) in [("br0", "10.88.1.254/24"), ("br1", "10.88.2.254/24")] {
                ip(&["-n", f, "link", "add", br, "type", "bridge"]);
                ip(&["-n", f, "addr", "add", addr, "dev", br]);
                ip(&["-n", f, "link", "set", br, "up"]);
            }
            ip(&["-n", f, "link", "set", "lo", "up"]);
            for (i, node, br, addr, gw) in [
                (1, &n1, "br0", N1, "10.88.1.254"),
                (2, &n2, "br0", N2, "10.88.1.254"),
                (3, &n3, "br1", N3, "10.88.2.254"),
            ] {
                let host_end = format!("h{i}");
                ip(&[
                    "-n", f, "link", "add", &host_end, "type", "veth", "peer", "name", "e0",
                    "netns", &node.0,
                ]);
                ip(&["-n", f, "link", "set", &host_end, "master", br, "up"]);
                ip(&[
                    "-n",
                    &node.0,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "e0",
                ]);
                ip(&["-n", &node.0, "link", "set", "e0", "up"]);
                ip(&["-n", &node.0, "link", "set", "lo", "up"]);
                ip(&["-n", &node.0, "route", "add", "default", "via", gw]);
            }
            ns::run_in(f, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
                .unwrap()
                .unwrap();
            let lab = Lab {
                n1,
                n2,
                n3,
                fabric,
                host_before,
            };
            // Resolve neighbours so that no test packet waits on ARP.
            for (from, to) in [(&lab.n1, N2), (&lab.n1, N3), (&lab.n2, N3)] {
                let ok = Command::new("ip")
                    .stdout(Stdio::null())
                    .args([
                        "netns",
                        "exec",
                        &from.0,
                        "ping",
                        "-c",
                        "1",
                        "-W",
                        "2",
                        &to.to_string(),
                    ])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "no connectivity {} -> {to}", from.0);
            }
            Some(lab)
        }

        fn firewall(&self) -> Firewall {
            Firewall::new(&self.fabric.0, "edgesim_t").unwrap()
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                assert_eq!(
                    host_ruleset(),
                    self.host_before,
                    "the host's ruleset changed"
                );
            }
        }
    }

    /// Sends `count` UDP datagrams from namespace `from` to `dst` and returns how many arrived.
    fn udp(from: &ScratchNs, to: &ScratchNs, dst: Ipv4Addr, count: u32) -> u32 {
        let rx = ns::run_in(&to.0, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .unwrap()
            .unwrap();
        let port = rx.local_addr().unwrap().port();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let tx = ns::run_in(&from.0, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .unwrap()
            .unwrap();
        let receiver = std::thread::spawn(move || {
            let mut n = 0;
            let mut buf = [0u8; 64];
            while rx.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        for i in 0..count {
            tx.send_to(&i.to_be_bytes(), (dst, port)).unwrap();
            if i % 50 == 49 {
                // Keep the receiver's socket buffer from overflowing.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        receiver.join().unwrap()
    }

    fn block(name: &str, from: Ipv4Addr, to: &str) -> Block {
        Block {
            name: name.into(),
            from: vec![IpNet::from(std::net::IpAddr::V4(from))],
            to: vec![net(to)],
        }
    }

    fn counter_of(fw: &Firewall, name: &str) -> u64 {
        fw.counters()
            .unwrap()
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.packets)
            .unwrap_or_else(|| panic!("no counter named {name}"))
    }

    #[test]
    fn blocks_are_one_way_then_both_ways_then_heal() {
        let Some(lab) = Lab::new() else { return };
        let fw = lab.firewall();
        let (n1, n2, n3) = (&lab.n1, &lab.n2, &lab.n3);
        const K: u32 = 50;
        let all_paths = || {
            [
                udp(n1, n2, N2, K),
                udp(n2, n1, N1, K),
                udp(n1, n3, N3, K),
                udp(n3, n1, N1, K),
            ]
        };
        assert_eq!(all_paths(), [K; 4], "baseline");

        let one_way = Ruleset {
            blocks: vec![
                block("n1-to-n2", N1, "10.88.1.2/32"),
                block("n1-to-site2", N1, "10.88.2.0/24"),
            ],
            ..Ruleset::default()
        };
        fw.apply(&one_way).unwrap();
        assert_eq!(
            all_paths(),
            [0, K, 0, K],
            "one-way blocks (bridged, routed)"
        );
        assert_eq!(counter_of(&fw, "n1-to-n2"), u64::from(K));
        assert_eq!(counter_of(&fw, "n1-to-site2"), u64::from(K));

        let mut both = one_way.clone();
        both.blocks.push(block("n2-to-n1", N2, "10.88.1.1/32"));
        both.blocks.push(block("n3-to-n1", N3, "10.88.1.1/32"));
        fw.apply(&both).unwrap();
        fw.apply(&both).unwrap(); // idempotent
        assert_eq!(all_paths(), [0, 0, 0, 0], "blocked both ways");

        // Heal: apply the previous desired state, then nothing.
        fw.apply(&one_way).unwrap();
        assert_eq!(all_paths(), [0, K, 0, K], "back to one way");
        fw.apply(&Ruleset::default()).unwrap();
        assert_eq!(all_paths(), [K; 4], "healed");

        fw.apply(&both).unwrap();
        fw.delete().unwrap();
        fw.delete().unwrap();
        assert_eq!(all_paths(), [K; 4], "after delete");
        let left = ns::run_in(&lab.fabric.0, || {
            Command::new("nft").args(["list", "tables"]).output()
        })
        .unwrap()
        .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&left.stdout)
        );
    }

    /// Whether `lost` of `n` is within the 99.9 % normal-approximation interval of p.
    fn within(lost: u32, n: u32, p: f64) -> bool {
        let (n, lost) = (f64::from(n), f64::from(lost));
        let sd = (p * (1.0 - p) / n).sqrt();
        (lost / n - p).abs() <= 3.29 * sd
    }

    #[test]
    fn loss_matches_its_probability_on_bridged_and_routed_paths() {
        let Some(lab) = Lab::new() else { return };
        let fw = lab.firewall();
        const N: u32 = 2000;
        for (bridged_p, routed_p) in [(0.10, 0.30), (0.30, 0.10)] {
            let rs = Ruleset {
                losses: vec![
                    Loss {
                        name: "bridged".into(),
                        from: vec![net("10.88.1.1/32")],
                        to: vec![net("10.88.1.2/32")],
                        probability: bridged_p,
                    },
                    Loss {
                        name: "routed".into(),
                        from: vec![net("10.88.1.0/24")],
                        to: vec![net("10.88.2.0/24")],
                        probability: routed_p,
                    },
                ],
                ..Ruleset::default()
            };
            fw.apply(&rs).unwrap();
            let got_bridged = udp(&lab.n1, &lab.n2, N2, N);
            let got_routed = udp(&lab.n1, &lab.n3, N3, N);
            // The reverse directions are untouched.
            assert_eq!(udp(&lab.n2, &lab.n1, N1, 200), 200);
            assert_eq!(udp(&lab.n3, &lab.n1, N1, 200), 200);
            let (lb, lr) = (N - got_bridged, N - got_routed);
            eprintln!(
                "loss: bridged {:.2} % (want {:.0} %), routed {:.2} % (want {:.0} %) over {N} datagrams",
                f64::from(lb) * 100.0 / f64::from(N),
                bridged_p * 100.0,
                f64::from(lr) * 100.0 / f64::from(N),
                routed_p * 100.0
            );
            assert!(
                within(lb, N, bridged_p),
                "bridged lost {lb} of {N}, want {bridged_p}"
            );
            assert!(
                within(lr, N, routed_p),
                "routed lost {lr} of {N}, want {routed_p}"
            );
            // Every missing datagram was dropped by its rule (and only once).
            assert_eq!(counter_of(&fw, "bridged"), u64::from(lb));
            assert_eq!(counter_of(&fw, "routed"), u64::from(lr));
        }
        fw.delete().unwrap();
    }

    #[test]
    fn prepared_commit_is_cheaper_than_one_shot_apply() {
        let Some(lab) = Lab::new() else { return };
        let fw = lab.firewall();
        let rs = Ruleset {
            blocks: (0..8)
                .map(|i| Block {
                    name: format!("b{i}"),
                    from: vec![net(&format!("10.88.{i}.0/24"))],
                    to: vec![net("10.88.200.0/24"), net("10.88.201.7/32")],
                })
                .collect(),
            losses: vec![Loss {
                name: "l".into(),
                from: vec![],
                to: vec![net("10.88.2.0/24")],
                probability: 0.05,
            }],
        };
        fw.apply(&rs).unwrap();
        // A prepared nft dropped unused changes nothing and leaves no process behind.
        drop(fw.prepare().unwrap());
        assert_eq!(fw.counters().unwrap().len(), 9);

        // Each measurement starts quiet: the previous nft's exit (and the kernel's cleanup of
        // the rules it replaced, which holds the nftables commit lock for ~10 ms) is over.
        const RUNS: usize = 30;
        let quiet = || std::thread::sleep(Duration::from_millis(40));
        let mut one_shot = Vec::new();
        let mut committed = Vec::new();
        for i in 0..RUNS {
            let rs = if i % 2 == 0 { &rs } else { &Ruleset::default() };
            quiet();
            let t = Instant::now();
            fw.apply(rs).unwrap();
            one_shot.push(t.elapsed());
            quiet();
            let p = fw.prepare().unwrap();
            quiet();
            let t = Instant::now();
            p.commit(rs).unwrap();
            committed.push(t.elapsed());
        }
        // Back to back: each commit right after the previous one.
        let mut back_to_back = Vec::new();
        let mut next = fw.prepare().unwrap();
        for i in 0..RUNS {
            let rs = if i % 2 == 0 { &rs } else { &Ruleset::default() };
            let t = Instant::now();
            next.commit(rs).unwrap();
            back_to_back.push(t.elapsed());
            next = fw.prepare().unwrap();
        }
        drop(next);
        let stats = |v: &mut Vec<Duration>| {
            v.sort();
            (v[v.len() / 2], v[v.len() * 9 / 10], v[v.len() - 1])
        };
        let (a50, a90, amax) = stats(&mut one_shot);
        let (c50, c90, cmax) = stats(&mut committed);
        let (b50, b90, bmax) = stats(&mut back_to_back);
        eprintln!(
            "nft one-shot apply (spawn + transaction): median {a50:?}, p90 {a90:?}, max {amax:?} ({RUNS} runs)\n\
             nft commit after prepare:                 median {c50:?}, p90 {c90:?}, max {cmax:?}\n\
             nft commit right after the previous one:  median {b50:?}, p90 {b90:?}, max {bmax:?}"
        );
        fw.delete().unwrap();
    }

    #[test]
    fn nft_errors_carry_its_stderr() {
        let Some(lab) = Lab::new() else { return };
        let fw = lab.firewall();
        let err = fw
            .prepare()
            .unwrap()
            .run("applying", br#"{"nftables":[{"add":{"chain":{"family":"inet","table":"no_such_table","name":"c"}}}]}"#)
            .unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, HostError::Nft { .. }), "{err:?}");
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(
            text.contains("edgesim_t") && text.contains(&lab.fabric.0),
            "{text}"
        );
    }
}
