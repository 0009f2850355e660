//! The crash test of the collector's queue: the real binary is killed with SIGKILL twice, once
//! while the sink is unreachable (everything is in the backlog) and once mid-stream while it
//! forwards; after the last restart drains the queue, the sink must hold every sequence number
//! of every device exactly once.

mod common;

use common::*;
use edge_common::testing::{scratch_dir, spawn};

const DEVICES: u64 = 3;
const PER_DEVICE: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_accepted() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "collector-crash").unwrap();
    let queue = dir.join("queue");
    let queue = queue.to_str().unwrap();
    let c = client();
    let sink_addr = unused_addr();
    let sink_url = format!("http://{sink_addr}");
    let max = PER_DEVICE.to_string();
    let devices = DEVICES.to_string();
    let args = [
        "--devices",
        &devices,
        "--rate",
        "200",
        "--max-readings",
        &max,
        "--batch-size",
        "50",
        "--data-dir",
        queue,
        "--sink-url",
        &sink_url,
        "--retry-base",
        "20ms",
        "--retry-max",
        "200ms",
        "--device-prefix",
        "gw",
    ];
    let env = [("EDGESIM_SEED", "7")];

    // 1. The sink is down: readings pile up in the queue; kill -9 with a backlog.
    let mut col = spawn(BIN, "collector", &dir, &args, &env).unwrap();
    let before = wait_status(&c, &col.url("/status"), 30, "a backlog", |s| {
        s["backlog"]["readings"].as_u64() >= Some(150)
    })
    .await;
    col.kill9();
    let accepted_before = before["lifetime"]["accepted"].as_u64().unwrap();
    assert_eq!(before["lifetime"]["acknowledged"], 0);

    // 2. Restart with the sink up; what was accepted before the kill is still queued.
    let sink = start_sink(&sink_addr, &dir.join("sink")).await;
    let mut col = spawn(BIN, "collector", &dir, &args, &env).unwrap();
    let after = status(&c, &col.url("/status")).await.unwrap();
    assert!(
        after["lifetime"]["accepted"].as_u64().unwrap() >= accepted_before,
        "accepted readings lost by kill -9: before {before:#}, after {after:#}"
    );
    // Mid-stream: some readings delivered, sampling not finished. Kill again.
    wait_status(
        &c,
        &format!("{}/status", sink.url),
        30,
        "some deliveries",
        |s| s["totals"]["unique"].as_u64() >= Some(300),
    )
    .await;
    let mid = status(&c, &col.url("/status")).await.unwrap();
    col.kill9();
    assert_eq!(
        mid["sampling_done"], false,
        "the kill should hit mid-stream: {mid:#}"
    );

    // 3. Restart and drain.
    let col = spawn(BIN, "collector", &dir, &args, &env).unwrap();
    let done = wait_status(&c, &col.url("/status"), 60, "a drained queue", |s| {
        s["sampling_done"] == true && s["backlog"]["readings"] == 0
    })
    .await;
    assert_eq!(
        done["lifetime"]["accepted"],
        DEVICES * PER_DEVICE,
        "{done:#}"
    );
    assert_eq!(
        done["lifetime"]["acknowledged"],
        DEVICES * PER_DEVICE,
        "{done:#}"
    );
    assert_eq!(done["lifetime"]["dropped"], 0);

    let s = status(&c, &format!("{}/status", sink.url)).await.unwrap();
    assert_eq!(s["totals"]["devices"], DEVICES, "{s:#}");
    for i in 1..=DEVICES {
        let d = &s["devices"][format!("gw-sensor-{i}")];
        assert_eq!(d["unique"], PER_DEVICE, "device {i}: {d:#}");
        assert_eq!(d["highest"], PER_DEVICE, "device {i}: {d:#}");
        assert_eq!(d["missing"], 0, "device {i}: {d:#}");
    }
    assert_eq!(s["totals"]["missing"], 0);
    sink.shutdown.trigger();
}
