//! The running relay: sockets, threads, queues.
//!
//! Threads (three per relay, all plain OS threads):
//! - **io**: owns both sockets' receive sides and both directions' `Decider`s. It reads
//!   frames without blocking from either interface, decides, and sends a packet *inline*
//!   when it is due now and nothing of its direction is queued (the zero-impairment fast
//!   path: no hand-off, no extra wake-up). Everything else goes to the direction's release
//!   queue. When idle it keeps polling for a short window (`rx_spin`, 50 µs by default)
//!   before blocking in `poll(2)`: a reply that comes back through the other interface right
//!   after a forward is then picked up without a scheduler wake-up, which is most of the
//!   latency a relay adds on a VM. It never polls longer than that window. A tx thread
//!   that starts spinning towards a release kicks a sleeping io thread (eventfd), which then
//!   polls until two `rx_spin` past that release, so that the answer to a delayed packet does
//!   not wait for a wake-up either.
//! - **tx a-to-b / tx b-to-a**: each owns its direction's release-ordered queue, fed by
//!   the io thread through a lock-free channel (so a descheduled io thread can never hold a
//!   lock the tx thread needs). It sleeps (futex park, 1 ns timer slack) until a *wake margin*
//!   before the next release time, then spins to the exact time and sends. A packet due
//!   before the thread's published wake time wakes it. Spinning happens only in that window
//!   before a known release. The tx threads run SCHED_FIFO by default ([`Timing::realtime`]):
//!   on a busy machine an ordinary thread can wake milliseconds late.
//! - **Wake margin.** A sleeping thread wakes after its timer by the host's wake-up latency:
//!   tens of µs on bare metal, but on a VM whose idle vCPU the hypervisor has descheduled,
//!   hundreds of µs at p90 and milliseconds at p99 (a SCHED_FIFO thread sleeping 19.9 ms on
//!   our 2-vCPU KVM guest: p50 93 µs, p90 341 µs, p99 3 ms). A fixed margin either spins on
//!   every host for the worst one or sends late on VMs. So each tx thread measures its own
//!   overshoots (the last 64) and wakes `tx_spin` plus their 90th percentile early, capped by
//!   `tx_spin_max` (1 ms): on a quiet bare-metal host that stays near `tx_spin`, on a VM it
//!   grows to what the VM needs, and the CPU it spins is bounded by one margin per release.
//!
//! Ordering: per direction, `pending` counts packets queued or being sent by the tx thread;
//! the io thread sends inline only when it is zero. Since the io thread is the only producer,
//! nothing can be queued behind its back, so inline sends never overtake queued packets.
//!
//! Arrival times are the kernel's receive timestamps (`SO_TIMESTAMPNS`, converted to
//! CLOCK_MONOTONIC), so the io thread's own wake-up latency does not add to emulated delays.

use std::collections::BinaryHeap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use super::decide::{Action, Compiled, Decider};
use super::frame::{self, VNET_HDR_LEN, VnetHdr};
use super::log::{DecisionLog, LogEntry, LogSink};
use super::model::{Dir, DirectionConfig};
use super::pcap::PcapWriter;
use super::stats::{DirCounters, RelayStats, RuleCounters};
use super::sys::{self, EventFd, PacketSocket};
use super::{LinkemError, RelayConfig, Result};

/// Receive buffer: a 64 KB GSO frame (BIG TCP would need more and is truncated and counted).
const BUF_LEN: usize = VNET_HDR_LEN + 65_536 + 4096;
/// Frames read from one interface before looking at the other.
const BATCH: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A packet waiting for its release time.
struct Queued {
    /// Reordered packets go before everything else (netem's `__qdisc_enqueue_head`).
    head: bool,
    release: i64,
    order: u64,
    data: Vec<u8>,
    wire: u32,
    rule: Arc<RuleCounters>,
}

impl Queued {
    fn key(&self) -> (bool, i64, u64) {
        (!self.head, self.release, self.order)
    }
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.key().cmp(&self.key())
    }
}

/// One direction's transmit side.
struct DirShared {
    dir: Dir,
    out: Arc<PacketSocket>,
    out_iface: String,
    pending: AtomicUsize,
    /// When the tx thread will next look at its queue on its own (CLOCK_MONOTONIC ns;
    /// `i64::MAX` when it sleeps until woken): a packet due earlier must wake it.
    next_wake: AtomicI64,
    /// The tx thread, to wake it.
    thread: OnceLock<Thread>,
    pcap: Option<Mutex<PcapWriter>>,
    counters: Arc<DirCounters>,
    warned: AtomicBool,
}

impl DirShared {
    fn transmit(&self, data: &[u8], wire: u32, rule: &RuleCounters) {
        match self.out.send(data) {
            Ok(()) => {
                rule.sent(u64::from(wire));
                if let Some(p) = &self.pcap
                    && lock(p)
                        .write(sys::real_ns(), &data[VNET_HDR_LEN..])
                        .is_err()
                {
                    RuleCounters::add(&self.counters.pcap_errors, 1);
                }
            }
            Err(e) => {
                RuleCounters::add(&self.counters.send_errors, 1);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        dir = %self.dir,
                        iface = %self.out_iface,
                        error = %e,
                        "linkem: sending failed (counted in send_errors; further failures not logged)"
                    );
                }
            }
        }
    }
}

/// What the threads share.
struct Shared {
    name: String,
    stop: AtomicBool,
    wake: EventFd,
    /// The io thread is blocked in `poll`.
    io_sleeping: AtomicBool,
    dirs: [DirShared; 2],
    updates: [Mutex<Option<Compiled>>; 2],
    epochs: [AtomicU64; 2],
    log: Option<Arc<LogSink>>,
    rx_spin: i64,
    tx_spin: i64,
    tx_spin_max: i64,
    /// Until when (CLOCK_MONOTONIC ns) a kicked io thread keeps polling: two `rx_spin` past
    /// the release time of the packet about to leave, so that its answer is picked up without
    /// a wake-up even when the kick itself was answered late.
    kick_until: AtomicI64,
    realtime: Option<u8>,
    realtime_io: bool,
}

/// Timing knobs of the relay threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long the io thread keeps polling after its last packet before it blocks.
    pub rx_spin: Duration,
    /// How long before a release time a tx thread stops sleeping and spins, at least: the
    /// thread adds the 90th percentile of its recent wake-up overshoots (see the module docs).
    pub tx_spin: Duration,
    /// The most a tx thread wakes ahead of a release, however late the host wakes it.
    pub tx_spin_max: Duration,
    /// SCHED_FIFO priority of the two tx threads (`None`: ordinary scheduling). On a busy
    /// machine an ordinary thread can wake milliseconds late; a real-time one preempts at
    /// once. Their busy time is bounded by the traffic they send plus `tx_spin` per release,
    /// and the kernel's real-time throttling still bounds it. If the kernel refuses (no
    /// CAP_SYS_NICE), the relay runs with ordinary scheduling and says so in a log line.
    pub realtime: Option<u8>,
    /// Also run the io thread SCHED_FIFO at that priority: zero-impairment latency then holds
    /// on a busy machine too, at the cost of the io thread preempting ordinary work while it
    /// relays (bounded by the kernel's real-time throttling).
    pub realtime_io: bool,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            rx_spin: Duration::from_micros(50),
            tx_spin: Duration::from_micros(100),
            tx_spin_max: Duration::from_millis(1),
            realtime: Some(10),
            realtime_io: true,
        }
    }
}

/// A running link emulator between two interfaces of one namespace.
///
/// Dropping it stops it (as [`Relay::stop`] does, discarding the statistics).
pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<(String, JoinHandle<()>)>,
    a: String,
    b: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.shared.name)
            .field("a", &self.a)
            .field("b", &self.b)
            .finish()
    }
}

impl Relay {
    /// Opens packet sockets on `a` and `b` inside the namespace, and starts relaying.
    ///
    /// Guarantees: on error, nothing keeps running (threads already started are stopped).
    /// Assumes: both interfaces exist and are up, hold no addresses the relay namespace would
    /// answer for, and keep their offloads on (the relay carries GSO frames whole).
    pub fn start(cfg: RelayConfig) -> Result<Relay> {
        let name = cfg.name.clone();
        let invalid = |dir: Dir, (rule, detail): (String, String)| LinkemError::InvalidRule {
            relay: name.clone(),
            dir,
            rule,
            detail,
        };
        cfg.a_to_b.validate().map_err(|e| invalid(Dir::AToB, e))?;
        cfg.b_to_a.validate().map_err(|e| invalid(Dir::BToA, e))?;
        if cfg.a == cfg.b {
            return Err(LinkemError::InvalidConfig {
                relay: name,
                detail: format!("both ends are interface {}", cfg.a),
            });
        }
        let compiled = [Compiled::new(&cfg.a_to_b), Compiled::new(&cfg.b_to_a)];

        let (a, b) = (cfg.a.clone(), cfg.b.clone());
        let ns_name = cfg.ns_name.clone();
        let (sa, sb) = crate::host::ns::run_in_fd(cfg.ns.as_fd(), &cfg.ns_name, || {
            let open = |iface: &str| {
                PacketSocket::open(iface).map_err(|(op, source)| LinkemError::Socket {
                    op,
                    iface: iface.to_string(),
                    ns: ns_name.clone(),
                    source,
                })
            };
            Ok::<_, LinkemError>((open(&a)?, open(&b)?))
        })
        .map_err(|source| LinkemError::Namespace {
            relay: name.clone(),
            source: Box::new(source),
        })??;
        let socks = [Arc::new(sa), Arc::new(sb)];

        let file_err = |op: &'static str, path: &std::path::Path, source| LinkemError::File {
            op,
            path: path.to_path_buf(),
            source,
        };
        let pcap = |d: Dir| -> Result<Option<Mutex<PcapWriter>>> {
            let Some(dir) = &cfg.pcap else {
                return Ok(None);
            };
            let path = dir.join(format!("{}-{}.pcap", cfg.name, d.as_str()));
            PcapWriter::create(&path)
                .map(|w| Some(Mutex::new(w)))
                .map_err(|e| file_err("creating pcap capture", &path, e))
        };
        let log = match &cfg.decision_log {
            DecisionLog::Off => None,
            DecisionLog::Memory(n) => Some(Arc::new(LogSink::memory(*n))),
            DecisionLog::File(p) => Some(Arc::new(LogSink::file(
                File::create(p).map_err(|e| file_err("creating decision log", p, e))?,
            ))),
        };
        let dir_shared = |d: Dir| -> Result<DirShared> {
            let (out, out_iface) = match d {
                Dir::AToB => (socks[1].clone(), cfg.b.clone()),
                Dir::BToA => (socks[0].clone(), cfg.a.clone()),
            };
            Ok(DirShared {
                dir: d,
                out,
                out_iface,
                pending: AtomicUsize::new(0),
                next_wake: AtomicI64::new(i64::MAX),
                thread: OnceLock::new(),
                pcap: pcap(d)?,
                counters: Arc::new(DirCounters::default()),
                warned: AtomicBool::new(false),
            })
        };
        let wake = EventFd::new().map_err(|e| LinkemError::Thread {
            relay: name.clone(),
            thread: "io".into(),
            source: e,
        })?;
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let shared = Arc::new(Shared {
            name: name.clone(),
            stop: AtomicBool::new(false),
            wake,
            io_sleeping: AtomicBool::new(false),
            dirs: [dir_shared(Dir::AToB)?, dir_shared(Dir::BToA)?],
            updates: [Mutex::new(None), Mutex::new(None)],
            epochs: [AtomicU64::new(0), AtomicU64::new(0)],
            log: log.clone(),
            rx_spin: nanos(cfg.timing.rx_spin),
            tx_spin: nanos(cfg.timing.tx_spin),
            tx_spin_max: nanos(cfg.timing.tx_spin_max.max(cfg.timing.tx_spin)),
            kick_until: AtomicI64::new(0),
            realtime: cfg.timing.realtime,
            realtime_io: cfg.timing.realtime_io,
        });
        let deciders = Dir::BOTH.map(|d| {
            Decider::new(
                &name,
                d,
                cfg.seed,
                &compiled[d.index()],
                shared.dirs[d.index()].counters.clone(),
                log.clone(),
            )
        });

        let mut relay = Relay {
            shared: shared.clone(),
            threads: Vec::new(),
            a: cfg.a.clone(),
            b: cfg.b.clone(),
        };
        let (mut senders, mut receivers) = (Vec::new(), Vec::new());
        for _ in Dir::BOTH {
            let (tx, rx) = channel::<Queued>();
            senders.push(tx);
            receivers.push(rx);
        }
        for (d, rx) in Dir::BOTH.into_iter().zip(receivers) {
            let s = shared.clone();
            let t = relay.spawn(&format!("tx {d}"), move || tx_loop(&s, d, rx))?;
            let _ = shared.dirs[d.index()].thread.set(t);
        }
        let s = shared.clone();
        relay.spawn("io", move || io_loop(&s, socks, deciders, senders))?;
        tracing::debug!(relay = %name, a = %cfg.a, b = %cfg.b, ns = %cfg.ns_name, "linkem started");
        Ok(relay)
    }

    fn spawn(&mut self, what: &str, f: impl FnOnce() + Send + 'static) -> Result<Thread> {
        let h = std::thread::Builder::new()
            .name(format!("linkem-{}", what.replace(' ', "-")))
            .spawn(f)
            .map_err(|source| LinkemError::Thread {
                relay: self.shared.name.clone(),
                thread: what.to_string(),
                source,
            })?;
        let t = h.thread().clone();
        self.threads.push((what.to_string(), h));
        Ok(t)
    }

    /// Replaces the rules of one direction. The next packet read is decided by the new rules;
    /// packets already queued keep the release times they were given (as with netem).
    /// Statistics and random streams of rules that keep their names carry on.
    pub fn update(&self, dir: Dir, cfg: DirectionConfig) -> Result<()> {
        cfg.validate()
            .map_err(|(rule, detail)| LinkemError::InvalidRule {
                relay: self.shared.name.clone(),
                dir,
                rule,
                detail,
            })?;
        let c = Compiled::new(&cfg);
        *lock(&self.shared.updates[dir.index()]) = Some(c);
        self.shared.epochs[dir.index()].fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Counters now.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            relay: self.shared.name.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            a_to_b: self.shared.dirs[0].counters.snapshot(Dir::AToB),
            b_to_a: self.shared.dirs[1].counters.snapshot(Dir::BToA),
        }
    }

    /// The decisions kept so far by a [`DecisionLog::Memory`] log (empty otherwise).
    pub fn decision_log(&self) -> Vec<LogEntry> {
        self.shared
            .log
            .as_ref()
            .map(|l| l.entries())
            .unwrap_or_default()
    }

    /// Stops every thread, discards packets still queued, flushes captures and logs, and
    /// returns the final counters.
    pub fn stop(mut self) -> Result<RelayStats> {
        self.shutdown()?;
        Ok(self.stats())
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.threads.is_empty() {
            return Ok(());
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.signal();
        for d in &self.shared.dirs {
            if let Some(t) = d.thread.get() {
                t.unpark();
            }
        }
        let mut first_err = None;
        for (what, h) in self.threads.drain(..) {
            if h.join().is_err() && first_err.is_none() {
                first_err = Some(LinkemError::Panicked {
                    relay: self.shared.name.clone(),
                    thread: what,
                });
            }
        }
        for d in &self.shared.dirs {
            if let Some(p) = &d.pcap
                && let Err(e) = lock(p).flush()
                && first_err.is_none()
            {
                first_err = Some(LinkemError::File {
                    op: "writing pcap capture of",
                    path: format!("relay {} ({})", self.shared.name, d.dir).into(),
                    source: e,
                });
            }
        }
        if let Some(l) = &self.shared.log
            && let Err(e) = l.flush()
            && first_err.is_none()
        {
            first_err = Some(LinkemError::File {
                op: "writing decision log of",
                path: format!("relay {}", self.shared.name).into(),
                source: e,
            });
        }
        tracing::debug!(relay = %self.shared.name, "linkem stopped");
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "linkem: stopping on drop");
        }
    }
}

/// Per-thread state of the io loop.
struct Io {
    deciders: [Decider; 2],
    senders: Vec<Sender<Queued>>,
    seen_epochs: [u64; 2],
    segs: Vec<Vec<u8>>,
    order: u64,
}

fn io_loop(
    shared: &Shared,
    socks: [Arc<PacketSocket>; 2],
    deciders: [Decider; 2],
    senders: Vec<Sender<Queued>>,
) {
    sys::set_timer_slack(1);
    if let Some(p) = shared.realtime.filter(|_| shared.realtime_io)
        && let Err(e) = sys::set_realtime(p)
    {
        tracing::info!(relay = %shared.name, error = %e, "linkem: io thread keeps ordinary scheduling");
    }
    let mut io = Io {
        deciders,
        senders,
        seen_epochs: [0; 2],
        segs: Vec::new(),
        order: 0,
    };
    let mut buf = vec![0u8; BUF_LEN];
    let mut spin_until = 0i64;
    let mut error_streak = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        let mut got = false;
        // Realtime − monotonic, read once per pass that receives anything (not per packet):
        // it moves only when the wall clock is stepped or slewed.
        let mut clock_offset = None;
        for (side, sock) in socks.iter().enumerate() {
            for _ in 0..BATCH {
                match sock.recv(&mut buf, true) {
                    Ok(Some(r)) => {
                        got = true;
                        error_streak = 0;
                        let off = *clock_offset.get_or_insert_with(sys::real_minus_mono_ns);
                        io.handle(shared, side, &mut buf, r, off);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let c = &shared.dirs[side].counters;
                        RuleCounters::add(&c.recv_errors, 1);
                        error_streak += 1;
                        if error_streak == 1 {
                            tracing::warn!(relay = %shared.name, dir = %shared.dirs[side].dir, error = %e, "linkem: receive failed");
                        }
                        break;
                    }
                }
            }
        }
        if error_streak > 16 {
            // A vanished interface reports errors forever: do not turn that into a busy loop.
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = sys::mono_ns();
        if got {
            spin_until = now + shared.rx_spin;
            continue;
        }
        if now < spin_until {
            std::hint::spin_loop();
            continue;
        }
        let fds = [
            socks[0].as_raw_fd(),
            socks[1].as_raw_fd(),
            shared.wake.as_raw_fd(),
        ];
        shared.io_sleeping.store(true, Ordering::SeqCst);
        let ready = sys::poll(fds, -1);
        shared.io_sleeping.store(false, Ordering::SeqCst);
        match ready {
            Ok([_, _, true]) => {
                // Kicked by a tx thread about to release a packet (or by stop): poll for the
                // answer, which comes back within the tx thread's spin window plus a round trip.
                shared.wake.drain();
                spin_until = (sys::mono_ns() + shared.rx_spin)
                    .max(shared.kick_until.load(Ordering::Relaxed));
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Io {
    /// `real_minus_mono`: [`sys::real_minus_mono_ns`], to date `r` by the kernel's timestamp.
    fn handle(
        &mut self,
        shared: &Shared,
        side: usize,
        buf: &mut [u8],
        r: sys::Recv,
        real_minus_mono: i64,
    ) {
        let ds = &shared.dirs[side];
        let epoch = shared.epochs[side].load(Ordering::Acquire);
        if epoch != self.seen_epochs[side] {
            if let Some(c) = lock(&shared.updates[side]).take() {
                self.deciders[side].install(&c);
            }
            self.seen_epochs[side] = epoch;
        }
        RuleCounters::add(&ds.counters.frames, 1);
        if r.truncated || r.len < VNET_HDR_LEN + 14 {
            RuleCounters::add(&ds.counters.malformed, 1);
            return;
        }
        let Some(hdr) = VnetHdr::read(buf) else {
            RuleCounters::add(&ds.counters.malformed, 1);
            return;
        };
        let now = sys::mono_ns();
        let arrival = match r.ts_real {
            Some(t) => (t - real_minus_mono).clamp(now - 1_000_000_000, now),
            None => now,
        };
        let frame = &buf[VNET_HDR_LEN..r.len];
        let Some(parsed) = frame::parse(frame) else {
            RuleCounters::add(&ds.counters.malformed, 1);
            return;
        };
        let d = &mut self.deciders[side];
        let rule = d.classify(parsed.v4);
        let counters = d.counters(rule).clone();
        if hdr.is_gso() {
            RuleCounters::add(&ds.counters.gso_frames, 1);
            if d.per_packet(rule) {
                let mut segs = std::mem::take(&mut self.segs);
                if frame::segment(&hdr, frame, &parsed, &mut segs) {
                    RuleCounters::add(&ds.counters.gso_segmented, 1);
                    for s in segs.drain(..) {
                        let len = (s.len() - VNET_HDR_LEN) as u32;
                        let l3 = parsed.l3 as u32;
                        let o = self.deciders[side].decide_frame(
                            rule,
                            arrival,
                            len,
                            len - l3,
                            Some((&s[VNET_HDR_LEN..], &parsed)),
                        );
                        self.execute(
                            ds,
                            o.original,
                            o.copy,
                            Pkt::Owned(s),
                            parsed.l3,
                            len,
                            &counters,
                            (arrival, now),
                        );
                    }
                    self.segs = segs;
                    return;
                }
                self.segs = segs;
                RuleCounters::add(&ds.counters.gso_whole, 1);
            }
        }
        let wire = frame::wire_len(&hdr, frame, &parsed);
        let corruptible = (frame.len() - parsed.l3) as u32;
        let o = self.deciders[side].decide_frame(
            rule,
            arrival,
            wire,
            corruptible,
            Some((frame, &parsed)),
        );
        self.execute(
            ds,
            o.original,
            o.copy,
            Pkt::Borrowed(&buf[..r.len]),
            parsed.l3,
            wire,
            &counters,
            (arrival, now),
        );
    }

    /// Sends or queues the original and the duplicate of one packet.
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &mut self,
        ds: &DirShared,
        original: Option<Action>,
        copy: Option<Action>,
        pkt: Pkt<'_>,
        l3: usize,
        wire: u32,
        rule: &Arc<RuleCounters>,
        (arrival, now): (i64, i64),
    ) {
        let mut pkt = Some(pkt);
        for (i, a) in [original, copy].into_iter().enumerate() {
            let Some(a) = a else { continue };
            // The copy needs its own bytes; the original may take the received ones.
            let last = i == 1 || copy.is_none();
            let Some(p) = (if last {
                pkt.take()
            } else {
                pkt.as_ref().map(Pkt::dup)
            }) else {
                continue;
            };
            let p = match a.corrupt_bit {
                Some(bit) => {
                    let mut v = p.into_owned();
                    corrupt(&mut v, l3, bit);
                    Pkt::Owned(v)
                }
                None => p,
            };
            let due = a.reordered || a.release <= now;
            if due && ds.pending.load(Ordering::Acquire) == 0 {
                ds.transmit(p.bytes(), wire, rule);
                if i == 0 {
                    let c = &ds.counters;
                    RuleCounters::add(&c.inline_packets, 1);
                    let took = u64::try_from(sys::mono_ns() - arrival).unwrap_or(0);
                    RuleCounters::add(&c.inline_latency_ns, took);
                }
                continue;
            }
            self.order += 1;
            let q = Queued {
                head: a.reordered,
                release: a.release,
                order: self.order,
                data: p.into_owned(),
                wire,
                rule: rule.clone(),
            };
            let (head, release) = (q.head, q.release);
            ds.pending.fetch_add(1, Ordering::AcqRel);
            rule.queued();
            if self.senders[ds.dir.index()].send(q).is_err() {
                // The tx thread is gone (stopping): the packet is discarded.
                ds.pending.fetch_sub(1, Ordering::AcqRel);
                rule.dequeued();
                continue;
            }
            // Pairs with the fence in `tx_loop`: either the tx thread sees this packet
            // before it sleeps, or this thread sees its wake time and wakes it.
            fence(Ordering::SeqCst);
            if (head || release < ds.next_wake.load(Ordering::SeqCst))
                && let Some(t) = ds.thread.get()
            {
                t.unpark();
            }
        }
    }
}

/// Completes a partial checksum, then flips the bit (netem's order), so receivers see a
/// checksum error as they would on a real corrupting link.
fn corrupt(v: &mut [u8], l3: usize, bit: u32) {
    let Some(mut h) = VnetHdr::read(v) else {
        return;
    };
    let f = &mut v[VNET_HDR_LEN..];
    // A GSO frame cut nowhere keeps its partial checksum: the kernel checksums it later.
    if !h.is_gso() && frame::complete_checksum(&mut h, f) {
        h.write(v);
    }
    frame::flip_bit(&mut v[VNET_HDR_LEN..], l3, bit);
}

enum Pkt<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Pkt<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Pkt::Borrowed(b) => b,
            Pkt::Owned(v) => v,
        }
    }
    fn into_owned(self) -> Vec<u8> {
        match self {
            Pkt::Borrowed(b) => b.to_vec(),
            Pkt::Owned(v) => v,
        }
    }
    fn dup(&self) -> Pkt<'static> {
        Pkt::Owned(self.bytes().to_vec())
    }
}

/// The last [`Overshoots::KEPT`] wake-up overshoots of one tx thread (ns after its timer), and
/// the wake margin they call for.
#[derive(Debug, Default)]
struct Overshoots {
    ring: Vec<i64>,
    next: usize,
}

impl Overshoots {
    const KEPT: usize = 64;

    fn record(&mut self, ns: i64) {
        if self.ring.len() < Self::KEPT {
            self.ring.push(ns);
        } else {
            self.ring[self.next] = ns;
        }
        self.next = (self.next + 1) % Self::KEPT;
    }

    /// `base` plus the 90th percentile of the kept overshoots, at most `max` (and never below
    /// `base`): with fewer than 8 measured, `base` alone.
    fn margin(&self, base: i64, max: i64) -> i64 {
        if self.ring.len() < 8 {
            return base;
        }
        let mut v = self.ring.clone();
        let k = (v.len() * 9 / 10).min(v.len() - 1);
        let (_, p90, _) = v.select_nth_unstable(k);
        (base + (*p90).max(0)).clamp(base, max.max(base))
    }
}

fn tx_loop(shared: &Shared, dir: Dir, rx: Receiver<Queued>) {
    sys::set_timer_slack(1);
    if let Some(p) = shared.realtime
        && let Err(e) = sys::set_realtime(p)
    {
        tracing::info!(relay = %shared.name, %dir, error = %e, "linkem: tx thread keeps ordinary scheduling");
    }
    let ds = &shared.dirs[dir.index()];
    // The queue is this thread's alone: the io thread hands packets over through a lock-free
    // channel, so a descheduled io thread can never hold up a release (no lock to invert).
    let mut heap: BinaryHeap<Queued> = BinaryHeap::new();
    let mut batch: Vec<Queued> = Vec::new();
    let mut wakes = Overshoots::default();
    // Recomputed only when a wake-up is measured, not on every pass of the loop.
    let mut margin = shared.tx_spin;
    let drain = |heap: &mut BinaryHeap<Queued>| {
        while let Ok(q) = rx.try_recv() {
            heap.push(q);
        }
    };
    // Publishes when this thread will look again by itself, then looks once more: see the
    // fence in `Io::execute`.
    let sleep_until = |heap: &mut BinaryHeap<Queued>, wake: i64| -> bool {
        ds.next_wake.store(wake, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let before = heap.len();
        drain(heap);
        heap.len() == before
    };
    loop {
        drain(&mut heap);
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let now = sys::mono_ns();
        let Some(h) = heap.peek() else {
            if sleep_until(&mut heap, i64::MAX) {
                std::thread::park();
            }
            continue;
        };
        let due = if h.head { now } else { h.release };
        if due - now > margin {
            let wake = due - margin;
            if sleep_until(&mut heap, wake) {
                std::thread::park_timeout(Duration::from_nanos((wake - now) as u64));
                // Woken by its timer (not by a new packet): how late the host woke it.
                let over = sys::mono_ns() - wake;
                if over >= 0 {
                    wakes.record(over);
                    margin = wakes.margin(shared.tx_spin, shared.tx_spin_max);
                    let c = &ds.counters;
                    c.max_wake_overshoot_ns
                        .fetch_max(over as u64, Ordering::Relaxed);
                    c.wake_margin_ns.store(margin as u64, Ordering::Relaxed);
                }
            }
            continue;
        }
        if due > now {
            // Spin to the release time, still taking in new (possibly earlier) packets. The
            // io thread is woken now, so that it is already polling when the answer to this
            // packet comes back: its wake-up no longer adds to the emulated delay.
            if shared.io_sleeping.load(Ordering::Relaxed) {
                shared
                    .kick_until
                    .fetch_max(due + 2 * shared.rx_spin, Ordering::Relaxed);
                shared.wake.signal();
            }
            ds.next_wake.store(now, Ordering::SeqCst);
            let before = heap.len();
            while sys::mono_ns() < due && !shared.stop.load(Ordering::Relaxed) {
                drain(&mut heap);
                if heap.len() != before {
                    break;
                }
                std::hint::spin_loop();
            }
            continue;
        }
        let now = sys::mono_ns();
        while heap.peek().is_some_and(|h| h.head || h.release <= now) {
            if let Some(q) = heap.pop() {
                batch.push(q);
            }
        }
        for q in batch.drain(..) {
            if !q.head {
                let late = sys::mono_ns() - q.release;
                ds.counters.lateness(u64::try_from(late).unwrap_or(0));
            }
            ds.transmit(&q.data, q.wire, &q.rule);
            q.rule.dequeued();
            ds.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
    // Stopping: what is still queued is discarded.
    drain(&mut heap);
    for q in heap.drain() {
        q.rule.dequeued();
        ds.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod overshoot_tests {
    use super::Overshoots;

    #[test]
    fn margin_is_the_base_until_enough_wakes_are_measured() {
        let mut o = Overshoots::default();
        for _ in 0..7 {
            o.record(5_000_000);
        }
        assert_eq!(o.margin(100_000, 1_000_000), 100_000);
    }

    #[test]
    fn margin_follows_the_90th_percentile_within_its_bounds() {
        let mut o = Overshoots::default();
        // One wake in five 3 ms late, the others 20 µs: the p90 of the last 64 is 3 ms,
        // capped at 1 ms.
        for i in 0..100 {
            o.record(if i % 5 == 0 { 3_000_000 } else { 20_000 });
        }
        assert_eq!(o.margin(100_000, 1_000_000), 1_000_000);
        // A quiet host: every wake about 30 µs late.
        for _ in 0..64 {
            o.record(30_000);
        }
        assert_eq!(o.margin(100_000, 1_000_000), 130_000);
        // Mostly punctual with a late tail under 10 %: the tail does not set the margin.
        for i in 0..64 {
            o.record(if i % 16 == 0 { 2_000_000 } else { 10_000 });
        }
        assert_eq!(o.margin(100_000, 1_000_000), 110_000);
        // A maximum below the base means the base.
        assert_eq!(o.margin(100_000, 50_000), 100_000);
    }
}
