//! Hardware profiles: what a board is, and how a node shaped like it is limited on this host.
//!
//! # Design
//!
//! A profile describes one real board (or one cloud VM shape) in a YAML file under
//! `hardware-profiles/`, one file per board, named after `metadata.name`. The files cite their
//! sources in a header comment. Every file in that directory is embedded in the binary at
//! compile time and parsed on first use ([`ProfileSet::builtin`]); users add or override
//! profiles with their own directories ([`ProfileSet::load_dir`], `--profiles DIR` or
//! `EDGESIM_PROFILES`), and scenarios may define a profile inline (`spec.profiles: {name:
//! ProfileSpec}`), which is why [`ProfileSpec`] stands on its own.
//!
//! The user-facing structs reject unknown fields and describe themselves in the JSON Schema
//! (`edgesim schema`). Parse errors carry file, line and column; [`ProfileSpec::validate`]
//! reports every semantic problem at once, each prefixed with the field it concerns.
//!
//! # From a profile to limits
//!
//! [`limits`] turns a profile into the numbers a cgroup (or Docker, or kubelet) enforces:
//!
//! - **CPU**: the node gets `cores × relativeSpeed / hostSpeedPerCore` host cores, expressed as
//!   a CFS quota over a 100 ms period and capped at the host's online CPUs. `relativeSpeed` is
//!   the board's single-core speed relative to the reference core (one Cortex-A76 of a
//!   Raspberry Pi 5 at 2.4 GHz = 1.0), and the host's speed is measured in the same unit by
//!   [`calibrate`]; see that module for the method, the figures and its limits.
//! - **Memory**: `total − reserved`, where `reserved` is what the board's firmware, kernel and
//!   base OS keep for themselves, so a workload sees roughly what it would see on the board.
//!   Swap beyond that is refused where the kernel allows (see [`crate::host::cgroup`]).
//! - **PIDs**: `pids`, when the profile sets it.
//!
//! [`storage_throttle`] turns the `storage` section into block-IO throttles: sequential read and
//! write bandwidth (`readMBps`, `writeMBps`, 1 MB = 10^6 bytes) and random 4K read and write IOPS
//! (`readIops`, `writeIops`). They are what the `docker` target (planned, not in this tree yet)
//! enforces, as `BlkioDeviceReadBps`, `BlkioDeviceWriteBps`, `BlkioDeviceReadIOps` and
//! `BlkioDeviceWriteIOps`; the `netns` target does not throttle block IO at all, so there a
//! node's disk is the host's disk.
//!
//! Timeline actions that change limits live (`cpu: {cores: 1}` in profile cores, `memory:
//! {limit: 256Mi}`) start from the node's limits and use [`NodeLimits::with_cpu_cores`] and
//! [`NodeLimits::with_memory`].

pub mod calibrate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use calibrate::{HOST_SPEED_ENV, HostCpu, MEASURE_NOW, SpeedSource};

use crate::units::{Bytes, Rate};

/// The `apiVersion` every edgesim document carries.
pub const API_VERSION: &str = "edgesim.dev/v1alpha1";
/// The `kind` of a hardware profile document.
pub const KIND: &str = "HardwareProfile";
/// Environment variable naming extra profile directories (`:`-separated, like `PATH`).
pub const PROFILES_ENV: &str = "EDGESIM_PROFILES";

/// CFS period used for every node, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts, in microseconds.
pub const MIN_CPU_QUOTA_US: u64 = 1_000;

/// A failure to read, parse, validate or find a profile, or to calibrate the host.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{file}: invalid profile:\n  - {}", problems.join("\n  - "))]
    Invalid { file: String, problems: Vec<String> },
    #[error("reading {path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown hardware profile `{name}`{}", hint.as_ref().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default())]
    Unknown { name: String, hint: Option<String> },
    #[error("hardware profile `{name}` is defined twice: in {first} and in {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
    #[error("built-in hardware profiles are broken (a build defect): {0}")]
    BuiltIn(String),
    #[error("running {program} for calibration: {source}")]
    BenchmarkSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("calibration benchmark {program}: {detail}")]
    Benchmark { program: String, detail: String },
    #[error("{var}={value}: {detail}")]
    Env {
        var: &'static str,
        value: String,
        detail: String,
    },
    #[error("reading calibration {path}: {detail}", path = path.display())]
    CalibrationRead { path: PathBuf, detail: String },
    #[error("writing calibration {path}: {source}", path = path.display())]
    CalibrationWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A hardware profile document (`kind: HardwareProfile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HardwareProfile {
    /// Always `edgesim.dev/v1alpha1`.
    pub api_version: String,
    /// Always `HardwareProfile`.
    pub kind: String,
    pub metadata: ProfileMetadata,
    pub spec: ProfileSpec,
}

/// Name and description of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileMetadata {
    /// Lower-case letters, digits and `-`; scenarios refer to the profile by this name.
    pub name: String,
    /// One line for humans (`edgesim profiles`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// What a board is: the part of a profile that scenarios may also write inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileSpec {
    /// CPU architecture of the board.
    pub arch: Arch,
    pub cpu: CpuSpec,
    pub memory: MemorySpec,
    /// Maximum number of processes and threads (`pids.max`); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Boot/data storage: block-IO throttles for the (planned) `docker` target (see
    /// [`storage_throttle`]); the `netns` target does not throttle block IO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Network interface (informational: links are shaped by the scenario's sites and links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// On-board GPU, if any (advertised to Kubernetes on the `kind` target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// Power modes of the board (Jetson `nvpmodel`), where they can be cited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_modes: Vec<PowerMode>,
    /// What the board's stock OS kernel offers.
    #[serde(default)]
    pub kernel: KernelSpec,
}

/// CPU architecture, in Go/Kubernetes notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The architecture this edgesim runs on.
    pub fn host() -> Arch {
        if std::env::consts::ARCH == "aarch64" {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// The board's CPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CpuSpec {
    /// Core model, e.g. `Cortex-A76`.
    pub model: String,
    /// Number of cores the OS sees.
    pub cores: u32,
    /// Maximum sustained clock, in GHz.
    #[serde(rename = "clockGHz")]
    pub clock_ghz: f64,
    /// Single-core speed relative to one Raspberry Pi 5 Cortex-A76 core at 2.4 GHz (= 1.0),
    /// from the 7-Zip single-thread benchmark (see the profile's comments for the figures).
    pub relative_speed: f64,
}

/// The board's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemorySpec {
    /// Installed memory.
    pub total: Bytes,
    /// What firmware, kernel and base OS keep; workloads get `total - reserved`.
    #[serde(default)]
    pub reserved: Bytes,
}

/// Boot/data storage and its speed.
///
/// Every figure is optional; the ones given become block-IO throttles on the (planned)
/// `docker` target ([`storage_throttle`]), the ones left out leave that direction unthrottled.
/// The `netns` target throttles none of them. The profile's comments say for each figure whether it is a
/// spec minimum, a datasheet figure or an estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageSpec {
    pub kind: StorageKind,
    /// Sequential read bandwidth, MB/s (1 MB = 10^6 bytes), between 0.001 and 100000.
    #[serde(default, rename = "readMBps", skip_serializing_if = "Option::is_none")]
    pub read_mbps: Option<f64>,
    /// Sequential write bandwidth, MB/s (1 MB = 10^6 bytes), between 0.001 and 100000.
    #[serde(default, rename = "writeMBps", skip_serializing_if = "Option::is_none")]
    pub write_mbps: Option<f64>,
    /// Random 4 KiB read operations per second, between 1 and 10000000.
    #[serde(
        default,
        deserialize_with = "read_iops",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_iops: Option<u64>,
    /// Random 4 KiB write operations per second, between 1 and 10000000.
    #[serde(
        default,
        deserialize_with = "write_iops",
        skip_serializing_if = "Option::is_none"
    )]
    pub write_iops: Option<u64>,
}

// A plain `u64` would reject `-5` or `1.5` with a bare "invalid u64"; reading any number first
// lets the error name the field. The range is checked by `validate` with the other figures.
fn iops<'de, D: serde::Deserializer<'de>>(d: D, field: &str) -> Result<Option<u64>, D::Error> {
    match Option::<f64>::deserialize(d)? {
        None => Ok(None),
        // `as` saturates; anything that large is then reported as implausible by `validate`.
        Some(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 => Ok(Some(v as u64)),
        Some(v) => Err(serde::de::Error::custom(format!(
            "storage.{field}: {v} must be a whole number > 0 (random 4K operations per second)"
        ))),
    }
}

fn read_iops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    iops(d, "readIops")
}

fn write_iops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    iops(d, "writeIops")
}

/// Bandwidth limits of `storage.readMBps` / `writeMBps`, in MB/s. Below the minimum a throttle
/// rounds to nothing (and 0 means "no limit" to the kernel); above the maximum no single block
/// device (a PCIe 5.0 x16 link moves ~64 GB/s) is described.
pub const STORAGE_MBPS_RANGE: (f64, f64) = (0.001, 100_000.0);
/// Largest `storage.readIops` / `writeIops`: the fastest single NVMe devices reach a few million.
pub const MAX_STORAGE_IOPS: u64 = 10_000_000;

/// Kind of storage device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKind {
    Microsd,
    Emmc,
    Nvme,
    Ssd,
    NetworkDisk,
}

/// The board's network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Line rate of the wired interface, e.g. `1gbit`.
    pub nic: Rate,
}

/// An on-board GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GpuSpec {
    /// e.g. `nvidia`.
    pub vendor: String,
    /// Architecture or model, e.g. `Ampere`.
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_cores: Option<u32>,
}

/// One power mode of the board (Jetson `nvpmodel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PowerMode {
    /// Mode name as `nvpmodel -q` prints it, e.g. `15W` or `MAXN`.
    pub name: String,
    /// Power budget of the mode; absent for unconstrained modes such as `MAXN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<f64>,
    /// CPU cores online in this mode, where cited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_cores: Option<u32>,
    /// CPU clock cap in this mode, in GHz, where cited.
    #[serde(
        default,
        rename = "maxCpuClockGHz",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cpu_clock_ghz: Option<f64>,
    /// Whether the stock image boots into this mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// What the board's stock OS kernel offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelSpec {
    /// Whether the stock kernel ships `sch_netem` (Raspberry Pi OS: yes; stock L4T: no).
    /// The `device` target uses the userspace emulator where it is missing.
    #[serde(default = "yes")]
    pub netem: bool,
}

fn yes() -> bool {
    true
}

impl Default for KernelSpec {
    fn default() -> Self {
        KernelSpec { netem: true }
    }
}

fn finite_positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// Whether `name` is a DNS-1123 label (what Kubernetes accepts as a name segment).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl ProfileSpec {
    /// Checks the values serde cannot: every problem found, each prefixed with its field.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        let cpu = &self.cpu;
        if cpu.model.trim().is_empty() {
            p.push("cpu.model: must not be empty".to_string());
        }
        if cpu.cores == 0 {
            p.push("cpu.cores: must be at least 1".to_string());
        } else if cpu.cores > 4096 {
            p.push(format!("cpu.cores: {} is implausibly many", cpu.cores));
        }
        if !finite_positive(cpu.clock_ghz) || cpu.clock_ghz > 10.0 {
            p.push(format!(
                "cpu.clockGHz: {} is not a clock in GHz (0 < clockGHz <= 10)",
                cpu.clock_ghz
            ));
        }
        if !finite_positive(cpu.relative_speed) || cpu.relative_speed > 100.0 {
            p.push(format!(
                "cpu.relativeSpeed: {} must be > 0 (1.0 = one Raspberry Pi 5 Cortex-A76 core at 2.4 GHz)",
                cpu.relative_speed
            ));
        }
        let mem = &self.memory;
        if mem.total.0 == 0 {
            p.push("memory.total: must be more than 0".to_string());
        } else if mem.reserved >= mem.total {
            p.push(format!(
                "memory.reserved: {} must be less than memory.total ({})",
                mem.reserved, mem.total
            ));
        } else if mem.total.0 - mem.reserved.0 < 16 << 20 {
            p.push(format!(
                "memory: total - reserved = {} leaves workloads less than 16Mi",
                Bytes(mem.total.0 - mem.reserved.0)
            ));
        }
        if let Some(pids) = self.pids
            && pids < 8
        {
            p.push(format!(
                "pids: {pids} is too few to start a workload (at least 8)"
            ));
        }
        if let Some(s) = &self.storage {
            let (min_mbps, max_mbps) = STORAGE_MBPS_RANGE;
            for (field, v) in [("readMBps", s.read_mbps), ("writeMBps", s.write_mbps)] {
                let Some(v) = v else { continue };
                if !finite_positive(v) {
                    p.push(format!(
                        "storage.{field}: {v} must be > 0 (MB/s, 1 MB = 10^6 bytes)"
                    ));
                } else if v < min_mbps {
                    p.push(format!(
                        "storage.{field}: {v} MB/s is too little to throttle to (at least {min_mbps} MB/s = 1 kB/s)"
                    ));
                } else if v > max_mbps {
                    p.push(format!(
                        "storage.{field}: {v} MB/s is implausibly fast for one device (at most {max_mbps} MB/s)"
                    ));
                }
            }
            for (field, v) in [("readIops", s.read_iops), ("writeIops", s.write_iops)] {
                match v {
                    Some(0) => p.push(format!(
                        "storage.{field}: 0 must be > 0 (random 4K operations per second)"
                    )),
                    Some(v) if v > MAX_STORAGE_IOPS => p.push(format!(
                        "storage.{field}: {v} is implausibly many for one device (at most {MAX_STORAGE_IOPS})"
                    )),
                    _ => {}
                }
            }
        }
        if let Some(g) = &self.gpu {
            if g.vendor.trim().is_empty() {
                p.push("gpu.vendor: must not be empty".to_string());
            }
            if g.model.trim().is_empty() {
                p.push("gpu.model: must not be empty".to_string());
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut defaults = 0;
        for (i, m) in self.power_modes.iter().enumerate() {
            let at = format!("powerModes[{i}]");
            if m.name.trim().is_empty() {
                p.push(format!("{at}.name: must not be empty"));
            } else if !seen.insert(m.name.as_str()) {
                p.push(format!("{at}.name: `{}` appears twice", m.name));
            }
            if let Some(w) = m.watts
                && !finite_positive(w)
            {
                p.push(format!("{at}.watts: {w} must be > 0"));
            }
            if let Some(c) = m.online_cores
                && (c == 0 || c > cpu.cores)
            {
                p.push(format!(
                    "{at}.onlineCores: {c} must be between 1 and cpu.cores ({})",
                    cpu.cores
                ));
            }
            if let Some(c) = m.max_cpu_clock_ghz
                && (!finite_positive(c) || c > cpu.clock_ghz + 1e-9)
            {
                p.push(format!(
                    "{at}.maxCpuClockGHz: {c} must be > 0 and at most cpu.clockGHz ({})",
                    cpu.clock_ghz
                ));
            }
            defaults += usize::from(m.default);
        }
        if defaults > 1 {
            p.push("powerModes: at most one mode may be the default".to_string());
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    /// Memory left for workloads: `total - reserved`.
    pub fn workload_memory(&self) -> Bytes {
        Bytes(self.memory.total.0.saturating_sub(self.memory.reserved.0))
    }
}

impl HardwareProfile {
    /// Checks the envelope (apiVersion, kind, name) and the spec; spec problems are prefixed
    /// with `spec.`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        if self.api_version != API_VERSION {
            p.push(format!(
                "apiVersion: `{}` is not supported (expected `{API_VERSION}`)",
                self.api_version
            ));
        }
        if self.kind != KIND {
            p.push(format!("kind: `{}` (expected `{KIND}`)", self.kind));
        }
        if !is_valid_name(&self.metadata.name) {
            p.push(format!(
                "metadata.name: `{}` must be lower-case letters, digits and `-` (at most 63)",
                self.metadata.name
            ));
        }
        if let Err(spec) = self.spec.validate() {
            p.extend(spec.into_iter().map(|s| format!("spec.{s}")));
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }
}

/// Parses and validates one profile document; `file` names it in errors.
pub fn parse_profile(text: &str, file: &str) -> Result<HardwareProfile, ProfileError> {
    if crate::scenario::validate::is_blank_yaml(text) {
        return Err(ProfileError::Parse {
            file: file.to_string(),
            line: 1,
            column: 1,
            message: "the file is empty: a profile file holds one HardwareProfile document".into(),
        });
    }
    let profile: HardwareProfile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column, message) = crate::scenario::validate::yaml_place(&e, file, "profile");
        ProfileError::Parse {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })?;
    profile
        .validate()
        .map_err(|problems| ProfileError::Invalid {
            file: file.to_string(),
            problems,
        })?;
    Ok(profile)
}

/// Where a profile in a [`ProfileSet`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Shipped in `hardware-profiles/` and embedded in the binary.
    BuiltIn,
    /// Loaded from a user directory.
    File(PathBuf),
    /// Defined inline in a scenario.
    Inline,
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSource::BuiltIn => f.write_str("built-in"),
            ProfileSource::File(p) => write!(f, "{}", p.display()),
            ProfileSource::Inline => f.write_str("inline"),
        }
    }
}

/// One profile of a [`ProfileSet`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEntry {
    pub spec: ProfileSpec,
    pub description: String,
    pub source: ProfileSource,
}

/// The profiles a run can refer to by name: the built-in ones, then user directories (which
/// may override a built-in profile of the same name), then inline definitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSet {
    profiles: BTreeMap<String, ProfileEntry>,
}

macro_rules! builtin_file {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../hardware-profiles/",
                $name
            )),
        )
    };
}

/// The shipped profile files, embedded at compile time: (file name, contents).
/// Adding a board means adding its file here and in `hardware-profiles/`; the unit tests check
/// that the two lists agree.
pub const BUILTIN_FILES: &[(&str, &str)] = &[
    builtin_file!("cloud-large.yaml"),
    builtin_file!("cloud-small.yaml"),
    builtin_file!("jetson-agx-orin-64gb.yaml"),
    builtin_file!("jetson-orin-nx-16gb.yaml"),
    builtin_file!("jetson-orin-nx-8gb.yaml"),
    builtin_file!("raspberry-pi-5-16gb.yaml"),
    builtin_file!("raspberry-pi-5-4gb.yaml"),
    builtin_file!("raspberry-pi-5-8gb.yaml"),
];

static BUILTIN: OnceLock<Result<ProfileSet, String>> = OnceLock::new();

impl ProfileSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in profiles, parsed on first use.
    pub fn builtin() -> Result<&'static ProfileSet, ProfileError> {
        BUILTIN
            .get_or_init(|| {
                let mut set = ProfileSet::new();
                for (file, text) in BUILTIN_FILES {
                    let label = format!("hardware-profiles/{file}");
                    let profile = parse_profile(text, &label).map_err(|e| e.to_string())?;
                    set.add(profile, ProfileSource::BuiltIn, &label)
                        .map_err(|e| e.to_string())?;
                }
                Ok(set)
            })
            .as_ref()
            .map_err(|e| ProfileError::BuiltIn(e.clone()))
    }

    /// The built-in profiles plus every directory in `dirs`, in order (later ones override).
    pub fn load(dirs: &[PathBuf]) -> Result<ProfileSet, ProfileError> {
        let mut set = ProfileSet::builtin()?.clone();
        for d in dirs {
            set.load_dir(d)?;
        }
        Ok(set)
    }

    /// The directories named by `EDGESIM_PROFILES` (`:`-separated), if set.
    pub fn env_dirs() -> Vec<PathBuf> {
        std::env::var_os(PROFILES_ENV)
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Loads every `*.yaml`/`*.yml` file of `dir` (not recursive), in name order. A profile
    /// overrides a built-in one of the same name; two files of `dir` defining the same name is
    /// an error. Returns how many profiles were loaded.
    pub fn load_dir(&mut self, dir: &Path) -> Result<usize, ProfileError> {
        let read_err = |source| ProfileError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.path()).map_err(read_err))
            .collect::<Result<_, _>>()?;
        files.retain(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        });
        files.sort();
        let mut from_here: BTreeMap<String, String> = BTreeMap::new();
        for path in &files {
            let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            let label = path.display().to_string();
            let profile = parse_profile(&text, &label)?;
            let name = profile.metadata.name.clone();
            if let Some(first) = from_here.insert(name.clone(), label.clone()) {
                return Err(ProfileError::Duplicate {
                    name,
                    first,
                    second: label,
                });
            }
            self.profiles.insert(
                name,
                ProfileEntry {
                    spec: profile.spec,
                    description: profile.metadata.description,
                    source: ProfileSource::File(path.clone()),
                },
            );
        }
        Ok(files.len())
    }

    fn add(
        &mut self,
        profile: HardwareProfile,
        source: ProfileSource,
        label: &str,
    ) -> Result<(), ProfileError> {
        let name = profile.metadata.name;
        if let Some(prev) = self.profiles.get(&name) {
            return Err(ProfileError::Duplicate {
                name,
                first: prev.source.to_string(),
                second: label.to_string(),
            });
        }
        self.profiles.insert(
            name,
            ProfileEntry {
                spec: profile.spec,
                description: profile.metadata.description,
                source,
            },
        );
        Ok(())
    }

    /// Adds (or replaces) an inline profile, e.g. from a scenario's `spec.profiles`. The caller
    /// validates `spec` first, where it can report the scenario's file and line.
    pub fn insert(&mut self, name: impl Into<String>, spec: ProfileSpec) {
        self.profiles.insert(
            name.into(),
            ProfileEntry {
                spec,
                description: String::new(),
                source: ProfileSource::Inline,
            },
        );
    }

    /// The profile called `name`.
    pub fn get(&self, name: &str) -> Option<&ProfileSpec> {
        self.profiles.get(name).map(|e| &e.spec)
    }

    /// The profile called `name` with its description and source.
    pub fn entry(&self, name: &str) -> Option<&ProfileEntry> {
        self.profiles.get(name)
    }

    /// Like [`get`](Self::get), but an unknown name is an error that suggests the closest
    /// known one.
    pub fn lookup(&self, name: &str) -> Result<&ProfileSpec, ProfileError> {
        self.get(name).ok_or_else(|| ProfileError::Unknown {
            name: name.to_string(),
            hint: self
                .profiles
                .keys()
                .map(|k| (strsim::jaro_winkler(name, k), k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| k.clone()),
        })
    }

    /// All profiles, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ProfileEntry)> {
        self.profiles.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Profile names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

/// The limits a node is held to on this host (defined with the cgroup code that enforces
/// them, as plain values; computed here from profiles).
pub use crate::host::cgroup::NodeLimits;

/// The limits a node of profile `spec` gets on `host`.
///
/// CPU: `cores × spec.relativeSpeed / host.speed_per_core` host cores, as a quota over
/// [`CPU_PERIOD_US`], unlimited once that reaches the host's online CPUs (a host slower than
/// the board cannot be made faster), on at most `cores` host CPUs (`max_cpus`, when the host
/// has more; [`NodeLimits::pinned`] picks which). Memory: `total − reserved`. PIDs:
/// `spec.pids`.
///
/// What this models: a board's aggregate CPU throughput, and how many threads can run at
/// once. What it does not: a quota is time, not speed, so one thread on a node whose quota is
/// below one host CPU runs at host speed in bursts and gets the node's whole quota (a 4-core
/// board at a quarter of a fast host core each gives one thread the work of four board cores);
/// per-thread latency, memory bandwidth, caches and the GPU are the host's.
pub fn limits(spec: &ProfileSpec, host: &HostCpu) -> NodeLimits {
    NodeLimits {
        cpu_quota_us: None,
        cpu_period_us: CPU_PERIOD_US,
        effective_cores: f64::from(host.online_cpus.max(1)),
        memory_bytes: Some(spec.workload_memory().0),
        pids_max: spec.pids,
        max_cpus: None,
        cpus: None,
    }
    .with_cpu_cores(f64::from(spec.cpu.cores), spec, host)
}

impl NodeLimits {
    /// No limits at all, on a host with `online_cpus` CPUs.
    pub fn unlimited(online_cpus: u32) -> Self {
        NodeLimits {
            cpu_quota_us: None,
            cpu_period_us: CPU_PERIOD_US,
            effective_cores: f64::from(online_cpus.max(1)),
            memory_bytes: None,
            pids_max: None,
            max_cpus: None,
            cpus: None,
        }
    }

    /// The same limits with the CPU set to `profile_cores` cores of the board described by
    /// `spec` (a timeline `cpu: {cores: N}` action), converted to host cores as [`limits`]
    /// does. Fractions are allowed; the quota never goes below [`MIN_CPU_QUOTA_US`].
    pub fn with_cpu_cores(
        mut self,
        profile_cores: f64,
        spec: &ProfileSpec,
        host: &HostCpu,
    ) -> Self {
        let host_cores = if profile_cores.is_finite() && profile_cores > 0.0 {
            profile_cores * spec.cpu.relative_speed / host.speed_per_core
        } else {
            0.0
        };
        let online = f64::from(host.online_cpus.max(1));
        // Threads that can run at once: the board's cores (a fraction of a core still runs
        // on one CPU), when the host has more CPUs than that.
        let board = if profile_cores.is_finite() && profile_cores > 0.0 {
            profile_cores.ceil() as u32
        } else {
            1
        };
        self.max_cpus = (board < host.online_cpus).then_some(board.max(1));
        self.cpus = None;
        if host_cores >= online {
            self.cpu_quota_us = None;
            self.effective_cores = online;
        } else {
            let quota =
                ((host_cores * self.cpu_period_us as f64).round() as u64).max(MIN_CPU_QUOTA_US);
            self.cpu_quota_us = Some(quota);
            self.effective_cores = quota as f64 / self.cpu_period_us as f64;
        }
        self
    }

    /// The same limits pinned to `max_cpus` of the `allowed` host CPUs, chosen for node
    /// number `node` of the run: consecutive CPUs starting at `node × max_cpus` (wrapping),
    /// so the nodes of a run spread over the host instead of sharing its first CPUs. No pinning
    /// when `max_cpus` is unset or not below the number of allowed CPUs.
    pub fn pinned(mut self, node: usize, allowed: &[u32]) -> Self {
        self.cpus = match self.max_cpus.map(|k| k as usize) {
            Some(k) if k > 0 && k < allowed.len() => {
                let start = node.wrapping_mul(k) % allowed.len();
                let set: Vec<u32> = (0..k)
                    .map(|i| allowed[(start + i) % allowed.len()])
                    .collect();
                Some(crate::host::cgroup::cpu_list(&set))
            }
            _ => None,
        };
        self
    }

    /// The same limits with the memory limit replaced (`None` = unlimited).
    pub fn with_memory(mut self, bytes: Option<u64>) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// The same limits with the task limit replaced (`None` = unlimited).
    pub fn with_pids(mut self, pids: Option<u64>) -> Self {
        self.pids_max = pids;
        self
    }
}

/// The block-IO throttles a node of some profile gets: what the `docker` target (planned)
/// enforces with `BlkioDeviceReadBps`, `BlkioDeviceWriteBps`, `BlkioDeviceReadIOps` and
/// `BlkioDeviceWriteIOps`. The `netns` target enforces none of it.
///
/// `None` in a field leaves that direction unthrottled (the docker target then sets no entry);
/// a value is never 0, which cgroup v1's `blkio.throttle.*` reads as "remove the limit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageThrottle {
    /// Read bandwidth, bytes per second.
    pub read_bytes_per_sec: Option<u64>,
    /// Write bandwidth, bytes per second.
    pub write_bytes_per_sec: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

/// The block-IO throttles for a node of profile `spec`, or `None` when the profile gives no
/// storage figure (no `storage` section, or one with only `kind`).
///
/// `readMBps`/`writeMBps` become bytes per second (× 10^6, rounded, at least 1); `readIops`/
/// `writeIops` are taken as they are. Pure: it reads nothing but `spec`.
///
/// Assumptions of the enforcement (what the `docker` target must know):
/// - Docker throttles per block device, so the limits hold only for IO to the device the
///   target names (the one under the container's writable layer and volumes).
/// - Only IO that reaches the block layer is throttled: page-cache hits are not, and under
///   cgroup v1 buffered writes escape the limit (writeback is not charged to the container);
///   cgroup v2 charges writeback, so there the write limits hold for buffered writes too.
/// - The kernel counts every request as one operation whatever its size, so the IOPS figure
///   (measured with random 4K requests) caps sequential IO too. With the shipped figures the
///   bandwidth limit is met first by requests above ~64 KB, which merged sequential IO is.
/// - A throttle only slows a node down: a host disk slower than the profile stays slower.
pub fn storage_throttle(spec: &ProfileSpec) -> Option<StorageThrottle> {
    let s = spec.storage.as_ref()?;
    let bytes = |mbps: Option<f64>| {
        mbps.filter(|v| finite_positive(*v))
            .map(|v| ((v * 1e6).round() as u64).max(1))
    };
    let t = StorageThrottle {
        read_bytes_per_sec: bytes(s.read_mbps),
        write_bytes_per_sec: bytes(s.write_mbps),
        read_iops: s.read_iops.filter(|&v| v > 0),
        write_iops: s.write_iops.filter(|&v| v > 0),
    };
    (t != StorageThrottle::default()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn host(speed: f64, cpus: u32) -> HostCpu {
        HostCpu {
            speed_per_core: speed,
            online_cpus: cpus,
            source: SpeedSource::Env,
        }
    }

    fn pi5() -> ProfileSpec {
        ProfileSet::builtin()
            .unwrap()
            .get("raspberry-pi-5-8gb")
            .unwrap()
            .clone()
    }

    #[test]
    fn empty_profile_files_and_second_documents_say_so() {
        for text in ["", "# to do\n", "---\n"] {
            let e = parse_profile(text, "p.yaml").unwrap_err().to_string();
            assert!(e.contains("the file is empty"), "{text:?}: {e}");
        }
        let (_, one) = BUILTIN_FILES[0];
        let e = parse_profile(&format!("{one}\n---\n{one}"), "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("one profile per file"), "{e}");
        assert!(!e.contains("from_str_multiple"), "{e}");
    }

    #[test]
    fn every_shipped_profile_parses_validates_and_is_named_after_its_file() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hardware-profiles");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = BUILTIN_FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            on_disk, embedded,
            "BUILTIN_FILES must list every file in {dir:?}"
        );
        for (file, text) in BUILTIN_FILES {
            let p = parse_profile(text, file).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{}.yaml", p.metadata.name), *file);
            assert!(!p.metadata.description.is_empty(), "{file}: no description");
            assert!(
                text.contains("Sources"),
                "{file}: the header comment must cite its sources"
            );
        }
        let set = ProfileSet::builtin().unwrap();
        assert_eq!(set.len(), BUILTIN_FILES.len());
        for name in [
            "raspberry-pi-5-4gb",
            "raspberry-pi-5-8gb",
            "raspberry-pi-5-16gb",
            "jetson-orin-nx-8gb",
            "jetson-orin-nx-16gb",
            "jetson-agx-orin-64gb",
            "cloud-small",
            "cloud-large",
        ] {
            assert!(set.get(name).is_some(), "missing {name}");
        }
    }

    #[test]
    fn shipped_profiles_match_the_cited_facts() {
        let set = ProfileSet::builtin().unwrap();
        let pi = set.get("raspberry-pi-5-8gb").unwrap();
        assert_eq!(
            (pi.arch, pi.cpu.cores, pi.cpu.clock_ghz),
            (Arch::Arm64, 4, 2.4)
        );
        assert_eq!(pi.cpu.relative_speed, 1.0, "the reference core");
        assert_eq!(pi.memory.total, Bytes(8 << 30));
        assert!(pi.kernel.netem);
        let nx16 = set.get("jetson-orin-nx-16gb").unwrap();
        assert_eq!(nx16.cpu.cores, 8);
        let gpu = nx16.gpu.as_ref().unwrap();
        assert_eq!((gpu.cuda_cores, gpu.tensor_cores), (Some(1024), Some(32)));
        assert!(!nx16.kernel.netem, "stock L4T ships no sch_netem");
        assert_eq!(set.get("jetson-orin-nx-8gb").unwrap().cpu.cores, 6);
        let agx = set.get("jetson-agx-orin-64gb").unwrap();
        assert_eq!(agx.cpu.cores, 12);
        let gpu = agx.gpu.as_ref().unwrap();
        assert_eq!((gpu.cuda_cores, gpu.tensor_cores), (Some(2048), Some(64)));
        assert_eq!(set.get("cloud-small").unwrap().arch, Arch::Amd64);
    }

    #[test]
    fn every_shipped_profile_has_all_four_storage_figures() {
        for (name, e) in ProfileSet::builtin().unwrap().iter() {
            let s = e
                .spec
                .storage
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no storage"));
            assert!(
                s.read_mbps.is_some()
                    && s.write_mbps.is_some()
                    && s.read_iops.is_some()
                    && s.write_iops.is_some(),
                "{name}: storage lacks a figure: {s:?}"
            );
            let t = storage_throttle(&e.spec).unwrap();
            assert!(
                t.read_bytes_per_sec.is_some() && t.write_iops.is_some(),
                "{name}: {t:?}"
            );
        }
    }

    #[test]
    fn storage_throttle_turns_the_shipped_figures_into_bytes_and_iops() {
        let set = ProfileSet::builtin().unwrap();
        // A2 microSD on a Pi 5: 85 / 30 MB/s, 5000 / 2000 IOPS.
        assert_eq!(
            storage_throttle(set.get("raspberry-pi-5-8gb").unwrap()),
            Some(StorageThrottle {
                read_bytes_per_sec: Some(85_000_000),
                write_bytes_per_sec: Some(30_000_000),
                read_iops: Some(5000),
                write_iops: Some(2000),
            })
        );
        // AWS gp3 baseline: 125 MiB/s each way, 3000 IOPS.
        assert_eq!(
            storage_throttle(set.get("cloud-small").unwrap()),
            Some(StorageThrottle {
                read_bytes_per_sec: Some(125 << 20),
                write_bytes_per_sec: Some(125 << 20),
                read_iops: Some(3000),
                write_iops: Some(3000),
            })
        );
    }

    #[test]
    fn storage_throttle_is_none_without_figures_and_leaves_missing_ones_unthrottled() {
        let mut s = pi5();
        s.storage = None;
        assert_eq!(storage_throttle(&s), None, "no storage section");
        s.storage = Some(StorageSpec {
            kind: StorageKind::Nvme,
            read_mbps: None,
            write_mbps: None,
            read_iops: None,
            write_iops: None,
        });
        assert_eq!(storage_throttle(&s), None, "kind only");
        assert_eq!(s.validate(), Ok(()), "kind alone is still a valid section");

        s.storage = Some(StorageSpec {
            kind: StorageKind::Emmc,
            read_mbps: None,
            write_mbps: Some(0.0015), // 1.5 kB/s
            read_iops: Some(250),
            write_iops: None,
        });
        assert_eq!(
            storage_throttle(&s),
            Some(StorageThrottle {
                read_bytes_per_sec: None,
                write_bytes_per_sec: Some(1500),
                read_iops: Some(250),
                write_iops: None,
            })
        );
        // Fractions of a byte round, and the smallest valid figure still throttles (0 would
        // mean "no limit" to the kernel).
        s.storage.as_mut().unwrap().write_mbps = Some(12.3456789);
        assert_eq!(
            storage_throttle(&s).unwrap().write_bytes_per_sec,
            Some(12_345_679)
        );
        s.storage.as_mut().unwrap().write_mbps = Some(STORAGE_MBPS_RANGE.0);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            storage_throttle(&s).unwrap().write_bytes_per_sec,
            Some(1000)
        );
    }

    #[test]
    fn storage_validation_rejects_nonsense_naming_the_field() {
        let mut s = pi5();
        s.storage = Some(StorageSpec {
            kind: StorageKind::Microsd,
            read_mbps: Some(0.0),
            write_mbps: Some(-30.0),
            read_iops: Some(0),
            write_iops: Some(MAX_STORAGE_IOPS + 1),
        });
        let all = s.validate().unwrap_err().join("\n");
        for needle in [
            "storage.readMBps: 0 must be > 0",
            "storage.writeMBps: -30 must be > 0",
            "storage.readIops: 0 must be > 0",
            "storage.writeIops: 10000001 is implausibly many",
        ] {
            assert!(all.contains(needle), "{needle} not reported in:\n{all}");
        }

        let st = s.storage.as_mut().unwrap();
        st.read_mbps = Some(f64::NAN);
        st.write_mbps = Some(1e9);
        st.read_iops = Some(1);
        st.write_iops = Some(MAX_STORAGE_IOPS);
        let all = s.validate().unwrap_err().join("\n");
        assert!(all.contains("storage.readMBps: NaN must be > 0"), "{all}");
        assert!(
            all.contains("storage.writeMBps: 1000000000 MB/s is implausibly fast"),
            "{all}"
        );
        assert!(!all.contains("Iops"), "1 and the maximum are valid: {all}");

        let st = s.storage.as_mut().unwrap();
        st.read_mbps = Some(0.0001);
        st.write_mbps = Some(f64::INFINITY);
        let all = s.validate().unwrap_err().join("\n");
        assert!(
            all.contains("storage.readMBps: 0.0001 MB/s is too little"),
            "{all}"
        );
        assert!(all.contains("storage.writeMBps: inf must be > 0"), "{all}");
    }

    #[test]
    fn storage_in_a_profile_file_is_checked_with_file_and_field() {
        let doc = |storage: &str| {
            format!(
                "apiVersion: edgesim.dev/v1alpha1\nkind: HardwareProfile\nmetadata: {{name: x}}\nspec:\n  arch: arm64\n  cpu: {{model: A76, cores: 4, clockGHz: 2.4, relativeSpeed: 1.0}}\n  memory: {{total: 1Gi}}\n  storage: {storage}\n"
            )
        };
        let p = parse_profile(
            &doc("{kind: emmc, readMBps: 300, writeMBps: 100, readIops: 5000, writeIops: 2000}"),
            "x.yaml",
        )
        .unwrap();
        assert_eq!(p.spec.storage.as_ref().unwrap().write_iops, Some(2000));

        let ProfileError::Invalid { problems, .. } =
            parse_profile(&doc("{kind: emmc, readMBps: 0, writeIops: 0}"), "x.yaml").unwrap_err()
        else {
            panic!("expected validation errors")
        };
        let all = problems.join("\n");
        assert!(all.contains("spec.storage.readMBps"), "{all}");
        assert!(all.contains("spec.storage.writeIops"), "{all}");

        // A negative or fractional count is a parse error at its location, naming the field.
        for (storage, needle) in [
            (
                "{kind: emmc, readIops: -5}",
                "storage.readIops: -5 must be a whole number",
            ),
            (
                "{kind: emmc, writeIops: 1.5}",
                "storage.writeIops: 1.5 must be a whole number",
            ),
        ] {
            let e = parse_profile(&doc(storage), "x.yaml").unwrap_err();
            assert!(
                matches!(&e, ProfileError::Parse { line: 8, .. }),
                "expected a parse error on line 8, got {e}"
            );
            assert!(e.to_string().contains(needle), "{needle} not in {e}");
        }
        // A count too large for u64 saturates and is then reported as implausible.
        let e = parse_profile(&doc("{kind: emmc, readIops: 1e30}"), "x.yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("storage.readIops: 18446744073709551615 is implausibly many"),
            "{e}"
        );
        // Misspelt keys are rejected.
        let e = parse_profile(&doc("{kind: emmc, readIOPS: 5}"), "x.yaml").unwrap_err();
        assert!(e.to_string().contains("readIOPS"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_location() {
        let text = "apiVersion: edgesim.dev/v1alpha1\nkind: HardwareProfile\nmetadata: {name: x}\nspec:\n  arch: arm64\n  cpu: {model: A76, cores: 4, clockGHz: 2.4, relativeSpeed: 1.0, turbo: true}\n  memory: {total: 1Gi}\n";
        let e = parse_profile(text, "x.yaml").unwrap_err();
        match &e {
            ProfileError::Parse {
                file,
                line,
                message,
                ..
            } => {
                assert_eq!(file, "x.yaml");
                assert_eq!(*line, 6);
                assert!(message.contains("turbo"), "{message}");
            }
            other => panic!("expected a parse error, got {other}"),
        }
        assert!(e.to_string().starts_with("x.yaml:6:"), "{e}");
    }

    #[test]
    fn bad_units_and_semantic_errors_are_reported() {
        let text = "apiVersion: edgesim.dev/v1alpha1\nkind: HardwareProfile\nmetadata: {name: x}\nspec:\n  arch: arm64\n  cpu: {model: A76, cores: 4, clockGHz: 2.4, relativeSpeed: 1.0}\n  memory: {total: 8 gigs}\n";
        let e = parse_profile(text, "x.yaml").unwrap_err();
        assert!(e.to_string().contains("Gi"), "unit hint expected: {e}");

        let text = "apiVersion: edgesim.dev/v1\nkind: HardwareProfile\nmetadata: {name: X_Y}\nspec:\n  arch: arm64\n  cpu: {model: A76, cores: 0, clockGHz: 2.4, relativeSpeed: 0}\n  memory: {total: 1Gi, reserved: 2Gi}\n";
        let ProfileError::Invalid { problems, .. } = parse_profile(text, "x.yaml").unwrap_err()
        else {
            panic!("expected validation errors")
        };
        let all = problems.join("\n");
        for needle in [
            "apiVersion",
            "metadata.name",
            "spec.cpu.cores",
            "spec.cpu.relativeSpeed",
            "spec.memory.reserved",
        ] {
            assert!(all.contains(needle), "{needle} not reported in:\n{all}");
        }
    }

    #[test]
    fn spec_validate_checks_power_modes_and_pids() {
        let mut s = pi5();
        s.pids = Some(2);
        s.power_modes = vec![
            PowerMode {
                name: "10W".into(),
                watts: Some(10.0),
                online_cores: Some(9),
                max_cpu_clock_ghz: Some(3.0),
                default: true,
            },
            PowerMode {
                name: "10W".into(),
                watts: Some(-1.0),
                online_cores: None,
                max_cpu_clock_ghz: None,
                default: true,
            },
        ];
        let all = s.validate().unwrap_err().join("\n");
        for needle in [
            "pids",
            "powerModes[0].onlineCores",
            "powerModes[0].maxCpuClockGHz",
            "powerModes[1].name",
            "powerModes[1].watts",
            "at most one mode",
        ] {
            assert!(all.contains(needle), "{needle} not reported in:\n{all}");
        }
    }

    #[test]
    fn load_dir_adds_overrides_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let doc = |name: &str, cores: u32| {
            format!(
                "apiVersion: edgesim.dev/v1alpha1\nkind: HardwareProfile\nmetadata: {{name: {name}, description: d}}\nspec:\n  arch: arm64\n  cpu: {{model: A55, cores: {cores}, clockGHz: 1.8, relativeSpeed: 0.4}}\n  memory: {{total: 2Gi, reserved: 200Mi}}\n"
            )
        };
        std::fs::write(dir.path().join("tiny.yaml"), doc("tiny-board", 4)).unwrap();
        std::fs::write(dir.path().join("pi.yml"), doc("raspberry-pi-5-8gb", 2)).unwrap();
        std::fs::write(dir.path().join("README.md"), "not a profile").unwrap();
        let set = ProfileSet::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(set.get("tiny-board").unwrap().cpu.cores, 4);
        let pi = set.entry("raspberry-pi-5-8gb").unwrap();
        assert_eq!(
            pi.spec.cpu.cores, 2,
            "a user file overrides the built-in profile"
        );
        assert!(matches!(pi.source, ProfileSource::File(_)));
        assert_eq!(set.len(), BUILTIN_FILES.len() + 1);

        std::fs::write(dir.path().join("tiny2.yaml"), doc("tiny-board", 2)).unwrap();
        let e = ProfileSet::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(e, ProfileError::Duplicate { .. }), "{e}");

        std::fs::remove_file(dir.path().join("tiny2.yaml")).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "spec: [\n").unwrap();
        let e = ProfileSet::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(e.to_string().contains("broken.yaml:1:"), "{e}");
    }

    #[test]
    fn lookup_suggests_the_closest_name_and_insert_adds_inline_profiles() {
        let mut set = ProfileSet::builtin().unwrap().clone();
        let e = set.lookup("raspberry-pi-5-8g").unwrap_err();
        assert!(
            e.to_string().contains("did you mean `raspberry-pi-5-8gb`"),
            "{e}"
        );
        let mut s = pi5();
        s.cpu.cores = 1;
        set.insert("pi-one-core", s);
        assert_eq!(set.lookup("pi-one-core").unwrap().cpu.cores, 1);
        assert_eq!(
            set.entry("pi-one-core").unwrap().source,
            ProfileSource::Inline
        );
    }

    #[test]
    fn spec_round_trips_through_yaml_and_has_a_schema() {
        let s = pi5();
        let yaml = serde_saphyr::to_string(&s).unwrap();
        let back: ProfileSpec = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, s);
        let schema = serde_json::to_string(&schemars::schema_for!(HardwareProfile)).unwrap();
        for field in [
            "clockGHz",
            "relativeSpeed",
            "powerModes",
            "apiVersion",
            "readMBps",
            "readIops",
            "writeIops",
        ] {
            assert!(schema.contains(field), "schema lacks {field}");
        }
    }

    #[test]
    fn limits_scale_cpu_by_relative_speed_over_host_speed() {
        let pi = pi5(); // 4 cores at relativeSpeed 1.0, 8Gi total
        // A host core twice as fast as a Pi 5 core: 4 Pi cores = 2 host cores.
        let l = limits(&pi, &host(2.0, 16));
        assert_eq!(l.cpu_quota_us, Some(200_000));
        assert_eq!(l.cpu_period_us, 100_000);
        assert_eq!(l.effective_cores, 2.0);
        assert_eq!(
            l.memory_bytes,
            Some(pi.memory.total.0 - pi.memory.reserved.0)
        );
        assert_eq!(l.pids_max, pi.pids);

        // Same speed: one host core per board core.
        assert_eq!(limits(&pi, &host(1.0, 16)).cpu_quota_us, Some(400_000));
        // A 1.6x host: 4 / 1.6 = 2.5 cores.
        assert_eq!(limits(&pi, &host(1.6, 16)).cpu_quota_us, Some(250_000));

        // A slower board (relativeSpeed 0.5) on a 1.25x host: 4 * 0.5 / 1.25 = 1.6 cores.
        let mut slow = pi.clone();
        slow.cpu.relative_speed = 0.5;
        let l = limits(&slow, &host(1.25, 8));
        assert_eq!(l.cpu_quota_us, Some(160_000));
        assert!((l.effective_cores - 1.6).abs() < 1e-9);
    }

    #[test]
    fn nodes_run_on_at_most_their_boards_cores_spread_over_the_host() {
        let pi = pi5(); // 4 cores
        let allowed: Vec<u32> = (0..16).collect();
        let l = limits(&pi, &host(2.0, 16));
        assert_eq!(l.max_cpus, Some(4));
        // The quota stays aggregate throughput: 2 host cores' time over 4 pinned CPUs.
        assert_eq!(l.cpu_quota_us, Some(200_000));
        let sets: Vec<Option<String>> =
            (0..5).map(|n| l.clone().pinned(n, &allowed).cpus).collect();
        assert_eq!(
            sets,
            ["0-3", "4-7", "8-11", "12-15", "0-3"].map(|c| Some(c.to_string()))
        );
        // Wrapping over an affinity mask with holes.
        let odd = [1, 3, 5, 7, 9, 11];
        assert_eq!(l.clone().pinned(1, &odd).cpus.as_deref(), Some("1,3,9,11"));
        // A host with no more CPUs than the board has cores: no pinning.
        let two = limits(&pi, &host(1.0, 2));
        assert_eq!(two.max_cpus, None);
        assert_eq!(two.pinned(0, &[0, 1]).cpus, None);
        let four = limits(&pi, &host(1.0, 4));
        assert_eq!(four.max_cpus, None);
        // A timeline `cpu: {cores: 1.5}` runs on two CPUs, and must be pinned again.
        let l = limits(&pi, &host(1.0, 16))
            .pinned(0, &allowed)
            .with_cpu_cores(1.5, &pi, &host(1.0, 16));
        assert_eq!((l.max_cpus, l.cpus.as_deref()), (Some(2), None));
        assert_eq!(l.pinned(3, &allowed).cpus.as_deref(), Some("6-7"));
    }

    #[test]
    fn limits_cap_at_host_cpus_and_never_go_below_the_minimum_quota() {
        let mut big = pi5();
        big.cpu.cores = 12;
        // 12 board cores on a 2-CPU host of equal speed: capped, i.e. unlimited.
        let l = limits(&big, &host(1.0, 2));
        assert_eq!(l.cpu_quota_us, None);
        assert_eq!(l.effective_cores, 2.0);
        // Exactly the host's CPUs is also "no limit".
        let mut four = pi5();
        four.cpu.cores = 4;
        assert_eq!(limits(&four, &host(1.0, 4)).cpu_quota_us, None);
        // A host slower than the board cannot be made faster.
        assert_eq!(limits(&four, &host(0.5, 4)).cpu_quota_us, None);

        let l = limits(&pi5(), &host(1.0, 8)).with_cpu_cores(0.001, &pi5(), &host(1.0, 8));
        assert_eq!(l.cpu_quota_us, Some(MIN_CPU_QUOTA_US));
        let l = limits(&pi5(), &host(1.0, 8)).with_cpu_cores(0.0, &pi5(), &host(1.0, 8));
        assert_eq!(l.cpu_quota_us, Some(MIN_CPU_QUOTA_US));
    }

    #[test]
    fn live_changes_keep_the_other_limits() {
        let pi = pi5();
        let h = host(2.0, 16);
        let base = limits(&pi, &h);
        // `cpu: {cores: 1}`: one Pi core = half a host core here.
        let one = base.clone().with_cpu_cores(1.0, &pi, &h);
        assert_eq!(one.cpu_quota_us, Some(50_000));
        assert_eq!(one.memory_bytes, base.memory_bytes);
        assert_eq!(one.pids_max, base.pids_max);
        // `memory: {limit: 256Mi}`.
        let m = one.clone().with_memory(Some(256 << 20));
        assert_eq!(m.memory_bytes, Some(256 << 20));
        assert_eq!(m.cpu_quota_us, one.cpu_quota_us);
        assert_eq!(m.clone().with_pids(Some(64)).pids_max, Some(64));
        // Back to the profile's full CPU.
        assert_eq!(
            m.with_cpu_cores(4.0, &pi, &h).cpu_quota_us,
            base.cpu_quota_us
        );
    }
}
