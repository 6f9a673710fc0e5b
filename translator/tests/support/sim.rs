//! A small simulation of what Envoy does with the generated config, in the
//! spirit of Istio's simulation tests: a client (with or without sidecar)
//! calls a service port, the client's cluster picks a transport socket for
//! the endpoint, and the server's inbound listener picks a filter chain by
//! transport protocol and ALPN. The outcome is asserted, not the bytes.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use prost::Message;
use translator::Translation;
use translator::model::Mesh;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200, with mTLS terminated by the server sidecar (XFCC present).
    Mtls,
    /// 200 in plaintext (no XFCC).
    Plain,
    /// The server closed the connection: no filter chain (curl exit 56).
    Reset,
    /// The client sidecar's upstream failed (TLS to a plaintext server or
    /// plaintext to a TLS-only one): 503.
    Upstream503,
}

pub fn decode<M: Message + Default>(body: &envoy_types::pb::google::protobuf::Any) -> M {
    M::decode(body.value.as_slice()).expect("decode resource")
}

/// What the client sends on the wire: None = plaintext, Some(alpn) = TLS.
pub fn client_socket(cluster: &Cluster, endpoint_mtls_meta: bool) -> Option<Vec<String>> {
    let socket: Option<&TransportSocket> = if cluster.transport_socket_matches.is_empty() {
        cluster.transport_socket.as_ref()
    } else {
        cluster
            .transport_socket_matches
            .iter()
            .find(|m| {
                let want = m
                    .r#match
                    .as_ref()
                    .map(|s| !s.fields.is_empty())
                    .unwrap_or(false);
                !want || endpoint_mtls_meta
            })
            .and_then(|m| m.transport_socket.as_ref())
    };
    let socket = socket?;
    if socket.name != "envoy.transport_sockets.tls" {
        return None;
    }
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return None;
    };
    let ctx: UpstreamTlsContext = decode(any);
    Some(
        ctx.common_tls_context
            .map(|c| c.alpn_protocols)
            .unwrap_or_default(),
    )
}

/// Envoy's filter-chain match on transport protocol, then ALPN: the most
/// specific candidate wins, an empty field is the fallback.
pub fn pick_chain<'a>(
    listener: &'a Listener,
    tls_alpn: Option<&[String]>,
) -> Option<&'a FilterChain> {
    let transport = if tls_alpn.is_some() {
        "tls"
    } else {
        "raw_buffer"
    };
    let candidates: Vec<&FilterChain> = listener
        .filter_chains
        .iter()
        .filter(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            m.transport_protocol.is_empty() || m.transport_protocol == transport
        })
        .collect();
    let specific: Vec<&FilterChain> = candidates
        .iter()
        .copied()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .is_some_and(|m| m.transport_protocol == transport)
        })
        .collect();
    let pool = if specific.is_empty() {
        candidates
    } else {
        specific
    };
    let alpn = tls_alpn.unwrap_or(&[]);
    let with_alpn = pool.iter().copied().find(|c| {
        let m = c.filter_chain_match.clone().unwrap_or_default();
        !m.application_protocols.is_empty()
            && m.application_protocols.iter().any(|a| alpn.contains(a))
    });
    with_alpn.or_else(|| {
        pool.iter().copied().find(|c| {
            c.filter_chain_match
                .as_ref()
                .is_none_or(|m| m.application_protocols.is_empty())
        })
    })
}

pub fn endpoint_addr(cla: &ClusterLoadAssignment, i: usize) -> Option<(String, u16, bool)> {
    let ep = cla.endpoints.first()?.lb_endpoints.get(i)?;
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
        return None;
    };
    let Some(address::Address::SocketAddress(sa)) = e.address.as_ref()?.address.as_ref() else {
        return None;
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return None;
    };
    let mtls = ep
        .metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
        .is_some_and(|s| s.fields.contains_key("tlsMode"));
    Some((sa.address.clone(), port as u16, mtls))
}

/// Call `service.namespace:port` from workload `client` (namespace/pod) to
/// its `endpoint`-th endpoint.
pub fn call(
    mesh: &Mesh,
    t: &Translation,
    client: (&str, &str),
    service: (&str, &str),
    port: u16,
    endpoint: usize,
) -> Outcome {
    let fqdn = format!("{}.{}.svc.cluster.local", service.0, service.1);
    let cluster_name = format!("outbound|{port}||{fqdn}");
    let (_, cw) = mesh
        .workload(client.0, client.1)
        .expect("client workload exists");
    let any_plan = t.proxies.values().next().expect("some sidecar exists");
    let cla: ClusterLoadAssignment = decode(
        &any_plan
            .endpoints
            .get(&cluster_name)
            .expect("endpoints exist")
            .body,
    );
    let (ip, target, meta_mtls) = endpoint_addr(&cla, endpoint).expect("endpoint exists");
    let wire: Option<Vec<String>> = match t.proxy(client.0, client.1) {
        None => {
            assert!(!cw.sidecar);
            None
        }
        Some(plan) => {
            let res = plan.resources();
            let cluster: Cluster = decode(
                &res.clusters
                    .get(&cluster_name)
                    .expect("cluster exists")
                    .body,
            );
            client_socket(&cluster, meta_mtls)
        }
    };
    let server = mesh
        .workloads
        .iter()
        .find(|w| w.ip.to_string() == ip)
        .expect("endpoint is a workload");
    let Some(splan) = t.proxy(&server.namespace, &server.name) else {
        // No sidecar: the app speaks plaintext HTTP only.
        return match (wire, cw.sidecar) {
            (None, _) => Outcome::Plain,
            (Some(_), _) => Outcome::Upstream503,
        };
    };
    let listener: Listener = decode(
        &splan
            .listeners
            .get(&format!("{ip}_{target}"))
            .expect("inbound listener exists")
            .body,
    );
    match pick_chain(&listener, wire.as_deref()) {
        None => {
            if cw.sidecar {
                Outcome::Upstream503
            } else {
                Outcome::Reset
            }
        }
        Some(chain) => match (wire.is_some(), chain.transport_socket.is_some()) {
            (true, true) => Outcome::Mtls,
            (false, false) => Outcome::Plain,
            // TLS into a plaintext chain, or the reverse: the HTTP exchange fails.
            _ => Outcome::Upstream503,
        },
    }
}
