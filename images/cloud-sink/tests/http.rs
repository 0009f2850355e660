//! Runs the real `cloud-sink` binary on 127.0.0.1 and checks its accounting over HTTP:
//! duplicates, gaps and their closing, persistence across a restart, graceful shutdown.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use edge_common::client::HttpClient;
use edge_common::proto::{Batch, IngestAck, Reading};
use edge_common::testing::{scrape, scratch_dir, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_cloud-sink");

fn batch(device: &str, seqs: &[u64]) -> Batch {
    Batch {
        source: "test".into(),
        readings: seqs
            .iter()
            .map(|&seq| Reading {
                device: device.into(),
                seq,
                ts_ms: edge_common::now_ms(),
                value: seq as f64 / 10.0,
            })
            .collect(),
    }
}

async fn post(c: &HttpClient, url: &str, b: &Batch) -> IngestAck {
    let r = c.post_json(url, b).await.unwrap();
    assert!(r.status.is_success(), "{}: {}", r.status, r.text());
    r.json().unwrap()
}

#[tokio::test]
async fn counts_duplicates_and_gaps_and_survives_a_restart() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "sink-accounting").unwrap();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let c = HttpClient::new(Duration::from_secs(5), Default::default());
    let mut sink = spawn(BIN, "sink", &dir, &["--data-dir", data], &[]).unwrap();
    let ingest = sink.url("/ingest");

    // a: 1..=5, then 8..=10 (gap 6..=7), with a resend of 4..=5 and a duplicate inside a batch.
    assert_eq!(
        post(&c, &ingest, &batch("a", &[1, 2, 3, 4, 5])).await,
        IngestAck {
            accepted: 5,
            duplicates: 0,
            rejected: 0
        }
    );
    assert_eq!(
        post(&c, &ingest, &batch("a", &[4, 5, 8, 9, 9, 10])).await,
        IngestAck {
            accepted: 3,
            duplicates: 3,
            rejected: 0
        }
    );
    // b: starts late (1..=2 missing) and sends a sequence number 0, which is invalid.
    assert_eq!(
        post(&c, &ingest, &batch("b", &[0, 3, 4])).await,
        IngestAck {
            accepted: 2,
            duplicates: 0,
            rejected: 1
        }
    );

    let m = sink.url("/metrics");
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_missing_total").await.unwrap(),
        4.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_duplicates_total")
            .await
            .unwrap(),
        3.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_accepted_total").await.unwrap(),
        10.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_received_total").await.unwrap(),
        14.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_rejected_total").await.unwrap(),
        1.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_device_missing{device=\"a\"}")
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_device_highest_sequence{device=\"a\"}")
            .await
            .unwrap(),
        10.0
    );

    let st: serde_json::Value = c.get(&sink.url("/status")).await.unwrap().json().unwrap();
    assert_eq!(st["devices"]["a"]["gaps"], serde_json::json!([[6, 7]]));
    assert_eq!(st["devices"]["b"]["gaps"], serde_json::json!([[1, 2]]));
    assert_eq!(st["devices"]["a"]["highest"], 10);
    assert_eq!(st["totals"]["missing"], 4);

    // A graceful stop, then a restart on the same data: nothing accepted is forgotten.
    let status = sink.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "exit {status}: {}", sink.log_text());
    let sink = spawn(BIN, "sink", &dir, &["--data-dir", data], &[]).unwrap();
    let m = sink.url("/metrics");
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_missing_total").await.unwrap(),
        4.0
    );
    // Late arrivals close the gaps; resends of stored readings are duplicates, not new data.
    let ack = post(&c, &sink.url("/ingest"), &batch("a", &[6, 7, 1])).await;
    assert_eq!(
        ack,
        IngestAck {
            accepted: 2,
            duplicates: 1,
            rejected: 0
        }
    );
    post(&c, &sink.url("/ingest"), &batch("b", &[1, 2])).await;
    assert_eq!(
        scrape(&c, &m, "edgesim_sink_missing_total").await.unwrap(),
        0.0
    );
    let st: serde_json::Value = c.get(&sink.url("/status")).await.unwrap().json().unwrap();
    assert_eq!(st["devices"]["a"]["unique"], 10);
    assert_eq!(st["devices"]["a"]["gaps"], serde_json::json!([]));
}

#[tokio::test]
async fn health_bad_input_and_in_memory_mode() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "sink-basics").unwrap();
    let c = HttpClient::new(Duration::from_secs(5), Default::default());
    let sink = spawn(BIN, "sink", &dir, &["--in-memory"], &[]).unwrap();
    let h = c.get(&sink.url("/healthz")).await.unwrap();
    assert_eq!(h.status, 200);
    let bad = c
        .post_json(&sink.url("/ingest"), &serde_json::json!({"nope": 1}))
        .await
        .unwrap();
    assert!(bad.status.is_client_error(), "{}", bad.status);
    let st: serde_json::Value = c.get(&sink.url("/status")).await.unwrap().json().unwrap();
    assert_eq!(st["durable"], serde_json::Value::Null);
    assert_eq!(st["env"]["program"], "cloud-sink");
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--data-dir") && help.contains("SINK_DATA_DIR"),
        "{help}"
    );
}
