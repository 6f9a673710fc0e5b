//! The contract between the snapshots (what a proxy should hold) and the ADS
//! server (when and how to send it), as go-control-plane separates its cache
//! from its server: a view per node, and a signal that views may have
//! changed. Neither side knows the other's internals; both import this.

use crate::identity::{Identity, Peer, ProxyId};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use std::sync::Arc;
use translator::layout::INTERCEPTION_MODE_KEY;
use translator::{Interception, ProxyResources, ResourceMap, ResourceType};

/// Everything one proxy should hold right now.
#[derive(Clone, Debug, Default)]
pub struct ProxyView {
    pub proxy: ProxyId,
    /// The layout of `resources`, as the node's metadata asked.
    pub interception: Interception,
    /// The identity this proxy acts as; its secrets are for this identity.
    pub identity: Identity,
    pub resources: ProxyResources,
    /// SDS resources `default` and `ROOTCA` for `identity`.
    pub secrets: Arc<ResourceMap>,
}

impl ProxyView {
    pub fn of(&self, kind: ResourceType) -> &Arc<ResourceMap> {
        match kind {
            ResourceType::Secret => &self.secrets,
            other => self.resources.of(other).unwrap_or(&self.secrets),
        }
    }
}

/// Why a node cannot be served.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("{0}")]
    BadNodeId(String),
    #[error("node {node_id:?}: metadata {key}: {reason}")]
    BadNodeMetadata {
        node_id: String,
        key: &'static str,
        reason: String,
    },
    #[error(
        "node {node_id:?} names pod {pod} in namespace {namespace}, which is not a workload with a sidecar in the mesh"
    )]
    UnknownWorkload {
        node_id: String,
        namespace: String,
        pod: String,
    },
    #[error(
        "node {node_id:?} claims identity {claimed} but the connection authenticated as {authenticated}"
    )]
    IdentityMismatch {
        node_id: String,
        claimed: String,
        authenticated: String,
    },
    #[error("node {node_id:?} did not prove an identity: {reason}")]
    Unauthenticated { node_id: String, reason: String },
    #[error("the control plane has not loaded its configuration yet")]
    NotReady,
    #[error("no certificate can be issued for {0}")]
    CertificateUnavailable(String),
}

/// The layout a node asks for in its metadata (`INTERCEPTION_MODE`, as
/// Istio's sidecars send it): absent is the explicit-bind layout, an
/// unknown or unsupported value an error naming it.
pub fn interception_of(node: &Node) -> Result<Interception, ViewError> {
    let value = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(INTERCEPTION_MODE_KEY));
    let text = match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => None,
        Some(Kind::StringValue(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(ViewError::BadNodeMetadata {
                node_id: node.id.clone(),
                key: INTERCEPTION_MODE_KEY,
                reason: "must be a string: REDIRECT or NONE".into(),
            });
        }
    };
    Interception::from_metadata(text).map_err(|reason| ViewError::BadNodeMetadata {
        node_id: node.id.clone(),
        key: INTERCEPTION_MODE_KEY,
        reason,
    })
}

/// The contract between the snapshots (what to send) and the ADS server (how to
/// send it): the current view for a node, and a signal that views may have
/// changed.
pub trait ConfigSource: Send + Sync + 'static {
    /// The current view for the proxy named by `node_id`, in the layout
    /// its metadata asked for, as `peer` may see it.
    fn view(
        &self,
        node_id: &str,
        interception: Interception,
        peer: &Peer,
    ) -> Result<Arc<ProxyView>, ViewError>;
    /// Ticks (a generation counter) whenever any view may have changed.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}
