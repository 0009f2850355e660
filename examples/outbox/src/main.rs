//! `outbox`: the example user service that edgesim tests in this crate.
//!
//! - `outbox send --to HOST:PORT --every 100ms --count N`: produces a numbered reading every
//!   interval into an outbox (a queue) and delivers it over TCP, one line `SEQ NAME` each,
//!   removing it only when the sink answers `ack SEQ`; a broken connection is retried, so
//!   readings wait in the outbox while the uplink is down.
//! - `outbox sink --port P`: acknowledges readings and counts them.
//!
//! Both serve Prometheus text on `--metrics-port` (`GET /metrics`): the sender
//! `outbox_backlog` and `outbox_delivered_total`; the sink `outbox_received_total` (unique
//! readings), `outbox_duplicates_total` and `outbox_missing_total` (numbers below the highest
//! seen, per sender, that never arrived). Only the standard library: the point of the
//! example is the test around it, not the service.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let metrics_port: u16 = flag("--metrics-port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let result = match args.first().map(String::as_str) {
        Some("sink") => sink(
            flag("--port").and_then(|p| p.parse().ok()).unwrap_or(9000),
            metrics_port,
        ),
        Some("send") => {
            let to = flag("--to").unwrap_or_else(|| "sink:9000".into());
            let every = flag("--every")
                .and_then(|d| parse_duration(&d))
                .unwrap_or(Duration::from_millis(100));
            let count = flag("--count").and_then(|c| c.parse().ok()).unwrap_or(100);
            let name = flag("--name").unwrap_or_else(|| {
                std::env::var("EDGESIM_NODE").unwrap_or_else(|_| "sender".into())
            });
            send(&to, every, count, &name, metrics_port)
        }
        _ => Err(
            "usage: outbox sink --port P | outbox send --to HOST:PORT [--every 100ms] [--count N]"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("outbox: {e}");
        std::process::exit(1);
    }
}

/// `100ms`, `2s`.
fn parse_duration(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    s.strip_suffix('s')?
        .parse()
        .ok()
        .map(Duration::from_secs_f64)
}

/// Serves `GET /metrics` with what `render` returns, forever, on its own thread.
fn serve_metrics(port: u16, render: impl Fn() -> String + Send + 'static) -> Result<(), String> {
    let l =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("metrics port {port}: {e}"))?;
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", render())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

#[derive(Default)]
struct SinkState {
    seen: BTreeMap<String, BTreeSet<u64>>,
    duplicates: u64,
}

fn sink(port: u16, metrics_port: u16) -> Result<(), String> {
    let state = Arc::new(Mutex::new(SinkState::default()));
    let st = state.clone();
    serve_metrics(metrics_port, move || {
        let s = st.lock().unwrap_or_else(|e| e.into_inner());
        let received: usize = s.seen.values().map(BTreeSet::len).sum();
        let missing: u64 = s
            .seen
            .values()
            .map(|set| set.last().map_or(0, |max| max + 1) - set.len() as u64)
            .sum();
        format!(
            "# TYPE outbox_received_total counter\noutbox_received_total {received}\n\
             # TYPE outbox_duplicates_total counter\noutbox_duplicates_total {}\n\
             # TYPE outbox_missing_total gauge\noutbox_missing_total {missing}\n",
            s.duplicates
        )
    })?;
    let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("port {port}: {e}"))?;
    for c in l.incoming().flatten() {
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let Ok(mut w) = c.try_clone() else { return };
            for line in BufReader::new(c).lines() {
                let Ok(line) = line else { return };
                let mut it = line.split_whitespace();
                let (Some(seq), Some(name)) =
                    (it.next().and_then(|s| s.parse::<u64>().ok()), it.next())
                else {
                    return;
                };
                {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    if !s.seen.entry(name.to_string()).or_default().insert(seq) {
                        s.duplicates += 1;
                    }
                }
                // One write per line: a line written in pieces waits for delayed ACKs.
                if w.write_all(format!("ack {seq}\n").as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

fn send(
    to: &str,
    every: Duration,
    count: u64,
    name: &str,
    metrics_port: u16,
) -> Result<(), String> {
    let outbox: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let delivered = Arc::new(Mutex::new(0u64));
    {
        let (o, d) = (outbox.clone(), delivered.clone());
        serve_metrics(metrics_port, move || {
            let backlog = o.lock().map_or(0, |q| q.len());
            let done = *d.lock().unwrap_or_else(|e| e.into_inner());
            format!(
                "# TYPE outbox_backlog gauge\noutbox_backlog {backlog}\n\
                 # TYPE outbox_delivered_total counter\noutbox_delivered_total {done}\n"
            )
        })?;
    }
    {
        // The producer: one reading per interval, whatever the network does.
        let o = outbox.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            for seq in 0..count {
                let due = start + every * seq as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                o.lock().unwrap_or_else(|e| e.into_inner()).push_back(seq);
            }
        });
    }
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    loop {
        let next = outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .copied();
        let Some(seq) = next else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if conn.is_none() {
            conn = connect(to);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let Some((w, r)) = conn.as_mut() else {
            continue;
        };
        let mut ack = String::new();
        let ok = w.write_all(format!("{seq} {name}\n").as_bytes()).is_ok()
            && r.read_line(&mut ack).is_ok_and(|n| n > 0)
            && ack.trim() == format!("ack {seq}");
        if ok {
            outbox.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            *delivered.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        } else {
            // Unacknowledged: it stays in the outbox and goes again on a new connection.
            conn = None;
        }
    }
}

fn connect(to: &str) -> Option<(TcpStream, BufReader<TcpStream>)> {
    let addr = to.to_socket_addrs().ok()?.next()?;
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let r = BufReader::new(s.try_clone().ok()?);
    Some((s, r))
}
