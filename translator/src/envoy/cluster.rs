//! Clusters and their load assignments.

use super::{ads_config_source, any, names, seconds, socket_address, tls};
use crate::model::{ClientTlsMode, Protocol};
use crate::resolve::{ClientDecision, Credential};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, Metadata, UpstreamHttpProtocolOptions,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use std::collections::HashMap;
use std::net::IpAddr;

/// Endpoint metadata namespace Envoy's `transport_socket_matches` reads.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `{tlsMode: istio}`: the label Istio's injector stamps on sidecar pods,
/// here set by auto mTLS only when the endpoint can take mTLS on that port.
fn tls_mode_istio() -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        "tlsMode".to_string(),
        Value {
            kind: Some(value::Kind::StringValue("istio".into())),
        },
    );
    Struct { fields }
}

/// What the client cluster does, as decided by `resolve::client`.
pub struct OutboundSpec<'a> {
    pub name: String,
    pub fqdn: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    pub decision: &'a ClientDecision,
    /// SPIFFE IDs of the service's workloads, sorted.
    pub sans: &'a [String],
    /// What SIMPLE/MUTUAL verify the server against without `caCertificates`.
    pub trust_bundle: &'a str,
}

pub fn outbound(spec: &OutboundSpec<'_>) -> Cluster {
    let h2 = spec.protocol == Protocol::Http2;
    let sni = names::istio_sni(spec.port, spec.fqdn);
    let mut c = Cluster {
        name: spec.name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source(false)),
            service_name: spec.name.clone(),
        }),
        connect_timeout: Some(seconds(10)),
        ..Default::default()
    };
    if h2 {
        c.typed_extension_protocol_options = http_options(true, None);
    }
    match &spec.decision.tls {
        None => {
            // Auto mTLS: per endpoint, by the metadata EDS carries.
            let istio = tls::upstream_istio_mutual(spec.sans, sni, h2);
            c.transport_socket_matches = vec![
                cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(tls_mode_istio()),
                    transport_socket: Some(tls::tls_socket_upstream(&istio)),
                },
                cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(tls::raw_socket()),
                },
            ];
        }
        Some(t) => match t.mode() {
            ClientTlsMode::Disable => {}
            ClientTlsMode::IstioMutual => {
                let sans: Vec<String> = if t.subject_alt_names.is_empty() {
                    spec.sans.to_vec()
                } else {
                    t.subject_alt_names.clone()
                };
                let sni = t.sni.clone().unwrap_or(sni);
                let ctx = tls::upstream_istio_mutual(&sans, sni, h2);
                c.transport_socket = Some(tls::tls_socket_upstream(&ctx));
            }
            ClientTlsMode::Simple | ClientTlsMode::Mutual => match &spec.decision.credential {
                // istiod builds no TLS context for sidecars from a
                // credentialName on a rule without workloadSelector, nor
                // for MUTUAL without a client certificate.
                Some(c) if c.drops_tls() => {}
                credential => {
                    let secret = match credential {
                        Some(Credential::SdsSecret(name)) => Some(name.as_str()),
                        _ => None,
                    };
                    let ctx = tls::upstream_user_tls(t, spec.trust_bundle, secret, h2);
                    c.transport_socket = Some(tls::tls_socket_upstream(&ctx));
                    if let Some(upstream) = tls::auto_sni_options(t) {
                        c.typed_extension_protocol_options = http_options(h2, Some(upstream));
                    }
                }
            },
        },
    }
    c
}

/// HTTP/2 to the upstream, nothing else (the capture layout's inbound clusters).
pub(super) fn http2_options() -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    http_options(true, None)
}

/// `HttpProtocolOptions` naming the upstream protocol (HTTP/2 or HTTP/1.1),
/// with `upstream` options (auto SNI) when origination needs them.
fn http_options(
    h2: bool,
    upstream: Option<UpstreamHttpProtocolOptions>,
) -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let protocol_config = if h2 {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    let opts = HttpProtocolOptions {
        upstream_http_protocol_options: upstream,
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(protocol_config),
                },
            ),
        ),
        ..Default::default()
    };
    let mut m = HashMap::new();
    m.insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&opts));
    m
}

/// One endpoint of an outbound cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointSpec {
    pub ip: IpAddr,
    pub port: u16,
    /// Auto mTLS would use mTLS to this endpoint on this port.
    pub mtls: bool,
}

pub fn load_assignment(cluster_name: &str, endpoints: &[EndpointSpec]) -> ClusterLoadAssignment {
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(e.ip, e.port)),
                ..Default::default()
            })),
            metadata: e.mtls.then(|| {
                let mut filter_metadata = HashMap::new();
                filter_metadata.insert(TRANSPORT_SOCKET_MATCH.to_string(), tls_mode_istio());
                Metadata {
                    filter_metadata,
                    ..Default::default()
                }
            }),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `inbound|PORT||`: the application's own address for that port.
pub fn inbound(target_port: u16, app_ip: IpAddr, protocol: Protocol) -> Cluster {
    let name = names::inbound_cluster(target_port);
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(seconds(10)),
        load_assignment: Some(load_assignment(
            &name,
            &[EndpointSpec {
                ip: app_ip,
                port: target_port,
                mtls: false,
            }],
        )),
        ..Default::default()
    };
    if protocol == Protocol::Http2 {
        c.typed_extension_protocol_options = http_options(true, None);
    }
    c
}
