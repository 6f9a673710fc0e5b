//! `xds-server up`: the local mesh on this machine, its matrix printed
//! after convergence and again on every change, until Ctrl-C (or once).
//! With `--capture iptables` the whole run happens on a runtime inside the
//! node namespace ([`Node::run`]); every namespace, link, rule and process
//! it made is removed when it ends, however it ends, and what a killed run
//! left is removed first.

use super::mesh::{LocalMesh, MeshOptions, ProbeRow, render_matrix};
use super::pods::Node;
use crate::cli::UpArgs;
use crate::view::ConfigSource;
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::time::Instant;

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
    if args.capture.is_some() && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: --capture iptables needs root (it creates network namespaces, veth links and \
             iptables rules); run it as root, or leave out --capture for the explicit-bind layout"
        );
        return Ok(ExitCode::from(2));
    }
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("xds-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    if args.verbose || crate::logging::requested() {
        crate::logging::to_stderr("info");
    } else {
        let log = work_dir.join("xds-server.log");
        crate::logging::to_file(&log, "info")?;
        eprintln!("control plane logs: {} (-v shows them here)", log.display());
    }
    if args.capture.is_none() {
        return up_in(args, work_dir, None).await;
    }
    tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        let removed = super::netns::remove_stale()?;
        if removed > 0 {
            eprintln!("removed {removed} network namespace(s) a killed earlier run left behind");
        }
        let node = Node::create()?;
        let inner = Arc::clone(&node);
        node.run(move || up_in(args, work_dir, Some(inner)))?
    })
    .await
    .context("the capture runner's thread")?
}

async fn up_in(
    args: UpArgs,
    work_dir: PathBuf,
    capture: Option<Arc<Node>>,
) -> anyhow::Result<ExitCode> {
    let cleanup = args.work_dir.is_none();
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
        capture,
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
