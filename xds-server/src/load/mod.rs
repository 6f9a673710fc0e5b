//! The load generator of the benchmark (`xds-load`, issue #13): simulated
//! Envoy sidecars and the meshes they belong to. Outside the server's
//! pipeline; it uses the server's crate only as a client would (the CA in
//! the state directory, the node id format) and to read a mesh directory
//! the way `serve` does.
//!
//! - `meshgen`: a synthetic mesh as YAML (`gen-mesh`);
//! - `protocol`, `sotw`, `delta`, `follow`: one sidecar's ADS client as a
//!   pure state machine (subscribe, decode, ACK/NACK, follow names).

pub mod delta;
pub mod follow;
pub mod meshgen;
pub mod protocol;
pub mod sotw;
#[cfg(test)]
mod tests;
