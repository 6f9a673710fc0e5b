//! Wiring: config source -> snapshots -> ADS and debug servers, plus the
//! certificate rotation task. Used by `serve` and by the local runner.
//!
//! xDS is served over mutual TLS ([`XdsSecurity::MutualTls`], the default):
//! see `xds_tls`. Plaintext xDS trusts the node id a client sends, so it is
//! only served on a loopback address.

use crate::ads::{AdsServer, Registry, Stats};
use crate::ca::CertificateAuthority;
use crate::debug;
use crate::snapshots::{Settings, Snapshots};
use crate::source::files::{FileLoader, watch_paths};
use crate::xds_tls::{self, ServerCert};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Everything `serve` needs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub config_paths: Vec<PathBuf>,
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub state_dir: PathBuf,
    pub settings: Settings,
    /// Quiet time before a burst of file changes is applied.
    pub debounce: Duration,
    /// Enables `POST /debug/test/*` (fault injection for tests).
    pub test_hooks: bool,
    pub xds_security: XdsSecurity,
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
    pub snapshots: Arc<Snapshots>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    /// The CA, for minting bootstrap client certificates.
    pub ca: Arc<CertificateAuthority>,
    pub xds_security: XdsSecurity,
    tasks: Vec<JoinHandle<()>>,
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
}

/// Serves ADS on the connections `incoming` yields, until it ends.
fn serve_ads<IO, IE>(
    ads: AdsServer<Snapshots>,
    incoming: impl futures::Stream<Item = Result<IO, IE>> + Send + 'static,
) -> JoinHandle<()>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = r {
            warn!(error = %e, "xDS server stopped");
        }
    })
}

pub async fn start(opts: ServerOptions) -> anyhow::Result<RunningServer> {
    opts.xds_security.check(opts.xds_addr)?;
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&opts.state_dir, &opts.settings.mesh.trust_domain)
            .with_context(|| format!("loading the CA from {}", opts.state_dir.display()))?,
    );
    let snapshots = Arc::new(Snapshots::new(opts.settings.clone(), ca.clone()));
    let registry = Arc::new(Registry::default());
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();

    let (mut loaded, watch_task) =
        watch_paths(FileLoader::new(opts.config_paths.clone()), opts.debounce)
            .context("watching the config paths")?;
    tasks.push(watch_task);
    snapshots.apply(loaded.borrow_and_update().clone());
    let apply_snapshots = snapshots.clone();
    tasks.push(tokio::spawn(async move {
        while loaded.changed().await.is_ok() {
            let snap = loaded.borrow_and_update().clone();
            apply_snapshots.apply(snap);
        }
    }));

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

    let ads = AdsServer::with_parts(snapshots.clone(), registry.clone(), stats.clone());
    let xds_listener = TcpListener::bind(opts.xds_addr)
        .await
        .with_context(|| format!("binding the xDS address {}", opts.xds_addr))?;
    let xds_addr = xds_listener.local_addr()?;
    match opts.xds_security {
        XdsSecurity::MutualTls => {
            let mesh = &opts.settings.mesh;
            let ips = if xds_addr.ip().is_unspecified() {
                Vec::new()
            } else {
                vec![xds_addr.ip()]
            };
            let cert = Arc::new(
                ServerCert::new(
                    ca.clone(),
                    xds_tls::server_identity(&mesh.root_namespace),
                    xds_dns_names(&mesh.root_namespace),
                    ips,
                    opts.settings.cert_lifetime,
                )
                .context("issuing the xDS server certificate")?,
            );
            let config = xds_tls::server_config(&ca, cert.clone())?;
            let ads = ads.with_peer_resolver(xds_tls::peer_from_tls(ca.trust_domain().to_string()));
            tasks.push(serve_ads(ads, xds_tls::incoming(xds_listener, config)));
            tasks.push(tokio::spawn(async move {
                loop {
                    let wait = match cert.rotate(SystemTime::now()) {
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
        }
        XdsSecurity::Insecure => {
            warn!(%xds_addr, "serving plaintext xDS: node ids are trusted as given");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds_listener);
            tasks.push(serve_ads(ads, incoming));
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
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(debug_listener, app).await {
            warn!(error = %e, "debug server stopped");
        }
    }));
    info!(%xds_addr, %debug_addr, security = ?opts.xds_security, "control plane serving");
    Ok(RunningServer {
        xds_addr,
        debug_addr,
        snapshots,
        registry,
        stats,
        ca,
        xds_security: opts.xds_security,
        tasks,
    })
}
