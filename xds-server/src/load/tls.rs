//! How a simulated sidecar reaches the server: mutual TLS with a client
//! certificate for its identity, signed by the server's CA (read from the
//! server's state directory, as `xds-server bootstrap` does), and the
//! server's certificate checked as a sidecar's bootstrap checks it: chained
//! to that root, and carrying the control plane's SPIFFE ID.

use super::proxy::{Connect, ProxySpec};
use crate::ca::CertificateAuthority;
use crate::identity::Identity;
use crate::xds_tls::{server_identity, spiffe_identity};
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

/// How long a connection (TCP and TLS) may take before it counts as failed:
/// the `connect_timeout` of the xDS cluster in the bootstrap `xds-server
/// bootstrap` writes, so a simulated sidecar gives up when Envoy would.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Lifetime of the client certificates the load generator issues: longer
/// than any run.
const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Connects proxies over mutual TLS, one client configuration per identity.
pub struct TlsConnect {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    trust_domain: String,
    expected_server: Identity,
    clients: BTreeMap<Identity, TlsConnector>,
    connect_timeout: Duration,
}

impl TlsConnect {
    /// Issues a client certificate from `ca` for each of `identities`.
    /// `server_name` is the name the server's certificate must carry
    /// (`localhost` is in every `serve` certificate); a connection that
    /// takes longer than `connect_timeout` (TCP and TLS) fails.
    pub fn new<'a>(
        ca: &CertificateAuthority,
        identities: impl IntoIterator<Item = &'a Identity>,
        addr: SocketAddr,
        server_name: &str,
        root_namespace: &str,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.root_pem().as_bytes()) {
            roots
                .add(cert.map_err(|e| anyhow!("reading the root certificate: {e}"))?)
                .context("adding the root certificate")?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = SystemTime::now();
        let mut clients = BTreeMap::new();
        for identity in identities {
            if clients.contains_key(identity) {
                continue;
            }
            let cert = ca
                .issue(identity, CLIENT_CERT_LIFETIME, now)
                .with_context(|| format!("issuing a client certificate for {identity}"))?;
            let chain = CertificateDer::pem_slice_iter(cert.cert_chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("reading {identity}'s certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.expose().as_bytes())
                .map_err(|e| anyhow!("reading {identity}'s key: {e}"))?;
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("choosing TLS versions")?
                .with_root_certificates(Arc::clone(&roots))
                .with_client_auth_cert(chain, key)
                .with_context(|| format!("loading {identity}'s client certificate"))?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            clients.insert(identity.clone(), TlsConnector::from(Arc::new(config)));
        }
        Ok(TlsConnect {
            addr,
            server_name: ServerName::try_from(server_name.to_string())
                .with_context(|| format!("{server_name:?} is not a server name"))?,
            trust_domain: ca.trust_domain().to_string(),
            expected_server: server_identity(root_namespace),
            clients,
            connect_timeout,
        })
    }
}

impl Connect for TlsConnect {
    type Transport = Channel;

    async fn connect(&self, proxy: &ProxySpec) -> anyhow::Result<Channel> {
        let connector = self
            .clients
            .get(&proxy.identity)
            .cloned()
            .with_context(|| format!("no client certificate for {}", proxy.identity))?;
        let addr = self.addr;
        let name = self.server_name.clone();
        let trust_domain = self.trust_domain.clone();
        let expected = self.expected_server.clone();
        let timeout = self.connect_timeout;
        // A fresh channel per attempt: tonic's own reconnecting would hide
        // the resets this generator counts. The deadline covers TCP and
        // TLS together, as Envoy's connect_timeout does; each phase says
        // which one ran out, so a reset tells a full accept backlog (TCP)
        // from a busy server (TLS).
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_with_connector(tower::service_fn(move |_uri| {
                let connector = connector.clone();
                let name = name.clone();
                let trust_domain = trust_domain.clone();
                let expected = expected.clone();
                async move {
                    let deadline = tokio::time::Instant::now() + timeout;
                    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
                        .await
                        .map_err(|_| timed_out("TCP connect", timeout))??;
                    // Many small requests: do not wait to fill packets.
                    tcp.set_nodelay(true)?;
                    let tls = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
                        .await
                        .map_err(|_| timed_out("TLS handshake", timeout))??;
                    check_server(&tls, &trust_domain, &expected).map_err(std::io::Error::other)?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .context("connecting")?;
        Ok(channel)
    }
}

fn timed_out(phase: &str, timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "{phase} not done within the {} connect timeout",
            humantime::format_duration(timeout)
        ),
    )
}

/// The server's certificate must carry the control plane's SPIFFE ID (the
/// chain and the name were checked by the handshake).
fn check_server(
    tls: &tokio_rustls::client::TlsStream<TcpStream>,
    trust_domain: &str,
    expected: &Identity,
) -> anyhow::Result<()> {
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the server presented no certificate")?;
    let found = spiffe_identity(leaf.as_ref(), trust_domain)
        .map_err(|e| anyhow!("the server's certificate: {e}"))?;
    if found != *expected {
        bail!("the server is {found}, not the control plane {expected}");
    }
    Ok(())
}
