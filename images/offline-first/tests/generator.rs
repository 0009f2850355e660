//! The built-in write generator drives two real replicas with no client: the edge syncs with
//! the cloud through a TCP relay that the test cuts while both generate writes over a small
//! key space, then restores. Once both generators have stopped (`--write-until`), the
//! replicas must converge (same digest, nothing pending) and the writes both made to the same
//! keys during the cut must have been counted as conflicts. The cloud is configured through
//! the environment, the edge through flags.

mod support;

use std::time::Duration;

use edge_common::client::HttpClient;
use edge_common::testing::{Service, eventually, scrape, scratch_dir, spawn};
use support::{Relay, get_json, status};

const BIN: &str = env!("CARGO_BIN_EXE_offline-first");

/// Writes per second, per replica.
const RATE: u32 = 25;
/// Keys both replicas draw from: small, so writes during the cut collide.
const KEYS: u32 = 5;
/// Seconds of generation after the start.
const UNTIL_S: u32 = 12;
/// Generated writes each replica must make while cut off.
const DURING_CUT: f64 = 10.0;

async fn metric(c: &HttpClient, s: &Service, series: &str) -> f64 {
    scrape(c, &s.url("/metrics"), series)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn generated(c: &HttpClient, s: &Service) -> f64 {
    metric(c, s, "edgesim_offline_generated_writes_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_writes_conflict_across_a_cut_and_converge_after_the_heal() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "offline-generator").unwrap();
    let c = HttpClient::new(Duration::from_secs(5), Default::default());
    let (rate, keys, until) = (RATE.to_string(), KEYS.to_string(), format!("{UNTIL_S}s"));
    let cloud = spawn(
        BIN,
        "cloud",
        &dir,
        &[
            "--node",
            "cloud",
            "--data-dir",
            dir.join("cloud").to_str().unwrap(),
        ],
        &[
            ("EDGESIM_SEED", "11"),
            ("OFFLINE_WRITE_RATE", &rate),
            ("OFFLINE_WRITE_KEYS", &keys),
            ("OFFLINE_WRITE_UNTIL", &until),
        ],
    )
    .unwrap();
    let relay = Relay::start(cloud.addr).await;
    let relay_url = format!("http://{}", relay.addr);
    let edge = spawn(
        BIN,
        "edge",
        &dir,
        &[
            "--node",
            "edge-1",
            "--seed",
            "11",
            "--sync-with",
            &relay_url,
            "--sync-interval",
            "200ms",
            "--sync-timeout",
            "1s",
            "--data-dir",
            dir.join("edge").to_str().unwrap(),
            "--write-rate",
            &rate,
            "--write-keys",
            &keys,
            "--write-until",
            &until,
        ],
        &[],
    )
    .unwrap();

    // Connected, and both generating.
    let up = eventually(Duration::from_secs(10), || async {
        let s = status(&c, &edge).await;
        (s["peers"][0]["up"] == true).then_some(s)
    })
    .await;
    assert!(
        up.is_some(),
        "edge never synced: {:#}",
        status(&c, &edge).await
    );
    for s in [&edge, &cloud] {
        let st = status(&c, s).await;
        assert_eq!(st["generation_done"], false, "{st:#}");
        assert_eq!(st["generator"]["write_keys"], KEYS, "{st:#}");
        assert_eq!(st["generator"]["write_until_seconds"], f64::from(UNTIL_S));
    }

    // Partition: both sides keep generating, and the edge's writes pile up as pending.
    relay.cut().await;
    let (e0, c0) = (generated(&c, &edge).await, generated(&c, &cloud).await);
    let errors =
        format!("edgesim_offline_sync_rounds_total{{peer=\"{relay_url}\",result=\"error\"}}");
    let offline = eventually(Duration::from_secs(10), || async {
        let e = generated(&c, &edge).await;
        let cl = generated(&c, &cloud).await;
        let failed = scrape(&c, &edge.url("/metrics"), &errors).await.ok()?;
        let pending = metric(&c, &edge, "edgesim_offline_pending_ops").await;
        (e - e0 >= DURING_CUT && cl - c0 >= DURING_CUT && failed >= 1.0 && pending >= DURING_CUT)
            .then_some(())
    })
    .await;
    assert!(
        offline.is_some(),
        "both sides should write while cut off: edge {:#}, cloud {:#}",
        status(&c, &edge).await,
        status(&c, &cloud).await
    );
    assert_ne!(
        status(&c, &edge).await["digest"],
        status(&c, &cloud).await["digest"]
    );

    // No merges happen while cut off: what the conflict counters hold now predates the cut.
    let conflicts_before_heal = [
        metric(&c, &edge, "edgesim_offline_conflicts_total").await,
        metric(&c, &cloud, "edgesim_offline_conflicts_total").await,
    ];

    // Heal; the generators stop at --write-until; then the replicas converge.
    relay.restore();
    let done = eventually(Duration::from_secs(u64::from(UNTIL_S) + 20), || async {
        let (e, cl) = (status(&c, &edge).await, status(&c, &cloud).await);
        (e["generation_done"] == true && cl["generation_done"] == true).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "generation never ended: edge {:#}, cloud {:#}",
        status(&c, &edge).await,
        status(&c, &cloud).await
    );
    let converged = eventually(Duration::from_secs(20), || async {
        let (e, cl) = (status(&c, &edge).await, status(&c, &cloud).await);
        (e["digest"] == cl["digest"] && e["in_sync"] == true && e["pending_ops"] == 0)
            .then_some((e, cl))
    })
    .await;
    let Some((e, cl)) = converged else {
        panic!(
            "no convergence: edge {:#}, cloud {:#}",
            status(&c, &edge).await,
            status(&c, &cloud).await
        );
    };
    assert_eq!(
        get_json(&c, &edge, "/kv").await,
        get_json(&c, &cloud, "/kv").await
    );
    assert_eq!(
        get_json(&c, &edge, "/conflicts").await,
        get_json(&c, &cloud, "/conflicts").await
    );
    let all = get_json(&c, &edge, "/kv").await;
    let all = all.as_object().unwrap();
    assert!(!all.is_empty() && all.len() <= KEYS as usize, "{all:?}");
    for (k, v) in all {
        assert!(k.starts_with("gen-"), "{k}");
        let v = v.as_str().unwrap();
        assert!(
            v.starts_with("edge-1#") || v.starts_with("cloud#"),
            "{k} = {v}"
        );
    }

    for ((name, s, st), before) in [("edge", &edge, &e), ("cloud", &cloud, &cl)]
        .into_iter()
        .zip(conflicts_before_heal)
    {
        // Both merged the other's writes of the same keys made during the cut (and since):
        // conflicts were counted.
        let conflicts = metric(&c, s, "edgesim_offline_conflicts_total").await;
        assert!(conflicts > before, "{name}: {before} → {conflicts}: {st:#}");
        assert!(
            st["conflicts_total"].as_f64() >= Some(conflicts),
            "{name}: {st:#}"
        );
        // Every generated write went through the local-write path, and nothing else wrote.
        let made = generated(&c, s).await;
        assert_eq!(
            made,
            metric(&c, s, "edgesim_offline_local_writes_total{op=\"put\"}").await,
            "{name}"
        );
        assert_eq!(
            metric(&c, s, "edgesim_offline_write_errors_total").await,
            0.0
        );
        assert_eq!(st["generator"]["generated_writes"].as_f64(), Some(made));
        // The rate is an upper bound, and the generator did run for most of its time.
        let ceiling = f64::from(RATE * UNTIL_S);
        assert!(made <= ceiling && made >= ceiling / 4.0, "{name}: {made}");
        // Nothing is generated after --write-until.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(generated(&c, s).await, made, "{name}");
    }
}
