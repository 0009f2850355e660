//! The kernel interfaces linkem uses, behind a narrow safe API: AF_PACKET sockets with
//! virtio-net headers and receive timestamps, an eventfd for wake-ups, `poll`, the clocks and
//! the timer slack.

use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;

// linux/if_packet.h and asm-generic/socket.h (x86-64, arm64, arm, riscv share these values).
const PACKET_VNET_HDR: c_int = 15;
const PACKET_IGNORE_OUTGOING: c_int = 23;
const SO_TIMESTAMPNS: c_int = 35;
const SCM_TIMESTAMPNS: c_int = SO_TIMESTAMPNS;
/// Receive buffer asked for (with `SO_RCVBUFFORCE` as root): bursts of GSO frames at
/// multi-Gbit/s rates must not overflow while the relay thread is descheduled.
const RCVBUF: c_int = 8 << 20;
const SNDBUF: c_int = 8 << 20;

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC/REALTIME always exist on Linux, so
    // the call cannot fail and fully initialises `ts`.
    let ts = unsafe {
        libc::clock_gettime(clock, ts.as_mut_ptr());
        ts.assume_init()
    };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_MONOTONIC in ns.
pub fn mono_ns() -> i64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME in ns since the Unix epoch.
pub fn real_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `CLOCK_REALTIME − CLOCK_MONOTONIC` in ns, to turn the kernel's receive timestamps
/// (realtime) into monotonic time. The two clocks are read between two monotonic readings, up
/// to four times, and the tightest bracket wins (monotonic taken at its midpoint): a thread
/// preempted between two plain readings would otherwise see a packet as older than it is, by
/// the whole preemption, and release it that much early.
pub fn real_minus_mono_ns() -> i64 {
    let mut best = (i64::MAX, 0);
    for _ in 0..4 {
        let m1 = mono_ns();
        let r = real_ns();
        let m2 = mono_ns();
        let gap = m2 - m1;
        if gap < best.0 {
            best = (gap, r - (m1 + gap / 2));
        }
        if gap < 2_000 {
            break;
        }
    }
    best.1
}

/// Sets the calling thread's timer slack, so its timed sleeps end when asked rather than up
/// to 50 µs later (the default slack).
pub fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}

/// Puts the calling thread in the SCHED_FIFO real-time class at `priority` (1-99), so a
/// release time is met even when every CPU is busy with ordinary processes. Fails without
/// CAP_SYS_NICE (or inside a cgroup without a real-time budget).
pub fn set_realtime(priority: u8) -> io::Result<()> {
    // musl's sched_param has more (reserved) fields than glibc's: zero them, set the priority.
    // SAFETY: sched_param is plain integers (and timespecs on musl); all-zero is valid.
    let mut param: libc::sched_param = unsafe { zeroed() };
    param.sched_priority = c_int::from(priority);
    // SAFETY: `param` is a valid sched_param; the call affects only the calling thread.
    let r = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// One received frame.
#[derive(Debug, Clone, Copy)]
pub struct Recv {
    /// Bytes in the buffer (virtio-net header included).
    pub len: usize,
    /// Kernel receive time, CLOCK_REALTIME ns.
    pub ts_real: Option<i64>,
    /// The frame did not fit the buffer.
    pub truncated: bool,
}

/// A raw AF_PACKET socket bound to one interface, with virtio-net headers on every frame
/// read and written, ignoring the frames it sends itself.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket on interface `iface`. Must run on a thread inside the interface's
    /// namespace; the socket stays bound to it afterwards. Errors name the failing step.
    pub fn open(iface: &str) -> Result<Self, (&'static str, io::Error)> {
        let name = std::ffi::CString::new(iface)
            .map_err(|_| ("naming", io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(("looking up", io::Error::last_os_error()));
        }
        // Protocol 0: the socket receives nothing until bound to the interface below, so no
        // frame of another interface can slip in between.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
                .map_err(|e| ("opening a packet socket on", e))?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = PacketSocket { fd };
        s.setopt(libc::SOL_PACKET, PACKET_VNET_HDR, 1)
            .map_err(|e| ("enabling PACKET_VNET_HDR on", e))?;
        s.setopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| ("enabling PACKET_IGNORE_OUTGOING on", e))?;
        s.setopt(libc::SOL_SOCKET, SO_TIMESTAMPNS, 1)
            .map_err(|e| ("enabling receive timestamps on", e))?;
        // Best effort: without CAP_NET_ADMIN the plain option caps at rmem_max.
        if s.setopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)
            .is_err()
        {
            let _ = s.setopt(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        if s.setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF)
            .is_err()
        {
            let _ = s.setopt(libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as c_int;
        // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
        cvt(unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&raw const sll).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })
        .map_err(|e| ("binding a packet socket to", e))?;
        Ok(s)
    }

    fn setopt(&self, level: c_int, opt: c_int, val: c_int) -> io::Result<()> {
        // SAFETY: `val` is a valid c_int for the duration of the call, and its size is passed.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&raw const val).cast(),
                size_of::<c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Reads one frame (virtio-net header first) into `buf`. With `nonblock`, returns
    /// `Ok(None)` when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8], nonblock: bool) -> io::Result<Option<Recv>> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &raw mut iov;
        // The field types differ between C libraries (glibc: size_t; musl: int and socklen_t).
        msg.msg_iovlen = 1 as _;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        let flags = if nonblock { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `msg` points at `iov` (into `buf`) and `control`, all alive and writable for
        // the call; the kernel writes at most their given lengths.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        let mut ts_real = None;
        // SAFETY: the kernel filled `msg_control`/`msg_controllen`; CMSG_FIRSTHDR/NXTHDR walk
        // only within that buffer, and the timestamp payload is read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SCM_TIMESTAMPNS {
                    let ts = libc::CMSG_DATA(c).cast::<libc::timespec>().read_unaligned();
                    ts_real = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        Ok(Some(Recv {
            len: n as usize,
            ts_real,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        }))
    }

    /// Sends one frame (virtio-net header first) out of the bound interface.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `buf` is valid for reads of its length for the call.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An eventfd used to wake a thread blocked in `poll`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2) call; the result is checked before use.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Clears pending signals.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the descriptor is non-blocking.
        unsafe {
            libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8);
        }
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64, as eventfd requires.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8);
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Blocks until one of `fds` is readable (or in error) or `timeout_ms` passes (-1: forever).
/// Returns which ones are ready.
pub fn poll<const N: usize>(fds: [RawFd; N], timeout_ms: c_int) -> io::Result<[bool; N]> {
    let mut p = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `p` is a live array of N pollfd structures.
    let r = unsafe { libc::poll(p.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(p.map(|x| x.revents != 0))
}
