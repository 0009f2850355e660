//! The host layer: the only code in edgesim that changes kernel state.
//!
//! Everything here works from a plain process, without the engine around it (the device
//! target's on-board agent reuses it), and never touches the host's own network namespace:
//! every object is created inside a namespace that a run owns.
//!
//! - [`ns`]: creating, entering and deleting named network namespaces (`/run/netns/NAME`),
//!   and sockets opened inside them.
//! - [`link`]: interfaces, addresses, routes over rtnetlink.
//! - [`tc`]: qdiscs, classes and filters (tbf, htb, netem, u32) over netlink, hand-encoded.
//! - [`nft`]: the run's firewall (partitions, loss) as nf_tables batches over netlink.
//! - [`cgroup`]: cgroup v1 and v2 limits, freezing and killing.
//! - [`rlimit`]: the open-file limit, raised for edgesim and restored for its workloads.

pub mod cgroup;
pub mod link;
pub mod nft;
pub mod ns;
pub mod rlimit;
pub mod tc;

use std::io;

/// A failed kernel operation, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("creating network namespace {name}: {source}")]
    NsCreate {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("deleting network namespace {name}: {source}")]
    NsDelete {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("opening network namespace {name}: {source}")]
    NsOpen {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {name}: {source}")]
    NsEnter {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink {op} on {object}: {source}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request; `message` is its extended-ack explanation when it gave one.
    #[error("{op} {object}: {source}{}", .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        object: String,
        message: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The running kernel (or host) lacks a mechanism, e.g. the `netem` qdisc: callers can fall
    /// back to another mechanism instead of failing.
    #[error("{op} {object}: unsupported `{what}`: {detail}")]
    Unsupported {
        what: String,
        op: &'static str,
        object: String,
        detail: String,
    },
    /// The nf_tables conversation went wrong (a malformed or missing answer).
    #[error("{op} nftables tables {table} in namespace {namespace}: {detail}")]
    Nft {
        op: &'static str,
        table: String,
        namespace: String,
        detail: String,
    },
    #[error("{op} {object}: {detail}")]
    Other {
        op: &'static str,
        object: String,
        detail: String,
    },
}

impl HostError {
    pub fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        HostError::Io {
            op,
            object: object.into(),
            source,
        }
    }
    pub fn netlink(op: &'static str, object: impl Into<String>, source: rtnetlink::Error) -> Self {
        HostError::Netlink {
            op,
            object: object.into(),
            source,
        }
    }
    pub fn other(op: &'static str, object: impl Into<String>, detail: impl Into<String>) -> Self {
        HostError::Other {
            op,
            object: object.into(),
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = HostError> = std::result::Result<T, E>;
