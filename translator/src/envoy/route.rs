//! The outbound route configuration: one virtual host per HTTP service port,
//! with every name a client may use for it.
//!
//! Every namespace gets its own configuration, because a bare service name
//! means the service of the client's own namespace. The configurations
//! differ only in the virtual hosts of that namespace's services, so the
//! others are encoded once and shared: protobuf defines concatenated
//! encodings of a message as the merge of the parts, and repeated fields
//! (`virtual_hosts`) append.

use super::names;
use crate::model::{Mesh, Service};
use crate::resolve::Imports;
use crate::xds::{Resource, ResourceType};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use prost::Message;

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

/// The virtual hosts of one service's HTTP ports, as seen from `client_ns`
/// (only `ports`, when given: a Sidecar imported only those).
fn virtual_hosts(
    mesh: &Mesh,
    si: usize,
    client_ns: &str,
    ports: Option<&[u16]>,
) -> Vec<VirtualHost> {
    let Some(service) = mesh.services.get(si) else {
        return Vec::new();
    };
    let fqdn = mesh.service_fqdn(si);
    service
        .ports
        .iter()
        .filter(|p| p.protocol.is_http())
        .filter(|p| ports.is_none_or(|only| only.contains(&p.port)))
        .map(|p| VirtualHost {
            name: names::virtual_host(fqdn, p.port),
            domains: domains(mesh, service, p.port, client_ns),
            routes: vec![route_to(names::outbound_cluster(p.port, fqdn))],
            ..Default::default()
        })
        .collect()
}

/// Encoded `virtual_hosts` entries of one service.
fn encoded_hosts(mesh: &Mesh, si: usize, client_ns: &str, ports: Option<&[u16]>) -> Vec<u8> {
    RouteConfiguration {
        virtual_hosts: virtual_hosts(mesh, si, client_ns, ports),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The shared pieces of every namespace's outbound route configuration.
pub struct OutboundRoutes {
    /// Per service: its virtual hosts as any other namespace sees them.
    shared: Vec<Vec<u8>>,
}

impl OutboundRoutes {
    pub fn new(mesh: &Mesh) -> OutboundRoutes {
        OutboundRoutes {
            // No namespace is called "": nobody gets the bare names here.
            shared: (0..mesh.services.len())
                .map(|si| encoded_hosts(mesh, si, "", None))
                .collect(),
        }
    }

    /// The route configuration `name` of the sidecars in `client_ns`.
    pub fn for_namespace(&self, mesh: &Mesh, name: &str, client_ns: &str) -> Resource {
        self.for_scope(mesh, name, client_ns, None)
    }

    /// The route configuration `name` of the sidecars in `client_ns` whose
    /// Sidecar imports `imports` (`None`: no Sidecar, every service).
    pub fn for_scope(
        &self,
        mesh: &Mesh,
        name: &str,
        client_ns: &str,
        imports: Option<&Imports>,
    ) -> Resource {
        let own = mesh.index.services_in(client_ns);
        let mut bytes = RouteConfiguration {
            name: name.to_string(),
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        }
        .encode_to_vec();
        for (si, piece) in self.shared.iter().enumerate() {
            // `Some(ports)`: the Sidecar imports only these ports of it.
            let only = match imports {
                None => None,
                Some(i) => match (i.get(&si), mesh.services.get(si)) {
                    (None, _) | (_, None) => continue,
                    (Some(p), Some(svc)) if p.len() < svc.ports.len() => Some(p.as_slice()),
                    (Some(_), Some(_)) => None,
                },
            };
            if only.is_some() || own.binary_search(&si).is_ok() {
                bytes.extend(encoded_hosts(mesh, si, client_ns, only));
            } else {
                bytes.extend_from_slice(piece);
            }
        }
        Resource::from_encoded::<RouteConfiguration>(name, ResourceType::Route, bytes)
    }

    /// The same configuration as one message (for tests).
    pub fn message(mesh: &Mesh, name: &str, client_ns: &str) -> RouteConfiguration {
        RouteConfiguration {
            name: name.to_string(),
            virtual_hosts: (0..mesh.services.len())
                .flat_map(|si| virtual_hosts(mesh, si, client_ns, None))
                .collect(),
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        }
    }
}

/// The capture layout's domains for `service:port` from `client_ns`: the
/// route configuration is the port's own, so every name is there with and
/// without the port, and the cluster IP too (a client may call it).
fn port_domains(mesh: &Mesh, service: &Service, port: u16, client_ns: &str) -> Vec<String> {
    let ns = &service.namespace;
    let name = &service.name;
    let mut bases = Vec::with_capacity(5);
    if ns == client_ns {
        bases.push(name.clone());
    }
    bases.extend([
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        mesh.fqdn(service),
    ]);
    if let Some(ip) = service.cluster_ip {
        bases.push(ip.to_string());
    }
    bases
        .iter()
        .flat_map(|b| [b.clone(), format!("{b}:{port}")])
        .collect()
}

/// The virtual host of service `si`'s HTTP port `port`, from `client_ns`,
/// encoded (empty when the service has no such HTTP port).
fn encoded_port_host(mesh: &Mesh, si: usize, port: u16, client_ns: &str) -> Vec<u8> {
    let Some(service) = mesh.services.get(si) else {
        return Vec::new();
    };
    if !service
        .ports
        .iter()
        .any(|p| p.port == port && p.protocol.is_http())
    {
        return Vec::new();
    }
    let fqdn = mesh.service_fqdn(si);
    RouteConfiguration {
        virtual_hosts: vec![VirtualHost {
            name: names::virtual_host(fqdn, port),
            domains: port_domains(mesh, service, port, client_ns),
            routes: vec![route_to(names::outbound_cluster(port, fqdn))],
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

/// The capture layout's route configurations: one per HTTP port number,
/// named by it (as istiod names them), with a virtual host per service
/// that has an HTTP port of that number and the `allow_any` host last.
/// Shared the way [`OutboundRoutes`] shares its pieces.
pub struct PortRoutes {
    /// Per HTTP port: the services with it and their encoded host as any
    /// other namespace sees it.
    shared: std::collections::BTreeMap<u16, Vec<(usize, Vec<u8>)>>,
    allow_any: Vec<u8>,
}

impl PortRoutes {
    pub fn new(mesh: &Mesh) -> PortRoutes {
        let mut shared: std::collections::BTreeMap<u16, Vec<(usize, Vec<u8>)>> = Default::default();
        for (si, service) in mesh.services.iter().enumerate() {
            for p in service.ports.iter().filter(|p| p.protocol.is_http()) {
                shared
                    .entry(p.port)
                    .or_default()
                    .push((si, encoded_port_host(mesh, si, p.port, "")));
            }
        }
        let allow_any = RouteConfiguration {
            virtual_hosts: vec![allow_any()],
            ..Default::default()
        }
        .encode_to_vec();
        PortRoutes { shared, allow_any }
    }

    /// The HTTP port numbers, ascending.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.shared.keys().copied()
    }

    /// The route configuration of `port` for the sidecars in `client_ns`.
    pub fn for_namespace(&self, mesh: &Mesh, port: u16, client_ns: &str) -> Resource {
        let name = port.to_string();
        let own = mesh.index.services_in(client_ns);
        let mut bytes = RouteConfiguration {
            name: name.clone(),
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        }
        .encode_to_vec();
        for (si, piece) in self.shared.get(&port).into_iter().flatten() {
            if own.binary_search(si).is_ok() {
                bytes.extend(encoded_port_host(mesh, *si, port, client_ns));
            } else {
                bytes.extend_from_slice(piece);
            }
        }
        bytes.extend_from_slice(&self.allow_any);
        Resource::from_encoded::<RouteConfiguration>(name, ResourceType::Route, bytes)
    }
}

/// The ALLOW_ANY virtual host of a per-port route (Istio's default
/// `outboundTrafficPolicy`): a `Host` that names no service goes to its
/// original destination.
fn allow_any() -> VirtualHost {
    VirtualHost {
        name: names::capture::ALLOW_ANY.into(),
        domains: vec!["*".into()],
        routes: vec![route_to(names::capture::PASSTHROUGH_CLUSTER.into())],
        ..Default::default()
    }
}

/// A route sending every path to `cluster`, with no route timeout (as
/// istiod: the application decides how long a request may take).
pub(super) fn route_to(cluster: String) -> envoy_types::pb::envoy::config::route::v3::Route {
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, RouteMatch, route, route_action, route_match,
    };
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(super::seconds(0)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::build::{Addressing, mesh_from_yaml};

    #[test]
    fn assembled_routes_decode_to_the_message_built_whole() {
        let yaml = "
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {selector: {app: a}, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: y}
spec: {selector: {app: b}, ports: [{name: http, port: 8000}]}
";
        let mesh = mesh_from_yaml(
            &[("t.yaml".to_string(), yaml.to_string())],
            Default::default(),
            &Addressing::default(),
        )
        .expect("valid");
        let routes = OutboundRoutes::new(&mesh);
        for ns in ["x", "y", "z"] {
            let r = routes.for_namespace(&mesh, "15001", ns);
            let decoded = RouteConfiguration::decode(r.body.value.as_slice()).expect("decodes");
            assert_eq!(decoded, OutboundRoutes::message(&mesh, "15001", ns), "{ns}");
        }
        let x = routes.for_namespace(&mesh, "15001", "x");
        let decoded = RouteConfiguration::decode(x.body.value.as_slice()).expect("decodes");
        assert!(decoded.virtual_hosts[0].domains.contains(&"a".to_string()));
        assert!(!decoded.virtual_hosts[2].domains.contains(&"b".to_string()));
    }
}
