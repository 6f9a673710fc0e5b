//! `DestinationRule` (networking.istio.io v1, v1beta1, v1alpha3): the client-side
//! policy for traffic to a host. This project acts on its TLS settings only; the
//! other traffic-policy fields are kept verbatim so objects round-trip unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{self, preserve_unknown_object};
use crate::workload_selector::WorkloadSelector;

/// API group of [`DestinationRule`].
pub const GROUP: &str = "networking.istio.io";

/// Versions served, in manifest order; all share one schema (one Istio proto).
pub const VERSIONS: &[&str] = &["v1", "v1alpha3", "v1beta1"];

/// The version Kubernetes stores, as in Istio's own CRD.
pub const STORAGE_VERSION: &str = "v1alpha3";

/// Client-side policy for traffic to `host`: here, whether and how the client
/// sidecar originates TLS (overriding auto mTLS when `tls` is set).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    doc = "Istio DestinationRule: client-side policy (here, TLS origination) for traffic to a host.",
    namespaced,
    shortname = "dr",
    category = "istio-io",
    category = "networking-istio-io",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Host",
        type_ = "string",
        json_path = ".spec.host",
        description = "The name of a service from the service registry"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// Service the rule is for (required); a short name is resolved against the
    /// rule's own namespace.
    // Defaulted so that validation, which names the object, reports a missing host.
    #[serde(default)]
    pub host: String,

    /// Namespaces that may use this rule; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,

    /// Restricts the rule to client workloads with these labels (forces it private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,

    /// Policy for all subsets and ports unless overridden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,

    /// Named groups of endpoints, each with an optional policy override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
}

/// Istio's `TrafficPolicy`. Only `tls` and `portLevelSettings` drive this project;
/// the rest is carried as raw JSON so nothing a user wrote is lost.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load-balancer settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub load_balancer: Option<serde_json::Value>,

    /// Connection-pool settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub connection_pool: Option<serde_json::Value>,

    /// Outlier-detection settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub outlier_detection: Option<serde_json::Value>,

    /// TLS the client originates; absent leaves auto mTLS in charge (not DISABLE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,

    /// Per service-port overrides that replace this policy wholesale for the port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,

    /// Tunnel settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub tunnel: Option<serde_json::Value>,

    /// Upstream PROXY protocol settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub proxy_protocol: Option<serde_json::Value>,

    /// Retry budget (newer Istio releases), not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub retry_budget: Option<serde_json::Value>,
}

/// Istio's `TrafficPolicy.PortTrafficPolicy`: the policy for one service port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The service (not target) port this policy is for (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,

    /// Load-balancer settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub load_balancer: Option<serde_json::Value>,

    /// Connection-pool settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub connection_pool: Option<serde_json::Value>,

    /// Outlier-detection settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub outlier_detection: Option<serde_json::Value>,

    /// TLS for this port; absent means auto mTLS for this port, since port-level
    /// settings do not inherit the destination-level `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Istio's `PortSelector`: a port by number.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// Port number on the destination service.
    // 0 stands for "not set"; validation rejects it.
    #[serde(default)]
    pub number: u32,
}

/// A named subset of the host's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name routes use to target the subset (required, unique within the rule).
    #[serde(default)]
    pub name: String,

    /// Endpoint labels that define the subset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Overrides of the rule's policy, field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio's `ClientTLSSettings`: TLS the client sidecar originates to the upstream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// How TLS is originated.
    #[serde(default)]
    pub mode: ClientTlsMode,

    /// PEM client certificate file path (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,

    /// PEM private key file path (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,

    /// PEM CA bundle file path used to verify the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,

    /// Secret holding the client credentials (gateways, or rules with a workload selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,

    /// SANs the server certificate must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,

    /// SNI sent in the TLS handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,

    /// Skip verification of the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,

    /// PEM certificate revocation list file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// Istio's `ClientTLSSettings.TLSmode`.
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
pub enum ClientTlsMode {
    /// No TLS to the upstream.
    #[default]
    Disable,
    /// Originate TLS without a client certificate.
    Simple,
    /// Mutual TLS with user-supplied certificates.
    Mutual,
    /// Mutual TLS with the mesh's workload certificates.
    IstioMutual,
}

impl ClientTlsMode {
    /// The name as written in YAML, for diagnostics and debug output.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "DISABLE",
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            ClientTlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

impl std::fmt::Display for ClientTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TrafficPolicy {
    /// The port-level settings for service port `port`, if any (first match, as
    /// Istio applies the first entry for a port).
    pub fn port_settings(&self, port: u32) -> Option<&PortTrafficPolicy> {
        self.port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|s| s.number == port))
    }
}

/// The CRD with every served version (v1, v1alpha3, v1beta1; v1alpha3 stored),
/// built from the derived single-version CRD so the schema stays in one place.
pub fn crd() -> CustomResourceDefinition {
    schema::with_versions(DestinationRule::crd(), VERSIONS, STORAGE_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_settings_finds_the_entry_for_a_port() {
        let policy = TrafficPolicy {
            port_level_settings: vec![
                PortTrafficPolicy {
                    port: Some(PortSelector { number: 80 }),
                    tls: Some(ClientTlsSettings {
                        mode: ClientTlsMode::Simple,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                PortTrafficPolicy {
                    port: Some(PortSelector { number: 8000 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            policy
                .port_settings(80)
                .and_then(|p| p.tls.as_ref())
                .map(|t| t.mode),
            Some(ClientTlsMode::Simple)
        );
        assert!(policy.port_settings(9090).is_none());
    }

    #[test]
    fn crd_serves_three_versions_and_stores_v1alpha3() {
        let crd = crd();
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(
            versions,
            [
                ("v1", true, false),
                ("v1alpha3", true, true),
                ("v1beta1", true, false)
            ]
        );
    }

    #[test]
    fn client_tls_mode_uses_istio_names() {
        let json = serde_json::to_value(ClientTlsMode::IstioMutual).ok();
        assert_eq!(json, Some(serde_json::json!("ISTIO_MUTUAL")));
    }
}
