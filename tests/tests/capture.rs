//! `up --capture iptables` on this machine: every workload a pod in its own
//! network namespace, sidecars with Istio's iptables capture and the
//! REDIRECT layout, Envoy as uid 1337, the article's curl inside the
//! client's pod. The article's four stages give the same 36 cells as the
//! explicit-bind layout; a TCP service and a port no Service targets follow
//! STRICT, PERMISSIVE and DISABLE. Needs root and Envoy (`require_root`,
//! `require_envoy`).

use e2e::mesh::{STAGE0, STAGE1, STAGE2, STAGE3, assert_matrix, captured_matrix};
use std::path::PathBuf;
use xds_server::runner::mesh::{ProbeRow, render_matrix};

fn article(test: &str, stage: Option<&str>, expected: [[&str; 3]; 3]) {
    let mut paths = vec![PathBuf::from("examples/article/base")];
    paths.extend(stage.map(PathBuf::from));
    let Some(rows) = captured_matrix(test, &paths, "app=sleep", "app=httpbin") else {
        return;
    };
    assert_matrix(&rows, expected);
}

#[test]
fn captured_stage_0_default_is_permissive_with_auto_mtls() {
    article(
        "captured_stage_0_default_is_permissive_with_auto_mtls",
        None,
        STAGE0,
    );
}

#[test]
fn captured_stage_1_mesh_strict_resets_legacy_clients() {
    article(
        "captured_stage_1_mesh_strict_resets_legacy_clients",
        Some("examples/article/mesh-strict"),
        STAGE1,
    );
}

#[test]
fn captured_stage_2_namespace_strict_resets_legacy_to_foo_only() {
    article(
        "captured_stage_2_namespace_strict_resets_legacy_to_foo_only",
        Some("examples/article/namespace-strict"),
        STAGE2,
    );
}

#[test]
fn captured_stage_3_workload_strict_resets_legacy_to_bar_only() {
    article(
        "captured_stage_3_workload_strict_resets_legacy_to_bar_only",
        Some("examples/article/workload-strict"),
        STAGE3,
    );
}

/// The cell `from -> to` of a probed matrix, `missing` if it was not probed.
fn cell(rows: &[ProbeRow], from: &str, to: &str) -> String {
    rows.iter()
        .find(|r| r.from == from && r.to == to)
        .map(ProbeRow::cell)
        .unwrap_or_else(|| "missing".into())
}

/// sleep.{foo,legacy} -> [tcp-echo.foo:9000 (TCP Service), tcp-echo-0.foo:9100
/// (the pod's port no Service targets)].
fn tcp_and_passthrough(test: &str, stage: &str, expected: [[&str; 2]; 2]) {
    let paths = [
        PathBuf::from("examples/tcp-passthrough/base"),
        PathBuf::from(stage),
    ];
    let Some(rows) = captured_matrix(test, &paths, "app=sleep", "app=tcp-echo") else {
        return;
    };
    let cell = |from: &str, to: &str| cell(&rows, from, to);
    let got = [
        [
            cell("sleep.foo", "tcp-echo.foo:9000"),
            cell("sleep.foo", "tcp-echo-0.foo:9100"),
        ],
        [
            cell("sleep.legacy", "tcp-echo.foo:9000"),
            cell("sleep.legacy", "tcp-echo-0.foo:9100"),
        ],
    ];
    assert_eq!(got, expected, "{stage}:\n{}", render_matrix(&rows));
    assert_eq!(rows.len(), 4, "{}", render_matrix(&rows));
}

#[test]
fn captured_tcp_service_and_passthrough_port_under_strict() {
    tcp_and_passthrough(
        "captured_tcp_service_and_passthrough_port_under_strict",
        "examples/tcp-passthrough/strict",
        // A sidecar client reaches a pod port through PassthroughCluster,
        // in plaintext: STRICT closes it, as in Istio.
        [["200 mTLS", "reset"], ["reset", "reset"]],
    );
}

#[test]
fn captured_tcp_service_and_passthrough_port_under_permissive() {
    tcp_and_passthrough(
        "captured_tcp_service_and_passthrough_port_under_permissive",
        "examples/tcp-passthrough/permissive",
        [["200 mTLS", "200 plain"], ["200 plain", "200 plain"]],
    );
}

#[test]
fn captured_tcp_service_and_passthrough_port_under_disable() {
    tcp_and_passthrough(
        "captured_tcp_service_and_passthrough_port_under_disable",
        "examples/tcp-passthrough/disable",
        [["200 plain", "200 plain"], ["200 plain", "200 plain"]],
    );
}

/// A policy added and then deleted in a running captured mesh: the matrix
/// follows, over ADS only (same connections, no Envoy restarted).
#[test]
fn captured_policy_added_then_deleted_changes_the_matrix_without_restarting_envoy() {
    use e2e::mesh::{CONVERGE, article_matrix, assert_no_envoy_restarted, options, record_envoys};
    use std::time::{Duration, Instant};
    let test = "captured_policy_added_then_deleted_changes_the_matrix_without_restarting_envoy";
    if !e2e::require_root(test) {
        return;
    }
    let scratch = e2e::ScratchDir::new(test).expect("scratch dir");
    let config = scratch.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let base = e2e::workspace_root().join("examples/article/base");
    for entry in std::fs::read_dir(&base).expect("base").flatten() {
        std::fs::copy(entry.path(), config.join(entry.file_name())).expect("copy");
    }
    let Some(mut opts) = options(
        test,
        std::slice::from_ref(&config),
        scratch.path().join("work"),
    ) else {
        return;
    };
    let node = xds_server::runner::pods::Node::create().expect("node namespace");
    opts.capture = Some(std::sync::Arc::clone(&node));
    node.run(move || async move {
        let mut mesh = xds_server::runner::mesh::LocalMesh::start(opts)
            .await
            .expect("starts");
        mesh.converge(CONVERGE).await.expect("converges");
        assert_matrix(&article_matrix(&mesh).await, STAGE0);
        let conns = |mesh: &xds_server::runner::mesh::LocalMesh| -> Vec<u64> {
            mesh.server
                .registry
                .snapshot()
                .iter()
                .map(|c| c.id)
                .collect()
        };
        let before = conns(&mesh);
        let envoys = record_envoys(&mesh).await;
        let change = |mesh: &xds_server::runner::mesh::LocalMesh| {
            let snapshots = mesh.server.snapshots.clone();
            let generation = snapshots.generation();
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while snapshots.generation() == generation {
                    assert!(Instant::now() < deadline, "config change was not picked up");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let policy = config.join("mesh-strict.yaml");
        let picked_up = change(&mesh);
        std::fs::copy(
            e2e::workspace_root().join("examples/article/mesh-strict/peer-authentication.yaml"),
            &policy,
        )
        .expect("add the policy");
        picked_up.await;
        mesh.reconcile().await.expect("reconciles");
        mesh.converge(CONVERGE)
            .await
            .expect("converges after adding");
        assert_matrix(&article_matrix(&mesh).await, STAGE1);
        let picked_up = change(&mesh);
        std::fs::remove_file(&policy).expect("delete the policy");
        picked_up.await;
        mesh.converge(CONVERGE)
            .await
            .expect("converges after deleting");
        assert_matrix(&article_matrix(&mesh).await, STAGE0);
        assert_eq!(conns(&mesh), before, "no sidecar reconnected");
        assert_no_envoy_restarted(&mut mesh, &envoys).await;
        mesh.stop().await;
    })
    .expect("the node's runtime");
}

/// A pod calling its own Service is DNATed back to itself (hairpin): it
/// gets its answer as in a cluster, with and without a sidecar.
#[test]
fn captured_pods_reach_their_own_service() {
    let test = "captured_pods_reach_their_own_service";
    let paths = [
        PathBuf::from("examples/tcp-passthrough/base"),
        PathBuf::from("examples/tcp-passthrough/permissive"),
    ];
    let Some(rows) = captured_matrix(test, &paths, "app=sleep", "app=sleep") else {
        return;
    };
    let cell = |from: &str, to: &str| cell(&rows, from, to);
    assert_eq!(
        [
            cell("sleep.foo", "sleep.foo:80"),
            cell("sleep.legacy", "sleep.legacy:80"),
        ],
        ["200 mTLS", "200 plain"],
        "{}",
        render_matrix(&rows)
    );
}
