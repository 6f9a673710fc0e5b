//! What a probe matrix is made of, shared by the two runners' probes
//! (`mesh.rs` for the explicit-bind layout, `capture_probe.rs` for pods):
//! its rows, how clients and targets are selected, which ports a Service
//! targets on a workload, and how the matrix is printed.

use super::selector::Selector;
use std::collections::BTreeSet;
use translator::model::{Labels, Mesh};

/// One probe: from a client workload to a service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeRow {
    /// `workload.namespace` (the Deployment name for its replicas).
    pub from: String,
    /// `service.namespace:port`.
    pub to: String,
    pub outcome: String,
    pub mtls: bool,
    /// Why the call failed, when the decisions can tell (text output only).
    #[serde(skip)]
    pub reason: Option<String>,
}

impl ProbeRow {
    /// The article's notation: `200 mTLS`, `200 plain`, `reset`, `503`.
    pub fn cell(&self) -> String {
        match self.outcome.parse::<u16>() {
            Ok(code) if self.mtls => format!("{code} mTLS"),
            Ok(code) if (200..300).contains(&code) => format!("{code} plain"),
            _ => self.outcome.clone(),
        }
    }
}

pub fn parse_selector(s: &str) -> anyhow::Result<Selector> {
    Selector::parse(s).map_err(|e| anyhow::anyhow!(e))
}

pub fn selects(sel: &Option<Selector>, labels: &Labels) -> bool {
    sel.as_ref().is_none_or(|s| s.matches(labels))
}

/// Target ports Services expose on a workload (the e2e harness routes the
/// same ports, so it calls this rather than keeping its own copy).
pub fn target_ports(mesh: &Mesh, wi: usize) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    let Some(w) = mesh.workloads.get(wi) else {
        return Vec::new();
    };
    for &si in mesh
        .index
        .workload_services
        .get(wi)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(s) = mesh.services.get(si) {
            for p in &s.ports {
                if let Some(t) = w.resolve_target(&p.target_port) {
                    ports.insert(t);
                }
            }
        }
    }
    ports.into_iter().collect()
}

/// The matrix in the article's style.
pub fn render_matrix(rows: &[ProbeRow]) -> String {
    let froms: BTreeSet<&str> = rows.iter().map(|r| r.from.as_str()).collect();
    let tos: BTreeSet<&str> = rows.iter().map(|r| r.to.as_str()).collect();
    let first = froms
        .iter()
        .map(|f| f.len())
        .max()
        .unwrap_or(0)
        .max("from \\ to".len())
        + 2;
    let col = tos.iter().map(|t| t.len()).max().unwrap_or(0).max(10) + 2;
    let mut out = format!("{:<first$}", "from \\ to");
    for t in &tos {
        out.push_str(&format!("{t:<col$}"));
    }
    out.push('\n');
    for f in &froms {
        out.push_str(&format!("{f:<first$}"));
        for t in &tos {
            let cell = rows
                .iter()
                .find(|r| r.from == *f && r.to == *t)
                .map(ProbeRow::cell)
                .unwrap_or_default();
            out.push_str(&format!("{cell:<col$}"));
        }
        out.push('\n');
    }
    out
}
