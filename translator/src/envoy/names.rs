//! Resource names. Istio's conventions where Istio has one, so users can
//! compare a dump with istiod's; each name leads back to its source object.

use std::net::IpAddr;

/// `outbound|PORT|SUBSET|FQDN`
pub fn outbound_cluster(port: u16, fqdn: &str) -> String {
    format!("outbound|{port}||{fqdn}")
}

/// `inbound|TARGET_PORT||`
pub fn inbound_cluster(target_port: u16) -> String {
    format!("inbound|{target_port}||")
}

/// A bind-to-port listener, `IP_PORT` (Istio's captureMode NONE naming).
pub fn listener(ip: IpAddr, port: u16) -> String {
    format!("{ip}_{port}")
}

/// The route configuration of the outbound HTTP listener: the port number,
/// as istiod names per-port HTTP routes.
pub fn outbound_route(port: u16) -> String {
    port.to_string()
}

/// Virtual host name: `FQDN:PORT`.
pub fn virtual_host(fqdn: &str, port: u16) -> String {
    format!("{fqdn}:{port}")
}

/// SNI of Istio mTLS: `outbound_.PORT_._.FQDN`.
pub fn istio_sni(port: u16, fqdn: &str) -> String {
    format!("outbound_.{port}_._.{fqdn}")
}

/// SDS secret of the workload certificate and key.
pub const SECRET_DEFAULT: &str = "default";
/// SDS secret of the trust bundle.
pub const SECRET_ROOTCA: &str = "ROOTCA";

/// Filter-chain names on inbound listeners.
pub const CHAIN_MTLS: &str = "mtls";
pub const CHAIN_PLAINTEXT: &str = "plaintext";
pub const CHAIN_TLS_PASSTHROUGH: &str = "tls-passthrough";
