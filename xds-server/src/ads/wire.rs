//! Responses as they go on the wire, assembled from the bytes each resource
//! was encoded to once ([`Resource::wire`]) rather than encoded again per
//! proxy.
//!
//! A response waiting in a stream's queue holds only references to the
//! shared resources; `grpc.rs` writes it into one buffer of its exact size
//! when HTTP/2 asks for it: field keys and lengths around the shared bytes,
//! byte for byte what prost would encode for the same message (see the
//! tests), at the cost of one copy instead of a deep clone and an encoding.

use bytes::{BufMut, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use std::fmt::Write as _;
use std::sync::Arc;
use translator::{Resource, ResourceType};

/// A response that knows its encoded size and writes itself as protobuf.
pub trait Encode: Send + 'static {
    fn encoded_len(&self) -> usize;
    /// Writes exactly [`Encode::encoded_len`] bytes.
    fn encode(&self, buf: &mut BytesMut);
}

/// A `DiscoveryResponse` (state of the world).
#[derive(Clone, Debug)]
pub struct SotwResponse {
    pub version_info: String,
    pub kind: ResourceType,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
}

/// A `DeltaDiscoveryResponse`; each resource carries its name and its
/// version (the hex of its content hash, [`Resource::version`]).
#[derive(Clone, Debug)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub kind: ResourceType,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    pub removed: Vec<String>,
}

/// Length of a length-delimited field of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a proto3 string field: absent when empty, as prost writes it.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

fn put_header(tag: u32, len: usize, buf: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut BytesMut) {
    put_header(tag, bytes.len(), buf);
    buf.put_slice(bytes);
}

fn put_string(tag: u32, s: &str, buf: &mut BytesMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

// Field numbers of envoy.service.discovery.v3, written in increasing order
// as prost does.
const SOTW_VERSION_INFO: u32 = 1;
const SOTW_RESOURCES: u32 = 2;
const SOTW_TYPE_URL: u32 = 4;
const SOTW_NONCE: u32 = 5;

impl Encode for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_len(SOTW_VERSION_INFO, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| field_len(SOTW_RESOURCES, r.wire().len()))
                .sum::<usize>()
            + string_len(SOTW_TYPE_URL, self.kind.type_url())
            + string_len(SOTW_NONCE, &self.nonce)
    }

    fn encode(&self, buf: &mut BytesMut) {
        put_string(SOTW_VERSION_INFO, &self.version_info, buf);
        for r in &self.resources {
            put_bytes(SOTW_RESOURCES, r.wire(), buf);
        }
        put_string(SOTW_TYPE_URL, self.kind.type_url(), buf);
        put_string(SOTW_NONCE, &self.nonce, buf);
    }
}

const DELTA_SYSTEM_VERSION_INFO: u32 = 1;
const DELTA_RESOURCES: u32 = 2;
const DELTA_TYPE_URL: u32 = 4;
const DELTA_NONCE: u32 = 5;
const DELTA_REMOVED_RESOURCES: u32 = 6;
// envoy.service.discovery.v3.Resource
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_RESOURCE: u32 = 2;
const RESOURCE_NAME: u32 = 3;
/// [`Resource::version`]: 16 hex digits.
const VERSION_LEN: usize = 16;

/// Length of one `Resource` message (without its own key and length).
fn delta_resource_len(r: &Resource) -> usize {
    field_len(RESOURCE_VERSION, VERSION_LEN)
        + field_len(RESOURCE_RESOURCE, r.wire().len())
        + string_len(RESOURCE_NAME, &r.name)
}

impl Encode for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_len(DELTA_SYSTEM_VERSION_INFO, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| field_len(DELTA_RESOURCES, delta_resource_len(r)))
                .sum::<usize>()
            + string_len(DELTA_TYPE_URL, self.kind.type_url())
            + string_len(DELTA_NONCE, &self.nonce)
            + self
                .removed
                .iter()
                .map(|name| field_len(DELTA_REMOVED_RESOURCES, name.len()))
                .sum::<usize>()
    }

    fn encode(&self, buf: &mut BytesMut) {
        put_string(DELTA_SYSTEM_VERSION_INFO, &self.system_version_info, buf);
        for r in &self.resources {
            put_header(DELTA_RESOURCES, delta_resource_len(r), buf);
            put_header(RESOURCE_VERSION, VERSION_LEN, buf);
            // The version written in place: no string per resource and proxy.
            let _ = write!(HexInto(buf), "{:016x}", r.hash);
            put_bytes(RESOURCE_RESOURCE, r.wire(), buf);
            put_string(RESOURCE_NAME, &r.name, buf);
        }
        put_string(DELTA_TYPE_URL, self.kind.type_url(), buf);
        put_string(DELTA_NONCE, &self.nonce, buf);
        // Repeated strings are written even when empty, as prost does.
        for name in &self.removed {
            put_bytes(DELTA_REMOVED_RESOURCES, name.as_bytes(), buf);
        }
    }
}

/// `fmt::Write` into a `BytesMut` (which only implements it by value).
struct HexInto<'a>(&'a mut BytesMut);

impl std::fmt::Write for HexInto<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
    };
    use prost::Message;

    fn cluster(name: &str, size: usize) -> Arc<Resource> {
        let cluster = Cluster {
            name: name.to_string(),
            alt_stat_name: "x".repeat(size),
            ..Default::default()
        };
        Arc::new(Resource::new(name, ResourceType::Cluster, &cluster))
    }

    fn encoded(response: &impl Encode) -> Vec<u8> {
        let mut buf = BytesMut::with_capacity(response.encoded_len());
        response.encode(&mut buf);
        assert_eq!(buf.len(), response.encoded_len(), "length as announced");
        buf.to_vec()
    }

    /// Sizes on both sides of the varint boundaries (1, 2 and 3 bytes).
    fn resources() -> Vec<Arc<Resource>> {
        vec![
            cluster("a", 0),
            cluster("outbound|80||b.ns.svc.cluster.local", 120),
            cluster("c", 20_000),
            cluster("", 3),
        ]
    }

    #[test]
    fn a_sotw_response_from_shared_bytes_is_what_prost_encodes() {
        for (version, nonce, resources) in [
            ("v1", "7", resources()),
            ("", "", Vec::new()),
            ("0123456789abcdef", "1", vec![cluster("only", 5)]),
        ] {
            let ours = SotwResponse {
                version_info: version.to_string(),
                kind: ResourceType::Cluster,
                nonce: nonce.to_string(),
                resources: resources.clone(),
            };
            let theirs = DiscoveryResponse {
                version_info: version.to_string(),
                resources: resources.iter().map(|r| r.body.clone()).collect(),
                type_url: ResourceType::Cluster.type_url().to_string(),
                nonce: nonce.to_string(),
                ..Default::default()
            };
            assert_eq!(encoded(&ours), theirs.encode_to_vec());
        }
    }

    #[test]
    fn a_delta_response_from_shared_bytes_is_what_prost_encodes() {
        for (removed, resources) in [
            (vec!["gone".to_string(), String::new()], resources()),
            (Vec::new(), Vec::new()),
        ] {
            let ours = DeltaResponse {
                system_version_info: "abc".to_string(),
                kind: ResourceType::Endpoint,
                nonce: "12".to_string(),
                resources: resources.clone(),
                removed: removed.clone(),
            };
            let theirs = DeltaDiscoveryResponse {
                system_version_info: "abc".to_string(),
                resources: resources
                    .iter()
                    .map(|r| DeltaResource {
                        name: r.name.clone(),
                        version: r.version(),
                        resource: Some(r.body.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: ResourceType::Endpoint.type_url().to_string(),
                removed_resources: removed,
                nonce: "12".to_string(),
                ..Default::default()
            };
            assert_eq!(encoded(&ours), theirs.encode_to_vec());
        }
    }
}
