//! xDS over mutual TLS: the server presents a certificate from our CA and
//! requires a client certificate from it; a stream's identity is the SPIFFE
//! ID of that client certificate ([`peer_from_tls`]), never what the node id
//! claims.
//!
//! The server certificate carries the SPIFFE ID
//! `spiffe://TRUST_DOMAIN/ns/ROOT_NAMESPACE/sa/xds-server` (what a sidecar's
//! bootstrap checks), plus the DNS names and IP a client may dial. It is
//! re-issued at half-life by [`ServerCert::rotate`] and swapped in without a
//! restart: new handshakes get the new certificate, open streams keep theirs.

use crate::ca::CertificateAuthority;
use crate::identity::{Identity, Peer};
use anyhow::Context;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The service account of the control plane in the root namespace: the
/// SPIFFE ID sidecars expect of the xDS server.
pub const XDS_SERVICE_ACCOUNT: &str = "xds-server";

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 128;

/// The identity of the xDS server in a mesh whose root namespace is
/// `root_namespace`.
pub fn server_identity(root_namespace: &str) -> Identity {
    Identity {
        namespace: root_namespace.to_string(),
        service_account: XDS_SERVICE_ACCOUNT.to_string(),
    }
}

/// The server's current certificate, swapped on rotation.
#[derive(Debug)]
pub struct ServerCert {
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    lifetime: Duration,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServerCert {
    /// Issues the first certificate. `dns_names` and `ips` become SANs
    /// beside the SPIFFE ID.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        identity: Identity,
        dns_names: Vec<String>,
        ips: Vec<IpAddr>,
        lifetime: Duration,
    ) -> anyhow::Result<ServerCert> {
        let first = issue(&ca, &identity, &dns_names, &ips, lifetime)?;
        Ok(ServerCert {
            ca,
            identity,
            dns_names,
            ips,
            lifetime,
            current: RwLock::new(first),
        })
    }

    /// Re-issues the certificate when it is past half its lifetime. Returns
    /// when the next renewal is due.
    pub fn rotate(&self, now: SystemTime) -> anyhow::Result<SystemTime> {
        let due = self.current.read().map(|c| c.1).unwrap_or(now);
        if due > now {
            return Ok(due);
        }
        let next = issue(
            &self.ca,
            &self.identity,
            &self.dns_names,
            &self.ips,
            self.lifetime,
        )?;
        let renew_at = next.1;
        if let Ok(mut current) = self.current.write() {
            *current = next;
        }
        tracing::info!(identity = %self.identity, "rotated the xDS server certificate");
        Ok(renew_at)
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    dns_names: &[String],
    ips: &[IpAddr],
    lifetime: Duration,
) -> anyhow::Result<(Arc<CertifiedKey>, SystemTime)> {
    let cert = ca.issue_with_names(identity, dns_names, ips, lifetime, SystemTime::now())?;
    let chain = certificates(&cert.cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.expose().as_bytes())
        .map_err(|e| anyhow::anyhow!("reading the xDS server key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| anyhow::anyhow!("loading the xDS server certificate: {e}"))?;
    Ok((Arc::new(certified), cert.renew_at()))
}

fn certificates(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("reading a PEM certificate: {e}"))
}

#[derive(Debug)]
struct Resolver(Arc<ServerCert>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

/// The TLS configuration of the xDS listener: our certificate, HTTP/2 only,
/// and a client certificate chaining to our root required.
pub fn server_config(
    ca: &CertificateAuthority,
    cert: Arc<ServerCert>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in certificates(ca.root_pem())? {
        roots
            .add(root)
            .context("adding the root CA to the client verifier")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the client certificate verifier")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(cert)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections on `listener` and yields those that complete a
/// TLS handshake. Each handshake runs in its own task, bounded by
/// [`HANDSHAKE_TIMEOUT`], so a client that never finishes one holds up no
/// one else; failures are logged at debug level (a port scan is not news).
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        // Ends when the gRPC server dropped its side.
        while !tx.is_closed() {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin.
                    tracing::warn!(%error, "accepting an xDS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%remote, %error, "xDS TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%remote, "xDS TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The [`crate::ads::PeerResolver`] of mutual-TLS xDS: the identity is the
/// SPIFFE ID (URI SAN) of the verified client certificate, in
/// `trust_domain`. Anything else is [`Peer::Rejected`] with the reason.
pub fn peer_from_tls(
    trust_domain: String,
) -> impl Fn(&MetadataMap, &Extensions) -> Peer + Send + Sync + 'static {
    move |_metadata, extensions| {
        let Some(info) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() else {
            return Peer::Rejected("the connection is not TLS".to_string());
        };
        let Some(leaf) = info.peer_certs().and_then(|c| c.first().cloned()) else {
            return Peer::Rejected("no client certificate".to_string());
        };
        match spiffe_identity(leaf.as_ref(), &trust_domain) {
            Ok(identity) => Peer::Certificate(identity),
            Err(reason) => Peer::Rejected(reason),
        }
    }
}

/// The identity named by the single SPIFFE URI SAN of a DER certificate.
pub fn spiffe_identity(der: &[u8], trust_domain: &str) -> Result<Identity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's SAN does not parse: {e}"))?
        .ok_or_else(|| "the client certificate has no SAN".to_string())?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => Identity::from_spiffe_id(one, trust_domain),
        [] => Err("the client certificate has no SPIFFE ID".to_string()),
        more => Err(format!(
            "the client certificate has {} SPIFFE IDs; a workload has one",
            more.len()
        )),
    }
}
