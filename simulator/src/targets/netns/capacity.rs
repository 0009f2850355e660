//! Whether this host can hold a lab, decided in [`super::resolve`], before anything is
//! created: a lab the host cannot hold is refused with the reason instead of failing half-way
//! through creating thousands of namespaces.
//!
//! What bounds a netns lab on one host, and how it is checked ([`check`], pure arithmetic on
//! a [`Demand`] and the [`HostLimits`] read from `/proc`):
//!
//! | resource | a lab needs | against |
//! |---|---|---|
//! | descriptors of the lab process | [`descriptors`] | hard `RLIMIT_NOFILE` (the soft limit is raised to it), capped by `fs.nr_open` |
//! | open files on the host | the same | `fs.file-max` minus the files open now |
//! | network namespaces | nodes + 1 | `user.max_net_namespaces` minus those alive now (counted from the `net_namespace` slab, so namespaces the kernel is still freeing count too) |
//! | mounts | nodes + 1 bind mounts under `/run/netns` | `fs.mount-max` minus the mounts of this mount namespace |
//! | kernel memory | [`KERNEL_BYTES_PER_NODE`] per node | `MemAvailable` |
//!
//! Ports per bridge (1023, so nodes per site) are a constant of the kernel, not of the host:
//! validation checks them ([`crate::scenario::validate::BRIDGE_PORTS`]).
//!
//! The descriptor figures follow from how the lab holds them (see [`super`]): none per node
//! once it is up, `2 × CHUNK` during bring-up, one per running workload process.

use crate::fabric::CHUNK;
use crate::scenario::Plan;

/// Descriptors a lab process holds whatever its size: standard streams, the runtime's
/// epoll and eventfds, logs, the fabric namespace and its netlink socket, tc and nftables
/// sockets, the metrics server, and the few a workload start opens for an instant (its log
/// files, the node's namespace, its `cgroup.procs` files). 27 are open in a 200-node lab
/// with no workloads; the rest is margin.
pub const FIXED_DESCRIPTORS: u64 = 96;
/// Held per node once the lab is up: none (namespaces and cgroup files are opened when used).
pub const DESCRIPTORS_PER_NODE: u64 = 0;
/// Held per node during bring-up, for [`CHUNK`] nodes at a time: its namespace and a
/// netlink socket inside it.
pub const BRINGUP_DESCRIPTORS_PER_NODE: u64 = 2;
/// Per site: the userspace link emulator's sockets and wake-up descriptors.
pub const DESCRIPTORS_PER_SITE: u64 = 4;
/// Per running workload process: the pidfd through which it is awaited.
pub const DESCRIPTORS_PER_INSTANCE: u64 = 1;
/// Per probe: the sockets of a measurement in flight.
pub const DESCRIPTORS_PER_PROBE: u64 = 2;

/// Kernel memory a node takes at the least: its namespace, veth pair, cgroups, hosts file.
/// Measured 350–415 KiB per node (`Slab` + `Percpu` + `KernelStack` + `PageTables` +
/// `VmallocUsed` of `/proc/meminfo` before and after `edgesim up` of 200, 1000 and 2000 nodes,
/// kernel 6.18, cgroup v1 with five hierarchies); a lower bound is used, so that the check
/// refuses only labs that surely do not fit.
pub const KERNEL_BYTES_PER_NODE: u64 = 256 * 1024;

/// What a plan asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub nodes: u64,
    pub sites: u64,
    /// Workload processes (one per workload per node it runs on).
    pub instances: u64,
    pub probes: u64,
}

impl Demand {
    pub fn of(plan: &Plan) -> Demand {
        Demand {
            nodes: plan.nodes.len() as u64,
            sites: plan.sites.len() as u64,
            instances: plan.workloads.iter().map(|w| w.nodes.len() as u64).sum(),
            probes: plan.probes.len() as u64,
        }
    }
}

/// The most descriptors the lab process of `d` holds at once (an estimate from the figures
/// above, rounded up).
pub fn descriptors(d: &Demand) -> u64 {
    FIXED_DESCRIPTORS
        + BRINGUP_DESCRIPTORS_PER_NODE * d.nodes.min(CHUNK as u64)
        + DESCRIPTORS_PER_NODE * d.nodes
        + DESCRIPTORS_PER_SITE * d.sites
        + DESCRIPTORS_PER_INSTANCE * d.instances
        + DESCRIPTORS_PER_PROBE * d.probes
}

/// The host's limits that bound a lab; `None` where unknown (that check is skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// Hard `RLIMIT_NOFILE` of this process (what the soft limit can be raised to).
    pub nofile_hard: u64,
    /// `fs.nr_open`, the ceiling of any descriptor limit.
    pub nr_open: Option<u64>,
    /// Descriptors this process has open now.
    pub open_here: Option<u64>,
    /// `fs.file-max` and the files open on the host now (first field of `fs.file-nr`).
    pub file_max: Option<u64>,
    pub files_open: Option<u64>,
    /// `user.max_net_namespaces` and the network namespaces alive now.
    pub max_net_namespaces: Option<u64>,
    pub net_namespaces: Option<u64>,
    /// `fs.mount-max` and the mounts of this process's mount namespace.
    pub mount_max: Option<u64>,
    pub mounts: Option<u64>,
    /// `MemAvailable` from `/proc/meminfo`, bytes.
    pub mem_available: Option<u64>,
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl HostLimits {
    /// Reads this host's limits (no root needed; the namespace count falls back to the named
    /// namespaces under `/run/netns` where `/proc/slabinfo` is unreadable).
    pub fn read() -> HostLimits {
        let nofile_hard = crate::host::rlimit::nofile()
            .map(|(_, h)| h)
            .unwrap_or(1024);
        let count = |dir: &str| std::fs::read_dir(dir).ok().map(|d| d.count() as u64);
        let mem_available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
        HostLimits {
            nofile_hard,
            nr_open: read_u64("/proc/sys/fs/nr_open"),
            open_here: count("/proc/self/fd"),
            file_max: read_u64("/proc/sys/fs/file-max"),
            files_open: read_u64("/proc/sys/fs/file-nr"),
            max_net_namespaces: read_u64("/proc/sys/user/max_net_namespaces"),
            net_namespaces: crate::fabric::live_namespaces()
                .map(|n| n as u64)
                .or_else(|| count(crate::host::ns::NETNS_DIR)),
            mount_max: read_u64("/proc/sys/fs/mount-max"),
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .map(|m| m.lines().count() as u64),
            mem_available,
        }
    }
}

/// One reason a host cannot hold a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: String,
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1024 * 1024))
}

/// Every reason why a lab of demand `d` does not fit a host with limits `h`; empty when it
/// fits.
pub fn check(d: &Demand, h: &HostLimits) -> Vec<Refusal> {
    let mut out = Vec::new();
    let fds = descriptors(d);
    let count = |k: u64, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
    let what = format!(
        "{}, {} and {}",
        count(d.nodes, "node", "nodes"),
        count(d.instances, "workload process", "workload processes"),
        count(d.probes, "probe", "probes")
    );

    let ceiling = h.nofile_hard.min(h.nr_open.unwrap_or(u64::MAX));
    let room = ceiling.saturating_sub(h.open_here.unwrap_or(0));
    if fds > room {
        out.push(Refusal {
            message: format!(
                "this host cannot hold the lab: {what} need about {fds} open files in the lab \
                 process ({FIXED_DESCRIPTORS} fixed, {BRINGUP_DESCRIPTORS_PER_NODE} per node \
                 for up to {CHUNK} nodes at a time during bring-up, {DESCRIPTORS_PER_SITE} \
                 per site, {DESCRIPTORS_PER_INSTANCE} per workload process, \
                 {DESCRIPTORS_PER_PROBE} per probe), and its open-file limit \
                 (hard RLIMIT_NOFILE{}) allows {ceiling}{}",
                if h.nr_open.is_some_and(|n| n < h.nofile_hard) {
                    ", capped by fs.nr_open"
                } else {
                    ""
                },
                match h.open_here {
                    Some(o) if o > 0 => format!(" with {o} already open"),
                    _ => String::new(),
                }
            ),
            hint: format!(
                "raise the hard limit to at least {} (`ulimit -Hn` as root, `LimitNOFILE=` for a \
                 service), or run fewer workload processes",
                fds + h.open_here.unwrap_or(0)
            ),
        });
    }

    if let (Some(max), Some(open)) = (h.file_max, h.files_open)
        && open + fds > max
    {
        out.push(Refusal {
            message: format!(
                "this host cannot hold the lab: {what} need about {fds} open files, and \
                 {open} of the host's {max} (fs.file-max) are open already"
            ),
            hint: "raise `sysctl fs.file-max`, or close what holds the host's files".into(),
        });
    }

    let namespaces = d.nodes + 1;
    if let Some(max) = h.max_net_namespaces {
        let alive = h.net_namespaces.unwrap_or(0);
        if alive + namespaces > max {
            out.push(Refusal {
                message: format!(
                    "this host cannot hold the lab: {} nodes need {namespaces} network \
                     namespaces, and user.max_net_namespaces is {max} with {alive} alive (the \
                     kernel frees those of removed labs in the background, and they count \
                     until it has)",
                    d.nodes
                ),
                hint: format!(
                    "raise `sysctl user.max_net_namespaces` to at least {}, or wait for the \
                     kernel to free removed labs' namespaces",
                    alive + namespaces
                ),
            });
        }
    }

    if let (Some(max), Some(mounts)) = (h.mount_max, h.mounts)
        && mounts + namespaces > max
    {
        out.push(Refusal {
            message: format!(
                "this host cannot hold the lab: {} nodes need {namespaces} mounts under \
                 /run/netns (one per namespace), and fs.mount-max is {max} with {mounts} \
                 mounts in this mount namespace",
                d.nodes
            ),
            hint: format!(
                "raise `sysctl fs.mount-max` to at least {}",
                mounts + namespaces
            ),
        });
    }

    let kernel = KERNEL_BYTES_PER_NODE * d.nodes;
    if let Some(avail) = h.mem_available
        && kernel > avail
    {
        out.push(Refusal {
            message: format!(
                "this host cannot hold the lab: {} nodes take at least {} of kernel memory \
                 (about {} KiB each for namespace, veth pair and cgroups), and {} is available",
                d.nodes,
                mib(kernel),
                KERNEL_BYTES_PER_NODE / 1024,
                mib(avail)
            ),
            hint: "run fewer nodes, or on a host with more memory".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This development VM: hard limit 20000, nothing else near its limits.
    fn roomy() -> HostLimits {
        HostLimits {
            nofile_hard: 20_000,
            nr_open: Some(1_048_576),
            open_here: Some(10),
            file_max: Some(2_466_170),
            files_open: Some(800),
            max_net_namespaces: Some(96_365),
            net_namespaces: Some(30),
            mount_max: Some(100_000),
            mounts: Some(40),
            mem_available: Some(20 << 30),
        }
    }

    fn lab(nodes: u64, instances: u64) -> Demand {
        Demand {
            nodes,
            sites: 4,
            instances,
            probes: 1,
        }
    }

    #[test]
    fn descriptors_do_not_grow_with_nodes_once_past_a_chunk() {
        let small = descriptors(&lab(200, 0));
        assert_eq!(small, 96 + 2 * 200 + 16 + 2);
        let big = descriptors(&lab(4000, 0));
        assert_eq!(big, 96 + 2 * CHUNK as u64 + 16 + 2);
        assert_eq!(descriptors(&lab(40_000, 0)), big);
        // Workload processes do count.
        assert_eq!(descriptors(&lab(4000, 4000)), big + 4000);
    }

    #[test]
    fn a_4000_node_lab_fits_this_vm_and_what_does_not_is_refused_with_the_reason() {
        let h = roomy();
        assert_eq!(check(&lab(4000, 0), &h), vec![]);
        assert_eq!(check(&lab(4000, 4000), &h), vec![]);

        // Where the limit is 1024 (a default hard limit), 4000 workload processes do not fit.
        let tight = HostLimits {
            nofile_hard: 1024,
            ..roomy()
        };
        assert_eq!(check(&lab(4000, 0), &tight), vec![]);
        let r = check(&lab(4000, 4000), &tight);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].message.contains("need about 4626 open files")
                && r[0].message.contains("allows 1024 with 10 already open"),
            "{}",
            r[0].message
        );
        assert!(r[0].hint.contains("at least 4636"), "{}", r[0].hint);

        // fs.nr_open caps an unlimited hard limit.
        let capped = HostLimits {
            nofile_hard: u64::MAX,
            nr_open: Some(2048),
            ..roomy()
        };
        let r = check(&lab(100, 3000), &capped);
        assert!(r[0].message.contains("capped by fs.nr_open"), "{r:?}");
    }

    #[test]
    fn kernel_limits_refuse_with_their_own_reason() {
        // Namespaces: those alive (or still being freed) count against the limit.
        let h = HostLimits {
            max_net_namespaces: Some(5000),
            net_namespaces: Some(1000),
            ..roomy()
        };
        assert_eq!(check(&lab(3999, 0), &h), vec![]);
        let r = check(&lab(4000, 0), &h);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].message.contains("4001 network namespaces")
                && r[0]
                    .message
                    .contains("user.max_net_namespaces is 5000 with 1000 alive"),
            "{}",
            r[0].message
        );
        assert!(r[0].hint.contains("at least 5001"));

        // Mounts: one per namespace under /run/netns.
        let h = HostLimits {
            mount_max: Some(4040),
            ..roomy()
        };
        assert_eq!(check(&lab(3999, 0), &h), vec![]);
        let r = check(&lab(4000, 0), &h);
        assert!(r[0].message.contains("fs.mount-max is 4040 with 40 mounts"));

        // Host-wide open files.
        let h = HostLimits {
            file_max: Some(1000),
            files_open: Some(900),
            ..roomy()
        };
        let r = check(&lab(10, 0), &h);
        assert!(
            r[0].message
                .contains("900 of the host's 1000 (fs.file-max)")
        );

        // Kernel memory: 256 KiB per node against MemAvailable.
        let h = HostLimits {
            mem_available: Some(1 << 30),
            ..roomy()
        };
        assert_eq!(check(&lab(4096, 0), &h), vec![]);
        let r = check(&lab(4097, 0), &h);
        assert!(
            r[0].message.contains("4097 nodes take at least 1025 MiB")
                && r[0].message.contains("1024 MiB is available"),
            "{}",
            r[0].message
        );

        // Unknown limits are not checked; several problems are all reported.
        let unknown = HostLimits {
            nofile_hard: 100,
            ..HostLimits::default()
        };
        assert_eq!(check(&lab(4000, 0), &unknown).len(), 1);
        let all = HostLimits {
            nofile_hard: 100,
            max_net_namespaces: Some(10),
            mount_max: Some(10),
            mem_available: Some(1 << 20),
            ..roomy()
        };
        assert_eq!(check(&lab(4000, 0), &all).len(), 4);
    }

    #[test]
    fn this_host_is_read() {
        let h = HostLimits::read();
        assert!(h.nofile_hard >= 1);
        assert!(h.open_here.is_some_and(|n| n >= 3), "{h:?}");
        assert!(h.mounts.is_some_and(|n| n >= 1), "{h:?}");
    }
}
