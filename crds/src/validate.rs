//! Istio's validation rules for the kinds in this crate (what istiod's webhook and
//! the CRD's CEL rules reject), as diagnostics naming the field. Run after
//! parsing; an object with any error is left out of the mesh model.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::destination_rule::{ClientTlsMode, ClientTlsSettings, DestinationRule, TrafficPolicy};
use crate::peer_authentication::{PeerAuthentication, parse_port};
use crate::workload_selector::WorkloadSelector;

/// One problem with one field of an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path from the object root, e.g. `spec.portLevelMtls` or
    /// `spec.subsets[1].name`; map keys in brackets (`spec.portLevelMtls[http]`).
    pub field: String,
    /// What is wrong, in Istio's words where Istio has them.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a PeerAuthentication as istiod does (`ValidatePeerAuthentication` and the
/// CRD's CEL rules): port-level mTLS needs a selector and at least one entry, keys
/// must be ports, and selector labels must be valid Kubernetes labels.
pub fn peer_authentication(pa: &PeerAuthentication) -> Vec<FieldError> {
    let spec = &pa.spec;
    let mut errors = Vec::new();
    if let Some(selector) = &spec.selector {
        selector_labels(selector, "spec.selector.matchLabels", &mut errors);
    }
    if let Some(ports) = &spec.port_level_mtls {
        let no_selector = spec
            .selector
            .as_ref()
            .is_none_or(WorkloadSelector::is_empty);
        if ports.is_empty() {
            errors.push(FieldError::new(
                "spec.portLevelMtls",
                "must have at least one element",
            ));
        } else if no_selector {
            errors.push(FieldError::new(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            ));
        }
        for key in ports.keys() {
            if parse_port(key).is_none() {
                errors.push(FieldError::new(
                    format!("spec.portLevelMtls[{key}]"),
                    "port must be an integer between 1 and 65535",
                ));
            }
        }
    }
    errors
}

/// Checks a DestinationRule as istiod does for the parts this project uses
/// (`ValidateDestinationRule` in Istio's pkg/config/validation): a host,
/// valid `exportTo` entries, valid selector and subset labels, unique named
/// subsets, a valid port on every port-level setting, and client TLS settings
/// that can be built ([`client_tls`], Istio's `ValidateTLS`).
pub fn destination_rule(dr: &DestinationRule) -> Vec<FieldError> {
    let spec = &dr.spec;
    let mut errors = Vec::new();
    if spec.host.trim().is_empty() {
        errors.push(FieldError::new("spec.host", "host is required"));
    }
    for (i, entry) in spec.export_to.iter().enumerate() {
        if !matches!(entry.as_str(), "." | "*" | "~") && !is_dns1123_label(entry) {
            errors.push(FieldError::new(
                format!("spec.exportTo[{i}]"),
                format!(
                    "{entry:?} is not a valid exportTo value: use \".\", \"*\", \"~\" or a namespace name (DNS-1123 label)"
                ),
            ));
        }
    }
    export_to_rules(dr, &mut errors);
    if let Some(selector) = &spec.workload_selector {
        selector_labels(selector, "spec.workloadSelector.matchLabels", &mut errors);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(policy, "spec.trafficPolicy", &mut errors);
    }
    let mut seen = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.name"),
                "subset name is required",
            ));
        } else if !seen.insert(subset.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.name"),
                format!("duplicate subset name {:?}", subset.name),
            ));
        }
        labels(&subset.labels, &format!("{path}.labels"), &mut errors);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(policy, &format!("{path}.trafficPolicy"), &mut errors);
        }
    }
    errors
}

/// The rules of Istio's `validateExportTo` on how entries combine: no entry
/// twice (`.` counts as the rule's own namespace), `*` alone, and a rule with
/// a `workloadSelector` exported to its own namespace only.
fn export_to_rules(dr: &DestinationRule, errors: &mut Vec<FieldError>) {
    let spec = &dr.spec;
    let own = dr.metadata.namespace.as_deref().unwrap_or("default");
    let mut seen = BTreeSet::new();
    for (i, entry) in spec.export_to.iter().enumerate() {
        let key = if entry == "." { own } else { entry.as_str() };
        if !seen.insert(key) {
            errors.push(FieldError::new(
                format!("spec.exportTo[{i}]"),
                format!("duplicate entries in exportTo: {entry:?} names {key} again"),
            ));
        }
    }
    if seen.contains("*") && spec.export_to.len() > 1 {
        errors.push(FieldError::new(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        ));
    }
    let selected = spec
        .workload_selector
        .as_ref()
        .is_some_and(|s| !s.is_empty());
    if selected && !seen.is_empty() {
        if !seen.contains(own) {
            errors.push(FieldError::new(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            ));
        } else if seen.len() > 1 {
            errors.push(FieldError::new(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            ));
        }
    }
}

/// Most replicas one Deployment may ask for. Each replica becomes a workload
/// with its own address in the pod net (a /16, 65,534 addresses), its own
/// certificate and its own sidecar config, so a slip such as
/// `replicas: 1000000` must be an error rather than a million workloads.
pub const MAX_REPLICAS: i32 = 1000;

/// Checks the part of a Deployment this project acts on: `spec.replicas`
/// must be between 0 (as the API server requires) and [`MAX_REPLICAS`].
pub fn deployment(d: &Deployment) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(problem) = d
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .and_then(replicas_problem)
    {
        errors.push(FieldError::new("spec.replicas", problem));
    }
    errors
}

/// Why `replicas` cannot be run, if it cannot.
pub fn replicas_problem(replicas: i32) -> Option<String> {
    if replicas < 0 {
        Some(format!(
            "replicas {replicas} must be greater than or equal to 0"
        ))
    } else if replicas > MAX_REPLICAS {
        Some(format!(
            "replicas {replicas} is more than {MAX_REPLICAS}, the most this control plane runs for one Deployment (each replica is a workload with its own address, certificate and sidecar config)"
        ))
    } else {
        None
    }
}

/// Checks a Service's ports as the API server does (`ValidateService`): a
/// port number in 1-65535 and a known protocol; names that are DNS-1123
/// labels, required once there are two ports, and unique; no port number
/// twice for one protocol; a target port that is a number in 1-65535 or an
/// IANA service name. A Service that breaks these would give sidecars two
/// virtual hosts or clusters of one name, which Envoy rejects whole.
pub fn service(svc: &Service) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut numbers: BTreeMap<(i32, &str), usize> = BTreeMap::new();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match port.name.as_deref().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => errors.push(FieldError::new(
                format!("{at}.name"),
                "a name is required when a Service has more than one port",
            )),
            None => {}
            Some(name) => {
                if !is_dns1123_label(name) {
                    errors.push(FieldError::new(
                        format!("{at}.name"),
                        format!("{name:?} is not a DNS-1123 label (lowercase alphanumerics and '-', at most 63)"),
                    ));
                }
                if let Some(first) = names.insert(name, i) {
                    errors.push(FieldError::new(
                        format!("{at}.name"),
                        format!("duplicate port name {name:?} (also spec.ports[{first}])"),
                    ));
                }
            }
        }
        if !(1..=65535).contains(&port.port) {
            errors.push(FieldError::new(
                format!("{at}.port"),
                format!("port {} must be between 1 and 65535", port.port),
            ));
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            errors.push(FieldError::new(
                format!("{at}.protocol"),
                format!("protocol {protocol:?} is not one of \"TCP\", \"UDP\", \"SCTP\""),
            ));
        } else if let Some(first) = numbers.insert((port.port, protocol), i) {
            errors.push(FieldError::new(
                format!("{at}.port"),
                format!(
                    "duplicate port {}/{protocol} (also spec.ports[{first}])",
                    port.port
                ),
            ));
        }
        match &port.target_port {
            None => {}
            Some(IntOrString::Int(n)) if (1..=65535).contains(n) => {}
            Some(IntOrString::Int(n)) => errors.push(FieldError::new(
                format!("{at}.targetPort"),
                format!("target port {n} must be between 1 and 65535"),
            )),
            Some(IntOrString::String(name)) => {
                if let Some(reason) = port_name_problem(name) {
                    errors.push(FieldError::new(format!("{at}.targetPort"), reason));
                }
            }
        }
    }
    errors
}

/// Why `name` is not an IANA service name (a named container port), if it
/// is not: at most 15 lowercase alphanumerics and '-', with a letter, not
/// starting or ending with '-' and without "--".
fn port_name_problem(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 15
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
        && !name.contains("--");
    (!ok).then(|| {
        format!(
            "{name:?} is neither a port number nor a port name (at most 15 lowercase alphanumerics and '-', with a letter)"
        )
    })
}

fn traffic_policy(policy: &TrafficPolicy, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(tls) = &policy.tls {
        client_tls(tls, &format!("{path}.tls"), errors);
    }
    for (i, setting) in policy.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}].port");
        match setting.port {
            None => errors.push(FieldError::new(at, "port is required")),
            Some(port) if !(1..=65535).contains(&port.number) => errors.push(FieldError::new(
                format!("{at}.number"),
                format!("port number {} must be between 1 and 65535", port.number),
            )),
            Some(_) => {}
        }
        if let Some(tls) = &setting.tls {
            client_tls(tls, &format!("{path}.portLevelSettings[{i}].tls"), errors);
        }
    }
}

/// Client TLS settings as Istio's `ValidateTLS` (pkg/config/validation/agent)
/// checks them: with `insecureSkipVerify`, nothing that would verify the
/// server may be set; with `credentialName` (SIMPLE or MUTUAL), no file may
/// be named, since the credentials come from the Secret; otherwise MUTUAL
/// needs both `clientCertificate` and `privateKey`. An empty string counts as
/// not set, as it does in Go.
pub fn client_tls(tls: &ClientTlsSettings, path: &str, errors: &mut Vec<FieldError>) {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let origination = matches!(tls.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    if tls.insecure_skip_verify == Some(true) {
        let mut verifying = Vec::new();
        if set(&tls.ca_certificates) {
            verifying.push("caCertificates");
        }
        if tls.mode == ClientTlsMode::Simple && set(&tls.credential_name) {
            verifying.push("credentialName");
        }
        if !tls.subject_alt_names.is_empty() {
            verifying.push("subjectAltNames");
        }
        if origination && !verifying.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.insecureSkipVerify"),
                format!(
                    "cannot specify {} when insecureSkipVerify is true",
                    verifying.join(" or ")
                ),
            ));
        }
    }
    if origination && set(&tls.credential_name) {
        for (field, value) in [
            ("clientCertificate", &tls.client_certificate),
            ("caCertificates", &tls.ca_certificates),
            ("privateKey", &tls.private_key),
            ("caCrl", &tls.ca_crl),
        ] {
            if set(value) {
                errors.push(FieldError::new(
                    format!("{path}.{field}"),
                    "cannot specify client certificates or CA certificate or CA CRL if credentialName is set",
                ));
            }
        }
        return;
    }
    if tls.mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            errors.push(FieldError::new(
                format!("{path}.clientCertificate"),
                "client certificate required for mutual tls (or set credentialName)",
            ));
        }
        if !set(&tls.private_key) {
            errors.push(FieldError::new(
                format!("{path}.privateKey"),
                "private key required for mutual tls (or set credentialName)",
            ));
        }
    }
}

fn selector_labels(selector: &WorkloadSelector, path: &str, errors: &mut Vec<FieldError>) {
    labels(&selector.match_labels, path, errors);
}

pub(crate) fn labels(labels: &BTreeMap<String, String>, path: &str, errors: &mut Vec<FieldError>) {
    for (key, value) in labels {
        if let Some(reason) = label_key_problem(key) {
            errors.push(FieldError::new(format!("{path}[{key}]"), reason));
        }
        if let Some(reason) = label_value_problem(value) {
            errors.push(FieldError::new(format!("{path}[{key}]"), reason));
        }
    }
}

/// Why `key` is not a valid Kubernetes label key (`[prefix/]name`), if it is not.
fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns1123_subdomain(prefix)
    {
        return Some(format!(
            "label key {key:?}: prefix must be a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', at most 253 characters)"
        ));
    }
    if !is_label_name(name) {
        return Some(format!(
            "label key {key:?}: name must be 1-63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    None
}

/// Why `value` is not a valid Kubernetes label value, if it is not (empty is valid).
fn label_value_problem(value: &str) -> Option<String> {
    if value.is_empty() || is_label_name(value) {
        None
    } else {
        Some(format!(
            "label value {value:?}: must be at most 63 characters of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: a namespace name (lowercase alphanumerics and '-', 1-63).
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.first().is_some_and(lower_alnum)
        && bytes.last().is_some_and(lower_alnum)
        && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::destination_rule::{DestinationRuleSpec, PortSelector, PortTrafficPolicy, Subset};
    use crate::peer_authentication::{MtlsMode, MutualTls, PeerAuthenticationSpec};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> Option<WorkloadSelector> {
        Some(WorkloadSelector {
            match_labels: map(pairs),
        })
    }

    fn ports(keys: &[&str]) -> Option<BTreeMap<String, MutualTls>> {
        Some(
            keys.iter()
                .map(|k| {
                    (
                        k.to_string(),
                        MutualTls {
                            mode: MtlsMode::Disable,
                        },
                    )
                })
                .collect(),
        )
    }

    fn pa_errors(spec: PeerAuthenticationSpec) -> Vec<FieldError> {
        peer_authentication(&PeerAuthentication::new("p", spec))
    }

    fn dr_errors(spec: DestinationRuleSpec) -> Vec<FieldError> {
        destination_rule(&DestinationRule::new("d", spec))
    }

    fn dr(host: &str) -> DestinationRuleSpec {
        DestinationRuleSpec {
            host: host.to_string(),
            ..Default::default()
        }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn port_level_mtls_with_a_selector_is_valid() {
        let spec = PeerAuthenticationSpec {
            selector: selector(&[("app", "httpbin")]),
            port_level_mtls: ports(&["80", "65535", "1"]),
            ..Default::default()
        };
        assert_eq!(pa_errors(spec), []);
    }

    #[test]
    fn port_level_mtls_without_a_selector_is_rejected() {
        let spec = PeerAuthenticationSpec {
            port_level_mtls: ports(&["80"]),
            ..Default::default()
        };
        assert_eq!(
            pa_errors(spec),
            [FieldError::new(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS"
            )]
        );
    }

    #[test]
    fn port_level_mtls_with_empty_match_labels_is_rejected() {
        let spec = PeerAuthenticationSpec {
            selector: selector(&[]),
            port_level_mtls: ports(&["80"]),
            ..Default::default()
        };
        let errors = pa_errors(spec);
        assert_eq!(fields(&errors), ["spec.portLevelMtls"]);
        assert!(errors[0].reason.contains("cannot have port level mTLS"));
    }

    #[test]
    fn empty_port_level_mtls_is_rejected() {
        let spec = PeerAuthenticationSpec {
            selector: selector(&[("app", "x")]),
            port_level_mtls: ports(&[]),
            ..Default::default()
        };
        assert_eq!(
            pa_errors(spec),
            [FieldError::new(
                "spec.portLevelMtls",
                "must have at least one element"
            )]
        );
    }

    #[test]
    fn port_level_mtls_keys_outside_1_to_65535_or_not_integers_are_rejected() {
        let spec = PeerAuthenticationSpec {
            selector: selector(&[("app", "x")]),
            port_level_mtls: ports(&["0", "65536", "http", "-1", "+80", ""]),
            ..Default::default()
        };
        let errors = pa_errors(spec);
        assert_eq!(
            fields(&errors),
            [
                "spec.portLevelMtls[]",
                "spec.portLevelMtls[+80]",
                "spec.portLevelMtls[-1]",
                "spec.portLevelMtls[0]",
                "spec.portLevelMtls[65536]",
                "spec.portLevelMtls[http]",
            ]
        );
    }

    #[test]
    fn a_policy_without_selector_or_ports_is_valid() {
        assert_eq!(pa_errors(PeerAuthenticationSpec::default()), []);
    }

    #[test]
    fn selector_labels_must_be_valid_kubernetes_labels() {
        let good = PeerAuthenticationSpec {
            selector: selector(&[
                ("app.kubernetes.io/name", "httpbin"),
                ("tier", ""),
                ("v", "1.2_b-c"),
            ]),
            ..Default::default()
        };
        assert_eq!(pa_errors(good), []);
        let bad = PeerAuthenticationSpec {
            selector: selector(&[
                ("app", "*"),
                ("-bad", "x"),
                ("Bad_Prefix/x", "y"),
                ("long", &"a".repeat(64)),
            ]),
            ..Default::default()
        };
        assert_eq!(
            fields(&pa_errors(bad)),
            [
                "spec.selector.matchLabels[-bad]",
                "spec.selector.matchLabels[Bad_Prefix/x]",
                "spec.selector.matchLabels[app]",
                "spec.selector.matchLabels[long]",
            ]
        );
    }

    #[test]
    fn a_destination_rule_with_a_host_is_valid() {
        assert_eq!(dr_errors(dr("httpbin.bar.svc.cluster.local")), []);
    }

    #[test]
    fn a_destination_rule_without_host_is_rejected() {
        assert_eq!(
            dr_errors(dr("")),
            [FieldError::new("spec.host", "host is required")]
        );
    }

    #[test]
    fn export_to_accepts_dot_star_tilde_and_namespace_names_only() {
        for entries in [&[".", "~", "foo", "bar-2"][..], &["*"]] {
            let mut spec = dr("h");
            spec.export_to = entries.iter().map(|e| e.to_string()).collect();
            assert_eq!(dr_errors(spec), [], "{entries:?}");
        }
        let mut spec = dr("h");
        spec.export_to = ["Foo", "a.b", "", "-x"].map(String::from).to_vec();
        assert_eq!(
            fields(&dr_errors(spec)),
            [
                "spec.exportTo[0]",
                "spec.exportTo[1]",
                "spec.exportTo[2]",
                "spec.exportTo[3]"
            ]
        );
    }

    // Mirrors Istio's TestValidateDestinationRule cases on exportTo
    // (validateExportTo in pkg/config/validation).
    #[test]
    fn export_to_entries_combine_as_istio_allows() {
        let rule = |entries: &[&str], selected: bool| {
            let mut spec = dr("h");
            spec.export_to = entries.iter().map(|e| e.to_string()).collect();
            if selected {
                spec.workload_selector = selector(&[("app", "a")]);
            }
            let mut d = DestinationRule::new("d", spec);
            d.metadata.namespace = Some("foo".into());
            destination_rule(&d)
        };
        assert_eq!(rule(&[".", "bar"], false), []);
        assert_eq!(fields(&rule(&[".", "foo"], false)), ["spec.exportTo[1]"]);
        assert_eq!(fields(&rule(&["*", "bar"], false)), ["spec.exportTo"]);
        assert_eq!(rule(&["."], true), []);
        assert_eq!(rule(&["foo"], true), []);
        assert_eq!(fields(&rule(&["bar"], true)), ["spec.exportTo"]);
        assert_eq!(fields(&rule(&[".", "bar"], true)), ["spec.exportTo"]);
    }

    #[test]
    fn workload_selector_labels_must_be_valid_kubernetes_labels() {
        let mut spec = dr("h");
        spec.workload_selector = selector(&[("app", "ratings")]);
        assert_eq!(dr_errors(spec), []);
        let mut spec = dr("h");
        spec.workload_selector = selector(&[("app", "not valid")]);
        assert_eq!(
            fields(&dr_errors(spec)),
            ["spec.workloadSelector.matchLabels[app]"]
        );
    }

    fn port_setting(port: Option<u32>) -> PortTrafficPolicy {
        PortTrafficPolicy {
            port: port.map(|number| PortSelector { number }),
            ..Default::default()
        }
    }

    #[test]
    fn port_level_settings_need_a_port_number_in_range() {
        let mut spec = dr("h");
        spec.traffic_policy = Some(TrafficPolicy {
            port_level_settings: vec![port_setting(Some(1)), port_setting(Some(65535))],
            ..Default::default()
        });
        assert_eq!(dr_errors(spec), []);
        let mut spec = dr("h");
        spec.traffic_policy = Some(TrafficPolicy {
            port_level_settings: vec![
                port_setting(None),
                port_setting(Some(0)),
                port_setting(Some(65536)),
            ],
            ..Default::default()
        });
        assert_eq!(
            fields(&dr_errors(spec)),
            [
                "spec.trafficPolicy.portLevelSettings[0].port",
                "spec.trafficPolicy.portLevelSettings[1].port.number",
                "spec.trafficPolicy.portLevelSettings[2].port.number",
            ]
        );
    }

    fn subset(name: &str) -> Subset {
        Subset {
            name: name.to_string(),
            labels: map(&[("version", "v1")]),
            ..Default::default()
        }
    }

    #[test]
    fn subsets_need_unique_names() {
        let mut spec = dr("h");
        spec.subsets = vec![subset("v1"), subset("v2")];
        assert_eq!(dr_errors(spec), []);
        let mut spec = dr("h");
        spec.subsets = vec![subset("v1"), subset("v1")];
        assert_eq!(
            dr_errors(spec),
            [FieldError::new(
                "spec.subsets[1].name",
                "duplicate subset name \"v1\""
            )]
        );
    }

    #[test]
    fn a_subset_without_name_is_rejected() {
        let mut spec = dr("h");
        spec.subsets = vec![subset("")];
        assert_eq!(
            dr_errors(spec),
            [FieldError::new(
                "spec.subsets[0].name",
                "subset name is required"
            )]
        );
    }

    #[test]
    fn subset_labels_and_subset_port_settings_are_checked_too() {
        let mut bad = subset("v1");
        bad.labels = map(&[("version", "v 1")]);
        bad.traffic_policy = Some(TrafficPolicy {
            port_level_settings: vec![port_setting(None)],
            ..Default::default()
        });
        let mut spec = dr("h");
        spec.subsets = vec![bad];
        assert_eq!(
            fields(&dr_errors(spec)),
            [
                "spec.subsets[0].labels[version]",
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].port"
            ]
        );
    }

    fn tls(mode: ClientTlsMode) -> ClientTlsSettings {
        ClientTlsSettings {
            mode,
            ..Default::default()
        }
    }

    fn with_tls(t: ClientTlsSettings) -> DestinationRuleSpec {
        let mut spec = dr("h");
        spec.traffic_policy = Some(TrafficPolicy {
            tls: Some(t),
            ..Default::default()
        });
        spec
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    // Mirrors Istio's TestValidateTLS (pkg/config/validation/agent):
    // "tls mutual missing client certificate" and "... missing private key".
    #[test]
    fn mutual_needs_a_client_certificate_and_a_private_key() {
        let errors = dr_errors(with_tls(tls(ClientTlsMode::Mutual)));
        assert_eq!(
            fields(&errors),
            [
                "spec.trafficPolicy.tls.clientCertificate",
                "spec.trafficPolicy.tls.privateKey"
            ]
        );
        assert!(
            errors[0]
                .reason
                .starts_with("client certificate required for mutual tls")
        );
        let mut only_cert = tls(ClientTlsMode::Mutual);
        only_cert.client_certificate = some("/etc/c.pem");
        only_cert.private_key = some("");
        assert_eq!(
            fields(&dr_errors(with_tls(only_cert.clone()))),
            ["spec.trafficPolicy.tls.privateKey"]
        );
        only_cert.private_key = some("/etc/k.pem");
        assert_eq!(dr_errors(with_tls(only_cert)), []);
    }

    // Istio's TestValidateTLS: "tls mutual with credentialName" is valid
    // without files, and files next to a credentialName are not.
    #[test]
    fn mutual_with_a_credential_name_needs_no_files_and_takes_none() {
        let mut t = tls(ClientTlsMode::Mutual);
        t.credential_name = some("client-secret");
        assert_eq!(dr_errors(with_tls(t.clone())), []);
        t.ca_certificates = some("/etc/ca.pem");
        assert_eq!(
            fields(&dr_errors(with_tls(t))),
            ["spec.trafficPolicy.tls.caCertificates"]
        );
    }

    // Istio's TestValidateTLS: insecureSkipVerify with caCertificates or
    // subjectAltNames is a contradiction.
    #[test]
    fn insecure_skip_verify_takes_nothing_that_verifies() {
        let mut t = tls(ClientTlsMode::Simple);
        t.insecure_skip_verify = Some(true);
        assert_eq!(dr_errors(with_tls(t.clone())), []);
        t.subject_alt_names = vec!["a.example.com".into()];
        t.ca_certificates = some("/etc/ca.pem");
        let errors = dr_errors(with_tls(t));
        assert_eq!(
            fields(&errors),
            ["spec.trafficPolicy.tls.insecureSkipVerify"]
        );
        assert_eq!(
            errors[0].reason,
            "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true"
        );
    }

    #[test]
    fn port_level_and_subset_tls_are_checked_too() {
        let mut spec = dr("h");
        spec.traffic_policy = Some(TrafficPolicy {
            port_level_settings: vec![PortTrafficPolicy {
                port: Some(PortSelector { number: 443 }),
                tls: Some(tls(ClientTlsMode::Mutual)),
                ..Default::default()
            }],
            ..Default::default()
        });
        let mut v1 = subset("v1");
        v1.traffic_policy = Some(TrafficPolicy {
            tls: Some(tls(ClientTlsMode::Mutual)),
            ..Default::default()
        });
        spec.subsets = vec![v1];
        assert_eq!(
            fields(&dr_errors(spec)),
            [
                "spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate",
                "spec.trafficPolicy.portLevelSettings[0].tls.privateKey",
                "spec.subsets[0].trafficPolicy.tls.clientCertificate",
                "spec.subsets[0].trafficPolicy.tls.privateKey",
            ]
        );
    }

    fn deployment_with(replicas: Option<i32>) -> Deployment {
        Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_must_be_between_0_and_the_maximum() {
        for ok in [None, Some(0), Some(1), Some(MAX_REPLICAS)] {
            assert_eq!(deployment(&deployment_with(ok)), [], "{ok:?}");
        }
        for bad in [Some(-1), Some(MAX_REPLICAS + 1), Some(i32::MAX)] {
            assert_eq!(
                fields(&deployment(&deployment_with(bad))),
                ["spec.replicas"],
                "{bad:?}"
            );
        }
        let errors = deployment(&deployment_with(Some(i32::MAX)));
        assert!(
            errors[0].reason.contains("2147483647 is more than 1000"),
            "{errors:?}"
        );
    }

    /// (name, port, protocol, targetPort) of one Service port.
    type PortRow<'a> = (Option<&'a str>, i32, Option<&'a str>, Option<IntOrString>);

    fn service_with(ports: &[PortRow<'_>]) -> Service {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        Service {
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port, protocol, target)| ServicePort {
                            name: name.map(str::to_string),
                            port: *port,
                            protocol: protocol.map(str::to_string),
                            target_port: target.clone(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn service_ports_follow_the_api_servers_rules() {
        let int = IntOrString::Int;
        let name = |n: &str| IntOrString::String(n.to_string());
        let good = service_with(&[
            (Some("http"), 80, None, Some(int(8080))),
            (Some("grpc"), 9090, Some("TCP"), Some(name("grpc-web"))),
            (Some("dns"), 80, Some("UDP"), None),
        ]);
        assert_eq!(service(&good), []);
        assert_eq!(service(&service_with(&[(None, 80, None, None)])), []);
        let bad = service_with(&[
            (None, 80, None, None),
            (Some("http"), 80, None, Some(int(0))),
            (Some("http"), 0, Some("HTTP"), Some(name("8080"))),
            (Some("Web"), 8080, None, Some(name("a--b"))),
        ]);
        assert_eq!(
            fields(&service(&bad)),
            [
                "spec.ports[0].name",
                "spec.ports[1].port",
                "spec.ports[1].targetPort",
                "spec.ports[2].name",
                "spec.ports[2].port",
                "spec.ports[2].protocol",
                "spec.ports[2].targetPort",
                "spec.ports[3].name",
                "spec.ports[3].targetPort",
            ]
        );
        let errors = service(&bad);
        assert_eq!(
            errors[1].reason,
            "duplicate port 80/TCP (also spec.ports[0])"
        );
        assert_eq!(
            errors[3].reason,
            "duplicate port name \"http\" (also spec.ports[1])"
        );
    }

    #[test]
    fn dns1123_labels_are_lowercase_alphanumerics_and_dashes() {
        assert!(is_dns1123_label("foo-1"));
        assert!(!is_dns1123_label("foo-"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("example.com"));
        assert!(!is_dns1123_subdomain("example..com"));
    }
}
