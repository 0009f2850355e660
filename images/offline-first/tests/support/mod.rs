//! What the integration tests share: a TCP relay that can be cut (a simulated partition) and
//! requests to a replica.

#![allow(clippy::unwrap_used)]
// test code: a failed unwrap is a failed test

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edge_common::client::HttpClient;
use edge_common::testing::Service;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A TCP relay to `target` that can be cut (refusing new connections and killing live ones).
pub struct Relay {
    pub addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, lv) = (open.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                lv.lock().await.push(h);
            }
        });
        Self { addr, open, live }
    }

    pub async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for h in self.live.lock().await.drain(..) {
            h.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

pub async fn put(c: &HttpClient, s: &Service, key: &str, value: &str) {
    let r = c
        .send(
            axum::http::Method::PUT,
            &s.url(&format!("/kv/{key}")),
            bytes::Bytes::from(value.to_string()),
            Some("text/plain"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

pub async fn get(c: &HttpClient, s: &Service, key: &str) -> Option<String> {
    let r = c.get(&s.url(&format!("/kv/{key}"))).await.unwrap();
    (r.status == 200).then(|| r.text())
}

pub async fn status(c: &HttpClient, s: &Service) -> serde_json::Value {
    c.get(&s.url("/status")).await.unwrap().json().unwrap()
}

/// `GET path` as JSON.
pub async fn get_json(c: &HttpClient, s: &Service, path: &str) -> serde_json::Value {
    c.get(&s.url(path)).await.unwrap().json().unwrap()
}
