//! edgesim: a network-partition and hardware-constraint simulator for edge computing.
pub mod host;
pub mod profile;
pub mod testing;
pub mod units;
