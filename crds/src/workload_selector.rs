//! The `WorkloadSelector` shared by PeerAuthentication (`spec.selector`) and
//! DestinationRule (`spec.workloadSelector`), as in Istio's `istio.type.v1beta1`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Picks workloads in the policy's own namespace by a subset match on pod labels.
///
/// Istio treats an absent selector and one with empty `matchLabels` alike ("no
/// selector"), so [`WorkloadSelector::is_empty`] exists for callers to ask that once.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry (with these values) to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when the selector selects every workload of the namespace (Istio's
    /// "no selector"), i.e. it has no labels.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty()
    }

    /// Whether a workload carrying `labels` is selected (subset match).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_matches_workloads_carrying_a_superset_of_its_labels() {
        let sel = WorkloadSelector {
            match_labels: labels(&[("app", "httpbin")]),
        };
        assert!(sel.matches(&labels(&[("app", "httpbin"), ("version", "v1")])));
        assert!(!sel.matches(&labels(&[("app", "sleep")])));
        assert!(!sel.matches(&labels(&[])));
    }

    #[test]
    fn empty_selector_matches_everything_and_counts_as_no_selector() {
        let sel = WorkloadSelector::default();
        assert!(sel.is_empty());
        assert!(sel.matches(&labels(&[("app", "x")])));
    }
}
