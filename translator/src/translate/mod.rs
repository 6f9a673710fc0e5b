//! The translation: a whole mesh in, every sidecar's resources out, with the
//! decisions that produced them and the diagnostics found on the way.
//!
//! Sharing: load assignments are the same for every sidecar and built once;
//! the outbound route configuration once per client namespace; outbound
//! clusters depend only on which DestinationRule each service resolves to
//! for a client, so clients whose choices are the same (in practice: most
//! namespaces) share one map, and a cluster is built once per choice.
//! A Sidecar narrows the outbound pieces (clusters, load assignments,
//! routes) to the service ports it imports; proxies with the same imports
//! still share them, keyed by the scope's imports id.

mod capture;
mod plan;
mod report;

pub use capture::CapturePlan;
pub use plan::{ProxyPlan, Translation};
pub use report::{ClientPort, EndpointDecision, ServerPort};

use report::ClientGroup;
pub(crate) use report::{EndpointFacts, EndpointSpecs, Failure, failure, why};

use crate::envoy::cluster::{self, EndpointSpec, OutboundSpec};
use crate::envoy::{listener, names, route, tls};
use crate::model::{Mesh, Protocol};
use crate::resolve::{
    ClientPolicies, Decided, PeerPolicies, ServerMode, SidecarScopes, WorkloadPeerPolicy, in_scope,
};
use crate::xds::{Resource, ResourceMap, ResourceType};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Per workload: target port -> (protocol, service ports that target it,
/// `svc.ns:port` names).
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

/// Load assignments (shared by all), endpoint facts and each service's
/// SPIFFE identities.
fn endpoints<'a>(
    mesh: &Mesh,
    server_mode: &dyn Fn(usize, u16) -> Option<&'a Decided>,
) -> (Arc<ResourceMap>, EndpointSpecs, Vec<Vec<String>>) {
    let mut endpoints = ResourceMap::new();
    let mut specs_all = Vec::with_capacity(mesh.services.len());
    let mut sans_all = Vec::with_capacity(mesh.services.len());
    for (si, svc) in mesh.services.iter().enumerate() {
        let fqdn = mesh.service_fqdn(si);
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
        sans_all.push(sans.into_iter().collect());
        let mut per_port = Vec::with_capacity(svc.ports.len());
        for p in &svc.ports {
            let mut list: Vec<EndpointFacts> = eps
                .iter()
                .filter_map(|&wi| {
                    let w = mesh.workloads.get(wi)?;
                    let t = w.resolve_target(&p.target_port)?;
                    let server = server_mode(wi, t).cloned();
                    let mtls = w.sidecar
                        && server
                            .as_ref()
                            .is_some_and(|d| d.mode != ServerMode::Disable);
                    Some(EndpointFacts {
                        wi,
                        spec: EndpointSpec {
                            ip: w.ip,
                            port: t,
                            mtls,
                        },
                        sidecar: w.sidecar,
                        server,
                    })
                })
                .collect();
            list.sort_by(|a, b| a.spec.cmp(&b.spec));
            let name = names::outbound_cluster(p.port, fqdn);
            let specs: Vec<EndpointSpec> = list.iter().map(|e| e.spec.clone()).collect();
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
        specs_all.push(per_port);
    }
    (shared(endpoints), specs_all, sans_all)
}

/// The load assignments of the service ports a Sidecar imports, shared
/// with the full map resource by resource.
fn scoped_endpoints(
    mesh: &Mesh,
    all: &ResourceMap,
    imports: &crate::resolve::Imports,
) -> Arc<ResourceMap> {
    let mut out = ResourceMap::new();
    for (&si, ports) in imports {
        let fqdn = mesh.service_fqdn(si);
        for &port in ports {
            let name = names::outbound_cluster(port, fqdn);
            if let Some(r) = all.get(&name) {
                out.insert(name, r.clone());
            }
        }
    }
    shared(out)
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

    let (endpoints, endpoint_specs, service_sans) = endpoints(mesh, &server_mode);
    let routes = route::OutboundRoutes::new(mesh);
    let route_name = names::outbound_route(mesh.config.outbound_port);
    // (client namespace, imports id of its Sidecar scope) -> routes.
    let mut routes_by_ns: HashMap<(&str, Option<usize>), Arc<ResourceMap>> = HashMap::new();
    let mut endpoints_by_scope: HashMap<usize, Arc<ResourceMap>> = HashMap::new();
    let mut scopes = SidecarScopes::new(mesh, &mut diags);

    // Client side: group clients by the rules they resolve to.
    let clients = ClientPolicies::new(mesh, &mut diags);
    crate::resolve::client::report_rules(mesh, &mut diags);
    let mut cluster_cache: HashMap<(usize, usize, Option<usize>), Arc<Resource>> = HashMap::new();
    // (imports id of the Sidecar scope, rule per service) -> clusters.
    type MapKey = (Option<usize>, Arc<Vec<Option<usize>>>);
    let mut maps_by_choice: HashMap<MapKey, Arc<ResourceMap>> = HashMap::new();
    // (namespace, selector rules, Sidecar) -> (index in `client_groups`, clusters).
    type GroupKey<'a> = (&'a str, Vec<usize>, Option<crate::model::ObjectRef>);
    let mut group_maps: HashMap<GroupKey<'_>, (usize, Arc<ResourceMap>)> = HashMap::new();
    let mut client_groups: Vec<ClientGroup> = Vec::new();
    let mut conflict_seen: BTreeSet<(usize, usize, usize)> = BTreeSet::new();
    let mut proxies = BTreeMap::new();
    let server_tls = tls::downstream_mtls(&mesh.config.trust_domain);
    let mut capture = capture::CaptureShared::new(mesh, &mut diags);

    for (wi, w) in mesh.workloads.iter().enumerate() {
        if !w.sidecar {
            continue;
        }
        let selected = clients.selector_rules_for(&w.namespace, &w.labels);
        let scope = scopes.for_workload(wi, w, &mut diags);
        let imports_id = scope.as_ref().map(|s| s.imports_id);
        let group_key = (
            w.namespace.as_str(),
            selected,
            scope.as_ref().map(|s| s.by.clone()),
        );
        let outbound_clusters = match group_maps.get(&group_key) {
            Some((gi, m)) => {
                if let Some(g) = client_groups.get_mut(*gi) {
                    g.clients.push(wi);
                }
                m.clone()
            }
            None => {
                let choice: Arc<Vec<Option<usize>>> = Arc::new(
                    (0..mesh.services.len())
                        .map(|si| clients.rule_for(&w.namespace, &group_key.1, si))
                        .collect(),
                );
                let gi = client_groups.len();
                client_groups.push(ClientGroup {
                    namespace: w.namespace.clone(),
                    selected: group_key.1.clone(),
                    clients: vec![wi],
                    choice: choice.clone(),
                    scope: scope.clone(),
                });
                let map_key = (imports_id, choice);
                let map = match maps_by_choice.get(&map_key) {
                    Some(m) => m.clone(),
                    None => {
                        let mut map = ResourceMap::new();
                        for (si, svc) in mesh.services.iter().enumerate() {
                            let rule = map_key.1.get(si).copied().flatten();
                            let fqdn = mesh.service_fqdn(si);
                            for (pi, p) in svc.ports.iter().enumerate() {
                                if !in_scope(scope.as_deref(), si, p.port) {
                                    continue;
                                }
                                let r = cluster_cache
                                    .entry((si, pi, rule))
                                    .or_insert_with(|| {
                                        let decision = clients.decide(rule, p.port);
                                        let eps = endpoint_specs
                                            .get(si)
                                            .and_then(|v| v.get(pi))
                                            .map(Vec::as_slice)
                                            .unwrap_or(&[]);
                                        if let Some(ri) = rule
                                            && decision.tls.is_some()
                                            && conflict_seen.insert((ri, si, pi))
                                        {
                                            report::conflicts(
                                                mesh, &decision, fqdn, p.port, eps, &mut diags,
                                            );
                                        }
                                        let name = names::outbound_cluster(p.port, fqdn);
                                        let c = cluster::outbound(&OutboundSpec {
                                            name: name.clone(),
                                            fqdn,
                                            port: p.port,
                                            protocol: p.protocol,
                                            decision: &decision,
                                            sans: service_sans
                                                .get(si)
                                                .map(Vec::as_slice)
                                                .unwrap_or(&[]),
                                            trust_bundle: &mesh.config.trust_bundle,
                                        });
                                        Arc::new(Resource::new(name, ResourceType::Cluster, &c))
                                    })
                                    .clone();
                                map.insert(r.name.clone(), r);
                            }
                        }
                        let map = shared(map);
                        maps_by_choice.insert(map_key, map.clone());
                        map
                    }
                };
                group_maps.insert(group_key, (gi, map.clone()));
                map
            }
        };

        let mut listeners = ResourceMap::new();
        let mut inbound_clusters = ResourceMap::new();
        let app_ip = w.app_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for (port, (protocol, _, services)) in tps.get(wi).into_iter().flatten() {
            // The outbound listener is IP:outbound_port too: an inbound one
            // there would be replaced by it, silently.
            if *port == mesh.config.outbound_port {
                let pod = w.owner.as_deref().map_or("Pod", |_| "Deployment");
                let name = w.owner.as_deref().unwrap_or(&w.name);
                diags.push(crate::diag::Diagnostic::warning(
                    crate::model::ObjectRef::new(pod, &w.namespace, name),
                    Some("spec.containers[].ports".into()),
                    format!(
                        "{} targets port {port} of {}/{}, which is the sidecar's outbound port: \
                         it gets no inbound listener, so mTLS is not enforced there; use another \
                         target port (or --outbound-port)",
                        services.join(", "),
                        w.namespace,
                        w.name
                    ),
                ));
                continue;
            }
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
        let ns_routes = routes_by_ns
            .entry((w.namespace.as_str(), imports_id))
            .or_insert_with(|| {
                let mut m = ResourceMap::new();
                insert(
                    &mut m,
                    routes.for_scope(
                        mesh,
                        &route_name,
                        &w.namespace,
                        scope.as_ref().map(|s| &*s.imports),
                    ),
                );
                shared(m)
            })
            .clone();
        let proxy_endpoints = match &scope {
            None => endpoints.clone(),
            Some(s) => endpoints_by_scope
                .entry(s.imports_id)
                .or_insert_with(|| scoped_endpoints(mesh, &endpoints, &s.imports))
                .clone(),
        };
        let capture = capture.plan(
            mesh,
            w,
            tps.get(wi).unwrap_or(&TargetPorts::new()),
            policies.get(wi).and_then(Option::as_ref),
            &server_tls,
            &mut diags,
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
                endpoints: proxy_endpoints,
                routes: ns_routes,
                capture,
                sidecar: scope.map(|s| s.by.clone()),
            },
        );
    }
    scopes.unmatched_hosts(&mut diags);
    diags.sort();
    diags.dedup();
    // The namespace's clients no selector rule selects first, then by the
    // rules that select them.
    client_groups.sort_by(|a, b| (&a.namespace, &a.selected).cmp(&(&b.namespace, &b.selected)));
    Translation {
        proxies,
        diagnostics: diags,
        server_ports,
        client_groups,
        endpoint_specs,
        rules: clients.index().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeshConfig;
    use crate::model::build::{Addressing, mesh_from_yaml};

    #[test]
    fn a_target_port_on_the_outbound_port_is_a_diagnostic_not_a_lost_listener() {
        // A pod with an injected sidecar behind a Service whose target
        // port is the sidecar's own outbound port.
        let yaml = r#"
kind: Service
apiVersion: v1
metadata:
  namespace: foo
  name: web
spec:
  ports:
  - {name: http, port: 80, targetPort: 15001}
  selector:
    app: web
---
kind: Pod
apiVersion: v1
metadata:
  namespace: foo
  name: web-0
  labels:
    app: web
    security.istio.io/tlsMode: istio
spec:
  containers:
  - {name: app, image: app}
"#;
        let addressing = Addressing {
            pod_net: Ipv4Addr::new(127, 16, 0, 0),
            app_net: None,
            service_net: None,
        };
        let mesh = mesh_from_yaml(
            &[("web.yaml".into(), yaml.into())],
            MeshConfig::default(),
            &addressing,
        )
        .expect("valid");
        let t = translate(&mesh);
        let found = t
            .diagnostics
            .iter()
            .find(|d| d.message.contains("outbound port"))
            .expect("a diagnostic");
        assert_eq!(found.object.name, "web-0", "{found}");
        assert!(found.message.contains("web.foo:80"), "{found}");
        let plan = t.proxy("foo", "web-0").expect("the pod has a sidecar");
        // One listener on IP:15001, and it is the outbound one.
        assert_eq!(plan.listeners.len(), 1);
        assert!(plan.inbound_clusters.is_empty());
    }
}
