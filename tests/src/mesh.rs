//! Starting the local mesh for a test, and the article's expectations.

use crate::{envoy_or_skip, workspace_root};
use std::path::PathBuf;
use std::time::Duration;
use xds_server::runner::mesh::{LocalMesh, MeshOptions, ProbeRow};

pub const CONVERGE: Duration = Duration::from_secs(60);

/// Options for a mesh over `paths` (relative to the workspace root unless
/// absolute), or `None` when Envoy is missing outside CI.
pub fn options(test: &str, paths: &[PathBuf], work_dir: PathBuf) -> Option<MeshOptions> {
    let envoy = envoy_or_skip(test)?;
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
    })
}

pub async fn start(opts: MeshOptions) -> LocalMesh {
    let mut mesh = LocalMesh::start(opts).await.expect("local mesh starts");
    mesh.converge(CONVERGE).await.expect("mesh converges");
    mesh
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
