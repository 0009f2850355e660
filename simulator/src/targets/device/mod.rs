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
