//! Wiring: config source -> snapshots -> ADS and debug servers, plus the
//! certificate rotation task. Used by `serve` and by the local runner.

use crate::ads::{AdsServer, Registry, Stats};
use crate::ca::CertificateAuthority;
use crate::debug;
use crate::snapshots::{Settings, Snapshots};
use crate::source::files::{FileLoader, watch_paths};
use anyhow::Context;
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
}

/// A running control plane. Dropping it stops its tasks.
pub struct RunningServer {
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    pub snapshots: Arc<Snapshots>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
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

pub async fn start(opts: ServerOptions) -> anyhow::Result<RunningServer> {
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&opts.state_dir, &opts.settings.mesh.trust_domain)
            .with_context(|| format!("loading the CA from {}", opts.state_dir.display()))?,
    );
    let snapshots = Arc::new(Snapshots::new(opts.settings.clone(), ca));
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
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds_listener);
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = r {
            warn!(error = %e, "xDS server stopped");
        }
    }));

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
    info!(%xds_addr, %debug_addr, "control plane serving");
    Ok(RunningServer {
        xds_addr,
        debug_addr,
        snapshots,
        registry,
        stats,
        tasks,
    })
}
