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

/// Names of the capture layout (`INTERCEPTION_MODE: REDIRECT`), as istiod
/// gives them.
pub mod capture {
    /// The listener iptables sends outbound connections to (0.0.0.0:15001).
    pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
    /// The listener iptables sends inbound connections to (0.0.0.0:15006).
    pub const VIRTUAL_INBOUND: &str = "virtualInbound";
    /// Unmatched outbound traffic, to its original destination.
    pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
    /// Inbound traffic to ports no Service targets, to its original
    /// destination from 127.0.0.6.
    pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
    /// A cluster with no endpoints: what a loop back into a capture port gets.
    pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
    pub const CHAIN_OUTBOUND_BLACKHOLE: &str = "virtualOutbound-blackhole";
    pub const CHAIN_OUTBOUND_CATCHALL: &str = "virtualOutbound-catchall-tcp";
    pub const CHAIN_INBOUND_BLACKHOLE: &str = "virtualInbound-blackhole";
    /// The virtual host of unmatched `Host`s on a per-port route
    /// (outboundTrafficPolicy ALLOW_ANY).
    pub const ALLOW_ANY: &str = "allow_any";
}
