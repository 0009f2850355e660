//! The `kind` target: a scenario on a Kubernetes cluster, its workloads delivered as pods by
//! Flux from an artifact the run pushes ([`lab`], [`delivery`], [`manifests`], [`tools`]),
//! through the Kubernetes API client logic of [`kube`] (server-side apply with CRDs first,
//! Flux's "revision deployed and healthy" predicate, reconcile requests, the fake
//! `nvidia.com/gpu`, the allocatable check). Two clusters:
//!
//! - a Kind cluster made for the run, its configuration generated from the scenario
//!   ([`config`]), its node containers held to their boards and impaired from inside with the
//!   kubelet ↔ API server traffic always exempt ([`nodes`]);
//! - a cluster of your own (`--kubeconfig`), its nodes bound by label and checked, its faults
//!   applied by edgesim's agent delivered as a DaemonSet ([`existing`]).
//!
//! [`lab`], [`delivery`], [`existing`] and [`kube`] need the default `kube` feature; the agents,
//! built without it, keep the rest.
//!
//! # Design
//!
//! A Kind node is a container on the host's Docker Engine, and every kubelet in it sees the
//! whole host: its capacity is the host's CPUs and memory, whatever limits the container has
//! (cAdvisor ignores the container's cgroup, google/cadvisor#2698). What a scheduler works
//! with, though, is a node's *allocatable* resources, which kubelet computes as
//!
//! ```text
//! allocatable = capacity − kube-reserved − system-reserved − hard eviction threshold
//! ```
//!
//! so [`config`] reserves the difference between the host and the profile and the node
//! advertises exactly the board's cores and the memory the board leaves its workloads
//! (`memory.total − memory.reserved`, what the `netns` target gives a node). The figures
//! depend on the host, so they are parameters ([`config::Host`]), and the checked-in examples
//! under `kind/` state the host they were generated for.
//!
//! Per-node kubelet settings go through a `JoinConfiguration` patch of each worker
//! (`nodeRegistration.kubeletExtraArgs`), not through a `KubeletConfiguration` patch: kubeadm
//! reads `KubeletConfiguration` only from the first node it configures and applies it to all
//! nodes (kind#3923, caused by kubeadm#3008), so per-node `KubeletConfiguration` patches all
//! end up with the first node's values. Kubelet flags take precedence over its config file.
//!
//! Architecture: a Kind node runs the host's architecture (Kind cannot run arm64 nodes under
//! qemu, kind#2735), so an arm64 board becomes an amd64 node. The generator never sets
//! `kubernetes.io/arch`, which kubelet owns and resets; the board's architecture is in
//! `edgesim.dev/arch`, beside `edgesim.dev/profile`, `edgesim.dev/site` and `edgesim.dev/node`,
//! the labels the manifests of `flux/` select nodes by, on Kind and on real clusters alike.
pub mod config;
#[cfg(feature = "kube")]
pub mod delivery;
#[cfg(feature = "kube")]
pub mod existing;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "kube")]
pub mod lab;
pub mod manifests;
#[cfg(all(test, feature = "kube"))]
mod mock;
pub mod nodes;
pub mod tools;
