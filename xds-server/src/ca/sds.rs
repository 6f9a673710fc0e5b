//! Workload certificate + root -> the two SDS secrets a sidecar reads.
//!
//! The names are Istio's (`default` for the workload key and certificate,
//! `ROOTCA` for the trust bundle), so listeners and clusters built for Istio
//! sidecars work unchanged; we deliver them over ADS instead of the agent's
//! SDS socket (mtls-semantics.md, section 5). Like istio-agent we send the
//! PEM as `inline_bytes`.

use super::cert::WorkloadCert;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use std::sync::Arc;
use translator::{Resource, ResourceMap, ResourceType};

/// SDS name of the workload's own key and certificate.
pub const WORKLOAD_SECRET: &str = "default";
/// SDS name of the trust bundle (the root CA certificate).
pub const ROOT_SECRET: &str = "ROOTCA";

/// The `default` and `ROOTCA` secrets for one workload, by name.
pub fn sds_resources(cert: &WorkloadCert, root_pem: &str) -> ResourceMap {
    let workload = Secret {
        name: WORKLOAD_SECRET.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(cert.cert_chain_pem.as_bytes())),
            private_key: Some(inline(cert.private_key_pem.expose().as_bytes())),
            ..Default::default()
        })),
    };
    let root = Secret {
        name: ROOT_SECRET.to_string(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(root_pem.as_bytes())),
                ..Default::default()
            },
        )),
    };
    [workload, root]
        .into_iter()
        .map(|s| {
            let r = Resource::new(s.name.clone(), ResourceType::Secret, &s);
            (s.name, Arc::new(r))
        })
        .collect()
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::cert::SecretString;
    use prost::Message;
    use std::time::{Duration, UNIX_EPOCH};

    fn cert() -> WorkloadCert {
        WorkloadCert {
            cert_chain_pem: "LEAF PEM".into(),
            private_key_pem: SecretString::new("KEY PEM"),
            serial_hex: "01".into(),
            spiffe_id: "spiffe://cluster.local/ns/foo/sa/bar".into(),
            not_before: UNIX_EPOCH,
            not_after: UNIX_EPOCH + Duration::from_secs(3600),
        }
    }

    fn decode(r: &Resource) -> Secret {
        assert_eq!(r.kind, ResourceType::Secret);
        assert_eq!(r.body.type_url, ResourceType::Secret.type_url());
        Secret::decode(r.body.value.as_slice()).expect("a Secret")
    }

    fn inline_bytes(ds: Option<DataSource>) -> Vec<u8> {
        match ds.and_then(|d| d.specifier) {
            Some(data_source::Specifier::InlineBytes(b)) => b,
            other => panic!("expected inline_bytes, got {other:?}"),
        }
    }

    #[test]
    fn workload_gets_default_and_rootca_secrets() {
        let map = sds_resources(&cert(), "ROOT PEM");
        assert_eq!(
            map.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ROOTCA", "default"]
        );

        let default = decode(&map["default"]);
        assert_eq!(default.name, "default");
        let Some(secret::Type::TlsCertificate(tls)) = default.r#type else {
            panic!("default must be a tls_certificate");
        };
        assert_eq!(inline_bytes(tls.certificate_chain), b"LEAF PEM");
        assert_eq!(inline_bytes(tls.private_key), b"KEY PEM");

        let root = decode(&map["ROOTCA"]);
        assert_eq!(root.name, "ROOTCA");
        let Some(secret::Type::ValidationContext(vc)) = root.r#type else {
            panic!("ROOTCA must be a validation_context");
        };
        assert_eq!(inline_bytes(vc.trusted_ca), b"ROOT PEM");
    }

    #[test]
    fn a_new_certificate_changes_only_the_default_version() {
        let a = sds_resources(&cert(), "ROOT PEM");
        let mut renewed = cert();
        renewed.cert_chain_pem = "NEW LEAF PEM".into();
        let b = sds_resources(&renewed, "ROOT PEM");
        assert_ne!(a["default"].version(), b["default"].version());
        assert_eq!(a["ROOTCA"].version(), b["ROOTCA"].version());
    }

    #[test]
    fn debug_of_the_resources_shows_no_key() {
        let map = sds_resources(&cert(), "ROOT PEM");
        let text = format!("{map:?}");
        assert!(!text.contains("KEY PEM"), "{text}");
    }
}
