//! One load run against a running server: every sidecar of the mesh
//! directory (or the first N) connects at once, each with its own
//! certificate; once all are synced, the mesh-wide and then one
//! namespace's PeerAuthentication are rewritten in turn (the server
//! watches the directory), each change measured until the pushes it caused
//! have settled. The server's memory and CPU are read from /proc when its
//! process id is known.

use super::meshgen::{self, CHANGE_NAMESPACE, CHANGE_NAMESPACE_MODE, MESH_MODE, MESH_POLICY_FILE};
use super::procstat;
use super::proxy::{self, Backoff, Connect, ProxySpec, proxies_of};
use super::record::Recorder;
use super::report::{self, ChangeResult, RunReport, ServerUsage};
use super::tls::TlsConnect;
use super::{delta::Delta, sotw::Sotw};
use crate::ca::CertificateAuthority;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use translator::model::MeshConfig;
use translator::model::build::Addressing;

/// How long the proxies get to end their streams once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors the load generator needs besides one per proxy.
const SPARE_FDS: u64 = 256;

/// What a run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The mesh directory the server serves: read for the sidecars, and
    /// rewritten for the changes (a `gen-mesh` directory).
    pub config_dir: PathBuf,
    pub xds_addr: SocketAddr,
    /// The name the server's certificate is checked for.
    pub server_name: String,
    /// The server's state directory, where its CA is.
    pub state_dir: PathBuf,
    pub mesh: MeshConfig,
    pub addressing: Addressing,
    pub delta: bool,
    /// Connect only the first N sidecars (by namespace and pod name).
    pub proxies: Option<usize>,
    pub sync_timeout: Duration,
    pub mesh_changes: usize,
    pub namespace_changes: usize,
    /// A change has settled once nothing arrived for this long.
    pub quiet: Duration,
    /// The longest a change may take to settle.
    pub change_timeout: Duration,
    /// The server's process, for its memory and CPU.
    pub server_pid: Option<u32>,
    pub backoff: Backoff,
    /// How long a connection (TCP and TLS) may take.
    pub connect_timeout: Duration,
}

/// Runs the load against the server at `opts.xds_addr` over mutual TLS.
pub async fn run(opts: &RunOptions) -> anyhow::Result<RunReport> {
    let mut proxies = proxies_of(&opts.config_dir, &opts.mesh, &opts.addressing)?;
    if let Some(n) = opts.proxies {
        if n > proxies.len() {
            bail!(
                "{} has {} sidecars, fewer than the {n} asked for",
                opts.config_dir.display(),
                proxies.len()
            );
        }
        proxies.truncate(n);
    }
    procstat::raise_nofile(proxies.len() as u64 + SPARE_FDS)?;
    let ca = CertificateAuthority::load_or_create(&opts.state_dir, &opts.mesh.trust_domain)
        .with_context(|| format!("loading the CA from {}", opts.state_dir.display()))?;
    let connector = TlsConnect::new(
        &ca,
        proxies.iter().map(|p| &p.identity),
        opts.xds_addr,
        &opts.server_name,
        &opts.mesh.root_namespace,
        opts.connect_timeout,
    )?;
    tracing::info!(
        proxies = proxies.len(),
        delta = opts.delta,
        "client certificates issued; connecting"
    );
    run_with(opts, proxies, Arc::new(connector)).await
}

/// [`run`] with any way of connecting.
pub async fn run_with<C: Connect>(
    opts: &RunOptions,
    proxies: Vec<ProxySpec>,
    connector: Arc<C>,
) -> anyhow::Result<RunReport> {
    let needed = [
        (opts.mesh_changes, PathBuf::from(MESH_POLICY_FILE)),
        (
            opts.namespace_changes,
            meshgen::namespace_policy_file(CHANGE_NAMESPACE),
        ),
    ];
    for (changes, file) in needed {
        if changes > 0 && !opts.config_dir.join(&file).is_file() {
            bail!(
                "{} has no {}: changes need a mesh written by gen-mesh",
                opts.config_dir.display(),
                file.display()
            );
        }
    }
    let server_stats = || -> anyhow::Result<Option<procstat::ProcStats>> {
        opts.server_pid.map(procstat::read).transpose()
    };
    let idle = server_stats()?;
    let overflows_before = procstat::listen_overflows();
    let load_cpu_before = procstat::own_cpu();
    let recorder = Arc::new(Recorder::new(proxies.len()));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for p in proxies {
        let (connector, recorder, stopped) = (
            Arc::clone(&connector),
            Arc::clone(&recorder),
            stopped.clone(),
        );
        if opts.delta {
            let protocol = Delta::new(&p.node_id);
            tasks.spawn(proxy::run(
                p,
                protocol,
                connector,
                recorder,
                opts.backoff,
                stopped,
            ));
        } else {
            let protocol = Sotw::new(&p.node_id);
            tasks.spawn(proxy::run(
                p,
                protocol,
                connector,
                recorder,
                opts.backoff,
                stopped,
            ));
        }
    }

    let all_synced = wait_synced(&recorder, opts.sync_timeout).await;
    let sync_end = recorder.now();
    let synced_stats = server_stats()?;
    let load_rss_kib = procstat::read(std::process::id()).ok().map(|s| s.rss_kib);
    let mut report = RunReport {
        delta: opts.delta,
        ..RunReport::default()
    };
    report::sync_numbers(&recorder.snapshot(), sync_end, &mut report);
    report.listen_overflows = overflows_before
        .zip(procstat::listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));
    tracing::info!(
        synced = report.synced,
        proxies = report.proxies,
        elapsed_ms = sync_end.as_millis() as u64,
        all_synced,
        "initial sync done"
    );

    let mesh_file = opts.config_dir.join(MESH_POLICY_FILE);
    let mut mode = MESH_MODE;
    for i in 0..opts.mesh_changes {
        mode = mode.toggled();
        let text = meshgen::mesh_policy_yaml(mode);
        let result = change(opts, &recorder, || meshgen::replace_file(&mesh_file, &text)).await?;
        tracing::info!(change = i, mode = mode.as_str(), pushed = result.pushed, last_ack_ms = ?result.last_ack.map(|d| d.as_millis()), "mesh-wide change settled");
        report.mesh_changes.push(result);
    }
    let ns_file = opts
        .config_dir
        .join(meshgen::namespace_policy_file(CHANGE_NAMESPACE));
    let mut mode = CHANGE_NAMESPACE_MODE;
    for i in 0..opts.namespace_changes {
        mode = mode.toggled();
        let text = meshgen::namespace_policy_yaml(CHANGE_NAMESPACE, mode);
        let result = change(opts, &recorder, || meshgen::replace_file(&ns_file, &text)).await?;
        tracing::info!(change = i, mode = mode.as_str(), pushed = result.pushed, last_ack_ms = ?result.last_ack.map(|d| d.as_millis()), "namespace change settled");
        report.namespace_changes.push(result);
    }

    // Stop every proxy; any still running after the timeout is aborted
    // when the set is dropped.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(STOP_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    if let (Some(idle), Some(synced), Some(last)) = (idle, synced_stats, server_stats()?) {
        report.server = Some(ServerUsage {
            rss_idle_kib: idle.rss_kib,
            rss_synced_kib: synced.rss_kib,
            peak_kib: last.hwm_kib,
            cpu_sync: synced.cpu.saturating_sub(idle.cpu),
            cpu_total: last.cpu,
        });
    }
    report.load_cpu = procstat::own_cpu().saturating_sub(load_cpu_before);
    report.load_rss_kib = load_rss_kib;
    Ok(report)
}

/// Waits until every proxy was synced once, or `timeout`; whether all were.
async fn wait_synced(recorder: &Recorder, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = recorder.events();
    loop {
        if recorder.synced() == recorder.len() {
            return true;
        }
        match tokio::time::timeout_at(deadline, events.changed()).await {
            Ok(Ok(())) => {
                events.borrow_and_update();
            }
            Ok(Err(_)) | Err(_) => return recorder.synced() == recorder.len(),
        }
    }
}

/// Makes one change with `write` and waits until the pushes it caused
/// settled: something arrived after it, then nothing for `opts.quiet`
/// (or `opts.change_timeout` passed).
async fn change(
    opts: &RunOptions,
    recorder: &Recorder,
    write: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<ChangeResult> {
    let cpu_before = opts.server_pid.map(procstat::read).transpose()?;
    let mut events = recorder.events();
    events.borrow_and_update();
    let t0 = recorder.now();
    write()?;
    let deadline = tokio::time::Instant::now() + opts.change_timeout;
    let mut seen = false;
    loop {
        let wait_until = if seen {
            deadline.min(tokio::time::Instant::now() + opts.quiet)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait_until, events.changed()).await {
            Ok(Ok(())) => {
                events.borrow_and_update();
                seen = true;
            }
            // Quiet for long enough, or out of time.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let mut result = report::change_result(&recorder.snapshot(), t0);
    if let (Some(before), Some(after)) =
        (cpu_before, opts.server_pid.map(procstat::read).transpose()?)
    {
        result.server_cpu = Some(after.cpu.saturating_sub(before.cpu));
    }
    Ok(result)
}
