//! The metrics registry every workload exposes on `/metrics`.
//!
//! One `prometheus-client` [`Registry`] per program, created with the `edgesim` prefix, so each
//! name a program registers (`sink_missing`) is exposed as `edgesim_sink_missing`; counters
//! get the OpenMetrics `_total` suffix from the encoder. Every registry also carries
//! `edgesim_build_info{program,version,arch,node}`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge holding an `f64` (ages, seconds).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// A registry whose names start with `edgesim_`, with the build info of `env` registered.
pub fn new_registry(env: &crate::EdgeEnv) -> Registry {
    let mut r = Registry::with_prefix("edgesim");
    r.register(
        "build",
        "The program, its version and architecture, and the node it runs on",
        Info::new(vec![
            ("program".to_string(), env.program.to_string()),
            ("version".to_string(), env.version.to_string()),
            ("arch".to_string(), std::env::consts::ARCH.to_string()),
            ("node".to_string(), env.node.clone()),
        ]),
    );
    r
}

/// The registry as OpenMetrics text.
///
/// # Errors
/// Only if a metric's encoder fails (it writes to a `String`, so in practice never).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn names_are_prefixed_and_counters_suffixed() {
        let env = crate::EdgeEnv {
            program: "t",
            version: "0",
            node: "n1".into(),
            site: None,
            addr: None,
            seed: 0,
        };
        let mut r = new_registry(&env);
        let c: Counter = Counter::default();
        r.register("demo_things", "Things", c.clone());
        c.inc_by(3);
        let text = render(&r).unwrap();
        assert!(text.contains("edgesim_demo_things_total 3"), "{text}");
        assert!(text.contains("edgesim_build_info{"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
