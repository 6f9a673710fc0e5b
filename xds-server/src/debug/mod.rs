//! The debug and operations HTTP server: what every proxy was sent, whether
//! it accepted it, which policy is in force where, and metrics.

pub mod explain;
pub mod sync;

use crate::ads::{Registry, Stats};
use crate::identity::{NodeId, Peer};
use crate::snapshots::Snapshots;
use crate::view::ConfigSource;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use translator::render::resource_to_json;
use translator::{ResourceMap, ResourceType, Severity};

#[derive(Clone)]
pub struct DebugState {
    pub snapshots: Arc<Snapshots>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    pub test_hooks: bool,
}

const ENDPOINTS: &[(&str, &str)] = &[
    (
        "/debug/config_dump?proxy=NODE_ID",
        "the resources last sent to a proxy, as Envoy's config_dump (secrets redacted)",
    ),
    (
        "/debug/syncz",
        "every connected proxy: per type the version sent and acked, SYNCED/STALE/NACKED, last NACK",
    ),
    (
        "/debug/mtlsz",
        "effective server mode per workload port, client TLS per namespace and service port, conflicts (?format=text for a table)",
    ),
    (
        "/debug/explain?from=WORKLOAD.NS&to=SVC.NS:PORT",
        "one request: the client's sidecar, DestinationRules considered and merged, TLS per endpoint, server mode, predicted outcome",
    ),
    (
        "/debug/configz",
        "objects loaded and rejected, with the reason for each rejection",
    ),
    (
        "/debug/ca",
        "the root CA (expiry, time left) and every workload certificate held (serial, SPIFFE ID, validity)",
    ),
    ("/metrics", "Prometheus metrics"),
    ("/healthz", "liveness"),
    ("/readyz", "ready once the first configuration is loaded"),
];

pub fn router(state: DebugState) -> Router {
    let mut r = Router::new()
        .route("/debug", get(list))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/syncz", get(syncz))
        .route("/debug/mtlsz", get(mtlsz))
        .route("/debug/explain", get(explain_request))
        .route("/debug/configz", get(configz))
        .route("/debug/ca", get(ca))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if state.test_hooks {
        r = r
            .route("/debug/test/inject-invalid", post(inject_invalid))
            .route("/debug/test/clear", post(clear_injected));
    }
    r.with_state(state)
}

async fn list() -> String {
    let mut out = String::new();
    for (path, what) in ENDPOINTS {
        out.push_str(&format!("{path:40} {what}\n"));
    }
    out
}

fn error(code: StatusCode, msg: String) -> Response {
    (code, Json(json!({ "error": msg }))).into_response()
}

#[derive(serde::Deserialize)]
struct ProxyQuery {
    proxy: Option<String>,
    #[serde(rename = "proxyID")]
    proxy_id: Option<String>,
}

fn dump_section(type_name: &str, kind: ResourceType, map: &ResourceMap, version: &str) -> Value {
    let entries: Vec<Value> = map
        .values()
        .map(|r| {
            let body = resource_to_json(r).unwrap_or_else(|e| json!({ "render_error": e.to_string() }));
            match kind {
                ResourceType::Cluster => json!({"version_info": version, "cluster": body}),
                ResourceType::Endpoint => json!({"version_info": version, "endpoint_config": body}),
                ResourceType::Listener => json!({"name": r.name, "active_state": {"version_info": version, "listener": body}}),
                ResourceType::Route => json!({"version_info": version, "route_config": body}),
                ResourceType::Secret => json!({"name": r.name, "version_info": version}),
            }
        })
        .collect();
    let key = match kind {
        ResourceType::Cluster => "dynamic_active_clusters",
        ResourceType::Endpoint => "dynamic_endpoint_configs",
        ResourceType::Listener => "dynamic_listeners",
        ResourceType::Route => "dynamic_route_configs",
        ResourceType::Secret => "dynamic_active_secrets",
    };
    json!({
        "@type": format!("type.googleapis.com/envoy.admin.v3.{type_name}"),
        "version_info": version,
        key: entries,
    })
}

/// `/debug/config_dump?proxy=NODE_ID` (or istiod's `proxyID=POD.NS`).
async fn config_dump(State(s): State<DebugState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(wanted) = q.proxy.or(q.proxy_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "pass ?proxy=NODE_ID (see /debug/syncz)".into(),
        );
    };
    let conn = s.registry.snapshot().into_iter().find(|c| {
        c.node_id == wanted || format!("{}.{}", c.proxy.pod, c.proxy.namespace) == wanted
    });
    let Some(conn) = conn else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no connected proxy {wanted:?} (see /debug/syncz)"),
        );
    };
    let mut configs = Vec::new();
    for (kind, name) in [
        (ResourceType::Cluster, "ClustersConfigDump"),
        (ResourceType::Endpoint, "EndpointsConfigDump"),
        (ResourceType::Listener, "ListenersConfigDump"),
        (ResourceType::Route, "RoutesConfigDump"),
    ] {
        if let Some(t) = conn.types.get(&kind) {
            configs.push(dump_section(
                name,
                kind,
                &t.sent,
                t.sent_version.as_deref().unwrap_or(""),
            ));
        }
    }
    // Secrets: names and certificate metadata only, never key material.
    if let Some(t) = conn.types.get(&ResourceType::Secret) {
        let cert = s.snapshots.cert_info(&conn.identity);
        let root = json!({"description": "trust bundle of the built-in CA"});
        let secrets: Vec<Value> = t
            .sent
            .keys()
            .map(|name| {
                let info = if name == crate::ca::WORKLOAD_SECRET {
                    serde_json::to_value(&cert).unwrap_or(Value::Null)
                } else {
                    root.clone()
                };
                json!({"name": name, "version_info": t.sent_version, "certificate": info})
            })
            .collect();
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamic_active_secrets": secrets,
        }));
    }
    Json(json!({"node_id": conn.node_id, "configs": configs})).into_response()
}

/// `/debug/syncz`: like `istioctl proxy-status`.
async fn syncz(State(s): State<DebugState>) -> Json<Value> {
    let rows: Vec<Value> = s
        .registry
        .snapshot()
        .into_iter()
        .map(|c| {
            let current = s.snapshots
                .view(&c.node_id, c.interception, &Peer::Unauthenticated).ok();
            let mut types = BTreeMap::new();
            for kind in ResourceType::PUSH_ORDER {
                let Some(t) = c.types.get(&kind) else {
                    types.insert(kind.short(), json!({"status": "NOT SENT"}));
                    continue;
                };
                types.insert(
                    kind.short(),
                    json!({
                        "status": t.sync_state().as_str(),
                        "sent": t.sent_version,
                        "acked": t.acked_version,
                        "resources": t.sent.len(),
                        "last_nack": t.last_nack.as_ref().map(|n| json!({"version": n.version, "error": n.message})),
                    }),
                );
            }
            json!({
                "proxy": format!("{}.{}", c.proxy.pod, c.proxy.namespace),
                "node_id": c.node_id,
                "identity": c.identity.to_string(),
                "connection": c.id,
                "delta": c.delta,
                "status": sync::summarize(&c).as_str(),
                "up_to_date": current.as_ref().is_some_and(|v| sync::is_current(&c, v)),
                "types": types,
            })
        })
        .collect();
    Json(json!({"generation": s.snapshots.generation(), "proxies": rows}))
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

/// `/debug/mtlsz`: which mode is in force where, and why.
async fn mtlsz(State(s): State<DebugState>, Query(q): Query<FormatQuery>) -> Response {
    let Some(state) = s.snapshots.state() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet".into(),
        );
    };
    let t = &state.translation;
    if q.format.as_deref() == Some("text") {
        return sync::mtlsz_text(&state.mesh, t).into_response();
    }
    let conflicts: Vec<Value> = t
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Conflict)
        .map(|d| json!({"object": d.object, "field": d.field, "reason": d.message, "text": d.to_string()}))
        .collect();
    let warnings: Vec<Value> = t
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| json!({"object": d.object, "field": d.field, "reason": d.message, "text": d.to_string()}))
        .collect();
    Json(json!({
        "server": t.server_ports,
        "client": t.client_ports(&state.mesh),
        "conflicts": conflicts,
        "warnings": warnings,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct ExplainQuery {
    from: Option<String>,
    to: Option<String>,
}

/// `/debug/explain?from=sleep.foo&to=httpbin.bar:8000`: one request, from
/// the current translation (`translator::explain`).
async fn explain_request(State(s): State<DebugState>, Query(q): Query<ExplainQuery>) -> Response {
    let (Some(from), Some(to)) = (q.from, q.to) else {
        return error(
            StatusCode::BAD_REQUEST,
            "pass ?from=WORKLOAD.NAMESPACE&to=SERVICE.NAMESPACE:PORT".into(),
        );
    };
    let Some(state) = s.snapshots.state() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet".into(),
        );
    };
    match translator::explain::explain(&state.mesh, &state.translation, &from, &to) {
        Ok(e) => Json(e).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

async fn configz(State(s): State<DebugState>) -> Response {
    let Some(state) = s.snapshots.state() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration loaded yet".into(),
        );
    };
    let snap = &state.snapshot;
    let loaded: Vec<Value> = snap
        .objects
        .iter()
        .map(|(p, _)| {
            let meta = p.object.metadata();
            json!({
                "kind": p.object.kind(),
                "namespace": meta.and_then(|m| m.namespace.clone()),
                "name": meta.and_then(|m| m.name.clone()),
                "file": p.file,
                "document": p.index,
            })
        })
        .collect();
    let rejected: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
    Json(json!({"files": snap.files, "loaded": loaded, "rejected": rejected})).into_response()
}

/// `/metrics`: the ADS counters, then what the snapshots hold right now.
/// `/debug/ca`: the root's validity and every workload certificate held.
async fn ca(State(s): State<DebugState>) -> Json<Value> {
    let ca = s.snapshots.ca();
    let not_after = ca.root_not_after();
    let remaining = not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    Json(json!({
        "trust_domain": ca.trust_domain(),
        "root": {
            "not_after": humantime::format_rfc3339_seconds(not_after).to_string(),
            "remaining_seconds": remaining,
        },
        "workload_certificates": s.snapshots.certs_info(),
    }))
}

async fn metrics(State(s): State<DebugState>) -> Response {
    let (objects, rejected, translate_secs) = s
        .snapshots
        .state()
        .map(|st| {
            (
                st.snapshot.objects.len(),
                st.snapshot.errors.len(),
                st.translate_time.as_secs_f64(),
            )
        })
        .unwrap_or_default();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    // These are read at scrape time, so a registry of constants per scrape.
    let mut scrape = prometheus_client::registry::Registry::default();
    // prometheus-client appends "." to help texts and "_total" to counter
    // sample names, so neither is spelled here.
    scrape.register(
        "xds_config_objects_loaded",
        "Config objects in force",
        ConstGauge::new(count(objects)),
    );
    scrape.register(
        "xds_config_objects_rejected",
        "Config objects rejected by validation in the last load",
        ConstGauge::new(count(rejected)),
    );
    scrape.register(
        "xds_certificates_issued",
        "Workload certificates issued",
        ConstCounter::new(s.snapshots.certs_issued()),
    );
    scrape.register(
        "xds_translate_seconds",
        "Duration of the last translation",
        ConstGauge::new(translate_secs),
    );
    // A gauge: an OpenMetrics counter's sample must end in `_total`, and
    // this sample has always been `xds_config_generation`.
    scrape.register(
        "xds_config_generation",
        "Config and certificate generation",
        ConstGauge::new(i64::try_from(s.snapshots.generation()).unwrap_or(i64::MAX)),
    );
    let root_expiry = s.snapshots.ca().root_not_after();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    scrape.register(
        "xds_root_ca_expiry_timestamp_seconds",
        "When the root CA certificate expires, in seconds since the Unix epoch",
        ConstGauge::new(unix(root_expiry)),
    );
    scrape.register(
        "xds_root_ca_remaining_seconds",
        "Seconds until the root CA certificate expires; no certificate can outlive it",
        ConstGauge::new(unix(root_expiry).saturating_sub(unix(SystemTime::now()))),
    );
    scrape.register(
        "xds_workload_certificates",
        "Workload certificates held (one per identity with a sidecar)",
        ConstGauge::new(count(s.snapshots.certs_info().len())),
    );
    let mut out = s.stats.render_prometheus();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &scrape) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        );
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn readyz(State(s): State<DebugState>) -> Response {
    if s.snapshots.state().is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "config not loaded\n").into_response()
    }
}

/// Test hook: push a listener Envoy must reject (its address is not an
/// IP), to exercise NACK handling end to end.
async fn inject_invalid(State(s): State<DebugState>, Query(q): Query<ProxyQuery>) -> Response {
    let Some(node) = q.proxy.or(q.proxy_id) else {
        return error(StatusCode::BAD_REQUEST, "pass ?proxy=NODE_ID".into());
    };
    let Ok(id) = NodeId::parse(&node) else {
        return error(StatusCode::BAD_REQUEST, format!("not a node id: {node}"));
    };
    s.snapshots.inject(id.proxy_id(), invalid_listener());
    (StatusCode::OK, "injected\n").into_response()
}

async fn clear_injected(State(s): State<DebugState>) -> Response {
    s.snapshots.clear_injected();
    (StatusCode::OK, "cleared\n").into_response()
}

/// A listener Envoy rejects (its address is not an IP): the resource the
/// NACK test hook injects.
pub fn invalid_listener() -> translator::Resource {
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    let bad = Listener {
        name: "test-invalid".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "not-an-ip".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(1)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    translator::Resource::new("test-invalid", ResourceType::Listener, &bad)
}
