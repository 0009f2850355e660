//! Scenarios: the YAML model users write, its validation, and the resolved plan.
//!
//! - [`model`]: serde structs mirroring the file (`deny_unknown_fields`, positions kept).
//! - [`validate`]: every check that can be made before anything is created, producing a
//!   [`plan::Plan`] or a list of [`diag::Diagnostic`]s with file, line, column and hint.
//! - [`plan`]: the expanded, resolved form targets execute.
//! - [`expect`]: the assertion expression language and probe windows.
//!
//! No IO beyond reading the scenario file.

pub mod diag;
pub mod expect;
pub mod loc;
pub mod model;
pub mod plan;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics};
pub use plan::Plan;
pub use validate::{Capabilities, LoadError, Overrides, Validated, load};

#[cfg(test)]
mod tests;
