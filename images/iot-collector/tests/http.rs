//! Runs the real `iot-collector` binary against a cloud-sink on 127.0.0.1 and checks its
//! behaviour over HTTP: consistent counters, the disk-budget policy, graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use edge_common::testing::{scrape, scratch_dir, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_everything_with_consistent_counters_and_stops_gracefully() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "collector-http").unwrap();
    let c = client();
    let sink = start_sink("127.0.0.1:0", &dir.join("sink")).await;
    let queue = dir.join("queue");
    let mut col = spawn(
        BIN,
        "collector",
        &dir,
        &[
            "--devices",
            "2",
            "--rate",
            "100",
            "--max-readings",
            "100",
            "--sink-url",
            &sink.url,
        ],
        &[
            ("EDGESIM_WORKDIR", queue.to_str().unwrap()),
            ("EDGESIM_NODE", "gw-1"),
        ],
    )
    .unwrap();
    let st = wait_status(&c, &col.url("/status"), 30, "a drained queue", |s| {
        s["sampling_done"] == true && s["backlog"]["readings"] == 0
    })
    .await;
    assert_eq!(st["env"]["node"], "gw-1");
    assert_eq!(st["last_sequence"]["gw-1-sensor-2"], 100);
    // The queue lives in EDGESIM_WORKDIR.
    assert!(queue.join("queue.redb").exists());

    let m = col.url("/metrics");
    for (name, want) in [
        ("edgesim_collector_generated_total", 200.0),
        ("edgesim_collector_accepted_total", 200.0),
        ("edgesim_collector_acknowledged_total", 200.0),
        ("edgesim_collector_backlog_readings", 0.0),
        ("edgesim_collector_backlog_oldest_age_seconds", 0.0),
        (
            "edgesim_collector_dropped_by_policy_total{policy=\"drop-oldest\"}",
            0.0,
        ),
        ("edgesim_collector_sink_up", 1.0),
    ] {
        assert_eq!(scrape(&c, &m, name).await.unwrap(), want, "{name}");
    }
    assert!(
        scrape(&c, &m, "edgesim_collector_forwarded_total")
            .await
            .unwrap()
            >= 200.0
    );
    let sm = format!("{}/metrics", sink.url);
    assert_eq!(
        scrape(&c, &sm, "edgesim_sink_missing_total").await.unwrap(),
        0.0
    );
    assert_eq!(
        scrape(&c, &sm, "edgesim_sink_accepted_total")
            .await
            .unwrap(),
        200.0
    );

    let exit = col.terminate(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "exit {exit}: {}", col.log_text());
    sink.shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_drops_the_oldest_counted_and_visible_at_the_sink() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "collector-budget").unwrap();
    let c = client();
    let sink_addr = unused_addr();
    // One queued reading of device "t-sensor-1" is 1 + 24 + 10 = 35 bytes: room for 50.
    let budget = (35 * 50).to_string();
    let col = spawn(
        BIN,
        "collector",
        &dir,
        &[
            "--devices",
            "1",
            "--rate",
            "200",
            "--max-readings",
            "300",
            "--device-prefix",
            "t",
            "--disk-budget",
            &budget,
            "--on-full",
            "drop-oldest",
            "--sink-url",
            &format!("http://{sink_addr}"),
            "--retry-base",
            "20ms",
            "--retry-max",
            "100ms",
            "--data-dir",
            dir.join("queue").to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let st = wait_status(&c, &col.url("/status"), 30, "sampling to finish", |s| {
        s["sampling_done"] == true
    })
    .await;
    assert_eq!(st["backlog"]["readings"], 50, "{st:#}");
    let m = col.url("/metrics");
    let dropped = scrape(
        &c,
        &m,
        "edgesim_collector_dropped_by_policy_total{policy=\"drop-oldest\"}",
    )
    .await
    .unwrap();
    assert_eq!(dropped, 250.0);
    assert!(
        scrape(
            &c,
            &m,
            "edgesim_collector_send_failures_total{reason=\"connect\"}"
        )
        .await
        .unwrap()
            >= 1.0
    );
    assert!(
        scrape(&c, &m, "edgesim_collector_backlog_oldest_age_seconds")
            .await
            .unwrap()
            > 0.0
    );

    // The sink comes up: the 50 newest arrive, and the 250 dropped show as missing there.
    let sink = start_sink(&sink_addr, &dir.join("sink")).await;
    wait_status(&c, &col.url("/status"), 30, "a drained queue", |s| {
        s["backlog"]["readings"] == 0
    })
    .await;
    let sm = format!("{}/metrics", sink.url);
    assert_eq!(
        scrape(&c, &sm, "edgesim_sink_missing_total").await.unwrap(),
        dropped
    );
    let s = status(&c, &format!("{}/status", sink.url)).await.unwrap();
    assert_eq!(
        s["devices"]["t-sensor-1"]["gaps"],
        serde_json::json!([[1, 250]])
    );
    sink.shutdown.trigger();
}
