//! `PeerAuthentication` (security.istio.io v1 and v1beta1): the server-side mTLS
//! policy. These types only describe and validate the object; choosing which policy
//! applies to a workload is the translator's job.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;
use crate::workload_selector::WorkloadSelector;

/// API group of [`PeerAuthentication`].
pub const GROUP: &str = "security.istio.io";

/// Versions served, in manifest order; both have the same schema (one Istio proto).
pub const VERSIONS: &[&str] = &["v1", "v1beta1"];

/// The version Kubernetes stores, as in Istio's own CRD.
pub const STORAGE_VERSION: &str = "v1beta1";

/// Which peer (client) connections a workload's sidecar accepts.
///
/// A user writes this to require, allow or refuse mutual TLS for workloads in a
/// namespace, or for one workload and, optionally, some of its ports.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    doc = "Istio PeerAuthentication: the mTLS mode a workload's sidecar accepts from peers.",
    namespaced,
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mtls.mode",
        description = "Defines the mTLS mode used for peer authentication."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads this policy applies to; absent or empty means the whole namespace
    /// (or the whole mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,

    /// Mode for all ports of the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,

    /// Per-port modes keyed by workload (container) port, not Service port; needs a selector.
    // Keys stay strings so that validation, not deserialization, reports a bad port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// The mTLS setting at one level (workload or port).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode; `UNSET` inherits from the parent level.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`. Wire numbers in Istio's proto are
/// UNSET=0, DISABLE=1, PERMISSIVE=2, STRICT=3 (not an ordering of strength).
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope; with no parent, PERMISSIVE.
    #[default]
    Unset,
    /// Plaintext only: the connection is not tunneled through mTLS.
    Disable,
    /// Accept both plaintext and mTLS.
    Permissive,
    /// Accept only mTLS with a client certificate.
    Strict,
}

impl MtlsMode {
    /// The name as written in YAML, for diagnostics and debug output.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PeerAuthentication {
    /// The workload-level mode (`spec.mtls.mode`), `UNSET` when absent.
    pub fn mode(&self) -> MtlsMode {
        self.spec.mtls.map(|m| m.mode).unwrap_or_default()
    }

    /// The selector's labels, or `None` when the policy has no selector in Istio's
    /// sense (absent, or empty `matchLabels`), i.e. it is namespace- or mesh-wide.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec
            .selector
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| &s.match_labels)
    }

    /// Per-port modes with keys parsed as ports. Keys that are not a port in
    /// 1..=65535 are left out here; [`crate::validate::peer_authentication`]
    /// reports them.
    pub fn port_modes(&self) -> BTreeMap<u32, MtlsMode> {
        self.spec
            .port_level_mtls
            .iter()
            .flatten()
            .filter_map(|(port, tls)| Some((parse_port(port)?, tls.mode)))
            .collect()
    }
}

/// Parses a `portLevelMtls` key; `None` unless it is an integer in 1..=65535.
pub(crate) fn parse_port(key: &str) -> Option<u32> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|p| (1..=65535).contains(p))
}

/// The CRD with every served version (v1 and v1beta1, v1beta1 stored), built from
/// the derived single-version CRD so the schema stays in one place.
pub fn crd() -> CustomResourceDefinition {
    schema::with_versions(PeerAuthentication::crd(), VERSIONS, STORAGE_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pa(spec: PeerAuthenticationSpec) -> PeerAuthentication {
        PeerAuthentication::new("p", spec)
    }

    #[test]
    fn mode_is_unset_when_mtls_is_absent() {
        assert_eq!(
            pa(PeerAuthenticationSpec::default()).mode(),
            MtlsMode::Unset
        );
    }

    #[test]
    fn port_modes_parse_keys_and_leave_out_invalid_ports() {
        let spec = PeerAuthenticationSpec {
            port_level_mtls: Some(BTreeMap::from([
                (
                    "80".to_string(),
                    MutualTls {
                        mode: MtlsMode::Disable,
                    },
                ),
                (
                    "0".to_string(),
                    MutualTls {
                        mode: MtlsMode::Strict,
                    },
                ),
                (
                    "http".to_string(),
                    MutualTls {
                        mode: MtlsMode::Strict,
                    },
                ),
                (
                    "65536".to_string(),
                    MutualTls {
                        mode: MtlsMode::Strict,
                    },
                ),
            ])),
            ..Default::default()
        };
        assert_eq!(
            pa(spec).port_modes(),
            BTreeMap::from([(80, MtlsMode::Disable)])
        );
    }

    #[test]
    fn empty_match_labels_count_as_no_selector() {
        let spec = PeerAuthenticationSpec {
            selector: Some(WorkloadSelector::default()),
            ..Default::default()
        };
        assert_eq!(pa(spec).selector_labels(), None);
    }

    #[test]
    fn crd_serves_v1_and_v1beta1_and_stores_v1beta1() {
        let crd = crd();
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(versions, [("v1", true, false), ("v1beta1", true, true)]);
        assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
    }
}
