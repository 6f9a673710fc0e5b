//! The committed descriptor set (`descriptors/envoy.pb`) is cut from the one
//! envoy-types ships: the files of the roots below and everything they
//! import, copied byte for byte but for their source comments. These tests
//! fail when it drifts from that release; `UPDATE_GOLDEN=1` rewrites it.

use prost::Name;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use translator::render::{DESCRIPTORS, ENVOY_TYPES_VERSION, descriptor_pool};

/// The .proto files whose messages we render (resources and the extensions
/// packed inside them); their imports come along.
const ROOTS: &[&str] = &[
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.proto",
];

/// `FileDescriptorSet.file` and, inside a `FileDescriptorProto`, `name`,
/// `dependency` and `source_code_info`.
const SET_FILE: u64 = 1;
const FILE_NAME: u64 = 1;
const FILE_DEPENDENCY: u64 = 3;
const FILE_SOURCE_CODE_INFO: u64 = 9;

fn varint(bytes: &mut &[u8]) -> u64 {
    prost::encoding::decode_varint(bytes).expect("a well-formed descriptor set")
}

/// The fields of one message as (field number, the field's raw bytes
/// including its key, its payload when length-delimited).
fn fields(mut bytes: &[u8]) -> Vec<(u64, &[u8], &[u8])> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let start = bytes;
        let key = varint(&mut bytes);
        let payload: &[u8] = match key & 7 {
            0 => {
                varint(&mut bytes);
                &[]
            }
            1 => {
                bytes = &bytes[8..];
                &[]
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)).expect("length fits usize");
                let (payload, rest) = bytes.split_at(len);
                bytes = rest;
                payload
            }
            5 => {
                bytes = &bytes[4..];
                &[]
            }
            wire => panic!("unexpected wire type {wire} in a descriptor set"),
        };
        let used = start.len() - bytes.len();
        out.push((key >> 3, &start[..used], payload));
    }
    out
}

/// The descriptor set to commit, cut from `shipped`.
fn cut(shipped: &[u8]) -> Vec<u8> {
    let mut files = Vec::new();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (number, _, file) in fields(shipped) {
        assert_eq!(number, SET_FILE, "a FileDescriptorSet holds only files");
        let mut name = String::new();
        let mut imports = Vec::new();
        let mut kept = Vec::new();
        for (field, raw, payload) in fields(file) {
            match field {
                FILE_NAME => name = String::from_utf8(payload.to_vec()).expect("UTF-8 name"),
                FILE_DEPENDENCY => {
                    imports.push(String::from_utf8(payload.to_vec()).expect("UTF-8 import"))
                }
                _ => {}
            }
            if field != FILE_SOURCE_CODE_INFO {
                kept.extend_from_slice(raw);
            }
        }
        deps.insert(name.clone(), imports);
        files.push((name, kept));
    }
    let mut wanted = BTreeSet::new();
    let mut todo: Vec<String> = ROOTS.iter().map(|r| r.to_string()).collect();
    while let Some(file) = todo.pop() {
        let imports = deps
            .get(&file)
            .unwrap_or_else(|| panic!("{file} is not in envoy-types' descriptor set"));
        if wanted.insert(file.clone()) {
            todo.extend(imports.iter().cloned());
        }
    }
    // Keep the shipped order: protoc writes a file after its imports.
    let mut out = Vec::new();
    for (_, body) in files.into_iter().filter(|(n, _)| wanted.contains(n)) {
        prost::encoding::encode_key(
            SET_FILE as u32,
            prost::encoding::WireType::LengthDelimited,
            &mut out,
        );
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(&body);
    }
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the translator sits in the workspace")
        .to_path_buf()
}

/// The descriptor set envoy-types ships, from the unpacked crate sources in
/// cargo's home (where every build of this workspace has put them).
fn shipped_descriptor_set() -> Vec<u8> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME is set");
    let registry = cargo_home.join("registry/src");
    let wanted = format!("envoy-types-{ENVOY_TYPES_VERSION}/src/generated/types.bin");
    let found = std::fs::read_dir(&registry)
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join(&wanted))
                .find(|p| p.is_file())
        })
        .ok()
        .flatten();
    let path = found.unwrap_or_else(|| {
        panic!(
            "{wanted} not found under {}: build the workspace first (cargo fetches it)",
            registry.display()
        )
    });
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn committed_descriptors_are_the_ones_envoy_types_ships() {
    let expected = cut(&shipped_descriptor_set());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptors/envoy.pb");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &expected).expect("writing the descriptor set");
        return;
    }
    assert!(
        DESCRIPTORS == expected.as_slice(),
        "{} ({} bytes) differs from the cut of envoy-types {ENVOY_TYPES_VERSION} ({} bytes); \
         regenerate with UPDATE_GOLDEN=1 cargo test -p translator --test descriptors",
        path.display(),
        DESCRIPTORS.len(),
        expected.len()
    );
}

#[test]
fn cargo_lock_pins_the_envoy_types_the_descriptors_come_from() {
    let lock = std::fs::read_to_string(workspace_root().join("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"envoy-types\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"'))
        .expect("Cargo.lock lists envoy-types");
    assert_eq!(
        version, ENVOY_TYPES_VERSION,
        "envoy-types changed: regenerate descriptors/envoy.pb and bump ENVOY_TYPES_VERSION"
    );
}

#[test]
fn every_message_we_pack_or_serve_has_a_descriptor() {
    use envoy_types::pb::envoy::config::{cluster, endpoint, listener, route};
    use envoy_types::pb::envoy::extensions::{filters, transport_sockets, upstreams};
    let names = [
        listener::v3::Listener::full_name(),
        cluster::v3::Cluster::full_name(),
        endpoint::v3::ClusterLoadAssignment::full_name(),
        route::v3::RouteConfiguration::full_name(),
        transport_sockets::tls::v3::Secret::full_name(),
        transport_sockets::tls::v3::UpstreamTlsContext::full_name(),
        transport_sockets::tls::v3::DownstreamTlsContext::full_name(),
        transport_sockets::raw_buffer::v3::RawBuffer::full_name(),
        filters::network::http_connection_manager::v3::HttpConnectionManager::full_name(),
        filters::network::tcp_proxy::v3::TcpProxy::full_name(),
        filters::http::router::v3::Router::full_name(),
        filters::listener::tls_inspector::v3::TlsInspector::full_name(),
        filters::listener::http_inspector::v3::HttpInspector::full_name(),
        filters::listener::original_dst::v3::OriginalDst::full_name(),
        upstreams::http::v3::HttpProtocolOptions::full_name(),
        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
            .to_string(),
    ];
    let pool = descriptor_pool();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| pool.get_message_by_name(n).is_none())
        .collect();
    assert!(missing.is_empty(), "no descriptor for {missing:?}");
}
