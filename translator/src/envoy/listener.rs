//! Listeners of the explicit-bind layout (`captureMode: NONE`): one inbound
//! listener per served target port, bound on the workload IP, and one
//! outbound HTTP listener the client calls explicitly. The filter chains
//! of a served port are built here for both layouts ([`port_chains`]);
//! the capture layout's listeners are in `capture.rs`.

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
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use std::net::IpAddr;

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const ROUTER: &str = "envoy.filters.http.router";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

pub(super) fn router() -> HttpFilter {
    HttpFilter {
        name: ROUTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

pub(super) fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: HCM.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
    }
}

/// Where a set of inbound chains sends what it accepts: a cluster, the
/// stat prefix of its filters and the name of its HTTP virtual host.
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    pub cluster: String,
    pub stat_prefix: String,
    pub virtual_host: String,
}

impl Upstream {
    /// `inbound|PORT||`: the application's port.
    pub fn app(target_port: u16) -> Upstream {
        Upstream {
            cluster: names::inbound_cluster(target_port),
            stat_prefix: format!("inbound_{target_port}"),
            virtual_host: format!("inbound|http|{target_port}"),
        }
    }
}

/// The inbound HTTP connection manager. XFCC: SANITIZE_SET with subject,
/// URI and DNS, so the app sees exactly the verified peer of this
/// connection. Istio's sidecar default APPEND_FORWARD would keep an XFCC
/// that an mTLS peer put on its own request; the server sidecar is the
/// first hop we trust, so we replace instead (decision 6). On plaintext
/// connections Envoy removes any XFCC.
fn inbound_hcm(up: &Upstream) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: up.stat_prefix.clone(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: up.cluster.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: up.virtual_host.clone(),
                    domains: vec!["*".into()],
                    routes: vec![super::route::route_to(up.cluster.clone())],
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

pub(super) fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
    }
}

/// The filter that hands an accepted connection to `up`: an HTTP
/// connection manager for HTTP, else a TCP proxy.
pub(super) fn app_filter(up: &Upstream, http: bool) -> Filter {
    if http {
        hcm_filter(&inbound_hcm(up))
    } else {
        tcp_proxy_filter(&up.stat_prefix, &up.cluster)
    }
}

/// What a filter chain matches: the connection's original destination
/// port (on `virtualInbound`), its transport and its ALPN.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Match<'a> {
    pub port: Option<u16>,
    pub transport: Option<&'a str>,
    pub alpns: &'a [&'a str],
}

pub(super) fn chain(
    name: &str,
    m: Match<'_>,
    socket: Option<envoy_types::pb::envoy::config::core::v3::TransportSocket>,
    filters: Vec<Filter>,
) -> FilterChain {
    let filter_chain_match = (m.port.is_some() || m.transport.is_some() || !m.alpns.is_empty())
        .then(|| FilterChainMatch {
            destination_port: m.port.map(|p| UInt32Value {
                value: u32::from(p),
            }),
            transport_protocol: m.transport.unwrap_or_default().to_string(),
            application_protocols: m.alpns.iter().map(|s| s.to_string()).collect(),
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

/// The filter chains of one served port, by its effective mode:
/// - STRICT: a TLS chain only; plaintext finds no chain and is closed
///   (curl exit 56), as istiod's `filter_chain_not_found`.
/// - PERMISSIVE: TLS with an Istio ALPN is terminated as mTLS, plaintext
///   goes to a plaintext chain; for TCP ports other TLS passes through.
/// - DISABLE: plaintext only.
///
/// The explicit-bind listener of the port uses them as they are; the
/// capture layout's `virtualInbound` adds the port to every match and
/// `prefix` (`0.0.0.0_PORT/`) to every name, so both layouts take the same
/// decisions.
pub(super) fn port_chains(
    target_port: u16,
    protocol: Protocol,
    mode: ServerMode,
    server_tls: &DownstreamTlsContext,
    port_match: Option<u16>,
    prefix: &str,
) -> Vec<FilterChain> {
    let up = Upstream::app(target_port);
    let http = protocol.is_http();
    let mtls_socket = || Some(tls::tls_socket_downstream(server_tls));
    let name = |n: &str| format!("{prefix}{n}");
    let on = |transport: Option<&'static str>, alpns: &'static [&'static str]| Match {
        port: port_match,
        transport,
        alpns,
    };
    match mode {
        ServerMode::Strict => vec![chain(
            &name(names::CHAIN_MTLS),
            on(Some("tls"), &[]),
            mtls_socket(),
            vec![app_filter(&up, http)],
        )],
        ServerMode::Permissive => {
            let mut chains = vec![
                chain(
                    &name(names::CHAIN_MTLS),
                    on(Some("tls"), tls::ISTIO_MTLS_ALPNS),
                    mtls_socket(),
                    vec![app_filter(&up, http)],
                ),
                chain(
                    &name(names::CHAIN_PLAINTEXT),
                    on(Some("raw_buffer"), &[]),
                    None,
                    vec![app_filter(&up, http)],
                ),
            ];
            if !http {
                chains.push(chain(
                    &name(names::CHAIN_TLS_PASSTHROUGH),
                    on(Some("tls"), &[]),
                    None,
                    vec![app_filter(&up, false)],
                ));
            }
            chains
        }
        ServerMode::Disable => vec![chain(
            &name(names::CHAIN_PLAINTEXT),
            on(None, &[]),
            None,
            vec![app_filter(&up, http)],
        )],
    }
}

pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The inbound listener for one target port, bound on the workload IP
/// (`captureMode: NONE`), with the filter chains of its effective mode
/// ([`port_chains`]).
pub fn inbound(
    ip: IpAddr,
    target_port: u16,
    protocol: Protocol,
    mode: ServerMode,
    server_tls: &DownstreamTlsContext,
) -> Listener {
    let filter_chains = port_chains(target_port, protocol, mode, server_tls, None, "");
    let listener_filters = if mode == ServerMode::Disable {
        Vec::new()
    } else {
        vec![tls_inspector()]
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
