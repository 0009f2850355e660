//! Runs the real `edge-web` binary on 127.0.0.1 and checks its work, documents and metrics.

use std::time::Duration;

use edge_common::client::HttpClient;
use edge_common::testing::{scrape, scratch_dir, spawn};

const BIN: &str = env!("CARGO_BIN_EXE_edge-web");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_costs_what_was_asked_and_is_measured() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "web-http").unwrap();
    let c = HttpClient::new(Duration::from_secs(30), Default::default());
    let mut web = spawn(
        BIN,
        "web",
        &dir,
        &[
            "--work-kib",
            "128",
            "--workers",
            "1",
            "--version-every",
            "1s",
        ],
        &[("EDGESIM_NODE", "cloud-1")],
    )
    .unwrap();

    let r = c.get(&web.url("/work")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["kib"], 128);
    let salt = v["salt"].as_u64().unwrap();
    // The digest is the real hash of what the service says it hashed.
    assert_eq!(v["digest"], edge_web::work::hash_kib(128, salt));

    let big: serde_json::Value = c
        .get(&web.url("/work?kib=2048"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(big["kib"], 2048);
    let refused = c.get(&web.url("/work?kib=999999999")).await.unwrap();
    assert_eq!(refused.status, 400);

    // Concurrent requests queue behind the single worker; all are answered.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), web.url("/work?kib=512"));
        tasks.push(tokio::spawn(
            async move { c.get(&url).await.unwrap().status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }

    let doc: serde_json::Value = c
        .get(&web.url("/data/sensor-config"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(doc["key"], "sensor-config");
    assert_eq!(doc["origin"], "cloud-1");
    assert_eq!(doc["payload"].as_str().unwrap().len(), 256);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let doc2: serde_json::Value = c
        .get(&web.url("/data/sensor-config"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(
        doc2["version"].as_u64() > doc["version"].as_u64(),
        "{doc} then {doc2}"
    );

    let m = web.url("/metrics");
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_web_requests_total{route=\"work\",code=\"200\"}"
        )
        .await
        .unwrap(),
        8.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_web_requests_total{route=\"work\",code=\"400\"}"
        )
        .await
        .unwrap(),
        1.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_web_request_duration_seconds_count{route=\"work\"}"
        )
        .await
        .unwrap(),
        9.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_web_request_duration_seconds_count{route=\"data\"}"
        )
        .await
        .unwrap(),
        2.0
    );
    let bytes = (128 + 2048 + 6 * 512 + 2 * 128) * 1024;
    assert_eq!(
        scrape(&c, &m, "edgesim_web_work_bytes_total")
            .await
            .unwrap(),
        f64::from(bytes)
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_web_compute_duration_seconds_count")
            .await
            .unwrap(),
        10.0
    );
    assert!(
        scrape(&c, &m, "edgesim_web_compute_duration_seconds_sum")
            .await
            .unwrap()
            > 0.0
    );

    let st: serde_json::Value = c.get(&web.url("/status")).await.unwrap().json().unwrap();
    assert_eq!(st["workers"], 1);
    assert_eq!(st["served"], 11);
    let exit = web.terminate(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "{exit}");
}
