//! The `NETLINK_NETFILTER` socket of a firewall: sending a batch and reading the kernel's
//! verdict, dumping rules.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_packet_core::{DecodeError, NLM_F_DUMP_INTR};

use super::decode::{self, Ack, DumpedRule};
use super::encode::{self, Encoded, Family};
use crate::host::{HostError, Result, ns};

/// Receive buffer: larger than any datagram the kernel builds for a dump (it caps them at
/// 32 KiB), so nothing is ever truncated.
const RX_LEN: usize = 64 * 1024;
/// How long to wait for the kernel's answer. The answer is queued before `sendmsg` returns
/// (nfnetlink processes a batch in the sender's context), so this only guards against a
/// kernel that never answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a dump interrupted by a concurrent change is restarted.
const DUMP_ATTEMPTS: usize = 3;

/// Why an exchange with the kernel failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The kernel refused the message with sequence number `seq`.
    Kernel {
        seq: u32,
        errno: i32,
        message: Option<String>,
    },
    /// The socket failed (`what` was being done).
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The kernel's answer was missing or malformed.
    Protocol(String),
}

impl From<DecodeError> for Failure {
    fn from(e: DecodeError) -> Self {
        Failure::Protocol(format!("malformed answer from the kernel: {e}"))
    }
}

/// A netfilter netlink socket bound to one namespace.
pub(super) struct Conn {
    sock: netlink_sys::Socket,
    /// Sequence number of the next message.
    seq: u32,
    rx: Vec<u8>,
    /// The send buffer size asked for so far (a batch must fit in it whole).
    sndbuf: usize,
}

impl Conn {
    /// Opens the socket inside the namespace behind `ns_fd` (on a throwaway thread: see
    /// [`ns::run_in_fd`]); `ns_name` names it in errors.
    pub fn open(ns_fd: BorrowedFd<'_>, ns_name: &str) -> Result<Self> {
        let err = |what: &'static str| {
            move |e: io::Error| HostError::io(what, format!("in namespace {ns_name}"), e)
        };
        let mut sock = ns::run_in_fd(ns_fd, ns_name, || {
            netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
        })?
        .map_err(err("opening a netfilter netlink socket"))?;
        sock.bind_auto()
            .map_err(err("binding a netfilter netlink socket"))?;
        // The kernel's own explanation of a refusal, and acks that echo only the header of
        // the refused message (not the whole batch around it).
        sock.set_ext_ack(true)
            .map_err(err("enabling extended acks on a netlink socket"))?;
        sock.set_cap_ack(true)
            .map_err(err("capping acks on a netlink socket"))?;
        socket2::SockRef::from(&sock)
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(err("setting a receive timeout on a netlink socket"))?;
        let sndbuf = socket2::SockRef::from(&sock)
            .send_buffer_size()
            .map_err(err("reading the send buffer size of a netlink socket"))?;
        Ok(Conn {
            sock,
            seq: 1,
            rx: Vec::with_capacity(RX_LEN),
            sndbuf,
        })
    }

    /// The sequence number the next batch starts at.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Reads one datagram into `self.rx`.
    fn recv(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.rx.clear();
        self.rx.reserve(RX_LEN);
        let n = self.sock.recv(&mut self.rx, flags | libc::MSG_TRUNC)?;
        if n > self.rx.len() {
            return Err(io::Error::other(format!(
                "a {n}-byte netlink datagram did not fit the {RX_LEN}-byte buffer"
            )));
        }
        Ok(())
    }

    /// Discards whatever an earlier, interrupted exchange left unread.
    fn discard_stale(&mut self) -> Result<(), Failure> {
        loop {
            match self.recv(libc::MSG_DONTWAIT) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    return Err(Failure::Io {
                        what: "discarding stale netlink messages",
                        source: e,
                    });
                }
            }
        }
    }

    /// Grows the send buffer so that `len` bytes go out in one datagram, as nft does (a batch
    /// is atomic only if the kernel receives it whole). Forcing past the system limit needs
    /// CAP_NET_ADMIN, which changing nftables needs anyway.
    fn fit_send_buffer(&mut self, len: usize) -> Result<(), Failure> {
        // The kernel counts its own overhead in the buffer: leave room for it.
        let want = len.saturating_mul(2).max(64 * 1024);
        if self.sndbuf >= want {
            return Ok(());
        }
        let v = libc::c_int::try_from(want).map_err(|_| {
            Failure::Protocol(format!("a batch of {len} bytes is too large to send"))
        })?;
        // SAFETY: setsockopt on a socket this struct owns, with a pointer to a live c_int and
        // its exact size; the kernel only reads it.
        let rc = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            socket2::SockRef::from(&self.sock)
                .set_send_buffer_size(want)
                .map_err(|source| Failure::Io {
                    what: "growing the send buffer",
                    source,
                })?;
        }
        self.sndbuf = want;
        Ok(())
    }

    /// Sends `batch` and waits for the kernel's verdict: `Ok` once the acknowledgement of its
    /// last command arrives with no error before it, else the first refusal (the message the
    /// kernel names by sequence number, or the batch as a whole when the commit itself
    /// failed). The batch must have been numbered from [`Conn::next_seq`].
    pub fn transact(&mut self, batch: &Encoded<'_>) -> Result<(), Failure> {
        self.seq = batch.first_seq.wrapping_add(batch.messages());
        self.discard_stale()?;
        self.fit_send_buffer(batch.bytes.len())?;
        let sent = self
            .sock
            .send(&batch.bytes, 0)
            .map_err(|source| Failure::Io {
                what: "sending the batch",
                source,
            })?;
        if sent != batch.bytes.len() {
            return Err(Failure::Protocol(format!(
                "sent {sent} of {} bytes",
                batch.bytes.len()
            )));
        }

        let mut refusal: Option<Failure> = None;
        let mut acked = false;
        let mut wait = true;
        loop {
            let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
            match self.recv(flags) {
                Ok(()) => {}
                // Everything the kernel had to say has been read.
                Err(e) if !wait && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Failure::Protocol(format!(
                        "no answer from the kernel within {ANSWER_TIMEOUT:?}"
                    )));
                }
                Err(source) => {
                    return Err(Failure::Io {
                        what: "reading the kernel's answer",
                        source,
                    });
                }
            }
            for r in decode::replies(&self.rx) {
                let r = r?;
                let ours = r.seq.wrapping_sub(batch.first_seq) < batch.messages();
                if !ours || !decode::is_error(&r) {
                    continue;
                }
                match decode::ack(r.flags, r.payload)? {
                    Ack::Ok => acked |= r.seq == batch.ack_seq,
                    Ack::Refused { errno, message } => {
                        refusal.get_or_insert(Failure::Kernel {
                            seq: r.seq,
                            errno,
                            message,
                        });
                    }
                }
            }
            // The rest, if any, is already queued: read it without waiting.
            wait = !acked && refusal.is_none();
        }
        match refusal {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// The rules of table `family table`, as the kernel dumps them.
    pub fn dump_rules(&mut self, family: Family, table: &str) -> Result<Vec<DumpedRule>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            if let Some(rules) = self.dump_once(family, table)? {
                return Ok(rules);
            }
        }
        Err(Failure::Protocol(format!(
            "the ruleset kept changing during {DUMP_ATTEMPTS} dumps"
        )))
    }

    /// One dump; `None` when the kernel flags it as interrupted by a concurrent change.
    fn dump_once(
        &mut self,
        family: Family,
        table: &str,
    ) -> Result<Option<Vec<DumpedRule>>, Failure> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.discard_stale()?;
        let req = encode::get_rules(family, table, seq);
        self.sock.send(&req, 0).map_err(|source| Failure::Io {
            what: "sending a rule dump request",
            source,
        })?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv(0).map_err(|source| Failure::Io {
                what: "reading a rule dump",
                source,
            })?;
            for r in decode::replies(&self.rx) {
                let r = r?;
                if r.seq != seq {
                    continue;
                }
                interrupted |= r.flags & NLM_F_DUMP_INTR != 0;
                if decode::is_done(&r) {
                    return Ok((!interrupted).then_some(out));
                }
                if decode::is_error(&r) {
                    if let Ack::Refused { errno, message } = decode::ack(r.flags, r.payload)? {
                        return Err(Failure::Kernel {
                            seq,
                            errno,
                            message,
                        });
                    }
                    continue;
                }
                if let Some(rule) = decode::dumped_rule(&r)? {
                    out.push(rule);
                }
            }
        }
    }
}
