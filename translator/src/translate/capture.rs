//! The capture layout's share of a translation (see `envoy::capture`):
//! what every captured sidecar holds alike (`virtualOutbound`, the
//! outbound listener of each service port, the passthrough and blackhole
//! clusters), what the sidecars of one namespace share (the per-port route
//! configurations) and what is a workload's own (`virtualInbound` and its
//! inbound clusters). Built for every sidecar next to the explicit-bind
//! layout; the ADS view picks one by the node's `INTERCEPTION_MODE`.

use crate::diag::Diagnostic;
use crate::envoy::capture::{
    self, INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT, Passthrough, ServedPort,
};
use crate::envoy::names;
use crate::envoy::route::PortRoutes;
use crate::model::{Mesh, ObjectRef, Protocol, Workload};
use crate::resolve::{ServerMode, WorkloadPeerPolicy};
use crate::xds::{Resource, ResourceMap, ResourceType};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Ports a captured sidecar never sees inbound: iptables leaves them to
/// the application (HBONE, Envoy's and the agent's own ports, as Istio's
/// injector excludes them) or they are Envoy's inbound capture port.
const NOT_CAPTURED_INBOUND: [u16; 5] = [15008, 15020, 15021, 15090, INBOUND_CAPTURE_PORT];

/// Everything one captured sidecar gets, in shared pieces.
#[derive(Clone, Debug, Default)]
pub struct CapturePlan {
    /// `virtualInbound`: this workload's own.
    pub inbound_listener: Arc<ResourceMap>,
    /// `virtualOutbound` and the outbound listeners: shared by all.
    pub outbound_listeners: Arc<ResourceMap>,
    /// `inbound|PORT||` of the served ports and the fixed clusters.
    pub inbound_clusters: Arc<ResourceMap>,
    /// The per-port route configurations of the sidecar's namespace.
    pub routes: Arc<ResourceMap>,
}

fn resource<M: prost::Message + prost::Name>(
    name: &str,
    kind: ResourceType,
    m: &M,
) -> Arc<Resource> {
    Arc::new(Resource::new(name.to_string(), kind, m))
}

/// The pieces built once per translation.
pub(super) struct CaptureShared {
    outbound_listeners: Arc<ResourceMap>,
    fixed_clusters: Vec<Arc<Resource>>,
    routes: PortRoutes,
    routes_by_ns: HashMap<String, Arc<ResourceMap>>,
    inbound_clusters: HashMap<(u16, Protocol), Arc<Resource>>,
}

impl CaptureShared {
    pub(super) fn new(mesh: &Mesh, diags: &mut Vec<Diagnostic>) -> CaptureShared {
        CaptureShared {
            outbound_listeners: Arc::new(outbound_listeners(mesh, diags)),
            fixed_clusters: capture::fixed_clusters()
                .iter()
                .map(|c| resource(&c.name, ResourceType::Cluster, c))
                .collect(),
            routes: PortRoutes::new(mesh),
            routes_by_ns: HashMap::new(),
            inbound_clusters: HashMap::new(),
        }
    }

    /// The plan of one sidecar. `served` maps each target port a Service
    /// selects on it to its protocol and the `svc.ns:port` names.
    pub(super) fn plan(
        &mut self,
        mesh: &Mesh,
        w: &Workload,
        served: &BTreeMap<u16, (Protocol, Vec<u16>, Vec<String>)>,
        policy: Option<&WorkloadPeerPolicy>,
        server_tls: &DownstreamTlsContext,
        diags: &mut Vec<Diagnostic>,
    ) -> CapturePlan {
        let mode = |port: u16| {
            policy
                .map(|p| p.for_port(port).mode)
                .unwrap_or(ServerMode::Permissive)
        };
        let mut ports = Vec::with_capacity(served.len());
        let mut clusters = ResourceMap::new();
        for (port, (protocol, _, services)) in served {
            if NOT_CAPTURED_INBOUND.contains(port) {
                diags.push(not_captured(w, *port, services));
                continue;
            }
            ports.push(ServedPort {
                port: *port,
                protocol: *protocol,
                mode: mode(*port),
            });
            let c = self
                .inbound_clusters
                .entry((*port, *protocol))
                .or_insert_with(|| {
                    let c = capture::inbound_cluster(*port, *protocol);
                    resource(&c.name, ResourceType::Cluster, &c)
                })
                .clone();
            clusters.insert(c.name.clone(), c);
        }
        for c in &self.fixed_clusters {
            clusters.insert(c.name.clone(), c.clone());
        }
        // Ports no Service targets: the workload's mode, and the
        // `portLevelMtls` ports whose mode differs from it (Istio's
        // `ForPassthrough`).
        let workload_mode = policy
            .map(|p| p.workload.mode)
            .unwrap_or(ServerMode::Permissive);
        let passthrough = Passthrough {
            mode: workload_mode,
            ports: policy
                .map(|p| {
                    p.ports
                        .iter()
                        .filter(|(port, d)| d.mode != workload_mode && !served.contains_key(port))
                        .map(|(port, d)| (*port, d.mode))
                        .collect()
                })
                .unwrap_or_default(),
        };
        let l = capture::virtual_inbound(&ports, &passthrough, server_tls);
        let mut inbound = ResourceMap::new();
        inbound.insert(
            l.name.clone(),
            resource(&l.name, ResourceType::Listener, &l),
        );
        let routes = self
            .routes_by_ns
            .entry(w.namespace.clone())
            .or_insert_with(|| {
                let mut m = ResourceMap::new();
                for port in self.routes.ports() {
                    let r = self.routes.for_namespace(mesh, port, &w.namespace);
                    m.insert(r.name.clone(), Arc::new(r));
                }
                Arc::new(m)
            })
            .clone();
        CapturePlan {
            inbound_listener: Arc::new(inbound),
            outbound_listeners: self.outbound_listeners.clone(),
            inbound_clusters: Arc::new(clusters),
            routes,
        }
    }
}

fn not_captured(w: &Workload, port: u16, services: &[String]) -> Diagnostic {
    let kind = w.owner.as_deref().map_or("Pod", |_| "Deployment");
    Diagnostic::warning(
        ObjectRef::new(kind, &w.namespace, w.display_name()),
        Some("spec.containers[].ports".into()),
        format!(
            "{} targets port {port} of {}/{}, which a sidecar with iptables capture never \
             receives (15006 is its inbound capture port; 15008, 15020, 15021 and 15090 are \
             left to the pod): mTLS is not enforced there; use another target port",
            services.join(", "),
            w.namespace,
            w.name
        ),
    )
}

/// `virtualOutbound` and one listener per service port: `0.0.0.0_PORT`
/// for the HTTP ports of that number, `VIP_PORT` for a TCP port of a
/// service with a cluster IP, `0.0.0.0_PORT` for one without (when no
/// other service needs that port). What cannot be listened for is a
/// diagnostic on the Service.
fn outbound_listeners(mesh: &Mesh, diags: &mut Vec<Diagnostic>) -> ResourceMap {
    let mut map = ResourceMap::new();
    let vo = capture::virtual_outbound();
    map.insert(
        vo.name.clone(),
        resource(&vo.name, ResourceType::Listener, &vo),
    );
    let http_ports: BTreeSet<u16> = mesh
        .services
        .iter()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http())
        .map(|p| p.port)
        .collect();
    let object = |si: usize| {
        mesh.services
            .get(si)
            .map(|s| ObjectRef::new("Service", &s.namespace, &s.name))
            .unwrap_or_else(|| ObjectRef::new("Service", "", ""))
    };
    // The service (index) that took a wildcard TCP port first.
    let mut wildcard_tcp: BTreeMap<u16, usize> = BTreeMap::new();
    for (si, s) in mesh.services.iter().enumerate() {
        let fqdn = mesh.service_fqdn(si);
        for p in &s.ports {
            if p.port == OUTBOUND_CAPTURE_PORT || p.port == INBOUND_CAPTURE_PORT {
                diags.push(Diagnostic::warning(
                    object(si),
                    Some(format!("spec.ports[{}].port", p.name)),
                    format!(
                        "port {} is a capture port of the sidecars (15001 outbound, 15006 \
                         inbound): sidecars with iptables capture cannot route calls to it",
                        p.port
                    ),
                ));
                continue;
            }
            if p.protocol.is_http() {
                continue;
            }
            let cluster = names::outbound_cluster(p.port, fqdn);
            if s.cluster_ip.is_none() {
                let taken_by = if http_ports.contains(&p.port) {
                    Some("the listener of the HTTP service ports of that number".to_string())
                } else {
                    wildcard_tcp
                        .get(&p.port)
                        .map(|other| format!("the listener of {}", object(*other)))
                };
                if let Some(by) = taken_by {
                    diags.push(Diagnostic::warning(
                        object(si),
                        Some("spec.clusterIP".into()),
                        format!(
                            "TCP port {} has no cluster IP to be told apart by, and \
                             0.0.0.0:{} is already {by}: sidecars with iptables capture \
                             cannot route calls to it",
                            p.port, p.port
                        ),
                    ));
                    continue;
                }
                wildcard_tcp.insert(p.port, si);
            }
            let l = capture::outbound_tcp(s.cluster_ip, p.port, &cluster);
            map.insert(
                l.name.clone(),
                resource(&l.name, ResourceType::Listener, &l),
            );
        }
    }
    for port in http_ports {
        if port == OUTBOUND_CAPTURE_PORT || port == INBOUND_CAPTURE_PORT {
            continue;
        }
        let l = capture::outbound_http(port);
        map.insert(
            l.name.clone(),
            resource(&l.name, ResourceType::Listener, &l),
        );
    }
    map
}
