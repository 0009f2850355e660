//! A throwaway topology for exercising linkem (tests and `bench/linkem`): two endpoint
//! namespaces on one IPv4 subnet, joined either through a relay namespace (two veth pairs
//! whose inner ends `qa` and `qb` linkem relays between) or directly by one veth pair (the
//! baseline). Built with iproute2 (`ip`), deleted on drop.
//!
//! ```text
//! relayed:  [A: e0 10.77.0.1] ─veth─ [R: qa   qb] ─veth─ [B: e0 10.77.0.2]
//! bare:     [A: e0 10.77.0.1] ─────────── veth ────────── [B: e0 10.77.0.2]
//! ```
//!
//! Offloads stay at the veth defaults (on); IPv6 is disabled in all three namespaces so
//! neighbour discovery does not add packets to the streams under test.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::host::ns;

use super::RelayConfig;

static NEXT: AtomicU32 = AtomicU32::new(1);

/// Address of A's interface.
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Address of B's interface.
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Names of the relay's interfaces in R (`a` faces A, `b` faces B).
pub const RELAY_A: &str = "qa";
pub const RELAY_B: &str = "qb";

/// The namespaces of one topology; deleted on drop.
#[derive(Debug)]
pub struct Testbed {
    pub a: String,
    pub b: String,
    /// The relay namespace (`None` for a bare pair).
    pub r: Option<String>,
    names: Vec<String>,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Waits until `dev` is operationally up. Until the kernel's link watcher has run (up to a
/// second after the carrier appears) a device transmits into its `noop` qdisc, which drops
/// everything: a first ARP request lost that way stalls a flow for a second.
fn wait_up(ns: &str, dev: &str) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "dev", dev])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("state UP") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!("{dev} in {ns} did not come up")));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn sysctl(ns: &str, kv: &str) -> io::Result<()> {
    ip(&["netns", "exec", ns, "sysctl", "-qw", kv])
}

impl Testbed {
    /// Names the namespaces `<prefix>-l<n>` with a process-wide counter `n` (tests use
    /// `edgesim-t-<pid>`).
    fn names(prefix: &str, k: usize) -> Vec<String> {
        (0..k)
            .map(|_| format!("{prefix}-l{}", NEXT.fetch_add(1, Ordering::Relaxed)))
            .collect()
    }

    fn create(names: Vec<String>, relayed: bool) -> io::Result<Self> {
        ns::create_many(&names).map_err(io::Error::other)?;
        let tb = Testbed {
            a: names[0].clone(),
            b: names[1].clone(),
            r: relayed.then(|| names[2].clone()),
            names,
        };
        for n in &tb.names {
            sysctl(n, "net.ipv6.conf.all.disable_ipv6=1")?;
            sysctl(n, "net.ipv6.conf.default.disable_ipv6=1")?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        match &tb.r {
            Some(r) => {
                ip(&[
                    "-n", r, "link", "add", RELAY_A, "type", "veth", "peer", "name", "e0", "netns",
                    &tb.a,
                ])?;
                ip(&[
                    "-n", r, "link", "add", RELAY_B, "type", "veth", "peer", "name", "e0", "netns",
                    &tb.b,
                ])?;
                ip(&["-n", r, "link", "set", RELAY_A, "up"])?;
                ip(&["-n", r, "link", "set", RELAY_B, "up"])?;
            }
            None => ip(&[
                "-n", &tb.a, "link", "add", "e0", "type", "veth", "peer", "name", "e0", "netns",
                &tb.b,
            ])?,
        }
        for (n, addr) in [(&tb.a, ADDR_A), (&tb.b, ADDR_B)] {
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", "e0"])?;
            ip(&["-n", n, "link", "set", "e0", "up"])?;
        }
        let mut ifaces = vec![(tb.a.clone(), "e0"), (tb.b.clone(), "e0")];
        if let Some(r) = &tb.r {
            ifaces.push((r.clone(), RELAY_A));
            ifaces.push((r.clone(), RELAY_B));
        }
        for (n, dev) in ifaces {
            wait_up(&n, dev)?;
        }
        Ok(tb)
    }

    /// A ── relay namespace ── B.
    pub fn relayed(prefix: &str) -> io::Result<Self> {
        Self::create(Self::names(prefix, 3), true)
    }

    /// A ── B directly (the baseline).
    pub fn bare(prefix: &str) -> io::Result<Self> {
        Self::create(Self::names(prefix, 2), false)
    }

    /// A pass-through relay configuration between `qa` and `qb` (seed 1).
    pub fn relay_config(&self, name: &str) -> io::Result<RelayConfig> {
        let r = self
            .r
            .as_ref()
            .ok_or_else(|| io::Error::other("a bare testbed has no relay namespace"))?;
        let fd: OwnedFd = ns::open(r).map_err(io::Error::other)?;
        Ok(RelayConfig::new(name, fd, r.clone(), RELAY_A, RELAY_B, 1))
    }

    /// Runs `f` inside A (or B) on a throwaway thread; sockets opened there stay there.
    pub fn in_a<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        ns::run_in(&self.a, f).map_err(io::Error::other)
    }

    pub fn in_b<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        ns::run_in(&self.b, f).map_err(io::Error::other)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ns::delete(n);
        }
    }
}
