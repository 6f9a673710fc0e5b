//! Whether a proxy holds what it should, and text renderings for humans.

use crate::ads::{ConnectionStatus, SyncState};
use crate::view::ProxyView;
use std::fmt::Write;
use translator::{ResourceType, Translation};

/// The worst state over all types: NACKED > STALE > SYNCED.
pub fn summarize(c: &ConnectionStatus) -> SyncState {
    let mut worst = SyncState::Synced;
    for t in c.types.values() {
        match t.sync_state() {
            SyncState::Nacked => return SyncState::Nacked,
            SyncState::Stale => worst = SyncState::Stale,
            _ => {}
        }
    }
    worst
}

/// True when the proxy acknowledged exactly the current view, for every
/// type it subscribed to (wildcard types always count).
pub fn is_current(c: &ConnectionStatus, view: &ProxyView) -> bool {
    not_current(c, view).is_empty()
}

/// The types in which the connection is behind `view`, each with why
/// (`LDS STALE`, `RDS not subscribed`, `CDS sent differs`): what a
/// convergence timeout reports.
pub fn not_current(c: &ConnectionStatus, view: &ProxyView) -> Vec<String> {
    ResourceType::PUSH_ORDER
        .into_iter()
        .filter_map(|kind| {
            let Some(t) = c.types.get(&kind) else {
                // Never subscribed: fine for named types with nothing to name.
                return kind
                    .is_wildcard()
                    .then(|| format!("{} not subscribed", kind.short()));
            };
            let state = t.sync_state();
            if state != SyncState::Synced {
                return Some(format!("{} {}", kind.short(), state.as_str()));
            }
            let want = view.of(kind);
            let covered: Vec<(&String, u64)> = want
                .iter()
                .filter(|(name, _)| t.subscription.as_ref().is_none_or(|s| s.covers(name)))
                .map(|(n, r)| (n, r.hash))
                .collect();
            let sent: Vec<(&String, u64)> = t.sent.iter().map(|(n, r)| (n, r.hash)).collect();
            (covered != sent)
                .then(|| format!("{} sent differs from the current config", kind.short()))
        })
        .collect()
}

/// `/debug/mtlsz?format=text`: the effective modes as tables.
pub fn mtlsz_text(mesh: &translator::model::Mesh, t: &Translation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "SERVER (inbound, per workload port)");
    let _ = writeln!(
        out,
        "{:<28} {:<6} {:<12} {:<10} DECIDED BY",
        "WORKLOAD", "PORT", "MODE", "SCOPE"
    );
    for p in &t.server_ports {
        let mode = p
            .mode
            .map(|m| format!("{m:?}").to_uppercase())
            .unwrap_or_else(|| "no sidecar".into());
        let scope = p
            .scope
            .map(|s| format!("{s:?}").to_lowercase())
            .unwrap_or_else(|| "-".into());
        let by =
            p.by.as_ref()
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<28} {:<6} {:<12} {:<10} {by}",
            format!("{}/{}", p.namespace, p.workload),
            p.port,
            mode,
            scope
        );
    }
    let _ = writeln!(
        out,
        "\nCLIENT (outbound, per client namespace and service port)"
    );
    let _ = writeln!(
        out,
        "{:<12} {:<44} {:<13} {:<28} ENDPOINTS",
        "FROM NS", "SERVICE:PORT", "TLS", "DECIDED BY"
    );
    for c in &t.client_ports(mesh) {
        let by =
            c.by.as_ref()
                .map(|b| b.to_string())
                .unwrap_or_else(|| "auto mTLS".into());
        let eps: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| format!("{}={}", e.workload, if e.mtls { "mTLS" } else { "plain" }))
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:<44} {:<13} {:<28} {}",
            c.client_namespace,
            format!("{}:{}", c.service, c.port),
            c.tls,
            by,
            eps.join(",")
        );
    }
    let _ = writeln!(out, "\nDIAGNOSTICS");
    if t.diagnostics.is_empty() {
        let _ = writeln!(out, "none");
    }
    for d in &t.diagnostics {
        let _ = writeln!(out, "{d}");
    }
    out
}
