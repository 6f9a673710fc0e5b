//! The Envoy bootstrap for one workload: node identity, an ADS cluster
//! pointing at this server, LDS and CDS over ADS, and an admin address.
//! Stock Envoy starts from it with no other file.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

pub struct BootstrapParams<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub ip: IpAddr,
    pub service_account: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The Deployment (or the pod) name.
    pub workload_name: &'a str,
    pub xds_addr: SocketAddr,
    pub delta: bool,
    pub admin: SocketAddr,
    pub cluster_domain: &'a str,
}

pub const XDS_CLUSTER: &str = "xds-grpc";

pub fn bootstrap(p: &BootstrapParams<'_>) -> Value {
    let node_id =
        crate::identity::NodeId::format(&p.ip.to_string(), p.pod, p.namespace, p.cluster_domain);
    let app = p
        .labels
        .get("app")
        .map(String::as_str)
        .unwrap_or(p.workload_name);
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    json!({
        "node": {
            "id": node_id,
            "cluster": format!("{app}.{}", p.namespace),
            "metadata": {
                "NAMESPACE": p.namespace,
                "SERVICE_ACCOUNT": p.service_account,
                "WORKLOAD_NAME": p.workload_name,
                "INSTANCE_IPS": p.ip.to_string(),
                "INTERCEPTION_MODE": "NONE",
                "LABELS": p.labels,
            }
        },
        "admin": {
            "address": {"socket_address": {"address": p.admin.ip().to_string(), "port_value": p.admin.port()}}
        },
        // An explicit (generous) connection limit, as istio-proxy sets one:
        // without it Envoy warns on every start.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 2147483647u64
                }
            }]
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": if p.delta { "DELTA_GRPC" } else { "GRPC" },
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}]
            },
            "cds_config": ads,
            "lds_config": ads
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": p.xds_addr.ip().to_string(),
                        "port_value": p.xds_addr.port()
                    }}}}]}]
                }
            }]
        }
    })
}

/// The bootstrap as YAML text.
pub fn bootstrap_yaml(p: &BootstrapParams<'_>) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&bootstrap(p))?)
}
