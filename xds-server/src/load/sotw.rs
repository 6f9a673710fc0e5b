//! A simulated sidecar speaking state-of-the-world ADS, as Envoy does:
//! CDS and LDS by wildcard; EDS, RDS and SDS by the names the accepted
//! clusters and listeners reference. Each response is ACKed (its version,
//! its nonce, the names subscribed) once every resource in it decoded, or
//! NACKed (the last accepted version, its nonce, `error_detail`).
//!
//! The nonce of every request is the last one received for its type, so
//! the server never takes one of ours for stale; a subscription change
//! sent while a response was on its way is repeated by the ACK of that
//! response, which always names the current subscription.

use super::follow::{self, Deps};
use super::names::{self, Name};
use super::protocol::{Handled, Protocol, nack_status, node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::collections::{BTreeMap, BTreeSet};
use translator::ResourceType;

/// Per type: what is asked for and what was last accepted.
#[derive(Clone, Debug, Default)]
struct TypeState {
    /// Whether a request for the type was ever sent.
    subscribed: bool,
    /// The names asked for (always empty for the wildcard types).
    names: BTreeSet<Name>,
    /// Version of the last accepted response (kept across reconnects, as
    /// Envoy keeps its config).
    version: String,
    /// Names in the last accepted response.
    accepted: Option<BTreeSet<Name>>,
    /// Nonce of the last response on this stream.
    nonce: String,
    /// Whether a response was accepted on this stream.
    answered: bool,
}

/// The state-of-the-world client of one sidecar.
#[derive(Clone, Debug)]
pub struct Sotw {
    node_id: String,
    types: BTreeMap<ResourceType, TypeState>,
    /// What the last accepted CDS and LDS reference.
    cluster_deps: Deps,
    listener_deps: Deps,
}

impl Sotw {
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
        Sotw {
            node_id: node_id.to_string(),
            types,
            cluster_deps: Deps::default(),
            listener_deps: Deps::default(),
        }
    }

    /// The names subscribed for `kind`.
    pub fn names(&self, kind: ResourceType) -> Vec<String> {
        self.types
            .get(&kind)
            .map(|t| names::strings(&t.names))
            .unwrap_or_default()
    }

    /// The version last accepted for `kind`.
    pub fn version(&self, kind: ResourceType) -> Option<&str> {
        self.types
            .get(&kind)
            .filter(|t| t.accepted.is_some())
            .map(|t| t.version.as_str())
    }

    fn request(kind: ResourceType, state: &TypeState) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: state.version.clone(),
            node: None,
            resource_names: names::strings(&state.names),
            resource_locators: Vec::new(),
            type_url: kind.type_url().to_string(),
            response_nonce: state.nonce.clone(),
            error_detail: None,
        }
    }

    /// The names the accepted clusters and listeners reference, per
    /// dependent type.
    fn wanted(&self, kind: ResourceType) -> BTreeSet<Name> {
        let mut all = self.cluster_deps.clone();
        all.extend(&self.listener_deps);
        all.of(kind).cloned().unwrap_or_default()
    }
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    const PATH: &'static str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    type Response = DiscoveryResponse;

    fn open(&mut self) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for kind in ResourceType::PUSH_ORDER {
            let Some(state) = self.types.get_mut(&kind) else {
                continue;
            };
            // A new stream: no nonce yet, and nothing answered on it.
            state.nonce.clear();
            state.answered = false;
            if state.subscribed {
                out.push(Self::request(kind, state));
            }
        }
        if let Some(first) = out.first_mut() {
            first.node = Some(node(&self.node_id));
        }
        out
    }

    fn on_response(&mut self, response: DiscoveryResponse) -> Handled<DiscoveryRequest> {
        // Exhaustive on purpose: a new field may change what a response means.
        let DiscoveryResponse {
            version_info,
            resources,
            canary: _,
            type_url,
            nonce,
            control_plane: _,
            resource_errors: _,
        } = response;
        let count = resources.len();
        let Some(kind) = ResourceType::from_type_url(&type_url) else {
            return Handled {
                kind: None,
                version: version_info,
                resources: count,
                nack: None,
                requests: Vec::new(),
            };
        };
        let decoded: Result<Vec<follow::Decoded>, String> = resources
            .iter()
            .map(|any| follow::decode(kind, any))
            .collect();
        let state = self.types.entry(kind).or_default();
        state.nonce = nonce;
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(message) => {
                // The last accepted version stays in force.
                let mut nack = Self::request(kind, state);
                nack.error_detail = Some(nack_status(&message));
                return Handled {
                    kind: Some(kind),
                    version: version_info,
                    resources: count,
                    nack: Some(message),
                    requests: vec![nack],
                };
            }
        };
        state.version = version_info.clone();
        state.answered = true;
        state.accepted = Some(decoded.iter().map(|d| names::name(&d.name)).collect());
        let mut requests = vec![Self::request(kind, state)];
        let mut deps = Deps::default();
        for d in &decoded {
            deps.extend(&d.deps);
        }
        let dependents: &[ResourceType] = match kind {
            ResourceType::Cluster => {
                self.cluster_deps = deps;
                &[ResourceType::Endpoint, ResourceType::Secret]
            }
            ResourceType::Listener => {
                self.listener_deps = deps;
                &[ResourceType::Route, ResourceType::Secret]
            }
            _ => &[],
        };
        for &dependent in dependents {
            let wanted = self.wanted(dependent);
            let state = self.types.entry(dependent).or_default();
            if state.names == wanted || (!state.subscribed && wanted.is_empty()) {
                continue;
            }
            state.names = wanted;
            state.subscribed = true;
            requests.push(Self::request(dependent, state));
        }
        Handled {
            kind: Some(kind),
            version: version_info,
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
            t.answered
                && t.accepted
                    .as_ref()
                    .is_some_and(|got| t.names.is_subset(got))
        })
    }
}
