//! Shared scaffolding for the edgesim example workloads (`images/*`).
//!
//! Every workload is a small tokio + axum service with the same outer shape, so that a scenario
//! can drive any of them the same way:
//!
//! - configuration by flags, each with an environment fallback ([`config::CommonArgs`] is
//!   flattened into every program's own `clap` arguments);
//! - the environment that edgesim sets for every instance (`EDGESIM_NODE`, `EDGESIM_SITE`,
//!   `EDGESIM_ADDR`, `EDGESIM_WORKDIR`, `EDGESIM_PEERS`, `EDGESIM_PEER_<NAME>`,
//!   `EDGESIM_SEED`), read by [`config`];
//! - `/healthz`, `/metrics` (OpenMetrics text from one `prometheus-client` registry whose
//!   names all start with `edgesim_`) and a JSON `/status`, mounted by [`server::base_router`];
//! - graceful shutdown on SIGTERM/SIGINT ([`shutdown`]): the first signal asks every task to
//!   finish its in-flight work and flush durable state, a second one exits at once;
//! - a plain-HTTP/1.1 client ([`client`]) for talking to peers, retries with exponential
//!   backoff and seeded jitter ([`backoff`]), and a small seeded PRNG ([`rng`]) so that runs
//!   with the same `EDGESIM_SEED` make the same random choices.
//!
//! Everything here is pure Rust (no OpenSSL, no TLS), so the programs link statically for
//! `x86_64-unknown-linux-musl` and `aarch64-unknown-linux-musl`.

pub mod backoff;
pub mod client;
pub mod config;
pub mod metrics;
pub mod proto;
pub mod rng;
pub mod server;
pub mod shutdown;
pub mod units;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::{CommonArgs, EdgeEnv};
pub use shutdown::Shutdown;

/// Installs the process-wide `tracing` subscriber: human-readable lines on stderr, filtered by
/// `filter` (tracing's `EnvFilter` syntax, e.g. `info` or `iot_collector=debug`).
///
/// Only binaries call this; the library code never installs a subscriber.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (tests that start two services in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Milliseconds since the Unix epoch, by the wall clock. Readings and writes carry wall-clock
/// times because every node of a netns run shares the host's clock, so differences across
/// nodes (delivery delay, staleness) are meaningful.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An error and its sources, joined with `: ` (what `anyhow`'s `{:#}` prints), for log lines
/// where the outermost message alone ("client error (Connect)") says too little.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}
