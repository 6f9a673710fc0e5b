//! Wiring: config source -> snapshots -> ADS and debug servers, plus the
//! certificate rotation task. Used by `serve` and by the local runner.
//!
//! xDS is served over mutual TLS ([`XdsSecurity::MutualTls`], the default):
//! see `xds_tls`. Plaintext xDS trusts the node id a client sends, so it is
//! only served on a loopback address.

use crate::ads::limits::{CONNECTION_WINDOW, STREAM_WINDOW};
use crate::ads::{AdsServer, Limits, Registry, Stats};
use crate::ca::CertificateAuthority;
use crate::debug;
use crate::enroll::{self, Enroller, KubeTokenReviewer};
use crate::snapshots::{Settings, Snapshots};
use crate::source::files::{FileLoader, watch_paths};
use crate::source::kube::{KubeOptions, watch_cluster};
use crate::view::ConfigSource;
use crate::xds_tls::{self, ConnectionLimit, Counted, ServerCert};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{info, warn};

// Graceful shutdown (SIGTERM/SIGINT in `serve`): see `server/drain.rs`.
mod drain;
pub use drain::{SHUTDOWN_MESSAGE, ShutdownReport};
use drain::{Shutdown, ShutdownHandle};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The watched directories or files (the directory source).
    pub config_paths: Vec<PathBuf>,
    /// Watch a Kubernetes API server instead of `config_paths`.
    pub kube: Option<KubeSource>,
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub settings: Settings,
    /// Quiet time before a burst of file changes is applied.
    pub debounce: Duration,
    /// Enables `POST /debug/test/*` (fault injection for tests).
    pub test_hooks: bool,
    pub xds_security: XdsSecurity,
    /// What a client of the xDS port can make the server hold or do.
    pub limits: Limits,
}

/// Where the Kubernetes source finds its API server, and what Kubernetes
/// mode serves besides xDS.
#[derive(Clone, Debug)]
pub struct KubeSource {
    /// A kubeconfig file; `None`: in-cluster config, then `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Keep the root CA in this Secret (namespace, name) instead of the
    /// state directory.
    pub ca_secret: Option<(String, String)>,
    /// The certificate endpoint where pods exchange their service-account
    /// token for a bootstrap client certificate (`enroll`).
    pub ca_addr: SocketAddr,
    /// The audiences a pod's token may be issued for.
    pub token_audiences: Vec<String>,
    /// Lifetime of the bootstrap certificates the endpoint signs.
    pub bootstrap_cert_lifetime: Duration,
    /// The sidecar injection webhook (`/inject` on the certificate
    /// endpoint's port) and what it injects; `None`: not served.
    pub inject: Option<crate::inject::template::Settings>,
}

/// The injection webhook's route: answers from the current configuration's
/// namespaces, and with 503 until one is loaded (the API server then fails
/// the pod's creation rather than start it without its sidecar).
fn inject_route(
    snapshots: Arc<Snapshots>,
    settings: crate::inject::template::Settings,
) -> enroll::Route {
    use crate::inject::webhook;
    let handler = move |body: &[u8]| -> (hyper::StatusCode, Vec<u8>) {
        let error = |status, message: String| {
            let body =
                serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
            (status, body)
        };
        let Some(state) = snapshots.state() else {
            return error(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                "the control plane has not loaded the cluster's configuration yet".into(),
            );
        };
        let namespaces = state
            .mesh
            .namespaces
            .iter()
            .map(|(name, ns)| (name.clone(), ns.labels.clone()))
            .collect();
        match webhook::review(body, &namespaces, &settings) {
            Ok(answer) => match serde_json::to_vec(&answer) {
                Ok(bytes) => (hyper::StatusCode::OK, bytes),
                Err(e) => error(hyper::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            },
            Err(e) => error(hyper::StatusCode::BAD_REQUEST, e),
        }
    };
    enroll::Route {
        path: webhook::INJECT_PATH,
        // The API server sends pods of up to about 1.5 MB.
        max_request_bytes: 4 * 1024 * 1024,
        handler: Arc::new(handler),
    }
}

/// How the xDS listener proves who its clients are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdsSecurity {
    /// Mutual TLS with certificates of our CA; a stream's identity is its
    /// client certificate's SPIFFE ID.
    MutualTls,
    /// Plaintext, node ids trusted as given: loopback addresses only.
    Insecure,
}

impl XdsSecurity {
    /// Refuses plaintext xDS on an address other processes' pods or other
    /// machines could reach: anyone there could ask for any workload's key.
    pub fn check(self, addr: SocketAddr) -> anyhow::Result<()> {
        if self == XdsSecurity::Insecure && !addr.ip().is_loopback() {
            bail!(
                "--insecure-xds serves workload keys to whoever asks: it is only allowed on a \
                 loopback address, not {addr}"
            );
        }
        Ok(())
    }
}

/// The DNS names the xDS server certificate carries besides its SPIFFE ID:
/// the Service name it will have in a cluster, and localhost.
fn xds_dns_names(root_namespace: &str) -> Vec<String> {
    vec![
        "localhost".to_string(),
        "xds-server".to_string(),
        format!("xds-server.{root_namespace}"),
        format!("xds-server.{root_namespace}.svc"),
    ]
}

/// A running control plane. Dropping it stops its tasks.
pub struct RunningServer {
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    /// The certificate endpoint (Kubernetes mode only).
    pub ca_addr: Option<SocketAddr>,
    pub snapshots: Arc<Snapshots>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    /// The CA, for minting bootstrap client certificates.
    pub ca: Arc<CertificateAuthority>,
    pub xds_security: XdsSecurity,
    tasks: Vec<JoinHandle<()>>,
    /// Asks the ADS and debug servers to stop gracefully.
    shutdown: ShutdownHandle,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RunningServer {
    /// Wait until any task ends (they run for ever unless something fails).
    pub async fn wait(&mut self) {
        if self.tasks.is_empty() {
            return;
        }
        let tasks = std::mem::take(&mut self.tasks);
        let (r, _, rest) = futures::future::select_all(tasks).await;
        if let Err(e) = r
            && !e.is_cancelled()
        {
            warn!(error = %e, "server task failed");
        }
        self.tasks = rest;
    }

    /// Stops gracefully: no new xDS or debug connections, every open ADS
    /// stream ended with `UNAVAILABLE` (so each Envoy keeps its config and
    /// reconnects, to another replica or to this one once it is back),
    /// connections closed; waits at most `grace` for that, then stops
    /// every task regardless.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let report = self.shutdown.shutdown(grace).await;
        if report.clean {
            info!(
                streams = report.ended_streams,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "xDS shutdown complete: every open stream ended cleanly (UNAVAILABLE), every connection closed"
            );
        } else {
            warn!(
                streams = report.ended_streams,
                grace_ms = grace.as_millis() as u64,
                "shutdown grace elapsed with connections still open; closing them"
            );
        }
        // Dropping `self` aborts what is left (watcher, rotation, any
        // server that did not finish).
        report
    }
}

/// Plaintext xDS connections accepted on `listener`, at most
/// `max_connections` open at once (past it closed right after accept).
fn plaintext_incoming(
    listener: TcpListener,
    max_connections: usize,
    stats: Arc<Stats>,
) -> impl futures::Stream<Item = std::io::Result<Counted<TcpStream>>> + Send + 'static {
    let connections = ConnectionLimit::new(max_connections, stats);
    futures::stream::unfold(
        (listener, connections),
        |(listener, connections)| async move {
            let (tcp, _remote, slot) = connections.accept(&listener).await;
            Some((Ok(Counted::new(tcp, slot)), (listener, connections)))
        },
    )
}

/// Serves ADS on the connections `incoming` yields, until it ends, with the
/// HTTP/2 bounds of the server's [`Limits`]: streams per connection, and
/// receive windows that cap what a client can have sent and we not yet read.
fn serve_ads<S, IO, IE>(
    ads: AdsServer<S>,
    incoming: impl futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    shutdown: Shutdown,
) -> JoinHandle<()>
where
    S: ConfigSource,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_streams = ads.limits().max_streams_per_connection;
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .max_concurrent_streams(max_streams)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .add_service(shutdown.wrap(ads.into_service()))
            .serve_with_incoming_shutdown(incoming, shutdown.requested())
            .await;
        drop(shutdown);
        if let Err(e) = r {
            warn!(error = %e, "xDS server stopped");
        }
    })
}

/// Connections the kernel queues on the xDS port until they are accepted.
/// tokio's default (1,024) overflows when 2,000 sidecars connect at once
/// (BENCHMARKS.md): the kernel drops the SYN, and its retry comes after
/// 1 s, the bootstrap's whole connect timeout, so the sidecar resets.
/// Linux caps it at `net.core.somaxconn` (4,096 by default since 5.4).
const XDS_BACKLOG: u32 = 4096;

/// A listener on `addr` with room for `backlog` connections not yet
/// accepted (SO_REUSEADDR, as `TcpListener::bind` sets it).
fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Applies the source's snapshot unless already seen, then every new one,
/// until the source goes away.
async fn apply_each(
    mut loaded: tokio::sync::watch::Receiver<crate::source::SharedSnapshot>,
    snapshots: Arc<Snapshots>,
) {
    if loaded.has_changed().unwrap_or(false) || snapshots.state().is_none() {
        snapshots.apply(loaded.borrow_and_update().clone());
    }
    while loaded.changed().await.is_ok() {
        let snap = loaded.borrow_and_update().clone();
        snapshots.apply(snap);
    }
}

/// Aborts a task when dropped, so a source's watchers end with the task
/// that owns them.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn start(opts: ServerOptions) -> anyhow::Result<RunningServer> {
    opts.xds_security.check(opts.xds_addr)?;
    // A bad kubeconfig fails start-up, before anything is served.
    let kube_client = match &opts.kube {
        Some(kube) => Some(crate::source::kube::client(kube.kubeconfig.as_deref()).await?),
        None => None,
    };
    let trust_domain = &opts.settings.mesh.trust_domain;
    let ca_secret = opts.kube.as_ref().and_then(|k| k.ca_secret.as_ref());
    let ca = Arc::new(match (ca_secret, &kube_client) {
        (Some((namespace, name)), Some(client)) => {
            CertificateAuthority::load_or_create_in_secret(
                client.clone(),
                namespace,
                name,
                trust_domain,
            )
            .await?
        }
        _ => CertificateAuthority::load_or_create(&opts.state_dir, trust_domain)
            .with_context(|| format!("loading the CA from {}", opts.state_dir.display()))?,
    });
    let snapshots = Arc::new(Snapshots::new(opts.settings.clone(), ca.clone()));
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    let (shutdown_handle, shutdown) = drain::channel();

    match &opts.kube {
        None => {
            let (loaded, watch_task) =
                watch_paths(FileLoader::new(opts.config_paths.clone()), opts.debounce)
                    .context("watching the config paths")?;
            tasks.push(watch_task);
            // Files are read at once: the first config is in force before
            // `start` returns.
            let mut loaded = loaded;
            snapshots.apply(loaded.borrow_and_update().clone());
            tasks.push(tokio::spawn(apply_each(loaded, snapshots.clone())));
        }
        Some(_) => {
            // The first lists happen in the background, so /healthz answers
            // while they run and /readyz (like every ADS stream) waits for
            // the first snapshot, which comes only once every kind has been
            // listed.
            let client = kube_client
                .clone()
                .context("a Kubernetes client exists in Kubernetes mode")?;
            let kube_options = KubeOptions {
                debounce: opts.debounce,
                ..KubeOptions::default()
            };
            let apply = snapshots.clone();
            tasks.push(tokio::spawn(async move {
                match watch_cluster(client, kube_options).await {
                    Ok((loaded, watchers)) => {
                        let watchers = AbortOnDrop(watchers);
                        apply_each(loaded, apply).await;
                        drop(watchers);
                    }
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "the Kubernetes source stopped")
                    }
                }
            }));
        }
    }

    // Rotation: wake when the next certificate is due (at least every
    // second while certificates are short-lived, at most every minute).
    let rot_snapshots = snapshots.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let next = rot_snapshots.rotate(SystemTime::now());
            let wait = next
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .clamp(Duration::from_millis(200), Duration::from_secs(60));
            tokio::time::sleep(wait).await;
        }
    }));

    let ads = AdsServer::with_parts(snapshots.clone(), registry.clone(), stats.clone())
        .with_limits(opts.limits.clone());
    let xds_listener = bind_with_backlog(opts.xds_addr, XDS_BACKLOG)
        .with_context(|| format!("binding the xDS address {}", opts.xds_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    // The certificate endpoint (Kubernetes mode) is bound now too, so a
    // taken port fails start-up before anything is served.
    let ca_listener = match &opts.kube {
        Some(kube) => Some(
            TcpListener::bind(kube.ca_addr)
                .await
                .with_context(|| format!("binding the certificate endpoint {}", kube.ca_addr))?,
        ),
        None => None,
    };
    let ca_addr = match &ca_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    // One server certificate for xDS and the certificate endpoint: the
    // SPIFFE ID sidecars check, and the names and addresses they dial.
    let mut ips = Vec::new();
    for ip in std::iter::once(xds_addr.ip()).chain(ca_addr.map(|a| a.ip())) {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let root_namespace = &opts.settings.mesh.root_namespace;
    let cert = Arc::new(
        ServerCert::new(
            ca.clone(),
            xds_tls::server_identity(root_namespace),
            xds_dns_names(root_namespace),
            ips,
            opts.settings.cert_lifetime,
        )
        .context("issuing the xDS server certificate")?,
    );
    let rotated = cert.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let wait = match rotated.rotate(SystemTime::now()) {
                Ok(next) => next
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(200), Duration::from_secs(60)),
                Err(error) => {
                    warn!(%error, "rotating the xDS server certificate failed; keeping the old one");
                    Duration::from_secs(10)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }));
    if let (Some(listener), Some(kube), Some(client)) = (ca_listener, &opts.kube, &kube_client) {
        let reviewer = Arc::new(KubeTokenReviewer::new(
            client.clone(),
            kube.token_audiences.clone(),
        ));
        let enroller = Arc::new(Enroller::new(
            ca.clone(),
            reviewer,
            kube.bootstrap_cert_lifetime,
        ));
        let tls = xds_tls::enroll_server_config(cert.clone())?;
        let route = kube
            .inject
            .clone()
            .map(|settings| inject_route(snapshots.clone(), settings));
        tasks.push(enroll::serve_with(
            listener,
            tls,
            enroller,
            route,
            shutdown.requested(),
        ));
        // Pods trust the root through the ConfigMap Istio's pods mount.
        tasks.push(crate::ca::publish_root(
            client.clone(),
            ca.root_pem().to_string(),
        ));
        // The API server trusts the injection webhook through its
        // configuration's caBundle.
        if kube.inject.is_some() {
            tasks.push(crate::ca::patch_webhook_ca(
                client.clone(),
                crate::ca::INJECTOR_WEBHOOK.to_string(),
                ca.root_pem().to_string(),
            ));
        }
    }
    match opts.xds_security {
        XdsSecurity::MutualTls => {
            let config = xds_tls::server_config(&ca, cert.clone())?;
            let ads = ads.with_peer_resolver(xds_tls::peer_from_tls(ca.trust_domain().to_string()));
            let incoming = xds_tls::incoming(xds_listener, config, &opts.limits, stats.clone());
            tasks.push(serve_ads(ads, incoming, shutdown.clone()));
        }
        XdsSecurity::Insecure => {
            warn!(%xds_addr, "serving plaintext xDS: node ids are trusted as given");
            let incoming =
                plaintext_incoming(xds_listener, opts.limits.max_connections, stats.clone());
            tasks.push(serve_ads(ads, incoming, shutdown.clone()));
        }
    }

    let debug_listener = TcpListener::bind(opts.debug_addr)
        .await
        .with_context(|| format!("binding the debug address {}", opts.debug_addr))?;
    let debug_addr = debug_listener.local_addr()?;
    let app = debug::router(debug::DebugState {
        snapshots: snapshots.clone(),
        registry: registry.clone(),
        stats: stats.clone(),
        test_hooks: opts.test_hooks,
    });
    let debug_shutdown = shutdown;
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(debug_listener, app)
            .with_graceful_shutdown(debug_shutdown.requested())
            .await;
        drop(debug_shutdown);
        if let Err(e) = serve {
            warn!(error = %e, "debug server stopped");
        }
    }));
    info!(%xds_addr, %debug_addr, ca_addr = ?ca_addr, security = ?opts.xds_security, "control plane serving");
    Ok(RunningServer {
        xds_addr,
        debug_addr,
        ca_addr,
        snapshots,
        registry,
        stats,
        ca,
        xds_security: opts.xds_security,
        tasks,
        shutdown: shutdown_handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Peer;
    use crate::view::{ProxyView, ViewError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A source that is never ready: these tests stop at the transport.
    struct NotReady(watch::Sender<u64>);

    impl ConfigSource for NotReady {
        fn view(
            &self,
            _node_id: &str,
            _interception: translator::Interception,
            _peer: &Peer,
        ) -> Result<Arc<ProxyView>, ViewError> {
            Err(ViewError::NotReady)
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.0.subscribe()
        }
    }

    const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
    const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;

    /// Opens an HTTP/2 connection to `addr` and returns it with the
    /// server's SETTINGS, or `None` if the server closed the connection.
    async fn h2_settings(addr: SocketAddr) -> (TcpStream, Option<Vec<(u16, u32)>>) {
        let mut tcp = TcpStream::connect(addr).await.expect("TCP connect");
        // The client preface, then an empty SETTINGS frame.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let _ = tcp.write_all(&preface).await;
        let read = async {
            // Frames until the server's (non-ACK) SETTINGS, a bounded number.
            for _ in 0..8 {
                let mut header = [0u8; 9];
                tcp.read_exact(&mut header).await.ok()?;
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                tcp.read_exact(&mut payload).await.ok()?;
                let (kind, flags) = (header[3], header[4]);
                if kind == 4 && flags & 1 == 0 {
                    return Some(
                        payload
                            .chunks_exact(6)
                            .map(|s| {
                                (
                                    u16::from_be_bytes([s[0], s[1]]),
                                    u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                                )
                            })
                            .collect(),
                    );
                }
            }
            None
        };
        let settings = tokio::time::timeout(DEADLINE, read)
            .await
            .expect("an answer or a close in time");
        (tcp, settings)
    }

    #[tokio::test]
    async fn plaintext_connections_are_limited_and_http2_bounds_advertised() {
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            max_connections: 1,
            ..Limits::DEFAULT
        };
        let source = Arc::new(NotReady(watch::channel(0).0));
        let ads = AdsServer::with_parts(source, Arc::default(), Arc::clone(&stats))
            .with_limits(limits.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let incoming = plaintext_incoming(listener, limits.max_connections, Arc::clone(&stats));
        // The handle is kept so the server is not told to stop.
        let (_shutdown, signal) = super::drain::channel();
        let server = serve_ads(ads, incoming, signal);

        let (first, settings) = h2_settings(addr).await;
        let settings = settings.expect("the first connection is served");
        assert!(
            settings.contains(&(SETTINGS_MAX_CONCURRENT_STREAMS, 16)),
            "{settings:?}"
        );
        assert!(
            settings.contains(&(SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)),
            "{settings:?}"
        );
        assert_eq!(stats.open_connections(), 1);

        let (_second, refused) = h2_settings(addr).await;
        assert_eq!(refused, None, "the second connection is closed");
        assert_eq!(stats.refused_connections(), 1);

        drop(first);
        let start = std::time::Instant::now();
        while stats.open_connections() != 0 {
            assert!(start.elapsed() < DEADLINE, "the slot was not given back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (_third, settings) = h2_settings(addr).await;
        assert!(settings.is_some(), "served again once the first left");
        server.abort();
    }
}
