//! Istio's validation rules for the kinds in this crate (what istiod's webhook and
//! the CRD's CEL rules reject), as diagnostics naming the field. Run after
//! parsing; an object with any error is left out of the mesh model.

use std::collections::{BTreeMap, BTreeSet};

use crate::destination_rule::{DestinationRule, TrafficPolicy};
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
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
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

/// Checks a DestinationRule as istiod does for the parts this project uses: a
/// host, valid `exportTo` entries, valid selector and subset labels, unique named
/// subsets, and a valid port on every port-level setting.
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

fn traffic_policy(policy: &TrafficPolicy, path: &str, errors: &mut Vec<FieldError>) {
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
    }
}

fn selector_labels(selector: &WorkloadSelector, path: &str, errors: &mut Vec<FieldError>) {
    labels(&selector.match_labels, path, errors);
}

fn labels(labels: &BTreeMap<String, String>, path: &str, errors: &mut Vec<FieldError>) {
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
        let mut spec = dr("h");
        spec.export_to = [".", "*", "~", "foo", "bar-2"].map(String::from).to_vec();
        assert_eq!(dr_errors(spec), []);
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

    #[test]
    fn dns1123_labels_are_lowercase_alphanumerics_and_dashes() {
        assert!(is_dns1123_label("foo-1"));
        assert!(!is_dns1123_label("foo-"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("example.com"));
        assert!(!is_dns1123_subdomain("example..com"));
    }
}
