//! The `kind` target, in progress: what exists is the generation of Kind cluster
//! configurations from a scenario ([`config`]); on a running cluster, the work on its node
//! containers through the Docker Engine ([`nodes`]): the workers held to their boards' CPU and
//! memory, and partitions, loss, rate and delay installed inside the node containers with the
//! kubelet ↔ API server traffic always exempt (so a partitioned node stays Ready: see
//! [`nodes`]); and, behind the default `kube` feature, the Kubernetes API client logic the
//! target needs (`kube`: server-side apply of manifests with CRDs first, Flux's "revision
//! deployed and healthy" predicate, reconcile requests, waiting for a delivery with a
//! diagnosis on timeout, a fake `nvidia.com/gpu` on GPU nodes, and the check of every node's
//! allocatable CPU and memory), tested against kube's mock only. The target itself (creating
//! the cluster, delivering workloads through Flux, driving the timeline) is not wired into
//! [`super::TargetKind`] or the engine yet.
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
pub mod kube;
#[cfg(feature = "kube")]
pub mod lab;
pub mod manifests;
pub mod nodes;
pub mod tools;
