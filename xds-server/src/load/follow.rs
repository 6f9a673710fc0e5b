//! Decoding the resources of a response as Envoy would, and the names it
//! then asks for: a cluster of type EDS subscribes to its load assignment,
//! an HTTP connection manager with RDS to its route configuration, a TLS
//! transport socket (on a cluster, in its `transport_socket_matches`, or on
//! a listener's filter chain) to its SDS secrets.
//!
//! A resource that does not decode as the type it claims to be makes the
//! whole response invalid: the simulated sidecar NACKs it, as Envoy does.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext,
    common_tls_context::ValidationContextType,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::collections::BTreeSet;
use translator::ResourceType;

/// The names one resource makes the proxy ask for, by type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deps {
    pub endpoints: BTreeSet<String>,
    pub routes: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

impl Deps {
    /// The names of `kind` (empty for the wildcard types).
    pub fn of(&self, kind: ResourceType) -> Option<&BTreeSet<String>> {
        match kind {
            ResourceType::Endpoint => Some(&self.endpoints),
            ResourceType::Route => Some(&self.routes),
            ResourceType::Secret => Some(&self.secrets),
            ResourceType::Cluster | ResourceType::Listener => None,
        }
    }

    pub fn extend(&mut self, other: &Deps) {
        self.endpoints.extend(other.endpoints.iter().cloned());
        self.routes.extend(other.routes.iter().cloned());
        self.secrets.extend(other.secrets.iter().cloned());
    }
}

/// One decoded resource: its name and what it depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub name: String,
    pub deps: Deps,
}

/// Decodes `any` as a resource of `kind`: the name it carries and the
/// names it makes the proxy subscribe to. An error says what is wrong, for
/// the NACK's message.
pub fn decode(kind: ResourceType, any: &Any) -> Result<Decoded, String> {
    if any.type_url != kind.type_url() {
        return Err(format!(
            "a {kind} response holds a resource of type {:?}",
            any.type_url
        ));
    }
    let bytes = any.value.as_slice();
    let bad = |e: prost::DecodeError| format!("a {kind} resource does not decode: {e}");
    match kind {
        ResourceType::Cluster => {
            let cluster = Cluster::decode(bytes).map_err(bad)?;
            let deps = cluster_deps(&cluster)?;
            Ok(Decoded {
                name: cluster.name,
                deps,
            })
        }
        ResourceType::Listener => {
            let listener = Listener::decode(bytes).map_err(bad)?;
            let deps = listener_deps(&listener)?;
            Ok(Decoded {
                name: listener.name,
                deps,
            })
        }
        ResourceType::Endpoint => Ok(Decoded {
            name: ClusterLoadAssignment::decode(bytes)
                .map_err(bad)?
                .cluster_name,
            deps: Deps::default(),
        }),
        ResourceType::Route => Ok(Decoded {
            name: RouteConfiguration::decode(bytes).map_err(bad)?.name,
            deps: Deps::default(),
        }),
        ResourceType::Secret => Ok(Decoded {
            name: Secret::decode(bytes).map_err(bad)?.name,
            deps: Deps::default(),
        }),
    }
}

fn cluster_deps(cluster: &Cluster) -> Result<Deps, String> {
    let mut deps = Deps::default();
    let eds = matches!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    if eds {
        // Envoy asks for the cluster's own name unless the EDS config
        // names another.
        let service_name = cluster
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(&cluster.name);
        deps.endpoints.insert(service_name.to_string());
    }
    let sockets = cluster.transport_socket.iter().chain(
        cluster
            .transport_socket_matches
            .iter()
            .filter_map(|m| m.transport_socket.as_ref()),
    );
    for socket in sockets {
        socket_secrets::<UpstreamTlsContext>(socket, &mut deps.secrets, |c| {
            c.common_tls_context.as_ref()
        })?;
    }
    Ok(deps)
}

fn listener_deps(listener: &Listener) -> Result<Deps, String> {
    let mut deps = Deps::default();
    let chains = listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter());
    for chain in chains {
        chain_deps(chain, &mut deps)?;
    }
    Ok(deps)
}

fn chain_deps(chain: &FilterChain, deps: &mut Deps) -> Result<(), String> {
    if let Some(socket) = &chain.transport_socket {
        socket_secrets::<DownstreamTlsContext>(socket, &mut deps.secrets, |c| {
            c.common_tls_context.as_ref()
        })?;
    }
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if any.type_url != HttpConnectionManager::type_url() {
            continue;
        }
        let hcm = HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| format!("filter {:?} does not decode: {e}", f.name))?;
        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
            deps.routes.insert(rds.route_config_name);
        }
    }
    Ok(())
}

/// Adds the SDS secret names of a TLS transport socket whose typed config
/// is `M`; other sockets (raw buffer) have none.
fn socket_secrets<M: Message + Name + Default>(
    socket: &TransportSocket,
    out: &mut BTreeSet<String>,
    common: impl Fn(&M) -> Option<&CommonTlsContext>,
) -> Result<(), String> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Ok(());
    };
    if any.type_url != M::type_url() {
        return Ok(());
    }
    let context = M::decode(any.value.as_slice())
        .map_err(|e| format!("transport socket {:?} does not decode: {e}", socket.name))?;
    let Some(common) = common(&context) else {
        return Ok(());
    };
    out.extend(
        common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| s.name.clone()),
    );
    match &common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            out.insert(s.name.clone());
        }
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            out.extend(
                c.validation_context_sds_secret_config
                    .iter()
                    .map(|s| s.name.clone()),
            );
        }
        _ => {}
    }
    Ok(())
}
