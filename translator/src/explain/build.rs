//! Computing an [`Explanation`] from a translation.

use super::data::{
    AppliedRule, Candidate, ClientSide, EndpointView, ExplainError, Explanation, LookupStep,
    ServiceSide, server_by_text,
};
use crate::model::{Mesh, ObjectRef, Workload};
use crate::resolve::{ClientDecision, ClientPolicies, IndexKind, MergedId, Sends, ServerMode};
use crate::translate::{EndpointFacts, Failure, Translation, failure};

fn split_last(s: &str, sep: char) -> Option<(&str, &str)> {
    s.rsplit_once(sep)
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
}

/// The workload `name.namespace` names: a pod, else the first replica of a
/// Deployment (as `up` names clients).
pub fn find_workload<'m>(
    mesh: &'m Mesh,
    from: &str,
) -> Result<(usize, &'m Workload), ExplainError> {
    let (name, ns) = split_last(from, '.').ok_or_else(|| ExplainError::BadFrom(from.into()))?;
    mesh.workload(ns, name)
        .or_else(|| {
            mesh.index
                .workloads_in(ns)
                .iter()
                .filter_map(|&i| mesh.workloads.get(i).map(|w| (i, w)))
                .find(|(_, w)| w.owner.as_deref() == Some(name))
        })
        .ok_or_else(|| ExplainError::UnknownWorkload(from.into(), name.into(), ns.into()))
}

/// The service port `name.namespace:port` names.
pub fn find_service_port(mesh: &Mesh, to: &str) -> Result<(usize, u16), ExplainError> {
    let bad = || ExplainError::BadTo(to.into());
    let (svc, port) = split_last(to, ':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let (name, ns) = split_last(svc, '.').ok_or_else(bad)?;
    let si = mesh
        .index
        .services_in(ns)
        .iter()
        .copied()
        .find(|&i| mesh.services.get(i).is_some_and(|s| s.name == name))
        .ok_or_else(|| ExplainError::UnknownService(to.into(), name.into(), ns.into()))?;
    let service = mesh.services.get(si).ok_or_else(bad)?;
    if !service.ports.iter().any(|p| p.port == port) {
        let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
        return Err(ExplainError::UnknownPort(
            to.into(),
            format!("{name}.{ns}"),
            port,
            ports.join(", "),
        ));
    }
    Ok((si, port))
}

/// Explains the request `from` (`workload.namespace`) makes to `to`
/// (`service.namespace:port`), from the translation of `mesh`.
pub fn explain(
    mesh: &Mesh,
    t: &Translation,
    from: &str,
    to: &str,
) -> Result<Explanation, ExplainError> {
    let (wi, _) = find_workload(mesh, from)?;
    let (si, port) = find_service_port(mesh, to)?;
    Ok(explain_request(mesh, t, wi, si, port, from, to))
}

fn mode_name(m: ServerMode) -> &'static str {
    match m {
        ServerMode::Strict => "STRICT",
        ServerMode::Permissive => "PERMISSIVE",
        ServerMode::Disable => "DISABLE",
    }
}

/// [`explain`] for a workload and service port already found.
pub fn explain_request(
    mesh: &Mesh,
    t: &Translation,
    wi: usize,
    si: usize,
    port: u16,
    from: &str,
    to: &str,
) -> Explanation {
    let client = mesh.workloads.get(wi);
    let service = mesh.services.get(si);
    let sp = service.and_then(|s| s.ports.iter().find(|p| p.port == port));
    let pi = service
        .and_then(|s| s.ports.iter().position(|p| p.port == port))
        .unwrap_or(0);
    let fqdn = mesh.service_fqdn(si).to_string();
    let sidecar = client.is_some_and(|w| w.sidecar);
    let client_ns = client.map(|w| w.namespace.as_str()).unwrap_or("");
    let eps: &[EndpointFacts] = t
        .endpoint_specs
        .get(si)
        .and_then(|v| v.get(pi))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let clients = ClientPolicies::with_index(mesh, t.rules.clone());
    let group = t.client_groups.iter().find(|g| g.clients.contains(&wi));
    let (lookup, decision, applied) = if sidecar {
        let selected = group.map(|g| g.selected.as_slice()).unwrap_or(&[]);
        let (candidates, steps) = clients.lookup(client_ns, si);
        let picked = clients.pick(&candidates, selected);
        let decision = clients.decide(picked, port);
        let lookup = steps
            .iter()
            .map(|s| lookup_step(mesh, &clients, s, client_ns, selected, picked))
            .collect();
        let applied = picked.map(|id| applied_rule(mesh, &clients, id, &decision));
        (lookup, decision, applied)
    } else {
        (Vec::new(), ClientDecision::AUTO, None)
    };
    let endpoints: Vec<EndpointView> = eps
        .iter()
        .map(|e| endpoint_view(mesh, &decision, sidecar, e))
        .collect();
    let scope = group.and_then(|g| g.scope.as_deref());
    let scoped_by = scope.map(|s| s.by.clone());
    let (outcome, reason) = match scope {
        Some(s) if sidecar && !s.imports(si, port) => (
            "no route: out of the client's Sidecar scope".to_string(),
            Some(format!(
                "{} does not import {fqdn}:{port}, so the client sidecar has no cluster, endpoints or route for it (a request gets 404 NR from the outbound listener)",
                s.by
            )),
        ),
        _ => (
            overall(&endpoints),
            client.and_then(|c| reason(mesh, c, &fqdn, port, &decision, eps)),
        ),
    };
    Explanation {
        from: from.to_string(),
        to: to.to_string(),
        client: ClientSide {
            workload: client
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .unwrap_or_default(),
            service_account: client
                .map(|w| w.service_account.clone())
                .unwrap_or_default(),
            sidecar,
            labels: client.map(|w| w.labels.clone()).unwrap_or_default(),
            scoped_by,
        },
        service: ServiceSide {
            fqdn,
            port,
            port_name: sp.map(|p| p.name.clone()).unwrap_or_default(),
            protocol: sp.map_or(crate::model::Protocol::Http, |p| p.protocol),
        },
        lookup,
        destination_rule: applied,
        endpoints,
        outcome,
        reason,
    }
}

fn refs(mesh: &Mesh, idx: &[usize]) -> Vec<ObjectRef> {
    idx.iter()
        .filter_map(|&i| mesh.destination_rules.get(i).map(|d| d.object_ref()))
        .collect()
}

fn lookup_step(
    mesh: &Mesh,
    clients: &ClientPolicies<'_>,
    step: &crate::resolve::LookupStep,
    client_ns: &str,
    selected: &[MergedId],
    picked: Option<MergedId>,
) -> LookupStep {
    let searched = match step.scope {
        IndexKind::NamespaceLocal => format!(
            "client namespace {} (every rule visible there)",
            step.namespace
        ),
        IndexKind::RootPrivate => format!(
            "root namespace {} (its private rules: the client is in the root namespace)",
            step.namespace
        ),
        IndexKind::Exported if step.namespace == clients.index().root_namespace() => format!(
            "root namespace {} (rules exported to {client_ns})",
            step.namespace
        ),
        IndexKind::Exported => format!(
            "service namespace {} (rules exported to {client_ns})",
            step.namespace
        ),
    };
    let picked_is_selector = picked
        .and_then(|p| clients.merged(p))
        .is_some_and(|m| m.selector.is_some());
    let candidates = step
        .entries
        .iter()
        .filter_map(|&(id, visible)| {
            let m = clients.merged(id)?;
            let verdict = if !visible {
                format!("not exported to {client_ns}")
            } else if !step.ended {
                "not reached".into()
            } else if Some(id) == picked {
                "applies".into()
            } else if m.selector.is_some() && !selected.contains(&id) {
                "its workloadSelector does not select the client".into()
            } else if m.selector.is_some() {
                "an earlier workloadSelector rule applies".into()
            } else if picked_is_selector {
                "a workloadSelector rule that selects the client comes first".into()
            } else {
                "a later entry for the same host applies (istiod takes the last one)".into()
            };
            Some(Candidate {
                rules: refs(mesh, &m.from),
                selector: m.selector.clone(),
                export_to: m.export_to.iter().cloned().collect(),
                verdict,
            })
        })
        .collect();
    LookupStep {
        searched,
        host: step.matched_host.clone(),
        candidates,
        ended: step.ended,
    }
}

fn applied_rule(
    mesh: &Mesh,
    clients: &ClientPolicies<'_>,
    id: MergedId,
    decision: &ClientDecision,
) -> AppliedRule {
    let m = clients.merged(id);
    let tls = decision.tls.as_ref();
    let verify = tls.and_then(|t| {
        use crate::model::ClientTlsMode as M;
        if !matches!(t.mode(), M::Simple | M::Mutual) {
            return None;
        }
        Some(if t.insecure_skip_verify {
            "off (insecureSkipVerify)".to_string()
        } else if decision.credential.is_some() {
            "against the credential's CA (SDS)".to_string()
        } else if let Some(ca) = t.ca_certificates.as_deref().filter(|c| !c.is_empty()) {
            format!("against caCertificates {ca}")
        } else {
            format!(
                "against the trust bundle {} (no caCertificates)",
                mesh.config.trust_bundle
            )
        })
    });
    AppliedRule {
        rules: m.map(|m| refs(mesh, &m.from)).unwrap_or_default(),
        host: m.map(|m| m.host.clone()).unwrap_or_default(),
        selector: m.and_then(|m| m.selector.clone()),
        traffic_policy_from: m
            .and_then(|m| m.policy_from)
            .and_then(|i| mesh.destination_rules.get(i))
            .map(|d| d.object_ref()),
        tls: decision.tls_name().to_string(),
        port_level: decision.port_level,
        verify,
        sni: tls.and_then(|t| t.sni.clone()),
        subject_alt_names: tls.map(|t| t.subject_alt_names.clone()).unwrap_or_default(),
        subsets: m
            .map(|m| m.subsets.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default(),
        note: decision.credential_note(),
    }
}

fn endpoint_view(
    mesh: &Mesh,
    decision: &ClientDecision,
    client_sidecar: bool,
    e: &EndpointFacts,
) -> EndpointView {
    let (sends, why) = if client_sidecar {
        let sends = decision.sends(e.spec.mtls);
        (sends, crate::translate::why(decision, e, sends))
    } else {
        (
            Sends::Plaintext,
            "it has no sidecar, so the application's own plaintext goes out".to_string(),
        )
    };
    let server_mode = e.server.as_ref().map(|d| d.mode);
    let outcome = match &decision.credential {
        Some(crate::resolve::Credential::SdsSecret(name)) if client_sidecar => format!(
            "503: the sidecar never receives SDS secret kubernetes://{name} (no Secrets are served yet)"
        ),
        _ => outcome(client_sidecar, sends, e),
    };
    EndpointView {
        workload: mesh
            .workloads
            .get(e.wi)
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .unwrap_or_default(),
        ip: e.spec.ip,
        port: e.spec.port,
        sidecar: e.sidecar,
        client_sends: sends,
        why,
        server_mode,
        server_scope: e.server.as_ref().map(|d| d.scope),
        server_by: e.server.as_ref().and_then(|d| d.by.clone()),
        outcome,
    }
}

/// The predicted outcome at one endpoint.
fn outcome(client_sidecar: bool, sends: Sends, e: &EndpointFacts) -> String {
    let server = e.server.as_ref().map(|d| d.mode);
    if !client_sidecar {
        return match server {
            Some(ServerMode::Strict) => "reset: server STRICT, client sends plaintext".into(),
            _ => "200 plain".into(),
        };
    }
    match failure(sends, e) {
        Some(Failure::NotMtlsToStrict) if sends == Sends::Plaintext => {
            "503: server STRICT, client sidecar sends plaintext".into()
        }
        Some(Failure::NotMtlsToStrict) => format!(
            "503: server STRICT, client sidecar sends {} without a mesh certificate",
            sends.as_str()
        ),
        Some(Failure::MtlsToNoSidecar) => "503: client sends mTLS, server has no sidecar".into(),
        Some(Failure::MtlsToDisable) => "503: client sends mTLS, server DISABLE".into(),
        None => match sends {
            Sends::Mtls => "200 mTLS".into(),
            Sends::Plaintext => "200 plain".into(),
            Sends::Simple | Sends::Mutual => format!(
                "{} reaches the application on port {}{}: works only if it serves TLS there",
                sends.as_str(),
                e.spec.port,
                match server {
                    Some(m) => format!(" through its sidecar ({})", mode_name(m)),
                    None => String::new(),
                }
            ),
        },
    }
}

fn overall(endpoints: &[EndpointView]) -> String {
    let mut outcomes: Vec<&str> = endpoints.iter().map(|e| e.outcome.as_str()).collect();
    outcomes.dedup();
    match outcomes.as_slice() {
        [] => "no endpoint: the service selects no ready workload with this port".into(),
        [one] => (*one).to_string(),
        many => {
            let mut distinct = many.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() == 1 {
                distinct[0].to_string()
            } else {
                format!("mixed: {}", distinct.join("; "))
            }
        }
    }
}

/// Why a request fails, in one sentence naming the policies (what `up`
/// prints under a failed cell); `None` when every endpoint works.
fn reason(
    mesh: &Mesh,
    client: &Workload,
    fqdn: &str,
    port: u16,
    decision: &ClientDecision,
    eps: &[EndpointFacts],
) -> Option<String> {
    eps.iter().find_map(|e| {
        let ep = mesh.workloads.get(e.wi)?;
        let ep_name = format!("{}/{}:{}", ep.namespace, ep.name, e.spec.port);
        let server = e.server.as_ref();
        let server_by = server_by_text(
            server.and_then(|d| d.by.as_ref()),
            server.map(|d| d.scope),
        );
        if !client.sidecar {
            return (server.map(|d| d.mode) == Some(ServerMode::Strict)).then(|| {
                format!(
                    "{ep_name} accepts only mTLS ({server_by}) and {}/{} has no sidecar, so it sends plaintext",
                    client.namespace,
                    client.display_name()
                )
            });
        }
        let sends = decision.sends(e.spec.mtls);
        let why = crate::translate::why(decision, e, sends);
        let who = format!("clients in {}", client.namespace);
        Some(match failure(sends, e)? {
            Failure::NotMtlsToStrict => format!(
                "{who} send {} to {fqdn}:{port} ({why}) but {ep_name} accepts only mTLS ({server_by})",
                if sends == Sends::Plaintext {
                    "plaintext"
                } else {
                    "non-mesh TLS"
                }
            ),
            Failure::MtlsToNoSidecar => format!(
                "{who} send mTLS to {fqdn}:{port} ({why}) but {ep_name} has no sidecar to terminate it"
            ),
            Failure::MtlsToDisable => format!(
                "{who} send mTLS to {fqdn}:{port} ({why}) but {ep_name} accepts only plaintext ({server_by})"
            ),
        })
    })
}
