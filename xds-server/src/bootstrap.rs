//! The Envoy bootstrap for one workload: node identity, an ADS cluster
//! pointing at this server, LDS and CDS over ADS, and an admin address.
//!
//! With mutual-TLS xDS (the default) the ADS cluster presents the
//! workload's bootstrap client certificate and accepts only a server
//! certificate from our root with the xDS server's SPIFFE ID; the three
//! files are written by [`write_client_credentials`]. That certificate is
//! what proves the workload's identity to the control plane, so its key is
//! written with mode 0600 and lives as long as `--cert-lifetime` (30 days
//! by default): re-run `bootstrap` and restart Envoy before then.

use crate::ca::{CertificateAuthority, write_atomically};
use crate::identity::Identity;
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a bootstrap client certificate lives by default.
pub const DEFAULT_BOOTSTRAP_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The files a bootstrap points Envoy at for mutual-TLS xDS.
#[derive(Clone, Debug)]
pub struct XdsClientTls {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    pub root_cert: PathBuf,
    /// The SPIFFE ID the xDS server must present.
    pub server_spiffe_id: String,
}

/// Issues `identity`'s bootstrap client certificate and writes it, its key
/// (mode 0600) and the root certificate into `dir` (created 0700 if
/// missing). Paths in the result are absolute, as Envoy reads them from
/// wherever it runs.
pub fn write_client_credentials(
    ca: &CertificateAuthority,
    identity: &Identity,
    server_identity: &Identity,
    dir: &Path,
    lifetime: Duration,
) -> anyhow::Result<XdsClientTls> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let cert = ca
        .issue(identity, lifetime, SystemTime::now())
        .with_context(|| format!("issuing the bootstrap certificate of {identity}"))?;
    let tls = XdsClientTls {
        cert_chain: dir.join("xds-cert.pem"),
        private_key: dir.join("xds-key.pem"),
        root_cert: dir.join("root-cert.pem"),
        server_spiffe_id: server_identity.spiffe_id(ca.trust_domain()),
    };
    write_atomically(
        &tls.private_key,
        cert.private_key_pem.expose().as_bytes(),
        0o600,
    )?;
    write_atomically(&tls.cert_chain, cert.cert_chain_pem.as_bytes(), 0o644)?;
    write_atomically(&tls.root_cert, ca.root_pem().as_bytes(), 0o644)?;
    Ok(tls)
}

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
    /// Mutual-TLS xDS; `None` only for `--insecure-xds`.
    pub tls: Option<&'a XdsClientTls>,
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
    let mut xds_cluster = json!({
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
    });
    if let (Some(tls), Value::Object(cluster)) = (p.tls, &mut xds_cluster) {
        cluster.insert("transport_socket".to_string(), xds_transport_socket(tls));
    }
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
            "clusters": [xds_cluster]
        }
    })
}

/// TLS to the xDS server: our client certificate, and only a server
/// certificate from our root with the xDS server's SPIFFE ID.
fn xds_transport_socket(tls: &XdsClientTls) -> Value {
    let file = |p: &Path| json!({"filename": p.display().to_string()});
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": file(&tls.cert_chain),
                    "private_key": file(&tls.private_key)
                }],
                "validation_context": {
                    "trusted_ca": file(&tls.root_cert),
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": {"exact": tls.server_spiffe_id}
                    }]
                }
            }
        }
    })
}

/// The bootstrap as YAML text.
pub fn bootstrap_yaml(p: &BootstrapParams<'_>) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(&bootstrap(p))?)
}
