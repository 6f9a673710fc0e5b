//! Listeners: one inbound listener per served target port, bound on the
//! workload IP, and one outbound HTTP listener the client calls explicitly.

use super::{ads_config_source, any, names, socket_address, tls};
use crate::model::Protocol;
use crate::resolve::ServerMode;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::BoolValue;
use std::net::IpAddr;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const ROUTER: &str = "envoy.filters.http.router";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

fn router() -> HttpFilter {
    HttpFilter {
        name: ROUTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: HCM.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
    }
}

/// The inbound HTTP connection manager. XFCC: SANITIZE_SET with subject,
/// URI and DNS, so the app sees exactly the verified peer of this
/// connection. Istio's sidecar default APPEND_FORWARD would keep an XFCC
/// that an mTLS peer put on its own request; the server sidecar is the
/// first hop we trust, so we replace instead (decision 6). On plaintext
/// connections Envoy removes any XFCC.
fn inbound_hcm(target_port: u16) -> HttpConnectionManager {
    let cluster = names::inbound_cluster(target_port);
    HttpConnectionManager {
        stat_prefix: format!("inbound_{target_port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: cluster.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{target_port}"),
                    domains: vec!["*".into()],
                    routes: vec![super::route::route_to(cluster)],
                    ..Default::default()
                }],
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            },
        )),
        http_filters: vec![router()],
        forward_client_cert_details: http_connection_manager::ForwardClientCertDetails::SanitizeSet
            as i32,
        set_current_client_cert_details: Some(
            http_connection_manager::SetCurrentClientCertDetails {
                subject: Some(BoolValue { value: true }),
                uri: true,
                dns: true,
                ..Default::default()
            },
        ),
        server_name: "istio-envoy".into(),
        ..Default::default()
    }
}

fn tcp_filter(target_port: u16) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: format!("inbound_{target_port}"),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
            names::inbound_cluster(target_port),
        )),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

fn app_filter(target_port: u16, protocol: Protocol) -> Filter {
    if protocol.is_http() {
        hcm_filter(&inbound_hcm(target_port))
    } else {
        tcp_filter(target_port)
    }
}

fn chain(
    name: &str,
    transport: Option<&str>,
    alpns: &[&str],
    socket: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
    filters: Vec<Filter>,
) -> FilterChain {
    let filter_chain_match = transport.map(|t| FilterChainMatch {
        transport_protocol: t.to_string(),
        application_protocols: alpns.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    });
    FilterChain {
        name: name.to_string(),
        filter_chain_match,
        transport_socket: socket,
        filters,
        ..Default::default()
    }
}

/// The inbound listener for one target port, with the filter chains of its
/// effective mode:
/// - STRICT: a TLS chain only; plaintext finds no chain and is closed
///   (curl exit 56), as istiod's `filter_chain_not_found`.
/// - PERMISSIVE: TLS with an Istio ALPN is terminated as mTLS, plaintext
///   goes to a plaintext chain; for TCP ports other TLS passes through.
/// - DISABLE: plaintext only.
pub fn inbound(
    ip: IpAddr,
    target_port: u16,
    protocol: Protocol,
    mode: ServerMode,
    server_tls: &DownstreamTlsContext,
) -> Listener {
    let mtls_socket = || Some(tls::tls_socket_downstream(server_tls));
    let filter_chains = match mode {
        ServerMode::Strict => vec![chain(
            names::CHAIN_MTLS,
            Some("tls"),
            &[],
            mtls_socket(),
            vec![app_filter(target_port, protocol)],
        )],
        ServerMode::Permissive => {
            let mut chains = vec![
                chain(
                    names::CHAIN_MTLS,
                    Some("tls"),
                    tls::ISTIO_MTLS_ALPNS,
                    mtls_socket(),
                    vec![app_filter(target_port, protocol)],
                ),
                chain(
                    names::CHAIN_PLAINTEXT,
                    Some("raw_buffer"),
                    &[],
                    None,
                    vec![app_filter(target_port, protocol)],
                ),
            ];
            if !protocol.is_http() {
                chains.push(chain(
                    names::CHAIN_TLS_PASSTHROUGH,
                    Some("tls"),
                    &[],
                    None,
                    vec![tcp_filter(target_port)],
                ));
            }
            chains
        }
        ServerMode::Disable => vec![chain(
            names::CHAIN_PLAINTEXT,
            None,
            &[],
            None,
            vec![app_filter(target_port, protocol)],
        )],
    };
    let listener_filters = if mode == ServerMode::Disable {
        Vec::new()
    } else {
        vec![ListenerFilter {
            name: TLS_INSPECTOR.into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }]
    };
    Listener {
        name: names::listener(ip, target_port),
        address: Some(socket_address(ip, target_port)),
        filter_chains,
        listener_filters,
        ..Default::default()
    }
}

/// The outbound HTTP listener: the client addresses it explicitly (the
/// `captureMode: NONE` egress listener) and names the service in `Host`.
/// XFCC is left at Envoy's default, SANITIZE: what the app sent is dropped.
pub fn outbound(ip: IpAddr, port: u16) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_{port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source(false)),
            route_config_name: names::outbound_route(port),
        })),
        http_filters: vec![router()],
        ..Default::default()
    };
    Listener {
        name: names::listener(ip, port),
        address: Some(socket_address(ip, port)),
        filter_chains: vec![FilterChain {
            name: "outbound".into(),
            filters: vec![hcm_filter(&hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}
