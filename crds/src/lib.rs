//! Istio-compatible resource types: the first stage of the pipeline.
//!
//! - [`peer_authentication`], [`destination_rule`] and [`sidecar`]: the Istio
//!   kinds this control plane acts on, with the same groups, versions and fields as Istio, so
//!   the same YAML works with `kubectl apply` and from files.
//! - [`validate`]: Istio's validation rules, as diagnostics naming the field.
//! - [`manifest`]: parsing the YAML a user would `kubectl apply` (multi-document,
//!   `List`), including the Kubernetes kinds the mesh model needs.
//! - [`yaml`]: reading YAML with bounds on nesting and alias expansion, and
//!   duplicate keys named.
//! - [`manifests`]: the CRD YAML generated from the types, checked in under
//!   `crds/manifests/` and compared by a test (`UPDATE_GOLDEN=1 cargo test -p crds`
//!   regenerates it).
//!
//! Nothing here decides policy precedence; that is the translator's job.

#![forbid(unsafe_code)]

pub mod destination_rule;
pub mod manifest;
pub mod peer_authentication;
pub mod schema;
pub mod sidecar;
#[doc(hidden)]
pub mod test_support;
pub mod validate;
pub mod workload_selector;
pub mod yaml;

pub use destination_rule::{
    ClientTlsMode, ClientTlsSettings, DestinationRule, DestinationRuleSpec, PortSelector,
    PortTrafficPolicy, Subset, TrafficPolicy,
};
pub use manifest::{Object, ObjectError, Parsed, Skipped, parse_documents, read_documents};
pub use peer_authentication::{MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec};
pub use sidecar::{
    IstioEgressListener, OutboundTrafficMode, OutboundTrafficPolicy, Sidecar, SidecarPort,
    SidecarSpec, SidecarWorkloadSelector,
};
pub use validate::FieldError;
pub use workload_selector::WorkloadSelector;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CRD this project defines, in a fixed order (by CRD name).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        destination_rule::crd(),
        peer_authentication::crd(),
        sidecar::crd(),
    ]
}

/// The CRD manifests as `(file name, YAML)` pairs, the file name being the CRD
/// name (`peerauthentications.security.istio.io.yaml`). Used for the checked-in
/// files under `crds/manifests/` and for printing.
pub fn manifest_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), crd_yaml(crd))
        })
        .collect()
}

/// All CRDs as one multi-document YAML text (apiextensions.k8s.io/v1), ready for
/// `kubectl apply -f -`. Deterministic: same types, same bytes.
pub fn manifests() -> String {
    manifest_files()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    // A CRD has only string map keys and finite numbers, so serializing cannot
    // fail whatever the input YAML was; a failure is a bug in this crate.
    #[allow(clippy::expect_used)]
    serde_yaml::to_string(crd).expect("a CustomResourceDefinition always serializes to YAML")
}
