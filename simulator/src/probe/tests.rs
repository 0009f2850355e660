//! Probes against real peers: two namespaces joined by a veth pair (needs root).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use super::*;
use crate::host::ns;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces `a` (10.77.x.1) and `b` (10.77.x.2) on one /24, deleted on drop (also when
/// a test panics).
struct Pair {
    a: String,
    b: String,
    subnet: u8,
}

impl Pair {
    fn new() -> Pair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // `p` keeps these apart from the other scratch namespaces of this test process
        // (`edgesim-t-<pid>-<n>` from host::tc), which count from 0 too.
        let a = format!("edgesim-t-{pid}-p{}", 2 * n);
        let b = format!("edgesim-t-{pid}-p{}", 2 * n + 1);
        // Distinct subnets keep tests running in parallel apart, even though the namespaces
        // already are.
        let subnet = (pid as usize * 7 + n) as u8;
        ns::create_many(&[a.clone(), b.clone()]).unwrap();
        let pair = Pair { a, b, subnet };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&[
            "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, "va", pair.addr_a()),
            (&pair.b, "vb", pair.addr_b()),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }
    fn addr_a(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }
    fn addr_b(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 2)
    }
    /// An address in the subnet that nobody holds.
    fn nobody(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 99)
    }
    fn sockets(&self, name: &str) -> SocketFactory {
        SocketFactory::start(ns::open(name).unwrap(), name).unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = ns::delete(&self.a);
        let _ = ns::delete(&self.b);
    }
}

fn probe(name: &str, kind: ProbeKind, every_ms: u64, timeout_ms: u64) -> Probe {
    Probe {
        name: name.into(),
        from: 0,
        kind,
        every: Duration::from_millis(every_ms),
        timeout: Duration::from_millis(timeout_ms),
    }
}

async fn run_for(p: &Probe, sockets: SocketFactory, ms: u64) -> Vec<Sample> {
    let log = ProbeLog::new();
    let t0 = Instant::now();
    run(p, sockets, t0, Duration::from_millis(ms), log.clone(), None)
        .await
        .unwrap();
    log.samples()
}

/// A TCP listener inside `ns`, bound to `addr`.
fn listen_in(sockets: &SocketFactory, addr: SocketAddrV4) -> tokio::net::TcpListener {
    let s = sockets
        .socket(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(128).unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(s.into()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reaches_the_peer_and_fails_on_a_missing_host() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let from_a = pair.sockets(&pair.a);
    let ok = probe(
        "ping-b",
        ProbeKind::Ping {
            target: "b".into(),
            addr: pair.addr_b(),
        },
        50,
        500,
    );
    let samples = run_for(&ok, from_a.clone(), 500).await;
    // Ticks at 0, 50, …, 450 ms; a loaded machine may skip some, never add any.
    assert!((7..=10).contains(&samples.len()), "{samples:?}");
    assert!(samples.iter().all(|s| s.ok), "{samples:?}");
    for s in &samples {
        let rtt = s.rtt.unwrap();
        // A veth hop is tens of microseconds; allow a loaded CI machine plenty.
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_millis(200),
            "{rtt:?}"
        );
    }
    // On the grid: one attempt per 50 ms slot at most (skipped ticks are not made up in a
    // burst), all before the end.
    let slots: Vec<u128> = samples.iter().map(|s| s.t.as_millis() / 50).collect();
    assert!(slots.windows(2).all(|w| w[0] < w[1]), "{slots:?}");
    assert!(slots.iter().all(|k| *k < 10), "{slots:?}");

    let lost = probe(
        "ping-nobody",
        ProbeKind::Ping {
            target: "nobody".into(),
            addr: pair.nobody(),
        },
        100,
        200,
    );
    let samples = run_for(&lost, from_a, 300).await;
    assert!(!samples.is_empty());
    for s in &samples {
        assert!(!s.ok && s.rtt.is_none(), "{s:?}");
        assert!(
            s.error.as_deref().unwrap_or("").contains("no echo reply"),
            "{s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_without_a_route_fails_with_the_reason() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let from_a = pair.sockets(&pair.a);
    // TEST-NET-1: namespace `a` has no route there (no default route at all).
    let p = ping::Pinger::new(&from_a, Ipv4Addr::new(192, 0, 2, 1)).unwrap();
    let err = p.ping(Duration::from_millis(300)).await.unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pingers_only_see_their_own_replies() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let from_a = pair.sockets(&pair.a);
    let p1 = ping::Pinger::new(&from_a, pair.addr_b()).unwrap();
    let p2 = ping::Pinger::new(&from_a, pair.addr_b()).unwrap();
    let dead = ping::Pinger::new(&from_a, pair.nobody()).unwrap();
    assert_ne!(p1.ident(), p2.ident());
    let t = Duration::from_millis(300);
    let (a, b, c) = tokio::join!(p1.ping(t), p2.ping(t), dead.ping(t));
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert!(c.is_err(), "a reply to someone else must not count: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connects_to_a_listener_and_fails_on_a_closed_port() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let in_b = pair.sockets(&pair.b);
    let open = SocketAddrV4::new(pair.addr_b(), 7000);
    let listener = listen_in(&in_b, open);
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let from_a = pair.sockets(&pair.a);
    let p = probe(
        "tcp",
        ProbeKind::Tcp {
            target: "b:7000".into(),
            addr: open,
        },
        100,
        500,
    );
    let samples = run_for(&p, from_a.clone(), 300).await;
    assert!((2..=3).contains(&samples.len()), "{samples:?}");
    assert!(
        samples.iter().all(|s| s.ok && s.rtt.is_some()),
        "{samples:?}"
    );
    // The kernel completes the handshake before the listener's accept() returns.
    for _ in 0..100 {
        if accepted.load(Ordering::SeqCst) >= samples.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        samples.len(),
        "the peer saw each connection"
    );
    server.abort();

    let closed = probe(
        "tcp-closed",
        ProbeKind::Tcp {
            target: "b:7001".into(),
            addr: SocketAddrV4::new(pair.addr_b(), 7001),
        },
        100,
        500,
    );
    let samples = run_for(&closed, from_a, 200).await;
    assert!(!samples.is_empty());
    for s in &samples {
        assert!(!s.ok, "{s:?}");
        assert!(
            s.error.as_deref().unwrap_or("").contains("refused"),
            "{s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_status_and_sends_the_host_header() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let in_b = pair.sockets(&pair.b);
    let addr = SocketAddrV4::new(pair.addr_b(), 8080);
    let listener = listen_in(&in_b, addr);
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get(hyper::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let status = match (req.uri().path(), host.as_str()) {
                            (_, h) if h != "svc.test" => 400,
                            ("/ok", _) => 200,
                            ("/big", _) => 200,
                            ("/teapot", _) => 418,
                            _ => 503,
                        };
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![b'x'; net::MAX_BODY + 1])
                        } else {
                            Bytes::from_static(b"hello")
                        };
                        let mut r = hyper::Response::new(Full::new(body));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let from_a = pair.sockets(&pair.a);
    let http = |path: &str, host: &str, expect_status| {
        probe(
            "http",
            ProbeKind::Http {
                url: format!("http://{host}{path}"),
                target: "b".into(),
                addr,
                path: path.into(),
                host: host.into(),
                expect_status,
            },
            100,
            1000,
        )
    };
    let s = run_for(&http("/ok", "svc.test", None), from_a.clone(), 200).await;
    assert!(!s.is_empty());
    assert!(s.iter().all(|s| s.ok && s.rtt.is_some()), "{s:?}");

    let s = run_for(&http("/down", "svc.test", None), from_a.clone(), 100).await;
    assert_eq!(s.len(), 1, "one tick in 100 ms at 100 ms intervals");
    assert!(!s[0].ok);
    assert_eq!(s[0].error.as_deref(), Some("status 503"));

    let s = run_for(&http("/ok", "other", None), from_a.clone(), 100).await;
    assert_eq!(
        s[0].error.as_deref(),
        Some("status 400"),
        "Host header was not sent"
    );

    let s = run_for(&http("/teapot", "svc.test", Some(418)), from_a.clone(), 100).await;
    assert!(s[0].ok, "{s:?}");
    let s = run_for(&http("/ok", "svc.test", Some(418)), from_a.clone(), 100).await;
    assert_eq!(s[0].error.as_deref(), Some("status 200, expected 418"));

    let s = run_for(&http("/big", "svc.test", None), from_a.clone(), 100).await;
    assert!(!s[0].ok);
    assert!(
        s[0].error.as_deref().unwrap_or("").contains("longer than"),
        "{s:?}"
    );

    // Scraping goes through the same path.
    let e = scrape::scrape(
        &from_a,
        addr,
        "/down",
        crate::scenario::model::MetricsFormat::Prometheus,
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("status"), "{e}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_reads_a_workload_endpoint_from_the_namespace() {
    if !crate::testing::netns() {
        return;
    }
    let pair = Pair::new();
    let in_b = pair.sockets(&pair.b);
    let addr = SocketAddrV4::new(pair.addr_b(), 9100);
    let listener = listen_in(&in_b, addr);
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body: &'static str = if req.uri().path() == "/json" {
                            r#"{"sink": {"missing": 0, "received": 42}}"#
                        } else {
                            "# TYPE sink_received_total counter\nsink_received_total{from=\"gw-1\"} 40\nsink_received_total{from=\"gw-2\"} 2\n"
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(body.as_bytes()),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let from_a = pair.sockets(&pair.a);
    use crate::scenario::model::{Aggregate, MetricsFormat};
    let t = Duration::from_secs(1);
    let prom = scrape::scrape(&from_a, addr, "/metrics", MetricsFormat::Prometheus, t)
        .await
        .unwrap();
    let v = scrape::select(
        &prom,
        Some("sink_received_total"),
        None,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(scrape::aggregate(&v, Aggregate::Sum), Some(42.0));
    let json = scrape::scrape(&from_a, addr, "/json", MetricsFormat::Json, t)
        .await
        .unwrap();
    assert_eq!(
        scrape::select(&json, None, Some("/sink/received"), &Default::default()).unwrap(),
        vec![42.0]
    );
    // Nothing listens on the peer's other ports: a clear error, quickly.
    let e = scrape::scrape(
        &from_a,
        SocketAddrV4::new(pair.addr_b(), 9101),
        "/metrics",
        MetricsFormat::Prometheus,
        t,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    server.abort();
}

#[test]
fn a_timeout_reads_as_lost_and_an_answered_failure_as_an_error() {
    let s = |ok: bool, error: Option<String>| Sample {
        t: Duration::ZERO,
        ok,
        rtt: ok.then_some(Duration::from_millis(3)),
        error,
        seq: None,
    };
    let timeout = Duration::from_millis(500);
    assert_eq!(s(true, None).attempt(), Attempt::Ok);
    for what in ["echo reply", "connection", "complete response"] {
        let e = no_answer(what, timeout);
        assert_eq!(e, format!("no {what} within 500ms"));
        assert_eq!(s(false, Some(e)).attempt(), Attempt::Lost);
    }
    let refused = "connecting to 10.0.0.2:80: Connection refused (os error 111)".to_string();
    assert_eq!(s(false, Some(refused)).attempt(), Attempt::Error);
    assert_eq!(
        s(false, Some("status 503, expected 200".into())).attempt(),
        Attempt::Error
    );
}
