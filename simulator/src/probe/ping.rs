//! ICMP echo over a raw socket opened inside the node's namespace.
//!
//! Why not `surge-ping`: it opens its own socket in `Client::new`, so it would have to be
//! constructed on a thread that entered the namespace *and* the tokio runtime, outside the
//! [`SocketFactory`] seam; it also brings `pnet_packet` and `parking_lot` for what is ~150
//! lines here. Echo is simple enough to own.
//!
//! Design:
//! - One `SOCK_RAW`/`IPPROTO_ICMP` socket per probe, from the node's [`SocketFactory`], wrapped
//!   in [`AsyncFd`]. We are root, so no `ping_group_range` is involved, and we control the
//!   identifier (an unprivileged `SOCK_DGRAM` ICMP socket has the kernel rewrite it).
//! - A raw ICMP socket sees every ICMP packet of the namespace, so each probe has its own
//!   identifier (process-wide counter) and a reply is matched on identifier, sequence number and
//!   source address. An `ICMP_FILTER` socket option keeps out everything but echo replies,
//!   destination unreachable and time exceeded, so a node that is itself pinged does not wake
//!   its probes up.
//! - One receive task per probe routes replies to the waiting attempt through a map of
//!   sequence number → oneshot sender. The reply's arrival is stamped with [`Instant::now`] in
//!   that task, so the RTT is measured with the monotonic clock and does not include the time
//!   the waiting attempt takes to be scheduled.
//! - Destination unreachable / time exceeded messages quote the original header; when the quote
//!   names our identifier and sequence, the attempt fails at once with that reason instead of
//!   waiting for its timeout.
//! - The payload carries the sequence number's send time (nanoseconds of the monotonic clock)
//!   plus a fill pattern up to the classic 56 bytes, and the reply's payload must echo it.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::net::AbortOnDrop;
use crate::host::ns::SocketFactory;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// `ICMP_FILTER` from `<linux/icmp.h>` (not in the libc crate): a bit mask of ICMP types the
/// raw socket drops.
const ICMP_FILTER: libc::c_int = 1;
const PAYLOAD_LEN: usize = 56;

static NEXT_IDENT: AtomicU16 = AtomicU16::new(0);

fn next_ident() -> u16 {
    // The pid spreads identifiers of concurrent edgesim processes apart; the counter keeps the
    // probes of this process distinct.
    (std::process::id() as u16).wrapping_add(NEXT_IDENT.fetch_add(1, Ordering::Relaxed))
}

/// What the receive task hands the waiting attempt.
type Reply = Result<Instant, String>;

type Pending = Arc<Mutex<HashMap<u16, (oneshot::Sender<Reply>, [u8; 8])>>>;

/// An ICMP echo client bound to one target, living in one namespace.
pub struct Pinger {
    sock: Arc<AsyncFd<socket2::Socket>>,
    target: Ipv4Addr,
    ident: u16,
    seq: AtomicU16,
    pending: Pending,
    origin: Instant,
    _rx: AbortOnDrop<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pinger {
    /// Opens the raw socket in the factory's namespace and starts the receive task on the
    /// current runtime.
    pub fn new(sockets: &SocketFactory, target: Ipv4Addr) -> io::Result<Self> {
        let sock = sockets.socket(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV4),
        )?;
        sock.set_nonblocking(true)?;
        let pass: u32 =
            (1 << ICMP_ECHO_REPLY) | (1 << ICMP_DEST_UNREACH) | (1 << ICMP_TIME_EXCEEDED);
        let filter: u32 = !pass;
        // SAFETY: `sock` is a valid open socket for the whole call; the option value is a
        // `u32` that lives on the stack across the call, and its exact size is passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_RAW,
                ICMP_FILTER,
                (&filter as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            // Only an optimisation: matching still filters everything.
            tracing::debug!(error = %io::Error::last_os_error(), "ICMP_FILTER not set");
        }
        if let Err(e) = nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimestampns,
            &true,
        ) {
            tracing::debug!(error = %e, "SO_TIMESTAMPNS not set: replies are stamped when read");
        }
        // SAFETY: the `AsyncFd` takes ownership of the `socket2::Socket`, which owns its
        // descriptor and closes it only when dropped, i.e. with the `AsyncFd`; `as_raw_fd` of a
        // `Socket` always returns that one descriptor.
        let sock = Arc::new(unsafe { AsyncFd::register(sock) }?);
        let ident = next_ident();
        let pending: Pending = Arc::default();
        let rx = tokio::spawn(receive(sock.clone(), target, ident, pending.clone()));
        Ok(Pinger {
            sock,
            target,
            ident,
            seq: AtomicU16::new(0),
            pending,
            origin: Instant::now(),
            _rx: AbortOnDrop(rx),
        })
    }

    /// The identifier this pinger's echo requests carry.
    pub fn ident(&self) -> u16 {
        self.ident
    }

    /// Sends one echo request and waits up to `timeout` for its reply. Returns the round-trip
    /// time.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, String> {
        self.ping_seq(timeout).await.1
    }

    /// [`Self::ping`], also returning the request's sequence number.
    pub async fn ping_seq(&self, timeout: Duration) -> (u16, Result<Duration, String>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        (seq, self.ping_as(seq, timeout).await)
    }

    async fn ping_as(&self, seq: u16, timeout: Duration) -> Result<Duration, String> {
        let (tx, rx) = oneshot::channel();
        let sent = Instant::now();
        let stamp = (sent.duration_since(self.origin).as_nanos() as u64).to_be_bytes();
        // A sequence number still pending after 65536 attempts belongs to an attempt that is
        // about to time out; replacing it drops its sender, which ends it as lost.
        lock(&self.pending).insert(seq, (tx, stamp));
        let _cleanup = RemoveOnDrop {
            pending: &self.pending,
            seq,
        };
        let pkt = echo_request(self.ident, seq, &stamp);
        let dest = socket2::SockAddr::from(SocketAddrV4::new(self.target, 0));
        let sent = match tokio::time::timeout(timeout, self.send(&pkt, &dest)).await {
            Ok(Ok(at)) => at,
            Ok(Err(e)) => return Err(format!("sending echo request: {e}")),
            Err(_) => return Err(format!("timed out after {timeout:?} sending")),
        };
        let left = timeout.saturating_sub(sent.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(Ok(at))) => Ok(at.saturating_duration_since(sent)),
            Ok(Ok(Err(why))) => Err(why),
            Ok(Err(_)) => Err("echo request superseded".into()),
            Err(_) => Err(super::no_answer("echo reply", timeout)),
        }
    }

    /// Sends the request; returns the time just before the kernel took it.
    async fn send(&self, pkt: &[u8], dest: &socket2::SockAddr) -> io::Result<Instant> {
        loop {
            let mut guard = self.sock.writable().await?;
            let at = Instant::now();
            match guard.try_io(|s| s.get_ref().send_to(pkt, dest)) {
                Ok(r) => return r.map(|_| at),
                Err(_would_block) => continue,
            }
        }
    }
}

struct RemoveOnDrop<'a> {
    pending: &'a Pending,
    seq: u16,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.seq);
    }
}

/// Builds an echo request: header, 8-byte stamp, fill pattern, with its checksum.
fn echo_request(ident: u16, seq: u16, stamp: &[u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + PAYLOAD_LEN);
    p.extend_from_slice(&[ICMP_ECHO, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(stamp);
    p.extend((0..PAYLOAD_LEN - stamp.len()).map(|i| (i as u8).wrapping_add(0x10)));
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What one received datagram means to a pinger.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    Reply { seq: u16, payload: &'a [u8] },
    Error { seq: u16, why: String },
    Other,
}

/// Interprets a datagram read from a raw ICMP socket (IPv4 header included).
fn parse_datagram(buf: &[u8], target: Ipv4Addr, ident: u16) -> Parsed<'_> {
    let Some((src, _dst, icmp)) = split_ipv4(buf) else {
        return Parsed::Other;
    };
    if icmp.len() < 8 {
        return Parsed::Other;
    }
    let (ty, code) = (icmp[0], icmp[1]);
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    match ty {
        ICMP_ECHO_REPLY if id == ident && src == target && checksum(icmp) == 0 => Parsed::Reply {
            seq,
            payload: &icmp[8..],
        },
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED => {
            // The quoted original datagram: its IP header and the first 8 bytes of our echo.
            let Some((_, qdst, qicmp)) = split_ipv4(&icmp[8..]) else {
                return Parsed::Other;
            };
            if qdst != target || qicmp.len() < 8 || qicmp[0] != ICMP_ECHO {
                return Parsed::Other;
            }
            if u16::from_be_bytes([qicmp[4], qicmp[5]]) != ident {
                return Parsed::Other;
            }
            let why = if ty == ICMP_TIME_EXCEEDED {
                format!("time to live exceeded (reported by {src})")
            } else {
                let what = match code {
                    0 => "network unreachable",
                    1 => "host unreachable",
                    2 => "protocol unreachable",
                    3 => "port unreachable",
                    9 | 10 | 13 => "administratively prohibited",
                    _ => "destination unreachable",
                };
                format!("{what} (reported by {src})")
            };
            Parsed::Error {
                seq: u16::from_be_bytes([qicmp[6], qicmp[7]]),
                why,
            }
        }
        _ => Parsed::Other,
    }
}

/// Splits an IPv4 datagram into (source, destination, payload).
fn split_ipv4(buf: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    if buf.len() < 20 || buf[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if ihl < 20 || buf.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
    let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
    Some((src, dst, &buf[ihl..]))
}

/// Reads one datagram with the kernel's receive timestamp (`SO_TIMESTAMPNS`), returned as an
/// [`Instant`]: the time the reply reached the socket, not the time this task was scheduled,
/// so a busy runtime or host does not add to measured round trips. Without a timestamp (the
/// option refused), the time of the read stands in.
fn recv_stamped(sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<(usize, Instant)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let kernel = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
            _ => None,
        })
    });
    let (real, now) = paired_now();
    let at = match (kernel, real) {
        (Some(ts), Some(real)) => {
            let ago = real.checked_sub(Duration::from(ts));
            // A timestamp from the future or from long ago means the wall clock stepped
            // between the two readings: the read time is then the better estimate.
            match ago.filter(|d| *d < Duration::from_secs(1)) {
                Some(d) => now.checked_sub(d).unwrap_or(now),
                None => now,
            }
        }
        _ => now,
    };
    Ok((msg.bytes, at))
}

/// The wall clock (since the epoch) and the monotonic clock read as close together as this
/// thread manages: the wall clock between two monotonic readings, up to four times, the
/// tightest bracket winning (monotonic at its midpoint). A thread preempted between two plain
/// readings would date a reply early by the whole preemption and report a shorter round trip.
fn paired_now() -> (Option<Duration>, Instant) {
    let mut best: Option<(Duration, Option<Duration>, Instant)> = None;
    for _ in 0..4 {
        let m1 = Instant::now();
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .ok()
            .map(Duration::from);
        let m2 = Instant::now();
        let gap = m2 - m1;
        if best.as_ref().is_none_or(|b| gap < b.0) {
            best = Some((gap, real, m1 + gap / 2));
        }
        if gap < Duration::from_micros(2) {
            break;
        }
    }
    let (_, real, mono) = best.unwrap_or((Duration::ZERO, None, Instant::now()));
    (real, mono)
}

async fn receive(
    sock: Arc<AsyncFd<socket2::Socket>>,
    target: Ipv4Addr,
    ident: u16,
    pending: Pending,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let mut guard = match sock.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, %target, "ICMP receive task stopped");
                return;
            }
        };
        let (n, at) = match guard.try_io(|s| recv_stamped(s.get_ref(), &mut buf)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %target, "ICMP receive error");
                continue;
            }
            Err(_would_block) => continue,
        };
        match parse_datagram(&buf[..n], target, ident) {
            Parsed::Reply { seq, payload } => {
                let mut p = lock(&pending);
                if let Some((_, stamp)) = p.get(&seq)
                    && payload.starts_with(stamp)
                    && let Some((tx, _)) = p.remove(&seq)
                {
                    let _ = tx.send(Ok(at));
                }
            }
            Parsed::Error { seq, why } => {
                if let Some((tx, _)) = lock(&pending).remove(&seq) {
                    let _ = tx.send(Err(why));
                }
            }
            Parsed::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        v.extend_from_slice(&src);
        v.extend_from_slice(&dst);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn checksum_of_a_request_verifies_to_zero() {
        let p = echo_request(0x1234, 7, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.len(), 64);
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn matches_replies_by_ident_sequence_and_source() {
        let target = Ipv4Addr::new(10, 0, 0, 2);
        let mut reply = echo_request(0x1234, 9, &[9; 8]);
        reply[0] = ICMP_ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&reply);
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        let dg = ipv4([10, 0, 0, 2], [10, 0, 0, 1], &reply);
        assert!(matches!(
            parse_datagram(&dg, target, 0x1234),
            Parsed::Reply { seq: 9, payload } if payload.starts_with(&[9; 8])
        ));
        assert_eq!(parse_datagram(&dg, target, 0x4321), Parsed::Other);
        assert_eq!(
            parse_datagram(&dg, Ipv4Addr::new(10, 0, 0, 3), 0x1234),
            Parsed::Other
        );
        let mut bad = dg.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(parse_datagram(&bad, target, 0x1234), Parsed::Other);
        assert_eq!(parse_datagram(&dg[..25], target, 0x1234), Parsed::Other);
    }

    #[test]
    fn unreachable_quotes_are_matched_to_the_attempt() {
        let target = Ipv4Addr::new(10, 0, 0, 9);
        let req = echo_request(0x0abc, 3, &[0; 8]);
        let quoted = ipv4([10, 0, 0, 1], [10, 0, 0, 9], &req[..8]);
        let mut icmp = vec![ICMP_DEST_UNREACH, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let dg = ipv4([10, 0, 0, 1], [10, 0, 0, 1], &icmp);
        match parse_datagram(&dg, target, 0x0abc) {
            Parsed::Error { seq, why } => {
                assert_eq!(seq, 3);
                assert!(why.contains("host unreachable"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_datagram(&dg, target, 0x0abd), Parsed::Other);
    }
}
