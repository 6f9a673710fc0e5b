//! What a translation produces: a plan per sidecar, in pieces shared by
//! `Arc` between the proxies that receive the same ones, and the decisions
//! `report.rs` explains.

use super::capture::CapturePlan;
use super::report::{ClientGroup, ClientPort, EndpointSpecs, ServerPort, client_port};
use crate::diag::Diagnostic;
use crate::layout::Interception;
use crate::model::Mesh;
use crate::resolve::{ClientPolicies, RuleIndex};
use crate::xds::{ProxyResources, ResourceMap};
use std::collections::BTreeMap;
use std::net::IpAddr;
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
    /// Shared by the proxies of one namespace (and Sidecar scope).
    pub routes: Arc<ResourceMap>,
    /// The same sidecar's listeners, inbound clusters and routes in the
    /// iptables capture layout.
    pub capture: CapturePlan,
    /// The Sidecar that scopes the outbound pieces; `None`: every service.
    pub sidecar: Option<crate::model::ObjectRef>,
}

fn merged(a: &ResourceMap, b: &ResourceMap) -> Arc<ResourceMap> {
    let mut m = a.clone();
    m.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
    Arc::new(m)
}

impl ProxyPlan {
    /// The full per-type maps of the explicit-bind layout, as an ADS
    /// stream serves them ([`Interception::None`]).
    pub fn resources(&self) -> ProxyResources {
        self.resources_for(Interception::None)
    }

    /// The full per-type maps of the layout the proxy's
    /// `INTERCEPTION_MODE` asks for. Outbound clusters and endpoints are
    /// the same in both: only how traffic reaches Envoy differs.
    pub fn resources_for(&self, interception: Interception) -> ProxyResources {
        match interception {
            Interception::None => ProxyResources {
                clusters: merged(&self.outbound_clusters, &self.inbound_clusters),
                endpoints: self.endpoints.clone(),
                listeners: self.listeners.clone(),
                routes: self.routes.clone(),
            },
            Interception::Redirect => ProxyResources {
                clusters: merged(&self.outbound_clusters, &self.capture.inbound_clusters),
                endpoints: self.endpoints.clone(),
                listeners: merged(
                    &self.capture.outbound_listeners,
                    &self.capture.inbound_listener,
                ),
                routes: self.capture.routes.clone(),
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct Translation {
    pub proxies: BTreeMap<(String, String), ProxyPlan>,
    pub diagnostics: Vec<Diagnostic>,
    pub server_ports: Vec<ServerPort>,
    /// Clients with sidecars, grouped by namespace and the workload-selector
    /// rules that select them, each group with the rule every service
    /// resolved to.
    pub(crate) client_groups: Vec<ClientGroup>,
    pub(crate) endpoint_specs: EndpointSpecs,
    /// The DestinationRules, merged per host and indexed.
    pub(crate) rules: Arc<RuleIndex>,
}

impl Translation {
    pub fn proxy(&self, namespace: &str, pod: &str) -> Option<&ProxyPlan> {
        self.proxies.get(&(namespace.to_string(), pod.to_string()))
    }

    /// The merged DestinationRules of this translation.
    pub fn rules(&self) -> &Arc<RuleIndex> {
        &self.rules
    }
}

impl Translation {
    /// Client TLS for every client group (with sidecars) and service port,
    /// sorted by namespace (the group no selector rule selects first), then
    /// service order.
    pub fn client_ports(&self, mesh: &Mesh) -> Vec<ClientPort> {
        let clients = ClientPolicies::with_index(mesh, self.rules.clone());
        let mut out = Vec::new();
        for group in &self.client_groups {
            for (si, svc) in mesh.services.iter().enumerate() {
                for pi in 0..svc.ports.len() {
                    out.extend(client_port(
                        mesh,
                        &clients,
                        &self.endpoint_specs,
                        group,
                        si,
                        pi,
                    ));
                }
            }
        }
        out
    }

    /// Client TLS from the clients of one namespace that no selector rule
    /// selects to one service port.
    pub fn client_port(
        &self,
        mesh: &Mesh,
        client_ns: &str,
        si: usize,
        port: u16,
    ) -> Option<ClientPort> {
        let group = self
            .client_groups
            .iter()
            .find(|g| g.namespace == client_ns && g.selected.is_empty())?;
        self.group_port(mesh, group, si, port)
    }

    /// Client TLS from one client workload (with a sidecar) to one service
    /// port.
    pub fn client_port_of(
        &self,
        mesh: &Mesh,
        client: usize,
        si: usize,
        port: u16,
    ) -> Option<ClientPort> {
        let group = self
            .client_groups
            .iter()
            .find(|g| g.clients.contains(&client))?;
        self.group_port(mesh, group, si, port)
    }

    fn group_port(
        &self,
        mesh: &Mesh,
        group: &ClientGroup,
        si: usize,
        port: u16,
    ) -> Option<ClientPort> {
        let pi = mesh
            .services
            .get(si)?
            .ports
            .iter()
            .position(|p| p.port == port)?;
        let clients = ClientPolicies::with_index(mesh, self.rules.clone());
        client_port(mesh, &clients, &self.endpoint_specs, group, si, pi)
    }
}
