//! The translation: a whole mesh in, every sidecar's resources out, with the
//! decisions that produced them and the diagnostics found on the way.
//!
//! Sharing: endpoints are the same for every sidecar and built once, the
//! outbound route configuration once per client namespace; outbound clusters depend only on which
//! DestinationRule each service resolves to for a client, so clients whose
//! choices are the same (in practice: most namespaces) share one map.

use crate::diag::Diagnostic;
use crate::envoy::cluster::{self, EndpointSpec, OutboundSpec};
use crate::envoy::{listener, names, route, tls};
use crate::model::{ClientTlsMode, Mesh, ObjectRef, Protocol};
use crate::resolve::{
    ClientDecision, ClientPolicies, Decided, PeerPolicies, ServerMode, WorkloadPeerPolicy,
};
use crate::xds::{ProxyResources, Resource, ResourceMap, ResourceType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Everything one sidecar gets, in shared pieces.
#[derive(Clone, Debug)]
pub struct ProxyPlan {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    pub ip: IpAddr,
    /// Inbound listeners and the outbound listener of this proxy.
    pub listeners: Arc<ResourceMap>,
    pub inbound_clusters: Arc<ResourceMap>,
    /// Shared with every client that resolves the same rules.
    pub outbound_clusters: Arc<ResourceMap>,
    /// Shared by all proxies.
    pub endpoints: Arc<ResourceMap>,
    /// Shared by the proxies of one namespace.
    pub routes: Arc<ResourceMap>,
}

impl ProxyPlan {
    /// The full per-type maps, as an ADS stream serves them.
    pub fn resources(&self) -> ProxyResources {
        let mut clusters: ResourceMap = (*self.outbound_clusters).clone();
        clusters.extend(
            self.inbound_clusters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        ProxyResources {
            clusters: Arc::new(clusters),
            endpoints: self.endpoints.clone(),
            listeners: self.listeners.clone(),
            routes: self.routes.clone(),
        }
    }
}

/// The server-side decision for one workload port, for `/debug/mtlsz`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerPort {
    pub namespace: String,
    pub workload: String,
    pub ip: IpAddr,
    /// Target (container) port.
    pub port: u16,
    /// `service:port` names that target it.
    pub services: Vec<String>,
    pub sidecar: bool,
    /// `None` when the workload has no sidecar: nothing enforces a mode.
    pub mode: Option<ServerMode>,
    pub scope: Option<crate::resolve::Scope>,
    pub by: Option<ObjectRef>,
}

/// The client-side decision for one client namespace and service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientPort {
    pub client_namespace: String,
    pub service: String,
    pub port: u16,
    /// `AUTO` (per endpoint), or the DestinationRule's mode.
    pub tls: String,
    pub by: Option<ObjectRef>,
    pub port_level: bool,
    /// For auto mTLS: the endpoints and whether each gets mTLS.
    pub endpoints: Vec<EndpointDecision>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointDecision {
    pub workload: String,
    pub ip: IpAddr,
    pub port: u16,
    pub mtls: bool,
}

#[derive(Debug, Default)]
pub struct Translation {
    pub proxies: BTreeMap<(String, String), ProxyPlan>,
    pub diagnostics: Vec<Diagnostic>,
    pub server_ports: Vec<ServerPort>,
    pub client_ports: Vec<ClientPort>,
}

impl Translation {
    pub fn proxy(&self, namespace: &str, pod: &str) -> Option<&ProxyPlan> {
        self.proxies.get(&(namespace.to_string(), pod.to_string()))
    }
}

/// Per workload: target port -> (protocol, service ports that target it,
/// `svc:port` names).
type TargetPorts = BTreeMap<u16, (Protocol, Vec<u16>, Vec<String>)>;

fn target_ports(mesh: &Mesh) -> Vec<TargetPorts> {
    let mut out = vec![TargetPorts::new(); mesh.workloads.len()];
    for (si, svc) in mesh.services.iter().enumerate() {
        let Some(eps) = mesh.index.service_endpoints.get(si) else {
            continue;
        };
        for &wi in eps {
            let (Some(w), Some(tp)) = (mesh.workloads.get(wi), out.get_mut(wi)) else {
                continue;
            };
            for p in &svc.ports {
                if let Some(t) = w.resolve_target(&p.target_port) {
                    let e = tp.entry(t).or_insert((p.protocol, Vec::new(), Vec::new()));
                    e.1.push(p.port);
                    e.2.push(format!("{}.{}:{}", svc.name, svc.namespace, p.port));
                }
            }
        }
    }
    out
}

fn shared(map: ResourceMap) -> Arc<ResourceMap> {
    Arc::new(map)
}

fn insert(map: &mut ResourceMap, r: Resource) {
    map.insert(r.name.clone(), Arc::new(r));
}

/// Translate the whole mesh.
pub fn translate(mesh: &Mesh) -> Translation {
    let mut diags = Vec::new();
    let peer = PeerPolicies::new(mesh, &mut diags);
    let tps = target_ports(mesh);
    peer.check_port_keys(
        &tps.iter()
            .map(|t| t.iter().map(|(k, v)| (*k, v.1.clone())).collect())
            .collect::<Vec<_>>(),
        &mut diags,
    );

    // Server side, per workload.
    let policies: Vec<Option<WorkloadPeerPolicy>> = mesh
        .workloads
        .iter()
        .map(|w| w.sidecar.then(|| peer.for_workload(w, &mut diags)))
        .collect();
    let mut server_ports = Vec::new();
    for (wi, w) in mesh.workloads.iter().enumerate() {
        let pol = policies.get(wi).and_then(Option::as_ref);
        for (port, (_, _, svcs)) in tps.get(wi).into_iter().flatten() {
            let d = pol.map(|p| p.for_port(*port));
            server_ports.push(ServerPort {
                namespace: w.namespace.clone(),
                workload: w.name.clone(),
                ip: w.ip,
                port: *port,
                services: svcs.clone(),
                sidecar: w.sidecar,
                mode: d.map(|d| d.mode),
                scope: d.map(|d| d.scope),
                by: d.and_then(|d| d.by.clone()),
            });
        }
    }
    let server_mode = |wi: usize, port: u16| -> Option<&Decided> {
        policies
            .get(wi)
            .and_then(Option::as_ref)
            .map(|p| p.for_port(port))
    };

    // Endpoints (shared by all) and per-service identities.
    let mut endpoints = ResourceMap::new();
    let mut service_eps: Vec<Vec<Vec<(usize, EndpointSpec)>>> =
        Vec::with_capacity(mesh.services.len());
    let mut service_sans: Vec<Vec<String>> = Vec::with_capacity(mesh.services.len());
    for (si, svc) in mesh.services.iter().enumerate() {
        let fqdn = mesh.fqdn(svc);
        let eps = mesh
            .index
            .service_endpoints
            .get(si)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let sans: BTreeSet<String> = eps
            .iter()
            .filter_map(|&wi| mesh.workloads.get(wi))
            .map(|w| mesh.spiffe_id(&w.namespace, &w.service_account))
            .collect();
        service_sans.push(sans.into_iter().collect());
        let mut per_port = Vec::with_capacity(svc.ports.len());
        for p in &svc.ports {
            let mut list: Vec<(usize, EndpointSpec)> = eps
                .iter()
                .filter_map(|&wi| {
                    let w = mesh.workloads.get(wi)?;
                    let t = w.resolve_target(&p.target_port)?;
                    let mtls = w.sidecar
                        && server_mode(wi, t).is_some_and(|d| d.mode != ServerMode::Disable);
                    Some((
                        wi,
                        EndpointSpec {
                            ip: w.ip,
                            port: t,
                            mtls,
                        },
                    ))
                })
                .collect();
            list.sort_by(|a, b| a.1.cmp(&b.1));
            let name = names::outbound_cluster(p.port, &fqdn);
            let specs: Vec<EndpointSpec> = list.iter().map(|(_, e)| e.clone()).collect();
            insert(
                &mut endpoints,
                Resource::new(
                    name.clone(),
                    ResourceType::Endpoint,
                    &cluster::load_assignment(&name, &specs),
                ),
            );
            per_port.push(list);
        }
        service_eps.push(per_port);
    }
    let endpoints = shared(endpoints);

    let route_name = names::outbound_route(mesh.config.outbound_port);
    // Per client namespace: bare service names resolve in the client's own
    // namespace only.
    let mut routes_by_ns: HashMap<String, Arc<ResourceMap>> = HashMap::new();

    // Client side: group clients by the rules they resolve to.
    let clients = ClientPolicies::new(mesh);
    crate::resolve::client::report_unsupported(mesh, &mut diags);
    let mut cluster_cache: HashMap<(usize, usize, Option<usize>), Arc<Resource>> = HashMap::new();
    let mut maps_by_choice: HashMap<Vec<Option<usize>>, Arc<ResourceMap>> = HashMap::new();
    let mut group_maps: HashMap<(String, Vec<usize>), Arc<ResourceMap>> = HashMap::new();
    let mut client_ports = Vec::new();
    let mut reported_ns: BTreeSet<String> = BTreeSet::new();
    let mut conflict_seen: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut proxies = BTreeMap::new();
    let server_tls = tls::downstream_mtls(&mesh.config.trust_domain);

    for (wi, w) in mesh.workloads.iter().enumerate() {
        if !w.sidecar {
            continue;
        }
        let selected = clients.selector_rules_for(&w.namespace, &w.labels);
        let group_key = (w.namespace.clone(), selected.clone());
        let outbound_clusters = match group_maps.get(&group_key) {
            Some(m) => m.clone(),
            None => {
                let choice: Vec<Option<usize>> = mesh
                    .services
                    .iter()
                    .map(|s| clients.rule_for(&w.namespace, &selected, s))
                    .collect();
                let report = selected.is_empty() && reported_ns.insert(w.namespace.clone());
                let map = match maps_by_choice.get(&choice) {
                    Some(m) if !report => m.clone(),
                    _ => {
                        let mut map = ResourceMap::new();
                        for (si, svc) in mesh.services.iter().enumerate() {
                            let rule = choice.get(si).copied().flatten();
                            let fqdn = mesh.fqdn(svc);
                            for (pi, p) in svc.ports.iter().enumerate() {
                                let decision = clients.decide(rule, p.port);
                                let eps = service_eps
                                    .get(si)
                                    .and_then(|v| v.get(pi))
                                    .map(Vec::as_slice)
                                    .unwrap_or(&[]);
                                if let Some(ri) = rule
                                    && decision.tls.is_some()
                                    && conflict_seen.insert((ri, si, pi))
                                {
                                    conflicts(
                                        mesh,
                                        &decision,
                                        &fqdn,
                                        p.port,
                                        eps,
                                        &server_mode,
                                        &mut diags,
                                    );
                                }
                                if report {
                                    client_ports.push(client_report(
                                        mesh,
                                        &w.namespace,
                                        &fqdn,
                                        p.port,
                                        &decision,
                                        eps,
                                    ));
                                }
                                let r = cluster_cache
                                    .entry((si, pi, rule))
                                    .or_insert_with(|| {
                                        let name = names::outbound_cluster(p.port, &fqdn);
                                        let c = cluster::outbound(&OutboundSpec {
                                            name: name.clone(),
                                            fqdn: &fqdn,
                                            port: p.port,
                                            protocol: p.protocol,
                                            decision: &decision,
                                            sans: service_sans
                                                .get(si)
                                                .map(Vec::as_slice)
                                                .unwrap_or(&[]),
                                        });
                                        Arc::new(Resource::new(name, ResourceType::Cluster, &c))
                                    })
                                    .clone();
                                map.insert(r.name.clone(), r);
                            }
                        }
                        maps_by_choice
                            .entry(choice)
                            .or_insert_with(|| shared(map))
                            .clone()
                    }
                };
                group_maps.insert(group_key, map.clone());
                map
            }
        };

        let mut listeners = ResourceMap::new();
        let mut inbound_clusters = ResourceMap::new();
        let app_ip = w.app_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for (port, (protocol, _, _)) in tps.get(wi).into_iter().flatten() {
            let mode = server_mode(wi, *port)
                .map(|d| d.mode)
                .unwrap_or(ServerMode::Permissive);
            let l = listener::inbound(w.ip, *port, *protocol, mode, &server_tls);
            insert(
                &mut listeners,
                Resource::new(l.name.clone(), ResourceType::Listener, &l),
            );
            let c = cluster::inbound(*port, app_ip, *protocol);
            insert(
                &mut inbound_clusters,
                Resource::new(c.name.clone(), ResourceType::Cluster, &c),
            );
        }
        let out = listener::outbound(w.ip, mesh.config.outbound_port);
        insert(
            &mut listeners,
            Resource::new(out.name.clone(), ResourceType::Listener, &out),
        );
        proxies.insert(
            (w.namespace.clone(), w.name.clone()),
            ProxyPlan {
                namespace: w.namespace.clone(),
                pod: w.name.clone(),
                service_account: w.service_account.clone(),
                ip: w.ip,
                listeners: shared(listeners),
                inbound_clusters: shared(inbound_clusters),
                outbound_clusters,
                endpoints: endpoints.clone(),
                routes: routes_by_ns
                    .entry(w.namespace.clone())
                    .or_insert_with(|| {
                        let mut m = ResourceMap::new();
                        let rc = route::outbound_routes(mesh, route_name.clone(), &w.namespace);
                        insert(
                            &mut m,
                            Resource::new(route_name.clone(), ResourceType::Route, &rc),
                        );
                        shared(m)
                    })
                    .clone(),
            },
        );
    }
    diags.sort();
    diags.dedup();
    Translation {
        proxies,
        diagnostics: diags,
        server_ports,
        client_ports,
    }
}

fn tls_name(decision: &ClientDecision) -> String {
    match &decision.tls {
        None => "AUTO".into(),
        Some(t) => match t.mode() {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
        .into(),
    }
}

fn client_report(
    mesh: &Mesh,
    client_ns: &str,
    fqdn: &str,
    port: u16,
    decision: &ClientDecision,
    eps: &[(usize, EndpointSpec)],
) -> ClientPort {
    let explicit = decision.tls.as_ref().map(|t| t.mode());
    ClientPort {
        client_namespace: client_ns.to_string(),
        service: fqdn.to_string(),
        port,
        tls: tls_name(decision),
        by: decision.by.clone(),
        port_level: decision.port_level,
        endpoints: eps
            .iter()
            .map(|(wi, e)| EndpointDecision {
                workload: mesh
                    .workloads
                    .get(*wi)
                    .map(|w| format!("{}/{}", w.namespace, w.name))
                    .unwrap_or_default(),
                ip: e.ip,
                port: e.port,
                mtls: match explicit {
                    None => e.mtls,
                    Some(m) => m == ClientTlsMode::IstioMutual,
                },
            })
            .collect(),
    }
}

/// A DestinationRule whose TLS contradicts what the server accepts.
fn conflicts<'a>(
    mesh: &Mesh,
    decision: &ClientDecision,
    fqdn: &str,
    port: u16,
    eps: &[(usize, EndpointSpec)],
    server_mode: &dyn Fn(usize, u16) -> Option<&'a Decided>,
    diags: &mut Vec<Diagnostic>,
) {
    let (Some(by), Some(tls)) = (&decision.by, &decision.tls) else {
        return;
    };
    let field = if decision.port_level {
        "spec.trafficPolicy.portLevelSettings.tls.mode"
    } else {
        "spec.trafficPolicy.tls.mode"
    };
    for (wi, e) in eps {
        let Some(w) = mesh.workloads.get(*wi) else {
            continue;
        };
        let server = server_mode(*wi, e.port);
        let why = match (tls.mode(), w.sidecar, server) {
            (ClientTlsMode::Disable | ClientTlsMode::Simple, true, Some(d))
                if d.mode == ServerMode::Strict =>
            {
                Some(format!(
                    "clients send {} to {fqdn}:{port}, but {}/{} port {} is STRICT ({}): requests fail with 503",
                    if tls.mode() == ClientTlsMode::Disable {
                        "plaintext"
                    } else {
                        "non-mesh TLS"
                    },
                    w.namespace,
                    w.name,
                    e.port,
                    describe(d)
                ))
            }
            (ClientTlsMode::IstioMutual, false, _) => Some(format!(
                "clients send mTLS to {fqdn}:{port}, but {}/{} has no sidecar to terminate it: requests fail with 503",
                w.namespace, w.name
            )),
            (ClientTlsMode::IstioMutual, true, Some(d)) if d.mode == ServerMode::Disable => {
                Some(format!(
                    "clients send mTLS to {fqdn}:{port}, but {}/{} port {} is DISABLE ({}): requests fail with 503",
                    w.namespace,
                    w.name,
                    e.port,
                    describe(d)
                ))
            }
            _ => None,
        };
        if let Some(message) = why {
            diags.push(Diagnostic::conflict(
                by.clone(),
                Some(field.into()),
                message,
            ));
        }
    }
}

fn describe(d: &Decided) -> String {
    match &d.by {
        Some(by) => format!("{by}, {:?} scope", d.scope)
            .to_lowercase()
            .replacen(&by.to_string().to_lowercase(), &by.to_string(), 1),
        None => "the default".into(),
    }
}
