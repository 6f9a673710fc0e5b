//! The `xds-load` command line: `gen-mesh`, `run` (against a server already
//! running) and `bench` (everything, the documented benchmark).

use super::bench::{BenchOptions, bench};
use super::meshgen::{self, MeshSpec};
use super::proxy::Backoff;
use super::report;
use super::run::{RunOptions, run};
use crate::cli::{MeshArgs, parse_duration};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "xds-load",
    version,
    about = "Load generator for the xDS server: simulated Envoy sidecars (real ADS clients over mutual TLS that decode and ACK every response) and a mesh generator."
)]
pub struct LoadCli {
    #[command(subcommand)]
    pub command: LoadCommand,
}

#[derive(Subcommand, Debug)]
pub enum LoadCommand {
    /// Write a synthetic mesh (Namespaces, Services, Pods, PeerAuthentications, DestinationRules) as YAML for `serve --config-dir`.
    GenMesh(GenMeshArgs),
    /// Connect the sidecars of a mesh directory to a running server, measure, and print the table.
    Run(RunArgs),
    /// The benchmark: generate the mesh, start `xds-server serve` on it, run the load (SotW, then delta), stop it, print one table.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MeshSize {
    /// Services (svc-0000 ..), spread round-robin over the namespaces.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Namespaces (ns-000 ..), all with sidecar injection.
    #[arg(long, default_value_t = 50)]
    pub namespaces: usize,
    /// Extra workloads without a sidecar, in namespace `legacy`.
    #[arg(long, default_value_t = 20)]
    pub legacy: usize,
    /// Seed of the policy choices; the same seed gives the same mesh.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct GenMeshArgs {
    #[command(flatten)]
    pub size: MeshSize,
    /// Workloads with a sidecar (pods), spread round-robin over the services.
    #[arg(long, default_value_t = 2000)]
    pub workloads: usize,
    /// Output directory: absent, empty, or written by gen-mesh before (then replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// How long things may take, and how a change is judged settled.
#[derive(Args, Debug, Clone)]
pub struct Timing {
    /// Mesh-wide PeerAuthentication changes after the initial sync.
    #[arg(long, default_value_t = 5)]
    pub mesh_changes: usize,
    /// Changes of one namespace's PeerAuthentication (ns-000).
    #[arg(long, default_value_t = 5)]
    pub namespace_changes: usize,
    /// How long all proxies get to sync.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub sync_timeout: Duration,
    /// A change has settled once no response arrived for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub quiet: Duration,
    /// The longest a change may take to settle.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub change_timeout: Duration,
    /// How long a sidecar's connection (TCP and TLS) may take before it is reset; default: the bootstrap's xDS cluster connect_timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The mesh directory the server serves (a gen-mesh directory, for the changes).
    #[arg(long = "config-dir")]
    pub config_dir: PathBuf,
    /// The server's state directory (its CA signs the client certificates).
    #[arg(long, default_value = ".xds-state")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// The name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Delta xDS instead of state of the world.
    #[arg(long)]
    pub delta: bool,
    /// Connect only the first N sidecars (default: all of the mesh).
    #[arg(long)]
    pub proxies: Option<usize>,
    /// The server's process id, to report its memory and CPU.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub size: MeshSize,
    /// Sidecars to connect; the mesh gets as many workloads.
    #[arg(long, default_value_t = 2000)]
    pub proxies: usize,
    /// Only state of the world.
    #[arg(long, conflicts_with = "delta")]
    pub sotw: bool,
    /// Only delta.
    #[arg(long)]
    pub delta: bool,
    /// The server binary (default: `xds-server` next to this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Where meshes, server state and logs go (default: a new directory under the temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// An extra `serve` argument (e.g. --server-arg=--max-connections=30000); may repeat.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    #[command(flatten)]
    pub timing: Timing,
}

/// Why streams were reset while connecting, most common first.
fn print_reset_reasons(report: &report::RunReport) {
    let mut reasons: Vec<(&String, &usize)> = report.reset_reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let protocol = if report.delta { "delta" } else { "SotW" };
    for (why, n) in reasons.into_iter().take(5) {
        println!("  {protocol}: {n} proxies last reset while connecting by: {why}");
    }
}

/// Runs a parsed command.
pub async fn main(cli: LoadCli) -> anyhow::Result<()> {
    match cli.command {
        LoadCommand::GenMesh(args) => {
            let spec = MeshSpec {
                services: args.size.services,
                namespaces: args.size.namespaces,
                workloads: args.workloads,
                legacy_workloads: args.size.legacy,
                seed: args.size.seed,
            };
            let mesh = meshgen::generate(&spec)?;
            meshgen::write(&mesh, &args.out)?;
            println!(
                "wrote {} files to {}: {} services in {} namespaces, {} workloads with a sidecar, {} without",
                mesh.files.len(),
                args.out.display(),
                spec.services,
                spec.namespaces,
                spec.workloads,
                spec.legacy_workloads
            );
        }
        LoadCommand::Run(args) => {
            let opts = RunOptions {
                config_dir: args.config_dir,
                xds_addr: args.xds_addr,
                server_name: args.server_name,
                state_dir: args.state_dir,
                mesh: args.mesh.mesh_config(),
                addressing: args.mesh.addressing(),
                delta: args.delta,
                proxies: args.proxies,
                sync_timeout: args.timing.sync_timeout,
                mesh_changes: args.timing.mesh_changes,
                namespace_changes: args.timing.namespace_changes,
                quiet: args.timing.quiet,
                change_timeout: args.timing.change_timeout,
                server_pid: args.server_pid,
                backoff: Backoff::DEFAULT,
                connect_timeout: args.timing.connect_timeout,
            };
            let report = run(&opts).await?;
            print!("{}", report::table(std::slice::from_ref(&report)));
            print_reset_reasons(&report);
        }
        LoadCommand::Bench(args) => {
            let server_bin = match args.server_bin {
                Some(bin) => bin,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("xds-server"),
            };
            let work_dir = args.work_dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!("xds-bench-{}", std::process::id()))
            });
            let protocols = match (args.sotw, args.delta) {
                (true, false) => vec![false],
                (false, true) => vec![true],
                _ => vec![false, true],
            };
            let opts = BenchOptions {
                spec: MeshSpec {
                    services: args.size.services,
                    namespaces: args.size.namespaces,
                    workloads: args.proxies,
                    legacy_workloads: args.size.legacy,
                    seed: args.size.seed,
                },
                proxies: args.proxies,
                protocols,
                server_bin,
                work_dir: work_dir.clone(),
                server_args: args.server_args,
                mesh_changes: args.timing.mesh_changes,
                namespace_changes: args.timing.namespace_changes,
                sync_timeout: args.timing.sync_timeout,
                quiet: args.timing.quiet,
                change_timeout: args.timing.change_timeout,
                connect_timeout: args.timing.connect_timeout,
            };
            let runs = bench(&opts).await?;
            println!(
                "xds-load bench: {} services in {} namespaces, {} sidecars (+{} without), seed {}; work dir {}",
                opts.spec.services,
                opts.spec.namespaces,
                opts.proxies,
                opts.spec.legacy_workloads,
                opts.spec.seed,
                work_dir.display()
            );
            for r in &runs {
                println!(
                    "  {}: load average {} at start; server log {}",
                    if r.report.delta { "delta" } else { "SotW" },
                    r.load_average
                        .map(|l| format!("{l:.2}"))
                        .unwrap_or_else(|| "?".into()),
                    r.server_log.display()
                );
            }
            let reports: Vec<_> = runs.into_iter().map(|r| r.report).collect();
            print!("{}", report::table(&reports));
            for r in &reports {
                print_reset_reasons(r);
            }
        }
    }
    Ok(())
}
