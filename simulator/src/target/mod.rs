//! Targets: where a scenario's nodes become real. One module per target behind one enum.
//!
//! - [`netns`] (default): network namespaces and cgroups on this host.
//!
//! Also here: what this machine can do ([`doctor`]) and what that means for validation
//! ([`netns_capabilities`]): a target that cannot do an action exactly says so before the
//! run starts, never silently.

pub mod netns;

use serde::Serialize;

use crate::scenario::Capabilities;

/// Whether the running kernel offers sch_netem, without root: loaded, or present as a module
/// file, or built in according to the kernel's config. (Root can probe for sure with
/// [`crate::host::tc::kernel_has_qdisc`].)
pub fn netem_on_disk() -> bool {
    if std::path::Path::new("/sys/module/sch_netem").exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let modules = std::path::Path::new("/lib/modules").join(&release);
    let found = [
        "kernel/net/sched/sch_netem.ko",
        "kernel/net/sched/sch_netem.ko.xz",
        "kernel/net/sched/sch_netem.ko.zst",
        "kernel/net/sched/sch_netem.ko.gz",
    ]
    .iter()
    .any(|f| modules.join(f).exists());
    found
        || std::fs::read_to_string(format!("/boot/config-{release}"))
            .map(|c| {
                c.lines()
                    .any(|l| l == "CONFIG_NET_SCH_NETEM=y" || l == "CONFIG_NET_SCH_NETEM=m")
            })
            .unwrap_or(false)
}

/// Whether the kernel has netem: probed in a scratch namespace when root, else from disk.
pub fn kernel_has_netem() -> bool {
    if nix::unistd::geteuid().is_root() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt
            && let Ok(v) = rt.block_on(crate::host::tc::kernel_has_qdisc("netem"))
        {
            return v;
        }
    }
    netem_on_disk()
}

/// What the netns target can do on this machine, for validation.
pub fn netns_capabilities() -> Capabilities {
    let netem = kernel_has_netem();
    Capabilities {
        target: "netns".into(),
        netem,
        userspace: true,
        netem_hint: "this kernel has no sch_netem (tc netem); `impairment: auto` or `userspace` runs the same \
                     impairments in the userspace link emulator instead (`edgesim doctor` shows what this machine offers)"
            .into(),
    }
}

/// How a target carries out one kind of action on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Done by the kernel feature made for it.
    Exact,
    /// Done another way that gives the same observable effect.
    Emulated,
    /// Not possible here; scenarios using it are rejected before anything is created.
    Unavailable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionSupport {
    pub action: String,
    pub support: Support,
    pub how: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub usable: bool,
    pub actions: Vec<ActionSupport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub kernel: String,
    pub checks: Vec<Check>,
    pub targets: Vec<TargetReport>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Examines this machine: kernel features (probed in scratch namespaces when root), cgroups,
/// tools and daemons, and what each target can do with them.
pub async fn doctor() -> DoctorReport {
    let root = nix::unistd::geteuid().is_root();
    let kernel = nix::sys::utsname::uname()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_default();
    let mut checks = vec![check(
        "root",
        root,
        if root {
            "running as root"
        } else {
            "not root: namespaces, tc, nftables and cgroups need root"
        },
    )];

    let mut netns_ok = false;
    let (mut tbf, mut htb, mut netem) = (false, false, netem_on_disk());
    if root {
        match crate::host::tc::ScratchNs::create("doctor") {
            Ok(s) => {
                netns_ok = true;
                drop(s);
                checks.push(check("netns", true, "network namespaces can be created"));
            }
            Err(e) => checks.push(check("netns", false, e.to_string())),
        }
        for (kind, slot) in [("tbf", &mut tbf), ("htb", &mut htb), ("netem", &mut netem)] {
            match crate::host::tc::kernel_has_qdisc(kind).await {
                Ok(v) => *slot = v,
                Err(e) => checks.push(check(&format!("qdisc {kind}"), false, e.to_string())),
            }
        }
    } else {
        checks.push(check("netns", false, "needs root to check"));
    }
    checks.push(check(
        "qdisc tbf",
        tbf,
        if tbf {
            "tc tbf available (rate limits)"
        } else if !root {
            "needs root to check"
        } else {
            "missing: rate limits unavailable"
        },
    ));
    checks.push(check(
        "qdisc htb",
        htb,
        if htb {
            "tc htb available (per-path rate limits)"
        } else if !root {
            "needs root to check"
        } else {
            "missing: per-path rate limits unavailable"
        },
    ));
    checks.push(check(
        "qdisc netem",
        netem,
        if netem {
            "tc netem available (delay, jitter)"
        } else {
            "missing (as on WSL2, minimal VMs and stock Jetson L4T kernels): no kernel delay/jitter"
        },
    ));
    // nf_tables in the kernel, tried for real: a table applied and deleted in a scratch
    // namespace (edgesim speaks netlink to it; the `nft` program is not needed).
    let nft_probe = if root {
        crate::host::tc::ScratchNs::create("doctor").and_then(|s| {
            let fw = crate::host::nft::Firewall::new(&s.0, "edgesim-doctor")?;
            fw.apply(&crate::host::nft::Ruleset::default())?;
            fw.delete()
        })
    } else {
        Err(crate::host::HostError::other(
            "probing",
            "nf_tables",
            "needs root to check",
        ))
    };
    let nft = nft_probe.is_ok();
    checks.push(check(
        "nftables",
        nft,
        match &nft_probe {
            Ok(()) => "nf_tables works (partitions, loss)".to_string(),
            Err(e) => format!("nf_tables unusable: {e}"),
        },
    ));
    let cg = crate::host::cgroup::Cgroups::detect();
    let cg_ok = cg.is_ok();
    checks.push(match &cg {
        Ok(c) => check(
            "cgroups",
            c.has("cpu") && c.has("memory"),
            format!(
                "cgroup v{}; controllers: {}",
                c.version(),
                ["cpu", "memory", "pids", "freezer"]
                    .iter()
                    .filter(|k| c.has(k))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => check("cgroups", false, e.to_string()),
    });
    let binfmt = std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists();
    checks.push(check(
        "binfmt arm64",
        binfmt,
        if binfmt {
            "arm64 binaries run under qemu-user"
        } else {
            "qemu-aarch64 binfmt not registered (install qemu-user-static binfmt-support)"
        },
    ));
    let docker = std::path::Path::new("/var/run/docker.sock").exists();
    checks.push(check(
        "docker",
        docker,
        if docker {
            "Docker Engine socket present"
        } else {
            "no Docker Engine socket at /var/run/docker.sock"
        },
    ));

    let row = |action: &str, support: Support, how: &str| ActionSupport {
        action: action.into(),
        support,
        how: how.into(),
    };
    let exact_or = |action: &str, ok: bool, how: &str, missing: &str| {
        if ok {
            row(action, Support::Exact, how)
        } else {
            row(action, Support::Unavailable, missing)
        }
    };
    // With `impairment: auto` link impairments go to netem where the kernel has it and to the
    // userspace emulator (linkem) elsewhere; partitions always stay in nftables.
    let emulated =
        "linkem, the userspace emulator (seeded; `impairment: auto` picks it without netem)";
    let link_row = |action: &str, kernel_ok: bool, kernel_how: &str| {
        if kernel_ok {
            row(action, Support::Exact, kernel_how)
        } else {
            row(action, Support::Emulated, emulated)
        }
    };
    let actions = vec![
        exact_or(
            "partition / heal",
            nft,
            "nftables drop rules in the fabric namespace (routed and bridged)",
            "needs nf_tables in the kernel",
        ),
        link_row(
            "loss",
            netem,
            "nftables `numgen random` drop rules (netem when correlated)",
        ),
        link_row(
            "rate",
            netem && htb,
            "tc htb classes on the destination site's bridge",
        ),
        link_row("delay / jitter", netem, "tc netem under the htb class"),
        link_row("burst loss (Gilbert-Elliott)", netem, "tc netem"),
        link_row("duplicate / corrupt / reorder", netem, "tc netem"),
        link_row(
            "flap / trace",
            netem,
            "the same mechanisms, changed on schedule",
        ),
        row(
            "deterministic runs",
            Support::Emulated,
            "always linkem: every decision comes from the seed",
        ),
        exact_or(
            "node-down / node-up",
            root,
            "veth carrier down; workloads killed or frozen",
            "needs root",
        ),
        exact_or(
            "kill / restart",
            true,
            "signals to the workload's process group",
            "",
        ),
        exact_or(
            "cpu / memory",
            cg_ok,
            "cgroup limits changed live",
            "needs cgroup cpu and memory controllers",
        ),
    ];
    let targets = vec![TargetReport {
        target: "netns".into(),
        usable: root && netns_ok && nft,
        actions,
    }];
    DoctorReport {
        kernel,
        checks,
        targets,
    }
}
