//! The local mesh: the control plane, one stock Envoy per sidecar workload,
//! one echo application per workload, all on loopback addresses of this
//! machine, and probes between them. `xds-server up` and the end-to-end
//! tests drive it.
//!
//! Addressing: each run claims a free pair of /16s in 127.0.0.0/8, one for
//! pod IPs and one for application addresses, so two runners can run side
//! by side. Envoys bind their listeners on the pod IP; applications of
//! sidecar workloads listen on their own address, those without a sidecar
//! on the pod IP, as they would in a pod.

use super::echo::EchoServer;
use super::envoy::{Admin, EnvoyProcess, EnvoySpec, find_envoy};
use super::probe::{Outcome, probe, xfcc_uri};
use super::selector::Selector;
use crate::bootstrap::{
    BootstrapParams, DEFAULT_BOOTSTRAP_CERT_LIFETIME, bootstrap_yaml, write_client_credentials,
};
use crate::cli::UpArgs;
use crate::debug::sync::is_current;
use crate::identity::{Identity, NodeId, Peer};
use crate::server::{RunningServer, ServerOptions, XdsSecurity, start};
use crate::snapshots::Settings;
use crate::view::ConfigSource;
use crate::xds_tls::server_identity;
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};
use translator::model::build::Addressing;
use translator::model::{Labels, Mesh, ServicePort, Workload};

/// Options of a [`LocalMesh`].
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub paths: Vec<PathBuf>,
    pub work_dir: PathBuf,
    pub delta: bool,
    pub envoy_log_level: String,
    pub mesh: translator::model::MeshConfig,
    pub cert_lifetime: Duration,
    pub test_hooks: bool,
    /// The Envoy binary; found like `find_envoy` when `None`.
    pub envoy_bin: Option<PathBuf>,
}

/// A running workload of the local mesh.
struct Running {
    echo: EchoServer,
    envoy: Option<(EnvoyProcess, Admin)>,
}

/// One probe: from a client workload to a service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeRow {
    /// `workload.namespace` (the Deployment name for its replicas).
    pub from: String,
    /// `service.namespace:port`.
    pub to: String,
    pub outcome: String,
    pub mtls: bool,
    /// Why the call failed, when the decisions can tell (text output only).
    #[serde(skip)]
    pub reason: Option<String>,
}

impl ProbeRow {
    /// The article's notation: `200 mTLS`, `200 plain`, `reset`, `503`.
    pub fn cell(&self) -> String {
        match self.outcome.parse::<u16>() {
            Ok(code) if self.mtls => format!("{code} mTLS"),
            Ok(code) if (200..300).contains(&code) => format!("{code} plain"),
            _ => self.outcome.clone(),
        }
    }
}

pub struct LocalMesh {
    pub server: RunningServer,
    opts: MeshOptions,
    envoy_bin: PathBuf,
    running: BTreeMap<(String, String), Running>,
    /// Holds this run's claim on its address range.
    _claim: StdListener,
}

/// Claim two free /16s: bind a marker port on the first; a second runner
/// finds it taken and moves on.
fn claim_nets() -> anyhow::Result<(Ipv4Addr, Ipv4Addr, StdListener)> {
    let start = (std::process::id() as usize * 7) % 100;
    for i in 0..100 {
        let x = 20 + 2 * ((start + i) % 100) as u8;
        let marker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, x, 255, 254)), 15999);
        if let Ok(l) = StdListener::bind(marker) {
            return Ok((
                Ipv4Addr::new(127, x, 0, 0),
                Ipv4Addr::new(127, x + 1, 0, 0),
                l,
            ));
        }
    }
    bail!("no free loopback range for a local mesh (127.20.0.0 to 127.219.0.0 all claimed)")
}

fn parse_selector(s: &str) -> anyhow::Result<Selector> {
    Selector::parse(s).map_err(|e| anyhow::anyhow!(e))
}

fn selects(sel: &Option<Selector>, labels: &Labels) -> bool {
    sel.as_ref().is_none_or(|s| s.matches(labels))
}

impl LocalMesh {
    pub async fn start(opts: MeshOptions) -> anyhow::Result<LocalMesh> {
        let envoy_bin = match &opts.envoy_bin {
            Some(b) => b.clone(),
            None => {
                let cwd = std::env::current_dir().ok();
                find_envoy(cwd.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        let (pod_net, app_net, claim) = claim_nets()?;
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("creating {}", opts.work_dir.display()))?;
        let server = start(ServerOptions {
            config_paths: opts.paths.clone(),
            kube: None,
            xds_addr: "127.0.0.1:0".parse()?,
            debug_addr: "127.0.0.1:0".parse()?,
            state_dir: opts.work_dir.join("state"),
            settings: Settings {
                mesh: opts.mesh.clone(),
                addressing: Addressing {
                    pod_net,
                    app_net: Some(app_net),
                    service_net: None,
                },
                cert_lifetime: opts.cert_lifetime,
            },
            debounce: Duration::from_millis(100),
            test_hooks: opts.test_hooks,
            xds_security: XdsSecurity::MutualTls,
            limits: Default::default(),
        })
        .await?;
        let mut mesh = LocalMesh {
            server,
            opts,
            envoy_bin,
            running: BTreeMap::new(),
            _claim: claim,
        };
        mesh.reconcile().await?;
        Ok(mesh)
    }

    fn mesh_state(&self) -> anyhow::Result<std::sync::Arc<crate::snapshots::State>> {
        self.server
            .snapshots
            .state()
            .context("the control plane has no configuration")
    }

    /// Start what the current config has and is not running; stop what it
    /// no longer has. Running Envoys are never restarted: config changes
    /// reach them over ADS.
    pub async fn reconcile(&mut self) -> anyhow::Result<()> {
        let state = self.mesh_state()?;
        let mesh = &state.mesh;
        let wanted: BTreeSet<(String, String)> = mesh
            .workloads
            .iter()
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect();
        let gone: Vec<(String, String)> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(r) = self.running.remove(&k) {
                info!(workload = %format!("{}/{}", k.0, k.1), "stopping workload");
                stop_running(r).await;
            }
        }
        let started = std::time::Instant::now();
        let mut count = 0;
        for (wi, w) in mesh.workloads.iter().enumerate() {
            let key = (w.namespace.clone(), w.name.clone());
            if self.running.contains_key(&key) {
                continue;
            }
            let ports = target_ports(mesh, wi);
            let app_ip = if w.sidecar {
                w.app_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
            } else {
                w.ip
            };
            let addrs: Vec<SocketAddr> =
                ports.iter().map(|p| SocketAddr::new(app_ip, *p)).collect();
            let echo = EchoServer::start(addrs, format!("{}.{}", w.name, w.namespace)).await?;
            let envoy = if w.sidecar {
                count += 1;
                Some(self.start_envoy(w).await?)
            } else {
                None
            };
            self.running.insert(key, Running { echo, envoy });
        }
        if count > 0 {
            info!(
                envoys = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "started sidecars"
            );
        }
        Ok(())
    }

    async fn start_envoy(
        &self,
        w: &translator::model::Workload,
    ) -> anyhow::Result<(EnvoyProcess, Admin)> {
        let admin_addr = SocketAddr::new(w.ip, 15000);
        let dir = self.opts.work_dir.join("envoy");
        let name = format!("{}.{}", w.name, w.namespace);
        // Each sidecar proves its workload identity with its own bootstrap
        // certificate, as a pod's would.
        let tls = write_client_credentials(
            &self.server.ca,
            &Identity {
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
            },
            &server_identity(&self.opts.mesh.root_namespace),
            &dir.join(&name),
            DEFAULT_BOOTSTRAP_CERT_LIFETIME,
        )?;
        let yaml = bootstrap_yaml(&BootstrapParams {
            namespace: &w.namespace,
            pod: &w.name,
            ip: w.ip,
            service_account: &w.service_account,
            labels: &w.labels,
            workload_name: w.display_name(),
            xds_addrs: &[self.server.xds_addr.into()],
            delta: self.opts.delta,
            admin: admin_addr,
            cluster_domain: &self.opts.mesh.cluster_domain,
            tls: Some(&tls),
            interception: translator::Interception::None,
        })?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        let spec = EnvoySpec::new(&self.envoy_bin, &path, &dir, &name)
            .log_level(self.opts.envoy_log_level.clone());
        let proc =
            EnvoyProcess::spawn(&spec).with_context(|| format!("starting Envoy for {name}"))?;
        Ok((proc, Admin::new(admin_addr)))
    }

    /// The node ids of the running sidecars.
    pub fn node_ids(&self) -> Vec<String> {
        self.running
            .iter()
            .filter(|(_, r)| r.envoy.is_some())
            .filter_map(|((ns, pod), _)| {
                let state = self.server.snapshots.state()?;
                let (_, w) = state.mesh.workload(ns, pod)?;
                Some(NodeId::format(
                    &w.ip.to_string(),
                    pod,
                    ns,
                    &self.opts.mesh.cluster_domain,
                ))
            })
            .collect()
    }

    /// What is still missing before the mesh has converged, or `None`.
    pub async fn pending(&mut self) -> Option<String> {
        let conns = self.server.registry.snapshot();
        for node in self.node_ids() {
            let Ok(view) = self.server.snapshots.view(
                &node,
                translator::Interception::None,
                &Peer::Unauthenticated,
            ) else {
                return Some(format!("{node}: no view"));
            };
            let Some(c) = conns.iter().find(|c| c.node_id == node) else {
                return Some(format!("{node}: not connected yet"));
            };
            if !is_current(c, &view) {
                return Some(format!("{node}: has not acknowledged the current config"));
            }
        }
        // ACKed is accepted; make sure nothing is still warming (listeners
        // wait for their secrets).
        for ((ns, pod), r) in &mut self.running {
            if let Some((proc, admin)) = &mut r.envoy {
                if let Err(e) = proc.check_running().await {
                    return Some(format!("{pod}.{ns}: {e}"));
                }
                match admin.stat("listener_manager.total_listeners_warming").await {
                    Ok(Some(0)) => {}
                    Ok(other) => return Some(format!("{pod}.{ns}: listeners warming ({other:?})")),
                    Err(e) => return Some(format!("{pod}.{ns}: admin not reachable: {e}")),
                }
                match admin.stat("cluster_manager.warming_clusters").await {
                    Ok(Some(0)) | Ok(None) => {}
                    Ok(other) => return Some(format!("{pod}.{ns}: clusters warming ({other:?})")),
                    Err(e) => return Some(format!("{pod}.{ns}: admin not reachable: {e}")),
                }
            }
        }
        None
    }

    /// Wait until every sidecar has acknowledged the current config and
    /// has nothing warming; polls the server's sync state and Envoy's
    /// admin stats with a deadline.
    pub async fn converge(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(last) = self.pending().await else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!("the mesh did not converge within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Probe every selected client against every selected service port.
    pub async fn probe_matrix(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> anyhow::Result<Vec<ProbeRow>> {
        let from = from.map(parse_selector).transpose()?;
        let to = to.map(parse_selector).transpose()?;
        let state = self.mesh_state()?;
        let mesh = &state.mesh;
        // One client per Deployment (its first replica) or bare pod.
        let mut clients: BTreeMap<String, usize> = BTreeMap::new();
        for (wi, w) in mesh.workloads.iter().enumerate() {
            if selects(&from, &w.labels) {
                clients
                    .entry(format!("{}.{}", w.display_name(), w.namespace))
                    .or_insert(wi);
            }
        }
        let mut jobs = Vec::new();
        for (from_name, &wi) in &clients {
            let Some(w) = mesh.workloads.get(wi) else {
                continue;
            };
            for (si, s) in mesh.services.iter().enumerate() {
                if !selects(&to, &s.labels) {
                    continue;
                }
                for p in &s.ports {
                    let host = format!("{}.{}:{}", s.name, s.namespace, p.port);
                    let target = probe_target(mesh, w, si, p);
                    let spiffe = mesh.spiffe_id(&w.namespace, &w.service_account);
                    let reason = super::explain::explain(mesh, &state.translation, w, s, p);
                    jobs.push((from_name.clone(), host, target, spiffe, reason));
                }
            }
        }
        let results = futures::future::join_all(jobs.into_iter().map(
            |(from, to, target, spiffe, reason)| async move {
                let (mut row, ok) =
                    probe_row(from, to, target, &spiffe, Duration::from_secs(5)).await;
                row.reason = match target {
                    None => Some("the service selects no workload".into()),
                    Some(_) if !ok => reason,
                    Some(_) => None,
                };
                row
            },
        ))
        .await;
        Ok(results)
    }

    /// Envoy uptimes by `pod.namespace`, from their admin APIs.
    pub async fn envoy_uptimes(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((ns, pod), r) in &self.running {
            if let Some((_, admin)) = &r.envoy
                && let Ok(u) = admin.uptime_secs().await
            {
                out.insert(format!("{pod}.{ns}"), u);
            }
        }
        out
    }

    /// Admin API of one sidecar.
    pub fn admin(&self, namespace: &str, pod: &str) -> Option<&Admin> {
        self.running
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|r| r.envoy.as_ref().map(|(_, a)| a))
    }

    /// Process ids of the running Envoys.
    pub fn envoy_pids(&self) -> Vec<u32> {
        self.running
            .values()
            .filter_map(|r| r.envoy.as_ref().and_then(|(p, _)| p.pid()))
            .collect()
    }

    /// Each running Envoy by `pod.namespace`: its process id and when it
    /// was spawned.
    pub fn envoy_processes(&self) -> BTreeMap<String, (u32, std::time::Instant)> {
        let mut out = BTreeMap::new();
        for ((ns, pod), r) in &self.running {
            if let Some((p, _)) = &r.envoy
                && let Some(pid) = p.pid()
            {
                out.insert(format!("{pod}.{ns}"), (pid, p.started_at()));
            }
        }
        out
    }

    /// The sidecars whose Envoy process has exited, by `pod.namespace`,
    /// with the exit status and the end of its log.
    pub async fn exited_envoys(&mut self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for ((ns, pod), r) in &mut self.running {
            if let Some((p, _)) = &mut r.envoy
                && let Err(e) = p.check_running().await
            {
                out.insert(format!("{pod}.{ns}"), e.to_string());
            }
        }
        out
    }

    pub fn sidecar_count(&self) -> usize {
        self.running.values().filter(|r| r.envoy.is_some()).count()
    }

    /// Stop every Envoy and echo server.
    pub async fn stop(mut self) {
        let running = std::mem::take(&mut self.running);
        futures::future::join_all(running.into_values().map(stop_running)).await;
    }
}

async fn stop_running(r: Running) {
    if let Some((proc, _)) = r.envoy
        && let Err(e) = proc.stop().await
    {
        warn!(error = %e, "stopping Envoy");
    }
    r.echo.stop().await;
}

/// Probes `to` at `target` (`None`: "no endpoints", not probed) as client
/// `from`, whose SPIFFE ID the server sees in XFCC when mTLS carried it.
/// The row has no `reason`; the flag says whether a 2xx answered. Public so
/// the e2e harness fills its matrix the same way.
pub async fn probe_row(
    from: String,
    to: String,
    target: Option<SocketAddr>,
    spiffe: &str,
    timeout: Duration,
) -> (ProbeRow, bool) {
    let Some(addr) = target else {
        let row = ProbeRow {
            from,
            to,
            outcome: "no endpoints".into(),
            mtls: false,
            reason: None,
        };
        return (row, false);
    };
    let r = probe(addr, &to, "/headers", timeout).await;
    let mtls = r.xfcc.as_deref().and_then(xfcc_uri) == Some(spiffe);
    let outcome = match &r.outcome {
        Outcome::Status(c) => c.to_string(),
        other => other.to_string(),
    };
    let ok = matches!(r.outcome, Outcome::Status(c) if (200..300).contains(&c));
    let row = ProbeRow {
        from,
        to,
        outcome,
        mtls,
        reason: None,
    };
    (row, ok)
}

/// Where client `w` sends a probe of port `p` of service `si`: a sidecar
/// client to its outbound listener, one without (kube-proxy) straight to
/// the first endpoint's pod IP and target port; `None` with no endpoint.
/// Public so the e2e harness probes the same way.
pub fn probe_target(mesh: &Mesh, w: &Workload, si: usize, p: &ServicePort) -> Option<SocketAddr> {
    if w.sidecar {
        return Some(SocketAddr::new(w.ip, mesh.config.outbound_port));
    }
    mesh.index
        .service_endpoints
        .get(si)
        .and_then(|e| e.first())
        .and_then(|&ei| mesh.workloads.get(ei))
        .and_then(|ep| {
            ep.resolve_target(&p.target_port)
                .map(|t| SocketAddr::new(ep.ip, t))
        })
}

/// Target ports Services expose on a workload (the e2e harness routes the
/// same ports, so it calls this rather than keeping its own copy).
pub fn target_ports(mesh: &Mesh, wi: usize) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    let Some(w) = mesh.workloads.get(wi) else {
        return Vec::new();
    };
    for &si in mesh
        .index
        .workload_services
        .get(wi)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(s) = mesh.services.get(si) {
            for p in &s.ports {
                if let Some(t) = w.resolve_target(&p.target_port) {
                    ports.insert(t);
                }
            }
        }
    }
    ports.into_iter().collect()
}

/// The matrix in the article's style.
pub fn render_matrix(rows: &[ProbeRow]) -> String {
    let froms: BTreeSet<&str> = rows.iter().map(|r| r.from.as_str()).collect();
    let tos: BTreeSet<&str> = rows.iter().map(|r| r.to.as_str()).collect();
    let first = froms
        .iter()
        .map(|f| f.len())
        .max()
        .unwrap_or(0)
        .max("from \\ to".len())
        + 2;
    let col = tos.iter().map(|t| t.len()).max().unwrap_or(0).max(10) + 2;
    let mut out = format!("{:<first$}", "from \\ to");
    for t in &tos {
        out.push_str(&format!("{t:<col$}"));
    }
    out.push('\n');
    for f in &froms {
        out.push_str(&format!("{f:<first$}"));
        for t in &tos {
            let cell = rows
                .iter()
                .find(|r| r.from == *f && r.to == *t)
                .map(ProbeRow::cell)
                .unwrap_or_default();
            out.push_str(&format!("{cell:<col$}"));
        }
        out.push('\n');
    }
    out
}

fn print_results(rows: &[ProbeRow], json: bool) {
    if json {
        println!("{}", serde_json::json!({ "results": rows }));
    } else {
        println!("{}", render_matrix(rows));
        for r in rows {
            if let Some(why) = &r.reason {
                println!("  {} -> {}: {}: {why}", r.from, r.to, r.cell());
            }
        }
    }
}

/// `xds-server up`.
pub async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("xds-up-{}", std::process::id())),
    };
    let cleanup = args.work_dir.is_none();
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    if args.verbose || crate::logging::requested() {
        crate::logging::to_stderr("info");
    } else {
        let log = work_dir.join("xds-server.log");
        crate::logging::to_file(&log, "info")?;
        eprintln!("control plane logs: {} (-v shows them here)", log.display());
    }
    // Listen for SIGINT and SIGTERM before anything is started, so every
    // Envoy is stopped however the runner is asked to end.
    let mut signals = Signals::new()?;
    eprintln!(
        "starting the control plane and sidecars (work dir {})",
        work_dir.display()
    );
    let started = Instant::now();
    let opts = MeshOptions {
        paths: args.paths.clone(),
        work_dir: work_dir.clone(),
        delta: args.delta,
        envoy_log_level: args.envoy_log_level.clone(),
        mesh: args.mesh.mesh_config(),
        cert_lifetime: crate::ca::DEFAULT_CERT_LIFETIME,
        test_hooks: false,
        envoy_bin: None,
    };
    let mut mesh = tokio::select! {
        m = LocalMesh::start(opts) => m?,
        _ = signals.recv() => bail!("interrupted while starting"),
    };
    eprintln!(
        "{} sidecar(s) started; waiting for every Envoy to acknowledge its config",
        mesh.sidecar_count()
    );
    let result = tokio::select! {
        r = run_up(&mut mesh, &args, started) => r,
        _ = signals.recv() => {
            eprintln!("stopping");
            Ok(ExitCode::SUCCESS)
        }
    };
    mesh.stop().await;
    // A temporary work dir goes away after a good run; after a failed one
    // its logs are what the user needs next.
    let succeeded = matches!(&result, Ok(code) if *code == ExitCode::SUCCESS);
    if cleanup && succeeded {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else if cleanup {
        eprintln!("kept {} for its logs", work_dir.display());
    }
    result
}

/// SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

async fn run_up(mesh: &mut LocalMesh, args: &UpArgs, started: Instant) -> anyhow::Result<ExitCode> {
    if let Err(e) = mesh.converge(args.timeout).await {
        eprintln!("error: {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    let rows = mesh
        .probe_matrix(args.from.as_deref(), args.to.as_deref())
        .await?;
    eprintln!(
        "converged; first matrix after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    print_results(&rows, args.json);
    if args.once {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "watching {} for changes; Ctrl-C to stop",
        args.paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut changes = mesh.server.snapshots.changes();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    bail!("the control plane stopped");
                }
                mesh.reconcile().await?;
                match mesh.converge(args.timeout).await {
                    Ok(()) => {
                        let rows = mesh.probe_matrix(args.from.as_deref(), args.to.as_deref()).await?;
                        eprintln!("config changed (generation {})", *changes.borrow_and_update());
                        print_results(&rows, args.json);
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
        }
    }
}
