//! The simulation of `sim.rs` for sidecars with iptables capture
//! (`INTERCEPTION_MODE: REDIRECT`): the client's `virtualOutbound` hands
//! the call to the listener of its original destination (exact address,
//! then 0.0.0.0 with the port, else its own catch-all), that listener picks
//! a cluster (HTTP: the route configuration of the port, by `Host`; TCP:
//! the TCP proxy's cluster), and the server's `virtualInbound` picks a
//! filter chain by destination port first, then transport and ALPN.

use super::sim::{Outcome, client_socket, decode, endpoint_addr, pick_chain};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use translator::model::Mesh;
use translator::{Interception, ProxyResources, Translation};

fn listener_addr(l: &Listener) -> (String, u16) {
    let Some(address::Address::SocketAddress(sa)) =
        l.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("listener {} has no socket address", l.name);
    };
    let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
        panic!("listener {} has no port", l.name);
    };
    (sa.address.clone(), p as u16)
}

fn listeners(res: &ProxyResources) -> Vec<Listener> {
    res.listeners.values().map(|r| decode(&r.body)).collect()
}

/// The listener `virtualOutbound` hands a connection to `ip:port` to: the
/// exact address, else 0.0.0.0:port, else none (its own chains).
fn outbound_listener(res: &ProxyResources, ip: &str, port: u16) -> Option<Listener> {
    let all = listeners(res);
    let find = |want: &str| {
        all.iter()
            .find(|l| {
                l.name != "virtualOutbound"
                    && l.name != "virtualInbound"
                    && listener_addr(l) == (want.to_string(), port)
            })
            .cloned()
    };
    find(ip).or_else(|| find("0.0.0.0"))
}

/// The cluster a listener sends a call with `host` to.
fn cluster_of(res: &ProxyResources, l: &Listener, host: &str) -> String {
    let chain = l.filter_chains.first().expect("one chain");
    let f = chain.filters.first().expect("one filter");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("filter without config");
    };
    if any.type_url.ends_with("TcpProxy") {
        let t: TcpProxy = decode(any);
        let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = t.cluster_specifier else {
            panic!("tcp proxy without cluster");
        };
        return c;
    }
    let hcm: HttpConnectionManager = decode(any);
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("outbound HCM without RDS");
    };
    let rc: RouteConfiguration = decode(
        &res.routes
            .get(&rds.route_config_name)
            .unwrap_or_else(|| panic!("route {} missing", rds.route_config_name))
            .body,
    );
    // Envoy: an exact domain beats the `*` wildcard.
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == host))
        .or_else(|| {
            rc.virtual_hosts
                .iter()
                .find(|v| v.domains.iter().any(|d| d == "*"))
        })
        .expect("a virtual host");
    let Some(route::Action::Route(action)) = vh.routes.first().and_then(|r| r.action.clone())
    else {
        panic!("route without action");
    };
    let Some(route_action::ClusterSpecifier::Cluster(c)) = action.cluster_specifier else {
        panic!("route without cluster");
    };
    c
}

/// The server's chain for a connection to `port` that is TLS with `alpn`
/// (`Some`) or plaintext (`None`): Envoy narrows by destination port first,
/// falling back to the chains without one only when no chain names it.
fn pick_inbound<'a>(
    l: &'a Listener,
    port: u16,
    alpn: Option<&[String]>,
) -> Option<&'a FilterChain> {
    let port_of = |c: &FilterChain| {
        c.filter_chain_match
            .as_ref()
            .and_then(|m| m.destination_port)
            .map(|p| p.value as u16)
    };
    let exact: Vec<FilterChain> = l
        .filter_chains
        .iter()
        .filter(|c| port_of(c) == Some(port))
        .cloned()
        .collect();
    let pool = if exact.is_empty() {
        l.filter_chains
            .iter()
            .filter(|c| port_of(c).is_none())
            .cloned()
            .collect()
    } else {
        exact
    };
    let narrowed = Listener {
        filter_chains: pool,
        ..Default::default()
    };
    let name = pick_chain(&narrowed, alpn)?.name.clone();
    l.filter_chains
        .iter()
        .find(|c| c.name == name && (port_of(c) == Some(port) || port_of(c).is_none()))
}

fn server_outcome(
    t: &Translation,
    server: (&str, &str),
    port: u16,
    wire: Option<Vec<String>>,
    client_has_sidecar: bool,
) -> Outcome {
    let Some(splan) = t.proxy(server.0, server.1) else {
        return match wire {
            None => Outcome::Plain,
            Some(_) => Outcome::Upstream503,
        };
    };
    let res = splan.resources_for(Interception::Redirect);
    let vi: Listener = decode(
        &res.listeners
            .get("virtualInbound")
            .expect("virtualInbound exists")
            .body,
    );
    match pick_inbound(&vi, port, wire.as_deref()) {
        // A client sidecar turns the closed connection into a 503.
        None if client_has_sidecar => Outcome::Upstream503,
        None => Outcome::Reset,
        Some(chain) => match (wire.is_some(), chain.transport_socket.is_some()) {
            (true, true) => Outcome::Mtls,
            (false, false) => Outcome::Plain,
            _ => Outcome::Upstream503,
        },
    }
}

/// A call from `client` (namespace/pod) to `service.namespace:port`
/// (its `endpoint`-th endpoint), every sidecar captured.
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
    let (_, cw) = mesh.workload(client.0, client.1).expect("client exists");
    let svc = mesh
        .services
        .iter()
        .find(|s| s.name == service.0 && s.namespace == service.1)
        .expect("service exists");
    let any_plan = t.proxies.values().next().expect("some sidecar");
    let cla: ClusterLoadAssignment = decode(
        &any_plan
            .endpoints
            .get(&cluster_name)
            .expect("endpoints exist")
            .body,
    );
    let (ip, target, meta_mtls) = endpoint_addr(&cla, endpoint).expect("endpoint exists");
    let wire = match t.proxy(client.0, client.1) {
        None => None,
        Some(plan) => {
            let res = plan.resources_for(Interception::Redirect);
            // The application dials the cluster IP (or, without one, some
            // address of the port) with the service's name in Host.
            let dial = svc
                .cluster_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "10.255.255.254".into());
            let l = outbound_listener(&res, &dial, port)
                .unwrap_or_else(|| panic!("{} has no listener for {dial}:{port}", client.1));
            let host = format!("{}.{}:{port}", service.0, service.1);
            let chosen = cluster_of(&res, &l, &host);
            assert_eq!(chosen, cluster_name, "{} routes {host} elsewhere", client.1);
            let cluster: Cluster = decode(&res.clusters.get(&cluster_name).expect("cluster").body);
            client_socket(&cluster, meta_mtls)
        }
    };
    let server = mesh
        .workloads
        .iter()
        .find(|w| w.ip.to_string() == ip)
        .expect("endpoint is a workload");
    server_outcome(
        t,
        (&server.namespace, &server.name),
        target,
        wire,
        cw.sidecar,
    )
}

/// A call from `client` straight to `server`'s pod IP on `port` (no
/// Service): a captured client sends it through `PassthroughCluster`, in
/// plaintext.
pub fn call_pod(
    mesh: &Mesh,
    t: &Translation,
    client: (&str, &str),
    server: (&str, &str),
    port: u16,
) -> Outcome {
    let (_, sw) = mesh.workload(server.0, server.1).expect("server exists");
    if let Some(plan) = t.proxy(client.0, client.1) {
        let res = plan.resources_for(Interception::Redirect);
        let l = outbound_listener(&res, &sw.ip.to_string(), port);
        assert!(
            l.is_none(),
            "a pod port is caught by listener {:?}",
            l.map(|l| l.name)
        );
        let cluster: Cluster = decode(
            &res.clusters
                .get("PassthroughCluster")
                .expect("cluster")
                .body,
        );
        assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
    }
    // Plaintext either way; a sidecar client sees the close as a reset too.
    match server_outcome(t, server, port, None, false) {
        Outcome::Upstream503 => Outcome::Reset,
        other => other,
    }
}
