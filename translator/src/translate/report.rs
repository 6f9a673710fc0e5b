//! The decisions behind a translation, for people: the effective server mode
//! per workload port, the client TLS per client group and service port, and
//! the conflicts between them. Client reports are computed on demand (they
//! are many: groups x service ports), not on every translation.

use crate::diag::Diagnostic;
use crate::envoy::cluster::EndpointSpec;
use crate::model::{Mesh, ObjectRef};
use crate::resolve::{
    ClientDecision, ClientPolicies, Credential, Decided, MergedId, Scope, Sends, ServerMode,
};
use std::net::IpAddr;

/// One endpoint of a service port, with the facts the decisions used.
#[derive(Clone, Debug)]
pub(crate) struct EndpointFacts {
    /// Index in `Mesh::workloads`.
    pub wi: usize,
    pub spec: EndpointSpec,
    /// Whether the endpoint has a sidecar (Istio's
    /// `security.istio.io/tlsMode: istio` label).
    pub sidecar: bool,
    /// The server's effective mode on the target port (`None`: no sidecar).
    pub server: Option<Decided>,
}

/// Per service, per port: the endpoints, sorted.
pub(crate) type EndpointSpecs = Vec<Vec<Vec<EndpointFacts>>>;

/// Clients of one namespace that resolve the same rules: the namespace's
/// clients no workload-selector rule selects, or those selected by the same
/// selector rules.
#[derive(Clone, Debug)]
pub(crate) struct ClientGroup {
    pub namespace: String,
    /// The merged selector rules that select these clients.
    pub selected: Vec<MergedId>,
    /// Indices in `Mesh::workloads`.
    pub clients: Vec<usize>,
    /// Per service: the merged rule that applies.
    pub choice: std::sync::Arc<Vec<Option<MergedId>>>,
    /// The Sidecar scope of these clients; `None`: every service.
    pub scope: Option<std::sync::Arc<crate::resolve::SidecarScope>>,
}

/// The server-side decision for one workload port, for `/debug/mtlsz`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerPort {
    pub namespace: String,
    pub workload: String,
    pub ip: IpAddr,
    /// Target (container) port.
    pub port: u16,
    /// `service.namespace:port` names that target it.
    pub services: Vec<String>,
    pub sidecar: bool,
    /// `None` when the workload has no sidecar: nothing enforces a mode.
    pub mode: Option<ServerMode>,
    pub scope: Option<Scope>,
    pub by: Option<ObjectRef>,
}

/// The client-side decision for one client group and service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientPort {
    pub client_namespace: String,
    /// The client workloads (`namespace/pod`, with a sidecar) this row is for.
    pub clients: Vec<String>,
    /// The workloadSelector rules that select them; empty for the clients
    /// of the namespace that no selector rule selects.
    pub selected_by: Vec<ObjectRef>,
    pub service: String,
    pub port: u16,
    /// `AUTO` (per endpoint), or the DestinationRule's mode.
    pub tls: String,
    /// The rule whose trafficPolicy decided.
    pub by: Option<ObjectRef>,
    /// Every DestinationRule merged into the rule that applies, oldest
    /// (the base) first.
    pub rules: Vec<ObjectRef>,
    pub port_level: bool,
    /// What a `credentialName` does here, if the rule has one.
    pub note: Option<String>,
    /// The endpoints, and what the client sends to each.
    pub endpoints: Vec<EndpointDecision>,
    /// The Sidecar whose scope includes this service port; `None` when no
    /// Sidecar applies (every service is in scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<ObjectRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointDecision {
    pub workload: String,
    pub ip: IpAddr,
    pub port: u16,
    pub mtls: bool,
    pub sends: Sends,
    /// The endpoint fact auto mTLS reads: a sidecar (Istio's
    /// `security.istio.io/tlsMode: istio` label) or not.
    pub sidecar: bool,
    /// The mode the server side resolved for this target port (`None`: no
    /// sidecar enforces one).
    pub server_mode: Option<ServerMode>,
    /// Why the client sends that, in one phrase.
    pub why: String,
}

fn mode_name(m: ServerMode) -> &'static str {
    match m {
        ServerMode::Strict => "STRICT",
        ServerMode::Permissive => "PERMISSIVE",
        ServerMode::Disable => "DISABLE",
    }
}

/// Why a client sends `sends` to one endpoint, in one phrase.
pub(crate) fn why(decision: &ClientDecision, e: &EndpointFacts, sends: Sends) -> String {
    if decision.tls.is_none() {
        return match (&e.server, e.sidecar) {
            (_, false) => "auto mTLS: the endpoint has no sidecar".into(),
            (Some(d), true) => format!(
                "auto mTLS: the endpoint has a sidecar and its port {} is {}",
                e.spec.port,
                mode_name(d.mode)
            ),
            (None, true) => "auto mTLS: the endpoint has a sidecar".into(),
        };
    }
    let by = decision
        .by
        .as_ref()
        .map_or_else(|| "a DestinationRule".to_string(), ToString::to_string);
    let at = if decision.port_level {
        " (portLevelSettings)"
    } else {
        ""
    };
    match &decision.credential {
        Some(Credential::IgnoredWithoutSelector(_)) if sends == Sends::Plaintext => format!(
            "{by} sets {}{at} with a credentialName, which sidecars ignore on a rule without workloadSelector",
            decision.tls_name()
        ),
        Some(Credential::Missing) => format!(
            "{by} sets {}{at} without a client certificate, so no TLS is built",
            decision.tls_name()
        ),
        _ => format!("{by} sets {}{at}", decision.tls_name()),
    }
}

pub(super) fn client_port(
    mesh: &Mesh,
    clients: &ClientPolicies<'_>,
    endpoint_specs: &EndpointSpecs,
    group: &ClientGroup,
    si: usize,
    pi: usize,
) -> Option<ClientPort> {
    let port = mesh.services.get(si)?.ports.get(pi)?.port;
    // Out of the Sidecar scope: the clients have no cluster for it.
    if !crate::resolve::in_scope(group.scope.as_deref(), si, port) {
        return None;
    }
    let rule = group.choice.get(si).copied().flatten();
    let decision = clients.decide(rule, port);
    let eps = endpoint_specs.get(si).and_then(|v| v.get(pi))?;
    let name = |wi: usize| {
        mesh.workloads
            .get(wi)
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .unwrap_or_default()
    };
    let mut selected_by: Vec<ObjectRef> = group
        .selected
        .iter()
        .filter_map(|&id| clients.merged(id))
        .flat_map(|m| m.from.iter())
        .filter_map(|&i| mesh.destination_rules.get(i))
        .filter(|d| d.workload_selector.is_some())
        .map(|d| d.object_ref())
        .collect();
    selected_by.dedup();
    Some(ClientPort {
        client_namespace: group.namespace.clone(),
        clients: group.clients.iter().map(|&wi| name(wi)).collect(),
        selected_by,
        service: mesh.service_fqdn(si).to_string(),
        port,
        tls: decision.tls_name().to_string(),
        by: decision.by.clone(),
        rules: decision.from.clone(),
        port_level: decision.port_level,
        note: decision.credential_note(),
        sidecar: group.scope.as_ref().map(|s| s.by.clone()),
        endpoints: eps
            .iter()
            .map(|e| {
                let sends = decision.sends(e.spec.mtls);
                EndpointDecision {
                    workload: name(e.wi),
                    ip: e.spec.ip,
                    port: e.spec.port,
                    mtls: sends == Sends::Mtls,
                    sends,
                    sidecar: e.sidecar,
                    server_mode: e.server.as_ref().map(|d| d.mode),
                    why: why(&decision, e, sends),
                }
            })
            .collect(),
    })
}

/// Why a request from a client sidecar fails at one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Plaintext or non-mesh TLS to a STRICT port: no filter chain, or no
    /// mesh client certificate; the client sidecar answers 503.
    NotMtlsToStrict,
    /// mTLS to a workload without sidecar: the application gets a TLS
    /// handshake it does not expect.
    MtlsToNoSidecar,
    /// mTLS to a DISABLE port: the plaintext chain gets a TLS handshake.
    MtlsToDisable,
}

/// Why a request from a client sidecar that sends `sends` to endpoint `e`
/// fails, or `None` when it works.
pub(crate) fn failure(sends: Sends, e: &EndpointFacts) -> Option<Failure> {
    match (sends, e.sidecar, e.server.as_ref().map(|d| d.mode)) {
        (Sends::Plaintext | Sends::Simple | Sends::Mutual, true, Some(ServerMode::Strict)) => {
            Some(Failure::NotMtlsToStrict)
        }
        (Sends::Mtls, false, _) => Some(Failure::MtlsToNoSidecar),
        (Sends::Mtls, true, Some(ServerMode::Disable)) => Some(Failure::MtlsToDisable),
        _ => None,
    }
}

/// A DestinationRule whose TLS contradicts what the server accepts.
pub(super) fn conflicts(
    mesh: &Mesh,
    decision: &ClientDecision,
    fqdn: &str,
    port: u16,
    eps: &[EndpointFacts],
    diags: &mut Vec<Diagnostic>,
) {
    let (Some(by), Some(_)) = (&decision.by, &decision.tls) else {
        return;
    };
    let field = match (&decision.credential, decision.port_level) {
        (Some(Credential::IgnoredWithoutSelector(_)), true) => {
            "spec.trafficPolicy.portLevelSettings.tls.credentialName"
        }
        (Some(Credential::IgnoredWithoutSelector(_)), false) => {
            "spec.trafficPolicy.tls.credentialName"
        }
        (Some(Credential::Missing), true) => {
            "spec.trafficPolicy.portLevelSettings.tls.clientCertificate"
        }
        (Some(Credential::Missing), false) => "spec.trafficPolicy.tls.clientCertificate",
        (_, true) => "spec.trafficPolicy.portLevelSettings.tls.mode",
        (_, false) => "spec.trafficPolicy.tls.mode",
    };
    for e in eps {
        let Some(w) = mesh.workloads.get(e.wi) else {
            continue;
        };
        let sends = decision.sends(e.spec.mtls);
        let Some(kind) = failure(sends, e) else {
            continue;
        };
        let server = e.server.as_ref().map(describe).unwrap_or_default();
        let message = match kind {
            Failure::MtlsToNoSidecar => format!(
                "clients send mTLS to {fqdn}:{port}, but {}/{} has no sidecar to terminate it: requests fail with 503",
                w.namespace, w.name
            ),
            Failure::MtlsToDisable => format!(
                "clients send mTLS to {fqdn}:{port}, but {}/{} port {} is DISABLE ({server}): requests fail with 503",
                w.namespace, w.name, e.spec.port
            ),
            Failure::NotMtlsToStrict => format!(
                "clients send {} to {fqdn}:{port}, but {}/{} port {} is STRICT ({server}): requests fail with 503",
                if sends == Sends::Plaintext {
                    "plaintext"
                } else {
                    "non-mesh TLS"
                },
                w.namespace,
                w.name,
                e.spec.port
            ),
        };
        diags.push(Diagnostic::conflict(
            by.clone(),
            Some(field.into()),
            message,
        ));
    }
}

pub(crate) fn describe(d: &Decided) -> String {
    let scope = match d.scope {
        Scope::Default => "default",
        Scope::Mesh => "mesh",
        Scope::Namespace => "namespace",
        Scope::Workload => "workload",
        Scope::Port => "port",
    };
    match &d.by {
        Some(by) => format!("{by}, {scope} scope"),
        None => "the default".into(),
    }
}
