//! Every listener, cluster, route and endpoint set of the golden cases is
//! accepted by a real Envoy: `envoy --mode validate` on a bootstrap holding
//! them as static resources. Envoy is found through ENVOY_BIN, PATH, or the
//! project's `.venv` (scripts/install-envoy.sh); under CI a missing Envoy is
//! a failure, never a skip.

mod support;

use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use support::{case_dirs, load_case, render_json, repo_root};

fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("envoy");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let venv = repo_root().join(".venv/bin/envoy");
    venv.is_file().then_some(venv)
}

fn strip_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("@type");
    }
    v
}

/// A bootstrap whose static resources are this proxy's resources. Routes
/// (normally RDS) go inline into a check listener, endpoints (normally
/// EDS) into STATIC check clusters, so Envoy validates them too.
fn bootstrap(node_id: &str, rendered: &Value) -> Value {
    let list = |k: &str| rendered[k].as_array().cloned().unwrap_or_default();
    let mut listeners: Vec<Value> = list("listeners").into_iter().map(strip_type).collect();
    let mut clusters: Vec<Value> = list("clusters").into_iter().map(strip_type).collect();
    for (i, route) in list("routes").into_iter().enumerate() {
        listeners.push(json!({
            "name": format!("route-check-{i}"),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "check",
                    "route_config": strip_type(route),
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }));
    }
    for (i, cla) in list("endpoints").into_iter().enumerate() {
        let name = format!("eds-check-{i}");
        let mut cla = strip_type(cla);
        cla["cluster_name"] = json!(name);
        clusters.push(json!({"name": name, "type": "STATIC", "load_assignment": cla}));
    }
    clusters.push(json!({
        "name": "xds-grpc",
        "type": "STATIC",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}]}
    }));
    json!({
        "node": {"id": node_id, "cluster": "validate"},
        "dynamic_resources": {"ads_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

#[test]
fn envoy_accepts_every_golden_resource() {
    let Some(envoy) = find_envoy() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "envoy not found (ENVOY_BIN, PATH, .venv/bin/envoy); run scripts/install-envoy.sh"
        );
        eprintln!("note: envoy not found; run scripts/install-envoy.sh to validate against Envoy");
        return;
    };
    let dir = std::env::temp_dir().join(format!("xds-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in case_dirs() {
        let mesh = load_case(&case);
        let t = translator::translate(&mesh);
        for ((ns, pod), plan) in &t.proxies {
            let node = format!("sidecar~{}~{pod}.{ns}~{ns}.svc.cluster.local", plan.ip);
            let path = dir.join(format!("{pod}.{ns}.json"));
            std::fs::write(&path, bootstrap(&node, &render_json(plan)).to_string())
                .expect("write bootstrap");
            let out = Command::new(&envoy)
                .args([
                    "--mode",
                    "validate",
                    "--disable-hot-restart",
                    "--log-level",
                    "error",
                    "-c",
                ])
                .arg(&path)
                .output()
                .expect("run envoy");
            if !out.status.success() {
                failures.push(format!(
                    "{} {pod}.{ns}: {}{}",
                    case.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            checked += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(checked > 0, "no proxies were validated");
    assert!(
        failures.is_empty(),
        "Envoy rejected:\n{}",
        failures.join("\n")
    );
}
