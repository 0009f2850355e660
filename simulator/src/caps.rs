//! What a target can do on this machine: one table of actions, each *exact*, *emulated* or
//! *unavailable*, with how it is done.
//!
//! The same table serves two readers. Validation ([`crate::scenario::validate`]) rejects a
//! scenario that needs an unavailable action before anything is created, and picks the
//! mechanism for link impairments from it; `edgesim doctor` prints it. Each target builds its
//! table from what it probed (`crate::targets`), so what doctor shows is what validation
//! enforces.

use serde::Serialize;

/// How a target carries out one kind of action on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Support {
    /// Done by the kernel or daemon feature made for it.
    Exact,
    /// Done another way that gives the same observable effect.
    Emulated,
    /// Not possible here; scenarios using it are rejected before anything is created.
    Unavailable,
}

impl Support {
    pub fn as_str(self) -> &'static str {
        match self {
            Support::Exact => "exact",
            Support::Emulated => "emulated",
            Support::Unavailable => "unavailable",
        }
    }
    pub fn available(self) -> bool {
        self != Support::Unavailable
    }
}

/// A kind of action a scenario may ask of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    Partition,
    Loss,
    Rate,
    Delay,
    BurstLoss,
    DuplicateCorruptReorder,
    FlapTrace,
    /// Every packet decision drawn from the seed (the userspace emulator).
    Deterministic,
    NodeIsolate,
    NodeFreeze,
    NodePoweroff,
    KillRestart,
    Cpu,
    Memory,
    BlockIo,
    AppWorkload,
    CommandWorkload,
    ImageWorkload,
    Arm64Emulation,
}

impl Feature {
    pub const ALL: [Feature; 19] = [
        Feature::Partition,
        Feature::Loss,
        Feature::Rate,
        Feature::Delay,
        Feature::BurstLoss,
        Feature::DuplicateCorruptReorder,
        Feature::FlapTrace,
        Feature::Deterministic,
        Feature::NodeIsolate,
        Feature::NodeFreeze,
        Feature::NodePoweroff,
        Feature::KillRestart,
        Feature::Cpu,
        Feature::Memory,
        Feature::BlockIo,
        Feature::AppWorkload,
        Feature::CommandWorkload,
        Feature::ImageWorkload,
        Feature::Arm64Emulation,
    ];

    /// How the action is named in scenarios and in doctor's table.
    pub fn label(self) -> &'static str {
        match self {
            Feature::Partition => "partition / heal",
            Feature::Loss => "loss",
            Feature::Rate => "rate",
            Feature::Delay => "delay / jitter",
            Feature::BurstLoss => "burst loss (Gilbert-Elliott)",
            Feature::DuplicateCorruptReorder => "duplicate / corrupt / reorder",
            Feature::FlapTrace => "flap / trace",
            Feature::Deterministic => "deterministic runs",
            Feature::NodeIsolate => "node-down isolate",
            Feature::NodeFreeze => "node-down freeze",
            Feature::NodePoweroff => "node-down poweroff",
            Feature::KillRestart => "kill / restart",
            Feature::Cpu => "cpu",
            Feature::Memory => "memory",
            Feature::BlockIo => "block-IO limits",
            Feature::AppWorkload => "app: workloads",
            Feature::CommandWorkload => "command: workloads",
            Feature::ImageWorkload => "image: workloads",
            Feature::Arm64Emulation => "emulateArch (arm64 under qemu)",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct ActionSupport {
    pub feature: Feature,
    pub action: String,
    pub support: Support,
    pub how: String,
}

/// What the selected target can do here.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// Target name, for messages (`netns`, `docker`, …).
    pub target: String,
    pub rows: Vec<ActionSupport>,
    /// Why the kernel cannot do delay and its kin (a hint for messages).
    #[serde(skip)]
    pub netem_hint: String,
}

impl Capabilities {
    pub fn new(target: &str) -> Self {
        Capabilities {
            target: target.into(),
            rows: Vec::new(),
            netem_hint: String::new(),
        }
    }

    /// Everything possible, exactly: for checks that do not depend on a machine (tests,
    /// `plan`).
    pub fn all(target: &str) -> Self {
        let mut c = Capabilities::new(target);
        for f in Feature::ALL {
            let s = if f == Feature::Deterministic {
                Support::Emulated
            } else {
                Support::Exact
            };
            c.set(f, s, "");
        }
        c
    }

    /// Sets (or replaces) the row of `f`.
    pub fn set(&mut self, f: Feature, support: Support, how: impl Into<String>) -> &mut Self {
        let row = ActionSupport {
            feature: f,
            action: f.label().into(),
            support,
            how: how.into(),
        };
        match self.rows.iter_mut().find(|r| r.feature == f) {
            Some(r) => *r = row,
            None => self.rows.push(row),
        }
        self
    }

    /// How `f` is supported; a feature without a row is unavailable.
    pub fn support(&self, f: Feature) -> Support {
        self.row(f).map_or(Support::Unavailable, |r| r.support)
    }

    pub fn row(&self, f: Feature) -> Option<&ActionSupport> {
        self.rows.iter().find(|r| r.feature == f)
    }

    /// Whether the kernel does delay, jitter and their kin (netem) for this target.
    pub fn netem(&self) -> bool {
        self.support(Feature::Delay) == Support::Exact
    }

    /// Whether the userspace link emulator can run for this target.
    pub fn userspace(&self) -> bool {
        self.support(Feature::Deterministic).available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_replace_and_default_to_unavailable() {
        let mut c = Capabilities::new("t");
        assert_eq!(c.support(Feature::Delay), Support::Unavailable);
        assert!(!c.netem() && !c.userspace());
        c.set(Feature::Delay, Support::Emulated, "linkem");
        c.set(Feature::Delay, Support::Exact, "netem");
        assert_eq!(c.rows.len(), 1);
        assert!(c.netem());
        let all = Capabilities::all("t");
        assert_eq!(all.rows.len(), Feature::ALL.len());
        assert!(all.netem() && all.userspace());
    }
}
