//! The control plane as an operator runs it, for fault tests: `xds-server
//! serve` as child processes (one or more replicas sharing one state
//! directory), `xds-server bootstrap` for each sidecar, one stock Envoy per
//! sidecar, echo applications, and probes between the sidecars.
//!
//! Unlike [`crate::mesh`] (the in-process `LocalMesh`), every piece here is
//! a separate process a test can signal, kill and start again on the same
//! addresses. `xds-server/tests/faults.rs` drives it; the binary's path is
//! passed in, since only that package's tests can name it.
//!
//! Addressing, as `serve` does it: each run claims a free /16 of 127.0.0.0/8
//! for pod IPs (`--pod-net`, the same claim markers as `LocalMesh`, so the
//! two never overlap); an Envoy binds its admin API, outbound and inbound
//! listeners on its pod IP. `serve` has no application network, so every
//! sidecar's inbound cluster points at 127.0.0.1:TARGET_PORT, as in a pod
//! whose app binds localhost: one echo application on 127.0.0.1:80, shared
//! by every mesh of the test process ([`shared_app_echo`]), answers for all
//! of them (the server sidecar's identity, in the XFCC `By=` field, still
//! says which sidecar a request went through); two test processes take
//! turns with it. Workloads without a sidecar get their own echo
//! application on their pod IP.
//!
//! Everything started is stopped: `serve` and Envoy processes are killed on
//! drop, and [`ExternalMesh::stop`] stops them in order.

use anyhow::{Context, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use translator::model::build::Addressing;
use translator::model::{Mesh, MeshConfig};
use xds_server::identity::NodeId;
use xds_server::runner::echo::EchoServer;
use xds_server::runner::envoy::{Admin, EnvoyProcess, EnvoySpec};
use xds_server::runner::mesh::{ProbeRow, probe_row, probe_target, target_ports};
use xds_server::runner::probe::{probe, xfcc_by, xfcc_uri};
use xds_server::source::files::FileLoader;

/// Where every sidecar's inbound cluster sends requests: `serve` gives
/// workloads no application address of their own, so 127.0.0.1:PORT.
pub const APP_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 80);

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The one echo application on [`APP_ADDR`], shared by every mesh of this
/// process (tests run in parallel threads, each with its own runtime, so
/// it runs on a thread and runtime of its own, until the process exits).
///
/// Another test process (a second `cargo test` on this machine) needs the
/// same address: the process that serves it holds an exclusive lock on
/// `TMP/xds-e2e-app-echo.lock` for as long as it lives, and another waits
/// for that lock (at most [`APP_ECHO_WAIT`]) before binding, so one run's
/// echo never disappears under another's probes.
pub fn shared_app_echo() -> anyhow::Result<()> {
    static ECHO: OnceLock<Result<(), String>> = OnceLock::new();
    ECHO.get_or_init(start_app_echo)
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// How long a test process waits for another to release [`APP_ADDR`].
pub const APP_ECHO_WAIT: Duration = Duration::from_secs(300);

/// Takes the cross-process lock on the app echo's address, polling with a
/// deadline.
fn lock_app_addr() -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join("xds-e2e-app-echo.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let deadline = std::time::Instant::now() + APP_ECHO_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= deadline {
                    return Err(format!(
                        "another test process held {} (the app echo on {APP_ADDR}) for over {APP_ECHO_WAIT:?}",
                        path.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("locking {}: {e}", path.display()));
            }
        }
    }
}

fn start_app_echo() -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("app-echo".into())
        .spawn(move || {
            let lock = match lock_app_addr() {
                Ok(lock) => lock,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("runtime for the app echo: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match EchoServer::start(vec![APP_ADDR], "app").await {
                    Ok(server) => {
                        let _ = tx.send(Ok(()));
                        // Serves, holding the lock, until the process exits.
                        std::future::pending::<()>().await;
                        drop((server, lock));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!(
                            "starting the app echo on {APP_ADDR} (every sidecar's inbound \
                             cluster points there): {e}"
                        )));
                    }
                }
            });
        })
        .map_err(|e| format!("spawning the app echo thread: {e}"))?;
    rx.recv_timeout(APP_ECHO_WAIT + Duration::from_secs(10))
        .map_err(|e| format!("the app echo did not start: {e}"))?
}

/// Claims a free /16 for pod IPs with the marker `LocalMesh` uses
/// (127.X.255.254:15999, X even), so no two meshes of any test process
/// take the same addresses while the claim (the listener) is held.
pub fn claim_pod_net() -> anyhow::Result<(Ipv4Addr, StdListener)> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = (std::process::id() as usize * 7 + NEXT.fetch_add(13, Ordering::Relaxed)) % 100;
    for i in 0..100 {
        let x = 20 + 2 * ((start + i) % 100) as u8;
        let marker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, x, 255, 254)), 15999);
        if let Ok(l) = StdListener::bind(marker) {
            return Ok((Ipv4Addr::new(127, x, 0, 0), l));
        }
    }
    bail!("no free loopback /16 for pod IPs (127.20.0.0 to 127.218.0.0 all claimed)")
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExternalOptions {
    /// The `xds-server` binary (`env!("CARGO_BIN_EXE_xds-server")`).
    pub xds_server: PathBuf,
    pub envoy: PathBuf,
    /// `--config-dir` of every replica (watched).
    pub config_dirs: Vec<PathBuf>,
    /// Logs, bootstraps, the state directory.
    pub work_dir: PathBuf,
    /// How many `serve` replicas; every bootstrap lists all of them.
    pub replicas: usize,
}

/// A `serve` process.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
}

/// One replica: its fixed addresses (kept across restarts) and its
/// process, when running.
#[derive(Debug)]
pub struct Replica {
    pub xds_addr: SocketAddr,
    pub debug_addr: SocketAddr,
    process: Option<ServeProcess>,
    /// Log of the latest start.
    log: Option<PathBuf>,
    starts: usize,
}

/// A sidecar: its workload and its Envoy.
#[derive(Debug)]
pub struct Sidecar {
    /// `pod.namespace`, e.g. `sleep-0.foo`.
    pub name: String,
    pub namespace: String,
    pub pod: String,
    pub ip: IpAddr,
    pub node_id: String,
    pub spiffe_id: String,
    pub admin: Admin,
    envoy: EnvoyProcess,
}

/// The control plane replicas, the sidecars and the applications.
pub struct ExternalMesh {
    opts: ExternalOptions,
    pub state_dir: PathBuf,
    pub pod_net: Ipv4Addr,
    /// The model `serve` builds from the config at start (IPs, services).
    pub mesh: Mesh,
    pub replicas: Vec<Replica>,
    pub sidecars: Vec<Sidecar>,
    apps: Vec<EchoServer>,
    _claim: StdListener,
}

impl ExternalMesh {
    /// Starts every replica (and waits until each is ready), then one
    /// Envoy per sidecar with a bootstrap listing every replica, and the
    /// echo applications. Does not wait for the Envoys to sync: see
    /// [`ExternalMesh::wait_converged`].
    pub async fn start(opts: ExternalOptions) -> anyhow::Result<ExternalMesh> {
        // May wait for another test process to let go of the address.
        tokio::task::spawn_blocking(shared_app_echo)
            .await
            .context("the app echo start-up task")??;
        let (pod_net, claim) = claim_pod_net()?;
        std::fs::create_dir_all(&opts.work_dir)
            .with_context(|| format!("creating {}", opts.work_dir.display()))?;
        let state_dir = opts.work_dir.join("state");
        // (The model; its diagnostics are the server's business.)
        let (mesh, _diagnostics) = FileLoader::new(opts.config_dirs.clone()).load().build_mesh(
            MeshConfig::default(),
            &Addressing {
                pod_net,
                app_net: None,
                service_net: None,
            },
        );
        let mut replicas = Vec::new();
        for _ in 0..opts.replicas {
            replicas.push(Replica {
                xds_addr: crate::free_loopback_addr()?,
                debug_addr: crate::free_loopback_addr()?,
                process: None,
                log: None,
                starts: 0,
            });
        }
        let mut m = ExternalMesh {
            opts,
            state_dir,
            pod_net,
            mesh,
            replicas,
            sidecars: Vec::new(),
            apps: Vec::new(),
            _claim: claim,
        };
        // All replicas at once, as an operator's rollout would: they share
        // the state directory and must settle on one root between them.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..m.replicas.len() {
            m.spawn_replica(i)?;
        }
        for i in 0..m.replicas.len() {
            m.wait_replica_ready(i, deadline).await?;
        }
        m.start_workloads().await?;
        Ok(m)
    }

    async fn start_workloads(&mut self) -> anyhow::Result<()> {
        let xds_addrs: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.xds_addr.to_string())
            .collect();
        let envoy_dir = self.opts.work_dir.join("envoy");
        std::fs::create_dir_all(&envoy_dir)?;
        let workloads: Vec<_> = self.mesh.workloads.clone();
        for (wi, w) in workloads.iter().enumerate() {
            if !w.sidecar {
                let addrs: Vec<SocketAddr> = target_ports(&self.mesh, wi)
                    .into_iter()
                    .map(|p| SocketAddr::new(w.ip, p))
                    .collect();
                if !addrs.is_empty() {
                    let name = format!("{}.{}", w.name, w.namespace);
                    self.apps.push(EchoServer::start(addrs, name).await?);
                }
                continue;
            }
            let name = format!("{}.{}", w.name, w.namespace);
            let mut cmd = Command::new(&self.opts.xds_server);
            cmd.arg("bootstrap")
                .args(["--namespace", &w.namespace, "--pod", &w.name])
                .arg("--xds-addr")
                .arg(xds_addrs.join(","))
                .arg("--state-dir")
                .arg(&self.state_dir)
                .arg("--pod-net")
                .arg(self.pod_net.to_string())
                .arg("--out-dir")
                .arg(envoy_dir.join(&name));
            for d in &self.opts.config_dirs {
                cmd.arg("--config-dir").arg(d);
            }
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
            )
            .await
            .context("xds-server bootstrap took longer than 30s")?
            .context("running xds-server bootstrap")?;
            if !out.status.success() {
                bail!(
                    "xds-server bootstrap for {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let yaml = envoy_dir.join(format!("{name}.yaml"));
            std::fs::write(&yaml, &out.stdout)
                .with_context(|| format!("writing {}", yaml.display()))?;
            // config:debug puts the status each ADS stream ended with in
            // the log.
            let mut spec = EnvoySpec::new(&self.opts.envoy, &yaml, &envoy_dir, &name);
            spec.extra_args = vec!["--component-log-level".into(), "config:debug".into()];
            let envoy =
                EnvoyProcess::spawn(&spec).with_context(|| format!("starting Envoy for {name}"))?;
            self.sidecars.push(Sidecar {
                name,
                namespace: w.namespace.clone(),
                pod: w.name.clone(),
                ip: w.ip,
                node_id: NodeId::format(
                    &w.ip.to_string(),
                    &w.name,
                    &w.namespace,
                    &self.mesh.config.cluster_domain,
                ),
                spiffe_id: self.mesh.spiffe_id(&w.namespace, &w.service_account),
                admin: Admin::new(SocketAddr::new(w.ip, 15000))
                    .with_request_timeout(Duration::from_secs(3)),
                envoy,
            });
        }
        Ok(())
    }

    /// Starts replica `i` (again) on its addresses with a fresh log.
    fn spawn_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let work_dir = self.opts.work_dir.clone();
        let r = self
            .replicas
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        if r.process.is_some() {
            bail!("replica {i} is already running");
        }
        r.starts += 1;
        let log = work_dir.join(format!("serve-{i}-{}.log", r.starts));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.opts.xds_server);
        cmd.arg("serve")
            .arg("--xds-addr")
            .arg(r.xds_addr.to_string())
            .arg("--debug-addr")
            .arg(r.debug_addr.to_string())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pod-net")
            .arg(self.pod_net.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        for d in &self.opts.config_dirs {
            cmd.arg("--config-dir").arg(d);
        }
        let child = cmd.spawn().context("starting xds-server serve")?;
        let pid = child.id().context("serve has no pid")?;
        r.process = Some(ServeProcess {
            child,
            pid,
            log: log.clone(),
        });
        r.log = Some(log);
        Ok(())
    }

    /// Polls replica `i`'s `/readyz` until it answers 200, failing fast if
    /// the process exits.
    async fn wait_replica_ready(&mut self, i: usize, deadline: Instant) -> anyhow::Result<()> {
        let r = self
            .replicas
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        let debug = Admin::new(r.debug_addr).with_request_timeout(Duration::from_secs(1));
        loop {
            let Some(p) = r.process.as_mut() else {
                bail!("replica {i} is not running");
            };
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                bail!("replica {i} exited with {status} while starting:\n{log}");
            }
            let last = match debug.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("replica {i} was not ready in time: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts replica `i` again (same addresses, state and config) and
    /// waits until it is ready.
    pub async fn restart_replica(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_replica(i)?;
        self.wait_replica_ready(i, Instant::now() + Duration::from_secs(30))
            .await
    }

    /// Starts replica `i` again without waiting for it.
    pub fn spawn_replica_again(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_replica(i)
    }

    /// Waits for a replica started with [`ExternalMesh::spawn_replica_again`].
    pub async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        self.wait_replica_ready(i, Instant::now() + Duration::from_secs(30))
            .await
    }

    /// Sends `signal` (`TERM`, `INT`) to replica `i`.
    pub fn signal_replica(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .replicas
            .get(i)
            .and_then(|r| r.process.as_ref())
            .map(|p| p.pid)
            .with_context(|| format!("replica {i} is not running"))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid}: {status}");
        }
        Ok(())
    }

    /// Waits up to `timeout` for replica `i` to exit; its status and how
    /// long that took.
    pub async fn wait_replica_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> anyhow::Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        let r = self
            .replicas
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        let p = r
            .process
            .as_mut()
            .with_context(|| format!("replica {i} is not running"))?;
        let status = tokio::time::timeout(timeout, p.child.wait())
            .await
            .with_context(|| format!("replica {i} did not exit within {timeout:?}"))??;
        r.process = None;
        Ok((status, started.elapsed()))
    }

    /// SIGKILL to replica `i`, and reaps it.
    pub async fn kill_replica(&mut self, i: usize) -> anyhow::Result<()> {
        let r = self
            .replicas
            .get_mut(i)
            .with_context(|| format!("no replica {i}"))?;
        let mut p = r
            .process
            .take()
            .with_context(|| format!("replica {i} is not running"))?;
        p.child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(10), p.child.wait())
            .await
            .context("a killed serve was not reaped in 10s")??;
        Ok(())
    }

    /// The log of replica `i`'s latest start.
    pub fn replica_log(&self, i: usize) -> String {
        self.replicas
            .get(i)
            .and_then(|r| r.log.as_ref())
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `/debug/syncz` of replica `i`.
    pub async fn syncz(&self, i: usize) -> anyhow::Result<Value> {
        let r = self
            .replicas
            .get(i)
            .with_context(|| format!("no replica {i}"))?;
        Ok(Admin::new(r.debug_addr).get_json("/debug/syncz").await?)
    }

    /// Replica `i`'s `/debug/syncz` proxy entries.
    pub async fn proxies_on(&self, i: usize) -> anyhow::Result<Vec<Value>> {
        let syncz = self.syncz(i).await?;
        Ok(syncz
            .get("proxies")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// The running replica whose `/debug/syncz` has `node_id` connected.
    pub async fn replica_of(&self, node_id: &str) -> Option<usize> {
        for (i, r) in self.replicas.iter().enumerate() {
            if r.process.is_none() {
                continue;
            }
            if let Ok(proxies) = self.proxies_on(i).await
                && proxies.iter().any(|p| p["node_id"] == node_id)
            {
                return Some(i);
            }
        }
        None
    }

    /// What is still missing before every sidecar is connected to one of
    /// `on` (running replicas), has acknowledged that replica's current
    /// config with no NACK, and has nothing warming; `None` once all are.
    pub async fn pending(&mut self, on: &[usize]) -> Option<String> {
        let mut proxies = Vec::new();
        for &i in on {
            match self.proxies_on(i).await {
                Ok(p) => proxies.extend(p),
                Err(e) => return Some(format!("replica {i}: {e}")),
            }
        }
        for s in &mut self.sidecars {
            let mine: Vec<&Value> = proxies
                .iter()
                .filter(|p| p["node_id"] == s.node_id.as_str())
                .collect();
            if mine.is_empty() {
                return Some(format!("{}: not connected to replica(s) {on:?}", s.name));
            }
            if let Some(nack) = mine.iter().find_map(|p| last_nack(p)) {
                return Some(format!("{}: NACK {nack}", s.name));
            }
            if !mine
                .iter()
                .any(|p| p["status"] == "SYNCED" && p["up_to_date"] == true)
            {
                return Some(format!("{}: not SYNCED yet: {mine:?}", s.name));
            }
            if let Err(e) = s.envoy.check_running().await {
                return Some(format!("{}: {e}", s.name));
            }
            for stat in [
                "listener_manager.total_listeners_warming",
                "cluster_manager.warming_clusters",
            ] {
                match s.admin.stat(stat).await {
                    Ok(Some(0)) | Ok(None) => {}
                    Ok(Some(n)) => return Some(format!("{}: {stat} = {n}", s.name)),
                    Err(e) => return Some(format!("{}: admin: {e}", s.name)),
                }
            }
        }
        None
    }

    /// Polls [`ExternalMesh::pending`] until nothing is, or fails at the
    /// deadline with what still was.
    pub async fn wait_converged(&mut self, on: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(last) = self.pending(on).await else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                bail!(
                    "the sidecars did not converge on replica(s) {on:?} within {timeout:?}: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every non-zero `*update_rejected` counter (a NACKed xDS update) of
    /// every sidecar's Envoy, as `sidecar: stat`.
    pub async fn rejected_updates(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for s in &self.sidecars {
            let stats = s.admin.stats().await?;
            let mut seen = 0;
            for (name, value) in stats {
                if name.ends_with("update_rejected") {
                    seen += 1;
                    if value != 0 {
                        out.insert(format!("{}: {name}", s.name), value);
                    }
                }
            }
            if seen == 0 {
                bail!("{}: Envoy has no update_rejected counters", s.name);
            }
        }
        Ok(out)
    }

    /// Each sidecar's Envoy `control_plane.connected_state` (1: its ADS
    /// stream is up).
    pub async fn connected_states(&self) -> BTreeMap<String, Option<u64>> {
        let mut out = BTreeMap::new();
        for s in &self.sidecars {
            let v = s
                .admin
                .stat("control_plane.connected_state")
                .await
                .ok()
                .flatten();
            out.insert(s.name.clone(), v);
        }
        out
    }

    /// Each sidecar's Envoy process id.
    pub fn envoy_pids(&self) -> BTreeMap<String, Option<u32>> {
        self.sidecars
            .iter()
            .map(|s| (s.name.clone(), s.envoy.pid()))
            .collect()
    }

    /// The sidecars whose Envoy has exited, with why.
    pub async fn exited_envoys(&mut self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for s in &mut self.sidecars {
            if let Err(e) = s.envoy.check_running().await {
                out.insert(s.name.clone(), e.to_string());
            }
        }
        out
    }

    /// The Envoy log of a sidecar.
    pub fn envoy_log(&self, sidecar: &str) -> String {
        self.sidecars
            .iter()
            .find(|s| s.name == sidecar)
            .map(|s| std::fs::read_to_string(s.envoy.log_path()).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn sidecar(&self, name: &str) -> Option<&Sidecar> {
        self.sidecars.iter().find(|s| s.name == name)
    }

    /// The PEM the sidecar's Envoy holds for an SDS secret (`ROOTCA`: the
    /// trusted root; `default`: its certificate chain), from its admin
    /// API's config dump.
    pub async fn envoy_secret_pem(&self, sidecar: &str, secret: &str) -> anyhow::Result<String> {
        let s = self
            .sidecar(sidecar)
            .with_context(|| format!("no sidecar {sidecar}"))?;
        let dump = s
            .admin
            .get_json("/config_dump?resource=dynamic_active_secrets")
            .await?;
        let configs = dump
            .get("configs")
            .and_then(Value::as_array)
            .with_context(|| format!("{sidecar}: no secrets in {dump}"))?;
        let found = configs
            .iter()
            .find(|c| c["name"] == secret)
            .with_context(|| format!("{sidecar}: no secret {secret}"))?;
        let inline = found["secret"]["validation_context"]["trusted_ca"]["inline_bytes"]
            .as_str()
            .or_else(|| {
                found["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"].as_str()
            })
            .with_context(|| format!("{sidecar}: secret {secret} has no inline PEM: {found}"))?;
        let bytes = base64_decode(inline)
            .with_context(|| format!("{sidecar}: secret {secret} is not base64"))?;
        Ok(String::from_utf8(bytes)?)
    }

    /// The root certificate in the shared state directory.
    pub fn state_root_pem(&self) -> anyhow::Result<String> {
        let path = self.state_dir.join("ca").join("root-cert.pem");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Sidecar-to-sidecar probes for a steady loop: every `app=sleep`
    /// sidecar to every port of every service whose endpoints have a
    /// sidecar, expecting 200 over mTLS with both identities checked.
    pub fn sidecar_probes(&self) -> Vec<ProbeSpec> {
        let mut out = Vec::new();
        for from in &self.sidecars {
            let Some((_, w)) = self.mesh.workload(&from.namespace, &from.pod) else {
                continue;
            };
            if w.labels.get("app").map(String::as_str) != Some("sleep") {
                continue;
            }
            for (si, svc) in self.mesh.services.iter().enumerate() {
                if svc.labels.get("app").map(String::as_str) != Some("httpbin") {
                    continue;
                }
                let Some(ep) = self
                    .mesh
                    .index
                    .service_endpoints
                    .get(si)
                    .and_then(|e| e.first())
                    .and_then(|&ei| self.mesh.workloads.get(ei))
                else {
                    continue;
                };
                if !ep.sidecar {
                    continue;
                }
                for p in &svc.ports {
                    out.push(ProbeSpec {
                        from: format!("{}.{}", w.display_name(), w.namespace),
                        host: format!("{}.{}:{}", svc.name, svc.namespace, p.port),
                        addr: SocketAddr::new(from.ip, self.mesh.config.outbound_port),
                        client_spiffe: from.spiffe_id.clone(),
                        server_spiffe: self.mesh.spiffe_id(&ep.namespace, &ep.service_account),
                    });
                }
            }
        }
        out
    }

    /// The article's matrix, `app=sleep` clients (sidecar or not) to
    /// `app=httpbin` services, as `LocalMesh::probe_matrix` probes it: a
    /// sidecar client through its outbound listener, one without straight
    /// to the first endpoint's pod IP (kube-proxy).
    pub async fn article_matrix(&self) -> Vec<ProbeRow> {
        let mut jobs = tokio::task::JoinSet::new();
        let mut clients = BTreeMap::new();
        for w in &self.mesh.workloads {
            if w.labels.get("app").map(String::as_str) == Some("sleep") {
                clients
                    .entry(format!("{}.{}", w.display_name(), w.namespace))
                    .or_insert(w);
            }
        }
        for (from, w) in clients {
            for (si, s) in self.mesh.services.iter().enumerate() {
                if s.labels.get("app").map(String::as_str) != Some("httpbin") {
                    continue;
                }
                for p in &s.ports {
                    let to = format!("{}.{}:{}", s.name, s.namespace, p.port);
                    let target = probe_target(&self.mesh, w, si, p);
                    let spiffe = self.mesh.spiffe_id(&w.namespace, &w.service_account);
                    let from = from.clone();
                    jobs.spawn(async move {
                        probe_row(from, to, target, &spiffe, PROBE_TIMEOUT).await.0
                    });
                }
            }
        }
        let mut rows = Vec::new();
        while let Some(r) = jobs.join_next().await {
            if let Ok(row) = r {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        rows
    }

    /// Stops every Envoy (SIGTERM, then SIGKILL), every replica (SIGKILL:
    /// graceful stops are what tests check, not what cleanup needs) and
    /// the applications.
    pub async fn stop(mut self) {
        for s in std::mem::take(&mut self.sidecars) {
            let _ = s.envoy.stop().await;
        }
        for i in 0..self.replicas.len() {
            if self.replicas.get(i).is_some_and(|r| r.process.is_some()) {
                let _ = self.kill_replica(i).await;
            }
        }
        for app in std::mem::take(&mut self.apps) {
            app.stop().await;
        }
    }
}

/// The `last_nack` of any type of a `/debug/syncz` proxy entry.
fn last_nack(proxy: &Value) -> Option<String> {
    proxy
        .get("types")
        .and_then(Value::as_object)?
        .iter()
        .find_map(|(kind, t)| {
            t.get("last_nack")
                .filter(|n| !n.is_null())
                .map(|n| format!("{kind}: {n}"))
        })
}

/// Standard base64 (with padding), as Envoy prints `inline_bytes`.
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let data: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    for chunk in data.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).with_context(|| format!("{:?} is not base64", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => bail!("truncated base64"),
        }
    }
    Ok(out)
}

/// One probe of a steady loop: through `from`'s outbound listener to
/// `host`, expecting 200 with `client_spiffe` as the client identity the
/// server sidecar verified and `server_spiffe` as that sidecar's own.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    pub from: String,
    pub host: String,
    pub addr: SocketAddr,
    pub client_spiffe: String,
    pub server_spiffe: String,
}

impl ProbeSpec {
    /// `None` when the probe got what it expects, else what it got.
    async fn run(&self) -> Option<String> {
        let r = probe(self.addr, &self.host, "/headers", PROBE_TIMEOUT).await;
        if r.status() != Some(200) {
            return Some(format!("{} (body {:?})", r.outcome, r.body));
        }
        let xfcc = r.xfcc.as_deref().unwrap_or("");
        if xfcc_uri(xfcc) != Some(self.client_spiffe.as_str())
            || xfcc_by(xfcc) != Some(self.server_spiffe.as_str())
        {
            return Some(format!(
                "200 but not the expected mTLS identities: XFCC {xfcc:?}"
            ));
        }
        None
    }
}

/// What a [`ProbeLoop`] saw.
#[derive(Clone, Debug, Default)]
pub struct ProbeLog {
    pub rounds: usize,
    pub probes: usize,
    /// `+SECONDS from -> host: what it got`, one per failed probe.
    pub failures: Vec<String>,
}

/// Probes every [`ProbeSpec`] once per round, a round every `interval`,
/// until stopped or `max_rounds` is reached (bounded).
pub struct ProbeLoop {
    stop: watch::Sender<bool>,
    rounds: Arc<AtomicUsize>,
    log: Arc<Mutex<ProbeLog>>,
    task: JoinHandle<()>,
}

impl ProbeLoop {
    pub fn start(specs: Vec<ProbeSpec>, interval: Duration, max_rounds: usize) -> ProbeLoop {
        let (stop, mut stopped) = watch::channel(false);
        let rounds = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let (task_rounds, task_log) = (rounds.clone(), log.clone());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            for _ in 0..max_rounds {
                if *stopped.borrow() {
                    break;
                }
                let mut jobs = tokio::task::JoinSet::new();
                for spec in specs.iter().cloned() {
                    jobs.spawn(async move {
                        let at = started.elapsed().as_secs_f64();
                        spec.run()
                            .await
                            .map(|got| format!("+{at:.2}s {} -> {}: {got}", spec.from, spec.host))
                    });
                }
                let mut failed = Vec::new();
                let mut done = 0;
                while let Some(r) = jobs.join_next().await {
                    done += 1;
                    match r {
                        Ok(Some(f)) => failed.push(f),
                        Ok(None) => {}
                        Err(e) => failed.push(format!("probe task failed: {e}")),
                    }
                }
                if let Ok(mut log) = task_log.lock() {
                    log.rounds += 1;
                    log.probes += done;
                    log.failures.extend(failed);
                }
                task_rounds.fetch_add(1, Ordering::SeqCst);
                // Paces the rounds; a stop request ends the wait early.
                let _ = tokio::time::timeout(interval, stopped.changed()).await;
            }
        });
        ProbeLoop {
            stop,
            rounds,
            log,
            task,
        }
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.failures.clone())
            .unwrap_or_default()
    }

    /// Waits until `more` rounds beyond the current count have completed
    /// (so the traffic spans whatever happened just before the call).
    pub async fn wait_rounds(&self, more: usize, timeout: Duration) -> anyhow::Result<()> {
        let target = self.rounds() + more;
        let deadline = Instant::now() + timeout;
        while self.rounds() < target {
            if self.task.is_finished() {
                bail!("the probe loop ended after {} rounds", self.rounds());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} probe rounds did not complete within {timeout:?} (at {} of {target})",
                    more,
                    self.rounds()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops the loop (after the round in flight) and returns its log.
    pub async fn stop(self) -> ProbeLog {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(PROBE_TIMEOUT * 2, self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Copies every file of `from` into `to` (created), not recursively.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes_padded_and_unpadded_input() {
        assert_eq!(base64_decode("aGVsbG8=").expect("valid"), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").expect("valid"), b"hello!");
        assert_eq!(base64_decode("aGk=").expect("valid"), b"hi");
        assert_eq!(base64_decode("").expect("valid"), b"");
        assert!(base64_decode("a").is_err());
        assert!(base64_decode("a*==").is_err());
    }
}
