//! Starting the local mesh for a test, proving its Envoys were never
//! restarted, and the article's expectations.

use crate::{require_envoy, workspace_root};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use xds_server::runner::mesh::{LocalMesh, MeshOptions, ProbeRow};

pub const CONVERGE: Duration = Duration::from_secs(60);

/// Options for a mesh over `paths` (relative to the workspace root unless
/// absolute), or `None` when the test is skipped (Envoy missing and
/// `XDS_SKIP_ENVOY=1`, see [`require_envoy`]); the test must then return.
pub fn options(test: &str, paths: &[PathBuf], work_dir: PathBuf) -> Option<MeshOptions> {
    let envoy = require_envoy(test)?;
    Some(MeshOptions {
        paths: paths
            .iter()
            .map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    workspace_root().join(p)
                }
            })
            .collect(),
        work_dir,
        delta: false,
        envoy_log_level: "warn".into(),
        mesh: Default::default(),
        cert_lifetime: Duration::from_secs(24 * 3600),
        test_hooks: true,
        envoy_bin: Some(envoy),
        capture: None,
    })
}

pub async fn start(opts: MeshOptions) -> LocalMesh {
    let mut mesh = LocalMesh::start(opts).await.expect("local mesh starts");
    mesh.converge(CONVERGE).await.expect("mesh converges");
    mesh
}

/// One Envoy as first seen: its process, when that was spawned, and the
/// uptime Envoy reported at `EnvoysSeen::at`.
#[derive(Clone, Copy, Debug)]
struct SeenEnvoy {
    pid: u32,
    spawned: std::time::Instant,
    uptime: u64,
}

/// The mesh's Envoys at one moment, to prove later that none was
/// restarted: see [`assert_no_envoy_restarted`].
#[derive(Debug)]
pub struct EnvoysSeen {
    /// Taken after every uptime below was answered.
    at: std::time::Instant,
    envoys: BTreeMap<String, SeenEnvoy>,
}

impl EnvoysSeen {
    pub fn len(&self) -> usize {
        self.envoys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.envoys.is_empty()
    }
}

/// Records each Envoy's process id, spawn time and reported uptime.
pub async fn record_envoys(mesh: &LocalMesh) -> EnvoysSeen {
    let processes = mesh.envoy_processes();
    let uptimes = mesh.envoy_uptimes().await;
    let at = std::time::Instant::now();
    assert_eq!(
        processes.keys().collect::<Vec<_>>(),
        uptimes.keys().collect::<Vec<_>>(),
        "every running Envoy reports its uptime"
    );
    let envoys = processes
        .into_iter()
        .map(|(proxy, (pid, spawned))| {
            let uptime = uptimes[&proxy];
            (
                proxy,
                SeenEnvoy {
                    pid,
                    spawned,
                    uptime,
                },
            )
        })
        .collect();
    EnvoysSeen { at, envoys }
}

/// Asserts that every Envoy in `seen` is the same process, still running,
/// and has been up without a break since: its reported uptime grew by at
/// least the time that passed, less 1 s (Envoy counts whole seconds), and is
/// no longer than the time since the mesh spawned it, plus 1 s.
///
/// The lower bound is measured from `seen` rather than from the spawn:
/// Envoy starts its clock only once its server is constructed, some time
/// after the spawn, so "elapsed since spawn minus 1 s" would fail now and
/// then for an Envoy that never restarted.
pub async fn assert_no_envoy_restarted(mesh: &mut LocalMesh, seen: &EnvoysSeen) {
    let exited = mesh.exited_envoys().await;
    assert!(exited.is_empty(), "Envoy processes exited: {exited:#?}");
    let pids_now: BTreeMap<String, u32> = mesh
        .envoy_processes()
        .into_iter()
        .map(|(proxy, (pid, _))| (proxy, pid))
        .collect();
    let pids_seen: BTreeMap<String, u32> = seen
        .envoys
        .iter()
        .map(|(proxy, e)| (proxy.clone(), e.pid))
        .collect();
    assert_eq!(
        pids_now, pids_seen,
        "the same Envoy processes run for the same sidecars"
    );
    // Measured before asking, so Envoy's clock has run at least this long.
    let elapsed = seen.at.elapsed().as_secs_f64();
    let uptimes = mesh.envoy_uptimes().await;
    for (proxy, before) in &seen.envoys {
        let Some(&now) = uptimes.get(proxy) else {
            panic!("{proxy}: no uptime from its admin API");
        };
        let since_spawn = before.spawned.elapsed().as_secs_f64();
        assert!(
            now as f64 >= before.uptime as f64 + elapsed - 1.0,
            "{proxy}: uptime was {}s and is {now}s {elapsed:.1}s later: \
             Envoy (pid {}) restarted",
            before.uptime,
            before.pid
        );
        assert!(
            (now as f64) < since_spawn + 1.0,
            "{proxy}: uptime {now}s, but its process was spawned {since_spawn:.1}s ago: \
             this is not the Envoy the mesh started"
        );
    }
}

/// Runs a mesh over `paths` with `up --capture iptables`'s pods (network
/// namespaces, iptables capture, curl probes), probes it once (`from`,
/// `to` as `up` takes them) and stops it; `None` when the test is skipped
/// (no root or no Envoy, opted out; see `require_root`, `require_envoy`).
pub fn captured_matrix(
    test: &str,
    paths: &[PathBuf],
    from: &str,
    to: &str,
) -> Option<Vec<ProbeRow>> {
    if !crate::require_root(test) {
        return None;
    }
    let scratch = crate::ScratchDir::new(test).expect("scratch dir");
    let mut opts = options(test, paths, scratch.path().to_path_buf())?;
    let node = xds_server::runner::pods::Node::create().expect("node namespace");
    opts.capture = Some(std::sync::Arc::clone(&node));
    let (from, to) = (from.to_string(), to.to_string());
    let rows = node
        .run(move || async move {
            let mut mesh = LocalMesh::start(opts).await?;
            let rows = match mesh.converge(CONVERGE).await {
                Ok(()) => mesh.probe_matrix(Some(&from), Some(&to)).await,
                Err(e) => Err(e),
            };
            mesh.stop().await;
            rows
        })
        .expect("the node's runtime")
        .expect("the captured mesh converges and is probed");
    Some(rows)
}

/// sleep -> httpbin, the article's nine probes.
pub async fn article_matrix(mesh: &LocalMesh) -> Vec<ProbeRow> {
    mesh.probe_matrix(Some("app=sleep"), Some("app=httpbin"))
        .await
        .expect("probes run")
}

/// Expected cells: rows sleep.{foo,bar,legacy}, columns httpbin.{foo,bar,legacy}.
pub fn assert_matrix(rows: &[ProbeRow], expected: [[&str; 3]; 3]) {
    let nss = ["foo", "bar", "legacy"];
    let mut failures = Vec::new();
    for (i, from) in nss.iter().enumerate() {
        for (j, to) in nss.iter().enumerate() {
            let f = format!("sleep.{from}");
            let t = format!("httpbin.{to}:8000");
            let got = rows
                .iter()
                .find(|r| r.from == f && r.to == t)
                .map(ProbeRow::cell)
                .unwrap_or_else(|| "missing".into());
            if got != expected[i][j] {
                failures.push(format!(
                    "{f} -> {t}: got {got:?}, want {:?}",
                    expected[i][j]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "matrix differs:\n{}\n{}",
        failures.join("\n"),
        xds_server::runner::mesh::render_matrix(rows)
    );
    assert_eq!(rows.len(), 9, "exactly the nine article probes");
}

pub const STAGE0: [[&str; 3]; 3] = [
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 plain", "200 plain", "200 plain"],
];
pub const STAGE1: [[&str; 3]; 3] = [
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["reset", "reset", "200 plain"],
];
pub const STAGE2: [[&str; 3]; 3] = [
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["reset", "200 plain", "200 plain"],
];
pub const STAGE3: [[&str; 3]; 3] = [
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 mTLS", "200 mTLS", "200 plain"],
    ["200 plain", "reset", "200 plain"],
];
