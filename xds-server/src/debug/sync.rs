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
        "\nCLIENT (outbound, per client namespace and service port; clients a workloadSelector rule selects get rows of their own)"
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
        let auto = c.tls == "AUTO";
        let eps: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| {
                let sends = if e.mtls { "mTLS" } else { "plain" };
                let sends = match e.sends {
                    translator::resolve::Sends::Simple | translator::resolve::Sends::Mutual => {
                        e.sends.as_str()
                    }
                    _ => sends,
                };
                // The facts auto mTLS decided from: sidecar, server mode.
                let facts = match (auto, e.sidecar, e.server_mode) {
                    (false, _, _) => String::new(),
                    (true, false, _) => "(no sidecar)".into(),
                    (true, true, Some(m)) => {
                        format!("(sidecar,{})", format!("{m:?}").to_uppercase())
                    }
                    (true, true, None) => "(sidecar)".into(),
                };
                format!("{}={sends}{facts}", e.workload)
            })
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
        if !c.selected_by.is_empty() {
            let rules: Vec<String> = c.selected_by.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "{:<12} ^ clients {} (workloadSelector of {})",
                "",
                c.clients.join(", "),
                rules.join(", ")
            );
        }
        if let Some(sc) = &c.sidecar {
            let _ = writeln!(
                out,
                "{:<12} ^ clients {} (outbound scope of {sc})",
                "",
                c.clients.join(", ")
            );
        }
        if c.rules.len() > 1 {
            let rules: Vec<String> = c.rules.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "{:<12} ^ merged: {}", "", rules.join(" + "));
        }
        if let Some(note) = &c.note {
            let _ = writeln!(out, "{:<12} ^ {note}", "");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use translator::model::MeshConfig;
    use translator::model::build::{Addressing, mesh_from_yaml};

    const BASE: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: canary, namespace: shop, labels: {app: canary}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: client}
  ports: [{name: http, port: 80}]
";

    const RULES: &str = "
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: base, namespace: shop, creationTimestamp: '2024-01-01T00:00:00Z'}
spec: {host: web, subsets: [{name: v1}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: newer, namespace: shop, creationTimestamp: '2024-01-02T00:00:00Z'}
spec: {host: web, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: canary, namespace: shop}
spec:
  host: web
  workloadSelector: {matchLabels: {app: canary}}
  trafficPolicy: {tls: {mode: DISABLE}}
";

    fn text(yaml: &str) -> String {
        let mesh = mesh_from_yaml(
            &[("mesh.yaml".into(), yaml.into())],
            MeshConfig::default(),
            &Addressing::default(),
        )
        .expect("valid mesh");
        mtlsz_text(&mesh, &translator::translate(&mesh))
    }

    #[test]
    fn mtlsz_text_shows_selector_groups_and_merged_rules() {
        let text = text(&format!("{BASE}{RULES}"));
        for want in [
            "^ clients shop/canary (workloadSelector of DestinationRule shop/canary)",
            "^ merged: DestinationRule shop/base + DestinationRule shop/newer",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let canary_row = text
            .lines()
            .find(|l| l.starts_with("shop") && l.contains("DestinationRule shop/canary "))
            .unwrap_or_else(|| panic!("no row for the canary's rule:\n{text}"));
        assert!(canary_row.contains("DISABLE"), "{canary_row}");
    }

    #[test]
    fn mtlsz_text_shows_only_the_scoped_services_and_the_sidecar() {
        let scoped = format!(
            "{BASE}---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: elsewhere}}
spec:
  selector: {{app: none}}
  ports: [{{name: http, port: 80}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: own-only, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: canary}}}}
  egress: [{{hosts: [\"./*\"]}}]
"
        );
        let text = text(&scoped);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("shop ")).collect();
        // client (unscoped) sees both services; canary only shop's.
        assert!(
            rows.iter()
                .filter(|l| l.contains("other.elsewhere"))
                .count()
                == 1,
            "{text}"
        );
        assert!(
            text.contains("^ clients shop/canary (outbound scope of Sidecar shop/own-only)"),
            "{text}"
        );
    }

    #[test]
    fn mtlsz_text_shows_the_facts_auto_mtls_decided_from() {
        let text = text(BASE);
        assert!(
            text.contains("shop/client=mTLS(sidecar,PERMISSIVE)"),
            "{text}"
        );
    }
}
