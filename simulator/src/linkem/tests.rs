//! Relay tests in namespaces.
