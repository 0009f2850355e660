//! The `device` target's pieces: physical boards (Raspberry Pi, Jetson) reached over SSH.
//!
//! - [`inventory`]: which boards there are and how to reach them (Ansible's YAML inventory),
//!   and which scenario node is which board.
//!
//! The target itself (provisioning boards through the agent, faults with leases) builds on
//! these; see the roadmap in DESIGN.md.

pub mod inventory;
