//! edgesim: a network-partition and hardware-constraint simulator for edge computing.
pub mod assertion;
pub mod engine;
pub mod host;
pub mod linkem;
pub mod metrics;
pub mod probe;
pub mod profile;
pub mod report;
pub mod scenario;
pub mod target;
pub mod testing;
pub mod units;
pub mod workload;
