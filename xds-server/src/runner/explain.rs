//! Why a probe failed, in one sentence, from the same decisions the
//! translator made (the answer to "why did this request fail?").

use translator::Translation;
use translator::model::{Mesh, Service, ServicePort, Workload};
use translator::resolve::{Scope, ServerMode};

fn scope_name(s: Option<Scope>) -> &'static str {
    match s {
        Some(Scope::Mesh) => "mesh-wide",
        Some(Scope::Namespace) => "namespace-wide",
        Some(Scope::Workload) => "workload",
        Some(Scope::Port) => "port-level",
        Some(Scope::Default) | None => "default",
    }
}

/// An explanation for a failed call from `client` to `service:port`, or
/// `None` when the decisions say it should have worked.
pub fn explain(
    mesh: &Mesh,
    t: &Translation,
    client: &Workload,
    service: &Service,
    port: &ServicePort,
) -> Option<String> {
    let si = mesh
        .services
        .iter()
        .position(|s| s.namespace == service.namespace && s.name == service.name)?;
    let ep = mesh
        .index
        .service_endpoints
        .get(si)?
        .first()
        .and_then(|&i| mesh.workloads.get(i))?;
    let target = ep.resolve_target(&port.target_port)?;
    let server = t
        .server_ports
        .iter()
        .find(|p| p.namespace == ep.namespace && p.workload == ep.name && p.port == target)?;
    let server_by = server
        .by
        .as_ref()
        .map(|b| format!("{b}, {}", scope_name(server.scope)))
        .unwrap_or_else(|| "no policy".into());
    let ep_name = format!("{}/{}:{target}", ep.namespace, ep.name);
    if !client.sidecar {
        return (server.mode == Some(ServerMode::Strict)).then(|| {
            format!(
                "{ep_name} accepts only mTLS ({server_by}) and {}/{} has no sidecar, so it sends plaintext",
                client.namespace,
                client.display_name()
            )
        });
    }
    let fqdn = mesh.fqdn(service);
    let decision = t.client_port(mesh, &client.namespace, si, port.port)?;
    let rule = decision
        .by
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_else(|| "auto mTLS".into());
    match (decision.tls.as_str(), ep.sidecar, server.mode) {
        ("DISABLE" | "SIMPLE", true, Some(ServerMode::Strict)) => Some(format!(
            "clients in {} send {} to {fqdn}:{} ({rule}) but {ep_name} accepts only mTLS ({server_by})",
            client.namespace,
            if decision.tls == "DISABLE" {
                "plaintext"
            } else {
                "non-mesh TLS"
            },
            port.port
        )),
        ("ISTIO_MUTUAL", false, _) => Some(format!(
            "clients in {} send mTLS to {fqdn}:{} ({rule}) but {ep_name} has no sidecar to terminate it",
            client.namespace, port.port
        )),
        ("ISTIO_MUTUAL", true, Some(ServerMode::Disable)) => Some(format!(
            "clients in {} send mTLS to {fqdn}:{} ({rule}) but {ep_name} accepts only plaintext ({server_by})",
            client.namespace, port.port
        )),
        _ => None,
    }
}
