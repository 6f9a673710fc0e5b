//! A Sidecar on real Envoy: `sleep` in foo is scoped to its own namespace
//! (`./*`). Its Envoy's own config_dump (admin API) then holds clusters and
//! load assignments for foo's services only, it still reaches httpbin.foo
//! with mTLS, and httpbin.bar has no cluster or route there (Envoy answers
//! 404 from the outbound listener). sleep in bar, with no Sidecar, keeps
//! every service: the scope is per workload, not global.

use e2e::ScratchDir;
use e2e::mesh::{article_matrix, options, start};
use std::time::Duration;
use tokio::time::Instant;
use xds_server::runner::mesh::LocalMesh;

const SIDECAR: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep-only-foo, namespace: foo}
spec:
  workloadSelector:
    labels: {app: sleep}
  egress:
  - hosts: [\"./*\"]
";

/// The outbound cluster names in one Envoy's config_dump of `section`
/// (`dynamic_active_clusters` or `dynamic_endpoint_configs`).
async fn outbound_names(mesh: &LocalMesh, ns: &str, pod: &str, resource: &str) -> Vec<String> {
    let admin = mesh
        .admin(ns, pod)
        .unwrap_or_else(|| panic!("an Envoy for {pod}.{ns}"));
    let (status, body) = admin
        .get(&format!("/config_dump?resource={resource}&include_eds"))
        .await
        .expect("config_dump answers");
    assert_eq!(status, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
    let mut names: Vec<String> = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c.pointer("/cluster/name")
                .or_else(|| c.pointer("/endpoint_config/cluster_name"))
                .and_then(|n| n.as_str())
        })
        .filter(|n| n.starts_with("outbound|"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_sidecar_gets_only_its_namespaces_clusters_and_reaches_only_those() {
    let test = "a_scoped_sidecar_gets_only_its_namespaces_clusters_and_reaches_only_those";
    let scratch = ScratchDir::new("sidecar-scope").expect("scratch dir");
    let config = scratch.path().join("config");
    std::fs::create_dir_all(&config).expect("mkdir");
    let base = e2e::workspace_root().join("examples/article/base");
    for e in std::fs::read_dir(&base).expect("read base").flatten() {
        std::fs::copy(e.path(), config.join(e.file_name())).expect("copy");
    }
    std::fs::write(config.join("sidecar.yaml"), SIDECAR).expect("write Sidecar");
    let Some(opts) = options(
        test,
        std::slice::from_ref(&config),
        scratch.path().join("work"),
    ) else {
        return;
    };
    let mesh = start(opts).await;

    // The mesh converged (every Envoy ACKed), but poll the admin API with a
    // deadline anyway: the dump is Envoy's view, which follows the ACK.
    // Sorted as strings.
    let want = [
        "outbound|8000||httpbin.foo.svc.cluster.local",
        "outbound|80||sleep.foo.svc.cluster.local",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (clusters, endpoints) = loop {
        let c = outbound_names(&mesh, "foo", "sleep-0", "dynamic_active_clusters").await;
        let e = outbound_names(&mesh, "foo", "sleep-0", "dynamic_endpoint_configs").await;
        if (c == want && e == want) || Instant::now() >= deadline {
            break (c, e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(clusters, want, "sleep.foo's clusters");
    assert_eq!(endpoints, want, "sleep.foo's load assignments");

    // Unscoped: sleep in bar still has every service, httpbin.bar included.
    let bar = outbound_names(&mesh, "bar", "sleep-0", "dynamic_active_clusters").await;
    assert!(
        bar.contains(&"outbound|8000||httpbin.bar.svc.cluster.local".to_string())
            && bar.len() > want.len(),
        "sleep.bar keeps every cluster: {bar:?}"
    );

    let rows = article_matrix(&mesh).await;
    mesh.stop().await;
    let cell = |from: &str, to: &str| {
        rows.iter()
            .find(|r| r.from == from && r.to == to)
            .map(|r| r.cell())
            .unwrap_or_else(|| panic!("no probe {from} -> {to}: {rows:?}"))
    };
    assert_eq!(cell("sleep.foo", "httpbin.foo:8000"), "200 mTLS");
    // Out of scope: no virtual host on the outbound listener.
    assert_eq!(cell("sleep.foo", "httpbin.bar:8000"), "404");
    assert_eq!(cell("sleep.foo", "httpbin.legacy:8000"), "404");
    assert_eq!(cell("sleep.bar", "httpbin.bar:8000"), "200 mTLS");
}
