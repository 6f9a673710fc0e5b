//! The capture layout, for sidecars whose pod redirects its TCP traffic to
//! Envoy with iptables (node metadata `INTERCEPTION_MODE: REDIRECT`, the
//! layout istiod builds for injected pods; `xds-server iptables` programs
//! the rules).
//!
//! - `virtualOutbound` (0.0.0.0:15001, `use_original_dst`): Envoy hands
//!   each redirected connection to the listener of its original
//!   destination: `0.0.0.0_PORT` for an HTTP service port (routing by
//!   `Host` through the route configuration `PORT`), `VIP_PORT` for a TCP
//!   service port (a TCP proxy to the service's cluster). Those listeners
//!   do not bind (`bind_to_port: false`). Anything else goes to
//!   `PassthroughCluster`, its original destination (Istio's default
//!   `outboundTrafficPolicy: ALLOW_ANY`).
//! - `virtualInbound` (0.0.0.0:15006, `original_dst`, `tls_inspector`,
//!   `http_inspector`): per target port a Service selects, the same filter
//!   chains as the explicit-bind listener of that port, with the port in
//!   their match; for every other port, passthrough chains with the
//!   workload's effective mode (a `portLevelMtls` port no Service targets
//!   gets its own), to `InboundPassthroughCluster`.
//! - Inbound clusters are ORIGINAL_DST with source address 127.0.0.6, so
//!   the connection to the application leaves Envoy to the pod's own
//!   address and the iptables rules let it through (`-s 127.0.0.6/32 -o lo
//!   -j RETURN`) instead of capturing it again.

use super::listener::{Match, Upstream, app_filter, chain, hcm_filter, router, tcp_proxy_filter};
use super::names::capture::*;
use super::{ads_config_source, any, names, seconds, socket_address, tls};
use crate::model::Protocol;
use crate::resolve::ServerMode;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, SocketAddress, TrafficDirection, socket_address as sa,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, Listener, ListenerFilter, ListenerFilterChainMatchPredicate, listener_filter,
    listener_filter_chain_match_predicate as predicate,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::BoolValue;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Where iptables sends outbound connections (`ISTIO_REDIRECT`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Where iptables sends inbound connections (`ISTIO_IN_REDIRECT`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// The source of Envoy's connections to the application; the iptables
/// rules return it instead of capturing it (Istio's
/// `InboundPassthroughBindIpv4`).
pub const INBOUND_PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Istio's ALPNs of HTTP over Istio mTLS (`mtlsHTTPALPNs`): what
/// istio-proxy clients offer after detecting HTTP.
const MTLS_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// Istio's ALPNs of TCP over Istio mTLS (`mtlsTCPWithMxcALPNs`); our own
/// clients offer `istio`.
const MTLS_TCP_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];
/// What `http_inspector` reports for plaintext HTTP (`plaintextHTTPALPNs`).
const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.1", "h2c"];

const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

fn no_bind() -> Option<BoolValue> {
    Some(BoolValue { value: false })
}

/// `0.0.0.0:15001`: every outbound connection iptables redirected, handed
/// by its original destination to the listener of that address (exact
/// address first, then 0.0.0.0 with the port). A connection whose original
/// destination is 15001 itself would loop: it gets the blackhole.
pub fn virtual_outbound() -> Listener {
    Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address(ANY_V4, OUTBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![
            chain(
                CHAIN_OUTBOUND_BLACKHOLE,
                Match {
                    port: Some(OUTBOUND_CAPTURE_PORT),
                    ..Default::default()
                },
                None,
                vec![tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
            ),
            chain(
                CHAIN_OUTBOUND_CATCHALL,
                Match::default(),
                None,
                vec![tcp_proxy_filter(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER)],
            ),
        ],
        ..Default::default()
    }
}

/// `0.0.0.0_PORT`: the HTTP service ports numbered PORT, whatever the
/// destination address; the route configuration `PORT` picks the service
/// by `Host` (or sends it to its original destination).
pub fn outbound_http(port: u16) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_0.0.0.0_{port}"),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source(false)),
            route_config_name: port.to_string(),
        })),
        http_filters: vec![router()],
        ..Default::default()
    };
    Listener {
        name: names::listener(ANY_V4, port),
        address: Some(socket_address(ANY_V4, port)),
        bind_to_port: no_bind(),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            name: format!("0.0.0.0_{port}"),
            filters: vec![hcm_filter(&hcm)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `VIP_PORT` (or `0.0.0.0_PORT` for a service without a cluster IP): a
/// TCP proxy to the service port's cluster.
pub fn outbound_tcp(vip: Option<IpAddr>, port: u16, cluster: &str) -> Listener {
    let ip = vip.unwrap_or(ANY_V4);
    let name = names::listener(ip, port);
    Listener {
        name: name.clone(),
        address: Some(socket_address(ip, port)),
        bind_to_port: no_bind(),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![FilterChain {
            name,
            filters: vec![tcp_proxy_filter(cluster, cluster)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A port a Service targets on the workload, as `virtualInbound` serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedPort {
    pub port: u16,
    pub protocol: Protocol,
    pub mode: ServerMode,
}

/// The modes of the ports no Service targets: the workload's effective
/// mode, and the `portLevelMtls` ports that differ from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthrough {
    pub mode: ServerMode,
    pub ports: BTreeMap<u16, ServerMode>,
}

/// The passthrough chains of one mode (Istio's options for a port of
/// unknown protocol, `getFilterChainMatchOptions(mode, Auto)`), to
/// `InboundPassthroughCluster`, for every port (`port: None`) or one.
/// HTTP is recognised by ALPN: Istio's mTLS HTTP ALPNs, or what
/// `http_inspector` reports for plaintext.
fn passthrough_chains(
    port: Option<u16>,
    mode: ServerMode,
    server_tls: &DownstreamTlsContext,
) -> Vec<FilterChain> {
    let up = Upstream {
        cluster: INBOUND_PASSTHROUGH_CLUSTER.into(),
        stat_prefix: INBOUND_PASSTHROUGH_CLUSTER.into(),
        virtual_host: "inbound|http|0".into(),
    };
    let prefix = match port {
        Some(p) => format!("{VIRTUAL_INBOUND}_{p}/"),
        None => format!("{VIRTUAL_INBOUND}/"),
    };
    let mtls = || Some(tls::tls_socket_downstream(server_tls));
    let on = |transport: Option<&'static str>, alpns: &'static [&'static str]| Match {
        port,
        transport,
        alpns,
    };
    let c = |name: &str, m, socket, http| {
        chain(
            &format!("{prefix}{name}"),
            m,
            socket,
            vec![app_filter(&up, http)],
        )
    };
    match mode {
        ServerMode::Strict => vec![
            c("mtls-http", on(Some("tls"), MTLS_HTTP_ALPNS), mtls(), true),
            c("mtls", on(Some("tls"), &[]), mtls(), false),
        ],
        ServerMode::Permissive => vec![
            c("mtls-http", on(Some("tls"), MTLS_HTTP_ALPNS), mtls(), true),
            c(
                "plaintext-http",
                on(Some("raw_buffer"), PLAINTEXT_HTTP_ALPNS),
                None,
                true,
            ),
            c("mtls", on(Some("tls"), MTLS_TCP_ALPNS), mtls(), false),
            c("plaintext", on(Some("raw_buffer"), &[]), None, false),
            c("tls-passthrough", on(Some("tls"), &[]), None, false),
        ],
        // No transport in the match: an application's own TLS to a DISABLE
        // port passes through like any other bytes, as it does on the
        // explicit-bind listener of a DISABLE port.
        ServerMode::Disable => vec![
            c("plaintext-http", on(None, PLAINTEXT_HTTP_ALPNS), None, true),
            c("plaintext", on(None, &[]), None, false),
        ],
    }
}

/// A predicate on the destination port: one of `ports`.
fn ports_predicate(ports: &[u16]) -> ListenerFilterChainMatchPredicate {
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|&p| ListenerFilterChainMatchPredicate {
            rule: Some(predicate::Rule::DestinationPortRange(Int32Range {
                start: i32::from(p),
                end: i32::from(p) + 1,
            })),
        })
        .collect();
    if rules.len() == 1 {
        rules.swap_remove(0)
    } else {
        ListenerFilterChainMatchPredicate {
            rule: Some(predicate::Rule::OrMatch(predicate::MatchSet { rules })),
        }
    }
}

fn not(p: ListenerFilterChainMatchPredicate) -> ListenerFilterChainMatchPredicate {
    ListenerFilterChainMatchPredicate {
        rule: Some(predicate::Rule::NotMatch(Box::new(p))),
    }
}

/// An inspector enabled only where some chain needs it. `needed` maps a
/// destination port (0: the ports without chains of their own) to whether
/// a chain of that port matches on what the inspector detects. The
/// inspectors wait for the client's first bytes, so a server-first
/// protocol on a port that does not need them is never held up (as istiod
/// does, `populateListenerFilters`).
fn inspector(
    name: &str,
    config: envoy_types::pb::google::protobuf::Any,
    needed: &BTreeMap<u16, bool>,
) -> Option<ListenerFilter> {
    if !needed.values().any(|n| *n) {
        return None;
    }
    let default = needed.get(&0).copied().unwrap_or(false);
    // The ports that are the exception to the default.
    let exceptions: Vec<u16> = needed
        .iter()
        .filter(|(p, n)| **p != 0 && **n != default)
        .map(|(p, _)| *p)
        .collect();
    let filter_disabled = match (default, exceptions.is_empty()) {
        (true, true) => None,
        // On by default: off for the exceptions.
        (true, false) => Some(ports_predicate(&exceptions)),
        // Off by default: on only for the exceptions.
        (false, _) => Some(not(ports_predicate(&exceptions))),
    };
    Some(ListenerFilter {
        name: name.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(config)),
        filter_disabled,
    })
}

/// original_dst, then the TLS inspector, then the HTTP inspector (which
/// skips connections the TLS inspector saw as TLS), each only where a
/// chain needs it.
fn inbound_listener_filters(chains: &[FilterChain]) -> Vec<ListenerFilter> {
    let mut tls_needed: BTreeMap<u16, bool> = BTreeMap::new();
    let mut http_needed: BTreeMap<u16, bool> = BTreeMap::new();
    for c in chains {
        let m = c.filter_chain_match.clone().unwrap_or_default();
        let port = m
            .destination_port
            .map(|p| u16::try_from(p.value).unwrap_or(0))
            .unwrap_or(0);
        let tls = m.transport_protocol == "tls";
        let http = m
            .application_protocols
            .iter()
            .any(|a| PLAINTEXT_HTTP_ALPNS.contains(&a.as_str()));
        *tls_needed.entry(port).or_default() |= tls;
        *http_needed.entry(port).or_default() |= http;
    }
    let mut out = vec![ListenerFilter {
        name: ORIGINAL_DST.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }];
    out.extend(inspector(
        TLS_INSPECTOR,
        any(&envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector::default()),
        &tls_needed,
    ));
    out.extend(inspector(
        HTTP_INSPECTOR,
        any(&HttpInspector::default()),
        &http_needed,
    ));
    out
}

/// `0.0.0.0:15006`: every inbound connection iptables redirected, by its
/// original destination port. A served port gets the chains of its mode
/// ([`super::listener::port_chains`], so both layouts decide alike); other
/// ports get the passthrough chains; a connection to 15006 itself would
/// loop and gets the blackhole.
pub fn virtual_inbound(
    served: &[ServedPort],
    passthrough: &Passthrough,
    server_tls: &DownstreamTlsContext,
) -> Listener {
    let mut chains = vec![chain(
        CHAIN_INBOUND_BLACKHOLE,
        Match {
            port: Some(INBOUND_CAPTURE_PORT),
            ..Default::default()
        },
        None,
        vec![tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER)],
    )];
    chains.extend(passthrough_chains(None, passthrough.mode, server_tls));
    for (port, mode) in &passthrough.ports {
        if served.iter().any(|s| s.port == *port) || *port == INBOUND_CAPTURE_PORT {
            continue;
        }
        chains.extend(passthrough_chains(Some(*port), *mode, server_tls));
    }
    for s in served {
        chains.extend(super::listener::port_chains(
            s.port,
            s.protocol,
            s.mode,
            server_tls,
            Some(s.port),
            &format!("0.0.0.0_{}/", s.port),
        ));
    }
    Listener {
        name: VIRTUAL_INBOUND.into(),
        address: Some(socket_address(ANY_V4, INBOUND_CAPTURE_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters: inbound_listener_filters(&chains),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        ..Default::default()
    }
}

/// An ORIGINAL_DST cluster: each connection goes where it was going.
fn original_dst(name: &str, bind: Option<Ipv4Addr>) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(seconds(10)),
        upstream_bind_config: bind.map(|ip| BindConfig {
            source_address: Some(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(sa::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `inbound|PORT||`: to the application at the connection's original
/// destination (the pod's address and PORT), from 127.0.0.6.
pub fn inbound_cluster(target_port: u16, protocol: Protocol) -> Cluster {
    let mut c = original_dst(
        &names::inbound_cluster(target_port),
        Some(INBOUND_PASSTHROUGH_SOURCE),
    );
    if protocol == Protocol::Http2 {
        c.typed_extension_protocol_options = super::cluster::http2_options();
    }
    c
}

/// The clusters every captured sidecar has: `InboundPassthroughCluster`,
/// `PassthroughCluster` and `BlackHoleCluster`.
pub fn fixed_clusters() -> Vec<Cluster> {
    vec![
        original_dst(
            INBOUND_PASSTHROUGH_CLUSTER,
            Some(INBOUND_PASSTHROUGH_SOURCE),
        ),
        original_dst(PASSTHROUGH_CLUSTER, None),
        Cluster {
            name: BLACKHOLE_CLUSTER.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            connect_timeout: Some(seconds(10)),
            ..Default::default()
        },
    ]
}
