//! Runs the real `inference` binary on 127.0.0.1 with a small generated model and checks
//! predictions, deadlines (met, shed in the queue) and the model file's lifecycle.

use std::time::Duration;

use edge_common::client::HttpClient;
use edge_common::testing::{scrape, scratch_dir, spawn};
use inference::{InferRequest, InferResponse};

const BIN: &str = env!("CARGO_BIN_EXE_inference");
const SMALL: [&str; 4] = ["--width", "4", "--input-size", "32"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_within_deadlines_and_counts_misses() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "inference-http").unwrap();
    let work = dir.join("work");
    let c = HttpClient::new(Duration::from_secs(60), Default::default());
    let env = [("EDGESIM_WORKDIR", work.to_str().unwrap())];
    let args = [&SMALL[..], &["--deadline", "30s"]].concat();
    let mut svc = spawn(BIN, "inference", &dir, &args, &env).unwrap();
    assert!(
        work.join("model.safetensors").exists(),
        "the model is generated into the workdir"
    );

    let info: serde_json::Value = c.get(&svc.url("/model")).await.unwrap().json().unwrap();
    assert_eq!(info["config"]["input_size"], 32);
    assert_eq!(info["config"]["width"], 4);
    let params = info["parameters"].as_u64().unwrap();

    let r: InferResponse = c
        .get(&svc.url("/infer?seed=5&batch=3"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r.predictions.len(), 3);
    assert!(r.deadline_met, "{r:?}");
    assert!(
        r.predictions
            .iter()
            .all(|p| p.class < 10 && p.confidence > 0.0 && p.confidence <= 1.0)
    );

    // Explicit images: the right size is classified, a wrong size is refused.
    let img = vec![0.25f32; 3 * 32 * 32];
    let ok = c
        .post_json(
            &svc.url("/infer"),
            &InferRequest {
                images: vec![img],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let bad = c
        .post_json(
            &svc.url("/infer"),
            &InferRequest {
                images: vec![vec![0.0; 7]],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);

    // A deadline of 0 has passed before a model instance is free: shed, not computed.
    let shed = c
        .get(&svc.url("/infer?seed=1&deadline_ms=0"))
        .await
        .unwrap();
    assert_eq!(shed.status, 503, "{}", shed.text());

    let m = svc.url("/metrics");
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_requests_total")
            .await
            .unwrap(),
        4.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_images_total")
            .await
            .unwrap(),
        4.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_deadline_met_total")
            .await
            .unwrap(),
        2.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_inference_deadline_missed_total{stage=\"queue\"}"
        )
        .await
        .unwrap(),
        1.0
    );
    assert_eq!(
        scrape(
            &c,
            &m,
            "edgesim_inference_deadline_missed_total{stage=\"compute\"}"
        )
        .await
        .unwrap(),
        0.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_errors_total")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_model_parameters")
            .await
            .unwrap(),
        params as f64
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_deadline_seconds")
            .await
            .unwrap(),
        30.0
    );
    assert_eq!(
        scrape(&c, &m, "edgesim_inference_compute_seconds_count")
            .await
            .unwrap(),
        2.0
    );

    // Restart: the model is loaded from the workdir and answers the same.
    assert!(svc.terminate(Duration::from_secs(10)).unwrap().success());
    let svc = spawn(BIN, "inference", &dir, &args, &env).unwrap();
    let again: InferResponse = c
        .get(&svc.url("/infer?seed=5&batch=3"))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(again.predictions, r.predictions);

    // gen-model writes the same model file.
    let out = dir.join("exported.safetensors");
    let st = std::process::Command::new(BIN)
        .args(SMALL)
        .args(["gen-model", "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(work.join("model.safetensors")).unwrap()
    );
}

#[test]
fn cuda_without_the_feature_is_a_clear_error() {
    let dir = scratch_dir(env!("CARGO_TARGET_TMPDIR"), "inference-cuda").unwrap();
    let out = std::process::Command::new(BIN)
        .args(SMALL)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cuda",
            "--model-path",
        ])
        .arg(dir.join("m.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cuda` feature"), "{err}");
}
