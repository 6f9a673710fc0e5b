//! Decoding the resources of a response as Envoy would, and the names it
//! then asks for: a cluster of type EDS subscribes to its load assignment,
//! an HTTP connection manager with RDS to its route configuration, a TLS
//! transport socket (on a cluster, in its `transport_socket_matches`, or on
//! a listener's filter chain) to its SDS secrets.
//!
//! A resource that does not decode as the type it claims to be makes the
//! whole response invalid: the simulated sidecar NACKs it, as Envoy does.
//! Resources decode as the messages of `light.rs`: the fields followed
//! here, every other field's framing checked and skipped.

use super::light::{self, Cluster, CommonTlsContext, FilterChain, Listener, Named};
use super::names::{self, Name};
use envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use translator::ResourceType;

/// The names one resource makes the proxy ask for, by type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Deps {
    pub endpoints: BTreeSet<Name>,
    pub routes: BTreeSet<Name>,
    pub secrets: BTreeSet<Name>,
}

impl Deps {
    /// The names of `kind` (empty for the wildcard types).
    pub fn of(&self, kind: ResourceType) -> Option<&BTreeSet<Name>> {
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

static SHARED: LazyLock<Mutex<HashSet<Arc<Deps>>>> = LazyLock::new(Default::default);

/// The shared copy of `deps`: most clusters of a mesh reference the same
/// two secrets, and each one load assignment every sidecar shares.
pub fn shared(deps: Deps) -> Arc<Deps> {
    names::interned(&SHARED, deps, Arc::new)
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
        ResourceType::Endpoint | ResourceType::Route | ResourceType::Secret => Ok(Decoded {
            name: Named::decode(bytes).map_err(bad)?.name,
            deps: Deps::default(),
        }),
    }
}

fn cluster_deps(cluster: &Cluster) -> Result<Deps, String> {
    let mut deps = Deps::default();
    let eds = cluster.discovery_type == Some(DiscoveryType::Eds as i32);
    if eds {
        // Envoy asks for the cluster's own name unless the EDS config
        // names another.
        let service_name = cluster
            .eds_cluster_config
            .as_ref()
            .map(|c| c.service_name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(&cluster.name);
        deps.endpoints.insert(names::name(service_name));
    }
    let sockets = cluster.transport_socket.iter().chain(
        cluster
            .transport_socket_matches
            .iter()
            .filter_map(|m| m.transport_socket.as_ref()),
    );
    for socket in sockets {
        socket_secrets::<UpstreamTlsContext>(socket, &mut deps.secrets)?;
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
        socket_secrets::<DownstreamTlsContext>(socket, &mut deps.secrets)?;
    }
    for f in &chain.filters {
        let Some(any) = &f.typed_config else {
            continue;
        };
        if any.type_url != <HttpConnectionManager as prost::Name>::type_url() {
            continue;
        }
        let hcm = light::HttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| format!("filter {:?} does not decode: {e}", f.name))?;
        if let Some(rds) = hcm.rds {
            deps.routes.insert(names::name(&rds.route_config_name));
        }
    }
    Ok(())
}

/// Adds the SDS secret names of a TLS transport socket whose typed config
/// is `M` (upstream or downstream TLS); other sockets (raw buffer) have
/// none.
fn socket_secrets<M: prost::Name>(
    socket: &light::TransportSocket,
    out: &mut BTreeSet<Name>,
) -> Result<(), String> {
    let Some(any) = &socket.typed_config else {
        return Ok(());
    };
    if any.type_url != M::type_url() {
        return Ok(());
    }
    let context = light::TlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("transport socket {:?} does not decode: {e}", socket.name))?;
    let Some(common) = &context.common_tls_context else {
        return Ok(());
    };
    common_secrets(common, out);
    Ok(())
}

fn common_secrets(common: &CommonTlsContext, out: &mut BTreeSet<Name>) {
    out.extend(
        common
            .tls_certificate_sds_secret_configs
            .iter()
            .map(|s| names::name(&s.name)),
    );
    if let Some(s) = &common.validation_context_sds_secret_config {
        out.insert(names::name(&s.name));
    }
    if let Some(s) = common
        .combined_validation_context
        .as_ref()
        .and_then(|c| c.validation_context_sds_secret_config.as_ref())
    {
        out.insert(names::name(&s.name));
    }
}
