//! Two real `offline-first` replicas on 127.0.0.1, the edge one syncing with the cloud one
//! through a TCP relay that the test can cut: a simulated partition. Both sides write while
//! cut off (including the same key), the relay is restored, and the replicas must converge:
//! same digest, same winner for the conflicting key, nothing pending.

mod support;

use std::time::Duration;

use edge_common::client::HttpClient;
use edge_common::testing::{eventually, scrape, scratch_dir, spawn};
use support::{Relay, get, put, status};

const BIN: &str = env!("CARGO_BIN_EXE_offline-first");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_after_a_partition() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "offline-partition").unwrap();
    let c = HttpClient::new(Duration::from_secs(5), Default::default());
    let cloud_data = dir.join("cloud");
    let cloud_args = [
        "--node",
        "cloud",
        "--data-dir",
        cloud_data.to_str().unwrap(),
    ];
    let mut cloud = spawn(BIN, "cloud", &dir, &cloud_args, &[]).unwrap();
    let relay = Relay::start(cloud.addr).await;
    let relay_url = format!("http://{}", relay.addr);
    let edge = spawn(
        BIN,
        "edge",
        &dir,
        &[
            "--node",
            "edge-1",
            "--sync-with",
            &relay_url,
            "--sync-interval",
            "200ms",
            "--sync-timeout",
            "1s",
            "--data-dir",
            dir.join("edge").to_str().unwrap(),
        ],
        &[("EDGESIM_SEED", "7")],
    )
    .unwrap();

    // Connected: a write on the edge reaches the cloud.
    put(&c, &edge, "config", "v1").await;
    let got = eventually(Duration::from_secs(10), || async {
        get(&c, &cloud, "config").await.filter(|v| v == "v1")
    })
    .await;
    assert!(got.is_some(), "the cloud never saw the edge's write");
    // ... and the edge has the cloud's acknowledgement of it.
    let acked = eventually(Duration::from_secs(10), || async {
        (status(&c, &edge).await["in_sync"] == true).then_some(())
    })
    .await;
    assert!(acked.is_some(), "{:#}", status(&c, &edge).await);
    assert_eq!(status(&c, &edge).await["pending_ops"], 0);

    // Partition: both sides keep working.
    relay.cut().await;
    put(&c, &edge, "config", "from-edge").await;
    put(&c, &edge, "edge-only", "e").await;
    put(&c, &cloud, "config", "from-cloud").await;
    put(&c, &cloud, "cloud-only", "c").await;
    let em = edge.url("/metrics");
    let offline = eventually(Duration::from_secs(10), || async {
        let pending = scrape(&c, &em, "edgesim_offline_pending_ops").await.ok()?;
        let errors = scrape(
            &c,
            &em,
            &format!("edgesim_offline_sync_rounds_total{{peer=\"{relay_url}\",result=\"error\"}}"),
        )
        .await
        .ok()?;
        (pending == 2.0 && errors >= 1.0).then_some(())
    })
    .await;
    assert!(
        offline.is_some(),
        "edge should count 2 pending writes and failed rounds: {:#}",
        status(&c, &edge).await
    );
    assert_eq!(
        scrape(&c, &em, "edgesim_offline_in_sync").await.unwrap(),
        0.0
    );
    assert!(
        scrape(&c, &em, "edgesim_offline_sync_lag_seconds")
            .await
            .unwrap()
            > 0.0
    );
    assert_ne!(
        status(&c, &edge).await["digest"],
        status(&c, &cloud).await["digest"]
    );

    // Heal.
    relay.restore();
    let converged = eventually(Duration::from_secs(15), || async {
        let (e, cl) = (status(&c, &edge).await, status(&c, &cloud).await);
        (e["digest"] == cl["digest"] && e["in_sync"] == true).then_some((e, cl))
    })
    .await;
    let Some((e, cl)) = converged else {
        panic!(
            "no convergence: edge {:#}, cloud {:#}",
            status(&c, &edge).await,
            status(&c, &cloud).await
        );
    };
    assert_eq!(e["keys"], 3);
    assert_eq!(cl["keys"], 3);
    assert_eq!(e["pending_ops"], 0);
    assert_eq!(
        scrape(&c, &em, "edgesim_offline_sync_lag_seconds")
            .await
            .unwrap(),
        0.0
    );
    // The concurrent writes of `config` conflicted; both replicas chose the same winner.
    let (we, wc) = (
        get(&c, &edge, "config").await.unwrap(),
        get(&c, &cloud, "config").await.unwrap(),
    );
    assert_eq!(we, wc);
    assert!(we == "from-edge" || we == "from-cloud");
    assert_eq!(e["conflicts_total"], 1, "{e:#}");
    assert_eq!(cl["conflicts_total"], 1, "{cl:#}");
    let ce: serde_json::Value = c
        .get(&edge.url("/conflicts"))
        .await
        .unwrap()
        .json()
        .unwrap();
    let cc: serde_json::Value = c
        .get(&cloud.url("/conflicts"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ce, cc);
    assert_eq!(ce["config"].as_array().map(Vec::len), Some(2));
    let cm = cloud.url("/metrics");
    assert_eq!(
        scrape(&c, &em, "edgesim_offline_state_digest")
            .await
            .unwrap(),
        scrape(&c, &cm, "edgesim_offline_state_digest")
            .await
            .unwrap()
    );

    // The cloud's state is durable across a restart.
    let digest = cl["digest"].clone();
    assert!(cloud.terminate(Duration::from_secs(10)).unwrap().success());
    let cloud = spawn(BIN, "cloud", &dir, &cloud_args, &[]).unwrap();
    assert_eq!(status(&c, &cloud).await["digest"], digest);
}
