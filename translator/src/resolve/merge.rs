//! DestinationRules merged per host, and the three indexes the client lookup
//! reads: Istio's `PushContext.setDestinationRules` and `mergeDestinationRule`
//! (pilot/pkg/model/push_context.go, destination_rule.go).
//!
//! Order: rules with a `workloadSelector` first, then oldest first
//! (creation time, then name, then namespace), as Istio's
//! `sortConfigBySelectorAndCreationTime`.
//!
//! Visibility (`exportTo`; a rule with a `workloadSelector` counts as `["."]`):
//! - namespace-local index of the rule's own namespace: `exportTo` empty, or
//!   holding `*`, `.` or the namespace's own name. So `["~"]`, or a list of
//!   other namespaces only, hides a rule in its own namespace too;
//! - exported index of its namespace: unless the rule is private, that is
//!   its `exportTo` is exactly one entry, `.` or its own namespace. A client
//!   sees an exported rule when `exportTo` is empty or holds `*` or the
//!   client's namespace (`~` matches no one);
//! - root-private index: private rules of the root namespace, which only
//!   clients in the root namespace search (first).
//!
//! Merging, within one index and one resolved host (an exact host and a
//! wildcard never merge): the first rule is the base. A later rule merges
//! into an earlier entry when their `exportTo` sets are equal, or the later
//! set is a superset of a non-empty earlier one (Istio's
//! `ENABLE_ENHANCED_DESTINATIONRULE_MERGE`, on by default); selector rules
//! merge only with rules of the same selector. Merging appends the subsets
//! whose names are new (a duplicate name is dropped, with a warning), and
//! adopts the newer rule's whole `trafficPolicy` only if the merged rule has
//! none. A rule that did not merge with every entry is kept as an entry of
//! its own too.
//!
//! One deliberate difference: a rule without selector that merges into a
//! selector rule's entry is always kept as an entry of its own as well.
//! istiod drops it when both have the same `exportTo` (e.g. both `["."]`),
//! so clients the selector does not match lose the catch-all rule
//! (istio/istio#58322, open).

use crate::diag::Diagnostic;
use crate::model::{DestinationRule, Labels, Mesh};
use std::collections::{BTreeMap, BTreeSet};

/// Index of a [`MergedRule`] in [`RuleIndex::merged`].
pub type MergedId = usize;

/// Istio's `ConsolidatedDestRule`: one or more rules for one host, merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedRule {
    /// Resolved host: an FQDN, `*.suffix` or `*`.
    pub host: String,
    /// The namespace of its rules.
    pub namespace: String,
    /// The base rule's `exportTo` (`.` for a rule with a selector).
    pub export_to: BTreeSet<String>,
    /// The base rule's selector.
    pub selector: Option<Labels>,
    /// Every rule that took part (indices into `Mesh::destination_rules`),
    /// base first, in merge order: Istio's `from`.
    pub from: Vec<usize>,
    /// The rule whose `trafficPolicy` the merged rule carries, if any.
    pub policy_from: Option<usize>,
    /// Subset names, each with the rule it came from.
    pub subsets: Vec<(String, usize)>,
}

impl MergedRule {
    fn new(idx: usize, dr: &DestinationRule, host: String, export_to: BTreeSet<String>) -> Self {
        MergedRule {
            host,
            namespace: dr.meta.namespace.clone(),
            export_to,
            selector: dr.workload_selector.clone(),
            from: vec![idx],
            policy_from: dr.traffic_policy.is_some().then_some(idx),
            subsets: dr.subsets.iter().map(|s| (s.name.clone(), idx)).collect(),
        }
    }

    /// Whether a client in `client_ns` may use this entry of an exported
    /// index (Istio's `getExportedDestinationRuleFromNamespace`).
    pub fn exported_to(&self, client_ns: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.contains("*")
            || self.export_to.contains(client_ns)
    }
}

/// Merged rules of one index, by resolved host (Istio's
/// `consolidatedDestRules`). Sorted maps keep the output deterministic.
#[derive(Debug, Default)]
pub struct HostIndex {
    specific: BTreeMap<String, Vec<MergedId>>,
    wildcard: BTreeMap<String, Vec<MergedId>>,
}

impl HostIndex {
    /// Istio's `MostSpecificHostMatch`: the exact host, else the wildcard
    /// with the longest matching suffix.
    pub fn most_specific(&self, fqdn: &str) -> Option<(&str, &[MergedId])> {
        if let Some((h, list)) = self.specific.get_key_value(fqdn) {
            return Some((h.as_str(), list.as_slice()));
        }
        self.wildcard
            .iter()
            .filter(|(h, _)| wildcard_matches(h, fqdn))
            .max_by_key(|(h, _)| h.len())
            .map(|(h, list)| (h.as_str(), list.as_slice()))
    }

    /// Every merged entry, for listing.
    pub fn entries(&self) -> impl Iterator<Item = MergedId> + '_ {
        self.specific
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .copied()
    }
}

/// Which index a lookup step reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// Every rule visible in its own namespace (private or public).
    NamespaceLocal,
    /// Rules exported beyond their namespace.
    Exported,
    /// Private rules of the root namespace.
    RootPrivate,
}

/// The merged rules and the three indexes over them.
#[derive(Debug, Default)]
pub struct RuleIndex {
    pub merged: Vec<MergedRule>,
    namespace_local: BTreeMap<String, HostIndex>,
    exported: BTreeMap<String, HostIndex>,
    root_private: HostIndex,
    root_namespace: String,
}

impl RuleIndex {
    /// Istio's `setDestinationRules` over every rule of the mesh; dropped
    /// duplicate subsets are reported in `diags`.
    pub fn build(mesh: &Mesh, diags: &mut Vec<Diagnostic>) -> RuleIndex {
        let root = mesh.config.root_namespace.clone();
        let mut out = RuleIndex {
            root_namespace: root.clone(),
            ..Default::default()
        };
        let rules = &mesh.destination_rules;
        // `destination_rules` is oldest first; a stable sort puts selector
        // rules before the others without changing that order.
        let names: Vec<String> = rules.iter().map(|d| d.object_ref().to_string()).collect();
        let mut order: Vec<usize> = (0..rules.len()).collect();
        order.sort_by_key(|&i| rules.get(i).is_none_or(|d| d.workload_selector.is_none()));
        for idx in order {
            let Some(dr) = rules.get(idx) else { continue };
            let ns = dr.meta.namespace.as_str();
            let host = resolve_host(&dr.host, ns, &mesh.config.cluster_domain);
            let export_to: BTreeSet<String> = if dr.workload_selector.is_some() {
                BTreeSet::from([".".to_string()])
            } else {
                dr.export_to.iter().cloned().collect()
            };
            let locally_visible = export_to.is_empty()
                || export_to.contains("*")
                || export_to.contains(".")
                || export_to.contains(ns);
            if locally_visible {
                out.merge(
                    IndexKind::NamespaceLocal,
                    ns,
                    (idx, dr),
                    &host,
                    &export_to,
                    &names,
                    diags,
                );
            }
            // The mesh-wide default exportTo is `*`, so an empty list is public.
            let private =
                export_to.len() == 1 && (export_to.contains(".") || export_to.contains(ns));
            if !private {
                out.merge(
                    IndexKind::Exported,
                    ns,
                    (idx, dr),
                    &host,
                    &export_to,
                    &names,
                    diags,
                );
            } else if ns == root {
                out.merge(
                    IndexKind::RootPrivate,
                    ns,
                    (idx, dr),
                    &host,
                    &export_to,
                    &names,
                    diags,
                );
            }
        }
        out
    }

    pub fn get(&self, id: MergedId) -> Option<&MergedRule> {
        self.merged.get(id)
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The index one lookup step reads.
    pub fn index(&self, scope: IndexKind, namespace: &str) -> Option<&HostIndex> {
        match scope {
            IndexKind::NamespaceLocal => self.namespace_local.get(namespace),
            IndexKind::Exported => self.exported.get(namespace),
            IndexKind::RootPrivate => Some(&self.root_private),
        }
    }

    fn index_mut(&mut self, scope: IndexKind, namespace: &str) -> &mut HostIndex {
        match scope {
            IndexKind::NamespaceLocal => self
                .namespace_local
                .entry(namespace.to_string())
                .or_default(),
            IndexKind::Exported => self.exported.entry(namespace.to_string()).or_default(),
            IndexKind::RootPrivate => &mut self.root_private,
        }
    }

    /// Istio's `mergeDestinationRule` for rule `idx` into one index: the
    /// loop over the entries for its host follows the Go code branch by
    /// branch (including that the last entry visited decides whether the
    /// rule is also kept on its own), except for istio/istio#58322 (see the
    /// module docs).
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &mut self,
        scope: IndexKind,
        namespace: &str,
        (idx, dr): (usize, &DestinationRule),
        host: &str,
        export_to: &BTreeSet<String>,
        names: &[String],
        diags: &mut Vec<Diagnostic>,
    ) {
        let wildcard = host.starts_with('*');
        let existing: Vec<MergedId> = {
            let index = self.index_mut(scope, namespace);
            let map = if wildcard {
                &index.wildcard
            } else {
                &index.specific
            };
            map.get(host).cloned().unwrap_or_default()
        };
        let mut append_separately = true;
        for id in &existing {
            let Some(entry) = self.merged.get_mut(*id) else {
                continue;
            };
            if *export_to == entry.export_to {
                append_separately = false;
            } else if !entry.export_to.is_empty() && export_to.is_superset(&entry.export_to) {
                append_separately = true;
            } else {
                append_separately = true;
                continue;
            }
            let both_without = dr.workload_selector.is_none() && entry.selector.is_none();
            let both_with = dr.workload_selector.is_some() && entry.selector.is_some();
            if both_with && dr.workload_selector != entry.selector {
                append_separately = true;
                continue;
            }
            if both_without || both_with {
                append_separately = false;
            }
            if dr.workload_selector.is_none() && entry.selector.is_some() {
                // istio/istio#58322: the catch-all rule stays a rule of its own.
                append_separately = true;
            }
            entry.from.push(idx);
            for s in &dr.subsets {
                if let Some((_, owner)) = entry.subsets.iter().find(|(n, _)| *n == s.name) {
                    let older = names.get(*owner).map(String::as_str).unwrap_or("?");
                    diags.push(Diagnostic::warning(
                        dr.object_ref(),
                        Some("spec.subsets".into()),
                        format!(
                            "subset {:?} is dropped when the rules for {host} are merged: {older} already defines it, and the first definition wins",
                            s.name
                        ),
                    ));
                } else {
                    entry.subsets.push((s.name.clone(), idx));
                }
            }
            if entry.policy_from.is_none() && dr.traffic_policy.is_some() {
                entry.policy_from = Some(idx);
            }
        }
        if existing.is_empty() || append_separately {
            let id = self.merged.len();
            self.merged.push(MergedRule::new(
                idx,
                dr,
                host.to_string(),
                export_to.clone(),
            ));
            let index = self.index_mut(scope, namespace);
            let map = if wildcard {
                &mut index.wildcard
            } else {
                &mut index.specific
            };
            map.entry(host.to_string()).or_default().push(id);
        }
    }
}

/// Short names (no dot) are relative to the rule's namespace; everything
/// else is taken literally, as Istio's `ResolveShortnameToFQDN` does.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host == "*" || host.starts_with("*.") || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

/// `*` matches everything, `*.suffix` every name ending in `.suffix`.
pub fn wildcard_matches(pattern: &str, fqdn: &str) -> bool {
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
