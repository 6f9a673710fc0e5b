//! `xds-load bench`: the whole benchmark in one command. Per protocol
//! (state of the world, then delta): generate the mesh afresh, start a
//! `serve` process on it, run the load with its changes, stop the server;
//! then one table with a column per protocol.

use super::floor;
use super::meshgen::{self, MeshSpec};
use super::proxy::Backoff;
use super::report::RunReport;
use super::run::{RunOptions, run};
use super::server::ServerProcess;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use translator::model::MeshConfig;
use translator::model::build::Addressing;

/// What the benchmark does.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub spec: MeshSpec,
    pub proxies: usize,
    /// The runs, in order: `false` state of the world, `true` delta.
    pub protocols: Vec<bool>,
    /// The `xds-server` binary to run.
    pub server_bin: PathBuf,
    /// Where meshes, server state and server logs go.
    pub work_dir: PathBuf,
    /// Extra `serve` arguments (limits, say).
    pub server_args: Vec<String>,
    pub mesh_changes: usize,
    pub namespace_changes: usize,
    pub sync_timeout: Duration,
    pub quiet: Duration,
    pub change_timeout: Duration,
    pub connect_timeout: Duration,
}

/// One finished run, with where its server logged.
pub struct BenchRun {
    pub report: RunReport,
    pub server_log: PathBuf,
    /// The 1-minute load average when the run started: other work on the
    /// machine shows here.
    pub load_average: Option<f64>,
}

fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs the benchmark.
pub async fn bench(opts: &BenchOptions) -> anyhow::Result<Vec<BenchRun>> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let mesh = meshgen::generate(&opts.spec)?;
    let addressing = Addressing {
        pod_net: std::net::Ipv4Addr::new(127, 16, 0, 0),
        app_net: None,
        service_net: None,
    };
    // Once, before any server runs, so nothing competes with it.
    let floor_dir = opts.work_dir.join("mesh-floor");
    meshgen::write(&mesh, &floor_dir)?;
    let floor = floor::measure(
        &floor_dir,
        &MeshConfig::default(),
        &addressing,
        opts.proxies,
    )
    .await
    .context("measuring the floor")?;
    tracing::info!(?floor, "measured the floor");
    let mut runs = Vec::new();
    for &delta in &opts.protocols {
        let name = if delta { "delta" } else { "sotw" };
        let mesh_dir = opts.work_dir.join(format!("mesh-{name}"));
        // Fresh for each run: the previous one's changes rewrote files.
        meshgen::write(&mesh, &mesh_dir)?;
        let state_dir = opts.work_dir.join(format!("state-{name}"));
        let log = opts.work_dir.join(format!("serve-{name}.log"));
        let load_average = load_average();
        tracing::info!(protocol = name, log = %log.display(), ?load_average, "starting the server");
        let server = ServerProcess::start(
            &opts.server_bin,
            &mesh_dir,
            &state_dir,
            &log,
            &opts.server_args,
        )
        .await?;
        let run_opts = RunOptions {
            config_dir: mesh_dir,
            xds_addr: server.xds_addr,
            server_name: "localhost".to_string(),
            state_dir,
            // `serve`'s defaults, which the server was started with.
            mesh: MeshConfig::default(),
            addressing: addressing.clone(),
            delta,
            proxies: Some(opts.proxies),
            sync_timeout: opts.sync_timeout,
            mesh_changes: opts.mesh_changes,
            namespace_changes: opts.namespace_changes,
            quiet: opts.quiet,
            change_timeout: opts.change_timeout,
            server_pid: Some(server.pid()),
            backoff: Backoff::DEFAULT,
            connect_timeout: opts.connect_timeout,
        };
        let outcome = run(&run_opts).await;
        // Stopped whatever the run's outcome.
        let stopped = server.stop().await;
        let mut report = outcome?;
        report.floor = Some(floor);
        stopped?;
        runs.push(BenchRun {
            report,
            server_log: log,
            load_average,
        });
    }
    Ok(runs)
}
