//! The `device` target's pieces: physical boards (Raspberry Pi, Jetson) reached over SSH.
//!
//! - [`agent`]: `edgesim agent`, which applies a board's faults under a lease.
//! - [`transport`]: SSH to boards (the system's OpenSSH), the agent's upload and its protocol.
//! - [`inventory`]: which boards there are and how to reach them (Ansible's YAML inventory),
//!   and which scenario node is which board.
//!
//! The target itself (provisioning boards through the agent, faults with leases) builds on
//! these; see the roadmap in DESIGN.md.

pub mod agent;
pub mod inventory;
pub mod transport;

use crate::profile::{Arch, ProfileSpec};

use self::agent::Facts;

/// What a scenario asks of a board's kernel and privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Delay or jitter toward some peer (netem).
    pub delay: bool,
    /// A rate limit (htb).
    pub rate: bool,
    /// Partitions or loss (nftables).
    pub firewall: bool,
    /// CPU and memory limits for the board's workloads (cgroup v2 with cpu and memory).
    pub limits: bool,
}

/// Checks a board against the profile its scenario node has and what the scenario needs;
/// every mismatch, at once (empty: the board fits). Runs before anything is changed.
pub fn check_board(host: &str, facts: &Facts, profile: &ProfileSpec, needs: Needs) -> Vec<String> {
    let mut out = Vec::new();
    let want_arch = match profile.arch {
        Arch::Amd64 => "amd64",
        Arch::Arm64 => "arm64",
    };
    if facts.arch != want_arch {
        out.push(format!(
            "{host}: the board is {} but its profile is {want_arch}",
            facts.arch
        ));
    }
    if facts.cores != profile.cpu.cores {
        out.push(format!(
            "{host}: the board has {} CPUs online, its profile {} cores (another board, or cores offline)",
            facts.cores, profile.cpu.cores
        ));
    }
    // MemTotal is what the kernel manages: installed memory less firmware and kernel
    // reservations (a few percent on these boards).
    let total = profile.memory.total.get() as f64;
    let seen = facts.memory_bytes as f64;
    if seen < total * 0.85 || seen > total * 1.05 {
        out.push(format!(
            "{host}: the board has {:.1} GiB of memory, its profile {:.1} GiB",
            seen / f64::from(1u32 << 30),
            total / f64::from(1u32 << 30)
        ));
    }
    if !facts.cap_net_admin {
        out.push(format!(
            "{host}: the agent lacks CAP_NET_ADMIN (run it as root, or give the user that capability: see ansible/)"
        ));
    }
    if needs.firewall
        && let Some(e) = &facts.nftables_error
    {
        out.push(format!(
            "{host}: partitions and loss need nftables, which fails: {e}"
        ));
    }
    if needs.rate && !facts.htb {
        out.push(format!(
            "{host}: rate limits need the kernel's sch_htb, which this board lacks"
        ));
    }
    if needs.delay && !facts.netem {
        out.push(format!(
            "{host}: delay and jitter need the kernel's sch_netem, which this board lacks (stock Jetson L4T has none); build the kernel module, or leave delay off this board's links"
        ));
    }
    if needs.limits {
        let ctl: Vec<&str> = facts
            .cgroup
            .strip_prefix("v2:")
            .map(|c| c.split_whitespace().collect())
            .unwrap_or_default();
        if !(ctl.contains(&"cpu") && ctl.contains(&"memory")) {
            out.push(format!(
                "{host}: CPU and memory limits need cgroup v2 with the cpu and memory controllers; the board has {}",
                facts.cgroup
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pi_facts() -> Facts {
        Facts {
            protocol: agent::PROTOCOL,
            version: "0".into(),
            arch: "arm64".into(),
            cores: 4,
            memory_bytes: 8_245_000_000,
            kernel: "6.6.51+rpt-rpi-2712".into(),
            euid: 0,
            cap_net_admin: true,
            netem: true,
            tbf: true,
            htb: true,
            nftables_error: None,
            cgroup: "v2: cpuset cpu io memory pids".into(),
            interfaces: vec!["lo".into(), "eth0".into()],
            management: None,
            recovered: vec![],
        }
    }

    fn profile(name: &str) -> ProfileSpec {
        crate::profile::ProfileSet::builtin()
            .unwrap()
            .get(name)
            .unwrap()
            .clone()
    }

    #[test]
    fn a_pi_fits_its_profile_and_every_mismatch_of_another_board_is_listed() {
        let all = Needs {
            delay: true,
            rate: true,
            firewall: true,
            limits: true,
        };
        let pi = profile("raspberry-pi-5-8gb");
        assert_eq!(
            check_board("pi-1", &pi_facts(), &pi, all),
            Vec::<String>::new()
        );
        // A stock Jetson Orin NX bound to the Pi's profile, unprivileged, on cgroup v1.
        let orin = Facts {
            cores: 8,
            memory_bytes: 16_000_000_000,
            netem: false,
            cap_net_admin: false,
            cgroup: "v1".into(),
            nftables_error: Some("Operation not permitted".into()),
            ..pi_facts()
        };
        let p = check_board("orin-1", &orin, &pi, all);
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].contains("8 CPUs") && p[1].contains("memory"), "{p:#?}");
        assert!(
            p.iter()
                .any(|m| m.contains("sch_netem") && m.contains("L4T"))
        );
        assert!(p.iter().any(|m| m.contains("CAP_NET_ADMIN")));
        // What the scenario does not need is not asked for.
        let p = check_board(
            "orin-1",
            &Facts {
                netem: false,
                ..pi_facts()
            },
            &pi,
            Needs::default(),
        );
        assert!(p.is_empty(), "{p:#?}");
        let amd = Facts {
            arch: "amd64".into(),
            ..pi_facts()
        };
        assert!(check_board("x", &amd, &pi, Needs::default())[0].contains("amd64"));
    }
}
