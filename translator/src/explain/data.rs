//! What an explanation holds (JSON for `/debug/explain`).

use crate::model::{Labels, ObjectRef};
use crate::resolve::{Scope, Sends, ServerMode};
use std::net::IpAddr;

/// Why a request cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("--from {0:?}: expected WORKLOAD.NAMESPACE (a pod, or a Deployment's name)")]
    BadFrom(String),
    #[error("--from {0:?}: no workload {1} in namespace {2}")]
    UnknownWorkload(String, String, String),
    #[error("--to {0:?}: expected SERVICE.NAMESPACE:PORT")]
    BadTo(String),
    #[error("--to {0:?}: no service {1} in namespace {2}")]
    UnknownService(String, String, String),
    #[error("--to {0:?}: service {1} has no port {2} (ports: {3})")]
    UnknownPort(String, String, u16, String),
}

/// Everything about one request, as data (JSON for `/debug/explain`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// `workload.namespace`, as asked.
    pub from: String,
    /// `service.namespace:port`, as asked.
    pub to: String,
    pub client: ClientSide,
    pub service: ServiceSide,
    /// The lookup, step by step; empty for a client without sidecar.
    pub lookup: Vec<LookupStep>,
    /// The rule that applies, merged; `None`: auto mTLS (or no sidecar).
    pub destination_rule: Option<AppliedRule>,
    pub endpoints: Vec<EndpointView>,
    /// The predicted outcome, e.g. `reset: server STRICT, client sends
    /// plaintext`; `mixed: ...` when endpoints differ.
    pub outcome: String,
    /// For a failure, why, in one sentence naming the policies.
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientSide {
    /// `namespace/pod`.
    pub workload: String,
    pub service_account: String,
    pub sidecar: bool,
    pub labels: Labels,
    /// The Sidecar resource that scopes the client's outbound config;
    /// `None` when none applies (every service is in scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoped_by: Option<ObjectRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSide {
    pub fqdn: String,
    pub port: u16,
    pub port_name: String,
    pub protocol: crate::model::Protocol,
}

/// One namespace the lookup searched.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LookupStep {
    /// e.g. `client namespace foo (every rule visible there)`.
    pub searched: String,
    /// The host the step matched (exact or wildcard), if any.
    pub host: Option<String>,
    pub candidates: Vec<Candidate>,
    /// Whether the lookup ended here.
    pub ended: bool,
}

/// One merged entry for the matched host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The rules merged into it, base first.
    pub rules: Vec<ObjectRef>,
    pub selector: Option<Labels>,
    pub export_to: Vec<String>,
    /// `applies`, or why not.
    pub verdict: String,
}

/// The merged rule that applies to this client and port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedRule {
    /// Every rule that took part, base (oldest) first.
    pub rules: Vec<ObjectRef>,
    pub host: String,
    pub selector: Option<Labels>,
    /// The rule whose `trafficPolicy` the merged rule carries.
    pub traffic_policy_from: Option<ObjectRef>,
    /// `AUTO`, or the TLS mode for this port.
    pub tls: String,
    pub port_level: bool,
    /// How the server is verified, for SIMPLE and MUTUAL.
    pub verify: Option<String>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub subsets: Vec<String>,
    /// What `credentialName` does, if set.
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointView {
    /// `namespace/pod`.
    pub workload: String,
    pub ip: IpAddr,
    /// The target port.
    pub port: u16,
    /// Whether the endpoint has a sidecar (the fact auto mTLS reads).
    pub sidecar: bool,
    pub client_sends: Sends,
    pub why: String,
    /// The server's effective mode on the target port and what decided
    /// it; `None` without a sidecar.
    pub server_mode: Option<ServerMode>,
    pub server_scope: Option<Scope>,
    pub server_by: Option<ObjectRef>,
    pub outcome: String,
}

fn scope_name(s: Option<Scope>) -> &'static str {
    match s {
        Some(Scope::Mesh) => "mesh-wide",
        Some(Scope::Namespace) => "namespace-wide",
        Some(Scope::Workload) => "workload",
        Some(Scope::Port) => "port-level",
        Some(Scope::Default) | None => "default",
    }
}

/// `PeerAuthentication ns/name, mesh-wide`, or `no policy`.
pub fn server_by_text(by: Option<&ObjectRef>, scope: Option<Scope>) -> String {
    by.map(|b| format!("{b}, {}", scope_name(scope)))
        .unwrap_or_else(|| "no policy".into())
}
