//! A simulated sidecar speaking delta (incremental) ADS, as Envoy does:
//! CDS and LDS by (legacy) wildcard; EDS, RDS and SDS subscribed and
//! unsubscribed by name as clusters and listeners come and go. What it
//! holds is kept per name with its version; a response is ACKed by its
//! nonce once every resource in it decoded, or NACKed (nothing of it
//! applied). A reconnect sends `initial_resource_versions`, so the server
//! need only send what changed meanwhile.

use super::follow::{self, Deps};
use super::names::{self, Name};
use super::protocol::{Handled, Protocol, nack_status, node};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use translator::ResourceType;

/// Per type: the subscription and what is held.
#[derive(Clone, Debug, Default)]
struct TypeState {
    subscribed: bool,
    /// Named subscriptions (always empty for the wildcard types).
    names: BTreeSet<Name>,
    /// What is held: name -> version.
    held: BTreeMap<Name, Name>,
    /// Names subscribed to that the server said do not exist.
    absent: BTreeSet<Name>,
    /// `system_version_info` of the last accepted response.
    version: String,
    /// Whether a response was accepted on this stream.
    answered: bool,
}

/// The delta client of one sidecar.
#[derive(Clone, Debug)]
pub struct Delta {
    node_id: String,
    types: BTreeMap<ResourceType, TypeState>,
    /// What each held cluster and listener references.
    cluster_deps: BTreeMap<Name, Arc<Deps>>,
    listener_deps: BTreeMap<Name, Arc<Deps>>,
}

fn request(kind: ResourceType) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: None,
        type_url: kind.type_url().to_string(),
        resource_names_subscribe: Vec::new(),
        resource_names_unsubscribe: Vec::new(),
        resource_locators_subscribe: Vec::new(),
        resource_locators_unsubscribe: Vec::new(),
        initial_resource_versions: Default::default(),
        response_nonce: String::new(),
        error_detail: None,
    }
}

impl Delta {
    pub fn new(node_id: &str) -> Self {
        let mut types = BTreeMap::new();
        for kind in [ResourceType::Cluster, ResourceType::Listener] {
            types.insert(
                kind,
                TypeState {
                    subscribed: true,
                    ..Default::default()
                },
            );
        }
        Delta {
            node_id: node_id.to_string(),
            types,
            cluster_deps: BTreeMap::new(),
            listener_deps: BTreeMap::new(),
        }
    }

    /// The names subscribed for `kind`.
    pub fn names(&self, kind: ResourceType) -> Vec<String> {
        self.types
            .get(&kind)
            .map(|t| names::strings(&t.names))
            .unwrap_or_default()
    }

    /// What is held of `kind`: name -> version.
    pub fn held(&self, kind: ResourceType) -> BTreeMap<String, String> {
        self.types
            .get(&kind)
            .map(|t| {
                t.held
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wanted(&self, kind: ResourceType) -> BTreeSet<Name> {
        let mut all = Deps::default();
        for deps in self
            .cluster_deps
            .values()
            .chain(self.listener_deps.values())
        {
            all.extend(deps);
        }
        all.of(kind).cloned().unwrap_or_default()
    }

    /// Checks and decodes every resource of a response: the dependencies
    /// of each by name, or why the response must be rejected.
    fn decode_all(
        kind: ResourceType,
        resources: &[DeltaResource],
    ) -> Result<Vec<(Name, Name, Deps)>, String> {
        resources
            .iter()
            .map(|r| {
                let any = r
                    .resource
                    .as_ref()
                    .ok_or_else(|| format!("resource {:?} has no body", r.name))?;
                let decoded = follow::decode(kind, any)?;
                if decoded.name != r.name {
                    return Err(format!(
                        "resource {:?} carries a {kind} named {:?}",
                        r.name, decoded.name
                    ));
                }
                Ok((names::name(&r.name), names::name(&r.version), decoded.deps))
            })
            .collect()
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    const PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    type Response = DeltaDiscoveryResponse;

    fn open(&mut self) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            let Some(state) = self.types.get_mut(&kind) else {
                continue;
            };
            state.answered = false;
            if !state.subscribed {
                continue;
            }
            let mut r = request(kind);
            // Wildcard types: an empty list is the legacy wildcard.
            r.resource_names_subscribe = names::strings(&state.names);
            r.initial_resource_versions = state
                .held
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            out.push(r);
        }
        if let Some(first) = out.first_mut() {
            first.node = Some(node(&self.node_id));
        }
        out
    }

    fn on_response(&mut self, response: DeltaDiscoveryResponse) -> Handled<DeltaDiscoveryRequest> {
        // Exhaustive on purpose: a new field may change what a response means.
        let DeltaDiscoveryResponse {
            system_version_info,
            resources,
            type_url,
            removed_resources,
            removed_resource_names: _,
            nonce,
            control_plane: _,
            resource_errors: _,
        } = response;
        let count = resources.len();
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            return Handled {
                kind: None,
                version: system_version_info,
                resources: count,
                nack: None,
                requests: Vec::new(),
            };
        };
        let mut ack = request(kind);
        ack.response_nonce = nonce;
        let decoded = match Self::decode_all(kind, &resources) {
            Ok(decoded) => decoded,
            Err(message) => {
                ack.error_detail = Some(nack_status(&message));
                return Handled {
                    kind: Some(kind),
                    version: system_version_info,
                    resources: count,
                    nack: Some(message),
                    requests: vec![ack],
                };
            }
        };
        let state = self.types.entry(kind).or_default();
        state.version = system_version_info.clone();
        state.answered = true;
        let deps_of = match kind {
            ResourceType::Cluster => Some(&mut self.cluster_deps),
            ResourceType::Listener => Some(&mut self.listener_deps),
            _ => None,
        };
        let mut deps_of = deps_of;
        // Whether what the clusters or listeners reference changed: most
        // changes (a new TLS context) do not, and then the dependent
        // subscriptions stay as they are, found without rebuilding them.
        let mut deps_changed = false;
        for (name, version, deps) in decoded {
            state.absent.remove(&name);
            if let Some(map) = deps_of.as_deref_mut() {
                let deps = follow::shared(deps);
                let before = map.insert(Arc::clone(&name), Arc::clone(&deps));
                deps_changed |= before.is_none_or(|b| !Arc::ptr_eq(&b, &deps));
            }
            state.held.insert(name, version);
        }
        for name in removed_resources {
            state.held.remove(name.as_str());
            if let Some(map) = deps_of.as_deref_mut() {
                deps_changed |= map.remove(name.as_str()).is_some();
            }
            if state.names.contains(name.as_str()) {
                state.absent.insert(names::name(&name));
            }
        }
        let mut requests = vec![ack];
        let dependents: &[ResourceType] = match kind {
            _ if !deps_changed => &[],
            ResourceType::Cluster => &[ResourceType::Endpoint, ResourceType::Secret],
            ResourceType::Listener => &[ResourceType::Route, ResourceType::Secret],
            _ => &[],
        };
        for &dependent in dependents {
            let wanted = self.wanted(dependent);
            let state = self.types.entry(dependent).or_default();
            let subscribe = names::strings(wanted.difference(&state.names));
            let unsubscribe = names::strings(state.names.difference(&wanted));
            if subscribe.is_empty() && unsubscribe.is_empty() {
                continue;
            }
            for name in &unsubscribe {
                // Dropped here as Envoy drops it: a later subscription
                // gets it anew.
                state.held.remove(name.as_str());
                state.absent.remove(name.as_str());
            }
            state.names = wanted;
            state.subscribed = true;
            let mut r = request(dependent);
            r.resource_names_subscribe = subscribe;
            r.resource_names_unsubscribe = unsubscribe;
            requests.push(r);
        }
        Handled {
            kind: Some(kind),
            version: system_version_info,
            resources: count,
            nack: None,
            requests,
        }
    }

    fn synced(&self) -> bool {
        self.types.iter().all(|(kind, t)| {
            if !t.subscribed || (!kind.is_wildcard() && t.names.is_empty()) {
                return true;
            }
            t.answered && all_covered(&t.names, &t.held, &t.absent)
        })
    }
}

/// Whether every name is held or known absent. One walk of the three sorted
/// collections together: called after every response, with thousands of
/// names, it would otherwise be the simulated sidecar's largest cost.
fn all_covered(
    names: &BTreeSet<Name>,
    held: &BTreeMap<Name, Name>,
    absent: &BTreeSet<Name>,
) -> bool {
    let mut held = held.keys().peekable();
    let mut absent = absent.iter().peekable();
    names.iter().all(|name| {
        while held.next_if(|h| *h < name).is_some() {}
        while absent.next_if(|a| *a < name).is_some() {}
        held.peek() == Some(&name) || absent.peek() == Some(&name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_covered_when_each_is_held_or_absent() {
        let set = |names: &[&str]| {
            names
                .iter()
                .map(|n| names::name(n))
                .collect::<BTreeSet<_>>()
        };
        let held: BTreeMap<Name, Name> = ["b", "d", "f"]
            .iter()
            .map(|n| (names::name(n), names::name("v")))
            .collect();
        let absent = set(&["c", "g"]);
        assert!(all_covered(&set(&[]), &held, &absent));
        assert!(all_covered(&set(&["b", "c", "d", "g"]), &held, &absent));
        assert!(
            !all_covered(&set(&["a", "b"]), &held, &absent),
            "a is neither"
        );
        assert!(
            !all_covered(&set(&["b", "e"]), &held, &absent),
            "e is neither"
        );
        assert!(
            !all_covered(&set(&["f", "h"]), &held, &absent),
            "past both ends"
        );
    }
}
