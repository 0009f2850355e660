//! Runs the real `edge-cache` binary in front of an `edge-web` origin on 127.0.0.1, stops the
//! origin, and checks that stale answers stay within `--max-stale` and are counted, that older
//! data is refused, and that the cache recovers when the origin returns.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use clap::Parser as _;
use edge_common::Shutdown;
use edge_common::client::{HttpClient, Response};
use edge_common::testing::{scrape, scratch_dir, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_edge-cache");

async fn start_origin(listen: &str) -> (std::net::SocketAddr, Shutdown) {
    let args = edge_web::Args::parse_from([
        "edge-web",
        "--listen",
        listen,
        "--work-kib",
        "1",
        "--version-every",
        "100ms",
    ]);
    let shutdown = Shutdown::new();
    let r = edge_web::start(args, shutdown.clone()).await.unwrap();
    (r.addr, shutdown)
}

fn x_cache(r: &Response) -> String {
    r.headers
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn version(r: &Response) -> u64 {
    r.json::<serde_json::Value>().unwrap()["version"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_bounded_while_the_origin_is_down() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "cache-stale").unwrap();
    let c = HttpClient::new(Duration::from_secs(10), Default::default());
    let (origin_addr, origin) = start_origin("127.0.0.1:0").await;
    let origin_url = format!("http://{origin_addr}");
    let cache = spawn(
        BIN,
        "cache",
        &dir,
        &[
            "--origin",
            &origin_url,
            "--ttl",
            "500ms",
            "--max-stale",
            "2s",
            "--origin-timeout",
            "500ms",
            "--origin-retry",
            "200ms",
        ],
        &[],
    )
    .unwrap();
    let a = cache.url("/data/a");

    let first = c.get(&a).await.unwrap();
    let fetched = Instant::now();
    assert_eq!(
        (first.status.as_u16(), x_cache(&first)),
        (200, "MISS".into()),
        "{}",
        first.text()
    );
    let again = c.get(&a).await.unwrap();
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.body, first.body);

    // Partition: the origin goes away.
    origin.trigger();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stale = c.get(&a).await.unwrap();
    assert_eq!(
        (stale.status.as_u16(), x_cache(&stale)),
        (200, "STALE".into()),
        "{}",
        stale.text()
    );
    assert_eq!(
        version(&stale),
        version(&first),
        "a stale answer is the cached copy"
    );
    let never_cached = c.get(&cache.url("/data/b")).await.unwrap();
    assert_eq!(never_cached.status, 504);

    // Past the bound the cache refuses rather than serve older data.
    let wait = Duration::from_millis(2300).saturating_sub(fetched.elapsed());
    tokio::time::sleep(wait).await;
    let too_old = c.get(&a).await.unwrap();
    assert_eq!(too_old.status, 504, "{}", too_old.text());
    assert!(too_old.text().contains("beyond-max-stale"));

    let m = cache.url("/metrics");
    assert_eq!(
        scrape(&c, &m, "edgesim_cache_hits_total").await.unwrap(),
        1.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_cache_misses_total").await.unwrap(),
        1.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_cache_stale_total").await.unwrap(),
        1.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_cache_errors_total{reason=\"beyond-max-stale\"}"
        )
        .await
        .unwrap(),
        1.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_cache_errors_total{reason=\"origin-unreachable\"}"
        )
        .await
        .unwrap(),
        1.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_cache_origin_up").await.unwrap(),
        0.0
    );
    let max_age = scrape(&c, &m, "edgesim_cache_stale_age_max_seconds")
        .await
        .unwrap();
    let bound = scrape(&c, &m, "edgesim_cache_max_stale_seconds")
        .await
        .unwrap();
    assert_eq!(bound, 2.0);
    assert!(
        max_age > 0.5 && max_age <= bound,
        "oldest stale read {max_age}s"
    );

    // Heal: the origin is back on the same address; the next read refreshes the entry.
    let (_addr, origin2) = start_origin(&origin_addr.to_string()).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let fresh = c.get(&a).await.unwrap();
    assert_eq!(
        (fresh.status.as_u16(), x_cache(&fresh)),
        (200, "MISS".into()),
        "{}",
        fresh.text()
    );
    assert!(version(&fresh) > version(&first));
    assert_eq!(
        scrape(&c, &m, "edgesim_cache_origin_up").await.unwrap(),
        1.0
    );
    let st: serde_json::Value = c.get(&cache.url("/status")).await.unwrap().json().unwrap();
    assert_eq!(st["entries"], 1);
    origin2.trigger();
}

#[test]
fn max_stale_below_ttl_is_refused() {
    let out = std::process::Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ttl",
            "10s",
            "--max-stale",
            "5s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-stale"));
}
