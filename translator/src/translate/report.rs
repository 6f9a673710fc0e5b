//! The decisions behind a translation, for people: the effective server mode
//! per workload port, the client TLS per namespace and service port, and the
//! conflicts between them. Client reports are computed on demand (they are
//! many: namespaces x service ports), not on every translation.

use crate::diag::Diagnostic;
use crate::envoy::cluster::EndpointSpec;
use crate::model::{ClientTlsMode, Mesh, ObjectRef};
use crate::resolve::{ClientDecision, ClientPolicies, Decided, Scope, ServerMode};
use std::net::IpAddr;

/// Per service, per port: the endpoints (workload index, spec), sorted.
pub(super) type EndpointSpecs = Vec<Vec<Vec<(usize, EndpointSpec)>>>;

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

/// The client-side decision for one client namespace and service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClientPort {
    pub client_namespace: String,
    pub service: String,
    pub port: u16,
    /// `AUTO` (per endpoint), or the DestinationRule's mode.
    pub tls: String,
    pub by: Option<ObjectRef>,
    pub port_level: bool,
    /// The endpoints and whether each gets mTLS.
    pub endpoints: Vec<EndpointDecision>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EndpointDecision {
    pub workload: String,
    pub ip: IpAddr,
    pub port: u16,
    pub mtls: bool,
}

fn tls_name(decision: &ClientDecision) -> String {
    match &decision.tls {
        None => "AUTO".into(),
        Some(t) => match t.mode() {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
        .into(),
    }
}

pub(super) fn client_port(
    mesh: &Mesh,
    clients: &ClientPolicies<'_>,
    endpoint_specs: &EndpointSpecs,
    client_ns: &str,
    rule: Option<usize>,
    si: usize,
    pi: usize,
) -> Option<ClientPort> {
    let port = mesh.services.get(si)?.ports.get(pi)?.port;
    let decision = clients.decide(rule, port);
    let explicit = decision.tls.as_ref().map(|t| t.mode());
    let eps = endpoint_specs.get(si).and_then(|v| v.get(pi))?;
    Some(ClientPort {
        client_namespace: client_ns.to_string(),
        service: mesh.service_fqdn(si).to_string(),
        port,
        tls: tls_name(&decision),
        by: decision.by.clone(),
        port_level: decision.port_level,
        endpoints: eps
            .iter()
            .map(|(wi, e)| EndpointDecision {
                workload: mesh
                    .workloads
                    .get(*wi)
                    .map(|w| format!("{}/{}", w.namespace, w.name))
                    .unwrap_or_default(),
                ip: e.ip,
                port: e.port,
                mtls: match explicit {
                    None => e.mtls,
                    Some(m) => m == ClientTlsMode::IstioMutual,
                },
            })
            .collect(),
    })
}

/// A DestinationRule whose TLS contradicts what the server accepts.
pub(super) fn conflicts<'a>(
    mesh: &Mesh,
    decision: &ClientDecision,
    fqdn: &str,
    port: u16,
    eps: &[(usize, EndpointSpec)],
    server_mode: &dyn Fn(usize, u16) -> Option<&'a Decided>,
    diags: &mut Vec<Diagnostic>,
) {
    let (Some(by), Some(tls)) = (&decision.by, &decision.tls) else {
        return;
    };
    let field = if decision.port_level {
        "spec.trafficPolicy.portLevelSettings.tls.mode"
    } else {
        "spec.trafficPolicy.tls.mode"
    };
    for (wi, e) in eps {
        let Some(w) = mesh.workloads.get(*wi) else {
            continue;
        };
        let server = server_mode(*wi, e.port);
        let why = match (tls.mode(), w.sidecar, server) {
            (ClientTlsMode::Disable | ClientTlsMode::Simple, true, Some(d))
                if d.mode == ServerMode::Strict =>
            {
                Some(format!(
                    "clients send {} to {fqdn}:{port}, but {}/{} port {} is STRICT ({}): requests fail with 503",
                    if tls.mode() == ClientTlsMode::Disable {
                        "plaintext"
                    } else {
                        "non-mesh TLS"
                    },
                    w.namespace,
                    w.name,
                    e.port,
                    describe(d)
                ))
            }
            (ClientTlsMode::IstioMutual, false, _) => Some(format!(
                "clients send mTLS to {fqdn}:{port}, but {}/{} has no sidecar to terminate it: requests fail with 503",
                w.namespace, w.name
            )),
            (ClientTlsMode::IstioMutual, true, Some(d)) if d.mode == ServerMode::Disable => {
                Some(format!(
                    "clients send mTLS to {fqdn}:{port}, but {}/{} port {} is DISABLE ({}): requests fail with 503",
                    w.namespace,
                    w.name,
                    e.port,
                    describe(d)
                ))
            }
            _ => None,
        };
        if let Some(message) = why {
            diags.push(Diagnostic::conflict(
                by.clone(),
                Some(field.into()),
                message,
            ));
        }
    }
}

fn describe(d: &Decided) -> String {
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
