//! linkem against a bare veth pair, measured side by side in one run (see run.sh).
//!
//! Both topologies live in namespaces this process creates (`edgesim-b-<pid>-l<n>`) and
//! deletes at the end; traffic never leaves them.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgesim::linkem::testbed::{ADDR_A, ADDR_B, Testbed};
use edgesim::linkem::{Dir, DirectionConfig, Impairment, Loss, Relay, Rule};

struct Opts {
    iperf_secs: u32,
    reps: usize,
    pings: usize,
    loss_packets: u32,
}

fn ip_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// One iperf3 TCP stream A → B; receiver-side bits per second.
fn iperf(tb: &Testbed, secs: u32) -> Result<f64> {
    let mut server = ip_netns(&tb.b, &["iperf3", "-s", "-1", "-B", &ADDR_B.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    thread::sleep(Duration::from_millis(300));
    let out = ip_netns(
        &tb.a,
        &[
            "iperf3",
            "-c",
            &ADDR_B.to_string(),
            "-t",
            &secs.to_string(),
            "-O",
            "1",
            "-J",
        ],
    )
    .output()?;
    let _ = server.wait();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 reported no result: {}", v["error"]))
}

/// `n` pings A → B every 10 ms; RTTs in ms (the first, which resolves ARP, dropped).
/// ping runs SCHED_FIFO 20 (above linkem's threads) when `chrt` is there, so that on a busy
/// machine its own wake-ups do not pollute what it measures; the bare baseline gets the same.
fn ping(tb: &Testbed, n: usize) -> Result<Vec<f64>> {
    let rt: &[&str] = if edgesim::testing::have_program("chrt") {
        &["chrt", "-f", "20"]
    } else {
        &[]
    };
    let out = ip_netns(
        &tb.a,
        &[
            rt,
            &[
                "ping",
                "-n",
                "-i",
                "0.01",
                "-c",
                &(n + 1).to_string(),
                &ADDR_B.to_string(),
            ],
        ]
        .concat(),
    )
    .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if v.len() < 2 {
        bail!("ping got no replies: {text}");
    }
    v.remove(0);
    Ok(v)
}

/// How late a blocked thread wakes on this machine, measured while `during` runs: a thread of
/// linkem's tx priority (SCHED_FIFO 10, where allowed) sleeps 19.9 ms at a time (the delay run's
/// period, minus a little) until `during` returns; µs of lateness per wake-up. This is the
/// floor under any sleeping (non-spinning) delay emulation here, linkem or netem.
fn wakeups_beside<T>(during: impl FnOnce() -> T) -> (T, Vec<f64>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let h = thread::spawn(move || {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid sched_param.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        let mut late = Vec::new();
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let want = Duration::from_micros(19_900);
            let t = std::time::Instant::now();
            thread::sleep(want);
            late.push((t.elapsed().saturating_sub(want)).as_secs_f64() * 1e6);
        }
        late
    });
    let out = during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, h.join().unwrap_or_default())
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sends `n` sequence-numbered datagrams A → B; returns which arrived.
fn udp_run(tb: &Testbed, n: u32) -> Result<HashSet<u32>> {
    let a = tb.in_a(|| UdpSocket::bind((ADDR_A, 0)))??;
    let b = tb.in_b(|| UdpSocket::bind((ADDR_B, 0)))??;
    b.set_read_timeout(Some(Duration::from_millis(500)))?;
    // A large receive buffer, so a descheduled receiver loses nothing: losses are linkem's.
    let big: libc::c_int = 32 << 20;
    // SAFETY: `big` is a live c_int and its size is passed; the fd is `b`'s.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&b),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const big).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let dst = b.local_addr()?;
    let rx = thread::spawn(move || {
        let mut got = HashSet::new();
        let mut buf = [0u8; 256];
        while let Ok(k) = b.recv(&mut buf) {
            if k >= 4 {
                got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        got
    });
    let mut p = [0u8; 64];
    for i in 0..n {
        p[..4].copy_from_slice(&i.to_be_bytes());
        a.send_to(&p, dst)?;
        thread::sleep(Duration::from_micros(50));
    }
    rx.join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))
}

fn flow(name: &str, imp: Impairment) -> DirectionConfig {
    DirectionConfig {
        rules: vec![Rule {
            name: name.into(),
            src: Some(format!("{ADDR_A}/32").parse().expect("prefix")),
            dst: Some(format!("{ADDR_B}/32").parse().expect("prefix")),
            imp,
        }],
    }
}

/// Delay fidelity only, `runs` times for each scheduling choice (an experiment).
fn delay_matrix(lk: &Testbed, bare: &Testbed, runs: usize, pings: usize) -> Result<()> {
    let base = pct(&ping(bare, pings)?, 0.5);
    for (label, rt, rt_io) in [
        ("ordinary", None, false),
        ("rt tx", Some(10), false),
        ("rt tx+io", Some(10), true),
    ] {
        for _ in 0..runs {
            let mut cfg = lk.relay_config("bench")?;
            cfg.timing.realtime = rt;
            cfg.timing.realtime_io = rt_io;
            cfg.a_to_b = DirectionConfig::all(Impairment::delay(Duration::from_millis(20)));
            let relay = Relay::start(cfg)?;
            let rd = ping(lk, pings)?;
            let s = relay.stop()?;
            let err: Vec<f64> = rd
                .iter()
                .map(|r| ((r - 20.0 - base) * 1000.0).abs())
                .collect();
            println!(
                "{label:>10}: |err| p50 {:.0} p99 {:.0} max {:.0} µs; late {} worst {} µs; load {}",
                pct(&err, 0.5),
                pct(&err, 0.99),
                pct(&err, 1.0),
                s.a_to_b.late_sends,
                s.a_to_b.max_lateness_ns / 1000,
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .split(' ')
                    .next()
                    .unwrap_or("")
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let o = if quick {
        Opts {
            iperf_secs: 3,
            reps: 1,
            pings: 300,
            loss_packets: 10_000,
        }
    } else {
        Opts {
            iperf_secs: 5,
            reps: 3,
            pings: 1000,
            loss_packets: 10_000,
        }
    };
    if !nix_is_root() {
        bail!("run as root (creates network namespaces)");
    }
    for p in ["ip", "iperf3", "ping"] {
        if !edgesim::testing::have_program(p) {
            bail!("`{p}` is not installed");
        }
    }
    let prefix = format!("edgesim-b-{}", std::process::id());
    let bare = Testbed::bare(&prefix)?;
    let lk = Testbed::relayed(&prefix)?;
    if std::env::args().any(|a| a == "--delay-matrix") {
        return delay_matrix(&lk, &bare, 3, 500);
    }
    let mut cfg = lk.relay_config("bench")?;
    // `--busy-poll`: the io thread never blocks while traffic keeps coming (it polls for up to
    // a second after each packet): a whole CPU spent to take the scheduler's wake-up (most
    // of the added latency on a VM) out of the path.
    if std::env::args().any(|a| a == "--busy-poll") {
        cfg.timing.rx_spin = Duration::from_secs(1);
        // A real-time thread that never sleeps meets the kernel's real-time throttling
        // (5 % of every second): keep the spinning io thread at normal priority.
        cfg.timing.realtime_io = false;
        println!("(busy-poll: io thread spins up to 1 s after each packet, normal priority)");
    }
    let relay = Relay::start(cfg)?;
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    println!("# linkem vs bare veth ({cpus} CPUs, kernel {})", kernel());
    println!();

    // 1. Throughput, alternating to spread drift over both.
    let (mut tb, mut tl) = (Vec::new(), Vec::new());
    for _ in 0..o.reps {
        tb.push(iperf(&bare, o.iperf_secs)?);
        tl.push(iperf(&lk, o.iperf_secs)?);
    }
    let s0 = relay.stats();
    // 2. Added RTT at zero impairment.
    let rb = ping(&bare, o.pings)?;
    let before = relay.stats();
    let rl = ping(&lk, o.pings)?;
    let after = relay.stats();
    let inline_us = |d: Dir| {
        let (b, a) = (before.dir(d), after.dir(d));
        (a.inline_latency_ns - b.inline_latency_ns) as f64
            / 1e3
            / (a.inline_packets - b.inline_packets).max(1) as f64
    };
    let (in_ab, in_ba) = (inline_us(Dir::AToB), inline_us(Dir::BToA));
    // 3. Delay fidelity: 20 ms one way.
    relay.update(
        Dir::AToB,
        DirectionConfig::all(Impairment::delay(Duration::from_millis(20))),
    )?;
    let (rd, wake) = wakeups_beside(|| ping(&lk, o.pings));
    let rd = rd?;
    let s_delay = relay.stats();
    let base = pct(&rb, 0.5);
    let err_us: Vec<f64> = rd.iter().map(|r| (r - 20.0 - base) * 1000.0).collect();
    let abs_err: Vec<f64> = err_us.iter().map(|e| e.abs()).collect();
    // The delay emulation's own error: against linkem's zero-impairment RTT.
    let own_base = pct(&rl, 0.5);
    let own_err: Vec<f64> = rd.iter().map(|r| (r - 20.0 - own_base) * 1000.0).collect();
    let own_abs: Vec<f64> = own_err.iter().map(|e| e.abs()).collect();
    // 4. Loss fidelity.
    let n = o.loss_packets;
    let mut loss_rows = Vec::new();
    for p in [0.01, 0.1, 0.3] {
        relay.update(
            Dir::AToB,
            flow(
                &format!("loss-{p}"),
                Impairment {
                    loss: Loss::random(p),
                    ..Impairment::default()
                },
            ),
        )?;
        let name = format!("loss-{p}");
        let got = udp_run(&lk, n)?;
        let lost = f64::from(n) - got.len() as f64;
        let decided = relay
            .stats()
            .a_to_b
            .rule(&name)
            .map_or(0, |r| r.dropped_loss);
        let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
        let (lo, hi) = (f64::from(n) * p - 2.576 * sd, f64::from(n) * p + 2.576 * sd);
        loss_rows.push((p, lost, lo, hi, decided));
    }
    let (gp, gr) = (0.05, 0.25);
    relay.update(
        Dir::AToB,
        flow(
            "ge",
            Impairment {
                loss: Loss::GilbertElliott {
                    p: gp,
                    r: gr,
                    loss_in_bad: 1.0,
                    loss_in_good: 0.0,
                },
                ..Impairment::default()
            },
        ),
    )?;
    let got = udp_run(&lk, n)?;
    let (mut bursts, mut run) = (Vec::new(), 0u32);
    for i in 0..=n {
        if i < n && !got.contains(&i) {
            run += 1;
        } else if run > 0 {
            bursts.push(f64::from(run));
            run = 0;
        }
    }
    let ge_mean = mean(&bursts);
    // 5. Rate fidelity.
    let mut rate_rows = Vec::new();
    for mbit in [1u64, 10, 100] {
        relay.update(
            Dir::AToB,
            flow(
                &format!("rate-{mbit}"),
                Impairment {
                    rate: Some(mbit * 1_000_000),
                    limit: 100,
                    ..Impairment::default()
                },
            ),
        )?;
        let g = iperf(&lk, o.iperf_secs.max(5))?;
        rate_rows.push((mbit, g));
    }
    let stats = relay.stop()?;

    let (mb, ml) = (mean(&tb), mean(&tl));
    println!("| measurement | bare veth | linkem | result | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| TCP 1 stream, Gbit/s (mean of {}) | {:.2} | {:.2} | {:.0} % of bare | ≥ 60 % |",
        o.reps,
        mb / 1e9,
        ml / 1e9,
        100.0 * ml / mb
    );
    println!(
        "| RTT p50, µs | {:.0} | {:.0} | +{:.0} µs | ≤ 50 µs |",
        pct(&rb, 0.5) * 1e3,
        pct(&rl, 0.5) * 1e3,
        (pct(&rl, 0.5) - pct(&rb, 0.5)) * 1e3
    );
    println!(
        "| RTT p99, µs | {:.0} | {:.0} | +{:.0} µs | ≤ 150 µs |",
        pct(&rb, 0.99) * 1e3,
        pct(&rl, 0.99) * 1e3,
        (pct(&rl, 0.99) - pct(&rb, 0.99)) * 1e3
    );
    println!(
        "| 20 ms one way: RTT − 20 ms − bare p50, µs | | p50 {:+.0}, p99 {:+.0} | abs p50 {:.0}, abs p99 {:.0} µs | abs p99 ≤ 100 µs |",
        pct(&err_us, 0.5),
        pct(&err_us, 0.99),
        pct(&abs_err, 0.5),
        pct(&abs_err, 0.99)
    );
    println!(
        "| 20 ms one way: RTT − 20 ms − linkem-at-zero p50, µs | | p50 {:+.0}, p99 {:+.0} | abs p50 {:.0}, abs p99 {:.0} µs | abs p99 ≤ 100 µs |",
        pct(&own_err, 0.5),
        pct(&own_err, 0.99),
        pct(&own_abs, 0.5),
        pct(&own_abs, 0.99)
    );
    for (p, lost, lo, hi, decided) in &loss_rows {
        let ok = (*lo..=*hi).contains(lost);
        println!(
            "| loss {:.0} % over {n} packets | | {lost:.0} lost at the receiver ({:.2} %; linkem dropped {decided}) | 99 % interval [{lo:.0}, {hi:.0}]: {} | inside |",
            p * 100.0,
            100.0 * lost / f64::from(n),
            if ok { "inside" } else { "OUTSIDE" }
        );
    }
    println!(
        "| Gilbert-Elliott p={gp} r={gr}: mean burst | | {ge_mean:.2} over {} bursts | model {:.2}: {:+.1} % | within 10 % |",
        bursts.len(),
        1.0 / gr,
        100.0 * (ge_mean * gr - 1.0)
    );
    for (mbit, g) in &rate_rows {
        let r = *mbit as f64 * 1e6;
        println!(
            "| rate {mbit} Mbit/s: TCP goodput | | {:.3} Mbit/s | {:+.1} % of rate ({:+.1} % of the 1448/1514 payload share) | ±5 % |",
            g / 1e6,
            100.0 * (g / r - 1.0),
            100.0 * (g / (r * 1448.0 / 1514.0) - 1.0)
        );
    }
    println!();
    println!(
        "linkem a-to-b during the throughput runs: {} frames, {} GSO, {} send errors",
        s0.a_to_b.frames, s0.a_to_b.gso_frames, s0.a_to_b.send_errors
    );
    println!(
        "ping at zero impairment: linkem's mean latency from kernel receive timestamp to sent: {in_ab:.1} µs a-to-b, {in_ba:.1} µs b-to-a"
    );
    println!(
        "a blocked SCHED_FIFO thread beside the delay run, {} sleeps of 19.9 ms: woke late by p50 {:.0}, p90 {:.0}, p99 {:.0}, max {:.0} µs",
        wake.len(),
        pct(&wake, 0.5),
        pct(&wake, 0.9),
        pct(&wake, 0.99),
        pct(&wake, 1.0)
    );
    println!(
        "linkem's tx threads wake {} µs ahead of each release (tx_spin + p90 of their own overshoots, at most 1 ms)",
        s_delay.a_to_b.wake_margin_ns / 1000
    );
    println!(
        "20 ms delay run: {} of {} packets left the queue > 100 µs late (worst {} µs)",
        s_delay.a_to_b.late_sends,
        s_delay.a_to_b.total().sent_packets - s0.a_to_b.total().sent_packets,
        s_delay.a_to_b.max_lateness_ns / 1000
    );
    println!(
        "final a-to-b: {} frames, {} send errors; b-to-a: {} frames",
        stats.a_to_b.frames, stats.a_to_b.send_errors, stats.b_to_a.frames
    );
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
