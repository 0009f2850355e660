//! edgesim: a network-partition and hardware-constraint simulator for edge computing.
pub mod units;
