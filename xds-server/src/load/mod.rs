//! The load generator of the benchmark (`xds-load`, issue #13): simulated
//! Envoy sidecars and the meshes they belong to. Outside the server's
//! pipeline; it uses the server's crate only as a client would (the CA in
//! the state directory, the node id format) and to read a mesh directory
//! the way `serve` does.
//!
//! - `meshgen`: a synthetic mesh as YAML (`gen-mesh`);
//! - `protocol`, `sotw`, `delta`, `follow`: one sidecar's ADS client as a
//!   pure state machine (subscribe, decode, ACK/NACK, follow names);
//! - `proxy`, `tls`: that client over a real stream, with reconnects;
//! - `record`, `report`: what was observed, and the table;
//! - `run`, `bench`, `server`, `procstat`: the runs and the server process;
//! - `floor`: the least a full push to N proxies can cost, to compare with.

pub mod bench;
pub mod cli;
pub mod delta;
pub mod floor;
pub mod follow;
pub mod grpc;
pub mod light;
pub mod meshgen;
pub mod names;
pub mod procstat;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod report;
pub mod run;
pub mod server;
pub mod sotw;
#[cfg(test)]
mod tests;
pub mod tls;
