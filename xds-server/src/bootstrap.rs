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
//!
//! Several control plane replicas (sharing one state directory, hence one
//! root) can be listed: the ADS cluster has one endpoint per address, and
//! Envoy opens each new ADS stream on the next endpoint in round-robin
//! order. When the stream's replica goes away (it ends the stream on
//! shutdown, or its connection breaks), Envoy's next attempt goes to the
//! next replica; an attempt on one that is down fails to connect at once
//! and the retry after it moves on again. The retry backoff is capped
//! ([`XDS_RETRY_MAX`]) so a sidecar is never more than a few seconds from
//! a replica that is back.

use crate::ca::{CertificateAuthority, SecretString, write_atomically};
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
    let cert = ca
        .issue(identity, lifetime, SystemTime::now())
        .with_context(|| format!("issuing the bootstrap certificate of {identity}"))?;
    write_credentials(
        dir,
        &cert.cert_chain_pem,
        &cert.private_key_pem,
        ca.root_pem(),
        server_identity.spiffe_id(ca.trust_domain()),
    )
}

/// Writes a bootstrap client certificate, its key (mode 0600) and the root
/// into `dir` (created 0700 if missing), each atomically.
pub fn write_credentials(
    dir: &Path,
    cert_chain_pem: &str,
    private_key_pem: &SecretString,
    root_pem: &str,
    server_spiffe_id: String,
) -> anyhow::Result<XdsClientTls> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let tls = XdsClientTls {
        cert_chain: dir.join("xds-cert.pem"),
        private_key: dir.join("xds-key.pem"),
        root_cert: dir.join("root-cert.pem"),
        server_spiffe_id,
    };
    write_atomically(&tls.private_key, private_key_pem.expose().as_bytes(), 0o600)?;
    write_atomically(&tls.cert_chain, cert_chain_pem.as_bytes(), 0o644)?;
    write_atomically(&tls.root_cert, root_pem.as_bytes(), 0o644)?;
    Ok(tls)
}

/// A control plane address as a bootstrap names it: an IP address, or a
/// DNS name (a Service's, in a cluster), and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `IP:PORT`, `[IPV6]:PORT` or `NAME:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{s:?} is not HOST:PORT"));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !name_ok {
            return Err(format!(
                "{s:?}: {host:?} is neither an IP address nor a DNS name"
            ));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

pub struct BootstrapParams<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub ip: IpAddr,
    pub service_account: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The Deployment (or the pod) name.
    pub workload_name: &'a str,
    /// The control plane's ADS addresses (one per replica), in order; at
    /// least one.
    pub xds_addrs: &'a [HostPort],
    pub delta: bool,
    pub admin: SocketAddr,
    pub cluster_domain: &'a str,
    /// Mutual-TLS xDS; `None` only for `--insecure-xds`.
    pub tls: Option<&'a XdsClientTls>,
    /// The node metadata `INTERCEPTION_MODE`: the Envoy layout the control
    /// plane sends (REDIRECT when the pod's traffic is captured by
    /// `xds-server iptables`).
    pub interception: translator::Interception,
}

pub const XDS_CLUSTER: &str = "xds-grpc";

/// First and longest wait before Envoy re-opens a broken ADS stream
/// (jittered, doubling in between). Envoy's own defaults are 0.5 s and 30 s;
/// 30 s is long to be without a control plane that is already back.
pub const XDS_RETRY_BASE: &str = "0.5s";
pub const XDS_RETRY_MAX: &str = "5s";

pub fn bootstrap(p: &BootstrapParams<'_>) -> Value {
    let node_id =
        crate::identity::NodeId::format(&p.ip.to_string(), p.pod, p.namespace, p.cluster_domain);
    let app = p
        .labels
        .get("app")
        .map(String::as_str)
        .unwrap_or(p.workload_name);
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    // One locality, one endpoint per replica: round robin (the default
    // policy) puts each new stream on the next one.
    let lb_endpoints: Vec<Value> = p
        .xds_addrs
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.host,
                "port_value": a.port
            }}}})
        })
        .collect();
    // Addresses only: a static cluster. A name (the Service in a cluster):
    // resolved by Envoy, and re-resolved, as any DNS cluster.
    let static_only = p.xds_addrs.iter().all(|a| a.ip().is_some());
    let mut xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": if static_only { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": lb_endpoints}]
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
                "INTERCEPTION_MODE": p.interception.as_str(),
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
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": XDS_CLUSTER,
                    "retry_policy": {"retry_back_off": {
                        "base_interval": XDS_RETRY_BASE,
                        "max_interval": XDS_RETRY_MAX
                    }}
                }}]
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
    if p.xds_addrs.is_empty() {
        anyhow::bail!("a bootstrap needs at least one xDS address");
    }
    Ok(serde_yaml::to_string(&bootstrap(p))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_of(xds_addrs: &[HostPort]) -> anyhow::Result<Value> {
        let labels = BTreeMap::new();
        let yaml = bootstrap_yaml(&BootstrapParams {
            namespace: "foo",
            pod: "sleep-0",
            ip: "127.16.0.1".parse()?,
            service_account: "sleep",
            labels: &labels,
            workload_name: "sleep",
            xds_addrs,
            delta: false,
            admin: "127.16.0.1:15000".parse()?,
            cluster_domain: "cluster.local",
            tls: None,
            interception: translator::Interception::None,
        })?;
        Ok(serde_yaml::from_str(&yaml)?)
    }

    #[test]
    fn every_xds_address_is_an_endpoint_of_the_ads_cluster_in_order() {
        let addrs: Vec<HostPort> = ["127.0.0.1:15010", "10.0.0.2:15012"]
            .iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        let b = yaml_of(&addrs).expect("bootstrap");
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["name"], XDS_CLUSTER);
        let localities = cluster["load_assignment"]["endpoints"]
            .as_array()
            .expect("endpoints");
        assert_eq!(localities.len(), 1, "one locality, one priority");
        let got: Vec<String> = localities[0]["lb_endpoints"]
            .as_array()
            .expect("lb_endpoints")
            .iter()
            .map(|e| {
                let a = &e["endpoint"]["address"]["socket_address"];
                format!(
                    "{}:{}",
                    a["address"].as_str().unwrap_or(""),
                    a["port_value"]
                )
            })
            .collect();
        assert_eq!(got, ["127.0.0.1:15010", "10.0.0.2:15012"]);
        let grpc = &b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"];
        assert_eq!(grpc["cluster_name"], XDS_CLUSTER);
        assert_eq!(
            grpc["retry_policy"]["retry_back_off"]["max_interval"],
            XDS_RETRY_MAX
        );
    }

    #[test]
    fn a_bootstrap_without_an_xds_address_is_refused() {
        let err = yaml_of(&[]).expect_err("no address");
        assert!(
            err.to_string().contains("at least one xDS address"),
            "{err}"
        );
    }
}
