//! Proto3 JSON rendering of Envoy resources, the way Envoy's admin
//! `/config_dump` prints them. Used for golden files and for our own
//! `/debug/config_dump`, so the two can be compared line by line.
//!
//! envoy-types' prost structs have no serde support; instead we load the
//! descriptors of the messages we render ([`DESCRIPTORS`]) into a
//! prost-reflect [`DescriptorPool`] once and serialize a [`DynamicMessage`]. What Envoy
//! does, and so we do too:
//! - original snake_case field names (`connect_timeout`, not `connectTimeout`);
//! - fields at their default value are left out;
//! - `Any` prints as `{"@type": URL, ...fields}`, nested ones included;
//! - fields marked `(udpa.annotations.sensitive)` (private keys, passwords)
//!   are redacted as in `MessageUtil::redact`: strings and bytes become
//!   `"[redacted]"` (bytes base64-encoded), other scalars are dropped.
//!
//! What we add for determinism: protobuf `map` fields and `Struct`s are
//! printed with sorted keys (prost-reflect holds them in a `HashMap`), and
//! `float`/`double` values print the way protobuf does (`1`, not `1.0`).
//! Message fields come in field-number order, as prost-reflect emits them.

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::LazyLock;

/// A `FileDescriptorSet` cut from the one envoy-types ships: the .proto files
/// of every resource and extension we render, with their imports, without
/// source comments (210 KB instead of 3.3 MB). Committed, because a build
/// must not look outside the crate graph for it; `tests/descriptors.rs`
/// regenerates it and fails when it drifts from envoy-types
/// [`ENVOY_TYPES_VERSION`].
pub const DESCRIPTORS: &[u8] = include_bytes!("../descriptors/envoy.pb");

/// The envoy-types release [`DESCRIPTORS`] was cut from; `Cargo.lock` must
/// pin the same one.
pub const ENVOY_TYPES_VERSION: &str = "0.7.7";

/// What Envoy prints for a redacted string (and, base64-encoded, for bytes).
const REDACTED: &str = "[redacted]";
/// Base64 of `[redacted]`, as Envoy prints a redacted `bytes` field.
const REDACTED_BASE64: &str = "W3JlZGFjdGVkXQ==";

const OPTIONS: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(true);

/// A resource that cannot be rendered. Names the type URL, since the bytes
/// themselves say nothing to a reader.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown message type {type_url:?}: not in Envoy's descriptor set")]
    UnknownType { type_url: String },
    #[error("cannot decode a {type_url}: {source}")]
    Decode {
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("cannot render a {type_url} as JSON: {source}")]
    Json {
        type_url: String,
        #[source]
        source: serde_json::Error,
    },
}

struct Registry {
    pool: DescriptorPool,
    /// Full names of the fields annotated `(udpa.annotations.sensitive) = true`,
    /// collected once because decoding field options is not cheap.
    sensitive: HashSet<String>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(DESCRIPTORS)
        .expect("envoy-types ships a valid, self-contained descriptor set");
    let sensitive = match pool.get_extension_by_name("udpa.annotations.sensitive") {
        Some(ext) => pool
            .all_messages()
            .flat_map(|m| m.fields().collect::<Vec<_>>())
            .filter(|f| f.options().get_extension(&ext).as_bool().unwrap_or(false))
            .map(|f| f.full_name().to_string())
            .collect(),
        None => HashSet::new(),
    };
    Registry { pool, sensitive }
});

/// The pool of every Envoy message type, for callers that need to decode
/// or inspect resources by name.
pub fn descriptor_pool() -> &'static DescriptorPool {
    &REGISTRY.pool
}

/// Renders a packed message as Envoy prints it: `@type` first, then its
/// fields (or, for a well-known type such as `Duration`, its JSON under
/// `value`).
pub fn any_to_json(any: &Any) -> Result<Value, RenderError> {
    let registry = &*REGISTRY;
    let type_url = any.type_url.as_str();
    let desc =
        message_by_type_url(&registry.pool, type_url).ok_or_else(|| RenderError::UnknownType {
            type_url: type_url.to_string(),
        })?;
    let msg = DynamicMessage::decode(desc.clone(), any.value.as_slice()).map_err(|source| {
        RenderError::Decode {
            type_url: type_url.to_string(),
            source,
        }
    })?;
    let mut body = msg
        .serialize_with_options(serde_json::value::Serializer, &OPTIONS)
        .map_err(|source| RenderError::Json {
            type_url: type_url.to_string(),
            source,
        })?;
    normalize_message(registry, &mut body, &desc, false);

    let mut out = Map::new();
    out.insert("@type".to_string(), Value::String(type_url.to_string()));
    match body {
        Value::Object(fields) if !has_special_json(desc.full_name()) => out.extend(fields),
        other => {
            out.insert("value".to_string(), other);
        }
    }
    Ok(Value::Object(out))
}

/// Renders one xDS resource (its body, with `@type`).
pub fn resource_to_json(r: &crate::Resource) -> Result<Value, RenderError> {
    any_to_json(&r.body)
}

/// Pretty-printed JSON (2-space indent, as Envoy prints it) with a trailing
/// newline. Deterministic: object keys keep the order they were built in.
pub fn to_canonical_string(v: &Value) -> String {
    format!("{v:#}\n")
}

fn message_by_type_url(pool: &DescriptorPool, type_url: &str) -> Option<MessageDescriptor> {
    let name = type_url.rsplit_once('/').map_or(type_url, |(_, name)| name);
    pool.get_message_by_name(name)
}

/// Well-known types whose JSON is not an object of their fields; packed in
/// an `Any` they go under `value`.
fn has_special_json(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.Any"
            | "google.protobuf.Duration"
            | "google.protobuf.Timestamp"
            | "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.FieldMask"
            | "google.protobuf.Empty"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Walks the JSON of a message of type `desc` beside its descriptor: sorts
/// map keys, prints floats as protobuf does and redacts sensitive fields
/// (`sensitive` is set when an enclosing field was sensitive).
fn normalize_message(
    registry: &Registry,
    v: &mut Value,
    desc: &MessageDescriptor,
    sensitive: bool,
) {
    match desc.full_name() {
        "google.protobuf.Any" => normalize_any(registry, v, sensitive),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            normalize_struct(v);
            if sensitive {
                redact_struct(v);
            }
        }
        "google.protobuf.DoubleValue" => normalize_double(v),
        "google.protobuf.FloatValue" => normalize_float(v),
        "google.protobuf.StringValue" if sensitive => *v = Value::String(REDACTED.into()),
        "google.protobuf.BytesValue" if sensitive => *v = Value::String(REDACTED_BASE64.into()),
        name if has_special_json(name) => {}
        _ => {
            if let Value::Object(fields) = v {
                normalize_fields(registry, fields, desc, sensitive);
            }
        }
    }
}

fn normalize_any(registry: &Registry, v: &mut Value, sensitive: bool) {
    let Value::Object(fields) = v else { return };
    let Some(desc) = fields
        .get("@type")
        .and_then(Value::as_str)
        .and_then(|url| message_by_type_url(&registry.pool, url))
    else {
        return;
    };
    if has_special_json(desc.full_name()) {
        if let Some(value) = fields.get_mut("value") {
            normalize_message(registry, value, &desc, sensitive);
        }
    } else {
        normalize_fields(registry, fields, &desc, sensitive);
    }
}

fn normalize_fields(
    registry: &Registry,
    fields: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    sensitive: bool,
) {
    let mut cleared = Vec::new();
    for (name, value) in fields.iter_mut() {
        // `@type` of an Any is not a field.
        let Some(field) = desc.get_field_by_name(name) else {
            continue;
        };
        let sensitive = sensitive || registry.sensitive.contains(field.full_name());
        let kind = field.kind();
        if field.is_map() {
            let Some(entry) = kind.as_message() else {
                continue;
            };
            let key_kind = entry.map_entry_key_field().kind();
            let value_kind = entry.map_entry_value_field().kind();
            if let Value::Object(map) = value {
                sort_map(map, &key_kind);
                for v in map.values_mut() {
                    // Envoy redacts map values only, and clears (not drops) scalars.
                    if normalize_value(registry, v, &value_kind, sensitive) {
                        *v = default_json(&value_kind);
                    }
                }
            }
        } else if field.is_list() {
            let mut clear = false;
            if let Value::Array(items) = value {
                for item in items {
                    clear |= normalize_value(registry, item, &kind, sensitive);
                }
            }
            if clear {
                cleared.push(name.clone());
            }
        } else if normalize_value(registry, value, &kind, sensitive) {
            cleared.push(name.clone());
        }
    }
    for name in cleared {
        fields.shift_remove(&name);
    }
}

/// Normalizes one value of a field of kind `kind`. Returns true when the
/// value is a sensitive scalar Envoy would clear rather than replace.
fn normalize_value(registry: &Registry, v: &mut Value, kind: &Kind, sensitive: bool) -> bool {
    match kind {
        Kind::Message(desc) => {
            normalize_message(registry, v, desc, sensitive);
            false
        }
        Kind::String => {
            if sensitive {
                *v = Value::String(REDACTED.into());
            }
            false
        }
        Kind::Bytes => {
            if sensitive {
                *v = Value::String(REDACTED_BASE64.into());
            }
            false
        }
        Kind::Double => {
            normalize_double(v);
            sensitive
        }
        Kind::Float => {
            normalize_float(v);
            sensitive
        }
        _ => sensitive,
    }
}

/// The JSON of a scalar at its default value (for a cleared map value).
fn default_json(kind: &Kind) -> Value {
    match kind {
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            Value::String("0".into())
        }
        Kind::Bool => Value::Bool(false),
        Kind::Enum(e) => e.default_value().name().to_string().into(),
        _ => Value::from(0),
    }
}

/// Sorts a protobuf map's entries by key: numerically for integer keys,
/// `false` before `true` for bool keys, by string otherwise.
fn sort_map(map: &mut Map<String, Value>, key_kind: &Kind) {
    let numeric = !matches!(key_kind, Kind::String | Kind::Bool);
    let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
    entries.sort_by(|(a, _), (b, _)| {
        if numeric {
            match (a.parse::<i128>(), b.parse::<i128>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a.cmp(b),
            }
        } else {
            a.cmp(b)
        }
    });
    map.extend(entries);
}

/// A `Struct`/`Value`/`ListValue`: every object in it is a map, so sort
/// its keys; every number in it is a double.
fn normalize_struct(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(normalize_struct);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_struct),
        Value::Number(_) => normalize_double(v),
        Value::String(_) | Value::Bool(_) | Value::Null => {}
    }
}

/// A sensitive `Struct`: strings become `[redacted]`; numbers and bools,
/// which Envoy clears, become `null` (a `Value` with no kind).
fn redact_struct(v: &mut Value) {
    match v {
        Value::Object(map) => map.values_mut().for_each(redact_struct),
        Value::Array(items) => items.iter_mut().for_each(redact_struct),
        Value::String(s) => *s = REDACTED.into(),
        Value::Number(_) | Value::Bool(_) => *v = Value::Null,
        Value::Null => {}
    }
}

/// Protobuf prints an integral double without a fraction (`1`, not `1.0`).
fn normalize_double(v: &mut Value) {
    if let Some(x) = v.as_f64() {
        *v = float_json(x);
    }
}

/// A `float` widened to f64 prints its noise (`0.10000000149011612`);
/// protobuf prints the shortest form that reads back as the same f32.
fn normalize_float(v: &mut Value) {
    if let Some(x) = v.as_f64() {
        let shortest = (x as f32).to_string().parse::<f64>().unwrap_or(x);
        *v = float_json(shortest);
    }
}

fn float_json(x: f64) -> Value {
    // Exactly representable integers print as integers; 2^53 bounds that.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if x.fract() == 0.0 && x.abs() < EXACT {
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Resource, ResourceType};
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        Address, DataSource, SocketAddress, TransportSocket, address, data_source, socket_address,
        transport_socket,
    };
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, Secret, TlsCertificate, UpstreamTlsContext, secret,
    };
    use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
    use prost::{Message, Name};
    use serde_json::json;

    fn pack<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn tls_cluster() -> Cluster {
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                alpn_protocols: vec!["istio".into()],
                ..Default::default()
            }),
            sni: "outbound_.80_._.httpbin.foo.svc.cluster.local".into(),
            ..Default::default()
        };
        Cluster {
            name: "outbound|80||httpbin.foo.svc.cluster.local".into(),
            connect_timeout: Some(Duration {
                seconds: 10,
                nanos: 0,
            }),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 32768 }),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&tls))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_with_tls_transport_socket_renders_like_config_dump() {
        let r = Resource::new(
            "outbound|80||httpbin.foo.svc.cluster.local",
            ResourceType::Cluster,
            &tls_cluster(),
        );
        let got = resource_to_json(&r).expect("renders");
        assert_eq!(
            got,
            json!({
                "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "name": "outbound|80||httpbin.foo.svc.cluster.local",
                "type": "EDS",
                "connect_timeout": "10s",
                "per_connection_buffer_limit_bytes": 32768,
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": { "alpn_protocols": ["istio"] },
                        "sni": "outbound_.80_._.httpbin.foo.svc.cluster.local"
                    }
                }
            })
        );
        // `@type` comes first on both levels.
        let text = to_canonical_string(&got);
        assert!(text.starts_with(
            "{\n  \"@type\": \"type.googleapis.com/envoy.config.cluster.v3.Cluster\",\n"
        ));
        assert!(text.contains(
            "\"typed_config\": {\n      \"@type\": \"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\",\n"
        ));
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn listener_with_nested_filter_config_renders() {
        let tcp = TcpProxy {
            stat_prefix: "inbound_passthrough".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                "InboundPassthroughCluster".into(),
            )),
            ..Default::default()
        };
        let listener = Listener {
            name: "virtualInbound".into(),
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "0.0.0.0".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(15006)),
                    ..Default::default()
                })),
            }),
            filter_chains: vec![FilterChain {
                name: "virtualInbound-catchall-http".into(),
                filters: vec![Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack(&tcp))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let got = any_to_json(&pack(&listener)).expect("renders");
        assert_eq!(
            got,
            json!({
                "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
                "name": "virtualInbound",
                "address": { "socket_address": { "address": "0.0.0.0", "port_value": 15006 } },
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "inbound_passthrough",
                            "cluster": "InboundPassthroughCluster"
                        }
                    }],
                    "name": "virtualInbound-catchall-http"
                }]
            })
        );
    }

    #[test]
    fn unknown_type_url_is_an_error_naming_it() {
        let any = Any {
            type_url: "type.googleapis.com/example.NoSuchMessage".into(),
            value: vec![],
        };
        let err = any_to_json(&any).expect_err("unknown type");
        assert!(matches!(err, RenderError::UnknownType { .. }));
        assert!(err.to_string().contains("example.NoSuchMessage"), "{err}");
    }

    #[test]
    fn undecodable_body_is_an_error_naming_the_type() {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().into(),
            value: vec![0xff, 0xff, 0xff],
        };
        let err = any_to_json(&any).expect_err("garbage");
        assert!(matches!(err, RenderError::Decode { .. }));
        assert!(
            err.to_string().contains("envoy.config.cluster.v3.Cluster"),
            "{err}"
        );
    }

    #[test]
    fn unknown_nested_type_is_an_error_naming_the_outer_type() {
        let mut cluster = tls_cluster();
        cluster.transport_socket = Some(TransportSocket {
            name: "x".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/example.Nope".into(),
                value: vec![],
            })),
        });
        let err = any_to_json(&pack(&cluster)).expect_err("unknown nested type");
        let text = err.to_string();
        assert!(text.contains("envoy.config.cluster.v3.Cluster"), "{text}");
        assert!(text.contains("example.Nope"), "{text}");
    }

    #[test]
    fn private_keys_are_redacted_as_envoy_does() {
        let secret = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString("CERT".into())),
                    ..Default::default()
                }),
                private_key: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(
                        b"-----BEGIN PRIVATE KEY-----".to_vec(),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let got = any_to_json(&pack(&secret)).expect("renders");
        let text = to_canonical_string(&got);
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert_eq!(
            got["tls_certificate"],
            json!({
                "certificate_chain": { "inline_string": "CERT" },
                "private_key": { "inline_bytes": "W3JlZGFjdGVkXQ==" }
            })
        );
    }

    #[test]
    fn map_fields_render_sorted_by_key() {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value};
        let s = |pairs: &[(&str, f64)]| Struct {
            fields: pairs
                .iter()
                .map(|(k, n)| {
                    (
                        (*k).to_string(),
                        PbValue {
                            kind: Some(value::Kind::NumberValue(*n)),
                        },
                    )
                })
                .collect(),
        };
        let md = Metadata {
            filter_metadata: [
                ("zeta".to_string(), s(&[("b", 1.0), ("a", 0.5)])),
                ("alpha".to_string(), s(&[("y", 2.0), ("x", 3.0)])),
                ("mid".to_string(), s(&[])),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let got = any_to_json(&pack(&md)).expect("renders");
        let text = to_canonical_string(&got);
        let expected = "{\n  \"@type\": \"type.googleapis.com/envoy.config.core.v3.Metadata\",\n  \"filter_metadata\": {\n    \"alpha\": {\n      \"x\": 3,\n      \"y\": 2\n    },\n    \"mid\": {},\n    \"zeta\": {\n      \"a\": 0.5,\n      \"b\": 1\n    }\n  }\n}\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn floats_print_as_protobuf_prints_them() {
        use envoy_types::pb::envoy::r#type::v3::Percent;
        use envoy_types::pb::google::protobuf::FloatValue;
        let whole = any_to_json(&pack(&Percent { value: 100.0 })).expect("renders");
        assert_eq!(to_canonical_string(&whole["value"]), "100\n");
        let half = any_to_json(&pack(&Percent { value: 0.5 })).expect("renders");
        assert_eq!(to_canonical_string(&half["value"]), "0.5\n");
        // A float widened to double would print 0.10000000149011612.
        let f = any_to_json(&pack(&FloatValue { value: 0.1 })).expect("renders");
        assert_eq!(to_canonical_string(&f["value"]), "0.1\n");
    }

    #[test]
    fn well_known_type_in_any_goes_under_value() {
        let d = Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        let got = any_to_json(&pack(&d)).expect("renders");
        assert_eq!(
            got,
            json!({ "@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.500s" })
        );
    }
}
