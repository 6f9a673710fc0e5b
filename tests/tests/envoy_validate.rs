//! Every listener, cluster, route and endpoint set the translator produces
//! for the golden cases (`translator/tests/golden/`), in both layouts
//! (explicit bind and iptables capture), is accepted by a real Envoy: `envoy --mode validate` on a bootstrap holding one sidecar's
//! resources as static resources. Here rather than in the translator, which
//! is the pure core and runs no processes. Without Envoy this test fails,
//! unless the run opts out (see `e2e::require_envoy`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use e2e::{ScratchDir, require_envoy, workspace_root};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use translator::model::MeshConfig;
use translator::model::build::{Addressing, mesh_from_yaml};
use translator::render::resource_to_json;
use translator::{Interception, ProxyPlan, ResourceType};
use xds_server::runner::envoy::validate_bootstrap;

const VALIDATE_WITHIN: Duration = Duration::from_secs(60);
/// Envoys validating at once.
const PARALLEL: usize = 4;

fn golden_root() -> PathBuf {
    workspace_root().join("translator/tests/golden")
}

/// `*.yaml`/`*.yml` under `path` (a file or a folder, walked in name order,
/// leaving out `expected/`), as (name relative to the repository, text).
fn yaml_docs(path: &Path, docs: &mut Vec<(String, String)>) {
    if path.is_dir() {
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        children.sort();
        for child in children
            .iter()
            .filter(|c| !c.ends_with("expected"))
            .filter(|c| c.is_dir() || c.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        {
            yaml_docs(child, docs);
        }
    } else {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.strip_prefix(workspace_root()).unwrap_or(path);
        docs.push((name.display().to_string(), text));
    }
}

/// A golden case's translation, from the inputs the golden test uses: the
/// paths listed in `inputs.txt`, then the case folder's own YAML, with the
/// root namespace from `root-namespace.txt` if present.
fn translate_case(case: &Path) -> translator::Translation {
    let mut docs = Vec::new();
    let listed = std::fs::read_to_string(case.join("inputs.txt")).unwrap_or_default();
    for line in listed.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') {
            yaml_docs(&workspace_root().join(line), &mut docs);
        }
    }
    yaml_docs(case, &mut docs);
    let mut config = MeshConfig::default();
    if let Ok(ns) = std::fs::read_to_string(case.join("root-namespace.txt")) {
        config.root_namespace = ns.trim().to_string();
    }
    let mesh = mesh_from_yaml(&docs, config, &Addressing::default())
        .unwrap_or_else(|errs| panic!("{}: invalid input: {errs:?}", case.display()));
    translator::translate(&mesh)
}

/// One type of a sidecar's resources as JSON, without `@type` (the
/// bootstrap's static resources are typed by where they sit).
fn resources(plan: &ProxyPlan, interception: Interception, kind: ResourceType) -> Vec<Value> {
    let all = plan.resources_for(interception);
    let Some(map) = all.of(kind) else {
        return Vec::new();
    };
    map.values()
        .map(|r| {
            let mut v = resource_to_json(r).unwrap_or_else(|e| panic!("{} {}: {e}", kind, r.name));
            if let Some(o) = v.as_object_mut() {
                o.remove("@type");
            }
            v
        })
        .collect()
}

/// A bootstrap whose static resources are this proxy's resources. Routes
/// (normally RDS) go inline into a check listener, endpoints (normally
/// EDS) into STATIC check clusters, so Envoy validates them too.
fn bootstrap(node_id: &str, plan: &ProxyPlan, interception: Interception) -> Value {
    let mut listeners = resources(plan, interception, ResourceType::Listener);
    let mut clusters = resources(plan, interception, ResourceType::Cluster);
    for (i, route) in resources(plan, interception, ResourceType::Route)
        .into_iter()
        .enumerate()
    {
        listeners.push(json!({
            "name": format!("route-check-{i}"),
            // One port each: Envoy refuses two listeners on one address.
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1 + i}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "check",
                    "route_config": route,
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }));
    }
    for (i, mut cla) in resources(plan, interception, ResourceType::Endpoint)
        .into_iter()
        .enumerate()
    {
        let name = format!("eds-check-{i}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_every_golden_resource() {
    let Some(envoy) = require_envoy("envoy_accepts_every_golden_resource") else {
        return;
    };
    let scratch = ScratchDir::new("validate-golden").expect("scratch dir");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_root())
        .expect("translator/tests/golden")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases");

    let slots = Arc::new(Semaphore::new(PARALLEL));
    let mut runs = JoinSet::new();
    for case in &cases {
        let case_name = case.file_name().unwrap_or_default().to_string_lossy();
        let translation = translate_case(case);
        assert!(
            !translation.proxies.is_empty(),
            "{case_name}: no sidecars to validate"
        );
        for (((ns, pod), plan), interception) in translation.proxies.iter().flat_map(|p| {
            [Interception::None, Interception::Redirect]
                .into_iter()
                .map(move |i| (p, i))
        }) {
            let node = format!("sidecar~{}~{pod}.{ns}~{ns}.svc.cluster.local", plan.ip);
            let path = scratch
                .path()
                .join(format!("{case_name}-{pod}.{ns}-{interception}.json"));
            std::fs::write(&path, bootstrap(&node, plan, interception).to_string())
                .expect("write bootstrap");
            let label = format!("{case_name} {pod}.{ns} {interception}");
            let (envoy, slots) = (envoy.clone(), slots.clone());
            runs.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                let result = validate_bootstrap(&envoy, &path, VALIDATE_WITHIN).await;
                (label, result)
            });
        }
    }
    let mut checked = 0;
    let mut failures = Vec::new();
    while let Some(joined) = runs.join_next().await {
        let (label, result) = joined.expect("validation task");
        checked += 1;
        if let Err(e) = result {
            failures.push(format!("{label}: {e}"));
        }
    }
    failures.sort();
    assert!(checked > 0, "no proxies were validated");
    assert!(
        failures.is_empty(),
        "Envoy rejected {} of {checked} sidecars' resources:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("envoy accepted the resources of {checked} sidecar layouts");
}
