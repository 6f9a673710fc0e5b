//! The ADS server against real Envoy: every listener and cluster active with
//! no NACK over state of the world and delta, our config_dump agrees with
//! Envoy's, an invalid resource is NACKed while Envoy keeps serving, and a
//! short-lived certificate is rotated with no failed request.

use e2e::ScratchDir;
use e2e::mesh::{CONVERGE, assert_no_envoy_restarted, options, record_envoys, start};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use translator::ResourceType;
use xds_server::ads::SyncState;
use xds_server::runner::mesh::LocalMesh;
use xds_server::runner::probe::{Outcome, probe, xfcc_uri};

async fn debug_get(mesh: &LocalMesh, path: &str) -> Value {
    let r = probe(
        mesh.server.debug_addr,
        "debug",
        path,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Status(200), "GET {path}: {}", r.body);
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", r.body))
}

fn node_of(mesh: &LocalMesh, pod: &str, ns: &str) -> String {
    mesh.node_ids()
        .into_iter()
        .find(|n| n.contains(&format!("~{pod}.{ns}~")))
        .expect("node exists")
}

/// Names in an Envoy-shaped config_dump, by section.
fn names(dump: &Value, section: &str, pick: &dyn Fn(&Value) -> Option<String>) -> BTreeSet<String> {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.get(section))
        .flat_map(|s| s.as_array().cloned().unwrap_or_default())
        .filter_map(|e| pick(&e))
        .collect()
}

fn listener_name(e: &Value) -> Option<String> {
    e["name"].as_str().map(str::to_string)
}

fn cluster_name(e: &Value) -> Option<String> {
    e["cluster"]["name"].as_str().map(str::to_string)
}

async fn all_active_no_nack(test: &str, delta: bool) {
    let scratch = ScratchDir::new(test).expect("scratch");
    let paths = [
        PathBuf::from("examples/article/base"),
        PathBuf::from("examples/article/workload-strict"),
    ];
    let Some(mut opts) = options(test, &paths, scratch.path().to_path_buf()) else {
        return;
    };
    opts.delta = delta;
    let mesh = start(opts).await;
    for (ns, pod) in [
        ("foo", "sleep-0"),
        ("foo", "httpbin-0"),
        ("bar", "sleep-0"),
        ("bar", "httpbin-0"),
    ] {
        let admin = mesh.admin(ns, pod).expect("sidecar");
        let dump = admin.config_dump().await.expect("envoy config_dump");
        // Every dynamic listener is active, none warming.
        let mut active = BTreeSet::new();
        for c in dump["configs"].as_array().into_iter().flatten() {
            for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
                assert!(
                    l.get("warming_state").is_none(),
                    "{pod}.{ns}: listener warming: {l}"
                );
                assert!(
                    l.get("error_state").is_none(),
                    "{pod}.{ns}: listener error: {l}"
                );
                assert!(
                    l.get("active_state").is_some(),
                    "{pod}.{ns}: listener not active: {l}"
                );
                active.insert(l["name"].as_str().unwrap_or_default().to_string());
            }
            let warming = c["dynamic_warming_clusters"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0);
            assert_eq!(warming, 0, "{pod}.{ns}: clusters warming: {c}");
        }
        assert!(
            active.len() >= 2,
            "{pod}.{ns}: inbound and outbound listeners: {active:?}"
        );
        for stat in [
            "listener_manager.lds.update_rejected",
            "cluster_manager.cds.update_rejected",
        ] {
            assert_eq!(
                admin.stat(stat).await.expect("stats"),
                Some(0),
                "{pod}.{ns} {stat}"
            );
        }
        // Our view of what was sent lists the same listeners and clusters.
        let node = node_of(&mesh, pod, ns);
        let ours = debug_get(&mesh, &format!("/debug/config_dump?proxy={node}")).await;
        assert_eq!(
            names(&ours, "dynamic_listeners", &listener_name),
            active,
            "{pod}.{ns} listeners"
        );
        assert_eq!(
            names(&ours, "dynamic_active_clusters", &cluster_name),
            names(&dump, "dynamic_active_clusters", &cluster_name),
            "{pod}.{ns} clusters"
        );
    }
    // Which policy is in force where, and what clients send.
    let mtlsz = debug_get(&mesh, "/debug/mtlsz").await;
    let server = mtlsz["server"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["namespace"] == "bar" && p["workload"] == "httpbin-0" && p["port"] == 80
            })
        })
        .cloned()
        .expect("bar/httpbin-0:80 in mtlsz");
    assert_eq!(server["mode"], "STRICT", "{server}");
    assert_eq!(server["scope"], "workload", "{server}");
    assert_eq!(server["by"]["name"], "httpbin", "{server}");
    let client = mtlsz["client"]
        .as_array()
        .and_then(|cs| {
            cs.iter().find(|c| {
                c["client_namespace"] == "foo" && c["service"] == "httpbin.bar.svc.cluster.local"
            })
        })
        .cloned()
        .expect("foo -> httpbin.bar in mtlsz");
    assert_eq!(client["tls"], "ISTIO_MUTUAL", "{client}");
    assert_eq!(client["by"]["kind"], "DestinationRule", "{client}");
    let metrics = probe(
        mesh.server.debug_addr,
        "debug",
        "/metrics",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        metrics.body.contains("xds_connected_proxies 4"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("xds_certificates_issued_total 4"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("xds_workload_certificates 4"),
        "{}",
        metrics.body
    );
    let remaining: u64 = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("xds_root_ca_remaining_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("xds_root_ca_remaining_seconds in /metrics");
    assert!(remaining > 9 * 365 * 86_400, "root has {remaining}s left");
    let ca = debug_get(&mesh, "/debug/ca").await;
    // Read a moment after /metrics: the same expiry, a little less left.
    let left = ca["root"]["remaining_seconds"].as_u64().expect("remaining");
    assert!(
        left <= remaining && remaining - left < 60,
        "{left} vs {remaining}"
    );
    let ids: BTreeSet<&str> = ca["workload_certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .filter_map(|c| c["spiffe_id"].as_str())
        .collect();
    let expected: BTreeSet<&str> = [
        "spiffe://cluster.local/ns/bar/sa/httpbin",
        "spiffe://cluster.local/ns/bar/sa/sleep",
        "spiffe://cluster.local/ns/foo/sa/httpbin",
        "spiffe://cluster.local/ns/foo/sa/sleep",
    ]
    .into();
    assert_eq!(ids, expected, "{ca}");
    let ready = probe(
        mesh.server.debug_addr,
        "debug",
        "/readyz",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ready.outcome, Outcome::Status(200));

    let syncz = debug_get(&mesh, "/debug/syncz").await;
    for p in syncz["proxies"].as_array().expect("proxies") {
        assert_eq!(p["status"], "SYNCED", "{p}");
        assert_eq!(p["delta"], delta, "{p}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_every_listener_and_cluster_active_without_nack() {
    all_active_no_nack("sotw_every_listener_and_cluster_active_without_nack", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_every_listener_and_cluster_active_without_nack() {
    all_active_no_nack("delta_every_listener_and_cluster_active_without_nack", true).await;
}

async fn invalid_resource_is_nacked(test: &str, delta: bool) {
    let scratch = ScratchDir::new(test).expect("scratch");
    let Some(mut opts) = options(
        test,
        &[PathBuf::from("examples/article/base")],
        scratch.path().to_path_buf(),
    ) else {
        return;
    };
    opts.delta = delta;
    let mut mesh = start(opts).await;
    let envoys = record_envoys(&mesh).await;
    let node = node_of(&mesh, "sleep-0", "foo");
    let proxy = xds_server::identity::NodeId::parse(&node)
        .expect("node id")
        .proxy_id();
    let admin = mesh.admin("foo", "sleep-0").expect("sidecar").clone();
    mesh.server
        .snapshots
        .inject(proxy.clone(), xds_server::debug::invalid_listener());

    // The NACK shows in the registry and /debug/syncz.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = mesh.server.registry.sync_state(&proxy).unwrap_or_default();
        if state.get(&ResourceType::Listener) == Some(&SyncState::Nacked) {
            break;
        }
        assert!(Instant::now() < deadline, "no NACK recorded: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let syncz = debug_get(&mesh, "/debug/syncz").await;
    let row = syncz["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_id"] == node.as_str()))
        .expect("proxy in syncz")
        .clone();
    assert_eq!(row["types"]["LDS"]["status"], "NACKED", "{row}");
    let err = row["types"]["LDS"]["last_nack"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        err.contains("not-an-ip") || err.contains("malformed"),
        "NACK error from Envoy: {err}"
    );
    assert!(
        admin
            .stat("listener_manager.lds.update_rejected")
            .await
            .expect("stat")
            .unwrap_or(0)
            >= 1
    );

    // Envoy keeps serving its last accepted config.
    let rows = mesh
        .probe_matrix(Some("app=sleep"), Some("app=httpbin"))
        .await
        .expect("probe");
    let cell = rows
        .iter()
        .find(|r| r.from == "sleep.foo" && r.to == "httpbin.bar:8000")
        .map(|r| r.cell());
    assert_eq!(cell.as_deref(), Some("200 mTLS"));
    assert_no_envoy_restarted(&mut mesh, &envoys).await;

    // Removing the bad resource heals the proxy.
    mesh.server.snapshots.clear_injected();
    mesh.converge(CONVERGE)
        .await
        .expect("converges once the bad listener is gone");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_invalid_resource_is_nacked_and_envoy_keeps_serving() {
    invalid_resource_is_nacked(
        "sotw_invalid_resource_is_nacked_and_envoy_keeps_serving",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_invalid_resource_is_nacked_and_envoy_keeps_serving() {
    invalid_resource_is_nacked(
        "delta_invalid_resource_is_nacked_and_envoy_keeps_serving",
        true,
    )
    .await;
}

/// Serials of the workload certificates Envoy holds from SDS. The bootstrap
/// client certificate of the xDS connection is read from a file (its
/// `path` is that file) and is not rotated by SDS, so it is left out.
fn cert_serials(certs: &Value) -> BTreeSet<String> {
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter(|c| !c["path"].as_str().is_some_and(|p| p.ends_with(".pem")))
        .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_is_rotated_without_a_failed_request() {
    let scratch = ScratchDir::new("rotation").expect("scratch");
    let Some(mut opts) = options(
        "short_lived_certificate_is_rotated_without_a_failed_request",
        &[PathBuf::from("examples/article/base")],
        scratch.path().to_path_buf(),
    ) else {
        return;
    };
    opts.cert_lifetime = Duration::from_secs(4);
    let mut mesh = start(opts).await;
    let envoys = record_envoys(&mesh).await;
    let admin = mesh.admin("foo", "sleep-0").expect("sidecar").clone();
    let before = cert_serials(&admin.certs().await.expect("certs"));
    assert!(!before.is_empty(), "Envoy holds a workload certificate");
    let state = mesh.server.snapshots.state().expect("state");
    let (_, sleep) = state.mesh.workload("foo", "sleep-0").expect("sleep");
    let outbound = std::net::SocketAddr::new(sleep.ip, 15001);
    let spiffe = "spiffe://cluster.local/ns/foo/sa/sleep";

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut requests = 0;
    loop {
        let r = probe(
            outbound,
            "httpbin.bar:8000",
            "/headers",
            Duration::from_secs(5),
        )
        .await;
        requests += 1;
        assert_eq!(
            r.outcome,
            Outcome::Status(200),
            "request {requests} failed during rotation"
        );
        assert_eq!(
            r.xfcc.as_deref().and_then(xfcc_uri),
            Some(spiffe),
            "request {requests} not mTLS"
        );
        let now = cert_serials(&admin.certs().await.expect("certs"));
        if !now.is_empty() && now.is_disjoint(&before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "certificate was not rotated: still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(requests > 1);
    assert_no_envoy_restarted(&mut mesh, &envoys).await;
    // A couple more requests on the new certificate.
    for _ in 0..3 {
        let r = probe(
            outbound,
            "httpbin.bar:8000",
            "/headers",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r.outcome, Outcome::Status(200));
    }
    mesh.stop().await;
}
