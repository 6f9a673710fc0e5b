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
pub use super::matrix::{ProbeRow, render_matrix, target_ports};
use super::matrix::{parse_selector, selects};
use super::pods::{self, Node, Pod};
use super::probe::{Outcome, probe, xfcc_uri};
use crate::bootstrap::{
    BootstrapParams, DEFAULT_BOOTSTRAP_CERT_LIFETIME, bootstrap_yaml, write_client_credentials,
};
use crate::debug::sync::not_current;
use crate::identity::{Identity, NodeId, Peer};
use crate::server::{RunningServer, ServerOptions, XdsSecurity, start};
use crate::snapshots::Settings;
use crate::view::ConfigSource;
use crate::xds_tls::server_identity;
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};
use translator::model::build::Addressing;
use translator::model::{Mesh, ServicePort, Workload};

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
    /// Run every workload as a pod in its own network namespace, sidecars
    /// with iptables capture (`up --capture iptables`); the mesh must then
    /// be started on this node's runtime ([`Node::run`]). `None`: the
    /// explicit-bind layout on loopback addresses.
    pub capture: Option<Arc<Node>>,
}

/// A running workload of the local mesh. Fields drop in order: the
/// processes and sockets before the pod's namespace.
struct Running {
    echo: EchoServer,
    envoy: Option<(EnvoyProcess, Admin)>,
    pod: Option<Pod>,
}

pub struct LocalMesh {
    pub server: RunningServer,
    opts: MeshOptions,
    envoy_bin: PathBuf,
    running: BTreeMap<(String, String), Running>,
    /// Holds this run's claim on its loopback range (explicit-bind layout).
    _claim: Option<StdListener>,
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

impl super::capture_probe::RunningPods for LocalMesh {
    fn pod(&self, namespace: &str, pod: &str) -> Option<&Pod> {
        self.running
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|r| r.pod.as_ref())
    }

    fn admin(&self, namespace: &str, pod: &str) -> Option<&Admin> {
        LocalMesh::admin(self, namespace, pod)
    }
}

impl LocalMesh {
    pub async fn start(opts: MeshOptions) -> anyhow::Result<LocalMesh> {
        let mut envoy_bin = match &opts.envoy_bin {
            Some(b) => b.clone(),
            None => {
                let cwd = std::env::current_dir().ok();
                find_envoy(cwd.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("creating {}", opts.work_dir.display()))?;
        // Pods get addresses in private ranges that exist only inside the
        // run's namespaces; the explicit-bind layout claims loopback /16s.
        let (addressing, xds_addr, claim) = match &opts.capture {
            Some(_) => {
                envoy_bin = pods::envoy_for_proxy_user(&envoy_bin)?;
                (
                    Addressing {
                        pod_net: pods::POD_NET,
                        app_net: None,
                        service_net: Some(pods::SERVICE_NET),
                    },
                    SocketAddr::new(IpAddr::V4(pods::NODE_IP), 0),
                    None,
                )
            }
            None => {
                let (pod_net, app_net, claim) = claim_nets()?;
                (
                    Addressing {
                        pod_net,
                        app_net: Some(app_net),
                        service_net: None,
                    },
                    "127.0.0.1:0".parse()?,
                    Some(claim),
                )
            }
        };
        let server = start(ServerOptions {
            config_paths: opts.paths.clone(),
            kube: None,
            xds_addr,
            debug_addr: "127.0.0.1:0".parse()?,
            state_dir: opts.work_dir.join("state"),
            settings: Settings {
                mesh: opts.mesh.clone(),
                addressing,
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

    pub(super) fn mesh_state(&self) -> anyhow::Result<std::sync::Arc<crate::snapshots::State>> {
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
            let name = format!("{}.{}", w.name, w.namespace);
            let (echo, pod) = match &self.opts.capture {
                // In its pod the application listens on every port it
                // declares and every port a Service targets, on all
                // addresses, as a container would.
                Some(node) => {
                    let pod = node.add_pod(w)?;
                    let mut all = ports.clone();
                    all.extend(w.ports.iter().map(|p| p.port));
                    all.sort_unstable();
                    all.dedup();
                    let echo = EchoServer::serve_std(pod.listen(&all)?, name)?;
                    (echo, Some(pod))
                }
                None => {
                    let app_ip = if w.sidecar {
                        w.app_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    } else {
                        w.ip
                    };
                    let addrs: Vec<SocketAddr> =
                        ports.iter().map(|p| SocketAddr::new(app_ip, *p)).collect();
                    (EchoServer::start(addrs, name).await?, None)
                }
            };
            let envoy = if w.sidecar {
                count += 1;
                Some(self.start_envoy(w, pod.as_ref()).await?)
            } else {
                None
            };
            self.running.insert(key, Running { echo, envoy, pod });
        }
        if let Some(node) = &self.opts.capture {
            let pods: BTreeMap<(String, String), &Pod> = self
                .running
                .iter()
                .filter_map(|(k, r)| r.pod.as_ref().map(|p| (k.clone(), p)))
                .collect();
            node.sync_services(mesh, &pods)?;
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

    /// The layout the sidecars get.
    pub fn interception(&self) -> translator::Interception {
        match self.opts.capture {
            Some(_) => translator::Interception::Redirect,
            None => translator::Interception::None,
        }
    }

    async fn start_envoy(
        &self,
        w: &translator::model::Workload,
        pod: Option<&Pod>,
    ) -> anyhow::Result<(EnvoyProcess, Admin)> {
        let admin_addr = SocketAddr::new(w.ip, pods::ADMIN_PORT);
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
            interception: self.interception(),
        })?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        let mut spec = EnvoySpec::new(&self.envoy_bin, &path, &dir, &name)
            .log_level(self.opts.envoy_log_level.clone());
        if let Some(pod) = pod {
            // Envoy runs as the proxy user in the pod: its bootstrap and
            // credentials must be that user's, and the directory holding
            // them open to it (credentials are written into a 0700 one).
            // Every sidecar of the run is that user: unlike pods, they
            // share one filesystem.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("opening {} to the proxy user", dir.display()))?;
            pods::give_to_proxy_user(&dir.join(&name))?;
            let proxy_user = Some(crate::capture::rules::DEFAULT_PROXY_ID);
            std::os::unix::fs::chown(&path, proxy_user, proxy_user)
                .with_context(|| format!("chown {}", path.display()))?;
            spec = spec.wrapped_by(pod.envoy_wrapper());
        }
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
            let Ok(view) =
                self.server
                    .snapshots
                    .view(&node, self.interception(), &Peer::Unauthenticated)
            else {
                return Some(format!("{node}: no view"));
            };
            let Some(c) = conns.iter().find(|c| c.node_id == node) else {
                return Some(format!("{node}: not connected yet"));
            };
            let behind = not_current(c, &view);
            if !behind.is_empty() {
                return Some(format!(
                    "{node}: has not acknowledged the current config ({})",
                    behind.join(", ")
                ));
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
        if self.opts.capture.is_some() {
            let state = self.mesh_state()?;
            return super::capture_probe::matrix(self, &state, from, to).await;
        }
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
