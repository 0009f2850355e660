//! Configuration shared by every workload: the listen address, logging, shutdown grace, and
//! the environment edgesim sets for each instance.
//!
//! edgesim starts every workload instance with:
//!
//! | variable | meaning | flag here |
//! |---|---|---|
//! | `EDGESIM_NODE` | the node's name (`gw-1`) | `--node` |
//! | `EDGESIM_SITE` | the node's site | `--site` |
//! | `EDGESIM_ADDR` | the node's IPv4 address | `--addr` |
//! | `EDGESIM_WORKDIR` | a writable directory that survives restarts of this instance | `--workdir` |
//! | `EDGESIM_PEERS` | every node as `name=ip,name=ip,…` | `--peers` |
//! | `EDGESIM_PEER_<NAME>` | one node's address (`gw-1` → `EDGESIM_PEER_GW_1`) | — |
//! | `EDGESIM_SEED` | the run's seed, for every random choice | `--seed` |
//!
//! Peer names also resolve through `/etc/hosts` inside a node; [`CommonArgs::peer_ip`] and the
//! HTTP client ([`crate::client`]) prefer the explicit environment so they work without it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::units::Dur;

/// Flags every workload takes; flatten into the program's own `clap::Parser`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address to listen on for HTTP (host:port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Port to listen on; overrides the port part of --listen.
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,

    /// Once listening, write the bound address (`ip:port`) to this file. Lets a supervisor or a
    /// test start the service on port 0 and learn the port.
    #[arg(long, env = "READY_FILE")]
    pub ready_file: Option<PathBuf>,

    /// Log filter in tracing's EnvFilter syntax (e.g. `info`, `debug`, `iot_collector=trace`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// How long a graceful shutdown (first SIGTERM/SIGINT) may take before the process exits
    /// anyway.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "5s")]
    pub shutdown_grace: Dur,

    /// This node's name; defaults to the host name.
    #[arg(long, env = "EDGESIM_NODE")]
    pub node: Option<String>,

    /// This node's site.
    #[arg(long, env = "EDGESIM_SITE")]
    pub site: Option<String>,

    /// This node's address.
    #[arg(long, env = "EDGESIM_ADDR")]
    pub addr: Option<IpAddr>,

    /// Writable directory that survives restarts of this instance; durable state goes here.
    #[arg(long, env = "EDGESIM_WORKDIR")]
    pub workdir: Option<PathBuf>,

    /// Seed for every random choice (jitter, simulated data), so runs are reproducible.
    #[arg(long, env = "EDGESIM_SEED", default_value_t = 0)]
    pub seed: u64,

    /// The nodes of the run as `name=ip,name=ip,…`.
    #[arg(long, env = "EDGESIM_PEERS", default_value = "", value_parser = parse_peers)]
    pub peers: Peers,
}

/// Node name → address, from `EDGESIM_PEERS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<String, IpAddr>);

fn parse_peers(s: &str) -> Result<Peers, String> {
    let mut map = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, ip) = item
            .split_once('=')
            .ok_or_else(|| format!("peer `{item}` is not `name=ip`"))?;
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|e| format!("peer `{item}`: bad address: {e}"))?;
        map.insert(name.trim().to_string(), ip);
    }
    Ok(Peers(map))
}

/// The environment variable holding one peer's address: `gw-1` → `EDGESIM_PEER_GW_1`.
pub fn peer_env_key(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    format!("EDGESIM_PEER_{key}")
}

impl CommonArgs {
    /// The address to bind: `--listen` with `--port` applied.
    pub fn listen_addr(&self) -> SocketAddr {
        let mut a = self.listen;
        if let Some(p) = self.port {
            a.set_port(p);
        }
        a
    }

    /// The node name: `--node`/`EDGESIM_NODE`, else the kernel's host name, else `local`.
    pub fn node_name(&self) -> String {
        if let Some(n) = self.node.as_deref().filter(|n| !n.is_empty()) {
            return n.to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "local".to_string())
    }

    /// The directory for durable state: `--workdir`/`EDGESIM_WORKDIR`, else `fallback`
    /// (relative to the current directory).
    pub fn workdir_or(&self, fallback: &str) -> PathBuf {
        self.workdir
            .clone()
            .unwrap_or_else(|| PathBuf::from(fallback))
    }

    /// A peer's address by node name: `EDGESIM_PEERS`, then `EDGESIM_PEER_<NAME>`.
    pub fn peer_ip(&self, name: &str) -> Option<IpAddr> {
        self.peers.0.get(name).copied().or_else(|| {
            std::env::var(peer_env_key(name))
                .ok()
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// Every known peer name → address (`EDGESIM_PEERS` only).
    pub fn peer_map(&self) -> &BTreeMap<String, IpAddr> {
        &self.peers.0
    }

    /// Turns a peer reference into a base URL (no trailing `/`): `http://…` is kept as given;
    /// `name` or `name:port` becomes `http://<ip or name>:<port or default_port>`, using the
    /// peer's address from the environment when known (else the name, for `/etc/hosts`).
    pub fn peer_url(&self, spec: &str, default_port: u16) -> String {
        let spec = spec.trim().trim_end_matches('/');
        if spec.starts_with("http://") || spec.starts_with("https://") {
            return spec.to_string();
        }
        let (host, port) = match spec.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().unwrap_or(default_port)),
            _ => (spec, default_port),
        };
        match self.peer_ip(host) {
            Some(IpAddr::V6(ip)) => format!("http://[{ip}]:{port}"),
            Some(ip) => format!("http://{ip}:{port}"),
            None => format!("http://{host}:{port}"),
        }
    }
}

/// What a program reports about where it runs (part of every `/status`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeEnv {
    pub program: &'static str,
    pub version: &'static str,
    pub node: String,
    pub site: Option<String>,
    pub addr: Option<IpAddr>,
    pub seed: u64,
}

impl EdgeEnv {
    /// The identity of `program` (its crate name and version) running under `args`.
    pub fn new(program: &'static str, version: &'static str, args: &CommonArgs) -> Self {
        Self {
            program,
            version,
            node: args.node_name(),
            site: args.site.clone(),
            addr: args.addr,
            seed: args.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[test]
    fn peers_parse_and_resolve() {
        let cli = Cli::try_parse_from([
            "x",
            "--peers",
            "sink=10.0.0.2, gw-1=10.0.1.2",
            "--port",
            "9000",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        let c = cli.common;
        assert_eq!(c.listen_addr(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.peer_ip("sink"), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(c.peer_url("sink", 8080), "http://10.0.0.2:8080");
        assert_eq!(c.peer_url("gw-1:81", 8080), "http://10.0.1.2:81");
        assert_eq!(c.peer_url("other", 8080), "http://other:8080");
        assert_eq!(c.peer_url("http://x:1/", 8080), "http://x:1");
    }

    #[test]
    fn bad_peers_are_rejected() {
        assert!(Cli::try_parse_from(["x", "--peers", "sink"]).is_err());
        assert!(Cli::try_parse_from(["x", "--peers", "sink=not-an-ip"]).is_err());
    }

    #[test]
    fn env_key() {
        assert_eq!(peer_env_key("gw-1"), "EDGESIM_PEER_GW_1");
        assert_eq!(peer_env_key("Cloud.a"), "EDGESIM_PEER_CLOUD_A");
    }
}
