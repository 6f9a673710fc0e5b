//! The article's four stages on real Envoy: every cell of every matrix, and
//! a policy added then deleted in a running mesh with no Envoy restarted.

use e2e::ScratchDir;
use e2e::mesh::{
    STAGE0, STAGE1, STAGE2, STAGE3, article_matrix, assert_matrix, assert_no_envoy_restarted,
    options, record_envoys, start,
};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

async fn stage(test: &str, extra: Option<&str>, expected: [[&str; 3]; 3]) {
    let scratch = ScratchDir::new(test).expect("scratch dir");
    let mut paths = vec![PathBuf::from("examples/article/base")];
    if let Some(e) = extra {
        paths.push(PathBuf::from(e));
    }
    let Some(opts) = options(test, &paths, scratch.path().to_path_buf()) else {
        return;
    };
    let mesh = start(opts).await;
    let rows = article_matrix(&mesh).await;
    mesh.stop().await;
    assert_matrix(&rows, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_0_default_is_permissive_with_auto_mtls() {
    stage("stage_0_default_is_permissive_with_auto_mtls", None, STAGE0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_1_mesh_strict_resets_legacy_clients() {
    stage(
        "stage_1_mesh_strict_resets_legacy_clients",
        Some("examples/article/mesh-strict"),
        STAGE1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_2_namespace_strict_resets_legacy_to_foo_only() {
    stage(
        "stage_2_namespace_strict_resets_legacy_to_foo_only",
        Some("examples/article/namespace-strict"),
        STAGE2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_3_workload_strict_resets_legacy_to_bar_only() {
    stage(
        "stage_3_workload_strict_resets_legacy_to_bar_only",
        Some("examples/article/workload-strict"),
        STAGE3,
    )
    .await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_then_deleting_a_policy_changes_the_matrix_and_back_without_restarting_envoy() {
    let scratch = ScratchDir::new("live-change").expect("scratch dir");
    let config = scratch.path().join("config");
    copy_dir(
        &e2e::workspace_root().join("examples/article/base"),
        &config,
    );
    let Some(opts) = options(
        "adding_then_deleting_a_policy_changes_the_matrix_and_back_without_restarting_envoy",
        std::slice::from_ref(&config),
        scratch.path().join("work"),
    ) else {
        return;
    };
    let mut mesh = start(opts).await;
    assert_matrix(&article_matrix(&mesh).await, STAGE0);
    let conns_before: Vec<u64> = mesh
        .server
        .registry
        .snapshot()
        .iter()
        .map(|c| c.id)
        .collect();
    let envoys = record_envoys(&mesh).await;
    assert_eq!(envoys.len(), 4, "four sidecars");

    let wait_for_new_config = |mesh: &xds_server::runner::mesh::LocalMesh, generation: u64| {
        let snapshots = mesh.server.snapshots.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while snapshots.generation() == generation {
                assert!(Instant::now() < deadline, "config change was not picked up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let policy = config.join("mesh-strict.yaml");
    let g = mesh.server.snapshots.generation();
    std::fs::copy(
        e2e::workspace_root().join("examples/article/mesh-strict/peer-authentication.yaml"),
        &policy,
    )
    .expect("add policy");
    wait_for_new_config(&mesh, g).await;
    mesh.converge(e2e::mesh::CONVERGE)
        .await
        .expect("converges after adding");
    assert_matrix(&article_matrix(&mesh).await, STAGE1);

    let g = mesh.server.snapshots.generation();
    std::fs::remove_file(&policy).expect("delete policy");
    wait_for_new_config(&mesh, g).await;
    mesh.converge(e2e::mesh::CONVERGE)
        .await
        .expect("converges after deleting");
    assert_matrix(&article_matrix(&mesh).await, STAGE0);

    // Same Envoys: same xDS connections, same processes, up all along.
    let conns_after: Vec<u64> = mesh
        .server
        .registry
        .snapshot()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(conns_before, conns_after, "no sidecar reconnected");
    assert_no_envoy_restarted(&mut mesh, &envoys).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rule_disable_towards_strict_server_fails_with_503_and_a_reason() {
    let scratch = ScratchDir::new("dr-conflict").expect("scratch dir");
    let config = scratch.path().join("config");
    copy_dir(
        &e2e::workspace_root().join("examples/article/base"),
        &config,
    );
    std::fs::write(
        config.join("conflict.yaml"),
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bad-rule, namespace: foo}
spec:
  host: httpbin.foo.svc.cluster.local
  trafficPolicy: {tls: {mode: DISABLE}}
",
    )
    .expect("write policy");
    let Some(opts) = options(
        "destination_rule_disable_towards_strict_server_fails_with_503_and_a_reason",
        std::slice::from_ref(&config),
        scratch.path().join("work"),
    ) else {
        return;
    };
    let mesh = start(opts).await;
    let rows = article_matrix(&mesh).await;
    mesh.stop().await;
    let cell = |from: &str, to: &str| {
        rows.iter()
            .find(|r| r.from == from && r.to == to)
            .cloned()
            .expect("probed")
    };
    // The client sidecar sends plaintext to a TLS-only port: Envoy's 503.
    let bad = cell("sleep.foo", "httpbin.foo:8000");
    assert_eq!(bad.cell(), "503", "{bad:?}");
    let reason = bad.reason.unwrap_or_default();
    assert!(
        reason.contains("DestinationRule foo/bad-rule") && reason.contains("accepts only mTLS"),
        "{reason}"
    );
    // The rule lives in the service's namespace, so clients in bar find it
    // too (client namespace, then service namespace, then root).
    assert_eq!(cell("sleep.bar", "httpbin.foo:8000").cell(), "503");
    assert_eq!(cell("sleep.foo", "httpbin.bar:8000").cell(), "200 mTLS");
    assert_eq!(cell("sleep.legacy", "httpbin.foo:8000").cell(), "reset");
}
