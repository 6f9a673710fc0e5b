//! The unit the rest of the system trades in: one named, encoded Envoy
//! resource of one xDS type. The translator produces them, the cache shares
//! them between proxies (`Arc`), the ADS server sends them as they are.

use envoy_types::pb::google::protobuf::Any;
use prost::bytes::Bytes;
use prost::{Message, Name};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The xDS resource types this control plane serves over ADS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    /// The order in which a change is pushed: a cluster before its endpoints,
    /// a listener before its routes, so Envoy never waits on a missing
    /// dependency (the order go-control-plane uses).
    pub const PUSH_ORDER: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::PUSH_ORDER.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name as operators know it (CDS, EDS, LDS, RDS, SDS).
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::Secret => "SDS",
        }
    }

    /// LDS and CDS are subscribed by wildcard; the others by name.
    pub const fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One encoded resource. Immutable once built; shared by `Arc`.
#[derive(Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub kind: ResourceType,
    pub body: Any,
    /// Stable content hash of `body`; the per-resource version in delta xDS.
    pub hash: u64,
    /// `body` encoded as a `google.protobuf.Any`, once: every response that
    /// carries this resource, to any number of proxies, copies these bytes
    /// instead of encoding the message again.
    wire: Bytes,
}

impl fmt::Debug for Resource {
    // Never print the body: secrets are resources too.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

impl Resource {
    pub fn new<M: Message + Name>(name: impl Into<String>, kind: ResourceType, msg: &M) -> Self {
        Self::from_encoded::<M>(name, kind, msg.encode_to_vec())
    }

    /// A resource from bytes already encoded as message `M` (see
    /// `envoy::route`, which assembles one from shared pieces).
    pub fn from_encoded<M: Name>(
        name: impl Into<String>,
        kind: ResourceType,
        value: Vec<u8>,
    ) -> Self {
        let hash = fnv1a(&value);
        let body = Any {
            type_url: M::type_url(),
            value,
        };
        let wire = Bytes::from(body.encode_to_vec());
        Resource {
            name: name.into(),
            kind,
            body,
            hash,
            wire,
        }
    }

    /// The resource encoded as a `google.protobuf.Any` message (without a
    /// field key): what a response's `resources` field carries.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The per-resource version string (hex of the content hash).
    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }
}

/// Resources of one type, by name. Sorted so versions and output are stable.
pub type ResourceMap = BTreeMap<String, Arc<Resource>>;

/// Everything the translator decided one sidecar should hold (secrets are
/// added by the server, which owns the CA).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyResources {
    pub clusters: Arc<ResourceMap>,
    pub endpoints: Arc<ResourceMap>,
    pub listeners: Arc<ResourceMap>,
    pub routes: Arc<ResourceMap>,
}

impl ProxyResources {
    /// The resources of one type; secrets are never part of a translation.
    pub fn of(&self, kind: ResourceType) -> Option<&Arc<ResourceMap>> {
        match kind {
            ResourceType::Cluster => Some(&self.clusters),
            ResourceType::Endpoint => Some(&self.endpoints),
            ResourceType::Listener => Some(&self.listeners),
            ResourceType::Route => Some(&self.routes),
            ResourceType::Secret => None,
        }
    }
}

/// Version of a set of resources: a hash over names and content hashes.
pub fn set_version(map: &ResourceMap) -> String {
    let mut bytes = Vec::with_capacity(map.len() * 24);
    for (name, r) in map {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&r.hash.to_le_bytes());
    }
    format!("{:016x}", fnv1a(&bytes))
}

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
