//! `Sidecar` (networking.istio.io v1, v1beta1, v1alpha3): which outbound
//! services a sidecar is given configuration for. This project acts on what
//! scopes that configuration (`workloadSelector`, `egress[].hosts`,
//! `egress[].port`); the other fields are parsed and kept verbatim so objects
//! round-trip, and the translator names what it ignores.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{self, preserve_unknown_object};
use crate::validate::{FieldError, is_dns1123_label, labels};

/// API group of [`Sidecar`].
pub const GROUP: &str = "networking.istio.io";

/// Versions served, in manifest order; all share one schema (one Istio proto).
pub const VERSIONS: &[&str] = &["v1", "v1alpha3", "v1beta1"];

/// The version Kubernetes stores, as in Istio's own CRD.
pub const STORAGE_VERSION: &str = "v1alpha3";

/// The scope of a sidecar's outbound configuration: the services whose
/// clusters, endpoints and routes the selected workloads receive.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    doc = "Istio Sidecar: the services a workload's sidecar is configured to reach.",
    namespaced,
    category = "istio-io",
    category = "networking-istio-io",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Workloads of the Sidecar's namespace it applies to; absent means the
    /// namespace default (or, in the root namespace, the mesh default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarWorkloadSelector>,

    /// Inbound listeners; not interpreted here (inbound config is unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserve_unknown_list")]
    pub ingress: Vec<serde_json::Value>,

    /// Outbound listeners, each importing the services its `hosts` name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,

    /// What to do with traffic to unknown destinations; parsed, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,

    /// Inbound connection-pool settings, not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub inbound_connection_pool: Option<serde_json::Value>,
}

/// Istio's `networking.v1alpha3.WorkloadSelector` (note: `labels`, not the
/// `matchLabels` of PeerAuthentication's selector).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarWorkloadSelector {
    /// Labels a workload must all carry to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One egress listener: the services it imports, optionally for one port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioEgressListener {
    /// The port the listener is for; absent makes it the catch-all listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,

    /// Address the listener binds; not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// How traffic reaches the listener; not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<String>,

    /// Services imported, as `namespace/dnsName` (required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Istio's `SidecarPort`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarPort {
    /// Port number; 0 is a Unix domain socket listener in Istio.
    #[serde(default)]
    pub number: u32,

    /// Protocol, e.g. `HTTP` (`HTTP_PROXY` makes the listener a proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,

    /// Label for the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Deprecated in Istio; has no effect on Sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// Istio's `OutboundTrafficPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY` (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,

    /// Where `ALLOW_ANY` traffic goes; not interpreted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub egress_proxy: Option<serde_json::Value>,
}

/// Istio's `OutboundTrafficPolicy.Mode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Only services in the registry are reachable.
    RegistryOnly,
    /// Unknown destinations are passed through.
    AllowAny,
}

fn preserve_unknown_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        },
    })
}

impl Sidecar {
    /// The selector's labels, `None` for a Sidecar without `workloadSelector`.
    /// Istio tests presence, not emptiness: `workloadSelector: {}` selects
    /// every workload of the namespace, but at the selector level.
    pub fn selector_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.spec.workload_selector.as_ref().map(|s| &s.labels)
    }
}

/// The CRD with every served version (v1, v1alpha3, v1beta1; v1alpha3 stored).
pub fn crd() -> CustomResourceDefinition {
    schema::with_versions(Sidecar::crd(), VERSIONS, STORAGE_VERSION)
}

/// Checks a Sidecar as istiod does (`ValidateSidecar` in Istio's
/// pkg/config/validation) for the parts this project reads: selector labels,
/// a non-empty configuration, at most one egress listener without port and
/// it last, unique egress ports, and hosts of the form `namespace/dnsName`
/// (namespace `*`, `.`, a DNS label, optionally `~`-prefixed; dnsName `*` or
/// an FQDN with an optional leading `*.`).
pub fn validate(sc: &Sidecar) -> Vec<FieldError> {
    let spec = &sc.spec;
    let mut errors = Vec::new();
    if let Some(sel) = &spec.workload_selector {
        labels(&sel.labels, "spec.workloadSelector.labels", &mut errors);
    }
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        errors.push(FieldError::new(
            "spec",
            "sidecar: empty configuration provided",
        ));
    }
    let mut ports = std::collections::BTreeSet::new();
    let last = spec.egress.len().saturating_sub(1);
    let mut catch_all = false;
    for (i, e) in spec.egress.iter().enumerate() {
        let path = format!("spec.egress[{i}]");
        match &e.port {
            None if catch_all => errors.push(FieldError::new(
                &path,
                "egress can have only one listener with empty port",
            )),
            None if i != last => errors.push(FieldError::new(
                &path,
                "the egress listener with empty port should be the last listener in the list",
            )),
            None => catch_all = true,
            Some(p) => {
                if p.number > 65535 {
                    errors.push(FieldError::new(
                        format!("{path}.port.number"),
                        "port number must be between 0 and 65535",
                    ));
                } else if p.number != 0 && !ports.insert(p.number) {
                    errors.push(FieldError::new(
                        format!("{path}.port.number"),
                        "ports on IP bound listeners must be unique",
                    ));
                }
            }
        }
        if e.hosts.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.hosts"),
                "egress listener must contain at least one host",
            ));
        }
        for (j, h) in e.hosts.iter().enumerate() {
            if let Some(reason) = egress_host_problem(h) {
                errors.push(FieldError::new(format!("{path}.hosts[{j}]"), reason));
            }
        }
    }
    errors
}

/// Why `host` is not a valid egress host, if it is not (Istio's
/// `ValidateNamespaceSlashWildcardHostname` for sidecars).
pub fn egress_host_problem(host: &str) -> Option<String> {
    let Some((ns, name)) = host.split_once('/') else {
        return Some(format!("host {host:?} must be of form namespace/dnsName"));
    };
    if ns.is_empty() || name.is_empty() {
        return Some(format!(
            "host {host:?}: config namespace and dnsName in host entry cannot be empty"
        ));
    }
    let bare = ns.strip_prefix('~').unwrap_or(ns);
    if !(bare.is_empty() || bare == "*" || bare == "." || is_dns1123_label(bare)) {
        return Some(format!(
            "host {host:?}: invalid namespace value {ns:?} in sidecar"
        ));
    }
    if name == "*" {
        return None;
    }
    if !name.contains('.') {
        return Some(format!(
            "host {host:?}: short names (non FQDN) are not allowed"
        ));
    }
    let domain = name.strip_prefix("*.").unwrap_or(name);
    if domain.contains('*') {
        return Some(format!(
            "host {host:?}: partial wildcard {name:?} not allowed"
        ));
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.len() > 253
        || !domain
            .split('.')
            .all(|l| is_dns1123_label(&l.to_ascii_lowercase()))
    {
        return Some(format!(
            "host {host:?}: {name:?} is not a valid domain name"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(egress: &[(Option<u32>, &[&str])]) -> SidecarSpec {
        SidecarSpec {
            egress: egress
                .iter()
                .map(|(port, hosts)| IstioEgressListener {
                    port: port.map(|number| SidecarPort {
                        number,
                        ..Default::default()
                    }),
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn errors(spec: SidecarSpec) -> Vec<String> {
        validate(&Sidecar::new("s", spec))
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect()
    }

    #[test]
    fn every_documented_host_form_is_valid() {
        let hosts = [
            "prod/reviews.prod.svc.cluster.local",
            "./ratings.prod.svc.cluster.local",
            "*/httpbin.bar.svc.cluster.local",
            "~/httpbin.bar.svc.cluster.local",
            "~bar/*",
            "istio-system/*",
            "./*",
            "*/*",
            "~/*",
            "prod/*.example.com",
        ];
        assert_eq!(errors(spec(&[(None, &hosts)])), Vec::<String>::new());
    }

    #[test]
    fn malformed_hosts_are_rejected_naming_the_entry() {
        let got = errors(spec(&[(
            None,
            &[
                "httpbin.bar.svc.cluster.local",
                "bar/httpbin",
                "Bar/*",
                "bar/foo*.example.com",
                "/x.y",
            ],
        )]));
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(got[0].starts_with("spec.egress[0].hosts[0]: "), "{got:?}");
        assert!(got[0].contains("namespace/dnsName"), "{got:?}");
        assert!(got[1].contains("short names"), "{got:?}");
        assert!(got[2].contains("invalid namespace"), "{got:?}");
        assert!(got[3].contains("partial wildcard"), "{got:?}");
        assert!(got[4].contains("cannot be empty"), "{got:?}");
    }

    #[test]
    fn the_catch_all_listener_must_be_last_and_alone_and_ports_unique() {
        let got = errors(spec(&[
            (None, &["./*"]),
            (Some(80), &["./*"]),
            (Some(80), &["./*"]),
        ]));
        assert_eq!(
            got,
            [
                "spec.egress[0]: the egress listener with empty port should be the last listener in the list",
                "spec.egress[2].port.number: ports on IP bound listeners must be unique",
            ]
        );
    }

    #[test]
    fn an_empty_sidecar_and_a_listener_without_hosts_are_rejected() {
        assert_eq!(
            errors(SidecarSpec::default()),
            ["spec: sidecar: empty configuration provided"]
        );
        assert_eq!(
            errors(spec(&[(None, &[])])),
            ["spec.egress[0].hosts: egress listener must contain at least one host"]
        );
    }

    #[test]
    fn selector_labels_must_be_valid() {
        let mut s = spec(&[(None, &["./*"])]);
        s.workload_selector = Some(SidecarWorkloadSelector {
            labels: [("bad key!".to_string(), "x".to_string())].into(),
        });
        let got = errors(s);
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("spec.workloadSelector.labels[bad key!]"),
            "{got:?}"
        );
    }

    #[test]
    fn crd_serves_three_versions_and_stores_v1alpha3() {
        let versions: Vec<_> = crd()
            .spec
            .versions
            .iter()
            .map(|v| (v.name.clone(), v.served, v.storage))
            .collect();
        assert_eq!(
            versions,
            [
                ("v1".to_string(), true, false),
                ("v1alpha3".to_string(), true, true),
                ("v1beta1".to_string(), true, false)
            ]
        );
    }
}
