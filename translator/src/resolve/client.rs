//! Client side: which DestinationRule decides a client's TLS towards a
//! service port, and, when none does, auto mTLS per endpoint.
//!
//! Rules for one host are merged first (see [`super::merge`]). Lookup then
//! follows Istio's `PushContext.destinationRule` (push_context.go), step by
//! step; the first step whose index has a host match (the exact host, else
//! the most specific wildcard) ends the search:
//! 1. the client's namespace: every rule visible there, private or public.
//!    A client in the root namespace reads the root namespace's private
//!    rules here instead, so a root rule exported only to `.` comes first
//!    for it;
//! 2. the service's namespace: rules exported to the client's namespace
//!    (a host match none of whose entries is exported there goes on);
//! 3. the root namespace: the same.
//!
//! From the entries of that step, Istio's `SidecarScope.DestinationRule`
//! (sidecar.go) picks one: the first rule with a `workloadSelector` that
//! matches the client (selector rules only apply in their own namespace),
//! else the last entry without selector, else none. So a step-1 host match
//! made only of selector rules for other workloads leaves the client with
//! no rule at all, as in Istio.
//!
//! Within the rule: a `portLevelSettings` entry for the service port
//! replaces the top-level settings wholesale. `credentialName` with SIMPLE
//! or MUTUAL on a rule without `workloadSelector` builds no TLS for sidecars
//! (istiod's `buildUpstreamClusterTLSContext`, cluster_tls.go, returns
//! nothing so sidecars without access to the Secret do not wait for it), so
//! the client sends plaintext.
//!
//! Auto mTLS (no rule sets `tls`) is decided per endpoint and per target
//! port: mTLS iff the endpoint has a sidecar and its effective server mode
//! for that port is not DISABLE. This deliberately differs from istiod,
//! which gates on the namespace mode and so misses workload STRICT under a
//! mesh DISABLE (istio/istio#56084).

use super::merge::{IndexKind, MergedId, MergedRule, RuleIndex};
use crate::diag::Diagnostic;
use crate::model::{ClientTls, ClientTlsMode, Labels, Mesh, ObjectRef, index_labels_match};
use std::sync::Arc;

/// How the client uses a `credentialName`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// On a rule without `workloadSelector`: ignored for sidecars, and with
    /// it the whole TLS origination (istiod's cluster_tls.go).
    IgnoredWithoutSelector(String),
    /// On a rule with a `workloadSelector`: the sidecar asks for this SDS
    /// secret (`kubernetes://NAME`), which this control plane does not
    /// serve yet.
    SdsSecret(String),
    /// MUTUAL with neither `clientCertificate` and `privateKey` nor a
    /// `credentialName` (validation refuses it, but a source that does not
    /// validate may hand it over): istiod's `constructUpstreamTLS` fails, and
    /// the cluster goes without TLS.
    Missing,
}

impl Credential {
    /// Whether the cluster gets no TLS at all because of it.
    pub fn drops_tls(&self) -> bool {
        matches!(
            self,
            Credential::IgnoredWithoutSelector(_) | Credential::Missing
        )
    }
}

/// What a client sidecar sends to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Sends {
    /// Istio mutual TLS with the workload certificate.
    #[serde(rename = "mTLS")]
    Mtls,
    #[serde(rename = "plaintext")]
    Plaintext,
    /// TLS without a client certificate (DestinationRule SIMPLE).
    #[serde(rename = "TLS (SIMPLE)")]
    Simple,
    /// TLS with the rule's client certificate (DestinationRule MUTUAL).
    #[serde(rename = "TLS (MUTUAL)")]
    Mutual,
}

impl Sends {
    pub fn as_str(self) -> &'static str {
        match self {
            Sends::Mtls => "mTLS",
            Sends::Plaintext => "plaintext",
            Sends::Simple => "TLS (SIMPLE)",
            Sends::Mutual => "TLS (MUTUAL)",
        }
    }
}

/// The client-side decision for one (client group, service port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientDecision {
    /// `None`: auto mTLS decides per endpoint.
    pub tls: Option<ClientTls>,
    /// The rule whose `trafficPolicy` decided, else the merged rule's base
    /// (also set when it left TLS to auto mTLS).
    pub by: Option<ObjectRef>,
    /// The merged rule, in [`RuleIndex::merged`].
    pub rule: Option<MergedId>,
    /// Every rule merged into it, base first.
    pub from: Vec<ObjectRef>,
    /// Whether a `portLevelSettings` entry decided.
    pub port_level: bool,
    /// What happens to a `credentialName` in `tls`.
    pub credential: Option<Credential>,
}

impl ClientDecision {
    pub const AUTO: ClientDecision = ClientDecision {
        tls: None,
        by: None,
        rule: None,
        from: Vec::new(),
        port_level: false,
        credential: None,
    };

    /// What the client sends to an endpoint to which auto mTLS would (or
    /// would not) use mTLS.
    pub fn sends(&self, auto_mtls: bool) -> Sends {
        let Some(tls) = &self.tls else {
            return if auto_mtls {
                Sends::Mtls
            } else {
                Sends::Plaintext
            };
        };
        match tls.mode() {
            ClientTlsMode::Disable => Sends::Plaintext,
            ClientTlsMode::IstioMutual => Sends::Mtls,
            _ if self.credential.as_ref().is_some_and(Credential::drops_tls) => Sends::Plaintext,
            ClientTlsMode::Simple => Sends::Simple,
            ClientTlsMode::Mutual => Sends::Mutual,
        }
    }

    /// The decision's TLS mode as shown: `AUTO`, or the rule's mode.
    pub fn tls_name(&self) -> &'static str {
        self.tls.as_ref().map_or("AUTO", |t| t.mode().as_str())
    }

    /// A sentence about `credentialName`, when the rule has one.
    pub fn credential_note(&self) -> Option<String> {
        match self.credential.as_ref()? {
            Credential::IgnoredWithoutSelector(name) => Some(format!(
                "credentialName {name:?} on a DestinationRule without workloadSelector is ignored for sidecars, and with it the TLS origination (as istiod does): the client sends plaintext"
            )),
            Credential::SdsSecret(name) => Some(format!(
                "credentialName {name:?}: the sidecar asks for SDS secret kubernetes://{name}, which this control plane does not serve yet, so TLS to this port fails"
            )),
            Credential::Missing => Some(
                "MUTUAL without clientCertificate and privateKey (or credentialName): istiod cannot build the TLS context and the cluster goes without, so the client sends plaintext".into(),
            ),
        }
    }
}

/// One step of the lookup, for explanations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupStep {
    pub namespace: String,
    pub scope: IndexKind,
    /// The host the step's index matched (exact or wildcard), if any.
    pub matched_host: Option<String>,
    /// The entries for that host, each with whether it is visible to the
    /// client (exported to its namespace; always true for local indexes).
    pub entries: Vec<(MergedId, bool)>,
    /// Whether the search ended at this step.
    pub ended: bool,
}

/// Destination rules merged and indexed once per translation.
pub struct ClientPolicies<'m> {
    mesh: &'m Mesh,
    rules: Arc<RuleIndex>,
}

impl<'m> ClientPolicies<'m> {
    /// Merges and indexes the mesh's rules; what merging drops goes to
    /// `diags`.
    pub fn new(mesh: &'m Mesh, diags: &mut Vec<Diagnostic>) -> ClientPolicies<'m> {
        ClientPolicies {
            mesh,
            rules: Arc::new(RuleIndex::build(mesh, diags)),
        }
    }

    /// Over an index built before (by the translation of `mesh`).
    pub fn with_index(mesh: &'m Mesh, rules: Arc<RuleIndex>) -> ClientPolicies<'m> {
        ClientPolicies { mesh, rules }
    }

    pub fn index(&self) -> &Arc<RuleIndex> {
        &self.rules
    }

    pub fn merged(&self, id: MergedId) -> Option<&MergedRule> {
        self.rules.get(id)
    }

    /// The merged rules with a workload selector matching `labels` that a
    /// client in `namespace` can pick: the part of the lookup that differs
    /// between clients of one namespace.
    pub fn selector_rules_for(&self, namespace: &str, labels: &Labels) -> Vec<MergedId> {
        let (scope, ns) = self.first_step(namespace);
        let Some(index) = self.rules.index(scope, ns) else {
            return Vec::new();
        };
        let mut out: Vec<MergedId> = index
            .entries()
            .filter(|&id| {
                self.rules.get(id).is_some_and(|m| {
                    m.namespace == namespace
                        && m.selector
                            .as_ref()
                            .is_some_and(|s| index_labels_match(s, labels))
                })
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Step 1 reads the client namespace's local index, or the root
    /// namespace's private one for a client in the root namespace.
    fn first_step<'a>(&self, client_ns: &'a str) -> (IndexKind, &'a str) {
        if client_ns == self.rules.root_namespace() {
            (IndexKind::RootPrivate, client_ns)
        } else {
            (IndexKind::NamespaceLocal, client_ns)
        }
    }

    /// Istio's `PushContext.destinationRule`: the entries of the first step
    /// with a host match, and every step taken.
    pub fn lookup(&self, client_ns: &str, si: usize) -> (Vec<MergedId>, Vec<LookupStep>) {
        let mut steps = Vec::new();
        let (Some(service), fqdn) = (self.mesh.services.get(si), self.mesh.service_fqdn(si)) else {
            return (Vec::new(), steps);
        };
        let root = self.rules.root_namespace().to_string();
        let (scope, ns) = self.first_step(client_ns);
        let plan = [
            (scope, ns.to_string()),
            (IndexKind::Exported, service.namespace.clone()),
            (IndexKind::Exported, root),
        ];
        for (scope, ns) in plan {
            let mut step = LookupStep {
                namespace: ns.clone(),
                scope,
                matched_host: None,
                entries: Vec::new(),
                ended: false,
            };
            if let Some((host, list)) = self
                .rules
                .index(scope, &ns)
                .and_then(|i| i.most_specific(fqdn))
            {
                step.matched_host = Some(host.to_string());
                step.entries = list
                    .iter()
                    .map(|&id| {
                        let visible = scope != IndexKind::Exported
                            || self.rules.get(id).is_some_and(|m| m.exported_to(client_ns));
                        (id, visible)
                    })
                    .collect();
                let visible: Vec<MergedId> = step
                    .entries
                    .iter()
                    .filter(|(_, v)| *v)
                    .map(|(id, _)| *id)
                    .collect();
                if !visible.is_empty() {
                    step.ended = true;
                    steps.push(step);
                    return (visible, steps);
                }
            }
            steps.push(step);
        }
        (Vec::new(), steps)
    }

    /// Istio's `SidecarScope.DestinationRule`: the first selector rule of
    /// the client's namespace that selects it (`selected`, from
    /// [`Self::selector_rules_for`]), else the last rule without selector.
    pub fn pick(&self, candidates: &[MergedId], selected: &[MergedId]) -> Option<MergedId> {
        let mut catch_all = None;
        for &id in candidates {
            let Some(m) = self.rules.get(id) else {
                continue;
            };
            if m.selector.is_none() {
                catch_all = Some(id);
            } else if selected.contains(&id) {
                return Some(id);
            }
        }
        catch_all
    }

    /// The merged rule a client in `client_ns` (matching the selector rules
    /// in `selected`) uses for service `si`.
    pub fn rule_for(&self, client_ns: &str, selected: &[MergedId], si: usize) -> Option<MergedId> {
        let (candidates, _) = self.lookup(client_ns, si);
        self.pick(&candidates, selected)
    }

    /// The decision for one service port, given the merged rule that
    /// applies.
    pub fn decide(&self, rule: Option<MergedId>, service_port: u16) -> ClientDecision {
        let Some(merged) = rule.and_then(|i| self.rules.get(i)) else {
            return ClientDecision::AUTO;
        };
        let drs = &self.mesh.destination_rules;
        let from: Vec<ObjectRef> = merged
            .from
            .iter()
            .filter_map(|&i| drs.get(i).map(|d| d.object_ref()))
            .collect();
        let policy_rule = merged.policy_from.and_then(|i| drs.get(i));
        let policy = policy_rule.and_then(|d| d.traffic_policy.as_ref());
        let (tls, port_level) = match policy {
            None => (None, false),
            Some(p) => match p.port_tls.get(&service_port) {
                Some(port_tls) => (port_tls.clone(), true),
                None => (p.tls.clone(), false),
            },
        };
        let credential = tls.as_ref().and_then(|t| {
            if !matches!(t.mode(), ClientTlsMode::Simple | ClientTlsMode::Mutual) {
                return None;
            }
            let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            let Some(name) = t.credential_name.as_deref().filter(|n| !n.is_empty()) else {
                let files = set(&t.client_certificate) && set(&t.private_key);
                return (t.mode() == ClientTlsMode::Mutual && !files)
                    .then_some(Credential::Missing);
            };
            // ConfigMaps are not privileged, so istiod keeps those for
            // every sidecar; this control plane serves neither.
            Some(
                if merged.selector.is_none() && !name.starts_with("configmap://") {
                    Credential::IgnoredWithoutSelector(name.to_string())
                } else {
                    Credential::SdsSecret(name.trim_start_matches("kubernetes://").to_string())
                },
            )
        });
        ClientDecision {
            tls,
            by: policy_rule
                .or_else(|| merged.from.first().and_then(|&i| drs.get(i)))
                .map(|d| d.object_ref()),
            rule,
            from,
            port_level,
            credential,
        }
    }
}

/// Report what rules do that users might not expect: `exportTo: ["~"]`
/// (no one sees the rule; istiod's webhook would have refused it), and
/// `credentialName`, which sidecars either ignore or cannot get here.
pub fn report_rules(mesh: &Mesh, diags: &mut Vec<Diagnostic>) {
    for dr in &mesh.destination_rules {
        if dr.workload_selector.is_none() && dr.export_to.iter().any(|e| e == "~") {
            diags.push(Diagnostic::warning(
                dr.object_ref(),
                Some("spec.exportTo".into()),
                "\"~\" exports the rule to no namespace, its own included, so no client uses it (istiod's webhook refuses \"~\" on a DestinationRule)".into(),
            ));
        }
        let Some(policy) = &dr.traffic_policy else {
            continue;
        };
        let top = policy
            .tls
            .iter()
            .map(|t| ("spec.trafficPolicy.tls".to_string(), t));
        let ports = policy.port_tls.iter().filter_map(|(port, t)| {
            t.as_ref().map(|t| {
                (
                    format!("spec.trafficPolicy.portLevelSettings[port {port}].tls"),
                    t,
                )
            })
        });
        for (field, tls) in top.chain(ports) {
            let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) else {
                if tls.mode() == ClientTlsMode::Mutual
                    && !(set(&tls.client_certificate) && set(&tls.private_key))
                {
                    diags.push(Diagnostic::warning(
                        dr.object_ref(),
                        Some(format!("{field}.clientCertificate")),
                        format!(
                            "MUTUAL needs clientCertificate and privateKey (or credentialName); without them no TLS is built and clients of {} send plaintext, as with istiod",
                            dr.host
                        ),
                    ));
                }
                continue;
            };
            if !matches!(tls.mode(), ClientTlsMode::Simple | ClientTlsMode::Mutual) {
                continue;
            }
            let message = if dr.workload_selector.is_none() && !name.starts_with("configmap://") {
                format!(
                    "credentialName on a rule without workloadSelector is ignored for sidecars, as istiod does (only gateways, or rules with a workloadSelector, may read the Secret): clients of {} get no TLS origination and send plaintext; add a workloadSelector, or use clientCertificate and privateKey files",
                    dr.host
                )
            } else {
                format!(
                    "credentialName {name:?}: this control plane does not serve Kubernetes Secrets (or ConfigMaps) yet, so the selected sidecars never receive kubernetes://{} and TLS to {} fails; use clientCertificate and privateKey files",
                    name.trim_start_matches("kubernetes://"),
                    dr.host
                )
            };
            diags.push(Diagnostic::warning(
                dr.object_ref(),
                Some(format!("{field}.credentialName")),
                message,
            ));
        }
    }
}
