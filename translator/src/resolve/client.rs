//! Client side: which DestinationRule decides a client's TLS towards a
//! service port, and, when none does, auto mTLS per endpoint.
//!
//! Lookup, as Istio's `PushContext.destinationRule`: the client's namespace
//! (any rule there, private or public; rules with a `workloadSelector` only
//! for the workloads they select), then the service's namespace (rules
//! exported to the client's namespace), then the root namespace (same). The
//! first namespace with a host match wins; there is no inheritance across
//! namespaces. Within a namespace an exact host beats the most specific
//! wildcard, rules with a workload selector come first, then the oldest.
//! Port-level settings replace the top-level ones wholesale.
//!
//! Auto mTLS (no rule sets `tls`) is decided per endpoint and per target
//! port: mTLS iff the endpoint has a sidecar and its effective server mode
//! for that port is not DISABLE. This deliberately differs from istiod,
//! which gates on the namespace mode and so misses workload STRICT under a
//! mesh DISABLE (istio/istio#56084).

use crate::model::{ClientTls, DestinationRule, Labels, Mesh, ObjectRef, index_labels_match};
use std::collections::HashMap;

/// The client-side decision for one (client group, service port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDecision {
    /// `None`: auto mTLS decides per endpoint.
    pub tls: Option<ClientTls>,
    /// The rule that decided (also set when it left TLS to auto mTLS).
    pub by: Option<ObjectRef>,
    /// Index of that rule in `Mesh::destination_rules`.
    pub rule: Option<usize>,
    /// Whether a `portLevelSettings` entry decided.
    pub port_level: bool,
}

impl ClientDecision {
    pub const AUTO: ClientDecision = ClientDecision {
        tls: None,
        by: None,
        rule: None,
        port_level: false,
    };
}

struct RuleEntry {
    idx: usize,
    /// Resolved host: an FQDN, `*.suffix`, or `*`.
    host: String,
}

/// Destination rules indexed by namespace, hosts resolved once.
pub struct ClientPolicies<'m> {
    mesh: &'m Mesh,
    by_namespace: HashMap<&'m str, Vec<RuleEntry>>,
}

impl<'m> ClientPolicies<'m> {
    pub fn new(mesh: &'m Mesh) -> ClientPolicies<'m> {
        let mut by_namespace: HashMap<&str, Vec<RuleEntry>> = HashMap::new();
        for (idx, dr) in mesh.destination_rules.iter().enumerate() {
            by_namespace
                .entry(dr.meta.namespace.as_str())
                .or_default()
                .push(RuleEntry {
                    idx,
                    host: resolve_host(&dr.host, &dr.meta.namespace, &mesh.config.cluster_domain),
                });
        }
        // Rules with a workload selector first, then oldest first (the input
        // is already oldest first, and the sort is stable).
        for list in by_namespace.values_mut() {
            list.sort_by_key(|e| {
                mesh.destination_rules
                    .get(e.idx)
                    .is_none_or(|d| d.workload_selector.is_none())
            });
        }
        ClientPolicies { mesh, by_namespace }
    }

    /// Indices of rules in `namespace` that have a workload selector
    /// matching `labels`: the part of the lookup that differs between
    /// clients of one namespace.
    pub fn selector_rules_for(&self, namespace: &str, labels: &Labels) -> Vec<usize> {
        self.by_namespace
            .get(namespace)
            .map(|list| {
                list.iter()
                    .filter_map(|e| {
                        let dr = self.mesh.destination_rules.get(e.idx)?;
                        let sel = dr.workload_selector.as_ref()?;
                        index_labels_match(sel, labels).then_some(e.idx)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rule a client in `client_ns` (matching the selector rules in
    /// `selected`) uses for service `si`.
    pub fn rule_for(&self, client_ns: &str, selected: &[usize], si: usize) -> Option<usize> {
        let service = self.mesh.services.get(si)?;
        let fqdn = self.mesh.service_fqdn(si);
        let root = self.mesh.config.root_namespace.as_str();
        let mut seen: Vec<&str> = Vec::with_capacity(3);
        for ns in [client_ns, service.namespace.as_str(), root] {
            if seen.contains(&ns) {
                continue;
            }
            seen.push(ns);
            let Some(list) = self.by_namespace.get(ns) else {
                continue;
            };
            let visible = |e: &&RuleEntry| {
                let Some(dr) = self.mesh.destination_rules.get(e.idx) else {
                    return false;
                };
                if dr.workload_selector.is_some() {
                    // Selector rules are private to their namespace and
                    // apply only to the workloads they select.
                    return ns == client_ns && selected.contains(&e.idx);
                }
                ns == client_ns || exported_to(dr, client_ns)
            };
            if let Some(e) = list.iter().filter(visible).find(|e| e.host == fqdn) {
                return Some(e.idx);
            }
            let best = list
                .iter()
                .filter(visible)
                .filter(|e| wildcard_matches(&e.host, fqdn))
                // Most specific wildcard: the longest suffix; ties keep order.
                .fold(None::<&RuleEntry>, |best, e| match best {
                    Some(b) if b.host.len() >= e.host.len() => Some(b),
                    _ => Some(e),
                });
            if let Some(e) = best {
                return Some(e.idx);
            }
        }
        None
    }

    /// The decision for one service port, given the rule that applies.
    pub fn decide(&self, rule: Option<usize>, service_port: u16) -> ClientDecision {
        let Some(dr) = rule.and_then(|i| self.mesh.destination_rules.get(i)) else {
            return ClientDecision::AUTO;
        };
        let (tls, port_level) = match dr.port_tls.get(&service_port) {
            Some(port_tls) => (port_tls.clone(), true),
            None => (dr.tls.clone(), false),
        };
        ClientDecision {
            tls,
            by: Some(dr.object_ref()),
            rule,
            port_level,
        }
    }
}

/// Report what a rule asks for that this control plane does not do yet, so
/// a user is never left guessing why it has no effect.
pub fn report_unsupported(mesh: &Mesh, diags: &mut Vec<crate::diag::Diagnostic>) {
    for dr in &mesh.destination_rules {
        let top = dr
            .tls
            .iter()
            .map(|t| ("spec.trafficPolicy.tls".to_string(), t));
        let ports = dr.port_tls.iter().filter_map(|(port, t)| {
            t.as_ref().map(|t| {
                (
                    format!("spec.trafficPolicy.portLevelSettings[{port}].tls"),
                    t,
                )
            })
        });
        for (field, tls) in top.chain(ports) {
            if tls.credential_name.is_some() {
                diags.push(crate::diag::Diagnostic::warning(
                    dr.object_ref(),
                    Some(format!("{field}.credentialName")),
                    "credentialName is not supported yet: no client certificate is sent from that Secret; use clientCertificate and privateKey files, or ISTIO_MUTUAL".into(),
                ));
            }
        }
    }
}

/// `exportTo`: empty or `*` is everyone, `.` the rule's own namespace, `~`
/// no one, otherwise the listed namespaces.
fn exported_to(dr: &DestinationRule, client_ns: &str) -> bool {
    if dr.export_to.is_empty() {
        return true;
    }
    dr.export_to.iter().any(|e| match e.as_str() {
        "*" => true,
        "." => dr.meta.namespace == client_ns,
        "~" => false,
        ns => ns == client_ns,
    })
}

/// Short names (no dot) are relative to the rule's namespace; everything
/// else is taken literally, as Istio's `ResolveShortnameToFQDN` does.
fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host == "*" || host.starts_with("*.") || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

fn wildcard_matches(pattern: &str, fqdn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    pattern
        .strip_prefix('*')
        .is_some_and(|suffix| suffix.starts_with('.') && fqdn.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_host_is_relative_to_the_rule_namespace() {
        assert_eq!(
            resolve_host("httpbin", "bar", "cluster.local"),
            "httpbin.bar.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("httpbin.bar", "foo", "cluster.local"),
            "httpbin.bar"
        );
        assert_eq!(resolve_host("*.local", "foo", "cluster.local"), "*.local");
    }

    #[test]
    fn wildcards_match_by_suffix() {
        assert!(wildcard_matches("*.local", "httpbin.bar.svc.cluster.local"));
        assert!(wildcard_matches("*", "x.y"));
        assert!(!wildcard_matches(
            "*.bar.svc.cluster.local",
            "httpbin.foo.svc.cluster.local"
        ));
    }
}
