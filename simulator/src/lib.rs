//! edgesim: a network-partition and hardware-constraint simulator for edge computing.
//!
//! The library behind the `edgesim` command, usable on its own. Start with [`session`]:
//! [`Scenario`] (from a file, YAML text, or built in Rust), [`Run`] (overrides, then run it
//! sync or async, or bring a lab up and inject faults by hand through [`LabHandle`]), and the
//! [`Report`] with [`Report::assert_passed`]. With the `harness` feature, `harness` turns a
//! folder of scenario files into one `cargo test` case each. The parts:
//! - [`scenario`]: the YAML model, validation with positioned diagnostics, the resolved plan;
//! - [`profile`]: hardware profiles and their translation to limits; host CPU calibration;
//! - [`engine`]: a run from provisioning to report, with the timeline's journal and state files;
//! - [`targets`]: where nodes become real (`netns`, `docker`) behind one enum, the state
//!   file, and what this machine can do; [`caps`]: the capability table validation enforces;
//! - [`fabric`]: the run's network; [`faults`]: applying and reverting timeline actions;
//! - [`host`]: the only code that changes kernel state (namespaces, links, tc, nf_tables, cgroups);
//! - [`linkem`]: the userspace link emulator;
//! - [`workload`]: workload supervision and the edge apps of `images/`;
//! - [`probe`], [`assertion`], [`report`], [`metrics`]: measuring, judging, reporting.
pub mod assertion;
pub mod caps;
pub mod engine;
pub mod fabric;
pub mod faults;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "harness")]
pub mod harness;
pub mod host;
pub mod linkem;
pub mod metrics;
pub mod probe;
pub mod profile;
pub mod report;
pub mod scenario;
pub mod seed;
pub mod session;
pub mod targets;
pub mod testing;
pub mod units;
pub mod workload;

pub use report::Report;
pub use session::{Error, LabHandle, Run, Scenario, Target};
