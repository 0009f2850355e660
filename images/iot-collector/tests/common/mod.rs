//! Helpers shared by the collector's integration tests.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
#![allow(dead_code)]

use std::time::Duration;

use clap::Parser as _;
use edge_common::Shutdown;
use edge_common::client::HttpClient;
use edge_common::testing::eventually;

pub const BIN: &str = env!("CARGO_BIN_EXE_iot-collector");

pub fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(5), Default::default())
}

/// A cloud-sink running inside the test process.
pub struct Sink {
    pub url: String,
    pub shutdown: Shutdown,
}

pub async fn start_sink(listen: &str, data_dir: &std::path::Path) -> Sink {
    let args = cloud_sink::Args::parse_from([
        "cloud-sink",
        "--listen",
        listen,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let shutdown = Shutdown::new();
    let running = cloud_sink::start(args, shutdown.clone()).await.unwrap();
    Sink {
        url: format!("http://{}", running.addr),
        shutdown,
    }
}

/// An address on 127.0.0.1 where nothing listens (for now).
pub fn unused_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub async fn status(c: &HttpClient, url: &str) -> Option<serde_json::Value> {
    c.get(url).await.ok()?.json().ok()
}

/// Waits until `f(status)` holds for the JSON at `url`, panicking with the last status if it
/// does not within `secs`.
pub async fn wait_status(
    c: &HttpClient,
    url: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let got = eventually(Duration::from_secs(secs), || async {
        let s = status(c, url).await?;
        f(&s).then_some(s)
    })
    .await;
    match got {
        Some(s) => s,
        None => panic!(
            "timed out waiting for {what}; last status: {:#?}",
            status(c, url).await
        ),
    }
}
