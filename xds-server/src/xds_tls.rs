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
//!
//! The accept path is bounded (see [`Limits`]): [`ConnectionLimit`] caps the
//! open connections (plaintext xDS uses it too) and a semaphore the TLS
//! handshakes in progress.

use crate::ads::{Limits, Stats};
use crate::ca::CertificateAuthority;
use crate::identity::{Identity, Peer};
use anyhow::Context;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tonic::Extensions;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// The service account of the control plane in the root namespace: the
/// SPIFFE ID sidecars expect of the xDS server.
pub const XDS_SERVICE_ACCOUNT: &str = "xds-server";

/// At most one warning per this interval about connections refused for the
/// connection limit: a flood must not flood the log too.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

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

/// The TLS configuration of the certificate endpoint (`enroll`): the same
/// server certificate, no client certificate (a sidecar has none yet: it
/// proves itself with its service-account token), HTTP/1.1.
pub fn enroll_server_config(cert: Arc<ServerCert>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(cert)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Open xDS connections, at most [`Limits::max_connections`]: an accept loop
/// takes a [`Slot`] per connection and closes those past the limit right
/// after accepting them (counted in `xds_refused_connections_total`, logged
/// at most every [`REFUSAL_LOG_INTERVAL`]).
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    open: AtomicUsize,
    stats: Arc<Stats>,
    /// Refused since the last warning, and when that was.
    refused_unlogged: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl ConnectionLimit {
    pub fn new(max: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(ConnectionLimit {
            max,
            open: AtomicUsize::new(0),
            stats,
            refused_unlogged: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        })
    }

    /// A slot, if fewer than the limit are open.
    fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        self.stats.connection_opened();
        Some(Slot(Arc::clone(self)))
    }

    /// Accepts connections on `listener` until one fits under the limit.
    pub async fn accept(self: &Arc<Self>, listener: &TcpListener) -> (TcpStream, SocketAddr, Slot) {
        loop {
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
            match self.try_acquire() {
                Some(slot) => return (tcp, remote, slot),
                None => {
                    drop(tcp);
                    self.refused(remote);
                }
            }
        }
    }

    fn refused(&self, remote: SocketAddr) {
        self.stats.connection_refused();
        let unlogged = self.refused_unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL) {
            *last = Some(now);
            self.refused_unlogged.store(0, Ordering::Relaxed);
            tracing::warn!(
                %remote,
                max_connections = self.max,
                refused = unlogged,
                "closed xDS connection(s) right after accept: the connection limit is reached \
                 (--max-connections); `refused` counts those since the last warning"
            );
        }
    }
}

/// One open connection's share of a [`ConnectionLimit`], given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.stats.connection_closed();
    }
}

/// An accepted connection that holds its [`Slot`] for as long as it lives:
/// the server drops it when the connection ends, which frees the slot.
/// Everything else, [`Connected`] included (the client certificate the
/// peer resolver reads), is the wrapped connection's.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _slot: Slot,
}

impl<IO> Counted<IO> {
    pub fn new(io: IO, slot: Slot) -> Self {
        Counted { io, _slot: slot }
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a TLS handshake in progress for as long as it lives.
struct Handshaking(Arc<Stats>);

impl Handshaking {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.handshake_started();
        Handshaking(Arc::clone(stats))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshake_finished();
    }
}

/// Accepts TCP connections on `listener` and yields those that complete a
/// TLS handshake. Each handshake runs in its own task, bounded by
/// [`Limits::handshake_timeout`], so a client that never finishes one holds
/// up no one else; failures are logged at debug level (a port scan is not
/// news). At most [`Limits::max_connections`] connections are open (past it
/// they are closed at once) and at most [`Limits::max_tls_handshakes`]
/// handshakes run (past it accepting waits, and new connections queue in
/// the kernel's backlog), so a flood of half-open connections costs a
/// bounded number of tasks.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
    limits: &Limits,
    stats: Arc<Stats>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Counted<TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let connections = ConnectionLimit::new(limits.max_connections, Arc::clone(&stats));
    // At least one, or nothing would ever be accepted.
    let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes.max(1)));
    let timeout = limits.handshake_timeout;
    tokio::spawn(async move {
        // Ends when the gRPC server dropped its side.
        loop {
            // Ends, dropping the listener, as soon as the gRPC server lets
            // go of its side (shutdown), not at the next connection.
            let (tcp, remote, slot) = tokio::select! {
                accepted = connections.accept(&listener) => accepted,
                () = tx.closed() => break,
            };
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                // Never closed; if it were, no handshake could run.
                break;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let handshake = {
                    let _permit = permit;
                    let _counted = Handshaking::new(&stats);
                    tokio::time::timeout(timeout, acceptor.accept(tcp)).await
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(Counted::new(stream, slot))).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A CA, the server's TLS configuration, and a client configuration
    /// presenting foo/sleep's certificate.
    struct Fixture {
        _dir: TempDir,
        server: rustls::ServerConfig,
        client: TlsConnector,
    }

    fn fixture(label: &str) -> Fixture {
        let dir = TempDir::new(label);
        let ca = Arc::new(
            CertificateAuthority::load_or_create(dir.root(), "cluster.local").expect("a CA"),
        );
        let cert = ServerCert::new(
            Arc::clone(&ca),
            server_identity("istio-system"),
            vec!["localhost".to_string()],
            Vec::new(),
            Duration::from_secs(3600),
        )
        .expect("the server certificate");
        let server = server_config(&ca, Arc::new(cert)).expect("the server TLS config");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for root in certificates(ca.root_pem()).expect("the root PEM") {
            roots.add(root).expect("add the root");
        }
        let sleep = Identity {
            namespace: "foo".to_string(),
            service_account: "sleep".to_string(),
        };
        let issued = ca
            .issue(&sleep, Duration::from_secs(600), SystemTime::now())
            .expect("a client certificate");
        let chain = certificates(&issued.cert_chain_pem).expect("the client chain");
        let key = PrivateKeyDer::from_pem_slice(issued.private_key_pem.expose().as_bytes())
            .expect("the client key");
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("the client certificate");
        client.alpn_protocols = vec![b"h2".to_vec()];
        Fixture {
            _dir: dir,
            server,
            client: TlsConnector::from(Arc::new(client)),
        }
    }

    async fn handshake(connector: &TlsConnector, addr: SocketAddr) -> io::Result<()> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        // The client side is done once it sent its certificate; the server
        // side yields the connection once it verified it.
        let _tls = connector.connect(name, tcp).await?;
        Ok(())
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        (listener, addr)
    }

    #[tokio::test]
    async fn tls_handshakes_in_progress_are_bounded_and_stalled_ones_time_out() {
        let fixture = fixture("tls-handshakes");
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            max_tls_handshakes: 2,
            handshake_timeout: Duration::from_millis(300),
            ..Limits::DEFAULT
        };
        let (listener, addr) = listener().await;
        let mut accepted = incoming(listener, fixture.server, &limits, Arc::clone(&stats));

        // Six connections that never start their handshake.
        let mut stalled = Vec::new();
        for _ in 0..6 {
            stalled.push(TcpStream::connect(addr).await.expect("connect"));
        }
        eventually("two handshakes are in progress", || {
            stats.tls_handshakes() == 2
        })
        .await;
        // The others wait their turn rather than each getting a task.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            assert!(stats.tls_handshakes() <= 2, "{}", stats.tls_handshakes());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // A real client gets through once the stalled ones timed out, and
        // its certificate still reaches the peer resolver.
        tokio::time::timeout(DEADLINE, handshake(&fixture.client, addr))
            .await
            .expect("the handshake in time")
            .expect("the handshake");
        let connection = tokio::time::timeout(DEADLINE, accepted.next())
            .await
            .expect("accepted in time")
            .expect("the listener is open")
            .expect("a connection");
        let info = connection.connect_info();
        assert!(info.peer_certs().is_some_and(|certs| !certs.is_empty()));
        eventually("the stalled handshakes timed out", || {
            stats.tls_handshakes() == 0 && stats.open_connections() == 1
        })
        .await;
        drop(connection);
        eventually("the slot is given back", || stats.open_connections() == 0).await;
        drop(stalled);
    }

    #[tokio::test]
    async fn tls_connections_past_the_limit_are_closed_right_after_accept() {
        let fixture = fixture("tls-connections");
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            max_connections: 1,
            ..Limits::DEFAULT
        };
        let (listener, addr) = listener().await;
        let mut accepted = incoming(listener, fixture.server, &limits, Arc::clone(&stats));
        let mut next = async || {
            tokio::time::timeout(DEADLINE, accepted.next())
                .await
                .expect("accepted in time")
                .expect("the listener is open")
                .expect("a connection")
        };

        handshake(&fixture.client, addr).await.expect("the first");
        let first = next().await;
        assert_eq!(stats.open_connections(), 1);

        let mut refused = TcpStream::connect(addr).await.expect("TCP connect");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE, refused.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(stats.refused_connections(), 1);

        drop(first);
        eventually("the slot is given back", || stats.open_connections() == 0).await;
        handshake(&fixture.client, addr).await.expect("the next");
        let _again = next().await;
        assert_eq!(stats.refused_connections(), 1);
    }
}
