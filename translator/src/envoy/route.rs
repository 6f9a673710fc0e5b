//! The outbound route configuration: one virtual host per service port, with
//! every name a client may use for it.

use super::names;
use crate::model::{Mesh, Service};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

/// Domains for `service:port` as a client in `client_ns` may write them:
/// the bare service name only from its own namespace (DNS search path),
/// `name.ns`, `name.ns.svc` and the FQDN from anywhere. The names without
/// a port go to the port a client means when it leaves the port out: 80,
/// or the only port.
pub fn domains(mesh: &Mesh, service: &Service, port: u16, client_ns: &str) -> Vec<String> {
    let ns = &service.namespace;
    let name = &service.name;
    let mut bases = Vec::with_capacity(4);
    if ns == client_ns {
        bases.push(name.clone());
    }
    bases.extend([
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        mesh.fqdn(service),
    ]);
    let portless =
        port == 80 || (service.ports.len() == 1 && !service.ports.iter().any(|p| p.port == 80));
    let mut out = Vec::with_capacity(8);
    for b in &bases {
        if portless {
            out.push(b.clone());
        }
        out.push(format!("{b}:{port}"));
    }
    out
}

/// The route configuration of the outbound listener of every sidecar in
/// `client_ns`.
pub fn outbound_routes(mesh: &Mesh, name: String, client_ns: &str) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for service in &mesh.services {
        let fqdn = mesh.fqdn(service);
        for p in &service.ports {
            if !p.protocol.is_http() {
                continue;
            }
            virtual_hosts.push(VirtualHost {
                name: names::virtual_host(&fqdn, p.port),
                domains: domains(mesh, service, p.port, client_ns),
                routes: vec![super::route_to(names::outbound_cluster(p.port, &fqdn))],
                ..Default::default()
            });
        }
    }
    RouteConfiguration {
        name,
        virtual_hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}
