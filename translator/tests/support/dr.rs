//! Helpers for the DestinationRule tests: the article's base mesh plus a
//! test's rules, and the client-port rows `/debug/mtlsz` shows.

use super::{case_docs, repo_root};
use translator::Translation;
use translator::model::build::{Addressing, mesh_from_yaml};
use translator::model::{Mesh, MeshConfig};
use translator::translate::ClientPort;

pub fn mesh_with_config(policies: &str, config: MeshConfig) -> Mesh {
    let mut docs = case_docs(&repo_root().join("examples/article/base"));
    docs.push(("policies.yaml".into(), policies.to_string()));
    mesh_from_yaml(&docs, config, &Addressing::default())
        .unwrap_or_else(|e| panic!("invalid policies: {e:?}"))
}

pub fn mesh_with(policies: &str) -> Mesh {
    mesh_with_config(policies, MeshConfig::default())
}

/// The client-port row for `client` (namespace/pod) and `service:port`.
pub fn row(mesh: &Mesh, t: &Translation, client: &str, service: &str, port: u16) -> ClientPort {
    let fqdn = format!("{service}.svc.cluster.local");
    t.client_ports(mesh)
        .into_iter()
        .find(|r| r.clients.iter().any(|c| c == client) && r.service == fqdn && r.port == port)
        .unwrap_or_else(|| panic!("no row for {client} -> {fqdn}:{port}"))
}

/// `namespace/name` of the rules merged into the rule `client` uses.
pub fn rules_of(mesh: &Mesh, t: &Translation, client: &str, service: &str) -> Vec<String> {
    row(mesh, t, client, service, 8000)
        .rules
        .iter()
        .map(|r| format!("{}/{}", r.namespace, r.name))
        .collect()
}

pub fn tls_of(mesh: &Mesh, t: &Translation, client: &str, service: &str) -> String {
    row(mesh, t, client, service, 8000).tls
}

pub fn dr(ns: &str, name: &str, created: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '{created}'}}\nspec:\n{spec}\n"
    )
}

pub const T1: &str = "2024-01-01T00:00:00Z";
pub const T2: &str = "2024-01-02T00:00:00Z";
pub const T3: &str = "2024-01-03T00:00:00Z";

/// A few more clients in foo (with sidecars) to select.
pub const CLIENTS: &str = "
---
apiVersion: v1
kind: Pod
metadata: {name: app1, namespace: foo, labels: {app: app1}}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: app2, namespace: foo, labels: {app: app2}}
spec: {containers: [{name: c, image: x}]}
";

pub fn root_client() -> &'static str {
    "
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: istio-system, labels: {app: probe, security.istio.io/tlsMode: istio}}
spec: {containers: [{name: c, image: x}]}
"
}
