//! The daemon: config sources -> translator -> per-proxy snapshots -> ADS,
//! plus the CA that issues workload certificates, the debug HTTP server and
//! the local mesh runner. `main.rs` only parses the command line.
#![forbid(unsafe_code)]

pub mod ads;
pub mod bootstrap;
pub mod ca;
pub mod capture;
pub mod cli;
pub mod debug;
pub mod enroll;
pub mod identity;
pub mod inject;
pub mod load;
pub mod logging;
pub mod runner;
pub mod server;
pub mod snapshots;
pub mod source;
#[cfg(test)]
pub(crate) mod test_support;
pub mod view;
pub mod xds_tls;
