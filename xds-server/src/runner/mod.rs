//! The local mesh runner: real, stock Envoys on loopback addresses, each in
//! front of an in-process echo application, probed from outside.
//!
//! This is where the control plane meets the data plane it configures, so it
//! holds the pieces end-to-end tests need: finding and supervising Envoy
//! processes and reading their admin API ([`envoy`]), the httpbin-like
//! workload ([`echo`]), and a probe client that classifies exactly how a call
//! ended ([`probe`]).

mod admin;
mod capture_probe;
pub mod echo;
#[cfg(test)]
mod echo_probe_tests;
pub mod envoy;
pub mod explain;
pub mod matrix;
pub mod mesh;
pub mod netns;
pub mod pods;
pub mod probe;
pub mod selector;
#[cfg(test)]
mod test_support;
pub mod up;
