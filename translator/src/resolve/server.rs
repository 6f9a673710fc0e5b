//! Server side: the effective PeerAuthentication mode per workload and port.
//!
//! Precedence, as Istio documents and implements it
//! (`ComposePeerAuthentication`):
//! 1. Candidates are the policies in the workload's namespace and in the root
//!    namespace whose selector matches the workload (no selector matches all).
//! 2. Without selector in the root namespace: mesh scope. Without selector
//!    elsewhere: namespace scope. With selector outside the root namespace:
//!    workload scope. With selector in the root namespace: ignored.
//! 3. Within a scope the oldest policy wins (creation time, then name, then
//!    namespace); the others are ignored entirely, port map included.
//! 4. Start from PERMISSIVE, then overlay mesh, namespace, workload modes,
//!    skipping UNSET (which inherits the wider scope).
//! 5. Port-level modes come only from the winning workload policy, keyed by
//!    workload (target) port; an UNSET port entry inherits the workload mode.

use crate::diag::Diagnostic;
use crate::model::{Labels, Mesh, ObjectRef, PeerAuthentication, PeerMode, Workload};

use std::collections::{BTreeMap, HashMap};

/// The effective server mode: what the inbound listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerMode {
    /// mTLS only.
    Strict,
    /// mTLS or plaintext.
    Permissive,
    /// Plaintext only.
    Disable,
}

impl ServerMode {
    fn from_peer(mode: PeerMode) -> Option<ServerMode> {
        match mode {
            PeerMode::Unset => None,
            PeerMode::Disable => Some(ServerMode::Disable),
            PeerMode::Permissive => Some(ServerMode::Permissive),
            PeerMode::Strict => Some(ServerMode::Strict),
        }
    }
}

/// Where a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Nothing in force: Istio's default.
    Default,
    Mesh,
    Namespace,
    Workload,
    /// A `portLevelMtls` entry of the workload policy.
    Port,
}

/// A mode together with the object and scope that decided it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decided {
    pub mode: ServerMode,
    pub scope: Scope,
    /// `None` for the default.
    pub by: Option<ObjectRef>,
}

impl Decided {
    pub const DEFAULT: Decided = Decided {
        mode: ServerMode::Permissive,
        scope: Scope::Default,
        by: None,
    };
}

/// The resolved policy of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadPeerPolicy {
    pub workload: Decided,
    pub ports: BTreeMap<u16, Decided>,
}

impl WorkloadPeerPolicy {
    pub fn for_port(&self, port: u16) -> &Decided {
        self.ports.get(&port).unwrap_or(&self.workload)
    }
}

/// Mesh and namespace winners, computed once per translation.
pub struct PeerPolicies<'m> {
    mesh: &'m Mesh,
    mesh_policy: Option<&'m PeerAuthentication>,
    namespace_policy: HashMap<&'m str, &'m PeerAuthentication>,
    /// Workload-scoped candidates per namespace, oldest first.
    workload_policies: HashMap<&'m str, Vec<&'m PeerAuthentication>>,
}

impl<'m> PeerPolicies<'m> {
    pub fn new(mesh: &'m Mesh, diags: &mut Vec<Diagnostic>) -> PeerPolicies<'m> {
        let root = mesh.config.root_namespace.as_str();
        let mut out = PeerPolicies {
            mesh,
            mesh_policy: None,
            namespace_policy: HashMap::new(),
            workload_policies: HashMap::new(),
        };
        // `peer_authentications` is sorted oldest first, so the first policy
        // seen at a scope is the winner.
        for pa in &mesh.peer_authentications {
            let ns = pa.meta.namespace.as_str();
            match (&pa.selector, ns == root) {
                (Some(_), true) => diags.push(Diagnostic::warning(
                    pa.object_ref(),
                    Some("spec.selector".into()),
                    format!(
                        "is ignored: a PeerAuthentication with a selector in the root namespace {root} applies to no workload (as in Istio)"
                    ),
                )),
                (None, true) => match out.mesh_policy {
                    None => out.mesh_policy = Some(pa),
                    Some(winner) => diags.push(ignored_newer(pa, winner, "mesh-wide")),
                },
                (None, false) => match out.namespace_policy.get(ns) {
                    None => {
                        out.namespace_policy.insert(ns, pa);
                    }
                    Some(winner) => diags.push(ignored_newer(pa, winner, "namespace-wide")),
                },
                (Some(_), false) => out.workload_policies.entry(ns).or_default().push(pa),
            }
        }
        out
    }

    /// The namespace-level view (mesh, then namespace), as used for reports.
    pub fn for_namespace(&self, namespace: &str) -> Decided {
        let mut d = Decided::DEFAULT;
        if let Some(pa) = self.mesh_policy {
            overlay(&mut d, pa, Scope::Mesh);
        }
        if let Some(pa) = self.namespace_policy.get(namespace) {
            overlay(&mut d, pa, Scope::Namespace);
        }
        d
    }

    /// Resolve one workload. `target_ports` are the ports the sidecar serves
    /// for it (used only for the port-key diagnostics).
    pub fn for_workload(&self, w: &Workload, diags: &mut Vec<Diagnostic>) -> WorkloadPeerPolicy {
        let mut decided = self.for_namespace(&w.namespace);
        let mut ports = BTreeMap::new();
        let matching: Vec<&PeerAuthentication> = self
            .workload_policies
            .get(w.namespace.as_str())
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|pa| selects(pa.selector.as_ref(), &w.labels))
                    .collect()
            })
            .unwrap_or_default();
        if let Some((winner, rest)) = matching.split_first() {
            for newer in rest {
                diags.push(Diagnostic::warning(
                    newer.object_ref(),
                    None,
                    format!(
                        "is ignored for workload {}/{}: the older {} also selects it, and only the oldest workload policy applies (policies are not merged)",
                        w.namespace,
                        w.name,
                        winner.object_ref()
                    ),
                ));
            }
            overlay(&mut decided, winner, Scope::Workload);
            for (port, mode) in &winner.port_modes {
                let d = match ServerMode::from_peer(*mode) {
                    Some(m) => Decided {
                        mode: m,
                        scope: Scope::Port,
                        by: Some(winner.object_ref()),
                    },
                    None => decided.clone(),
                };
                ports.insert(*port, d);
            }
        }
        WorkloadPeerPolicy {
            workload: decided,
            ports,
        }
    }

    /// Diagnose `portLevelMtls` keys that match no port the sidecar serves
    /// for any selected workload (istio/istio#49098: the key is the target
    /// port, and a Service port silently does nothing).
    pub fn check_port_keys(
        &self,
        target_ports: &[BTreeMap<u16, Vec<u16>>],
        diags: &mut Vec<Diagnostic>,
    ) {
        // target_ports[w] maps target port -> service ports, per workload.
        let mesh = self.mesh;
        for list in self.workload_policies.values() {
            for pa in list {
                if pa.port_modes.is_empty() {
                    continue;
                }
                let selected = match &pa.selector {
                    Some(sel) => mesh.index.select(&pa.meta.namespace, sel, &mesh.workloads),
                    None => continue,
                };
                for port in pa.port_modes.keys() {
                    let is_target = selected
                        .iter()
                        .any(|&w| target_ports.get(w).is_some_and(|t| t.contains_key(port)));
                    if is_target {
                        continue;
                    }
                    let as_service_port: Vec<u16> = selected
                        .iter()
                        .filter_map(|&w| target_ports.get(w))
                        .flat_map(|t| t.iter())
                        .filter(|(_, sps)| sps.contains(port))
                        .map(|(tp, _)| *tp)
                        .collect();
                    let message = match as_service_port.first() {
                        Some(tp) => format!(
                            "port {port} is a Service port, but portLevelMtls is keyed by the workload (target) port: use {tp}; this entry has no effect"
                        ),
                        None => format!(
                            "port {port} is not a port that a Service targets on the selected workloads: sidecars with iptables capture (INTERCEPTION_MODE REDIRECT) apply it to connections to that port, sidecars without (NONE) have no listener there and ignore it"
                        ),
                    };
                    diags.push(Diagnostic::warning(
                        pa.object_ref(),
                        Some(format!("spec.portLevelMtls.{port}")),
                        message,
                    ));
                }
            }
        }
    }
}

fn overlay(d: &mut Decided, pa: &PeerAuthentication, scope: Scope) {
    if let Some(mode) = ServerMode::from_peer(pa.mode) {
        *d = Decided {
            mode,
            scope,
            by: Some(pa.object_ref()),
        };
    }
}

fn selects(selector: Option<&Labels>, labels: &Labels) -> bool {
    selector.is_none_or(|s| crate::model::index_labels_match(s, labels))
}

fn ignored_newer(pa: &PeerAuthentication, winner: &PeerAuthentication, scope: &str) -> Diagnostic {
    Diagnostic::warning(
        pa.object_ref(),
        None,
        format!(
            "is ignored: the older {} is already the {scope} policy, and the oldest one wins",
            winner.object_ref()
        ),
    )
}
