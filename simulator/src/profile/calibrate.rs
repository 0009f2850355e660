//! Host CPU calibration: how fast one core of this host is, in the unit profiles use.
//!
//! # The method
//!
//! A node shaped like a board must get the board's compute, not the host's: a Raspberry Pi 5
//! node on a fast workstation should not finish its work three times sooner than a real Pi.
//! edgesim therefore limits each node to
//!
//! ```text
//! host cores = profile cores × profile relativeSpeed / host speedPerCore
//! CFS quota  = host cores × 100 ms per 100 ms period, capped at the host's online CPUs
//! CPUs       = at most profile cores of them (cpuset), where the host has more
//! ```
//!
//! where both speeds are *single-core* speeds relative to one **reference core: a Raspberry
//! Pi 5 Cortex-A76 at 2.4 GHz = 1.0**.
//!
//! **The benchmark** is 7-Zip's built-in LZMA benchmark run on one thread (`7z b -mmt1`). It is
//! integer, branch- and cache-heavy like much edge software, it runs unchanged on arm64 and
//! amd64, and single-thread results exist for every board edgesim ships, measured the same way
//! by sbc-bench (which runs `taskset -c N 7z b -mmt=1` and reports the `Tot:` rating):
//!
//! | board | clock | 7-Zip 1T rating (MIPS) | source | relativeSpeed |
//! |---|---|---|---|---|
//! | Raspberry Pi 5 (BCM2712, Cortex-A76) | 2.4 GHz | 3163 | sbc-bench `results/4HDw.txt` | **1.00** (reference) |
//! | Jetson AGX Orin (Cortex-A78AE) | 2.2 GHz | 3171 / 3187 / 3180 (cpu0/4/8) → 3180 | sbc-bench `results/4ax9.txt` | 1.01 |
//! | Jetson Orin Nano (Cortex-A78AE) | 1.51 GHz | 2153 | sbc-bench `results/4vy7.txt` | 0.68 |
//! | Jetson Orin NX (Cortex-A78AE) | 2.0 GHz | ≈ 2890 (AGX Orin's rating × 2.0/2.2; the Orin Nano's × 2.0/1.51 gives 2852) | derived | 0.91 |
//!
//! (sbc-bench's collected results: github.com/ThomasKaiser/sbc-bench, `Sorted-Results.md`,
//! section "7-zip MIPS single-threaded". No Orin NX result is published there, hence the
//! clock-scaled estimate from the two measured boards with the same core.)
//!
//! **The host** is measured by [`calibrate`] (the `edgesim calibrate` command): it runs the
//! same benchmark (`7zz`, `7z` or `7za`; Debian packages `7zip` or `p7zip-full`) and divides its
//! single-thread score by [`REFERENCE_SCORE`]. It reads the `Tot:` line's R/U column (the
//! rating per 100 % of CPU time) rather than the raw rating, because the CFS quota hands out
//! CPU *time*: what matters is the work a core does per CPU-second, and R/U is that figure even
//! when other processes share the host during calibration. On an idle board both columns agree
//! (3165 vs 3163 in the Pi 5 run above).
//!
//! The **built-in benchmark** ([`builtin_benchmark`]) does the work 7-Zip's benchmark times,
//! with a pure-Rust LZMA library (`lzma-rust2`, a port of XZ for Java; the kernel sits in the
//! `edgesim-cpubench` crate): it compresses 512 KiB of generated text with LZMA at 7-Zip's
//! benchmark settings (optimal parsing, binary-tree match finder, nice length 32; a 1 MiB
//! dictionary that holds the whole input) and decompresses the result eight times; [`BUILTIN_PASSES`] passes, keeping the best compression and the best
//! decompression rate. The rates are per CPU-second of the benchmark's thread
//! (`CLOCK_THREAD_CPUTIME_ID`), as 7-Zip's R/U column is per 100 % of CPU, so a pass that
//! shared its core with another process is not counted slower. Each half is converted to
//! 7-Zip MIPS with its own factor ([`BUILTIN_MIPS_PER_COMPRESS_MBPS`],
//! [`BUILTIN_MIPS_PER_DECOMPRESS_MBPS`]), fitted side by side against `7z b -mmt1` half by
//! half ([`BUILTIN_FIT`]), and the two are averaged as 7-Zip's `Tot:` line averages them.
//! Compression (match finding: cache and memory latency) and decompression (range decoding:
//! branch prediction) stress a core differently, so fitting each half separately tracks 7-Zip
//! across micro-architectures better than one factor could. The LZMA library is optimised in
//! debug builds too (workspace `Cargo.toml`), so debug and release builds give the same score.
//!
//! **Calibration happens without being asked.** [`HostCpu::detect`] takes, in order:
//! `EDGESIM_HOST_SPEED=<float>` (for CI machines of a known type, to experiment, and in
//! edgesim's own tests, which pin 1.0 in `.cargo/config.toml`), or `EDGESIM_HOST_SPEED=measure`
//! (measure now, for this run only: on shared cloud VMs whose speed drifts by more than a
//! CPU-bound verdict allows between one run and the next; edgesim's own tests of the shipped
//! scenarios with `cpuScale` use it); the calibration file
//! ([`DEFAULT_CALIBRATION_PATH`], or the file named by `EDGESIM_CALIBRATION`) when it was
//! measured on this host (same CPU model and CPU count); otherwise it measures now, with the
//! built-in benchmark (about two seconds, before a run creates anything, never during its
//! timeline), and writes the file atomically (a temporary file renamed into place, so runs
//! started together cannot corrupt it; the last one's measurement stays). That file is the
//! one piece of state edgesim keeps between runs. `edgesim calibrate --save` measures with
//! 7-Zip when it is installed (about 45 s) and stores that instead. Every report states the
//! speed and where it came from (`host_cpu` in `report.json`, a line of the summary).
//!
//! # Limits (what this does not model)
//!
//! - **Throughput, not latency.** A quota of 0.5 host cores gives a node half of every 100 ms
//!   period, at full host speed. A single-threaded request that takes 10 ms on the board may
//!   take 4 ms and then wait, or finish inside one period: averages over many periods match the
//!   board, single-request latency and jitter do not. Lowering the period makes bursts shorter
//!   but costs scheduler overhead.
//! - **One number per core.** Memory bandwidth, cache sizes, SIMD width, crypto extensions and
//!   the GPU differ between a board and the host; a workload bound by any of these scales
//!   differently from 7-Zip. The GPU of a Jetson is not emulated at all.
//! - **A host slower than the board cannot be made faster.** The quota is capped at the host's
//!   online CPUs; a 12-core AGX Orin node on a 4-core laptop gets the laptop.
//! - **Cores: pinned where the host has enough.** A node runs on at most its board's core
//!   count of host CPUs: `cpuset.cpus` (Docker's `CpusetCpus`) pins a Pi-shaped node on a
//!   16-CPU host to 4 of them, the nodes of a run spread over the host's CPUs in turn
//!   (`NodeLimits::pinned`), and `nproc` inside the node shows 4. Pinned sets of different
//!   nodes may overlap once the board cores of a run exceed the host's CPUs; the quotas still
//!   hold each node to its throughput. On a host with no more CPUs than the board has cores
//!   there is nothing to pin: at most that many of the node's threads run at once, and the run's
//!   notes say so.
//! - **A quota below one host CPU is shared by time, not by speed.** A single thread on a node
//!   whose quota is 0.5 host CPUs runs at host speed for half of each period and gets the
//!   node's whole quota: a 4-core board at a quarter of a host core each gives one thread the
//!   work of four board cores. Scenarios that compare boards must load every core (the
//!   `inference` workload runs one worker per board core by default).
//! - **Thermal throttling, power modes and DVFS** of the board are not modelled (the sbc-bench
//!   figures are for boards running at their maximum clock, not throttled).
//! - **Versions differ.** The board figures were measured with p7zip 16.02; current Debian ships
//!   7-Zip 22+ (`7zz`). The LZMA benchmark's rating is normalised and has stayed comparable
//!   across versions, but compiler and version differences of several percent remain.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ProfileError;

/// 7-Zip single-thread rating of the reference core (Raspberry Pi 5, Cortex-A76 at 2.4 GHz):
/// `Tot:` rating 3163 MIPS, p7zip 16.02, sbc-bench `results/4HDw.txt` (2023-09-28).
pub const REFERENCE_SCORE: f64 = 3163.0;

/// Host speed assumed when nothing was measured: as fast as the reference core.
pub const DEFAULT_SPEED_PER_CORE: f64 = 1.0;

/// Where `edgesim calibrate` stores its result unless `EDGESIM_CALIBRATION` names a file.
pub const DEFAULT_CALIBRATION_PATH: &str = "/var/lib/edgesim/calibration.json";
/// Environment variable naming the calibration file.
pub const CALIBRATION_ENV: &str = "EDGESIM_CALIBRATION";
/// Environment variable overriding the host's per-core speed (a float, 1.0 = reference core).
pub const HOST_SPEED_ENV: &str = "EDGESIM_HOST_SPEED";

/// The value of [`HOST_SPEED_ENV`] that asks for a fresh measurement (built-in benchmark)
/// before the run, used for that run only and not cached: for hosts whose speed drifts
/// (shared cloud VMs), where a verdict rests on CPU capacity.
pub const MEASURE_NOW: &str = "measure";

/// Version of the calibration file format.
pub const CALIBRATION_VERSION: u32 = 1;

/// Converts the built-in benchmark's compression rate (MB of input per CPU-second, best
/// pass) to 7-Zip's single-thread compression R/U rating (MIPS). Fitted side by side with
/// `7z b -mmt1`; see [`BUILTIN_FIT`].
pub const BUILTIN_MIPS_PER_COMPRESS_MBPS: f64 = 1570.0;
/// Converts the built-in benchmark's decompression rate (MB of output per CPU-second, best
/// pass) to 7-Zip's single-thread decompression R/U rating (MIPS). See [`BUILTIN_FIT`].
pub const BUILTIN_MIPS_PER_DECOMPRESS_MBPS: f64 = 55.4;

/// How the built-in benchmark's two conversion factors were measured (recorded in
/// calibration files that use them).
///
/// Measured on edgesim's CI machine (KVM guest, "Intel(R) Xeon(R) Processor", 2 vCPUs,
/// 2026-12-03) by alternating `7z b -mmt1` (p7zip 16.02, Debian `p7zip-full`, the version
/// the board figures were measured with) with the built-in benchmark, three rounds
/// (`compare_builtin_with_7zip`, debug build; release builds score the same):
///
/// | round | 7-Zip compress R/U | built-in compress MB/s | ratio | 7-Zip decompress R/U | built-in decompress MB/s | ratio |
/// |---|---|---|---|---|---|---|
/// | 1 | 2840 | 2.195 | 1294 | 2335 | 43.73 | 53.4 |
/// | 2 | 2728 | 1.489 | 1832 | 2166 | 35.59 | 60.9 |
/// | 3 | 3060 | 1.942 | 1576 | 2342 | 45.02 | 52.0 |
/// | factor | | | **1570** (mean) | | | **55.4** (mean) |
///
/// 7-Zip's own `Tot:` R/U varied 2447–2701 over those rounds on this shared machine; the
/// built-in compression rate varied more (best of five passes), which is why a calibration
/// keeps the best pass of [`BUILTIN_PASSES`].
pub const BUILTIN_FIT: &str = "x1570 MIPS per compress MB/s, x55.4 per decompress MB/s, \
     fitted against p7zip 16.02 b -mmt1 on an Intel Xeon KVM guest, 2026-12-03";

/// Which benchmark produced a calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// 7-Zip's LZMA benchmark, single-threaded.
    #[serde(rename = "7zip")]
    SevenZip,
    /// edgesim's built-in benchmark, converted with its two fitted factors ([`BUILTIN_FIT`]).
    #[serde(rename = "builtin")]
    Builtin,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::SevenZip => "7zip",
            Method::Builtin => "builtin",
        })
    }
}

/// Which benchmark [`calibrate`] should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MethodChoice {
    /// 7-Zip when it is installed, else the built-in benchmark.
    #[default]
    Auto,
    SevenZip,
    Builtin,
}

/// Options of [`calibrate`].
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub method: MethodChoice,
    /// The 7-Zip program to run; searched on `PATH` (`7zz`, `7z`, `7za`) when absent.
    pub seven_zip: Option<PathBuf>,
    /// How many 7-Zip runs (about 45 s each on a 3 GHz x86 core); the best is kept.
    pub seven_zip_runs: u32,
    /// The built-in benchmark runs [`BUILTIN_PASSES`] passes, and more until this long has
    /// passed; its best rates are kept.
    pub builtin_duration: Duration,
    /// Also run the built-in benchmark when 7-Zip is used, and record its score for comparison.
    pub cross_check: bool,
}

impl CalibrateOptions {
    /// What [`HostCpu::detect`] measures when no calibration exists: the built-in benchmark
    /// alone (7-Zip takes about 45 s; `edgesim calibrate --save` runs it when installed).
    pub fn automatic() -> Self {
        CalibrateOptions {
            method: MethodChoice::Builtin,
            builtin_duration: Duration::ZERO,
            cross_check: false,
            ..Default::default()
        }
    }
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            method: MethodChoice::Auto,
            seven_zip: None,
            seven_zip_runs: 1,
            builtin_duration: Duration::ZERO,
            cross_check: true,
        }
    }
}

/// What the host is, for the record (a calibration copied to another machine is suspicious).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    pub online_cpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

impl HostInfo {
    /// Why a calibration measured on `self` does not describe `now` (another CPU model or
    /// CPU count), or `None` when it does. A file that names no CPU model matches any.
    pub fn differs_from(&self, now: &HostInfo) -> Option<String> {
        if let (Some(then), Some(model)) = (&self.cpu_model, &now.cpu_model)
            && then != model
        {
            return Some(format!(
                "it was measured on a {then}, this host has a {model}"
            ));
        }
        if self.online_cpus != now.online_cpus {
            return Some(format!(
                "it was measured with {} CPUs, this host has {}",
                self.online_cpus, now.online_cpus
            ));
        }
        None
    }

    /// Describes this host.
    pub fn current() -> HostInfo {
        HostInfo {
            cpu_model: cpu_model(),
            online_cpus: online_cpus(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
        }
    }
}

/// The result of `edgesim calibrate`, as stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Calibration {
    /// [`CALIBRATION_VERSION`].
    pub version: u32,
    /// Single-core speed of this host relative to the reference core.
    pub speed_per_core: f64,
    /// The host's 7-Zip(-equivalent) single-thread score, MIPS.
    pub score: f64,
    /// The reference core's score the speed is relative to ([`REFERENCE_SCORE`]).
    pub reference_score: f64,
    pub method: Method,
    /// The program and version, or the built-in benchmark and its conversion note.
    pub tool: String,
    /// Every run's score, MIPS (the best one is `score`).
    #[serde(default)]
    pub samples: Vec<f64>,
    /// The built-in benchmark's score on the same host, when it ran as a cross-check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_score: Option<f64>,
    /// Seconds since the Unix epoch.
    pub measured_at_unix: u64,
    pub host: HostInfo,
}

/// Where the host's per-core speed came from.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeedSource {
    /// Measured (by `edgesim calibrate --save`, or automatically when no calibration of this
    /// host existed) and stored in `path`.
    Calibrated {
        path: PathBuf,
        method: Method,
        /// When it was measured, seconds since the Unix epoch.
        measured_at_unix: u64,
        /// Measured automatically by this process (no valid calibration of this host existed).
        auto: bool,
    },
    /// Measured by this process but not cached: other work (or the hypervisor: steal time)
    /// took `busy` of the host's CPU time meanwhile, so the figure may be low; the next run
    /// measures again.
    MeasuredBusy {
        method: Method,
        measured_at_unix: u64,
        busy: f64,
    },
    /// Measured by this process because `EDGESIM_HOST_SPEED=measure` asked for a fresh
    /// figure: neither read from nor written to the calibration file.
    MeasuredForRun {
        method: Method,
        measured_at_unix: u64,
        busy: f64,
    },
    /// Set by `EDGESIM_HOST_SPEED`.
    Env,
    /// Nothing measured: [`DEFAULT_SPEED_PER_CORE`] is assumed.
    Default,
}

impl std::fmt::Display for SpeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpeedSource::Calibrated {
                path,
                method,
                measured_at_unix,
                auto,
            } => {
                let when = i64::try_from(*measured_at_unix)
                    .ok()
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map_or_else(
                        || "?".to_string(),
                        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
                    );
                let how = if *auto { "measured now" } else { "measured" };
                write!(f, "calibrated ({method}, {how} {when}, {})", path.display())
            }
            SpeedSource::MeasuredBusy { method, busy, .. } => write!(
                f,
                "measured now ({method}) but not cached: {:.0} % of the host's CPU time went to other work meanwhile",
                busy * 100.0
            ),
            SpeedSource::MeasuredForRun { method, busy, .. } => write!(
                f,
                "measured now ({method}) for this run, as {HOST_SPEED_ENV}={MEASURE_NOW} asks ({:.0} % of the host's CPU time went to other work meanwhile)",
                busy * 100.0
            ),
            SpeedSource::Env => write!(f, "set by {HOST_SPEED_ENV}"),
            SpeedSource::Default => write!(
                f,
                "uncalibrated: assumed as fast as a Raspberry Pi 5 core (run `edgesim calibrate`)"
            ),
        }
    }
}

/// The host's CPU as the limits see it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCpu {
    /// Single-core speed relative to the reference core (Raspberry Pi 5 Cortex-A76 at 2.4 GHz).
    pub speed_per_core: f64,
    /// CPUs this process may run on (affinity and cgroup quota respected).
    pub online_cpus: u32,
    pub source: SpeedSource,
}

impl HostCpu {
    /// The host's speed for this process: `EDGESIM_HOST_SPEED`, else the calibration file
    /// when it was measured on this host (same CPU model and count), else measured now with
    /// the built-in benchmark (about two seconds, before any run starts) and cached in the
    /// calibration file for later runs. Decided once per process. A bad override or an
    /// unusable calibration is logged and the host taken as uncalibrated; use
    /// [`try_detect`](Self::try_detect) to treat it as an error.
    pub fn detect() -> HostCpu {
        static DETECTED: std::sync::OnceLock<HostCpu> = std::sync::OnceLock::new();
        DETECTED
            .get_or_init(|| {
                HostCpu::try_detect().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "ignoring the host speed setting; assuming the default");
                    HostCpu::uncalibrated(online_cpus())
                })
            })
            .clone()
    }

    /// Like [`detect`](Self::detect) (without its per-process cache), but a malformed
    /// override or calibration file, or a failed measurement, is an error.
    pub fn try_detect() -> Result<HostCpu, ProfileError> {
        let env = std::env::var(HOST_SPEED_ENV).ok();
        HostCpu::from_sources_or_measure(
            env.as_deref(),
            &calibration_path(),
            &HostInfo::current(),
            online_cpus(),
            || measure_on_a_quiet_host(|| calibrate(&CalibrateOptions::automatic())),
        )
    }

    /// [`from_sources`](Self::from_sources), measuring with `measure` (and caching the
    /// result at `calibration`) when no override is set and the file is missing or was
    /// measured on another host than `host`. A file that cannot be written is logged; the
    /// measurement is used anyway.
    pub fn from_sources_or_measure(
        env_speed: Option<&str>,
        calibration: &Path,
        host: &HostInfo,
        online_cpus: u32,
        measure: impl FnOnce() -> Result<(Calibration, f64), ProfileError>,
    ) -> Result<HostCpu, ProfileError> {
        if env_speed.is_some_and(|v| v.trim().eq_ignore_ascii_case(MEASURE_NOW)) {
            tracing::info!(
                "measuring this host's CPU speed for this run (built-in benchmark, about 2 s)"
            );
            let (cal, busy) = measure()?;
            return Ok(HostCpu {
                speed_per_core: cal.speed_per_core,
                online_cpus: online_cpus.max(1),
                source: SpeedSource::MeasuredForRun {
                    method: cal.method,
                    measured_at_unix: cal.measured_at_unix,
                    busy,
                },
            });
        }
        let env_set = env_speed.is_some_and(|v| !v.trim().is_empty());
        if !env_set {
            let stale = match read_calibration(calibration)? {
                None => Some("no calibration of this host exists".to_string()),
                Some(cal) => cal.host.differs_from(host),
            };
            if let Some(why) = stale {
                tracing::info!(reason = %why, path = %calibration.display(), "measuring this host's CPU speed (built-in benchmark, about 2 s)");
                let (cal, busy) = measure()?;
                if busy > BUSY_LIMIT {
                    tracing::warn!(
                        busy,
                        "the host was busy while its CPU was measured: the speed is used for this run only, not cached"
                    );
                    return Ok(HostCpu {
                        speed_per_core: cal.speed_per_core,
                        online_cpus: online_cpus.max(1),
                        source: SpeedSource::MeasuredBusy {
                            method: cal.method,
                            measured_at_unix: cal.measured_at_unix,
                            busy,
                        },
                    });
                }
                if let Err(e) = save(&cal, calibration) {
                    tracing::warn!(error = %e, "could not cache the calibration; later runs measure again");
                }
                return Ok(HostCpu {
                    speed_per_core: cal.speed_per_core,
                    online_cpus: online_cpus.max(1),
                    source: SpeedSource::Calibrated {
                        path: calibration.to_path_buf(),
                        method: cal.method,
                        measured_at_unix: cal.measured_at_unix,
                        auto: true,
                    },
                });
            }
        }
        HostCpu::from_sources(env_speed, calibration, online_cpus)
    }

    /// The decision behind [`try_detect`](Self::try_detect), with its inputs made explicit.
    pub fn from_sources(
        env_speed: Option<&str>,
        calibration: &Path,
        online_cpus: u32,
    ) -> Result<HostCpu, ProfileError> {
        let online_cpus = online_cpus.max(1);
        if let Some(v) = env_speed.map(str::trim).filter(|v| !v.is_empty()) {
            let speed = v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| ProfileError::Env {
                    var: HOST_SPEED_ENV,
                    value: v.to_string(),
                    detail: format!(
                        "expected a positive number (1.0 = one Raspberry Pi 5 core) or `{MEASURE_NOW}`"
                    ),
                })?;
            return Ok(HostCpu {
                speed_per_core: speed,
                online_cpus,
                source: SpeedSource::Env,
            });
        }
        match read_calibration(calibration)? {
            Some(cal) => {
                if let Some(model) = &cal.host.cpu_model
                    && cpu_model().is_some_and(|m| &m != model)
                {
                    tracing::warn!(
                        calibrated_on = %model,
                        path = %calibration.display(),
                        "the calibration was measured on another CPU model; run `edgesim calibrate` again"
                    );
                }
                Ok(HostCpu {
                    speed_per_core: cal.speed_per_core,
                    online_cpus,
                    source: SpeedSource::Calibrated {
                        path: calibration.to_path_buf(),
                        method: cal.method,
                        measured_at_unix: cal.measured_at_unix,
                        auto: false,
                    },
                })
            }
            None => Ok(HostCpu::uncalibrated(online_cpus)),
        }
    }

    /// The default: as fast as the reference core, flagged as uncalibrated.
    pub fn uncalibrated(online_cpus: u32) -> HostCpu {
        HostCpu {
            speed_per_core: DEFAULT_SPEED_PER_CORE,
            online_cpus: online_cpus.max(1),
            source: SpeedSource::Default,
        }
    }

    /// Whether the speed was measured or set, rather than assumed.
    pub fn is_calibrated(&self) -> bool {
        self.source != SpeedSource::Default
    }
}

/// Above this share of the host's CPU time spent on other work (or stolen by the hypervisor)
/// during an automatic measurement, the result is not cached: a busy neighbour shares caches,
/// memory bandwidth and (on SMT hosts) the core itself, and slows the benchmark.
pub const BUSY_LIMIT: f64 = 0.25;

/// Aggregate CPU time of the host from `/proc/stat`, in clock ticks: (busy incl. steal, total).
fn host_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, v.iter().sum()))
}

/// Runs `f` and says what share of the host's CPU time went to anything but this process
/// meanwhile (other processes, and time the hypervisor stole): 0 where `/proc/stat` cannot be
/// read.
pub fn measure_on_a_quiet_host<T>(
    f: impl FnOnce() -> Result<T, ProfileError>,
) -> Result<(T, f64), ProfileError> {
    use nix::time::{ClockId, clock_gettime};
    let own = || {
        clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
            .map(|t| std::time::Duration::from(t).as_secs_f64())
            .unwrap_or(0.0)
    };
    let (before, own_before) = (host_ticks(), own());
    let out = f()?;
    let (after, own_after) = (host_ticks(), own());
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let busy = match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let others = (b1.saturating_sub(b0)) as f64 - (own_after - own_before) * hz;
            (others / (t1 - t0) as f64).clamp(0.0, 1.0)
        }
        _ => 0.0,
    };
    Ok((out, busy))
}

/// CPUs this process may use (affinity and cgroup quota respected), at least 1.
pub fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// `MemTotal` of `/proc/meminfo` in bytes: the memory the kernel manages (installed memory
/// less what firmware and the kernel's image keep), which is also what kubelet reports.
pub fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .or_else(|| {
            std::fs::read_to_string("/sys/firmware/devicetree/base/model")
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string())
        })
}

/// The calibration file in effect: `EDGESIM_CALIBRATION`, else [`DEFAULT_CALIBRATION_PATH`].
pub fn calibration_path() -> PathBuf {
    std::env::var_os(CALIBRATION_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CALIBRATION_PATH))
}

/// Reads a calibration file; `Ok(None)` when it does not exist.
pub fn read_calibration(path: &Path) -> Result<Option<Calibration>, ProfileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(ProfileError::CalibrationRead {
                path: path.to_path_buf(),
                detail: e.to_string(),
            });
        }
    };
    let cal: Calibration =
        serde_json::from_str(&text).map_err(|e| ProfileError::CalibrationRead {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if cal.version != CALIBRATION_VERSION {
        return Err(ProfileError::CalibrationRead {
            path: path.to_path_buf(),
            detail: format!(
                "format version {} is not supported (expected {CALIBRATION_VERSION}); run `edgesim calibrate` again",
                cal.version
            ),
        });
    }
    if !(cal.speed_per_core.is_finite() && cal.speed_per_core > 0.0) {
        return Err(ProfileError::CalibrationRead {
            path: path.to_path_buf(),
            detail: format!(
                "speedPerCore {} is not a positive number",
                cal.speed_per_core
            ),
        });
    }
    Ok(Some(cal))
}

/// Writes `cal` to `path` atomically (a temporary file renamed into place), creating the
/// directory if needed.
pub fn save(cal: &Calibration, path: &Path) -> Result<(), ProfileError> {
    let werr = |source| ProfileError::CalibrationWrite {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let json = serde_json::to_string_pretty(cal)
        .map_err(|e| werr(std::io::Error::new(ErrorKind::InvalidData, e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json + "\n").map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })
}

/// Measures this host's single-core speed. Takes about 45 s per 7-Zip run plus
/// `builtin_duration`; run it on an otherwise idle host.
pub fn calibrate(opts: &CalibrateOptions) -> Result<Calibration, ProfileError> {
    let seven_zip = match opts.method {
        MethodChoice::Builtin => None,
        MethodChoice::SevenZip => {
            Some(opts.seven_zip.clone().or_else(find_7zip).ok_or_else(|| {
                ProfileError::Benchmark {
                    program: "7z".into(),
                    detail: "no 7-Zip found on PATH (install the `7zip` or `p7zip-full` package)"
                        .into(),
                }
            })?)
        }
        MethodChoice::Auto => opts.seven_zip.clone().or_else(find_7zip),
    };
    let host = HostInfo::current();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let builtin = |duration| -> Result<(f64, Vec<f64>, String), ProfileError> {
        let r = builtin_benchmark(duration)?;
        let tool = format!("edgesim builtin LZMA benchmark ({BUILTIN_FIT})");
        Ok((r.score(), r.pass_scores(), tool))
    };
    let (method, score, samples, tool, builtin_score) = match seven_zip {
        Some(program) => {
            let mut samples = Vec::new();
            let mut version = String::new();
            for _ in 0..opts.seven_zip_runs.max(1) {
                let run = run_7zip(&program)?;
                version = run.version;
                samples.push(run.score);
            }
            let best = samples.iter().copied().fold(0.0, f64::max);
            let cross = if opts.cross_check {
                Some(builtin(opts.builtin_duration)?.0)
            } else {
                None
            };
            let tool = format!("{} b -mmt1 ({version})", program.display());
            (Method::SevenZip, best, samples, tool, cross)
        }
        None => {
            let (score, samples, tool) = builtin(opts.builtin_duration)?;
            (Method::Builtin, score, samples, tool, None)
        }
    };
    Ok(Calibration {
        version: CALIBRATION_VERSION,
        speed_per_core: score / REFERENCE_SCORE,
        score,
        reference_score: REFERENCE_SCORE,
        method,
        tool,
        samples,
        builtin_score,
        measured_at_unix: now,
        host,
    })
}

/// The first of `7zz`, `7z`, `7za` on `PATH`.
pub fn find_7zip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["7zz", "7z", "7za"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// One 7-Zip benchmark run.
#[derive(Debug, Clone, PartialEq)]
pub struct SevenZipRun {
    /// Single-thread score, MIPS (R/U of the `Tot:` line; see the module docs).
    pub score: f64,
    /// The raw rating of the `Tot:` line, MIPS.
    pub rating: f64,
    /// R/U of the compression and of the decompression half (`Avr:` line), MIPS.
    pub halves: Option<(f64, f64)>,
    /// CPU usage during the run, percent of one core.
    pub usage: f64,
    /// The banner line naming the version.
    pub version: String,
}

/// Runs `program b -mmt1` and parses its result.
pub fn run_7zip(program: &Path) -> Result<SevenZipRun, ProfileError> {
    let name = program.display().to_string();
    let out = Command::new(program)
        .args(["b", "-mmt1"])
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| ProfileError::BenchmarkSpawn {
            program: name.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        return Err(ProfileError::Benchmark {
            program: name,
            detail: format!("exited with {}: {tail}", out.status),
        });
    }
    parse_7zip_output(&stdout).ok_or_else(|| ProfileError::Benchmark {
        program: name,
        detail: "no `Tot:` line with usage, R/U and rating in its output".into(),
    })
}

/// Parses the output of `7z b -mmt1`: the `Tot:` line holds usage %, R/U MIPS, rating MIPS.
pub fn parse_7zip_output(text: &str) -> Option<SevenZipRun> {
    let tot = text.lines().find(|l| l.trim_start().starts_with("Tot:"))?;
    let nums: Vec<f64> = tot
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let [usage, ru, rating] = nums[..] else {
        return None;
    };
    if !(ru > 0.0 && rating > 0.0) {
        return None;
    }
    // `Avr:  speed usage R/U rating | speed usage R/U rating` (7-Zip 26) or without the speed
    // columns (p7zip 16's summary): the R/U figure is the second to last of each half.
    let halves = text
        .lines()
        .find(|l| l.trim_start().starts_with("Avr:"))
        .and_then(|l| l.trim_start().strip_prefix("Avr:"))
        .and_then(|l| l.split_once('|'))
        .and_then(|(c, d)| {
            let ru = |half: &str| -> Option<f64> {
                let v: Vec<f64> = half
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                v.len().checked_sub(2).and_then(|i| v.get(i).copied())
            };
            Some((ru(c)?, ru(d)?))
        });
    let version = text
        .lines()
        .find(|l| l.contains("7-Zip"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    Some(SevenZipRun {
        score: ru,
        rating,
        halves,
        usage,
        version,
    })
}

// ---------------------------------------------------------------------------------------------
// The built-in benchmark.
//
// Changing anything below changes the work done per pass and invalidates
// BUILTIN_MIPS_PER_COMPRESS_MBPS / BUILTIN_MIPS_PER_DECOMPRESS_MBPS; the pinned size and
// checksum in the tests catch that.

/// Size of the generated input of one pass.
pub const BUILTIN_INPUT_LEN: usize = 512 << 10;
/// Decompressions of the packed input per pass (decompression is about ten times faster than
/// compression; repeating it gives both halves a measurable duration).
const DECOMPRESS_REPEATS: usize = 8;
/// Passes of the built-in benchmark; the best compression and the best decompression rate
/// are kept (a pass that another process interrupted only loses).
pub const BUILTIN_PASSES: usize = 8;

/// Dictionary size of the built-in benchmark: the whole input fits, so every match the
/// finder can see is used (a larger dictionary only allocates more, which adds page-fault
/// noise to the timing).
const BUILTIN_DICT: u32 = 1 << 20;

/// Result of [`builtin_benchmark`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinRun {
    /// Compression rate of each pass, MB of input per CPU-second of this thread.
    pub compress_mbps: Vec<f64>,
    /// Decompression rate of each pass, MB of output per CPU-second of this thread.
    pub decompress_mbps: Vec<f64>,
    /// Compressed size of one pass (a sanity figure).
    pub compressed_len: usize,
    /// FNV-1a hash of the compressed stream: the same on every machine.
    pub checksum: u64,
}

impl BuiltinRun {
    /// 7-Zip-equivalent single-thread MIPS of the best compression and the best
    /// decompression rate, averaged as 7-Zip's `Tot:` averages its two halves.
    pub fn score(&self) -> f64 {
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        Self::rating(best(&self.compress_mbps), best(&self.decompress_mbps))
    }
    /// The 7-Zip-equivalent MIPS of each pass.
    pub fn pass_scores(&self) -> Vec<f64> {
        self.compress_mbps
            .iter()
            .zip(&self.decompress_mbps)
            .map(|(&c, &d)| Self::rating(c, d))
            .collect()
    }
    /// Converts a compression and a decompression rate to MIPS.
    pub fn rating(compress_mbps: f64, decompress_mbps: f64) -> f64 {
        (compress_mbps * BUILTIN_MIPS_PER_COMPRESS_MBPS
            + decompress_mbps * BUILTIN_MIPS_PER_DECOMPRESS_MBPS)
            / 2.0
    }
}

/// CPU time this thread has used: the benchmark's rates are per CPU-second, as 7-Zip's R/U
/// column is per 100 % of CPU, so a pass that shared its core with another process is not
/// counted slower for the time it did not run.
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// Runs [`BUILTIN_PASSES`] LZMA compress + decompress passes over [`BUILTIN_INPUT_LEN`]
/// bytes on the calling thread (about 0.5 s each on a Raspberry Pi 5 class core) and
/// reports every pass. `min_duration` adds passes until that much time has passed.
pub fn builtin_benchmark(min_duration: Duration) -> Result<BuiltinRun, ProfileError> {
    let input = generate_input(BUILTIN_INPUT_LEN, 0x5EED_ED6E_5111);
    let start = Instant::now();
    let (mut comp, mut decomp) = (Vec::new(), Vec::new());
    let mut last = (0, 0);
    let mut unpacked = vec![0u8; input.len()];
    while comp.len() < BUILTIN_PASSES || start.elapsed() < min_duration {
        let t0 = thread_cpu_time();
        let packed = lzma_compress(&input)?;
        let t1 = thread_cpu_time();
        for _ in 0..DECOMPRESS_REPEATS {
            edgesim_cpubench::decompress_into(&packed, BUILTIN_DICT, &mut unpacked)
                .map_err(lzma_error)?;
        }
        let t2 = thread_cpu_time();
        if unpacked != input {
            return Err(ProfileError::Benchmark {
                program: "builtin".into(),
                detail: "self-check failed: decompressed data differs from the input".into(),
            });
        }
        let mb = input.len() as f64 / 1e6;
        comp.push(mb / (t1 - t0).as_secs_f64().max(1e-6));
        decomp.push(mb * DECOMPRESS_REPEATS as f64 / (t2 - t1).as_secs_f64().max(1e-6));
        last = (packed.len(), fnv1a(&packed));
    }
    Ok(BuiltinRun {
        compress_mbps: comp,
        decompress_mbps: decomp,
        compressed_len: last.0,
        checksum: last.1,
    })
}

fn lzma_error(e: std::io::Error) -> ProfileError {
    ProfileError::Benchmark {
        program: "builtin".into(),
        detail: format!("LZMA: {e}"),
    }
}

fn lzma_compress(input: &[u8]) -> Result<Vec<u8>, ProfileError> {
    edgesim_cpubench::compress(input, BUILTIN_DICT).map_err(lzma_error)
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        // xorshift64*: small, fast and identical everywhere.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Generated text: words from a skewed vocabulary, punctuation and some noise, so that matches
/// are frequent but not trivial (roughly the redundancy of source code or logs).
pub fn generate_input(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed | 1);
    let vocab: Vec<Vec<u8>> = (0..1024)
        .map(|_| {
            let n = 2 + rng.below(9) as usize;
            (0..n).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        // Squaring a uniform index skews the choice towards the first words (Zipf-like).
        let r = rng.below(1024);
        let word = &vocab[(r * r / 1024) as usize];
        out.extend_from_slice(word);
        match rng.below(16) {
            0 => out.extend_from_slice(b".\n"),
            1 => out.extend_from_slice(b", "),
            2 => {
                let noise = rng.next().to_le_bytes();
                out.extend_from_slice(&noise[..1 + rng.below(7) as usize]);
            }
            3 => out.extend_from_slice(format!(" {} ", rng.below(100_000)).as_bytes()),
            _ => out.push(b' '),
        }
    }
    out.truncate(len);
    out
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEVEN_ZIP_26: &str = "\n7-Zip (z) 26.02 (x64) : Copyright (c) 1999-2026 Igor Pavlov : 2026-06-25\n 64-bit locale=C.UTF-8 Threads:2 OPEN_MAX:20000\n\n mt1\n\n                       Compressing  |                  Decompressing\nDict     Speed Usage    R/U Rating  |      Speed Usage    R/U Rating\n         KiB/s     %   MIPS   MIPS  |      KiB/s     %   MIPS   MIPS\n\n22:       3744   100   3646   3643  |      35306   100   3017   3014\n----------------------------------  | ------------------------------\nAvr:      3051   100   3194   3193  |      34407   100   3003   2999\nTot:             100   3098   3096\n";

    // The Pi 5 reference run (sbc-bench results/4HDw.txt, p7zip 16.02), `Tot:` line only.
    const P7ZIP_16_PI5: &str = "7-Zip (a) [64] 16.02 : Copyright (c) 1999-2016 Igor Pavlov : 2016-05-21\nAvr:             100   2996   2994  |              100   3333   3332\nTot:             100   3165   3163\n";

    #[test]
    fn parses_7zip_26_and_p7zip_16_output() {
        let r = parse_7zip_output(SEVEN_ZIP_26).unwrap();
        assert_eq!((r.usage, r.score, r.rating), (100.0, 3098.0, 3096.0));
        assert!(r.version.contains("26.02"));
        assert_eq!(r.halves, Some((3194.0, 3003.0)));
        let r = parse_7zip_output(P7ZIP_16_PI5).unwrap();
        assert_eq!(
            r.rating, REFERENCE_SCORE,
            "the reference figure is this run's rating"
        );
        assert!((r.score / REFERENCE_SCORE - 1.0).abs() < 0.001);
        assert_eq!(r.halves, Some((2996.0, 3333.0)));
        assert!(parse_7zip_output("Tot: garbage\n").is_none());
        assert!(parse_7zip_output("no result at all").is_none());
    }

    #[test]
    fn host_speed_comes_from_env_then_calibration_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/calibration.json");

        let h = HostCpu::from_sources(None, &path, 8).unwrap();
        assert_eq!(h.speed_per_core, DEFAULT_SPEED_PER_CORE);
        assert_eq!(h.source, SpeedSource::Default);
        assert!(!h.is_calibrated());
        assert!(h.source.to_string().contains("uncalibrated"));

        let cal = Calibration {
            version: CALIBRATION_VERSION,
            speed_per_core: 1.6,
            score: 1.6 * REFERENCE_SCORE,
            reference_score: REFERENCE_SCORE,
            method: Method::SevenZip,
            tool: "7zz b -mmt1 (test)".into(),
            samples: vec![1.6 * REFERENCE_SCORE],
            builtin_score: None,
            measured_at_unix: 0,
            host: HostInfo {
                cpu_model: None,
                online_cpus: 8,
                kernel: None,
            },
        };
        save(&cal, &path).unwrap();
        assert_eq!(read_calibration(&path).unwrap().unwrap(), cal);
        let h = HostCpu::from_sources(None, &path, 8).unwrap();
        assert_eq!(h.speed_per_core, 1.6);
        assert_eq!(
            h.source,
            SpeedSource::Calibrated {
                path: path.clone(),
                method: Method::SevenZip,
                measured_at_unix: 0,
                auto: false,
            }
        );

        let h = HostCpu::from_sources(Some("2.5"), &path, 0).unwrap();
        assert_eq!((h.speed_per_core, h.online_cpus), (2.5, 1));
        assert_eq!(h.source, SpeedSource::Env);
        for bad in ["fast", "0", "-1", "NaN"] {
            let e = HostCpu::from_sources(Some(bad), &path, 8).unwrap_err();
            assert!(e.to_string().contains(HOST_SPEED_ENV), "{e}");
        }

        std::fs::write(&path, "{\"version\": 1}").unwrap();
        let e = HostCpu::from_sources(None, &path, 8).unwrap_err();
        assert!(e.to_string().contains("calibration.json"), "{e}");
    }

    fn cal_on(model: &str, cpus: u32, speed: f64) -> Calibration {
        Calibration {
            version: CALIBRATION_VERSION,
            speed_per_core: speed,
            score: speed * REFERENCE_SCORE,
            reference_score: REFERENCE_SCORE,
            method: Method::Builtin,
            tool: "test".into(),
            samples: vec![],
            builtin_score: None,
            measured_at_unix: 1_700_000_000,
            host: HostInfo {
                cpu_model: Some(model.into()),
                online_cpus: cpus,
                kernel: None,
            },
        }
    }

    #[test]
    fn calibration_is_measured_once_per_host_and_again_when_the_cpu_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/calibration.json");
        let host = HostInfo {
            cpu_model: Some("Xeon".into()),
            online_cpus: 2,
            kernel: None,
        };
        let measured = std::cell::Cell::new(0);
        let measure = |speed: f64, h: &HostInfo| {
            measured.set(measured.get() + 1);
            // The host info is replaced by the one measured on.
            let mut c = cal_on("-", 0, speed);
            c.host = h.clone();
            Ok((c, 0.0))
        };
        // Nothing cached: measured, cached, reported as measured now.
        let h = HostCpu::from_sources_or_measure(None, &path, &host, 2, || measure(1.2, &host))
            .unwrap();
        assert_eq!((h.speed_per_core, measured.get()), (1.2, 1));
        assert!(matches!(
            h.source,
            SpeedSource::Calibrated { auto: true, .. }
        ));
        assert!(
            h.source.to_string().contains("measured now"),
            "{}",
            h.source
        );
        assert_eq!(
            read_calibration(&path).unwrap().unwrap().speed_per_core,
            1.2
        );
        // Cached for this host: read, not measured.
        let h = HostCpu::from_sources_or_measure(None, &path, &host, 2, || measure(9.0, &host))
            .unwrap();
        assert_eq!((h.speed_per_core, measured.get()), (1.2, 1));
        assert!(matches!(
            h.source,
            SpeedSource::Calibrated { auto: false, .. }
        ));
        assert!(
            h.source
                .to_string()
                .contains("measured 2023-11-14 22:13 UTC"),
            "{}",
            h.source
        );
        // Another CPU count, another model: measured again, and the cache replaced.
        let more = HostInfo {
            online_cpus: 4,
            ..host.clone()
        };
        let h = HostCpu::from_sources_or_measure(None, &path, &more, 4, || measure(1.1, &more))
            .unwrap();
        assert_eq!((h.speed_per_core, measured.get()), (1.1, 2));
        let other = HostInfo {
            cpu_model: Some("EPYC".into()),
            ..more.clone()
        };
        assert!(
            more.differs_from(&other)
                .is_some_and(|w| w.contains("EPYC"))
        );
        let h = HostCpu::from_sources_or_measure(None, &path, &other, 4, || measure(1.3, &other))
            .unwrap();
        assert_eq!((h.speed_per_core, measured.get()), (1.3, 3));
        // The override wins and measures nothing.
        let h =
            HostCpu::from_sources_or_measure(Some("0.5"), &path, &host, 2, || measure(7.0, &host))
                .unwrap();
        assert_eq!(
            (h.speed_per_core, h.source, measured.get()),
            (0.5, SpeedSource::Env, 3)
        );
        // A cache that cannot be written: the measurement is used anyway.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "x").unwrap();
        let h = HostCpu::from_sources_or_measure(None, &blocked.join("c.json"), &host, 2, || {
            measure(0.8, &host)
        })
        .unwrap();
        assert_eq!(h.speed_per_core, 0.8);
        // Measured while the host was busy with other work: used, said so, and not cached.
        let quiet = dir.path().join("busy/calibration.json");
        let h = HostCpu::from_sources_or_measure(None, &quiet, &host, 2, || {
            measure(0.5, &host).map(|(c, _)| (c, 0.6))
        })
        .unwrap();
        assert_eq!(h.speed_per_core, 0.5);
        assert!(
            h.source.to_string().contains("not cached: 60 %"),
            "{}",
            h.source
        );
        assert!(read_calibration(&quiet).unwrap().is_none());
        // `measure` asks for a fresh figure even where one is cached, and leaves the cache be.
        let cached = read_calibration(&path).unwrap().unwrap();
        let h = HostCpu::from_sources_or_measure(Some(" Measure "), &path, &other, 4, || {
            measure(0.7, &other).map(|(c, _)| (c, 0.3))
        })
        .unwrap();
        assert_eq!((h.speed_per_core, measured.get()), (0.7, 6));
        assert!(matches!(h.source, SpeedSource::MeasuredForRun { .. }));
        assert!(
            h.source.to_string().contains("for this run") && h.source.to_string().contains("30 %"),
            "{}",
            h.source
        );
        assert_eq!(read_calibration(&path).unwrap().unwrap(), cached);
    }

    #[test]
    fn busy_share_counts_other_work_not_the_measurement() {
        let _quiet = crate::testing::exclusive();
        // One busy loop per CPU in other processes: most of the host's time is theirs, however
        // busy this process keeps itself meanwhile.
        let n = crate::host::cgroup::allowed_cpus().len();
        let mut loops: Vec<_> = (0..n)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let spin = || {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(500) {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            std::hint::black_box(x);
            Ok(())
        };
        let ((), busy) = measure_on_a_quiet_host(spin).unwrap();
        for l in &mut loops {
            let _ = l.kill();
            let _ = l.wait();
        }
        assert!(
            busy > BUSY_LIMIT,
            "{n} busy loops beside the measurement: busy {busy}"
        );
    }

    #[test]
    fn builtin_kernel_is_deterministic_and_round_trips() {
        let _quiet = crate::testing::exclusive();
        // Pinned: if this changes, the work per pass changed and the two conversion factors
        // must be measured again (see BUILTIN_FIT).
        let input = generate_input(256 << 10, 0x5EED_ED6E_5111);
        let packed = lzma_compress(&input).unwrap();
        let mut out = vec![0; input.len()];
        edgesim_cpubench::decompress_into(&packed, BUILTIN_DICT, &mut out).unwrap();
        assert_eq!(out, input);
        assert_eq!(packed, lzma_compress(&input).unwrap());
        assert!(
            packed.len() < input.len() * 3 / 4,
            "input should compress: {}",
            packed.len()
        );
        assert_eq!(
            (packed.len(), fnv1a(&packed)),
            PINNED_256K,
            "built-in benchmark kernel changed"
        );
    }

    const PINNED_256K: (usize, u64) = (91_519, 16_898_036_974_772_347_771);

    #[test]
    fn calibrate_with_the_builtin_benchmark_produces_a_usable_file() {
        let _quiet = crate::testing::exclusive();
        let opts = CalibrateOptions {
            method: MethodChoice::Builtin,
            builtin_duration: Duration::from_millis(10),
            ..Default::default()
        };
        let cal = calibrate(&opts).unwrap();
        assert_eq!(cal.method, Method::Builtin);
        assert_eq!(cal.samples.len(), BUILTIN_PASSES);
        assert!(cal.speed_per_core > 0.0);
        assert!((cal.speed_per_core - cal.score / REFERENCE_SCORE).abs() < 1e-12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        save(&cal, &path).unwrap();
        let h = HostCpu::from_sources(None, &path, 4).unwrap();
        assert_eq!(h.speed_per_core, cal.speed_per_core);
    }

    /// The whole 7-Zip path against the real program (about 45 s).
    #[test]
    #[ignore = "runs 7-Zip's benchmark for about 45 s"]
    fn calibrate_with_7zip_when_installed() {
        let _quiet = crate::testing::exclusive();
        if !crate::testing::gate("7zip", find_7zip().is_some(), "7-Zip is not installed") {
            return;
        }
        let opts = CalibrateOptions {
            method: MethodChoice::SevenZip,
            cross_check: false,
            ..Default::default()
        };
        let cal = calibrate(&opts).unwrap();
        assert_eq!(cal.method, Method::SevenZip);
        assert!(cal.tool.contains("7-Zip"), "{}", cal.tool);
        assert!(cal.score > 100.0 && cal.speed_per_core > 0.03, "{cal:?}");
        eprintln!("{}", serde_json::to_string_pretty(&cal).unwrap());
    }

    /// Prints both benchmarks side by side, half by half: how the two conversion factors are
    /// derived. Run on an idle machine (the factors hold for debug and release builds: the
    /// LZMA library is optimised in both, see the workspace Cargo.toml):
    /// `cargo test -p edgesim --lib calibrate::tests::compare -- --ignored --nocapture`
    #[test]
    #[ignore = "takes minutes; run by hand to derive the built-in benchmark's factors"]
    fn compare_builtin_with_7zip() {
        let _quiet = crate::testing::exclusive();
        let Some(program) = find_7zip() else {
            eprintln!("no 7-Zip installed");
            return;
        };
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        for round in 0..3 {
            let z = run_7zip(&program).unwrap();
            let t = Instant::now();
            let b = builtin_benchmark(Duration::ZERO).unwrap();
            let (c, d) = (best(&b.compress_mbps), best(&b.decompress_mbps));
            let (zc, zd) = z.halves.unwrap();
            eprintln!(
                "round {round}: 7zip R/U {:.0} (compress {zc:.0}, decompress {zd:.0}, usage {:.0}%); builtin compress {c:.3} MB/s -> {:.1} MIPS per MB/s, decompress {d:.2} MB/s -> {:.2}; builtin now rates {:.0} ({:+.1}%) in {:.1?}",
                z.score,
                z.usage,
                zc / c,
                zd / d,
                b.score(),
                (b.score() / z.score - 1.0) * 100.0,
                t.elapsed()
            );
        }
    }
}
